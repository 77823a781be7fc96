//! Topics across instances through a real Redis (`--redis`): every
//! subscriber on every instance gets every message once and in order,
//! resume works on any instance from the shared history, concurrent
//! publishers on two instances get unique contiguous numbers, and a Redis
//! outage refuses publishes visibly and loses nothing accepted.
//!
//! Each test starts its own `redis-server` (see `util/redis.rs`). The
//! fail-over through HAProxy with killed instances is in `failover.rs`.

mod util;

use std::collections::HashMap;
use std::ops::RangeInclusive;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Instant;

use util::redis::{RedisServer, redis_or_skip};
use util::{Client, Msg, PATIENCE, config, http, http_get, ms, sample, scrape, wait_until};
use wheel_server::Server;
use wheel_server::protocol::Message;
use wheel_server::server::pubsub::PubSub;

fn instance(redis: &RedisServer, history: usize) -> Server {
    util::init_logging();
    Server::with_handler(
        {
            let mut config = config();
            config.redis = Some(redis.url());
            config.history = history;
            config.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
            config
        },
        PubSub,
    )
    .unwrap()
}

fn ask(c: &mut Client, text: &str) -> String {
    c.send(Message::Data(text.as_bytes()));
    data(c)
}

fn data(c: &mut Client) -> String {
    match c.recv_msg() {
        Msg::Data(p) => String::from_utf8(p).unwrap(),
        other => panic!("expected DATA, got {other:?}"),
    }
}

/// `MSG <topic> <seq> <payload>` as (seq, payload).
fn msg(c: &mut Client, topic: &str) -> (u64, String) {
    let text = data(c);
    let rest = text
        .strip_prefix(&format!("MSG {topic} "))
        .unwrap_or_else(|| panic!("expected a MSG of {topic}, got {text:?}"));
    let (seq, payload) = rest.split_once(' ').unwrap();
    (seq.parse().unwrap(), payload.to_owned())
}

/// Publishes `<prefix><n>` to `topic` for each `n`, expecting each to be
/// numbered `n`.
fn publish_numbered(c: &mut Client, topic: &str, prefix: &str, ns: RangeInclusive<u64>) {
    for n in ns {
        assert_eq!(
            ask(c, &format!("PUB {topic} {prefix}{n}")),
            format!("OK PUB {topic} {n}")
        );
    }
}

/// Expects `MSG <topic> <n> <prefix><n>` for each `n`, in order.
fn expect_numbered(c: &mut Client, topic: &str, prefix: &str, ns: RangeInclusive<u64>) {
    for n in ns {
        assert_eq!(msg(c, topic), (n, format!("{prefix}{n}")));
    }
}

/// The sequence number in `OK PUB <topic> <seq>`.
fn acked(reply: &str, topic: &str) -> u64 {
    reply
        .strip_prefix(&format!("OK PUB {topic} "))
        .unwrap_or_else(|| panic!("expected OK PUB, got {reply:?}"))
        .parse()
        .unwrap()
}

#[test]
fn three_instances_deliver_every_message_once_in_the_same_order() {
    if !redis_or_skip() {
        return;
    }
    let redis = RedisServer::start();
    let servers: Vec<Server> = (0..3).map(|_| instance(&redis, 100)).collect();
    let mut subscribers: Vec<Client> = servers
        .iter()
        .map(|s| Client::connect(s.local_addr()))
        .collect();
    for s in &mut subscribers {
        assert_eq!(ask(s, "SUB room"), "OK SUB room 0");
    }
    let mut publishers: Vec<Client> = servers
        .iter()
        .map(|s| Client::connect(s.local_addr()))
        .collect();
    // Publishes on every instance, interleaved: what each was numbered.
    let mut sent = HashMap::new();
    for round in 0..20 {
        for (i, p) in publishers.iter_mut().enumerate() {
            let payload = format!("from-{i}-{round}");
            let seq = acked(&ask(p, &format!("PUB room {payload}")), "room");
            assert!(sent.insert(seq, payload).is_none(), "seq {seq} given twice");
        }
    }
    assert_eq!(sent.len(), 60);
    for (i, s) in subscribers.iter_mut().enumerate() {
        for want in 1..=60u64 {
            let (seq, payload) = msg(s, "room");
            assert_eq!(seq, want, "subscriber on instance {i}");
            assert_eq!(payload, sent[&seq], "subscriber on instance {i}");
        }
        assert!(
            s.try_recv(util::ms(100)).is_none(),
            "nothing after the last message"
        );
    }
    let metrics = scrape(servers[0].metrics_addr().unwrap());
    assert_eq!(
        sample(&metrics, "wheel_redis_relayed_total{direction=\"out\"}"),
        20.0
    );
    assert_eq!(
        sample(&metrics, "wheel_redis_relayed_total{direction=\"in\"}"),
        60.0
    );
    assert_eq!(sample(&metrics, "wheel_redis_up"), 1.0);
}

#[test]
fn a_subscriber_resumes_on_another_instance_from_the_shared_history() {
    if !redis_or_skip() {
        return;
    }
    let redis = RedisServer::start();
    let (a, b) = (instance(&redis, 5), instance(&redis, 5));
    let mut publisher = Client::connect(a.local_addr());
    publish_numbered(&mut publisher, "news", "m", 1..=8);
    // Everything after 5 is still held: recovered.
    let mut resumed = Client::connect(b.local_addr());
    assert_eq!(ask(&mut resumed, "SUB news 5"), "OK SUB news 8 recovered");
    expect_numbered(&mut resumed, "news", "m", 6..=8);
    // Live messages follow the replay, from any instance.
    assert_eq!(ask(&mut publisher, "PUB news m9"), "OK PUB news 9");
    assert_eq!(msg(&mut resumed, "news"), (9, "m9".into()));
    // History holds 5..9: after 1, messages 2..4 are lost.
    let mut late = Client::connect(b.local_addr());
    assert_eq!(ask(&mut late, "SUB news 1"), "OK SUB news 9 gap 2");
    expect_numbered(&mut late, "news", "m", 5..=9);
    // A number past the last: the topic started over.
    let mut stranger = Client::connect(b.local_addr());
    assert_eq!(ask(&mut stranger, "SUB news 100"), "OK SUB news 9 gap 1");
    expect_numbered(&mut stranger, "news", "m", 5..=9);
    // The same numbers on the instance that published.
    let mut local = Client::connect(a.local_addr());
    assert_eq!(ask(&mut local, "SUB news 7"), "OK SUB news 9 recovered");
    assert_eq!(msg(&mut local, "news"), (8, "m8".into()));
    assert_eq!(msg(&mut local, "news"), (9, "m9".into()));
}

#[test]
fn two_instances_racing_on_one_topic_get_unique_contiguous_numbers() {
    if !redis_or_skip() {
        return;
    }
    let redis = RedisServer::start();
    let servers = [instance(&redis, 10), instance(&redis, 10)];
    const THREADS: usize = 4;
    const EACH: usize = 250;
    let mut seqs: Vec<u64> = std::thread::scope(|scope| {
        let workers: Vec<_> = servers
            .iter()
            .flat_map(|s| (0..THREADS).map(move |_| s.handle()))
            .map(|handle| {
                scope.spawn(move || {
                    (0..EACH)
                        .map(|i| {
                            handle
                                .publish("race", format!("{i}").as_bytes())
                                .unwrap()
                                .seq
                        })
                        .collect::<Vec<u64>>()
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().unwrap())
            .collect()
    });
    seqs.sort_unstable();
    let total = (2 * THREADS * EACH) as u64;
    assert_eq!(seqs, (1..=total).collect::<Vec<u64>>());
}

#[test]
fn a_redis_outage_refuses_publishes_and_loses_nothing_accepted() {
    if !redis_or_skip() {
        return;
    }
    let mut redis = RedisServer::start();
    let (a, b) = (instance(&redis, 100), instance(&redis, 100));
    let (a_http, b_http) = (a.metrics_addr().unwrap(), b.metrics_addr().unwrap());
    let mut sub = Client::connect(b.local_addr());
    assert_eq!(ask(&mut sub, "SUB feed"), "OK SUB feed 0");
    let mut publisher = Client::connect(a.local_addr());
    publish_numbered(&mut publisher, "feed", "", 1..=5);
    expect_numbered(&mut sub, "feed", "", 1..=5);
    assert_eq!(http_get(b_http, "/readyz").0, 200);

    redis.kill();
    // Refused, visibly, on both paths. A command thread whose connection
    // was still open writes the command before it finds Redis gone: it
    // cannot know the command did not run, and says "unknown" (504).
    let reply = ask(&mut publisher, "PUB feed lost");
    assert!(
        reply.starts_with("ERR redis unavailable") || reply.starts_with("ERR unknown"),
        "{reply}"
    );
    let (status, body) = post(a_http, "/publish/feed", "lost");
    assert!(
        (status == 503 && body.starts_with("redis unavailable"))
            || (status == 504 && body.starts_with("unknown")),
        "{status} {body}"
    );
    // A subscription cannot be numbered either.
    let mut newcomer = Client::connect(a.local_addr());
    let reply = ask(&mut newcomer, "SUB other");
    assert!(reply.starts_with("ERR redis unavailable"), "{reply}");
    // Still serving: healthy, not ready; the subscriber keeps its
    // connection.
    assert!(wait_until(PATIENCE, || http_get(b_http, "/readyz").0 == 503));
    assert_eq!(
        http_get(b_http, "/healthz"),
        (200, "ok; redis down\n".into())
    );
    assert_eq!(ask(&mut sub, "PING still"), "PONG still");

    redis.restart();
    assert!(wait_until(PATIENCE, || http_get(b_http, "/readyz").0 == 200));
    assert!(wait_until(PATIENCE, || http_get(a_http, "/readyz").0 == 200));
    publish_numbered(&mut publisher, "feed", "", 6..=10);
    // Nothing refused arrives, nothing accepted is missing.
    expect_numbered(&mut sub, "feed", "", 6..=10);
    let metrics = scrape(b_http);
    assert!(sample(&metrics, "wheel_redis_reconnects_total") >= 1.0);

    // The follower's connection alone dropped while publishes go on: what
    // it missed is filled from the stream.
    let killed = redis.command("CLIENT KILL TYPE pubsub").unwrap();
    assert!(killed.starts_with(':'), "{killed}");
    publish_numbered(&mut publisher, "feed", "", 11..=40);
    let start = Instant::now();
    expect_numbered(&mut sub, "feed", "", 11..=40);
    eprintln!(
        "after the follower's connection was killed: caught up in {:?}, {} filled from the stream",
        start.elapsed(),
        sample(&scrape(b_http), "wheel_redis_filled_total")
    );
}

fn post(addr: std::net::SocketAddr, path: &str, body: &str) -> (u16, String) {
    http(
        addr,
        &format!(
            "POST {path} HTTP/1.0\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ),
    )
}

/// Under a steady stream of publishes, Redis is killed and restarted: every
/// publish is acknowledged, refused (never sent: never delivered), or
/// unknown (sent, then the connection went: it may have been stored, and is
/// then delivered like any other, the only kind allowed beyond the
/// acknowledged ones); subscribers on both instances receive every
/// acknowledged message, numbered without a gap, in order.
#[test]
fn publishes_under_load_across_a_redis_restart_are_acknowledged_or_refused_and_none_is_lost() {
    if !redis_or_skip() {
        return;
    }
    let mut redis = RedisServer::start();
    let (a, b) = (instance(&redis, 10_000), instance(&redis, 10_000));
    let mut subscribers = [
        Client::connect(a.local_addr()),
        Client::connect(b.local_addr()),
    ];
    for s in &mut subscribers {
        assert_eq!(ask(s, "SUB load"), "OK SUB load 0");
    }
    let handle = a.handle();
    let stop = Arc::new(AtomicBool::new(false));
    // Acknowledged and refused so far, for the test to wait on.
    let counts = Arc::new((AtomicUsize::new(0), AtomicUsize::new(0)));
    let publisher = {
        let (stop, counts) = (Arc::clone(&stop), Arc::clone(&counts));
        std::thread::spawn(move || {
            let (mut acked, mut refused, mut unknown) = (Vec::new(), Vec::new(), Vec::new());
            for n in 0..20_000u32 {
                if stop.load(Ordering::Acquire) {
                    break;
                }
                let payload = format!("p{n}");
                match handle.publish("load", payload.as_bytes()) {
                    Ok(p) => {
                        acked.push((p.seq, payload));
                        counts.0.fetch_add(1, Ordering::Release);
                    }
                    Err(wheel_server::server::SendError::Unavailable(_)) => {
                        refused.push(payload);
                        counts.1.fetch_add(1, Ordering::Release);
                    }
                    // Sent, then the connection went: may have been
                    // published.
                    Err(wheel_server::server::SendError::Unknown(_)) => {
                        unknown.push(payload);
                        counts.1.fetch_add(1, Ordering::Release);
                    }
                    Err(e) => panic!("unexpected error: {e}"),
                }
                // Pacing: a steady publisher, not a wait.
                std::thread::sleep(util::ms(2));
            }
            (acked, refused, unknown)
        })
    };
    // Waits on what the publisher saw, not on the clock: a busy machine
    // publishes fewer per second.
    let acked_now = || counts.0.load(Ordering::Acquire);
    assert!(wait_until(PATIENCE, || acked_now() >= 25));
    redis.kill();
    assert!(wait_until(PATIENCE, || counts.1.load(Ordering::Acquire) >= 1));
    redis.restart();
    // Publishing resumes once the command threads reconnect.
    let at_restart = acked_now();
    assert!(wait_until(PATIENCE, || acked_now() >= at_restart + 25));
    stop.store(true, Ordering::Release);
    let (acked, refused, unknown) = publisher.join().unwrap();
    assert!(
        acked.len() >= 50,
        "publishes before and after: {}",
        acked.len()
    );
    assert!(
        !refused.is_empty() || !unknown.is_empty(),
        "no publish met the outage"
    );
    let last = acked.last().unwrap().0;
    let n_of = |payload: &str| payload[1..].parse::<u32>().unwrap();
    let last_failed = refused
        .iter()
        .chain(&unknown)
        .map(|p| n_of(p))
        .max()
        .unwrap();
    assert!(
        n_of(&acked.last().unwrap().1) > last_failed,
        "publishes were acknowledged again after the restart"
    );
    for (i, s) in subscribers.iter_mut().enumerate() {
        let mut got = Vec::new();
        while got.last().is_none_or(|(seq, _)| *seq < last) {
            got.push(msg(s, "load"));
        }
        let seqs: Vec<u64> = got.iter().map(|(seq, _)| *seq).collect();
        assert_eq!(
            seqs,
            (1..=last).collect::<Vec<u64>>(),
            "subscriber {i}: no gap, in order"
        );
        for (seq, payload) in &acked {
            assert_eq!(
                &got[*seq as usize - 1].1,
                payload,
                "subscriber {i}, seq {seq}"
            );
        }
        let extra: Vec<&String> = got
            .iter()
            .filter(|(seq, _)| !acked.iter().any(|(a, _)| a == seq))
            .map(|(_, p)| p)
            .collect();
        // Answered "unknown": may have been published. Answered "redis
        // unavailable": never.
        assert!(
            extra.iter().all(|p| unknown.contains(p)),
            "subscriber {i}: delivered though refused: {extra:?} (refused {refused:?})"
        );
        eprintln!(
            "subscriber {i}: {} acknowledged, {} refused, {} unknown, {} received ({} of them answered unknown)",
            acked.len(),
            refused.len(),
            unknown.len(),
            got.len(),
            extra.len()
        );
    }
}

/// Every key a publish writes expires (issue 25: 20,000 counters were
/// left behind): the stream with the history TTL, the counter and its
/// epoch an hour after it. A one-message topic holds three keys in Redis
/// (and the instance is in the instances' registry).
#[test]
fn every_key_a_publish_writes_expires() {
    if !redis_or_skip() {
        return;
    }
    let redis = RedisServer::start();
    let a = instance(&redis, 5);
    let mut publisher = Client::connect(a.local_addr());
    assert_eq!(ask(&mut publisher, "PUB once m"), "OK PUB once 1");
    let ttl = |key: &str| -> i64 {
        let reply = redis.command(&format!("PTTL {key}")).unwrap();
        reply.trim_start_matches(':').parse().unwrap()
    };
    // --history-ttl is 5 minutes by default.
    let log = ttl("wheel:{once}:log");
    assert!((1..=300_000).contains(&log), "stream PTTL {log}");
    for key in ["wheel:{once}:seq", "wheel:{once}:epoch"] {
        let left = ttl(key);
        assert!((3_600_000..=3_900_000).contains(&left), "{key} PTTL {left}");
    }
    // Beside them, only the live instances' registry (presence), kept
    // while any instance lives: an instance that dies without a goodbye is
    // taken out of it by the next one to beat.
    assert!(wait_until(PATIENCE, || {
        redis.command("ZCARD wheel:instances").as_deref() == Some(":1")
    }));
    assert_eq!(redis.command("DBSIZE").as_deref(), Some(":4"));
}

/// A resume from 0 of a large history reads only what one replay may send
/// (half the outbox), in pages, and reports the rest as a gap: 100 x 64
/// KiB retained, a 1 MiB outbox.
#[test]
fn a_resume_of_a_large_history_reads_only_the_replay_budget() {
    if !redis_or_skip() {
        return;
    }
    let redis = RedisServer::start();
    let server = |history| {
        Server::with_handler(
            {
                let mut config = config();
                config.redis = Some(redis.url());
                config.history = history;
                config.max_frame = 128 * 1024;
                config.max_outbox = 1 << 20;
                config
            },
            PubSub,
        )
        .unwrap()
    };
    let (a, b) = (server(100), server(100));
    let mut publisher = Client::connect(a.local_addr());
    let payload = "p".repeat(64 * 1024);
    for n in 1..=100 {
        assert_eq!(
            ask(&mut publisher, &format!("PUB big {payload}")),
            format!("OK PUB big {n}")
        );
    }
    let mut resumer = Client::connect(b.local_addr());
    let answer = ask(&mut resumer, "SUB big 0");
    let first: u64 = answer
        .strip_prefix("OK SUB big 100 gap 1")
        .map(|_| 100 - (512 * 1024 / (64 * 1024 + 20)) as u64 + 1)
        .unwrap_or_else(|| panic!("{answer}"));
    // The newest that fit 512 KiB: 94..=100 (the 8th would pass it).
    let mut got = Vec::new();
    while let Some(util::Recv::Msg(Msg::Data(p))) = resumer.try_recv(ms(300)) {
        got.push(
            String::from_utf8_lossy(&p[..16])
                .split(' ')
                .nth(2)
                .unwrap()
                .parse::<u64>()
                .unwrap(),
        );
    }
    assert_eq!(got, (first..=100).collect::<Vec<_>>());
    assert!(got.len() < 10, "{} replayed", got.len());
}

/// Issue 27: Redis restarted empty while an instance's subscriber follows a
/// topic. Numbering starts over at 1; the subscriber is told `GAP t 1`
/// before the first renumbered message and then gets every acknowledged
/// message, none dropped as a repeat of an old number (before: 40 of 133
/// acknowledged messages never arrived, and the stream looked contiguous).
#[test]
fn a_redis_that_restarts_empty_renumbers_and_subscribers_are_told() {
    if !redis_or_skip() {
        return;
    }
    let mut redis = RedisServer::start();
    let (a, b) = (instance(&redis, 1000), instance(&redis, 1000));
    let mut subscriber = Client::connect(b.local_addr());
    assert_eq!(ask(&mut subscriber, "SUB t"), "OK SUB t 0");
    let mut publisher = Client::connect(a.local_addr());
    // Publishes `m<n>` until acknowledged; its number.
    let mut publish = |n: u32| -> u64 {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let answer = ask(&mut publisher, &format!("PUB t m{n}"));
            if let Some(seq) = answer.strip_prefix("OK PUB t ") {
                return seq.parse().unwrap();
            }
            // "unknown": written to the killed Redis's connection, which
            // can have run nothing.
            assert!(
                answer.starts_with("ERR redis unavailable") || answer.starts_with("ERR unknown"),
                "{answer}"
            );
            assert!(Instant::now() < deadline, "never acknowledged again");
            std::thread::sleep(ms(20));
        }
    };
    let before: Vec<u64> = (1..=40).map(&mut publish).collect();
    assert_eq!(before, (1..=40).collect::<Vec<_>>());
    for n in 1..=40 {
        assert_eq!(data(&mut subscriber), format!("MSG t {n} m{n}"));
    }
    redis.restart_empty();
    let after: Vec<u64> = (41..=60).map(&mut publish).collect();
    assert_eq!(after, (1..=20).collect::<Vec<_>>(), "numbering starts over");
    // Told first, then every acknowledged message of the new numbering.
    assert_eq!(data(&mut subscriber), "GAP t 1");
    for n in 1..=20 {
        assert_eq!(data(&mut subscriber), format!("MSG t {n} m{}", n + 40));
    }
    assert!(subscriber.try_recv(ms(100)).is_none(), "nothing more");
}

/// Issue 27: a frozen Redis (SIGSTOP). A publish is answered with what is
/// true: "unknown: may have been published" if it was sent (then it reaches
/// a subscriber at most once), "redis unavailable" if it could not be
/// (then never); /readyz says Redis is down while it is; after SIGCONT
/// publishing works again.
#[test]
fn a_frozen_redis_is_reported_down_and_timed_out_publishes_say_unknown() {
    if !redis_or_skip() {
        return;
    }
    let redis = RedisServer::start();
    let server = |timeout| {
        Server::with_handler(
            {
                let mut config = config();
                config.redis = Some(redis.url());
                config.redis_timeout = timeout;
                config.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
                config
            },
            PubSub,
        )
        .unwrap()
    };
    let (a, b) = (server(ms(300)), server(ms(300)));
    let admin = a.metrics_addr().unwrap();
    let mut subscriber = Client::connect(b.local_addr());
    assert_eq!(ask(&mut subscriber, "SUB t"), "OK SUB t 0");
    let mut publisher = Client::connect(a.local_addr());
    assert_eq!(ask(&mut publisher, "PUB t before"), "OK PUB t 1");
    assert_eq!(data(&mut subscriber), "MSG t 1 before");
    assert!(wait_until(PATIENCE, || http_get(admin, "/readyz").0 == 200));
    redis.pause();
    let answer = ask(&mut publisher, "PUB t during");
    let sent = answer.starts_with("ERR unknown: may have been published");
    assert!(
        sent || answer.starts_with("ERR redis unavailable"),
        "{answer}"
    );
    assert!(wait_until(PATIENCE, || http_get(admin, "/readyz").0 == 503));
    assert_eq!(
        http_get(admin, "/healthz"),
        (200, "ok; redis down\n".to_owned())
    );
    redis.resume();
    let deadline = Instant::now() + PATIENCE;
    let after = loop {
        let answer = ask(&mut publisher, "PUB t after");
        if let Some(seq) = answer.strip_prefix("OK PUB t ") {
            break seq.parse::<u64>().unwrap();
        }
        assert!(Instant::now() < deadline, "{answer}");
        std::thread::sleep(ms(50));
    };
    assert!(wait_until(PATIENCE, || http_get(admin, "/readyz").0 == 200));
    // "during" may have been published (then as 2, once), "after" is.
    let mut got = Vec::new();
    while got.last().is_none_or(|m: &String| !m.ends_with(" after")) {
        got.push(data(&mut subscriber));
    }
    let during = got.iter().filter(|m| m.ends_with(" during")).count();
    assert!(during <= usize::from(sent), "{answer}: {got:?}");
    assert_eq!(got.last().unwrap(), &format!("MSG t {after} after"));
}

/// Issue 27: the follower's link stops passing bytes, no FIN, no RST. The
/// follower's PING goes unanswered within --redis-timeout, its connection
/// is replaced, and its subscribers get every message published meanwhile,
/// in order (before: nothing, forever, and no log line).
#[test]
fn a_silent_redis_link_is_replaced_and_nothing_is_missed() {
    if !redis_or_skip() {
        return;
    }
    let redis = RedisServer::start();
    let proxy = util::redis::FaultProxy::start(redis.addr);
    let behind_proxy = Server::with_handler(
        {
            let mut config = config();
            config.redis = Some(format!("redis://{}/0", proxy.addr));
            config.redis_timeout = ms(300);
            config
        },
        PubSub,
    )
    .unwrap();
    let direct = instance(&redis, 100);
    let mut subscriber = Client::connect(behind_proxy.local_addr());
    assert_eq!(ask(&mut subscriber, "SUB t"), "OK SUB t 0");
    let mut publisher = Client::connect(direct.local_addr());
    assert_eq!(ask(&mut publisher, "PUB t m1"), "OK PUB t 1");
    assert_eq!(data(&mut subscriber), "MSG t 1 m1");
    proxy.silence_existing();
    for n in 2..=5 {
        assert_eq!(
            ask(&mut publisher, &format!("PUB t m{n}")),
            format!("OK PUB t {n}")
        );
    }
    for n in 2..=5 {
        assert_eq!(data(&mut subscriber), format!("MSG t {n} m{n}"));
    }
}

/// Issue 27: a publish that may or may not have happened is retried safely
/// with an id: `PUBONCE` (HTTP `Idempotency-Key`) is numbered once, on any
/// instance, and a retry gets the first number without a second delivery.
#[test]
fn a_publish_with_an_id_is_delivered_once_however_often_it_is_retried() {
    if !redis_or_skip() {
        return;
    }
    let redis = RedisServer::start();
    let (a, b) = (instance(&redis, 100), instance(&redis, 100));
    let mut subscriber = Client::connect(b.local_addr());
    assert_eq!(ask(&mut subscriber, "SUB t"), "OK SUB t 0");
    let mut on_a = Client::connect(a.local_addr());
    let mut on_b = Client::connect(b.local_addr());
    assert_eq!(ask(&mut on_a, "PUBONCE t k1 hello"), "OK PUB t 1");
    // Retried, here and on the other instance: the same number.
    assert_eq!(ask(&mut on_a, "PUBONCE t k1 hello"), "OK PUB t 1");
    assert_eq!(ask(&mut on_b, "PUBONCE t k1 hello"), "OK PUB t 1");
    let admin = a.metrics_addr().unwrap();
    let retry = http(
        admin,
        &format!(
            "POST /publish/t HTTP/1.1\r\nHost: {admin}\r\nIdempotency-Key: k1\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello"
        ),
    );
    assert_eq!(retry.0, 200, "{}", retry.1);
    assert!(retry.1.contains("\"seq\":1"), "{}", retry.1);
    assert_eq!(ask(&mut on_a, "PUBONCE t k2 world"), "OK PUB t 2");
    assert_eq!(ask(&mut on_a, "PUBONCE t bad!id x"), "ERR invalid id");
    assert_eq!(data(&mut subscriber), "MSG t 1 hello");
    assert_eq!(data(&mut subscriber), "MSG t 2 world");
    assert!(subscriber.try_recv(ms(200)).is_none(), "delivered once");
}
