//! The lock of the per-request hand-offs: a client's reply inbox, a
//! connection's outbox and its requests in flight. Each is held for a
//! push, a swap or a drain, never across anything that waits.
//!
//! A spin lock, because releasing it is a plain store: std's `Mutex`
//! releases with a second atomic read-modify-write (to find sleepers to
//! wake), and under `perf annotate` that release was most of the cost of
//! handing a reply to its client. Nothing sleeps on these locks; a holder
//! preempted on another worker thread costs the others a few spins and
//! then yields, not a spinning core.

use spinning_top::lock_api;
use spinning_top::relax::Relax;
use spinning_top::RawSpinlock;

pub type HandoffLock<T> = lock_api::Mutex<RawSpinlock<SpinThenYield>, T>;
pub type HandoffGuard<'a, T> = lock_api::MutexGuard<'a, RawSpinlock<SpinThenYield>, T>;

/// Spins while the holder is likely running, then gives the thread up.
#[derive(Default)]
pub struct SpinThenYield(u32);

/// Spins before yielding: far longer than any hand-off holds the lock.
const SPINS: u32 = 64;

impl Relax for SpinThenYield {
    fn relax(&mut self) {
        if self.0 < SPINS {
            self.0 += 1;
            std::hint::spin_loop();
        } else {
            std::thread::yield_now();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn threads_pushing_under_the_lock_lose_nothing() {
        let lock = Arc::new(HandoffLock::new(Vec::new()));
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let lock = Arc::clone(&lock);
                std::thread::spawn(move || {
                    for i in 0..10_000 {
                        lock.lock().push(t * 10_000 + i);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("pusher");
        }
        let mut all = lock.lock().clone();
        all.sort_unstable();
        assert_eq!(all, (0..40_000).collect::<Vec<_>>());
    }
}
