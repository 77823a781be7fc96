//! End-to-end load generator for any server speaking the frame protocol.
//!
//! ```text
//! ./target/release/wheel-server -q --max-connections 20000 & server=$!
//! cargo run --release --example loadgen -- idle   -n 15000 --pid "$server"
//! cargo run --release --example loadgen -- ping   -n 1000 --rate 20000 --duration 20s
//! cargo run --release --example loadgen -- echo   -n 100 --in-flight 4 --duration 10s
//! cargo run --release --example loadgen -- sparse -n 1000 --every 2s --duration 20s
//! cargo run --release --example loadgen -- presence -n 10000 --watchers 10 --pid "$server"
//! cargo run --release --example loadgen -- expiry -n 10000 --idle-timeout 5s
//! cargo run --release --example loadgen -- churn  -n 16 --duration 10s
//! cargo run --release --example loadgen -- storm  -n 15000
//! ```
//!
//! With `--ws PATH` (idle, ping, echo, sparse) every connection upgrades to
//! WebSocket at PATH first and speaks RFC 6455 (masked frames; PINGs are
//! WebSocket Pings), against a `ws://` listener.
//!
//! One thread: a single-threaded tokio runtime drives every connection, so
//! the generator stays light next to a thread-per-connection server. Progress
//! goes to stderr; each run ends with one JSON summary line on stdout.

use std::cell::RefCell;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use wheel_server::parse_duration;
use wheel_server::protocol::{Message, OwnedMessage as Msg, Protocol, Reader};

#[derive(Parser)]
#[command(about = "Load generator for wheel-server (frame protocol)")]
struct Args {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(clap::Args, Clone)]
struct Common {
    /// Server address (the publisher's, in fanout).
    #[arg(long, default_value = "127.0.0.1:5005")]
    addr: SocketAddr,
    /// More server addresses: the connections are spread over --addr and
    /// these in turn (several instances sharing topics through Redis).
    #[arg(long = "also-addr", value_name = "ADDR")]
    also: Vec<SocketAddr>,
    /// Number of connections.
    #[arg(short = 'n', long, default_value_t = 100)]
    connections: usize,
    /// Connection attempts in flight at once while opening.
    #[arg(long, default_value_t = 256)]
    connect_concurrency: usize,
    /// Speak WebSocket: upgrade at this path first (idle, ping and echo).
    #[arg(long, value_name = "PATH")]
    ws: Option<String>,
}

/// The protocol every connection speaks, set once from `--ws`.
static PROTOCOL: std::sync::OnceLock<Protocol> = std::sync::OnceLock::new();

fn protocol() -> Protocol {
    *PROTOCOL.get().unwrap_or(&Protocol::Frame)
}

/// Sends a WebSocket upgrade request for `path` and reads the response
/// head; fails unless it is a 101.
async fn upgrade(stream: &mut TcpStream, path: &str) -> io::Result<()> {
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: loadgen\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await?;
    // The server sends nothing after the head until spoken to, so reading
    // byte by byte never takes a frame's bytes.
    let mut head = Vec::with_capacity(160);
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        if stream.read(&mut byte).await? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        head.push(byte[0]);
    }
    if head.starts_with(b"HTTP/1.1 101 ") {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "upgrade refused: {}",
            String::from_utf8_lossy(&head).lines().next().unwrap_or("")
        )))
    }
}

#[derive(Subcommand)]
enum Cmd {
    /// Hold N connections, a PING every --ping-every; report the server's cost with --pid.
    Idle {
        #[command(flatten)]
        common: Common,
        /// Server process to measure (RSS, threads, fds, CPU).
        #[arg(long)]
        pid: Option<u32>,
        /// PING interval per connection.
        #[arg(long, default_value = "20s", value_parser = parse_duration)]
        ping_every: Duration,
        /// How long to measure idle CPU once all connections are open.
        #[arg(long, default_value = "10s", value_parser = parse_duration)]
        measure: Duration,
    },
    /// N connections each send one DATA every --every and wait for its
    /// echo: with --every past the server's --park-after, every DATA finds
    /// its connection parked. Reports the echo's round trip.
    Sparse {
        #[command(flatten)]
        common: Common,
        /// Quiet time between one connection's DATA messages.
        #[arg(long, default_value = "2s", value_parser = parse_duration)]
        every: Duration,
        #[arg(long, default_value = "20s", value_parser = parse_duration)]
        duration: Duration,
    },
    /// A presence storm on a `--service pubsub` server: --watchers
    /// connections watch one topic's presence (`SUB room presence`), then
    /// `-n` more connect and subscribe at once. Reports what each watcher
    /// received, how long until the last of it, and the server's CPU.
    Presence {
        #[command(flatten)]
        common: Common,
        /// Connections watching the topic.
        #[arg(long, default_value_t = 10)]
        watchers: usize,
        /// Server process to measure CPU from.
        #[arg(long)]
        pid: Option<u32>,
        /// How long the watchers keep listening after the joiners are in.
        #[arg(long, default_value = "3s", value_parser = parse_duration)]
        settle: Duration,
        /// The joiners connect here instead of --addr: another instance
        /// sharing presence through Redis.
        #[arg(long, value_name = "ADDR")]
        members_at: Option<SocketAddr>,
        /// Then SIGKILL this process (the joiners' instance) and report when
        /// the watchers heard their leaves (`instance_lost`).
        #[arg(long, value_name = "PID")]
        kill: Option<u32>,
        /// How long the watchers listen after the kill.
        #[arg(long, default_value = "8s", value_parser = parse_duration)]
        after_kill: Duration,
    },
    /// Open-loop PINGs at an aggregate rate; RTT from the scheduled send time.
    Ping {
        #[command(flatten)]
        common: Common,
        /// PINGs per second over all connections.
        #[arg(long, default_value_t = 1000.0)]
        rate: f64,
        #[arg(long, default_value = "10s", value_parser = parse_duration)]
        duration: Duration,
    },
    /// Closed loop: K DATA frames in flight per connection.
    Echo {
        #[command(flatten)]
        common: Common,
        #[arg(long, default_value_t = 1)]
        in_flight: usize,
        /// DATA payload size in bytes.
        #[arg(long, default_value_t = 64)]
        size: usize,
        #[arg(long, default_value = "10s", value_parser = parse_duration)]
        duration: Duration,
    },
    /// Fan-out: N subscribers of one topic and one publisher; delivery
    /// latency counted from each publish's send time. Against wheel-server
    /// `--service pubsub` (frame protocol) or redis-server (RESP
    /// SUBSCRIBE/PUBLISH), with the same generator.
    Fanout {
        #[command(flatten)]
        common: Common,
        /// What the server is: `wheel` or `redis`.
        #[arg(long, value_enum, default_value_t = Target::Wheel)]
        target: Target,
        /// Publishes per second.
        #[arg(long, default_value_t = 10.0)]
        rate: f64,
        /// Publishes in all.
        #[arg(long, default_value_t = 100)]
        count: usize,
        /// Payload bytes (at least 32).
        #[arg(long, default_value_t = 64)]
        size: usize,
        /// Publish through this instance instead of --addr (subscribers on
        /// one instance, the publisher on another).
        #[arg(long, value_name = "ADDR")]
        publish_addr: Option<SocketAddr>,
    },
    /// N connections authenticate with HS256 tokens whose `exp` is spread
    /// over `--spread` whole seconds; how long after its `exp` each gets
    /// CLOSE 4002 (the server runs `--auth jwt` with the same secret).
    AuthExpiry {
        #[command(flatten)]
        common: Common,
        /// The server's --jwt-secret.
        #[arg(long)]
        secret: String,
        /// Expiries spread over this many seconds (from 2 s after start).
        #[arg(long, default_value_t = 10)]
        spread: u64,
    },
    /// Connection churn: `-n` loops, each connecting, sending one PING,
    /// waiting for its PONG and closing, over and over for --duration.
    Churn {
        #[command(flatten)]
        common: Common,
        #[arg(long, default_value = "10s", value_parser = parse_duration)]
        duration: Duration,
        /// Server process to read threads and descriptors from after the run.
        #[arg(long)]
        pid: Option<u32>,
    },
    /// Reconnect storm: N clients connect at once and each waits for the
    /// PONG to one PING (the cold storm, as after a restart); then all
    /// hang up and reconnect at once (the warm storm, as after a network
    /// blip). Reports the time until the last PONG of each.
    Storm {
        #[command(flatten)]
        common: Common,
        /// Pause between the two storms (lets the server see the hang-ups).
        #[arg(long, default_value = "2s", value_parser = parse_duration)]
        pause: Duration,
        /// Server process to read threads and RSS from.
        #[arg(long)]
        pid: Option<u32>,
    },
    /// N connections fall silent after one PING: how long after the idle
    /// timeout (counted from the PING's send) each gets CLOSE 4000.
    Expiry {
        #[command(flatten)]
        common: Common,
        /// The server's --idle-timeout.
        #[arg(long, value_parser = parse_duration)]
        idle_timeout: Duration,
        /// Connections fall silent at random times over this window (0: all
        /// at once, the worst case: every connection expires in the same tick).
        /// Keep it below the idle timeout.
        #[arg(long, default_value = "0s", value_parser = parse_duration)]
        spread: Duration,
    },
}

fn main() -> io::Result<()> {
    let args = Args::parse();
    let common = match &args.command {
        Cmd::Idle { common, .. }
        | Cmd::Ping { common, .. }
        | Cmd::Echo { common, .. }
        | Cmd::Sparse { common, .. } => Some(common),
        _ => None,
    };
    if common.is_some_and(|c| c.ws.is_some()) {
        let _ = PROTOCOL.set(Protocol::Ws);
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    let summary = local.block_on(&rt, async move {
        match args.command {
            Cmd::Idle {
                common,
                pid,
                ping_every,
                measure,
            } => idle(common, pid, ping_every, measure).await,
            Cmd::Ping {
                common,
                rate,
                duration,
            } => ping(common, rate, duration).await,
            Cmd::Sparse {
                common,
                every,
                duration,
            } => sparse(common, every, duration).await,
            Cmd::Presence {
                common,
                watchers,
                pid,
                settle,
                members_at,
                kill,
                after_kill,
            } => {
                let lost = kill.map(|pid| (pid, after_kill));
                presence(common, watchers, pid, settle, members_at, lost).await
            }
            Cmd::Echo {
                common,
                in_flight,
                size,
                duration,
            } => echo(common, in_flight, size, duration).await,
            Cmd::Expiry {
                common,
                idle_timeout,
                spread,
            } => expiry(common, idle_timeout, spread).await,
            Cmd::Fanout {
                common,
                target,
                rate,
                count,
                size,
                publish_addr,
            } => fanout(common, target, rate, count, size, publish_addr).await,
            Cmd::AuthExpiry {
                common,
                secret,
                spread,
            } => auth_expiry(common, secret, spread).await,
            Cmd::Churn {
                common,
                duration,
                pid,
            } => churn(common, duration, pid).await,
            Cmd::Storm { common, pause, pid } => storm(common, pause, pid).await,
        }
    })?;
    println!("{summary}");
    Ok(())
}

/// The read half of a connection and the crate's framed [`Reader`].
struct Conn {
    half: OwnedReadHalf,
    reader: Reader,
}

impl Conn {
    fn new(half: OwnedReadHalf) -> Conn {
        Conn {
            half,
            reader: Reader::new(protocol(), 16 << 20),
        }
    }

    /// The next message; `None` at end of stream.
    async fn next(&mut self) -> io::Result<Option<Msg>> {
        loop {
            let decoded = self
                .reader
                .next_message()
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            if decoded.is_some() {
                return Ok(decoded);
            }
            let mut chunk = [0u8; 8192];
            let n = self.half.read(&mut chunk).await?;
            if n == 0 {
                return Ok(None);
            }
            self.reader.extend(&chunk[..n]);
        }
    }
}

async fn send(w: &mut OwnedWriteHalf, msg: Message<'_>) -> io::Result<()> {
    let mut wire = Vec::new();
    protocol().encode_as_client(&msg, &mut wire).unwrap();
    w.write_all(&wire).await
}

/// Opens `n` connections, at most `concurrency` attempts at a time.
async fn open_all(common: &Common) -> (Vec<(TcpStream, Instant)>, usize) {
    let sem = Rc::new(tokio::sync::Semaphore::new(common.connect_concurrency));
    let mut tasks = Vec::with_capacity(common.connections);
    let addrs: Vec<SocketAddr> = std::iter::once(common.addr)
        .chain(common.also.iter().copied())
        .collect();
    for i in 0..common.connections {
        let sem = Rc::clone(&sem);
        let addr = addrs[i % addrs.len()];
        let path = common.ws.clone();
        tasks.push(tokio::task::spawn_local(async move {
            let _permit = sem.acquire().await.unwrap();
            let mut stream = TcpStream::connect(addr).await?;
            stream.set_nodelay(true)?;
            if let Some(path) = path {
                upgrade(&mut stream, &path).await?;
            }
            Ok::<_, io::Error>((stream, Instant::now()))
        }));
    }
    let mut open = Vec::with_capacity(tasks.len());
    let mut errors = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(s) => open.push(s),
            Err(e) => {
                if errors == 0 {
                    eprintln!("loadgen: connect failed: {e}");
                }
                errors += 1;
            }
        }
    }
    eprintln!("loadgen: {} connections open, {errors} failed", open.len());
    (open, errors)
}

/// Sorted samples -> percentile.
fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn distribution(mut samples: Vec<f64>) -> serde_json::Value {
    samples.sort_by(|a, b| a.partial_cmp(b).unwrap());
    json!({
        "count": samples.len(),
        "min": samples.first(), "p50": pct(&samples, 50.0), "p99": pct(&samples, 99.0),
        "p99_9": pct(&samples, 99.9), "max": samples.last(),
    })
}

/// The whole machine's memory, from /proc/meminfo: what a thread's kernel
/// stack and task structures cost shows here and not in any RSS.
#[derive(Clone, Copy, Debug, Default)]
struct Meminfo {
    available_kib: u64,
    kernel_stack_kib: u64,
    slab_kib: u64,
}

impl Meminfo {
    fn read() -> io::Result<Meminfo> {
        let text = std::fs::read_to_string("/proc/meminfo")?;
        let field = |name: &str| -> u64 {
            text.lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
                .unwrap_or(0)
        };
        Ok(Meminfo {
            available_kib: field("MemAvailable:"),
            kernel_stack_kib: field("KernelStack:"),
            slab_kib: field("Slab:"),
        })
    }
}

/// Server process figures from /proc.
#[derive(Clone, Copy, Debug, Default)]
struct ProcStat {
    rss_kib: u64,
    threads: usize,
    fds: usize,
    cpu_ticks: u64,
}

fn proc_stat(pid: u32) -> io::Result<ProcStat> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the parenthesised command name; utime and stime are the
    // 14th and 15th fields overall.
    let after = &stat[stat.rfind(')').map_or(0, |i| i + 2)..];
    let f: Vec<&str> = after.split_whitespace().collect();
    let cpu_ticks = f[11].parse::<u64>().unwrap_or(0) + f[12].parse::<u64>().unwrap_or(0);
    Ok(ProcStat {
        rss_kib: field("VmRSS:"),
        threads: field("Threads:") as usize,
        fds: std::fs::read_dir(format!("/proc/{pid}/fd"))?.count(),
        cpu_ticks,
    })
}

fn clock_ticks_per_sec() -> f64 {
    // SAFETY: sysconf has no memory effects.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

async fn idle(
    common: Common,
    pid: Option<u32>,
    ping_every: Duration,
    measure: Duration,
) -> io::Result<serde_json::Value> {
    let before = pid.map(proc_stat).transpose()?;
    let machine_before = Meminfo::read()?;
    let (open, errors) = open_all(&common).await;
    let closed = Rc::new(RefCell::new(0usize));
    for (i, (stream, _)) in open.into_iter().enumerate() {
        let closed = Rc::clone(&closed);
        // Spread the pings over the interval.
        let offset = ping_every.mul_f64(i as f64 / common.connections.max(1) as f64);
        tokio::task::spawn_local(async move {
            let (r, mut w) = stream.into_split();
            let mut reader = Conn::new(r);
            let mut next = tokio::time::Instant::now() + offset;
            loop {
                tokio::select! {
                    _ = tokio::time::sleep_until(next) => {
                        if send(&mut w, Message::Ping(b"idle")).await.is_err() { break; }
                        next += ping_every;
                    }
                    msg = reader.next() => match msg {
                        Ok(Some(Msg::Ping(p))) => { let _ = send(&mut w, Message::Pong(&p)).await; }
                        Ok(Some(Msg::Close(..))) | Ok(None) | Err(_) => break,
                        Ok(Some(_)) => {}
                    }
                }
            }
            *closed.borrow_mut() += 1;
        });
    }
    // Let the server settle (threads started, first reads parked).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut result =
        json!({"mode": "idle", "connections": common.connections, "connect_errors": errors});
    if let (Some(pid), Some(before)) = (pid, before) {
        let start = proc_stat(pid)?;
        let t0 = Instant::now();
        tokio::time::sleep(measure).await;
        let end = proc_stat(pid)?;
        let cpu_secs = (end.cpu_ticks - start.cpu_ticks) as f64 / clock_ticks_per_sec();
        let held = common.connections - errors - *closed.borrow();
        result["server"] = json!({
            "rss_before_kib": before.rss_kib,
            "rss_after_kib": end.rss_kib,
            "rss_per_connection_kib": (end.rss_kib.saturating_sub(before.rss_kib)) as f64 / held.max(1) as f64,
            "threads_before": before.threads, "threads": end.threads,
            "fds_before": before.fds, "fds": end.fds,
            "idle_cpu_percent": 100.0 * cpu_secs / t0.elapsed().as_secs_f64(),
        });
        // The whole machine, this client's side included (the same for
        // every server measured).
        let machine = Meminfo::read()?;
        let per = |before: u64, after: u64| (after as f64 - before as f64) / held.max(1) as f64;
        result["machine"] = json!({
            "mem_available_drop_per_connection_kib":
                per(machine.available_kib, machine_before.available_kib),
            "kernel_stack_per_connection_kib":
                per(machine_before.kernel_stack_kib, machine.kernel_stack_kib),
            "slab_per_connection_kib": per(machine_before.slab_kib, machine.slab_kib),
        });
    } else {
        tokio::time::sleep(measure).await;
    }
    result["closed_by_server"] = json!(*closed.borrow());
    Ok(result)
}

/// Open-loop PINGs. Sends come from one OS thread with 1 ns timer slack
/// (tokio's timers tick in milliseconds, which would add up to 1 ms of the
/// generator's own lateness to every sample); it sends every PING whose
/// scheduled time has come each time it wakes. PING `k` is scheduled at
/// `start + k / rate` and carries `k`, so the reader computes RTT from the
/// scheduled time, lateness of the generator included: a stall anywhere shows.
async fn ping(common: Common, rate: f64, duration: Duration) -> io::Result<serde_json::Value> {
    let (open, errors) = open_all(&common).await;
    let n = open.len().max(1);
    let mut writers = Vec::with_capacity(open.len());
    let mut readers = Vec::with_capacity(open.len());
    for (stream, _) in open {
        let std_stream = stream.into_std()?;
        writers.push(std_stream.try_clone()?);
        // The write half must live: dropping it would shut the socket's
        // write side down (the PINGs go through the std clone).
        let (r, w) = TcpStream::from_std(std_stream)?.into_split();
        readers.push((Conn::new(r), w));
    }
    let total = (rate * duration.as_secs_f64()) as u64;
    let start = Instant::now() + Duration::from_millis(200);
    let scheduled = move |k: u64| start + Duration::from_secs_f64(k as f64 / rate);
    let protocol = protocol();
    let sender = std::thread::spawn(move || {
        // SAFETY: prctl(PR_SET_TIMERSLACK) only changes this thread's timer slack.
        unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1u64, 0u64, 0u64, 0u64) };
        let mut wire = Vec::with_capacity(16);
        let mut k = 0u64;
        while k < total {
            let now = Instant::now();
            let at = scheduled(k);
            if at > now {
                std::thread::sleep(at - now);
                continue;
            }
            while k < total && scheduled(k) <= Instant::now() {
                wire.clear();
                protocol
                    .encode_as_client(&Message::Ping(&k.to_be_bytes()), &mut wire)
                    .unwrap();
                let w = &mut writers[(k % n as u64) as usize];
                // Non-blocking (shared with the tokio reader): retry if full.
                let mut sent = 0;
                while sent < wire.len() {
                    match std::io::Write::write(w, &wire[sent..]) {
                        Ok(m) => sent += m,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::yield_now(),
                        Err(_) => break,
                    }
                }
                k += 1;
            }
        }
        writers
    });
    let rtts = Rc::new(RefCell::new(Vec::<f64>::with_capacity(total as usize)));
    let end = scheduled(total) + Duration::from_secs(2);
    let mut tasks = Vec::new();
    for (i, (mut reader, write_half)) in readers.into_iter().enumerate() {
        let rtts = Rc::clone(&rtts);
        // Connection i carries PINGs i, i + n, i + 2n, ...
        let expected = total / n as u64 + u64::from((i as u64) < total % n as u64);
        tasks.push(tokio::task::spawn_local(async move {
            let mut got = 0;
            while got < expected {
                let left = end.saturating_duration_since(Instant::now());
                match tokio::time::timeout(left, reader.next()).await {
                    Ok(Ok(Some(Msg::Pong(p)))) => {
                        let k = u64::from_be_bytes(p.try_into().unwrap_or([0; 8]));
                        rtts.borrow_mut()
                            .push(scheduled(k).elapsed().as_secs_f64() * 1e3);
                        got += 1;
                    }
                    Ok(Ok(Some(_))) => {}
                    _ => break,
                }
            }
            write_half
        }));
    }
    let mut halves = Vec::new();
    for t in tasks {
        halves.extend(t.await);
    }
    let _writers = sender.join().expect("sender thread");
    drop(halves);
    let rtts = std::mem::take(&mut *rtts.borrow_mut());
    let answered = rtts.len() as u64;
    Ok(json!({
        "mode": "ping", "connections": n, "connect_errors": errors, "target_rate": rate,
        "achieved_rate": answered as f64 / duration.as_secs_f64(), "sent": total, "unanswered": total - answered,
        "rtt_ms": distribution(rtts),
    }))
}

async fn echo(
    common: Common,
    in_flight: usize,
    size: usize,
    duration: Duration,
) -> io::Result<serde_json::Value> {
    let (open, errors) = open_all(&common).await;
    let latencies = Rc::new(RefCell::new(Vec::<f64>::new()));
    let start = tokio::time::Instant::now();
    let end = start + duration;
    let mut tasks = Vec::new();
    for (stream, _) in open {
        let latencies = Rc::clone(&latencies);
        tasks.push(tokio::task::spawn_local(async move {
            let (r, mut w) = stream.into_split();
            let mut reader = Conn::new(r);
            let payload = vec![b'e'; size];
            let mut sent_at = std::collections::VecDeque::new();
            for _ in 0..in_flight {
                sent_at.push_back(Instant::now());
                if send(&mut w, Message::Data(&payload)).await.is_err() {
                    return;
                }
            }
            let mut local = Vec::new();
            while let Ok(Some(msg)) = reader.next().await {
                if let Msg::Data(payload) = msg {
                    let len = payload.len();
                    assert_eq!(len, size, "echo of a different size");
                    if let Some(t) = sent_at.pop_front() {
                        local.push(t.elapsed().as_secs_f64() * 1e3);
                    }
                    if tokio::time::Instant::now() < end {
                        sent_at.push_back(Instant::now());
                        if send(&mut w, Message::Data(&payload)).await.is_err() {
                            break;
                        }
                    } else if sent_at.is_empty() {
                        break;
                    }
                }
            }
            latencies.borrow_mut().extend(local);
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let lat = std::mem::take(&mut *latencies.borrow_mut());
    Ok(json!({
        "mode": "echo", "connections": common.connections - errors, "connect_errors": errors,
        "in_flight": in_flight, "size": size, "messages": lat.len(),
        "msgs_per_sec": lat.len() as f64 / elapsed, "latency_ms": distribution(lat),
    }))
}

async fn sparse(
    common: Common,
    every: Duration,
    duration: Duration,
) -> io::Result<serde_json::Value> {
    let (open, errors) = open_all(&common).await;
    let latencies = Rc::new(RefCell::new(Vec::<f64>::new()));
    let start = tokio::time::Instant::now();
    let end = start + duration;
    let n = open.len().max(1);
    let mut tasks = Vec::new();
    for (i, (stream, _)) in open.into_iter().enumerate() {
        let latencies = Rc::clone(&latencies);
        // Spread over the interval, each first DATA a whole interval in.
        let mut next = start + every + every.mul_f64(i as f64 / n as f64);
        tasks.push(tokio::task::spawn_local(async move {
            let (r, mut w) = stream.into_split();
            let mut reader = Conn::new(r);
            let mut local = Vec::new();
            while next < end {
                tokio::time::sleep_until(next).await;
                let sent = Instant::now();
                if send(&mut w, Message::Data(b"sparse")).await.is_err() {
                    break;
                }
                match reader.next().await {
                    Ok(Some(Msg::Data(_))) => local.push(sent.elapsed().as_secs_f64() * 1e3),
                    _ => break,
                }
                next += every;
            }
            latencies.borrow_mut().extend(local);
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let lat = std::mem::take(&mut *latencies.borrow_mut());
    Ok(json!({
        "mode": "sparse", "connections": common.connections - errors, "connect_errors": errors,
        "every_ms": every.as_millis() as u64, "messages": lat.len(), "rtt_ms": distribution(lat),
    }))
}

async fn presence(
    common: Common,
    watchers: usize,
    pid: Option<u32>,
    settle: Duration,
    members_at: Option<SocketAddr>,
    lost: Option<(u32, Duration)>,
) -> io::Result<serde_json::Value> {
    // The watchers first, each subscribed before the storm.
    let watch = Common {
        connections: watchers,
        ..common.clone()
    };
    let (open, _) = open_all(&watch).await;
    let t0 = Instant::now();
    // Per watcher: event lines received, overflow notices among them, and
    // when the last came (ms from t0); and after the kill (if any), events,
    // the first's time and leaves.
    let seen = Rc::new(RefCell::new(vec![(0usize, 0usize, 0f64); open.len()]));
    let killed_at = Rc::new(std::cell::Cell::new(f64::INFINITY));
    let after = Rc::new(RefCell::new(vec![
        (0usize, f64::INFINITY, 0usize);
        open.len()
    ]));
    let ready = Rc::new(tokio::sync::Semaphore::new(0));
    let mut writers = Vec::new();
    for (i, (stream, _)) in open.into_iter().enumerate() {
        let (r, mut w) = stream.into_split();
        send(&mut w, Message::Data(b"SUB room presence")).await?;
        writers.push(w);
        let (seen, ready) = (Rc::clone(&seen), Rc::clone(&ready));
        let (killed_at, after) = (Rc::clone(&killed_at), Rc::clone(&after));
        tokio::task::spawn_local(async move {
            let mut conn = Conn::new(r);
            while let Ok(Some(msg)) = conn.next().await {
                let Msg::Data(p) = msg else { continue };
                if p.starts_with(b"OK SUB") {
                    ready.add_permits(1);
                    continue;
                }
                let now = t0.elapsed().as_secs_f64() * 1e3;
                let slot = &mut seen.borrow_mut()[i];
                slot.0 += 1;
                slot.1 += usize::from(p.ends_with(b" overflow"));
                slot.2 = now;
                if now >= killed_at.get() {
                    let slot = &mut after.borrow_mut()[i];
                    slot.0 += 1;
                    slot.1 = slot.1.min(now - killed_at.get());
                    slot.2 += usize::from(p.ends_with(b" instance_lost"));
                }
            }
        });
    }
    let _ = ready.acquire_many(watchers as u32).await;
    let before = pid.map(proc_stat).transpose()?;
    let storm_at = t0.elapsed().as_secs_f64() * 1e3;
    // The storm: every joiner connects and subscribes at once.
    let joiners = Common {
        connect_concurrency: common.connections.max(1),
        addr: members_at.unwrap_or(common.addr),
        also: if members_at.is_some() {
            Vec::new()
        } else {
            common.also.clone()
        },
        ..common.clone()
    };
    let (joined, errors) = open_all(&joiners).await;
    let subscribing: Vec<_> = joined
        .into_iter()
        .map(|(stream, _)| {
            tokio::task::spawn_local(async move {
                let (r, mut w) = stream.into_split();
                send(&mut w, Message::Data(b"SUB room")).await.ok()?;
                let mut conn = Conn::new(r);
                conn.next().await.ok()?;
                Some((conn, w))
            })
        })
        .collect();
    let mut holding = Vec::with_capacity(subscribing.len());
    for task in subscribing {
        if let Ok(Some(held)) = task.await {
            holding.push(held);
        }
    }
    let subscribed_ms = t0.elapsed().as_secs_f64() * 1e3 - storm_at;
    tokio::time::sleep(settle).await;
    let cpu_ms = match (pid, before) {
        (Some(pid), Some(before)) => {
            let after = proc_stat(pid)?;
            Some((after.cpu_ticks - before.cpu_ticks) as f64 * 1e3 / clock_ticks_per_sec())
        }
        _ => None,
    };
    let quiet_ms = seen
        .borrow()
        .iter()
        .map(|s| s.2 - storm_at)
        .fold(0f64, f64::max);
    // The members' instance dies without a goodbye: when do the watchers
    // hear of it, and how much?
    let lost = match lost {
        Some((victim, listen)) => {
            killed_at.set(t0.elapsed().as_secs_f64() * 1e3);
            // SAFETY: kill(2) has no memory effects.
            if unsafe { libc::kill(victim as i32, libc::SIGKILL) } != 0 {
                return Err(io::Error::last_os_error());
            }
            tokio::time::sleep(listen).await;
            let after = after.borrow();
            let last_ms = seen
                .borrow()
                .iter()
                .map(|s| s.2 - killed_at.get())
                .fold(0f64, f64::max);
            Some(json!({
                "first_event_ms": distribution(after.iter().map(|a| a.1).collect()),
                "last_event_ms": last_ms,
                "events_per_watcher": distribution(after.iter().map(|a| a.0 as f64).collect()),
                "instance_lost_leaves_per_watcher": distribution(after.iter().map(|a| a.2 as f64).collect()),
            }))
        }
        None => None,
    };
    let seen = seen.borrow().clone();
    let events: Vec<f64> = seen.iter().map(|s| s.0 as f64).collect();
    let overflows: usize = seen.iter().map(|s| s.1).sum();
    Ok(json!({
        "mode": "presence", "watchers": watchers, "joiners": holding.len(),
        "connect_errors": errors, "subscribed_ms": subscribed_ms,
        "events_per_watcher": distribution(events), "overflow_notices": overflows,
        "last_event_after_storm_ms": quiet_ms, "server_cpu_ms": cpu_ms,
        "killed": lost,
    }))
}

async fn expiry(
    common: Common,
    idle_timeout: Duration,
    spread: Duration,
) -> io::Result<serde_json::Value> {
    if spread >= idle_timeout {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "--spread must be shorter than --idle-timeout",
        ));
    }
    let (open, errors) = open_all(&common).await;
    let mut tasks = Vec::new();
    // Silence is measured from each connection's last message, a PING sent
    // once every connection is open (so the burst of accepts is not
    // counted), at a random offset within --spread, and answered; then
    // nothing. The figure is what a client sees: CLOSE received minus PING
    // sent minus the timeout, so it includes both one-way latencies.
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    for (stream, _) in open {
        // xorshift: a uniform offset in [0, spread).
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let offset = spread.mul_f64((rng >> 11) as f64 / (1u64 << 53) as f64);
        tasks.push(tokio::task::spawn_local(async move {
            let (r, mut w) = stream.into_split();
            let mut reader = Conn::new(r);
            // Alive until the offset: a PING now (answered), silence after
            // the measured PING at the offset.
            send(&mut w, Message::Ping(b"first"))
                .await
                .map_err(|e| e.to_string())?;
            match reader.next().await {
                Ok(Some(Msg::Pong(_))) => {}
                other => return Err(format!("no answer to the first ping: {other:?}")),
            }
            tokio::time::sleep(offset).await;
            let sent = Instant::now();
            send(&mut w, Message::Ping(b"last"))
                .await
                .map_err(|e| e.to_string())?;
            let deadline = idle_timeout * 3 + Duration::from_secs(10);
            let mut rtt = None;
            loop {
                match tokio::time::timeout(deadline, reader.next()).await {
                    Ok(Ok(Some(Msg::Pong(_)))) => rtt = Some(sent.elapsed()),
                    Ok(Ok(Some(Msg::Close(code, _)))) => return Ok((code, sent.elapsed(), rtt)),
                    Ok(Ok(other)) => return Err(format!("unexpected {other:?}")),
                    Ok(Err(e)) => return Err(e.to_string()),
                    Err(_) => return Err("no close within 3x the timeout".into()),
                }
            }
        }));
    }
    let mut errors_by_ms = Vec::new();
    let mut rtts_ms = Vec::new();
    let mut from_pong_ms = Vec::new();
    let mut other = 0usize;
    let mut early = 0usize;
    for t in tasks {
        match t.await.unwrap() {
            Ok((4000, elapsed, rtt)) => {
                if let Some(rtt) = rtt {
                    rtts_ms.push(rtt.as_secs_f64() * 1e3);
                    from_pong_ms.push(
                        (elapsed.as_secs_f64() - rtt.as_secs_f64() - idle_timeout.as_secs_f64())
                            * 1e3,
                    );
                }
                let err_ms = (elapsed.as_secs_f64() - idle_timeout.as_secs_f64()) * 1e3;
                if err_ms < 0.0 {
                    early += 1;
                }
                errors_by_ms.push(err_ms);
            }
            Ok(_) | Err(_) => other += 1,
        }
    }
    Ok(json!({
        "mode": "expiry", "connections": common.connections, "connect_errors": errors,
        "idle_timeout_ms": idle_timeout.as_millis() as u64, "spread_ms": spread.as_millis() as u64,
        "closed_4000": errors_by_ms.len(),
        "closed_otherwise": other, "early": early,
        // Upper bound of the server's error: from the PING's send.
        "close_after_timeout_ms": distribution(errors_by_ms),
        // Lower bound: from the PONG's arrival (the server stamped the
        // activity before answering).
        "close_after_timeout_from_pong_ms": distribution(from_pong_ms),
        "last_ping_rtt_ms": distribution(rtts_ms),
    }))
}

/// The server a fan-out run talks to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Target {
    /// wheel-server --service pubsub, frame protocol.
    Wheel,
    /// redis-server, RESP.
    Redis,
}

/// The RESP encoding of a command.
fn resp(args: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for arg in args {
        out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// One RESP value from the front of `buf` (simple strings, errors, integers,
/// bulk strings, arrays of those), flattened into its strings, and the bytes
/// it used; `None` if incomplete.
fn resp_next(buf: &[u8]) -> Option<(Vec<Vec<u8>>, usize)> {
    fn line(buf: &[u8], at: usize) -> Option<(&[u8], usize)> {
        let end = buf[at..].windows(2).position(|w| w == b"\r\n")? + at;
        Some((&buf[at..end], end + 2))
    }
    fn value(buf: &[u8], at: usize, out: &mut Vec<Vec<u8>>) -> Option<usize> {
        let kind = *buf.get(at)?;
        let (text, next) = line(buf, at + 1)?;
        let number = || std::str::from_utf8(text).ok()?.parse::<i64>().ok();
        match kind {
            b'+' | b'-' | b':' => {
                out.push(text.to_vec());
                Some(next)
            }
            b'$' => {
                let len = number()?;
                if len < 0 {
                    return Some(next);
                }
                let end = next + len as usize;
                let body = buf.get(next..end)?;
                buf.get(end..end + 2)?;
                out.push(body.to_vec());
                Some(end + 2)
            }
            b'*' => {
                let mut at = next;
                for _ in 0..number()?.max(0) {
                    at = value(buf, at, out)?;
                }
                Some(at)
            }
            _ => None,
        }
    }
    let mut out = Vec::new();
    let used = value(buf, 0, &mut out)?;
    Some((out, used))
}

/// Reads the next RESP value from a connection.
async fn resp_read(
    half: &mut OwnedReadHalf,
    buf: &mut Vec<u8>,
) -> io::Result<Option<Vec<Vec<u8>>>> {
    loop {
        if let Some((value, used)) = resp_next(buf) {
            buf.drain(..used);
            return Ok(Some(value));
        }
        let mut chunk = [0u8; 8192];
        let n = half.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// The publish number and send time (ns since `t0`) in a payload.
fn stamp_of(payload: &[u8]) -> Option<(usize, u64)> {
    let text = std::str::from_utf8(payload.get(..32)?).ok()?;
    let (index, ns) = text.split_once(':')?;
    Some((index.trim().parse().ok()?, ns.trim().parse().ok()?))
}

async fn fanout(
    common: Common,
    target: Target,
    rate: f64,
    count: usize,
    size: usize,
    publish_addr: Option<SocketAddr>,
) -> io::Result<serde_json::Value> {
    const TOPIC: &str = "bench";
    let size = size.max(32);
    let (open, errors) = open_all(&common).await;
    let n = open.len();
    let t0 = Instant::now();
    // Per publish: deliveries so far and the latest delivery's latency.
    let per_publish = Rc::new(RefCell::new(vec![(0usize, 0f64); count]));
    let latencies = Rc::new(RefCell::new(Vec::with_capacity(n * count)));
    let subscribed = Rc::new(tokio::sync::Semaphore::new(0));
    // Every connection stays open until the run ends: a subscriber that hung
    // up after its last message would make the server close connections
    // while other deliveries are still on their way.
    let writers = Rc::new(RefCell::new(Vec::with_capacity(n)));
    let mut tasks = Vec::with_capacity(n);
    for (stream, _) in open {
        let (mut r, mut w) = stream.into_split();
        let writers = Rc::clone(&writers);
        let per_publish = Rc::clone(&per_publish);
        let latencies = Rc::clone(&latencies);
        let subscribed = Rc::clone(&subscribed);
        tasks.push(tokio::task::spawn_local(async move {
            let record = |payload: &[u8]| {
                if let Some((index, sent)) = stamp_of(payload) {
                    let ms = (t0.elapsed().as_nanos() as u64).saturating_sub(sent) as f64 / 1e6;
                    latencies.borrow_mut().push(ms);
                    if let Some(slot) = per_publish.borrow_mut().get_mut(index) {
                        slot.0 += 1;
                        slot.1 = slot.1.max(ms);
                    }
                }
            };
            let mut got = 0;
            match target {
                Target::Wheel => {
                    send(&mut w, Message::Data(format!("SUB {TOPIC}").as_bytes())).await?;
                    writers.borrow_mut().push(w);
                    let mut conn = Conn::new(r);
                    while let Some(msg) = conn.next().await? {
                        if let Msg::Data(p) = msg {
                            if p.starts_with(b"OK SUB") {
                                subscribed.add_permits(1);
                            } else if let Some(rest) =
                                p.strip_prefix(format!("MSG {TOPIC} ").as_bytes())
                            {
                                let payload = &rest
                                    [rest.iter().position(|&b| b == b' ').map_or(0, |i| i + 1)..];
                                record(payload);
                                got += 1;
                                if got == count {
                                    break;
                                }
                            }
                        }
                    }
                    Ok::<Box<dyn std::any::Any>, io::Error>(Box::new(conn))
                }
                Target::Redis => {
                    w.write_all(&resp(&[b"SUBSCRIBE", TOPIC.as_bytes()]))
                        .await?;
                    writers.borrow_mut().push(w);
                    let mut buf = Vec::new();
                    while let Some(value) = resp_read(&mut r, &mut buf).await? {
                        match value.first().map(Vec::as_slice) {
                            Some(b"subscribe") => subscribed.add_permits(1),
                            Some(b"message") if value.len() == 3 => {
                                record(&value[2]);
                                got += 1;
                                if got == count {
                                    break;
                                }
                            }
                            _ => {}
                        }
                    }
                    Ok(Box::new(r) as Box<dyn std::any::Any>)
                }
            }
        }));
    }
    // Every subscriber confirmed before the first publish.
    let _all = subscribed.acquire_many(n as u32).await.unwrap();
    let publisher = TcpStream::connect(publish_addr.unwrap_or(common.addr)).await?;
    publisher.set_nodelay(true)?;
    let (mut pr, mut pw) = publisher.into_split();
    // Drain the publisher's acknowledgements.
    tokio::task::spawn_local(async move {
        let mut sink = [0u8; 8192];
        while matches!(pr.read(&mut sink).await, Ok(n) if n > 0) {}
    });
    let started = Instant::now();
    for index in 0..count {
        let due = started + Duration::from_secs_f64(index as f64 / rate);
        tokio::time::sleep_until(due.into()).await;
        let mut payload =
            format!("{index:>11}:{:>20}", t0.elapsed().as_nanos() as u64).into_bytes();
        payload.resize(size, b'x');
        match target {
            Target::Wheel => {
                let command = [format!("PUB {TOPIC} ").as_bytes(), &payload].concat();
                send(&mut pw, Message::Data(&command)).await?;
            }
            Target::Redis => {
                pw.write_all(&resp(&[b"PUBLISH", TOPIC.as_bytes(), &payload]))
                    .await?
            }
        }
    }
    let publishing = started.elapsed();
    // Wait for the deliveries, bounded.
    let deadline = Instant::now() + Duration::from_secs(30);
    // Read halves, held (not read) so the sockets stay open to the end.
    let mut readers = Vec::with_capacity(tasks.len());
    for task in tasks {
        let left = deadline.saturating_duration_since(Instant::now());
        if let Ok(Ok(Ok(reader))) = tokio::time::timeout(left, task).await {
            readers.push(reader);
        }
    }
    let elapsed = started.elapsed();
    drop((readers, writers));
    let per_publish = per_publish.borrow().clone();
    let delivered: usize = per_publish.iter().map(|p| p.0).sum();
    let last: Vec<f64> = per_publish.iter().map(|p| p.1).collect();
    let lat = std::mem::take(&mut *latencies.borrow_mut());
    Ok(json!({
        "mode": "fanout", "target": format!("{target:?}").to_lowercase(),
        "subscribers": n, "connect_errors": errors, "publishes": count, "rate": rate, "size": size,
        "expected": n * count, "delivered": delivered, "lost": n * count - delivered,
        "deliveries_per_sec": delivered as f64 / elapsed.as_secs_f64().max(publishing.as_secs_f64()),
        "latency_ms": distribution(lat),
        "time_to_last_delivery_ms": distribution(last.clone()),
        "time_to_last_delivery_each_ms": last.iter().map(|ms| (ms * 10.0).round() / 10.0).collect::<Vec<_>>(),
    }))
}

async fn auth_expiry(common: Common, secret: String, spread: u64) -> io::Result<serde_json::Value> {
    use std::time::{SystemTime, UNIX_EPOCH};
    let key = jsonwebtoken::EncodingKey::from_secret(secret.as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
    let (open, errors) = open_all(&common).await;
    let n = open.len();
    let unix = || {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
    };
    // Far enough ahead that every connection has authenticated first.
    let base = unix().as_secs() + 3;
    let late_ms = Rc::new(RefCell::new(Vec::with_capacity(n)));
    let mut tasks = Vec::with_capacity(n);
    for (i, (stream, _)) in open.into_iter().enumerate() {
        let exp = base + (i as u64 % spread.max(1));
        let token = jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &json!({"sub": format!("user{i}"), "exp": exp}),
            &key,
        )
        .map_err(|e| io::Error::other(e.to_string()))?;
        let late_ms = Rc::clone(&late_ms);
        tasks.push(tokio::task::spawn_local(async move {
            let (r, mut w) = stream.into_split();
            send(&mut w, Message::Data(format!("AUTH {token}").as_bytes())).await?;
            let mut conn = Conn::new(r);
            while let Some(msg) = conn.next().await? {
                if let Msg::Close(code, _) = msg {
                    if code == 4002 {
                        let exp_ns = u128::from(exp) * 1_000_000_000;
                        let late = unix().as_nanos() as f64 - exp_ns as f64;
                        late_ms.borrow_mut().push(late / 1e6);
                    }
                    break;
                }
            }
            drop(w);
            Ok::<_, io::Error>(())
        }));
    }
    let deadline = Duration::from_secs(spread + 30);
    for task in tasks {
        let _ = tokio::time::timeout(deadline, task).await;
    }
    let late = std::mem::take(&mut *late_ms.borrow_mut());
    let early = late.iter().filter(|&&ms| ms < 0.0).count();
    Ok(json!({
        "mode": "auth-expiry", "connections": n, "connect_errors": errors,
        "closed_4002": late.len(), "early": early, "spread_s": spread,
        "after_exp_ms": distribution(late),
    }))
}

/// One churn cycle: connect, PING, PONG, close.
async fn cycle(addr: SocketAddr) -> io::Result<()> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (r, mut w) = stream.into_split();
    send(&mut w, Message::Ping(b"churn")).await?;
    match Conn::new(r).next().await? {
        Some(Msg::Pong(_)) => Ok(()),
        other => Err(io::Error::other(format!("expected a PONG, got {other:?}"))),
    }
}

async fn churn(
    common: Common,
    duration: Duration,
    pid: Option<u32>,
) -> io::Result<serde_json::Value> {
    let before = pid.map(proc_stat).transpose()?;
    let start = Instant::now();
    let end = start + duration;
    let mut tasks = Vec::with_capacity(common.connections);
    for _ in 0..common.connections {
        let addr = common.addr;
        tasks.push(tokio::task::spawn_local(async move {
            let (mut done, mut failed) = (0u64, 0u64);
            let mut first_error = None;
            while Instant::now() < end {
                match cycle(addr).await {
                    Ok(()) => done += 1,
                    Err(e) => {
                        failed += 1;
                        first_error.get_or_insert(e.to_string());
                    }
                }
            }
            (done, failed, first_error)
        }));
    }
    let (mut cycles, mut failed) = (0u64, 0u64);
    for task in tasks {
        let (d, f, e) = task.await.unwrap();
        if let Some(e) = e.filter(|_| failed == 0) {
            eprintln!("loadgen: churn cycle failed: {e}");
        }
        cycles += d;
        failed += f;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let mut result = json!({
        "mode": "churn", "loops": common.connections, "cycles": cycles, "failed": failed,
        "cycles_per_sec": cycles as f64 / elapsed,
    });
    if let (Some(pid), Some(before)) = (pid, before) {
        let ran = proc_stat(pid)?;
        let cpu_secs = (ran.cpu_ticks - before.cpu_ticks) as f64 / clock_ticks_per_sec();
        // The server closes its side after the client's: give it a moment.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let after = proc_stat(pid)?;
        result["server"] = json!({
            "cpu_us_per_cycle": cpu_secs * 1e6 / cycles.max(1) as f64,
            "threads_before": before.threads, "threads_after": after.threads,
            "fds_before": before.fds, "fds_after": after.fds,
        });
    }
    Ok(result)
}

/// Connects `n` clients at once, each waiting for the PONG to one PING;
/// returns the open connections, the failures and the time of each PONG
/// (ms from the start).
async fn storm_once(addr: SocketAddr, n: usize) -> (Vec<TcpStream>, usize, Vec<f64>) {
    let start = Instant::now();
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            tokio::task::spawn_local(async move {
                let stream = TcpStream::connect(addr).await?;
                stream.set_nodelay(true)?;
                let (r, mut w) = stream.into_split();
                send(&mut w, Message::Ping(b"storm")).await?;
                let mut conn = Conn::new(r);
                match conn.next().await? {
                    Some(Msg::Pong(_)) => {}
                    other => {
                        return Err(io::Error::other(format!("expected a PONG, got {other:?}")));
                    }
                }
                let at = start.elapsed();
                Ok::<_, io::Error>((conn.half.reunite(w).expect("halves of one stream"), at))
            })
        })
        .collect();
    let (mut open, mut failed, mut times) = (Vec::with_capacity(n), 0, Vec::with_capacity(n));
    for task in tasks {
        match tokio::time::timeout(Duration::from_secs(60), task).await {
            Ok(Ok(Ok((stream, at)))) => {
                times.push(at.as_secs_f64() * 1e3);
                open.push(stream);
            }
            Ok(Ok(Err(e))) => {
                if failed == 0 {
                    eprintln!("loadgen: storm connection failed: {e}");
                }
                failed += 1;
            }
            _ => failed += 1,
        }
    }
    (open, failed, times)
}

async fn storm(common: Common, pause: Duration, pid: Option<u32>) -> io::Result<serde_json::Value> {
    let n = common.connections;
    let (open, cold_failed, cold) = storm_once(common.addr, n).await;
    eprintln!("loadgen: cold storm: {} answered", open.len());
    let after_cold = pid.map(proc_stat).transpose()?;
    drop(open);
    tokio::time::sleep(pause).await;
    let before_warm = pid.map(proc_stat).transpose()?;
    let (open, warm_failed, warm) = storm_once(common.addr, n).await;
    eprintln!("loadgen: warm storm: {} answered", open.len());
    drop(open);
    let last = |times: &[f64]| times.iter().copied().fold(0.0, f64::max);
    let mut result = json!({
        "mode": "storm", "connections": n,
        "cold_ms": last(&cold), "cold_failed": cold_failed,
        "warm_ms": last(&warm), "warm_failed": warm_failed,
        "cold_pong_ms": distribution(cold), "warm_pong_ms": distribution(warm),
    });
    if let (Some(cold), Some(warm)) = (after_cold, before_warm) {
        result["server"] = json!({
            "threads_after_cold": cold.threads, "rss_after_cold_kib": cold.rss_kib,
            "threads_before_warm": warm.threads,
        });
    }
    Ok(result)
}
