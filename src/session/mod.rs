//! One client connection, served by one task: reads bytes, splits complete
//! requests (pipelines included), keeps the client's state (db, protocol,
//! name, transaction, subscriptions), queues each request's reply in order
//! and writes the replies as they resolve.

mod blocking;

pub use blocking::{UnblockHow, Unblocker};
mod dispatch;
mod links;
mod local;
mod merge;
mod mode;
mod observe;
mod output;
mod pubsub;
mod pushes;
mod reply;
mod transaction;
mod wait;
mod watched;

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpStream, UnixStream};
use tokio_util::io::poll_read_buf;
use tokio_util::sync::CancellationToken;

use crate::backend::{BackendError, Conn, ReplyTo};
use crate::config::Config;
use crate::policy::{Denial, User};
use crate::resp::{ParseLimits, Protocol, RequestParser};
use crate::route::PoolId;
use crate::state::{Activity, ClientInfo, State};

pub use reply::Reply;

use links::{Links, NodeChoice};
use mode::Mode;
use output::Output;
use watched::Watched;

/// Read buffers start small (most clients are idle most of the time) and
/// grow to this while a client keeps them full.
const READ_CHUNK: usize = 16 * 1024;
const FIRST_READ: usize = 128;
/// Bytes a client may send ahead while keyway waits on a blocking command.
const MAX_READ_AHEAD: usize = 1024 * 1024;
/// While keyway shuts down, a client idle this long is closed; one that
/// keeps sending (an application finishing its own shutdown) is served
/// until it closes or `server.drain_timeout_ms` runs out.
const DRAIN_IDLE: std::time::Duration = std::time::Duration::from_secs(1);

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
    fn info(
        &self,
        kill: &CancellationToken,
        mode: &Mode,
        unblocker: &Arc<Unblocker>,
        activity: &Arc<Activity>,
    ) -> ClientInfo {
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
            subscriptions: mode.subscription_counts(),
            patterns: mode.patterns(),
            kill: kill.clone(),
            unblocker: unblocker.clone(),
            activity: activity.clone(),
        }
    }
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
    /// The client's connections to the backends, and its view of each
    /// cluster pool's slot map.
    links: Links,
    key_scratch: Vec<usize>,
    rd: ClientReader,
    inbuf: BytesMut,
    /// The size of the last read buffer reserved.
    read_chunk: usize,
    /// `server.idle_timeout_secs` of the configuration in force.
    idle_timeout_secs: u64,
    /// No more requests are read: EOF, CLIENT KILL or shutdown.
    input_closed: bool,
    output: Output,
    /// Messages the subscription links push, opened with the first link.
    pushes: Option<pushes::Pushes>,
    /// Cancelled by CLIENT KILL.
    kill: CancellationToken,
    /// Whether a blocking command runs, and CLIENT UNBLOCK's way to end it.
    unblocker: Arc<Unblocker>,
    /// What CLIENT LIST shows of this client's doings.
    activity: Arc<Activity>,
    /// `kill` (CLIENT KILL, the drain's end) as the session waits on it.
    killed: Watched,
    /// Shutdown started (`state.drain`).
    drain_started: Watched,
    /// Shutting down: reading goes on, but an idle client is closed.
    draining: bool,
    /// With `idle_timeout_secs`: restarted whenever the session waits.
    idle_timer: Option<Pin<Box<tokio::time::Sleep>>>,
    /// The metrics context of the request being dispatched.
    meta: reply::Meta,
    /// When the requests being dispatched were read.
    received: Instant,
    /// The configuration `conns` and `client.user` belong to, and its
    /// generation: compared with the state's before each request, a plain
    /// load where taking the configuration is several atomic operations.
    live: Arc<crate::state::Live>,
    generation: u64,
    /// Requests dispatched and not yet added to INFO's
    /// `total_commands_processed` (added once per read of requests).
    commands_processed: u64,
    /// The pools this client may have written to: what WAIT asks.
    written: wait::PoolsWritten,
    /// What this client holds as last counted against
    /// `server.max_client_memory` (0 below `client_memory::UNCOUNTED`).
    memory_counted: usize,
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
    // CLIENT KILL, or the end of a drain: reading stops.
    let kill = CancellationToken::new();
    let live = state.live_arc();
    let mut session = Session {
        links: Links::new(&live.backends),
        state: state.clone(),
        client,
        mode: Mode::Normal,
        reply_mode: ReplyMode::On,
        key_scratch: Vec::new(),
        rd,
        inbuf: BytesMut::new(),
        read_chunk: FIRST_READ / 2,
        idle_timeout_secs: live.config.server.idle_timeout_secs,
        input_closed: false,
        output: Output::new(wr, &live.config),
        pushes: None,
        kill: kill.clone(),
        unblocker: Arc::default(),
        activity: Arc::default(),
        killed: Watched::new(kill.clone()),
        drain_started: Watched::new(state.drain.clone()),
        draining: false,
        idle_timer: None,
        meta: reply::Meta::new(),
        received: Instant::now(),
        generation: live.generation,
        live,
        commands_processed: 0,
        written: wait::PoolsWritten::default(),
        memory_counted: 0,
    };
    session.register();
    session.run().await;
    // Leased connections close with the session: nothing half-done survives.
    session.mode = Mode::Normal;
    state.client_memory.release(&session.activity.memory);
    drop(session);
    state.clients.remove(&id);
    state.client_left.notify_waiters();
    state.metrics.clients_connected.dec();
}

impl Session {
    /// Serves the client until it quits, breaks the protocol, disconnects
    /// or is killed; every request read is answered before the end.
    async fn run(&mut self) {
        let mut parser = RequestParser::new(parse_limits(&self.state.live().config));
        // Held for the session, not taken per read: each reference taken
        // and dropped is an atomic operation, and unpipelined every read
        // is one request. `live` follows `self.live` by generation.
        let state = Arc::clone(&self.state);
        let mut live = Arc::clone(&self.live);
        loop {
            if self.pushes.is_some() && state.generation() != self.generation {
                live = self.follow_reload();
                if !self.subscriptions_still_permitted() {
                    tracing::info!(
                        client = self.client.id,
                        "closing a subscriber whose channel permissions a reload revoked"
                    );
                    return;
                }
            }
            let needs_bytes = self.dispatch_buffered(&mut parser, &state, &mut live).await;
            self.count_memory();
            self.output.collect(&self.state, &self.live);
            if self.output.gone().is_some() {
                return;
            }
            let reading = needs_bytes && !self.input_closed && !self.output.closing();
            if !reading && self.output.is_empty() && (self.input_closed || self.output.closing()) {
                break;
            }
            if !self.wait().await {
                return;
            }
        }
        self.output.shutdown().await;
    }

    /// Dispatches every complete request already read while the replies
    /// owed leave room; true when more bytes are needed to go on.
    async fn dispatch_buffered(
        &mut self,
        parser: &mut RequestParser,
        state: &Arc<State>,
        live: &mut Arc<crate::state::Live>,
    ) -> bool {
        if self.inbuf.is_empty() {
            // Woken for a reply, not a request: nothing to parse.
            self.count_commands();
            return self.output.has_room();
        }
        // The requests of one read arrived together: one clock read, with
        // the first of them.
        let mut clock_read = false;
        let needs_bytes = loop {
            if !self.output.has_room() {
                break false;
            }
            parser.set_unauthenticated(self.client.user.is_none());
            match parser.next(&mut self.inbuf) {
                Ok(Some(request)) => {
                    if !clock_read {
                        self.received = Instant::now();
                        clock_read = true;
                    }
                    // A reload lands between two requests (of one read,
                    // or while the session waited), or a command executed
                    // earlier followed one already: two plain loads.
                    if state.generation() != self.generation || live.generation != self.generation {
                        *live = self.follow_reload();
                    }
                    // Checked, and most often forwarded, without awaiting.
                    match self.check(state, live, request) {
                        dispatch::Checked::Queued => {}
                        dispatch::Checked::Done(reply) => self.queue(reply),
                        dispatch::Checked::Execute(rest) => {
                            let reply = self.execute(state, live, rest).await;
                            self.queue(reply);
                        }
                    }
                    // The replies keep their own copy; this one would keep
                    // the read buffer from being reused.
                    self.meta.request = Bytes::new();
                    self.publish_buffers();
                    self.release_held_messages().await;
                }
                Ok(None) => break true,
                Err(e) => {
                    tracing::debug!(client = self.client.id, "protocol error: {e}");
                    self.state
                        .metrics
                        .errors
                        .with_label_values(&["protocol"])
                        .inc();
                    let reply = crate::resp::error(&format!("ERR Protocol error: {e}"));
                    self.output.push(Reply::close(reply));
                    break false;
                }
            }
        };
        self.count_commands();
        needs_bytes
    }

    /// Counts what the client holds (requests read and not yet handled,
    /// replies owed, a queued transaction) against the clients' bound,
    /// closing those that hold the most when it is passed: this one too,
    /// if it was chosen. Ordinary clients hold too little to be counted.
    #[inline]
    fn count_memory(&mut self) {
        let held = crate::client_memory::counted(
            self.inbuf.len()
                + self.output.owed_bytes()
                + self.mode.queued_bytes()
                + self
                    .pushes
                    .as_ref()
                    .map_or(0, pushes::Pushes::waiting_bytes),
        );
        if held != self.memory_counted {
            self.memory_counted = held;
            if self.state.client_memory.update(&self.activity.memory, held) {
                self.state.evict_clients();
            }
        }
        if self.memory_counted > 0 && self.activity.evicted() {
            self.evicted();
        }
    }

    /// Chosen to be closed for the clients' memory: everything it holds is
    /// let go at once, and it is told why.
    #[cold]
    #[inline(never)]
    fn evicted(&mut self) {
        self.inbuf = BytesMut::new();
        self.input_closed = true;
        self.mode = Mode::Normal;
        self.memory_counted = 0;
        self.state.client_memory.release(&self.activity.memory);
        let limit = self.state.client_memory.limit();
        self.output.evict(crate::resp::error(&format!(
            "ERR keyway closed this connection: its clients together held more than server.max_client_memory ({limit} bytes) and this one held the most"
        )));
    }

    /// Adds the requests dispatched since the last call to INFO's
    /// `total_commands_processed`.
    pub(super) fn count_commands(&mut self) {
        if self.commands_processed > 0 {
            self.state.stats.commands_processed.fetch_add(
                std::mem::take(&mut self.commands_processed),
                std::sync::atomic::Ordering::Relaxed,
            );
        }
    }

    /// Waits for the next thing to do: client bytes (when more are
    /// wanted), a reply resolved or written, a pushed message, CLIENT KILL.
    /// False once the client can no longer be written to.
    async fn wait(&mut self) -> bool {
        let reading = !self.input_closed && !self.output.closing() && self.output.has_room();
        let spare = self.inbuf.capacity() - self.inbuf.len();
        // While requests split off the buffer are in flight it cannot be
        // reused; unless it is full, refill it once they are answered.
        if reading && spare < FIRST_READ && (spare == 0 || self.output.is_empty()) {
            if self.read_chunk < READ_CHUNK {
                // A client that keeps filling its buffer gets one twice as
                // large, up to READ_CHUNK.
                self.read_chunk = (self.read_chunk * 2).clamp(FIRST_READ, READ_CHUNK);
                self.inbuf.reserve(self.read_chunk);
            } else if !self.inbuf.try_reclaim(READ_CHUNK / 2) {
                self.inbuf.reserve(READ_CHUNK);
            }
        }
        // Subscribers and transactions wait for the server, not the client;
        // while shutting down, every client that is owed nothing is idle.
        let idle = match (&self.mode, self.output.is_empty()) {
            (_, true) if self.draining => Some(DRAIN_IDLE),
            (mode, true) if mode.idles() && self.idle_timeout_secs > 0 => {
                Some(std::time::Duration::from_secs(self.idle_timeout_secs))
            }
            _ => None,
        };
        let idle_timing = reading && idle.is_some();
        if let (true, Some(idle)) = (idle_timing, idle) {
            let at = tokio::time::Instant::now() + idle;
            match self.idle_timer.as_mut() {
                Some(timer) => timer.as_mut().reset(at),
                None => self.idle_timer = Some(Box::pin(tokio::time::sleep_until(at))),
            }
        }
        std::future::poll_fn(|cx| {
            let woke = self.poll_wait(cx, reading);
            if woke.is_pending() && idle_timing {
                if let Some(timer) = self.idle_timer.as_mut() {
                    if timer.as_mut().poll(cx).is_ready() {
                        tracing::debug!(client = self.client.id, "closing an idle client");
                        self.input_closed = true;
                        return Poll::Ready(true);
                    }
                }
            }
            woke
        })
        .await
    }

    /// One poll of everything a session waits on, in a fixed order:
    /// owed replies first, then the client, pushed messages, CLIENT KILL.
    /// Polled by hand, not through `select!`: it runs several times per
    /// request and keeps no future of its own.
    fn poll_wait(&mut self, cx: &mut Context<'_>, reading: bool) -> Poll<bool> {
        if !self.output.is_empty() {
            if let Poll::Ready(progress) = self.output.poll_progress(cx, &self.state, &self.live) {
                return Poll::Ready(progress.is_ok());
            }
        }
        if reading {
            match poll_read_buf(Pin::new(&mut self.rd), cx, &mut self.inbuf) {
                Poll::Ready(Ok(n)) if n > 0 => return Poll::Ready(true),
                Poll::Ready(_) => {
                    self.input_closed = true;
                    return Poll::Ready(true);
                }
                Poll::Pending => {}
            }
        }
        if let Some(pushes) = self.pushes.as_mut() {
            if pushes.over_limit(cx) {
                self.output.cut_subscriber(&self.state);
                return Poll::Ready(false);
            }
            // A reload may have revoked what the subscriber hears: checked
            // (by the loop) before another message is taken.
            if self.state.generation() != self.generation {
                return Poll::Ready(true);
            }
            if self.output.has_room() {
                if let Poll::Ready(Some(message)) = pushes.poll_recv(cx) {
                    self.output.push(message);
                    return Poll::Ready(true);
                }
            }
        }
        // CLIENT KILL, or the drain's end: what was read is answered;
        // nothing more is read. Watched only while reading, the one wait with no end.
        // Once polled, the future stays registered with this task's waker,
        // so later waits only check the flag.
        if reading {
            if self.killed.fired(cx) {
                self.input_closed = true;
                return Poll::Ready(true);
            }
            // Shutdown: go on reading, with the drain's idle grace.
            if !self.draining && self.drain_started.fired(cx) {
                self.draining = true;
                return Poll::Ready(true);
            }
        }
        Poll::Pending
    }

    /// Queues a reply, honouring CLIENT REPLY.
    #[inline]
    pub(super) fn queue(&mut self, reply: Reply) {
        if matches!(self.reply_mode, ReplyMode::On) || reply.is_push() {
            return self.output.push(reply);
        }
        if let ReplyMode::Skip(n) = self.reply_mode {
            self.reply_mode = if n > 1 {
                ReplyMode::Skip(n - 1)
            } else {
                ReplyMode::On
            };
        }
        self.output.push(Reply::Silent(Box::new(reply)));
    }

    /// Resolves and writes every reply queued before now, so work on a
    /// leased connection runs after the client's earlier commands; false
    /// when the client can no longer be written to.
    async fn flush(&mut self) -> bool {
        self.output.flush(&self.state, &self.live).await.is_ok()
    }

    /// Queues `bytes` on the pool's multiplexed connection for this client,
    /// its reply due at `reply`. A connection found closed before anything
    /// was sent is replaced once.
    async fn send(
        &mut self,
        pool: PoolId,
        mut bytes: Bytes,
        mut reply: ReplyTo,
    ) -> Result<(), BackendError> {
        // `links` has one slot per pool of the configuration the request
        // runs under; connecting checks the pool against the current one.
        let slot = pool.index();
        if slot >= self.links.pools.len() {
            // A route planned just before a reload that added the pool.
            return Err(BackendError::Unavailable {
                pool: self.state.live().router.pool_name(pool).to_string(),
                reason: "the configuration was reloaded; retry".to_string(),
            });
        }
        let choice = self.node_choice();
        if let Some((cluster, warm)) = self.links.ready_node(pool, self.client.db, choice) {
            // Warm: the slot's master has a connection of this client's.
            if let Some(conn) = warm {
                (bytes, reply) = match conn.try_send(bytes, reply, false) {
                    Ok(()) => return Ok(()),
                    Err(back) => back,
                };
            }
            // Boxed: its wait for a first map would enlarge every request.
            return Box::pin(self.send_to_cluster(cluster, bytes, reply)).await;
        }
        // Two tries at a closed connection, and one after a failover fence.
        for _ in 0..3 {
            if self.links.pools[slot].as_ref().is_none_or(Conn::is_closed) {
                // Boxed: taken once per pool and db, it would otherwise
                // enlarge every client's task by a whole connect.
                let backend = self.state.live().backends.checked(pool)?;
                let conn = Box::pin(backend.conn(
                    self.client.db,
                    self.client.proto,
                    self.client.id as usize,
                ))
                .await?;
                self.links.pools[slot] = Some(conn);
            }
            let Some(conn) = self.links.pools[slot].as_ref() else {
                continue;
            };
            if conn.fenced() && !self.meta.read_only {
                // Boxed: rare, and its timer would enlarge every request's future.
                Box::pin(self.hold_write(pool)).await?;
                // The master may have moved: take a connection to the current one.
                self.links.pools[slot] = None;
                continue;
            }
            match conn.send(bytes, reply).await {
                Ok(()) => return Ok(()),
                Err(back) => {
                    (bytes, reply) = back;
                    self.links.pools[slot] = None;
                }
            }
        }
        Err(BackendError::ConnectionLost {
            pool: self.state.live().router.pool_name(pool).to_string(),
        })
    }

    /// What picks the node of a request to a cluster pool.
    fn node_choice(&self) -> NodeChoice {
        NodeChoice {
            slot: self.meta.slot,
            read_only: self.meta.read_only,
            hint: self.client.id as usize,
        }
    }

    /// Queues `bytes` on the multiplexed connection to the master serving
    /// the request's slot (`meta.slot`; keyless: any master).
    async fn send_to_cluster(
        &mut self,
        cluster: Arc<crate::cluster::Cluster>,
        mut bytes: Bytes,
        mut reply: ReplyTo,
    ) -> Result<(), BackendError> {
        if self.client.db != 0 {
            return Err(BackendError::ClusterDatabase {
                pool: cluster.name().to_string(),
            });
        }
        for _ in 0..2 {
            let replica = self.meta.read_only && cluster.replica_reads();
            let node = cluster
                .map()
                .server_of(self.meta.slot, replica, self.client.id as usize)
                .cloned();
            let node = match node {
                Some(node) => node,
                None => cluster.master_or_wait(self.meta.slot).await?,
            };
            let index = match self.links.node_index(&node) {
                Some(i) => i,
                None => {
                    let conn = node
                        .conn(0, self.client.proto, self.client.id as usize)
                        .await
                        .inspect_err(|_| cluster.request_refresh())?;
                    self.links.keep_node(node, conn)
                }
            };
            let Some(conn) = self.links.node_conn(index) else {
                continue;
            };
            match conn.send(bytes, reply).await {
                Ok(()) => return Ok(()),
                Err(back) => (bytes, reply) = back,
            }
        }
        cluster.request_refresh();
        Err(BackendError::ConnectionLost {
            pool: cluster.name().to_string(),
        })
    }

    /// Holds a write while the pool's master is being moved, up to the
    /// request timeout; past it the write is refused, never sent.
    async fn hold_write(&self, pool: PoolId) -> Result<(), BackendError> {
        let live = self.state.live();
        let fence = live.backends.checked(pool)?.fence().clone();
        let pool_name = live.router.pool_name(pool).to_string();
        let wait = match live.config.backend.request_timeout_ms {
            0 => crate::backend::MAX_FENCE,
            ms => std::time::Duration::from_millis(ms),
        };
        drop(live);
        self.state
            .metrics
            .writes_held
            .with_label_values(&[&pool_name])
            .inc();
        if fence.wait_lifted(tokio::time::Instant::now() + wait).await {
            Ok(())
        } else {
            Err(BackendError::FailingOver { pool: pool_name })
        }
    }

    fn register(&self) {
        self.state.clients.insert(
            self.client.id,
            self.client
                .info(&self.kill, &self.mode, &self.unblocker, &self.activity),
        );
    }

    /// A request that could not reach its backend: counted once, under the
    /// failure's kind and as a failed command, and answered with the error.
    pub(super) fn failed(&self, e: &BackendError) -> Reply {
        let metrics = &self.state.metrics;
        metrics.errors.with_label_values(&[e.kind()]).inc();
        if self.state.live().config.server.metrics {
            metrics.record_command(
                self.meta.command,
                e.pool(),
                true,
                self.meta.started.elapsed().as_secs_f64(),
            );
        }
        let reply = e.to_resp();
        self.state.stats.commands.error_reply(&reply);
        Reply::now(reply)
    }

    /// Counts a refusal and answers it; inside MULTI it also aborts the
    /// transaction, as a queue-time error does in Redis.
    #[cold]
    #[inline(never)]
    pub(super) fn deny(&mut self, denial: Denial) -> Reply {
        let (reason, detail) = denial.labels();
        self.state.metrics.deny(reason, &detail);
        let reply = denial.to_resp();
        self.state
            .stats
            .commands
            .rejected(self.meta.command, &reply);
        self.refuse_in_multi(reply)
    }

    /// After a reload: pools may have moved or changed in number, and the
    /// client's user may have changed or gone.
    /// Returns the configuration this request runs under, loaded once so the
    /// request sees one configuration throughout.
    pub(super) fn follow_reload(&mut self) -> Arc<crate::state::Live> {
        if self.state.generation() == self.generation {
            return Arc::clone(&self.live);
        }
        let live = self.state.live_arc();
        self.live = Arc::clone(&live);
        self.generation = live.generation;
        self.links = Links::new(&live.backends);
        self.output.configure(&live.config);
        self.idle_timeout_secs = live.config.server.idle_timeout_secs;
        self.client.user = match &self.client.user {
            Some(user) => live.policy.same_user(user),
            None => live.policy.initial_user(),
        };
        self.register();
        live
    }

    /// What CLIENT LIST reads of the buffers and the transaction, after
    /// each request.
    #[inline]
    fn publish_buffers(&self) {
        self.activity.buffers(
            self.mode.multi_len(),
            self.inbuf.len(),
            self.inbuf.capacity() - self.inbuf.len(),
            self.output.owed_bytes(),
        );
    }

    /// Whose share the client's held leases count against.
    pub(super) fn tenant(&self) -> Option<crate::backend::Tenant> {
        let user = self.client.user.as_ref()?;
        Some(self.state.live().policy.tenant(user))
    }

    /// The db or protocol changed: connections for the old ones no longer fit.
    fn client_changed(&mut self) {
        self.links.clear();
        self.register();
    }
}
