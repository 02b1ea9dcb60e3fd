//! The dashboard, its event stream, `/api/config`, `/api/routes` and the admin token, over
//! real loopback sockets.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use smartproxy_admin::{AdminHooks, AdminState, serve};
use smartproxy_metrics::{Metrics, MetricsConfig};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

const TOKEN: &str = "0123456789abcdef-token";

#[derive(Debug)]
struct Hooks;

impl AdminHooks for Hooks {
    fn ready(&self) -> bool {
        true
    }
    fn reload(&self) -> Pin<Box<dyn Future<Output = Result<String, String>> + Send>> {
        Box::pin(async { Ok("reloaded".to_owned()) })
    }
    fn config(&self) -> serde_json::Value {
        serde_json::json!({ "admin": { "listen": "127.0.0.1:9900", "token_file": "/etc/t" } })
    }
    fn routes(&self) -> serde_json::Value {
        serde_json::json!({ "routes": [{ "name": "web", "refused": 3, "targets": [
            { "host": "127.0.0.1", "port": 9000, "active": 1, "health": { "down": true, "connect_failures": 2 } }
        ] }] })
    }
    fn reloads(&self) -> serde_json::Value {
        serde_json::json!([{ "time": 1_700_000_000, "trigger": "SIGHUP", "ok": true, "message": "reloaded" }])
    }
}

/// A hook set with the trait's defaults only.
#[derive(Debug)]
struct Bare;

impl AdminHooks for Bare {
    fn ready(&self) -> bool {
        true
    }
    fn reload(&self) -> Pin<Box<dyn Future<Output = Result<String, String>> + Send>> {
        Box::pin(async { Ok(String::new()) })
    }
}

struct Server {
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Server {
    async fn start(hooks: Arc<dyn AdminHooks>, token: Option<&str>) -> Self {
        let metrics = Metrics::new(MetricsConfig::default(), 1_000);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = AdminState::new(metrics.clone(), Default::default(), hooks).with_token(token);
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(serve(listener, state, async move {
            let _ = rx.await;
        }));
        Self { addr, metrics, stop: Some(tx), task }
    }

    async fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> (u16, String, String) {
        let fut = async {
            let mut s = TcpStream::connect(self.addr).await.unwrap();
            let mut req = format!("{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n");
            for (k, v) in headers {
                req.push_str(&format!("{k}: {v}\r\n"));
            }
            if method == "POST" {
                req.push_str("Content-Length: 0\r\n");
            }
            req.push_str("\r\n");
            s.write_all(req.as_bytes()).await.unwrap();
            let mut raw = Vec::new();
            s.read_to_end(&mut raw).await.unwrap();
            raw
        };
        let raw =
            tokio::time::timeout(Duration::from_secs(10), fut).await.expect("request timed out");
        let text = String::from_utf8_lossy(&raw).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).expect("status");
        (status, head.to_ascii_lowercase(), body.to_owned())
    }

    async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        let res = tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("serve did not stop (an open event stream must not hold it)");
        assert!(matches!(res, Ok(Ok(()))), "{res:?}");
    }
}

#[tokio::test]
async fn the_page_and_its_assets_are_embedded_with_strict_headers() {
    let srv = Server::start(Arc::new(Hooks), None).await;
    let (status, head, body) = srv.request("GET", "/", &[]).await;
    assert_eq!(status, 200);
    assert!(head.contains("content-type: text/html; charset=utf-8"), "{head}");
    assert!(
        head.contains("content-security-policy: default-src 'none'; script-src 'self'"),
        "{head}"
    );
    assert!(body.contains("assets/dashboard.js") && body.contains("assets/uPlot.iife.min.js"));
    // Nothing is loaded from anywhere else.
    assert!(
        !body.contains("http://") && !body.contains("https://"),
        "external reference in the page"
    );
    for (path, ct, needle) in [
        ("/assets/dashboard.js", "text/javascript", "EventSource"),
        ("/assets/dashboard.css", "text/css", "prefers-color-scheme: dark"),
        ("/assets/uPlot.iife.min.js", "text/javascript", "uPlot (v1.6.32)"),
        ("/assets/uPlot.min.css", "text/css", ".uplot"),
        ("/assets/uPlot.LICENSE", "text/plain", "The MIT License"),
        ("/assets/favicon.svg", "image/svg+xml", "<svg"),
    ] {
        let (status, head, body) = srv.request("GET", path, &[]).await;
        assert_eq!(status, 200, "{path}");
        assert!(head.contains(&format!("content-type: {ct}")), "{path}: {head}");
        assert!(body.contains(needle), "{path} lacks {needle}");
    }
    assert_eq!(srv.request("GET", "/assets/nope.js", &[]).await.0, 404);
    srv.stop().await;
}

#[tokio::test]
async fn config_routes_and_the_dashboard_frame() {
    let srv = Server::start(Arc::new(Hooks), None).await;
    let (status, _, body) = srv.request("GET", "/api/config", &[]).await;
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["admin"]["token_file"], "/etc/t");
    let (status, _, body) = srv.request("GET", "/api/routes", &[]).await;
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["routes"][0]["targets"][0]["health"]["down"], true);

    let route = srv.metrics.route("web");
    let conn = srv.metrics.connection_opened("192.0.2.1".parse().unwrap(), &route);
    conn.add_in(1234);
    drop(conn);
    srv.metrics.tick(1_001);
    let (status, _, body) = srv.request("GET", "/api/dashboard", &[]).await;
    assert_eq!(status, 200);
    let f: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(f["snapshot"]["totals"]["bytes_in"], 1234);
    assert_eq!(
        f["snapshot"]["throughput"]["history"].as_array().unwrap().len(),
        1,
        "only the newest point"
    );
    assert_eq!(f["routes"]["routes"][0]["refused"], 3);
    assert_eq!(f["reloads"][0]["trigger"], "SIGHUP");
    assert_eq!(f["per_ip"], false);
    srv.stop().await;

    // Defaults: no configuration to show, no routes, no reloads.
    let srv = Server::start(Arc::new(Bare), None).await;
    assert_eq!(srv.request("GET", "/api/config", &[]).await.0, 404);
    let (_, _, body) = srv.request("GET", "/api/routes", &[]).await;
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&body).unwrap()["routes"],
        serde_json::json!([])
    );
    srv.stop().await;
}

/// Reads SSE events from an open stream: the event name and its data.
async fn next_event(r: &mut BufReader<TcpStream>) -> (String, String) {
    let (mut event, mut data) = (String::new(), String::new());
    loop {
        let mut line = String::new();
        let n = tokio::time::timeout(Duration::from_secs(5), r.read_line(&mut line))
            .await
            .expect("no event within 5 s")
            .unwrap();
        assert!(n > 0, "stream closed");
        let line = line.trim_end_matches(['\r', '\n']);
        if let Some(v) = line.strip_prefix("event:") {
            event = v.trim().to_owned();
        } else if let Some(v) = line.strip_prefix("data:") {
            data.push_str(v.trim_start());
        } else if line.is_empty() && !data.is_empty() {
            return (event, data);
        }
    }
}

#[tokio::test]
async fn events_stream_a_frame_a_second_and_end_with_the_server() {
    let srv = Server::start(Arc::new(Hooks), None).await;
    let mut s = TcpStream::connect(srv.addr).await.unwrap();
    s.write_all(b"GET /api/events HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n")
        .await
        .unwrap();
    let mut r = BufReader::new(s);
    let mut head = String::new();
    loop {
        let mut line = String::new();
        r.read_line(&mut line).await.unwrap();
        if line == "\r\n" {
            break;
        }
        head.push_str(&line.to_ascii_lowercase());
    }
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains("content-type: text/event-stream"), "{head}");
    let started = tokio::time::Instant::now();
    let (event, data) = next_event(&mut r).await;
    assert_eq!(event, "frame");
    let f: serde_json::Value = serde_json::from_str(&data).unwrap();
    assert_eq!(f["snapshot"]["meta"]["start_time"], 1_000);
    srv.metrics.tick(1_001);
    let (_, data) = next_event(&mut r).await;
    let (_, data2) = next_event(&mut r).await;
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(1_900) && took < Duration::from_millis(3_500),
        "3 frames took {took:?}"
    );
    let f: serde_json::Value = serde_json::from_str(&data).unwrap();
    let f2: serde_json::Value = serde_json::from_str(&data2).unwrap();
    assert_eq!(f["snapshot"]["meta"]["now"], 1_001);
    assert_eq!(f2["reloads"][0]["ok"], true);
    // The graceful stop ends the stream instead of waiting for it.
    srv.stop().await;
}

#[tokio::test]
async fn the_token_guards_everything_but_health_and_readiness() {
    let srv = Server::start(Arc::new(Hooks), Some(TOKEN)).await;
    assert_eq!(srv.request("GET", "/healthz", &[]).await.0, 200);
    assert_eq!(srv.request("GET", "/ready", &[]).await.0, 200);
    for (method, path) in [
        ("GET", "/"),
        ("GET", "/assets/dashboard.js"),
        ("GET", "/api/events"),
        ("GET", "/api/dashboard"),
        ("GET", "/api/config"),
        ("GET", "/api/routes"),
        ("GET", "/metrics"),
        ("GET", "/metrics/json"),
        ("GET", "/api/throughput/history"),
        ("GET", "/api/certificates"),
        ("POST", "/reload"),
        ("POST", "/api/certificates/web/renew"),
    ] {
        let (status, head, _) = srv.request(method, path, &[]).await;
        assert_eq!(status, 401, "{method} {path} without a token");
        assert!(head.contains("www-authenticate: bearer"), "{head}");
        assert!(head.contains("www-authenticate: basic realm=\"smartproxy admin\""), "{head}");
        let (status, _, _) =
            srv.request(method, path, &[("Authorization", "Bearer wrong-token-0123")]).await;
        assert_eq!(status, 401, "{method} {path} with a wrong token");
    }
    let bearer = format!("Bearer {TOKEN}");
    assert_eq!(srv.request("GET", "/metrics", &[("Authorization", &bearer)]).await.0, 200);
    assert_eq!(srv.request("GET", "/api/config", &[("Authorization", &bearer)]).await.0, 200);
    assert_eq!(srv.request("POST", "/reload", &[("Authorization", &bearer)]).await.0, 200);
    // Mutations stay POST only, with the token too.
    assert_eq!(srv.request("GET", "/reload", &[("Authorization", &bearer)]).await.0, 405);
    // Browsers: Basic with the token as the password ("admin:" + TOKEN).
    use base64::Engine as _;
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("admin:{TOKEN}"))
    );
    let (status, _, body) = srv.request("GET", "/", &[("Authorization", &basic)]).await;
    assert_eq!(status, 200);
    assert!(body.contains("smartproxy"));
    srv.stop().await;
}
