//! Slow, missing and malformed PROXY headers, dead and silent backends: each bad connection is
//! closed, the process keeps serving, memory stays flat and nothing reaches the backend.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use smartproxy_tests::*;

fn trusted_config(port: u16, backend: u16, extra_route: &str) -> String {
    format!(
        r#"
bind = ["127.0.0.1"]
proxy_ips = ["127.0.0.1"]
proxy_protocol_timeout = "1s"

[defaults]
inactivity_timeout = "1s"
max_connections_per_ip = 100000
connection_rate_limit_per_minute = 100000

[[routes]]
name = "r"
match = {{ ports = [{port}] }}
action = {{ type = "forward", targets = [{{ host = "127.0.0.1", port = {backend} }}]{extra_route} }}
"#
    )
}

/// The same without `proxy_ips`: nobody may send a header.
fn untrusted_config(port: u16, backend: u16, extra_route: &str) -> String {
    trusted_config(port, backend, extra_route).replace("proxy_ips = [\"127.0.0.1\"]", "")
}

/// Tolerance below a timeout (timers never fire early; the test's clock starts a little
/// apart from the proxy's) and scheduling margin above it on a loaded CI machine.
const EARLY: Duration = Duration::from_millis(50);
const LATE: Duration = Duration::from_millis(1000);

const MALFORMED: &[&[u8]] = &[
    b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n", // leading zero in a port
    b"PROXY TCP4 1.2.3.04 5.6.7.8 1 2\r\n", // leading zero in an octet
    b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n",  // unknown family
    b"PROXY TCP4 ::1 ::1 1 2\r\n",          // family does not match the addresses
    b"PROXY TCP4 1.2.3.4 5.6.7.8 1 65536\r\n", // port out of range
    b"PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n", // double space
    b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n",    // LF without CR
    b"\r\n\r\n\0\r\nQUIT\n\x31\x11\x00\x0c", // v2 signature, version 3
    b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x04\x01\x02\x03\x04", // v2 len shorter than the IPv4 block
    b"GARBAGE THAT IS NOT A HEADER\r\n",
];

#[test]
fn malformed_headers_are_closed_and_never_reach_the_backend() {
    let backend = Backend::echo();
    let (mut proxy, [port]) = Proxy::start_on(|[port]| trusted_config(port, backend.port(), ""));
    for bad in MALFORMED {
        let mut s = connect(port);
        s.write_all(bad).unwrap();
        let _ = s.write_all(b"payload that must not be forwarded");
        let (got, _) = read_to_end(&mut s);
        assert!(got.is_empty(), "{:?} got an answer", String::from_utf8_lossy(bad));
    }
    // A v1 line longer than 107 bytes without CRLF.
    let mut s = connect(port);
    s.write_all(&[b"PROXY TCP4 ".as_slice(), &[b'1'; 200]].concat()).unwrap();
    expect_closed_without_data(&mut s);
    // Each one refused for its header, on this port.
    let port_s = port.to_string();
    proxy.wait_for_events(
        MALFORMED.len() + 1,
        "connection refused",
        // Malformed (proxy_header_invalid) or not a PROXY header at all (proxy_header_required).
        &[("port", &port_s), ("reason", "proxy_header_*")],
    );
    assert!(backend.seen().is_empty(), "{:?}", backend.seen());
    assert!(!proxy.output().contains("panicked"));
}

#[test]
fn slow_header_is_closed_at_the_absolute_deadline() {
    let backend = Backend::echo();
    let (mut proxy, [port]) = Proxy::start_on(|[port]| trusted_config(port, backend.port(), ""));
    // Slowloris: one byte every 200 ms (pacing on purpose) never finishes within the 1 s
    // deadline, although each byte resets any per-read timer. A reader notes when the proxy
    // closes; the writer stops then.
    let started = Instant::now();
    let mut s = connect(port);
    let mut r = s.try_clone().unwrap();
    let done = Arc::new(AtomicBool::new(false));
    let done2 = Arc::clone(&done);
    let reader = std::thread::spawn(move || {
        let closed = expect_closed_without_data(&mut r);
        done2.store(true, Ordering::SeqCst);
        closed
    });
    for b in b"PROXY TCP4 1.2.3.4 5.6.7.8 1111 2222\r\n" {
        if done.load(Ordering::SeqCst) || s.write_all(&[*b]).is_err() {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let closed = reader.join().expect("closed without a byte");
    let t = Duration::from_secs(1);
    assert_within("the slow header was cut", closed - started, t - EARLY, t + LATE);
    proxy.wait_for_event(
        "connection refused",
        &[
            ("port", &port.to_string()),
            ("reason", "proxy_header_timeout"),
            ("detail", "no complete PROXY header within 1s"),
        ],
    );
    assert!(backend.seen().is_empty(), "the header never completed in time");
}

#[test]
fn a_thousand_bad_connections_leave_the_process_serving_with_flat_memory() {
    let backend = Backend::echo();
    let (proxy, [port]) = Proxy::start_on(|[port]| trusted_config(port, backend.port(), ""));
    let round = |n: usize| {
        for i in 0..n {
            let mut s = connect(port);
            let _ = s.write_all(MALFORMED[i % MALFORMED.len()]);
            expect_closed_without_data(&mut s);
        }
    };
    round(200); // warm up allocator and runtime
    let before = proxy.rss_kib();
    round(1000);
    let after = proxy.rss_kib();
    assert!(before > 0 && after > 0, "RSS read from /proc: {before} and {after} KiB");
    assert!(
        after < before + 8 * 1024,
        "RSS grew from {before} KiB to {after} KiB over 1,000 bad connections"
    );
    // Still serving.
    let mut s = connect(port);
    s.write_all(b"PROXY TCP4 192.0.2.1 127.0.0.1 5000 80\r\nhello").unwrap();
    let mut got = [0u8; 5];
    s.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"hello");
    assert_eq!(backend.seen().len(), 1);
}

#[test]
fn backend_refusing_closes_the_client_cleanly() {
    // A port nobody listens on (bound, not listening: connections to it are refused).
    let dead = DeadPort::new();
    let live = Backend::echo();
    let (mut proxy, [port, other, admin]) = Proxy::start_on(|[port, other, admin]| {
        format!(
            "{}\n[[routes]]\nname = \"live\"\nmatch = {{ ports = [{other}] }}\naction = {{ type = \"forward\", targets = [{{ host = \"127.0.0.1\", port = {} }}] }}\n[admin]\nlisten = \"127.0.0.1:{admin}\"\n",
            untrusted_config(port, dead.port(), ""),
            live.port()
        )
    });
    for _ in 0..20 {
        let mut s = connect(port);
        let _ = s.write_all(b"hello");
        expect_closed_without_data(&mut s);
    }
    let port_s = port.to_string();
    proxy.wait_for_events(
        20,
        "connection refused",
        &[("port", &port_s), ("reason", "backend_unavailable")],
    );
    let target = format!("127.0.0.1:{}", dead.port());
    assert_eq!(proxy.events("backend connect failed", &[("target", &target)]).len(), 20);
    // Nothing is left: the process still answers and its connection count went back to zero.
    let last = wait_for(
        "no open connection in the metrics",
        || metrics_json(admin),
        |m| m["connections"]["active"] == 0,
    );
    assert_eq!(last["refused"]["backend_unavailable"], 20, "{}", last["refused"]);
    assert_eq!(get(admin, "/healthz").status, 200);
    let mut s = connect(other);
    assert_eq!(echo_roundtrip(&mut s, b"still serving").unwrap(), b"still serving");
}

#[test]
fn backend_not_answering_is_closed_by_inactivity_and_connect_timeouts() {
    // Accepted by the kernel, never read: the transfer stalls, inactivity_timeout (1 s) closes it.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_port = silent.local_addr().unwrap().port();
    // The close of a served connection is logged at debug level.
    let debug = [("RUST_LOG", "info,smartproxy_engine::pipeline::close=debug")];
    let (mut proxy, [port]) =
        Proxy::start_on_with("toml", &debug, |[port]| untrusted_config(port, silent_port, ""));
    let mut s = connect(port);
    s.write_all(b"hello").unwrap();
    // The proxy forwards "hello" after this instant: the last activity.
    let written = Instant::now();
    let closed = expect_closed_without_data(&mut s);
    // Idleness is checked every quarter of the timeout: the close comes between 1 and 1.5
    // timeouts after the last byte moved.
    let t = Duration::from_secs(1);
    assert_within("closed by inactivity", closed - written, t - EARLY, t + t / 2 + LATE);
    proxy.wait_for_event(
        "connection closed",
        &[("port", &port.to_string()), ("reason", "inactivity_timeout")],
    );

    // A listener whose accept queue is full drops SYNs: the connect itself hangs, and the
    // route's connect_timeout ends it.
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into()).unwrap();
    sock.listen(0).unwrap();
    let full: SocketAddr = sock.local_addr().unwrap().as_socket().unwrap();
    let _fillers: Vec<_> = (0..4)
        .map(|_| {
            let s =
                socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
            s.set_nonblocking(true).unwrap();
            let _ = s.connect(&full.into());
            s
        })
        .collect();
    // With a backlog of 0 the queue is full with one connection in it.
    let mut queued = Vec::new();
    wait_until("the backend's accept queue full", || {
        queued = listeners(full.port());
        queued.iter().any(|(_, q)| *q >= 1)
    });
    let (mut proxy2, [port2]) = Proxy::start_on(|[port2]| {
        untrusted_config(port2, full.port(), ", connect_timeout = \"1s\"")
    });
    // The proxy's connect to the backend begins after this instant (at the accept).
    let started = Instant::now();
    let mut s = connect(port2);
    let _ = s.write_all(b"hello");
    let closed = expect_closed_without_data(&mut s);
    let t = Duration::from_secs(1);
    assert_within("closed by the connect timeout", closed - started, t - EARLY, t + LATE);
    proxy2.wait_for_event(
        "backend connect failed",
        &[("target", &full.to_string()), ("error", "no answer within 1s")],
    );
    proxy2.wait_for_event(
        "connection refused",
        &[("port", &port2.to_string()), ("reason", "backend_unavailable")],
    );
}
