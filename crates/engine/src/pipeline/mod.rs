//! The connection pipeline: typed stages that a connection flows through one way, each a
//! module that reads alone (DESIGN.md §2).
//!
//! ```text
//! accept ─► admit ─► proxy_in ─► classify ─► route ─► upstream ─► serve ─► close
//! listener   limits   PROXY hdr   ClientHello  table    connect,    copy /   one log line,
//!            (global,  (real       / HTTP head  lookup,  PROXY out,  TLS /    limits and
//!            per-IP)   client)                  guards   replay      handler  metrics by drop
//! ```
//!
//! Between classify and route, `challenge` answers the ACME validation requests of our own
//! certificate orders (HTTP-01, TLS-ALPN-01) and ends those connections.
//!
//! Every stage takes the per-connection context ([`conn::Conn`]) and returns
//! `Result<_, Closed>`: a stage that ends the connection has recorded why. The setup (admit to
//! upstream) runs in a boxed future that is freed once a plain connection's backend is
//! connected; the copy then runs with only [`conn::Established`] and the copy state in the
//! connection's task (about 650 bytes, `tests/task_size.rs`). TLS termination and socket
//! handlers are served inside the setup future.

pub(crate) mod accept;
mod admit;
mod challenge;
mod classify;
mod close;
mod conn;
mod proxy_in;
mod route;
mod serve_handler;
mod serve_http;
mod serve_tls;
mod upstream;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use smartproxy_routing::{RouteAction, TlsMode};
use tokio::net::TcpStream;
use tokio::time::Instant;

use self::accept::Accepted;
use self::conn::{Closed, Conn, Established};
use crate::copy;
use crate::lazy::LazyTcp;
use crate::shared::Shared;

/// Serves one accepted connection (the future the accept loop spawns). Never panics on
/// network input; every guard it takes is released when it returns.
///
/// Forced shutdown ends the setup silently (as a refusal would) and the copy with the
/// "shutdown" outcome in the close log.
pub(crate) fn serve(
    shared: Arc<Shared>,
    tcp: Accepted,
    peer: SocketAddr,
    port: u16,
    bound: Option<IpAddr>,
    accepted: Instant,
) -> impl Future<Output = ()> + Send {
    // Boxed: the setup's state (header, peek, routing, connect) is freed once it is done;
    // created here, so that the task does not also keep its arguments.
    let setup = in_box(|| setup(Arc::clone(&shared), tcp, peer, port, bound, accepted));
    async move {
        let mut stop = shared.force_close.subscribe();
        let est = match tokio::select! {
            // The setup first: TLS termination and socket handlers, served inside it, watch
            // the same signal and end with the "shutdown" outcome (logged and counted).
            biased;
            // Forced shutdown also ends connections that are still being set up (reading a
            // header, peeking, connecting) and the ones served inside the setup (TLS
            // termination, socket handlers).
            r = setup => r,
            () = copy::wait_stop(&mut stop) => Err(Closed),
        } {
            Ok(Some(e)) => e,
            Ok(None) | Err(Closed) => return,
        };
        let stop = std::pin::pin!(copy::wait_stop(&mut stop));
        // Read here rather than kept from the setup: it would grow every connection's task.
        let splice = shared.state.load().config.defaults.splice;
        let outcome = copy::pipe_tcp(&est.conn, stop, splice).await;
        let obs = &est.conn.obs;
        // Known since the PROXY header stage (`peer` is not kept: it would size the task).
        let client = obs.client().unwrap_or(SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), 0));
        close::log_close(obs, client, port, obs.route().unwrap_or_default(), &outcome);
    }
}

/// `Box::pin(make())` with the box allocated first, so that the future is written in place:
/// `Box::pin(f())` builds the future on the stack and copies all of its bytes into the box,
/// whatever state it is in (a future is as large as its largest state: several KiB for the
/// HTTP layer and TLS termination, copied at every connection; callgrind shows the copy gone
/// this way in the release build).
#[allow(unsafe_code)]
#[inline(always)]
pub(crate) fn in_box<F: Future>(make: impl FnOnce() -> F) -> std::pin::Pin<Box<F>> {
    let mut b = Box::<F>::new_uninit();
    b.write(make());
    // SAFETY: initialised by the write above (a panic in `make` leaves the box to be freed
    // uninitialised, without a drop of `F`).
    Box::into_pin(unsafe { b.assume_init() })
}

/// Starts serving one accepted connection: a task of its own, its future written into its
/// box in place ([`in_box`]). On a plain HTTP listener (`plain_listener`: the port had plain
/// HTTP routes only when it started; see `accept::spawn`) whose port still has only those,
/// the connection is admitted here, at the accept, and its task's future is the HTTP
/// connection itself, without the layer-4 path's setup box and copy state around it, nor an
/// `async fn` layer that would copy it once more (two allocations and several KiB of copies
/// fewer per connection); a connection the limits refuse never becomes a task. Every other
/// connection (those of a plain HTTP listener whose port a reload gave other routes too)
/// takes the general way ([`serve`]).
pub(crate) fn spawn(
    shared: Arc<Shared>,
    tcp: Accepted,
    peer: SocketAddr,
    port: u16,
    bound: Option<IpAddr>,
    accepted: Instant,
    plain_listener: bool,
) {
    if !plain_listener || !plain_http_port(&shared.state.load().table, port) {
        tokio::spawn(in_box(|| serve(shared, tcp, peer, port, bound, accepted)));
        return;
    }
    let Ok(c) = admit::admit(shared, peer, port, bound, accepted) else { return };
    let io = tcp.into_lazy();
    tokio::spawn(in_box(|| serve_plain_http(c, io)));
}

/// The stages up to the serve stage: `Some` with a plain connection ready for the copy, or
/// `None` when the connection was served here (TLS termination, socket handlers).
async fn setup(
    shared: Arc<Shared>,
    tcp: Accepted,
    peer: SocketAddr,
    port: u16,
    bound: Option<IpAddr>,
    accepted: Instant,
) -> Result<Option<Established>, Closed> {
    let mut c = admit::admit(shared, peer, port, bound, accepted)?;
    let http_port = c.state.table.is_http_port(port);
    if plain_http_port(&c.state.table, port) {
        // Plain HTTP: every request is routed by the HTTP layer; nothing to peek here. A
        // plain socket registers with the reactor at its first wait (`lazy.rs`).
        let io = tcp.into_lazy();
        // Boxed, as the other paths served here: inline, the HTTP layer's state (about
        // 5.4 KiB) would size the setup of every connection (`tests/task_size.rs`).
        in_box(|| serve_plain_http(c, io)).await;
        return Ok(None);
    }
    let tcp = match tcp {
        Accepted::Registered(t) => t,
        // From a listener started for plain HTTP whose port now has other routes (a reload).
        Accepted::Plain(s) => match TcpStream::from_std(s) {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(client = %c.client, port, error = %e, "cannot register the accepted socket");
                return Err(Closed);
            }
        },
    };
    // Linux: accepted sockets inherit TCP_NODELAY from the listener (no syscall here).
    #[cfg(not(target_os = "linux"))]
    let _ = tcp.set_nodelay(true);
    let mut sock = proxy_in::read_header(&mut c, tcp).await?;
    let info = classify::classify(&c, &mut sock).await?;
    let Some(sock) = challenge::answer(&c, sock, &info).await? else { return Ok(None) };
    let index = route::route(&mut c, &info)?;
    // TCP keepalive probes on the client socket, as the route says (usually inherited from
    // the listening socket already; its backend socket gets them when it is made, in
    // `upstream`).
    let inherited = &c.shared.listener_keepalive;
    crate::net::set_accepted_keepalive(sock.get_ref(), &c.effective().tcp_keepalive, inherited);
    let state = Arc::clone(&c.state);
    let route = &state.table.routes()[index];
    match &route.config().action {
        RouteAction::Forward(f)
            if f.tls.as_ref().is_some_and(|t| t.mode != TlsMode::Passthrough) =>
        {
            let mut stop = c.shared.force_close.subscribe();
            // Boxed: the TLS state machine is several KiB.
            in_box(|| serve_tls::serve(c, index, sock, &mut stop)).await?;
            Ok(None)
        }
        // An HTTP port that mixes TLS and plain connections, this one plain.
        _ if http_port => {
            let (dst, local) = http_addrs(&c, &sock);
            // The same HTTP layer as on plain ports (one instance of it in the binary).
            let sock = sock.map_inner(LazyTcp::registered);
            in_box(|| serve_http::serve(c, sock, None, dst, local)).await;
            Ok(None)
        }
        RouteAction::Forward(f) => {
            let dst = match sock
                .proxy_header()
                .and_then(smartproxy_proxy_protocol::Header::destination)
            {
                Some(d) => d,
                None if f.send_proxy_protocol.is_off() => {
                    SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), port)
                }
                None => c.local_addr(sock.get_ref()),
            };
            let (client_tcp, replay) = sock.into_parts();
            c.obs.add_in(replay.len() as u64);
            // The plain copy (`pipe_tcp`) sets the backend's keepalive probes itself, once
            // the connection is a second old, when it can hold them.
            let keepalive = crate::copy::BackendKeepalive::deferred(&c.effective().tcp_keepalive);
            let up = upstream::connect(&mut c, route, f, dst, &replay, keepalive.is_some()).await?;
            let half_close = f.half_close.unwrap_or(c.state.config.defaults.half_close);
            Ok(Some(c.establish(client_tcp, up.stream, keepalive, half_close)))
        }
        RouteAction::SocketHandler(h) => {
            let mut stop = c.shared.force_close.subscribe();
            in_box(|| serve_handler::serve(c, index, h, sock, info, &mut stop)).await;
            Ok(None)
        }
        _ => Err(c.refuse(crate::observe::Refusal::NoRoute, "unsupported action")),
    }
}

/// A connection on a port with plain HTTP routes only: the PROXY header stage, then the HTTP
/// layer. The forced close at the end of the shutdown grace ends the header stage silently
/// (as in the setup of other connections) and the HTTP layer with the "shutdown" outcome.
async fn serve_plain_http(mut c: Conn, io: LazyTcp) {
    // Linux: accepted sockets inherit TCP_NODELAY from the listener (no syscall here).
    #[cfg(not(target_os = "linux"))]
    let _ = socket2::SockRef::from(&io).set_tcp_nodelay(true);
    let mut stop = c.shared.force_close.subscribe();
    let header = tokio::select! {
        biased;
        r = proxy_in::read_header(&mut c, io) => r,
        () = copy::wait_stop(&mut stop) => Err(Closed),
    };
    drop(stop);
    let Ok(sock) = header else { return };
    // TCP keepalive as the first HTTP route of the port says (the route of the connection).
    let probes = serve_http::first_http_route(&c)
        .and_then(|i| c.state.timeouts.get(i))
        .map_or(c.state.config.defaults.tcp_keepalive, |t| t.tcp_keepalive);
    crate::net::set_accepted_keepalive(sock.get_ref(), &probes, &c.shared.listener_keepalive);
    let (dst, local) = http_addrs(&c, &sock);
    serve_http::serve(c, sock, None, dst, local).await;
}

/// Whether every route on `port` is a plain (not TLS) HTTP route: its connections go to the
/// HTTP layer without a peek, and its listener accepts lazily (`lazy.rs`).
pub(crate) fn plain_http_port(table: &smartproxy_routing::RouteTable, port: u16) -> bool {
    table.is_http_port(port) && !table.has_tls_routes(port)
}

/// A plain HTTP connection's addresses for the HTTP layer: the destination for outgoing
/// PROXY headers (the incoming header's, else the local address) and the local address. The
/// local address costs a `getsockname` on a wildcard listener: asked only when a route may
/// use it (an outgoing PROXY header, a redirect's or a header template's `{domain}` without
/// a Host). A reload that adds such a route while the connection is open gives its requests
/// the unspecified address there.
fn http_addrs<S: std::os::fd::AsFd>(
    c: &Conn,
    sock: &smartproxy_wrapped_socket::WrappedSocket<S>,
) -> (SocketAddr, Option<SocketAddr>) {
    let local = (c.bound.is_some() || c.shared.http.needs_local_addr())
        .then(|| c.local_addr(sock.get_ref()));
    let dst = sock.proxy_header().and_then(smartproxy_proxy_protocol::Header::destination);
    let dst = dst.or(local).unwrap_or(SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), c.port));
    (dst, local)
}

/// The size of the future `f` returns for a connection's arguments.
fn output_size<F, R>(_: F) -> usize
where
    F: FnOnce(Arc<Shared>, Accepted, SocketAddr, u16, Option<IpAddr>, Instant) -> R,
{
    std::mem::size_of::<R>()
}

/// The size of [`serve`]'s future, the state of every connection's task.
pub(crate) fn task_size() -> usize {
    output_size(serve)
}

/// The size of a plain HTTP connection's task future ([`spawn`]).
pub(crate) fn plain_http_task_size() -> usize {
    fn size<F, R>(_: F) -> usize
    where
        F: FnOnce(Conn, LazyTcp) -> R,
    {
        std::mem::size_of::<R>()
    }
    size(serve_plain_http)
}

/// The size of [`setup`]'s future, boxed for every connection at its accept (moved into
/// the box, so every byte of it is copied) and freed when the copy starts.
pub(crate) fn setup_size() -> usize {
    output_size(setup)
}
