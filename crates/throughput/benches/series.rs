//! Benchmarks of the rings, and the memory they hold (measured with a counting allocator).
#![allow(missing_docs, reason = "criterion macros generate undocumented items")]
#![allow(clippy::print_stdout, reason = "the bench reports measured memory")]

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicUsize, Ordering};

use criterion::{Criterion, criterion_group, criterion_main};
use smartproxy_throughput::{KeyedSeries, Sample, Series, SeriesConfig};

/// Counts bytes currently allocated.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards every call to the system allocator unchanged; only adds bookkeeping.
#[allow(unsafe_code, reason = "a global allocator is the only way to count heap bytes")]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn measure<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let before = LIVE.load(Ordering::Relaxed);
    let v = f();
    let after = LIVE.load(Ordering::Relaxed);
    let inline = size_of::<T>();
    (v, after - before + inline)
}

fn report_memory() {
    let (global, bytes) = measure(|| Series::new(SeriesConfig::default(), 0));
    println!("memory: global series (1 h of 1 s + 24 h of 1 min) = {bytes} bytes");
    assert!(bytes < 1 << 20);
    drop(global);
    let (routes, bytes) = measure(|| {
        let mut k = KeyedSeries::new(SeriesConfig::default(), 1000, 0);
        for r in 0..100u32 {
            k.push(&format!("route-{r}"), 1, Sample::new(1, 1, 1));
        }
        k
    });
    println!("memory: 100 route series (same rings) = {bytes} bytes");
    drop(routes);
    let (ips, bytes) = measure(|| {
        let mut k = KeyedSeries::new(SeriesConfig::new(60, 0), 10_000, 0);
        for ip in 0..10_000u32 {
            k.push(&std::net::Ipv4Addr::from(ip), 1, Sample::new(1, 1, 1));
        }
        k
    });
    println!("memory: 10000 IP series (60 s of 1 s, no minutes) = {bytes} bytes");
    drop(ips);
}

fn benches(c: &mut Criterion) {
    report_memory();
    let mut s = Series::new(SeriesConfig::default(), 0);
    let mut t = 0;
    c.bench_function("push (1 s advance)", |b| {
        b.iter(|| {
            t += 1;
            s.push(black_box(t), Sample::new(1500, 9000, 1));
        });
    });
    let mut full = Series::new(SeriesConfig::default(), 0);
    for t in 1..=100_000 {
        full.push(t, Sample::new(t, t * 2, 1));
    }
    for w in [1u64, 10, 60, 300, 3600, 86_400] {
        c.bench_function(&format!("window {w} s"), |b| {
            b.iter(|| black_box(full.window(100_000, black_box(w))));
        });
    }
    c.bench_function("history 300 s", |b| b.iter(|| black_box(full.history(100_000, 300))));
    c.bench_function("history 24 h", |b| b.iter(|| black_box(full.history(100_000, 86_400))));

    let mut ips = KeyedSeries::new(SeriesConfig::new(60, 0), 10_000, 0);
    for ip in 0..10_000u32 {
        ips.push(&ip, 1, Sample::new(u64::from(ip), 1, 1));
    }
    c.bench_function("keyed: top 10 of 10000 keys (1 s)", |b| {
        b.iter(|| black_box(ips.top(1, 10)));
    });
    let mut churn = KeyedSeries::new(SeriesConfig::new(60, 0), 1_000, 0);
    let mut key = 0u32;
    c.bench_function("keyed: push new key into a full tracker (1000 keys)", |b| {
        b.iter(|| {
            key += 1;
            churn.push(&key, u64::from(key / 100), Sample::new(1, 1, 1));
        });
    });
}

criterion_group!(group, benches);
criterion_main!(group);
