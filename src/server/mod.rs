//! The thread-per-connection server.
//!
//! # Threads
//!
//! * `wheel-accept` accepts connections, applies socket options, registers
//!   them and starts a worker for each (see `acceptor.rs`).
//! * `conn-<id>`, one per connection, blocks in `read`, decodes and answers
//!   messages, and stamps activity (see `worker.rs`).
//! * `wheel-timer` owns the hashed timing wheel, publishes the coarse clock,
//!   and probes or closes idle connections (see `timer.rs`).
//!
//! Workers and the acceptor reach the timer thread over a `crossbeam-channel`
//! (register and deregister only; activity goes through an atomic stamp per
//! connection). The registry of live connections (`registry.rs`) is a slab behind
//! a `parking_lot` mutex.
//!
//! # Closing
//!
//! Only a connection's worker drops its socket. The timer thread asks for
//! an immediate close (idle timeout) by recording a reason and calling
//! `shutdown(SHUT_RD)`, which wakes the worker's blocked `read` after the
//! bytes already received; the worker answers them, writes the CLOSE and
//! hangs up. Shutdown and the maximum connection age *drain* instead: the
//! asking thread writes CLOSE 1001 (under the connection's write lock, never
//! blocking) and the worker keeps answering until the client half-closes,
//! or until a grace period ends and the drain is forced as above. Either
//! way everything read is answered, and no thread ever closes a descriptor
//! number that might by then belong to another connection.

mod acceptor;
mod buffer;
mod close;
mod config;
mod conn;
mod http;
mod metrics;
mod ping;
mod proxy;
mod registry;
mod timer;
mod worker;

pub use close::{CloseReason, TcpTimeout};
pub use config::{Config, MIN_WORKER_STACK};
pub use registry::ConnId;

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use tracing::{debug, info, warn};

use crate::activity::{Clock, Kind};
use crate::handler::{Echo, Handler};
use crate::protocol::Message;
use crate::sys;
use crate::time::TimeSource;
use conn::{CloseRequest, Drain};
use registry::Registry;
use timer::Event;

/// After the grace period, how long to wait for force-closed workers (at
/// each of the two steps).
const FORCED_CLOSE_WAIT: Duration = Duration::from_secs(1);

/// State shared by the server's threads.
pub(crate) struct Shared {
    pub(crate) config: Config,
    pub(crate) registry: Registry,
    pub(crate) clock: Clock,
    pub(crate) events: Sender<Event>,
    pub(crate) handler: Arc<dyn Handler>,
    /// Set once shutdown has begun.
    pub(crate) stopping: AtomicBool,
    pub(crate) listener: TcpListener,
    /// The encoded server PING, built once.
    pub(crate) probe: Vec<u8>,
    pub(crate) metrics: metrics::Metrics,
}

impl Shared {
    /// The encoded CLOSE message for `reason`, if it sends one.
    pub(crate) fn close_frame(&self, reason: &CloseReason) -> Option<Vec<u8>> {
        let (code, text) = reason.close_message()?;
        let mut frame = Vec::new();
        let msg = Message::Close {
            code,
            reason: &text,
        };
        self.config.protocol.encode(&msg, &mut frame);
        Some(frame)
    }
}

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
/// let server = Server::start(Config {
///     listen: "127.0.0.1:0".parse().unwrap(),
///     ..Config::default()
/// })?;
///
/// let mut client = TcpStream::connect(server.local_addr())?;
/// let mut wire = Vec::new();
/// Protocol::Frame.encode(&Message::Ping(b"1"), &mut wire);
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
    acceptor: Option<JoinHandle<()>>,
    timer: Option<JoinHandle<()>>,
    endpoint: Option<http::Endpoint>,
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
        let listener = sys::listen(config.listen, config.reuse_port).map_err(|e| {
            io::Error::new(e.kind(), format!("cannot listen on {}: {e}", config.listen))
        })?;
        let local_addr = listener.local_addr()?;
        let (events, events_rx) = crossbeam_channel::unbounded();
        let mut probe = Vec::new();
        config.protocol.encode(&Message::Ping(b""), &mut probe);
        let source = TimeSource::new(Instant::now(), config.tick);
        let shared = Arc::new(Shared {
            config,
            registry: Registry::default(),
            clock: Clock::default(),
            events,
            handler: Arc::new(handler),
            stopping: AtomicBool::new(false),
            listener,
            probe,
            metrics: metrics::Metrics::new(),
        });
        let timer = timer::spawn(Arc::clone(&shared), events_rx, source)?;
        let stop_timer = |e: io::Error| {
            let _ = shared.events.send(Event::Stop);
            e
        };
        let endpoint = match shared.config.metrics_listen {
            Some(addr) => {
                Some(http::Endpoint::start(Arc::clone(&shared), addr).map_err(stop_timer)?)
            }
            None => None,
        };
        let accept_shared = Arc::clone(&shared);
        let acceptor = std::thread::Builder::new()
            .name("wheel-accept".into())
            .spawn(move || acceptor::run(accept_shared))
            .map_err(stop_timer)?;
        let c = &shared.config;
        info!(
            protocol = %c.protocol,
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
        if let Some(endpoint) = &endpoint {
            info!(
                "metrics, connections and health on http://{}",
                endpoint.addr()
            );
        }
        Ok(Server {
            shared,
            local_addr,
            acceptor: Some(acceptor),
            timer: Some(timer),
            endpoint,
        })
    }

    /// The address the server is bound to (with the real port when port 0
    /// was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The number of open connections.
    pub fn connection_count(&self) -> usize {
        self.shared.registry.len()
    }

    /// The address of the metrics endpoint, if one was configured.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.endpoint.as_ref().map(http::Endpoint::addr)
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
        let Some(acceptor) = self.acceptor.take() else {
            return true;
        };
        let shared = &self.shared;
        shared.stopping.store(true, Ordering::Release);
        let queued = acceptor::admit_queued(shared);
        if queued > 0 {
            debug!(
                queued,
                "admitted the accept queue before closing the listener"
            );
        }
        sys::wake_acceptor(&shared.listener);
        acceptor.thread().unpark();
        let _ = acceptor.join();

        let open = shared.registry.snapshot();
        if !open.is_empty() {
            info!(
                connections = open.len(),
                grace = ?shared.config.shutdown_grace,
                "shutting down: draining connections"
            );
        }
        let close = shared
            .close_frame(&CloseReason::Shutdown)
            .expect("shutdown sends a CLOSE");
        let drains = shared
            .metrics
            .drains
            .get_or_create(&[("reason", "shutdown")])
            .clone();
        for conn in &open {
            if conn.drain(CloseRequest::Shutdown, &close) != Drain::AlreadyClosing {
                drains.inc();
            }
        }
        drop(open);
        let clean = shared
            .registry
            .wait_empty(Instant::now() + shared.config.shutdown_grace);
        if !clean {
            let stuck = shared.registry.snapshot();
            warn!(
                connections = stuck.len(),
                grace = ?shared.config.shutdown_grace,
                "connections still draining after the grace period: forcing them closed"
            );
            // First as a timeout would: the worker answers what it has read
            // and hangs up. Then, for workers stuck in a write, both ways.
            for conn in &stuck {
                shared.metrics.drains_forced.inc();
                conn.force();
            }
            if !shared
                .registry
                .wait_empty(Instant::now() + FORCED_CLOSE_WAIT)
            {
                for conn in &stuck {
                    conn.force_close();
                }
                shared
                    .registry
                    .wait_empty(Instant::now() + FORCED_CLOSE_WAIT);
            }
            drop(stuck);
        }
        let _ = shared.events.send(Event::Stop);
        if let Some(timer) = self.timer.take() {
            let _ = timer.join();
        }
        // Last, so that /healthz answers 503 for the whole drain.
        if let Some(mut endpoint) = self.endpoint.take() {
            endpoint.stop();
        }
        // The totals that say whether the drain lost anything: with a clean
        // drain and an answering handler, every DATA read was answered and
        // nothing was discarded.
        let (received, sent) = shared.metrics.traffic(&shared.registry);
        let data = Kind::Data as usize;
        info!(
            data_received = received.frames[data],
            data_sent = sent.frames[data],
            discarded_bytes = shared.metrics.discarded_bytes.get(),
            drains_forced = shared.metrics.drains_forced.get(),
            "shut down"
        );
        clean
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
