//! The follower: one connection subscribed to the announcements of the
//! topics this instance has subscribers for; it delivers each message into
//! the topics, fills what it missed from the streams, and reconnects with
//! backoff.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;
use std::time::Instant;

use redis::{Connection, RedisResult};
use tracing::{debug, info, warn};

use crate::server::topics::presence::parse_member_id;
use crate::server::topics::{Relayed, Retention, Sink};

use super::*;

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
    let roster_owner = Arc::clone(&owner);
    let roster = std::thread::Builder::new()
        .name("wheel-presence".into())
        .spawn(move || {
            let shared = sink(&roster_owner);
            let redis = shared.topics.redis().expect("spawned only with --redis");
            super::presence::run(&shared, redis);
        })?;
    let handle = std::thread::Builder::new()
        .name("wheel-redis".into())
        .spawn(move || {
            let shared = sink(&owner);
            let redis = shared.topics.redis().expect("spawned only with --redis");
            run(&shared, redis);
            // Joined here, so that the server's shutdown waits for the
            // presence thread's goodbye as it waits for the follower.
            let _ = roster.join();
        })?;
    Ok(handle)
}

/// The follower: connect, subscribe, fill, relay; on any failure, back off
/// and start over.
pub(super) fn run(shared: &Sink<'_>, redis: &Redis) {
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
pub(super) fn seq_ttl_ms(retention: Retention) -> u64 {
    (retention.ttl + SEQ_GRACE).as_millis() as u64
}

/// Refreshes the counters' expiry of the topics this instance follows, so
/// that a quiet topic with subscribers keeps its numbering.
pub(super) fn refresh_counters(redis: &Redis, topics: &std::collections::HashSet<String>) {
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
pub(super) fn relay(shared: &Sink<'_>, redis: &Redis, conn: &mut Connection) -> RedisResult<()> {
    let mut pubsub = conn.as_pubsub();
    pubsub.set_read_timeout(Some(FOLLOW_POLL))?;
    let mut followed = std::collections::HashSet::<String>::new();
    // Everything wanted is new on this connection.
    {
        let mut wanted = redis.wanted.lock();
        wanted.changed = true;
        wanted.subscribed.clear();
    }
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
            // A topic's messages, and its presence changes.
            let channels = |topics: &[String]| -> Vec<String> {
                topics
                    .iter()
                    .flat_map(|t| {
                        let keys = Keys::of(t);
                        [keys.channel, keys.presence]
                    })
                    .collect()
            };
            if !add.is_empty() {
                pubsub.subscribe(channels(&add))?;
            }
            if !remove.is_empty() {
                pubsub.unsubscribe(channels(&remove))?;
            }
            {
                let mut wanted = redis.wanted.lock();
                for topic in &remove {
                    wanted.subscribed.remove(topic);
                }
                wanted.subscribed.extend(add.iter().cloned());
            }
            redis.subscribed.notify_all();
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
        if let Some(topic) = Keys::presence_topic_of(msg.get_channel_name()) {
            presence_changed(shared, redis, topic, msg.get_payload_bytes());
            continue;
        }
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

/// Tells `topic`'s watchers here what a presence announcement says
/// (`<instance> [<member>]`, then an event per line): all of it from
/// another instance; from this one, only the `ONLINE`s, `OFFLINE`s and
/// overflows, which Redis alone can count (its joins and leaves were told
/// at once), and not to the member they are about.
fn presence_changed(shared: &Sink<'_>, redis: &Redis, topic: &str, body: &[u8]) {
    let Ok(body) = std::str::from_utf8(body) else {
        warn!(topic, "malformed presence announcement ignored");
        return;
    };
    let mut lines = body.split('\n');
    let mut from = lines.next().unwrap_or_default().split(' ');
    let ours = from.next() == Some(redis.instance());
    let subject = from
        .next()
        .and_then(parse_member_id)
        .filter(|_| ours)
        .map(|(conn, _)| conn);
    let events = lines
        .filter(|event| !(ours && (event.starts_with("JOIN ") || event.starts_with("LEAVE "))));
    shared
        .topics
        .relay_presence(shared.flushes, topic, subject, events);
}

/// Counts a relayed message's deliveries; whether it was delivered.
pub(super) fn count(shared: &Sink<'_>, redis: &Redis, relayed: Relayed) -> bool {
    let Relayed::Delivered { delivered, dropped } = relayed else {
        return false;
    };
    redis.relayed_in.inc();
    shared.metrics.deliveries.inc_by(delivered as u64);
    shared.metrics.undelivered.inc_by(dropped as u64);
    true
}

/// `<seq> <epoch> <payload>`.
pub(super) fn split_announcement(body: &[u8]) -> Option<(u64, &str, &[u8])> {
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
pub(super) fn fill(shared: &Sink<'_>, redis: &Redis, topic: &str, until: Option<u64>) {
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
