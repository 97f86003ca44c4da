//! One client connection: reads bytes, splits complete requests (pipelines
//! included), keeps the client's state (db, protocol, name, transaction,
//! subscriptions) and hands each request's pending reply, in order, to the
//! writer task.

mod blocking;
mod dispatch;
mod local;
mod merge;
mod pubsub;
mod reply;
mod transaction;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::net::{TcpStream, UnixStream};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::backend::{BackendError, Conn, ReplyRx};
use crate::config::Config;
use crate::policy::{Denial, User};
use crate::resp::{ParseLimits, Protocol, RequestParser};
use crate::route::PoolId;
use crate::state::{ClientInfo, State};

pub use reply::Reply;

use pubsub::Subscriptions;
use transaction::Transaction;

/// Read buffers start small (most clients are idle most of the time) and
/// grow to this while a client keeps them full.
const READ_CHUNK: usize = 16 * 1024;
const FIRST_READ: usize = 128;
/// Bytes a client may send ahead while keyway waits on a blocking command.
const MAX_READ_AHEAD: usize = 1024 * 1024;

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
    /// `None` until the client authenticates, when authentication is on.
    pub user: Option<Arc<User>>,
}

impl ClientState {
    fn info(&self, kill: &CancellationToken, mode: &Mode) -> ClientInfo {
        let (sub, psub, ssub) = match mode {
            Mode::Subscribed(s) => s.counts(),
            _ => (0, 0, 0),
        };
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
            user: self
                .user
                .as_ref()
                .map(|u| u.name.to_string())
                .unwrap_or_default(),
            multi: match mode {
                Mode::Transaction(t) if t.in_multi() => t.queued_len() as i64,
                _ => -1,
            },
            subscriptions: (sub, psub, ssub),
            kill: kill.clone(),
        }
    }
}

/// What the connection is doing, as Redis distinguishes it.
pub(crate) enum Mode {
    Normal,
    /// After WATCH or MULTI, until EXEC, DISCARD, UNWATCH or RESET.
    Transaction(Transaction),
    /// With at least one subscription.
    Subscribed(Subscriptions),
}

/// CLIENT REPLY: whether replies are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReplyMode {
    On,
    Off,
    /// This many more replies are dropped (SKIP drops its own and the next).
    Skip(u8),
}

pub struct Session {
    state: Arc<State>,
    client: ClientState,
    mode: Mode,
    reply_mode: ReplyMode,
    /// Per pool, the multiplexed connection for the client's current db and
    /// protocol; cleared when either changes.
    conns: Vec<Option<Conn>>,
    key_scratch: Vec<usize>,
    rd: ClientReader,
    inbuf: BytesMut,
    tx: mpsc::Sender<Reply>,
    /// Cancelled by CLIENT KILL.
    kill: CancellationToken,
    /// The metrics context of the request being dispatched.
    meta: reply::Meta,
    /// The configuration generation `conns` and `client.user` belong to.
    generation: u64,
    /// Replies queued so far, against `flow.taken`: how many are owed.
    queued: u64,
    flow: Arc<reply::Flow>,
}

pub fn parse_limits(config: &Config) -> ParseLimits {
    ParseLimits {
        max_bulk_len: config.server.max_bulk_bytes,
        ..ParseLimits::default()
    }
}

/// The two halves of a client connection, TCP or Unix socket alike.
pub type ClientReader = Box<dyn AsyncRead + Send + Sync + Unpin>;
pub type ClientWriter = Box<dyn AsyncWrite + Send + Sync + Unpin>;

/// Serves one TCP client until it quits, breaks the protocol or disconnects.
pub async fn serve(state: Arc<State>, socket: TcpStream, addr: SocketAddr) {
    let local_addr = socket.local_addr().unwrap_or(addr);
    let _ = socket.set_nodelay(true);
    let keepalive = state.live().config.server.tcp_keepalive_secs;
    if keepalive > 0 {
        let ka = socket2::TcpKeepalive::new().with_time(std::time::Duration::from_secs(keepalive));
        let _ = socket2::SockRef::from(&socket).set_tcp_keepalive(&ka);
    }
    let (rd, wr) = socket.into_split();
    serve_stream(state, Box::new(rd), Box::new(wr), addr, local_addr).await
}

/// Serves one TLS client after its handshake.
pub async fn serve_tls(
    state: Arc<State>,
    stream: tokio_rustls::server::TlsStream<TcpStream>,
    addr: SocketAddr,
) {
    let local_addr = stream.get_ref().0.local_addr().unwrap_or(addr);
    let _ = stream.get_ref().0.set_nodelay(true);
    let (rd, wr) = tokio::io::split(stream);
    serve_stream(state, Box::new(rd), Box::new(wr), addr, local_addr).await
}

/// Serves one Unix-socket client (shown with address 0.0.0.0:0).
pub async fn serve_unix(state: Arc<State>, socket: UnixStream) {
    let addr = SocketAddr::from(([0, 0, 0, 0], 0));
    let (rd, wr) = socket.into_split();
    serve_stream(state, Box::new(rd), Box::new(wr), addr, addr).await
}

async fn serve_stream(
    state: Arc<State>,
    rd: ClientReader,
    wr: ClientWriter,
    addr: SocketAddr,
    local_addr: SocketAddr,
) {
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
        user: state.live().policy.initial_user(),
    };
    let id = client.id;
    state.metrics.clients_connected.inc();
    state.metrics.clients_total.inc();
    // The channel's bound is the pipeline depth: a client that does not
    // read its replies stops being read.
    let (tx, rx) = mpsc::channel(state.live().config.server.max_pipeline);
    let flow = Arc::new(reply::Flow::new());
    let writer = tokio::spawn(reply::write_replies(wr, rx, state.clone(), flow.clone()));
    let mut session = Session {
        conns: vec![None; state.live().backends.pools().len()],
        state: state.clone(),
        client,
        mode: Mode::Normal,
        reply_mode: ReplyMode::On,
        key_scratch: Vec::new(),
        rd,
        inbuf: BytesMut::new(),
        tx,
        // A child of the drain token: shutting down stops every session's
        // reading as CLIENT KILL stops one, and each read waits on one token.
        kill: state.drain.child_token(),
        meta: reply::Meta::new(),
        generation: state.live().generation,
        queued: 0,
        flow,
    };
    session.register();
    session.read_requests().await;
    // Leased connections close with the session: nothing half-done survives.
    session.mode = Mode::Normal;
    drop(session);
    let _ = writer.await;
    state.clients.remove(&id);
    state.metrics.clients_connected.dec();
}

impl Session {
    async fn read_requests(&mut self) {
        let mut parser = RequestParser::new(parse_limits(&self.state.live().config));
        loop {
            match parser.next(&mut self.inbuf) {
                Ok(Some(request)) => {
                    if !self.wait_for_room().await {
                        return;
                    }
                    let reply = self.dispatch(request).await;
                    if !self.queue(reply).await {
                        return;
                    }
                    self.release_held_messages().await;
                }
                Ok(None) => {
                    if !self.read_more().await {
                        return;
                    }
                }
                Err(e) => {
                    tracing::debug!(client = self.client.id, "protocol error: {e}");
                    self.state
                        .metrics
                        .errors
                        .with_label_values(&["protocol"])
                        .inc();
                    let reply = crate::resp::error(&format!("ERR Protocol error: {e}"));
                    let _ = self.tx.send(Reply::close(reply)).await;
                    return;
                }
            }
        }
    }

    /// Reads more client bytes; false on EOF, error or CLIENT KILL.
    async fn read_more(&mut self) -> bool {
        let spare = self.inbuf.capacity() - self.inbuf.len();
        if spare < FIRST_READ {
            // Double what the client filled last time, up to READ_CHUNK.
            let want = (self.inbuf.capacity() * 2).clamp(FIRST_READ, READ_CHUNK);
            self.inbuf.reserve(want);
        }
        // Subscribers and transactions wait for the server, not the client.
        let idle = match (
            &self.mode,
            self.state.live().config.server.idle_timeout_secs,
        ) {
            (Mode::Normal, secs) if secs > 0 => Some(std::time::Duration::from_secs(secs)),
            _ => None,
        };
        let read = async {
            match idle {
                // No timer at all when idle clients are allowed (the default).
                None => Ok(self.rd.read_buf(&mut self.inbuf).await),
                Some(idle) => tokio::time::timeout(idle, self.rd.read_buf(&mut self.inbuf)).await,
            }
        };
        tokio::select! {
            biased;
            read = read => match read {
                Ok(read) => matches!(read, Ok(n) if n > 0),
                Err(_) => {
                    tracing::debug!(client = self.client.id, "closing an idle client");
                    false
                }
            },
            // CLIENT KILL, or shutdown: what was read is answered; nothing
            // more is read.
            _ = self.kill.cancelled() => false,
        }
    }

    /// Hands a reply to the writer, honouring CLIENT REPLY; false when the
    /// connection is done.
    async fn queue(&mut self, reply: Reply) -> bool {
        let closes = reply.closes();
        let reply = match self.reply_mode {
            ReplyMode::On => reply,
            ReplyMode::Off => Reply::Silent(Box::new(reply)),
            ReplyMode::Skip(n) => {
                self.reply_mode = if n > 1 {
                    ReplyMode::Skip(n - 1)
                } else {
                    ReplyMode::On
                };
                Reply::Silent(Box::new(reply))
            }
        };
        self.queued += 1;
        self.tx.send(reply).await.is_ok() && !closes
    }

    /// Holds the next request back while the replies owed to this client
    /// would exceed its output limit (large replies, a client not reading).
    async fn wait_for_room(&mut self) -> bool {
        let (max_pipeline, limit) = {
            let live = self.state.live();
            (
                live.config.server.max_pipeline,
                live.config.server.client_output_limit_bytes,
            )
        };
        loop {
            let taken = self.flow.taken.load(std::sync::atomic::Ordering::Relaxed);
            let owed = self.queued.saturating_sub(taken);
            if owed < self.flow.allowed(max_pipeline, limit) {
                return true;
            }
            tokio::select! {
                _ = self.flow.progress.notified() => {}
                _ = self.tx.closed() => return false,
                _ = self.kill.cancelled() => return false,
            }
        }
    }

    /// Waits until every reply queued before now has been resolved, so work
    /// on a leased connection runs after the client's earlier commands.
    async fn barrier(&mut self) {
        let (done, wait) = oneshot::channel();
        // The writer counts the barrier as a reply taken, so it counts here too.
        self.queued += 1;
        if self.tx.send(Reply::Barrier(Some(done))).await.is_ok() {
            let _ = wait.await;
        }
    }

    /// Queues `bytes` on the pool's multiplexed connection for this client.
    /// A connection found closed before anything was sent is replaced once.
    async fn send(&mut self, pool: PoolId, mut bytes: Bytes) -> Result<ReplyRx, BackendError> {
        if pool >= self.conns.len() || self.state.live().backends.get(pool).is_none() {
            // A route planned just before a reload that removed the pool.
            return Err(BackendError::Unavailable {
                pool: self.state.live().router.pool_name(pool).to_string(),
                reason: "the configuration was reloaded; retry".to_string(),
            });
        }
        for _ in 0..2 {
            if self.conns[pool].as_ref().is_none_or(Conn::is_closed) {
                // Boxed: taken once per pool and db, it would otherwise
                // enlarge every client's task by a whole connect.
                let backend = self.state.live().backends.checked(pool)?;
                let conn = Box::pin(backend.conn(
                    self.client.db,
                    self.client.proto,
                    self.client.id as usize,
                ))
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
            pool: self.state.live().router.pool_name(pool).to_string(),
        })
    }

    fn register(&self) {
        self.state
            .clients
            .insert(self.client.id, self.client.info(&self.kill, &self.mode));
    }

    /// Counts a refusal and answers it; inside MULTI it also aborts the
    /// transaction, as a queue-time error does in Redis.
    pub(super) fn deny(&mut self, denial: Denial) -> Reply {
        let (reason, detail) = denial.labels();
        self.state.metrics.deny(reason, &detail);
        self.refuse_in_multi(denial.to_resp())
    }

    /// After a reload: pools may have moved or changed in number, and the
    /// client's user may have changed or gone.
    /// Returns the configuration this request runs under, loaded once so the
    /// request sees one configuration throughout.
    pub(super) fn follow_reload(&mut self) -> Arc<crate::state::Live> {
        let live = self.state.live_arc();
        if live.generation == self.generation {
            return live;
        }
        self.generation = live.generation;
        self.conns = vec![None; live.backends.pools().len()];
        self.client.user = match &self.client.user {
            Some(user) => live.policy.same_user(user),
            None => live.policy.initial_user(),
        };
        self.register();
        live
    }

    /// The db or protocol changed: connections for the old ones no longer fit.
    fn client_changed(&mut self) {
        self.conns.iter_mut().for_each(|c| *c = None);
        self.register();
    }
}
