//! Push and pub/sub through real sockets and real HTTP: every command and
//! error in both protocols, ordering under concurrent publishers, resume
//! with and without a gap, slow consumers, cleanup on every close path, and
//! the admin API.

mod util;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use util::{Client, Msg, PATIENCE, Recv, config, ms, wait_until};
use wheel_server::protocol::{Message, Protocol};
use wheel_server::server::pubsub::PubSub;
use wheel_server::{Config, Server};

fn pubsub(config: Config) -> Server {
    Server::with_handler(config, PubSub).unwrap()
}

/// Sends one command as DATA.
fn command(c: &mut Client, text: &str) {
    c.send(Message::Data(text.as_bytes()));
}

/// The next DATA, as text.
fn data(c: &mut Client) -> String {
    match c.recv_msg() {
        Msg::Data(p) => String::from_utf8(p).unwrap(),
        other => panic!("expected DATA, got {other:?}"),
    }
}

fn ask(c: &mut Client, text: &str) -> String {
    command(c, text);
    data(c)
}

#[test]
fn every_command_and_error_in_every_protocol() {
    for protocol in Protocol::ALL {
        let server = pubsub({
            let mut config = config();
            config.protocol = protocol;
            config.max_subscriptions = 2;
            config
        });
        let mut a = Client::connect_with(server.local_addr(), protocol);
        let mut b = Client::connect_with(server.local_addr(), protocol);
        assert_eq!(ask(&mut a, "SUB news"), "OK SUB news 0");
        assert_eq!(ask(&mut b, "PUB news hello there"), "OK PUB news 1");
        assert_eq!(data(&mut a), "MSG news 1 hello there");
        // The publisher receives its own message when subscribed.
        assert_eq!(ask(&mut a, "PUB news mine"), "OK PUB news 2");
        assert_eq!(data(&mut a), "MSG news 2 mine");
        if protocol == Protocol::Frame {
            assert_eq!(ask(&mut a, "PING"), "PONG");
            assert_eq!(ask(&mut a, "PING are you there"), "PONG are you there");
        } else {
            // In line mode the line PING is the protocol's own PING, whose
            // PONG is the same line.
            assert_eq!(
                a.ping(b"are you there"),
                Msg::Pong(b"are you there".to_vec())
            );
        }
        assert_eq!(ask(&mut a, "UNSUB news"), "OK UNSUB news");
        assert_eq!(ask(&mut b, "PUB news unheard"), "OK PUB news 3");
        for (bad, err) in [
            ("SUB", "ERR missing topic"),
            ("SUB no spaces allowed!", "ERR invalid sequence number"),
            ("SUB bad! 1", "ERR invalid topic"),
            ("SUB news x", "ERR invalid sequence number"),
            ("HELLO", "ERR unknown command"),
            ("PUB", "ERR missing topic"),
        ] {
            assert_eq!(ask(&mut a, bad), err, "{protocol}: {bad}");
        }
        assert_eq!(ask(&mut a, "SUB one"), "OK SUB one 0");
        assert_eq!(ask(&mut a, "SUB two"), "OK SUB two 0");
        assert_eq!(ask(&mut a, "SUB three"), "ERR too many subscriptions");
        // Still open after every error.
        assert_eq!(a.ping(b"still"), Msg::Pong(b"still".to_vec()));
        // Nothing of "news" reached `a` after its UNSUB.
        assert!(a.try_recv(ms(50)).is_none());
    }
}

#[test]
fn a_frame_mode_payload_carries_any_bytes() {
    let server = pubsub(config());
    let mut a = Client::connect(server.local_addr());
    assert_eq!(ask(&mut a, "SUB bin"), "OK SUB bin 0");
    let mut pub_cmd = b"PUB bin ".to_vec();
    pub_cmd.extend_from_slice(&[0, 10, 13, 255, b' ']);
    a.send(Message::Data(&pub_cmd));
    assert_eq!(data(&mut a), "OK PUB bin 1");
    let mut expected = b"MSG bin 1 ".to_vec();
    expected.extend_from_slice(&[0, 10, 13, 255, b' ']);
    assert_eq!(a.recv_msg(), Msg::Data(expected));
}

#[test]
fn concurrent_publishers_are_seen_in_one_order_by_every_subscriber() {
    let server = pubsub(config());
    let mut subscribers: Vec<Client> = (0..3)
        .map(|_| {
            let mut c = Client::connect(server.local_addr());
            assert_eq!(ask(&mut c, "SUB race"), "OK SUB race 0");
            c
        })
        .collect();
    let publishers: Vec<_> = (0..4)
        .map(|p| {
            let handle = server.handle();
            std::thread::spawn(move || {
                for i in 0..100 {
                    handle
                        .publish("race", format!("{p}-{i}").as_bytes())
                        .unwrap();
                }
            })
        })
        .collect();
    for p in publishers {
        p.join().unwrap();
    }
    let mut orders = Vec::new();
    for c in &mut subscribers {
        let got: Vec<String> = (0..400).map(|_| data(c)).collect();
        // Sequence numbers 1..=400, contiguous and in order.
        for (i, msg) in got.iter().enumerate() {
            assert!(msg.starts_with(&format!("MSG race {} ", i + 1)), "{msg}");
        }
        // Each publisher's own messages in its order.
        for p in 0..4 {
            let mine: Vec<usize> = got
                .iter()
                .filter_map(|m| {
                    m.rsplit(' ')
                        .next()?
                        .strip_prefix(&format!("{p}-"))?
                        .parse()
                        .ok()
                })
                .collect();
            assert_eq!(mine, (0..100).collect::<Vec<_>>());
        }
        orders.push(got);
    }
    assert!(
        orders.windows(2).all(|w| w[0] == w[1]),
        "every subscriber saw the same order"
    );
}

#[test]
fn resume_recovers_everything_within_history_and_reports_a_gap_beyond() {
    let server = pubsub({
        let mut config = config();
        config.history = 5;
        config
    });
    let handle = server.handle();
    let mut c = Client::connect(server.local_addr());
    assert_eq!(ask(&mut c, "SUB feed"), "OK SUB feed 0");
    handle.publish("feed", b"one").unwrap();
    assert_eq!(data(&mut c), "MSG feed 1 one");
    // The connection dies; three more are published meanwhile.
    drop(c);
    for text in ["two", "three", "four"] {
        handle.publish("feed", text.as_bytes()).unwrap();
    }
    let mut c = Client::connect(server.local_addr());
    assert_eq!(ask(&mut c, "SUB feed 1"), "OK SUB feed 4 recovered");
    assert_eq!(data(&mut c), "MSG feed 2 two");
    assert_eq!(data(&mut c), "MSG feed 3 three");
    assert_eq!(data(&mut c), "MSG feed 4 four");
    // Live messages follow with no gap and no duplicate.
    handle.publish("feed", b"five").unwrap();
    assert_eq!(data(&mut c), "MSG feed 5 five");
    // Already up to date.
    let mut d = Client::connect(server.local_addr());
    assert_eq!(ask(&mut d, "SUB feed 5"), "OK SUB feed 5 recovered");
    // History holds 5 (1..=5 until now); publish 3 more: it holds 4..=8.
    for text in ["six", "seven", "eight"] {
        handle.publish("feed", text.as_bytes()).unwrap();
    }
    let mut e = Client::connect(server.local_addr());
    assert_eq!(ask(&mut e, "SUB feed 1"), "OK SUB feed 8 gap 2");
    let replayed: Vec<String> = (0..5).map(|_| data(&mut e)).collect();
    assert_eq!(replayed[0], "MSG feed 4 four");
    assert_eq!(replayed[4], "MSG feed 8 eight");
    // A since past the last number: the topic started over.
    let mut f = Client::connect(server.local_addr());
    assert_eq!(ask(&mut f, "SUB feed 100"), "OK SUB feed 8 gap 1");
    assert_eq!(data(&mut f), "MSG feed 4 four");
    // Even when history holds the topic from its first message: a client
    // that saw 100 must be told the numbers started over, or it would drop
    // 1..=3 as duplicates.
    handle.publish("fresh", b"one").unwrap();
    let mut g = Client::connect(server.local_addr());
    assert_eq!(ask(&mut g, "SUB fresh 100"), "OK SUB fresh 1 gap 1");
    assert_eq!(data(&mut g), "MSG fresh 1 one");
}

#[test]
fn a_stalled_subscriber_is_closed_as_a_slow_consumer_and_the_rest_keep_receiving() {
    let server = pubsub({
        let mut config = config();
        config.max_frame = 16 * 1024;
        config.max_outbox = 64 * 1024;
        config.write_timeout = Some(Duration::from_secs(30));
        config.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
        config
    });
    let handle = server.handle();
    // A subscriber that never reads, with a tiny receive buffer.
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.connect(&server.local_addr().into()).unwrap();
    let mut stalled = Client::from_stream(socket.into());
    stalled.stream.set_read_timeout(Some(PATIENCE)).unwrap();
    assert_eq!(ask(&mut stalled, "SUB firehose"), "OK SUB firehose 0");
    let mut others: Vec<Client> = (0..200)
        .map(|_| {
            let mut c = Client::connect(server.local_addr());
            assert_eq!(ask(&mut c, "SUB firehose"), "OK SUB firehose 0");
            c
        })
        .collect();
    let payload = vec![b'x'; 4096];
    let started = Instant::now();
    let mut published = 0;
    // Until the stalled one is gone (its outbox passed 64 KiB), bounded.
    while handle.subscribers("firehose") == 201 && published < 2000 {
        handle.publish("firehose", &payload).unwrap();
        published += 1;
        // The others read as they go.
        for c in &mut others {
            let msg = data(c);
            assert!(
                msg.starts_with(&format!("MSG firehose {published} ")),
                "{}",
                &msg[..30]
            );
        }
    }
    assert!(published < 2000, "the stalled subscriber was never closed");
    eprintln!(
        "slow consumer closed after {published} publishes of 4 KiB in {:?}; 200 others kept up",
        started.elapsed()
    );
    assert!(wait_until(PATIENCE, || handle.subscribers("firehose") == 200));
    // The stalled client, once it reads, finds CLOSE 4003 after the messages.
    let closed = loop {
        match stalled.recv() {
            Recv::Msg(Msg::Close(code, reason)) => break (code, reason),
            Recv::Msg(_) => {}
            other => panic!("expected CLOSE 4003, got {other:?}"),
        }
    };
    assert_eq!(closed, (4003, "slow consumer".to_owned()));
    let text = util::scrape(server.metrics_addr().unwrap());
    assert_eq!(
        util::sample(
            &text,
            "wheel_connections_closed_total{reason=\"slow_consumer\"}"
        ),
        1.0
    );
    // The others still get what comes next.
    handle.publish("firehose", b"after").unwrap();
    for c in &mut others {
        assert!(data(c).ends_with(" after"));
    }
}

#[test]
fn subscriptions_are_cleaned_up_however_a_connection_closes() {
    let server = pubsub({
        let mut config = config();
        config.idle_timeout = Some(ms(300));
        config.tick = ms(20);
        config
    });
    let handle = server.handle();
    // Idle timeout.
    let mut idle = Client::connect(server.local_addr());
    assert_eq!(ask(&mut idle, "SUB t"), "OK SUB t 0");
    assert_eq!(handle.subscribers("t"), 1);
    assert_eq!(idle.expect_close().0, 4000);
    assert!(wait_until(PATIENCE, || handle.subscribers("t") == 0));
    // Reset.
    let mut reset = Client::connect(server.local_addr());
    assert_eq!(ask(&mut reset, "SUB t"), "OK SUB t 0");
    socket2::SockRef::from(&reset.stream)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(reset);
    assert!(wait_until(PATIENCE, || handle.subscribers("t") == 0));
    // Closed by the application through the handle.
    let mut closed = Client::connect(server.local_addr());
    assert_eq!(ask(&mut closed, "SUB t"), "OK SUB t 0");
    let id = server_conn_id(&server);
    handle.close(id, 4100, "bye\nnow").unwrap();
    assert_eq!(closed.expect_close(), (4100, "bye now".to_owned()));
    assert!(wait_until(PATIENCE, || handle.subscribers("t") == 0));
    // Shutdown drain.
    let mut drained = Client::connect(server.local_addr());
    assert_eq!(ask(&mut drained, "SUB t"), "OK SUB t 0");
    let shutdown = std::thread::spawn(move || server.shutdown());
    assert_eq!(drained.expect_close().0, 1001);
    assert!(shutdown.join().unwrap());
    assert_eq!(handle.subscribers("t"), 0);
    // Nothing retained and nobody subscribed: the topic is forgotten.
    assert_eq!(handle.topics(), Vec::new());
}

/// The id of the one open connection.
fn server_conn_id(server: &Server) -> wheel_server::server::ConnId {
    server
        .connection_ids()
        .into_iter()
        .next()
        .expect("one connection")
}

/// `POST path` with an optional bearer token and a text body; returns the
/// status and body.
fn http_post(
    addr: std::net::SocketAddr,
    path: &str,
    token: Option<&str>,
    body: &[u8],
) -> (u16, String) {
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let body = std::str::from_utf8(body).expect("a text body");
    util::http(
        addr,
        &format!(
            "POST {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ),
    )
}

#[test]
fn the_admin_api_publishes_sends_closes_and_lists_behind_its_token() {
    let server = pubsub({
        let mut config = config();
        config.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
        config.admin_token = Some("s3cret".into());
        config.max_frame = 1024;
        config
    });
    let admin = server.metrics_addr().unwrap();
    let mut c = Client::connect(server.local_addr());
    assert_eq!(ask(&mut c, "SUB alerts"), "OK SUB alerts 0");
    let id = server_conn_id(&server).to_string();

    // Without the token: 401, except health and metrics.
    assert_eq!(http_post(admin, "/publish/alerts", None, b"x").0, 401);
    assert_eq!(
        http_post(admin, "/publish/alerts", Some("wrong"), b"x").0,
        401
    );
    assert_eq!(util::http_get(admin, "/topics").0, 401);
    assert_eq!(util::http_get(admin, "/healthz").0, 200);
    assert_eq!(util::http_get(admin, "/metrics").0, 200);
    // The scheme is case-insensitive (RFC 9110 section 11.1).
    let lower = util::http(
        admin,
        "GET /topics HTTP/1.0\r\nAuthorization: bearer s3cret\r\n\r\n",
    );
    assert_eq!(lower.0, 200, "{}", lower.1);

    let (status, body) = http_post(admin, "/publish/alerts", Some("s3cret"), b"disk full");
    assert_eq!(status, 200, "{body}");
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        json,
        serde_json::json!({"topic": "alerts", "seq": 1, "delivered": 1})
    );
    assert_eq!(data(&mut c), "MSG alerts 1 disk full");

    let (status, _) = http_post(
        admin,
        &format!("/connections/{id}/send"),
        Some("s3cret"),
        b"just you",
    );
    assert_eq!(status, 200);
    assert_eq!(data(&mut c), "just you");
    assert_eq!(
        http_post(admin, "/connections/999.0/send", Some("s3cret"), b"x").0,
        404
    );
    assert_eq!(
        http_post(admin, "/connections/nonsense/send", Some("s3cret"), b"x").0,
        404
    );
    assert_eq!(
        http_post(admin, "/publish/bad!topic", Some("s3cret"), b"x").0,
        400
    );

    // A body over --max-frame: 413 from the header, the body never read.
    let (status, _) = http_post(admin, "/publish/alerts", Some("s3cret"), &[b'y'; 2000]);
    assert_eq!(status, 413);

    let mut s = TcpStream::connect(admin).unwrap();
    s.set_read_timeout(Some(PATIENCE)).unwrap();
    s.write_all(b"GET /topics HTTP/1.0\r\nAuthorization: Bearer s3cret\r\n\r\n")
        .unwrap();
    let mut topics = String::new();
    s.read_to_string(&mut topics).unwrap();
    let topics: serde_json::Value =
        serde_json::from_str(topics.split_once("\r\n\r\n").unwrap().1).unwrap();
    assert_eq!(
        topics,
        serde_json::json!({
            "total": 1,
            "topics": [{"topic": "alerts", "subscribers": 1, "last_seq": 1}],
            "next": null
        })
    );

    let (status, _) = http_post(
        admin,
        &format!("/connections/{id}/close?code=4200&reason=go+away%21"),
        Some("s3cret"),
        b"",
    );
    assert_eq!(status, 200);
    assert_eq!(c.expect_close(), (4200, "go away!".to_owned()));
    assert_eq!(
        http_post(
            admin,
            &format!("/connections/{id}/close"),
            Some("s3cret"),
            b""
        )
        .0,
        404
    );
}

#[test]
fn an_admin_endpoint_off_loopback_needs_a_token() {
    let err = Server::start({
        let mut config = config();
        config.metrics_listen = Some("0.0.0.0:0".parse().unwrap());
        config
    })
    .unwrap_err();
    assert!(err.to_string().contains("admin token"), "{err}");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_wheel-server"))
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "0.0.0.0:0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.contains("--admin-token"), "{stderr}");
}

#[test]
fn listeners_of_different_protocols_share_topics() {
    let server = pubsub({
        let mut config = config();
        config.also_listen = vec![wheel_server::server::Listen::new(
            "127.0.0.1:0".parse().unwrap(),
            Protocol::Line,
        )];
        config
    });
    let listeners = server.listeners();
    assert_eq!(listeners.len(), 2);
    assert_eq!(listeners[0].addr, server.local_addr());
    assert_eq!(listeners[0].protocol, Protocol::Frame);
    assert_eq!(listeners[1].protocol, Protocol::Line);
    assert_ne!(listeners[1].addr.port(), 0, "the real port is reported");
    let mut device = Client::connect_with(listeners[0].addr, Protocol::Frame);
    let mut console = Client::connect_with(listeners[1].addr, Protocol::Line);
    assert_eq!(ask(&mut device, "SUB room"), "OK SUB room 0");
    assert_eq!(ask(&mut console, "SUB room"), "OK SUB room 0");
    // A line client publishes; the frame client receives it in frames.
    assert_eq!(
        ask(&mut console, "PUB room from the console"),
        "OK PUB room 1"
    );
    assert_eq!(data(&mut device), "MSG room 1 from the console");
    assert_eq!(data(&mut console), "MSG room 1 from the console");
    assert_eq!(ask(&mut device, "PUB room from a device"), "OK PUB room 2");
    assert_eq!(data(&mut console), "MSG room 2 from a device");
    assert_eq!(server.connection_count(), 2);
    // Shutdown drains both listeners' connections, each in its protocol.
    let drained = std::thread::spawn(move || server.shutdown());
    assert_eq!(device.expect_close().0, 1001);
    assert_eq!(console.expect_close().0, 1001);
    drop((device, console));
    assert!(drained.join().unwrap(), "both drained within the grace");
}

#[test]
fn connections_shows_what_other_threads_pushed_to_a_subscriber() {
    let server = pubsub({
        let mut config = config();
        config.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
        config
    });
    let admin = server.metrics_addr().unwrap();
    let mut sub = Client::connect(server.local_addr());
    assert_eq!(ask(&mut sub, "SUB room"), "OK SUB room 0");
    let handle = server.handle();
    for (seq, text) in (1..).zip(["one", "two", "three"]) {
        handle.publish("room", text.as_bytes()).unwrap();
        assert_eq!(data(&mut sub), format!("MSG room {seq} {text}"));
    }
    let (status, body) = util::http_get(admin, "/connections");
    assert_eq!(status, 200);
    let list: serde_json::Value = serde_json::from_str(&body).unwrap();
    let conn = &list[0];
    // The OK SUB and the three MSGs went out on the outbound path.
    assert_eq!(conn["pushed_frames"], 4, "{conn}");
    assert!(conn["pushed_bytes"].as_u64().unwrap() > 40, "{conn}");
}

/// What an embedder reaches for, on the handle: every connection with its
/// details, one by id, and a broadcast to all of them.
#[test]
fn the_handle_lists_connections_and_broadcasts() {
    let server = pubsub({
        let mut config = config();
        config.also_listen = vec![wheel_server::server::Listen::new(
            "127.0.0.1:0".parse().unwrap(),
            Protocol::Line,
        )];
        config
    });
    let handle = server.handle();
    let line_addr = server.listeners()[1].addr;
    let mut frame = Client::connect(server.local_addr());
    let mut line = Client::connect_with(line_addr, Protocol::Line);
    assert_eq!(ask(&mut frame, "SUB a"), "OK SUB a 0");
    line.send_raw(b"PING\n");
    assert_eq!(line.recv_msg(), Msg::Pong(Vec::new()));
    assert!(wait_until(PATIENCE, || handle.connection_count() == 2));
    let all = handle.connections();
    assert_eq!(all.len(), 2);
    let of = |peer| all.iter().find(|c| c.peer == peer).unwrap();
    let f = of(frame.stream.local_addr().unwrap());
    assert_eq!(
        (f.protocol, f.subscriptions, f.state),
        (Protocol::Frame, 1, "open")
    );
    assert!(!f.tls && f.subject.is_none());
    // The worker publishes its counts after it has answered.
    assert!(wait_until(PATIENCE, || {
        handle
            .connection(f.id)
            .is_some_and(|c| c.received.0 == 1 && c.peer == f.peer)
    }));
    assert_eq!(
        of(line.stream.local_addr().unwrap()).protocol,
        Protocol::Line
    );
    assert_eq!(handle.broadcast(b"to everyone"), (2, 2));
    assert_eq!(data(&mut frame), "to everyone");
    assert_eq!(line.recv_msg(), Msg::Data(b"to everyone".to_vec()));
    // A payload line mode cannot carry reaches only the frame client.
    assert_eq!(handle.broadcast(b"two\nlines"), (1, 2));
    assert_eq!(data(&mut frame), "two\nlines");
}

/// The admin endpoint against a browser on another site (issue 26): a
/// cross-site POST (a "simple request", no preflight) is refused, and a
/// name that is not this endpoint's (DNS rebinding) reads nothing; the
/// endpoint's own origin, IP addresses and localhost work as before, and a
/// conflicting or signed `Content-Length` is a 400, not a second request.
#[test]
fn the_admin_endpoint_refuses_cross_site_posts_foreign_hosts_and_smuggled_lengths() {
    let server = pubsub({
        let mut config = config();
        config.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
        config.admin_allowed_hosts = vec!["wheel.internal".into()];
        config
    });
    let admin = server.metrics_addr().unwrap();
    let request = |head: &str, body: &str| {
        util::http(
            admin,
            &format!(
                "{head}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            ),
        )
        .0
    };
    let post = |extra: &str| {
        request(
            &format!("POST /publish/news HTTP/1.1\r\nHost: {admin}\r\n{extra}"),
            "hi",
        )
    };
    assert_eq!(
        post("Origin: https://evil.example\r\nContent-Type: text/plain\r\n"),
        403
    );
    assert_eq!(post("Sec-Fetch-Site: cross-site\r\n"), 403);
    assert_eq!(post("Origin: null\r\n"), 403);
    assert_eq!(
        post(&format!(
            "Origin: http://{admin}\r\nSec-Fetch-Site: same-origin\r\n"
        )),
        200
    );
    assert_eq!(post(""), 200, "not a browser: no Origin");
    // Closing a connection is a POST too.
    assert_eq!(
        request(
            &format!(
                "POST /connections/0.0/close?code=4100 HTTP/1.1\r\nHost: {admin}\r\nOrigin: https://evil.example\r\n"
            ),
            ""
        ),
        403
    );
    let get = |host: &str| {
        request(
            &format!("GET /connections HTTP/1.1\r\nHost: {host}\r\n"),
            "",
        )
    };
    assert_eq!(get("attacker.example"), 421);
    assert_eq!(get("attacker.example:80"), 421);
    assert_eq!(get(&admin.to_string()), 200);
    assert_eq!(get(&format!("localhost:{}", admin.port())), 200);
    assert_eq!(get("WHEEL.internal"), 200);
    // Health checks and metrics answer whatever the Host.
    assert_eq!(
        request("GET /healthz HTTP/1.1\r\nHost: anything.example\r\n", ""),
        200
    );
    // Request smuggling: two lengths, a signed one.
    let smuggle = |lengths: &str| {
        util::http(
            admin,
            &format!("POST /publish/news HTTP/1.1\r\nHost: {admin}\r\n{lengths}\r\nhelloGET /connections HTTP/1.1\r\n\r\n"),
        )
        .0
    };
    assert_eq!(smuggle("Content-Length: 5\r\nContent-Length: 100\r\n"), 400);
    assert_eq!(smuggle("Content-Length: 5, 100\r\n"), 400);
    assert_eq!(smuggle("Content-Length: +5\r\n"), 400);
    assert_eq!(
        smuggle("Content-Length: 5\r\nTransfer-Encoding: chunked\r\n"),
        400
    );
    // A header folded over two lines (obs-fold, RFC 9112 5.2).
    assert_eq!(smuggle("Content-Length: 5\r\nX-Folded: a\r\n b\r\n"), 400);
    assert_eq!(
        smuggle("Content-Length: 5\r\nContent-Length: 5\r\nConnection: close\r\n"),
        200
    );
}

/// Every valid topic is reachable over HTTP (issue 26: `chat/room:1` was a
/// 404 or a 400): unencoded after `/publish/`, or percent-encoded.
#[test]
fn topics_with_slashes_and_colons_are_published_over_http() {
    let server = pubsub({
        let mut config = config();
        config.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
        config
    });
    let admin = server.metrics_addr().unwrap();
    let mut sub = Client::connect(server.local_addr());
    assert_eq!(ask(&mut sub, "SUB chat/room:1"), "OK SUB chat/room:1 0");
    for (n, path) in ["chat/room:1", "chat%2Froom:1", "chat%2Froom%3A1"]
        .iter()
        .enumerate()
    {
        let (status, body) = http_post(admin, &format!("/publish/{path}"), None, b"hi");
        assert_eq!(status, 200, "{path}: {body}");
        assert_eq!(data(&mut sub), format!("MSG chat/room:1 {} hi", n + 1));
    }
    assert_eq!(http_post(admin, "/publish/bad%20topic", None, b"x").0, 400);
    assert_eq!(http_post(admin, "/publish/%FF", None, b"x").0, 400);
}

/// `PUBONCE` without Redis: a retry with the same id is answered with the
/// first number and not delivered again.
#[test]
fn a_publish_with_an_id_is_delivered_once_without_redis_too() {
    let server = pubsub(config());
    let mut sub = Client::connect(server.local_addr());
    assert_eq!(ask(&mut sub, "SUB t"), "OK SUB t 0");
    let mut publisher = Client::connect(server.local_addr());
    for _ in 0..3 {
        assert_eq!(ask(&mut publisher, "PUBONCE t order-17 paid"), "OK PUB t 1");
    }
    assert_eq!(
        ask(&mut publisher, "PUBONCE other order-17 paid"),
        "OK PUB other 1"
    );
    assert_eq!(ask(&mut publisher, "PUB t plain"), "OK PUB t 2");
    assert_eq!(data(&mut sub), "MSG t 1 paid");
    assert_eq!(data(&mut sub), "MSG t 2 plain");
    assert!(sub.try_recv(ms(200)).is_none(), "delivered once");
    assert_eq!(
        server
            .handle()
            .publish_once("t", "order-17", b"paid")
            .unwrap()
            .seq,
        1
    );
}
