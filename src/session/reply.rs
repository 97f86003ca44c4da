//! Replies on their way back: each request's reply is a `Reply` queued in
//! request order; the writer resolves them in that order and coalesces
//! whatever is ready into one write.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::mpsc;

use super::merge::Merge;
use crate::backend::{BackendError, ReplyRx};
use crate::route::PoolId;
use crate::state::State;

/// The reply to one request, in whatever state it is in.
pub enum Reply {
    /// Answered by keyway (or refused).
    Now(Bytes),
    /// Forwarded to one pool; its reply is passed through unchanged.
    Backend { pool: PoolId, rx: ReplyRx },
    /// Sent to several pools; the parts are merged once all arrived.
    Fanout { parts: Vec<Part>, merge: Merge },
    /// Written, then the connection is closed (QUIT, protocol errors).
    Close(Bytes),
}

pub struct Part {
    pub pool: PoolId,
    pub rx: Result<ReplyRx, BackendError>,
}

impl Reply {
    pub fn closes(&self) -> bool {
        matches!(self, Reply::Close(_))
    }

    pub fn backend_error(e: &BackendError) -> Reply {
        Reply::Now(e.to_resp())
    }

    /// The bytes if they are there already, without waiting.
    fn try_ready(self, state: &State) -> Result<Bytes, Reply> {
        match self {
            Reply::Now(b) | Reply::Close(b) => Ok(b),
            Reply::Backend { pool, mut rx } => match rx.try_recv() {
                Ok(b) => Ok(b),
                Err(tokio::sync::oneshot::error::TryRecvError::Empty) => {
                    Err(Reply::Backend { pool, rx })
                }
                Err(tokio::sync::oneshot::error::TryRecvError::Closed) => Ok(lost(state, pool)),
            },
            other => Err(other),
        }
    }

    async fn resolve(self, state: &State) -> Bytes {
        match self {
            Reply::Now(b) | Reply::Close(b) => b,
            Reply::Backend { pool, rx } => rx.await.unwrap_or_else(|_| lost(state, pool)),
            Reply::Fanout { parts, merge } => {
                let mut frames = Vec::with_capacity(parts.len());
                for part in parts {
                    let frame = match part.rx {
                        Ok(rx) => rx.await.map_err(|_| connection_lost(state, part.pool)),
                        Err(e) => Err(e),
                    };
                    frames.push((part.pool, frame));
                }
                merge.merge(state, frames)
            }
        }
    }
}

pub fn connection_lost(state: &State, pool: PoolId) -> BackendError {
    BackendError::ConnectionLost {
        pool: state.router.pool_name(pool).to_string(),
    }
}

fn lost(state: &State, pool: PoolId) -> Bytes {
    connection_lost(state, pool).to_resp()
}

/// Replies this big skip the coalescing buffer.
const DIRECT_WRITE: usize = 64 * 1024;

pub async fn write_replies(
    mut wr: OwnedWriteHalf,
    mut rx: mpsc::Receiver<Reply>,
    state: Arc<State>,
) {
    let mut out = BytesMut::with_capacity(16 * 1024);
    let mut next: Option<Reply> = None;
    loop {
        let reply = match next.take() {
            Some(r) => r,
            None => {
                if !out.is_empty() && flush(&mut wr, &mut out).await.is_err() {
                    return;
                }
                match rx.recv().await {
                    Some(r) => r,
                    None => break,
                }
            }
        };
        let closes = reply.closes();
        let bytes = match reply.try_ready(&state) {
            Ok(b) => b,
            Err(waiting) => {
                // Nothing may sit unflushed while we wait on a slow reply.
                if !out.is_empty() && flush(&mut wr, &mut out).await.is_err() {
                    return;
                }
                waiting.resolve(&state).await
            }
        };
        if bytes.len() >= DIRECT_WRITE {
            if (!out.is_empty() && flush(&mut wr, &mut out).await.is_err())
                || wr.write_all(&bytes).await.is_err()
            {
                return;
            }
        } else {
            out.extend_from_slice(&bytes);
        }
        if closes {
            break;
        }
        if let Ok(r) = rx.try_recv() {
            next = Some(r);
        }
    }
    if !out.is_empty() {
        let _ = flush(&mut wr, &mut out).await;
    }
    let _ = wr.shutdown().await;
}

async fn flush(wr: &mut OwnedWriteHalf, out: &mut BytesMut) -> std::io::Result<()> {
    let r = wr.write_all(out).await;
    out.clear();
    r
}
