//! One connection, from accept to close (DESIGN.md §2).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use smartproxy_proxy_protocol::Header;
use smartproxy_routing::{
    CompiledRoute, ConnectionGuard, ForwardAction, HeaderSource, LimitGuard, MatchInput,
    RouteAction, SendProxyProtocol, TlsMode,
};
use smartproxy_wrapped_socket::{
    HeaderError, HeaderOptions, HeaderPolicy, PeerAddr, WrappedSocket, read_proxy_header,
};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::copy::{self, Counted, Outcome, Timeouts};
use crate::engine::{Inner, State};
use crate::handler::{self, ClientStream, HandlerContext};
use crate::http::RequestHead;
use crate::limits::{GaugeGuard, IpGuard};
use crate::net::canonical;
use crate::observe::{ConnObserver, Refusal};
use crate::peek::{PeekFailed, peek};

impl HeaderSource for RequestHead {
    fn get(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// Context for refusing: who and where.
struct Refuser<'a> {
    inner: &'a Inner,
    client: SocketAddr,
    port: u16,
}

impl Refuser<'_> {
    /// Records the refusal; `None` so that a setup step can `return r.refuse(..)`.
    fn refuse<T>(&self, reason: Refusal, detail: &str) -> Option<T> {
        self.inner.obs.refused(reason, self.client, self.port, detail);
        None
    }
}

/// A plain TCP connection once the backend is connected: what the copy phase needs, and the
/// guards that hold its places in the limits until it closes.
///
/// The setup (PROXY header, peek, routing, connect) runs in its own future, which is gone
/// before the copy starts: the connection's task only keeps this (about 200 bytes) for the
/// life of the connection, not the setup's dead locals.
struct Established {
    // Dropped in this order at close: the limits are released before the sockets close, and
    // the observer (inside `conn`) goes last.
    _target: ConnectionGuard,
    _route: LimitGuard,
    _ip: Option<IpGuard>,
    _global: GaugeGuard,
    conn: copy::PlainConn,
}

/// The guards a connection holds once routed.
struct Guards {
    global: GaugeGuard,
    ip: Option<IpGuard>,
    route: LimitGuard,
}

/// Serves one accepted connection (the future the accept loop spawns). Never panics on
/// network input; every guard it takes is released when it returns.
///
/// Two phases: [`setup`] (boxed: its state is freed once the backend is connected) and, for
/// plain TCP forwarding, the copy. Forced shutdown ends either: during the setup silently (as
/// a refusal would), during the copy with the "shutdown" outcome in the close log.
pub(crate) fn serve(
    inner: Arc<Inner>,
    tcp: TcpStream,
    peer: SocketAddr,
    port: u16,
    accepted: Instant,
) -> impl Future<Output = ()> + Send {
    // Boxed: the setup's state (header, peek, routing, connect) is freed once it is done;
    // created here, so that the task does not also keep its arguments.
    let setup = Box::pin(setup(Arc::clone(&inner), tcp, peer, port, accepted));
    async move {
        let mut stop = inner.force_close.subscribe();
        let c = match tokio::select! {
            // Forced shutdown also ends connections that are still being set up (reading a
            // header, peeking, connecting) and the ones served inside the setup (TLS
            // termination, socket handlers).
            c = setup => c,
            () = copy::wait_stop(&mut stop) => None,
        } {
            Some(c) => c,
            None => return,
        };
        let stop = std::pin::pin!(copy::wait_stop(&mut stop));
        // Read here rather than kept from the setup: it would grow every connection's task.
        let splice = inner.state.load().config.defaults.splice;
        let outcome = copy::pipe_tcp(&c.conn, stop, splice).await;
        let obs = &c.conn.obs;
        // Known since the PROXY header stage (`peer` is not kept: it would size the task).
        let client = obs.client().unwrap_or(SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), 0));
        log_close(obs, client, port, obs.route().unwrap_or_default(), &outcome);
    }
}

/// The size of [`serve`]'s future, the state of every connection's task.
pub(crate) fn task_size() -> usize {
    fn output_size<F, R>(_: F) -> usize
    where
        F: FnOnce(Arc<Inner>, TcpStream, SocketAddr, u16, Instant) -> R,
    {
        std::mem::size_of::<R>()
    }
    output_size(serve)
}

/// The setup of a connection: limits, PROXY header, peek, routing, then either a plain TCP
/// backend connected (returned for the copy) or the whole connection served here (TLS
/// termination, socket handlers, refusals), which returns `None`.
async fn setup(
    inner: Arc<Inner>,
    tcp: TcpStream,
    peer: SocketAddr,
    port: u16,
    accepted: Instant,
) -> Option<Established> {
    let obs = inner.obs.conn_opened(peer, port);
    let inner = &*inner;
    let mut r = Refuser { inner, client: peer, port };
    let state = inner.state.load_full();
    let d = &state.config.defaults;
    let Some(global) = inner.global.acquire(d.max_connections) else {
        return r.refuse(Refusal::GlobalLimit, "");
    };
    // Linux: accepted sockets inherit TCP_NODELAY from the listener (no syscall here).
    #[cfg(not(target_os = "linux"))]
    let _ = tcp.set_nodelay(true);
    let peer_ip = canonical(peer.ip());
    let trusted = state.accept_pp && state.trusted.iter().any(|c| c.contains(peer_ip));

    // Limits on the peer before any read, unless it is a trusted proxy (then on the client).
    let mut ip_guard = None;
    if !trusted {
        match inner.ip_limits.acquire(
            peer_ip,
            d.max_connections_per_ip,
            d.connection_rate_limit_per_minute,
        ) {
            Ok(g) => ip_guard = Some(g),
            Err(reason) => return r.refuse(reason, ""),
        }
    }

    // PROXY header.
    let need = state.table.peek_need(port);
    let cfg = &state.config;
    let opts = if trusted {
        let policy = if cfg.proxy_protocol_optional {
            HeaderPolicy::Optional
        } else {
            HeaderPolicy::Require
        };
        HeaderOptions::with_deadline(
            policy,
            accepted + cfg.proxy_protocol_timeout,
            cfg.proxy_protocol_timeout,
        )
    } else if need == smartproxy_routing::PeekNeed::None {
        let t = cfg.proxy_protocol_detect_timeout;
        HeaderOptions::with_deadline(HeaderPolicy::Refuse, accepted + t, t)
    } else {
        let t = d.initial_data_timeout;
        HeaderOptions::with_deadline(HeaderPolicy::Refuse, accepted + t, t)
    };
    let mut sock = match read_proxy_header(tcp, PeerAddr(peer), &opts).await {
        Ok(s) => s,
        Err(e) => {
            inner.obs.proxy_header_rejected(peer, None, e.kind());
            let reason = match e {
                HeaderError::Untrusted => Refusal::UntrustedProxyHeader,
                _ => Refusal::ProxyHeader,
            };
            inner.obs.refused_kind(reason, Some(e.kind()), peer, port, &error_chain(&e));
            return None;
        }
    };
    let client = sock.client_addr().0;
    let client_ip = canonical(client.ip());
    obs.client_known(client);
    if trusted {
        if let Some(h) = sock.proxy_header() {
            inner.obs.proxy_header_accepted(peer, client, h.version());
        }
        r.client = client;
        match inner.ip_limits.acquire(
            client_ip,
            d.max_connections_per_ip,
            d.connection_rate_limit_per_minute,
        ) {
            Ok(g) => ip_guard = Some(g),
            Err(reason) => return r.refuse(reason, ""),
        }
    }

    // Peek what routing needs.
    let info = match peek(&mut sock, need, accepted + d.initial_data_timeout).await {
        Ok(i) => i,
        Err(e) => {
            let detail = e.to_string();
            return match e {
                PeekFailed::Eof => {
                    tracing::debug!(%client, port, "closed before sending routing data");
                    None
                }
                _ => r.refuse(Refusal::InitialData, &detail),
            };
        }
    };

    // Route.
    let matched = {
        // `MatchInput` holds a non-`Sync` reference: keep it out of the awaits below.
        let mut input = MatchInput::new(port, client_ip);
        if let Some(dom) = info.domain.as_deref() {
            input = input.with_domain(dom);
        }
        if let Some(p) = info.path() {
            input = input.with_path(p);
        }
        if info.is_tls {
            input = input.with_tls(info.tls_version);
            if state.table.http_after_termination(port) {
                // Path / header criteria of terminating routes are checked after the
                // handshake (tls.rs routes again on the decrypted request head).
                input = input.before_termination();
            }
        }
        if let Some(h) = &info.head {
            input = input.with_headers(h);
        }
        state.table.lookup(&input).map(|m| (m.route, m.index))
    };
    let Some((route, route_index)) = matched else {
        return r.refuse(Refusal::NoRoute, info.domain.as_deref().unwrap_or(""));
    };
    if !route.allows_ip(client_ip) {
        return r.refuse(Refusal::NotAllowed, route.name());
    }
    let route_guard = match route.limits().try_acquire(client_ip) {
        Ok(g) => g,
        Err(e) => {
            let reason = match e {
                smartproxy_routing::LimitExceeded::MaxConnections { .. } => Refusal::RouteLimit,
                _ => Refusal::RouteIpLimit,
            };
            return r.refuse(reason, &format!("{}: {e}", route.name()));
        }
    };
    obs.routed(route.name_arc(), state.route_metric(route_index));
    tracing::debug!(%client, port, route = route.name(), "routed");

    let timeouts = Timeouts {
        inactivity: d.inactivity_timeout,
        deadline: accepted + d.max_connection_lifetime,
    };
    let guards = Guards { global, ip: ip_guard, route: route_guard };
    match &route.config().action {
        RouteAction::Forward(f) => {
            forward(inner, &state, route, f, sock, obs, timeouts, &r, guards).await
        }
        RouteAction::SocketHandler(h) => {
            let ctx = HandlerContext {
                client_addr: sock.client_addr(),
                peer_addr: sock.peer_addr(),
                local_addr: local_addr(sock.get_ref(), port),
                port,
                route_name: route.name().to_owned(),
                action: h.clone(),
                domain: info.domain.clone(),
                initial_data_deadline: Instant::now() + d.initial_data_timeout,
            };
            let stream = ClientStream { inner: Counted { inner: sock, obs: Arc::clone(&obs) } };
            // Boxed: a handler's future is large and would size every connection's setup.
            let fut = Box::pin(handler::run(&inner.handlers, stream, ctx));
            let mut stop = inner.force_close.subscribe();
            let outcome = match copy::supervise(fut, &obs, timeouts, &mut stop).await {
                Ok(Ok(())) => Outcome::Done,
                Ok(Err(e)) => Outcome::Error(e),
                Err(o) => o,
            };
            log_close(&obs, client, port, route.name(), &outcome);
            drop(guards);
            None
        }
        _ => r.refuse(Refusal::NoRoute, "unsupported action"),
    }
}

/// Forwarding: TLS termination is served here (boxed); plain TCP is connected (PROXY header
/// and replayed bytes written) and returned for the copy.
#[allow(clippy::too_many_arguments)] // One call site; a struct would only rename them.
async fn forward(
    inner: &Inner,
    state: &State,
    route: &CompiledRoute,
    f: &ForwardAction,
    sock: WrappedSocket<TcpStream>,
    obs: Arc<ConnObserver>,
    timeouts: Timeouts,
    r: &Refuser<'_>,
    guards: Guards,
) -> Option<Established> {
    if f.tls.as_ref().is_some_and(|t| t.mode != TlsMode::Passthrough) {
        let port = r.port;
        let local = local_addr(sock.get_ref(), port);
        let mut stop = inner.force_close.subscribe();
        // Boxed: the TLS state machine is several KiB.
        let tls = crate::tls::forward(
            inner, state, route, f, sock, local, &obs, timeouts, &mut stop, port,
        );
        Box::pin(tls).await;
        drop(guards);
        return None;
    }
    let client = sock.client_addr().0;
    let client_ip = canonical(client.ip());
    let connect_timeout = f.connect_timeout.unwrap_or(state.config.defaults.connect_timeout);

    // PROXY header out and replayed bytes, in one write, which also confirms the connect.
    let mut first = Vec::new();
    if !f.send_proxy_protocol.is_off() {
        let dst = match sock.proxy_header().and_then(Header::destination) {
            Some(d) => d,
            None => local_addr(sock.get_ref(), r.port),
        };
        match proxy_header(f.send_proxy_protocol, client, dst) {
            Ok(h) => {
                if let Err(e) = h.encode(&mut first) {
                    tracing::warn!(error = %e, "cannot encode the PROXY header");
                    return r.refuse(Refusal::BackendUnavailable, "PROXY header");
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, %client, %dst, "cannot build the PROXY header");
                return r.refuse(Refusal::BackendUnavailable, "PROXY header");
            }
        }
    }
    let (client_tcp, replay) = sock.into_parts();
    obs.add_in(replay.len() as u64);
    let first = if first.is_empty() {
        replay
    } else {
        first.extend_from_slice(&replay);
        first
    };

    // Boxed: the connect state is only alive for the connect.
    let connected =
        connect_target(inner, &obs, route, f, client_ip, r.port, connect_timeout, |host, port| {
            Box::pin(crate::net::connect(host, port, &first))
        })
        .await;
    let Some(((mut backend, done), target)) = connected else {
        return r.refuse(Refusal::BackendUnavailable, route.name());
    };
    let target = target.into_guard();
    if done < first.len() {
        let rest = &first[done..];
        let write = tokio::time::timeout(connect_timeout, backend.write_all(rest)).await;
        if !matches!(write, Ok(Ok(()))) {
            tracing::debug!(%client, "backend closed before the first bytes were written");
            return None;
        }
    }
    Some(Established {
        _target: target,
        _route: guards.route,
        _ip: guards.ip,
        _global: guards.global,
        conn: copy::PlainConn { backend, client: client_tcp, obs, timeouts },
    })
}

/// The local address of an accepted socket (one `getsockname`, so only when needed).
fn local_addr(tcp: &TcpStream, port: u16) -> SocketAddr {
    tcp.local_addr().unwrap_or_else(|_| SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), port))
}

/// A target for logs, formatted only when a log is written.
/// Connects to one of the route's targets: up to three candidates (fewer when the route has
/// fewer), each under `connect_timeout`, a refused or silent one skipped for the next. Every
/// attempt is observed (log, metrics). Returns the connection and the target it went to.
#[allow(clippy::too_many_arguments)] // Two call sites (plain and TLS); a struct would only rename them.
pub(crate) async fn connect_target<'r, T, F, Fut>(
    inner: &Inner,
    obs: &ConnObserver,
    route: &'r CompiledRoute,
    f: &ForwardAction,
    client_ip: IpAddr,
    listen_port: u16,
    connect_timeout: std::time::Duration,
    mut connect: F,
) -> Option<(T, smartproxy_routing::SelectedTarget<'r>)>
where
    F: FnMut(&'r str, u16) -> Fut,
    Fut: std::future::Future<Output = std::io::Result<T>>,
{
    for attempt in 0..f.targets.len().clamp(1, 3) {
        let t = route.select_target(client_ip, listen_port, attempt)?;
        let label = HostPort(t.host(), t.port());
        let started = Instant::now();
        match tokio::time::timeout(connect_timeout, connect(t.host(), t.port())).await {
            Ok(Ok(s)) => {
                inner.obs.backend_connected(obs, &label, started.elapsed());
                return Some((s, t));
            }
            Ok(Err(e)) => inner.obs.backend_connect_failed(obs, &label, &e),
            Err(_) => inner.obs.backend_connect_failed(
                obs,
                &label,
                &format_args!("no answer within {connect_timeout:?}"),
            ),
        }
    }
    None
}

struct HostPort<'a>(&'a str, u16);

impl std::fmt::Display for HostPort<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0.contains(':') {
            write!(f, "[{}]:{}", self.0, self.1)
        } else {
            write!(f, "{}:{}", self.0, self.1)
        }
    }
}

/// Builds the outgoing header from validated addresses. v1 needs one family for both: a
/// mixed pair keeps the client's family with an unspecified destination.
pub(crate) fn proxy_header(
    v: SendProxyProtocol,
    src: SocketAddr,
    dst: SocketAddr,
) -> Result<Header, smartproxy_proxy_protocol::Error> {
    let (src, dst) = same_family(src, dst);
    match v {
        SendProxyProtocol::V2 => Header::v2(src, dst),
        _ => Header::v1(src, dst),
    }
}

fn same_family(src: SocketAddr, dst: SocketAddr) -> (SocketAddr, SocketAddr) {
    let s = SocketAddr::new(canonical(src.ip()), src.port());
    let d = SocketAddr::new(canonical(dst.ip()), dst.port());
    match (s.ip(), d.ip()) {
        (IpAddr::V4(_), IpAddr::V4(_)) | (IpAddr::V6(_), IpAddr::V6(_)) => (s, d),
        (IpAddr::V4(_), IpAddr::V6(_)) => {
            (s, SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), d.port()))
        }
        (IpAddr::V6(_), IpAddr::V4(_)) => {
            (s, SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), d.port()))
        }
    }
}

pub(crate) fn log_close(
    obs: &ConnObserver,
    client: SocketAddr,
    port: u16,
    route: &str,
    outcome: &Outcome,
) {
    let (bytes_in, bytes_out) = (obs.bytes_in(), obs.bytes_out());
    match outcome {
        Outcome::Error(e) => {
            tracing::debug!(%client, port, route, bytes_in, bytes_out, error = %e, "connection closed on error");
        }
        o => {
            tracing::debug!(%client, port, route, bytes_in, bytes_out, reason = o.as_str(), "connection closed")
        }
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
