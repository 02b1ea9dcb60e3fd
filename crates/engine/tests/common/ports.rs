//! Ports for the servers a test starts, and what `/proc/net/tcp` says about them. Shared by
//! the engine's tests and the end-to-end tests in `tests/` (which include this file), so that
//! both hand out ports by the same rules.
//!
//! "Bind port 0, drop, reuse the number" races: between the drop and the server's bind any
//! other process may take the port, and a server with `SO_REUSEPORT` (the engine's worker
//! runtimes, the binary's default runtime) even *shares* it without an error with another
//! test's server of the same user. A port from [`reserve_port`] instead is
//!
//! - below the kernel's ephemeral range, so no outgoing connection (a proxy's own, to its
//!   backends) is given it as its local port;
//! - locked for as long as this process lives (`flock` on a file per port in
//!   `$TMPDIR/smartproxy-test-ports/`), so no other test process of the workspace gets it: two
//!   `cargo test` runs of different test binaries at once cannot collide, and the kernel
//!   releases the locks of a process that dies;
//! - free when it is handed out: nothing listens on it and it can be bound on 127.0.0.1,
//!   0.0.0.0 and ::1.
//!
//! A program outside the tests may still take it before the server binds: the helpers that
//! start servers retry with fresh ports when the bind fails, and confirm that the socket
//! listening on the port is the one of the server they started ([`listened_by`]).
#![allow(dead_code, unreachable_pub)]

use std::collections::BTreeSet;
use std::fs::File;
use std::io::ErrorKind;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};

use parking_lot::Mutex;

/// The lowest port handed out.
const LOW: u32 = 20_000;

/// The lock files of the ports this process holds, kept open until it exits.
static HELD: Mutex<Vec<File>> = Mutex::new(Vec::new());

/// A TCP port on loopback that no other test process of the workspace will use, free at the
/// moment it is returned. Each call returns a new one.
pub fn reserve_port() -> u16 {
    let (low, high) = range();
    let span = high - low;
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    // Each process starts somewhere else in the range, so that the lock files are rarely
    // contended.
    let _ =
        NEXT.compare_exchange(u32::MAX, start_offset(span), Ordering::Relaxed, Ordering::Relaxed);
    for _ in 0..span {
        let port = (low + NEXT.fetch_add(1, Ordering::Relaxed) % span) as u16;
        let Some(lock) = try_lock(port) else { continue };
        if bindable_now(port) {
            HELD.lock().push(lock);
            return port;
        }
    }
    panic!(
        "no free port left in {low}..{high}: every port is locked by another test process or \
         in use (lock files in {})",
        lock_dir().display()
    );
}

/// Several distinct reserved ports.
pub fn reserve_ports<const N: usize>() -> [u16; N] {
    std::array::from_fn(|_| reserve_port())
}

/// [`LOW`] up to the start of the kernel's ephemeral range (at most 32768).
fn range() -> (u32, u32) {
    let text = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .unwrap_or_else(|e| panic!("reading /proc/sys/net/ipv4/ip_local_port_range: {e}"));
    let ephemeral_low: u32 = text
        .split_whitespace()
        .next()
        .and_then(|w| w.parse().ok())
        .unwrap_or_else(|| panic!("unexpected ip_local_port_range: {text:?}"));
    let high = ephemeral_low.min(32_768);
    assert!(
        high >= LOW + 1000,
        "the ephemeral port range starts at {ephemeral_low}: the tests need ports {LOW}..{} \
         outside it (sysctl net.ipv4.ip_local_port_range)",
        LOW + 1000
    );
    (LOW, high)
}

fn start_offset(span: u32) -> u32 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    std::process::id().wrapping_mul(7919).wrapping_add(nanos) % span
}

fn lock_dir() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join("smartproxy-test-ports");
        std::fs::create_dir_all(&dir)
            .unwrap_or_else(|e| panic!("creating the port lock directory {}: {e}", dir.display()));
        dir
    })
    .clone()
}

/// The locked file of `port`, or `None` when another process holds it.
fn try_lock(port: u16) -> Option<File> {
    let path = lock_dir().join(port.to_string());
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .unwrap_or_else(|e| panic!("opening the port lock file {}: {e}", path.display()));
    match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Some(file),
        Err(e) if e == rustix::io::Errno::WOULDBLOCK => None,
        Err(e) => panic!("locking {}: {e}", path.display()),
    }
}

/// A socket can be bound to `port` on 0.0.0.0, 127.0.0.1 and ::1 (when the host has IPv6)
/// without `SO_REUSEADDR` or `SO_REUSEPORT`, so no other socket holds it (listening, with
/// `SO_REUSEPORT`, connected, or in TIME_WAIT). The probes bind without listening, so no
/// connection can reach them, and closing them leaves nothing behind.
fn bindable_now(port: u16) -> bool {
    let v4 = [Ipv4Addr::LOCALHOST, Ipv4Addr::UNSPECIFIED]
        .into_iter()
        .all(|ip| probe_bind(SocketAddr::from((ip, port))).is_ok());
    v4 && match probe_bind(SocketAddr::from((Ipv6Addr::LOCALHOST, port))) {
        Ok(()) => true,
        Err(e) => e.kind() == ErrorKind::AddrNotAvailable || e.raw_os_error() == Some(97),
    }
}

fn probe_bind(addr: SocketAddr) -> std::io::Result<()> {
    let s = socket2::Socket::new(socket2::Domain::for_address(addr), socket2::Type::STREAM, None)?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    s.bind(&addr.into())
}

/// A port nobody listens on, for a target that must refuse connections: a socket bound to a
/// port of loopback without listening, held until dropped. A connection to it is refused
/// (RST), and no other socket can take the port meanwhile, which a number that was free a
/// moment ago cannot promise.
#[derive(Debug)]
pub struct DeadPort(socket2::Socket);

impl DeadPort {
    /// Binds a fresh one.
    pub fn new() -> Self {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .expect("socket");
        s.bind(&SocketAddr::from((Ipv4Addr::LOCALHOST, 0)).into()).expect("bind 127.0.0.1:0");
        Self(s)
    }

    /// Its port.
    pub fn port(&self) -> u16 {
        self.0.local_addr().ok().and_then(|a| a.as_socket()).map_or(0, |a| a.port())
    }
}

impl Default for DeadPort {
    fn default() -> Self {
        Self::new()
    }
}

/// One line of `/proc/net/tcp` or `/proc/net/tcp6`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpEntry {
    /// Local port.
    pub local_port: u16,
    /// Remote port (0 for a listening socket).
    pub remote_port: u16,
    /// The state (`0A` is LISTEN, `01` ESTABLISHED).
    pub state: u8,
    /// For a listening socket, the connections in its accept queue; otherwise the bytes
    /// received and not yet read by the application.
    pub rx_queue: u32,
    /// The socket's inode, as `/proc/PID/fd/N` links name it (`socket:[INODE]`).
    pub inode: u64,
}

const LISTEN: u8 = 0x0A;

/// Every TCP socket of this network namespace.
pub fn tcp_table() -> Vec<TcpEntry> {
    let mut out = Vec::new();
    for f in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(f) else { continue };
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            let parsed = (|| {
                let port = |c: &str| u16::from_str_radix(c.rsplit(':').next()?, 16).ok();
                let rx = cols.get(4)?.split(':').nth(1)?;
                Some(TcpEntry {
                    local_port: port(cols.get(1)?)?,
                    remote_port: port(cols.get(2)?)?,
                    state: u8::from_str_radix(cols.get(3)?, 16).ok()?,
                    rx_queue: u32::from_str_radix(rx, 16).ok()?,
                    inode: cols.get(9)?.parse().ok()?,
                })
            })();
            out.extend(parsed);
        }
    }
    out
}

/// Whether some socket listens on TCP `port` (read from `/proc`, so that no probe connection
/// is made).
pub fn port_listening(port: u16) -> bool {
    tcp_table().iter().any(|e| e.state == LISTEN && e.local_port == port)
}

/// The sockets listening on `port`: `(inode, connections waiting in the accept queue)`.
pub fn listeners(port: u16) -> Vec<(u64, u32)> {
    tcp_table()
        .into_iter()
        .filter(|e| e.state == LISTEN && e.local_port == port)
        .map(|e| (e.inode, e.rx_queue))
        .collect()
}

/// Whether `port` is listened on, and only by sockets that process `pid` holds: the server a
/// test started listens there, not some other program that took the port first.
pub fn listened_by(pid: u32, port: u16) -> bool {
    let inodes: BTreeSet<u64> = listeners(port).into_iter().map(|(i, _)| i).collect();
    !inodes.is_empty() && inodes.is_subset(&socket_inodes(pid))
}

/// Whether UDP `port` is bound, and only by sockets that process `pid` holds.
pub fn udp_bound_by(pid: u32, port: u16) -> bool {
    let mut inodes = BTreeSet::new();
    for f in ["/proc/net/udp", "/proc/net/udp6"] {
        let Ok(text) = std::fs::read_to_string(f) else { continue };
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            let local = cols.get(1).and_then(|c| c.rsplit(':').next());
            if local.and_then(|p| u16::from_str_radix(p, 16).ok()) == Some(port) {
                inodes.extend(cols.get(9).and_then(|i| i.parse::<u64>().ok()));
            }
        }
    }
    !inodes.is_empty() && inodes.is_subset(&socket_inodes(pid))
}

/// The inodes of the sockets process `pid` holds.
pub fn socket_inodes(pid: u32) -> BTreeSet<u64> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { return BTreeSet::new() };
    dir.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|l| {
            let l = l.to_string_lossy().into_owned();
            l.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
        })
        .collect()
}

/// The bytes that arrived on the server's end of the connection 127.0.0.1:`client` ->
/// 127.0.0.1:`server` and that the server has not read yet; `None` when there is no such
/// connection. A test waits for 0 to know that the server has consumed what was sent, so
/// that what it sends next arrives in a read of its own.
///
/// Asked of the kernel by the socket's addresses (`sock_diag` netlink, one hash lookup):
/// reading `/proc/net/tcp` walks the whole connection table and takes milliseconds, too slow
/// to poll between single bytes. Falls back to `/proc/net/tcp` where `sock_diag` answers
/// nothing.
pub fn unread_by_server(server: u16, client: u16) -> Option<u32> {
    match sock_diag_rqueue(server, client) {
        Ok(Some(n)) => Some(n),
        _ => tcp_table()
            .into_iter()
            .find(|e| e.state != LISTEN && e.local_port == server && e.remote_port == client)
            .map(|e| e.rx_queue),
    }
}

/// The receive queue of the IPv4 TCP socket 127.0.0.1:`local` <-> 127.0.0.1:`remote`, from
/// an exact `SOCK_DIAG_BY_FAMILY` lookup; `Ok(None)` when the kernel has no such socket.
fn sock_diag_rqueue(local: u16, remote: u16) -> std::io::Result<Option<u32>> {
    use std::io::{Read, Write};
    const AF_NETLINK: i32 = 16;
    const NETLINK_SOCK_DIAG: i32 = 4;
    const SOCK_DIAG_BY_FAMILY: u16 = 20;
    const NLM_F_REQUEST: u16 = 1;
    const NLMSG_ERROR: u16 = 2;
    const AF_INET: u8 = 2;
    const IPPROTO_TCP: u8 = 6;
    let mut sock = socket2::Socket::new(
        socket2::Domain::from(AF_NETLINK),
        socket2::Type::DGRAM,
        Some(socket2::Protocol::from(NETLINK_SOCK_DIAG)),
    )?;
    // struct inet_diag_req_v2: family, protocol, ext, pad, states, then inet_diag_sockid:
    // sport and dport (big endian), src and dst (4 x u32 each), interface, cookie.
    let mut req = vec![AF_INET, IPPROTO_TCP, 0, 0];
    req.extend_from_slice(&u32::MAX.to_ne_bytes());
    req.extend_from_slice(&local.to_be_bytes());
    req.extend_from_slice(&remote.to_be_bytes());
    for _ in 0..2 {
        req.extend_from_slice(&[127, 0, 0, 1]);
        req.extend_from_slice(&[0; 12]);
    }
    req.extend_from_slice(&0u32.to_ne_bytes());
    req.extend_from_slice(&[0xff; 8]); // INET_DIAG_NOCOOKIE
    let mut msg = Vec::with_capacity(16 + req.len());
    msg.extend_from_slice(&(16 + req.len() as u32).to_ne_bytes());
    msg.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    msg.extend_from_slice(&NLM_F_REQUEST.to_ne_bytes());
    msg.extend_from_slice(&1u32.to_ne_bytes()); // sequence
    msg.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel fills it in
    msg.extend_from_slice(&req);
    // Without an address the message goes to the kernel.
    sock.write_all(&msg)?;
    let mut buf = [0u8; 1024];
    let n = sock.read(&mut buf)?;
    let u16_at = |i: usize| buf.get(i..i + 2).map(|b| u16::from_ne_bytes([b[0], b[1]]));
    let u32_at = |i: usize| buf.get(i..i + 4).map(|b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]));
    match u16_at(4) {
        // An error reply (ENOENT: no such socket).
        Some(NLMSG_ERROR) => Ok(None),
        // struct inet_diag_msg after the 16-byte header: family, state, timer, retransmits,
        // the 48-byte socket id (ports first, big endian), expires, then the receive queue.
        // The lookup falls back to the listener of the port: that is not the connection.
        Some(SOCK_DIAG_BY_FAMILY) if n >= 16 + 60 => {
            let ports = (u16_at(20).map(u16::from_be), u16_at(22).map(u16::from_be));
            let listening = buf[17] == LISTEN;
            if listening || ports != (Some(local), Some(remote)) {
                return Ok(None);
            }
            Ok(u32_at(16 + 56))
        }
        other => Err(std::io::Error::other(format!("unexpected sock_diag reply type {other:?}"))),
    }
}
