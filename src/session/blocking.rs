//! Blocking commands (BLPOP, BRPOP, BLMOVE, BZPOPMIN, XREAD BLOCK, WAIT ...)
//! run on a connection leased from the pool's bounded set, so one blocked
//! client never delays another's GET.
//!
//! A client that stops sending (EOF: it left, or only half-closed as `nc`
//! and scripts do) or is killed while blocked is closed as Redis frees
//! such a client: no reply for the blocked command, and nothing it
//! pipelined behind it runs. The lease's command is ended with
//! `CLIENT UNBLOCK` rather than by dropping the connection, so an element
//! the server already popped is still delivered, not lost.

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::time::Duration;

use tokio::sync::Notify;

use bytes::Bytes;
use tokio::io::AsyncReadExt;

use super::reply::Reply;
use super::{Session, MAX_READ_AHEAD};
use crate::backend::{request_once, BackendError, Dedicated, Pool};
use crate::resp::{self, Request};
use crate::route::Target;

/// How long an unblocked command's reply may take to arrive.
const UNBLOCK_WAIT: Duration = Duration::from_secs(2);

/// How CLIENT UNBLOCK ends a blocked command, as Redis's own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnblockHow {
    /// As if its timeout had passed.
    Timeout,
    /// With `-UNBLOCKED client unblocked via CLIENT UNBLOCK`.
    Error,
}

/// Whether a client is blocked, and CLIENT UNBLOCK's request to end it:
/// shared between the client's session and whoever runs CLIENT UNBLOCK.
#[derive(Debug, Default)]
pub struct Unblocker {
    blocked: AtomicBool,
    /// 0: none, 1: Timeout, 2: Error.
    requested: AtomicU8,
    notify: Notify,
}

impl Unblocker {
    pub fn is_blocked(&self) -> bool {
        self.blocked.load(Ordering::Acquire)
    }

    /// Asks the blocked client to end its command; false when it is not
    /// blocked (CLIENT UNBLOCK then answers 0).
    pub fn request(&self, how: UnblockHow) -> bool {
        if !self.is_blocked() {
            return false;
        }
        let code = match how {
            UnblockHow::Timeout => 1,
            UnblockHow::Error => 2,
        };
        self.requested.store(code, Ordering::Release);
        self.notify.notify_one();
        true
    }

    fn set_blocked(&self, blocked: bool) {
        self.requested.store(0, Ordering::Release);
        self.blocked.store(blocked, Ordering::Release);
    }

    async fn requested(&self) -> UnblockHow {
        loop {
            self.notify.notified().await;
            match self.requested.swap(0, Ordering::AcqRel) {
                1 => return UnblockHow::Timeout,
                2 => return UnblockHow::Error,
                _ => {}
            }
        }
    }
}

impl Session {
    pub(super) async fn blocking(&mut self, target: Target, request: &Request) -> Reply {
        if !self.flush().await {
            return Reply::close(Bytes::new());
        }
        // A slot that moves while the client is blocked: the node answers
        // MOVED (Redis unblocks clients of a slot it gives away), and the
        // command blocks again on the new master.
        for _ in 0..crate::cluster::MAX_REDIRECTS {
            let reply = self.block_once(target, request, None).await;
            let moved = match &reply {
                Reply::Now(frame) => crate::cluster::Redirect::parse(frame),
                _ => None,
            };
            match moved {
                Some(crate::cluster::Redirect::Moved { slot, addr }) => {
                    let live = self.state.live();
                    match live.backends.get(target.pool).and_then(|p| p.cluster()) {
                        Some(cluster) => cluster.moved(slot, &addr),
                        None => return reply,
                    }
                }
                _ => return reply,
            }
        }
        Reply::now(resp::error("TRYAGAIN the key's slot kept moving; retry"))
    }

    /// `request` on a connection leased for it, after `first` (a command
    /// whose reply is read and dropped: WAIT's offset marker).
    pub(super) async fn block_once(
        &mut self,
        target: Target,
        request: &Request,
        first: Option<&[u8]>,
    ) -> Reply {
        let pool = self
            .state
            .live()
            .backends
            .checked(target.pool)
            .and_then(|p| p.serving(target.slot));
        let backend = match pool {
            Ok(b) => b,
            Err(e) => return self.failed(&e),
        };
        if self.links.cluster(target.pool).is_some() && self.client.db != 0 {
            return self.failed(&BackendError::ClusterDatabase {
                pool: backend.name().to_string(),
            });
        }
        let tenant = self.tenant();
        let mut conn = match backend
            .lease(tenant.as_ref(), self.client.db, self.client.proto)
            .await
        {
            Ok(conn) => conn,
            Err(e) => return self.failed(&e),
        };
        let lost = BackendError::ConnectionLost {
            pool: backend.name().to_string(),
        };
        if learn_backend_id(&mut conn).await.is_err() {
            return self.failed(&lost);
        }
        if let Some(first) = first {
            if conn.send(first).await.is_err() || conn.read_frame().await.is_err() {
                return self.failed(&lost);
            }
        }
        if conn.send(request.bytes()).await.is_err() {
            return self.failed(&lost);
        }
        let unblocker = self.unblocker.clone();
        unblocker.set_blocked(true);
        let reply = self.blocked_on(&backend, conn, &lost, &unblocker).await;
        unblocker.set_blocked(false);
        reply
    }

    /// Waits for the blocked command's reply, or for the client to stop
    /// sending, be killed or be unblocked by CLIENT UNBLOCK.
    async fn blocked_on(
        &mut self,
        backend: &Pool,
        mut conn: Dedicated,
        lost: &BackendError,
        unblocker: &Unblocker,
    ) -> Reply {
        if self.input_closed {
            // EOF came with the command: the server may still serve it at once.
            return closed_while_blocked(backend, conn).await;
        }
        loop {
            tokio::select! {
                frame = conn.read_frame() => {
                    return match frame {
                        Ok(frame) => {
                            backend.release(conn);
                            Reply::now(frame)
                        }
                        Err(_) => self.failed(lost),
                    };
                }
                // Keep reading what the client pipelines behind the blocked
                // command, to notice when it stops sending.
                read = self.rd.read_buf(&mut self.inbuf),
                    if !self.input_closed && self.inbuf.len() < MAX_READ_AHEAD => {
                    match read {
                        Ok(n) if n > 0 => continue,
                        // EOF: no more requests, but the client may still read.
                        Ok(_) => {
                            self.input_closed = true;
                            return closed_while_blocked(backend, conn).await;
                        }
                        // Reset: nobody is left to read a reply.
                        Err(_) => return Reply::close(Bytes::new()),
                    }
                }
                // CLIENT KILL or shutdown: Redis closes a killed client
                // without a reply.
                _ = self.kill.cancelled() => return closed_while_blocked(backend, conn).await,
                how = unblocker.requested() => {
                    return match unblock(backend, conn, how).await {
                        Some(frame) => Reply::now(frame),
                        None => Reply::now(self.unblocked_reply(how)),
                    };
                }
            }
        }
    }
}

/// A blocked client that left, half-closed or was killed: Redis frees it,
/// so the command ends without its timeout reply and the connection is
/// closed (nothing pipelined behind it runs). Only what the command
/// already took (an element popped just before) is delivered, not to lose
/// it: a half-closed client may still be reading.
async fn closed_while_blocked(backend: &Pool, conn: Dedicated) -> Reply {
    let reply = unblock(backend, conn, UnblockHow::Timeout)
        .await
        .filter(|frame| !crate::resp::shapes::is_null(frame));
    Reply::close(reply.unwrap_or_default())
}

impl Session {
    /// What Redis answers an unblocked command, when the backend's own
    /// answer could not be had (its connection is dropped instead).
    fn unblocked_reply(&self, how: UnblockHow) -> Bytes {
        match how {
            UnblockHow::Error => resp::error("UNBLOCKED client unblocked via CLIENT UNBLOCK"),
            UnblockHow::Timeout => {
                let mut r = resp::ReplyBuf::new(self.client.proto);
                r.null_array();
                r.freeze()
            }
        }
    }
}

/// Ends the blocking command on `conn` the way Redis's CLIENT UNBLOCK
/// does and returns its reply, or `None` when it cannot be had (the
/// connection is then dropped, which ends the command on the server).
/// Asked on a connection of its own: rare, and kept off the request path.
async fn unblock(backend: &Pool, mut conn: Dedicated, how: UnblockHow) -> Option<Bytes> {
    let id = conn.backend_id?.to_string();
    let endpoint = backend.endpoint();
    let how = match how {
        UnblockHow::Timeout => "TIMEOUT",
        UnblockHow::Error => "ERROR",
    };
    let answer = request_once(&endpoint, &["CLIENT", "UNBLOCK", &id, how], UNBLOCK_WAIT)
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
