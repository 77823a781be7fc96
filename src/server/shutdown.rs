//! Graceful shutdown: stop accepting, drain every connection, force what
//! is left after the grace period, then stop the timer and the endpoint.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tracing::{debug, info, warn};

use crate::server::admin;
use crate::server::conn::close::CloseRequest;
use crate::server::conn::outbound::DrainRefused;
use crate::server::serve::acceptor;
use crate::server::serve::handler::Handler;
use crate::server::serve::shared::Shared;
use crate::server::serve::timer;
use crate::sys;
use crate::traffic::Kind;

/// After the grace period, how long to wait for force-closed workers (at
/// each of the two steps).
const FORCED_CLOSE_WAIT: Duration = Duration::from_secs(1);

/// The threads a running server owns besides its workers.
pub(crate) struct Threads {
    /// The application, for the connections admitted from the accept
    /// queues as accepting stops.
    pub(crate) handler: Arc<dyn Handler>,
    pub(crate) acceptors: Vec<JoinHandle<()>>,
    pub(crate) timer: JoinHandle<()>,
    /// The parking threads (`--park-after`).
    pub(crate) parkers: Vec<JoinHandle<()>>,
    pub(crate) endpoint: Option<admin::Endpoint>,
    /// The Redis follower (`--redis`).
    pub(crate) relay: Option<JoinHandle<()>>,
}

/// Shuts the server down (see [`Server::shutdown`](crate::server::Server::shutdown));
/// returns whether every connection finished within the grace period.
pub(crate) fn run(shared: &Arc<Shared>, threads: Threads) -> bool {
    let Threads {
        handler,
        acceptors,
        timer,
        parkers,
        endpoint,
        relay,
    } = threads;
    stop_accepting(shared, &handler, acceptors);
    let clean = drain(shared);
    // Every connection is gone (or was forced closed, which unparked it).
    if let Some(parking) = &shared.parking {
        parking.stop();
        for parker in parkers {
            let _ = parker.join();
        }
    }
    // Draining connections still get their topics' messages.
    if let (Some(relay), Some(redis)) = (relay, shared.topics.redis()) {
        redis.stop();
        let _ = relay.join();
    }
    timer::stop(shared, timer.thread());
    let _ = timer.join();
    // Every connection is gone: the parked threads exit.
    shared.threads.close();
    // Last, so that /healthz answers 503 for the whole drain.
    if let Some(mut endpoint) = endpoint {
        endpoint.stop();
    }
    // The totals that say whether the drain lost anything: with a clean
    // drain and an answering handler, every DATA read was answered and
    // nothing was discarded.
    let (received, sent) = shared.registry.traffic();
    let data = Kind::Data as usize;
    info!(
        data_received = received.frames[data],
        data_sent = sent.frames[data],
        // Published messages pushed to subscribers by other threads, which
        // `data_sent` (the workers' answers) does not count.
        deliveries = shared.metrics.deliveries.get(),
        discarded_bytes = shared.metrics.discarded_bytes.get(),
        drains_forced = shared.metrics.drains_forced.get(),
        "shut down"
    );
    clean
}

/// Marks the server as stopping (`/healthz` answers 503 from now on),
/// admits what waits in the accept queues, and stops the accept threads.
pub(crate) fn stop_accepting(
    shared: &Arc<Shared>,
    handler: &Arc<dyn Handler>,
    acceptors: Vec<JoinHandle<()>>,
) {
    shared.stopping.store(true, Ordering::Release);
    let queued = acceptor::admit_queued(shared, handler);
    if queued > 0 {
        debug!(
            queued,
            "admitted the accept queues before closing the listeners"
        );
    }
    for listening in &shared.listeners {
        sys::wake_acceptor(&listening.socket);
    }
    for acceptor in acceptors {
        acceptor.thread().unpark();
        let _ = acceptor.join();
    }
}

/// Sends CLOSE 1001 to every connection and waits for them to drain, then
/// forces the rest: first as an idle timeout would (the worker answers
/// what it has read and hangs up), then, for workers stuck in a write, both
/// ways.
fn drain(shared: &Shared) -> bool {
    let open = shared.registry.snapshot();
    if !open.is_empty() {
        info!(
            connections = open.len(),
            grace = ?shared.config.shutdown_grace,
            "shutting down: draining connections"
        );
    }
    let drains = shared
        .metrics
        .drains
        .get_or_create(&[("reason", "shutdown")])
        .clone();
    for conn in &open {
        let close = shared.frames.drain(conn.protocol, CloseRequest::Shutdown);
        match conn
            .out
            .drain(conn.id, &shared.flushes, CloseRequest::Shutdown, close)
        {
            Ok(_) => {
                drains.inc();
            }
            // A worker lingering after its own CLOSE is cut short, so the
            // drain does not wait for it.
            Err(DrainRefused::Finishing) => conn.out.wake(),
            Err(DrainRefused::Requested) => {}
        }
    }
    drop(open);
    let clean = shared
        .registry
        .wait_empty(Instant::now() + shared.config.shutdown_grace);
    if clean {
        return true;
    }
    let stuck = shared.registry.snapshot();
    warn!(
        connections = stuck.len(),
        grace = ?shared.config.shutdown_grace,
        "connections still draining after the grace period: forcing them closed"
    );
    for conn in &stuck {
        shared.metrics.drains_forced.inc();
        conn.out.wake();
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
    false
}
