//! Helpers shared by the engine tests: reserved ports and engines started on them, test
//! backends, and waits that are bounded and fail loudly with what they waited for and what
//! they saw.
#![allow(dead_code, unreachable_pub)]

mod ports;

use std::fmt::Debug;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

pub use ports::*;
use smartproxy_engine::{Config, Engine, Format, StartError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// How long any wait in these tests may take before it fails.
pub const WAIT: Duration = Duration::from_secs(10);

/// The interval of the bounded polls.
const POLL: Duration = Duration::from_millis(10);

/// How many sets of fresh ports [`start_on`] tries.
const ATTEMPTS: usize = 5;

/// Starts something that listens on `N` reserved ports (see `ports.rs`): `start` gets the
/// ports and builds and starts it. When a port cannot be bound (a program outside the tests
/// took it after it was reserved) it is called again with fresh ports; any other error fails
/// the test. Every port must then be listened on by this process alone.
pub async fn start_on<const N: usize, T, Fut>(
    mut start: impl FnMut([u16; N]) -> Fut,
) -> (T, [u16; N])
where
    Fut: Future<Output = Result<T, StartError>>,
{
    let mut last = String::new();
    for _ in 0..ATTEMPTS {
        let ports = reserve_ports::<N>();
        match start(ports).await {
            Ok(t) => {
                for port in ports {
                    assert!(
                        listened_by(std::process::id(), port),
                        "port {port} is not listened on by this test alone (another process \
                         shares it): {:?}",
                        listeners(port)
                    );
                }
                return (t, ports);
            }
            Err(e @ StartError::Bind { .. }) => {
                last = format!(
                    "{e}: {}",
                    std::error::Error::source(&e).map_or(String::new(), |s| s.to_string())
                );
                eprintln!("{last}; retrying with fresh ports");
            }
            Err(e) => panic!("the engine did not start: {e}"),
        }
    }
    panic!("no set of {N} fresh ports could be bound in {ATTEMPTS} attempts; last: {last}");
}

/// Starts an engine from TOML made for `N` reserved ports (`bind = ["127.0.0.1"]` is added),
/// retrying with fresh ports as [`start_on`] does; returns it and its ports.
pub async fn engine_on<const N: usize>(toml: impl Fn([u16; N]) -> String) -> (Engine, [u16; N]) {
    start_on(|ports| {
        let text = format!("bind = [\"127.0.0.1\"]\n{}", toml(ports));
        async move {
            let config = Config::from_str(&text, Format::Toml).unwrap_or_else(|e| panic!("{e}"));
            Engine::start(config).await
        }
    })
    .await
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

/// A keep-alive HTTP/1.1 backend answering every request head with `200 OK` and the body
/// `ok` (request bodies are not expected).
pub async fn ok_http_backend() -> (SocketAddr, JoinHandle<()>) {
    backend(|mut s| async move {
        let mut buf = Vec::new();
        let mut tmp = [0u8; 4096];
        loop {
            while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                buf.drain(..end + 4);
                let answer = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
                if s.write_all(answer).await.is_err() {
                    return;
                }
            }
            match s.read(&mut tmp).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&tmp[..n]),
            }
        }
    })
    .await
}

/// An engine with one plain HTTP route (`web`, `http = {}`) forwarding to `target`; its port.
pub async fn http_engine(target: SocketAddr) -> (Engine, u16) {
    let (engine, [port]) = engine_on(|[p]| {
        format!(
            r#"[[routes]]
name = "web"
match = {{ ports = [{p}] }}
action = {{ type = "forward", targets = [{{ host = "127.0.0.1", port = {} }}], http = {{}} }}
"#,
            target.port()
        )
    })
    .await;
    (engine, port)
}

/// Sends `GET /` with `Connection: close` to `port`, then `after` (when not empty), reads to
/// the close and checks that the answer is [`ok_http_backend`]'s `200 OK` with body `ok`;
/// returns the socket (closed by the peer).
pub async fn close_request(port: u16, after: &[u8]) -> TcpStream {
    let mut c = connect(port).await;
    c.write_all(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").await.unwrap();
    if !after.is_empty() {
        // The proxy may have answered and closed already.
        let _ = c.write_all(after).await;
    }
    let (answer, _) = read_until_closed(&mut c, Duration::from_secs(10)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n") && answer.ends_with("ok"), "{answer:?}");
    c
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
    TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap_or_else(|e| panic!("connect to 127.0.0.1:{port}: {e}"))
}

/// Reads until the peer closes (EOF, or a reset: both end the connection) and returns what
/// arrived and when the close was seen. Fails when the connection is still open after
/// `limit`.
pub async fn read_until_closed(s: &mut TcpStream, limit: Duration) -> (Vec<u8>, Instant) {
    let mut out = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    let deadline = Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (out, Instant::now()),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => panic!(
                "the connection is still open after {limit:?}; {} bytes came: {:?}",
                out.len(),
                String::from_utf8_lossy(&out[..out.len().min(200)])
            ),
        }
    }
}

/// Reads to the peer's close, bounded by `secs` (failing when the connection stays open);
/// returns what came.
pub async fn read_all(s: &mut TcpStream, secs: u64) -> Vec<u8> {
    read_until_closed(s, Duration::from_secs(secs)).await.0
}

/// The peer closes the connection (EOF or reset) without sending a byte, within [`WAIT`];
/// returns when the close was seen. Fails with what came otherwise.
pub async fn expect_closed_without_data(s: &mut TcpStream) -> Instant {
    let (got, at) = read_until_closed(s, WAIT).await;
    assert!(
        got.is_empty(),
        "closed, but {} bytes came first: {:?}",
        got.len(),
        String::from_utf8_lossy(&got[..got.len().min(200)])
    );
    at
}

/// Fails unless `elapsed` is within `[min, max]`; `what` says what was measured.
#[track_caller]
pub fn assert_within(what: &str, elapsed: Duration, min: Duration, max: Duration) {
    assert!(
        elapsed >= min && elapsed <= max,
        "{what} after {elapsed:?}, expected between {min:?} and {max:?}"
    );
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
        tokio::time::timeout(WAIT, r.read_to_end(&mut v))
            .await
            .unwrap_or_else(|_| panic!("no EOF within {WAIT:?}; {} bytes came", v.len()))
            .unwrap();
        v
    };
    let ((), got) = tokio::join!(write, read);
    got
}

/// Polls `probe` every 10 ms until `done` holds for what it returns, and returns that value.
/// Fails after [`WAIT`] naming `what` and the last value seen.
pub async fn wait_for<T: Debug>(
    what: &str,
    mut probe: impl FnMut() -> T,
    mut done: impl FnMut(&T) -> bool,
) -> T {
    let deadline = Instant::now() + WAIT;
    loop {
        let v = probe();
        if done(&v) {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {WAIT:?} waiting for {what}; last saw {v:?}"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// [`wait_for`] a value equal to `want`.
pub async fn wait_eq<T: Debug + PartialEq>(what: &str, probe: impl FnMut() -> T, want: T) {
    wait_for(what, probe, |v| *v == want).await;
}

/// Waits until connections to 127.0.0.1:`port` are refused (nothing listens there any more).
pub async fn wait_refused(port: u16) {
    let deadline = Instant::now() + WAIT;
    while TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
        assert!(Instant::now() < deadline, "port {port} still accepts after {WAIT:?}");
        tokio::time::sleep(POLL).await;
    }
}

/// Waits until the engine has no open connection; fails with its statistics otherwise.
pub async fn settle(engine: &Engine) {
    wait_for("no open connection", || engine.stats(), |s| s.active_connections == 0).await;
}

/// A deterministic pattern of `n` bytes.
pub fn pattern(n: usize, seed: u8) -> Vec<u8> {
    (0..n).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
}
