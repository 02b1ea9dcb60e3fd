//! Initial-data, inactivity and lifetime timeouts, and graceful shutdown.
//!
//! A timeout closes the connection no earlier than configured and no later than the
//! configured time plus a stated margin, measured with `Instant` from the moment the timer
//! can start at the earliest (before `connect`, or the last byte seen).

mod common;

use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

/// Tolerance below a timeout: timers never fire early, but the client's clock starts a
/// little apart from the engine's (the accept, the last byte counted).
const EARLY: Duration = Duration::from_millis(20);

/// Scheduling margin above a timeout on a loaded two-core CI machine (several builders share
/// it).
const LATE: Duration = Duration::from_millis(700);

#[tokio::test]
async fn initial_data_timeout_closes_a_silent_client_on_a_peeking_port() {
    let (baddr, _b) = echo_backend().await;
    // `defer_accept = false`: the timer starts at the accept, and this test measures it from
    // the connect (with the option, the kernel hands a silent client over after about a
    // second; tests/tests/defer_accept.rs).
    let (engine, [port]) = engine_on(|[port]| format!(
        "defer_accept = false\n[defaults]\ninitial_data_timeout = \"300ms\"\n[[routes]]\nmatch = {{ ports = [{port}], path = \"/api/*\" }}\naction = {{ type = \"forward\", targets = [{{ host = \"127.0.0.1\", port = {} }}] }}\n",
        baddr.port()
    ))
    .await;
    // The deadline counts from the accept, which comes after this instant.
    let started = Instant::now();
    let mut c = connect(port).await;
    let closed = expect_closed_without_data(&mut c).await;
    let t = Duration::from_millis(300);
    assert_within("the silent client was closed", closed - started, t - EARLY, t + LATE);
    assert_eq!(engine.stats().refused_connections, 1, "counted as refused (initial data)");
    // A request that matches is forwarded.
    let mut c = connect(port).await;
    c.write_all(b"GET /api/x HTTP/1.1\r\nHost: a\r\n\r\n").await.unwrap();
    let mut buf = vec![0u8; 32];
    tokio::time::timeout(WAIT, c.read_exact(&mut buf)).await.unwrap().unwrap();
    assert_eq!(&buf, b"GET /api/x HTTP/1.1\r\nHost: a\r\n\r\n");
    drop(c);
    settle(&engine).await;
}

#[tokio::test]
async fn inactivity_timeout_closes_both_sides() {
    // The backend reports when the engine closed its side.
    let (tx, mut backend_closed) = tokio::sync::mpsc::unbounded_channel();
    let (baddr, _b) = backend(move |mut s| {
        let tx = tx.clone();
        async move {
            let mut buf = [0u8; 64];
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if s.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                }
            }
            let _ = tx.send(Instant::now());
        }
    })
    .await;
    let (engine, [port]) = engine_on(|[port]| format!(
        "[defaults]\ninactivity_timeout = \"300ms\"\n[[routes]]\nmatch = {{ ports = [{port}] }}\naction = {{ type = \"forward\", targets = [{{ host = \"127.0.0.1\", port = {} }}] }}\n",
        baddr.port()
    ))
    .await;
    let mut c = connect(port).await;
    c.write_all(b"ping").await.unwrap();
    let mut b = [0u8; 4];
    tokio::time::timeout(WAIT, c.read_exact(&mut b)).await.unwrap().unwrap();
    // The last byte moved just before this instant.
    let last_activity = Instant::now();
    let closed = expect_closed_without_data(&mut c).await;
    let backend_side = tokio::time::timeout(WAIT, backend_closed.recv())
        .await
        .expect("the backend's side was not closed")
        .unwrap();
    // Idleness is checked every quarter of the timeout and counted from the check that last
    // saw bytes move: the close comes between 1 and 1.5 timeouts after the last byte.
    let t = Duration::from_millis(300);
    let max = t + t / 2 + LATE;
    assert_within("the client's side was closed", closed - last_activity, t - EARLY, max);
    assert_within("the backend's side was closed", backend_side - last_activity, t - EARLY, max);
    settle(&engine).await;
}

#[tokio::test]
async fn max_lifetime_closes_a_busy_connection() {
    let (engine, [port]) = engine_on(|[port]| format!(
        "[defaults]\nmax_connection_lifetime = \"400ms\"\n[[routes]]\nmatch = {{ ports = [{port}] }}\naction = {{ type = \"socket-handler\", handler = \"echo\" }}\n"
    ))
    .await;
    let started = Instant::now();
    let mut c = connect(port).await;
    // Busy: a round trip every 50 ms (pacing on purpose, so that the connection is never idle)
    // until the engine closes it.
    let mut round_trips = 0;
    let closed = loop {
        assert!(started.elapsed() < WAIT, "still open after {WAIT:?} ({round_trips} round trips)");
        if c.write_all(b"x").await.is_err() {
            break Instant::now();
        }
        let mut b = [0u8; 1];
        match tokio::time::timeout(WAIT, c.read(&mut b)).await {
            Ok(Ok(1)) => round_trips += 1,
            Ok(Ok(_)) | Ok(Err(_)) => break Instant::now(),
            Err(_) => panic!("no echo and no close within {WAIT:?}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let t = Duration::from_millis(400);
    // The close is seen at the next round trip at the latest: 50 ms after it happened.
    let max = t + Duration::from_millis(50) + LATE;
    assert_within("the busy connection was closed", closed - started, t - EARLY, max);
    assert!(round_trips >= 4, "the connection was busy until its end: {round_trips} round trips");
    settle(&engine).await;
}

#[tokio::test]
async fn shutdown_drains_then_forces() {
    let (engine, [port]) = engine_on(|[port]| format!(
        "[[routes]]\nmatch = {{ ports = [{port}] }}\naction = {{ type = \"socket-handler\", handler = \"echo\" }}\n"
    ))
    .await;
    let mut c = connect(port).await;
    c.write_all(b"x").await.unwrap();
    let mut b = [0u8; 1];
    c.read_exact(&mut b).await.unwrap();
    let started = Instant::now();
    let summary = engine.shutdown(Duration::from_millis(300)).await;
    let returned = Instant::now();
    assert_eq!(summary.forced, 1);
    // It waited for the whole grace period, then forced the connection closed (and waits at
    // most a second for that).
    let grace = Duration::from_millis(300);
    assert_within(
        "shutdown returned",
        returned - started,
        grace - EARLY,
        grace + Duration::from_secs(1) + LATE,
    );
    let closed = expect_closed_without_data(&mut c).await;
    assert_within("the client was closed", closed - started, grace - EARLY, grace + LATE);
    assert_eq!(engine.stats().active_connections, 0);
    assert_eq!(engine.stats().listeners, 0);
    assert!(tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err());
}

/// The plain forwarding copy ends on forced shutdown too, also after many wake-ups in which
/// its shutdown waiter was skipped (it is polled again only when the channel changed).
#[tokio::test]
async fn shutdown_forces_an_established_forwarded_connection() {
    let (echo, _e) = echo_backend().await;
    let (engine, [port]) = engine_on(|[port]| format!(
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
    let started = Instant::now();
    let summary = engine.shutdown(Duration::from_millis(300)).await;
    assert_eq!(summary.forced, 1);
    let closed = expect_closed_without_data(&mut c).await;
    let grace = Duration::from_millis(300);
    assert_within(
        "the forwarded connection was closed",
        closed - started,
        grace - EARLY,
        grace + LATE,
    );
    assert_eq!(engine.stats().active_connections, 0);
}

#[tokio::test]
async fn dropping_the_engine_stops_listening() {
    let (engine, [port]) = engine_on(|[port]| format!(
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
    wait_refused(port).await;
    // The open connection still works.
    c.write_all(b"z").await.unwrap();
    c.read_exact(&mut b).await.unwrap();
    assert_eq!(&b, b"z");
}
