//! Answers to the CA's validation requests while an order runs.
//!
//! HTTP-01: `GET /.well-known/acme-challenge/TOKEN` on port 80 is answered with the key
//! authorization. TLS-ALPN-01 (RFC 8737): a TLS handshake on port 443 whose ClientHello
//! offers only ALPN `acme-tls/1` gets a self-signed certificate for the SNI carrying the
//! digest of the key authorization, and the connection ends after the handshake.
//!
//! Entries exist only while their order runs: a guard removes them when the order ends.

use std::collections::HashMap;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use parking_lot::RwLock;
use rustls::ServerConfig;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use crate::error::Error;

/// The ALPN protocol of TLS-ALPN-01 validation handshakes.
pub const ACME_TLS_ALPN_PROTOCOL: &[u8] = b"acme-tls/1";

/// The path prefix of HTTP-01 validation requests.
pub const HTTP01_PATH_PREFIX: &str = "/.well-known/acme-challenge/";

/// How long a TLS-ALPN-01 validation handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Whether a ClientHello's ALPN list is a TLS-ALPN-01 validation (RFC 8737: the validator
/// offers `acme-tls/1` and nothing else).
pub fn is_tls_alpn01<'a>(mut alpn: impl Iterator<Item = &'a [u8]>) -> bool {
    alpn.next() == Some(ACME_TLS_ALPN_PROTOCOL) && alpn.next().is_none()
}

/// The token of an HTTP-01 request target (`/.well-known/acme-challenge/TOKEN`, also in
/// absolute form `http://host/...`), or `None` for any other target.
pub fn http01_token(target: &str) -> Option<&str> {
    let path = match target.strip_prefix("http://") {
        Some(rest) => &rest[rest.find('/')?..],
        None => target,
    };
    let token = path.strip_prefix(HTTP01_PATH_PREFIX)?;
    let token = token.split(['?', '#']).next().unwrap_or_default();
    // RFC 8555 8.3: tokens are base64url, at least 128 bits of entropy.
    let ok = !token.is_empty()
        && token.len() <= 256
        && token.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    ok.then_some(token)
}

#[derive(Debug, Default)]
pub(crate) struct Challenges {
    /// HTTP-01 token -> key authorization.
    http01: RwLock<HashMap<String, String>>,
    /// Entries in `http01`, read without the lock ([`Challenges::http01_pending`]).
    http01_count: AtomicUsize,
    /// TLS-ALPN-01 domain (lower-case) -> challenge certificate.
    tls_alpn01: RwLock<HashMap<String, Arc<CertifiedKey>>>,
}

/// Removes a challenge answer when dropped.
pub(crate) struct ChallengeGuard {
    challenges: Arc<Challenges>,
    entry: Entry,
}

enum Entry {
    Http01(String),
    TlsAlpn01(String),
}

impl Drop for ChallengeGuard {
    fn drop(&mut self) {
        match &self.entry {
            Entry::Http01(token) => {
                let mut map = self.challenges.http01.write();
                map.remove(token);
                self.challenges.http01_count.store(map.len(), Ordering::Release);
            }
            Entry::TlsAlpn01(domain) => {
                self.challenges.tls_alpn01.write().remove(domain);
            }
        }
    }
}

impl Challenges {
    pub(crate) fn add_http01(self: &Arc<Self>, token: String, key_auth: String) -> ChallengeGuard {
        let mut map = self.http01.write();
        map.insert(token.clone(), key_auth);
        self.http01_count.store(map.len(), Ordering::Release);
        drop(map);
        ChallengeGuard { challenges: Arc::clone(self), entry: Entry::Http01(token) }
    }

    pub(crate) fn add_tls_alpn01(
        self: &Arc<Self>,
        domain: &str,
        key: Arc<CertifiedKey>,
    ) -> ChallengeGuard {
        let domain = domain.to_ascii_lowercase();
        self.tls_alpn01.write().insert(domain.clone(), key);
        ChallengeGuard { challenges: Arc::clone(self), entry: Entry::TlsAlpn01(domain) }
    }

    /// Whether an HTTP-01 answer is published (an order with the http-01 challenge runs):
    /// one atomic load, for connection paths that only look for validation requests then.
    pub(crate) fn http01_pending(&self) -> bool {
        self.http01_count.load(Ordering::Acquire) != 0
    }

    pub(crate) fn http01(&self, token: &str) -> Option<String> {
        self.http01.read().get(token).cloned()
    }

    pub(crate) fn tls_alpn01(&self, sni: &str) -> Option<Arc<CertifiedKey>> {
        let sni = sni.strip_suffix('.').unwrap_or(sni).to_ascii_lowercase();
        self.tls_alpn01.read().get(&sni).cloned()
    }

    /// The HTTP/1.1 response for a validation request, if the target is one of ours.
    pub(crate) fn http01_response(&self, method: &str, target: &str) -> Option<Vec<u8>> {
        if method != "GET" && method != "HEAD" {
            return None;
        }
        let key_auth = self.http01(http01_token(target)?)?;
        let mut rsp = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n\
             Content-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n",
            key_auth.len()
        )
        .into_bytes();
        if method == "GET" {
            rsp.extend_from_slice(key_auth.as_bytes());
        }
        Some(rsp)
    }

    pub(crate) async fn answer_http01<S: AsyncWrite + Unpin>(
        &self,
        stream: &mut S,
        method: &str,
        target: &str,
    ) -> io::Result<bool> {
        let Some(rsp) = self.http01_response(method, target) else { return Ok(false) };
        stream.write_all(&rsp).await?;
        stream.flush().await?;
        stream.shutdown().await?;
        Ok(true)
    }
}

/// rustls resolver for TLS-ALPN-01 handshakes: the challenge certificate for the SNI.
#[derive(Debug)]
pub(crate) struct TlsAlpn01Resolver(pub(crate) Arc<Challenges>);

impl ResolvesServerCert for TlsAlpn01Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let offered = hello.alpn().is_some_and(|mut a| a.any(|p| p == ACME_TLS_ALPN_PROTOCOL));
        if !offered {
            return None;
        }
        self.0.tls_alpn01(hello.server_name()?)
    }
}

/// The server configuration for TLS-ALPN-01 validation handshakes (ALPN `acme-tls/1` only).
pub(crate) fn tls_alpn01_config(challenges: Arc<Challenges>) -> Result<Arc<ServerConfig>, Error> {
    let mut cfg = ServerConfig::builder_with_provider(crate::certs::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Certificate(format!("tls-alpn-01 server configuration: {e}")))?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(TlsAlpn01Resolver(challenges)));
    cfg.alpn_protocols = vec![ACME_TLS_ALPN_PROTOCOL.to_vec()];
    cfg.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    cfg.send_tls13_tickets = 0;
    Ok(Arc::new(cfg))
}

/// Runs a validation handshake on `stream` and closes it.
pub(crate) async fn answer_tls_alpn01<S: AsyncRead + AsyncWrite + Unpin>(
    config: Arc<ServerConfig>,
    stream: S,
) -> io::Result<()> {
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let mut tls = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await.map_err(
        |_| io::Error::new(io::ErrorKind::TimedOut, "tls-alpn-01 handshake timed out"),
    )??;
    // The validator only looks at the certificate; close cleanly.
    let _ = tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.shutdown()).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_from_targets() {
        assert_eq!(http01_token("/.well-known/acme-challenge/abc_-9"), Some("abc_-9"));
        assert_eq!(http01_token("http://a.example/.well-known/acme-challenge/t1?x"), Some("t1"));
        assert_eq!(http01_token("/.well-known/acme-challenge/"), None);
        assert_eq!(http01_token("/.well-known/acme-challenge/a/b"), None);
        assert_eq!(http01_token("/.well-known/acme-challenge/a%2F"), None);
        assert_eq!(http01_token("/index.html"), None);
        assert_eq!(http01_token("http://nopath"), None);
    }

    #[test]
    fn alpn_detection() {
        let v = |l: &[&'static [u8]]| is_tls_alpn01(l.iter().copied());
        assert!(v(&[b"acme-tls/1"]));
        assert!(!v(&[b"h2", b"acme-tls/1"]));
        assert!(!v(&[b"acme-tls/1", b"h2"]));
        assert!(!v(&[]));
    }

    #[test]
    fn http01_answers_only_known_tokens_and_forgets_them() {
        let c = Arc::new(Challenges::default());
        assert!(!c.http01_pending());
        let g = c.add_http01("tok".into(), "tok.thumb".into());
        let rsp =
            String::from_utf8(c.http01_response("GET", "/.well-known/acme-challenge/tok").unwrap())
                .unwrap();
        assert!(rsp.starts_with("HTTP/1.1 200 OK\r\n"), "{rsp}");
        assert!(rsp.contains("Content-Length: 9\r\n"), "{rsp}");
        assert!(rsp.ends_with("\r\n\r\ntok.thumb"), "{rsp}");
        let head = String::from_utf8(
            c.http01_response("HEAD", "/.well-known/acme-challenge/tok").unwrap(),
        )
        .unwrap();
        assert!(head.ends_with("\r\n\r\n"), "{head}");
        assert_eq!(c.http01_response("POST", "/.well-known/acme-challenge/tok"), None);
        assert_eq!(c.http01_response("GET", "/.well-known/acme-challenge/other"), None);
        assert!(c.http01_pending());
        drop(g);
        assert!(!c.http01_pending());
        assert_eq!(c.http01_response("GET", "/.well-known/acme-challenge/tok"), None);
    }
}
