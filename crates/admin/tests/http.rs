//! The admin API over real loopback sockets, with a hand-written HTTP/1.1 client.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use smartproxy_admin::{AdminHooks, AdminState, RenewError, serve};
use smartproxy_metrics::{Metrics, MetricsConfig, Snapshot};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

#[derive(Debug, Default)]
struct Hooks {
    ready: AtomicBool,
    reload_fails: AtomicBool,
    /// What `GET /api/nftables` shows (`None`: the default method, as without the hook).
    nftables: parking_lot::Mutex<Option<serde_json::Value>>,
}

/// Hooks with certificates: route `web` (ACME) renews, `api` is manual, `slow` is rate
/// limited, `down` fails at the CA; the default methods are used by [`Hooks`].
#[derive(Debug)]
struct CertHooks;

impl AdminHooks for CertHooks {
    fn ready(&self) -> bool {
        true
    }

    fn reload(&self) -> Pin<Box<dyn Future<Output = Result<String, String>> + Send>> {
        Box::pin(async { Ok(String::new()) })
    }

    fn certificates(&self) -> serde_json::Value {
        serde_json::json!([{ "route": "web", "source": "acme", "not_after": "2026-07-30T10:00:00Z" }])
    }

    fn renew_certificate(
        &self,
        route: String,
    ) -> Pin<Box<dyn Future<Output = Result<serde_json::Value, RenewError>> + Send>> {
        Box::pin(async move {
            match route.as_str() {
                "web" => Ok(serde_json::json!({ "route": "web", "serial": "02" })),
                "api" => {
                    Err(RenewError::NotRenewable("route `api` has a manual certificate".into()))
                }
                "slow" => Err(RenewError::RateLimited {
                    retry_after_secs: 120,
                    message: "the CA asked to wait".into(),
                }),
                "down" => Err(RenewError::Upstream("ACME new order: connection refused".into())),
                _ => Err(RenewError::UnknownRoute(format!("no certificate for `{route}`"))),
            }
        })
    }
}

impl AdminHooks for Hooks {
    fn ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    fn reload(&self) -> Pin<Box<dyn Future<Output = Result<String, String>> + Send>> {
        let fails = self.reload_fails.load(Ordering::SeqCst);
        Box::pin(async move {
            if fails {
                Err("routes[1].action: unknown handler \"nope\"".to_owned())
            } else {
                Ok("reloaded: 2 routes".to_owned())
            }
        })
    }

    fn nftables(&self) -> Pin<Box<dyn Future<Output = Option<serde_json::Value>> + Send>> {
        let v = self.nftables.lock().clone();
        Box::pin(async move { v })
    }
}

/// Hooks with only the required methods: `nftables` keeps its default.
#[derive(Debug)]
struct Minimal;

impl AdminHooks for Minimal {
    fn ready(&self) -> bool {
        true
    }

    fn reload(&self) -> Pin<Box<dyn Future<Output = Result<String, String>> + Send>> {
        Box::pin(async { Ok(String::new()) })
    }
}

struct Server {
    addr: SocketAddr,
    hooks: Arc<Hooks>,
    metrics: Arc<Metrics>,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Server {
    async fn start() -> Self {
        Self::start_with(None).await
    }

    /// A server whose hooks are `custom` when given (then `hooks` is unused).
    async fn start_with(custom: Option<Arc<dyn AdminHooks>>) -> Self {
        let metrics = Metrics::new(MetricsConfig::default(), 1_000);
        let hooks = Arc::new(Hooks::default());
        let listener =
            TcpListener::bind("127.0.0.1:0").await.unwrap_or_else(|e| panic!("bind: {e}"));
        let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
        let used: Arc<dyn AdminHooks> = custom.unwrap_or_else(|| hooks.clone());
        let state = AdminState::new(metrics.clone(), Default::default(), used);
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(serve(listener, state, async move {
            let _ = rx.await;
        }));
        Self { addr, hooks, metrics, stop: Some(tx), task }
    }

    /// Sends one request (`Connection: close`) and returns (status, headers, body).
    async fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> (u16, String, String) {
        let fut = async {
            let mut s =
                TcpStream::connect(self.addr).await.unwrap_or_else(|e| panic!("connect: {e}"));
            let mut req =
                format!("{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n", self.addr);
            for (k, v) in headers {
                req.push_str(&format!("{k}: {v}\r\n"));
            }
            if method == "POST" {
                req.push_str("Content-Length: 0\r\n");
            }
            req.push_str("\r\n");
            s.write_all(req.as_bytes()).await.unwrap_or_else(|e| panic!("write: {e}"));
            let mut raw = Vec::new();
            s.read_to_end(&mut raw).await.unwrap_or_else(|e| panic!("read: {e}"));
            raw
        };
        let raw = tokio::time::timeout(Duration::from_secs(10), fut)
            .await
            .unwrap_or_else(|_| panic!("request {method} {path} timed out"));
        let text = String::from_utf8_lossy(&raw).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad status line in {head:?}"));
        (status, head.to_ascii_lowercase(), decode_chunked(head, body))
    }

    async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        let res = tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .unwrap_or_else(|_| panic!("serve did not stop"));
        assert!(matches!(res, Ok(Ok(()))), "serve ended with {res:?}");
    }
}

/// Undoes `Transfer-Encoding: chunked` if the response used it.
fn decode_chunked(head: &str, body: &str) -> String {
    if !head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        return body.to_owned();
    }
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, after)) = rest.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || after.len() < n {
            break;
        }
        out.push_str(&after[..n]);
        rest = after[n..].trim_start_matches("\r\n");
    }
    out
}

#[tokio::test]
async fn health_and_readiness() {
    let srv = Server::start().await;
    let (status, _, body) = srv.request("GET", "/healthz", &[]).await;
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    let (status, _, _) = srv.request("GET", "/ready", &[]).await;
    assert_eq!(status, 503);
    srv.hooks.ready.store(true, Ordering::SeqCst);
    let (status, _, body) = srv.request("GET", "/ready", &[]).await;
    assert_eq!((status, body.as_str()), (200, "ready\n"));
    let (status, _, _) = srv.request("GET", "/nope", &[]).await;
    assert_eq!(status, 404);
    srv.stop().await;
}

#[tokio::test]
async fn metrics_in_prometheus_openmetrics_and_json() {
    let srv = Server::start().await;
    let route = srv.metrics.route("web");
    let ip: IpAddr = [127, 0, 0, 1].into();
    let c = srv.metrics.connection_opened(ip, &route);
    c.add_in(1234);
    c.add_out(5678);
    srv.metrics.tick(1_001);

    let (status, head, body) = srv.request("GET", "/metrics", &[]).await;
    assert_eq!(status, 200);
    assert!(head.contains("content-type: text/plain; version=0.0.4"), "{head}");
    assert!(body.contains("smartproxy_bytes_total{direction=\"in\"} 1234"), "{body}");
    assert!(body.contains("smartproxy_connections_active 1"), "{body}");
    assert!(!body.contains("# EOF"));

    let accept = [("Accept", "application/openmetrics-text;version=1.0.0,text/plain;q=0.5")];
    let (status, head, body) = srv.request("GET", "/metrics", &accept).await;
    assert_eq!(status, 200);
    assert!(head.contains("content-type: application/openmetrics-text"), "{head}");
    assert!(body.ends_with("# EOF\n"), "{body}");

    let (status, head, body) = srv.request("GET", "/metrics/json", &[]).await;
    assert_eq!(status, 200);
    assert!(head.contains("content-type: application/json"), "{head}");
    let snap: Snapshot = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
    assert_eq!(snap.totals.bytes_out, 5678);
    drop(c);
    srv.stop().await;
}

#[tokio::test]
async fn throughput_history() {
    let srv = Server::start().await;
    let route = srv.metrics.route("web");
    let c = srv.metrics.connection_opened([127, 0, 0, 1].into(), &route);
    for t in 1..=5 {
        c.add_out(100 * t);
        srv.metrics.tick(1_000 + t);
    }
    let (status, _, body) = srv.request("GET", "/api/throughput/history?seconds=3", &[]).await;
    assert_eq!(status, 200, "{body}");
    let points: serde_json::Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}"));
    let points = points.as_array().unwrap_or_else(|| panic!("not an array: {body}"));
    assert_eq!(points.len(), 3);
    assert_eq!(points[2]["timestamp"], 1_005);
    assert_eq!(points[2]["out"], 500.0);
    let (status, _, _) = srv.request("GET", "/api/throughput/history", &[]).await;
    assert_eq!(status, 200);
    let (status, _, _) = srv.request("GET", "/api/throughput/history?seconds=abc", &[]).await;
    assert_eq!(status, 400);
    let (status, _, _) = srv.request("GET", "/api/throughput/history?seconds=0", &[]).await;
    assert_eq!(status, 400);
    drop(c);
    srv.stop().await;
}

#[tokio::test]
async fn reload_is_post_only_and_reports_errors() {
    let srv = Server::start().await;
    let (status, head, _) = srv.request("GET", "/reload", &[]).await;
    assert_eq!(status, 405);
    assert!(head.contains("allow: post"), "{head}");
    let (status, _, body) = srv.request("POST", "/reload", &[]).await;
    assert_eq!((status, body.as_str()), (200, "reloaded: 2 routes\n"));
    srv.hooks.reload_fails.store(true, Ordering::SeqCst);
    let (status, _, body) = srv.request("POST", "/reload", &[]).await;
    assert_eq!(status, 422);
    assert_eq!(body, "routes[1].action: unknown handler \"nope\"\n");
    srv.stop().await;
}

#[tokio::test]
async fn serve_returns_after_shutdown() {
    let srv = Server::start().await;
    let addr = srv.addr;
    srv.stop().await;
    // The listener is gone.
    let refused = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr)).await;
    assert!(matches!(refused, Ok(Err(_))), "still accepting after shutdown");
}

#[tokio::test]
async fn certificates_and_renewal() {
    // Hooks without certificates: an empty list, every route unknown.
    let srv = Server::start().await;
    let (status, head, body) = srv.request("GET", "/api/certificates", &[]).await;
    assert_eq!((status, body.trim()), (200, "[]"));
    assert!(head.contains("content-type: application/json"), "{head}");
    let (status, _, _) = srv.request("POST", "/api/certificates/web/renew", &[]).await;
    assert_eq!(status, 404);
    srv.stop().await;

    let srv = Server::start_with(Some(Arc::new(CertHooks))).await;
    let (status, _, body) = srv.request("GET", "/api/certificates", &[]).await;
    assert_eq!(status, 200);
    let list: serde_json::Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(list[0]["route"], "web");
    assert_eq!(list[0]["source"], "acme");
    let (status, _, body) = srv.request("POST", "/api/certificates/web/renew", &[]).await;
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(v["serial"], "02");
    // Mutations are POST only.
    let (status, head, _) = srv.request("GET", "/api/certificates/web/renew", &[]).await;
    assert_eq!(status, 405);
    assert!(head.contains("allow: post"), "{head}");
    for (route, want) in [("api", 409), ("slow", 429), ("down", 502), ("nope", 404)] {
        let (status, head, body) =
            srv.request("POST", &format!("/api/certificates/{route}/renew"), &[]).await;
        assert_eq!(status, want, "{route}: {body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(v["route"], route);
        assert!(v["error"].as_str().is_some_and(|e| !e.is_empty()), "{body}");
        assert_eq!(head.contains("retry-after: 120"), route == "slow", "{head}");
    }
    srv.stop().await;
}

#[tokio::test]
async fn nftables_status_from_the_hook() {
    let srv = Server::start().await;
    let table =
        serde_json::json!({"table": "smartproxy", "present": true, "routes": [{"name": "db"}]});
    *srv.hooks.nftables.lock() = Some(table.clone());
    let (status, head, body) = srv.request("GET", "/api/nftables", &[]).await;
    assert_eq!(status, 200, "{body}");
    assert!(head.contains("content-type: application/json"), "{head}");
    let got: serde_json::Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(got, table);
    let (status, _, _) = srv.request("POST", "/api/nftables", &[]).await;
    assert_eq!(status, 405);
    srv.stop().await;

    // A process whose hooks do not provide it answers 404, saying why.
    let metrics = Metrics::new(MetricsConfig::default(), 1_000);
    let state = AdminState::new(metrics, Default::default(), Arc::new(Minimal));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap_or_else(|e| panic!("bind: {e}"));
    let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(serve(listener, state, async move {
        let _ = rx.await;
    }));
    let minimal = Server {
        addr,
        hooks: Arc::new(Hooks::default()),
        metrics: Metrics::new(MetricsConfig::default(), 0),
        stop: Some(tx),
        task,
    };
    let (status, _, body) = minimal.request("GET", "/api/nftables", &[]).await;
    assert_eq!(status, 404);
    assert!(body.contains("not part of this process"), "{body}");
    minimal.stop().await;
}
