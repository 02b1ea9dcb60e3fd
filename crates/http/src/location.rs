//! `rewrite_location`: a `Location` from the target that points at the target is rewritten
//! to the client's scheme and host, and a prefix `rewrite_path` is undone on its path (as
//! nginx's `proxy_redirect default`).

use http::header::HeaderValue;

/// The inverse of a prefix `rewrite_path` (`^/v1/(.*)$` -> `/api/$1`): paths under `to`
/// (`/api/`) go back under `from` (`/v1/`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PrefixInverse {
    pub(crate) to: Box<str>,
    pub(crate) from: Box<str>,
}

const META: &[u8] = b"\\.+*?()|[]{}^$ \t";

/// The inverse of `from` -> `to` when it only swaps a literal prefix: `from` is `^PREFIX(.*)`
/// (with or without a final `$`) and `to` is `PREFIX2$1` (or `${1}`). Other rewrites have no
/// inverse; their `Location` paths are left as they are.
pub(crate) fn prefix_inverse(from: &str, to: &str) -> Option<PrefixInverse> {
    let body = from.strip_prefix('^')?;
    let body = body.strip_suffix('$').unwrap_or(body);
    let prefix = body.strip_suffix("(.*)")?;
    if prefix.bytes().any(|b| META.contains(&b)) || !prefix.starts_with('/') {
        return None;
    }
    let to_prefix = to.strip_suffix("${1}").or_else(|| to.strip_suffix("$1"))?;
    if to_prefix.contains('$') || !to_prefix.starts_with('/') {
        return None;
    }
    Some(PrefixInverse { to: to_prefix.into(), from: prefix.into() })
}

fn invert<'a>(path: &'a str, inv: Option<&PrefixInverse>) -> std::borrow::Cow<'a, str> {
    match inv.and_then(|i| path.strip_prefix(&*i.to).map(|rest| (i, rest))) {
        Some((i, rest)) => format!("{}{rest}", i.from).into(),
        None => path.into(),
    }
}

/// Whether `authority` (from a URL) names `host:port` (the port may be left out when it
/// is the scheme's default).
fn same_authority(authority: &str, scheme: &str, host: &str, port: u16) -> bool {
    let default = if scheme.eq_ignore_ascii_case("https") { 443 } else { 80 };
    let (h, p) = match authority.rsplit_once(':') {
        Some((h, p)) if !p.contains(']') => (h, p.parse::<u16>().ok()),
        _ => (authority, Some(default)),
    };
    let h = h.trim_start_matches('[').trim_end_matches(']');
    let host = host.trim_start_matches('[').trim_end_matches(']');
    p == Some(port) && h.eq_ignore_ascii_case(host)
}

/// What a response's `Location` is rewritten against.
#[derive(Debug)]
pub(crate) struct LocationContext<'a> {
    /// The target's host and port.
    pub(crate) target_host: &'a str,
    pub(crate) target_port: u16,
    /// The client's Host (`:authority`).
    pub(crate) client_host: Option<&'a str>,
    /// Whether the client spoke TLS to us.
    pub(crate) client_tls: bool,
    pub(crate) inverse: Option<&'a PrefixInverse>,
}

/// The rewritten `Location`, or `None` to keep it.
pub(crate) fn rewrite(loc: &HeaderValue, cx: &LocationContext<'_>) -> Option<HeaderValue> {
    let s = loc.to_str().ok()?;
    let new = if let Some((scheme, rest)) = s.split_once("://") {
        if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
            return None;
        }
        let cut = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, path) = rest.split_at(cut);
        if same_authority(authority, scheme, cx.target_host, cx.target_port) {
            let client = cx.client_host?;
            let ours = if cx.client_tls { "https" } else { "http" };
            format!("{ours}://{client}{}", invert(path, cx.inverse))
        } else if cx.client_host.is_some_and(|c| c.eq_ignore_ascii_case(authority)) {
            format!("{scheme}://{authority}{}", invert(path, cx.inverse))
        } else {
            return None;
        }
    } else if s.starts_with('/') && !s.starts_with("//") {
        match invert(s, cx.inverse) {
            std::borrow::Cow::Borrowed(_) => return None,
            std::borrow::Cow::Owned(p) => p,
        }
    } else {
        return None;
    };
    if new == s {
        return None;
    }
    HeaderValue::from_str(&new).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_rewrites_invert() {
        let inv = prefix_inverse("^/v1/(.*)$", "/api/$1");
        assert_eq!(inv, Some(PrefixInverse { to: "/api/".into(), from: "/v1/".into() }));
        assert!(prefix_inverse("^/v1(.*)", "/api${1}").is_some());
        for (from, to) in [
            ("/v1/(.*)", "/api/$1"),
            ("^/v[12]/(.*)$", "/api/$1"),
            ("^/v1/(.*)/x$", "/api/$1"),
            ("^/v1/(.*)$", "/api/$1/$1"),
            ("^/v1/(.*)$", "api/$1"),
            ("^/a.b/(.*)$", "/c/$1"),
        ] {
            assert!(prefix_inverse(from, to).is_none(), "{from} -> {to}");
        }
    }

    #[test]
    fn locations() {
        let inv = prefix_inverse("^/v1/(.*)$", "/api/$1");
        let cx = LocationContext {
            target_host: "127.0.0.1",
            target_port: 9000,
            client_host: Some("api.example.com"),
            client_tls: true,
            inverse: inv.as_ref(),
        };
        let r = |l: &str| {
            rewrite(&HeaderValue::from_str(l).unwrap(), &cx).map(|v| v.to_str().unwrap().to_owned())
        };
        assert_eq!(
            r("http://127.0.0.1:9000/api/x?y=1").as_deref(),
            Some("https://api.example.com/v1/x?y=1")
        );
        assert_eq!(r("http://127.0.0.1:9000").as_deref(), Some("https://api.example.com"));
        assert_eq!(r("/api/login").as_deref(), Some("/v1/login"));
        assert_eq!(
            r("http://api.example.com/api/a").as_deref(),
            Some("http://api.example.com/v1/a")
        );
        assert_eq!(r("/other"), None);
        assert_eq!(r("https://elsewhere.example/api/x"), None);
        assert_eq!(r("http://127.0.0.1:9001/x"), None);
        assert_eq!(r("//cdn.example/x"), None);
        assert_eq!(r("mailto:x@example"), None);
        let plain = LocationContext { target_port: 80, client_tls: false, inverse: None, ..cx };
        let r = |l: &str| {
            rewrite(&HeaderValue::from_str(l).unwrap(), &plain)
                .map(|v| v.to_str().unwrap().to_owned())
        };
        assert_eq!(r("http://127.0.0.1/next").as_deref(), Some("http://api.example.com/next"));
        assert_eq!(r("/api/x"), None);
    }
}
