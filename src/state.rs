//! What every session consults: the live configuration (routes, users,
//! limits, pools), swapped whole on reload, plus the command table, the
//! client registry and the counters that INFO and CLIENT LIST report.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Instant;

use arc_swap::ArcSwap;
use dashmap::DashMap;

use crate::backend::Backends;
use crate::command::CommandTable;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::policy::Policy;
use crate::resp::Protocol;
use crate::route::Router;
use crate::slowlog::SlowLog;

/// Everything a reload replaces, swapped in one step: a request sees
/// either the old configuration or the new one, never a mix.
pub struct Live {
    pub config: Config,
    pub router: Router,
    pub backends: Backends,
    pub policy: Policy,
    /// Bumped by every reload; sessions notice and refresh what they cached.
    pub generation: u64,
}

pub struct State {
    me: Weak<State>,
    live: ArcSwap<Live>,
    pub commands: CommandTable,
    pub metrics: Metrics,
    pub slowlog: SlowLog,
    pub clients: DashMap<u64, ClientInfo>,
    pub started: Instant,
    /// The default pool's `redis_version`, reported by HELLO and INFO.
    pub redis_version: ArcSwap<String>,
    pub stats: Stats,
    /// Cancelled when shutdown starts: sessions finish what they read and close.
    pub drain: tokio_util::sync::CancellationToken,
    /// One Sentinel follower per Sentinel-managed pool of the live configuration.
    pub followers: crate::sentinel::Followers,
    next_client_id: AtomicU64,
}

#[derive(Default)]
pub struct Stats {
    pub connections_received: AtomicU64,
    pub commands_processed: AtomicU64,
}

/// What CLIENT LIST shows of one client.
#[derive(Clone, Debug)]
pub struct ClientInfo {
    pub id: u64,
    pub addr: SocketAddr,
    pub local_addr: SocketAddr,
    pub name: String,
    pub db: u32,
    pub proto: Protocol,
    pub lib_name: String,
    pub lib_ver: String,
    pub connected: Instant,
    pub user: String,
    /// Queued commands in MULTI, or -1 outside a transaction.
    pub multi: i64,
    /// Channels, patterns and shard channels subscribed.
    pub subscriptions: (usize, usize, usize),
    /// Cancelling it disconnects the client (CLIENT KILL).
    pub kill: tokio_util::sync::CancellationToken,
    /// Whether it is blocked, and how CLIENT UNBLOCK ends that.
    pub unblocker: std::sync::Arc<crate::session::Unblocker>,
}

/// Shown until a backend tells its own version.
pub const FALLBACK_REDIS_VERSION: &str = "7.0.0";

impl State {
    pub fn new(config: Config, commands: CommandTable) -> Arc<State> {
        let state = Arc::new_cyclic(|me| State {
            me: me.clone(),
            metrics: Metrics::new(),
            slowlog: SlowLog::new(
                std::time::Duration::from_millis(config.server.slowlog_threshold_ms),
                config.server.slowlog_max_len,
            ),
            live: ArcSwap::from_pointee(Live {
                router: Router::new(&config),
                backends: Backends::new(&config),
                policy: Policy::new(&config),
                config,
                generation: 0,
            }),
            commands,
            clients: DashMap::new(),
            started: Instant::now(),
            redis_version: ArcSwap::from_pointee(FALLBACK_REDIS_VERSION.to_string()),
            stats: Stats::default(),
            drain: tokio_util::sync::CancellationToken::new(),
            followers: crate::sentinel::Followers::default(),
            next_client_id: AtomicU64::new(1),
        });
        state.attach_metrics();
        state
    }

    /// Points each pool's connections at its round-trip histogram, and
    /// exports the pools' counters at zero.
    fn attach_metrics(&self) {
        let live = self.live();
        let names: Vec<&str> = live.config.pools.iter().map(|p| p.name.as_str()).collect();
        let limits: Vec<&str> = live.config.limits.iter().map(|l| l.name.as_str()).collect();
        self.metrics.export_known(&names, &limits);
        for pool in live.backends.pools() {
            pool.record_round_trips(
                self.metrics
                    .backend_duration
                    .with_label_values(&[pool.name()]),
            );
        }
    }

    /// The configuration in force now.
    pub fn live(&self) -> arc_swap::Guard<Arc<Live>> {
        self.live.load()
    }

    pub fn live_arc(&self) -> Arc<Live> {
        self.live.load_full()
    }

    /// Re-reads the configuration file and the environment and swaps in
    /// routes, users, blocklist, limits and pools. Pools whose address
    /// did not change keep their connections; a changed address drains
    /// the old ones. An invalid file changes nothing.
    pub fn reload(&self) -> Result<u64, String> {
        let old = self.live.load_full();
        let result = Config::load(std::path::Path::new(&old.config.source))
            .map_err(|e| e.to_string())
            .and_then(|config| {
                if config.listen != old.config.listen || config.admin != old.config.admin {
                    return Err("listen and admin addresses change only with a restart".to_string());
                }
                Ok(config)
            });
        let config = match result {
            Ok(c) => c,
            Err(e) => {
                self.metrics
                    .config_reloads
                    .with_label_values(&["error"])
                    .inc();
                tracing::error!("configuration reload refused, running configuration kept: {e}");
                return Err(e);
            }
        };
        let backends = Backends::reuse(&config, &old.backends);
        let live = Live {
            router: Router::new(&config),
            policy: Policy::new(&config),
            backends,
            config,
            generation: old.generation + 1,
        };
        let generation = live.generation;
        let live = Arc::new(live);
        self.live.store(live.clone());
        self.attach_metrics();
        // Replaced Sentinel pools get new followers; removed ones lose theirs.
        if let Some(state) = self.self_arc() {
            self.followers.sync(&state, &live);
        }
        self.metrics.config_reloads.with_label_values(&["ok"]).inc();
        tracing::info!(generation, "configuration reloaded");
        Ok(generation)
    }

    /// The shared handle, for work that outlives a borrow (a retry task).
    pub fn self_arc(&self) -> Option<Arc<State>> {
        self.me.upgrade()
    }

    pub fn next_client_id(&self) -> u64 {
        self.next_client_id.fetch_add(1, Ordering::Relaxed)
    }

    pub fn redis_version(&self) -> String {
        self.redis_version.load().as_ref().clone()
    }
}

impl ClientInfo {
    fn flags(&self) -> &'static str {
        if self.unblocker.is_blocked() {
            "b"
        } else if self.multi >= 0 {
            "x"
        } else if self.subscriptions != (0, 0, 0) {
            "P"
        } else {
            "N"
        }
    }

    /// One CLIENT LIST / CLIENT INFO line, in Redis's field order.
    pub fn line(&self) -> String {
        format!(
            "id={} addr={} laddr={} fd=-1 name={} age={} idle=0 flags={} db={} sub={} psub={} ssub={} multi={} qbuf=0 qbuf-free=0 argv-mem=0 multi-mem=0 rbs=0 rbp=0 obl=0 oll=0 omem=0 tot-mem=0 events=r cmd=NULL user={} redir=-1 resp={} lib-name={} lib-ver={}\n",
            self.id,
            self.addr,
            self.local_addr,
            self.name,
            self.connected.elapsed().as_secs(),
            self.flags(),
            self.db,
            self.subscriptions.0,
            self.subscriptions.1,
            self.subscriptions.2,
            self.multi,
            self.user,
            self.proto.version(),
            self.lib_name,
            self.lib_ver,
        )
    }
}
