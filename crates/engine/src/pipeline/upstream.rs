//! Stage 5, upstream: one of the route's targets connected (a bounded retry over the targets,
//! each attempt observed), the outgoing PROXY header and any bytes to replay written first.
//! One code path for plain forwarding and for TLS termination (which then wraps the stream).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use smartproxy_limits::canonical_ip;
use smartproxy_proxy_protocol::Header;
use smartproxy_routing::{
    CompiledRoute, ConnectFailure, ForwardAction, SendProxyProtocol, TcpKeepalive,
};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::conn::{Closed, Conn};
use crate::fds::FdWait;
use crate::observe::{ConnObserver, EngineObserver, Refusal};

/// A connected target: the stream and the target's host (for TLS server names), borrowed
/// from the route (a copy would be an allocation per connection that only re-encrypting
/// routes use).
pub(crate) struct Upstream<'r> {
    pub(crate) stream: TcpStream,
    pub(crate) host: &'r str,
}

/// Connects a target of `route` for the connection and writes, in this order, the PROXY
/// header (when the route sends one; `dst` is the address the client connected to) and
/// `replay` (bytes already read from the client). The target's guard joins the connection's.
/// `defer_keepalive`: the caller's copy sets the route's TCP keepalive probes on the new
/// socket once the connection is a second old (a short connection never pays the four
/// `setsockopt`s); otherwise they are set before the connect.
pub(crate) async fn connect<'r>(
    c: &mut Conn,
    route: &'r CompiledRoute,
    f: &ForwardAction,
    dst: SocketAddr,
    replay: &[u8],
    defer_keepalive: bool,
) -> Result<Upstream<'r>, Closed> {
    let client_ip = canonical_ip(c.client.ip());
    let t = c.effective();
    let connect_timeout = t.connect;
    let keepalive = if defer_keepalive { TcpKeepalive::Off } else { t.tcp_keepalive };
    let mut first = Vec::new();
    if !f.send_proxy_protocol.is_off() {
        let encoded = proxy_header(f.send_proxy_protocol, c.client, dst)
            .map_err(|e| e.to_string())
            .and_then(|h| h.encode(&mut first).map_err(|e| e.to_string()));
        if let Err(e) = encoded {
            tracing::warn!(error = %e, client = %c.client, %dst, "cannot build the PROXY header");
            return Err(c.refuse(Refusal::BackendUnavailable, "PROXY header"));
        }
    }
    first.extend_from_slice(replay);
    let (obs, engine) = (&*c.obs, &*c.shared.obs);
    let connected = connect_target(
        engine,
        &c.shared.fds,
        obs,
        route,
        f,
        client_ip,
        c.port,
        connect_timeout,
        |host, ip, port| {
            // Boxed: the connect state is only alive for the connect.
            Box::pin(crate::net::connect(host, ip, port, &first, &keepalive))
        },
    )
    .await;
    let Some(((mut stream, done), target)) = connected else {
        route.count_refusal();
        return Err(c.refuse(Refusal::BackendUnavailable, route.name()));
    };
    let host = target.host();
    c.guards.target = Some(target.into_guard());
    if done < first.len() {
        let rest = &first[done..];
        let write = tokio::time::timeout(connect_timeout, stream.write_all(rest)).await;
        if !matches!(write, Ok(Ok(()))) {
            tracing::debug!(client = %c.client, "backend closed before the first bytes were written");
            return Err(Closed);
        }
    }
    Ok(Upstream { stream, host })
}

/// Tries up to three of the route's targets (fewer when it has fewer), each under
/// `connect_timeout`, a refused or silent one skipped for the next; a connect that failed for
/// want of a file descriptor waits for one (`fds`, up to `connect_timeout`) and tries again. Every attempt is observed
/// (log, metrics). Returns the connection and the target it went to.
#[allow(clippy::too_many_arguments)] // The retry loop's own inputs; one caller.
async fn connect_target<'r, T, F, Fut>(
    engine: &EngineObserver,
    fds: &FdWait,
    obs: &ConnObserver,
    route: &'r CompiledRoute,
    f: &ForwardAction,
    client_ip: IpAddr,
    listen_port: u16,
    connect_timeout: Duration,
    mut connect: F,
) -> Option<(T, smartproxy_routing::SelectedTarget<'r>)>
where
    F: FnMut(&'r str, Option<IpAddr>, u16) -> Fut,
    Fut: Future<Output = std::io::Result<T>>,
{
    for attempt in 0..f.targets.len().clamp(1, 3) {
        let t = route.select_target(client_ip, listen_port, attempt)?;
        let label = HostPort(t.host(), t.port());
        let mut started = Instant::now();
        // Out of fds (EMFILE / ENFILE: the proxy's own limit, not the target's fault): wait
        // for one, up to `connect_timeout`, and try the same target again.
        // The turn is held over the next attempt: the accept loops stay paused until it made
        // its socket (replaced without a gap when it has to wait again).
        let (mut fd_deadline, mut turn) = (None, None);
        let outcome = loop {
            match tokio::time::timeout(connect_timeout, connect(t.host(), t.ip(), t.port())).await {
                Ok(Err(e)) if crate::fds::is_out_of_fds(&e) => {
                    let deadline = *fd_deadline.get_or_insert_with(|| started + connect_timeout);
                    tracing::debug!(
                        target = %label,
                        waiting = fds.waiting(),
                        "no file descriptor for the backend socket: waiting for one"
                    );
                    turn = fds.wait_for_fd(deadline).await;
                    if turn.is_none() {
                        break Ok(Err(e));
                    }
                    started = Instant::now();
                }
                r => break r,
            }
        };
        drop(turn);
        match outcome {
            Ok(Ok(s)) => {
                engine.backend_connected(obs, &label, started.elapsed());
                route.target_connected(t.index(), unix_ms);
                return Some((s, t));
            }
            Ok(Err(e)) => {
                route.target_connect_failed(t.index(), unix_ms(), ConnectFailure::of_io(&e));
                engine.backend_connect_failed(obs, &label, &e);
            }
            Err(_) => {
                route.target_connect_failed(t.index(), unix_ms(), ConnectFailure::Timeout);
                engine.backend_connect_failed(
                    obs,
                    &label,
                    &format_args!("no answer within {connect_timeout:?}"),
                );
            }
        }
    }
    None
}

/// UNIX milliseconds, for the targets' health records (read only on a failure or a recovery).
pub(crate) fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A target for logs, formatted only when a log is written.
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
    let s = SocketAddr::new(canonical_ip(src.ip()), src.port());
    let d = SocketAddr::new(canonical_ip(dst.ip()), dst.port());
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
