//! Graceful drain and the kernel's accept queue: connections whose handshake the kernel had
//! completed, but that the proxy had not accepted yet when SIGTERM came, are in flight too.
//! They are taken from the queue and served in the drain instead of reset when the
//! listening socket closes.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use smartproxy_tests::*;

/// How many clients wait in the accept queue: well over what one accept loop takes before
/// it yields to the signal task (tokio's budget is 128 operations), well under the queue's
/// length (`listen(4096)`).
const QUEUED: usize = 1000;

/// The proxy is stopped (SIGSTOP) while 1,000 clients connect and send a line: their
/// handshakes complete in the kernel, and they wait in the listening socket's accept queue.
/// Then SIGTERM and SIGCONT: every client gets its line back byte-exact (none is reset), and
/// the proxy exits 0 once they have closed, well within `shutdown_grace`.
#[test]
fn sigterm_serves_the_connections_waiting_in_the_accept_queue() {
    let backend = Backend::echo();
    let (mut proxy, [port]) = Proxy::start_on(|[port]| {
        format!(
            "bind = [\"127.0.0.1\"]\n[defaults]\nshutdown_grace = \"20s\"\nmax_connections_per_ip = 0\n\
             [[routes]]\nname = \"r\"\nmatch = {{ ports = [{port}] }}\n\
             action = {{ type = \"forward\", targets = [{{ host = \"127.0.0.1\", port = {} }}] }}\n",
            backend.port()
        )
    });
    let mut warm = connect(port);
    assert_eq!(echo_roundtrip(&mut warm, b"warm-up").unwrap(), b"warm-up");
    drop(warm);
    proxy.signal("STOP");
    // `kill` returns before the process has stopped: wait for every thread's state `T`.
    let pid = proxy.pid();
    wait_until("the proxy stopped", || stopped(pid));
    let mut clients: Vec<(TcpStream, Vec<u8>)> = (0..QUEUED)
        .map(|i| {
            let mut s = connect(port);
            let line = format!("queued client {i}\n").into_bytes();
            s.write_all(&line).expect("the kernel takes the line while the proxy is stopped");
            (s, line)
        })
        .collect();
    let waiting = accept_queue(port);
    assert!(waiting >= QUEUED, "{waiting} connections in the accept queue, expected {QUEUED}");
    proxy.signal("TERM");
    proxy.signal("CONT");
    for (i, (s, line)) in clients.iter_mut().enumerate() {
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut got = vec![0; line.len()];
        if let Err(e) = s.read_exact(&mut got) {
            panic!("client {i} of {QUEUED} (queued at SIGTERM) lost: {e}\n{}", proxy.output());
        }
        assert_eq!(&got, line, "client {i}");
    }
    drop(clients);
    assert_eq!(proxy.wait_exit(), Some(0), "{}", proxy.output());
    let took = proxy.events("took the connections waiting in the accept queues", &[]);
    eprintln!(
        "accept queue at SIGTERM: {waiting} connections, all {QUEUED} served; taken from the \
         queue by the drain: {took:?}"
    );
}

/// Whether every thread of process `pid` is stopped (state `T` in `/proc/PID/task/*/stat`).
fn stopped(pid: u32) -> bool {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("/proc/PID/task");
    tasks.flatten().all(|t| {
        let stat = std::fs::read_to_string(t.path().join("stat")).unwrap_or_default();
        stat_fields(&stat).next() == Some("T")
    })
}

/// The length of the accept queue of the socket listening on `127.0.0.1:port`: the
/// `rx_queue` field of its line in `/proc/net/tcp` (for a listening socket, the connections
/// waiting to be accepted).
fn accept_queue(port: u16) -> usize {
    let local = format!("0100007F:{port:04X}");
    let table = std::fs::read_to_string("/proc/net/tcp").expect("/proc/net/tcp");
    table
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .filter(|f| f.len() > 4 && f[1] == local && f[3] == "0A")
        .map(|f| {
            let (_tx, rx) = f[4].split_once(':').expect("tx_queue:rx_queue");
            usize::from_str_radix(rx, 16).expect("hex")
        })
        .sum()
}
