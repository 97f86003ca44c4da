//! The messages a subscriber's links push to it: unbounded in number,
//! bounded in bytes. A link never waits for its client, so it keeps
//! reading its backend connection; had it stopped, the server would have
//! cut that connection at its own pub/sub output limit and the messages
//! would be lost without the client ever knowing. Instead a subscriber
//! that leaves more than twice its output limit
//! (`client_output_limit_bytes`) of messages waiting is disconnected, as
//! Redis disconnects a pub/sub client past its hard output-buffer limit:
//! one tenant's unread messages cannot grow keyway's memory for everyone.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::reply::Reply;
use super::watched::Watched;
use crate::resp::Protocol;

/// What a waiting message costs besides its bytes: the queued reply and
/// the channel's slot, so a flood of empty messages is bounded too.
const PER_MESSAGE: usize = 160;

/// The client is gone, or was cut for what it left waiting: the link ends.
#[derive(Debug)]
pub(super) struct Gone;

struct Shared {
    /// Bytes of messages sent and not yet taken by the session.
    waiting: AtomicUsize,
    limit: usize,
    /// Cancelled by the link whose message passed the limit.
    over: CancellationToken,
    /// The client speaks RESP3 now. A client that subscribed in RESP3 may
    /// switch to RESP2 (HELLO 2) while its links stay RESP3: their pushes
    /// then go out as the arrays a RESP2 subscriber reads.
    resp3: AtomicBool,
}

/// A link's way to its client.
#[derive(Clone)]
pub(super) struct PushSender {
    tx: mpsc::UnboundedSender<(Reply, usize)>,
    shared: Arc<Shared>,
}

impl PushSender {
    /// Queues a message frame for the client, unless that would leave more
    /// than the limit waiting: then the client is to be disconnected.
    pub(super) fn message(&self, frame: Bytes) -> Result<(), Gone> {
        let cost = frame.len() + PER_MESSAGE;
        let waiting = self.shared.waiting.fetch_add(cost, Ordering::AcqRel) + cost;
        if waiting > self.shared.limit {
            self.shared.over.cancel();
            return Err(Gone);
        }
        self.tx.send((Reply::now(frame), cost)).map_err(|_| Gone)
    }

    /// The link's last word (why the subscriptions ended), not counted.
    pub(super) fn last(&self, reply: Reply) {
        let _ = self.tx.send((reply, 0));
    }
}

/// A RESP3 push as the RESP2 array of the same elements (a message's
/// elements are bulk strings, and a pattern's count an integer, alike in
/// both protocols).
fn as_array(push: &Bytes) -> Bytes {
    let mut array = BytesMut::from(&push[..]);
    array[0] = b'*';
    array.freeze()
}

/// The session's side.
pub(super) struct Pushes {
    rx: mpsc::UnboundedReceiver<(Reply, usize)>,
    sender: PushSender,
    over: Watched,
}

impl Pushes {
    pub(super) fn new(limit: usize, proto: Protocol) -> Pushes {
        let (tx, rx) = mpsc::unbounded_channel();
        let over = CancellationToken::new();
        let shared = Arc::new(Shared {
            waiting: AtomicUsize::new(0),
            // Twice, as for replies: a burst the link reads before the
            // session takes any may overshoot the limit itself.
            limit: limit.saturating_mul(2).max(1),
            over: over.clone(),
            resp3: AtomicBool::new(proto == Protocol::Resp3),
        });
        Pushes {
            rx,
            sender: PushSender { tx, shared },
            over: Watched::new(over),
        }
    }

    /// The client switched protocols (HELLO).
    pub(super) fn set_protocol(&self, proto: Protocol) {
        self.sender
            .shared
            .resp3
            .store(proto == Protocol::Resp3, Ordering::Relaxed);
    }

    pub(super) fn sender(&self) -> PushSender {
        self.sender.clone()
    }

    /// The next message waiting, in the protocol the client speaks now
    /// (one queued before a HELLO 2 still goes out as RESP2).
    pub(super) fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<Reply>> {
        let resp3 = self.sender.shared.resp3.load(Ordering::Relaxed);
        self.rx.poll_recv(cx).map(|next| {
            next.map(|(reply, cost)| {
                self.sender.shared.waiting.fetch_sub(cost, Ordering::AcqRel);
                match reply {
                    Reply::Now(push) if !resp3 && push.first() == Some(&b'>') => {
                        Reply::now(as_array(&push))
                    }
                    reply => reply,
                }
            })
        })
    }

    pub(super) async fn recv(&mut self) -> Option<Reply> {
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// Whether the client left more than its limit of messages waiting.
    /// The first call registers the session's task to be woken for it.
    pub(super) fn over_limit(&mut self, cx: &mut Context<'_>) -> bool {
        self.over.fired(cx)
    }

    /// Bytes of messages waiting, for the clients' memory.
    pub(super) fn waiting_bytes(&self) -> usize {
        self.sender.shared.waiting.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn messages_past_the_limit_cut_the_client_and_taken_ones_make_room() {
        let mut pushes = Pushes::new(3 * (100 + PER_MESSAGE) / 2, Protocol::Resp2);
        let link = pushes.sender();
        let message = || Bytes::from(vec![b'm'; 100]);
        for _ in 0..3 {
            link.message(message()).unwrap();
        }
        assert_eq!(pushes.waiting_bytes(), 3 * (100 + PER_MESSAGE));
        // Taking one makes room for one.
        assert!(pushes.recv().await.is_some());
        link.message(message()).unwrap();
        assert!(link.message(message()).is_err(), "past the limit");
        let fired = std::future::poll_fn(|cx| Poll::Ready(pushes.over_limit(cx))).await;
        assert!(fired);
        // The last word is not counted against the limit.
        link.last(Reply::now(Bytes::from_static(b"-ERR gone\r\n")));
    }

    #[tokio::test]
    async fn a_resp3_push_reaches_a_client_now_in_resp2_as_an_array() {
        let mut pushes = Pushes::new(1 << 20, Protocol::Resp3);
        let link = pushes.sender();
        let push = b">3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$2\r\nhi\r\n";
        let next = || link.message(Bytes::from_static(push)).unwrap();
        next();
        let taken = |reply: Option<Reply>| match reply {
            Some(Reply::Now(bytes)) => bytes.to_vec(),
            _ => panic!("a message is sent as it is"),
        };
        assert_eq!(taken(pushes.recv().await), push, "taken while RESP3");
        // Queued before the switch, taken after it: RESP2 by then.
        next();
        pushes.set_protocol(Protocol::Resp2);
        let converted = taken(pushes.recv().await);
        assert_eq!(converted[0], b'*');
        assert_eq!(converted[1..], push[1..]);
    }
}
