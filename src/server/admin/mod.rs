//! The operations endpoint (`--metrics-listen`): `GET /metrics` (OpenMetrics
//! when the `Accept` header asks for it, as Prometheus does, else the
//! classic text format 0.0.4), `GET /connections`, `GET /healthz` (200
//! while serving, naming Redis's state with `--redis`), `GET /readyz` (503
//! while draining or while Redis is down, for balancers that should prefer
//! instances that can publish), the
//! pages under `web/` (`GET /`: the dashboard; `GET /demo` and
//! `GET /wheel-client.js`: the browser client) and `GET /listeners` (what
//! the demo connects to); and the admin API: `GET /topics` (paged),
//! `POST /publish/<topic>`, `POST /connections/<id>/send`,
//! `POST /connections/<id>/close`, `POST /users/<sub>/send`,
//! `POST /users/<sub>/close` and `POST /admin/reload-tls` (README, "HTTP
//! API for backends").
//!
//! A small HTTP/1.1 server of its own (requests are parsed by `httparse`),
//! built so that no client can hold it up:
//!
//! * every new connection first waits in the lane, one thread that reads
//!   up to [`LANE`] first heads at once without blocking: a slow head holds
//!   no worker, and when every worker is busy `/healthz` and `/readyz` are
//!   answered there at once (a load balancer's checks never fail because
//!   of slow clients);
//! * a fixed pool of [`WORKERS`] threads serves the connections whose head
//!   is whole, one at a time each; at most [`QUEUED`] more wait for a
//!   worker ([`LANE`] for the lane), and further ones are answered
//!   `503` at once and counted (`wheel_http_refused_total`), so idle or
//!   hostile HTTP clients cost no threads and never take a connection
//!   worker's thread budget;
//! * a request head must arrive whole within [`HEAD_TIMEOUT`] (from accept,
//!   or from the previous response) and within [`MAX_HEAD`] bytes; a
//!   response must be written whole within [`WRITE_TIMEOUT`]; a connection
//!   that misses a deadline is closed and counted
//!   (`wheel_http_timeouts_total`);
//! * stopping shuts every connection down and joins the threads, each of
//!   which is then at most one deadline from done.
//!
//! Connections are kept alive (HTTP/1.1) for at most
//! [`MAX_REQUESTS_PER_CONNECTION`] requests, and not at all while other
//! connections wait for a worker.

mod http;
mod metrics;
mod routes;

use std::io::{self, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, TrySendError};
use parking_lot::Mutex;
use tracing::debug;

use crate::server::serve::shared::Shared;
use crate::sys;
pub use http::check_request_head;
use http::*;

/// Threads serving HTTP connections.
pub(crate) const WORKERS: usize = 4;

/// Accepted connections waiting for a worker, at most; more are refused.
pub(crate) const QUEUED: usize = 16;

/// Connections whose first head the lane reads at once (see
/// [`Inner::lane`]); as many more wait for it, and further ones get `503`
/// at once.
pub(crate) const LANE: usize = 256;

/// How long the lane waits for its connections' bytes before it
/// looks for new connections and deadlines.
const LANE_POLL: Duration = Duration::from_millis(10);

/// How long a request head may take to arrive.
pub(crate) const HEAD_TIMEOUT: Duration = Duration::from_secs(1);

/// How long writing one response may take.
pub(crate) const WRITE_TIMEOUT: Duration = Duration::from_secs(2);

/// The longest request head (request line and headers).
pub(crate) const MAX_HEAD: usize = 8 * 1024;

/// Requests served on one connection before it is closed.
const MAX_REQUESTS_PER_CONNECTION: usize = 100;

/// Headers parsed at most.
const MAX_HEADERS: usize = 32;

/// The running endpoint.
pub(crate) struct Endpoint {
    inner: Arc<Inner>,
    addr: SocketAddr,
    threads: Vec<JoinHandle<()>>,
}

/// What the endpoint's threads share.
struct Inner {
    shared: Arc<Shared>,
    listener: TcpListener,
    /// Set when the endpoint stops.
    stopping: AtomicBool,
    /// The connection each worker serves, so that stopping can shut it down.
    serving: [Mutex<Option<TcpStream>>; WORKERS],
    /// Connections waiting for a worker, with the bytes of their first
    /// head (a clone of the workers' receiver, to see its length).
    waiting: Receiver<(TcpStream, Vec<u8>)>,
}

impl Endpoint {
    /// Binds `addr` and starts serving.
    pub(crate) fn start(shared: Arc<Shared>, addr: SocketAddr) -> io::Result<Endpoint> {
        let listener = sys::listen(addr, false).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot listen for metrics on {addr}: {e}"),
            )
        })?;
        let addr = listener.local_addr()?;
        let (queue, waiting) = crossbeam_channel::bounded(QUEUED);
        let inner = Arc::new(Inner {
            shared,
            listener,
            stopping: AtomicBool::new(false),
            serving: std::array::from_fn(|_| Mutex::new(None)),
            waiting,
        });
        let mut endpoint = Endpoint {
            inner: Arc::clone(&inner),
            addr,
            threads: Vec::new(),
        };
        for slot in 0..WORKERS {
            let inner = Arc::clone(&inner);
            let connections = inner.waiting.clone();
            let thread = std::thread::Builder::new()
                .name(format!("wheel-http-{slot}"))
                .spawn(move || {
                    for (stream, head) in connections {
                        inner.serve(slot, stream, head);
                    }
                });
            match thread {
                Ok(thread) => endpoint.threads.push(thread),
                Err(e) => {
                    endpoint.stop();
                    return Err(e);
                }
            }
        }
        // New connections wait for the lane in a queue as long as the lane.
        let (lane, lane_incoming) = crossbeam_channel::bounded(LANE);
        let probing = Arc::clone(&inner);
        let accepting = Arc::clone(&inner);
        for thread in [
            std::thread::Builder::new()
                .name("wheel-http-lane".into())
                .spawn(move || probing.lane(&lane_incoming, &queue)),
            std::thread::Builder::new()
                .name("wheel-http".into())
                .spawn(move || accepting.accept(&lane)),
        ] {
            match thread {
                Ok(thread) => endpoint.threads.push(thread),
                Err(e) => {
                    endpoint.stop();
                    return Err(e);
                }
            }
        }
        Ok(endpoint)
    }

    /// The bound address.
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops serving: no more connections, the current ones shut down, and
    /// the threads joined.
    pub(crate) fn stop(&mut self) {
        self.inner.stopping.store(true, Ordering::Release);
        sys::wake_acceptor(&self.inner.listener);
        for slot in &self.inner.serving {
            if let Some(stream) = &*slot.lock() {
                let _ = stream.shutdown(Shutdown::Both);
            }
        }
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A connection in the lane, its head on its way.
struct Pending {
    stream: TcpStream,
    /// What arrived of its head.
    buf: Vec<u8>,
    /// When its head must be whole.
    deadline: Instant,
}

/// What a read in the lane came to.
enum LaneRead {
    /// More of the head is to come.
    Partial,
    /// The head is whole: a request for the workers.
    Head(Head),
    /// Answered (a health check, a refusal) or gone.
    Done,
}

impl Inner {
    /// The accept loop: hands connections to the workers, refuses those
    /// that would wait too long.
    fn accept(&self, lane: &crossbeam_channel::Sender<TcpStream>) {
        loop {
            let accepted = self.listener.accept();
            if self.stopping.load(Ordering::Acquire) {
                return;
            }
            let Ok((stream, _)) = accepted else {
                // Out of descriptors, typically: do not spin.
                std::thread::sleep(Duration::from_millis(10));
                continue;
            };
            match lane.try_send(stream) {
                Ok(()) => {}
                Err(TrySendError::Full(stream)) => self.refuse(&stream),
                Err(TrySendError::Disconnected(_)) => return,
            }
        }
    }

    /// The lane: every new connection waits here until its first request
    /// head is whole, and one thread reads up to [`LANE`] of them at once
    /// without blocking. So a slow client never holds a worker while it
    /// dribbles its head. A whole head goes to the workers' queue with its
    /// bytes; when that is full, `GET /healthz` and `GET /readyz` are
    /// answered here at once (a load balancer's checks never fail because
    /// clients keep the workers busy) and anything else gets `503` (counted
    /// in `wheel_http_refused_total`). A head must arrive within
    /// [`HEAD_TIMEOUT`] (else the connection is counted in
    /// `wheel_http_timeouts_total` and closed).
    fn lane(
        &self,
        incoming: &Receiver<TcpStream>,
        workers: &crossbeam_channel::Sender<(TcpStream, Vec<u8>)>,
    ) {
        let admit = |pending: &mut Vec<Pending>, stream: TcpStream| {
            if stream.set_nonblocking(true).is_ok() {
                pending.push(Pending {
                    stream,
                    buf: Vec::new(),
                    deadline: Instant::now() + HEAD_TIMEOUT,
                });
            }
        };
        let mut pending: Vec<Pending> = Vec::new();
        while !self.stopping.load(Ordering::Acquire) {
            while pending.len() < LANE {
                match incoming.try_recv() {
                    Ok(stream) => admit(&mut pending, stream),
                    Err(_) => break,
                }
            }
            if pending.is_empty() {
                match incoming.recv_timeout(LANE_POLL) {
                    Ok(stream) => admit(&mut pending, stream),
                    Err(crossbeam_channel::RecvTimeoutError::Disconnected) => return,
                    Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
                }
                continue;
            }
            let streams: Vec<&TcpStream> = pending.iter().map(|p| &p.stream).collect();
            let ready = sys::poll_readable(&streams, LANE_POLL)
                .unwrap_or_else(|_| vec![true; streams.len()]);
            drop(streams);
            let now = Instant::now();
            let mut ready = ready.into_iter();
            let mut kept = Vec::with_capacity(pending.len());
            for mut p in pending.drain(..) {
                if ready.next() == Some(true) {
                    match self.lane_read(&p.stream, &mut p.buf) {
                        LaneRead::Partial => {}
                        LaneRead::Done => continue,
                        LaneRead::Head(head) => {
                            let Pending { stream, buf, .. } = p;
                            if stream.set_nonblocking(false).is_err() {
                                continue;
                            }
                            match workers.try_send((stream, buf)) {
                                Ok(()) => {}
                                // Every worker busy, the queue full: a
                                // health check is answered here.
                                Err(TrySendError::Full((stream, _))) if head.is_probe() => {
                                    let response = self.respond(&head, &[]);
                                    let wire = encode(&response, head.method == "HEAD", true);
                                    let _ = sys::send_nonblocking(&stream, &wire);
                                    let _ = stream.shutdown(Shutdown::Both);
                                }
                                Err(TrySendError::Full((stream, _))) => self.refuse(&stream),
                                Err(TrySendError::Disconnected(_)) => return,
                            }
                            continue;
                        }
                    }
                }
                if now >= p.deadline {
                    self.shared.metrics.http_timeouts.inc();
                    let _ = p.stream.shutdown(Shutdown::Both);
                    continue;
                }
                kept.push(p);
            }
            pending = kept;
        }
    }

    /// Reads what `stream` has (without blocking) into `buf`, and answers
    /// a malformed head itself.
    fn lane_read(&self, stream: &TcpStream, buf: &mut Vec<u8>) -> LaneRead {
        let mut chunk = [0u8; 2048];
        loop {
            let room = chunk.len().min(MAX_HEAD.saturating_sub(buf.len()).max(1));
            match sys::recv_nonblocking(stream, &mut chunk[..room]) {
                Ok(0) => return LaneRead::Done,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return LaneRead::Done,
            }
            if buf.len() >= MAX_HEAD {
                break;
            }
        }
        let response = match parse_head(buf) {
            None => return LaneRead::Partial,
            Some(HeadRead::Head(head)) => return LaneRead::Head(head),
            Some(HeadRead::Refuse(response)) => encode(&response, false, true),
            Some(HeadRead::Gone | HeadRead::TimedOut) => return LaneRead::Done,
        };
        // A few hundred bytes into an empty socket buffer: one send.
        let _ = sys::send_nonblocking(stream, &response);
        let _ = stream.shutdown(Shutdown::Both);
        LaneRead::Done
    }

    /// Answers `503` without waiting and closes.
    fn refuse(&self, stream: &TcpStream) {
        self.shared.metrics.http_refused.inc();
        let response = encode(&Response::text(503, "busy\n"), false, true);
        if stream.set_nonblocking(true).is_ok() {
            let _ = (&*stream).write(&response);
        }
        let _ = stream.shutdown(Shutdown::Both);
    }

    /// Serves one connection on worker `slot` until it closes, misses a
    /// deadline, or has had its share of requests.
    fn serve(&self, slot: usize, stream: TcpStream, mut buf: Vec<u8>) {
        if let Ok(clone) = stream.try_clone() {
            *self.serving[slot].lock() = Some(clone);
        }
        if self.stopping.load(Ordering::Acquire) {
            let _ = stream.shutdown(Shutdown::Both);
        }
        let _ = stream.set_nodelay(true);
        for served in 1..=MAX_REQUESTS_PER_CONNECTION {
            let head = match read_head(&stream, &mut buf) {
                HeadRead::Head(head) => head,
                HeadRead::Gone => break,
                HeadRead::TimedOut => {
                    self.shared.metrics.http_timeouts.inc();
                    break;
                }
                HeadRead::Refuse(response) => {
                    if write_all(&stream, &encode(&response, false, true)).is_ok() {
                        linger(&stream);
                    }
                    break;
                }
            };
            buf.drain(..head.len);
            let max_body = self.shared.config.max_frame;
            let (response, body_read) = if head.chunked || head.bad_length {
                (
                    Response::text(400, "a body needs a valid Content-Length\n"),
                    false,
                )
            } else if head.content_length > max_body {
                // Refused from the header alone: the body is never read.
                self.shared.metrics.count_refused("too_large");
                (
                    Response::text(413, &format!("body over the maximum of {max_body} bytes\n")),
                    false,
                )
            } else {
                match read_body(&stream, &mut buf, head.content_length) {
                    Ok(()) => {
                        let body: Vec<u8> = buf.drain(..head.content_length).collect();
                        (self.respond(&head, &body), true)
                    }
                    Err(e) => {
                        if matches!(
                            e.kind(),
                            io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
                        ) {
                            self.shared.metrics.http_timeouts.inc();
                        }
                        break;
                    }
                }
            };
            let keep_alive = head.http11
                && !head.close
                && body_read
                && served < MAX_REQUESTS_PER_CONNECTION
                && self.waiting.is_empty()
                && !self.stopping.load(Ordering::Acquire);
            let wire = encode(&response, head.method == "HEAD", !keep_alive);
            if let Err(e) = write_all(&stream, &wire) {
                debug!("metrics endpoint: could not answer {}: {e}", head.target);
                if e.kind() == io::ErrorKind::TimedOut {
                    self.shared.metrics.http_timeouts.inc();
                }
                break;
            }
            if !body_read {
                // A body left unread: closing now would send RST, which can
                // destroy the answer before the client reads it.
                linger(&stream);
            }
            if !keep_alive {
                break;
            }
        }
        let _ = stream.shutdown(Shutdown::Both);
        *self.serving[slot].lock() = None;
    }
}

#[cfg(test)]
mod tests;
