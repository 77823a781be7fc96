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
//! [`RETAINED_OVERHEAD`].
//!
//! With Redis (`--redis`, `redis.rs`), numbering and history live there:
//! a publish goes to Redis, and the follower thread hands each message
//! back through [`Topics::relay`], in sequence order, to the local
//! subscribers; a topic's `seq` is then the last number delivered here, and
//! a subscription's replay is read from the Redis stream, in pages and
//! within the replay budget, *without* the topic's lock; relayed messages
//! are also kept in the local history (under the same bounds), so under the
//! lock the replay is completed from memory up to the last number delivered
//! here, and meets the relayed messages with no gap and no duplicate just
//! as without Redis.

#[cfg(feature = "redis")]
pub(crate) mod redis;
#[cfg(not(feature = "redis"))]
#[path = "redis_off.rs"]
pub(crate) mod redis;

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use prometheus_client::metrics::counter::Counter;
use std::time::{Duration, Instant};
use tracing::warn;

use parking_lot::{Mutex, RwLock};

use crate::protocol::topic::valid_topic;
use crate::protocol::{EncodeError, Message, Protocol};
use crate::server::config::{Config, RETAINED_OVERHEAD};
use crate::server::conn::Conn;
use crate::server::conn::outbound::{Flushes, PushError};
use crate::server::metrics::Metrics;
use crate::server::topics::redis::{Entry, Redis};

/// History settings.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Retention {
    /// Messages kept per topic (0: none).
    pub(crate) count: usize,
    /// How long a message is kept.
    pub(crate) ttl: Duration,
    /// Bytes kept per topic (each message counted with
    /// [`RETAINED_OVERHEAD`]): past it the topic's oldest go first.
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

/// One retained message.
struct Retained {
    seq: u64,
    at: Instant,
    payload: Arc<[u8]>,
    /// Its place in the age order of all retained messages.
    age: u64,
}

impl Retained {
    /// The bytes it is counted for.
    fn cost(&self) -> usize {
        self.payload.len() + RETAINED_OVERHEAD
    }
}

/// The history of all topics together: its size, and its messages by age,
/// so that the oldest of any topic can be found and dropped first.
///
/// Lock order: a topic's lock, then `by_age` (never the other way round).
#[derive(Default)]
struct Memory {
    /// Bytes retained over all topics (as [`Retained::cost`]).
    bytes: AtomicUsize,
    /// Every retained message's age, with its topic's name.
    by_age: parking_lot::Mutex<BTreeMap<u64, Arc<str>>>,
    /// The next age to give.
    next_age: AtomicU64,
    /// Messages dropped because all topics' history was at its bound.
    evicted: Counter,
}

impl Memory {
    /// Counts `msg` out (it left its topic's history).
    fn forget(&self, msg: &Retained) {
        self.bytes.fetch_sub(msg.cost(), Ordering::Relaxed);
        self.by_age.lock().remove(&msg.age);
    }
}

/// Ids of `PUBONCE` publishes remembered at most: past it the oldest are
/// forgotten first (a retry of one of those would publish again).
const MAX_ONCE_IDS: usize = 65_536;

/// The recent `PUBONCE` ids (without Redis; with it, Redis keeps them):
/// topic and id, the number given, and until when it is remembered.
#[derive(Default)]
struct OnceIds {
    numbers: std::collections::HashMap<(Arc<str>, String), u64>,
    /// Oldest first: when each may be forgotten.
    order: VecDeque<(Instant, Arc<str>, String)>,
}

impl OnceIds {
    /// The number publish `id` to `topic` was given, if it is remembered.
    fn seen(&mut self, topic: &Arc<str>, id: &str) -> Option<u64> {
        let now = Instant::now();
        while let Some((until, _, _)) = self.order.front()
            && (*until <= now || self.order.len() > MAX_ONCE_IDS)
        {
            let (_, t, i) = self.order.pop_front().expect("checked non-empty");
            self.numbers.remove(&(t, i));
        }
        self.numbers
            .get(&(Arc::clone(topic), id.to_owned()))
            .copied()
    }

    fn remember(&mut self, topic: &Arc<str>, id: &str, seq: u64, window: Duration) {
        self.numbers.insert((Arc::clone(topic), id.to_owned()), seq);
        self.order
            .push_back((Instant::now() + window, Arc::clone(topic), id.to_owned()));
    }
}

/// One topic.
#[derive(Default)]
struct Topic {
    /// The last sequence number given (0 before the first publish); with
    /// Redis, the last one delivered here.
    seq: u64,
    /// With Redis: `seq` was read from Redis and the follower follows the
    /// topic.
    followed: bool,
    /// With Redis: the epoch of the numbering `seq` belongs to (`None`
    /// until one is seen): a new one means Redis numbers the topic anew.
    epoch: Option<String>,
    /// Subscribed connections.
    subscribers: Vec<Arc<Conn>>,
    /// The last messages, oldest first.
    history: VecDeque<Retained>,
    /// Bytes `history` is counted for.
    history_bytes: usize,
}

impl Topic {
    /// Drops retained messages past the count, the bytes, or older than the
    /// TTL.
    fn expire(&mut self, retention: Retention, memory: &Memory, now: Instant) {
        while self.history.len() > retention.count
            || self.history_bytes > retention.bytes
            || self
                .history
                .front()
                .is_some_and(|m| now.duration_since(m.at) >= retention.ttl)
        {
            let gone = self.history.pop_front().expect("checked non-empty");
            self.history_bytes -= gone.cost();
            memory.forget(&gone);
        }
    }

    /// Retains message `seq` (then drops what that put past the bounds).
    fn retain(
        &mut self,
        name: &Arc<str>,
        retention: Retention,
        memory: &Memory,
        seq: u64,
        payload: &[u8],
    ) {
        if retention.count == 0 {
            return;
        }
        let now = Instant::now();
        let msg = Retained {
            seq,
            at: now,
            payload: payload.into(),
            age: memory.next_age.fetch_add(1, Ordering::Relaxed),
        };
        self.history_bytes += msg.cost();
        memory.bytes.fetch_add(msg.cost(), Ordering::Relaxed);
        memory.by_age.lock().insert(msg.age, Arc::clone(name));
        self.history.push_back(msg);
        self.expire(retention, memory, now);
    }

    fn is_idle(&self) -> bool {
        self.subscribers.is_empty() && self.history.is_empty()
    }

    /// With Redis: whether Redis numbers the topic anew, seen in an
    /// announcement's `epoch`, or after a reconnect in the topic's `last`
    /// number and epoch. Then (a different epoch than the one delivered
    /// here, or a last number below what was delivered) the subscribers are
    /// told `GAP <topic> 1`, the history of the old numbering is dropped,
    /// and delivery starts over at 1: no new message is taken for a repeat
    /// of an old one. A first epoch is adopted.
    fn renumber(
        &mut self,
        memory: &Memory,
        flushes: &Flushes,
        name: &str,
        last: Option<u64>,
        epoch: Option<&str>,
    ) -> bool {
        if !self.followed {
            return false;
        }
        // A different epoch: the numbering this instance followed is gone,
        // with whatever it had not delivered yet.
        let new_epoch = self.epoch.is_some() && epoch.is_some() && self.epoch.as_deref() != epoch;
        let went_back = last.is_some_and(|last| last < self.seq);
        if !(new_epoch || went_back) {
            if self.epoch.is_none()
                && let Some(epoch) = epoch
            {
                self.epoch = Some(epoch.to_owned());
            }
            return false;
        }
        self.epoch = epoch.map(str::to_owned);
        self.seq = 0;
        while let Some(gone) = self.history.pop_front() {
            self.history_bytes -= gone.cost();
            memory.forget(&gone);
        }
        self.tell_gap(flushes, name, 1);
        true
    }

    /// Tells every subscriber, in the protocol, that the topic's messages
    /// from `first_missing` on up to the next one it gets are lost:
    /// `GAP <topic> <first-missing>`. `GAP <topic> 1` says the numbering
    /// started over, so the next numbers are new messages, not repeats.
    fn tell_gap(&self, flushes: &Flushes, name: &str, first_missing: u64) {
        let line = format!("GAP {name} {first_missing}");
        for conn in &self.subscribers {
            let mut wire = Vec::new();
            if conn
                .protocol
                .encode(&Message::Data(line.as_bytes()), &mut wire)
                .is_ok()
            {
                let _ = conn.out.push(conn.id, flushes, &wire);
            }
        }
    }
}

/// Subscribers from which a publish's sends are split over two threads.
const PARALLEL_FANOUT: usize = 2048;

/// What became of one subscriber's copy of a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    Delivered,
    /// Closing or closed: it leaves the topic.
    Gone,
    /// Its protocol cannot carry the message.
    Skipped,
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
}

/// The DATA payload `MSG <topic> <seq> <payload>`, encoded in `protocol`.
fn encode_msg(
    protocol: Protocol,
    topic: &str,
    seq: u64,
    payload: &[u8],
) -> Result<Vec<u8>, EncodeError> {
    let data = [
        b"MSG ",
        topic.as_bytes(),
        b" ",
        seq.to_string().as_bytes(),
        b" ",
        payload,
    ]
    .concat();
    let mut out = Vec::with_capacity(data.len() + 8);
    protocol.encode(&Message::Data(&data), &mut out)?;
    Ok(out)
}

/// Writes or queues message `seq` to every subscriber of `t` (the topic
/// `name`, locked); drops those that cannot take it. How many took it, and
/// how many did not.
fn fan_out(
    t: &mut Topic,
    flushes: &Flushes,
    name: &str,
    seq: u64,
    payload: &[u8],
) -> (usize, usize) {
    // Encoded once per protocol in use.
    let encoded: Vec<Option<Result<Vec<u8>, EncodeError>>> = Protocol::ALL
        .iter()
        .map(|&p| {
            t.subscribers
                .iter()
                .any(|c| c.protocol == p)
                .then(|| encode_msg(p, name, seq, payload))
        })
        .collect();
    // Whether each subscriber stays; sends split over two threads for a
    // large fan-out. The topic's lock is held until both are done, so
    // the next publish still comes after this one for every subscriber.
    let deliver = |subscribers: &[Arc<Conn>]| -> Vec<Outcome> {
        subscribers
            .iter()
            .map(|conn| {
                // `Protocol` lists its variants in the order of `Protocol::ALL`.
                match &encoded[conn.protocol as usize] {
                    Some(Ok(wire)) => match conn.out.push(conn.id, flushes, wire) {
                        Ok(_) => Outcome::Delivered,
                        // Larger than its whole outbox (a smaller outbox
                        // than the server's, which refuses such messages
                        // at publish): not the subscriber's fault.
                        Err(PushError::TooLarge) => Outcome::Skipped,
                        // Closing, or closed just now as a slow consumer.
                        Err(PushError::Closed | PushError::Full) => Outcome::Gone,
                    },
                    // A message its protocol cannot carry (a line break,
                    // for a line-mode subscriber) does not reach it.
                    _ => Outcome::Skipped,
                }
            })
            .collect()
    };
    let outcomes = if t.subscribers.len() >= PARALLEL_FANOUT {
        let (first, second) = t.subscribers.split_at(t.subscribers.len() / 2);
        std::thread::scope(|scope| {
            let helper = std::thread::Builder::new()
                .name("wheel-fanout".into())
                .spawn_scoped(scope, || deliver(second));
            let mut outcomes = deliver(first);
            match helper {
                Ok(helper) => outcomes.extend(helper.join().expect("fan-out thread panicked")),
                // No thread to be had: this one does the rest.
                Err(_) => outcomes.extend(deliver(second)),
            }
            outcomes
        })
    } else {
        deliver(&t.subscribers)
    };
    let delivered = outcomes
        .iter()
        .filter(|&&o| o == Outcome::Delivered)
        .count();
    let dropped = outcomes.len() - delivered;
    let mut outcome = outcomes.iter();
    t.subscribers
        .retain(|_| outcome.next() != Some(&Outcome::Gone));
    (delivered, dropped)
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

    /// Subscribes `conn` to `name`, writing `ok` (built from the outcome;
    /// nothing if it is empty) and then, with `since`, the retained messages
    /// after it (the newest that fit the replay budget), on the
    /// connection's outbound path before any later live message.
    pub(crate) fn subscribe(
        &self,
        flushes: &Flushes,
        conn: &Arc<Conn>,
        name: &str,
        since: Option<u64>,
        max_subscriptions: usize,
        ok: impl FnOnce(Resumed) -> Vec<u8>,
    ) -> Result<Resumed, TopicError> {
        if !valid_topic(name) {
            return Err(TopicError::InvalidTopic);
        }
        {
            let mut subscriptions = conn.subscriptions.lock();
            if !subscriptions.iter().any(|s| s == name) {
                if subscriptions.len() >= max_subscriptions {
                    return Err(TopicError::TooManySubscriptions);
                }
                subscriptions.push(name.to_owned());
            }
        }
        let subscribed = self.subscribe_listed(flushes, conn, name, since, ok);
        if subscribed.is_err() {
            self.unsubscribe(conn, name);
        }
        subscribed
    }

    /// [`subscribe`](Topics::subscribe) once the connection lists the
    /// topic.
    fn subscribe_listed(
        &self,
        flushes: &Flushes,
        conn: &Arc<Conn>,
        name: &str,
        since: Option<u64>,
        ok: impl FnOnce(Resumed) -> Vec<u8>,
    ) -> Result<Resumed, TopicError> {
        let (_, topic) = self.topic(name)?;
        // With Redis, Redis round trips happen without the topic's lock:
        // first the number to follow from, then the replay's pages.
        let mut fetched = Vec::new();
        if let Some(redis) = &self.redis {
            if !topic.lock().followed {
                let (last, epoch) = redis.numbering(name)?;
                let mut t = topic.lock();
                if !t.followed {
                    t.seq = last;
                    t.epoch = epoch;
                    t.followed = true;
                    redis.follow(name);
                }
            }
            if let Some(since) = since {
                let last = topic.lock().seq;
                // A `since` past the last number: everything is replayed.
                let after = if since > last { 0 } else { since };
                if after < last {
                    fetched = redis.newest(name, after, self.bounds.replay_budget)?;
                }
            }
        }
        let mut t = topic.lock();
        t.expire(self.retention, &self.memory, Instant::now());
        let last = t.seq;
        // A `since` past the last number means the topic started over (the
        // server restarted, or Redis lost its data): everything retained is
        // new to the client, and the answer must say so (`gap 1`), or a
        // client would drop the replay's small numbers as duplicates.
        let started_over = since.is_some_and(|since| since > last);
        let since = since.map(|since| if started_over { 0 } else { since });
        let replay = match since {
            Some(since) if since < last => self.plan_replay(conn, name, &t, since, fetched),
            _ => Vec::new(),
        };
        let resumed = match since {
            None => Resumed::Live { last },
            Some(_) if started_over => Resumed::Gap {
                last,
                first_missing: 1,
            },
            Some(since) if since == last => Resumed::Recovered { last },
            Some(since) => match replay.first() {
                Some(&(first, _)) if first == since + 1 => Resumed::Recovered { last },
                _ => Resumed::Gap {
                    last,
                    first_missing: since + 1,
                },
            },
        };
        let push = |wire: &[u8]| match conn.out.push(conn.id, flushes, wire) {
            Ok(_) => Ok(()),
            Err(PushError::Full) => Err(TopicError::OutboxFull),
            Err(PushError::Closed | PushError::TooLarge) => Err(TopicError::Closed),
        };
        let ack = ok(resumed);
        let acked = if ack.is_empty() { Ok(()) } else { push(&ack) };
        acked.and_then(|()| {
            for (_, wire) in &replay {
                push(wire)?;
            }
            Ok(())
        })?;
        if !t.subscribers.iter().any(|c| c.id == conn.id) {
            t.subscribers.push(Arc::clone(conn));
        }
        Ok(resumed)
    }

    /// The replay after `since` for `conn` from `t` (the topic `name`,
    /// locked, its last number above `since`): the newest messages, encoded,
    /// that run without a hole up to the last number and fit the replay
    /// budget (at least the newest one), oldest first. Taken from the local
    /// history and, with Redis, from what was `fetched` from the stream.
    fn plan_replay(
        &self,
        conn: &Conn,
        name: &str,
        t: &Topic,
        since: u64,
        fetched: Vec<Entry>,
    ) -> Vec<(u64, Vec<u8>)> {
        let mut held: BTreeMap<u64, Arc<[u8]>> = fetched
            .into_iter()
            .filter(|&(seq, _)| seq > since && seq <= t.seq)
            .collect();
        for m in t.history.iter().filter(|m| m.seq > since) {
            held.insert(m.seq, Arc::clone(&m.payload));
        }
        let mut replay = Vec::new();
        let mut spent = 0;
        let mut next = t.seq;
        for (&seq, payload) in held.iter().rev() {
            if seq != next {
                break; // a hole: older ones could not be told apart from it
            }
            let Ok(wire) = encode_msg(conn.protocol, name, seq, payload) else {
                // A message its protocol cannot carry is skipped as live.
                next -= 1;
                continue;
            };
            if !replay.is_empty() && spent + wire.len() > self.bounds.replay_budget {
                break;
            }
            spent += wire.len();
            replay.push((seq, wire));
            next -= 1;
        }
        replay.reverse();
        replay
    }

    /// Unsubscribes `conn` from `name`; false if it was not subscribed.
    pub(crate) fn unsubscribe(&self, conn: &Conn, name: &str) -> bool {
        let was = {
            let mut subscriptions = conn.subscriptions.lock();
            let before = subscriptions.len();
            subscriptions.retain(|s| s != name);
            subscriptions.len() != before
        };
        let Some(topic) = self.get(name) else {
            return was;
        };
        let idle = {
            let mut t = topic.lock();
            t.subscribers.retain(|c| c.id != conn.id);
            t.is_idle()
        };
        drop(topic);
        if idle {
            self.forget_if_idle(name);
        }
        was
    }

    /// Removes a closing connection from every topic it subscribed to.
    pub(crate) fn remove_connection(&self, conn: &Conn) {
        let names = std::mem::take(&mut *conn.subscriptions.lock());
        for name in names {
            self.unsubscribe(conn, &name);
        }
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
    pub(crate) fn evicted(&self) -> &Counter {
        &self.memory.evicted
    }

    /// Registers the topics' own metrics.
    pub(crate) fn register(&self, metrics: &mut Metrics) {
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
