//! Export smartproxy metrics snapshots as Prometheus text, OpenMetrics, StatsD and JSON.
