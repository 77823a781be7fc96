//! Fail-over with topics shared through Redis: three `wheel-server
//! --service pubsub --redis` instances behind HAProxy, 300 subscribers (the
//! crate's client library, which resumes its topics after a reconnect), and
//! a publisher sending 50 messages a second to 10 topics through the HTTP
//! API of an instance that stays up. One instance gets SIGTERM, later
//! another gets SIGKILL; every client must end with every message of its
//! topics, exactly once and in order.
//!
//! Reconnect times and the worst gap in delivery are printed with
//! `cargo test --test failover -- --nocapture`.
//!
//! Needs HAProxy and redis-server (`.ci/run` installs both). Without them
//! the test says SKIPPED on stderr; under CI it fails.

mod util;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use util::haproxy::{HaProxy, fleet_client, free_addr, haproxy_or_skip};
use util::redis::{RedisServer, redis_or_skip};
use util::{PATIENCE, ServerProcess, publish, subscribers, wait_until};
use wheel_server::client::{self, ClientConfig, Event};

const CLIENTS: usize = 300;
const TOPICS: usize = 10;
/// Messages published per second, over all topics.
const RATE: u32 = 50;
/// How long the publisher runs.
const PUBLISHING: Duration = Duration::from_secs(6);

fn topic(n: usize) -> String {
    format!("room{}", n % TOPICS)
}

/// What one client saw.
#[derive(Default)]
struct Seen {
    /// Per topic: (seq, payload, arrival).
    messages: HashMap<String, Vec<(u64, String, Instant)>>,
    /// When each connection died, and when the next one was up.
    dead_at: Option<Instant>,
    reconnects: Vec<Duration>,
    gaps: Vec<String>,
}

/// An instance on ports of its own choosing (port 0): a port picked free
/// beforehand may be taken by another test before the instance binds it.
fn instance(redis: &RedisServer) -> ServerProcess {
    ServerProcess::start(&[
        "--service",
        "pubsub",
        "--redis",
        &redis.url(),
        "--history",
        "1000",
        "--listen",
        "127.0.0.1:0",
        "--metrics-listen",
        "127.0.0.1:0",
        "--proxy-protocol",
        "--shutdown-grace",
        "2s",
    ])
}

#[test]
fn killed_instances_lose_no_message_of_any_subscriber() {
    if !haproxy_or_skip() || !redis_or_skip() {
        return;
    }
    let redis = RedisServer::start();
    let mut instances: Vec<Option<ServerProcess>> =
        (0..3).map(|_| Some(instance(&redis))).collect();
    let addrs: Vec<(SocketAddr, SocketAddr)> = instances
        .iter()
        .flatten()
        .map(|s| (s.addr, s.metrics_addr()))
        .collect();
    let front = free_addr();
    let haproxy = HaProxy::start(front, &addrs);
    assert!(haproxy.wait_status(&[("s0", "UP"), ("s1", "UP"), ("s2", "UP")]));

    // Every client subscribes to two topics.
    let seen: Vec<Arc<Mutex<Seen>>> = (0..CLIENTS).map(|_| Arc::default()).collect();
    let clients: Vec<client::Client> = (0..CLIENTS)
        .map(|i| {
            client::Client::start(ClientConfig {
                subscriptions: vec![topic(i), topic(i + 3)],
                event_capacity: 100_000,
                ..fleet_client(front, i as u64)
            })
            .unwrap()
        })
        .collect();
    let readers: Vec<_> = clients
        .iter()
        .zip(&seen)
        .map(|(c, seen)| {
            let events = c.events().clone();
            let seen = Arc::clone(seen);
            std::thread::spawn(move || {
                for event in events {
                    let mut s = seen.lock();
                    match event {
                        Event::Message {
                            topic,
                            seq,
                            payload,
                        } => s.messages.entry(topic).or_default().push((
                            seq,
                            String::from_utf8(payload).unwrap(),
                            Instant::now(),
                        )),
                        Event::Dead { .. } => s.dead_at = Some(Instant::now()),
                        Event::Connected { .. } => {
                            if let Some(dead) = s.dead_at.take() {
                                s.reconnects.push(dead.elapsed());
                            }
                        }
                        Event::Gap { topic, .. } => s.gaps.push(topic),
                        _ => {}
                    }
                }
            })
        })
        .collect();
    // Every subscription is in place before the first publish.
    assert!(
        wait_until(PATIENCE * 3, || addrs
            .iter()
            .map(|&(_, m)| subscribers(m, None))
            .sum::<usize>()
            == 2 * CLIENTS),
        "not every client subscribed"
    );

    // The publisher, on the instance that stays up (s2).
    let publish_to = addrs[2].1;
    let start = Instant::now();
    let publisher = std::thread::spawn(move || {
        let mut published: HashMap<String, Vec<(u64, String)>> = HashMap::new();
        let every = Duration::from_secs(1) / RATE;
        let mut n = 0usize;
        while start.elapsed() < PUBLISHING {
            let t = topic(n);
            let payload = format!("m{n}");
            let seq = publish(publish_to, &t, &payload);
            published.entry(t).or_default().push((seq, payload));
            n += 1;
            let next = start + every * n as u32;
            std::thread::sleep(next.saturating_duration_since(Instant::now()));
        }
        published
    });
    std::thread::sleep(PUBLISHING / 4);
    let terminated = instances[0].take().unwrap();
    terminated.signal(libc::SIGTERM);
    std::thread::sleep(PUBLISHING / 3);
    let killed = instances[1].take().unwrap();
    killed.signal(libc::SIGKILL);
    let published = publisher.join().unwrap();
    let total: usize = published.values().map(Vec::len).sum();

    // Everyone catches up.
    let complete = |i: usize| {
        let s = seen[i].lock();
        [topic(i), topic(i + 3)]
            .iter()
            .all(|t| s.messages.get(t).map_or(0, Vec::len) >= published.get(t).map_or(0, Vec::len))
    };
    let caught_up = wait_until(PATIENCE * 2, || (0..CLIENTS).all(complete));
    let behind = (0..CLIENTS).filter(|&i| !complete(i)).count();

    // Exactly once, in order, with the published payloads.
    let mut received = 0usize;
    let mut lost = 0usize;
    let mut worst_gap = Duration::ZERO;
    let mut reconnects = Vec::new();
    for (i, seen) in seen.iter().enumerate() {
        let s = seen.lock();
        assert!(
            s.gaps.is_empty(),
            "client {i} was told of a gap: {:?}",
            s.gaps
        );
        reconnects.extend(s.reconnects.iter().copied());
        for t in [topic(i), topic(i + 3)] {
            let want = published.get(&t).cloned().unwrap_or_default();
            let got: Vec<(u64, String)> = s
                .messages
                .get(&t)
                .map(|m| m.iter().map(|(seq, p, _)| (*seq, p.clone())).collect())
                .unwrap_or_default();
            received += got.len();
            lost += want.iter().filter(|w| !got.contains(w)).count();
            assert_eq!(got, want, "client {i}, topic {t}");
            if let Some(m) = s.messages.get(&t) {
                for pair in m.windows(2) {
                    worst_gap = worst_gap.max(pair[1].2 - pair[0].2);
                }
            }
        }
    }
    reconnects.sort();
    let pct = |p: usize| {
        reconnects
            .get(reconnects.len() * p / 100)
            .copied()
            .unwrap_or_default()
    };
    eprintln!(
        "fail-over: {total} messages published to {TOPICS} topics, {received} received by {CLIENTS} clients ({} expected), {lost} lost; {} reconnects, p50 {:?}, p99 {:?}, max {:?}; worst gap between two messages of a topic at a client {worst_gap:?} (published every {:?} per topic)",
        2 * total * CLIENTS / TOPICS,
        reconnects.len(),
        pct(50),
        pct(99),
        reconnects.last().copied().unwrap_or_default(),
        Duration::from_secs(1) * TOPICS as u32 / RATE,
    );
    assert!(caught_up, "{behind} clients never caught up");
    assert_eq!(lost, 0);
    assert!(
        reconnects.len() >= CLIENTS / 3,
        "the killed instances' clients reconnected: {} reconnects",
        reconnects.len()
    );
    for client in clients {
        client.close();
    }
    for reader in readers {
        reader.join().unwrap();
    }
    drop(killed);
    drop(terminated);
    drop(haproxy);
}
