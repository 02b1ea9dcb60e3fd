//! The HTTP layer through the binary: routes with an `http` table are served request by
//! request (issue 12). Real clients (curl, h2load, a WebSocket client), real backends (a
//! header-echo HTTP/1.1 server, nginx, a WebSocket echo server), PROXY v2 in front.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use smartproxy_proxy_protocol::Header;
use smartproxy_tests::*;

/// An HTTP/1.1 backend (keep-alive) whose answer body is its `name` and the request line and
/// headers it received, one per line; a `POST`/`PUT` body is read (Content-Length) and its
/// length reported. Counts connections.
struct EchoHeaders {
    port: u16,
    connections: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl EchoHeaders {
    fn start(name: &'static str) -> EchoHeaders {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.set_nonblocking(true).unwrap();
        let port = l.local_addr().unwrap().port();
        let connections = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (c2, s2) = (connections.clone(), stop.clone());
        thread::spawn(move || {
            while !s2.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((s, _)) => {
                        c2.fetch_add(1, Ordering::Relaxed);
                        thread::spawn(move || serve_echo_headers(s, name));
                    }
                    Err(_) => thread::sleep(Duration::from_millis(2)),
                }
            }
        });
        EchoHeaders { port, connections, stop }
    }
}

impl Drop for EchoHeaders {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn serve_echo_headers(s: TcpStream, name: &str) {
    let _ = s.set_nonblocking(false);
    let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
    let mut w = s.try_clone().unwrap();
    let mut r = BufReader::new(s);
    loop {
        let mut head = Vec::new();
        let mut len = 0usize;
        loop {
            let mut line = String::new();
            match r.read_line(&mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            let line = line.trim_end().to_owned();
            if line.is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    len = v.trim().parse().unwrap_or(0);
                }
            }
            head.push(line);
        }
        let mut body = vec![0u8; len];
        if r.read_exact(&mut body).is_err() {
            return;
        }
        let text = format!("{name}\n{}\nbody {}\n", head.join("\n"), len);
        let resp = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{text}",
            text.len()
        );
        if w.write_all(resp.as_bytes()).is_err() {
            return;
        }
    }
}

fn route(name: &str, port: u16, extra_match: &str, target: u16, http: &str) -> String {
    format!(
        "[[routes]]\nname = \"{name}\"\nmatch = {{ ports = [{port}]{extra_match} }}\n\
         action = {{ type = \"forward\", targets = [{{ host = \"127.0.0.1\", port = {target} }}], http = {{ {http} }} }}\n"
    )
}

/// One kept-alive connection, requests for three routes and a handler and no route: each
/// reaches its own backend; the client connected once; the requests are counted per route
/// in /metrics and in the `requests` group of /metrics/json.
#[test]
fn one_connection_many_routes_per_request() {
    let (a, b) = (EchoHeaders::start("backend-a"), EchoHeaders::start("backend-b"));
    let [port, admin] = reserve_ports::<2>();
    let config = format!(
        "bind = [\"127.0.0.1\"]\n[admin]\nlisten = \"127.0.0.1:{admin}\"\n{}{}{}\
         [[routes]]\nname = \"old\"\nmatch = {{ ports = [{port}], path = \"/old/*\" }}\n\
         action = {{ type = \"socket-handler\", handler = \"redirect\", location = \"/new{{path}}\", status = 308 }}\n",
        route("a", port, ", path = \"/a/*\"", a.port, ""),
        route("b", port, ", path = \"/b/*\"", b.port, ""),
        route("b-host", port, ", domains = [\"b.test\"]", b.port, "preserve_host = false"),
    );
    let _p = Proxy::start(&config, &[port]);
    let w = "\n=%{http_code} %{num_connects}\n";
    let u = |p: &str| format!("http://127.0.0.1:{port}{p}");
    let (code, out, err) = curl(&[
        "-w",
        w,
        &u("/a/1"),
        "--next",
        "-w",
        w,
        &u("/b/2"),
        "--next",
        "-w",
        w,
        "-H",
        "Host: b.test",
        &u("/x"),
        "--next",
        "-w",
        w,
        &u("/old/y"),
        "--next",
        "-w",
        w,
        &u("/nowhere"),
    ]);
    assert_eq!(code, 0, "{err}");
    let marks: Vec<&str> = out.lines().filter(|l| l.starts_with('=')).collect();
    assert_eq!(marks, vec!["=200 1", "=200 0", "=200 0", "=308 0", "=404 0"], "{out}");
    let bodies: Vec<&str> = out.lines().filter(|l| l.starts_with("backend-")).collect();
    assert_eq!(bodies, vec!["backend-a", "backend-b", "backend-b"], "{out}");
    assert!(out.contains(&format!("host: 127.0.0.1:{}", b.port)), "preserve_host = false: {out}");
    // Requests per route in every export's source: Prometheus text and JSON.
    let m = get(admin, "/metrics").body;
    for (r, class) in [("a", "2xx"), ("b", "2xx"), ("b-host", "2xx"), ("old", "3xx"), ("", "4xx")] {
        let needle = format!(
            "smartproxy_http_requests_total{{route=\"{r}\",code_class=\"{class}\",method=\"GET\"}} 1"
        );
        assert!(m.contains(&needle), "{needle} in:\n{m}");
    }
    // The `requests` group is aggregated once per sample interval (1 s).
    wait_until("5 requests in /metrics/json", || {
        let v: serde_json::Value = serde_json::from_str(&get(admin, "/metrics/json").body).unwrap();
        v["requests"]["total"] == 5
    });
}

/// h2 negotiated by ALPN on a terminating route, h2c with prior knowledge on a plain port,
/// and HTTP/1.1 when the client offers only that.
#[test]
fn http2_by_alpn_and_prior_knowledge() {
    let pki = Pki::new();
    let leaf = pki.leaf("site", &["site.test"]);
    let b = EchoHeaders::start("backend");
    let [tls_port, plain_port] = reserve_ports::<2>();
    let tls_route = format!(
        "[[routes]]\nname = \"tls\"\nmatch = {{ ports = [{tls_port}], domains = [\"site.test\"] }}\n\
         action = {{ type = \"forward\", targets = [{{ host = \"127.0.0.1\", port = {} }}], http = {{ }}, \
         tls = {{ mode = \"terminate\", certificate = {{ cert = \"{}\", key = \"{}\" }} }} }}\n",
        b.port,
        leaf.cert.display(),
        leaf.key.display()
    );
    let config = format!(
        "bind = [\"127.0.0.1\"]\n{}{tls_route}",
        route("plain", plain_port, "", b.port, "")
    );
    let _p = Proxy::start(&config, &[tls_port, plain_port]);
    let ca = pki.ca_pem.display().to_string();
    let resolve = format!("site.test:{tls_port}:127.0.0.1");
    let url = format!("https://site.test:{tls_port}/x");
    let v = |args: &[&str]| {
        let (code, out, err) = curl(args);
        assert_eq!(code, 0, "{args:?}: {err}");
        out
    };
    let h2 =
        v(&["--http2", "--cacert", &ca, "--resolve", &resolve, "-w", "\n=%{http_version}", &url]);
    assert!(h2.ends_with("=2") && h2.contains("x-forwarded-proto: https"), "{h2}");
    let h1 =
        v(&["--http1.1", "--cacert", &ca, "--resolve", &resolve, "-w", "\n=%{http_version}", &url]);
    assert!(h1.ends_with("=1.1"), "{h1}");
    let h2c = v(&[
        "--http2-prior-knowledge",
        "-w",
        "\n=%{http_version}",
        &format!("http://127.0.0.1:{plain_port}/y"),
    ]);
    assert!(
        h2c.ends_with("=2") && h2c.contains("GET /y HTTP/1.1"),
        "h2c in, HTTP/1.1 to the backend: {h2c}"
    );
}

/// h2load over TLS (h2) with many streams: zero failed requests, backend connections pooled.
#[test]
fn h2load_has_no_failed_requests() {
    let bin = require("h2load", "nghttp2-client");
    let pki = Pki::new();
    let leaf = pki.leaf("site", &["site.test"]);
    let b = EchoHeaders::start("backend");
    let [port] = reserve_ports::<1>();
    let config = format!(
        "bind = [\"127.0.0.1\"]\n[[routes]]\nname = \"tls\"\nmatch = {{ ports = [{port}] }}\n\
         action = {{ type = \"forward\", targets = [{{ host = \"127.0.0.1\", port = {} }}], http = {{ }}, \
         tls = {{ mode = \"terminate\", certificate = {{ cert = \"{}\", key = \"{}\" }} }} }}\n",
        b.port,
        leaf.cert.display(),
        leaf.key.display()
    );
    let _p = Proxy::start(&config, &[port]);
    let out = Command::new(bin)
        .args(["-n", "2000", "-c", "4", "-m", "10", &format!("https://127.0.0.1:{port}/")])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("2000 total, 2000 started, 2000 done, 2000 succeeded, 0 failed, 0 errored"),
        "{text}"
    );
    assert!(text.contains("Application protocol: h2"), "{text}");
    let conns = b.connections.load(Ordering::Relaxed);
    assert!(conns <= 64, "backend connections are pooled: {conns} for 2000 requests");
}

/// PROXY v2 in front: the proxy trusts the peer, and X-Forwarded-For carries the real client
/// from the header (the peer is trusted, so an incoming X-Forwarded-For is appended to).
#[test]
fn proxy_v2_in_front_gives_the_real_client_in_x_forwarded_for() {
    let b = EchoHeaders::start("backend");
    let [port] = reserve_ports::<1>();
    let config = format!(
        "bind = [\"127.0.0.1\"]\nproxy_ips = [\"127.0.0.1\"]\n{}",
        route("r", port, "", b.port, "forwarded = true")
    );
    let _p = Proxy::start(&config, &[port]);
    let mut s = connect(port);
    let src: SocketAddr = "203.0.113.9:40000".parse().unwrap();
    let dst: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut hdr = Vec::new();
    Header::v2(src, dst).unwrap().encode(&mut hdr).unwrap();
    s.write_all(&hdr).unwrap();
    s.write_all(b"GET /who HTTP/1.1\r\nHost: app.test\r\nX-Forwarded-For: 198.51.100.1\r\nConnection: close\r\n\r\n")
        .unwrap();
    let (raw, _) = read_to_end(&mut s);
    let text = String::from_utf8_lossy(&raw);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("x-forwarded-for: 198.51.100.1, 203.0.113.9"), "{text}");
    assert!(text.contains("forwarded: for=203.0.113.9"), "{text}");
    assert!(text.contains("x-forwarded-host: app.test"), "{text}");
}

/// A WebSocket through the proxy stays open past `http_keepalive_timeout` while frames flow
/// (the long-standing bug of the upstream project), and frames pass both ways untouched.
#[test]
fn websocket_outlives_the_keepalive_timeout() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let ws_port = l.local_addr().unwrap().port();
    thread::spawn(move || {
        for s in l.incoming().flatten() {
            thread::spawn(move || {
                let Ok(mut ws) = tungstenite::accept(s) else { return };
                while let Ok(m) = ws.read() {
                    if m.is_close() || ws.send(m).is_err() {
                        return;
                    }
                }
            });
        }
    });
    let [port] = reserve_ports::<1>();
    let config = format!(
        "bind = [\"127.0.0.1\"]\n[defaults]\nhttp_keepalive_timeout = \"1s\"\n{}",
        route("ws", port, "", ws_port, "")
    );
    let _p = Proxy::start(&config, &[port]);
    let (mut ws, resp) =
        tungstenite::connect(format!("ws://127.0.0.1:{port}/chat")).expect("WebSocket handshake");
    assert_eq!(resp.status().as_u16(), 101);
    let started = Instant::now();
    let mut i = 0u32;
    // 3 s of frames, three times the keep-alive timeout.
    while started.elapsed() < Duration::from_secs(3) {
        let msg = format!("frame {i}");
        ws.send(tungstenite::Message::text(msg.clone())).unwrap();
        let back = ws.read().unwrap();
        assert_eq!(back.into_text().unwrap().as_str(), msg);
        i += 1;
        // Pacing (not synchronisation): a frame every 250 ms.
        thread::sleep(Duration::from_millis(250));
    }
    assert!(i >= 10, "{i} frames");
    ws.send(tungstenite::Message::binary(vec![0u8, 1, 2, 255])).unwrap();
    assert_eq!(ws.read().unwrap().into_data().as_ref(), &[0u8, 1, 2, 255]);
}

/// nginx as the backend: keep-alive towards it (its stub counters show few connections) and
/// a request body streamed through.
#[test]
fn nginx_backend_with_keepalive_and_a_body() {
    let nginx = require("nginx", "nginx-light");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    let [port, backend] = reserve_ports::<2>();
    let conf = format!(
        "daemon off;\nmaster_process off;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\n\
         events {{ worker_connections 256; }}\nhttp {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n  fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
         \x20 server {{\n    listen 127.0.0.1:{backend};\n    keepalive_requests 100000;\n    location / {{ return 200 \"nginx says hi\\n\"; }}\n    location /status {{ stub_status; }}\n  }}\n}}\n"
    );
    std::fs::write(dir.path().join("nginx.conf"), conf).unwrap();
    let mut child = Command::new(nginx)
        .arg("-p")
        .arg(dir.path())
        .arg("-e")
        .arg(dir.path().join("error.log"))
        .arg("-c")
        .arg(dir.path().join("nginx.conf"))
        .spawn()
        .unwrap();
    wait_until("nginx listening", || port_listening(backend));
    let config = format!("bind = [\"127.0.0.1\"]\n{}", route("n", port, "", backend, ""));
    let _p = Proxy::start(&config, &[port]);
    for _ in 0..20 {
        let r = http(port, "GET", "/", &[]);
        assert_eq!((r.status, r.body.as_str()), (200, "nginx says hi\n"));
    }
    let (code, out, err) =
        curl(&["-X", "POST", "--data-binary", "@-", &format!("http://127.0.0.1:{port}/")]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "nginx says hi\n");
    let status = http(backend, "GET", "/status", &[]).body;
    let accepts: u64 =
        status.lines().nth(2).and_then(|l| l.split_whitespace().next()?.parse().ok()).unwrap();
    assert!(accepts <= 4, "21 proxied requests used {accepts} backend connections:\n{status}");
    let _ = child.kill();
    let _ = child.wait();
}

/// 256 MiB up and 256 MiB down through the binary with the proxy's memory flat: the peak
/// resident set grows by less than 16 MiB (bodies stream with backpressure; the layer holds
/// a few buffers, not the body). The crate's own test moves 1 GiB each way through the same
/// serve path (`cargo test -p smartproxy-http --test streaming`).
#[test]
fn large_bodies_stream_both_ways_with_flat_memory() {
    const SIZE: u64 = 256 * 1024 * 1024;
    // A backend that reads the upload and answers with a download of SIZE bytes.
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let target = l.local_addr().unwrap().port();
    thread::spawn(move || {
        for s in l.incoming().flatten() {
            thread::spawn(move || {
                let mut w = s.try_clone().unwrap();
                let mut r = BufReader::new(s);
                let mut len = 0u64;
                loop {
                    let mut line = String::new();
                    if r.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    if line.trim().is_empty() {
                        break;
                    }
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        len = v.trim().parse().unwrap_or(0);
                    }
                }
                let got = std::io::copy(&mut (&mut r).take(len), &mut std::io::sink()).unwrap();
                let head =
                    format!("HTTP/1.1 200 OK\r\nContent-Length: {SIZE}\r\nX-Got: {got}\r\n\r\n");
                w.write_all(head.as_bytes()).unwrap();
                let chunk = vec![b'z'; 1 << 20];
                for _ in 0..(SIZE >> 20) {
                    if w.write_all(&chunk).is_err() {
                        return;
                    }
                }
            });
        }
    });
    let [port] = reserve_ports::<1>();
    let p = Proxy::start(
        &format!("bind = [\"127.0.0.1\"]\n{}", route("big", port, "", target, "")),
        &[port],
    );
    let before = peak_kib(&p);
    let s = connect(port);
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(120))).unwrap();
    let mut w = s.try_clone().unwrap();
    let up = thread::spawn(move || {
        let head = format!(
            "POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: {SIZE}\r\nConnection: close\r\n\r\n"
        );
        w.write_all(head.as_bytes()).unwrap();
        let chunk = vec![b'u'; 1 << 20];
        for _ in 0..(SIZE >> 20) {
            w.write_all(&chunk).unwrap();
        }
    });
    let mut r = BufReader::new(s);
    let mut status = String::new();
    r.read_line(&mut status).unwrap();
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    let mut got_up = None;
    loop {
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        if line.trim().is_empty() {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("x-got:") {
            got_up = v.trim().parse::<u64>().ok();
        }
    }
    let down = std::io::copy(&mut r, &mut std::io::sink()).unwrap();
    up.join().unwrap();
    assert_eq!(got_up, Some(SIZE), "the backend got the whole upload");
    assert_eq!(down, SIZE, "the client got the whole download");
    let grew = peak_kib(&p).saturating_sub(before);
    assert!(grew < 16 * 1024, "peak RSS grew by {grew} KiB moving 2 x 256 MiB");
    let _ = r.get_ref().shutdown(Shutdown::Both);
}

fn peak_kib(p: &Proxy) -> u64 {
    std::fs::read_to_string(format!("/proc/{}/status", p.pid()))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmHWM")
}

/// A reload changes where requests go, at the next request of a kept-alive connection; a
/// SIGTERM lets the request in flight finish and closes the idle keep-alive connection.
#[test]
fn reload_applies_per_request_and_shutdown_drains() {
    let (a, b) = (EchoHeaders::start("backend-a"), EchoHeaders::start("backend-b"));
    let [port] = reserve_ports::<1>();
    let cfg = |t: u16| format!("bind = [\"127.0.0.1\"]\n{}", route("r", port, "", t, ""));
    let mut p = Proxy::start(&cfg(a.port), &[port]);
    let mut s = connect(port);
    let ask = |s: &mut TcpStream| {
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let mut r = BufReader::new(s.try_clone().unwrap());
        let mut len = 0usize;
        loop {
            let mut line = String::new();
            r.read_line(&mut line).unwrap();
            if line.trim().is_empty() {
                break;
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                len = v.trim().parse().unwrap();
            }
        }
        let mut body = vec![0u8; len];
        r.read_exact(&mut body).unwrap();
        String::from_utf8(body).unwrap().lines().next().unwrap().to_owned()
    };
    assert_eq!(ask(&mut s), "backend-a");
    p.reload(&cfg(b.port));
    p.wait_for_event("configuration reloaded", &[]);
    assert_eq!(ask(&mut s), "backend-b", "same connection, new route target");
    p.signal("TERM");
    // The idle kept-alive connection is closed by the drain (EOF), well before the grace.
    let (rest, closed) = read_to_end(&mut s);
    assert!(closed && rest.is_empty(), "closed cleanly, nothing more sent");
    p.wait_for_event("stopped", &[]);
}
