//! The per-connection context that every stage takes: who (peer, real client), where (port),
//! under which configuration, its observer, and the places it holds in the limits.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use smartproxy_limits::IpGuard;
use smartproxy_routing::{ConnectionGuard, LimitGuard};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::copy::{PlainConn, Timeouts};
use crate::limits::GaugeGuard;
use crate::observe::{ConnObserver, Refusal};
use crate::shared::Shared;
use crate::state::State;
use crate::timeouts::EffectiveTimeouts;

/// The connection ended inside a stage, which recorded why (a refusal, a log line). Stages
/// return `Result<T, Closed>` so that the pipeline reads as a chain of `?`.
#[derive(Debug)]
pub(crate) struct Closed;

/// One connection as it moves through the stages.
pub(crate) struct Conn {
    pub(crate) shared: Arc<Shared>,
    /// The configuration in force when the connection was accepted.
    pub(crate) state: Arc<State>,
    pub(crate) obs: Arc<ConnObserver>,
    pub(crate) port: u16,
    /// The address of the listener when it is bound to one (the local address of every
    /// socket it accepts); `None` for a wildcard bind.
    pub(crate) bound: Option<IpAddr>,
    /// The TCP peer.
    pub(crate) peer: SocketAddr,
    /// The real client: the peer, or the source of a trusted PROXY header.
    pub(crate) client: SocketAddr,
    /// The peer is a trusted proxy (`proxy_ips`, with `accept_proxy_protocol`).
    pub(crate) trusted: bool,
    pub(crate) accepted: Instant,
    pub(crate) guards: Guards,
    /// The route's index in the table, once routed.
    pub(crate) route: Option<usize>,
}

/// The places a connection holds in the limits, released when it closes (in field order, the
/// observer after them).
#[derive(Debug, Default)]
pub(crate) struct Guards {
    pub(crate) target: Option<ConnectionGuard>,
    pub(crate) route: Option<LimitGuard>,
    pub(crate) ip: Option<IpGuard>,
    pub(crate) global: Option<GaugeGuard>,
}

impl Conn {
    /// Records a refusal (counted, one log line) and ends the connection.
    pub(crate) fn refuse(&self, reason: Refusal, detail: &str) -> Closed {
        self.shared.obs.refused(reason, self.client, self.port, detail);
        Closed
    }

    /// The timeouts of the connection's route (resolved when the configuration was loaded),
    /// or `[defaults]` before it is routed.
    pub(crate) fn effective(&self) -> EffectiveTimeouts {
        match self.route.and_then(|i| self.state.timeouts.get(i)) {
            Some(t) => *t,
            None => EffectiveTimeouts::unrouted(&self.state.config.defaults),
        }
    }

    /// The timeouts of the established connection: inactivity and the lifetime counted from
    /// the accept, with the route's keep-alive treatment and jitter applied.
    pub(crate) fn timeouts(&self) -> Timeouts {
        self.effective().for_connection(self.accepted, self.peer)
    }

    /// Hands the sockets and the guards over to the copy. `backend_keepalive`: the probes
    /// the copy sets on the backend once the connection is a second old (the socket was
    /// connected without them: `upstream::connect` with `defer_keepalive`).
    /// `half_close`: the route's (see [`PlainConn::half_close`]).
    pub(crate) fn establish(
        self,
        client: TcpStream,
        backend: TcpStream,
        backend_keepalive: Option<crate::copy::BackendKeepalive>,
        half_close: bool,
    ) -> Established {
        let timeouts = self.timeouts();
        let obs = self.obs;
        Established {
            _guards: self.guards,
            conn: PlainConn { backend, client, obs, timeouts, backend_keepalive, half_close },
        }
    }
}

/// A plain TCP connection once the backend is connected: what the copy needs, and the guards
/// that hold its places in the limits until it closes.
///
/// The setup stages run in their own (boxed) future, which is gone before the copy starts:
/// the connection's task only keeps this for the life of the connection.
pub(crate) struct Established {
    // Dropped in this order at close: the limits are released before the sockets close, and
    // the observer (inside `conn`) goes last.
    _guards: Guards,
    pub(crate) conn: PlainConn,
}

impl Conn {
    /// The local address of the accepted socket: the listener's, or one `getsockname` when
    /// the listener is bound to a wildcard address (so only when needed).
    pub(crate) fn local_addr(&self, tcp: &impl std::os::fd::AsFd) -> SocketAddr {
        if let Some(ip) = self.bound {
            return SocketAddr::new(ip, self.port);
        }
        socket2::SockRef::from(tcp)
            .local_addr()
            .ok()
            .and_then(|a| a.as_socket())
            .unwrap_or_else(|| SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), self.port))
    }
}
