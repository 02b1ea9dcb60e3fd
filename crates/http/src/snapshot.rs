//! An immutable snapshot of what the HTTP layer serves: the route table, what each route
//! needs at request time (precomputed header values, pools, handler responses), and the
//! settings. Swapped whole on reload; every request loads the current one.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::uri::Authority;
use parking_lot::Mutex;
use smartproxy_metrics::{Metrics, RouteHandle};
use smartproxy_routing::{
    CompiledRoute, HttpSettings, RouteAction, RouteTable, SendProxyProtocol, TcpKeepalive,
    Template, TlsMode, UpstreamProtocol,
};

use crate::auth::Credentials;
use crate::headers::via_values;
use crate::location::{PrefixInverse, prefix_inverse};
use crate::policy::Policies;
use crate::pool::Pool;
use crate::service::RouteConnSettings;
use crate::upstream::UpstreamTls;

/// The settings of a snapshot.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) http: HttpSettings,
    pub(crate) connect_timeout: Duration,
    pub(crate) tunnel_idle: Duration,
}

/// Pools shared across routes and reloads, by what makes connections interchangeable.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct PoolKey {
    host: Box<str>,
    port: u16,
    upstream: UpstreamProtocol,
    /// Route name and client SNI for re-encrypting routes (their TLS settings differ).
    tls: Option<(Box<str>, Option<Box<str>>)>,
    max_idle: usize,
    idle_timeout: Duration,
}

/// The registry behind [`PoolKey`]s (weak: a pool lives as long as a snapshot uses it).
#[derive(Debug, Default)]
pub(crate) struct Pools(Mutex<HashMap<PoolKey, Weak<Pool>>>);

impl Pools {
    fn get(&self, key: PoolKey) -> Arc<Pool> {
        let mut map = self.0.lock();
        if let Some(p) = map.get(&key).and_then(Weak::upgrade) {
            return p;
        }
        map.retain(|_, w| w.strong_count() > 0);
        let p = Pool::new(key.max_idle, key.idle_timeout);
        map.insert(key, Arc::downgrade(&p));
        p
    }

    /// Idle connections over every live pool.
    pub(crate) fn idle(&self) -> usize {
        self.0.lock().values().filter_map(Weak::upgrade).map(|p| p.idle()).sum()
    }
}

/// A pool variant of a target: the port (preserved ports differ) and the client SNI
/// (re-encrypting routes).
type Variant = (u16, Option<Box<str>>);

/// A target of a proxied route.
pub(crate) struct TargetState {
    pub(crate) host: Arc<str>,
    /// `None`: `port = "preserve"`.
    pub(crate) port: Option<u16>,
    /// The host as an IP address, when it is one (no resolver needed).
    pub(crate) ip: Option<IpAddr>,
    /// Unique id (private pools of PROXY-header routes are keyed by it).
    pub(crate) id: usize,
    /// The pool of a fixed-port, plain target: no lock to find it.
    fixed: Option<Arc<Pool>>,
    /// Other variants (preserved port, client SNI), found under a lock.
    variants: Mutex<Vec<(Variant, Arc<Pool>)>>,
}

impl std::fmt::Debug for TargetState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TargetState").field("host", &self.host).field("port", &self.port).finish()
    }
}

impl TargetState {
    /// `host:port` (brackets around an IPv6 address).
    pub(crate) fn authority(&self, port: u16) -> String {
        if self.host.contains(':') {
            format!("[{}]:{port}", self.host)
        } else {
            format!("{}:{port}", self.host)
        }
    }
}

/// A route served by forwarding.
#[derive(Debug)]
pub(crate) struct ProxyRoute {
    pub(crate) upstream: UpstreamProtocol,
    pub(crate) forwarded_headers: bool,
    pub(crate) forwarded: bool,
    pub(crate) preserve_host: bool,
    pub(crate) websocket: bool,
    /// `Via` values by protocol version (1.0, 1.1, 2, 3).
    pub(crate) via: Option<[HeaderValue; 4]>,
    pub(crate) response_timeout: Duration,
    pub(crate) connect_timeout: Duration,
    /// Upgraded connections (WebSocket) close after this long without a byte.
    pub(crate) tunnel_idle: Duration,
    /// Probes on the backend connections this route opens.
    pub(crate) tcp_keepalive: TcpKeepalive,
    pub(crate) proxy_protocol: SendProxyProtocol,
    /// Re-encrypt towards the targets.
    pub(crate) tls: bool,
    pub(crate) targets: Box<[TargetState]>,
    /// `Host` / `:authority` per target when `preserve_host = false` (fixed ports).
    pub(crate) target_hosts: Box<[Option<(HeaderValue, Authority)>]>,
    /// `request_headers`, `response_headers`.
    pub(crate) request_ops: Option<HeaderOps>,
    pub(crate) response_ops: Option<HeaderOps>,
    /// `rewrite_path`: the pattern and the replacement.
    pub(crate) rewrite: Option<(regex::Regex, String)>,
    /// `rewrite_location`.
    pub(crate) rewrite_location: bool,
    /// The inverse of a prefix `rewrite_path`, for `Location` paths.
    pub(crate) location_inverse: Option<PrefixInverse>,
    /// CORS, authentication, request rate.
    pub(crate) policy: Option<Box<Policies>>,
}

impl ProxyRoute {
    /// Whether a request or response header operation has a templated value (expanded per
    /// request).
    pub(crate) fn has_templated_ops(&self) -> bool {
        [&self.request_ops, &self.response_ops]
            .into_iter()
            .any(|o| o.as_ref().is_some_and(HeaderOps::templated))
    }
}

/// A header value of `set` / `add`: fixed, or expanded per request.
#[derive(Debug)]
pub(crate) enum OpValue {
    Fixed(HeaderValue),
    Template(Template),
}

/// Compiled `request_headers` / `response_headers`.
#[derive(Debug, Default)]
pub(crate) struct HeaderOps {
    pub(crate) remove: Vec<HeaderName>,
    pub(crate) set: Vec<(HeaderName, OpValue)>,
    pub(crate) add: Vec<(HeaderName, OpValue)>,
}

impl HeaderOps {
    fn compile(a: &smartproxy_routing::HeaderActions, route: &str) -> Option<Self> {
        let name = |n: &str| match HeaderName::from_bytes(n.as_bytes()) {
            Ok(n) => Some(n),
            Err(_) => {
                tracing::warn!(route, header = n, "not a valid header name; left out");
                None
            }
        };
        let value = |v: &str| {
            let t = Template::parse(v);
            if t.is_literal() {
                HeaderValue::from_str(v).ok().map(OpValue::Fixed)
            } else {
                Some(OpValue::Template(t))
            }
        };
        let ops = Self {
            remove: a.remove.iter().filter_map(|n| name(n)).collect(),
            set: a.set.iter().filter_map(|(n, v)| Some((name(n)?, value(v)?))).collect(),
            add: a.add.iter().filter_map(|(n, v)| Some((name(n)?, value(v)?))).collect(),
        };
        (!(ops.remove.is_empty() && ops.set.is_empty() && ops.add.is_empty())).then_some(ops)
    }

    /// Whether a value is a template (expanded per request).
    pub(crate) fn templated(&self) -> bool {
        self.set.iter().chain(&self.add).any(|(_, v)| matches!(v, OpValue::Template(_)))
    }

    /// Applies the operations; `expanded` holds the template values in `set`, `add` order.
    pub(crate) fn apply(&self, h: &mut HeaderMap, expanded: &[HeaderValue]) {
        for n in &self.remove {
            h.remove(n);
        }
        let mut e = expanded.iter();
        for (n, v) in &self.set {
            let v = match v {
                OpValue::Fixed(v) => Some(v.clone()),
                OpValue::Template(_) => e.next().cloned(),
            };
            if let Some(v) = v {
                h.insert(n, v);
            }
        }
        for (n, v) in &self.add {
            let v = match v {
                OpValue::Fixed(v) => Some(v.clone()),
                OpValue::Template(_) => e.next().cloned(),
            };
            if let Some(v) = v {
                h.append(n, v);
            }
        }
    }

    /// Expands the template values for one request, in `set`, `add` order (a value that
    /// expands to something not allowed in a header is sent empty).
    pub(crate) fn expand(&self, vars: &smartproxy_routing::TemplateVars<'_>) -> Vec<HeaderValue> {
        self.set
            .iter()
            .chain(&self.add)
            .filter_map(|(_, v)| match v {
                OpValue::Template(t) => Some(
                    // From the String itself: no second allocation and copy.
                    HeaderValue::try_from(t.expand_to_string(vars))
                        .unwrap_or(HeaderValue::from_static("")),
                ),
                OpValue::Fixed(_) => None,
            })
            .collect()
    }
}

/// A route answered by a built-in handler, request by request.
#[derive(Debug)]
pub(crate) enum HandlerRoute {
    Redirect { location: Template, status: StatusCode },
    Respond { status: StatusCode, headers: HeaderMap, body: Bytes },
}

#[derive(Debug)]
pub(crate) enum RouteKind {
    Proxy(Box<ProxyRoute>),
    Handler(HandlerRoute),
    /// Not served by the HTTP layer (a layer-4 route, or a connection-level handler).
    Other,
}

#[derive(Debug)]
pub(crate) struct RouteState {
    pub(crate) metrics: Option<RouteHandle>,
    pub(crate) kind: RouteKind,
}

/// What the HTTP layer serves, at one instant.
pub(crate) struct Snapshot {
    pub(crate) table: Arc<RouteTable>,
    pub(crate) routes: Box<[RouteState]>,
    pub(crate) settings: Settings,
    pub(crate) tls: Option<Arc<dyn UpstreamTls>>,
    /// A request may read its connection's local address ([`crate::ConnInfo::local`]): some
    /// route sends a PROXY header to its targets (its destination), redirects (`{domain}`
    /// of a request without a Host) or sets templated header values.
    pub(crate) needs_local: bool,
}

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshot").field("routes", &self.routes.len()).finish_non_exhaustive()
    }
}

static NEXT_TARGET_ID: AtomicUsize = AtomicUsize::new(0);

/// Timeouts are added to instants: a configured "1000000d" must not overflow one. Ten years
/// is "never" for a connection.
pub(crate) fn cap(d: Duration) -> Duration {
    d.min(Duration::from_secs(10 * 365 * 86_400))
}

impl Snapshot {
    pub(crate) fn build(
        table: Arc<RouteTable>,
        settings: Settings,
        route_settings: &[RouteConnSettings],
        tls: Option<Arc<dyn UpstreamTls>>,
        metrics: Option<&Metrics>,
        pools: &Pools,
        creds: Option<&Credentials>,
    ) -> Self {
        let routes = table
            .routes()
            .iter()
            .map(|r| RouteState {
                metrics: metrics.map(|m| m.route(r.name())),
                kind: kind(r, &settings, route_settings.get(r.index()), pools, creds),
            })
            .collect::<Box<[RouteState]>>();
        let needs_local = routes.iter().any(|r| match &r.kind {
            RouteKind::Proxy(p) => {
                p.proxy_protocol != SendProxyProtocol::Off || p.has_templated_ops()
            }
            RouteKind::Handler(HandlerRoute::Redirect { .. }) => true,
            RouteKind::Handler(HandlerRoute::Respond { .. }) | RouteKind::Other => false,
        });
        Self { table, routes, settings, tls, needs_local }
    }

    pub(crate) fn route_metrics(&self, i: usize) -> Option<&RouteHandle> {
        self.routes.get(i).and_then(|r| r.metrics.as_ref())
    }

    pub(crate) fn route_name(&self, i: usize) -> &str {
        self.table.routes().get(i).map_or("", CompiledRoute::name)
    }

    pub(crate) fn route(&self, i: usize) -> Option<(&CompiledRoute, &RouteState)> {
        Some((self.table.routes().get(i)?, self.routes.get(i)?))
    }

    /// The shared pool for target `t` of route `r` on `port` (and client SNI when
    /// re-encrypting).
    pub(crate) fn pool(
        &self,
        pools: &Pools,
        route: &CompiledRoute,
        pr: &ProxyRoute,
        t: &TargetState,
        port: u16,
        sni: Option<&str>,
    ) -> Arc<Pool> {
        if !pr.tls
            && let Some(p) = &t.fixed
        {
            return Arc::clone(p);
        }
        let sni = if pr.tls { sni } else { None };
        let mut v = t.variants.lock();
        if let Some((_, p)) = v.iter().find(|((p, s), _)| *p == port && s.as_deref() == sni) {
            return Arc::clone(p);
        }
        let p = pools.get(self.key(route, pr, t, port, sni));
        v.push(((port, sni.map(Into::into)), Arc::clone(&p)));
        p
    }

    fn key(
        &self,
        route: &CompiledRoute,
        pr: &ProxyRoute,
        t: &TargetState,
        port: u16,
        sni: Option<&str>,
    ) -> PoolKey {
        key(&self.settings, route, pr, t, port, sni)
    }
}

fn key(
    s: &Settings,
    route: &CompiledRoute,
    pr: &ProxyRoute,
    t: &TargetState,
    port: u16,
    sni: Option<&str>,
) -> PoolKey {
    PoolKey {
        host: t.host.as_ref().into(),
        port,
        upstream: pr.upstream,
        tls: pr.tls.then(|| (route.name().into(), sni.map(Into::into))),
        max_idle: s.http.http_pool_max_idle,
        idle_timeout: s.http.http_pool_idle_timeout,
    }
}

fn kind(
    r: &CompiledRoute,
    s: &Settings,
    rs: Option<&RouteConnSettings>,
    pools: &Pools,
    creds: Option<&Credentials>,
) -> RouteKind {
    match &r.config().action {
        RouteAction::Forward(f) => {
            let Some(h) = &f.http else { return RouteKind::Other };
            let tls = f.tls.as_ref().is_some_and(|t| t.mode == TlsMode::TerminateAndReencrypt);
            let mut pr = ProxyRoute {
                upstream: h.upstream,
                forwarded_headers: h.forwarded_headers,
                forwarded: h.forwarded,
                preserve_host: h.preserve_host,
                websocket: h.websocket,
                via: h.via.pseudonym().and_then(via_values),
                response_timeout: cap(h.response_timeout.unwrap_or(s.http.http_response_timeout)),
                connect_timeout: cap(rs.map_or_else(
                    || f.connect_timeout.unwrap_or(s.connect_timeout),
                    |rs| rs.connect_timeout,
                )),
                tunnel_idle: cap(rs.map_or(s.tunnel_idle, |rs| rs.tunnel_inactivity)),
                tcp_keepalive: rs.map_or(TcpKeepalive::Off, |rs| rs.tcp_keepalive),
                proxy_protocol: f.send_proxy_protocol,
                tls,
                targets: Box::new([]),
                target_hosts: Box::new([]),
                request_ops: h
                    .request_headers
                    .as_ref()
                    .and_then(|a| HeaderOps::compile(a, r.name())),
                response_ops: h
                    .response_headers
                    .as_ref()
                    .and_then(|a| HeaderOps::compile(a, r.name())),
                rewrite: h.rewrite_path.as_ref().and_then(|rw| {
                    match regex::RegexBuilder::new(&rw.from).size_limit(1 << 20).build() {
                        Ok(re) => Some((re, rw.to.clone())),
                        Err(e) => {
                            tracing::warn!(
                                route = r.name(),
                                "rewrite_path.from does not compile: {e}"
                            );
                            None
                        }
                    }
                }),
                rewrite_location: h.rewrite_location,
                location_inverse: h
                    .rewrite_path
                    .as_ref()
                    .and_then(|rw| prefix_inverse(&rw.from, &rw.to)),
                policy: Policies::compile(r, h, creds),
            };
            let targets: Vec<TargetState> = f
                .targets
                .iter()
                .map(|t| {
                    let port = match t.port {
                        smartproxy_routing::TargetPort::Port(p) => Some(p),
                        _ => None,
                    };
                    TargetState {
                        host: t.host.trim().into(),
                        port,
                        ip: t.host.trim().parse().ok(),
                        id: NEXT_TARGET_ID.fetch_add(1, Ordering::Relaxed),
                        fixed: None,
                        variants: Mutex::new(Vec::new()),
                    }
                })
                .collect();
            let mut targets = targets;
            for t in &mut targets {
                if let (Some(port), false) = (t.port, tls) {
                    t.fixed = Some(pools.get(key(s, r, &pr, t, port, None)));
                }
            }
            pr.target_hosts = targets
                .iter()
                .map(|t| {
                    let port = t.port?;
                    let a = t.authority(port);
                    Some((HeaderValue::from_str(&a).ok()?, a.parse::<Authority>().ok()?))
                })
                .collect();
            pr.targets = targets.into_boxed_slice();
            RouteKind::Proxy(Box::new(pr))
        }
        RouteAction::SocketHandler(h) => {
            let status = |default: u16| {
                h.status.and_then(|s| StatusCode::from_u16(s).ok()).unwrap_or_else(|| {
                    StatusCode::from_u16(default).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
                })
            };
            match h.handler.as_str() {
                "redirect" => RouteKind::Handler(HandlerRoute::Redirect {
                    location: Template::parse(h.location.as_deref().unwrap_or("/")),
                    status: status(301),
                }),
                "block" => {
                    let st = status(403);
                    let body = match &h.body {
                        Some(b) => Bytes::from(b.clone()),
                        None => Bytes::from(format!(
                            "{}\n",
                            st.canonical_reason().unwrap_or("blocked").to_ascii_lowercase()
                        )),
                    };
                    RouteKind::Handler(HandlerRoute::Respond {
                        status: st,
                        headers: HeaderMap::new(),
                        body,
                    })
                }
                "static" => {
                    let mut headers = HeaderMap::new();
                    for (k, v) in &h.headers {
                        match (HeaderName::from_bytes(k.as_bytes()), HeaderValue::from_str(v)) {
                            (Ok(k), Ok(v)) => {
                                headers.append(k, v);
                            }
                            _ => tracing::warn!(
                                route = r.name(),
                                header = %k,
                                "static handler header is not a valid HTTP header; left out"
                            ),
                        }
                    }
                    RouteKind::Handler(HandlerRoute::Respond {
                        status: status(200),
                        headers,
                        body: Bytes::from(h.body.clone().unwrap_or_default()),
                    })
                }
                _ => RouteKind::Other,
            }
        }
        _ => RouteKind::Other,
    }
}
