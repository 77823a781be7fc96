//! The registry of live connections: a slab of [`Conn`]s behind one
//! `parking_lot` mutex, addressed by generation-tagged [`ConnId`]s.
//!
//! The lock is taken when a connection opens or closes, when a timer fires,
//! by pushes addressed to a connection, and by shutdown and inspection; the
//! per-message path never touches it (activity goes through an atomic stamp,
//! see [`crate::activity`]).
//!
//! The registry also keeps the traffic totals of connections that have
//! closed: a connection's counters are folded in under the same lock that
//! removes it, and [`Registry::traffic`] sums under that lock too, so a
//! scrape counts every connection's traffic exactly once and totals never go
//! backwards.

use std::sync::Arc;
use std::time::Instant;

use parking_lot::{Condvar, Mutex};

use crate::server::conn::Conn;
use crate::server::conn::id::ConnId;
use crate::traffic::Tally;

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
    /// Traffic of the connections removed so far: (received, sent).
    retired: (Tally, Tally),
}

#[derive(Default)]
struct Slot {
    /// Bumped each time the slot is freed, so stale ids never match.
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
        let id = ConnId::new(index, slot.generation);
        let conn = Arc::new(make(id));
        slot.conn = Some(Arc::clone(&conn));
        slots.live += 1;
        Some(conn)
    }

    /// Removes a connection, folding its final traffic (received, sent)
    /// into the totals; `None` if `id` is not live.
    pub(crate) fn remove(&self, id: ConnId, traffic: (Tally, Tally)) -> Option<Arc<Conn>> {
        let mut slots = self.slots.lock();
        let slot = slots.entries.get_mut(id.index())?;
        if slot.generation != id.generation() {
            return None;
        }
        let conn = slot.conn.take()?;
        slot.generation = slot.generation.wrapping_add(1);
        slots.free.push(id.index() as u32);
        slots.live -= 1;
        slots.retired.0.merge(&traffic.0);
        slots.retired.1.merge(&traffic.1);
        if slots.live == 0 {
            self.emptied.notify_all();
        }
        Some(conn)
    }

    /// The live connection with this id.
    pub(crate) fn get(&self, id: ConnId) -> Option<Arc<Conn>> {
        let slots = self.slots.lock();
        let slot = slots.entries.get(id.index())?;
        (slot.generation == id.generation())
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

    /// Traffic of all connections, open and closed: (received, sent).
    pub(crate) fn traffic(&self) -> (Tally, Tally) {
        let slots = self.slots.lock();
        let (mut received, mut sent) = slots.retired;
        for conn in slots.entries.iter().filter_map(|s| s.conn.as_ref()) {
            let (r, s) = conn.traffic.snapshot();
            received.merge(&r);
            sent.merge(&s);
        }
        (received, sent)
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
