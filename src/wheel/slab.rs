//! The arena behind the wheel: timer entries stored in one `Vec`, linked into
//! intrusive doubly linked lists by index.
//!
//! An entry never moves once allocated, so a list link is a `u32` index
//! rather than a pointer, and unlinking needs no search. Freed entries form a
//! singly linked free list through `next`, so a steady state of inserts and
//! removals reuses memory and never calls the allocator.

/// The "no entry" link value, standing in for a null pointer.
pub(super) const NIL: u32 = u32::MAX;

/// One timer: its key, deadline and the links of the list it is on.
pub(super) struct Entry<K> {
    /// The caller's key; `None` while the entry is on the free list.
    pub(super) key: Option<K>,
    /// The tick at which the timer is due.
    pub(super) deadline: u64,
    /// Previous entry on the same list, or [`NIL`].
    pub(super) prev: u32,
    /// Next entry on the same list (or on the free list), or [`NIL`].
    pub(super) next: u32,
    /// Which list the entry is on: a slot index or one of the wheel's special
    /// list ids. Needed so that unlinking can fix that list's head and tail.
    pub(super) list: u32,
    /// Bumped every time the entry is freed, so that a stale
    /// [`TimerKey`](super::TimerKey) for an earlier occupant is detected.
    pub(super) generation: u32,
}

/// Head and tail of one intrusive list.
#[derive(Clone, Copy, Debug)]
pub(super) struct List {
    pub(super) head: u32,
    pub(super) tail: u32,
}

impl List {
    pub(super) const EMPTY: List = List {
        head: NIL,
        tail: NIL,
    };
}

/// A slab of entries plus a free list.
pub(super) struct Slab<K> {
    pub(super) entries: Vec<Entry<K>>,
    /// First free entry, or [`NIL`].
    free: u32,
    /// Number of occupied entries.
    len: usize,
}

impl<K> Slab<K> {
    pub(super) fn with_capacity(capacity: usize) -> Slab<K> {
        Slab {
            entries: Vec::with_capacity(capacity),
            free: NIL,
            len: 0,
        }
    }

    pub(super) fn len(&self) -> usize {
        self.len
    }

    /// Stores `key` in a free entry (or a new one) and returns its index and
    /// generation. The entry's links are left for the caller to set.
    pub(super) fn alloc(&mut self, key: K, deadline: u64) -> (u32, u32) {
        self.len += 1;
        if self.free != NIL {
            let index = self.free;
            let entry = &mut self.entries[index as usize];
            self.free = entry.next;
            debug_assert!(entry.key.is_none(), "free entry {index} holds a key");
            entry.key = Some(key);
            entry.deadline = deadline;
            return (index, entry.generation);
        }
        let index = u32::try_from(self.entries.len())
            .ok()
            .filter(|&i| i != NIL)
            .expect("timing wheel holds more than u32::MAX - 1 timers");
        self.entries.push(Entry {
            key: Some(key),
            deadline,
            prev: NIL,
            next: NIL,
            list: NIL,
            generation: 0,
        });
        (index, 0)
    }

    /// Frees an (already unlinked) entry and returns its key.
    pub(super) fn release(&mut self, index: u32) -> K {
        let entry = &mut self.entries[index as usize];
        let key = entry.key.take().expect("released a free entry");
        entry.generation = entry.generation.wrapping_add(1);
        entry.prev = NIL;
        entry.list = NIL;
        entry.next = self.free;
        self.free = index;
        self.len -= 1;
        key
    }

    /// The occupied entry at `index` if its generation matches.
    pub(super) fn get(&self, index: u32, generation: u32) -> Option<&Entry<K>> {
        self.entries
            .get(index as usize)
            .filter(|e| e.generation == generation && e.key.is_some())
    }

    /// Appends entry `index` to `list` (whose id is `list_id`).
    pub(super) fn push_back(&mut self, list: &mut List, list_id: u32, index: u32) {
        let old_tail = list.tail;
        {
            let entry = &mut self.entries[index as usize];
            entry.prev = old_tail;
            entry.next = NIL;
            entry.list = list_id;
        }
        if old_tail == NIL {
            list.head = index;
        } else {
            self.entries[old_tail as usize].next = index;
        }
        list.tail = index;
    }

    /// Removes entry `index` from `list`, which must be the list it is on.
    pub(super) fn unlink(&mut self, list: &mut List, index: u32) {
        let (prev, next) = {
            let entry = &self.entries[index as usize];
            (entry.prev, entry.next)
        };
        if prev == NIL {
            list.head = next;
        } else {
            self.entries[prev as usize].next = next;
        }
        if next == NIL {
            list.tail = prev;
        } else {
            self.entries[next as usize].prev = prev;
        }
        let entry = &mut self.entries[index as usize];
        entry.prev = NIL;
        entry.next = NIL;
        entry.list = NIL;
    }

    /// Removes and returns the first entry of `list`.
    pub(super) fn pop_front(&mut self, list: &mut List) -> Option<u32> {
        let head = list.head;
        if head == NIL {
            return None;
        }
        self.unlink(list, head);
        Some(head)
    }
}
