//! The collector: connection lifecycle, the sampler (`tick`) and the query API.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::{Mutex, RwLock};
use smartproxy_throughput::{KeyedSeries, Sample, Series, SeriesConfig, WindowSum};

use crate::clock::{Clock, MonotonicClock};
use smartproxy_limits::IpLimiter;

use crate::config::{MetricsConfig, PerIp};
use crate::conn::{ConnShared, ConnectionRecorder};
use crate::hist::{CONNECT_BUCKETS, DURATION_BUCKETS, Hist};
use crate::http::{
    EMPTY_ACC, HttpErrorReason, HttpMethod, HttpPolicyReason, HttpStats, histogram_of,
};
use crate::reason::{CloseReason, ProxyVersion, RefuseReason};
use crate::registry::{Registry, SlotId};
use crate::route::RouteHandle;
use crate::snapshot::{
    Backend, CertificateExpiry, Connections, Histograms, HttpSnapshot, IpCount, IpSnapshot, Meta,
    Pct, Percentiles, ProxyHeaders, ProxyRejection, Reloads, Requests, RouteSnapshot, Snapshot,
    TargetUp, Throughput, ThroughputPoint, ThroughputRate, Totals, WindowRate,
};

/// Keeps a value on its own cache line (128 bytes covers adjacent-line prefetch on x86 and
/// the 128-byte lines of Apple silicon): for counters every core writes, like the gauge of
/// open connections.
#[derive(Debug, Default)]
#[repr(align(128))]
struct Padded<T>(T);

/// The metrics collector. Share it as `Arc<Metrics>`; see the crate docs for the design.
#[derive(Debug)]
pub struct Metrics {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct ConnHists {
    duration: Hist,
    bytes_in: Hist,
    bytes_out: Hist,
}

#[derive(Debug)]
pub(crate) struct Inner {
    cfg: MetricsConfig,
    clock: Arc<dyn Clock>,
    start: u64,
    last_tick: AtomicU64,
    draining: std::sync::atomic::AtomicBool,
    registry: Registry,
    active: Padded<AtomicU64>,
    total: AtomicU64,
    /// Open connections per client IP: the engine's admission limiter when it shares it
    /// ([`Metrics::with_ip_limiter`]; then the collector does not count), else our own.
    ips_active: Arc<IpLimiter>,
    counts_ips: bool,
    routes: Mutex<BTreeMap<String, RouteHandle>>,
    route_cfg: SeriesConfig,
    tick_lock: Mutex<()>,
    global: RwLock<Series>,
    ips: Option<RwLock<KeyedSeries<IpAddr>>>,
    conn_hists: Mutex<ConnHists>,
    backend_hist: Mutex<Hist>,
    backend_connects: AtomicU64,
    backend_failures: AtomicU64,
    refused: Box<[AtomicU64]>,
    proxy_accepted: [AtomicU64; 2],
    proxy_rejected: Mutex<BTreeMap<(Option<ProxyVersion>, &'static str), u64>>,
    reloads_ok: AtomicU64,
    reloads_failed: AtomicU64,
    /// HTTP requests that no route took.
    http_unrouted: HttpStats,
    http_errors: Box<[AtomicU64]>,
    /// Set by the owner of the certificates; copied into every snapshot.
    certificates: RwLock<Vec<CertificateExpiry>>,
    /// Set by the engine's health checker; copied into every snapshot.
    targets: RwLock<Vec<TargetUp>>,
    /// Served connections closed, by [`CloseReason`] (indexed by `CloseReason::index`).
    closed: [AtomicU64; CloseReason::ALL.len()],
}

fn secs(d: Duration) -> u64 {
    d.as_secs().max(1)
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl Metrics {
    /// A collector that starts at `now` (seconds on the caller's clock; UNIX seconds are
    /// recommended, the snapshot reports them as `start_time`), timing connections with
    /// [`MonotonicClock`].
    #[must_use]
    pub fn new(cfg: MetricsConfig, now: u64) -> Arc<Self> {
        Self::with_clock(cfg, now, Arc::new(MonotonicClock::new()))
    }

    /// Same as [`Metrics::new`] with the clock used for connection durations and connect
    /// times (a [`ManualClock`](crate::ManualClock) in tests).
    #[must_use]
    pub fn with_clock(cfg: MetricsConfig, now: u64, clock: Arc<dyn Clock>) -> Arc<Self> {
        Self::build(cfg, now, clock, None)
    }

    /// Same as [`Metrics::new`], reading open connections per client IP from `limiter`, the
    /// admission limiter of the caller (the engine's global per-IP limiter, which counts every
    /// admitted connection already) instead of counting them a second time.
    #[must_use]
    pub fn with_ip_limiter(cfg: MetricsConfig, now: u64, limiter: Arc<IpLimiter>) -> Arc<Self> {
        Self::build(cfg, now, Arc::new(MonotonicClock::new()), Some(limiter))
    }

    fn build(
        cfg: MetricsConfig,
        now: u64,
        clock: Arc<dyn Clock>,
        ips_limiter: Option<Arc<IpLimiter>>,
    ) -> Arc<Self> {
        let second_slots = usize::try_from(secs(cfg.retention)).unwrap_or(usize::MAX);
        let minute_slots = usize::try_from(cfg.minute_retention.as_secs() / 60).unwrap_or(0);
        let route_cfg = SeriesConfig::new(second_slots, minute_slots);
        let ip_cfg =
            SeriesConfig::new(usize::try_from(secs(cfg.ip_retention)).unwrap_or(usize::MAX), 0);
        let ips = match cfg.per_ip {
            PerIp::Off => None,
            PerIp::TopN(_) => Some(RwLock::new(KeyedSeries::new(ip_cfg, cfg.max_tracked_ips, now))),
        };
        let inner = Inner {
            clock,
            start: now,
            last_tick: AtomicU64::new(now),
            draining: std::sync::atomic::AtomicBool::new(false),
            registry: Registry::new(ips.is_some()),
            active: Padded(AtomicU64::new(0)),
            total: AtomicU64::new(0),
            ips_active: ips_limiter.clone().unwrap_or_else(IpLimiter::counter),
            counts_ips: ips_limiter.is_none(),
            routes: Mutex::new(BTreeMap::new()),
            route_cfg,
            tick_lock: Mutex::new(()),
            global: RwLock::new(Series::new(route_cfg, now)),
            ips,
            conn_hists: Mutex::new(ConnHists {
                duration: Hist::micros(DURATION_BUCKETS),
                bytes_in: Hist::bytes(),
                bytes_out: Hist::bytes(),
            }),
            backend_hist: Mutex::new(Hist::micros(CONNECT_BUCKETS)),
            backend_connects: AtomicU64::new(0),
            backend_failures: AtomicU64::new(0),
            refused: RefuseReason::ALL.iter().map(|_| AtomicU64::new(0)).collect(),
            proxy_accepted: [AtomicU64::new(0), AtomicU64::new(0)],
            proxy_rejected: Mutex::new(BTreeMap::new()),
            reloads_ok: AtomicU64::new(0),
            reloads_failed: AtomicU64::new(0),
            http_unrouted: HttpStats::default(),
            http_errors: HttpErrorReason::ALL.iter().map(|_| AtomicU64::new(0)).collect(),
            certificates: RwLock::new(Vec::new()),
            targets: RwLock::new(Vec::new()),
            closed: std::array::from_fn(|_| AtomicU64::new(0)),
            cfg,
        };
        Arc::new(Self { inner: Arc::new(inner) })
    }

    /// The configuration.
    #[must_use]
    pub fn config(&self) -> &MetricsConfig {
        &self.inner.cfg
    }

    /// Start time (caller's clock).
    #[must_use]
    pub fn start_time(&self) -> u64 {
        self.inner.start
    }

    /// Time of the last tick (the start time before the first one).
    #[must_use]
    pub fn now(&self) -> u64 {
        self.inner.last_tick.load(Ordering::Acquire)
    }

    // ----- recording -------------------------------------------------------------------

    /// The handle of route `name`, created on first use. Call it when routes are (re)loaded,
    /// never per connection or packet.
    pub fn route(&self, name: &str) -> RouteHandle {
        let mut routes = self.inner.routes.lock();
        if let Some(h) = routes.get(name) {
            return h.clone();
        }
        let h = RouteHandle::new(name, self.inner.route_cfg, self.now());
        routes.insert(name.to_owned(), h.clone());
        h
    }

    /// The registry of open connections (tests count its slots).
    #[cfg(test)]
    pub(crate) fn registry(&self) -> &Registry {
        &self.inner.registry
    }

    /// Forgets routes for which `keep` is false and that have no connection open (after a
    /// reload removed them). Their series and counters disappear from snapshots.
    pub fn forget_routes(&self, keep: impl Fn(&str) -> bool) {
        self.inner.routes.lock().retain(|name, h| keep(name) || h.active() > 0);
    }

    /// A connection from `client_ip` was accepted on `route`. Keep the returned recorder for
    /// the life of the connection; dropping it closes the connection in the metrics.
    pub fn connection_opened(&self, client_ip: IpAddr, route: &RouteHandle) -> ConnectionRecorder {
        self.open(client_ip, route, false)
    }

    /// Like [`Metrics::connection_opened`], for a connection served by the HTTP layer: the
    /// connection itself is not counted as a request, its requests are, one by one, with
    /// [`Metrics::http_request_finished`]. `route` carries the connection's bytes (the route
    /// of the port, or of the first request: the engine decides).
    pub fn connection_opened_http(
        &self,
        client_ip: IpAddr,
        route: &RouteHandle,
    ) -> ConnectionRecorder {
        self.open(client_ip, route, true)
    }

    fn open(&self, client_ip: IpAddr, route: &RouteHandle, http: bool) -> ConnectionRecorder {
        let inner = &self.inner;
        inner.active.0.fetch_add(1, Ordering::Relaxed);
        inner.total.fetch_add(1, Ordering::Relaxed);
        route.0.active.fetch_add(1, Ordering::Relaxed);
        route.0.total.fetch_add(1, Ordering::Relaxed);
        if inner.counts_ips {
            inner.ips_active.add_open(client_ip);
        }
        let conn = Arc::new(ConnShared {
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            extra_requests: AtomicU64::new(0),
            ip: client_ip,
            route: route.clone(),
        });
        let slot = inner.registry.insert(Arc::clone(&conn), http);
        ConnectionRecorder {
            conn,
            inner: Arc::clone(inner),
            slot,
            opened_at: nanos(inner.clock.elapsed()),
        }
    }

    /// Traffic of `route` that no [`ConnectionRecorder`] saw: a route forwarded outside the
    /// process (by kernel NAT rules) whose counters the caller reads once per interval.
    /// `bytes_in` came from clients, `bytes_out` went to them, `new_connections` were opened
    /// (each also counts as one request, as a layer-4 connection does). The next
    /// [`tick`](Self::tick) puts them into the route's series and the totals like the
    /// bytes of proxied connections; the route's and the global connection totals grow at
    /// once. No connection is open in the metrics for them (`active` does not change), and
    /// the per-IP series and histograms do not see them.
    pub fn add_route_traffic(
        &self,
        route: &RouteHandle,
        bytes_in: u64,
        bytes_out: u64,
        new_connections: u64,
    ) {
        if new_connections > 0 {
            self.inner.total.fetch_add(new_connections, Ordering::Relaxed);
            route.0.total.fetch_add(new_connections, Ordering::Relaxed);
        }
        *route.0.external.lock() += Sample::new(bytes_in, bytes_out, new_connections);
    }

    /// A connection was refused.
    pub fn refused(&self, reason: RefuseReason) {
        self.inner.refused[reason.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// A served connection was closed for `reason` (once per connection).
    pub fn connection_closed(&self, reason: CloseReason) {
        self.inner.closed[reason.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// A PROXY header was accepted.
    pub fn proxy_header_accepted(&self, v: ProxyVersion) {
        let i = match v {
            ProxyVersion::V1 => 0,
            ProxyVersion::V2 => 1,
        };
        self.inner.proxy_accepted[i].fetch_add(1, Ordering::Relaxed);
    }

    /// A PROXY header was rejected; `v` is `None` when the version could not be told.
    /// `reason` should come from a small fixed set (it becomes a label).
    pub fn proxy_header_rejected(&self, v: Option<ProxyVersion>, reason: &'static str) {
        *self.inner.proxy_rejected.lock().entry((v, reason)).or_insert(0) += 1;
    }

    /// A backend connect for `route` succeeded after `took`.
    pub fn backend_connected(&self, route: &RouteHandle, took: Duration) {
        let us = micros(took);
        route.0.backend_connects.fetch_add(1, Ordering::Relaxed);
        route.0.backend_micros.fetch_add(us, Ordering::Relaxed);
        self.inner.backend_connects.fetch_add(1, Ordering::Relaxed);
        self.inner.backend_hist.lock().record(us);
    }

    /// A backend connect for `route` failed.
    pub fn backend_connect_failed(&self, route: &RouteHandle) {
        route.0.backend_failures.fetch_add(1, Ordering::Relaxed);
        self.inner.backend_failures.fetch_add(1, Ordering::Relaxed);
    }

    /// An HTTP request was routed to `route` (`None`: no route took it) and is being served.
    /// Pair every call with one [`Metrics::http_request_finished`] for the same route.
    /// One relaxed atomic add.
    #[inline]
    pub fn http_request_started(&self, route: Option<&RouteHandle>) {
        self.http_stats(route).started();
    }

    /// An HTTP request finished (its response was sent, or the client went away: pass the
    /// status that was or would have been sent, e.g. 499). Counts it by status class and
    /// method, records its duration, and releases its in-flight count. A few relaxed atomic
    /// adds; the request rates of the series are folded in by [`Metrics::tick`].
    #[inline]
    pub fn http_request_finished(
        &self,
        route: Option<&RouteHandle>,
        method: HttpMethod,
        status: u16,
        took: Duration,
    ) {
        self.http_stats(route).finished(method, status, took);
    }

    /// The HTTP layer answered (or closed) on its own for `reason`.
    #[inline]
    pub fn http_error(&self, reason: HttpErrorReason) {
        self.inner.http_errors[reason.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// A policy of `route` (`security` allow/block lists, `basic_auth`, `jwt`, `rate_limit`,
    /// `cors`) refused a request. One relaxed atomic add; the answer itself is also counted
    /// with [`Metrics::http_error`] and as a finished request.
    #[inline]
    pub fn http_policy_refused(&self, route: &RouteHandle, reason: HttpPolicyReason) {
        route.0.http.refused(reason);
    }

    /// Requests of `route` refused by its policies for `reason`.
    #[must_use]
    pub fn http_policy_refusal_count(&self, route: &RouteHandle, reason: HttpPolicyReason) -> u64 {
        route.0.http.refused_count(reason)
    }

    fn http_stats<'a>(&'a self, route: Option<&'a RouteHandle>) -> &'a HttpStats {
        match route {
            Some(r) => &r.0.http,
            None => &self.inner.http_unrouted,
        }
    }

    /// HTTP requests being served now, all routes.
    #[must_use]
    pub fn http_requests_in_flight(&self) -> u64 {
        let routes = self.inner.routes.lock();
        self.inner.http_unrouted.in_flight()
            + routes.values().map(|h| h.0.http.in_flight()).sum::<u64>()
    }

    /// HTTP requests finished since the start (live), all routes and unrouted ones.
    #[must_use]
    pub fn http_requests_total(&self) -> u64 {
        let routes = self.inner.routes.lock();
        self.inner.http_unrouted.total() + routes.values().map(|h| h.0.http.total()).sum::<u64>()
    }

    /// Answers of the HTTP layer itself for `reason`.
    #[must_use]
    pub fn http_error_count(&self, reason: HttpErrorReason) -> u64 {
        self.inner.http_errors[reason.index()].load(Ordering::Relaxed)
    }

    /// A configuration reload was applied (`ok`) or refused.
    pub fn config_reloaded(&self, ok: bool) {
        let c = if ok { &self.inner.reloads_ok } else { &self.inner.reloads_failed };
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// Samples every connection's counters into the time series. Call once per
    /// `sample_interval`, off the data path, with the current time in seconds. A tick that
    /// comes late (a gap of up to two intervals) spreads its bytes evenly over the seconds it
    /// covers; time going backwards is counted in the newest second (see
    /// [`smartproxy_throughput::Series`]).
    pub fn tick(&self, now: u64) {
        self.inner.tick(now);
    }

    // ----- queries: connections ----------------------------------------------------------

    /// Connections open now.
    #[must_use]
    pub fn connections_active(&self) -> u64 {
        self.inner.active.0.load(Ordering::Relaxed)
    }

    /// Connections opened since the start.
    #[must_use]
    pub fn connections_total(&self) -> u64 {
        self.inner.total.load(Ordering::Relaxed)
    }

    /// Open connections per route.
    #[must_use]
    pub fn connections_by_route(&self) -> BTreeMap<String, u64> {
        self.inner.routes.lock().iter().map(|(n, h)| (n.clone(), h.active())).collect()
    }

    /// Open connections per client IP.
    #[must_use]
    pub fn connections_by_ip(&self) -> HashMap<IpAddr, u64> {
        self.inner.ips_active.open_by_ip().into_iter().map(|(ip, n)| (ip, u64::from(n))).collect()
    }

    /// The `limit` client IPs with the most open connections, highest first (ties by address).
    #[must_use]
    pub fn top_ips(&self, limit: usize) -> Vec<(IpAddr, u64)> {
        let mut all: Vec<(IpAddr, u64)> = self
            .inner
            .ips_active
            .open_by_ip()
            .into_iter()
            .map(|(ip, n)| (ip, u64::from(n)))
            .collect();
        let order = |a: &(IpAddr, u64), b: &(IpAddr, u64)| b.1.cmp(&a.1).then(a.0.cmp(&b.0));
        if limit == 0 {
            return Vec::new();
        }
        if limit < all.len() {
            all.select_nth_unstable_by(limit - 1, order);
            all.truncate(limit);
        }
        all.sort_unstable_by(order);
        all
    }

    // ----- queries: throughput -----------------------------------------------------------

    /// Bytes/s over the last second.
    #[must_use]
    pub fn throughput_instant(&self) -> ThroughputRate {
        self.throughput_custom(1)
    }

    /// Bytes/s over the last 10 seconds.
    #[must_use]
    pub fn throughput_recent(&self) -> ThroughputRate {
        self.throughput_custom(10)
    }

    /// Bytes/s over the last 60 seconds.
    #[must_use]
    pub fn throughput_average(&self) -> ThroughputRate {
        self.throughput_custom(60)
    }

    /// Bytes/s over the last `seconds` (1 s to the minute retention), divided by the real
    /// length of the window when the process is younger than it.
    #[must_use]
    pub fn throughput_custom(&self, seconds: u64) -> ThroughputRate {
        ThroughputRate::from_rate(self.global_window(seconds).rate())
    }

    /// Throughput history over the last `seconds`, oldest first: 1 point per second up to the
    /// retention, 1 point per minute beyond.
    #[must_use]
    pub fn throughput_history(&self, seconds: u64) -> Vec<ThroughputPoint> {
        let now = self.now();
        to_points(&self.inner.global.read().history(now, seconds))
    }

    /// History of route `name` (empty if unknown).
    #[must_use]
    pub fn route_history(&self, name: &str, seconds: u64) -> Vec<ThroughputPoint> {
        let now = self.now();
        let h = self.inner.routes.lock().get(name).cloned();
        h.map(|h| to_points(&h.0.series.read().history(now, seconds))).unwrap_or_default()
    }

    /// History of client `ip` (empty if untracked), at most the IP retention.
    #[must_use]
    pub fn ip_history(&self, ip: IpAddr, seconds: u64) -> Vec<ThroughputPoint> {
        match &self.inner.ips {
            None => Vec::new(),
            Some(ips) => {
                ips.read().history(&ip, seconds).map(|h| to_points(&h)).unwrap_or_default()
            }
        }
    }

    /// Bytes/s per route over `window` seconds.
    #[must_use]
    pub fn throughput_by_route(&self, window: u64) -> BTreeMap<String, ThroughputRate> {
        let now = self.now();
        let routes: Vec<RouteHandle> = self.inner.routes.lock().values().cloned().collect();
        routes
            .iter()
            .map(|h| {
                let w = h.0.series.read().window(now, window);
                (h.0.name.clone(), ThroughputRate::from_rate(w.rate()))
            })
            .collect()
    }

    /// Bytes/s per tracked client IP over `window` seconds (at most the IP retention).
    /// Empty when per-IP tracking is off.
    #[must_use]
    pub fn throughput_by_ip(&self, window: u64) -> HashMap<IpAddr, ThroughputRate> {
        match &self.inner.ips {
            None => HashMap::new(),
            Some(ips) => {
                let ips = ips.read();
                let mut out = HashMap::with_capacity(ips.len());
                out.extend(
                    ips.windows(window).map(|(ip, w)| (*ip, ThroughputRate::from_rate(w.rate()))),
                );
                out
            }
        }
    }

    // ----- queries: requests, totals, percentiles ----------------------------------------

    /// Requests in the last second (one per connection, plus
    /// [`ConnectionRecorder::add_request`]).
    #[must_use]
    pub fn requests_per_second(&self) -> f64 {
        self.global_window(1).rate().events
    }

    /// Requests per minute over the last 60 seconds.
    #[must_use]
    pub fn requests_per_minute(&self) -> f64 {
        self.global_window(60).rate().events * 60.0
    }

    /// Requests since the start, as of the last tick: one per connection plus those counted
    /// with [`ConnectionRecorder::add_request`].
    #[must_use]
    pub fn requests_total(&self) -> u64 {
        self.inner.global.read().total().events
    }

    /// Bytes from clients since the start, as of the last tick.
    #[must_use]
    pub fn bytes_in_total(&self) -> u64 {
        self.inner.global.read().total().bytes_in
    }

    /// Bytes to clients since the start, as of the last tick.
    #[must_use]
    pub fn bytes_out_total(&self) -> u64 {
        self.inner.global.read().total().bytes_out
    }

    /// Duration of closed connections, seconds.
    #[must_use]
    pub fn connection_duration_percentiles(&self) -> Pct {
        self.inner.conn_hists.lock().duration.pct()
    }

    /// Bytes per closed connection: (from the client, to the client).
    #[must_use]
    pub fn bytes_per_connection_percentiles(&self) -> (Pct, Pct) {
        let h = self.inner.conn_hists.lock();
        (h.bytes_in.pct(), h.bytes_out.pct())
    }

    /// Connections refused for `reason`.
    #[must_use]
    pub fn refused_count(&self, reason: RefuseReason) -> u64 {
        self.inner.refused[reason.index()].load(Ordering::Relaxed)
    }

    /// Served connections closed for `reason`.
    #[must_use]
    pub fn closed_count(&self, reason: CloseReason) -> u64 {
        self.inner.closed[reason.index()].load(Ordering::Relaxed)
    }

    /// Configuration reloads: (applied, refused).
    #[must_use]
    pub fn config_reloads(&self) -> (u64, u64) {
        (
            self.inner.reloads_ok.load(Ordering::Relaxed),
            self.inner.reloads_failed.load(Ordering::Relaxed),
        )
    }

    fn global_window(&self, seconds: u64) -> WindowSum {
        let now = self.now();
        self.inner.global.read().window(now, seconds)
    }

    /// Marks the process as draining connections before it exits (exported as
    /// `smartproxy_draining`, for alerts on a drain that does not end).
    pub fn set_draining(&self, draining: bool) {
        self.inner.draining.store(draining, Ordering::Relaxed);
    }

    /// Everything, at once.
    #[must_use]
    pub fn snapshot(&self) -> Snapshot {
        let inner = &self.inner;
        let cfg = &inner.cfg;
        let now = self.now();
        let windows_of = |s: &Series, max: u64| -> Vec<WindowRate> {
            cfg.windows
                .iter()
                .filter(|w| **w <= max)
                .map(|&w| WindowRate {
                    window_seconds: w,
                    rate: ThroughputRate::from_rate(s.window(now, w).rate()),
                })
                .collect()
        };
        let (throughput, requests, totals) = {
            let g = inner.global.read();
            let rate = |w| ThroughputRate::from_rate(g.window(now, w).rate());
            let t = Throughput {
                instant: rate(1),
                recent: rate(10),
                average: rate(60),
                windows: windows_of(&g, u64::MAX),
                history: to_points(&g.history(now, secs(cfg.snapshot_history))),
            };
            let r = Requests {
                per_second: g.window(now, 1).rate().events,
                per_minute: g.window(now, 60).rate().events * 60.0,
                total: g.total().events,
            };
            let tot = g.total();
            (
                t,
                r,
                Totals {
                    bytes_in: tot.bytes_in,
                    bytes_out: tot.bytes_out,
                    connections: self.connections_total(),
                },
            )
        };
        let routes: Vec<RouteHandle> = inner.routes.lock().values().cloned().collect();
        let routes = routes
            .iter()
            .map(|h| {
                let s = h.0.series.read();
                let total = s.total();
                RouteSnapshot {
                    name: h.0.name.clone(),
                    active: h.active(),
                    total: h.total(),
                    bytes_in: total.bytes_in,
                    bytes_out: total.bytes_out,
                    throughput: windows_of(&s, u64::MAX),
                    requests_per_second: s.window(now, 1).rate().events,
                    backend_connects: h.0.backend_connects.load(Ordering::Relaxed),
                    backend_connect_failures: h.0.backend_failures.load(Ordering::Relaxed),
                    backend_connect_seconds_sum: h.0.backend_micros.load(Ordering::Relaxed) as f64
                        / 1e6,
                    http: h.0.http.snapshot(),
                }
            })
            .collect();
        let ips_active_count = inner.ips_active.open_by_ip().len() as u64;
        let mut ips = Vec::new();
        if let (Some(series), PerIp::TopN(n)) = (&inner.ips, cfg.per_ip) {
            let ret = secs(cfg.ip_retention);
            let series = series.read();
            for (ip, w) in series.top(ret, n) {
                let total = series.total(&ip).unwrap_or_default();
                let throughput = cfg
                    .windows
                    .iter()
                    .filter(|w| **w <= ret)
                    .filter_map(|&win| {
                        series.window(&ip, win).map(|s| WindowRate {
                            window_seconds: win,
                            rate: ThroughputRate::from_rate(s.rate()),
                        })
                    })
                    .collect();
                ips.push((
                    w.sum.bytes_in.saturating_add(w.sum.bytes_out),
                    IpSnapshot {
                        ip,
                        active: 0,
                        bytes_in: total.bytes_in,
                        bytes_out: total.bytes_out,
                        throughput,
                    },
                ));
            }
        }
        ips.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.ip.cmp(&b.1.ip)));
        for (_, ip) in &mut ips {
            ip.active = u64::from(inner.ips_active.open(ip.ip));
        }
        let (percentiles, mut histograms) = {
            let h = inner.conn_hists.lock();
            (
                Percentiles {
                    connection_duration_seconds: h.duration.pct(),
                    bytes_in: h.bytes_in.pct(),
                    bytes_out: h.bytes_out.pct(),
                },
                Histograms {
                    connection_duration_seconds: h.duration.snapshot(),
                    connection_bytes_in: h.bytes_in.snapshot(),
                    connection_bytes_out: h.bytes_out.snapshot(),
                    backend_connect_seconds: crate::snapshot::HistogramSnapshot {
                        buckets: Vec::new(),
                        count: 0,
                        sum: 0.0,
                    },
                },
            )
        };
        histograms.backend_connect_seconds = inner.backend_hist.lock().snapshot();
        let refused = RefuseReason::ALL
            .iter()
            .map(|r| (r.as_str().to_owned(), self.refused_count(*r)))
            .collect();
        let closed = CloseReason::ALL
            .iter()
            .map(|r| (r.as_str().to_owned(), self.closed_count(*r)))
            .collect();
        let accepted = [ProxyVersion::V1, ProxyVersion::V2]
            .iter()
            .zip(&inner.proxy_accepted)
            .map(|(v, c)| (v.as_str().to_owned(), c.load(Ordering::Relaxed)))
            .collect();
        let rejected = inner
            .proxy_rejected
            .lock()
            .iter()
            .map(|((v, reason), count)| ProxyRejection {
                version: v.map_or("unknown", ProxyVersion::as_str).to_owned(),
                reason: (*reason).to_owned(),
                count: *count,
            })
            .collect();
        let top_ips = self
            .top_ips(cfg.top_ips)
            .into_iter()
            .map(|(ip, count)| IpCount { ip, count })
            .collect();
        let (ok, failed) = self.config_reloads();
        let http = {
            let mut acc = EMPTY_ACC;
            inner.http_unrouted.add_histogram(&mut acc);
            let mut in_flight = inner.http_unrouted.in_flight();
            let mut total = inner.http_unrouted.total();
            for r in &routes {
                let r: &RouteSnapshot = r;
                in_flight += r.http.in_flight;
                total += r.http.requests_total;
            }
            for h in inner.routes.lock().values() {
                h.0.http.add_histogram(&mut acc);
            }
            HttpSnapshot {
                in_flight,
                requests_total: total,
                unrouted: inner.http_unrouted.snapshot(),
                errors: HttpErrorReason::ALL
                    .iter()
                    .map(|r| (r.as_str().to_owned(), self.http_error_count(*r)))
                    .collect(),
                request_duration_seconds: histogram_of(&acc),
            }
        };
        Snapshot {
            meta: Meta {
                version: cfg.version.clone(),
                start_time: inner.start,
                now,
                uptime_seconds: now.saturating_sub(inner.start),
                sample_interval_seconds: cfg.interval_secs(),
                retention_seconds: inner.route_cfg.second_slots as u64,
                minute_retention_seconds: inner.route_cfg.minute_slots as u64 * 60,
                draining: inner.draining.load(Ordering::Relaxed),
            },
            connections: Connections {
                active: self.connections_active(),
                total: self.connections_total(),
                ips_active: ips_active_count,
                top_ips,
            },
            throughput,
            requests,
            totals,
            percentiles,
            histograms,
            routes,
            ips: ips.into_iter().map(|(_, s)| s).collect(),
            refused,
            proxy_headers: ProxyHeaders { accepted, rejected },
            backend: Backend {
                connects: inner.backend_connects.load(Ordering::Relaxed),
                connect_failures: inner.backend_failures.load(Ordering::Relaxed),
            },
            reloads: Reloads { ok, failed },
            http,
            certificates: inner.certificates.read().clone(),
            closed,
            targets: inner.targets.read().clone(),
        }
    }

    /// Replaces the certificate expiries that snapshots report (the series of
    /// `tls_certificate_expiry_timestamp_seconds{route,domain}`), sorted by route and domain.
    /// Called by the owner of the certificates whenever one changes; not on any data path.
    pub fn set_certificate_expiries(&self, mut expiries: Vec<CertificateExpiry>) {
        expiries.sort_by(|a, b| (&a.route, &a.domain).cmp(&(&b.route, &b.domain)));
        *self.inner.certificates.write() = expiries;
    }

    /// Replaces the target states that snapshots report (the series of
    /// `target_up{route,target}`), sorted by route and target. Called by the engine's health
    /// checker; not on any data path.
    pub fn set_target_health(&self, mut targets: Vec<TargetUp>) {
        targets.sort_by(|a, b| (&a.route, &a.target).cmp(&(&b.route, &b.target)));
        let mut now = self.inner.targets.write();
        if *now != targets {
            *now = targets;
        }
    }

    /// The certificate expiries last set.
    #[must_use]
    pub fn certificate_expiries(&self) -> Vec<CertificateExpiry> {
        self.inner.certificates.read().clone()
    }
}

fn to_points(h: &[smartproxy_throughput::HistoryPoint]) -> Vec<ThroughputPoint> {
    h.iter()
        .map(|p| ThroughputPoint {
            timestamp: p.timestamp,
            span: p.span,
            rate: ThroughputRate::from_rate(p.rate()),
        })
        .collect()
}

/// Calls `f(t, share)` to spread `d` over the `gap` seconds ending at `now` (only when
/// `1 < gap <= limit`; otherwise all of it lands on `now`).
fn spread(now: u64, gap: u64, limit: u64, d: Sample, mut f: impl FnMut(u64, Sample)) {
    if gap <= 1 || gap > limit {
        f(now, d);
        return;
    }
    let share = Sample::new(d.bytes_in / gap, d.bytes_out / gap, d.events / gap);
    for t in now + 1 - gap..now {
        f(t, share);
    }
    let rest = Sample::new(
        d.bytes_in - share.bytes_in * (gap - 1),
        d.bytes_out - share.bytes_out * (gap - 1),
        d.events - share.events * (gap - 1),
    );
    f(now, rest);
}

impl Inner {
    /// Called once per connection, by the recorder's drop, after its last count.
    pub(crate) fn connection_closed(&self, conn: &ConnShared, slot: SlotId, opened_at: u64) {
        self.active.0.fetch_sub(1, Ordering::Relaxed);
        conn.route.0.active.fetch_sub(1, Ordering::Relaxed);
        if self.counts_ips {
            self.ips_active.remove_open(conn.ip);
        }
        // The recorder is being dropped, so every count made through it happened before
        // this point: these loads (and the registry's) see the final values.
        self.registry.remove(slot);
        let took = nanos(self.clock.elapsed()).saturating_sub(opened_at) / 1_000;
        let mut h = self.conn_hists.lock();
        h.duration.record(took);
        h.bytes_in.record(conn.bytes_in.load(Ordering::Relaxed));
        h.bytes_out.record(conn.bytes_out.load(Ordering::Relaxed));
    }

    fn tick(&self, now: u64) {
        let _serial = self.tick_lock.lock();
        let last = self.last_tick.load(Ordering::Acquire);
        let gap = now.saturating_sub(last);
        let limit = 2 * self.cfg.interval_secs();
        let mut d = self.registry.collect();
        let routes: Vec<RouteHandle> = self.routes.lock().values().cloned().collect();
        // HTTP requests finished since the last tick count as requests (events), per route
        // and in the global series.
        let http: Vec<u64> = routes.iter().map(|h| h.0.http.take_delta()).collect();
        d.global.events += http.iter().sum::<u64>() + self.http_unrouted.take_delta();
        // Traffic counted outside the connection recorders (kernel-forwarded routes).
        for h in &routes {
            let external = std::mem::take(&mut *h.0.external.lock());
            if external.is_zero() {
                continue;
            }
            d.global += external;
            let key = Arc::as_ptr(&h.0) as usize;
            d.by_route.entry(key).or_insert_with(|| (h.clone(), Sample::default())).1 += external;
        }
        {
            let mut g = self.global.write();
            spread(now, gap, limit, d.global, |t, s| g.push(t, s));
        }
        let mut by_route = d.by_route;
        for (h, requests) in routes.iter().zip(http) {
            let key = Arc::as_ptr(&h.0) as usize;
            let mut d = by_route.remove(&key).map(|(_, d)| d).unwrap_or_default();
            d.events += requests;
            let mut s = h.0.series.write();
            spread(now, gap, limit, d, |t, x| s.push(t, x));
        }
        // Routes forgotten by a reload while connections were still open.
        for (h, d) in by_route.into_values() {
            if !routes.iter().any(|r| r.same(&h)) {
                let mut s = h.0.series.write();
                spread(now, gap, limit, d, |t, x| s.push(t, x));
            }
        }
        if let Some(ips) = &self.ips {
            let mut ips = ips.write();
            for (ip, d) in d.by_ip {
                spread(now, gap, limit, d, |t, x| ips.push(&ip, t, x));
            }
            ips.advance(now);
        }
        self.last_tick.fetch_max(now, Ordering::AcqRel);
    }
}
