//! What the worker, the timer thread and shutdown share about one connection.

use std::io::{self, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU8, Ordering, fence};
use std::time::Instant;

use parking_lot::Mutex;

use super::close::CloseReason;
use super::registry::ConnId;
use crate::activity::{Stamp, Traffic};
use crate::sys;

/// A close asked for by another thread (the timer or shutdown). Stored in an
/// `AtomicU8`; the first request wins.
///
/// Two kinds of request exist. An *immediate* one (idle timeout, stalled
/// writes) wakes the worker with `shutdown(SHUT_RD)`: it answers what it
/// has already read, writes the CLOSE and hangs up. A *draining* one
/// (shutdown, maximum age) writes CLOSE 1001 at once and leaves the worker
/// serving: the client is expected to stop sending, half-close, and read
/// the answers to whatever it sent before it saw the CLOSE. The worker
/// hangs up at the client's end of stream, or when [`Conn::force`] cuts the
/// drain short after a grace period.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum CloseRequest {
    IdleTimeout = 1,
    /// Draining: the server is shutting down.
    Shutdown = 2,
    /// A server PING could not be written: the peer stopped reading.
    WriteStalled = 3,
    /// Draining: the connection reached its maximum age.
    MaxAge = 4,
}

/// The close state once the worker itself is closing the connection (it is
/// sending its CLOSE or lingering) without another thread having asked:
/// nobody else needs to act, and an idle timer that fires now must not count
/// as an idle timeout. Not a [`CloseRequest`]: the worker has its own reason.
const CLOSING: u8 = u8::MAX;

impl CloseRequest {
    fn from_u8(v: u8) -> Option<CloseRequest> {
        match v {
            1 => Some(CloseRequest::IdleTimeout),
            2 => Some(CloseRequest::Shutdown),
            3 => Some(CloseRequest::WriteStalled),
            4 => Some(CloseRequest::MaxAge),
            _ => None,
        }
    }

    pub(crate) fn reason(self) -> CloseReason {
        match self {
            CloseRequest::IdleTimeout => CloseReason::IdleTimeout,
            CloseRequest::Shutdown => CloseReason::Shutdown,
            CloseRequest::WriteStalled => CloseReason::WriteTimeout,
            CloseRequest::MaxAge => CloseReason::MaxAge,
        }
    }

    /// Whether this request drains (CLOSE first, hang up later) rather than
    /// closes at once.
    pub(crate) fn drains(self) -> bool {
        matches!(self, CloseRequest::Shutdown | CloseRequest::MaxAge)
    }
}

/// How a draining CLOSE went out, or why it did not.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Drain {
    /// The CLOSE was written; the worker keeps serving.
    Sent,
    /// The worker was writing: it sends the CLOSE when its write ends.
    Deferred,
    /// The peer is not reading (its window is full): the connection was
    /// woken to close at once instead.
    Closing,
    /// A close had already been asked for.
    AlreadyClosing,
}

/// What the write lock guards besides the right to write.
#[derive(Debug, Default)]
struct WriteState {
    /// The length of the CLOSE written on this connection, once one was.
    close_sent: Option<usize>,
    /// A write stopped part-way through a frame: the stream is unusable.
    torn: bool,
}

/// What happened to a PING the timer thread tried to send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Probe {
    Sent,
    /// The worker was writing, or the send buffer was full: try later.
    Skipped,
    /// Only part of the PING fit: the stream is now mid-frame, so the
    /// connection was asked to close.
    Stalled,
}

/// One connection's shared state.
///
/// The socket has a single owner for reading (the worker thread). Writes are
/// serialised by `write_lock` because other threads write whole frames too:
/// the timer thread's server PINGs, and the CLOSE 1001 that starts a drain.
/// Other threads end a connection only through [`Conn::request_close`] and
/// [`Conn::force`], which record why and wake the worker with
/// `shutdown(SHUT_RD)`; the worker then drops the socket. No thread ever
/// closes a descriptor it does not own.
pub(crate) struct Conn {
    /// This connection's id.
    pub(crate) id: ConnId,
    /// The socket's peer: the client, or a load balancer in front of it.
    socket_peer: SocketAddr,
    /// The real client's address from a PROXY protocol header, once read.
    client: OnceLock<SocketAddr>,
    /// When the connection was accepted.
    pub(crate) opened: Instant,
    /// The socket. Closed when the last `Arc<Conn>` goes, which is the
    /// worker's unless a registry reader holds a clone for a moment.
    pub(crate) stream: TcpStream,
    /// The published tick ([`crate::activity::Clock`]) when the last
    /// complete message arrived. Written only by the worker.
    pub(crate) activity: Stamp,
    /// Messages and bytes in and out, written by the worker only.
    pub(crate) traffic: Traffic,
    /// A [`CloseRequest`] as `u8`, 0 while none.
    close_request: AtomicU8,
    /// Serialises whole-frame writes between the worker and other threads.
    write_lock: Mutex<WriteState>,
}

impl Conn {
    pub(crate) fn new(id: ConnId, stream: TcpStream, peer: SocketAddr, now_tick: u64) -> Conn {
        Conn {
            id,
            socket_peer: peer,
            client: OnceLock::new(),
            opened: Instant::now(),
            stream,
            activity: Stamp::new(now_tick),
            traffic: Traffic::default(),
            close_request: AtomicU8::new(0),
            write_lock: Mutex::new(WriteState::default()),
        }
    }

    /// The client's address: from the PROXY protocol header when there was
    /// one, else the socket's peer.
    pub(crate) fn peer(&self) -> SocketAddr {
        *self.client.get().unwrap_or(&self.socket_peer)
    }

    /// Records the client address a PROXY protocol header gave.
    pub(crate) fn set_client(&self, client: SocketAddr) {
        let _ = self.client.set(client);
    }

    /// Asks the worker to close the connection at once for `request` (which
    /// must not drain) and wakes it. Returns false if a close was already
    /// requested.
    pub(crate) fn request_close(&self, request: CloseRequest) -> bool {
        debug_assert!(!request.drains(), "{request:?} drains: use Conn::drain");
        let asked = self.ask(request).is_ok();
        if asked {
            sys::wake_reader(&self.stream);
        }
        asked
    }

    /// Starts draining for `request`, a draining request: writes `close`
    /// (the encoded CLOSE 1001) without blocking, and leaves the worker
    /// serving until the client hangs up or [`force`](Conn::force) is
    /// called.
    pub(crate) fn drain(&self, request: CloseRequest, close: &[u8]) -> Drain {
        debug_assert!(request.drains(), "{request:?} does not drain");
        if let Err(current) = self.ask(request) {
            // A worker lingering after its own CLOSE is cut short by
            // shutdown, so the drain does not wait for it.
            if request == CloseRequest::Shutdown && current == CLOSING {
                sys::wake_reader(&self.stream);
            }
            return Drain::AlreadyClosing;
        }
        // If the lock is taken, the worker is writing; it calls
        // `pending_close` once its write is done, after releasing the lock.
        // The fences make this a Dekker pair: either this thread sees the
        // lock free, or the worker sees the request.
        fence(Ordering::SeqCst);
        let Some(mut state) = self.write_lock.try_lock() else {
            return Drain::Deferred;
        };
        if state.close_sent.is_some() || state.torn {
            return Drain::Sent;
        }
        match sys::send_nonblocking(&self.stream, close) {
            Ok(n) if n == close.len() => {
                state.close_sent = Some(n);
                Drain::Sent
            }
            Ok(n) => {
                // Nothing fitted, or only part: the peer stopped reading. The
                // worker, woken, writes the CLOSE itself with its write
                // timeout (or gives up on a torn stream).
                state.torn = n > 0;
                drop(state);
                sys::wake_reader(&self.stream);
                Drain::Closing
            }
            Err(_) => {
                drop(state);
                sys::wake_reader(&self.stream);
                Drain::Closing
            }
        }
    }

    /// Ends a drain: wakes the worker as an immediate request would, so it
    /// answers what it has read and hangs up. The recorded reason stays.
    pub(crate) fn force(&self) {
        sys::wake_reader(&self.stream);
    }

    /// Records `request` unless a close was already asked for; the current
    /// state if it was.
    fn ask(&self, request: CloseRequest) -> Result<(), u8> {
        self.close_request
            .compare_exchange(0, request as u8, Ordering::AcqRel, Ordering::Acquire)
            .map(drop)
    }

    /// A draining request whose CLOSE has not gone out yet, if any: the
    /// worker sends it after its own writes.
    pub(crate) fn pending_close(&self) -> Option<CloseRequest> {
        fence(Ordering::SeqCst);
        let request = self.close_requested().filter(|r| r.drains())?;
        let state = self.write_lock.lock();
        (state.close_sent.is_none() && !state.torn).then_some(request)
    }

    /// The length of the CLOSE written on this connection, if one was.
    pub(crate) fn close_sent(&self) -> Option<usize> {
        self.write_lock.lock().close_sent
    }

    /// Marks the connection as being closed by its worker (see
    /// [`CLOSING`]). Keeps an earlier request if there is one.
    pub(crate) fn mark_closing(&self) {
        let _ =
            self.close_request
                .compare_exchange(0, CLOSING, Ordering::AcqRel, Ordering::Acquire);
    }

    /// The close another thread asked for, if any.
    pub(crate) fn close_requested(&self) -> Option<CloseRequest> {
        CloseRequest::from_u8(self.close_request.load(Ordering::Acquire))
    }

    /// `open`, `draining` (CLOSE 1001 sent, still answering) or `closing`,
    /// for `/connections`.
    pub(crate) fn state(&self) -> &'static str {
        match self.close_requested() {
            Some(request) if request.drains() => "draining",
            _ if self.is_closing() => "closing",
            _ => "open",
        }
    }

    /// Whether the connection is on its way out, asked for or not.
    pub(crate) fn is_closing(&self) -> bool {
        self.close_request.load(Ordering::Acquire) != 0
    }

    /// Shuts the socket down both ways: interrupts even a worker blocked in a
    /// write. The last resort of shutdown after the grace period.
    pub(crate) fn force_close(&self) {
        let _ = self.stream.shutdown(Shutdown::Both);
    }

    /// Writes all of `buf` as one unit with respect to other writers.
    pub(crate) fn write_all(&self, buf: &[u8]) -> io::Result<()> {
        let mut state = self.write_lock.lock();
        Self::write_locked(&self.stream, &mut state, buf)
    }

    /// Writes `close`, an encoded CLOSE, unless one was written already.
    pub(crate) fn write_close(&self, close: &[u8]) -> io::Result<()> {
        let mut state = self.write_lock.lock();
        if state.close_sent.is_some() {
            return Ok(());
        }
        Self::write_locked(&self.stream, &mut state, close)?;
        state.close_sent = Some(close.len());
        Ok(())
    }

    fn write_locked(mut stream: &TcpStream, state: &mut WriteState, buf: &[u8]) -> io::Result<()> {
        if state.torn {
            // Writing after half a frame would only send garbage.
            return Err(io::ErrorKind::WriteZero.into());
        }
        stream.write_all(buf).inspect_err(|_| {
            // A failed write may have sent part of `buf`.
            state.torn = true;
        })
    }

    /// Sends a server PING (already encoded) without ever blocking the
    /// timer thread.
    pub(crate) fn try_send_probe(&self, ping: &[u8]) -> Probe {
        let Some(mut state) = self.write_lock.try_lock() else {
            return Probe::Skipped;
        };
        if state.torn {
            return Probe::Stalled;
        }
        match sys::send_nonblocking(&self.stream, ping) {
            Ok(n) if n == ping.len() => Probe::Sent,
            Ok(0) => Probe::Skipped,
            Ok(_) => {
                state.torn = true;
                drop(state);
                self.request_close(CloseRequest::WriteStalled);
                Probe::Stalled
            }
            // WouldBlock: buffer full. Other errors: the worker's read will
            // report them.
            Err(_) => Probe::Skipped,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::registry::Registry;
    use std::io::Read;
    use std::net::TcpListener;
    use std::sync::Arc;

    /// A registered connection and the client end of its socket.
    fn pair() -> (Arc<Conn>, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server_side, peer) = listener.accept().unwrap();
        let registry = Registry::default();
        let conn = registry
            .insert(1, |id| Conn::new(id, server_side, peer, 0))
            .unwrap();
        (conn, client)
    }

    const CLOSE: &[u8] = b"close-1001";

    #[test]
    fn a_drain_of_an_idle_connection_writes_the_close_at_once() {
        let (conn, mut client) = pair();
        assert_eq!(conn.drain(CloseRequest::Shutdown, CLOSE), Drain::Sent);
        let mut got = [0u8; CLOSE.len()];
        client.read_exact(&mut got).unwrap();
        assert_eq!(got, CLOSE);
        assert_eq!(conn.close_sent(), Some(CLOSE.len()));
        assert_eq!(conn.pending_close(), None, "nothing left for the worker");
        assert_eq!(conn.state(), "draining");
        // The worker's own CLOSE (in `finish`) is not written a second time.
        conn.write_close(b"another").unwrap();
        assert_eq!(conn.close_sent(), Some(CLOSE.len()));
        assert_eq!(
            conn.drain(CloseRequest::MaxAge, CLOSE),
            Drain::AlreadyClosing
        );
    }

    #[test]
    fn a_drain_while_the_worker_writes_is_left_to_the_worker() {
        let (conn, mut client) = pair();
        let writing = conn.write_lock.lock();
        assert_eq!(conn.drain(CloseRequest::MaxAge, CLOSE), Drain::Deferred);
        drop(writing);
        // What the worker does after each write.
        assert_eq!(conn.pending_close(), Some(CloseRequest::MaxAge));
        conn.write_all(b"answer").unwrap();
        conn.write_close(CLOSE).unwrap();
        assert_eq!(conn.pending_close(), None);
        let mut got = [0u8; 6 + CLOSE.len()];
        client.read_exact(&mut got).unwrap();
        assert_eq!(&got[..6], b"answer");
        assert_eq!(&got[6..], CLOSE);
    }

    #[test]
    fn a_drain_of_a_peer_that_stopped_reading_closes_at_once() {
        let (conn, _client) = pair();
        // Fill the send buffer and the client's receive buffer.
        let chunk = vec![0u8; 64 * 1024];
        let mut sent = 0;
        while sent < 64 << 20 {
            match sys::send_nonblocking(&conn.stream, &chunk) {
                Ok(n) if n > 0 => sent += n,
                _ => break,
            }
        }
        assert!(sent < 64 << 20, "the send buffer never filled");
        assert_eq!(conn.drain(CloseRequest::Shutdown, CLOSE), Drain::Closing);
        assert_eq!(conn.close_sent(), None);
        // The worker was woken: its read sees end of stream.
        let mut buf = [0u8; 16];
        assert_eq!((&conn.stream).read(&mut buf).unwrap(), 0);
    }
}
