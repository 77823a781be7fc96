//! A worker while its connection is parked: what the parking thread does
//! when the socket is readable, and how a thread takes the connection back.
//!
//! The parking thread reads what is there without blocking (over TLS too:
//! the session decrypts under the outbound lock, as for a worker) and
//! answers heartbeats the way a worker does, through the same
//! [`answer`](super::serve::answer): a PING gets its PONG, the PING policy
//! counts it, activity is stamped and traffic counted. The PONG goes out on
//! the outbound path without blocking, queued for the timer thread's flush
//! if the socket is full. Anything else (DATA, a command, a CLOSE, part of
//! a message, the end of the stream, an error) is left for a thread, which
//! finds the bytes in the input buffer and the decoder's state as the
//! parking thread left them.

use std::io;
use std::net::TcpStream;
use std::sync::Arc;

use parking_lot::Mutex;

use crate::protocol::{Decoded, Message};
use crate::server::conn::close::CloseState;
use crate::server::conn::outbound::Pumped;
use crate::server::serve::park::{Parked, Wake};
use crate::sys;
use crate::traffic::Kind;

use super::Worker;
use super::serve::answer;

impl Parked for Worker {
    fn stream(&self) -> &TcpStream {
        self.conn.stream()
    }

    fn readable(&mut self) -> Wake {
        // A drain, an expiry or a slow consumer: closing is a thread's job.
        if self.conn.out.close_state() != CloseState::Open {
            return Wake::Leave;
        }
        match self.read_available() {
            Ok(0) => return Wake::Leave,
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) =>
            {
                // Nothing for us yet (a TLS record still incomplete, or the
                // session's own traffic).
                self.input.release();
                return Wake::Stay;
            }
            Err(e) => {
                // Taken from the socket by this read: the thread could
                // not read it again.
                self.found = Some(self.read_error(&e));
                return Wake::Leave;
            }
        }
        if !self.conn.out.begin_read() {
            // Arrived as the timer sent its CLOSE: past the end. The
            // timer's wake-up follows, and with it the end.
            self.discard_input();
            self.conn.out.end_read();
            self.input.release();
            return Wake::Stay;
        }
        let stay = self.answer_heartbeats();
        if !self.output.is_empty() {
            let sent = self
                .conn
                .out
                .reply(self.conn.id, &self.shared.flushes, &self.output);
            self.output.clear();
            if sent.is_err() {
                // The connection is closing (a slow consumer's close wakes
                // the socket): the thread finds out.
                return Wake::Leave;
            }
        }
        if !stay {
            return Wake::Leave;
        }
        self.conn.out.end_read();
        self.release_buffers();
        Wake::Stay
    }

    fn resume(self: Box<Self>) {
        let shared = Arc::clone(&self.shared);
        // Where the job finds the worker, and where it is found again when
        // no thread can be started to run the job.
        let slot = Arc::new(Mutex::new(Some(self)));
        let job_slot = Arc::clone(&slot);
        let job = Box::new(move || {
            if let Some(worker) = job_slot.lock().take() {
                worker.resumed();
            }
        });
        if let Err(e) = shared.threads.run(|| "wheel-worker".into(), job)
            && let Some(worker) = slot.lock().take()
        {
            worker.abandon(&e);
        }
    }
}

impl Worker {
    /// Reads what the socket has, without blocking: `WouldBlock` when
    /// nothing (or, over TLS, no plaintext yet).
    fn read_available(&mut self) -> io::Result<usize> {
        let limit = self.decoder.max_message_len();
        if !self.tls {
            let n = sys::recv_nonblocking(self.conn.stream(), self.input.spare(limit))?;
            self.input.filled(n);
            return Ok(n);
        }
        let handshakes = self
            .shared
            .tls
            .as_ref()
            .expect("a TLS listener")
            .handshakes();
        match self.conn.out.tls_pump(
            self.conn.id,
            &self.shared.flushes,
            handshakes,
            self.input.spare(limit),
        ) {
            Ok(Pumped::Plaintext(n)) => {
                self.input.filled(n);
                Ok(n)
            }
            Ok(Pumped::Closed) => Ok(0),
            Ok(Pumped::NeedBytes) => Err(io::ErrorKind::WouldBlock.into()),
            Err(e) => Err(io::Error::new(io::ErrorKind::InvalidData, e)),
        }
    }

    /// Answers the PINGs (and takes the PONGs) at the front of the input;
    /// whether that was all of it. A PING the policy refuses leaves the
    /// reason in `found` (and the answers before it in the output).
    fn answer_heartbeats(&mut self) -> bool {
        let mut pongs = 0;
        let done = loop {
            let Decoded {
                message: msg,
                len: used,
                binary,
            } = match self.decoder.decode_message(self.input.data()) {
                Ok(Some(decoded))
                    if matches!(decoded.message, Message::Ping(_) | Message::Pong(_)) =>
                {
                    decoded
                }
                // Nothing left, or part of a message, a message for the
                // handler, or a protocol error: the thread decodes it
                // again.
                _ => break self.input.data().is_empty(),
            };
            let ping = matches!(msg, Message::Ping(_));
            self.received.add(Kind::of(&msg), used);
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
                self.found = Some(reason);
                break false;
            }
            pongs += u64::from(ping);
        };
        if self.received.has_unpublished() {
            self.conn.activity.touch(self.shared.clock.now());
            self.conn
                .traffic
                .publish(&mut self.received, &mut self.sent);
        }
        self.shared.metrics.parking.pongs.inc_by(pongs);
        done
    }
}
