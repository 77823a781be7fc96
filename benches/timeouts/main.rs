//! The cost of the timeout structure, side by side with the alternatives:
//! `cargo bench --bench timeouts`.
//!
//! Groups, each with N = 1,000, 10,000 and 100,000 live timers:
//!
//! * `reschedule`: move a random existing timer to now + timeout (what an
//!   idle timeout does on activity, when done per message);
//! * `open_close`: schedule a new timer, then cancel it (connection churn);
//! * `cancel`: cancel alone (batches of 1,024 timers are scheduled untimed,
//!   then cancelled timed);
//! * `expire`: advance past a deadline that expires 10% of N; reported per
//!   expired timer (the throughput figure).
//!
//! The workload mirrors the server's defaults: a 600-tick timeout (60 s at
//! 100 ms), initial deadlines spread uniformly over it, timers touched in a
//! fixed pseudo-random order.

mod contenders;

use std::hint::black_box;
use std::time::Duration;

use contenders::{Btree, Hhwt, LazyHeap, Nexus, OurWheel, SeedList, Timeouts, TokioDelayQueue};
use criterion::{
    BatchSize, BenchmarkGroup, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main,
    measurement::WallTime,
};

const SIZES: [usize; 3] = [1_000, 10_000, 100_000];
const TIMEOUT: u64 = 600;
/// Precomputed random ids, cycled through (so the RNG is not measured).
const ORDER_LEN: usize = 1 << 16;

/// xorshift64*: deterministic, so every contender sees the same sequence.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n as u64) as usize
    }
}

/// `0..n` in a random order (Fisher-Yates).
fn permutation(n: usize, seed: u64) -> Vec<usize> {
    let mut rng = Rng(seed);
    let mut v: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        v.swap(i, rng.below(i + 1));
    }
    v
}

fn random_ids(n: usize, seed: u64) -> Vec<usize> {
    let mut rng = Rng(seed);
    (0..ORDER_LEN).map(|_| rng.below(n)).collect()
}

/// `n` timers with deadlines spread over 1..=TIMEOUT, scheduled in deadline
/// order (the seed's list must be kept in order: it appends at the tail).
fn filled<T: Timeouts>(n: usize) -> T {
    filled_with_room::<T>(n, 0)
}

/// Like [`filled`], with ids `n..n + room` free for the benchmark's own.
fn filled_with_room<T: Timeouts>(n: usize, room: usize) -> T {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut timers: Vec<(u64, usize)> = (0..n)
        .map(|id| (1 + rng.below(TIMEOUT as usize) as u64, id))
        .collect();
    timers.sort_unstable();
    let mut t = T::new(n + room);
    for (deadline, id) in timers {
        t.schedule(id, deadline);
    }
    t
}

fn reschedule_one<T: Timeouts>(group: &mut BenchmarkGroup<'_, WallTime>, n: usize) {
    group.bench_with_input(BenchmarkId::new(T::NAME, n), &n, |b, &n| {
        let mut timers = filled::<T>(n);
        let ids = random_ids(n, 42);
        let mut i = 0usize;
        b.iter(|| {
            i = i.wrapping_add(1);
            // Time moves on one tick per 1024 operations.
            let now = (i >> 10) as u64;
            timers.reschedule(ids[i & (ORDER_LEN - 1)], now + TIMEOUT);
        });
        black_box(&timers);
    });
}

fn open_close_one<T: Timeouts>(group: &mut BenchmarkGroup<'_, WallTime>, n: usize) {
    group.bench_with_input(BenchmarkId::new(T::NAME, n), &n, |b, &n| {
        let mut timers = filled::<T>(n);
        // The extra id `n` is the churning connection.
        let deadlines: Vec<u64> = random_ids(TIMEOUT as usize, 7)
            .into_iter()
            .map(|d| d as u64 + 1)
            .collect();
        let mut i = 0usize;
        b.iter(|| {
            i = i.wrapping_add(1);
            timers.schedule(n, deadlines[i & (ORDER_LEN - 1)]);
            timers.cancel(n);
        });
        black_box(&timers);
    });
}

const BATCH: usize = 1024;

fn cancel_one<T: Timeouts>(group: &mut BenchmarkGroup<'_, WallTime>, n: usize) {
    group.bench_with_input(BenchmarkId::new(T::NAME, n), &n, |b, &n| {
        let deadlines: Vec<u64> = random_ids(TIMEOUT as usize, 11)
            .into_iter()
            .map(|d| d as u64 + 1)
            .collect();
        let order = permutation(BATCH, 5);
        b.iter_custom(|iters| {
            let mut timers = filled_with_room::<T>(n, BATCH);
            let mut total = Duration::ZERO;
            let mut done = 0u64;
            while done < iters {
                let batch = (iters - done).min(BATCH as u64) as usize;
                for (j, &deadline) in deadlines[..batch].iter().enumerate() {
                    timers.schedule(n + j, deadline);
                }
                let start = std::time::Instant::now();
                // In random order, as connections close.
                for &j in &order[..BATCH] {
                    if j < batch {
                        timers.cancel(n + j);
                    }
                }
                total += start.elapsed();
                done += batch as u64;
            }
            black_box(&timers);
            total
        });
    });
}

fn expire_one<T: Timeouts>(group: &mut BenchmarkGroup<'_, WallTime>, n: usize) {
    group.throughput(Throughput::Elements((n / 10) as u64));
    group.bench_with_input(BenchmarkId::new(T::NAME, n), &n, |b, &n| {
        b.iter_batched(
            || filled::<T>(n),
            |mut timers| {
                let fired = timers.expire(TIMEOUT / 10);
                black_box(fired);
                // Returned, so that dropping it is not measured.
                timers
            },
            BatchSize::LargeInput,
        );
    });
}

/// Runs `f` for every contender at every size.
macro_rules! for_each_contender {
    ($group:expr, $f:ident) => {
        for n in SIZES {
            $f::<OurWheel>($group, n);
            $f::<Nexus>($group, n);
            $f::<Hhwt>($group, n);
            $f::<TokioDelayQueue>($group, n);
            $f::<SeedList>($group, n);
            $f::<LazyHeap>($group, n);
            $f::<Btree>($group, n);
        }
    };
}

fn reschedule(c: &mut Criterion) {
    let mut group = c.benchmark_group("reschedule");
    group.throughput(Throughput::Elements(1));
    for_each_contender!(&mut group, reschedule_one);
    group.finish();
}

fn open_close(c: &mut Criterion) {
    let mut group = c.benchmark_group("open_close");
    group.throughput(Throughput::Elements(1));
    for_each_contender!(&mut group, open_close_one);
    group.finish();
}

fn cancel(c: &mut Criterion) {
    let mut group = c.benchmark_group("cancel");
    group.throughput(Throughput::Elements(1));
    for_each_contender!(&mut group, cancel_one);
    group.finish();
}

fn expire(c: &mut Criterion) {
    let mut group = c.benchmark_group("expire");
    group.sample_size(20);
    for_each_contender!(&mut group, expire_one);
    group.finish();
}

/// Checks that every contender expires exactly the timers due, so the
/// groups compare equal work.
fn sanity() {
    fn count<T: Timeouts>() -> usize {
        let mut t = filled::<T>(10_000);
        t.expire(TIMEOUT / 10)
    }
    let expected = count::<Btree>();
    for (name, got) in [
        ("wheel-server", count::<OurWheel>()),
        ("nexus-timer", count::<Nexus>()),
        ("hierarchical_hash_wheel_timer", count::<Hhwt>()),
        ("DelayQueue", count::<TokioDelayQueue>()),
        ("seed", count::<SeedList>()),
        ("heap", count::<LazyHeap>()),
    ] {
        assert_eq!(got, expected, "{name} expired a different number of timers");
    }
}

fn config() -> Criterion {
    sanity();
    Criterion::default()
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1))
}

criterion_group! {
    name = benches;
    config = config();
    targets = reschedule, open_close, cancel, expire
}
criterion_main!(benches);
