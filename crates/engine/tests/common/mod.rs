//! Helpers shared by the engine tests: free ports, an engine from TOML, test backends.
#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::time::Duration;

use smartproxy_engine::{Config, Engine, Format};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::task::JoinHandle;

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// Starts an engine from TOML (`bind = ["127.0.0.1"]` is added).
pub async fn engine(toml: &str) -> Engine {
    let text = format!("bind = [\"127.0.0.1\"]\n{toml}");
    let config = Config::from_str(&text, Format::Toml).unwrap_or_else(|e| panic!("{e}"));
    Engine::start(config).await.unwrap()
}

/// A backend that accepts connections and runs `f` on each.
pub async fn backend<F, Fut>(f: F) -> (SocketAddr, JoinHandle<()>)
where
    F: Fn(TcpStream) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let task = tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(f(s));
        }
    });
    (addr, task)
}

/// An echo backend.
pub async fn echo_backend() -> (SocketAddr, JoinHandle<()>) {
    backend(|mut s| async move {
        let (mut r, mut w) = s.split();
        let _ = tokio::io::copy(&mut r, &mut w).await;
        let _ = w.shutdown().await;
    })
    .await
}

/// Connects to 127.0.0.1:port from `src` (e.g. 127.0.0.2).
pub async fn connect_from(src: &str, port: u16) -> std::io::Result<TcpStream> {
    let s = TcpSocket::new_v4()?;
    s.bind(format!("{src}:0").parse().unwrap())?;
    s.connect(format!("127.0.0.1:{port}").parse().unwrap()).await
}

pub async fn connect(port: u16) -> TcpStream {
    TcpStream::connect(("127.0.0.1", port)).await.unwrap()
}

/// Reads until EOF or error, with a deadline; returns what arrived.
pub async fn read_all(s: &mut TcpStream, secs: u64) -> Vec<u8> {
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(secs), s.read_to_end(&mut out)).await;
    out
}

/// Whether the peer closed (EOF or reset) within `secs`, without sending anything.
pub async fn closed_without_data(s: &mut TcpStream, secs: u64) -> bool {
    let mut b = [0u8; 64];
    matches!(
        tokio::time::timeout(Duration::from_secs(secs), s.read(&mut b)).await,
        Ok(Ok(0)) | Ok(Err(_))
    )
}

/// Writes `data` and half-closes while reading until EOF, concurrently (a large `data` would
/// otherwise deadlock against a full receive buffer); returns what was read.
pub async fn write_then_read_to_end(c: &mut TcpStream, data: &[u8]) -> Vec<u8> {
    let (mut r, mut w) = c.split();
    let write = async {
        w.write_all(data).await.unwrap();
        w.shutdown().await.unwrap();
    };
    let read = async {
        let mut v = Vec::new();
        r.read_to_end(&mut v).await.unwrap();
        v
    };
    let ((), got) = tokio::join!(write, read);
    got
}

/// Polls `f` every 20 ms until it holds, for at most 2 s; returns whether it held.
pub async fn eventually(mut f: impl FnMut() -> bool) -> bool {
    for _ in 0..100 {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    f()
}

/// Waits until the engine has no active connection (bounded).
pub async fn settle(engine: &Engine) -> u64 {
    for _ in 0..200 {
        if engine.stats().active_connections == 0 {
            return 0;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    engine.stats().active_connections
}

/// A deterministic pattern of `n` bytes.
pub fn pattern(n: usize, seed: u8) -> Vec<u8> {
    (0..n).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
}
