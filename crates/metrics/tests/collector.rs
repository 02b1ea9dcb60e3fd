//! The collector through its public API.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use smartproxy_metrics::{
    CertificateExpiry, CloseReason, ManualClock, Metrics, MetricsConfig, PerIp, ProxyVersion,
    RefuseReason, Snapshot,
};

const T0: u64 = 1_700_000_000;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap_or_else(|_| panic!("bad ip {s}"))
}

fn metrics_with_clock(cfg: MetricsConfig) -> (Arc<Metrics>, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::new());
    (Metrics::with_clock(cfg, T0, clock.clone()), clock)
}

#[test]
fn bytes_are_counted_once_even_when_closed_between_ticks() {
    let m = Metrics::new(MetricsConfig::default(), T0);
    let r = m.route("web");
    let a = m.connection_opened(ip("10.0.0.1"), &r);
    a.add_in(100);
    a.add_out(1_000);
    m.tick(T0 + 1);
    a.add_in(50);
    let b = m.connection_opened(ip("10.0.0.2"), &r);
    b.add_out(7);
    drop(b); // closed before it was ever sampled
    m.tick(T0 + 2);
    drop(a);
    m.tick(T0 + 3);
    m.tick(T0 + 4);
    assert_eq!(m.bytes_in_total(), 150);
    assert_eq!(m.bytes_out_total(), 1_007);
    assert_eq!(m.requests_total(), 2);
    assert_eq!(m.connections_total(), 2);
    assert_eq!(m.connections_active(), 0);
    let s = m.snapshot();
    assert_eq!(s.routes.len(), 1);
    assert_eq!((s.routes[0].bytes_in, s.routes[0].bytes_out), (150, 1_007));
    assert_eq!(s.histograms.connection_bytes_out.count, 2);
}

#[test]
fn gauges_by_route_and_ip_are_released_on_drop() {
    let m = Metrics::new(MetricsConfig::default(), T0);
    let web = m.route("web");
    let db = m.route("db");
    assert!(m.route("web").name() == "web");
    let c1 = m.connection_opened(ip("10.0.0.1"), &web);
    let c2 = m.connection_opened(ip("10.0.0.1"), &web);
    let c3 = m.connection_opened(ip("2001:db8::1"), &db);
    assert_eq!(m.connections_active(), 3);
    assert_eq!(m.connections_by_route().get("web"), Some(&2));
    assert_eq!(m.connections_by_ip().get(&ip("10.0.0.1")), Some(&2));
    assert_eq!(m.top_ips(1), vec![(ip("10.0.0.1"), 2)]);
    assert_eq!(m.top_ips(5).len(), 2);
    drop(c1);
    drop(c3);
    assert_eq!(m.connections_active(), 1);
    assert_eq!(m.connections_by_route().get("db"), Some(&0));
    assert_eq!(m.connections_by_ip().get(&ip("2001:db8::1")), None);
    drop(c2);
    assert!(m.connections_by_ip().is_empty());
    assert_eq!(web.active(), 0);
    assert_eq!(web.total(), 2);
}

#[test]
fn rates_use_the_real_window_length() {
    let m = Metrics::new(MetricsConfig::default(), T0);
    let r = m.route("web");
    let c = m.connection_opened(ip("10.0.0.1"), &r);
    for s in 1..=5 {
        c.add_in(1_000);
        c.add_out(2_000);
        m.tick(T0 + s);
    }
    assert_eq!(m.throughput_instant().bytes_in, 1_000.0);
    // 5 s old: the 10 s and 60 s windows divide by 5.
    assert_eq!(m.throughput_recent().bytes_out, 2_000.0);
    assert_eq!(m.throughput_average().bytes_in, 1_000.0);
    assert_eq!(m.throughput_custom(3).bytes_in, 1_000.0);
    let h = m.throughput_history(3);
    assert_eq!(h.len(), 3);
    assert_eq!(h[2].timestamp, T0 + 5);
    assert_eq!(h[2].rate.bytes_out, 2_000.0);
    assert_eq!(m.throughput_by_route(1).get("web").map(|r| r.bytes_in), Some(1_000.0));
    assert_eq!(m.throughput_by_ip(1).get(&ip("10.0.0.1")).map(|r| r.bytes_out), Some(2_000.0));
    assert_eq!(m.route_history("web", 2).len(), 2);
    assert!(m.route_history("nope", 2).is_empty());
    // One connection, opened in the first second.
    assert_eq!(m.requests_per_second(), 0.0);
    assert_eq!(m.requests_per_minute(), 60.0 / 5.0);
    drop(c);
}

#[test]
fn a_late_tick_spreads_its_bytes() {
    let m = Metrics::new(MetricsConfig::default(), T0);
    let r = m.route("web");
    let c = m.connection_opened(ip("10.0.0.1"), &r);
    c.add_in(2_000);
    m.tick(T0 + 2); // one tick missed
    let h = m.throughput_history(2);
    assert_eq!(h.iter().map(|p| p.rate.bytes_in).collect::<Vec<_>>(), vec![1_000.0, 1_000.0]);
    drop(c);
}

#[test]
fn percentiles_of_duration_and_bytes() {
    let (m, clock) = metrics_with_clock(MetricsConfig::default());
    let r = m.route("web");
    for i in 1..=100u64 {
        let c = m.connection_opened(ip("10.0.0.1"), &r);
        c.add_in(i * 1_000);
        c.add_out(10);
        clock.advance(Duration::from_millis(10 * i));
        drop(c);
    }
    let d = m.connection_duration_percentiles();
    assert!((d.p50 - 0.5).abs() < 0.01, "{d:?}");
    assert!((d.p99 - 0.99).abs() < 0.02, "{d:?}");
    let (bin, bout) = m.bytes_per_connection_percentiles();
    assert!((bin.p95 - 95_000.0).abs() < 1_000.0, "{bin:?}");
    assert_eq!(bout.p50, 10.0);
    let s = m.snapshot();
    let h = &s.histograms.connection_duration_seconds;
    assert_eq!(h.count, 100);
    assert!((h.sum - 50.5).abs() < 1e-6, "{}", h.sum);
    let le_1 = h.buckets.iter().find(|b| b.le == 1.0).map(|b| b.count);
    assert_eq!(le_1, Some(100));
    assert!(h.buckets.windows(2).all(|w| w[0].count <= w[1].count));
}

#[test]
fn refused_proxy_backend_and_reloads_reach_the_snapshot() {
    let (m, _clock) = metrics_with_clock(MetricsConfig::default());
    let r = m.route("web");
    m.refused(RefuseReason::IpLimit);
    m.refused(RefuseReason::IpLimit);
    m.refused(RefuseReason::ProxyHeaderTimeout);
    m.proxy_header_accepted(ProxyVersion::V2);
    m.proxy_header_rejected(Some(ProxyVersion::V1), "bad_address");
    m.proxy_header_rejected(None, "no_signature");
    m.proxy_header_rejected(None, "no_signature");
    m.backend_connected(&r, Duration::from_millis(3));
    m.backend_connect_failed(&r);
    m.config_reloaded(true);
    m.config_reloaded(false);
    let s = m.snapshot();
    assert_eq!(s.refused.get("ip_limit"), Some(&2));
    assert_eq!(s.refused.get("proxy_header_timeout"), Some(&1));
    assert_eq!(s.refused.len(), RefuseReason::ALL.len());
    assert_eq!(s.proxy_headers.accepted.get("v2"), Some(&1));
    assert_eq!(s.proxy_headers.accepted.get("v1"), Some(&0));
    assert_eq!(s.proxy_headers.rejected.len(), 2);
    let unknown = s.proxy_headers.rejected.iter().find(|r| r.version == "unknown");
    assert_eq!(unknown.map(|r| r.count), Some(2));
    assert_eq!((s.backend.connects, s.backend.connect_failures), (1, 1));
    assert_eq!(s.routes[0].backend_connect_failures, 1);
    assert!((s.routes[0].backend_connect_seconds_sum - 0.003).abs() < 1e-9);
    assert_eq!(s.histograms.backend_connect_seconds.count, 1);
    assert_eq!((s.reloads.ok, s.reloads.failed), (1, 1));
    assert_eq!(m.refused_count(RefuseReason::IpLimit), 2);
    assert_eq!(m.config_reloads(), (1, 1));
}

#[test]
fn close_reasons_reach_the_snapshot() {
    let (m, _clock) = metrics_with_clock(MetricsConfig::default());
    m.connection_closed(CloseReason::Keepalive);
    m.connection_closed(CloseReason::Peer);
    m.connection_closed(CloseReason::Peer);
    m.connection_closed(CloseReason::Inactivity);
    let s = m.snapshot();
    assert_eq!(s.closed.len(), CloseReason::ALL.len());
    let got: Vec<(&str, u64)> = s.closed.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    assert_eq!(
        got,
        [
            ("error", 0),
            ("inactivity", 1),
            ("keepalive", 1),
            ("lifetime", 0),
            ("peer", 2),
            ("shutdown", 0)
        ]
    );
    assert_eq!(m.closed_count(CloseReason::Peer), 2);
    // A snapshot serialised before the field existed still reads.
    let mut v = serde_json::to_value(&s).unwrap();
    v.as_object_mut().unwrap().remove("closed");
    let back: Snapshot = serde_json::from_value(v).unwrap();
    assert!(back.closed.is_empty());
}

#[test]
fn per_ip_tracking_is_bounded_and_can_be_off() {
    let cfg = MetricsConfig { max_tracked_ips: 10, per_ip: PerIp::TopN(3), ..Default::default() };
    let m = Metrics::new(cfg, T0);
    let r = m.route("web");
    let mut open = Vec::new();
    for i in 0..50u8 {
        let c = m.connection_opened(ip(&format!("10.0.1.{i}")), &r);
        c.add_in(u64::from(i) + 1);
        m.tick(T0 + 1 + u64::from(i));
        open.push(c);
    }
    assert!(m.throughput_by_ip(60).len() <= 10);
    let s = m.snapshot();
    assert_eq!(s.ips.len(), 3);
    assert_eq!(s.ips[0].ip, ip("10.0.1.49"));
    assert_eq!(s.ips[0].active, 1);
    assert_eq!(s.connections.ips_active, 50);
    assert_eq!(s.connections.top_ips.len(), 10);

    let off = Metrics::new(MetricsConfig { per_ip: PerIp::Off, ..Default::default() }, T0);
    let r = off.route("web");
    let c = off.connection_opened(ip("10.0.0.1"), &r);
    c.add_in(5);
    off.tick(T0 + 1);
    assert!(off.throughput_by_ip(1).is_empty());
    assert!(off.snapshot().ips.is_empty());
    assert_eq!(off.connections_by_ip().len(), 1);
}

#[test]
fn two_copy_directions_and_a_ticker_in_parallel_count_everything() {
    let m = Metrics::new(MetricsConfig::default(), T0);
    let r = m.route("web");
    let conns: Vec<_> =
        (0..8).map(|i| m.connection_opened(ip(&format!("10.0.2.{i}")), &r)).collect();
    std::thread::scope(|s| {
        for dir in 0..2 {
            let conns = &conns;
            s.spawn(move || {
                for _ in 0..10_000 {
                    for c in conns {
                        if dir == 0 { c.add_in(3) } else { c.add_out(5) }
                    }
                }
            });
        }
        let m = &m;
        s.spawn(move || {
            for t in 1..=50 {
                m.tick(T0 + t);
                std::thread::yield_now();
            }
        });
    });
    drop(conns);
    m.tick(T0 + 51);
    assert_eq!(m.bytes_in_total(), 8 * 10_000 * 3);
    assert_eq!(m.bytes_out_total(), 8 * 10_000 * 5);
    assert_eq!(m.connections_active(), 0);
}

#[test]
fn snapshot_round_trips_through_json_and_carries_metadata() {
    let cfg = MetricsConfig { version: "smartproxy 9.9.9".into(), ..Default::default() };
    let m = Metrics::new(cfg, T0);
    let r = m.route("web");
    let c = m.connection_opened(ip("10.0.0.1"), &r);
    c.add_in(10);
    m.tick(T0 + 1);
    let s = m.snapshot();
    assert_eq!(s.meta.version, "smartproxy 9.9.9");
    assert_eq!(s.meta.start_time, T0);
    assert_eq!(s.meta.uptime_seconds, 1);
    assert_eq!(s.meta.sample_interval_seconds, 1);
    assert_eq!(s.meta.retention_seconds, 3600);
    assert_eq!(s.meta.minute_retention_seconds, 86_400);
    let json = serde_json::to_string(&s).unwrap_or_default();
    assert!(json.contains("\"instant\":{\"in\":10.0,\"out\":0.0}"), "{json}");
    let back: Snapshot = serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(back, s);
    drop(c);
}

#[test]
fn forgotten_routes_keep_counting_live_connections() {
    let m = Metrics::new(MetricsConfig::default(), T0);
    let old = m.route("old");
    let c = m.connection_opened(ip("10.0.0.1"), &old);
    m.forget_routes(|_| false);
    assert_eq!(m.connections_by_route().len(), 1, "still has a connection open");
    drop(c);
    m.forget_routes(|_| false);
    assert!(m.connections_by_route().is_empty());
    m.tick(T0 + 1);
    assert_eq!(m.requests_total(), 1);
}

#[test]
fn shared_types_are_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<Metrics>();
    check::<smartproxy_metrics::ConnectionRecorder>();
    check::<smartproxy_metrics::RouteHandle>();
    check::<Snapshot>();
}

#[test]
fn keep_alive_requests_and_ip_history() {
    let m = Metrics::new(MetricsConfig::default(), T0);
    let r = m.route("http");
    let c = m.connection_opened(ip("10.0.0.9"), &r);
    c.add_request();
    c.add_request();
    c.add_out(300);
    m.tick(T0 + 1);
    assert_eq!(m.requests_total(), 3);
    assert_eq!(m.requests_per_second(), 3.0);
    let s = m.snapshot();
    assert_eq!(s.totals.connections, 1);
    assert_eq!(s.requests.total, 3);
    assert_eq!(s.routes[0].requests_per_second, 3.0);
    let h = m.ip_history(ip("10.0.0.9"), 2);
    assert_eq!(h.last().map(|p| p.rate.bytes_out), Some(300.0));
    assert!(m.ip_history(ip("10.9.9.9"), 2).is_empty());
    drop(c);
}

#[test]
fn certificate_expiries_reach_the_snapshot_sorted_and_json_omits_none() {
    let m = Metrics::new(MetricsConfig::default(), T0);
    let json = serde_json::to_string(&m.snapshot()).unwrap_or_default();
    assert!(!json.contains("certificates"), "no certificate, no key: {json}");
    m.set_certificate_expiries(vec![
        CertificateExpiry::new("web", "b.example.com", 1_800_000_000),
        CertificateExpiry::new("api", "api.example.com", 1_790_000_000),
        CertificateExpiry::new("web", "a.example.com", 1_800_000_000),
    ]);
    let s = m.snapshot();
    let got: Vec<(&str, &str, i64)> = s
        .certificates
        .iter()
        .map(|c| (c.route.as_str(), c.domain.as_str(), c.expiry_timestamp_seconds))
        .collect();
    assert_eq!(
        got,
        [
            ("api", "api.example.com", 1_790_000_000),
            ("web", "a.example.com", 1_800_000_000),
            ("web", "b.example.com", 1_800_000_000)
        ]
    );
    let back: Snapshot =
        serde_json::from_str(&serde_json::to_string(&s).unwrap_or_default()).unwrap();
    assert_eq!(back, s);
    m.set_certificate_expiries(Vec::new());
    assert!(m.snapshot().certificates.is_empty());
    assert!(m.certificate_expiries().is_empty());
}
