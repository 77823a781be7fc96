//! The wire protocol: messages, close codes, and the three codecs (length
//! prefixed frames, `\n`-terminated lines, and WebSocket frames after an
//! HTTP upgrade). See `docs/PROTOCOL.md` for the specification.
//!
//! Decoding borrows: in frame and line mode a [`Message`] holds slices of
//! the bytes received, so the hot path copies nothing and allocates
//! nothing; in WebSocket mode it holds the decoder's unmasked copy.
//! A decoder never asks for more than [`Decoder::max_message_len`] bytes to
//! be buffered, and it rejects an oversized frame from its 4-byte header,
//! before any of the body has been read.
//!
//! # Examples
//!
//! ```
//! use wheel_server::protocol::{Decoder, Message, Protocol};
//!
//! let mut wire = Vec::new();
//! Protocol::Frame.encode(&Message::Ping(b"7"), &mut wire);
//! Protocol::Frame.encode(&Message::Data(b"hello"), &mut wire);
//!
//! let mut decoder = Decoder::new(Protocol::Frame, 1024);
//! let (first, used) = decoder.decode(&wire).unwrap().unwrap();
//! assert_eq!(first, Message::Ping(b"7"));
//! let (second, _) = decoder.decode(&wire[used..]).unwrap().unwrap();
//! assert_eq!(second, Message::Data(b"hello"));
//! ```

pub mod frame;
pub mod line;
mod reader;
pub mod topic;
pub mod ws;

pub use reader::{OwnedMessage, Reader};

use std::fmt;

/// Close codes carried by CLOSE messages.
pub mod code {
    /// Normal closure; also the answer to a peer's CLOSE.
    pub const NORMAL: u16 = 1000;
    /// The server is going away (shutting down, or the connection reached
    /// its maximum age). The connection then drains: the server keeps
    /// answering until the client half-closes (see `docs/PROTOCOL.md`).
    pub const GOING_AWAY: u16 = 1001;
    /// Malformed input: zero length, unknown type, PING payload over 125 bytes.
    pub const PROTOCOL_ERROR: u16 = 1002;
    /// WebSocket mode: a text message (or close reason) that is not UTF-8.
    pub const INVALID_DATA: u16 = 1007;
    /// Policy violation: PINGs sent too often.
    pub const POLICY_VIOLATION: u16 = 1008;
    /// A frame or line longer than the server's maximum.
    pub const TOO_BIG: u16 = 1009;
    /// The server is full; try again later.
    pub const TRY_AGAIN_LATER: u16 = 1013;
    /// The connection was idle for longer than the idle timeout.
    pub const IDLE_TIMEOUT: u16 = 4000;
    /// The connection did not authenticate (`AUTH` missing or refused).
    pub const UNAUTHORIZED: u16 = 4001;
    /// The connection's credentials expired without a refresh.
    pub const TOKEN_EXPIRED: u16 = 4002;
    /// The peer read too slowly: more than the server's per-connection
    /// outbox (`--max-outbox`) was waiting for it.
    pub const SLOW_CONSUMER: u16 = 4003;
}

/// Whether a CLOSE may carry `code` on the wire (see
/// [`DecodeError::ForbiddenCloseCode`]).
pub fn close_code_allowed(code: u16) -> bool {
    !matches!(code, 0..=999 | 1004 | 1005 | 1006 | 1015)
}

/// The largest PING payload, in bytes.
pub const MAX_PING_PAYLOAD: usize = 125;

/// The most bytes any protocol adds around a DATA payload: a WebSocket
/// header (up to 14, with a mask the server never sends); frame mode adds
/// 5, line mode 1 (a newline).
pub const MAX_FRAMING: usize = ws::MAX_HEADER_LEN;

/// Which codec a connection speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Protocol {
    /// Binary frames: `u32` big-endian length, a type byte, the payload.
    #[default]
    Frame,
    /// Text lines for people with `nc`: `PING`, `PONG`, `QUIT`, anything else
    /// is data.
    Line,
    /// WebSocket (RFC 6455) after an HTTP upgrade: text and binary
    /// messages are data, Ping/Pong/Close frames are PING/PONG/CLOSE.
    Ws,
}

impl Protocol {
    /// Every protocol, in the order of [`as_str`](Protocol::as_str) names
    /// shown on the command line.
    pub const ALL: [Protocol; 3] = [Protocol::Frame, Protocol::Line, Protocol::Ws];

    /// Appends the encoding of `msg` to `out`, or leaves `out` untouched and
    /// says why `msg` cannot be sent in this protocol.
    ///
    /// A message is refused rather than sent in a form the peer would read
    /// differently: in line mode a payload containing `\n` (it would end the
    /// line and start another, so a handler's data could inject commands), a
    /// DATA payload that would read as a command (`PING ...`, `QUIT` ...),
    /// in frame mode a payload whose length does not fit the length field,
    /// in WebSocket mode a PING, PONG or CLOSE over 125 bytes, and in all a
    /// CLOSE code that must never be sent.
    ///
    /// In WebSocket mode DATA goes out as a text message when it is UTF-8,
    /// as a binary one otherwise, unmasked (the server's side; clients use
    /// [`encode_as_client`](Protocol::encode_as_client)).
    ///
    /// # Errors
    ///
    /// An [`EncodeError`] naming the problem.
    pub fn encode(self, msg: &Message<'_>, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        self.encode_with(msg, ws::DataOpcode::Detect, None, out)
    }

    /// As [`encode`](Protocol::encode), for a client's side of the
    /// connection: in WebSocket mode the frame is masked with a random key,
    /// as RFC 6455 requires of clients. The other protocols have no sides.
    ///
    /// # Errors
    ///
    /// As for [`encode`](Protocol::encode).
    pub fn encode_as_client(self, msg: &Message<'_>, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        let mask = (self == Protocol::Ws).then(|| fastrand::u32(..).to_ne_bytes());
        self.encode_with(msg, ws::DataOpcode::Detect, mask, out)
    }

    /// Encodes a DATA reply to a message that was `binary` (a WebSocket
    /// binary message): in WebSocket mode it then goes out binary, so that
    /// an echo keeps the opcode; otherwise as [`encode`](Protocol::encode).
    pub(crate) fn encode_reply(
        self,
        payload: &[u8],
        binary: bool,
        out: &mut Vec<u8>,
    ) -> Result<(), EncodeError> {
        let data = if binary {
            ws::DataOpcode::Binary
        } else {
            ws::DataOpcode::Detect
        };
        self.encode_with(&Message::Data(payload), data, None, out)
    }

    /// The one encoder behind the others: the CLOSE code check every
    /// protocol shares, then the protocol's own; `data` and `mask` matter
    /// in WebSocket mode only.
    fn encode_with(
        self,
        msg: &Message<'_>,
        data: ws::DataOpcode,
        mask: Option<[u8; 4]>,
        out: &mut Vec<u8>,
    ) -> Result<(), EncodeError> {
        if let Message::Close { code, .. } = *msg
            && !close_code_allowed(code)
        {
            return Err(EncodeError::ForbiddenCloseCode(code));
        }
        match self {
            Protocol::Frame => frame::encode(msg, out),
            Protocol::Line => line::encode(msg, out),
            Protocol::Ws => ws::encode(msg, data, mask, out),
        }
    }

    /// The name used on the command line and in logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Frame => "frame",
            Protocol::Line => "line",
            Protocol::Ws => "ws",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Protocol {
    type Err = String;

    /// `frame`, `line` or `ws`.
    fn from_str(s: &str) -> Result<Protocol, String> {
        Protocol::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| format!("unknown protocol {s:?}: expected frame, line or ws"))
    }
}

/// Why a message cannot be encoded in a protocol (see [`Protocol::encode`]).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum EncodeError {
    /// Line mode: the payload or reason contains `\n`, which would end the
    /// line early and make the rest a line of its own.
    LineBreak,
    /// Line mode: the DATA payload would be read as a command (`PING`,
    /// `PONG`, `QUIT` or a well-formed `CLOSE`), not as data.
    ReadsAsCommand,
    /// Frame mode: the payload does not fit a frame's `u32` length field.
    TooLong(usize),
    /// A CLOSE code that must never be sent (see
    /// [`DecodeError::ForbiddenCloseCode`]).
    ForbiddenCloseCode(u16),
    /// WebSocket mode: a PING, PONG or CLOSE whose payload (code included)
    /// is over 125 bytes, more than a control frame carries.
    ControlTooLong(usize),
}

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EncodeError::LineBreak => {
                f.write_str("line mode cannot carry a line break (LF or CR) in a message")
            }
            EncodeError::ReadsAsCommand => {
                f.write_str("line mode DATA would read as a command (PING, PONG, QUIT or CLOSE)")
            }
            EncodeError::TooLong(n) => write!(f, "payload of {n} bytes does not fit a frame"),
            EncodeError::ForbiddenCloseCode(c) => write!(f, "close code {c} must not be sent"),
            EncodeError::ControlTooLong(n) => {
                write!(
                    f,
                    "control frame payload of {n} bytes exceeds {MAX_PING_PAYLOAD}"
                )
            }
        }
    }
}

impl std::error::Error for EncodeError {}

/// One protocol message, borrowing its payload from the receive buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Message<'a> {
    /// Application data; the built-in echo service sends it back.
    Data(&'a [u8]),
    /// A heartbeat request; answered by a PONG with the same payload.
    Ping(&'a [u8]),
    /// A heartbeat answer.
    Pong(&'a [u8]),
    /// The sender is closing the connection.
    Close {
        /// One of the [`code`] constants, or an application's own.
        code: u16,
        /// Human-readable reason.
        reason: &'a str,
    },
}

/// Why a byte stream could not be decoded. Every variant ends the connection
/// with the CLOSE code of [`DecodeError::close_code`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// A frame whose length field is 0 (it must count at least the type byte).
    EmptyFrame,
    /// A frame type byte that is not DATA, PING, PONG or CLOSE.
    UnknownType(u8),
    /// A PING payload longer than [`MAX_PING_PAYLOAD`].
    PingTooLong(usize),
    /// A CLOSE frame with fewer than two payload bytes or a reason that is not
    /// UTF-8.
    MalformedClose,
    /// A CLOSE with a code that must never be sent: below 1000, or 1004,
    /// 1005, 1006 or 1015 (reserved, or meaning "no code" and "abnormal
    /// closure" locally, RFC 6455 section 7.4.1).
    ForbiddenCloseCode(u16),
    /// WebSocket mode: a frame breaking RFC 6455 (unmasked client frame,
    /// reserved opcode or bit, fragmented control frame, a continuation
    /// out of place); says which.
    WebSocket(&'static str),
    /// WebSocket mode: a text message or close reason that is not UTF-8
    /// (CLOSE 1007).
    InvalidUtf8,
    /// Frame mode: a length field that reads as text (four printable
    /// ASCII bytes, such as `hell`) and announces a frame over the
    /// maximum: a text client (`nc`, telnet) on a frame listener. Answered
    /// with 1002 and a reason that says so, rather than a baffling 1009
    /// for a frame of 1.7 GB.
    TextOnFrameListener,
    /// A frame or line longer than the configured maximum.
    TooBig {
        /// The announced frame length; for a line, `max + 1` (a lower bound,
        /// as the line's end need not have arrived).
        len: u64,
        /// The configured maximum.
        max: usize,
    },
}

impl DecodeError {
    /// The close code this error is answered with: 1009 for
    /// [`TooBig`](DecodeError::TooBig), 1007 for
    /// [`InvalidUtf8`](DecodeError::InvalidUtf8), 1002 otherwise.
    pub fn close_code(&self) -> u16 {
        match self {
            DecodeError::TooBig { .. } => code::TOO_BIG,
            DecodeError::InvalidUtf8 => code::INVALID_DATA,
            _ => code::PROTOCOL_ERROR,
        }
    }

    /// Whether this is a message over the size limit.
    pub fn is_too_big(&self) -> bool {
        matches!(self, DecodeError::TooBig { .. })
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::EmptyFrame => f.write_str("frame length is zero"),
            DecodeError::UnknownType(t) => write!(f, "unknown frame type 0x{t:02x}"),
            DecodeError::PingTooLong(n) => {
                write!(f, "ping payload of {n} bytes exceeds {MAX_PING_PAYLOAD}")
            }
            DecodeError::MalformedClose => f.write_str("malformed close frame"),
            DecodeError::WebSocket(why) => f.write_str(why),
            DecodeError::InvalidUtf8 => f.write_str("text that is not UTF-8"),
            DecodeError::ForbiddenCloseCode(c) => write!(f, "close code {c} must not be sent"),
            DecodeError::TooBig { len, max } => {
                write!(f, "message of {len} bytes exceeds the maximum of {max}")
            }
            DecodeError::TextOnFrameListener => f.write_str(
                "this listener speaks the frame protocol; for text use --protocol line or line://",
            ),
        }
    }
}

impl std::error::Error for DecodeError {}

/// An incremental decoder for one connection's byte stream.
///
/// Call [`decode`](Decoder::decode) with all bytes received and not yet
/// consumed; it returns the first complete message and how many bytes it
/// used, or `None` if more bytes are needed.
#[derive(Clone, Debug)]
pub struct Decoder {
    protocol: Protocol,
    max_frame: usize,
    /// Line mode: how many leading bytes of the buffer are known to hold no
    /// `\n`, so a long line arriving in pieces is scanned once, not
    /// quadratically.
    scanned: usize,
    /// WebSocket mode: unmasked payloads and a fragmented message so far.
    ws: Option<Box<ws::State>>,
}

/// A decoded message with what [`Decoder::decode_message`] adds to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decoded<'a> {
    /// The message.
    pub message: Message<'a>,
    /// How many bytes of the buffer it used.
    pub len: usize,
    /// WebSocket mode: DATA that came as a binary message (not text).
    /// Always false in the other modes.
    pub binary: bool,
}

impl Decoder {
    /// A decoder for `protocol` that rejects messages longer than
    /// `max_frame` bytes (frame mode: the length field; line mode: the line
    /// without its terminator; WebSocket mode: the message's payload). It
    /// reads what a client sends: in WebSocket mode, masked frames.
    pub fn new(protocol: Protocol, max_frame: usize) -> Decoder {
        Decoder::with_role(protocol, max_frame, ws::Role::Server)
    }

    /// As [`new`](Decoder::new), for a client reading what a server sends:
    /// in WebSocket mode, unmasked frames.
    pub fn client(protocol: Protocol, max_frame: usize) -> Decoder {
        Decoder::with_role(protocol, max_frame, ws::Role::Client)
    }

    fn with_role(protocol: Protocol, max_frame: usize, role: ws::Role) -> Decoder {
        Decoder {
            protocol,
            max_frame,
            scanned: 0,
            ws: (protocol == Protocol::Ws).then(|| Box::new(ws::State::new(role))),
        }
    }

    /// Gives back memory kept between messages (WebSocket mode: the
    /// unmasked payload buffer), for a connection gone quiet.
    pub fn release(&mut self) {
        if let Some(ws) = &mut self.ws {
            ws.release();
        }
    }

    /// The protocol this decoder speaks.
    pub fn protocol(&self) -> Protocol {
        self.protocol
    }

    /// The most bytes a single message can occupy in the buffer, framing
    /// included. A caller never needs to buffer more than this.
    pub fn max_message_len(&self) -> usize {
        match self.protocol {
            Protocol::Frame => self.max_frame.saturating_add(frame::HEADER_LEN),
            // The line, then "\r\n".
            Protocol::Line => self.max_frame.saturating_add(2),
            Protocol::Ws => ws::max_message_len(self.max_frame),
        }
    }

    /// Decodes the first message in `buf`.
    ///
    /// Returns `Ok(None)` when `buf` holds only part of a message. The caller
    /// must pass the same unconsumed bytes (plus any new ones) next time.
    ///
    /// # Errors
    ///
    /// A [`DecodeError`] when the stream is invalid; the connection must then
    /// be closed with [`DecodeError::close_code`].
    pub fn decode<'a>(
        &'a mut self,
        buf: &'a [u8],
    ) -> Result<Option<(Message<'a>, usize)>, DecodeError> {
        Ok(self.decode_message(buf)?.map(|d| (d.message, d.len)))
    }

    /// As [`decode`](Decoder::decode), saying also whether DATA came as a
    /// WebSocket binary message.
    ///
    /// # Errors
    ///
    /// As for [`decode`](Decoder::decode).
    pub fn decode_message<'a>(
        &'a mut self,
        buf: &'a [u8],
    ) -> Result<Option<Decoded<'a>>, DecodeError> {
        let decoded = match self.protocol {
            Protocol::Frame => frame::decode(buf, self.max_frame)?.map(|(m, n)| (m, n, false)),
            Protocol::Line => {
                line::decode(buf, self.max_frame, &mut self.scanned)?.map(|(m, n)| (m, n, false))
            }
            Protocol::Ws => {
                let st = self.ws.as_mut().expect("a WebSocket decoder has its state");
                ws::decode(st, buf, self.max_frame)?
            }
        };
        Ok(decoded.map(|(message, len, binary)| Decoded {
            message,
            len,
            binary,
        }))
    }
}

#[cfg(test)]
mod tests;
