//! The queue of requests waiting for one backend connection's writer.
//! Clients push under a short lock; the writer takes everything queued in
//! one go. The writer is woken only when the queue turns non-empty, since
//! it always empties it: a busy pipeline costs one lock per request and
//! one wake-up per write, not a channel's several atomic steps per request.
//!
//! Beside the items runs a lane of bytes: a sender may copy its request's
//! bytes into it, under the same lock, and the writer takes the lane's
//! bytes of the items it takes. The copy replaces the one the writer made
//! into its write buffer, and spares a reference to the client's read
//! buffer (two atomic operations per request).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use atomic_waker::AtomicWaker;
use bytes::{Buf, BytesMut};
use tokio::sync::Notify;

use super::lock::{HandoffGuard, HandoffLock};

/// What the queue needs to know of an item.
pub trait Item {
    /// The item must be taken together with the one after it (its reply
    /// is covered by that one's destination), so no batch ends on it.
    fn needs_next(&self) -> bool {
        false
    }

    /// How many bytes of the lane are this item's.
    fn lane_len(&self) -> usize {
        0
    }
}

/// Why a request was given back instead of queued.
pub enum Refused<T> {
    /// The queue holds its limit: wait for room or go elsewhere.
    Full(T),
    /// The connection stopped taking requests (retired, or its writer ended).
    Closed(T),
}

struct Queue<T> {
    items: VecDeque<T>,
    /// The items' copied bytes, in their order.
    lane: BytesMut,
    /// A sender found the queue full and waits on `room`.
    awaited: bool,
}

/// Shared by a connection's senders and its writer.
pub struct Outbox<T> {
    queue: HandoffLock<Queue<T>>,
    limit: usize,
    /// Set under the lock, so a push never lands after the writer's last look.
    closed: AtomicBool,
    senders: AtomicUsize,
    writer: AtomicWaker,
    room: Notify,
}

/// One handle of the sending side; the writer ends once every handle is
/// gone and the queue is empty.
pub struct Sender<T>(Arc<Outbox<T>>);

/// The writer's side. Dropping it closes the queue and drops what is still
/// queued, which reports each loss to its client.
pub struct Receiver<T>(Arc<Outbox<T>>);

pub fn outbox<T>(limit: usize) -> (Sender<T>, Receiver<T>) {
    let shared = Arc::new(Outbox {
        queue: HandoffLock::new(Queue {
            items: VecDeque::new(),
            lane: BytesMut::new(),
            awaited: false,
        }),
        limit,
        closed: AtomicBool::new(false),
        senders: AtomicUsize::new(1),
        writer: AtomicWaker::new(),
        room: Notify::new(),
    });
    (Sender(shared.clone()), Receiver(shared))
}

impl<T> Outbox<T> {
    fn queue(&self) -> HandoffGuard<'_, Queue<T>> {
        self.queue.lock()
    }

    /// Stops taking requests; returns what was queued, to be dropped by the
    /// caller outside the lock.
    fn close(&self) -> VecDeque<T> {
        let left = {
            let mut queue = self.queue();
            self.closed.store(true, Ordering::Release);
            queue.lane = BytesMut::new();
            std::mem::take(&mut queue.items)
        };
        self.room.notify_waiters();
        left
    }
}

impl<T> Sender<T> {
    /// Queues `item` without waiting.
    #[cfg(test)]
    pub fn try_send(&self, item: T) -> Result<(), Refused<T>> {
        self.try_send_with(item, |item, _, _| item)
    }

    /// Queues the item `make` builds from `value`, without waiting, under
    /// the queue's lock: `make` sees the item queued last while the writer
    /// has not taken it yet, and may move part of it into the new one; it
    /// may append the new item's bytes to the lane (its `lane_len`).
    /// Refused, `value` is given back and `make` not called.
    pub fn try_send_with<V>(
        &self,
        value: V,
        make: impl FnOnce(V, Option<&mut T>, &mut BytesMut) -> T,
    ) -> Result<(), Refused<V>> {
        let was_empty = {
            let mut queue = self.0.queue();
            if self.0.closed.load(Ordering::Relaxed) {
                return Err(Refused::Closed(value));
            }
            if queue.items.len() >= self.0.limit {
                queue.awaited = true;
                return Err(Refused::Full(value));
            }
            let Queue { items, lane, .. } = &mut *queue;
            let item = make(value, items.back_mut(), lane);
            items.push_back(item);
            queue.items.len() == 1
        };
        if was_empty {
            self.0.writer.wake();
        }
        Ok(())
    }

    /// Queues `item`, waiting for room; `Err` gives it back once closed.
    #[cfg(test)]
    pub async fn send(&self, item: T) -> Result<(), T> {
        self.send_with(item, |item, _, _| item).await
    }

    /// `try_send_with`, waiting for room; `Err` gives `value` back once
    /// closed.
    pub async fn send_with<V>(
        &self,
        mut value: V,
        make: impl Fn(V, Option<&mut T>, &mut BytesMut) -> T,
    ) -> Result<(), V> {
        loop {
            let room = self.0.room.notified();
            tokio::pin!(room);
            // Registered before trying, so room made in between is not missed.
            room.as_mut().enable();
            match self.try_send_with(value, &make) {
                Ok(()) => return Ok(()),
                Err(Refused::Closed(back)) => return Err(back),
                Err(Refused::Full(back)) => value = back,
            }
            room.await;
        }
    }

    pub fn is_closed(&self) -> bool {
        self.0.closed.load(Ordering::Acquire)
    }
}

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        self.0.senders.fetch_add(1, Ordering::Relaxed);
        Sender(self.0.clone())
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        if self.0.senders.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.writer.wake();
        }
    }
}

impl<T: Item> Receiver<T> {
    /// Waits for requests and moves up to `limit` of them to `into`, and
    /// their bytes of the lane to the end of `lane`; 0 once the queue is
    /// closed or has no senders, and is empty.
    #[cfg(test)]
    pub async fn recv_many(
        &mut self,
        into: &mut Vec<T>,
        limit: usize,
        lane: &mut BytesMut,
    ) -> usize {
        std::future::poll_fn(|cx| self.poll_recv_many(cx, into, limit, lane)).await
    }

    /// `recv_many` as a poll, for a writer that waits on more than this.
    pub fn poll_recv_many(
        &mut self,
        cx: &mut Context<'_>,
        into: &mut Vec<T>,
        limit: usize,
        lane: &mut BytesMut,
    ) -> Poll<usize> {
        self.0.writer.register(cx.waker());
        match self.try_recv_many(into, limit, lane) {
            0 if self.0.closed.load(Ordering::Acquire)
                || self.0.senders.load(Ordering::Acquire) == 0 =>
            {
                // Queued after the look above? Closed queues take nothing.
                Poll::Ready(self.try_recv_many(into, limit, lane))
            }
            0 => Poll::Pending,
            n => Poll::Ready(n),
        }
    }

    /// Moves up to `limit` queued requests to `into`, and their bytes of
    /// the lane to the end of `lane`, without waiting.
    pub fn try_recv_many(&mut self, into: &mut Vec<T>, limit: usize, lane: &mut BytesMut) -> usize {
        let (taken, awaited) = {
            let mut queue = self.0.queue();
            let queue = &mut *queue;
            let mut n = queue.items.len().min(limit);
            // Past the limit rather than split a run of replies.
            while n > 0 && n < queue.items.len() && queue.items[n - 1].needs_next() {
                n += 1;
            }
            if n == 0 {
                // Nothing to take: the lane is empty too.
            } else if n == queue.items.len() && lane.is_empty() {
                // The usual case: everything, by trading buffers.
                std::mem::swap(lane, &mut queue.lane);
            } else {
                let bytes = match n == queue.items.len() {
                    true => queue.lane.len(),
                    false => queue.items.iter().take(n).map(Item::lane_len).sum(),
                };
                lane.extend_from_slice(&queue.lane[..bytes]);
                queue.lane.advance(bytes);
            }
            into.extend(queue.items.drain(..n));
            (n, n > 0 && std::mem::take(&mut queue.awaited))
        };
        if awaited {
            self.0.room.notify_waiters();
        }
        taken
    }

    /// Stops taking new requests; those queued are still received.
    pub fn close(&mut self) {
        {
            let _queue = self.0.queue();
            self.0.closed.store(true, Ordering::Release);
        }
        self.0.room.notify_waiters();
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        drop(self.0.close());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl Item for u32 {}
    impl Item for Arc<()> {}

    #[tokio::test]
    async fn the_writer_takes_in_order_and_ends_with_its_senders() {
        let (tx, mut rx) = outbox::<u32>(8);
        let tx2 = tx.clone();
        for i in 0..3 {
            assert!(tx.try_send(i).is_ok());
        }
        assert!(tx2.try_send(3).is_ok());
        let mut got = Vec::new();
        assert_eq!(rx.recv_many(&mut got, 2, &mut BytesMut::new()).await, 2);
        assert_eq!(rx.recv_many(&mut got, 10, &mut BytesMut::new()).await, 2);
        assert_eq!(got, vec![0, 1, 2, 3]);
        drop(tx);
        drop(tx2);
        assert_eq!(rx.recv_many(&mut got, 10, &mut BytesMut::new()).await, 0);
    }

    #[tokio::test]
    async fn a_full_queue_refuses_then_admits_a_waiting_sender() {
        let (tx, mut rx) = outbox::<u32>(2);
        assert!(tx.try_send(1).is_ok());
        assert!(tx.try_send(2).is_ok());
        assert!(matches!(tx.try_send(3), Err(Refused::Full(3))));
        let waiting = tokio::spawn(async move { tx.send(3).await.is_ok() });
        tokio::task::yield_now().await;
        let mut got = Vec::new();
        rx.recv_many(&mut got, 10, &mut BytesMut::new()).await;
        assert!(waiting.await.unwrap_or(false));
        rx.recv_many(&mut got, 10, &mut BytesMut::new()).await;
        assert_eq!(got, vec![1, 2, 3]);
    }

    #[tokio::test]
    async fn closing_refuses_new_requests_but_keeps_those_queued() {
        let (tx, mut rx) = outbox::<u32>(4);
        assert!(tx.try_send(1).is_ok());
        rx.close();
        assert!(tx.is_closed());
        assert!(matches!(tx.try_send(2), Err(Refused::Closed(2))));
        let mut got = Vec::new();
        assert_eq!(rx.recv_many(&mut got, 10, &mut BytesMut::new()).await, 1);
        assert_eq!(rx.recv_many(&mut got, 10, &mut BytesMut::new()).await, 0);
    }

    #[tokio::test]
    async fn a_dropped_writer_drops_what_was_queued_and_closes() {
        let (tx, rx) = outbox::<Arc<()>>(4);
        let item = Arc::new(());
        assert!(tx.try_send(item.clone()).is_ok());
        drop(rx);
        assert_eq!(Arc::strong_count(&item), 1);
        assert!(tx.is_closed());
        assert!(matches!(tx.try_send(item), Err(Refused::Closed(_))));
    }

    #[derive(Debug, PartialEq)]
    struct Linked(u32, bool);

    impl Item for Linked {
        fn needs_next(&self) -> bool {
            self.1
        }
    }

    #[tokio::test]
    async fn a_batch_does_not_end_inside_a_run() {
        let (tx, mut rx) = outbox::<Linked>(8);
        for (i, linked) in [(0, true), (1, true), (2, false), (3, false)] {
            assert!(tx.try_send(Linked(i, linked)).is_ok());
        }
        let mut got = Vec::new();
        assert_eq!(rx.recv_many(&mut got, 1, &mut BytesMut::new()).await, 3);
        assert_eq!(rx.recv_many(&mut got, 1, &mut BytesMut::new()).await, 1);
        assert_eq!(
            got.iter().map(|l| l.0).collect::<Vec<_>>(),
            vec![0, 1, 2, 3]
        );
    }

    /// An item with `.1` bytes of the lane.
    #[derive(Debug, PartialEq)]
    struct Copied(u32, usize);

    impl Item for Copied {
        fn lane_len(&self) -> usize {
            self.1
        }
    }

    fn copy(tx: &Sender<Copied>, i: u32, bytes: &[u8]) {
        let sent = tx.try_send_with(i, |i, _, lane| {
            lane.extend_from_slice(bytes);
            Copied(i, bytes.len())
        });
        assert!(sent.is_ok());
    }

    #[tokio::test]
    async fn the_writer_takes_the_lane_bytes_of_the_items_it_takes() {
        let (tx, mut rx) = outbox::<Copied>(8);
        copy(&tx, 0, b"one ");
        copy(&tx, 1, b"");
        copy(&tx, 2, b"two ");
        copy(&tx, 3, b"three");
        let (mut got, mut lane) = (Vec::new(), BytesMut::new());
        // Part of the queue: its bytes are copied out, the rest stay.
        assert_eq!(rx.recv_many(&mut got, 2, &mut lane).await, 2);
        assert_eq!(&lane[..], b"one ");
        copy(&tx, 4, b" four");
        // The rest, after what the writer holds already.
        assert_eq!(rx.recv_many(&mut got, 8, &mut lane).await, 3);
        assert_eq!(&lane[..], b"one two three four");
        lane.clear();
        copy(&tx, 5, b"five");
        // Everything into an empty lane: the buffers trade places.
        assert_eq!(rx.recv_many(&mut got, 8, &mut lane).await, 1);
        assert_eq!(&lane[..], b"five");
        assert_eq!(
            got.iter().map(|c| c.0).collect::<Vec<_>>(),
            vec![0, 1, 2, 3, 4, 5]
        );
        // Closed: the lane goes with the items.
        copy(&tx, 6, b"six");
        drop(rx);
        assert!(matches!(
            tx.try_send_with(7, |i, _, _| Copied(i, 0)),
            Err(Refused::Closed(7))
        ));
    }

    #[tokio::test]
    async fn a_new_item_sees_the_one_queued_last_until_the_writer_takes_it() {
        let (tx, mut rx) = outbox::<u32>(8);
        let first = tx.try_send_with(1, |v, last, _| {
            assert!(last.is_none());
            v
        });
        assert!(first.is_ok());
        let second = tx.try_send_with(2, |v, last, _| {
            if let Some(last) = last {
                *last += 10;
            }
            v
        });
        assert!(second.is_ok());
        let mut got = Vec::new();
        rx.recv_many(&mut got, 10, &mut BytesMut::new()).await;
        let third = tx.try_send_with(3, |v, last, _| {
            assert!(last.is_none());
            v
        });
        assert!(third.is_ok());
        assert_eq!(got, vec![11, 2]);
        drop(rx);
        assert!(matches!(
            tx.try_send_with(4, |v, _, _| v),
            Err(Refused::Closed(4))
        ));
    }
}
