//! Socket options and the Linux behaviour the server relies on: the one place
//! for OS details.
//!
//! The rest of the crate depends on this contract:
//!
//! * [`configure`] sets `TCP_NODELAY`, TCP keepalive (`SO_KEEPALIVE`,
//!   `TCP_KEEPIDLE`, `TCP_KEEPINTVL`, `TCP_KEEPCNT`), `TCP_USER_TIMEOUT` and
//!   the send timeout (`SO_SNDTIMEO`) of a connected socket, or of the
//!   listener: accepted sockets inherit them, which [`has_options`] checks
//!   on the first one before the accept thread relies on it.
//! * [`wake_reader`] (`shutdown(SHUT_RD)`) makes a `read` blocked on the
//!   socket in another thread return: first any bytes already queued, then
//!   end-of-file. It does not close the descriptor, so it is safe against a
//!   descriptor number being reused: the socket object stays owned by its
//!   connection until dropped.
//! * [`wake_acceptor`] (`shutdown(SHUT_RD)` on a listener) makes a blocked
//!   `accept` fail with `EINVAL`, so the accept thread can notice shutdown
//!   without a self-connect (which would need a free descriptor).
//! * [`send_nonblocking`] writes without blocking even on a blocking socket
//!   (`MSG_DONTWAIT`), and without `SIGPIPE` (`MSG_NOSIGNAL`).
//!
//! All of this is Linux behaviour (checked by the integration tests); other
//! Unix systems differ in the shutdown semantics.

use std::io;
use std::net::{Shutdown, TcpListener, TcpStream};
use std::time::Duration;

use socket2::{SockRef, TcpKeepalive};

/// TCP keepalive settings: after `idle` without traffic the kernel sends a
/// probe every `interval`; after `count` unanswered probes the connection is
/// dead and reads fail with `ETIMEDOUT`.
///
/// The kernel counts these in whole seconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Keepalive {
    /// Idle time before the first probe.
    pub idle: Duration,
    /// Time between probes.
    pub interval: Duration,
    /// Unanswered probes before the connection is declared dead.
    pub count: u32,
}

impl Keepalive {
    /// The longest a dead peer goes unnoticed: `idle + interval * count`.
    pub fn detection_time(&self) -> Duration {
        self.idle + self.interval * self.count
    }
}

impl Default for Keepalive {
    /// 30 s idle, then 3 probes 10 s apart: a dead peer is found within a
    /// minute, and the probes refresh NAT and firewall state well inside the
    /// usual idle limits of such middleboxes.
    fn default() -> Keepalive {
        Keepalive {
            idle: Duration::from_secs(30),
            interval: Duration::from_secs(10),
            count: 3,
        }
    }
}

/// Options applied to every connected socket.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct SocketOptions {
    /// TCP keepalive, or `None` to leave it off.
    pub(crate) keepalive: Option<Keepalive>,
    /// `TCP_USER_TIMEOUT`: how long sent data may stay unacknowledged.
    pub(crate) user_timeout: Option<Duration>,
    /// `SO_SNDTIMEO`: how long one blocking write may wait for buffer space.
    pub(crate) write_timeout: Option<Duration>,
}

/// Applies `opts` (and `TCP_NODELAY`) to a connected socket, or to a
/// listener whose accepted sockets inherit them (see [`has_options`]).
pub(crate) fn configure(sock: SockRef<'_>, opts: &SocketOptions) -> io::Result<()> {
    sock.set_tcp_nodelay(true)?;
    if let Some(k) = opts.keepalive {
        let params = TcpKeepalive::new()
            .with_time(k.idle)
            .with_interval(k.interval)
            .with_retries(k.count);
        sock.set_tcp_keepalive(&params)?;
    }
    if let Some(timeout) = opts.user_timeout {
        sock.set_tcp_user_timeout(Some(timeout))?;
    }
    sock.set_write_timeout(opts.write_timeout)?;
    Ok(())
}

/// Whether a connected socket carries exactly what [`configure`] sets.
/// Linux copies a listener's socket options to the sockets it accepts;
/// the accept thread checks the first one with this before it relies on
/// that and skips [`configure`] (six system calls per connection).
pub(crate) fn has_options(stream: &TcpStream, opts: &SocketOptions) -> io::Result<bool> {
    let sock = SockRef::from(stream);
    let keepalive_ok = match opts.keepalive {
        Some(k) => {
            sock.keepalive()?
                && sock.tcp_keepalive_time()? == k.idle
                && sock.tcp_keepalive_interval()? == k.interval
                && sock.tcp_keepalive_retries()? == k.count
        }
        None => !sock.keepalive()?,
    };
    let user_timeout_ok = match opts.user_timeout {
        Some(timeout) => sock.tcp_user_timeout()? == Some(timeout),
        None => true,
    };
    Ok(sock.tcp_nodelay()?
        && keepalive_ok
        && user_timeout_ok
        && sock.write_timeout()? == opts.write_timeout)
}

/// Wakes a thread blocked reading `stream` (see the module docs).
pub(crate) fn wake_reader(stream: &TcpStream) {
    // ENOTCONN when the peer already reset the connection: the reader is
    // awake anyway.
    let _ = stream.shutdown(Shutdown::Read);
}

/// Wakes the thread blocked in `accept` on `listener`.
pub(crate) fn wake_acceptor(listener: &TcpListener) {
    let _ = SockRef::from(listener).shutdown(Shutdown::Read);
}

/// Blocks until `stream` has bytes to read, or its end (or an error), without
/// taking any: a wait that needs no receive buffer.
pub(crate) fn wait_readable(stream: &TcpStream) -> io::Result<()> {
    let mut byte = [std::mem::MaybeUninit::uninit()];
    SockRef::from(stream).peek(&mut byte).map(drop)
}

/// Whether `stream` has bytes waiting to be read (or cannot tell: an
/// error counts as yes, so that the caller takes the cautious path).
pub(crate) fn has_unread(stream: &TcpStream) -> bool {
    let mut byte = [std::mem::MaybeUninit::uninit()];
    match SockRef::from(stream).recv_with_flags(&mut byte, libc::MSG_PEEK | libc::MSG_DONTWAIT) {
        // The end of the stream: nothing to answer.
        Ok(0) => false,
        Ok(_) => true,
        Err(e) => e.kind() != io::ErrorKind::WouldBlock,
    }
}

/// Sends without blocking; returns how many bytes the kernel took.
pub(crate) fn send_nonblocking(stream: &TcpStream, buf: &[u8]) -> io::Result<usize> {
    SockRef::from(stream).send_with_flags(buf, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL)
}

/// What an `accept` error means for the accept loop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum AcceptError {
    /// Out of descriptors or kernel memory: retrying at once would spin, so
    /// back off until something is freed.
    Exhausted,
    /// A problem with the one pending connection (it was aborted, or a
    /// network error surfaced through it): skip it.
    Connection,
    /// Anything else: unexpected; back off as for exhaustion.
    Other,
}

/// A short lowercase errno name for a metric label (`emfile`, `econnaborted`
/// ...), or `other`.
pub(crate) fn errno_name(err: &io::Error) -> &'static str {
    match err.raw_os_error() {
        Some(libc::EMFILE) => "emfile",
        Some(libc::ENFILE) => "enfile",
        Some(libc::ENOBUFS) => "enobufs",
        Some(libc::ENOMEM) => "enomem",
        Some(libc::ECONNABORTED) => "econnaborted",
        Some(libc::EINTR) => "eintr",
        Some(libc::EAGAIN) => "eagain",
        Some(libc::EPROTO) => "eproto",
        Some(libc::EPERM) => "eperm",
        Some(libc::EINVAL) => "einval",
        _ => "other",
    }
}

/// Classifies an error returned by `accept`.
pub(crate) fn classify_accept_error(err: &io::Error) -> AcceptError {
    match err.raw_os_error() {
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM) => AcceptError::Exhausted,
        // accept(2): "Linux accept() passes already-pending network errors on
        // the new socket as an error code ... treat them like EAGAIN".
        Some(
            libc::ECONNABORTED
            | libc::EINTR
            | libc::EAGAIN
            | libc::EPROTO
            | libc::EPERM
            | libc::ENETDOWN
            | libc::ENOPROTOOPT
            | libc::EHOSTDOWN
            | libc::ENONET
            | libc::EHOSTUNREACH
            | libc::EOPNOTSUPP
            | libc::ENETUNREACH,
        ) => AcceptError::Connection,
        _ => AcceptError::Other,
    }
}

/// Length of the accept queue. Far above std's 128 so that a burst of
/// reconnecting clients is queued, not refused; the kernel caps it at
/// `net.core.somaxconn`.
const LISTEN_BACKLOG: i32 = 4096;

/// Binds a listening socket with `SO_REUSEADDR` (so a restarted server can
/// bind while old connections sit in TIME_WAIT) and a deep accept queue.
/// With `reuse_port`, `SO_REUSEPORT` lets several processes share the port,
/// the kernel spreading new connections across them.
pub(crate) fn listen(addr: std::net::SocketAddr, reuse_port: bool) -> io::Result<TcpListener> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    Ok(socket.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options() -> SocketOptions {
        SocketOptions {
            keepalive: Some(Keepalive {
                idle: Duration::from_secs(17),
                interval: Duration::from_secs(3),
                count: 4,
            }),
            user_timeout: Some(Duration::from_millis(12_000)),
            write_timeout: Some(Duration::from_secs(5)),
        }
    }

    #[test]
    fn accepted_sockets_inherit_the_listeners_options() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        configure(SockRef::from(&listener), &options()).unwrap();
        let _client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (accepted, _) = listener.accept().unwrap();
        assert!(has_options(&accepted, &options()).unwrap());
    }

    #[test]
    fn a_socket_without_the_options_is_told_apart() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let _client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (accepted, _) = listener.accept().unwrap();
        assert!(!has_options(&accepted, &options()).unwrap());
        configure(SockRef::from(&accepted), &options()).unwrap();
        assert!(has_options(&accepted, &options()).unwrap());
        // Another keepalive setting is not the same options.
        let mut other = options();
        other.keepalive.as_mut().unwrap().count = 5;
        assert!(!has_options(&accepted, &other).unwrap());
    }
}
