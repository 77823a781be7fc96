//! Line mode: one message per `\n`-terminated line (a trailing `\r` is
//! stripped). `PING [text]`, `PONG [text]`, `QUIT`, `CLOSE <code> [reason]`;
//! any other line is data.

use super::{DecodeError, EncodeError, MAX_PING_PAYLOAD, Message, code};

/// The reason sent with the CLOSE that a `QUIT` line stands for.
pub const QUIT_REASON: &str = "quit";

/// Decodes one line from the front of `buf`. `scanned` is the decoder's
/// memory of how far `buf` is known to hold no newline.
pub(super) fn decode<'a>(
    buf: &'a [u8],
    max_frame: usize,
    scanned: &mut usize,
) -> Result<Option<(Message<'a>, usize)>, DecodeError> {
    let from = (*scanned).min(buf.len());
    let Some(pos) = buf[from..].iter().position(|&b| b == b'\n') else {
        *scanned = buf.len();
        // max_frame bytes plus a '\r' can still be a valid line whose '\n'
        // has not arrived; one byte more cannot.
        if buf.len() > max_frame.saturating_add(1) {
            return Err(too_big(max_frame));
        }
        return Ok(None);
    };
    *scanned = 0;
    let end = from + pos;
    let line = buf[..end].strip_suffix(b"\r").unwrap_or(&buf[..end]);
    if line.len() > max_frame {
        return Err(too_big(max_frame));
    }
    Ok(Some((parse(line)?, end + 1)))
}

/// How long a line was is only known once its newline arrives, which a
/// decoder must not wait for; the error reports the same lower bound however
/// the stream was split.
fn too_big(max_frame: usize) -> DecodeError {
    DecodeError::TooBig {
        len: max_frame as u64 + 1,
        max: max_frame,
    }
}

fn parse(line: &[u8]) -> Result<Message<'_>, DecodeError> {
    if let Some(text) = command(line, b"PING") {
        if text.len() > MAX_PING_PAYLOAD {
            return Err(DecodeError::PingTooLong(text.len()));
        }
        return Ok(Message::Ping(text));
    }
    if let Some(text) = command(line, b"PONG") {
        return Ok(Message::Pong(text));
    }
    if line == b"QUIT" {
        return Ok(Message::Close {
            code: code::NORMAL,
            reason: QUIT_REASON,
        });
    }
    if let Some(rest) = command(line, b"CLOSE")
        && let Some(close) = parse_close(rest)
    {
        if let Message::Close { code, .. } = close
            && !super::close_code_allowed(code)
        {
            return Err(DecodeError::ForbiddenCloseCode(code));
        }
        return Ok(close);
    }
    Ok(Message::Data(line))
}

/// `CLOSE`, `CLOSE 1000` or `CLOSE 1000 some reason`; `None` if malformed,
/// in which case the line is plain data.
fn parse_close(rest: &[u8]) -> Option<Message<'_>> {
    let rest = std::str::from_utf8(rest).ok()?;
    if rest.is_empty() {
        return Some(Message::Close {
            code: code::NORMAL,
            reason: "",
        });
    }
    let (code, reason) = rest.split_once(' ').unwrap_or((rest, ""));
    Some(Message::Close {
        code: code.parse().ok()?,
        reason,
    })
}

/// `word` alone, or `word` followed by a space and text: returns the text.
fn command<'a>(line: &'a [u8], word: &[u8]) -> Option<&'a [u8]> {
    let rest = line.strip_prefix(word)?;
    match rest {
        [] => Some(rest),
        [b' ', text @ ..] => Some(text),
        _ => None,
    }
}

/// Appends `msg` as one line, or refuses it (see
/// [`Protocol::encode`](super::Protocol::encode)): nothing a payload holds
/// can end its line early or make data read as a command.
pub(super) fn encode(msg: &Message<'_>, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    let text = match *msg {
        Message::Data(p) | Message::Ping(p) | Message::Pong(p) => p,
        Message::Close { reason, .. } => reason.as_bytes(),
    };
    // A lone '\r' is a line break too for many readers (Python's universal
    // newlines, for one): it could forge a line of its own.
    if text.iter().any(|&b| b == b'\n' || b == b'\r') {
        return Err(EncodeError::LineBreak);
    }
    match *msg {
        Message::Data(p) => {
            if !matches!(parse(p), Ok(Message::Data(_))) {
                return Err(EncodeError::ReadsAsCommand);
            }
            out.extend_from_slice(p);
        }
        Message::Ping(p) => put_command(out, b"PING", p),
        Message::Pong(p) => put_command(out, b"PONG", p),
        Message::Close { code, reason } => {
            out.extend_from_slice(b"CLOSE ");
            out.extend_from_slice(code.to_string().as_bytes());
            if !reason.is_empty() {
                out.push(b' ');
                out.extend_from_slice(reason.as_bytes());
            }
        }
    }
    out.push(b'\n');
    Ok(())
}

fn put_command(out: &mut Vec<u8>, word: &[u8], text: &[u8]) {
    out.extend_from_slice(word);
    if !text.is_empty() {
        out.push(b' ');
        out.extend_from_slice(text);
    }
}
