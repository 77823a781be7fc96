//! Real dead peers: a server and a client in two network namespaces joined
//! by a veth pair, and the cable pulled (the client's veth set down). The
//! peer simply vanishes: no FIN, no RST. Each detection path the server and
//! client claim is exercised with real kernel behaviour and its bound
//! asserted.
//!
//! Needs root and iproute2 (`.ci/run` installs it). Without them each test
//! says SKIPPED on stderr and returns; under CI it fails. Run alone with
//! `cargo test --test netns -- --nocapture` to see the measured times.

mod util;

use std::time::{Duration, Instant};

use util::netns::{Pair, SERVER_IP};
use util::{Client, Msg, ServerProcess, ms};
use wheel_server::client::{Backoff, ClientConfig, DeadReason, Event};

const BIN: &str = env!("CARGO_BIN_EXE_wheel-server");

/// Connections park 50 ms after their last DATA, so that every cable here
/// is pulled from under a parked connection (no thread of its own).
const PARK_AFTER: [&str; 2] = ["--park-after", "50ms"];

/// Starts wheel-server in the pair's server namespace.
fn server_in(pair: &Pair, args: &[&str]) -> ServerProcess {
    let mut cmd = pair.server_command(BIN);
    cmd.args(["--listen", &format!("{SERVER_IP}:0"), "-v"])
        .args(PARK_AFTER)
        .args(args);
    ServerProcess::spawn(cmd)
}

/// Connects from the client namespace and exchanges one PING; returns the
/// client and the instant of its last activity.
fn connect_and_ping(pair: &Pair, server: &ServerProcess) -> (Client, Instant) {
    let addr = server.addr;
    pair.in_client(move || {
        let mut c = Client::connect(addr);
        assert_eq!(c.ping(b"hello"), Msg::Pong(b"hello".to_vec()));
        (c, Instant::now())
    })
}

/// Waits for the server to log the connection's close; returns when it did
/// and the line.
fn server_close(server: &ServerProcess, within: Duration) -> (Instant, String) {
    server
        .wait_for_log("connection closed", within)
        .expect("the server should drop the half-open connection")
}

#[test]
fn application_idle_timeout_drops_a_pulled_cable() {
    let Some(pair) = Pair::create("application_idle_timeout_drops_a_pulled_cable") else {
        return;
    };
    let (idle, tick) = (ms(500), ms(20));
    let server = server_in(
        &pair,
        &[
            "--idle-timeout",
            "500ms",
            "--tick",
            "20ms",
            "--no-keepalive",
        ],
    );
    let (_client, last_activity) = connect_and_ping(&pair, &server);
    pair.pull_cable();
    let (at, line) = server_close(&server, Duration::from_secs(10));
    let took = at - last_activity;
    eprintln!(
        "idle timeout: dropped {took:?} after the last message (T = {idle:?}, tick {tick:?})"
    );
    assert!(line.contains("idle_timeout"), "{line}");
    // Never early from the server's side: it read the last message before
    // the client read the answer (`last_activity`), so measured from the
    // client the close may come up to that round trip early: 5 ms.
    assert!(
        took + ms(5) >= idle,
        "dropped after {took:?}, before the idle timeout"
    );
    assert!(took <= idle + tick + ms(200), "dropped after {took:?}");
}

#[test]
fn tcp_keepalive_drops_a_pulled_cable_when_the_idle_timeout_is_off() {
    let Some(pair) = Pair::create("tcp_keepalive_drops_a_pulled_cable") else {
        return;
    };
    let server = server_in(
        &pair,
        &[
            "--idle-timeout",
            "0",
            "--keepalive-idle",
            "1s",
            "--keepalive-interval",
            "1s",
            "--keepalive-count",
            "2",
            "--metrics-listen",
            "127.0.0.1:0",
        ],
    );
    let metrics = server.metrics_addr();
    let (_client, last_activity) = connect_and_ping(&pair, &server);
    pair.pull_cable();
    let (at, line) = server_close(&server, Duration::from_secs(15));
    let took = at - last_activity;
    let bound = Duration::from_secs(1 + 2); // idle + interval x count
    eprintln!(
        "keepalive: dropped {took:?} after the last message (idle + interval x count = {bound:?})"
    );
    assert!(
        line.contains("tcp_timeout") && line.contains("keepalive"),
        "{line}"
    );
    assert!(
        took >= bound - ms(100),
        "dropped after {took:?}, before keepalive could have"
    );
    assert!(took <= bound + ms(1500), "dropped after {took:?}");
    // The metrics say so too: not peer_closed, not reset. The close is
    // counted as the worker deregisters, just after its log line.
    let scrape = || pair.in_server(|| util::http_get(metrics, "/metrics")).1;
    let counted =
        |text: &str| text.contains("wheel_connections_closed_total{reason=\"tcp_timeout\"} 1");
    assert!(
        util::wait_until(util::PATIENCE, || counted(&scrape())),
        "{}",
        scrape()
    );
    let text = scrape();
    assert!(
        text.contains("wheel_connections_closed_total{reason=\"peer_closed\"} 0"),
        "{text}"
    );
}

#[test]
fn tcp_user_timeout_drops_a_pulled_cable_with_data_in_flight() {
    let Some(pair) = Pair::create("tcp_user_timeout_drops_a_pulled_cable") else {
        return;
    };
    // No application timeout, no keepalive: only unacknowledged data can
    // tell. The server's probe PING puts data in flight after the pull.
    let (probe, user_timeout) = (ms(300), Duration::from_secs(1));
    let server = server_in(
        &pair,
        &[
            "--idle-timeout",
            "0",
            "--no-keepalive",
            "--user-timeout",
            "1s",
            "--probe-after",
            "300ms",
        ],
    );
    let (_client, last_activity) = connect_and_ping(&pair, &server);
    pair.pull_cable();
    let (at, line) = server_close(&server, Duration::from_secs(15));
    let took = at - last_activity;
    eprintln!(
        "user timeout: dropped {took:?} after the last message ({:?} after the first unanswered probe at about {probe:?})",
        took.saturating_sub(probe)
    );
    assert!(
        line.contains("tcp_timeout") && line.contains("user timeout"),
        "{line}"
    );
    assert!(
        took >= probe + user_timeout - ms(100),
        "dropped after {took:?}, before the user timeout"
    );
    // The kernel checks the user timeout when a retransmission timer fires
    // (RTO 200 ms, doubling), so allow one more backoff step.
    assert!(
        took <= probe + ms(100) + user_timeout + ms(1000),
        "dropped after {took:?}"
    );
}

/// Keepalive alone cannot see a dead peer while data is in flight (Linux
/// sends no probes then), and `--probe-after` guarantees data in flight:
/// before the default user timeout, this took 939 s (the retransmission
/// limit). Now `TCP_USER_TIMEOUT` defaults to idle + interval x count.
#[test]
fn keepalive_with_a_probe_in_flight_drops_a_pulled_cable_in_keepalive_time() {
    let Some(pair) = Pair::create("keepalive_with_a_probe_in_flight") else {
        return;
    };
    let probe = ms(500);
    let server = server_in(
        &pair,
        &[
            "--idle-timeout",
            "0",
            "--keepalive-idle",
            "1s",
            "--keepalive-interval",
            "1s",
            "--keepalive-count",
            "2",
            "--probe-after",
            "500ms",
        ],
    );
    let (_client, last_activity) = connect_and_ping(&pair, &server);
    pair.pull_cable();
    let (at, line) = server_close(&server, Duration::from_secs(20));
    let took = at - last_activity;
    let detection = Duration::from_secs(1 + 2);
    eprintln!(
        "keepalive + probe in flight: dropped {took:?} after the last message (default user timeout {detection:?})"
    );
    assert!(line.contains("tcp_timeout"), "{line}");
    assert!(
        took >= detection - ms(100),
        "dropped after {took:?}, before the user timeout could have"
    );
    // The probe goes out about 500 ms after the last message; the kernel
    // checks at retransmission timeouts.
    assert!(
        took <= probe + detection + ms(1500),
        "dropped after {took:?}"
    );
}

#[test]
fn heartbeat_client_notices_a_pulled_cable_and_comes_back() {
    let Some(pair) = Pair::create("heartbeat_client_notices_a_pulled_cable") else {
        return;
    };
    let server = server_in(&pair, &[]);
    let config = ClientConfig {
        heartbeat_interval: ms(200),
        heartbeat_timeout: ms(200),
        heartbeat_retries: 2,
        connect_timeout: ms(300),
        backoff: Backoff {
            initial: ms(100),
            max: ms(300),
            multiplier: 2.0,
        },
        keepalive: None,
        seed: Some(3),
        ..ClientConfig::new(server.addr)
    };
    // Started in the client namespace: its threads and sockets live there.
    let client = pair.in_client(move || wheel_server::client::Client::start(config).unwrap());
    let next = || {
        client
            .events()
            .recv_timeout(Duration::from_secs(10))
            .expect("an event")
    };
    assert!(matches!(next(), Event::Connected { .. }));
    let last_pong = loop {
        if let Event::Pong { .. } = next() {
            break Instant::now();
        }
    };
    pair.pull_cable();
    let dead = loop {
        match next() {
            Event::Dead { reason } => break reason,
            Event::HeartbeatSent { .. } | Event::Pong { .. } => {}
            other => panic!("unexpected {other:?}"),
        }
    };
    let took = last_pong.elapsed();
    // interval + timeout x retries after the server last spoke.
    let bound = ms(200 + 200 * 2);
    eprintln!(
        "client: dead ({dead:?}) {took:?} after the last PONG (interval + timeout x retries = {bound:?})"
    );
    assert_eq!(dead, DeadReason::HeartbeatTimeout);
    assert!(took >= bound - ms(50), "declared dead after {took:?}");
    assert!(took <= bound + ms(300), "declared dead after {took:?}");
    // Retries fail while the cable is out; once it is back, connected again.
    assert!(matches!(next(), Event::Reconnecting { .. }));
    pair.plug_cable();
    let plugged = Instant::now();
    loop {
        match next() {
            Event::Connected { .. } => break,
            Event::Reconnecting { .. } | Event::ConnectFailed { .. } => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    eprintln!(
        "client: connected again {:?} after the cable came back",
        plugged.elapsed()
    );
    assert!(plugged.elapsed() < Duration::from_secs(3));
}

/// The same over TLS: the session changes nothing about finding the dead
/// peer. A rustls client in the client namespace, a CA and certificate for
/// the server's address made with rcgen.
#[test]
fn application_idle_timeout_drops_a_pulled_cable_over_tls() {
    use std::sync::Arc;

    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    use rustls::pki_types::ServerName;
    use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};
    use wheel_server::protocol::{Message, OwnedMessage, Protocol, Reader};

    let Some(pair) = Pair::create("application_idle_timeout_drops_a_pulled_cable_over_tls") else {
        return;
    };
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("netns-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "netns test CA");
    let issuer = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec![SERVER_IP.to_string()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    std::fs::write(dir.join("cert.pem"), leaf.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), key.serialize_pem()).unwrap();
    let (cert, key_file) = (dir.join("cert.pem"), dir.join("key.pem"));

    let (idle, tick) = (ms(500), ms(20));
    let mut cmd = pair.server_command(BIN);
    cmd.args(["--listen", &format!("tls://{SERVER_IP}:0"), "-v"])
        .args(PARK_AFTER)
        .args([
            "--idle-timeout",
            "500ms",
            "--tick",
            "20ms",
            "--no-keepalive",
        ])
        .arg("--tls-cert")
        .arg(&cert)
        .arg("--tls-key")
        .arg(&key_file);
    let server = ServerProcess::spawn(cmd);
    let mut roots = RootCertStore::empty();
    roots.add(issuer.der().clone()).unwrap();
    let config = Arc::new(
        ClientConfig::builder_with_provider(Arc::new(wheel_server::tls_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    );
    let addr = server.addr;
    let (_client, last_activity) = pair.in_client(move || {
        let tcp = std::net::TcpStream::connect(addr).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let name = ServerName::IpAddress(std::net::IpAddr::V4(SERVER_IP).into());
        let mut tls = StreamOwned::new(ClientConnection::new(config, name).unwrap(), tcp);
        let mut wire = Vec::new();
        Protocol::Frame
            .encode(&Message::Ping(b"tls"), &mut wire)
            .unwrap();
        std::io::Write::write_all(&mut tls, &wire).unwrap();
        let mut reader = Reader::new(Protocol::Frame, 1024);
        let mut buf = [0u8; 1024];
        let pong = loop {
            if let Some(msg) = reader.next_message().unwrap() {
                break msg;
            }
            let n = std::io::Read::read(&mut tls, &mut buf).unwrap();
            assert!(n > 0, "the server hung up");
            reader.extend(&buf[..n]);
        };
        assert_eq!(pong, OwnedMessage::Pong(b"tls".to_vec()));
        (tls, Instant::now())
    });
    pair.pull_cable();
    let (at, line) = server_close(&server, Duration::from_secs(10));
    let took = at - last_activity;
    let _ = std::fs::remove_dir_all(&dir);
    eprintln!("idle timeout over TLS: dropped {took:?} after the last message");
    assert!(line.contains("idle_timeout"), "{line}");
    // Never early from the server's side: it read the last message before
    // the client read the answer (`last_activity`), so measured from the
    // client the close may come up to that round trip early: 5 ms.
    assert!(
        took + ms(5) >= idle,
        "dropped after {took:?}, before the idle timeout"
    );
    assert!(took <= idle + tick + ms(200), "dropped after {took:?}");
}

/// Presence (issue 31): a subscriber whose cable is pulled leaves with
/// reason `idle_timeout`, seen by a watcher on the server's side within the
/// idle timeout plus one tick of its last message.
#[test]
fn a_pulled_cable_is_a_presence_leave_with_idle_timeout() {
    let Some(pair) = Pair::create("a_pulled_cable_is_a_presence_leave") else {
        return;
    };
    let (idle, tick) = (ms(500), ms(20));
    let server = server_in(
        &pair,
        &[
            "--service",
            "pubsub",
            "--idle-timeout",
            "500ms",
            "--tick",
            "20ms",
            "--no-keepalive",
        ],
    );
    let addr = server.addr;
    let data = |c: &mut Client, line: &str| {
        c.send(wheel_server::protocol::Message::Data(line.as_bytes()));
        match c.recv_msg() {
            Msg::Data(p) => String::from_utf8(p).unwrap(),
            other => panic!("expected DATA, got {other:?}"),
        }
    };
    // The watcher lives in the server's namespace, on its side of the cable.
    let mut watcher = pair.in_server(move || Client::connect(addr));
    assert_eq!(data(&mut watcher, "SUB room presence"), "OK SUB room 0");
    let (_member, last_activity) = pair.in_client(move || {
        let mut c = Client::connect(addr);
        c.send(wheel_server::protocol::Message::Data(b"SUB room"));
        assert_eq!(c.recv_msg(), Msg::Data(b"OK SUB room 0".to_vec()));
        (c, Instant::now())
    });
    let joined = match watcher.recv_msg() {
        Msg::Data(p) => String::from_utf8(p).unwrap(),
        other => panic!("expected JOIN, got {other:?}"),
    };
    assert!(joined.starts_with("JOIN room "), "{joined}");
    pair.pull_cable();
    // The watcher PINGs now and then, so that it stays; the member cannot.
    let leave = loop {
        // The PONG, with the leave before it if it came first.
        match data(&mut watcher, "PING") {
            pong if pong == "PONG" => {}
            event => {
                assert_eq!(watcher.recv_msg(), Msg::Data(b"PONG".to_vec()));
                break event;
            }
        }
        if let Some(util::Recv::Msg(Msg::Data(p))) = watcher.try_recv(ms(50)) {
            break String::from_utf8(p).unwrap();
        }
        assert!(
            last_activity.elapsed() < Duration::from_secs(10),
            "no leave within 10 s"
        );
    };
    let took = last_activity.elapsed();
    eprintln!(
        "presence: LEAVE {took:?} after the member's last message (T = {idle:?}, tick {tick:?}): {leave}"
    );
    assert!(leave.ends_with(" - idle_timeout"), "{leave}");
    assert!(took + ms(5) >= idle, "left after {took:?}, before T");
    assert!(took <= idle + tick + ms(200), "left after {took:?}");
}
