//! The client's background thread: the connect / serve / back off loop, and
//! one connection's life with its reader thread.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, select};
use parking_lot::Mutex;
use tracing::debug;

use super::heartbeat::{Action, Heartbeat};
use super::tls::{self, TlsRead};
use super::{ClientConfig, Command, DeadReason, Event, Events, PresenceChange, ServerAddr, Token};
use crate::protocol::{Message, OwnedMessage, Reader, code};
use crate::sys::{self, SocketOptions};

/// Prompt reconnects after CLOSE 1001 in a row, without a healthy
/// connection in between, before the client backs off as after a failure.
const MAX_PROMPT_RECONNECTS: u32 = 3;

/// How long a closing client waits for the server's answering CLOSE.
const CLOSE_WAIT: Duration = Duration::from_secs(1);

/// Messages queued while disconnected, at most; older ones are dropped
/// first, and the drop is logged.
const MAX_QUEUED: usize = 10_000;

/// Messages the reader thread may decode ahead of the connection's thread;
/// past that it stops reading, and TCP pushes back on the server.
const INCOMING_CAPACITY: usize = 256;

/// What the reader thread hands over.
enum Incoming {
    Msg(OwnedMessage),
    /// End of stream.
    Eof,
    /// A read error.
    Broken(String),
    /// Bytes that do not decode.
    Invalid(String),
}

/// How one connection ended.
enum End {
    Dead(DeadReason),
    /// The application closed the client.
    Closed,
}

pub(super) fn run(config: ClientConfig, commands: Receiver<Command>, events: Events) {
    let rng = config
        .seed
        .map_or_else(fastrand::Rng::new, fastrand::Rng::with_seed);
    Manager {
        topics: Vec::new(),
        token: None,
        config,
        commands,
        events,
        rng,
        queue: VecDeque::new(),
        attempts: 0,
        prompt_streak: 0,
        next_addr: 0,
    }
    .start();
}

struct Manager {
    config: ClientConfig,
    commands: Receiver<Command>,
    events: Events,
    rng: fastrand::Rng,
    /// Encoded DATA waiting for a connection.
    queue: VecDeque<Vec<u8>>,
    /// Connection attempts since the last healthy connection.
    attempts: u32,
    /// Prompt reconnects after CLOSE 1001 since the last healthy
    /// connection.
    prompt_streak: u32,
    /// Index into `config.addrs` of the next address to try.
    next_addr: usize,
    /// Subscribed topics and the last sequence number seen in each.
    topics: Vec<(String, Option<u64>)>,
    /// The token read for the current connection.
    token: Option<String>,
}

impl Manager {
    fn start(mut self) {
        // The watched topics are subscribed to as well, each once.
        let mut topics: Vec<(String, Option<u64>)> = Vec::new();
        for t in self
            .config
            .subscriptions
            .iter()
            .chain(&self.config.presence)
        {
            if !topics.iter().any(|(name, _)| name == t) {
                topics.push((t.clone(), None));
            }
        }
        self.topics = topics;
        self.run();
    }

    /// The `SUB` command for a topic: resuming after the last message
    /// seen, if one was.
    fn sub_command(&self, topic: &str, last: Option<u64>) -> Vec<u8> {
        let mut text = match last {
            Some(last) => format!("SUB {topic} {last}"),
            None => format!("SUB {topic}"),
        };
        if self.config.presence.iter().any(|t| t == topic) {
            text.push_str(" presence");
        }
        let mut wire = Vec::new();
        let _ = self
            .config
            .protocol
            .encode(&Message::Data(text.as_bytes()), &mut wire);
        wire
    }

    /// DATA from the server: a topic's message or a subscription's answer
    /// (kept track of, and reported as such), else plain DATA.
    fn on_data(&mut self, payload: Vec<u8>) {
        if let Some(rest) = payload.strip_prefix(b"MSG ") {
            let mut parts = rest.splitn(3, |&b| b == b' ');
            let (topic, seq) = (parts.next(), parts.next());
            let body = parts.next().unwrap_or_default();
            let seq = seq
                .and_then(|s| std::str::from_utf8(s).ok())
                .and_then(|s| s.parse::<u64>().ok());
            let known = topic.and_then(|t| {
                self.topics
                    .iter_mut()
                    .find(|(name, _)| name.as_bytes() == t)
            });
            if let (Some((name, last)), Some(seq)) = (known, seq) {
                if last.is_some_and(|last| seq <= last) {
                    return; // replayed twice: already delivered
                }
                *last = Some(seq);
                let topic = name.clone();
                self.emit(Event::Message {
                    topic,
                    seq,
                    payload: body.to_vec(),
                });
                return;
            }
        }
        // `GAP <topic> <first-missing>`: messages from there on (up to the
        // next one delivered) are lost; `GAP <topic> 1` means the topic's
        // numbering started over, so its next numbers are new messages.
        if let Some(rest) = payload.strip_prefix(b"GAP ")
            && let Ok(rest) = std::str::from_utf8(rest)
            && let Some((name, first)) = rest.split_once(' ')
            && let Ok(first_missing) = first.parse::<u64>()
            && let Some((topic, last)) = self.topics.iter_mut().find(|(t, _)| t == name)
        {
            *last = Some(first_missing.saturating_sub(1));
            let topic = topic.clone();
            self.emit(Event::Gap {
                topic,
                first_missing,
            });
            return;
        }
        // A watched topic's joins and leaves.
        if let Some((topic, change)) = PresenceChange::parse(&payload)
            && self.config.presence.contains(&topic)
        {
            self.emit(Event::Presence { topic, change });
            return;
        }
        if payload.starts_with(b"OK AUTH ") && self.token.is_some() {
            return;
        }
        if let Some(rest) = payload.strip_prefix(b"OK SUB ")
            && let Ok(rest) = std::str::from_utf8(rest)
        {
            let words: Vec<&str> = rest.split(' ').collect();
            if let Some((name, last)) = self
                .topics
                .iter_mut()
                .find(|(name, _)| Some(&name.as_str()) == words.first())
            {
                let latest = words.get(1).and_then(|w| w.parse::<u64>().ok());
                match words.get(2..) {
                    Some(["gap", first]) => {
                        let first_missing: u64 = first.parse().unwrap_or(0);
                        // The replay starts after the hole. A hole below
                        // what was seen means the topic started over (the
                        // server restarted, or its Redis lost its data):
                        // its numbers are new messages, not repeats.
                        if first_missing > 0 {
                            *last = Some(first_missing - 1);
                        }
                        let topic = name.clone();
                        self.emit(Event::Gap {
                            topic,
                            first_missing,
                        });
                    }
                    // A fresh subscription starts at the topic's latest.
                    Some([]) if last.is_none() => *last = latest,
                    _ => {}
                }
                return;
            }
        }
        self.emit(Event::Data(payload));
    }

    fn emit(&self, event: Event) {
        // Nobody listening is fine: the client may be used for sending only.
        self.events.emit(event);
    }

    fn run(&mut self) {
        loop {
            let target = self.config.addrs[self.next_addr % self.config.addrs.len()].clone();
            self.next_addr += 1;
            self.attempts += 1;
            let mut told_to_wait = false;
            let mut going_away = false;
            match self.connect(&target) {
                Ok((link, addr)) => {
                    let local = link.stream.local_addr().unwrap_or(addr);
                    self.emit(Event::Connected { addr, local });
                    let opened = Instant::now();
                    match self.serve(link) {
                        End::Closed => return,
                        End::Dead(reason) => {
                            if opened.elapsed() >= self.config.healthy_after {
                                self.attempts = 0;
                                self.prompt_streak = 0;
                            }
                            // Full, or refused: retrying at once would only
                            // hammer the server.
                            told_to_wait = matches!(
                                reason,
                                DeadReason::Close {
                                    code: code::TRY_AGAIN_LATER | code::UNAUTHORIZED,
                                    ..
                                }
                            );
                            // Going away, or the token expired (a fresh one
                            // is read for the next connection): come back
                            // promptly.
                            going_away = matches!(
                                reason,
                                DeadReason::Close {
                                    code: code::GOING_AWAY | code::TOKEN_EXPIRED,
                                    ..
                                }
                            );
                            // The server is leaving (shutdown, drain,
                            // rebalancing), not failing: start over, at
                            // once. But a server that says so on every
                            // connection is failing after all: after a few
                            // prompt reconnects in a row without a healthy
                            // connection, back off as usual.
                            going_away &= self.prompt_streak < MAX_PROMPT_RECONNECTS;
                            if going_away {
                                self.prompt_streak += 1;
                                self.attempts = 0;
                            }
                            self.emit(Event::Dead { reason });
                        }
                    }
                }
                Err(e) => self.emit(Event::ConnectFailed {
                    addr: target,
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
            self.emit(Event::Reconnecting { attempt: k, delay });
            if !self.pause(delay) {
                return;
            }
        }
    }

    /// Connects to `target`: resolves it (again, if it is a name) and tries
    /// its addresses in turn; returns the connection and the address it
    /// reached. With TLS, the handshake is part of connecting.
    fn connect(&mut self, target: &ServerAddr) -> io::Result<(Link, SocketAddr)> {
        // Read again for every connection, so that a refreshed token is used.
        self.token = match &self.config.token {
            None => None,
            Some(Token::Fixed(token)) => Some(token.clone()),
            Some(Token::File(path)) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    io::Error::new(
                        e.kind(),
                        format!("cannot read the token file {}: {e}", path.display()),
                    )
                })?;
                Some(text.trim().to_owned())
            }
        };
        let mut failed = None;
        for addr in self.config.resolver.resolve(target)? {
            let connected = self.connect_to(addr).and_then(|mut stream| {
                let session = match &self.config.tls {
                    Some(tls) => Some(tls.handshake(
                        &mut stream,
                        &target.host(),
                        self.config.connect_timeout,
                    )?),
                    None => None,
                };
                Ok(Link { stream, session })
            });
            match connected {
                Ok(link) => return Ok((link, addr)),
                Err(e) => {
                    debug!("cannot connect to {addr} ({target}): {e}");
                    failed = Some(e);
                }
            }
        }
        Err(failed.expect("resolve returns at least one address"))
    }

    fn connect_to(&self, addr: SocketAddr) -> io::Result<TcpStream> {
        let stream = TcpStream::connect_timeout(&addr, self.config.connect_timeout)?;
        let options = SocketOptions {
            keepalive: self.config.keepalive,
            user_timeout: None,
            // A server that stops reading must not block the heartbeat.
            write_timeout: Some(self.config.heartbeat_timeout),
        };
        sys::configure(socket2::SockRef::from(&stream), &options)?;
        Ok(stream)
    }

    /// Waits `delay`, queueing DATA meanwhile. False if told to close.
    fn pause(&mut self, delay: Duration) -> bool {
        let until = Instant::now() + delay;
        loop {
            match self.commands.recv_deadline(until) {
                Ok(Command::Send(payload)) => self.enqueue(payload),
                Ok(Command::Subscribe(topic)) => {
                    self.add_topic(topic);
                }
                Ok(Command::Close) | Err(crossbeam_channel::RecvTimeoutError::Disconnected) => {
                    return false;
                }
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => return true,
            }
        }
    }

    /// Remembers a new topic; its `SUB` to send now, if it is new.
    fn add_topic(&mut self, topic: String) -> Option<Vec<u8>> {
        if self.topics.iter().any(|(name, _)| *name == topic) {
            return None;
        }
        let wire = self.sub_command(&topic, None);
        self.topics.push((topic, None));
        Some(wire)
    }

    fn enqueue(&mut self, payload: Vec<u8>) {
        if self.queue.len() >= MAX_QUEUED {
            self.queue.pop_front();
            debug!("send queue full while disconnected: dropped the oldest message");
        }
        self.queue.push_back(payload);
    }

    /// Serves one connection until it ends.
    fn serve(&mut self, link: Link) -> End {
        let Link { stream, session } = link;
        let reader = match stream.try_clone() {
            Ok(clone) => clone,
            Err(_) => return End::Dead(DeadReason::Reset),
        };
        let (incoming_tx, incoming) = crossbeam_channel::bounded(INCOMING_CAPACITY);
        let decoder = Reader::new(self.config.protocol, self.config.max_frame);
        let reading = session.clone();
        let reader = std::thread::Builder::new()
            .name("wheel-client-reader".into())
            .spawn(move || match reading {
                Some(session) => read_loop(TlsRead::new(reader, session), decoder, incoming_tx),
                None => read_loop(reader, decoder, incoming_tx),
            });
        let Ok(reader) = reader else {
            return End::Dead(DeadReason::Reset);
        };
        let mut conn = Conn {
            stream,
            session,
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
                    Incoming::Msg(OwnedMessage::Close(..))
                        | Incoming::Eof
                        | Incoming::Broken(_)
                        | Incoming::Invalid(_)
                ) {
                    break;
                }
            }
        }
        // Wakes the reader thread, which then ends; dropping the channel
        // frees it if it waits for room there.
        let _ = conn.stream.shutdown(Shutdown::Both);
        drop(incoming);
        let _ = reader.join();
        end
    }

    fn converse(&mut self, conn: &mut Conn, incoming: &Receiver<Incoming>) -> End {
        if let Some(token) = &self.token {
            let auth = [&b"AUTH "[..], token.as_bytes()].concat();
            let mut wire = Vec::new();
            match self
                .config
                .protocol
                .encode(&Message::Data(&auth), &mut wire)
            {
                Ok(()) => conn.send_wire(&wire),
                Err(e) => debug!("token not sent: {e}"),
            }
        }
        for (topic, last) in &self.topics {
            conn.send_wire(&self.sub_command(topic, *last));
        }
        while let Some(wire) = self.queue.pop_front() {
            conn.send_wire(&wire);
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
                        Incoming::Msg(OwnedMessage::Data(payload)) => {
                            heartbeat.received(now);
                            self.on_data(payload);
                        }
                        Incoming::Msg(OwnedMessage::Ping(payload)) => {
                            heartbeat.received(now);
                            conn.send(Message::Pong(&payload));
                        }
                        Incoming::Msg(OwnedMessage::Pong(payload)) => {
                            heartbeat.received(now);
                            let seq = std::str::from_utf8(&payload).ok().and_then(|s| s.parse().ok());
                            if let Some(seq) = seq
                                && let Some(rtt) = heartbeat.pong(seq, now)
                            {
                                self.emit(Event::Pong { seq, rtt });
                            }
                        }
                        Incoming::Msg(OwnedMessage::Close(code::GOING_AWAY, reason)) => {
                            return self.drain(conn, incoming, reason);
                        }
                        Incoming::Msg(OwnedMessage::Close(code, reason)) => {
                            return End::Dead(DeadReason::Close { code, reason });
                        }
                        Incoming::Eof => return End::Dead(DeadReason::Eof),
                        Incoming::Broken(error) => {
                            debug!("connection broken: {error}");
                            return End::Dead(DeadReason::Reset);
                        }
                        Incoming::Invalid(error) => return End::Dead(DeadReason::Protocol(error)),
                    }
                }
                recv(self.commands) -> cmd => match cmd {
                    Ok(Command::Send(wire)) => conn.send_wire(&wire),
                    Ok(Command::Subscribe(topic)) => {
                        if let Some(wire) = self.add_topic(topic) {
                            conn.send_wire(&wire);
                        }
                    }
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
                    Ok(Incoming::Msg(OwnedMessage::Data(payload))) => self.on_data(payload),
                    Ok(Incoming::Msg(OwnedMessage::Ping(_) | OwnedMessage::Pong(_))) => {}
                    Ok(Incoming::Msg(OwnedMessage::Close(..))
                        | Incoming::Eof
                        | Incoming::Broken(_)
                        | Incoming::Invalid(_))
                    | Err(_) => break,
                },
                recv(self.commands) -> cmd => match cmd {
                    Ok(Command::Send(payload)) => self.enqueue(payload),
                    Ok(Command::Subscribe(topic)) => {
                        self.add_topic(topic);
                    }
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

/// A connected socket, and its TLS session when it speaks TLS.
struct Link {
    stream: TcpStream,
    session: Option<Arc<Mutex<tls::Session>>>,
}

/// The write side of a connection.
struct Conn {
    stream: TcpStream,
    /// With TLS: the session, shared with the reader thread.
    session: Option<Arc<Mutex<tls::Session>>>,
    protocol: crate::protocol::Protocol,
}

impl Conn {
    /// Encodes and writes a control message (PING, PONG, CLOSE) whose
    /// content the client made or took from a message of the same protocol.
    fn send(&mut self, msg: Message<'_>) {
        let mut wire = Vec::new();
        match self.protocol.encode(&msg, &mut wire) {
            Ok(()) => self.send_wire(&wire),
            Err(e) => debug!("not sent: {e}"),
        }
    }

    /// Writes an encoded message. A failed write is only logged: the
    /// connection's fate is decided by what reads return (and by the
    /// heartbeat), because a write can fail for a connection that still
    /// delivers, and succeed into one that is long dead.
    fn send_wire(&mut self, wire: &[u8]) {
        let written = match &self.session {
            Some(session) => tls::write(session, &mut self.stream, wire),
            None => self.stream.write_all(wire),
        };
        if let Err(e) = written {
            debug!("write failed: {e}");
        }
    }
}

/// The reader thread: decodes until end of stream or error.
fn read_loop(mut stream: impl io::Read, mut reader: Reader, out: Sender<Incoming>) {
    loop {
        let incoming = match reader.read_message(&mut stream) {
            Ok(Some(msg)) => Incoming::Msg(msg),
            // A stream ending inside a message ended all the same.
            Ok(None) => Incoming::Eof,
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Incoming::Eof,
            Err(e) if e.kind() == io::ErrorKind::InvalidData => Incoming::Invalid(e.to_string()),
            Err(e) => Incoming::Broken(e.to_string()),
        };
        let last = !matches!(incoming, Incoming::Msg(_));
        if out.send(incoming).is_err() || last {
            return;
        }
    }
}
