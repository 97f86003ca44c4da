//! Following a Sentinel-managed master. Discovery asks every sentinel and
//! takes the address most of them report, confirmed by the node's own
//! ROLE. A watcher per sentinel subscribes to `+switch-master` (and logs
//! sdown/odown); a poll is the fallback for a missed event. A confirmed
//! change swaps the pool's address, off the request path. The follower's
//! queries (the master's address, its replicas, ROLE, INFO) go on
//! connections it keeps (`Queries`), not a new one per poll.
//!
//! A failover's start (`+try-failover`) raises the pool's fence: writes
//! wait until the new master is confirmed (then go there), the failover
//! is aborted (`-failover-abort-*`), or `MAX_FENCE` passes. Writes the old
//! master would acknowledge after the replica's promotion are lost when it
//! is demoted; held, they are not.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::mpsc;

use crate::backend::Pool;
use crate::backend::{Dedicated, MAX_FENCE};
use crate::config::{Addr, Endpoint, SentinelConfig};
use crate::resp::{shapes, Request};
use crate::state::State;

const QUERY_TIMEOUT: Duration = Duration::from_millis(500);

/// Asks the sentinels for the master's address and confirms it with ROLE,
/// on connections of its own (discovery at start, `keyway --check`).
pub async fn discover(cfg: &SentinelConfig, node: &Endpoint) -> Result<Addr, String> {
    Queries::default().discover(cfg, node).await
}

/// Most connections one follower keeps for its queries: its sentinels and
/// the few nodes it asks ROLE or INFO.
const MAX_QUERY_CONNS: usize = 16;

/// A follower's connections for its queries, one per sentinel and per node
/// asked, opened on first use and kept: a poll costs round trips, not new
/// connections. A connection whose query failed or timed out is closed, so
/// a late reply never answers the next query.
#[derive(Default)]
struct Queries {
    conns: HashMap<(Peer, Addr), Dedicated>,
}

/// Who a query connection talks to (a sentinel and a node never share one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Peer {
    Sentinel,
    Node,
}

/// One query on `conn` (or a new connection when there is none): the
/// reply, and the connection when it may serve the next query.
async fn ask_on(
    conn: Option<Dedicated>,
    endpoint: &Endpoint,
    args: &[&str],
) -> (Option<Dedicated>, Result<Bytes, String>) {
    let mut conn = match conn {
        Some(c) => c,
        None => match Dedicated::connect(endpoint, QUERY_TIMEOUT).await {
            Ok(c) => c,
            Err(e) => return (None, Err(e)),
        },
    };
    let request = Request::from_args(args);
    let asked = tokio::time::timeout(QUERY_TIMEOUT, async {
        conn.send(request.bytes()).await?;
        conn.read_frame().await
    })
    .await;
    match asked {
        Ok(Ok(reply)) => (Some(conn), Ok(reply)),
        Ok(Err(e)) => (None, Err(e.to_string())),
        Err(_) => (
            None,
            Err(format!("no reply within {}ms", QUERY_TIMEOUT.as_millis())),
        ),
    }
}

impl Queries {
    async fn ask(
        &mut self,
        peer: Peer,
        endpoint: &Endpoint,
        args: &[&str],
    ) -> Result<Bytes, String> {
        let Some(addr) = endpoint.addr.clone() else {
            return Err("no address".to_string());
        };
        let key = (peer, addr);
        let (conn, reply) = ask_on(self.conns.remove(&key), endpoint, args).await;
        self.keep(key, conn);
        reply
    }

    fn keep(&mut self, key: (Peer, Addr), conn: Option<Dedicated>) {
        let Some(conn) = conn else { return };
        if self.conns.len() >= MAX_QUERY_CONNS {
            // Nodes come and go with failovers; sentinels stay.
            self.conns.retain(|(peer, _), _| *peer == Peer::Sentinel);
        }
        if self.conns.len() < MAX_QUERY_CONNS {
            self.conns.insert(key, conn);
        }
    }

    /// Asks every sentinel side by side, so one that is down delays no other.
    async fn ask_sentinels(
        &mut self,
        cfg: &SentinelConfig,
        args: &[&str],
    ) -> Vec<Result<Bytes, String>> {
        let asks: Vec<_> = cfg
            .spec
            .sentinels
            .iter()
            .map(|sentinel| {
                let endpoint = cfg.sentinel_endpoint(sentinel);
                let key = (Peer::Sentinel, sentinel.clone());
                let conn = self.conns.remove(&key);
                let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
                let task = tokio::spawn(async move {
                    let args: Vec<&str> = args.iter().map(String::as_str).collect();
                    ask_on(conn, &endpoint, &args).await
                });
                (key, task)
            })
            .collect();
        let mut replies = Vec::with_capacity(asks.len());
        for (key, task) in asks {
            match task.await {
                Ok((conn, reply)) => {
                    self.keep(key, conn);
                    replies.push(reply);
                }
                Err(e) => replies.push(Err(e.to_string())),
            }
        }
        replies
    }

    /// Asks the sentinels for the master's address and confirms it with
    /// ROLE. Unreachable sentinels are skipped; disagreeing ones are outvoted.
    async fn discover(&mut self, cfg: &SentinelConfig, node: &Endpoint) -> Result<Addr, String> {
        let ask = [
            "SENTINEL",
            "GET-MASTER-ADDR-BY-NAME",
            cfg.spec.master.as_str(),
        ];
        let mut votes: HashMap<Addr, usize> = HashMap::new();
        let mut errors = Vec::new();
        for reply in self.ask_sentinels(cfg, &ask).await {
            match reply.and_then(|r| master_addr(&r)) {
                Ok(addr) => *votes.entry(addr).or_default() += 1,
                Err(e) => errors.push(e),
            }
        }
        let mut candidates: Vec<(Addr, usize)> = votes.into_iter().collect();
        candidates.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        if candidates.is_empty() {
            return Err(format!(
                "no sentinel answered for master '{}': {}",
                cfg.spec.master,
                errors.join("; ")
            ));
        }
        for (addr, _) in &candidates {
            if self.confirms_master(node, addr).await {
                return Ok(addr.clone());
            }
        }
        Err(format!(
            "sentinels report {} for '{}' but none confirms ROLE master",
            candidates
                .iter()
                .map(|(addr, n)| format!("{addr} ({n} votes)"))
                .collect::<Vec<_>>()
                .join(", "),
            cfg.spec.master
        ))
    }

    /// Whether the server at `addr` answers ROLE with `master`.
    async fn confirms_master(&mut self, node: &Endpoint, addr: &Addr) -> bool {
        let Ok(role) = self.ask(Peer::Node, &at(node, addr), &["ROLE"]).await else {
            return false;
        };
        shapes::elements(&role)
            .and_then(|e| {
                e.first()
                    .and_then(|f| shapes::bulk(f).map(|b| b == b"master"))
            })
            .unwrap_or(false)
    }
}

/// `node`'s credentials at another address, in db 0.
fn at(node: &Endpoint, addr: &Addr) -> Endpoint {
    let mut endpoint = node.clone();
    endpoint.addr = Some(addr.clone());
    endpoint.db = 0;
    endpoint
}

/// The address in a `SENTINEL GET-MASTER-ADDR-BY-NAME` reply.
fn master_addr(reply: &[u8]) -> Result<Addr, String> {
    let parts = shapes::elements(reply).ok_or("no master known")?;
    let host = parts
        .first()
        .and_then(|p| shapes::bulk(p))
        .ok_or("no master known")?;
    let port = parts
        .get(1)
        .and_then(|p| shapes::bulk(p))
        .ok_or("no master known")?;
    let port: u16 = std::str::from_utf8(port)
        .ok()
        .and_then(|p| p.parse().ok())
        .ok_or("bad port")?;
    Ok(Addr::new(String::from_utf8_lossy(host), port))
}

/// What a sentinel announced about the followed master.
enum Event {
    /// `+try-failover`: a failover of this master starts.
    Started,
    /// `-failover-abort-*`: it ended without a new master.
    Aborted,
    Switch(Switch),
}

/// A `+switch-master` a sentinel announced: when, and the new master
/// (`<name> <old-ip> <old-port> <new-ip> <new-port>`).
struct Switch {
    at: Instant,
    to: Option<Addr>,
}

impl Switch {
    fn parse(payload: &str) -> Switch {
        let words: Vec<&str> = payload.split(' ').collect();
        let to = match words.as_slice() {
            [_, _, _, host, port] => port.parse().ok().map(|p| Addr::new(*host, p)),
            _ => None,
        };
        Switch {
            at: Instant::now(),
            to,
        }
    }
}

/// A replica fit to read from: up as Sentinel sees it, its link to the
/// master up, and heard from the master within `max_lag_secs`.
async fn healthy_replica(
    queries: &mut Queries,
    cfg: &SentinelConfig,
    node: &Endpoint,
    max_lag_secs: u64,
) -> Option<Addr> {
    let mut listed = None;
    for sentinel in &cfg.spec.sentinels {
        let endpoint = cfg.sentinel_endpoint(sentinel);
        if let Ok(reply) = queries
            .ask(
                Peer::Sentinel,
                &endpoint,
                &["SENTINEL", "REPLICAS", &cfg.spec.master],
            )
            .await
        {
            listed = Some(reply);
            break;
        }
    }
    let listed = listed?;
    let mut candidates = Vec::new();
    for replica in shapes::elements(&listed)? {
        let Some(fields) = shapes::elements(replica) else {
            continue;
        };
        let text = |name: &str| -> Option<String> {
            fields
                .chunks(2)
                .find(|kv| shapes::bulk(kv[0]) == Some(name.as_bytes()))
                .and_then(|kv| kv.get(1).and_then(|v| shapes::bulk(v)))
                .map(|v| String::from_utf8_lossy(v).into_owned())
        };
        let flags = text("flags").unwrap_or_default();
        let down = ["s_down", "o_down", "disconnected"]
            .iter()
            .any(|f| flags.contains(f));
        if down || text("master-link-status").as_deref() != Some("ok") {
            continue;
        }
        if let (Some(ip), Some(port)) =
            (text("ip"), text("port").and_then(|p| p.parse::<u16>().ok()))
        {
            candidates.push(Addr::new(ip, port));
        }
    }
    candidates.sort();
    for addr in candidates {
        let Ok(info) = queries
            .ask(Peer::Node, &at(node, &addr), &["INFO", "replication"])
            .await
        else {
            continue;
        };
        let Some(text) = crate::resp::info::text(&info) else {
            continue;
        };
        let field = |name: &str| crate::resp::info::field(&text, name);
        let link_up = field("master_link_status") == Some("up");
        let fresh = field("master_last_io_seconds_ago")
            .and_then(|s| s.parse::<i64>().ok())
            .is_some_and(|s| (0..=max_lag_secs as i64).contains(&s));
        if link_up && fresh {
            return Some(addr);
        }
    }
    None
}

/// Keeps one pool on its current master (and, with replica reads, its
/// replica pool on a healthy replica) for as long as keyway runs.
pub async fn follow(
    state: Arc<State>,
    pool: Arc<Pool>,
    node: Endpoint,
    cfg: SentinelConfig,
    poll: Duration,
    replica: Option<(Arc<Pool>, u64)>,
) {
    let (events_tx, mut events) = mpsc::channel::<Event>(16);
    let mut watchers = Vec::new();
    for sentinel in &cfg.spec.sentinels {
        watchers.push(tokio::spawn(watch_sentinel(
            cfg.sentinel_endpoint(sentinel),
            cfg.spec.master.clone(),
            events_tx.clone(),
        )));
    }
    let _watchers = AbortOnDrop(watchers);
    let mut queries = Queries::default();
    let fence = pool.fence().clone();
    let mut fence_until: Option<tokio::time::Instant> = None;
    loop {
        let fence_deadline = fence_until.unwrap_or_else(|| tokio::time::Instant::now() + poll);
        let event = tokio::select! {
            event = events.recv() => event,
            _ = tokio::time::sleep(poll) => None,
            _ = tokio::time::sleep_until(fence_deadline), if fence_until.is_some() => {
                tracing::warn!(pool = %pool.name(), "no new master confirmed in {}s; lifting the write fence", MAX_FENCE.as_secs());
                fence.lift();
                fence_until = None;
                None
            }
            _ = pool.rediscovery_requested() => Some(Event::Switch(Switch { at: Instant::now(), to: None })),
        };
        let switch = match event {
            Some(Event::Started) => {
                if fence.raise() {
                    tracing::warn!(pool = %pool.name(), "failover under way: holding writes until the new master is confirmed");
                }
                fence_until = Some(tokio::time::Instant::now() + MAX_FENCE);
                continue;
            }
            Some(Event::Aborted) => {
                if fence.lift() {
                    tracing::warn!(pool = %pool.name(), "failover aborted: writes go to the master again");
                }
                fence_until = None;
                continue;
            }
            Some(Event::Switch(switch)) => Some(switch),
            None => None,
        };
        let switch_seen = switch.as_ref().map(|s| s.at);
        // The announcing sentinel names the new master; the others may
        // still vote for the old one for a while, so ROLE alone decides.
        let announced = match switch.and_then(|s| s.to) {
            Some(addr) if queries.confirms_master(&node, &addr).await => Some(addr),
            _ => None,
        };
        let confirmed_switch = announced.is_some();
        let found = match announced {
            Some(addr) => Ok(addr),
            None => queries.discover(&cfg, &node).await,
        };
        match found {
            Ok(master) => {
                let old = pool.endpoint().addr.clone();
                if confirmed_switch && old.as_ref() == Some(&master) {
                    // Already there (a poll got ahead of the event): the
                    // announced master is confirmed, so held writes may go.
                    fence.lift();
                    fence_until = None;
                }
                if pool.set_address(Some(master.clone())) {
                    let name = pool.name().to_string();
                    if let Some(old) = old {
                        state.metrics.failovers.with_label_values(&[&name]).inc();
                        if let Some(at) = switch_seen {
                            state
                                .metrics
                                .failover_seconds
                                .with_label_values(&[&name])
                                .observe(at.elapsed().as_secs_f64());
                        }
                        tracing::warn!(pool = %name, old = %old, new = %master, "master changed: following the failover");
                    } else {
                        tracing::info!(pool = %name, master = %master, "master discovered");
                    }
                    // Held writes now go to the new master.
                    fence.lift();
                    fence_until = None;
                }
            }
            Err(e) => tracing::debug!(pool = %pool.name(), "discovery failed: {e}"),
        }
        if let Some((replica_pool, max_lag)) = &replica {
            match healthy_replica(&mut queries, &cfg, &node, *max_lag).await {
                Some(chosen) => {
                    if replica_pool.set_address(Some(chosen.clone())) {
                        tracing::info!(pool = %pool.name(), replica = %chosen, "reading from replica");
                    }
                }
                None => {
                    if replica_pool.set_address(None) {
                        tracing::warn!(pool = %pool.name(), "no healthy replica; reads go to the master");
                    }
                }
            }
        }
    }
}

/// Subscribes to one sentinel's events, reconnecting while it is away.
async fn watch_sentinel(endpoint: Endpoint, master: String, events: mpsc::Sender<Event>) {
    let mut backoff =
        crate::backend::Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
    let mut was_connected = false;
    // Warned once per outage; the retries after it are debug lines.
    let mut warned = false;
    loop {
        match Dedicated::connect(&endpoint, QUERY_TIMEOUT).await {
            Ok(mut conn) => {
                let subscribe = Request::from_args(&[
                    "SUBSCRIBE",
                    "+switch-master",
                    "+try-failover",
                    "-failover-abort-not-elected",
                    "-failover-abort-slave-timeout",
                    "-failover-abort-no-good-slave",
                    "+sdown",
                    "-sdown",
                    "+odown",
                ]);
                if conn.send(subscribe.bytes()).await.is_ok() {
                    if was_connected {
                        tracing::info!(sentinel = %endpoint.address(), "resubscribed to sentinel");
                    }
                    was_connected = true;
                    warned = false;
                    backoff.reset();
                    while let Ok(frame) = conn.read_frame().await {
                        let Some(parts) = shapes::elements(&frame) else {
                            continue;
                        };
                        let (Some(kind), Some(channel), Some(payload)) = (
                            parts.first().and_then(|p| shapes::bulk(p)),
                            parts.get(1).and_then(|p| shapes::bulk(p)),
                            parts.get(2).and_then(|p| shapes::bulk(p)),
                        ) else {
                            continue;
                        };
                        if kind != b"message" {
                            continue;
                        }
                        let payload = String::from_utf8_lossy(payload);
                        let mentions_master = payload.split(' ').any(|w| w == master);
                        if !mentions_master {
                            continue;
                        }
                        match channel {
                            b"+switch-master" => {
                                tracing::info!(sentinel = %endpoint.address(), event = %payload, "sentinel reports +switch-master");
                                let _ = events.try_send(Event::Switch(Switch::parse(&payload)));
                            }
                            b"+try-failover" => {
                                tracing::info!(sentinel = %endpoint.address(), event = %payload, "sentinel starts a failover");
                                let _ = events.try_send(Event::Started);
                            }
                            abort if abort.starts_with(b"-failover-abort") => {
                                tracing::info!(sentinel = %endpoint.address(), event = %String::from_utf8_lossy(abort), "sentinel aborted a failover");
                                let _ = events.try_send(Event::Aborted);
                            }
                            other => tracing::info!(
                                sentinel = %endpoint.address(),
                                event = %String::from_utf8_lossy(other),
                                detail = %payload,
                                "sentinel event"
                            ),
                        }
                    }
                }
                tracing::warn!(sentinel = %endpoint.address(), "lost the sentinel subscription; reconnecting");
            }
            Err(e) if !warned => {
                warned = true;
                tracing::warn!(sentinel = %endpoint.address(), "sentinel unreachable: {e}")
            }
            Err(e) => tracing::debug!(sentinel = %endpoint.address(), "sentinel unreachable: {e}"),
        }
        tokio::time::sleep(backoff.next_wait()).await;
    }
}

struct AbortOnDrop(Vec<tokio::task::JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.iter().for_each(|t| t.abort());
    }
}
