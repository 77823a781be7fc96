//! The outbound path of a crate built without its `tls` feature: no
//! [`Session`] value can exist (the type has no values), so every
//! connection's session is `None` and bytes go to the socket as they are.
//! The call sites stay the same as with the feature.

use std::io;
use std::net::TcpStream;
use std::time::Instant;

use super::{Flushes, Outbound, Pumped};
use crate::server::conn::id::ConnId;
use crate::sys;

/// A TLS session: none without the feature.
pub(crate) enum Session {}

impl Session {
    pub(crate) fn wants_write(&self) -> bool {
        match *self {}
    }

    pub(crate) fn is_handshaking(&self) -> bool {
        match *self {}
    }

    pub(crate) fn send_close_notify(&mut self) {
        match *self {}
    }
}

/// Why a TLS session failed: never, without the feature.
#[derive(Debug)]
pub(crate) enum TlsError {}

impl std::fmt::Display for TlsError {
    fn fmt(&self, _: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {}
    }
}

impl std::error::Error for TlsError {}

/// Where handshakes would do their work.
#[derive(Default)]
pub(crate) struct HandshakePool;

impl Outbound {
    pub(crate) fn tls_handshaking(&self) -> bool {
        false
    }

    pub(crate) fn tls_buffered(&self) -> bool {
        false
    }

    pub(crate) fn tls_peer_subject(&self) -> Option<String> {
        None
    }

    pub(crate) fn tls_resumed(&self) -> bool {
        false
    }

    pub(crate) fn tls_feed(&self, _: &HandshakePool, _: &[u8]) -> Result<(), TlsError> {
        Ok(())
    }

    pub(crate) fn tls_pump(
        &self,
        _: ConnId,
        _: &Flushes,
        _: &HandshakePool,
        _: &mut [u8],
    ) -> Result<Pumped, TlsError> {
        Ok(Pumped::Closed)
    }
}

/// Sends a prefix of `bytes` without blocking.
pub(super) fn send_now(
    stream: &TcpStream,
    tls: Option<&mut Session>,
    _: &mut Instant,
    bytes: &[u8],
) -> io::Result<usize> {
    match tls {
        None => sys::send_nonblocking(stream, bytes),
        Some(tls) => match *tls {},
    }
}

pub(super) fn send_records(_: &TcpStream, tls: &mut Session, _: &mut Instant) -> io::Result<()> {
    match *tls {}
}

pub(super) fn encrypt(tls: &mut Session, _: &[u8], _: &[u8]) -> io::Result<Vec<u8>> {
    match *tls {}
}
