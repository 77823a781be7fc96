//! What a connection's worker, the timer thread, shutdown and pushes share
//! about one connection.

pub(crate) mod buffer;
pub(crate) mod close;
pub(crate) mod id;
pub(crate) mod identity;
pub(crate) mod outbound;
pub(crate) mod ping;

use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::OnceLock;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::activity::Stamp;
use crate::protocol::Protocol;
use crate::server::conn::close::{CloseReason, CloseRequest};
use crate::server::conn::id::ConnId;
use crate::server::conn::id::IpKey;
use crate::server::conn::identity::Identity;
use crate::server::conn::outbound::{Outbound, Session};
use crate::server::rate::PublishLimit;
use crate::traffic::Traffic;

/// One connection's shared state.
///
/// The socket has a single reader, the worker thread, which reads without
/// any lock. Everything written goes through [`out`](Conn::out), the one
/// outbound path. Other threads end a connection only by asking through it
/// (which records why and wakes the worker with `shutdown(SHUT_RD)`); the
/// socket is closed when the last `Arc<Conn>` goes, which is the worker's
/// unless a registry reader holds a clone for a moment. No thread ever
/// closes a descriptor by number, so a reused number is never hit.
pub(crate) struct Conn {
    /// This connection's id.
    pub(crate) id: ConnId,
    /// The protocol this connection speaks (chosen by its listener).
    pub(crate) protocol: Protocol,
    /// Its listener's index in `Shared::listeners`.
    pub(crate) listener: usize,
    /// The socket's peer: the client, or a load balancer in front of it.
    socket_peer: SocketAddr,
    /// The real client's address from a PROXY protocol header, once read.
    client: OnceLock<SocketAddr>,
    /// When the connection was accepted.
    pub(crate) opened: Instant,
    /// The published tick ([`crate::activity::Clock`]) when the last
    /// complete message arrived. Written only by the worker.
    pub(crate) activity: Stamp,
    /// Messages and bytes in and out, written by the worker only.
    pub(crate) traffic: Traffic,
    /// The outbound path, which owns the socket.
    pub(crate) out: Outbound,
    /// The topics this connection subscribed to (cleared when it closes).
    pub(crate) subscriptions: Mutex<Vec<String>>,
    /// The code and reason of a close the application asked for through a
    /// server handle.
    pub(crate) app_close: OnceLock<(u16, String)>,
    /// The address this connection counts against in the per-address
    /// limit, once admitted there.
    pub(crate) ip_key: OnceLock<IpKey>,
    /// Who the connection belongs to, once authenticated (a refresh updates
    /// the expiry).
    pub(crate) identity: Mutex<Option<Identity>>,
    /// Its publish rate, from its first publish on (a connection that never
    /// publishes holds no buckets).
    pub(crate) publish_limit: Mutex<Option<Box<PublishLimit>>>,
    /// Parked: idle, in the parking thread's set, with no thread of its own
    /// (for `/connections`; written by the worker as it parks and resumes).
    pub(crate) parked: AtomicBool,
}

/// An accepted socket and what its listener says about it.
pub(crate) struct Accepted {
    pub(crate) stream: TcpStream,
    pub(crate) peer: SocketAddr,
    /// The listener's index in `Shared::listeners`.
    pub(crate) listener: usize,
    pub(crate) protocol: Protocol,
    /// A TLS listener's session for this connection.
    pub(crate) tls: Option<Session>,
}

impl Conn {
    /// A connection of `accepted`, whose outbox holds at most `max_outbox`
    /// bytes queued by other threads and whose writes may make no progress
    /// for at most `write_timeout` (`None`: no limit).
    pub(crate) fn new(
        id: ConnId,
        accepted: Accepted,
        now_tick: u64,
        max_outbox: usize,
        write_timeout: Option<Duration>,
    ) -> Conn {
        let Accepted {
            stream,
            peer,
            listener,
            protocol,
            tls,
        } = accepted;
        // A WebSocket connection speaks HTTP until its upgrade, a TLS one
        // has a handshake first: nothing of the protocol goes out before.
        let started = protocol != Protocol::Ws && tls.is_none();
        Conn {
            id,
            protocol,
            listener,
            socket_peer: peer,
            client: OnceLock::new(),
            opened: Instant::now(),
            activity: Stamp::new(now_tick),
            traffic: Traffic::default(),
            out: Outbound::new(stream, max_outbox, write_timeout, started, tls),
            subscriptions: Mutex::new(Vec::new()),
            app_close: OnceLock::new(),
            ip_key: OnceLock::new(),
            identity: Mutex::new(None),
            publish_limit: Mutex::new(None),
            parked: AtomicBool::new(false),
        }
    }

    /// The socket.
    pub(crate) fn stream(&self) -> &TcpStream {
        self.out.stream()
    }

    /// The client's address: from the PROXY protocol header when there was
    /// one, else the socket's peer.
    pub(crate) fn peer(&self) -> SocketAddr {
        *self.client.get().unwrap_or(&self.socket_peer)
    }

    /// Records the client address a PROXY protocol header gave.
    pub(crate) fn set_client(&self, client: SocketAddr) {
        let _ = self.client.set(client);
    }

    /// Why the connection closes when another thread asked (`request`).
    pub(crate) fn request_reason(&self, request: CloseRequest) -> CloseReason {
        match (request, self.app_close.get()) {
            (CloseRequest::Application | CloseRequest::ApplicationDrain, Some((code, reason))) => {
                CloseReason::Application {
                    code: *code,
                    reason: reason.clone(),
                }
            }
            _ => request.reason(),
        }
    }

    /// Shuts the socket down both ways: interrupts even a worker blocked in a
    /// write. The last resort of shutdown after the grace period.
    pub(crate) fn force_close(&self) {
        let _ = self.stream().shutdown(Shutdown::Both);
    }
}
