//! Cost of one admission + release (the per-connection work of the limiter).

use std::hint::black_box;
use std::net::IpAddr;

use criterion::{Criterion, criterion_group, criterion_main};
use smartproxy_limits::{IpLimiter, IpLimits};

fn admit(c: &mut Criterion) {
    let l = IpLimiter::new(IpLimits { max_open: 100, per_minute: 0, ..IpLimits::default() });
    let mut i = 0u32;
    c.bench_function("admit_release_open_limit", |b| {
        b.iter(|| {
            i = i.wrapping_add(1);
            let g = l.try_acquire(black_box(IpAddr::from((i % 1024).to_be_bytes())));
            drop(black_box(g));
        })
    });
    let r =
        IpLimiter::new(IpLimits { max_open: 100, per_minute: 1_000_000, ..IpLimits::default() });
    c.bench_function("admit_release_open_and_rate", |b| {
        b.iter(|| {
            i = i.wrapping_add(1);
            let g = r.try_acquire(black_box(IpAddr::from((i % 1024).to_be_bytes())));
            drop(black_box(g));
        })
    });
}

criterion_group!(benches, admit);
criterion_main!(benches);
