//! Export smartproxy metrics snapshots as Prometheus text, OpenMetrics, StatsD and JSON.
//!
//! Every exporter takes a [`Snapshot`] from
//! [`Metrics::snapshot`](smartproxy_metrics::Metrics::snapshot) and [`ExportOptions`].
//!
//! * [`prometheus_text`] / [`openmetrics_text`] (or [`encode`] with a [`Format`] picked by
//!   [`Format::from_accept`]): encoded by `prometheus-client` from a collector over the
//!   snapshot. Base units and suffixes: `smartproxy_bytes_total{direction="in"|"out"}`,
//!   `smartproxy_connections_active`, `smartproxy_connections_total`,
//!   `smartproxy_connection_duration_seconds` (histogram),
//!   `smartproxy_throughput_bytes_per_second{direction,window}`, per-route series labelled
//!   `route="<name>"`, refused / closed-by-reason / PROXY header / backend / reload counters.
//!   Per-IP series only
//!   when [`ExportOptions::per_ip`] asks for them, capped to the top N.
//! * [`statsd_lines`] and [`StatsdPusher`]: counters as deltas since the last push, gauges,
//!   timers (`|ms`); plain or DogStatsD tags; UDP datagrams of at most [`MAX_DATAGRAM`] bytes.
//! * [`json`]: the snapshot as JSON.
//!
//! ```
//! use smartproxy_metrics::{Metrics, MetricsConfig};
//! use smartproxy_metrics_export::{ExportOptions, Format, encode, prometheus_text};
//!
//! let m = Metrics::new(MetricsConfig::default(), 0);
//! m.tick(1);
//! let text = prometheus_text(&m.snapshot(), &ExportOptions::default());
//! assert!(text.contains("smartproxy_bytes_total{direction=\"in\"} 0"));
//! let format = Format::from_accept(Some("application/openmetrics-text; version=1.0.0"));
//! assert!(encode(&m.snapshot(), &ExportOptions::default(), format).ends_with("# EOF\n"));
//! ```
#![cfg_attr(doctest, doc = include_str!("../README.md"))] // README examples run as doc tests

mod options;
mod prom;
mod statsd;

pub use self::options::{ExportOptions, PerIp};
pub use self::prom::{
    Format, OPENMETRICS_CONTENT_TYPE, PROMETHEUS_CONTENT_TYPE, encode, openmetrics_text,
    prometheus_text,
};
pub use self::statsd::{
    MAX_DATAGRAM, StatsdPusher, StatsdStyle, UNROUTED, batch_datagrams, statsd_lines,
};
pub use smartproxy_metrics::Snapshot;

/// `Content-Type` of [`json`].
pub const JSON_CONTENT_TYPE: &str = "application/json";

/// The snapshot as pretty-printed JSON (non-finite numbers become `null`).
#[must_use]
pub fn json(s: &Snapshot) -> String {
    serde_json::to_string_pretty(s)
        .unwrap_or_else(|e| format!("{{\"error\":{}}}", serde_json::Value::from(e.to_string())))
}
