//! A long-connection TCP server that finds dead peers fast: thread per
//! connection, application heartbeats, an idle timeout enforced by a hashed
//! timing wheel, and tuned TCP keepalive and `TCP_USER_TIMEOUT` underneath.
//!
//! # Quick start
//!
//! ```no_run
//! use std::time::Duration;
//! use wheel_server::server::{Config, Server};
//!
//! let mut config = Config::default();
//! config.listen = "127.0.0.1:5005".parse().unwrap();
//! config.idle_timeout = Some(Duration::from_secs(60));
//! let server = Server::start(config)?;
//! println!("serving on {}", server.local_addr());
//! // Until SIGINT or SIGTERM, then a graceful drain (see the README).
//! server.run_until_signal()?;
//! # Ok::<(), std::io::Error>(())
//! ```
//!
//! # Modules
//!
//! * [`server`]: the server, its [`Config`], close reasons, the
//!   [`Handler`] and [`Session`] API, and the
//!   [`ServerHandle`](server::ServerHandle) to reach connections and topics
//!   from any thread.
//! * [`protocol`]: the wire format (frames, lines, WebSocket), close codes
//!   and topic names.
//! * [`wheel`]: the hashed timing wheel behind the idle timeout.
//! * [`client`]: a heartbeat client that detects a dead server and
//!   reconnects.
//!
//! Put your own logic behind the same machinery with a [`Handler`]: the
//! built-in pub/sub service ([`server::pubsub`]) is one, written with
//! nothing but this API.
//!
//! The modules `activity`, `time` and `traffic` and `server::upgrade` are
//! public only so that the benchmarks and fuzz targets measure the
//! server's own code; they are hidden from these docs and may change in
//! any release.

#![deny(missing_docs)]
// No unsafe code but two audited functions, allowed where they are:
// `sys::trim_stack` (gives a worker's unused stack pages back to the
// kernel) and `sys::recv_nonblocking` (a receive with MSG_DONTWAIT into an
// initialised buffer).
#![deny(unsafe_code)]

#[doc(hidden)]
pub mod activity;
mod backoff;
mod cidr;
pub mod client;
#[cfg(feature = "tls")]
mod crypto;
pub mod protocol;
pub mod server;
mod sys;
#[doc(hidden)]
pub mod time;
#[doc(hidden)]
pub mod traffic;
mod units;
pub mod wheel;

#[cfg(feature = "tls")]
pub use crypto::tls_provider;
pub use units::{parse_bytes, parse_duration};

/// The README's Rust examples, compiled as doc tests (`cargo test --doc`)
/// so that they cannot go stale.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
pub use server::{CloseReason, Config, ConnId, Echo, Handler, Server, Session};
pub use sys::Keepalive;
