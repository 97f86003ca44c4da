//! The way back to the client: replies queued in request order, resolved as
//! their backends answer (into the client's inbox), and whatever is ready
//! written in one write. Bounded: the session takes no new request while
//! the replies owed would exceed the client's output limit.
//!
//! A reply's size is unknown until it arrives, so the number of requests in
//! flight starts small and grows as replies come back (as TCP's slow start
//! does), and shrinks to what half the limit holds of the largest recent
//! reply. Sizes are only guessed, so what a client owes can overshoot
//! (small replies grew the window, then large ones come back): past twice
//! the limit the client is disconnected unless it reads something within
//! `OVER_LIMIT_GRACE`. A client that keeps reading is served, as Redis
//! serves it, and what all clients hold together is bounded by
//! `server.max_client_memory` (`client_memory`).

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tokio::time::{Instant, Sleep};

use super::observe::Observer;
use super::reply::Reply;
use super::ClientWriter;
use crate::backend::{Arrival, Inbox, ReplyTo};
use crate::config::Config;
use crate::state::{Live, State};
use crate::wake_flag::WakeFlag;

/// Why the client can no longer be written to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gone {
    /// A write failed: the client went away.
    WriteFailed,
    /// The client left `client_output_stall_secs` of replies unread.
    Stalled,
    /// The replies owed passed twice the output limit and the client read
    /// none of them for `OVER_LIMIT_GRACE`.
    OverLimit,
    /// Closed for the clients' memory, with replies still unwritten.
    Evicted,
}

/// Replies owed at once before any reply size is known.
const FIRST_WINDOW: usize = 32;
/// The smallest reply size the window is planned with.
const MIN_LARGE: usize = 64;
/// Owing more than twice its limit, a client that reads nothing for this
/// long is disconnected.
const OVER_LIMIT_GRACE: Duration = Duration::from_secs(1);
/// An empty write buffer larger than this is given back after a peak.
const KEEP_OUT: usize = 64 * 1024;

pub(super) struct Output {
    wr: ClientWriter,
    /// Bytes ready to write; grows with the replies, idle clients keep none.
    out: BytesMut,
    pending: VecDeque<Reply>,
    /// Replies moved to `out` so far: the position of `pending[0]`.
    taken: u64,
    inbox: Arc<Inbox>,
    arrivals: VecDeque<Arrival>,
    /// Bytes of replies that arrived but are not in `out` yet (waiting
    /// behind an earlier reply).
    arrived_bytes: usize,
    /// The largest recent reply (decaying), to turn the byte limit into a
    /// number of replies.
    large_reply: usize,
    /// Slow start: replies that may be owed before their sizes are known;
    /// doubles with every window of replies taken, up to the pipeline limit.
    window: usize,
    /// Replies of `large_reply` bytes that half the limit holds.
    fits: usize,
    /// Replies that may be owed at once: the window, or `fits` if fewer.
    room: usize,
    /// Backend requests in flight beyond one per reply: a split over many
    /// pools or hash slots counts each of its parts against `room`.
    extra_parts: usize,
    /// Half the limit: the reply bytes held before reading stops.
    half_limit: usize,
    limit: usize,
    max_pipeline: usize,
    stall: Duration,
    /// Runs while unread replies keep the client from sending more, from
    /// the last time it read anything.
    stall_timer: Option<Pin<Box<Sleep>>>,
    request_timeout: Option<Duration>,
    /// Fires at the front reply's deadline. Allocated on first use and
    /// re-armed only when it fires, so a reply costs no timer.
    deadline: Option<Pin<Box<Sleep>>>,
    deadline_armed: bool,
    /// Raised when the deadline timer wakes the task: until then it is
    /// not polled (a timer poll re-registers its waker each time).
    deadline_flag: Option<WakeFlag>,
    /// A reply that closes the connection is queued: nothing more will be.
    closing: bool,
    gone: Option<Gone>,
    /// Several worker threads: each batch's metrics are added to the shared
    /// series before it is written (on one thread, readers do it).
    flush_metrics: bool,
}

impl Output {
    pub fn new(wr: ClientWriter, config: &Config) -> Output {
        let mut output = Output {
            wr,
            out: BytesMut::new(),
            pending: VecDeque::new(),
            taken: 0,
            inbox: Inbox::new(),
            arrivals: VecDeque::new(),
            arrived_bytes: 0,
            large_reply: MIN_LARGE,
            window: FIRST_WINDOW,
            fits: 1,
            room: 1,
            extra_parts: 0,
            half_limit: 1,
            limit: 1,
            max_pipeline: 1,
            stall: Duration::from_secs(1),
            stall_timer: None,
            request_timeout: None,
            deadline: None,
            deadline_armed: false,
            deadline_flag: None,
            closing: false,
            gone: None,
            flush_metrics: tokio::runtime::Handle::try_current()
                .is_ok_and(|h| h.runtime_flavor() != tokio::runtime::RuntimeFlavor::CurrentThread),
        };
        output.configure(config);
        output
    }

    /// Takes the limits of a (re)loaded configuration.
    pub fn configure(&mut self, config: &Config) {
        self.limit = config.server.client_output_limit_bytes.max(1);
        self.half_limit = (self.limit / 2).max(1);
        self.max_pipeline = config.server.max_pipeline.max(1);
        self.stall = Duration::from_secs(config.server.client_output_stall_secs.max(1));
        self.request_timeout = match config.backend.request_timeout_ms {
            0 => None,
            ms => Some(Duration::from_millis(ms)),
        };
        self.window = self.window.min(self.max_pipeline);
        self.update_fits();
    }

    /// Where the next queued reply's backend answer is to be delivered.
    pub fn reply_to_next(&self) -> (ReplyTo, u64) {
        let (inbox, seq) = self.inbox_next();
        (ReplyTo::inbox(inbox, seq), seq)
    }

    /// The client's inbox and the position the next queued reply's
    /// backend answer is delivered under.
    pub fn inbox_next(&self) -> (&Arc<Inbox>, u64) {
        (&self.inbox, self.taken + self.pending.len() as u64)
    }

    #[inline]
    pub fn push(&mut self, reply: Reply) {
        self.push_with(|| reply)
    }

    /// Queues the reply `make` builds, built into its place in the queue.
    /// Built first and then pushed, a reply (160 bytes) was copied with
    /// wide loads right after the narrow stores that built it, which the
    /// processor cannot forward (measured: 1.75% of pipelined CPU).
    /// `extend` with a one-item iterator makes room before it builds, so
    /// nothing can fail between building the reply and storing it.
    #[inline]
    pub fn push_with(&mut self, make: impl FnOnce() -> Reply) {
        self.pending.extend(std::iter::once_with(make));
        if let Some(reply) = self.pending.back() {
            self.closing |= reply.closes();
            self.extra_parts += reply.parts().saturating_sub(1);
        }
    }

    /// Whether another request may be taken: the replies owed stay within
    /// the pipeline limit, and fewer when replies are large, so the bytes
    /// owed stay near the output limit.
    #[inline]
    pub fn has_room(&self) -> bool {
        self.pending.len() + self.extra_parts < self.room && self.bytes_room() && !self.closing
    }

    /// Whether the bytes held for the client leave room for the replies
    /// still expected. `fits` keeps those (at the size of the largest
    /// recent reply) within half the limit, so the bytes held get the
    /// other half.
    #[inline]
    fn bytes_room(&self) -> bool {
        self.owed_bytes() < self.half_limit
    }

    /// Reply bytes held for the client: arrived, or ready to write.
    #[inline]
    pub fn owed_bytes(&self) -> usize {
        self.out.len() + self.arrived_bytes
    }

    pub fn closing(&self) -> bool {
        self.closing
    }

    pub fn gone(&self) -> Option<Gone> {
        self.gone
    }

    /// Nothing owed and nothing left to write.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty() && self.out.is_empty()
    }

    /// Moves every reply that is ready, in order, into the write buffer.
    pub fn collect(&mut self, state: &State, live: &Live) {
        // Counts this pass's replies, before any of them is written.
        let mut observer = Observer::new(state, live, self.flush_metrics);
        // Replies done are dropped where they lie, after the pass: popping
        // each would copy it out of the queue (a reply is 160 bytes, and
        // that copy was 1.4% of the proxy's pipelined CPU).
        let mut done = 0;
        while self.out.len() < self.limit {
            let Some(front) = self.pending.get_mut(done) else {
                break;
            };
            let forwarded = matches!(front, Reply::Backend(_));
            let Some(bytes) = front.try_ready(state) else {
                break;
            };
            if let Some(seen) = front.observed() {
                observer.reply(seen, &bytes);
            }
            let silent = front.is_silent();
            done += 1;
            if forwarded {
                // What arrived leaves the count as it is taken (a retried
                // or timed-out reply may differ: the count only floors).
                self.arrived_bytes = self.arrived_bytes.saturating_sub(bytes.len());
            }
            self.took(if silent { &[] } else { &bytes });
        }
        if done > 0 {
            self.pending.drain(..done);
        }
        drop(observer);
        // The stall clock starts when unread replies keep the client from
        // sending more and stops only when it has read everything owed.
        if self.out.is_empty() {
            self.stall_timer = None;
            if self.out.capacity() > KEEP_OUT {
                // Give a peak's memory back rather than keep it per client.
                self.out = BytesMut::new();
            }
        } else if !self.bytes_room() && self.stall_timer.is_none() {
            self.stall_timer = Some(Box::pin(tokio::time::sleep(self.stall)));
        }
    }

    fn took(&mut self, bytes: &[u8]) {
        self.out.extend_from_slice(bytes);
        self.taken += 1;
        // Slow start: the window doubles each time a window's worth of
        // replies came back.
        if self.taken >= self.window as u64 && self.window < self.max_pipeline {
            self.window = (self.window * 2).min(self.max_pipeline);
            self.room = self.window.min(self.fits);
        }
        if bytes.len() > self.large_reply {
            self.large_reply = bytes.len();
            self.update_fits();
        } else if self.large_reply > MIN_LARGE {
            // Decays by 1/64 per reply: a burst of large replies keeps the
            // window small for a few hundred replies after it.
            self.large_reply = (self.large_reply - self.large_reply / 64).max(MIN_LARGE);
            self.update_fits();
        }
    }

    fn update_fits(&mut self) {
        self.fits = (self.half_limit / self.large_reply).max(1);
        self.room = self.window.min(self.fits);
    }

    /// Polls for the next thing that moves: bytes written, a reply arrived,
    /// resolved or timed out. Ready once `collect` may have work, or with
    /// an error once the client cannot be written to. Polled by hand, not
    /// through `select!`, because it runs several times per request.
    pub fn poll_progress(
        &mut self,
        cx: &mut Context<'_>,
        state: &State,
        live: &Live,
    ) -> Poll<Result<(), Gone>> {
        if let Some(gone) = self.gone {
            return Poll::Ready(Err(gone));
        }
        let over_limit = self.owed_bytes() > self.limit.saturating_mul(2);
        if over_limit {
            self.cut_unless_read_within(OVER_LIMIT_GRACE);
        }
        if let Some(timer) = self.stall_timer.as_mut() {
            if timer.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Err(if over_limit {
                    self.disconnect(
                        state,
                        Gone::OverLimit,
                        "client_output_limit",
                        "disconnecting a client that owes more than twice its output limit and reads none of it",
                    )
                } else {
                    self.disconnect(
                        state,
                        Gone::Stalled,
                        "client_output_stalled",
                        "disconnecting a client that does not read its replies",
                    )
                }));
            }
        }
        // Writing owed bytes first keeps the buffer small.
        if !self.out.is_empty() {
            match poll_write_out(Pin::new(&mut self.wr), cx, &mut self.out) {
                Poll::Ready(Ok(n)) if n > 0 => {
                    self.client_read();
                    return Poll::Ready(Ok(()));
                }
                Poll::Ready(_) => return Poll::Ready(Err(self.set_gone(Gone::WriteFailed))),
                Poll::Pending => {}
            }
        }
        if self.inbox.poll_arrived(cx).is_ready() {
            self.take_arrivals();
            // Most arrivals complete the front reply: write it in this same
            // wake-up rather than on the next turn of the session's loop.
            self.collect(state, live);
            if !self.out.is_empty() {
                if let Poll::Ready(written) =
                    poll_write_out(Pin::new(&mut self.wr), cx, &mut self.out)
                {
                    if !matches!(written, Ok(n) if n > 0) {
                        return Poll::Ready(Err(self.set_gone(Gone::WriteFailed)));
                    }
                    self.client_read();
                    self.collect(state, live);
                }
            }
            return Poll::Ready(Ok(()));
        }
        if let Some(front) = self.pending.front_mut() {
            if front.waits_elsewhere() {
                if let Poll::Ready(bytes) = front.poll_ready(cx, state) {
                    if let Some(seen) = front.observed() {
                        Observer::new(state, live, self.flush_metrics).reply(seen, &bytes);
                    }
                    let silent = front.is_silent();
                    self.extra_parts -= front.parts().saturating_sub(1).min(self.extra_parts);
                    self.pending.pop_front();
                    self.took(if silent { &[] } else { &bytes });
                    return Poll::Ready(Ok(()));
                }
            }
        }
        self.arm_deadline();
        if self.deadline_armed {
            if let Some(timer) = self.deadline.as_mut() {
                let due = match &self.deadline_flag {
                    Some(flag) if !flag.raised() => false,
                    _ => {
                        let (due, flag) = WakeFlag::poll(timer.as_mut(), cx);
                        self.deadline_flag = Some(flag);
                        due
                    }
                };
                if due {
                    self.deadline_armed = false;
                    self.expire_front(state);
                    return Poll::Ready(Ok(()));
                }
            }
        }
        Poll::Pending
    }

    /// The client took some of its replies: a stall clock that runs
    /// starts again (a slow reader is not a stuck one).
    fn client_read(&mut self) {
        if let Some(timer) = self.stall_timer.as_mut() {
            timer.as_mut().reset(Instant::now() + self.stall);
        }
    }

    /// Brings the stall clock forward to `grace` from now: the client is
    /// cut unless it reads something by then (reading restarts the clock).
    #[cold]
    #[inline(never)]
    fn cut_unless_read_within(&mut self, grace: Duration) {
        let cut_at = Instant::now() + grace;
        match self.stall_timer.as_mut() {
            Some(timer) if timer.deadline() <= cut_at => {}
            Some(timer) => timer.as_mut().reset(cut_at),
            None => self.stall_timer = Some(Box::pin(tokio::time::sleep_until(cut_at))),
        }
    }

    /// Writes part of a reply to the client now, with nothing queued before
    /// it: a reply too large to hold whole (a transaction's) passes through
    /// in pieces. The client owes more than half its limit and its reply
    /// holds a leased connection, so, as past twice the limit, one that
    /// takes nothing for `OVER_LIMIT_GRACE` is disconnected; one that keeps
    /// reading, however slowly, is served.
    pub async fn write_through(&mut self, state: &State, mut bytes: &[u8]) -> Result<(), Gone> {
        while !bytes.is_empty() {
            if let Some(gone) = self.gone {
                return Err(gone);
            }
            match tokio::time::timeout(OVER_LIMIT_GRACE, self.wr.write(bytes)).await {
                Ok(Ok(n)) if n > 0 => bytes = &bytes[n..],
                Ok(_) => return Err(self.set_gone(Gone::WriteFailed)),
                Err(_) => {
                    return Err(self.disconnect(
                        state,
                        Gone::OverLimit,
                        "client_output_limit",
                        "disconnecting a client that reads none of a transaction's large reply",
                    ))
                }
            }
        }
        Ok(())
    }

    /// The bytes of a reply held before the rest of it is passed through.
    pub fn piece(&self) -> usize {
        self.half_limit
    }

    /// A subscriber left more than its output limit of messages waiting:
    /// disconnected at once, as Redis disconnects a pub/sub client past its
    /// hard limit; the session ends, letting go of what it holds.
    #[cold]
    #[inline(never)]
    pub fn cut_subscriber(&mut self, state: &State) {
        self.disconnect(
            state,
            Gone::OverLimit,
            "client_output_limit",
            "disconnecting a subscriber that left more than its output limit of messages unread",
        );
    }

    /// Gives up on a client that does not read its replies: counted
    /// under `label`, logged with `why`.
    #[cold]
    #[inline(never)]
    fn disconnect(&mut self, state: &State, gone: Gone, label: &str, why: &str) -> Gone {
        tracing::warn!("{why}");
        state.metrics.errors.with_label_values(&[label]).inc();
        self.set_gone(gone)
    }

    #[cold]
    #[inline(never)]
    fn set_gone(&mut self, gone: Gone) -> Gone {
        self.gone = Some(gone);
        gone
    }

    /// Files each backend answer under the reply it belongs to. An answer
    /// whose reply was already given up on (timed out) is dropped.
    fn take_arrivals(&mut self) {
        self.inbox.take_into(&mut self.arrivals);
        let taken = self.taken;
        for arrival in self.arrivals.drain(..) {
            let Some(index) = arrival.seq.checked_sub(taken) else {
                continue;
            };
            // Counted as `collect` uncounts it: replies that are written
            // (not CLIENT REPLY OFF ones).
            let counted = matches!(self.pending.get(index as usize), Some(Reply::Backend(_)));
            let at_position = self
                .pending
                .get_mut(index as usize)
                .and_then(Reply::forwarded_mut)
                .filter(|f| f.seq == arrival.seq);
            let forwarded = match at_position {
                Some(f) => Some(f),
                // Positions are assigned in the order replies are queued; a
                // search keeps a reply found should that ever not hold.
                None => self
                    .pending
                    .iter_mut()
                    .filter_map(Reply::forwarded_mut)
                    .find(|f| f.seq == arrival.seq),
            };
            if let Some(f) = forwarded {
                if matches!(f.wait, super::reply::Wait::Inbox) {
                    if let (Some(reply), true) = (&arrival.reply, counted) {
                        self.arrived_bytes += reply.len();
                    }
                    f.wait = super::reply::Wait::Arrived(arrival.reply);
                }
            }
        }
    }

    fn arm_deadline(&mut self) {
        let Some(timeout) = self.request_timeout else {
            return;
        };
        if self.deadline_armed {
            return;
        }
        let Some(front) = self.pending.front_mut().and_then(Reply::forwarded_mut) else {
            return;
        };
        if !front.awaited() {
            return;
        }
        let at = Instant::from_std(front.meta.started) + timeout;
        match self.deadline.as_mut() {
            Some(timer) => timer.as_mut().reset(at),
            None => self.deadline = Some(Box::pin(tokio::time::sleep_until(at))),
        }
        self.deadline_armed = true;
        // Polled (and so registered) afresh at its new deadline.
        self.deadline_flag = None;
    }

    /// Times out the front reply if its deadline passed; only the front
    /// one, since every later reply waits behind it anyway.
    #[cold]
    #[inline(never)]
    fn expire_front(&mut self, state: &State) {
        let Some(timeout) = self.request_timeout else {
            return;
        };
        let Some(front) = self.pending.front_mut().and_then(Reply::forwarded_mut) else {
            return;
        };
        if front.awaited() && front.meta.started.elapsed() >= timeout {
            front.time_out(state, timeout);
        }
    }

    /// Writes what is owed until nothing is, or the client is gone.
    pub async fn flush(&mut self, state: &State, live: &Live) -> Result<(), Gone> {
        loop {
            self.collect(state, live);
            if self.is_empty() {
                return Ok(());
            }
            std::future::poll_fn(|cx| self.poll_progress(cx, state, live)).await?;
        }
    }

    /// Closed for the clients' memory (`server.max_client_memory`): every
    /// reply owed is given up (the backends' answers go nowhere), and
    /// `error` is the last thing written, unless the client had replies
    /// unwritten, which are dropped with the connection.
    #[cold]
    pub fn evict(&mut self, error: bytes::Bytes) {
        self.inbox.close();
        self.inbox = Inbox::new();
        self.arrivals.clear();
        self.arrived_bytes = 0;
        self.pending.clear();
        self.extra_parts = 0;
        self.deadline_armed = false;
        if self.out.is_empty() {
            self.push(Reply::close(error));
            // Written within the stall time, or the connection is dropped.
            self.stall_timer = Some(Box::pin(tokio::time::sleep(self.stall)));
        } else {
            self.out = BytesMut::new();
            self.set_gone(Gone::Evicted);
        }
    }

    pub async fn shutdown(&mut self) {
        let _ = self.wr.shutdown().await;
    }
}

impl Drop for Output {
    /// Replies still in flight for a client that is gone are dropped as
    /// they arrive instead of piling up in its inbox.
    fn drop(&mut self) {
        self.inbox.close();
    }
}

/// Writes from the front of `out`, one contiguous buffer: a plain write.
/// tokio-util's `poll_write_buf` would make it a vectored one and ready 64
/// slices for it on every call (a kilobyte of stores per reply).
fn poll_write_out(
    wr: Pin<&mut ClientWriter>,
    cx: &mut Context<'_>,
    out: &mut BytesMut,
) -> Poll<std::io::Result<usize>> {
    let written = std::task::ready!(tokio::io::AsyncWrite::poll_write(wr, cx, &out[..]))?;
    if written == out.len() {
        // Emptied in place: the next reply is copied to the start, not
        // after a consumed front that `reserve` would first move back.
        out.clear();
    } else {
        bytes::Buf::advance(out, written);
    }
    Poll::Ready(Ok(written))
}
