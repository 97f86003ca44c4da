//! The `keyway` binary: parse flags, load the configuration, start logging
//! and the server. Everything else lives in the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, ValueEnum};
use keyway::config::{Addr, Config};
use keyway::route::Router;
use keyway::server::Server;

/// The environment variables keyway reads, for `--help`.
const ENVIRONMENT: &str = "\
Environment (applied over the configuration file):
  KEYWAY_CONFIG          configuration file (as --config)
  KEYWAY_LISTEN          client address, host:port (server.listen)
  KEYWAY_ADMIN           admin HTTP address: /metrics, /healthz, /readyz (server.admin)
  KEYWAY_TLS_LISTEN      TLS client address (tls.listen)
  KEYWAY_LOG             log filter: info, debug, keyway=debug,...
  KEYWAY_REQUIREPASS     password of the default user (auth.requirepass_file)
  REDIS_<POOL>_URL       a pool's URL, e.g. REDIS_CACHE_URL=redis://cache:6379/0
                         (redis://, rediss://, redis+sentinel://, redis+cluster://)
Without --config or KEYWAY_CONFIG: conf/keyway.toml, else /etc/keyway/keyway.toml.";

#[derive(Parser)]
#[command(
    name = "keyway",
    version,
    about = "A transparent, prefix-routing Redis (RESP) proxy",
    after_help = ENVIRONMENT
)]
struct Cli {
    /// Configuration file.
    #[arg(long, env = "KEYWAY_CONFIG")]
    config: Option<PathBuf>,
    /// Validate the configuration, print the resolved route table and exit.
    #[arg(long)]
    check: bool,
    /// Log line format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Print the pool a key goes to, the rule that decided and the backend.
    Route {
        /// The key (or, for a keyless command, any text).
        key: String,
        /// The command, for command rules (FT.SEARCH, TS.ADD ...).
        #[arg(default_value = "GET")]
        command: String,
        /// The client's database (SELECT), for database rules.
        #[arg(long, default_value_t = 0)]
        db: u32,
    },
}

/// The configuration file: the one named, else conf/keyway.toml when it
/// exists (a checkout), else the image's /etc/keyway/keyway.toml.
fn config_path(named: Option<PathBuf>) -> PathBuf {
    named.unwrap_or_else(|| {
        let local = PathBuf::from("conf/keyway.toml");
        if local.exists() {
            local
        } else {
            PathBuf::from("/etc/keyway/keyway.toml")
        }
    })
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn main() -> ExitCode {
    return_memory_peaks();
    let cli = Cli::parse();
    let path = config_path(cli.config);
    let config = match Config::load(&path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("keyway: invalid configuration: {e}");
            return ExitCode::from(2);
        }
    };
    if let Some(Command::Route { key, command, db }) = &cli.command {
        print!("{}", explain_route(&config, key, command, *db));
        return ExitCode::SUCCESS;
    }
    if cli.check {
        print!("{}", route_table(&config));
        return ExitCode::SUCCESS;
    }
    init_logging(config.log_filter.as_deref(), cli.log_format);
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        config = %path.display(),
        pools = %config.pools.iter().map(|p| p.name.as_str()).collect::<Vec<_>>().join(","),
        prefix_rules = config.routes.prefixes.len(),
        command_rules = config.routes.commands.len(),
        database_rules = config.routes.databases.len(),
        users = config.auth.users.len(),
        limits = config.limits.len(),
        "keyway starting"
    );
    // One event-loop thread (the default) runs on tokio's current-thread
    // scheduler: no work-stealing bookkeeping, and a woken task waits its
    // turn instead of jumping the queue, so the requests of every client
    // that is ready reach a backend connection before it writes.
    let mut builder = match config.server.worker_threads {
        0 | 1 => tokio::runtime::Builder::new_current_thread(),
        n => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(n);
            b
        }
    };
    let runtime = match builder.enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("keyway: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let server = match Server::bind(config).await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("keyway: {e}");
                return ExitCode::FAILURE;
            }
        };
        tokio::spawn(reload_on_sighup(server.state()));
        server.run(shutdown_signal()).await;
        ExitCode::SUCCESS
    })
}

fn init_logging(filter: Option<&str>, format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter.unwrap_or("info"))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only for a person at a terminal, never into files or
    // `docker logs`.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        // The message and fields at the top level of each line.
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

/// SIGHUP re-reads the configuration; an invalid file is logged and ignored.
async fn reload_on_sighup(state: std::sync::Arc<keyway::state::State>) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            return;
        };
        while hup.recv().await.is_some() {
            let _ = state.reload();
        }
    }
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

/// Asks the sentinels now; `--check` shows where the pool would point.
fn current_master(
    sentinel: &keyway::config::SentinelConfig,
    node: &keyway::config::Endpoint,
) -> String {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => return format!("unknown ({e})"),
    };
    match runtime.block_on(keyway::sentinel::discover(sentinel, node)) {
        Ok(master) => format!("{master} (confirmed by ROLE)"),
        Err(e) => format!("none confirmed ({e})"),
    }
}

/// Reads a cluster pool's topology now; `--check` shows what it found.
fn cluster_shape(config: &Config, pool: &keyway::config::Pool, seeds: &[Addr]) -> String {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => return format!("unknown ({e})"),
    };
    let cluster = keyway::cluster::Cluster::new(
        &pool.name,
        pool.endpoint.clone(),
        seeds.to_vec(),
        config.backend.clone(),
    );
    match runtime.block_on(cluster.refresh()) {
        Ok(covered) => format!(
            "{} masters, {covered} of {} hash slots covered",
            cluster.masters().len(),
            keyway::cluster::SLOTS
        ),
        Err(e) => format!("not read ({e})"),
    }
}

/// What `--check` prints: every rule, in the order it is tried.
fn route_table(config: &Config) -> String {
    let router = Router::new(config);
    let addr = |pool: &str| {
        config
            .pool_id(pool)
            .and_then(|id| config.pool(id))
            .map(|p| p.endpoint.to_string())
            .unwrap_or_default()
    };
    let mut out = format!("configuration {} is valid\n", config.source);
    out.push_str(&format!(
        "listen {}  admin {}\n{}\n\npools:\n",
        config.listen,
        config.admin,
        keyway::client_memory::describe(&config.server)
    ));
    for p in &config.pools {
        if let Some(seeds) = &p.cluster {
            let nodes: Vec<String> = seeds.iter().map(Addr::to_string).collect();
            out.push_str(&format!(
                "  {:<12} redis cluster via {}  (from {})\n  {:<12} currently: {}\n",
                p.name,
                nodes.join(", "),
                p.origin,
                "",
                cluster_shape(config, p, seeds)
            ));
            continue;
        }
        match &p.sentinel {
            None => out.push_str(&format!(
                "  {:<12} {}  (from {})\n",
                p.name, p.endpoint, p.origin
            )),
            Some(s) => {
                let sentinels: Vec<String> = s.spec.sentinels.iter().map(Addr::to_string).collect();
                out.push_str(&format!(
                    "  {:<12} sentinel master '{}' via {}  (from {})\n  {:<12} currently reported master: {}\n",
                    p.name,
                    s.spec.master,
                    sentinels.join(", "),
                    p.origin,
                    "",
                    current_master(s, &p.endpoint)
                ));
            }
        }
    }
    out.push_str("\nroutes (longest prefix, then command, then db, then default):\n");
    let mut prefixes: Vec<_> = config.routes.prefixes.iter().collect();
    prefixes.sort_by(|a, b| {
        b.prefix
            .len()
            .cmp(&a.prefix.len())
            .then(a.prefix.cmp(&b.prefix))
    });
    for r in prefixes {
        out.push_str(&format!(
            "  prefix  {:<24} -> {:<10} {}\n",
            format!("{:?}", r.prefix),
            r.pool,
            addr(&r.pool)
        ));
    }
    for r in &config.routes.commands {
        out.push_str(&format!(
            "  command {:<24} -> {:<10} {}\n",
            r.command.to_ascii_uppercase(),
            r.pool,
            addr(&r.pool)
        ));
    }
    for r in &config.routes.databases {
        out.push_str(&format!(
            "  db      {:<24} -> {:<10} {}\n",
            r.db,
            r.pool,
            addr(&r.pool)
        ));
    }
    let default = router.pool_name(router.default_pool());
    out.push_str(&format!(
        "  default {:<24} -> {:<10} {}\n",
        "",
        default,
        addr(default)
    ));
    if !config.limits.is_empty() {
        out.push_str("\nlimits (every one that applies must admit a request):\n");
    }
    for l in &config.limits {
        let kept = match l.shared {
            true => format!(
                "shared in {} (batch {}, pool down: fail {:?})",
                l.shared_pool, l.shared_batch, l.shared_failure
            )
            .to_lowercase(),
            false => "per keyway".to_string(),
        };
        out.push_str(&format!(
            "  {:<16} per {} {}/s burst {}  {}\n",
            l.name,
            format!("{:?}", l.scope).to_lowercase(),
            l.rate,
            l.burst,
            kept
        ));
    }
    out
}

/// glibc raises its mmap threshold each time a large block is freed, after
/// which large blocks come from the heap and stay there: the memory of a
/// peak (clients that asked for many large replies and were cut) would
/// stay with the process. A fixed threshold keeps blocks of 128 KiB and up
/// in their own mappings, returned to the system when freed.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn return_memory_peaks() {
    // SAFETY: mallopt only sets an allocator parameter, and runs first
    // thing in main, before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn return_memory_peaks() {}

/// `keyway route KEY [COMMAND]`: the pool, the rule and the backend.
fn explain_route(config: &Config, key: &str, command: &str, db: u32) -> String {
    let router = Router::new(config);
    let (pool, rule) = router.explain(key.as_bytes(), command.to_ascii_lowercase().as_bytes(), db);
    let name = router.pool_name(pool);
    let backend = config
        .pool(pool)
        .map(|p| p.endpoint.to_string())
        .unwrap_or_default();
    format!("key      {key}\ncommand  {}\ndb       {db}\npool     {name}\nrule     {rule}\nbackend  {backend}\n", command.to_uppercase())
}
