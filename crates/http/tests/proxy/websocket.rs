//! WebSocket through the HTTP layer: HTTP/1.1 Upgrade and RFC 8441 extended CONNECT over
//! HTTP/2; frames both ways; open past the keep-alive timeout while frames flow and while
//! idle, closed only by the tunnel's own inactivity timeout.

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use hyper_util::rt::TokioIo;
use smartproxy_http::HttpSettings;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::Role;

use crate::common::*;

fn route(port: u16, target: u16, http: &str) -> String {
    format!(
        r#"[[routes]]
name = "ws"
match = {{ ports = [{port}] }}
action = {{ type = "forward", targets = [{{ host = "127.0.0.1", port = {target} }}], http = {{ {http} }} }}
"#
    )
}

fn short_timers() -> Opts {
    let mut s = HttpSettings::default();
    s.http_keepalive_timeout = Duration::from_millis(300);
    s.request_header_timeout = Duration::from_millis(300);
    Opts { settings: Some(s), tunnel_idle: Some(Duration::from_millis(1500)), ..Opts::default() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_outlives_keepalive_timeout() {
    let b = Backend::h1("ws").await;
    let bp = b.port();
    let proxy = Proxy::start(|p| route(p, bp, ""), short_timers()).await;
    let tcp = TcpStream::connect(proxy.addr).await.unwrap();
    let url = format!("ws://127.0.0.1:{}/ws", proxy.port());
    let (mut ws, resp) = tokio_tungstenite::client_async(url, tcp).await.unwrap();
    assert_eq!(resp.status(), 101);
    // Frames flow for 4 keep-alive periods.
    let started = Instant::now();
    let mut n = 0u32;
    while started.elapsed() < Duration::from_millis(1200) {
        let msg = format!("frame {n}");
        ws.send(Message::text(msg.clone())).await.unwrap();
        let echo = tokio::time::timeout(WAIT, ws.next()).await.unwrap().unwrap().unwrap();
        assert_eq!(echo, Message::text(msg));
        n += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Idle for 3 keep-alive periods (less than the tunnel's 1.5 s): still open.
    tokio::time::sleep(Duration::from_millis(900)).await;
    let big = vec![7u8; 200_000];
    ws.send(Message::binary(big.clone())).await.unwrap();
    let echo = tokio::time::timeout(WAIT, ws.next()).await.unwrap().unwrap().unwrap();
    assert_eq!(echo.into_data().as_ref(), &big[..], "binary frames pass untouched");
    assert!(proxy.metrics.snapshot().http.in_flight == 1, "the WebSocket is a request in flight");
    // Idle past the tunnel's inactivity timeout: closed.
    let idle_from = Instant::now();
    let end = tokio::time::timeout(WAIT, ws.next()).await.unwrap();
    assert!(matches!(end, None | Some(Err(_))), "the tunnel should close without a frame: {end:?}");
    let idle = idle_from.elapsed();
    assert!(idle >= Duration::from_millis(1300) && idle < Duration::from_secs(5), "{idle:?}");
    eventually("the upgraded request to be finished", || {
        let s = proxy.metrics.snapshot();
        s.http.in_flight == 0
            && s.routes[0].http.requests.iter().any(|r| r.code_class == "1xx" && r.count == 1)
    })
    .await;
    assert_eq!(b.accepted(), 1);
}

/// RFC 8441: an HTTP/2 client opens a WebSocket with extended CONNECT; the target gets an
/// HTTP/1.1 Upgrade.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_over_h2_extended_connect() {
    let b = Backend::h1("ws").await;
    let bp = b.port();
    let proxy = Proxy::start(|p| route(p, bp, ""), short_timers()).await;
    let mut tx = h2_client(proxy.addr).await;
    // A first request: by then the proxy's SETTINGS (ENABLE_CONNECT_PROTOCOL) are in.
    let ping = tx.send_request(http::Request::get(proxy.url("/x")).body(empty()).unwrap());
    let _ = text(ping.await.unwrap()).await;
    let mut req = http::Request::builder()
        .method(http::Method::CONNECT)
        .uri(proxy.url("/ws"))
        .header("sec-websocket-version", "13")
        .body(empty())
        .unwrap();
    req.extensions_mut().insert(hyper::ext::Protocol::from_static("websocket"));
    let mut resp = tx.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().get("sec-websocket-accept").is_none());
    let up = hyper::upgrade::on(&mut resp).await.unwrap();
    let mut ws =
        tokio_tungstenite::WebSocketStream::from_raw_socket(TokioIo::new(up), Role::Client, None)
            .await;
    for i in 0..5 {
        ws.send(Message::text(format!("h2 {i}"))).await.unwrap();
        let echo = tokio::time::timeout(WAIT, ws.next()).await.unwrap().unwrap().unwrap();
        assert_eq!(echo, Message::text(format!("h2 {i}")));
        // Past the keep-alive timeout between frames.
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    ws.close(None).await.unwrap();
}

/// With `websocket = false` the Upgrade header is removed like any hop-by-hop header.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_off_strips_upgrade() {
    let b = Backend::h1("ws").await;
    let bp = b.port();
    let proxy = Proxy::start(|p| route(p, bp, "websocket = false"), Opts::default()).await;
    let out = curl(&[
        "-H",
        "Connection: Upgrade",
        "-H",
        "Upgrade: websocket",
        "-H",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        "-H",
        "Sec-WebSocket-Version: 13",
        &proxy.url("/plain"),
    ])
    .await;
    let doc = &json_docs(&stdout(&out))[0];
    assert!(doc["headers"].get("upgrade").is_none(), "{doc}");
    assert!(doc["headers"].get("connection").is_none(), "{doc}");
}

/// A half-close passes through a WebSocket tunnel: the target sends its last bytes and shuts
/// its side down; the client reads them and the end of the stream while its own side stays
/// open, and what it sends afterwards still reaches the target.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_tunnel_passes_half_close_on() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    async fn head(s: &mut TcpStream) -> String {
        let mut buf = Vec::new();
        let mut b = [0u8; 1];
        while !buf.ends_with(b"\r\n\r\n") {
            assert_eq!(s.read(&mut b).await.unwrap(), 1, "closed inside a head: {buf:?}");
            buf.push(b[0]);
        }
        String::from_utf8_lossy(&buf).into_owned()
    }
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let bp = l.local_addr().unwrap().port();
    let (got_tx, got_rx) = tokio::sync::oneshot::channel::<Vec<u8>>();
    tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        let req = head(&mut s).await;
        assert!(req.to_ascii_lowercase().contains("upgrade: websocket"), "{req}");
        s.write_all(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
              Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\nbye",
        )
        .await
        .unwrap();
        s.shutdown().await.unwrap();
        let mut rest = Vec::new();
        s.read_to_end(&mut rest).await.unwrap();
        let _ = got_tx.send(rest);
    });
    let proxy = Proxy::start(|p| route(p, bp, ""), Opts::default()).await;
    let mut c = TcpStream::connect(proxy.addr).await.unwrap();
    c.write_all(
        b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .await
    .unwrap();
    let resp = head(&mut c).await;
    assert!(resp.starts_with("HTTP/1.1 101"), "{resp}");
    let mut rest = Vec::new();
    tokio::time::timeout(WAIT, c.read_to_end(&mut rest))
        .await
        .expect("the target's FIN did not reach the client")
        .unwrap();
    assert_eq!(rest, b"bye");
    c.write_all(b"still here").await.unwrap();
    c.shutdown().await.unwrap();
    let got = tokio::time::timeout(WAIT, got_rx).await.unwrap().unwrap();
    assert_eq!(got, b"still here");
}
