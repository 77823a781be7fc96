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

use std::io::{self, Read};
use std::net::Shutdown;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{debug, info, warn};

use crate::protocol::{Decoded, Decoder, Message, Protocol};
use crate::server::admission::limits;
use crate::server::admission::proxy;
use crate::server::admission::upgrade::{self, Upgrade};
use crate::server::conn::Conn;
use crate::server::conn::buffer::ReadBuf;
use crate::server::conn::close::{CloseReason, TcpTimeout};
use crate::server::conn::identity::Identity;
use crate::server::conn::outbound::Pumped;
use crate::server::conn::ping::PingPolicy;
use crate::server::serve::handler::{Handler, Session};
use crate::server::serve::shared::{Shared, close_frame};
use crate::server::serve::timer::event::Event;
use crate::sys;
use crate::traffic::{Kind, Tally};

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
    let tls = shared.listeners[conn.listener].tls;
    let worker = Worker {
        tls,
        decoder: Decoder::new(conn.protocol, shared.config.max_frame),
        input: ReadBuf::new(),
        output: Vec::new(),
        received: Tally::default(),
        sent: Tally::default(),
        pings: PingPolicy::new(shared.config.min_ping_interval, shared.config.ping_strikes),
        shared: Arc::clone(shared),
        handler: Arc::clone(handler),
        conn,
    };
    // A parked thread may run it: the name is not the connection's.
    shared
        .threads
        .run(|| "wheel-worker".into(), Box::new(move || worker.run()))
}

/// One connection's worker: its buffers, counts and policies.
struct Worker {
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
        self.shared.topics.remove_connection(&self.conn);
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
    fn run(mut self) {
        let id = self.conn.id;
        // Declared after `self`, so dropped before it: the registry forgets
        // the connection before the socket is closed.
        let mut deregister = Deregister {
            shared: Arc::clone(&self.shared),
            conn: Arc::clone(&self.conn),
            reason: CloseReason::HandlerPanic.label(),
        };
        let handler = Arc::clone(&self.handler);
        let mut opened = false;
        let reason = catch_unwind(AssertUnwindSafe(|| {
            let identity = match self.admit() {
                Ok(identity) => identity,
                Err(reason) => return reason,
            };
            if self.admission_ran() {
                // Those stages ran deeper than serving ever does.
                sys::trim_stack();
            }
            opened = true;
            handler.on_open(id, self.conn.peer());
            if let Some(identity) = identity
                && let Err(reason) = self.admit_identity(&identity)
            {
                return reason;
            }
            self.serve()
        }))
        .unwrap_or(CloseReason::HandlerPanic);
        self.finish(&reason);
        deregister.reason = reason.label();
        self.closed(&reason, opened);
    }

    /// Logs the close and tells the handler (if it saw the open). Out of
    /// line: its frame stays off the stack pages an idle connection touches.
    #[inline(never)]
    fn closed(&self, reason: &CloseReason, opened: bool) {
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
            CloseReason::SlowConsumer => {
                info!(conn = %id, %peer, sub = %sub(), ?lifetime, reason = reason.label(), "connection closed: {reason}")
            }
            _ => {
                debug!(conn = %id, %peer, sub = %sub(), ?lifetime, reason = reason.label(), "connection closed: {reason}")
            }
        }
        let handler = &self.handler;
        if opened && catch_unwind(AssertUnwindSafe(|| handler.on_close(id, peer, reason))).is_err()
        {
            warn!(conn = %id, "handler panicked in on_close");
        }
    }

    /// Everything before the connection is opened to the handler: the
    /// PROXY header and the per-address limits on its address, the
    /// WebSocket upgrade, then the authentication (the upgrade's token, or
    /// the first message). Out of line, as it runs once.
    #[inline(never)]
    fn admit(&mut self) -> Result<Option<Identity>, CloseReason> {
        if self.shared.config.proxy_protocol {
            self.read_proxy_header()?;
            // Only now is the real client's address known.
            let shared = &self.shared;
            let admitted = limits::admit_address(
                &shared.connect_rate,
                &shared.per_ip,
                &shared.metrics.rate_untracked,
                self.conn.peer().ip(),
            );
            match admitted {
                Ok(key) => {
                    if let Some(key) = key {
                        let _ = self.conn.ip_key.set(key);
                    }
                }
                Err(refused) => {
                    shared
                        .metrics
                        .rejected
                        .get_or_create(&[("reason", refused.label())])
                        .inc();
                    return Err(refused.close_reason());
                }
            }
        }
        if self.tls {
            // What came after a PROXY header is the TLS session's.
            let early = self.input.data().len();
            if early > 0 {
                let handshakes = &self.shared.tls.as_ref().expect("a TLS listener").handshakes;
                let fed = self.conn.out.tls_feed(handshakes, self.input.data());
                self.input.consume(early);
                if let Err(e) = fed {
                    return Err(self.tls_failed(&e));
                }
            }
            self.tls_handshake()?;
            if self.conn.protocol != Protocol::Ws {
                self.conn.out.start();
            }
        }
        let token = if self.conn.protocol == Protocol::Ws {
            self.upgrade_websocket()?
        } else {
            None
        };
        if !self.handler.requires_auth() {
            return Ok(None);
        }
        match token {
            Some(token) => self.check_credentials(&token).map(Some),
            None => self.authenticate_first().map(Some),
        }
    }

    /// Reads the WebSocket upgrade request within the handshake deadline
    /// and answers it: 101 and the protocol starts, or an HTTP error and
    /// the connection ends. Returns the credentials the request carried.
    #[inline(never)]
    fn upgrade_websocket(&mut self) -> Result<Option<Vec<u8>>, CloseReason> {
        let timeout = self.shared.config.handshake_timeout;
        let deadline = self.conn.opened + timeout;
        let shared = Arc::clone(&self.shared);
        let policy = upgrade::Policy {
            path: shared.listeners[self.conn.listener].path.as_deref(),
            origins: &shared.config.allowed_origins,
        };
        let outcome = loop {
            match upgrade::upgrade(self.input.data(), policy) {
                Upgrade::Incomplete => {}
                Upgrade::Accept {
                    response,
                    len,
                    token,
                } => {
                    self.input.consume(len);
                    break Ok((response, token));
                }
                Upgrade::Refuse(refusal) => {
                    self.count_upgrade(refusal.label);
                    debug!(conn = %self.conn.id, peer = %self.conn.peer(), status = refusal.status, "WebSocket upgrade refused: {}", refusal.why);
                    // A failed write changes nothing: the connection ends.
                    let _ = self.conn.out.write_batch(
                        self.conn.id,
                        &self.shared.flushes,
                        &refusal.response,
                    );
                    break Err(CloseReason::BadUpgrade(format!(
                        "{} {}",
                        refusal.status, refusal.why
                    )));
                }
            }
            if let Err(reason) =
                self.handshake_read(deadline, upgrade::MAX_REQUEST, ReadInto::Input, |w| {
                    w.stage_timed_out(
                        "websocket",
                        CloseReason::BadUpgrade(format!(
                            "no upgrade request within the handshake timeout ({timeout:?})"
                        )),
                    )
                })
            {
                break Err(reason);
            }
        };
        let _ = self.conn.stream().set_read_timeout(None);
        let (response, token) = outcome?;
        self.count_upgrade("ok");
        if let Err(e) = self
            .conn
            .out
            .write_batch(self.conn.id, &self.shared.flushes, &response)
        {
            return Err(self.requested_or(CloseReason::from_write_error(&e)));
        }
        self.conn.out.start();
        Ok(token)
    }

    fn count_upgrade(&self, result: &'static str) {
        self.shared
            .metrics
            .ws_upgrades
            .get_or_create(&[("result", result)])
            .inc();
    }

    /// Whether the connection went through an admission stage (PROXY
    /// header, TLS handshake, WebSocket upgrade, authentication).
    fn admission_ran(&self) -> bool {
        self.shared.config.proxy_protocol
            || self.tls
            || self.conn.protocol == Protocol::Ws
            || self.handler.requires_auth()
    }

    /// Reads the PROXY protocol header that must open the connection and
    /// records the client address it names. Bytes after it stay in the input
    /// buffer as the first protocol data.
    #[inline(never)]
    fn read_proxy_header(&mut self) -> Result<(), CloseReason> {
        let trusted = &self.shared.config.proxy_from;
        let peer = self.conn.peer().ip();
        if !trusted.is_empty() && !trusted.iter().any(|block| block.contains(peer)) {
            self.shared
                .metrics
                .rejected
                .get_or_create(&[("reason", "untrusted_proxy")])
                .inc();
            return Err(CloseReason::BadProxyHeader(format!(
                "{peer} is not a trusted proxy (--proxy-from)"
            )));
        }
        let timeout = self.shared.config.handshake_timeout;
        let deadline = self.conn.opened + timeout;
        let outcome = loop {
            match proxy::parse(self.input.data()) {
                proxy::Parsed::Complete { client, len } => {
                    self.input.consume(len);
                    if let Some(client) = client {
                        self.conn.set_client(client);
                    }
                    break Ok(());
                }
                proxy::Parsed::Invalid(why) => break Err(CloseReason::BadProxyHeader(why)),
                proxy::Parsed::Incomplete if self.input.data().len() >= proxy::MAX_HEADER => {
                    break Err(CloseReason::BadProxyHeader("header too long".into()));
                }
                proxy::Parsed::Incomplete => {}
            }
            if let Err(reason) =
                self.handshake_read(deadline, proxy::MAX_HEADER, ReadInto::Socket, |w| {
                    w.stage_timed_out(
                        "proxy",
                        CloseReason::BadProxyHeader(format!(
                            "none within the handshake timeout ({timeout:?})"
                        )),
                    )
                })
            {
                break Err(reason);
            }
        };
        let _ = self.conn.stream().set_read_timeout(None);
        outcome
    }

    /// A stage before admission that missed the handshake deadline:
    /// counted by stage, and `reason` unless another thread asked for a
    /// close first.
    fn stage_timed_out(&self, stage: &'static str, reason: CloseReason) -> CloseReason {
        self.shared
            .metrics
            .handshake_timeouts
            .get_or_create(&[("stage", stage)])
            .inc();
        self.requested_or(reason)
    }

    /// Reads the connection's first message, which must be `AUTH
    /// <credentials>`, within the handshake deadline (counted from the
    /// accept), and has the handler check it.
    #[inline(never)]
    fn authenticate_first(&mut self) -> Result<Identity, CloseReason> {
        let timeout = self.shared.config.handshake_timeout;
        let deadline = self.conn.opened + timeout;
        let limit = self.decoder.max_message_len();
        let credentials = loop {
            match self.decoder.decode(self.input.data()) {
                Ok(Some((msg, used))) => {
                    let credentials = match msg {
                        Message::Data(payload) => {
                            payload.strip_prefix(b"AUTH ").map(<[u8]>::to_vec)
                        }
                        _ => None,
                    };
                    self.received.add(Kind::of(&msg), used);
                    self.input.consume(used);
                    break credentials.ok_or_else(|| {
                        CloseReason::Unauthorized("the first message was not AUTH".into())
                    })?;
                }
                Ok(None) => {}
                Err(e) => return Err(CloseReason::Protocol(e)),
            }
            self.handshake_read(deadline, limit, ReadInto::Input, |w| {
                w.stage_timed_out(
                    "auth",
                    CloseReason::Unauthorized(format!(
                        "no AUTH within the handshake timeout ({timeout:?})"
                    )),
                )
            })?;
        };
        let _ = self.conn.stream().set_read_timeout(None);
        self.check_credentials(&credentials)
    }

    /// Has the handler check a connection's credentials, counting the
    /// result.
    fn check_credentials(&self, credentials: &[u8]) -> Result<Identity, CloseReason> {
        let mut outcome = self
            .handler
            .authenticate(credentials)
            .map_err(CloseReason::Unauthorized);
        // A token that expires before the timer's next tick would be
        // admitted only to be closed at once (and the client would
        // reconnect with it at once): refused now, with the expiry's code.
        if let Ok(identity) = &outcome
            && identity
                .expires
                .is_some_and(|at| at <= std::time::SystemTime::now() + self.shared.config.tick)
        {
            outcome = Err(CloseReason::TokenExpired);
        }
        let result = if outcome.is_ok() { "ok" } else { "refused" };
        self.shared
            .metrics
            .auth
            .get_or_create(&[("result", result)])
            .inc();
        outcome
    }

    /// One read before admission, bounded by `deadline` (counted from the
    /// accept, so a peer dribbling bytes cannot stretch it): fills the input
    /// buffer, or says why the connection ends (`timed_out` at the
    /// deadline).
    #[inline(never)]
    fn handshake_read(
        &mut self,
        deadline: Instant,
        limit: usize,
        into: ReadInto,
        timed_out: impl Fn(&Self) -> CloseReason,
    ) -> Result<(), CloseReason> {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let mut stream = self.conn.stream();
            if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
                return Err(timed_out(self));
            }
            let read = match into {
                ReadInto::Input => self.read_input(limit),
                ReadInto::Socket => stream
                    .read(self.input.spare(limit))
                    .inspect(|&n| self.input.filled(n)),
                // The session reads it (`Outbound::tls_pump`).
                ReadInto::Tls => sys::wait_readable(stream).map(|()| 1),
            };
            return match read {
                Ok(0) => Err(self.requested_or(CloseReason::PeerClosed)),
                Ok(_) => Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    Err(timed_out(self))
                }
                Err(e) => Err(self.requested_or(self.read_error(&e))),
            };
        }
    }

    /// Reads the connection's protocol bytes into the input buffer (at most
    /// `limit` in it): straight from the socket, or, with TLS, what the
    /// session decrypts, reading the socket only when the session has
    /// nothing. Ok(0) at the end of the peer's stream (TLS: its
    /// `close_notify`, or the socket's end).
    fn read_input(&mut self, limit: usize) -> io::Result<usize> {
        if !self.tls {
            let n = self.conn.stream().read(self.input.spare(limit))?;
            self.input.filled(n);
            return Ok(n);
        }
        loop {
            let pumped = self.conn.out.tls_pump(
                self.conn.id,
                &self.shared.flushes,
                &self.shared.tls.as_ref().expect("a TLS listener").handshakes,
                self.input.spare(limit),
            );
            match pumped {
                Ok(Pumped::Plaintext(n)) => {
                    self.input.filled(n);
                    return Ok(n);
                }
                Ok(Pumped::Closed) => return Ok(0),
                Ok(Pumped::NeedBytes) => {}
                Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e)),
            }
            // Outside the lock: wait until the socket has bytes (or ends).
            sys::wait_readable(self.conn.stream())?;
        }
    }

    /// TLS: whether the session holds bytes decrypted and not yet taken,
    /// so that waiting on the socket would be wrong.
    fn tls_holds_bytes(&self) -> bool {
        self.tls && self.conn.out.tls_buffered()
    }

    /// The TLS handshake, within the handshake deadline (counted from the
    /// accept). Counted by result in `wheel_tls_handshakes_total`; a
    /// failure is logged at debug with its reason and never reaches the
    /// handler.
    #[inline(never)]
    fn tls_handshake(&mut self) -> Result<(), CloseReason> {
        let timeout = self.shared.config.handshake_timeout;
        let deadline = self.conn.opened + timeout;
        let id = self.conn.id;
        let shared = Arc::clone(&self.shared);
        let flushes = &shared.flushes;
        loop {
            let handshakes = &shared.tls.as_ref().expect("a TLS listener").handshakes;
            let pumped = self.conn.out.tls_pump(id, flushes, handshakes, &mut []);
            // The session's answer (or its alert) goes out, blocking if
            // the socket is full: only this thread writes before the
            // handshake is done.
            let written = self.conn.out.write_batch(id, flushes, &[]);
            match pumped {
                Err(e) => return Err(self.tls_failed(&e)),
                Ok(Pumped::Closed) if self.conn.out.tls_handshaking() => {
                    return Err(self.requested_or(CloseReason::PeerClosed));
                }
                Ok(_) => {}
            }
            if let Err(e) = written {
                return Err(self.requested_or(CloseReason::from_write_error(&e)));
            }
            if !self.conn.out.tls_handshaking() {
                let _ = self.conn.stream().set_read_timeout(None);
                let kind = if self.conn.out.tls_resumed() {
                    "resumed"
                } else {
                    "full"
                };
                self.count_tls(kind);
                if let Some(sub) = self.conn.out.tls_peer_subject() {
                    // A verified client certificate names the connection.
                    *self.conn.identity.lock() = Some(Identity {
                        sub,
                        expires: None,
                        topics: None,
                    });
                }
                return Ok(());
            }
            self.handshake_read(deadline, 0, ReadInto::Tls, |w| {
                w.count_tls("timeout");
                w.stage_timed_out(
                    "tls",
                    CloseReason::TlsHandshake(format!(
                        "not complete within the handshake timeout ({timeout:?})"
                    )),
                )
            })?;
        }
    }

    /// A failed handshake: counted by reason, logged at debug.
    fn tls_failed(&self, e: &rustls::Error) -> CloseReason {
        let label = crate::server::admission::tls::failure_label(e);
        self.count_tls(label);
        debug!(conn = %self.conn.id, peer = %self.conn.peer(), result = label, "TLS handshake failed: {e}");
        CloseReason::TlsHandshake(e.to_string())
    }

    fn count_tls(&self, result: &'static str) {
        self.shared
            .metrics
            .tls_handshakes
            .get_or_create(&[("result", result)])
            .inc();
    }

    /// Records the connection's identity, tells the timer when it expires,
    /// answers `OK AUTH <sub> <exp>`, and lets the handler know.
    #[inline(never)]
    fn admit_identity(&mut self, identity: &Identity) -> Result<(), CloseReason> {
        record_identity(
            &self.shared,
            &self.conn,
            identity,
            &mut self.output,
            &mut self.sent,
        );
        let mut close = None;
        let mut session = Session {
            shared: &self.shared,
            conn: &self.conn,
            id: self.conn.id,
            peer: self.conn.peer(),
            protocol: self.conn.protocol,
            binary: false,
            out: &mut self.output,
            close: &mut close,
            sent: &mut self.sent,
        };
        self.handler.on_authenticated(&mut session, identity);
        if let Err(e) = self.flush() {
            return Err(self.requested_or(CloseReason::from_write_error(&e)));
        }
        match close {
            Some((code, reason)) => Err(CloseReason::Application { code, reason }),
            None => Ok(()),
        }
    }

    /// Serves the connection until it must close, and says why.
    fn serve(&mut self) -> CloseReason {
        let limit = self.decoder.max_message_len();
        // Bytes that came in with a PROXY header are already buffered.
        if !self.input.data().is_empty()
            && let Err(reason) = self.answer_buffered()
        {
            return reason;
        }
        // Admission's buffer (a PROXY header, an upgrade request) is not
        // kept: the connection waits for its first message holding none.
        self.input.release();
        loop {
            // Everything read is answered: a close may come from the timer.
            self.conn.out.end_read();
            let waited_from = self.shared.clock.now();
            if self.input.is_released() && !self.tls_holds_bytes() {
                // A quiet connection waits without a buffer; the read below
                // then finds the bytes (or the end) at once.
                match sys::wait_readable(self.conn.stream()) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return self.requested_or(self.read_error(&e)),
                }
            }
            match self.read_input(limit) {
                Ok(0) => return self.requested_or(CloseReason::PeerClosed),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return self.requested_or(self.read_error(&e)),
            }
            if !self.conn.out.begin_read() {
                // Arrived as the timer sent its CLOSE: past the end.
                self.discard_input();
                continue;
            }
            if let Err(reason) = self.answer_buffered() {
                return reason;
            }
            // Quiet: the bytes took more than a tick to come. Nothing is
            // pending, so give the buffers back until the next ones.
            if self.shared.clock.now() >= waited_from + QUIET_TICKS {
                self.input.release();
                self.decoder.release();
                self.output = Vec::new();
            }
        }
    }

    /// Drops what is buffered, unanswered and counted: bytes that came
    /// after the connection's CLOSE.
    #[inline(never)]
    fn discard_input(&mut self) {
        let discarded = self.input.data().len();
        self.input.consume(discarded);
        self.shared.metrics.discarded_bytes.inc_by(discarded as u64);
        debug!(conn = %self.conn.id, discarded, "discarded input after the CLOSE");
    }

    /// Answers every complete message in the input buffer and writes the
    /// answers, even those to messages before an error.
    fn answer_buffered(&mut self) -> Result<(), CloseReason> {
        let outcome = self.process();
        if let Err(e) = self.flush() {
            // A failed write leaves the stream unable to carry the CLOSE an
            // idle timeout asked for: the write's own reason is the true
            // one. A drain keeps its reason (shutdown forces stuck writes).
            let failed = CloseReason::from_write_error(&e);
            return Err(match self.conn.out.close_state().request() {
                Some(request) if request.drains() => self.conn.request_reason(request),
                _ => failed,
            });
        }
        outcome
    }

    /// The close reason for a failed read, naming the TCP timeout that can
    /// have fired.
    fn read_error(&self, err: &io::Error) -> CloseReason {
        match CloseReason::from_read_error(err) {
            CloseReason::TcpTimeout(_) => {
                let config = &self.shared.config;
                CloseReason::TcpTimeout(TcpTimeout::armed(
                    config.keepalive.is_some(),
                    config.effective_user_timeout().is_some(),
                ))
            }
            other => other,
        }
    }

    /// The reason another thread gave for closing, or else `otherwise`.
    fn requested_or(&self, otherwise: CloseReason) -> CloseReason {
        self.conn
            .out
            .close_state()
            .request()
            .map_or(otherwise, |request| self.conn.request_reason(request))
    }

    /// Decodes and answers every complete message in the input buffer.
    fn process(&mut self) -> Result<(), CloseReason> {
        let outcome = loop {
            let Decoded {
                message: msg,
                len: used,
                binary,
            } = match self.decoder.decode_message(self.input.data()) {
                Ok(Some(decoded)) => decoded,
                Ok(None) => break Ok(()),
                Err(e) => break Err(CloseReason::Protocol(e)),
            };
            self.received.add(Kind::of(&msg), used);
            let answered = answer(
                &self.shared,
                &*self.handler,
                &self.conn,
                &mut self.pings,
                &mut self.output,
                &mut self.sent,
                msg,
                binary,
            );
            self.input.consume(used);
            if let Err(reason) = answered {
                break Err(reason);
            }
        };
        if self.received.has_unpublished() {
            self.conn.activity.touch(self.shared.clock.now());
            self.conn
                .traffic
                .publish(&mut self.received, &mut self.sent);
        }
        outcome
    }

    /// Writes the answers (after anything other threads queued).
    fn flush(&mut self) -> io::Result<()> {
        if self.output.is_empty() {
            return Ok(());
        }
        let conn = &self.conn;
        let written = conn
            .out
            .write_batch(conn.id, &self.shared.flushes, &self.output);
        self.output.clear();
        if self.output.capacity() > RETAIN_OUTPUT {
            self.output = Vec::new();
        }
        written
    }

    /// Sends the CLOSE for `reason` (unless the connection already carries
    /// a CLOSE or cannot carry one) after everything queued, then takes the
    /// socket down.
    #[inline(never)]
    fn finish(&mut self, reason: &CloseReason) {
        let conn = Arc::clone(&self.conn);
        // Before the protocol starts (a WebSocket upgrade, a TLS handshake)
        // the outbound path sends no CLOSE.
        let close = close_frame(conn.protocol, reason);
        // A write failure here changes nothing: the socket goes down next.
        let _ = conn
            .out
            .finish(conn.id, &self.shared.flushes, close.as_deref());
        // Counted here whoever wrote it: a drain's CLOSE is written by the
        // thread that started the drain.
        let close_sent = conn.out.close_sent();
        if let Some(len) = close_sent {
            self.sent.add(Kind::Close, len);
        }
        conn.traffic.publish(&mut self.received, &mut self.sent);
        let _ = conn.stream().shutdown(Shutdown::Write);
        if close_sent.is_some() {
            self.linger();
        }
        let _ = conn.stream().shutdown(Shutdown::Both);
    }

    /// Reads and discards until the peer's FIN, for at most [`LINGER`] and
    /// [`LINGER_BYTES`]. Returns at once when the peer has already closed
    /// its side (a drained client that half-closed).
    #[inline(never)]
    fn linger(&mut self) {
        let deadline = Instant::now() + LINGER;
        let mut discarded = 0;
        let mut scratch = [0u8; 1024];
        while discarded < LINGER_BYTES {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || self.conn.stream().set_read_timeout(Some(left)).is_err() {
                break;
            }
            match self.conn.stream().read(&mut scratch) {
                Ok(0) | Err(_) => break,
                Ok(n) => discarded += n,
            }
        }
        if discarded > 0 {
            // Sent after our CLOSE by a peer that did not wait for the
            // drain to end: unanswered, so counted.
            self.shared.metrics.discarded_bytes.inc_by(discarded as u64);
            debug!(conn = %self.conn.id, discarded, "discarded input after the CLOSE");
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

/// Answers one message. Free-standing so that it can borrow the worker's
/// output while the message borrows its input buffer.
#[allow(
    clippy::too_many_arguments,
    reason = "the worker's parts, each borrowed on its own while the message borrows the input"
)]
fn answer(
    shared: &Arc<Shared>,
    handler: &dyn Handler,
    conn: &Arc<Conn>,
    pings: &mut PingPolicy,
    output: &mut Vec<u8>,
    sent: &mut Tally,
    msg: Message<'_>,
    binary: bool,
) -> Result<(), CloseReason> {
    let protocol = conn.protocol;
    match msg {
        Message::Data(payload) if payload.starts_with(b"AUTH ") && handler.requires_auth() => {
            refresh(shared, handler, conn, &payload[5..], output, sent);
            Ok(())
        }
        Message::Data(payload) => {
            let mut close = None;
            let mut session = Session {
                shared,
                conn,
                id: conn.id,
                peer: conn.peer(),
                protocol,
                binary,
                out: output,
                close: &mut close,
                sent,
            };
            handler.on_data(&mut session, payload);
            match close {
                Some((code, reason)) => Err(CloseReason::Application { code, reason }),
                None => Ok(()),
            }
        }
        Message::Ping(payload) => {
            if !pings.allow(Instant::now) {
                return Err(CloseReason::PingPolicy);
            }
            let before = output.len();
            // A PING payload decoded in this protocol encodes in it.
            if protocol.encode(&Message::Pong(payload), output).is_ok() {
                sent.add(Kind::Pong, output.len() - before);
            }
            Ok(())
        }
        Message::Pong(_) => Ok(()),
        Message::Close { code, .. } => Err(CloseReason::PeerClose(code)),
    }
}

/// Records `identity` on the connection, tells the timer thread when it
/// expires, and queues `OK AUTH <sub> <exp>` (`exp` in seconds since the
/// Unix epoch, `-` if it never expires).
fn record_identity(
    shared: &Shared,
    conn: &Conn,
    identity: &Identity,
    output: &mut Vec<u8>,
    sent: &mut Tally,
) {
    *conn.identity.lock() = Some(identity.clone());
    if let Some(expires) = identity.expires {
        let left = expires
            .duration_since(std::time::SystemTime::now())
            .unwrap_or_default();
        // A token good for longer than any connection lives needs no timer
        // (and a far `exp` must not overflow the clock's arithmetic).
        if left < MAX_TIMED_TOKEN
            && let Some(at) = Instant::now().checked_add(left)
        {
            let _ = shared.events.send(Event::Expires { id: conn.id, at });
        }
    }
    let exp = identity
        .expires_unix()
        .map_or_else(|| "-".to_owned(), |e| e.to_string());
    let reply = format!("OK AUTH {} {exp}", identity.sub);
    let before = output.len();
    if conn
        .protocol
        .encode(&Message::Data(reply.as_bytes()), output)
        .is_ok()
    {
        sent.add(Kind::Data, output.len() - before);
    }
}

/// A later `AUTH`: new credentials for the same subject push the expiry
/// back; anything else is answered `ERR unauthorized` and changes nothing.
fn refresh(
    shared: &Shared,
    handler: &dyn Handler,
    conn: &Conn,
    credentials: &[u8],
    output: &mut Vec<u8>,
    sent: &mut Tally,
) {
    let current = conn.identity.lock().as_ref().map(|i| i.sub.clone());
    match handler.authenticate(credentials) {
        Ok(identity) if Some(&identity.sub) == current.as_ref() => {
            shared
                .metrics
                .auth
                .get_or_create(&[("result", "refreshed")])
                .inc();
            record_identity(shared, conn, &identity, output, sent);
        }
        outcome => {
            let why = match outcome {
                Ok(identity) => format!("a token for another subject ({})", identity.sub),
                Err(why) => why,
            };
            debug!(conn = %conn.id, "refresh refused: {why}");
            shared
                .metrics
                .auth
                .get_or_create(&[("result", "refused")])
                .inc();
            let before = output.len();
            if conn
                .protocol
                .encode(&Message::Data(b"ERR unauthorized"), output)
                .is_ok()
            {
                sent.add(Kind::Data, output.len() - before);
            }
        }
    }
}
