//! Admission, as a connection's worker runs it: the stages a connection
//! passes before its handler sees it, in order (the PROXY header, the
//! per-address limits, the TLS handshake, the WebSocket upgrade, AUTH),
//! each with the deadline of `--handshake-timeout` and one refusal path
//! (an `Err(CloseReason)` that `Worker::run` reports and counts). What
//! each stage decides is in `server::admission`; here is how the worker
//! reads for it.

use std::io::{self, Read};
use std::sync::Arc;
use std::time::Instant;

use tracing::debug;

use crate::protocol::{Message, Protocol};
use crate::server::admission::limits;
use crate::server::admission::proxy;
use crate::server::admission::upgrade::{self, Upgrade};
use crate::server::conn::Conn;
use crate::server::conn::close::CloseReason;
use crate::server::conn::identity::Identity;
use crate::server::conn::outbound::{HandshakePool, Pumped, TlsError};
use crate::server::serve::handler::Session;
use crate::server::serve::shared::Shared;
use crate::server::serve::timer::event::Event;
use crate::sys;
use crate::traffic::{Kind, Tally};

use super::{MAX_TIMED_TOKEN, ReadInto, Worker};

impl Worker {
    /// Everything before the connection is opened to the handler: the
    /// PROXY header and the per-address limits on its address, the
    /// WebSocket upgrade, then the authentication (the upgrade's token, or
    /// the first message). Out of line, as it runs once.
    #[inline(never)]
    pub(super) fn admit(&mut self) -> Result<Option<Identity>, CloseReason> {
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
                let fed = self
                    .conn
                    .out
                    .tls_feed(handshakes(&self.shared), self.input.data());
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
    pub(super) fn upgrade_websocket(&mut self) -> Result<Option<Vec<u8>>, CloseReason> {
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

    pub(super) fn count_upgrade(&self, result: &'static str) {
        self.shared
            .metrics
            .ws_upgrades
            .get_or_create(&[("result", result)])
            .inc();
    }

    /// Whether the connection went through an admission stage (PROXY
    /// header, TLS handshake, WebSocket upgrade, authentication).
    pub(super) fn admission_ran(&self) -> bool {
        self.shared.config.proxy_protocol
            || self.tls
            || self.conn.protocol == Protocol::Ws
            || self.handler.requires_auth()
    }

    /// Reads the PROXY protocol header that must open the connection and
    /// records the client address it names. Bytes after it stay in the input
    /// buffer as the first protocol data.
    #[inline(never)]
    pub(super) fn read_proxy_header(&mut self) -> Result<(), CloseReason> {
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
    pub(super) fn stage_timed_out(&self, stage: &'static str, reason: CloseReason) -> CloseReason {
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
    pub(super) fn authenticate_first(&mut self) -> Result<Identity, CloseReason> {
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
    pub(super) fn check_credentials(&self, credentials: &[u8]) -> Result<Identity, CloseReason> {
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
    pub(super) fn handshake_read(
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
    pub(super) fn read_input(&mut self, limit: usize) -> io::Result<usize> {
        if !self.tls {
            let n = self.conn.stream().read(self.input.spare(limit))?;
            self.input.filled(n);
            return Ok(n);
        }
        loop {
            match self.pump_tls(limit) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                read => return read,
            }
            // Outside the lock: wait until the socket has bytes (or ends).
            sys::wait_readable(self.conn.stream())?;
        }
    }

    /// One turn of the TLS session, without blocking: the plaintext it put
    /// in the input buffer (at most `limit` in it), Ok(0) at the peer's
    /// end, `WouldBlock` when it needs more bytes from the socket.
    pub(super) fn pump_tls(&mut self, limit: usize) -> io::Result<usize> {
        let pumped = self.conn.out.tls_pump(
            self.conn.id,
            &self.shared.flushes,
            handshakes(&self.shared),
            self.input.spare(limit),
        );
        match pumped {
            Ok(Pumped::Plaintext(n)) => {
                self.input.filled(n);
                Ok(n)
            }
            Ok(Pumped::Closed) => Ok(0),
            Ok(Pumped::NeedBytes) => Err(io::ErrorKind::WouldBlock.into()),
            Err(e) => Err(io::Error::new(io::ErrorKind::InvalidData, e)),
        }
    }

    /// TLS: whether the session holds bytes decrypted and not yet taken,
    /// so that waiting on the socket would be wrong.
    pub(super) fn tls_holds_bytes(&self) -> bool {
        self.tls && self.conn.out.tls_buffered()
    }

    /// The TLS handshake, within the handshake deadline (counted from the
    /// accept). Counted by result in `wheel_tls_handshakes_total`; a
    /// failure is logged at debug with its reason and never reaches the
    /// handler.
    #[inline(never)]
    pub(super) fn tls_handshake(&mut self) -> Result<(), CloseReason> {
        let timeout = self.shared.config.handshake_timeout;
        let deadline = self.conn.opened + timeout;
        let id = self.conn.id;
        let shared = Arc::clone(&self.shared);
        let flushes = &shared.flushes;
        loop {
            let pumped = self
                .conn
                .out
                .tls_pump(id, flushes, handshakes(&self.shared), &mut []);
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
    pub(super) fn tls_failed(&self, e: &TlsError) -> CloseReason {
        let label = crate::server::admission::tls::failure_label(e);
        self.count_tls(label);
        debug!(conn = %self.conn.id, peer = %self.conn.peer(), result = label, "TLS handshake failed: {e}");
        CloseReason::TlsHandshake(e.to_string())
    }

    pub(super) fn count_tls(&self, result: &'static str) {
        self.shared
            .metrics
            .tls_handshakes
            .get_or_create(&[("result", result)])
            .inc();
    }

    /// Records the connection's identity, tells the timer when it expires,
    /// answers `OK AUTH <sub> <exp>`, and lets the handler know.
    #[inline(never)]
    pub(super) fn admit_identity(&mut self, identity: &Identity) -> Result<(), CloseReason> {
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
}

/// Records `identity` on the connection, tells the timer thread when it
/// expires, and queues `OK AUTH <sub> <exp>` (`exp` in seconds since the
/// Unix epoch, `-` if it never expires).
pub(super) fn record_identity(
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

/// The TLS handshake threads (there are some only with a TLS listener).
fn handshakes(shared: &Shared) -> &HandshakePool {
    shared.tls.as_ref().expect("a TLS listener").handshakes()
}
