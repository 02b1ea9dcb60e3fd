//! HTTP request metrics through the public API: the `requests` group counts requests of HTTP
//! connections one by one, per route, by status class and method.

use std::net::IpAddr;
use std::time::Duration;

use smartproxy_metrics::{HttpErrorReason, HttpMethod, Metrics, MetricsConfig};

const T0: u64 = 1_700_000_000;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap_or_else(|_| panic!("bad ip {s}"))
}

#[test]
fn requests_group_counts_http_requests_not_connections() {
    let m = Metrics::new(MetricsConfig::default(), T0);
    let api = m.route("api");
    let web = m.route("web");
    // One HTTP connection carrying five requests on two routes, plus a layer-4 connection.
    let conn = m.connection_opened_http(ip("10.0.0.1"), &api);
    let l4 = m.connection_opened(ip("10.0.0.2"), &web);
    for (route, method, status) in [
        (&api, HttpMethod::Get, 200),
        (&api, HttpMethod::Get, 200),
        (&web, HttpMethod::Post, 201),
        (&web, HttpMethod::Other, 502),
    ] {
        m.http_request_started(Some(route));
        m.http_request_finished(Some(route), method, status, Duration::from_millis(2));
    }
    m.http_request_started(None);
    assert_eq!(m.http_requests_in_flight(), 1);
    m.http_request_finished(None, HttpMethod::Get, 404, Duration::from_micros(100));
    m.http_error(HttpErrorReason::NoRoute);
    assert_eq!(m.http_requests_in_flight(), 0);
    assert_eq!(m.http_requests_total(), 5);
    m.tick(T0 + 1);
    // 5 HTTP requests + 1 for the layer-4 connection; the HTTP connection is not one.
    assert_eq!(m.requests_total(), 6);
    assert_eq!(m.requests_per_second(), 6.0);
    drop(conn);
    drop(l4);
    m.tick(T0 + 2);
    assert_eq!(m.requests_total(), 6);

    let s = m.snapshot();
    assert_eq!(s.requests.total, 6);
    assert_eq!(s.http.requests_total, 5);
    assert_eq!(s.http.in_flight, 0);
    assert_eq!(s.http.errors["no_route"], 1);
    assert_eq!(s.http.errors["backend_error"], 0);
    assert_eq!(s.http.request_duration_seconds.count, 5);
    assert_eq!(s.http.unrouted.requests_total, 1);
    assert_eq!(s.http.unrouted.requests[0].code_class, "4xx");
    let api_s = s.routes.iter().find(|r| r.name == "api").unwrap_or_else(|| panic!("api"));
    assert_eq!(api_s.http.requests_total, 2);
    assert_eq!(api_s.http.requests.len(), 1);
    assert_eq!(
        (api_s.http.requests[0].code_class.as_str(), api_s.http.requests[0].method.as_str()),
        ("2xx", "GET")
    );
    let web_s = s.routes.iter().find(|r| r.name == "web").unwrap_or_else(|| panic!("web"));
    let labels: Vec<(&str, &str, u64)> = web_s
        .http
        .requests
        .iter()
        .map(|r| (r.code_class.as_str(), r.method.as_str(), r.count))
        .collect();
    assert_eq!(labels, [("2xx", "POST", 1), ("5xx", "other", 1)]);
    // <= 2.5 ms bucket holds the four routed requests of 2 ms.
    let b = &web_s.http.request_duration_seconds.buckets;
    assert_eq!(b.iter().find(|b| b.le == 0.0025).map(|b| b.count), Some(2));
    // JSON round trip keeps the HTTP part.
    let json = serde_json::to_string(&s).unwrap_or_else(|e| panic!("{e}"));
    let back: smartproxy_metrics::Snapshot =
        serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(back.http, s.http);
}

#[test]
fn requests_per_route_rate_comes_from_http() {
    let m = Metrics::new(MetricsConfig::default(), T0);
    let api = m.route("api");
    for _ in 0..30 {
        m.http_request_started(Some(&api));
        m.http_request_finished(Some(&api), HttpMethod::Get, 200, Duration::ZERO);
    }
    m.tick(T0 + 1);
    let s = m.snapshot();
    assert_eq!(s.routes[0].requests_per_second, 30.0);
    assert_eq!(s.requests.total, 30);
}
