//! The registry of live connections: a slab of [`Conn`]s behind one
//! `parking_lot` mutex, addressed by generation-tagged [`ConnId`]s.
//!
//! It replaces the C design's `std::list` + `unordered_map` under a pthread
//! mutex. Here the lock is only taken when a connection opens or closes, when
//! a timer fires, and by shutdown and inspection; the per-frame path never
//! touches it (activity goes through an atomic, see the
//! [timer module](super::timer)).

use std::fmt;
use std::sync::Arc;
use std::time::Instant;

use parking_lot::{Condvar, Mutex};

use super::conn::Conn;

/// Identifies one connection for the server's lifetime.
///
/// An id is a slot index plus that slot's generation, bumped every time the
/// slot is freed: an id held after its connection closed never matches the
/// next connection in the same slot (no ABA).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId {
    generation: u32,
    index: u32,
}

impl ConnId {
    /// The id as one number (generation in the high 32 bits).
    pub fn as_u64(self) -> u64 {
        (u64::from(self.generation) << 32) | u64::from(self.index)
    }

    /// The slot index: dense, reused after a connection closes.
    pub(crate) fn index(self) -> usize {
        self.index as usize
    }
}

impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.index, self.generation)
    }
}

/// The set of live connections.
#[derive(Default)]
pub(crate) struct Registry {
    slots: Mutex<Slots>,
    /// Signalled when the last connection leaves.
    emptied: Condvar,
}

#[derive(Default)]
struct Slots {
    entries: Vec<Slot>,
    /// Indices of free entries.
    free: Vec<u32>,
    /// Occupied entries.
    live: usize,
}

#[derive(Default)]
struct Slot {
    generation: u32,
    conn: Option<Arc<Conn>>,
}

impl Registry {
    /// Adds the connection built by `make` unless `max` are already live.
    /// `make` is called (under the lock, so keep it cheap) only when there is
    /// room.
    pub(crate) fn insert(
        &self,
        max: usize,
        make: impl FnOnce(ConnId) -> Conn,
    ) -> Option<Arc<Conn>> {
        let mut slots = self.slots.lock();
        if slots.live >= max {
            return None;
        }
        let index = match slots.free.pop() {
            Some(index) => index,
            None => {
                let index = u32::try_from(slots.entries.len()).expect("more than 2^32 connections");
                slots.entries.push(Slot::default());
                index
            }
        };
        let slot = &mut slots.entries[index as usize];
        let id = ConnId {
            index,
            generation: slot.generation,
        };
        let conn = Arc::new(make(id));
        slot.conn = Some(Arc::clone(&conn));
        slots.live += 1;
        Some(conn)
    }

    /// Removes a connection; `None` if `id` is not live.
    pub(crate) fn remove(&self, id: ConnId) -> Option<Arc<Conn>> {
        let mut slots = self.slots.lock();
        let slot = slots.entries.get_mut(id.index())?;
        if slot.generation != id.generation {
            return None;
        }
        let conn = slot.conn.take()?;
        slot.generation = slot.generation.wrapping_add(1);
        slots.free.push(id.index);
        slots.live -= 1;
        if slots.live == 0 {
            self.emptied.notify_all();
        }
        Some(conn)
    }

    /// The live connection with this id.
    pub(crate) fn get(&self, id: ConnId) -> Option<Arc<Conn>> {
        let slots = self.slots.lock();
        let slot = slots.entries.get(id.index())?;
        (slot.generation == id.generation)
            .then(|| slot.conn.clone())
            .flatten()
    }

    /// Number of live connections.
    pub(crate) fn len(&self) -> usize {
        self.slots.lock().live
    }

    /// All live connections, at one instant.
    pub(crate) fn snapshot(&self) -> Vec<Arc<Conn>> {
        let slots = self.slots.lock();
        slots
            .entries
            .iter()
            .filter_map(|s| s.conn.clone())
            .collect()
    }

    /// Waits until no connection is live or `deadline` passes; returns
    /// whether the registry is empty.
    pub(crate) fn wait_empty(&self, deadline: Instant) -> bool {
        let mut slots = self.slots.lock();
        while slots.live > 0 {
            if self.emptied.wait_until(&mut slots, deadline).timed_out() {
                break;
            }
        }
        slots.live == 0
    }
}
