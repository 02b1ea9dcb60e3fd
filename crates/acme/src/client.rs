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
        self.stats.requests.fetch_add(1, Ordering::Relaxed);
        let fut = self.inner.request(req);
        let stats = Arc::clone(&self.stats);
        Box::pin(async move {
            let rsp = match tokio::time::timeout(REQUEST_TIMEOUT, fut).await {
                Ok(Ok(rsp)) => rsp,
                Ok(Err(e)) => return Err(instant_acme::Error::Other(Box::new(e))),
                Err(_) => {
                    return Err(instant_acme::Error::Other(
                        format!("no answer from the CA within {}s", REQUEST_TIMEOUT.as_secs())
                            .into(),
                    ));
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
}
