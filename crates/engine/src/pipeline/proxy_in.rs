//! Stage 2, PROXY header in: from a trusted peer (`proxy_ips`) a v1/v2 header is read within
//! `proxy_protocol_timeout` (required unless `proxy_protocol_optional`), and its source becomes
//! the client everywhere after this point (the per-IP limits are taken on it). From an
//! untrusted peer a PROXY signature is refused: on ports that peek anyway its first bytes are
//! checked within `initial_data_timeout`; on other ports the engine waits up to
//! `proxy_protocol_detect_timeout` for first bytes, and forwards a client that stays silent.

use smartproxy_routing::PeekNeed;
use smartproxy_wrapped_socket::{
    HeaderError, HeaderOptions, HeaderPolicy, PeerAddr, WrappedSocket, read_proxy_header,
};
use tokio::io::AsyncRead;

use super::admit::per_ip;
use super::conn::{Closed, Conn};
use crate::observe::Refusal;

/// Reads (or refuses) the PROXY header; returns the socket, which replays what was read after
/// the header.
pub(crate) async fn read_header<S: AsyncRead + Unpin>(
    c: &mut Conn,
    tcp: S,
) -> Result<WrappedSocket<S>, Closed> {
    let config = &c.state.config;
    let opts = if c.trusted {
        let policy = if config.proxy_protocol_optional {
            HeaderPolicy::Optional
        } else {
            HeaderPolicy::Require
        };
        let t = config.proxy_protocol_timeout;
        HeaderOptions::with_deadline(policy, c.accepted + t, t)
    } else if c.state.table.peek_need(c.port) == PeekNeed::None {
        let t = config.proxy_protocol_detect_timeout;
        HeaderOptions::with_deadline(HeaderPolicy::Refuse, c.accepted + t, t)
    } else {
        let t = config.defaults.initial_data_timeout;
        HeaderOptions::with_deadline(HeaderPolicy::Refuse, c.accepted + t, t)
    };
    let sock = match read_proxy_header(tcp, PeerAddr(c.peer), &opts).await {
        Ok(s) => s,
        Err(e) => {
            let obs = &c.shared.obs;
            obs.proxy_header_rejected(c.peer, None, e.kind());
            let reason = match e {
                HeaderError::Untrusted => Refusal::UntrustedProxyHeader,
                _ => Refusal::ProxyHeader,
            };
            obs.refused_kind(reason, Some(e.kind()), c.peer, c.port, &error_chain(&e));
            return Err(Closed);
        }
    };
    c.client = sock.client_addr().0;
    c.obs.client_known(c.client);
    if c.trusted {
        if let Some(h) = sock.proxy_header() {
            c.shared.obs.proxy_header_accepted(c.peer, c.client, h.version());
        }
        c.guards.ip = Some(per_ip(c)?);
    }
    Ok(sock)
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
