//! Draining: after CLOSE 1001 (shutdown or maximum connection age) the
//! server keeps answering until the client hangs up, and forces the close
//! only when the grace period ends. The heartbeat client drains too, so no
//! DATA it sends is lost across a drain.

mod util;

use std::collections::BTreeMap;
use std::net::Shutdown;
use std::time::{Duration, Instant};

use util::{Client, Msg, PATIENCE, Recv, config, ms, sample, scrape, start};
use wheel_server::client::{self, Backoff, ClientConfig, DeadReason, Event};
use wheel_server::protocol::Message;

/// Reads up to and including the server's CLOSE; returns its code and when
/// it arrived. Answers before it are returned too.
fn read_until_close(c: &mut Client) -> (u16, String, Instant, Vec<Msg>) {
    let mut before = Vec::new();
    loop {
        match c.recv_msg() {
            Msg::Close(code, reason) => return (code, reason, Instant::now(), before),
            other => before.push(other),
        }
    }
}

/// Reads everything until the end of stream.
fn read_to_eof(c: &mut Client) -> Vec<Msg> {
    let mut got = Vec::new();
    loop {
        match c.recv() {
            Recv::Msg(msg) => got.push(msg),
            Recv::Eof => return got,
            other => panic!("expected messages then EOF, got {other:?}"),
        }
    }
}

#[test]
fn a_draining_connection_answers_what_arrives_after_the_close() {
    let server = start(config());
    let mut c = Client::connect(server.local_addr());
    assert_eq!(c.ping(b"up"), Msg::Pong(b"up".to_vec()));
    let shutdown = std::thread::spawn(move || server.shutdown());
    let (code, reason, _, before) = read_until_close(&mut c);
    assert_eq!((code, reason.as_str()), (1001, "server shutting down"));
    assert!(before.is_empty(), "{before:?}");
    // Sent after the CLOSE arrived, as an in-flight message would be.
    for payload in [&b"late 1"[..], b"late 2", b"late 3"] {
        c.send(Message::Data(payload));
    }
    // Still being served: the echoes come back before we hang up.
    for payload in [&b"late 1"[..], b"late 2", b"late 3"] {
        assert_eq!(c.recv_msg(), Msg::Data(payload.to_vec()));
    }
    let started = Instant::now();
    c.stream.shutdown(Shutdown::Write).unwrap();
    assert_eq!(read_to_eof(&mut c), []);
    assert!(shutdown.join().unwrap(), "the drain should end cleanly");
    assert!(
        started.elapsed() < ms(400),
        "the server should hang up when the client does, took {:?}",
        started.elapsed()
    );
}

#[test]
fn a_client_that_never_hangs_up_is_forced_closed_after_the_grace_period() {
    let grace = ms(300);
    let server = start({
        let mut config = config();
        config.shutdown_grace = grace;
        config
    });
    let mut c = Client::connect(server.local_addr());
    assert_eq!(c.ping(b"up"), Msg::Pong(b"up".to_vec()));
    let start = Instant::now();
    let shutdown = std::thread::spawn(move || server.shutdown());
    let (code, ..) = read_until_close(&mut c);
    assert_eq!(code, 1001);
    // A message during the grace period is still answered...
    assert_eq!(c.ping(b"still"), Msg::Pong(b"still".to_vec()));
    // ...and then the server hangs up on its own.
    assert_eq!(read_to_eof(&mut c), []);
    let waited = start.elapsed();
    assert!(!shutdown.join().unwrap(), "the drain was forced");
    assert!(
        waited >= grace - ms(5) && waited < grace + ms(1500),
        "forced after {waited:?}, grace {grace:?}"
    );
}

#[test]
fn max_age_sends_1001_to_each_connection_within_ten_percent_of_its_age() {
    let age = ms(400);
    let server = start({
        let mut config = config();
        config.max_connection_age = Some(age);
        config.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
        config
    });
    let n = 20;
    let mut clients: Vec<(Client, Instant)> = (0..n)
        .map(|_| {
            let opened = Instant::now();
            (Client::connect(server.local_addr()), opened)
        })
        .collect();
    // One reader each, so that each CLOSE is timed when it arrives.
    let ages: Vec<Duration> = std::thread::scope(|scope| {
        let readers: Vec<_> = clients
            .iter_mut()
            .map(|(c, opened)| {
                scope.spawn(move || {
                    let (code, reason, at, _) = read_until_close(c);
                    assert_eq!((code, reason.as_str()), (1001, "maximum connection age"));
                    c.stream.shutdown(Shutdown::Write).unwrap();
                    assert_eq!(read_to_eof(c), []);
                    at - *opened
                })
            })
            .collect();
        readers.into_iter().map(|r| r.join().unwrap()).collect()
    });
    let tick = server.config().tick;
    let (min, max) = (ages.iter().min().unwrap(), ages.iter().max().unwrap());
    eprintln!("max age {age:?}: closed after {min:?} to {max:?}");
    // Each age is drawn from [0.9, 1.1) x 400 ms = [360, 440) ms and fires
    // at most a tick (10 ms) late.
    assert!(*min >= age.mul_f64(0.9) - ms(5), "too early: {min:?}");
    assert!(
        *max <= age.mul_f64(1.1) + tick + ms(100),
        "too late: {max:?}"
    );
    // Twenty draws spread over 80 ms: all within 10 ms of each other has
    // probability below 1e-13 unless the jitter is missing.
    assert!(
        *max - *min > ms(10),
        "no jitter: every age within {:?}",
        *max - *min
    );
    let metrics = server.metrics_addr().unwrap();
    assert!(util::wait_until(PATIENCE, || server.connection_count() == 0));
    let text = scrape(metrics);
    assert_eq!(
        sample(&text, "wheel_drains_total{reason=\"max_age\"}"),
        n as f64
    );
    assert_eq!(
        sample(&text, "wheel_connections_closed_total{reason=\"max_age\"}"),
        n as f64
    );
    assert_eq!(sample(&text, "wheel_drains_forced_total"), 0.0);
}

#[test]
fn max_age_grace_forces_a_connection_that_keeps_talking() {
    let (age, grace) = (ms(100), ms(300));
    let server = start({
        let mut config = config();
        config.max_connection_age = Some(age);
        config.max_connection_age_grace = Some(grace);
        config.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
        config
    });
    let opened = Instant::now();
    let mut c = Client::connect(server.local_addr());
    let (code, _, drained_at, _) = read_until_close(&mut c);
    assert_eq!(code, 1001);
    let state = || {
        let (_, body) = util::http_get(server.metrics_addr().unwrap(), "/connections");
        let list: Vec<serde_json::Value> = serde_json::from_str(&body).unwrap();
        list[0]["state"].as_str().unwrap().to_owned()
    };
    assert_eq!(state(), "draining");
    // The client ignores the CLOSE and keeps pinging: answered until the
    // grace period ends, then the server hangs up.
    let mut answered = 0;
    let eof_at = loop {
        if !c.try_ping(b"p") {
            break Instant::now();
        }
        answered += 1;
        assert!(opened.elapsed() < PATIENCE, "never forced");
        // Pacing: a client pinging through the drain.
        std::thread::sleep(ms(10));
    };
    assert!(
        answered > 5,
        "only {answered} PINGs answered while draining"
    );
    let drained_for = eof_at - drained_at;
    assert!(
        drained_for >= grace - ms(20) && drained_for < grace + ms(300),
        "forced {drained_for:?} after the CLOSE, grace {grace:?}"
    );
}

#[test]
fn the_client_drains_on_1001_so_no_data_is_lost() {
    // The client streams numbered DATA while its server shuts down; every
    // message is echoed exactly once, by the first server or the second.
    // The promise holds while the client hangs up within the grace and its
    // drain reads the answers within its heartbeat timeout: both are wide
    // here, so that a busy machine (a client thread not scheduled for a
    // while) tests the protocol, not the scheduler. The drain still ends
    // as soon as the client hangs up.
    let first = start({
        let mut config = config();
        config.shutdown_grace = PATIENCE;
        config
    });
    let second = start(config());
    let config = ClientConfig {
        addrs: vec![first.local_addr().into(), second.local_addr().into()],
        heartbeat_interval: ms(500),
        heartbeat_timeout: ms(5000),
        backoff: Backoff {
            initial: ms(40),
            max: ms(200),
            multiplier: 2.0,
        },
        seed: Some(7),
        // Every echo is an event: room for all of them, so that a test
        // thread the scheduler leaves aside for a while loses none.
        event_capacity: 8192,
        ..ClientConfig::new(first.local_addr())
    };
    let client = client::Client::start(config).unwrap();
    let total: u32 = 2000;
    let mut echoed: BTreeMap<u32, u32> = BTreeMap::new();
    let mut drained = false;
    let shutdown = std::thread::scope(|scope| {
        // A steady stream, so that messages and echoes are in flight when
        // the CLOSE comes.
        let sender = scope.spawn(|| {
            let mut shutdown = None;
            let mut first = Some(first);
            for n in 0..total {
                client.send(n.to_string().as_bytes()).unwrap();
                if n == total / 4 {
                    let server = first.take().unwrap();
                    shutdown = Some(std::thread::spawn(move || server.shutdown()));
                }
                std::thread::sleep(Duration::from_micros(100));
            }
            shutdown.unwrap()
        });
        let deadline = Instant::now() + PATIENCE;
        while echoed.len() < total as usize && Instant::now() < deadline {
            let Ok(event) = client.events().recv_timeout(ms(100)) else {
                continue;
            };
            match event {
                Event::Data(payload) => {
                    let n = std::str::from_utf8(&payload).unwrap().parse().unwrap();
                    *echoed.entry(n).or_default() += 1;
                }
                Event::Dead {
                    reason: DeadReason::Close { code: 1001, .. },
                } => drained = true,
                Event::Dead { reason } => panic!("unexpected loss: {reason}"),
                _ => {}
            }
        }
        sender.join().unwrap()
    });
    assert!(drained, "the first server never sent 1001");
    assert!(
        shutdown.join().unwrap(),
        "the client should end the drain by hanging up"
    );
    let missing: Vec<u32> = (0..total).filter(|n| !echoed.contains_key(n)).collect();
    let twice: Vec<u32> = echoed
        .iter()
        .filter(|&(_, &count)| count > 1)
        .map(|(&n, _)| n)
        .collect();
    assert_eq!(client.dropped_events(), 0, "events dropped by the client");
    assert!(missing.is_empty(), "never echoed: {missing:?}");
    assert!(twice.is_empty(), "echoed twice: {twice:?}");
    client.close();
}
