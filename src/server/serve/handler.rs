//! The application logic behind the heartbeat and timeout machinery.

use std::net::SocketAddr;

use std::sync::Arc;
use std::time::Instant;

use crate::protocol::{EncodeError, Message, Protocol, code};
use crate::server::conn::Conn;
use crate::server::conn::close::{CloseReason, clean_reason};
use crate::server::conn::id::ConnId;
use crate::server::conn::identity::Identity;
use crate::server::rate::{PublishCheck, PublishLimit};
use crate::server::serve::handle::{SendError, ServerHandle};
use crate::server::serve::shared::Shared;
use crate::server::topics::{Published, Resumed};
use crate::traffic::{Kind, Tally};

/// What a server does with the DATA messages it receives.
///
/// The server handles PING, PONG, CLOSE, idle timeouts and errors itself;
/// a handler sees only data. One handler value serves every connection, each
/// from its own worker thread, so it must be `Send + Sync`; keep
/// per-connection state in a map keyed by [`ConnId`], opened and cleared in
/// [`on_open`](Handler::on_open) and [`on_close`](Handler::on_close).
///
/// A connection has a thread only while it is busy. After
/// [`Config::park_after`](crate::server::Config::park_after) without DATA
/// it is parked: its thread goes back to the thread cache, and the parking
/// thread answers its PINGs. Its next DATA is handled on whichever thread
/// takes it then, so calls for one connection may come on different
/// threads over its life (never two at once, and always in order). Keep
/// per-connection state in the handler value, never in thread-locals. A
/// handler is never called on the parking thread, except
/// [`on_close`](Handler::on_close) for a parked connection that no thread
/// could be started for (`CloseReason::NoThread`).
///
/// A handler that panics ends only its own connection.
///
/// # Examples
///
/// ```
/// use wheel_server::{Handler, Session};
///
/// /// Answers every message with its length.
/// struct Length;
///
/// impl Handler for Length {
///     fn on_data(&self, session: &mut Session<'_>, payload: &[u8]) {
///         // A decimal number encodes in every protocol.
///         let _ = session.send(payload.len().to_string().as_bytes());
///     }
/// }
/// ```
pub trait Handler: Send + Sync + 'static {
    /// Called for every DATA message, in order, on the connection's worker
    /// thread (which may change after the connection was parked). Replies are queued with [`Session::send`] and written after
    /// the messages of the same read have been handled.
    fn on_data(&self, session: &mut Session<'_>, payload: &[u8]);

    /// Called when a connection has been accepted, before any message.
    fn on_open(&self, _id: ConnId, _peer: SocketAddr) {}

    /// Called once a connection has been closed.
    fn on_close(&self, _id: ConnId, _peer: SocketAddr, _reason: &CloseReason) {}

    /// Whether every connection must authenticate first: its first message
    /// must then be `AUTH <credentials>` (a DATA payload, or a line), and
    /// nothing is served before [`authenticate`](Handler::authenticate)
    /// accepts it. Default: no.
    fn requires_auth(&self) -> bool {
        false
    }

    /// Checks the credentials of an `AUTH` message: the identity to admit
    /// the connection with (or, later, to refresh its expiry with), or why
    /// not (logged; the peer gets CLOSE 4001 `unauthorized`, or `ERR
    /// unauthorized` for a refresh).
    fn authenticate(&self, _credentials: &[u8]) -> Result<Identity, String> {
        Err("this service does not authenticate".into())
    }

    /// Called once a connection has authenticated, after
    /// [`on_open`](Handler::on_open), before its next message.
    fn on_authenticated(&self, _session: &mut Session<'_>, _identity: &Identity) {}
}

/// The built-in service: answers DATA with the same payload.
#[derive(Clone, Copy, Debug, Default)]
pub struct Echo;

impl Handler for Echo {
    fn on_data(&self, session: &mut Session<'_>, payload: &[u8]) {
        // What was decoded as DATA encodes as DATA in the same protocol.
        let _ = session.send(payload);
    }
}

/// A handler's view of the connection a message came from.
pub struct Session<'a> {
    /// What the server's threads share.
    pub(in crate::server::serve) shared: &'a Arc<Shared>,
    /// The connection.
    pub(in crate::server::serve) conn: &'a Arc<Conn>,
    /// The connection's id.
    pub(in crate::server::serve) id: ConnId,
    /// Its client's address.
    pub(in crate::server::serve) peer: SocketAddr,
    /// The protocol it speaks, which encodes replies.
    pub(in crate::server::serve) protocol: Protocol,
    /// The message being handled came as a WebSocket binary message:
    /// replies go out binary too.
    pub(in crate::server::serve) binary: bool,
    /// The worker's batch of encoded answers.
    pub(in crate::server::serve) out: &'a mut Vec<u8>,
    /// A close the handler asked for: code and reason.
    pub(in crate::server::serve) close: &'a mut Option<(u16, String)>,
    /// The worker's count of what it sent.
    pub(in crate::server::serve) sent: &'a mut Tally,
}

impl Session<'_> {
    /// The connection's id.
    pub fn id(&self) -> ConnId {
        self.id
    }

    /// The peer's address.
    pub fn peer_addr(&self) -> SocketAddr {
        self.peer
    }

    /// The protocol the connection speaks.
    pub fn protocol(&self) -> Protocol {
        self.protocol
    }

    /// Who the connection belongs to, once authenticated.
    pub fn identity(&self) -> Option<Identity> {
        self.conn.identity.lock().clone()
    }

    /// Runs `f` with who the connection belongs to (`None` before AUTH, or
    /// without authentication), without copying the identity: for a check
    /// on every message, such as [`Identity::may_use`].
    pub fn with_identity<R>(&self, f: impl FnOnce(Option<&Identity>) -> R) -> R {
        f(self.conn.identity.lock().as_ref())
    }

    /// Subscribes this connection to `topic`; with `since`, resumes after
    /// that sequence number from the retained history (or from Redis),
    /// within half of [`Config::max_outbox`](crate::server::Config::max_outbox)
    /// (the newest that fit; the rest is a gap, which [`Resumed`] reports).
    ///
    /// The replies queued so far go out first. Then, under the topic's lock
    /// so that no message of the topic can come between, `ack`'s payload
    /// (built from what the subscription resumed) as a DATA message, then
    /// the replay, then live messages as `MSG <topic> <seq> <payload>`. An
    /// `ack` payload the protocol cannot carry (a line break in line mode)
    /// is left out.
    ///
    /// # Errors
    ///
    /// [`SendError::Closed`] if the connection is closing;
    /// [`SendError::InvalidTopic`], [`SendError::TooManySubscriptions`],
    /// [`SendError::TooManyTopics`]; with Redis,
    /// [`SendError::Unavailable`]. A refusal at a bound is counted in
    /// `wheel_refused_total`.
    pub fn subscribe(
        &mut self,
        topic: &str,
        since: Option<u64>,
        ack: impl FnOnce(Resumed) -> Vec<u8>,
    ) -> Result<Resumed, SendError> {
        self.subscribe_as(topic, since, false, ack)
    }

    /// As [`subscribe`](Session::subscribe), and this connection watches
    /// the topic's presence from the moment it joins (no join can come
    /// between): see [`watch_presence`](Session::watch_presence).
    ///
    /// # Errors
    ///
    /// As for [`subscribe`](Session::subscribe).
    pub fn subscribe_watching(
        &mut self,
        topic: &str,
        since: Option<u64>,
        ack: impl FnOnce(Resumed) -> Vec<u8>,
    ) -> Result<Resumed, SendError> {
        self.subscribe_as(topic, since, true, ack)
    }

    fn subscribe_as(
        &mut self,
        topic: &str,
        since: Option<u64>,
        watch: bool,
        ack: impl FnOnce(Resumed) -> Vec<u8>,
    ) -> Result<Resumed, SendError> {
        self.flush_replies().map_err(|_| SendError::Closed)?;
        let protocol = self.protocol;
        let shared = self.shared;
        let ok = |resumed| encode_data(protocol, &ack(resumed));
        let max = shared.config.max_subscriptions;
        shared
            .topics
            .subscribe(&shared.flushes, self.conn, topic, since, watch, max, ok)
            .map_err(|e| {
                let e = SendError::from(e);
                e.count_refusal(&shared.metrics);
                e
            })
    }

    /// Makes this connection, a subscriber of `topic`, a watcher of the
    /// topic's presence (or not): it is sent `JOIN`, `LEAVE`, `ONLINE` and
    /// `OFFLINE` events as other subscribers come and go (see
    /// `docs/PROTOCOL.md`, "Presence"). False if it is not subscribed.
    pub fn watch_presence(&mut self, topic: &str, on: bool) -> bool {
        self.shared.topics.watch_presence(self.conn, topic, on)
    }

    /// Unsubscribes this connection from `topic`; whether it was
    /// subscribed.
    pub fn unsubscribe(&mut self, topic: &str) -> bool {
        self.shared
            .topics
            .unsubscribe(&self.shared.flushes, self.conn, topic)
    }

    /// Publishes `payload` to `topic` (at most once per `id` within the
    /// history's time, when given: see
    /// [`ServerHandle::publish_once`]), and acknowledges it on this
    /// connection.
    ///
    /// The replies queued so far go out first, then `ack(seq)`'s payload as
    /// a DATA message, then (to every subscriber, this connection too if
    /// subscribed) `MSG <topic> <seq> <payload>`, in that order. An `ack`
    /// payload the protocol cannot carry is left out.
    ///
    /// The connection's publishes are limited by
    /// [`Config::max_publish_rate`](crate::server::Config::max_publish_rate)
    /// and [`Config::max_publish_bytes`](crate::server::Config::max_publish_bytes):
    /// past them a publish is refused ([`SendError::RateLimited`]), and a
    /// connection refused [`RATE_LIMIT_STRIKES`](crate::server::RATE_LIMIT_STRIKES)
    /// times in a row is closed (CLOSE 1008 `publishing too fast`, and this
    /// call returns [`SendError::Closed`]).
    ///
    /// # Errors
    ///
    /// As for [`ServerHandle::publish`], plus [`SendError::RateLimited`] and
    /// [`SendError::Closed`]. Refusals are counted in `wheel_refused_total`.
    pub fn publish(
        &mut self,
        topic: &str,
        id: Option<&str>,
        payload: &[u8],
        ack: impl Fn(u64) -> Vec<u8>,
    ) -> Result<Published, SendError> {
        let shared = self.shared;
        let config = &shared.config;
        if config.max_publish_rate.is_some() || config.max_publish_bytes.is_some() {
            let now = Instant::now();
            let check = self
                .conn
                .publish_limit
                .lock()
                .get_or_insert_with(|| {
                    Box::new(PublishLimit::new(
                        config.max_publish_rate,
                        config.max_publish_bytes,
                        config.max_frame,
                        now,
                    ))
                })
                .check(payload.len(), now);
            match check {
                PublishCheck::Allowed => {}
                PublishCheck::Refused => {
                    shared.metrics.count_refused("publish_rate");
                    return Err(SendError::RateLimited);
                }
                PublishCheck::Abuse => {
                    shared.metrics.count_refused("publish_rate");
                    self.close(code::POLICY_VIOLATION, "publishing too fast");
                    return Err(SendError::Closed);
                }
            }
        }
        self.flush_replies().map_err(|_| SendError::Closed)?;
        let protocol = self.protocol;
        let ack = |seq| encode_data(protocol, &ack(seq));
        match shared
            .topics
            .publish(&shared.flushes, topic, id, payload, Some((self.conn, &ack)))
        {
            Ok(published) => {
                shared
                    .metrics
                    .count_publish(published.delivered, published.dropped);
                Ok(published)
            }
            Err(e) => {
                let e = SendError::from(e);
                e.count_refusal(&shared.metrics);
                Err(e)
            }
        }
    }

    /// A handle to the server, to reach other connections and topics.
    pub fn server(&self) -> ServerHandle {
        ServerHandle::new(Arc::clone(self.shared))
    }

    /// Writes the replies queued so far, so that what is pushed next on the
    /// connection's outbound path comes after them.
    pub(crate) fn flush_replies(&mut self) -> std::io::Result<()> {
        if self.out.is_empty() {
            return Ok(());
        }
        let written = self
            .conn
            .out
            .write_batch(self.id, &self.shared.flushes, self.out);
        self.out.clear();
        written
    }

    /// Queues a DATA message to the peer.
    ///
    /// In WebSocket mode a reply to a binary message is binary; otherwise
    /// it is text when the payload is UTF-8, binary when not.
    ///
    /// # Errors
    ///
    /// The payload cannot be sent in this connection's protocol (see
    /// [`Protocol::encode`]: in line mode, a payload with a line break or
    /// one that would read as a command); nothing was queued.
    pub fn send(&mut self, payload: &[u8]) -> Result<(), EncodeError> {
        let before = self.out.len();
        self.protocol.encode_reply(payload, self.binary, self.out)?;
        self.sent.add(Kind::Data, self.out.len() - before);
        Ok(())
    }

    /// Closes the connection with `code` and `reason` once the current
    /// messages have been answered; later messages are not handled.
    ///
    /// The reason is cut to [`MAX_CLOSE_REASON`](crate::server::MAX_CLOSE_REASON) bytes (at a character
    /// boundary), and line breaks in it become spaces, so that every
    /// protocol can carry it.
    pub fn close(&mut self, code: u16, reason: &str) {
        *self.close = Some((code, clean_reason(reason)));
    }
}

/// `payload` as one encoded DATA message, or nothing if the protocol cannot
/// carry it.
fn encode_data(protocol: Protocol, payload: &[u8]) -> Vec<u8> {
    let mut wire = Vec::new();
    if protocol.encode(&Message::Data(payload), &mut wire).is_err() {
        wire.clear();
    }
    wire
}
