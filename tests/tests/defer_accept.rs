//! `TCP_DEFER_ACCEPT` on ports where every client speaks first (issue 19): the kernel keeps a
//! connection that has sent nothing (its server side in `SYN_RECV`, although the client's
//! connect has completed) and hands it to the proxy with its first data, so that accept, the
//! first read and routing take one wake-up. Observed in the kernel's own socket table
//! (`/proc/net/tcp`), not by timing: the proxy's side of a connection is `SYN_RECV` (03)
//! while held, `ESTABLISHED` (01) once the kernel queued it for `accept`.

use std::io::Write;
use std::net::TcpStream;

use smartproxy_tests::*;

/// TCP states in `/proc/net/tcp`.
const ESTABLISHED: u8 = 0x01;
const SYN_RECV: u8 = 0x03;

/// The state of the proxy's side of the connection from local port `client` to `port`, if
/// the kernel lists it yet (the shared `/proc/net/tcp` reader).
fn server_side_state(port: u16, client: u16) -> Option<u8> {
    tcp_table()
        .into_iter()
        .find(|e| e.local_port == port && e.remote_port == client)
        .map(|e| e.state)
}

/// Waits until the proxy's side of `s` (connected to `port`) is listed in a state `want`
/// accepts; returns that state.
fn wait_state(s: &TcpStream, port: u16, what: &str, want: impl Fn(u8) -> bool) -> u8 {
    let client = s.local_addr().unwrap().port();
    let state = wait_for(
        &format!("127.0.0.1:{client} -> :{port} {what} on the proxy's side"),
        || server_side_state(port, client),
        |st| st.is_some_and(&want),
    );
    state.expect("listed")
}

/// Waits until the proxy's side of `s` is `ESTABLISHED`: the kernel queued it for `accept`.
fn wait_handed_over(s: &TcpStream, port: u16) {
    wait_state(s, port, "ESTABLISHED", |st| st == ESTABLISHED);
}

/// Connects to `port` and returns the state of the proxy's side once the handshake's last
/// ACK has certainly been processed: after a later connection to `probe` (no deferral) was
/// handed over. Without deferral the first is then `ESTABLISHED` too; held, `SYN_RECV`.
fn connect_and_look(port: u16, probe: u16) -> (TcpStream, u8) {
    let s = connect(port);
    wait_state(&s, port, "listed", |_| true);
    let later = connect(probe);
    wait_handed_over(&later, probe);
    let client = s.local_addr().unwrap().port();
    (s, server_side_state(port, client).expect("still listed"))
}

/// Sends one request on `s` and returns the response's status line.
fn request(mut s: TcpStream) -> String {
    s.write_all(b"GET / HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n").unwrap();
    let (raw, _) = read_to_end(&mut s);
    String::from_utf8_lossy(&raw).lines().next().unwrap_or_default().to_owned()
}

/// Routes on four ports: HTTP, port-only layer 4, TLS passthrough only, and a second layer-4
/// port (`probe`) that [`connect_and_look`] uses as its barrier and no reload changes.
fn config(ports: [u16; 4], backend: u16, defer: Option<bool>) -> String {
    let [http_port, l4_port, tls_port, probe] = ports;
    let defer = defer.map(|d| format!("defer_accept = {d}\n")).unwrap_or_default();
    format!(
        r#"bind = ["127.0.0.1"]
{defer}
[[routes]]
name = "http"
match = {{ ports = [{http_port}] }}
action = {{ type = "forward", targets = [{{ host = "127.0.0.1", port = {backend} }}], http = {{}} }}

[[routes]]
name = "l4"
match = {{ ports = [{l4_port}] }}
action = {{ type = "forward", targets = [{{ host = "127.0.0.1", port = {backend} }}] }}

[[routes]]
name = "tls"
match = {{ ports = [{tls_port}] }}
action = {{ type = "forward", targets = [{{ host = "127.0.0.1", port = {backend} }}], tls = {{ mode = "passthrough" }} }}

[[routes]]
name = "probe"
match = {{ ports = [{probe}] }}
action = {{ type = "forward", targets = [{{ host = "127.0.0.1", port = {backend} }}] }}
"#
    )
}

/// Default on: the HTTP port and the TLS-only port hold a silent connection in the kernel;
/// the port-only layer-4 route (whose backend might speak first, like SMTP) does not. The
/// held connection is served as soon as it sends, and one that stays silent is handed over
/// anyway after the kernel's SYN-ACK retransmission (about a second), so that the proxy's
/// own timeouts apply to it.
#[test]
fn client_first_ports_hold_silent_connections_in_the_kernel() {
    let backend = HttpBackend::start("deferred");
    let (proxy, [http_port, l4_port, tls_port, probe]) =
        Proxy::start_on(|ports| config(ports, backend.port(), None));

    let (s, state) = connect_and_look(http_port, probe);
    assert_eq!(state, SYN_RECV, "HTTP port: held until the first data");
    let status = request(s);
    assert!(status.starts_with("HTTP/1.1 200"), "served once it sent: {status:?}");

    let (_tls, state) = connect_and_look(tls_port, probe);
    assert_eq!(state, SYN_RECV, "TLS-only port: held until the ClientHello");

    let (_l4, state) = connect_and_look(l4_port, probe);
    assert_eq!(state, ESTABLISHED, "layer-4 port-only route: handed over at once");

    // Silent: handed over after the retransmitted SYN-ACK is acknowledged, without data.
    let (silent, state) = connect_and_look(http_port, probe);
    assert_eq!(state, SYN_RECV);
    wait_handed_over(&silent, http_port);
    let status = request(silent);
    assert!(status.starts_with("HTTP/1.1 200"), "silent, then a request: {status:?}");
    drop(proxy);
}

/// `defer_accept = false`: every port hands connections over at once.
#[test]
fn defer_accept_false_accepts_at_once() {
    let backend = HttpBackend::start("at once");
    let (_proxy, [http_port, _, tls_port, probe]) =
        Proxy::start_on(|ports| config(ports, backend.port(), Some(false)));
    let (s, state) = connect_and_look(http_port, probe);
    assert_eq!(state, ESTABLISHED, "HTTP port with defer_accept = false");
    assert!(request(s).starts_with("HTTP/1.1 200"));
    let (_tls, state) = connect_and_look(tls_port, probe);
    assert_eq!(state, ESTABLISHED, "TLS port with defer_accept = false");
}

/// A reload that turns a layer-4 port into an HTTP port sets the option on the socket that
/// keeps listening, and the reverse clears it.
#[test]
fn reload_sets_and_clears_defer_accept_on_kept_ports() {
    let backend = HttpBackend::start("reloaded");
    let (proxy, [http_port, l4_port, tls_port, probe]) =
        Proxy::start_on(|ports| config(ports, backend.port(), None));
    let (_s, state) = connect_and_look(http_port, probe);
    assert_eq!(state, SYN_RECV, "the HTTP port before the reload");
    let (_s, state) = connect_and_look(l4_port, probe);
    assert_eq!(state, ESTABLISHED, "the layer-4 port before the reload");

    // Swap the two ports' routes.
    proxy.reload(&config([l4_port, http_port, tls_port, probe], backend.port(), None));
    wait_until("the reload", || !proxy.events("configuration reloaded", &[]).is_empty());
    let (s, state) = connect_and_look(l4_port, probe);
    assert_eq!(state, SYN_RECV, "now an HTTP port: held");
    assert!(request(s).starts_with("HTTP/1.1 200"));
    let (_s, state) = connect_and_look(http_port, probe);
    assert_eq!(state, ESTABLISHED, "now a layer-4 port: handed over at once");
}

/// One keep-alive request on a new connection to `port`, its response read whole; then the
/// segments the proxy's side of that connection has sent (`ss -ti`'s `segs_out`).
fn segments_sent_for_one_request(port: u16) -> u64 {
    let mut s = connect(port);
    s.write_all(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n").unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let body_len = loop {
        let n = std::io::Read::read(&mut s, &mut buf).unwrap();
        assert!(n > 0, "closed before the response: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
        if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&got[..end]).to_ascii_lowercase();
            let len = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or_else(|| panic!("no content-length: {head}"));
            break end + 4 + len;
        }
    };
    while got.len() < body_len {
        let n = std::io::Read::read(&mut s, &mut buf).unwrap();
        assert!(n > 0, "closed inside the response");
        got.extend_from_slice(&buf[..n]);
    }
    let client = s.local_addr().unwrap().port();
    let filter = format!("( sport = :{port} and dport = :{client} )");
    let ss = require("ss", "iproute2");
    let out = std::process::Command::new(ss)
        .args(["-tinH", "state", "established", &filter])
        .output()
        .expect("ss runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.split_whitespace()
        .find_map(|f| f.strip_prefix("segs_out:"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no segs_out for :{port} <- :{client} in `ss -ti`: {text:?}"))
}

/// On a deferred port the proxy's side acknowledges a request with its answer instead of a
/// lone ACK first (`TCP_QUICKACK` cleared on the listener with `TCP_DEFER_ACCEPT`; accepted
/// sockets start in its delayed-ACK mode, as haproxy's `tcp-smart-accept`); with
/// `defer_accept = false` the kernel's quick-ACK start sends that ACK. Counted in the
/// kernel's own per-socket figure over 15 connections each (the median, so that a delayed-ACK
/// timer that fires under a loaded machine does not decide it).
#[test]
fn deferred_ports_answer_a_request_without_a_lone_ack() {
    let backend = HttpBackend::start("acks");
    let (_deferred, [deferred_port, ..]) =
        Proxy::start_on(|ports| config(ports, backend.port(), None));
    let (_immediate, [immediate_port, ..]) =
        Proxy::start_on(|ports| config(ports, backend.port(), Some(false)));
    let median = |port: u16| {
        let mut v: Vec<u64> = (0..15).map(|_| segments_sent_for_one_request(port)).collect();
        v.sort_unstable();
        (v[v.len() / 2], v)
    };
    let (deferred, d) = median(deferred_port);
    let (immediate, i) = median(immediate_port);
    assert_eq!(
        deferred + 1,
        immediate,
        "segments sent per request: deferred {d:?}, immediate {i:?}"
    );
}
