//! What the timer thread is told over its channel.

use std::time::Instant;

use crate::server::conn::id::ConnId;

/// What workers and the acceptor tell the timer thread.
#[derive(Debug)]
pub(crate) enum Event {
    /// A connection opened, its activity stamp set to `activity`.
    Register {
        /// The connection.
        id: ConnId,
        /// Its initial stamp.
        activity: u64,
    },
    /// A connection's worker finished.
    Deregister(ConnId),
    /// A connection's credentials expire at `at`.
    Expires {
        /// The connection.
        id: ConnId,
        /// When its credentials expire.
        at: Instant,
    },
    /// The server is shutting down. Whoever sends it unparks the timer
    /// thread ([`stop`](super::stop)).
    Stop,
}
