//! Subscriptions: joining a topic (with a replay of what was missed,
//! within the outbox budget, the rest reported as a gap) and leaving it.

use std::collections::BTreeMap;
use std::sync::Arc;

use std::time::Instant;

use crate::protocol::topic::valid_topic;
use crate::server::conn::Conn;
use crate::server::conn::outbound::{Flushes, PushError};
use crate::server::topics::presence::leave_reason;
use crate::server::topics::redis::Entry;
use topic::{Topic, encode_msg};

use super::*;

impl Topics {
    /// Subscribes `conn` to `name`, writing `ok` (built from the outcome;
    /// nothing if it is empty) and then, with `since`, the retained messages
    /// after it (the newest that fit the replay budget), on the
    /// connection's outbound path before any later live message. With
    /// `watch`, it watches the topic's presence from the moment it joins.
    #[allow(
        clippy::too_many_arguments,
        reason = "a subscription's parts; the callers name each"
    )]
    pub(crate) fn subscribe(
        &self,
        flushes: &Flushes,
        conn: &Arc<Conn>,
        name: &str,
        since: Option<u64>,
        watch: bool,
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
        let subscribed = self.subscribe_listed(flushes, conn, name, since, watch, ok);
        if subscribed.is_err() {
            self.leave(flushes, conn, name, "unsubscribed");
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
        watch: bool,
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
            // A watcher hears other instances' joins and leaves once the
            // follower listens for them: what came before, `WHO` lists.
            if watch {
                redis.await_following(name);
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
            let (user, since_ms) = t.presence.join(&self.change(flushes, name), conn, watch);
            // Under the topic's lock, so that Redis hears of one topic's
            // joins and leaves in the order they happened.
            if let Some(redis) = &self.redis {
                redis.joined(name, conn.id, user, since_ms);
            }
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
    pub(crate) fn unsubscribe(&self, flushes: &Flushes, conn: &Conn, name: &str) -> bool {
        self.leave(flushes, conn, name, "unsubscribed")
    }

    /// What watchers of `name`'s presence are told through.
    pub(super) fn change<'a>(&'a self, flushes: &'a Flushes, name: &'a str) -> Change<'a> {
        Change {
            name,
            instance: self.redis.as_ref().map(Redis::instance),
            rate: self.bounds.presence_rate,
            flushes,
            counters: &self.presence,
        }
    }

    /// Takes `conn` out of `name` for `reason` (told to the topic's
    /// watchers); false if it was not subscribed.
    pub(super) fn leave(&self, flushes: &Flushes, conn: &Conn, name: &str, reason: &str) -> bool {
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
            let left = t
                .presence
                .leave(&self.change(flushes, name), conn.id, reason);
            if let (true, Some(redis)) = (left, &self.redis) {
                redis.left(name, conn.id, leave_reason(reason));
            }
            t.is_idle()
        };
        drop(topic);
        if idle {
            self.forget_if_idle(name);
        }
        was
    }
}
