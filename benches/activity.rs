//! What a worker pays per received frame to keep its connection's liveness
//! up to date: `cargo bench --bench activity`.
//!
//! * `stamp` is what the server does: `stamp.touch(clock.now())`, using the
//!   very types the server uses ([`wheel_server::activity`]), with a timer
//!   thread publishing the clock every 100 ms as the server's does.
//! * `stamp_and_traffic` adds what the metrics cost: the per-connection
//!   traffic counters ([`wheel_server::traffic::Traffic`]) updated as the
//!   worker does, in the worst case of one message per read.
//! * `channel_per_frame` is the naive design: one `crossbeam-channel` send
//!   per frame to a timer thread that reschedules the connection's timer in
//!   a wheel of 10,000 timers.
//!
//! Both run with 1, 2 and 8 worker threads. The figure is CPU time per frame
//! (each thread's `CLOCK_THREAD_CPUTIME_ID`, summed over the workers *and*
//! the timer thread, divided by the frames sent), so it counts all the work
//! the design causes and stays comparable when 8 workers share 2 cores.

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use crossbeam_utils::CachePadded;
use wheel_server::activity::{Clock, Stamp};
use wheel_server::traffic::{Kind, Tally, Traffic};
use wheel_server::wheel::Wheel;

const THREADS: [usize; 3] = [1, 2, 8];
const TIMERS: usize = 10_000;
const TIMEOUT: u64 = 600;

/// CPU time consumed by the calling thread.
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes to the timespec we own.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID)");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// The server's path: `threads` workers each record `iters` frames, with or
/// without the metrics' traffic counters.
fn stamp_path(iters: u64, threads: usize, with_traffic: bool) -> Duration {
    let clock = Arc::new(Clock::new());
    // Padded: in the server each connection's stamp and counters live in
    // that connection's own allocation, never on another worker's line.
    let stamps: Arc<Vec<CachePadded<Stamp>>> = Arc::new(
        (0..threads)
            .map(|_| CachePadded::new(Stamp::new(0)))
            .collect(),
    );
    let traffic: Arc<Vec<CachePadded<Traffic>>> = Arc::new(
        (0..threads)
            .map(|_| CachePadded::new(Traffic::default()))
            .collect(),
    );
    let stop = Arc::new(AtomicBool::new(false));
    let ticker = {
        let (clock, stop) = (Arc::clone(&clock), Arc::clone(&stop));
        std::thread::spawn(move || {
            let start = thread_cpu();
            let mut tick = 0;
            while !stop.load(Ordering::Relaxed) {
                std::thread::park_timeout(Duration::from_millis(100));
                tick += 1;
                clock.publish(tick);
            }
            thread_cpu() - start
        })
    };
    let barrier = Arc::new(std::sync::Barrier::new(threads));
    let workers: Vec<_> = (0..threads)
        .map(|w| {
            let (clock, stamps, barrier) = (
                Arc::clone(&clock),
                Arc::clone(&stamps),
                Arc::clone(&barrier),
            );
            let traffic = Arc::clone(&traffic);
            std::thread::spawn(move || {
                barrier.wait();
                let start = thread_cpu();
                if with_traffic {
                    // The worker's running totals.
                    let (mut received, mut sent) = (Tally::default(), Tally::default());
                    for _ in 0..iters {
                        // One PING in, one PONG out, counted as the worker does.
                        received.add(black_box(Kind::Ping), black_box(6));
                        sent.add(black_box(Kind::Pong), black_box(6));
                        black_box(&*stamps[w]).touch(black_box(&*clock).now());
                        black_box(&*traffic[w]).publish(&mut received, &mut sent);
                    }
                } else {
                    for _ in 0..iters {
                        let stamp = black_box(&*stamps[w]);
                        stamp.touch(black_box(&*clock).now());
                    }
                }
                thread_cpu() - start
            })
        })
        .collect();
    let mut cpu: Duration = workers.into_iter().map(|w| w.join().unwrap()).sum();
    stop.store(true, Ordering::Relaxed);
    ticker.thread().unpark();
    cpu += ticker.join().unwrap();
    cpu / threads as u32
}

/// The naive path: one channel send per frame, a timer thread rescheduling.
fn channel_path(iters: u64, threads: usize) -> Duration {
    let (tx, rx) = crossbeam_channel::unbounded::<u32>();
    let (ready_tx, ready) = crossbeam_channel::bounded::<()>(1);
    let total = iters * threads as u64;
    let timer = std::thread::spawn(move || {
        let mut wheel = Wheel::with_capacity(512, TIMERS);
        let keys: Vec<_> = (0..TIMERS)
            .map(|i| wheel.insert(i, 1 + (i as u64 % TIMEOUT)))
            .collect();
        ready_tx.send(()).unwrap();
        let start = thread_cpu();
        let mut now = 0u64;
        for processed in 0..total {
            let id = rx.recv().unwrap() as usize;
            // Time moves on one tick per 1024 messages.
            now = now.max(processed >> 10);
            wheel.reset(keys[id], now + TIMEOUT);
        }
        black_box(&wheel);
        thread_cpu() - start
    });
    ready.recv().unwrap();
    let barrier = Arc::new(std::sync::Barrier::new(threads));
    let workers: Vec<_> = (0..threads)
        .map(|w| {
            let (tx, barrier) = (tx.clone(), Arc::clone(&barrier));
            std::thread::spawn(move || {
                barrier.wait();
                let start = thread_cpu();
                for _ in 0..iters {
                    tx.send(black_box(w as u32)).unwrap();
                }
                thread_cpu() - start
            })
        })
        .collect();
    let mut cpu: Duration = workers.into_iter().map(|w| w.join().unwrap()).sum();
    cpu += timer.join().unwrap();
    cpu / threads as u32
}

fn activity_path(c: &mut Criterion) {
    let mut group = c.benchmark_group("activity_path");
    group.throughput(Throughput::Elements(1));
    for threads in THREADS {
        group.bench_with_input(BenchmarkId::new("stamp", threads), &threads, |b, &t| {
            b.iter_custom(|iters| stamp_path(iters, t, false));
        });
        group.bench_with_input(
            BenchmarkId::new("stamp_and_traffic", threads),
            &threads,
            |b, &t| {
                b.iter_custom(|iters| stamp_path(iters, t, true));
            },
        );
        group.bench_with_input(
            BenchmarkId::new("channel_per_frame", threads),
            &threads,
            |b, &t| {
                b.iter_custom(|iters| channel_path(iters, t));
            },
        );
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2));
    targets = activity_path
}
criterion_main!(benches);
