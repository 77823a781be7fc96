//! The heartbeat client against real servers, a killed server, a mute
//! server, a closed port and a full server; and the `heartbeat-client`
//! example's JSON output.

mod util;

use std::net::{SocketAddr, TcpListener};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use util::{PATIENCE, ServerProcess, config, example_binary, ms, start};
use wheel_server::client::{Backoff, Client, ClientConfig, DeadReason, Event};

fn fast(addr: SocketAddr) -> ClientConfig {
    fast_to(addr.into())
}

fn fast_to(addr: wheel_server::client::ServerAddr) -> ClientConfig {
    ClientConfig {
        heartbeat_interval: ms(100),
        heartbeat_timeout: ms(100),
        heartbeat_retries: 2,
        connect_timeout: ms(500),
        backoff: Backoff {
            initial: ms(50),
            max: ms(200),
            multiplier: 2.0,
        },
        seed: Some(1),
        ..ClientConfig::new(addr)
    }
}

/// The server address of a `Connected` event.
fn connected_to(event: &Event) -> Option<SocketAddr> {
    match event {
        Event::Connected { addr, .. } => Some(*addr),
        _ => None,
    }
}

/// Why the connection ended, from the next `Dead` event.
fn dead_reason(client: &Client) -> DeadReason {
    match until(client, |e| matches!(e, Event::Dead { .. })).0 {
        Event::Dead { reason } => reason,
        _ => unreachable!(),
    }
}

/// The attempt and delay of the next `Reconnecting` event.
fn reconnecting(client: &Client) -> (u32, Duration) {
    match until(client, |e| matches!(e, Event::Reconnecting { .. })).0 {
        Event::Reconnecting { attempt, delay } => (attempt, delay),
        _ => unreachable!(),
    }
}

/// The next event, within `PATIENCE`.
fn next(client: &Client) -> Event {
    client.events().recv_timeout(PATIENCE).expect("an event")
}

/// Events until one matches; returns it and everything before.
fn until(client: &Client, mut want: impl FnMut(&Event) -> bool) -> (Event, Vec<Event>) {
    let mut before = Vec::new();
    loop {
        let event = next(client);
        if want(&event) {
            return (event, before);
        }
        before.push(event);
    }
}

#[test]
fn connects_echoes_and_reports_heartbeat_rtt() {
    let server = start(config());
    let client = Client::start(fast(server.local_addr())).unwrap();
    assert_eq!(connected_to(&next(&client)), Some(server.local_addr()));
    client.send(b"hello").unwrap();
    assert_eq!(next(&client), Event::Data(b"hello".to_vec()));
    // Silence: heartbeats go out and come back.
    for expected in 1..=3 {
        assert_eq!(next(&client), Event::HeartbeatSent { seq: expected });
        match next(&client) {
            Event::Pong { seq, rtt } => {
                assert_eq!(seq, expected);
                assert!(rtt < ms(100), "loopback rtt {rtt:?}");
            }
            other => panic!("expected a pong, got {other:?}"),
        }
    }
}

#[test]
fn a_killed_server_is_noticed_at_once_and_a_restarted_one_reconnected() {
    let mut server = ServerProcess::start(&[]);
    let addr = server.addr;
    let client = Client::start(fast(addr)).unwrap();
    assert_eq!(connected_to(&next(&client)), Some(addr));
    let killed = Instant::now();
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    let dead = dead_reason(&client);
    let noticed = killed.elapsed();
    assert!(
        matches!(dead, DeadReason::Eof | DeadReason::Reset),
        "{dead:?}"
    );
    // A read sees the kernel's FIN/RST: no heartbeat round is needed.
    assert!(noticed < ms(100), "took {noticed:?}");

    // While the port is closed: retries with delays inside the jitter
    // window, never above the max.
    let backoff = fast(addr).backoff;
    for _ in 0..4 {
        let (attempt, delay) = reconnecting(&client);
        // Retry `a` (the first is 1) waits at most `cap(a)`.
        assert!(
            delay <= backoff.cap(attempt),
            "attempt {attempt}: {delay:?}"
        );
        assert!(delay <= backoff.max);
    }
    let restarted = Instant::now();
    let _again = ServerProcess::start(&["--listen", &addr.to_string()]);
    let (event, _) = until(&client, |e| matches!(e, Event::Connected { .. }));
    assert_eq!(connected_to(&event), Some(addr));
    assert!(
        restarted.elapsed() < backoff.max + ms(500),
        "took {:?}",
        restarted.elapsed()
    );
}

#[test]
fn a_mute_server_is_declared_dead_by_heartbeat_timeout() {
    // Accepts, then never says anything.
    let mute = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = mute.local_addr().unwrap();
    let _accepter = std::thread::spawn(move || {
        let mut held = Vec::new();
        while let Ok((stream, _)) = mute.accept() {
            held.push(stream);
        }
    });
    let config = fast(addr);
    // The heartbeat starts after `started` and before the Connected event
    // is seen: the two instants bound it from either side even when this
    // thread runs late.
    let started = Instant::now();
    let client = Client::start(config.clone()).unwrap();
    assert_eq!(connected_to(&next(&client)), Some(addr));
    let connected = Instant::now();
    let (dead, before) = until(&client, |e| matches!(e, Event::Dead { .. }));
    let (at_least, took) = (started.elapsed(), connected.elapsed());
    assert_eq!(
        dead,
        Event::Dead {
            reason: DeadReason::HeartbeatTimeout
        }
    );
    let sent = before
        .iter()
        .filter(|e| matches!(e, Event::HeartbeatSent { .. }))
        .count();
    assert_eq!(sent, config.heartbeat_retries as usize, "{before:?}");
    // interval + timeout * retries = 300 ms.
    let expected = config.heartbeat_interval + config.heartbeat_timeout * config.heartbeat_retries;
    assert!(
        at_least >= expected,
        "dead after {at_least:?}, before {expected:?}"
    );
    assert!(
        took <= expected + ms(150),
        "dead after {took:?}, expected about {expected:?}"
    );
}

#[test]
fn max_attempts_against_a_closed_port_gives_up() {
    let closed = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let client = Client::start(ClientConfig {
        max_attempts: Some(3),
        ..fast(closed)
    })
    .unwrap();
    let (gave_up, before) = until(&client, |e| matches!(e, Event::GaveUp { .. }));
    assert_eq!(gave_up, Event::GaveUp { attempts: 3 });
    let failed = before
        .iter()
        .filter(|e| matches!(e, Event::ConnectFailed { .. }))
        .count();
    let retried = before
        .iter()
        .filter(|e| matches!(e, Event::Reconnecting { .. }))
        .count();
    assert_eq!((failed, retried), (3, 2), "{before:?}");
    assert!(
        client.events().recv_timeout(PATIENCE).is_err(),
        "events end after giving up"
    );
}

#[test]
fn a_full_server_is_not_hammered() {
    let server = start({
        let mut config = config();
        config.max_connections = 1;
        config
    });
    let _occupant = util::Client::connect(server.local_addr());
    assert!(util::wait_until(PATIENCE, || server.connection_count() == 1));
    let config = fast(server.local_addr());
    let client = Client::start(config.clone()).unwrap();
    for _ in 0..3 {
        let dead = dead_reason(&client);
        assert!(
            matches!(dead, DeadReason::Close { code: 1013, .. }),
            "{dead:?}"
        );
        let (attempt, delay) = reconnecting(&client);
        let cap = config.backoff.cap(attempt);
        assert!(
            delay >= cap / 2 && delay <= cap,
            "attempt {attempt}: {delay:?} outside [{:?}, {cap:?}]",
            cap / 2
        );
    }
}

#[test]
fn server_close_ends_the_connection_with_its_code() {
    let server = start({
        let mut config = config();
        config.idle_timeout = Some(ms(150));
        config.tick = ms(10);
        config
    });
    // Heartbeats slower than the server's idle timeout: the server reaps.
    let client = Client::start(ClientConfig {
        heartbeat_interval: ms(1000),
        ..fast(server.local_addr())
    })
    .unwrap();
    assert_eq!(
        dead_reason(&client),
        DeadReason::Close {
            code: 4000,
            reason: "idle timeout".into()
        }
    );
}

fn run_example(args: &[&str]) -> (std::process::ExitStatus, Vec<serde_json::Value>) {
    let out = Command::new(example_binary())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run the heartbeat-client example");
    let events = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l:?}: {e}")))
        .collect();
    (out.status, events)
}

#[test]
fn example_json_output_against_a_server() {
    let server = start(config());
    let addr = server.local_addr().to_string();
    let (status, events) = run_example(&[
        &addr,
        "--json",
        "--heartbeat-interval",
        "100ms",
        "--heartbeat-timeout",
        "100ms",
        "--duration",
        "450ms",
    ]);
    assert!(status.success(), "{status}");
    assert_eq!(events[0]["event"], "connected");
    assert_eq!(events[0]["addr"], addr);
    let pongs: Vec<_> = events.iter().filter(|e| e["event"] == "pong").collect();
    assert!(pongs.len() >= 2, "{events:?}");
    for e in &events {
        assert!(e["t_ms"].is_u64(), "every event has t_ms: {e}");
    }
    for p in pongs {
        assert!(p["seq"].is_u64() && p["rtt_ms"].is_f64(), "{p}");
    }
}

#[test]
fn example_gives_up_with_a_non_zero_exit() {
    let closed = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    let (status, events) = run_example(&[
        &closed,
        "--json",
        "--max-attempts",
        "2",
        "--backoff-initial",
        "10ms",
        "--backoff-max",
        "20ms",
    ]);
    assert!(!status.success());
    let kinds: Vec<&str> = events
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        [
            "connect_failed",
            "reconnecting",
            "connect_failed",
            "gave_up"
        ]
    );
    assert_eq!(events[1]["attempt"], 1, "the first retry is 1");
    assert!(events[1]["delay_ms"].as_u64().unwrap() <= 10);
    assert_eq!(events[3]["attempts"], 2);
}

#[test]
fn example_reports_close_code_in_json() {
    let server = start({
        let mut config = config();
        config.idle_timeout = Some(ms(100));
        config.tick = ms(10);
        config
    });
    let (_, events) = run_example(&[
        &server.local_addr().to_string(),
        "--json",
        "--heartbeat-interval",
        "10s",
        "--duration",
        "400ms",
    ]);
    let dead = events
        .iter()
        .find(|e| e["event"] == "dead")
        .expect("a dead event");
    assert_eq!(dead["reason"], "close");
    assert_eq!(dead["code"], 4000);
}

#[test]
fn going_away_reconnects_promptly_to_the_next_address() {
    // Two servers; the first shuts down (CLOSE 1001).
    let first = start(config());
    let second = start(config());
    let config = ClientConfig {
        addrs: vec![first.local_addr().into(), second.local_addr().into()],
        backoff: Backoff {
            initial: ms(400),
            max: ms(2000),
            multiplier: 2.0,
        },
        ..fast(first.local_addr())
    };
    let client = Client::start(config).unwrap();
    assert_eq!(connected_to(&next(&client)), Some(first.local_addr()));
    // Connected but perhaps not yet accepted: shutdown admits the accept
    // queue too, so the connection is drained either way.
    first.shutdown();
    let dead = dead_reason(&client);
    assert!(
        matches!(dead, DeadReason::Close { code: 1001, .. }),
        "{dead:?}"
    );
    let (attempt, delay) = reconnecting(&client);
    // A fresh start, and at most a quarter of the initial backoff.
    assert_eq!(attempt, 1);
    assert!(delay <= ms(100), "{delay:?}");
    let (event, _) = until(&client, |e| matches!(e, Event::Connected { .. }));
    assert_eq!(connected_to(&event), Some(second.local_addr()));
}

#[test]
fn example_takes_several_addresses_and_moves_on_after_a_drain() {
    // The first server drains every connection after about 200 ms.
    let first = start({
        let mut config = config();
        config.max_connection_age = Some(ms(200));
        config
    });
    let second = start(config());
    let (first_addr, second_addr) = (
        first.local_addr().to_string(),
        second.local_addr().to_string(),
    );
    let (status, events) = run_example(&[
        &first_addr,
        &second_addr,
        "--json",
        "--heartbeat-interval",
        "10s",
        "--duration",
        "600ms",
    ]);
    assert!(status.success(), "{status}");
    let kinds: Vec<&str> = events
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        ["connected", "dead", "reconnecting", "connected"],
        "{events:?}"
    );
    assert_eq!(events[0]["addr"], first_addr);
    assert!(
        events[0]["local"]
            .as_str()
            .is_some_and(|l| l.parse::<SocketAddr>().is_ok()),
        "{}",
        events[0]
    );
    assert_eq!(
        (&events[1]["code"], &events[1]["close_reason"]),
        (&1001.into(), &"maximum connection age".into())
    );
    // Prompt: at most a quarter of the default 1 s initial backoff.
    assert!(
        events[2]["delay_ms"].as_u64().unwrap() <= 250,
        "{}",
        events[2]
    );
    assert_eq!(events[3]["addr"], second_addr);
}

/// A client used only for sending never reads its events: the queue stays
/// at its capacity and the rest are dropped and counted, so memory stays
/// flat however many events there are.
#[test]
fn a_send_only_client_keeps_at_most_its_event_capacity() {
    const SENT: u64 = 100_000;
    const CAPACITY: usize = 64;
    let server = start(config());
    let client = Client::start(ClientConfig {
        event_capacity: CAPACITY,
        // No heartbeat events while the echoes stream in.
        heartbeat_interval: Duration::from_secs(60),
        ..fast(server.local_addr())
    })
    .unwrap();
    for n in 0..SENT {
        client.send(n.to_string().as_bytes()).unwrap();
    }
    // Every echo becomes an event (plus one Connected); wait until all
    // have arrived.
    let deadline = Instant::now() + Duration::from_secs(60);
    while client.dropped_events() + (client.events().len() as u64) < SENT + 1 {
        assert!(client.events().len() <= CAPACITY);
        assert!(Instant::now() < deadline, "echoes never all arrived");
        std::thread::sleep(ms(10));
    }
    assert_eq!(client.dropped_events(), SENT + 1 - CAPACITY as u64);
    assert_eq!(client.events().len(), CAPACITY);
    // The newest are kept: the last echo is the last event waiting.
    let kept: Vec<Event> = client.events().try_iter().collect();
    let last_data = kept.iter().rev().find_map(|e| match e {
        Event::Data(p) => Some(p.clone()),
        _ => None,
    });
    assert_eq!(last_data, Some((SENT - 1).to_string().into_bytes()));
}

/// A server that answers every connection with CLOSE 1001 is failing, not
/// leaving: after three prompt reconnects the client backs off as usual,
/// its retries counting up.
#[test]
fn a_server_that_sends_1001_on_every_connection_gets_the_normal_backoff_after_three() {
    use std::io::{Read, Write};
    use wheel_server::protocol::{Message, Protocol};

    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let fake = std::thread::spawn(move || {
        let mut close = Vec::new();
        Protocol::Frame
            .encode(
                &Message::Close {
                    code: 1001,
                    reason: "going away",
                },
                &mut close,
            )
            .unwrap();
        for stream in listener.incoming().take(6) {
            let mut stream = stream.unwrap();
            let _ = stream.write_all(&close);
            // Drain as a server does: until the client half-closes.
            let _ = stream.set_read_timeout(Some(ms(500)));
            let mut sink = [0u8; 256];
            while matches!(stream.read(&mut sink), Ok(n) if n > 0) {}
        }
    });
    let config = ClientConfig {
        healthy_after: Duration::from_secs(60),
        ..fast(addr)
    };
    let client = Client::start(config.clone()).unwrap();
    let mut retries = Vec::new();
    for _ in 0..6 {
        let dead = dead_reason(&client);
        assert!(
            matches!(dead, DeadReason::Close { code: 1001, .. }),
            "{dead:?}"
        );
        retries.push(reconnecting(&client));
    }
    let attempts: Vec<u32> = retries.iter().map(|r| r.0).collect();
    assert_eq!(attempts, [1, 1, 1, 1, 2, 3]);
    for (attempt, delay) in &retries[..3] {
        assert!(
            *delay <= config.backoff.initial / 4,
            "prompt {attempt}: {delay:?}"
        );
    }
    for (attempt, delay) in &retries[3..] {
        assert!(
            *delay <= config.backoff.cap(*attempt),
            "{attempt}: {delay:?}"
        );
    }
    client.close();
    fake.join().unwrap();
}

/// Garbage from the server is a protocol error, not a reset.
#[test]
fn garbage_from_the_server_is_reported_as_protocol() {
    use std::io::Write;
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let fake = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        // A frame of an unknown type.
        stream.write_all(&[0, 0, 0, 1, 0x09]).unwrap();
        stream
    });
    let client = Client::start(fast(addr)).unwrap();
    let dead = dead_reason(&client);
    assert!(
        matches!(&dead, DeadReason::Protocol(why) if why.contains("unknown frame type 0x09")),
        "{dead:?}"
    );
    assert_eq!(dead.label(), "protocol");
    client.close();
    drop(fake.join().unwrap());
}

#[test]
fn a_host_name_is_resolved_by_the_system_resolver() {
    let server = start(config());
    let port = server.local_addr().port();
    let name: wheel_server::client::ServerAddr = format!("localhost:{port}").parse().unwrap();
    let client = Client::start(fast_to(name)).unwrap();
    // localhost may resolve to ::1 first, where nothing listens: the next
    // address is tried within the same attempt.
    let (event, before) = until(&client, |e| matches!(e, Event::Connected { .. }));
    assert_eq!(connected_to(&event), Some(server.local_addr()));
    assert!(before.is_empty(), "{before:?}");
}

/// A device fleet must follow a DNS change after a server move: the name is
/// resolved again at every attempt.
#[test]
fn a_name_is_resolved_again_on_every_attempt_and_failures_back_off() {
    use std::sync::{Arc, Mutex};
    use wheel_server::client::{Resolver, ServerAddr};

    let first = start(config());
    let second = start(config());
    let answer: Arc<Mutex<Result<SocketAddr, String>>> =
        Arc::new(Mutex::new(Ok(first.local_addr())));
    let resolver = {
        let answer = Arc::clone(&answer);
        Resolver::new(move |host, _port| {
            assert_eq!(host, "wheel.test");
            match &*answer.lock().unwrap() {
                Ok(addr) => Ok(vec![*addr]),
                Err(e) => Err(std::io::Error::other(e.clone())),
            }
        })
    };
    let client = Client::start(ClientConfig {
        resolver,
        ..fast_to(ServerAddr::Name {
            host: "wheel.test".into(),
            port: 5005,
        })
    })
    .unwrap();
    let (event, _) = until(&client, |e| matches!(e, Event::Connected { .. }));
    assert_eq!(connected_to(&event), Some(first.local_addr()));
    // The name stops resolving, and the server goes away.
    *answer.lock().unwrap() = Err("no such host (test)".into());
    first.shutdown();
    let (failed, _) = until(&client, |e| matches!(e, Event::ConnectFailed { .. }));
    match failed {
        Event::ConnectFailed { addr, error } => {
            assert_eq!(addr.to_string(), "wheel.test:5005");
            assert!(
                error.contains("cannot resolve wheel.test: no such host (test)"),
                "{error}"
            );
        }
        _ => unreachable!(),
    }
    assert!(matches!(next(&client), Event::Reconnecting { .. }));
    // The name now points at the second server: the next attempt goes there.
    *answer.lock().unwrap() = Ok(second.local_addr());
    let (event, _) = until(&client, |e| matches!(e, Event::Connected { .. }));
    assert_eq!(connected_to(&event), Some(second.local_addr()));
}

/// The client resumes its topics after every reconnect: across three
/// dropped connections during a stream of 300 publishes, every message
/// arrives exactly once and in order. Beyond the server's history it says
/// `Gap`.
#[test]
fn subscriptions_resume_after_reconnects_with_nothing_lost_or_repeated() {
    use wheel_server::server::pubsub::PubSub;
    let server = wheel_server::Server::with_handler(
        {
            let mut config = config();
            config.history = 1000;
            config
        },
        PubSub,
    )
    .unwrap();
    let handle = server.handle();
    let client = Client::start(ClientConfig {
        subscriptions: vec!["feed".into()],
        ..fast(server.local_addr())
    })
    .unwrap();
    assert!(util::wait_until(PATIENCE, || handle.subscribers("feed") == 1));
    let publisher = {
        let handle = handle.clone();
        std::thread::spawn(move || {
            for n in 1..=300 {
                handle.publish("feed", n.to_string().as_bytes()).unwrap();
                std::thread::sleep(ms(2));
            }
        })
    };
    for _ in 0..3 {
        std::thread::sleep(ms(100));
        if let Some(id) = server.connection_ids().first() {
            let _ = handle.close(*id, 4100, "dropped by the test");
        }
    }
    publisher.join().unwrap();
    let mut seqs = Vec::new();
    let deadline = Instant::now() + PATIENCE;
    while seqs.last() != Some(&300) {
        assert!(Instant::now() < deadline, "got {} of 300", seqs.len());
        if let Ok(Event::Message {
            topic,
            seq,
            payload,
        }) = client.events().recv_timeout(ms(100))
        {
            assert_eq!(topic, "feed");
            assert_eq!(payload, seq.to_string().into_bytes());
            seqs.push(seq);
        }
    }
    assert_eq!(seqs, (1..=300).collect::<Vec<u64>>());
    client.close();

    // Away longer than the history holds: a Gap, then what was kept.
    let small = wheel_server::Server::with_handler(
        {
            let mut config = config();
            config.history = 2;
            config
        },
        PubSub,
    )
    .unwrap();
    let handle = small.handle();
    // The client can reconnect only while `reachable` says so.
    let reachable = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let resolver = {
        let reachable = std::sync::Arc::clone(&reachable);
        let addr = small.local_addr();
        wheel_server::client::Resolver::new(move |_, _| {
            if reachable.load(std::sync::atomic::Ordering::SeqCst) {
                Ok(vec![addr])
            } else {
                Err(std::io::Error::other("unreachable for the test"))
            }
        })
    };
    let client = Client::start(ClientConfig {
        subscriptions: vec!["feed".into()],
        resolver,
        ..fast_to(wheel_server::client::ServerAddr::Name {
            host: "feed.test".into(),
            port: 1,
        })
    })
    .unwrap();
    assert!(util::wait_until(PATIENCE, || handle.subscribers("feed") == 1));
    handle.publish("feed", b"1").unwrap();
    until(&client, |e| matches!(e, Event::Message { seq: 1, .. }));
    reachable.store(false, std::sync::atomic::Ordering::SeqCst);
    let id = small.connection_ids()[0];
    handle.close(id, 4100, "away").unwrap();
    until(&client, |e| matches!(e, Event::ConnectFailed { .. }));
    // Published while the client is away.
    for n in 2..=6 {
        handle.publish("feed", n.to_string().as_bytes()).unwrap();
    }
    reachable.store(true, std::sync::atomic::Ordering::SeqCst);
    let (gap, _) = until(&client, |e| matches!(e, Event::Gap { .. }));
    assert!(
        matches!(&gap, Event::Gap { topic, first_missing: 2 } if topic == "feed"),
        "{gap:?}"
    );
    let (next, _) = until(&client, |e| matches!(e, Event::Message { .. }));
    assert!(matches!(next, Event::Message { seq: 5, .. }), "{next:?}");
}

/// A server that started over (restarted without its history, or a Redis
/// that lost its data) numbers the topic from 1 again: the resumed
/// subscription answers `gap 1`, and the client delivers the new numbers
/// instead of taking them for messages it has seen.
#[test]
fn a_topic_that_started_over_is_delivered_after_the_gap() {
    use std::sync::{Arc, Mutex};
    use wheel_server::server::pubsub::PubSub;
    let start = || {
        wheel_server::Server::with_handler(
            {
                let mut config = config();
                config.history = 10;
                config
            },
            PubSub,
        )
        .unwrap()
    };
    let (first, second) = (start(), start());
    let target = Arc::new(Mutex::new(first.local_addr()));
    let resolver = {
        let target = Arc::clone(&target);
        wheel_server::client::Resolver::new(move |_, _| Ok(vec![*target.lock().unwrap()]))
    };
    let client = Client::start(ClientConfig {
        subscriptions: vec!["news".into()],
        resolver,
        ..fast_to(wheel_server::client::ServerAddr::Name {
            host: "news.test".into(),
            port: 1,
        })
    })
    .unwrap();
    let old = first.handle();
    assert!(util::wait_until(PATIENCE, || old.subscribers("news") == 1));
    for n in 1..=3 {
        old.publish("news", format!("old{n}").as_bytes()).unwrap();
    }
    until(&client, |e| matches!(e, Event::Message { seq: 3, .. }));
    // The replacement has numbered two messages of its own.
    let new = second.handle();
    new.publish("news", b"new1").unwrap();
    new.publish("news", b"new2").unwrap();
    *target.lock().unwrap() = second.local_addr();
    old.close(first.connection_ids()[0], 1001, "restarting")
        .unwrap();
    // Heartbeat events keep coming: the wait is bounded by time.
    let deadline = Instant::now() + PATIENCE;
    let mut got = Vec::new();
    while got.len() < 3 && Instant::now() < deadline {
        if let Ok(e @ (Event::Gap { .. } | Event::Message { .. })) =
            client.events().recv_timeout(ms(100))
        {
            got.push(e);
        }
    }
    let message = |seq, payload: &str| Event::Message {
        topic: "news".into(),
        seq,
        payload: payload.into(),
    };
    assert_eq!(
        got,
        [
            Event::Gap {
                topic: "news".into(),
                first_missing: 1
            },
            message(1, "new1"),
            message(2, "new2")
        ]
    );
    client.close();
}

/// The server's in-band `GAP <topic> <first-missing>` (issue 27: Redis lost
/// a topic's numbering): the client reports it and takes the numbers that
/// follow as new messages, even below what it delivered.
#[test]
fn an_in_band_gap_is_reported_and_lower_numbers_after_it_are_delivered() {
    use wheel_server::server::pubsub::PubSub;
    let server = wheel_server::Server::with_handler(config(), PubSub).unwrap();
    let handle = server.handle();
    let client = Client::start(ClientConfig {
        subscriptions: vec!["feed".into()],
        ..fast_to(server.local_addr().into())
    })
    .unwrap();
    assert!(util::wait_until(PATIENCE, || handle.subscribers("feed") == 1));
    for n in 1..=3 {
        handle.publish("feed", format!("m{n}").as_bytes()).unwrap();
    }
    until(&client, |e| matches!(e, Event::Message { seq: 3, .. }));
    let id = server.connection_ids()[0];
    // What the server sends when the numbering starts over.
    handle.send(id, b"GAP feed 1").unwrap();
    handle.send(id, b"MSG feed 1 renumbered").unwrap();
    let (gap, _) = until(&client, |e| matches!(e, Event::Gap { .. }));
    assert!(
        matches!(&gap, Event::Gap { topic, first_missing: 1 } if topic == "feed"),
        "{gap:?}"
    );
    let (next, _) = until(&client, |e| matches!(e, Event::Message { .. }));
    assert!(
        matches!(&next, Event::Message { seq: 1, payload, .. } if payload == b"renumbered"),
        "{next:?}"
    );
}
