//! The worker thread cache: finished workers park here and take the next
//! connection, so that a connection's life costs no thread spawn and no
//! teardown (MySQL's `thread_cache_size`, Apache's worker MPM).
//!
//! There is still one thread per live connection. Parked threads wait on
//! a stack: a new connection goes to the thread that parked last (its stack
//! and caches are warm), so under steady churn the same few threads serve
//! and the ones at the bottom stay untouched. When no thread is parked, the
//! accept thread spawns one as before; it never waits for a thread. A
//! thread whose connection ends parks if fewer than the capacity are parked,
//! and exits otherwise. A parked thread that gets no connection for the
//! cache's idle time exits too, so an idle server gives its threads back;
//! [`ThreadCache::close`] (at shutdown) makes them all exit at once.
//!
//! ```text
//!   accept ──pop──▶ parked thread ──run──▶ finished ──push (if room)──┐
//!     │ (none parked)    ▲                    │ (cache full)          │
//!     └──spawn──▶ new thread                  └──▶ exit               │
//!                        └──────────── next connection ◀──────────────┘
//! ```
//!
//! The hand-over is a mutex-guarded slot and `Thread::unpark`: one futex
//! wake, no spinning or yielding on either side.

use crate::server::config::Config;
use crate::server::metrics::ThreadCounters;
use std::io;
use std::mem;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::Thread;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// What a thread runs for one connection.
pub(crate) type Job = Box<dyn FnOnce() + Send + 'static>;

/// The cache's settings.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Settings {
    /// Most threads parked at once; 0 turns the cache off.
    pub(crate) capacity: usize,
    /// How long a parked thread waits for a connection before it exits.
    pub(crate) idle: Duration,
    /// Stack size of the threads it starts.
    pub(crate) stack: usize,
    /// Most threads it runs at once. Each thread takes four memory
    /// mappings (its stack, its guard page, and the signal stack and guard
    /// Rust's runtime gives it), and a thread that cannot map its signal
    /// stack aborts the whole process: the server keeps below what
    /// `vm.max_map_count` leaves room for ([`Settings::threads_within`]),
    /// refusing a thread as it does when the kernel refuses one.
    pub(crate) max_threads: usize,
}

impl Settings {
    /// The cache's settings in `config`.
    pub(crate) fn of(config: &Config) -> Settings {
        Settings {
            capacity: config.thread_cache,
            idle: config.thread_cache_idle,
            stack: config.worker_stack,
            max_threads: usize::MAX,
        }
    }

    /// The most threads `max_map_count` leaves room for when `mapped`
    /// mappings are in use: four a thread, after a reserve for everything
    /// else the process maps (the heap's arenas, TLS sessions, buffers).
    pub(crate) fn threads_within(max_map_count: u64, mapped: u64) -> usize {
        const RESERVE: u64 = 1024;
        let room = max_map_count.saturating_sub(mapped + RESERVE) / MAPPINGS_PER_THREAD;
        usize::try_from(room).unwrap_or(usize::MAX)
    }
}

/// A thread cached this long without a job gives back its stack's pages
/// ([`crate::sys::trim_stack`]); one taken sooner keeps them warm.
const TRIM_AFTER: Duration = Duration::from_millis(100);

/// Memory mappings a thread takes: its stack and guard page, and the
/// signal stack and guard page that Rust's runtime maps for it.
pub(crate) const MAPPINGS_PER_THREAD: u64 = 4;

/// A bounded cache of parked worker threads.
#[derive(Clone)]
pub(crate) struct ThreadCache {
    inner: Arc<Inner>,
}

struct Inner {
    settings: Settings,
    /// The parked threads, the most recently parked last.
    parked: Mutex<Vec<Arc<Parked>>>,
    /// Set by [`ThreadCache::close`]: finished threads exit.
    closed: AtomicBool,
    /// Threads running now (parked ones included).
    live: AtomicUsize,
    counters: ThreadCounters,
}

/// One parked thread: where its next job is left, and how to wake it.
struct Parked {
    slot: Mutex<Slot>,
    thread: Thread,
}

/// What a parked thread finds when it wakes.
enum Slot {
    /// Nothing yet (or a spurious wake-up).
    Empty,
    /// Its next connection.
    Job(Job),
    /// The cache closed: exit.
    Exit,
}

impl Parked {
    /// Leaves `slot` for the thread and wakes it.
    fn hand(&self, slot: Slot) {
        *self.slot.lock() = slot;
        self.thread.unpark();
    }

    /// Takes what was left, if anything.
    fn take(&self) -> Slot {
        mem::replace(&mut *self.slot.lock(), Slot::Empty)
    }
}

impl ThreadCache {
    pub(crate) fn new(settings: Settings, counters: ThreadCounters) -> ThreadCache {
        ThreadCache {
            inner: Arc::new(Inner {
                settings,
                parked: Mutex::new(Vec::new()),
                closed: AtomicBool::new(false),
                live: AtomicUsize::new(0),
                counters,
            }),
        }
    }

    /// Runs `job` on the most recently parked thread, or on a new one named
    /// `name` if none is parked.
    ///
    /// # Errors
    ///
    /// When no thread could be started (the process's or the machine's
    /// limits); `job` is dropped.
    pub(crate) fn run(&self, name: impl FnOnce() -> String, job: Job) -> io::Result<()> {
        let parked = {
            let mut stack = self.inner.parked.lock();
            let parked = stack.pop();
            if parked.is_some() {
                self.inner.counters.parked.dec();
            }
            parked
        };
        if let Some(parked) = parked {
            self.inner.counters.reused.inc();
            parked.hand(Slot::Job(job));
            return Ok(());
        }
        let max = self.inner.settings.max_threads;
        if self.inner.live.fetch_add(1, Ordering::AcqRel) >= max {
            self.inner.live.fetch_sub(1, Ordering::AcqRel);
            return Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                format!("{max} threads running: vm.max_map_count leaves room for no more"),
            ));
        }
        let inner = Arc::clone(&self.inner);
        let spawned = std::thread::Builder::new()
            .name(name())
            .stack_size(self.inner.settings.stack)
            .spawn(move || {
                inner.serve(job);
                inner.live.fetch_sub(1, Ordering::AcqRel);
            });
        if let Err(e) = spawned {
            self.inner.live.fetch_sub(1, Ordering::AcqRel);
            return Err(e);
        }
        self.inner.counters.spawned.inc();
        Ok(())
    }

    /// Threads parked now.
    #[cfg(test)]
    pub(crate) fn parked(&self) -> usize {
        self.inner.parked.lock().len()
    }

    /// Makes every parked thread exit, and every thread that finishes from
    /// now on exit instead of parking.
    pub(crate) fn close(&self) {
        self.inner.closed.store(true, Ordering::Release);
        let parked = {
            let mut stack = self.inner.parked.lock();
            self.inner.counters.parked.dec_by(stack.len() as i64);
            mem::take(&mut *stack)
        };
        for thread in parked {
            thread.hand(Slot::Exit);
        }
    }
}

impl Inner {
    /// A thread's life: its first job, then each one a parked wait brings.
    fn serve(&self, first: Job) {
        let me = Arc::new(Parked {
            slot: Mutex::new(Slot::Empty),
            thread: std::thread::current(),
        });
        let mut job = first;
        loop {
            job();
            match self.park(&me) {
                Some(next) => job = next,
                None => return,
            }
        }
    }

    /// Waits for the next job if the cache has room; `None`: exit.
    fn park(&self, me: &Arc<Parked>) -> Option<Job> {
        {
            let mut parked = self.parked.lock();
            // Checked under the lock `close` empties the stack under.
            if parked.len() >= self.settings.capacity || self.closed.load(Ordering::Acquire) {
                return None;
            }
            parked.push(Arc::clone(me));
            // Under the lock, so that a pop's decrement never comes first.
            self.counters.parked.inc();
        }
        let parked_at = Instant::now();
        let deadline = parked_at + self.settings.idle;
        let mut trimmed = false;
        loop {
            match me.take() {
                Slot::Job(job) => return Some(job),
                Slot::Exit => return None,
                Slot::Empty => {}
            }
            let now = Instant::now();
            if !trimmed && now >= parked_at + TRIM_AFTER {
                // Waiting a while: the stack pages its connections touched
                // go back to the kernel (a thousand cached threads would
                // otherwise hold megabytes doing nothing).
                crate::sys::trim_stack();
                trimmed = true;
            }
            if now < deadline {
                let wake = if trimmed {
                    deadline
                } else {
                    deadline.min(parked_at + TRIM_AFTER)
                };
                std::thread::park_timeout(wake - now);
                continue;
            }
            // Idle too long: leave, unless a job or an exit is on its way.
            let mut parked = self.parked.lock();
            if let Some(at) = parked.iter().position(|p| Arc::ptr_eq(p, me)) {
                parked.remove(at);
                self.counters.parked.dec();
                return None;
            }
            drop(parked);
            loop {
                match me.take() {
                    Slot::Job(job) => return Some(job),
                    Slot::Exit => return None,
                    Slot::Empty => std::thread::park(),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crossbeam_channel::{Sender, unbounded};

    fn cache(capacity: usize, idle: Duration) -> ThreadCache {
        ThreadCache::new(
            Settings {
                capacity,
                idle,
                stack: 64 * 1024,
                max_threads: usize::MAX,
            },
            ThreadCounters::default(),
        )
    }

    /// Waits until `cond` holds, for at most 5 s.
    fn wait_until(mut cond: impl FnMut() -> bool) -> bool {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if cond() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        cond()
    }

    /// Runs a job that reports the id of the thread it ran on.
    fn run_reporting(cache: &ThreadCache, tx: &Sender<std::thread::ThreadId>) {
        let tx = tx.clone();
        cache
            .run(
                || "test".into(),
                Box::new(move || tx.send(std::thread::current().id()).unwrap()),
            )
            .unwrap();
    }

    #[test]
    fn a_finished_thread_takes_the_next_job() {
        let cache = cache(4, Duration::from_secs(10));
        let (tx, rx) = unbounded();
        run_reporting(&cache, &tx);
        let first = rx.recv().unwrap();
        assert!(wait_until(|| cache.parked() == 1));
        run_reporting(&cache, &tx);
        assert_eq!(rx.recv().unwrap(), first, "ran on the parked thread");
        assert_eq!(cache.inner.counters.spawned.get(), 1);
        assert_eq!(cache.inner.counters.reused.get(), 1);
        cache.close();
    }

    #[test]
    fn no_more_than_the_capacity_park() {
        let cache = cache(2, Duration::from_secs(10));
        let (tx, rx) = unbounded();
        let gate = Arc::new(std::sync::Barrier::new(6));
        // Five jobs at once: five threads, of which two park.
        for _ in 0..5 {
            let gate = Arc::clone(&gate);
            cache
                .run(
                    || "test".into(),
                    Box::new(move || {
                        gate.wait();
                    }),
                )
                .unwrap();
        }
        gate.wait();
        assert!(wait_until(|| cache.parked() == 2));
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(cache.parked(), 2, "the rest exited");
        assert_eq!(cache.inner.counters.spawned.get(), 5);
        run_reporting(&cache, &tx);
        rx.recv().unwrap();
        assert_eq!(cache.inner.counters.reused.get(), 1);
        cache.close();
    }

    thread_local! {
        /// Dropped when the thread exits.
        static ON_EXIT: std::cell::RefCell<Option<Sender<()>>> = const { std::cell::RefCell::new(None) };
    }

    /// Runs `n` jobs, on `n` threads, that each leave a sender of the
    /// returned channel in their thread's locals: the channel disconnects
    /// once all those threads have exited.
    fn run_marked(cache: &ThreadCache, n: usize) -> crossbeam_channel::Receiver<()> {
        let (exit_tx, exit_rx) = unbounded();
        let (ran_tx, ran_rx) = unbounded();
        // No job ends before all have started: none can run on a thread
        // that an earlier job left parked (the race of a quick job).
        let gate = Arc::new(std::sync::Barrier::new(n));
        for _ in 0..n {
            let (exit_tx, ran_tx, gate) = (exit_tx.clone(), ran_tx.clone(), Arc::clone(&gate));
            let job = move || {
                ON_EXIT.with(|slot| *slot.borrow_mut() = Some(exit_tx));
                gate.wait();
                ran_tx.send(()).unwrap();
            };
            cache.run(|| "test".into(), Box::new(job)).unwrap();
        }
        for _ in 0..n {
            ran_rx.recv().unwrap();
        }
        exit_rx
    }

    #[test]
    fn close_ends_the_parked_threads() {
        let cache = cache(4, Duration::from_secs(60));
        let exited = run_marked(&cache, 3);
        assert!(wait_until(|| cache.parked() == 3));
        cache.close();
        assert_eq!(
            exited.recv_timeout(Duration::from_secs(5)),
            Err(crossbeam_channel::RecvTimeoutError::Disconnected),
            "a thread still runs after close"
        );
    }

    #[test]
    fn idle_parked_threads_exit() {
        let cache = cache(4, Duration::from_millis(50));
        let exited = run_marked(&cache, 2);
        assert_eq!(
            exited.recv_timeout(Duration::from_secs(5)),
            Err(crossbeam_channel::RecvTimeoutError::Disconnected),
            "a thread still runs after its idle time"
        );
        assert_eq!(cache.parked(), 0);
        assert_eq!(cache.inner.counters.parked.get(), 0);
    }

    #[test]
    fn no_more_threads_than_the_maximum_run_at_once() {
        let mut settings = Settings::of(&Config::default());
        settings.max_threads = 2;
        settings.stack = 64 * 1024;
        let cache = ThreadCache::new(settings, ThreadCounters::default());
        let gate = Arc::new(std::sync::Barrier::new(3));
        for _ in 0..2 {
            let gate = Arc::clone(&gate);
            cache
                .run(
                    || "test".into(),
                    Box::new(move || {
                        gate.wait();
                    }),
                )
                .unwrap();
        }
        // Both run, waiting at the gate: a third is refused.
        let refused = cache.run(|| "test".into(), Box::new(|| {})).unwrap_err();
        assert_eq!(refused.kind(), io::ErrorKind::WouldBlock);
        gate.wait();
        // Parked now, they take jobs again.
        assert!(wait_until(|| cache.parked() == 2));
        let (tx, rx) = unbounded();
        run_reporting(&cache, &tx);
        rx.recv().unwrap();
        cache.close();
    }

    #[test]
    fn four_mappings_a_thread_after_a_reserve() {
        assert_eq!(
            Settings::threads_within(65_530, 500),
            (65_530 - 500 - 1024) / 4
        );
        assert_eq!(Settings::threads_within(1000, 500), 0);
    }

    #[test]
    fn a_zero_capacity_cache_spawns_every_time() {
        let cache = cache(0, Duration::from_secs(10));
        let (tx, rx) = unbounded();
        for _ in 0..3 {
            run_reporting(&cache, &tx);
            rx.recv().unwrap();
        }
        assert_eq!(cache.inner.counters.spawned.get(), 3);
        assert_eq!(cache.parked(), 0);
    }
}
