//! The accept thread: admits connections, rejects the ones over the limit,
//! and survives descriptor exhaustion without spinning.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use socket2::SockRef;
use tracing::{debug, info, warn};

use crate::protocol::{Message, Protocol, code};
use crate::server::admission::limits::{self, Refused};
use crate::server::admission::upgrade;
use crate::server::conn::{Accepted, Conn};
use crate::server::serve::handler::Handler;
use crate::server::serve::shared::Shared;
use crate::server::serve::timer::event::Event;
use crate::server::serve::worker;
use crate::sys::{self, AcceptError};

/// First pause after `accept` fails for lack of descriptors or memory.
const BACKOFF_MIN: Duration = Duration::from_millis(5);
/// Longest pause: how late, at worst, the server notices freed descriptors.
const BACKOFF_MAX: Duration = Duration::from_millis(100);
/// At most one warning per this interval for each kind of rejection (each
/// rejection is also logged at debug level).
const REJECT_WARNING_INTERVAL: Duration = Duration::from_secs(10);

/// Why a connection was not admitted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Rejected {
    /// `max_connections` are open.
    Full,
    /// No worker thread could be started.
    NoThread,
    /// The client's address is over one of its limits.
    Address(Refused),
}

/// When each kind of rejection was last warned about.
#[derive(Default)]
struct RejectWarnings {
    full: Option<Instant>,
    no_thread: Option<Instant>,
    per_ip: Option<Instant>,
    rate: Option<Instant>,
}

impl RejectWarnings {
    /// Warns about `rejected` unless a warning of its kind went out within
    /// the interval.
    fn warn(&mut self, shared: &Shared, rejected: Rejected) {
        let last = match rejected {
            Rejected::Full => &mut self.full,
            Rejected::NoThread => &mut self.no_thread,
            Rejected::Address(Refused::Limit) => &mut self.per_ip,
            Rejected::Address(Refused::Rate) => &mut self.rate,
        };
        if last.is_some_and(|t| t.elapsed() < REJECT_WARNING_INTERVAL) {
            return;
        }
        *last = Some(Instant::now());
        match rejected {
            Rejected::Full => warn!(
                max = shared.config.max_connections,
                "server full: rejecting new connections with close 1013"
            ),
            Rejected::NoThread => warn!(
                open = shared.registry.len(),
                "out of threads: rejecting new connections with close 1013 \
                 (see --worker-stack and the process's limits)"
            ),
            Rejected::Address(Refused::Limit) => warn!(
                max = shared.config.max_connections_per_ip,
                "an address at its connection limit: rejecting its new connections with close 1013"
            ),
            Rejected::Address(Refused::Rate) => warn!(
                rate = shared.config.max_connect_rate_per_ip,
                "an address connecting too often: rejecting its connects with close 1013"
            ),
        }
    }
}

/// Accepts on listener `index` of `shared.listeners` until shutdown.
pub(crate) fn run(shared: Arc<Shared>, handler: Arc<dyn Handler>, index: usize) {
    let mut backoff = BACKOFF_MIN;
    let mut failures = 0u64;
    let mut warnings = RejectWarnings::default();
    loop {
        let accepted = shared.listeners[index].socket.accept();
        if shared.stopping.load(Ordering::Acquire) {
            // Taken from the queue while shutdown drained it: admitted like
            // the others, so that it is drained rather than dropped.
            if let Ok((stream, peer)) = accepted {
                let _ = admit(&shared, &handler, index, stream, peer);
            }
            return;
        }
        match accepted {
            Ok((stream, peer)) => {
                if failures > 0 {
                    info!(
                        failures,
                        "accepting again after descriptor or memory exhaustion"
                    );
                    failures = 0;
                    backoff = BACKOFF_MIN;
                }
                if let Err(rejected) = admit(&shared, &handler, index, stream, peer) {
                    warnings.warn(&shared, rejected);
                }
            }
            Err(e) => {
                let kind = sys::errno_name(&e);
                shared
                    .metrics
                    .accept_errors
                    .get_or_create(&[("kind", kind)])
                    .inc();
                match sys::classify_accept_error(&e) {
                    AcceptError::Connection => debug!("accept: skipped a failed connection: {e}"),
                    AcceptError::Exhausted | AcceptError::Other => {
                        if failures == 0 {
                            warn!("accept failed: {e}; backing off until resources are freed");
                        }
                        failures += 1;
                        // Unparked by shutdown.
                        std::thread::park_timeout(backoff);
                        backoff = (backoff * 2).min(BACKOFF_MAX);
                    }
                }
            }
        }
    }
}

/// At shutdown, before the listener is shut: admits every connection
/// already waiting in the accept queue, so that they are drained with CLOSE
/// 1001 like the rest instead of being reset when the listener goes.
/// Returns how many there were.
pub(crate) fn admit_queued(shared: &Arc<Shared>, handler: &Arc<dyn Handler>) -> usize {
    // The accept thread, blocked in `accept`, stays blocking; only these
    // calls return at once on an empty queue.
    let mut admitted = 0;
    for (index, listening) in shared.listeners.iter().enumerate() {
        if listening.socket.set_nonblocking(true).is_err() {
            continue;
        }
        while let Ok((stream, peer)) = listening.socket.accept() {
            // Accepted sockets do not inherit O_NONBLOCK on Linux.
            let _ = admit(shared, handler, index, stream, peer);
            admitted += 1;
        }
    }
    admitted
}

/// Registers the connection and starts its worker, or says why it was
/// turned away (with CLOSE 1013, counted). Only an admitted connection
/// counts as accepted, so that accepted - closed = open.
fn admit(
    shared: &Arc<Shared>,
    handler: &Arc<dyn Handler>,
    index: usize,
    stream: TcpStream,
    peer: SocketAddr,
) -> Result<(), Rejected> {
    let protocol = shared.listeners[index].protocol;
    // What a refusal is said in: nothing on a TLS listener, where no
    // session exists yet to say it with.
    let speaks = (!shared.listeners[index].tls).then_some(protocol);
    if let Err(e) = configure(shared, &stream) {
        // Typically the peer already reset the connection.
        debug!(%peer, "dropping connection: cannot set socket options: {e}");
        return Ok(());
    }
    // Without the PROXY protocol the socket's peer is the client: check its
    // address before a thread is spent on it. (With it, the worker checks
    // the header's address.)
    let ip_key = if shared.config.proxy_protocol {
        None
    } else {
        let admitted = limits::admit_address(
            &shared.connect_rate,
            &shared.per_ip,
            &shared.metrics.rate_untracked,
            peer.ip(),
        );
        match admitted {
            Ok(key) => key,
            Err(refused) => {
                let reason = refused.close_reason();
                let text = reason.close_message().map(|(_, t)| t).unwrap_or_default();
                debug!(%peer, "rejected: {text}");
                reject(shared, speaks, &stream, refused.label(), &text);
                return Err(Rejected::Address(refused));
            }
        }
    };
    let release = |key: Option<_>| {
        if let Some(key) = key {
            shared.per_ip.release(key);
        }
    };
    // Without the `tls` feature no `Tls` exists: the first arm cannot run.
    #[cfg_attr(not(feature = "tls"), allow(unreachable_code))]
    let session = match (&shared.tls, shared.listeners[index].tls) {
        (Some(tls), true) => match tls.session() {
            Ok(session) => Some(session),
            Err(e) => {
                warn!(%peer, "dropping connection: cannot start a TLS session: {e}");
                release(ip_key);
                return Ok(());
            }
        },
        _ => None,
    };
    let tick = shared.clock.now();
    let config = &shared.config;
    let mut accepted = Some(Accepted {
        stream,
        peer,
        listener: index,
        protocol,
        tls: session,
    });
    let conn = shared.registry.insert(config.max_connections, |id| {
        let accepted = accepted.take().expect("called once");
        Conn::new(id, accepted, tick, config.max_outbox, config.write_timeout)
    });
    let Some(conn) = conn else {
        debug!(%peer, "rejected: server full");
        let stream = accepted.expect("not taken when full").stream;
        release(ip_key);
        reject(shared, speaks, &stream, "server_full", "server full");
        return Err(Rejected::Full);
    };
    if let Some(key) = ip_key {
        let _ = conn.ip_key.set(key);
    }
    let id = conn.id;
    // Sent before the worker exists, so it reaches the timer thread before
    // the worker's Deregister.
    let _ = shared.events.send(Event::Register { id, activity: tick });
    if let Err(e) = worker::spawn(shared, handler, Arc::clone(&conn)) {
        debug!(%peer, "rejected: cannot start a worker thread: {e}");
        shared.registry.remove(id, Default::default());
        release(ip_key);
        let _ = shared.events.send(Event::Deregister(id));
        reject(
            shared,
            speaks,
            conn.stream(),
            "no_thread",
            "server out of threads",
        );
        return Err(Rejected::NoThread);
    }
    shared.metrics.accepted.inc();
    Ok(())
}

/// Gives an accepted socket the server's socket options, unless it
/// inherited them from the listener (checked once, on the first socket).
fn configure(shared: &Shared, stream: &TcpStream) -> std::io::Result<()> {
    let opts = shared.config.socket_options();
    let inherited = match shared.options_inherited.get() {
        Some(&inherited) => inherited,
        None => {
            let inherited = sys::has_options(stream, &opts)?;
            if !inherited {
                debug!(
                    "accepted sockets do not inherit the listener's options: setting them on each"
                );
            }
            let _ = shared.options_inherited.set(inherited);
            inherited
        }
    };
    if inherited {
        Ok(())
    } else {
        sys::configure(SockRef::from(stream), &opts)
    }
}

/// Tells a connection the server cannot take it (CLOSE 1013 with `reason`
/// in `protocol`; a 503 before a WebSocket upgrade; nothing where
/// `protocol` is `None`, a TLS listener) and closes it, without ever
/// blocking the accept thread; counts it under `label` (one of
/// `metrics::REJECT_REASONS`).
fn reject(
    shared: &Shared,
    protocol: Option<Protocol>,
    stream: &TcpStream,
    label: &'static str,
    reason: &str,
) {
    shared
        .metrics
        .rejected
        .get_or_create(&[("reason", label)])
        .inc();
    let close = match protocol {
        None => Vec::new(),
        // Before the upgrade, the answer is HTTP's.
        Some(Protocol::Ws) => {
            upgrade::response(503, "Service Unavailable", reason, &[("Retry-After", "1")])
        }
        Some(protocol) => {
            let mut close = Vec::new();
            let msg = Message::Close {
                code: code::TRY_AGAIN_LATER,
                reason,
            };
            if protocol.encode(&msg, &mut close).is_err() {
                return;
            }
            close
        }
    };
    if stream.set_nonblocking(true).is_err() {
        return;
    }
    let _ = (&*stream).write(&close);
    let _ = stream.shutdown(Shutdown::Write);
    // Consume whatever the client already sent: closing with unread input
    // would send RST, which can discard the CLOSE before the client reads it.
    let mut scratch = [0u8; 512];
    while matches!((&*stream).read(&mut scratch), Ok(n) if n > 0) {}
}
