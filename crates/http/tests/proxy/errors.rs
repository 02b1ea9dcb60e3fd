//! Errors as an operator expects: 502, 504, 400, 431, 408 (slowloris), the keep-alive
//! timeout; each with a short body, counted by reason and logged once with the client.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use smartproxy_http::HttpSettings;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::*;

fn route(port: u16, target: u16, extra: &str) -> String {
    format!(
        r#"[[routes]]
name = "r"
match = {{ ports = [{port}] }}
action = {{ type = "forward", targets = [{{ host = "127.0.0.1", port = {target} }}], http = {{ {extra} }} }}
"#
    )
}

fn settings(f: impl FnOnce(&mut HttpSettings)) -> HttpSettings {
    let mut s = HttpSettings::default();
    f(&mut s);
    s
}

/// A port with a bound socket that does not listen: connects to it are refused, and no
/// other test can take it while the socket lives.
fn refusing_port() -> (socket2::Socket, u16) {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    s.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into()).unwrap();
    let port = s.local_addr().unwrap().as_socket().unwrap().port();
    (s, port)
}

/// A listener whose accept queue is full: new connects hang (SYNs are dropped).
fn full_backlog() -> (socket2::Socket, Vec<std::net::TcpStream>, u16) {
    let l = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    l.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into()).unwrap();
    l.listen(0).unwrap();
    let addr = l.local_addr().unwrap().as_socket().unwrap();
    let mut held = Vec::new();
    for _ in 0..16 {
        match std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(300)) {
            Ok(s) => held.push(s),
            Err(_) => return (l, held, addr.port()),
        }
    }
    panic!("the accept queue of a listen(0) socket never filled");
}

async fn status_and_body(proxy: &Proxy, path: &str) -> (String, String) {
    let out = curl(&["-w", "\n%{http_code}", &proxy.url(path)]).await;
    let text = stdout(&out);
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", ""));
    (code.to_owned(), body.to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_backend_is_502_after_trying_every_target() {
    capture_logs();
    let (_a, pa) = refusing_port();
    let (_b, pb) = refusing_port();
    let proxy = Proxy::start(
        |p| {
            format!(
                r#"[[routes]]
name = "dead"
match = {{ ports = [{p}] }}
action = {{ type = "forward", targets = [{{ host = "127.0.0.1", port = {pa} }}, {{ host = "127.0.0.1", port = {pb} }}], http = {{ }} }}
"#
            )
        },
        Opts::default(),
    )
    .await;
    let (code, body) = status_and_body(&proxy, "/x").await;
    assert_eq!(code, "502");
    assert_eq!(body, "bad gateway: the backend is unavailable\n");
    let s = proxy.metrics.snapshot();
    assert_eq!(s.http.errors["backend_unavailable"], 1);
    assert_eq!(s.routes[0].backend_connect_failures, 2, "both targets were tried");
    let r = &s.routes[0].http.requests;
    assert_eq!((r[0].code_class.as_str(), r[0].count), ("5xx", 1));
    let lines = log_lines(&format!("port={}", proxy.port()));
    let lines: Vec<&String> = lines.iter().filter(|l| l.contains("status=502")).collect();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].contains("client=127.0.0.1:"), "{}", lines[0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_that_resets_is_502() {
    // Reads the request head, then closes with a reset.
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let bp = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut b = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut b).await {
                        Ok(n) if n > 0 => head.extend_from_slice(&b[..n]),
                        _ => return,
                    }
                }
                let s = s.into_std().unwrap();
                socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO)).unwrap();
                drop(s);
            });
        }
    });
    let proxy = Proxy::start(|p| route(p, bp, ""), Opts::default()).await;
    let (code, body) = status_and_body(&proxy, "/x").await;
    assert_eq!(code, "502");
    assert_eq!(body, "bad gateway: the backend failed\n");
    assert_eq!(proxy.metrics.snapshot().http.errors["backend_error"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_backend_is_504_on_response_timeout() {
    let b = Backend::h1("slow").await;
    let bp = b.port();
    let proxy =
        Proxy::start(|p| route(p, bp, "response_timeout = \"300ms\""), Opts::default()).await;
    let started = Instant::now();
    let (code, body) = status_and_body(&proxy, "/sleep").await;
    assert_eq!(code, "504");
    assert_eq!(body, "gateway timeout: the backend did not answer\n");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(proxy.metrics.snapshot().http.errors["backend_response_timeout"], 1);
    // The defaults' http_response_timeout applies without the route key.
    let proxy = Proxy::start(
        |p| route(p, bp, ""),
        Opts {
            settings: Some(settings(|s| s.http_response_timeout = Duration::from_millis(200))),
            ..Opts::default()
        },
    )
    .await;
    assert_eq!(status_and_body(&proxy, "/sleep").await.0, "504");
}

/// Each request's response timeout counts from its own start, also on a kept-alive
/// connection (whose timer is kept between requests and set again for each): a request that
/// outlives the previous request's deadline (but not its own) is answered, a silent one gets
/// its 504 after its own second, and the next one is answered again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_timer_is_per_request_on_a_kept_alive_connection() {
    let b = Backend::h1("slow").await;
    let bp = b.port();
    let proxy = Proxy::start(|p| route(p, bp, "response_timeout = \"1s\""), Opts::default()).await;
    let w = "%{http_code} %{num_connects} %{time_total}\n";
    let started = Instant::now();
    let urls: Vec<String> =
        ["/delay/600", "/delay/600", "/sleep", "/x"].iter().map(|p| proxy.url(p)).collect();
    let mut args: Vec<&str> = Vec::new();
    for (i, url) in urls.iter().enumerate() {
        if i > 0 {
            args.push("--next");
        }
        args.extend(["-o", "/dev/null", "-w", w, url]);
    }
    let out = curl(&args).await;
    let text = stdout(&out);
    let lines: Vec<Vec<&str>> = text.lines().map(|l| l.split(' ').collect()).collect();
    let codes: Vec<&str> = lines.iter().map(|l| l[0]).collect();
    assert_eq!(codes, ["200", "200", "504", "200"], "{text}");
    // One connection for all four (curl counts the connects it made per transfer).
    let connects: Vec<&str> = lines.iter().map(|l| l[1]).collect();
    assert_eq!(connects, ["1", "0", "0", "0"], "{text}");
    // The 504 came after its own second, not the previous request's.
    let t504: f64 = lines[2][2].parse().unwrap();
    assert!(t504 >= 0.9, "the silent request was cut after {t504} s\n{text}");
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(proxy.metrics.snapshot().http.errors["backend_response_timeout"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_backend_is_504_on_connect_timeout() {
    let (_l, _held, bp) = full_backlog();
    let proxy = Proxy::start(
        |p| route(p, bp, ""),
        Opts { connect_timeout: Some(Duration::from_millis(300)), ..Opts::default() },
    )
    .await;
    let (code, body) = status_and_body(&proxy, "/x").await;
    assert_eq!(code, "504");
    assert_eq!(body, "gateway timeout: connecting to the backend\n");
    assert_eq!(proxy.metrics.snapshot().http.errors["backend_connect_timeout"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_head_is_431_and_malformed_is_400() {
    capture_logs();
    let b = Backend::h1("b").await;
    let bp = b.port();
    let proxy = Proxy::start(
        |p| route(p, bp, ""),
        Opts { settings: Some(settings(|s| s.max_request_header_bytes = 4096)), ..Opts::default() },
    )
    .await;
    // 431 with a short body, then the connection closes.
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    let me = s.local_addr().unwrap();
    let big = format!("GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n", "a".repeat(8000));
    s.write_all(big.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut out)).await.unwrap().unwrap();
    let out = String::from_utf8_lossy(&out);
    assert!(out.starts_with("HTTP/1.1 431 "), "{out}");
    assert!(out.ends_with("\r\n\r\nrequest header fields too large\n"), "{out}");
    // A head under the cap passes.
    let ok = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\nConnection: close\r\n\r\n",
        "a".repeat(3000)
    );
    assert!(raw(proxy.addr, ok.as_bytes()).await.starts_with("HTTP/1.1 200 "));
    // 400 for a broken head.
    let out = raw(proxy.addr, b"GET / HTTP/1.1\r\nHost: x\r\nBroken header line\r\n\r\n").await;
    assert!(out.starts_with("HTTP/1.1 400 "), "{out}");
    assert!(out.ends_with("\r\n\r\nmalformed request head\r\n"), "{out}");
    let m = proxy.metrics.snapshot();
    assert_eq!(m.http.errors["header_too_large"], 1);
    assert_eq!(m.http.errors["bad_request"], 1);
    assert_eq!(m.http.unrouted.requests_total, 2, "refused heads count as unrouted requests");
    let lines = log_lines(&format!("client={me}"));
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].contains("status=431") && lines[0].contains("reason=\"header_too_large\""),
        "{}",
        lines[0]
    );
}

/// A head trickled a byte at a time is cut by `request_header_timeout` with a 408, and the
/// same connection idle between requests is closed by `http_keepalive_timeout` only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_is_cut_and_idle_connections_close() {
    capture_logs();
    let b = Backend::h1("b").await;
    let bp = b.port();
    let proxy = Proxy::start(
        |p| route(p, bp, ""),
        Opts {
            settings: Some(settings(|s| {
                s.request_header_timeout = Duration::from_millis(500);
                s.http_keepalive_timeout = Duration::from_millis(1500);
            })),
            ..Opts::default()
        },
    )
    .await;
    // Slowloris: a byte every 100 ms never completes within 500 ms.
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    let me = s.local_addr().unwrap();
    let started = Instant::now();
    let head = b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
    let mut answer = Vec::new();
    for b in head {
        if s.write_all(&[*b]).await.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        if started.elapsed() > Duration::from_secs(2) {
            break;
        }
    }
    let _ = tokio::time::timeout(WAIT, s.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408 "), "{answer}");
    assert!(answer.ends_with("request header timeout exceeded\r\n"), "{answer}");
    assert!(started.elapsed() < Duration::from_millis(1900), "{:?}", started.elapsed());
    assert_eq!(proxy.metrics.snapshot().http.errors["request_header_timeout"], 1);
    assert_eq!(log_lines(&format!("client={me}")).len(), 1);

    // Keep-alive: idle longer than the header timeout but shorter than the keep-alive
    // timeout, the connection still serves; idle past the keep-alive timeout, it closes.
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    let req = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n";
    for _ in 0..2 {
        s.write_all(req).await.unwrap();
        read_response(&mut s).await;
        tokio::time::sleep(Duration::from_millis(800)).await;
    }
    let idle_from = Instant::now();
    let mut rest = Vec::new();
    let n = tokio::time::timeout(WAIT, s.read_to_end(&mut rest)).await.unwrap().unwrap();
    assert_eq!(n, 0, "closed without a byte");
    let waited = idle_from.elapsed() + Duration::from_millis(800);
    assert!(
        waited >= Duration::from_millis(1400) && waited < Duration::from_millis(3000),
        "{waited:?}"
    );
    eventually("the keep-alive close to be reported", || {
        proxy
            .outcomes
            .lock()
            .iter()
            .any(|o| o.reason == smartproxy_http::CloseReason::KeepaliveTimeout && o.requests == 2)
    })
    .await;
}

/// Reads one HTTP/1.1 response with a Content-Length body.
async fn read_response(s: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    let mut tmp = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(WAIT, s.read(&mut tmp)).await.unwrap().unwrap();
        assert!(n > 0, "closed mid-response: {}", String::from_utf8_lossy(&buf));
        buf.extend_from_slice(&tmp[..n]);
        let text = String::from_utf8_lossy(&buf).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len: usize = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length").then(|| v.trim().parse().ok())?
                })
                .unwrap_or(0);
            if body.len() >= len {
                return text;
            }
        }
    }
}

/// The keep-alive race: a target closes an idle connection just as a request goes out on
/// it. A replayable request (idempotent, no body) is sent again on a new connection; a POST
/// is not (502).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_pooled_connection_is_retried_for_idempotent_requests() {
    // Answers the first request of each connection, then closes on the next one unanswered.
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let bp = l.local_addr().unwrap().port();
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let acc = std::sync::Arc::clone(&accepted);
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            acc.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut b = [0u8; 4096];
                let mut answered = false;
                loop {
                    let n = match s.read(&mut b).await {
                        Ok(n) if n > 0 => n,
                        _ => return,
                    };
                    buf.extend_from_slice(&b[..n]);
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                        let body_len: usize = head
                            .lines()
                            .find_map(|l| {
                                l.strip_prefix("content-length:")
                                    .map(|v| v.trim().parse().unwrap_or(0))
                            })
                            .unwrap_or(0);
                        if buf.len() < end + 4 + body_len {
                            break;
                        }
                        buf.drain(..end + 4 + body_len);
                        if answered {
                            return; // closes without an answer
                        }
                        answered = true;
                        let _ =
                            s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").await;
                    }
                }
            });
        }
    });
    let proxy = Proxy::start(|p| route(p, bp, ""), Opts::default()).await;
    let (code, body) = status_and_body(&proxy, "/1").await;
    assert_eq!((code.as_str(), body.as_str()), ("200", "ok"));
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let (code, body) = status_and_body(&proxy, "/2").await;
    assert_eq!((code.as_str(), body.as_str()), ("200", "ok"), "the GET was sent again");
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 2);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let out = curl(&["-w", "\n%{http_code}", "--data-binary", "x", &proxy.url("/3")]).await;
    assert!(stdout(&out).ends_with("\n502"), "a POST is not sent twice: {}", stdout(&out));
}
