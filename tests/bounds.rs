//! Every resource a client can make the server hold, attacked: messages too
//! large for any subscriber, topics without end, history without end,
//! publishing without pause, and slow HTTP heads in front of the health
//! check; then all of them at once, under an address-space limit, beside a
//! well-behaved subscriber that must miss nothing (docs/RELIABILITY.md,
//! "What a client can make the server hold").

mod util;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use util::{Client, Msg, PATIENCE, config, ms, wait_until};
use wheel_server::protocol::{Message, Protocol};
use wheel_server::server::pubsub::PubSub;
use wheel_server::{Config, Server};

fn pubsub(config: Config) -> Server {
    Server::with_handler(
        {
            let mut config = config;
            config.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
            config
        },
        PubSub,
    )
    .unwrap()
}

fn ask(c: &mut Client, text: &[u8]) -> String {
    c.send(Message::Data(text));
    data(c)
}

fn data(c: &mut Client) -> String {
    match c.recv_msg() {
        Msg::Data(p) => String::from_utf8_lossy(&p).into_owned(),
        other => panic!("expected DATA, got {other:?}"),
    }
}

fn refused(metrics: SocketAddr, reason: &str) -> f64 {
    let text = util::scrape(metrics);
    let name = format!("wheel_refused_total{{reason=\"{reason}\"}}");
    text.lines()
        .find_map(|l| l.strip_prefix(name.as_str())?.trim().parse().ok())
        .unwrap_or(0.0)
}

fn post(addr: SocketAddr, path: &str, body: &[u8]) -> u16 {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(PATIENCE)).unwrap();
    s.write_all(
        format!(
            "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    )
    .unwrap();
    // The server may answer before it has read the body.
    let _ = s.write_all(body);
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer)
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0)
}

/// The defect of issue 25: a PUB of nearly `--max-frame` made every
/// subscriber a "slow consumer", and stayed in history to do it again to
/// every resume. Now it is refused at publish (never retained), and the
/// largest message that fits is delivered to a subscriber reading promptly.
#[test]
fn a_message_too_large_for_subscribers_is_refused_at_publish_and_cuts_nobody() {
    let server = pubsub(config());
    let metrics = server.metrics_addr().unwrap();
    let mut sub = Client::connect(server.local_addr());
    assert_eq!(ask(&mut sub, b"SUB news"), "OK SUB news 0");
    let mut publisher = Client::connect(server.local_addr());
    // `MSG news <20 digits> ` must fit beside the payload in one frame.
    let max = (1 << 20) - "MSG news  ".len() - 20;
    let too_large = [&b"PUB news "[..], &vec![b'x'; max + 1]].concat();
    assert_eq!(
        ask(&mut publisher, &too_large),
        format!("ERR too large: at most {max} bytes")
    );
    assert_eq!(refused(metrics, "too_large"), 1.0);
    let largest = [&b"PUB news "[..], &vec![b'y'; max]].concat();
    assert_eq!(ask(&mut publisher, &largest), "OK PUB news 1");
    let msg = data(&mut sub);
    assert!(msg.starts_with("MSG news 1 yyy") && msg.len() == "MSG news 1 ".len() + max);
    // A resume from the start gets it (the refused one was never kept), as
    // many times as it is asked for.
    for _ in 0..3 {
        let mut late = Client::connect(server.local_addr());
        assert_eq!(ask(&mut late, b"SUB news 0"), "OK SUB news 1 recovered");
        assert!(data(&mut late).starts_with("MSG news 1 yyy"));
    }
    // The subscriber stays: the next message reaches it too.
    assert_eq!(ask(&mut publisher, b"PUB news small"), "OK PUB news 2");
    assert_eq!(data(&mut sub), "MSG news 2 small");
    // Over HTTP: a body of --max-frame bytes is a valid body but too large
    // a message: 413, and nothing published.
    assert_eq!(post(metrics, "/publish/news", &vec![b'z'; 1 << 20]), 413);
    assert_eq!(refused(metrics, "too_large"), 2.0);
    assert_eq!(ask(&mut publisher, b"PUB news after"), "OK PUB news 3");
    assert_eq!(data(&mut sub), "MSG news 3 after");
}

#[test]
fn topics_past_the_limit_are_refused_and_listed_a_page_at_a_time() {
    let server = pubsub({
        let mut config = config();
        config.max_topics = 5;
        config
    });
    let metrics = server.metrics_addr().unwrap();
    let mut c = Client::connect(server.local_addr());
    for n in 0..5 {
        assert_eq!(
            ask(&mut c, format!("PUB t{n} m").as_bytes()),
            format!("OK PUB t{n} 1")
        );
    }
    assert_eq!(ask(&mut c, b"PUB t5 m"), "ERR too many topics");
    assert_eq!(ask(&mut c, b"SUB t5"), "ERR too many topics");
    assert_eq!(refused(metrics, "too_many_topics"), 2.0);
    // Known topics work as before.
    assert_eq!(ask(&mut c, b"SUB t0"), "OK SUB t0 1");
    assert_eq!(post(metrics, "/publish/t9", b"m"), 503);
    let page = |query: &str| -> serde_json::Value {
        let (status, body) = util::http_get(metrics, &format!("/topics{query}"));
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    };
    let first = page("?limit=2");
    assert_eq!(first["total"], 5);
    assert_eq!(first["topics"][0]["topic"], "t0");
    assert_eq!(first["topics"][0]["subscribers"], 1);
    assert_eq!(first["next"], "t1");
    let second = page("?limit=2&after=t1");
    let names: Vec<&str> = second["topics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["topic"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["t2", "t3"]);
    assert_eq!(page("?after=t3")["next"], serde_json::Value::Null);
    assert_eq!(util::http_get(metrics, "/topics?limit=0").0, 400);
    assert_eq!(util::http_get(metrics, "/topics?limit=100000").0, 400);
}

/// Past the publish rate a PUB gets `ERR rate limited`; a client that keeps
/// publishing through 100 of them in a row is closed with 1008.
#[test]
fn publishing_past_the_rate_is_refused_then_closed() {
    let server = pubsub({
        let mut config = config();
        config.max_publish_rate = Some(10);
        config
    });
    let metrics = server.metrics_addr().unwrap();
    let mut c = Client::connect(server.local_addr());
    // Pipelined: all sent before the first answer is read.
    for n in 0..150 {
        c.send(Message::Data(format!("PUB fast {n}").as_bytes()));
    }
    let (mut ok, mut limited) = (0, 0);
    let close = loop {
        match c.recv_msg() {
            Msg::Data(p) if p.starts_with(b"OK PUB fast ") => ok += 1,
            Msg::Data(p) if p == b"ERR rate limited" => limited += 1,
            Msg::Close(code, reason) => break (code, reason),
            other => panic!("unexpected {other:?}"),
        }
    };
    // The burst (10), and perhaps a token or two more as the clock moved.
    assert!((10..=15).contains(&ok), "{ok} allowed");
    assert_eq!(limited, 99, "the 100th refusal in a row closes");
    assert_eq!(close, (1008, "publishing too fast".to_owned()));
    assert!(wait_until(PATIENCE, || refused(metrics, "publish_rate") == 100.0));
}

/// Slow HTTP clients holding every worker of the admin endpoint do not fail
/// a load balancer's health checks; they are cut at the head deadline.
#[test]
fn health_checks_are_answered_while_slow_heads_hold_every_http_worker() {
    let server = pubsub(config());
    let metrics = server.metrics_addr().unwrap();
    let stop = AtomicBool::new(false);
    std::thread::scope(|scope| {
        // 40 connections sending a head a byte at a time, reconnecting
        // when cut: more than the 4 workers and 16 queue places.
        for _ in 0..40 {
            scope.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    let Ok(mut s) = TcpStream::connect(metrics) else {
                        continue;
                    };
                    let _ = s.write_all(b"GET /connections HTTP/1.1\r\n");
                    while !stop.load(Ordering::Relaxed) && s.write_all(b"X").is_ok() {
                        std::thread::sleep(ms(50));
                    }
                }
            });
        }
        // Let them take the workers.
        std::thread::sleep(ms(300));
        for _ in 0..40 {
            let (status, body) = util::http_get(metrics, "/healthz");
            assert_eq!((status, body.as_str()), (200, "ok\n"));
            assert_eq!(util::http_get(metrics, "/readyz").0, 200);
            std::thread::sleep(ms(25));
        }
        stop.store(true, Ordering::Relaxed);
    });
    let text = util::scrape(metrics);
    assert!(
        util::sample(&text, "wheel_http_timeouts_total") >= 1.0,
        "{text}"
    );
}

/// Reads and discards everything a connection is sent, so that an
/// attacker's own answers never make it a slow consumer.
fn drain(stream: &TcpStream) {
    let mut stream = stream.try_clone().unwrap();
    std::thread::spawn(move || {
        let mut sink = [0u8; 64 * 1024];
        while matches!(stream.read(&mut sink), Ok(n) if n > 0) {}
    });
}

fn frame(text: &[u8]) -> Vec<u8> {
    let mut wire = Vec::new();
    Protocol::Frame
        .encode(&Message::Data(text), &mut wire)
        .unwrap();
    wire
}

/// All the attacks at once, for a few seconds, against the binary under a
/// 1 GiB address-space limit and 64 MiB of history: nothing aborts, a
/// well-behaved subscriber gets every message of its topic in order,
/// `/healthz` answers every time, RSS stays within the history budget plus
/// a baseline, and every refusal is counted.
#[test]
fn hostile_clients_at_once_cannot_take_the_others_down() {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_wheel-server"));
    cmd.args([
        "--listen",
        "127.0.0.1:0",
        "--metrics-listen",
        "127.0.0.1:0",
        "--service",
        "pubsub",
        "--history-memory",
        "64MiB",
        "--max-topics",
        "20000",
    ]);
    // glibc gives each thread an arena of 64 MiB of address space: two
    // arenas keep the limit about memory, not about reservations.
    cmd.env("MALLOC_ARENA_MAX", "2");
    util::limit_address_space(&mut cmd, 1 << 30);
    let mut server = util::ServerProcess::spawn(cmd);
    let addr = server.addr;
    let metrics = server.metrics_addr();
    let baseline_kib = util::rss_kib(server.pid());
    let attack = Duration::from_secs(4);
    let stop = Arc::new(AtomicBool::new(false));
    let mut good = Client::connect(addr);
    assert_eq!(ask(&mut good, b"SUB good"), "OK SUB good 0");
    type Work = Box<dyn Fn(&mut TcpStream, u64) + Send>;
    let mut attacks: Vec<Work> = Vec::new();
    // New topics, as fast as the socket takes them.
    for who in 0..2 {
        attacks.push(Box::new(move |s, n| {
            let command = format!("PUB flood{who}-{n} {}", "f".repeat(900));
            let _ = s.write_all(&frame(command.as_bytes()));
        }));
    }
    // Maximal messages to fresh topics.
    let max = (1 << 20) - 60;
    attacks.push(Box::new(move |s, n| {
        let command = [format!("PUB big{} ", n % 40).as_bytes(), &vec![b'b'; max]].concat();
        let _ = s.write_all(&frame(&command));
    }));
    // Resumes from 0 of a large history, in a loop.
    attacks.push(Box::new(|s, _| {
        let _ = s.write_all(&frame(b"SUB big1 0"));
        let _ = s.write_all(&frame(b"UNSUB big1"));
        std::thread::sleep(ms(5));
    }));
    // Subscriptions to the limit and past it.
    attacks.push(Box::new(|s, n| {
        let _ = s.write_all(&frame(format!("SUB many{n}").as_bytes()));
        if n > 200 {
            std::thread::sleep(ms(10));
        }
    }));
    // Slow HTTP heads.
    for _ in 0..30 {
        let stop = Arc::clone(&stop);
        attacks.push(Box::new(move |_, _| {
            if let Ok(mut s) = TcpStream::connect(metrics) {
                let _ = s.write_all(b"GET /topics HTTP/1.1\r\n");
                while s.write_all(b"Y").is_ok() && !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(ms(100));
                }
            }
        }));
    }
    let published = std::thread::scope(|scope| {
        for work in attacks {
            let stop = &stop;
            scope.spawn(move || {
                let mut s = TcpStream::connect(addr).unwrap();
                drain(&s);
                let started = Instant::now();
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) && started.elapsed() < attack {
                    work(&mut s, n);
                    n += 1;
                }
            });
        }
        // Health checks all along: every one answered.
        let health = scope.spawn(|| {
            let started = Instant::now();
            let mut checks = 0;
            while started.elapsed() < attack {
                let (status, body) = util::http_get(metrics, "/healthz");
                assert_eq!(
                    (status, body.as_str()),
                    (200, "ok\n"),
                    "health check {checks}"
                );
                checks += 1;
                std::thread::sleep(ms(50));
            }
            checks
        });
        // The well-behaved publisher: 20 a second.
        let mut publisher = Client::connect(addr);
        let mut published = 0;
        let started = Instant::now();
        while started.elapsed() < attack {
            published += 1;
            assert_eq!(
                ask(&mut publisher, format!("PUB good {published}").as_bytes()),
                format!("OK PUB good {published}")
            );
            std::thread::sleep(ms(50));
        }
        assert!(health.join().unwrap() > 10);
        stop.store(true, Ordering::Relaxed);
        published
    });
    for n in 1..=published {
        assert_eq!(data(&mut good), format!("MSG good {n} {n}"));
    }
    assert!(
        server.child.try_wait().unwrap().is_none(),
        "the server died"
    );
    let rss_kib = util::rss_kib(server.pid());
    let text = util::scrape(metrics);
    let history = util::sample(&text, "wheel_pubsub_history_bytes");
    eprintln!(
        "after the attacks: RSS {} MiB (baseline {} MiB), history {:.1} MiB; refused: {}",
        rss_kib / 1024,
        baseline_kib / 1024,
        history / f64::from(1 << 20),
        text.lines()
            .filter(|l| l.starts_with("wheel_refused_total{"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    assert!(history <= f64::from(64 << 20), "history {history}");
    // The history budget, plus a baseline for what is not history: the
    // attack connections' outboxes and in-flight messages (at most a few
    // 1 MiB messages each), thread stacks, and the allocator's free lists.
    assert!(
        rss_kib < baseline_kib + (64 + 96) * 1024,
        "RSS {rss_kib} KiB from {baseline_kib} KiB"
    );
    for reason in ["too_many_subscriptions", "publish_rate"] {
        assert!(refused(metrics, reason) >= 1.0, "{reason}: {text}");
    }
    assert!(util::sample(&text, "wheel_pubsub_history_evicted_total") >= 1.0);
}
