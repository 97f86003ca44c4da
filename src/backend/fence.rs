//! Holding a pool's writes while Sentinel moves its master. From the
//! moment a sentinel announces `+try-failover` until keyway has confirmed
//! the new master (or the failover is aborted, or `MAX_FENCE` passes),
//! writes to the pool wait instead of going to the old master, where they
//! would be acknowledged and then discarded when it is demoted. Reads go
//! on as before.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

/// Longest a fence stands without a confirmed new master.
pub const MAX_FENCE: Duration = Duration::from_secs(30);

#[derive(Default)]
pub struct Fence {
    raised: AtomicBool,
    lifted: Notify,
}

impl Fence {
    /// Raises the fence; true when it was down.
    pub fn raise(&self) -> bool {
        !self.raised.swap(true, Ordering::AcqRel)
    }

    /// Lifts the fence and wakes every held write; true when it was up.
    pub fn lift(&self) -> bool {
        let was = self.raised.swap(false, Ordering::AcqRel);
        self.lifted.notify_waiters();
        was
    }

    pub fn is_raised(&self) -> bool {
        self.raised.load(Ordering::Acquire)
    }

    /// Waits until the fence is lifted, at most until `deadline`; true
    /// when it was lifted.
    pub async fn wait_lifted(&self, deadline: Instant) -> bool {
        loop {
            let notified = self.lifted.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if !self.is_raised() {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return !self.is_raised();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn held_until_lifted_or_deadline() {
        let fence = std::sync::Arc::new(Fence::default());
        assert!(fence.wait_lifted(Instant::now()).await, "down: no wait");
        assert!(fence.raise());
        assert!(!fence.raise());
        let soon = Instant::now() + Duration::from_millis(20);
        assert!(!fence.wait_lifted(soon).await, "still up at the deadline");
        let lifter = fence.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(10)).await;
            lifter.lift();
        });
        let later = Instant::now() + Duration::from_secs(5);
        assert!(fence.wait_lifted(later).await);
    }
}
