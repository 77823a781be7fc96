//! A connection's worker thread: reads, decodes, answers, and closes.
//!
//! The loop is: one blocking `read`, decode every complete message in the
//! buffer, answer them into one output buffer, stamp activity once, write the
//! answers with one `write`. A close requested by another thread arrives as
//! end-of-stream after the bytes already received (see [`crate::sys`]), so
//! those are still answered before the CLOSE is written. The one exception
//! saves a wake-up per expiry: when the idle timeout (or a token's expiry)
//! finds the worker waiting with nothing read and unanswered and nothing
//! unread on the socket, the timer thread writes the CLOSE itself; bytes the
//! worker reads after that came after the CLOSE and are dropped, counted
//! (`Outbound::begin_read`).
//!
//! A drain (shutdown, maximum age) does not wake the worker: the CLOSE 1001
//! goes out on the connection's outbound path, and the worker goes on
//! answering until the client's end of stream. Everything the server reads
//! is answered.

use std::io::{self};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tracing::{debug, info, warn};

use crate::protocol::Decoder;
use crate::server::conn::Conn;
use crate::server::conn::buffer::ReadBuf;
use crate::server::conn::close::CloseReason;
use crate::server::conn::ping::PingPolicy;
use crate::server::serve::handler::Handler;
use crate::server::serve::shared::{Shared, close_frame};
use crate::server::serve::timer::event::Event;
use crate::sys;
use crate::traffic::Tally;

mod admit;
mod parked;
mod serve;

/// How long a closing worker keeps reading (and discarding) after its CLOSE,
/// waiting for the peer's FIN. Closing a socket with unread input makes the
/// kernel send RST, and an RST can destroy the CLOSE before the peer reads
/// it.
const LINGER: Duration = Duration::from_secs(1);

/// A token that expires later than this from now gets no expiry timer: no
/// connection lives that long, and the wheel's arithmetic stays far from
/// overflow.
const MAX_TIMED_TOKEN: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// At most this many bytes are discarded while lingering.
const LINGER_BYTES: usize = 64 * 1024;

/// A connection whose next bytes took at least this many clock ticks to
/// come is quiet: it waits for the following ones holding no buffer (see
/// [`ReadBuf::release`]). A busy one keeps its buffers and reads straight
/// into them, one system call per read.
const QUIET_TICKS: u64 = 2;

/// Output buffer capacity kept between writes.
const RETAIN_OUTPUT: usize = 64 * 1024;

/// Starts the worker thread for `conn`.
pub(crate) fn spawn(
    shared: &Arc<Shared>,
    handler: &Arc<dyn Handler>,
    conn: Arc<Conn>,
) -> io::Result<()> {
    let threads = shared.threads.clone();
    let (shared, handler) = (Arc::clone(shared), Arc::clone(handler));
    // Made on the thread: if none can be started, the job is dropped with
    // no worker, so nothing is deregistered (the caller undoes the
    // admission). A cached thread may run it: the name is not the
    // connection's.
    threads.run(
        || "wheel-worker".into(),
        Box::new(move || Worker::new(shared, handler, conn).run()),
    )
}

/// One connection's worker: its buffers, counts and policies. It lives on
/// its thread while the connection is busy, and in the parking thread's set
/// (see [`park`](crate::server::serve::park)) while it is idle.
struct Worker {
    /// Declared first, so dropped first: the registry forgets the
    /// connection before the socket is closed.
    guard: Deregister,
    shared: Arc<Shared>,
    /// The application.
    handler: Arc<dyn Handler>,
    conn: Arc<Conn>,
    /// Splits the input into messages, in the connection's protocol.
    decoder: Decoder,
    /// Bytes read and not yet decoded.
    input: ReadBuf,
    /// Encoded answers waiting to be written.
    output: Vec<u8>,
    /// Running total of what was received, published to the connection's
    /// `Traffic` after each read.
    received: Tally,
    /// Running total of what was sent, published with `received`.
    sent: Tally,
    /// The peer's PING rate.
    pings: PingPolicy,
    /// The connection speaks TLS: the session reads the socket and
    /// decrypts into `input`.
    tls: bool,
    /// Park after this long without DATA (`None`: never).
    park_after: Option<Duration>,
    /// The clock tick when the last DATA came (or serving began).
    data_at: u64,
    /// Why the connection must close, found while it was parked (a failed
    /// read, a PING too many): the thread that takes it over closes it.
    found: Option<CloseReason>,
    /// The handler saw the open (and so must see the close).
    opened: bool,
}

/// What serving a connection came to.
enum Served {
    /// It must close, for this reason.
    Closed(CloseReason),
    /// It is idle: park it.
    Park,
}

impl From<CloseReason> for Served {
    fn from(reason: CloseReason) -> Served {
        Served::Closed(reason)
    }
}

/// Removes the connection from the registry (counting it in the metrics)
/// and from the timer when the worker ends, however it ends (panics
/// included).
struct Deregister {
    shared: Arc<Shared>,
    conn: Arc<Conn>,
    /// The close reason's label, set once known.
    reason: &'static str,
}

impl Drop for Deregister {
    fn drop(&mut self) {
        let id = self.conn.id;
        self.shared
            .topics
            .remove_connection(&self.shared.flushes, &self.conn, self.reason);
        if let Some(&key) = self.conn.ip_key.get() {
            self.shared.per_ip.release(key);
        }
        self.shared.metrics.count_close(self.reason);
        self.shared
            .registry
            .remove(id, self.conn.traffic.snapshot());
        // Fails only when the timer thread is gone, at the end of shutdown.
        let _ = self.shared.events.send(Event::Deregister(id));
    }
}

impl Worker {
    fn new(shared: Arc<Shared>, handler: Arc<dyn Handler>, conn: Arc<Conn>) -> Box<Worker> {
        Box::new(Worker {
            guard: Deregister {
                shared: Arc::clone(&shared),
                conn: Arc::clone(&conn),
                reason: CloseReason::HandlerPanic.label(),
            },
            tls: shared.listeners[conn.listener].tls,
            decoder: Decoder::new(conn.protocol, shared.config.max_frame),
            input: ReadBuf::new(),
            output: Vec::new(),
            received: Tally::default(),
            sent: Tally::default(),
            pings: PingPolicy::new(shared.config.min_ping_interval, shared.config.ping_strikes),
            park_after: shared.parking.as_ref().and(shared.config.park_after),
            data_at: shared.clock.now(),
            found: None,
            opened: false,
            shared,
            handler,
            conn,
        })
    }

    /// The connection's first thread: admission, the handler's open, then
    /// serving.
    fn run(mut self: Box<Self>) {
        let id = self.conn.id;
        let handler = Arc::clone(&self.handler);
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            let identity = match self.admit() {
                Ok(identity) => identity,
                Err(reason) => return reason.into(),
            };
            if self.admission_ran() {
                // Those stages ran deeper than serving ever does.
                sys::trim_stack();
            }
            self.opened = true;
            handler.on_open(id, self.conn.peer());
            if let Some(identity) = identity
                && let Err(reason) = self.admit_identity(&identity)
            {
                return reason.into();
            }
            self.data_at = self.shared.clock.now();
            self.time_reads_for_parking();
            self.serve()
        }))
        .unwrap_or(Served::Closed(CloseReason::HandlerPanic));
        self.then(outcome);
    }

    /// A thread takes the connection over from the parking thread: what
    /// was found there, or serving again from the bytes it read.
    fn resumed(mut self: Box<Self>) {
        self.conn.parked.store(false, Ordering::Relaxed);
        let outcome = match self.found.take() {
            Some(found) => Served::Closed(self.requested_or(found)),
            None => self.serve_caught(),
        };
        self.then(outcome);
    }

    /// Serves, a handler's panic ending the connection.
    fn serve_caught(&mut self) -> Served {
        catch_unwind(AssertUnwindSafe(|| self.serve()))
            .unwrap_or(Served::Closed(CloseReason::HandlerPanic))
    }

    /// Parks the connection or closes it, as `outcome` says.
    fn then(mut self: Box<Self>, mut outcome: Served) {
        loop {
            match outcome {
                Served::Closed(reason) => {
                    self.finish(&reason);
                    self.guard.reason = reason.label();
                    self.closed(&reason);
                    return;
                }
                Served::Park => {
                    let parking = Arc::clone(
                        self.shared
                            .parking
                            .as_ref()
                            .expect("a worker parks only with parking on"),
                    );
                    self.release_buffers();
                    let conn = Arc::clone(&self.conn);
                    conn.parked.store(true, Ordering::Relaxed);
                    match parking.park(self) {
                        // This thread goes back to the cache.
                        Ok(()) => return,
                        Err(back) => {
                            // It cannot be parked: it keeps this thread.
                            conn.parked.store(false, Ordering::Relaxed);
                            self = back;
                            self.park_after = None;
                            outcome = self.serve_caught();
                        }
                    }
                }
            }
        }
    }

    /// Gives back the buffers an idle connection does not need.
    fn release_buffers(&mut self) {
        self.input.release();
        self.decoder.release();
        self.output = Vec::new();
    }

    /// Closes a parked connection no thread can be found for: CLOSE 1013
    /// if the socket takes it at once, then down.
    #[inline(never)]
    fn abandon(mut self: Box<Self>, err: &io::Error) {
        let reason = CloseReason::NoThread;
        warn!(conn = %self.conn.id, "closing a parked connection: no thread to serve it: {err}");
        if let Some(close) = close_frame(self.conn.protocol, &reason) {
            let _ = self
                .conn
                .out
                .push(self.conn.id, &self.shared.flushes, &close);
        }
        self.conn.force_close();
        self.guard.reason = reason.label();
        self.closed(&reason);
    }

    /// Logs the close and tells the handler (if it saw the open). Out of
    /// line: its frame stays off the stack pages an idle connection touches.
    #[inline(never)]
    fn closed(&self, reason: &CloseReason) {
        let id = self.conn.id;
        let lifetime = self.conn.opened.elapsed();
        let peer = self.conn.peer();
        // The authenticated subject, `-` if none.
        let sub = || {
            self.conn
                .identity
                .lock()
                .as_ref()
                .map_or_else(|| "-".to_owned(), |i| i.sub.clone())
        };
        match reason {
            CloseReason::HandlerPanic => {
                warn!(conn = %id, %peer, sub = %sub(), ?lifetime, %reason, "connection closed")
            }
            CloseReason::BadProxyHeader(_) => {
                warn!(conn = %id, %peer, reason = reason.label(), "rejected connection: {reason}")
            }
            CloseReason::SlowConsumer | CloseReason::NoThread => {
                info!(conn = %id, %peer, sub = %sub(), ?lifetime, reason = reason.label(), "connection closed: {reason}")
            }
            _ => {
                debug!(conn = %id, %peer, sub = %sub(), ?lifetime, reason = reason.label(), "connection closed: {reason}")
            }
        }
        let handler = &self.handler;
        if self.opened
            && catch_unwind(AssertUnwindSafe(|| handler.on_close(id, peer, reason))).is_err()
        {
            warn!(conn = %id, "handler panicked in on_close");
        }
    }
}

/// Where a read before admission puts its bytes.
#[derive(Clone, Copy, Debug)]
enum ReadInto {
    /// The socket's bytes into the input buffer (a PROXY header, which
    /// comes before any TLS).
    Socket,
    /// None: waits until the socket is readable, for the TLS session to
    /// read it.
    Tls,
    /// The protocol's bytes (decrypted, with TLS) into the input buffer.
    Input,
}
