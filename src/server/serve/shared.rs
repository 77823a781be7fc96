//! What the server's threads share: configuration, the registry, the
//! clock, the timer's channel, the handler, metrics, and the encoded
//! messages the server sends most.

use std::net::TcpListener;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, OnceLock};

use crossbeam_channel::Sender;

use crate::activity::Clock;
use crate::protocol::{Message, Protocol};
use crate::server::admission::limits::{ConnectRate, PerIp};
use crate::server::config::Config;
use crate::server::conn::close::{CloseReason, CloseRequest};
use crate::server::conn::outbound::Flushes;
use crate::server::metrics::Metrics;
use crate::server::serve::park::Parking;
use crate::server::serve::registry::Registry;
use crate::server::serve::threads::ThreadCache;
use crate::server::serve::timer::event::Event;
use crate::server::topics::Topics;

/// State shared by the server's threads.
pub(crate) struct Shared {
    /// The validated configuration.
    pub(crate) config: Config,
    /// Live connections.
    pub(crate) registry: Registry,
    /// The coarse clock the timer thread publishes and workers stamp.
    pub(crate) clock: Clock,
    /// Events for the timer thread: register, deregister, a token's expiry,
    /// stop.
    pub(crate) events: Sender<Event>,
    /// Whether the application requires AUTH (the timer then times every
    /// connection, for the token's expiry). The application itself, the
    /// [`Handler`](crate::server::Handler), is the accept and worker
    /// threads' own.
    pub(crate) requires_auth: bool,
    /// Set once shutdown has begun.
    pub(crate) stopping: AtomicBool,
    /// The listening sockets, [`Config::listen`](crate::server::Config::listen)
    /// first.
    pub(crate) listeners: Vec<Listening>,
    /// Encoded probes and CLOSEs, per protocol.
    pub(crate) frames: Frames,
    /// Connections with queued output for the timer thread to flush.
    pub(crate) flushes: Flushes,
    /// Pub/sub topics.
    pub(crate) topics: Topics,
    /// Open connections per client address.
    pub(crate) per_ip: PerIp,
    /// Connect rate per client address.
    pub(crate) connect_rate: ConnectRate,
    /// Everything counted.
    pub(crate) metrics: Metrics,
    /// Worker threads parked for the next connections.
    pub(crate) threads: ThreadCache,
    /// Where idle connections wait without a thread (`None`: parking off).
    pub(crate) parking: Option<Arc<Parking>>,
    /// Whether accepted sockets inherit the listener's socket options
    /// (known after the first accept).
    pub(crate) options_inherited: OnceLock<bool>,
    /// The TLS listeners' certificate and configuration.
    pub(crate) tls: Option<crate::server::admission::tls::Tls>,
}

/// One listening socket and the protocol of its connections.
pub(crate) struct Listening {
    pub(crate) socket: TcpListener,
    /// Its address, with the real port.
    pub(crate) addr: std::net::SocketAddr,
    pub(crate) protocol: Protocol,
    /// WebSocket mode: the path upgrades must ask for; `None`: any.
    pub(crate) path: Option<String>,
    /// TLS first.
    pub(crate) tls: bool,
}

impl Listening {
    /// The path a WebSocket listener upgrades (`any`), `-` for the others:
    /// for the `listening on` line.
    pub(crate) fn path_label(&self) -> &str {
        match (self.protocol, &self.path) {
            (Protocol::Ws, Some(path)) => path,
            (Protocol::Ws, None) => "any",
            _ => "-",
        }
    }
}

/// The messages the server sends most, encoded once for each protocol: the
/// probe PING, the two drain CLOSEs (1001: shutdown, maximum age), and the
/// idle timeout's and token expiry's CLOSEs.
pub(crate) struct Frames {
    /// Indexed by [`Frames::index`].
    by_protocol: [Encoded; Protocol::ALL.len()],
}

/// One protocol's encoded messages.
struct Encoded {
    probe: Vec<u8>,
    shutdown: Vec<u8>,
    max_age: Vec<u8>,
    idle_timeout: Vec<u8>,
    token_expired: Vec<u8>,
}

impl Frames {
    pub(crate) fn new() -> Frames {
        Frames {
            by_protocol: Protocol::ALL.map(|protocol| Encoded {
                probe: encode(protocol, &Message::Ping(b"")),
                shutdown: close_frame(protocol, &CloseReason::Shutdown).expect("sends a CLOSE"),
                max_age: close_frame(protocol, &CloseReason::MaxAge).expect("sends a CLOSE"),
                idle_timeout: close_frame(protocol, &CloseReason::IdleTimeout)
                    .expect("sends a CLOSE"),
                token_expired: close_frame(protocol, &CloseReason::TokenExpired)
                    .expect("sends a CLOSE"),
            }),
        }
    }

    fn index(protocol: Protocol) -> usize {
        match protocol {
            Protocol::Frame => 0,
            Protocol::Line => 1,
            Protocol::Ws => 2,
        }
    }

    /// The server's probe PING.
    pub(crate) fn probe(&self, protocol: Protocol) -> &[u8] {
        &self.by_protocol[Frames::index(protocol)].probe
    }

    /// The CLOSE the timer sends for an expiry: 4000 for the idle timeout,
    /// 4002 for a token's.
    pub(crate) fn expiry(&self, protocol: Protocol, request: CloseRequest) -> &[u8] {
        let encoded = &self.by_protocol[Frames::index(protocol)];
        match request {
            CloseRequest::TokenExpired => &encoded.token_expired,
            _ => &encoded.idle_timeout,
        }
    }

    /// The CLOSE 1001 that starts a drain for `request`.
    pub(crate) fn drain(&self, protocol: Protocol, request: CloseRequest) -> &[u8] {
        let encoded = &self.by_protocol[Frames::index(protocol)];
        match request {
            CloseRequest::MaxAge => &encoded.max_age,
            _ => &encoded.shutdown,
        }
    }
}

/// Encodes a message the server builds itself, whose content every
/// protocol can carry.
fn encode(protocol: Protocol, msg: &Message<'_>) -> Vec<u8> {
    let mut out = Vec::new();
    protocol
        .encode(msg, &mut out)
        .expect("the server's own messages encode in every protocol");
    out
}

/// The encoded CLOSE for `reason`, if it sends one. A reason text the
/// protocol cannot carry (an application's, with a line break, in line
/// mode) is left out rather than the CLOSE.
pub(crate) fn close_frame(protocol: Protocol, reason: &CloseReason) -> Option<Vec<u8>> {
    let (code, text) = reason.close_message()?;
    let mut out = Vec::new();
    if protocol
        .encode(
            &Message::Close {
                code,
                reason: &text,
            },
            &mut out,
        )
        .is_err()
    {
        out.clear();
        let bare = Message::Close { code, reason: "" };
        protocol.encode(&bare, &mut out).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{OwnedMessage, Reader, code};

    fn decode(protocol: Protocol, wire: &[u8]) -> OwnedMessage {
        let mut reader = Reader::new(protocol, 1024);
        reader.extend(wire);
        reader.next_message().unwrap().unwrap()
    }

    #[test]
    fn cached_frames_decode_as_what_they_stand_for_in_every_protocol() {
        let frames = Frames::new();
        for protocol in Protocol::ALL {
            assert_eq!(
                decode(protocol, frames.probe(protocol)),
                OwnedMessage::Ping(Vec::new())
            );
            for (request, text) in [
                (CloseRequest::Shutdown, "server shutting down"),
                (CloseRequest::MaxAge, "maximum connection age"),
            ] {
                assert_eq!(
                    decode(protocol, frames.drain(protocol, request)),
                    OwnedMessage::Close(code::GOING_AWAY, text.into())
                );
            }
        }
    }

    #[test]
    fn a_close_reason_line_mode_cannot_carry_is_left_out() {
        let reason = CloseReason::Application {
            code: 4100,
            reason: "two\nlines".into(),
        };
        let wire = close_frame(Protocol::Line, &reason).unwrap();
        assert_eq!(wire, b"CLOSE 4100\n");
    }
}
