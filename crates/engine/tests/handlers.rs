//! Built-in socket handlers: static, echo, block, redirect.

mod common;

use common::*;
use tokio::io::AsyncWriteExt;

async fn request(port: u16, req: &[u8]) -> String {
    let mut c = connect(port).await;
    c.write_all(req).await.unwrap();
    String::from_utf8_lossy(&read_all(&mut c, 5).await).into_owned()
}

fn handler_route(port: u16, action: &str) -> String {
    format!(
        "[[routes]]\nmatch = {{ ports = [{port}] }}\naction = {{ type = \"socket-handler\", {action} }}\n"
    )
}

#[tokio::test]
async fn static_response() {
    let (engine, [port]) = engine_on(|[port]| handler_route(
        port,
        "handler = \"static\", status = 201, body = \"hello\", headers = { \"X-Test\" = \"yes\", \"Content-Type\" = \"text/html\" }",
    )).await;
    let resp = request(port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(resp.starts_with("HTTP/1.1 201 Created\r\n"), "{resp}");
    assert!(resp.contains("\r\nX-Test: yes\r\n"), "{resp}");
    assert!(resp.contains("\r\nContent-Type: text/html\r\n"), "{resp}");
    assert!(resp.contains("\r\nContent-Length: 5\r\n"), "{resp}");
    assert!(resp.contains("\r\nConnection: close\r\n"), "{resp}");
    assert!(resp.ends_with("\r\n\r\nhello"), "{resp}");
    // Not HTTP: 400.
    let resp = request(port, b"\x01\x02\x03\r\n\r\n").await;
    assert!(resp.starts_with("HTTP/1.1 400 "), "{resp}");
    settle(&engine).await;
    assert!(engine.stats().bytes_out > 0);
}

#[tokio::test]
async fn echo() {
    let (engine, [port]) = engine_on(|[port]| handler_route(port, "handler = \"echo\"")).await;
    let mut c = connect(port).await;
    let data = pattern(200_000, 3);
    let got = write_then_read_to_end(&mut c, &data).await;
    assert!(got == data);
    drop(c);
    settle(&engine).await;
    assert_eq!(engine.stats().bytes_in, 200_000);
    assert_eq!(engine.stats().bytes_out, 200_000);
}

#[tokio::test]
async fn block_with_and_without_status() {
    let (engine, [port]) = engine_on(|[port]| handler_route(port, "handler = \"block\"")).await;
    let mut c = connect(port).await;
    c.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    expect_closed_without_data(&mut c).await;
    let (engine2, [port2]) = engine_on(|[port2]| {
        handler_route(port2, "handler = \"block\", status = 403, body = \"go away\"")
    })
    .await;
    let resp = request(port2, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(resp.starts_with("HTTP/1.1 403 Forbidden\r\n"), "{resp}");
    assert!(resp.ends_with("go away"), "{resp}");
    settle(&engine).await;
    settle(&engine2).await;
}

#[tokio::test]
async fn redirect_fills_the_template() {
    let (engine, [port]) = engine_on(|[port]| {
        handler_route(
            port,
            "handler = \"redirect\", location = \"https://{domain}:8443{path}?q={query}&p={port}\"",
        )
    })
    .await;
    let resp = request(port, b"GET /a/b?x=1 HTTP/1.1\r\nHost: Example.com:8000\r\n\r\n").await;
    assert!(resp.starts_with("HTTP/1.1 301 Moved Permanently\r\n"), "{resp}");
    let want = format!("\r\nLocation: https://example.com:8443/a/b?q=x=1&p={port}\r\n");
    assert!(resp.contains(&want), "{resp}");
    let (engine2, [port2]) = engine_on(|[port2]| {
        handler_route(
            port2,
            "handler = \"redirect\", location = \"https://{domain}{path}\", status = 308",
        )
    })
    .await;
    let resp = request(port2, b"GET /x HTTP/1.1\r\nHost: h.test\r\n\r\n").await;
    assert!(resp.starts_with("HTTP/1.1 308 Permanent Redirect\r\n"), "{resp}");
    assert!(resp.contains("\r\nLocation: https://h.test/x\r\n"), "{resp}");
    settle(&engine).await;
    settle(&engine2).await;
}

/// `{uri}` is the path plus `?query` when there is one: a redirect keeps the query, and adds
/// no stray `?` without one.
#[tokio::test]
async fn redirect_with_uri_keeps_the_query_and_only_it() {
    let (engine, [port]) = engine_on(|[port]| {
        handler_route(port, "handler = \"redirect\", location = \"https://{domain}:8444{uri}\"")
    })
    .await;
    let resp = request(port, b"GET /a/b?x=1&y=2 HTTP/1.1\r\nHost: h.test:8000\r\n\r\n").await;
    assert!(resp.contains("\r\nLocation: https://h.test:8444/a/b?x=1&y=2\r\n"), "{resp}");
    let resp = request(port, b"GET /a/b HTTP/1.1\r\nHost: h.test\r\n\r\n").await;
    assert!(resp.contains("\r\nLocation: https://h.test:8444/a/b\r\n"), "{resp}");
    settle(&engine).await;
}
