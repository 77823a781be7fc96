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
//! With Redis (`--redis`, `redis.rs`), numbering and history live there:
//! a publish goes to Redis, and the follower thread hands each message
//! back through [`Topics::relay`], in sequence order, to the local
//! subscribers; a topic's `seq` is then the last number delivered here, and
//! a subscription's replay is read from the Redis stream under the topic's
//! lock, so that it meets the relayed messages with no gap and no
//! duplicate just as without Redis.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};

use super::conn::Conn;
use super::outbound::{Flushes, PushError};
use super::redis::{Entry, Redis, Unavailable};
use crate::protocol::{EncodeError, Message, Protocol};

/// The longest topic name, in bytes.
pub const MAX_TOPIC_LEN: usize = 128;

/// Whether `name` is a valid topic: 1 to [`MAX_TOPIC_LEN`] bytes of
/// `A-Z a-z 0-9 . _ - : /`.
pub fn valid_topic(name: &str) -> bool {
    (1..=MAX_TOPIC_LEN).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-:/".contains(&b))
}

/// History settings.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Retention {
    /// Messages kept per topic (0: none).
    pub(crate) count: usize,
    /// How long a message is kept.
    pub(crate) ttl: Duration,
}

/// One retained message.
struct Retained {
    seq: u64,
    at: Instant,
    payload: Arc<[u8]>,
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
    /// Subscribed connections.
    subscribers: Vec<Arc<Conn>>,
    /// The last messages, oldest first.
    history: VecDeque<Retained>,
    /// Payload bytes in `history`.
    history_bytes: usize,
}

impl Topic {
    /// Drops retained messages past the count or older than the TTL.
    fn expire(&mut self, retention: Retention, now: Instant) {
        while self.history.len() > retention.count
            || self
                .history
                .front()
                .is_some_and(|m| now.duration_since(m.at) >= retention.ttl)
        {
            let gone = self.history.pop_front().expect("checked non-empty");
            self.history_bytes -= gone.payload.len();
        }
    }

    fn is_idle(&self) -> bool {
        self.subscribers.is_empty() && self.history.is_empty()
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

/// Why a topic operation failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum TopicError {
    /// Not a valid topic name.
    InvalidTopic,
    /// The connection is at its subscription limit.
    TooManySubscriptions,
    /// The connection is closing.
    Closed,
    /// The replay did not fit the connection's outbox: it is being closed as
    /// a slow consumer.
    OutboxFull,
    /// Redis could not be reached to number the subscription or read its
    /// replay.
    Unavailable(Unavailable),
}

impl From<Unavailable> for TopicError {
    fn from(e: Unavailable) -> TopicError {
        TopicError::Unavailable(e)
    }
}

/// What became of a message the Redis follower relayed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
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
    by_name: RwLock<HashMap<String, Arc<Mutex<Topic>>>>,
    retention: Retention,
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
                        // Closing, or closed just now as a slow consumer.
                        Err(_) => Outcome::Gone,
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
    pub(crate) fn new(retention: Retention, redis: Option<Redis>) -> Topics {
        Topics {
            by_name: RwLock::new(HashMap::new()),
            retention,
            redis,
        }
    }

    /// The link to Redis, with `--redis`.
    pub(crate) fn redis(&self) -> Option<&Redis> {
        self.redis.as_ref()
    }

    /// The topic, created if need be.
    fn topic(&self, name: &str) -> Arc<Mutex<Topic>> {
        if let Some(topic) = self.by_name.read().get(name) {
            return Arc::clone(topic);
        }
        Arc::clone(self.by_name.write().entry(name.to_owned()).or_default())
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
    /// With Redis, when Redis could not take the message.
    pub(crate) fn publish(
        &self,
        flushes: &Flushes,
        name: &str,
        payload: &[u8],
        ack: Option<Ack<'_>>,
    ) -> Result<Published, Unavailable> {
        if let Some(redis) = &self.redis {
            let seq = redis.publish(name, payload)?;
            if let Some((publisher, ack)) = ack {
                let _ = publisher.out.push(publisher.id, flushes, &ack(seq));
            }
            return Ok(Published {
                seq,
                delivered: 0,
                dropped: 0,
            });
        }
        let numbered = self.deliver(self.topic(name), flushes, name, payload, |t| {
            t.seq += 1;
            let seq = t.seq;
            let now = Instant::now();
            if self.retention.count > 0 {
                t.history_bytes += payload.len();
                t.history.push_back(Retained {
                    seq,
                    at: now,
                    payload: payload.into(),
                });
            }
            t.expire(self.retention, now);
            if let Some((publisher, ack)) = ack {
                let _ = publisher.out.push(publisher.id, flushes, &ack(seq));
            }
            Ok::<u64, std::convert::Infallible>(seq)
        });
        let Ok((seq, delivered, dropped)) = numbered;
        Ok(Published {
            seq,
            delivered,
            dropped,
        })
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
    /// one: the stream no longer holds those between).
    pub(crate) fn relay(
        &self,
        flushes: &Flushes,
        name: &str,
        seq: u64,
        payload: &[u8],
        past_hole: bool,
    ) -> Relayed {
        let Some(topic) = self.by_name.read().get(name).cloned() else {
            return Relayed::Stale;
        };
        let relayed = self.deliver(topic, flushes, name, payload, |t| {
            if !t.followed || seq <= t.seq {
                return Err(Relayed::Stale);
            }
            if seq > t.seq + 1 && !past_hole {
                return Err(Relayed::Ahead);
            }
            t.seq = seq;
            Ok(seq)
        });
        match relayed {
            Ok((_, delivered, dropped)) => Relayed::Delivered { delivered, dropped },
            Err(refused) => refused,
        }
    }

    /// With Redis: numbering of `name` goes on from `last`, which is below
    /// what was delivered here (Redis lost data).
    pub(crate) fn restart_numbering(&self, name: &str, last: u64) {
        if let Some(topic) = self.by_name.read().get(name).cloned() {
            let mut t = topic.lock();
            if t.followed {
                t.seq = last;
            }
        }
    }

    /// With Redis: the last sequence number of `name` delivered here, if
    /// the topic is followed.
    pub(crate) fn delivered(&self, name: &str) -> Option<u64> {
        let topic = self.by_name.read().get(name).cloned()?;
        let t = topic.lock();
        t.followed.then_some(t.seq)
    }

    /// Subscribes `conn` to `name`, writing `ok` (built from the outcome;
    /// nothing if it is empty) and then, with `since`, the retained messages
    /// after it, on the connection's outbound path before any later live
    /// message.
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
        let topic = self.topic(name);
        let mut t = topic.lock();
        t.expire(self.retention, Instant::now());
        let found = self.find_replay(&mut t, name, since);
        let (last, started_over, replay) = match found {
            Ok(found) => found,
            Err(e) => {
                drop(t);
                drop(topic);
                self.unsubscribe(conn, name);
                return Err(e.into());
            }
        };
        let since = since.map(|since| if started_over { 0 } else { since });
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
            Err(PushError::Closed) => Err(TopicError::Closed),
        };
        let ack = ok(resumed);
        let acked = if ack.is_empty() { Ok(()) } else { push(&ack) };
        let outcome = acked.and_then(|()| {
            for (seq, payload) in &replay {
                if let Ok(wire) = encode_msg(conn.protocol, name, *seq, payload) {
                    push(&wire)?;
                }
            }
            Ok(())
        });
        if outcome.is_ok() && !t.subscribers.iter().any(|c| c.id == conn.id) {
            t.subscribers.push(Arc::clone(conn));
        }
        drop(t);
        drop(topic);
        if let Err(e) = outcome {
            self.unsubscribe(conn, name);
            return Err(e);
        }
        Ok(resumed)
    }

    /// What a subscription to `t` (the topic `name`, locked) after `since`
    /// finds: the last number, whether the topic started over, and the
    /// retained messages to replay. With Redis, a topic nobody here
    /// followed is looked up and followed from now on.
    fn find_replay(
        &self,
        t: &mut Topic,
        name: &str,
        since: Option<u64>,
    ) -> Result<(u64, bool, Vec<Entry>), Unavailable> {
        if let Some(redis) = &self.redis
            && !t.followed
        {
            t.seq = redis.last_seq(name)?;
            t.followed = true;
            redis.follow(name);
        }
        let last = t.seq;
        // A `since` past the last number means the topic started over (the
        // server restarted, or Redis lost its data): everything retained is
        // new to the client, and the answer must say so (`gap 1`), or a
        // client would drop the replay's small numbers as duplicates.
        let started_over = since.is_some_and(|since| since > last);
        let since = since.map(|since| if started_over { 0 } else { since });
        let replay = match (since, &self.redis) {
            (None, _) => Vec::new(),
            (Some(since), _) if since >= last => Vec::new(),
            (Some(since), Some(redis)) => {
                redis.range(name, since + 1, Some(last), self.retention.count.max(1))?
            }
            (Some(since), None) => t
                .history
                .iter()
                .filter(|m| m.seq > since)
                .map(|m| (m.seq, Arc::clone(&m.payload)))
                .collect(),
        };
        Ok((last, started_over, replay))
    }

    /// Unsubscribes `conn` from `name`; false if it was not subscribed.
    pub(crate) fn unsubscribe(&self, conn: &Conn, name: &str) -> bool {
        let was = {
            let mut subscriptions = conn.subscriptions.lock();
            let before = subscriptions.len();
            subscriptions.retain(|s| s != name);
            subscriptions.len() != before
        };
        let Some(topic) = self.by_name.read().get(name).cloned() else {
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
        self.by_name
            .read()
            .get(name)
            .map_or(0, |t| t.lock().subscribers.len())
    }

    /// Every topic, by name.
    pub(crate) fn list(&self) -> Vec<TopicInfo> {
        let map = self.by_name.read();
        let mut list: Vec<TopicInfo> = map
            .iter()
            .map(|(name, t)| {
                let t = t.lock();
                TopicInfo {
                    topic: name.clone(),
                    subscribers: t.subscribers.len(),
                    last_seq: t.seq,
                }
            })
            .collect();
        list.sort_by(|a, b| a.topic.cmp(&b.topic));
        list
    }

    /// Topics, and payload bytes retained over all of them.
    pub(crate) fn totals(&self) -> (usize, usize) {
        let map = self.by_name.read();
        let bytes = map.values().map(|t| t.lock().history_bytes).sum();
        (map.len(), bytes)
    }

    /// Forgets topics whose history expired and that have no subscribers
    /// (the timer thread calls this now and then).
    pub(crate) fn sweep(&self) {
        let now = Instant::now();
        let idle: Vec<String> = self
            .by_name
            .read()
            .iter()
            .filter_map(|(name, t)| {
                let mut t = t.lock();
                t.expire(self.retention, now);
                t.is_idle().then(|| name.clone())
            })
            .collect();
        for name in idle {
            self.forget_if_idle(&name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{OwnedMessage, Reader};
    use crate::server::Config;
    use crate::server::close::CloseRequest;
    use crate::server::test_support::{pair, shared};
    use std::time::Duration;

    /// A fan-out large enough to be split over two threads still reaches
    /// every subscriber once per publish, in publish order, and drops the
    /// ones that are closing.
    #[test]
    fn a_split_fan_out_keeps_order_and_drops_closing_subscribers() {
        let (shared, listener) = shared(Config::default());
        let topics = Topics::new(
            Retention {
                count: 0,
                ttl: Duration::from_secs(1),
            },
            None,
        );
        let mut clients = Vec::new();
        for _ in 0..PARALLEL_FANOUT + 10 {
            let (conn, client) = pair(&shared, &listener);
            topics
                .subscribe(&shared.flushes, &conn, "wide", None, 8, |_| Vec::new())
                .unwrap();
            clients.push((conn, client));
        }
        // One subscriber is closing: it gets nothing and leaves.
        assert!(clients[5].0.out.request_close(CloseRequest::IdleTimeout));
        for n in 1..=3u64 {
            let published = topics
                .publish(&shared.flushes, "wide", n.to_string().as_bytes(), None)
                .unwrap();
            assert_eq!(published.seq, n);
            assert_eq!(published.delivered, PARALLEL_FANOUT + 9);
        }
        assert_eq!(topics.subscribers("wide"), PARALLEL_FANOUT + 9);
        for (i, (_, client)) in clients.iter_mut().enumerate().filter(|(i, _)| *i != 5) {
            client
                .set_read_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            let mut reader = Reader::new(Protocol::Frame, 1024);
            for n in 1..=3u64 {
                let got = reader.read_message(client).unwrap();
                assert_eq!(
                    got,
                    Some(OwnedMessage::Data(format!("MSG wide {n} {n}").into_bytes())),
                    "subscriber {i}"
                );
            }
        }
    }
}
