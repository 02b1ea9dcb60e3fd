//! Query latency with 10 000 client IPs tracked (and 10 000 connections open).
#![allow(missing_docs, reason = "criterion macros generate undocumented items")]

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};

use criterion::{Criterion, criterion_group, criterion_main};
use smartproxy_metrics::{Metrics, MetricsConfig};

fn benches(c: &mut Criterion) {
    let m = Metrics::new(MetricsConfig::default(), 0);
    let routes: Vec<_> = (0..20).map(|i| m.route(&format!("route-{i}"))).collect();
    let conns: Vec<_> = (0..10_000u32)
        .map(|i| {
            let ip = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i));
            m.connection_opened(ip, &routes[i as usize % routes.len()])
        })
        .collect();
    for t in 1..=120 {
        for (i, c) in conns.iter().enumerate() {
            c.add_in(100 + i as u64);
            c.add_out(1_000);
        }
        m.tick(t);
    }
    // Closed connections for the histograms.
    for i in 0..10_000u32 {
        let c = m.connection_opened(IpAddr::V4(Ipv4Addr::from(0x0b00_0000 + i)), &routes[0]);
        c.add_in(u64::from(i) * 10);
    }
    let mut g = c.benchmark_group("query (10k IPs)");
    g.bench_function("tick (10k connections)", |b| {
        let mut t = 120;
        b.iter(|| {
            t += 1;
            m.tick(t);
        });
    });
    g.bench_function("connections_active", |b| b.iter(|| black_box(m.connections_active())));
    g.bench_function("connections_by_route", |b| b.iter(|| black_box(m.connections_by_route())));
    g.bench_function("connections_by_ip", |b| b.iter(|| black_box(m.connections_by_ip())));
    g.bench_function("top_ips(10)", |b| b.iter(|| black_box(m.top_ips(10))));
    g.bench_function("throughput_instant", |b| b.iter(|| black_box(m.throughput_instant())));
    g.bench_function("throughput_average", |b| b.iter(|| black_box(m.throughput_average())));
    g.bench_function("throughput_custom(3600)", |b| {
        b.iter(|| black_box(m.throughput_custom(3600)))
    });
    g.bench_function("throughput_custom(86400)", |b| {
        b.iter(|| black_box(m.throughput_custom(86_400)));
    });
    g.bench_function("throughput_history(300)", |b| {
        b.iter(|| black_box(m.throughput_history(300)))
    });
    g.bench_function("throughput_by_route(60)", |b| {
        b.iter(|| black_box(m.throughput_by_route(60)))
    });
    g.bench_function("throughput_by_ip(1)", |b| b.iter(|| black_box(m.throughput_by_ip(1))));
    g.bench_function("throughput_by_ip(60)", |b| b.iter(|| black_box(m.throughput_by_ip(60))));
    g.bench_function("requests_per_minute", |b| b.iter(|| black_box(m.requests_per_minute())));
    g.bench_function("percentiles", |b| {
        b.iter(|| {
            black_box((m.connection_duration_percentiles(), m.bytes_per_connection_percentiles()))
        });
    });
    g.bench_function("snapshot", |b| b.iter(|| black_box(m.snapshot())));
    g.finish();
    drop(conns);
}

criterion_group!(group, benches);
criterion_main!(group);
