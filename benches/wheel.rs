//! Cost of the timeout structure: `cargo bench --bench wheel`.
//!
//! Each group runs with N = 1,000, 10,000 and 100,000 live timers, touching
//! timers chosen at random (a fixed-seed xorshift, so runs compare).

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use wheel_server::wheel::{TimerKey, Wheel};

const SIZES: [usize; 3] = [1_000, 10_000, 100_000];
/// 60 s idle timeout at a 100 ms tick, the server's defaults.
const TIMEOUT_TICKS: u64 = 600;
const SLOTS: usize = 512;

/// A small deterministic PRNG (xorshift64*), so that the benchmark does not
/// measure a random number generator's cost or vary between runs.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n as u64) as usize
    }
}

fn filled(n: usize) -> (Wheel<usize>, Vec<TimerKey>) {
    let mut wheel = Wheel::with_capacity(SLOTS, n);
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let keys = (0..n)
        .map(|i| wheel.insert(i, 1 + rng.below(TIMEOUT_TICKS as usize) as u64))
        .collect();
    (wheel, keys)
}

fn reschedule(c: &mut Criterion) {
    let mut group = c.benchmark_group("reschedule");
    group.throughput(Throughput::Elements(1));
    for n in SIZES {
        group.bench_with_input(BenchmarkId::new("wheel", n), &n, |b, &n| {
            let (mut wheel, keys) = filled(n);
            let mut rng = Rng(42);
            let mut now = 0u64;
            b.iter(|| {
                now += 1;
                let key = keys[rng.below(n)];
                black_box(wheel.reset(key, now + TIMEOUT_TICKS));
            });
        });
    }
    group.finish();
}

fn open_close(c: &mut Criterion) {
    let mut group = c.benchmark_group("open_close");
    group.throughput(Throughput::Elements(1));
    for n in SIZES {
        group.bench_with_input(BenchmarkId::new("wheel", n), &n, |b, &n| {
            let (mut wheel, _keys) = filled(n);
            let mut rng = Rng(7);
            b.iter(|| {
                let key = wheel.insert(n, 1 + rng.below(TIMEOUT_TICKS as usize) as u64);
                black_box(wheel.remove(key));
            });
        });
    }
    group.finish();
}

fn expire(c: &mut Criterion) {
    let mut group = c.benchmark_group("expire");
    for n in SIZES {
        // Advancing to tick 60 of 600 expires about 10% of N.
        let expiring = n / 10;
        group.throughput(Throughput::Elements(expiring as u64));
        group.bench_with_input(BenchmarkId::new("wheel", n), &n, |b, &n| {
            b.iter_batched_ref(
                || filled(n).0,
                |wheel| {
                    let fired = wheel.advance(TIMEOUT_TICKS / 10).count();
                    black_box(fired)
                },
                criterion::BatchSize::LargeInput,
            );
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = reschedule, open_close, expire
}
criterion_main!(benches);
