//! Who may send a PROXY header: trusted peers (`proxy_ips`) must, everyone else must not.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use smartproxy_tests::*;

fn config(port: u16, backend: u16, proxy_ips: &str, extra: &str) -> String {
    format!(
        r#"
bind = ["127.0.0.1"]
proxy_ips = [{proxy_ips}]
proxy_protocol_timeout = "2s"
{extra}

[[routes]]
name = "r"
match = {{ ports = [{port}] }}
action = {{ type = "forward", targets = [{{ host = "127.0.0.1", port = {backend} }}] }}
"#
    )
}

const V2_SIGNATURE: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";

#[test]
fn untrusted_peer_sending_proxy_header_is_refused_and_nothing_reaches_the_backend() {
    let backend = Backend::echo();
    let (mut proxy, [port]) =
        Proxy::start_on(|[port]| config(port, backend.port(), "\"127.0.0.9\"", ""));
    for header in [
        &b"PROXY TCP4 1.2.3.4 5.6.7.8 1111 2222\r\nhello"[..],
        &[V2_SIGNATURE, &[0x21, 0x11, 0, 12, 1, 2, 3, 4, 5, 6, 7, 8, 0, 1, 0, 2], b"hello"]
            .concat(),
    ] {
        let mut s = connect(port);
        s.write_all(header).unwrap();
        let (got, _) = read_to_end(&mut s);
        assert!(got.is_empty(), "refused: nothing comes back");
    }
    // Both refused for their header, from the peer's own address: the refusal comes before
    // any backend connection, so once both are logged nothing can reach the backend.
    proxy.wait_for_events(
        2,
        "connection refused",
        &[
            ("client", "127.0.0.1:*"),
            ("port", &port.to_string()),
            ("reason", "proxy_header_untrusted"),
        ],
    );
    assert!(backend.seen().is_empty(), "nothing reached the backend: {:?}", backend.seen());
    // The spoofed address never shows up as a client anywhere.
    let out = proxy.output();
    assert!(!out.contains("1.2.3.4"), "{out}");
}

#[test]
fn trusted_peer_without_header_is_refused() {
    let backend = Backend::echo();
    let (mut proxy, [port]) =
        Proxy::start_on(|[port]| config(port, backend.port(), "\"127.0.0.1\"", ""));
    let port_s = port.to_string();
    let mut s = connect(port);
    s.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
    expect_closed_without_data(&mut s);
    proxy.wait_for_event(
        "connection refused",
        &[
            ("port", &port_s),
            ("reason", "proxy_header_required"),
            ("detail", "connection does not start with a PROXY header"),
        ],
    );
    // A silent trusted peer is closed at the header deadline (2 s here, counted from the
    // accept, which comes after `started`), with a scheduling margin.
    let started = Instant::now();
    let mut silent = connect(port);
    let closed = expect_closed_without_data(&mut silent);
    let t = Duration::from_secs(2);
    assert_within(
        "the silent peer was closed",
        closed - started,
        t - Duration::from_millis(50),
        t + Duration::from_secs(1),
    );
    proxy.wait_for_event(
        "connection refused",
        &[
            ("port", &port_s),
            ("reason", "proxy_header_timeout"),
            ("detail", "no complete PROXY header within 2s"),
        ],
    );
    assert!(backend.seen().is_empty());
}

#[test]
fn trusted_peer_without_header_passes_when_optional() {
    let backend = Backend::echo();
    // Accepted headers are logged at debug level.
    let debug = [("RUST_LOG", "info,smartproxy_engine::observe=debug")];
    let (mut proxy, [port]) = Proxy::start_on_with("toml", &debug, |[port]| {
        config(port, backend.port(), "\"127.0.0.0/8\"", "proxy_protocol_optional = true")
    });
    let mut s = connect(port);
    assert_eq!(echo_roundtrip(&mut s, b"plain bytes").unwrap(), b"plain bytes");
    assert!(proxy.events("PROXY header accepted", &[]).is_empty(), "no header, none accepted");
    // And with a header it still works, from the header's address.
    let mut s = connect(port);
    s.write_all(b"PROXY TCP4 192.0.2.7 127.0.0.1 4000 80\r\nafter").unwrap();
    let mut got = [0u8; 5];
    s.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"after");
    proxy.wait_for_event("PROXY header accepted", &[("client", "192.0.2.7:4000")]);
    assert_eq!(backend.seen().len(), 2);
}

#[test]
fn connection_not_from_a_proxy_without_header_is_forwarded_untouched() {
    let backend = Backend::echo();
    let (_proxy, [port]) =
        Proxy::start_on(|[port]| config(port, backend.port(), "\"127.0.0.9\"", ""));
    let mut s = connect_from(Ipv4Addr::new(127, 0, 0, 3), SocketAddr::from(([127, 0, 0, 1], port)))
        .unwrap();
    // Bytes that start like nothing in particular, including a prefix of "PROXY".
    let payload: Vec<u8> =
        b"PROX is not PROXY\r\n".iter().copied().chain((0..=255u8).cycle().take(100_000)).collect();
    s.write_all(&payload).unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let (got, closed) = read_to_end(&mut s);
    assert!(closed);
    assert_eq!(got.len(), payload.len());
    assert!(got == payload, "byte-exact");
    assert_eq!(backend.seen().len(), 1);
}

#[test]
fn server_speaks_first_protocol_works_for_an_untrusted_silent_client() {
    let backend = Backend::start(false, Mode::TellAddr);
    let (_proxy, [port]) =
        Proxy::start_on(|[port]| config(port, backend.port(), "\"127.0.0.9\"", ""));
    let mut s = connect(port);
    let mut line = [0u8; 10];
    s.read_exact(&mut line).unwrap();
    assert!(line.starts_with(b"127.0.0.1:"), "{:?}", String::from_utf8_lossy(&line));
}
