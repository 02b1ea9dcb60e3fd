//! The engine's control block: the listeners, reload, the listening ports, shutdown, stats.
//! Connections never reach in here: they read [`Shared`], which the control block owns.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use smartproxy_limits::{IpLimiter, IpLimits};
use smartproxy_metrics::Metrics;
use smartproxy_routing::{RouteAction, RouteConfig};
use tokio::runtime::Handle;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::certs::{self, CertTasks};
use crate::config::{Config, ConfigError, ConfigErrors, Format};
use crate::handler::{Registry, SocketHandler};
use crate::kernel::{self, Kernel};
use crate::limits::Gauge;
use crate::observe::EngineObserver;
use crate::pipeline::accept;
use crate::shared::Shared;
use crate::state::State;

/// Why the engine could not start (or a port could not be added).
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

/// A listening socket: its address, its accept task, and a second descriptor of the socket
/// (`dup(2)`) that keeps it open once the task is aborted at shutdown, so that the
/// connections already waiting in its accept queue are taken and served in the drain
/// instead of reset when the socket closes ([`Engine::shutdown`]).
struct Listening {
    addr: SocketAddr,
    task: JoinHandle<()>,
    queue: Option<(u16, std::net::TcpListener)>,
}

/// What only the engine's owner touches.
struct Control {
    shared: Arc<Shared>,
    draining: AtomicBool,
    listeners: parking_lot::Mutex<BTreeMap<u16, Vec<Listening>>>,
    /// Ports listened on besides the routes' ports ([`Engine::add_listening_port`]).
    extra_ports: parking_lot::Mutex<BTreeSet<u16>>,
    reload_lock: tokio::sync::Mutex<()>,
    /// Ends the drain of [`Engine::shutdown`] before its grace period ([`Engine::end_drain_now`]).
    cut_drain: tokio::sync::Notify,
    /// Worker runtimes, each with its own listener per address (empty: the current runtime).
    runtimes: Vec<Handle>,
    sampler: parking_lot::Mutex<Option<JoinHandle<()>>>,
    /// The active health checks of every route that has them (one task).
    checker: JoinHandle<()>,
    /// The renewal loop (and expiry metric task) of the certificate manager in force.
    certs: parking_lot::Mutex<Option<CertTasks>>,
    /// The nftables table of the kernel-forwarded routes.
    kernel: Arc<Kernel>,
}

impl Control {
    /// Aborts every accept task; returns them, and the second descriptors of their sockets
    /// (see [`Listening`]).
    fn stop_listening(&self) -> (Vec<JoinHandle<()>>, Vec<(u16, std::net::TcpListener)>) {
        let (mut stopped, mut queues) = (Vec::new(), Vec::new());
        for (_, ls) in std::mem::take(&mut *self.listeners.lock()) {
            for Listening { addr, task, queue } in ls {
                tracing::debug!(%addr, "stopped listening");
                task.abort();
                stopped.push(task);
                queues.extend(queue);
            }
        }
        (stopped, queues)
    }
}

impl Drop for Control {
    fn drop(&mut self) {
        self.stop_listening();
        if let Some(p) = self.sampler.lock().take() {
            p.abort();
        }
        self.checker.abort();
    }
}

/// Builds an [`Engine`] from a configuration or from routes written in code, with custom
/// socket handlers registered once, by name.
#[derive(Debug, Default)]
pub struct EngineBuilder {
    config: Option<Config>,
    routes: Option<Vec<RouteConfig>>,
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

    /// Parses a configuration text accepting the handlers registered so far on this builder
    /// (register them first), and runs it.
    pub fn config_str(mut self, text: &str, format: Format) -> Result<Self, ConfigErrors> {
        let owned = self.handlers.names();
        self.config = Some(Config::parse(text, format, &str_refs(&owned))?);
        Ok(self)
    }

    /// Routes written in code, with every other setting at its default (or those of
    /// [`config`](Self::config), whose routes these replace).
    pub fn routes(mut self, routes: Vec<RouteConfig>) -> Self {
        self.routes = Some(routes);
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

    /// Binds every listener and starts accepting. Must be called inside a tokio runtime
    /// (multi-thread for more than one worker, unless [`runtimes`](Self::runtimes) are given).
    pub async fn start(self) -> Result<Engine, StartError> {
        let owned = self.handlers.names();
        let names = str_refs(&owned);
        let config = match (self.config, self.routes) {
            (Some(c), None) => c,
            (Some(c), Some(routes)) => c.with_routes(routes, &names)?,
            (None, Some(routes)) => Config::from_routes_with_handlers(routes, &names)?,
            (None, None) => return Err(StartError::NoConfig),
        };
        check_handlers(&config, &self.handlers)?;
        let d = &config.defaults;
        let ip_limits = IpLimiter::new(IpLimits {
            max_open: d.max_connections_per_ip,
            per_minute: d.connection_rate_limit_per_minute,
            ..IpLimits::default()
        });
        let metrics = config.metrics.enabled.then(|| {
            self.metrics.unwrap_or_else(|| {
                Metrics::with_ip_limiter(
                    metrics_config(&config),
                    unix_now(),
                    Arc::clone(&ip_limits),
                )
            })
        });
        let state = State::build(config, None, &names, metrics.as_deref())?;
        let access_log: Option<Arc<dyn smartproxy_http::AccessLog>> =
            state.config.access_log.then(|| Arc::new(smartproxy_http::TracingAccessLog) as _);
        let http = smartproxy_http::HttpService::with_access_log(
            state.http_config(),
            metrics.clone(),
            access_log,
        );
        let (force_close, _) = watch::channel(false);
        let (draining, _) = watch::channel(false);
        let listener_keepalive = if cfg!(target_os = "linux") {
            state.config.defaults.tcp_keepalive
        } else {
            smartproxy_routing::TcpKeepalive::Off
        };
        let shared = Arc::new(Shared {
            state: ArcSwap::from_pointee(state),
            handlers: self.handlers,
            ip_limits,
            global: Gauge::new(),
            obs: Arc::new(EngineObserver::new(metrics.clone())),
            draining,
            force_close,
            http,
            listener_keepalive,
            fds: Arc::new(crate::fds::FdWait::new()),
        });
        let checker = crate::health::spawn_checker(Arc::downgrade(&shared));
        let ctl = Arc::new(Control {
            shared,
            draining: AtomicBool::new(false),
            listeners: parking_lot::Mutex::new(BTreeMap::new()),
            extra_ports: parking_lot::Mutex::new(BTreeSet::new()),
            reload_lock: tokio::sync::Mutex::new(()),
            cut_drain: tokio::sync::Notify::new(),
            runtimes: self.runtimes,
            sampler: parking_lot::Mutex::new(None),
            checker,
            certs: parking_lot::Mutex::new(None),
            kernel: Arc::new(Kernel::new()),
        });
        crate::observe::spawn_log_flusher(Arc::downgrade(&ctl.shared.obs));
        let st = ctl.shared.state.load_full();
        *ctl.certs.lock() = Some(CertTasks::start(&st.certs, metrics.clone()));
        let bound = bind_ports(&st.config, &st.table.ports(), &ctl.shared, ctl.runtimes.len())?;
        {
            let mut ls = ctl.listeners.lock();
            for (port, socks) in bound {
                ls.insert(port, spawn_listeners(&ctl, port, socks, false));
            }
        }
        // Kernel forwarding after the listeners: a port that cannot be bound fails the start
        // before any rule is written. Its own failures leave the other routes running.
        // (Logged and kept in the status shown by `nftables_status`.)
        let _ = apply_kernel_routes(&ctl, &st).await;
        if let Some(m) = metrics {
            let every = st.config.metrics.sample_interval;
            *ctl.sampler.lock() = Some(spawn_sampler(m, every, Arc::clone(&ctl.kernel)));
        }
        let engine = Engine { _life: Arc::new(Life(Arc::downgrade(&ctl))), ctl };
        for addr in engine.local_addrs() {
            tracing::info!(%addr, "listening");
        }
        Ok(engine)
    }
}

/// Every socket-handler route names a built-in or a registered handler (a configuration
/// parsed with other handler names than this engine has would otherwise fail per connection).
fn check_handlers(config: &Config, handlers: &Registry) -> Result<(), ConfigErrors> {
    let errors: Vec<ConfigError> = config
        .routes
        .iter()
        .enumerate()
        .filter_map(|(i, r)| match &r.action {
            RouteAction::SocketHandler(h)
                if !handlers.0.contains_key(&h.handler)
                    && !smartproxy_routing::BUILTIN_HANDLERS.contains(&h.handler.as_str()) =>
            {
                Some(ConfigError::new(
                    format!("routes[{i}].action.handler"),
                    format!("no handler `{}` is registered on this engine", h.handler),
                ))
            }
            _ => None,
        })
        .collect();
    if errors.is_empty() { Ok(()) } else { Err(ConfigErrors { file: None, errors }) }
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
/// taken from a monotonic clock, so a wall-clock step does not disturb the series. The
/// kernel-forwarded routes' counters are read (one `nft` run on the blocking pool) just before
/// each tick, so their increase lands in the same sample.
fn spawn_sampler(metrics: Arc<Metrics>, every: Duration, kernel: Arc<Kernel>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let (base_unix, base) = (unix_now(), Instant::now());
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            kernel.sample(&metrics).await;
            metrics.tick(base_unix + base.elapsed().as_secs());
        }
    })
}

/// Writes the rules of the kernel-forwarded routes of `state` (none: removes the table this
/// process wrote). `Err` says why they could not be written (logged already).
async fn apply_kernel_routes(ctl: &Control, state: &State) -> Result<(), String> {
    match kernel::nft_routes(&state.table, &state.config.bind) {
        Ok(routes) => ctl.kernel.apply(routes).await,
        // The configuration was checked when it was parsed; this cannot happen.
        Err(errors) => {
            let e = errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ");
            tracing::error!(error = %e, "kernel forwarding routes could not be converted");
            Err(e)
        }
    }
}

type Bound = Vec<(u16, Vec<(SocketAddr, std::net::TcpListener)>)>;

/// Binds every port on every bind address, `copies` times each when there are worker
/// runtimes (with `SO_REUSEPORT`, one socket per runtime), once otherwise. An IPv6 address
/// that the host does not support is skipped with a warning; any other failure fails the
/// whole set. Every socket gets the keepalive probes of `shared.listener_keepalive`.
fn bind_ports(
    config: &Config,
    ports: &[u16],
    shared: &Shared,
    copies: usize,
) -> Result<Bound, StartError> {
    let reuse_port = config.reuse_port || copies > 1;
    let mut out = Vec::new();
    for &port in ports {
        let mut socks = Vec::new();
        for &ip in &config.bind {
            let mut addr = SocketAddr::new(ip, port);
            for _ in 0..copies.max(1) {
                match accept::bind(addr, reuse_port, &shared.listener_keepalive) {
                    // The copies bind the port the first one got (port 0 picks one).
                    Ok(l) => {
                        addr = l.local_addr().unwrap_or(addr);
                        socks.push((addr, l));
                    }
                    Err(e) if ip.is_ipv6() && accept::ipv6_unavailable(&e) => {
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

/// Starts the accept loops of one port's sockets: with worker runtimes, the sockets of each
/// address go to the runtimes in turn (`bind_ports` made one per runtime).
fn spawn_listeners(
    ctl: &Control,
    port: u16,
    socks: Vec<(SocketAddr, std::net::TcpListener)>,
    log: bool,
) -> Vec<Listening> {
    let state = ctl.shared.state.load();
    let defer = defer_accept(&state.config, port);
    // Plain HTTP only: connections register with the reactor at their first wait, if ever
    // (a short `Connection: close` request never waits on its client socket).
    let lazy = crate::pipeline::plain_http_port(&state.table, port);
    drop(state);
    let mut last: Option<SocketAddr> = None;
    socks
        .into_iter()
        .enumerate()
        .map(|(i, (addr, l))| {
            if log && last != Some(addr) {
                tracing::info!(%addr, "listening");
            }
            last = Some(addr);
            if defer {
                set_defer_accept(&l, addr, true);
            }
            let rt = (!ctl.runtimes.is_empty()).then(|| &ctl.runtimes[i % ctl.runtimes.len()]);
            // Without a second descriptor (out of fds) the queue is reset at shutdown, as
            // before.
            let queue = l.try_clone().ok().map(|q| (port, q));
            let task = accept::spawn(Arc::downgrade(&ctl.shared), l, port, lazy, rt);
            Listening { addr, task, queue }
        })
        .collect()
}

/// Whether `port`'s listening sockets get `TCP_DEFER_ACCEPT`: `defer_accept` is on and every
/// client there must speak first.
fn defer_accept(config: &Config, port: u16) -> bool {
    config.defer_accept && config.table().client_speaks_first(port)
}

/// Sets or clears `TCP_DEFER_ACCEPT` on one listening socket; a failure is logged (the
/// socket then hands connections over at once, as without the option).
fn set_defer_accept(sock: &impl std::os::fd::AsFd, addr: SocketAddr, on: bool) {
    match accept::set_defer_accept(sock, on) {
        Ok(()) => tracing::debug!(%addr, on, "TCP_DEFER_ACCEPT"),
        Err(e) => tracing::warn!(%addr, on, error = %e, "cannot set TCP_DEFER_ACCEPT"),
    }
}

/// The running proxy. Cheap to clone; every clone controls the same engine. When the last
/// clone is dropped the listeners close; open connections run to their end (call
/// [`Engine::shutdown`] to bound that).
#[derive(Clone)]
pub struct Engine {
    ctl: Arc<Control>,
    _life: Arc<Life>,
}

/// Stops listening when the last [`Engine`] clone goes away.
struct Life(Weak<Control>);

impl Drop for Life {
    fn drop(&mut self) {
        if let Some(ctl) = self.0.upgrade() {
            ctl.stop_listening();
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
    /// Why the kernel-forwarded routes' rules could not be written (`nft` missing, no
    /// `CAP_NET_ADMIN`, the kernel refused them). The rest of the configuration was applied;
    /// the rules in force before, if any, stay.
    pub kernel_error: Option<String>,
    /// Keys that changed but are read only when the process starts (`workers`, `runtime`,
    /// `bind`, `reuse_port`, `access_log`, `watch_config`, `[admin]`, `[metrics]`): the new values take effect
    /// after a restart. (`bind` and `reuse_port` apply to ports added by this reload.)
    pub restart_required: Vec<&'static str>,
}

/// The keys of `new` that differ from `old` and are read only at start.
fn restart_only_changes(old: &Config, new: &Config) -> Vec<&'static str> {
    let mut out = Vec::new();
    let mut check = |key, changed: bool| {
        if changed {
            out.push(key);
        }
    };
    check("workers", old.workers != new.workers);
    check("runtime", old.runtime != new.runtime);
    check("bind", old.bind != new.bind);
    check("reuse_port", old.reuse_port != new.reuse_port);
    check("access_log", old.access_log != new.access_log);
    check("watch_config", old.watch_config != new.watch_config);
    check("admin", old.admin != new.admin);
    check("metrics", old.metrics != new.metrics);
    out
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
    /// A builder: a configuration or routes, custom handlers, a shared collector, runtimes.
    pub fn builder() -> EngineBuilder {
        EngineBuilder::default()
    }

    /// Starts an engine with built-in handlers only.
    pub async fn start(config: Config) -> Result<Self, StartError> {
        Self::builder().config(config).start().await
    }

    /// The configuration in force.
    pub fn config(&self) -> Arc<Config> {
        Arc::clone(&self.ctl.shared.state.load().config)
    }

    /// Parses a configuration text accepting this engine's registered handlers (for
    /// [`Engine::reload`]).
    pub fn parse_config(&self, text: &str, format: Format) -> Result<Config, ConfigErrors> {
        let owned = self.ctl.shared.handlers.names();
        Config::parse(text, format, &str_refs(&owned))
    }

    /// Every listening socket's address, by port.
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        let mut addrs: Vec<SocketAddr> =
            self.ctl.listeners.lock().values().flatten().map(|l| l.addr).collect();
        // With worker runtimes an address has one socket per runtime.
        addrs.dedup();
        addrs
    }

    /// The metrics collector (`None` with `[metrics] enabled = false`): queries, snapshots,
    /// and what the admin API and exporters read.
    pub fn metrics(&self) -> Option<Arc<Metrics>> {
        self.ctl.shared.obs.metrics().cloned()
    }

    /// The certificates of the terminating routes: ACME (`certificate = "auto"`) and PEM
    /// files, with their status ([`CertManager::status`]), forced renewal
    /// ([`CertManager::renew_now`]) and expiries. The manager of the configuration in force.
    ///
    /// [`CertManager::status`]: smartproxy_acme::CertManager::status
    /// [`CertManager::renew_now`]: smartproxy_acme::CertManager::renew_now
    pub fn certificates(&self) -> smartproxy_acme::CertManager {
        self.ctl.shared.state.load().certs.clone()
    }

    /// Whether [`Engine::shutdown`] has begun (readiness probes answer 503 from then on).
    pub fn is_draining(&self) -> bool {
        self.ctl.draining.load(Ordering::Acquire)
    }

    /// Records a reload that was refused before it reached [`Engine::reload`] (the file did not
    /// load), so that every refused reload is counted and logged the same way.
    pub fn reload_refused(&self, errors: &ConfigErrors) {
        self.ctl.shared.obs.config_reloaded(false);
        tracing::warn!(errors = %errors, "configuration refused, keeping the old one");
    }

    /// Counters.
    pub fn stats(&self) -> Stats {
        let o = self.ctl.shared.obs.stats();
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
            listeners: self.ctl.listeners.lock().values().map(Vec::len).sum(),
        }
    }

    /// Applies a new configuration atomically: new ports start listening, removed ports stop,
    /// established connections keep running with the configuration they started with. A bad
    /// configuration (or a port that cannot be bound) is refused and the old one stays.
    ///
    /// Changes to `bind` and `reuse_port` apply to newly added ports only; `workers` and
    /// `runtime` are read once, when the process starts.
    pub async fn reload(&self, config: Config) -> Result<ReloadSummary, ConfigErrors> {
        let _one_at_a_time = self.ctl.reload_lock.lock().await;
        let result = match self.reload_locked(config) {
            Ok((mut summary, stopped)) => {
                // Aborting a task on another runtime is asynchronous: wait until the removed
                // ports' sockets are closed.
                closed(stopped).await;
                let state = self.ctl.shared.state.load_full();
                summary.kernel_error = apply_kernel_routes(&self.ctl, &state).await.err();
                Ok(summary)
            }
            Err(e) => Err(e),
        };
        self.ctl.shared.obs.config_reloaded(result.is_ok());
        match &result {
            Ok(s) if s.restart_required.is_empty() => {
                tracing::info!(added = ?s.added_ports, removed = ?s.removed_ports, routes = s.routes, "configuration reloaded")
            }
            Ok(s) => {
                tracing::warn!(added = ?s.added_ports, removed = ?s.removed_ports, routes = s.routes, restart_required = ?s.restart_required, "configuration reloaded; changes to these keys apply after a restart")
            }
            Err(e) => tracing::warn!(errors = %e, "configuration refused, keeping the old one"),
        }
        result
    }

    /// Replaces the routes and keeps every other setting (SmartProxy's `updateRoutes`); the
    /// same as a reload with the current configuration and these routes.
    pub async fn update_routes(
        &self,
        routes: Vec<RouteConfig>,
    ) -> Result<ReloadSummary, ConfigErrors> {
        let owned = self.ctl.shared.handlers.names();
        match self.config().with_routes(routes, &str_refs(&owned)) {
            Ok(config) => self.reload(config).await,
            Err(e) => {
                self.reload_refused(&e);
                Err(e)
            }
        }
    }

    /// Listens on `port` as well (SmartProxy's `addListeningPort`), on every `bind` address.
    /// A connection there that no route takes is refused (`no_route`). Adding a port that is
    /// listened on already does nothing.
    pub async fn add_listening_port(&self, port: u16) -> Result<(), StartError> {
        let _one_at_a_time = self.ctl.reload_lock.lock().await;
        if self.ctl.listeners.lock().contains_key(&port) {
            self.ctl.extra_ports.lock().insert(port);
            return Ok(());
        }
        let config = self.config();
        let bound = bind_ports(&config, &[port], &self.ctl.shared, self.ctl.runtimes.len())?;
        let mut ls = self.ctl.listeners.lock();
        for (port, socks) in bound {
            ls.insert(port, spawn_listeners(&self.ctl, port, socks, true));
        }
        self.ctl.extra_ports.lock().insert(port);
        Ok(())
    }

    /// Stops listening on a port added with [`Engine::add_listening_port`]
    /// (SmartProxy's `removeListeningPort`); established connections keep running. A port
    /// that routes use keeps listening (remove or change those routes instead); returns
    /// whether the port stopped listening.
    pub async fn remove_listening_port(&self, port: u16) -> bool {
        let _one_at_a_time = self.ctl.reload_lock.lock().await;
        self.ctl.extra_ports.lock().remove(&port);
        if self.config().table().ports().contains(&port) {
            return false;
        }
        let Some(ls) = self.ctl.listeners.lock().remove(&port) else { return false };
        let mut stopped = Vec::new();
        for Listening { addr, task, .. } in ls {
            tracing::info!(%addr, "stopped listening");
            task.abort();
            stopped.push(task);
        }
        closed(stopped).await;
        true
    }

    fn reload_locked(
        &self,
        config: Config,
    ) -> Result<(ReloadSummary, Vec<JoinHandle<()>>), ConfigErrors> {
        let ctl = &self.ctl;
        if ctl.draining.load(Ordering::Acquire) {
            return Err(ConfigErrors::one(ConfigError::new("", "the engine is shutting down")));
        }
        check_handlers(&config, &ctl.shared.handlers)?;
        let old = ctl.shared.state.load_full();
        let metrics = ctl.shared.obs.metrics().map(|m| &**m);
        let owned = ctl.shared.handlers.names();
        let state = State::build(config, Some(&old), &str_refs(&owned), metrics)?;
        let mut new_ports: BTreeSet<u16> = state.table.ports().into_iter().collect();
        new_ports.extend(ctl.extra_ports.lock().iter().copied());
        let old_ports: BTreeSet<u16> = ctl.listeners.lock().keys().copied().collect();
        let added: Vec<u16> = new_ports.difference(&old_ports).copied().collect();
        let removed: Vec<u16> = old_ports.difference(&new_ports).copied().collect();
        let bound =
            bind_ports(&state.config, &added, &ctl.shared, ctl.runtimes.len()).map_err(|e| {
                if certs::reusable(&old.certs, &state.config) {
                    old.restore_certs();
                }
                ConfigErrors::one(ConfigError::new("routes", format!("{e}: {}", source_of(&e))))
            })?;
        // A new `[acme]` table came with a new manager: its renewal loop replaces the old one.
        let new_certs = !certs::reusable(&old.certs, &state.config);
        let routes = state.config.routes.len();
        let restart_required = restart_only_changes(&old.config, &state.config);
        if let Some(m) = metrics {
            let names: BTreeSet<&str> = state.table.routes().iter().map(|r| r.name()).collect();
            m.forget_routes(|n| names.contains(n));
        }
        let d = &state.config.defaults;
        ctl.shared
            .ip_limits
            .set_limits(d.max_connections_per_ip, d.connection_rate_limit_per_minute);
        ctl.shared.http.reload(state.http_config());
        if new_certs {
            let mut tasks = ctl.certs.lock();
            drop(tasks.take());
            *tasks = Some(CertTasks::start(&state.certs, ctl.shared.obs.metrics().cloned()));
        }
        // Ports that stay: their routes may now need the client to speak first, or no longer.
        let changed: Vec<(u16, bool)> = old_ports
            .intersection(&new_ports)
            .filter_map(|&p| {
                let on = defer_accept(&state.config, p);
                (on != defer_accept(&old.config, p)).then_some((p, on))
            })
            .collect();
        ctl.shared.state.store(Arc::new(state));
        let mut ls = ctl.listeners.lock();
        for (port, on) in changed {
            for l in ls.get(&port).into_iter().flatten() {
                if let Some((_, q)) = &l.queue {
                    set_defer_accept(q, l.addr, on);
                }
            }
        }
        for (port, socks) in bound {
            ls.insert(port, spawn_listeners(ctl, port, socks, true));
        }
        let mut stopped = Vec::new();
        for port in &removed {
            let mut last = None;
            for Listening { addr, task, .. } in ls.remove(port).unwrap_or_default() {
                if last != Some(addr) {
                    tracing::info!(%addr, "stopped listening");
                }
                last = Some(addr);
                task.abort();
                stopped.push(task);
            }
        }
        let summary = ReloadSummary {
            added_ports: added,
            removed_ports: removed,
            routes,
            kernel_error: None,
            restart_required,
        };
        Ok((summary, stopped))
    }

    /// Stops accepting, waits up to `grace` for open connections to finish (woken by the last
    /// close, not polled), then closes the rest. Returns when every connection is closed (or a
    /// second after forcing them).
    pub async fn shutdown(&self, grace: Duration) -> ShutdownSummary {
        let ctl = &self.ctl;
        ctl.draining.store(true, Ordering::Release);
        if let Some(m) = ctl.shared.obs.metrics() {
            m.set_draining(true);
        }
        // No new certificate order while draining (one in flight is abandoned).
        drop(ctl.certs.lock().take());
        let (tasks, queues) = ctl.stop_listening();
        closed(tasks).await;
        // The connections the kernel had accepted but the accept loops had not taken yet
        // are in flight too: take them and serve them in the drain (closing the sockets
        // would reset them). One that completes its handshake after this is reset.
        let queued = take_queued(&ctl.shared, queues);
        if !queued.is_empty() {
            tracing::info!(
                queued = queued.len(),
                "took the connections waiting in the accept queues"
            );
        }
        // HTTP connections close after the request they serve (HTTP/2: GOAWAY).
        let _ = ctl.shared.draining.send(true);
        let obs = &ctl.shared.obs;
        let active = self.stats().active_connections;
        tracing::info!(active, ?grace, "shutting down: draining connections");
        let deadline = Instant::now() + grace;
        let drained = async {
            // A connection counts as open once its task has admitted it, which the tasks
            // just spawned for the queued ones may not have done yet: wait for those tasks
            // themselves, then for every open connection.
            let _ = tokio::time::timeout_at(deadline, async {
                for t in queued {
                    let _ = t.await;
                }
            })
            .await;
            obs.wait_idle(deadline).await
        };
        tokio::select! {
            _ = drained => {}
            () = ctl.cut_drain.notified() => {}
        }
        let forced = self.stats().active_connections;
        if forced > 0 {
            tracing::warn!(forced, "grace period over: closing remaining connections");
            let _ = ctl.shared.force_close.send(true);
            obs.wait_idle(Instant::now() + Duration::from_secs(1)).await;
        }
        // A last sample, so that the final bytes are in the series and totals, then the
        // kernel-forwarded routes' rules go.
        if let Some(m) = obs.metrics() {
            ctl.kernel.sample(m).await;
            m.tick(m.now() + 1);
        }
        ctl.kernel.remove().await;
        ShutdownSummary { forced }
    }

    /// Ends the drain of a [`Engine::shutdown`] in progress (or the next one) at once: the
    /// remaining connections are closed as when the grace period is over (a second SIGTERM).
    pub fn end_drain_now(&self) {
        self.ctl.cut_drain.notify_one();
    }

    /// The nftables table of the kernel-forwarded routes (`forwarding_engine = "nftables"`),
    /// for `GET /api/nftables`: the routes as applied (resolved targets, counters), nft's own
    /// listing of the table, and the engine's view: `configured` (route names), `owned`
    /// (this process wrote the table), `error` (why the rules could not be written: `nft`
    /// missing, no `CAP_NET_ADMIN`, ...), `left_out` (routes not in the rules, with the
    /// reason), `counters_error`. Runs `nft` on the blocking pool (not when no route is
    /// kernel-forwarded).
    pub async fn nftables_status(&self) -> serde_json::Value {
        self.ctl.kernel.status_json().await
    }

    /// Open connections from `ip` as the per-IP limit counts them.
    pub fn connections_from(&self, ip: std::net::IpAddr) -> u32 {
        self.ctl.shared.ip_limits.open(ip)
    }
}

/// Accepts every connection waiting in the queues of `listeners` (non-blocking, until
/// `EAGAIN`) and spawns its task as the accept loop would; then closes them. Returns the
/// tasks of the connections taken.
fn take_queued(
    shared: &Arc<Shared>,
    listeners: Vec<(u16, std::net::TcpListener)>,
) -> Vec<JoinHandle<()>> {
    let mut taken = Vec::new();
    for (port, l) in listeners {
        let bound = accept::bound_ip(l.local_addr().ok());
        loop {
            let (tcp, peer) = match l.accept() {
                Ok(c) => c,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if accept::is_per_connection(&e) => continue,
                Err(e) => {
                    tracing::warn!(port, error = %e, "accept failed while taking the queue");
                    break;
                }
            };
            let accepted = Instant::now();
            // `accept` on a non-blocking listener gives a blocking socket.
            let tcp =
                match tcp.set_nonblocking(true).and_then(|()| tokio::net::TcpStream::from_std(tcp))
                {
                    Ok(t) => t,
                    Err(e) => {
                        tracing::warn!(port, error = %e, "cannot register a queued connection");
                        continue;
                    }
                };
            taken.push(tokio::spawn(crate::pipeline::serve(
                Arc::clone(shared),
                crate::pipeline::accept::Accepted::Registered(tcp),
                peer,
                port,
                bound,
                accepted,
            )));
        }
    }
    taken
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

fn str_refs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

fn source_of(e: &StartError) -> String {
    std::error::Error::source(e).map(ToString::to_string).unwrap_or_default()
}
