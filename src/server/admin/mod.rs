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

mod metrics;

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, TrySendError};
use parking_lot::Mutex;
use serde_json::json;
use tracing::debug;

use crate::server::conn::id::ConnId;
use crate::server::serve::handle::{SendError, ServerHandle};
use crate::server::serve::shared::Shared;
use crate::sys;
use metrics::Format;

/// `GET /connections` lists at most this many unless `?limit=` says.
const DEFAULT_LIMIT: usize = 1000;

/// `GET /topics` lists this many per page unless `?limit=` says.
const DEFAULT_TOPICS: usize = 100;

/// The largest `?limit=` of `GET /topics`: a page stays small however many
/// topics there are (the dashboard polls it every second).
const MAX_TOPICS_PAGE: usize = 1000;

/// The pages under `web/`, built in so that the binary serves them as is.
mod web {
    /// `GET /`: live connections, rates by close reason, topics.
    pub(super) const DASHBOARD: &str = include_str!("../../../web/dashboard.html");
    /// `GET /demo`: the browser client against a WebSocket listener.
    pub(super) const DEMO: &str = include_str!("../../../web/demo.html");
    /// `GET /wheel-client.js`: the browser client module.
    pub(super) const CLIENT: &str = include_str!("../../../web/wheel-client.js");
}

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

/// An answer.
struct Response {
    status: u16,
    content_type: &'static str,
    body: String,
    /// `Allow`, for a 405.
    allow: Option<&'static str>,
    /// `WWW-Authenticate: Bearer`, for a 401.
    www_authenticate: bool,
}

impl Response {
    fn text(status: u16, body: &str) -> Response {
        Response {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.to_owned(),
            allow: None,
            www_authenticate: false,
        }
    }

    /// One of the built-in pages.
    fn page(content_type: &'static str, body: &str) -> Response {
        Response {
            content_type,
            ..Response::text(200, body)
        }
    }

    fn json(status: u16, body: String) -> Response {
        Response {
            content_type: "application/json",
            body,
            ..Response::text(status, "")
        }
    }
}

/// The parts of a request head the endpoint uses.
struct Head {
    method: String,
    target: String,
    /// HTTP/1.1 (keep-alive by default) rather than 1.0.
    http11: bool,
    /// `Connection: close` (or, for 1.0, no `Connection: keep-alive`).
    close: bool,
    /// The request announced a body of unknown length (chunked), which the
    /// endpoint does not read.
    chunked: bool,
    /// `Content-Length`, if given (a bad value counts as 0 with `bad_length`).
    content_length: usize,
    /// `Content-Length` was not a number, or several disagreed.
    bad_length: bool,
    /// The `Host` header, lower-cased.
    host: Option<String>,
    /// The `Origin` header (browsers send it with a POST), lower-cased.
    origin: Option<String>,
    /// `Sec-Fetch-Site: cross-site`: a browser says another site's page
    /// made this request.
    cross_site: bool,
    /// `Idempotency-Key`: a publish safe to retry (as `PUBONCE`).
    idempotency_key: Option<String>,
    /// The `Authorization` header.
    authorization: Option<String>,
    /// The `Accept` header.
    accept: Option<String>,
    /// Its length in bytes.
    len: usize,
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

impl Head {
    /// Whether it asks `GET` or `HEAD` of `/healthz` or `/readyz`: what a
    /// load balancer checks, answered even when every worker is busy.
    fn is_probe(&self) -> bool {
        let path = self.target.split('?').next().unwrap_or_default();
        matches!(path, "/healthz" | "/readyz") && matches!(self.method.as_str(), "GET" | "HEAD")
    }
}

/// What reading a request head came to.
enum HeadRead {
    Head(Head),
    /// The peer closed, or the endpoint is stopping.
    Gone,
    /// No whole head within the deadline.
    TimedOut,
    /// A response to send before closing (400, 431).
    Refuse(Response),
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

    /// The answer to a request with its body.
    fn respond(&self, head: &Head, body: &[u8]) -> Response {
        let shared = &self.shared;
        let (path, query) = head.target.split_once('?').unwrap_or((&head.target, ""));
        // Each segment percent-decoded: a topic or subject with `/`, `:` or
        // a space is reachable (`/publish/chat%2Froom%3A1`, or for a topic,
        // unencoded after `/publish/`).
        let Some(decoded) = path
            .trim_start_matches('/')
            .split('/')
            .map(|s| percent_encoding::percent_decode_str(s).decode_utf8().ok())
            .collect::<Option<Vec<_>>>()
        else {
            return Response::text(400, "a path segment is not UTF-8 once percent-decoded\n");
        };
        let segments: Vec<&str> = decoded.iter().map(|s| s.as_ref()).collect();
        let read = head.method == "GET" || head.method == "HEAD";
        let post = head.method == "POST";
        // The pages hold no data of their own: what they show, they fetch
        // (with the token where one is needed).
        let open = matches!(
            path,
            "/metrics" | "/healthz" | "/readyz" | "/" | "/demo" | "/wheel-client.js" | "/listeners"
        );
        // DNS rebinding: a page on attacker.example that resolves to this
        // address reads what it serves with `Host: attacker.example`.
        if !open
            && let Some(host) = &head.host
            && !host_allowed(host, &shared.config.admin_allowed_hosts)
        {
            return Response::text(
                421,
                &format!(
                    "misdirected request: Host {host} is not this endpoint (allow a name with --admin-allowed-host)\n"
                ),
            );
        }
        // Cross-site request forgery: a browser page elsewhere can POST
        // here (a "simple request" needs no preflight). Browsers say where
        // a request came from; only the endpoint's own pages may change
        // state.
        if post
            && (head.cross_site
                || head
                    .origin
                    .as_deref()
                    .is_some_and(|o| !same_origin(o, head.host.as_deref())))
        {
            return Response::text(403, "cross-site request refused\n");
        }
        if !open && !self.authorized(head) {
            return Response {
                www_authenticate: true,
                ..Response::text(401, "unauthorized: Authorization: Bearer <token>\n")
            };
        }
        match (segments.as_slice(), read, post) {
            ([""], true, _) => Response::page("text/html; charset=utf-8", web::DASHBOARD),
            (["demo"], true, _) => Response::page("text/html; charset=utf-8", web::DEMO),
            (["wheel-client.js"], true, _) => {
                Response::page("text/javascript; charset=utf-8", web::CLIENT)
            }
            (["listeners"], true, _) => {
                let list: Vec<_> = shared
                    .listeners
                    .iter()
                    .map(|l| json!({"addr": l.addr.to_string(), "protocol": l.protocol.as_str(), "path": l.path}))
                    .collect();
                Response::json(200, serde_json::Value::Array(list).to_string())
            }
            (["metrics"], true, _) => {
                let format = Format::negotiate(head.accept.as_deref());
                Response {
                    content_type: format.content_type(),
                    ..Response::text(200, &metrics::scrape(shared, format))
                }
            }
            (["healthz"], true, _) if shared.stopping.load(Ordering::Acquire) => {
                Response::text(503, "draining\n")
            }
            (["healthz"], true, _) => match shared.topics.redis() {
                Some(redis) if !redis.is_up() => Response::text(200, "ok; redis down\n"),
                Some(_) => Response::text(200, "ok; redis up\n"),
                None => Response::text(200, "ok\n"),
            },
            // For balancers that should prefer instances that can publish.
            (["readyz"], true, _) if shared.stopping.load(Ordering::Acquire) => {
                Response::text(503, "draining\n")
            }
            (["readyz"], true, _) => match shared.topics.redis() {
                Some(redis) if !redis.is_up() => Response::text(503, "redis down\n"),
                _ => Response::text(200, "ready\n"),
            },
            (["connections"], true, _) => match limit(query) {
                Ok(limit) => Response::json(200, connections(&self.handle(), limit)),
                Err(e) => Response::text(400, &format!("{e}\n")),
            },
            (["topics"], true, _) => {
                let limit = match query_param(query, "limit").map(|l| l.parse::<usize>()) {
                    None => DEFAULT_TOPICS,
                    Some(Ok(limit)) if (1..=MAX_TOPICS_PAGE).contains(&limit) => limit,
                    Some(_) => {
                        return Response::text(
                            400,
                            &format!("limit must be 1 to {MAX_TOPICS_PAGE}\n"),
                        );
                    }
                };
                let after = query_param(query, "after");
                let (page, total) = self.handle().topics_after(after.as_deref(), limit);
                // The last name of a full page: where the next one starts.
                let next = (page.len() == limit)
                    .then(|| page.last().map(|t| t.topic.clone()))
                    .flatten();
                let list: Vec<_> = page
                    .into_iter()
                    .map(|t| json!({"topic": t.topic, "subscribers": t.subscribers, "last_seq": t.last_seq}))
                    .collect();
                Response::json(
                    200,
                    json!({"total": total, "topics": list, "next": next}).to_string(),
                )
            }
            (["admin", "reload-tls"], _, true) => {
                match crate::server::admission::tls::reload(shared.tls.as_ref(), &shared.metrics) {
                    Ok(()) => Response::text(200, "reloaded\n"),
                    Err(why) => Response::text(409, &format!("not reloaded: {why}\n")),
                }
            }
            (["publish", rest @ ..], _, true) if !rest.is_empty() => {
                match match &head.idempotency_key {
                    Some(key) => self.handle().publish_once(&rest.join("/"), key, body),
                    None => self.handle().publish(&rest.join("/"), body),
                }
                .inspect_err(|e| e.count_refusal(&shared.metrics))
                {
                    // With Redis, delivery follows the publish on every
                    // instance: nothing to count here.
                    Ok(p) if shared.topics.redis().is_some() => Response::json(
                        200,
                        json!({"topic": rest.join("/"), "seq": p.seq}).to_string(),
                    ),
                    Ok(p) => Response::json(
                        200,
                        json!({"topic": rest.join("/"), "seq": p.seq, "delivered": p.delivered})
                            .to_string(),
                    ),
                    Err(e) => Response::text(send_status(&e), &format!("{e}\n")),
                }
            }
            (["connections", id, "send"], _, true) => {
                let Ok(id) = id.parse::<ConnId>() else {
                    return Response::text(404, "unknown connection\n");
                };
                match self.handle().send(id, body) {
                    Ok(()) => Response::json(
                        200,
                        json!({"id": id.to_string(), "sent": body.len()}).to_string(),
                    ),
                    Err(e) => Response::text(send_status(&e), &format!("{e}\n")),
                }
            }
            (["connections", id, "close"], _, true) => {
                let Ok(id) = id.parse::<ConnId>() else {
                    return Response::text(404, "unknown connection\n");
                };
                let (code, reason) = match close_params(query) {
                    Ok(params) => params,
                    Err(e) => return Response::text(400, &format!("{e}\n")),
                };
                match self.handle().close(id, code, &reason) {
                    Ok(()) => {
                        Response::json(200, json!({"id": id.to_string(), "code": code}).to_string())
                    }
                    Err(e) => Response::text(send_status(&e), &format!("{e}\n")),
                }
            }
            (["users", sub, "send"], _, true) => {
                let (sent, connections) = self.handle().send_to_user(sub, body);
                let status = if connections == 0 { 404 } else { 200 };
                Response::json(
                    status,
                    json!({"sub": sub, "connections": connections, "sent": sent}).to_string(),
                )
            }
            (["users", sub, "close"], _, true) => {
                let (code, reason) = match close_params(query) {
                    Ok(params) => params,
                    Err(e) => return Response::text(400, &format!("{e}\n")),
                };
                let closed = self.handle().close_user(sub, code, &reason);
                let status = if closed == 0 { 404 } else { 200 };
                Response::json(status, json!({"sub": sub, "closed": closed}).to_string())
            }
            (["metrics" | "healthz" | "readyz" | "connections" | "topics"], false, _) => Response {
                allow: Some("GET, HEAD"),
                ..Response::text(405, "method not allowed\n")
            },
            (["publish", _, ..] | ["connections" | "users", _, "send" | "close"], _, false) => {
                Response {
                    allow: Some("POST"),
                    ..Response::text(405, "method not allowed\n")
                }
            }
            _ => Response::text(404, "not found\n"),
        }
    }

    /// Whether the request carries the admin token (compared in constant
    /// time), or none is configured.
    fn authorized(&self, head: &Head) -> bool {
        let Some(token) = &self.shared.config.admin_token else {
            return true;
        };
        // The scheme is case-insensitive (RFC 9110 section 11.1).
        let given = head
            .authorization
            .as_deref()
            .and_then(|a| a.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token)
            .unwrap_or_default();
        constant_time_eq::constant_time_eq(given.trim().as_bytes(), token.as_bytes())
    }

    fn handle(&self) -> ServerHandle {
        ServerHandle::new(Arc::clone(&self.shared))
    }
}

/// The status for a failed push to a connection.
fn send_status(e: &SendError) -> u16 {
    match e {
        SendError::UnknownConnection => 404,
        SendError::Closed => 409,
        SendError::OutboxFull | SendError::Unavailable(_) | SendError::TooManyTopics => 503,
        SendError::TooLarge(_) => 413,
        // Gateway Timeout: the backend (Redis) did not answer in time, and
        // the message may have been published.
        SendError::Unknown(_) => 504,
        _ => 400,
    }
}

/// `code=C&reason=R` from a close request's query (code 1000 and an empty
/// reason when left out).
fn close_params(query: &str) -> Result<(u16, String), String> {
    let code = match query_param(query, "code") {
        Some(value) => value
            .parse()
            .map_err(|_| format!("code must be a number, got {value:?}"))?,
        None => crate::protocol::code::NORMAL,
    };
    Ok((code, query_param(query, "reason").unwrap_or_default()))
}

/// The (decoded) value of `key` in a query string.
fn query_param(query: &str, key: &str) -> Option<String> {
    form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.into_owned())
}

/// Reads until `buf` holds `len` body bytes, within [`HEAD_TIMEOUT`].
fn read_body(stream: &TcpStream, buf: &mut Vec<u8>, len: usize) -> io::Result<()> {
    let deadline = Instant::now() + HEAD_TIMEOUT;
    let mut chunk = [0u8; 8192];
    while buf.len() < len {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        stream.set_read_timeout(Some(left))?;
        let want = chunk.len().min(len - buf.len());
        match (&*stream).read(&mut chunk[..want]) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Reads until `buf` holds a whole request head, within [`HEAD_TIMEOUT`]
/// and [`MAX_HEAD`].
fn read_head(stream: &TcpStream, buf: &mut Vec<u8>) -> HeadRead {
    let deadline = Instant::now() + HEAD_TIMEOUT;
    let mut chunk = [0u8; 2048];
    loop {
        if let Some(read) = parse_head(buf) {
            return read;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
            return HeadRead::TimedOut;
        }
        let room = chunk.len().min(MAX_HEAD - buf.len());
        match (&*stream).read(&mut chunk[..room]) {
            Ok(0) => return HeadRead::Gone,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return HeadRead::TimedOut;
            }
            Err(_) => return HeadRead::Gone,
        }
    }
}

/// The head at the start of `buf`, a refusal, or `None` while it is
/// incomplete.
fn parse_head(buf: &[u8]) -> Option<HeadRead> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    match request.parse(buf) {
        Ok(httparse::Status::Complete(len)) => Some(HeadRead::Head(head(&request, len))),
        Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD => Some(HeadRead::Refuse(
            Response::text(431, "request head too large\n"),
        )),
        Ok(httparse::Status::Partial) => None,
        Err(e) => Some(HeadRead::Refuse(Response::text(
            400,
            &format!("bad request: {e}\n"),
        ))),
    }
}

/// Reads `data` as the admin endpoint reads a request head, and checks
/// what must hold for any bytes: no panic; a whole head lies within the
/// bytes; a body length is given only when every `Content-Length` agrees,
/// all digits. For the fuzz target `http_head` (`fuzz/`) and the property
/// test below.
#[doc(hidden)]
pub fn check_request_head(data: &[u8]) {
    match parse_head(data) {
        Some(HeadRead::Head(head)) => {
            assert!(head.len <= data.len(), "a head past the bytes");
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut request = httparse::Request::new(&mut headers);
            let _ = request.parse(data);
            let lengths: Vec<&[u8]> = request
                .headers
                .iter()
                .filter(|h| h.name.eq_ignore_ascii_case("content-length"))
                .map(|h| h.value)
                .collect();
            if !head.bad_length && !lengths.is_empty() {
                let text = |v: &[u8]| String::from_utf8_lossy(v).replace([' ', '\t'], "");
                let mut values = lengths
                    .iter()
                    .flat_map(|v| text(v).split(',').map(str::to_owned).collect::<Vec<_>>());
                assert!(
                    values.all(|v| v.bytes().all(|b| b.is_ascii_digit())
                        && v.parse::<usize>() == Ok(head.content_length)),
                    "an ambiguous length accepted: {lengths:?}"
                );
            }
        }
        Some(HeadRead::Refuse(response)) => assert!(matches!(response.status, 400 | 431)),
        Some(HeadRead::Gone | HeadRead::TimedOut) => unreachable!("parsing reads nothing"),
        None => assert!(data.len() < MAX_HEAD, "an incomplete head past the limit"),
    }
}

/// After a refusal, reads and discards what the client still sends, for a
/// moment: closing with unread input sends RST, which can destroy the
/// response before the client reads it.
fn linger(stream: &TcpStream) {
    let _ = stream.shutdown(Shutdown::Write);
    let deadline = Instant::now() + Duration::from_millis(200);
    let mut sink = [0u8; 4096];
    let mut discarded = 0;
    while discarded < 64 * 1024 {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
            return;
        }
        match (&*stream).read(&mut sink) {
            Ok(0) | Err(_) => return,
            Ok(n) => discarded += n,
        }
    }
}

/// The parts of a parsed request the endpoint uses.
fn head(request: &httparse::Request<'_, '_>, len: usize) -> Head {
    let header = |name: &str| {
        request
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| String::from_utf8_lossy(h.value).trim().to_ascii_lowercase())
    };
    let http11 = request.version == Some(1);
    let connection = header("connection");
    let close = match connection.as_deref() {
        Some("close") => true,
        Some("keep-alive") => false,
        _ => !http11,
    };
    let content_length = content_length(request.headers);
    Head {
        method: request.method.unwrap_or("").to_owned(),
        target: request.path.unwrap_or("").to_owned(),
        http11,
        close,
        chunked: header("transfer-encoding").is_some(),
        content_length: content_length.unwrap_or(Some(0)).unwrap_or(0),
        bad_length: content_length.is_err(),
        host: header("host"),
        origin: header("origin"),
        cross_site: header("sec-fetch-site").is_some_and(|site| site == "cross-site"),
        idempotency_key: request
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case("idempotency-key"))
            .map(|h| String::from_utf8_lossy(h.value).trim().to_owned()),
        authorization: request
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case("authorization"))
            .map(|h| String::from_utf8_lossy(h.value).trim().to_owned()),
        accept: request
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case("accept"))
            .map(|h| String::from_utf8_lossy(h.value).into_owned()),
        len,
    }
}

/// Whether a request's `Host` names this endpoint: an IP address (any: DNS
/// rebinding needs a name), `localhost`, or a name allowed by
/// `--admin-allowed-host`; with or without a port.
fn host_allowed(host: &str, allowed: &[String]) -> bool {
    if host.starts_with('[') {
        return true; // an IPv6 literal
    }
    let name = match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    };
    name.parse::<std::net::IpAddr>().is_ok()
        || name.eq_ignore_ascii_case("localhost")
        || allowed.iter().any(|a| a.eq_ignore_ascii_case(name))
}

/// Whether `origin` (`scheme://host[:port]`, lower-cased) is the origin of
/// a page served with `host`.
fn same_origin(origin: &str, host: Option<&str>) -> bool {
    let Some(host) = host else {
        return false;
    };
    origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"))
        .is_some_and(|o| o == host)
}

/// The body length the `Content-Length` headers give (`None`: no header),
/// or an error for what RFC 9112 section 6.3 says to refuse with 400: a
/// value that is not all digits (`+5`, `0x10`, ` 5 `), or several headers
/// (or a list) that disagree, which a proxy in front might read otherwise
/// (request smuggling). Identical repeats are one length.
fn content_length(headers: &[httparse::Header<'_>]) -> Result<Option<usize>, ()> {
    let mut length = None;
    for h in headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("content-length"))
    {
        let value = std::str::from_utf8(h.value).map_err(|_| ())?;
        for item in value.split(',') {
            let item = item.trim_matches([' ', '\t']);
            if item.is_empty() || !item.bytes().all(|b| b.is_ascii_digit()) {
                return Err(());
            }
            let n: usize = item.parse().map_err(|_| ())?;
            if length.is_some_and(|l| l != n) {
                return Err(());
            }
            length = Some(n);
        }
    }
    Ok(length)
}

/// The bytes of a response.
fn encode(response: &Response, head_only: bool, close: bool) -> Vec<u8> {
    let reason = match response.status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        413 => "Content Too Large",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "",
    };
    let mut out = format!(
        "HTTP/1.1 {} {reason}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: {}\r\n",
        response.status,
        response.content_type,
        response.body.len(),
        if close { "close" } else { "keep-alive" },
    );
    if let Some(allow) = response.allow {
        out.push_str(&format!("Allow: {allow}\r\n"));
    }
    if response.www_authenticate {
        out.push_str("WWW-Authenticate: Bearer\r\n");
    }
    out.push_str("\r\n");
    let mut out = out.into_bytes();
    if !head_only {
        out.extend_from_slice(response.body.as_bytes());
    }
    out
}

/// Writes all of `bytes` within [`WRITE_TIMEOUT`]; `TimedOut` if the peer
/// does not take them in time.
fn write_all(stream: &TcpStream, bytes: &[u8]) -> io::Result<()> {
    let deadline = Instant::now() + WRITE_TIMEOUT;
    let mut rest = bytes;
    while !rest.is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        stream.set_write_timeout(Some(left))?;
        match (&*stream).write(rest) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => rest = &rest[n..],
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                return Err(io::ErrorKind::TimedOut.into());
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// `limit=N` from a query string.
fn limit(query: &str) -> Result<usize, String> {
    match query_param(query, "limit") {
        Some(value) => value
            .parse()
            .map_err(|_| format!("limit must be a non-negative integer, got {value:?}")),
        None => Ok(DEFAULT_LIMIT),
    }
}

/// One JSON object per live connection, oldest slot first: the public
/// [`ConnectionInfo`](crate::server::ConnectionInfo), as JSON.
fn connections(handle: &ServerHandle, limit: usize) -> String {
    let list: Vec<_> = handle
        .connections()
        .into_iter()
        .take(limit)
        .map(|c| {
            json!({
                "id": c.id.to_string(),
                "peer": c.peer.to_string(),
                "state": c.state,
                "protocol": c.protocol.as_str(),
                "tls": c.tls,
                "outbox_bytes": c.outbox_bytes,
                "subscriptions": c.subscriptions,
                "sub": c.subject,
                "age_ms": c.age.as_millis() as u64,
                "idle_ms": c.idle.as_millis() as u64,
                "frames_in": c.received.0,
                "frames_out": c.answered.0,
                "pushed_frames": c.pushed.0,
                "pushed_bytes": c.pushed.1,
                "bytes_in": c.received.1,
                "bytes_out": c.answered.1,
            })
        })
        .collect();
    serde_json::Value::Array(list).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Any bytes, and requests built with any mix of length headers.
        #[test]
        fn any_bytes_are_a_head_a_refusal_or_incomplete(data in proptest::collection::vec(any::<u8>(), 0..600)) {
            check_request_head(&data);
        }

        #[test]
        fn only_unambiguous_lengths_are_accepted(
            lengths in proptest::collection::vec(prop_oneof![
                Just("5".to_owned()), Just("+5".to_owned()), Just("05".to_owned()),
                Just("5, 5".to_owned()), Just("5,100".to_owned()), Just(" 7 ".to_owned()),
                Just("0x5".to_owned()), Just("".to_owned()), "[0-9]{1,3}",
            ], 0..4),
            chunked in any::<bool>(),
        ) {
            let mut request = String::from("POST /publish/t HTTP/1.1\r\nHost: 127.0.0.1\r\n");
            for l in &lengths {
                request.push_str(&format!("Content-Length: {l}\r\n"));
            }
            if chunked {
                request.push_str("Transfer-Encoding: chunked\r\n");
            }
            request.push_str("\r\n");
            check_request_head(request.as_bytes());
        }
    }

    #[test]
    fn the_lengths_rfc_9112_refuses() {
        let refused = |lengths: &[&str]| {
            let mut request = String::from("POST / HTTP/1.1\r\n");
            for l in lengths {
                request.push_str(&format!("Content-Length: {l}\r\n"));
            }
            request.push_str("\r\n");
            match parse_head(request.as_bytes()) {
                Some(HeadRead::Head(head)) => head.bad_length,
                _ => panic!("not a head"),
            }
        };
        for bad in [
            &["5", "100"][..],
            &["+5"],
            &["5, 100"],
            &["-1"],
            &["5 5"],
            &[""],
        ] {
            assert!(refused(bad), "{bad:?}");
        }
        for good in [&["5"][..], &["5", "5"], &["5, 5"], &["0"]] {
            assert!(!refused(good), "{good:?}");
        }
    }
}
