//! Initial-data, inactivity and lifetime timeouts, and graceful shutdown.

mod common;

use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn initial_data_timeout_closes_a_silent_client_on_a_peeking_port() {
    let (baddr, _b) = echo_backend().await;
    let port = free_port();
    let engine = engine(&format!(
        "[defaults]\ninitial_data_timeout = \"300ms\"\n[[routes]]\nmatch = {{ ports = [{port}], path = \"/api/*\" }}\naction = {{ type = \"forward\", targets = [{{ host = \"127.0.0.1\", port = {} }}] }}\n",
        baddr.port()
    ))
    .await;
    let mut c = connect(port).await;
    assert!(closed_without_data(&mut c, 5).await);
    // A request that matches is forwarded.
    let mut c = connect(port).await;
    c.write_all(b"GET /api/x HTTP/1.1\r\nHost: a\r\n\r\n").await.unwrap();
    let mut buf = vec![0u8; 32];
    tokio::time::timeout(Duration::from_secs(5), c.read_exact(&mut buf)).await.unwrap().unwrap();
    assert_eq!(&buf, b"GET /api/x HTTP/1.1\r\nHost: a\r\n\r\n");
    drop(c);
    assert_eq!(settle(&engine).await, 0);
}

#[tokio::test]
async fn inactivity_timeout_closes_both_sides() {
    let (baddr, _b) = echo_backend().await;
    let port = free_port();
    let engine = engine(&format!(
        "[defaults]\ninactivity_timeout = \"300ms\"\n[[routes]]\nmatch = {{ ports = [{port}] }}\naction = {{ type = \"forward\", targets = [{{ host = \"127.0.0.1\", port = {} }}] }}\n",
        baddr.port()
    ))
    .await;
    let mut c = connect(port).await;
    c.write_all(b"ping").await.unwrap();
    let mut b = [0u8; 4];
    c.read_exact(&mut b).await.unwrap();
    assert!(closed_without_data(&mut c, 10).await);
    assert_eq!(settle(&engine).await, 0);
}

#[tokio::test]
async fn max_lifetime_closes_a_busy_connection() {
    let port = free_port();
    let engine = engine(&format!(
        "[defaults]\nmax_connection_lifetime = \"400ms\"\n[[routes]]\nmatch = {{ ports = [{port}] }}\naction = {{ type = \"socket-handler\", handler = \"echo\" }}\n"
    ))
    .await;
    let mut c = connect(port).await;
    let mut closed = false;
    for _ in 0..100 {
        if c.write_all(b"x").await.is_err() {
            closed = true;
            break;
        }
        let mut b = [0u8; 1];
        match tokio::time::timeout(Duration::from_secs(2), c.read(&mut b)).await {
            Ok(Ok(1)) => tokio::time::sleep(Duration::from_millis(50)).await,
            _ => {
                closed = true;
                break;
            }
        }
    }
    assert!(closed);
    assert_eq!(settle(&engine).await, 0);
}

#[tokio::test]
async fn shutdown_drains_then_forces() {
    let port = free_port();
    let engine = engine(&format!(
        "[[routes]]\nmatch = {{ ports = [{port}] }}\naction = {{ type = \"socket-handler\", handler = \"echo\" }}\n"
    ))
    .await;
    let mut c = connect(port).await;
    c.write_all(b"x").await.unwrap();
    let mut b = [0u8; 1];
    c.read_exact(&mut b).await.unwrap();
    let summary = engine.shutdown(Duration::from_millis(300)).await;
    assert_eq!(summary.forced, 1);
    assert!(closed_without_data(&mut c, 5).await);
    assert_eq!(engine.stats().active_connections, 0);
    assert_eq!(engine.stats().listeners, 0);
    assert!(tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err());
}

/// The plain forwarding copy ends on forced shutdown too, also after many wake-ups in which
/// its shutdown waiter was skipped (it is polled again only when the channel changed).
#[tokio::test]
async fn shutdown_forces_an_established_forwarded_connection() {
    let (echo, _e) = echo_backend().await;
    let port = free_port();
    let engine = engine(&format!(
        "[[routes]]\nmatch = {{ ports = [{port}] }}\naction = {{ type = \"forward\", targets = [{{ host = \"127.0.0.1\", port = {} }}] }}\n",
        echo.port()
    ))
    .await;
    let mut c = connect(port).await;
    for i in 0..50u8 {
        c.write_all(&[i]).await.unwrap();
        let mut b = [0u8; 1];
        c.read_exact(&mut b).await.unwrap();
        assert_eq!(b[0], i);
    }
    let summary = engine.shutdown(Duration::from_millis(300)).await;
    assert_eq!(summary.forced, 1);
    assert!(closed_without_data(&mut c, 5).await);
    assert_eq!(engine.stats().active_connections, 0);
}

#[tokio::test]
async fn dropping_the_engine_stops_listening() {
    let port = free_port();
    let engine = engine(&format!(
        "[[routes]]\nmatch = {{ ports = [{port}] }}\naction = {{ type = \"socket-handler\", handler = \"echo\" }}\n"
    ))
    .await;
    let clone = engine.clone();
    drop(engine);
    let mut c = connect(port).await;
    c.write_all(b"y").await.unwrap();
    let mut b = [0u8; 1];
    c.read_exact(&mut b).await.unwrap();
    drop(clone);
    let mut refused = false;
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(refused);
    // The open connection still works.
    c.write_all(b"z").await.unwrap();
    c.read_exact(&mut b).await.unwrap();
    assert_eq!(&b, b"z");
}
