//! Each user's share of a pool's held leases. Subscriptions, blocking
//! commands and WATCH keep a leased connection as long as their client
//! likes; without a share, one tenant's many subscribers could hold every
//! lease of a pool and every other tenant's SUBSCRIBE, BLPOP or WATCH
//! would be refused. With several users configured, one user holds at most
//! `backend.max_dedicated_per_user` of them at once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::BackendError;

/// Who a held lease is for.
#[derive(Debug, Clone)]
pub struct Tenant {
    pub user: Arc<str>,
    /// Several users are configured: this one is held to its share.
    pub shared: bool,
}

/// The held leases of each user of one pool.
#[derive(Debug, Default)]
pub(super) struct TenantLeases {
    held: Arc<Mutex<HashMap<Arc<str>, usize>>>,
}

/// One of a user's held leases; gives its place back when dropped.
#[derive(Debug)]
pub(super) struct TenantPermit {
    held: Arc<Mutex<HashMap<Arc<str>, usize>>>,
    user: Arc<str>,
}

impl TenantLeases {
    /// A place for one more lease of `tenant`, if it is below `share`.
    pub(super) fn take(
        &self,
        tenant: &Tenant,
        share: usize,
        pool: &str,
    ) -> Result<TenantPermit, BackendError> {
        let mut held = lock(&self.held);
        let count = held.entry(tenant.user.clone()).or_insert(0);
        if *count >= share {
            return Err(BackendError::TenantLeasesExhausted {
                pool: pool.to_string(),
                user: tenant.user.to_string(),
                limit: share,
            });
        }
        *count += 1;
        Ok(TenantPermit {
            held: self.held.clone(),
            user: tenant.user.clone(),
        })
    }

    #[cfg(test)]
    fn held_by(&self, user: &str) -> usize {
        lock(&self.held).get(user).copied().unwrap_or(0)
    }
}

impl Drop for TenantPermit {
    fn drop(&mut self) {
        let mut held = lock(&self.held);
        if let Some(count) = held.get_mut(&self.user) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                // Users that hold nothing keep no entry.
                held.remove(&self.user);
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_user_holds_at_most_its_share_and_gets_places_back() {
        let leases = TenantLeases::default();
        let app = Tenant {
            user: "app".into(),
            shared: true,
        };
        let other = Tenant {
            user: "other".into(),
            shared: true,
        };
        let first = leases.take(&app, 2, "cache").unwrap();
        let _second = leases.take(&app, 2, "cache").unwrap();
        let refused = leases.take(&app, 2, "cache").unwrap_err();
        assert_eq!(
            refused.to_string(),
            "backend 'cache' has no free dedicated connection for user 'app' (its limit 2 reached)"
        );
        // Another user's share is its own.
        let _theirs = leases.take(&other, 2, "cache").unwrap();
        drop(first);
        assert_eq!(leases.held_by("app"), 1);
        let _again = leases.take(&app, 2, "cache").unwrap();
        drop((_second, _again));
        assert_eq!(leases.held_by("app"), 0);
        assert!(!lock(&leases.held).contains_key("app"));
    }
}
