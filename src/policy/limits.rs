//! Rate limits (GCRA via `governor`, keyed in a DashMap): per client IP,
//! user, pool, command, or global. Idle keys are purged periodically so
//! the limiter's memory stays bounded. A shared limit is decided in a Redis
//! pool instead (`shared`), with this keyway's own limiter as its fallback.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::clock::Clock;
use governor::{DefaultKeyedRateLimiter, Quota};

use super::shared::{Decision, Shared};
use crate::backend::Backends;
use crate::config::{LimitAction, LimitConfig, LimitScope, SharedFailure};
use crate::metrics::Metrics;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum LimitKey {
    Ip(IpAddr),
    User(Arc<str>),
    Pool(crate::config::PoolId),
    Command(Arc<str>),
    Global,
}

pub struct Limit {
    pub name: String,
    /// Its settings as configured (and its pool as numbered): a reload
    /// that leaves them the same keeps the limit's state.
    settings: String,
    scope: LimitScope,
    commands: Vec<String>,
    pool: Option<crate::config::PoolId>,
    pub action: LimitAction,
    pub max_delay: Duration,
    limiter: DefaultKeyedRateLimiter<LimitKey>,
    shared: Option<Shared>,
}

/// What a shared limit needs from outside the policy.
pub struct Backing<'a> {
    pub backends: &'a Backends,
    pub metrics: &'a Metrics,
}

/// A limit's answer to one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Admit,
    /// Limited: a slot frees up after this long.
    Wait(Duration),
    /// Shared, its pool did not answer, and it fails closed.
    Unavailable,
}

/// What a request is counted as.
pub struct Subject<'a> {
    pub ip: IpAddr,
    pub user: &'a Arc<str>,
    pub command: &'a str,
    /// The command is in the command table (builtin or learned): else its
    /// name is whatever a client sent.
    pub known: bool,
    pub pool: Option<crate::config::PoolId>,
}

impl Limit {
    pub fn new(
        config: &LimitConfig,
        pool_id: impl Fn(&str) -> Option<crate::config::PoolId>,
    ) -> Limit {
        let period = Duration::from_secs_f64(1.0 / config.rate).max(Duration::from_nanos(1));
        let burst = NonZeroU32::new(config.burst).unwrap_or(NonZeroU32::MIN);
        let quota = Quota::with_period(period)
            .unwrap_or_else(|| Quota::per_second(NonZeroU32::MAX))
            .allow_burst(burst);
        let pool = config.pool.as_deref().and_then(pool_id);
        Limit {
            name: config.name.clone(),
            settings: format!("{config:?} {pool:?}"),
            scope: config.scope,
            commands: config.commands.iter().map(|c| command_key(c)).collect(),
            pool,
            action: config.action,
            max_delay: Duration::from_millis(config.max_delay_ms),
            limiter: DefaultKeyedRateLimiter::dashmap(quota),
            shared: Shared::new(config),
        }
    }

    /// Whether a reload's limit of the same name is this one unchanged.
    pub fn same_settings(&self, other: &Limit) -> bool {
        self.name == other.name && self.settings == other.settings
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
            // Names a client made up share one key, so they cannot grow
            // the table (those a `commands` list names are its own).
            LimitScope::Command if !s.known && self.commands.is_empty() => {
                LimitKey::Command(Arc::from("other"))
            }
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

    /// This request's verdict: from this keyway's limiter, or for a shared
    /// limit from its pool (permits in hand first; the local limiter when
    /// the pool cannot answer and the limit fails open).
    pub async fn verdict(&self, s: &Subject<'_>, backing: &Backing<'_>) -> Verdict {
        let Some(key) = self.key(s) else {
            return Verdict::Admit;
        };
        let Some(shared) = &self.shared else {
            return self.local(&key);
        };
        if shared.take_held(&key) {
            return Verdict::Admit;
        }
        let outcome = match backing.backends.named(&shared.pool) {
            Some(pool) => {
                let subject = subject_text(&key, backing.backends);
                shared.ask(&pool, &key, &subject).await
            }
            None => Err(format!("pool '{}' is not configured", shared.pool)),
        };
        let count = |outcome: &str| {
            backing
                .metrics
                .shared_limit_calls
                .with_label_values(&[&self.name, outcome])
                .inc()
        };
        match outcome {
            Ok(Decision::Admit) => {
                count("admitted");
                Verdict::Admit
            }
            Ok(Decision::Wait(wait)) => {
                count("limited");
                Verdict::Wait(wait)
            }
            Err(reason) => {
                count("error");
                if shared.should_warn() {
                    tracing::warn!(limit = %self.name, pool = %shared.pool, failure = ?shared.failure, "shared rate limit unavailable: {reason}");
                }
                match shared.failure {
                    SharedFailure::Open => {
                        backing
                            .metrics
                            .shared_limit_fallbacks
                            .with_label_values(&[&self.name])
                            .inc();
                        self.local(&key)
                    }
                    SharedFailure::Closed => Verdict::Unavailable,
                }
            }
        }
    }

    fn local(&self, key: &LimitKey) -> Verdict {
        match self.limiter.check_key(key) {
            Ok(()) => Verdict::Admit,
            Err(not_until) => Verdict::Wait(not_until.wait_time_from(self.limiter.clock().now())),
        }
    }

    /// Forgets keys whose state is back to full burst.
    pub fn purge_idle(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
        if let Some(shared) = &self.shared {
            shared.purge_idle();
        }
    }

    pub fn tracked_keys(&self) -> usize {
        self.limiter.len()
    }
}

/// A subject as a shared limit's key names it.
fn subject_text(key: &LimitKey, backends: &Backends) -> String {
    match key {
        LimitKey::Ip(ip) => ip.to_string(),
        LimitKey::User(user) => user.to_string(),
        LimitKey::Pool(pool) => backends
            .get(*pool)
            .map(|p| p.name().to_string())
            .unwrap_or_else(|| pool.to_string()),
        LimitKey::Command(command) => command.to_string(),
        LimitKey::Global => "global".to_string(),
    }
}

/// A `commands` entry as requests are counted under it: lowercase, a
/// subcommand joined with `|` (`"CONFIG SET"` and `"config|set"` alike).
pub fn command_key(entry: &str) -> String {
    entry
        .split_whitespace()
        .collect::<Vec<_>>()
        .join("|")
        .to_ascii_lowercase()
}
