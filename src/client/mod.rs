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
//!   the next address first.
//!
//! Everything that happens is reported as an [`Event`] on a crossbeam
//! channel, DATA included.
//!
//! # Examples
//!
//! ```
//! use std::time::Duration;
//! use wheel_server::client::{Client, ClientConfig, Event};
//! use wheel_server::{Config, Server};
//!
//! let server = Server::start(Config { listen: "127.0.0.1:0".parse().unwrap(), ..Config::default() })?;
//! let client = Client::start(ClientConfig::new(server.local_addr()))?;
//! client.send(b"hello");
//! let echoed = client.events().iter().find_map(|event| match event {
//!     Event::Data(payload) => Some(payload),
//!     _ => None,
//! });
//! assert_eq!(echoed.as_deref(), Some(&b"hello"[..]));
//! client.close();
//! # Ok::<(), std::io::Error>(())
//! ```

mod backoff;
mod heartbeat;
mod session;

pub use backoff::Backoff;

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};

use crate::protocol::Protocol;
use crate::sys::Keepalive;

/// How a [`Client`] connects, heartbeats and reconnects.
#[derive(Clone, Debug, PartialEq)]
pub struct ClientConfig {
    /// Server addresses; each connection attempt takes the next one in turn.
    pub addrs: Vec<SocketAddr>,
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
}

impl ClientConfig {
    /// The defaults for one server address: heartbeat after 25 s of silence,
    /// 5 s per PING, 3 tries; backoff 1 s doubling to 30 s; never give up.
    pub fn new(addr: SocketAddr) -> ClientConfig {
        ClientConfig {
            addrs: vec![addr],
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
    /// `heartbeat_timeout`, `eof`, `reset` or `close`.
    pub fn label(&self) -> &'static str {
        match self {
            DeadReason::HeartbeatTimeout => "heartbeat_timeout",
            DeadReason::Eof => "eof",
            DeadReason::Reset => "reset",
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
    /// A connection attempt failed.
    ConnectFailed {
        /// The address tried.
        addr: SocketAddr,
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
    /// The connection ended.
    Dead {
        /// Why.
        reason: DeadReason,
    },
    /// Waiting `delay` before connection attempt number `attempt` (counted
    /// since the last healthy connection, the first attempt being 1).
    Reconnecting {
        /// The attempt about to be made.
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

/// What the application asks of the background thread.
enum Command {
    Send(Vec<u8>),
    Close,
}

/// A running client. Dropping it closes it as [`close`](Client::close) does.
pub struct Client {
    commands: Sender<Command>,
    events: Receiver<Event>,
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
        let (events_tx, events) = crossbeam_channel::unbounded();
        let thread = std::thread::Builder::new()
            .name("wheel-client".into())
            .spawn(move || session::run(config, commands_rx, events_tx))?;
        Ok(Client {
            commands,
            events,
            thread: Some(thread),
        })
    }

    /// Queues DATA for the server. Sent at once when connected; while the
    /// client is reconnecting, queued and sent after it reconnects. Data
    /// already written into a connection that then dies may be lost (the
    /// protocol has no acknowledgements). Returns false if the client has
    /// stopped.
    pub fn send(&self, payload: &[u8]) -> bool {
        self.commands.send(Command::Send(payload.to_vec())).is_ok()
    }

    /// The stream of events. It disconnects when the client stops (after
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
