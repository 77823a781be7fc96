//! What the worker, the timer thread and shutdown share about one connection.

use std::io::{self, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Instant;

use parking_lot::Mutex;

use super::close::CloseReason;
use super::registry::ConnId;
use crate::activity::{Stamp, Traffic};
use crate::sys;

/// A close asked for by another thread (the timer or shutdown). Stored in an
/// `AtomicU8`; the first request wins.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum CloseRequest {
    IdleTimeout = 1,
    Shutdown = 2,
    /// A server PING could not be written: the peer stopped reading.
    WriteStalled = 3,
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
            _ => None,
        }
    }

    pub(crate) fn reason(self) -> CloseReason {
        match self {
            CloseRequest::IdleTimeout => CloseReason::IdleTimeout,
            CloseRequest::Shutdown => CloseReason::Shutdown,
            CloseRequest::WriteStalled => CloseReason::WriteTimeout,
        }
    }
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
/// serialised by `write_lock` because the timer thread writes server PINGs.
/// Other threads end a connection only through [`Conn::request_close`],
/// which records why and wakes the worker with `shutdown(SHUT_RD)`; the
/// worker then writes the CLOSE itself and drops the socket. No thread ever
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
    /// Serialises whole-frame writes between the worker and the timer.
    write_lock: Mutex<()>,
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
            write_lock: Mutex::new(()),
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

    /// Asks the worker to close the connection for `request` and wakes it.
    /// Returns false if a close was already requested.
    pub(crate) fn request_close(&self, request: CloseRequest) -> bool {
        match self.close_request.compare_exchange(
            0,
            request as u8,
            Ordering::AcqRel,
            Ordering::Acquire,
        ) {
            Ok(_) => {
                sys::wake_reader(&self.stream);
                true
            }
            Err(current) => {
                // A worker lingering after its CLOSE is cut short by
                // shutdown, so the drain does not wait for it.
                if request == CloseRequest::Shutdown && current == CLOSING {
                    sys::wake_reader(&self.stream);
                }
                false
            }
        }
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
        let _guard = self.write_lock.lock();
        (&self.stream).write_all(buf)
    }

    /// Sends a server PING (already encoded) without ever blocking the
    /// timer thread.
    pub(crate) fn try_send_probe(&self, ping: &[u8]) -> Probe {
        let Some(_guard) = self.write_lock.try_lock() else {
            return Probe::Skipped;
        };
        match sys::send_nonblocking(&self.stream, ping) {
            Ok(n) if n == ping.len() => Probe::Sent,
            Ok(0) => Probe::Skipped,
            Ok(_) => {
                self.request_close(CloseRequest::WriteStalled);
                Probe::Stalled
            }
            // WouldBlock: buffer full. Other errors: the worker's read will
            // report them.
            Err(_) => Probe::Skipped,
        }
    }
}
