//! Topics: subscribers, per-topic sequence numbers, and retained history.
//!
//! Each topic has its own lock. A publish takes it, numbers the message,
//! retains it, and hands it to every subscriber's outbound path, each a
//! non-blocking push: so messages of one topic reach every subscriber in
//! publish order, a subscriber whose outbox is full is closed as a slow
//! consumer without delaying the rest, and the publishing thread never
//! waits on a peer. A subscription with `since` replays the retained
//! messages under the same lock, so that the replay and the live messages
//! meet with no gap and no duplicate.
//!
//! A topic with no subscribers and no retained messages is forgotten, so it
//! costs nothing.
//!
//! # Bounds
//!
//! Everything a client can make topics hold is bounded ([`Bounds`],
//! [`Retention`]): the number of topics (a publish or subscription that
//! would create one more is refused), the history of one topic (by count,
//! age and bytes) and of all of them together (by bytes: past it the
//! oldest retained message of any topic is dropped first, so resumes then
//! get `gap`), the size of a message (one whose `MSG` would pass the
//! largest frame is refused at publish, so it can never be retained or
//! make a subscriber look slow), and the size of a replay (the newest
//! retained messages that fit half the outbox; older ones are reported as
//! a gap). A retained message is counted as its payload plus
//! [`RETAINED_OVERHEAD`](crate::server::config::RETAINED_OVERHEAD).
//!
//! With Redis (`--redis`, `redis/`), numbering and history live there:
//! a publish goes to Redis, and the follower thread hands each message
//! back through [`Topics::relay`], in sequence order, to the local
//! subscribers; a topic's `seq` is then the last number delivered here, and
//! a subscription's replay is read from the Redis stream, in pages and
//! within the replay budget, *without* the topic's lock; relayed messages
//! are also kept in the local history (under the same bounds), so under the
//! lock the replay is completed from memory up to the last number delivered
//! here, and meets the relayed messages with no gap and no duplicate just
//! as without Redis.

pub(crate) mod presence;
#[cfg(feature = "redis")]
pub(crate) mod redis;
#[cfg(not(feature = "redis"))]
#[path = "redis_off.rs"]
pub(crate) mod redis;
mod subscribe;
mod topic;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use std::time::{Duration, Instant};
use tracing::warn;

use parking_lot::{Mutex, RwLock};

use crate::server::config::Config;
use crate::server::conn::Conn;
use crate::server::conn::id::ConnId;
use crate::server::conn::outbound::Flushes;
use crate::server::metrics::Metrics;
use crate::server::topics::redis::Redis;
use presence::{Change, Members, PresenceCounters};
use topic::{Memory, OnceIds, Topic, fan_out};

/// What the Redis follower delivers into: the topics, the timer's flush list,
/// and the delivery counters. The server hands it a way to reach them
/// from what it shares, so that the follower needs nothing of the layers
/// above.
#[cfg_attr(not(feature = "redis"), allow(dead_code))]
pub(crate) struct Sink<'a> {
    pub(crate) topics: &'a Topics,
    pub(crate) flushes: &'a Flushes,
    pub(crate) metrics: &'a Metrics,
}

/// History settings.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Retention {
    /// Messages kept per topic (0: none).
    pub(crate) count: usize,
    /// How long a message is kept.
    pub(crate) ttl: Duration,
    /// Bytes kept per topic (each message counted with
    /// [`RETAINED_OVERHEAD`](crate::server::config::RETAINED_OVERHEAD)): past it the topic's oldest go first.
    pub(crate) bytes: usize,
    /// Bytes kept over all topics: past it the oldest message of any topic
    /// goes first.
    pub(crate) memory: usize,
}

/// What a client can make topics hold, beside their history.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Bounds {
    /// Topics at most; a publish or subscription that would create one
    /// more is refused.
    pub(crate) max_topics: usize,
    /// The largest message (`--max-frame`): a publish whose `MSG` would be
    /// larger is refused.
    pub(crate) max_frame: usize,
    /// Encoded bytes one replay may send at most (the newest that fit; at
    /// least one message).
    pub(crate) replay_budget: usize,
    /// Presence events per second per topic (0: no limit).
    pub(crate) presence_rate: u32,
    /// Members a presence query lists at most.
    pub(crate) presence_page: usize,
}

impl Retention {
    /// The history settings of `config`.
    pub(crate) fn of(config: &Config) -> Retention {
        Retention {
            count: config.history,
            ttl: config.history_ttl,
            bytes: config.history_bytes,
            memory: config.history_memory,
        }
    }
}

impl Bounds {
    /// What topics may hold beside their history, by `config`.
    pub(crate) fn of(config: &Config) -> Bounds {
        Bounds {
            max_topics: config.max_topics,
            max_frame: config.max_frame,
            // Half the outbox, so live messages still fit behind a replay.
            replay_budget: config.max_outbox / 2,
            presence_rate: config.presence_rate,
            presence_page: config.presence_page,
        }
    }
}

/// The longest sequence number, in digits (`u64::MAX`).
const MAX_SEQ_DIGITS: usize = 20;

/// The largest payload a `PUB` to `topic` may carry when the largest frame
/// is `max_frame`: the `MSG <topic> <seq> ` header (with a sequence number
/// of the most digits) plus the payload must fit one frame, or subscribers
/// could not read it.
pub fn max_payload(max_frame: usize, topic: &str) -> usize {
    max_frame.saturating_sub("MSG ".len() + topic.len() + 1 + MAX_SEQ_DIGITS + 1)
}

/// What a publish did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Published {
    /// The message's sequence number in its topic.
    pub seq: u64,
    /// Local subscribers it was written or queued to (with Redis, where
    /// delivery follows the publish, 0).
    pub delivered: usize,
    /// Subscribers it did not reach: closing, closed just now as slow
    /// consumers, or speaking a protocol that cannot carry it.
    pub dropped: usize,
}

/// What a subscription found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resumed {
    /// A plain subscription: live messages follow.
    Live {
        /// The topic's latest sequence number (0 if none).
        last: u64,
    },
    /// Every message after `since` was retained and has been replayed.
    Recovered {
        /// The topic's latest sequence number.
        last: u64,
    },
    /// History no longer held everything after `since`: what it held was
    /// replayed, starting after a hole at `first_missing`.
    Gap {
        /// The topic's latest sequence number.
        last: u64,
        /// The first sequence number that could not be replayed.
        first_missing: u64,
    },
}

/// A topic's summary, for `GET /topics`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicInfo {
    /// Its name.
    pub topic: String,
    /// Local subscribers.
    pub subscribers: usize,
    /// Its latest sequence number.
    pub last_seq: u64,
}

/// Why Redis could not be used (`--redis`): the reason, for `ERR` and logs,
/// and whether the command may have run all the same.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unavailable {
    /// What went wrong.
    pub why: String,
    /// The command reached Redis (or may have) before the failure: it timed
    /// out waiting for the answer, or the connection broke after sending.
    /// A publish may then have been numbered and delivered.
    pub maybe_applied: bool,
}

#[cfg_attr(not(feature = "redis"), allow(dead_code))]
impl Unavailable {
    /// A failure before the command reached Redis: it did not run.
    pub(crate) fn refused(why: impl Into<String>) -> Unavailable {
        Unavailable {
            why: why.into(),
            maybe_applied: false,
        }
    }

    /// A failure after the command may have reached Redis.
    pub(crate) fn unknown(why: impl Into<String>) -> Unavailable {
        Unavailable {
            why: why.into(),
            maybe_applied: true,
        }
    }
}

impl std::fmt::Display for Unavailable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "redis unavailable: {}", self.why)
    }
}

impl std::error::Error for Unavailable {}

/// Why a topic operation failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum TopicError {
    /// Not a valid topic name.
    InvalidTopic,
    /// The connection is at its subscription limit.
    TooManySubscriptions,
    /// The topic does not exist and the server is at its topic limit.
    TooManyTopics,
    /// The message's `MSG` would pass the largest frame: refused, never
    /// retained. The largest payload for this topic.
    TooLarge(usize),
    /// The connection is closing.
    Closed,
    /// The replay did not fit the connection's outbox: it is being closed as
    /// a slow consumer.
    OutboxFull,
    /// Redis could not be reached to number the subscription or read its
    /// replay, or to take a publish.
    Unavailable(Unavailable),
    /// A publish whose command reached Redis (or may have) before it timed
    /// out or the connection broke: it may have been published.
    Unknown(String),
}

impl From<Unavailable> for TopicError {
    fn from(e: Unavailable) -> TopicError {
        TopicError::Unavailable(e)
    }
}

/// What became of a message the Redis follower relayed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(not(feature = "redis"), allow(dead_code))]
pub(crate) enum Relayed {
    /// Written or queued to `delivered` local subscribers; `dropped` did
    /// not take it.
    Delivered { delivered: usize, dropped: usize },
    /// Already delivered, or nobody here follows the topic.
    Stale,
    /// Not the next number: the ones before it were missed.
    Ahead,
}

/// The publishing connection, and how to build its acknowledgement from
/// the sequence number.
pub(crate) type Ack<'a> = (&'a Conn, &'a dyn Fn(u64) -> Vec<u8>);

/// All topics.
pub(crate) struct Topics {
    /// By name, in order (`GET /topics` pages through it).
    by_name: RwLock<BTreeMap<Arc<str>, Arc<Mutex<Topic>>>>,
    retention: Retention,
    bounds: Bounds,
    /// All topics' history.
    memory: Memory,
    /// Without Redis: the ids of recent `PUBONCE`s and their numbers.
    once: Mutex<OnceIds>,
    /// Numbering, history and delivery through Redis.
    redis: Option<Redis>,
    /// Presence events sent and dropped.
    presence: PresenceCounters,
}

impl Topics {
    pub(crate) fn new(retention: Retention, bounds: Bounds, redis: Option<Redis>) -> Topics {
        Topics {
            by_name: RwLock::new(BTreeMap::new()),
            retention,
            bounds,
            memory: Memory::default(),
            once: Mutex::new(OnceIds::default()),
            redis,
            presence: PresenceCounters::default(),
        }
    }

    /// The link to Redis, with `--redis`.
    pub(crate) fn redis(&self) -> Option<&Redis> {
        self.redis.as_ref()
    }

    /// The topic, if it exists.
    fn get(&self, name: &str) -> Option<Arc<Mutex<Topic>>> {
        self.by_name.read().get(name).cloned()
    }

    /// The topic, created if need be (and if the topic limit allows): with
    /// its name, shared with the age index.
    fn topic(&self, name: &str) -> Result<(Arc<str>, Arc<Mutex<Topic>>), TopicError> {
        if let Some((name, topic)) = self.by_name.read().get_key_value(name) {
            return Ok((Arc::clone(name), Arc::clone(topic)));
        }
        let mut map = self.by_name.write();
        if let Some((name, topic)) = map.get_key_value(name) {
            return Ok((Arc::clone(name), Arc::clone(topic)));
        }
        if map.len() >= self.bounds.max_topics {
            return Err(TopicError::TooManyTopics);
        }
        let name: Arc<str> = name.into();
        let topic = Arc::new(Mutex::new(Topic::default()));
        map.insert(Arc::clone(&name), Arc::clone(&topic));
        Ok((name, topic))
    }

    /// Forgets `name` if it is idle (under the map's write lock, so that
    /// nobody is between looking it up and using it... except holders of
    /// its `Arc`, who then work on a topic nobody can find: harmless, as
    /// its state is idle).
    fn forget_if_idle(&self, name: &str) {
        let mut map = self.by_name.write();
        if let Some(topic) = map.get(name)
            && Arc::strong_count(topic) == 1
            && topic.lock().is_idle()
        {
            map.remove(name);
            if let Some(redis) = &self.redis {
                redis.unfollow(name);
            }
        }
    }

    /// Drops the oldest retained messages of any topic while all topics'
    /// history is past its bound. Called with no topic locked.
    fn enforce_memory(&self) {
        while self.memory.bytes.load(Ordering::Relaxed) > self.retention.memory {
            let Some((age, name)) = self.memory.by_age.lock().pop_first() else {
                return;
            };
            let Some(topic) = self.get(&name) else {
                continue;
            };
            let idle = {
                let mut t = topic.lock();
                // Its messages are in age order: drop up to this one (any
                // older ones were taken off the index by another thread
                // that has not locked the topic yet).
                while t.history.front().is_some_and(|m| m.age <= age) {
                    let gone = t.history.pop_front().expect("checked non-empty");
                    t.history_bytes -= gone.cost();
                    self.memory.forget(&gone);
                    self.memory.evicted.inc();
                }
                t.is_idle()
            };
            drop(topic);
            if idle {
                self.forget_if_idle(&name);
            }
        }
    }

    /// Publishes `payload` to `name`; returns its sequence number and how
    /// many subscribers it reached. With `ack`, its message (built from the
    /// sequence number) goes to the publishing connection first, so that a
    /// subscribed publisher reads its `OK PUB` before its own `MSG`.
    /// A subscriber that cannot take the message (closing, or its outbox
    /// full: then closed as a slow consumer) is dropped from the topic at
    /// once.
    ///
    /// With Redis the message is numbered and stored there, and reaches
    /// subscribers (here too) through the follower: the acknowledgement
    /// then goes out as soon as Redis has the message, and a subscribed
    /// publisher may read its own `MSG` before it.
    ///
    /// # Errors
    ///
    /// A payload too large for a subscriber to read ([`max_payload`]), a
    /// new topic past the topic limit, or with Redis, Redis that could not
    /// take the message.
    pub(crate) fn publish(
        &self,
        flushes: &Flushes,
        name: &str,
        id: Option<&str>,
        payload: &[u8],
        ack: Option<Ack<'_>>,
    ) -> Result<Published, TopicError> {
        let max = max_payload(self.bounds.max_frame, name);
        if payload.len() > max {
            return Err(TopicError::TooLarge(max));
        }
        if let Some(redis) = &self.redis {
            // Redis holds the topic; here it exists only while followed.
            if self.get(name).is_none() && self.by_name.read().len() >= self.bounds.max_topics {
                return Err(TopicError::TooManyTopics);
            }
            let seq = redis.publish(name, id, payload).map_err(|e| {
                if e.maybe_applied {
                    TopicError::Unknown(e.why)
                } else {
                    TopicError::Unavailable(e)
                }
            })?;
            if let Some((publisher, ack)) = ack {
                let _ = publisher.out.push(publisher.id, flushes, &ack(seq));
            }
            return Ok(Published {
                seq,
                delivered: 0,
                dropped: 0,
            });
        }
        let (name, topic) = self.topic(name)?;
        let numbered = self.deliver(topic, flushes, &name, payload, |t| {
            // A retry of a publish already numbered: its number again,
            // nothing published.
            let seen = id.and_then(|id| self.once.lock().seen(&name, id));
            let seq = match seen {
                Some(seq) => seq,
                None => {
                    t.seq += 1;
                    t.seq
                }
            };
            if let Some((publisher, ack)) = ack {
                let _ = publisher.out.push(publisher.id, flushes, &ack(seq));
            }
            if seen.is_some() {
                return Err(seq);
            }
            if let Some(id) = id {
                self.once
                    .lock()
                    .remember(&name, id, seq, self.retention.ttl);
            }
            t.retain(&name, self.retention, &self.memory, seq, payload);
            Ok(seq)
        });
        self.enforce_memory();
        match numbered {
            Ok((seq, delivered, dropped)) => Ok(Published {
                seq,
                delivered,
                dropped,
            }),
            Err(seq) => Ok(Published {
                seq,
                delivered: 0,
                dropped: 0,
            }),
        }
    }

    /// Under `topic`'s lock, lets `number` give the message its sequence
    /// number (or refuse it), writes or queues it to every subscriber, and
    /// forgets the topic if that left it idle. The number, and how many
    /// subscribers took it and did not.
    fn deliver<E>(
        &self,
        topic: Arc<Mutex<Topic>>,
        flushes: &Flushes,
        name: &str,
        payload: &[u8],
        number: impl FnOnce(&mut Topic) -> Result<u64, E>,
    ) -> Result<(u64, usize, usize), E> {
        let mut t = topic.lock();
        let seq = number(&mut t)?;
        let (delivered, dropped) = fan_out(&mut t, flushes, name, seq, payload);
        let idle = t.is_idle();
        drop(t);
        drop(topic);
        if idle {
            self.forget_if_idle(name);
        }
        Ok((seq, delivered, dropped))
    }

    /// Delivers message `seq` of `name`, read from Redis, to the local
    /// subscribers if it is the next one (or, with `past_hole`, any later
    /// one: the stream no longer holds those between), and keeps it in the
    /// local history for resumes. An announcement's `epoch` is checked
    /// first, under the same lock: a new one starts the numbering over.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn relay(
        &self,
        flushes: &Flushes,
        name: &str,
        seq: u64,
        epoch: Option<&str>,
        payload: &[u8],
        past_hole: bool,
    ) -> Relayed {
        let Some((name, topic)) = self
            .by_name
            .read()
            .get_key_value(name)
            .map(|(n, t)| (Arc::clone(n), Arc::clone(t)))
        else {
            return Relayed::Stale;
        };
        let relayed = self.deliver(topic, flushes, &name, payload, |t| {
            if epoch.is_some() && t.renumber(&self.memory, flushes, &name, None, epoch) {
                warn!(
                    topic = &*name,
                    seq, "a new epoch of this topic's numbering: subscribers told GAP 1"
                );
            }
            if !t.followed || seq <= t.seq {
                return Err(Relayed::Stale);
            }
            if seq > t.seq + 1 && !past_hole {
                return Err(Relayed::Ahead);
            }
            if seq > t.seq + 1 {
                // The stream no longer holds those between: said, not hidden.
                t.tell_gap(flushes, &name, t.seq + 1);
            }
            t.seq = seq;
            t.retain(&name, self.retention, &self.memory, seq, payload);
            Ok(seq)
        });
        self.enforce_memory();
        match relayed {
            Ok((_, delivered, dropped)) => Relayed::Delivered { delivered, dropped },
            Err(refused) => refused,
        }
    }

    /// With Redis, after a reconnect: whether Redis numbers `name` anew
    /// (its `last` number and epoch, `None` if it holds none, tell; see
    /// `Topic::renumber`).
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn renumbered(
        &self,
        flushes: &Flushes,
        name: &str,
        last: u64,
        epoch: Option<&str>,
    ) -> bool {
        self.get(name).is_some_and(|topic| {
            topic
                .lock()
                .renumber(&self.memory, flushes, name, Some(last), epoch)
        })
    }

    /// With Redis: the last sequence number of `name` delivered here, if
    /// the topic is followed.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn delivered(&self, name: &str) -> Option<u64> {
        let topic = self.get(name)?;
        let t = topic.lock();
        t.followed.then_some(t.seq)
    }

    /// Removes a closing connection from every topic it subscribed to;
    /// `reason` (its close reason's label) is what watchers are told.
    pub(crate) fn remove_connection(&self, flushes: &Flushes, conn: &Conn, reason: &str) {
        let names = std::mem::take(&mut *conn.subscriptions.lock());
        for name in names {
            self.leave(flushes, conn, &name, reason);
        }
    }

    /// Makes `conn`, a subscriber of `name`, a watcher of its joins and
    /// leaves (or not); false if it is not subscribed.
    pub(crate) fn watch_presence(&self, conn: &Arc<Conn>, name: &str, on: bool) -> bool {
        if let (true, Some(redis)) = (on, &self.redis) {
            redis.await_following(name);
        }
        self.get(name)
            .is_some_and(|topic| topic.lock().presence.watch(conn, on))
    }

    /// Up to `limit` members of `name` after the member `after` (an id as
    /// [`member_id`](presence::member_id) writes it): this instance's, or
    /// with Redis every instance's.
    pub(crate) fn members(
        &self,
        name: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Members, Unavailable> {
        let limit = limit.min(self.bounds.presence_page);
        let page = match &self.redis {
            Some(redis) => redis.members(name, after, limit)?,
            None => {
                let after = after
                    .and_then(presence::parse_member_id)
                    .map(|(conn, _)| conn);
                self.get(name)
                    .map(|topic| topic.lock().presence.page(after, limit))
                    .unwrap_or_default()
            }
        };
        self.presence.queries.inc();
        self.presence.listed.inc_by(page.members.len() as u64);
        Ok(page)
    }

    /// Tells the watchers of `name` (but `subject`, the member here they
    /// are about, if any) presence `events` from Redis: each `JOIN` or
    /// `LEAVE` with the `ONLINE` or `OFFLINE` that follows it, within the
    /// topic's budget.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn relay_presence<'e>(
        &self,
        flushes: &Flushes,
        name: &str,
        subject: Option<ConnId>,
        events: impl IntoIterator<Item = &'e str>,
    ) {
        let Some(topic) = self.get(name) else {
            return;
        };
        let mut t = topic.lock();
        let change = self.change(flushes, name);
        let mut group: Vec<String> = Vec::new();
        for event in events {
            let follows = event.starts_with("ONLINE ") || event.starts_with("OFFLINE ");
            if !follows && !group.is_empty() {
                t.presence
                    .relay(&change, subject, std::mem::take(&mut group));
            }
            group.push(event.to_owned());
        }
        if !group.is_empty() {
            t.presence.relay(&change, subject, group);
        }
    }

    /// Every topic's members here, each with its user and when it joined:
    /// what Redis is told when its view is brought up to date.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn local_members(&self) -> Vec<(String, Vec<presence::Snapshot>)> {
        let topics: Vec<_> = self
            .by_name
            .read()
            .iter()
            .map(|(name, topic)| (name.to_string(), Arc::clone(topic)))
            .collect();
        topics
            .into_iter()
            .map(|(name, topic)| (name, topic.lock().presence.snapshot()))
            .filter(|(_, members)| !members.is_empty())
            .collect()
    }

    /// Local subscribers of `name`.
    pub(crate) fn subscribers(&self, name: &str) -> usize {
        self.get(name).map_or(0, |t| t.lock().subscribers.len())
    }

    /// Up to `limit` topics named after `after` (from the first without
    /// it), in name order, and how many topics there are.
    pub(crate) fn list(&self, after: Option<&str>, limit: usize) -> (Vec<TopicInfo>, usize) {
        use std::ops::Bound;
        let map = self.by_name.read();
        let from = after.map_or(Bound::Unbounded, Bound::Excluded);
        let page = map
            .range::<str, _>((from, Bound::Unbounded))
            .take(limit)
            .map(|(name, t)| {
                let t = t.lock();
                TopicInfo {
                    topic: name.to_string(),
                    subscribers: t.subscribers.len(),
                    last_seq: t.seq,
                }
            })
            .collect();
        (page, map.len())
    }

    /// Topics, and bytes retained over all of them.
    pub(crate) fn totals(&self) -> (usize, usize) {
        (
            self.by_name.read().len(),
            self.memory.bytes.load(Ordering::Relaxed),
        )
    }

    /// The count of retained messages dropped because all topics' history
    /// was at its bound.
    #[cfg(test)]
    pub(crate) fn evicted(&self) -> &prometheus_client::metrics::counter::Counter {
        &self.memory.evicted
    }

    /// Registers the topics' own metrics.
    pub(crate) fn register(&self, metrics: &mut Metrics) {
        metrics.register(
            "wheel_presence_events",
            "Join, leave and overflow events written or queued to subscribers watching a topic's presence",
            self.presence.sent.clone(),
        );
        metrics.register(
            "wheel_presence_queries",
            "Presence queries answered (WHO, GET /presence): pages of at most --presence-page members",
            self.presence.queries.clone(),
        );
        metrics.register(
            "wheel_presence_members_listed",
            "Members listed by presence queries",
            self.presence.listed.clone(),
        );
        metrics.register(
            "wheel_presence_events_dropped",
            "Join and leave events dropped past --presence-rate (watchers are told to ask WHO again)",
            self.presence.dropped.clone(),
        );
        metrics.register(
            "wheel_pubsub_history_evicted",
            "Retained messages dropped because all topics' history reached --history-memory (the oldest of any topic first)",
            self.memory.evicted.clone(),
        );
    }

    /// Forgets topics whose history expired and that have no subscribers
    /// (the timer thread calls this now and then).
    pub(crate) fn sweep(&self) {
        let now = Instant::now();
        let topics: Vec<(Arc<str>, Arc<Mutex<Topic>>)> = self
            .by_name
            .read()
            .iter()
            .map(|(n, t)| (Arc::clone(n), Arc::clone(t)))
            .collect();
        let idle: Vec<Arc<str>> = topics
            .into_iter()
            .filter_map(|(name, t)| {
                let mut t = t.lock();
                t.expire(self.retention, &self.memory, now);
                t.is_idle().then_some(name)
            })
            .collect();
        for name in idle {
            self.forget_if_idle(&name);
        }
    }
}

#[cfg(test)]
mod tests;
