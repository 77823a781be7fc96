//! The serve loop: read, decode, answer, write, until the connection must
//! close; then the CLOSE, the linger for the peer's FIN, and a later AUTH's
//! refresh of the credentials.

use std::io::{self, Read};
use std::net::Shutdown;
use std::sync::Arc;
use std::time::Instant;

use tracing::debug;

use crate::protocol::{Decoded, Message};
use crate::server::conn::Conn;
use crate::server::conn::close::{CloseReason, CloseState, TcpTimeout};
use crate::server::conn::ping::PingPolicy;
use crate::server::serve::handler::{Handler, Session};
use crate::server::serve::shared::{Shared, close_frame};
use crate::sys;
use crate::traffic::{Kind, Tally};

use super::admit::record_identity;
use super::{LINGER, LINGER_BYTES, QUIET_TICKS, RETAIN_OUTPUT, Served, Worker};

impl Worker {
    /// Serves the connection until it must close (and says why) or, idle
    /// for `park_after`, may be parked.
    pub(super) fn serve(&mut self) -> Served {
        let limit = self.decoder.max_message_len();
        // Bytes that came in with a PROXY header, or that the parking
        // thread read, are already buffered.
        if !self.input.data().is_empty()
            && let Err(reason) = self.answer_buffered()
        {
            return reason.into();
        }
        // Admission's buffer (a PROXY header, an upgrade request) is not
        // kept: the connection waits for its first message holding none.
        self.input.release();
        loop {
            // Everything read is answered: a close may come from the timer.
            self.conn.out.end_read();
            let waited_from = self.shared.clock.now();
            if self.input.is_released() && !self.tls_holds_bytes() {
                // A quiet connection waits without a buffer; the read below
                // then finds the bytes (or the end) at once.
                match self.wait() {
                    Ok(true) => {}
                    Ok(false) => return Served::Park,
                    Err(e) if waits_again(&e) => continue,
                    Err(e) => return self.requested_or(self.read_error(&e)).into(),
                }
            }
            match self.read_input(limit) {
                Ok(0) => return self.requested_or(CloseReason::PeerClosed).into(),
                Ok(_) => {}
                Err(e) if waits_again(&e) => {
                    // A busy connection gone quiet for `park_after` (its
                    // receive timeout): with no message begun, it waits
                    // as a quiet one does, and may park.
                    if self.input.data().is_empty() {
                        self.release_buffers();
                    }
                    continue;
                }
                Err(e) => return self.requested_or(self.read_error(&e)).into(),
            }
            if !self.conn.out.begin_read() {
                // Arrived as the timer sent its CLOSE: past the end.
                self.discard_input();
                continue;
            }
            if let Err(reason) = self.answer_buffered() {
                return reason.into();
            }
            // Quiet: the bytes took more than a tick to come. Nothing is
            // pending, so give the buffers back until the next ones.
            if self.shared.clock.now() >= waited_from + QUIET_TICKS {
                self.release_buffers();
            }
        }
    }

    /// Sets the socket's receive timeout to `park_after`, so that a busy
    /// connection's blocking read (it reads without waiting first) returns
    /// once it has gone quiet, to be parked.
    pub(super) fn time_reads_for_parking(&self) {
        if let Some(after) = self.park_after
            && let Err(e) = self.conn.stream().set_read_timeout(Some(after))
        {
            debug!(conn = %self.conn.id, "cannot set the receive timeout: {e}");
        }
    }

    /// Waits until the socket is readable: `Ok(true)`. With parking on,
    /// only until the connection has had no DATA for `park_after`:
    /// `Ok(false)` then says to park it (unless a close is under way, as
    /// a drain's is: it then waits for the end here).
    fn wait(&self) -> io::Result<bool> {
        let stream = self.conn.stream();
        if let Some(after) = self.park_after {
            let tick = self.shared.config.tick;
            loop {
                // The coarse clock the per-message path already reads: a
                // connection may park up to a tick early.
                let quiet_ticks = self.shared.clock.now().saturating_sub(self.data_at);
                let quiet = tick.saturating_mul(u32::try_from(quiet_ticks).unwrap_or(u32::MAX));
                let left = after.saturating_sub(quiet);
                // With no time left, a last look: what is already there
                // (the bytes, or the end, that unparked it) is read here.
                if sys::wait_readable_for(stream, left)? {
                    return Ok(true);
                }
                if left.is_zero() {
                    if self.conn.out.close_state() == CloseState::Open {
                        return Ok(false);
                    }
                    break;
                }
            }
        }
        sys::wait_readable(stream).map(|()| true)
    }

    /// Drops what is buffered, unanswered and counted: bytes that came
    /// after the connection's CLOSE.
    #[inline(never)]
    pub(super) fn discard_input(&mut self) {
        let discarded = self.input.data().len();
        self.input.consume(discarded);
        self.shared.metrics.discarded_bytes.inc_by(discarded as u64);
        debug!(conn = %self.conn.id, discarded, "discarded input after the CLOSE");
    }

    /// Answers every complete message in the input buffer and writes the
    /// answers, even those to messages before an error.
    pub(super) fn answer_buffered(&mut self) -> Result<(), CloseReason> {
        let outcome = self.process(Answering::All);
        if let Err(e) = self.flush() {
            // A failed write leaves the stream unable to carry the CLOSE an
            // idle timeout asked for: the write's own reason is the true
            // one. A drain keeps its reason (shutdown forces stuck writes).
            let failed = CloseReason::from_write_error(&e);
            return Err(match self.conn.out.close_state().request() {
                Some(request) if request.drains() => self.conn.request_reason(request),
                _ => failed,
            });
        }
        outcome
    }

    /// The close reason for a failed read, naming the TCP timeout that can
    /// have fired.
    pub(super) fn read_error(&self, err: &io::Error) -> CloseReason {
        match CloseReason::from_read_error(err) {
            CloseReason::TcpTimeout(_) => {
                let config = &self.shared.config;
                CloseReason::TcpTimeout(TcpTimeout::armed(
                    config.keepalive.is_some(),
                    config.effective_user_timeout().is_some(),
                ))
            }
            other => other,
        }
    }

    /// The reason another thread gave for closing, or else `otherwise`.
    pub(super) fn requested_or(&self, otherwise: CloseReason) -> CloseReason {
        self.conn
            .out
            .close_state()
            .request()
            .map_or(otherwise, |request| self.conn.request_reason(request))
    }

    /// Decodes and answers the complete messages in the input buffer: all
    /// of them, or (on the parking thread) the heartbeats at its front.
    pub(super) fn process(&mut self, answering: Answering) -> Result<(), CloseReason> {
        let everything = answering == Answering::All;
        let mut data = false;
        let mut pongs = 0;
        let outcome = loop {
            let Decoded {
                message: msg,
                len: used,
                binary,
            } = match self.decoder.decode_message(self.input.data()) {
                Ok(Some(decoded))
                    if everything
                        || matches!(decoded.message, Message::Ping(_) | Message::Pong(_)) =>
                {
                    decoded
                }
                // Nothing complete, or (heartbeats only) a message for
                // the handler or a protocol error: a thread decodes it
                // again.
                Ok(_) => break Ok(()),
                Err(e) if everything => break Err(CloseReason::Protocol(e)),
                Err(_) => break Ok(()),
            };
            self.received.add(Kind::of(&msg), used);
            data |= matches!(msg, Message::Data(_));
            let ping = matches!(msg, Message::Ping(_));
            let answered = answer(
                &self.shared,
                &*self.handler,
                &self.conn,
                &mut self.pings,
                &mut self.output,
                &mut self.sent,
                msg,
                binary,
            );
            self.input.consume(used);
            if let Err(reason) = answered {
                break Err(reason);
            }
            pongs += u64::from(ping && !everything);
        };
        if pongs > 0 {
            self.shared.metrics.parking.pongs.inc_by(pongs);
        }
        let now = self.shared.clock.now();
        if data {
            self.data_at = now;
        }
        if self.received.has_unpublished() {
            self.conn.activity.touch(now);
            self.conn
                .traffic
                .publish(&mut self.received, &mut self.sent);
        }
        outcome
    }

    /// Writes the answers (after anything other threads queued).
    pub(super) fn flush(&mut self) -> io::Result<()> {
        if self.output.is_empty() {
            return Ok(());
        }
        let conn = &self.conn;
        let written = conn
            .out
            .write_batch(conn.id, &self.shared.flushes, &self.output);
        self.output.clear();
        if self.output.capacity() > RETAIN_OUTPUT {
            self.output = Vec::new();
        }
        written
    }

    /// Sends the CLOSE for `reason` (unless the connection already carries
    /// a CLOSE or cannot carry one) after everything queued, then takes the
    /// socket down.
    #[inline(never)]
    pub(super) fn finish(&mut self, reason: &CloseReason) {
        let conn = Arc::clone(&self.conn);
        // Before the protocol starts (a WebSocket upgrade, a TLS handshake)
        // the outbound path sends no CLOSE.
        let close = close_frame(conn.protocol, reason);
        // A write failure here changes nothing: the socket goes down next.
        let _ = conn
            .out
            .finish(conn.id, &self.shared.flushes, close.as_deref());
        // Counted here whoever wrote it: a drain's CLOSE is written by the
        // thread that started the drain.
        let close_sent = conn.out.close_sent();
        if let Some(len) = close_sent {
            self.sent.add(Kind::Close, len);
        }
        conn.traffic.publish(&mut self.received, &mut self.sent);
        let _ = conn.stream().shutdown(Shutdown::Write);
        if close_sent.is_some() {
            self.linger();
        }
        let _ = conn.stream().shutdown(Shutdown::Both);
    }

    /// Reads and discards until the peer's FIN, for at most [`LINGER`] and
    /// [`LINGER_BYTES`]. Returns at once when the peer has already closed
    /// its side (a drained client that half-closed).
    #[inline(never)]
    pub(super) fn linger(&mut self) {
        let deadline = Instant::now() + LINGER;
        let mut discarded = 0;
        let mut scratch = [0u8; 1024];
        while discarded < LINGER_BYTES {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || self.conn.stream().set_read_timeout(Some(left)).is_err() {
                break;
            }
            match self.conn.stream().read(&mut scratch) {
                Ok(0) | Err(_) => break,
                Ok(n) => discarded += n,
            }
        }
        if discarded > 0 {
            // Sent after our CLOSE by a peer that did not wait for the
            // drain to end: unanswered, so counted.
            self.shared.metrics.discarded_bytes.inc_by(discarded as u64);
            debug!(conn = %self.conn.id, discarded, "discarded input after the CLOSE");
        }
    }
}

/// Which messages [`Worker::process`] answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Answering {
    /// Every complete message: a worker on its thread.
    All,
    /// The PINGs and PONGs at the front: the parking thread, which leaves
    /// the rest for a thread.
    Heartbeats,
}

/// Whether a failed wait or read just means waiting again: a signal, or
/// the receive timeout that parking sets.
fn waits_again(err: &io::Error) -> bool {
    // Not `TimedOut`: that is ETIMEDOUT, the kernel declaring the peer
    // dead (keepalive, TCP_USER_TIMEOUT).
    matches!(
        err.kind(),
        io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock
    )
}

/// Answers one message. Free-standing so that it can borrow the worker's
/// output while the message borrows its input buffer.
#[allow(
    clippy::too_many_arguments,
    reason = "the worker's parts, each borrowed on its own while the message borrows the input"
)]
fn answer(
    shared: &Arc<Shared>,
    handler: &dyn Handler,
    conn: &Arc<Conn>,
    pings: &mut PingPolicy,
    output: &mut Vec<u8>,
    sent: &mut Tally,
    msg: Message<'_>,
    binary: bool,
) -> Result<(), CloseReason> {
    let protocol = conn.protocol;
    match msg {
        Message::Data(payload) if payload.starts_with(b"AUTH ") && handler.requires_auth() => {
            refresh(shared, handler, conn, &payload[5..], output, sent);
            Ok(())
        }
        Message::Data(payload) => {
            let mut close = None;
            let mut session = Session {
                shared,
                conn,
                id: conn.id,
                peer: conn.peer(),
                protocol,
                binary,
                out: output,
                close: &mut close,
                sent,
            };
            handler.on_data(&mut session, payload);
            match close {
                Some((code, reason)) => Err(CloseReason::Application { code, reason }),
                None => Ok(()),
            }
        }
        Message::Ping(payload) => {
            if !pings.allow(Instant::now) {
                return Err(CloseReason::PingPolicy);
            }
            let before = output.len();
            // A PING payload decoded in this protocol encodes in it.
            if protocol.encode(&Message::Pong(payload), output).is_ok() {
                sent.add(Kind::Pong, output.len() - before);
            }
            Ok(())
        }
        Message::Pong(_) => Ok(()),
        Message::Close { code, .. } => Err(CloseReason::PeerClose(code)),
    }
}

/// A later `AUTH`: new credentials for the same subject push the expiry
/// back; anything else is answered `ERR unauthorized` and changes nothing.
fn refresh(
    shared: &Shared,
    handler: &dyn Handler,
    conn: &Conn,
    credentials: &[u8],
    output: &mut Vec<u8>,
    sent: &mut Tally,
) {
    let current = conn.identity.lock().as_ref().map(|i| i.sub.clone());
    match handler.authenticate(credentials) {
        Ok(identity) if Some(&identity.sub) == current.as_ref() => {
            shared
                .metrics
                .auth
                .get_or_create(&[("result", "refreshed")])
                .inc();
            record_identity(shared, conn, &identity, output, sent);
        }
        outcome => {
            let why = match outcome {
                Ok(identity) => format!("a token for another subject ({})", identity.sub),
                Err(why) => why,
            };
            debug!(conn = %conn.id, "refresh refused: {why}");
            shared
                .metrics
                .auth
                .get_or_create(&[("result", "refused")])
                .inc();
            let before = output.len();
            if conn
                .protocol
                .encode(&Message::Data(b"ERR unauthorized"), output)
                .is_ok()
            {
                sent.add(Kind::Data, output.len() - before);
            }
        }
    }
}
