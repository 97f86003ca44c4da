//! Backend pools: per pool, database and protocol version a few multiplexed,
//! pipelined connections shared by all clients, opened lazily with a bounded
//! connect timeout and re-opened with backoff after a failure.

mod conn;
mod dedicated;
mod pool;
mod stream;

use std::sync::Arc;

use thiserror::Error;

pub use conn::{request_once, Conn, ReplyRx};
pub use dedicated::Dedicated;
pub use pool::{Pool, Probe};

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
}

impl BackendError {
    /// The RESP error line a client sees.
    pub fn to_resp(&self) -> bytes::Bytes {
        crate::resp::error(&format!("ERR {self}"))
    }
}

/// All pools of a configuration, indexed by `PoolId`.
pub struct Backends {
    pools: Vec<Arc<Pool>>,
}

fn new_pool(p: &crate::config::Pool, config: &Config) -> Arc<Pool> {
    let pool = Pool::new(&p.name, p.endpoint.clone(), config.backend.clone());
    Arc::new(if p.sentinel.is_some() {
        pool.with_sentinel()
    } else {
        pool
    })
}

impl Backends {
    pub fn new(config: &Config) -> Backends {
        Backends {
            pools: config.pools.iter().map(|p| new_pool(p, config)).collect(),
        }
    }

    /// The pools of a reloaded configuration: a pool with the same name and
    /// settings is kept as it is (connections and all); one whose fixed
    /// address moved is kept and moved (its old connections drain);
    /// anything else is new.
    pub fn reuse(config: &Config, old: &Backends) -> Backends {
        let pools = config
            .pools
            .iter()
            .map(|p| {
                let Some(existing) = old.pools.iter().find(|o| o.name() == p.name) else {
                    return new_pool(p, config);
                };
                let same_kind = existing.is_sentinel_managed() == p.sentinel.is_some();
                let configured = existing.configured();
                let same_node = configured.username == p.endpoint.username
                    && configured.password == p.endpoint.password
                    && configured.db == p.endpoint.db
                    && configured.tls == p.endpoint.tls;
                if !same_kind || !same_node || existing.settings() != &config.backend {
                    return new_pool(p, config);
                }
                if p.sentinel.is_none() {
                    existing.set_address(&p.endpoint.host, p.endpoint.port);
                }
                existing.clone()
            })
            .collect();
        Backends { pools }
    }

    pub fn pool(&self, id: PoolId) -> &Pool {
        &self.pools[id]
    }

    /// `None` for an id from before a reload that no longer exists.
    pub fn get(&self, id: PoolId) -> Option<&Arc<Pool>> {
        self.pools.get(id)
    }

    /// The pool for an id planned by a session, which may predate a reload
    /// that removed it: then an error to retry, never a wrong pool or a panic.
    pub fn checked(&self, id: PoolId) -> Result<Arc<Pool>, BackendError> {
        self.pools
            .get(id)
            .cloned()
            .ok_or_else(|| BackendError::Unavailable {
                pool: format!("#{id}"),
                reason: "the configuration was reloaded; retry".to_string(),
            })
    }

    pub fn pool_arc(&self, id: PoolId) -> Arc<Pool> {
        self.pools[id].clone()
    }

    pub fn pools(&self) -> &[Arc<Pool>] {
        &self.pools
    }
}
