//! End to end behind HAProxy: three `wheel-server` instances and 300
//! heartbeat clients streaming DATA through HAProxy (PROXY protocol v2,
//! health checks on `/healthz`, leastconn).
//!
//! 1. Every client connects, and the instances' `/connections` list exactly
//!    the clients' own addresses.
//! 2. SIGTERM one instance: its clients get CLOSE 1001, drain, and are back
//!    on the others within a bound; every DATA the instance read was
//!    answered (its final log line), and nothing was discarded.
//! 3. SIGKILL another: its clients notice (EOF) and reconnect.
//! 4. Add a fourth instance: `--max-connection-age` moves a fair share of
//!    the clients onto it within one age period.
//!
//! Throughout, no DATA message of a client that was never on the killed
//! instance is lost: each is echoed exactly once.
//!
//! A second test terminates TLS at HAProxy (a certificate made with the
//! `openssl` command) in front of one instance, reached by Python's `ssl`
//! module: a client nobody here wrote.
//!
//! Needs HAProxy (Debian's `haproxy`; `.ci/run` installs it), and for the TLS
//! test `openssl` and `python3`. Without them a test says SKIPPED on stderr;
//! under CI it fails. Figures are printed with
//! `cargo test --test haproxy -- --nocapture`.

mod util;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use util::haproxy::{HaProxy, fleet_client, free_addr, haproxy_or_skip};
use util::{PATIENCE, ServerProcess, http_get, ms, sample, scrape, tool_or_skip};
use wheel_server::client::{self, DeadReason, Event};

const CLIENTS: usize = 300;
/// `--max-connection-age` of every instance.
const AGE: Duration = Duration::from_secs(4);
/// Each client sends one DATA this often.
const SEND_EVERY: Duration = Duration::from_millis(100);

/// One `wheel-server` behind HAProxy.
struct Instance {
    process: ServerProcess,
    metrics: SocketAddr,
}

impl Instance {
    fn start(listen: SocketAddr, metrics: SocketAddr) -> Instance {
        let (listen, metrics) = (listen.to_string(), metrics.to_string());
        let age = humantime::format_duration(AGE).to_string();
        let process = ServerProcess::start(&[
            "--listen",
            &listen,
            "--metrics-listen",
            &metrics,
            "--proxy-protocol",
            "--shutdown-grace",
            "2s",
            "--max-connection-age",
            &age,
            "--max-connection-age-grace",
            "2s",
        ]);
        let metrics = process.metrics_addr();
        Instance { process, metrics }
    }

    fn open(&self) -> usize {
        sample(&scrape(self.metrics), "wheel_connections_open") as usize
    }

    fn peers(&self) -> Vec<String> {
        let (_, body) = http_get(self.metrics, "/connections");
        let list: Vec<serde_json::Value> = serde_json::from_str(&body).unwrap();
        list.iter()
            .map(|c| c["peer"].as_str().unwrap().to_owned())
            .collect()
    }
}

/// One heartbeat client and what it has seen.
struct Member {
    client: client::Client,
    /// The next DATA sequence number to send.
    sent: u32,
    /// How often each sequence number came back.
    echoed: Vec<u8>,
    /// The current connection's local address, while connected.
    local: Option<SocketAddr>,
    /// Connection ends and new connections, with when they were seen.
    deaths: Vec<(Instant, DeadReason)>,
    connects: Vec<Instant>,
}

impl Member {
    /// When its connection first ended at or after `since`.
    fn death_after(&self, since: Instant) -> Option<Instant> {
        self.deaths
            .iter()
            .map(|&(at, _)| at)
            .find(|&at| at >= since)
    }
}

/// The 300 clients, driven from one thread: every round sends what is due
/// and collects every event.
struct Fleet {
    members: Vec<Member>,
    sending: bool,
    next_send: Instant,
    /// The last round sent a burst (one DATA per client).
    just_sent: bool,
}

impl Fleet {
    fn start(front: SocketAddr) -> Fleet {
        let members = (0..CLIENTS)
            .map(|i| Member {
                client: client::Client::start(fleet_client(front, i as u64)).unwrap(),
                sent: 0,
                echoed: Vec::new(),
                local: None,
                deaths: Vec::new(),
                connects: Vec::new(),
            })
            .collect();
        Fleet {
            members,
            sending: true,
            next_send: Instant::now(),
            just_sent: false,
        }
    }

    fn round(&mut self) {
        let now = Instant::now();
        self.just_sent = self.sending && now >= self.next_send;
        if self.just_sent {
            for m in &mut self.members {
                m.client.send(m.sent.to_string().as_bytes()).unwrap();
                m.sent += 1;
                m.echoed.push(0);
            }
            self.next_send += SEND_EVERY;
        }
        for m in &mut self.members {
            for event in m.client.events().try_iter() {
                let at = Instant::now();
                match event {
                    Event::Connected { local, .. } => {
                        m.local = Some(local);
                        m.connects.push(at);
                    }
                    Event::Dead { reason } => {
                        m.local = None;
                        m.deaths.push((at, reason));
                    }
                    Event::Data(payload) => {
                        let seq: usize = std::str::from_utf8(&payload).unwrap().parse().unwrap();
                        m.echoed[seq] += 1;
                    }
                    _ => {}
                }
            }
        }
        std::thread::sleep(ms(1));
    }

    /// Runs rounds until `done` holds (true) or `timeout` passes (false).
    fn run_until(&mut self, timeout: Duration, mut done: impl FnMut(&Fleet) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            self.round();
            if done(self) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
        }
    }

    fn all_connected(&self) -> bool {
        self.members.iter().all(|m| m.local.is_some())
    }

    fn locals(&self) -> HashSet<String> {
        self.members
            .iter()
            .filter_map(|m| m.local.map(|a| a.to_string()))
            .collect()
    }

    /// Members whose connection ended after `since` for a reason `matching`.
    fn died_after(&self, since: Instant, matching: impl Fn(&DeadReason) -> bool) -> Vec<usize> {
        (0..self.members.len())
            .filter(|&i| {
                self.members[i]
                    .deaths
                    .iter()
                    .any(|(at, r)| *at >= since && matching(r))
            })
            .collect()
    }

    /// For each of `who`, the time from `since` to its reconnection after
    /// its first death since then; `None` until every one is connected
    /// again.
    fn back(&self, who: &[usize], since: Instant) -> Option<Vec<Duration>> {
        who.iter()
            .map(|&i| {
                let m = &self.members[i];
                let died = m.death_after(since)?;
                let again = m.connects.iter().find(|&&at| at >= died)?;
                m.local.map(|_| *again - since)
            })
            .collect()
    }
}

fn percentile(v: &[Duration], p: f64) -> Duration {
    let mut v = v.to_vec();
    v.sort();
    v[((v.len() - 1) as f64 * p).round() as usize]
}

/// The value of `key=` in a log line.
fn field(line: &str, key: &str) -> u64 {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
        .unwrap_or_else(|| panic!("no {key} in {line:?}"))
        .parse()
        .unwrap()
}

fn is_shutdown(r: &DeadReason) -> bool {
    matches!(r, DeadReason::Close { code: 1001, reason } if reason == "server shutting down")
}

#[test]
fn three_instances_behind_haproxy_with_drain_failover_and_rebalancing() {
    if !haproxy_or_skip() {
        return;
    }
    let test_start = Instant::now();
    // The fourth instance's addresses are in HAProxy's config from the start
    // (a provisioned slot, DOWN until an instance passes its health check).
    let spare = (free_addr(), free_addr());
    let mut instances: Vec<Instance> = (0..3)
        .map(|_| {
            Instance::start(
                "127.0.0.1:0".parse().unwrap(),
                "127.0.0.1:0".parse().unwrap(),
            )
        })
        .collect();
    let mut backends: Vec<_> = instances
        .iter()
        .map(|i| (i.process.addr, i.metrics))
        .collect();
    backends.push(spare);
    let front = free_addr();
    let haproxy = HaProxy::start(front, &backends);
    assert!(
        haproxy.wait_status(&[("s0", "UP"), ("s1", "UP"), ("s2", "UP"), ("s3", "DOWN")]),
        "HAProxy's view: {:?}",
        haproxy.status()
    );

    // 1. Every client connects through HAProxy; the instances see the
    // clients' own addresses (PROXY protocol).
    let mut fleet = Fleet::start(front);
    assert!(
        fleet.run_until(PATIENCE, Fleet::all_connected),
        "not every client connected"
    );
    let mut seen = HashSet::new();
    assert!(
        fleet.run_until(PATIENCE, |fleet| {
            seen = instances.iter().flat_map(Instance::peers).collect();
            seen == fleet.locals()
        }),
        "the instances should list exactly the clients' addresses: {} listed, {} clients",
        seen.len(),
        fleet.locals().len()
    );
    let spread: Vec<usize> = instances.iter().map(Instance::open).collect();
    eprintln!(
        "haproxy: {CLIENTS} clients connected in {:?}, spread {spread:?}",
        test_start.elapsed()
    );
    assert!(spread.iter().all(|&n| n > 0), "leastconn spread {spread:?}");

    // 2. SIGTERM instance 0: its clients get 1001, drain, and reconnect
    // through HAProxy to the others. Right after a burst, so that DATA is
    // in flight when the CLOSE goes out.
    assert!(fleet.run_until(PATIENCE, |f| {
        f.just_sent && f.members.iter().all(|m| m.echoed.iter().sum::<u8>() >= 3)
    }));
    let terminated = Instant::now();
    instances[0].process.signal(libc::SIGTERM);
    let mut victims = Vec::new();
    let mut back = None;
    let moved = fleet.run_until(PATIENCE, |fleet| {
        victims = fleet.died_after(terminated, is_shutdown);
        back = fleet.back(&victims, terminated);
        !victims.is_empty() && back.is_some()
    });
    assert!(
        moved,
        "the terminated instance's clients did not all come back"
    );
    let back = back.unwrap();
    let slowest = *back.iter().max().unwrap();
    eprintln!(
        "haproxy: SIGTERM: {} clients reconnected elsewhere, p50 {:?}, max {slowest:?} after the signal",
        victims.len(),
        percentile(&back, 0.5)
    );
    assert!(slowest < ms(2000), "slowest reconnection {slowest:?}");
    let status = instances[0]
        .process
        .wait_exit(PATIENCE)
        .expect("the terminated instance exits");
    assert_eq!(status.code(), Some(0));
    let (_, last) = instances[0]
        .process
        .wait_for_log("shut down", PATIENCE)
        .expect("the final log line");
    eprintln!("haproxy: terminated instance: {last}");
    assert_eq!(
        field(&last, "data_received"),
        field(&last, "data_sent"),
        "every DATA read must be answered: {last}"
    );
    assert!(field(&last, "data_received") > 0);
    assert_eq!(field(&last, "discarded_bytes"), 0, "{last}");
    assert_eq!(field(&last, "drains_forced"), 0, "{last}");

    // 3. SIGKILL instance 1: no CLOSE, no drain; its clients see HAProxy
    // close their side, and reconnect.
    assert!(fleet.run_until(PATIENCE, |f| f.all_connected()));
    let on_killed: HashSet<String> = instances[1].peers().into_iter().collect();
    let killed = Instant::now();
    instances[1].process.child.kill().unwrap();
    let lost: Vec<usize> = (0..CLIENTS)
        .filter(|&i| {
            let local = fleet.members[i].local;
            local.is_some_and(|a| on_killed.contains(&a.to_string()))
        })
        .collect();
    assert!(!lost.is_empty(), "no client on the instance to kill");
    let mut back = None;
    let back_again = fleet.run_until(PATIENCE, |fleet| {
        back = fleet.back(&lost, killed);
        back.is_some()
    });
    assert!(
        back_again,
        "the {} clients of the killed instance did not all notice and come back",
        lost.len()
    );
    // Any death after the kill that is not a CLOSE: a client of the killed
    // instance (also one that reached it after /connections was read).
    let noticed = fleet.died_after(killed, |r| !matches!(r, DeadReason::Close { .. }));
    let detected: Vec<Duration> = lost
        .iter()
        .map(|&i| fleet.members[i].death_after(killed).unwrap() - killed)
        .collect();
    let back = back.unwrap();
    let slowest = *back.iter().max().unwrap();
    eprintln!(
        "haproxy: SIGKILL: {} clients noticed within {:?} (p50 {:?}) and reconnected within {slowest:?} (p50 {:?})",
        lost.len(),
        detected.iter().max().unwrap(),
        percentile(&detected, 0.5),
        percentile(&back, 0.5)
    );
    assert!(slowest < ms(3000), "slowest reconnection {slowest:?}");

    // 4. Add the fourth instance: as connections reach their age, leastconn
    // sends the reconnecting clients to it until it holds a fair share.
    assert!(fleet.run_until(PATIENCE, |f| f.all_connected()));
    instances.push(Instance::start(spare.0, spare.1));
    assert!(haproxy.wait_status(&[("s3", "UP")]));
    let added = Instant::now();
    let live = [2, 3];
    let fair = CLIENTS / live.len();
    let mut shares = Vec::new();
    let balanced = fleet.run_until(AGE.mul_f64(1.1) + ms(1000), |_| {
        shares = live.iter().map(|&i| instances[i].open()).collect();
        shares.iter().sum::<usize>() == CLIENTS
            && shares.iter().all(|&n| n.abs_diff(fair) <= fair / 10)
    });
    eprintln!(
        "haproxy: max age {AGE:?}: {:?} after adding the fourth instance, clients per instance {shares:?} (fair {fair})",
        added.elapsed()
    );
    assert!(
        balanced,
        "no fair share within one age period: {shares:?} after {:?}",
        added.elapsed()
    );
    // Where things stand once a whole age period (+10%) has passed: every
    // connection older than the newcomer has been moved once.
    let period_end = added + AGE.mul_f64(1.1) + ms(200);
    fleet.run_until(period_end.saturating_duration_since(Instant::now()), |_| {
        false
    });
    assert!(fleet.run_until(PATIENCE, Fleet::all_connected));
    let shares: Vec<usize> = live.iter().map(|&i| instances[i].open()).collect();
    eprintln!(
        "haproxy: one age period after adding the fourth instance: clients per instance {shares:?}"
    );
    assert!(
        shares[1] >= CLIENTS * 2 / 5,
        "the newcomer holds {} of {CLIENTS}",
        shares[1]
    );

    // No DATA lost: stop sending, let the echoes arrive, and count. Only
    // messages written into the killed instance's connections may be gone.
    fleet.sending = false;
    let killed_clients: HashSet<usize> = lost.iter().chain(&noticed).copied().collect();
    let complete = |fleet: &Fleet| {
        fleet
            .members
            .iter()
            .enumerate()
            .filter(|(i, _)| !killed_clients.contains(i))
            .all(|(_, m)| m.echoed.iter().all(|&n| n == 1))
    };
    let lossless = fleet.run_until(ms(3000), complete);
    let (mut missing, mut doubled, mut lost_to_kill) = (0, 0, 0);
    for (i, m) in fleet.members.iter().enumerate() {
        for &n in &m.echoed {
            match n {
                0 if killed_clients.contains(&i) => lost_to_kill += 1,
                0 => missing += 1,
                1 => {}
                _ => doubled += 1,
            }
        }
    }
    let sent: u32 = fleet.members.iter().map(|m| m.sent).sum();
    eprintln!(
        "haproxy: {sent} DATA sent; unanswered: {missing} (SIGTERM and max-age drains), {lost_to_kill} (in flight to the killed instance); echoed twice: {doubled}; whole test {:?}",
        test_start.elapsed()
    );
    assert!(
        lossless && missing == 0 && doubled == 0,
        "{missing} DATA unanswered, {doubled} echoed twice"
    );
}

/// Python's own TLS client: connects to `port` trusting `ca`, prints its
/// local port, sends the hex bytes of argv[3], prints the hex of the first
/// argv[4] bytes it receives, and holds the connection until stdin closes.
const PYTHON_TLS_CLIENT: &str = r#"
import socket, ssl, sys
ctx = ssl.create_default_context(cafile=sys.argv[2])
raw = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=10)
with ctx.wrap_socket(raw, server_hostname="localhost") as s:
    print(s.getsockname()[1], flush=True)
    s.sendall(bytes.fromhex(sys.argv[3]))
    want, data = int(sys.argv[4]), b""
    while len(data) < want:
        chunk = s.recv(want - len(data))
        if not chunk:
            break
        data += chunk
    print(data.hex(), flush=True)
    sys.stdin.read()
"#;

#[test]
fn tls_terminated_at_haproxy_reaches_the_server_with_the_client_address() {
    if !haproxy_or_skip()
        || !tool_or_skip("openssl", "version")
        || !tool_or_skip("python3", "--version")
    {
        return;
    }
    use std::io::BufRead;
    use wheel_server::protocol::{Message, Protocol};
    let front = free_addr();
    let base = std::env::temp_dir().join(format!(
        "wheel-haproxy-tls-{}-{}",
        std::process::id(),
        front.port()
    ));
    let (key, cert, bundle) = (
        base.with_extension("key"),
        base.with_extension("crt"),
        base.with_extension("pem"),
    );
    // A P-256 certificate for localhost and 127.0.0.1, valid for a day.
    let made = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
        ])
        .args(["-nodes", "-days", "1", "-subj", "/CN=localhost"])
        .args(["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(made.success(), "openssl made no certificate");
    // HAProxy takes the chain and the key in one file.
    let pem = [std::fs::read(&cert).unwrap(), std::fs::read(&key).unwrap()].concat();
    std::fs::write(&bundle, pem).unwrap();

    let instance = ServerProcess::start(&[
        "--listen",
        "127.0.0.1:0",
        "--proxy-protocol",
        "--metrics-listen",
        "127.0.0.1:0",
    ]);
    let metrics = instance.metrics_addr();
    let socket = base.with_extension("sock");
    let cfg = format!(
        "global\n    stats socket {} mode 600 level admin\n\
         defaults\n    mode tcp\n    timeout connect 2s\n    timeout client 10m\n    \
         timeout server 10m\n\
         frontend wheel_tls\n    bind {front} ssl crt {}\n    default_backend servers\n\
         backend servers\n    server s0 {} send-proxy-v2\n",
        socket.display(),
        bundle.display(),
        instance.addr,
    );
    let _haproxy = HaProxy::with_config(base.clone(), socket, &cfg);
    assert!(
        util::wait_until(PATIENCE, || std::net::TcpStream::connect(front).is_ok()),
        "haproxy does not listen"
    );

    let (mut ping, mut pong) = (Vec::new(), Vec::new());
    Protocol::Frame
        .encode(&Message::Ping(b"over tls"), &mut ping)
        .unwrap();
    Protocol::Frame
        .encode(&Message::Pong(b"over tls"), &mut pong)
        .unwrap();
    let hex = |bytes: &[u8]| bytes.iter().map(|b| format!("{b:02x}")).collect::<String>();
    let mut python = Command::new("python3")
        .args(["-c", PYTHON_TLS_CLIENT])
        .arg(front.port().to_string())
        .arg(&cert)
        .arg(hex(&ping))
        .arg(pong.len().to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start python3");
    let mut lines = std::io::BufReader::new(python.stdout.take().unwrap()).lines();
    let port = lines.next().expect("the client's port").unwrap();
    let answer = lines.next().expect("the client's answer").unwrap();
    assert_eq!(answer, hex(&pong), "a PONG through TLS and HAProxy");
    // The server sees the TLS client's own address, from the PROXY header.
    let (_, body) = http_get(metrics, "/connections");
    let list: Vec<serde_json::Value> = serde_json::from_str(&body).unwrap();
    let peers: Vec<&str> = list.iter().filter_map(|c| c["peer"].as_str()).collect();
    assert_eq!(peers, [format!("127.0.0.1:{port}")], "{body}");
    drop(python.stdin.take());
    let _ = python.wait();
    for file in [key, cert, bundle] {
        let _ = std::fs::remove_file(file);
    }
}

/// `deploy/pubsub-cluster/run.sh` with this run's ports and the test build.
fn cluster_script(extra_args: &str) -> Command {
    let port = || free_addr().port().to_string();
    let mut cmd = Command::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/pubsub-cluster/run.sh"
    ));
    cmd.env("WHEEL_SERVER", env!("CARGO_BIN_EXE_wheel-server"))
        .env("WHEEL_SERVER_ARGS", extra_args)
        .env("FRONT_PORT", port())
        .env("REDIS_PORT", port())
        .env("INSTANCE_PORTS", [port(), port(), port()].join(" "))
        .env("ADMIN_PORTS", [port(), port(), port()].join(" "))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    cmd
}

/// The shipped cluster script starts on this box's descriptor limit (no
/// fixed HAProxy maxconn), lets one instance drain while the others serve,
/// reports a component that cannot start in one line, and stops
/// everything it started.
#[test]
fn the_cluster_script_drains_one_instance_and_names_a_failed_start() {
    use std::io::{BufRead, BufReader};
    if !haproxy_or_skip() || !tool_or_skip("redis-server", "--version") {
        return;
    }
    let mut script = cluster_script("").spawn().unwrap();
    let (tx, lines) = std::sync::mpsc::channel();
    let stderr = script.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    /// The next line containing `needle` (every line read is kept).
    fn wait_for(
        lines: &std::sync::mpsc::Receiver<String>,
        seen: &mut Vec<String>,
        needle: &str,
    ) -> String {
        let deadline = Instant::now() + PATIENCE;
        while let Ok(line) = lines.recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            seen.push(line.clone());
            if line.contains(needle) {
                return line;
            }
        }
        panic!("no line with {needle:?} in {seen:#?}");
    }
    let mut seen = Vec::new();
    let ready = wait_for(&lines, &mut seen, "ready: clients on ");
    let front: SocketAddr = ready.rsplit(' ').next().unwrap().parse().unwrap();
    let pids: Vec<i32> = seen
        .iter()
        .filter_map(|l| l.split(" started, pid ").nth(1)?.parse().ok())
        .collect();
    assert_eq!(pids.len(), 5, "redis, three instances, haproxy: {seen:#?}");
    let pong_through = |front: SocketAddr| {
        let mut c = util::Client::connect(front);
        c.ping(b"hi") == util::Msg::Pong(b"hi".to_vec())
    };
    assert!(util::wait_until(PATIENCE, || pong_through(front)));
    // Drain the second instance: it exits, the script and the rest go on.
    // SAFETY: kill(2) on a pid this test's script started.
    unsafe { libc::kill(pids[2], libc::SIGTERM) };
    wait_for(&lines, &mut seen, "wheel2 (pid");
    assert!(script.try_wait().unwrap().is_none(), "the script stopped");
    assert!(pong_through(front));
    // Stopping the script stops everything it started.
    // SAFETY: kill(2) on the script's own pid.
    unsafe { libc::kill(script.id() as i32, libc::SIGTERM) };
    let status = script.wait().unwrap();
    assert!(status.success(), "{status:?}");
    assert!(util::wait_until(PATIENCE, || pids
        .iter()
        // SAFETY: signal 0 only asks whether the process exists.
        .all(|&pid| unsafe { libc::kill(pid, 0) } != 0)));

    // A bad flag: one line naming the instance and why, exit 1, nothing left.
    let out = cluster_script("--max-topics 0").output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let line = stderr
        .lines()
        .find(|l| l.contains("failed to start"))
        .unwrap_or_else(|| panic!("{stderr}"));
    assert!(
        line.contains("wheel1") && line.contains("--max-topics"),
        "{line}"
    );
}

/// `deploy/haproxy.cfg` starts under a 20,000-descriptor limit (this
/// project's machines); with the old `maxconn 100000` HAProxy exited at once
/// with "Cannot raise FD limit".
#[test]
fn the_shipped_haproxy_config_starts_with_20000_descriptors() {
    use std::os::unix::process::CommandExt;
    if !haproxy_or_skip() {
        return;
    }
    let shipped = include_str!("../deploy/haproxy.cfg");
    let front = free_addr();
    let config = std::env::temp_dir().join(format!("wheel-haproxy-{}.cfg", std::process::id()));
    std::fs::write(
        &config,
        shipped.replace("bind :5005", &format!("bind {front}")),
    )
    .unwrap();
    let mut cmd = Command::new("haproxy");
    cmd.args(["-db", "-f"]).arg(&config);
    cmd.stdout(Stdio::null()).stderr(Stdio::piped());
    // SAFETY: the closure only calls setrlimit, which is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            let limit = libc::rlimit {
                rlim_cur: 20_000,
                rlim_max: 20_000,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut haproxy = cmd.spawn().unwrap();
    util::wait_until(PATIENCE, || {
        std::net::TcpStream::connect(front).is_ok() || haproxy.try_wait().unwrap().is_some()
    });
    let listening = std::net::TcpStream::connect(front).is_ok();
    let exited = haproxy.try_wait().unwrap();
    let _ = haproxy.kill();
    let out = haproxy.wait_with_output().unwrap();
    let _ = std::fs::remove_file(&config);
    assert!(
        listening && exited.is_none(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
