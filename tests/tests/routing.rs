//! Routing with real clients: SNI passthrough of two domains to two TLS backends through one
//! port (openssl s_client, curl, and a ClientHello written one byte at a time), socket
//! handlers checked with curl, and route allow/block lists and limits applied to the real
//! client behind haproxy's PROXY v2.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use smartproxy_tests::*;

const HEAD: &str = "bind = [\"127.0.0.1\"]\n";

fn passthrough(name: &str, port: u16, domain: &str, backend: u16) -> String {
    format!(
        r#"
[[routes]]
name = "{name}"
match = {{ ports = [{port}], domains = ["{domain}"] }}
action = {{ type = "forward", targets = [{{ host = "127.0.0.1", port = {backend} }}], tls = {{ mode = "passthrough" }} }}
"#
    )
}

struct TwoSites {
    pki: Pki,
    a: LeafFiles,
    b: LeafFiles,
    _servers: (OpensslServer, OpensslServer),
    port: u16,
    _proxy: Proxy,
}

fn two_tls_sites() -> TwoSites {
    let pki = Pki::new();
    let a = pki.leaf("a", &["a.test"]);
    let b = pki.leaf("b", &["b.test"]);
    let (sa, sb) = (OpensslServer::start(&a), OpensslServer::start(&b));
    let (proxy, [port]) = Proxy::start_on(|[port]| {
        format!(
            "{HEAD}{}{}",
            passthrough("a", port, "a.test", sa.port),
            passthrough("b", port, "b.test", sb.port)
        )
    });
    TwoSites { pki, a, b, _servers: (sa, sb), port, _proxy: proxy }
}

#[test]
fn sni_routes_two_domains_to_two_tls_backends_through_one_port() {
    let t = two_tls_sites();
    let ca = t.pki.ca_pem.to_string_lossy().into_owned();
    for domain in ["a.test", "b.test", "a.test"] {
        let subject = served_subject(t.port, domain);
        assert!(subject.contains(&format!("CN = {domain}")), "{domain}: {subject}");
        let resolve = format!("{domain}:{}:127.0.0.1", t.port);
        let (code, body, err) = curl(&[
            "--cacert",
            &ca,
            "--resolve",
            &resolve,
            &format!("https://{domain}:{}/", t.port),
        ]);
        assert_eq!(code, 0, "{domain}: {err}");
        assert!(body.contains("Cipher"), "{body}");
    }
    // An unknown name matches no route: closed, no certificate.
    assert_eq!(served_subject(t.port, "c.test"), "");
}

/// Writes a real rustls ClientHello one byte per write, each once the proxy has read the one
/// before (so each byte comes in a read of its own), then finishes the handshake and an HTTP
/// request; returns the server's leaf certificate and the response.
fn fragmented_hello(
    port: u16,
    ca: &std::path::Path,
    sni: &str,
) -> (CertificateDer<'static>, String) {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let name = ServerName::try_from(sni.to_owned()).unwrap();
    let mut conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let mut hello = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut hello).unwrap();
    }
    assert!(hello.len() > 100 && hello[0] == 0x16, "a ClientHello record");
    let mut tcp = connect(port);
    tcp.set_nodelay(true).unwrap();
    let me = tcp.local_addr().unwrap().port();
    for byte in &hello {
        tcp.write_all(std::slice::from_ref(byte)).unwrap();
        wait_consumed(port, me);
    }
    let mut tls = rustls::Stream::new(&mut conn, &mut tcp);
    tls.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
    let mut body = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tls.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => body.extend_from_slice(&buf[..n]),
        }
    }
    let leaf = conn.peer_certificates().expect("handshake done")[0].clone().into_owned();
    (leaf, String::from_utf8_lossy(&body).into_owned())
}

#[test]
fn a_client_hello_sent_one_byte_per_write_still_routes() {
    let t = two_tls_sites();
    for (sni, leaf) in [("b.test", &t.b), ("a.test", &t.a)] {
        let expected = CertificateDer::from_pem_file(&leaf.cert).unwrap();
        let (got, body) = fragmented_hello(t.port, &t.pki.ca_pem, sni);
        assert_eq!(got, expected, "{sni} reached its own backend");
        assert!(body.contains("Cipher"), "{sni}: {body}");
    }
}

#[test]
fn block_and_static_handlers_answer_curl() {
    let (_proxy, [block, close, stat]) = Proxy::start_on(|[block, close, stat]| {
        format!(
            r#"{HEAD}
[[routes]]
name = "blocked"
match = {{ ports = [{block}] }}
action = {{ type = "socket-handler", handler = "block", status = 403, body = "go away" }}

[[routes]]
name = "closed"
match = {{ ports = [{close}] }}
action = {{ type = "socket-handler", handler = "block" }}

[[routes]]
name = "static"
match = {{ ports = [{stat}] }}
action = {{ type = "socket-handler", handler = "static", status = 200, headers = {{ "X-Served-By" = "smartproxy" }}, body = "hello static" }}
"#
        )
    });
    let (code, out, err) =
        curl(&["-w", "\n%{http_code}", &format!("http://127.0.0.1:{block}/anything")]);
    assert_eq!((code, out.as_str()), (0, "go away\n403"), "{err}");
    let (code, _, err) = curl(&[&format!("http://127.0.0.1:{close}/")]);
    assert_eq!(code, 52, "empty reply: {err}");
    let (code, out, err) = curl(&["-i", &format!("http://127.0.0.1:{stat}/x")]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(out.to_ascii_lowercase().contains("x-served-by: smartproxy"), "{out}");
    assert!(out.ends_with("hello static"), "{out}");
}

/// haproxy in front of each of `backs` (sending PROXY v2); returns it and its front ports.
fn haproxy_front<const N: usize>(backs: [u16; N]) -> (Haproxy, [u16; N]) {
    Haproxy::start(|fronts: [u16; N]| {
        let mut cfg = String::from(
            "global\n  maxconn 200\ndefaults\n  mode tcp\n  timeout connect 5s\n  timeout client 30s\n  timeout server 30s\n",
        );
        for (i, (front, back)) in fronts.iter().zip(backs).enumerate() {
            cfg.push_str(&format!(
                "listen front{i}\n  bind 127.0.0.1:{front}\n  server sp 127.0.0.1:{back} send-proxy-v2\n"
            ));
        }
        cfg
    })
}

fn from(ip: u8, port: u16) -> std::net::TcpStream {
    connect_from(Ipv4Addr::new(127, 0, 0, ip), SocketAddr::from(([127, 0, 0, 1], port))).unwrap()
}

/// Served: the echo comes back. Refused: closed with nothing.
fn served(s: &mut std::net::TcpStream) -> bool {
    match echo_roundtrip(s, b"ping") {
        Ok(b) => b == b"ping",
        Err(_) => false,
    }
}

#[test]
fn allow_block_lists_and_route_limits_apply_to_the_real_client_behind_proxy_v2() {
    let backend = Backend::echo();
    let b = backend.port();
    let (mut proxy, [sp_lists, sp_rate]) = Proxy::start_on(|[sp_lists, sp_rate]| {
        format!(
            r#"{HEAD}proxy_ips = ["127.0.0.1"]

[[routes]]
name = "guarded"
match = {{ ports = [{sp_lists}] }}
action = {{ type = "forward", targets = [{{ host = "127.0.0.1", port = {b} }}] }}
security = {{ ip_allow_list = ["127.0.0.0/29"], ip_block_list = ["127.0.0.3"], max_connections_per_ip = 1 }}

[[routes]]
name = "rated"
match = {{ ports = [{sp_rate}] }}
action = {{ type = "forward", targets = [{{ host = "127.0.0.1", port = {b} }}] }}
security = {{ rate_limit_per_minute = 3 }}
"#
        )
    });
    let (_hp, [hp_lists, hp_rate]) = haproxy_front([sp_lists, sp_rate]);

    // Allowed client; a second connection from the same client is over the route's per-IP
    // limit while another client is still served.
    let mut first = from(2, hp_lists);
    assert!(served(&mut first));
    let mut second = from(2, hp_lists);
    assert!(!served(&mut second), "second connection of 127.0.0.2 refused");
    let mut other = from(5, hp_lists);
    assert!(served(&mut other), "127.0.0.5 served meanwhile");
    drop(first);
    // The slot comes back once the proxy has closed the first connection.
    wait_until("127.0.0.2 served again", || served(&mut from(2, hp_lists)));

    // Blocked (in the allow range, but on the block list) and outside the allow list.
    assert!(!served(&mut from(3, hp_lists)), "127.0.0.3 is blocked");
    assert!(!served(&mut from(9, hp_lists)), "127.0.0.9 is not allowed");

    // Rate: 3 new connections per minute per client; the 4th is refused, another client is not.
    for i in 0..3 {
        assert!(served(&mut from(20, hp_rate)), "connection {i} of 127.0.0.20");
    }
    assert!(!served(&mut from(20, hp_rate)), "4th connection in a minute refused");
    assert!(served(&mut from(21, hp_rate)), "127.0.0.21 has its own budget");

    // Each refusal logged with the real client, not haproxy's address.
    let (lists, rate) = (sp_lists.to_string(), sp_rate.to_string());
    for (client, port, reason) in [
        ("127.0.0.2:*", &lists, "route_ip_limit"),
        ("127.0.0.3:*", &lists, "blocked"),
        ("127.0.0.9:*", &lists, "blocked"),
        ("127.0.0.20:*", &rate, "route_ip_limit"),
    ] {
        proxy.wait_for_event(
            "connection refused",
            &[("client", client), ("port", port), ("reason", reason)],
        );
    }
    let refusals = proxy.events("connection refused", &[]);
    assert!(
        refusals.iter().all(|l| !l.contains("client=127.0.0.1:")),
        "no refusal of haproxy's own address: {refusals:#?}"
    );
}
