//! Interop with a real HAProxy (Debian's package): HAProxy `send-proxy-v2` into smartproxy, and
//! smartproxy `send_proxy_protocol` v1 / v2 into HAProxy `accept-proxy`, each checked on the
//! address the far side sees.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr};

use smartproxy_tests::*;

#[test]
fn haproxy_send_proxy_v2_into_smartproxy_keeps_the_client_address() {
    let backend = Backend::start(true, Mode::TellAddr);
    let (_sp, [sp_port]) = Proxy::start_on(|[sp_port]| {
        format!(
            r#"
bind = ["127.0.0.1"]
proxy_ips = ["127.0.0.1"]

[[routes]]
name = "from-haproxy"
match = {{ ports = [{sp_port}] }}
action = {{ type = "forward", targets = [{{ host = "127.0.0.1", port = {b} }}], send_proxy_protocol = "v2" }}
"#,
            b = backend.port()
        )
    });
    let (_hp, [hp_port]) = Haproxy::start(|[hp_port]| {
        format!(
            "global\n  maxconn 100\ndefaults\n  mode tcp\n  timeout connect 5s\n  timeout client 30s\n  timeout server 30s\n\
             listen front\n  bind 127.0.0.1:{hp_port}\n  server sp 127.0.0.1:{sp_port} send-proxy-v2\n"
        )
    });
    for last in [11u8, 12] {
        let client = Ipv4Addr::new(127, 0, 0, last);
        let mut s = connect_from(client, SocketAddr::from(([127, 0, 0, 1], hp_port))).unwrap();
        let mut line = String::new();
        let mut b = [0u8; 1];
        while s.read(&mut b).unwrap() == 1 && b[0] != b'\n' {
            line.push(b[0] as char);
        }
        let seen: SocketAddr = line.parse().unwrap();
        assert_eq!(seen.ip(), client, "haproxy -> smartproxy -> backend keeps the client");
        assert_eq!(seen.port(), s.local_addr().unwrap().port(), "and its port");
        assert_eq!(echo_roundtrip(&mut s, b"data").unwrap(), b"data");
    }
    assert!(backend.seen().iter().all(|s| s.proxy_version == Some(2)));
}

fn into_haproxy(version: &str) {
    // HAProxy answers every HTTP request with the source address it took from the PROXY header.
    let (_hp, [hp_port]) = Haproxy::start(|[hp_port]| {
        format!(
            "global\n  maxconn 100\ndefaults\n  mode http\n  timeout connect 5s\n  timeout client 30s\n  timeout server 30s\n\
             frontend front\n  bind 127.0.0.1:{hp_port} accept-proxy\n  \
             http-request return status 200 content-type text/plain lf-string \"%[src] %[src_port] %[dst] %[dst_port]\"\n"
        )
    });
    let (_sp, [sp_port]) = Proxy::start_on(|[sp_port]| {
        format!(
            r#"
bind = ["127.0.0.1"]

[[routes]]
name = "to-haproxy"
match = {{ ports = [{sp_port}] }}
action = {{ type = "forward", targets = [{{ host = "127.0.0.1", port = {hp_port} }}], send_proxy_protocol = "{version}" }}
"#
        )
    });
    let client = Ipv4Addr::new(127, 0, 0, 21);
    let mut s = connect_from(client, SocketAddr::from(([127, 0, 0, 1], sp_port))).unwrap();
    s.write_all(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
    let (resp, _) = read_to_end(&mut s);
    let resp = String::from_utf8_lossy(&resp);
    assert!(resp.starts_with("HTTP/1.0 200") || resp.starts_with("HTTP/1.1 200"), "{resp}");
    let body = resp.split("\r\n\r\n").nth(1).unwrap_or_default();
    let fields: Vec<&str> = body.split(' ').collect();
    assert_eq!(fields[0], "127.0.0.21", "haproxy saw the real client: {body}");
    assert_eq!(fields[1], s.local_addr().unwrap().port().to_string());
    assert_eq!(fields[2], "127.0.0.1");
    assert_eq!(
        fields[3],
        sp_port.to_string(),
        "destination is the address the client connected to"
    );
}

#[test]
fn smartproxy_send_proxy_v1_into_haproxy_accept_proxy() {
    into_haproxy("v1");
}

#[test]
fn smartproxy_send_proxy_v2_into_haproxy_accept_proxy() {
    into_haproxy("v2");
}
