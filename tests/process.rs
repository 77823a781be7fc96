//! The `wheel-server` binary: flags, signals, bind failures, and resource
//! leaks measured from the child's /proc.

mod util;

use std::collections::BTreeSet;
use std::io::Write;
use std::process::Command;
use std::time::{Duration, Instant};

use util::{Client, Msg, PATIENCE, ServerProcess, fds, ms, threads, wait_until, worker_threads};
use wheel_server::protocol::{Message, Protocol};

#[test]
fn help_lists_every_flag_and_its_environment_variable() {
    let out = Command::new(env!("CARGO_BIN_EXE_wheel-server"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    for flag in [
        "--listen",
        "--protocol",
        "--idle-timeout",
        "--tick",
        "--wheel-slots",
        "--probe-after",
        "--max-connections",
        "--max-frame",
        "--min-ping-interval",
        "--ping-strikes",
        "--keepalive-idle",
        "--keepalive-interval",
        "--keepalive-count",
        "--no-keepalive",
        "--user-timeout",
        "--write-timeout",
        "--shutdown-grace",
        "--worker-stack",
        "--verbose",
        "--quiet",
        "--metrics-listen",
        "--stats-interval",
        "--log-format",
        "--reuse-port",
        "--proxy-protocol",
        "--max-outbox",
        "--admin-listen",
        "--admin-token",
        "--service",
        "--history",
        "--history-ttl",
        "--max-subscriptions",
        "--max-topics",
        "--history-bytes",
        "--history-memory",
        "--max-publish-rate",
        "--max-publish-bytes",
        "--redis",
        "--redis-password",
        "--redis-timeout",
    ] {
        assert!(help.contains(flag), "--help lacks {flag}");
    }
    assert!(
        help.contains("WHEEL_SERVER_IDLE_TIMEOUT"),
        "--help should name the env variables"
    );
    assert!(
        help.contains("[default: 60s]"),
        "--help should show defaults"
    );
}

#[test]
fn flags_can_come_from_the_environment() {
    let server = ServerProcess::start_with(&["-v"], |cmd| {
        cmd.env("WHEEL_SERVER_PROTOCOL", "line");
    });
    let mut c = Client::connect_with(server.addr, Protocol::Line);
    c.send_raw(b"PING env\n");
    assert_eq!(c.recv_msg(), Msg::Pong(b"env".to_vec()));
}

#[test]
fn bind_failure_is_one_clear_line_and_a_non_zero_exit() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = Command::new(env!("CARGO_BIN_EXE_wheel-server"))
        .args(["--listen", &addr])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8(out.stderr).unwrap();
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.contains(&format!("cannot listen on {addr}")) && last.contains("in use"),
        "stderr: {stderr}"
    );
}

#[test]
fn invalid_values_are_refused_before_listening() {
    let out = Command::new(env!("CARGO_BIN_EXE_wheel-server"))
        .args(["--listen", "127.0.0.1:0", "--wheel-slots", "100"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.contains("power of two"), "stderr: {stderr}");
    assert!(!stderr.contains("listening on"));
}

/// Bad Redis settings: exit 2 with one line naming the flag, and no
/// password in it.
#[test]
fn bad_redis_settings_are_one_line_and_exit_2() {
    for (args, want) in [
        (
            &["--redis", "http://secret@x"][..],
            "invalid value for --redis: invalid URL",
        ),
        (
            &["--redis", "redis://127.0.0.1:1/0", "--redis-timeout", "0s"],
            "invalid value for --redis-timeout: must be longer than zero",
        ),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_wheel-server"))
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.contains(want), "{stderr}");
        assert!(!stderr.contains("secret"), "{stderr}");
    }
}

#[test]
fn sigterm_sends_1001_to_every_connection_and_exits_zero() {
    let mut server = ServerProcess::start(&["--shutdown-grace", "5s"]);
    let mut clients: Vec<Client> = (0..20).map(|_| Client::connect(server.addr)).collect();
    for c in &mut clients {
        assert_eq!(c.ping(b"up"), Msg::Pong(b"up".to_vec()));
    }
    let start = Instant::now();
    server.signal(libc::SIGTERM);
    for c in &mut clients {
        assert_eq!(c.expect_close().0, 1001);
    }
    let status = server.wait_exit(PATIENCE).expect("exits after SIGTERM");
    assert_eq!(status.code(), Some(0), "exit status {status}");
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "took the whole grace period"
    );
}

#[test]
fn a_second_signal_exits_at_once() {
    // A worker blocked writing to a client that never reads (no write
    // timeout) keeps the graceful shutdown waiting for its long grace.
    let mut server = ServerProcess::start(&["--shutdown-grace", "60s", "--write-timeout", "0"]);
    let mut hog = std::net::TcpStream::connect(server.addr).unwrap();
    hog.set_write_timeout(Some(ms(300))).unwrap();
    let mut frame = Vec::new();
    Protocol::Frame
        .encode(&Message::Data(&vec![b'x'; 512 * 1024]), &mut frame)
        .unwrap();
    // Send until the server stops reading (its echo write is blocked).
    let mut sent = 0;
    while sent < 512 && hog.write_all(&frame).is_ok() {
        sent += 1;
    }
    assert!(sent < 512, "the server never stopped reading");
    server.signal(libc::SIGTERM);
    assert!(
        server.wait_exit(ms(500)).is_none(),
        "should be waiting for the blocked connection"
    );
    let start = Instant::now();
    server.signal(libc::SIGTERM);
    let status = server
        .wait_exit(PATIENCE)
        .expect("exits after the second signal");
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "took {:?}",
        start.elapsed()
    );
    assert_ne!(status.code(), Some(0), "a forced exit is not a clean one");
}

#[test]
fn no_thread_or_descriptor_leak_after_hundreds_of_connections() {
    // A cache smaller than a round, emptied soon after the last one.
    let server = ServerProcess::start(&[
        "--idle-timeout",
        "200ms",
        "--tick",
        "10ms",
        "--thread-cache",
        "20",
        "--thread-cache-idle",
        "300ms",
    ]);
    let pid = server.pid();
    // After the start's last look at /proc (the capacity line), which
    // holds a descriptor for a moment.
    assert!(server.wait_for_log("this box lets", PATIENCE).is_some());
    let (base_threads, base_fds) = (threads(pid), fds(pid));
    for round in 0..6 {
        let mut batch: Vec<Client> = (0..50).map(|_| Client::connect(server.addr)).collect();
        for c in &mut batch {
            assert_eq!(c.ping(b"x"), Msg::Pong(b"x".to_vec()));
        }
        assert!(
            threads(pid) >= base_threads + 50,
            "one thread per connection"
        );
        match round % 3 {
            // Clients close.
            0 => drop(batch),
            // Clients say CLOSE.
            1 => {
                for c in &mut batch {
                    c.send(Message::Close {
                        code: 1000,
                        reason: "",
                    });
                    assert_eq!(c.expect_close().0, 1000);
                }
            }
            // Clients fall silent and are reaped.
            _ => {
                for c in &mut batch {
                    assert_eq!(c.expect_close().0, 4000);
                }
            }
        }
    }
    // Every connection gone: only the cache's parked threads remain...
    let closed = wait_until(PATIENCE, || {
        threads(pid) <= base_threads + 20 && fds(pid) == base_fds
    });
    assert!(
        closed,
        "threads {} (baseline {base_threads} + a cache of 20), fds {} (baseline {base_fds})",
        threads(pid),
        fds(pid)
    );
    // ...and they exit once idle for --thread-cache-idle.
    let settled = wait_until(PATIENCE, || threads(pid) == base_threads);
    assert!(
        settled,
        "threads {} (baseline {base_threads}) after the cache's idle time",
        threads(pid)
    );
}

#[test]
fn connections_reuse_parked_threads() {
    let server = ServerProcess::start(&["--thread-cache", "8", "--metrics-listen", "127.0.0.1:0"]);
    let admin = server.metrics_addr();
    // The value of an unlabelled sample.
    let metric = |name: &str| -> Option<f64> {
        let (_, body) = util::http_get(admin, "/metrics");
        body.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
    };
    let pid = server.pid();
    // One connection at a time: after the first, each finds the thread the
    // one before it left parked.
    for _ in 0..10 {
        let mut c = Client::connect(server.addr);
        assert_eq!(c.ping(b"x"), Msg::Pong(b"x".to_vec()));
        assert_eq!(worker_threads(pid), 1, "one thread serves the connection");
        drop(c);
        let parked = wait_until(PATIENCE, || {
            metric("wheel_worker_threads_parked") == Some(1.0)
        });
        assert!(parked, "the finished thread did not park");
    }
    assert_eq!(metric("wheel_worker_threads_spawned_total"), Some(1.0));
    assert_eq!(metric("wheel_worker_threads_reused_total"), Some(9.0));
}

#[test]
fn listen_repeats_with_a_scheme_per_address() {
    let server =
        ServerProcess::start(&["--listen", "127.0.0.1:0", "--listen", "line://127.0.0.1:0"]);
    // The first listener's line came first (ServerProcess read it); the
    // second names its protocol.
    let (_, line) = server
        .wait_for_log("listening on", PATIENCE)
        .expect("a second listening line");
    assert!(line.contains("protocol=line"), "{line}");
    let addr: std::net::SocketAddr = line
        .split("listening on ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|a| a.parse().ok())
        .expect("an address in the line");
    let mut frames = Client::connect(server.addr);
    assert_eq!(frames.ping(b"x"), Msg::Pong(b"x".to_vec()));
    let mut lines = Client::connect_with(addr, Protocol::Line);
    assert_eq!(lines.ping(b"y"), Msg::Pong(b"y".to_vec()));
}

#[test]
fn an_unsupported_listen_scheme_exits_2_naming_the_flag() {
    for (value, says) in [
        ("gopher://127.0.0.1:0", "unknown scheme"),
        ("quic://127.0.0.1:0", "unknown scheme"),
        ("tls://127.0.0.1:0/path", "a path is only meaningful"),
        ("ws://127.0.0.1:0/chat?x=1", "plain path"),
        ("frame://127.0.0.1:0/path", "a path is only meaningful"),
        ("frame://nowhere.invalid:1", "cannot resolve"),
    ] {
        let (code, stderr) = refused(&["--listen", value], &[]);
        assert_eq!(code, Some(2), "{value}: {stderr}");
        assert!(stderr.contains("--listen"), "{value}: {stderr}");
        assert!(stderr.contains(says), "{value}: {stderr}");
    }
}

#[test]
fn json_logs_carry_the_close_reason_and_the_summary() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_wheel-server"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--log-format",
            "json",
            "-v",
            "--stats-interval",
            "100ms",
        ])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, lines) = std::sync::mpsc::channel::<serde_json::Value>();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            let value =
                serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON: {line:?}: {e}"));
            if tx.send(value).is_err() {
                break;
            }
        }
    });
    let next_matching = |want: &dyn Fn(&serde_json::Value) -> bool| -> serde_json::Value {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = lines.recv_timeout(left).expect("a matching log line");
            if want(&line) {
                return line;
            }
        }
    };
    let message = |v: &serde_json::Value| v["fields"]["message"].as_str().unwrap_or("").to_owned();
    let listening = next_matching(&|v| message(v).starts_with("listening on "));
    let addr: std::net::SocketAddr = message(&listening)["listening on ".len()..]
        .parse()
        .unwrap();
    let mut c = Client::connect(addr);
    assert_eq!(c.ping(b"x"), Msg::Pong(b"x".to_vec()));
    let peer = c.stream.local_addr().unwrap().to_string();
    c.send(Message::Close {
        code: 1000,
        reason: "",
    });
    assert_eq!(c.expect_close().0, 1000);
    let closed = next_matching(&|v| message(v).starts_with("connection closed"));
    assert_eq!(closed["level"], "DEBUG");
    assert_eq!(closed["fields"]["peer"], peer);
    assert_eq!(closed["fields"]["reason"], "peer_close_frame");
    assert!(closed["fields"]["conn"].is_string() && closed["fields"]["lifetime"].is_string());
    // The close is logged just before it is counted: wait for a summary
    // that includes it.
    let summary = next_matching(&|v| message(v) == "summary" && v["fields"]["closed"] == 1);
    assert_eq!(summary["level"], "INFO");
    assert_eq!(summary["fields"]["accepted"], 1);
    assert_eq!(summary["fields"]["open"], 0);
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn reuse_port_lets_two_instances_share_a_port() {
    let first = ServerProcess::start(&["--reuse-port"]);
    let port = first.addr.port().to_string();
    let listen = format!("127.0.0.1:{port}");
    let second = ServerProcess::start(&["--listen", &listen, "--reuse-port"]);
    assert_eq!(second.addr, first.addr);
    // Without the flag the port is taken.
    let out = Command::new(env!("CARGO_BIN_EXE_wheel-server"))
        .args(["--listen", &listen])
        .output()
        .unwrap();
    assert!(!out.status.success());
    // Both serve: connections spread over the two processes.
    let before = [first.pid(), second.pid()].map(fds);
    let mut clients: Vec<Client> = (0..40).map(|_| Client::connect(first.addr)).collect();
    for c in &mut clients {
        assert_eq!(c.ping(b"x"), Msg::Pong(b"x".to_vec()));
    }
    let gained = [first.pid(), second.pid()].map(fds);
    let gained = [gained[0] - before[0], gained[1] - before[1]];
    assert_eq!(
        gained[0] + gained[1],
        40,
        "one socket per connection: {gained:?}"
    );
    assert!(
        gained.iter().all(|&n| n >= 5),
        "connections per process: {gained:?}"
    );
}

#[test]
fn sigterm_drains_connections_still_in_the_accept_queue() {
    let mut server = ServerProcess::start(&["--shutdown-grace", "5s"]);
    // Frozen, the server accepts nothing: the kernel completes the
    // handshakes and queues the connections.
    server.signal(libc::SIGSTOP);
    let mut clients: Vec<Client> = (0..300).map(|_| Client::connect(server.addr)).collect();
    server.signal(libc::SIGTERM);
    server.signal(libc::SIGCONT);
    // Whether the accept thread or the shutdown took each one from the
    // queue, every connection is drained with CLOSE 1001, none reset.
    for c in &mut clients {
        assert_eq!(c.expect_close().0, 1001);
    }
    let status = server.wait_exit(PATIENCE).expect("exits after SIGTERM");
    assert_eq!(status.code(), Some(0), "exit status {status}");
}

/// SIGHUP used to kill the server with no drain (a bare EOF for every
/// client). It is logged and ignored until there is something to reload.
#[test]
fn sighup_is_logged_and_ignored() {
    let mut server = ServerProcess::start(&[]);
    let mut c = Client::connect(server.addr);
    assert_eq!(c.ping(b"before"), Msg::Pong(b"before".to_vec()));
    server.signal(libc::SIGHUP);
    assert!(
        server.wait_for_log("SIGHUP received", PATIENCE).is_some(),
        "SIGHUP should be logged"
    );
    assert_eq!(c.ping(b"after"), Msg::Pong(b"after".to_vec()));
    assert!(server.child.try_wait().unwrap().is_none(), "still running");
    server.signal(libc::SIGTERM);
    assert_eq!(c.expect_close().0, 1001);
    let status = server.wait_exit(PATIENCE).expect("exits after SIGTERM");
    assert_eq!(status.code(), Some(0));
}

/// Runs the binary with `args` (and `env`), expecting it to refuse them:
/// returns its exit code and stderr.
fn refused(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_wheel-server"))
        .args(["--listen", "127.0.0.1:0"])
        .args(args)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(!stderr.contains("listening on"), "{stderr}");
    (out.status.code(), stderr)
}

#[test]
fn every_invalid_setting_exits_2_with_one_line_naming_the_flag() {
    for (args, flag) in [
        (&["--tick", "0"][..], "--tick"),
        (&["--wheel-slots", "3"], "--wheel-slots"),
        (&["--max-connections", "0"], "--max-connections"),
        (&["--max-frame", "0"], "--max-frame"),
        (&["--max-outbox", "0"], "--max-outbox"),
        // Smaller than the largest message (a frame plus its framing).
        (
            &["--max-frame", "1000", "--max-outbox", "1000"],
            "--max-outbox",
        ),
        (&["--max-outbox", "1.5MiB"], "--max-outbox"),
        (&["--history-memory", "lots"], "--history-memory"),
        (&["--max-topics", "0"], "--max-topics"),
        (&["--keepalive-idle", "1500ms"], "--keepalive-idle"),
        (&["--keepalive-count", "0"], "--keepalive-count"),
        (&["--worker-stack", "100"], "--worker-stack"),
        (&["--idle-timeout", "soon"], "--idle-timeout"),
        (&["--protocol", "carrier-pigeon"], "--protocol"),
        (&["--listen", "no-such-host.invalid:5005"], "--listen"),
    ] {
        let (code, stderr) = refused(args, &[]);
        assert_eq!(code, Some(2), "{args:?}: {stderr}");
        let first = stderr.lines().next().unwrap_or_default();
        assert!(first.contains(flag), "{args:?}: {stderr}");
    }
}

#[test]
fn an_invalid_value_from_the_environment_names_the_variable() {
    let (code, stderr) = refused(&[], &[("WHEEL_SERVER_TICK", "0")]);
    assert_eq!(code, Some(2), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("--tick") && stderr.contains("WHEEL_SERVER_TICK"),
        "{stderr}"
    );
    let (code, stderr) = refused(&[], &[("WHEEL_SERVER_IDLE_TIMEOUT", "soon")]);
    assert_eq!(code, Some(2), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("WHEEL_SERVER_IDLE_TIMEOUT"), "{stderr}");
}

#[test]
fn boolean_variables_take_the_usual_spellings() {
    for value in ["1", "true", "yes", "on", "0", "false", "no", "off"] {
        let server = ServerProcess::start_with(&["-v"], |cmd| {
            cmd.env("WHEEL_SERVER_NO_KEEPALIVE", value);
        });
        let off = matches!(value, "1" | "true" | "yes" | "on");
        let keepalive = if off {
            "keepalive=off"
        } else {
            "keepalive=30s/10s/3"
        };
        let listening = server.startup.last().unwrap();
        assert!(listening.contains(keepalive), "{value}: {listening}");
    }
    let (code, stderr) = refused(&[], &[("WHEEL_SERVER_NO_KEEPALIVE", "maybe")]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("WHEEL_SERVER_NO_KEEPALIVE"), "{stderr}");
}

#[test]
fn host_names_are_accepted_for_listening() {
    let server = ServerProcess::start_with(
        &["--listen", "localhost:0", "--metrics-listen", "localhost:0"],
        |_| {},
    );
    assert!(server.addr.ip().is_loopback(), "{}", server.addr);
    let mut c = Client::connect(server.addr);
    assert_eq!(c.ping(b"named"), Msg::Pong(b"named".to_vec()));
    assert_eq!(util::http_get(server.metrics_addr(), "/healthz").0, 200);
}

#[test]
fn settings_that_cannot_be_honoured_are_warned_about_at_start() {
    let server = ServerProcess::start_with(&["--idle-timeout", "50ms", "--tick", "100ms"], |_| {});
    assert!(
        server.startup.iter().any(|l| l.contains("WARN")
            && l.contains("--idle-timeout 50ms is shorter than --tick 100ms")),
        "{:?}",
        server.startup
    );
}

#[test]
fn auth_jwt_needs_a_usable_key_or_exits_2_naming_the_flag() {
    let (code, stderr) = refused(&["--auth", "jwt"], &[]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("--jwt-secret"), "{stderr}");
    let (code, stderr) = refused(
        &["--auth", "jwt", "--jwt-public-key", "/nonexistent.pem"],
        &[],
    );
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("--jwt-public-key") && stderr.contains("/nonexistent.pem"),
        "{stderr}"
    );
    let (code, stderr) = refused(&["--auth", "jwt", "--jwt-public-key", "Cargo.toml"], &[]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("not an RSA or P-256 public key"),
        "{stderr}"
    );
    // A secret from the environment works.
    let server = ServerProcess::start_with(&["--auth", "jwt"], |cmd| {
        cmd.env("WHEEL_SERVER_JWT_SECRET", "s3cret");
    });
    let mut c = Client::connect(server.addr);
    c.send(Message::Ping(b"no auth"));
    assert_eq!(c.expect_close().0, 4001);
}

/// README's flag table and `--help` list the same flags: a flag added
/// without its row (or a row left for a flag that went) fails here.
#[test]
fn the_readme_flag_table_lists_exactly_the_flags_of_help() {
    let out = Command::new(env!("CARGO_BIN_EXE_wheel-server"))
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8(out.stdout).unwrap();
    let flags_in = |text: &str| -> BTreeSet<String> {
        text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
            .filter(|w| w.starts_with("--") && w.len() > 2)
            .map(str::to_owned)
            .collect()
    };
    // The flags each option line of --help names (its first words).
    let mut in_help: BTreeSet<String> = help
        .lines()
        .map(str::trim_start)
        .filter(|l| l.starts_with('-') || l.starts_with("[alias"))
        .flat_map(|l| flags_in(l.split(" <").next().unwrap_or_default()))
        .collect();
    in_help.remove("--help");
    in_help.remove("--version");
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let section = readme
        .split("\n## Command line\n")
        .nth(1)
        .and_then(|rest| rest.split("\n## ").next())
        .expect("README has a '## Command line' section");
    // The first cell of every table row.
    let in_readme: BTreeSet<String> = section
        .lines()
        .filter(|l| l.starts_with("| `-"))
        .flat_map(|l| flags_in(l.split(" | ").next().unwrap_or_default()))
        .collect();
    let missing: Vec<_> = in_help.difference(&in_readme).collect();
    let stale: Vec<_> = in_readme.difference(&in_help).collect();
    assert!(
        missing.is_empty() && stale.is_empty(),
        "README's flag table lacks {missing:?}; lists flags --help does not: {stale:?}"
    );
}

/// `wheel-server check` reads this box's limits, smallest room first, and
/// fails naming the limit to raise when --max-connections is above it; a
/// server started that way says so in its log.
#[test]
fn check_names_the_limit_that_binds_first_and_fails_past_it() {
    let check = |max: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_wheel-server"))
            .args(["check", "--max-connections", max])
            .output()
            .unwrap();
        (out.status.code(), String::from_utf8(out.stdout).unwrap())
    };
    let (code, report) = check("1");
    assert_eq!(code, Some(0), "{report}");
    let first = report.lines().next().unwrap();
    assert!(
        first.contains("leaves room for") && first.contains("raise:"),
        "{report}"
    );
    // Descriptors are a limit on every box (this project's: 20,000).
    assert!(report.contains("RLIMIT_NOFILE = "), "{report}");
    assert!(
        report.lines().last().unwrap().starts_with("ok: "),
        "{report}"
    );
    let (code, report) = check("100000000");
    assert_eq!(code, Some(1), "{report}");
    let verdict = report.lines().last().unwrap();
    assert!(
        verdict.starts_with("FAIL: --max-connections 100000000 is above the")
            && verdict.contains("binds first (raise: "),
        "{report}"
    );
    // Said once it listens.
    let server = ServerProcess::start(&["--max-connections", "100000000"]);
    for needle in [
        "connections (idle ones parked, holding no thread)",
        "--max-connections 100000000 is above the",
    ] {
        assert!(server.wait_for_log(needle, PATIENCE).is_some(), "{needle}");
    }
}

/// `--config FILE`: flag > environment > file > default, an unknown key
/// refused naming its line, and `wheel-server config` printing where each
/// setting came from with secrets redacted; what it prints reads back.
#[test]
fn a_config_file_sits_below_flags_and_environment() {
    let dir = std::env::temp_dir().join(format!("wheel-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("wheel.toml");
    std::fs::write(
        &file,
        "max-connections = 500\nidle_timeout = \"30s\"\ntick = \"20ms\"\nadmin-token = \"s3cret\"\n",
    )
    .unwrap();
    let run = |args: &[&str], env: &[(&str, &str)]| {
        let out = Command::new(env!("CARGO_BIN_EXE_wheel-server"))
            .args(args)
            .envs(env.iter().copied())
            .output()
            .unwrap();
        let text = String::from_utf8(out.stdout).unwrap() + &String::from_utf8(out.stderr).unwrap();
        (out.status.code(), text)
    };
    let config = file.to_str().unwrap();
    let (code, printed) = run(
        &["config", "--config", config, "--tick", "50ms"],
        &[("WHEEL_SERVER_IDLE_TIMEOUT", "45s")],
    );
    assert_eq!(code, Some(0), "{printed}");
    for line in [
        "tick = \"50ms\"  # flag",
        "idle-timeout = \"45s\"  # environment",
        "max-connections = \"500\"  # file",
        "admin-token = \"<redacted>\"  # file",
        "max-frame = \"1048576\"  # default",
    ] {
        assert!(
            printed.lines().any(|l| l == line),
            "no {line:?} in\n{printed}"
        );
    }
    assert!(!printed.contains("s3cret"), "{printed}");
    // What it prints is a config file (the secret aside).
    let printed_file = dir.join("printed.toml");
    std::fs::write(&printed_file, printed.replace("<redacted>", "other")).unwrap();
    let (code, again) = run(&["config", "--config", printed_file.to_str().unwrap()], &[]);
    assert_eq!(code, Some(0), "{again}");
    assert!(again.contains("tick = \"50ms\"  # file"), "{again}");
    // An unknown key: exit 2, one line naming the file and the line.
    std::fs::write(&file, "max-connections = 5\n\nmax_conections = 7\n").unwrap();
    let (code, said) = run(&["--config", config], &[]);
    assert_eq!(code, Some(2), "{said}");
    assert_eq!(said.lines().count(), 1, "{said}");
    assert!(
        said.contains(&format!("{config}:3: unknown setting `max_conections`")),
        "{said}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
