//! The port helpers the other tests rely on: a reserved port is never handed to another test
//! process, a dead port refuses connections, and a server is recognised as the owner of its
//! listening socket (and only it).

use std::collections::BTreeSet;
use std::net::TcpListener;
use std::process::Command;

use smartproxy_tests::*;

/// Set in the child process that [`reserved_ports_are_exclusive_across_processes`] starts.
const CHILD: &str = "SMARTPROXY_PORTS_TEST_CHILD";

/// Run by [`reserved_ports_are_exclusive_across_processes`] as its child process: reserves
/// ports and prints them.
#[test]
#[ignore = "a child process of another test"]
fn child_reserves_ports() {
    let ports: Vec<String> = (0..200).map(|_| reserve_port().to_string()).collect();
    #[allow(clippy::print_stdout)] // The child's report to its parent.
    {
        println!("RESERVED {}", ports.join(" "));
    }
}

#[test]
fn reserved_ports_are_exclusive_across_processes() {
    let mine: BTreeSet<u16> = (0..200).map(|_| reserve_port()).collect();
    assert_eq!(mine.len(), 200, "distinct within a process");
    // Another process (this test binary again), while this one holds its ports.
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--ignored", "--exact", "child_reserves_ports", "--nocapture"])
        .env(CHILD, "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    let theirs: BTreeSet<u16> = stdout
        .lines()
        .find_map(|l| l.strip_prefix("RESERVED "))
        .unwrap_or_else(|| panic!("the child printed no ports: {stdout}"))
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect();
    assert_eq!(theirs.len(), 200);
    let shared: Vec<&u16> = mine.intersection(&theirs).collect();
    assert!(shared.is_empty(), "ports handed to both processes: {shared:?}");
    // Below the kernel's ephemeral range, where no outgoing connection takes them.
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap();
    let ephemeral: u16 = range.split_whitespace().next().unwrap().parse().unwrap();
    assert!(mine.iter().chain(&theirs).all(|&p| p < ephemeral), "{range}");
}

#[test]
fn a_dead_port_refuses_connections() {
    let dead = DeadPort::new();
    for _ in 0..3 {
        let err = std::net::TcpStream::connect(("127.0.0.1", dead.port())).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{err}");
    }
    // And no server can take it while it is held.
    assert!(TcpListener::bind(("127.0.0.1", dead.port())).is_err());
}

/// A socket on 127.0.0.1:`port` with `SO_REUSEPORT`, listening.
fn reuseport_listener(port: u16) -> socket2::Socket {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    s.set_reuse_port(true).unwrap();
    s.bind(&std::net::SocketAddr::from(([127, 0, 0, 1], port)).into()).unwrap();
    s.listen(16).unwrap();
    s
}

/// Kills the child on drop.
struct Reap(std::process::Child);

impl Drop for Reap {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn the_owner_of_a_listening_socket_is_recognised_and_a_shared_port_is_not_owned() {
    let port = reserve_port();
    let me = std::process::id();
    assert!(!listened_by(me, port), "nothing listens yet");
    let _mine = reuseport_listener(port);
    assert!(listened_by(me, port));
    assert!(!listened_by(1, port), "not init's");
    // A second process of the same user listens there too: with SO_REUSEPORT the kernel
    // allows it without an error, which is how two servers could share a port silently.
    // Neither counts as its owner then.
    let child = Reap(
        Command::new(std::env::current_exe().unwrap())
            .args(["--ignored", "--exact", "child_listens", "--nocapture"])
            .env(CHILD, port.to_string())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_for("the child's listener", || listeners(port), |l| l.len() == 2);
    assert!(!listened_by(me, port), "shared: not ours alone");
    assert!(!listened_by(child.0.id(), port), "shared: not the child's alone");
}

/// Run by [`the_owner_of_a_listening_socket_is_recognised_and_a_shared_port_is_not_owned`]
/// as its child process: listens (with `SO_REUSEPORT`) on the port named in [`CHILD`] until
/// killed.
#[test]
#[ignore = "a child process of another test"]
fn child_listens() {
    let port: u16 = std::env::var(CHILD).expect(CHILD).parse().unwrap();
    let _l = reuseport_listener(port);
    std::thread::park();
}
