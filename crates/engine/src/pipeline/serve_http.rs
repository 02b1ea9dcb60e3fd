//! Stage 6, serve (HTTP): on a port whose routes have an `http` table, the connection is
//! handed to the HTTP layer ([`smartproxy_http`]), which routes every request on its own. The
//! engine keeps what is per connection: the limits taken so far, byte counting, the lifetime
//! limit, the drain signal of shutdown (HTTP connections close after their current request)
//! and the forced close. The HTTP layer has its own idle and header timers; the connection's
//! route (the terminating route, else the first HTTP route of the port) gives its lifetime
//! and keep-alive idle time with the route's keep-alive treatment applied, and each route its
//! WebSockets' inactivity timeout (`State::http_config`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use smartproxy_http::{ConnInfo, ProxyHeaderFn, TlsInfo};
use tokio::io::{AsyncRead, AsyncWrite};

use super::close::log_close_http;
use super::conn::Conn;
use super::upstream::proxy_header;
use smartproxy_metrics::CloseReason;

use crate::copy::{self, Counted};

/// How long a `Connection: close` request runs before its client is watched for leaving
/// early ([`smartproxy_http::ConnInfo::close_watch_delay`]): the plain client sockets of
/// HTTP ports register with the reactor only when a read has to wait (`lazy.rs`), and most
/// such requests are answered sooner. Not for TLS connections (their handshake registered
/// the socket already).
const CLOSE_WATCH_DELAY: Duration = Duration::from_millis(50);

/// Serves `io` (plain, or the plaintext side of a terminated TLS connection) with the HTTP
/// layer until the client, the layer's timers, the lifetime limit or the drain end it.
/// `dst`: the address the client connected to (for outgoing PROXY headers); `local`: the
/// accepted socket's local address, when it was asked for (see `serve_plain_http`).
pub(crate) async fn serve<S>(
    mut c: Conn,
    io: S,
    tls: Option<TlsInfo>,
    dst: SocketAddr,
    local: Option<SocketAddr>,
) where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    // The connection's bytes are counted under the first HTTP route of its port (or the
    // terminating route its ClientHello chose); its requests are counted per route by the
    // HTTP layer.
    let first = first_http_route(&c);
    if let Some(i) = first {
        let route = &c.state.table.routes()[i];
        c.obs.routed_http(route.name_arc(), c.state.route_metric(i));
    }
    // The connection's timers (lifetime, keep-alive idle, treatment) are those of the route
    // that carries it: the terminating route, else the first HTTP route of the port.
    if c.route.is_none() {
        c.route = first;
    }
    let t = c.effective();
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
        .with_proxy_header(header)
        .with_keepalive_timeout(t.http_keepalive.unwrap_or(Duration::MAX));
    if let Some(l) = local {
        info = info.with_local(l);
    }
    match tls {
        Some(t) => info = info.with_tls(t),
        // A plain connection's socket (`LazyTcp`) registers only when a read has to wait.
        None => info = info.with_close_watch_delay(CLOSE_WATCH_DELAY),
    }
    let mut draining = c.shared.draining.subscribe();
    let shutdown = async move {
        let _ = draining.wait_for(|v| *v).await;
    };
    let io = Counted { inner: io, obs: Arc::clone(&c.obs) };
    let deadline = c.timeouts().deadline;
    let mut stop = c.shared.force_close.subscribe();
    let served = c.shared.http.serve(io, info, shutdown);
    // The lifetime timer is polled only once it fires, not at every wake of the task.
    let lifetime = std::pin::pin!(tokio::time::sleep_until(deadline));
    let lifetime = smartproxy_http::Quiet::new(lifetime);
    // The forced close at the end of the shutdown grace ends it here (counted), before the
    // caller's own wait for it.
    let end = tokio::select! {
        biased;
        r = served => HttpEnd::Served(r),
        () = lifetime => HttpEnd::Lifetime,
        () = copy::wait_stop(&mut stop) => HttpEnd::Forced,
    };
    log_close_http(&c.obs, client, c.port, end);
}

/// How an HTTP connection ended.
#[derive(Debug)]
pub(crate) enum HttpEnd {
    /// The HTTP layer ended it (the client, its timers, the drain, an error).
    Served(smartproxy_http::ServeOutcome),
    /// Its lifetime passed.
    Lifetime,
    /// The forced close at the end of the shutdown grace.
    Forced,
}

impl HttpEnd {
    /// The metrics' close reason.
    pub(crate) fn close_reason(&self) -> CloseReason {
        use smartproxy_http::CloseReason as H;
        match self {
            Self::Lifetime => CloseReason::Lifetime,
            Self::Forced => CloseReason::Shutdown,
            Self::Served(o) => match o.reason {
                H::ClientClosed => CloseReason::Peer,
                // The client sent nothing in time: idle between requests, or a head that
                // never came.
                H::KeepaliveTimeout | H::HeaderTimeout | H::NoRequest => CloseReason::Inactivity,
                H::Shutdown => CloseReason::Shutdown,
                _ => CloseReason::Error,
            },
        }
    }
}

/// The route whose series carries an HTTP connection's bytes: the highest-priority enabled
/// HTTP route on the port (in table order).
pub(crate) fn first_http_route(c: &Conn) -> Option<usize> {
    let table = &c.state.table;
    table
        .routes()
        .iter()
        .filter(|r| r.enabled() && r.http().is_some() && r.config().matcher.ports.contains(c.port))
        .max_by_key(|r| (r.priority(), std::cmp::Reverse(r.index())))
        .map(|r| r.index())
}
