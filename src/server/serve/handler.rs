//! The application logic behind the heartbeat and timeout machinery.

use std::net::SocketAddr;

use std::sync::Arc;

use crate::protocol::{EncodeError, Protocol};
use crate::server::conn::Conn;
use crate::server::conn::close::{CloseReason, clean_reason};
use crate::server::conn::id::ConnId;
use crate::server::conn::identity::Identity;
use crate::server::serve::handle::ServerHandle;
use crate::server::serve::shared::Shared;
use crate::traffic::{Kind, Tally};

/// What a server does with the DATA messages it receives.
///
/// The server handles PING, PONG, CLOSE, idle timeouts and errors itself;
/// a handler sees only data. One handler value serves every connection, each
/// from its own worker thread, so it must be `Send + Sync`; keep
/// per-connection state in a map keyed by [`ConnId`], opened and cleared in
/// [`on_open`](Handler::on_open) and [`on_close`](Handler::on_close).
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
    /// thread. Replies are queued with [`Session::send`] and written after
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
    pub(crate) shared: &'a Arc<Shared>,
    /// The connection.
    pub(crate) conn: &'a Arc<Conn>,
    /// The connection's id.
    pub(crate) id: ConnId,
    /// Its client's address.
    pub(crate) peer: SocketAddr,
    /// The protocol it speaks, which encodes replies.
    pub(crate) protocol: Protocol,
    /// The message being handled came as a WebSocket binary message:
    /// replies go out binary too.
    pub(crate) binary: bool,
    /// The worker's batch of encoded answers.
    pub(crate) out: &'a mut Vec<u8>,
    /// A close the handler asked for: code and reason.
    pub(crate) close: &'a mut Option<(u16, String)>,
    /// The worker's count of what it sent.
    pub(crate) sent: &'a mut Tally,
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
