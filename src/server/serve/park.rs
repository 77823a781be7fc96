//! The parking thread: idle connections wait here, in one epoll set, with
//! no thread of their own (Apache's event MPM; Tomcat's NIO poller).
//!
//! A worker whose connection has had no DATA for `--park-after` hands the
//! connection ([`Parked`]: the worker's whole state, its buffers given
//! back) to [`Parking`] and its thread goes back to the thread cache. The
//! one parking thread waits on every parked socket at once. When one is
//! readable it calls [`Parked::readable`] there, without blocking: a
//! heartbeat is answered on the spot and the connection stays
//! ([`Wake::Stay`]); anything else makes it leave ([`Wake::Leave`]), and
//! [`Parked::resume`] hands it to a thread that serves it as before, with
//! the bytes already read.
//!
//! ```text
//!   worker ──quiet for --park-after──▶ park ──▶ epoll set ◀──┐
//!     ▲                                          │ readable   │ PING: PONG,
//!     │                                          ▼            │ stamp, stay
//!     └────resume on a cached thread◀── Leave ◀── readable ───┘
//!           (DATA, a command, a CLOSE, a partial frame, the end)
//! ```
//!
//! Every socket is watched for one readiness at a time (`EPOLLONESHOT`):
//! the parking thread owns a reported connection until it re-arms it or
//! takes it out of the set, so no two threads ever read one socket. Other
//! threads never touch the set for a parked connection: a close asked for
//! elsewhere (the timer's idle timeout, a drain, a slow consumer) wakes the
//! socket as it wakes a blocked worker (`shutdown(SHUT_RD)`: the socket
//! reads as ended), and the connection leaves to be closed on a thread.
//! Writes (pushes, probes, a drain's CLOSE) never needed the worker: they go
//! through the connection's outbound path.

use std::io;
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use parking_lot::Mutex;
use tracing::{error, warn};

use crate::server::metrics::ParkCounters;
use crate::sys::Epoll;

/// A connection waiting in the parking thread's set.
pub(crate) trait Parked: Send {
    /// The socket to watch.
    fn stream(&self) -> &TcpStream;

    /// The socket is readable (or ended, or failed). Runs on the parking
    /// thread, so it must never block: it reads what is there and answers
    /// what needs no thread, or says the connection must leave.
    fn readable(&mut self) -> Wake;

    /// Continues the connection on a thread, out of the set.
    fn resume(self: Box<Self>);
}

/// What [`Parked::readable`] decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Wake {
    /// Everything read was answered: keep waiting here.
    Stay,
    /// It needs a thread.
    Leave,
}

/// The parked connections: one epoll set per parking thread, a connection
/// going to each in turn.
pub(crate) struct Parking {
    sets: Vec<Set>,
    /// The set the next connection goes to.
    next: AtomicUsize,
    /// Set by [`Parking::stop`]: the threads end.
    stopping: AtomicBool,
    counters: ParkCounters,
}

/// One parking thread's epoll set and the connections in it.
struct Set {
    epoll: Epoll,
    table: Mutex<Table>,
}

/// The parked connections of one set, indexed by their epoll token.
#[derive(Default)]
struct Table {
    slots: Vec<Option<Box<dyn Parked>>>,
    /// Free slots (never one whose connection the thread holds).
    free: Vec<u32>,
}

impl Table {
    /// A slot for a connection about to be parked, as its token.
    fn reserve(&mut self) -> u64 {
        match self.free.pop() {
            Some(index) => u64::from(index),
            None => {
                self.slots.push(None);
                (self.slots.len() - 1) as u64
            }
        }
    }

    fn free(&mut self, token: u64) {
        self.free.push(token as u32);
    }
}

impl Parking {
    /// `threads` empty sets (at least one), counted in `counters`.
    pub(crate) fn new(threads: usize, counters: ParkCounters) -> io::Result<Parking> {
        let sets = (0..threads.max(1))
            .map(|_| {
                Ok(Set {
                    epoll: Epoll::new()?,
                    table: Mutex::new(Table::default()),
                })
            })
            .collect::<io::Result<_>>()?;
        Ok(Parking {
            sets,
            next: AtomicUsize::new(0),
            stopping: AtomicBool::new(false),
            counters,
        })
    }

    /// How many parking threads for this machine: one per core, so that a
    /// busy heartbeat rate (a PING a second from 20,000 connections) is
    /// answered in parallel as worker threads would, up to 4.
    pub(crate) fn threads_for_this_machine() -> usize {
        std::thread::available_parallelism().map_or(1, |n| n.get().min(4))
    }

    /// Starts the parking threads.
    pub(crate) fn spawn(parking: &Arc<Parking>) -> io::Result<Vec<std::thread::JoinHandle<()>>> {
        let mut threads = Vec::with_capacity(parking.sets.len());
        for index in 0..parking.sets.len() {
            let parking_ = Arc::clone(parking);
            let spawned = std::thread::Builder::new()
                .name("wheel-park".into())
                .spawn(move || parking_.run(index));
            match spawned {
                Ok(thread) => threads.push(thread),
                Err(e) => {
                    parking.stop();
                    for thread in threads {
                        let _ = thread.join();
                    }
                    return Err(e);
                }
            }
        }
        Ok(threads)
    }

    /// Parks `parked`: from now on a parking thread answers for it. When
    /// the socket cannot be added to a set, `parked` comes back for its
    /// thread to go on serving it.
    pub(crate) fn park<P: Parked + 'static>(&self, parked: Box<P>) -> Result<(), Box<P>> {
        let set = &self.sets[self.next.fetch_add(1, Ordering::Relaxed) % self.sets.len()];
        // The lock is held until the slot holds the connection: the thread,
        // handed the token at once when the socket is readable already,
        // takes the lock before it looks.
        let mut table = set.table.lock();
        let token = table.reserve();
        if let Err(e) = set.epoll.add(parked.stream(), token) {
            table.free(token);
            warn!("cannot park a connection: {e}");
            return Err(parked);
        }
        table.slots[token as usize] = Some(parked);
        self.counters.parks.inc();
        self.counters.parked.inc();
        Ok(())
    }

    /// Ends the parking threads. Called once no connection is left (after
    /// the drain); any still parked are dropped, which deregisters them.
    pub(crate) fn stop(&self) {
        self.stopping.store(true, Ordering::Release);
        for set in &self.sets {
            set.epoll.wake();
        }
    }

    /// Parking thread `index`'s life.
    fn run(&self, index: usize) {
        let set = &self.sets[index];
        let mut tokens = Vec::new();
        while !self.stopping.load(Ordering::Acquire) {
            if let Err(e) = set.epoll.wait(&mut tokens) {
                // Only EBADF, EFAULT or EINVAL, none of which a retry cures.
                error!("a parking thread cannot wait: {e}");
                break;
            }
            for &token in &tokens {
                if token != Epoll::WAKE {
                    self.ready(set, token);
                }
            }
        }
        let parked: Vec<_> = {
            let mut table = set.table.lock();
            let Table { slots, free } = &mut *table;
            free.clear();
            slots.drain(..).flatten().collect()
        };
        self.counters.parked.dec_by(parked.len() as i64);
        drop(parked);
    }

    /// Handles one reported connection: the thread holds it outside the
    /// table (the slot stays reserved) while it reads, so no lock is held
    /// across the work.
    fn ready(&self, set: &Set, token: u64) {
        let taken = set.table.lock().slots[token as usize].take();
        let Some(mut parked) = taken else {
            return;
        };
        if parked.readable() == Wake::Stay {
            let mut table = set.table.lock();
            match set.epoll.rearm(parked.stream(), token) {
                Ok(()) => {
                    table.slots[token as usize] = Some(parked);
                    return;
                }
                // Cannot be watched again: it leaves, and its thread
                // reads what comes.
                Err(e) => warn!("cannot re-arm a parked connection: {e}"),
            }
        }
        // Out of the set before any thread can park it again.
        let _ = set.epoll.remove(parked.stream());
        set.table.lock().free(token);
        self.counters.parked.dec();
        self.counters.unparks.inc();
        parked.resume();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::time::Duration;

    use crossbeam_channel::{Receiver, Sender, unbounded};

    /// A parked socket that stays for bytes `b's'` and leaves for anything
    /// else, reporting what it did.
    struct Probe {
        stream: TcpStream,
        events: Sender<&'static str>,
    }

    impl Parked for Probe {
        fn stream(&self) -> &TcpStream {
            &self.stream
        }

        fn readable(&mut self) -> Wake {
            let mut byte = [0u8; 1];
            match (&self.stream).read(&mut byte) {
                Ok(1) if byte[0] == b's' => {
                    self.events.send("stay").unwrap();
                    Wake::Stay
                }
                _ => Wake::Leave,
            }
        }

        fn resume(self: Box<Self>) {
            self.events.send("resumed").unwrap();
        }
    }

    /// A parked probe, its client end, and what it reports.
    fn parked(parking: &Parking) -> (TcpStream, Receiver<&'static str>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (stream, _) = listener.accept().unwrap();
        stream.set_nonblocking(true).unwrap();
        let (events, rx) = unbounded();
        assert!(parking.park(Box::new(Probe { stream, events })).is_ok());
        (client, rx)
    }

    const WAIT: Duration = Duration::from_secs(5);

    #[test]
    fn each_readiness_reaches_its_connection_once_until_it_leaves() {
        // One set, so that the order of events is one thread's.
        let parking = Arc::new(Parking::new(1, ParkCounters::default()).unwrap());
        let threads = Parking::spawn(&parking).unwrap();
        let (mut a, a_events) = parked(&parking);
        let (mut b, b_events) = parked(&parking);
        assert_eq!(parking.counters.parked.get(), 2);
        // Re-armed after each stay: every byte is seen, in order.
        a.write_all(b"ss").unwrap();
        assert_eq!(a_events.recv_timeout(WAIT), Ok("stay"));
        assert_eq!(a_events.recv_timeout(WAIT), Ok("stay"));
        b.write_all(b"s").unwrap();
        assert_eq!(b_events.recv_timeout(WAIT), Ok("stay"));
        // Anything else: out of the set, resumed once.
        a.write_all(b"x").unwrap();
        assert_eq!(a_events.recv_timeout(WAIT), Ok("resumed"));
        assert_eq!(parking.counters.unparks.get(), 1);
        assert_eq!(parking.counters.parked.get(), 1);
        // Its slot is reused; the end of a stream is readable too.
        let (_c, c_events) = parked(&parking);
        drop(b);
        assert_eq!(b_events.recv_timeout(WAIT), Ok("resumed"));
        assert!(c_events.try_recv().is_err(), "nothing happened to c");
        parking.stop();
        for thread in threads {
            thread.join().unwrap();
        }
        // What was still parked is dropped with the set.
        assert_eq!(parking.counters.parked.get(), 0);
        assert_eq!(parking.counters.parks.get(), 3);
    }
}
