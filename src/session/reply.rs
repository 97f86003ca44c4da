//! Replies on their way back: the reply to each request as a `Reply`, in
//! whatever state it is in, and how it resolves into the bytes the client
//! gets (a redirection followed, a failover retried, a late backend timed
//! out). Resolving records nothing: `Output` hands each completed reply to
//! the `observe::Observer`, once.

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
use crate::state::State;

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
    /// Once resolved: whose the reply is.
    pub source: Source,
}

/// Whose a resolved reply is: the backend's, or keyway's own error for a
/// request whose reply never came. The observer counts each kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    Backend,
    TimedOut,
    ConnectionLost,
}

/// Why a request was sent a second time (counted by the observer).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Retry {
    /// `-READONLY`: the write was refused by a demoted master.
    Readonly,
    /// The connection was lost with a read in flight.
    LostRead,
}

impl Retry {
    pub fn label(self) -> &'static str {
        match self {
            Retry::Readonly => "readonly_retried",
            Retry::LostRead => "read_retried",
        }
    }
}

pub enum Wait {
    /// Due in the client's inbox.
    Inbox,
    /// Sent again after a failover; due on this receiver.
    Retry(ReplyRx),
    /// Arrived; `None` when the connection was lost with it in flight.
    Arrived(Option<Bytes>),
    /// Answered by keyway instead (timed out).
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
    /// Set once the request was sent again after a failover.
    pub retried: Option<Retry>,
    /// On a cluster pool: the slot of the request's keys (`None`: keyless).
    pub slot: Option<u16>,
    /// Cluster redirections followed for this request so far.
    pub redirects: u8,
}

pub use crate::command::CacheCount;

impl Meta {
    /// The context for this request's reply, the request's bytes moved
    /// into it (an empty `Bytes` is cloned without an atomic operation).
    pub fn take(&mut self) -> Meta {
        // Field by field: `..self.clone()` would clone the emptied request
        // and drop the clone (two calls through `Bytes`' vtable).
        Meta {
            command: self.command,
            started: self.started,
            cache: self.cache,
            route: self.route,
            request: std::mem::take(&mut self.request),
            client: self.client,
            db: self.db,
            proto: self.proto,
            read_only: self.read_only,
            retried: self.retried,
            slot: self.slot,
            redirects: self.redirects,
        }
    }

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
            retried: None,
            slot: None,
            redirects: 0,
        }
    }
}

impl Default for Meta {
    fn default() -> Self {
        Self::new()
    }
}

/// A resolved reply, as the observer sees it.
pub struct Observed<'a> {
    pub meta: &'a Meta,
    /// The pool that answered; `None` for a reply merged from several.
    pub pool: Option<PoolId>,
    pub source: Source,
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

    /// The bytes if they are there already, without waiting (for a
    /// `Silent` reply too: `is_silent` says they are not written).
    pub fn try_ready(&mut self, state: &State) -> Option<Bytes> {
        match self {
            Reply::Now(b) | Reply::Push(b) | Reply::Close(b) => Some(std::mem::take(b)),
            Reply::Backend(f) => f.try_ready(state),
            Reply::Fanout(_) => None,
            Reply::Silent(inner) => inner.try_ready(state),
        }
    }

    /// Resolved but not written (CLIENT REPLY OFF / SKIP).
    pub fn is_silent(&self) -> bool {
        matches!(self, Reply::Silent(_))
    }

    /// What the observer needs of a resolved reply that went to the
    /// backends; `None` for keyway's own (counted where they were made).
    pub fn observed(&self) -> Option<Observed<'_>> {
        match self {
            Reply::Backend(f) => Some(Observed {
                meta: &f.meta,
                pool: Some(f.pool),
                source: f.source,
            }),
            Reply::Fanout(f) => Some(Observed {
                meta: &f.meta,
                pool: None,
                source: Source::Backend,
            }),
            Reply::Silent(inner) => inner.observed(),
            Reply::Now(_) | Reply::Push(_) | Reply::Close(_) => None,
        }
    }

    /// Polls a reply that `waits_elsewhere`. Each result is stored as soon
    /// as it arrives, so polling may stop and resume at any point.
    pub fn poll_ready(&mut self, cx: &mut Context<'_>, state: &State) -> Poll<Bytes> {
        match self {
            Reply::Now(b) | Reply::Push(b) | Reply::Close(b) => Poll::Ready(std::mem::take(b)),
            Reply::Backend(f) => loop {
                if let Some(b) = f.try_ready(state) {
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
                let Fanout { parts, merge, .. } = fanout.as_mut();
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
                Poll::Ready(std::mem::replace(merge, Merge::AllOk).merge(state, frames))
            }
            Reply::Silent(inner) => inner.poll_ready(cx, state),
        }
    }
}

impl Forwarded {
    fn try_ready(&mut self, state: &State) -> Option<Bytes> {
        let got = match &mut self.wait {
            Wait::Inbox => return None,
            Wait::Answered(b) => {
                self.source = Source::TimedOut;
                return Some(std::mem::take(b));
            }
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
        match got {
            Some(reply) => {
                self.source = Source::Backend;
                Some(reply)
            }
            None => {
                self.source = Source::ConnectionLost;
                Some(connection_lost(state, self.pool).to_resp())
            }
        }
    }

    /// Whether the reply is still awaited from a backend.
    pub fn awaited(&self) -> bool {
        matches!(self.wait, Wait::Inbox | Wait::Retry(_))
    }

    /// Gives up on a backend that did not answer within `timeout`. The late
    /// reply is dropped when it arrives; the connection's FIFO order is
    /// unaffected.
    #[cold]
    #[inline(never)]
    pub fn time_out(&mut self, state: &State, timeout: std::time::Duration) {
        let b = resp::error(&format!(
            "ERR backend '{}' timed out after {}ms",
            &pool_label(state, self.pool),
            timeout.as_millis()
        ));
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
    follow_redirect(state, pool, meta, reply)
}

#[cold]
#[inline(never)]
fn follow_redirect(state: &State, pool: PoolId, meta: &mut Meta, reply: &Bytes) -> Option<ReplyRx> {
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
    if meta.retried.is_some() || meta.request.is_empty() || (got.is_some() && !readonly) {
        return None;
    }
    retry_after_failover(state, pool, meta, got.is_none(), readonly)
}

#[cold]
#[inline(never)]
fn retry_after_failover(
    state: &State,
    pool: PoolId,
    meta: &mut Meta,
    lost: bool,
    readonly: bool,
) -> Option<ReplyRx> {
    let backend = state.live().backends.get(pool)?.clone();
    let lost_read = lost && meta.read_only && state.live().config.backend.retry_reads;
    let demoted = readonly && backend.is_sentinel_managed();
    if !(demoted || lost_read) {
        return None;
    }
    meta.retried = Some(if readonly {
        Retry::Readonly
    } else {
        Retry::LostRead
    });
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

/// A pool's name for errors and metric labels, replica pools included.
#[cold]
#[inline(never)]
fn pool_label(state: &State, pool: PoolId) -> String {
    let live = state.live();
    match live.backends.get(pool) {
        Some(p) => p.name().to_string(),
        None => live.router.pool_name(pool).to_string(),
    }
}

#[cold]
#[inline(never)]
pub fn connection_lost(state: &State, pool: PoolId) -> BackendError {
    BackendError::ConnectionLost {
        pool: pool_label(state, pool),
    }
}
