//! Exponential backoff with jitter, for reconnecting to backends and
//! sentinels: keyways (and pools) that lost the same server do not all
//! come back to it at the same instant.

use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

/// Doubles from `min` up to `max` with each failure; `reset` on success.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    failures: u32,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Backoff {
        Backoff {
            min,
            max: max.max(min),
            failures: 0,
        }
    }

    /// The wait after one more failure.
    pub fn next_wait(&mut self) -> Duration {
        let exp = self.failures.min(16);
        self.failures = self.failures.saturating_add(1);
        jitter(self.min.saturating_mul(1 << exp).min(self.max))
    }

    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

/// Between half of `wait` and all of it, at random.
pub fn jitter(wait: Duration) -> Duration {
    // A fresh std RandomState is randomly keyed: enough for spreading retries.
    let random = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    let half = wait / 2;
    let nanos = half.as_nanos().min(u64::MAX as u128) as u64;
    half + Duration::from_nanos(if nanos == 0 { 0 } else { random % (nanos + 1) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_with_jitter() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let waits: Vec<Duration> = (0..6).map(|_| b.next_wait()).collect();
        for (wait, full) in waits.iter().zip([100, 200, 400, 800, 1000, 1000]) {
            let full = Duration::from_millis(full);
            assert!(*wait >= full / 2 && *wait <= full, "{wait:?} of {full:?}");
        }
        b.reset();
        assert!(b.next_wait() <= Duration::from_millis(100));
        // Not all equal: the jitter spreads them.
        let spread: std::collections::HashSet<Duration> =
            (0..20).map(|_| jitter(Duration::from_secs(1))).collect();
        assert!(spread.len() > 1);
    }
}
