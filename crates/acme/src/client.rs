//! The HTTPS client that talks to the CA: hyper over rustls (`ring`), trusting the Web PKI
//! roots plus `ca_roots`. It counts every request (the manager's `acme_requests`) and
//! remembers a `Retry-After` sent with a 429 or 503, which gates the next attempts.

use std::future::Future;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{Request, StatusCode};
use hyper::body::Body as _;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use instant_acme::{BodyWrapper, BytesResponse, HttpClient};
use rustls::{ClientConfig, RootCertStore};

use crate::status::Timestamp;

/// Longest time one HTTP exchange with the CA may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Shared between the client and the manager.
#[derive(Debug, Default)]
pub(crate) struct CaStats {
    /// HTTP requests sent to the CA.
    pub(crate) requests: AtomicU64,
    /// Unix seconds before which the CA asked not to be asked again (0: none).
    retry_after: AtomicI64,
}

impl CaStats {
    pub(crate) fn retry_after(&self) -> Option<Timestamp> {
        match self.retry_after.load(Ordering::Relaxed) {
            0 => None,
            t => Some(Timestamp::from_unix(t)),
        }
    }

    fn note_retry_after(&self, until: Timestamp) {
        self.retry_after.fetch_max(until.unix_seconds(), Ordering::Relaxed);
    }
}

type Hyper = Client<hyper_rustls::HttpsConnector<HttpConnector>, BodyWrapper<Bytes>>;

pub(crate) struct CaClient {
    inner: Hyper,
    stats: Arc<CaStats>,
}

impl CaClient {
    pub(crate) fn new(
        extra_roots: Option<RootCertStore>,
        stats: Arc<CaStats>,
    ) -> Result<Self, String> {
        let mut roots = RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        if let Some(extra) = extra_roots {
            roots.roots.extend(extra.roots);
        }
        let tls = ClientConfig::builder_with_provider(crate::certs::provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS client: {e}"))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_only()
            .enable_http1()
            .build();
        let inner = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        Ok(Self { inner, stats })
    }
}

impl HttpClient for CaClient {
    fn request(
        &self,
        req: Request<BodyWrapper<Bytes>>,
    ) -> Pin<Box<dyn Future<Output = Result<BytesResponse, instant_acme::Error>> + Send>> {
        let inner = self.inner.clone();
        let stats = Arc::clone(&self.stats);
        let (head, mut body) = req.into_parts();
        Box::pin(async move {
            // The body is one buffer, ready at once: kept so that the request can be sent again.
            let mut bytes = Vec::new();
            while let Some(frame) =
                std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await
            {
                let Ok(frame) = frame;
                if let Ok(data) = frame.into_data() {
                    bytes.extend_from_slice(&data);
                }
            }
            let mut retried = false;
            let rsp = loop {
                stats.requests.fetch_add(1, Ordering::Relaxed);
                let mut req = Request::new(BodyWrapper::from(bytes.clone()));
                *req.method_mut() = head.method.clone();
                *req.uri_mut() = head.uri.clone();
                *req.version_mut() = head.version;
                *req.headers_mut() = head.headers.clone();
                match tokio::time::timeout(REQUEST_TIMEOUT, inner.request(req)).await {
                    Ok(Ok(rsp)) => break rsp,
                    // A kept-alive connection the CA (or a middlebox) closed just as the
                    // request went out: sent once more, on a new connection. Safe for ACME: a
                    // POST that did arrive has used its nonce, and the CA refuses the copy with
                    // badNonce, which the ACME client answers with a fresh nonce.
                    Ok(Err(e)) if !retried && !e.is_connect() => {
                        tracing::debug!(uri = %head.uri, "CA connection closed under a request, sending it again: {e}");
                        retried = true;
                    }
                    Ok(Err(e)) => return Err(instant_acme::Error::Other(Box::new(e))),
                    Err(_) => {
                        return Err(instant_acme::Error::Other(
                            format!("no answer from the CA within {}s", REQUEST_TIMEOUT.as_secs())
                                .into(),
                        ));
                    }
                }
            };
            let status = rsp.status();
            if status == StatusCode::TOO_MANY_REQUESTS || status == StatusCode::SERVICE_UNAVAILABLE
            {
                let value = rsp.headers().get(http::header::RETRY_AFTER);
                if let Some(until) = value.and_then(|v| v.to_str().ok()).and_then(parse_retry_after)
                {
                    stats.note_retry_after(until);
                }
            }
            Ok(BytesResponse::from(rsp))
        })
    }
}

/// `Retry-After: <seconds>` or `Retry-After: <HTTP-date>`.
fn parse_retry_after(v: &str) -> Option<Timestamp> {
    let v = v.trim();
    if let Ok(secs) = u64::from_str(v) {
        return Some(Timestamp::now().plus(Duration::from_secs(secs)));
    }
    let t: SystemTime = httpdate::parse_http_date(v).ok()?;
    Some(Timestamp::from(t))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_forms() {
        let now = Timestamp::now().unix_seconds();
        let t = parse_retry_after("120").unwrap().unix_seconds();
        assert!((now + 119..=now + 121).contains(&t));
        let d = parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT").unwrap();
        assert_eq!(d.unix_seconds(), 784_111_777);
        assert_eq!(parse_retry_after("soon"), None);
    }

    #[test]
    fn retry_after_only_moves_forward() {
        let s = CaStats::default();
        assert_eq!(s.retry_after(), None);
        s.note_retry_after(Timestamp::from_unix(200));
        s.note_retry_after(Timestamp::from_unix(100));
        assert_eq!(s.retry_after(), Some(Timestamp::from_unix(200)));
    }

    /// A TLS server on loopback, certificate for 127.0.0.1 made here, that drops its first
    /// connection after reading the whole request (no answer, no close_notify) and answers
    /// the second: returns the client's roots and the bodies each connection received.
    async fn cutting_server()
    -> (std::net::SocketAddr, RootCertStore, tokio::task::JoinHandle<Vec<Vec<u8>>>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let mut roots = RootCertStore::empty();
        roots.add(cert.der().clone()).unwrap();
        let key = rustls_pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
        let server = rustls::ServerConfig::builder_with_provider(crate::certs::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert.der().clone()], key)
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let mut bodies = Vec::new();
            for n in 0..2 {
                let (tcp, _) = listener.accept().await.unwrap();
                let mut tls = acceptor.accept(tcp).await.unwrap();
                let mut buf = Vec::new();
                let body = loop {
                    let mut chunk = [0u8; 4096];
                    let got = tls.read(&mut chunk).await.unwrap();
                    assert!(got > 0, "the client closed before its request was whole");
                    buf.extend_from_slice(&chunk[..got]);
                    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                        continue;
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                    let len: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .map_or(0, |v| v.trim().parse().unwrap());
                    if buf.len() >= end + 4 + len {
                        break buf[end + 4..end + 4 + len].to_vec();
                    }
                };
                bodies.push(body);
                if n == 1 {
                    tls.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await.unwrap();
                    tls.shutdown().await.unwrap();
                }
            }
            bodies
        });
        (addr, roots, task)
    }

    #[tokio::test]
    async fn a_request_cut_on_its_connection_is_sent_once_more_on_a_new_one() {
        let (addr, roots, server) = cutting_server().await;
        let stats = Arc::new(CaStats::default());
        let client = CaClient::new(Some(roots), Arc::clone(&stats)).unwrap();
        let req = Request::post(format!("https://{addr}/acme/new-order"))
            .header(http::header::CONTENT_TYPE, "application/jose+json")
            .body(BodyWrapper::from(b"{\"payload\":\"e30\"}".to_vec()))
            .unwrap();
        let rsp = client.request(req).await.unwrap();
        assert_eq!(rsp.parts.status, StatusCode::OK);
        let bodies = server.await.unwrap();
        assert_eq!(bodies, vec![b"{\"payload\":\"e30\"}".to_vec(); 2], "the same body twice");
        assert_eq!(stats.requests.load(Ordering::Relaxed), 2, "both sends counted");
    }

    #[tokio::test]
    async fn a_ca_that_refuses_connections_is_asked_once() {
        let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = closed.local_addr().unwrap();
        drop(closed);
        let stats = Arc::new(CaStats::default());
        let client = CaClient::new(None, Arc::clone(&stats)).unwrap();
        let req = Request::get(format!("https://{addr}/dir")).body(BodyWrapper::default()).unwrap();
        assert!(client.request(req).await.is_err());
        assert_eq!(stats.requests.load(Ordering::Relaxed), 1, "a refused connect is not retried");
    }
}
