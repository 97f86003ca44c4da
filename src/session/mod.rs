//! One client connection: reads bytes, splits complete requests (pipelines
//! included), keeps the client's state (db, protocol, name) and hands each
//! request's pending reply, in order, to the writer task.

mod dispatch;
mod local;
mod merge;
mod reply;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use crate::backend::{BackendError, Conn, ReplyRx};
use crate::config::Config;
use crate::resp::{ParseLimits, Protocol, RequestParser};
use crate::route::PoolId;
use crate::state::{ClientInfo, State};

pub use reply::Reply;

const READ_CHUNK: usize = 16 * 1024;

/// The client's own state, as Redis keeps it per connection.
#[derive(Debug, Clone)]
pub struct ClientState {
    pub id: u64,
    pub addr: SocketAddr,
    pub local_addr: SocketAddr,
    pub db: u32,
    pub proto: Protocol,
    pub name: String,
    pub lib_name: String,
    pub lib_ver: String,
    pub connected: Instant,
}

impl ClientState {
    fn info(&self) -> ClientInfo {
        ClientInfo {
            id: self.id,
            addr: self.addr,
            local_addr: self.local_addr,
            name: self.name.clone(),
            db: self.db,
            proto: self.proto,
            lib_name: self.lib_name.clone(),
            lib_ver: self.lib_ver.clone(),
            connected: self.connected,
        }
    }
}

pub struct Session {
    state: Arc<State>,
    client: ClientState,
    /// Per pool, the multiplexed connection for the client's current db and
    /// protocol; cleared when either changes.
    conns: Vec<Option<Conn>>,
    key_scratch: Vec<usize>,
}

pub fn parse_limits(config: &Config) -> ParseLimits {
    ParseLimits {
        max_bulk_len: config.server.max_bulk_bytes,
        ..ParseLimits::default()
    }
}

/// Serves one client until it quits, breaks the protocol or disconnects.
pub async fn serve(state: Arc<State>, socket: TcpStream, addr: SocketAddr) {
    let local_addr = socket.local_addr().unwrap_or(addr);
    let _ = socket.set_nodelay(true);
    let client = ClientState {
        id: state.next_client_id(),
        addr,
        local_addr,
        db: 0,
        proto: Protocol::Resp2,
        name: String::new(),
        lib_name: String::new(),
        lib_ver: String::new(),
        connected: Instant::now(),
    };
    let id = client.id;
    state.clients.insert(id, client.info());
    let mut session = Session {
        conns: vec![None; state.router.pool_count()],
        state: state.clone(),
        client,
        key_scratch: Vec::new(),
    };
    let (rd, wr) = socket.into_split();
    // The channel's bound is the pipeline depth: a client that does not
    // read its replies stops being read.
    let (tx, rx) = mpsc::channel(state.config.server.max_pipeline);
    let writer = tokio::spawn(reply::write_replies(wr, rx, state.clone()));
    session.read_requests(rd, tx).await;
    let _ = writer.await;
    state.clients.remove(&id);
}

impl Session {
    async fn read_requests(
        &mut self,
        mut rd: tokio::net::tcp::OwnedReadHalf,
        tx: mpsc::Sender<Reply>,
    ) {
        let mut parser = RequestParser::new(parse_limits(&self.state.config));
        let mut buf = BytesMut::with_capacity(READ_CHUNK);
        loop {
            match parser.next(&mut buf) {
                Ok(Some(request)) => {
                    let reply = self.dispatch(request).await;
                    let closes = reply.closes();
                    if tx.send(reply).await.is_err() || closes {
                        return;
                    }
                }
                Ok(None) => {
                    if buf.capacity() - buf.len() < READ_CHUNK / 4 {
                        buf.reserve(READ_CHUNK);
                    }
                    match rd.read_buf(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {}
                    }
                }
                Err(e) => {
                    tracing::debug!(client = self.client.id, "protocol error: {e}");
                    let reply = crate::resp::error(&format!("ERR Protocol error: {e}"));
                    let _ = tx.send(Reply::Close(reply)).await;
                    return;
                }
            }
        }
    }

    /// Queues `bytes` on the pool's multiplexed connection for this client.
    /// A connection found closed before anything was sent is replaced once.
    async fn send(&mut self, pool: PoolId, mut bytes: Bytes) -> Result<ReplyRx, BackendError> {
        for _ in 0..2 {
            if self.conns[pool].as_ref().is_none_or(Conn::is_closed) {
                let conn = self
                    .state
                    .backends
                    .pool(pool)
                    .conn(self.client.db, self.client.proto, self.client.id as usize)
                    .await?;
                self.conns[pool] = Some(conn);
            }
            let Some(conn) = self.conns[pool].as_ref() else {
                continue;
            };
            match conn.send(bytes).await {
                Ok(rx) => return Ok(rx),
                Err(back) => {
                    bytes = back;
                    self.conns[pool] = None;
                }
            }
        }
        Err(BackendError::ConnectionLost {
            pool: self.state.router.pool_name(pool).to_string(),
        })
    }

    /// The db or protocol changed: connections for the old ones no longer fit.
    fn client_changed(&mut self) {
        self.conns.iter_mut().for_each(|c| *c = None);
        self.state
            .clients
            .insert(self.client.id, self.client.info());
    }
}
