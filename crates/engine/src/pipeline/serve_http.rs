//! Stage 6, serve (HTTP): on a port whose routes have an `http` table, the connection is
//! handed to the HTTP layer ([`smartproxy_http`]), which routes every request on its own. The
//! engine keeps what is per connection: the limits taken so far, byte counting, the lifetime
//! limit, the drain signal of shutdown (HTTP connections close after their current request)
//! and the forced close (the caller drops this future). The HTTP layer has its own idle and
//! header timers; the connection's `inactivity_timeout` applies to WebSockets it passes
//! through.

use std::net::SocketAddr;
use std::sync::Arc;

use smartproxy_http::{ConnInfo, ProxyHeaderFn, TlsInfo};
use tokio::io::{AsyncRead, AsyncWrite};

use super::close::log_close_http;
use super::conn::Conn;
use super::upstream::proxy_header;
use crate::copy::Counted;

/// Serves `io` (plain, or the plaintext side of a terminated TLS connection) with the HTTP
/// layer until the client, the layer's timers, the lifetime limit or the drain end it.
/// `dst`: the address the client connected to (for outgoing PROXY headers); `local`: the
/// accepted socket's local address.
pub(crate) async fn serve<S>(
    c: Conn,
    io: S,
    tls: Option<TlsInfo>,
    dst: SocketAddr,
    local: SocketAddr,
) where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    // The connection's bytes are counted under the first HTTP route of its port (or the
    // terminating route its ClientHello chose); its requests are counted per route by the
    // HTTP layer.
    if let Some(i) = first_http_route(&c) {
        let route = &c.state.table.routes()[i];
        c.obs.routed_http(route.name_arc(), c.state.route_metric(i));
    }
    let client = c.client;
    let header: ProxyHeaderFn = Arc::new(move |v| {
        let mut out = Vec::new();
        if let Ok(h) = proxy_header(v, client, dst) {
            // An encoding error leaves the header empty; the target then refuses.
            let _ = h.encode(&mut out);
        }
        out
    });
    let mut info = ConnInfo::new(client, c.port)
        .trusted(c.trusted)
        .with_local(local)
        .with_proxy_header(header);
    if let Some(t) = tls {
        info = info.with_tls(t);
    }
    let mut draining = c.shared.draining.subscribe();
    let shutdown = async move {
        let _ = draining.wait_for(|v| *v).await;
    };
    let io = Counted { inner: io, obs: Arc::clone(&c.obs) };
    let deadline = c.timeouts().deadline;
    let served = tokio::time::timeout_at(deadline, c.shared.http.serve(io, info, shutdown)).await;
    log_close_http(&c.obs, client, c.port, served.ok());
}

/// The route whose series carries an HTTP connection's bytes: the highest-priority enabled
/// HTTP route on the port (in table order).
fn first_http_route(c: &Conn) -> Option<usize> {
    let table = &c.state.table;
    table
        .routes()
        .iter()
        .filter(|r| r.enabled() && r.http().is_some() && r.config().matcher.ports.contains(c.port))
        .max_by_key(|r| (r.priority(), std::cmp::Reverse(r.index())))
        .map(|r| r.index())
}
