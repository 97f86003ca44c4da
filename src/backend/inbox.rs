//! Where the reply to a forwarded request goes. A client's ordinary
//! requests all answer into one inbox of its own, tagged with the request's
//! position, so forwarding allocates nothing per request; one-off requests
//! (fan-out parts, retries) get a oneshot channel.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use atomic_waker::AtomicWaker;
use bytes::Bytes;
use tokio::sync::oneshot;

use super::lock::{HandoffGuard, HandoffLock};

/// A one-off reply on its way; a dropped sender means the connection was lost.
pub type ReplyRx = oneshot::Receiver<Bytes>;

/// A reply that reached an inbox: `None` when the connection was lost
/// with the request in flight.
pub struct Arrival {
    pub seq: u64,
    pub reply: Option<Bytes>,
}

/// One client's forwarded replies, in the order the backends answered.
/// Read only by the client's session; written by backend readers.
#[derive(Default)]
pub struct Inbox {
    arrived: HandoffLock<VecDeque<Arrival>>,
    waker: AtomicWaker,
    /// The client is gone: replies still in flight are dropped on arrival.
    closed: AtomicBool,
}

impl Inbox {
    pub fn new() -> Arc<Inbox> {
        Arc::new(Inbox::default())
    }

    fn arrived(&self) -> HandoffGuard<'_, VecDeque<Arrival>> {
        self.arrived.lock()
    }

    fn deliver(&self, seq: u64, reply: Option<Bytes>) {
        if self.closed.load(Ordering::Relaxed) {
            return;
        }
        let was_empty = {
            let mut arrived = self.arrived();
            arrived.push_back(Arrival { seq, reply });
            arrived.len() == 1
        };
        // The session takes every arrival at once, so a non-empty queue
        // already has its wake-up on the way.
        if was_empty {
            self.waker.wake();
        }
    }

    /// Called when the client goes: frees what arrived and drops what
    /// arrives later.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Relaxed);
        self.arrived().clear();
    }

    /// Ready once something arrived; arrivals are taken with `take_into`.
    pub fn poll_arrived(&self, cx: &mut Context<'_>) -> Poll<()> {
        self.waker.register(cx.waker());
        if self.arrived().is_empty() {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    }

    /// Moves every arrival into `into` (empty), swapping buffers so neither
    /// side allocates once both have grown to the client's pipeline depth.
    pub fn take_into(&self, into: &mut VecDeque<Arrival>) {
        std::mem::swap(&mut *self.arrived(), into);
    }
}

/// The destination of one reply, or of a run of one client's replies in
/// a row on one connection. Dropped before every reply came (the
/// connection closed, the request never left), it reports each reply
/// still owed as lost, as a dropped oneshot sender does.
pub struct ReplyTo(Option<Destination>);

enum Destination {
    Once(oneshot::Sender<Bytes>),
    /// Replies `next..end` owed to the client that owns `inbox`: one
    /// reference for a client's whole run on a connection, not one per
    /// request (its count was an atomic operation on both sides).
    Inbox {
        inbox: Arc<Inbox>,
        next: u64,
        end: u64,
    },
}

impl ReplyTo {
    /// A one-off destination and the receiver its reply arrives on.
    pub fn once() -> (ReplyTo, ReplyRx) {
        let (tx, rx) = oneshot::channel();
        (ReplyTo(Some(Destination::Once(tx))), rx)
    }

    /// The `seq`-th reply owed to the client that owns `inbox`.
    pub fn inbox(inbox: &Arc<Inbox>, seq: u64) -> ReplyTo {
        ReplyTo(Some(Destination::Inbox {
            inbox: Arc::clone(inbox),
            next: seq,
            end: seq + 1,
        }))
    }

    /// This run, taken and extended by reply `seq` of `inbox`, if `seq`
    /// comes right after its last; `None` (and this one unchanged) if not.
    pub fn extended(&mut self, inbox: &Arc<Inbox>, seq: u64) -> Option<ReplyTo> {
        match &mut self.0 {
            Some(Destination::Inbox {
                inbox: own, end, ..
            }) if *end == seq && Arc::ptr_eq(own, inbox) => {
                *end += 1;
                Some(ReplyTo(self.0.take()))
            }
            _ => None,
        }
    }

    /// Forgets the destination without a reply: for a request that was
    /// never sent, so no loss is reported.
    pub fn disarm(mut self) {
        self.0 = None;
    }

    /// Delivers one reply, the whole of what this destination expects.
    pub fn send(mut self, reply: Bytes) {
        self.send_next(reply);
    }

    /// Delivers the next reply; true once nothing more is expected here.
    pub fn send_next(&mut self, reply: Bytes) -> bool {
        match &mut self.0 {
            Some(Destination::Inbox { inbox, next, end }) => {
                inbox.deliver(*next, Some(reply));
                *next += 1;
                if *next < *end {
                    return false;
                }
                self.0 = None;
            }
            Some(Destination::Once(_)) => {
                if let Some(Destination::Once(tx)) = self.0.take() {
                    let _ = tx.send(reply);
                }
            }
            None => {}
        }
        true
    }
}

impl Drop for ReplyTo {
    fn drop(&mut self) {
        if let Some(Destination::Inbox { inbox, next, end }) = self.0.take() {
            for seq in next..end {
                inbox.deliver(seq, None);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dropped_destination_reports_the_loss() {
        let inbox = Inbox::new();
        ReplyTo::inbox(&inbox, 7).send(Bytes::from_static(b"+OK\r\n"));
        drop(ReplyTo::inbox(&inbox, 8));
        let mut got = VecDeque::new();
        inbox.take_into(&mut got);
        let got: Vec<_> = got.into_iter().map(|a| (a.seq, a.reply)).collect();
        assert_eq!(
            got,
            vec![(7, Some(Bytes::from_static(b"+OK\r\n"))), (8, None)]
        );
    }

    #[test]
    fn a_run_delivers_in_order_and_reports_what_it_still_owed() {
        let inbox = Inbox::new();
        let other = Inbox::new();
        let mut first = ReplyTo::inbox(&inbox, 3);
        // Only the reply right after the run's last, of the same client.
        assert!(first.extended(&inbox, 5).is_none());
        assert!(first.extended(&other, 4).is_none());
        let mut run = first.extended(&inbox, 4).expect("extends");
        // The reference moved to the run: the old handle owes nothing.
        drop(first);
        let mut run = run.extended(&inbox, 5).expect("extends");
        assert_eq!(Arc::strong_count(&inbox), 2);
        assert!(!run.send_next(Bytes::from_static(b":3\r\n")));
        drop(run);
        let mut got = VecDeque::new();
        inbox.take_into(&mut got);
        let got: Vec<_> = got.into_iter().map(|a| (a.seq, a.reply)).collect();
        assert_eq!(
            got,
            vec![
                (3, Some(Bytes::from_static(b":3\r\n"))),
                (4, None),
                (5, None)
            ]
        );
        assert_eq!(Arc::strong_count(&inbox), 1);
        let mut whole = ReplyTo::inbox(&other, 0);
        assert!(whole.send_next(Bytes::from_static(b"+OK\r\n")));
    }
}
