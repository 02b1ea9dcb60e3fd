//! Lookup speed with 1,000 routes (ns per lookup). Lookups do not allocate (see
//! tests/no_alloc.rs).

use std::hint::black_box;
use std::net::IpAddr;

use criterion::{Criterion, criterion_group, criterion_main};
use smartproxy_routing::{
    ForwardAction, MatchInput, RouteAction, RouteConfig, RouteMatch, RouteTable, Target, TlsConfig,
    TlsMode,
};

const N: usize = 1000;

fn passthrough(port: u16, domains: Vec<String>) -> RouteConfig {
    RouteConfig::new(
        RouteMatch::ports(port).with_domains(domains),
        RouteAction::Forward(
            ForwardAction::to(vec![Target::new("10.0.0.1", 443)])
                .with_tls(TlsConfig::new(TlsMode::Passthrough)),
        ),
    )
}

fn plain(m: RouteMatch) -> RouteConfig {
    RouteConfig::new(m, RouteAction::Forward(ForwardAction::to(vec![Target::new("10.0.0.1", 80)])))
}

fn bench(c: &mut Criterion) {
    let ip: IpAddr = "192.0.2.33".parse().unwrap();

    // 1,000 SNI routes on one port: exact names, plus a catch-all.
    let mut routes: Vec<RouteConfig> =
        (0..N - 1).map(|i| passthrough(443, vec![format!("svc{i}.example.com")])).collect();
    routes.push(passthrough(443, vec!["*".into()]));
    let exact = RouteTable::compile(routes).unwrap();
    let hit = MatchInput::new(443, ip).with_domain("SVC737.example.com").with_tls(None);
    assert_eq!(exact.lookup(&hit).unwrap().index, 737);
    c.bench_function("lookup/1000_routes/sni_exact_hit", |b| {
        b.iter(|| exact.lookup(black_box(&hit)).map(|m| m.index))
    });
    let miss = MatchInput::new(443, ip).with_domain("nobody.example.net").with_tls(None);
    assert_eq!(exact.lookup(&miss).unwrap().index, N - 1);
    c.bench_function("lookup/1000_routes/sni_fallback_catch_all", |b| {
        b.iter(|| exact.lookup(black_box(&miss)).map(|m| m.index))
    });

    // 1,000 wildcard routes: *.t<i>.example.com.
    let routes: Vec<RouteConfig> =
        (0..N).map(|i| passthrough(443, vec![format!("*.t{i}.example.com")])).collect();
    let wild = RouteTable::compile(routes).unwrap();
    let hit = MatchInput::new(443, ip).with_domain("a.b.t500.example.com").with_tls(None);
    assert_eq!(wild.lookup(&hit).unwrap().index, 500);
    c.bench_function("lookup/1000_routes/sni_wildcard_hit", |b| {
        b.iter(|| wild.lookup(black_box(&hit)).map(|m| m.index))
    });

    // 1,000 ports, one route each.
    let routes: Vec<RouteConfig> =
        (0..N).map(|i| plain(RouteMatch::ports(10_000 + i as u16))).collect();
    let ports = RouteTable::compile(routes).unwrap();
    let hit = MatchInput::new(10_777, ip);
    assert_eq!(ports.lookup(&hit).unwrap().index, 777);
    c.bench_function("lookup/1000_routes/port_only", |b| {
        b.iter(|| ports.lookup(black_box(&hit)).map(|m| m.index))
    });

    // 1,000 HTTP routes on one port by Host and path: 100 hosts x 10 paths.
    let routes: Vec<RouteConfig> = (0..N)
        .map(|i| {
            plain(
                RouteMatch::ports(80)
                    .with_domains([format!("h{}.example.com", i / 10)])
                    .with_path(format!("/api/v{}/*", i % 10)),
            )
        })
        .collect();
    let http = RouteTable::compile(routes).unwrap();
    let hit = MatchInput::new(80, ip).with_domain("h42.example.com").with_path("/api/v7/users/1");
    assert_eq!(http.lookup(&hit).unwrap().index, 427);
    c.bench_function("lookup/1000_routes/host_and_path", |b| {
        b.iter(|| http.lookup(black_box(&hit)).map(|m| m.index))
    });

    // 1,000 path-only routes (indexed by their first literal segment).
    let routes: Vec<RouteConfig> =
        (0..N).map(|i| plain(RouteMatch::ports(8080).with_path(format!("/p{i}/*")))).collect();
    let paths = RouteTable::compile(routes).unwrap();
    let hit = MatchInput::new(8080, ip).with_path("/p999/x");
    assert_eq!(paths.lookup(&hit).unwrap().index, 999);
    c.bench_function("lookup/1000_routes/path_only", |b| {
        b.iter(|| paths.lookup(black_box(&hit)).map(|m| m.index))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
