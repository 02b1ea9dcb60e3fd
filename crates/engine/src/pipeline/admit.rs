//! Stage 1, admit: the global connection limit and, unless the peer is a trusted proxy, the
//! per-IP limits on the peer, before any byte is read. (Behind a trusted proxy the per-IP
//! limits apply to the real client, in the PROXY stage.)

use std::net::SocketAddr;
use std::sync::Arc;

use smartproxy_limits::{IpGuard, Refused, canonical_ip};
use tokio::time::Instant;

use super::conn::{Closed, Conn, Guards};
use crate::observe::Refusal;
use crate::shared::Shared;

/// Opens the connection's books and takes its first places in the limits.
pub(crate) fn admit(
    shared: Arc<Shared>,
    peer: SocketAddr,
    port: u16,
    bound: Option<std::net::IpAddr>,
    accepted: Instant,
) -> Result<Conn, Closed> {
    let obs = shared.obs.conn_opened(peer, port);
    let state = shared.state.load_full();
    let config = &state.config;
    let peer_ip = canonical_ip(peer.ip());
    let trusted =
        config.accept_proxy_protocol && config.proxy_ips.iter().any(|p| p.contains(peer_ip));
    let global = shared.global.acquire(config.defaults.max_connections);
    let mut c = Conn {
        shared,
        state,
        obs,
        port,
        bound,
        peer,
        client: peer,
        trusted,
        accepted,
        guards: Guards::default(),
        route: None,
    };
    let Some(global) = global else {
        return Err(c.refuse(Refusal::GlobalLimit, ""));
    };
    c.guards.global = Some(global);
    if !trusted {
        c.guards.ip = Some(per_ip(&c)?);
    }
    Ok(c)
}

/// A place in the engine-wide per-IP limits for the connection's client (the peer, or the
/// real client once a PROXY header told it).
pub(crate) fn per_ip(c: &Conn) -> Result<IpGuard, Closed> {
    c.shared.ip_limits.try_acquire(canonical_ip(c.client.ip())).map_err(|e| match e {
        Refused::RateLimited { .. } => c.refuse(Refusal::RateLimit, ""),
        _ => c.refuse(Refusal::IpLimit, ""),
    })
}
