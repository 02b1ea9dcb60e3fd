//! PROXY headers from trusted and untrusted peers.

mod common;

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use common::*;
use smartproxy_engine::{
    ClientStream, Engine, Format, HandlerContext, HandlerFuture, SocketHandler,
};
use smartproxy_proxy_protocol::Header;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Answers with the client address the engine saw, then closes.
struct WhoAmI;

impl SocketHandler for WhoAmI {
    fn handle<'a>(&'a self, mut s: ClientStream, ctx: HandlerContext) -> HandlerFuture<'a> {
        Box::pin(async move {
            let line =
                format!("{} {} {}\n", ctx.client_addr, s.peer_addr(), s.is_from_trusted_proxy());
            s.write_all(line.as_bytes()).await?;
            s.shutdown().await
        })
    }
}

/// An engine on a reserved port whose route answers with the client address it saw.
async fn whoami_engine(extra: &str) -> (Engine, u16) {
    let (engine, [port]) = start_on(|[port]| {
        let text = format!(
            "bind = [\"127.0.0.1\"]\n{extra}\n[[routes]]\nmatch = {{ ports = [{port}] }}\naction = {{ type = \"socket-handler\", handler = \"whoami\" }}\n"
        );
        // The handler is registered once, by name; the builder parses the text knowing it.
        Engine::builder()
            .handler("whoami", Arc::new(WhoAmI))
            .config_str(&text, Format::Toml)
            .unwrap_or_else(|e| panic!("{e}"))
            .start()
    })
    .await;
    (engine, port)
}

fn encode(h: Header) -> Vec<u8> {
    let mut out = Vec::new();
    h.encode(&mut out).unwrap();
    out
}

#[tokio::test]
async fn trusted_v1_and_v2_set_the_client_address() {
    let (engine, port) = whoami_engine("proxy_ips = [\"127.0.0.1/32\"]").await;
    for (h, want) in [
        (
            Header::v1("192.0.2.10:5555".parse().unwrap(), "198.51.100.1:443".parse().unwrap())
                .unwrap(),
            "192.0.2.10:5555",
        ),
        (
            Header::v2("[2001:db8::7]:6666".parse().unwrap(), "[2001:db8::1]:443".parse().unwrap())
                .unwrap(),
            "[2001:db8::7]:6666",
        ),
    ] {
        let mut c = connect(port).await;
        c.write_all(&encode(h)).await.unwrap();
        let got = String::from_utf8(read_all(&mut c, 5).await).unwrap();
        let parts: Vec<&str> = got.split_whitespace().collect();
        assert_eq!(parts.first().copied(), Some(want), "{got}");
        assert!(parts[1].starts_with("127.0.0.1:"), "{got}");
        assert_eq!(parts[2], "true");
    }
    assert_eq!(engine.stats().proxy_headers_accepted, 2);
    settle(&engine).await;
}

#[tokio::test]
async fn trusted_peer_without_header_is_refused_unless_optional() {
    let (engine, port) =
        whoami_engine("proxy_ips = [\"127.0.0.1\"]\nproxy_protocol_timeout = \"300ms\"").await;
    // Other bytes: refused at once (well before the deadline).
    let started = Instant::now();
    let mut c = connect(port).await;
    c.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    let closed = expect_closed_without_data(&mut c).await;
    assert!(
        closed - started < Duration::from_millis(300),
        "refused at once: {:?}",
        closed - started
    );
    // Silence: refused at the deadline, 300 ms after the accept (a scheduling margin above).
    let started = Instant::now();
    let mut c = connect(port).await;
    let closed = expect_closed_without_data(&mut c).await;
    let t = Duration::from_millis(300);
    assert_within(
        "the silent peer was refused",
        closed - started,
        t - Duration::from_millis(20),
        t + Duration::from_millis(700),
    );
    assert_eq!(engine.stats().proxy_headers_rejected, 2);
    drop(engine);

    let (engine, port) = whoami_engine(
        "proxy_ips = [\"127.0.0.1\"]\nproxy_protocol_optional = true\nproxy_protocol_timeout = \"300ms\"",
    )
    .await;
    let mut c = connect(port).await;
    c.write_all(b"hi").await.unwrap();
    let got = String::from_utf8(read_all(&mut c, 5).await).unwrap();
    assert!(got.starts_with("127.0.0.1:"), "{got}");
    assert!(got.trim_end().ends_with("false"), "{got}");
    settle(&engine).await;
}

#[tokio::test]
async fn untrusted_header_is_refused_and_nothing_reaches_the_backend() {
    let reached = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let r2 = Arc::clone(&reached);
    let (baddr, _b) = backend(move |_s| {
        r2.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        async {}
    })
    .await;
    // 127.0.0.1 is trusted; clients from 127.0.0.9 are not.
    let (engine, [port]) = engine_on(|[port]| format!(
        "proxy_ips = [\"127.0.0.1\"]\n[[routes]]\nmatch = {{ ports = [{port}] }}\naction = {{ type = \"forward\", targets = [{{ host = \"127.0.0.1\", port = {} }}] }}\n",
        baddr.port()
    ))
    .await;
    let header =
        encode(Header::v1("192.0.2.1:1".parse().unwrap(), "192.0.2.2:2".parse().unwrap()).unwrap());
    let mut c = connect_from("127.0.0.9", port).await.unwrap();
    c.write_all(&header).await.unwrap();
    c.write_all(b"data").await.unwrap();
    expect_closed_without_data(&mut c).await;
    // No proxy_ips at all: a header is still refused.
    let (engine2, port2) = engine_plain_forward(baddr.port()).await;
    let mut c = connect(port2).await;
    c.write_all(&header).await.unwrap();
    expect_closed_without_data(&mut c).await;
    assert_eq!(engine.stats().refused_connections, 1);
    assert_eq!(engine2.stats().refused_connections, 1);
    assert_eq!(reached.load(std::sync::atomic::Ordering::SeqCst), 0);
}

async fn engine_plain_forward(backend: u16) -> (Engine, u16) {
    let (engine, [port]) = engine_on(|[port]| format!(
        "[[routes]]\nmatch = {{ ports = [{port}] }}\naction = {{ type = \"forward\", targets = [{{ host = \"127.0.0.1\", port = {backend} }}] }}\n"
    ))
    .await;
    (engine, port)
}

#[tokio::test]
async fn untrusted_plain_and_silent_clients_are_forwarded() {
    // A server-speaks-first backend: it greets before the client says anything.
    let (baddr, _b) = backend(|mut s| async move {
        s.write_all(b"220 hello\r\n").await.unwrap();
        let mut buf = [0u8; 64];
        let n = s.read(&mut buf).await.unwrap_or(0);
        let _ = s.write_all(&buf[..n]).await;
    })
    .await;
    let (engine, port) = engine_plain_forward(baddr.port()).await;
    let mut c = connect(port).await;
    let mut greet = [0u8; 11];
    tokio::time::timeout(WAIT, c.read_exact(&mut greet)).await.unwrap().unwrap();
    assert_eq!(&greet, b"220 hello\r\n");
    c.write_all(b"QUIT").await.unwrap();
    let rest = read_all(&mut c, 5).await;
    assert_eq!(rest, b"QUIT");
    drop(c);
    settle(&engine).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_malformed_headers_leave_the_engine_serving() {
    let (engine, port) = whoami_engine("proxy_ips = [\"127.0.0.1\"]\nproxy_protocol_timeout = \"300ms\"\n[defaults]\nmax_connections_per_ip = 0\nconnection_rate_limit_per_minute = 0").await;
    let bad: [&[u8]; 5] = [
        b"PROXY TCP4 1.2.3.4 5.6.7.8 99999 80\r\n",
        b"PROXY TCP9 a b c d\r\n",
        b"\r\n\r\n\0\r\nQUIT\n\x21\x11\xff\xff",
        b"PROXY TCP4 1.2.3.4",
        b"PROXYjunk\r\n",
    ];
    let mut tasks = Vec::new();
    for i in 0..1000usize {
        let bytes = bad[i % bad.len()].to_vec();
        tasks.push(tokio::spawn(async move {
            let mut c = tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .unwrap_or_else(|e| panic!("connection {i} not accepted: {e}"));
            // The engine may close before it has read everything: a failed write is fine.
            let _ = c.write_all(&bytes).await;
            if i % 2 == 0 {
                let _ = c.shutdown().await;
            }
            // Every one is closed without a byte (at the 300 ms header deadline at the latest).
            let mut b = [0u8; 16];
            match tokio::time::timeout(WAIT, c.read(&mut b)).await {
                Ok(Ok(0)) | Ok(Err(_)) => {}
                Ok(Ok(n)) => panic!("connection {i} got an answer: {:?}", &b[..n]),
                Err(_) => panic!("connection {i} still open after {WAIT:?}"),
            }
        }));
        if tasks.len() >= 100 {
            for t in tasks.drain(..) {
                t.await.unwrap();
            }
        }
    }
    for t in tasks {
        t.await.unwrap();
    }
    settle(&engine).await;
    // Still serving.
    let mut c = connect(port).await;
    c.write_all(&encode(
        Header::v1("192.0.2.3:3".parse().unwrap(), "192.0.2.4:4".parse().unwrap()).unwrap(),
    ))
    .await
    .unwrap();
    let got = String::from_utf8(read_all(&mut c, 5).await).unwrap();
    assert!(got.starts_with("192.0.2.3:3"), "{got}");
    assert_eq!(engine.stats().proxy_headers_rejected, 1000);
    settle(&engine).await;
}
