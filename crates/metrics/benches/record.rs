//! Hot path: nanoseconds per recorded read, 1 and 2 threads, owned vs shared counters; and
//! the connection life cycle (open, count, close, with a tick every 1 000 connections).
#![allow(missing_docs, reason = "criterion macros generate undocumented items")]

use std::hint::black_box;
use std::net::IpAddr;
use std::sync::Barrier;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use smartproxy_metrics::{ConnectionRecorder, Metrics, MetricsConfig};

/// Runs `work(thread, iters)` on `threads` threads at once; returns the wall time.
fn parallel(threads: usize, iters: u64, work: &(dyn Fn(usize, u64) + Sync)) -> Duration {
    let barrier = Barrier::new(threads + 1);
    std::thread::scope(|s| {
        for t in 0..threads {
            let barrier = &barrier;
            s.spawn(move || {
                barrier.wait();
                work(t, iters);
                barrier.wait();
            });
        }
        barrier.wait();
        let start = Instant::now();
        barrier.wait();
        start.elapsed()
    })
}

fn benches(c: &mut Criterion) {
    let m = Metrics::new(MetricsConfig::default(), 0);
    let route = m.route("bench");
    let ip: IpAddr = [10, 0, 0, 1].into();
    let conns: Vec<ConnectionRecorder> = (0..2).map(|_| m.connection_opened(ip, &route)).collect();
    let shared = AtomicU64::new(0);

    let mut g = c.benchmark_group("record");
    g.bench_function("1 thread, own connection (add_in)", |b| {
        b.iter(|| conns[0].add_in(black_box(1500)));
    });
    g.bench_function("2 threads, one connection each (owned counters)", |b| {
        b.iter_custom(|iters| {
            parallel(2, iters, &|t, n| {
                for _ in 0..n {
                    conns[t].add_in(black_box(1500));
                }
            })
        });
    });
    g.bench_function("2 threads, one connection, in and out (one shared line)", |b| {
        b.iter_custom(|iters| {
            parallel(2, iters, &|t, n| {
                for _ in 0..n {
                    if t == 0 {
                        conns[0].add_in(black_box(1500));
                    } else {
                        conns[0].add_out(black_box(1500));
                    }
                }
            })
        });
    });
    g.bench_function("2 threads, one shared counter (what a global atomic would cost)", |b| {
        b.iter_custom(|iters| {
            parallel(2, iters, &|_, n| {
                for _ in 0..n {
                    shared.fetch_add(black_box(1500), Ordering::Relaxed);
                }
            })
        });
    });
    g.finish();
    drop(conns);

    let mut g = c.benchmark_group("lifecycle");
    g.bench_function("open + add_in + add_out + close, tick every 1 000", |b| {
        let mut now = 0;
        b.iter_custom(|iters| {
            let start = Instant::now();
            for i in 0..iters {
                let c = m.connection_opened(black_box(ip), &route);
                c.add_in(black_box(300));
                c.add_out(black_box(5_000));
                drop(c);
                if i % 1_000 == 999 {
                    now += 1;
                    m.tick(now);
                }
            }
            now += 1;
            m.tick(now);
            start.elapsed()
        });
    });
    g.finish();
}

criterion_group!(group, benches);
criterion_main!(group);
