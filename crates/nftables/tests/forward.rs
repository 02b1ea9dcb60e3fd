//! Kernel forwarding through real nftables rules, in three network namespaces per test
//! (client, proxy, backend; see `support`): TCP and UDP, masquerade and preserved source,
//! counters, allow/block lists, connection limits, balancing, reloads.

mod support;

use std::collections::BTreeMap;
use std::io::ErrorKind;

use smartproxy_nftables::{Balance, NftRoute, PortRange, Protocol, RouteCounters, Ruleset, Target};
use support::*;

fn route(name: &str, port: u16, targets: &[Target]) -> NftRoute {
    NftRoute::new(name, [PortRange::single(port)], targets.iter().cloned())
}

fn counters(manager: &smartproxy_nftables::Manager, name: &str) -> RouteCounters {
    manager
        .counters()
        .expect("counters")
        .into_iter()
        .find(|c| c.route == name)
        .unwrap_or_else(|| panic!("no counters for route {name}"))
}

/// TCP counts IP bytes: the payload, plus at most 120 bytes of IP and TCP headers per
/// counted packet (a GSO packet is counted once with all its payload), plus what the sender
/// retransmitted (a busy machine drops packets on veth backlogs; each retransmitted segment
/// is at most one 64 KiB GSO packet). `sender` is the namespace that sent the payload.
#[track_caller]
fn assert_tcp_bytes(what: &str, sender: &Netns, bytes: u64, packets: u64, payload: u64) {
    let retransmitted = sender.tcp_retransmitted_segments();
    let most = payload + packets * 120 + retransmitted * 65536;
    assert!(
        bytes >= payload && bytes <= most,
        "{what}: {bytes} bytes in {packets} packets for {payload} bytes of payload \
         ({retransmitted} segments retransmitted)"
    );
}

#[test]
fn tcp_is_forwarded_byte_exact_masqueraded_and_counted() {
    let topo = Topology::new();
    let _server = TcpEcho::start(&topo.backend, sa(BACKEND, 6000));
    let manager = topo.manager();
    let ruleset =
        Ruleset::build(&[route("db", 5432, &[Target::new(BACKEND, 6000)])]).expect("valid");
    manager.apply(&ruleset).expect("apply");

    let mut conn = open(&topo.client, None, sa(PROXY, 5432));
    assert_eq!(conn.backend, sa(BACKEND, 6000));
    assert_eq!(conn.seen_as.ip(), sa(PROXY_INSIDE, 0).ip(), "masqueraded to the proxy's address");
    let data = pattern(3 * 1024 * 1024 + 17, 1);
    assert!(conn.round_trip(&data) == data, "the echo differs from what was sent");
    // The greeting (`LOCAL PEER\n`) came back too.
    let greeting = format!("{} {}\n", conn.backend, conn.seen_as).len() as u64;
    conn.finish();

    let c = eventually("both FINs counted", PATIENCE, || {
        let c = counters(&manager, "db");
        (c.packets_in >= 3 && c.packets_out >= 3).then_some(c)
    });
    assert_eq!(c.connections, 1);
    assert_eq!(c.dropped, 0);
    assert_tcp_bytes("in", &topo.client, c.bytes_in, c.packets_in, data.len() as u64);
    assert_tcp_bytes(
        "out",
        &topo.backend,
        c.bytes_out,
        c.packets_out,
        data.len() as u64 + greeting,
    );
}

#[test]
fn tcp_source_ip_is_preserved_when_asked() {
    let topo = Topology::new();
    let _server = TcpEcho::start(&topo.backend, sa(BACKEND, 6000));
    let manager = topo.manager();
    let mut r = route("db", 5432, &[Target::new(BACKEND, 6000)]);
    r.preserve_source_ip = true;
    manager.apply(&Ruleset::build(&[r]).expect("valid")).expect("apply");

    let mut conn = open(&topo.client, None, sa(PROXY, 5432));
    assert_eq!(conn.seen_as.ip(), sa(CLIENT, 0).ip(), "the backend sees the client");
    assert_eq!(conn.round_trip(b"hello"), b"hello");
    conn.finish();
}

#[test]
fn udp_is_forwarded_byte_exact_and_counted_exactly() {
    let topo = Topology::new();
    let server = UdpEcho::start(&topo.backend, sa(BACKEND, 5353));
    let manager = topo.manager();
    let mut r = route("dns", 53, &[Target::new(BACKEND, 5353)]);
    r.protocol = Protocol::Udp;
    r.preserve_source_ip = true;
    manager.apply(&Ruleset::build(&[r]).expect("valid")).expect("apply");

    let sizes = [1usize, 100, 512, 1000, 1400, 7, 1200];
    let sent: Vec<Vec<u8>> = sizes.iter().enumerate().map(|(i, &n)| pattern(n, i as u8)).collect();
    let to_send = sent.clone();
    let received = topo.client.enter(move || {
        let s = std::net::UdpSocket::bind(sa(CLIENT, 0)).expect("bind");
        s.set_read_timeout(Some(PATIENCE)).expect("timeout");
        s.connect(sa(PROXY, 53)).expect("connect");
        let mut back = Vec::new();
        let mut buf = vec![0u8; 2048];
        for d in &to_send {
            s.send(d).expect("send");
            let n = s.recv(&mut buf).expect("echo");
            back.push(buf[..n].to_vec());
        }
        back
    });
    let expected: Vec<Vec<u8>> = sent.iter().map(|d| [d.as_slice(), UDP_SUFFIX].concat()).collect();
    assert!(received == expected, "the echoed datagrams differ from the sent ones");
    let peer = server.peers.recv_timeout(PATIENCE).expect("a datagram reached the backend");
    assert_eq!(peer.ip(), sa(CLIENT, 0).ip(), "source preserved");

    // Every datagram is one packet of payload + 20 (IPv4) + 8 (UDP) bytes; the answers are
    // longer by the suffix.
    let bytes_in: u64 = sizes.iter().map(|&n| n as u64 + 28).sum();
    let bytes_out = bytes_in + (sizes.len() * UDP_SUFFIX.len()) as u64;
    let n = sizes.len() as u64;
    let c = counters(&manager, "dns");
    assert_eq!(
        (c.packets_in, c.bytes_in, c.packets_out, c.bytes_out, c.connections, c.dropped),
        (n, bytes_in, n, bytes_out, 1, 0),
        "{c:?}"
    );
}

#[test]
fn allow_and_block_lists_drop_new_connections() {
    let topo = Topology::new();
    let _server = TcpEcho::start(&topo.backend, sa(BACKEND, 6000));
    let manager = topo.manager();
    let mut listed = route("listed", 5432, &[Target::new(BACKEND, 6000)]);
    listed.ip_allow_list = vec!["10.200.1.0/24".parse().expect("cidr")];
    listed.ip_block_list = vec![CLIENT2.parse().expect("ip")];
    let mut elsewhere = route("elsewhere", 5433, &[Target::new(BACKEND, 6000)]);
    elsewhere.ip_allow_list =
        vec!["10.99.0.0/16".parse().expect("cidr"), "fd00::/8".parse().expect("cidr")];
    manager.apply(&Ruleset::build(&[listed, elsewhere]).expect("valid")).expect("apply");

    let mut ok = open(&topo.client, Some(CLIENT), sa(PROXY, 5432));
    assert_eq!(ok.round_trip(b"allowed"), b"allowed");
    ok.finish();
    for (source, port, why) in [(CLIENT2, 5432, "blocked"), (CLIENT, 5433, "not in the allow list")]
    {
        let e = connect(&topo.client, Some(source), sa(PROXY, port), DROPPED)
            .map(|_| ())
            .expect_err(why);
        assert_eq!(
            e.kind(),
            ErrorKind::TimedOut,
            "{source} -> {port} ({why}): dropped, not refused: {e}"
        );
    }
    let listed = counters(&manager, "listed");
    assert_eq!(listed.connections, 1);
    assert!(listed.dropped >= 1, "{listed:?}");
    let elsewhere = counters(&manager, "elsewhere");
    assert_eq!(elsewhere.connections, 0);
    assert!(elsewhere.dropped >= 1, "{elsewhere:?}");
}

#[test]
fn max_connections_is_a_conntrack_count() {
    let topo = Topology::new();
    let _server = TcpEcho::start(&topo.backend, sa(BACKEND, 6000));
    let manager = topo.manager();
    let mut r = route("limited", 5432, &[Target::new(BACKEND, 6000)]);
    r.max_connections = Some(2);
    manager.apply(&Ruleset::build(std::slice::from_ref(&r)).expect("valid")).expect("apply");

    let mut a = open(&topo.client, None, sa(PROXY, 5432));
    let b = open(&topo.client, None, sa(PROXY, 5432));
    // A reload that leaves this route as it is keeps counting its flows.
    let other = route("other", 5433, &[Target::new(BACKEND, 6000)]);
    manager.apply(&Ruleset::build(&[r, other]).expect("valid")).expect("reload");
    let e = connect(&topo.client, None, sa(PROXY, 5432), DROPPED).map(|_| ()).expect_err("third");
    assert_eq!(e.kind(), ErrorKind::TimedOut, "the third connection is dropped: {e}");
    assert_eq!(a.round_trip(b"still fine"), b"still fine", "the first two keep working");
    // A closed connection no longer counts: a new one gets in.
    b.finish();
    let mut c = eventually("a free slot after a close", PATIENCE, || {
        connect(&topo.client, None, sa(PROXY, 5432), DROPPED).ok()
    });
    let mut greeting = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(&mut c), &mut greeting)
        .expect("greeting");
    assert!(greeting.starts_with(&sa(BACKEND, 6000).to_string()), "{greeting}");
    let cs = counters(&manager, "limited");
    assert_eq!(cs.connections, 3, "{cs:?}");
    assert!(cs.dropped >= 1, "{cs:?}");
    a.finish();
}

#[test]
fn reload_changes_the_target_without_breaking_established_flows() {
    let topo = Topology::new();
    let _one = TcpEcho::start(&topo.backend, sa(BACKEND, 6000));
    let _two = TcpEcho::start(&topo.backend, sa(BACKEND2, 6000));
    let manager = topo.manager();
    manager
        .apply(&Ruleset::build(&[route("db", 5432, &[Target::new(BACKEND, 6000)])]).expect("valid"))
        .expect("apply");
    let mut before = open(&topo.client, None, sa(PROXY, 5432));
    assert_eq!(before.backend, sa(BACKEND, 6000));
    let first = pattern(100_000, 3);
    assert!(before.round_trip(&first) == first);
    let counted = counters(&manager, "db");

    manager
        .apply(
            &Ruleset::build(&[route("db", 5432, &[Target::new(BACKEND2, 6000)])]).expect("valid"),
        )
        .expect("reload");
    let after = counters(&manager, "db");
    assert!(
        after.bytes_in >= counted.bytes_in && after.connections == 1,
        "counters survive the reload: {counted:?} then {after:?}"
    );

    let mut new = open(&topo.client, None, sa(PROXY, 5432));
    assert_eq!(new.backend, sa(BACKEND2, 6000), "new flows go to the new target");
    let second = pattern(200_000, 4);
    assert!(before.round_trip(&second) == second, "the established flow still works");
    assert!(new.round_trip(&second) == second);
    before.finish();
    new.finish();
    let end = counters(&manager, "db");
    assert_eq!(end.connections, 2);
    assert_tcp_bytes(
        "in",
        &topo.client,
        end.bytes_in,
        end.packets_in,
        (first.len() + 2 * second.len()) as u64,
    );
}

#[test]
fn several_targets_are_balanced() {
    let topo = Topology::new();
    let _one = TcpEcho::start(&topo.backend, sa(BACKEND, 6000));
    let _two = TcpEcho::start(&topo.backend, sa(BACKEND2, 6001));
    let manager = topo.manager();
    let targets = [Target::new(BACKEND, 6000), Target::new(BACKEND2, 6001)];
    let rr = route("rr", 5432, &targets);
    let mut hash = route("hash", 5433, &targets);
    hash.balance = Balance::SourceHash;
    manager.apply(&Ruleset::build(&[rr, hash]).expect("valid")).expect("apply");

    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for _ in 0..6 {
        let c = open(&topo.client, None, sa(PROXY, 5432));
        *seen.entry(c.backend.to_string()).or_default() += 1;
        c.finish();
    }
    let want: BTreeMap<String, usize> =
        [(sa(BACKEND, 6000).to_string(), 3), (sa(BACKEND2, 6001).to_string(), 3)].into();
    assert_eq!(seen, want, "round-robin alternates");

    let first = open(&topo.client, None, sa(PROXY, 5433));
    let backend = first.backend;
    first.finish();
    for _ in 0..4 {
        let c = open(&topo.client, None, sa(PROXY, 5433));
        assert_eq!(c.backend, backend, "source hash keeps a client on one target");
        c.finish();
    }
}

#[test]
fn port_ranges_with_the_port_preserved() {
    let topo = Topology::new();
    let _servers: Vec<TcpEcho> =
        (7000..=7002).map(|p| TcpEcho::start(&topo.backend, sa(BACKEND, p))).collect();
    let manager = topo.manager();
    let r = NftRoute::new("range", [PortRange::new(7000, 7002)], [Target::preserve(BACKEND)]);
    manager.apply(&Ruleset::build(&[r]).expect("valid")).expect("apply");
    for port in 7000..=7002 {
        let c = open(&topo.client, None, sa(PROXY, port));
        assert_eq!(c.backend, sa(BACKEND, port));
        c.finish();
    }
    assert_eq!(counters(&manager, "range").connections, 3);
}

#[test]
fn ipv6_is_forwarded() {
    let topo = Topology::new();
    let _server = TcpEcho::start(&topo.backend, sa(BACKEND6, 6000));
    let manager = topo.manager();
    let mut r = route("v6", 5432, &[Target::new(BACKEND6, 6000)]);
    r.protocol = Protocol::All;
    manager.apply(&Ruleset::build(&[r]).expect("valid")).expect("apply");
    let mut c = open(&topo.client, None, sa(PROXY6, 5432));
    assert_eq!(c.backend, sa(BACKEND6, 6000));
    assert_eq!(c.seen_as.ip(), sa(PROXY6_INSIDE, 0).ip(), "masqueraded");
    let data = pattern(500_000, 9);
    assert!(c.round_trip(&data) == data);
    c.finish();
    // An IPv4 client on the same port is not forwarded by an IPv6 route.
    let e = connect(&topo.client, None, sa(PROXY, 5432), DROPPED).map(|_| ()).expect_err("v4");
    assert_eq!(e.kind(), ErrorKind::ConnectionRefused, "nothing listens on the proxy: {e}");
    let cs = counters(&manager, "v6");
    assert_eq!(cs.connections, 1);
    assert_tcp_bytes("in", &topo.client, cs.bytes_in, cs.packets_in, data.len() as u64);
}

#[test]
fn connections_from_the_proxy_host_itself_are_forwarded() {
    let topo = Topology::new();
    let _server = TcpEcho::start(&topo.backend, sa(BACKEND, 6000));
    let manager = topo.manager();
    manager
        .apply(&Ruleset::build(&[route("db", 5432, &[Target::new(BACKEND, 6000)])]).expect("valid"))
        .expect("apply");
    // From the proxy namespace to one of its own (non-loopback) addresses.
    let mut c = open(&topo.proxy, None, sa(PROXY, 5432));
    assert_eq!(c.backend, sa(BACKEND, 6000));
    assert_eq!(c.round_trip(b"local"), b"local");
    c.finish();
    let cs = eventually("the reply counted on input", PATIENCE, || {
        let cs = counters(&manager, "db");
        (cs.packets_out >= 3).then_some(cs)
    });
    assert_eq!(cs.connections, 1);
    assert!(cs.bytes_in >= 5 && cs.bytes_out >= 5, "{cs:?}");
}

#[test]
fn local_addresses_limit_where_the_route_listens() {
    let topo = Topology::new();
    let _server = TcpEcho::start(&topo.backend, sa(BACKEND, 6000));
    let manager = topo.manager();
    let mut r = route("db", 5432, &[Target::new(BACKEND, 6000)]);
    r.local_addresses = vec![PROXY.parse().expect("ip"), PROXY6.parse().expect("ip")];
    manager.apply(&Ruleset::build(&[r]).expect("valid")).expect("apply");
    let c = open(&topo.client, None, sa(PROXY, 5432));
    assert_eq!(c.backend, sa(BACKEND, 6000));
    c.finish();
    // The proxy's other address (reachable from the client through it) is not listed.
    let e = connect(&topo.client, None, sa(PROXY_INSIDE, 5432), DROPPED)
        .map(|_| ())
        .expect_err("not listed");
    assert_eq!(e.kind(), ErrorKind::ConnectionRefused, "{e}");
}
