//! Stage 4, route: the route table's lookup on port, client IP, SNI or Host, TLS version, path
//! and headers; then the route's allow/block lists and limits, whose guard the connection
//! keeps until it closes.

use smartproxy_limits::canonical_ip;
use smartproxy_routing::{HeaderSource, LimitExceeded, MatchInput};

use super::classify::PeekInfo;
use super::conn::{Closed, Conn};
use crate::http::RequestHead;
use crate::observe::Refusal;

impl HeaderSource for RequestHead {
    fn get(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// Routes the connection on what the classify stage found; returns the route's index in the
/// table. The connection is then counted under the route (metrics) and holds its limits.
pub(crate) fn route(c: &mut Conn, info: &PeekInfo) -> Result<usize, Closed> {
    let client_ip = canonical_ip(c.client.ip());
    let table = &c.state.table;
    let index = {
        // `MatchInput` holds a non-`Sync` reference: keep it in this block.
        let mut input = MatchInput::new(c.port, client_ip);
        if let Some(dom) = info.domain.as_deref() {
            input = input.with_domain(dom);
        }
        if let Some(p) = info.path() {
            input = input.with_path(p);
        }
        if info.is_tls {
            input = input.with_tls(info.tls_version);
            if table.http_after_termination(c.port) {
                // Path / header criteria of terminating routes are checked after the
                // handshake (serve_tls routes again on the decrypted request head).
                input = input.before_termination();
            }
        }
        if let Some(h) = &info.head {
            input = input.with_headers(h);
        }
        table.lookup(&input).map(|m| m.index)
    };
    let Some(index) = index else {
        return Err(c.refuse(Refusal::NoRoute, info.domain.as_deref().unwrap_or("")));
    };
    enter(c, index)?;
    let route = &c.state.table.routes()[index];
    if !c.state.table.is_http_port(c.port) {
        // (On HTTP ports the serve stage opens the metrics record: requests count one by one.)
        c.obs.routed(route.name_arc(), c.state.route_metric(index));
    }
    tracing::debug!(client = %c.client, port = c.port, route = route.name(), "routed");
    Ok(index)
}

/// The route's allow/block lists and limits for this client; the guard replaces any the
/// connection held for another route (routing again after TLS termination).
pub(crate) fn enter(c: &mut Conn, index: usize) -> Result<(), Closed> {
    let client_ip = canonical_ip(c.client.ip());
    let state = std::sync::Arc::clone(&c.state);
    let route = &state.table.routes()[index];
    if !route.allows_ip(client_ip) {
        return Err(c.refuse(Refusal::NotAllowed, route.name()));
    }
    match route.limits().try_acquire(client_ip) {
        Ok(g) => {
            c.guards.route = Some(g);
            c.route = Some(index);
            Ok(())
        }
        Err(e) => {
            let reason = match e {
                LimitExceeded::MaxConnections { .. } => Refusal::RouteLimit,
                _ => Refusal::RouteIpLimit,
            };
            Err(c.refuse(reason, &format!("{}: {e}", route.name())))
        }
    }
}
