//! Plain forwarding, PROXY protocol in and out, backends refusing.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use parking_lot::Mutex;
use smartproxy_proxy_protocol::{Parsed, parse};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwards_one_mib_each_way_with_half_close() {
    let upload = pattern(1 << 20, 1);
    let download = pattern(1 << 20, 7);
    let got_up = Arc::new(Mutex::new(Vec::new()));
    let (baddr, _b) = {
        let got_up = Arc::clone(&got_up);
        let download = download.clone();
        backend(move |mut s| {
            let got_up = Arc::clone(&got_up);
            let download = download.clone();
            async move {
                let mut buf = Vec::new();
                s.read_to_end(&mut buf).await.unwrap();
                *got_up.lock() = buf;
                // Client half-closed; the other direction still works.
                s.write_all(&download).await.unwrap();
                s.shutdown().await.unwrap();
            }
        })
        .await
    };
    let (engine, [port]) = engine_on(|[port]| format!(
        "[[routes]]\nmatch = {{ ports = [{port}] }}\naction = {{ type = \"forward\", targets = [{{ host = \"127.0.0.1\", port = {} }}] }}\n",
        baddr.port()
    ))
    .await;
    let mut c = connect(port).await;
    let down = write_then_read_to_end(&mut c, &upload).await;
    assert_eq!(down.len(), download.len());
    assert!(down == download, "download differs");
    assert!(*got_up.lock() == upload, "upload differs");
    drop(c);
    settle(&engine).await;
    let st = engine.stats();
    assert_eq!(st.bytes_in, 1 << 20);
    assert_eq!(st.bytes_out, 1 << 20);
    engine.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn backend_refusing_closes_client_cleanly() {
    // Bound, not listening: connections to it are refused, and nobody else can take it.
    let dead = DeadPort::new();
    let (engine, [port]) = engine_on(|[port]| format!(
        "[defaults]\nconnect_timeout = \"2s\"\n[[routes]]\nmatch = {{ ports = [{port}] }}\naction = {{ type = \"forward\", targets = [{{ host = \"127.0.0.1\", port = {} }}] }}\n",
        dead.port()
    ))
    .await;
    for _ in 0..3 {
        let mut c = connect(port).await;
        c.write_all(b"hello").await.unwrap();
        let started = Instant::now();
        let closed = expect_closed_without_data(&mut c).await;
        // Refused by the backend at once: not closed by the 2 s connect timeout.
        assert!(closed - started < Duration::from_secs(2), "closed after {:?}", closed - started);
    }
    settle(&engine).await;
    assert_eq!(engine.stats().backend_connect_failures, 3);
}

/// A backend that parses the PROXY header it receives and reports the source address and the
/// bytes after the header.
async fn pp_backend() -> (SocketAddr, Arc<Mutex<Vec<(SocketAddr, Vec<u8>)>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s2 = Arc::clone(&seen);
    let (addr, _t) = backend(move |mut s| {
        let seen = Arc::clone(&s2);
        async move {
            let mut buf = Vec::new();
            tokio::time::timeout(WAIT, s.read_to_end(&mut buf))
                .await
                .expect("the engine half-closed after the client's shutdown")
                .expect("read");
            if let Ok(Parsed::Complete { header, consumed }) = parse(&buf) {
                let src = header.source().unwrap();
                seen.lock().push((src, buf[consumed..].to_vec()));
            } else {
                seen.lock().push(("0.0.0.0:0".parse().unwrap(), buf));
            }
        }
    })
    .await;
    (addr, seen)
}

#[tokio::test]
async fn sends_proxy_v1_and_v2() {
    for v in ["v1", "v2", "true"] {
        let (baddr, seen) = pp_backend().await;
        let pp = if v == "true" { "true".to_owned() } else { format!("\"{v}\"") };
        let (engine, [port]) = engine_on(|[port]| format!(
            "[[routes]]\nmatch = {{ ports = [{port}] }}\naction = {{ type = \"forward\", targets = [{{ host = \"127.0.0.1\", port = {} }}], send_proxy_protocol = {pp} }}\n",
            baddr.port()
        ))
        .await;
        let mut c = connect_from("127.0.0.5", port).await.unwrap();
        let me = c.local_addr().unwrap();
        c.write_all(b"payload after header").await.unwrap();
        c.shutdown().await.unwrap();
        assert_eq!(read_all(&mut c, 5).await, b"", "{v}: nothing comes back");
        let got = wait_for("the backend's report", || seen.lock().clone(), |s| !s.is_empty()).await;
        assert_eq!(got.len(), 1, "{v}");
        assert_eq!(got[0].0, me, "{v}");
        assert_eq!(got[0].1, b"payload after header", "{v}");
        engine.shutdown(Duration::from_secs(1)).await;
    }
}

#[tokio::test]
async fn listens_on_ipv6_too_and_sends_v6_proxy_headers() {
    // Not skipped without IPv6: the test says what is missing.
    if let Err(e) = std::net::TcpListener::bind("[::1]:0") {
        panic!("this test needs IPv6 on loopback (::1), which this host refuses: {e}");
    }
    let (baddr, seen) = pp_backend().await;
    let (engine, [port]) = start_on(|[port]| {
        let text = format!(
            "bind = [\"127.0.0.1\", \"::1\"]\n[[routes]]\nmatch = {{ ports = [{port}] }}\naction = {{ type = \"forward\", targets = [{{ host = \"127.0.0.1\", port = {} }}], send_proxy_protocol = \"v2\" }}\n",
            baddr.port()
        );
        let config =
            smartproxy_engine::Config::from_str(&text, smartproxy_engine::Format::Toml).unwrap();
        smartproxy_engine::Engine::start(config)
    })
    .await;
    assert_eq!(engine.local_addrs().len(), 2);
    let mut c = tokio::net::TcpStream::connect(("::1", port)).await.unwrap();
    let me = c.local_addr().unwrap();
    c.write_all(b"six").await.unwrap();
    c.shutdown().await.unwrap();
    assert_eq!(read_all(&mut c, 5).await, b"", "nothing comes back");
    let got = wait_for("the backend's report", || seen.lock().clone(), |s| !s.is_empty()).await;
    assert_eq!(got, vec![(me, b"six".to_vec())]);
    engine.shutdown(Duration::from_secs(1)).await;
}
