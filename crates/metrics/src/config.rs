//! Collector configuration.

use std::time::Duration;

/// What is kept per client IP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum PerIp {
    /// No per-IP throughput series. Active connections per IP are still counted (one map entry
    /// per IP that has a connection open), so connection queries by IP keep working.
    Off,
    /// Per-IP throughput series (bounded by [`MetricsConfig::max_tracked_ips`]), and the
    /// snapshot lists the top N IPs by bytes over the IP retention window.
    TopN(usize),
}

/// Configuration of [`Metrics`](crate::Metrics). Build it with struct update syntax over
/// `MetricsConfig::default()`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricsConfig {
    /// How often the engine calls [`Metrics::tick`](crate::Metrics::tick). Default 1 s.
    pub sample_interval: Duration,
    /// Retention of the 1-second samples (global and per route). Default 1 h.
    pub retention: Duration,
    /// Retention of the 1-minute aggregates (global and per route). Default 24 h.
    pub minute_retention: Duration,
    /// Per-IP tracking. Default `TopN(100)`.
    pub per_ip: PerIp,
    /// Bound on IPs with a throughput series; the least recently active are evicted.
    /// Default 10 000.
    pub max_tracked_ips: usize,
    /// Retention of per-IP 1-second samples (no minute aggregates per IP). Default 60 s.
    pub ip_retention: Duration,
    /// Number of IPs listed in the snapshot's `connections.top_ips`. Default 10.
    pub top_ips: usize,
    /// Windows (seconds) reported in snapshots. Default 1, 10, 60, 300.
    pub windows: Vec<u64>,
    /// Length of the history included in snapshots. Default 60 s.
    pub snapshot_history: Duration,
    /// Version string reported in snapshot metadata (the application's).
    pub version: String,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            sample_interval: Duration::from_secs(1),
            retention: Duration::from_secs(3600),
            minute_retention: Duration::from_secs(24 * 3600),
            per_ip: PerIp::TopN(100),
            max_tracked_ips: 10_000,
            ip_retention: Duration::from_secs(60),
            top_ips: 10,
            windows: vec![1, 10, 60, 300],
            snapshot_history: Duration::from_secs(60),
            version: concat!("smartproxy-metrics ", env!("CARGO_PKG_VERSION")).to_owned(),
        }
    }
}

impl MetricsConfig {
    /// Whole seconds between samples (at least 1).
    pub(crate) fn interval_secs(&self) -> u64 {
        self.sample_interval.as_secs().max(1)
    }
}
