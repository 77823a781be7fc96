//! The client's background thread: the connect / serve / back off loop, and
//! one connection's life with its reader thread.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, select};
use tracing::debug;

use super::heartbeat::{Action, Heartbeat};
use super::{ClientConfig, Command, DeadReason, Event};
use crate::protocol::{Decoder, Message, code};
use crate::sys::{self, SocketOptions};

/// How long a closing client waits for the server's answering CLOSE.
const CLOSE_WAIT: Duration = Duration::from_secs(1);

/// Messages queued while disconnected, at most; older ones are dropped
/// first, and the drop is logged.
const MAX_QUEUED: usize = 10_000;

/// What the reader thread hands over.
enum Incoming {
    Data(Vec<u8>),
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    Close(u16, String),
    /// End of stream.
    Eof,
    /// A read error, or bytes that do not decode.
    Broken(String),
}

/// How one connection ended.
enum End {
    Dead(DeadReason),
    /// The application closed the client.
    Closed,
}

pub(super) fn run(config: ClientConfig, commands: Receiver<Command>, events: Sender<Event>) {
    let rng = config
        .seed
        .map_or_else(fastrand::Rng::new, fastrand::Rng::with_seed);
    Manager {
        config,
        commands,
        events,
        rng,
        queue: VecDeque::new(),
        attempts: 0,
        next_addr: 0,
    }
    .run();
}

struct Manager {
    config: ClientConfig,
    commands: Receiver<Command>,
    events: Sender<Event>,
    rng: fastrand::Rng,
    /// DATA waiting for a connection.
    queue: VecDeque<Vec<u8>>,
    /// Connection attempts since the last healthy connection.
    attempts: u32,
    /// Index into `config.addrs` of the next address to try.
    next_addr: usize,
}

impl Manager {
    fn emit(&self, event: Event) {
        // Nobody listening is fine: the client may be used for sending only.
        let _ = self.events.send(event);
    }

    fn run(&mut self) {
        loop {
            let addr = self.config.addrs[self.next_addr % self.config.addrs.len()];
            self.next_addr += 1;
            self.attempts += 1;
            let mut told_to_wait = false;
            let mut going_away = false;
            match self.connect(addr) {
                Ok(stream) => {
                    let local = stream.local_addr().unwrap_or(addr);
                    self.emit(Event::Connected { addr, local });
                    let opened = Instant::now();
                    match self.serve(stream) {
                        End::Closed => return,
                        End::Dead(reason) => {
                            if opened.elapsed() >= self.config.healthy_after {
                                self.attempts = 0;
                            }
                            told_to_wait = matches!(
                                reason,
                                DeadReason::Close {
                                    code: code::TRY_AGAIN_LATER,
                                    ..
                                }
                            );
                            going_away = matches!(
                                reason,
                                DeadReason::Close {
                                    code: code::GOING_AWAY,
                                    ..
                                }
                            );
                            if going_away {
                                // The server is leaving (shutdown, drain,
                                // rebalancing), not failing: start over.
                                self.attempts = 0;
                            }
                            self.emit(Event::Dead { reason });
                        }
                    }
                }
                Err(e) => self.emit(Event::ConnectFailed {
                    addr,
                    error: e.to_string(),
                }),
            }
            if self
                .config
                .max_attempts
                .is_some_and(|max| self.attempts >= max)
            {
                self.emit(Event::GaveUp {
                    attempts: self.attempts,
                });
                return;
            }
            let k = self.attempts.max(1);
            let delay = if told_to_wait {
                self.config.backoff.delay_at_least_half(k, &mut self.rng)
            } else if going_away {
                self.config.backoff.prompt_delay(&mut self.rng)
            } else {
                self.config.backoff.delay(k, &mut self.rng)
            };
            self.emit(Event::Reconnecting {
                attempt: self.attempts + 1,
                delay,
            });
            if !self.pause(delay) {
                return;
            }
        }
    }

    fn connect(&self, addr: SocketAddr) -> io::Result<TcpStream> {
        let stream = TcpStream::connect_timeout(&addr, self.config.connect_timeout)?;
        let options = SocketOptions {
            keepalive: self.config.keepalive,
            user_timeout: None,
            // A server that stops reading must not block the heartbeat.
            write_timeout: Some(self.config.heartbeat_timeout),
        };
        sys::configure(&stream, &options)?;
        Ok(stream)
    }

    /// Waits `delay`, queueing DATA meanwhile. False if told to close.
    fn pause(&mut self, delay: Duration) -> bool {
        let until = Instant::now() + delay;
        loop {
            match self.commands.recv_deadline(until) {
                Ok(Command::Send(payload)) => self.enqueue(payload),
                Ok(Command::Close) | Err(crossbeam_channel::RecvTimeoutError::Disconnected) => {
                    return false;
                }
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => return true,
            }
        }
    }

    fn enqueue(&mut self, payload: Vec<u8>) {
        if self.queue.len() >= MAX_QUEUED {
            self.queue.pop_front();
            debug!("send queue full while disconnected: dropped the oldest message");
        }
        self.queue.push_back(payload);
    }

    /// Serves one connection until it ends.
    fn serve(&mut self, stream: TcpStream) -> End {
        let reader = match stream.try_clone() {
            Ok(clone) => clone,
            Err(_) => return End::Dead(DeadReason::Reset),
        };
        let (incoming_tx, incoming) = crossbeam_channel::unbounded();
        let decoder = Decoder::new(self.config.protocol, self.config.max_frame);
        let reader = std::thread::Builder::new()
            .name("wheel-client-reader".into())
            .spawn(move || read_loop(reader, decoder, incoming_tx));
        let Ok(reader) = reader else {
            return End::Dead(DeadReason::Reset);
        };
        let mut conn = Conn {
            stream,
            protocol: self.config.protocol,
        };
        let end = self.converse(&mut conn, &incoming);
        if matches!(end, End::Closed) {
            conn.send(Message::Close {
                code: code::NORMAL,
                reason: "client closing",
            });
            // The server answers CLOSE 1000 and hangs up; wait for that.
            let until = Instant::now() + CLOSE_WAIT;
            while let Ok(msg) = incoming.recv_deadline(until) {
                if matches!(
                    msg,
                    Incoming::Close(..) | Incoming::Eof | Incoming::Broken(_)
                ) {
                    break;
                }
            }
        }
        // Wakes the reader thread, which then ends.
        let _ = conn.stream.shutdown(Shutdown::Both);
        let _ = reader.join();
        end
    }

    fn converse(&mut self, conn: &mut Conn, incoming: &Receiver<Incoming>) -> End {
        while let Some(payload) = self.queue.pop_front() {
            conn.send(Message::Data(&payload));
        }
        let mut heartbeat = Heartbeat::new(
            self.config.heartbeat_interval,
            self.config.heartbeat_timeout,
            self.config.heartbeat_retries,
            Instant::now(),
        );
        loop {
            let wake = match heartbeat.poll(Instant::now()) {
                Action::Ping(seq) => {
                    conn.send(Message::Ping(seq.to_string().as_bytes()));
                    self.emit(Event::HeartbeatSent { seq });
                    continue;
                }
                Action::Dead => return End::Dead(DeadReason::HeartbeatTimeout),
                Action::WaitUntil(at) => at,
            };
            select! {
                recv(incoming) -> msg => {
                    let Ok(msg) = msg else {
                        return End::Dead(DeadReason::Reset);
                    };
                    let now = Instant::now();
                    match msg {
                        Incoming::Data(payload) => {
                            heartbeat.received(now);
                            self.emit(Event::Data(payload));
                        }
                        Incoming::Ping(payload) => {
                            heartbeat.received(now);
                            conn.send(Message::Pong(&payload));
                        }
                        Incoming::Pong(payload) => {
                            heartbeat.received(now);
                            let seq = std::str::from_utf8(&payload).ok().and_then(|s| s.parse().ok());
                            if let Some(seq) = seq
                                && let Some(rtt) = heartbeat.pong(seq, now)
                            {
                                self.emit(Event::Pong { seq, rtt });
                            }
                        }
                        Incoming::Close(code::GOING_AWAY, reason) => {
                            return self.drain(conn, incoming, reason);
                        }
                        Incoming::Close(code, reason) => return End::Dead(DeadReason::Close { code, reason }),
                        Incoming::Eof => return End::Dead(DeadReason::Eof),
                        Incoming::Broken(error) => {
                            debug!("connection broken: {error}");
                            return End::Dead(DeadReason::Reset);
                        }
                    }
                }
                recv(self.commands) -> cmd => match cmd {
                    Ok(Command::Send(payload)) => conn.send(Message::Data(&payload)),
                    Ok(Command::Close) | Err(_) => return End::Closed,
                },
                recv(crossbeam_channel::at(wake)) -> _ => {}
            }
        }
    }

    /// The server sent CLOSE 1001 and keeps answering until we hang up:
    /// stop sending (new DATA waits for the next connection), half-close,
    /// and read the answers to what was already sent until the server's
    /// end of stream, for at most the heartbeat timeout.
    fn drain(&mut self, conn: &mut Conn, incoming: &Receiver<Incoming>, reason: String) -> End {
        let _ = conn.stream.shutdown(Shutdown::Write);
        let until = Instant::now() + self.config.heartbeat_timeout;
        let timeout = crossbeam_channel::at(until);
        loop {
            select! {
                recv(incoming) -> msg => match msg {
                    Ok(Incoming::Data(payload)) => self.emit(Event::Data(payload)),
                    Ok(Incoming::Ping(_) | Incoming::Pong(_)) => {}
                    Ok(Incoming::Close(..) | Incoming::Eof | Incoming::Broken(_)) | Err(_) => break,
                },
                recv(self.commands) -> cmd => match cmd {
                    Ok(Command::Send(payload)) => self.enqueue(payload),
                    Ok(Command::Close) | Err(_) => return End::Closed,
                },
                recv(timeout) -> _ => {
                    debug!("server did not end the drain within the heartbeat timeout");
                    break;
                }
            }
        }
        End::Dead(DeadReason::Close {
            code: code::GOING_AWAY,
            reason,
        })
    }
}

/// The write side of a connection.
struct Conn {
    stream: TcpStream,
    protocol: crate::protocol::Protocol,
}

impl Conn {
    /// Writes a message. A failed write is only logged: the connection's
    /// fate is decided by what reads return (and by the heartbeat), because
    /// a write can fail for a connection that still delivers, and succeed
    /// into one that is long dead.
    fn send(&mut self, msg: Message<'_>) {
        let mut wire = Vec::new();
        self.protocol.encode(&msg, &mut wire);
        if let Err(e) = self.stream.write_all(&wire) {
            debug!("write failed: {e}");
        }
    }
}

/// The reader thread: decodes until end of stream or error.
fn read_loop(mut stream: TcpStream, mut decoder: Decoder, out: Sender<Incoming>) {
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    let mut chunk = vec![0u8; 16 * 1024];
    loop {
        let mut used = 0;
        loop {
            let msg = match decoder.decode(&buf[used..]) {
                Ok(Some((msg, n))) => {
                    used += n;
                    match msg {
                        Message::Data(p) => Incoming::Data(p.to_vec()),
                        Message::Ping(p) => Incoming::Ping(p.to_vec()),
                        Message::Pong(p) => Incoming::Pong(p.to_vec()),
                        Message::Close { code, reason } => Incoming::Close(code, reason.to_owned()),
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    let _ = out.send(Incoming::Broken(format!("server sent invalid data: {e}")));
                    return;
                }
            };
            if out.send(msg).is_err() {
                return;
            }
        }
        buf.drain(..used);
        match stream.read(&mut chunk) {
            Ok(0) => {
                let _ = out.send(Incoming::Eof);
                return;
            }
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                let _ = out.send(Incoming::Broken(e.to_string()));
                return;
            }
        }
    }
}
