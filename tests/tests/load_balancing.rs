//! Load balancing through the real binary, 1,000 connections per algorithm: round-robin splits
//! evenly, ip-hash keeps each client IP on one target, least-connections sends new connections
//! to the target with fewer open ones, and a dead target is skipped.

use std::net::{Ipv4Addr, SocketAddr, TcpStream};

use smartproxy_tests::*;

const HEAD: &str = "bind = [\"127.0.0.1\"]\n";

fn route(name: &str, port: u16, lb: &str, targets: &[u16]) -> String {
    let t: Vec<String> =
        targets.iter().map(|p| format!("{{ host = \"127.0.0.1\", port = {p} }}")).collect();
    format!(
        "[[routes]]\nname = \"{name}\"\nmatch = {{ ports = [{port}] }}\naction = {{ type = \"forward\", load_balancing = \"{lb}\", connect_timeout = \"2s\", targets = [{}] }}\n",
        t.join(", ")
    )
}

fn counts(backends: &[&Backend]) -> Vec<usize> {
    backends.iter().map(|b| b.seen().len()).collect()
}

/// One connection from `ip`, served (echo checked) and kept open.
fn open_from(ip: Ipv4Addr, port: u16) -> TcpStream {
    let mut s = connect_from(ip, SocketAddr::from(([127, 0, 0, 1], port))).unwrap();
    assert_eq!(echo_roundtrip(&mut s, b"x").unwrap(), b"x");
    s
}

/// The index of the only backend whose count grew by `by` since `before`.
fn grown(before: &[usize], after: &[usize], by: usize) -> usize {
    let grew: Vec<usize> = (0..before.len()).filter(|&i| after[i] != before[i]).collect();
    assert_eq!(grew.len(), 1, "one backend took them all: {before:?} -> {after:?}");
    assert_eq!(after[grew[0]] - before[grew[0]], by, "{before:?} -> {after:?}");
    grew[0]
}

#[test]
fn round_robin_splits_1000_connections_evenly_and_skips_a_dead_target() {
    let (a, b, c) = (Backend::echo(), Backend::echo(), Backend::echo());
    // Bound, not listening: connections to it are refused.
    let dead = DeadPort::new();
    let (_proxy, [rr, rr_dead]) = Proxy::start_on(|[rr, rr_dead]| {
        format!(
            "{HEAD}{}{}",
            route("rr", rr, "round-robin", &[a.port(), b.port(), c.port()]),
            route("rr-dead", rr_dead, "round-robin", &[a.port(), dead.port(), b.port()])
        )
    });
    for _ in 0..1000 {
        drop(open_from(Ipv4Addr::LOCALHOST, rr));
    }
    let n = counts(&[&a, &b, &c]);
    assert_eq!(n.iter().sum::<usize>(), 1000);
    assert!(n.iter().all(|&k| k == 333 || k == 334), "even split: {n:?}");

    // A dead target is skipped: every connection is served by the two live ones.
    let before = counts(&[&a, &b]);
    for _ in 0..300 {
        drop(open_from(Ipv4Addr::LOCALHOST, rr_dead));
    }
    let after = counts(&[&a, &b]);
    let took: Vec<usize> = (0..2).map(|i| after[i] - before[i]).collect();
    assert_eq!(took.iter().sum::<usize>(), 300, "all served: {took:?}");
    assert!(took.iter().all(|&k| k >= 100), "both live targets used: {took:?}");
}

#[test]
fn ip_hash_keeps_each_client_on_one_target() {
    let (a, b, c) = (Backend::echo(), Backend::echo(), Backend::echo());
    let dead = DeadPort::new();
    let (_proxy, [hash, hash_dead]) = Proxy::start_on(|[hash, hash_dead]| {
        format!(
            "{HEAD}{}{}",
            route("hash", hash, "ip-hash", &[a.port(), b.port(), c.port()]),
            route("hash-dead", hash_dead, "ip-hash", &[a.port(), b.port(), dead.port()])
        )
    });
    let backends = [&a, &b, &c];
    let mut used = [0usize; 3];
    let mut placement = Vec::new();
    // 50 client addresses x 20 connections = 1,000.
    for last in 2..52u8 {
        let ip = Ipv4Addr::new(127, 0, 0, last);
        let before = counts(&backends);
        for _ in 0..20 {
            drop(open_from(ip, hash));
        }
        let i = grown(&before, &counts(&backends), 20);
        used[i] += 1;
        placement.push((ip, i));
    }
    assert!(used.iter().filter(|&&u| u > 0).count() >= 2, "clients spread: {used:?}");
    // Same client, later: same target.
    for (ip, i) in placement.iter().take(10) {
        let before = counts(&backends);
        drop(open_from(*ip, hash));
        assert_eq!(grown(&before, &counts(&backends), 1), *i, "{ip} kept its target");
    }
    // A dead target is skipped; each client still sticks to one live target.
    for last in 60..80u8 {
        let ip = Ipv4Addr::new(127, 0, 0, last);
        let before = counts(&[&a, &b]);
        for _ in 0..5 {
            drop(open_from(ip, hash_dead));
        }
        grown(&before, &counts(&[&a, &b]), 5);
    }
}

#[test]
fn least_connections_sends_new_connections_to_the_less_loaded_target() {
    let (a, b) = (Backend::echo(), Backend::echo());
    // The admin API tells how many connections the proxy has open.
    let (_proxy, [port, admin]) = Proxy::start_on(|[port, admin]| {
        format!(
            "{HEAD}[admin]\nlisten = \"127.0.0.1:{admin}\"\n{}",
            route("lc", port, "least-connections", &[a.port(), b.port()])
        )
    });
    let backends = [&a, &b];
    // Ten held connections split 5/5; remember where each went.
    let mut held: Vec<(TcpStream, usize)> = Vec::new();
    for _ in 0..10 {
        let before = counts(&backends);
        let s = open_from(Ipv4Addr::LOCALHOST, port);
        held.push((s, grown(&before, &counts(&backends), 1)));
    }
    let on_a = held.iter().filter(|(_, i)| *i == 0).count();
    assert_eq!(on_a, 5, "balanced while all are open");
    // Close those on B: A keeps 5 open, B none, once the proxy has seen the closes (its
    // open connections are then A's five alone).
    held.retain(|(_, i)| *i == 0);
    wait_for(
        "the proxy closed B's connections: 5 open",
        || metrics_json(admin)["connections"]["active"].clone(),
        |active| *active == 5,
    );
    // The next five, held open, all go to B (it stays below or equal to A's five).
    for k in 0..5 {
        let before = counts(&backends);
        let s = open_from(Ipv4Addr::LOCALHOST, port);
        assert_eq!(grown(&before, &counts(&backends), 1), 1, "new connection {k} went to B");
        held.push((s, 1));
    }
    // Now 5/5 again: 990 more short connections split evenly between the two.
    let before = counts(&backends);
    for _ in 0..985 {
        drop(open_from(Ipv4Addr::LOCALHOST, port));
    }
    let after = counts(&backends);
    let took: Vec<usize> = (0..2).map(|i| after[i] - before[i]).collect();
    assert_eq!(took.iter().sum::<usize>(), 985);
    assert!(took.iter().all(|&k| k >= 300), "both used while equally loaded: {took:?}");
}
