//! Authentication: who a connection belongs to.
//!
//! A [`Handler`](crate::server::Handler) that [requires authentication](crate::server::Handler::requires_auth)
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
//! ES256 with a public key), in `jwt.rs`, built with the crate's `jwt`
//! feature (on by default).

use std::time::{SystemTime, UNIX_EPOCH};

#[cfg(feature = "jwt")]
mod jwt;
#[cfg(feature = "jwt")]
pub use jwt::{Authenticated, Jwt};

/// Who a connection belongs to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// The subject: a user id.
    pub sub: String,
    /// When the credentials expire; the connection is closed then (CLOSE
    /// 4002) unless refreshed. `None`: never.
    pub expires: Option<SystemTime>,
    /// Topic patterns the subject may subscribe and publish to in the
    /// pub/sub service (`*` at the end matches any rest); `None`: any.
    pub topics: Option<Vec<String>>,
}

impl Identity {
    /// Whether the subject may use `topic` (its own `user:<sub>` always).
    pub fn may_use(&self, topic: &str) -> bool {
        if topic.starts_with("user:") {
            return topic == crate::server::pubsub::personal_topic(&self.sub);
        }
        match &self.topics {
            None => true,
            Some(patterns) => patterns.iter().any(|p| match p.strip_suffix('*') {
                Some(prefix) => topic.starts_with(prefix),
                None => p == topic,
            }),
        }
    }

    /// The expiry in whole seconds since the Unix epoch, for `OK AUTH`.
    pub fn expires_unix(&self) -> Option<u64> {
        self.expires
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map(|d| d.as_secs())
    }
}
