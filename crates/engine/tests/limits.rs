//! Global, per-IP and per-route limits, on the peer and on the real client behind a proxy.

mod common;

use std::net::IpAddr;

use common::*;
use smartproxy_proxy_protocol::Header;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn echo_route(port: u16, security: &str) -> String {
    format!(
        "[[routes]]\nmatch = {{ ports = [{port}] }}\naction = {{ type = \"socket-handler\", handler = \"echo\" }}\n{security}\n"
    )
}

/// Whether the engine serves this connection: an echo round trip works (true), or the
/// engine closes it without a byte (false). Anything else (no answer and no close within
/// [`WAIT`], other bytes) fails the test.
async fn served(c: &mut TcpStream) -> bool {
    if c.write_all(b"x").await.is_err() {
        return false;
    }
    let mut b = [0u8; 1];
    match tokio::time::timeout(WAIT, c.read(&mut b)).await {
        Ok(Ok(1)) => {
            assert_eq!(&b, b"x", "the echo");
            true
        }
        Ok(Ok(_)) | Ok(Err(_)) => false,
        Err(_) => panic!("neither served nor closed within {WAIT:?}"),
    }
}

#[tokio::test]
async fn per_ip_limit_counts_each_source_address() {
    let (engine, [port]) = engine_on(|[port]| {
        format!("[defaults]\nmax_connections_per_ip = 2\n{}", echo_route(port, ""))
    })
    .await;
    let mut a1 = connect_from("127.0.0.2", port).await.unwrap();
    let mut a2 = connect_from("127.0.0.2", port).await.unwrap();
    assert!(served(&mut a1).await && served(&mut a2).await);
    let mut a3 = connect_from("127.0.0.2", port).await.unwrap();
    assert!(!served(&mut a3).await, "third connection from 127.0.0.2 must be refused");
    let mut b1 = connect_from("127.0.0.3", port).await.unwrap();
    assert!(served(&mut b1).await, "another address has its own count");
    let ip: IpAddr = "127.0.0.2".parse().unwrap();
    assert_eq!(engine.connections_from(ip), 2);
    drop(a1);
    wait_eq("the per-IP count of 127.0.0.2 back to 1", || engine.connections_from(ip), 1).await;
    let mut a4 = connect_from("127.0.0.2", port).await.unwrap();
    assert!(served(&mut a4).await, "a slot was released");
    drop((a2, a3, a4, b1));
    settle(&engine).await;
    assert_eq!(engine.connections_from(ip), 0);
}

#[tokio::test]
async fn per_ip_limit_applies_to_the_real_client_behind_a_trusted_proxy() {
    let (engine, [port]) = engine_on(|[port]| {
        format!(
            "proxy_ips = [\"127.0.0.1\"]\n[defaults]\nmax_connections_per_ip = 1\n{}",
            echo_route(port, "")
        )
    })
    .await;
    let open = |src: &'static str| async move {
        let mut c = connect(port).await;
        let mut h = Vec::new();
        Header::v2(src.parse().unwrap(), "10.0.0.1:80".parse().unwrap())
            .unwrap()
            .encode(&mut h)
            .unwrap();
        c.write_all(&h).await.unwrap();
        c
    };
    let mut c1 = open("192.0.2.1:1000").await;
    assert!(served(&mut c1).await);
    let mut c2 = open("192.0.2.1:1001").await;
    assert!(!served(&mut c2).await, "same real client over the limit");
    let mut c3 = open("192.0.2.2:1000").await;
    assert!(served(&mut c3).await, "the proxy's own address is not what is limited");
    assert_eq!(engine.connections_from("192.0.2.1".parse().unwrap()), 1);
    assert_eq!(engine.connections_from("127.0.0.1".parse().unwrap()), 0);
    drop((c1, c2, c3));
    settle(&engine).await;
}

#[tokio::test]
async fn rate_limit_per_minute() {
    let (engine, [port]) = engine_on(|[port]| {
        format!("[defaults]\nconnection_rate_limit_per_minute = 3\n{}", echo_route(port, ""))
    })
    .await;
    for _ in 0..3 {
        let mut c = connect_from("127.0.0.4", port).await.unwrap();
        assert!(served(&mut c).await);
    }
    let mut c = connect_from("127.0.0.4", port).await.unwrap();
    assert!(!served(&mut c).await, "fourth connection in a minute");
    let mut other = connect_from("127.0.0.5", port).await.unwrap();
    assert!(served(&mut other).await);
    drop((c, other));
    settle(&engine).await;
}

#[tokio::test]
async fn global_and_route_limits() {
    let (engine, [port]) =
        engine_on(|[port]| format!("[defaults]\nmax_connections = 2\n{}", echo_route(port, "")))
            .await;
    let mut a = connect(port).await;
    let mut b = connect(port).await;
    assert!(served(&mut a).await && served(&mut b).await);
    let mut c = connect(port).await;
    assert!(!served(&mut c).await);
    drop((a, b, c));
    settle(&engine).await;
    let (engine2, [port]) =
        engine_on(|[port]| echo_route(port, "security = { max_connections = 1 }")).await;
    let mut a = connect(port).await;
    assert!(served(&mut a).await);
    let mut b = connect(port).await;
    assert!(!served(&mut b).await);
    drop((a, b));
    settle(&engine2).await;
}

#[tokio::test]
async fn route_allow_and_block_lists() {
    let (engine, [port]) = engine_on(|[port]| {
        echo_route(
            port,
            "security = { ip_allow_list = [\"127.0.0.0/8\"], ip_block_list = [\"127.0.0.6\"] }",
        )
    })
    .await;
    let mut ok = connect_from("127.0.0.7", port).await.unwrap();
    assert!(served(&mut ok).await);
    let mut blocked = connect_from("127.0.0.6", port).await.unwrap();
    assert!(!served(&mut blocked).await);
    drop((ok, blocked));
    settle(&engine).await;
    assert_eq!(engine.stats().refused_connections, 1);
}
