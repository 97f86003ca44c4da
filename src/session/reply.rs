//! Replies on their way back: the reply to each request as a `Reply`, in
//! whatever state it is in, and how it resolves into the bytes the client
//! gets (metrics recorded, a failover retried, a late backend timed out).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use tokio::sync::oneshot::error::TryRecvError;

use super::merge::Merge;
use crate::backend::{BackendError, ReplyRx};
use crate::resp::{self, shapes};
use crate::route::PoolId;
use crate::state::{Live, State};

/// The reply to one request, in whatever state it is in.
pub enum Reply {
    /// Answered by keyway (or refused).
    Now(Bytes),
    /// Forwarded to one pool; its reply is passed through unchanged.
    Backend(Forwarded),
    /// Sent to several pools; the parts are merged once all arrived.
    Fanout(Box<Fanout>),
    /// Written, then the connection is closed (QUIT, protocol errors).
    Close(Bytes),
    /// Resolved but not written (CLIENT REPLY OFF / SKIP).
    Silent(Box<Reply>),
    /// A (un)subscribe confirmation: written even under CLIENT REPLY OFF,
    /// as Redis delivers pub/sub confirmations whatever the reply mode.
    Push(Bytes),
}

/// A request forwarded to one pool, and where its reply is.
pub struct Forwarded {
    pub pool: PoolId,
    /// The reply's position among all of the client's replies: the tag it
    /// arrives under in the client's inbox.
    pub seq: u64,
    pub wait: Wait,
    pub meta: Meta,
}

pub enum Wait {
    /// Due in the client's inbox.
    Inbox,
    /// Sent again after a failover; due on this receiver.
    Retry(ReplyRx),
    /// Arrived; `None` when the connection was lost with it in flight.
    Arrived(Option<Bytes>),
    /// Answered by keyway instead (timed out), already counted.
    Answered(Bytes),
}

/// What the metrics need to know of a forwarded request.
#[derive(Debug, Clone)]
pub struct Meta {
    /// The command-table name, or `other` (bounded label values).
    pub command: &'static str,
    pub started: Instant,
    pub cache: CacheCount,
    /// The prefix rule of the first key (the `route` label).
    pub route: Option<usize>,
    /// The request as sent, read again only if it turns out slow.
    pub request: Bytes,
    pub client: u64,
    /// For a retry on the new master after a failover.
    pub db: u32,
    pub proto: crate::resp::Protocol,
    pub read_only: bool,
    pub retried: bool,
    /// On a cluster pool: the slot of the request's keys (`None`: keyless).
    pub slot: Option<u16>,
    /// Cluster redirections followed for this request so far.
    pub redirects: u8,
}

pub use crate::command::CacheCount;

impl Meta {
    pub fn new() -> Meta {
        Meta {
            command: "other",
            started: Instant::now(),
            cache: CacheCount::No,
            route: None,
            request: Bytes::new(),
            client: 0,
            db: 0,
            proto: crate::resp::Protocol::Resp2,
            read_only: false,
            retried: false,
            slot: None,
            redirects: 0,
        }
    }

    /// Counts a reply: the command, its outcome and duration, the slow log,
    /// cache hits and misses; an error reply from a backend also counts
    /// under its kind (keyway's own error replies were counted where they
    /// were made).
    fn record(
        &self,
        state: &State,
        live: &Live,
        pool: &str,
        reply: &[u8],
        from_backend: bool,
        now: Instant,
    ) {
        if !live.config.server.metrics {
            return;
        }
        let m = &state.metrics;
        let outcome = if shapes::is_error(reply) {
            "error"
        } else {
            "ok"
        };
        let elapsed = now.saturating_duration_since(self.started);
        m.record_command(
            self.command,
            pool,
            outcome == "error",
            elapsed.as_secs_f64(),
        );
        if outcome == "error" {
            state.stats.commands.error_reply(reply);
        }
        if state.slowlog.logs(elapsed) {
            self.record_slow(state, pool, elapsed);
        }
        if outcome == "error" && from_backend {
            m.errors
                .with_label_values(&[crate::metrics::error_reply_kind(reply)])
                .inc();
        }
        let (hits, misses) = match self.cache {
            CacheCount::No => return,
            CacheCount::Single if outcome == "ok" => {
                if resp::is_nil(reply) {
                    (0, 1)
                } else {
                    (1, 0)
                }
            }
            CacheCount::Single => return,
            CacheCount::PerElement => match shapes::elements(reply) {
                Some(e) => {
                    let nil = e.iter().filter(|f| resp::is_nil(f)).count() as u64;
                    (e.len() as u64 - nil, nil)
                }
                None => return,
            },
        };
        m.record_cache(
            pool,
            (live.generation, self.route),
            || live.router.route_label(self.route).into_owned(),
            hits,
            misses,
        );
    }
}

impl Meta {
    /// A command keyway answered itself goes to the slow log like any other.
    pub fn log_if_slow(&self, state: &State, pool: &str) {
        let elapsed = self.started.elapsed();
        if state.slowlog.logs(elapsed) {
            self.record_slow(state, pool, elapsed);
        }
    }

    fn record_slow(&self, state: &State, pool: &str, elapsed: std::time::Duration) {
        state.metrics.slow_commands.with_label_values(&[pool]).inc();
        let mut parser = crate::resp::RequestParser::default();
        let mut buf = bytes::BytesMut::from(&self.request[..]);
        let args = match parser.next(&mut buf) {
            Ok(Some(r)) => crate::slowlog::trim_args(r.args()),
            _ => Vec::new(),
        };
        let (addr, name) = state
            .clients
            .get(&self.client)
            .map(|c| (c.addr.to_string(), c.name.clone()))
            .unwrap_or_default();
        state.slowlog.record(crate::slowlog::Entry {
            id: 0,
            unix_time: 0,
            duration: elapsed,
            args,
            client_addr: addr,
            client_name: name,
            pool: pool.to_string(),
        });
    }
}

impl Default for Meta {
    fn default() -> Self {
        Self::new()
    }
}

/// Kept behind a box: most replies in a client's queue are forwarded ones,
/// and a fan-out is rarer and larger.
pub struct Fanout {
    pub parts: Vec<Part>,
    pub merge: Merge,
    pub meta: Meta,
}

pub struct Part {
    pub pool: PoolId,
    pub rx: Result<ReplyRx, BackendError>,
    /// The part's reply once it arrived (kept across cancelled waits).
    pub got: Option<Result<Bytes, BackendError>>,
}

impl Part {
    pub fn new(pool: PoolId, rx: Result<ReplyRx, BackendError>) -> Part {
        Part {
            pool,
            rx,
            got: None,
        }
    }
}

impl Reply {
    pub fn now(bytes: Bytes) -> Reply {
        Reply::Now(bytes)
    }

    pub fn close(bytes: Bytes) -> Reply {
        Reply::Close(bytes)
    }

    /// The same reply, marked as a pub/sub confirmation if keyway made it.
    pub fn pushed(self) -> Reply {
        match self {
            Reply::Now(b) if !shapes::is_error(&b) => Reply::Push(b),
            other => other,
        }
    }

    /// Backend requests this reply waits on (a split's parts).
    pub fn parts(&self) -> usize {
        match self {
            Reply::Fanout(f) => f.parts.len(),
            Reply::Silent(inner) => inner.parts(),
            _ => 1,
        }
    }

    pub fn is_push(&self) -> bool {
        matches!(self, Reply::Push(_))
    }

    pub fn closes(&self) -> bool {
        match self {
            Reply::Close(_) => true,
            Reply::Silent(inner) => inner.closes(),
            _ => false,
        }
    }

    pub fn backend_error(e: &BackendError) -> Reply {
        Reply::now(e.to_resp())
    }

    /// The forwarded request inside, CLIENT REPLY OFF or not.
    pub fn forwarded_mut(&mut self) -> Option<&mut Forwarded> {
        match self {
            Reply::Backend(f) => Some(f),
            Reply::Silent(inner) => inner.forwarded_mut(),
            _ => None,
        }
    }

    /// Whether the reply waits on something other than the client's inbox
    /// (fan-out parts, a retry), which `poll_ready` polls.
    pub fn waits_elsewhere(&self) -> bool {
        match self {
            Reply::Backend(f) => matches!(f.wait, Wait::Retry(_)),
            Reply::Fanout(_) => true,
            Reply::Silent(inner) => inner.waits_elsewhere(),
            Reply::Now(_) | Reply::Push(_) | Reply::Close(_) => false,
        }
    }

    /// The bytes if they are there already, without waiting; counted in
    /// the metrics as they are taken (`now`: when they are taken).
    pub fn try_ready(&mut self, state: &State, now: Instant) -> Option<Bytes> {
        match self {
            Reply::Now(b) | Reply::Push(b) | Reply::Close(b) => Some(std::mem::take(b)),
            Reply::Backend(f) => f.try_ready(state, now),
            Reply::Fanout(_) => None,
            Reply::Silent(inner) => inner.try_ready(state, now).map(|_| Bytes::new()),
        }
    }

    /// Polls a reply that `waits_elsewhere`. Each result is stored as soon
    /// as it arrives, so polling may stop and resume at any point.
    pub fn poll_ready(&mut self, cx: &mut Context<'_>, state: &State) -> Poll<Bytes> {
        match self {
            Reply::Now(b) | Reply::Push(b) | Reply::Close(b) => Poll::Ready(std::mem::take(b)),
            Reply::Backend(f) => loop {
                if let Some(b) = f.try_ready(state, Instant::now()) {
                    return Poll::Ready(b);
                }
                match &mut f.wait {
                    Wait::Retry(rx) => match Pin::new(rx).poll(cx) {
                        Poll::Ready(got) => f.wait = Wait::Arrived(got.ok()),
                        Poll::Pending => return Poll::Pending,
                    },
                    // The session's inbox, not this poll, brings it.
                    _ => return Poll::Pending,
                }
            },
            Reply::Fanout(fanout) => {
                let Fanout { parts, merge, meta } = fanout.as_mut();
                for part in parts.iter_mut().filter(|p| p.got.is_none()) {
                    let got = match &mut part.rx {
                        Ok(rx) => match Pin::new(rx).poll(cx) {
                            Poll::Ready(got) => got.map_err(|_| connection_lost(state, part.pool)),
                            Poll::Pending => return Poll::Pending,
                        },
                        Err(e) => Err(e.clone()),
                    };
                    part.got = Some(got);
                }
                let frames = parts
                    .iter_mut()
                    .map(|p| {
                        (
                            p.pool,
                            p.got
                                .take()
                                .unwrap_or_else(|| Err(connection_lost(state, p.pool))),
                        )
                    })
                    .collect();
                let merged = std::mem::replace(merge, Merge::AllOk).merge(state, frames);
                meta.record(state, &state.live(), "multi", &merged, true, Instant::now());
                Poll::Ready(merged)
            }
            Reply::Silent(inner) => inner.poll_ready(cx, state).map(|_| Bytes::new()),
        }
    }
}

impl Forwarded {
    fn try_ready(&mut self, state: &State, now: Instant) -> Option<Bytes> {
        let got = match &mut self.wait {
            Wait::Inbox => return None,
            Wait::Answered(b) => return Some(std::mem::take(b)),
            Wait::Arrived(got) => got.take(),
            Wait::Retry(rx) => match rx.try_recv() {
                Ok(b) => Some(b),
                Err(TryRecvError::Empty) => return None,
                Err(TryRecvError::Closed) => None,
            },
        };
        let retry = cluster_redirect(state, self.pool, &mut self.meta, got.as_ref())
            .or_else(|| failover_retry(state, self.pool, &mut self.meta, got.as_ref()));
        if let Some(retry) = retry {
            self.wait = Wait::Retry(retry);
            return None;
        }
        let from_backend = got.is_some();
        let b = got.unwrap_or_else(|| lost(state, self.pool));
        record(state, &self.meta, self.pool, &b, from_backend, now);
        Some(b)
    }

    /// Whether the reply is still awaited from a backend.
    pub fn awaited(&self) -> bool {
        matches!(self.wait, Wait::Inbox | Wait::Retry(_))
    }

    /// Gives up on a backend that did not answer within `timeout`. The late
    /// reply is dropped when it arrives; the connection's FIFO order is
    /// unaffected.
    pub fn time_out(&mut self, state: &State, timeout: std::time::Duration) {
        state.metrics.errors.with_label_values(&["timeout"]).inc();
        let b = resp::error(&format!(
            "ERR backend '{}' timed out after {}ms",
            &pool_label(state, self.pool),
            timeout.as_millis()
        ));
        record(state, &self.meta, self.pool, &b, false, Instant::now());
        self.wait = Wait::Answered(b);
    }
}

/// A cluster node's redirection (`MOVED`, `ASK`, `TRYAGAIN`,
/// `CLUSTERDOWN`): nothing was executed, so the request is sent again
/// where it says, up to `cluster::MAX_REDIRECTS` times, and the client
/// sees only the final reply.
fn cluster_redirect(
    state: &State,
    pool: PoolId,
    meta: &mut Meta,
    got: Option<&Bytes>,
) -> Option<ReplyRx> {
    // Every reply passes here: anything but an error leaves at once.
    let reply = got.filter(|b| b.first() == Some(&b'-'))?;
    let redirect = crate::cluster::Redirect::parse(reply)?;
    if meta.redirects >= crate::cluster::MAX_REDIRECTS || meta.request.is_empty() {
        return None;
    }
    let cluster = state.live().backends.get(pool)?.cluster()?.clone();
    meta.redirects += 1;
    Some(cluster.follow_redirect(
        redirect,
        meta.request.clone(),
        meta.slot,
        meta.db,
        meta.proto,
    ))
}

/// A reply that says the master moved: `-READONLY` (the write was not
/// applied: safe to send again to the new master), or a lost connection
/// for a read (harmless to repeat). Writes whose fate is unknown are never
/// retried. Deciding is the reply's; sending again is `backend`'s.
fn failover_retry(
    state: &State,
    pool: PoolId,
    meta: &mut Meta,
    got: Option<&Bytes>,
) -> Option<ReplyRx> {
    let readonly = got.is_some_and(|b| b.starts_with(b"-READONLY"));
    // Every reply passes here: an ordinary one leaves at once.
    if meta.retried || meta.request.is_empty() || (got.is_some() && !readonly) {
        return None;
    }
    let backend = state.live().backends.get(pool)?.clone();
    let lost_read = got.is_none() && meta.read_only && state.live().config.backend.retry_reads;
    let demoted = readonly && backend.is_sentinel_managed();
    if !(demoted || lost_read) {
        return None;
    }
    meta.retried = true;
    state
        .metrics
        .errors
        .with_label_values(&[if readonly {
            "readonly_retried"
        } else {
            "read_retried"
        }])
        .inc();
    if let Some(cluster) = backend.cluster() {
        // The node went away: ask the slot's master as the map has it now.
        cluster.request_refresh();
        return Some(cluster.spawn_request(meta.slot, meta.request.clone(), meta.db, meta.proto));
    }
    let state = state.self_arc()?;
    // By id, at the time it is sent: a reload meanwhile may have replaced the pool.
    Some(crate::backend::resend_after_failover(
        move || state.live().backends.get(pool).cloned(),
        meta.request.clone(),
        meta.db,
        meta.proto,
    ))
}

/// Records a forwarded reply under its pool's name, without copying it.
fn record(
    state: &State,
    meta: &Meta,
    pool: PoolId,
    reply: &[u8],
    from_backend: bool,
    now: Instant,
) {
    let live = state.live();
    let name = match live.backends.get(pool) {
        Some(p) => p.name(),
        None => live.router.pool_name(pool),
    };
    meta.record(state, &live, name, reply, from_backend, now);
}

/// A pool's name for errors and metric labels, replica pools included.
fn pool_label(state: &State, pool: PoolId) -> String {
    let live = state.live();
    match live.backends.get(pool) {
        Some(p) => p.name().to_string(),
        None => live.router.pool_name(pool).to_string(),
    }
}

pub fn connection_lost(state: &State, pool: PoolId) -> BackendError {
    BackendError::ConnectionLost {
        pool: pool_label(state, pool),
    }
}

fn lost(state: &State, pool: PoolId) -> Bytes {
    state
        .metrics
        .errors
        .with_label_values(&["connection_lost"])
        .inc();
    connection_lost(state, pool).to_resp()
}
