//! The browser pages in a real browser: headless Chromium loads the demo
//! page (web/demo.html with web/wheel-client.js) and the dashboard from a
//! running server, and the tests read what the pages log to the console
//! (one `wheel: {json}` line per event).

mod util;

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;
use util::{Client, Msg, ServerProcess, http};
use wheel_server::protocol::{Message, Protocol};

/// Flags for a headless Chromium run as root on a machine with no outside
/// network: no sandbox, and none of the background traffic it would try.
const CHROMIUM_FLAGS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--hide-scrollbars",
    "--window-size=1280,860",
];

/// A headless Chromium showing one page, and the events it logs.
struct Browser {
    child: Child,
    events: mpsc::Receiver<Value>,
    profile: PathBuf,
}

impl Browser {
    fn open(url: &str) -> Browser {
        let profile = profile_dir("page");
        let mut child = Command::new("chromium")
            .args(CHROMIUM_FLAGS)
            .arg(format!("--user-data-dir={}", profile.display()))
            .args(["--enable-logging=stderr", "--v=0", url])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            // Its own process group, so that dropping it kills every
            // process Chromium started.
            .process_group(0)
            .spawn()
            .expect("start chromium");
        let stderr = child.stderr.take().unwrap();
        let (tx, events) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(event) = console_event(&line)
                    && tx.send(event).is_err()
                {
                    break;
                }
            }
        });
        Browser {
            child,
            events,
            profile,
        }
    }

    /// Events until one matches `want` (returned), or panics after
    /// `timeout`; every event seen meanwhile goes to `seen`.
    fn wait_for(
        &self,
        seen: &mut Vec<Value>,
        timeout: Duration,
        want: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.events.recv_timeout(left) {
                Ok(event) => {
                    seen.push(event.clone());
                    if want(&event) {
                        return event;
                    }
                }
                Err(_) => panic!("no such event within {timeout:?}; saw {seen:#?}"),
            }
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the process group of our own child.
        unsafe { libc::kill(-(self.child.id() as i32), libc::SIGKILL) };
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

/// The JSON of a `console.log("wheel: ...")` line in Chromium's log:
/// `[...:INFO:CONSOLE:12] "wheel: {...}", source: http://... (12)`.
fn console_event(line: &str) -> Option<Value> {
    let start = line.find("\"wheel: ")? + "\"wheel: ".len();
    let end = line.rfind("\", source:")?;
    serde_json::from_str(line.get(start..end)?).ok()
}

/// A fresh Chromium profile directory under the target directory.
fn profile_dir(what: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "chromium-{what}-{}-{:?}",
        std::process::id(),
        Instant::now()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn chromium_or_skip() -> bool {
    util::tool_or_skip("chromium", "--version")
}

/// A loopback port free right now, for a server that must come back on
/// the same one.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn pubsub_server(port: u16) -> ServerProcess {
    ServerProcess::start(&[
        "--listen",
        &format!("ws://127.0.0.1:{port}/ws"),
        "--service",
        "pubsub",
        "--admin-listen",
        "127.0.0.1:0",
        "--idle-timeout",
        "30s",
    ])
}

fn is(event: &Value, name: &str) -> bool {
    event["event"] == name
}

#[test]
fn the_demo_page_detects_a_dead_server_reconnects_and_loses_nothing() {
    if !chromium_or_skip() {
        return;
    }
    let port = free_port();
    let mut server = pubsub_server(port);
    let admin = server.metrics_addr();
    // The page finds the WebSocket listener through /listeners.
    let page = format!(
        "http://{admin}/demo?topic=news&interval=300&timeout=200&retries=2&backoffBase=100&backoffCap=400"
    );
    let browser = Browser::open(&page);
    let mut seen = Vec::new();
    let patience = Duration::from_secs(20);
    browser.wait_for(&mut seen, patience, |e| is(e, "subscribed"));
    for i in 1..=5 {
        util::publish(admin, "news", &format!("a{i}"));
    }
    browser.wait_for(&mut seen, patience, |e| {
        is(e, "message") && e["payload"] == "a5"
    });

    // A hung server (stopped: the kernel still holds the connection, the
    // application answers nothing) is found by the heartbeat alone.
    server.signal(libc::SIGSTOP);
    let dead = browser.wait_for(&mut seen, patience, |e| is(e, "dead"));
    let silent = dead["silentMs"].as_f64().unwrap();
    // interval + timeout * retries = 700 ms, on the page's timers.
    assert!(
        (650.0..5000.0).contains(&silent),
        "declared dead after {silent} ms of silence"
    );

    // Killed and restarted on the same port; messages published while the
    // page is away come to it from history when it resumes.
    server.signal(libc::SIGKILL);
    server.wait_exit(Duration::from_secs(10));
    let restarted = pubsub_server(port);
    let admin = restarted.metrics_addr();
    for i in 1..=3 {
        util::publish(admin, "news", &format!("b{i}"));
    }
    browser.wait_for(&mut seen, patience, |e| {
        is(e, "message") && e["payload"] == "b3"
    });
    let payloads: Vec<&str> = seen
        .iter()
        .filter(|e| is(e, "message"))
        .map(|e| e["payload"].as_str().unwrap())
        .collect();
    assert_eq!(payloads, ["a1", "a2", "a3", "a4", "a5", "b1", "b2", "b3"]);
    // It came back by reconnecting, and said that the topic started over.
    let opens = seen.iter().filter(|e| is(e, "open")).count();
    assert!(opens >= 2, "{seen:#?}");
    assert!(
        seen.iter().any(|e| is(e, "gap") && e["first"] == 1),
        "{seen:#?}"
    );
}

#[test]
fn the_dashboard_shows_the_live_connection_count_and_renders() {
    if !chromium_or_skip() {
        return;
    }
    let server = ServerProcess::start(&[
        "--listen",
        "ws://127.0.0.1:0/ws",
        "--listen",
        "127.0.0.1:0",
        "--service",
        "pubsub",
        "--admin-listen",
        "127.0.0.1:0",
    ]);
    let ws = server.addr;
    let clients: Vec<Client> = (0..3)
        .map(|_| {
            let mut c = Client::connect_at(ws, Protocol::Ws, "/ws");
            c.send(Message::Data(b"SUB lobby"));
            assert_eq!(c.recv_msg(), Msg::Data(b"OK SUB lobby 0".to_vec()));
            c
        })
        .collect();
    let page = format!("http://{}/?every=200", server.metrics_addr());
    let browser = Browser::open(&page);
    let mut seen = Vec::new();
    let shown = browser.wait_for(&mut seen, Duration::from_secs(20), |e| {
        is(e, "dashboard") && e["open"] == 3
    });
    assert_eq!(shown["listed"], 3, "the connections table lists them");
    // The presence panel shows the busiest topic's members.
    assert_eq!(shown["presence"]["topic"], "lobby", "{shown}");
    assert_eq!(shown["presence"]["connections"], 3, "{shown}");
    assert_eq!(shown["presence"]["listed"], 3, "{shown}");
    drop(browser);

    // A screenshot, kept as a test artifact.
    let shot = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png");
    let _ = std::fs::remove_file(&shot);
    let profile = profile_dir("shot");
    let status = Command::new("chromium")
        .args(CHROMIUM_FLAGS)
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(["--virtual-time-budget=3000"])
        .arg(format!("--screenshot={}", shot.display()))
        .arg(&page)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    let _ = std::fs::remove_dir_all(&profile);
    assert!(status.success(), "{status:?}");
    let png = std::fs::read(&shot).expect("screenshot written");
    assert!(png.starts_with(b"\x89PNG"), "not a PNG");
    assert!(png.len() > 10_000, "a blank page? {} bytes", png.len());
    drop(clients);
}

/// A page on another origin that the operator opens cannot change the
/// server (issue 26: cross-site request forgery against the admin endpoint,
/// which needs no token by default). Chromium sends the "simple request"
/// POSTs a page may make without asking; the endpoint refuses them by their
/// `Origin`, so nothing is published and nobody is closed. (Same-origin
/// POSTs are accepted: `tests/pubsub.rs`; the endpoint's own pages only
/// GET, and keep working: the tests above.)
#[test]
fn a_page_on_another_origin_cannot_publish_or_close() {
    if !chromium_or_skip() {
        return;
    }
    let server = ServerProcess::start(&[
        "--listen",
        "127.0.0.1:0",
        "--service",
        "pubsub",
        "--admin-listen",
        "127.0.0.1:0",
    ]);
    let admin = server.metrics_addr();
    let mut victim = Client::connect(server.addr);
    victim.send(wheel_server::protocol::Message::Data(b"SUB news"));
    assert!(matches!(victim.recv_msg(), util::Msg::Data(_)));
    // The attacker's page, on an origin of its own.
    let page = format!(
        r#"<!doctype html><script>
const admin = "http://{admin}";
const simple = {{ method: "POST", mode: "no-cors", headers: {{ "Content-Type": "text/plain" }}, body: "csrf" }};
Promise.allSettled([
  fetch(admin + "/publish/news", simple),
  fetch(admin + "/connections/0.0/close?code=4100", simple),
]).then((r) => console.log("wheel: " + JSON.stringify({{ event: "attacked", sent: r.length }})));
</script>"#
    );
    let site = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/", site.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in site.incoming().flatten() {
            let mut stream = stream;
            let mut head = [0u8; 2048];
            let _ = std::io::Read::read(&mut stream, &mut head);
            let _ = std::io::Write::write_all(
                &mut stream,
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{page}",
                    page.len()
                )
                .as_bytes(),
            );
        }
    });
    let browser = Browser::open(&url);
    let mut seen = Vec::new();
    browser.wait_for(&mut seen, Duration::from_secs(20), |e| is(e, "attacked"));
    drop(browser);
    // Both requests reached the endpoint and were refused there.
    let (_, metrics) = http(
        admin,
        &format!("GET /metrics HTTP/1.0\r\nHost: {admin}\r\n\r\n"),
    );
    let (status, topics) = http(
        admin,
        &format!("GET /topics HTTP/1.0\r\nHost: {admin}\r\n\r\n"),
    );
    assert_eq!(status, 200);
    let topics: Value = serde_json::from_str(&topics).unwrap();
    assert_eq!(topics["topics"][0]["last_seq"], 0, "published: {topics}");
    assert!(
        !metrics.contains("wheel_pubsub_publishes_total 1"),
        "{metrics}"
    );
    // The victim is still connected and subscribed.
    victim.send(wheel_server::protocol::Message::Ping(b"still here"));
    assert_eq!(victim.recv_msg(), util::Msg::Pong(b"still here".to_vec()));
}

/// Presence (issue 31): two pages on the demo watching one topic see each
/// other (the second finds the first already there, the first sees the
/// second join), and the first sees the second leave when its page goes.
#[test]
fn two_pages_see_each_other_join_and_one_leave() {
    if !chromium_or_skip() {
        return;
    }
    let server = pubsub_server(free_port());
    let admin = server.metrics_addr();
    let page = format!("http://{admin}/demo?topic=room&presence=1&interval=300&timeout=200");
    let patience = Duration::from_secs(20);
    let first = Browser::open(&page);
    let mut seen_first = Vec::new();
    let alone = first.wait_for(&mut seen_first, patience, |e| is(e, "members"));
    assert_eq!(alone["connections"], 1, "{seen_first:#?}");
    let second = Browser::open(&page);
    let mut seen_second = Vec::new();
    let both = second.wait_for(&mut seen_second, patience, |e| is(e, "members"));
    assert_eq!(both["connections"], 2, "{seen_second:#?}");
    // The second saw the first already there, among the members.
    let members: Vec<&Value> = seen_second
        .iter()
        .filter(|e| is(e, "presence") && e["change"] == "member")
        .collect();
    assert_eq!(members.len(), 2, "{seen_second:#?}");
    // The first saw the second join...
    let joined = first.wait_for(&mut seen_first, patience, |e| {
        is(e, "presence") && e["change"] == "join"
    });
    let conn = joined["conn"].clone();
    // ...and sees it leave when its page goes away.
    drop(second);
    let left = first.wait_for(&mut seen_first, patience, |e| {
        is(e, "presence") && e["change"] == "leave"
    });
    assert_eq!(left["conn"], conn, "{seen_first:#?}");
    assert_eq!(left["reason"], "closed", "{seen_first:#?}");
    // And the page shows who is left: itself.
    let shown = first.wait_for(&mut seen_first, patience, |e| is(e, "members_shown"));
    assert_eq!(shown["count"], 1, "{seen_first:#?}");
}
