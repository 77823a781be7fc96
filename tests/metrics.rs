//! The operations endpoint: exact counters after a scripted scenario (parsed
//! with a real exposition-format parser), `/connections`, `/healthz`, and
//! robustness against bad requests.

mod util;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};

use util::{Client, Msg, PATIENCE, config, http, http_get as get, ms, start, wait_until};
use wheel_server::Config;
use wheel_server::protocol::Message;

/// Samples by `name{label=value,...}`, parsed by prometheus-parse, from
/// the OpenMetrics text Prometheus asks for.
fn scrape(addr: SocketAddr) -> HashMap<String, f64> {
    let (status, body) = http(
        addr,
        "GET /metrics HTTP/1.0\r\nAccept: application/openmetrics-text; version=1.0.0\r\n\r\n",
    );
    assert_eq!(status, 200);
    assert!(
        body.trim_end().ends_with("# EOF"),
        "OpenMetrics text ends with # EOF"
    );
    assert!(!body.contains(".."), "a doubled period in a help text");
    let lines = body.lines().map(|l| Ok(l.to_owned()));
    let parsed = prometheus_parse::Scrape::parse(lines).expect("valid exposition text");
    parsed
        .samples
        .into_iter()
        .filter_map(|s| {
            let value = match s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                _ => return None,
            };
            let mut labels: Vec<String> =
                s.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
            labels.sort();
            let key = if labels.is_empty() {
                s.metric
            } else {
                format!("{}{{{}}}", s.metric, labels.join(","))
            };
            Some((key, value))
        })
        .collect()
}

fn value(samples: &HashMap<String, f64>, key: &str) -> f64 {
    *samples
        .get(key)
        .unwrap_or_else(|| panic!("no sample {key}; have {:?}", samples.keys()))
}

fn metrics_config() -> Config {
    {
        let mut config = config();
        config.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
        config
    }
}

#[test]
fn counters_after_a_scripted_scenario_are_exact() {
    let server = start({
        let mut config = metrics_config();
        config.max_connections = 1;
        config.idle_timeout = Some(ms(200));
        config.tick = ms(10);
        config
    });
    let metrics = server.metrics_addr().unwrap();

    // A: two echoes (10 wire bytes each), three pings (6 bytes each), then
    // silence until the idle timeout.
    let mut a = Client::connect(server.local_addr());
    for _ in 0..2 {
        a.send(Message::Data(b"hello"));
        assert_eq!(a.recv_msg(), Msg::Data(b"hello".to_vec()));
    }
    for _ in 0..3 {
        assert_eq!(a.ping(b"p"), Msg::Pong(b"p".to_vec()));
    }
    // D: over the limit while A is open.
    let mut d = Client::connect(server.local_addr());
    assert_eq!(d.expect_close().0, 1013);
    assert_eq!(a.expect_close().0, 4000);
    assert!(wait_until(PATIENCE, || server.connection_count() == 0));
    // B: a protocol error.
    let mut b = Client::connect(server.local_addr());
    b.send_raw(&[0, 0, 0, 1, 0x7f]);
    assert_eq!(b.expect_close().0, 1002);
    assert!(wait_until(PATIENCE, || server.connection_count() == 0));
    assert!(wait_until(PATIENCE, || {
        value(
            &scrape(metrics),
            "wheel_timer_events_total{kind=deregister}",
        ) == 2.0
    }));

    let s = scrape(metrics);
    let close_4000 = 4 + 1 + 2 + "idle timeout".len();
    let close_1002 = 4 + 1 + 2 + "unknown frame type 0x7f".len();
    let expected: &[(&str, f64)] = &[
        ("wheel_connections_accepted_total", 2.0),
        ("wheel_connections_rejected_total{reason=server_full}", 1.0),
        ("wheel_connections_rejected_total{reason=no_thread}", 0.0),
        ("wheel_connections_closed_total{reason=idle_timeout}", 1.0),
        ("wheel_connections_closed_total{reason=protocol_error}", 1.0),
        ("wheel_connections_closed_total{reason=peer_closed}", 0.0),
        ("wheel_connections_closed_total{reason=tcp_timeout}", 0.0),
        ("wheel_connections_closed_total{reason=reset}", 0.0),
        ("wheel_connections_closed_total{reason=too_big}", 0.0),
        ("wheel_connections_closed_total{reason=ping_policy}", 0.0),
        ("wheel_connections_closed_total{reason=shutdown}", 0.0),
        ("wheel_connections_open", 0.0),
        ("wheel_frames_received_total{type=data}", 2.0),
        ("wheel_frames_received_total{type=ping}", 3.0),
        ("wheel_frames_received_total{type=pong}", 0.0),
        ("wheel_frames_received_total{type=close}", 0.0),
        ("wheel_bytes_received_total{type=data}", 20.0),
        ("wheel_bytes_received_total{type=ping}", 18.0),
        ("wheel_frames_sent_total{type=data}", 2.0),
        ("wheel_frames_sent_total{type=pong}", 3.0),
        ("wheel_frames_sent_total{type=close}", 2.0),
        ("wheel_bytes_sent_total{type=data}", 20.0),
        ("wheel_bytes_sent_total{type=pong}", 18.0),
        (
            "wheel_bytes_sent_total{type=close}",
            (close_4000 + close_1002) as f64,
        ),
        ("wheel_pings_received_total", 3.0),
        ("wheel_pongs_sent_total", 3.0),
        ("wheel_probes_sent_total", 0.0),
        ("wheel_timer_expirations_total", 1.0),
        ("wheel_timer_events_total{kind=register}", 2.0),
        ("wheel_timer_events_total{kind=deregister}", 2.0),
        ("wheel_timers_armed", 0.0),
    ];
    for &(key, want) in expected {
        assert_eq!(value(&s, key), want, "{key}");
    }
    assert!(
        value(&s, "wheel_timer_tick_lag_seconds_count") > 0.0,
        "ticks are observed"
    );
}

#[test]
fn server_probes_are_counted() {
    let server = start({
        let mut config = metrics_config();
        config.probe_after = Some(ms(30));
        config.idle_timeout = Some(ms(500));
        config.tick = ms(10);
        config
    });
    let mut c = Client::connect(server.local_addr());
    assert!(matches!(c.recv_msg(), Msg::Ping(_)));
    c.send(Message::Pong(b""));
    let metrics = server.metrics_addr().unwrap();
    assert!(wait_until(PATIENCE, || value(
        &scrape(metrics),
        "wheel_probes_sent_total"
    ) >= 1.0));
    assert!(wait_until(PATIENCE, || value(
        &scrape(metrics),
        "wheel_frames_received_total{type=pong}"
    ) == 1.0));
}

#[test]
fn connections_lists_exactly_the_live_ones() {
    let server = start(metrics_config());
    let metrics = server.metrics_addr().unwrap();
    let mut clients: Vec<Client> = (0..3)
        .map(|_| Client::connect(server.local_addr()))
        .collect();
    for c in &mut clients {
        assert_eq!(c.ping(b"x"), Msg::Pong(b"x".to_vec()));
    }
    let closed = clients.pop().unwrap();
    let closed_addr = closed.stream.local_addr().unwrap().to_string();
    drop(closed);
    assert!(wait_until(PATIENCE, || server.connection_count() == 2));

    let (status, body) = get(metrics, "/connections");
    assert_eq!(status, 200);
    let list: Vec<serde_json::Value> = serde_json::from_str(&body).unwrap();
    let mut peers: Vec<String> = list
        .iter()
        .map(|c| c["peer"].as_str().unwrap().to_owned())
        .collect();
    peers.sort();
    let mut expected: Vec<String> = clients
        .iter()
        .map(|c| c.stream.local_addr().unwrap().to_string())
        .collect();
    expected.sort();
    assert_eq!(peers, expected);
    assert!(!peers.contains(&closed_addr));
    for c in &list {
        let age = c["age_ms"].as_u64().unwrap();
        assert!(age < PATIENCE.as_millis() as u64, "implausible age {age}");
        assert!(c["idle_ms"].as_u64().unwrap() <= age + 100);
        assert_eq!(c["frames_in"], 1);
        assert_eq!(c["frames_out"], 1);
        assert_eq!(c["bytes_in"], 6);
        assert!(c["id"].is_string());
    }

    let (_, limited) = get(metrics, "/connections?limit=1");
    assert_eq!(
        serde_json::from_str::<Vec<serde_json::Value>>(&limited)
            .unwrap()
            .len(),
        1
    );
    assert_eq!(get(metrics, "/connections?limit=many").0, 400);
}

#[test]
fn endpoint_answers_404_405_and_survives_garbage() {
    let server = start(metrics_config());
    let metrics = server.metrics_addr().unwrap();
    assert_eq!(get(metrics, "/healthz"), (200, "ok\n".to_owned()));
    assert_eq!(get(metrics, "/nope").0, 404);
    assert_eq!(
        http(
            metrics,
            "POST /metrics HTTP/1.0\r\nContent-Length: 0\r\n\r\n"
        )
        .0,
        405
    );
    for garbage in ["GARBAGE\r\n\r\n", "\u{0}\u{1}\u{2}\r\n\r\n", "GET\r\n\r\n"] {
        let mut s = TcpStream::connect(metrics).unwrap();
        s.set_read_timeout(Some(PATIENCE)).unwrap();
        let _ = s.write_all(garbage.as_bytes());
        let mut sink = Vec::new();
        let _ = s.read_to_end(&mut sink);
    }
    // A client that connects and says nothing must not block the endpoint.
    let _silent = TcpStream::connect(metrics).unwrap();
    assert_eq!(get(metrics, "/healthz").0, 200);
    assert_eq!(get(metrics, "/metrics").0, 200);
}

#[test]
fn a_metrics_address_in_use_fails_startup_with_its_name() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let err = wheel_server::Server::start({
        let mut config = config();
        config.metrics_listen = Some(addr);
        config
    })
    .unwrap_err();
    assert!(
        err.to_string()
            .contains(&format!("cannot listen for metrics on {addr}")),
        "{err}"
    );
}

/// The attack of the issue: thousands of pipelined requests from a client
/// that never reads. Its worker gives up after the write deadline; the
/// others keep answering `/healthz`, and shutdown is not held up.
#[test]
fn a_client_that_pipelines_and_never_reads_blocks_neither_health_nor_shutdown() {
    let server = start(metrics_config());
    let metrics = server.metrics_addr().unwrap();
    let hog = TcpStream::connect(metrics).unwrap();
    hog.set_write_timeout(Some(ms(500))).unwrap();
    let flood = "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n".repeat(2000);
    // Until the server stops reading: what it has read it answers into a
    // socket nobody reads.
    let _ = (&hog).write_all(flood.as_bytes());
    for _ in 0..5 {
        let asked = std::time::Instant::now();
        assert_eq!(get(metrics, "/healthz").0, 200);
        assert!(
            asked.elapsed() < ms(1000),
            "healthz took {:?}",
            asked.elapsed()
        );
    }
    let stopping = std::time::Instant::now();
    let (done, finished) = std::sync::mpsc::channel();
    std::thread::spawn(move || done.send(server.shutdown()).unwrap());
    // The endpoint stops last, after the (empty) drain: bounded by the
    // write deadline at worst.
    assert!(
        finished
            .recv_timeout(std::time::Duration::from_secs(5))
            .is_ok(),
        "shutdown still waiting after 5 s"
    );
    assert!(stopping.elapsed() < std::time::Duration::from_secs(5));
    drop(hog);
}

/// Idle HTTP connections cost no threads: the lane reads up to 256 heads at
/// once (closing them at the head deadline), 256 more wait for it, and the
/// rest get 503 at once and are counted.
#[test]
fn idle_http_connections_are_bounded_refused_and_timed_out() {
    let server = util::ServerProcess::start(&["--metrics-listen", "127.0.0.1:0"]);
    let metrics = server.metrics_addr();
    let before = util::threads(server.pid());
    let idle: Vec<TcpStream> = (0..700)
        .map(|_| TcpStream::connect(metrics).unwrap())
        .collect();
    // Refused ones read a 503 and the end of stream.
    let mut refused = 0;
    for mut stream in idle {
        stream.set_read_timeout(Some(PATIENCE)).unwrap();
        let mut answer = String::new();
        let _ = stream.read_to_string(&mut answer);
        if answer.starts_with("HTTP/1.1 503") {
            refused += 1;
        } else {
            // In the lane or waiting for it, then closed at the head
            // deadline, unanswered.
            assert_eq!(answer, "");
        }
    }
    assert!(refused >= 700 - 256 - 256, "only {refused} refused");
    assert!(
        util::threads(server.pid()) <= before,
        "threads grew from {before} to {}",
        util::threads(server.pid())
    );
    assert!(wait_until(PATIENCE, || get(metrics, "/healthz").0 == 200));
    let text = util::scrape(metrics);
    assert!(util::sample(&text, "wheel_http_refused_total") >= refused as f64);
    assert!(util::sample(&text, "wheel_http_timeouts_total") >= 1.0);
}

#[test]
fn bad_http_heads_get_400_or_431_and_keep_alive_works() {
    let server = start(metrics_config());
    let metrics = server.metrics_addr().unwrap();
    assert_eq!(http(metrics, "GET / HTTP/1.1\r\nBad Header\r\n\r\n").0, 400);
    let huge = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(9000));
    assert_eq!(http(metrics, &huge).0, 431);
    // Two requests on one HTTP/1.1 connection, the second closing it.
    let mut s = TcpStream::connect(metrics).unwrap();
    s.set_read_timeout(Some(PATIENCE)).unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nHEAD /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut both = String::new();
    s.read_to_string(&mut both).unwrap();
    assert_eq!(both.matches("HTTP/1.1 200 OK").count(), 2, "{both}");
    assert!(
        both.ends_with("Connection: close\r\n\r\n"),
        "HEAD has no body: {both}"
    );
}

/// `curl .../metrics | promtool check metrics` (Debian's `prometheus`
/// package, which CI installs) must find nothing: without an `Accept`
/// header the endpoint answers the classic text format promtool reads.
/// Prometheus's own `Accept` gets OpenMetrics, which `scrape` above parses
/// (promtool does not read OpenMetrics).
#[test]
fn promtool_finds_nothing_in_the_default_format() {
    // Skipped visibly outside CI (said on the real stderr, which the test
    // harness does not capture); a failure under CI.
    if !util::tool_or_skip("promtool", "--version") {
        return;
    }
    let server = start(metrics_config());
    let metrics = server.metrics_addr().unwrap();
    // Some traffic, so that labelled samples are there too.
    let mut c = Client::connect(server.local_addr());
    assert_eq!(c.ping(b"x"), Msg::Pong(b"x".to_vec()));
    for (request, content_type) in [
        ("GET /metrics HTTP/1.0\r\n\r\n", "text/plain; version=0.0.4"),
        (
            "GET /metrics HTTP/1.0\r\nAccept: */*\r\n\r\n",
            "text/plain; version=0.0.4",
        ),
    ] {
        let mut s = TcpStream::connect(metrics).unwrap();
        s.set_read_timeout(Some(PATIENCE)).unwrap();
        s.write_all(request.as_bytes()).unwrap();
        let mut response = String::new();
        s.read_to_string(&mut response).unwrap();
        let (head, body) = response.split_once("\r\n\r\n").unwrap();
        assert!(
            head.contains(&format!("Content-Type: {content_type}")),
            "{head}"
        );
        assert!(!body.contains(".."), "doubled period in {body}");
        assert!(!body.contains("# EOF"), "{body}");
        let mut check = std::process::Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        check
            .stdin
            .take()
            .unwrap()
            .write_all(body.as_bytes())
            .unwrap();
        let out = check.wait_with_output().unwrap();
        let findings = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "{content_type}: {findings}");
        assert_eq!(findings.trim(), "", "{content_type}");
    }
}
