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

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{Receiver, Sender};
use parking_lot::Mutex;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use redis::{Connection, RedisResult};
use tracing::{debug, info, warn};

use crate::backoff::Backoff;
use crate::server::conn::outbound::Flushes;
use crate::server::metrics::{Label, Metrics};
pub(crate) use crate::server::topics::Unavailable;
use crate::server::topics::{Relayed, Retention, Topics};

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
    /// Registers these metrics (servers with `--redis`).
    pub(crate) fn register(&self, r: &mut Metrics) {
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
}

impl Keys {
    fn of(topic: &str) -> Keys {
        Keys {
            seq: format!("wheel:{{{topic}}}:seq"),
            log: format!("wheel:{{{topic}}}:log"),
            epoch: format!("wheel:{{{topic}}}:epoch"),
            channel: format!("wheel:{{{topic}}}:msg"),
        }
    }

    /// The topic of an announcement's channel.
    fn topic_of(channel: &str) -> Option<&str> {
        channel.strip_prefix("wheel:{")?.strip_suffix("}:msg")
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
}

/// The topics the follower should follow, and whether that changed since it
/// last looked.
#[derive(Default)]
struct Wanted {
    topics: std::collections::HashSet<String>,
    changed: bool,
}

impl Redis {
    /// A link to the Redis `client` names (see [`client`]). Connects
    /// lazily.
    pub(crate) fn new(target: Target, timeout: Duration, retention: Retention) -> Redis {
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
            stopping: AtomicBool::new(false),
            relayed_in: metrics.relayed("in"),
            relayed_out: metrics.relayed("out"),
            health: Arc::new(Health::new(metrics.up.clone())),
            metrics,
            follower: OnceLock::new(),
        }
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
        if let Some(thread) = self.follower.get() {
            thread.unpark();
        }
    }
}

/// The client for the Redis at `url` (`redis://[:password@]host:port/db`);
/// `password`, if given, overrides the URL's.
///
/// # Errors
///
/// A URL the `redis` crate does not accept (the message holds no password).
pub(crate) fn client(url: &str, password: Option<&str>) -> Result<redis::Client, String> {
    let mut info = redis::IntoConnectionInfo::into_connection_info(url)
        .map_err(|e| format!("invalid URL: {e}"))?;
    if let Some(password) = password {
        let settings = info.redis_settings().clone().set_password(password);
        info = info.set_redis_settings(settings);
    }
    redis::Client::open(info).map_err(|e| format!("invalid URL: {e}"))
}

/// Where Redis is: one address, or whichever server the Sentinels name as
/// the master now (asked again on every connect, so that a fail-over is
/// followed).
pub(crate) enum Target {
    Direct(redis::Client),
    Sentinel(Mutex<redis::sentinel::SentinelClient>),
}

impl Target {
    /// A connection to the master, within `timeout`.
    fn connection(&self, timeout: Duration) -> RedisResult<Connection> {
        match self {
            Target::Direct(client) => client.get_connection_with_timeout(timeout),
            Target::Sentinel(sentinel) => {
                let client = sentinel.lock().get_client()?;
                client.get_connection_with_timeout(timeout)
            }
        }
    }
}

/// Where `config` says Redis is: `--redis URL`, or `--redis-sentinel` with
/// `--redis-master-name`; `None` without either.
///
/// # Errors
///
/// A URL the `redis` crate does not accept, or Sentinel settings that do
/// not go together (the message holds no password).
pub(crate) fn target(config: &crate::server::config::Config) -> Result<Option<Target>, String> {
    let password = config.redis_password.as_deref();
    match (
        &config.redis,
        config.redis_sentinels.as_slice(),
        &config.redis_master_name,
    ) {
        (None, [], None) => Ok(None),
        (Some(url), [], None) => client(url, password).map(|c| Some(Target::Direct(c))),
        (None, [_, ..], Some(name)) => {
            let mut node = redis::RedisConnectionInfo::default();
            if let Some(password) = password {
                node = node.set_password(password);
            }
            let info = redis::sentinel::SentinelNodeConnectionInfo::default()
                .set_redis_connection_info(node);
            let nodes: Vec<String> = config
                .redis_sentinels
                .iter()
                .map(|addr| format!("redis://{addr}"))
                .collect();
            redis::sentinel::SentinelClient::build(
                nodes,
                name.clone(),
                Some(info),
                redis::sentinel::SentinelServerType::Master,
            )
            .map(|c| Some(Target::Sentinel(Mutex::new(c))))
            .map_err(|e| format!("invalid Sentinel address: {e}"))
        }
        (Some(_), [_, ..], _) => {
            Err("give --redis URL or --redis-sentinel with --redis-master-name, not both".into())
        }
        (_, [], Some(_)) => Err("--redis-master-name needs --redis-sentinel".into()),
        (None, [_, ..], None) => Err("--redis-sentinel needs --redis-master-name".into()),
    }
}

fn connect(target: &Target, timeout: Duration) -> RedisResult<Connection> {
    let conn = target.connection(timeout)?;
    conn.set_read_timeout(Some(timeout))?;
    conn.set_write_timeout(Some(timeout))?;
    Ok(conn)
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

/// What the follower delivers into: the topics, the timer's flush list,
/// and the delivery counters. The server hands it a way to reach them
/// from what it shares, so that the follower needs nothing of the layers
/// above.
pub(crate) struct Sink<'a> {
    pub(crate) topics: &'a Topics,
    pub(crate) flushes: &'a Flushes,
    pub(crate) metrics: &'a Metrics,
}

/// Starts the command threads (they end with the server) and the follower
/// (stopped by [`Redis::stop`]), which reaches its [`Sink`] in `owner`
/// through `sink`.
pub(crate) fn spawn<T: Send + Sync + 'static>(
    owner: Arc<T>,
    sink: fn(&T) -> Sink<'_>,
) -> std::io::Result<JoinHandle<()>> {
    let redis = sink(&owner)
        .topics
        .redis()
        .expect("spawned only with --redis");
    for _ in 0..POOL_SIZE {
        let commands = redis.command_thread();
        std::thread::Builder::new()
            .name("wheel-redis-cmd".into())
            .spawn(move || commands.run())?;
    }
    let handle = std::thread::Builder::new()
        .name("wheel-redis".into())
        .spawn(move || {
            let shared = sink(&owner);
            let redis = shared.topics.redis().expect("spawned only with --redis");
            run(&shared, redis);
        })?;
    Ok(handle)
}

/// The follower: connect, subscribe, fill, relay; on any failure, back off
/// and start over.
fn run(shared: &Sink<'_>, redis: &Redis) {
    let _ = redis.follower.set(std::thread::current());
    let mut rng = fastrand::Rng::new();
    let mut failures = 0u32;
    let mut ever_up = false;
    while !redis.stopping.load(Ordering::Acquire) {
        let conn = redis.target.connection(redis.timeout);
        let mut conn = match conn {
            Ok(conn) => conn,
            Err(e) => {
                failures += 1;
                redis.health.follower(false);
                let delay = RECONNECT.delay(failures, &mut rng);
                if failures == 1 {
                    warn!("redis unreachable: {e}; retrying with backoff");
                } else {
                    debug!(attempt = failures, ?delay, "redis unreachable: {e}");
                }
                std::thread::park_timeout(delay);
                continue;
            }
        };
        if ever_up {
            redis.metrics.reconnects.inc();
        }
        ever_up = true;
        match relay(shared, redis, &mut conn) {
            Ok(()) => break,
            Err(e) => {
                redis.health.follower(false);
                redis.epoch.fetch_add(1, Ordering::AcqRel);
                warn!("redis connection lost: {e}; reconnecting");
                failures = 1;
                std::thread::park_timeout(RECONNECT.delay(1, &mut rng));
            }
        }
    }
    redis.health.follower(false);
}

/// How long a topic's counter lives after a publish or a refresh, in ms.
fn seq_ttl_ms(retention: Retention) -> u64 {
    (retention.ttl + SEQ_GRACE).as_millis() as u64
}

/// Refreshes the counters' expiry of the topics this instance follows, so
/// that a quiet topic with subscribers keeps its numbering.
fn refresh_counters(redis: &Redis, topics: &std::collections::HashSet<String>) {
    let ttl = seq_ttl_ms(redis.retention);
    let keys: Vec<String> = topics
        .iter()
        .flat_map(|t| {
            let keys = Keys::of(t);
            [keys.seq, keys.epoch]
        })
        .collect();
    for chunk in keys.chunks(FILL_BATCH) {
        let chunk = chunk.to_vec();
        let refreshed = redis.with(move |conn| {
            let mut pipe = redis::pipe();
            for key in &chunk {
                pipe.cmd("PEXPIRE").arg(key).arg(ttl).ignore();
            }
            pipe.query::<()>(conn)
        });
        if let Err(e) = refreshed {
            debug!("counter refresh failed (retried in {SEQ_REFRESH:?}): {e}");
            return;
        }
    }
}

/// One connection's life: subscribe to every wanted topic, fill each from
/// its stream, then deliver announcements until the connection fails or
/// the server stops.
fn relay(shared: &Sink<'_>, redis: &Redis, conn: &mut Connection) -> RedisResult<()> {
    let mut pubsub = conn.as_pubsub();
    pubsub.set_read_timeout(Some(FOLLOW_POLL))?;
    let mut followed = std::collections::HashSet::<String>::new();
    // Everything wanted is new on this connection.
    redis.wanted.lock().changed = true;
    let mut first = true;
    let mut refreshed = Instant::now();
    let mut pinged = Instant::now();
    while !redis.stopping.load(Ordering::Acquire) {
        // A link that stops passing bytes with no FIN or RST (a NAT or a
        // firewall that forgot the flow) would leave the follower waiting
        // for announcements forever: a PING every --redis-timeout, answered
        // within it, or the connection is replaced (and every topic filled
        // from its stream on the new one).
        if pinged.elapsed() >= redis.timeout {
            pubsub.set_read_timeout(Some(redis.timeout))?;
            pubsub.ping::<redis::Value>()?;
            pubsub.set_read_timeout(Some(FOLLOW_POLL))?;
            pinged = Instant::now();
            // A round trip that succeeds: Redis answers again.
            redis.health.answered();
        }
        if refreshed.elapsed() >= SEQ_REFRESH {
            refresh_counters(redis, &followed);
            refreshed = Instant::now();
        }
        let changes = {
            let mut wanted = redis.wanted.lock();
            std::mem::take(&mut wanted.changed).then(|| {
                let add: Vec<String> = wanted.topics.difference(&followed).cloned().collect();
                let remove: Vec<String> = followed.difference(&wanted.topics).cloned().collect();
                (add, remove)
            })
        };
        if let Some((add, remove)) = changes {
            if !add.is_empty() {
                let channels: Vec<String> = add.iter().map(|t| Keys::of(t).channel).collect();
                pubsub.subscribe(&channels)?;
            }
            if !remove.is_empty() {
                let channels: Vec<String> = remove.iter().map(|t| Keys::of(t).channel).collect();
                pubsub.unsubscribe(&channels)?;
            }
            for topic in &remove {
                followed.remove(topic);
            }
            // Anything published before the subscription took effect is in
            // the stream.
            for topic in add {
                fill(shared, redis, &topic, None);
                followed.insert(topic);
            }
            if first {
                first = false;
                redis.health.answered();
                redis.health.follower(true);
                info!(topics = followed.len(), "redis connected; following topics");
            }
        }
        let msg = match pubsub.get_message() {
            Ok(msg) => msg,
            Err(e) if e.is_timeout() => continue,
            Err(e) => return Err(e),
        };
        let Some(topic) = Keys::topic_of(msg.get_channel_name()) else {
            continue;
        };
        let body = msg.get_payload_bytes();
        let Some((seq, epoch, payload)) = split_announcement(body) else {
            warn!(topic, "malformed announcement ignored");
            continue;
        };
        let relayed = shared
            .topics
            .relay(shared.flushes, topic, seq, Some(epoch), payload, false);
        if relayed == Relayed::Ahead {
            // An announcement was missed: the stream has it.
            fill(shared, redis, topic, Some(seq));
        } else {
            count(shared, redis, relayed);
        }
    }
    Ok(())
}

/// Counts a relayed message's deliveries; whether it was delivered.
fn count(shared: &Sink<'_>, redis: &Redis, relayed: Relayed) -> bool {
    let Relayed::Delivered { delivered, dropped } = relayed else {
        return false;
    };
    redis.relayed_in.inc();
    shared.metrics.deliveries.inc_by(delivered as u64);
    shared.metrics.undelivered.inc_by(dropped as u64);
    true
}

/// `<seq> <epoch> <payload>`.
fn split_announcement(body: &[u8]) -> Option<(u64, &str, &[u8])> {
    let space = body.iter().position(|&b| b == b' ')?;
    let seq = std::str::from_utf8(&body[..space]).ok()?.parse().ok()?;
    let rest = &body[space + 1..];
    let space = rest.iter().position(|&b| b == b' ')?;
    let epoch = std::str::from_utf8(&rest[..space]).ok()?;
    Some((seq, epoch, &rest[space + 1..]))
}

/// Delivers what the stream holds after what `topic`'s local subscribers
/// have seen, up to `until` (or all of it). A failure is left to the next
/// announcement or reconnect, which fill again.
fn fill(shared: &Sink<'_>, redis: &Redis, topic: &str, until: Option<u64>) {
    if until.is_none() {
        // After a reconnect: a Redis that lost data (restarted without its
        // append-only file, or fail-over to a replica that lagged) numbers
        // anew, under a new epoch, or below what was delivered here. Its
        // messages must not be taken for old ones: the subscribers are told
        // (`GAP <topic> 1`) and get the new numbering from its start.
        if let Ok((last, epoch)) = redis.numbering(topic)
            && shared
                .topics
                .renumbered(shared.flushes, topic, last, epoch.as_deref())
        {
            warn!(
                topic,
                redis_last = last,
                "redis lost this topic's numbering (a new epoch, or a number below what was delivered): subscribers told GAP 1, numbering starts over"
            );
        }
    }
    loop {
        let Some(next) = shared.topics.delivered(topic).map(|seq| seq + 1) else {
            return; // nobody local follows it any more
        };
        if until.is_some_and(|until| next > until) {
            return;
        }
        let entries = match redis.range(topic, next, until, FILL_BATCH) {
            Ok(entries) => entries,
            Err(e) => {
                debug!(topic, "fill failed: {e}");
                return;
            }
        };
        let n = entries.len();
        for (seq, payload) in entries {
            // Past a hole the stream no longer holds (trimmed by the cap or
            // the TTL before this instance read it), delivery goes on.
            let relayed = shared
                .topics
                .relay(shared.flushes, topic, seq, None, &payload, true);
            if count(shared, redis, relayed) {
                redis.metrics.filled.inc();
            }
        }
        if n < FILL_BATCH {
            return;
        }
    }
}

#[cfg(test)]
mod tests;
