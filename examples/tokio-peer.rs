//! The benchmark peer: an idiomatic tokio server of the same frame protocol,
//! to measure what a thread per connection costs against one task per
//! connection (BENCHMARKS.md, "Thread per connection against tokio";
//! `scripts/compare.sh` runs both with the same load generator).
//!
//! ```text
//! cargo run --release --example tokio-peer -- --listen 127.0.0.1:5006 --idle-timeout 60s
//! ```
//!
//! Behaviour follows `wheel-server`'s echo service: DATA is echoed, PING is
//! answered with PONG, a peer's CLOSE ends the connection, and a connection
//! without a complete message for `--idle-timeout` gets CLOSE 4000 `idle
//! timeout`. Each connection is one task with one `Sleep` reset on every
//! complete message; it holds no receive buffer while nothing is pending.
//! It is a yardstick, not a server to deploy: no limits beyond the frame
//! size, no metrics, no drain.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::{Instant, sleep_until};
use wheel_server::parse_duration;
use wheel_server::protocol::{Decoder, Message, Protocol, code};

#[derive(Parser)]
#[command(about = "An idiomatic tokio server of the frame protocol, for comparison")]
struct Args {
    #[arg(long, default_value = "127.0.0.1:5006")]
    listen: SocketAddr,
    /// Close a connection silent for this long (CLOSE 4000).
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    idle_timeout: Duration,
    /// Largest frame accepted.
    #[arg(long, default_value_t = 1 << 20)]
    max_frame: usize,
    /// Runtime worker threads (default: one per core).
    #[arg(long)]
    threads: Option<usize>,
}

fn main() -> io::Result<()> {
    let args = Args::parse();
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = args.threads {
        rt.worker_threads(n);
    }
    rt.enable_all().build()?.block_on(serve(args))
}

async fn serve(args: Args) -> io::Result<()> {
    // The same backlog as wheel-server's (`TcpListener::bind` would ask for
    // 1,024, and a reconnect storm would then measure SYN retransmits).
    let socket = match args.listen {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(args.listen)?;
    let listener = socket.listen(4096)?;
    eprintln!("tokio-peer listening on {}", listener.local_addr()?);
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of descriptors, typically: back off briefly.
                eprintln!("tokio-peer: accept: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let (idle, max_frame) = (args.idle_timeout, args.max_frame);
        tokio::spawn(async move {
            let _ = connection(stream, idle, max_frame).await;
        });
    }
}

/// Serves one connection until the peer closes, errs or idles out.
async fn connection(mut stream: TcpStream, idle: Duration, max_frame: usize) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let mut decoder = Decoder::new(Protocol::Frame, max_frame);
    // Allocated only while bytes are pending.
    let mut input: Vec<u8> = Vec::new();
    let mut output: Vec<u8> = Vec::new();
    let deadline = sleep_until(Instant::now() + idle);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            ready = stream.readable() => {
                ready?;
                if input.capacity() - input.len() < 1024 {
                    input.reserve(4096);
                }
                match stream.try_read_buf(&mut input) {
                    Ok(0) => return Ok(()),
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    Err(e) => return Err(e),
                }
                let mut used = 0;
                let mut done = false;
                let mut answered_any = false;
                loop {
                    let (msg, n) = match decoder.decode(&input[used..]) {
                        Ok(Some(decoded)) => decoded,
                        Ok(None) => break,
                        Err(e) => {
                            let close = Message::Close { code: e.close_code(), reason: "protocol error" };
                            let _ = Protocol::Frame.encode(&close, &mut output);
                            done = true;
                            break;
                        }
                    };
                    used += n;
                    answered_any = true;
                    match msg {
                        Message::Data(p) => { let _ = Protocol::Frame.encode(&Message::Data(p), &mut output); }
                        Message::Ping(p) => { let _ = Protocol::Frame.encode(&Message::Pong(p), &mut output); }
                        Message::Pong(_) => {}
                        Message::Close { .. } => { done = true; break; }
                    }
                }
                input.drain(..used);
                if input.is_empty() {
                    input = Vec::new();
                }
                if answered_any {
                    deadline.as_mut().reset(Instant::now() + idle);
                }
                if !output.is_empty() {
                    stream.write_all(&output).await?;
                    output = Vec::new();
                }
                if done {
                    return Ok(());
                }
            }
            () = &mut deadline => {
                let close = Message::Close { code: code::IDLE_TIMEOUT, reason: "idle timeout" };
                Protocol::Frame.encode(&close, &mut output).expect("a short CLOSE encodes");
                stream.write_all(&output).await?;
                return stream.shutdown().await;
            }
        }
    }
}
