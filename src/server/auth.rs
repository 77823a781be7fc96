//! Authentication: who a connection belongs to.
//!
//! A [`Handler`] that [requires authentication](crate::server::Handler::requires_auth)
//! gets every connection's first message, which must be `AUTH
//! <credentials>`, before anything else is served; its
//! [`authenticate`](crate::server::Handler::authenticate) admits the connection with an
//! [`Identity`] or refuses it (CLOSE 4001 `unauthorized`). An identity with
//! an expiry is a timer in the wheel: at that instant the connection gets
//! CLOSE 4002 `token expired`, unless the client sent a fresh `AUTH` for the
//! same subject before then.
//!
//! [`Jwt`] is one implementation: [`Authenticated`] wraps any handler with
//! JWT verification (the `jsonwebtoken` crate: HS256 with a secret, RS256 or
//! ES256 with a public key), built with the crate's `jwt`
//! feature (on by default).

#[cfg(feature = "jwt")]
use std::net::SocketAddr;

#[cfg(feature = "jwt")]
pub use crate::server::admission::jwt::Jwt;
pub use crate::server::conn::identity::Identity;
#[cfg(feature = "jwt")]
use crate::server::conn::{close::CloseReason, id::ConnId};
#[cfg(feature = "jwt")]
use crate::server::serve::handler::{Handler, Session};

#[cfg(feature = "jwt")]
/// A handler whose connections must authenticate with a JWT first.
#[derive(Debug)]
pub struct Authenticated<H> {
    inner: H,
    jwt: Jwt,
}

#[cfg(feature = "jwt")]
impl<H> Authenticated<H> {
    /// Wraps `inner`: its connections must send `AUTH <jwt>` first.
    pub fn new(inner: H, jwt: Jwt) -> Authenticated<H> {
        Authenticated { inner, jwt }
    }
}

#[cfg(feature = "jwt")]
impl<H: Handler> Handler for Authenticated<H> {
    fn on_data(&self, session: &mut Session<'_>, payload: &[u8]) {
        self.inner.on_data(session, payload);
    }

    fn on_open(&self, id: ConnId, peer: SocketAddr) {
        self.inner.on_open(id, peer);
    }

    fn on_close(&self, id: ConnId, peer: SocketAddr, reason: &CloseReason) {
        self.inner.on_close(id, peer, reason);
    }

    fn requires_auth(&self) -> bool {
        true
    }

    fn authenticate(&self, credentials: &[u8]) -> Result<Identity, String> {
        self.jwt.verify(credentials)
    }

    fn on_authenticated(&self, session: &mut Session<'_>, identity: &Identity) {
        self.inner.on_authenticated(session, identity);
    }
}
