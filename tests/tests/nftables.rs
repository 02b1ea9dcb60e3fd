//! Kernel forwarding (`forwarding_engine = "nftables"`) through the real binary, in network
//! namespaces the test creates (client, proxy, backend; see the support module of
//! crates/nftables, shared here): `smartproxy run` runs inside the proxy namespace
//! (`ip netns exec`), its admin API is asked from inside it, and no address or rule exists
//! outside the namespaces.
//!
//! Counters are IP bytes, as the kernel counts them: a UDP datagram of n payload bytes counts
//! n + 28 (IPv4 + UDP headers), exactly; a TCP segment counts its payload plus its IP and TCP
//! headers (40 bytes plus options).

#[path = "../../crates/nftables/tests/support/mod.rs"]
mod support;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use serde_json::Value;
use smartproxy_tests::{Proxy, require, smartproxy_bin};
use support::*;

/// The admin API inside the proxy namespace (a fixed port is safe there: the namespace is
/// this test's own).
const ADMIN: &str = "127.0.0.1:9900";

/// A configuration with an admin API, 1 s samples, and `routes`.
fn config(routes: &str) -> String {
    format!(
        r#"
[admin]
listen = "{ADMIN}"

[metrics]
sample_interval = "1s"

[defaults]
shutdown_grace = "1s"

{routes}
"#
    )
}

/// A proxied route on port 8080 to the backend, beside the kernel routes.
const PROXIED: &str = r#"
[[routes]]
name = "web"
match = { ports = [8080] }
action = { type = "forward", targets = [{ host = "10.200.2.2", port = 6000 }] }
"#;

fn kernel_route(name: &str, port: u16, target: &str, extra: &str) -> String {
    format!(
        r#"
[[routes]]
name = "{name}"
match = {{ ports = [{port}] }}
action = {{ type = "forward", targets = [{{ host = "{target}", port = 6000 }}], forwarding_engine = "nftables"{extra} }}
"#
    )
}

/// `smartproxy run` inside the proxy namespace (`wrapper` goes between `ip netns exec NS`
/// and the binary), waiting until `log` is printed.
fn start(topo: &Topology, wrapper: &[&str], config: &str, ports: &[u16], log: &str) -> Proxy {
    let mut all = vec!["ip", "netns", "exec", topo.proxy.name()];
    all.extend_from_slice(wrapper);
    let mut p = Proxy::start_wrapped(&all, config, "toml", ports, &[]);
    p.wait_for_log(log);
    p.wait_for_log("admin API listening");
    p
}

const APPLIED: &str = "kernel forwarding rules applied";

/// `GET path` from inside the proxy namespace: (status, body).
fn admin_get(topo: &Topology, path: &str) -> (u16, String) {
    let path = path.to_owned();
    let (status, body) = topo.proxy.enter(move || {
        let mut s = TcpStream::connect(ADMIN).unwrap_or_else(|e| panic!("admin API: {e}"));
        s.set_read_timeout(Some(PATIENCE)).expect("timeout");
        write!(s, "GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n").expect("send");
        let mut raw = String::new();
        s.read_to_string(&mut raw).expect("response");
        let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
        let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        (status, body.to_owned())
    });
    (status, body)
}

fn admin_json(topo: &Topology, path: &str) -> Value {
    let (status, body) = admin_get(topo, path);
    assert_eq!(status, 200, "GET {path}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: {e}: {body}"))
}

/// The route `name` of `/metrics/json`.
fn route_metrics(topo: &Topology, name: &str) -> Value {
    let snap = admin_json(topo, "/metrics/json");
    let routes = snap["routes"].as_array().cloned().unwrap_or_default();
    routes.into_iter().find(|r| r["name"] == name).unwrap_or_else(|| panic!("no route {name}"))
}

/// The counters of route `name` in `/api/nftables`.
fn kernel_counters(topo: &Topology, name: &str) -> Value {
    let status = admin_json(topo, "/api/nftables");
    let routes = status["routes"].as_array().cloned().unwrap_or_default();
    let r = routes.into_iter().find(|r| r["name"] == name);
    r.map(|r| r["counters"].clone()).unwrap_or_else(|| panic!("no route {name} in {status}"))
}

fn table_exists(topo: &Topology) -> bool {
    topo.proxy.nft_text(&["list", "table", "inet", "smartproxy"]).is_ok()
}

fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a number: {v}"))
}

/// Datagrams from the client through `to`; returns what came back.
fn udp_exchange(topo: &Topology, to: SocketAddr, sent: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
    topo.client.enter(move || {
        let s = UdpSocket::bind(sa(CLIENT, 0)).expect("bind");
        s.set_read_timeout(Some(PATIENCE)).expect("timeout");
        s.connect(to).expect("connect");
        let mut back = Vec::new();
        let mut buf = vec![0u8; 2048];
        for d in &sent {
            s.send(d).expect("send");
            let n = s.recv(&mut buf).expect("echo");
            back.push(buf[..n].to_vec());
        }
        back
    })
}

#[test]
fn tcp_and_udp_are_forwarded_and_counted_in_the_route_series() {
    let topo = Topology::new();
    let _tcp = TcpEcho::start(&topo.backend, sa(BACKEND, 6000));
    let udp = UdpEcho::start(&topo.backend, sa(BACKEND, 5353));
    let routes = format!(
        "{}{}\n{PROXIED}",
        kernel_route("db", 5432, BACKEND, ", nftables = { preserve_source_ip = true }"),
        r#"
[[routes]]
name = "dns"
match = { ports = [53] }
action = { type = "forward", targets = [{ host = "10.200.2.2", port = 5353 }], forwarding_engine = "nftables", nftables = { protocol = "udp" } }
"#,
    );
    let proxy = start(&topo, &[], &config(&routes), &[8080], APPLIED);

    // TCP, source preserved, byte-exact.
    let mut db = open(&topo.client, Some(CLIENT), sa(PROXY, 5432));
    assert_eq!(db.backend, sa(BACKEND, 6000));
    assert_eq!(
        db.seen_as.ip(),
        sa(CLIENT, 0).ip(),
        "preserve_source_ip: the backend sees the client"
    );
    let data = pattern(1 << 20, 7);
    assert!(db.round_trip(&data) == data, "1 MiB through the kernel route came back changed");
    let seen_as = db.seen_as;
    db.finish();

    // UDP, masqueraded, byte-exact.
    let sizes = [1usize, 100, 512, 1000, 1400, 7, 1200];
    let sent: Vec<Vec<u8>> = sizes.iter().enumerate().map(|(i, &n)| pattern(n, i as u8)).collect();
    let back = udp_exchange(&topo, sa(PROXY, 53), sent.clone());
    let expected: Vec<Vec<u8>> = sent.iter().map(|d| [d.as_slice(), UDP_SUFFIX].concat()).collect();
    assert!(back == expected, "the echoed datagrams differ from the sent ones");
    let peer = udp.peers.recv_timeout(PATIENCE).expect("a datagram reached the backend");
    assert_eq!(peer.ip(), sa(PROXY_INSIDE, 0).ip(), "masqueraded to the proxy's address");

    // The proxied route of the same process still serves, on its own port.
    let mut web = open(&topo.client, Some(CLIENT), sa(PROXY, 8080));
    assert_eq!(
        web.seen_as.ip(),
        sa(PROXY_INSIDE, 0).ip(),
        "the proxy connects from its own address"
    );
    assert_eq!(web.round_trip(b"through the proxy"), b"through the proxy");
    web.finish();

    // UDP: exactly payload + 28 per datagram each way, one flow, in the route's series.
    let n = sizes.len() as u64;
    let bytes_in: u64 = sizes.iter().map(|&s| s as u64 + 28).sum();
    let bytes_out = bytes_in + n * UDP_SUFFIX.len() as u64;
    let deadline = Instant::now() + PATIENCE;
    let dns = loop {
        let r = route_metrics(&topo, "dns");
        if (u(&r["bytes_in"]), u(&r["bytes_out"])) == (bytes_in, bytes_out)
            || Instant::now() > deadline
        {
            break r;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(
        (u(&dns["bytes_in"]), u(&dns["bytes_out"]), u(&dns["total"]), u(&dns["active"])),
        (bytes_in, bytes_out, 1, 0),
        "the dns route's series: {dns}"
    );
    let c = kernel_counters(&topo, "dns");
    assert_eq!((u(&c["packets_in"]), u(&c["packets_out"]), u(&c["connections"])), (n, n, 1), "{c}");

    // TCP: the series equals the kernel's counters once they stop moving; each packet adds
    // 40-60 header bytes (IPv4 + TCP with options) to the payload.
    let (db_metrics, c) = eventually("the db series to catch up with the kernel", PATIENCE, || {
        let c = kernel_counters(&topo, "db");
        let m = route_metrics(&topo, "db");
        (u(&m["bytes_in"]) == u(&c["bytes_in"]) && u(&m["bytes_out"]) == u(&c["bytes_out"]))
            .then_some((m, c))
    });
    // Out: the echo plus the greeting line (`BACKEND:6000 CLIENT:PORT\n`). What the sender
    // retransmitted is counted too (a busy machine drops packets on veth backlogs; each
    // retransmitted segment is at most one 64 KiB GSO packet), as in crates/nftables' tests.
    let greeting = format!("{} {}\n", sa(BACKEND, 6000), seen_as).len() as u64;
    for (dir, payload, packets, sender) in [
        ("in", data.len() as u64, u(&c["packets_in"]), &topo.client),
        ("out", data.len() as u64 + greeting, u(&c["packets_out"]), &topo.backend),
    ] {
        let bytes = u(&c[format!("bytes_{dir}").as_str()]);
        let headers =
            bytes.checked_sub(payload).unwrap_or_else(|| panic!("{dir}: {bytes} < {payload}"));
        let retransmitted = sender.tcp_retransmitted_segments();
        assert!(
            headers >= 40 * packets && headers <= 60 * packets + 256 + retransmitted * 65536,
            "{dir}: {bytes} bytes in {packets} packets for {payload} payload bytes \
             ({retransmitted} segments retransmitted)"
        );
    }
    assert_eq!(u(&db_metrics["total"]), 1, "one connection: {db_metrics}");

    // Prometheus shows the kernel routes like the others.
    let (status, text) = admin_get(&topo, "/metrics");
    assert_eq!(status, 200);
    let line = text
        .lines()
        .find(|l| {
            l.contains("route=\"dns\"") && l.contains("bytes") && l.contains("direction=\"in\"")
        })
        .unwrap_or_else(|| panic!("no dns bytes series in\n{text}"));
    assert!(line.ends_with(&format!(" {bytes_in}")), "{line}");

    // /api/nftables: the table as applied.
    let status = admin_json(&topo, "/api/nftables");
    assert_eq!(status["present"], true, "{status}");
    assert_eq!(status["owned"], true);
    assert_eq!(status["configured"], serde_json::json!(["db", "dns"]));
    assert_eq!(status["error"], Value::Null);
    let routes = status["routes"].as_array().expect("routes");
    assert_eq!(routes[0]["name"], "db");
    assert_eq!(routes[0]["preserve_source_ip"], true);
    assert_eq!(routes[0]["targets"][0]["address"], BACKEND);
    assert_eq!(routes[1]["protocol"], "udp");
    let chains: Vec<&str> = status["nftables"]
        .as_array()
        .expect("listing")
        .iter()
        .filter_map(|i| i["chain"]["name"].as_str())
        .collect();
    assert!(chains.contains(&"route-db") && chains.contains(&"route-dns"), "{chains:?}");
    drop(proxy);
}

#[test]
fn reload_changes_a_target_and_established_flows_keep_theirs() {
    let topo = Topology::new();
    let _one = TcpEcho::start(&topo.backend, sa(BACKEND, 6000));
    let _two = TcpEcho::start(&topo.backend, sa(BACKEND2, 6000));
    let mut proxy =
        start(&topo, &[], &config(&kernel_route("db", 5432, BACKEND, "")), &[], APPLIED);

    let mut before = open(&topo.client, Some(CLIENT), sa(PROXY, 5432));
    assert_eq!(before.backend, sa(BACKEND, 6000));
    assert_eq!(before.seen_as.ip(), sa(PROXY_INSIDE, 0).ip(), "masqueraded by default");
    assert_eq!(before.round_trip(b"first"), b"first");

    proxy.reload(&config(&kernel_route("db", 5432, BACKEND2, "")));
    // The reload logs its end after the rules are applied: wait for both.
    proxy.wait_for_output("the second apply and the reload's end", |o| {
        o.matches(APPLIED).count() >= 2 && o.contains("configuration reloaded")
    });
    assert!(proxy.output().contains("configuration reloaded"), "{}", proxy.output());

    let after = open(&topo.client, Some(CLIENT), sa(PROXY, 5432));
    assert_eq!(after.backend, sa(BACKEND2, 6000), "new flows go to the new target");
    after.finish();
    let data = pattern(256 * 1024, 3);
    assert!(before.round_trip(&data) == data, "the established flow broke");
    before.finish();
    let c = kernel_counters(&topo, "db");
    assert_eq!(u(&c["connections"]), 2, "the counter continues across the reload: {c}");
    let status = admin_json(&topo, "/api/nftables");
    assert_eq!(status["routes"][0]["targets"][0]["address"], BACKEND2);
    assert_eq!(proxy.terminate(), Some(0));
}

#[test]
fn sigterm_removes_the_rules() {
    let topo = Topology::new();
    let _tcp = TcpEcho::start(&topo.backend, sa(BACKEND, 6000));
    let proxy = start(&topo, &[], &config(&kernel_route("db", 5432, BACKEND, "")), &[], APPLIED);
    assert!(table_exists(&topo));
    let c = open(&topo.client, None, sa(PROXY, 5432));
    c.finish();
    assert_eq!(proxy.terminate(), Some(0));
    assert!(!table_exists(&topo), "the table is gone after SIGTERM");
    assert!(topo.proxy.nft_text(&["list", "ruleset"]).expect("ruleset").trim().is_empty());
    let e = connect(&topo.client, None, sa(PROXY, 5432), DROPPED).map(|_| ()).expect_err("gone");
    assert_eq!(e.kind(), ErrorKind::ConnectionRefused, "nothing forwards or listens: {e}");
}

#[test]
fn after_sigkill_the_table_stays_and_the_next_start_cleans_it_up() {
    let topo = Topology::new();
    let _one = TcpEcho::start(&topo.backend, sa(BACKEND, 6000));
    let _two = TcpEcho::start(&topo.backend, sa(BACKEND2, 6000));
    let first = start(&topo, &[], &config(&kernel_route("old", 5432, BACKEND, "")), &[], APPLIED);
    let c = open(&topo.client, None, sa(PROXY, 5432));
    c.finish();
    drop(first); // SIGKILL
    assert!(table_exists(&topo), "a killed process cannot remove its table");
    let c = open(&topo.client, None, sa(PROXY, 5432));
    assert_eq!(c.backend, sa(BACKEND, 6000), "the stale rules still forward");
    c.finish();

    let second = start(&topo, &[], &config(&kernel_route("new", 5433, BACKEND2, "")), &[], APPLIED);
    assert!(
        second.output().contains("removed the nftables table left by an earlier process"),
        "{}",
        second.output()
    );
    let status = admin_json(&topo, "/api/nftables");
    let names: Vec<&str> = status["routes"]
        .as_array()
        .expect("routes")
        .iter()
        .filter_map(|r| r["name"].as_str())
        .collect();
    assert_eq!(names, ["new"]);
    assert_eq!(status["routes"][0]["counters"]["connections"], 0, "counters start from zero");
    let e = connect(&topo.client, None, sa(PROXY, 5432), DROPPED).map(|_| ()).expect_err("old");
    assert_eq!(e.kind(), ErrorKind::ConnectionRefused, "the old route is gone: {e}");
    let c = open(&topo.client, None, sa(PROXY, 5433));
    assert_eq!(c.backend, sa(BACKEND2, 6000));
    c.finish();
    assert_eq!(second.terminate(), Some(0));
    assert!(!table_exists(&topo));
}

#[test]
fn a_start_that_fails_after_the_rules_were_written_removes_them() {
    let topo = Topology::new();
    // The admin address does not exist in the namespace: the start fails after the engine
    // (and its rules) started.
    // (Not loopback: allowed without a token only when said so.)
    let text = config(&kernel_route("db", 5432, BACKEND, ""))
        .replace(ADMIN, "10.9.9.9:9900\"\nallow_unauthenticated = true\n#\"");
    let netns = ["ip", "netns", "exec", topo.proxy.name()];
    let mut proxy = Proxy::start_wrapped(&netns, &text, "toml", &[], &[]);
    assert_eq!(proxy.wait_exit(), Some(1), "{}", proxy.output());
    let out = proxy.output();
    assert!(out.contains(APPLIED) && out.contains("cannot listen on 10.9.9.9:9900"), "{out}");
    assert!(out.contains("kernel forwarding rules removed"), "{out}");
    assert!(!table_exists(&topo), "no rules are left behind");
}

/// A missing `nft` (or capability) is an error for the kernel routes only.
fn proxied_routes_run_without_kernel_forwarding(wrapper: &[&str], expected: &str) {
    let topo = Topology::new();
    let _tcp = TcpEcho::start(&topo.backend, sa(BACKEND, 6000));
    let routes = format!("{}{PROXIED}", kernel_route("db", 5432, BACKEND, ""));
    let mut proxy = start(&topo, wrapper, &config(&routes), &[8080], "kernel forwarding failed");
    let out = proxy.output();
    let line = out.lines().find(|l| l.contains("kernel forwarding failed")).expect("the error");
    assert!(line.contains("ERROR") && line.contains("db") && line.contains(expected), "{line}");
    assert!(line.contains("these routes are not forwarded; the other routes run"), "{line}");

    let mut web = open(&topo.client, None, sa(PROXY, 8080));
    assert_eq!(web.round_trip(b"still served"), b"still served");
    web.finish();
    let status = admin_json(&topo, "/api/nftables");
    assert_eq!(status["configured"], serde_json::json!(["db"]));
    assert_eq!(status["owned"], false);
    let error = status["error"].as_str().unwrap_or_else(|| panic!("no error in {status}"));
    assert!(error.contains(expected), "{error}");
    assert!(!table_exists(&topo));
    // A reload says so too, and still applies the rest.
    proxy.reload(&config(&routes));
    proxy.wait_for_output("the reload", |o| o.contains("configuration reloaded"));
    assert_eq!(proxy.terminate(), Some(0));
}

#[test]
fn without_nft_the_proxied_routes_still_serve() {
    proxied_routes_run_without_kernel_forwarding(
        &["env", "PATH=/nonexistent"],
        "`nft` was not found; install nftables",
    );
}

#[test]
fn without_cap_net_admin_the_proxied_routes_still_serve() {
    require("setpriv", "util-linux");
    proxied_routes_run_without_kernel_forwarding(
        &["setpriv", "--bounding-set=-net_admin", "--inh-caps=-net_admin"],
        "CAP_NET_ADMIN is needed",
    );
}

#[test]
fn validate_refuses_what_the_kernel_cannot_honour() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("nft.toml");
    std::fs::write(
        &path,
        r#"[[routes]]
name = "web"
match = { ports = [8080] }
action = { type = "forward", targets = [{ host = "127.0.0.1", port = 9000 }] }

[[routes]]
name = "tls"
match = { ports = [443], domains = ["example.com"] }
action = { type = "forward", targets = [{ host = "10.0.0.5", port = 443 }], forwarding_engine = "nftables",
           tls = { mode = "passthrough" }, send_proxy_protocol = "v2" }

[[routes]]
name = "shared"
match = { ports = [8080] }
action = { type = "forward", targets = [{ host = "10.0.0.5", port = 80 }], forwarding_engine = "nftables" }

[[routes]]
name = "loopback"
match = { ports = [5432] }
action = { type = "forward", targets = [{ host = "127.0.0.1", port = 5432 }], forwarding_engine = "nftables" }

[[routes]]
name = "twice"
match = { ports = [5432] }
action = { type = "forward", targets = [{ host = "10.0.0.6", port = 5432 }], forwarding_engine = "nftables", nftables = { protocol = "all" } }
"#,
    )
    .expect("write");
    let out = std::process::Command::new(smartproxy_bin())
        .arg("validate")
        .arg("-c")
        .arg(&path)
        .output()
        .expect("run validate");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    for needle in [
        ":8: routes[1].match.domains: kernel forwarding (forwarding_engine = \"nftables\") matches on the port only",
        ":10: routes[1].action.tls: kernel forwarding (forwarding_engine = \"nftables\") cannot handle TLS",
        ":10: routes[1].action.send_proxy_protocol: kernel forwarding (forwarding_engine = \"nftables\") cannot send a PROXY header",
        ":14: routes[2].match.ports: TCP port 8080 is forwarded by the kernel for this route and is also a port of route `web` (routes[0])",
        ":20: routes[3].action.targets[0].host: kernel forwarding: `127.0.0.1` is a loopback address",
        ":24: routes[4].match.ports[0]: kernel forwarding: tcp port 5432 is already forwarded by route `loopback`",
    ] {
        assert!(err.contains(needle), "missing {needle:?} in:\n{err}");
    }
}
