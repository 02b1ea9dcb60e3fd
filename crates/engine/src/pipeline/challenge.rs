//! Stage 3b, ACME challenges: a validation request of one of our certificate orders is
//! answered here, before routing, and the connection ends. Anything else goes on to routing
//! with its bytes replayed (a backend's own ACME client behind a route included).
//!
//! Which connections answer:
//!
//! - **TLS-ALPN-01** (RFC 8737): a ClientHello whose ALPN list is `acme-tls/1` alone, for a
//!   name that a running tls-alpn-01 order is validating, gets the challenge handshake. Every
//!   port that peeks ClientHellos answers, which includes every port of a
//!   `certificate = "auto"` route (such a route has `domains`, so its port reads the SNI).
//! - **HTTP-01**: a plain-text `GET` or `HEAD` of `/.well-known/acme-challenge/TOKEN` for the
//!   token of a running http-01 order gets the key authorization (`200`, `Connection: close`):
//!   - on ports that read the HTTP request head to route (a route there has `domains`, a
//!     `path` or `headers`), always: the peeked target is compared with the prefix;
//!   - on ports that route without reading anything (plain TCP forwarding, or a catch-all
//!     handler such as an HTTP-to-HTTPS redirect on port 80), only while an http-01 order
//!     waits for its validation (otherwise the check is one atomic load and nothing is read):
//!     the first bytes of the connection (those that came within
//!     `proxy_protocol_detect_timeout`; from a trusted proxy, after its PROXY header, the
//!     engine waits that long for them) are compared with `GET /.well-known/acme-challenge/`
//!     and `HEAD /.well-known/acme-challenge/`; on a match the rest of the head is read
//!     within `initial_data_timeout`. A client that stays silent (a server-speaks-first
//!     protocol) is forwarded as before.
//!
//! Ports with only TLS routes (no plain route) do not look at plain-text requests.

use std::time::Duration;

use smartproxy_acme::{HTTP01_PATH_PREFIX, http01_token};
use smartproxy_routing::PeekNeed;
use smartproxy_wrapped_socket::WrappedSocket;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::classify::PeekInfo;
use super::conn::{Closed, Conn};
use crate::http;

/// How long writing a validation answer may take.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// Answers the connection if it is a validation request of ours: `Ok(None)` when it was (the
/// connection is done), else the socket back for routing.
pub(crate) async fn answer(
    c: &Conn,
    mut sock: WrappedSocket<TcpStream>,
    info: &PeekInfo,
) -> Result<Option<WrappedSocket<TcpStream>>, Closed> {
    let certs = &c.state.certs;
    if info.acme_tls_alpn {
        let ours =
            info.domain.as_deref().is_some_and(|d| certs.tls_alpn01_certificate(d).is_some());
        if ours {
            let domain = info.domain.as_deref().unwrap_or_default();
            // Boxed: a TLS handshake's state is several KiB.
            match Box::pin(certs.answer_tls_alpn01(sock)).await {
                Ok(()) => {
                    tracing::info!(client = %c.client, port = c.port, domain, "ACME tls-alpn-01 validation answered");
                }
                Err(e) => {
                    tracing::info!(client = %c.client, port = c.port, domain, error = %e, "ACME tls-alpn-01 validation handshake failed");
                }
            }
            return Ok(None);
        }
        return Ok(Some(sock));
    }
    if info.is_tls {
        return Ok(Some(sock));
    }
    let head = match &info.head {
        Some(h) if http01_token(&h.target).is_some() => Some(h.clone()),
        Some(_) => return Ok(Some(sock)),
        None if certs.http01_pending() && c.state.table.peek_need(c.port) == PeekNeed::None => {
            first_request(c, &mut sock).await
        }
        None => return Ok(Some(sock)),
    };
    let Some(head) = head else { return Ok(Some(sock)) };
    let Some(response) = certs.http01_response(&head.method, &head.target) else {
        return Ok(Some(sock));
    };
    c.obs.add_in(sock.buffered().len() as u64);
    let written = tokio::time::timeout(ANSWER_TIMEOUT, async {
        sock.write_all(&response).await?;
        sock.flush().await?;
        sock.shutdown().await
    })
    .await;
    let token = http01_token(&head.target).unwrap_or_default();
    match written {
        Ok(Ok(())) => {
            c.obs.add_out(response.len() as u64);
            tracing::info!(client = %c.client, port = c.port, token, "ACME http-01 validation answered");
        }
        Ok(Err(e)) => {
            tracing::info!(client = %c.client, port = c.port, token, error = %e, "ACME http-01 answer not delivered");
        }
        Err(_) => {
            tracing::info!(client = %c.client, port = c.port, token, "ACME http-01 answer not delivered in time");
        }
    }
    Ok(None)
}

/// On a port that routes without reading: the request head, if the connection's first bytes
/// are (so far) a validation request's. `None`: route it as usual (what was read is
/// replayed).
async fn first_request(c: &Conn, sock: &mut WrappedSocket<TcpStream>) -> Option<http::RequestHead> {
    // An untrusted peer's first bytes were awaited by the PROXY header stage already; after a
    // trusted proxy's header, wait as long for them.
    if sock.buffered().is_empty() && c.trusted {
        let deadline = Instant::now() + c.state.config.proxy_protocol_detect_timeout;
        if !matches!(sock.peek_more(http::MAX_HEAD, deadline).await, Ok(n) if n > 0) {
            return None;
        }
    }
    if sock.buffered().is_empty() {
        return None; // silent: a server-speaks-first protocol
    }
    let deadline = c.accepted + c.state.config.defaults.initial_data_timeout;
    loop {
        if !may_be_validation(sock.buffered()) {
            return None;
        }
        match http::parse_head(sock.buffered()) {
            Ok(Some((head, _))) => return Some(head),
            Err(_) => return None,
            Ok(None) => {}
        }
        // EOF, timeout, cap: forward what came.
        if !matches!(sock.peek_more(http::MAX_HEAD, deadline).await, Ok(n) if n > 0) {
            return None;
        }
    }
}

/// Whether `buf` starts like `GET /.well-known/acme-challenge/` or the `HEAD` one (or is a
/// beginning of them).
fn may_be_validation(buf: &[u8]) -> bool {
    ["GET ", "HEAD "].iter().any(|method| {
        let want = method.bytes().chain(HTTP01_PATH_PREFIX.bytes());
        buf.iter().zip(want).all(|(a, b)| *a == b)
    })
}

#[cfg(test)]
mod tests {
    use super::may_be_validation;

    #[test]
    fn validation_prefixes() {
        assert!(may_be_validation(b"G"));
        assert!(may_be_validation(b"GET /.well-known/acme"));
        assert!(may_be_validation(b"GET /.well-known/acme-challenge/tok HTTP/1.1\r\n"));
        assert!(may_be_validation(b"HEAD /.well-known/acme-challenge/tok HTTP/1.1\r\n"));
        assert!(!may_be_validation(b"GET /index.html HTTP/1.1\r\n"));
        assert!(!may_be_validation(b"POST /.well-known/acme-challenge/tok HTTP/1.1\r\n"));
        assert!(!may_be_validation(b"\x16\x03\x01"));
        assert!(!may_be_validation(b"SSH-2.0-OpenSSH"));
    }
}
