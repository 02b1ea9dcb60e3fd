//! Every observation the engine makes (counters, logs, the metrics collector) goes through this
//! module.
//!
//! The hot path is [`ConnObserver::add_in`] / [`ConnObserver::add_out`]: one relaxed atomic add
//! per read, on a counter the connection owns (the metrics collector's
//! [`ConnectionRecorder`] once the connection is routed, a local one before). Everything else
//! happens once per connection or per event. With `[metrics] enabled = false` there is no
//! recorder and the data path touches only the connection's own counters.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use smartproxy_metrics::{ConnectionRecorder, Metrics, ProxyVersion, RefuseReason, RouteHandle};

/// Why a connection was refused or closed early.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Refusal {
    /// The global `max_connections` is reached.
    GlobalLimit,
    /// The client IP has `max_connections_per_ip` open connections.
    IpLimit,
    /// The client IP opened too many connections in the last minute.
    RateLimit,
    /// The route's `max_connections` is reached.
    RouteLimit,
    /// The route's per-IP limit or rate is reached.
    RouteIpLimit,
    /// The route's allow/block lists refuse the client.
    NotAllowed,
    /// No route matches.
    NoRoute,
    /// A trusted peer sent no valid PROXY header in time.
    ProxyHeader,
    /// An untrusted peer sent a PROXY header.
    UntrustedProxyHeader,
    /// The data needed for routing did not arrive (timeout, EOF, too large).
    InitialData,
    /// No target could be reached.
    BackendUnavailable,
    /// The engine is shutting down.
    ShuttingDown,
    /// The TLS handshake with the client failed (terminating routes).
    TlsHandshake,
}

impl Refusal {
    /// The refusal's name in logs and metrics (one list, README "Refusal reasons"); a PROXY
    /// header failure is named by its kind in [`Refusal::label`].
    pub fn as_str(&self) -> &'static str {
        self.metric(None).as_str()
    }

    /// The name of this refusal with the kind of PROXY-header failure (`timeout`, `missing`,
    /// anything else = invalid): the `reason` of the log line and the metric label.
    pub fn label(self, detail_kind: Option<&str>) -> &'static str {
        self.metric(detail_kind).as_str()
    }

    /// The collector's label for this refusal.
    fn metric(self, detail_kind: Option<&str>) -> RefuseReason {
        match self {
            Self::GlobalLimit => RefuseReason::GlobalLimit,
            Self::IpLimit => RefuseReason::IpLimit,
            Self::RateLimit => RefuseReason::RateLimit,
            Self::RouteLimit => RefuseReason::RouteLimit,
            Self::RouteIpLimit => RefuseReason::RouteIpLimit,
            Self::NotAllowed => RefuseReason::Blocked,
            Self::NoRoute => RefuseReason::NoRoute,
            Self::ProxyHeader => match detail_kind {
                Some("timeout") => RefuseReason::ProxyHeaderTimeout,
                Some("missing") => RefuseReason::ProxyHeaderRequired,
                _ => RefuseReason::ProxyHeaderInvalid,
            },
            Self::UntrustedProxyHeader => RefuseReason::ProxyHeaderUntrusted,
            Self::InitialData => RefuseReason::InitialData,
            Self::BackendUnavailable => RefuseReason::BackendUnavailable,
            Self::ShuttingDown => RefuseReason::ShuttingDown,
            Self::TlsHandshake => RefuseReason::TlsHandshake,
        }
    }
}

/// Engine-wide counters and event hooks.
#[derive(Debug, Default)]
pub(crate) struct EngineObserver {
    /// The collector; `None` when `[metrics] enabled = false`.
    metrics: Option<Arc<Metrics>>,
    active: AtomicU64,
    total: AtomicU64,
    refused: AtomicU64,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    headers_accepted: AtomicU64,
    headers_rejected: AtomicU64,
    backend_connected: AtomicU64,
    backend_failed: AtomicU64,
    reloads: AtomicU64,
    reloads_failed: AtomicU64,
    /// At most a few lines per second per refusal reason (crate::quiet).
    logs: crate::quiet::LogLimiter,
    /// Notified when the last open connection closes (the drain signal of shutdown).
    idle: tokio::sync::Notify,
}

impl EngineObserver {
    /// Waits until no connection is open, or `until`; returns whether none is open.
    pub(crate) async fn wait_idle(&self, until: tokio::time::Instant) -> bool {
        loop {
            let notified = self.idle.notified();
            let mut notified = std::pin::pin!(notified);
            // Registered before the check, so that a close in between is not missed.
            notified.as_mut().enable();
            if self.active.load(Relaxed) == 0 {
                return true;
            }
            tokio::select! {
                () = notified => {}
                () = tokio::time::sleep_until(until) => return self.active.load(Relaxed) == 0,
            }
        }
    }

    /// An observer feeding `metrics` (if any).
    pub(crate) fn new(metrics: Option<Arc<Metrics>>) -> Self {
        Self { metrics, ..Self::default() }
    }

    /// The collector, when metrics are on.
    pub(crate) fn metrics(&self) -> Option<&Arc<Metrics>> {
        self.metrics.as_ref()
    }

    /// A connection was accepted.
    pub(crate) fn conn_opened(self: &Arc<Self>, peer: SocketAddr, port: u16) -> Arc<ConnObserver> {
        self.active.fetch_add(1, Relaxed);
        self.total.fetch_add(1, Relaxed);
        tracing::trace!(%peer, port, "accepted");
        Arc::new(ConnObserver {
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            recorder: OnceLock::new(),
            engine: Arc::clone(self),
            client: OnceLock::new(),
            route: OnceLock::new(),
        })
    }

    /// A connection was refused (it is closed right after).
    pub(crate) fn refused(&self, reason: Refusal, client: SocketAddr, port: u16, detail: &str) {
        self.refused_kind(reason, None, client, port, detail);
    }

    /// [`Self::refused`] with the kind of PROXY-header failure, for the metrics label.
    pub(crate) fn refused_kind(
        &self,
        reason: Refusal,
        kind: Option<&str>,
        client: SocketAddr,
        port: u16,
        detail: &str,
    ) {
        self.refused.fetch_add(1, Relaxed);
        let label = reason.metric(kind);
        if let Some(m) = &self.metrics {
            m.refused(label);
        }
        let reason = label.as_str();
        if !self.logs.allow(reason) {
            return;
        }
        if detail.is_empty() {
            tracing::info!(%client, port, reason, "connection refused");
        } else {
            tracing::info!(%client, port, reason, detail, "connection refused");
        }
    }

    /// A PROXY header from a trusted peer was accepted.
    pub(crate) fn proxy_header_accepted(
        &self,
        peer: SocketAddr,
        client: SocketAddr,
        version: smartproxy_proxy_protocol::Version,
    ) {
        self.headers_accepted.fetch_add(1, Relaxed);
        if let Some(m) = &self.metrics {
            m.proxy_header_accepted(proxy_version(version));
        }
        tracing::debug!(%peer, %client, "PROXY header accepted");
    }

    /// A PROXY header was rejected (malformed, missing, late, or from an untrusted peer).
    pub(crate) fn proxy_header_rejected(
        &self,
        peer: SocketAddr,
        version: Option<smartproxy_proxy_protocol::Version>,
        kind: &'static str,
    ) {
        self.headers_rejected.fetch_add(1, Relaxed);
        if let Some(m) = &self.metrics {
            m.proxy_header_rejected(version.map(proxy_version), kind);
        }
        if self.logs.allow("proxy_header_rejected") {
            tracing::debug!(%peer, kind, "PROXY header rejected");
        }
    }

    /// A target connection was established for `conn`.
    pub(crate) fn backend_connected(
        &self,
        conn: &ConnObserver,
        target: &dyn std::fmt::Display,
        took: Duration,
    ) {
        self.backend_connected.fetch_add(1, Relaxed);
        if let (Some(m), Some(r)) = (&self.metrics, conn.recorder.get()) {
            m.backend_connected(r.route(), took);
        }
        tracing::trace!(%target, ?took, "backend connected");
    }

    /// A target connection attempt for `conn` failed.
    pub(crate) fn backend_connect_failed(
        &self,
        conn: &ConnObserver,
        target: &dyn std::fmt::Display,
        error: &dyn std::fmt::Display,
    ) {
        self.backend_failed.fetch_add(1, Relaxed);
        if let (Some(m), Some(r)) = (&self.metrics, conn.recorder.get()) {
            m.backend_connect_failed(r.route());
        }
        if self.logs.allow("backend_connect_failed") {
            tracing::warn!(%target, %error, "backend connect failed");
        }
    }

    /// Refills the log budgets and writes the summaries of suppressed lines (once a second).
    pub(crate) fn flush_logs(&self) {
        self.logs.flush();
    }

    /// A configuration reload was applied (`ok`) or refused.
    pub(crate) fn config_reloaded(&self, ok: bool) {
        if let Some(m) = &self.metrics {
            m.config_reloaded(ok);
        }
        if ok {
            self.reloads.fetch_add(1, Relaxed);
        } else {
            self.reloads_failed.fetch_add(1, Relaxed);
        }
    }

    pub(crate) fn stats(&self) -> ObserverStats {
        ObserverStats {
            active: self.active.load(Relaxed),
            total: self.total.load(Relaxed),
            refused: self.refused.load(Relaxed),
            bytes_in: self.bytes_in.load(Relaxed),
            bytes_out: self.bytes_out.load(Relaxed),
            proxy_headers_accepted: self.headers_accepted.load(Relaxed),
            proxy_headers_rejected: self.headers_rejected.load(Relaxed),
            backend_connect_failures: self.backend_failed.load(Relaxed),
            reloads: self.reloads.load(Relaxed),
            reloads_failed: self.reloads_failed.load(Relaxed),
        }
    }
}

pub(crate) struct ObserverStats {
    pub(crate) active: u64,
    pub(crate) total: u64,
    pub(crate) refused: u64,
    pub(crate) bytes_in: u64,
    pub(crate) bytes_out: u64,
    pub(crate) proxy_headers_accepted: u64,
    pub(crate) proxy_headers_rejected: u64,
    pub(crate) backend_connect_failures: u64,
    pub(crate) reloads: u64,
    pub(crate) reloads_failed: u64,
}

fn proxy_version(v: smartproxy_proxy_protocol::Version) -> ProxyVersion {
    match v {
        smartproxy_proxy_protocol::Version::V1 => ProxyVersion::V1,
        _ => ProxyVersion::V2,
    }
}

/// Per-connection counters. Dropping it closes the connection's books.
#[derive(Debug)]
pub struct ConnObserver {
    /// Bytes before the connection was routed (or all of them with metrics off).
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    /// The collector's per-connection counters, from routing on.
    recorder: OnceLock<ConnectionRecorder>,
    engine: Arc<EngineObserver>,
    client: OnceLock<SocketAddr>,
    route: OnceLock<Arc<str>>,
}

impl ConnObserver {
    /// The real client is known (after the PROXY header stage); called once.
    pub(crate) fn client_known(&self, client: SocketAddr) {
        let _ = self.client.set(client);
    }

    /// The connection was routed; called once, before any byte is forwarded. From here on
    /// its bytes go to the collector under `metric` (the route's handle, resolved when the
    /// configuration was loaded).
    pub(crate) fn routed(&self, route: &Arc<str>, metric: Option<&RouteHandle>) {
        let _ = self.route.set(Arc::clone(route));
        if let (Some(m), Some(handle)) = (&self.engine.metrics, metric) {
            let ip = self.client().map_or(std::net::Ipv4Addr::UNSPECIFIED.into(), |c| c.ip());
            let rec = m.connection_opened(smartproxy_limits::canonical_ip(ip), handle);
            // Bytes peeked before routing belong to this connection too.
            rec.add_in(self.bytes_in.swap(0, Relaxed));
            rec.add_out(self.bytes_out.swap(0, Relaxed));
            let _ = self.recorder.set(rec);
        }
    }

    /// The served connection closed for `reason` (once, at its close).
    pub(crate) fn closed(&self, reason: smartproxy_metrics::CloseReason) {
        if let Some(m) = &self.engine.metrics {
            m.connection_closed(reason);
        }
    }

    /// [`Self::routed`] for a connection served by the HTTP layer: the connection is not a
    /// request itself (the layer counts each request).
    pub(crate) fn routed_http(&self, route: &Arc<str>, metric: Option<&RouteHandle>) {
        let _ = self.route.set(Arc::clone(route));
        if let (Some(m), Some(handle)) = (&self.engine.metrics, metric) {
            let ip = self.client().map_or(std::net::Ipv4Addr::UNSPECIFIED.into(), |c| c.ip());
            let rec = m.connection_opened_http(smartproxy_limits::canonical_ip(ip), handle);
            rec.add_in(self.bytes_in.swap(0, Relaxed));
            rec.add_out(self.bytes_out.swap(0, Relaxed));
            let _ = self.recorder.set(rec);
        }
    }

    /// Counts one more request on a kept-alive connection (the first is the connection).
    pub fn add_request(&self) {
        if let Some(r) = self.recorder.get() {
            r.add_request();
        }
    }

    /// The route name, once routed.
    pub fn route(&self) -> Option<&str> {
        self.route.get().map(|r| &**r)
    }

    /// The real client, once known.
    pub fn client(&self) -> Option<SocketAddr> {
        self.client.get().copied()
    }

    /// `n` bytes read from the client.
    #[inline]
    pub fn add_in(&self, n: u64) {
        match self.recorder.get() {
            Some(r) => r.add_in(n),
            None => {
                self.bytes_in.fetch_add(n, Relaxed);
            }
        }
    }

    /// `n` bytes written to the client.
    #[inline]
    pub fn add_out(&self, n: u64) {
        match self.recorder.get() {
            Some(r) => r.add_out(n),
            None => {
                self.bytes_out.fetch_add(n, Relaxed);
            }
        }
    }

    /// Bytes read from the client so far.
    pub fn bytes_in(&self) -> u64 {
        self.bytes_in.load(Relaxed) + self.recorder.get().map_or(0, ConnectionRecorder::bytes_in)
    }

    /// Bytes written to the client so far.
    pub fn bytes_out(&self) -> u64 {
        self.bytes_out.load(Relaxed) + self.recorder.get().map_or(0, ConnectionRecorder::bytes_out)
    }

    /// Activity marker: changes whenever a byte moves.
    pub(crate) fn activity(&self) -> u64 {
        self.bytes_in().wrapping_add(self.bytes_out())
    }
}

impl Drop for ConnObserver {
    fn drop(&mut self) {
        let e = &self.engine;
        e.bytes_in.fetch_add(self.bytes_in(), Relaxed);
        e.bytes_out.fetch_add(self.bytes_out(), Relaxed);
        if e.active.fetch_sub(1, Relaxed) == 1 {
            e.idle.notify_waiters();
        }
    }
}

/// Refills the observer's log budgets every [`crate::quiet::INTERVAL`] (and writes the
/// summaries of suppressed lines) until the observer is gone.
pub(crate) fn spawn_log_flusher(obs: std::sync::Weak<EngineObserver>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(crate::quiet::INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            let Some(o) = obs.upgrade() else { return };
            o.flush_logs();
        }
    });
}
