//! Replies on their way back: each request's reply is a `Reply` queued in
//! request order; the writer resolves them in that order and coalesces
//! whatever is ready into one write.

use std::sync::Arc;
use std::time::Instant;

use super::ClientWriter;
use bytes::{Bytes, BytesMut};
use tokio::io::AsyncWriteExt;
use tokio::sync::oneshot::error::TryRecvError;
use tokio::sync::{mpsc, oneshot};

use super::merge::Merge;
use crate::backend::{BackendError, ReplyRx};
use crate::resp::{self, shapes};
use crate::route::PoolId;
use crate::state::{Live, State};

/// The reply to one request, in whatever state it is in.
pub enum Reply {
    /// Answered by keyway (or refused). Boxed, like every variant but the
    /// hot `Backend`, so a reply queue slot stays 24 bytes.
    Now(Box<Bytes>),
    /// Forwarded to one pool; its reply is passed through unchanged.
    Backend {
        /// A `PoolId`, kept narrow for the same reason.
        pool: u32,
        rx: ReplyRx,
        meta: Box<Meta>,
    },
    /// Sent to several pools; the parts are merged once all arrived.
    Fanout(Box<Fanout>),
    /// Written, then the connection is closed (QUIT, protocol errors).
    Close(Box<Bytes>),
    /// Resolved but not written (CLIENT REPLY OFF / SKIP).
    Silent(Box<Reply>),
    /// Writes nothing; fires once every earlier reply is resolved.
    Barrier(Option<oneshot::Sender<()>>),
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
}

/// How a reply counts towards cache hits and misses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheCount {
    No,
    /// A read of one value: nil is a miss.
    Single,
    /// MGET, HMGET: each element counts.
    PerElement,
}

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
        }
    }

    fn record(&self, state: &State, live: &Live, pool: &str, reply: &[u8]) {
        if !live.config.server.metrics {
            return;
        }
        let m = &state.metrics;
        let outcome = if shapes::is_error(reply) {
            "error"
        } else {
            "ok"
        };
        let elapsed = self.started.elapsed();
        m.record_command(
            self.command,
            pool,
            outcome == "error",
            elapsed.as_secs_f64(),
        );
        if elapsed >= state.slowlog.threshold {
            self.record_slow(state, pool, elapsed);
        }
        if outcome == "error" {
            m.errors.with_label_values(&["backend_error_reply"]).inc();
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

/// Kept behind a box: a client's reply queue holds many replies, and most
/// are small.
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
        Reply::Now(Box::new(bytes))
    }

    pub fn close(bytes: Bytes) -> Reply {
        Reply::Close(Box::new(bytes))
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

    /// The bytes if they are there already, without waiting.
    fn try_ready(&mut self, state: &State) -> Option<Bytes> {
        match self {
            Reply::Now(b) | Reply::Close(b) => Some(b.as_ref().clone()),
            Reply::Backend { pool, rx, meta } => {
                let pool = &(*pool as PoolId);
                let got = match rx.try_recv() {
                    Ok(b) => Some(b),
                    Err(TryRecvError::Empty) => return None,
                    Err(TryRecvError::Closed) => None,
                };
                if let Some(retry) = failover_retry(state, *pool, meta, got.as_ref()) {
                    *rx = retry;
                    return None;
                }
                let b = got.unwrap_or_else(|| lost(state, *pool));
                record(state, meta, *pool, &b);
                Some(b)
            }
            Reply::Fanout(_) => None,
            Reply::Silent(inner) => inner.try_ready(state).map(|_| Bytes::new()),
            Reply::Barrier(done) => {
                if let Some(done) = done.take() {
                    let _ = done.send(());
                }
                Some(Bytes::new())
            }
        }
    }

    /// Waits for the reply. Cancel-safe: every wait is on a receiver held
    /// by reference and each result is stored as soon as it arrives, so the
    /// writer may drop this future to write bytes and call it again later.
    async fn ready(&mut self, state: &State) -> Bytes {
        match self {
            Reply::Now(b) | Reply::Close(b) => b.as_ref().clone(),
            Reply::Backend { pool, rx, meta } => loop {
                let pool = &(*pool as PoolId);
                let timeout = state.live().config.backend.request_timeout_ms;
                let got = if timeout == 0 {
                    (&mut *rx).await.ok()
                } else {
                    let deadline = tokio::time::Instant::from_std(meta.started)
                        + std::time::Duration::from_millis(timeout);
                    match tokio::time::timeout_at(deadline, &mut *rx).await {
                        Ok(got) => got.ok(),
                        Err(_) => {
                            // The late reply is dropped when it arrives; the
                            // connection's FIFO order is unaffected.
                            state.metrics.errors.with_label_values(&["timeout"]).inc();
                            let b = resp::error(&format!(
                                "ERR backend '{}' timed out after {timeout}ms",
                                &pool_label(state, *pool)
                            ));
                            record(state, meta, *pool, &b);
                            break b;
                        }
                    }
                };
                if let Some(retry) = failover_retry(state, *pool, meta, got.as_ref()) {
                    *rx = retry;
                    continue;
                }
                let b = got.unwrap_or_else(|| lost(state, *pool));
                record(state, meta, *pool, &b);
                break b;
            },
            Reply::Fanout(fanout) => {
                let Fanout { parts, merge, meta } = fanout.as_mut();
                for part in parts.iter_mut() {
                    if part.got.is_none() {
                        let got = match &mut part.rx {
                            Ok(rx) => rx.await.map_err(|_| connection_lost(state, part.pool)),
                            Err(e) => Err(e.clone()),
                        };
                        part.got = Some(got);
                    }
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
                meta.record(state, &state.live(), "multi", &merged);
                merged
            }
            Reply::Silent(inner) => {
                Box::pin(inner.ready(state)).await;
                Bytes::new()
            }
            Reply::Barrier(_) => self.try_ready(state).unwrap_or_default(),
        }
    }
}

/// How long a retried request waits for Sentinel to name a new master.
const FAILOVER_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// A reply that says the master moved: `-READONLY` (the write was not
/// applied: safe to send again to the new master), or a lost connection
/// for a read (harmless to repeat). Writes whose fate is unknown are never
/// retried. The retry runs in its own task so the writer can be cancelled.
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
    let (tx, rx) = tokio::sync::oneshot::channel();
    let state = state.self_arc()?;
    let request = meta.request.clone();
    let (db, proto) = (meta.db, meta.proto);
    tokio::spawn(async move {
        let Some(backend) = state.live().backends.get(pool).cloned() else {
            return;
        };
        if backend.is_sentinel_managed() {
            let mut changes = backend.changes();
            changes.mark_unchanged();
            backend.request_rediscovery();
            let _ = tokio::time::timeout(FAILOVER_WAIT, changes.changed()).await;
        }
        let reply = match backend.conn(db, proto, 0).await {
            Ok(conn) => match conn.send(request).await {
                Ok(reply) => reply.await.ok(),
                Err(_) => None,
            },
            Err(e) => Some(e.to_resp()),
        };
        if let Some(reply) = reply {
            let _ = tx.send(reply);
        }
    });
    Some(rx)
}

/// Records a forwarded reply under its pool's name, without copying it.
fn record(state: &State, meta: &Meta, pool: PoolId, reply: &[u8]) {
    let live = state.live();
    let name = match live.backends.get(pool) {
        Some(p) => p.name(),
        None => live.router.pool_name(pool),
    };
    meta.record(state, &live, name, reply);
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

/// Writes replies in request order. Writing and waiting for the next reply
/// run side by side, so a client that sends a long pipeline before reading
/// anything is served as Redis would serve it, up to the output limit.
/// How far the writer got, shared with the reader so it can hold back new
/// requests while the replies already owed would exceed the output limit.
pub struct Flow {
    /// Replies taken by the writer so far.
    pub taken: std::sync::atomic::AtomicU64,
    /// Recent reply size (moving average), to turn bytes into a count.
    pub avg_reply: std::sync::atomic::AtomicUsize,
    pub progress: tokio::sync::Notify,
}

impl Flow {
    pub fn new() -> Flow {
        Flow {
            taken: std::sync::atomic::AtomicU64::new(0),
            avg_reply: std::sync::atomic::AtomicUsize::new(64),
            progress: tokio::sync::Notify::new(),
        }
    }

    fn took(&self, len: usize) {
        use std::sync::atomic::Ordering::Relaxed;
        let avg = self.avg_reply.load(Relaxed);
        self.avg_reply.store((avg * 7 + len) / 8 + 1, Relaxed);
        self.taken.fetch_add(1, Relaxed);
    }

    /// Replies a client may have owed at once: the pipeline limit, or fewer
    /// when replies are large, so owed bytes stay near the output limit.
    pub fn allowed(&self, max_pipeline: usize, output_limit: usize) -> u64 {
        let avg = self
            .avg_reply
            .load(std::sync::atomic::Ordering::Relaxed)
            .max(1);
        (output_limit / avg).clamp(1, max_pipeline) as u64
    }
}

impl Default for Flow {
    fn default() -> Self {
        Self::new()
    }
}

pub async fn write_replies(
    mut wr: ClientWriter,
    mut rx: mpsc::Receiver<Reply>,
    state: Arc<State>,
    flow: Arc<Flow>,
) {
    // Grows with the replies; idle clients keep none.
    let mut out = BytesMut::new();
    let mut current: Option<Reply> = None;
    let mut input_done = false;
    // Above the output limit the writer stops taking replies, the pipeline
    // channel fills and the reader stops reading the client; a client kept
    // there too long (it does not read) is disconnected.
    let limit = state.live().config.server.client_output_limit_bytes.max(1);
    let stall =
        std::time::Duration::from_secs(state.live().config.server.client_output_stall_secs.max(1));
    let mut stalled_since: Option<tokio::time::Instant> = None;
    loop {
        // Take everything that is ready without waiting: one write per wake-up.
        while out.len() < limit {
            if current.is_none() && !input_done {
                match rx.try_recv() {
                    Ok(r) => current = Some(r),
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) => input_done = true,
                }
            }
            let Some(reply) = current.as_mut() else { break };
            let Some(bytes) = reply.try_ready(&state) else {
                break;
            };
            out.extend_from_slice(&bytes);
            flow.took(bytes.len());
            flow.progress.notify_one();
            input_done |= reply.closes();
            current = None;
        }
        if out.is_empty() && current.is_none() && input_done {
            break;
        }
        // The stall clock starts when the buffer first reaches the limit and
        // stops only when the client has read everything owed.
        if out.is_empty() {
            stalled_since = None;
        } else if out.len() >= limit {
            let since = *stalled_since.get_or_insert_with(tokio::time::Instant::now);
            if since.elapsed() >= stall {
                tracing::warn!("disconnecting a client that does not read its replies");
                state
                    .metrics
                    .errors
                    .with_label_values(&["client_output_stalled"])
                    .inc();
                return;
            }
        }
        let can_take = out.len() < limit;
        let stall_deadline = stalled_since.map(|s| s + stall);
        // A timer only while stalled: select! builds every branch's future.
        let stall_timer = async {
            match stall_deadline {
                Some(deadline) => tokio::time::sleep_until(deadline).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            // Fixed order, no random draw per wake-up: writing owed bytes
            // first keeps the buffer small.
            biased;
            _ = stall_timer, if stall_deadline.is_some() => {}
            written = wr.write_buf(&mut out), if !out.is_empty() => {
                if !matches!(written, Ok(n) if n > 0) {
                    return;
                }
            }
            bytes = wait_current(&mut current, &state), if can_take && current.is_some() => {
                out.extend_from_slice(&bytes);
                flow.took(bytes.len());
                flow.progress.notify_one();
                if current.as_ref().is_some_and(Reply::closes) {
                    input_done = true;
                }
                current = None;
            }
            next = rx.recv(), if can_take && current.is_none() && !input_done => match next {
                Some(r) => current = Some(r),
                None => input_done = true,
            },
        }
    }
    let _ = wr.shutdown().await;
}

async fn wait_current(current: &mut Option<Reply>, state: &State) -> Bytes {
    match current {
        Some(reply) => reply.ready(state).await,
        None => std::future::pending().await,
    }
}
