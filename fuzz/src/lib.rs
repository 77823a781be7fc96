//! What the fuzz targets check, shared by both.

use wheel_server::protocol::{Decoder, Protocol};

/// Feeds `data` to a decoder: it must never panic, must consume something
/// for every message it returns, and must never ask for more than
/// `max_message_len` bytes to be buffered.
pub fn decode_all(protocol: Protocol, data: &[u8]) {
    let mut decoder = Decoder::new(protocol, 256);
    let mut rest = data;
    loop {
        match decoder.decode(rest) {
            Ok(Some((_, used))) => {
                assert!(used > 0 && used <= rest.len());
                rest = &rest[used..];
            }
            Ok(None) => {
                assert!(rest.len() < decoder.max_message_len());
                return;
            }
            Err(_) => return,
        }
    }
}
