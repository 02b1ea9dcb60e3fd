//! Deserialisation that collects one error per route, and value checks.

use std::net::{IpAddr, SocketAddr};

use serde::de::DeserializeOwned;
use smartproxy_routing::{RouteAction, RouteConfig, TlsMode, ValidationOptions, validate_with};

use super::locate::Locator;
use super::{Config, ConfigError, Format};
use crate::net::Cidr;

/// Deserialises the configuration. Every route is deserialised on its own so that an error in
/// one does not hide the errors in the others.
pub(crate) fn deserialize(
    text: &str,
    format: Format,
    locator: &Locator,
    errors: &mut Vec<ConfigError>,
    custom_handlers: &[String],
) -> Option<Config> {
    match format {
        Format::Toml => {
            let mut top: toml::Table = match toml::from_str(text) {
                Ok(t) => t,
                Err(e) => {
                    errors.push(ConfigError {
                        path: String::new(),
                        line: None,
                        message: e.message().to_owned(),
                    });
                    return None;
                }
            };
            let routes = match top.remove("routes") {
                Some(toml::Value::Array(a)) => a,
                Some(other) => {
                    top.insert("routes".into(), other);
                    Vec::new()
                }
                None => Vec::new(),
            };
            split(toml::Value::Table(top), routes, locator, errors, custom_handlers)
        }
        Format::Json => {
            let mut top: serde_json::Value = match serde_json::from_str(text) {
                Ok(v) => v,
                Err(e) => {
                    errors.push(ConfigError {
                        path: String::new(),
                        line: Some(e.line()),
                        message: e.to_string(),
                    });
                    return None;
                }
            };
            let routes = match top.as_object_mut().and_then(|o| o.remove("routes")) {
                Some(serde_json::Value::Array(a)) => a,
                Some(other) => {
                    if let Some(o) = top.as_object_mut() {
                        o.insert("routes".into(), other);
                    }
                    Vec::new()
                }
                None => Vec::new(),
            };
            split(top, routes, locator, errors, custom_handlers)
        }
    }
}

fn split<'de, V>(
    top: V,
    routes: Vec<V>,
    locator: &Locator,
    errors: &mut Vec<ConfigError>,
    custom_handlers: &[String],
) -> Option<Config>
where
    V: serde::Deserializer<'de> + Prune,
    V::Error: std::fmt::Display,
{
    let top: Option<Config> = one(top, "", true, locator, errors);
    let total = routes.len();
    // Original index of every route that deserialised.
    let mut kept = Vec::with_capacity(total);
    let mut parsed = Vec::with_capacity(total);
    for (i, r) in routes.into_iter().enumerate() {
        if let Some(r) = one::<V, RouteConfig>(r, &format!("routes[{i}]"), false, locator, errors) {
            kept.push(i);
            parsed.push(r);
        }
    }
    // Check what did deserialise, so that one bad key does not hide the other errors.
    let complete = top.is_some() && parsed.len() == total;
    let mut config = top.unwrap_or_default();
    config.routes = parsed;
    for mut e in check(&config, custom_handlers) {
        e.path = remap_route_index(&e.path, &kept);
        errors.push(e);
    }
    complete.then_some(config)
}

/// `routes[j]...` of the kept routes back to `routes[i]...` of the file.
fn remap_route_index(path: &str, kept: &[usize]) -> String {
    let Some(rest) = path.strip_prefix("routes[") else { return path.to_owned() };
    let Some((num, tail)) = rest.split_once(']') else { return path.to_owned() };
    match num.parse::<usize>().ok().and_then(|j| kept.get(j)) {
        Some(i) => format!("routes[{i}]{tail}"),
        None => path.to_owned(),
    }
}

/// A configuration value from which a key can be removed (to go on after an error).
pub(crate) trait Prune: Clone {
    /// Removes the entry at `path` (`a.b[2].c`); false when there is none.
    fn remove_path(&mut self, path: &str) -> bool;
}

enum Seg<'a> {
    Key(&'a str),
    Index(usize),
}

fn segments(path: &str) -> Option<Vec<Seg<'_>>> {
    let mut out = Vec::new();
    for piece in path.split('.') {
        let (key, mut rest) = match piece.find('[') {
            Some(i) => (&piece[..i], &piece[i..]),
            None => (piece, ""),
        };
        if !key.is_empty() {
            out.push(Seg::Key(key));
        }
        while let Some(r) = rest.strip_prefix('[') {
            let (n, tail) = r.split_once(']')?;
            out.push(Seg::Index(n.parse().ok()?));
            rest = tail;
        }
    }
    Some(out)
}

impl Prune for toml::Value {
    fn remove_path(&mut self, path: &str) -> bool {
        let Some(segs) = segments(path) else { return false };
        let Some((last, parents)) = segs.split_last() else { return false };
        let mut cur = self;
        for s in parents {
            let next = match (s, cur) {
                (Seg::Key(k), toml::Value::Table(t)) => t.get_mut(*k),
                (Seg::Index(i), toml::Value::Array(a)) => a.get_mut(*i),
                _ => None,
            };
            let Some(n) = next else { return false };
            cur = n;
        }
        match (last, cur) {
            (Seg::Key(k), toml::Value::Table(t)) => t.remove(*k).is_some(),
            _ => false,
        }
    }
}

impl Prune for serde_json::Value {
    fn remove_path(&mut self, path: &str) -> bool {
        let Some(segs) = segments(path) else { return false };
        let Some((last, parents)) = segs.split_last() else { return false };
        let mut cur = self;
        for s in parents {
            let next = match s {
                Seg::Key(k) => cur.get_mut(*k),
                Seg::Index(i) => cur.get_mut(*i),
            };
            let Some(n) = next else { return false };
            cur = n;
        }
        match (last, cur) {
            (Seg::Key(k), serde_json::Value::Object(o)) => o.remove(*k).is_some(),
            _ => false,
        }
    }
}

/// Deserialises `v`, recording an error with its path and line. To report more than the first
/// error, an offending key is removed and deserialisation tried again: any key when
/// `any_key` (every top-level key has a default), else only unknown keys.
fn one<'de, V, T>(
    mut v: V,
    prefix: &str,
    any_key: bool,
    locator: &Locator,
    errors: &mut Vec<ConfigError>,
) -> Option<T>
where
    V: serde::Deserializer<'de> + Prune,
    V::Error: std::fmt::Display,
    T: DeserializeOwned,
{
    // The errors recorded make the whole load fail; a value that deserialises after pruning is
    // still returned so that its other values get checked.
    for _ in 0..64 {
        match serde_path_to_error::deserialize::<V, T>(v.clone()) {
            Ok(t) => return Some(t),
            Err(e) => {
                let inner = e.path().to_string();
                let path = match (prefix.is_empty(), inner.as_str()) {
                    (_, ".") => prefix.to_owned(),
                    (true, p) => p.to_owned(),
                    (false, p) => format!("{prefix}.{p}"),
                };
                let line = locator.line_of(&path);
                let message = e.into_inner().to_string();
                // toml appends "in `key`" on a second line; the path says it already.
                let message = message.lines().next().unwrap_or_default().trim_end().to_owned();
                let retry = any_key || message.starts_with("unknown field");
                errors.push(ConfigError { path, line, message });
                if !retry || inner == "." || !v.remove_path(&inner) {
                    return None;
                }
            }
        }
    }
    None
}

/// Checks values that serde cannot.
pub(crate) fn check(c: &Config, custom_handlers: &[String]) -> Vec<ConfigError> {
    let mut errs = Vec::new();
    let mut err = |path: String, msg: String| errs.push(ConfigError::new(path, msg));
    if c.workers == Some(0) {
        err("workers".into(), "must be at least 1".into());
    }
    if c.bind.is_empty() {
        err("bind".into(), "needs at least one address".into());
    }
    for (i, b) in c.bind.iter().enumerate() {
        if b.trim().parse::<IpAddr>().is_err() {
            err(format!("bind[{i}]"), format!("`{b}` is not an IP address"));
        }
    }
    for (i, p) in c.proxy_ips.iter().enumerate() {
        if let Err(e) = Cidr::parse(p) {
            err(format!("proxy_ips[{i}]"), e);
        }
    }
    if c.accept_proxy_protocol == Some(true) && c.proxy_ips.is_empty() {
        err(
            "accept_proxy_protocol".into(),
            "is true but proxy_ips is empty: no peer is trusted to send a PROXY header".into(),
        );
    }
    for (path, d) in [
        ("proxy_protocol_timeout", c.proxy_protocol_timeout),
        ("defaults.initial_data_timeout", c.defaults.initial_data_timeout),
        ("defaults.inactivity_timeout", c.defaults.inactivity_timeout),
        ("defaults.max_connection_lifetime", c.defaults.max_connection_lifetime),
        ("defaults.connect_timeout", c.defaults.connect_timeout),
        ("metrics.sample_interval", c.metrics.sample_interval),
    ] {
        if d.is_zero() {
            err(path.into(), "must be longer than 0s".into());
        }
    }
    if let Some(a) = &c.admin {
        if a.listen.parse::<SocketAddr>().is_err() {
            err("admin.listen".into(), format!("`{}` is not an address:port", a.listen));
        }
    }
    if let Some(s) = &c.metrics.statsd {
        let ok = s
            .address
            .rsplit_once(':')
            .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0));
        if !ok {
            err("metrics.statsd.address".into(), format!("`{}` is not host:port", s.address));
        }
        if !matches!(s.style.as_str(), "plain" | "datadog") {
            err(
                "metrics.statsd.style".into(),
                format!("`{}` is not \"plain\" or \"datadog\"", s.style),
            );
        }
        if s.interval.is_zero() {
            err("metrics.statsd.interval".into(), "must be longer than 0s".into());
        }
    }
    for (i, r) in c.routes.iter().enumerate() {
        check_route(i, r, &mut err);
    }
    let opts = ValidationOptions::default().with_custom_handlers(custom_handlers.iter().cloned());
    if let Err(list) = validate_with(&c.routes, &opts) {
        for e in list {
            err(e.path.clone(), e.message.clone());
        }
    }
    errs
}

fn check_route(i: usize, r: &RouteConfig, err: &mut dyn FnMut(String, String)) {
    if let RouteAction::Forward(f) = &r.action {
        if f.tls.as_ref().is_some_and(|t| !matches!(t.mode, TlsMode::Passthrough)) {
            crate::tls::check_route(i, r, err);
        }
    }
}
