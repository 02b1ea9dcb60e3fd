//! Plain HTTP ports register a client socket with the reactor only when a read or write on it
//! has to wait (`src/lazy.rs`): a `Connection: close` request that is in the socket when it
//! is accepted is answered and closed without the two `epoll_ctl` calls. Counted with the
//! engine's registration counter, which is process-wide: this file holds one test, so that
//! no other test of the same process registers sockets meanwhile.

mod common;

use std::time::Duration;

use common::*;
use smartproxy_engine::bench_api::lazy_registrations;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn close_requests_answered_at_once_never_register_their_sockets() {
    let (target, _backend) = ok_http_backend().await;
    let (engine, port) = http_engine(target).await;
    // The first request also opens the pooled backend connection (not a client socket).
    const REQUESTS: u64 = 20;
    let before = lazy_registrations();
    for _ in 0..REQUESTS {
        close_request(port, b"").await;
    }
    let during = lazy_registrations() - before;
    // Every one of them would register if the sockets were not lazy; a request whose answer
    // took longer than the 50 ms close-watch delay (a loaded machine) may, rarely.
    assert!(
        during <= REQUESTS / 4,
        "{during} of {REQUESTS} answered close requests registered their client socket"
    );
    // A kept-alive connection waits for its next request: that wait registers it.
    let mut c = connect(port).await;
    c.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").await.unwrap();
    let mut answer = vec![0u8; 40];
    tokio::time::timeout(Duration::from_secs(10), c.read_exact(&mut answer))
        .await
        .expect("the kept-alive answer within 10 s")
        .unwrap();
    assert!(answer.starts_with(b"HTTP/1.1 200 OK\r\n"), "{}", String::from_utf8_lossy(&answer));
    wait_for(
        "the kept-alive connection's wait for its next request to register it",
        lazy_registrations,
        |&n| n > before + during,
    )
    .await;
    drop(c);
    settle(&engine).await;
}
