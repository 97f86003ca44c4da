//! Sending a request again after a Sentinel failover: the backend half of
//! a retry (the reply decides whether one is safe). Runs in a task of its
//! own, so the client's pending reply waits on a receiver.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::{Pool, ReplyRx};
use crate::resp::Protocol;

/// How long a retried request waits for Sentinel to name a new master.
const FAILOVER_WAIT: Duration = Duration::from_secs(5);

/// Asks the pool to rediscover its master, waits (up to FAILOVER_WAIT) for
/// the move, then sends `request` on the pool's connection for `db` and
/// `proto`. `pool` finds the pool when the task runs, by its identity: a
/// reload meanwhile may have replaced it.
pub fn resend_after_failover(
    pool: impl Fn() -> Option<Arc<Pool>> + Send + 'static,
    request: Bytes,
    db: u32,
    proto: Protocol,
) -> ReplyRx {
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let Some(backend) = pool() else {
            return;
        };
        if backend.is_sentinel_managed() {
            let mut changes = backend.changes();
            changes.mark_unchanged();
            backend.request_rediscovery();
            let _ = tokio::time::timeout(FAILOVER_WAIT, changes.changed()).await;
        }
        let reply = match backend.conn(db, proto, 0).await {
            Ok(conn) => match conn.request(request).await {
                Some(reply) => reply.await.ok(),
                None => None,
            },
            Err(e) => Some(e.to_resp()),
        };
        if let Some(reply) = reply {
            let _ = tx.send(reply);
        }
    });
    rx
}
