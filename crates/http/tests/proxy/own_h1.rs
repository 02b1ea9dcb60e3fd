//! HTTP/1.1 towards clients read and written by the connection's task (`h1_server.rs`) for
//! requests without a body, and the hand-over to hyper's server at the first request it does
//! not take: one connection served by both in turn, pipelined requests, `Connection: close`,
//! responses of unknown length, and a client that goes away while its request runs.

use std::time::Duration;

use http::Request;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::*;

fn route(port: u16, target: u16) -> String {
    format!(
        r#"[[routes]]
name = "own"
match = {{ ports = [{port}] }}
action = {{ type = "forward", targets = [{{ host = "127.0.0.1", port = {target} }}], http = {{}} }}
"#
    )
}

fn path_of(doc: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(doc).unwrap_or_else(|e| panic!("{e}: {doc}"));
    v["path"].as_str().unwrap_or_default().to_owned()
}

/// GET (the task's own server), POST with a body (hyper from here on), HEAD, then GET again:
/// every request on the one client connection reaches the backend and is answered, and the
/// connection reports all four when it ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_connection_moves_to_hyper_at_a_request_with_a_body() {
    let backend = Backend::h1("b").await;
    let bport = backend.port();
    let proxy = Proxy::start(|p| route(p, bport), Opts::default()).await;
    let mut tx = h1_client(proxy.addr).await;
    let host = format!("127.0.0.1:{}", proxy.port());
    let mut send = async |method: &str, path: &str, b: &'static str| {
        tx.ready().await.unwrap();
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", &host)
            .body(body(b))
            .unwrap();
        let resp = tokio::time::timeout(WAIT, tx.send_request(req)).await.unwrap().unwrap();
        let status = resp.status().as_u16();
        let date = resp.headers().contains_key("date");
        (status, date, text(resp).await)
    };
    let (status, date, first) = send("GET", "/first?q=1", "").await;
    assert_eq!((status, date), (200, true), "{first}");
    assert_eq!(path_of(&first), "/first");
    let (status, _, doc) = send("POST", "/upload", "twelve bytes").await;
    assert_eq!(status, 200, "{doc}");
    let v: serde_json::Value = serde_json::from_str(&doc).unwrap_or_default();
    assert_eq!((v["method"].as_str(), v["body_len"].as_u64()), (Some("POST"), Some(12)), "{doc}");
    let (status, _, doc) = send("HEAD", "/head", "").await;
    assert_eq!((status, doc.as_str()), (200, ""));
    let (status, _, last) = send("GET", "/last", "").await;
    assert_eq!(status, 200, "{last}");
    assert_eq!(path_of(&last), "/last");
    // The forwarding fields, written by the head's encoder for the first GET (a connection of
    // the task) and put into the map for the last (by then hyper's connection, a sender
    // known only at the exchange): the same either way.
    for doc in [&first, &last] {
        let v: serde_json::Value = serde_json::from_str(doc).unwrap_or_default();
        let h = &v["headers"];
        assert_eq!(h["x-forwarded-for"], serde_json::json!(["127.0.0.1"]), "{doc}");
        assert_eq!(h["x-forwarded-proto"], serde_json::json!(["http"]), "{doc}");
        assert_eq!(h["x-forwarded-host"], serde_json::json!([host.as_str()]), "{doc}");
        assert_eq!(h["host"], serde_json::json!([host.as_str()]), "{doc}");
    }
    drop(tx);
    eventually("the connection to be reported with its four requests", || {
        proxy.outcomes.lock().iter().any(|o| o.requests == 4)
    })
    .await;
    assert_eq!(backend.accepted(), 1, "one backend connection served all four");
}

/// A GET, a POST with a body (hyper's from there on) and a GET in one write: the hand-over
/// keeps the bytes already read, and the three are answered in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_survive_the_hand_over() {
    let backend = Backend::h1("b").await;
    let bport = backend.port();
    let proxy = Proxy::start(|p| route(p, bport), Opts::default()).await;
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(
        b"GET /one HTTP/1.1\r\nHost: a\r\n\r\n\
          POST /two HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello\
          GET /three HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut out)).await.unwrap().unwrap();
    let text = String::from_utf8_lossy(&out);
    assert_eq!(text.matches("HTTP/1.1 200 OK\r\n").count(), 3, "{text}");
    let at = |p: &str| text.find(&format!("\"path\":\"{p}\"")).unwrap_or(usize::MAX);
    assert!(at("/one") < at("/two") && at("/two") < at("/three") && at("/three") < text.len());
    assert!(text.contains("\"body_len\":5"), "{text}");
}

/// Two requests in one write are answered in order, each in full.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_are_answered_in_order() {
    let backend = Backend::h1("b").await;
    let bport = backend.port();
    let proxy = Proxy::start(|p| route(p, bport), Opts::default()).await;
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(
        b"GET /one HTTP/1.1\r\nHost: a\r\n\r\nGET /two HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut out)).await.unwrap().unwrap();
    let text = String::from_utf8_lossy(&out);
    assert_eq!(text.matches("HTTP/1.1 200 OK\r\n").count(), 2, "{text}");
    let (one, two) = (text.find("\"/one\""), text.find("\"/two\""));
    assert!(one.is_some() && two.is_some() && one < two, "{text}");
    // The last response says the connection closes, and it did (read_to_end returned).
    let last_head = &text[text.rfind("HTTP/1.1 200 OK").unwrap_or(0)..];
    assert!(last_head.contains("\r\nconnection: close\r\n"), "{last_head}");
}

/// A request with two `Host` fields is a bad request (RFC 9112 §3.2, as nginx answers it):
/// which one a route matched and which one the target reads could differ. It never reaches
/// the backend; the same request with one `Host` on the same kind of connection does, with
/// its `Host` as the client wrote it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_host_fields_are_a_bad_request() {
    let backend = Backend::h1("b").await;
    let bport = backend.port();
    let proxy = Proxy::start(|p| route(p, bport), Opts::default()).await;
    for dup in [
        &b"GET /dup HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\nConnection: close\r\n\r\n"[..],
        b"GET /dup HTTP/1.1\r\nHost: a.test\r\nAccept: */*\r\nhost: a.test\r\nConnection: close\r\n\r\n",
    ] {
        let text = raw(proxy.addr, dup).await;
        assert!(text.starts_with("HTTP/1.1 400"), "{text}");
    }
    assert_eq!(backend.accepted(), 0, "a request with two Host fields reached the backend");
    let text =
        raw(proxy.addr, b"GET /one HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n").await;
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    let doc = &text[text.find('{').unwrap_or(0)..];
    let v: serde_json::Value = serde_json::from_str(doc).unwrap_or_else(|e| panic!("{e}: {doc}"));
    assert_eq!(v["headers"]["host"], serde_json::json!(["a.test"]), "{doc}");
}

/// A response of unknown length (the backend streams it chunked) goes to the client chunked,
/// and the connection serves the next request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_of_unknown_length_are_chunked_and_the_connection_stays() {
    let backend = Backend::h1("b").await;
    let bport = backend.port();
    let proxy = Proxy::start(|p| route(p, bport), Opts::default()).await;
    // `/trailers`: a body without a length, then trailers (not asked for: not sent).
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(b"GET /trailers HTTP/1.1\r\nHost: a\r\n\r\n").await.unwrap();
    let mut got = Vec::new();
    let mut tmp = [0u8; 4096];
    while !got.ends_with(b"0\r\n\r\n") {
        let n = tokio::time::timeout(WAIT, s.read(&mut tmp)).await.unwrap().unwrap();
        assert!(n > 0, "closed: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&tmp[..n]);
    }
    let text = String::from_utf8_lossy(&got).into_owned();
    assert!(text.contains("\r\ntransfer-encoding: chunked\r\n"), "{text}");
    assert!(!text.contains("content-length"), "{text}");
    s.write_all(b"GET /next HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut rest)).await.unwrap().unwrap();
    let rest = String::from_utf8_lossy(&rest);
    assert!(rest.starts_with("HTTP/1.1 200 OK\r\n") && rest.contains("\"/next\""), "{rest}");
}

/// A client that closes while its request waits for the backend: the request is dropped
/// (status 499 in the access log) and the connection is reported closed by the client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_gone_mid_request_cancels_it() {
    let opts = Opts { access_log: true, ..Opts::default() };
    let (proxy, _backend) =
        leave_mid_request(opts, b"GET /sleep HTTP/1.1\r\nHost: a\r\n\r\n").await;
    eventually("the connection to be reported closed by the client", || {
        proxy.outcomes.lock().iter().any(|o| {
            o.reason == smartproxy_http::CloseReason::ClientClosed
                && o.requests == 1
                && o.protocol == Some(smartproxy_http::Protocol::Http1)
        })
    })
    .await;
}

/// With a close-watch delay (the engine's plain connections, whose sockets register with
/// the reactor only when a read has to wait), a client that leaves during a
/// `Connection: close` request is still noticed: once the request has run that long.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_gone_mid_close_request_is_noticed_after_the_watch_delay() {
    let opts = Opts {
        access_log: true,
        close_watch_delay: Some(Duration::from_millis(300)),
        ..Opts::default()
    };
    let request = b"GET /sleep HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n";
    leave_mid_request(opts, request).await;
}

/// Sends `request` (to a backend path that answers late), closes the client once the request
/// has reached the backend, and waits for the request to be logged as 499 (cancelled).
async fn leave_mid_request(opts: Opts, request: &[u8]) -> (Proxy, Backend) {
    let backend = Backend::h1("b").await;
    let bport = backend.port();
    let proxy = Proxy::start(|p| route(p, bport), opts).await;
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(request).await.unwrap();
    eventually("the request to reach the backend", || {
        backend.requests.load(std::sync::atomic::Ordering::SeqCst) == 1
    })
    .await;
    drop(s);
    eventually("the request to be logged as 499", || {
        proxy.access.lock().iter().any(|l| l.contains("\"status\":499"))
    })
    .await;
    (proxy, backend)
}

/// The same delay does not hold back a close request's answer, and a kept-alive request
/// before it is served as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_requests_with_a_watch_delay_are_answered_at_once() {
    let backend = Backend::h1("b").await;
    let bport = backend.port();
    let opts = Opts { close_watch_delay: Some(Duration::from_secs(3600)), ..Opts::default() };
    let proxy = Proxy::start(|p| route(p, bport), opts).await;
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(b"GET /first HTTP/1.1\r\nHost: a\r\n\r\nGET /last HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut all = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut all))
        .await
        .expect("both answers and the close within 10 s")
        .unwrap();
    let all = String::from_utf8_lossy(&all);
    assert_eq!(all.matches("HTTP/1.1 200 OK\r\n").count(), 2, "{all}");
    assert!(all.contains("\"/first\"") && all.contains("\"/last\""), "{all}");
}

/// Whether requests may read the connection's local address: only with a route that sends a
/// PROXY header, redirects, or sets templated header values (the engine then asks for it).
#[tokio::test]
async fn the_local_address_is_needed_only_by_routes_that_read_it() {
    let plain = Proxy::start(|p| route(p, 9), Opts::default()).await;
    assert!(!plain.service.needs_local_addr(), "a plain forward route does not read it");
    let with = |action: &'static str| {
        move |p: u16| {
            format!(
                "{}[[routes]]\nname = \"other\"\nmatch = {{ ports = [{p}], path = \"/o/*\" }}\naction = {action}\n",
                route(p, 9)
            )
        }
    };
    let redirect = Proxy::start(
        with(r#"{ type = "socket-handler", handler = "redirect", location = "https://{domain}/", status = 301 }"#),
        Opts::default(),
    )
    .await;
    assert!(redirect.service.needs_local_addr(), "a redirect reads it");
    let proxy_out = Proxy::start(
        with(r#"{ type = "forward", targets = [{ host = "127.0.0.1", port = 9 }], send_proxy_protocol = "v2", http = {} }"#),
        Opts::default(),
    )
    .await;
    assert!(proxy_out.service.needs_local_addr(), "a route sending a PROXY header reads it");
}

/// A target that answers every request head on its connections with `resp`, byte for byte.
async fn scripted_target(
    resp: &'static [u8],
) -> (u16, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = std::sync::Arc::clone(&accepted);
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut tmp = [0u8; 4096];
                loop {
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        buf.drain(..end + 4);
                        if s.write_all(resp).await.is_err() {
                            return;
                        }
                    }
                    match s.read(&mut tmp).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&tmp[..n]),
                    }
                }
            });
        }
    });
    (port, accepted)
}

/// The target's fields reach the client as the target wrote them (order, spelling, its
/// `Date`), without its hop-by-hop fields and with one `Content-Length`, on a kept-alive
/// backend connection; a route that changes response fields (`response_headers`) still
/// gets them changed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn target_fields_pass_as_written_unless_the_route_changes_them() {
    const RESP: &[u8] = b"HTTP/1.1 200 OK\r\nServer: scripted\r\n\
        Date: Mon, 01 Jan 2024 00:00:00 GMT\r\nX-Mixed-Case: Value\r\n\
        Connection: keep-alive\r\nKeep-Alive: timeout=5\r\nContent-Length: 5\r\n\r\nhello";
    let (tport, accepted) = scripted_target(RESP).await;
    let proxy = Proxy::start(
        |p| {
            format!(
                r#"[[routes]]
name = "plain"
match = {{ ports = [{p}], path = "/plain/*" }}
action = {{ type = "forward", targets = [{{ host = "127.0.0.1", port = {tport} }}], http = {{}} }}
[[routes]]
name = "ops"
match = {{ ports = [{p}], path = "/ops/*" }}
action = {{ type = "forward", targets = [{{ host = "127.0.0.1", port = {tport} }}], http = {{ response_headers = {{ set = {{ "X-Added" = "yes" }}, remove = ["Server"] }} }} }}
"#
            )
        },
        Opts::default(),
    )
    .await;
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(
        b"GET /plain/1 HTTP/1.1\r\nHost: a\r\n\r\nGET /plain/2 HTTP/1.1\r\nHost: a\r\n\r\n\
          GET /ops/3 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut out)).await.unwrap().unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    let responses: Vec<&str> = text.split("HTTP/1.1 ").filter(|r| !r.is_empty()).collect();
    assert_eq!(responses.len(), 3, "{text}");
    for plain in &responses[..2] {
        let (head, body) = plain.split_once("\r\n\r\n").unwrap_or_default();
        assert_eq!(body, "hello", "{plain}");
        assert!(
            head.contains(
                "\r\nServer: scripted\r\nDate: Mon, 01 Jan 2024 00:00:00 GMT\r\nX-Mixed-Case: Value\r\n"
            ),
            "the target's fields in its order and spelling: {head}"
        );
        let lower = head.to_ascii_lowercase();
        assert_eq!(lower.matches("\r\ndate:").count(), 1, "{head}");
        assert_eq!(lower.matches("\r\ncontent-length: 5").count(), 1, "{head}");
        assert!(!lower.contains("keep-alive") && !lower.contains("connection:"), "{head}");
    }
    let (head, body) = responses[2].split_once("\r\n\r\n").unwrap_or_default();
    assert_eq!(body, "hello", "{head}");
    let lower = format!("{}\r\n", head.to_ascii_lowercase());
    assert!(lower.contains("\r\nx-added: yes\r\n"), "{head}");
    assert!(lower.contains("\r\nx-mixed-case: value\r\n"), "{head}");
    assert!(!lower.contains("\r\nserver:"), "{head}");
    assert!(!lower.contains("keep-alive"), "{head}");
    assert!(lower.contains("\r\nconnection: close\r\n"), "{head}");
    assert_eq!(lower.matches("\r\ndate:").count(), 1, "{head}");
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 1, "one backend connection");
}
