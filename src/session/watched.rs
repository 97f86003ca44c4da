//! What a hand-polled session waits on besides its sockets, checked on
//! every wait: a future is polled with a `WakeFlag`, a waker that raises
//! a flag and wakes the session's task, and is polled again only once
//! the flag is up. `Watched` is a cancellation token so watched (its own
//! `is_cancelled` takes a mutex); `Output` polls its deadline timer the
//! same way.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Wake, Waker};

use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

pub(super) struct Watched {
    future: Pin<Box<WaitForCancellationFutureOwned>>,
    state: WatchState,
}

enum WatchState {
    /// Not polled yet: no task is registered.
    Unregistered,
    /// Polled with a `WakeFlag`, which the cancellation raises.
    Waiting(WakeFlag),
    Fired,
}

/// A waker that raises a flag, then wakes the task it was made for.
pub(super) struct WakeFlag(Arc<Flag>);

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
    pub(super) fn new(task: &Waker) -> WakeFlag {
        WakeFlag(Arc::new(Flag {
            raised: AtomicBool::new(false),
            task: task.clone(),
        }))
    }

    /// Whatever was polled with `waker` may be ready now.
    #[inline]
    pub(super) fn raised(&self) -> bool {
        self.0.raised.load(Ordering::Acquire)
    }

    pub(super) fn waker(&self) -> Waker {
        Waker::from(Arc::clone(&self.0))
    }

    /// Polls `future` with a new flag for `cx`'s task; the flag comes
    /// back for the next check.
    pub(super) fn poll<F: Future + ?Sized>(
        future: Pin<&mut F>,
        cx: &Context<'_>,
    ) -> (bool, WakeFlag) {
        let flag = WakeFlag::new(cx.waker());
        let ready = future
            .poll(&mut Context::from_waker(&flag.waker()))
            .is_ready();
        (ready, flag)
    }
}

impl Watched {
    pub(super) fn new(token: CancellationToken) -> Watched {
        Watched {
            future: Box::pin(token.cancelled_owned()),
            state: WatchState::Unregistered,
        }
    }

    /// Whether the token was cancelled. The first call registers the
    /// task of `cx`; a session is one task, so later calls need not.
    #[inline]
    pub(super) fn fired(&mut self, cx: &mut Context<'_>) -> bool {
        match &self.state {
            WatchState::Waiting(flag) if !flag.raised() => false,
            WatchState::Fired => true,
            // Raised (or first time): the future itself says.
            _ => self.poll(cx),
        }
    }

    #[cold]
    fn poll(&mut self, cx: &mut Context<'_>) -> bool {
        let (ready, flag) = WakeFlag::poll(self.future.as_mut(), cx);
        self.state = match ready {
            true => WatchState::Fired,
            false => WatchState::Waiting(flag),
        };
        ready
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::poll_fn;
    use std::task::Poll;

    #[tokio::test]
    async fn fires_once_cancelled_and_wakes_the_task() {
        let token = CancellationToken::new();
        let mut watched = Watched::new(token.clone());
        let canceller = token.clone();
        tokio::spawn(async move {
            tokio::task::yield_now().await;
            canceller.cancel();
        });
        let mut polls = 0;
        // Pending until cancelled; woken by the cancellation, not by polling.
        poll_fn(|cx| {
            polls += 1;
            if watched.fired(cx) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await;
        assert!(polls >= 2);
        assert!(watched.fired(&mut Context::from_waker(Waker::noop())));
    }

    #[test]
    fn an_already_cancelled_token_fires_at_once() {
        let token = CancellationToken::new();
        token.cancel();
        let mut watched = Watched::new(token);
        assert!(watched.fired(&mut Context::from_waker(Waker::noop())));
    }
}
