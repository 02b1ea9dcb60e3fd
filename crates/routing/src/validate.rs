//! Validation: every error of a route list, each with its key path.

use std::collections::HashMap;

use crate::domain::{DomainPattern, may_overlap};
use crate::error::ValidationError;
use crate::ip::IpList;
use crate::matchers::{HeaderMatcher, Matchers};
use crate::model::{
    CertificateConfig, ForwardAction, HandlerAction, HealthOptions, LoadBalancing, RouteAction,
    RouteConfig, TargetPort, TlsMode, TlsVersion,
};
use crate::path::PathPattern;

/// Built-in socket handler names.
pub const BUILTIN_HANDLERS: &[&str] = &["redirect", "block", "echo", "static"];

/// `upstream_server_name = "{sni}"`: send and verify the client's SNI towards the upstream.
pub const UPSTREAM_SNI: &str = "{sni}";

/// Redirect statuses accepted by the `redirect` handler.
pub const REDIRECT_STATUSES: &[u16] = &[301, 302, 307, 308];

/// Options of [`validate_with`] and [`crate::RouteTable::compile_with`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ValidationOptions {
    /// Socket handler names registered by a library user, accepted besides the built-ins.
    pub custom_handlers: Vec<String>,
    /// Passive health of the targets of routes that set no `health` (`[defaults] health`).
    pub default_health: HealthOptions,
}

impl ValidationOptions {
    /// Accepts these handler names too.
    pub fn with_custom_handlers<I: IntoIterator<Item = S>, S: Into<String>>(
        mut self,
        names: I,
    ) -> Self {
        self.custom_handlers.extend(names.into_iter().map(Into::into));
        self
    }

    /// Routes without a `health` key use these options.
    pub fn with_default_health(mut self, health: HealthOptions) -> Self {
        self.default_health = health;
        self
    }
}

/// Checks a route list with the built-in handlers only. Returns every error.
pub fn validate(routes: &[RouteConfig]) -> Result<(), Vec<ValidationError>> {
    validate_with(routes, &ValidationOptions::default())
}

/// Checks a route list, accepting `opts.custom_handlers` as handler names. Returns every error.
pub fn validate_with(
    routes: &[RouteConfig],
    opts: &ValidationOptions,
) -> Result<(), Vec<ValidationError>> {
    let (_, errs) = check(routes, opts);
    if errs.is_empty() { Ok(()) } else { Err(errs) }
}

/// The effective name of route `index`.
pub(crate) fn route_name(route: &RouteConfig, index: usize) -> String {
    route.name.clone().unwrap_or_else(|| format!("route-{index}"))
}

struct Errs<'a> {
    prefix: String,
    out: &'a mut Vec<ValidationError>,
}

impl Errs<'_> {
    fn push(&mut self, key: impl AsRef<str>, msg: impl Into<String>) {
        self.out.push(ValidationError::new(format!("{}.{}", self.prefix, key.as_ref()), msg));
    }
}

/// Compiles the matchers of every route and collects every error. `matchers[i]` is `None`
/// when route `i` has an error in a pattern.
pub(crate) fn check(
    routes: &[RouteConfig],
    opts: &ValidationOptions,
) -> (Vec<Option<Matchers>>, Vec<ValidationError>) {
    let mut out = Vec::new();
    let mut compiled = Vec::with_capacity(routes.len());
    for (i, r) in routes.iter().enumerate() {
        let mut e = Errs { prefix: format!("routes[{i}]"), out: &mut out };
        compiled.push(check_route(r, opts, &mut e));
    }
    check_names(routes, &mut out);
    check_tls_conflicts(routes, &compiled, &mut out);
    crate::validate_http::check_http(routes, &mut out);
    crate::validate_policy::check_policies(routes, &mut out);
    check_engine_ports(routes, &mut out);
    // Route by route, in key order within a route as found.
    out.sort_by_key(|e| route_of(&e.path));
    (compiled, out)
}

fn check_route(r: &RouteConfig, opts: &ValidationOptions, e: &mut Errs<'_>) -> Option<Matchers> {
    let before = e.out.len();
    if let Some(name) = &r.name
        && name.trim().is_empty()
    {
        e.push("name", "name is empty");
    }

    // match
    let m = &r.matcher;
    if m.ports.0.is_empty() {
        e.push("match.ports", "no ports: a route needs at least one listening port");
    }
    for (j, pr) in m.ports.0.iter().enumerate() {
        if pr.start == 0 || pr.end == 0 {
            e.push(
                format!("match.ports[{j}]"),
                format!("port 0 in `{pr}` is not a listening port"),
            );
        } else if pr.start > pr.end {
            e.push(format!("match.ports[{j}]"), format!("range `{pr}` runs backwards"));
        }
    }
    let mut domains = Vec::with_capacity(m.domains.len());
    for (j, d) in m.domains.iter().enumerate() {
        match DomainPattern::parse(d) {
            Ok(p) => domains.push(p),
            Err(err) => e.push(format!("match.domains[{j}]"), err.to_string()),
        }
    }
    let path = match &m.path {
        None => None,
        Some(p) => match PathPattern::parse(p) {
            Ok(p) => Some(p),
            Err(err) => {
                e.push("match.path", err.to_string());
                None
            }
        },
    };
    let client_ip = ip_list(&m.client_ip, "match.client_ip", e);
    let mut tls_versions = Vec::new();
    for (j, v) in m.tls_version.iter().enumerate() {
        match TlsVersion::parse(v) {
            Some(v) => tls_versions.push(v),
            None => e.push(
                format!("match.tls_version[{j}]"),
                format!("unknown TLS version `{v}`: expected \"1.2\" or \"1.3\""),
            ),
        }
    }
    let mut headers = Vec::with_capacity(m.headers.len());
    for (name, value) in &m.headers {
        let key = format!("match.headers.{}", key(name));
        if name.is_empty() || !name.bytes().all(is_token_byte) {
            e.push(&key, format!("`{name}` is not a valid HTTP header name"));
            continue;
        }
        match HeaderMatcher::parse(value) {
            Ok(hm) => headers.push((name.to_ascii_lowercase().into_boxed_str(), hm)),
            Err(msg) => e.push(&key, msg),
        }
    }

    // action
    match &r.action {
        RouteAction::Forward(f) => {
            if f.targets.is_empty() {
                e.push("action.targets", "a forward route needs at least one target");
            }
            for (j, t) in f.targets.iter().enumerate() {
                let host = t.host.trim();
                if host.is_empty() {
                    e.push(format!("action.targets[{j}].host"), "host is empty");
                } else if host.starts_with('[') {
                    e.push(
                        format!("action.targets[{j}].host"),
                        format!("write the IPv6 address `{}` without brackets", t.host),
                    );
                } else if !valid_host(host) {
                    e.push(
                        format!("action.targets[{j}].host"),
                        format!("`{}` is not a host name or IP address", t.host),
                    );
                }
                if t.port == TargetPort::Port(0) {
                    e.push(
                        format!("action.targets[{j}].port"),
                        "port 0 is not a valid target port",
                    );
                }
            }
            if f.connect_timeout.is_some_and(|d| d.is_zero()) {
                e.push("action.connect_timeout", "connect timeout must be longer than zero");
            }
            if let Some(h) = f.health {
                for (key, msg) in h.problems() {
                    e.push(format!("action.health.{key}"), msg);
                }
                if h.check.is_some() && f.targets.iter().any(|t| t.port == TargetPort::Preserve) {
                    e.push(
                        "action.health.check",
                        "a target with port = \"preserve\" has no port to check",
                    );
                }
            }
            if f.half_close.is_some() && !f.is_kernel_forwarded() {
                let terminated = f.tls.as_ref().is_some_and(|t| t.mode != TlsMode::Passthrough);
                let served_by = if f.http.is_some() {
                    Some(
                        "the HTTP layer serves this route request by request: a half-closed client still gets its answers",
                    )
                } else if terminated {
                    Some(
                        "this route terminates TLS, whose end of stream is a close_notify alert, not the TCP FIN this setting decides on",
                    )
                } else {
                    None
                };
                if let Some(why) = served_by {
                    e.push(
                        "action.half_close",
                        format!(
                            "half_close applies to plain TCP and TLS passthrough copies; {why}"
                        ),
                    );
                }
            }
            if f.is_kernel_forwarded() {
                check_kernel_forwarded(r, f, e);
            } else if f.nftables.is_some() {
                e.push(
                    "action.nftables",
                    "nftables options apply only with forwarding_engine = \"nftables\"",
                );
            }
            if let Some(tls) = &f.tls {
                match tls.mode {
                    TlsMode::Terminate | TlsMode::TerminateAndReencrypt => {
                        if tls.certificate.is_none() {
                            e.push(
                                "action.tls.certificate",
                                format!("tls mode `{}` needs a certificate", mode_name(tls.mode)),
                            );
                        }
                    }
                    TlsMode::Passthrough => {
                        if tls.certificate.is_some() {
                            e.push(
                                "action.tls.certificate",
                                "a passthrough route does not use a certificate: the backend terminates TLS",
                            );
                        }
                        if !tls.alpn.is_empty() {
                            e.push("action.tls.alpn", "alpn only applies when terminating TLS");
                        }
                    }
                }
                if tls.mode != TlsMode::TerminateAndReencrypt {
                    if tls.upstream_ca.is_some() {
                        e.push(
                            "action.tls.upstream_ca",
                            "upstream_ca only applies to mode `terminate-and-reencrypt`",
                        );
                    }
                    if tls.upstream_server_name.is_some() {
                        e.push(
                            "action.tls.upstream_server_name",
                            "upstream_server_name only applies to mode `terminate-and-reencrypt`",
                        );
                    }
                }
                match &tls.certificate {
                    Some(CertificateConfig::Files { cert, key }) => {
                        if cert.as_os_str().is_empty() {
                            e.push("action.tls.certificate.cert", "certificate path is empty");
                        }
                        if key.as_os_str().is_empty() {
                            e.push("action.tls.certificate.key", "key path is empty");
                        }
                    }
                    Some(CertificateConfig::Auto) if tls.mode != TlsMode::Passthrough => {
                        check_auto_domains(&m.domains, e);
                    }
                    _ => {}
                }
                match tls.upstream_server_name.as_deref().map(str::trim) {
                    Some("") => {
                        e.push("action.tls.upstream_server_name", "upstream server name is empty");
                    }
                    Some(n) if n != UPSTREAM_SNI && (n.contains('{') || n.contains('}')) => {
                        e.push(
                            "action.tls.upstream_server_name",
                            format!(
                                "`{n}`: the only placeholder is \"{UPSTREAM_SNI}\" (the client's SNI); \
                                 otherwise give a DNS name or IP address"
                            ),
                        );
                    }
                    _ => {}
                }
                for (j, a) in tls.alpn.iter().enumerate() {
                    if a.is_empty() || a.len() > 255 {
                        e.push(
                            format!("action.tls.alpn[{j}]"),
                            "ALPN protocol must be 1 to 255 bytes",
                        );
                    }
                }
            }
        }
        RouteAction::SocketHandler(h) => check_handler(h, opts, e),
    }

    // security
    let (allow, block) = match &r.security {
        None => (Some(IpList::default()), Some(IpList::default())),
        Some(s) => {
            if s.max_connections == Some(0) {
                e.push(
                    "security.max_connections",
                    "max_connections = 0 would refuse every connection; leave it out for no limit",
                );
            }
            if s.rate_limit_per_minute == Some(0) {
                e.push(
                    "security.rate_limit_per_minute",
                    "rate_limit_per_minute = 0 would refuse every connection; leave it out for no limit",
                );
            }
            (
                ip_list(&s.ip_allow_list, "security.ip_allow_list", e),
                ip_list(&s.ip_block_list, "security.ip_block_list", e),
            )
        }
    };

    // timeouts
    if let Some(t) = &r.timeouts {
        for (key, msg) in t.problems() {
            e.push(format!("timeouts.{key}"), msg);
        }
    }

    if e.out.len() != before {
        return None;
    }
    Some(Matchers {
        domains: domains.into_boxed_slice(),
        path,
        client_ip: client_ip?,
        tls_versions: tls_versions.into_boxed_slice(),
        headers: headers.into_boxed_slice(),
        allow: allow?,
        block: block?,
    })
}

/// `certificate = "auto"`: one ACME certificate for the route's domains, which must be
/// names (wildcards need the DNS-01 challenge, which is not answered).
fn check_auto_domains(domains: &[String], e: &mut Errs<'_>) {
    if domains.is_empty() {
        e.push(
            "match.domains",
            "certificate = \"auto\" needs the route's domains: the ACME certificate is issued for them",
        );
    }
    for (j, d) in domains.iter().enumerate() {
        if d.contains('*') {
            e.push(
                format!("match.domains[{j}]"),
                format!(
                    "`{d}`: certificate = \"auto\" cannot cover a wildcard (it needs the DNS-01 \
                     challenge, which smartproxy does not answer); list the names, or give the \
                     route certificate files"
                ),
            );
        }
    }
}

/// What kernel forwarding (`forwarding_engine = "nftables"`) cannot honour: the kernel
/// rewrites the addresses of packets by port and never reads the stream, so nothing that needs
/// the first bytes, a user-space connection or per-connection logic can apply.
fn check_kernel_forwarded(r: &RouteConfig, f: &ForwardAction, e: &mut Errs<'_>) {
    const WHY: &str = "kernel forwarding (forwarding_engine = \"nftables\")";
    if f.tls.is_some() {
        e.push(
            "action.tls",
            format!(
                "{WHY} cannot handle TLS: the kernel rewrites packet addresses and never sees a \
                 handshake or a server name; use the proxy for TLS routes"
            ),
        );
    }
    if !f.send_proxy_protocol.is_off() {
        e.push(
            "action.send_proxy_protocol",
            format!(
                "{WHY} cannot send a PROXY header: the kernel does not write into the stream; \
                 to show the client's address to the target use nftables = \
                 {{ preserve_source_ip = true }}"
            ),
        );
    }
    if f.load_balancing == LoadBalancing::LeastConnections {
        e.push(
            "action.load_balancing",
            format!(
                "{WHY} cannot balance by least connections: the kernel does not count open \
                 connections per target; use \"round-robin\" or \"ip-hash\""
            ),
        );
    }
    if f.health.is_some() {
        e.push(
            "action.health",
            format!(
                "{WHY} picks targets in the kernel, which sees no failed connect: there is no \
                 health to keep"
            ),
        );
    }
    if f.half_close.is_some() {
        e.push(
            "action.half_close",
            format!(
                "half_close applies to plain TCP and TLS passthrough copies; {WHY} passes the \
                 FINs through as they come"
            ),
        );
    }
    if f.connect_timeout.is_some() {
        e.push(
            "action.connect_timeout",
            format!(
                "{WHY} makes no connection of its own to the target (the client's packets go \
                 through), so there is no connect to time out"
            ),
        );
    }
    let m = &r.matcher;
    let first_bytes = |what: &str| {
        format!(
            "{WHY} matches on the port only: the kernel does not read the first bytes of a \
             connection, so it cannot match {what}"
        )
    };
    if !m.domains.is_empty() {
        e.push("match.domains", first_bytes("domains (SNI or Host)"));
    }
    if m.path.is_some() {
        e.push("match.path", first_bytes("an HTTP path"));
    }
    if !m.headers.is_empty() {
        e.push("match.headers", first_bytes("HTTP headers"));
    }
    if !m.tls_version.is_empty() {
        e.push("match.tls_version", first_bytes("a TLS version"));
    }
    if !m.client_ip.is_empty() {
        e.push(
            "match.client_ip",
            format!(
                "{WHY} owns its ports, so no other route could take the clients that do not \
                 match; use security.ip_allow_list, which the kernel rules enforce"
            ),
        );
    }
    if let Some(s) = &r.security {
        if s.max_connections_per_ip.is_some() {
            e.push(
                "security.max_connections_per_ip",
                format!(
                    "{WHY} has no per-client limit; security.max_connections (a conntrack \
                     count) and the allow and block lists are what the kernel rules enforce"
                ),
            );
        }
        if s.rate_limit_per_minute.is_some() {
            e.push(
                "security.rate_limit_per_minute",
                format!(
                    "{WHY} has no rate limit; security.max_connections (a conntrack count) and \
                     the allow and block lists are what the kernel rules enforce"
                ),
            );
        }
    }
}

/// A kernel-forwarded TCP port that a proxied route (or a handler) listens on too: the NAT
/// rule would take every connection before the proxy could see it.
fn check_engine_ports(routes: &[RouteConfig], out: &mut Vec<ValidationError>) {
    for (i, k) in routes.iter().enumerate() {
        let RouteAction::Forward(f) = &k.action else { continue };
        let tcp = f.nftables.unwrap_or_default().protocol.tcp();
        if !k.enabled || !f.is_kernel_forwarded() || !tcp {
            continue;
        }
        for (j, p) in routes.iter().enumerate() {
            if !p.enabled || p.is_kernel_forwarded() {
                continue;
            }
            let Some(port) = common_port(k, p) else { continue };
            out.push(ValidationError::new(
                format!("routes[{i}].match.ports"),
                format!(
                    "TCP port {port} is forwarded by the kernel for this route and is also a \
                     port of route `{}` (routes[{j}]), which the proxy serves: the NAT rule \
                     would take every connection to it; give one of them another port (a \
                     route with nftables = {{ protocol = \"udp\" }} may share it)",
                    route_name(p, j)
                ),
            ));
        }
    }
}

fn check_handler(h: &HandlerAction, opts: &ValidationOptions, e: &mut Errs<'_>) {
    let name = h.handler.as_str();
    let builtin = BUILTIN_HANDLERS.contains(&name);
    if !builtin && !opts.custom_handlers.iter().any(|c| c == name) {
        let mut known: Vec<&str> = BUILTIN_HANDLERS.to_vec();
        known.extend(opts.custom_handlers.iter().map(String::as_str));
        e.push(
            "action.handler",
            format!("unknown handler `{name}`; known handlers: {}", known.join(", ")),
        );
        return;
    }
    if !builtin {
        return; // custom handlers take what they like
    }
    match name {
        "redirect" => {
            if let Some(s) = h.status
                && !REDIRECT_STATUSES.contains(&s)
            {
                e.push(
                    "action.status",
                    format!("redirect status {s} is not one of 301, 302, 307, 308"),
                );
            }
            match &h.location {
                None => e.push(
                    "action.location",
                    "a redirect needs a location, e.g. \"https://{domain}{path}\"",
                ),
                Some(l) if l.trim().is_empty() => e.push("action.location", "location is empty"),
                Some(_) => {}
            }
        }
        "block" | "static" => {
            if let Some(s) = h.status
                && !(100..=599).contains(&s)
            {
                e.push("action.status", format!("HTTP status {s} is not in 100..=599"));
            }
        }
        _ => {
            if h.status.is_some() {
                e.push("action.status", format!("handler `{name}` takes no status"));
            }
        }
    }
    if name != "redirect" && h.location.is_some() {
        e.push(
            "action.location",
            format!("handler `{name}` takes no location; only `redirect` does"),
        );
    }
    if !matches!(name, "block" | "static") && h.body.is_some() {
        e.push(
            "action.body",
            format!("handler `{name}` takes no body; only `block` and `static` do"),
        );
    }
    if name != "static" && !h.headers.is_empty() {
        e.push("action.headers", format!("handler `{name}` takes no headers; only `static` does"));
    }
    for k in h.headers.keys() {
        if k.is_empty() || !k.bytes().all(is_token_byte) {
            e.push(
                format!("action.headers.{}", key(k)),
                format!("`{k}` is not a valid HTTP header name"),
            );
        }
    }
}

fn ip_list(items: &[String], key: &str, e: &mut Errs<'_>) -> Option<IpList> {
    match IpList::parse(items) {
        Ok(l) => Some(l),
        Err(errs) => {
            for (j, err) in errs {
                e.push(format!("{key}[{j}]"), err.to_string());
            }
            None
        }
    }
}

fn route_of(path: &str) -> usize {
    path.strip_prefix("routes[")
        .and_then(|r| r.split(']').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(usize::MAX)
}

/// `name` as a key path segment: bare when it is a plain key, quoted otherwise.
fn key(name: &str) -> String {
    if !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        name.to_owned()
    } else {
        format!("{name:?}")
    }
}

fn check_names(routes: &[RouteConfig], out: &mut Vec<ValidationError>) {
    let mut seen: HashMap<String, usize> = HashMap::new();
    for (i, r) in routes.iter().enumerate() {
        let name = route_name(r, i);
        if let Some(first) = seen.get(&name) {
            out.push(ValidationError::new(
                format!("routes[{i}].name"),
                format!("duplicate route name `{name}` (also routes[{first}])"),
            ));
        } else {
            seen.insert(name, i);
        }
    }
}

/// A passthrough route and a terminating route that share a port and can match the same
/// server name: one of them can never see that name.
fn check_tls_conflicts(
    routes: &[RouteConfig],
    compiled: &[Option<Matchers>],
    out: &mut Vec<ValidationError>,
) {
    let mode = |r: &RouteConfig| match &r.action {
        RouteAction::Forward(f) => f.tls.as_ref().map(|t| t.mode),
        RouteAction::SocketHandler(_) => None,
    };
    for (i, a) in routes.iter().enumerate() {
        if !a.enabled || mode(a) != Some(TlsMode::Passthrough) {
            continue;
        }
        let Some(ma) = &compiled[i] else { continue };
        for (j, b) in routes.iter().enumerate() {
            if !b.enabled
                || !matches!(mode(b), Some(TlsMode::Terminate | TlsMode::TerminateAndReencrypt))
            {
                continue;
            }
            let Some(mb) = &compiled[j] else { continue };
            let Some(port) = common_port(a, b) else { continue };
            let domain = match (ma.domains.is_empty(), mb.domains.is_empty()) {
                (true, true) => Some("any name".to_owned()),
                (true, false) => Some(format!("`{}`", mb.domains[0])),
                (false, true) => Some(format!("`{}`", ma.domains[0])),
                (false, false) => ma.domains.iter().find_map(|da| {
                    mb.domains.iter().find(|db| may_overlap(da, db)).map(|db| {
                        if da == db { format!("`{da}`") } else { format!("`{da}` / `{db}`") }
                    })
                }),
            };
            if let Some(domain) = domain {
                out.push(ValidationError::new(
                    format!("routes[{i}].action.tls.mode"),
                    format!(
                        "passthrough route overlaps terminating route `{}` (routes[{j}]) on port {port} for {domain}",
                        route_name(b, j)
                    ),
                ));
            }
        }
    }
}

pub(crate) fn common_port(a: &RouteConfig, b: &RouteConfig) -> Option<u16> {
    for ra in &a.matcher.ports.0 {
        for rb in &b.matcher.ports.0 {
            let lo = ra.start.max(rb.start);
            let hi = ra.end.min(rb.end);
            if lo <= hi && lo != 0 {
                return Some(lo);
            }
        }
    }
    None
}

fn mode_name(m: TlsMode) -> &'static str {
    match m {
        TlsMode::Passthrough => "passthrough",
        TlsMode::Terminate => "terminate",
        TlsMode::TerminateAndReencrypt => "terminate-and-reencrypt",
    }
}

/// RFC 9110 token characters.
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// An IP literal or a DNS name.
fn valid_host(h: &str) -> bool {
    if h.parse::<std::net::IpAddr>().is_ok() {
        return true;
    }
    h.len() <= 253
        && h.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}
