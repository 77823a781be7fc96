//! The thread-per-connection server.
//!
//! # Threads
//!
//! * `wheel-accept` accepts connections, applies socket options, registers
//!   them and starts a worker for each (`serve/acceptor.rs`).
//! * `wheel-worker`, one per busy connection, blocks in `read`, decodes and
//!   answers messages, and stamps activity (`serve/worker/`). When its
//!   connection ends, or is parked, it waits in the thread cache
//!   (`serve/threads.rs`, up to `thread_cache` of them) and serves the next
//!   connection, so that a connection usually costs no thread spawn. A
//!   quiet connection's worker waits holding no buffer.
//! * `wheel-park` holds the idle connections (`park_after` without DATA)
//!   in one epoll set, with no thread of their own, and answers their PINGs
//!   itself; anything else hands the connection back to a worker thread
//!   with the bytes read (`serve/park.rs`, `serve/worker/parked.rs`), as
//!   Apache's event MPM does. The handler sees nothing different.
//! * `wheel-timer` owns the hashed timing wheel, publishes the coarse clock,
//!   probes, drains or closes idle connections, and flushes output other
//!   threads left queued (`serve/timer/`).
//!
//! Workers and the acceptor reach the timer thread over a `crossbeam-channel`
//! (register, deregister, a token's expiry and stop, taken at the next
//! tick; activity goes through an atomic stamp per connection, never the
//! channel). The registry of live connections (`serve/registry.rs`) is a slab
//! behind a `parking_lot` mutex; what the threads share is in `serve/shared.rs`.
//!
//! # The outbound path
//!
//! Every byte sent on a connection (its worker's answers, the timer's
//! probes, drain and idle CLOSEs) goes through the connection's one
//! `Outbound` (`conn/outbound/`): a byte-bounded queue of
//! whole encoded messages behind the lock that is the right to write.
//! Under the lock nothing blocks (`MSG_DONTWAIT`), so no thread but the
//! worker ever waits on a peer; what the socket does not take waits in the
//! queue for the next lock holder or the timer's next tick. The worker
//! alone blocks, outside the lock, when its answers do not fit. A
//! connection whose queue would pass `max_outbox` is closed as a slow
//! consumer (CLOSE 4003); one whose queue makes no progress for the write
//! timeout, as a stalled writer.
//!
//! # Closing
//!
//! The close state lives with the queue (`conn/close.rs` has the diagram):
//!
//! ```text
//! Open --drain (shutdown, max age)--> Requested(drains) --worker ends--> Finishing
//! Open --idle, stalled, slow--------> Requested(at once) --worker ends--> Finishing
//! Open --worker ends on its own (EOF, CLOSE, error, handler)-----------> Finishing
//! ```
//!
//! An immediate request records its reason and calls `shutdown(SHUT_RD)`,
//! which wakes the worker's blocked `read` after the bytes already
//! received; the worker answers them, writes the CLOSE and hangs up. An
//! expiry whose worker waits with nothing to answer is quicker: the timer
//! writes the CLOSE itself, and wakes the workers only once every CLOSE of
//! the tick is on the wire, so that ten thousand connections expiring in one
//! tick all have theirs out before any of their threads competes for the
//! CPU. A
//! drain queues CLOSE 1001 and leaves the worker answering until the client
//! half-closes, or until a grace period ends and the drain is forced as
//! above (`shutdown.rs` for the server's shutdown). Either way everything
//! read is answered. The socket is owned by its connection and closed when
//! the last reference goes, never by descriptor number, so no thread can
//! close a number that by then belongs to another connection.
//!
//! # Layers
//!
//! The folders are layers, each importing only from those below it
//! (README, "Layout"; checked by `tests/layers.rs`): `conn/` (one
//! connection and its outbound path), `topics/` (fan-out, local or through
//! Redis), `admission/` (PROXY, limits, TLS, upgrade, JWT), `serve/` (the
//! threads, the `Handler` and `ServerHandle` API), then the services built
//! on that API (`pubsub.rs`, `auth.rs`) and the admin endpoint (`admin/`).

mod admin;
mod admission;
pub mod auth;
pub mod capacity;
mod config;
mod conn;
mod metrics;
pub mod pubsub;
mod rate;
mod serve;
mod shutdown;
mod signals;
mod topics;

pub use crate::cidr::Cidr;
pub use crate::protocol::topic::{MAX_TOPIC_LEN, TOPIC_PUNCTUATION, valid_topic};
#[doc(hidden)]
pub use admin::check_request_head;
#[doc(hidden)]
pub use admission::upgrade;
pub use config::{
    Config, ConfigError, DEFAULT_PARK_AFTER, Listen, MIN_WORKER_STACK, PRESENCE_PAGE, TlsFiles,
};
pub use conn::close::{CloseReason, MAX_CLOSE_REASON, TcpTimeout};
pub use conn::id::ConnId;
pub use rate::RATE_LIMIT_STRIKES;
pub use serve::handle::{ConnectionInfo, SendError, ServerHandle};
pub use serve::handler::{Echo, Handler, Session};
pub use signals::ShutdownSignals;
pub use topics::presence::{
    Member, Members, leave_reason, member_id, parse_member_id, show_user, unshow_user,
};
pub use topics::{Published, Resumed, TopicInfo};

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use socket2::SockRef;
use tracing::{debug, info};

use crate::activity::Clock;
use crate::sys;
use crate::time::TimeSource;
use conn::outbound::Flushes;
use serve::registry::Registry;
use serve::shared::{Frames, Shared};

/// A running server. Dropping it shuts it down as [`shutdown`] does.
///
/// [`shutdown`]: Server::shutdown
///
/// # Examples
///
/// ```
/// use std::io::{Read, Write};
/// use std::net::TcpStream;
/// use wheel_server::protocol::{Decoder, Message, Protocol};
/// use wheel_server::server::{Config, Server};
///
/// let mut config = Config::default();
/// config.listen = "127.0.0.1:0".parse().unwrap();
/// let server = Server::start(config)?;
///
/// let mut client = TcpStream::connect(server.local_addr())?;
/// let mut wire = Vec::new();
/// Protocol::Frame.encode(&Message::Ping(b"1"), &mut wire).unwrap();
/// client.write_all(&wire)?;
///
/// let mut answer = [0u8; 6];
/// client.read_exact(&mut answer)?;
/// let mut decoder = Decoder::new(Protocol::Frame, 1024);
/// assert_eq!(decoder.decode(&answer).unwrap().unwrap().0, Message::Pong(b"1"));
///
/// // Shutdown drains each connection until its client hangs up.
/// drop(client);
/// assert!(server.shutdown());
/// # Ok::<(), std::io::Error>(())
/// ```
pub struct Server {
    shared: Arc<Shared>,
    local_addr: SocketAddr,
    /// The server's own threads; taken by the first stop.
    threads: Option<shutdown::Threads>,
}

impl Server {
    /// Starts a server running the built-in echo service.
    ///
    /// # Errors
    ///
    /// If the configuration is invalid ([`Config::validate`]), the address
    /// cannot be bound (the error names it), or a thread cannot be started.
    pub fn start(config: Config) -> io::Result<Server> {
        Server::with_handler(config, Echo)
    }

    /// Starts a server whose DATA messages go to `handler`.
    ///
    /// # Errors
    ///
    /// As for [`start`](Server::start).
    pub fn with_handler(config: Config, handler: impl Handler) -> io::Result<Server> {
        config.validate()?;
        let handler: Arc<dyn Handler> = Arc::new(handler);
        let mut listeners = Vec::new();
        // What the configuration names outside itself is loaded once, here:
        // a file or URL that cannot be used is a ConfigError like any other.
        let tls = match &config.tls {
            Some(files) => Some(
                admission::tls::Tls::load(files)
                    .map_err(|(setting, reason)| ConfigError { setting, reason })?,
            ),
            None => None,
        };
        for Listen {
            addr,
            protocol,
            path,
            tls,
        } in config.listeners()
        {
            let socket = sys::listen(addr, config.reuse_port)
                .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))?;
            // Accepted sockets inherit these; the accept thread checks.
            if let Err(e) = sys::configure(SockRef::from(&socket), &config.socket_options()) {
                debug!("cannot set socket options on the listener: {e}");
            }
            let addr = socket.local_addr()?;
            listeners.push(serve::shared::Listening {
                socket,
                addr,
                protocol,
                path,
                tls,
            });
        }
        let local_addr = listeners[0].addr;
        let (events, events_rx) = crossbeam_channel::unbounded();
        let config_per_ip = config.max_connections_per_ip;
        let config_rate = config.max_connect_rate_per_ip.map(f64::from);
        // Without the `redis` feature no client can be made: the arm that
        // makes one is unreachable (and `client` refuses every URL).
        #[cfg_attr(not(feature = "redis"), allow(unreachable_code))]
        let redis = topics::redis::target(&config)
            .map_err(|reason| ConfigError {
                setting: if config.redis_sentinels.is_empty() {
                    "redis"
                } else {
                    "redis_sentinel"
                },
                reason,
            })?
            .map(|target| {
                topics::redis::Redis::new(
                    target,
                    config.redis_timeout,
                    topics::Retention::of(&config),
                    config.presence_heartbeat,
                )
            });
        let retention = topics::Retention::of(&config);
        let topic_bounds = topics::Bounds::of(&config);
        let source = TimeSource::new(Instant::now(), config.tick);
        let mut metrics =
            metrics::Metrics::new(&admission::upgrade::RESULTS, &admission::tls::RESULTS);
        if let Some(tls) = &tls {
            metrics.register_tls(tls.expires());
            info!(
                cert = %tls.files().cert.display(),
                expires = %admission::tls::expiry_text(tls.expires()),
                client_certificates = tls.files().client_ca.is_some(),
                "TLS certificate loaded"
            );
        }
        #[cfg(feature = "redis")]
        if let Some(redis) = &redis {
            redis.register_metrics(&mut metrics);
        }
        let topics = topics::Topics::new(retention, topic_bounds, redis);
        topics.register(&mut metrics);
        let mut thread_settings = serve::threads::Settings::of(&config);
        if let Some((max, mapped)) = capacity::Limits::read().max_map_count {
            thread_settings.max_threads = serve::threads::Settings::threads_within(max, mapped);
        }
        let parking = match config.park_after {
            Some(_) => Some(Arc::new(serve::park::Parking::new(
                serve::park::Parking::threads_for_this_machine(),
                metrics.parking.clone(),
            )?)),
            None => None,
        };
        let shared = Arc::new(Shared {
            config,
            registry: Registry::default(),
            clock: Clock::default(),
            events,
            requires_auth: handler.requires_auth(),
            stopping: AtomicBool::new(false),
            listeners,
            frames: Frames::new(),
            flushes: Flushes::default(),
            topics,
            per_ip: admission::limits::PerIp::new(config_per_ip),
            connect_rate: admission::limits::ConnectRate::new(config_rate),
            threads: serve::threads::ThreadCache::new(thread_settings, metrics.threads.clone()),
            parking,
            options_inherited: OnceLock::new(),
            tls,
            metrics,
        });
        let timer = serve::timer::spawn(Arc::clone(&shared), events_rx, source)?;
        let parkers = match &shared.parking {
            Some(parking) => match serve::park::Parking::spawn(parking) {
                Ok(parkers) => parkers,
                Err(e) => {
                    serve::timer::stop(&shared, timer.thread());
                    return Err(e);
                }
            },
            None => Vec::new(),
        };
        let stop_timer = |e: io::Error| {
            serve::timer::stop(&shared, timer.thread());
            if let Some(parking) = &shared.parking {
                parking.stop();
            }
            e
        };
        let relay = match shared.topics.redis() {
            Some(_) => Some(
                topics::redis::spawn(Arc::clone(&shared), |shared| topics::Sink {
                    topics: &shared.topics,
                    flushes: &shared.flushes,
                    metrics: &shared.metrics,
                })
                .map_err(stop_timer)?,
            ),
            None => None,
        };
        let endpoint = match shared.config.metrics_listen {
            Some(addr) => {
                Some(admin::Endpoint::start(Arc::clone(&shared), addr).map_err(stop_timer)?)
            }
            None => None,
        };
        let mut acceptors = Vec::new();
        for index in 0..shared.listeners.len() {
            let accept_shared = Arc::clone(&shared);
            let accept_handler = Arc::clone(&handler);
            let spawned = std::thread::Builder::new()
                .name("wheel-accept".into())
                .spawn(move || serve::acceptor::run(accept_shared, accept_handler, index));
            match spawned {
                Ok(acceptor) => acceptors.push(acceptor),
                Err(e) => {
                    shutdown::stop_accepting(&shared, &handler, acceptors);
                    return Err(stop_timer(e));
                }
            }
        }
        let c = &shared.config;
        let first = &shared.listeners[0];
        info!(
            protocol = %c.protocol,
            tls = first.tls,
            path = %first.path_label(),
            idle_timeout = %show(c.idle_timeout),
            tick = %show(Some(c.tick)),
            probe_after = %show(c.probe_after),
            keepalive = %c.keepalive.map_or("off".into(), |k| format!(
                "{}/{}/{}",
                show(Some(k.idle)),
                show(Some(k.interval)),
                k.count
            )),
            max_connections = c.max_connections,
            "listening on {local_addr}"
        );
        for listening in &shared.listeners[1..] {
            info!(
                protocol = %listening.protocol,
                tls = listening.tls,
                path = %listening.path_label(),
                "listening on {}",
                listening.addr
            );
        }
        if let Some(endpoint) = &endpoint {
            info!(
                "metrics, connections and health on http://{}",
                endpoint.addr()
            );
        }
        Ok(Server {
            shared,
            local_addr,
            threads: Some(shutdown::Threads {
                handler,
                acceptors,
                timer,
                parkers,
                endpoint,
                relay,
            }),
        })
    }

    /// The address the server is bound to (with the real port when port 0
    /// was asked for): the first listener's, [`Config::listen`].
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Every address the server is bound to, with its protocol, in the
    /// order of [`Config::listeners`].
    pub fn listeners(&self) -> Vec<Listen> {
        self.shared
            .listeners
            .iter()
            .map(|l| Listen {
                addr: l.addr,
                protocol: l.protocol,
                path: l.path.clone(),
                tls: l.tls,
            })
            .collect()
    }

    /// Re-reads the TLS certificate and key files: new handshakes get the
    /// new certificate, live connections keep theirs. Logged either way.
    ///
    /// # Errors
    ///
    /// No TLS listener, or the new files were refused (why); the old
    /// certificate then stays.
    pub fn reload_tls(&self) -> Result<(), String> {
        admission::tls::reload(self.shared.tls.as_ref(), &self.shared.metrics)
    }

    /// A handle for reaching connections from any thread: send, close,
    /// subscribe, publish.
    pub fn handle(&self) -> ServerHandle {
        ServerHandle::new(Arc::clone(&self.shared))
    }

    /// The ids of the open connections, oldest slot first.
    pub fn connection_ids(&self) -> Vec<ConnId> {
        self.shared
            .registry
            .snapshot()
            .iter()
            .map(|c| c.id)
            .collect()
    }

    /// The number of open connections.
    pub fn connection_count(&self) -> usize {
        self.shared.registry.len()
    }

    /// The address of the metrics endpoint, if one was configured.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.threads
            .as_ref()
            .and_then(|t| t.endpoint.as_ref())
            .map(admin::Endpoint::addr)
    }

    /// The configuration the server runs with.
    pub fn config(&self) -> &Config {
        &self.shared.config
    }

    /// Shuts down gracefully: stops accepting (`/healthz` answers 503 from
    /// now on), sends CLOSE 1001 to every connection, and lets them drain:
    /// each worker goes on answering until its client hangs up (see
    /// `docs/PROTOCOL.md`). After [`Config::shutdown_grace`] the rest are
    /// forced closed. Returns whether every connection finished within the
    /// grace period.
    pub fn shutdown(mut self) -> bool {
        self.stop()
    }

    fn stop(&mut self) -> bool {
        match self.threads.take() {
            Some(threads) => shutdown::run(&self.shared, threads),
            None => true,
        }
    }
}

/// A duration for a log line: `250ms`, `1m 30s`, or `off`.
fn show(d: Option<Duration>) -> String {
    d.map_or_else(
        || "off".into(),
        |d| humantime::format_duration(d).to_string(),
    )
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("local_addr", &self.local_addr)
            .field("connections", &self.connection_count())
            .finish()
    }
}

#[cfg(test)]
pub(crate) mod test_support {
    //! Building blocks for unit tests: a server's shared state without its
    //! threads, and registered connections with their client ends.

    use std::net::{TcpListener, TcpStream};
    use std::sync::Arc;

    use super::conn::Conn;
    use super::*;

    /// Shared state for `config`, and the listener it holds (a clone).
    pub(crate) fn shared(config: Config) -> (Arc<Shared>, TcpListener) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let (events, _) = crossbeam_channel::unbounded();
        let metrics = metrics::Metrics::new(&admission::upgrade::RESULTS, &admission::tls::RESULTS);
        let thread_settings = serve::threads::Settings::of(&config);
        let protocol = config.protocol;
        let shared = Arc::new(Shared {
            config,
            registry: Registry::default(),
            clock: Clock::default(),
            events,
            requires_auth: false,
            stopping: AtomicBool::new(false),
            listeners: vec![serve::shared::Listening {
                socket: listener.try_clone().unwrap(),
                addr: listener.local_addr().unwrap(),
                protocol,
                path: None,
                tls: false,
            }],
            frames: Frames::new(),
            flushes: Flushes::default(),
            topics: topics::Topics::new(
                topics::Retention {
                    count: 100,
                    ttl: Duration::from_secs(300),
                    bytes: 4 << 20,
                    memory: 64 << 20,
                },
                topics::Bounds {
                    max_topics: 1000,
                    max_frame: 1 << 20,
                    replay_budget: 1 << 20,
                    presence_rate: 20,
                    presence_page: PRESENCE_PAGE,
                },
                None,
            ),
            per_ip: admission::limits::PerIp::new(None),
            connect_rate: admission::limits::ConnectRate::new(None),
            threads: serve::threads::ThreadCache::new(thread_settings, metrics.threads.clone()),
            parking: None,
            options_inherited: OnceLock::new(),
            tls: None,
            metrics,
        });
        (shared, listener)
    }

    /// The kernel buffers of a [`pair`]: the client's receive buffer and
    /// the server side's send buffer. Set explicitly, so the kernel's
    /// autotuning cannot grow them while a test relies on a full socket:
    /// what the kernel can hold is then bounded by [`KERNEL_HOLDS`].
    const PAIR_BUFFER: usize = 16 * 1024;

    /// More than the kernel can ever take from a [`pair`] whose client does
    /// not read: both buffers (Linux doubles what is set, for bookkeeping)
    /// with a wide margin.
    pub(crate) const KERNEL_HOLDS: usize = 8 * PAIR_BUFFER;

    /// A registered connection (no worker) and the client end of its socket.
    pub(crate) fn pair(shared: &Shared, listener: &TcpListener) -> (Arc<Conn>, TcpStream) {
        let socket =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        socket.set_recv_buffer_size(PAIR_BUFFER).unwrap();
        socket
            .connect(&listener.local_addr().unwrap().into())
            .unwrap();
        let client: TcpStream = socket.into();
        let (server_side, peer) = listener.accept().unwrap();
        SockRef::from(&server_side)
            .set_send_buffer_size(PAIR_BUFFER)
            .unwrap();
        let config = &shared.config;
        let conn = shared
            .registry
            .insert(usize::MAX, |id| {
                let accepted = conn::Accepted {
                    stream: server_side,
                    peer,
                    listener: 0,
                    protocol: config.protocol,
                    tls: None,
                };
                Conn::new(id, accepted, 0, config.max_outbox, config.write_timeout)
            })
            .unwrap();
        (conn, client)
    }
}
