//! Blocking commands (BLPOP, BRPOP, BLMOVE, BZPOPMIN, XREAD BLOCK, WAIT ...)
//! run on a connection leased from the pool's bounded set, so one blocked
//! client never delays another's GET. A client that leaves while blocked
//! takes the connection down with it: Redis then pops nothing for nobody.

use bytes::Bytes;
use tokio::io::AsyncReadExt;

use super::reply::Reply;
use super::{Session, MAX_READ_AHEAD};
use crate::backend::BackendError;
use crate::resp::Request;
use crate::route::PoolId;

impl Session {
    pub(super) async fn blocking(&mut self, pool: PoolId, request: &Request) -> Reply {
        if !self.flush().await {
            return Reply::close(Bytes::new());
        }
        let backend = match self.state.live().backends.checked(pool) {
            Ok(b) => b,
            Err(e) => return Reply::backend_error(&e),
        };
        let mut conn = match backend.lease(self.client.db, self.client.proto).await {
            Ok(conn) => conn,
            Err(e) => return Reply::backend_error(&e),
        };
        let lost = || {
            Reply::backend_error(&BackendError::ConnectionLost {
                pool: backend.name().to_string(),
            })
        };
        if conn.send(request.bytes()).await.is_err() {
            return lost();
        }
        loop {
            tokio::select! {
                frame = conn.read_frame() => {
                    return match frame {
                        Ok(frame) => {
                            backend.release(conn);
                            Reply::now(frame)
                        }
                        Err(_) => lost(),
                    };
                }
                // Keep reading what the client pipelines behind the blocked
                // command, only to notice when it disconnects.
                read = self.rd.read_buf(&mut self.inbuf), if self.inbuf.len() < MAX_READ_AHEAD => {
                    if !matches!(read, Ok(n) if n > 0) {
                        return Reply::close(Bytes::new());
                    }
                }
                // CLIENT KILL or shutdown.
                _ = self.kill.cancelled() => return Reply::close(Bytes::new()),
            }
        }
    }
}
