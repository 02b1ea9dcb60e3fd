//! Prometheus text (0.0.4) and OpenMetrics text, through `prometheus-client`.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::{Registry, Unit};
use smartproxy_metrics::{HistogramSnapshot, Snapshot, WindowRate};

use crate::options::ExportOptions;

/// `Content-Type` of the Prometheus text format.
pub const PROMETHEUS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
/// `Content-Type` of the OpenMetrics text format.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A text exposition format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Format {
    /// Prometheus text, version 0.0.4.
    Prometheus,
    /// OpenMetrics text 1.0 (ends with `# EOF`).
    OpenMetrics,
}

impl Format {
    /// Picks the format a scraper asks for in its `Accept` header: OpenMetrics when it lists
    /// `application/openmetrics-text` (with a non-zero `q`), Prometheus text otherwise.
    #[must_use]
    pub fn from_accept(accept: Option<&str>) -> Self {
        let Some(accept) = accept else { return Self::Prometheus };
        for part in accept.split(',') {
            let mut params = part.split(';').map(str::trim);
            let media = params.next().unwrap_or("");
            if !media.eq_ignore_ascii_case("application/openmetrics-text") {
                continue;
            }
            let q_zero = params.any(|p| {
                p.strip_prefix("q=")
                    .and_then(|q| q.trim().parse::<f32>().ok())
                    .is_some_and(|q| q <= 0.0)
            });
            if !q_zero {
                return Self::OpenMetrics;
            }
        }
        Self::Prometheus
    }

    /// The `Content-Type` of the format.
    #[must_use]
    pub fn content_type(self) -> &'static str {
        match self {
            Self::Prometheus => PROMETHEUS_CONTENT_TYPE,
            Self::OpenMetrics => OPENMETRICS_CONTENT_TYPE,
        }
    }
}

/// Encodes the snapshot in `format`.
#[must_use]
pub fn encode(s: &Snapshot, o: &ExportOptions, format: Format) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(SnapshotCollector { s: s.clone(), o: o.clone() }));
    let mut out = String::new();
    // Writing into a String cannot fail, and the collector only fails when the writer does.
    let res = match format {
        Format::Prometheus => {
            prometheus_client::encoding::prometheus_text::encode(&mut out, &registry)
        }
        Format::OpenMetrics => prometheus_client::encoding::text::encode(&mut out, &registry),
    };
    debug_assert!(res.is_ok(), "encoding into a String failed");
    out
}

/// Prometheus text (version 0.0.4) of the snapshot.
#[must_use]
pub fn prometheus_text(s: &Snapshot, o: &ExportOptions) -> String {
    encode(s, o, Format::Prometheus)
}

/// OpenMetrics text of the snapshot, ending with `# EOF`.
#[must_use]
pub fn openmetrics_text(s: &Snapshot, o: &ExportOptions) -> String {
    encode(s, o, Format::OpenMetrics)
}

type Labels = Vec<(&'static str, String)>;

#[derive(Debug)]
struct SnapshotCollector {
    s: Snapshot,
    o: ExportOptions,
}

/// Writes one metric family (skipped when it has no sample).
struct W<'a, 'b> {
    enc: &'a mut DescriptorEncoder<'b>,
    prefix: &'a str,
}

impl W<'_, '_> {
    fn family<V>(
        &mut self,
        name: &str,
        help: &str,
        unit: Option<Unit>,
        ty: MetricType,
        samples: Vec<(Labels, V)>,
        mut put: impl FnMut(prometheus_client::encoding::MetricEncoder<'_>, &V) -> std::fmt::Result,
    ) -> std::fmt::Result {
        if samples.is_empty() {
            return Ok(());
        }
        let name = format!("{}{name}", self.prefix);
        let mut me = self.enc.encode_descriptor(&name, help, unit.as_ref(), ty)?;
        for (labels, v) in &samples {
            let fe = me.encode_family(labels)?;
            put(fe, v)?;
        }
        Ok(())
    }

    fn counter(&mut self, name: &str, help: &str, samples: Vec<(Labels, u64)>) -> std::fmt::Result {
        self.family(name, help, None, MetricType::Counter, samples, |e, v| {
            ConstCounter::new(*v).encode(e)
        })
    }

    fn gauge_u(&mut self, name: &str, help: &str, samples: Vec<(Labels, u64)>) -> std::fmt::Result {
        self.family(name, help, None, MetricType::Gauge, samples, |e, v| {
            ConstGauge::new(*v).encode(e)
        })
    }

    fn gauge_f(
        &mut self,
        name: &str,
        help: &str,
        unit: Option<Unit>,
        samples: Vec<(Labels, f64)>,
    ) -> std::fmt::Result {
        self.family(name, help, unit, MetricType::Gauge, samples, |e, v| {
            ConstGauge::new(*v).encode(e)
        })
    }

    fn histogram(
        &mut self,
        name: &str,
        help: &str,
        unit: Unit,
        samples: Vec<(Labels, &HistogramSnapshot)>,
    ) -> std::fmt::Result {
        self.family(name, help, Some(unit), MetricType::Histogram, samples, |mut e, h| {
            // The snapshot's buckets are cumulative; the encoder wants per-bucket counts.
            let mut per = Vec::with_capacity(h.buckets.len() + 1);
            let mut prev = 0;
            for b in &h.buckets {
                let c = b.count.max(prev);
                per.push((b.le, c - prev));
                prev = c;
            }
            per.push((f64::INFINITY, h.count.saturating_sub(prev)));
            let count = h.count.max(prev);
            e.encode_histogram::<prometheus_client::encoding::NoLabelSet>(h.sum, count, &per, None)
        })
    }
}

fn l1(k: &'static str, v: &str) -> Labels {
    vec![(k, v.to_owned())]
}

fn dir(v: &str) -> Labels {
    l1("direction", v)
}

fn window_samples(extra: &Labels, windows: &[WindowRate]) -> Vec<(Labels, f64)> {
    let mut out = Vec::new();
    for w in windows {
        for (d, v) in [("in", w.rate.bytes_in), ("out", w.rate.bytes_out)] {
            let mut l = extra.clone();
            l.push(("direction", d.to_owned()));
            l.push(("window", format!("{}s", w.window_seconds)));
            out.push((l, v));
        }
    }
    out
}

impl Collector for SnapshotCollector {
    fn encode(&self, mut enc: DescriptorEncoder<'_>) -> std::fmt::Result {
        let s = &self.s;
        let prefix = self.o.prom_prefix();
        let mut w = W { enc: &mut enc, prefix: &prefix };

        {
            let name = format!("{prefix}build");
            let mut me = w.enc.encode_descriptor(
                &name,
                "Version of the process that exports these metrics.",
                None,
                MetricType::Info,
            )?;
            me.encode_info(&l1("version", &s.meta.version))?;
        }
        w.gauge_u(
            "start_time_seconds",
            "Start time of the process, seconds on the proxy's clock (UNIX time).",
            vec![(vec![], s.meta.start_time)],
        )?;
        w.gauge_u(
            "draining",
            "1 while the process drains its connections before it exits (SIGTERM), else 0.",
            vec![(vec![], u64::from(s.meta.draining))],
        )?;
        w.counter(
            "bytes",
            "Bytes transferred: in = from clients, out = to clients.",
            vec![(dir("in"), s.totals.bytes_in), (dir("out"), s.totals.bytes_out)],
        )?;
        w.gauge_u(
            "connections_active",
            "Connections open now.",
            vec![(vec![], s.connections.active)],
        )?;
        w.counter(
            "connections",
            "Connections accepted and routed.",
            vec![(vec![], s.connections.total)],
        )?;
        w.gauge_f(
            "throughput_bytes_per_second",
            "Throughput over a sliding window, bytes per second.",
            None,
            window_samples(&vec![], &s.throughput.windows),
        )?;
        w.counter(
            "requests",
            "Requests: HTTP requests one by one, and one per layer-4 connection.",
            vec![(vec![], s.requests.total)],
        )?;
        w.gauge_f(
            "requests_per_second",
            "Requests (HTTP requests, and layer-4 connections) during the last second.",
            None,
            vec![(vec![], s.requests.per_second)],
        )?;
        w.histogram(
            "connection_duration",
            "Duration of closed connections.",
            Unit::Seconds,
            vec![(vec![], &s.histograms.connection_duration_seconds)],
        )?;
        w.histogram(
            "connection_transferred",
            "Bytes transferred per closed connection.",
            Unit::Bytes,
            vec![
                (dir("in"), &s.histograms.connection_bytes_in),
                (dir("out"), &s.histograms.connection_bytes_out),
            ],
        )?;
        w.histogram(
            "backend_connect_duration",
            "Time to connect to a backend.",
            Unit::Seconds,
            vec![(vec![], &s.histograms.backend_connect_seconds)],
        )?;
        w.counter(
            "backend_connect_failures",
            "Failed connects to backends.",
            vec![(vec![], s.backend.connect_failures)],
        )?;
        w.counter(
            "refused_connections",
            "Connections refused before forwarding, by reason.",
            s.refused.iter().map(|(r, c)| (l1("reason", r), *c)).collect(),
        )?;
        w.counter(
            "connections_closed",
            "Served connections closed, by reason: peer (EOF or reset from a side), inactivity, lifetime, keepalive (TCP keepalive probes unanswered), shutdown, error.",
            s.closed.iter().map(|(r, c)| (l1("reason", r), *c)).collect(),
        )?;
        w.counter(
            "proxy_headers_accepted",
            "PROXY protocol headers accepted, by version.",
            s.proxy_headers.accepted.iter().map(|(v, c)| (l1("version", v), *c)).collect(),
        )?;
        w.counter(
            "proxy_headers_rejected",
            "PROXY protocol headers rejected, by version and reason.",
            s.proxy_headers
                .rejected
                .iter()
                .map(|r| {
                    (vec![("version", r.version.clone()), ("reason", r.reason.clone())], r.count)
                })
                .collect(),
        )?;
        w.counter(
            "config_reloads",
            "Configuration reloads, by result.",
            vec![(l1("result", "ok"), s.reloads.ok), (l1("result", "failed"), s.reloads.failed)],
        )?;
        w.family(
            "tls_certificate_expiry_timestamp_seconds",
            "Expiry (not_after) of the TLS certificate served for a route's domain, UNIX time.",
            None,
            MetricType::Gauge,
            s.certificates
                .iter()
                .map(|c| {
                    let labels = vec![("route", c.route.clone()), ("domain", c.domain.clone())];
                    (labels, c.expiry_timestamp_seconds)
                })
                .collect(),
            |e, v| ConstGauge::new(*v).encode(e),
        )?;
        w.gauge_u(
            "target_up",
            "Whether a target of a route with active health checks is up (1) or down (0).",
            s.targets
                .iter()
                .map(|t| {
                    let labels = vec![("route", t.route.clone()), ("target", t.target.clone())];
                    (labels, u64::from(t.up))
                })
                .collect(),
        )?;

        // HTTP requests: bounded labels (route, status class, method), always written.
        let http_routes: Vec<(&str, &smartproxy_metrics::HttpRouteSnapshot)> =
            std::iter::once(("", &s.http.unrouted))
                .chain(s.routes.iter().map(|r| (r.name.as_str(), &r.http)))
                .filter(|(_, h)| h.requests_total > 0 || h.in_flight > 0)
                .collect();
        w.counter(
            "http_requests",
            "HTTP requests finished, by route (empty: no route took it), status class and method.",
            http_routes
                .iter()
                .flat_map(|(route, h)| {
                    h.requests.iter().map(move |c| {
                        (
                            vec![
                                ("route", (*route).to_owned()),
                                ("code_class", c.code_class.clone()),
                                ("method", c.method.clone()),
                            ],
                            c.count,
                        )
                    })
                })
                .collect(),
        )?;
        w.histogram(
            "http_request_duration",
            "Time from the request head to the end of the response (WebSocket: to its close).",
            Unit::Seconds,
            http_routes
                .iter()
                .filter(|(_, h)| h.request_duration_seconds.count > 0)
                .map(|(route, h)| (l1("route", route), &h.request_duration_seconds))
                .collect(),
        )?;
        w.gauge_u(
            "http_requests_in_flight",
            "HTTP requests being served now (open WebSockets included).",
            vec![(vec![], s.http.in_flight)],
        )?;
        w.counter(
            "http_errors",
            "Answers of the HTTP layer itself (400, 401, 403, 404, 429, 502, 504, ...), by reason.",
            s.http.errors.iter().map(|(r, c)| (l1("reason", r), *c)).collect(),
        )?;
        w.counter(
            "http_policy_refusals",
            "Requests refused by a route's policies (401, 403, 429), by route and reason.",
            s.routes
                .iter()
                .flat_map(|r| {
                    r.http.policy_refusals.iter().map(|(reason, c)| {
                        (vec![("route", r.name.clone()), ("reason", reason.clone())], *c)
                    })
                })
                .collect(),
        )?;

        if self.o.per_route {
            let routes = &s.routes;
            let route = |name: &str| l1("route", name);
            w.counter(
                "route_bytes",
                "Bytes transferred per route: in = from clients, out = to clients.",
                routes
                    .iter()
                    .flat_map(|r| {
                        let mut a = route(&r.name);
                        a.push(("direction", "in".into()));
                        let mut b = route(&r.name);
                        b.push(("direction", "out".into()));
                        [(a, r.bytes_in), (b, r.bytes_out)]
                    })
                    .collect(),
            )?;
            w.gauge_u(
                "route_connections_active",
                "Connections open now, per route.",
                routes.iter().map(|r| (route(&r.name), r.active)).collect(),
            )?;
            w.counter(
                "route_connections",
                "Connections accepted, per route.",
                routes.iter().map(|r| (route(&r.name), r.total)).collect(),
            )?;
            w.gauge_f(
                "route_throughput_bytes_per_second",
                "Throughput per route over a sliding window, bytes per second.",
                None,
                routes
                    .iter()
                    .flat_map(|r| window_samples(&route(&r.name), &r.throughput))
                    .collect(),
            )?;
            w.counter(
                "route_backend_connects",
                "Successful connects to backends, per route.",
                routes.iter().map(|r| (route(&r.name), r.backend_connects)).collect(),
            )?;
            w.counter(
                "route_backend_connect_failures",
                "Failed connects to backends, per route.",
                routes.iter().map(|r| (route(&r.name), r.backend_connect_failures)).collect(),
            )?;
        }

        let ips = &s.ips[..s.ips.len().min(self.o.ip_limit())];
        if !ips.is_empty() {
            let ip = |a: &std::net::IpAddr| l1("ip", &a.to_string());
            w.counter(
                "ip_bytes",
                "Bytes transferred per client IP (busiest IPs only).",
                ips.iter()
                    .flat_map(|r| {
                        let mut a = ip(&r.ip);
                        a.push(("direction", "in".into()));
                        let mut b = ip(&r.ip);
                        b.push(("direction", "out".into()));
                        [(a, r.bytes_in), (b, r.bytes_out)]
                    })
                    .collect(),
            )?;
            w.gauge_u(
                "ip_connections_active",
                "Connections open now, per client IP (busiest IPs only).",
                ips.iter().map(|r| (ip(&r.ip), r.active)).collect(),
            )?;
            w.gauge_f(
                "ip_throughput_bytes_per_second",
                "Throughput per client IP over a sliding window (busiest IPs only).",
                None,
                ips.iter().flat_map(|r| window_samples(&ip(&r.ip), &r.throughput)).collect(),
            )?;
        }
        Ok(())
    }
}
