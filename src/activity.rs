//! The per-message liveness path: a coarse clock the timer thread publishes
//! and a per-connection activity stamp the worker writes.
//!
//! A worker never reads the system clock or sends a message per frame.
//! After each read that completed at least one message it does
//!
//! ```
//! # use wheel_server::activity::{Clock, Stamp};
//! # let clock = Clock::new();
//! # let stamp = Stamp::new(0);
//! stamp.touch(clock.now());
//! ```
//!
//! which is one relaxed load of a shared, rarely written cache line and, at
//! most once per tick, one relaxed store to a cache line only this worker
//! writes. The timer thread reads the stamp only when the connection's timer
//! fires (see the server's `timer` module for how stamps are interpreted so
//! that no connection expires early).
//!
//! These types are public so that the benchmarks measure exactly the code the
//! server runs.

use std::sync::atomic::{AtomicU64, Ordering};

use crossbeam_utils::CachePadded;

/// The current tick, published by the timer thread once per tick.
#[derive(Debug, Default)]
pub struct Clock {
    tick: CachePadded<AtomicU64>,
}

impl Clock {
    /// A clock at tick 0.
    pub fn new() -> Clock {
        Clock::default()
    }

    /// The last published tick.
    #[inline]
    pub fn now(&self) -> u64 {
        self.tick.load(Ordering::Relaxed)
    }

    /// Publishes a new tick (the timer thread's job).
    pub fn publish(&self, tick: u64) {
        self.tick.store(tick, Ordering::Relaxed);
    }
}

/// The tick of a connection's last complete message.
///
/// Padded to a cache line of its own, so workers on different cores never
/// write the same line.
#[derive(Debug)]
pub struct Stamp {
    tick: CachePadded<AtomicU64>,
}

impl Stamp {
    /// A stamp set to `tick`.
    pub fn new(tick: u64) -> Stamp {
        Stamp {
            tick: CachePadded::new(AtomicU64::new(tick)),
        }
    }

    /// Records activity at `tick`. The store is skipped when the value is
    /// already current, so a busy connection writes its line once per tick,
    /// not once per message.
    #[inline]
    pub fn touch(&self, tick: u64) {
        if self.tick.load(Ordering::Relaxed) != tick {
            self.tick.store(tick, Ordering::Relaxed);
        }
    }

    /// The stamped tick.
    #[inline]
    pub fn get(&self) -> u64 {
        self.tick.load(Ordering::Relaxed)
    }
}

/// The four message kinds, for per-kind traffic counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// DATA.
    Data = 0,
    /// PING.
    Ping = 1,
    /// PONG.
    Pong = 2,
    /// CLOSE.
    Close = 3,
}

impl Kind {
    /// Every kind, in label order.
    pub const ALL: [Kind; 4] = [Kind::Data, Kind::Ping, Kind::Pong, Kind::Close];

    /// The kind of a message.
    pub fn of(msg: &crate::protocol::Message<'_>) -> Kind {
        use crate::protocol::Message;
        match msg {
            Message::Data(_) => Kind::Data,
            Message::Ping(_) => Kind::Ping,
            Message::Pong(_) => Kind::Pong,
            Message::Close { .. } => Kind::Close,
        }
    }

    /// The metric label: `data`, `ping`, `pong` or `close`.
    pub fn as_str(self) -> &'static str {
        ["data", "ping", "pong", "close"][self as usize]
    }
}

/// Frames and bytes by kind, counted in plain integers by a connection's
/// worker and published to its [`Traffic`] once per read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    /// Frames, indexed by [`Kind`].
    pub frames: [u64; 4],
    /// Bytes on the wire (framing included), indexed by [`Kind`].
    pub bytes: [u64; 4],
    /// Bit `k` set: kind `k` was counted, so [`Traffic::publish`] touches
    /// only those counters.
    kinds: u8,
}

impl Tally {
    /// Counts one message of `kind` taking `bytes` on the wire.
    #[inline]
    pub fn add(&mut self, kind: Kind, bytes: usize) {
        self.frames[kind as usize] += 1;
        self.bytes[kind as usize] += bytes as u64;
        self.kinds |= 1 << kind as u8;
    }

    /// Whether something was counted since the last [`Traffic::publish`].
    pub fn has_unpublished(&self) -> bool {
        self.kinds != 0
    }

    /// Adds `other` to this tally.
    pub fn merge(&mut self, other: &Tally) {
        for i in 0..4 {
            self.frames[i] += other.frames[i];
            self.bytes[i] += other.bytes[i];
        }
        self.kinds |= other.kinds;
    }
}

/// A connection's traffic in and out, readable from any thread.
///
/// The worker keeps the running totals in its own [`Tally`]s and, after each
/// read, publishes the counters of the kinds that read touched: a plain
/// relaxed store each, no read-modify-write, no lock, and nothing shared
/// with other connections. Scrapes read it without a lock. Kept apart from
/// the [`Stamp`] so that it does not share its cache line.
#[derive(Debug, Default)]
pub struct Traffic {
    /// `[received frames, received bytes, sent frames, sent bytes]`, each
    /// indexed by [`Kind`].
    counts: CachePadded<[[AtomicU64; 4]; 4]>,
}

impl Traffic {
    /// Publishes the running totals `received` and `sent` for the kinds
    /// counted since the last call, and forgets which kinds those were.
    /// Single writer: only the connection's worker calls this.
    #[inline]
    pub fn publish(&self, received: &mut Tally, sent: &mut Tally) {
        for (tally, rows) in [(received, &self.counts[0..2]), (sent, &self.counts[2..4])] {
            let mut kinds = tally.kinds;
            while kinds != 0 {
                let k = kinds.trailing_zeros() as usize;
                kinds &= kinds - 1;
                rows[0][k].store(tally.frames[k], Ordering::Relaxed);
                rows[1][k].store(tally.bytes[k], Ordering::Relaxed);
            }
            tally.kinds = 0;
        }
    }

    /// What was received and sent so far.
    pub fn snapshot(&self) -> (Tally, Tally) {
        let read = |row: &[AtomicU64; 4]| std::array::from_fn(|i| row[i].load(Ordering::Relaxed));
        let tally = |frames: [u64; 4], bytes| Tally {
            kinds: (0..4)
                .filter(|&k| frames[k] != 0)
                .fold(0, |m, k| m | 1 << k),
            frames,
            bytes,
        };
        (
            tally(read(&self.counts[0]), read(&self.counts[1])),
            tally(read(&self.counts[2]), read(&self.counts[3])),
        )
    }
}
