//! Deserialisation into the file model that collects every error: each route is deserialised
//! on its own so that an error in one does not hide the errors in the others, and an unknown or
//! bad key is removed and deserialisation tried again.

use serde::de::DeserializeOwned;
use smartproxy_routing::RouteConfig;

use super::file::File;
use super::locate::Locator;
use super::{ConfigError, Format};

/// The routes that deserialised, and the index in the file of each.
pub(crate) type Routes = (Vec<RouteConfig>, Vec<usize>);

/// Deserialises the file: the top level (`None` if it has an error) and the routes.
pub(crate) fn deserialize(
    text: &str,
    format: Format,
    locator: &Locator,
    errors: &mut Vec<ConfigError>,
) -> (Option<File>, Routes) {
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
                    return (None, (Vec::new(), Vec::new()));
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
            split(toml::Value::Table(top), routes, locator, errors)
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
                    return (None, (Vec::new(), Vec::new()));
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
            split(top, routes, locator, errors)
        }
    }
}

fn split<'de, V>(
    top: V,
    routes: Vec<V>,
    locator: &Locator,
    errors: &mut Vec<ConfigError>,
) -> (Option<File>, Routes)
where
    V: serde::Deserializer<'de> + Prune,
    V::Error: std::fmt::Display,
{
    // `immortal` connections obey a lifetime only when one is written.
    let lifetime_written = top.clone().remove_path("defaults.max_connection_lifetime");
    let mut top: Option<File> = one(top, "", true, locator, errors);
    if let Some(f) = &mut top {
        f.defaults.max_connection_lifetime_explicit = lifetime_written;
    }
    let total = routes.len();
    let mut kept = Vec::with_capacity(total);
    let mut parsed = Vec::with_capacity(total);
    for (i, r) in routes.into_iter().enumerate() {
        if let Some(r) = one::<V, RouteConfig>(r, &format!("routes[{i}]"), false, locator, errors) {
            kept.push(i);
            parsed.push(r);
        }
    }
    (top, (parsed, kept))
}

/// `routes[j]...` of the kept routes back to `routes[i]...` of the file.
pub(crate) fn remap_route_index(path: &str, kept: &[usize]) -> String {
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
