//! Blocking commands (BLPOP, BRPOP, BLMOVE, BZPOPMIN, XREAD BLOCK, WAIT ...)
//! run on a connection leased from the pool's bounded set, so one blocked
//! client never delays another's GET.
//!
//! A client that stops sending (EOF: it left, or only half-closed as `nc`
//! and scripts do) or is killed while blocked is unblocked with
//! `CLIENT UNBLOCK` rather than by dropping the connection: a command the
//! server already served (an element popped) still delivers its reply, and
//! one still blocked ends with the timeout reply, as Redis's own unblock.

use std::time::Duration;

use bytes::Bytes;
use tokio::io::AsyncReadExt;

use super::reply::Reply;
use super::{Session, MAX_READ_AHEAD};
use crate::backend::{request_once, BackendError, Dedicated, Pool};
use crate::resp::{self, Request};
use crate::route::PoolId;

/// How long an unblocked command's reply may take to arrive.
const UNBLOCK_WAIT: Duration = Duration::from_secs(2);

impl Session {
    pub(super) async fn blocking(&mut self, pool: PoolId, request: &Request) -> Reply {
        if !self.flush().await {
            return Reply::close(Bytes::new());
        }
        let backend = match self.state.live().backends.checked(pool) {
            Ok(b) => b,
            Err(e) => return self.failed(&e),
        };
        let mut conn = match backend.lease(self.client.db, self.client.proto).await {
            Ok(conn) => conn,
            Err(e) => return self.failed(&e),
        };
        let lost = BackendError::ConnectionLost {
            pool: backend.name().to_string(),
        };
        if learn_backend_id(&mut conn).await.is_err() || conn.send(request.bytes()).await.is_err() {
            return self.failed(&lost);
        }
        loop {
            tokio::select! {
                frame = conn.read_frame() => {
                    return match frame {
                        Ok(frame) => {
                            backend.release(conn);
                            Reply::now(frame)
                        }
                        Err(_) => self.failed(&lost),
                    };
                }
                // Keep reading what the client pipelines behind the blocked
                // command, to notice when it stops sending.
                read = self.rd.read_buf(&mut self.inbuf),
                    if !self.input_closed && self.inbuf.len() < MAX_READ_AHEAD => {
                    match read {
                        Ok(n) if n > 0 => continue,
                        // EOF: no more requests, but the client may still read.
                        Ok(_) => self.input_closed = true,
                        // Reset: nobody is left to read a reply.
                        Err(_) => return Reply::close(Bytes::new()),
                    }
                }
                // CLIENT KILL or shutdown.
                _ = self.kill.cancelled() => {
                    let reply = unblock(&backend, conn).await;
                    return Reply::close(reply.unwrap_or_default());
                }
            }
            // Input closed (now, or before this command was dispatched).
            return match unblock(&backend, conn).await {
                Some(frame) => Reply::now(frame),
                None => Reply::close(Bytes::new()),
            };
        }
    }
}

/// Ends the blocking command on `conn` the way Redis's CLIENT UNBLOCK
/// does and returns its reply, or `None` when it cannot be had (the
/// connection is then dropped, which ends the command on the server).
/// Asked on a connection of its own: rare, and kept off the request path.
async fn unblock(backend: &Pool, mut conn: Dedicated) -> Option<Bytes> {
    let id = conn.backend_id?.to_string();
    let endpoint = backend.endpoint();
    let answer = request_once(&endpoint, &["CLIENT", "UNBLOCK", &id], UNBLOCK_WAIT)
        .await
        .ok()?;
    // `:1` unblocked it, `:0` it was not blocked (served, or not yet read
    // by the server): either way its reply is due now.
    if !answer.starts_with(b":") {
        return None;
    }
    let frame = tokio::time::timeout(UNBLOCK_WAIT, conn.read_frame())
        .await
        .ok()?
        .ok()?;
    backend.release(conn);
    Some(frame)
}

/// Asks a leased connection its server-side id once, so a blocked command
/// on it can be ended with `CLIENT UNBLOCK`. A server that refuses
/// `CLIENT ID` leaves it unknown: the connection is then dropped instead.
async fn learn_backend_id(conn: &mut Dedicated) -> std::io::Result<()> {
    if conn.backend_id.is_some() {
        return Ok(());
    }
    conn.send(b"*2\r\n$6\r\nCLIENT\r\n$2\r\nID\r\n").await?;
    let frame = conn.read_frame().await?;
    conn.backend_id = frame
        .strip_prefix(b":")
        .and_then(|rest| rest.strip_suffix(b"\r\n"))
        .and_then(resp::decimal);
    Ok(())
}
