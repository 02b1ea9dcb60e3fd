//! PROXY header towards backends (connections never shared between clients), request
//! metrics and the access log.

use std::time::Duration;

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_header_connections_belong_to_one_client() {
    let b =
        Backend::start("pp", BackendOpts { proto: Proto::H1, tls: None, proxy_header: true }).await;
    let bp = b.port();
    let proxy = Proxy::start(
        |p| {
            format!(
                r#"[[routes]]
name = "pp"
match = {{ ports = [{p}] }}
action = {{ type = "forward", targets = [{{ host = "127.0.0.1", port = {bp} }}], send_proxy_protocol = "v1", http = {{ }} }}
"#
            )
        },
        Opts { proxy_header: true, ..Opts::default() },
    )
    .await;
    // Client A: two requests on one connection -> one backend connection with A's header.
    let mut a = h1_client(proxy.addr).await;
    let mut docs = Vec::new();
    for path in ["/a1", "/a2"] {
        a.ready().await.unwrap();
        let r = a.send_request(http::Request::get(path).header("host", "x").body(empty()).unwrap());
        docs.push(
            serde_json::from_str::<serde_json::Value>(&text(r.await.unwrap()).await).unwrap(),
        );
    }
    // Client B, while A's connection is open and idle: its own backend connection.
    let mut bc = h1_client(proxy.addr).await;
    let r = bc.send_request(http::Request::get("/b").header("host", "x").body(empty()).unwrap());
    docs.push(serde_json::from_str(&text(r.await.unwrap()).await).unwrap());
    assert_eq!(docs[0]["conn"], docs[1]["conn"], "A's requests share a backend connection");
    assert_ne!(docs[0]["conn"], docs[2]["conn"], "B never gets A's connection");
    assert_eq!(docs[0]["proxy"], docs[1]["proxy"]);
    assert_ne!(docs[0]["proxy"], docs[2]["proxy"]);
    let line = docs[2]["proxy"].as_str().unwrap_or("");
    assert!(line.starts_with("PROXY TCP4 127.0.0.1 127.0.0.1 "), "{line}");
    assert_eq!(b.accepted(), 2);
    assert_eq!(proxy.service.pooled_connections(), 0, "nothing in the shared pools");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_metrics_and_access_log() {
    let b = Backend::h1("m").await;
    let bp = b.port();
    let proxy = Proxy::start(
        |p| {
            format!(
                r#"[[routes]]
name = "api"
match = {{ ports = [{p}], path = "/api/*" }}
action = {{ type = "forward", targets = [{{ host = "127.0.0.1", port = {bp} }}], http = {{ }} }}

[[routes]]
name = "go"
match = {{ ports = [{p}], path = "/go" }}
action = {{ type = "socket-handler", handler = "redirect", location = "/api/x", status = 302 }}
"#
            )
        },
        Opts { access_log: true, ..Opts::default() },
    )
    .await;
    let out = curl(&[
        "-H",
        "Host: m.test",
        &proxy.url("/api/one?x=%221%22"),
        &proxy.url("/api/two"),
        "--next",
        "--data-binary",
        "hello",
        &proxy.url("/api/post"),
        "--next",
        &proxy.url("/go"),
        &proxy.url("/nothing"),
    ])
    .await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    eventually("five access log lines", || proxy.access.lock().len() == 5).await;
    let lines: Vec<serde_json::Value> = proxy
        .access
        .lock()
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let first = &lines[0];
    for key in [
        "time",
        "client",
        "route",
        "method",
        "host",
        "path",
        "status",
        "bytes_in",
        "bytes_out",
        "duration_ms",
        "upstream",
        "protocol",
    ] {
        assert!(first.get(key).is_some(), "{key} missing in {first}");
    }
    assert_eq!(first["route"], "api");
    assert_eq!(first["method"], "GET");
    assert_eq!(first["host"], "m.test");
    assert_eq!(first["path"], "/api/one?x=%221%22");
    assert_eq!(first["status"], 200);
    assert_eq!(first["upstream"], format!("127.0.0.1:{bp}"));
    assert_eq!(first["protocol"], "h1");
    assert!(first["client"].as_str().unwrap_or("").starts_with("127.0.0.1:"));
    assert!(first["bytes_out"].as_u64().unwrap_or(0) > 100);
    let post = lines.iter().find(|l| l["path"] == "/api/post").unwrap();
    assert_eq!((post["method"].as_str(), post["bytes_in"].as_u64()), (Some("POST"), Some(5)));
    let go = lines.iter().find(|l| l["path"] == "/go").unwrap();
    assert_eq!(
        (go["route"].as_str(), go["status"].as_u64(), go["upstream"].as_str()),
        (Some("go"), Some(302), Some(""))
    );
    let none = lines.iter().find(|l| l["path"] == "/nothing").unwrap();
    assert_eq!((none["route"].as_str(), none["status"].as_u64()), (Some(""), Some(404)));

    // Metrics: per route, by class and method; the requests group after a tick.
    proxy.metrics.tick(1);
    let s = proxy.metrics.snapshot();
    assert_eq!(s.requests.total, 5);
    assert_eq!(s.http.requests_total, 5);
    assert_eq!(s.http.in_flight, 0);
    let api = s.routes.iter().find(|r| r.name == "api").unwrap();
    let counts: Vec<(&str, &str, u64)> = api
        .http
        .requests
        .iter()
        .map(|r| (r.code_class.as_str(), r.method.as_str(), r.count))
        .collect();
    assert_eq!(counts, [("2xx", "GET", 2), ("2xx", "POST", 1)]);
    assert_eq!(api.http.request_duration_seconds.count, 3);
    assert!(api.http.request_duration_seconds.sum < Duration::from_secs(5).as_secs_f64());
    assert_eq!(api.backend_connects, 1);
    let go = s.routes.iter().find(|r| r.name == "go").unwrap();
    assert_eq!(go.http.requests[0].code_class, "3xx");
    assert_eq!(s.http.unrouted.requests_total, 1);
    assert_eq!(s.http.errors["no_route"], 1);
}

/// Idle upstream connections are closed after `http_pool_idle_timeout`; the pool keeps at
/// most `http_pool_max_idle` of them (per worker thread: one thread here).
#[tokio::test(flavor = "current_thread")]
async fn pool_is_bounded_and_reaped() {
    let b = Backend::h1("pool").await;
    let bp = b.port();
    let mut s = smartproxy_http::HttpSettings::default();
    s.http_pool_idle_timeout = Duration::from_millis(400);
    s.http_pool_max_idle = 2;
    let proxy = Proxy::start(
        |p| {
            format!(
                r#"[[routes]]
name = "pool"
match = {{ ports = [{p}] }}
action = {{ type = "forward", targets = [{{ host = "127.0.0.1", port = {bp} }}], http = {{ }} }}
"#
            )
        },
        Opts { settings: Some(s), ..Opts::default() },
    )
    .await;
    // Five requests at once need five backend connections; two stay pooled.
    let mut all = Vec::new();
    for i in 0..5 {
        let url = proxy.url(&format!("/delay/{}", 300 + i));
        all.push(tokio::spawn(async move { curl(&[&url]).await }));
    }
    for h in all {
        assert!(h.await.unwrap().status.success());
    }
    assert_eq!(b.accepted(), 5, "five requests at once, five connections");
    assert_eq!(proxy.service.pooled_connections(), 2, "two of them kept");
    eventually("the idle connections to be reaped", || proxy.service.pooled_connections() == 0)
        .await;
}
