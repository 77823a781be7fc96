//! The accept thread: admits connections, rejects the ones over the limit,
//! and survives descriptor exhaustion without spinning.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tracing::{debug, info, warn};

use super::conn::Conn;
use super::shared::Shared;
use super::timer::Event;
use super::worker;
use crate::protocol::{Message, code};
use crate::sys::{self, AcceptError};

/// First pause after `accept` fails for lack of descriptors or memory.
const BACKOFF_MIN: Duration = Duration::from_millis(5);
/// Longest pause: how late, at worst, the server notices freed descriptors.
const BACKOFF_MAX: Duration = Duration::from_millis(100);
/// At most one "server full" warning per this interval (each rejection is
/// also logged at debug level).
const FULL_WARNING_INTERVAL: Duration = Duration::from_secs(10);

pub(crate) fn run(shared: Arc<Shared>) {
    let mut backoff = BACKOFF_MIN;
    let mut failures = 0u64;
    let mut last_full_warning: Option<Instant> = None;
    loop {
        let accepted = shared.listener.accept();
        if shared.stopping.load(Ordering::Acquire) {
            // Taken from the queue while shutdown drained it: admitted like
            // the others, so that it is drained rather than dropped.
            if let Ok((stream, peer)) = accepted {
                admit(&shared, stream, peer);
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
                if !admit(&shared, stream, peer) {
                    let warn_now =
                        last_full_warning.is_none_or(|t| t.elapsed() >= FULL_WARNING_INTERVAL);
                    if warn_now {
                        warn!(
                            max = shared.config.max_connections,
                            "server full: rejecting new connections with close 1013"
                        );
                        last_full_warning = Some(Instant::now());
                    }
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
pub(crate) fn admit_queued(shared: &Arc<Shared>) -> usize {
    // The accept thread, blocked in `accept`, stays blocking; only these
    // calls return at once on an empty queue.
    if shared.listener.set_nonblocking(true).is_err() {
        return 0;
    }
    let mut admitted = 0;
    while let Ok((stream, peer)) = shared.listener.accept() {
        // Accepted sockets do not inherit O_NONBLOCK on Linux.
        admit(shared, stream, peer);
        admitted += 1;
    }
    admitted
}

/// Registers the connection and starts its worker. Returns false if it was
/// rejected because the server is full.
fn admit(shared: &Arc<Shared>, stream: TcpStream, peer: SocketAddr) -> bool {
    if let Err(e) = sys::configure(&stream, &shared.config.socket_options()) {
        // Typically the peer already reset the connection.
        debug!(%peer, "dropping connection: cannot set socket options: {e}");
        return true;
    }
    let tick = shared.clock.now();
    let config = &shared.config;
    let mut stream = Some(stream);
    let conn = shared.registry.insert(config.max_connections, |id| {
        let stream = stream.take().expect("called once");
        Conn::new(id, stream, peer, config.protocol, tick, config.max_outbox)
    });
    let Some(conn) = conn else {
        debug!(%peer, "rejected: server full");
        let stream = stream.expect("not taken when full");
        reject(shared, &stream, "server_full", "server full");
        return false;
    };
    let id = conn.id;
    shared.metrics.accepted.inc();
    // Sent before the worker exists, so it reaches the timer thread before
    // the worker's Deregister.
    let _ = shared.events.send(Event::Register { id, activity: tick });
    if let Err(e) = worker::spawn(shared, Arc::clone(&conn)) {
        warn!(%peer, "rejected: cannot start a worker thread: {e}");
        shared.registry.remove(id, Default::default());
        let _ = shared.events.send(Event::Deregister(id));
        reject(shared, conn.stream(), "no_thread", "server out of threads");
    }
    true
}

/// Tells a connection the server cannot take it (CLOSE 1013 with `reason`)
/// and closes it, without ever blocking the accept thread; counts it under
/// `label` (one of `metrics::REJECT_REASONS`).
fn reject(shared: &Shared, stream: &TcpStream, label: &'static str, reason: &str) {
    shared
        .metrics
        .rejected
        .get_or_create(&[("reason", label)])
        .inc();
    let mut close = Vec::new();
    let msg = Message::Close {
        code: code::TRY_AGAIN_LATER,
        reason,
    };
    if shared.config.protocol.encode(&msg, &mut close).is_err() {
        return;
    }
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
