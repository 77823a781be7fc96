//! Admission: what a connection passes before its handler sees it: the
//! PROXY header, the per-address limits, the TLS handshake, the WebSocket
//! upgrade and AUTH.

#[cfg(feature = "jwt")]
pub(crate) mod jwt;
pub(crate) mod limits;
pub(crate) mod proxy;
#[cfg(feature = "tls")]
pub(crate) mod tls;
#[cfg(not(feature = "tls"))]
#[path = "tls_off.rs"]
pub(crate) mod tls;
pub mod upgrade;
