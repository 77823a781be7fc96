//! WebSocket mode (RFC 6455), after the upgrade: text and binary messages
//! are DATA, Ping and Pong frames are PING and PONG, Close frames are
//! CLOSE with the same codes.
//!
//! Frame headers are parsed and written by `tungstenite`
//! ([`FrameHeader`]); what is ours is the mapping onto [`Message`] and the
//! rules a server enforces on what a client sends (RFC 6455 section 5):
//! client frames are masked, no extension was negotiated (so no reserved
//! bit is set), control frames are whole and carry at most 125 bytes, a
//! fragmented message is continued by continuation frames only, and text is
//! UTF-8. A message is complete, and so a message at all, only with its
//! final fragment: control frames may come between fragments and are
//! answered at once.
//!
//! Payloads are unmasked into the decoder's own buffer, which is why a
//! WebSocket [`Message`] borrows the decoder rather than the input.

use std::io::Cursor;

use tungstenite::protocol::frame::FrameHeader;
use tungstenite::protocol::frame::coding::{Control, Data, OpCode};

use super::{DecodeError, EncodeError, MAX_PING_PAYLOAD, Message};

/// The longest frame header: 2 bytes, 8 of extended length, 4 of mask.
pub const MAX_HEADER_LEN: usize = 14;

/// Bytes of fragment headers a message may carry beyond its payload
/// before it counts as too big: the input buffer holds every fragment of a
/// message until its last one, so their headers must be bounded too.
pub const FRAGMENT_ALLOWANCE: usize = 4096;

/// Capacity of the unmasked-payload buffer kept between messages.
const RETAIN: usize = 4096;

/// Which end of the connection decodes: a server reads masked frames, a
/// client unmasked ones.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Role {
    Server,
    Client,
}

/// What a WebSocket decoder keeps between calls.
#[derive(Clone, Debug)]
pub(super) struct State {
    role: Role,
    /// The payload of the message last returned, unmasked.
    payload: Vec<u8>,
    /// A fragmented message so far: unmasked payload of its fragments.
    fragments: Vec<u8>,
    /// The fragmented message under way, if any: whether it is text.
    partial_text: Option<bool>,
    /// Leading bytes of the caller's buffer already taken into
    /// `fragments` (the caller passes them again until a message is
    /// returned, as every decoder's contract says).
    absorbed: usize,
}

impl State {
    pub(super) fn new(role: Role) -> State {
        State {
            role,
            payload: Vec::new(),
            fragments: Vec::new(),
            partial_text: None,
            absorbed: 0,
        }
    }

    /// Gives back the payload buffer's memory (not a fragmented message's).
    pub(super) fn release(&mut self) {
        self.payload = Vec::new();
        if self.partial_text.is_none() {
            self.fragments = Vec::new();
        }
    }
}

/// The most bytes one message can occupy in the input buffer: its payload,
/// one full header, and the fragment allowance.
pub(super) fn max_message_len(max_frame: usize) -> usize {
    max_frame
        .saturating_add(MAX_HEADER_LEN)
        .saturating_add(FRAGMENT_ALLOWANCE)
}

fn malformed(why: &'static str) -> DecodeError {
    DecodeError::WebSocket(why)
}

/// XORs `buf` with the frame's masking key (RFC 6455 section 5.3).
fn unmask(buf: &mut [u8], mask: [u8; 4]) {
    for (i, byte) in buf.iter_mut().enumerate() {
        *byte ^= mask[i & 3];
    }
}

/// Whether a Close frame may carry `code` (RFC 6455 section 7.4): the
/// registered codes and 3000-4999, never the ones meaning "none" or
/// "abnormal" locally.
fn close_code_valid(code: u16) -> bool {
    super::close_code_allowed(code) && !(1016..=2999).contains(&code) && code < 5000
}

/// Decodes the first message at the front of `buf` (after the bytes
/// already absorbed as fragments): the message, the bytes it used, and
/// whether it is a binary DATA message.
pub(super) fn decode<'a>(
    st: &'a mut State,
    buf: &[u8],
    max_frame: usize,
) -> Result<Option<(Message<'a>, usize, bool)>, DecodeError> {
    let limit = max_message_len(max_frame);
    loop {
        let rest = buf.get(st.absorbed..).unwrap_or_default();
        let mut cursor = Cursor::new(rest);
        let (header, len) = match FrameHeader::parse(&mut cursor) {
            Ok(Some(parsed)) => parsed,
            // A header cut off by a buffer already at the limit can never
            // be completed: the caller has no room left to read into.
            Ok(None) if st.absorbed + rest.len() >= limit => {
                return Err(DecodeError::TooBig {
                    len: (st.absorbed + rest.len()) as u64 + 1,
                    max: max_frame,
                });
            }
            Ok(None) => return Ok(None),
            Err(_) => return Err(malformed("reserved opcode")),
        };
        if header.rsv1 || header.rsv2 || header.rsv3 {
            return Err(malformed("reserved bit set without an extension"));
        }
        match (st.role, header.mask) {
            (Role::Server, None) => return Err(malformed("unmasked client frame")),
            (Role::Client, Some(_)) => return Err(malformed("masked server frame")),
            _ => {}
        }
        let is_control = matches!(header.opcode, OpCode::Control(_));
        if is_control {
            if !header.is_final {
                return Err(malformed("fragmented control frame"));
            }
            if len > MAX_PING_PAYLOAD as u64 {
                return Err(DecodeError::PingTooLong(len as usize));
            }
        } else {
            match (header.opcode, st.partial_text) {
                (OpCode::Data(Data::Continue), None) => {
                    return Err(malformed("continuation frame without a message"));
                }
                (OpCode::Data(Data::Text | Data::Binary), Some(_)) => {
                    return Err(malformed("new message inside a fragmented one"));
                }
                _ => {}
            }
            let so_far = st.fragments.len() as u64;
            if so_far.saturating_add(len) > max_frame as u64 {
                return Err(DecodeError::TooBig {
                    len: so_far.saturating_add(len),
                    max: max_frame,
                });
            }
        }
        let header_len = cursor.position() as usize;
        // Bounded: len <= max_frame here.
        let total = header_len + len as usize;
        if st.absorbed + total > limit {
            return Err(DecodeError::TooBig {
                len: (st.absorbed + total) as u64,
                max: max_frame,
            });
        }
        let Some(body) = rest.get(header_len..total) else {
            return Ok(None);
        };
        let mask = header.mask;
        let take = |into: &mut Vec<u8>| {
            let start = into.len();
            into.extend_from_slice(body);
            if let Some(mask) = mask {
                unmask(&mut into[start..], mask);
            }
        };
        if let OpCode::Control(control) = header.opcode {
            st.payload.clear();
            take(&mut st.payload);
            let used = st.absorbed + total;
            st.absorbed = 0;
            let msg = match control {
                Control::Ping => Message::Ping(&st.payload),
                Control::Pong => Message::Pong(&st.payload),
                Control::Close => close_message(&st.payload)?,
                Control::Reserved(_) => unreachable!("refused by FrameHeader::parse"),
            };
            return Ok(Some((msg, used, false)));
        }
        let text = match header.opcode {
            OpCode::Data(Data::Text) => true,
            OpCode::Data(Data::Binary) => false,
            _ => st.partial_text.unwrap_or(false),
        };
        if !header.is_final {
            take(&mut st.fragments);
            st.partial_text = Some(text);
            st.absorbed += total;
            continue;
        }
        if st.partial_text.take().is_some() {
            take(&mut st.fragments);
            std::mem::swap(&mut st.payload, &mut st.fragments);
            st.fragments.clear();
        } else {
            st.payload.clear();
            take(&mut st.payload);
        }
        if st.fragments.capacity() > RETAIN {
            st.fragments = Vec::new();
        }
        if text && std::str::from_utf8(&st.payload).is_err() {
            return Err(DecodeError::InvalidUtf8);
        }
        let used = st.absorbed + total;
        st.absorbed = 0;
        return Ok(Some((Message::Data(&st.payload), used, !text)));
    }
}

/// The CLOSE a Close frame's payload stands for: none is code 1005 ("no
/// status"), which the server answers like any other.
fn close_message(payload: &[u8]) -> Result<Message<'_>, DecodeError> {
    if payload.is_empty() {
        return Ok(Message::Close {
            code: 1005,
            reason: "",
        });
    }
    let (code, reason) = payload
        .split_first_chunk::<2>()
        .ok_or(DecodeError::MalformedClose)?;
    let code = u16::from_be_bytes(*code);
    if !close_code_valid(code) {
        return Err(DecodeError::ForbiddenCloseCode(code));
    }
    let reason = std::str::from_utf8(reason).map_err(|_| DecodeError::InvalidUtf8)?;
    Ok(Message::Close { code, reason })
}

/// How a DATA payload goes out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum DataOpcode {
    /// Text when the payload is UTF-8, binary otherwise.
    Detect,
    /// Binary whatever the payload.
    Binary,
}

/// Appends `msg` as one WebSocket frame, masked with `mask` when given (a
/// client's frames are).
pub(super) fn encode(
    msg: &Message<'_>,
    data: DataOpcode,
    mask: Option<[u8; 4]>,
    out: &mut Vec<u8>,
) -> Result<(), EncodeError> {
    let (opcode, code, payload) = match *msg {
        Message::Data(p) => {
            let text = data == DataOpcode::Detect && std::str::from_utf8(p).is_ok();
            let opcode = if text { Data::Text } else { Data::Binary };
            (OpCode::Data(opcode), None, p)
        }
        Message::Ping(p) => (OpCode::Control(Control::Ping), None, p),
        Message::Pong(p) => (OpCode::Control(Control::Pong), None, p),
        Message::Close { code, reason } => (
            OpCode::Control(Control::Close),
            Some(code),
            reason.as_bytes(),
        ),
    };
    let len = payload.len() + code.map_or(0, |_| 2);
    if matches!(opcode, OpCode::Control(_)) && len > MAX_PING_PAYLOAD {
        return Err(EncodeError::ControlTooLong(len));
    }
    let header = FrameHeader {
        is_final: true,
        rsv1: false,
        rsv2: false,
        rsv3: false,
        opcode,
        mask,
    };
    out.reserve(MAX_HEADER_LEN + len);
    header
        .format(len as u64, out)
        .expect("writing to a Vec cannot fail");
    let start = out.len();
    if let Some(code) = code {
        out.extend_from_slice(&code.to_be_bytes());
    }
    out.extend_from_slice(payload);
    if let Some(mask) = mask {
        unmask(&mut out[start..], mask);
    }
    Ok(())
}
