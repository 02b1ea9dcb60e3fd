//! Connections closed between ticks: counted once, in the next tick, globally, per route and
//! per IP; and a seeded model check of many connections across all shards.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use smartproxy_metrics::{ConnectionRecorder, Metrics, MetricsConfig, PerIp, Snapshot};

const T0: u64 = 1_700_000_000;

fn ip(last: u8) -> IpAddr {
    IpAddr::from([10, 0, 3, last])
}

fn metrics() -> Arc<Metrics> {
    Metrics::new(MetricsConfig { per_ip: PerIp::TopN(1_000), ..Default::default() }, T0)
}

fn route<'a>(s: &'a Snapshot, name: &str) -> &'a smartproxy_metrics::RouteSnapshot {
    s.routes.iter().find(|r| r.name == name).unwrap_or_else(|| panic!("no route {name}"))
}

fn ip_totals(s: &Snapshot, addr: IpAddr) -> (u64, u64) {
    s.ips.iter().find(|i| i.ip == addr).map_or((0, 0), |i| (i.bytes_in, i.bytes_out))
}

#[test]
fn opened_and_closed_between_two_ticks_is_counted_once_everywhere() {
    let m = metrics();
    let (web, db) = (m.route("web"), m.route("db"));
    m.tick(T0 + 1);
    let a = m.connection_opened(ip(1), &web);
    a.add_in(100);
    a.add_out(2_000);
    a.add_request();
    let b = m.connection_opened(ip(2), &db);
    b.add_out(7);
    drop(a);
    drop(b);
    assert_eq!(m.requests_total(), 0, "nothing before the tick");
    m.tick(T0 + 2);
    for t in [T0 + 2, T0 + 3, T0 + 4] {
        if t > T0 + 2 {
            m.tick(t);
        }
        assert_eq!(m.requests_total(), 3, "at {t}");
        assert_eq!((m.bytes_in_total(), m.bytes_out_total()), (100, 2_007), "at {t}");
        let s = m.snapshot();
        assert_eq!((route(&s, "web").bytes_in, route(&s, "web").bytes_out), (100, 2_000));
        assert_eq!((route(&s, "db").bytes_in, route(&s, "db").bytes_out), (0, 7));
        assert_eq!(ip_totals(&s, ip(1)), (100, 2_000));
        assert_eq!(ip_totals(&s, ip(2)), (0, 7));
    }
    // The requests and bytes landed in the second of the tick after the close, once.
    let s = m.snapshot();
    assert_eq!(m.requests_per_minute(), 3.0 * 60.0 / 4.0);
    assert_eq!(route(&s, "web").requests_per_second, 0.0);
    let h = m.route_history("web", 3);
    assert_eq!(h.iter().map(|p| p.rate.bytes_out).collect::<Vec<_>>(), vec![2_000.0, 0.0, 0.0]);
    let h = m.ip_history(ip(2), 3);
    assert_eq!(h.iter().map(|p| p.rate.bytes_out).collect::<Vec<_>>(), vec![7.0, 0.0, 0.0]);
    assert_eq!(s.histograms.connection_bytes_out.count, 2);
}

#[test]
fn the_same_with_per_ip_tracking_off() {
    let m = Metrics::new(MetricsConfig { per_ip: PerIp::Off, ..Default::default() }, T0);
    let web = m.route("web");
    let a = m.connection_opened(ip(1), &web);
    a.add_in(5);
    drop(a);
    m.tick(T0 + 1);
    m.tick(T0 + 2);
    assert_eq!((m.bytes_in_total(), m.requests_total()), (5, 1));
    assert!(m.snapshot().ips.is_empty());
}

#[test]
fn bytes_after_a_tick_then_close_with_nothing_more() {
    let m = metrics();
    let web = m.route("web");
    let a = m.connection_opened(ip(1), &web);
    m.tick(T0 + 1);
    assert_eq!(m.requests_total(), 1);
    a.add_in(40);
    a.add_out(60);
    drop(a);
    m.tick(T0 + 2);
    assert_eq!((m.bytes_in_total(), m.bytes_out_total(), m.requests_total()), (40, 60, 1));
    assert_eq!(m.throughput_instant().bytes_out, 60.0);
    // Sampled, then closed with nothing new since: nothing more anywhere.
    let b = m.connection_opened(ip(1), &web);
    b.add_in(1);
    m.tick(T0 + 3);
    drop(b);
    m.tick(T0 + 4);
    assert_eq!((m.bytes_in_total(), m.bytes_out_total(), m.requests_total()), (41, 60, 2));
    assert_eq!(ip_totals(&m.snapshot(), ip(1)), (41, 60));
    assert_eq!(m.throughput_instant().bytes_in, 0.0);
}

/// xorshift64*: a seeded generator, so a failure replays exactly.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[derive(Default, Clone, Copy, Debug, PartialEq, Eq)]
struct Sum {
    bytes_in: u64,
    bytes_out: u64,
    requests: u64,
}

impl Sum {
    fn add(&mut self, d: Self) {
        self.bytes_in += d.bytes_in;
        self.bytes_out += d.bytes_out;
        self.requests += d.requests;
    }
}

#[test]
fn many_connections_closed_in_random_order_match_a_naive_model() {
    const ROUTES: [&str; 3] = ["a", "b", "c"];
    for seed in 1..=8u64 {
        let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
        let m = metrics();
        let handles: Vec<_> = ROUTES.iter().map(|r| m.route(r)).collect();
        let mut open: Vec<(ConnectionRecorder, usize)> = Vec::new();
        let mut global = Sum::default();
        let mut by_route = [Sum::default(); 3];
        // Since the last tick: a tick 1 s after the previous one puts exactly these in its
        // second.
        let mut interval = [Sum::default(); 3];
        let mut opened = [0u64; 3];
        let mut by_ip: HashMap<IpAddr, (u64, u64)> = HashMap::new();
        let mut now = T0;
        let mut peak = 0;
        for step in 0..6_000 {
            match rng.below(100) {
                // Open more than close, so that all 16 shards hold many slots at once.
                0..30 => {
                    let r = rng.below(ROUTES.len());
                    let c = m.connection_opened(ip(rng.below(20) as u8), &handles[r]);
                    interval[r].requests += 1;
                    opened[r] += 1;
                    open.push((c, r));
                    peak = peak.max(open.len());
                }
                30..50 if !open.is_empty() => {
                    let (c, _) = open.swap_remove(rng.below(open.len()));
                    drop(c);
                }
                50..95 if !open.is_empty() => {
                    let (c, r) = &open[rng.below(open.len())];
                    let n = rng.next() % 10_000;
                    let e = by_ip.entry(c.client_ip()).or_default();
                    if rng.below(2) == 0 {
                        c.add_in(n);
                        interval[*r].bytes_in += n;
                        e.0 += n;
                    } else {
                        c.add_out(n);
                        interval[*r].bytes_out += n;
                        e.1 += n;
                    }
                }
                95..97 if !open.is_empty() => {
                    let (c, r) = &open[rng.below(open.len())];
                    c.add_request();
                    interval[*r].requests += 1;
                }
                97.. => {
                    now += 1;
                    m.tick(now);
                    let s = m.snapshot();
                    for (r, d) in interval.iter().enumerate() {
                        let got = route(&s, ROUTES[r]);
                        assert_eq!(got.requests_per_second, d.requests as f64, "seed {seed}");
                        let rate = m.throughput_by_route(1)[ROUTES[r]];
                        assert_eq!(rate.bytes_in, d.bytes_in as f64, "seed {seed}, step {step}");
                        assert_eq!(rate.bytes_out, d.bytes_out as f64, "seed {seed}, step {step}");
                        by_route[r].add(*d);
                        global.add(*d);
                    }
                    interval = [Sum::default(); 3];
                    let got = Sum {
                        bytes_in: m.bytes_in_total(),
                        bytes_out: m.bytes_out_total(),
                        requests: m.requests_total(),
                    };
                    assert_eq!(got, global, "seed {seed}, step {step}");
                }
                _ => {}
            }
        }
        assert!(peak > 100, "seed {seed}: only {peak} open at once");
        // Close the rest in random order, then one tick.
        while !open.is_empty() {
            drop(open.swap_remove(rng.below(open.len())));
        }
        now += 1;
        m.tick(now);
        for (r, d) in interval.iter().enumerate() {
            by_route[r].add(*d);
            global.add(*d);
        }
        let s = m.snapshot();
        let got = Sum {
            bytes_in: s.totals.bytes_in,
            bytes_out: s.totals.bytes_out,
            requests: s.requests.total,
        };
        assert_eq!(got, global, "seed {seed}");
        for (i, name) in ROUTES.iter().enumerate() {
            let r = route(&s, name);
            assert_eq!((r.bytes_in, r.bytes_out), (by_route[i].bytes_in, by_route[i].bytes_out));
            assert_eq!((r.active, r.total), (0, opened[i]));
        }
        for (addr, want) in &by_ip {
            assert_eq!(ip_totals(&s, *addr), *want, "seed {seed}, {addr}");
        }
        assert_eq!(m.connections_active(), 0);
    }
}
