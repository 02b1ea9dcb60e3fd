//! Validation of HTTP routes (`action.http`) and of the ports they share with other routes.

use crate::error::ValidationError;
use crate::model::{RouteAction, RouteConfig, TlsMode};
use crate::validate::{common_port, route_name};

/// Socket handlers that answer single requests, and so may share a port with HTTP routes.
pub const HTTP_HANDLERS: &[&str] = &["redirect", "block", "static"];

fn is_http(r: &RouteConfig) -> bool {
    matches!(&r.action, RouteAction::Forward(f) if f.http.is_some())
}

fn valid_name(n: &str) -> bool {
    !n.is_empty() && n.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn hop_by_hop(n: &str) -> bool {
    ["connection", "keep-alive", "proxy-connection", "te", "transfer-encoding", "upgrade"]
        .iter()
        .any(|h| h.eq_ignore_ascii_case(n))
}

/// A header name as a key path segment: bare when plain, quoted otherwise.
fn header_key(n: &str) -> String {
    if !n.is_empty() && n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
        n.to_owned()
    } else {
        format!("{n:?}")
    }
}

/// Route-level checks of the `http` table, then the port rule: on a port with an enabled
/// HTTP route, every enabled route is an HTTP route or a per-request handler.
pub(crate) fn check_http(routes: &[RouteConfig], out: &mut Vec<ValidationError>) {
    for (i, r) in routes.iter().enumerate() {
        let RouteAction::Forward(f) = &r.action else { continue };
        let Some(h) = &f.http else { continue };
        let key = |k: &str| format!("routes[{i}].action.{k}");
        if let Some(tls) = &f.tls
            && tls.mode == TlsMode::Passthrough
        {
            out.push(ValidationError::new(
                key("http"),
                "an HTTP route cannot use tls mode `passthrough`: the HTTP layer reads every \
                 request, so TLS must end here (`terminate` or `terminate-and-reencrypt`)",
            ));
        }
        if h.response_timeout.is_some_and(|d| d.is_zero()) {
            out.push(ValidationError::new(
                key("http.response_timeout"),
                "response timeout must be longer than zero",
            ));
        }
        for (table, actions) in
            [("request_headers", &h.request_headers), ("response_headers", &h.response_headers)]
        {
            let Some(a) = actions else { continue };
            for (op, map) in [("set", &a.set), ("add", &a.add)] {
                for (name, value) in map {
                    let k = key(&format!("http.{table}.{op}.{}", header_key(name)));
                    if !valid_name(name) {
                        out.push(ValidationError::new(
                            &k,
                            format!("`{name}` is not a valid HTTP header name"),
                        ));
                    } else if hop_by_hop(name) {
                        out.push(ValidationError::new(
                            &k,
                            format!("`{name}` is a hop-by-hop header: the proxy manages it per connection"),
                        ));
                    }
                    if value.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) {
                        out.push(ValidationError::new(
                            &k,
                            "a header value cannot contain CR, LF or NUL",
                        ));
                    }
                }
            }
            for (j, name) in a.remove.iter().enumerate() {
                if !valid_name(name) {
                    out.push(ValidationError::new(
                        key(&format!("http.{table}.remove[{j}]")),
                        format!("`{name}` is not a valid HTTP header name"),
                    ));
                }
            }
        }
        if let Some(rw) = &h.rewrite_path {
            if let Err(e) = regex::RegexBuilder::new(&rw.from).size_limit(1 << 20).build() {
                let msg = e.to_string();
                let line = msg.lines().map(str::trim).rfind(|l| !l.is_empty()).unwrap_or(&msg);
                out.push(ValidationError::new(
                    key("http.rewrite_path.from"),
                    format!(
                        "bad regular expression `{}`: {}",
                        rw.from,
                        line.trim_start_matches("error: ")
                    ),
                ));
            }
            if !rw.to.starts_with('/') && !rw.to.starts_with('$') {
                out.push(ValidationError::new(
                    key("http.rewrite_path.to"),
                    format!("the rewritten path `{}` must start with `/`", rw.to),
                ));
            }
        }
        if let Some(p) = h.via.pseudonym()
            && (p.trim().is_empty() || !p.bytes().all(|b| b.is_ascii_graphic()))
        {
            out.push(ValidationError::new(
                key("http.via"),
                format!(
                    "via pseudonym `{p}` must be one word of visible ASCII characters (e.g. \"edge-1\")"
                ),
            ));
        }
    }

    // The port rule.
    for (i, r) in routes.iter().enumerate() {
        if !r.enabled || is_http(r) {
            continue;
        }
        let Some((j, port)) = routes.iter().enumerate().find_map(|(j, h)| {
            (h.enabled && is_http(h)).then(|| common_port(r, h).map(|p| (j, p))).flatten()
        }) else {
            continue;
        };
        let http_name = route_name(&routes[j], j);
        match &r.action {
            RouteAction::SocketHandler(h) if HTTP_HANDLERS.contains(&h.handler.as_str()) => {}
            RouteAction::SocketHandler(h) => out.push(ValidationError::new(
                format!("routes[{i}].action.handler"),
                format!(
                    "handler `{}` takes the whole connection, but port {port} has HTTP route `{http_name}` \
                     (routes[{j}]), where every request is routed on its own; use `redirect`, `block` \
                     or `static` there, or move this route to another port",
                    h.handler
                ),
            )),
            _ => out.push(ValidationError::new(
                format!("routes[{i}].action"),
                format!(
                    "route has no `http` table but shares port {port} with HTTP route `{http_name}` \
                     (routes[{j}]): on that port every request is routed on its own, so a route \
                     without `http` could never be chosen; add `http = {{}}` to its action or move \
                     it to another port"
                ),
            )),
        }
    }
}
