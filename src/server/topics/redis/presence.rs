//! Presence across instances (`--redis`): every instance's members of a
//! topic in one view, their joins and leaves told to every instance's
//! watchers, and the members of an instance that died without a goodbye
//! taken out within a bound.
//!
//! # What is kept in Redis
//!
//! For a topic `t`, members named `<conn>@<instance>` (see
//! [`member_id`]):
//!
//! * `wheel:{t}:who`, a sorted set of the members, scored by when they
//!   joined (ms since the Unix epoch): `WHO`'s order and its pages;
//! * `wheel:{t}:user`, each member's user (as events write it, `-` for
//!   none), and `wheel:{t}:users`, each user's connections over all
//!   instances, so that `ONLINE` and `OFFLINE` count every instance's;
//! * `wheel:{t}:at:<instance>`, the members an instance has there;
//! * the channel `wheel:{t}:presence`, on which every change is announced as
//!   a first line `<instance> [<member>]` (who made the change, and the
//!   member it is about, if one), then one event per line.
//!
//! And for the instances:
//!
//! * `wheel:instances`, a sorted set of the live ones, scored by when each
//!   expires: its last heartbeat (`--presence-heartbeat`) plus
//!   [`MISSED_BEATS`] heartbeats, by Redis's clock;
//! * `wheel:instance:{i}:topics`, the topics where instance `i` has
//!   members; `wheel:instance:{i}:lost`, set when other instances took its
//!   members out for it.
//!
//! # Who writes what
//!
//! Every change is one call of one Lua script ([`SCRIPT`]), so each is
//! atomic. An instance writes only its own members, from one thread,
//! `wheel-presence`, in the order the topics saw the changes: workers hand
//! their joins and leaves over a bounded queue ([`UPDATES`]) without
//! waiting. The same thread beats every `--presence-heartbeat`; each beat
//! also looks for instances whose time ran out, and takes their members
//! out with the reason `instance_lost` ([`REAP_BATCH`] at a time, so Redis
//! is never held long). A SIGKILLed instance's members thus leave at most
//! `(MISSED_BEATS + 1) x --presence-heartbeat` after its last beat: its
//! entry expires after [`MISSED_BEATS`] heartbeats and a survivor looks
//! once a heartbeat.
//!
//! When Redis's view of this instance may be wrong (an update was dropped
//! because the queue was full or Redis failed, Redis came back empty, or
//! other instances took this one for dead and its members out), the next
//! beat brings it up to date: every topic's members here are compared with
//! Redis's, the missing ones join, and those Redis has but this instance
//! does not leave with the reason `unknown` (the update that said why was
//! lost).
//!
//! A query (`WHO`) first waits, at most `--redis-timeout`, until the
//! presence thread is done with every change handed over before it, so that
//! it sees this instance's own joins and leaves.
//!
//! An instance's watchers hear its own joins and leaves at once, from the
//! topic itself; from Redis they take only other instances' events, and
//! every `ONLINE` and `OFFLINE`, which only Redis can count.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use parking_lot::{Condvar, Mutex};
use prometheus_client::metrics::counter::Counter;
use redis::Connection;
use tracing::{debug, info, warn};

use crate::server::conn::id::ConnId;
use crate::server::metrics::Metrics;
use crate::server::topics::Sink;
use crate::server::topics::presence::{
    Member, Members, member_id, parse_member_id, show_user, unshow_user,
};

use super::target::connect;
use super::{Redis, Unavailable};

/// Joins and leaves waiting for the presence thread, at most. Past it they
/// are dropped (`wheel_presence_redis_dropped_total`), and the next beat
/// brings Redis's view of this instance up to date instead.
const UPDATES: usize = 65_536;

/// Heartbeats an instance may miss before the others take it for dead.
const MISSED_BEATS: u32 = 3;

/// Members one script call takes out of Redis at most (while it runs,
/// Redis runs nothing else).
const REAP_BATCH: usize = 1_000;

/// How long a stopping instance spends telling Redis its last leaves and
/// its goodbye, at most.
const FAREWELL: Duration = Duration::from_secs(2);

/// Every presence change, as one script. `ARGV[1]` is the operation,
/// `ARGV[2]` this instance; the rest per operation:
///
/// * `join <topic> <member> <user> <since>`: a member joined (nothing if
///   it is there already);
/// * `leave <topic> <member> <reason>`: it left (nothing if it is gone);
/// * `sync <topic> [<member> <user> <since>]...`: this instance's members
///   of the topic are these;
/// * `beat <ttl-ms> <budget>`: this instance lives; instances whose time
///   ran out are taken out, `budget` members at most. Answers whether this
///   instance was new (or taken out), instances taken out, whether more
///   remain;
/// * `bye <budget>`: this instance stops; its members leave `drained`.
///   Answers whether more remain;
/// * `who <topic> <after> <limit>`: members, totals first.
///
/// A reap announces at most 100 leaves per topic (`REAP_EVENTS`), then
/// `PRESENCE <topic> overflow`, so that watchers ask `WHO`.
///
/// Keys are built in the script (one Redis, or one found by Sentinel, not
/// a Cluster), topics' in their braces.
const SCRIPT: &str = r"
local op, origin = ARGV[1], ARGV[2]
local INSTANCES = 'wheel:instances'
local REAP_EVENTS = 100
local function k(topic, what) return 'wheel:{' .. topic .. '}:' .. what end
local function mine(instance, what) return 'wheel:instance:{' .. instance .. '}:' .. what end
local function tell(topic, from, lines)
  if #lines > 0 then
    redis.call('PUBLISH', k(topic, 'presence'), from .. '\n' .. table.concat(lines, '\n'))
  end
end
local function join(topic, token, shown, since, lines)
  if redis.call('ZADD', k(topic, 'who'), 'NX', since, token) == 0 then return end
  redis.call('HSET', k(topic, 'user'), token, shown)
  redis.call('SADD', k(topic, 'at:' .. origin), token)
  redis.call('SADD', mine(origin, 'topics'), topic)
  lines[#lines + 1] = 'JOIN ' .. topic .. ' ' .. token .. ' ' .. shown
  if shown ~= '-' and redis.call('HINCRBY', k(topic, 'users'), shown, 1) == 1 then
    lines[#lines + 1] = 'ONLINE ' .. topic .. ' ' .. shown
  end
end
local function leave(topic, token, reason, lines)
  if redis.call('ZREM', k(topic, 'who'), token) == 0 then return end
  local shown = redis.call('HGET', k(topic, 'user'), token) or '-'
  redis.call('HDEL', k(topic, 'user'), token)
  local told = #lines < REAP_EVENTS
  if told then
    lines[#lines + 1] = 'LEAVE ' .. topic .. ' ' .. token .. ' ' .. shown .. ' ' .. reason
  end
  if shown ~= '-' and redis.call('HINCRBY', k(topic, 'users'), shown, -1) <= 0 then
    redis.call('HDEL', k(topic, 'users'), shown)
    if told then
      lines[#lines + 1] = 'OFFLINE ' .. topic .. ' ' .. shown .. ' ' .. reason
    end
  end
  return told
end
local function emptied(instance, topic)
  if redis.call('SCARD', k(topic, 'at:' .. instance)) == 0 then
    redis.call('SREM', mine(instance, 'topics'), topic)
  end
end
local function reap(instance, reason, budget)
  for _, topic in ipairs(redis.call('SMEMBERS', mine(instance, 'topics'))) do
    if budget <= 0 then return budget, true end
    local lines, dropped = {}, false
    for _, token in ipairs(redis.call('SPOP', k(topic, 'at:' .. instance), budget)) do
      if leave(topic, token, reason, lines) == false then dropped = true end
      budget = budget - 1
    end
    if dropped then lines[#lines + 1] = 'PRESENCE ' .. topic .. ' overflow' end
    emptied(instance, topic)
    tell(topic, instance, lines)
  end
  return budget, redis.call('SCARD', mine(instance, 'topics')) > 0
end
if op == 'join' then
  local lines = {}
  join(ARGV[3], ARGV[4], ARGV[5], ARGV[6], lines)
  tell(ARGV[3], origin .. ' ' .. ARGV[4], lines)
  return #lines
elseif op == 'leave' then
  local topic, lines = ARGV[3], {}
  leave(topic, ARGV[4], ARGV[5], lines)
  redis.call('SREM', k(topic, 'at:' .. origin), ARGV[4])
  emptied(origin, topic)
  tell(topic, origin .. ' ' .. ARGV[4], lines)
  return #lines
elseif op == 'sync' then
  local topic, lines, have = ARGV[3], {}, {}
  for i = 4, #ARGV, 3 do have[ARGV[i]] = true end
  for _, token in ipairs(redis.call('SMEMBERS', k(topic, 'at:' .. origin))) do
    if not have[token] then
      leave(topic, token, 'unknown', lines)
      redis.call('SREM', k(topic, 'at:' .. origin), token)
    end
  end
  for i = 4, #ARGV, 3 do join(topic, ARGV[i], ARGV[i + 1], ARGV[i + 2], lines) end
  emptied(origin, topic)
  tell(topic, origin, lines)
  return #lines
elseif op == 'beat' then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  local new = redis.call('ZADD', INSTANCES, now + tonumber(ARGV[3]), origin)
  if redis.call('DEL', mine(origin, 'lost')) == 1 then new = 1 end
  local budget, lost, more = tonumber(ARGV[4]), 0, 0
  for _, dead in ipairs(redis.call('ZRANGEBYSCORE', INSTANCES, '-inf', now, 'LIMIT', 0, 8)) do
    redis.call('SET', mine(dead, 'lost'), '1', 'PX', 86400000)
    local left
    budget, left = reap(dead, 'instance_lost', budget)
    if left then
      more = 1
      break
    end
    redis.call('ZREM', INSTANCES, dead)
    lost = lost + 1
  end
  return {new, lost, more}
elseif op == 'bye' then
  local _, left = reap(origin, 'drained', tonumber(ARGV[3]))
  if left then return 1 end
  redis.call('ZREM', INSTANCES, origin)
  redis.call('DEL', mine(origin, 'lost'))
  return 0
elseif op == 'who' then
  local who, from = k(ARGV[3], 'who'), 0
  if ARGV[4] ~= '' then
    local rank = redis.call('ZRANK', who, ARGV[4])
    if rank then from = rank + 1 end
  end
  local page = redis.call('ZRANGE', who, from, from + tonumber(ARGV[5]), 'WITHSCORES')
  local out = {tostring(redis.call('ZCARD', who)), tostring(redis.call('HLEN', k(ARGV[3], 'users')))}
  for i = 1, #page, 2 do
    out[#out + 1] = page[i]
    out[#out + 1] = page[i + 1]
    out[#out + 1] = redis.call('HGET', k(ARGV[3], 'user'), page[i]) or '-'
  end
  return out
end
return redis.error_reply('unknown presence operation ' .. op)
";

/// A change of this instance's members, for Redis.
pub(super) enum Update {
    Join {
        topic: String,
        conn: ConnId,
        user: Option<Arc<str>>,
        since_ms: u64,
    },
    Leave {
        topic: String,
        conn: ConnId,
        reason: String,
    },
    /// Wakes the thread: the server stops (`Redis::stopping` says so).
    Stop,
}

/// Presence's metrics (with `--redis`).
#[derive(Clone, Default)]
pub(crate) struct RosterMetrics {
    /// Joins and leaves written to Redis.
    pub(crate) updates: Counter,
    /// Joins and leaves dropped (the queue was full, or Redis failed).
    pub(crate) dropped: Counter,
    /// Times Redis's view of this instance was brought up to date.
    pub(crate) resyncs: Counter,
    /// Instances this one found dead and took the members out of.
    pub(crate) lost: Counter,
}

impl RosterMetrics {
    pub(super) fn register(&self, r: &mut Metrics) {
        r.register(
            "wheel_presence_redis_updates",
            "Joins and leaves of this instance's members written to Redis (--redis)",
            self.updates.clone(),
        );
        r.register(
            "wheel_presence_redis_dropped",
            "Joins and leaves not written to Redis (its queue full, or Redis failing): the next heartbeat brings Redis's view up to date",
            self.dropped.clone(),
        );
        r.register(
            "wheel_presence_redis_resyncs",
            "Times Redis's view of this instance's members was brought up to date (at start, after dropped updates, after Redis lost it)",
            self.resyncs.clone(),
        );
        r.register(
            "wheel_presence_instances_lost",
            "Instances this one found past their heartbeats and whose members it took out (leave reason instance_lost)",
            self.lost.clone(),
        );
    }
}

/// This instance's presence in Redis: who it is, and the changes waiting
/// for the presence thread.
pub(crate) struct Roster {
    /// This instance's id: 8 random hex digits, new at every start.
    pub(super) instance: String,
    heartbeat: Duration,
    updates: (Sender<Update>, Receiver<Update>),
    /// An update was dropped: Redis's view must be brought up to date.
    stale: AtomicBool,
    /// Updates handed over so far.
    handed: AtomicU64,
    /// Updates the presence thread is done with (written, or dropped for
    /// a resync to cover), signalled on `done_changed`: a query waits for
    /// those handed over before it, so that it sees this instance's own
    /// changes.
    done: Mutex<u64>,
    done_changed: Condvar,
    script: Arc<redis::Script>,
    pub(crate) metrics: RosterMetrics,
}

impl Roster {
    pub(super) fn new(heartbeat: Duration) -> Roster {
        Roster {
            instance: format!("{:08x}", fastrand::u32(..)),
            heartbeat,
            updates: crossbeam_channel::bounded(UPDATES),
            stale: AtomicBool::new(false),
            handed: AtomicU64::new(0),
            done: Mutex::new(0),
            done_changed: Condvar::new(),
            script: Arc::new(redis::Script::new(SCRIPT)),
            metrics: RosterMetrics::default(),
        }
    }

    fn hand_over(&self, update: Update) {
        if self.updates.0.try_send(update).is_ok() {
            self.handed.fetch_add(1, Ordering::AcqRel);
        } else {
            self.metrics.dropped.inc();
            self.stale.store(true, Ordering::Release);
        }
    }

    /// The presence thread is done with `update`.
    fn finished(&self, update: &Update) {
        if !matches!(update, Update::Stop) {
            *self.done.lock() += 1;
            self.done_changed.notify_all();
        }
    }

    /// Waits until the presence thread is done with every update handed
    /// over so far, until `deadline` at most.
    fn await_handed(&self, deadline: Instant) {
        let handed = self.handed.load(Ordering::Acquire);
        let mut done = self.done.lock();
        while *done < handed {
            if self
                .done_changed
                .wait_until(&mut done, deadline)
                .timed_out()
            {
                return;
            }
        }
    }
}

impl Redis {
    /// This instance's id, as members' ids name it.
    pub(crate) fn instance(&self) -> &str {
        &self.roster.instance
    }

    /// `conn` joined `topic` here (told to Redis by the presence thread).
    pub(crate) fn joined(&self, topic: &str, conn: ConnId, user: Option<Arc<str>>, since_ms: u64) {
        self.roster.hand_over(Update::Join {
            topic: topic.to_owned(),
            conn,
            user,
            since_ms,
        });
    }

    /// `conn` left `topic` here, for `reason` (as a leave event says it).
    pub(crate) fn left(&self, topic: &str, conn: ConnId, reason: &str) {
        self.roster.hand_over(Update::Leave {
            topic: topic.to_owned(),
            conn,
            reason: reason.to_owned(),
        });
    }

    /// Up to `limit` members of `topic` on every instance after the member
    /// `after`, in the order they joined, with the totals.
    pub(crate) fn members(
        &self,
        topic: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Members, Unavailable> {
        // This instance's own joins and leaves first: a client that
        // subscribed and then asks finds itself.
        self.roster.await_handed(Instant::now() + self.timeout);
        let script = Arc::clone(&self.roster.script);
        let args = [
            self.roster.instance.clone(),
            topic.to_owned(),
            after.unwrap_or_default().to_owned(),
        ];
        let answer: Vec<String> = self.with(move |conn| {
            script
                .arg("who")
                .arg(&args[0])
                .arg(&args[1])
                .arg(&args[2])
                .arg(limit)
                .invoke(conn)
        })?;
        parse_members(&answer, limit).ok_or_else(|| Unavailable::refused("a malformed answer"))
    }

    /// Tells the presence thread to finish (at the server's shutdown).
    pub(super) fn stop_roster(&self) {
        let _ = self.roster.updates.0.try_send(Update::Stop);
    }
}

/// The members of a `who` answer: the totals, then member, score, user.
fn parse_members(answer: &[String], limit: usize) -> Option<Members> {
    let [connections, users, rest @ ..] = answer else {
        return None;
    };
    let mut members = Vec::new();
    for m in rest.chunks(3) {
        let [id, since, user] = m else {
            return None;
        };
        let (conn, instance) = parse_member_id(id)?;
        members.push(Member {
            conn,
            instance: instance.map(str::to_owned),
            user: unshow_user(user),
            since_ms: since.parse::<f64>().ok()? as u64,
        });
    }
    let more = members.len() > limit;
    members.truncate(limit);
    Some(Members {
        members,
        connections: connections.parse().ok()?,
        users: users.parse().ok()?,
        more,
    })
}

/// The presence thread: tells Redis this instance's joins and leaves,
/// beats, takes dead instances' members out, and brings Redis's view up to
/// date when it may be wrong; until the server stops.
pub(super) fn run(shared: &Sink<'_>, redis: &Redis) {
    let roster = &redis.roster;
    let mut link = Link {
        redis,
        conn: None,
        // The first beat registers this instance, and tells Redis of the
        // members that joined before it.
        stale: true,
    };
    info!(
        instance = %roster.instance,
        heartbeat = ?roster.heartbeat,
        "presence shared through redis as this instance"
    );
    let mut next_beat = Instant::now();
    while !redis.stopping.load(Ordering::Acquire) {
        if Instant::now() >= next_beat {
            next_beat = Instant::now() + roster.heartbeat;
            link.beat(shared);
        }
        match roster.updates.1.recv_deadline(next_beat) {
            Ok(update) => link.apply(update),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
    }
    // The drain's leaves are queued: tell them, then say goodbye.
    let deadline = Instant::now() + FAREWELL;
    while let Ok(update) = roster.updates.1.try_recv() {
        if Instant::now() >= deadline {
            break;
        }
        link.apply(update);
    }
    link.bye(deadline);
}

/// The presence thread's connection, and whether Redis's view of this
/// instance may be wrong.
struct Link<'a> {
    redis: &'a Redis,
    conn: Option<Connection>,
    stale: bool,
}

impl Link<'_> {
    /// Runs `call` on the connection (made if need be); on a failure the
    /// connection is dropped and Redis's view marked stale.
    fn call<T: redis::FromRedisValue>(&mut self, call: &redis::ScriptInvocation<'_>) -> Option<T> {
        let redis = self.redis;
        if self.conn.is_none() {
            match connect(&redis.target, redis.timeout) {
                Ok(conn) => self.conn = Some(conn),
                Err(e) => {
                    debug!("presence: redis unreachable: {e}");
                    self.stale = true;
                    return None;
                }
            }
        }
        let conn = self.conn.as_mut().expect("connected above");
        match call.invoke(conn) {
            Ok(answer) => Some(answer),
            Err(e) => {
                debug!("presence: redis command failed: {e}");
                redis.metrics.errors.inc();
                self.conn = None;
                self.stale = true;
                None
            }
        }
    }

    /// Tells Redis one join or leave (unless its view is stale anyway, to
    /// be brought up to date by the next beat), then counts it done.
    fn apply(&mut self, update: Update) {
        self.write(&update);
        self.redis.roster.finished(&update);
    }

    fn write(&mut self, update: &Update) {
        let roster = &self.redis.roster;
        let mut call = roster.script.prepare_invoke();
        match update {
            Update::Join {
                topic,
                conn,
                user,
                since_ms,
            } => call
                .arg("join")
                .arg(&roster.instance)
                .arg(topic)
                .arg(member_id(*conn, Some(&roster.instance)))
                .arg(show_user(user.as_deref()))
                .arg(since_ms),
            Update::Leave {
                topic,
                conn,
                reason,
            } => call
                .arg("leave")
                .arg(&roster.instance)
                .arg(topic)
                .arg(member_id(*conn, Some(&roster.instance)))
                .arg(reason),
            Update::Stop => return,
        };
        if self.stale || roster.stale.load(Ordering::Acquire) {
            roster.metrics.dropped.inc();
            return;
        }
        if self.call::<i64>(&call).is_some() {
            roster.metrics.updates.inc();
        } else {
            roster.metrics.dropped.inc();
        }
    }

    /// This instance lives: beat, take out the members of instances that
    /// died (in batches, until none is left), and bring Redis's view of
    /// this instance up to date if it may be wrong.
    fn beat(&mut self, shared: &Sink<'_>) {
        let roster = &self.redis.roster;
        let ttl = roster.heartbeat * MISSED_BEATS;
        // Each call holds Redis for one batch at most; a big reap takes
        // several.
        for _ in 0..64 {
            let mut call = roster.script.prepare_invoke();
            call.arg("beat")
                .arg(&roster.instance)
                .arg(ttl.as_millis() as u64)
                .arg(REAP_BATCH);
            let Some((new, lost, more)) = self.call::<(i64, u64, i64)>(&call) else {
                return;
            };
            if new == 1 {
                self.stale = true;
            }
            if lost > 0 {
                roster.metrics.lost.inc_by(lost);
                warn!(
                    instances = lost,
                    "presence: instances missed {MISSED_BEATS} heartbeats; their members left (instance_lost)"
                );
            }
            if more == 0 {
                break;
            }
        }
        if self.stale || roster.stale.swap(false, Ordering::AcqRel) {
            self.stale = true;
            self.sync(shared);
        }
    }

    /// Brings Redis's view of this instance's members up to date: every
    /// topic it has members in, by either's account.
    fn sync(&mut self, shared: &Sink<'_>) {
        let roster = &self.redis.roster;
        // Joins and leaves queued before this look are in it.
        // (A `Stop` among them only woke the thread: the flag says it.)
        while let Ok(update) = roster.updates.1.try_recv() {
            roster.finished(&update);
        }
        let mut topics = shared.topics.local_members();
        let listed: Option<Vec<String>> = {
            let key = format!("wheel:instance:{{{}}}:topics", roster.instance);
            let conn = self.conn.as_mut();
            conn.and_then(|conn| redis::cmd("SMEMBERS").arg(key).query(conn).ok())
        };
        let Some(listed) = listed else {
            self.conn = None;
            return;
        };
        for topic in listed {
            if !topics.iter().any(|(t, _)| *t == topic) {
                topics.push((topic, Vec::new()));
            }
        }
        for (topic, members) in topics {
            let mut call = roster.script.prepare_invoke();
            call.arg("sync").arg(&roster.instance).arg(&topic);
            for (conn, user, since_ms) in members {
                call.arg(member_id(conn, Some(&roster.instance)))
                    .arg(show_user(user.as_deref()))
                    .arg(since_ms);
            }
            if self.call::<i64>(&call).is_none() {
                return;
            }
        }
        roster.metrics.resyncs.inc();
        self.stale = false;
        debug!("presence: redis's view of this instance brought up to date");
    }

    /// This instance stops: the members still listed leave `drained`, and
    /// it is no longer an instance.
    fn bye(&mut self, deadline: Instant) {
        let roster = &self.redis.roster;
        while Instant::now() < deadline {
            let mut call = roster.script.prepare_invoke();
            call.arg("bye").arg(&roster.instance).arg(REAP_BATCH);
            match self.call::<i64>(&call) {
                Some(0) => return,
                Some(_) => {}
                None => break,
            }
        }
        warn!(
            "presence: could not say goodbye to redis; other instances take this one's members out within {:?}",
            roster.heartbeat * (MISSED_BEATS + 1)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn who_answers_parse_into_pages() {
        let answer: Vec<String> = [
            "3",
            "1",
            "1.1@ab",
            "1700000000000",
            "-",
            "2.1@cd",
            "1700000000001",
            "a%20b",
        ]
        .map(str::to_owned)
        .to_vec();
        let page = parse_members(&answer, 1).unwrap();
        assert_eq!(page.connections, 3);
        assert_eq!(page.users, 1);
        assert!(page.more);
        assert_eq!(page.members.len(), 1);
        assert_eq!(page.members[0].id(), "1.1@ab");
        assert_eq!(page.members[0].since_ms, 1_700_000_000_000);
        let all = parse_members(&answer, 100).unwrap();
        assert!(!all.more);
        assert_eq!(all.members[1].user.as_deref(), Some("a b"));
        assert_eq!(parse_members(&answer[..4], 100), None, "a cut member");
        assert_eq!(parse_members(&["x".into(), "1".into()], 100), None);
    }
}
