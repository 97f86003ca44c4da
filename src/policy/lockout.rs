//! Failed AUTH attempts, throttled per (address, user name) so that one
//! tenant's failures never lock out another user, with a lock that doubles
//! each time it is earned again (up to `MAX_LOCK`). A guesser rotating
//! source addresses is held by a second, per-user limit, which spares the
//! addresses that user has already authenticated from: in a sidecar the
//! application's own 127.0.0.1 keeps working while the user is attacked.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::DashMap;
use governor::clock::Clock;
use governor::{DefaultKeyedRateLimiter, Quota};

use super::Denial;

/// The key of every user name keyway does not know.
pub const UNKNOWN_USER: &str = "(unknown)";
const MAX_LOCK: Duration = Duration::from_secs(300);
/// Across all addresses, a user may fail this many times the per-address
/// allowance per minute before unknown addresses are locked out.
const FLEET_FACTOR: u32 = 10;
/// How long a successful address stays trusted, and the most kept.
const TRUST_FOR: Duration = Duration::from_secs(3600);
const MAX_TRUSTED: usize = 65_536;

type Key = (IpAddr, Arc<str>);

struct Lock {
    until: Instant,
    /// Locks earned in a row; each doubles the next one.
    strikes: u32,
}

pub struct Lockout {
    /// `auth.max_failures_per_minute`: a reload keeps this state while it
    /// stays the same.
    pub per_minute: NonZeroU32,
    per_address: DefaultKeyedRateLimiter<Key>,
    per_user: DefaultKeyedRateLimiter<Arc<str>>,
    locked: DashMap<Key, Lock>,
    /// Users whose failures across all addresses passed the per-user limit,
    /// until when; bounded by the configured users (unknown names share one).
    attacked: DashMap<Arc<str>, Instant>,
    /// (address, user) pairs that authenticated, and when.
    trusted: DashMap<Key, Instant>,
}

impl Lockout {
    pub fn new(per_minute: NonZeroU32) -> Lockout {
        let fleet =
            per_minute.saturating_mul(NonZeroU32::new(FLEET_FACTOR).unwrap_or(NonZeroU32::MIN));
        Lockout {
            per_minute,
            per_address: DefaultKeyedRateLimiter::dashmap(Quota::per_minute(per_minute)),
            per_user: DefaultKeyedRateLimiter::dashmap(Quota::per_minute(fleet)),
            locked: DashMap::new(),
            attacked: DashMap::new(),
            trusted: DashMap::new(),
        }
    }

    /// Refuses an attempt while `user` is locked out from `ip`, before the
    /// password is looked at.
    pub fn check(&self, ip: IpAddr, user: &str) -> Result<(), Denial> {
        let key = (ip, Arc::from(user));
        if let Some(lock) = self.locked.get(&key) {
            let now = Instant::now();
            if lock.until > now {
                return Err(Denial::LockedOut(lock.until - now));
            }
        }
        // Under a guessing attack from many addresses, only addresses the
        // user already authenticated from may try.
        let attacked = self
            .attacked
            .get(&key.1)
            .is_some_and(|until| *until > Instant::now());
        if attacked && !self.is_trusted(&key) {
            return Err(Denial::LockedOut(Duration::from_secs(60)));
        }
        Ok(())
    }

    pub fn succeeded(&self, ip: IpAddr, user: &str) {
        let key = (ip, Arc::from(user));
        self.locked.remove(&key);
        if self.trusted.len() >= MAX_TRUSTED {
            self.trusted.retain(|_, at| at.elapsed() < TRUST_FOR);
        }
        if self.trusted.len() < MAX_TRUSTED {
            self.trusted.insert(key, Instant::now());
        }
    }

    /// Counts a failure; `Err` with the lock's length once it earns one.
    pub fn failed(&self, ip: IpAddr, user: &str) -> Result<(), Duration> {
        let key = (ip, Arc::from(user));
        if self.per_user.check_key(&key.1).is_err() {
            self.attacked
                .insert(key.1.clone(), Instant::now() + Duration::from_secs(60));
        }
        let Err(not_until) = self.per_address.check_key(&key) else {
            return Ok(());
        };
        let wait = not_until
            .wait_time_from(self.per_address.clock().now())
            .max(Duration::from_secs(1));
        let mut lock = self.locked.entry(key).or_insert(Lock {
            until: Instant::now(),
            strikes: 0,
        });
        let backoff = wait.saturating_mul(1 << lock.strikes.min(16)).min(MAX_LOCK);
        lock.strikes = lock.strikes.saturating_add(1);
        lock.until = Instant::now() + backoff;
        Err(backoff)
    }

    /// Drops limiter state for idle keys, and locks (with their strikes)
    /// that ended longer than the longest lock ago.
    pub fn purge_idle(&self) {
        self.per_address.retain_recent();
        self.per_user.retain_recent();
        let now = Instant::now();
        self.locked.retain(|_, lock| lock.until + MAX_LOCK > now);
        self.attacked.retain(|_, until| *until > now);
        self.trusted.retain(|_, at| at.elapsed() < TRUST_FOR);
    }

    fn is_trusted(&self, key: &Key) -> bool {
        self.trusted
            .get(key)
            .is_some_and(|at| at.elapsed() < TRUST_FOR)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([127, 0, 0, last])
    }

    #[test]
    fn failures_lock_one_user_at_one_address_with_backoff() {
        let l = Lockout::new(NonZeroU32::new(2).unwrap());
        assert!(l.failed(ip(1), "app").is_ok());
        assert!(l.failed(ip(1), "app").is_ok());
        let first = l.failed(ip(1), "app").unwrap_err();
        assert!(l.check(ip(1), "app").is_err());
        // Another user at the same address, the same user elsewhere: free.
        assert!(l.check(ip(1), "reader").is_ok());
        assert!(l.check(ip(2), "app").is_ok());
        let second = l.failed(ip(1), "app").unwrap_err();
        assert!(second > first, "{second:?} after {first:?}");
    }

    #[test]
    fn rotating_addresses_are_held_but_a_trusted_one_is_not() {
        let l = Lockout::new(NonZeroU32::new(2).unwrap());
        l.succeeded(ip(1), "app");
        for last in 10..40 {
            let _ = l.failed(ip(last), "app");
        }
        assert!(l.check(ip(200), "app").is_err(), "a new address is held");
        assert!(
            l.check(ip(1), "app").is_ok(),
            "the app's own address is not"
        );
        assert!(l.check(ip(200), "reader").is_ok(), "other users are not");
    }
}
