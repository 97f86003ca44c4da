//! Backend pools: per pool, database and protocol version a few multiplexed,
//! pipelined connections shared by all clients, opened lazily with a bounded
//! connect timeout and re-opened with backoff after a failure.

mod backoff;
mod conn;
mod dedicated;
mod fence;
mod inbox;
mod lock;
mod outbox;
mod pool;
mod retry;
mod stream;
mod tenants;

use std::sync::Arc;

use thiserror::Error;

pub use backoff::{jitter, Backoff};
pub use conn::{request_once, Conn};
pub use dedicated::Dedicated;
pub use fence::{Fence, MAX_FENCE};
pub use inbox::{Arrival, Inbox, ReplyRx, ReplyTo};
pub use pool::{LeaseKind, Pool, Probe};
pub use retry::resend_after_failover;
pub use tenants::Tenant;

use crate::config::Config;
use crate::route::PoolId;

#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum BackendError {
    /// Could not connect (or the handshake failed); shown to clients as is.
    #[error("backend '{pool}' unavailable: {reason}")]
    Unavailable { pool: String, reason: String },
    /// The connection broke with this request in flight: it may or may not
    /// have been executed, so it is failed, never retried blindly.
    #[error("backend '{pool}' connection lost")]
    ConnectionLost { pool: String },
    /// Every connection this pool may lease to single clients is in use.
    #[error("backend '{pool}' has no free dedicated connection (limit {limit} reached)")]
    LeasesExhausted { pool: String, limit: usize },
    /// The user holds its share of the pool's held leases.
    #[error("backend '{pool}' has no free dedicated connection for user '{user}' (its limit {limit} reached)")]
    TenantLeasesExhausted {
        pool: String,
        user: String,
        limit: usize,
    },
    /// A write held while the pool's master was moved, past its request
    /// timeout: it was never sent, so the client may safely retry it.
    #[error("backend '{pool}' is failing over; the write was not sent, retry it")]
    FailingOver { pool: String },
    /// No master of the cluster serves the slot (or none is known yet).
    #[error("Hash slot not served (cluster pool '{pool}')")]
    ClusterDown { pool: String, slot: Option<u16> },
    /// A database other than 0 on a cluster pool, which has only db 0.
    #[error("SELECT is not allowed in cluster mode")]
    ClusterDatabase { pool: String },
    /// No reply within `request_timeout_ms`: it may or may not have run.
    #[error("backend '{pool}' timed out after {ms}ms")]
    TimedOut { pool: String, ms: u64 },
}

impl BackendError {
    /// The `kind` of `keyway_errors_total` it counts under.
    pub fn kind(&self) -> &'static str {
        match self {
            BackendError::Unavailable { .. } => "backend_unavailable",
            BackendError::ConnectionLost { .. } => "connection_lost",
            BackendError::LeasesExhausted { .. } | BackendError::TenantLeasesExhausted { .. } => {
                "leases_exhausted"
            }
            BackendError::FailingOver { .. } => "failover_held",
            BackendError::ClusterDown { .. } => "cluster_down",
            BackendError::ClusterDatabase { .. } => "cluster_database",
            BackendError::TimedOut { .. } => "timeout",
        }
    }

    /// The pool it is about.
    pub fn pool(&self) -> &str {
        match self {
            BackendError::Unavailable { pool, .. }
            | BackendError::ConnectionLost { pool }
            | BackendError::LeasesExhausted { pool, .. }
            | BackendError::TenantLeasesExhausted { pool, .. }
            | BackendError::FailingOver { pool }
            | BackendError::ClusterDown { pool, .. }
            | BackendError::ClusterDatabase { pool }
            | BackendError::TimedOut { pool, .. } => pool,
        }
    }

    /// The RESP error line a client sees.
    pub fn to_resp(&self) -> bytes::Bytes {
        match self {
            BackendError::FailingOver { .. } => crate::resp::error(&format!("TRYAGAIN {self}")),
            BackendError::ClusterDown { .. } => crate::resp::error(&format!("CLUSTERDOWN {self}")),
            _ => crate::resp::error(&format!("ERR {self}")),
        }
    }
}

/// What a reload did to one pool, named (names are pools' identity).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PoolChange {
    /// Same settings: kept with its connections.
    Kept(String),
    /// Its fixed address changed: kept, its old connections drain.
    Moved(String),
    /// Kind, credentials, database, TLS or `[backend]` settings changed: a
    /// new pool (a Sentinel pool gets a new follower).
    Replaced(String),
    Added(String),
    Removed(String),
}

/// All pools of a configuration, found by `PoolId`: the configured pools
/// and, for those with replica reads, their replica pools.
pub struct Backends {
    /// Configured pools in name order, then replica pools.
    list: Vec<Arc<Pool>>,
    /// Per `PoolId::index`: the pool with that id in this configuration.
    by_id: Vec<Option<Arc<Pool>>>,
}

fn replica_pool(p: &crate::config::Pool, config: &Config) -> Arc<Pool> {
    let mut endpoint = p.endpoint.clone();
    endpoint.addr = None;
    Arc::new(
        Pool::new(
            &format!("{}-replica", p.name),
            endpoint,
            config.backend.clone(),
        )
        .as_replica_pool(),
    )
}

/// `pools` are the configured pools, in `config.pools` order.
fn with_replicas(pools: Vec<Arc<Pool>>, config: &Config, old: Option<&Backends>) -> Backends {
    let mut list = pools;
    let mut ids: Vec<PoolId> = config.pools.iter().map(|p| p.id).collect();
    for p in &config.pools {
        // A cluster pool reads from its replicas itself.
        if p.replica_reads.is_some() && p.cluster.is_none() {
            let name = format!("{}-replica", p.name);
            let reused = old.and_then(|o| {
                o.list
                    .iter()
                    .find(|x| x.is_replica_pool() && x.name() == name)
                    .cloned()
            });
            list.push(reused.unwrap_or_else(|| replica_pool(p, config)));
            ids.push(p.id.replica());
        }
    }
    let mut by_id = vec![None; ids.iter().map(|id| id.index() + 1).max().unwrap_or(0)];
    for (id, pool) in ids.iter().zip(&list) {
        by_id[id.index()] = Some(pool.clone());
    }
    Backends { list, by_id }
}

fn new_pool(p: &crate::config::Pool, config: &Config) -> Arc<Pool> {
    let pool = Pool::new(&p.name, p.endpoint.clone(), config.backend.clone());
    Arc::new(match (&p.sentinel, &p.cluster) {
        (Some(_), _) => pool.with_sentinel(),
        (None, Some(seeds)) => {
            let cluster = crate::cluster::Cluster::new(
                &p.name,
                p.endpoint.clone(),
                seeds.clone(),
                config.backend.clone(),
            );
            pool.with_cluster(match p.replica_reads {
                Some(_) => cluster.with_replica_reads(),
                None => cluster,
            })
        }
        (None, None) => pool,
    })
}

impl Backends {
    pub fn new(config: &Config) -> Backends {
        with_replicas(
            config.pools.iter().map(|p| new_pool(p, config)).collect(),
            config,
            None,
        )
    }

    /// The pools of a reloaded configuration (whose ids
    /// `Config::keep_pool_ids` kept), and what happened to each, by name:
    /// one with the same
    /// settings is kept as it is (connections and all); one whose fixed
    /// address moved is kept and moved (its old connections drain); one
    /// whose kind, credentials, database, TLS or `[backend]` settings
    /// changed is replaced; the rest are added or removed.
    pub fn reuse(config: &Config, old: &Backends) -> (Backends, Vec<PoolChange>) {
        let mut changes = Vec::new();
        let pools = config
            .pools
            .iter()
            .map(|p| {
                let Some(existing) = old.named(&p.name) else {
                    changes.push(PoolChange::Added(p.name.clone()));
                    return new_pool(p, config);
                };
                let same_kind = existing.is_sentinel_managed() == p.sentinel.is_some()
                    && existing.cluster().map(|c| c.replica_reads())
                        == p.cluster.as_ref().map(|_| p.replica_reads.is_some())
                    && existing.cluster().map(|c| c.seeds()) == p.cluster.as_deref();
                let configured = existing.configured();
                let same_node = configured.username == p.endpoint.username
                    && configured.password == p.endpoint.password
                    && configured.db == p.endpoint.db
                    && configured.tls == p.endpoint.tls;
                if !same_kind || !same_node || existing.settings() != &config.backend {
                    changes.push(PoolChange::Replaced(p.name.clone()));
                    let replacement = new_pool(p, config);
                    if same_kind && p.sentinel.is_some() {
                        // Serves at once on the master the old pool followed;
                        // its own follower takes over from there.
                        replacement.set_address(existing.endpoint().addr.clone());
                    }
                    return replacement;
                }
                let moved = p.sentinel.is_none() && p.cluster.is_none() && {
                    existing.set_address(p.endpoint.addr.clone())
                };
                changes.push(match moved {
                    true => PoolChange::Moved(p.name.clone()),
                    false => PoolChange::Kept(p.name.clone()),
                });
                existing.clone()
            })
            .collect();
        for gone in old.list.iter().filter(|o| !o.is_replica_pool()) {
            if config.pool_id(gone.name()).is_none() {
                changes.push(PoolChange::Removed(gone.name().to_string()));
            }
        }
        (with_replicas(pools, config, Some(old)), changes)
    }

    /// The replica pool of `pool`, when it has one with a replica chosen.
    pub fn replica_of(&self, pool: PoolId) -> Option<PoolId> {
        let replica = self.get(pool.replica())?;
        replica.endpoint().addr.is_some().then_some(pool.replica())
    }

    /// The replica pool of `pool` whether or not a replica is chosen yet.
    pub fn replica_pool(&self, pool: PoolId) -> Option<Arc<Pool>> {
        self.get(pool.replica()).cloned()
    }

    /// `None` for an id a reload removed.
    pub fn get(&self, id: PoolId) -> Option<&Arc<Pool>> {
        self.by_id.get(id.index())?.as_ref()
    }

    /// The pool for an id planned by a session, which may predate a reload
    /// that removed it: then an error to retry, never a wrong pool or a panic.
    pub fn checked(&self, id: PoolId) -> Result<Arc<Pool>, BackendError> {
        self.get(id)
            .cloned()
            .ok_or_else(|| BackendError::Unavailable {
                pool: id.to_string(),
                reason: "the configuration was reloaded; retry".to_string(),
            })
    }

    /// The pool of this name (not a replica pool).
    pub fn named(&self, name: &str) -> Option<Arc<Pool>> {
        self.list
            .iter()
            .find(|p| p.name() == name && !p.is_replica_pool())
            .cloned()
    }

    /// Every pool: the configured ones in name order, then replica pools.
    pub fn pools(&self) -> &[Arc<Pool>] {
        &self.list
    }

    /// Per `PoolId::index`, the pool with that id: the shape of a table
    /// indexed by pool.
    pub fn by_index(&self) -> &[Option<Arc<Pool>>] {
        &self.by_id
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(pools: &str, backend: &str) -> Config {
        let text = format!("[backend]\n{backend}\n{pools}\n[routes]\ndefault = \"a\"\n");
        Config::from_toml(&text, "test", |_| None).expect("valid")
    }

    #[test]
    fn a_reload_names_what_happened_to_each_pool() {
        let before = config(
            "[pools.a]\nurl = \"redis://127.0.0.1:7001\"\n[pools.b]\nurl = \"redis://127.0.0.1:7002\"\n[pools.c]\nurl = \"redis://127.0.0.1:7003\"\n",
            "",
        );
        let old = Backends::new(&before);
        // a kept, b moved, c removed, d added (in name order, d takes c's place).
        let mut after = config(
            "[pools.a]\nurl = \"redis://127.0.0.1:7001\"\n[pools.b]\nurl = \"redis://127.0.0.1:7012\"\n[pools.d]\nurl = \"redis://127.0.0.1:7004\"\n",
            "",
        );
        after.keep_pool_ids(&before);
        let (new, mut changes) = Backends::reuse(&after, &old);
        // Ids follow names: b's id finds b in both; c's id finds nothing
        // now, not d.
        let id = |c: &Config, name: &str| c.pool_id(name).unwrap();
        assert_eq!(id(&after, "b"), id(&before, "b"));
        assert!(Arc::ptr_eq(
            new.get(id(&after, "b")).unwrap(),
            old.get(id(&before, "b")).unwrap()
        ));
        assert!(new.get(id(&before, "c")).is_none());
        assert_ne!(id(&after, "d"), id(&before, "c"));
        assert_eq!(new.get(id(&after, "d")).unwrap().name(), "d");
        changes.sort_by_key(|c| format!("{c:?}"));
        assert_eq!(
            changes,
            [
                PoolChange::Added("d".into()),
                PoolChange::Kept("a".into()),
                PoolChange::Moved("b".into()),
                PoolChange::Removed("c".into()),
            ]
        );
        // Kept and moved pools are the same objects, found by name.
        assert!(Arc::ptr_eq(
            &new.named("a").unwrap(),
            &old.named("a").unwrap()
        ));
        assert!(Arc::ptr_eq(
            &new.named("b").unwrap(),
            &old.named("b").unwrap()
        ));
        assert_eq!(
            new.named("b").unwrap().endpoint().address(),
            "127.0.0.1:7012"
        );
        // A [backend] setting replaces every pool.
        let (_, changes) = Backends::reuse(
            &config(
                "[pools.a]\nurl = \"redis://127.0.0.1:7001\"\n",
                "connections = 3",
            ),
            &new,
        );
        assert!(
            changes.contains(&PoolChange::Replaced("a".into())),
            "{changes:?}"
        );
    }
}
