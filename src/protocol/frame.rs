//! Frame mode: `u32` big-endian length (type byte + payload), type byte,
//! payload.

use super::{DecodeError, EncodeError, MAX_PING_PAYLOAD, Message};

/// Bytes of the length field.
pub const HEADER_LEN: usize = 4;

/// Type byte of DATA.
pub const DATA: u8 = 0x01;
/// Type byte of PING.
pub const PING: u8 = 0x02;
/// Type byte of PONG.
pub const PONG: u8 = 0x03;
/// Type byte of CLOSE.
pub const CLOSE: u8 = 0x04;

/// Decodes one frame from the front of `buf`.
///
/// Checks that need only the header and type byte (length 0 or above
/// `max_frame`, unknown type, PING too long) fail as soon as those bytes are
/// in, without waiting for the body.
pub(super) fn decode(
    buf: &[u8],
    max_frame: usize,
) -> Result<Option<(Message<'_>, usize)>, DecodeError> {
    let Some(header) = buf.first_chunk::<HEADER_LEN>() else {
        return Ok(None);
    };
    let len = u32::from_be_bytes(*header);
    if len == 0 {
        return Err(DecodeError::EmptyFrame);
    }
    if u64::from(len) > max_frame as u64 {
        if header.iter().all(|&b| b.is_ascii_graphic() || b == b' ') {
            return Err(DecodeError::TextOnFrameListener);
        }
        return Err(DecodeError::TooBig {
            len: len.into(),
            max: max_frame,
        });
    }
    let Some(&kind) = buf.get(HEADER_LEN) else {
        return Ok(None);
    };
    let payload_len = len as usize - 1;
    match kind {
        DATA | PONG | CLOSE => {}
        PING if payload_len > MAX_PING_PAYLOAD => {
            return Err(DecodeError::PingTooLong(payload_len));
        }
        PING => {}
        other => return Err(DecodeError::UnknownType(other)),
    }
    let total = HEADER_LEN + len as usize;
    let Some(payload) = buf.get(HEADER_LEN + 1..total) else {
        return Ok(None);
    };
    let msg = match kind {
        DATA => Message::Data(payload),
        PING => Message::Ping(payload),
        PONG => Message::Pong(payload),
        _ => {
            let (code, reason) = payload
                .split_first_chunk::<2>()
                .ok_or(DecodeError::MalformedClose)?;
            let reason = std::str::from_utf8(reason).map_err(|_| DecodeError::MalformedClose)?;
            let code = u16::from_be_bytes(*code);
            if !super::close_code_allowed(code) {
                return Err(DecodeError::ForbiddenCloseCode(code));
            }
            Message::Close { code, reason }
        }
    };
    Ok(Some((msg, total)))
}

pub(super) fn encode(msg: &Message<'_>, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    let (kind, code, payload) = match *msg {
        Message::Data(p) => (DATA, None, p),
        Message::Ping(p) => (PING, None, p),
        Message::Pong(p) => (PONG, None, p),
        Message::Close { code, reason } => (CLOSE, Some(code), reason.as_bytes()),
    };
    let body = 1 + code.map_or(0, |_| 2) + payload.len();
    let len = u32::try_from(body).map_err(|_| EncodeError::TooLong(payload.len()))?;
    out.reserve(HEADER_LEN + body);
    out.extend_from_slice(&len.to_be_bytes());
    out.push(kind);
    if let Some(code) = code {
        out.extend_from_slice(&code.to_be_bytes());
    }
    out.extend_from_slice(payload);
    Ok(())
}
