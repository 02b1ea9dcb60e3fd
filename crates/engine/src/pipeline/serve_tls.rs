//! Stage 6, serve (TLS termination and re-encryption): the handshake with the client (the
//! peeked ClientHello is replayed by the socket), routing again on the decrypted request head
//! when the port's terminating routes have path or header criteria, the target connected by
//! the upstream stage (PROXY header first, in plain), optionally wrapped in a rustls client,
//! and the plaintext copied both ways. `bytes_in` / `bytes_out` count the plaintext from and
//! to the client. The rustls configurations come from [`crate::tls_setup`].

use std::sync::Arc;

use smartproxy_limits::canonical_ip;
use smartproxy_proxy_protocol::Header;
use smartproxy_routing::{MatchInput, TlsVersion};
use smartproxy_wrapped_socket::{PeerAddr, WrappedSocket};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_rustls::TlsConnector;

use super::close::log_close;
use super::conn::{Closed, Conn};
use super::route;
use super::upstream;
use crate::config::tls_files::terminating;
use crate::copy::{self, Counted};
use crate::http::RequestHead;
use crate::observe::Refusal;

/// Serves a connection routed to the terminating route at `index` of the table.
pub(crate) async fn serve(
    mut c: Conn,
    index: usize,
    sock: WrappedSocket<TcpStream>,
    stop: &mut watch::Receiver<bool>,
) -> Result<(), Closed> {
    let state = Arc::clone(&c.state);
    let Some(rt) = state.tls.route(index) else {
        return Err(c.refuse(Refusal::NoRoute, "TLS configuration missing for the route"));
    };
    let local = c.local_addr(sock.get_ref());
    let proxy_dst = sock.proxy_header().and_then(Header::destination).unwrap_or(local);
    let (client, port) = (c.client, c.port);

    // Handshake, bounded by the route's `initial_data` timeout and ended by a forced shutdown.
    let handshake_timeout = c.effective().initial_data;
    let accept = tokio::time::timeout(handshake_timeout, rt.acceptor.accept(sock));
    let tls = tokio::select! {
        r = accept => match r {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(c.refuse(Refusal::TlsHandshake, &format!("tls handshake: {e}"))),
            Err(_) => return Err(c.refuse(Refusal::TlsHandshake, "tls handshake timed out")),
        },
        () = copy::wait_stop(stop) => {
            return Err(c.refuse(Refusal::ShuttingDown, "during the TLS handshake"));
        }
    };
    let (sni, alpn) = {
        let s = tls.get_ref().1;
        (s.server_name().map(str::to_owned), s.alpn_protocol().map(<[u8]>::to_vec))
    };
    let version = match tls.get_ref().1.protocol_version() {
        Some(rustls::ProtocolVersion::TLSv1_3) => Some(TlsVersion::Tls13),
        Some(rustls::ProtocolVersion::TLSv1_2) => Some(TlsVersion::Tls12),
        _ => None,
    };
    tracing::debug!(%client, port, sni = sni.as_deref(), "TLS accepted");
    // The plaintext side replays what the second routing step reads.
    let mut tls = WrappedSocket::new(tls, PeerAddr(client));

    // An HTTP port: the HTTP layer routes every request on its own.
    if state.table.is_http_port(port) {
        let mut info = smartproxy_http::TlsInfo::new(sni, alpn);
        info.version = version;
        super::serve_http::serve(c, tls, Some(info), proxy_dst, Some(local)).await;
        return Ok(());
    }

    // Routes with `path` or `headers` criteria on this port: the lookup before the handshake
    // skipped those criteria; route again on the decrypted request head.
    let index = if state.table.http_after_termination(port) {
        let second = route_decrypted(&c, &mut tls, sni.as_deref(), version).await?;
        if second != index {
            route::enter(&mut c, second)?;
            let name = state.table.routes()[second].name();
            tracing::debug!(%client, port, route = name, "routed after TLS termination");
        }
        second
    } else {
        index
    };
    let route = &state.table.routes()[index];
    let (Some((f, _)), Some(rt)) = (terminating(route.config()), state.tls.route(index)) else {
        let detail = format!("{}: not a terminating route on this port", route.name());
        return Err(c.refuse(Refusal::NoRoute, &detail));
    };

    let up = upstream::connect(&mut c, route, f, proxy_dst, &[], false).await?;
    let timeouts = c.timeouts();
    let mut client_side = Counted { inner: tls, obs: Arc::clone(&c.obs) };
    let outcome = match &rt.upstream {
        None => {
            let mut tcp = up.stream;
            copy::pipe(&mut client_side, &mut tcp, timeouts, stop).await
        }
        Some(u) => {
            let name = match u.server_name.resolve(up.host, sni.as_deref()) {
                Ok(n) => n,
                Err(detail) => {
                    route.count_refusal();
                    return Err(c.refuse(Refusal::BackendUnavailable, &detail));
                }
            };
            let connector = TlsConnector::from(u.config(alpn.as_deref()));
            let connect_timeout = c.effective().connect;
            let handshake =
                tokio::time::timeout(connect_timeout, connector.connect(name, up.stream)).await;
            let mut up_tls = match handshake {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    let detail = format!("{}: upstream TLS handshake failed: {e}", route.name());
                    route.count_refusal();
                    return Err(c.refuse(Refusal::BackendUnavailable, &detail));
                }
                Err(_) => {
                    let detail = format!("{}: upstream TLS handshake timed out", route.name());
                    route.count_refusal();
                    return Err(c.refuse(Refusal::BackendUnavailable, &detail));
                }
            };
            copy::pipe(&mut client_side, &mut up_tls, timeouts, stop).await
        }
    };
    log_close(&c.obs, client, port, route.name(), &outcome);
    Ok(())
}

/// The route of the decrypted request head (SNI, or Host, plus path and headers).
async fn route_decrypted<S>(
    c: &Conn,
    tls: &mut WrappedSocket<S>,
    sni: Option<&str>,
    version: Option<TlsVersion>,
) -> Result<usize, Closed>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let deadline = Instant::now() + c.effective().initial_data;
    let head = loop {
        match crate::http::parse_head(tls.buffered()) {
            Ok(Some((head, _))) => break Some(head),
            // Not HTTP: route on what is known (SNI, port, client).
            Err(_) => break None,
            Ok(None) => match tls.peek_more(crate::http::MAX_HEAD, deadline).await {
                Ok(0) => {
                    tracing::debug!(client = %c.client, port = c.port, "closed before a request head");
                    return Err(Closed);
                }
                Ok(_) => {}
                Err(e) => {
                    let detail = format!("request head after TLS: {e}");
                    return Err(c.refuse(Refusal::InitialData, &detail));
                }
            },
        }
    };
    let host = head.as_ref().and_then(RequestHead::domain);
    let mut input = MatchInput::new(c.port, canonical_ip(c.client.ip())).with_tls(version);
    if let Some(d) = sni.or(host.as_deref()) {
        input = input.with_domain(d);
    }
    if let Some(h) = &head {
        input = input.with_path(h.path()).with_headers(h);
    }
    match c.state.table.lookup(&input).map(|m| m.index) {
        Some(i) => Ok(i),
        None => Err(c.refuse(Refusal::NoRoute, "no route for the request after TLS termination")),
    }
}
