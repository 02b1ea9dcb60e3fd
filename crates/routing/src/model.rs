//! The route model: what a `[[routes]]` entry of the configuration file says, with serde.
//!
//! Names follow SmartProxy's route configuration in snake_case (`sendProxyProtocol` ->
//! `send_proxy_protocol`). Unknown keys are refused so that a typo is an error, not a silent
//! default.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::{Deserialize, Serialize, Serializer};

use crate::timeouts::RouteTimeouts;

/// One route: a match and an action, plus optional security settings.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct RouteConfig {
    /// Route name: the label in logs and metrics. Defaults to `route-<index>` when missing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Free-form identifier.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Free-form description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Higher priority routes are tried first (default 0).
    #[serde(default)]
    pub priority: i32,
    /// A disabled route is kept in the file but never matches.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Free-form tags.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// What connections this route takes.
    #[serde(rename = "match")]
    pub matcher: RouteMatch,
    /// What is done with them.
    pub action: RouteAction,
    /// Route-level access control and limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security: Option<RouteSecurity>,
    /// Route-level timeouts and keep-alive treatment, overriding the engine's `[defaults]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeouts: Option<RouteTimeouts>,
}

impl RouteConfig {
    /// A route with the given match and action and every other field at its default.
    pub fn new(matcher: RouteMatch, action: RouteAction) -> Self {
        Self {
            name: None,
            id: None,
            description: None,
            priority: 0,
            enabled: true,
            tags: Vec::new(),
            matcher,
            action,
            security: None,
            timeouts: None,
        }
    }

    /// Sets the name.
    pub fn with_name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Sets the priority.
    pub fn with_priority(mut self, priority: i32) -> Self {
        self.priority = priority;
        self
    }

    /// Sets the security block.
    pub fn with_security(mut self, security: RouteSecurity) -> Self {
        self.security = Some(security);
        self
    }

    /// Whether the kernel forwards this route (`forwarding_engine = "nftables"`): the proxy
    /// does not listen on its ports.
    pub fn is_kernel_forwarded(&self) -> bool {
        matches!(&self.action, RouteAction::Forward(f) if f.is_kernel_forwarded())
    }

    /// Sets the timeouts table.
    pub fn with_timeouts(mut self, timeouts: RouteTimeouts) -> Self {
        self.timeouts = Some(timeouts);
        self
    }
}

fn default_true() -> bool {
    true
}

/// The match half of a route.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct RouteMatch {
    /// Listening ports: numbers, `"a-b"` ranges, or a list of both.
    pub ports: PortSpec,
    /// Domains matched against SNI (TLS) or Host (HTTP): exact, `*.example.com`, `example.*`, `*`.
    #[serde(default, deserialize_with = "one_or_many", skip_serializing_if = "Vec::is_empty")]
    pub domains: Vec<String>,
    /// HTTP path pattern: exact, `/api/*`, `/users/:id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Client addresses or CIDR blocks (the real client, after a PROXY header).
    #[serde(default, deserialize_with = "one_or_many", skip_serializing_if = "Vec::is_empty")]
    pub client_ip: Vec<String>,
    /// TLS versions offered by the client: `"1.2"`, `"1.3"`.
    #[serde(default, deserialize_with = "one_or_many", skip_serializing_if = "Vec::is_empty")]
    pub tls_version: Vec<String>,
    /// HTTP request headers: exact value, or a regular expression written `/re/`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
}

impl RouteMatch {
    /// A match on these ports only.
    pub fn ports(ports: impl Into<PortSpec>) -> Self {
        Self { ports: ports.into(), ..Self::default() }
    }

    /// Adds domains.
    pub fn with_domains<I: IntoIterator<Item = S>, S: Into<String>>(mut self, domains: I) -> Self {
        self.domains.extend(domains.into_iter().map(Into::into));
        self
    }

    /// Sets the path pattern.
    pub fn with_path(mut self, path: impl Into<String>) -> Self {
        self.path = Some(path.into());
        self
    }
}

/// An inclusive range of ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortRange {
    /// First port.
    pub start: u16,
    /// Last port (inclusive).
    pub end: u16,
}

impl PortRange {
    /// A single port.
    pub const fn single(port: u16) -> Self {
        Self { start: port, end: port }
    }

    /// Whether `port` is in the range.
    pub const fn contains(&self, port: u16) -> bool {
        self.start <= port && port <= self.end
    }

    /// Iterates the ports of the range.
    pub fn iter(&self) -> impl Iterator<Item = u16> + use<> {
        self.start..=self.end
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.start == self.end {
            write!(f, "{}", self.start)
        } else {
            write!(f, "{}-{}", self.start, self.end)
        }
    }
}

/// The ports of a route match. Written as `8080`, `"9000-9010"`, or a list of both.
///
/// Deserialising checks only the form; [`crate::validate`] checks the values (0 is not a port,
/// a range must not run backwards).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PortSpec(pub Vec<PortRange>);

impl PortSpec {
    /// Whether `port` is one of these ports.
    pub fn contains(&self, port: u16) -> bool {
        self.0.iter().any(|r| r.contains(port))
    }

    /// Every port, in order, without repeats.
    pub fn ports(&self) -> Vec<u16> {
        let mut v: Vec<u16> = self.0.iter().flat_map(PortRange::iter).collect();
        v.sort_unstable();
        v.dedup();
        v
    }
}

impl From<u16> for PortSpec {
    fn from(p: u16) -> Self {
        Self(vec![PortRange::single(p)])
    }
}

impl From<Vec<u16>> for PortSpec {
    fn from(v: Vec<u16>) -> Self {
        Self(v.into_iter().map(PortRange::single).collect())
    }
}

impl From<PortRange> for PortSpec {
    fn from(r: PortRange) -> Self {
        Self(vec![r])
    }
}

fn port_number<E: de::Error>(n: i64) -> Result<u16, E> {
    u16::try_from(n).map_err(|_| E::custom(format_args!("port {n} is out of range 0..=65535")))
}

fn port_range_str<E: de::Error>(s: &str) -> Result<PortRange, E> {
    let s = s.trim();
    let parse = |p: &str| {
        p.trim().parse::<u16>().map_err(|_| {
            E::custom(format_args!("invalid port `{p}` in `{s}`: expected a number 0..=65535"))
        })
    };
    match s.split_once('-') {
        Some((a, b)) => Ok(PortRange { start: parse(a)?, end: parse(b)? }),
        None => parse(s).map(PortRange::single),
    }
}

struct PortItem(PortRange);

impl<'de> Deserialize<'de> for PortItem {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = PortItem;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a port number or a \"first-last\" range")
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<PortItem, E> {
                port_number(n).map(|p| PortItem(PortRange::single(p)))
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<PortItem, E> {
                self.visit_i64(i64::try_from(n).unwrap_or(i64::MAX))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<PortItem, E> {
                port_range_str(s).map(PortItem)
            }
            fn visit_map<A: de::MapAccess<'de>>(self, mut m: A) -> Result<PortItem, A::Error> {
                // SmartProxy's `{ from, to }` form.
                let (mut from, mut to) = (None, None);
                while let Some(k) = m.next_key::<String>()? {
                    match k.as_str() {
                        "from" => from = Some(port_number(m.next_value::<i64>()?)?),
                        "to" => to = Some(port_number(m.next_value::<i64>()?)?),
                        other => return Err(de::Error::unknown_field(other, &["from", "to"])),
                    }
                }
                let start = from.ok_or_else(|| de::Error::missing_field("from"))?;
                let end = to.ok_or_else(|| de::Error::missing_field("to"))?;
                Ok(PortItem(PortRange { start, end }))
            }
        }
        d.deserialize_any(V)
    }
}

impl<'de> Deserialize<'de> for PortSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = PortSpec;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a port, a \"first-last\" range, or a list of them")
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<PortSpec, E> {
                port_number(n).map(PortSpec::from)
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<PortSpec, E> {
                self.visit_i64(i64::try_from(n).unwrap_or(i64::MAX))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<PortSpec, E> {
                port_range_str(s).map(PortSpec::from)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<PortSpec, A::Error> {
                let mut v = Vec::new();
                while let Some(PortItem(r)) = seq.next_element()? {
                    v.push(r);
                }
                Ok(PortSpec(v))
            }
        }
        d.deserialize_any(V)
    }
}

impl Serialize for PortSpec {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        let mut seq = s.serialize_seq(Some(self.0.len()))?;
        for r in &self.0 {
            if r.start == r.end {
                seq.serialize_element(&r.start)?;
            } else {
                seq.serialize_element(&r.to_string())?;
            }
        }
        seq.end()
    }
}

/// Accepts `"x"` as well as `["x", "y"]`.
fn one_or_many<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => vec![s],
        OneOrMany::Many(v) => v,
    })
}

/// What a route does with a matched connection.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
#[non_exhaustive]
// Configuration, built once per load and kept in the compiled route (never moved on a data
// path); boxing `ForwardAction` would change the public API for a few hundred bytes per route.
#[allow(clippy::large_enum_variant)]
pub enum RouteAction {
    /// Forward to one of the targets (plain TCP, TLS passthrough, termination, re-encryption).
    Forward(ForwardAction),
    /// Answer with a built-in handler (redirect, block, echo, static) or a registered one.
    SocketHandler(HandlerAction),
}

/// `type = "forward"`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct ForwardAction {
    /// Backends; one is picked per connection by `load_balancing`.
    #[serde(default, alias = "target", deserialize_with = "targets")]
    pub targets: Vec<Target>,
    /// TLS handling; `None` forwards bytes as they come (which for TLS is passthrough).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsConfig>,
    /// PROXY header sent to the backend before any payload.
    #[serde(default, skip_serializing_if = "SendProxyProtocol::is_off")]
    pub send_proxy_protocol: SendProxyProtocol,
    /// How a target is picked.
    #[serde(default)]
    pub load_balancing: LoadBalancing,
    /// Deadline for the TCP connect to a target (default: `[defaults] connect_timeout`, 10 s).
    /// The route's `timeouts.connect` wins over it.
    #[serde(default, with = "crate::duration::option", skip_serializing_if = "Option::is_none")]
    pub connect_timeout: Option<Duration>,
    /// Serve the route with the HTTP layer: every request is routed on its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<crate::http::HttpOptions>,
    /// Who forwards: the proxy process (default) or the kernel's NAT rules (`"nftables"`).
    #[serde(default, skip_serializing_if = "ForwardingEngine::is_proxy")]
    pub forwarding_engine: ForwardingEngine,
    /// Options of kernel forwarding; only with `forwarding_engine = "nftables"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nftables: Option<NftablesOptions>,
    /// Passive health of the targets (default: `[defaults] health`, a 10 s cool-down).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<HealthOptions>,
    /// What the end of one side of a plain TCP connection (its FIN) does (default:
    /// `[defaults] half_close`, true). `true`: the other side's write half is shut down and
    /// the opposite direction runs on until it ends too (TCP half-close, as HAProxy and Envoy).
    /// `false`: the connection closes once what the other direction was writing is written
    /// (nginx's `proxy_half_close off`, its default), which saves a system call and a
    /// wake-up per connection but cuts off a client that sends its request, shuts its write
    /// side down and then waits for the answer. Plain TCP and TLS passthrough only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub half_close: Option<bool>,
}

/// `health = { cooldown = "10s" }`: passive health checks of a route's targets. A failed
/// connect marks a target down; load balancing skips a down target until `cooldown` has
/// passed since the failure, then lets one connection try it again (a success marks it up, a
/// failure starts another cool-down). When every target is down they are tried anyway.
///
/// `check = { interval = "5s", timeout = "1s", rise = 2, fall = 3 }` adds active checks
/// ([`HealthCheck`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct HealthOptions {
    /// How long a target that failed a connect is skipped (default 10 s; `"0s"`: never
    /// skipped, every connection may try it).
    #[serde(default = "default_cooldown", with = "crate::duration")]
    pub cooldown: Duration,
    /// Active TCP checks of every target (default: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check: Option<HealthCheck>,
}

/// `health.check`: active TCP checks. Every `interval` the engine connects to each target
/// (closing at once; no bytes sent) within `timeout`; `fall` failed checks in a row mark the
/// target down (load balancing skips it, as a passive down, but no connection is offered to
/// it after a cool-down), `rise` passed checks in a row mark it up again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct HealthCheck {
    /// Time between two checks of a target (default 5 s; 100 ms to 24 h).
    #[serde(default = "default_check_interval", with = "crate::duration")]
    pub interval: Duration,
    /// Deadline of one check's connect (default 1 s; at most `interval`).
    #[serde(default = "default_check_timeout", with = "crate::duration")]
    pub timeout: Duration,
    /// Passed checks in a row that bring a down target back (default 2).
    #[serde(default = "default_rise")]
    pub rise: u32,
    /// Failed checks in a row that mark a target down (default 3).
    #[serde(default = "default_fall")]
    pub fall: u32,
}

/// The longest `health.cooldown` accepted.
pub const MAX_HEALTH_COOLDOWN: Duration = Duration::from_secs(24 * 3600);

/// The shortest `health.check.interval` accepted.
pub const MIN_HEALTH_CHECK_INTERVAL: Duration = Duration::from_millis(100);

/// The largest `health.check.rise` and `fall` accepted.
pub const MAX_HEALTH_CHECK_STREAK: u32 = 1000;

fn default_cooldown() -> Duration {
    Duration::from_secs(10)
}

fn default_check_interval() -> Duration {
    Duration::from_secs(5)
}

fn default_check_timeout() -> Duration {
    Duration::from_secs(1)
}

fn default_rise() -> u32 {
    2
}

fn default_fall() -> u32 {
    3
}

impl HealthOptions {
    /// A cool-down of `cooldown`, no active checks.
    pub const fn with_cooldown(cooldown: Duration) -> Self {
        Self { cooldown, check: None }
    }

    /// Adds active checks.
    #[must_use]
    pub const fn with_check(mut self, check: HealthCheck) -> Self {
        self.check = Some(check);
        self
    }

    /// What is wrong with the cool-down, if anything ([`problems`](Self::problems) has
    /// every key).
    pub fn problem(&self) -> Option<&'static str> {
        (self.cooldown > MAX_HEALTH_COOLDOWN).then_some("cooldown must be at most 24h")
    }

    /// Every problem of these options: the key under `health` (`cooldown`,
    /// `check.interval`, ...) and what is wrong with it.
    pub fn problems(&self) -> Vec<(&'static str, &'static str)> {
        let mut out = Vec::new();
        if let Some(msg) = self.problem() {
            out.push(("cooldown", msg));
        }
        if let Some(c) = &self.check {
            if c.interval < MIN_HEALTH_CHECK_INTERVAL {
                out.push(("check.interval", "interval must be at least 100ms"));
            } else if c.interval > MAX_HEALTH_COOLDOWN {
                out.push(("check.interval", "interval must be at most 24h"));
            }
            if c.timeout.is_zero() {
                out.push(("check.timeout", "timeout must be longer than zero"));
            } else if c.timeout > c.interval {
                out.push(("check.timeout", "timeout must not be longer than check.interval"));
            }
            if c.rise == 0 || c.rise > MAX_HEALTH_CHECK_STREAK {
                out.push(("check.rise", "rise must be between 1 and 1000"));
            }
            if c.fall == 0 || c.fall > MAX_HEALTH_CHECK_STREAK {
                out.push(("check.fall", "fall must be between 1 and 1000"));
            }
        }
        out
    }
}

impl Default for HealthOptions {
    fn default() -> Self {
        Self { cooldown: default_cooldown(), check: None }
    }
}

impl HealthCheck {
    /// Checks every `interval` within `timeout`; `rise` passes bring a target up, `fall`
    /// failures take it down.
    pub const fn new(interval: Duration, timeout: Duration, rise: u32, fall: u32) -> Self {
        Self { interval, timeout, rise, fall }
    }
}

impl Default for HealthCheck {
    fn default() -> Self {
        Self {
            interval: default_check_interval(),
            timeout: default_check_timeout(),
            rise: default_rise(),
            fall: default_fall(),
        }
    }
}

impl ForwardAction {
    /// Forward to these targets, plain, without PROXY header.
    pub fn to(targets: Vec<Target>) -> Self {
        Self {
            targets,
            tls: None,
            send_proxy_protocol: SendProxyProtocol::Off,
            load_balancing: LoadBalancing::default(),
            connect_timeout: None,
            http: None,
            forwarding_engine: ForwardingEngine::Proxy,
            nftables: None,
            health: None,
            half_close: None,
        }
    }

    /// Sets the passive health options of the targets.
    pub fn with_health(mut self, health: HealthOptions) -> Self {
        self.health = Some(health);
        self
    }

    /// Serves the route with the HTTP layer (request by request).
    pub fn with_http(mut self, http: crate::http::HttpOptions) -> Self {
        self.http = Some(http);
        self
    }

    /// Forwarded by the kernel's nftables NAT rules with these options instead of the proxy
    /// process (`forwarding_engine = "nftables"`).
    pub fn with_nftables(mut self, options: NftablesOptions) -> Self {
        self.forwarding_engine = ForwardingEngine::Nftables;
        self.nftables = Some(options);
        self
    }

    /// Whether the kernel forwards this route (`forwarding_engine = "nftables"`).
    pub const fn is_kernel_forwarded(&self) -> bool {
        matches!(self.forwarding_engine, ForwardingEngine::Nftables)
    }

    /// Sets the TLS block.
    pub fn with_tls(mut self, tls: TlsConfig) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Sets the PROXY header sent to the backend.
    pub fn with_proxy_protocol(mut self, v: SendProxyProtocol) -> Self {
        self.send_proxy_protocol = v;
        self
    }

    /// Sets the load-balancing algorithm.
    pub fn with_load_balancing(mut self, lb: LoadBalancing) -> Self {
        self.load_balancing = lb;
        self
    }
}

/// Who forwards a route's connections: `forwarding_engine = "proxy" | "nftables"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum ForwardingEngine {
    /// The proxy process accepts, routes and copies (default).
    #[default]
    Proxy,
    /// Kernel NAT rules (nftables) forward the port: layer 4 only, no user-space work.
    Nftables,
}

impl ForwardingEngine {
    /// Whether this is the default, the proxy process.
    pub const fn is_proxy(&self) -> bool {
        matches!(self, Self::Proxy)
    }
}

/// `nftables = { preserve_source_ip, protocol }` of a kernel-forwarded route.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct NftablesOptions {
    /// `true`: the target sees the client's address (its replies must route back through
    /// this host). `false` (default): the source is masqueraded to this host's address.
    #[serde(default)]
    pub preserve_source_ip: bool,
    /// `"tcp"` (default), `"udp"` or `"all"` (both).
    #[serde(default)]
    pub protocol: NftablesProtocol,
}

impl NftablesOptions {
    /// Masqueraded TCP, the defaults.
    pub const fn new() -> Self {
        Self { preserve_source_ip: false, protocol: NftablesProtocol::Tcp }
    }

    /// Sets `preserve_source_ip`.
    pub const fn with_preserve_source_ip(mut self, preserve: bool) -> Self {
        self.preserve_source_ip = preserve;
        self
    }

    /// Sets the protocol.
    pub const fn with_protocol(mut self, protocol: NftablesProtocol) -> Self {
        self.protocol = protocol;
        self
    }
}

/// The transport protocols a kernel-forwarded route forwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum NftablesProtocol {
    /// TCP only (default).
    #[default]
    Tcp,
    /// UDP only.
    Udp,
    /// TCP and UDP.
    All,
}

impl NftablesProtocol {
    /// Whether TCP is forwarded.
    pub const fn tcp(self) -> bool {
        matches!(self, Self::Tcp | Self::All)
    }

    /// `"tcp"`, `"udp"` or `"all"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
            Self::All => "all",
        }
    }
}

/// Accepts one target table as well as a list.
fn targets<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Target>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        Many(Vec<Target>),
        One(Target),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(t) => vec![t],
        OneOrMany::Many(v) => v,
    })
}

/// A backend address.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct Target {
    /// Host name or IP address.
    pub host: String,
    /// Port, or `"preserve"` for the port the client connected to.
    pub port: TargetPort,
}

impl Target {
    /// A target at `host:port`.
    pub fn new(host: impl Into<String>, port: u16) -> Self {
        Self { host: host.into(), port: TargetPort::Port(port) }
    }

    /// The host as an IP address when it is one (`"10.0.0.5"`, `"::1"`; brackets, which
    /// validation refuses in configs, are tolerated); `None` for a name to resolve.
    pub fn ip(&self) -> Option<std::net::IpAddr> {
        self.host.trim_start_matches('[').trim_end_matches(']').parse().ok()
    }
}

/// The port of a [`Target`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TargetPort {
    /// This port.
    Port(u16),
    /// The port the client connected to.
    Preserve,
}

impl TargetPort {
    /// The port to connect to for a connection accepted on `listen_port`.
    pub const fn resolve(self, listen_port: u16) -> u16 {
        match self {
            Self::Port(p) => p,
            Self::Preserve => listen_port,
        }
    }
}

impl<'de> Deserialize<'de> for TargetPort {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = TargetPort;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a port number or \"preserve\"")
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<TargetPort, E> {
                port_number(n).map(TargetPort::Port)
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<TargetPort, E> {
                self.visit_i64(i64::try_from(n).unwrap_or(i64::MAX))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<TargetPort, E> {
                if s == "preserve" {
                    Ok(TargetPort::Preserve)
                } else {
                    Err(E::invalid_value(de::Unexpected::Str(s), &self))
                }
            }
        }
        d.deserialize_any(V)
    }
}

impl Serialize for TargetPort {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Port(p) => s.serialize_u16(*p),
            Self::Preserve => s.serialize_str("preserve"),
        }
    }
}

/// PROXY protocol towards the backend: `false` (default), `true` (= `"v1"`), `"v1"`, `"v2"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum SendProxyProtocol {
    /// No header.
    #[default]
    Off,
    /// Text header.
    V1,
    /// Binary header.
    V2,
}

impl SendProxyProtocol {
    /// Whether no header is sent.
    pub const fn is_off(&self) -> bool {
        matches!(self, Self::Off)
    }
}

impl<'de> Deserialize<'de> for SendProxyProtocol {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = SendProxyProtocol;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("false, true, \"v1\" or \"v2\"")
            }
            fn visit_bool<E: de::Error>(self, b: bool) -> Result<SendProxyProtocol, E> {
                Ok(if b { SendProxyProtocol::V1 } else { SendProxyProtocol::Off })
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<SendProxyProtocol, E> {
                match s {
                    "v1" | "1" => Ok(SendProxyProtocol::V1),
                    "v2" | "2" => Ok(SendProxyProtocol::V2),
                    _ => Err(E::invalid_value(de::Unexpected::Str(s), &self)),
                }
            }
        }
        d.deserialize_any(V)
    }
}

impl Serialize for SendProxyProtocol {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Off => s.serialize_bool(false),
            Self::V1 => s.serialize_str("v1"),
            Self::V2 => s.serialize_str("v2"),
        }
    }
}

/// How a target is picked among several.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum LoadBalancing {
    /// In turn (default).
    #[default]
    RoundRobin,
    /// The target with the fewest open connections from this proxy.
    LeastConnections,
    /// A hash of the client IP, so a client keeps its target.
    IpHash,
}

/// TLS handling of a forward route.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct TlsConfig {
    /// Passthrough, terminate, or terminate and re-encrypt.
    pub mode: TlsMode,
    /// Certificate for terminating modes: PEM files, or `"auto"` (ACME).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate: Option<CertificateConfig>,
    /// CA file (PEM) that upstream certificates are verified against (re-encrypt).
    /// Without it the webpki roots are used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_ca: Option<PathBuf>,
    /// Verify the upstream certificate (re-encrypt); `false` is an explicit opt-out for
    /// internal targets.
    #[serde(default = "default_true")]
    pub upstream_verify: bool,
    /// Server name sent to and verified against the upstream (re-encrypt). Default: the
    /// target's host (an IP address is verified against the certificate's IP addresses and
    /// sends no SNI), as nginx's `proxy_ssl_name` and HTTP clients do. A name (`"backend.local"`)
    /// overrides it; `"{sni}"` sends and verifies the client's SNI (the target's host when
    /// the client sent none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_server_name: Option<String>,
    /// Lowest TLS version accepted from clients when terminating: `"1.2"` (default) or `"1.3"`.
    #[serde(default)]
    pub min_version: TlsVersion,
    /// Session tickets and session cache when terminating (default true).
    #[serde(default = "default_true")]
    pub session_resumption: bool,
    /// ALPN protocols offered when terminating, in preference order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub alpn: Vec<String>,
}

impl TlsConfig {
    /// A TLS block of this mode with every other field at its default.
    pub fn new(mode: TlsMode) -> Self {
        Self {
            mode,
            certificate: None,
            upstream_ca: None,
            upstream_verify: true,
            upstream_server_name: None,
            min_version: TlsVersion::default(),
            session_resumption: true,
            alpn: Vec::new(),
        }
    }

    /// Sets the certificate (PEM files).
    pub fn with_certificate(mut self, cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        self.certificate = Some(CertificateConfig::files(cert, key));
        self
    }

    /// Sets `certificate = "auto"`: a certificate from the `[acme]` CA for the route's domains.
    pub fn with_auto_certificate(mut self) -> Self {
        self.certificate = Some(CertificateConfig::Auto);
        self
    }

    /// Sets `upstream_server_name` (`"{sni}"`: the client's SNI).
    pub fn with_upstream_server_name(mut self, name: impl Into<String>) -> Self {
        self.upstream_server_name = Some(name.into());
        self
    }
}

/// TLS mode of a forward route.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum TlsMode {
    /// Route by SNI, forward the encrypted bytes untouched.
    Passthrough,
    /// Decrypt here, forward plain bytes.
    Terminate,
    /// Decrypt here, encrypt again towards the target.
    TerminateAndReencrypt,
}

/// Where a terminating route's certificate comes from: PEM files
/// (`certificate = { cert = "a.pem", key = "a.key" }`) or an ACME CA
/// (`certificate = "auto"`, which needs the route's `domains` and an `[acme]` section).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CertificateConfig {
    /// PEM files of a certificate chain and its private key.
    Files {
        /// Certificate chain, leaf first.
        cert: PathBuf,
        /// Private key (PKCS#8, PKCS#1 or SEC1).
        key: PathBuf,
    },
    /// `"auto"`: one certificate for the route's domains, obtained and renewed from the ACME
    /// CA of the `[acme]` section.
    Auto,
}

impl CertificateConfig {
    /// PEM files.
    pub fn files(cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        Self::Files { cert: cert.into(), key: key.into() }
    }

    /// Whether the certificate comes from ACME (`"auto"`).
    pub const fn is_auto(&self) -> bool {
        matches!(self, Self::Auto)
    }
}

impl<'de> Deserialize<'de> for CertificateConfig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = CertificateConfig;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("\"auto\" or a table { cert = \"FILE\", key = \"FILE\" }")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<CertificateConfig, E> {
                match s {
                    "auto" => Ok(CertificateConfig::Auto),
                    _ => Err(E::invalid_value(de::Unexpected::Str(s), &self)),
                }
            }
            fn visit_map<A: de::MapAccess<'de>>(
                self,
                mut m: A,
            ) -> Result<CertificateConfig, A::Error> {
                let (mut cert, mut key) = (None, None);
                while let Some(k) = m.next_key::<String>()? {
                    match k.as_str() {
                        "cert" if cert.is_none() => cert = Some(m.next_value::<PathBuf>()?),
                        "key" if key.is_none() => key = Some(m.next_value::<PathBuf>()?),
                        "cert" | "key" => {
                            return Err(de::Error::custom(format_args!("duplicate field `{k}`")));
                        }
                        other => return Err(de::Error::unknown_field(other, &["cert", "key"])),
                    }
                }
                Ok(CertificateConfig::Files {
                    cert: cert.ok_or_else(|| de::Error::missing_field("cert"))?,
                    key: key.ok_or_else(|| de::Error::missing_field("key"))?,
                })
            }
        }
        d.deserialize_any(V)
    }
}

impl Serialize for CertificateConfig {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        match self {
            Self::Auto => s.serialize_str("auto"),
            Self::Files { cert, key } => {
                let mut st = s.serialize_struct("CertificateConfig", 2)?;
                st.serialize_field("cert", cert)?;
                st.serialize_field("key", key)?;
                st.end()
            }
        }
    }
}

/// A TLS protocol version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub enum TlsVersion {
    /// TLS 1.2.
    #[default]
    Tls12,
    /// TLS 1.3.
    Tls13,
}

impl TlsVersion {
    /// `"1.2"` or `"1.3"`.
    pub const fn as_str(&self) -> &'static str {
        match self {
            Self::Tls12 => "1.2",
            Self::Tls13 => "1.3",
        }
    }

    /// Parses `"1.2"`, `"1.3"`, `"TLSv1.2"`, `"TLSv1.3"`.
    pub fn parse(s: &str) -> Option<Self> {
        match s.trim().trim_start_matches("TLSv").trim_start_matches("tlsv") {
            "1.2" => Some(Self::Tls12),
            "1.3" => Some(Self::Tls13),
            _ => None,
        }
    }
}

impl<'de> Deserialize<'de> for TlsVersion {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s)
            .ok_or_else(|| de::Error::invalid_value(de::Unexpected::Str(&s), &"\"1.2\" or \"1.3\""))
    }
}

impl Serialize for TlsVersion {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// `type = "socket-handler"`: a built-in handler (`redirect`, `block`, `echo`, `static`) or one
/// registered by a library user under its name.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct HandlerAction {
    /// Handler name.
    pub handler: String,
    /// HTTP status (`redirect`: 301/302/307/308, default 301; `block`, `static`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// `redirect`: location template with `{domain}`, `{path}`, `{port}`, `{query}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    /// `block` and `static`: response body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    /// `static`: response headers.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
}

impl HandlerAction {
    /// A handler action by name with no options.
    pub fn new(handler: impl Into<String>) -> Self {
        Self {
            handler: handler.into(),
            status: None,
            location: None,
            body: None,
            headers: BTreeMap::new(),
        }
    }
}

/// Route-level access control and limits. Addresses are the real client's (after PROXY).
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct RouteSecurity {
    /// Only these addresses / CIDR blocks may use the route (empty: everyone).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ip_allow_list: Vec<String>,
    /// These may not; the block list wins over the allow list.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ip_block_list: Vec<String>,
    /// Open connections on this route at most.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u32>,
    /// Open connections on this route per client IP at most (0 = unlimited).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections_per_ip: Option<u32>,
    /// New connections on this route per client IP and minute at most.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit_per_minute: Option<u32>,
    /// HTTP routes: Basic authentication against an htpasswd file, per request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub basic_auth: Option<crate::policy::BasicAuth>,
    /// HTTP routes: a bearer JWT checked per request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt: Option<Box<crate::policy::JwtAuth>>,
    /// HTTP routes: requests per window and client address (or header value) -> 429.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<crate::policy::RequestRateLimit>,
}

impl RouteSecurity {
    /// Sets `basic_auth`.
    pub fn with_basic_auth(mut self, b: crate::policy::BasicAuth) -> Self {
        self.basic_auth = Some(b);
        self
    }

    /// Sets `jwt`.
    pub fn with_jwt(mut self, j: crate::policy::JwtAuth) -> Self {
        self.jwt = Some(Box::new(j));
        self
    }

    /// Sets the per-request `rate_limit`.
    pub fn with_rate_limit(mut self, r: crate::policy::RequestRateLimit) -> Self {
        self.rate_limit = Some(r);
        self
    }

    /// Whether a per-request policy (`basic_auth`, `jwt`, `rate_limit`) is set: those apply
    /// to HTTP routes only.
    pub fn has_request_policy(&self) -> bool {
        self.basic_auth.is_some() || self.jwt.is_some() || self.rate_limit.is_some()
    }
}
