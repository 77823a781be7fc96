//! TLS on the outbound path: the session lives under the write right; the
//! worker reads and decrypts through it without blocking, and handshakes
//! run on a few threads of their own ([`HandshakePool`]).

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::sync::OnceLock;
use std::time::Instant;

use crossbeam_channel::Sender;
use rustls::ServerConnection;
use rustls_pki_types::CertificateDer;

use super::{Flushes, Outbound, Pumped};
use crate::server::conn::id::ConnId;
use crate::sys;

/// A connection's TLS session.
pub(crate) type Session = ServerConnection;

/// Why a TLS session failed.
pub(crate) type TlsError = rustls::Error;

/// At most this much plaintext is handed to a TLS session by one
/// non-blocking write (one record's worth).
pub(super) const TLS_CHUNK: usize = 16 * 1024;

impl Outbound {
    /// TLS: whether the session is still in its handshake.
    pub(crate) fn tls_handshaking(&self) -> bool {
        self.state
            .lock()
            .tls
            .as_ref()
            .is_some_and(|tls| tls.is_handshaking())
    }

    /// TLS: whether the session holds decrypted bytes not yet read.
    pub(crate) fn tls_buffered(&self) -> bool {
        let mut st = self.state.lock();
        let Some(tls) = st.tls.as_mut() else {
            return false;
        };
        // With nothing new to process this only reports the state.
        tls.process_new_packets()
            .is_ok_and(|io| io.plaintext_bytes_to_read() > 0)
    }

    /// TLS: the subject of the client's certificate, if it presented one.
    pub(crate) fn tls_peer_subject(&self) -> Option<String> {
        let st = self.state.lock();
        let cert = st.tls.as_ref()?.peer_certificates()?.first()?.clone();
        drop(st);
        subject(&cert)
    }

    /// TLS: whether the handshake was a resumption.
    pub(crate) fn tls_resumed(&self) -> bool {
        self.state
            .lock()
            .tls
            .as_ref()
            .is_some_and(|tls| tls.handshake_kind() == Some(rustls::HandshakeKind::Resumed))
    }

    /// TLS: feeds the session bytes that came before it could read the
    /// socket itself (those after a PROXY header).
    pub(crate) fn tls_feed(
        &self,
        handshakes: &HandshakePool,
        mut early: &[u8],
    ) -> Result<(), rustls::Error> {
        let mut st = self.state.lock();
        while !early.is_empty() {
            let tls = st.tls.as_mut().expect("a TLS connection");
            if tls.read_tls(&mut early).is_err() {
                break;
            }
            handshakes.process(&mut st.tls)?;
        }
        Ok(())
    }

    /// TLS: moves what the session has decrypted into `plain`, reading the
    /// socket for more without blocking (the worker waits for it to be
    /// readable outside the lock); with an empty `plain` (during the
    /// handshake) only feeds the session. The records the session answers
    /// with (handshake messages, alerts, tickets) go out without blocking,
    /// or wait for the next writer or the timer's flush.
    pub(crate) fn tls_pump(
        &self,
        id: ConnId,
        flushes: &Flushes,
        handshakes: &HandshakePool,
        plain: &mut [u8],
    ) -> Result<Pumped, rustls::Error> {
        let mut st = self.state.lock();
        let outcome = {
            let mut socket = NonBlockingRead(&self.stream);
            loop {
                let tls = st.tls.as_mut().expect("a TLS connection");
                if !plain.is_empty() {
                    match tls.reader().read(plain) {
                        Ok(0) => break Ok(Pumped::Closed),
                        Ok(n) => break Ok(Pumped::Plaintext(n)),
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                        // The socket ended without close_notify.
                        Err(_) => break Ok(Pumped::Closed),
                    }
                }
                match tls.read_tls(&mut socket) {
                    // The end of the peer's stream: the session now says
                    // so to the reader (above), or the handshake fails.
                    Ok(0) if plain.is_empty() => break Ok(Pumped::Closed),
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    // Nothing to read now, or the session's plaintext
                    // buffer is full (`plain` must be drained first): the
                    // worker decodes or waits, then comes back.
                    Err(_) => break Ok(Pumped::NeedBytes),
                }
                let processed = if tls.is_handshaking() {
                    handshakes.process(&mut st.tls)
                } else {
                    tls.process_new_packets().map(drop)
                };
                if let Err(e) = processed {
                    break Err(e);
                }
                let tls = st.tls.as_ref().expect("a TLS connection");
                if plain.is_empty() && !tls.is_handshaking() {
                    break Ok(Pumped::NeedBytes);
                }
            }
        };
        // Like any holder of the lock, flush what waits: here above all
        // the session's own answers.
        self.flush_nonblocking(&mut st);
        self.list_if_pending(id, flushes, &mut st);
        outcome
    }
}

/// Sends a prefix of `bytes` without blocking; returns how many of them
/// the connection took. Plain: what the kernel took. TLS: the session's
/// waiting records first (`WouldBlock` while they do not all go), then at
/// most [`TLS_CHUNK`] bytes of plaintext, encrypted and sent as far as the
/// socket takes them (the rest of those records waits in the session).
pub(super) fn send_now(
    stream: &TcpStream,
    tls: Option<&mut ServerConnection>,
    progress_at: &mut Instant,
    bytes: &[u8],
) -> io::Result<usize> {
    let Some(tls) = tls else {
        return sys::send_nonblocking(stream, bytes);
    };
    send_records(stream, tls, progress_at)?;
    let taken = tls.writer().write(&bytes[..bytes.len().min(TLS_CHUNK)])?;
    match send_records(stream, tls, progress_at) {
        Ok(()) => Ok(taken),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(taken),
        Err(e) => Err(e),
    }
}

/// Writes a TLS session's waiting records without blocking (each write
/// is progress); `WouldBlock` if some are left.
pub(super) fn send_records(
    stream: &TcpStream,
    tls: &mut ServerConnection,
    progress_at: &mut Instant,
) -> io::Result<()> {
    let mut socket = NonBlocking(stream);
    while tls.wants_write() {
        match tls.write_tls(&mut socket) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(_) => *progress_at = Instant::now(),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Hands `parts` to a TLS session and takes every record it then holds.
pub(super) fn encrypt(
    tls: &mut ServerConnection,
    first: &[u8],
    second: &[u8],
) -> io::Result<Vec<u8>> {
    tls.writer().write_all(first)?;
    tls.writer().write_all(second)?;
    let mut records = Vec::with_capacity(first.len() + second.len() + 64);
    while tls.wants_write() {
        tls.write_tls(&mut records)?;
    }
    Ok(records)
}

/// A socket as an `io::Read` that never blocks.
struct NonBlockingRead<'a>(&'a TcpStream);

impl Read for NonBlockingRead<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        sys::recv_nonblocking(self.0, buf)
    }
}

/// A socket as an `io::Write` that never blocks.
struct NonBlocking<'a>(&'a TcpStream);

impl Write for NonBlocking<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        sys::send_nonblocking(self.0, buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A handshake's work for a [`HandshakePool`] thread: the session, and
/// where to hand it back with the outcome.
type HandshakeJob = (
    Box<ServerConnection>,
    Sender<(Box<ServerConnection>, Result<(), rustls::Error>)>,
);

/// The CPU part of TLS handshakes (the session's `process_new_packets`
/// while it handshakes), on a few threads of their own, `wheel-tls`, one
/// per core, started at the first handshake.
///
/// Memory, not speed, is why. A handshake allocates and frees many small
/// blocks (certificate encoding, key schedule, transcript), and glibc's
/// allocator keeps freed small blocks in a cache per thread. Done on the
/// connection's own thread, every one of ten thousand idle TLS connections
/// kept about 9 KiB of such blocks for good. Here a handful of threads keep
/// one cache each, however many connections there are. The worker waits
/// for its session to come back: it is the session's only user before the
/// handshake ends, and it holds the session's lock meanwhile. Handshake
/// work is bounded to one thread per core as a result: a reconnect storm
/// queues here instead of running ten thousand handshakes at once.
#[derive(Default)]
pub(crate) struct HandshakePool {
    /// The threads' queue; `None` if no thread could be started (the
    /// worker then does the work itself).
    jobs: OnceLock<Option<Sender<HandshakeJob>>>,
}

impl HandshakePool {
    /// Runs the session's `process_new_packets` on a pool thread, and puts
    /// the session back in `slot`.
    ///
    /// # Panics
    ///
    /// If `slot` is empty, or a pool thread panicked with the session.
    pub(crate) fn process(
        &self,
        slot: &mut Option<Box<ServerConnection>>,
    ) -> Result<(), rustls::Error> {
        let session = slot.take().expect("a TLS connection");
        let (reply, answer) = crossbeam_channel::bounded(1);
        let queued = match self.jobs.get_or_init(HandshakePool::start) {
            Some(jobs) => jobs.send((session, reply)).map_err(|e| e.into_inner().0),
            None => Err(session),
        };
        let (session, result) = match queued {
            Ok(()) => answer.recv().expect("a handshake thread answers"),
            Err(mut session) => {
                let result = session.process_new_packets().map(drop);
                (session, result)
            }
        };
        *slot = Some(session);
        result
    }

    fn start() -> Option<Sender<HandshakeJob>> {
        let (jobs, queue) = crossbeam_channel::unbounded::<HandshakeJob>();
        let threads = std::thread::available_parallelism().map_or(2, usize::from);
        let mut started = 0;
        for _ in 0..threads {
            let queue = queue.clone();
            let spawned = std::thread::Builder::new()
                .name("wheel-tls".into())
                .spawn(move || {
                    // Ends when the server (the queue's sender) is gone.
                    while let Ok((mut session, reply)) = queue.recv() {
                        let result = session.process_new_packets().map(drop);
                        let _ = reply.send((session, result));
                    }
                });
            started += usize::from(spawned.is_ok());
        }
        (started > 0).then_some(jobs)
    }
}

/// The subject of a client's certificate (its common name, else the whole
/// distinguished name), the connection's identity.
pub(crate) fn subject(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert).ok()?;
    let subject = parsed.subject();
    let cn = subject
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_owned);
    Some(cn.unwrap_or_else(|| subject.to_string()))
}
