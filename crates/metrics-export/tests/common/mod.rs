//! A fixed snapshot, built through the real collector with a manual clock.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use smartproxy_metrics::{
    CloseReason, HttpErrorReason, HttpMethod, HttpPolicyReason, ManualClock, Metrics,
    MetricsConfig, PerIp, ProxyVersion, RefuseReason, Snapshot,
};

pub(crate) const T0: u64 = 1_700_000_000;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap_or_else(|_| panic!("bad ip {s}"))
}

/// The metrics after a fixed little story; `later` adds a second act for StatsD deltas.
pub(crate) fn metrics() -> (Arc<Metrics>, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::new());
    let cfg = MetricsConfig {
        version: "smartproxy 0.1.0-test".into(),
        per_ip: PerIp::TopN(5),
        windows: vec![1, 10, 60],
        snapshot_history: Duration::from_secs(3),
        ..Default::default()
    };
    let m = Metrics::with_clock(cfg, T0, clock.clone());
    let web = m.route("web");
    let api = m.route("api \"v2\"");
    let a = m.connection_opened(ip("192.0.2.10"), &web);
    let b = m.connection_opened(ip("2001:db8::7"), &api);
    m.backend_connected(&web, Duration::from_micros(1_500));
    m.backend_connected(&api, Duration::from_millis(40));
    m.backend_connect_failed(&api);
    for t in 1..=3 {
        a.add_in(1_000 * t);
        a.add_out(10_000 * t);
        b.add_in(100);
        clock.advance(Duration::from_millis(700));
        m.tick(T0 + t);
    }
    let c = m.connection_opened(ip("192.0.2.10"), &web);
    c.add_in(300);
    clock.advance(Duration::from_millis(250));
    drop(c);
    m.connection_closed(CloseReason::Peer);
    drop(b);
    m.connection_closed(CloseReason::Inactivity);
    m.tick(T0 + 4);
    m.refused(RefuseReason::IpLimit);
    m.refused(RefuseReason::NoRoute);
    m.refused(RefuseReason::NoRoute);
    m.proxy_header_accepted(ProxyVersion::V2);
    m.proxy_header_accepted(ProxyVersion::V1);
    m.proxy_header_rejected(Some(ProxyVersion::V1), "invalid_address");
    m.proxy_header_rejected(None, "timeout");
    m.config_reloaded(true);
    m.config_reloaded(false);
    // HTTP requests: two routes, one unrouted 404, one request still in flight.
    for (route, method, status, ms) in [
        (Some(&web), HttpMethod::Get, 200, 3),
        (Some(&web), HttpMethod::Get, 200, 40),
        (Some(&web), HttpMethod::Post, 502, 1_200),
        (Some(&api), HttpMethod::Other, 101, 90_000),
        (None, HttpMethod::Get, 404, 0),
    ] {
        m.http_request_started(route);
        m.http_request_finished(route, method, status, Duration::from_millis(ms));
    }
    m.http_request_started(Some(&web));
    m.http_error(HttpErrorReason::NoRoute);
    m.http_error(HttpErrorReason::BackendError);
    // Route policies: two 429s and a 401 on web.
    for reason in [
        HttpPolicyReason::RateLimited,
        HttpPolicyReason::RateLimited,
        HttpPolicyReason::AuthMissing,
    ] {
        m.http_policy_refused(&web, reason);
        m.http_error(if reason.status() == 429 {
            HttpErrorReason::RateLimited
        } else {
            HttpErrorReason::Unauthorized
        });
    }
    std::mem::forget(a); // stays open (leaked on purpose: the story ends with it active)
    (m, clock)
}

pub(crate) fn snapshot() -> Snapshot {
    metrics().0.snapshot()
}

/// The same story, then more traffic: (first, second) snapshots.
pub(crate) fn two_snapshots() -> (Snapshot, Snapshot) {
    let (m, clock) = metrics();
    let first = m.snapshot();
    let web = m.route("web");
    let d = m.connection_opened(ip("198.51.100.1"), &web);
    d.add_in(5);
    d.add_out(6);
    clock.advance(Duration::from_secs(2));
    drop(d);
    m.connection_closed(CloseReason::Keepalive);
    m.refused(RefuseReason::NoRoute);
    m.http_request_finished(Some(&web), HttpMethod::Get, 304, Duration::from_millis(7));
    m.http_request_started(Some(&web));
    m.http_request_finished(Some(&web), HttpMethod::Get, 200, Duration::from_millis(1));
    m.http_error(HttpErrorReason::HeaderTooLarge);
    m.http_policy_refused(&web, HttpPolicyReason::RateLimited);
    m.http_policy_refused(&m.route("api \"v2\""), HttpPolicyReason::AuthInvalid);
    m.tick(T0 + 5);
    (first, m.snapshot())
}
