//! The seed's proxy-chain scenario: client -> outer smartproxy (sends PROXY) -> inner
//! smartproxy (trusts the outer) -> backend. The inner proxy's per-IP limit and its logs see each
//! real client address, so one client over the limit is refused while the others pass
//! (SmartProxy's "connection limit accumulation" problem, solved).

use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr};

use smartproxy_tests::*;

fn chain(version: &str) {
    let backend = Backend::start(true, Mode::TellAddr);
    let (mut inner, [inner_port]) = Proxy::start_on(|[inner_port]| {
        format!(
            r#"
bind = ["127.0.0.1"]
proxy_ips = ["127.0.0.1"]

[defaults]
max_connections_per_ip = 2

[[routes]]
name = "inner"
match = {{ ports = [{inner_port}] }}
action = {{ type = "forward", targets = [{{ host = "127.0.0.1", port = {backend} }}], send_proxy_protocol = "v1" }}
"#,
            backend = backend.port()
        )
    });
    let (_outer, [outer_port]) = Proxy::start_on(|[outer_port]| {
        format!(
            r#"
bind = ["127.0.0.1"]

[[routes]]
name = "outer"
match = {{ ports = [{outer_port}] }}
action = {{ type = "forward", targets = [{{ host = "127.0.0.1", port = {inner_port} }}], send_proxy_protocol = "{version}" }}
"#
        )
    });
    let to = SocketAddr::from(([127, 0, 0, 1], outer_port));
    let clients =
        [Ipv4Addr::new(127, 0, 0, 2), Ipv4Addr::new(127, 0, 0, 3), Ipv4Addr::new(127, 0, 0, 4)];

    // Two connections from each client: all at the per-IP limit of the inner proxy, none over.
    let mut open = Vec::new();
    for ip in clients {
        for _ in 0..2 {
            let mut s = connect_from(ip, to).unwrap();
            let line = read_line(&mut s);
            let seen: SocketAddr =
                line.trim().parse().unwrap_or_else(|_| panic!("address line, got {line:?}"));
            assert_eq!(seen.ip(), ip, "the backend sees the real client through both proxies");
            assert_eq!(echo_roundtrip(&mut s, b"ping\n").unwrap(), b"ping\n");
            open.push(s);
        }
    }

    // A third connection from 127.0.0.4 is over the inner proxy's limit for that address only.
    let mut over = connect_from(clients[2], to).unwrap();
    let (got, _) = read_to_end(&mut over);
    assert!(got.is_empty(), "the connection over the limit is closed before reaching the backend");
    // Refused by the inner proxy for that client's address, which it logs.
    inner.wait_for_events(
        1,
        "connection refused",
        &[("client", "127.0.0.4:*"), ("port", &inner_port.to_string()), ("reason", "ip_limit")],
    );

    // The others still pass while those six stay open: a fresh client address is not affected.
    let mut fresh = connect_from(Ipv4Addr::new(127, 0, 0, 5), to).unwrap();
    assert!(read_line(&mut fresh).starts_with("127.0.0.5:"));

    // Closing one of 127.0.0.4's connections frees a slot for it again.
    drop(open.pop());
    wait_until("a slot for 127.0.0.4", || {
        let mut s = connect_from(clients[2], to).unwrap();
        let mut b = [0u8; 1];
        matches!(s.read(&mut b), Ok(1))
    });

    assert_eq!(
        backend.seen().iter().filter(|s| s.proxy_version == Some(1)).count(),
        backend.seen().len()
    );
    let out = inner.output();
    assert!(out.contains("127.0.0.4"), "the inner proxy logs the real client address:\n{out}");
    assert!(!out.contains("panicked"), "{out}");
}

fn read_line(s: &mut std::net::TcpStream) -> String {
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while s.read(&mut b).unwrap_or(0) == 1 {
        line.push(b[0]);
        if b[0] == b'\n' {
            break;
        }
    }
    String::from_utf8_lossy(&line).into_owned()
}

#[test]
fn chain_with_proxy_v2_keeps_real_client_per_ip_limits() {
    chain("v2");
}

#[test]
fn chain_with_proxy_v1_keeps_real_client_per_ip_limits() {
    chain("v1");
}
