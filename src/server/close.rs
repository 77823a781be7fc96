//! Why a connection ended.

use std::borrow::Cow;
use std::fmt;
use std::io;

use crate::protocol::{DecodeError, code};

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
    /// The peer stopped reading: a write could not complete within the write
    /// timeout (or a server PING found the send buffer full).
    WriteTimeout,
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
    /// Any other I/O error.
    Io(io::ErrorKind),
}

impl CloseReason {
    /// A short stable name, for logs and metric labels.
    pub fn label(&self) -> &'static str {
        match self {
            CloseReason::PeerClosed => "peer_closed",
            CloseReason::PeerClose(_) => "peer_close_frame",
            CloseReason::Reset => "reset",
            CloseReason::IdleTimeout => "idle_timeout",
            CloseReason::TcpTimeout(_) => "tcp_timeout",
            CloseReason::WriteTimeout => "write_timeout",
            CloseReason::Protocol(e) if e.is_too_big() => "too_big",
            CloseReason::Protocol(_) => "protocol_error",
            CloseReason::PingPolicy => "ping_policy",
            CloseReason::Shutdown => "shutdown",
            CloseReason::MaxAge => "max_age",
            CloseReason::Application { .. } => "application",
            CloseReason::HandlerPanic => "handler_panic",
            CloseReason::BadProxyHeader(_) => "bad_proxy_header",
            CloseReason::Io(_) => "io_error",
        }
    }

    /// The CLOSE message the server sends for this reason, if any. None when
    /// the connection can no longer carry one (reset, timed out, stalled).
    pub fn close_message(&self) -> Option<(u16, Cow<'_, str>)> {
        Some(match self {
            CloseReason::PeerClose(_) => (code::NORMAL, "bye".into()),
            CloseReason::IdleTimeout => (code::IDLE_TIMEOUT, "idle timeout".into()),
            CloseReason::Protocol(e) => (e.close_code(), e.to_string().into()),
            CloseReason::PingPolicy => (code::POLICY_VIOLATION, "too many pings".into()),
            CloseReason::Shutdown => (code::GOING_AWAY, "server shutting down".into()),
            CloseReason::MaxAge => (code::GOING_AWAY, "maximum connection age".into()),
            CloseReason::Application { code, reason } => (*code, reason.as_str().into()),
            CloseReason::BadProxyHeader(_) => (
                code::PROTOCOL_ERROR,
                "PROXY protocol header required".into(),
            ),
            CloseReason::PeerClosed
            | CloseReason::Reset
            | CloseReason::TcpTimeout(_)
            | CloseReason::WriteTimeout
            | CloseReason::HandlerPanic
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
            CloseReason::TcpTimeout(TcpTimeout::Unknown) => {
                f.write_str("tcp keepalive or user timeout (peer unreachable)")
            }
            CloseReason::WriteTimeout => f.write_str("write timed out (peer not reading)"),
            CloseReason::Protocol(e) => write!(f, "protocol error: {e}"),
            CloseReason::PingPolicy => f.write_str("too many pings"),
            CloseReason::Shutdown => f.write_str("server shutting down"),
            CloseReason::MaxAge => f.write_str("maximum connection age reached"),
            CloseReason::Application { code, reason } => {
                write!(f, "closed by handler: {code} {reason}")
            }
            CloseReason::HandlerPanic => f.write_str("handler panicked"),
            CloseReason::BadProxyHeader(why) => write!(f, "no valid PROXY protocol header: {why}"),
            CloseReason::Io(kind) => write!(f, "i/o error: {kind}"),
        }
    }
}
