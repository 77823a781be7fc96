//! The TLS crypto provider both sides use: rustls's *ring* provider.
//!
//! *ring* rather than rustls's default, aws-lc-rs: it builds with a C
//! compiler alone (aws-lc-rs needs cmake, and NASM on Windows), which keeps
//! `cargo build` a one-step affair on a bare machine. The price is no
//! post-quantum key exchange (X25519MLKEM768): classical ECDHE only. That is
//! why rustls 0.23.48 deprecated `ring::default_provider`; the call is made
//! here, once, and the deprecation acknowledged here, so that a newer
//! rustls never turns `clippy -D warnings` red (`scripts/newest-deps.sh`
//! checks the crate against the newest compatible versions). Moving to
//! aws-lc-rs is this one function and the `rustls` feature in Cargo.toml.

use rustls::crypto::CryptoProvider;

/// The crypto provider of every TLS configuration, server and client.
///
/// # Examples
///
/// ```
/// let provider = wheel_server::tls_provider();
/// assert!(!provider.cipher_suites.is_empty());
/// ```
#[allow(deprecated)] // See the module docs: *ring* on purpose.
pub fn tls_provider() -> CryptoProvider {
    rustls::crypto::ring::default_provider()
}
