//! Topics across instances when the crate is built without its `redis`
//! feature: no [`Redis`] value can exist (the type has no values), so every
//! `Option<Redis>` is `None` and the server keeps its topics to itself. The
//! call sites stay the same as with the feature; `--redis` is refused at
//! start with a line that says how to get it.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

pub(crate) use crate::server::topics::Unavailable;
use crate::server::topics::{Retention, Sink};

/// A message read from a topic's stream.
pub(crate) type Entry = (u64, Arc<[u8]>);

/// What refuses `--redis` in a build without the feature.
const NOT_BUILT: &str =
    "this wheel-server was built without its `redis` feature (cargo build --features redis)";

/// Where Redis is: nowhere.
pub(crate) enum Target {}

/// The link to Redis: none exists.
pub(crate) enum Redis {}

/// No target: `--redis` (or `--redis-sentinel`) is refused in this build.
pub(crate) fn target(config: &crate::server::config::Config) -> Result<Option<Target>, String> {
    if config.redis.is_some() || !config.redis_sentinels.is_empty() {
        return Err(NOT_BUILT.into());
    }
    Ok(None)
}

/// Never called: the server spawns the follower only for a `Redis`.
pub(crate) fn spawn<T>(
    _owner: Arc<T>,
    _sink: fn(&T) -> Sink<'_>,
) -> std::io::Result<JoinHandle<()>> {
    Err(std::io::Error::other(NOT_BUILT))
}

impl Redis {
    pub(crate) fn new(
        target: Target,
        _timeout: Duration,
        _retention: Retention,
        _heartbeat: Duration,
    ) -> Redis {
        match target {}
    }

    pub(crate) fn instance(&self) -> &str {
        match *self {}
    }

    pub(crate) fn joined(
        &self,
        _topic: &str,
        _conn: crate::server::conn::id::ConnId,
        _user: Option<Arc<str>>,
        _since_ms: u64,
    ) {
        match *self {}
    }

    pub(crate) fn left(&self, _topic: &str, _conn: crate::server::conn::id::ConnId, _reason: &str) {
        match *self {}
    }

    pub(crate) fn members(
        &self,
        _topic: &str,
        _after: Option<&str>,
        _limit: usize,
    ) -> Result<crate::server::topics::presence::Members, Unavailable> {
        match *self {}
    }

    pub(crate) fn is_up(&self) -> bool {
        match *self {}
    }

    pub(crate) fn stop(&self) {
        match *self {}
    }

    pub(crate) fn follow(&self, _topic: &str) {
        match *self {}
    }

    pub(crate) fn await_following(&self, _topic: &str) -> bool {
        match *self {}
    }

    pub(crate) fn unfollow(&self, _topic: &str) {
        match *self {}
    }

    pub(crate) fn publish(
        &self,
        _topic: &str,
        _id: Option<&str>,
        _payload: &[u8],
    ) -> Result<u64, Unavailable> {
        match *self {}
    }

    pub(crate) fn numbering(&self, _topic: &str) -> Result<(u64, Option<String>), Unavailable> {
        match *self {}
    }

    pub(crate) fn newest(
        &self,
        _topic: &str,
        _after: u64,
        _budget: usize,
    ) -> Result<Vec<Entry>, Unavailable> {
        match *self {}
    }
}
