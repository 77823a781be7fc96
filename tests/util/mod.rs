//! Helpers shared by the integration tests: a raw protocol client, server
//! fixtures (in-process and as a child process), bounded wait-until helpers
//! and `/proc` readers.

#![allow(dead_code)] // each test file uses a different subset

pub mod haproxy;
pub mod netns;
pub mod redis;

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use wheel_server::protocol::{Message, Protocol, Reader};
use wheel_server::{Config, Server};

pub fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// How long any single wait in a test may take before it counts as a hang.
pub const PATIENCE: Duration = Duration::from_secs(10);

/// A configuration for tests: loopback port 0, a fine tick, a long idle
/// timeout unless the test sets one.
pub fn config() -> Config {
    {
        let mut config = Config::default();
        config.listen = "127.0.0.1:0".parse().unwrap();
        config.tick = ms(10);
        config.idle_timeout = Some(Duration::from_secs(60));
        config.shutdown_grace = ms(500);
        config
    }
}

pub fn start(config: Config) -> Server {
    init_logging();
    Server::start(config).expect("server starts")
}

/// Test logs at debug level when RUST_LOG asks for them.
pub fn init_logging() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// Polls `cond` every few milliseconds until it holds or `timeout` passes;
/// returns whether it held.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(ms(2));
    }
}

/// An owned message, for comparing in assertions.
pub use wheel_server::protocol::OwnedMessage as Msg;

/// What a read from the server produced.
#[derive(Debug, PartialEq, Eq)]
pub enum Recv {
    Msg(Msg),
    /// Clean end of stream.
    Eof,
    /// Reset or another error.
    Error(io::ErrorKind),
}

/// A blocking test client speaking the raw protocol.
pub struct Client {
    pub stream: TcpStream,
    protocol: Protocol,
    reader: Reader,
}

impl Client {
    pub fn connect(addr: SocketAddr) -> Client {
        Client::connect_with(addr, Protocol::Frame)
    }

    /// Connects; in WebSocket mode, upgrades at path `/` first.
    pub fn connect_with(addr: SocketAddr, protocol: Protocol) -> Client {
        Client::connect_at(addr, protocol, "/")
    }

    /// Connects; in WebSocket mode, upgrades at `path` first.
    pub fn connect_at(addr: SocketAddr, protocol: Protocol, path: &str) -> Client {
        let stream = TcpStream::connect(addr).expect("connect");
        stream.set_read_timeout(Some(PATIENCE)).unwrap();
        stream.set_nodelay(true).unwrap();
        let mut client = Client {
            stream,
            protocol,
            reader: Reader::new(protocol, 16 << 20),
        };
        if protocol == Protocol::Ws {
            let (status, _) = client.upgrade(path, "");
            assert_eq!(status, 101, "WebSocket upgrade refused");
        }
        client
    }

    /// Sends a WebSocket upgrade request for `path` with `extra` header
    /// lines (each ending in CRLF) and reads the response head: its status
    /// and the whole head. Bytes after the head stay for the reader.
    pub fn upgrade(&mut self, path: &str, extra: &str) -> (u16, String) {
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
        );
        self.send_raw(request.as_bytes());
        self.http_head()
    }

    /// Reads an HTTP response head: its status and text.
    pub fn http_head(&mut self) -> (u16, String) {
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            match self.stream.read(&mut byte) {
                Ok(1) => head.push(byte[0]),
                _ => break,
            }
        }
        let head = String::from_utf8_lossy(&head).into_owned();
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        (status, head)
    }

    /// The same connection, speaking `protocol` from now on (after an
    /// upgrade the test made by hand).
    pub fn speaking(self, protocol: Protocol) -> Client {
        Client {
            stream: self.stream,
            protocol,
            reader: Reader::new(protocol, 16 << 20),
        }
    }

    /// A client over an already connected stream.
    pub fn from_stream(stream: TcpStream) -> Client {
        Client {
            stream,
            protocol: Protocol::Frame,
            reader: Reader::new(Protocol::Frame, 16 << 20),
        }
    }

    /// Sends a PING and says whether its PONG came back (any failure,
    /// timeout included, is `false`).
    pub fn try_ping(&mut self, payload: &[u8]) -> bool {
        let mut wire = Vec::new();
        self.protocol
            .encode_as_client(&Message::Ping(payload), &mut wire)
            .unwrap();
        if self.stream.write_all(&wire).is_err() {
            return false;
        }
        matches!(
            self.reader.read_message(&mut self.stream),
            Ok(Some(Msg::Pong(p))) if p == payload
        )
    }

    pub fn send(&mut self, msg: Message<'_>) {
        let mut wire = Vec::new();
        self.protocol.encode_as_client(&msg, &mut wire).unwrap();
        self.send_raw(&wire);
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("send");
    }

    /// The next message, end of stream, or error (panics on a timeout).
    pub fn recv(&mut self) -> Recv {
        match self.reader.read_message(&mut self.stream) {
            Ok(Some(msg)) => Recv::Msg(msg),
            // As the old reader did: an end inside a message is an end.
            Ok(None) => Recv::Eof,
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Recv::Eof,
            Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                panic!("server sent undecodable bytes: {e}")
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                panic!("no answer from the server within {PATIENCE:?}")
            }
            Err(e) => Recv::Error(e.kind()),
        }
    }

    /// Like [`recv`](Self::recv), but `None` if nothing arrives within
    /// `timeout`.
    pub fn try_recv(&mut self, timeout: Duration) -> Option<Recv> {
        if let Ok(Some(msg)) = self.reader.next_message() {
            return Some(Recv::Msg(msg));
        }
        self.stream.set_read_timeout(Some(timeout)).unwrap();
        let got = match self.reader.read_from(&mut self.stream) {
            Ok(0) => Some(Recv::Eof),
            Ok(_) => None,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                self.stream.set_read_timeout(Some(PATIENCE)).unwrap();
                return None;
            }
            Err(e) => Some(Recv::Error(e.kind())),
        };
        self.stream.set_read_timeout(Some(PATIENCE)).unwrap();
        got.or_else(|| Some(self.recv()))
    }

    /// The next message, which must be one.
    pub fn recv_msg(&mut self) -> Msg {
        match self.recv() {
            Recv::Msg(m) => m,
            other => panic!("expected a message, got {other:?}"),
        }
    }

    /// Reads until the server's CLOSE, half-closes as a client should (a
    /// CLOSE 1001 drain lasts until then), and expects the end of stream
    /// next; returns the close code and reason.
    pub fn expect_close(&mut self) -> (u16, String) {
        let closed = loop {
            match self.recv() {
                Recv::Msg(Msg::Close(code, reason)) => break (code, reason),
                Recv::Msg(_) => continue,
                other => panic!("expected CLOSE, got {other:?}"),
            }
        };
        let _ = self.stream.shutdown(std::net::Shutdown::Write);
        assert_eq!(
            self.recv(),
            Recv::Eof,
            "the server should hang up after its CLOSE"
        );
        closed
    }

    /// Sends a PING and returns the PONG's payload.
    pub fn ping(&mut self, payload: &[u8]) -> Msg {
        self.send(Message::Ping(payload));
        self.recv_msg()
    }
}

/// A `wheel-server` child process, killed on drop.
pub struct ServerProcess {
    pub child: Child,
    pub addr: SocketAddr,
    /// Log lines from stderr, with the instant each arrived.
    pub log: mpsc::Receiver<(Instant, String)>,
    /// The lines logged up to and including "listening on".
    pub startup: Vec<String>,
}

impl ServerProcess {
    /// Starts the binary with `args` (plus `--listen 127.0.0.1:0` unless
    /// given) and waits for its "listening on" line.
    pub fn start(args: &[&str]) -> ServerProcess {
        ServerProcess::start_with(args, |_| {})
    }

    pub fn start_with(args: &[&str], setup: impl FnOnce(&mut Command)) -> ServerProcess {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_wheel-server"));
        if !args.contains(&"--listen") {
            cmd.args(["--listen", "127.0.0.1:0"]);
        }
        cmd.args(args);
        setup(&mut cmd);
        ServerProcess::spawn(cmd)
    }

    /// Runs a prepared command (which must start wheel-server, perhaps
    /// through a wrapper such as `ip netns exec`) and waits for its
    /// "listening on" line.
    pub fn spawn(mut cmd: Command) -> ServerProcess {
        cmd.env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("start wheel-server");
        let stderr = child.stderr.take().unwrap();
        let (tx, log) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if std::env::var_os("SHOW_SERVER_LOG").is_some() {
                    eprintln!("server: {line}");
                }
                if tx.send((Instant::now(), line)).is_err() {
                    break;
                }
            }
        });
        let deadline = Instant::now() + PATIENCE;
        let mut startup = Vec::new();
        let addr = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let (_, line) = log.recv_timeout(left).unwrap_or_else(|e| {
                panic!("no 'listening on' from the server ({e:?}); it printed: {startup:#?}")
            });
            // The server's own line (libraries may log "listening on" too).
            let addr = line
                .split("wheel_server::server: listening on ")
                .nth(1)
                .map(|rest| rest.split_whitespace().next().unwrap().to_owned());
            startup.push(line);
            if let Some(addr) = addr {
                break addr.parse().expect("a socket address after 'listening on'");
            }
        };
        ServerProcess {
            child,
            addr,
            log,
            startup,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on our own child's pid has no memory effects.
        let rc = unsafe { libc::kill(self.pid() as i32, signal) };
        assert_eq!(rc, 0, "kill failed");
    }

    /// Waits for the process to exit; returns its exit status.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(ms(5));
        }
    }

    /// The metrics endpoint's address, from its log line (the server must
    /// have been started with `--metrics-listen`).
    pub fn metrics_addr(&self) -> SocketAddr {
        let (_, line) = self
            .wait_for_log("metrics, connections and health on http://", PATIENCE)
            .expect("the metrics endpoint's log line");
        line.rsplit("http://")
            .next()
            .unwrap()
            .trim()
            .parse()
            .expect("an address")
    }

    /// Waits for a log line containing `needle`; returns the line with the
    /// instant it arrived.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> Option<(Instant, String)> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.log.recv_timeout(left) {
                Ok((at, line)) if line.contains(needle) => return Some((at, line)),
                Ok(_) => continue,
                Err(_) => return None,
            }
        }
    }

    /// How many of the log lines not read yet contain `needle`. Call it
    /// once the process has exited: it reads to the end of its output.
    pub fn log_lines_containing(&self, needle: &str) -> usize {
        self.log
            .iter()
            .filter(|(_, line)| line.contains(needle))
            .count()
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Threads of a process, from /proc.
pub fn threads(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task")).map_or(0, |d| d.count())
}

/// Connection worker threads (named `wheel-worker`), serving or parked, of
/// a process, from /proc.
pub fn worker_threads(pid: u32) -> usize {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|name| name.trim_end() == "wheel-worker")
        .count()
}

/// Open descriptors of a process, from /proc.
pub fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// Resident set size of a process in KiB, from /proc.
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// A minimal HTTP/1.0 request (tests only): status code and body.
pub fn http(addr: SocketAddr, request: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {response:?}"));
    let body = response
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_owned();
    (status, body)
}

/// `GET path` over HTTP/1.0.
pub fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    http(
        addr,
        &format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n"),
    )
}

/// Publishes `payload` to `topic` through an admin endpoint (`POST
/// /publish`); its sequence number. Panics on a refusal.
pub fn publish(admin: SocketAddr, topic: &str, payload: &str) -> u64 {
    let request = format!(
        "POST /publish/{topic} HTTP/1.0\r\nContent-Length: {}\r\n\r\n{payload}",
        payload.len()
    );
    let (status, body) = http(admin, &request);
    assert_eq!(status, 200, "publish refused: {body}");
    let reply: serde_json::Value = serde_json::from_str(&body).unwrap();
    reply["seq"].as_u64().unwrap()
}

/// Subscriptions an admin endpoint lists (`GET /topics`, its first page):
/// to `topic`, or to every topic; 0 while it does not answer 200.
pub fn subscribers(admin: SocketAddr, topic: Option<&str>) -> usize {
    let (status, body) = http_get(admin, "/topics");
    if status != 200 {
        return 0;
    }
    let page: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    let list = page["topics"].as_array().cloned().unwrap_or_default();
    list.iter()
        .filter(|t| topic.is_none_or(|name| t["topic"] == name))
        .map(|t| t["subscribers"].as_u64().unwrap_or(0) as usize)
        .sum()
}

/// The text of a server's `GET /metrics`.
/// The `heartbeat-client` example binary, built by `cargo test` beside the
/// test binaries.
pub fn example_binary() -> std::path::PathBuf {
    let deps = std::env::current_exe().unwrap();
    let profile_dir = deps.parent().unwrap().parent().unwrap();
    let path = profile_dir.join("examples").join("heartbeat-client");
    assert!(
        path.exists(),
        "{} is missing: `cargo test` builds it (as does `cargo build --examples`)",
        path.display()
    );
    path
}

pub fn scrape(metrics: SocketAddr) -> String {
    let (status, text) = http_get(metrics, "/metrics");
    assert_eq!(status, 200, "GET /metrics");
    text
}

/// The value of one sample, written as in the exposition text
/// (`wheel_connections_closed_total{reason="reset"}`).
pub fn sample(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no sample {name} in the metrics"))
}

/// Whether `program --version` (or `version`) runs; under CI a missing one
/// is a failure, elsewhere a skip.
pub fn tool_or_skip(program: &str, arg: &str) -> bool {
    runs_or_skip(program, Command::new(program).arg(arg))
}

/// Whether Python 3 with the `websockets` package is here (see
/// [`tool_or_skip`] for what a missing one means).
pub fn python_websockets_or_skip() -> bool {
    tool_or_skip("python3", "--version")
        && runs_or_skip(
            "Python's websockets package",
            Command::new("python3").args(["-c", "import websockets"]),
        )
}

/// Whether `check` succeeds; if not, under CI (`CI` set, as `.ci/run`
/// does) a failure naming `what`, elsewhere a skip said on stderr. Written
/// to the process's stderr directly, not with `eprintln!`, which the test
/// harness captures for a passing test: a skip must be seen.
fn runs_or_skip(what: &str, check: &mut Command) -> bool {
    let found = check
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        if std::env::var_os("CI").is_some() {
            panic!("{what} is not installed, and CI must run this test");
        }
        let _ = writeln!(io::stderr(), "SKIPPED: {what} is not installed");
    }
    found
}

/// Starts `cmd` with its address space limited to `bytes` (`RLIMIT_AS`).
pub fn limit_address_space(cmd: &mut Command, bytes: libc::rlim_t) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure only calls setrlimit, which is async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            let limit = libc::rlimit {
                rlim_cur: bytes,
                rlim_max: bytes,
            };
            if libc::setrlimit(libc::RLIMIT_AS, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}
