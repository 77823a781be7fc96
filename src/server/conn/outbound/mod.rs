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
//! most [`TLS_CHUNK`](tls::TLS_CHUNK) bytes of plaintext at a time, and only once its
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

use std::io::{self, Write};
use std::mem;
use std::net::TcpStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::server::conn::close::{CloseRequest, CloseState};
use crate::server::conn::id::ConnId;
use crate::sys;

mod queue;
#[cfg(feature = "tls")]
mod tls;
#[cfg(not(feature = "tls"))]
#[path = "tls_off.rs"]
mod tls;

use queue::Queue;
pub(crate) use tls::{HandshakePool, Session, TlsError};

/// What [`Outbound::tls_pump`] found. (Without the `tls` feature no
/// session exists to make one.)
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(not(feature = "tls"), allow(dead_code))]
pub(crate) enum Pumped {
    /// This many plaintext bytes were put in the worker's buffer.
    Plaintext(usize),
    /// Nothing to give yet: more bytes must be read from the socket.
    NeedBytes,
    /// The peer sent `close_notify`: the end of its stream.
    Closed,
}

use tls::{encrypt, send_now, send_records};

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
    tls: Option<Box<Session>>,
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

impl Outbound {
    pub(crate) fn new(
        stream: TcpStream,
        max_queued: usize,
        write_limit: Option<Duration>,
        started: bool,
        tls: Option<Session>,
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
        self.send_whole(id, flushes, msg, true)
    }

    /// Sends the worker's own answers (`batch`, whole encoded messages)
    /// without blocking, as [`push`](Outbound::push) does, for a worker that
    /// has no thread to block on: a parked connection's PONGs. Counted as
    /// the worker's, not as pushed.
    pub(crate) fn reply(
        &self,
        id: ConnId,
        flushes: &Flushes,
        batch: &[u8],
    ) -> Result<Delivery, PushError> {
        self.send_whole(id, flushes, batch, false)
    }

    fn send_whole(
        &self,
        id: ConnId,
        flushes: &Flushes,
        msg: &[u8],
        pushed: bool,
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
        if delivery.is_some() && pushed {
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

    /// Holds the write right, as a producer writing does, for tests that
    /// need another thread to meet a held lock.
    #[cfg(test)]
    pub(crate) fn hold(&self) -> parking_lot::MutexGuard<'_, impl Sized> {
        self.state.lock()
    }
}

#[cfg(test)]
mod tests;
