//! WebSocket listeners: interoperability with a client nobody here wrote
//! (Python's `websockets`, through tests/python/ws_peer.py), and bad input
//! through raw sockets: refused upgrades, dribbled requests and frames,
//! frames breaking RFC 6455.

mod util;

use std::io::Write;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use util::{Client, Recv, ServerProcess, config, ms, sample, scrape, start, wait_until};
use wheel_server::protocol::{Message, Protocol, code};
use wheel_server::server::pubsub::PubSub;
use wheel_server::{Config, Server};

/// A configuration with one WebSocket listener at `/ws` and the admin
/// endpoint on.
fn ws_config() -> Config {
    {
        let mut config = config();
        config.protocol = Protocol::Ws;
        config.path = Some("/ws".into());
        config.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
        config
    }
}

fn url(addr: SocketAddr) -> String {
    format!("ws://{addr}/ws")
}

/// Runs a scenario of tests/python/ws_peer.py and returns the JSON objects
/// it printed.
fn python(args: &[&str]) -> Vec<Value> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/ws_peer.py");
    let out = Command::new("python3")
        .arg(script)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "ws_peer.py {args:?} failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
        .lines()
        .map(|line| serde_json::from_str(line).expect("one JSON object per line"))
        .collect()
}

fn closes(server: &Server, reason: &str) -> f64 {
    let text = scrape(server.metrics_addr().unwrap());
    sample(
        &text,
        &format!("wheel_connections_closed_total{{reason=\"{reason}\"}}"),
    )
}

fn upgrades(server: &Server, result: &str) -> f64 {
    let text = scrape(server.metrics_addr().unwrap());
    sample(
        &text,
        &format!("wheel_ws_upgrades_total{{result=\"{result}\"}}"),
    )
}

#[test]
fn python_websockets_echo_keeps_opcodes_and_gets_pongs_and_a_close_answer() {
    if !util::python_websockets_or_skip() {
        return;
    }
    let server = start(ws_config());
    let seen = python(&["echo", &url(server.local_addr())]);
    let kinds: Vec<(&str, &Value)> = seen
        .iter()
        .map(|v| (v["kind"].as_str().unwrap(), &v["value"]))
        .collect();
    assert_eq!(kinds[0], ("str", &Value::from("héllo")));
    assert_eq!(kinds[1], ("bytes", &Value::from("00ff62696e")));
    assert_eq!(
        kinds[2],
        ("bytes", &Value::from("6173636969")),
        "binary that is UTF-8 stays binary"
    );
    assert_eq!(kinds[3], ("fragmented", &Value::from("fragmented")));
    assert_eq!(kinds[4].0, "pong");
    assert_eq!(seen[5]["kind"], "closed");
    assert_eq!(
        seen[5]["code"], 1000,
        "the server answers a Close with 1000"
    );
    assert!(wait_until(ms(2000), || closes(&server, "peer_close_frame") == 1.0));
    assert_eq!(upgrades(&server, "ok"), 1.0);
}

#[test]
fn python_websockets_is_closed_at_the_idle_timeout_with_4000() {
    if !util::python_websockets_or_skip() {
        return;
    }
    let server = start({
        let mut config = ws_config();
        config.idle_timeout = Some(ms(300));
        config
    });
    let seen = python(&["wait_close", &url(server.local_addr()), "5"]);
    let closed = seen.last().unwrap();
    assert_eq!(closed["kind"], "closed", "{seen:?}");
    assert_eq!(closed["code"], code::IDLE_TIMEOUT);
    assert_eq!(closed["reason"], "idle timeout");
    let seconds = closed["seconds"].as_f64().unwrap();
    assert!((0.25..3.0).contains(&seconds), "closed after {seconds}s");
}

#[test]
fn probe_pings_keep_a_silent_python_client_alive() {
    if !util::python_websockets_or_skip() {
        return;
    }
    let server = start({
        let mut config = ws_config();
        config.idle_timeout = Some(ms(400));
        config.probe_after = Some(ms(100));
        config
    });
    // Silent for three idle timeouts: only the library's answers to the
    // server's WebSocket Pings keep it open.
    let seen = python(&["probed", &url(server.local_addr()), "1.2"]);
    assert_eq!(
        seen,
        vec![serde_json::json!({"kind": "echo", "value": "still here"})]
    );
    let text = scrape(server.metrics_addr().unwrap());
    assert!(sample(&text, "wheel_probes_sent_total") >= 2.0, "{text}");
    assert_eq!(closes(&server, "idle_timeout"), 0.0);
}

#[test]
fn a_message_over_max_frame_gets_1009() {
    if !util::python_websockets_or_skip() {
        return;
    }
    let server = start({
        let mut config = ws_config();
        config.max_frame = 1024;
        config
    });
    let seen = python(&["too_big", &url(server.local_addr()), "2000"]);
    assert_eq!(seen[0]["kind"], "closed");
    assert_eq!(seen[0]["code"], code::TOO_BIG);
}

#[test]
fn sigterm_drains_a_python_client_with_1001() {
    if !util::python_websockets_or_skip() {
        return;
    }
    let mut server =
        ServerProcess::start(&["--listen", "ws://127.0.0.1:0/ws", "--shutdown-grace", "5s"]);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/ws_peer.py");
    let mut peer = Command::new("python3")
        .args([script, "wait_close", &url(server.addr), "10"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(peer.stdout.take().unwrap()));
    let open: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert_eq!(open["kind"], "open");
    let signalled = Instant::now();
    server.signal(libc::SIGTERM);
    let closed: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert_eq!(closed["kind"], "closed");
    assert_eq!(closed["code"], code::GOING_AWAY);
    assert_eq!(closed["reason"], "server shutting down");
    assert!(peer.wait().unwrap().success());
    // The client answered the Close and hung up: the drain ends well
    // before the grace period.
    let status = server.wait_exit(Duration::from_secs(10)).expect("exits");
    assert!(status.success(), "{status:?}");
    assert!(
        signalled.elapsed() < Duration::from_secs(4),
        "drained in {:?}",
        signalled.elapsed()
    );
}

#[test]
fn pubsub_over_websocket_publishes_and_resumes() {
    if !util::python_websockets_or_skip() {
        return;
    }
    let server = Server::with_handler(ws_config(), PubSub).unwrap();
    let seen = python(&["pubsub", &url(server.local_addr())]);
    let values: Vec<&str> = seen.iter().map(|v| v["value"].as_str().unwrap()).collect();
    assert_eq!(
        values,
        [
            "OK SUB room 0",
            "OK PUB room 1",
            "OK PUB room 2",
            "OK PUB room 3",
            "MSG room 1 message 0",
            "MSG room 2 message 1",
            "MSG room 3 message 2",
            "PONG browser-style",
            "OK SUB room 3 recovered",
            "MSG room 2 message 1",
            "MSG room 3 message 2",
        ]
    );
}

#[test]
fn origins_not_allowed_get_403_and_others_connect() {
    if !util::python_websockets_or_skip() {
        return;
    }
    let server = start({
        let mut config = ws_config();
        config.allowed_origins = vec!["http://app.example".into()];
        config
    });
    let u = url(server.local_addr());
    let evil = python(&["refused", &u, "http://evil.example"]);
    assert_eq!(
        evil[0],
        serde_json::json!({"kind": "refused", "status": 403})
    );
    let good = python(&["refused", &u, "http://app.example"]);
    assert_eq!(good[0]["kind"], "open");
    assert_eq!(upgrades(&server, "forbidden"), 1.0);
}

/// Sends `request` raw and reads the status of the answer.
fn raw_status(addr: SocketAddr, request: &[u8]) -> u16 {
    let mut c = Client::connect_with(addr, Protocol::Frame);
    c.send_raw(request);
    c.http_head().0
}

#[test]
fn bad_upgrade_requests_get_their_http_status_and_are_counted() {
    let server = start(ws_config());
    let addr = server.local_addr();
    let mut c = Client::connect_with(addr, Protocol::Frame);
    assert_eq!(c.upgrade("/elsewhere", "").0, 404);
    let mut body = String::new();
    std::io::Read::read_to_string(&mut c.stream, &mut body).unwrap();
    assert_eq!(body, "no WebSocket endpoint at /elsewhere\n", "then closed");
    assert_eq!(
        raw_status(addr, b"GET /ws HTTP/1.1\r\nHost: x\r\n\r\n"),
        426
    );
    assert_eq!(
        raw_status(addr, b"POST /ws HTTP/1.1\r\nHost: x\r\n\r\n"),
        400
    );
    assert_eq!(raw_status(addr, b"\x00\x00\x00\x02\x02x\r\n\r\n"), 400);
    let mut huge = b"GET /ws HTTP/1.1\r\nX-Filler: ".to_vec();
    huge.resize(9000, b'a');
    assert_eq!(raw_status(addr, &huge), 431);
    let upgrade = |version: &str, key: &str| {
        format!(
            "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: {version}\r\n\r\n"
        )
    };
    let key = "dGhlIHNhbXBsZSBub25jZQ==";
    assert_eq!(raw_status(addr, upgrade("8", key).as_bytes()), 426);
    assert_eq!(raw_status(addr, upgrade("13", "tooshort").as_bytes()), 400);
    for (result, n) in [
        ("not_found", 1.0),
        ("upgrade_required", 2.0),
        ("bad_request", 3.0),
        ("too_large", 1.0),
        ("ok", 0.0),
    ] {
        assert!(
            wait_until(ms(2000), || upgrades(&server, result) == n),
            "{result}: {}",
            upgrades(&server, result)
        );
    }
    assert!(wait_until(ms(2000), || closes(&server, "bad_upgrade") == 7.0));
    // The server still serves.
    let mut ok = Client::connect_at(addr, Protocol::Ws, "/ws");
    assert_eq!(ok.ping(b"x"), util::Msg::Pong(b"x".to_vec()));
}

#[test]
fn an_upgrade_dribbled_past_the_handshake_timeout_is_dropped_and_counted() {
    let server = start({
        let mut config = ws_config();
        config.handshake_timeout = ms(300);
        config
    });
    let mut c = Client::connect_with(server.local_addr(), Protocol::Frame);
    let started = Instant::now();
    let request = b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n";
    let mut dropped = false;
    for byte in request {
        if c.stream.write_all(&[*byte]).is_err() {
            dropped = true;
            break;
        }
        if c.try_recv(ms(40)).is_some() {
            dropped = true;
            break;
        }
    }
    assert!(
        dropped || c.try_recv(ms(2000)).is_some(),
        "still open after {:?}",
        started.elapsed()
    );
    let elapsed = started.elapsed();
    assert!(elapsed >= ms(250), "dropped early, after {elapsed:?}");
    let text = scrape(server.metrics_addr().unwrap());
    assert_eq!(
        sample(&text, "wheel_handshake_timeouts_total{stage=\"websocket\"}"),
        1.0
    );
}

#[test]
fn frames_breaking_rfc_6455_get_1002_and_bad_utf8_1007() {
    let server = start(ws_config());
    let addr = server.local_addr();
    let mask = [1, 2, 3, 4];
    let masked = |first: u8, payload: &[u8]| {
        let mut out = vec![first, 0x80 | payload.len() as u8];
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
        out
    };
    let cases: [(&str, Vec<u8>, u16); 5] = [
        ("unmasked", vec![0x81, 0x01, b'x'], code::PROTOCOL_ERROR),
        ("reserved bit", masked(0xc1, b"x"), code::PROTOCOL_ERROR),
        ("reserved opcode", masked(0x83, b"x"), code::PROTOCOL_ERROR),
        ("fragmented ping", masked(0x09, b"x"), code::PROTOCOL_ERROR),
        ("bad UTF-8", masked(0x81, &[0xc3, 0x28]), code::INVALID_DATA),
    ];
    for (what, frame, expected) in cases {
        let mut c = Client::connect_at(addr, Protocol::Ws, "/ws");
        c.send_raw(&frame);
        assert_eq!(c.expect_close().0, expected, "{what}");
    }
    let mut c = Client::connect_at(addr, Protocol::Ws, "/ws");
    c.send(Message::Data(b"still serving"));
    assert_eq!(c.recv_msg(), util::Msg::Data(b"still serving".to_vec()));
}

#[test]
fn a_dribbled_frame_is_not_activity_and_is_reaped_at_the_idle_timeout() {
    let server = start({
        let mut config = ws_config();
        config.idle_timeout = Some(ms(300));
        config
    });
    let mut c = Client::connect_at(server.local_addr(), Protocol::Ws, "/ws");
    let mut frame = Vec::new();
    Protocol::Ws
        .encode_as_client(&Message::Data(&[b'z'; 100]), &mut frame)
        .unwrap();
    let started = Instant::now();
    let mut closed = None;
    for byte in &frame[..frame.len() - 1] {
        if c.stream.write_all(&[*byte]).is_err() {
            break;
        }
        if let Some(Recv::Msg(util::Msg::Close(code, _))) = c.try_recv(ms(20)) {
            closed = Some(code);
            break;
        }
    }
    assert_eq!(closed, Some(code::IDLE_TIMEOUT));
    let elapsed = started.elapsed();
    assert!(
        (ms(250)..ms(2000)).contains(&elapsed),
        "closed after {elapsed:?}"
    );
}

#[test]
fn a_full_server_answers_an_upgrade_with_503() {
    let server = start({
        let mut config = ws_config();
        config.max_connections = 1;
        config
    });
    let _first = Client::connect_at(server.local_addr(), Protocol::Ws, "/ws");
    let mut second = Client::connect_with(server.local_addr(), Protocol::Frame);
    let (status, head) = second.upgrade("/ws", "");
    assert_eq!(status, 503, "{head}");
    assert!(head.contains("Retry-After"), "{head}");
}

/// Issue 26: a message fragmented into 11,000 one-byte frames, the next
/// header only partly there, filled the input buffer to its limit; the
/// next read had no room, returned 0, and the connection ended as if the
/// peer had closed. It is a message over the limit: CLOSE 1009.
#[test]
fn a_message_fragmented_past_the_input_buffer_gets_1009() {
    let server = start({
        let mut config = config();
        config.protocol = Protocol::Ws;
        config.max_frame = 64 * 1024;
        config
    });
    let mut c = Client::connect_with(server.local_addr(), Protocol::Ws);
    let fragment = |first: bool| {
        let mask = [1u8, 2, 3, 4];
        [
            vec![if first { 0x01 } else { 0x00 }, 0x81],
            mask.to_vec(),
            vec![b'a' ^ 1],
        ]
        .concat()
    };
    let mut wire = fragment(true);
    for _ in 0..11_000 {
        wire.extend(fragment(false));
    }
    wire.push(0x00); // the next header's first byte
    // The server may close before it has read everything.
    let _ = c.stream.write_all(&wire);
    let (code, reason) = c.expect_close();
    assert_eq!(code, 1009, "{reason}");
}
