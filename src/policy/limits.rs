//! Rate limits (GCRA via `governor`, keyed in a DashMap): per client IP,
//! user, pool, command, or global. Idle keys are purged periodically so
//! the limiter's memory stays bounded.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::clock::Clock;
use governor::{DefaultKeyedRateLimiter, Quota};

use crate::config::{LimitAction, LimitConfig, LimitScope};

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum LimitKey {
    Ip(IpAddr),
    User(Arc<str>),
    Pool(usize),
    Command(Arc<str>),
    Global,
}

pub struct Limit {
    pub name: String,
    scope: LimitScope,
    commands: Vec<String>,
    pool: Option<usize>,
    pub action: LimitAction,
    pub max_delay: Duration,
    limiter: DefaultKeyedRateLimiter<LimitKey>,
}

/// What a request is counted as.
pub struct Subject<'a> {
    pub ip: IpAddr,
    pub user: &'a Arc<str>,
    pub command: &'a str,
    pub pool: Option<usize>,
}

impl Limit {
    pub fn new(config: &LimitConfig, pool_index: impl Fn(&str) -> Option<usize>) -> Limit {
        let period = Duration::from_secs_f64(1.0 / config.rate).max(Duration::from_nanos(1));
        let burst = NonZeroU32::new(config.burst).unwrap_or(NonZeroU32::MIN);
        let quota = Quota::with_period(period)
            .unwrap_or_else(|| Quota::per_second(NonZeroU32::MAX))
            .allow_burst(burst);
        Limit {
            name: config.name.clone(),
            scope: config.scope,
            commands: config
                .commands
                .iter()
                .map(|c| c.to_ascii_lowercase())
                .collect(),
            pool: config.pool.as_deref().and_then(pool_index),
            action: config.action,
            max_delay: Duration::from_millis(config.max_delay_ms),
            limiter: DefaultKeyedRateLimiter::dashmap(quota),
        }
    }

    /// Pool-scoped limits can only be checked once the pool is known.
    pub fn needs_pool(&self) -> bool {
        self.scope == LimitScope::Pool
    }

    fn key(&self, s: &Subject) -> Option<LimitKey> {
        if !self.commands.is_empty() && !self.commands.iter().any(|c| c == s.command) {
            return None;
        }
        Some(match self.scope {
            LimitScope::Ip => LimitKey::Ip(s.ip),
            LimitScope::User => LimitKey::User(s.user.clone()),
            LimitScope::Command => LimitKey::Command(Arc::from(s.command)),
            LimitScope::Global => LimitKey::Global,
            LimitScope::Pool => {
                let pool = s.pool?;
                if self.pool.is_some_and(|p| p != pool) {
                    return None;
                }
                LimitKey::Pool(pool)
            }
        })
    }

    /// `Ok` when admitted (or the limit does not apply), else how long
    /// until a slot frees up.
    pub fn check(&self, s: &Subject) -> Result<(), Duration> {
        let Some(key) = self.key(s) else {
            return Ok(());
        };
        self.limiter
            .check_key(&key)
            .map_err(|not_until| not_until.wait_time_from(self.limiter.clock().now()))
    }

    /// Forgets keys whose state is back to full burst.
    pub fn purge_idle(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
    }

    pub fn tracked_keys(&self) -> usize {
        self.limiter.len()
    }
}
