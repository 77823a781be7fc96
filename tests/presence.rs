//! Presence: who is in a topic (`WHO`, `GET /presence/<topic>`) and join
//! and leave events, each leave with its reason, to the subscribers that
//! watch (`SUB <topic> presence`); bounded by `--presence-rate`.

mod util;

use std::time::Instant;

use util::{Client, Msg, PATIENCE, config, http_get, ms, sample, scrape, wait_until};
use wheel_server::protocol::Message;
use wheel_server::server::pubsub::PubSub;
use wheel_server::{Config, Server};

fn start(config: Config) -> Server {
    util::init_logging();
    Server::with_handler(config, PubSub).expect("server starts")
}

fn presence_config() -> Config {
    let mut config = config();
    config.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
    config
}

/// Sends a command and returns the next DATA payload as text.
fn command(c: &mut Client, line: &str) -> String {
    c.send(Message::Data(line.as_bytes()));
    next(c)
}

/// The next DATA payload, as text.
fn next(c: &mut Client) -> String {
    match c.recv_msg() {
        Msg::Data(payload) => String::from_utf8(payload).unwrap(),
        other => panic!("expected DATA, got {other:?}"),
    }
}

/// This client's connection id, from `WHO` (it is the newest member).
fn own_id(c: &mut Client, topic: &str) -> String {
    let mut last = None;
    c.send(Message::Data(format!("WHO {topic}").as_bytes()));
    loop {
        let line = next(c);
        if line.starts_with("OK WHO") {
            return last.expect("a member");
        }
        last = Some(line.split(' ').nth(2).unwrap().to_owned());
    }
}

#[test]
fn watchers_see_joins_and_leaves_with_their_reasons_and_who_lists_members() {
    let server = start(presence_config());
    let addr = server.local_addr();
    let mut watcher = Client::connect(addr);
    assert_eq!(command(&mut watcher, "SUB room presence"), "OK SUB room 0");
    let mut a = Client::connect(addr);
    assert_eq!(command(&mut a, "SUB room"), "OK SUB room 0");
    let a_id = own_id(&mut a, "room");
    // Without authentication a member is its connection: user `-`.
    assert_eq!(next(&mut watcher), format!("JOIN room {a_id} -"));
    let mut b = Client::connect(addr);
    assert_eq!(command(&mut b, "SUB room"), "OK SUB room 0");
    let b_id = own_id(&mut b, "room");
    assert_eq!(next(&mut watcher), format!("JOIN room {b_id} -"));

    // WHO: every member, the oldest first, then the totals.
    watcher.send(Message::Data(b"WHO room"));
    let members: Vec<String> = (0..3).map(|_| next(&mut watcher)).collect();
    assert!(
        members[1].starts_with(&format!("MEMBER room {a_id} - ")),
        "{members:?}"
    );
    assert!(
        members[2].starts_with(&format!("MEMBER room {b_id} - ")),
        "{members:?}"
    );
    assert_eq!(next(&mut watcher), "OK WHO room 3 0");

    // A leave says why.
    assert_eq!(command(&mut a, "UNSUB room"), "OK UNSUB room");
    assert_eq!(
        next(&mut watcher),
        format!("LEAVE room {a_id} - unsubscribed")
    );
    drop(b);
    assert_eq!(next(&mut watcher), format!("LEAVE room {b_id} - closed"));
    // A non-watcher is told nothing: `a` gets only its own replies.
    assert_eq!(command(&mut a, "PING"), "PONG");

    // The admin endpoint lists the same members.
    let (status, body) = http_get(server.metrics_addr().unwrap(), "/presence/room");
    assert_eq!(status, 200, "{body}");
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["connections"], 1, "{body}");
    assert_eq!(json["members"].as_array().unwrap().len(), 1, "{body}");
    let metrics = server.metrics_addr().unwrap();
    assert_eq!(sample(&scrape(metrics), "wheel_presence_events_total"), 4.0);
}

#[test]
fn a_silent_peer_leaves_with_idle_timeout_as_soon_as_the_wheel_finds_it() {
    let (idle, tick) = (ms(300), ms(10));
    let mut config = presence_config();
    config.idle_timeout = Some(idle);
    config.tick = tick;
    let server = start(config);
    let addr = server.local_addr();
    let mut watcher = Client::connect(addr);
    assert_eq!(command(&mut watcher, "SUB room presence"), "OK SUB room 0");
    let mut silent = Client::connect(addr);
    assert_eq!(command(&mut silent, "SUB room"), "OK SUB room 0");
    let last_activity = Instant::now();
    let joined = next(&mut watcher);
    assert!(joined.starts_with("JOIN room "), "{joined}");
    // The watcher keeps itself alive; the other says nothing more.
    let deadline = Instant::now() + PATIENCE;
    let leave = loop {
        assert!(Instant::now() < deadline, "no leave");
        // The PONG, with the leave before it if it came first.
        watcher.send(Message::Data(b"PING"));
        let mut before = None;
        loop {
            match next(&mut watcher) {
                pong if pong == "PONG" => break,
                event => before = Some(event),
            }
        }
        if let Some(event) = before {
            break event;
        }
        if let Some(util::Recv::Msg(Msg::Data(p))) = watcher.try_recv(ms(50)) {
            break String::from_utf8(p).unwrap();
        }
    };
    let took = last_activity.elapsed();
    assert!(leave.ends_with(" - idle_timeout"), "{leave}");
    eprintln!("idle leave seen {took:?} after the last activity (T = {idle:?})");
    assert!(took + ms(5) >= idle, "left after {took:?}, before T");
    // Generous for a loaded machine: the bound itself is T + tick.
    assert!(took <= idle + tick + ms(500), "left after {took:?}");
}

#[test]
fn a_join_storm_is_cut_to_the_rate_and_watchers_are_told() {
    let mut config = presence_config();
    config.presence_rate = 5;
    let server = start(config);
    let addr = server.local_addr();
    let metrics = server.metrics_addr().unwrap();
    let mut watcher = Client::connect(addr);
    assert_eq!(command(&mut watcher, "SUB room presence"), "OK SUB room 0");
    let mut joiners: Vec<Client> = (0..20).map(|_| Client::connect(addr)).collect();
    let storm = Instant::now();
    for c in &mut joiners {
        assert_eq!(command(c, "SUB room"), "OK SUB room 0");
    }
    let took = storm.elapsed().as_secs_f64();
    let mut seen = Vec::new();
    while let Some(util::Recv::Msg(Msg::Data(p))) = watcher.try_recv(ms(200)) {
        seen.push(String::from_utf8(p).unwrap());
    }
    // Five joins fit the budget, then one overflow notice. The budget
    // refills at 5 a second and the notice comes at most once a second, so
    // a slow storm lets a few more through: never more than that.
    let joins = seen.iter().filter(|l| l.starts_with("JOIN room ")).count();
    let notices = seen
        .iter()
        .filter(|l| *l == "PRESENCE room overflow")
        .count();
    let first_notice = seen.iter().position(|l| l == "PRESENCE room overflow");
    let before_notice = &seen[..first_notice.unwrap_or(seen.len())];
    assert!(
        before_notice.len() >= 5 && before_notice.iter().all(|l| l.starts_with("JOIN room ")),
        "{seen:?}"
    );
    assert!(
        first_notice.is_some() || joins == 20,
        "joins dropped without a notice: {seen:?}"
    );
    assert_eq!(joins + notices, seen.len(), "nothing else: {seen:?}");
    assert!(
        joins <= 5 + (took * 5.0).ceil() as usize,
        "{joins} joins in {took:.3} s: {seen:?}"
    );
    assert!(
        notices <= 1 + took.floor() as usize,
        "{notices} notices in {took:.3} s"
    );
    let text = scrape(metrics);
    assert_eq!(
        sample(&text, "wheel_presence_events_dropped_total"),
        (20 - joins) as f64
    );
    assert_eq!(
        sample(&text, "wheel_presence_events_total"),
        seen.len() as f64
    );
    // WHO still tells the whole truth.
    watcher.send(Message::Data(b"WHO room"));
    let total = loop {
        let line = next(&mut watcher);
        if line.starts_with("OK WHO") {
            break line;
        }
    };
    assert_eq!(total, "OK WHO room 21 0");
}

#[test]
fn the_client_library_reports_joins_and_leaves() {
    use wheel_server::client::{ClientConfig, Event, PresenceChange};
    let server = start(presence_config());
    let addr = server.local_addr();
    let config = ClientConfig {
        presence: vec!["room".into()],
        seed: Some(1),
        ..ClientConfig::new(addr)
    };
    let client = wheel_server::client::Client::start(config).unwrap();
    let presence = || loop {
        match client.events().recv_timeout(PATIENCE).expect("an event") {
            Event::Presence { topic, change } => break (topic, change),
            Event::Data(p) => panic!("unexpected DATA {:?}", String::from_utf8_lossy(&p)),
            _ => {}
        }
    };
    // Subscribed (with presence) once it is a member itself.
    assert!(wait_until(PATIENCE, || server.handle().subscribers("room") == 1));
    let mut other = Client::connect(addr);
    assert_eq!(command(&mut other, "SUB room"), "OK SUB room 0");
    let id = own_id(&mut other, "room");
    assert_eq!(
        presence(),
        (
            "room".into(),
            PresenceChange::Join {
                conn: id.clone(),
                user: None
            }
        )
    );
    drop(other);
    assert_eq!(
        presence(),
        (
            "room".into(),
            PresenceChange::Leave {
                conn: id,
                user: None,
                reason: "closed".into()
            }
        )
    );
}
