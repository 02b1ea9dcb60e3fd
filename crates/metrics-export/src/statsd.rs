//! StatsD lines (plain and DogStatsD tags) and a UDP pusher.

use std::io;
use std::net::{SocketAddr, ToSocketAddrs, UdpSocket};

use smartproxy_metrics::{HistogramSnapshot, Snapshot};

use crate::options::ExportOptions;

/// Largest datagram the pusher sends: fits a 1500-byte Ethernet MTU with IPv6 and UDP headers
/// and some tunnel overhead (the DogStatsD recommendation).
pub const MAX_DATAGRAM: usize = 1432;

/// The `route` label of HTTP requests that no route took (Prometheus writes `route=""`).
pub const UNROUTED: &str = "_none";

/// How labels are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum StatsdStyle {
    /// Label values folded into the name after its first segment:
    /// `smartproxy.route.web.bytes_in:10|c`, `smartproxy.refused.no_route:1|c`.
    Plain,
    /// DogStatsD tags: `smartproxy.route.bytes_in:10|c|#route:web`.
    DogStatsd,
}

/// Keeps `[A-Za-z0-9_-]`, maps everything else to `_` (a StatsD name segment).
pub(crate) fn clean_name(s: &str) -> String {
    s.chars()
        .map(
            |c| if c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.' { c } else { '_' },
        )
        .collect()
}

fn clean_segment(s: &str) -> String {
    clean_name(s).replace('.', "_")
}

fn clean_tag(s: &str) -> String {
    s.chars().map(|c| if matches!(c, ',' | '|' | '#' | '\n' | ' ') { '_' } else { c }).collect()
}

fn fmt_f64(v: f64) -> String {
    if !v.is_finite() {
        return "0".to_owned();
    }
    let r = (v * 1000.0).round() / 1000.0;
    if r.fract() == 0.0 && r.abs() < 1e15 { format!("{}", r as i64) } else { format!("{r}") }
}

struct Lines<'a> {
    out: Vec<String>,
    prefix: String,
    style: StatsdStyle,
    _s: std::marker::PhantomData<&'a ()>,
}

impl Lines<'_> {
    /// `base` is the name without labels; `tags` are (key, value) labels.
    fn name(&self, base: &str, tags: &[(&str, &str)]) -> (String, String) {
        match self.style {
            StatsdStyle::Plain => {
                // Label values follow the first segment: route.web.bytes_in, refused.no_route.
                let (group, rest) = match base.split_once('.') {
                    Some((g, r)) => (g, Some(r)),
                    None => (base, None),
                };
                let mut parts = vec![group.to_owned()];
                parts.extend(tags.iter().map(|(_, v)| clean_segment(v)));
                parts.extend(rest.map(str::to_owned));
                (format!("{}{}", self.prefix, parts.join(".")), String::new())
            }
            StatsdStyle::DogStatsd => {
                let t = if tags.is_empty() {
                    String::new()
                } else {
                    let t: Vec<String> =
                        tags.iter().map(|(k, v)| format!("{k}:{}", clean_tag(v))).collect();
                    format!("|#{}", t.join(","))
                };
                (format!("{}{base}", self.prefix), t)
            }
        }
    }

    fn counter(&mut self, base: &str, tags: &[(&str, &str)], cur: u64, prev: Option<u64>) {
        // After a reset (the process restarted) the current value is the delta.
        let d = match prev {
            Some(p) if p <= cur => cur - p,
            _ => cur,
        };
        if d == 0 {
            return;
        }
        let (n, t) = self.name(base, tags);
        self.out.push(format!("{n}:{d}|c{t}"));
    }

    fn gauge(&mut self, base: &str, tags: &[(&str, &str)], v: f64) {
        let (n, t) = self.name(base, tags);
        self.out.push(format!("{n}:{}|g{t}", fmt_f64(v)));
    }

    /// A timer for the observations added since `prev`: their mean, sent with the sample rate
    /// `1/count`, so that the server counts `count` observations with the right sum.
    fn timer(
        &mut self,
        base: &str,
        tags: &[(&str, &str)],
        cur: &HistogramSnapshot,
        prev: Option<&HistogramSnapshot>,
        unit_to_ms: f64,
    ) {
        let (pc, ps) = match prev {
            Some(p) if p.count <= cur.count => (p.count, p.sum),
            _ => (0, 0.0),
        };
        let count = cur.count - pc;
        if count == 0 {
            return;
        }
        let mean_ms = (cur.sum - ps).max(0.0) / count as f64 * unit_to_ms;
        let (n, t) = self.name(base, tags);
        if count == 1 {
            self.out.push(format!("{n}:{}|ms{t}", fmt_f64(mean_ms)));
        } else {
            let rate = 1.0 / count as f64;
            self.out.push(format!("{n}:{}|ms|@{rate:.6}{t}", fmt_f64(mean_ms)));
        }
    }
}

/// StatsD lines for `s`. Counters are deltas since `prev` (the snapshot of the previous push;
/// `None` sends totals since the start) and are left out when zero; gauges are sent every time;
/// connection duration and backend connect time are timers (`|ms`) carrying the mean of the
/// new observations with sample rate `1/count`, plus p50/p95/p99 gauges.
#[must_use]
pub fn statsd_lines(
    s: &Snapshot,
    prev: Option<&Snapshot>,
    style: StatsdStyle,
    o: &ExportOptions,
) -> Vec<String> {
    let mut l =
        Lines { out: Vec::new(), prefix: o.statsd_prefix(), style, _s: std::marker::PhantomData };
    let p = prev;
    l.counter("bytes_in", &[], s.totals.bytes_in, p.map(|p| p.totals.bytes_in));
    l.counter("bytes_out", &[], s.totals.bytes_out, p.map(|p| p.totals.bytes_out));
    l.counter("connections", &[], s.connections.total, p.map(|p| p.connections.total));
    l.gauge("connections_active", &[], s.connections.active as f64);
    l.counter("requests", &[], s.requests.total, p.map(|p| p.requests.total));
    for w in &s.throughput.windows {
        let win = format!("{}s", w.window_seconds);
        l.gauge("throughput.bytes_in_per_second", &[("window", &win)], w.rate.bytes_in);
        l.gauge("throughput.bytes_out_per_second", &[("window", &win)], w.rate.bytes_out);
    }
    l.gauge("requests_per_second", &[], s.requests.per_second);
    l.timer(
        "connection_duration",
        &[],
        &s.histograms.connection_duration_seconds,
        p.map(|p| &p.histograms.connection_duration_seconds),
        1000.0,
    );
    let d = s.percentiles.connection_duration_seconds;
    for (q, v) in [("p50", d.p50), ("p95", d.p95), ("p99", d.p99)] {
        l.gauge(&format!("connection_duration_ms.{q}"), &[], v * 1000.0);
    }
    l.timer(
        "backend_connect_time",
        &[],
        &s.histograms.backend_connect_seconds,
        p.map(|p| &p.histograms.backend_connect_seconds),
        1000.0,
    );
    l.counter(
        "backend_connect_failures",
        &[],
        s.backend.connect_failures,
        p.map(|p| p.backend.connect_failures),
    );
    for (reason, c) in &s.refused {
        l.counter(
            "refused",
            &[("reason", reason)],
            *c,
            p.and_then(|p| p.refused.get(reason).copied()),
        );
    }
    for (reason, c) in &s.closed {
        l.counter(
            "connections_closed",
            &[("reason", reason)],
            *c,
            p.and_then(|p| p.closed.get(reason).copied()),
        );
    }
    for (v, c) in &s.proxy_headers.accepted {
        let before = p.and_then(|p| p.proxy_headers.accepted.get(v).copied());
        l.counter("proxy_headers.accepted", &[("version", v)], *c, before);
    }
    for r in &s.proxy_headers.rejected {
        let before = p.and_then(|p| {
            p.proxy_headers
                .rejected
                .iter()
                .find(|x| x.version == r.version && x.reason == r.reason)
                .map(|x| x.count)
        });
        l.counter(
            "proxy_headers.rejected",
            &[("version", &r.version), ("reason", &r.reason)],
            r.count,
            before,
        );
    }
    l.counter("config_reloads", &[("result", "ok")], s.reloads.ok, p.map(|p| p.reloads.ok));
    l.counter(
        "config_reloads",
        &[("result", "failed")],
        s.reloads.failed,
        p.map(|p| p.reloads.failed),
    );
    // HTTP requests (bounded labels: route, status class, method).
    let http_routes = std::iter::once((UNROUTED, &s.http.unrouted, p.map(|p| &p.http.unrouted)))
        .chain(s.routes.iter().map(|r| {
            let before = p.and_then(|p| p.routes.iter().find(|x| x.name == r.name));
            (r.name.as_str(), &r.http, before.map(|x| &x.http))
        }));
    for (route, h, before) in http_routes {
        for c in &h.requests {
            let prev = before.and_then(|b| {
                b.requests
                    .iter()
                    .find(|x| x.code_class == c.code_class && x.method == c.method)
                    .map(|x| x.count)
            });
            // Before this route had requests, its counters were zero.
            let prev = prev.or(before.map(|_| 0));
            l.counter(
                "http.requests",
                &[("route", route), ("code_class", &c.code_class), ("method", &c.method)],
                c.count,
                prev,
            );
        }
        l.timer(
            "http.request_duration",
            &[("route", route)],
            &h.request_duration_seconds,
            before.map(|b| &b.request_duration_seconds),
            1000.0,
        );
        for (reason, c) in &h.policy_refusals {
            // Before this route refused anything, its counters were zero.
            let prev = before.map(|b| b.policy_refusals.get(reason).copied().unwrap_or(0));
            l.counter("http.policy_refusals", &[("route", route), ("reason", reason)], *c, prev);
        }
    }
    l.gauge("http.requests_in_flight", &[], s.http.in_flight as f64);
    for (reason, c) in &s.http.errors {
        l.counter(
            "http.errors",
            &[("reason", reason)],
            *c,
            p.and_then(|p| p.http.errors.get(reason).copied()),
        );
    }
    for c in &s.certificates {
        let tags = [("route", c.route.as_str()), ("domain", c.domain.as_str())];
        l.gauge(
            "tls_certificate_expiry_timestamp_seconds",
            &tags,
            c.expiry_timestamp_seconds as f64,
        );
    }
    for t in &s.targets {
        let tags = [("route", t.route.as_str()), ("target", t.target.as_str())];
        l.gauge("target_up", &tags, if t.up { 1.0 } else { 0.0 });
    }
    if o.per_route {
        for r in &s.routes {
            let pr = p.and_then(|p| p.routes.iter().find(|x| x.name == r.name));
            let tags = [("route", r.name.as_str())];
            l.counter("route.bytes_in", &tags, r.bytes_in, pr.map(|x| x.bytes_in));
            l.counter("route.bytes_out", &tags, r.bytes_out, pr.map(|x| x.bytes_out));
            l.counter("route.connections", &tags, r.total, pr.map(|x| x.total));
            l.gauge("route.connections_active", &tags, r.active as f64);
            l.counter(
                "route.backend_connect_failures",
                &tags,
                r.backend_connect_failures,
                pr.map(|x| x.backend_connect_failures),
            );
        }
    }
    for ip in s.ips.iter().take(o.ip_limit()) {
        let pi = p.and_then(|p| p.ips.iter().find(|x| x.ip == ip.ip));
        let a = ip.ip.to_string();
        let tags = [("ip", a.as_str())];
        l.counter("ip.bytes_in", &tags, ip.bytes_in, pi.map(|x| x.bytes_in));
        l.counter("ip.bytes_out", &tags, ip.bytes_out, pi.map(|x| x.bytes_out));
        l.gauge("ip.connections_active", &tags, ip.active as f64);
    }
    l.out
}

/// Packs lines into datagram payloads of at most `max` bytes, joined by `\n`. A single line
/// longer than `max` travels alone.
#[must_use]
pub fn batch_datagrams(lines: &[String], max: usize) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for line in lines {
        if !cur.is_empty() && cur.len() + 1 + line.len() > max {
            out.push(std::mem::take(&mut cur));
        }
        if !cur.is_empty() {
            cur.push('\n');
        }
        cur.push_str(line);
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// Sends snapshots to a StatsD server over UDP, as counters relative to the previous push.
#[derive(Debug)]
pub struct StatsdPusher {
    socket: UdpSocket,
    style: StatsdStyle,
    opts: ExportOptions,
    prev: Option<Snapshot>,
}

impl StatsdPusher {
    /// A pusher to `addr` (resolved once, first address), from an ephemeral local port.
    ///
    /// # Errors
    /// When `addr` does not resolve or the socket cannot be bound.
    pub fn new(
        addr: impl ToSocketAddrs,
        style: StatsdStyle,
        opts: ExportOptions,
    ) -> io::Result<Self> {
        let addr: SocketAddr = addr.to_socket_addrs()?.next().ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidInput, "statsd address resolves to nothing")
        })?;
        let local: SocketAddr =
            if addr.is_ipv4() { ([0, 0, 0, 0], 0).into() } else { ([0u16; 8], 0).into() };
        let socket = UdpSocket::bind(local)?;
        socket.connect(addr)?;
        Ok(Self { socket, style, opts, prev: None })
    }

    /// Sends `s` (counters as deltas since the previous successful push) in datagrams of at
    /// most [`MAX_DATAGRAM`] bytes. Returns the number of datagrams sent.
    ///
    /// # Errors
    /// The first send error; the previous snapshot is then kept, so the next push resends the
    /// deltas.
    pub fn push(&mut self, s: &Snapshot) -> io::Result<usize> {
        let lines = statsd_lines(s, self.prev.as_ref(), self.style, &self.opts);
        let batches = batch_datagrams(&lines, MAX_DATAGRAM);
        for b in &batches {
            self.socket.send(b.as_bytes())?;
        }
        self.prev = Some(s.clone());
        Ok(batches.len())
    }

    /// Local address of the socket.
    ///
    /// # Errors
    /// As `UdpSocket::local_addr`.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.local_addr()
    }
}
