//! One connection's outbound path: every byte the server sends on a
//! connection goes through its [`Outbound`].
//!
//! # The write right
//!
//! The state mutex *is* the right to write, and it is never held across a
//! call that can block: under it, bytes go to the socket only with
//! `MSG_DONTWAIT`. So any thread (the timer's probes and drains, shutdown,
//! pushes) can write a whole encoded message at once when the socket takes
//! it, or queue it when not, and never waits on the peer. Queued bytes are
//! flushed by whoever next holds the lock: the next producer, the worker
//! after its own writes, or the timer thread on its next tick (connections
//! with queued bytes are put on a [`Flushes`] list for it), so a queued
//! CLOSE 1001 goes out within one tick even while the worker sits in `read`.
//!
//! Only the worker blocks, and only outside the lock: when its answers do
//! not fit, it takes the queued bytes (which come first on the wire), marks
//! the stream as its own (`worker_mid_batch`: others then only queue), and
//! writes them and its answers with ordinary blocking writes bounded by the
//! socket's send timeout.
//!
//! Producers append whole encoded messages under the lock, and bytes leave
//! only from the front, so messages are never interleaved mid-frame and each
//! producer's messages keep their order.
//!
//! # Bounds
//!
//! Bytes other threads queue for a connection (including those its worker
//! took from the queue to write) never exceed the outbox bound; the
//! worker's own answers are bounded by the write timeout instead. A message
//! larger than the whole bound is refused (the connection is not to blame).
//! A message that would take the queue past the bound closes the
//! connection as a slow consumer: the queued messages not yet begun are dropped, and the worker,
//! woken, sends CLOSE 4003 after the message on the wire. A queue that makes
//! no progress for the write timeout is closed as a stalled writer by the
//! timer thread.
//!
//! # TLS
//!
//! A TLS connection's `rustls` session lives under the same lock. The queue
//! then holds plaintext, cut at message boundaries as before, and bytes are
//! encrypted only as they go out: a non-blocking write hands the session at
//! most [`TLS_CHUNK`] bytes of plaintext at a time, and only once its
//! previous records are on the wire, so the records waiting inside the
//! session stay bounded and a slow consumer's unbegun messages can still be
//! dropped. The worker's blocking write encrypts its batch (after whatever
//! the session holds) under the lock and writes the records outside it. The
//! session's own records (handshake messages, alerts, tickets, key updates,
//! `close_notify`) go out the same way. The worker waits for the socket to
//! be readable outside the lock, then the session reads it without
//! blocking and decrypts under the lock ([`Outbound::tls_pump`]): no lock
//! is ever held across a blocking read, and no read-ahead buffer of ours
//! sits beside the session's own. While the session handshakes, its work
//! runs on the TLS handshake threads
//! ([`HandshakePool`]), the worker waiting with
//! the lock held, as the session's only user then.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::mem;
use std::net::TcpStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rustls::ServerConnection;

use crate::server::admission::tls::HandshakePool;
use crate::server::conn::close::{CloseRequest, CloseState};
use crate::server::conn::id::ConnId;
use crate::sys;

/// Queue capacity kept once a queue empties; more is given back, so a
/// connection that once queued a burst does not hold its memory while idle.
const RETAIN_QUEUE: usize = 16 * 1024;

/// What happened to a message handed to [`Outbound::push`] or
/// [`Outbound::drain`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Delivery {
    /// The socket took all of it.
    Written,
    /// Some or all of it waits in the queue.
    Queued,
}

/// Why a message was not accepted for sending.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PushError {
    /// The connection is closing (or draining, or its stream broke): it
    /// takes no more messages from other threads.
    Closed,
    /// The message would take the outbox past its bound: the connection is
    /// now being closed as a slow consumer.
    Full,
    /// The message alone is larger than the whole outbox: it is refused and
    /// the connection stays open (what is queued, not one message, makes a
    /// slow consumer). The server refuses such messages before they get
    /// here (`--max-outbox` is at least the largest message, and a publish
    /// whose `MSG` would pass `--max-frame` is refused).
    TooLarge,
}

/// Why a drain did not start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum DrainRefused {
    /// Another close was asked for first.
    Requested,
    /// The worker is already closing on its own.
    Finishing,
}

/// Connections with queued bytes that no producer has flushed yet: the
/// timer thread flushes them on its tick.
#[derive(Default)]
pub(crate) struct Flushes {
    ids: Mutex<Vec<ConnId>>,
}

impl Flushes {
    fn add(&self, id: ConnId) {
        self.ids.lock().push(id);
    }

    /// Takes the listed ids, leaving the list empty.
    pub(crate) fn take(&self) -> Vec<ConnId> {
        mem::take(&mut *self.ids.lock())
    }

    /// Puts back ids still to flush.
    pub(crate) fn extend(&self, ids: impl IntoIterator<Item = ConnId>) {
        self.ids.lock().extend(ids);
    }
}

/// What a timer-thread flush found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Flushed {
    /// Nothing is queued any more.
    Empty,
    /// Bytes remain; try again next tick.
    Pending,
    /// Bytes remain and made no progress for the stall limit: the
    /// connection was asked to close ([`CloseRequest::WriteStalled`]).
    Stalled,
}

/// What [`Outbound::expire`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Expired {
    /// The CLOSE is written (or queued): the worker, once woken, only
    /// hangs up.
    Sent,
    /// The worker has input to answer first: it must be woken to send the
    /// CLOSE itself.
    Requested,
    /// A close was already under way.
    Closing,
}

/// One connection's outbound path (see the module docs).
pub(crate) struct Outbound {
    /// The connection's socket. Its worker reads it without any lock;
    /// writes happen only through this type.
    stream: TcpStream,
    /// The write right, the queue and the close state.
    state: Mutex<State>,
    /// The queue's length, readable without the lock (`/connections`).
    queued: AtomicUsize,
    /// The outbox bound, in bytes.
    max_queued: usize,
    /// The longest the worker may block writing one batch (the write
    /// timeout), however the peer trickles; `None`: no limit.
    write_limit: Option<Duration>,
}

/// What the write lock guards.
struct State {
    /// Where the connection is on its way out.
    close: CloseState,
    /// Encoded messages not yet written.
    queue: Queue,
    /// The worker is writing outside the lock: the next bytes on the wire
    /// are its, so others only queue.
    worker_mid_batch: bool,
    /// The worker holds bytes it read and has not answered yet (or has not
    /// reached its first wait): a final CLOSE must then come from it, after
    /// its answers. False only while it waits for input with nothing
    /// pending.
    worker_busy: bool,
    /// Bytes the worker took from the queue and is writing.
    taken: usize,
    /// The length of the CLOSE queued or written on this connection, once
    /// one was: after it only the worker's answers (of a drain) follow.
    close_sent: Option<usize>,
    /// A write failed or stopped part-way: nothing more can go out.
    broken: bool,
    /// On the [`Flushes`] list.
    listed: bool,
    /// When the queue last made progress, or first held bytes.
    progress_at: Instant,
    /// The protocol has started: before (a WebSocket connection still in
    /// its HTTP upgrade) only the worker writes, pushes and probes are
    /// refused, and a drain or expiry sends no CLOSE (the worker, woken,
    /// just hangs up).
    started: bool,
    /// Messages and bytes other threads handed to this path (pushes,
    /// probes, drain CLOSEs), written or queued: the worker's own count
    /// does not see them.
    pushed: (u64, u64),
    /// A TLS connection's session (see the module docs).
    tls: Option<Box<ServerConnection>>,
}

impl State {
    /// Plaintext bytes queued.
    fn unwritten(&self) -> usize {
        self.queue.len()
    }

    /// Whether anything waits to go out: queued bytes, or records inside
    /// the TLS session.
    fn pending(&self) -> bool {
        self.queue.len() > 0 || self.tls.as_ref().is_some_and(|tls| tls.wants_write())
    }

    /// Sends a prefix of `bytes` without blocking (see [`send_now`]).
    fn send(&mut self, stream: &TcpStream, bytes: &[u8]) -> io::Result<usize> {
        send_now(
            stream,
            self.tls.as_deref_mut(),
            &mut self.progress_at,
            bytes,
        )
    }

    /// Sends a prefix of the queue without blocking, or, with nothing
    /// queued, the TLS session's own records; returns how many queued
    /// bytes went.
    fn send_queued(&mut self, stream: &TcpStream) -> io::Result<usize> {
        let State {
            queue,
            tls,
            progress_at,
            ..
        } = self;
        match tls.as_deref_mut() {
            Some(tls) if queue.len() == 0 => send_records(stream, tls, progress_at).map(|()| 0),
            tls => send_now(stream, tls, progress_at, queue.unwritten()),
        }
    }
}

/// At most this much plaintext is handed to a TLS session by one
/// non-blocking write (one record's worth).
const TLS_CHUNK: usize = 16 * 1024;

/// What [`Outbound::tls_pump`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Pumped {
    /// This many plaintext bytes were put in the worker's buffer.
    Plaintext(usize),
    /// Nothing to give yet: more bytes must be read from the socket.
    NeedBytes,
    /// The peer sent `close_notify`: the end of its stream.
    Closed,
}

/// Encoded messages waiting to be written, and where each ends, so that a
/// slow consumer's queue can be cut at a message boundary.
#[derive(Debug, Default)]
struct Queue {
    bytes: Vec<u8>,
    /// Start of the unwritten bytes in `bytes`.
    head: usize,
    /// End (in `bytes`) of every message with bytes still unwritten.
    ends: VecDeque<usize>,
    /// Some of the first of those messages is already on the wire.
    front_begun: bool,
}

impl Queue {
    /// Unwritten bytes.
    fn len(&self) -> usize {
        self.bytes.len() - self.head
    }

    /// The unwritten bytes.
    fn unwritten(&self) -> &[u8] {
        &self.bytes[self.head..]
    }

    /// Appends a message, or the rest of one whose start already went out
    /// (`begun`; only ever into an empty queue).
    fn push(&mut self, msg: &[u8], begun: bool) {
        debug_assert!(!begun || self.ends.is_empty());
        if self.ends.is_empty() {
            self.front_begun = begun;
        }
        self.bytes.extend_from_slice(msg);
        self.ends.push_back(self.bytes.len());
    }

    /// Records that `n` more bytes went out.
    fn advance(&mut self, n: usize) {
        if n == 0 {
            return;
        }
        self.head += n;
        let mut boundary = None;
        while self.ends.front().is_some_and(|&end| end <= self.head) {
            boundary = self.ends.pop_front();
        }
        self.front_begun = match boundary {
            Some(end) => self.head > end,
            None => true,
        };
        if self.head == self.bytes.len() {
            self.clear();
        }
    }

    /// Drops the messages not begun, keeping the rest of the one on the
    /// wire (cutting it would tear the stream mid-frame).
    fn drop_unbegun(&mut self) {
        let keep = match self.ends.front() {
            Some(&end) if self.front_begun => end,
            _ => self.head,
        };
        self.bytes.truncate(keep);
        self.ends.truncate(usize::from(self.front_begun));
        if self.head == self.bytes.len() {
            self.clear();
        }
    }

    /// Takes the unwritten bytes out, leaving the queue empty.
    fn take(&mut self) -> Vec<u8> {
        let mut bytes = mem::take(&mut self.bytes);
        bytes.drain(..self.head);
        self.clear();
        bytes
    }

    /// Empties the queue, giving back a large allocation.
    fn clear(&mut self) {
        self.head = 0;
        self.ends.clear();
        self.front_begun = false;
        if self.bytes.capacity() > RETAIN_QUEUE {
            self.bytes = Vec::new();
        } else {
            self.bytes.clear();
        }
    }
}

impl Outbound {
    pub(crate) fn new(
        stream: TcpStream,
        max_queued: usize,
        write_limit: Option<Duration>,
        started: bool,
        tls: Option<ServerConnection>,
    ) -> Outbound {
        Outbound {
            stream,
            state: Mutex::new(State {
                close: CloseState::Open,
                queue: Queue::default(),
                worker_mid_batch: false,
                worker_busy: true,
                taken: 0,
                close_sent: None,
                broken: false,
                listed: false,
                progress_at: Instant::now(),
                started,
                pushed: (0, 0),
                tls: tls.map(Box::new),
            }),
            queued: AtomicUsize::new(0),
            max_queued,
            write_limit,
        }
    }

    /// The socket, for the worker's reads and for socket options.
    pub(crate) fn stream(&self) -> &TcpStream {
        &self.stream
    }

    /// Messages and bytes other threads handed to this path (see
    /// `State::pushed`), for `/connections`.
    pub(crate) fn pushed(&self) -> (u64, u64) {
        self.state.lock().pushed
    }

    /// Marks the protocol as started (a WebSocket upgrade was answered):
    /// from now on messages other than the worker's may go out.
    pub(crate) fn start(&self) {
        self.state.lock().started = true;
    }

    /// Where the connection is on its way out.
    pub(crate) fn close_state(&self) -> CloseState {
        self.state.lock().close
    }

    /// Bytes waiting to be written.
    pub(crate) fn queued_bytes(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }

    /// The length of the CLOSE written or queued, if one was.
    pub(crate) fn close_sent(&self) -> Option<usize> {
        self.state.lock().close_sent
    }

    /// Sends `msg`, one whole encoded message, from any thread without
    /// blocking: written at once if the socket takes it, else queued.
    pub(crate) fn push(
        &self,
        id: ConnId,
        flushes: &Flushes,
        msg: &[u8],
    ) -> Result<Delivery, PushError> {
        let mut st = self.state.lock();
        if st.close != CloseState::Open || st.close_sent.is_some() || st.broken || !st.started {
            return Err(PushError::Closed);
        }
        if msg.len() > self.max_queued {
            // No queue could hold it: the message is refused, the
            // connection is not to blame.
            return Err(PushError::TooLarge);
        }
        if st.unwritten() + st.taken + msg.len() > self.max_queued {
            self.slow_consumer(&mut st);
            drop(st);
            sys::wake_reader(&self.stream);
            return Err(PushError::Full);
        }
        let delivery = self.enqueue(&mut st, msg);
        if delivery.is_some() {
            st.pushed.0 += 1;
            st.pushed.1 += msg.len() as u64;
        }
        self.list_if_pending(id, flushes, &mut st);
        delivery.ok_or(PushError::Closed)
    }

    /// Starts a drain for `request` (a draining one): sends `close`, the
    /// encoded CLOSE 1001, as [`push`](Outbound::push) would (it may go past
    /// the bound by its own size), and leaves the worker serving.
    pub(crate) fn drain(
        &self,
        id: ConnId,
        flushes: &Flushes,
        request: CloseRequest,
        close: &[u8],
    ) -> Result<Delivery, DrainRefused> {
        debug_assert!(request.drains(), "{request:?} does not drain");
        let mut st = self.state.lock();
        match st.close {
            CloseState::Open => {}
            CloseState::Requested(_) => return Err(DrainRefused::Requested),
            CloseState::Finishing => return Err(DrainRefused::Finishing),
        }
        st.close = CloseState::Requested(request);
        if !st.started {
            // No CLOSE before the protocol starts: the worker hangs up.
            drop(st);
            sys::wake_reader(&self.stream);
            return Ok(Delivery::Queued);
        }
        if st.broken || st.close_sent.is_some() {
            return Ok(Delivery::Queued);
        }
        st.close_sent = Some(close.len());
        let delivery = self.enqueue(&mut st, close);
        self.list_if_pending(id, flushes, &mut st);
        Ok(delivery.unwrap_or(Delivery::Queued))
    }

    /// Asks for an immediate close (a request that does not drain) and
    /// wakes the worker. False if a close was already under way.
    pub(crate) fn request_close(&self, request: CloseRequest) -> bool {
        debug_assert!(!request.drains(), "{request:?} drains: use Outbound::drain");
        let mut st = self.state.lock();
        if st.close != CloseState::Open {
            return false;
        }
        if request == CloseRequest::SlowConsumer {
            self.slow_consumer(&mut st);
        } else {
            st.close = CloseState::Requested(request);
        }
        drop(st);
        sys::wake_reader(&self.stream);
        true
    }

    /// The timer's close of an expired connection (idle timeout, token
    /// expiry). The caller wakes the worker afterwards with
    /// [`wake`](Outbound::wake), so that it can first expire every
    /// connection of the tick. When the worker waits with nothing read and
    /// unanswered and nothing is unread on the socket, `close` is sent here
    /// and now, on the outbound path ([`Expired::Sent`]); otherwise the
    /// worker answers what it has and sends the CLOSE itself when woken, as
    /// for any immediate request ([`Expired::Requested`]).
    pub(crate) fn expire(
        &self,
        id: ConnId,
        flushes: &Flushes,
        request: CloseRequest,
        close: &[u8],
    ) -> Expired {
        debug_assert!(!request.drains(), "{request:?} drains: use Outbound::drain");
        let mut st = self.state.lock();
        if st.close != CloseState::Open {
            return Expired::Closing;
        }
        st.close = CloseState::Requested(request);
        if st.worker_busy
            || st.broken
            || st.close_sent.is_some()
            || !st.started
            || sys::has_unread(&self.stream)
        {
            return Expired::Requested;
        }
        st.close_sent = Some(close.len());
        if self.enqueue(&mut st, close).is_some() {
            self.list_if_pending(id, flushes, &mut st);
        }
        Expired::Sent
    }

    /// The worker read bytes: marks it busy with them, so that a close
    /// asked for from now on waits for its answers. False if a final CLOSE
    /// already went out ([`expire`](Outbound::expire)): the bytes came
    /// after it and must be dropped unanswered.
    pub(crate) fn begin_read(&self) -> bool {
        let mut st = self.state.lock();
        let closed =
            st.close_sent.is_some() && st.close.request().is_some_and(|request| !request.drains());
        st.worker_busy = !closed;
        !closed
    }

    /// The worker has answered everything it read and is about to wait for
    /// more.
    pub(crate) fn end_read(&self) {
        self.state.lock().worker_busy = false;
    }

    /// Wakes a worker blocked in `read` without recording a request: it
    /// sees end of stream after the bytes already received. Ends a drain,
    /// or a worker lingering after its own CLOSE.
    pub(crate) fn wake(&self) {
        sys::wake_reader(&self.stream);
    }

    /// Records a slow-consumer close and drops the queued messages not yet
    /// begun.
    fn slow_consumer(&self, st: &mut State) {
        st.close = CloseState::Requested(CloseRequest::SlowConsumer);
        st.queue.drop_unbegun();
        self.publish_len(st);
    }

    /// Writes what is queued, then `msg`, without blocking; queues what the
    /// socket does not take. `None` if the stream is broken.
    fn enqueue(&self, st: &mut State, msg: &[u8]) -> Option<Delivery> {
        self.flush_nonblocking(st);
        if st.broken {
            return None;
        }
        let mut written = 0;
        if !st.pending() && !st.worker_mid_batch {
            match st.send(&self.stream, msg) {
                Ok(n) => written = n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => {
                    st.broken = true;
                    return None;
                }
            }
            if written == msg.len() {
                return Some(Delivery::Written);
            }
            st.progress_at = Instant::now();
        } else if !st.pending() {
            st.progress_at = Instant::now();
        }
        st.queue.push(&msg[written..], written > 0);
        self.publish_len(st);
        Some(Delivery::Queued)
    }

    /// Writes queued bytes while the socket takes them, unless the worker
    /// owns the stream's next bytes.
    fn flush_nonblocking(&self, st: &mut State) {
        if st.worker_mid_batch || st.broken {
            return;
        }
        while st.pending() {
            match st.send_queued(&self.stream) {
                Ok(0) if st.pending() => break,
                Ok(0) => {}
                Ok(n) => {
                    st.queue.advance(n);
                    st.progress_at = Instant::now();
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    st.broken = true;
                    break;
                }
            }
        }
        self.publish_len(st);
    }

    fn list_if_pending(&self, id: ConnId, flushes: &Flushes, st: &mut State) {
        if st.pending() && !st.listed {
            st.listed = true;
            flushes.add(id);
        }
    }

    fn publish_len(&self, st: &State) {
        self.queued
            .store(st.unwritten() + st.taken, Ordering::Relaxed);
    }

    /// The timer thread's flush of a listed connection: writes what the
    /// socket takes, and asks for a close if the queue has made no progress
    /// for `stall` (the write timeout).
    pub(crate) fn flush_listed(&self, stall: Option<Duration>) -> Flushed {
        let mut st = self.state.lock();
        self.flush_nonblocking(&mut st);
        if !st.pending() || st.broken {
            st.listed = false;
            return Flushed::Empty;
        }
        // The worker flushes after its own batch; its write has its timeout.
        if st.worker_mid_batch {
            return Flushed::Pending;
        }
        if stall.is_some_and(|stall| st.progress_at.elapsed() >= stall) {
            st.listed = false;
            if st.close == CloseState::Open || st.close.request().is_some_and(CloseRequest::drains)
            {
                // A drain whose CLOSE cannot go out is a stalled peer too.
                st.close = CloseState::Requested(CloseRequest::WriteStalled);
            }
            drop(st);
            sys::wake_reader(&self.stream);
            return Flushed::Stalled;
        }
        Flushed::Pending
    }

    /// The worker's write of a batch of answers: queued bytes first, then
    /// `batch`, blocking (outside the lock) as long as the socket's send
    /// timeout allows. Fails when the stream broke or a write timed out.
    pub(crate) fn write_batch(
        &self,
        id: ConnId,
        flushes: &Flushes,
        batch: &[u8],
    ) -> io::Result<()> {
        let mut st = self.state.lock();
        if st.broken {
            return Err(io::ErrorKind::BrokenPipe.into());
        }
        self.flush_nonblocking(&mut st);
        if st.broken {
            return Err(io::ErrorKind::BrokenPipe.into());
        }
        let mut rest = batch;
        if !st.pending() {
            if batch.is_empty() {
                return Ok(());
            }
            match st.send(&self.stream, batch) {
                Ok(n) => rest = &batch[n..],
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => {
                    st.broken = true;
                    return Err(e);
                }
            }
            if rest.is_empty() && !st.pending() {
                return Ok(());
            }
        }
        // Blocking from here: take what is queued (it goes first) and own
        // the stream until done.
        let mut backlog = st.queue.take();
        if let Some(tls) = st.tls.as_mut() {
            // Encrypted here, under the lock, after the records the session
            // holds; written below, outside it.
            match encrypt(tls, &backlog, rest) {
                Ok(records) => backlog = records,
                Err(e) => {
                    st.broken = true;
                    self.publish_len(&st);
                    return Err(e);
                }
            }
            rest = &[];
        }
        // Only other producers' bytes count against the outbox bound: the
        // worker's own answers are bounded by the write timeout.
        st.taken = backlog.len();
        st.worker_mid_batch = true;
        self.publish_len(&st);
        drop(st);
        let written = self.write_blocking([&backlog, rest]);
        let mut st = self.state.lock();
        st.worker_mid_batch = false;
        st.taken = 0;
        if backlog.capacity() <= RETAIN_QUEUE && st.queue.bytes.capacity() == 0 {
            backlog.clear();
            st.queue.bytes = backlog;
        }
        if let Err(e) = written {
            // Part of a message may have gone out: nothing more can follow.
            st.broken = true;
            self.publish_len(&st);
            return Err(e);
        }
        st.progress_at = Instant::now();
        self.flush_nonblocking(&mut st);
        self.list_if_pending(id, flushes, &mut st);
        Ok(())
    }

    /// Writes `parts` with blocking writes, all within the write limit: a
    /// peer that reads a little now and then does not keep the worker
    /// writing (and the connection open) past it. Fails with `WouldBlock`
    /// (a write timeout) when the limit is reached.
    fn write_blocking(&self, parts: [&[u8]; 2]) -> io::Result<()> {
        let deadline = self.write_limit.map(|limit| Instant::now() + limit);
        let mut stream = &self.stream;
        for mut rest in parts {
            while !rest.is_empty() {
                if let Some(deadline) = deadline {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Err(io::ErrorKind::WouldBlock.into());
                    }
                    stream.set_write_timeout(Some(left))?;
                }
                match stream.write(rest) {
                    Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                    Ok(n) => rest = &rest[n..],
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(())
    }

    /// The worker is ending the connection: records that (keeping an
    /// earlier request), queues `close` unless a CLOSE was already sent or
    /// the stream is broken, and writes everything queued, blocking as
    /// [`write_batch`](Outbound::write_batch) does.
    pub(crate) fn finish(
        &self,
        id: ConnId,
        flushes: &Flushes,
        close: Option<&[u8]>,
    ) -> io::Result<()> {
        let mut st = self.state.lock();
        if st.close == CloseState::Open {
            st.close = CloseState::Finishing;
        }
        if st.broken {
            return Err(io::ErrorKind::BrokenPipe.into());
        }
        if let Some(close) = close
            && st.close_sent.is_none()
            && st.started
        {
            st.close_sent = Some(close.len());
            st.queue.push(close, false);
        }
        drop(st);
        self.write_batch(id, flushes, &[])?;
        // TLS: after everything else, `close_notify` (once the session
        // has keys to say it with).
        let mut st = self.state.lock();
        if st.broken {
            return Ok(());
        }
        match st.tls.as_mut() {
            Some(tls) if !tls.is_handshaking() => tls.send_close_notify(),
            _ => return Ok(()),
        }
        drop(st);
        self.write_batch(id, flushes, &[])
    }

    /// TLS: whether the session is still in its handshake.
    pub(crate) fn tls_handshaking(&self) -> bool {
        self.state
            .lock()
            .tls
            .as_ref()
            .is_some_and(|tls| tls.is_handshaking())
    }

    /// TLS: whether the session holds decrypted bytes not yet read.
    pub(crate) fn tls_buffered(&self) -> bool {
        let mut st = self.state.lock();
        let Some(tls) = st.tls.as_mut() else {
            return false;
        };
        // With nothing new to process this only reports the state.
        tls.process_new_packets()
            .is_ok_and(|io| io.plaintext_bytes_to_read() > 0)
    }

    /// TLS: the subject of the client's certificate, if it presented one.
    pub(crate) fn tls_peer_subject(&self) -> Option<String> {
        let st = self.state.lock();
        let cert = st.tls.as_ref()?.peer_certificates()?.first()?.clone();
        drop(st);
        crate::server::admission::tls::subject(&cert)
    }

    /// TLS: whether the handshake was a resumption.
    pub(crate) fn tls_resumed(&self) -> bool {
        self.state
            .lock()
            .tls
            .as_ref()
            .is_some_and(|tls| tls.handshake_kind() == Some(rustls::HandshakeKind::Resumed))
    }

    /// TLS: feeds the session bytes that came before it could read the
    /// socket itself (those after a PROXY header).
    pub(crate) fn tls_feed(
        &self,
        handshakes: &HandshakePool,
        mut early: &[u8],
    ) -> Result<(), rustls::Error> {
        let mut st = self.state.lock();
        while !early.is_empty() {
            let tls = st.tls.as_mut().expect("a TLS connection");
            if tls.read_tls(&mut early).is_err() {
                break;
            }
            handshakes.process(&mut st.tls)?;
        }
        Ok(())
    }

    /// TLS: moves what the session has decrypted into `plain`, reading the
    /// socket for more without blocking (the worker waits for it to be
    /// readable outside the lock); with an empty `plain` (during the
    /// handshake) only feeds the session. The records the session answers
    /// with (handshake messages, alerts, tickets) go out without blocking,
    /// or wait for the next writer or the timer's flush.
    pub(crate) fn tls_pump(
        &self,
        id: ConnId,
        flushes: &Flushes,
        handshakes: &HandshakePool,
        plain: &mut [u8],
    ) -> Result<Pumped, rustls::Error> {
        let mut st = self.state.lock();
        let outcome = {
            let mut socket = NonBlockingRead(&self.stream);
            loop {
                let tls = st.tls.as_mut().expect("a TLS connection");
                if !plain.is_empty() {
                    match tls.reader().read(plain) {
                        Ok(0) => break Ok(Pumped::Closed),
                        Ok(n) => break Ok(Pumped::Plaintext(n)),
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                        // The socket ended without close_notify.
                        Err(_) => break Ok(Pumped::Closed),
                    }
                }
                match tls.read_tls(&mut socket) {
                    // The end of the peer's stream: the session now says
                    // so to the reader (above), or the handshake fails.
                    Ok(0) if plain.is_empty() => break Ok(Pumped::Closed),
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    // Nothing to read now, or the session's plaintext
                    // buffer is full (`plain` must be drained first): the
                    // worker decodes or waits, then comes back.
                    Err(_) => break Ok(Pumped::NeedBytes),
                }
                let processed = if tls.is_handshaking() {
                    handshakes.process(&mut st.tls)
                } else {
                    tls.process_new_packets().map(drop)
                };
                if let Err(e) = processed {
                    break Err(e);
                }
                let tls = st.tls.as_ref().expect("a TLS connection");
                if plain.is_empty() && !tls.is_handshaking() {
                    break Ok(Pumped::NeedBytes);
                }
            }
        };
        // Like any holder of the lock, flush what waits: here above all
        // the session's own answers.
        self.flush_nonblocking(&mut st);
        self.list_if_pending(id, flushes, &mut st);
        outcome
    }

    /// Holds the write right, as a producer writing does, for tests that
    /// need another thread to meet a held lock.
    #[cfg(test)]
    pub(crate) fn hold(&self) -> parking_lot::MutexGuard<'_, impl Sized> {
        self.state.lock()
    }
}

/// Sends a prefix of `bytes` without blocking; returns how many of them
/// the connection took. Plain: what the kernel took. TLS: the session's
/// waiting records first (`WouldBlock` while they do not all go), then at
/// most [`TLS_CHUNK`] bytes of plaintext, encrypted and sent as far as the
/// socket takes them (the rest of those records waits in the session).
fn send_now(
    stream: &TcpStream,
    tls: Option<&mut ServerConnection>,
    progress_at: &mut Instant,
    bytes: &[u8],
) -> io::Result<usize> {
    let Some(tls) = tls else {
        return sys::send_nonblocking(stream, bytes);
    };
    send_records(stream, tls, progress_at)?;
    let taken = tls.writer().write(&bytes[..bytes.len().min(TLS_CHUNK)])?;
    match send_records(stream, tls, progress_at) {
        Ok(()) => Ok(taken),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(taken),
        Err(e) => Err(e),
    }
}

/// Writes a TLS session's waiting records without blocking (each write
/// is progress); `WouldBlock` if some are left.
fn send_records(
    stream: &TcpStream,
    tls: &mut ServerConnection,
    progress_at: &mut Instant,
) -> io::Result<()> {
    let mut socket = NonBlocking(stream);
    while tls.wants_write() {
        match tls.write_tls(&mut socket) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(_) => *progress_at = Instant::now(),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Hands `parts` to a TLS session and takes every record it then holds.
fn encrypt(tls: &mut ServerConnection, first: &[u8], second: &[u8]) -> io::Result<Vec<u8>> {
    tls.writer().write_all(first)?;
    tls.writer().write_all(second)?;
    let mut records = Vec::with_capacity(first.len() + second.len() + 64);
    while tls.wants_write() {
        tls.write_tls(&mut records)?;
    }
    Ok(records)
}

/// A socket as an `io::Read` that never blocks.
struct NonBlockingRead<'a>(&'a TcpStream);

impl Read for NonBlockingRead<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        sys::recv_nonblocking(self.0, buf)
    }
}

/// A socket as an `io::Write` that never blocks.
struct NonBlocking<'a>(&'a TcpStream);

impl Write for NonBlocking<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        sys::send_nonblocking(self.0, buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{Message, OwnedMessage, Protocol, Reader, code};
    use crate::server::Config;
    use crate::server::conn::Conn;
    use crate::server::test_support::{KERNEL_HOLDS, pair, shared};
    use std::io::Read;
    use std::net::TcpStream;
    use std::sync::{Arc, Barrier};

    fn encode(msg: Message<'_>) -> Vec<u8> {
        let mut out = Vec::new();
        Protocol::Frame.encode(&msg, &mut out).unwrap();
        out
    }

    fn close_1001() -> Vec<u8> {
        encode(Message::Close {
            code: code::GOING_AWAY,
            reason: "server shutting down",
        })
    }

    /// Reads messages from the client end until a CLOSE (included) or the
    /// end of stream.
    fn read_until_close(client: &mut TcpStream) -> Vec<OwnedMessage> {
        client
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut reader = Reader::new(Protocol::Frame, 1 << 24);
        let mut got = Vec::new();
        while let Some(msg) = reader.read_message(client).unwrap() {
            let last = msg.close_code().is_some();
            got.push(msg);
            if last {
                break;
            }
        }
        got
    }

    /// Pushes `msg` until the socket stops taking it (the peer does not
    /// read); returns how many were pushed, the last one queued.
    fn fill(conn: &Conn, flushes: &Flushes, msg: &[u8]) -> usize {
        for n in 1..100_000 {
            if conn.out.push(conn.id, flushes, msg) == Ok(Delivery::Queued) {
                return n;
            }
        }
        panic!("the socket never filled");
    }

    /// The race of the old design: a drain that met the write lock held by
    /// a probe left its CLOSE to a worker blocked in `read`. Now the drain
    /// waits for the lock (held only across non-blocking sends) and sends.
    fn close_4000() -> Vec<u8> {
        encode(Message::Close {
            code: code::IDLE_TIMEOUT,
            reason: "idle timeout",
        })
    }

    #[test]
    fn an_expiry_of_a_waiting_worker_sends_the_close_itself() {
        let (shared, listener) = shared(Config::default());
        let (conn, mut client) = pair(&shared, &listener);
        // The worker answered everything and waits.
        conn.out.end_read();
        let expired = conn.out.expire(
            conn.id,
            &shared.flushes,
            CloseRequest::IdleTimeout,
            &close_4000(),
        );
        assert_eq!(expired, Expired::Sent);
        // No worker exists here and none was woken: the timer's thread
        // wrote it.
        assert_eq!(
            read_until_close(&mut client),
            [OwnedMessage::Close(
                code::IDLE_TIMEOUT,
                "idle timeout".into()
            )]
        );
        assert_eq!(conn.out.close_sent(), Some(close_4000().len()));
        // Bytes the worker reads now came after the CLOSE: dropped.
        assert!(!conn.out.begin_read());
        // The worker's own finish adds no second CLOSE.
        conn.out
            .finish(conn.id, &shared.flushes, Some(&close_4000()))
            .unwrap();
        conn.stream().shutdown(std::net::Shutdown::Write).unwrap();
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty(), "more after the CLOSE: {rest:?}");
    }

    #[test]
    fn an_expiry_leaves_the_close_to_a_worker_with_input_to_answer() {
        let (shared, listener) = shared(Config::default());
        // Busy: it has not reached its first wait.
        let (busy, _client) = pair(&shared, &listener);
        let expired = busy.out.expire(
            busy.id,
            &shared.flushes,
            CloseRequest::IdleTimeout,
            &close_4000(),
        );
        assert_eq!(expired, Expired::Requested);
        assert_eq!(busy.out.close_sent(), None);
        // Waiting, but a message came in that it has not read yet.
        let (unread, mut client) = pair(&shared, &listener);
        unread.out.end_read();
        client.write_all(&encode(Message::Ping(b"late"))).unwrap();
        assert!(
            crate::sys::wait_readable(unread.stream()).is_ok(),
            "the PING arrives"
        );
        let expired = unread.out.expire(
            unread.id,
            &shared.flushes,
            CloseRequest::IdleTimeout,
            &close_4000(),
        );
        assert_eq!(expired, Expired::Requested);
        assert_eq!(unread.out.close_sent(), None, "the worker answers first");
        assert!(unread.out.begin_read(), "its bytes are to be answered");
        // And a second expiry finds the close under way.
        let again = unread.out.expire(
            unread.id,
            &shared.flushes,
            CloseRequest::IdleTimeout,
            &close_4000(),
        );
        assert_eq!(again, Expired::Closing);
    }

    #[test]
    fn a_drain_meeting_a_probe_that_holds_the_write_right_still_sends_its_close() {
        let (shared, listener) = shared(Config::default());
        let (conn, mut client) = pair(&shared, &listener);
        let holding = Arc::new(Barrier::new(2));
        let prober = {
            let conn = Arc::clone(&conn);
            let holding = Arc::clone(&holding);
            std::thread::spawn(move || {
                let guard = conn.out.hold();
                holding.wait();
                std::thread::sleep(Duration::from_millis(50));
                drop(guard);
            })
        };
        holding.wait();
        let drained = conn.out.drain(
            conn.id,
            &shared.flushes,
            CloseRequest::Shutdown,
            &close_1001(),
        );
        assert_eq!(drained, Ok(Delivery::Written));
        prober.join().unwrap();
        // No worker exists here: the CLOSE went out from this thread.
        assert_eq!(
            read_until_close(&mut client),
            [OwnedMessage::Close(
                code::GOING_AWAY,
                "server shutting down".into()
            )]
        );
        assert_eq!(
            conn.out.close_state(),
            CloseState::Requested(CloseRequest::Shutdown)
        );
        assert_eq!(
            conn.out.push(conn.id, &shared.flushes, b"x"),
            Err(PushError::Closed),
            "nothing from other threads after a CLOSE"
        );
        assert_eq!(
            conn.out
                .drain(conn.id, &shared.flushes, CloseRequest::MaxAge, b"c"),
            Err(DrainRefused::Requested)
        );
    }

    #[test]
    fn a_close_queued_behind_a_full_socket_goes_out_whole_on_the_next_flush() {
        let (shared, listener) = shared(Config::default());
        let (conn, mut client) = pair(&shared, &listener);
        let ping = encode(Message::Ping(&[7; 100]));
        let pushed = fill(&conn, &shared.flushes, &ping);
        let close = close_1001();
        assert_eq!(
            conn.out
                .drain(conn.id, &shared.flushes, CloseRequest::MaxAge, &close),
            Ok(Delivery::Queued)
        );
        assert_eq!(
            shared.flushes.take(),
            [conn.id],
            "listed once for the timer"
        );
        // The client reads while the timer thread flushes, tick by tick.
        let reader = std::thread::spawn(move || read_until_close(&mut client));
        let deadline = Instant::now() + Duration::from_secs(5);
        while conn.out.flush_listed(None) == Flushed::Pending {
            assert!(Instant::now() < deadline, "the queue never drained");
            std::thread::sleep(Duration::from_millis(1));
        }
        let got = reader.join().unwrap();
        assert_eq!(got.len(), pushed + 1, "every PING whole, then the CLOSE");
        assert!(
            got[..pushed]
                .iter()
                .all(|m| *m == OwnedMessage::Ping(vec![7; 100]))
        );
        assert_eq!(got[pushed].close_code(), Some(code::GOING_AWAY));
        assert_eq!(conn.out.queued_bytes(), 0);
    }

    #[test]
    fn the_workers_answers_follow_what_other_threads_queued() {
        let (shared, listener) = shared(Config::default());
        let (conn, mut client) = pair(&shared, &listener);
        let ping = encode(Message::Ping(&[b'p'; 100]));
        let pushed = fill(&conn, &shared.flushes, &ping);
        let mut batch = encode(Message::Data(b"answer"));
        batch.extend(close_1001());
        let reader = std::thread::spawn(move || read_until_close(&mut client));
        // Blocks (outside the lock) until the client has read enough.
        conn.out
            .write_batch(conn.id, &shared.flushes, &batch)
            .unwrap();
        let got = reader.join().unwrap();
        assert_eq!(got.len(), pushed + 2);
        assert!(
            got[..pushed]
                .iter()
                .all(|m| *m == OwnedMessage::Ping(vec![b'p'; 100]))
        );
        assert_eq!(got[pushed], OwnedMessage::Data(b"answer".to_vec()));
    }

    /// The worker's own answers, however large, do not count against the
    /// outbox: a probe or push meanwhile is queued, not a slow consumer.
    #[test]
    fn a_push_while_the_worker_writes_a_large_batch_is_queued() {
        let (shared, listener) = shared(Config {
            max_outbox: 64 * 1024,
            ..Config::default()
        });
        let (conn, mut client) = pair(&shared, &listener);
        let batch = encode(Message::Data(&vec![3; 4 << 20]));
        let writer = {
            let conn = Arc::clone(&conn);
            let shared = Arc::clone(&shared);
            std::thread::spawn(move || conn.out.write_batch(conn.id, &shared.flushes, &batch))
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        while !conn.out.state.lock().worker_mid_batch {
            assert!(Instant::now() < deadline, "the batch never blocked");
            std::thread::sleep(Duration::from_millis(1));
        }
        let ping = encode(Message::Ping(b"probe"));
        assert_eq!(
            conn.out.push(conn.id, &shared.flushes, &ping),
            Ok(Delivery::Queued)
        );
        assert_eq!(conn.out.close_state(), CloseState::Open);
        let reader = std::thread::spawn(move || {
            client
                .set_read_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            let mut reader = Reader::new(Protocol::Frame, 8 << 20);
            let first = reader.read_message(&mut client).unwrap();
            let second = reader.read_message(&mut client).unwrap();
            (first, second)
        });
        writer.join().unwrap().unwrap();
        assert!(conn.out.flush_listed(None) == Flushed::Empty);
        let (first, second) = reader.join().unwrap();
        assert!(matches!(first, Some(OwnedMessage::Data(p)) if p.len() == 4 << 20));
        assert_eq!(second, Some(OwnedMessage::Ping(b"probe".to_vec())));
    }

    #[test]
    fn a_message_past_the_bound_closes_a_slow_consumer_and_frees_its_queue() {
        let (shared, listener) = shared(Config {
            max_outbox: 64 * 1024,
            ..Config::default()
        });
        let (conn, _client) = pair(&shared, &listener);
        let data = encode(Message::Data(&[1; 1000]));
        fill(&conn, &shared.flushes, &data);
        let mut outcome = Ok(Delivery::Queued);
        for _ in 0..100 {
            outcome = conn.out.push(conn.id, &shared.flushes, &data);
            if outcome.is_err() {
                break;
            }
        }
        assert_eq!(outcome, Err(PushError::Full));
        assert_eq!(
            conn.out.close_state(),
            CloseState::Requested(CloseRequest::SlowConsumer)
        );
        // Only the rest of the message already begun on the wire is kept.
        assert!(
            conn.out.queued_bytes() < data.len(),
            "{}",
            conn.out.queued_bytes()
        );
        assert_eq!(
            conn.out.push(conn.id, &shared.flushes, &data),
            Err(PushError::Closed)
        );
    }

    #[test]
    fn a_queue_that_makes_no_progress_for_the_stall_limit_asks_for_a_close() {
        let (shared, listener) = shared(Config::default());
        let (conn, _client) = pair(&shared, &listener);
        let data = encode(Message::Data(&[1; 1000]));
        fill(&conn, &shared.flushes, &data);
        // A full socket may still take a little (acknowledgements free its
        // send buffer later on a busy machine): queue more than it can
        // ever take, so the queue cannot drain before the stall check.
        while conn.out.queued_bytes() <= KERNEL_HOLDS {
            conn.out.push(conn.id, &shared.flushes, &data).unwrap();
        }
        assert_eq!(
            conn.out.flush_listed(Some(Duration::from_secs(60))),
            Flushed::Pending
        );
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(
            conn.out.flush_listed(Some(Duration::from_millis(10))),
            Flushed::Stalled
        );
        assert_eq!(
            conn.out.close_state(),
            CloseState::Requested(CloseRequest::WriteStalled)
        );
    }

    #[test]
    fn an_idle_connection_holds_no_queue_memory_after_a_burst() {
        let (shared, listener) = shared(Config::default());
        let (conn, mut client) = pair(&shared, &listener);
        let data = encode(Message::Data(&[1; 60_000]));
        fill(&conn, &shared.flushes, &data);
        conn.out.push(conn.id, &shared.flushes, &data).unwrap();
        conn.out
            .push(conn.id, &shared.flushes, &close_1001())
            .unwrap();
        let reader = std::thread::spawn(move || read_until_close(&mut client));
        while conn.out.flush_listed(None) == Flushed::Pending {
            std::thread::sleep(Duration::from_millis(1));
        }
        reader.join().unwrap();
        assert_eq!(conn.out.state.lock().queue.bytes.capacity(), 0);
    }

    /// A peer that reads a little every so often never lets one write call
    /// time out; the limit bounds the whole batch instead.
    #[test]
    fn a_trickling_reader_cannot_stretch_a_batch_past_the_write_limit() {
        let (shared, listener) = shared(Config {
            write_timeout: Some(Duration::from_millis(300)),
            ..Config::default()
        });
        let (conn, client) = pair(&shared, &listener);
        let socket = socket2::SockRef::from(conn.stream());
        socket.set_send_buffer_size(64 * 1024).unwrap();
        socket2::SockRef::from(&client)
            .set_recv_buffer_size(64 * 1024)
            .unwrap();
        conn.stream()
            .set_write_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        let started = Instant::now();
        let reader = std::thread::spawn(move || {
            // 64 KiB every 100 ms: progress well within every 300 ms.
            let mut client = client;
            let mut chunk = vec![0u8; 64 * 1024];
            while started.elapsed() < Duration::from_secs(10) {
                use std::io::Read;
                match client.read(&mut chunk) {
                    Ok(0) | Err(_) => return,
                    Ok(_) => std::thread::sleep(Duration::from_millis(100)),
                }
            }
        });
        let batch = vec![0u8; 8 << 20];
        let written = conn.out.write_batch(conn.id, &shared.flushes, &batch);
        let took = started.elapsed();
        assert_eq!(written.unwrap_err().kind(), io::ErrorKind::WouldBlock);
        assert!(took >= Duration::from_millis(300), "{took:?}");
        assert!(took < Duration::from_millis(1500), "{took:?}");
        conn.force_close();
        reader.join().unwrap();
    }

    mod queue {
        use crate::server::conn::outbound::Queue;
        use proptest::prelude::*;

        #[derive(Clone, Debug)]
        enum Op {
            /// A message of this length, of which this many bytes were
            /// written before it was queued (only into an empty queue).
            Push(usize, usize),
            /// The socket takes this many bytes.
            Advance(usize),
        }

        fn op() -> impl Strategy<Value = Op> {
            prop_oneof![
                (1usize..50, 0usize..50).prop_map(|(len, w)| Op::Push(len, w % len)),
                (0usize..120).prop_map(Op::Advance),
            ]
        }

        proptest! {
            /// Whatever was queued and however much went out, dropping the
            /// messages not begun keeps exactly the rest of the message on
            /// the wire, so the stream never tears mid-frame.
            #[test]
            fn dropping_unbegun_messages_keeps_exactly_the_one_on_the_wire(
                ops in proptest::collection::vec(op(), 0..40),
            ) {
                let mut queue = Queue::default();
                // The model: messages (id, total length, bytes written).
                let mut model: Vec<(u8, usize, usize)> = Vec::new();
                let mut next_id = 0u8;
                for op in ops {
                    match op {
                        Op::Push(len, written) => {
                            let written = if model.is_empty() { written } else { 0 };
                            next_id = next_id.wrapping_add(1);
                            let msg = vec![next_id; len];
                            queue.push(&msg[written..], written > 0);
                            model.push((next_id, len, written));
                        }
                        Op::Advance(n) => {
                            let n = n.min(queue.len());
                            queue.advance(n);
                            let mut left = n;
                            while left > 0 {
                                let front = &mut model[0];
                                let take = left.min(front.1 - front.2);
                                front.2 += take;
                                left -= take;
                                if front.2 == front.1 {
                                    model.remove(0);
                                }
                            }
                        }
                    }
                    let expected: usize = model.iter().map(|m| m.1 - m.2).sum();
                    prop_assert_eq!(queue.len(), expected);
                }
                queue.drop_unbegun();
                let kept: Vec<u8> = match model.first() {
                    Some(&(id, len, written)) if written > 0 => vec![id; len - written],
                    _ => Vec::new(),
                };
                prop_assert_eq!(queue.unwritten(), &kept[..]);
            }
        }
    }
}
