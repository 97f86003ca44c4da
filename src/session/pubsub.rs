//! Subscriptions. Channels route by prefix like keys (patterns go to every
//! pool they could match); each pool with subscriptions gets a leased
//! connection and a link task forwarding its messages. keyway writes the
//! (un)subscribe confirmations itself, with counts over all pools.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use super::pushes::{PushSender, Pushes};
use super::reply::Reply;
use super::Session;
use crate::backend::Dedicated;
use crate::resp::{self, shapes, Protocol, ReplyBuf, Request};
use crate::route::{PoolId, Target};

pub(crate) use crate::command::ChannelKind as Kind;

/// What became of a (un)subscribe command sent on a link.
#[derive(Debug)]
enum Outcome {
    Confirmed,
    /// The server refused it (NOPERM, NOAUTH …): nothing was subscribed.
    Refused(Bytes),
    Lost,
}

enum LinkCmd {
    /// Send a (un)subscribe command; `done` fires when the backend has
    /// confirmed `confirmations` names (false if the link failed). With
    /// `hold`, messages after the confirmation wait for `Release`: they may
    /// be on a channel whose confirmation the client has not been sent yet.
    Send {
        bytes: Bytes,
        confirmations: usize,
        hold: bool,
        done: oneshot::Sender<Outcome>,
    },
    /// The client's confirmations are queued: forward held messages now.
    Release,
}

impl LinkCmd {
    /// `verb` for `names`, expecting one confirmation per name; the
    /// receiver says what became of it.
    fn send(verb: &str, names: &[Bytes], hold: bool) -> (LinkCmd, oneshot::Receiver<Outcome>) {
        let (done, wait) = oneshot::channel();
        let cmd = LinkCmd::Send {
            bytes: command(verb, names),
            confirmations: names.len(),
            hold,
            done,
        };
        (cmd, wait)
    }
}

pub(crate) struct Subscriptions {
    channels: BTreeMap<Bytes, Target>,
    patterns: BTreeMap<Bytes, Vec<Target>>,
    /// On a cluster pool, a shard channel's target carries its slot: its
    /// link is to that slot's master.
    shards: BTreeMap<Bytes, Target>,
    links: BTreeMap<Target, mpsc::Sender<LinkCmd>>,
    /// Links holding messages until the confirmations are queued.
    held: Vec<Target>,
}

impl Subscriptions {
    pub(super) fn new() -> Subscriptions {
        Subscriptions {
            channels: BTreeMap::new(),
            patterns: BTreeMap::new(),
            shards: BTreeMap::new(),
            links: BTreeMap::new(),
            held: Vec::new(),
        }
    }

    pub fn counts(&self) -> (usize, usize, usize) {
        (self.channels.len(), self.patterns.len(), self.shards.len())
    }

    /// The patterns subscribed and the pools each is subscribed on.
    pub fn patterns(&self) -> Arc<[(Bytes, Vec<PoolId>)]> {
        self.patterns
            .iter()
            .map(|(p, targets)| (p.clone(), targets.iter().map(|t| t.pool).collect()))
            .collect()
    }

    fn count_for(&self, kind: Kind) -> usize {
        match kind {
            Kind::Shard => self.shards.len(),
            _ => self.channels.len() + self.patterns.len(),
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.counts() == (0, 0, 0)
    }

    fn names(&self, kind: Kind) -> Vec<Bytes> {
        match kind {
            Kind::Channel => self.channels.keys().cloned().collect(),
            Kind::Pattern => self.patterns.keys().cloned().collect(),
            Kind::Shard => self.shards.keys().cloned().collect(),
        }
    }

    /// Every channel, pattern and shard channel subscribed.
    fn all_names(&self) -> impl Iterator<Item = &Bytes> {
        self.channels
            .keys()
            .chain(self.patterns.keys())
            .chain(self.shards.keys())
    }

    fn pools_of(&self, kind: Kind, name: &Bytes) -> Vec<Target> {
        match kind {
            Kind::Channel => self
                .channels
                .get(name)
                .map(|p| vec![*p])
                .unwrap_or_default(),
            Kind::Pattern => self.patterns.get(name).cloned().unwrap_or_default(),
            Kind::Shard => self.shards.get(name).map(|p| vec![*p]).unwrap_or_default(),
        }
    }
}

/// One confirmation frame, as Redis writes it in the client's protocol.
fn confirmation(proto: Protocol, what: &str, name: Option<&[u8]>, count: usize) -> Bytes {
    let mut r = ReplyBuf::new(proto);
    match proto {
        Protocol::Resp2 => r.array(3),
        Protocol::Resp3 => r.raw(b">3\r\n"),
    };
    r.bulk(what.as_bytes());
    match name {
        Some(n) => r.bulk(n),
        None => r.null(),
    };
    r.int(count as i64);
    r.freeze()
}

fn command(verb: &str, names: &[Bytes]) -> Bytes {
    let mut args: Vec<&[u8]> = vec![verb.as_bytes()];
    args.extend(names.iter().map(|n| n.as_ref()));
    Request::from_args(&args).bytes().clone()
}

impl Session {
    /// Where a subscription goes: its pool (any node of a cluster, which
    /// broadcasts PUBLISH), or for a shard channel on a cluster pool, the
    /// master of the channel's slot.
    fn pools_for_subscription(&self, kind: Kind, name: &[u8]) -> Vec<Target> {
        let router = &self.state.live().router;
        let db = self.client.db;
        match kind {
            Kind::Pattern => router
                .pools_for_pattern(name, b"psubscribe", db)
                .into_iter()
                .map(Target::pool)
                .collect(),
            Kind::Channel => vec![Target::pool(router.pool_for_key(name, b"subscribe", db))],
            Kind::Shard => vec![router.target_for_key(name, b"ssubscribe", db)],
        }
    }

    pub(super) async fn subscribe(&mut self, kind: Kind, request: &Request) -> Reply {
        if let Err(error) = self.mode.subscribe() {
            return Reply::now(resp::error(error));
        }
        let names: Vec<Bytes> = request.args().skip(1).map(Bytes::copy_from_slice).collect();
        let mut per_pool: BTreeMap<Target, Vec<Bytes>> = BTreeMap::new();
        let mut pools_by_name = Vec::with_capacity(names.len());
        for name in &names {
            let pools = self.pools_for_subscription(kind, name);
            for &p in &pools {
                per_pool.entry(p).or_default().push(name.clone());
            }
            pools_by_name.push(pools);
        }
        let mut waits = Vec::new();
        for (pool, pool_names) in &per_pool {
            let link = match self.link(*pool).await {
                Ok(link) => link,
                Err(reply) => {
                    self.mode.leave_if_unsubscribed();
                    return reply;
                }
            };
            let (cmd, wait) = LinkCmd::send(kind.subscribe(), pool_names, true);
            // A closed link drops `done`, which the wait below reports.
            let _ = self.alongside_pushes(link.send(cmd)).await;
            // Released after this request's reply is queued, whatever the
            // outcome: a link left holding would never forward again.
            if let Some(subs) = self.mode.subscriptions_mut() {
                subs.held.push(*pool);
            }
            waits.push((*pool, wait));
        }
        let mut failure = None;
        let mut confirmed = Vec::new();
        for (pool, wait) in waits {
            match self.alongside_pushes(wait).await {
                Ok(Outcome::Confirmed) => confirmed.push(pool),
                Ok(Outcome::Refused(error)) => failure = failure.or(Some(error)),
                Ok(Outcome::Lost) | Err(_) => {
                    failure = failure.or(Some(resp::error(&format!(
                        "ERR backend '{}' connection lost while subscribing",
                        self.state.live().router.pool_name(pool.pool)
                    ))))
                }
            }
        }
        if let Some(error) = failure {
            // As Redis: a refused SUBSCRIBE subscribes nothing, so what
            // other pools confirmed is undone.
            for pool in confirmed {
                let Some(names) = per_pool.get(&pool) else {
                    continue;
                };
                let Ok(link) = self.link(pool).await else {
                    continue;
                };
                let (cmd, wait) = LinkCmd::send(kind.unsubscribe(), names, false);
                if self.alongside_pushes(link.send(cmd)).await.is_ok() {
                    let _ = self.alongside_pushes(wait).await;
                }
            }
            self.mode.leave_if_unsubscribed();
            return Reply::now(error);
        }
        let proto = self.client.proto;
        let Some(subs) = self.mode.subscriptions_mut() else {
            return Reply::now(resp::error("ERR subscription state lost"));
        };
        let mut out = Vec::new();
        for (name, pools) in names.into_iter().zip(pools_by_name) {
            match kind {
                Kind::Channel => {
                    subs.channels.insert(name.clone(), pools[0]);
                }
                Kind::Pattern => {
                    subs.patterns.insert(name.clone(), pools);
                }
                Kind::Shard => {
                    subs.shards.insert(name.clone(), pools[0]);
                }
            }
            out.extend_from_slice(&confirmation(
                proto,
                kind.subscribe(),
                Some(&name),
                subs.count_for(kind),
            ));
        }
        self.register();
        Reply::now(Bytes::from(out))
    }

    pub(super) async fn unsubscribe(&mut self, kind: Kind, request: &Request) -> Reply {
        let proto = self.client.proto;
        let Some(subs) = self.mode.subscriptions_mut() else {
            // Not subscribed: Redis still confirms, with a count of zero.
            let mut out = Vec::new();
            if request.argc() == 1 {
                out.extend_from_slice(&confirmation(proto, kind.unsubscribe(), None, 0));
            }
            for name in request.args().skip(1) {
                out.extend_from_slice(&confirmation(proto, kind.unsubscribe(), Some(name), 0));
            }
            return Reply::now(Bytes::from(out));
        };
        let names: Vec<Bytes> = if request.argc() == 1 {
            subs.names(kind)
        } else {
            request.args().skip(1).map(Bytes::copy_from_slice).collect()
        };
        if names.is_empty() {
            return Reply::now(confirmation(
                proto,
                kind.unsubscribe(),
                None,
                subs.count_for(kind),
            ));
        }
        let mut per_pool: BTreeMap<Target, Vec<Bytes>> = BTreeMap::new();
        for name in &names {
            for p in subs.pools_of(kind, name) {
                per_pool.entry(p).or_default().push(name.clone());
            }
        }
        let links: Vec<_> = per_pool
            .into_iter()
            .filter_map(|(target, names)| Some((subs.links.get(&target)?.clone(), names)))
            .collect();
        let mut waits = Vec::new();
        for (link, pool_names) in links {
            let (cmd, wait) = LinkCmd::send(kind.unsubscribe(), &pool_names, false);
            if self.alongside_pushes(link.send(cmd)).await.is_ok() {
                waits.push(wait);
            }
        }
        for wait in waits {
            let _ = self.alongside_pushes(wait).await;
        }
        let Some(subs) = self.mode.subscriptions_mut() else {
            return Reply::now(resp::error("ERR subscription state lost"));
        };
        let mut out = Vec::new();
        for name in names {
            match kind {
                Kind::Channel => {
                    subs.channels.remove(&name);
                }
                Kind::Pattern => {
                    subs.patterns.remove(&name);
                }
                Kind::Shard => {
                    subs.shards.remove(&name);
                }
            }
            out.extend_from_slice(&confirmation(
                proto,
                kind.unsubscribe(),
                Some(&name),
                subs.count_for(kind),
            ));
        }
        self.mode.leave_if_unsubscribed();
        self.register();
        Reply::now(Bytes::from(out))
    }

    /// After a reload, whether the client may still hear what it is
    /// subscribed to: its user still exists and its prefixes still cover
    /// every channel and pattern. Redis disconnects a subscriber whose
    /// channel permissions are revoked; so does keyway, before the next
    /// message reaches it.
    pub(super) fn subscriptions_still_permitted(&self) -> bool {
        let Some(subs) = self.mode.subscriptions() else {
            return true;
        };
        let Some(user) = &self.client.user else {
            return false;
        };
        let live = self.state.live();
        subs.all_names()
            .all(|name| live.policy.check_channel(user, name).is_ok())
    }

    /// Lets links forward messages that arrived while the confirmations
    /// were being queued, so a client never sees a message first.
    pub(super) async fn release_held_messages(&mut self) {
        let Some(subs) = self.mode.subscriptions_mut() else {
            return;
        };
        let links: Vec<_> = std::mem::take(&mut subs.held)
            .into_iter()
            .filter_map(|target| subs.links.get(&target).cloned())
            .collect();
        for link in links {
            let _ = self.alongside_pushes(link.send(LinkCmd::Release)).await;
        }
    }

    /// Waits for a link while taking the messages links push meanwhile: a
    /// link blocked on a full push queue could otherwise never answer.
    async fn alongside_pushes<T>(&mut self, work: impl std::future::Future<Output = T>) -> T {
        let Some(pushes) = self.pushes.as_mut() else {
            return work.await;
        };
        tokio::pin!(work);
        loop {
            tokio::select! {
                biased;
                done = &mut work => return done,
                Some(message) = pushes.recv() => self.output.push(message),
            }
        }
    }

    /// Where links push messages for this client, opened with the first.
    fn push_sender(&mut self) -> PushSender {
        let limit = self.state.live().config.server.client_output_limit_bytes;
        let proto = self.client.proto;
        self.pushes
            .get_or_insert_with(|| Pushes::new(limit, proto))
            .sender()
    }

    /// PING in RESP2 subscriber mode answers `["pong", msg]`.
    #[cold]
    #[inline(never)]
    pub(super) fn subscriber_ping(&self, request: &Request) -> Reply {
        if request.argc() > 2 {
            return Reply::now(resp::error(
                "ERR wrong number of arguments for 'ping' command",
            ));
        }
        let mut r = ReplyBuf::new(Protocol::Resp2);
        r.array(2).bulk(b"pong").bulk(if request.argc() > 1 {
            request.arg(1)
        } else {
            b""
        });
        Reply::now(r.freeze())
    }

    async fn link(&mut self, target: Target) -> Result<mpsc::Sender<LinkCmd>, Reply> {
        let Some(subs) = self.mode.subscriptions_mut() else {
            return Err(Reply::now(resp::error("ERR subscription state lost")));
        };
        if let Some(link) = subs.links.get(&target) {
            if !link.is_closed() {
                return Ok(link.clone());
            }
        }
        // Each shard-channel slot of a cluster pool takes a leased
        // connection: bounded per client, so one cannot take them all.
        let slot_links = subs.links.keys().filter(|t| t.slot.is_some()).count();
        if target.slot.is_some() && slot_links >= MAX_SLOT_LINKS {
            return Err(Reply::now(resp::error(&format!(
                "ERR keyway subscribes one client to shard channels in at most {MAX_SLOT_LINKS} slots of a cluster pool"
            ))));
        }
        let source = LinkSource {
            state: self.state.clone(),
            pool: target.pool,
            slot: target.slot,
            db: self.client.db,
            proto: self.client.proto,
            tenant: self.tenant(),
        };
        let conn = source.lease().await.map_err(|e| self.failed(&e))?;
        let (cmds_tx, cmds_rx) = mpsc::channel(64);
        let pushes = self.push_sender();
        tokio::spawn(run_link(source, conn, cmds_rx, pushes));
        let Some(subs) = self.mode.subscriptions_mut() else {
            return Err(Reply::now(resp::error("ERR subscription state lost")));
        };
        subs.links.insert(target, cmds_tx.clone());
        Ok(cmds_tx)
    }
}

/// Slots of a cluster pool one client may hold shard-channel links to.
const MAX_SLOT_LINKS: usize = 16;

/// Messages held between a subscribe's confirmation and its release, at
/// most; with that many the link stops reading until released.
const MAX_HELD: usize = 10_000;

enum FrameKind {
    Message,
    Confirmation,
    Error,
    Other,
}

/// A command sent on a link, until the server confirms or refuses it.
struct Waiting {
    /// Confirmations still due.
    confirmations: usize,
    /// Hold messages after it until the client's confirmations are queued.
    hold: bool,
    done: oneshot::Sender<Outcome>,
    /// The command, to undo in the link's record if the server refuses it.
    bytes: Bytes,
}

fn frame_kind(frame: &[u8]) -> FrameKind {
    if shapes::is_error(frame) {
        return FrameKind::Error;
    }
    let Some(first) = shapes::elements(frame)
        .and_then(|e| e.first().and_then(|f| shapes::bulk(f).map(<[u8]>::to_vec)))
    else {
        return FrameKind::Other;
    };
    match first.as_slice() {
        b"message" | b"pmessage" | b"smessage" => FrameKind::Message,
        b"subscribe" | b"psubscribe" | b"ssubscribe" | b"unsubscribe" | b"punsubscribe"
        | b"sunsubscribe" => FrameKind::Confirmation,
        _ => FrameKind::Other,
    }
}

fn is_sunsubscribe(frame: &[u8]) -> bool {
    shapes::elements(frame)
        .and_then(|e| e.first().and_then(|f| shapes::bulk(f)))
        .is_some_and(|verb| verb == b"sunsubscribe")
}

/// The link's own record of what it subscribed, to subscribe again on a
/// new connection: verb (`subscribe`, `psubscribe`, `ssubscribe`) → names.
#[derive(Default)]
struct Subscribed(BTreeMap<&'static str, std::collections::BTreeSet<Bytes>>);

impl Subscribed {
    /// Records a (un)subscribe command; `forward` false undoes it.
    fn apply(&mut self, command: &Bytes, forward: bool) {
        let mut parser = crate::resp::RequestParser::default();
        let mut buf = bytes::BytesMut::from(&command[..]);
        let Ok(Some(req)) = parser.next(&mut buf) else {
            return;
        };
        let verb = String::from_utf8_lossy(req.arg(0)).to_ascii_lowercase();
        let (kind, add) = match verb.as_str() {
            "subscribe" => ("subscribe", true),
            "psubscribe" => ("psubscribe", true),
            "ssubscribe" => ("ssubscribe", true),
            "unsubscribe" => ("subscribe", false),
            "punsubscribe" => ("psubscribe", false),
            "sunsubscribe" => ("ssubscribe", false),
            _ => return,
        };
        let set = self.0.entry(kind).or_default();
        for name in req.args().skip(1) {
            if add == forward {
                set.insert(Bytes::copy_from_slice(name));
            } else {
                set.remove(name);
            }
        }
    }

    /// The commands that restore every subscription, with how many
    /// confirmations each brings.
    fn restore(&self) -> Vec<(Bytes, usize)> {
        self.0
            .iter()
            .filter(|(_, names)| !names.is_empty())
            .map(|(verb, names)| {
                let names: Vec<Bytes> = names.iter().cloned().collect();
                (command(verb, &names), names.len())
            })
            .collect()
    }
}

/// Where a link's connection comes from, to replace it after a failover.
struct LinkSource {
    state: std::sync::Arc<crate::state::State>,
    pool: PoolId,
    /// A shard channel's slot on a cluster pool: the link follows its master.
    slot: Option<u16>,
    db: u32,
    proto: Protocol,
    /// Whose share of the pool's leases the link's counts against.
    tenant: Option<crate::backend::Tenant>,
}

/// How long a link keeps trying to restore subscriptions on a new master.
const RESUBSCRIBE_FOR: std::time::Duration = std::time::Duration::from_secs(15);

impl LinkSource {
    /// A connection for the link: the pool's (any node of a cluster), or
    /// the connection to the master of a shard channel's slot.
    async fn lease(&self) -> Result<Dedicated, crate::backend::BackendError> {
        let backend = self.state.live().backends.checked(self.pool)?;
        match (backend.cluster(), self.slot) {
            (Some(cluster), Some(slot)) => {
                let node = cluster.master_or_wait(Some(slot)).await?;
                node.lease(self.tenant.as_ref(), 0, self.proto).await
            }
            _ => {
                backend
                    .lease(self.tenant.as_ref(), self.db, self.proto)
                    .await
            }
        }
    }

    /// A new connection with every subscription restored (confirmations
    /// consumed here), or `None` after trying for `RESUBSCRIBE_FOR`.
    async fn reconnect(&self, subscribed: &Subscribed) -> Option<Dedicated> {
        let backend = self.state.live().backends.get(self.pool)?.clone();
        if let Some(cluster) = backend.cluster() {
            // A node went, or a slot moved: read the map again first.
            cluster.request_refresh();
        }
        let deadline = tokio::time::Instant::now() + RESUBSCRIBE_FOR;
        let mut backoff = crate::backend::Backoff::new(
            std::time::Duration::from_millis(50),
            std::time::Duration::from_secs(1),
        );
        while tokio::time::Instant::now() < deadline {
            if let Ok(mut conn) = self.lease().await {
                let mut ok = true;
                for (bytes, confirmations) in subscribed.restore() {
                    ok &= conn.send(&bytes).await.is_ok();
                    for _ in 0..confirmations {
                        // An error (MOVED: the map is not current yet)
                        // is a failed try: it ends the command's replies.
                        let frame = conn.read_frame().await;
                        ok &= frame.is_ok_and(|f| !shapes::is_error(&f));
                        if !ok {
                            break;
                        }
                    }
                }
                if ok {
                    tracing::info!(pool = %backend.name(), "subscriptions restored on the pool's current master");
                    return Some(conn);
                }
            }
            tokio::time::sleep(backoff.next_wait()).await;
        }
        None
    }
}

async fn run_link(
    source: LinkSource,
    mut conn: Dedicated,
    mut cmds: mpsc::Receiver<LinkCmd>,
    client: PushSender,
) {
    let Some(origin) = source.state.live().backends.get(source.pool).cloned() else {
        return;
    };
    let pool = origin.name().to_string();
    let mut moved = origin.changes();
    moved.mark_unchanged();
    let mut subscribed = Subscribed::default();
    let mut waiting: VecDeque<Waiting> = VecDeque::new();
    let mut held: Vec<Bytes> = Vec::new();
    let mut holding = false;
    loop {
        let broken = tokio::select! {
            cmd = cmds.recv() => match cmd {
                None => return,
                Some(LinkCmd::Send { bytes, confirmations, hold, done }) => {
                    subscribed.apply(&bytes, true);
                    if conn.send(&bytes).await.is_err() {
                        let _ = done.send(Outcome::Lost);
                        true
                    } else {
                        waiting.push_back(Waiting { confirmations, hold, done, bytes });
                        false
                    }
                }
                Some(LinkCmd::Release) => {
                    holding = false;
                    for m in held.drain(..) {
                        if client.message(m).is_err() {
                            return;
                        }
                    }
                    false
                }
            },
            // A full hold stops reading: the backend buffers, and order holds.
            frame = conn.read_frame(), if !(holding && held.len() >= MAX_HELD) => match frame {
                Err(_) => true,
                Ok(frame) => {
                    // The server dropped shard channels by itself: their
                    // slot moved to another node, where they are restored.
                    let mut slot_moved = false;
                    match frame_kind(&frame) {
                        // Messages before a confirmation are on channels the
                        // client was already told of: they go at once.
                        FrameKind::Message if holding => held.push(frame),
                        FrameKind::Message => {
                            if client.message(frame).is_err() {
                                return;
                            }
                        }
                        FrameKind::Confirmation => match waiting.front_mut() {
                            Some(front) => {
                                front.confirmations = front.confirmations.saturating_sub(1);
                                if front.confirmations == 0 {
                                    if let Some(w) = waiting.pop_front() {
                                        holding |= w.hold;
                                        let _ = w.done.send(Outcome::Confirmed);
                                    }
                                }
                            }
                            None => slot_moved = is_sunsubscribe(&frame),
                        },
                        // The server refused the oldest command outright.
                        FrameKind::Error => {
                            if let Some(w) = waiting.pop_front() {
                                subscribed.apply(&w.bytes, false);
                                let _ = w.done.send(Outcome::Refused(frame));
                            }
                        }
                        FrameKind::Other => {}
                    }
                    slot_moved
                }
            },
            // The pool moved to a new master (failover): follow it.
            _ = moved.changed() => true,
        };
        if !broken {
            continue;
        }
        // Subscriptions survive a failover: the client keeps its
        // subscriptions and never sees the switch.
        for w in waiting.drain(..) {
            holding |= w.hold;
            let _ = w.done.send(Outcome::Confirmed);
        }
        match source.reconnect(&subscribed).await {
            Some(new_conn) => {
                conn = new_conn;
                moved.mark_unchanged();
            }
            None => {
                tracing::warn!(%pool, "subscription connection lost; disconnecting the subscriber");
                client.last(Reply::close(resp::error(&format!(
                    "ERR backend '{pool}' connection lost: subscriptions ended"
                ))));
                return;
            }
        }
    }
}
