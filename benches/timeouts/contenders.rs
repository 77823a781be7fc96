//! The timeout structures compared, behind one trait so that every group
//! runs the same workload on each.
//!
//! Time is counted in ticks; contenders that take `Instant`s or `Duration`s
//! get one tick = 1 ms. Ids are dense (`0..n`), as connection slots are.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::ptr;
use std::rc::Rc;
use std::sync::OnceLock;
use std::time::Duration;

use parking_lot::Mutex;
use rustc_hash::FxHashMap;

pub trait Timeouts {
    const NAME: &'static str;
    fn new(n: usize) -> Self;
    /// Schedules timer `id` at tick `deadline`.
    fn schedule(&mut self, id: usize, deadline: u64);
    /// Moves scheduled timer `id` to `deadline`.
    fn reschedule(&mut self, id: usize, deadline: u64);
    /// Cancels scheduled timer `id`.
    fn cancel(&mut self, id: usize);
    /// Advances to tick `now` and returns how many timers expired.
    fn expire(&mut self, now: u64) -> usize;
}

// ---------------------------------------------------------------- our wheel

pub struct OurWheel {
    wheel: wheel_server::wheel::Wheel<usize>,
    keys: Vec<Option<wheel_server::wheel::TimerKey>>,
}

impl Timeouts for OurWheel {
    const NAME: &'static str = "wheel-server";
    fn new(n: usize) -> Self {
        OurWheel {
            wheel: wheel_server::wheel::Wheel::with_capacity(512, n + 1),
            keys: vec![None; n + 1],
        }
    }
    fn schedule(&mut self, id: usize, deadline: u64) {
        self.keys[id] = Some(self.wheel.insert(id, deadline));
    }
    #[inline]
    fn reschedule(&mut self, id: usize, deadline: u64) {
        let key = self.keys[id].expect("scheduled");
        self.wheel.reset(key, deadline);
    }
    fn cancel(&mut self, id: usize) {
        if let Some(key) = self.keys[id].take() {
            self.wheel.remove(key);
        }
    }
    fn expire(&mut self, now: u64) -> usize {
        let mut n = 0;
        for id in self.wheel.advance(now) {
            self.keys[id] = None;
            n += 1;
        }
        n
    }
}

// ------------------------------------------ the classic list + map design, ported as is

/// The classic C design of long-connection servers: a `std::list` of (fd, last activity) ordered by
/// activity, an `unordered_map<fd, list::iterator>`, one pthread mutex.
/// Every update erases the node and `push_back`s a new one (a free and an
/// allocation); the reaper pops expired entries from the head.
pub struct SeedList {
    inner: Mutex<SeedInner>,
}

struct Node {
    id: usize,
    deadline: u64,
    prev: *mut Node,
    next: *mut Node,
}

struct SeedInner {
    head: *mut Node,
    tail: *mut Node,
    map: FxHashMap<usize, *mut Node>,
}

impl SeedInner {
    fn push_back(&mut self, id: usize, deadline: u64) -> *mut Node {
        let node = Box::into_raw(Box::new(Node {
            id,
            deadline,
            prev: self.tail,
            next: ptr::null_mut(),
        }));
        // SAFETY: tail, when non-null, is a live node owned by this list.
        unsafe {
            if self.tail.is_null() {
                self.head = node;
            } else {
                (*self.tail).next = node;
            }
        }
        self.tail = node;
        node
    }

    /// Unlinks and frees `node`.
    fn erase(&mut self, node: *mut Node) {
        // SAFETY: node is a live node of this list; its neighbours too.
        unsafe {
            let Node { prev, next, .. } = *node;
            if prev.is_null() {
                self.head = next
            } else {
                (*prev).next = next
            }
            if next.is_null() {
                self.tail = prev
            } else {
                (*next).prev = prev
            }
            drop(Box::from_raw(node));
        }
    }
}

// SAFETY: the raw pointers are only touched under the mutex.
unsafe impl Send for SeedInner {}

impl Drop for SeedList {
    fn drop(&mut self) {
        let inner = self.inner.get_mut();
        while !inner.head.is_null() {
            let head = inner.head;
            inner.erase(head);
        }
    }
}

impl Timeouts for SeedList {
    const NAME: &'static str = "list+map";
    fn new(n: usize) -> Self {
        let mut map = FxHashMap::default();
        map.reserve(n + 1);
        SeedList {
            inner: Mutex::new(SeedInner {
                head: ptr::null_mut(),
                tail: ptr::null_mut(),
                map,
            }),
        }
    }
    fn schedule(&mut self, id: usize, deadline: u64) {
        let mut inner = self.inner.lock();
        let node = inner.push_back(id, deadline);
        inner.map.insert(id, node);
    }
    #[inline]
    fn reschedule(&mut self, id: usize, deadline: u64) {
        let mut inner = self.inner.lock();
        if let Some(&old) = inner.map.get(&id) {
            inner.erase(old);
        }
        let node = inner.push_back(id, deadline);
        inner.map.insert(id, node);
    }
    fn cancel(&mut self, id: usize) {
        let mut inner = self.inner.lock();
        if let Some(node) = inner.map.remove(&id) {
            inner.erase(node);
        }
    }
    fn expire(&mut self, now: u64) -> usize {
        let mut inner = self.inner.lock();
        let mut n = 0;
        // SAFETY: head, when non-null, is a live node.
        while !inner.head.is_null() && unsafe { (*inner.head).deadline } <= now {
            let head = inner.head;
            let id = unsafe { (*head).id };
            inner.map.remove(&id);
            inner.erase(head);
            n += 1;
        }
        n
    }
}

// ------------------------------------------- BinaryHeap, lazy deletion

/// A min-heap of (deadline, id, version); a reschedule pushes a new entry
/// and bumps the id's version, so stale entries are skipped when popped. The
/// heap is rebuilt when stale entries outnumber live ones, so it stays
/// bounded (the rebuild's cost is part of what is measured).
pub struct LazyHeap {
    heap: BinaryHeap<Reverse<(u64, u32, u32)>>,
    version: Vec<u32>,
    live: Vec<bool>,
    deadline: Vec<u64>,
    count: usize,
}

impl LazyHeap {
    fn maybe_compact(&mut self) {
        if self.heap.len() > 2 * self.count + 1024 {
            let entries: Vec<_> = (0..self.live.len())
                .filter(|&id| self.live[id])
                .map(|id| Reverse((self.deadline[id], id as u32, self.version[id])))
                .collect();
            self.heap = BinaryHeap::from(entries);
        }
    }
}

impl Timeouts for LazyHeap {
    const NAME: &'static str = "BinaryHeap (lazy)";
    fn new(n: usize) -> Self {
        LazyHeap {
            heap: BinaryHeap::with_capacity(2 * n + 1024),
            version: vec![0; n + 1],
            live: vec![false; n + 1],
            deadline: vec![0; n + 1],
            count: 0,
        }
    }
    fn schedule(&mut self, id: usize, deadline: u64) {
        self.version[id] = self.version[id].wrapping_add(1);
        self.live[id] = true;
        self.deadline[id] = deadline;
        self.count += 1;
        self.heap
            .push(Reverse((deadline, id as u32, self.version[id])));
    }
    #[inline]
    fn reschedule(&mut self, id: usize, deadline: u64) {
        self.version[id] = self.version[id].wrapping_add(1);
        self.deadline[id] = deadline;
        self.heap
            .push(Reverse((deadline, id as u32, self.version[id])));
        self.maybe_compact();
    }
    fn cancel(&mut self, id: usize) {
        if self.live[id] {
            self.live[id] = false;
            self.count -= 1;
            self.version[id] = self.version[id].wrapping_add(1);
            self.maybe_compact();
        }
    }
    fn expire(&mut self, now: u64) -> usize {
        let mut n = 0;
        while let Some(&Reverse((deadline, id, version))) = self.heap.peek() {
            if deadline > now {
                break;
            }
            self.heap.pop();
            let id = id as usize;
            if self.live[id] && self.version[id] == version {
                self.live[id] = false;
                self.count -= 1;
                n += 1;
            }
        }
        n
    }
}

// ---------------------------------------------------------------- BTreeMap

pub struct Btree {
    map: BTreeMap<(u64, usize), ()>,
    deadline: Vec<Option<u64>>,
}

impl Timeouts for Btree {
    const NAME: &'static str = "BTreeMap";
    fn new(n: usize) -> Self {
        Btree {
            map: BTreeMap::new(),
            deadline: vec![None; n + 1],
        }
    }
    fn schedule(&mut self, id: usize, deadline: u64) {
        self.map.insert((deadline, id), ());
        self.deadline[id] = Some(deadline);
    }
    #[inline]
    fn reschedule(&mut self, id: usize, deadline: u64) {
        let old = self.deadline[id].expect("scheduled");
        self.map.remove(&(old, id));
        self.map.insert((deadline, id), ());
        self.deadline[id] = Some(deadline);
    }
    fn cancel(&mut self, id: usize) {
        if let Some(old) = self.deadline[id].take() {
            self.map.remove(&(old, id));
        }
    }
    fn expire(&mut self, now: u64) -> usize {
        let mut n = 0;
        while let Some(entry) = self.map.first_entry() {
            let (deadline, id) = *entry.key();
            if deadline > now {
                break;
            }
            entry.remove();
            self.deadline[id] = None;
            n += 1;
        }
        n
    }
}

// -------------------------------------------------- tokio-util DelayQueue

/// A current-thread runtime with a paused clock, entered on the bench
/// thread, so `DelayQueue` has its time driver and expiry is deterministic.
fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap()
    })
}

pub struct TokioDelayQueue {
    queue: tokio_util::time::DelayQueue<usize>,
    keys: Vec<Option<tokio_util::time::delay_queue::Key>>,
    base: tokio::time::Instant,
}

impl TokioDelayQueue {
    fn at(&self, tick: u64) -> tokio::time::Instant {
        self.base + Duration::from_millis(tick)
    }
}

impl Timeouts for TokioDelayQueue {
    const NAME: &'static str = "tokio-util DelayQueue";
    fn new(n: usize) -> Self {
        // Entering once per thread is enough; the guard is kept for good.
        thread_local!(static ENTERED: () = std::mem::forget(runtime().enter()));
        ENTERED.with(|_| ());
        TokioDelayQueue {
            queue: tokio_util::time::DelayQueue::with_capacity(n + 1),
            keys: vec![None; n + 1],
            base: tokio::time::Instant::now(),
        }
    }
    fn schedule(&mut self, id: usize, deadline: u64) {
        let at = self.at(deadline);
        self.keys[id] = Some(self.queue.insert_at(id, at));
    }
    #[inline]
    fn reschedule(&mut self, id: usize, deadline: u64) {
        let at = self.at(deadline);
        let key = self.keys[id].as_ref().expect("scheduled");
        self.queue.reset_at(key, at);
    }
    fn cancel(&mut self, id: usize) {
        if let Some(key) = self.keys[id].take() {
            self.queue.remove(&key);
        }
    }
    fn expire(&mut self, now: u64) -> usize {
        let target = self.at(now);
        let queue = &mut self.queue;
        let keys = &mut self.keys;
        runtime().block_on(async move {
            let now = tokio::time::Instant::now();
            if target > now {
                tokio::time::advance(target - now).await;
            }
            let mut n = 0;
            // Unconstrained: tokio's cooperative budget would otherwise make
            // poll_expired return Pending after 128 items.
            tokio::task::unconstrained(std::future::poll_fn(|cx| {
                while let std::task::Poll::Ready(Some(expired)) = queue.poll_expired(cx) {
                    keys[expired.into_inner()] = None;
                    n += 1;
                }
                std::task::Poll::Ready(())
            }))
            .await;
            n
        })
    }
}

// ------------------------------------------------------------- nexus-timer

pub struct Nexus {
    wheel: nexus_timer::Wheel<usize>,
    handles: Vec<Option<nexus_timer::TimerHandle<usize>>>,
    base: std::time::Instant,
    buf: Vec<usize>,
}

impl Nexus {
    fn at(&self, tick: u64) -> std::time::Instant {
        self.base + Duration::from_millis(tick)
    }
}

impl Timeouts for Nexus {
    const NAME: &'static str = "nexus-timer";
    fn new(n: usize) -> Self {
        let base = std::time::Instant::now();
        Nexus {
            wheel: nexus_timer::Wheel::unbounded(n.max(1024), base),
            handles: (0..=n).map(|_| None).collect(),
            base,
            buf: Vec::with_capacity(n),
        }
    }
    fn schedule(&mut self, id: usize, deadline: u64) {
        let at = self.at(deadline);
        self.handles[id] = Some(self.wheel.schedule(at, id));
    }
    #[inline]
    fn reschedule(&mut self, id: usize, deadline: u64) {
        let at = self.at(deadline);
        let handle = self.handles[id].take().expect("scheduled");
        self.handles[id] = Some(self.wheel.reschedule(handle, at));
    }
    fn cancel(&mut self, id: usize) {
        if let Some(handle) = self.handles[id].take() {
            self.wheel.cancel(handle);
        }
    }
    fn expire(&mut self, now: u64) -> usize {
        let at = self.at(now);
        self.buf.clear();
        let n = self.wheel.poll_and_rebalance(at, &mut self.buf);
        for &id in &self.buf {
            // The fired timer's handle is a zombie: free it.
            if let Some(handle) = self.handles[id].take() {
                self.wheel.free(handle);
            }
        }
        n
    }
}

impl Drop for Nexus {
    fn drop(&mut self) {
        for handle in self.handles.drain(..).flatten() {
            self.wheel.cancel(handle);
        }
    }
}

// ------------------------------------------- hierarchical_hash_wheel_timer

#[derive(Debug)]
pub struct HhwtEntry(usize);

impl hierarchical_hash_wheel_timer::wheels::cancellable::CancellableTimerEntry for HhwtEntry {
    type Id = usize;
    fn id(&self) -> &usize {
        &self.0
    }
}

/// Its cancellable wheel: cancel removes the id from a hash map (the wheel
/// keeps a dead `Weak`), so a reschedule is a cancel plus a fresh insert.
pub struct Hhwt {
    wheel: hierarchical_hash_wheel_timer::wheels::cancellable::QuadWheelWithOverflow<HhwtEntry>,
    now: u64,
}

impl Timeouts for Hhwt {
    const NAME: &'static str = "hierarchical_hash_wheel_timer";
    fn new(_n: usize) -> Self {
        Hhwt {
            wheel: hierarchical_hash_wheel_timer::wheels::cancellable::QuadWheelWithOverflow::new(),
            now: 0,
        }
    }
    fn schedule(&mut self, id: usize, deadline: u64) {
        let delay = Duration::from_millis(deadline.saturating_sub(self.now).max(1));
        let _ = self
            .wheel
            .insert_ref_with_delay(Rc::new(HhwtEntry(id)), delay);
    }
    #[inline]
    fn reschedule(&mut self, id: usize, deadline: u64) {
        let _ = self.wheel.cancel(&id);
        self.schedule(id, deadline);
    }
    fn cancel(&mut self, id: usize) {
        let _ = self.wheel.cancel(&id);
    }
    fn expire(&mut self, now: u64) -> usize {
        let mut n = 0;
        while self.now < now {
            n += self.wheel.tick().len();
            self.now += 1;
        }
        n
    }
}
