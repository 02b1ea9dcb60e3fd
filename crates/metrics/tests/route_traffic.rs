//! Traffic counted outside connection recorders (kernel-forwarded routes):
//! `Metrics::add_route_traffic` lands in the route's series and the totals at the next tick.

use std::net::IpAddr;

use smartproxy_metrics::{Metrics, MetricsConfig};

const T0: u64 = 1_700_000_000;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap_or_else(|_| panic!("bad ip {s}"))
}

#[test]
fn route_traffic_joins_the_route_series_and_the_totals_at_the_next_tick() {
    let m = Metrics::new(MetricsConfig::default(), T0);
    let kernel = m.route("db");
    let web = m.route("web");
    let c = m.connection_opened(ip("10.0.0.1"), &web);
    c.add_in(10);
    c.add_out(20);

    m.add_route_traffic(&kernel, 1_000, 5_000, 2);
    m.add_route_traffic(&kernel, 500, 0, 1);
    // Connection totals count at once; bytes wait for the tick.
    assert_eq!(m.connections_total(), 4);
    assert_eq!(m.bytes_in_total(), 0);
    assert_eq!(m.connections_active(), 1, "no connection is open for kernel traffic");

    m.tick(T0 + 1);
    assert_eq!(m.bytes_in_total(), 1_510);
    assert_eq!(m.bytes_out_total(), 5_020);
    assert_eq!(m.requests_total(), 4, "one request per connection, as for layer 4");
    let s = m.snapshot();
    let db = s.routes.iter().find(|r| r.name == "db").expect("db route");
    assert_eq!((db.bytes_in, db.bytes_out, db.total, db.active), (1_500, 5_000, 3, 0));
    let one_second = db.throughput.iter().find(|w| w.window_seconds == 1).expect("1 s window");
    assert_eq!((one_second.rate.bytes_in, one_second.rate.bytes_out), (1_500.0, 5_000.0));

    // Taken once: the next tick adds nothing more.
    m.tick(T0 + 2);
    assert_eq!(m.bytes_in_total(), 1_510);
    let s = m.snapshot();
    let db = s.routes.iter().find(|r| r.name == "db").expect("db route");
    assert_eq!(db.bytes_in, 1_500);
    assert_eq!(m.route_history("db", 2).iter().map(|p| p.rate.bytes_in).sum::<f64>(), 1_500.0);
    drop(c);
}

#[test]
fn a_late_tick_spreads_route_traffic_like_connection_bytes() {
    let m = Metrics::new(MetricsConfig::default(), T0);
    let kernel = m.route("db");
    m.tick(T0 + 1);
    m.add_route_traffic(&kernel, 2_000, 0, 0);
    m.tick(T0 + 3); // two seconds late: half in each second
    let h = m.route_history("db", 2);
    assert_eq!(h.iter().map(|p| p.rate.bytes_in).collect::<Vec<_>>(), [1_000.0, 1_000.0]);
    assert_eq!(m.connections_total(), 0);
}
