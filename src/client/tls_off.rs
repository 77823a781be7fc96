//! The client of a crate built without its `tls` feature: no [`TlsClient`]
//! can be made ([`TlsClient::new`] says how to get one), so every
//! connection is plain TCP. The call sites stay the same as with the
//! feature.

use std::io::{self, Read};
use std::net::TcpStream;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

/// A connection's TLS session: none without the feature.
pub(crate) enum Session {}

/// The client's TLS settings: none can exist without the crate's `tls`
/// feature.
#[derive(Clone, Debug, PartialEq)]
pub enum TlsClient {}

impl TlsClient {
    /// Refuses: the crate was built without its `tls` feature.
    ///
    /// # Errors
    ///
    /// Always, saying how to build with TLS.
    pub fn new(_ca: Option<&Path>, _system_roots: bool) -> io::Result<TlsClient> {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "built without the wheel-server crate's `tls` feature (cargo build --features tls)",
        ))
    }

    pub(crate) fn handshake(
        &self,
        _: &mut TcpStream,
        _: &str,
        _: Duration,
    ) -> io::Result<Arc<Mutex<Session>>> {
        match *self {}
    }
}

pub(crate) fn write(session: &Mutex<Session>, _: &mut TcpStream, _: &[u8]) -> io::Result<()> {
    match *session.lock() {}
}

/// The reader thread's view of a TLS connection: none without the feature.
pub(crate) enum TlsRead {}

impl TlsRead {
    pub(crate) fn new(_: TcpStream, session: Arc<Mutex<Session>>) -> TlsRead {
        match *session.lock() {}
    }
}

impl Read for TlsRead {
    fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
        match *self {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tls_client_cannot_be_made_and_says_why() {
        let e = TlsClient::new(None, true).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::Unsupported);
        assert!(e.to_string().contains("--features tls"), "{e}");
    }
}
