//! The running engine: state behind arc-swap, listeners, reload, shutdown, stats.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use smartproxy_routing::{RouteTable, ValidationOptions};
use tokio::runtime::Handle;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::config::{Config, ConfigError, ConfigErrors};
use crate::handler::{Registry, SocketHandler};
use crate::limits::{Gauge, IpLimits};
use crate::listener;
use crate::net::Cidr;
use crate::observe::EngineObserver;
use smartproxy_metrics::{Metrics, RouteHandle};

/// Why the engine could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigErrors),
    /// A listening socket could not be opened.
    #[error("cannot listen on {addr}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// No configuration was given to the builder.
    #[error("no configuration given")]
    NoConfig,
}

/// Everything a connection needs from the configuration, loaded once per connection.
pub(crate) struct State {
    pub(crate) config: Arc<Config>,
    pub(crate) table: RouteTable,
    pub(crate) trusted: Vec<Cidr>,
    pub(crate) accept_pp: bool,
    /// The collector's handle of each route, by route index (empty with metrics off).
    pub(crate) route_metrics: Vec<RouteHandle>,
    /// Rustls acceptors and connectors of the terminating routes, built with the table.
    pub(crate) tls: crate::tls::TlsState,
}

impl State {
    /// The collector's handle of the route at `index` of the table.
    pub(crate) fn route_metric(&self, index: usize) -> Option<&RouteHandle> {
        self.route_metrics.get(index)
    }
}

impl fmt::Debug for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("State").field("routes", &self.config.routes.len()).finish_non_exhaustive()
    }
}

impl State {
    fn build(
        config: Config,
        handlers: &Registry,
        old: Option<&State>,
        metrics: Option<&Metrics>,
    ) -> Result<Self, ConfigErrors> {
        let custom: Vec<String> = handlers.0.keys().cloned().collect();
        let errors = config.check(&custom);
        if !errors.is_empty() {
            return Err(ConfigErrors { file: None, errors });
        }
        let opts = ValidationOptions::default().with_custom_handlers(custom);
        let routes = config.routes.clone();
        let table = match old {
            Some(old) => RouteTable::compile_reusing(routes, &opts, &old.table),
            None => RouteTable::compile_with(routes, &opts),
        }
        .map_err(|list| ConfigErrors {
            file: None,
            errors: list
                .into_iter()
                .map(|e| ConfigError::new(e.path.clone(), e.message.clone()))
                .collect(),
        })?;
        let trusted = config.proxy_ips.iter().filter_map(|p| Cidr::parse(p).ok()).collect();
        let tls = crate::tls::TlsState::build(&config, old.map(|o| &o.tls))
            .map_err(|errors| ConfigErrors { file: None, errors })?;
        let route_metrics = match metrics {
            Some(m) => table.routes().iter().map(|r| m.route(r.name())).collect(),
            None => Vec::new(),
        };
        Ok(Self {
            accept_pp: config.accepts_proxy_protocol(),
            config: Arc::new(config),
            table,
            trusted,
            route_metrics,
            tls,
        })
    }
}

/// A listening socket's address and its accept task.
type Listening = (SocketAddr, JoinHandle<()>);

pub(crate) struct Inner {
    pub(crate) state: ArcSwap<State>,
    pub(crate) handlers: Registry,
    pub(crate) ip_limits: Arc<IpLimits>,
    pub(crate) global: Arc<Gauge>,
    pub(crate) obs: Arc<EngineObserver>,
    pub(crate) force_close: watch::Sender<bool>,
    draining: AtomicBool,
    listeners: parking_lot::Mutex<BTreeMap<u16, Vec<Listening>>>,
    reload_lock: tokio::sync::Mutex<()>,
    /// Worker runtimes, each with its own listener per address (empty: the current runtime).
    runtimes: Vec<Handle>,
    pruner: parking_lot::Mutex<Option<JoinHandle<()>>>,
    sampler: parking_lot::Mutex<Option<JoinHandle<()>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        for (_, ls) in std::mem::take(&mut *self.listeners.lock()) {
            for (_, task) in ls {
                task.abort();
            }
        }
        if let Some(p) = self.pruner.lock().take() {
            p.abort();
        }
        if let Some(p) = self.sampler.lock().take() {
            p.abort();
        }
    }
}

/// Builds an [`Engine`]: a configuration and, optionally, custom socket handlers.
#[derive(Debug, Default)]
pub struct EngineBuilder {
    config: Option<Config>,
    handlers: Registry,
    metrics: Option<Arc<Metrics>>,
    runtimes: Vec<Handle>,
}

impl EngineBuilder {
    /// The configuration to run.
    pub fn config(mut self, config: Config) -> Self {
        self.config = Some(config);
        self
    }

    /// Registers a socket handler under `name`, for routes with
    /// `action = { type = "socket-handler", handler = "name" }`. A registered handler takes
    /// precedence over a built-in one of the same name.
    pub fn handler(mut self, name: impl Into<String>, handler: Arc<dyn SocketHandler>) -> Self {
        self.handlers.0.insert(name.into(), handler);
        self
    }

    /// Records into this collector instead of one built from the `[metrics]` section (tests,
    /// or a library user who shares one collector). Ignored when `[metrics] enabled = false`.
    pub fn metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Accepts and runs connections on these runtimes instead of the current one: every port
    /// gets one `SO_REUSEPORT` listener per runtime (per bind address), and the kernel spreads
    /// new connections over them. Meant for current-thread runtimes, one per thread (the
    /// binary's `runtime = "per-worker"`). The engine's own timers stay on the runtime that
    /// calls [`start`](Self::start), which must outlive the engine, as must these.
    pub fn runtimes(mut self, runtimes: Vec<Handle>) -> Self {
        self.runtimes = runtimes;
        self
    }

    /// Validates the configuration, binds every listener and starts accepting. Must be called
    /// inside a tokio runtime (multi-thread for more than one worker, unless
    /// [`runtimes`](Self::runtimes) are given).
    pub async fn start(self) -> Result<Engine, StartError> {
        let config = self.config.ok_or(StartError::NoConfig)?;
        let metrics = config.metrics.enabled.then(|| {
            self.metrics.unwrap_or_else(|| Metrics::new(metrics_config(&config), unix_now()))
        });
        let state = State::build(config, &self.handlers, None, metrics.as_deref())?;
        let (force_close, _) = watch::channel(false);
        let inner = Arc::new(Inner {
            handlers: self.handlers,
            ip_limits: IpLimits::new(),
            global: Gauge::new(),
            obs: Arc::new(EngineObserver::new(metrics.clone())),
            force_close,
            draining: AtomicBool::new(false),
            listeners: parking_lot::Mutex::new(BTreeMap::new()),
            reload_lock: tokio::sync::Mutex::new(()),
            runtimes: self.runtimes,
            pruner: parking_lot::Mutex::new(None),
            sampler: parking_lot::Mutex::new(None),
            state: ArcSwap::from_pointee(state),
        });
        let st = inner.state.load_full();
        let bound = bind_ports(&st.config, &st.table.ports(), inner.runtimes.len())?;
        {
            let mut ls = inner.listeners.lock();
            for (port, socks) in bound {
                ls.insert(port, inner.spawn_listeners(port, socks, false));
            }
        }
        *inner.pruner.lock() = Some(spawn_pruner(Arc::downgrade(&inner)));
        if let Some(m) = metrics {
            let every = st.config.metrics.sample_interval;
            *inner.sampler.lock() = Some(spawn_sampler(m, every));
        }
        let engine = Engine { _life: Arc::new(Life(Arc::downgrade(&inner))), inner };
        for addr in engine.local_addrs() {
            tracing::info!(%addr, "listening");
        }
        Ok(engine)
    }
}

/// The collector's settings from `[metrics]`.
fn metrics_config(config: &Config) -> smartproxy_metrics::MetricsConfig {
    let m = &config.metrics;
    smartproxy_metrics::MetricsConfig {
        sample_interval: m.sample_interval,
        retention: m.retention,
        per_ip: m.per_ip.collector(),
        version: concat!("smartproxy ", env!("CARGO_PKG_VERSION")).to_owned(),
        ..smartproxy_metrics::MetricsConfig::default()
    }
}

/// Seconds since the UNIX epoch: the collector's time axis.
fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Samples the collector once per interval, off the data path. The time axis is UNIX seconds
/// taken from a monotonic clock, so a wall-clock step does not disturb the series.
fn spawn_sampler(metrics: Arc<Metrics>, every: Duration) -> JoinHandle<()> {
    tokio::spawn(async move {
        let (base_unix, base) = (unix_now(), Instant::now());
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            metrics.tick(base_unix + base.elapsed().as_secs());
        }
    })
}

fn spawn_pruner(weak: Weak<Inner>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(60));
        tick.tick().await;
        loop {
            tick.tick().await;
            let Some(inner) = weak.upgrade() else { return };
            inner.ip_limits.prune();
        }
    })
}

type Bound = Vec<(u16, Vec<(SocketAddr, std::net::TcpListener)>)>;

/// Binds every port on every bind address, `copies` times each when there are worker
/// runtimes (with `SO_REUSEPORT`, one socket per runtime), once otherwise. An IPv6 address
/// that the host does not support is skipped with a warning; any other failure fails the
/// whole set.
fn bind_ports(config: &Config, ports: &[u16], copies: usize) -> Result<Bound, StartError> {
    let reuse_port = config.reuse_port || copies > 1;
    let mut out = Vec::new();
    for &port in ports {
        let mut socks = Vec::new();
        for ip in config.bind_addrs() {
            let mut addr = SocketAddr::new(ip, port);
            for _ in 0..copies.max(1) {
                match listener::bind(addr, reuse_port) {
                    // The copies bind the port the first one got (port 0 picks one).
                    Ok(l) => {
                        addr = l.local_addr().unwrap_or(addr);
                        socks.push((addr, l));
                    }
                    Err(e) if ip.is_ipv6() && listener::ipv6_unavailable(&e) => {
                        tracing::warn!(%addr, error = %e, "IPv6 not available, not listening there");
                        break;
                    }
                    Err(source) => return Err(StartError::Bind { addr, source }),
                }
            }
        }
        out.push((port, socks));
    }
    Ok(out)
}

impl Inner {
    /// Starts the accept loops of one port's sockets: with worker runtimes, the sockets of
    /// each address go to the runtimes in turn (`bind_ports` made one per runtime).
    fn spawn_listeners(
        self: &Arc<Self>,
        port: u16,
        socks: Vec<(SocketAddr, std::net::TcpListener)>,
        log: bool,
    ) -> Vec<Listening> {
        let mut last: Option<SocketAddr> = None;
        socks
            .into_iter()
            .enumerate()
            .map(|(i, (addr, l))| {
                if log && last != Some(addr) {
                    tracing::info!(%addr, "listening");
                }
                last = Some(addr);
                let rt =
                    (!self.runtimes.is_empty()).then(|| &self.runtimes[i % self.runtimes.len()]);
                (addr, listener::spawn(Arc::downgrade(self), l, port, rt))
            })
            .collect()
    }
}

/// The running proxy. Cheap to clone; every clone controls the same engine. When the last
/// clone is dropped the listeners close; open connections run to their end (call
/// [`Engine::shutdown`] to bound that).
#[derive(Clone)]
pub struct Engine {
    pub(crate) inner: Arc<Inner>,
    _life: Arc<Life>,
}

/// Stops listening when the last [`Engine`] clone goes away (connection tasks keep `Inner`
/// alive, so its own drop may come much later).
struct Life(Weak<Inner>);

impl Drop for Life {
    fn drop(&mut self) {
        if let Some(inner) = self.0.upgrade() {
            for (_, ls) in std::mem::take(&mut *inner.listeners.lock()) {
                for (_, task) in ls {
                    task.abort();
                }
            }
            if let Some(p) = inner.pruner.lock().take() {
                p.abort();
            }
        }
    }
}

impl fmt::Debug for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Engine").field("listeners", &self.local_addrs()).finish_non_exhaustive()
    }
}

/// What a reload changed.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct ReloadSummary {
    /// Ports that started listening.
    pub added_ports: Vec<u16>,
    /// Ports that stopped listening.
    pub removed_ports: Vec<u16>,
    /// Routes in the new configuration.
    pub routes: usize,
}

/// What shutdown did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct ShutdownSummary {
    /// Connections still open when the grace period ended (closed by force).
    pub forced: u64,
}

/// Counters for tests and health checks.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct Stats {
    /// Connections open now (accepted and not yet closed, refused ones included until closed).
    pub active_connections: u64,
    /// Connections accepted since start.
    pub total_connections: u64,
    /// Connections refused (limits, PROXY header, routing, backend).
    pub refused_connections: u64,
    /// Bytes from clients, of closed connections.
    pub bytes_in: u64,
    /// Bytes to clients, of closed connections.
    pub bytes_out: u64,
    /// PROXY headers accepted.
    pub proxy_headers_accepted: u64,
    /// PROXY headers rejected.
    pub proxy_headers_rejected: u64,
    /// Failed connects to targets.
    pub backend_connect_failures: u64,
    /// Reloads applied.
    pub reloads: u64,
    /// Reloads refused.
    pub reloads_failed: u64,
    /// Listening sockets.
    pub listeners: usize,
}

impl Engine {
    /// A builder, to register custom handlers.
    pub fn builder() -> EngineBuilder {
        EngineBuilder::default()
    }

    /// Starts an engine with built-in handlers only.
    pub async fn start(config: Config) -> Result<Self, StartError> {
        Self::builder().config(config).start().await
    }

    /// The configuration in force.
    pub fn config(&self) -> Arc<Config> {
        Arc::clone(&self.inner.state.load().config)
    }

    /// Every listening socket's address, by port.
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        let mut addrs: Vec<SocketAddr> =
            self.inner.listeners.lock().values().flatten().map(|(a, _)| *a).collect();
        // With worker runtimes an address has one socket per runtime.
        addrs.dedup();
        addrs
    }

    /// The metrics collector (`None` with `[metrics] enabled = false`): queries, snapshots,
    /// and what the admin API and exporters read.
    pub fn metrics(&self) -> Option<Arc<Metrics>> {
        self.inner.obs.metrics().cloned()
    }

    /// Whether [`Engine::shutdown`] has begun (readiness probes answer 503 from then on).
    pub fn is_draining(&self) -> bool {
        self.inner.draining.load(Ordering::Acquire)
    }

    /// Records a reload that was refused before it reached [`Engine::reload`] (the file did not
    /// load), so that every refused reload is counted and logged the same way.
    pub fn reload_refused(&self, errors: &ConfigErrors) {
        self.inner.obs.config_reloaded(false);
        tracing::warn!(errors = %errors, "configuration refused, keeping the old one");
    }

    /// Counters.
    pub fn stats(&self) -> Stats {
        let o = self.inner.obs.stats();
        Stats {
            active_connections: o.active,
            total_connections: o.total,
            refused_connections: o.refused,
            bytes_in: o.bytes_in,
            bytes_out: o.bytes_out,
            proxy_headers_accepted: o.proxy_headers_accepted,
            proxy_headers_rejected: o.proxy_headers_rejected,
            backend_connect_failures: o.backend_connect_failures,
            reloads: o.reloads,
            reloads_failed: o.reloads_failed,
            listeners: self.inner.listeners.lock().values().map(Vec::len).sum(),
        }
    }

    /// Applies a new configuration atomically: new ports start listening, removed ports stop,
    /// established connections keep running with the configuration they started with. A bad
    /// configuration (or a port that cannot be bound) is refused and the old one stays.
    ///
    /// Changes to `bind` and `reuse_port` apply to newly added ports only; `workers` and
    /// `runtime` are read once, when the process starts.
    pub async fn reload(&self, config: Config) -> Result<ReloadSummary, ConfigErrors> {
        let _one_at_a_time = self.inner.reload_lock.lock().await;
        let result = match self.reload_locked(config) {
            Ok((summary, stopped)) => {
                // Aborting a task on another runtime is asynchronous: wait until the removed
                // ports' sockets are closed.
                closed(stopped).await;
                Ok(summary)
            }
            Err(e) => Err(e),
        };
        self.inner.obs.config_reloaded(result.is_ok());
        match &result {
            Ok(s) => {
                tracing::info!(added = ?s.added_ports, removed = ?s.removed_ports, routes = s.routes, "configuration reloaded")
            }
            Err(e) => tracing::warn!(errors = %e, "configuration refused, keeping the old one"),
        }
        result
    }

    fn reload_locked(
        &self,
        config: Config,
    ) -> Result<(ReloadSummary, Vec<JoinHandle<()>>), ConfigErrors> {
        if self.inner.draining.load(Ordering::Acquire) {
            return Err(ConfigErrors::one(ConfigError::new("", "the engine is shutting down")));
        }
        let old = self.inner.state.load_full();
        let metrics = self.inner.obs.metrics().map(|m| &**m);
        let state = State::build(config, &self.inner.handlers, Some(&old), metrics)?;
        let new_ports: BTreeSet<u16> = state.table.ports().into_iter().collect();
        let old_ports: BTreeSet<u16> = self.inner.listeners.lock().keys().copied().collect();
        let added: Vec<u16> = new_ports.difference(&old_ports).copied().collect();
        let removed: Vec<u16> = old_ports.difference(&new_ports).copied().collect();
        let bound = bind_ports(&state.config, &added, self.inner.runtimes.len()).map_err(|e| {
            ConfigErrors::one(ConfigError::new("routes", format!("{e}: {}", source_of(&e))))
        })?;
        let routes = state.config.routes.len();
        if let Some(m) = metrics {
            let names: BTreeSet<&str> = state.table.routes().iter().map(|r| r.name()).collect();
            m.forget_routes(|n| names.contains(n));
        }
        self.inner.state.store(Arc::new(state));
        let mut ls = self.inner.listeners.lock();
        for (port, socks) in bound {
            ls.insert(port, self.inner.spawn_listeners(port, socks, true));
        }
        let mut stopped = Vec::new();
        for port in &removed {
            let mut last = None;
            for (addr, task) in ls.remove(port).unwrap_or_default() {
                if last != Some(addr) {
                    tracing::info!(%addr, "stopped listening");
                }
                last = Some(addr);
                task.abort();
                stopped.push(task);
            }
        }
        Ok((ReloadSummary { added_ports: added, removed_ports: removed, routes }, stopped))
    }

    /// Stops accepting, waits up to `grace` for open connections to finish, then closes the
    /// rest. Returns when every connection is closed (or a second after forcing them).
    pub async fn shutdown(&self, grace: Duration) -> ShutdownSummary {
        self.inner.draining.store(true, Ordering::Release);
        let mut stopped = Vec::new();
        for (_, ls) in std::mem::take(&mut *self.inner.listeners.lock()) {
            for (addr, task) in ls {
                tracing::debug!(%addr, "stopped listening");
                task.abort();
                stopped.push(task);
            }
        }
        closed(stopped).await;
        if let Some(p) = self.inner.pruner.lock().take() {
            p.abort();
        }
        let active = self.stats().active_connections;
        tracing::info!(active, ?grace, "shutting down: draining connections");
        let end = Instant::now() + grace;
        while self.stats().active_connections > 0 && Instant::now() < end {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let forced = self.stats().active_connections;
        if forced > 0 {
            tracing::warn!(forced, "grace period over: closing remaining connections");
            let _ = self.inner.force_close.send(true);
            let end = Instant::now() + Duration::from_secs(1);
            while self.stats().active_connections > 0 && Instant::now() < end {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        // A last sample, so that the final bytes are in the series and totals.
        if let Some(m) = self.inner.obs.metrics() {
            m.tick(m.now() + 1);
        }
        ShutdownSummary { forced }
    }

    /// Open connections from `ip` as the per-IP limit counts them.
    pub fn connections_from(&self, ip: std::net::IpAddr) -> u32 {
        self.inner.ip_limits.active(crate::net::canonical(ip))
    }
}

/// Waits (up to a second) until aborted accept tasks are gone, so that their sockets are
/// closed: on a worker runtime the abort takes effect when that runtime next polls.
async fn closed(tasks: Vec<JoinHandle<()>>) {
    let all = async {
        for t in tasks {
            let _ = t.await;
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), all).await;
}

fn source_of(e: &StartError) -> String {
    std::error::Error::source(e).map(ToString::to_string).unwrap_or_default()
}
