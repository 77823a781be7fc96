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
//! let server = Server::start(Config {
//!     listen: "127.0.0.1:5005".parse().unwrap(),
//!     idle_timeout: Some(Duration::from_secs(60)),
//!     ..Config::default()
//! })?;
//! println!("serving on {}", server.local_addr());
//! // Until SIGINT or SIGTERM, then a graceful drain (see the README).
//! server.run_until_signal()?;
//! # Ok::<(), std::io::Error>(())
//! ```
//!
//! # Modules
//!
//! * [`server`]: the server, its [`Config`], close reasons, and the
//!   [`Handler`] API.
//! * [`protocol`]: the wire format (frames and lines) and close codes.
//! * [`wheel`]: the hashed timing wheel behind the idle timeout.
//! * [`time`]: mapping `Instant`s to wheel ticks.
//! * [`activity`] and [`traffic`]: the per-message liveness stamp and
//!   counters, public so that the benchmarks measure the server's own code.
//! * [`client`]: a heartbeat client that detects a dead server and
//!   reconnects.
//!
//! Put your own logic behind the same machinery with a [`Handler`].

#![deny(missing_docs)]
// No unsafe code but two audited functions, allowed where they are:
// `sys::trim_stack` (gives a worker's unused stack pages back to the
// kernel) and `sys::recv_nonblocking` (a receive with MSG_DONTWAIT into an
// initialised buffer).
#![deny(unsafe_code)]

pub mod activity;
mod backoff;
mod cidr;
pub mod client;
mod crypto;
pub mod protocol;
pub mod server;
mod sys;
pub mod time;
pub mod traffic;
mod units;
pub mod wheel;

pub use crypto::tls_provider;
pub use units::{parse_bytes, parse_duration};

/// The README's Rust examples, compiled as doc tests (`cargo test --doc`)
/// so that they cannot go stale.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
pub use server::{CloseReason, Config, ConnId, Echo, Handler, Server, Session};
pub use sys::Keepalive;
