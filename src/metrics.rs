//! The metric families keyway exports, named by Prometheus conventions
//! (base units, `_total` counters, `_seconds` histograms). Label values are
//! bounded: commands outside the table are `other`, routes are rule names.

use std::cell::RefCell;
use std::rc::Rc;

use crate::route::PoolId;

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

/// The series of one command on one pool, as this thread's local copies:
/// recording costs no atomic operation; `flush_thread_local` adds what
/// they gathered to the shared series. On the one-thread runtime (the
/// default) that is done by whoever reads the shared series (`gather`,
/// INFO), on the same thread, so a read always sees every reply written;
/// on several worker threads, by the session after each batch of replies.
struct CommandSeries {
    ok: prometheus::local::LocalIntCounter,
    error: prometheus::local::LocalIntCounter,
    duration: prometheus::local::LocalHistogram,
    /// Recorded into since the last flush (listed in `UNFLUSHED`).
    dirty: std::cell::Cell<bool>,
}

/// Hits and misses of one pool and route.
#[derive(Clone)]
struct CacheSeries {
    hits: IntCounter,
    misses: IntCounter,
}

/// (metrics instance, configuration generation, route rule) → pool → series.
type CacheSeriesCache = std::collections::HashMap<
    (u64, u64, Option<usize>),
    Vec<(Box<str>, CacheSeries)>,
    foldhash::fast::RandomState,
>;

/// A metrics instance and a command (by its static name's address and
/// length).
type SeriesKey = (u64, usize, usize);

/// (metrics instance, command) → pool → series. The instance keeps two keyways in one process (tests)
/// from counting into each other's series.
type SeriesCache = std::collections::HashMap<
    SeriesKey,
    Vec<(Box<str>, Rc<CommandSeries>)>,
    foldhash::fast::RandomState,
>;

/// Which pool a reply came from, as the hot path knows it: the
/// configuration's generation and the pool's id. Within one generation an
/// id names one pool, so series found by it need no name compared.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct PoolKey {
    pub generation: u64,
    pub id: PoolId,
}

/// The series a thread used recently, found without hashing or comparing
/// names: a direct-mapped table (a collision replaces the entry, which is
/// found again by name next time). Entries share the series of the maps.
const RECENT: usize = 64;
type RecentCommand = Option<((u64, usize, usize, PoolKey), Rc<CommandSeries>)>;
type RecentCache = Option<((u64, Option<usize>, PoolKey), CacheSeries)>;

thread_local! {
    static COMMAND_SERIES: RefCell<SeriesCache> = RefCell::new(SeriesCache::default());
    /// The series recorded into since the last flush.
    static UNFLUSHED: RefCell<Vec<Rc<CommandSeries>>> = const { RefCell::new(Vec::new()) };
    static CACHE_SERIES: RefCell<CacheSeriesCache> = RefCell::new(CacheSeriesCache::default());
    static RECENT_COMMANDS: RefCell<[RecentCommand; RECENT]> = const { RefCell::new([const { None }; RECENT]) };
    static RECENT_CACHE: RefCell<[RecentCache; RECENT]> = const { RefCell::new([const { None }; RECENT]) };
}

/// A slot of the recent tables for a command (by address) and a pool.
fn recent_slot(command: usize, pool: PoolKey) -> usize {
    // Static names are at least byte-aligned apart; ids are small.
    ((command >> 2) ^ (pool.id.index().wrapping_mul(0x9e37))) % RECENT
}

/// Error replies with which Redis says it cannot serve now (memory,
/// a busy script, loading, replication, persistence), as opposed to errors
/// about the request itself (wrong type or arity, syntax, unknown command,
/// a script's own error): `backend_error_reply`, the others
/// `client_error_reply`.
const SERVER_CONDITIONS: &[&[u8]] = &[
    b"-OOM ",
    b"-BUSY ",
    b"-LOADING ",
    b"-MASTERDOWN ",
    b"-READONLY ",
    b"-MISCONF ",
    b"-NOREPLICAS ",
    b"-TRYAGAIN ",
    b"-CLUSTERDOWN ",
    b"-ERR max number of clients",
];

/// The `kind` an error reply from a backend counts under.
pub fn error_reply_kind(reply: &[u8]) -> &'static str {
    if SERVER_CONDITIONS.iter().any(|c| reply.starts_with(c)) {
        "backend_error_reply"
    } else {
        "client_error_reply"
    }
}

/// INFO fields of each pool's backend that are levels: (INFO field,
/// family, help).
pub const BACKEND_GAUGES: &[(&str, &str, &str)] = &[
    (
        "used_memory",
        "keyway_backend_memory_used_bytes",
        "Memory the backend uses (INFO used_memory)",
    ),
    (
        "maxmemory",
        "keyway_backend_memory_max_bytes",
        "The backend's maxmemory; 0 is unlimited",
    ),
    (
        "connected_clients",
        "keyway_backend_connected_clients",
        "Clients connected to the backend",
    ),
    (
        "instantaneous_ops_per_sec",
        "keyway_backend_ops_per_second",
        "Commands per second the backend reports",
    ),
    (
        "master_repl_offset",
        "keyway_backend_replication_offset_bytes",
        "The backend's replication offset",
    ),
];

/// INFO fields that are the backend's running totals, exported as counters
/// (a restarted backend's totals start over; keyway's counters go on).
pub const BACKEND_COUNTERS: &[(&str, &str, &str)] = &[
    (
        "evicted_keys",
        "keyway_backend_evicted_keys_total",
        "Keys the backend evicted for maxmemory",
    ),
    (
        "expired_keys",
        "keyway_backend_expired_keys_total",
        "Keys the backend expired",
    ),
    (
        "keyspace_hits",
        "keyway_backend_keyspace_hits_total",
        "Lookups that found a key, on the backend",
    ),
    (
        "keyspace_misses",
        "keyway_backend_keyspace_misses_total",
        "Lookups that found no key, on the backend",
    ),
];

/// Every `kind` of `keyway_errors_total`, exported at zero from the start.
pub const ERROR_KINDS: &[&str] = &[
    "protocol",
    "timeout",
    "connection_lost",
    "backend_unavailable",
    "leases_exhausted",
    "failover_held",
    "backend_error_reply",
    "client_error_reply",
    "readonly_retried",
    "read_retried",
    "client_output_stalled",
    "client_output_limit",
    "tls_handshake",
    "cluster_down",
    "cluster_database",
];

pub struct Metrics {
    /// This instance among the process's, for the thread-local series.
    instance: u64,
    pub registry: Registry,
    pub commands: IntCounterVec,
    pub command_duration: HistogramVec,
    pub backend_duration: HistogramVec,
    pub cache_hits: IntCounterVec,
    pub cache_misses: IntCounterVec,
    pub errors: IntCounterVec,
    pub denials: IntCounterVec,
    pub clients_connected: IntGauge,
    /// What the clients together hold, as counted against
    /// `server.max_client_memory`, and that bound (set when scraped).
    pub client_memory: IntGauge,
    pub client_memory_limit: IntGauge,
    pub clients_total: IntCounter,
    pub clients_rejected: IntCounter,
    pub backend_up: IntGaugeVec,
    pub backend_connections: IntGaugeVec,
    /// The backend's own INFO figures, each family typed as what it is:
    /// gauges for sizes and levels, counters for its running totals.
    pub backend_gauges: Vec<(&'static str, IntGaugeVec)>,
    pub backend_counters: Vec<(&'static str, IntCounterVec)>,
    pub slow_commands: IntCounterVec,
    pub failovers: IntCounterVec,
    pub writes_held: IntCounterVec,
    pub failover_seconds: HistogramVec,
    pub config_reloads: IntCounterVec,
    pub auth_lockouts: IntCounter,
    /// Round trips to a shared limit's pool, by outcome (admitted, limited, error).
    pub shared_limit_calls: IntCounterVec,
    /// Requests a fail-open shared limit judged locally, its pool unreachable.
    pub shared_limit_fallbacks: IntCounterVec,
    /// Cluster pools: redirections followed (moved, ask).
    pub cluster_redirections: IntCounterVec,
    /// Cluster pools: topology reads (ok, error).
    pub cluster_refreshes: IntCounterVec,
    pub cluster_slots_covered: IntGaugeVec,
    pub cluster_masters: IntGaugeVec,
}

/// ~50µs to ~10s: a loopback GET sits in the first buckets, a slow Lua
/// script or a blocked pop in the last.
const LATENCY_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0,
];

fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric definition");
    registry
        .register(Box::new(c.clone()))
        .expect("metric registered once");
    c
}

fn gauge_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric definition");
    registry
        .register(Box::new(g.clone()))
        .expect("metric registered once");
    g
}

fn histogram_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> HistogramVec {
    let h = HistogramVec::new(
        HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec()),
        labels,
    )
    .expect("valid metric definition");
    registry
        .register(Box::new(h.clone()))
        .expect("metric registered once");
    h
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Every family is registered exactly once here, with constant names,
    /// so registration cannot fail at run time.
    pub fn new() -> Metrics {
        let r = Registry::new();
        // process_* (CPU seconds, resident and virtual memory, open and max
        // file descriptors, start time), read from /proc by the library.
        #[cfg(target_os = "linux")]
        let _ = r.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ));
        // keyway_build_info{version} 1: which build each instance runs.
        let build_info = prometheus::IntGaugeVec::new(
            prometheus::Opts::new("keyway_build_info", "The running build, always 1"),
            &["version"],
        )
        .expect("valid");
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        let _ = r.register(Box::new(build_info));
        let clients_connected =
            IntGauge::new("keyway_clients_connected", "Clients connected now").expect("valid");
        let clients_total =
            IntCounter::new("keyway_clients_total", "Clients accepted").expect("valid");
        let clients_rejected = IntCounter::new(
            "keyway_clients_rejected_total",
            "Clients refused (max_clients)",
        )
        .expect("valid");
        let auth_lockouts = IntCounter::new(
            "keyway_auth_lockouts_total",
            "AUTH attempts refused because an address failed too often",
        )
        .expect("valid");
        for m in [&clients_total, &clients_rejected, &auth_lockouts] {
            r.register(Box::new(m.clone())).expect("registered once");
        }
        r.register(Box::new(clients_connected.clone()))
            .expect("registered once");
        let client_memory = IntGauge::new(
            "keyway_client_memory_bytes",
            "Bytes clients make keyway hold (requests being read, replies owed, queued transactions), counted once a client holds 64 KiB",
        )
        .expect("valid");
        let client_memory_limit = IntGauge::new(
            "keyway_client_memory_limit_bytes",
            "server.max_client_memory: past it the client holding the most is closed (0: no bound)",
        )
        .expect("valid");
        for m in [&client_memory, &client_memory_limit] {
            r.register(Box::new(m.clone())).expect("registered once");
        }
        // Never 0 and never given twice.
        static INSTANCES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        Metrics {
            instance: INSTANCES.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            cluster_redirections: counter_vec(
                &r,
                "keyway_cluster_redirections_total",
                "Cluster redirections keyway followed for its clients",
                &["pool", "kind"],
            ),
            cluster_refreshes: counter_vec(
                &r,
                "keyway_cluster_topology_refreshes_total",
                "Cluster topology reads, by outcome",
                &["pool", "outcome"],
            ),
            cluster_slots_covered: gauge_vec(
                &r,
                "keyway_cluster_slots_covered",
                "Hash slots a master serves, of 16384",
                &["pool"],
            ),
            cluster_masters: gauge_vec(
                &r,
                "keyway_cluster_masters",
                "Masters in the cluster's current map",
                &["pool"],
            ),
            commands: counter_vec(
                &r,
                "keyway_commands_total",
                "Commands answered",
                &["command", "pool", "outcome"],
            ),
            command_duration: histogram_vec(
                &r,
                "keyway_command_duration_seconds",
                "From the request parsed to its reply ready",
                &["command", "pool"],
            ),
            backend_duration: histogram_vec(
                &r,
                "keyway_backend_duration_seconds",
                "Backend round trip of forwarded requests",
                &["pool"],
            ),
            cache_hits: counter_vec(
                &r,
                "keyway_cache_hits_total",
                "Reads that found a value",
                &["pool", "route"],
            ),
            cache_misses: counter_vec(
                &r,
                "keyway_cache_misses_total",
                "Reads that found nil",
                &["pool", "route"],
            ),
            errors: counter_vec(&r, "keyway_errors_total", "Errors by kind", &["kind"]),
            denials: counter_vec(
                &r,
                "keyway_denials_total",
                "Requests refused by keyway",
                &["reason", "detail"],
            ),
            backend_up: gauge_vec(
                &r,
                "keyway_backend_up",
                "1 when the pool's backend answers",
                &["pool"],
            ),
            backend_connections: gauge_vec(
                &r,
                "keyway_backend_connections",
                "Backend connections by state",
                &["pool", "state"],
            ),
            backend_gauges: BACKEND_GAUGES
                .iter()
                .map(|&(field, name, help)| (field, gauge_vec(&r, name, help, &["pool"])))
                .collect(),
            backend_counters: BACKEND_COUNTERS
                .iter()
                .map(|&(field, name, help)| (field, counter_vec(&r, name, help, &["pool"])))
                .collect(),
            shared_limit_calls: counter_vec(
                &r,
                "keyway_shared_limit_calls_total",
                "Round trips to a shared rate limit's pool",
                &["limit", "outcome"],
            ),
            shared_limit_fallbacks: counter_vec(
                &r,
                "keyway_shared_limit_fallbacks_total",
                "Requests judged by the local limit because the shared pool did not answer",
                &["limit"],
            ),
            slow_commands: counter_vec(
                &r,
                "keyway_slow_commands_total",
                "Commands over the slow log threshold",
                &["pool"],
            ),
            failovers: counter_vec(
                &r,
                "keyway_failovers_total",
                "Master changes followed",
                &["pool"],
            ),
            writes_held: counter_vec(
                &r,
                "keyway_failover_writes_held_total",
                "Writes held while Sentinel moved the pool's master",
                &["pool"],
            ),
            failover_seconds: histogram_vec(
                &r,
                "keyway_failover_duration_seconds",
                "From the sentinel's switch event to writes served on the new master",
                &["pool"],
            ),
            config_reloads: counter_vec(
                &r,
                "keyway_config_reloads_total",
                "Configuration reloads",
                &["result"],
            ),
            clients_connected,
            client_memory,
            client_memory_limit,
            clients_total,
            clients_rejected,
            auth_lockouts,
            registry: r,
        }
    }

    /// Exports at zero every series whose labels are known before its first
    /// event (error kinds, reload results, per-pool counters), so that
    /// `increase()` and `changes()` see the first event: a series that
    /// appears with 1 looks to Prometheus like no change at all.
    /// The series a cluster pool's map and redirections update.
    pub fn cluster(&self, pool: &str) -> crate::cluster::ClusterMetrics {
        crate::cluster::ClusterMetrics {
            moved: self
                .cluster_redirections
                .with_label_values(&[pool, "moved"]),
            ask: self.cluster_redirections.with_label_values(&[pool, "ask"]),
            refreshed: self.cluster_refreshes.with_label_values(&[pool, "ok"]),
            refresh_failed: self.cluster_refreshes.with_label_values(&[pool, "error"]),
            covered: self.cluster_slots_covered.with_label_values(&[pool]),
            masters: self.cluster_masters.with_label_values(&[pool]),
        }
    }

    pub fn export_known(&self, pools: &[&str], limits: &[&str]) {
        for kind in ERROR_KINDS {
            self.errors.with_label_values(&[kind]);
        }
        for detail in ["noauth", "wrongpass", "lockout"] {
            self.denials.with_label_values(&["auth", detail]);
        }
        for limit in limits {
            self.denials.with_label_values(&["ratelimit", limit]);
        }
        for result in ["ok", "error"] {
            self.config_reloads.with_label_values(&[result]);
        }
        for pool in pools {
            self.slow_commands.with_label_values(&[pool]);
            self.failovers.with_label_values(&[pool]);
            self.writes_held.with_label_values(&[pool]);
        }
    }

    /// Every family, with what this thread recorded added first.
    pub fn gather(&self) -> Vec<prometheus::proto::MetricFamily> {
        flush_thread_local();
        self.registry.gather()
    }

    /// The Prometheus text exposition of every family.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&self.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }

    /// Cache hits and misses over every pool and route (for INFO).
    pub fn cache_totals(&self) -> (u64, u64) {
        let families = self.gather();
        let sum = |family: &str| -> u64 {
            families
                .iter()
                .filter(|mf| mf.name() == family)
                .flat_map(|mf| {
                    mf.get_metric()
                        .iter()
                        .map(|m| m.get_counter().get_value() as u64)
                })
                .sum()
        };
        (
            sum("keyway_cache_hits_total"),
            sum("keyway_cache_misses_total"),
        )
    }

    /// Counts one answered command and observes its duration. The series
    /// handles are looked up once per command and pool on each thread and
    /// kept there, so the hot path does not hash label strings each time.
    ///
    /// Recorded into this thread's local series, added to the shared ones
    /// by `flush_thread_local` (see `CommandSeries`).
    pub fn record_command(&self, command: &'static str, pool: &str, error: bool, seconds: f64) {
        record_into(&self.command_series(command, pool), error, seconds);
    }

    /// `record_command` for a reply of a known pool (`pool` is its name):
    /// the series is most often found in the recent table by its key.
    pub fn record_reply(
        &self,
        command: &'static str,
        pool: PoolKey,
        name: &str,
        error: bool,
        seconds: f64,
    ) {
        let key = (
            self.instance,
            command.as_ptr() as usize,
            command.len(),
            pool,
        );
        RECENT_COMMANDS.with(|recent| {
            let mut recent = recent.borrow_mut();
            let entry = &mut recent[recent_slot(key.1, pool)];
            match entry {
                Some((k, series)) if *k == key => record_into(series, error, seconds),
                _ => {
                    let series = self.command_series(command, name);
                    record_into(&series, error, seconds);
                    *entry = Some((key, series));
                }
            }
        });
    }

    /// This thread's series of `command` on the pool named `pool`.
    fn command_series(&self, command: &'static str, pool: &str) -> Rc<CommandSeries> {
        COMMAND_SERIES.with(|cache| {
            let mut cache = cache.borrow_mut();
            let key = (self.instance, command.as_ptr() as usize, command.len());
            let per_pool = cache.entry(key).or_default();
            if let Some((_, series)) = per_pool.iter().find(|(name, _)| name.as_ref() == pool) {
                return Rc::clone(series);
            }
            let series = Rc::new(CommandSeries {
                ok: self
                    .commands
                    .with_label_values(&[command, pool, "ok"])
                    .local(),
                error: self
                    .commands
                    .with_label_values(&[command, pool, "error"])
                    .local(),
                duration: self
                    .command_duration
                    .with_label_values(&[command, pool])
                    .local(),
                dirty: std::cell::Cell::new(false),
            });
            per_pool.push((pool.into(), Rc::clone(&series)));
            series
        })
    }

    /// Counts cache hits and misses of a pool and route rule; `route_label`
    /// names the rule the first time a thread sees it in a generation.
    pub fn record_cache(
        &self,
        pool: &str,
        key: Option<PoolKey>,
        route: (u64, Option<usize>),
        route_label: impl FnOnce() -> String,
        hits: u64,
        misses: u64,
    ) {
        let count = |series: &CacheSeries| {
            if hits > 0 {
                series.hits.inc_by(hits);
            }
            if misses > 0 {
                series.misses.inc_by(misses);
            }
        };
        // The route's generation is the pool key's: one configuration.
        let Some(pool_key) = key.filter(|k| k.generation == route.0) else {
            return count(&self.cache_series(pool, route, route_label));
        };
        let key = (self.instance, route.1, pool_key);
        RECENT_CACHE.with(|recent| {
            let mut recent = recent.borrow_mut();
            let slot = recent_slot(route.1.map_or(usize::MAX, |r| r << 3), pool_key);
            let entry = &mut recent[slot];
            match entry {
                Some((k, series)) if *k == key => count(series),
                _ => {
                    let series = self.cache_series(pool, route, route_label);
                    count(&series);
                    *entry = Some((key, series));
                }
            }
        });
    }

    fn cache_series(
        &self,
        pool: &str,
        route: (u64, Option<usize>),
        route_label: impl FnOnce() -> String,
    ) -> CacheSeries {
        CACHE_SERIES.with(|cache| {
            let mut cache = cache.borrow_mut();
            let per_pool = cache.entry((self.instance, route.0, route.1)).or_default();
            if let Some((_, series)) = per_pool.iter().find(|(name, _)| name.as_ref() == pool) {
                return series.clone();
            }
            let label = route_label();
            let series = CacheSeries {
                hits: self.cache_hits.with_label_values(&[pool, &label]),
                misses: self.cache_misses.with_label_values(&[pool, &label]),
            };
            per_pool.push((pool.into(), series.clone()));
            series
        })
    }

    pub fn deny(&self, reason: &str, detail: &str) {
        self.denials.with_label_values(&[reason, detail]).inc();
    }
}

/// Adds what this thread recorded since the last call to the shared
/// series (what `/metrics` shows). Cheap when nothing was recorded.
pub fn flush_thread_local() {
    UNFLUSHED.with(|unflushed| {
        let mut unflushed = unflushed.borrow_mut();
        if unflushed.is_empty() {
            return;
        }
        for series in unflushed.drain(..) {
            series.ok.flush();
            series.error.flush();
            series.duration.flush();
            series.dirty.set(false);
        }
    });
}

/// Counts a reply into a thread's series and lists the series for the
/// next flush the first time since the last one.
fn record_into(series: &Rc<CommandSeries>, error: bool, seconds: f64) {
    if error {
        series.error.inc();
    } else {
        series.ok.inc();
    }
    series.duration.observe(seconds);
    if !series.dirty.replace(true) {
        UNFLUSHED.with(|u| u.borrow_mut().push(Rc::clone(series)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_instances_on_one_thread_count_apart() {
        let (one, two) = (Metrics::new(), Metrics::new());
        one.record_command("get", "cache", false, 0.001);
        two.record_command("get", "cache", false, 0.001);
        two.record_command("get", "cache", true, 0.001);
        flush_thread_local();
        let count = |m: &Metrics, outcome: &str| {
            m.commands
                .with_label_values(&["get", "cache", outcome])
                .get()
        };
        assert_eq!((count(&one, "ok"), count(&one, "error")), (1, 0));
        assert_eq!((count(&two, "ok"), count(&two, "error")), (1, 1));
    }

    #[test]
    fn replies_found_by_pool_key_count_under_the_name_of_their_generation() {
        let m = Metrics::new();
        let key = |generation| PoolKey {
            generation,
            id: PoolId::configured(0),
        };
        // The same id named differently by two configurations, and more
        // commands than the recent table has slots (collisions).
        let commands: Vec<&'static str> = (0..3 * RECENT)
            .map(|i| &*Box::leak(format!("command{i}").into_boxed_str()))
            .collect();
        for _ in 0..3 {
            m.record_reply("get", key(1), "cache", false, 0.001);
            m.record_reply("get", key(2), "session", true, 0.001);
            for command in &commands {
                m.record_reply(command, key(1), "cache", false, 0.001);
            }
        }
        flush_thread_local();
        let count = |command: &str, pool: &str, outcome: &str| {
            m.commands
                .with_label_values(&[command, pool, outcome])
                .get()
        };
        assert_eq!(count("get", "cache", "ok"), 3);
        assert_eq!(count("get", "session", "error"), 3);
        assert_eq!(count("get", "session", "ok"), 0);
        for command in &commands {
            assert_eq!(count(command, "cache", "ok"), 3, "{command}");
        }
    }
}
