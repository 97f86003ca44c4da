//! A cancellation token as a hand-polled session waits on it: checked on
//! every wait, so the check must cost less than the token's own
//! `is_cancelled` (a mutex). The token's future is polled once, with a
//! waker that raises a flag and wakes the session's task; after that a
//! wait only reads the flag.

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
    /// Polled with `Flag`'s waker, which the cancellation raises.
    Waiting(Arc<Flag>),
    Fired,
}

/// Raised when the token's future wakes; wakes the task that watches it.
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
            WatchState::Waiting(flag) if !flag.raised.load(Ordering::Acquire) => false,
            WatchState::Fired => true,
            // Raised (or first time): the future itself says.
            _ => self.poll(cx),
        }
    }

    #[cold]
    fn poll(&mut self, cx: &mut Context<'_>) -> bool {
        let flag = Arc::new(Flag {
            raised: AtomicBool::new(false),
            task: cx.waker().clone(),
        });
        let waker = Waker::from(Arc::clone(&flag));
        let ready = self
            .future
            .as_mut()
            .poll(&mut Context::from_waker(&waker))
            .is_ready();
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
