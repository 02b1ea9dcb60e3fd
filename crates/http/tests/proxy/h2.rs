//! HTTP/2 towards clients (h2c prior knowledge, ALPN over TLS) and towards backends (h2c,
//! h2 over TLS by ALPN), trailers, h2load with zero failures, TLS re-encryption.

use std::sync::Arc;

use http::Request;
use http_body_util::BodyExt;
use smartproxy_http::{TlsConnectFuture, TlsConnectRequest, TlsStream, UpstreamTls};
use tokio::net::TcpStream;

use crate::common::*;

fn route(port: u16, target: u16, http: &str, extra: &str) -> String {
    format!(
        r#"[[routes]]
name = "r"
match = {{ ports = [{port}] }}
action = {{ type = "forward", targets = [{{ host = "127.0.0.1", port = {target} }}], http = {{ {http} }}{extra} }}
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_prior_knowledge_to_h1_backend() {
    let b = Backend::h1("b").await;
    let bp = b.port();
    let proxy = Proxy::start(|p| route(p, bp, "", ""), Opts::default()).await;
    // curl 7.88 does not reuse a prior-knowledge connection for a second URL (it does not
    // send it at all, with or without a proxy): one URL per curl, several requests per
    // connection with hyper's client and h2load below.
    for path in ["/one", "/two"] {
        let out =
            curl(&["--http2-prior-knowledge", "-w", "\n%{http_version}\n", &proxy.url(path)]).await;
        let text = stdout(&out);
        assert!(text.ends_with("\n2\n"), "{text}{}", String::from_utf8_lossy(&out.stderr));
        let doc = &json_docs(&text)[0];
        assert_eq!(doc["version"], "HTTP/1.1");
        assert_eq!(doc["path"], path);
        assert_eq!(doc["headers"]["host"][0], format!("127.0.0.1:{}", proxy.port()));
    }
    assert_eq!(b.accepted(), 1, "one pooled backend connection");
    // Several requests on one HTTP/2 connection; cookie crumbs are joined for HTTP/1.1.
    let mut tx = h2_client(proxy.addr).await;
    for i in 0..5 {
        let r = tx
            .send_request(Request::get(proxy.url(&format!("/n{i}"))).body(empty()).unwrap())
            .await
            .unwrap();
        assert!(text(r).await.contains(&format!("\"path\":\"/n{i}\"")));
    }
    let req = Request::get(proxy.url("/c"))
        .header("cookie", "a=1")
        .header("cookie", "b=2")
        .body(empty())
        .unwrap();
    let doc: serde_json::Value =
        serde_json::from_str(&text_of(tx.send_request(req).await.unwrap()).await).unwrap();
    assert_eq!(doc["headers"]["cookie"], serde_json::json!(["a=1; b=2"]));
    assert!(
        proxy.outcomes.lock().iter().all(|o| o.protocol != Some(smartproxy_http::Protocol::Http1))
    );
}

async fn text_of(r: http::Response<hyper::body::Incoming>) -> String {
    text(r).await
}

/// h2 end to end: client h2c, backend h2c, trailers both ways.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_upstream_and_trailers() {
    let b = Backend::h2c("h2").await;
    let bp = b.port();
    let proxy = Proxy::start(|p| route(p, bp, "upstream = \"http2\"", ""), Opts::default()).await;
    let mut tx = h2_client(proxy.addr).await;
    // Response trailers come through.
    let resp =
        tx.send_request(Request::get(proxy.url("/trailers")).body(empty()).unwrap()).await.unwrap();
    let collected = resp.into_body().collect().await.unwrap();
    let trailers = collected.trailers().cloned().unwrap_or_default();
    assert_eq!(collected.to_bytes(), "body");
    assert_eq!(trailers.get("x-checksum").map(|v| v.as_bytes()), Some(&b"abc123"[..]));
    // Request trailers reach the backend; several streams share one backend connection.
    let mut handles = Vec::new();
    for i in 0..20 {
        let mut tx = tx.clone();
        let url = proxy.url(&format!("/t{i}"));
        handles.push(tokio::spawn(async move {
            let mut t = http::HeaderMap::new();
            t.insert("x-sum", "42".parse().unwrap());
            let frames = vec![
                Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(
                    bytes::Bytes::from_static(b"hello"),
                )),
                Ok(hyper::body::Frame::trailers(t)),
            ];
            let body = http_body_util::StreamBody::new(futures_util::stream::iter(frames)).boxed();
            let req = Request::post(url).header("te", "trailers").body(body).unwrap();
            text(tx.send_request(req).await.unwrap()).await
        }));
    }
    for h in handles {
        let doc: serde_json::Value = serde_json::from_str(&h.await.unwrap()).unwrap();
        assert_eq!(doc["version"], "HTTP/2.0");
        assert_eq!(doc["body_len"], 5);
        assert_eq!(doc["trailers"]["x-sum"], "42", "{doc}");
    }
    assert_eq!(b.accepted(), 1, "h2 upstream connections are multiplexed");
}

/// TLS terminated in front of the layer, ALPN h2 for curl --http2, http/1.1 otherwise.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_alpn_h2_with_curl() {
    let pki = Pki::new();
    let leaf = pki.leaf("front", &["front.test"]);
    let b = Backend::h1("b").await;
    let bp = b.port();
    let proxy = Proxy::start(
        |p| {
            format!(
                r#"[[routes]]
name = "tls"
match = {{ ports = [{p}], domains = ["front.test"] }}
action = {{ type = "forward", targets = [{{ host = "127.0.0.1", port = {bp} }}], tls = {{ mode = "terminate", certificate = {{ cert = "unused.pem", key = "unused.key" }} }}, http = {{ }} }}
"#
            )
        },
        Opts { tls: Some(pki.server_config(&leaf, &[b"h2", b"http/1.1"])), ..Opts::default() },
    )
    .await;
    let ca = pki.ca_path();
    let resolve = format!("front.test:{}:127.0.0.1", proxy.port());
    let url = format!("https://front.test:{}/secure", proxy.port());
    for (flag, want) in [("--http2", "2"), ("--http1.1", "1.1")] {
        let out = curl(&[
            flag,
            "--cacert",
            ca.to_str().unwrap(),
            "--resolve",
            &resolve,
            "-w",
            "\n%{http_version}\n",
            &url,
        ])
        .await;
        let text = stdout(&out);
        assert!(
            text.ends_with(&format!("\n{want}\n")),
            "{flag}: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let doc = &json_docs(&text)[0];
        assert_eq!(doc["headers"]["x-forwarded-proto"][0], "https", "{doc}");
        assert_eq!(doc["headers"]["host"][0], format!("front.test:{}", proxy.port()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2load_has_no_failed_requests() {
    let h2load = require("h2load", "nghttp2-client");
    let b = Backend::h1("b").await;
    let bp = b.port();
    let proxy = Proxy::start(|p| route(p, bp, "", ""), Opts::default()).await;
    let out = tokio::process::Command::new(h2load)
        .args(["-n", "2000", "-c", "4", "-m", "10", &proxy.url("/load")])
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(text.contains("2000 succeeded, 0 failed, 0 errored, 0 timeout"), "{text}");
    assert!(text.contains("status codes: 2000 2xx"), "{text}");
    // 40 requests in flight need 40 HTTP/1.1 backend connections, reused for the rest.
    assert!(b.accepted() <= 48, "backend connections pooled: {}", b.accepted());
    assert_eq!(proxy.metrics.snapshot().http.requests_total, 2000);
}

/// A connector the engine would provide: rustls towards the target, trusting the test CA.
struct RustlsUpstream {
    config: Arc<rustls::ClientConfig>,
}

impl UpstreamTls for RustlsUpstream {
    fn connect<'a>(&'a self, tcp: TcpStream, req: TlsConnectRequest<'a>) -> TlsConnectFuture<'a> {
        let mut config = (*self.config).clone();
        config.alpn_protocols = req.alpn.iter().map(|a| a.to_vec()).collect();
        let name = req.client_sni.unwrap_or("backend.test").to_owned();
        Box::pin(async move {
            let name = rustls::pki_types::ServerName::try_from(name)
                .map_err(|e| std::io::Error::other(e.to_string()))?;
            let s = tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp).await?;
            let alpn = s.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
            Ok(TlsStream::new(Box::new(s), alpn))
        })
    }
}

/// terminate-and-reencrypt: the client's TLS ends here, a new TLS connection (verified
/// against the test CA, ALPN h2 when `upstream = "auto"`) goes to the backend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reencrypts_to_a_tls_backend() {
    let pki = Pki::new();
    let back_leaf = pki.leaf("backend", &["backend.test"]);
    let b = Backend::start(
        "tls-backend",
        BackendOpts {
            proto: Proto::H1,
            tls: Some(pki.server_config(&back_leaf, &[b"h2", b"http/1.1"])),
            proxy_header: false,
        },
    )
    .await;
    let bp = b.port();
    let upstream: Arc<dyn UpstreamTls> =
        Arc::new(RustlsUpstream { config: pki.client_config(&[]) });
    for (upstream_key, want) in [("http1", "HTTP/1.1"), ("auto", "HTTP/2.0"), ("http2", "HTTP/2.0")]
    {
        let proxy = Proxy::start(
            |p| {
                route(
                    p,
                    bp,
                    &format!("upstream = \"{upstream_key}\""),
                    ", tls = { mode = \"terminate-and-reencrypt\", certificate = { cert = \"c.pem\", key = \"k.pem\" } }",
                )
            },
            Opts { upstream_tls: Some(Arc::clone(&upstream)), ..Opts::default() },
        )
        .await;
        let out = curl(&["-w", "\n%{http_code}", &proxy.url("/enc")]).await;
        let text = stdout(&out);
        assert!(text.ends_with("\n200"), "{upstream_key}: {text}");
        assert_eq!(json_docs(&text)[0]["version"], want, "{upstream_key}");
    }
    // Without the engine's connector the route cannot work: 502, said in the log.
    let proxy = Proxy::start(
        |p| {
            route(
                p,
                bp,
                "",
                ", tls = { mode = \"terminate-and-reencrypt\", certificate = { cert = \"c.pem\", key = \"k.pem\" } }",
            )
        },
        Opts::default(),
    )
    .await;
    let out = curl(&["-w", "\n%{http_code}", &proxy.url("/enc")]).await;
    assert!(stdout(&out).ends_with("\n502"));
}

/// HTTP/2: a header list over `max_request_header_bytes` is refused (431) and the
/// connection goes on serving other streams.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_oversized_header_list_is_431() {
    let b = Backend::h1("b").await;
    let bp = b.port();
    let mut s = smartproxy_http::HttpSettings::default();
    s.max_request_header_bytes = 4096;
    let proxy =
        Proxy::start(|p| route(p, bp, "", ""), Opts { settings: Some(s), ..Opts::default() }).await;
    let mut tx = h2_client(proxy.addr).await;
    // A first request, so that the proxy's SETTINGS (the header list size) are known.
    let r = tx.send_request(Request::get(proxy.url("/ok")).body(empty()).unwrap()).await.unwrap();
    assert_eq!(r.status(), 200);
    let _ = text(r).await;
    let big =
        Request::get(proxy.url("/big")).header("x-big", "a".repeat(8000)).body(empty()).unwrap();
    let outcome = tx.send_request(big).await;
    match &outcome {
        Ok(r) => assert_eq!(r.status(), 431),
        Err(e) => panic!("expected a 431, got {e}"),
    }
    let r =
        tx.send_request(Request::get(proxy.url("/after")).body(empty()).unwrap()).await.unwrap();
    assert_eq!(r.status(), 200);
}
