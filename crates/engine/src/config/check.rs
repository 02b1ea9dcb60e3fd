//! From the file model to the typed [`Config`]: every value checked and converted once, the
//! routes validated and compiled, the TLS files read. Errors carry key paths; the caller adds
//! the lines.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use smartproxy_acme::AcmeConfig;
use smartproxy_routing::{
    CertificateConfig, IpPattern, IpPatternError, RouteConfig, RouteTable, ValidationOptions,
};

use super::deserialize::{Routes, remap_route_index};
use super::file::File;
use super::tls_files::{self, LoadedCert, TlsFiles};
use super::{
    AdminConfig, AdminToken, Compiled, Config, ConfigError, MetricsConfig, StatsdConfig,
    StatsdStyle, TlsSettings, default_bind, default_detect_timeout, default_pp_timeout,
};

/// Builds the typed configuration, pushing every error found. `None` when the top level did
/// not deserialise or a value is wrong (the routes are still checked, for their errors).
pub(super) fn build(
    file: Option<File>,
    (routes, kept): Routes,
    handlers: &[&str],
    errors: &mut Vec<ConfigError>,
) -> Option<Config> {
    let complete = file.is_some();
    let f = file.unwrap_or_default();
    let before = errors.len();
    let mut err = |path: &str, msg: String| errors.push(ConfigError::new(path, msg));

    if f.workers == Some(0) {
        err("workers", "must be at least 1".into());
    }
    let bind = match &f.bind {
        None => default_bind(),
        Some(list) => {
            if list.is_empty() {
                err("bind", "needs at least one address".into());
            }
            let mut out = Vec::with_capacity(list.len());
            for (i, b) in list.iter().enumerate() {
                match b.trim().parse::<IpAddr>() {
                    Ok(ip) => out.push(ip),
                    Err(_) => err(&format!("bind[{i}]"), format!("`{b}` is not an IP address")),
                }
            }
            out
        }
    };
    let mut proxy_ips = Vec::with_capacity(f.proxy_ips.len());
    for (i, p) in f.proxy_ips.iter().enumerate() {
        match IpPattern::parse(p) {
            Ok(pat) => proxy_ips.push(pat),
            Err(e) => err(&format!("proxy_ips[{i}]"), proxy_ip_message(p, &e)),
        }
    }
    if f.accept_proxy_protocol == Some(true) && f.proxy_ips.is_empty() {
        err(
            "accept_proxy_protocol",
            "is true but proxy_ips is empty: no peer is trusted to send a PROXY header".into(),
        );
    }
    let proxy_protocol_timeout = f.proxy_protocol_timeout.unwrap_or_else(default_pp_timeout);
    let d = &f.defaults;
    let sample_interval = f.metrics.sample_interval.unwrap_or(Duration::from_secs(1));
    for (path, v) in [
        ("proxy_protocol_timeout", proxy_protocol_timeout),
        ("defaults.initial_data_timeout", d.initial_data_timeout),
        ("defaults.inactivity_timeout", d.inactivity_timeout),
        ("defaults.max_connection_lifetime", d.max_connection_lifetime),
        ("defaults.connect_timeout", d.connect_timeout),
        ("metrics.sample_interval", sample_interval),
    ] {
        if v.is_zero() {
            err(path, "must be longer than 0s".into());
        }
    }
    if let Some(msg) = smartproxy_routing::multiplier_problem(d.keepalive_inactivity_multiplier) {
        err("defaults.keepalive_inactivity_multiplier", msg);
    }
    if d.extended_keepalive_lifetime.is_zero() {
        err("defaults.extended_keepalive_lifetime", "must be longer than 0s".into());
    }
    for (key, msg) in d.tcp_keepalive.problems() {
        err(&format!("defaults.tcp_keepalive.{key}"), msg);
    }
    for (key, msg) in d.health.problems() {
        err(&format!("defaults.health.{key}"), msg.into());
    }
    for (key, msg) in d.http_settings().check() {
        err(&format!("defaults.{key}"), msg);
    }
    let admin = match &f.admin {
        None => None,
        Some(a) => {
            let token = match &a.token_file {
                None => None,
                Some(path) => match AdminToken::read(path) {
                    Ok(t) => Some(t),
                    Err(msg) => {
                        err("admin.token_file", msg);
                        None
                    }
                },
            };
            match a.listen.trim().parse::<SocketAddr>() {
                Ok(listen) => {
                    if !listen.ip().is_loopback()
                        && a.token_file.is_none()
                        && !a.allow_unauthenticated
                    {
                        err(
                            "admin.listen",
                            format!(
                                "`{listen}` is not a loopback address: anyone who reaches it could \
                                 reload the proxy and read its configuration; set \
                                 [admin] token_file, or allow_unauthenticated = true"
                            ),
                        );
                    }
                    Some(AdminConfig {
                        listen,
                        token_file: a.token_file.clone(),
                        token,
                        allow_unauthenticated: a.allow_unauthenticated,
                    })
                }
                Err(_) => {
                    err("admin.listen", format!("`{}` is not an address:port", a.listen));
                    None
                }
            }
        }
    };
    let statsd = match &f.metrics.statsd {
        None => None,
        Some(s) => {
            let ok = s
                .address
                .rsplit_once(':')
                .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0));
            if !ok {
                err("metrics.statsd.address", format!("`{}` is not host:port", s.address));
            }
            let style = match s.style.as_deref() {
                None | Some("plain") => StatsdStyle::Plain,
                Some("datadog") => StatsdStyle::Datadog,
                Some(other) => {
                    err(
                        "metrics.statsd.style",
                        format!("`{other}` is not \"plain\" or \"datadog\""),
                    );
                    StatsdStyle::Plain
                }
            };
            let interval = s.interval.unwrap_or(Duration::from_secs(10));
            if interval.is_zero() {
                err("metrics.statsd.interval", "must be longer than 0s".into());
            }
            Some(StatsdConfig { address: s.address.clone(), interval, style })
        }
    };

    if let Some(acme) = &f.acme {
        errors.extend(acme.validate().into_iter().map(|e| ConfigError::new(e.path, e.message)));
    }
    errors.extend(auto_routes(&routes, f.acme.as_ref(), &kept));
    if f.tls.default_certificate.is_some() {
        errors.extend(default_cert_name(&routes, &kept));
    }
    let default_cert = match &f.tls.default_certificate {
        Some(c) => match tls_files::load_default(c) {
            Ok(l) => Some(l),
            Err(e) => {
                errors.push(e);
                None
            }
        },
        None => None,
    };
    let compiled = match compile(&routes, handlers, default_cert, &bind, f.defaults.health) {
        Ok(c) => Some(c),
        Err(list) => {
            for mut e in list {
                e.path = remap_route_index(&e.path, &kept);
                errors.push(e);
            }
            None
        }
    };
    if !complete || errors.len() > before {
        return None;
    }
    let accept_proxy_protocol = f.accept_proxy_protocol.unwrap_or(!f.proxy_ips.is_empty());
    Some(Config {
        workers: f.workers,
        runtime: f.runtime,
        bind,
        reuse_port: f.reuse_port,
        defer_accept: f.defer_accept.unwrap_or(true),
        proxy_ips,
        accept_proxy_protocol,
        proxy_protocol_timeout,
        proxy_protocol_optional: f.proxy_protocol_optional,
        proxy_protocol_detect_timeout: f
            .proxy_protocol_detect_timeout
            .unwrap_or_else(default_detect_timeout),
        defaults: f.defaults,
        access_log: f.access_log,
        watch_config: f.watch_config,
        admin,
        metrics: MetricsConfig {
            enabled: f.metrics.enabled,
            sample_interval,
            retention: f.metrics.retention.unwrap_or(Duration::from_secs(3600)),
            prefix: f.metrics.prefix.unwrap_or_else(super::default_prefix),
            per_ip: f.metrics.per_ip,
            statsd,
        },
        acme: f.acme,
        tls: TlsSettings { default_certificate: f.tls.default_certificate },
        routes,
        compiled: compiled?,
    })
}

/// Validates and compiles the routes and reads their TLS files: every error, with
/// `routes[i]...` paths (indices of `routes`).
pub(super) fn compile(
    routes: &[RouteConfig],
    handlers: &[&str],
    default_cert: Option<LoadedCert>,
    bind: &[IpAddr],
    health: smartproxy_routing::HealthOptions,
) -> Result<Compiled, Vec<ConfigError>> {
    let opts = ValidationOptions::default()
        .with_custom_handlers(handlers.iter().map(|h| (*h).to_owned()))
        .with_default_health(health);
    let mut errors = Vec::new();
    let table = match RouteTable::compile_with(routes.to_vec(), &opts) {
        Ok(t) => Some(t),
        Err(list) => {
            errors.extend(list.into_iter().map(|e| ConfigError::new(e.path, e.message)));
            None
        }
    };
    // What nftables cannot honour in the kernel-forwarded routes (`bind`: their addresses).
    errors.extend(crate::kernel::check(routes, bind));
    let tls = TlsFiles::load(routes, &mut errors);
    // The htpasswd and JWT key files of authenticating routes, read here once (and again on
    // every reload, which parses the configuration again).
    let credentials = match smartproxy_http::Credentials::load(routes) {
        Ok(c) => c,
        Err(list) => {
            errors.extend(list.into_iter().map(|e| ConfigError::new(e.path, e.message)));
            smartproxy_http::Credentials::new()
        }
    };
    match table {
        Some(table) if errors.is_empty() => Ok(Compiled {
            table: Arc::new(table),
            tls: Arc::new(tls),
            default_cert,
            credentials: Arc::new(credentials),
        }),
        _ => Err(errors),
    }
}

/// What `certificate = "auto"` needs beyond the route itself (which routing validates): an
/// `[acme]` section, and domains an ACME CA can issue for with the challenges we answer (no
/// IP address, no single label; wildcards are reported by the route validation). `kept` maps
/// the indices of `routes` to those of the file (empty: the same).
pub(super) fn auto_routes(
    routes: &[RouteConfig],
    acme: Option<&AcmeConfig>,
    kept: &[usize],
) -> Vec<ConfigError> {
    let mut errors = Vec::new();
    for (j, r) in routes.iter().enumerate() {
        let auto = tls_files::terminating(r)
            .is_some_and(|(_, t)| t.certificate.as_ref().is_some_and(CertificateConfig::is_auto));
        if !auto {
            continue;
        }
        let i = kept.get(j).copied().unwrap_or(j);
        if acme.is_none() {
            errors.push(ConfigError::new(
                format!("routes[{i}].action.tls.certificate"),
                "certificate = \"auto\" needs an [acme] section (the CA, the certificate store)",
            ));
        }
        for (k, d) in r.matcher.domains.iter().enumerate() {
            if d.contains('*') {
                continue;
            }
            if let Err(reason) = smartproxy_acme::check_domain(d) {
                errors.push(ConfigError::new(
                    format!("routes[{i}].match.domains[{k}]"),
                    format!("`{d}`: certificate = \"auto\": {reason}"),
                ));
            }
        }
    }
    errors
}

/// `[tls] default_certificate` is listed in the certificate status under its key, which no
/// route may then be named.
pub(super) fn default_cert_name(routes: &[RouteConfig], kept: &[usize]) -> Vec<ConfigError> {
    let name = crate::certs::DEFAULT_CERT_NAME;
    routes
        .iter()
        .enumerate()
        .filter(|(_, r)| r.name.as_deref() == Some(name))
        .map(|(j, _)| {
            let i = kept.get(j).copied().unwrap_or(j);
            ConfigError::new(
                format!("routes[{i}].name"),
                format!("`{name}` names [tls] default_certificate in the certificate status; rename the route"),
            )
        })
        .collect()
}

/// The messages `proxy_ips` has always had for the address and CIDR forms.
fn proxy_ip_message(p: &str, e: &IpPatternError) -> String {
    match e {
        IpPatternError::Syntax(_) => format!("`{p}` is not an IP address or CIDR block"),
        IpPatternError::HostBits(..) => format!("`{p}` has host bits set after the prefix"),
        IpPatternError::PrefixTooLong { max, .. } => {
            format!("`{p}`: prefix length must be 0..={max}")
        }
        other => other.to_string(),
    }
}
