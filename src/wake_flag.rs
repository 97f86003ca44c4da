//! A waker that raises a flag, then wakes the task it was made for: a
//! task that polls something besides its main work on every turn (a
//! cancellation, a timer, a retirement notice) polls it again only once
//! the flag says it may be ready, instead of re-entering its future
//! (locks, waker registration) each time.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Wake, Waker};

/// A waker that raises a flag, then wakes the task it was made for.
pub struct WakeFlag(Arc<Flag>);

struct Flag {
    raised: AtomicBool,
    task: Waker,
}

impl Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.raised.store(true, Ordering::Release);
        self.task.wake_by_ref();
    }
}

impl WakeFlag {
    pub fn new(task: &Waker) -> WakeFlag {
        WakeFlag(Arc::new(Flag {
            raised: AtomicBool::new(false),
            task: task.clone(),
        }))
    }

    /// Whatever was polled with `waker` may be ready now.
    #[inline]
    pub fn raised(&self) -> bool {
        self.0.raised.load(Ordering::Acquire)
    }

    pub fn waker(&self) -> Waker {
        Waker::from(Arc::clone(&self.0))
    }

    /// Polls `future` with a new flag for `cx`'s task; the flag comes
    /// back for the next check.
    pub fn poll<F: Future + ?Sized>(future: Pin<&mut F>, cx: &Context<'_>) -> (bool, WakeFlag) {
        let flag = WakeFlag::new(cx.waker());
        let ready = future
            .poll(&mut Context::from_waker(&flag.waker()))
            .is_ready();
        (ready, flag)
    }
}
