//! Backend pools: per pool, database and protocol version a few multiplexed,
//! pipelined connections shared by all clients, opened lazily with a bounded
//! connect timeout and re-opened with backoff after a failure.

mod conn;
mod dedicated;
mod pool;

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
    pools: Vec<Pool>,
}

impl Backends {
    pub fn new(config: &Config) -> Backends {
        Backends {
            pools: config
                .pools
                .iter()
                .map(|p| {
                    let pool = Pool::new(&p.name, p.endpoint.clone(), config.backend.clone());
                    if p.sentinel.is_some() {
                        pool.with_sentinel()
                    } else {
                        pool
                    }
                })
                .collect(),
        }
    }

    pub fn pool(&self, id: PoolId) -> &Pool {
        &self.pools[id]
    }

    pub fn pools(&self) -> &[Pool] {
        &self.pools
    }
}
