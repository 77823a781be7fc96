//! A zero-downtime restart on one box: the new process starts beside the
//! old one on the same port (`--reuse-port`), the old one gets SIGTERM,
//! stops accepting and drains (CLOSE 1001), and its clients reconnect to
//! the new one and resume their topics from the history both share
//! through Redis. Every subscriber must end with every message, exactly
//! once and in order, no gap, and no connect refused.
//!
//! Needs redis-server (`.ci/run` installs it). Without it the test says
//! SKIPPED on stderr; under CI it fails.

mod util;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use util::haproxy::{fleet_client, free_addr};
use util::redis::{RedisServer, redis_or_skip};
use util::{PATIENCE, ServerProcess, publish, subscribers, wait_until};
use wheel_server::client::{self, ClientConfig, Event};

const CLIENTS: usize = 20;
const TOPIC: &str = "news";

/// An instance on the shared port, sharing topics through `redis`.
fn instance(redis: &RedisServer, addr: SocketAddr) -> ServerProcess {
    ServerProcess::start(&[
        "--service",
        "pubsub",
        "--redis",
        &redis.url(),
        "--history",
        "1000",
        "--listen",
        &addr.to_string(),
        "--reuse-port",
        "--metrics-listen",
        "127.0.0.1:0",
        "--shutdown-grace",
        "2s",
    ])
}

#[derive(Default)]
struct Seen {
    messages: Vec<(u64, String)>,
    connects: usize,
    refused: usize,
    gaps: usize,
}

#[test]
fn a_restart_beside_the_old_process_loses_and_refuses_nothing() {
    if !redis_or_skip() {
        return;
    }
    let redis = RedisServer::start();
    // A port both processes bind (a free one now; with SO_REUSEPORT the
    // second bind succeeds).
    let addr = free_addr();
    let old = instance(&redis, addr);
    let seen: Vec<Arc<Mutex<Seen>>> = (0..CLIENTS).map(|_| Arc::default()).collect();
    let clients: Vec<client::Client> = (0..CLIENTS)
        .map(|i| {
            client::Client::start(ClientConfig {
                subscriptions: vec![TOPIC.into()],
                event_capacity: 100_000,
                ..fleet_client(addr, i as u64)
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
                        Event::Message { seq, payload, .. } => {
                            s.messages.push((seq, String::from_utf8(payload).unwrap()));
                        }
                        Event::Connected { .. } => s.connects += 1,
                        Event::ConnectFailed { .. } => s.refused += 1,
                        Event::Gap { .. } => s.gaps += 1,
                        _ => {}
                    }
                }
            })
        })
        .collect();
    let subscribed = |admin| subscribers(admin, Some(TOPIC));
    let old_admin = old.metrics_addr();
    assert!(wait_until(PATIENCE, || subscribed(old_admin) == CLIENTS));

    // The new process, beside the old one on the same port; the publisher
    // on its admin endpoint, paced, while the old one drains.
    let new = instance(&redis, addr);
    let new_admin = new.metrics_addr();
    let publish_to = new_admin;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let publisher = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let mut published = Vec::new();
            for n in 0..10_000 {
                if stop.load(std::sync::atomic::Ordering::Acquire) {
                    break;
                }
                let payload = format!("m{n}");
                published.push((publish(publish_to, TOPIC, &payload), payload));
                // Pacing: a steady publisher, not a wait.
                std::thread::sleep(Duration::from_millis(20));
            }
            published
        })
    };
    let delivered = |n: usize| seen.iter().all(|s| s.lock().messages.len() >= n);
    assert!(wait_until(PATIENCE, || delivered(10)));
    let restarted = Instant::now();
    old.signal(libc::SIGTERM);
    // Every client was moved: connected a second time, to the new process.
    assert!(
        wait_until(PATIENCE * 2, || seen.iter().all(|s| s.lock().connects >= 2)
            && subscribed(new_admin) == CLIENTS),
        "not every client moved to the new process"
    );
    let moved_in = restarted.elapsed();
    // Some more after the move, then stop.
    let after = seen.iter().map(|s| s.lock().messages.len()).max().unwrap();
    assert!(wait_until(PATIENCE, || delivered(after + 10)));
    stop.store(true, std::sync::atomic::Ordering::Release);
    let published = publisher.join().unwrap();
    assert!(wait_until(PATIENCE, || delivered(published.len())));
    eprintln!(
        "restart: {} messages published, all {CLIENTS} clients moved in {moved_in:?}",
        published.len()
    );
    for (i, s) in seen.iter().enumerate() {
        let s = s.lock();
        assert_eq!(s.refused, 0, "client {i}: a connect was refused");
        assert_eq!(s.gaps, 0, "client {i}: a gap was reported");
        assert_eq!(
            s.messages, published,
            "client {i}: not every message exactly once and in order"
        );
    }
    for client in clients {
        client.close();
    }
    for reader in readers {
        reader.join().unwrap();
    }
}
