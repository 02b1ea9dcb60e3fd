//! The serde model of everything the collector knows, taken at one instant.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// Everything the collector knows, taken at one instant by [`Metrics::snapshot`].
///
/// Counters and rates are as of the last [`Metrics::tick`] (at most one sample interval old);
/// gauges (`active`) and histograms are live.
///
/// [`Metrics::snapshot`]: crate::Metrics::snapshot
/// [`Metrics::tick`]: crate::Metrics::tick
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Snapshot {
    /// Who produced the snapshot, and when.
    pub meta: Meta,
    /// Connection counts.
    pub connections: Connections,
    /// Throughput of all traffic (bytes/s).
    pub throughput: Throughput,
    /// Requests (for layer-4 routes a request is a connection).
    pub requests: Requests,
    /// Cumulative totals.
    pub totals: Totals,
    /// Percentiles of closed connections.
    pub percentiles: Percentiles,
    /// Histograms with cumulative buckets (for Prometheus).
    pub histograms: Histograms,
    /// Per route, sorted by name.
    pub routes: Vec<RouteSnapshot>,
    /// Per client IP: the top N by bytes over the IP retention window (empty when per-IP
    /// tracking is off).
    pub ips: Vec<IpSnapshot>,
    /// Refused connections by reason (every reason listed, zeros included).
    pub refused: BTreeMap<String, u64>,
    /// PROXY protocol headers.
    pub proxy_headers: ProxyHeaders,
    /// Backend connects, all routes.
    pub backend: Backend,
    /// Configuration reloads.
    pub reloads: Reloads,
    /// HTTP requests served by the HTTP layer.
    #[serde(default)]
    pub http: HttpSnapshot,
    /// Expiry of the TLS certificates served, per route and domain (set by the engine with
    /// [`Metrics::set_certificate_expiries`]; left out of JSON when there is none).
    ///
    /// [`Metrics::set_certificate_expiries`]: crate::Metrics::set_certificate_expiries
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub certificates: Vec<CertificateExpiry>,
    /// Served connections closed, by reason: `peer`, `inactivity`, `lifetime`, `keepalive`,
    /// `shutdown`, `error` (every reason listed, zeros included).
    #[serde(default)]
    pub closed: BTreeMap<String, u64>,
    /// Up/down of every target of the routes with active health checks (set by the engine's
    /// checker with [`Metrics::set_target_health`]; left out of JSON when there is none).
    ///
    /// [`Metrics::set_target_health`]: crate::Metrics::set_target_health
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub targets: Vec<TargetUp>,
}

/// Whether one target of one route is up, as its route's health checks say.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct TargetUp {
    /// Route name.
    pub route: String,
    /// `host:port`.
    pub target: String,
    /// Up (`true`) or down.
    pub up: bool,
}

impl TargetUp {
    /// One target's state.
    pub fn new(route: impl Into<String>, target: impl Into<String>, up: bool) -> Self {
        Self { route: route.into(), target: target.into(), up }
    }
}

/// Snapshot metadata.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Meta {
    /// Version string given in the configuration.
    pub version: String,
    /// Start time, on the caller's clock (seconds; UNIX time if the engine passes it).
    pub start_time: u64,
    /// Time of the last tick.
    pub now: u64,
    /// `now - start_time`.
    pub uptime_seconds: u64,
    /// Sample interval, seconds.
    pub sample_interval_seconds: u64,
    /// Retention of 1-second samples, seconds.
    pub retention_seconds: u64,
    /// Retention of 1-minute aggregates, seconds.
    pub minute_retention_seconds: u64,
    /// The process is draining connections before it exits ([`Metrics::set_draining`]).
    ///
    /// [`Metrics::set_draining`]: crate::Metrics::set_draining
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub draining: bool,
}

/// Connection counts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Connections {
    /// Open now.
    pub active: u64,
    /// Opened since the start.
    pub total: u64,
    /// Client IPs with a connection open now.
    pub ips_active: u64,
    /// Client IPs with the most open connections, highest first.
    pub top_ips: Vec<IpCount>,
}

/// Open connections of one client IP.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct IpCount {
    /// Client address.
    pub ip: IpAddr,
    /// Connections open now.
    pub count: u64,
}

/// Bytes per second in each direction (the IMetrics `{ in, out }`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ThroughputRate {
    /// Bytes per second from clients.
    #[serde(rename = "in")]
    pub bytes_in: f64,
    /// Bytes per second to clients.
    #[serde(rename = "out")]
    pub bytes_out: f64,
}

impl ThroughputRate {
    pub(crate) fn from_rate(r: smartproxy_throughput::Rate) -> Self {
        Self { bytes_in: r.bytes_in, bytes_out: r.bytes_out }
    }
}

/// A rate over a window of `seconds`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct WindowRate {
    /// Window length asked for, seconds.
    pub window_seconds: u64,
    /// Bytes per second.
    #[serde(flatten)]
    pub rate: ThroughputRate,
}

/// One point of throughput history.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ThroughputPoint {
    /// Start of the point (seconds, caller's clock).
    pub timestamp: u64,
    /// Seconds the point covers (1, or up to 60 at minute resolution).
    pub span: u64,
    /// Bytes per second during the point.
    #[serde(flatten)]
    pub rate: ThroughputRate,
}

/// Throughput of all traffic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Throughput {
    /// Last 1 s.
    pub instant: ThroughputRate,
    /// Last 10 s.
    pub recent: ThroughputRate,
    /// Last 60 s.
    pub average: ThroughputRate,
    /// The configured windows.
    pub windows: Vec<WindowRate>,
    /// History over the configured length, oldest first.
    pub history: Vec<ThroughputPoint>,
}

/// Requests: one per connection (all a layer-4 route has) plus the further requests of HTTP
/// keep-alive connections.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Requests {
    /// Requests in the last second.
    pub per_second: f64,
    /// Requests per minute over the last 60 s.
    pub per_minute: f64,
    /// Since the start.
    pub total: u64,
}

/// Cumulative totals.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Totals {
    /// Bytes from clients.
    pub bytes_in: u64,
    /// Bytes to clients.
    pub bytes_out: u64,
    /// Connections opened.
    pub connections: u64,
}

/// p50, p95, p99 of a distribution.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Pct {
    /// Median.
    pub p50: f64,
    /// 95th percentile.
    pub p95: f64,
    /// 99th percentile.
    pub p99: f64,
}

/// Percentiles of closed connections.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Percentiles {
    /// Connection duration, seconds.
    pub connection_duration_seconds: Pct,
    /// Bytes from the client per connection.
    pub bytes_in: Pct,
    /// Bytes to the client per connection.
    pub bytes_out: Pct,
}

/// One cumulative histogram bucket: observations `<= le`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Bucket {
    /// Upper bound (inclusive), in the base unit.
    pub le: f64,
    /// Observations at or below `le` (cumulative).
    pub count: u64,
}

/// A histogram in base units (seconds or bytes). The `+Inf` bucket is `count`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct HistogramSnapshot {
    /// Cumulative buckets, increasing `le`.
    pub buckets: Vec<Bucket>,
    /// Number of observations.
    pub count: u64,
    /// Sum of observations.
    pub sum: f64,
}

/// Histograms of closed connections and backend connects.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Histograms {
    /// Connection duration, seconds.
    pub connection_duration_seconds: HistogramSnapshot,
    /// Bytes from the client per connection.
    pub connection_bytes_in: HistogramSnapshot,
    /// Bytes to the client per connection.
    pub connection_bytes_out: HistogramSnapshot,
    /// Time to connect to a backend, seconds.
    pub backend_connect_seconds: HistogramSnapshot,
}

/// One route.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct RouteSnapshot {
    /// Route name.
    pub name: String,
    /// Connections open now.
    pub active: u64,
    /// Connections opened.
    pub total: u64,
    /// Bytes from clients.
    pub bytes_in: u64,
    /// Bytes to clients.
    pub bytes_out: u64,
    /// Rates over the configured windows.
    pub throughput: Vec<WindowRate>,
    /// Requests in the last second.
    pub requests_per_second: f64,
    /// Successful backend connects.
    pub backend_connects: u64,
    /// Failed backend connects.
    pub backend_connect_failures: u64,
    /// Sum of successful connect times, seconds.
    pub backend_connect_seconds_sum: f64,
    /// HTTP requests of the route (all zero for a layer-4 route).
    #[serde(default)]
    pub http: HttpRouteSnapshot,
}

/// One client IP.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct IpSnapshot {
    /// Client address.
    pub ip: IpAddr,
    /// Connections open now.
    pub active: u64,
    /// Bytes from this IP since it was (last) tracked.
    pub bytes_in: u64,
    /// Bytes to this IP since it was (last) tracked.
    pub bytes_out: u64,
    /// Rates over the configured windows that fit the IP retention.
    pub throughput: Vec<WindowRate>,
}

/// PROXY protocol header counts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ProxyHeaders {
    /// Accepted, by version (`v1`, `v2`; zeros included).
    pub accepted: BTreeMap<String, u64>,
    /// Rejected, by version and reason.
    pub rejected: Vec<ProxyRejection>,
}

/// Rejected PROXY headers of one version and reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ProxyRejection {
    /// `v1`, `v2`, or `unknown` when the version could not be told.
    pub version: String,
    /// Reason label.
    pub reason: String,
    /// Count.
    pub count: u64,
}

/// Backend connects, all routes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Backend {
    /// Successful connects.
    pub connects: u64,
    /// Failed connects.
    pub connect_failures: u64,
}

/// Configuration reloads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Reloads {
    /// Reloads applied.
    pub ok: u64,
    /// Reloads refused (bad configuration).
    pub failed: u64,
}

/// HTTP requests of the whole proxy.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct HttpSnapshot {
    /// Requests being served now (open WebSockets included), all routes.
    pub in_flight: u64,
    /// Requests finished since the start, all routes and unrouted ones (live, not as of the
    /// last tick).
    pub requests_total: u64,
    /// Requests that no route took (404) or that were refused before routing, by status class
    /// and method.
    pub unrouted: HttpRouteSnapshot,
    /// Answers (or closes) of the HTTP layer itself, by reason (every reason listed).
    pub errors: BTreeMap<String, u64>,
    /// Request duration, all routes and unrouted requests, seconds.
    pub request_duration_seconds: HistogramSnapshot,
}

/// HTTP requests of one route.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct HttpRouteSnapshot {
    /// Requests being served now.
    pub in_flight: u64,
    /// Requests finished.
    pub requests_total: u64,
    /// Finished requests by status class and method (only the non-zero ones).
    pub requests: Vec<HttpRequestCount>,
    /// Time from the request head to the end of the response (for a WebSocket, to its
    /// close), seconds.
    pub request_duration_seconds: HistogramSnapshot,
    /// Requests the route's policies refused (401, 403, 429), by reason (`ip_blocked`,
    /// `auth_missing`, `auth_invalid`, `auth_forbidden`, `rate_limited`, `cors_refused`;
    /// only the non-zero ones).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub policy_refusals: BTreeMap<String, u64>,
}

/// Finished requests of one status class and method.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct HttpRequestCount {
    /// `1xx` .. `5xx`.
    pub code_class: String,
    /// `GET`, `POST`, …, or `other`.
    pub method: String,
    /// Count.
    pub count: u64,
}

/// When one domain's certificate on one route expires (the served certificate's
/// `not_after`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct CertificateExpiry {
    /// Route name.
    pub route: String,
    /// One of the route's domains that the certificate covers.
    pub domain: String,
    /// `not_after`, seconds since the UNIX epoch.
    pub expiry_timestamp_seconds: i64,
}

impl CertificateExpiry {
    /// One route domain's certificate expiry.
    pub fn new(route: impl Into<String>, domain: impl Into<String>, not_after_unix: i64) -> Self {
        Self {
            route: route.into(),
            domain: domain.into(),
            expiry_timestamp_seconds: not_after_unix,
        }
    }
}
