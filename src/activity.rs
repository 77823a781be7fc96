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
//! server runs. The per-connection message counters the worker publishes
//! alongside live in [`crate::traffic`].

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
/// Not padded: it lives in its connection's own allocation, next to
/// counters only the same worker writes, and it is written at most once per
/// tick. (Padding it cost every connection about 240 bytes.)
#[derive(Debug)]
pub struct Stamp {
    tick: AtomicU64,
}

impl Stamp {
    /// A stamp set to `tick`.
    pub fn new(tick: u64) -> Stamp {
        Stamp {
            tick: AtomicU64::new(tick),
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
