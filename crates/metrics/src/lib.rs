//! Traffic metrics collector for smartproxy: atomics on the hot path, time series, percentiles,
//! snapshots.
//!
//! # How it is used
//!
//! ```
//! use std::net::IpAddr;
//! use smartproxy_metrics::{Metrics, MetricsConfig, RefuseReason};
//!
//! let start = 1_700_000_000; // seconds; UNIX time is a good choice
//! let metrics = Metrics::new(MetricsConfig::default(), start);
//! let route = metrics.route("web");                    // once per route, at config load
//!
//! let ip: IpAddr = "192.0.2.7".parse().unwrap();
//! let conn = metrics.connection_opened(ip, &route);    // once per connection
//! conn.add_in(512);                                    // per read: one relaxed atomic add
//! conn.add_out(4096);
//! drop(conn);                                          // closed: histograms, gauges
//! metrics.refused(RefuseReason::IpLimit);
//!
//! metrics.tick(start + 1);                             // timer task, once per second
//! assert_eq!(metrics.throughput_instant().bytes_out, 4096.0);
//! let snapshot = metrics.snapshot();                   // serde model of everything
//! assert_eq!(snapshot.totals.bytes_in, 512);
//! ```
//!
//! # The hot path, and why it looks like this
//!
//! A connection's copy loops call [`ConnectionRecorder::add_in`] / [`add_out`] for every read.
//! Each is a single `fetch_add(Relaxed)` on a counter that belongs to that connection alone.
//! No lock, no map lookup, no allocation, and no counter shared with another connection: two
//! cores copying two connections do not write the same variable. A global or per-route atomic
//! would be simpler, but every read on every core would then bounce the same line; the
//! `record` bench measures both (see README). A connection's in and out counters sit side by
//! side, unpadded: the engine counts both directions of a connection from one task, so they
//! are not written from two cores at once, and padding them cost 512 bytes per connection.
//!
//! The price is paid off the data path: each connection takes a slot, at open, in one of 16
//! mutex-protected shards (round-robin), each a slab with a free list. [`Metrics::tick`],
//! called once per sample interval by the engine's timer, walks the shards, takes each open
//! connection's delta since the previous tick, and folds it into the global, per-route and
//! per-IP series ([`smartproxy_throughput`]). When a recorder is dropped, its slot is freed
//! at once, and its delta not yet sampled is added to the shard's pending sums (global, per
//! route, per IP) that the next tick drains: every byte and request is counted exactly once,
//! and memory follows the connections open (about 150 bytes each), not the connections
//! opened per interval. Opening a connection takes two short locks (registry shard, per-IP
//! map) and closing it three (the same plus the histograms); that is once per connection, not
//! per read.
//!
//! Counters and rates are therefore as of the last tick (at most one interval old); gauges of
//! open connections and the histograms are live. The crate has no timer and no tokio: the
//! engine drives [`Metrics::tick`].
//!
//! # Queries
//!
//! Following SmartProxy's `IMetrics`: connections ([`Metrics::connections_active`],
//! [`connections_total`](Metrics::connections_total),
//! [`connections_by_route`](Metrics::connections_by_route),
//! [`connections_by_ip`](Metrics::connections_by_ip), [`top_ips`](Metrics::top_ips)),
//! throughput ([`throughput_instant`](Metrics::throughput_instant) 1 s,
//! [`throughput_recent`](Metrics::throughput_recent) 10 s,
//! [`throughput_average`](Metrics::throughput_average) 60 s,
//! [`throughput_custom`](Metrics::throughput_custom),
//! [`throughput_history`](Metrics::throughput_history),
//! [`throughput_by_route`](Metrics::throughput_by_route),
//! [`throughput_by_ip`](Metrics::throughput_by_ip)), requests, totals, percentiles, and
//! [`Metrics::snapshot`] for all of it plus refused connections, PROXY headers, backend
//! connects and reloads.
//!
//! [`add_out`]: ConnectionRecorder::add_out
#![cfg_attr(doctest, doc = include_str!("../README.md"))] // README examples run as doc tests

mod clock;
mod collector;
mod config;
mod conn;
mod hist;
mod http;
mod reason;
mod registry;
mod route;
mod snapshot;

pub use self::clock::{Clock, ManualClock, MonotonicClock};
pub use self::collector::Metrics;
pub use self::config::{MetricsConfig, PerIp};
pub use self::conn::ConnectionRecorder;
pub use self::http::{HttpErrorReason, HttpMethod, HttpPolicyReason};
pub use self::reason::{CloseReason, ProxyVersion, RefuseReason};
pub use self::route::RouteHandle;
pub use self::snapshot::{
    Backend, Bucket, CertificateExpiry, Connections, HistogramSnapshot, Histograms,
    HttpRequestCount, HttpRouteSnapshot, HttpSnapshot, IpCount, IpSnapshot, Meta, Pct, Percentiles,
    ProxyHeaders, ProxyRejection, Reloads, Requests, RouteSnapshot, Snapshot, TargetUp, Throughput,
    ThroughputPoint, ThroughputRate, Totals, WindowRate,
};
pub use smartproxy_throughput;
