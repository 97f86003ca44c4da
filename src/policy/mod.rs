//! Policy at the edge: who a client is (AUTH against keyway's own users,
//! compared in constant time, with a lock-out for addresses that keep
//! failing), what it may run (blocklist, read-only, ACL categories), which
//! keys it may touch (prefixes), and how fast (rate limits).

mod blocklist;
mod limits;

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use dashmap::DashMap;
use governor::clock::Clock;
use governor::{DefaultKeyedRateLimiter, Quota};
use subtle::ConstantTimeEq;

pub use blocklist::Blocklist;
pub use limits::{Limit, LimitKey, Subject};

use crate::command::{Flags, Spec};
use crate::config::{Config, LimitAction};
use crate::resp;

/// A keyway user: `default` (the requirepass password, or everyone when
/// no authentication is configured) or one of `[[auth.users]]`.
#[derive(Debug)]
pub struct User {
    pub name: Arc<str>,
    password: Option<Vec<u8>>,
    /// `None` is every key.
    prefixes: Option<Vec<Vec<u8>>>,
    read_only: bool,
    categories: Vec<String>,
    blocklist: Blocklist,
    enabled: bool,
}

/// Why keyway refused a request; each is one RESP error line and a metric.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denial {
    NoAuth,
    HelloNoAuth,
    WrongPass,
    LockedOut(Duration),
    Blocked(String),
    NoPermCommand(String),
    NoPermKey(Vec<u8>),
    RateLimited {
        limit: String,
        retry_after: Duration,
    },
}

impl Denial {
    pub fn to_resp(&self) -> Bytes {
        resp::error(&match self {
            Denial::NoAuth => "NOAUTH Authentication required.".to_string(),
            Denial::HelloNoAuth => "NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time".to_string(),
            Denial::WrongPass => "WRONGPASS invalid username-password pair or user is disabled.".to_string(),
            Denial::LockedOut(d) => format!(
                "ERR too many failed authentication attempts from this address, retry after {}s",
                d.as_secs().max(1)
            ),
            Denial::Blocked(c) => format!("ERR command '{c}' is blocked by keyway policy"),
            Denial::NoPermCommand(c) => format!("NOPERM this user has no permissions to run the '{c}' command"),
            Denial::NoPermKey(k) => format!(
                "NOPERM this user has no permissions to access the '{}' key",
                String::from_utf8_lossy(&k[..k.len().min(256)])
            ),
            Denial::RateLimited { limit, retry_after } => format!(
                "ERR rate limit exceeded (limit '{limit}'), retry after {}ms",
                retry_after.as_millis().max(1)
            ),
        })
    }

    /// The `reason` and `detail` labels of `keyway_denials_total`.
    pub fn labels(&self) -> (&'static str, String) {
        match self {
            Denial::NoAuth | Denial::HelloNoAuth => ("auth", "noauth".into()),
            Denial::WrongPass => ("auth", "wrongpass".into()),
            Denial::LockedOut(_) => ("auth", "lockout".into()),
            Denial::Blocked(c) => ("blocklist", c.clone()),
            Denial::NoPermCommand(c) => ("noperm", c.clone()),
            Denial::NoPermKey(_) => ("noperm", "key".into()),
            Denial::RateLimited { limit, .. } => ("ratelimit", limit.clone()),
        }
    }
}

pub struct Policy {
    /// Clients must AUTH before anything else.
    pub auth_required: bool,
    users: HashMap<String, Arc<User>>,
    anonymous: Arc<User>,
    limits: Vec<Limit>,
    failures: DefaultKeyedRateLimiter<IpAddr>,
    locked: DashMap<IpAddr, Instant>,
}

impl Policy {
    pub fn new(config: &Config) -> Policy {
        let global = Blocklist::new(&config.policy.blocklist);
        let mut users = HashMap::new();
        if let Some(pass) = config.passwords.get("default") {
            users.insert(
                "default".to_string(),
                Arc::new(User {
                    name: Arc::from("default"),
                    password: Some(pass.0.clone()),
                    prefixes: None,
                    read_only: false,
                    categories: Vec::new(),
                    blocklist: global.clone(),
                    enabled: true,
                }),
            );
        }
        for u in &config.auth.users {
            let prefixes = (!u.prefixes.iter().any(|p| p == "*"))
                .then(|| u.prefixes.iter().map(|p| p.as_bytes().to_vec()).collect());
            users.insert(
                u.name.clone(),
                Arc::new(User {
                    name: Arc::from(u.name.as_str()),
                    password: config.passwords.get(&u.name).map(|s| s.0.clone()),
                    prefixes,
                    read_only: u.read_only,
                    categories: u
                        .categories
                        .iter()
                        .map(|c| c.trim_start_matches('@').to_ascii_lowercase())
                        .collect(),
                    blocklist: global.with_overrides(&u.allow, &u.block),
                    enabled: u.enabled,
                }),
            );
        }
        let per_minute =
            NonZeroU32::new(config.auth.max_failures_per_minute).unwrap_or(NonZeroU32::MIN);
        Policy {
            auth_required: !users.is_empty(),
            anonymous: Arc::new(User {
                name: Arc::from("default"),
                password: None,
                prefixes: None,
                read_only: false,
                categories: Vec::new(),
                blocklist: global,
                enabled: true,
            }),
            users,
            limits: config
                .limits
                .iter()
                .map(|l| Limit::new(l, |name| config.pool_index(name)))
                .collect(),
            failures: DefaultKeyedRateLimiter::dashmap(Quota::per_minute(per_minute)),
            locked: DashMap::new(),
        }
    }

    /// The user of a client that has not authenticated: everyone is
    /// `default` when authentication is off, nobody when it is on.
    pub fn initial_user(&self) -> Option<Arc<User>> {
        (!self.auth_required).then(|| self.anonymous.clone())
    }

    /// The same user under a reloaded configuration: `None` when it was
    /// removed or disabled (the client must authenticate again).
    pub fn same_user(&self, user: &User) -> Option<Arc<User>> {
        if !self.auth_required {
            return Some(self.anonymous.clone());
        }
        // The anonymous user of an auth-less configuration has no password.
        user.password.as_ref()?;
        self.users
            .get(user.name.as_ref())
            .filter(|u| u.enabled)
            .cloned()
    }

    /// AUTH [user] password. Every password is compared in full, in
    /// constant time, and failures count towards the address's lock-out.
    pub fn authenticate(
        &self,
        ip: IpAddr,
        user: Option<&[u8]>,
        password: &[u8],
    ) -> Result<Arc<User>, Denial> {
        if let Some(until) = self.locked.get(&ip).map(|e| *e.value()) {
            let now = Instant::now();
            if until > now {
                return Err(Denial::LockedOut(until - now));
            }
            self.locked.remove(&ip);
        }
        let name = user
            .map(|u| String::from_utf8_lossy(u).into_owned())
            .unwrap_or_else(|| "default".into());
        let found = self.users.get(&name).filter(|u| u.enabled);
        let expected = found.and_then(|u| u.password.as_deref()).unwrap_or(b"");
        let matches: bool = expected.ct_eq(password).into();
        match found {
            Some(u) if matches && u.password.is_some() => Ok(u.clone()),
            _ => {
                if let Err(not_until) = self.failures.check_key(&ip) {
                    let wait = not_until.wait_time_from(self.failures.clock().now());
                    self.locked
                        .insert(ip, Instant::now() + wait.max(Duration::from_secs(1)));
                    tracing::warn!(%ip, user = %name, "too many failed AUTH attempts; address locked out");
                    return Err(Denial::LockedOut(wait));
                }
                Err(Denial::WrongPass)
            }
        }
    }

    /// Blocklist, read-only and category checks for a command.
    pub fn check_command(
        &self,
        user: &User,
        name: &[u8],
        spec: Option<&Spec>,
        sub: Option<&[u8]>,
    ) -> Result<(), Denial> {
        if let Some(entry) = user.blocklist.blocked(name, sub) {
            return Err(Denial::Blocked(entry));
        }
        let command = || {
            spec.map(|s| s.name.to_string())
                .unwrap_or_else(|| String::from_utf8_lossy(name).to_ascii_lowercase())
        };
        let Some(spec) = spec else {
            // A command keyway cannot classify is not run for a restricted user.
            if user.read_only || !user.categories.is_empty() {
                return Err(Denial::NoPermCommand(command()));
            }
            return Ok(());
        };
        if user.read_only && spec.flags.contains(Flags::WRITE) {
            return Err(Denial::NoPermCommand(command()));
        }
        if !user.categories.is_empty()
            && !user
                .categories
                .iter()
                .any(|c| c == "all" || spec.in_acl_category(c))
        {
            return Err(Denial::NoPermCommand(command()));
        }
        Ok(())
    }

    pub fn check_key(&self, user: &User, key: &[u8]) -> Result<(), Denial> {
        match &user.prefixes {
            Some(prefixes) if !prefixes.iter().any(|p| key.starts_with(p)) => {
                Err(Denial::NoPermKey(key.to_vec()))
            }
            _ => Ok(()),
        }
    }

    pub fn has_limits(&self, pool_scoped: bool) -> bool {
        self.limits.iter().any(|l| l.needs_pool() == pool_scoped)
    }

    /// Every applicable limit must admit the request; a `delay` limit may
    /// wait (bounded) for a slot before refusing.
    pub async fn admit(&self, subject: &Subject<'_>, pool_scoped: bool) -> Result<(), Denial> {
        for limit in self.limits.iter().filter(|l| l.needs_pool() == pool_scoped) {
            let mut result = limit.check(subject);
            if let Err(wait) = result {
                if limit.action == LimitAction::Delay && wait <= limit.max_delay {
                    tokio::time::sleep(wait).await;
                    result = limit.check(subject);
                }
            }
            if let Err(retry_after) = result {
                return Err(Denial::RateLimited {
                    limit: limit.name.clone(),
                    retry_after,
                });
            }
        }
        Ok(())
    }

    /// Drops limiter state for idle keys and expired lock-outs.
    pub fn purge_idle(&self) {
        for l in &self.limits {
            l.purge_idle();
        }
        self.failures.retain_recent();
        let now = Instant::now();
        self.locked.retain(|_, until| *until > now);
    }

    pub fn limits(&self) -> &[Limit] {
        &self.limits
    }
}
