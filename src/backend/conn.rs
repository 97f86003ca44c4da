//! One multiplexed backend connection: a writer task that batches whatever
//! requests are queued into one write, and a reader task that hands each
//! reply frame to the oldest waiting request (Redis answers in order).

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::stream::{BackendReader, BackendStream, BackendWriter};
use tokio::sync::{oneshot, watch};

use super::outbox::{self, Refused};

use super::inbox::ReplyTo;
use crate::config::Endpoint;
use crate::resp::{FrameScanner, Protocol, Request};
use crate::wake_flag::WakeFlag;
use std::task::Poll;

/// A request written and waiting for its reply, with when it left.
struct InFlight {
    reply: ReplyTo,
    sent: std::time::Instant,
    /// Sent behind `ASKING` (a cluster's ASK redirection): the first reply
    /// is ASKING's own `+OK`, not this request's.
    asking: bool,
}

/// Requests written and not answered yet, handed from the writer to the
/// reader a batch at a time: one lock per write and one per read that
/// finds its queue empty, instead of a channel operation per request.
#[derive(Default)]
struct Handoff(super::lock::HandoffLock<VecDeque<InFlight>>);

impl Handoff {
    fn queue(&self) -> super::lock::HandoffGuard<'_, VecDeque<InFlight>> {
        self.0.lock()
    }

    /// Moves everything handed over to the back of `waiting`.
    fn take_into(&self, waiting: &mut VecDeque<InFlight>) {
        let mut handed = self.queue();
        if waiting.is_empty() {
            // The usual case: trade buffers, no element moved or allocated.
            std::mem::swap(waiting, &mut *handed);
        } else {
            waiting.append(&mut handed);
        }
    }
}

struct Outbound {
    /// Bytes of the outbox's lane that are this request's: all of it, or
    /// `ASKING` alone when the request is `big`.
    lane: usize,
    /// A request queued by reference (too big to copy, or the lane was
    /// full), written after its lane bytes.
    big: Option<Bytes>,
    /// `None`: the reply is covered by a later request's destination (one
    /// client's requests in a row share one, see `ReplyTo::extended`).
    reply: Option<ReplyTo>,
    asking: bool,
}

impl outbox::Item for Outbound {
    fn needs_next(&self) -> bool {
        self.reply.is_none()
    }

    fn lane_len(&self) -> usize {
        self.lane
    }
}

impl Outbound {
    /// A request with a destination of its own.
    fn alone(
        (bytes, reply): (Bytes, ReplyTo),
        _: Option<&mut Outbound>,
        lane: &mut BytesMut,
    ) -> Outbound {
        Outbound::queued(&bytes, || bytes.clone(), Some(reply), false, lane)
    }

    /// Copies the request, `ASKING` first if asked, into the lane, unless
    /// it is too big to copy or the lane already holds its limit.
    fn queued(
        bytes: &[u8],
        own: impl FnOnce() -> Bytes,
        reply: Option<ReplyTo>,
        asking: bool,
        lane: &mut BytesMut,
    ) -> Outbound {
        let start = lane.len();
        if asking {
            lane.extend_from_slice(ASKING);
        }
        let big = match bytes.len() < COPY_LIMIT && lane.len() < LANE_LIMIT {
            true => {
                lane.extend_from_slice(bytes);
                None
            }
            false => Some(own()),
        };
        Outbound {
            lane: lane.len() - start,
            big,
            reply,
            asking,
        }
    }
}

const ASKING: &[u8] = b"*1\r\n$6\r\nASKING\r\n";

/// Requests queued to one backend connection before senders wait.
const QUEUE: usize = 4096;
/// Requests gathered into one write.
const BATCH: usize = 512;
/// Requests at least this big are written on their own instead of copied.
const COPY_LIMIT: usize = 16 * 1024;
/// Bytes the outbox's lane holds before requests queue uncopied: bounds
/// what one connection's buffers keep while its backend is slow.
const LANE_LIMIT: usize = 1024 * 1024;
const READ_CHUNK: usize = 64 * 1024;

#[derive(Clone)]
pub struct Conn {
    tx: outbox::Sender<Outbound>,
    /// The pool's: raised while its master is being moved.
    fence: std::sync::Arc<super::Fence>,
}

impl Conn {
    /// Connects, authenticates, negotiates the protocol and selects `db`.
    /// Errors are the reason shown to clients.
    /// The connection retires (stops taking requests, finishes those in
    /// flight, closes) when `retire` changes: the pool moved to a new master.
    pub async fn open(
        pool: &str,
        endpoint: &Endpoint,
        db: u32,
        proto: Protocol,
        retire: watch::Receiver<u64>,
        round_trip: Option<prometheus::Histogram>,
        fence: std::sync::Arc<super::Fence>,
    ) -> Result<Conn, String> {
        let stream = super::stream::open(endpoint, db, proto).await?;
        let (rd, wr) = stream.into_split();
        let (tx, rx) = outbox::outbox(QUEUE);
        let handoff = std::sync::Arc::new(Handoff::default());
        let reader_handoff = handoff.clone();
        // Dropped with the writer: tells the reader without a wake-up per
        // request (the handoff has no wake-up of its own).
        let (writer_alive, writer_gone) = oneshot::channel::<()>();
        let writer = tokio::spawn(async move {
            write_loop(wr, rx, &handoff, retire).await;
            drop(writer_alive);
        });
        let origin = Origin {
            pool: pool.to_string(),
            addr: endpoint.address(),
        };
        tokio::spawn(async move {
            read_loop(rd, &reader_handoff, writer_gone, round_trip, origin).await;
            // Whatever is still in flight fails now, not once the writer's
            // abort is processed.
            reader_handoff.queue().clear();
            // Stop the writer so senders see a closed connection at once.
            writer.abort();
        });
        Ok(Conn { tx, fence })
    }

    /// Whether the pool's fence is raised: writes must wait on it.
    pub fn fenced(&self) -> bool {
        self.fence.is_raised()
    }

    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }

    /// Queues a request whose reply goes to `reply`; `Err` gives both back
    /// when the connection is already closed, so the caller may use another
    /// one (nothing was sent).
    pub async fn send(&self, bytes: Bytes, reply: ReplyTo) -> Result<(), (Bytes, ReplyTo)> {
        // The queue almost always has room: queue without the machinery of
        // an awaited send, whose state would enlarge every request's future.
        let back = match self.tx.try_send_with((bytes, reply), Outbound::alone) {
            Ok(()) => return Ok(()),
            Err(Refused::Full(back)) => back,
            Err(Refused::Closed(back)) => return Err(back),
        };
        // Full: wait for room, boxed since it is rare.
        Box::pin(self.tx.send_with(back, Outbound::alone)).await
    }

    /// Queues a request without waiting: `Err` gives it back when the queue
    /// is full or closed. `asking` sends `ASKING` right before it, in the
    /// same write, so no other client's request comes between them.
    pub fn try_send(
        &self,
        bytes: Bytes,
        reply: ReplyTo,
        asking: bool,
    ) -> Result<(), (Bytes, ReplyTo)> {
        self.tx
            .try_send_with((bytes, reply), |(bytes, reply), _, lane| {
                Outbound::queued(&bytes, || bytes.clone(), Some(reply), asking, lane)
            })
            .map_err(|(Refused::Full(back) | Refused::Closed(back))| back)
    }

    /// Queues a request whose reply is reply `seq` owed to the client that
    /// owns `inbox`, without waiting: false when the queue is full or
    /// closed (nothing was queued). The bytes are copied (or, when big,
    /// referenced); the caller keeps its own. Right after the same client's
    /// previous request, it joins that one's destination instead of
    /// counting another reference to the inbox.
    pub fn try_send_to_inbox(
        &self,
        bytes: &Bytes,
        inbox: &std::sync::Arc<super::Inbox>,
        seq: u64,
    ) -> bool {
        self.tx
            .try_send_with((), |(), last, lane| {
                let joined = last.filter(|last| !last.asking).and_then(|last| {
                    let run = last.reply.as_mut()?.extended(inbox, seq)?;
                    // Covered now: the new request's destination answers for it.
                    last.reply = None;
                    Some(run)
                });
                let joined = joined.unwrap_or_else(|| ReplyTo::inbox(inbox, seq));
                Outbound::queued(bytes, || bytes.clone(), Some(joined), false, lane)
            })
            .is_ok()
    }

    /// Queues a one-off request and returns where its reply arrives.
    pub async fn request(&self, bytes: Bytes) -> Option<super::ReplyRx> {
        let (reply, rx) = ReplyTo::once();
        self.send(bytes, reply).await.ok().map(|()| rx)
    }
}

pub(super) async fn handshake(
    stream: &mut BackendStream,
    endpoint: &Endpoint,
    db: u32,
    proto: Protocol,
) -> Result<(), String> {
    let mut steps: Vec<(&str, Request)> = Vec::new();
    let user = endpoint.username.as_deref().unwrap_or("default");
    match (proto, &endpoint.password) {
        (Protocol::Resp3, Some(pass)) => steps.push((
            "HELLO",
            Request::from_args(&["HELLO", "3", "AUTH", user, pass]),
        )),
        (Protocol::Resp3, None) => steps.push(("HELLO", Request::from_args(&["HELLO", "3"]))),
        (Protocol::Resp2, Some(pass)) => {
            steps.push(("AUTH", Request::from_args(&["AUTH", user, pass])))
        }
        (Protocol::Resp2, None) => {}
    }
    if db != 0 {
        steps.push(("SELECT", Request::from_args(&["SELECT", &db.to_string()])));
    }
    if endpoint.readonly {
        steps.push(("READONLY", Request::from_args(&["READONLY"])));
    }
    steps.push((
        "CLIENT SETNAME",
        Request::from_args(&["CLIENT", "SETNAME", "keyway"]),
    ));
    let mut out = BytesMut::new();
    for (_, r) in &steps {
        out.extend_from_slice(r.bytes());
    }
    stream.write_all(&out).await.map_err(|e| e.to_string())?;
    let mut buf = BytesMut::with_capacity(4096);
    let mut scanner = FrameScanner::default();
    for (what, _) in &steps {
        let frame = loop {
            if let Some(n) = scanner.next_frame(&buf).map_err(|e| e.to_string())? {
                break buf.split_to(n);
            }
            if stream.read_buf(&mut buf).await.map_err(|e| e.to_string())? == 0 {
                return Err(format!("{what}: connection closed by the server"));
            }
        };
        // The name only labels the connection in CLIENT LIST: a server
        // that refuses it (busy with a script, or an ACL without CLIENT)
        // is still served.
        if matches!(frame.first(), Some(b'-') | Some(b'!')) && *what != "CLIENT SETNAME" {
            let text = String::from_utf8_lossy(&frame[1..]).trim_end().to_string();
            return Err(format!("{what} failed: {text}"));
        }
    }
    Ok(())
}

async fn write_loop(
    mut wr: BackendWriter,
    mut rx: outbox::Receiver<Outbound>,
    handoff: &Handoff,
    mut retire: watch::Receiver<u64>,
) {
    let mut batch = Vec::with_capacity(BATCH);
    // The batch's bytes, as the senders copied them.
    let mut lane = BytesMut::with_capacity(READ_CHUNK);
    // The batch's requests queued by reference, each with where in `lane` it goes.
    let mut big: Vec<(usize, Bytes)> = Vec::new();
    // Where those under `COPY_LIMIT` are copied, with what follows them.
    let mut scratch = BytesMut::new();
    let multi_thread = tokio::runtime::Handle::current().runtime_flavor()
        == tokio::runtime::RuntimeFlavor::MultiThread;
    // One future for the whole connection: it stays registered instead of
    // being built and dropped for every batch, and is polled again only
    // once its flag says it may be ready (re-entering it costs a lock).
    let retired = retire.changed();
    tokio::pin!(retired);
    let mut retire_flag: Option<WakeFlag> = None;
    let mut retiring = false;
    loop {
        let next = std::future::poll_fn(|cx| {
            // Retirement first, so a busy connection still notices it.
            if !retiring && retire_flag.as_ref().is_none_or(WakeFlag::raised) {
                let (ready, flag) = WakeFlag::poll(retired.as_mut(), cx);
                if ready {
                    return Poll::Ready(None);
                }
                retire_flag = Some(flag);
            }
            rx.poll_recv_many(cx, &mut batch, BATCH, &mut lane)
                .map(Some)
        })
        .await;
        match next {
            // Retired: senders see the queue closed and go elsewhere;
            // what they queued already is still written, so none is lost.
            None => {
                retiring = true;
                rx.close();
                continue;
            }
            Some(0) => return,
            Some(_) => {}
        }
        // On the multi-threaded scheduler the writer, just woken, runs
        // before the other ready clients: let them go first, so their
        // requests join this write instead of costing a syscall each. The
        // current-thread scheduler queues it behind them already.
        if batch.len() < BATCH && multi_thread {
            tokio::task::yield_now().await;
            let room = BATCH - batch.len();
            rx.try_recv_many(&mut batch, room, &mut lane);
        }
        // One clock read per write: every request in it leaves together.
        let sent = std::time::Instant::now();
        {
            // Registered before the bytes leave, so the reader always finds them.
            let mut queue = handoff.queue();
            let mut at = 0;
            for out in batch.drain(..) {
                // A request covered by a later one's destination has no
                // entry of its own: that one's answers for the run.
                if let Some(reply) = out.reply {
                    queue.push_back(InFlight {
                        reply,
                        sent,
                        asking: out.asking,
                    });
                }
                at += out.lane;
                if let Some(bytes) = out.big {
                    big.push((at, bytes));
                }
            }
        }
        if write_batch(&mut wr, &lane, &mut big, &mut scratch)
            .await
            .is_err()
        {
            return;
        }
        lane.clear();
        if lane.capacity() > 2 * LANE_LIMIT {
            // Grown by a burst of big requests: not kept for the next one.
            lane = BytesMut::with_capacity(READ_CHUNK);
        }
        if scratch.capacity() > 2 * LANE_LIMIT {
            scratch = BytesMut::new();
        }
    }
}

/// Writes a batch: the lane's bytes as they lie, and the requests queued
/// by reference (`big`, each with its place in the lane) in their places.
/// Those too big to copy are written on their own; smaller ones (queued
/// so because the lane was full) are copied into `scratch` with what
/// follows them, so a backlog still leaves in a few writes.
async fn write_batch(
    wr: &mut BackendWriter,
    lane: &[u8],
    big: &mut Vec<(usize, Bytes)>,
    scratch: &mut BytesMut,
) -> std::io::Result<()> {
    let mut written = 0;
    for (at, bytes) in big.drain(..) {
        let before = &lane[written..at];
        written = at;
        if bytes.len() < COPY_LIMIT {
            scratch.extend_from_slice(before);
            scratch.extend_from_slice(&bytes);
            continue;
        }
        write_pending(wr, scratch, before).await?;
        wr.write_all(&bytes).await?;
    }
    write_pending(wr, scratch, &lane[written..]).await
}

/// Writes what `scratch` gathered followed by `lane_part`: in one write,
/// through `scratch` when it holds anything, else straight from the lane.
async fn write_pending(
    wr: &mut BackendWriter,
    scratch: &mut BytesMut,
    lane_part: &[u8],
) -> std::io::Result<()> {
    if !scratch.is_empty() {
        scratch.extend_from_slice(lane_part);
        wr.write_all(scratch).await?;
        scratch.clear();
    } else if !lane_part.is_empty() {
        wr.write_all(lane_part).await?;
    }
    Ok(())
}

/// Which pool and server a connection's log lines are about.
struct Origin {
    pool: String,
    addr: String,
}

/// Logged out of line: the reply loop's rare exits, kept out of the code
/// every reply runs through.
impl Origin {
    #[cold]
    #[inline(never)]
    fn warn(&self, what: std::fmt::Arguments<'_>) {
        tracing::warn!(pool = %self.pool, addr = %self.addr, "{what}");
    }

    #[cold]
    #[inline(never)]
    fn debug(&self, what: std::fmt::Arguments<'_>) {
        tracing::debug!(pool = %self.pool, addr = %self.addr, "{what}");
    }
}

/// Hands each reply frame to the oldest waiting request. Ends when the
/// backend closes, or once the writer is gone and nothing is in flight
/// (a retired connection drains, then closes).
async fn read_loop(
    mut rd: BackendReader,
    handoff: &Handoff,
    mut writer_done: oneshot::Receiver<()>,
    round_trip: Option<prometheus::Histogram>,
    origin: Origin,
) {
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    let mut scanner = FrameScanner::default();
    let mut waiting: VecDeque<InFlight> = VecDeque::new();
    let mut writer_gone = false;
    // Round trips are gathered locally and added to the shared histogram
    // once per read; every reply of one read arrived at the same moment.
    let round_trip = round_trip.map(|h| h.local());
    let mut arrived = std::time::Instant::now();
    // The last round trip computed in this read, by when its request left.
    let mut last: Option<(std::time::Instant, f64)> = None;
    loop {
        loop {
            match scanner.next_frame(&buf) {
                Ok(Some(n)) => {
                    let frame = buf.split_to(n).freeze();
                    if frame.first() == Some(&b'>') {
                        // A push on a shared connection belongs to no request.
                        origin.debug(format_args!(
                            "dropped a push frame on a multiplexed connection"
                        ));
                        continue;
                    }
                    if waiting.is_empty() {
                        handoff.take_into(&mut waiting);
                    }
                    if let Some(w) = waiting.front_mut().filter(|w| w.asking) {
                        // ASKING's own reply.
                        w.asking = false;
                        continue;
                    }
                    match waiting.front_mut() {
                        Some(w) => {
                            if let Some(h) = &round_trip {
                                // Requests written together, answered in one read:
                                // one subtraction for the run.
                                let took = match last {
                                    Some((sent, took)) if sent == w.sent => took,
                                    _ => {
                                        let took =
                                            arrived.saturating_duration_since(w.sent).as_secs_f64();
                                        last = Some((w.sent, took));
                                        took
                                    }
                                };
                                h.observe(took);
                            }
                            if w.reply.send_next(frame) {
                                waiting.pop_front();
                            }
                        }
                        None => {
                            origin.warn(format_args!(
                                "backend sent a reply nobody asked for; closing the connection"
                            ));
                            return;
                        }
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    origin.warn(format_args!(
                        "backend sent an unreadable reply ({e}); closing the connection"
                    ));
                    return;
                }
            }
        }
        if let Some(h) = &round_trip {
            h.flush();
        }
        if writer_gone && waiting.is_empty() {
            return;
        }
        if buf.capacity() - buf.len() < READ_CHUNK / 4 {
            // Asking for a quarter reuses the whole buffer in place once the
            // replies split off it are written; while some are still held,
            // a new buffer of the original size replaces it.
            buf.reserve(READ_CHUNK / 4);
        }
        tokio::select! {
            // Fixed order, no random draw per read.
            biased;
            read = rd.read_buf(&mut buf) => match read {
                Ok(0) => return,
                Ok(_) => {
                    arrived = std::time::Instant::now();
                    last = None;
                }
                Err(e) => {
                    origin.debug(format_args!("backend read failed: {e}"));
                    return;
                }
            },
            // Requests in flight are taken as their replies arrive; only
            // the writer's end matters here.
            _ = &mut writer_done, if !writer_gone => {
                writer_gone = true;
                handoff.take_into(&mut waiting);
            }
        }
    }
}

/// One request on a short-lived connection of its own (start-up discovery,
/// health probes): connect, authenticate, send, read one reply frame.
pub async fn request_once(
    endpoint: &Endpoint,
    args: &[&str],
    timeout: std::time::Duration,
) -> Result<Bytes, String> {
    let work = async {
        let mut stream = super::stream::open(endpoint, 0, Protocol::Resp2).await?;
        stream
            .write_all(Request::from_args(args).bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut buf = BytesMut::with_capacity(READ_CHUNK);
        let mut scanner = FrameScanner::default();
        loop {
            if let Some(n) = scanner.next_frame(&buf).map_err(|e| e.to_string())? {
                return Ok(buf.split_to(n).freeze());
            }
            if stream.read_buf(&mut buf).await.map_err(|e| e.to_string())? == 0 {
                return Err("connection closed by the server".to_string());
            }
        }
    };
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| format!("no reply within {}ms", timeout.as_millis()))?
}
