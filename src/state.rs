//! What every session consults: the live configuration (routes, users,
//! limits, pools), swapped whole on reload, plus the command table, the
//! client registry and the counters that INFO and CLIENT LIST report.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Instant;

use arc_swap::ArcSwap;
use dashmap::DashMap;

use crate::backend::Backends;
use crate::client_memory::ClientMemory;
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
    /// What the clients together hold, and its bound.
    pub client_memory: ClientMemory,
    /// Signalled whenever a client leaves, so a drain waits without polling.
    pub client_left: tokio::sync::Notify,
    pub started: Instant,
    /// The default pool's `redis_version`, reported by HELLO and INFO.
    pub redis_version: ArcSwap<String>,
    pub stats: Stats,
    /// Whole seconds since start, kept by `tick_clock`: reading it costs a
    /// load where a clock read per request would cost far more.
    uptime_secs: AtomicU64,
    /// Cancelled when shutdown starts: sessions finish what they read and close.
    pub drain: tokio_util::sync::CancellationToken,
    /// The generation of the configuration in force, announced on every
    /// reload (the supervisor applies the pool changes to its tasks).
    reloaded: tokio::sync::watch::Sender<u64>,
    /// The same generation, for sessions to compare before each request:
    /// a plain load, where loading `live` costs atomic operations.
    generation: AtomicU64,
    next_client_id: AtomicU64,
}

#[derive(Default)]
pub struct Stats {
    pub connections_received: AtomicU64,
    pub commands_processed: AtomicU64,
    /// Per-command figures, error replies by kind and refused calls, for INFO.
    pub commands: crate::commandstats::CommandStats,
}

impl Stats {
    /// CONFIG RESETSTAT, for what keyway counts itself.
    pub fn reset(&self, metrics: &Metrics) {
        self.connections_received.store(0, Ordering::Relaxed);
        self.commands_processed.store(0, Ordering::Relaxed);
        self.commands.reset(metrics);
    }
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
    /// Channels, patterns and shard channels subscribed.
    pub subscriptions: (usize, usize, usize),
    /// Each pattern subscribed, with the pools it is subscribed on.
    pub patterns: Arc<[(bytes::Bytes, Vec<crate::route::PoolId>)]>,
    /// Cancelling it disconnects the client (CLIENT KILL).
    pub kill: tokio_util::sync::CancellationToken,
    /// Whether it is blocked, and how CLIENT UNBLOCK ends that.
    pub unblocker: std::sync::Arc<crate::session::Unblocker>,
    /// What it is doing now, as its session last published.
    pub activity: Arc<Activity>,
}

/// What a session publishes as it runs, for CLIENT LIST and CLIENT INFO:
/// relaxed stores on the request path, read only when a client lists.
#[derive(Debug)]
pub struct Activity {
    /// The address of the last command's table name (0: none yet); turned
    /// back into the name by looking it up in the command table.
    command: AtomicUsize,
    /// Seconds after keyway started, when the last command was read.
    last_secs: AtomicU64,
    /// Queued commands in MULTI, or -1 outside a transaction.
    multi: AtomicI64,
    /// Request bytes read and not yet handled, and the read buffer's spare room.
    query_bytes: AtomicUsize,
    query_free: AtomicUsize,
    /// Reply bytes held for the client.
    output_bytes: AtomicUsize,
    /// What it holds, as counted against `server.max_client_memory`.
    pub memory: AtomicUsize,
    /// Chosen to be closed for the clients' memory.
    evicted: AtomicBool,
}

impl Default for Activity {
    fn default() -> Activity {
        Activity {
            command: AtomicUsize::new(0),
            last_secs: AtomicU64::new(0),
            multi: AtomicI64::new(-1),
            query_bytes: AtomicUsize::new(0),
            query_free: AtomicUsize::new(0),
            output_bytes: AtomicUsize::new(0),
            memory: AtomicUsize::new(0),
            evicted: AtomicBool::new(false),
        }
    }
}

impl Activity {
    /// A command was read: `name` is its command-table name.
    #[inline]
    pub fn command(&self, name: &'static str, uptime_secs: u64) {
        self.command
            .store(name.as_ptr() as usize, Ordering::Relaxed);
        self.last_secs.store(uptime_secs, Ordering::Relaxed);
    }

    /// The state after a request was handled.
    #[inline]
    pub fn buffers(&self, multi: i64, query: usize, query_free: usize, output: usize) {
        self.multi.store(multi, Ordering::Relaxed);
        self.query_bytes.store(query, Ordering::Relaxed);
        self.query_free.store(query_free, Ordering::Relaxed);
        self.output_bytes.store(output, Ordering::Relaxed);
    }

    pub fn multi(&self) -> i64 {
        self.multi.load(Ordering::Relaxed)
    }

    /// Whether the client was chosen to be closed for the clients' memory.
    pub fn evicted(&self) -> bool {
        self.evicted.load(Ordering::Relaxed)
    }
}

/// Shown until a backend tells its own version.
pub const FALLBACK_REDIS_VERSION: &str = "7.0.0";

impl State {
    pub fn new(config: Config, commands: CommandTable) -> Arc<State> {
        let client_memory = crate::client_memory::limit_of(&config.server);
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
            client_memory: ClientMemory::new(client_memory),
            client_left: tokio::sync::Notify::new(),
            started: Instant::now(),
            redis_version: ArcSwap::from_pointee(FALLBACK_REDIS_VERSION.to_string()),
            stats: Stats::default(),
            uptime_secs: AtomicU64::new(0),
            drain: tokio_util::sync::CancellationToken::new(),
            reloaded: tokio::sync::watch::Sender::new(0),
            generation: AtomicU64::new(0),
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
            let round_trip = self
                .metrics
                .backend_duration
                .with_label_values(&[pool.name()]);
            if let Some(cluster) = pool.cluster() {
                cluster.attach_metrics(self.metrics.cluster(pool.name()), round_trip.clone());
            }
            pool.record_round_trips(round_trip);
        }
    }

    /// The configuration in force now.
    pub fn live(&self) -> arc_swap::Guard<Arc<Live>> {
        self.live.load()
    }

    pub fn live_arc(&self) -> Arc<Live> {
        self.live.load_full()
    }

    /// The generation of the configuration in force.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Re-reads the configuration file and the environment and swaps in
    /// routes, users, blocklist, limits and pools. Pools whose address
    /// did not change keep their connections; a changed address drains
    /// the old ones. An invalid file changes nothing.
    pub fn reload(&self) -> Result<u64, String> {
        let old = self.live.load_full();
        let result = Config::load(std::path::Path::new(&old.config.source))
            .map_err(|e| e.to_string())
            .and_then(|mut config| {
                // Port 0 was bound to a port of the system's choosing, kept since.
                config.keep_bound_ports(&old.config);
                config.keep_pool_ids(&old.config);
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
        let (backends, changes) = Backends::reuse(&config, &old.backends);
        for change in &changes {
            match change {
                crate::backend::PoolChange::Kept(_) => {}
                other => tracing::info!(change = ?other, "pool changed by the reload"),
            }
        }
        self.client_memory
            .set_limit(crate::client_memory::limit_of(&config.server));
        let live = Live {
            router: Router::new(&config),
            policy: Policy::reloaded(&config, &old.policy),
            backends,
            config,
            generation: old.generation + 1,
        };
        let generation = live.generation;
        let live = Arc::new(live);
        self.live.store(live.clone());
        self.generation.store(generation, Ordering::Release);
        self.attach_metrics();
        self.reloaded.send_replace(generation);
        self.metrics.config_reloads.with_label_values(&["ok"]).inc();
        tracing::info!(generation, "configuration reloaded");
        Ok(generation)
    }

    /// Announces each reload's generation, from now on.
    pub fn reloads(&self) -> tokio::sync::watch::Receiver<u64> {
        self.reloaded.subscribe()
    }

    /// The shared handle, for work that outlives a borrow (a retry task).
    pub fn self_arc(&self) -> Option<Arc<State>> {
        self.me.upgrade()
    }

    pub fn uptime_secs(&self) -> u64 {
        self.uptime_secs.load(Ordering::Relaxed)
    }

    /// Keeps `uptime_secs` current; runs for as long as the server does.
    pub async fn tick_clock(self: Arc<State>) {
        let mut ticker = tokio::time::interval(std::time::Duration::from_secs(1));
        loop {
            ticker.tick().await;
            self.uptime_secs
                .store(self.started.elapsed().as_secs(), Ordering::Relaxed);
        }
    }

    /// Closes the clients holding the most until the clients together hold
    /// no more than `server.max_client_memory` (Redis's client eviction).
    /// Each victim's share leaves the total at once, so clients that pass
    /// the bound together close one victim, not one each.
    #[cold]
    pub fn evict_clients(&self) {
        while self.client_memory.over() {
            let biggest = self
                .clients
                .iter()
                .filter(|c| !c.activity.evicted() && c.activity.memory.load(Ordering::Relaxed) > 0)
                .max_by_key(|c| c.activity.memory.load(Ordering::Relaxed))
                .map(|c| (c.id, c.addr, c.activity.clone(), c.kill.clone()));
            let Some((id, addr, activity, kill)) = biggest else {
                return;
            };
            if activity.evicted.swap(true, Ordering::Relaxed) {
                continue;
            }
            let held = self.client_memory.release(&activity.memory);
            tracing::warn!(
                client = id,
                %addr,
                held,
                limit = self.client_memory.limit(),
                "closing the client holding the most memory: clients together passed server.max_client_memory"
            );
            self.metrics.deny("limit", "max_client_memory");
            kill.cancel();
        }
    }

    pub fn next_client_id(&self) -> u64 {
        self.next_client_id.fetch_add(1, Ordering::Relaxed)
    }

    pub fn redis_version(&self) -> String {
        self.redis_version.load().as_ref().clone()
    }
}

impl ClientInfo {
    /// Redis's flag letters: P pub/sub, x in MULTI, b blocked; N for none.
    fn flags(&self) -> String {
        let mut flags = String::new();
        if self.subscriptions != (0, 0, 0) {
            flags.push('P');
        }
        if self.activity.multi() >= 0 {
            flags.push('x');
        }
        if self.unblocker.is_blocked() {
            flags.push('b');
        }
        if flags.is_empty() {
            flags.push('N');
        }
        flags
    }

    /// Whether it is in pub/sub mode (CLIENT LIST/KILL `TYPE pubsub`).
    pub fn is_pubsub(&self) -> bool {
        self.subscriptions != (0, 0, 0)
    }

    /// One CLIENT LIST / CLIENT INFO line, in Redis's field order.
    pub fn line(&self, state: &State) -> String {
        let a = &self.activity;
        let idle = state
            .uptime_secs()
            .saturating_sub(a.last_secs.load(Ordering::Relaxed));
        let cmd = match a.command.load(Ordering::Relaxed) {
            0 => "NULL",
            address => state.commands.name_at(address).unwrap_or("NULL"),
        };
        let qbuf = a.query_bytes.load(Ordering::Relaxed);
        let qbuf_free = a.query_free.load(Ordering::Relaxed);
        let omem = a.output_bytes.load(Ordering::Relaxed);
        format!(
            "id={} addr={} laddr={} fd=-1 name={} age={} idle={} flags={} db={} sub={} psub={} ssub={} multi={} qbuf={} qbuf-free={} argv-mem=0 multi-mem=0 rbs={} rbp=0 obl=0 oll=0 omem={} tot-mem={} events=r cmd={} user={} redir=-1 resp={} lib-name={} lib-ver={}\n",
            self.id,
            self.addr,
            self.local_addr,
            self.name,
            self.connected.elapsed().as_secs(),
            idle,
            self.flags(),
            self.db,
            self.subscriptions.0,
            self.subscriptions.1,
            self.subscriptions.2,
            a.multi(),
            qbuf,
            qbuf_free,
            qbuf + qbuf_free,
            omem,
            qbuf + qbuf_free + omem,
            cmd,
            if self.user.is_empty() { "default" } else { &self.user },
            self.proto.version(),
            self.lib_name,
            self.lib_ver,
        )
    }
}
