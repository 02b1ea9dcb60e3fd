//! The configuration, parsed once ("parse, don't validate"): the file is read into its serde
//! model ([`file`]), every value is checked and turned into a typed value (addresses, address
//! patterns, durations, enums), the routes are validated and compiled into the route table, and
//! the certificate material of terminating routes is read from disk. What comes out, a
//! [`Config`], is what `run`, `validate`, reload and the library API all use: nothing reads a
//! file or re-parses a string after this.
//!
//! Every error is reported at once, with its key path and line.

mod check;
mod deserialize;
mod file;
mod locate;
pub(crate) mod tls_files;

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use smartproxy_routing::duration as dur;
use smartproxy_routing::{IpPattern, KeepaliveTreatment, RouteConfig, RouteTable, TcpKeepalive};

use smartproxy_acme::AcmeConfig;

use self::locate::Locator;
use self::tls_files::{LoadedCert, TlsFiles};

/// The whole configuration (DESIGN.md §3), parsed and checked: build one with
/// [`Config::load`], [`Config::from_str`], [`Config::parse`] (custom handler names) or
/// [`Config::from_routes`] (routes written in code).
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct Config {
    /// Runtime worker threads; `None`: the CPUs the process may use.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workers: Option<usize>,
    /// How the workers are scheduled (default `"per-worker"`); read by the binary at start.
    pub runtime: Runtime,
    /// Addresses every route port is bound on (default `["0.0.0.0", "::"]`; IPv6 sockets are
    /// IPv6-only).
    pub bind: Vec<IpAddr>,
    /// Set `SO_REUSEPORT` on listening sockets (default false), so that several processes can
    /// share a port.
    pub reuse_port: bool,
    /// `TCP_DEFER_ACCEPT` on the listening sockets of ports where the client must speak first
    /// (default true; see [`smartproxy_routing::RouteTable::client_speaks_first`]): the
    /// kernel hands a connection over when its first data arrives, which saves a wake-up and
    /// a read that would block per connection. A client that sends nothing is handed over
    /// after about a second (then `initial_data_timeout` and the others apply as usual).
    /// Linux only; ignored elsewhere.
    pub defer_accept: bool,
    /// Peers trusted to send PROXY headers: addresses, CIDR blocks, ranges or wildcards.
    #[serde(serialize_with = "display_all")]
    pub proxy_ips: Vec<IpPattern>,
    /// PROXY headers are accepted from `proxy_ips` (the key `accept_proxy_protocol`; default:
    /// true when `proxy_ips` is non-empty).
    pub accept_proxy_protocol: bool,
    /// Absolute deadline for the whole PROXY header, from accept (default 5 s).
    #[serde(with = "dur")]
    pub proxy_protocol_timeout: Duration,
    /// A trusted peer may also connect without a header (default false).
    pub proxy_protocol_optional: bool,
    /// How long the first bytes of an untrusted connection are awaited to check that they are
    /// not a PROXY header, on ports whose routes need no peek (default 200 ms). A client that
    /// stays silent that long (a server-speaks-first protocol) is forwarded anyway. `"0s"`
    /// checks only bytes that have already arrived.
    #[serde(with = "dur")]
    pub proxy_protocol_detect_timeout: Duration,
    /// Defaults for timeouts and limits.
    pub defaults: Defaults,
    /// One JSON line per HTTP request (target `smartproxy::access`), default false; read at
    /// start.
    pub access_log: bool,
    /// Watch the configuration file and reload it when it changes, as on SIGHUP (default
    /// false; read by the binary at start).
    pub watch_config: bool,
    /// The admin HTTP listener.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin: Option<AdminConfig>,
    /// Traffic metrics.
    pub metrics: MetricsConfig,
    /// `[acme]`: the ACME CA that routes with `certificate = "auto"` get their certificates
    /// from (`None`: no such route).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub acme: Option<AcmeConfig>,
    /// `[tls]`: TLS settings of every terminating route.
    pub tls: TlsSettings,
    /// The routes, as written (read them with [`Config::routes`]; they change only through
    /// [`Config::with_routes`], which compiles them again).
    pub(crate) routes: Vec<RouteConfig>,
    /// What was derived from the routes: the compiled table and the TLS files.
    #[serde(skip)]
    compiled: Compiled,
}

/// The route table and TLS material of a configuration, built once when it is parsed.
#[derive(Debug, Clone)]
pub(crate) struct Compiled {
    pub(crate) table: Arc<RouteTable>,
    pub(crate) tls: Arc<TlsFiles>,
    /// `[tls] default_certificate`, loaded (kept when the routes change).
    pub(crate) default_cert: Option<LoadedCert>,
    /// The htpasswd users and JWT keys of the routes with `basic_auth` / `jwt`.
    pub(crate) credentials: Arc<smartproxy_http::Credentials>,
}

/// `[tls]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct TlsSettings {
    /// The certificate of TLS handshakes on a terminating route whose SNI (or its absence)
    /// none of the port's terminating routes names in its `domains` or certificate: without
    /// it, the route's own certificate.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default_certificate: Option<CertificateFiles>,
}

/// PEM files of a certificate chain (leaf first) and its private key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct CertificateFiles {
    /// Certificate chain, leaf first.
    pub cert: PathBuf,
    /// Private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

fn display_all<S: serde::Serializer>(v: &[IpPattern], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(v.iter().map(ToString::to_string))
}

/// How the binary runs its `workers` (top-level key `runtime`). With one worker both are a
/// single current-thread runtime.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum Runtime {
    /// The default: `workers` independent current-thread runtimes, one thread each, each with
    /// its own `SO_REUSEPORT` listener on every port (as Envoy's workers and nginx's
    /// `reuseport`). The kernel spreads new connections over them by a hash of the addresses;
    /// a connection stays on the thread that accepted it and no task moves between threads.
    /// Measured 5-8 % more requests/s than `multi-thread` on 2 cores (README, Performance).
    #[default]
    PerWorker,
    /// One tokio multi-thread runtime with `workers` threads and one listener per port: idle
    /// threads steal work from busy ones, which evens out a few heavy connections.
    MultiThread,
}

impl Default for Config {
    /// Every default, no route.
    fn default() -> Self {
        match Self::from_routes(Vec::new()) {
            Ok(c) => c,
            // No route, no file: nothing can fail.
            Err(e) => unreachable!("the default configuration is valid: {e}"),
        }
    }
}

/// `[defaults]`: timeouts and limits.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct Defaults {
    /// Deadline for the data a route needs before it can be chosen (ClientHello, HTTP head),
    /// and for the request head that HTTP handlers read (default 60 s).
    #[serde(default = "d60s", with = "dur")]
    pub initial_data_timeout: Duration,
    /// A connection with no byte in either direction for this long is closed (default 4 h).
    #[serde(default = "d4h", with = "dur")]
    pub inactivity_timeout: Duration,
    /// A connection is closed after this long whatever it does (default 24 h). `immortal`
    /// connections obey it only when it is set explicitly: written in the file, or through
    /// [`Defaults::set_max_connection_lifetime`].
    #[serde(default = "d24h", with = "dur")]
    pub max_connection_lifetime: Duration,
    /// Open connections per client IP (default 100; 0 = unlimited).
    #[serde(default = "d100")]
    pub max_connections_per_ip: u32,
    /// New connections per client IP and minute (default 0 = unlimited). SmartProxy's default
    /// is 300; ours is off, as in HAProxy, nginx and Envoy, because one address often stands
    /// for many clients (NAT, a load balancer, a benchmark) and a silent default cap there
    /// looks like an outage. Set it where clients are individuals.
    #[serde(default)]
    pub connection_rate_limit_per_minute: u32,
    /// Open connections in total (default 100 000; 0 = unlimited).
    #[serde(default = "d100k")]
    pub max_connections: u32,
    /// Deadline of the TCP connect to a target (default 10 s; a route may override it).
    #[serde(default = "d10s", with = "dur")]
    pub connect_timeout: Duration,
    /// How long shutdown waits for open connections to finish (default 30 s).
    #[serde(default = "d30s", with = "dur")]
    pub shutdown_grace: Duration,
    /// Bulk transfers on plain TCP forwarding move through `splice(2)` (default true; Linux
    /// builds with the `splice` cargo feature, elsewhere ignored). A direction switches once a
    /// read fills the whole 16 KiB buffer and back when a round moves less than that, so
    /// request/response traffic never splices (HAProxy's `option splice-auto`). `false`
    /// copies everything through user space: on a machine where packets are cheap and the
    /// proxy's peers share its memory (loopback) that moved bulk transfers at a higher rate;
    /// where the proxy's packets cost more, splice moved them 1.8 times as fast for a third
    /// of the proxy's CPU (README, Performance; issue 19).
    #[serde(default = "yes")]
    pub splice: bool,
    /// What the end of one side of a plain TCP connection (its FIN) does, for routes that do
    /// not say (`action.half_close`; plain TCP and TLS passthrough copies). `true` (default):
    /// the other side's write half is shut down and the opposite direction runs on until it
    /// ends too (TCP half-close, as HAProxy and Envoy). `false`: the connection closes once
    /// what the other direction was writing is written (nginx's `proxy_half_close off`): one
    /// `shutdown` and one wake-up fewer per connection (README, Performance), but a client
    /// that sends its request, shuts its write side down and then waits for the answer gets
    /// none.
    #[serde(default = "yes")]
    pub half_close: bool,
    /// How inactivity and lifetime are treated (SmartProxy's `keepAliveTreatment`):
    /// `"standard"` (default), `"extended"` (inactivity × `keepalive_inactivity_multiplier`,
    /// lifetime `extended_keepalive_lifetime`) or `"immortal"` (no inactivity timeout).
    #[serde(default)]
    pub keepalive_treatment: KeepaliveTreatment,
    /// The inactivity multiplier of `extended` (default 6, 1 to 1000).
    #[serde(default = "d6")]
    pub keepalive_inactivity_multiplier: u32,
    /// The lifetime of `extended` connections whose route sets no `max_lifetime` (default 7 d,
    /// SmartProxy's `extendedKeepAliveLifetime`).
    #[serde(default = "d7d", with = "dur")]
    pub extended_keepalive_lifetime: Duration,
    /// TCP keepalive probes on the client and backend sockets (default on: `{ idle = "60s",
    /// interval = "10s", count = 6 }`; `false` turns them off).
    #[serde(default)]
    pub tcp_keepalive: TcpKeepalive,
    /// ±5 % jitter on the inactivity timeout and lifetime of each connection (default false),
    /// so that connections opened together do not all close together.
    #[serde(default)]
    pub randomize_timeouts: bool,
    /// `max_connection_lifetime` was set explicitly (it then bounds `immortal` connections).
    #[serde(skip)]
    pub(crate) max_connection_lifetime_explicit: bool,
    /// HTTP routes: time a client has to send a whole request head, from its first byte
    /// (slowloris is cut here; 408). Default 10 s.
    #[serde(default = "http_d10s", with = "dur")]
    pub request_header_timeout: Duration,
    /// HTTP routes: idle client connection between requests (never an open WebSocket).
    /// Default 60 s.
    #[serde(default = "d60s", with = "dur")]
    pub http_keepalive_timeout: Duration,
    /// HTTP routes: the target's response head, once the request was sent (504). Default 60 s.
    #[serde(default = "d60s", with = "dur")]
    pub http_response_timeout: Duration,
    /// HTTP routes: largest request head (431). Default 65 536.
    #[serde(default = "d64k")]
    pub max_request_header_bytes: usize,
    /// HTTP routes: idle HTTP/1.1 connections kept per target and worker. Default 256.
    #[serde(default = "d256")]
    pub http_pool_max_idle: usize,
    /// HTTP routes: how long an idle upstream connection is kept. Default 60 s.
    #[serde(default = "d60s", with = "dur")]
    pub http_pool_idle_timeout: Duration,
    /// HTTP routes: streams a client may open at once on an HTTP/2 connection. Default 256.
    #[serde(default = "d256u32")]
    pub http2_max_concurrent_streams: u32,
    /// Passive health of the targets of routes without their own `health` key (default
    /// `{ cooldown = "10s" }`): a target whose connect failed is skipped for the cool-down.
    #[serde(default)]
    pub health: smartproxy_routing::HealthOptions,
}

impl Defaults {
    /// Sets `max_connection_lifetime` explicitly: unlike the default value, it then bounds
    /// `immortal` connections too.
    pub fn set_max_connection_lifetime(&mut self, lifetime: Duration) {
        self.max_connection_lifetime = lifetime;
        self.max_connection_lifetime_explicit = true;
    }

    /// Whether `max_connection_lifetime` was set explicitly.
    pub fn max_connection_lifetime_is_explicit(&self) -> bool {
        self.max_connection_lifetime_explicit
    }

    /// The HTTP layer's settings from these defaults.
    pub fn http_settings(&self) -> smartproxy_routing::HttpSettings {
        let mut s = smartproxy_routing::HttpSettings::default();
        s.request_header_timeout = self.request_header_timeout;
        s.http_keepalive_timeout = self.http_keepalive_timeout;
        s.http_response_timeout = self.http_response_timeout;
        s.max_request_header_bytes = self.max_request_header_bytes;
        s.http_pool_max_idle = self.http_pool_max_idle;
        s.http_pool_idle_timeout = self.http_pool_idle_timeout;
        s.http2_max_concurrent_streams = self.http2_max_concurrent_streams;
        s
    }
}

impl Default for Defaults {
    fn default() -> Self {
        Self {
            initial_data_timeout: d60s(),
            inactivity_timeout: d4h(),
            max_connection_lifetime: d24h(),
            max_connections_per_ip: d100(),
            connection_rate_limit_per_minute: 0,
            max_connections: d100k(),
            connect_timeout: d10s(),
            shutdown_grace: d30s(),
            splice: true,
            half_close: true,
            keepalive_treatment: KeepaliveTreatment::default(),
            keepalive_inactivity_multiplier: d6(),
            extended_keepalive_lifetime: d7d(),
            tcp_keepalive: TcpKeepalive::default(),
            randomize_timeouts: false,
            max_connection_lifetime_explicit: false,
            request_header_timeout: http_d10s(),
            http_keepalive_timeout: d60s(),
            http_response_timeout: d60s(),
            max_request_header_bytes: d64k(),
            http_pool_max_idle: d256(),
            http_pool_idle_timeout: d60s(),
            http2_max_concurrent_streams: d256u32(),
            health: smartproxy_routing::HealthOptions::default(),
        }
    }
}

/// `[admin]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct AdminConfig {
    /// Address of the admin HTTP listener, e.g. `"127.0.0.1:9900"`. An address that is not
    /// loopback needs `token_file` (or `allow_unauthenticated = true`).
    pub listen: SocketAddr,
    /// The file holding the bearer token the admin API asks for (everything but `/healthz`
    /// and `/ready`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    /// The token read from `token_file` at load (never serialised).
    #[serde(skip)]
    pub token: Option<AdminToken>,
    /// Serve a non-loopback `listen` without a token (default false).
    pub allow_unauthenticated: bool,
}

/// The admin API's bearer token: read once from `[admin] token_file`, shown as
/// `<redacted>` by `Debug`, never serialised.
#[derive(Clone, PartialEq, Eq)]
pub struct AdminToken(Arc<str>);

impl AdminToken {
    /// The token (the file's content without surrounding white space).
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// A token from a string (tests, library users); `None` when blank.
    pub fn new(token: &str) -> Option<Self> {
        let t = token.trim();
        (!t.is_empty()).then(|| Self(t.into()))
    }

    fn read(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read `{}`: {e}", path.display()))?;
        let t = text.trim();
        if t.is_empty() {
            return Err(format!("`{}` is empty: it must hold the admin token", path.display()));
        }
        if t.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(format!(
                "`{}`: the token must be one word (no spaces or line breaks inside)",
                path.display()
            ));
        }
        if t.len() < 16 {
            return Err(format!(
                "`{}`: the token has {} characters; use at least 16 (e.g. `openssl rand -hex 32`)",
                path.display(),
                t.len()
            ));
        }
        Ok(Self(t.into()))
    }
}

impl fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AdminToken(<redacted>)")
    }
}

/// `[metrics]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct MetricsConfig {
    /// Collect metrics (default true).
    pub enabled: bool,
    /// Sample interval (default 1 s).
    #[serde(with = "dur")]
    pub sample_interval: Duration,
    /// How long 1 s samples are kept (default 1 h).
    #[serde(with = "dur")]
    pub retention: Duration,
    /// Prefix of exported metric names (default `smartproxy_`).
    pub prefix: String,
    /// Per-IP series: `false` (default), `true` (the top 100 IPs), or a number N (the top N).
    pub per_ip: PerIpSetting,
    /// Push to a StatsD server.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub statsd: Option<StatsdConfig>,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            sample_interval: d1s(),
            retention: d1h(),
            prefix: default_prefix(),
            per_ip: PerIpSetting::Off,
            statsd: None,
        }
    }
}

/// `[metrics] per_ip`: `false`, `true` (top 100) or the number of top IPs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum PerIpSetting {
    /// No per-IP series in exports (connections by IP are still counted for queries).
    #[default]
    Off,
    /// Series for the N most active client IPs.
    TopN(usize),
}

impl PerIpSetting {
    /// The collector's setting.
    pub fn collector(self) -> smartproxy_metrics::PerIp {
        match self {
            // The collector still tracks the busiest IPs for queries; exports leave them out.
            Self::Off => smartproxy_metrics::PerIp::TopN(100),
            Self::TopN(n) => smartproxy_metrics::PerIp::TopN(n),
        }
    }

    /// How many IPs the exporters write (`None`: no per-IP series).
    pub fn top_n(self) -> Option<usize> {
        match self {
            Self::Off => None,
            Self::TopN(n) => Some(n),
        }
    }
}

impl<'de> Deserialize<'de> for PerIpSetting {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = PerIpSetting;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("false, true, or the number of top IPs")
            }
            fn visit_bool<E: serde::de::Error>(self, b: bool) -> Result<PerIpSetting, E> {
                Ok(if b { PerIpSetting::TopN(100) } else { PerIpSetting::Off })
            }
            fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<PerIpSetting, E> {
                match n {
                    0 => Ok(PerIpSetting::Off),
                    1..=100_000 => Ok(PerIpSetting::TopN(n as usize)),
                    _ => Err(E::custom("per_ip: at most 100000 IPs")),
                }
            }
            fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<PerIpSetting, E> {
                u64::try_from(n)
                    .map_err(|_| E::custom("per_ip cannot be negative"))
                    .and_then(|n| self.visit_u64(n))
            }
        }
        d.deserialize_any(V)
    }
}

impl Serialize for PerIpSetting {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Off => s.serialize_bool(false),
            Self::TopN(n) => s.serialize_u64(*n as u64),
        }
    }
}

/// `[metrics.statsd]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct StatsdConfig {
    /// `host:port` of the StatsD server (UDP); the host may be a name.
    pub address: String,
    /// Push interval (default 10 s).
    #[serde(with = "dur")]
    pub interval: Duration,
    /// Line style: `"plain"` (default, Etsy StatsD) or `"datadog"` (tags).
    pub style: StatsdStyle,
}

/// `[metrics.statsd] style`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum StatsdStyle {
    /// Etsy StatsD lines.
    #[default]
    Plain,
    /// DogStatsD lines with tags.
    Datadog,
}

fn default_bind() -> Vec<IpAddr> {
    vec![Ipv4Addr::UNSPECIFIED.into(), Ipv6Addr::UNSPECIFIED.into()]
}
fn default_pp_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_detect_timeout() -> Duration {
    Duration::from_millis(200)
}
fn default_prefix() -> String {
    "smartproxy_".into()
}
fn d1s() -> Duration {
    Duration::from_secs(1)
}
fn d10s() -> Duration {
    Duration::from_secs(10)
}
fn d30s() -> Duration {
    Duration::from_secs(30)
}
fn d60s() -> Duration {
    Duration::from_secs(60)
}
fn d1h() -> Duration {
    Duration::from_secs(3600)
}
fn d4h() -> Duration {
    Duration::from_secs(4 * 3600)
}
fn d24h() -> Duration {
    Duration::from_secs(24 * 3600)
}
fn d7d() -> Duration {
    Duration::from_secs(7 * 24 * 3600)
}
pub(super) fn yes() -> bool {
    true
}
fn d6() -> u32 {
    6
}
fn http_d10s() -> Duration {
    Duration::from_secs(10)
}
fn d64k() -> usize {
    65_536
}
fn d256() -> usize {
    256
}
fn d256u32() -> u32 {
    256
}
fn d100() -> u32 {
    100
}
fn d100k() -> u32 {
    100_000
}

/// The format of a configuration text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Format {
    /// TOML (the default).
    Toml,
    /// JSON.
    Json,
}

impl Format {
    /// JSON for a `.json` extension, TOML otherwise.
    pub fn from_path(path: &Path) -> Self {
        match path.extension().and_then(|e| e.to_str()) {
            Some(e) if e.eq_ignore_ascii_case("json") => Self::Json,
            _ => Self::Toml,
        }
    }
}

/// One configuration error: where and what.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConfigError {
    /// Key path, e.g. `routes[2].action.targets[0].port` (empty for the whole file).
    pub path: String,
    /// Line in the file (1-based), when known.
    pub line: Option<usize>,
    /// What is wrong.
    pub message: String,
}

impl ConfigError {
    /// An error at a key path, without a line.
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self { path: path.into(), line: None, message: message.into() }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.line, self.path.is_empty()) {
            (Some(l), false) => write!(f, "line {l}: {}: {}", self.path, self.message),
            (Some(l), true) => write!(f, "line {l}: {}", self.message),
            (None, false) => write!(f, "{}: {}", self.path, self.message),
            (None, true) => f.write_str(&self.message),
        }
    }
}

/// Every error found in a configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub struct ConfigErrors {
    /// The file, when the configuration came from one.
    pub file: Option<PathBuf>,
    /// The errors, in file order where lines are known.
    pub errors: Vec<ConfigError>,
}

impl ConfigErrors {
    /// One error.
    pub fn one(error: ConfigError) -> Self {
        Self { file: None, errors: vec![error] }
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.errors.len();
        match &self.file {
            Some(p) => write!(f, "{}: {n} configuration error{}", p.display(), plural(n))?,
            None => write!(f, "{n} configuration error{}", plural(n))?,
        }
        for e in &self.errors {
            f.write_str("\n  ")?;
            if let Some(p) = &self.file {
                write!(f, "{}:", p.display())?;
                if let Some(l) = e.line {
                    write!(f, "{l}:")?;
                }
                f.write_str(" ")?;
                match e.path.is_empty() {
                    true => f.write_str(&e.message)?,
                    false => write!(f, "{}: {}", e.path, e.message)?,
                }
            } else {
                write!(f, "{e}")?;
            }
        }
        Ok(())
    }
}

/// What [`redact_secrets`] writes in place of a secret.
pub const REDACTED: &str = "<redacted>";

/// Replaces, anywhere in `v`, the value of every key that names a credential with
/// [`REDACTED`]: keys containing `token`, `secret`, `password`, `passwd`, `authorization`,
/// `cookie`, `api-key` / `api_key` / `apikey`, or `credential` (case-insensitive; header names
/// in `headers`, `request_headers` and `response_headers` tables included), unless the key
/// names a file (`..._file`, `..._path`) or a directory: those are paths, kept.
pub fn redact_secrets(v: &mut serde_json::Value) {
    const SECRET: &[&str] = &[
        "token",
        "secret",
        "password",
        "passwd",
        "authorization",
        "cookie",
        "api-key",
        "api_key",
        "apikey",
        "credential",
    ];
    match v {
        serde_json::Value::Object(map) => {
            for (k, val) in map.iter_mut() {
                let key = k.to_ascii_lowercase();
                let path_like = key.ends_with("_file") || key.ends_with("_path") || key == "file";
                if !path_like && SECRET.iter().any(|s| key.contains(s)) && !val.is_null() {
                    *val = serde_json::Value::String(REDACTED.to_owned());
                } else {
                    redact_secrets(val);
                }
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(redact_secrets),
        _ => {}
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

impl Config {
    /// Reads and parses a file: JSON for a `.json` extension, TOML otherwise. Socket handlers
    /// must be built-in ones.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, ConfigErrors> {
        Self::load_with_handlers(path, &[])
    }

    /// [`Config::load`], accepting also the handler names in `handlers`.
    pub fn load_with_handlers(
        path: impl AsRef<Path>,
        handlers: &[&str],
    ) -> Result<Self, ConfigErrors> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigErrors {
            file: Some(path.to_owned()),
            errors: vec![ConfigError::new("", format!("cannot read the file: {e}"))],
        })?;
        Self::parse(&text, Format::from_path(path), handlers).map_err(|mut e| {
            e.file = Some(path.to_owned());
            e
        })
    }

    /// Parses a configuration text. Socket handlers must be built-in ones.
    #[allow(clippy::should_implement_trait)] // Takes a format too.
    pub fn from_str(text: &str, format: Format) -> Result<Self, ConfigErrors> {
        Self::parse(text, format, &[])
    }

    /// Parses a configuration text, accepting also the socket handlers named in `handlers`
    /// (an [`crate::EngineBuilder`] passes the names of those registered on it).
    pub fn parse(text: &str, format: Format, handlers: &[&str]) -> Result<Self, ConfigErrors> {
        let locator = Locator::new(text, format).map_err(ConfigErrors::one)?;
        let mut errors = Vec::new();
        let (file, routes) = deserialize::deserialize(text, format, &locator, &mut errors);
        let config = check::build(file, routes, handlers, &mut errors);
        for e in &mut errors {
            if e.line.is_none() {
                e.line = locator.line_of(&e.path);
            }
        }
        errors.sort_by_key(|e| e.line.unwrap_or(usize::MAX));
        errors.dedup();
        match config {
            Some(c) if errors.is_empty() => Ok(c),
            _ => Err(ConfigErrors { file: None, errors }),
        }
    }

    /// Every default setting with these routes (routes written in code). The routes are
    /// validated and compiled as those of a file; errors name `routes[i]...` key paths.
    pub fn from_routes(routes: Vec<RouteConfig>) -> Result<Self, ConfigErrors> {
        Self::from_routes_with_handlers(routes, &[])
    }

    /// [`Config::from_routes`], accepting also the socket handlers named in `handlers`.
    pub fn from_routes_with_handlers(
        routes: Vec<RouteConfig>,
        handlers: &[&str],
    ) -> Result<Self, ConfigErrors> {
        let file = file::File::default();
        let mut errors = Vec::new();
        let kept = (0..routes.len()).collect();
        match check::build(Some(file), (routes, kept), handlers, &mut errors) {
            Some(c) if errors.is_empty() => Ok(c),
            _ => Err(ConfigErrors { file: None, errors }),
        }
    }

    /// This configuration with other routes: every other setting is kept. The routes are
    /// validated and compiled; `handlers` are the custom handler names to accept.
    pub fn with_routes(
        &self,
        routes: Vec<RouteConfig>,
        handlers: &[&str],
    ) -> Result<Self, ConfigErrors> {
        let mut errors = check::auto_routes(&routes, self.acme.as_ref(), &[]);
        if self.compiled.default_cert.is_some() {
            errors.extend(check::default_cert_name(&routes, &[]));
        }
        let default = self.compiled.default_cert.clone();
        let health = self.defaults.health;
        let compiled = match check::compile(&routes, handlers, default, &self.bind, health) {
            Ok(c) if errors.is_empty() => c,
            Ok(_) => return Err(ConfigErrors { file: None, errors }),
            Err(mut list) => {
                list.append(&mut errors);
                return Err(ConfigErrors { file: None, errors: list });
            }
        };
        Ok(Self { routes, compiled, ..self.clone() })
    }

    /// The effective configuration as JSON (every default filled in), with secrets
    /// redacted: the admin token is never in it (only `token_file`, its path), and any value
    /// whose key names a credential (see [`redact_secrets`]) is replaced by `"<redacted>"`.
    /// File paths (certificate keys, htpasswd, JWKS, the token file) are kept: they say
    /// where a secret is, not what it is.
    pub fn to_redacted_json(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(self)
            .unwrap_or_else(|e| serde_json::json!({ "error": e.to_string() }));
        redact_secrets(&mut v);
        v
    }

    /// The routes, as written.
    pub fn routes(&self) -> &[RouteConfig] {
        &self.routes
    }

    /// The timeouts that apply to each route's connections (its `timeouts` table over
    /// `[defaults]`), with the route's name, in configuration order.
    pub fn route_timeouts(&self) -> Vec<(String, crate::EffectiveTimeouts)> {
        self.table()
            .routes()
            .iter()
            .map(|r| {
                (r.name().to_owned(), crate::EffectiveTimeouts::resolve(&self.defaults, r.config()))
            })
            .collect()
    }

    /// Whether PROXY headers are accepted from `proxy_ips`.
    pub fn accepts_proxy_protocol(&self) -> bool {
        self.accept_proxy_protocol
    }

    /// The compiled route table.
    pub fn table(&self) -> &RouteTable {
        &self.compiled.table
    }

    pub(crate) fn compiled(&self) -> &Compiled {
        &self.compiled
    }

    /// The rustls key of `[tls] default_certificate`.
    pub(crate) fn default_cert(&self) -> Option<&LoadedCert> {
        self.compiled.default_cert.as_ref()
    }

    /// The route table for a new engine state, with the live counters (limits, target
    /// connection counts, round-robin positions) of the routes `previous` has under the same
    /// name. Compiled again (with `handlers` accepted) only when this configuration shares its
    /// table with a clone.
    pub(crate) fn take_table(
        &mut self,
        previous: Option<&RouteTable>,
        handlers: &[&str],
    ) -> Arc<RouteTable> {
        if let Some(prev) = previous {
            if Arc::get_mut(&mut self.compiled.table).is_none() {
                let default = self.compiled.default_cert.clone();
                let health = self.defaults.health;
                if let Ok(c) = check::compile(&self.routes, handlers, default, &self.bind, health) {
                    self.compiled.table = c.table;
                }
            }
            if let Some(t) = Arc::get_mut(&mut self.compiled.table) {
                t.inherit(prev);
            }
        }
        Arc::clone(&self.compiled.table)
    }
}
