//! The listener and accept loop: learns the backends' command table and
//! version at start, enforces `max_clients`, and hands each connection to a
//! session task until shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use redis_protocol::resp2::decode::decode as decode_resp2;
use thiserror::Error;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;

use crate::backend::request_once;
use crate::command::CommandTable;
use crate::config::Config;
use crate::session;
use crate::state::State;

#[derive(Debug, Error)]
pub enum ServerError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("tls: {0}")]
    Tls(String),
}

pub struct Server {
    /// `None` when TLS serves alone (`tls.disable_plain`).
    listener: Option<TcpListener>,
    tls: Option<(TcpListener, tokio_rustls::TlsAcceptor)>,
    admin: TcpListener,
    state: Arc<State>,
}

const DISCOVERY_TIMEOUT: Duration = Duration::from_secs(2);

impl Server {
    /// Binds the client listener and asks the default pool for its command
    /// table and version (best effort: keyway starts without them).
    pub async fn bind(mut config: Config) -> Result<Server, ServerError> {
        let plain = !config.tls.as_ref().is_some_and(|t| t.disable_plain);
        let listener = match plain {
            true => Some(TcpListener::bind(config.listen).await.map_err(|source| {
                ServerError::Bind {
                    addr: config.listen,
                    source,
                }
            })?),
            false => None,
        };
        let tls = match (&config.tls, config.tls_listen) {
            (Some(tls), Some(addr)) => {
                let acceptor = crate::tls::acceptor(tls).map_err(ServerError::Tls)?;
                let l = TcpListener::bind(addr)
                    .await
                    .map_err(|source| ServerError::Bind { addr, source })?;
                Some((l, acceptor))
            }
            _ => None,
        };
        let admin = TcpListener::bind(config.admin)
            .await
            .map_err(|source| ServerError::Bind {
                addr: config.admin,
                source,
            })?;
        // Port 0 binds a free port: from here on the configuration names
        // the addresses actually bound (logged, in INFO, kept on reload).
        let bound = |l: &TcpListener, configured: SocketAddr| l.local_addr().unwrap_or(configured);
        if let Some(l) = &listener {
            config.listen = bound(l, config.listen);
        }
        if let (Some((l, _)), Some(addr)) = (&tls, config.tls_listen) {
            config.tls_listen = Some(bound(l, addr));
        }
        config.admin = bound(&admin, config.admin);
        for pool in config.pools.iter_mut() {
            let Some(sentinel) = &pool.sentinel else {
                continue;
            };
            match crate::sentinel::discover(sentinel, &pool.endpoint).await {
                Ok(master) => {
                    tracing::info!(pool = %pool.name, master = %master, "master discovered through Sentinel");
                    pool.endpoint.addr = Some(master);
                }
                Err(e) => {
                    tracing::warn!(pool = %pool.name, "no master confirmed yet (pool not ready): {e}")
                }
            }
        }
        let mut commands = CommandTable::builtin();
        let default = config.pool(crate::route::Router::new(&config).default_pool());
        let version = match default {
            Some(pool) => discover(&pool.endpoint, &mut commands).await,
            None => None,
        };
        let state = State::new(config, commands);
        if let Some(v) = version {
            state.redis_version.store(Arc::new(v));
        }
        Ok(Server {
            listener,
            tls,
            admin,
            state,
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        match (&self.listener, &self.tls) {
            (Some(l), _) => l.local_addr(),
            (None, Some((l, _))) => l.local_addr(),
            (None, None) => Err(std::io::ErrorKind::NotConnected.into()),
        }
    }

    pub fn state(&self) -> Arc<State> {
        self.state.clone()
    }

    /// Accepts clients until `shutdown` completes, then drains: `/readyz`
    /// turns 503, the listeners close, sessions answer what they already
    /// read and close, and whatever is left after the drain timeout is cut.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        {
            let live = self.state.live();
            let tls = live
                .config
                .tls_listen
                .map(|a| a.to_string())
                .unwrap_or_default();
            tracing::info!(listen = %live.config.listen, admin = %live.config.admin, tls_listen = %tls, "keyway accepting clients");
        }
        let supervisor = crate::supervisor::Supervisor::start(&self.state, self.admin);
        let unix = match &self.state.live().config.server.unix_socket {
            Some(path) => {
                // A stale socket file from a previous run would make bind fail.
                let _ = std::fs::remove_file(path);
                match tokio::net::UnixListener::bind(path) {
                    Ok(l) => {
                        tracing::info!(path = %path, "accepting clients on a Unix socket");
                        Some(l)
                    }
                    Err(e) => {
                        tracing::error!(path = %path, "cannot listen on the Unix socket: {e}");
                        None
                    }
                }
            }
            None => None,
        };
        let listeners = Listeners {
            tcp: self.listener,
            tls: self.tls,
            unix,
        };
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => {
                    // Closing the listeners first: new clients are refused
                    // by the kernel rather than left waiting in a backlog.
                    drop(listeners);
                    drain(&self.state).await;
                    drop(supervisor);
                    return;
                }
                accepted = listeners.accept() => match accepted {
                    Ok(client) => {
                        tokio::spawn(admit(self.state.clone(), client));
                    }
                    Err(e) => {
                        // Out of file descriptors and the like: back off, keep serving.
                        tracing::warn!("accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
            }
        }
    }
}

/// The client listeners: plain TCP (unless TLS serves alone), TLS, Unix.
struct Listeners {
    tcp: Option<TcpListener>,
    tls: Option<(TcpListener, tokio_rustls::TlsAcceptor)>,
    unix: Option<tokio::net::UnixListener>,
}

/// A connection one of the listeners accepted.
enum Accepted {
    Tcp(tokio::net::TcpStream, SocketAddr),
    /// Before its handshake, which the client's own task runs.
    Tls(tokio::net::TcpStream, SocketAddr, tokio_rustls::TlsAcceptor),
    Unix(tokio::net::UnixStream),
}

impl Listeners {
    /// The next connection, from whichever listener has one.
    async fn accept(&self) -> std::io::Result<Accepted> {
        let tcp = async {
            match &self.tcp {
                Some(l) => l.accept().await.map(|(s, a)| Accepted::Tcp(s, a)),
                None => std::future::pending().await,
            }
        };
        let tls = async {
            match &self.tls {
                Some((l, acceptor)) => l
                    .accept()
                    .await
                    .map(|(s, a)| Accepted::Tls(s, a, acceptor.clone())),
                None => std::future::pending().await,
            }
        };
        let unix = async {
            match &self.unix {
                Some(l) => l.accept().await.map(|(s, _)| Accepted::Unix(s)),
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            a = tcp => a,
            a = tls => a,
            a = unix => a,
        }
    }
}

/// One client, whichever listener took it: counted, held to `max_clients`
/// (a refused client is told why, as Redis tells it, then closed), served.
async fn admit(state: Arc<State>, client: Accepted) {
    let admitted = admits(&state);
    match client {
        Accepted::Tcp(mut socket, addr) => match admitted {
            true => session::serve(state, socket, addr).await,
            false => refuse(&mut socket).await,
        },
        Accepted::Unix(mut socket) => match admitted {
            true => session::serve_unix(state, socket).await,
            false => refuse(&mut socket).await,
        },
        Accepted::Tls(socket, addr, acceptor) => {
            // A client that never finishes its handshake holds nothing for long.
            match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(socket)).await {
                Ok(Ok(mut stream)) => match admitted {
                    true => session::serve_tls(state, stream, addr).await,
                    false => refuse(&mut stream).await,
                },
                Ok(Err(e)) => {
                    state
                        .metrics
                        .errors
                        .with_label_values(&["tls_handshake"])
                        .inc();
                    tracing::debug!(%addr, "TLS handshake failed: {e}");
                }
                Err(_) => tracing::debug!(%addr, "TLS handshake timed out"),
            }
        }
    }
}

/// Tells a client over `max_clients` so, without waiting on it for long.
async fn refuse(socket: &mut (impl tokio::io::AsyncWrite + Unpin)) {
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        socket.write_all(MAX_CLIENTS_REACHED).await?;
        socket.shutdown().await
    })
    .await;
}

/// Redis's answer to a client over `maxclients`.
const MAX_CLIENTS_REACHED: &[u8] = b"-ERR max number of clients reached\r\n";

/// Counts a new connection and says whether it fits under `max_clients`
/// (a refusal is counted).
fn admits(state: &State) -> bool {
    state
        .stats
        .connections_received
        .fetch_add(1, Ordering::Relaxed);
    if state.clients.len() >= state.live().config.server.max_clients {
        state.metrics.clients_rejected.inc();
        return false;
    }
    true
}

/// The drain itself (see `Server::run`).
async fn drain(state: &State) {
    let timeout = Duration::from_millis(state.live().config.server.drain_timeout_ms);
    tracing::info!(
        clients = state.clients.len(),
        ?timeout,
        "shutting down: draining clients"
    );
    state.drain.cancel();
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        // Registered before the check, so a client leaving in between is seen.
        let left = state.client_left.notified();
        if state.clients.is_empty() {
            break;
        }
        if tokio::time::timeout_at(deadline, left).await.is_err() {
            break;
        }
    }
    let left = state.clients.len();
    if left > 0 {
        tracing::warn!(left, "drain timeout reached; closing the remaining clients");
        for c in state.clients.iter() {
            c.kill.cancel();
        }
    }
    if let Some(path) = &state.live().config.server.unix_socket {
        let _ = std::fs::remove_file(path);
    }
    tracing::info!("drained; exiting");
}

const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Learns module commands from `COMMAND` and the version from `INFO server`.
async fn discover(
    endpoint: &crate::config::Endpoint,
    commands: &mut CommandTable,
) -> Option<String> {
    match request_once(endpoint, &["COMMAND"], DISCOVERY_TIMEOUT).await {
        Ok(reply) => match decode_resp2(&reply) {
            Ok(Some((frame, _))) => {
                let added = commands.learn_from_command_reply(&frame);
                tracing::info!(
                    added,
                    total = commands.len(),
                    "command table refreshed from the default pool"
                );
            }
            _ => tracing::warn!(
                "could not decode the default pool's COMMAND reply; using the builtin table"
            ),
        },
        Err(e) => {
            tracing::warn!("default pool did not answer COMMAND ({e}); using the builtin table")
        }
    }
    let info = request_once(endpoint, &["INFO", "server"], DISCOVERY_TIMEOUT)
        .await
        .ok()?;
    let text = crate::resp::info::text(&info)?;
    crate::resp::info::field(&text, "redis_version").map(str::to_string)
}
