//! Presence: who is in a topic (`WHO`, `GET /presence/<topic>`) and join
//! and leave events, each leave with its reason, to the subscribers that
//! watch (`SUB <topic> presence`); bounded by `--presence-rate`.

mod util;

use std::time::{Duration, Instant};

use util::redis::{RedisServer, redis_or_skip};
use util::{
    Client, Msg, PATIENCE, ServerProcess, config, http_get, ms, sample, scrape, wait_until,
};
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

/// An instance sharing topics and presence through `redis`, beating every
/// `heartbeat`.
fn instance(redis: &RedisServer, heartbeat: Duration) -> Server {
    let mut config = presence_config();
    config.redis = Some(redis.url());
    config.presence_heartbeat = heartbeat;
    start(config)
}

/// The id of the member a `JOIN room <id> -` event is about.
fn joined_id(event: &str) -> String {
    event
        .strip_prefix("JOIN room ")
        .and_then(|rest| rest.strip_suffix(" -"))
        .unwrap_or_else(|| panic!("a JOIN, got {event:?}"))
        .to_owned()
}

/// Two instances on one Redis, beating every `heartbeat`: `a` in this
/// process with a watcher of `room`, and `b` in a process of its own (to
/// be killed, frozen or stopped) with `members` members of `room`, their
/// ids as the watcher saw them join.
struct AcrossInstances {
    a: Server,
    b: ServerProcess,
    watcher: Client,
    members: Vec<Client>,
    ids: Vec<String>,
}

fn across_instances(redis: &RedisServer, heartbeat: Duration, members: usize) -> AcrossInstances {
    let a = instance(redis, heartbeat);
    let url = redis.url();
    let every = format!("{}ms", heartbeat.as_millis());
    let b = ServerProcess::start(&[
        "--service",
        "pubsub",
        "--redis",
        &url,
        "--presence-heartbeat",
        &every,
    ]);
    let mut watcher = Client::connect(a.local_addr());
    assert_eq!(command(&mut watcher, "SUB room presence"), "OK SUB room 0");
    let (mut clients, mut ids) = (Vec::new(), Vec::new());
    for _ in 0..members {
        let mut member = Client::connect(b.addr);
        assert_eq!(command(&mut member, "SUB room"), "OK SUB room 0");
        ids.push(joined_id(&next_event(&mut watcher).1));
        clients.push(member);
    }
    AcrossInstances {
        a,
        b,
        watcher,
        members: clients,
        ids,
    }
}

/// The next event a watcher is told, keeping it alive meanwhile: PINGs
/// until something other than a PONG comes, within [`PATIENCE`].
fn next_event(watcher: &mut Client) -> (Instant, String) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        assert!(Instant::now() < deadline, "no event");
        match watcher.try_recv(ms(50)) {
            Some(util::Recv::Msg(Msg::Data(payload))) => {
                let text = String::from_utf8(payload).unwrap();
                if text != "PONG" {
                    return (Instant::now(), text);
                }
            }
            Some(other) => panic!("expected DATA, got {other:?}"),
            None => watcher.send(Message::Data(b"PING")),
        }
    }
}

/// `WHO <topic> [<after>]`: the `MEMBER` lines and the `OK WHO` line (a
/// watcher's PONGs, which [`next_event`] may leave behind, skipped).
fn who(c: &mut Client, topic: &str, after: Option<&str>) -> (Vec<String>, String) {
    let line = match after {
        Some(after) => format!("WHO {topic} {after}"),
        None => format!("WHO {topic}"),
    };
    c.send(Message::Data(line.as_bytes()));
    let mut members = Vec::new();
    loop {
        match next(c) {
            pong if pong == "PONG" => {}
            ok if ok.starts_with("OK WHO ") => return (members, ok),
            member => members.push(member),
        }
    }
}

#[test]
fn two_instances_on_redis_list_each_others_members_and_see_them_join_and_leave() {
    if !redis_or_skip() {
        return;
    }
    let redis = RedisServer::start();
    let (a, b) = (instance(&redis, ms(100)), instance(&redis, ms(100)));
    let mut watcher = Client::connect(a.local_addr());
    assert_eq!(command(&mut watcher, "SUB room presence"), "OK SUB room 0");
    let watcher_id = own_id(&mut watcher, "room");
    let a_instance = watcher_id
        .split_once('@')
        .expect("conn@instance")
        .1
        .to_owned();

    // A member on the other instance: the watcher is told, through Redis.
    let mut member = Client::connect(b.local_addr());
    assert_eq!(command(&mut member, "SUB room"), "OK SUB room 0");
    let member_id = joined_id(&next_event(&mut watcher).1);
    let b_instance = member_id.split_once('@').expect("conn@instance").1;
    assert_ne!(b_instance, a_instance, "each instance has its own id");

    // WHO on either instance lists both, the oldest first.
    for c in [&mut watcher, &mut member] {
        let (members, ok) = who(c, "room", None);
        assert_eq!(members.len(), 2, "{members:?}");
        assert!(
            members[0].starts_with(&format!("MEMBER room {watcher_id} - ")),
            "{members:?}"
        );
        assert!(
            members[1].starts_with(&format!("MEMBER room {member_id} - ")),
            "{members:?}"
        );
        assert_eq!(ok, "OK WHO room 2 0");
    }
    // Paged: after the first, the second alone.
    let (members, ok) = who(&mut member, "room", Some(&watcher_id));
    assert_eq!(members.len(), 1, "{members:?}");
    assert_eq!(members[0].split(' ').nth(2), Some(member_id.as_str()));
    assert_eq!(ok, "OK WHO room 2 0");
    // And the admin endpoint of either.
    let (status, body) = http_get(a.metrics_addr().unwrap(), "/presence/room?limit=1");
    assert_eq!(status, 200, "{body}");
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["connections"], 2, "{body}");
    assert_eq!(json["members"][0]["id"], watcher_id.as_str(), "{body}");
    assert_eq!(json["next"], watcher_id.as_str(), "{body}");

    // A leave on the other instance, with its reason.
    assert_eq!(command(&mut member, "UNSUB room"), "OK UNSUB room");
    assert_eq!(
        next_event(&mut watcher).1,
        format!("LEAVE room {member_id} - unsubscribed")
    );
    // The other instance drains (as on SIGTERM): its members leave
    // `drained`, said before it is gone.
    assert_eq!(command(&mut member, "SUB room"), "OK SUB room 0");
    let member_id = joined_id(&next_event(&mut watcher).1);
    let drain = std::thread::spawn(move || b.shutdown());
    assert_eq!(
        next_event(&mut watcher).1,
        format!("LEAVE room {member_id} - drained")
    );
    drain.join().unwrap();
    let (members, ok) = who(&mut watcher, "room", None);
    assert_eq!(members.len(), 1, "{members:?}");
    assert!(members[0].starts_with(&format!("MEMBER room {watcher_id} ")));
    assert_eq!(ok, "OK WHO room 1 0");
    let metrics = scrape(a.metrics_addr().unwrap());
    assert_eq!(sample(&metrics, "wheel_presence_instances_lost_total"), 0.0);
    assert_eq!(sample(&metrics, "wheel_presence_redis_dropped_total"), 0.0);
}

#[test]
fn a_killed_instance_s_members_leave_instance_lost_within_four_heartbeats() {
    if !redis_or_skip() {
        return;
    }
    let heartbeat = ms(200);
    let redis = RedisServer::start();
    let AcrossInstances {
        a,
        mut b,
        mut watcher,
        members: _members,
        mut ids,
    } = across_instances(&redis, heartbeat, 3);
    // No goodbye: the connections stay open in the kernel's eyes until
    // the process is gone, and nothing tells Redis.
    b.signal(libc::SIGKILL);
    let killed = Instant::now();
    b.wait_exit(PATIENCE).expect("killed");
    let mut left = Vec::new();
    let mut last = killed;
    while left.len() < ids.len() {
        let (at, event) = next_event(&mut watcher);
        let parts: Vec<&str> = event.split(' ').collect();
        assert_eq!(
            (parts[0], parts.get(4).copied()),
            ("LEAVE", Some("instance_lost")),
            "{event}"
        );
        left.push(parts[2].to_owned());
        last = at;
    }
    left.sort();
    ids.sort();
    assert_eq!(left, ids);
    // Its last beat came about one heartbeat before the kill at most (half
    // a heartbeat more allowed for a late beat on a busy machine) and
    // expires three after it; a survivor looks once a heartbeat.
    let took = last - killed;
    assert!(took >= heartbeat * 3 / 2, "too soon: {took:?}");
    assert!(
        took <= heartbeat * 4 + ms(800),
        "not within 4 heartbeats (plus a margin for a busy machine): {took:?}"
    );
    let (members, ok) = who(&mut watcher, "room", None);
    assert_eq!(members.len(), 1, "the watcher alone: {members:?}");
    assert_eq!(ok, "OK WHO room 1 0");
    let metrics = scrape(a.metrics_addr().unwrap());
    assert_eq!(sample(&metrics, "wheel_presence_instances_lost_total"), 1.0);
}

#[test]
fn a_frozen_client_leaves_with_idle_timeout_when_the_wheel_finds_it() {
    // A real client process, SIGSTOPped: its socket stays open and the
    // kernel answers for it, but it sends no heartbeat.
    let (idle, tick, interval) = (ms(400), ms(10), ms(50));
    let mut config = presence_config();
    config.idle_timeout = Some(idle);
    config.tick = tick;
    let server = start(config);
    let addr = server.local_addr().to_string();
    let mut watcher = Client::connect(server.local_addr());
    assert_eq!(command(&mut watcher, "SUB room presence"), "OK SUB room 0");
    let mut client = std::process::Command::new(util::example_binary())
        .args([
            &addr,
            "--json",
            "--presence",
            "room",
            "--heartbeat-interval",
            "50ms",
        ])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("run the heartbeat-client example");
    let (_, joined) = next_event(&mut watcher);
    assert!(joined.starts_with("JOIN room "), "{joined}");
    // SAFETY: kill(2) on our own child's pid has no memory effects.
    assert_eq!(unsafe { libc::kill(client.id() as i32, libc::SIGSTOP) }, 0);
    let stopped = Instant::now();
    let (at, left) = next_event(&mut watcher);
    // SAFETY: as above.
    unsafe { libc::kill(client.id() as i32, libc::SIGKILL) };
    let _ = client.wait();
    assert!(left.ends_with(" - idle_timeout"), "{left}");
    // Its last heartbeat came about one interval before the stop at most
    // (one more allowed for a late one on a busy machine).
    let took = at - stopped;
    assert!(took + interval * 2 >= idle, "too soon: {took:?}");
    assert!(
        took <= idle + tick + ms(300),
        "not within the idle timeout and a tick (plus a margin for a busy machine): {took:?}"
    );
}

#[test]
fn a_frozen_instance_s_members_leave_and_join_again_when_it_wakes() {
    if !redis_or_skip() {
        return;
    }
    // Frozen past its heartbeats (SIGSTOP: a stall, or a partition from
    // Redis), an instance is taken for gone; when it wakes, its next beat
    // finds that out and puts its members back.
    let redis = RedisServer::start();
    // (The in-process instance is bound, so that it lives to the end.)
    let AcrossInstances {
        a: _a,
        b,
        mut watcher,
        mut members,
        ids,
    } = across_instances(&redis, ms(100), 1);
    let (id, member) = (&ids[0], &mut members[0]);
    b.signal(libc::SIGSTOP);
    assert_eq!(
        next_event(&mut watcher).1,
        format!("LEAVE room {id} - instance_lost")
    );
    b.signal(libc::SIGCONT);
    assert_eq!(next_event(&mut watcher).1, format!("JOIN room {id} -"));
    let (members, ok) = who(&mut watcher, "room", None);
    assert!(
        members
            .iter()
            .any(|m| m.starts_with(&format!("MEMBER room {id} "))),
        "{members:?}"
    );
    assert_eq!(ok, "OK WHO room 2 0");
    // The member itself noticed nothing.
    assert_eq!(command(member, "PING"), "PONG");
}

#[test]
fn who_answers_at_most_presence_page_members_and_pages_through_the_rest() {
    let mut config = presence_config();
    config.presence_page = 2;
    let server = start(config);
    let members: Vec<Client> = (0..5)
        .map(|_| {
            let mut c = Client::connect(server.local_addr());
            assert_eq!(command(&mut c, "SUB room"), "OK SUB room 0");
            c
        })
        .collect();
    let mut asker = Client::connect(server.local_addr());
    let mut listed = Vec::new();
    let mut after = None;
    let mut pages = 0;
    loop {
        let (page, ok) = who(&mut asker, "room", after.as_deref());
        pages += 1;
        assert!(page.len() <= 2, "{page:?}");
        after = page.last().map(|m| m.split(' ').nth(2).unwrap().to_owned());
        listed.extend(page);
        if ok == "OK WHO room 5 0" {
            break;
        }
        assert_eq!(ok, "OK WHO room 5 0 more");
        assert!(pages < 5, "paging does not end");
    }
    assert_eq!((pages, listed.len()), (3, 5), "{listed:?}");
    let admin = server.metrics_addr().unwrap();
    let (status, body) = http_get(admin, "/presence/room?limit=3");
    assert_eq!((status, body.as_str()), (400, "limit must be 1 to 2\n"));
    let (status, body) = http_get(admin, "/presence/room");
    assert_eq!(status, 200, "{body}");
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["members"].as_array().unwrap().len(), 2, "{body}");
    let metrics = scrape(admin);
    assert_eq!(sample(&metrics, "wheel_presence_queries_total"), 4.0);
    assert_eq!(sample(&metrics, "wheel_presence_members_listed_total"), 7.0);
    drop(members);
}

#[test]
fn a_sigtermed_instance_s_members_leave_drained_and_it_says_goodbye() {
    if !redis_or_skip() {
        return;
    }
    let redis = RedisServer::start();
    let AcrossInstances {
        a,
        mut b,
        mut watcher,
        mut members,
        ids,
    } = across_instances(&redis, ms(100), 1);
    let id = &ids[0];
    b.signal(libc::SIGTERM);
    // The member reads its CLOSE 1001 and hangs up, as a client should.
    assert_eq!(members[0].expect_close().0, 1001);
    assert_eq!(
        next_event(&mut watcher).1,
        format!("LEAVE room {id} - drained")
    );
    assert!(b.wait_exit(PATIENCE).is_some_and(|s| s.success()));
    // Gone from the instances' registry: nobody will take it for lost.
    assert_eq!(
        redis.command("ZCARD wheel:instances").as_deref(),
        Some(":1")
    );
    // And it never is: past the bound of 4 heartbeats, none was lost.
    std::thread::sleep(ms(100) * 5);
    let metrics = scrape(a.metrics_addr().unwrap());
    assert_eq!(sample(&metrics, "wheel_presence_instances_lost_total"), 0.0);
    let (members, ok) = who(&mut watcher, "room", None);
    assert_eq!(members.len(), 1, "{members:?}");
    assert_eq!(ok, "OK WHO room 1 0");
}
