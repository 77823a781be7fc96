//! Authentication with JWTs: the `AUTH` exchange, every way a token is
//! refused, the handshake deadline, and expiry enforced by the wheel (never
//! early, about a tick late) with refresh.

mod util;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::json;
use util::{Client, Msg, PATIENCE, config, ms};
use wheel_server::protocol::Message;
use wheel_server::server::auth::{Authenticated, Jwt};
use wheel_server::{Config, Echo, Server};

const SECRET: &[u8] = b"test secret, not for production";

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn token(claims: serde_json::Value) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(SECRET).unwrap(),
    )
    .unwrap()
}

fn server(extra: Config) -> Server {
    Server::with_handler(
        {
            let mut config = extra;
            config.tick = ms(20);
            config.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
            config
        },
        Authenticated::new(Echo, Jwt::hs256(SECRET).unwrap()),
    )
    .unwrap()
}

fn auth(c: &mut Client, token: &str) {
    c.send(Message::Data(format!("AUTH {token}").as_bytes()));
}

#[test]
fn a_valid_token_admits_the_connection_with_its_subject() {
    let server = server(config());
    let exp = now_secs() + 60;
    let mut c = Client::connect(server.local_addr());
    auth(&mut c, &token(json!({"sub": "alice", "exp": exp})));
    assert_eq!(
        c.recv_msg(),
        Msg::Data(format!("OK AUTH alice {exp}").into_bytes())
    );
    c.send(Message::Data(b"hello"));
    assert_eq!(c.recv_msg(), Msg::Data(b"hello".to_vec()));
    let text = util::scrape(server.metrics_addr().unwrap());
    assert_eq!(util::sample(&text, "wheel_auth_total{result=\"ok\"}"), 1.0);
}

#[test]
fn every_bad_token_and_a_missing_auth_get_4001() {
    let server = server(config());
    let exp = now_secs() + 60;
    let none_alg = {
        use base64_free::encode_url;
        format!(
            "{}.{}.",
            encode_url(br#"{"alg":"none","typ":"JWT"}"#),
            encode_url(format!(r#"{{"sub":"mallory","exp":{exp}}}"#).as_bytes())
        )
    };
    let wrong_key = encode(
        &Header::new(Algorithm::HS256),
        &json!({"sub": "alice", "exp": exp}),
        &EncodingKey::from_secret(b"another secret").unwrap(),
    )
    .unwrap();
    let wrong_alg = encode(
        &Header::new(Algorithm::HS384),
        &json!({"sub": "alice", "exp": exp}),
        &EncodingKey::from_secret(SECRET).unwrap(),
    )
    .unwrap();
    let cases = [
        (
            "expired",
            format!(
                "AUTH {}",
                token(json!({"sub": "alice", "exp": now_secs() - 10}))
            ),
        ),
        (
            "not yet valid",
            format!(
                "AUTH {}",
                token(json!({"sub": "alice", "exp": exp, "nbf": exp - 5}))
            ),
        ),
        ("wrong signature", format!("AUTH {wrong_key}")),
        ("wrong algorithm", format!("AUTH {wrong_alg}")),
        ("alg none", format!("AUTH {none_alg}")),
        (
            "missing sub",
            format!("AUTH {}", token(json!({"exp": exp}))),
        ),
        (
            "missing exp",
            format!("AUTH {}", token(json!({"sub": "alice"}))),
        ),
        ("garbage", "AUTH not.a.jwt".to_owned()),
        ("data first", "hello".to_owned()),
    ];
    for (what, first) in &cases {
        let mut c = Client::connect(server.local_addr());
        c.send(Message::Data(first.as_bytes()));
        assert_eq!(
            c.expect_close(),
            (4001, "unauthorized".to_owned()),
            "{what}"
        );
    }
    // A PING before AUTH is not served either.
    let mut c = Client::connect(server.local_addr());
    c.send(Message::Ping(b"early"));
    assert_eq!(c.expect_close().0, 4001);
    // The client reads the CLOSE before the worker has counted the close.
    let counted = || {
        let text = util::scrape(server.metrics_addr().unwrap());
        util::sample(
            &text,
            "wheel_connections_closed_total{reason=\"unauthorized\"}",
        )
    };
    let expected = (cases.len() + 1) as f64;
    util::wait_until(util::ms(2000), || counted() == expected);
    assert_eq!(counted(), expected);
}

#[test]
fn no_auth_within_the_handshake_timeout_gets_4001_and_is_counted() {
    let server = server({
        let mut config = config();
        config.handshake_timeout = ms(300);
        config
    });
    let mut c = Client::connect(server.local_addr());
    let started = std::time::Instant::now();
    assert_eq!(c.expect_close().0, 4001);
    let took = started.elapsed();
    assert!(took >= ms(295) && took < ms(1500), "{took:?}");
    let text = util::scrape(server.metrics_addr().unwrap());
    assert_eq!(
        util::sample(&text, "wheel_handshake_timeouts_total{stage=\"auth\"}"),
        1.0
    );
}

/// The wall-clock instant of a Unix second.
fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

#[test]
fn the_token_expires_on_time_and_a_refresh_pushes_it_back() {
    let server = server({
        let mut config = config();
        config.idle_timeout = None;
        config
    });
    // Expiry: never before exp, at most a tick (20 ms) plus latency after.
    let exp = now_secs() + 2;
    let mut c = Client::connect(server.local_addr());
    auth(&mut c, &token(json!({"sub": "bob", "exp": exp})));
    assert_eq!(
        c.recv_msg(),
        Msg::Data(format!("OK AUTH bob {exp}").into_bytes())
    );
    let closed = c.recv_msg();
    let now = SystemTime::now();
    assert_eq!(closed, Msg::Close(4002, "token expired".into()));
    assert!(
        now >= at(exp),
        "closed {:?} early",
        at(exp).duration_since(now).unwrap()
    );
    let late = now.duration_since(at(exp)).unwrap();
    eprintln!("token expiry: closed {late:?} after exp");
    assert!(late < ms(300), "closed {late:?} after exp");

    // Refresh: a newer token for the same subject before exp.
    let first_exp = now_secs() + 2;
    let mut d = Client::connect(server.local_addr());
    auth(&mut d, &token(json!({"sub": "bob", "exp": first_exp})));
    assert_eq!(
        d.recv_msg(),
        Msg::Data(format!("OK AUTH bob {first_exp}").into_bytes())
    );
    let second_exp = first_exp + 2;
    auth(&mut d, &token(json!({"sub": "bob", "exp": second_exp})));
    assert_eq!(
        d.recv_msg(),
        Msg::Data(format!("OK AUTH bob {second_exp}").into_bytes())
    );
    // A token for someone else changes nothing.
    auth(
        &mut d,
        &token(json!({"sub": "eve", "exp": second_exp + 100})),
    );
    assert_eq!(d.recv_msg(), Msg::Data(b"ERR unauthorized".to_vec()));
    // Still served past the first expiry.
    while SystemTime::now() < at(first_exp) + ms(200) {
        assert_eq!(d.ping(b"alive"), Msg::Pong(b"alive".to_vec()));
        std::thread::sleep(ms(50));
    }
    let closed = d.recv_msg();
    assert_eq!(closed, Msg::Close(4002, "token expired".into()));
    assert!(SystemTime::now() >= at(second_exp));
}

/// `alg: none` tokens are built by hand: the point is that no library on
/// this side produces one.
mod base64_free {
    pub fn encode_url(bytes: &[u8]) -> String {
        const TABLE: &[u8; 64] =
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let n =
                chunk.iter().fold(0u32, |n, &b| (n << 8) | u32::from(b)) << (8 * (3 - chunk.len()));
            for i in 0..=chunk.len() {
                out.push(TABLE[(n >> (18 - 6 * i) & 63) as usize] as char);
            }
        }
        out
    }
}

#[test]
fn pubsub_gives_each_subject_its_own_topic_and_keeps_tokens_to_their_topics() {
    use wheel_server::server::pubsub::PubSub;
    let server = Server::with_handler(
        config(),
        Authenticated::new(PubSub, Jwt::hs256(SECRET).unwrap()),
    )
    .unwrap();
    let handle = server.handle();
    let exp = now_secs() + 60;
    let mut alice = Client::connect(server.local_addr());
    auth(
        &mut alice,
        &token(json!({"sub": "alice", "exp": exp, "topics": ["chat:*"]})),
    );
    assert_eq!(data(&mut alice), format!("OK AUTH alice {exp}"));
    assert_eq!(data(&mut alice), "OK SUB user:alice 0");
    handle.publish("user:alice", b"for you").unwrap();
    assert_eq!(data(&mut alice), "MSG user:alice 1 for you");
    for (command, answer) in [
        ("SUB user:bob", "ERR forbidden topic"),
        ("PUB user:bob hi", "ERR forbidden topic"),
        ("SUB news", "ERR forbidden topic"),
        ("SUB chat:lobby", "OK SUB chat:lobby 0"),
    ] {
        alice.send(Message::Data(command.as_bytes()));
        assert_eq!(data(&mut alice), answer, "{command}");
    }
    // Without a topics claim, any topic but other users' own.
    let mut bob = Client::connect(server.local_addr());
    auth(&mut bob, &token(json!({"sub": "bob", "exp": exp})));
    assert_eq!(data(&mut bob), format!("OK AUTH bob {exp}"));
    assert_eq!(data(&mut bob), "OK SUB user:bob 0");
    bob.send(Message::Data(b"SUB news"));
    assert_eq!(data(&mut bob), "OK SUB news 0");
    bob.send(Message::Data(b"SUB user:alice"));
    assert_eq!(data(&mut bob), "ERR forbidden topic");
}

/// A backend reaches a user on every device: `POST /users/<sub>/send` and
/// `/close`.
#[test]
fn the_admin_api_reaches_every_connection_of_a_user() {
    let server = server(config());
    let admin = server.metrics_addr().unwrap();
    let exp = now_secs() + 60;
    let mut devices: Vec<Client> = (0..2)
        .map(|_| {
            let mut c = Client::connect(server.local_addr());
            auth(&mut c, &token(json!({"sub": "carol", "exp": exp})));
            assert_eq!(
                c.recv_msg(),
                Msg::Data(format!("OK AUTH carol {exp}").into_bytes())
            );
            c
        })
        .collect();
    let post = |path: &str, body: &str| {
        util::http(
            admin,
            &format!(
                "POST {path} HTTP/1.0\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            ),
        )
    };
    let (status, body) = post("/users/carol/send", "ping from the backend");
    assert_eq!(status, 200, "{body}");
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json, json!({"sub": "carol", "connections": 2, "sent": 2}));
    for d in &mut devices {
        assert_eq!(d.recv_msg(), Msg::Data(b"ping from the backend".to_vec()));
    }
    assert_eq!(post("/users/nobody/send", "x").0, 404);
    let (status, body) = post("/users/carol/close?code=4100&reason=logged+out", "");
    assert_eq!(status, 200, "{body}");
    for d in &mut devices {
        assert_eq!(d.expect_close(), (4100, "logged out".to_owned()));
    }
}

/// The client library sends its token first, rereads a token file before
/// every connection, comes back at once after CLOSE 4002 with the fresh
/// token, and backs off after CLOSE 4001.
#[test]
fn the_client_authenticates_refreshes_from_its_file_and_backs_off_when_refused() {
    use wheel_server::client::{
        Backoff, Client as HeartbeatClient, ClientConfig, DeadReason, Event, Token,
    };
    let server = server(config());
    let dir = std::env::temp_dir().join(format!("wheel-auth-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("token");
    let short = now_secs() + 2;
    std::fs::write(&file, token(json!({"sub": "dana", "exp": short})) + "\n").unwrap();
    let backoff = Backoff {
        initial: ms(400),
        max: ms(800),
        multiplier: 2.0,
    };
    let client = HeartbeatClient::start(ClientConfig {
        token: Some(Token::File(file.clone())),
        backoff,
        heartbeat_interval: ms(200),
        heartbeat_timeout: ms(200),
        seed: Some(5),
        ..ClientConfig::new(server.local_addr())
    })
    .unwrap();
    let next = |want: &dyn Fn(&Event) -> bool| loop {
        let event = client.events().recv_timeout(PATIENCE).expect("an event");
        if want(&event) {
            return event;
        }
    };
    next(&|e| matches!(e, Event::Connected { .. }));
    client.send(b"first").unwrap();
    assert_eq!(
        next(&|e| matches!(e, Event::Data(_))),
        Event::Data(b"first".to_vec())
    );
    // A fresh token on disk before the old one expires.
    let long = now_secs() + 60;
    std::fs::write(&file, token(json!({"sub": "dana", "exp": long}))).unwrap();
    let dead = next(&|e| matches!(e, Event::Dead { .. }));
    assert!(
        matches!(
            &dead,
            Event::Dead {
                reason: DeadReason::Close { code: 4002, .. }
            }
        ),
        "{dead:?}"
    );
    match next(&|e| matches!(e, Event::Reconnecting { .. })) {
        Event::Reconnecting { delay, .. } => assert!(delay <= backoff.initial / 4, "{delay:?}"),
        _ => unreachable!(),
    }
    next(&|e| matches!(e, Event::Connected { .. }));
    client.send(b"second").unwrap();
    assert_eq!(
        next(&|e| matches!(e, Event::Data(_))),
        Event::Data(b"second".to_vec())
    );
    assert!(util::wait_until(PATIENCE, || server.connection_count() == 1));

    // A refused token: 4001, then at least half the backoff window.
    std::fs::write(&file, "not a token").unwrap();
    let id = server.connection_ids()[0];
    server.handle().close(id, 4100, "re-authenticate").unwrap();
    next(&|e| {
        matches!(
            e,
            Event::Dead {
                reason: DeadReason::Close { code: 4100, .. }
            }
        )
    });
    let dead = next(&|e| matches!(e, Event::Dead { .. }));
    assert!(
        matches!(
            &dead,
            Event::Dead {
                reason: DeadReason::Close { code: 4001, .. }
            }
        ),
        "{dead:?}"
    );
    match next(&|e| matches!(e, Event::Reconnecting { .. })) {
        Event::Reconnecting { attempt, delay } => {
            let cap = backoff.cap(attempt);
            assert!(
                delay >= cap / 2 && delay <= cap,
                "{delay:?} for cap {cap:?}"
            );
        }
        _ => unreachable!(),
    }
    client.close();
    let _ = std::fs::remove_dir_all(&dir);
}

/// A WebSocket client authenticates with its upgrade: the `token` query
/// parameter (what a browser can send) or an `Authorization: Bearer`
/// header; a refused token gets Close 4001 after the 101, and a WebSocket
/// without a token in its request must send `AUTH` first like any other.
#[test]
fn a_websocket_token_comes_with_the_upgrade_request() {
    use wheel_server::protocol::{Protocol, code};
    let server = server({
        let mut config = config();
        config.protocol = Protocol::Ws;
        config
    });
    let addr = server.local_addr();
    let exp = now_secs() + 60;
    let good = token(json!({"sub": "alice", "exp": exp}));
    let welcome = Msg::Data(format!("OK AUTH alice {exp}").into_bytes());

    let mut query = Client::connect_at(addr, Protocol::Frame, "/");
    assert_eq!(query.upgrade(&format!("/?token={good}"), "").0, 101);
    let mut query = query.speaking(Protocol::Ws);
    assert_eq!(query.recv_msg(), welcome);
    query.send(Message::Data(b"hello"));
    assert_eq!(query.recv_msg(), Msg::Data(b"hello".to_vec()));

    let mut header = Client::connect_at(addr, Protocol::Frame, "/");
    let bearer = format!("Authorization: Bearer {good}\r\n");
    assert_eq!(header.upgrade("/", &bearer).0, 101);
    assert_eq!(header.speaking(Protocol::Ws).recv_msg(), welcome);

    let mut bad = Client::connect_at(addr, Protocol::Frame, "/");
    assert_eq!(bad.upgrade("/?token=not.a.jwt", "").0, 101);
    let (closed, reason) = bad.speaking(Protocol::Ws).expect_close();
    assert_eq!(
        (closed, reason.as_str()),
        (code::UNAUTHORIZED, "unauthorized")
    );

    let mut first = Client::connect_at(addr, Protocol::Ws, "/");
    auth(&mut first, &good);
    assert_eq!(first.recv_msg(), welcome);
}

/// A token that is valid now but expires before the next tick (here: in
/// the current second) is refused at AUTH with the expiry's code, instead
/// of being admitted and closed at once (issue 32: a client then
/// reconnected with it three times in 0.6 s).
#[test]
fn a_token_expiring_within_a_tick_is_refused_at_auth_with_4002() {
    let server = Server::with_handler(
        {
            let mut config = config();
            config.tick = Duration::from_secs(2);
            config.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
            config
        },
        Authenticated::new(Echo, Jwt::hs256(SECRET).unwrap()),
    )
    .unwrap();
    let mut c = Client::connect(server.local_addr());
    // Valid (exp is not yet past), but within the 2 s tick.
    auth(
        &mut c,
        &token(json!({"sub": "alice", "exp": now_secs() + 1})),
    );
    assert_eq!(c.expect_close(), (4002, "token expired".to_owned()));
    let text = util::scrape(server.metrics_addr().unwrap());
    assert_eq!(
        util::sample(&text, "wheel_auth_total{result=\"refused\"}"),
        1.0
    );
}

/// The subjects tokens carry most, e-mail addresses and `auth0|...`, get
/// their personal topics (issue 26: they silently got none), reachable
/// over HTTP too; a subject with other bytes gets them escaped.
#[test]
fn subjects_with_at_signs_bars_and_spaces_get_their_personal_topics() {
    use wheel_server::server::pubsub::PubSub;
    let server = Server::with_handler(
        {
            let mut config = config();
            config.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
            config
        },
        Authenticated::new(PubSub, Jwt::hs256(SECRET).unwrap()),
    )
    .unwrap();
    let admin = server.metrics_addr().unwrap();
    let exp = now_secs() + 60;
    for (sub, topic, path) in [
        (
            "alice@example.com",
            "user:alice@example.com",
            "user:alice@example.com",
        ),
        ("auth0|5f1", "user:auth0|5f1", "user%3Aauth0%7C5f1"),
        ("Jo Do", "user:Jo%20Do", "user:Jo%2520Do"),
    ] {
        let mut c = Client::connect(server.local_addr());
        auth(&mut c, &token(json!({"sub": sub, "exp": exp})));
        assert_eq!(
            c.recv_msg(),
            Msg::Data(format!("OK AUTH {sub} {exp}").into_bytes())
        );
        assert_eq!(
            c.recv_msg(),
            Msg::Data(format!("OK SUB {topic} 0").into_bytes())
        );
        let (status, body) = util::http(
            admin,
            &format!(
                "POST /publish/{path} HTTP/1.1\r\nHost: {admin}\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi"
            ),
        );
        assert_eq!(status, 200, "{sub}: {body}");
        assert_eq!(
            c.recv_msg(),
            Msg::Data(format!("MSG {topic} 1 hi").into_bytes())
        );
        // And to the user, by subject.
        let encoded: String = sub.bytes().map(|b| format!("%{b:02X}")).collect();
        let (status, body) = util::http(
            admin,
            &format!(
                "POST /users/{encoded}/send HTTP/1.1\r\nHost: {admin}\r\nContent-Length: 2\r\nConnection: close\r\n\r\nyo"
            ),
        );
        assert_eq!(status, 200, "{sub}: {body}");
        assert_eq!(c.recv_msg(), Msg::Data(b"yo".to_vec()));
    }
}

/// Presence by user (issue 31): a user with two connections in a topic is
/// one member; ONLINE comes with the first connection's JOIN, OFFLINE with
/// the last one's LEAVE, and only then.
/// The next DATA payload, as text.
fn data(c: &mut Client) -> String {
    match c.recv_msg() {
        Msg::Data(p) => String::from_utf8(p).unwrap(),
        other => panic!("expected DATA, got {other:?}"),
    }
}

/// A connection of `sub` (a token expiring at `exp`) to a pub/sub
/// `server`: admitted (its OK AUTH and its personal topic's OK SUB read),
/// then subscribed to `room` (watching its presence, with `watch`).
fn join_room(server: &Server, sub: &str, exp: u64, watch: bool) -> Client {
    let mut c = Client::connect(server.local_addr());
    auth(&mut c, &token(json!({"sub": sub, "exp": exp})));
    assert!(data(&mut c).starts_with("OK AUTH "));
    assert!(data(&mut c).starts_with("OK SUB user:"));
    let line = if watch {
        "SUB room presence"
    } else {
        "SUB room"
    };
    c.send(Message::Data(line.as_bytes()));
    assert_eq!(data(&mut c), "OK SUB room 0");
    c
}

/// `WHO room`'s last line, `OK WHO room <connections> <users>`.
fn who_total(c: &mut Client) -> String {
    c.send(Message::Data(b"WHO room"));
    loop {
        let line = data(c);
        if line.starts_with("OK WHO") {
            return line;
        }
    }
}

#[test]
fn presence_counts_a_user_once_however_many_connections() {
    use wheel_server::server::pubsub::PubSub;
    let server = Server::with_handler(
        {
            let mut config = config();
            config.tick = ms(20);
            config
        },
        Authenticated::new(PubSub, Jwt::hs256(SECRET).unwrap()),
    )
    .unwrap();
    let exp = now_secs() + 600;
    let join = |sub: &str, watch: bool| join_room(&server, sub, exp, watch);
    let mut watcher = join("watcher", true);
    let alice_1 = join("alice", false);
    assert!(data(&mut watcher).starts_with("JOIN room "));
    assert_eq!(data(&mut watcher), "ONLINE room alice");
    let alice_2 = join("alice", false);
    let second = data(&mut watcher);
    assert!(
        second.starts_with("JOIN room ") && second.ends_with(" alice"),
        "{second}"
    );
    // WHO: three connections, two users.
    let total = who_total(&mut watcher);
    assert_eq!(total, "OK WHO room 3 2");
    drop(alice_1);
    let left = data(&mut watcher);
    assert!(
        left.starts_with("LEAVE room ") && left.ends_with(" alice closed"),
        "{left}"
    );
    drop(alice_2);
    let left = data(&mut watcher);
    assert!(left.ends_with(" alice closed"), "{left}");
    assert_eq!(data(&mut watcher), "OFFLINE room alice closed");
}

#[test]
fn across_instances_a_user_is_online_once_and_offline_after_its_last_connection_anywhere() {
    use util::redis::{RedisServer, redis_or_skip};
    use wheel_server::server::pubsub::PubSub;
    if !redis_or_skip() {
        return;
    }
    let redis = RedisServer::start();
    let instance = || {
        let mut config = config();
        config.tick = ms(20);
        config.redis = Some(redis.url());
        config.presence_heartbeat = ms(100);
        Server::with_handler(
            config,
            Authenticated::new(PubSub, Jwt::hs256(SECRET).unwrap()),
        )
        .unwrap()
    };
    let (a, b) = (instance(), instance());
    let exp = now_secs() + 600;
    let join = |server: &Server, sub: &str, watch: bool| join_room(server, sub, exp, watch);
    let mut watcher = join(&a, "watcher", true);
    // Alice here: her JOIN at once, her ONLINE from Redis, which counts
    // every instance's connections.
    let alice_a = join(&a, "alice", false);
    let joined = data(&mut watcher);
    assert!(
        joined.starts_with("JOIN room ") && joined.ends_with(" alice"),
        "{joined}"
    );
    assert_eq!(data(&mut watcher), "ONLINE room alice");
    // Alice on the other instance too: a JOIN, and no second ONLINE.
    let alice_b = join(&b, "alice", false);
    let joined = data(&mut watcher);
    assert!(
        joined.starts_with("JOIN room ") && joined.ends_with(" alice"),
        "{joined}"
    );
    let total = who_total(&mut watcher);
    assert_eq!(total, "OK WHO room 3 2", "three connections, two users");
    // Her connection here leaves: she is still online over there.
    drop(alice_a);
    let left = data(&mut watcher);
    assert!(left.ends_with(" alice closed"), "{left}");
    watcher.send(Message::Data(b"PING"));
    assert_eq!(data(&mut watcher), "PONG", "no OFFLINE while one is left");
    // Her last one, on the other instance: the LEAVE, then the OFFLINE.
    drop(alice_b);
    let left = data(&mut watcher);
    assert!(left.ends_with(" alice closed"), "{left}");
    assert_eq!(data(&mut watcher), "OFFLINE room alice closed");
}
