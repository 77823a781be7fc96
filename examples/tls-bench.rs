//! TLS figures for BENCHMARKS.md, with rustls's client on plain threads.
//!
//! ```text
//! # a TLS listener (and, for `idle`, a plain one to compare with):
//! wheel-server -q --max-connections 20000 --listen tls://127.0.0.1:5443 \
//!     --listen 127.0.0.1:5005 --tls-cert cert.pem --tls-key key.pem & server=$!
//! tls-bench handshakes --addr 127.0.0.1:5443 --ca ca.pem            # full handshakes/s
//! tls-bench handshakes --addr 127.0.0.1:5443 --ca ca.pem --resume   # resumed handshakes/s
//! tls-bench storm --addr 127.0.0.1:5443 --ca ca.pem -n 5000 [--resume]
//! tls-bench idle --addr 127.0.0.1:5443 --ca ca.pem -n 10000 --pid "$server"
//! tls-bench idle --addr 127.0.0.1:5005 -n 10000 --pid "$server"     # plain, to compare
//! tls-bench ping --addr 127.0.0.1:5443 --ca ca.pem -n 1000 --rate 20000 --duration 10s
//! tls-bench ping --addr 127.0.0.1:5005 -n 1000 --rate 20000 --duration 10s   # plain
//! ```
//!
//! `ping` is open loop, as loadgen's: PING k is due at start + k / rate and
//! its round trip counts from then. One reader thread per connection reads
//! the socket outside the TLS session's lock and decrypts under it; one
//! sender thread encrypts under the lock and writes outside it, so plain
//! and TLS runs pay the same client-side threading.
//!
//! Every connection does its handshake, one PING and its PONG (so the
//! server has really served it). Each run prints one JSON line.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use rustls::client::Resumption;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, StreamOwned};
use serde_json::json;
use wheel_server::client::TlsClient;
use wheel_server::parse_duration;
use wheel_server::protocol::{Message, OwnedMessage, Protocol, Reader};

#[derive(Parser)]
#[command(about = "TLS handshake, storm and idle-memory figures for wheel-server")]
struct Args {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(clap::Args, Clone)]
struct Target {
    /// Server address.
    #[arg(long)]
    addr: SocketAddr,
    /// CA certificate (PEM) to trust; without it, plain TCP (idle only).
    #[arg(long)]
    ca: Option<PathBuf>,
    /// Name the certificate must carry.
    #[arg(long, default_value = "localhost")]
    server_name: String,
}

#[derive(Subcommand)]
enum Cmd {
    /// Connections one after another (on --threads threads) for --duration: handshakes per second.
    Handshakes {
        #[command(flatten)]
        target: Target,
        /// Resume: every connection after a thread's first presents a ticket.
        #[arg(long)]
        resume: bool,
        #[arg(long, default_value_t = 2)]
        threads: usize,
        #[arg(long, default_value = "5s", value_parser = parse_duration)]
        duration: Duration,
    },
    /// N clients that held a session reconnect at once (on --threads threads): time until all are back.
    Storm {
        #[command(flatten)]
        target: Target,
        #[arg(short = 'n', long, default_value_t = 5000)]
        clients: usize,
        /// Each client resumes the session of its earlier connection.
        #[arg(long)]
        resume: bool,
        #[arg(long, default_value_t = 64)]
        threads: usize,
        /// Reconnect here instead (the instance that replaced --addr, with
        /// the same --tls-ticket-key): the storm after a restart.
        #[arg(long)]
        storm_addr: Option<SocketAddr>,
    },
    /// Open-loop PINGs at --rate over N connections: round-trip percentiles.
    Ping {
        #[command(flatten)]
        target: Target,
        #[arg(short = 'n', long, default_value_t = 1000)]
        connections: usize,
        #[arg(long, default_value_t = 20_000.0)]
        rate: f64,
        #[arg(long, default_value = "10s", value_parser = parse_duration)]
        duration: Duration,
    },
    /// Hold N connections; report the server's RSS per connection.
    Idle {
        #[command(flatten)]
        target: Target,
        #[arg(short = 'n', long, default_value_t = 10_000)]
        connections: usize,
        /// The server's pid.
        #[arg(long)]
        pid: u32,
    },
}

fn main() -> io::Result<()> {
    let summary = match Args::parse().command {
        Cmd::Handshakes {
            target,
            resume,
            threads,
            duration,
        } => handshakes(&target, resume, threads, duration)?,
        Cmd::Storm {
            target,
            clients,
            resume,
            threads,
            storm_addr,
        } => storm(&target, clients, resume, threads, storm_addr)?,
        Cmd::Idle {
            target,
            connections,
            pid,
        } => idle(&target, connections, pid)?,
        Cmd::Ping {
            target,
            connections,
            rate,
            duration,
        } => ping(&target, connections, rate, duration)?,
    };
    println!("{summary}");
    Ok(())
}

/// A client configuration trusting `--ca`, with its own session store
/// (or none).
fn client_config(target: &Target, resume: bool) -> io::Result<Arc<ClientConfig>> {
    let ca = target
        .ca
        .as_deref()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "TLS figures need --ca"))?;
    let base = TlsClient::new(Some(ca), false)?;
    let mut config = (*base.config).clone();
    config.resumption = if resume {
        Resumption::in_memory_sessions(8)
    } else {
        Resumption::disabled()
    };
    Ok(Arc::new(config))
}

/// Either kind of connection.
enum Link {
    Plain(TcpStream),
    Tls(Box<StreamOwned<ClientConnection, TcpStream>>),
}

impl Link {
    fn stream(&mut self) -> &mut dyn ReadWrite {
        match self {
            Link::Plain(s) => s,
            Link::Tls(s) => s.as_mut(),
        }
    }

    fn resumed(&self) -> bool {
        matches!(self, Link::Tls(s) if s.conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed))
    }
}

trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

/// Connects, handshakes, and has one PING answered.
fn open(target: &Target, config: Option<&Arc<ClientConfig>>) -> io::Result<Link> {
    let tcp = TcpStream::connect(target.addr)?;
    tcp.set_nodelay(true)?;
    tcp.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut link = match config {
        None => Link::Plain(tcp),
        Some(config) => {
            let name = ServerName::try_from(target.server_name.clone())
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
            let conn = ClientConnection::new(Arc::clone(config), name).map_err(io::Error::other)?;
            Link::Tls(Box::new(StreamOwned::new(conn, tcp)))
        }
    };
    let mut wire = Vec::new();
    Protocol::Frame
        .encode(&Message::Ping(b"tls-bench"), &mut wire)
        .unwrap();
    let stream = link.stream();
    stream.write_all(&wire)?;
    stream.flush()?;
    let mut reader = Reader::new(Protocol::Frame, 1024);
    let mut buf = [0u8; 4096];
    loop {
        match reader
            .next_message()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?
        {
            Some(OwnedMessage::Pong(_)) => return Ok(link),
            Some(other) => return Err(io::Error::other(format!("expected a PONG, got {other:?}"))),
            None => {}
        }
        let n = link.stream().read(&mut buf)?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        reader.extend(&buf[..n]);
    }
}

fn handshakes(
    target: &Target,
    resume: bool,
    threads: usize,
    duration: Duration,
) -> io::Result<serde_json::Value> {
    let done = Arc::new(AtomicUsize::new(0));
    let resumed = Arc::new(AtomicUsize::new(0));
    let until = Instant::now() + duration;
    let mut workers = Vec::new();
    for _ in 0..threads {
        let config = client_config(target, resume)?;
        let (target, done, resumed) = (target.clone(), Arc::clone(&done), Arc::clone(&resumed));
        workers.push(std::thread::spawn(move || -> io::Result<()> {
            while Instant::now() < until {
                let link = open(&target, Some(&config))?;
                if link.resumed() {
                    resumed.fetch_add(1, Ordering::Relaxed);
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
            Ok(())
        }));
    }
    for worker in workers {
        worker.join().expect("worker")?;
    }
    let n = done.load(Ordering::Relaxed);
    Ok(json!({
        "mode": "handshakes", "resume": resume, "threads": threads,
        "connections": n, "resumed": resumed.load(Ordering::Relaxed),
        "per_second": n as f64 / duration.as_secs_f64(),
    }))
}

fn storm(
    target: &Target,
    clients: usize,
    resume: bool,
    threads: usize,
    storm_addr: Option<SocketAddr>,
) -> io::Result<serde_json::Value> {
    // Each client has its own session store, primed by one connection.
    let configs: Vec<Arc<ClientConfig>> = (0..clients)
        .map(|_| client_config(target, resume))
        .collect::<io::Result<_>>()?;
    if resume {
        for config in &configs {
            drop(open(target, Some(config))?);
        }
    }
    let configs = Arc::new(configs);
    let target = &Target {
        addr: storm_addr.unwrap_or(target.addr),
        ..target.clone()
    };
    let next = Arc::new(AtomicUsize::new(0));
    let resumed = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..threads {
        let (target, configs, next, resumed) = (
            target.clone(),
            Arc::clone(&configs),
            Arc::clone(&next),
            Arc::clone(&resumed),
        );
        workers.push(std::thread::spawn(move || -> io::Result<Vec<Link>> {
            let mut held = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= configs.len() {
                    return Ok(held);
                }
                let link = open(&target, Some(&configs[i]))?;
                if link.resumed() {
                    resumed.fetch_add(1, Ordering::Relaxed);
                }
                held.push(link);
            }
        }));
    }
    let mut held = Vec::new();
    for worker in workers {
        held.extend(worker.join().expect("worker")?);
    }
    let elapsed = start.elapsed();
    Ok(json!({
        "mode": "storm", "resume": resume, "clients": held.len(),
        "resumed": resumed.load(Ordering::Relaxed), "threads": threads,
        "all_back_ms": elapsed.as_secs_f64() * 1e3,
    }))
}

fn rss_kib(pid: u32) -> io::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| io::Error::other("no VmRSS"))
}

fn idle(target: &Target, connections: usize, pid: u32) -> io::Result<serde_json::Value> {
    let config = match target.ca {
        Some(_) => Some(client_config(target, false)?),
        None => None,
    };
    let before = rss_kib(pid)?;
    let mut held = Vec::with_capacity(connections);
    for _ in 0..connections {
        held.push(open(target, config.as_ref())?);
    }
    // Let the server settle: workers parked, quiet buffers released.
    std::thread::sleep(Duration::from_secs(3));
    let after = rss_kib(pid)?;
    Ok(json!({
        "mode": "idle", "tls": config.is_some(), "connections": held.len(),
        "rss_before_kib": before, "rss_after_kib": after,
        "rss_per_connection_kib": (after - before) as f64 / held.len() as f64,
    }))
}

/// A connection split for two threads: the socket (cloned), and the TLS
/// session under a lock when there is one.
struct Shared {
    stream: TcpStream,
    session: Option<Mutex<ClientConnection>>,
}

impl Shared {
    /// Encrypts under the lock, writes outside it.
    fn send(&self, plaintext: &[u8]) -> io::Result<()> {
        let Some(session) = &self.session else {
            return (&self.stream).write_all(plaintext);
        };
        let mut records = Vec::with_capacity(plaintext.len() + 64);
        {
            let mut tls = session.lock().unwrap();
            tls.writer().write_all(plaintext)?;
            while tls.wants_write() {
                tls.write_tls(&mut records)?;
            }
        }
        (&self.stream).write_all(&records)
    }

    /// Reads outside the lock, decrypts under it.
    fn recv(&self, raw: &mut [u8], plain: &mut Vec<u8>) -> io::Result<usize> {
        let n = (&self.stream).read(raw)?;
        let Some(session) = &self.session else {
            plain.extend_from_slice(&raw[..n]);
            return Ok(n);
        };
        if n == 0 {
            return Ok(0);
        }
        let mut tls = session.lock().unwrap();
        let mut data = &raw[..n];
        while !data.is_empty() {
            tls.read_tls(&mut data)?;
            tls.process_new_packets()
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            let mut chunk = [0u8; 4096];
            while let Ok(m) = tls.reader().read(&mut chunk) {
                if m == 0 {
                    break;
                }
                plain.extend_from_slice(&chunk[..m]);
            }
        }
        Ok(n)
    }
}

fn ping(
    target: &Target,
    connections: usize,
    rate: f64,
    duration: Duration,
) -> io::Result<serde_json::Value> {
    let config = match target.ca {
        Some(_) => Some(client_config(target, false)?),
        None => None,
    };
    let mut shared = Vec::with_capacity(connections);
    for _ in 0..connections {
        let link = open(target, config.as_ref())?;
        let (stream, session) = match link {
            Link::Plain(s) => (s, None),
            Link::Tls(s) => {
                let StreamOwned { conn, sock } = *s;
                (sock, Some(Mutex::new(conn)))
            }
        };
        stream.set_read_timeout(Some(duration + Duration::from_secs(5)))?;
        shared.push(Arc::new(Shared { stream, session }));
    }
    let total = (rate * duration.as_secs_f64()) as u64;
    let start = Instant::now() + Duration::from_millis(300);
    let scheduled = move |k: u64| start + Duration::from_secs_f64(k as f64 / rate);
    let rtts = Arc::new(Mutex::new(Vec::with_capacity(total as usize)));
    let n = shared.len() as u64;
    let mut readers = Vec::new();
    for (i, conn) in shared.iter().enumerate() {
        let (conn, rtts) = (Arc::clone(conn), Arc::clone(&rtts));
        let expected = total / n + u64::from((i as u64) < total % n);
        readers.push(
            std::thread::Builder::new()
                .stack_size(64 * 1024)
                .spawn(move || {
                    let mut reader = Reader::new(Protocol::Frame, 1024);
                    let (mut raw, mut plain) = (vec![0u8; 4096], Vec::new());
                    let mut got = 0;
                    let mut local = Vec::new();
                    while got < expected {
                        match reader.next_message() {
                            Ok(Some(OwnedMessage::Pong(p))) => {
                                let k = u64::from_be_bytes(p.try_into().unwrap_or([0; 8]));
                                local.push(scheduled(k).elapsed().as_secs_f64() * 1e3);
                                got += 1;
                                continue;
                            }
                            Ok(Some(_)) => continue,
                            Ok(None) => {}
                            Err(_) => break,
                        }
                        plain.clear();
                        match conn.recv(&mut raw, &mut plain) {
                            Ok(0) | Err(_) => break,
                            Ok(_) => reader.extend(&plain),
                        }
                    }
                    rtts.lock().unwrap().extend(local);
                })?,
        );
    }
    let sender = {
        let shared = shared.clone();
        std::thread::spawn(move || {
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
                    Protocol::Frame
                        .encode(&Message::Ping(&k.to_be_bytes()), &mut wire)
                        .unwrap();
                    let _ = shared[(k % n) as usize].send(&wire);
                    k += 1;
                }
            }
        })
    };
    sender.join().expect("sender");
    for reader in readers {
        let _ = reader.join();
    }
    let mut rtts = std::mem::take(&mut *rtts.lock().unwrap());
    rtts.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let pct = |p: f64| {
        rtts.get(((p / 100.0) * (rtts.len().max(1) - 1) as f64).round() as usize)
            .copied()
            .unwrap_or(f64::NAN)
    };
    Ok(json!({
        "mode": "ping", "tls": config.is_some(), "connections": shared.len(),
        "target_rate": rate, "sent": total, "answered": rtts.len(),
        "rtt_ms": {"p50": pct(50.0), "p99": pct(99.0), "p99_9": pct(99.9), "max": rtts.last()},
    }))
}
