//! Why a connection ended.

use std::borrow::Cow;
use std::fmt;
use std::io;

use crate::protocol::{DecodeError, code};

/// The longest close reason sent, in bytes: what a WebSocket close frame
/// can carry (125 bytes of payload less the 2-byte code).
pub const MAX_CLOSE_REASON: usize = 123;

/// A close reason every protocol can carry: line breaks made spaces, cut
/// to [`MAX_CLOSE_REASON`] bytes at a character boundary.
pub(crate) fn clean_reason(reason: &str) -> String {
    let mut end = reason.len().min(MAX_CLOSE_REASON);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    reason[..end].replace(['\r', '\n'], " ")
}

/// Which kernel mechanism reported a dead peer with `ETIMEDOUT`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TcpTimeout {
    /// TCP keepalive was on and `TCP_USER_TIMEOUT` off.
    Keepalive,
    /// `TCP_USER_TIMEOUT` was on and keepalive off.
    UserTimeout,
    /// Both were on: either could have fired.
    Unknown,
}

impl TcpTimeout {
    /// The mechanism that can have fired, given what was armed.
    pub(crate) fn armed(keepalive: bool, user_timeout: bool) -> TcpTimeout {
        match (keepalive, user_timeout) {
            (true, false) => TcpTimeout::Keepalive,
            (false, true) => TcpTimeout::UserTimeout,
            _ => TcpTimeout::Unknown,
        }
    }
}

/// A close asked for by a thread other than the connection's worker.
///
/// Two kinds exist. An *immediate* one (idle timeout, stalled writes, slow
/// consumer) wakes the worker with `shutdown(SHUT_RD)`: it answers what it
/// has already read, writes the CLOSE and hangs up. A *draining* one
/// (shutdown, maximum age) queues CLOSE 1001 on the outbound path at once
/// and leaves the worker serving until the client hangs up, or until the
/// drain is forced after a grace period.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CloseRequest {
    /// No complete message within the idle timeout.
    IdleTimeout,
    /// Queued output made no progress within the write timeout.
    WriteStalled,
    /// The outbox would have exceeded its bound.
    SlowConsumer,
    /// Draining: the server is shutting down.
    Shutdown,
    /// Draining: the connection reached its maximum age.
    MaxAge,
    /// The application closed the connection through a server handle; its
    /// code and reason are kept with the connection.
    Application,
    /// Draining: the application closed the connection with code 1001.
    ApplicationDrain,
    /// The connection's credentials expired without a refresh.
    TokenExpired,
}

impl CloseRequest {
    /// The reason the connection closes with. For the application's
    /// requests, a placeholder: [`Conn::request_reason`] has the real code.
    ///
    /// [`Conn::request_reason`]: crate::server::conn::Conn::request_reason
    pub(crate) fn reason(self) -> CloseReason {
        match self {
            CloseRequest::Application | CloseRequest::ApplicationDrain => {
                CloseReason::Application {
                    code: crate::protocol::code::NORMAL,
                    reason: String::new(),
                }
            }
            CloseRequest::IdleTimeout => CloseReason::IdleTimeout,
            CloseRequest::TokenExpired => CloseReason::TokenExpired,
            CloseRequest::WriteStalled => CloseReason::WriteTimeout,
            CloseRequest::SlowConsumer => CloseReason::SlowConsumer,
            CloseRequest::Shutdown => CloseReason::Shutdown,
            CloseRequest::MaxAge => CloseReason::MaxAge,
        }
    }

    /// Whether this request drains (CLOSE first, hang up later) rather than
    /// closes at once.
    pub(crate) fn drains(self) -> bool {
        matches!(
            self,
            CloseRequest::Shutdown | CloseRequest::MaxAge | CloseRequest::ApplicationDrain
        )
    }
}

/// Where a connection is on its way out. Kept with the outbound path's
/// queue, under its lock, since what may still be sent depends on it.
///
/// ```text
///            drain (shutdown, max age)            worker ends
///   Open ------------------------------> Requested(drains) ----+
///     |                                                      |
///     | idle timeout, write stalled, slow consumer           v
///     +-------------------------------> Requested(at once) -> Finishing
///     |                                                      ^
///     +------------------------------------------------------+
///                 worker ends on its own (EOF, CLOSE, error)
/// ```
///
/// The first request wins; later ones are refused. Only [`Open`] accepts
/// probes and pushes; a draining connection still carries its worker's
/// answers after the CLOSE 1001.
///
/// [`Open`]: CloseState::Open
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CloseState {
    /// Serving.
    Open,
    /// Another thread asked for a close.
    Requested(CloseRequest),
    /// The worker is closing for its own reason: nobody else needs to act,
    /// and an idle timer that fires now does not count as an idle timeout.
    Finishing,
}

impl CloseState {
    /// The request another thread made, if any.
    pub(crate) fn request(self) -> Option<CloseRequest> {
        match self {
            CloseState::Requested(request) => Some(request),
            _ => None,
        }
    }

    /// `open`, `draining` (CLOSE 1001 sent, still answering) or `closing`,
    /// for `/connections`.
    pub(crate) fn label(self) -> &'static str {
        match self {
            CloseState::Open => "open",
            CloseState::Requested(request) if request.drains() => "draining",
            _ => "closing",
        }
    }
}

/// Why a connection was closed: logged with every close, and what the server
/// sends as its CLOSE message.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum CloseReason {
    /// The peer closed its side (end of stream) without a CLOSE message.
    PeerClosed,
    /// The peer sent CLOSE with this code; the server answered CLOSE 1000.
    PeerClose(u16),
    /// The connection was reset (`ECONNRESET` or `EPIPE`).
    Reset,
    /// No complete message within the idle timeout: CLOSE 4000.
    IdleTimeout,
    /// The kernel declared the peer dead (`ETIMEDOUT`): TCP keepalive probes
    /// went unanswered, or sent data stayed unacknowledged past
    /// `TCP_USER_TIMEOUT`. Both count as `tcp_timeout`; the kind says which
    /// mechanism was armed.
    TcpTimeout(TcpTimeout),
    /// The peer stopped reading: a write made no progress within the write
    /// timeout.
    WriteTimeout,
    /// The peer read too slowly: queueing a message for it would have
    /// taken its outbox past `--max-outbox`. CLOSE 4003 after the message
    /// being written, if any; what was queued behind it is dropped.
    SlowConsumer,
    /// Malformed or oversized input: CLOSE 1002 or 1009.
    Protocol(DecodeError),
    /// PINGs arrived too often: CLOSE 1008.
    PingPolicy,
    /// The server is shutting down: CLOSE 1001, then the connection drains
    /// (see `docs/PROTOCOL.md`).
    Shutdown,
    /// The connection reached its maximum age (`--max-connection-age`):
    /// CLOSE 1001 and a drain, so that the client reconnects, possibly to
    /// another instance.
    MaxAge,
    /// The [`Handler`](crate::Handler) closed the connection with this code.
    Application {
        /// The close code sent.
        code: u16,
        /// The reason sent.
        reason: String,
    },
    /// The handler panicked; the connection is dropped without a CLOSE.
    HandlerPanic,
    /// `--proxy-protocol` is on and the connection did not start with a
    /// valid PROXY protocol header: CLOSE 1002.
    BadProxyHeader(String),
    /// The client's address already holds `--max-connections-per-ip`
    /// connections (known only after the PROXY header): CLOSE 1013.
    PerIpLimit,
    /// The client's address connects faster than
    /// `--max-connect-rate-per-ip` (known only after the PROXY header):
    /// CLOSE 1013.
    PerIpRate,
    /// The connection did not authenticate: no `AUTH` first, or credentials
    /// refused (why, for the log): CLOSE 4001 `unauthorized`.
    Unauthorized(String),
    /// The connection's credentials expired without a refresh: CLOSE 4002
    /// `token expired`.
    TokenExpired,
    /// The TLS handshake failed or did not complete within the handshake
    /// timeout; why. No CLOSE: the protocol never started.
    TlsHandshake(String),
    /// A WebSocket connection's upgrade request was refused (an HTTP error
    /// status was sent) or did not arrive within the handshake timeout;
    /// why. No CLOSE: the protocol never started.
    BadUpgrade(String),
    /// A parked connection had input and no thread could be started to
    /// serve it (the process's or the machine's thread limit): CLOSE 1013.
    NoThread,
    /// Any other I/O error.
    Io(io::ErrorKind),
}

impl CloseReason {
    /// Every [`label`](CloseReason::label), in the order metrics list them
    /// (each is reported from the start, at 0).
    pub const LABELS: [&'static str; 23] = [
        "peer_closed",
        "peer_close_frame",
        "reset",
        "idle_timeout",
        "tcp_timeout",
        "write_timeout",
        "slow_consumer",
        "protocol_error",
        "too_big",
        "ping_policy",
        "shutdown",
        "max_age",
        "application",
        "handler_panic",
        "io_error",
        "bad_proxy_header",
        "per_ip_limit",
        "per_ip_rate",
        "unauthorized",
        "token_expired",
        "bad_upgrade",
        "tls_handshake",
        "no_thread",
    ];

    /// A short stable name, for logs and metric labels.
    pub fn label(&self) -> &'static str {
        match self {
            CloseReason::PeerClosed => "peer_closed",
            CloseReason::PeerClose(_) => "peer_close_frame",
            CloseReason::Reset => "reset",
            CloseReason::IdleTimeout => "idle_timeout",
            CloseReason::TcpTimeout(_) => "tcp_timeout",
            CloseReason::WriteTimeout => "write_timeout",
            CloseReason::SlowConsumer => "slow_consumer",
            CloseReason::Protocol(e) if e.is_too_big() => "too_big",
            CloseReason::Protocol(_) => "protocol_error",
            CloseReason::PingPolicy => "ping_policy",
            CloseReason::Shutdown => "shutdown",
            CloseReason::MaxAge => "max_age",
            CloseReason::Application { .. } => "application",
            CloseReason::HandlerPanic => "handler_panic",
            CloseReason::BadProxyHeader(_) => "bad_proxy_header",
            CloseReason::PerIpLimit => "per_ip_limit",
            CloseReason::PerIpRate => "per_ip_rate",
            CloseReason::Unauthorized(_) => "unauthorized",
            CloseReason::TokenExpired => "token_expired",
            CloseReason::BadUpgrade(_) => "bad_upgrade",
            CloseReason::TlsHandshake(_) => "tls_handshake",
            CloseReason::NoThread => "no_thread",
            CloseReason::Io(_) => "io_error",
        }
    }

    /// The CLOSE message the server sends for this reason, if any. None when
    /// the connection can no longer carry one (reset, timed out, stalled).
    pub fn close_message(&self) -> Option<(u16, Cow<'_, str>)> {
        Some(match self {
            CloseReason::PeerClose(_) => (code::NORMAL, "bye".into()),
            CloseReason::IdleTimeout => (code::IDLE_TIMEOUT, "idle timeout".into()),
            CloseReason::SlowConsumer => (code::SLOW_CONSUMER, "slow consumer".into()),
            CloseReason::Protocol(e) => (e.close_code(), e.to_string().into()),
            CloseReason::PingPolicy => (code::POLICY_VIOLATION, "too many pings".into()),
            CloseReason::Shutdown => (code::GOING_AWAY, "server shutting down".into()),
            CloseReason::MaxAge => (code::GOING_AWAY, "maximum connection age".into()),
            CloseReason::Application { code, reason } => (*code, reason.as_str().into()),
            CloseReason::BadProxyHeader(_) => (
                code::PROTOCOL_ERROR,
                "PROXY protocol header required".into(),
            ),
            CloseReason::PerIpLimit => (
                code::TRY_AGAIN_LATER,
                "too many connections from your address".into(),
            ),
            CloseReason::PerIpRate => (
                code::TRY_AGAIN_LATER,
                "connecting too often from your address".into(),
            ),
            CloseReason::Unauthorized(_) => (code::UNAUTHORIZED, "unauthorized".into()),
            CloseReason::TokenExpired => (code::TOKEN_EXPIRED, "token expired".into()),
            CloseReason::NoThread => (code::TRY_AGAIN_LATER, "server out of threads".into()),
            CloseReason::PeerClosed
            | CloseReason::Reset
            | CloseReason::TcpTimeout(_)
            | CloseReason::WriteTimeout
            | CloseReason::HandlerPanic
            | CloseReason::BadUpgrade(_)
            | CloseReason::TlsHandshake(_)
            | CloseReason::Io(_) => return None,
        })
    }

    /// The reason a failed `read` stands for.
    pub(crate) fn from_read_error(err: &io::Error) -> CloseReason {
        match err.kind() {
            io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe => CloseReason::Reset,
            io::ErrorKind::TimedOut => CloseReason::TcpTimeout(TcpTimeout::Unknown),
            kind => CloseReason::Io(kind),
        }
    }

    /// The reason a failed `write` stands for. With `SO_SNDTIMEO` set, a
    /// write that times out fails with `EAGAIN` (`WouldBlock`).
    pub(crate) fn from_write_error(err: &io::Error) -> CloseReason {
        match err.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::WriteZero => CloseReason::WriteTimeout,
            _ => CloseReason::from_read_error(err),
        }
    }
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CloseReason::PeerClosed => f.write_str("peer closed the connection"),
            CloseReason::PeerClose(code) => write!(f, "peer sent close {code}"),
            CloseReason::Reset => f.write_str("connection reset by peer"),
            CloseReason::IdleTimeout => f.write_str("idle timeout"),
            CloseReason::TcpTimeout(TcpTimeout::Keepalive) => {
                f.write_str("tcp keepalive timeout: probes unanswered (peer unreachable)")
            }
            CloseReason::TcpTimeout(TcpTimeout::UserTimeout) => {
                f.write_str("tcp user timeout: sent data unacknowledged (peer unreachable)")
            }
            CloseReason::TcpTimeout(TcpTimeout::Unknown) => f.write_str(
                "tcp keepalive or user timeout: probes or sent data unacknowledged (peer unreachable)",
            ),
            CloseReason::WriteTimeout => f.write_str("write timed out (peer not reading)"),
            CloseReason::SlowConsumer => f.write_str("slow consumer: outbox full"),
            CloseReason::Protocol(e) => write!(f, "protocol error: {e}"),
            CloseReason::PingPolicy => f.write_str("too many pings"),
            CloseReason::Shutdown => f.write_str("server shutting down"),
            CloseReason::MaxAge => f.write_str("maximum connection age reached"),
            CloseReason::Application { code, reason } => {
                write!(f, "closed by handler: {code} {reason}")
            }
            CloseReason::HandlerPanic => f.write_str("handler panicked"),
            CloseReason::BadProxyHeader(why) => write!(f, "no valid PROXY protocol header: {why}"),
            CloseReason::PerIpLimit => f.write_str("too many connections from this address"),
            CloseReason::PerIpRate => f.write_str("connecting too often from this address"),
            CloseReason::Unauthorized(why) => write!(f, "unauthorized: {why}"),
            CloseReason::TokenExpired => f.write_str("token expired"),
            CloseReason::BadUpgrade(why) => write!(f, "WebSocket upgrade refused: {why}"),
            CloseReason::TlsHandshake(why) => write!(f, "TLS handshake failed: {why}"),
            CloseReason::NoThread => f.write_str("no thread to serve it: server out of threads"),
            CloseReason::Io(kind) => write!(f, "i/o error: {kind}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::DecodeError;

    /// One value of every variant: a new variant fails to compile here until
    /// it is added, and then must have its label in [`CloseReason::LABELS`].
    fn every_reason() -> Vec<CloseReason> {
        let all = vec![
            CloseReason::PeerClosed,
            CloseReason::PeerClose(1000),
            CloseReason::Reset,
            CloseReason::IdleTimeout,
            CloseReason::TcpTimeout(TcpTimeout::Keepalive),
            CloseReason::WriteTimeout,
            CloseReason::SlowConsumer,
            CloseReason::Protocol(DecodeError::EmptyFrame),
            CloseReason::Protocol(DecodeError::TooBig { len: 2, max: 1 }),
            CloseReason::PingPolicy,
            CloseReason::Shutdown,
            CloseReason::MaxAge,
            CloseReason::Application {
                code: 4100,
                reason: "x".into(),
            },
            CloseReason::HandlerPanic,
            CloseReason::BadProxyHeader("x".into()),
            CloseReason::PerIpLimit,
            CloseReason::PerIpRate,
            CloseReason::Unauthorized("x".into()),
            CloseReason::TokenExpired,
            CloseReason::BadUpgrade("x".into()),
            CloseReason::TlsHandshake("x".into()),
            CloseReason::NoThread,
            CloseReason::Io(io::ErrorKind::Other),
        ];
        for reason in &all {
            // Exhaustive on purpose: no wildcard arm.
            match reason {
                CloseReason::PeerClosed
                | CloseReason::PeerClose(_)
                | CloseReason::Reset
                | CloseReason::IdleTimeout
                | CloseReason::TcpTimeout(_)
                | CloseReason::WriteTimeout
                | CloseReason::SlowConsumer
                | CloseReason::Protocol(_)
                | CloseReason::PingPolicy
                | CloseReason::Shutdown
                | CloseReason::MaxAge
                | CloseReason::Application { .. }
                | CloseReason::HandlerPanic
                | CloseReason::BadProxyHeader(_)
                | CloseReason::PerIpLimit
                | CloseReason::PerIpRate
                | CloseReason::Unauthorized(_)
                | CloseReason::TokenExpired
                | CloseReason::BadUpgrade(_)
                | CloseReason::TlsHandshake(_)
                | CloseReason::NoThread
                | CloseReason::Io(_) => {}
            }
        }
        all
    }

    #[test]
    fn the_metric_label_list_is_exactly_the_labels_of_every_reason() {
        let mut labels: Vec<_> = every_reason().iter().map(CloseReason::label).collect();
        labels.sort_unstable();
        labels.dedup();
        let mut listed = CloseReason::LABELS.to_vec();
        listed.sort_unstable();
        assert_eq!(labels, listed);
    }

    #[test]
    fn every_request_maps_to_its_reason_and_drain_kind() {
        for (request, reason, drains) in [
            (CloseRequest::IdleTimeout, CloseReason::IdleTimeout, false),
            (CloseRequest::WriteStalled, CloseReason::WriteTimeout, false),
            (CloseRequest::SlowConsumer, CloseReason::SlowConsumer, false),
            (CloseRequest::Shutdown, CloseReason::Shutdown, true),
            (CloseRequest::MaxAge, CloseReason::MaxAge, true),
        ] {
            assert_eq!(request.reason(), reason);
            assert_eq!(request.drains(), drains);
            let state = CloseState::Requested(request);
            assert_eq!(state.label(), if drains { "draining" } else { "closing" });
        }
        assert_eq!(CloseState::Open.label(), "open");
        assert_eq!(CloseState::Finishing.label(), "closing");
    }
}
