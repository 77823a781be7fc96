//! Owned messages and a buffered reader: what a client, a test or a load
//! generator needs to turn a byte stream into messages it can keep.

use std::io::{self, Read};

use super::{DecodeError, Decoder, Message, Protocol};

/// A decoded message that owns its payload, for code that keeps messages
/// past the next read (clients, tests). The server's hot path uses the
/// borrowing [`Message`] instead.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum OwnedMessage {
    /// Application data.
    Data(Vec<u8>),
    /// A heartbeat request.
    Ping(Vec<u8>),
    /// A heartbeat answer.
    Pong(Vec<u8>),
    /// The sender is closing: code and reason.
    Close(u16, String),
}

impl OwnedMessage {
    /// The borrowed form, for [`Protocol::encode`].
    pub fn as_message(&self) -> Message<'_> {
        match self {
            OwnedMessage::Data(p) => Message::Data(p),
            OwnedMessage::Ping(p) => Message::Ping(p),
            OwnedMessage::Pong(p) => Message::Pong(p),
            OwnedMessage::Close(code, reason) => Message::Close {
                code: *code,
                reason,
            },
        }
    }

    /// The close code, if this is a CLOSE.
    pub fn close_code(&self) -> Option<u16> {
        match self {
            OwnedMessage::Close(code, _) => Some(*code),
            _ => None,
        }
    }
}

impl From<Message<'_>> for OwnedMessage {
    fn from(msg: Message<'_>) -> OwnedMessage {
        match msg {
            Message::Data(p) => OwnedMessage::Data(p.to_vec()),
            Message::Ping(p) => OwnedMessage::Ping(p.to_vec()),
            Message::Pong(p) => OwnedMessage::Pong(p.to_vec()),
            Message::Close { code, reason } => OwnedMessage::Close(code, reason.to_owned()),
        }
    }
}

/// Bytes received and not yet decoded, and the decoder that splits them
/// into messages.
///
/// Sans-I/O at its core ([`extend`](Reader::extend) then
/// [`next_message`](Reader::next_message)), so that async code can feed it
/// too; [`read_from`](Reader::read_from) does one blocking read.
///
/// # Examples
///
/// ```
/// use wheel_server::protocol::{Message, OwnedMessage, Protocol, Reader};
///
/// let mut wire = Vec::new();
/// Protocol::Frame.encode(&Message::Data(b"hi"), &mut wire).unwrap();
/// let mut reader = Reader::new(Protocol::Frame, 1024);
/// reader.extend(&wire[..3]);
/// assert_eq!(reader.next_message(), Ok(None));
/// reader.extend(&wire[3..]);
/// assert_eq!(reader.next_message(), Ok(Some(OwnedMessage::Data(b"hi".to_vec()))));
/// ```
#[derive(Clone, Debug)]
pub struct Reader {
    decoder: Decoder,
    /// Received bytes; those before `start` are consumed.
    buf: Vec<u8>,
    start: usize,
}

impl Reader {
    /// A reader for `protocol` refusing messages over `max_frame` bytes,
    /// reading what a server sends (in WebSocket mode: unmasked frames).
    pub fn new(protocol: Protocol, max_frame: usize) -> Reader {
        Reader {
            decoder: Decoder::client(protocol, max_frame),
            buf: Vec::new(),
            start: 0,
        }
    }

    /// Appends received bytes.
    pub fn extend(&mut self, bytes: &[u8]) {
        if self.start > 0 && self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete message, if the bytes received hold one.
    ///
    /// # Errors
    ///
    /// The stream does not decode; it cannot be resumed.
    pub fn next_message(&mut self) -> Result<Option<OwnedMessage>, DecodeError> {
        let Some((msg, used)) = self.decoder.decode(&self.buf[self.start..])? else {
            // Compact only when waiting for more: cheap, and keeps the
            // buffer from growing with consumed bytes.
            self.buf.drain(..self.start);
            self.start = 0;
            return Ok(None);
        };
        let owned = OwnedMessage::from(msg);
        self.start += used;
        Ok(Some(owned))
    }

    /// Whether undecoded bytes are buffered (part of a message).
    pub fn has_partial(&self) -> bool {
        self.start < self.buf.len()
    }

    /// Reads once from `source` into the buffer; returns the bytes read (0
    /// at end of stream).
    ///
    /// # Errors
    ///
    /// The read's error.
    pub fn read_from(&mut self, source: &mut impl Read) -> io::Result<usize> {
        let mut chunk = [0u8; 16 * 1024];
        let n = source.read(&mut chunk)?;
        self.extend(&chunk[..n]);
        Ok(n)
    }

    /// The next message, reading from `source` as needed; `None` at a clean
    /// end of stream (between messages).
    ///
    /// # Errors
    ///
    /// A read error, [`io::ErrorKind::InvalidData`] for bytes that do not
    /// decode, [`io::ErrorKind::UnexpectedEof`] for a stream ending inside
    /// a message.
    pub fn read_message(&mut self, source: &mut impl Read) -> io::Result<Option<OwnedMessage>> {
        loop {
            if let Some(msg) = self
                .next_message()
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?
            {
                return Ok(Some(msg));
            }
            match self.read_from(source) {
                Ok(0) if self.has_partial() => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(0) => return Ok(None),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
}
