//! A hashed timing wheel: O(1) schedule, reschedule and cancel for large
//! numbers of timers whose deadlines are counted in ticks.
//!
//! # Design
//!
//! Time is an integer tick count; the wheel never reads a clock (see
//! [`TimeSource`](crate::time::TimeSource) for the `Instant` <-> tick
//! mapping). The wheel has a power-of-two number of *slots*; a timer due at
//! tick `d` lives on the list of slot `d & (slots - 1)`. Advancing the wheel
//! from tick `t` to `t + 1` visits exactly one slot and fires the entries on it
//! whose deadline has come; entries due in a later *rotation* (deadline
//! `d >= t + slots`) share the slot and are simply left there. This is the
//! "hashed wheel with rounds" of Varghese & Lauck, *Hashed and Hierarchical
//! Timing Wheels* (1987), scheme 6.
//!
//! Entries live in a slab (see `slab.rs`) and are linked into their slot by
//! index, so insert, reset and remove are a handful of index writes with no
//! allocation once the slab has grown to the working set, and a stale
//! [`TimerKey`] (one whose timer already fired or was removed) is detected by
//! a generation counter instead of touching another timer.
//!
//! Two choices keep the common operations to one touched entry:
//!
//! * **Lazy reschedule.** Moving a deadline *later* with [`Wheel::reset`]
//!   only rewrites the entry's deadline. The entry stays on its
//!   old slot, which comes up no later than the old deadline, itself no
//!   later than the new one; when it does, the walk files the entry under
//!   its new slot. Moving a deadline earlier relinks at once. (The server
//!   itself does not reset on activity: its workers only stamp an atomic,
//!   and a timer that fires on an active connection is re-inserted for the
//!   time left; see the server's `timer` module. `reset` serves callers that
//!   do know each new deadline, and the benchmarks compare both.)
//! * **In-place walk.** Advancing walks each slot's list where it lies, with
//!   a cursor, instead of detaching it: entries due in a later rotation are
//!   stepped over, not re-linked.
//!
//! # Guarantees
//!
//! * A timer never fires before its deadline: [`Wheel::advance`] with `now`
//!   yields exactly the timers whose deadline is `<= now`.
//! * With `advance` called for every tick, a timer fires on the call for its
//!   deadline tick, so in real time at most one tick after its deadline
//!   instant (the [`TimeSource`](crate::time::TimeSource) rounds deadlines up).
//! * Deadlines any distance in the future are allowed; a timer due `r`
//!   rotations ahead is looked at `r` times before it fires. Choose
//!   `slots * tick` at least as long as the usual timeout to keep that at one.
//! * A deadline at or before the current tick is not lost: it fires on the
//!   next `advance`.
//!
//! # Examples
//!
//! ```
//! use wheel_server::wheel::Wheel;
//!
//! let mut wheel = Wheel::new(8);
//! let a = wheel.insert("a", 3);
//! let _b = wheel.insert("b", 20); // more than one rotation ahead
//!
//! assert_eq!(wheel.advance(2).count(), 0);
//! wheel.reset(a, 5); // push the deadline back
//! assert_eq!(wheel.advance(4).collect::<Vec<_>>(), Vec::<&str>::new());
//! assert_eq!(wheel.advance(5).collect::<Vec<_>>(), vec!["a"]);
//! assert_eq!(wheel.advance(100).collect::<Vec<_>>(), vec!["b"]);
//! assert!(wheel.is_empty());
//! ```

mod slab;

use slab::{List, NIL, Slab};

/// List id of the entries already due when they were scheduled
/// (deadline `<=` the wheel's current tick).
const OVERDUE: u32 = u32::MAX - 1;

/// The largest slot count: slot indices must stay below the special list ids.
const MAX_SLOTS: usize = 1 << 30;

/// Identifies one scheduled timer, as returned by [`Wheel::insert`].
///
/// A key stays valid until its timer fires or is removed; after that every
/// operation with it is a no-op that reports failure, even if the wheel has
/// reused the storage for another timer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TimerKey {
    index: u32,
    generation: u32,
}

/// A hashed timing wheel holding timers of key type `K`.
///
/// See the [module documentation](self) for the design and guarantees.
pub struct Wheel<K> {
    /// Timer storage and list links.
    slab: Slab<K>,
    /// One list per slot; length is a power of two.
    slots: Box<[List]>,
    /// `slots.len() - 1`, to map a deadline to its slot.
    mask: u64,
    /// Entries scheduled at or before `elapsed`: due on the next poll.
    overdue: List,
    /// The last tick whose slot `poll` has started to walk. Every entry with
    /// a deadline `<= elapsed` is on `overdue` or not yet walked past on the
    /// slot of `elapsed`.
    elapsed: u64,
    /// The next entry to look at on the slot of `elapsed`, or `NIL` once that
    /// slot has been walked. Kept across calls so that an `advance` dropped
    /// half way resumes where it stopped; `unlink` moves it on when it
    /// unlinks the entry it points to.
    cursor: u32,
}

impl<K> Wheel<K> {
    /// Creates an empty wheel with `slots` slots, starting at tick 0.
    ///
    /// # Panics
    ///
    /// If `slots` is not a power of two or is larger than 2^30.
    pub fn new(slots: usize) -> Wheel<K> {
        Wheel::with_capacity(slots, 0)
    }

    /// Creates an empty wheel with room for `capacity` timers before the
    /// slab has to grow.
    ///
    /// # Panics
    ///
    /// If `slots` is not a power of two or is larger than 2^30.
    pub fn with_capacity(slots: usize, capacity: usize) -> Wheel<K> {
        assert!(
            slots.is_power_of_two() && slots <= MAX_SLOTS,
            "wheel slot count must be a power of two no larger than 2^30, got {slots}"
        );
        Wheel {
            slab: Slab::with_capacity(capacity),
            slots: vec![List::EMPTY; slots].into_boxed_slice(),
            mask: slots as u64 - 1,
            overdue: List::EMPTY,
            elapsed: 0,
            cursor: NIL,
        }
    }

    /// Number of slots.
    pub fn slots(&self) -> usize {
        self.slots.len()
    }

    /// The current tick: the latest `now` that [`advance`](Self::advance) or
    /// [`poll`](Self::poll) has processed.
    pub fn elapsed(&self) -> u64 {
        self.elapsed
    }

    /// Number of scheduled timers.
    pub fn len(&self) -> usize {
        self.slab.len()
    }

    /// Whether no timer is scheduled.
    pub fn is_empty(&self) -> bool {
        self.slab.len() == 0
    }

    /// Schedules `key` to fire at tick `deadline`. O(1).
    ///
    /// A deadline at or before [`elapsed`](Self::elapsed) fires on the next
    /// poll.
    pub fn insert(&mut self, key: K, deadline: u64) -> TimerKey {
        let (index, generation) = self.slab.alloc(key, deadline);
        self.place(index, deadline);
        TimerKey { index, generation }
    }

    /// Moves a scheduled timer to a new deadline. O(1).
    ///
    /// Moving a deadline later only rewrites it (see the module docs);
    /// moving it earlier relinks the entry at once.
    ///
    /// Returns `false` (and does nothing) if the timer already fired or was
    /// removed.
    pub fn reset(&mut self, timer: TimerKey, deadline: u64) -> bool {
        let Some(entry) = self.slab.get(timer.index, timer.generation) else {
            return false;
        };
        if deadline >= entry.deadline && entry.list != OVERDUE {
            self.slab.entries[timer.index as usize].deadline = deadline;
            return true;
        }
        self.unlink(timer.index);
        self.slab.entries[timer.index as usize].deadline = deadline;
        self.place(timer.index, deadline);
        true
    }

    /// Cancels a timer and returns its key, or `None` if it already fired or
    /// was removed. O(1).
    pub fn remove(&mut self, timer: TimerKey) -> Option<K> {
        self.slab.get(timer.index, timer.generation)?;
        self.unlink(timer.index);
        Some(self.slab.release(timer.index))
    }

    /// The deadline of a scheduled timer.
    pub fn deadline(&self, timer: TimerKey) -> Option<u64> {
        self.slab
            .get(timer.index, timer.generation)
            .map(|e| e.deadline)
    }

    /// The key of a scheduled timer.
    pub fn get(&self, timer: TimerKey) -> Option<&K> {
        self.slab
            .get(timer.index, timer.generation)
            .and_then(|e| e.key.as_ref())
    }

    /// Advances the wheel to tick `now` and returns the timers due by then,
    /// each removed from the wheel as it is yielded.
    ///
    /// Dropping the iterator early is allowed: the timers not yet yielded
    /// stay scheduled and come out of the next `advance` or `poll`.
    /// A `now` earlier than [`elapsed`](Self::elapsed) is treated as
    /// `elapsed` (time does not run backwards).
    pub fn advance(&mut self, now: u64) -> Expired<'_, K> {
        Expired { wheel: self, now }
    }

    /// Removes and returns one timer due at or before `now`, advancing the
    /// wheel as far as needed to find it; `None` once none is left.
    ///
    /// Each tick's slot is walked once, in place: a due entry is unlinked
    /// and returned, an entry due in a later rotation is stepped over, and
    /// an entry whose deadline a lazy [`reset`](Self::reset) moved later is
    /// filed under its own slot.
    ///
    /// Cost: O(1) per fired timer, plus O(1) per tick advanced, plus O(1) for
    /// each not-yet-due timer met on the way. A jump of more than one
    /// rotation visits every slot once, not every tick.
    pub fn poll(&mut self, now: u64) -> Option<K> {
        let now = now.max(self.elapsed);
        loop {
            if let Some(index) = self.slab.pop_front(&mut self.overdue) {
                return Some(self.slab.release(index));
            }
            while self.cursor != NIL {
                let index = self.cursor;
                let entry = &self.slab.entries[index as usize];
                self.cursor = entry.next;
                let deadline = entry.deadline;
                if deadline <= now {
                    self.unlink(index);
                    return Some(self.slab.release(index));
                }
                if (deadline & self.mask) as u32 != entry.list {
                    self.unlink(index);
                    self.place(index, deadline);
                }
            }
            if self.elapsed >= now {
                return None;
            }
            // Slots repeat every rotation: past one rotation, visiting the
            // remaining ticks would only meet the same slots again.
            let slots = self.slots.len() as u64;
            if now - self.elapsed > slots {
                self.elapsed = now - slots;
            }
            self.elapsed += 1;
            self.cursor = self.slots[(self.elapsed & self.mask) as usize].head;
        }
    }

    /// Links an allocated, unlinked entry onto the list for `deadline`.
    fn place(&mut self, index: u32, deadline: u64) {
        if deadline <= self.elapsed {
            self.slab.push_back(&mut self.overdue, OVERDUE, index);
        } else {
            let slot = (deadline & self.mask) as u32;
            self.slab
                .push_back(&mut self.slots[slot as usize], slot, index);
        }
    }

    /// Unlinks an entry from whatever list it is on.
    fn unlink(&mut self, index: u32) {
        let entry = &self.slab.entries[index as usize];
        if self.cursor == index {
            self.cursor = entry.next;
        }
        let list = match entry.list {
            OVERDUE => &mut self.overdue,
            slot => &mut self.slots[slot as usize],
        };
        self.slab.unlink(list, index);
    }
}

impl<K> std::fmt::Debug for Wheel<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wheel")
            .field("slots", &self.slots.len())
            .field("len", &self.len())
            .field("elapsed", &self.elapsed)
            .finish()
    }
}

/// Iterator over the timers that expired, returned by [`Wheel::advance`].
pub struct Expired<'a, K> {
    wheel: &'a mut Wheel<K>,
    now: u64,
}

impl<K> Iterator for Expired<'_, K> {
    type Item = K;

    fn next(&mut self) -> Option<K> {
        self.wheel.poll(self.now)
    }
}

#[cfg(test)]
mod tests;
