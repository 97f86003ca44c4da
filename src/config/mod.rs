//! The configuration: `conf/keyway.toml` (serde), environment overrides
//! (`KEYWAY_*`, applications' `REDIS_<POOL>_URL`), and validation that names the
//! bad field. A `Config` that exists is valid; keyway never starts half-set.

mod addr;
mod url;

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use thiserror::Error;

pub use addr::Addr;
pub use url::{parse_backend_url, parse_url, BackendTls, BackendUrl, Endpoint, SentinelSpec};

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: String, message: String },
    /// `field` is the dotted path of the bad value, or the env variable.
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field: field.into(),
        message: message.into(),
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    #[serde(default)]
    pub server: ServerConfig,
    #[serde(default)]
    pub backend: BackendConfig,
    pub pools: BTreeMap<String, PoolConfig>,
    pub routes: RoutesConfig,
    #[serde(default)]
    pub auth: AuthConfig,
    #[serde(default)]
    pub policy: PolicyConfig,
    #[serde(default)]
    pub limits: Vec<LimitConfig>,
    pub tls: Option<TlsConfig>,
}

/// A TLS listener for clients (`redis-cli --tls`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// Where TLS clients connect (`KEYWAY_TLS_LISTEN`).
    pub listen: String,
    pub cert_file: String,
    pub key_file: String,
    /// When set, clients must present a certificate signed by this CA.
    pub client_ca_file: Option<String>,
    /// Serve TLS only: no plain listener.
    #[serde(default)]
    pub disable_plain: bool,
}

/// Client authentication. With no password and no users, clients need no
/// AUTH (like a Redis without requirepass). Secrets never sit inline: they
/// come from an environment variable or a file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// A file holding the `requirepass`-style password of user `default`
    /// (`KEYWAY_REQUIREPASS` in the environment takes precedence).
    pub requirepass_file: Option<String>,
    /// Failed AUTH attempts allowed per user name and client IP per minute
    /// before that user is locked out from that address (each lock in a row
    /// twice as long, up to 5 minutes). Ten times as many failures for one
    /// user across all addresses lock out the addresses it has not yet
    /// authenticated from.
    pub max_failures_per_minute: u32,
    pub users: Vec<UserConfig>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            requirepass_file: None,
            max_failures_per_minute: 10,
            users: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    pub name: String,
    pub password_env: Option<String>,
    pub password_file: Option<String>,
    /// Key prefixes this user may touch; `"*"` (the default) is every key.
    #[serde(default = "all_prefixes")]
    pub prefixes: Vec<String>,
    /// Refuse every command Redis flags as a write.
    #[serde(default)]
    pub read_only: bool,
    /// ACL categories allowed (`read`, `string`, `pubsub` ...); empty is all.
    #[serde(default)]
    pub categories: Vec<String>,
    /// Blocklist entries lifted for this user (`"CONFIG GET"`).
    #[serde(default)]
    pub allow: Vec<String>,
    /// Extra blocklist entries for this user (`"EVAL"`, `"SCRIPT"`).
    #[serde(default)]
    pub block: Vec<String>,
    /// Lets a user limited to key prefixes run scripts and functions
    /// (EVAL, EVALSHA, FCALL and their _RO forms). A script can reach any
    /// key the backend holds, whatever keys it declares.
    #[serde(default)]
    pub allow_scripts: bool,
    /// Sees and acts on every tenant's clients (CLIENT LIST/KILL); other
    /// users see only the clients of their own user.
    #[serde(default)]
    pub admin: bool,
    #[serde(default = "enabled")]
    pub enabled: bool,
}

fn all_prefixes() -> Vec<String> {
    vec!["*".to_string()]
}

fn enabled() -> bool {
    true
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyConfig {
    /// Commands (`"KEYS"`) or subcommands (`"CONFIG SET"`) never forwarded,
    /// for every client, on top of the server-wide commands (`@admin`) that
    /// are always refused; aliases (SLAVEOF/REPLICAOF) included.
    pub blocklist: Vec<String>,
    /// Entries lifted for every client: server-wide commands
    /// (`"FLUSHALL"`, `"CONFIG GET"`, or `"@admin"` for all of them).
    pub allow: Vec<String>,
}

/// One rate limit (GCRA): `rate` per second with `burst`, counted per key
/// of its `scope`. Every limit that applies to a request must admit it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitConfig {
    pub name: String,
    pub scope: LimitScope,
    pub rate: f64,
    pub burst: u32,
    /// Only these commands count against the limit (all when empty).
    #[serde(default)]
    pub commands: Vec<String>,
    /// For `scope = "pool"`: only this pool (all pools, each on its own, when unset).
    pub pool: Option<String>,
    #[serde(default)]
    pub action: LimitAction,
    /// With `action = "delay"`: the longest a request waits for a slot.
    #[serde(default = "default_max_delay")]
    pub max_delay_ms: u64,
    /// One limit for every keyway with this configuration: its state is
    /// kept in `shared_pool`, decided there by a script.
    #[serde(default)]
    pub shared: bool,
    #[serde(default = "default_shared_pool")]
    pub shared_pool: String,
    /// Permits a keyway takes from the shared limit per round trip (1: one
    /// round trip per request); see the README for what batching costs.
    #[serde(default = "default_shared_batch")]
    pub shared_batch: u32,
    /// When the shared pool cannot answer: `open` falls back to this
    /// keyway's own limit, `closed` refuses the request.
    #[serde(default)]
    pub shared_failure: SharedFailure,
}

fn default_max_delay() -> u64 {
    100
}

fn default_shared_pool() -> String {
    "realtime".to_string()
}

fn default_shared_batch() -> u32 {
    1
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SharedFailure {
    /// Fall back to the local limit (a metric and a warning say so).
    #[default]
    Open,
    /// Refuse: `-ERR rate limit unavailable`.
    Closed,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LimitScope {
    Ip,
    User,
    Pool,
    Command,
    Global,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LimitAction {
    #[default]
    Reject,
    Delay,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    pub listen: String,
    pub admin: String,
    /// Databases a client may SELECT (0..databases), like Redis's `databases`.
    pub databases: u32,
    pub max_clients: usize,
    /// Largest single argument, like Redis's `proto-max-bulk-len`.
    pub max_bulk_bytes: usize,
    /// Requests of one client read but not yet answered; beyond it keyway stops reading.
    pub max_pipeline: usize,
    /// How often each pool's backend is probed with INFO (readiness, gauges).
    pub health_interval_ms: u64,
    /// Commands slower than this go to keyway's slow log (1 s in the reference deployment).
    pub slowlog_threshold_ms: u64,
    pub slowlog_max_len: usize,
    /// Close clients idle this long (0: never, like Redis's `timeout 0`).
    /// Subscribers and clients in a transaction are exempt.
    pub idle_timeout_secs: u64,
    /// TCP keepalive probes on client connections (0: off).
    pub tcp_keepalive_secs: u64,
    /// On SIGTERM, how long in-flight requests may take before the
    /// remaining clients are closed.
    pub drain_timeout_ms: u64,
    /// An optional Unix-socket listener (the usual way into a sidecar).
    pub unix_socket: Option<String>,
    /// Unwritten reply bytes per client above which keyway stops reading it.
    pub client_output_limit_bytes: usize,
    /// A client kept above that limit this long is disconnected.
    pub client_output_stall_secs: u64,
    /// Bytes of commands one client may have queued between MULTI and EXEC
    /// (keyway holds them until EXEC); the command that would pass it is
    /// refused and the transaction aborted.
    pub max_transaction_bytes: usize,
    /// Bytes all clients together may make keyway hold (partly read
    /// requests, replies owed, queued transactions); past it the client
    /// holding the most is closed. Unset: the container's memory limit less
    /// 64 MiB (at least half of it), else half the machine's memory. 0: no bound.
    pub max_client_memory: Option<usize>,
    /// Per-command metrics (counts, latency, hit/miss); off only to measure
    /// what they cost.
    pub metrics: bool,
    /// Event-loop threads. One (the default, like Redis and twemproxy) avoids
    /// cross-thread wake-ups on every request; more help only with many
    /// cores and many busy clients.
    pub worker_threads: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: "127.0.0.1:6390".into(),
            admin: "127.0.0.1:9390".into(),
            databases: 16,
            max_clients: 10_000,
            max_bulk_bytes: 512 * 1024 * 1024,
            max_pipeline: 4096,
            health_interval_ms: 1000,
            slowlog_threshold_ms: 1000,
            slowlog_max_len: 128,
            idle_timeout_secs: 0,
            tcp_keepalive_secs: 300,
            drain_timeout_ms: 10_000,
            unix_socket: None,
            client_output_limit_bytes: 64 * 1024 * 1024,
            client_output_stall_secs: 10,
            max_transaction_bytes: 64 * 1024 * 1024,
            max_client_memory: None,
            metrics: true,
            worker_threads: 1,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BackendConfig {
    pub connect_timeout_ms: u64,
    /// Multiplexed connections per pool, database and protocol version.
    pub connections: usize,
    pub backoff_min_ms: u64,
    pub backoff_max_ms: u64,
    /// Connections a pool may lease to single clients at once (transactions
    /// with WATCH, blocking commands, subscriptions).
    pub max_dedicated: usize,
    /// With several users configured, the leases one user may keep at once
    /// (subscriptions, blocking, WATCH); unset: half of those `max_dedicated`
    /// leaves them (56 of 128).
    pub max_dedicated_per_user: Option<usize>,
    /// How often Sentinel pools re-check their master besides the events.
    pub sentinel_poll_ms: u64,
    /// Retry a read once on the new master when its connection broke in a
    /// failover (writes are never retried blindly).
    pub retry_reads: bool,
    /// A forwarded request unanswered this long fails with a timeout
    /// error (0: no limit). Blocking commands are exempt.
    pub request_timeout_ms: u64,
    /// How often cluster pools read their topology again besides on
    /// MOVED and connection failures.
    pub cluster_refresh_ms: u64,
}

impl Default for BackendConfig {
    fn default() -> Self {
        BackendConfig {
            connect_timeout_ms: 1000,
            connections: 2,
            backoff_min_ms: 50,
            backoff_max_ms: 1000,
            max_dedicated: 128,
            max_dedicated_per_user: None,
            sentinel_poll_ms: 1000,
            retry_reads: true,
            request_timeout_ms: 10_000,
            cluster_refresh_ms: 5_000,
        }
    }
}

impl BackendConfig {
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolConfig {
    pub url: String,
    /// Credentials for the sentinels themselves (a `redis+sentinel://`
    /// URL's user:pass are the data nodes').
    pub sentinel_username: Option<String>,
    pub sentinel_password_env: Option<String>,
    pub sentinel_password_file: Option<String>,
    /// For `rediss://`: the CA to verify the server with (public roots when unset).
    pub tls_ca_file: Option<String>,
    /// For `rediss://`: the name to verify and send as SNI.
    pub tls_server_name: Option<String>,
    /// Sentinel pools: send read-only commands to a healthy replica.
    #[serde(default)]
    pub replica_reads: bool,
    /// A replica whose link to the master is down or silent longer than
    /// this is not read from.
    #[serde(default = "default_replica_lag")]
    pub max_replica_lag_secs: u64,
    /// Whether `/readyz` fails while this pool is down. An application
    /// that can go on without it (a cache it can miss) marks it false, so
    /// one pool down does not take the whole pod out of its Service.
    #[serde(default = "required")]
    pub required: bool,
}

fn default_replica_lag() -> u64 {
    5
}

fn required() -> bool {
    true
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoutesConfig {
    pub default: String,
    #[serde(default)]
    pub prefixes: Vec<PrefixRule>,
    #[serde(default)]
    pub commands: Vec<CommandRule>,
    #[serde(default)]
    pub databases: Vec<DbRule>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrefixRule {
    pub prefix: String,
    pub pool: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandRule {
    /// A command name, or a family ending in `*` (`FT.*`).
    pub command: String,
    pub pool: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DbRule {
    pub db: u32,
    pub pool: String,
}

/// A validated configuration: listen addresses parsed, pool URLs resolved,
/// every route naming a known pool.
#[derive(Debug, Clone)]
pub struct Config {
    pub source: String,
    pub listen: SocketAddr,
    pub admin: SocketAddr,
    pub log_filter: Option<String>,
    pub server: ServerConfig,
    pub backend: BackendConfig,
    /// Pools in name order, each with its `PoolId`.
    pub pools: Vec<Pool>,
    /// The id the next pool new to the running process gets: ids are never
    /// given twice, so a removed pool's id never names another pool.
    pub next_pool_id: u32,
    pub routes: RoutesConfig,
    pub policy: PolicyConfig,
    pub limits: Vec<LimitConfig>,
    pub auth: AuthConfig,
    pub tls: Option<TlsConfig>,
    /// The TLS listener's address, when TLS is configured.
    pub tls_listen: Option<SocketAddr>,
    /// Resolved passwords: `default` (requirepass) and named users.
    pub passwords: BTreeMap<String, Secret>,
}

/// A Sentinel-managed pool: which master, which sentinels, and the
/// sentinels' own credentials.
#[derive(Clone, PartialEq, Eq)]
pub struct SentinelConfig {
    pub spec: SentinelSpec,
    pub username: Option<String>,
    pub password: Option<String>,
}

impl std::fmt::Debug for SentinelConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "SentinelConfig({:?}, user {:?}, password ***)",
            self.spec, self.username
        )
    }
}

impl SentinelConfig {
    /// An endpoint for talking to one sentinel with its credentials.
    pub fn sentinel_endpoint(&self, sentinel: &Addr) -> Endpoint {
        Endpoint {
            addr: Some(sentinel.clone()),
            username: self.username.clone(),
            password: self.password.clone(),
            db: 0,
            tls: None,
            readonly: false,
        }
    }
}

/// A password read from the environment or a file; never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub Vec<u8>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

#[derive(Debug, Clone)]
pub struct Pool {
    /// Its identity: given when a pool of this name first appears and kept
    /// by every reload (`keep_pool_ids`).
    pub id: PoolId,
    pub name: String,
    /// For a Sentinel pool: credentials and db, no address until discovered.
    pub endpoint: Endpoint,
    pub sentinel: Option<SentinelConfig>,
    /// Some(max lag in seconds) when reads may go to a replica.
    pub replica_reads: Option<u64>,
    /// A Redis Cluster pool: its seed nodes.
    pub cluster: Option<Vec<Addr>>,
    /// Where the endpoint came from: the file field or the env variable.
    pub origin: String,
    /// `/readyz` fails while it is down.
    pub required: bool,
}

impl Config {
    /// Reads the file and applies the process environment.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Self::load_with_env(path, |k| std::env::var(k).ok())
    }

    pub fn load_with_env(
        path: &Path,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_toml(&text, &path.display().to_string(), env)
    }

    pub fn from_toml(
        text: &str,
        source: &str,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let file: FileConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: source.to_string(),
            message: e.to_string().trim_end().replace('\n', " "),
        })?;
        Self::validate(file, source, env)
    }

    fn validate(
        mut file: FileConfig,
        source: &str,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let mut listen_field = "server.listen";
        if let Some(l) = env("KEYWAY_LISTEN") {
            file.server.listen = l;
            listen_field = "KEYWAY_LISTEN";
        }
        let mut admin_field = "server.admin";
        if let Some(a) = env("KEYWAY_ADMIN") {
            file.server.admin = a;
            admin_field = "KEYWAY_ADMIN";
        }
        let listen = parse_socket_addr(listen_field, &file.server.listen)?;
        let admin = parse_socket_addr(admin_field, &file.server.admin)?;
        if file.server.databases == 0 {
            return Err(invalid("server.databases", "must be at least 1"));
        }
        if file.server.max_pipeline == 0 {
            return Err(invalid("server.max_pipeline", "must be at least 1"));
        }
        if file.backend.connections == 0 {
            return Err(invalid("backend.connections", "must be at least 1"));
        }
        if file.backend.connect_timeout_ms == 0 {
            return Err(invalid("backend.connect_timeout_ms", "must be at least 1"));
        }

        if file.pools.is_empty() {
            return Err(invalid("pools", "at least one pool is required"));
        }
        let mut pools = Vec::with_capacity(file.pools.len());
        for (name, pool) in &file.pools {
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            {
                return Err(invalid(
                    format!("pools.{name}"),
                    "pool names use letters, digits, '_' and '-'",
                ));
            }
            let env_name = pool_url_env(name);
            let (url, origin) = match env(&env_name) {
                Some(url) => (url, env_name),
                None => (pool.url.clone(), format!("pools.{name}.url")),
            };
            let mut parsed = parse_backend_url(&url).map_err(|m| invalid(&origin, m))?;
            if let Some(tls) = parsed.endpoint.tls.as_mut() {
                if let Some(ca) = &pool.tls_ca_file {
                    if !Path::new(ca).is_file() {
                        return Err(invalid(
                            format!("pools.{name}.tls_ca_file"),
                            format!("'{ca}' is not a readable file"),
                        ));
                    }
                    tls.ca_file = Some(ca.clone());
                }
                tls.server_name = pool.tls_server_name.clone();
            }
            let sentinel = match parsed.sentinel {
                None => None,
                Some(spec) => {
                    let field = format!("pools.{name}");
                    let password = match (&pool.sentinel_password_env, &pool.sentinel_password_file)
                    {
                        (Some(var), _) if env(var).is_some() => env(var),
                        (Some(var), None) => {
                            return Err(invalid(
                                format!("{field}.sentinel_password_env"),
                                format!("environment variable {var} is not set"),
                            ))
                        }
                        (_, Some(path)) => Some(
                            String::from_utf8_lossy(
                                &read_secret_file(
                                    &format!("{field}.sentinel_password_file"),
                                    path,
                                )?
                                .0,
                            )
                            .into_owned(),
                        ),
                        (None, None) => None,
                    };
                    Some(SentinelConfig {
                        spec,
                        username: pool.sentinel_username.clone(),
                        password,
                    })
                }
            };
            if pool.replica_reads && sentinel.is_none() && parsed.cluster.is_none() {
                return Err(invalid(
                    format!("pools.{name}.replica_reads"),
                    "replica reads need a redis+sentinel:// or redis+cluster:// pool (replicas are found through Sentinel or the cluster)",
                ));
            }
            pools.push(Pool {
                id: PoolId::configured(pools.len() as u32),
                name: name.clone(),
                endpoint: parsed.endpoint,
                sentinel,
                replica_reads: pool.replica_reads.then_some(pool.max_replica_lag_secs),
                cluster: parsed.cluster,
                origin,
                required: pool.required,
            });
        }

        let known = |field: String, pool: &str| -> Result<(), ConfigError> {
            if file.pools.contains_key(pool) {
                Ok(())
            } else {
                let names: Vec<&str> = file.pools.keys().map(String::as_str).collect();
                Err(invalid(
                    field,
                    format!("unknown pool '{pool}' (pools are: {})", names.join(", ")),
                ))
            }
        };
        let routes = &file.routes;
        known("routes.default".into(), &routes.default)?;
        let mut seen = HashSet::new();
        for (i, rule) in routes.prefixes.iter().enumerate() {
            let field = format!("routes.prefixes[{i}]");
            known(format!("{field}.pool"), &rule.pool)?;
            if rule.prefix.is_empty() {
                return Err(invalid(
                    format!("{field}.prefix"),
                    "an empty prefix would match every key; use routes.default",
                ));
            }
            if !seen.insert(rule.prefix.as_str()) {
                return Err(invalid(
                    format!("{field}.prefix"),
                    format!("duplicate prefix '{}'", rule.prefix),
                ));
            }
        }
        let mut seen = HashSet::new();
        for (i, rule) in routes.commands.iter().enumerate() {
            let field = format!("routes.commands[{i}]");
            known(format!("{field}.pool"), &rule.pool)?;
            let pattern = rule.command.to_ascii_lowercase();
            let body = pattern.strip_suffix('*').unwrap_or(&pattern);
            if body.is_empty() || body.contains('*') {
                return Err(invalid(
                    format!("{field}.command"),
                    "a command name, or a prefix ending in one '*' (\"FT.*\")",
                ));
            }
            if !seen.insert(pattern.clone()) {
                return Err(invalid(
                    format!("{field}.command"),
                    format!("duplicate command rule '{}'", rule.command),
                ));
            }
        }
        let mut seen = HashSet::new();
        for (i, rule) in routes.databases.iter().enumerate() {
            let field = format!("routes.databases[{i}]");
            known(format!("{field}.pool"), &rule.pool)?;
            if rule.db >= file.server.databases {
                return Err(invalid(
                    format!("{field}.db"),
                    format!(
                        "db {} is out of range (server.databases = {})",
                        rule.db, file.server.databases
                    ),
                ));
            }
            if !seen.insert(rule.db) {
                return Err(invalid(
                    format!("{field}.db"),
                    format!("duplicate db rule {}", rule.db),
                ));
            }
        }

        let passwords = resolve_passwords(&file.auth, &env)?;
        if let Some(tls) = file.tls.as_mut() {
            if let Some(l) = env("KEYWAY_TLS_LISTEN") {
                tls.listen = l;
            }
        }
        let tls_listen = match &file.tls {
            Some(tls) => {
                let addr = parse_socket_addr("tls.listen", &tls.listen)?;
                for (field, path) in [
                    ("tls.cert_file", Some(&tls.cert_file)),
                    ("tls.key_file", Some(&tls.key_file)),
                    ("tls.client_ca_file", tls.client_ca_file.as_ref()),
                ] {
                    if let Some(path) = path {
                        if !std::path::Path::new(path).is_file() {
                            return Err(invalid(field, format!("'{path}' is not a readable file")));
                        }
                    }
                }
                Some(addr)
            }
            None => None,
        };
        validate_policy(&file)?;

        Ok(Config {
            tls: file.tls,
            tls_listen,
            policy: file.policy,
            limits: file.limits,
            auth: file.auth,
            passwords,
            source: source.to_string(),
            listen,
            admin,
            log_filter: env("KEYWAY_LOG"),
            server: file.server,
            backend: file.backend,
            next_pool_id: pools.len() as u32,
            pools,
            routes: file.routes,
        })
    }

    /// The id of the pool of this name.
    pub fn pool_id(&self, name: &str) -> Option<PoolId> {
        self.pools.iter().find(|p| p.name == name).map(|p| p.id)
    }

    /// The pool of this id.
    pub fn pool(&self, id: PoolId) -> Option<&Pool> {
        self.pools.iter().find(|p| p.id == id)
    }

    /// A reloaded configuration's pools take the ids their names have in
    /// the running one; pools new to the process get ids never used before.
    pub fn keep_pool_ids(&mut self, running: &Config) {
        let mut next = running.next_pool_id;
        for pool in &mut self.pools {
            pool.id = match running.pool_id(&pool.name) {
                Some(id) => id,
                None => {
                    next += 1;
                    PoolId::configured(next - 1)
                }
            };
        }
        self.next_pool_id = next;
    }
}

/// A pool's identity, independent of the configuration's order: what
/// outlives a request (a retry, a lease, a pub/sub link, a reply's metric
/// label) names its pool by id, and a reload that adds or removes other
/// pools does not change it. A pool with replica reads has a replica pool,
/// whose id is derived from its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PoolId(u32);

impl PoolId {
    /// The `n`th configured pool ever seen by the process.
    pub const fn configured(n: u32) -> PoolId {
        PoolId(n * 2)
    }

    /// The id of this pool's replica pool.
    pub const fn replica(self) -> PoolId {
        PoolId(self.0 | 1)
    }

    pub const fn is_replica(self) -> bool {
        self.0 & 1 == 1
    }

    /// Where it sits in tables indexed by pool (dense enough: ids are given
    /// in order and never reused, and pools are few).
    pub const fn index(self) -> usize {
        self.0 as usize
    }
}

impl std::fmt::Display for PoolId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "#{}", self.0)
    }
}

fn read_secret_file(field: &str, path: &str) -> Result<Secret, ConfigError> {
    let text =
        std::fs::read(path).map_err(|e| invalid(field, format!("cannot read '{path}': {e}")))?;
    let trimmed = text.strip_suffix(b"\n").unwrap_or(&text);
    let trimmed = trimmed.strip_suffix(b"\r").unwrap_or(trimmed);
    if trimmed.is_empty() {
        return Err(invalid(field, format!("'{path}' is empty")));
    }
    Ok(Secret(trimmed.to_vec()))
}

fn resolve_passwords(
    auth: &AuthConfig,
    env: &impl Fn(&str) -> Option<String>,
) -> Result<BTreeMap<String, Secret>, ConfigError> {
    let mut out = BTreeMap::new();
    if let Some(p) = env("KEYWAY_REQUIREPASS").filter(|p| !p.is_empty()) {
        out.insert("default".to_string(), Secret(p.into_bytes()));
    } else if let Some(path) = &auth.requirepass_file {
        out.insert(
            "default".to_string(),
            read_secret_file("auth.requirepass_file", path)?,
        );
    }
    for (i, user) in auth.users.iter().enumerate() {
        let field = format!("auth.users[{i}]");
        if user.name.is_empty() || user.name.contains(char::is_whitespace) {
            return Err(invalid(
                format!("{field}.name"),
                "a user name without spaces is required",
            ));
        }
        if out.contains_key(&user.name) && !(user.name == "default" && out.len() == 1 && i == 0) {
            return Err(invalid(
                format!("{field}.name"),
                format!("duplicate user '{}'", user.name),
            ));
        }
        let secret = match (&user.password_env, &user.password_file) {
            (Some(var), _) if env(var).is_some_and(|v| !v.is_empty()) => {
                Secret(env(var).unwrap_or_default().into_bytes())
            }
            (_, Some(path)) => read_secret_file(&format!("{field}.password_file"), path)?,
            (Some(var), None) => {
                return Err(invalid(
                    format!("{field}.password_env"),
                    format!("environment variable {var} is not set"),
                ))
            }
            (None, None) => {
                return Err(invalid(
                    &field,
                    "a password_env or password_file is required (passwords are never inline)",
                ))
            }
        };
        out.insert(user.name.clone(), secret);
    }
    Ok(out)
}

/// A blocklist entry: a command name, optionally with one subcommand.
fn check_command_entry(field: &str, entry: &str) -> Result<(), ConfigError> {
    let words: Vec<&str> = entry.split_whitespace().collect();
    if words.is_empty() || words.len() > 2 {
        return Err(invalid(
            field,
            format!("'{entry}' is not \"COMMAND\" or \"COMMAND SUBCOMMAND\""),
        ));
    }
    Ok(())
}

fn validate_policy(file: &FileConfig) -> Result<(), ConfigError> {
    for (i, e) in file.policy.blocklist.iter().enumerate() {
        check_command_entry(&format!("policy.blocklist[{i}]"), e)?;
    }
    for (i, e) in file.policy.allow.iter().enumerate() {
        check_command_entry(&format!("policy.allow[{i}]"), e)?;
    }
    for (i, u) in file.auth.users.iter().enumerate() {
        for (j, e) in u.allow.iter().enumerate() {
            check_command_entry(&format!("auth.users[{i}].allow[{j}]"), e)?;
        }
        for (j, e) in u.block.iter().enumerate() {
            check_command_entry(&format!("auth.users[{i}].block[{j}]"), e)?;
        }
    }
    let mut names = HashSet::new();
    for (i, l) in file.limits.iter().enumerate() {
        let field = format!("limits[{i}]");
        if !names.insert(l.name.as_str()) {
            return Err(invalid(
                format!("{field}.name"),
                format!("duplicate limit '{}'", l.name),
            ));
        }
        if !(l.rate > 0.0 && l.rate.is_finite()) {
            return Err(invalid(
                format!("{field}.rate"),
                "must be a positive number of requests per second",
            ));
        }
        if l.burst == 0 {
            return Err(invalid(format!("{field}.burst"), "must be at least 1"));
        }
        // A name no request is counted under would leave the limit inert.
        for (j, c) in l.commands.iter().enumerate() {
            check_command_entry(&format!("{field}.commands[{j}]"), c)?;
            let key = crate::policy::command_key(c);
            if crate::command::has_builtin_subcommands(&key) {
                return Err(invalid(
                    format!("{field}.commands[{j}]"),
                    format!("'{c}' has subcommands, which requests are counted under: name them (\"CLIENT SETNAME\")"),
                ));
            }
            if !crate::command::is_builtin_name(&key) && !key.contains('.') {
                return Err(invalid(
                    format!("{field}.commands[{j}]"),
                    format!("unknown command '{c}' (a module's commands are named with their dot, \"TS.ADD\")"),
                ));
            }
        }
        if l.shared && !file.pools.contains_key(&l.shared_pool) {
            return Err(invalid(
                format!("{field}.shared_pool"),
                format!("unknown pool '{}'", l.shared_pool),
            ));
        }
        if l.shared_batch == 0 {
            return Err(invalid(
                format!("{field}.shared_batch"),
                "must be at least 1",
            ));
        }
        if let Some(pool) = &l.pool {
            if !file.pools.contains_key(pool) {
                return Err(invalid(
                    format!("{field}.pool"),
                    format!("unknown pool '{pool}'"),
                ));
            }
        }
    }
    Ok(())
}

impl Config {
    /// Addresses configured with port 0 take the ports `bound` got from
    /// the system, so a reload of the same file names the same addresses.
    pub fn keep_bound_ports(&mut self, bound: &Config) {
        let keep = |mine: &mut std::net::SocketAddr, theirs: std::net::SocketAddr| {
            if mine.port() == 0 && mine.ip() == theirs.ip() {
                *mine = theirs;
            }
        };
        keep(&mut self.listen, bound.listen);
        keep(&mut self.admin, bound.admin);
        if let (Some(mine), Some(theirs)) = (self.tls_listen.as_mut(), bound.tls_listen) {
            keep(mine, theirs);
        }
    }
}

/// `REDIS_SESSION_URL` for pool `session`, as applications name them.
pub fn pool_url_env(pool: &str) -> String {
    format!("REDIS_{}_URL", pool.to_ascii_uppercase().replace('-', "_"))
}

fn parse_socket_addr(field: &str, value: &str) -> Result<SocketAddr, ConfigError> {
    value
        .parse()
        .map_err(|_| invalid(field, format!("'{value}' is not an ip:port address")))
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
        [pools.session]
        url = "redis://127.0.0.1:6379"
        [pools.cache]
        url = "redis://127.0.0.1:6380"
        [routes]
        default = "cache"
        prefixes = [{ prefix = "session:", pool = "session" }]
    "#;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn err(text: &str) -> String {
        Config::from_toml(text, "t.toml", no_env)
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn valid_base() {
        let c = Config::from_toml(BASE, "t.toml", no_env).unwrap();
        assert_eq!(c.pools.len(), 2);
        assert_eq!(c.listen.to_string(), "127.0.0.1:6390");
    }

    #[test]
    fn env_overrides() {
        let env = |k: &str| match k {
            "REDIS_SESSION_URL" => Some("redis://:pw@10.0.0.1:7000/3".to_string()),
            "KEYWAY_LISTEN" => Some("127.0.0.1:7777".to_string()),
            _ => None,
        };
        let c = Config::from_toml(BASE, "t.toml", env).unwrap();
        let session = c.pool(c.pool_id("session").unwrap()).unwrap();
        assert_eq!(session.endpoint.addr, Some(Addr::new("10.0.0.1", 7000)));
        assert_eq!(session.endpoint.db, 3);
        assert_eq!(session.origin, "REDIS_SESSION_URL");
        assert_eq!(c.listen.port(), 7777);
        let bad = |k: &str| (k == "REDIS_CACHE_URL").then(|| "redis://cache:notaport".to_string());
        let e = Config::from_toml(BASE, "t.toml", bad)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("REDIS_CACHE_URL: bad port"), "{e}");
        // A pool moved to a Redis Cluster by its environment alone.
        let cluster = |k: &str| {
            (k == "REDIS_CACHE_URL")
                .then(|| "redis+cluster://:pw@10.0.0.1:7000,10.0.0.2:7000".to_string())
        };
        let c = Config::from_toml(BASE, "t.toml", cluster).unwrap();
        let cache = c.pool(c.pool_id("cache").unwrap()).unwrap();
        assert_eq!(cache.cluster.as_ref().map(Vec::len), Some(2));
        assert_eq!(cache.endpoint.password.as_deref(), Some("pw"));
        assert_eq!(cache.origin, "REDIS_CACHE_URL");
    }

    #[test]
    fn mistakes_name_the_field() {
        let unknown_pool = BASE.replace("pool = \"session\"", "pool = \"sesion\"");
        assert!(err(&unknown_pool).starts_with("routes.prefixes[0].pool: unknown pool 'sesion'"));
        let dup = BASE.replace(
            "prefixes = [{ prefix = \"session:\", pool = \"session\" }]",
            "prefixes = [{ prefix = \"a:\", pool = \"session\" }, { prefix = \"a:\", pool = \"cache\" }]",
        );
        assert_eq!(
            err(&dup),
            "routes.prefixes[1].prefix: duplicate prefix 'a:'"
        );
        let bad_addr = BASE.replace("127.0.0.1:6380", "127.0.0.1:http");
        assert!(err(&bad_addr).starts_with("pools.cache.url: bad port"));
        let unknown_field = format!("{BASE}\n[server]\nlisten_on = \"x\"\n");
        assert!(
            err(&unknown_field).contains("unknown field `listen_on`"),
            "{}",
            err(&unknown_field)
        );
        let bad_listen = format!("{BASE}\n[server]\nlisten = \"localhost\"\n");
        assert!(err(&bad_listen).starts_with("server.listen:"));
    }

    #[test]
    fn pool_ids_survive_reloads_and_are_never_given_twice() {
        let load = |pools: &[&str]| {
            let mut text = String::new();
            for (i, p) in pools.iter().enumerate() {
                text.push_str(&format!(
                    "[pools.{p}]\nurl = \"redis://127.0.0.1:{}\"\n",
                    7000 + i
                ));
            }
            text.push_str(&format!("[routes]\ndefault = \"{}\"\n", pools[0]));
            Config::from_toml(&text, "test", |_| None).expect("valid")
        };
        let first = load(&["b", "c"]);
        // "a" sorts first; b and c keep theirs, a gets a new one.
        let mut second = load(&["a", "b"]);
        second.keep_pool_ids(&first);
        assert_eq!(second.pool_id("b"), first.pool_id("b"));
        let a = second.pool_id("a").unwrap();
        assert!(a != first.pool_id("b").unwrap() && a != first.pool_id("c").unwrap());
        // c comes back: not the id a took, and not a replica's.
        let mut third = load(&["a", "b", "c"]);
        third.keep_pool_ids(&second);
        assert_eq!(third.pool_id("a"), Some(a));
        let c = third.pool_id("c").unwrap();
        assert!(!c.is_replica() && c != a && third.pool_id("b") != Some(c));
        assert_eq!(third.pool(c).map(|p| p.name.as_str()), Some("c"));
    }
}
