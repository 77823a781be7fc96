//! The coarse clock workers read on the hot path.

use std::sync::atomic::{AtomicU64, Ordering};

use crossbeam_utils::CachePadded;

/// The current tick, published by the timer thread once per tick.
///
/// Workers stamp activity with this value instead of reading the system
/// clock: one relaxed load of a cache line that changes once per tick, a few
/// hundred times cheaper than `Instant::now()` plus a tick division, and it
/// needs no synchronisation because the timer thread interprets stamps
/// conservatively (see the [timer module](super::timer)).
#[derive(Default)]
pub(crate) struct Clock {
    tick: CachePadded<AtomicU64>,
}

impl Clock {
    /// The last published tick.
    #[inline]
    pub(crate) fn now(&self) -> u64 {
        self.tick.load(Ordering::Relaxed)
    }

    /// Publishes a new tick. Only the timer thread calls this.
    pub(crate) fn publish(&self, tick: u64) {
        self.tick.store(tick, Ordering::Relaxed);
    }
}
