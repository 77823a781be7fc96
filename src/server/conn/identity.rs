//! Who a connection belongs to, once AUTH admitted it.

use std::time::{SystemTime, UNIX_EPOCH};

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
            return topic == crate::protocol::topic::personal_topic(&self.sub);
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
