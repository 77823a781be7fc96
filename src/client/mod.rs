//! A heartbeat client that detects a dead server and reconnects.
//!
//! [`Client::start`] runs the connection on a background thread:
//!
//! * connects with a timeout, with `TCP_NODELAY` and TCP keepalive;
//! * sends PING when nothing has been received for
//!   [`heartbeat_interval`](ClientConfig::heartbeat_interval), and declares
//!   the server dead after [`heartbeat_retries`](ClientConfig::heartbeat_retries)
//!   unanswered PINGs, each given
//!   [`heartbeat_timeout`](ClientConfig::heartbeat_timeout): a silent dead
//!   server is found `interval + timeout * retries` after it last spoke;
//! * ends the connection at once when a read returns end-of-stream, a reset
//!   or a CLOSE (the connection is judged by what reads return, never by
//!   whether a write succeeded: a write into a dead connection usually
//!   succeeds);
//! * answers the server's PINGs;
//! * reconnects with capped exponential [`Backoff`] and full jitter, resets
//!   the backoff once a connection stayed up for
//!   [`healthy_after`](ClientConfig::healthy_after), and, when the server
//!   says it is full (CLOSE 1013), waits at least half the current window
//!   instead of retrying at once. When the server says it is going away
//!   (CLOSE 1001: shutdown, maximum connection age) the client drains the
//!   connection (stops sending, half-closes, reads the answers to what it
//!   sent until the server's end of stream) and comes back promptly, after
//!   a jittered delay of at most a quarter of the initial backoff, trying
//!   the next address first. Only three times in a row, though, unless a
//!   connection in between was healthy: a server that sends CLOSE 1001 on
//!   every connection gets the normal backoff after that.
//!
//! Everything that happens is reported as an [`Event`] on a bounded
//! crossbeam channel, DATA included. A client used only for sending need
//! not read it: when [`event_capacity`](ClientConfig::event_capacity)
//! events are waiting, the oldest is dropped for each new one and counted
//! ([`Client::dropped_events`]), so memory stays flat however long the
//! client runs.
//!
//! # Examples
//!
//! ```
//! use std::time::Duration;
//! use wheel_server::client::{Client, ClientConfig, Event};
//! use wheel_server::{Config, Server};
//!
//! let mut config = Config::default();
//! config.listen = "127.0.0.1:0".parse().unwrap();
//! let server = Server::start(config)?;
//! let client = Client::start(ClientConfig::new(server.local_addr()))?;
//! client.send(b"hello").unwrap();
//! let echoed = client.events().iter().find_map(|event| match event {
//!     Event::Data(payload) => Some(payload),
//!     _ => None,
//! });
//! assert_eq!(echoed.as_deref(), Some(&b"hello"[..]));
//! client.close();
//! # Ok::<(), std::io::Error>(())
//! ```

mod addr;

mod heartbeat;
mod session;
#[cfg(feature = "tls")]
mod tls;
#[cfg(not(feature = "tls"))]
#[path = "tls_off.rs"]
mod tls;

pub use tls::TlsClient;

pub use crate::backoff::Backoff;
pub use addr::{Resolver, ServerAddr};

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};

use crate::protocol::{EncodeError, Message, Protocol};
use crate::sys::Keepalive;

/// How a [`Client`] connects, heartbeats and reconnects.
#[derive(Clone, Debug, PartialEq)]
pub struct ClientConfig {
    /// Servers; each connection attempt takes the next one in turn. Host
    /// names are resolved again at every attempt.
    pub addrs: Vec<ServerAddr>,
    /// Resolves host names: the system resolver by default.
    pub resolver: Resolver,
    /// Wire protocol, as the server speaks it.
    pub protocol: Protocol,
    /// Give up a connection attempt after this long.
    pub connect_timeout: Duration,
    /// PING when nothing has been received for this long.
    pub heartbeat_interval: Duration,
    /// How long to wait for each PING's PONG.
    pub heartbeat_timeout: Duration,
    /// Consecutive unanswered PINGs before the server is declared dead.
    pub heartbeat_retries: u32,
    /// Reconnect delays.
    pub backoff: Backoff,
    /// Give up after this many connection attempts in a row without a
    /// healthy connection; `None` never gives up.
    pub max_attempts: Option<u32>,
    /// A connection that stayed up this long resets the backoff.
    pub healthy_after: Duration,
    /// TCP keepalive on the client socket; `None` leaves it off.
    pub keepalive: Option<Keepalive>,
    /// Largest message accepted from the server.
    pub max_frame: usize,
    /// Seed of the jitter's random generator; `None` seeds from the OS.
    /// Set it to make a test's delays reproducible.
    pub seed: Option<u64>,
    /// Events kept waiting for the application at most; past that the
    /// oldest is dropped (and counted) for each new one.
    pub event_capacity: usize,
    /// Topics to subscribe to on a `--service pubsub` server. After every
    /// reconnect the client subscribes again with `SUB <topic> <since>`,
    /// `since` being the last sequence number it saw, so that what was
    /// published meanwhile (within the server's history) is replayed.
    pub subscriptions: Vec<String>,
    /// Of [`subscriptions`](ClientConfig::subscriptions), the topics whose
    /// presence to watch (`SUB <topic> presence`): others joining and
    /// leaving come as [`Event::Presence`]. A topic listed here and not in
    /// `subscriptions` is subscribed to as well.
    pub presence: Vec<String>,
    /// Credentials for a server that requires authentication: sent as
    /// `AUTH <token>` first on every connection. A CLOSE 4001 (refused)
    /// makes the client wait at least half its backoff window; a CLOSE 4002
    /// (expired) makes it reconnect at once, with the token read again.
    pub token: Option<Token>,
    /// Speak TLS (to a `tls://`, `tls+line://` server): the certificates
    /// trusted and the name checked. One value for every connection, so
    /// that reconnects resume their TLS session. A failed handshake is a
    /// failed connection attempt (`ConnectFailed`, with the reason), backed
    /// off like any other.
    pub tls: Option<TlsClient>,
}

/// Where the client's token comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Token {
    /// This token, for every connection.
    Fixed(String),
    /// The contents of this file (trimmed), read again before every
    /// connection, so that a token refreshed on disk is used.
    File(std::path::PathBuf),
}

impl ClientConfig {
    /// The defaults for one server address: heartbeat after 25 s of silence,
    /// 5 s per PING, 3 tries; backoff 1 s doubling to 30 s; never give up.
    pub fn new(addr: impl Into<ServerAddr>) -> ClientConfig {
        ClientConfig {
            addrs: vec![addr.into()],
            resolver: Resolver::system(),
            protocol: Protocol::Frame,
            connect_timeout: Duration::from_secs(5),
            heartbeat_interval: Duration::from_secs(25),
            heartbeat_timeout: Duration::from_secs(5),
            heartbeat_retries: 3,
            backoff: Backoff::default(),
            max_attempts: None,
            healthy_after: Duration::from_secs(30),
            keepalive: Some(Keepalive::default()),
            max_frame: 1 << 20,
            seed: None,
            event_capacity: 1024,
            subscriptions: Vec::new(),
            presence: Vec::new(),
            token: None,
            tls: None,
        }
    }

    fn validate(&self) -> io::Result<()> {
        let invalid = |msg: &str| Err(io::Error::new(io::ErrorKind::InvalidInput, msg.to_owned()));
        if self.addrs.is_empty() {
            return invalid("at least one server address is needed");
        }
        if self.heartbeat_interval.is_zero()
            || self.heartbeat_timeout.is_zero()
            || self.connect_timeout.is_zero()
        {
            return invalid(
                "heartbeat interval, heartbeat timeout and connect timeout must be longer than zero",
            );
        }
        if self.heartbeat_retries == 0 {
            return invalid("heartbeat retries must be at least 1");
        }
        if !(self.backoff.multiplier >= 1.0 && self.backoff.multiplier.is_finite()) {
            return invalid("backoff multiplier must be a finite number >= 1");
        }
        if self.backoff.initial > self.backoff.max {
            return invalid("backoff initial delay must not exceed the maximum");
        }
        if self.max_attempts == Some(0) {
            return invalid("max attempts must be at least 1");
        }
        if self.event_capacity == 0 {
            return invalid("event capacity must be at least 1");
        }
        Ok(())
    }
}

/// Why a connection ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeadReason {
    /// PINGs went unanswered: the server or the path to it is gone.
    HeartbeatTimeout,
    /// The server closed the connection without a CLOSE message.
    Eof,
    /// The connection was reset, or another read error.
    Reset,
    /// The server sent bytes that do not decode (what was wrong).
    Protocol(String),
    /// The server sent CLOSE. After CLOSE 1001 (going away) the client
    /// first drains: it stops sending, half-closes, and reports the answers
    /// still on their way as [`Event::Data`] before this; DATA sent
    /// meanwhile waits for the next connection.
    Close {
        /// Its code (1001: shutting down, 1013: full, 4000: idle timeout...).
        code: u16,
        /// Its reason.
        reason: String,
    },
}

impl DeadReason {
    /// `heartbeat_timeout`, `eof`, `reset`, `protocol` or `close`.
    pub fn label(&self) -> &'static str {
        match self {
            DeadReason::HeartbeatTimeout => "heartbeat_timeout",
            DeadReason::Eof => "eof",
            DeadReason::Reset => "reset",
            DeadReason::Protocol(_) => "protocol",
            DeadReason::Close { .. } => "close",
        }
    }
}

impl fmt::Display for DeadReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeadReason::HeartbeatTimeout => f.write_str("no answer to heartbeats"),
            DeadReason::Eof => f.write_str("server closed the connection"),
            DeadReason::Reset => f.write_str("connection reset"),
            DeadReason::Protocol(why) => write!(f, "server sent invalid data: {why}"),
            DeadReason::Close { code, reason } => write!(f, "server sent close {code} {reason}"),
        }
    }
}

/// What happened, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// Connected to `addr`.
    Connected {
        /// The server's address.
        addr: SocketAddr,
        /// The connection's local address: what the server (told by the
        /// PROXY protocol, behind a balancer) logs as the peer.
        local: SocketAddr,
    },
    /// A connection attempt failed (or its host name did not resolve).
    ConnectFailed {
        /// The server tried, as configured.
        addr: ServerAddr,
        /// What went wrong.
        error: String,
    },
    /// A heartbeat PING was sent.
    HeartbeatSent {
        /// Its sequence number (its payload, in decimal).
        seq: u64,
    },
    /// The PONG for a heartbeat arrived.
    Pong {
        /// The PING's sequence number.
        seq: u64,
        /// Round-trip time.
        rtt: Duration,
    },
    /// DATA from the server.
    Data(Vec<u8>),
    /// A message published to a subscribed topic (`MSG <topic> <seq>
    /// <payload>`), delivered once: a replayed duplicate is skipped.
    Message {
        /// The topic.
        topic: String,
        /// Its sequence number in the topic.
        seq: u64,
        /// The payload.
        payload: Vec<u8>,
    },
    /// Messages were lost: a resumed subscription could not be filled
    /// (published while the client was away and no longer in the server's
    /// history), or the server said so on a live one (`GAP <topic> <n>`).
    /// A `first_missing` at or below a number already delivered means the
    /// topic started over (the server restarted, or its Redis lost its
    /// data): the messages that follow carry the new numbers and are
    /// delivered.
    Gap {
        /// The topic.
        topic: String,
        /// The first sequence number lost.
        first_missing: u64,
    },
    /// Someone joined or left a topic whose presence is watched
    /// ([`ClientConfig::presence`]).
    Presence {
        /// The topic.
        topic: String,
        /// What happened.
        change: PresenceChange,
    },
    /// The connection ended.
    Dead {
        /// Why.
        reason: DeadReason,
    },
    /// Waiting `delay` before retry number `attempt`, counted since the
    /// last healthy connection (or the last prompt reconnect after CLOSE
    /// 1001): the first retry is 1. Its delay is drawn within
    /// [`Backoff::cap`]`(attempt)`.
    Reconnecting {
        /// The retry about to be made.
        attempt: u32,
        /// How long until then.
        delay: Duration,
    },
    /// [`ClientConfig::max_attempts`] attempts failed; the client stopped.
    GaveUp {
        /// Attempts made.
        attempts: u32,
    },
}

/// A change in a watched topic's presence (docs/PROTOCOL.md, "Presence").
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PresenceChange {
    /// A connection subscribed (`JOIN`).
    Join {
        /// Its id on the server.
        conn: String,
        /// Its user (the authenticated subject), if any.
        user: Option<String>,
    },
    /// A connection left (`LEAVE`), and why: `unsubscribed`, `closed`,
    /// `idle_timeout`, `tcp_timeout`, `slow_consumer`, `drained`, ...
    Leave {
        /// Its id on the server.
        conn: String,
        /// Its user, if any.
        user: Option<String>,
        /// Why it left.
        reason: String,
    },
    /// A user's first connection joined (`ONLINE`).
    Online {
        /// The user.
        user: String,
    },
    /// A user's last connection left (`OFFLINE`), and why.
    Offline {
        /// The user.
        user: String,
        /// Why its last connection left.
        reason: String,
    },
    /// Events were dropped (`PRESENCE <topic> overflow`): the view is stale.
    Overflow,
}

impl PresenceChange {
    /// Parses a presence event for `topic`'s watcher; `None` if `payload`
    /// is not one.
    pub fn parse(payload: &[u8]) -> Option<(String, PresenceChange)> {
        let text = std::str::from_utf8(payload).ok()?;
        let words: Vec<&str> = text.split(' ').collect();
        let user = |w: &str| (w != "-").then(|| w.to_owned());
        let change = match words.as_slice() {
            ["JOIN", _, conn, u] => PresenceChange::Join {
                conn: (*conn).to_owned(),
                user: user(u),
            },
            ["LEAVE", _, conn, u, reason] => PresenceChange::Leave {
                conn: (*conn).to_owned(),
                user: user(u),
                reason: (*reason).to_owned(),
            },
            ["ONLINE", _, u] => PresenceChange::Online {
                user: (*u).to_owned(),
            },
            ["OFFLINE", _, u, reason] => PresenceChange::Offline {
                user: (*u).to_owned(),
                reason: (*reason).to_owned(),
            },
            ["PRESENCE", _, "overflow"] => PresenceChange::Overflow,
            _ => return None,
        };
        Some((words[1].to_owned(), change))
    }
}

/// What the application asks of the background thread.
enum Command {
    /// An encoded DATA message to send.
    Send(Vec<u8>),
    /// Subscribe to a topic, now and after every reconnect.
    Subscribe(String),
    Close,
}

/// Why [`Client::send`] did not take a message.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SendError {
    /// The client has stopped (closed, or gave up).
    Stopped,
    /// The payload cannot be sent in the client's protocol (see
    /// [`Protocol::encode`]).
    Encode(EncodeError),
}

impl fmt::Display for SendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SendError::Stopped => f.write_str("the client has stopped"),
            SendError::Encode(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for SendError {}

/// The sending half of the event queue: drops the oldest event when full.
pub(crate) struct Events {
    tx: Sender<Event>,
    /// A receiver of the same channel, to take the oldest event out.
    oldest: Receiver<Event>,
    /// Events dropped so far.
    dropped: Arc<AtomicU64>,
}

impl Events {
    /// Queues `event`, dropping the oldest waiting one if the queue is full.
    pub(crate) fn emit(&self, mut event: Event) {
        loop {
            match self.tx.try_send(event) {
                Ok(()) => return,
                Err(crossbeam_channel::TrySendError::Full(back)) => {
                    if self.oldest.try_recv().is_ok() {
                        self.dropped.fetch_add(1, Ordering::Relaxed);
                    }
                    event = back;
                }
                Err(crossbeam_channel::TrySendError::Disconnected(_)) => return,
            }
        }
    }
}

/// A running client. Dropping it closes it as [`close`](Client::close) does.
pub struct Client {
    commands: Sender<Command>,
    events: Receiver<Event>,
    dropped: Arc<AtomicU64>,
    protocol: Protocol,
    thread: Option<JoinHandle<()>>,
}

impl Client {
    /// Starts the client's thread; it connects at once.
    ///
    /// # Errors
    ///
    /// If the configuration is invalid or the thread cannot be started.
    /// Connection failures are not errors: they are [`Event`]s, followed by
    /// retries.
    pub fn start(config: ClientConfig) -> io::Result<Client> {
        config.validate()?;
        let (commands, commands_rx) = crossbeam_channel::unbounded();
        let (events_tx, events) = crossbeam_channel::bounded(config.event_capacity);
        let dropped = Arc::new(AtomicU64::new(0));
        let sink = Events {
            tx: events_tx,
            oldest: events.clone(),
            dropped: Arc::clone(&dropped),
        };
        let protocol = config.protocol;
        let thread = std::thread::Builder::new()
            .name("wheel-client".into())
            .spawn(move || session::run(config, commands_rx, sink))?;
        Ok(Client {
            commands,
            events,
            dropped,
            protocol,
            thread: Some(thread),
        })
    }

    /// Queues DATA for the server. Sent at once when connected; while the
    /// client is reconnecting, queued and sent after it reconnects. Data
    /// already written into a connection that then dies may be lost (the
    /// protocol has no acknowledgements).
    ///
    /// # Errors
    ///
    /// [`SendError::Stopped`] if the client has stopped;
    /// [`SendError::Encode`] if the payload cannot be sent in the client's
    /// protocol (in line mode: a line break, or a payload that would read as
    /// a command).
    pub fn send(&self, payload: &[u8]) -> Result<(), SendError> {
        let mut wire = Vec::new();
        self.protocol
            .encode(&Message::Data(payload), &mut wire)
            .map_err(SendError::Encode)?;
        self.commands
            .send(Command::Send(wire))
            .map_err(|_| SendError::Stopped)
    }

    /// Subscribes to `topic` on a `--service pubsub` server, now (or at the
    /// next connection) and again after every reconnect, resuming after the
    /// last message seen.
    ///
    /// # Errors
    ///
    /// [`SendError::Stopped`] if the client has stopped.
    pub fn subscribe(&self, topic: &str) -> Result<(), SendError> {
        self.commands
            .send(Command::Subscribe(topic.to_owned()))
            .map_err(|_| SendError::Stopped)
    }

    /// Publishes `payload` to `topic` (`PUB <topic> <payload>`) on a
    /// `--service pubsub` server.
    ///
    /// # Errors
    ///
    /// As for [`send`](Client::send).
    pub fn publish(&self, topic: &str, payload: &[u8]) -> Result<(), SendError> {
        self.send(&[b"PUB ", topic.as_bytes(), b" ", payload].concat())
    }

    /// How many events were dropped because the application did not take
    /// them (see [`ClientConfig::event_capacity`]).
    pub fn dropped_events(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// The stream of events, at most
    /// [`event_capacity`](ClientConfig::event_capacity) waiting (the oldest
    /// are dropped first). It disconnects when the client stops (after
    /// [`Event::GaveUp`] or [`close`](Client::close)).
    pub fn events(&self) -> &Receiver<Event> {
        &self.events
    }

    /// Says CLOSE 1000 to the server (if connected) and stops.
    pub fn close(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        let _ = self.commands.send(Command::Close);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.stop();
    }
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client").finish_non_exhaustive()
    }
}
