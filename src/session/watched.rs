//! What a hand-polled session waits on besides its sockets, checked on
//! every wait: a future is polled with a `WakeFlag` (`crate::wake_flag`)
//! and polled again only once the flag is up. `Watched` is a
//! cancellation token so watched (its own `is_cancelled` takes a mutex);
//! `Output` polls its deadline timer the same way.

use std::pin::Pin;
use std::task::Context;

use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use crate::wake_flag::WakeFlag;

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
    use std::task::{Poll, Waker};

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
