//! MULTI / EXEC / DISCARD / WATCH / UNWATCH. Commands are checked and queued
//! in keyway (all keys of a transaction must map to one pool) and sent with
//! MULTI and EXEC in one write on a leased connection, so a client that goes
//! away mid-transaction leaves nothing half-done. WATCH leases at once.

use bytes::Bytes;

use super::mode::Mode;
use super::reply::Reply;
use super::Session;
use crate::backend::{BackendError, Dedicated, LeaseKind};
use crate::resp::{self, Request};
use crate::route::{CrossPool, PoolId, Target, CROSSSLOT};

pub(crate) struct Transaction {
    /// The pool (and slot, on a cluster pool) every keyed command so far
    /// maps to.
    pool: Option<Target>,
    /// The connection holding the WATCHes, with its pool.
    lease: Option<(Target, Dedicated)>,
    multi: bool,
    queued: Vec<Request>,
    /// The bytes of `queued`, bounded by `server.max_transaction_bytes`.
    queued_bytes: usize,
    /// A queue-time error: EXEC answers EXECABORT.
    aborted: bool,
    /// The configuration generation MULTI was sent under: a reload since
    /// then has EXEC check the queued commands again.
    queued_under: u64,
}

/// Why a command between MULTI and EXEC was not queued. Either way the
/// transaction is aborted: EXEC answers EXECABORT, as Redis does after a
/// queue-time error.
#[derive(Debug, PartialEq)]
enum NotQueued {
    /// Refused before queueing (arity, permissions, limits): its error.
    Refused(Bytes),
    /// Its keys are elsewhere than the transaction's earlier keys.
    Elsewhere { first: Target, then: Target },
    /// It would take the queued commands past `server.max_transaction_bytes`.
    TooLarge { max_bytes: usize },
}

#[cold]
fn too_large(state: &crate::state::State, max_bytes: usize) -> Bytes {
    state.metrics.deny("limit", "max_transaction_bytes");
    resp::error(&format!(
        "ERR keyway holds at most {max_bytes} bytes of commands queued in a transaction (server.max_transaction_bytes); EXEC will answer EXECABORT"
    ))
}

/// What EXEC runs: the queued commands, on the WATCH lease or else on a
/// connection to `target` (`None`: no command had keys).
struct Run {
    target: Option<Target>,
    lease: Option<(Target, Dedicated)>,
    queued: Vec<Request>,
}

/// The state's own rules; `Session` does the I/O around them.
impl Transaction {
    pub(super) fn new() -> Transaction {
        Transaction {
            queued_under: 0,
            pool: None,
            lease: None,
            multi: false,
            queued: Vec::new(),
            queued_bytes: 0,
            aborted: false,
        }
    }

    pub fn in_multi(&self) -> bool {
        self.multi
    }

    pub fn queued_bytes(&self) -> usize {
        self.queued_bytes
    }

    pub fn queued_len(&self) -> usize {
        self.queued.len()
    }

    /// MULTI. Refused when already queueing (nothing changes: Redis does
    /// not abort a transaction for a nested MULTI).
    pub(super) fn begin(&mut self) -> Result<(), &'static str> {
        if self.multi {
            return Err("ERR MULTI calls can not be nested");
        }
        self.multi = true;
        Ok(())
    }

    /// A command between MULTI and EXEC, with where its keys are (`None`:
    /// keyless) or why it was refused. Held only while the transaction can
    /// still run, and up to `max_bytes` in all: an aborted transaction's
    /// later commands are answered QUEUED, as Redis answers them, but
    /// never stored, so one client cannot make keyway hold gigabytes.
    fn queue(
        &mut self,
        request: Request,
        target: Result<Option<Target>, Bytes>,
        max_bytes: usize,
    ) -> Result<(), NotQueued> {
        let target = target.map_err(|error| {
            self.aborted = true;
            NotQueued::Refused(error)
        })?;
        if let Some(target) = target {
            match self.pool {
                Some(first) if first != target => {
                    self.aborted = true;
                    return Err(NotQueued::Elsewhere {
                        first,
                        then: target,
                    });
                }
                _ => self.pool = Some(target),
            }
        }
        if self.aborted {
            return Ok(());
        }
        let bytes = self.queued_bytes + request.bytes().len();
        if bytes > max_bytes {
            self.aborted = true;
            self.queued = Vec::new();
            self.queued_bytes = 0;
            return Err(NotQueued::TooLarge { max_bytes });
        }
        self.queued_bytes = bytes;
        self.queued.push(request);
        Ok(())
    }

    /// WATCH on `target`: every WATCH of a transaction is on one lease.
    fn may_watch(&self, target: Target) -> Result<(), NotQueued> {
        match &self.lease {
            Some((leased, _)) if *leased != target => Err(NotQueued::Elsewhere {
                first: *leased,
                then: target,
            }),
            _ => Ok(()),
        }
    }

    /// The lease a WATCH answered on: keys queued later must be there too.
    fn watching(&mut self, target: Target, conn: Dedicated) {
        self.pool = Some(target);
        self.lease = Some((target, conn));
    }

    /// EXEC: the transaction ends; `None` when a queue-time error came
    /// first and nothing runs.
    fn exec(self) -> Option<Run> {
        if self.aborted {
            // Dropping the lease closes it, which also forgets its WATCHes.
            return None;
        }
        Some(Run {
            target: self.pool,
            lease: self.lease,
            queued: self.queued,
        })
    }
}

const EXECABORT: &str = "EXECABORT Transaction discarded because of previous errors.";

impl Session {
    pub(super) fn in_multi(&self) -> bool {
        self.mode.in_multi()
    }

    #[cold]
    #[inline(never)]
    pub(super) fn multi(&mut self) -> Reply {
        match self.mode.begin_multi() {
            Ok(changed) => {
                let generation = self.generation;
                if let Some(t) = self.mode.transaction_mut() {
                    t.queued_under = generation;
                }
                if changed {
                    self.register();
                }
                Reply::now(resp::simple("OK"))
            }
            Err(error) => Reply::now(resp::error(error)),
        }
    }

    /// A command arriving between MULTI and EXEC: refused (which aborts the
    /// transaction, as Redis does for queue-time errors) or queued.
    /// `pool` is `Some` when the command has keys.
    pub(super) fn queue_in_multi(
        &mut self,
        request: Request,
        pool: Result<Option<Target>, Bytes>,
    ) -> Reply {
        let Some(t) = self.mode.transaction_mut() else {
            return Reply::now(resp::error("ERR EXEC without MULTI"));
        };
        let max_bytes = self.state.live().config.server.max_transaction_bytes;
        match t.queue(request, pool, max_bytes) {
            Ok(()) => {
                self.register();
                Reply::now(resp::simple("QUEUED"))
            }
            Err(not_queued) => Reply::now(self.refusal(not_queued)),
        }
    }

    fn refusal(&self, not_queued: NotQueued) -> Bytes {
        match not_queued {
            NotQueued::Refused(error) => error,
            NotQueued::Elsewhere { first, then } => self.cross(first, then),
            NotQueued::TooLarge { max_bytes } => too_large(&self.state, max_bytes),
        }
    }

    /// A leased connection to `target` (on a cluster pool, to its slot's
    /// master), taken without holding the configuration snapshot across
    /// the wait: brief for EXEC, held for WATCH.
    async fn lease(&self, target: Target, kind: LeaseKind<'_>) -> Result<Dedicated, BackendError> {
        let backend = self.state.live().backends.checked(target.pool)?;
        if let Some(cluster) = backend.cluster() {
            if self.client.db != 0 {
                return Err(BackendError::ClusterDatabase {
                    pool: cluster.name().to_string(),
                });
            }
            let node = cluster.master_or_wait(target.slot).await?;
            return node.lease_as(kind, 0, self.client.proto).await;
        }
        backend
            .lease_as(kind, self.client.db, self.client.proto)
            .await
    }

    /// The refusal for keys of one transaction in two places: two pools
    /// (CROSSPOOL), or two slots of a cluster pool (CROSSSLOT).
    fn cross(&self, first: Target, second: Target) -> Bytes {
        if first.pool == second.pool {
            return resp::error(CROSSSLOT);
        }
        resp::error(&self.cross_pool(first.pool, second.pool).to_string())
    }

    pub(super) fn cross_pool(&self, first: PoolId, second: PoolId) -> CrossPool {
        CrossPool {
            first: self.state.live().router.pool_name(first).to_string(),
            second: self.state.live().router.pool_name(second).to_string(),
        }
    }

    pub(super) async fn exec(&mut self) -> Reply {
        let Some(t) = self.mode.end_multi() else {
            return Reply::now(resp::error("ERR EXEC without MULTI"));
        };
        self.register();
        let queued_under = t.queued_under;
        let Some(Run {
            target,
            lease,
            queued,
        }) = t.exec()
        else {
            return Reply::now(resp::error(EXECABORT));
        };
        // A reload between MULTI and EXEC may have narrowed the user's
        // permissions: what was queued is checked again, as Redis checks
        // its ACLs again at EXEC. Nothing runs if any is refused now.
        if queued_under != self.generation {
            if let Some(denial) = queued.iter().find_map(|r| self.permitted_now(r).err()) {
                return self.deny(denial);
            }
        }
        self.flush().await;
        let watched = lease.is_some();
        let (target, mut conn) = match lease {
            Some(lease) => lease,
            None => {
                let target =
                    target.unwrap_or_else(|| Target::pool(self.state.live().router.default_pool()));
                match self.lease(target, LeaseKind::Brief).await {
                    Ok(conn) => (target, conn),
                    Err(e) => return self.failed(&e),
                }
            }
        };
        let mut tries = 0;
        let mut asking = false;
        loop {
            let (reply, redirect) = self.run_transaction(target, conn, &queued, asking).await;
            // The slot moved before EXEC reached its master: nothing ran
            // (EXECABORT), so it runs where the slot is now. Not with
            // WATCH: the watch was on the old master.
            let Some(redirect) =
                redirect.filter(|_| !watched && tries < crate::cluster::MAX_REDIRECTS)
            else {
                return reply;
            };
            tries += 1;
            let backend = self.state.live().backends.get(target.pool).cloned();
            let cluster = backend.as_ref().and_then(|b| b.cluster());
            asking = false;
            let leased = match (cluster, redirect) {
                (Some(cluster), crate::cluster::Redirect::Moved { slot, addr }) => {
                    cluster.moved(slot, &addr);
                    self.lease(target, LeaseKind::Brief).await
                }
                // The slot is migrating and its keys are on the target
                // already: ASKING there makes the whole transaction run
                // there (the flag holds until EXEC).
                (Some(cluster), crate::cluster::Redirect::Ask { addr, .. }) => {
                    asking = true;
                    cluster
                        .node(&addr)
                        .lease_as(LeaseKind::Brief, 0, self.client.proto)
                        .await
                }
                // TRYAGAIN (keys on both sides of a migration): let it finish.
                _ => {
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                    self.lease(target, LeaseKind::Brief).await
                }
            };
            conn = match leased {
                Ok(conn) => conn,
                Err(e) => return self.failed(&e),
            };
        }
    }

    /// MULTI, the queued commands and EXEC in one write on `conn`: EXEC's
    /// reply, and the first cluster redirection among the queued replies.
    async fn run_transaction(
        &mut self,
        Target { pool, slot }: Target,
        mut conn: Dedicated,
        queued: &[Request],
        asking: bool,
    ) -> (Reply, Option<crate::cluster::Redirect>) {
        let t_queued = queued;
        // SELECT or HELLO since WATCH took the lease: EXEC runs in the
        // database and protocol the client is in now, as on Redis.
        match conn
            .follow_client(self.lease_db(pool), self.client.proto)
            .await
        {
            Ok(Ok(())) => {}
            Ok(Err(refused)) => return (Reply::now(refused), None),
            Err(_) => return (self.lease_failed(pool, LeaseRead::Lost), None),
        }
        let mut bytes =
            Vec::with_capacity(64 + t_queued.iter().map(|r| r.bytes().len()).sum::<usize>());
        if asking {
            bytes.extend_from_slice(b"*1\r\n$6\r\nASKING\r\n");
        }
        bytes.extend_from_slice(b"*1\r\n$5\r\nMULTI\r\n");
        for r in t_queued {
            bytes.extend_from_slice(r.bytes());
        }
        bytes.extend_from_slice(b"*1\r\n$4\r\nEXEC\r\n");
        if conn.send(&bytes).await.is_err() {
            return (self.lease_failed(pool, LeaseRead::Lost), None);
        }
        // Every reply before EXEC's: ASKING's, MULTI's and the QUEUED ones.
        let mut redirect = None;
        for _ in 0..t_queued.len() + 1 + usize::from(asking) {
            match read_within(&mut conn, self.lease_deadline(), usize::MAX).await {
                Ok((frame, _)) => {
                    if redirect.is_none() && slot.is_some() {
                        redirect = crate::cluster::Redirect::parse(&frame);
                    }
                }
                Err(why) => return (self.lease_failed(pool, why), None),
            }
        }
        // EXEC's: held whole up to half the client's output limit; beyond,
        // passed through as it arrives, so the values of one transaction
        // are not all held at once (outside both output limits).
        let piece = self.output.piece();
        let (mut part, whole) = match read_within(&mut conn, self.lease_deadline(), piece).await {
            Ok(read) => read,
            Err(why) => return (self.lease_failed(pool, why), None),
        };
        if whole {
            if let Ok(backend) = self.state.live().backends.checked(pool) {
                backend.release(conn);
            }
            // Only an aborted EXEC is safe to run again: nothing ran.
            let redirect = redirect.filter(|_| part.starts_with(b"-EXECABORT"));
            return (Reply::now(part), redirect);
        }
        loop {
            // A client that asked for no reply (CLIENT REPLY) gets none.
            if matches!(self.reply_mode, super::ReplyMode::On)
                && self.output.write_through(&self.state, &part).await.is_err()
            {
                // The session ends; the lease closes with it, mid-reply.
                return (Reply::Silent(Box::new(Reply::now(Bytes::new()))), None);
            }
            let (next, done) = match read_within(&mut conn, self.lease_deadline(), piece).await {
                Ok(read) => read,
                Err(why) => {
                    // Part of the reply is out: the connection can only end.
                    tracing::warn!(
                        "a transaction's reply broke off half-written; closing the client"
                    );
                    let _ = self.lease_failed(pool, why);
                    self.input_closed = true;
                    self.output.push(Reply::close(Bytes::new()));
                    return (Reply::Silent(Box::new(Reply::now(Bytes::new()))), None);
                }
            };
            part = next;
            if done {
                break;
            }
        }
        if matches!(self.reply_mode, super::ReplyMode::On)
            && self.output.write_through(&self.state, &part).await.is_err()
        {
            return (Reply::Silent(Box::new(Reply::now(Bytes::new()))), None);
        }
        if let Ok(backend) = self.state.live().backends.checked(pool) {
            backend.release(conn);
        }
        (Reply::Silent(Box::new(Reply::now(Bytes::new()))), None)
    }

    /// Whether a queued request is still permitted to the client's user,
    /// under the configuration in force: its command, what it reaches and
    /// its keys, checked as when it was queued.
    fn permitted_now(&self, request: &Request) -> Result<(), crate::policy::Denial> {
        use crate::policy::Denial;
        let live = self.state.live();
        let user = self.client.user.as_ref().ok_or(Denial::NoAuth)?;
        let args: Vec<&[u8]> = request.args().collect();
        let name = crate::command::CommandName::of(request.arg(0));
        let spec = self
            .state
            .commands
            .lookup_named(&name, &args)
            .map(|e| &e.spec);
        let sub = (request.argc() > 1).then(|| request.arg(1));
        live.policy.check_command(user, &name, spec, sub)?;
        let Some(spec) = spec else {
            return Ok(());
        };
        if user.has_prefixes() {
            live.policy.check_reach(user, spec, &args)?;
        }
        let mut keys = Vec::new();
        self.state.commands.key_indexes(spec, &args, &mut keys);
        keys.iter()
            .try_for_each(|&i| live.policy.check_key(user, request.arg(i)))
    }

    /// The backend database a lease of `pool` must be in for the client's
    /// database (a pool's URL may name one for the client's db 0).
    fn lease_db(&self, pool: PoolId) -> u32 {
        self.state
            .live()
            .backends
            .checked(pool)
            .map_or(self.client.db, |b| b.backend_db(self.client.db))
    }

    /// When a request sent on a lease now must be answered by:
    /// `request_timeout_ms` from now, as for a forwarded request.
    fn lease_deadline(&self) -> Option<tokio::time::Instant> {
        match self.state.live().config.backend.request_timeout_ms {
            0 => None,
            ms => Some(tokio::time::Instant::now() + std::time::Duration::from_millis(ms)),
        }
    }

    /// The client's reply when a lease's answer did not come; the lease
    /// itself is dropped (closed), never handed to anyone else.
    fn lease_failed(&self, pool: PoolId, why: LeaseRead) -> Reply {
        let pool = self.state.live().router.pool_name(pool).to_string();
        self.failed(&match why {
            LeaseRead::Lost => BackendError::ConnectionLost { pool },
            LeaseRead::TimedOut => BackendError::TimedOut {
                pool,
                ms: self.state.live().config.backend.request_timeout_ms,
            },
        })
    }

    pub(super) fn discard(&mut self) -> Reply {
        // The lease, if any, closes with the transaction: DISCARD also
        // forgets WATCHes.
        if self.mode.end_multi().is_none() {
            return Reply::now(resp::error("ERR DISCARD without MULTI"));
        }
        self.register();
        Reply::now(resp::simple("OK"))
    }

    /// WATCH outside MULTI: leases a connection to the keys' pool at once.
    pub(super) async fn watch(&mut self, request: &Request, pool: Result<Target, Bytes>) -> Reply {
        if let Err(error) = self.mode.may_watch() {
            return Reply::now(resp::error(error));
        }
        let pool = match pool {
            Ok(p) => p,
            Err(error) => return Reply::now(error),
        };
        if let Some(t) = self.mode.transaction() {
            if let Err(elsewhere) = t.may_watch(pool) {
                return Reply::now(self.refusal(elsewhere));
            }
        }
        self.flush().await;
        // Checked above; flushing replies changes no mode.
        let mut t = match self.mode.take_for_watch() {
            Ok(t) => t,
            Err(error) => return Reply::now(resp::error(error)),
        };
        let mut held = t.lease.take().map(|(_, conn)| conn);
        let first_watch = held.is_none();
        let mut tries = 0;
        loop {
            let mut conn = match held.take() {
                // A WATCH after SELECT or HELLO: in the database (and
                // protocol) the client is in now, as on Redis.
                Some(mut conn) => match conn
                    .follow_client(self.lease_db(pool.pool), self.client.proto)
                    .await
                {
                    Ok(Ok(())) => conn,
                    Ok(Err(refused)) => return Reply::now(refused),
                    Err(_) => return self.lease_failed(pool.pool, LeaseRead::Lost),
                },
                None => match self
                    .lease(pool, LeaseKind::Held(self.tenant().as_ref()))
                    .await
                {
                    Ok(conn) => conn,
                    Err(e) => return self.failed(&e),
                },
            };
            let deadline = self.lease_deadline();
            let reply = match conn.send(request.bytes()).await {
                Ok(()) => read_within(&mut conn, deadline, usize::MAX)
                    .await
                    .map(|(f, _)| f),
                Err(_) => Err(LeaseRead::Lost),
            };
            let frame = match reply {
                Ok(frame) => frame,
                Err(why) => return self.lease_failed(pool.pool, why),
            };
            // A cluster node that no longer serves the slot: the watch is
            // taken again where the slot is (nothing was watched here, and
            // the client never sees the redirection). Only a first watch:
            // one already held is on this node.
            let redirect = pool
                .slot
                .filter(|_| first_watch && tries < crate::cluster::MAX_REDIRECTS)
                .and_then(|_| crate::cluster::Redirect::parse(&frame));
            let Some(redirect) = redirect else {
                t.watching(pool, conn);
                self.mode = Mode::Transaction(t);
                self.register();
                return Reply::now(frame);
            };
            tries += 1;
            drop(conn);
            let backend = self.state.live().backends.get(pool.pool).cloned();
            match (backend.as_ref().and_then(|b| b.cluster()), redirect) {
                (Some(cluster), crate::cluster::Redirect::Moved { slot, addr }) => {
                    cluster.moved(slot, &addr)
                }
                // Migrating or TRYAGAIN: let it finish.
                _ => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
            }
        }
    }

    /// UNWATCH outside MULTI: ends the watch and returns the connection.
    pub(super) async fn unwatch(&mut self) -> Reply {
        if let Some(mut t) = self.mode.end_watch() {
            if let Some((Target { pool, .. }, mut conn)) = t.lease.take() {
                let clean = conn.send(b"*1\r\n$7\r\nUNWATCH\r\n").await.is_ok()
                    && conn.read_frame().await.is_ok();
                if clean {
                    if let Ok(backend) = self.state.live().backends.checked(pool) {
                        backend.release(conn);
                    }
                }
            }
            self.register();
        }
        Reply::now(resp::simple("OK"))
    }
}

/// Why a lease's answer did not come.
#[derive(Debug, Clone, Copy)]
enum LeaseRead {
    Lost,
    TimedOut,
}

/// The lease's next frame, or its next `piece` (`Dedicated::read_frame_piece`),
/// by `deadline` if there is one.
async fn read_within(
    conn: &mut Dedicated,
    deadline: Option<tokio::time::Instant>,
    piece: usize,
) -> Result<(Bytes, bool), LeaseRead> {
    let read = match deadline {
        Some(at) => tokio::time::timeout_at(at, conn.read_frame_piece(piece))
            .await
            .map_err(|_| LeaseRead::TimedOut)?,
        None => conn.read_frame_piece(piece).await,
    };
    read.map_err(|_| LeaseRead::Lost)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// No byte limit.
    const ANY: usize = usize::MAX;

    fn at(pool: u32, slot: Option<u16>) -> Option<Target> {
        Some(Target {
            pool: PoolId::configured(pool),
            slot,
        })
    }

    fn get(key: &str) -> Request {
        Request::from_args(&["GET", key])
    }

    fn queued(run: Option<Run>) -> Option<(Option<Target>, usize)> {
        run.map(|r| (r.target, r.queued.len()))
    }

    #[test]
    fn queued_commands_run_where_their_keys_are() {
        let mut t = Transaction::new();
        assert_eq!(t.begin(), Ok(()));
        assert_eq!(t.begin(), Err("ERR MULTI calls can not be nested"));
        assert_eq!(
            t.queue(Request::from_args(&["PING"]), Ok(None), ANY),
            Ok(())
        );
        assert_eq!(t.queue(get("user:1"), Ok(at(1, None)), ANY), Ok(()));
        assert_eq!(t.queue(get("user:2"), Ok(at(1, None)), ANY), Ok(()));
        assert_eq!(queued(t.exec()), Some((at(1, None), 3)));
    }

    #[test]
    fn keys_in_two_places_abort_the_transaction() {
        let mut t = Transaction::new();
        t.begin().unwrap();
        t.queue(get("user:1"), Ok(at(1, None)), ANY).unwrap();
        assert!(matches!(
            t.queue(get("session:1"), Ok(at(0, None)), ANY),
            Err(NotQueued::Elsewhere { .. })
        ));
        assert!(queued(t.exec()).is_none(), "EXEC answers EXECABORT");

        // Two slots of one cluster pool: also elsewhere (CROSSSLOT).
        let mut t = Transaction::new();
        t.begin().unwrap();
        t.queue(get("a"), Ok(at(2, Some(15495))), ANY).unwrap();
        assert_eq!(
            t.queue(get("b"), Ok(at(2, Some(3300))), ANY),
            Err(NotQueued::Elsewhere {
                first: at(2, Some(15495)).unwrap(),
                then: at(2, Some(3300)).unwrap()
            })
        );
    }

    #[test]
    fn a_refused_command_aborts_too() {
        let mut t = Transaction::new();
        t.begin().unwrap();
        let error = Bytes::from_static(b"-ERR wrong number of arguments for 'get' command\r\n");
        assert_eq!(
            t.queue(get("user:1"), Err(error.clone()), ANY),
            Err(NotQueued::Refused(error))
        );
        t.queue(get("user:2"), Ok(at(1, None)), ANY).unwrap();
        assert!(queued(t.exec()).is_none());
    }

    #[test]
    fn queued_bytes_are_bounded_and_an_aborted_queue_holds_nothing() {
        let mut t = Transaction::new();
        t.begin().unwrap();
        let one = get("user:1");
        let len = one.bytes().len();
        t.queue(one, Ok(at(1, None)), 2 * len).unwrap();
        t.queue(get("user:2"), Ok(at(1, None)), 2 * len).unwrap();
        assert_eq!(
            t.queue(get("user:3"), Ok(at(1, None)), 2 * len),
            Err(NotQueued::TooLarge { max_bytes: 2 * len })
        );
        assert_eq!(t.queued_len(), 0, "what was queued is let go");
        // Later commands are answered QUEUED, as Redis does, and not kept.
        assert_eq!(t.queue(get("user:4"), Ok(at(1, None)), ANY), Ok(()));
        assert_eq!(t.queued_len(), 0);
        assert!(queued(t.exec()).is_none(), "EXEC answers EXECABORT");
    }
}
