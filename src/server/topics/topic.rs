//! One topic: its numbering, its retained history (each message counted
//! against the per-topic and all-topics bounds), its publish ids, and the
//! fan-out of one message to its subscribers.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use prometheus_client::metrics::counter::Counter;
use std::time::{Duration, Instant};

use super::Retention;
use crate::protocol::{EncodeError, Message, Protocol};
use crate::server::config::RETAINED_OVERHEAD;
use crate::server::conn::Conn;
use crate::server::conn::outbound::{Flushes, PushError};

/// One retained message.
pub(super) struct Retained {
    pub(super) seq: u64,
    pub(super) at: Instant,
    pub(super) payload: Arc<[u8]>,
    /// Its place in the age order of all retained messages.
    pub(super) age: u64,
}

impl Retained {
    /// The bytes it is counted for.
    pub(super) fn cost(&self) -> usize {
        self.payload.len() + RETAINED_OVERHEAD
    }
}

/// The history of all topics together: its size, and its messages by age,
/// so that the oldest of any topic can be found and dropped first.
///
/// Lock order: a topic's lock, then `by_age` (never the other way round).
#[derive(Default)]
pub(super) struct Memory {
    /// Bytes retained over all topics (as [`Retained::cost`]).
    pub(super) bytes: AtomicUsize,
    /// Every retained message's age, with its topic's name.
    pub(super) by_age: parking_lot::Mutex<BTreeMap<u64, Arc<str>>>,
    /// The next age to give.
    pub(super) next_age: AtomicU64,
    /// Messages dropped because all topics' history was at its bound.
    pub(super) evicted: Counter,
}

impl Memory {
    /// Counts `msg` out (it left its topic's history).
    pub(super) fn forget(&self, msg: &Retained) {
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
pub(super) struct OnceIds {
    pub(super) numbers: std::collections::HashMap<(Arc<str>, String), u64>,
    /// Oldest first: when each may be forgotten.
    pub(super) order: VecDeque<(Instant, Arc<str>, String)>,
}

impl OnceIds {
    /// The number publish `id` to `topic` was given, if it is remembered.
    pub(super) fn seen(&mut self, topic: &Arc<str>, id: &str) -> Option<u64> {
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

    pub(super) fn remember(&mut self, topic: &Arc<str>, id: &str, seq: u64, window: Duration) {
        self.numbers.insert((Arc::clone(topic), id.to_owned()), seq);
        self.order
            .push_back((Instant::now() + window, Arc::clone(topic), id.to_owned()));
    }
}

/// One topic.
#[derive(Default)]
pub(super) struct Topic {
    /// The last sequence number given (0 before the first publish); with
    /// Redis, the last one delivered here.
    pub(super) seq: u64,
    /// With Redis: `seq` was read from Redis and the follower follows the
    /// topic.
    pub(super) followed: bool,
    /// With Redis: the epoch of the numbering `seq` belongs to (`None`
    /// until one is seen): a new one means Redis numbers the topic anew.
    pub(super) epoch: Option<String>,
    /// Subscribed connections.
    pub(super) subscribers: Vec<Arc<Conn>>,
    /// Who they are, and who watches them come and go.
    pub(super) presence: super::presence::Presence,
    /// The last messages, oldest first.
    pub(super) history: VecDeque<Retained>,
    /// Bytes `history` is counted for.
    pub(super) history_bytes: usize,
}

impl Topic {
    /// Drops retained messages past the count, the bytes, or older than the
    /// TTL.
    pub(super) fn expire(&mut self, retention: Retention, memory: &Memory, now: Instant) {
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
    pub(super) fn retain(
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

    pub(super) fn is_idle(&self) -> bool {
        self.subscribers.is_empty() && self.history.is_empty()
    }

    /// With Redis: whether Redis numbers the topic anew, seen in an
    /// announcement's `epoch`, or after a reconnect in the topic's `last`
    /// number and epoch. Then (a different epoch than the one delivered
    /// here, or a last number below what was delivered) the subscribers are
    /// told `GAP <topic> 1`, the history of the old numbering is dropped,
    /// and delivery starts over at 1: no new message is taken for a repeat
    /// of an old one. A first epoch is adopted.
    pub(super) fn renumber(
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
    pub(super) fn tell_gap(&self, flushes: &Flushes, name: &str, first_missing: u64) {
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
pub(super) const PARALLEL_FANOUT: usize = 2048;

/// What became of one subscriber's copy of a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    Delivered,
    /// Closing or closed: it leaves the topic.
    Gone,
    /// Its protocol cannot carry the message.
    Skipped,
}

/// The DATA payload `MSG <topic> <seq> <payload>`, encoded in `protocol`.
pub(super) fn encode_msg(
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
pub(super) fn fan_out(
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
