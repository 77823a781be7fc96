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
//! * [`Epoll`] watches parked sockets one readiness at a time
//!   (`EPOLLONESHOT`, level-triggered). A socket woken with
//!   `shutdown(SHUT_RD)` is reported readable there too, so the same wake-up
//!   reaches a parked connection and a blocked worker.
//!
//! All of this is Linux behaviour (checked by the integration tests); other
//! Unix systems differ in the shutdown semantics.

use std::io;
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
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

/// Receives without blocking: `WouldBlock` when nothing is there.
#[allow(unsafe_code)]
pub(crate) fn recv_nonblocking(stream: &TcpStream, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `MaybeUninit<u8>` has the layout of `u8`, and `recv` only
    // writes bytes into the slice (never uninitialised ones), so the
    // initialised buffer stays initialised; this is how socket2's own
    // `Read` implementation calls it.
    let uninit =
        unsafe { &mut *(std::ptr::from_mut::<[u8]>(buf) as *mut [std::mem::MaybeUninit<u8>]) };
    SockRef::from(stream).recv_with_flags(uninit, libc::MSG_DONTWAIT)
}

/// Waits up to `timeout` for any of `streams` to have bytes to read (or
/// their end, or an error); which ones do. An interrupted wait reports
/// none.
pub(crate) fn poll_readable(streams: &[&TcpStream], timeout: Duration) -> io::Result<Vec<bool>> {
    let mut fds: Vec<libc::pollfd> = streams.iter().map(|s| readable(s)).collect();
    poll(&mut fds, timeout)?;
    Ok(fds.iter().map(|f| f.revents != 0).collect())
}

/// Waits up to `timeout` for `stream` to have bytes to read (or its end, or
/// an error), taking none; whether it has. An interrupted wait reports
/// `false`, so the caller waits again with what is left of its time.
pub(crate) fn wait_readable_for(stream: &TcpStream, timeout: Duration) -> io::Result<bool> {
    let mut fds = [readable(stream)];
    poll(&mut fds, timeout)?;
    Ok(fds[0].revents != 0)
}

/// A `pollfd` asking whether `stream` is readable.
fn readable(stream: &TcpStream) -> libc::pollfd {
    libc::pollfd {
        fd: stream.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    }
}

/// `poll(2)` on `fds` for up to `timeout`, rounded up to a whole
/// millisecond so that a wait never ends before its time. An interrupted
/// wait leaves every `revents` at 0.
#[allow(unsafe_code)]
fn poll(fds: &mut [libc::pollfd], timeout: Duration) -> io::Result<()> {
    let ms = libc::c_int::try_from(timeout.as_micros().div_ceil(1000)).unwrap_or(libc::c_int::MAX);
    // SAFETY: `fds` is a valid array of `fds.len()` pollfd structs that
    // lives across the call; the descriptors are borrowed from open
    // streams.
    let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
    if n < 0 {
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
    Ok(())
}

/// An epoll set whose sockets are each watched for one readiness at a
/// time (`EPOLLONESHOT`, level-triggered): once a socket is reported, it is
/// reported again only after [`rearm`](Epoll::rearm), so whoever handles
/// the report owns the socket until it re-arms or removes it. Level
/// triggering means a socket re-armed with bytes still unread is reported
/// at once, never missed (mio offers only edge triggering, where a missed
/// edge would leave a socket unwatched with input waiting).
///
/// An `eventfd` in the set, under its own token, lets another thread end a
/// [`wait`](Epoll::wait) early ([`wake`](Epoll::wake)).
pub(crate) struct Epoll {
    epoll: OwnedFd,
    waker: OwnedFd,
}

impl Epoll {
    /// The token [`wait`](Epoll::wait) reports for a [`wake`](Epoll::wake).
    pub(crate) const WAKE: u64 = u64::MAX;

    /// A new, empty set (with its waker).
    #[allow(unsafe_code)]
    pub(crate) fn new() -> io::Result<Epoll> {
        // SAFETY: plain system calls; each descriptor returned is checked
        // and owned at once.
        let epoll = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if epoll < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `epoll` is a new descriptor no one else owns.
        let epoll = unsafe { OwnedFd::from_raw_fd(epoll) };
        // SAFETY: as above.
        let waker = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if waker < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `waker` is a new descriptor no one else owns.
        let waker = unsafe { OwnedFd::from_raw_fd(waker) };
        let set = Epoll { epoll, waker };
        set.ctl(
            libc::EPOLL_CTL_ADD,
            set.waker.as_raw_fd(),
            libc::EPOLLIN as u32,
            Epoll::WAKE,
        )?;
        Ok(set)
    }

    #[allow(unsafe_code)]
    fn ctl(&self, op: libc::c_int, fd: RawFd, events: u32, token: u64) -> io::Result<()> {
        let mut event = libc::epoll_event { events, u64: token };
        // SAFETY: `event` is valid for the call; `fd` is borrowed from an
        // open socket (or our own eventfd).
        let r = unsafe { libc::epoll_ctl(self.epoll.as_raw_fd(), op, fd, &mut event) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// The readiness a socket is watched for: input, its end, an error.
    const READABLE: u32 = (libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLONESHOT) as u32;

    /// Watches `stream` for its next readiness, reported with `token`.
    pub(crate) fn add(&self, stream: &TcpStream, token: u64) -> io::Result<()> {
        self.ctl(
            libc::EPOLL_CTL_ADD,
            stream.as_raw_fd(),
            Epoll::READABLE,
            token,
        )
    }

    /// Watches a reported `stream` again.
    pub(crate) fn rearm(&self, stream: &TcpStream, token: u64) -> io::Result<()> {
        self.ctl(
            libc::EPOLL_CTL_MOD,
            stream.as_raw_fd(),
            Epoll::READABLE,
            token,
        )
    }

    /// Stops watching `stream`.
    pub(crate) fn remove(&self, stream: &TcpStream) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_DEL, stream.as_raw_fd(), 0, 0)
    }

    /// Ends the current (or the next) [`wait`](Epoll::wait) with
    /// [`Epoll::WAKE`].
    #[allow(unsafe_code)]
    pub(crate) fn wake(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64 to our own eventfd. It
        // fails only when the counter would overflow, which a wake
        // already pending makes harmless.
        let _ = unsafe {
            libc::write(
                self.waker.as_raw_fd(),
                std::ptr::from_ref(&one).cast(),
                std::mem::size_of::<u64>(),
            )
        };
    }

    /// Waits (without limit) until something is reported, and puts the
    /// tokens reported into `tokens` (cleared first). A wake is reported
    /// once per [`wake`](Epoll::wake) batch: the waker is reset here.
    #[allow(unsafe_code)]
    pub(crate) fn wait(&self, tokens: &mut Vec<u64>) -> io::Result<()> {
        const BATCH: usize = 256;
        let mut events = [libc::epoll_event { events: 0, u64: 0 }; BATCH];
        tokens.clear();
        // SAFETY: `events` holds BATCH valid entries for the kernel to fill.
        let n = unsafe {
            libc::epoll_wait(
                self.epoll.as_raw_fd(),
                events.as_mut_ptr(),
                BATCH as libc::c_int,
                -1,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            return if e.kind() == io::ErrorKind::Interrupted {
                Ok(())
            } else {
                Err(e)
            };
        }
        for event in &events[..n as usize] {
            let token = event.u64;
            if token == Epoll::WAKE {
                let mut count = 0u64;
                // SAFETY: reads 8 bytes into a live u64 from our own
                // (non-blocking) eventfd, resetting it.
                let _ = unsafe {
                    libc::read(
                        self.waker.as_raw_fd(),
                        std::ptr::from_mut(&mut count).cast(),
                        std::mem::size_of::<u64>(),
                    )
                };
            }
            tokens.push(token);
        }
        Ok(())
    }
}

/// Sends without blocking; returns how many bytes the kernel took.
pub(crate) fn send_nonblocking(stream: &TcpStream, buf: &[u8]) -> io::Result<usize> {
    SockRef::from(stream).send_with_flags(buf, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL)
}

/// Stack kept below the frame of [`trim_stack`]: the libc wrappers it calls
/// after computing the range (`madvise` is a bare system call stub) use a
/// few dozen bytes of it.
const STACK_MARGIN: usize = 1024;

/// Gives back to the kernel the whole pages of the calling thread's stack
/// more than [`STACK_MARGIN`] below its current frame, which a deep call that has
/// returned left resident: a worker that ran a WebSocket upgrade, a JWT
/// check or a PROXY header parse would otherwise keep those pages for the
/// rest of its connection, idle or not. The pages read as zeros when next
/// touched, which is all an unused stack part ever holds.
///
/// Only for threads that own their stack (workers); never inline, so that
/// its caller's frame is the one kept.
#[inline(never)]
#[allow(unsafe_code)]
pub(crate) fn trim_stack() {
    let marker = 0u8;
    let here = std::hint::black_box(&marker) as *const u8 as usize;
    // SAFETY: `pthread_getattr_np` fills `attr` for the calling thread,
    // which is then read and destroyed; `madvise(MADV_DONTNEED)` is applied
    // only to whole pages of this thread's own stack mapping that lie more
    // than STACK_MARGIN below the current frame. Nothing lives there: the
    // frames that used them have returned, and the one call made after the
    // range is computed (the `madvise` stub) uses far less than the margin.
    unsafe {
        let mut attr = std::mem::MaybeUninit::<libc::pthread_attr_t>::uninit();
        if libc::pthread_getattr_np(libc::pthread_self(), attr.as_mut_ptr()) != 0 {
            return;
        }
        let mut attr = attr.assume_init();
        let mut low: *mut libc::c_void = std::ptr::null_mut();
        let mut size: libc::size_t = 0;
        let got = libc::pthread_attr_getstack(&attr, &mut low, &mut size) == 0;
        libc::pthread_attr_destroy(&mut attr);
        let page = match libc::sysconf(libc::_SC_PAGESIZE) {
            n if n > 0 => n as usize,
            _ => return,
        };
        let low = low as usize;
        if !got || here <= low || here > low + size {
            return;
        }
        let start = (low + page - 1) & !(page - 1);
        let end = here.saturating_sub(STACK_MARGIN) & !(page - 1);
        if end > start {
            libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED);
        }
    }
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
pub(crate) const LISTEN_BACKLOG: i32 = 4096;

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

    /// Touches about `depth` bytes of stack, and returns a value that
    /// depends on all of it.
    #[inline(never)]
    fn deep(depth: usize) -> u64 {
        let mut block = [0u8; 1024];
        for (i, b) in block.iter_mut().enumerate() {
            *b = (i ^ depth) as u8;
        }
        let here: u64 = std::hint::black_box(&block)
            .iter()
            .map(|&b| u64::from(b))
            .sum();
        if depth <= 1024 {
            here
        } else {
            here + deep(depth - 1024)
        }
    }

    /// Resident KiB of the mapping holding `addr`, from /proc/self/smaps.
    fn resident_kib(addr: usize) -> u64 {
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let mut inside = false;
        for line in smaps.lines() {
            if let Some((range, _)) = line.split_once(' ')
                && let Some((lo, hi)) = range.split_once('-')
                && let (Ok(lo), Ok(hi)) =
                    (usize::from_str_radix(lo, 16), usize::from_str_radix(hi, 16))
            {
                inside = (lo..hi).contains(&addr);
            } else if inside && let Some(kib) = line.strip_prefix("Rss:") {
                return kib.trim().trim_end_matches(" kB").trim().parse().unwrap();
            }
        }
        panic!("no mapping holds {addr:#x}");
    }

    #[test]
    fn trimming_the_stack_gives_its_deep_pages_back_and_keeps_it_working() {
        std::thread::Builder::new()
            .stack_size(1 << 20)
            .spawn(|| {
                let marker = 0u8;
                let stack = std::hint::black_box(&marker) as *const u8 as usize;
                let expected = deep(512 * 1024);
                let before = resident_kib(stack);
                assert!(before >= 512, "the recursion touched {before} KiB");
                trim_stack();
                let after = resident_kib(stack);
                assert!(
                    after + 400 <= before,
                    "{before} KiB resident, then {after} KiB"
                );
                // The pages come back, zeroed, as the stack grows again.
                assert_eq!(deep(512 * 1024), expected);
            })
            .unwrap()
            .join()
            .unwrap();
    }

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
