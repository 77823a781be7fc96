//! Issue 27's proof: a numbered stream published through two instances
//! while Redis and the links to it fail in turn (Redis SIGKILLed and
//! restarted empty, Redis frozen, the links silenced, reset, slowed), and a
//! checker that looks at every message each subscriber got. The counts go
//! to docs/RELIABILITY.md.

mod util;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use util::redis::{FaultProxy, RedisServer, redis_or_skip};
use util::{Client, Msg, PATIENCE, config, ms};
use wheel_server::Server;
use wheel_server::protocol::Message;
use wheel_server::server::pubsub::PubSub;
use wheel_server::server::{SendError, ServerHandle};

/// What the publisher was told about message `m<n>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Told {
    /// `OK`: it must be delivered, once, or a GAP must say it was lost.
    Acknowledged,
    /// Refused before it reached Redis: it must never be delivered.
    Refused,
    /// It may have been published: at most once.
    Unknown,
}

/// Publishes `m<n>` with id `n`, retrying (safely: same id) while the
/// outcome is unknown, up to three tries.
fn publish(handle: &ServerHandle, n: u32) -> Told {
    let mut told = Told::Refused;
    for _ in 0..3 {
        match handle.publish_once("f", &format!("n{n}"), format!("m{n}").as_bytes()) {
            Ok(_) => return Told::Acknowledged,
            Err(SendError::Unavailable(_)) if told == Told::Refused => return Told::Refused,
            Err(SendError::Unavailable(_) | SendError::Unknown(_)) => told = Told::Unknown,
            Err(e) => panic!("m{n}: {e}"),
        }
    }
    told
}

fn instance(proxy: &FaultProxy) -> Server {
    Server::with_handler(
        {
            let mut config = config();
            config.redis = Some(format!("redis://{}/0", proxy.addr));
            config.redis_timeout = ms(300);
            config.history = 10_000;
            config
        },
        PubSub,
    )
    .unwrap()
}

#[test]
fn every_acknowledged_message_arrives_once_in_order_or_a_gap_says_so() {
    if !redis_or_skip() {
        return;
    }
    let mut redis = RedisServer::start();
    let proxy = FaultProxy::start(redis.addr);
    let (a, b) = (instance(&proxy), instance(&proxy));
    let mut subscribers = [
        Client::connect(a.local_addr()),
        Client::connect(b.local_addr()),
    ];
    for s in &mut subscribers {
        s.send(Message::Data(b"SUB f"));
        assert_eq!(s.recv_msg(), Msg::Data(b"OK SUB f 0".to_vec()));
    }
    let handles = [a.handle(), b.handle()];
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let publisher = {
        let stop = std::sync::Arc::clone(&stop);
        std::thread::spawn(move || {
            let mut told = Vec::new();
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Acquire) && n < 100_000 {
                n += 1;
                told.push(publish(&handles[n as usize % 2], n));
                std::thread::sleep(ms(10));
            }
            told
        })
    };
    let phase = Duration::from_millis(800);
    std::thread::sleep(phase);
    redis.kill();
    std::thread::sleep(ms(300));
    redis.restart_empty();
    std::thread::sleep(phase);
    redis.pause();
    std::thread::sleep(phase);
    redis.resume();
    std::thread::sleep(phase);
    proxy.silence_existing();
    std::thread::sleep(phase);
    proxy.reset_existing();
    std::thread::sleep(phase);
    proxy.delay(ms(20));
    std::thread::sleep(phase);
    proxy.delay(Duration::ZERO);
    std::thread::sleep(phase);
    stop.store(true, std::sync::atomic::Ordering::Release);
    let told = publisher.join().unwrap();
    // A last message through each instance, acknowledged, ends the stream.
    let last = told.len() as u32 + 1;
    assert_eq!(publish(&a.handle(), last), Told::Acknowledged);
    let acknowledged = told.iter().filter(|&&t| t == Told::Acknowledged).count() + 1;
    let refused = told.iter().filter(|&&t| t == Told::Refused).count();
    let unknown = told.iter().filter(|&&t| t == Told::Unknown).count();
    let told: HashMap<u32, Told> = (1..=last)
        .map(|n| {
            (
                n,
                told.get(n as usize - 1)
                    .copied()
                    .unwrap_or(Told::Acknowledged),
            )
        })
        .collect();
    for (i, s) in subscribers.iter_mut().enumerate() {
        // Everything it got, up to the last message.
        let mut lines = Vec::new();
        let deadline = Instant::now() + PATIENCE * 3;
        loop {
            assert!(Instant::now() < deadline, "subscriber {i}: no m{last}");
            match s.recv_msg() {
                Msg::Data(p) => {
                    let line = String::from_utf8(p).unwrap();
                    let done = line.ends_with(&format!(" m{last}"));
                    lines.push(line);
                    if done {
                        break;
                    }
                }
                other => panic!("subscriber {i}: {other:?}"),
            }
        }
        let mut delivered: Vec<u32> = Vec::new();
        let mut gaps = 0;
        // Lost acknowledged messages each need a GAP between the messages
        // delivered around them.
        let mut gap_since_last = false;
        let mut lost_unexplained = Vec::new();
        let mut expected_next = 1;
        for line in &lines {
            if line.starts_with("GAP f ") {
                gaps += 1;
                gap_since_last = true;
                continue;
            }
            let n: u32 = line.rsplit(" m").next().unwrap().parse().unwrap();
            assert!(
                delivered.last().is_none_or(|&prev| n > prev),
                "subscriber {i}: m{n} out of order or twice after {delivered:?}"
            );
            for missing in expected_next..n {
                if told[&missing] == Told::Acknowledged && !gap_since_last {
                    lost_unexplained.push(missing);
                }
            }
            assert_ne!(told[&n], Told::Refused, "subscriber {i}: m{n} was refused");
            delivered.push(n);
            expected_next = n + 1;
            gap_since_last = false;
        }
        let acknowledged_delivered = delivered
            .iter()
            .filter(|n| told[n] == Told::Acknowledged)
            .count();
        eprintln!(
            "subscriber {i}: {acknowledged} acknowledged, {refused} refused, {unknown} unknown; {} delivered ({acknowledged_delivered} acknowledged), {gaps} gaps reported, {} acknowledged lost without a gap, 0 duplicates",
            delivered.len(),
            lost_unexplained.len()
        );
        assert!(
            lost_unexplained.is_empty(),
            "subscriber {i}: acknowledged, not delivered, no GAP: {lost_unexplained:?}"
        );
    }
}
