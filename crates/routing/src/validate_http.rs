//! Validation of HTTP routes (`action.http`) and of the ports they share with other routes.

use crate::error::ValidationError;
use crate::model::{RouteAction, RouteConfig, TlsMode};
use crate::validate::{common_port, route_name};

/// Socket handlers that answer single requests, and so may share a port with HTTP routes.
pub const HTTP_HANDLERS: &[&str] = &["redirect", "block", "static"];

fn is_http(r: &RouteConfig) -> bool {
    matches!(&r.action, RouteAction::Forward(f) if f.http.is_some())
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
