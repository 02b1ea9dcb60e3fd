//! The in-task HTTP/1.1 exchange (requests without a body to a plain HTTP/1.1 target): every
//! way a response can be framed (RFC 9112 §6.3), written by a scripted backend a few bytes at
//! a time, and when the backend connection may and may not serve the next request.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use http::Request;
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::common::*;

fn route(port: u16, target: u16) -> String {
    format!(
        r#"[[routes]]
name = "r"
match = {{ ports = [{port}] }}
action = {{ type = "forward", targets = [{{ host = "127.0.0.1", port = {target} }}], http = {{}} }}
"#
    )
}

/// What the scripted backend answers to `METHOD path`, and whether it closes afterwards.
fn script(method: &str, path: &str) -> (Vec<u8>, bool) {
    let r: (&[u8], bool) = match (method, path) {
        (_, "/chunked") => (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
              5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nx-checksum: abc123\r\n\r\n",
            false,
        ),
        (_, "/chunked-plain") => {
            (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n", false)
        }
        (_, "/close" | "/close-once") => {
            (b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the end", true)
        }
        (_, "/http10") => (b"HTTP/1.0 200 OK\r\n\r\nold", true),
        ("HEAD", "/head") => (b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n", false),
        (_, "/hints") => (
            b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n\
              HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
            false,
        ),
        (_, "/nocontent") => (b"HTTP/1.1 204 No Content\r\n\r\n", false),
        (_, "/extra") => (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokEXTRA", false),
        (_, "/bad") => (b"HTTP/1.1 200 OK\r\nContent-Length: 1x\r\n\r\n", false),
        (_, "/short") => (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", true),
        (_, "/bye") => (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", true),
        _ => (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", false),
    };
    (r.0.to_vec(), r.1)
}

/// A backend that answers each request head from [`script`], 7 bytes per write with a
/// millisecond between writes (so the proxy sees heads, chunk lines and trailers in pieces;
/// paths ending in `-once` in one write). Counts accepted connections.
async fn scripted() -> (u16, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let accepted = Arc::new(AtomicUsize::new(0));
    let acc = Arc::clone(&accepted);
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            acc.fetch_add(1, Ordering::SeqCst);
            s.set_nodelay(true).unwrap();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut b = [0u8; 4096];
                loop {
                    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                        match s.read(&mut b).await {
                            Ok(n) if n > 0 => buf.extend_from_slice(&b[..n]),
                            _ => return,
                        }
                        continue;
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                    buf.drain(..end + 4);
                    let mut words = head.split(' ');
                    let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
                    let (answer, close) = script(method, path);
                    // `-once`: the whole answer in one write (head and body in one read).
                    let piece_len = if path.ends_with("-once") { answer.len() } else { 7 };
                    for piece in answer.chunks(piece_len) {
                        if s.write_all(piece).await.is_err() {
                            return;
                        }
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                    if close {
                        return;
                    }
                }
            });
        }
    });
    (port, accepted)
}

type H1 = hyper::client::conn::http1::SendRequest<BoxBody>;

async fn h1_client(proxy: &Proxy) -> H1 {
    let tcp = TcpStream::connect(proxy.addr).await.unwrap();
    let (tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await.unwrap();
    tokio::spawn(conn);
    tx
}

/// Status, body and trailers of one request on `tx`.
async fn get(tx: &mut H1, proxy: &Proxy, method: &str, path: &str) -> (u16, String) {
    tx.ready().await.unwrap();
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", format!("127.0.0.1:{}", proxy.port()))
        .body(empty())
        .unwrap();
    let resp = tokio::time::timeout(WAIT, tx.send_request(req)).await.unwrap().unwrap();
    let status = resp.status().as_u16();
    (status, text(resp).await)
}

/// Every framing of a response body, each followed by a request on the same client
/// connection; the backend connection is reused exactly when the framing and the response
/// allow it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_framings_and_connection_reuse() {
    let (bp, accepted) = scripted().await;
    let proxy = Proxy::start(|p| route(p, bp), Opts::default()).await;
    let mut tx = h1_client(&proxy).await;

    assert_eq!(get(&mut tx, &proxy, "GET", "/plain").await, (200, "ok".into()));
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
    // Chunked, with an extension and trailers, in 7-byte pieces: reused afterwards.
    assert_eq!(get(&mut tx, &proxy, "GET", "/chunked").await, (200, "hello world".into()));
    assert_eq!(get(&mut tx, &proxy, "GET", "/chunked-plain").await, (200, "abc".into()));
    // A HEAD's Content-Length announces a body that never comes.
    assert_eq!(get(&mut tx, &proxy, "HEAD", "/head").await, (200, String::new()));
    // A 103 before the final response; a 204 without a body.
    assert_eq!(get(&mut tx, &proxy, "GET", "/hints").await, (200, "ok".into()));
    assert_eq!(get(&mut tx, &proxy, "GET", "/nocontent").await, (204, String::new()));
    assert_eq!(get(&mut tx, &proxy, "GET", "/plain").await, (200, "ok".into()));
    assert_eq!(accepted.load(Ordering::SeqCst), 1, "one backend connection so far");

    // Delimited by the close: the body is whole, the connection is not pooled.
    assert_eq!(get(&mut tx, &proxy, "GET", "/close").await, (200, "until the end".into()));
    assert_eq!(get(&mut tx, &proxy, "GET", "/plain").await, (200, "ok".into()));
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
    // Head, body and close at once: the body bytes read with the head are not lost.
    assert_eq!(get(&mut tx, &proxy, "GET", "/close-once").await, (200, "until the end".into()));
    assert_eq!(get(&mut tx, &proxy, "GET", "/http10").await, (200, "old".into()));
    assert_eq!(get(&mut tx, &proxy, "GET", "/plain").await, (200, "ok".into()));
    assert_eq!(accepted.load(Ordering::SeqCst), 4);
    // Bytes past the announced length: the response is cut at its length and the
    // connection, out of step, is dropped.
    assert_eq!(get(&mut tx, &proxy, "GET", "/extra").await, (200, "ok".into()));
    assert_eq!(get(&mut tx, &proxy, "GET", "/plain").await, (200, "ok".into()));
    assert_eq!(accepted.load(Ordering::SeqCst), 5);
    // The backend closes right after a keep-alive answer: the next request gets a new
    // connection (the pool sees the close, or the request is sent again), never an error.
    assert_eq!(get(&mut tx, &proxy, "GET", "/bye").await, (200, "ok".into()));
    assert_eq!(get(&mut tx, &proxy, "GET", "/plain").await, (200, "ok".into()));
    assert_eq!(accepted.load(Ordering::SeqCst), 6);
    let outcomes = proxy.metrics.snapshot();
    assert!(outcomes.http.errors.values().all(|&n| n == 0), "{:?}", outcomes.http.errors);
}

/// A chunked response's trailers reach an HTTP/2 client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_trailers_reach_h2_clients() {
    let (bp, _) = scripted().await;
    let proxy = Proxy::start(|p| route(p, bp), Opts::default()).await;
    let mut tx = h2_client(proxy.addr).await;
    let resp =
        tx.send_request(Request::get(proxy.url("/chunked")).body(empty()).unwrap()).await.unwrap();
    let collected = resp.into_body().collect().await.unwrap();
    let trailers = collected.trailers().cloned().unwrap_or_default();
    assert_eq!(collected.to_bytes(), "hello world");
    assert_eq!(trailers.get("x-checksum").map(|v| v.as_bytes()), Some(&b"abc123"[..]));
}

/// A malformed head is a 502 counted as a backend error; a body cut short ends the client's
/// response in error (not a complete short body).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_short_responses() {
    let (bp, _) = scripted().await;
    let proxy = Proxy::start(|p| route(p, bp), Opts::default()).await;
    let mut tx = h1_client(&proxy).await;
    let (status, body) = get(&mut tx, &proxy, "GET", "/bad").await;
    assert_eq!(status, 502, "{body}");
    assert_eq!(proxy.metrics.snapshot().http.errors["backend_error"], 1);

    let mut tx = h1_client(&proxy).await;
    tx.ready().await.unwrap();
    let req = Request::get("/short").header("host", "x").body(empty()).unwrap();
    let resp = tokio::time::timeout(WAIT, tx.send_request(req)).await.unwrap().unwrap();
    assert_eq!(resp.status(), 200);
    let body = tokio::time::timeout(WAIT, resp.into_body().collect()).await.unwrap();
    assert!(body.is_err(), "a 10-byte body cut after 3 bytes must not end cleanly");
}

/// A POST without a body goes the in-task way too; a POST with one is taken by hyper's client
/// on the same pooled connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_with_bodies_reuse_direct_connections() {
    let b = Backend::h1("b").await;
    let bp = b.port();
    let proxy = Proxy::start(|p| route(p, bp), Opts::default()).await;
    let mut tx = h1_client(&proxy).await;
    for (method, data) in [("GET", ""), ("POST", ""), ("POST", "hello"), ("GET", ""), ("PUT", "x")]
    {
        tx.ready().await.unwrap();
        let req = Request::builder()
            .method(method)
            .uri("/echo")
            .header("host", "x")
            .body(body(data.to_owned()))
            .unwrap();
        let resp = tokio::time::timeout(WAIT, tx.send_request(req)).await.unwrap().unwrap();
        assert_eq!(resp.status(), 200);
        let doc: serde_json::Value = serde_json::from_str(&text(resp).await).unwrap();
        assert_eq!(
            (doc["method"].as_str(), doc["body_len"].as_u64()),
            (Some(method), Some(data.len() as u64))
        );
        if method == "POST" && data.is_empty() {
            assert_eq!(doc["headers"]["content-length"][0], "0", "{doc}");
        }
    }
    assert_eq!(b.accepted(), 1, "every request on one backend connection");
}
