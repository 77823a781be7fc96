//! A worker while its connection is parked: what the parking thread does
//! when the socket is readable, and how a thread takes the connection back.
//!
//! The parking thread reads what is there without blocking (over TLS too:
//! the session decrypts under the outbound lock, as for a worker) and
//! answers heartbeats the way a worker does, through the same
//! `Worker::process` (answering only the heartbeats at the front of the
//! input, [`Answering::Heartbeats`]): a PING gets its PONG, the PING policy
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

use crate::server::conn::close::CloseState;
use crate::server::serve::park::{Parked, Wake};
use crate::sys;

use super::Worker;
use super::serve::Answering;

/// The buffer a parked connection's read takes: a PING (or a few) in any
/// protocol, TLS records' plaintext included.
const PARKED_READ: usize = 256;

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
        // Heartbeats are a few bytes: more (DATA) is read by the thread.
        self.input.prime(PARKED_READ);
        if !self.tls {
            let n = sys::recv_nonblocking(self.conn.stream(), self.input.spare(limit))?;
            self.input.filled(n);
            return Ok(n);
        }
        self.pump_tls(limit)
    }

    /// Answers the PINGs (and takes the PONGs) at the front of the input;
    /// whether that was all of it. A PING the policy refuses leaves the
    /// reason in `found` (and the answers before it in the output).
    fn answer_heartbeats(&mut self) -> bool {
        match self.process(Answering::Heartbeats) {
            Ok(()) => self.input.data().is_empty(),
            Err(reason) => {
                self.found = Some(reason);
                false
            }
        }
    }
}
