//! The application logic behind the heartbeat and timeout machinery.

use std::net::SocketAddr;

use crate::activity::{Kind, Tally};
use crate::protocol::{Message, Protocol};
use crate::server::{CloseReason, ConnId};

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
///         session.send(payload.len().to_string().as_bytes());
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
}

/// The built-in service: answers DATA with the same payload.
#[derive(Clone, Copy, Debug, Default)]
pub struct Echo;

impl Handler for Echo {
    fn on_data(&self, session: &mut Session<'_>, payload: &[u8]) {
        session.send(payload);
    }
}

/// A handler's view of the connection a message came from.
pub struct Session<'a> {
    pub(crate) id: ConnId,
    pub(crate) peer: SocketAddr,
    pub(crate) protocol: Protocol,
    pub(crate) out: &'a mut Vec<u8>,
    pub(crate) close: &'a mut Option<(u16, String)>,
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

    /// Queues a DATA message to the peer.
    pub fn send(&mut self, payload: &[u8]) {
        let before = self.out.len();
        self.protocol.encode(&Message::Data(payload), self.out);
        self.sent.add(Kind::Data, self.out.len() - before);
    }

    /// Closes the connection with `code` and `reason` once the current
    /// messages have been answered; later messages are not handled.
    pub fn close(&mut self, code: u16, reason: &str) {
        *self.close = Some((code, reason.to_owned()));
    }
}
