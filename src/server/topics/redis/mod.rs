//! Topics across instances, through Redis (`--redis URL`).
//!
//! # What is kept in Redis
//!
//! For a topic `t` (its name in braces, a hash tag, so that a Redis Cluster
//! keeps a topic's keys on one shard):
//!
//! * `wheel:{t}:seq`, the topic's counter, and `wheel:{t}:epoch`, the
//!   numbering's epoch (see [`PUBLISH`]), both expiring an hour
//!   ([`SEQ_GRACE`]) after the history would, refreshed by every publish
//!   and every [`SEQ_REFRESH`] by each instance that follows the topic;
//! * `wheel:{t}:log`, a stream of its messages: entry id `<seq>-0`, fields
//!   `p` (the payload) and `t` (the publish time, ms since the epoch),
//!   capped at `--history` entries and expiring `--history-ttl` after the
//!   last publish;
//! * the channel `wheel:{t}:msg`, on which each message is announced as
//!   `<seq> <epoch> <payload>`.
//!
//! Presence keeps its own keys (members per topic and instance, the live
//! instances): see [`presence`].
//!
//! A publish is one Lua script, so it is atomic: the counter, the stream and
//! the announcement all happen or none does. The sequence number comes from
//! Redis, so a message has the same number on every instance.
//!
//! # Following topics
//!
//! One thread per instance, `wheel-redis`, follows the topics that have
//! local subscribers. It holds its own Redis connection in subscribed mode
//! and hands each announcement to
//! [`Topics::relay`](crate::server::topics::Topics::relay), which writes it to the
//! local subscribers only if it is the next number; otherwise the follower
//! reads what is missing from the stream first. The stream is the
//! truth and the announcements only say "there is more", so nothing an
//! announcement misses is lost: not while the follower reconnects, not
//! between a first subscriber's `SUB` and its channel subscription. After a
//! reconnect the follower re-subscribes and fills every topic from the
//! stream before it reads announcements again. The follower sends a PING
//! every `--redis-timeout` on its connection and replaces it when the
//! answer does not come within that long: a link that silently stopped
//! passing bytes is found within two timeouts.
//!
//! # Telling the truth about failures
//!
//! Redis is marked down (`wheel_redis_up` 0, `/readyz` 503, `/healthz`
//! `redis down`, a log line) while the follower has no connection or the
//! last command failed or timed out, and up again when one succeeds. A
//! publish refused before it reached Redis is `ERR redis unavailable`
//! (HTTP 503: it was not published); one that timed out after it was sent
//! is `ERR unknown: may have been published` (HTTP 504), because Redis may
//! have run it.
//!
//! Pub/sub rather than blocking stream reads (`XREAD BLOCK`): an `XREAD`
//! names every followed stream in every call, so its cost grows with the
//! topics followed (one per user, with personal topics), and a change of the
//! set needs the blocked call interrupted; a channel subscription is made
//! once and costs nothing per message beyond the message. The price is the
//! gap check above, which the stream makes cheap.
//!
//! Commands (a publish, a subscription's lookup and replay, the follower's
//! fills) run on [`POOL_SIZE`] threads of their own, `wheel-redis-cmd`,
//! each with one connection: a worker hands its command over a bounded
//! queue ([`QUEUE`]) and waits at most `--redis-timeout` for room and then
//! for the answer. So no worker runs the client's parser on its small
//! stack, a slow Redis holds a bounded number of commands, and nothing
//! grows without limit.

mod follower;
mod presence;
mod target;

use follower::seq_ttl_ms;
pub(crate) use follower::spawn;
use presence::Roster;
use target::connect;
pub(crate) use target::{Target, target};

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{Receiver, Sender};
use parking_lot::{Condvar, Mutex};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use redis::{Connection, RedisResult};
use tracing::{debug, info, warn};

use crate::backoff::Backoff;
use crate::server::metrics::{Label, Metrics};
use crate::server::topics::Retention;
pub(crate) use crate::server::topics::Unavailable;

/// Command threads, each with its connection.
pub(crate) const POOL_SIZE: usize = 4;

/// Commands waiting for a command thread, at most.
const QUEUE: usize = 1024;

/// A command for a command thread: given the thread's connection (or why
/// there is none), it runs, hands its answer back itself, and says whether
/// the command succeeded.
type Job = Box<dyn FnOnce(Result<&mut Connection, &str>) -> bool + Send>;

/// How often the follower looks at its set of topics while no announcement
/// arrives: the longest a newly followed topic waits for its channel
/// subscription (its messages are filled from the stream meanwhile).
const FOLLOW_POLL: Duration = Duration::from_millis(25);

/// Stream entries read per `XRANGE` of a fill.
const FILL_BATCH: usize = 1000;

/// The follower's reconnect backoff.
const RECONNECT: Backoff = Backoff {
    initial: Duration::from_millis(100),
    max: Duration::from_secs(5),
    multiplier: 2.0,
};

/// How long a topic's counter outlives its last publish or the last time
/// an instance that follows the topic refreshed it, beyond the history
/// TTL. The counter expires only once no message is retained, nobody has
/// published for this long and no instance follows the topic: numbering
/// then starts over at 1, and a client resuming past it is told `gap 1`.
const SEQ_GRACE: Duration = Duration::from_secs(3600);

/// How often the follower refreshes the counters of the topics it follows
/// (well within [`SEQ_GRACE`]).
const SEQ_REFRESH: Duration = Duration::from_secs(300);

/// Numbers a message, appends it to the topic's stream (capped, and
/// expiring with the history TTL) and announces it. With a publish id
/// (`PUBONCE`), a second call with the same id within the history TTL
/// returns the first one's number and does nothing else
/// (`wheel:{t}:once:<id>`, expiring with the history). The counter expires
/// [`SEQ_GRACE`] after the history would.
///
/// The numbering's epoch (`wheel:{t}:epoch`) is made by whoever touches the
/// topic first, a publish or an instance that starts following it
/// ([`NUMBERING`]); every announcement carries it. Lost with the counter
/// (a Redis that restarted empty), it is made anew, so that an instance
/// that followed the old numbering knows the new numbers are not repeats,
/// even of messages it never received.
const PUBLISH: &str = r"
if ARGV[8] ~= '' then
  local first = redis.call('GET', KEYS[4])
  if first then
    return tonumber(first)
  end
end
local seq = redis.call('INCR', KEYS[1])
if ARGV[8] ~= '' then
  redis.call('SET', KEYS[4], seq, 'PX', ARGV[4])
end
redis.call('PEXPIRE', KEYS[1], ARGV[6])
local epoch = redis.call('GET', KEYS[3])
if not epoch then
  epoch = ARGV[7]
  redis.call('SET', KEYS[3], epoch)
end
redis.call('PEXPIRE', KEYS[3], ARGV[6])
if tonumber(ARGV[1]) > 0 then
  redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[1], seq .. '-0', 'p', ARGV[3], 't', ARGV[2])
  redis.call('PEXPIRE', KEYS[2], ARGV[4])
end
redis.call('PUBLISH', ARGV[5], seq .. ' ' .. epoch .. ' ' .. ARGV[3])
return seq
";

/// The topic's numbering, its epoch made if there is none: what an
/// instance that follows the topic compares with what it delivered.
const NUMBERING: &str = r"
redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2])
return {redis.call('GET', KEYS[1]), redis.call('GET', KEYS[2])}
";

/// Redis's metrics (registered with the server's when `--redis` is set).
#[derive(Clone)]
pub(crate) struct RedisMetrics {
    /// 1 while the follower's connection is up.
    pub(crate) up: Gauge,
    /// Command round trips, in seconds.
    pub(crate) roundtrip: Histogram,
    /// Follower reconnects after a lost or refused connection.
    pub(crate) reconnects: Counter,
    /// Messages published through Redis (`out`) and delivered from it to
    /// local subscribers (`in`).
    pub(crate) relayed: Family<Label, Counter>,
    /// Messages read from a stream because their announcement was missed.
    pub(crate) filled: Counter,
    /// Commands that failed.
    pub(crate) errors: Counter,
}

impl RedisMetrics {
    /// Registers these metrics.
    fn register(&self, r: &mut Metrics) {
        let m = self;
        r.register(
            "wheel_redis_up",
            "1 while the Redis follower's connection is up (--redis)",
            m.up.clone(),
        );
        r.register(
            "wheel_redis_roundtrip_seconds",
            "Redis command round trips (publish, last number, history reads)",
            m.roundtrip.clone(),
        );
        r.register(
            "wheel_redis_reconnects",
            "Reconnects of the Redis follower after its connection was lost",
            m.reconnects.clone(),
        );
        r.register(
            "wheel_redis_relayed",
            "Messages published through Redis (direction out) and delivered from it to this instance's subscribers (direction in)",
            m.relayed.clone(),
        );
        r.register(
            "wheel_redis_filled",
            "Messages read from a topic's Redis stream because their announcement was missed (a reconnect, a new subscription)",
            m.filled.clone(),
        );
        r.register(
            "wheel_redis_errors",
            "Redis commands that failed (unreachable, timed out, refused)",
            m.errors.clone(),
        );
    }

    fn new() -> RedisMetrics {
        RedisMetrics {
            up: Gauge::default(),
            // 50 µs to about 1.6 s.
            roundtrip: Histogram::new(exponential_buckets(0.00005, 2.0, 16)),
            reconnects: Counter::default(),
            relayed: Family::default(),
            filled: Counter::default(),
            errors: Counter::default(),
        }
    }

    fn relayed(&self, direction: &'static str) -> Counter {
        self.relayed
            .get_or_create(&[("direction", direction)])
            .clone()
    }
}

/// Whether Redis answers: the follower's connection is up, and the last
/// command (of any command thread) succeeded. `wheel_redis_up`, `/readyz`
/// and `/healthz` say so; a change is logged once.
struct Health {
    follower: AtomicBool,
    commands: AtomicBool,
    up: Gauge,
}

impl Health {
    fn new(up: Gauge) -> Health {
        Health {
            follower: AtomicBool::new(false),
            commands: AtomicBool::new(true),
            up,
        }
    }

    fn is_up(&self) -> bool {
        self.follower.load(Ordering::Acquire) && self.commands.load(Ordering::Acquire)
    }

    fn publish(&self) {
        self.up.set(i64::from(self.is_up()));
    }

    /// The follower connected (or lost its connection).
    fn follower(&self, up: bool) {
        self.follower.store(up, Ordering::Release);
        self.publish();
    }

    /// A command succeeded.
    fn answered(&self) {
        if !self.commands.swap(true, Ordering::AcqRel) {
            info!("redis answers commands again: marked up");
        }
        self.publish();
    }

    /// A command failed or timed out.
    fn failed(&self, why: &str) {
        if self.commands.swap(false, Ordering::AcqRel) {
            warn!("redis command failed ({why}): marked down until one succeeds");
        }
        self.publish();
    }
}

/// The key names of a topic.
struct Keys {
    seq: String,
    log: String,
    epoch: String,
    channel: String,
    /// Where its presence changes are announced.
    presence: String,
}

impl Keys {
    fn of(topic: &str) -> Keys {
        Keys {
            seq: format!("wheel:{{{topic}}}:seq"),
            log: format!("wheel:{{{topic}}}:log"),
            epoch: format!("wheel:{{{topic}}}:epoch"),
            channel: format!("wheel:{{{topic}}}:msg"),
            presence: format!("wheel:{{{topic}}}:presence"),
        }
    }

    /// The topic of an announcement's channel.
    fn topic_of(channel: &str) -> Option<&str> {
        channel.strip_prefix("wheel:{")?.strip_suffix("}:msg")
    }

    /// The topic of a presence channel.
    fn presence_topic_of(channel: &str) -> Option<&str> {
        channel.strip_prefix("wheel:{")?.strip_suffix("}:presence")
    }
}

/// A message read from a topic's stream.
pub(crate) type Entry = (u64, Arc<[u8]>);

/// Stream entries as Redis answers `XRANGE`: id, then field-value pairs.
type RawEntries = Vec<(String, Vec<Vec<u8>>)>;

/// Stream entries read per `XREVRANGE` of a replay.
const REPLAY_PAGE: usize = 16;

/// An instance's link to Redis: the connection pool, the set of topics to
/// follow, and the follower's state.
pub(crate) struct Redis {
    target: Arc<Target>,
    timeout: Duration,
    retention: Retention,
    /// Commands for the command threads.
    jobs: (Sender<Job>, Receiver<Job>),
    /// Counts the follower's lost connections: a command thread whose
    /// connection is older reconnects before its next command, since Redis
    /// may have restarted under it.
    epoch: Arc<AtomicU64>,
    /// The publish script (sent by its hash; loaded again if Redis lost it).
    script: Arc<redis::Script>,
    /// The numbering script ([`NUMBERING`]).
    numbering: Arc<redis::Script>,
    /// Topics with local subscribers, for the follower.
    wanted: Mutex<Wanted>,
    /// Signalled when the follower's subscriptions change.
    subscribed: Condvar,
    /// Set when the server stops.
    stopping: AtomicBool,
    /// Its metrics.
    pub(crate) metrics: RedisMetrics,
    /// Whether it answers.
    health: Arc<Health>,
    relayed_in: Counter,
    relayed_out: Counter,
    /// The follower's thread, once spawned.
    follower: OnceLock<std::thread::Thread>,
    /// This instance's members, told to Redis.
    roster: Roster,
}

/// The topics the follower should follow, and whether that changed since it
/// last looked.
#[derive(Default)]
struct Wanted {
    topics: std::collections::HashSet<String>,
    changed: bool,
    /// The topics whose channels the follower's connection is subscribed
    /// to now.
    subscribed: std::collections::HashSet<String>,
}

impl Redis {
    /// A link to the Redis `client` names (see [`client`](target::client)). Connects
    /// lazily.
    /// Presence beats every `heartbeat`.
    pub(crate) fn new(
        target: Target,
        timeout: Duration,
        retention: Retention,
        heartbeat: Duration,
    ) -> Redis {
        let metrics = RedisMetrics::new();
        Redis {
            target: Arc::new(target),
            timeout,
            retention,
            jobs: crossbeam_channel::bounded(QUEUE),
            epoch: Arc::default(),
            script: Arc::new(redis::Script::new(PUBLISH)),
            numbering: Arc::new(redis::Script::new(NUMBERING)),
            wanted: Mutex::default(),
            subscribed: Condvar::new(),
            stopping: AtomicBool::new(false),
            relayed_in: metrics.relayed("in"),
            relayed_out: metrics.relayed("out"),
            health: Arc::new(Health::new(metrics.up.clone())),
            metrics,
            follower: OnceLock::new(),
            roster: Roster::new(heartbeat),
        }
    }

    /// Registers Redis's metrics and presence's (servers with `--redis`).
    pub(crate) fn register_metrics(&self, r: &mut Metrics) {
        self.metrics.register(r);
        self.roster.metrics.register(r);
    }

    /// Whether the follower's connection is up.
    pub(crate) fn is_up(&self) -> bool {
        self.health.is_up()
    }

    /// The command threads' part of the link.
    fn command_thread(&self) -> CommandThread {
        CommandThread {
            jobs: self.jobs.1.clone(),
            health: Arc::clone(&self.health),
            epoch: Arc::clone(&self.epoch),
            target: Arc::clone(&self.target),
            timeout: self.timeout,
            metrics: self.metrics.clone(),
        }
    }

    /// Runs `f` on a command thread's connection and waits for its answer.
    fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> RedisResult<T> + Send + 'static,
    ) -> Result<T, Unavailable> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        let job: Job = Box::new(move |conn| {
            let answer = match conn {
                // Redis answered with an error: the command did not run.
                // Anything else after sending (no answer in time, the
                // connection gone): it may have run.
                Ok(conn) => f(conn).map_err(|e| {
                    if e.code().is_some() {
                        Unavailable::refused(e.to_string())
                    } else {
                        Unavailable::unknown(e.to_string())
                    }
                }),
                Err(why) => Err(Unavailable::refused(why)),
            };
            let ok = answer.is_ok();
            let _ = tx.send(answer);
            ok
        });
        let deadline = Instant::now() + self.timeout;
        self.jobs
            .0
            .send_deadline(job, deadline)
            .map_err(|_| Unavailable::refused("too many commands waiting"))?;
        // The command thread's own timeouts end every command; this bound
        // only covers a thread that is stuck.
        match rx.recv_deadline(deadline + self.timeout * 2) {
            Ok(answer) => answer,
            Err(_) => {
                self.health
                    .failed("a command thread did not answer in time");
                Err(Unavailable::unknown("timed out"))
            }
        }
    }

    /// Publishes `payload` to `topic`: its sequence number.
    ///
    /// # Errors
    ///
    /// Redis unreachable or failing. The message may still have been stored
    /// if the connection failed after Redis ran the script (the publisher
    /// cannot know; subscribers then get it like any other).
    pub(crate) fn publish(
        &self,
        topic: &str,
        id: Option<&str>,
        payload: &[u8],
    ) -> Result<u64, Unavailable> {
        let keys = Keys::of(topic);
        // A retry of a `PUBONCE` is answered by the script with the first
        // one's number; the key of a plain publish is never set.
        let once = format!("wheel:{{{topic}}}:once:{}", id.unwrap_or_default());
        let id = id.unwrap_or_default().to_owned();
        let retention = self.retention;
        let script = Arc::clone(&self.script);
        let payload = payload.to_vec();
        let seq = self.with(move |conn| {
            script
                .key(&keys.seq)
                .key(&keys.log)
                .arg(retention.count)
                .arg(now_ms())
                .arg(&payload)
                .arg(retention.ttl.as_millis().max(1) as u64)
                .arg(&keys.channel)
                .arg(seq_ttl_ms(retention))
                .arg(format!("{:016x}", fastrand::u64(..)))
                .arg(&id)
                .key(&keys.epoch)
                .key(&once)
                .invoke::<u64>(conn)
        })?;
        self.relayed_out.inc();
        Ok(seq)
    }

    /// The topic's numbering: its latest sequence number (0 before its
    /// first message) and its epoch, made now if it has none.
    pub(crate) fn numbering(&self, topic: &str) -> Result<(u64, Option<String>), Unavailable> {
        let keys = Keys::of(topic);
        let script = Arc::clone(&self.numbering);
        let ttl = seq_ttl_ms(self.retention);
        self.with(move |conn| {
            script
                .key(&keys.seq)
                .key(&keys.epoch)
                .arg(format!("{:016x}", fastrand::u64(..)))
                .arg(ttl)
                .invoke::<(Option<u64>, Option<String>)>(conn)
                .map(|(last, epoch)| (last.unwrap_or_default(), epoch))
        })
    }

    /// The retained messages of `topic` numbered `from..=to` (`to`: `None`
    /// for the latest), at most `limit` of them, oldest first; messages
    /// older than the history TTL are left out.
    pub(crate) fn range(
        &self,
        topic: &str,
        from: u64,
        to: Option<u64>,
        limit: usize,
    ) -> Result<Vec<Entry>, Unavailable> {
        let key = Keys::of(topic).log;
        let end = to.map_or_else(|| "+".to_owned(), |to| format!("{to}-0"));
        let raw: RawEntries = self.with(move |conn| {
            redis::cmd("XRANGE")
                .arg(&key)
                .arg(format!("{from}-0"))
                .arg(&end)
                .arg("COUNT")
                .arg(limit)
                .query(conn)
        })?;
        Ok(self.entries(raw))
    }

    /// The newest retained messages of `topic` numbered above `after`,
    /// newest first, read in pages of [`REPLAY_PAGE`] until their payloads
    /// add up to `budget` bytes (so a resume never reads more of a large
    /// history than it can send).
    pub(crate) fn newest(
        &self,
        topic: &str,
        after: u64,
        budget: usize,
    ) -> Result<Vec<Entry>, Unavailable> {
        let mut got: Vec<Entry> = Vec::new();
        let mut spent = 0;
        let mut end = "+".to_owned();
        loop {
            let key = Keys::of(topic).log;
            let start = format!("{}-0", after + 1);
            let page_end = end.clone();
            let raw: RawEntries = self.with(move |conn| {
                redis::cmd("XREVRANGE")
                    .arg(&key)
                    .arg(&page_end)
                    .arg(&start)
                    .arg("COUNT")
                    .arg(REPLAY_PAGE)
                    .query(conn)
            })?;
            let full_page = raw.len() == REPLAY_PAGE;
            let oldest_read = raw
                .last()
                .and_then(|(id, _)| id.split_once('-')?.0.parse::<u64>().ok());
            for entry in self.entries(raw) {
                spent += entry.1.len();
                got.push(entry);
            }
            match oldest_read {
                Some(oldest) if full_page && spent < budget && oldest > after + 1 => {
                    end = format!("{}-0", oldest - 1);
                }
                _ => return Ok(got),
            }
        }
    }

    /// The messages of raw stream entries, those older than the history
    /// TTL left out.
    fn entries(&self, raw: RawEntries) -> Vec<Entry> {
        let oldest = now_ms().saturating_sub(self.retention.ttl.as_millis() as u64);
        raw.into_iter()
            .filter_map(|(id, fields)| {
                let seq = id.split_once('-')?.0.parse().ok()?;
                let (mut payload, mut at) = (None, 0u64);
                for pair in fields.chunks_exact(2) {
                    match pair[0].as_slice() {
                        b"p" => payload = Some(Arc::from(pair[1].as_slice())),
                        b"t" => {
                            at = std::str::from_utf8(&pair[1])
                                .ok()
                                .and_then(|t| t.parse().ok())
                                .unwrap_or(0);
                        }
                        _ => {}
                    }
                }
                (at > oldest).then_some((seq, payload?))
            })
            .collect()
    }

    /// Follows `topic` (its first local subscriber came).
    pub(crate) fn follow(&self, topic: &str) {
        let mut wanted = self.wanted.lock();
        if wanted.topics.insert(topic.to_owned()) {
            wanted.changed = true;
        }
    }

    /// Waits until the follower is subscribed to `topic`'s channels (it
    /// follows `topic`), at most `--redis-timeout`; whether it is. From
    /// then on, every presence change of another instance reaches this
    /// one: a watcher that waits for it and then asks `WHO` misses no
    /// member.
    pub(crate) fn await_following(&self, topic: &str) -> bool {
        let deadline = Instant::now() + self.timeout;
        let mut wanted = self.wanted.lock();
        while !wanted.subscribed.contains(topic) {
            if self
                .subscribed
                .wait_until(&mut wanted, deadline)
                .timed_out()
            {
                return wanted.subscribed.contains(topic);
            }
        }
        true
    }

    /// Stops following `topic` (its last local subscriber left).
    pub(crate) fn unfollow(&self, topic: &str) {
        let mut wanted = self.wanted.lock();
        if wanted.topics.remove(topic) {
            wanted.changed = true;
        }
    }

    /// Stops the follower (at the server's shutdown).
    pub(crate) fn stop(&self) {
        self.stopping.store(true, Ordering::Release);
        self.stop_roster();
        if let Some(thread) = self.follower.get() {
            thread.unpark();
        }
    }
}

/// What a command thread holds: not the server's state, so that the
/// thread ends when the server is dropped (the queue's sender with it).
struct CommandThread {
    jobs: Receiver<Job>,
    health: Arc<Health>,
    epoch: Arc<AtomicU64>,
    target: Arc<Target>,
    timeout: Duration,
    metrics: RedisMetrics,
}

impl CommandThread {
    /// Runs commands on one connection, reconnecting after a failure (a
    /// connection on which a command failed is not reused).
    fn run(self) {
        let mut conn: Option<(Connection, u64)> = None;
        while let Ok(job) = self.jobs.recv() {
            let epoch = self.epoch.load(Ordering::Acquire);
            if conn.as_ref().is_none_or(|(_, of)| *of != epoch) {
                match connect(&self.target, self.timeout) {
                    Ok(c) => conn = Some((c, epoch)),
                    Err(e) => {
                        self.metrics.errors.inc();
                        debug!("redis connect failed: {e}");
                        self.health.failed(&e.to_string());
                        job(Err(&e.to_string()));
                        continue;
                    }
                }
            }
            let start = Instant::now();
            if job(Ok(&mut conn.as_mut().expect("connected above").0)) {
                self.metrics
                    .roundtrip
                    .observe(start.elapsed().as_secs_f64());
                self.health.answered();
            } else {
                self.metrics.errors.inc();
                self.health.failed("a command failed");
                conn = None;
            }
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests;
