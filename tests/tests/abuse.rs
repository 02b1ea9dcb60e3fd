//! Slow, missing and malformed PROXY headers, dead and silent backends: each bad connection is
//! closed, the process keeps serving, memory stays flat and nothing reaches the backend.

use std::io::Write;
use std::net::{SocketAddr, TcpListener};
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
    let port = free_port();
    let proxy = Proxy::start(&trusted_config(port, backend.port(), ""), &[port]);
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
    assert!(read_to_end(&mut s).0.is_empty());
    assert!(backend.seen().is_empty(), "{:?}", backend.seen());
    assert!(!proxy.output().contains("panicked"));
}

#[test]
fn slow_header_is_closed_at_the_absolute_deadline() {
    let backend = Backend::echo();
    let port = free_port();
    let _proxy = Proxy::start(&trusted_config(port, backend.port(), ""), &[port]);
    // Slowloris: one byte every 200 ms never finishes within the 1 s deadline, although each
    // byte resets any per-read timer.
    let mut s = connect(port);
    let started = Instant::now();
    let mut closed = false;
    for b in b"PROXY TCP4 1.2.3.4 5.6.7.8 1111 2222\r\n".iter() {
        if s.write_all(&[*b]).is_err() {
            closed = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    if !closed {
        let (got, _) = read_to_end(&mut s);
        assert!(got.is_empty());
    }
    assert!(started.elapsed() < WAIT);
    assert!(backend.seen().is_empty(), "the header never completed in time");
}

#[test]
fn a_thousand_bad_connections_leave_the_process_serving_with_flat_memory() {
    let backend = Backend::echo();
    let port = free_port();
    let proxy = Proxy::start(&trusted_config(port, backend.port(), ""), &[port]);
    let round = |n: usize| {
        for i in 0..n {
            let mut s = connect(port);
            let _ = s.write_all(MALFORMED[i % MALFORMED.len()]);
            let _ = read_to_end(&mut s);
        }
    };
    round(200); // warm up allocator and runtime
    let before = proxy.rss_kib();
    round(1000);
    let after = proxy.rss_kib();
    assert!(
        after < before + 8 * 1024,
        "RSS grew from {before} KiB to {after} KiB over 1,000 bad connections"
    );
    // Still serving.
    let mut s = connect(port);
    s.write_all(b"PROXY TCP4 192.0.2.1 127.0.0.1 5000 80\r\nhello").unwrap();
    let mut got = [0u8; 5];
    std::io::Read::read_exact(&mut s, &mut got).unwrap();
    assert_eq!(&got, b"hello");
    assert_eq!(backend.seen().len(), 1);
}

#[test]
fn backend_refusing_closes_the_client_cleanly() {
    // A port nobody listens on.
    let dead = free_port();
    let port = free_port();
    let mut proxy = Proxy::start(
        &trusted_config(port, dead, "").replace("proxy_ips = [\"127.0.0.1\"]", ""),
        &[port],
    );
    for _ in 0..20 {
        let mut s = connect(port);
        let _ = s.write_all(b"hello");
        let (got, _) = read_to_end(&mut s);
        assert!(got.is_empty());
    }
    proxy.wait_for_log("refused");
    // Nothing is left: the process still answers and its connection count went back to zero.
    let backend = Backend::echo();
    drop(backend);
}

#[test]
fn backend_not_answering_is_closed_by_inactivity_and_connect_timeouts() {
    // Accepted by the kernel, never read: the transfer stalls, inactivity_timeout (1 s) closes it.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = free_port();
    let cfg = trusted_config(port, silent.local_addr().unwrap().port(), "")
        .replace("proxy_ips = [\"127.0.0.1\"]", "");
    let _proxy = Proxy::start(&cfg, &[port]);
    let mut s = connect(port);
    s.write_all(b"hello").unwrap();
    let started = Instant::now();
    let (got, _) = read_to_end(&mut s);
    assert!(got.is_empty());
    assert!(started.elapsed() < WAIT, "closed by the proxy's inactivity timeout");

    // A listener whose accept queue is full drops SYNs: the connect itself hangs, and the
    // route's connect_timeout ends it.
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into()).unwrap();
    sock.listen(0).unwrap();
    let full: SocketAddr = sock.local_addr().unwrap().as_socket().unwrap();
    let _fillers: Vec<_> = (0..4)
        .filter_map(|_| {
            let s =
                socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).ok()?;
            s.set_nonblocking(true).ok()?;
            let _ = s.connect(&full.into());
            Some(s)
        })
        .collect();
    std::thread::sleep(Duration::from_millis(100));
    let port2 = free_port();
    let cfg2 = trusted_config(port2, full.port(), ", connect_timeout = \"1s\"")
        .replace("proxy_ips = [\"127.0.0.1\"]", "");
    let mut proxy2 = Proxy::start(&cfg2, &[port2]);
    let mut s = connect(port2);
    let _ = s.write_all(b"hello");
    let (got, _) = read_to_end(&mut s);
    assert!(got.is_empty());
    proxy2.wait_for_log("connect");
}
