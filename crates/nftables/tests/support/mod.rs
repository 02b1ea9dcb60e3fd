//! Network namespaces for the tests: three per test (client, proxy, backend) joined by veth
//! pairs, with addresses that exist only inside them. Sockets are opened by threads that
//! entered a namespace (`setns`); a socket stays in the namespace it was made in.
//!
//! ```text
//!  client ns                 proxy ns (nftables, ip_forward)              backend ns
//!  eth0 10.200.1.2/24  <->  veth-c 10.200.1.1/24   veth-b 10.200.2.1/24  <->  eth0 10.200.2.2/24
//!       10.200.1.3/24          fd00:200:1::1/64     fd00:200:2::1/64          10.200.2.3/24
//!       fd00:200:1::2/64                                                      fd00:200:2::2/64
//!  default via proxy                                                    default via proxy
//! ```

#![allow(dead_code, unreachable_pub, reason = "each test binary uses a part of the support")]

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Once};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use smartproxy_nftables::{Manager, Nft};

pub const CLIENT: &str = "10.200.1.2";
pub const CLIENT2: &str = "10.200.1.3";
pub const PROXY: &str = "10.200.1.1";
pub const PROXY_INSIDE: &str = "10.200.2.1";
pub const BACKEND: &str = "10.200.2.2";
pub const BACKEND2: &str = "10.200.2.3";
pub const CLIENT6: &str = "fd00:200:1::2";
pub const PROXY6: &str = "fd00:200:1::1";
pub const PROXY6_INSIDE: &str = "fd00:200:2::1";
pub const BACKEND6: &str = "fd00:200:2::2";

/// A connect that must fail (dropped SYN) waits this long; a working one takes a millisecond.
pub const DROPPED: Duration = Duration::from_millis(1500);
/// The bound of every wait that must succeed.
pub const PATIENCE: Duration = Duration::from_secs(10);

pub fn run(cmd: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .map_err(|e| format!("cannot run `{cmd}` (install iproute2 / nftables): {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "`{cmd} {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

#[track_caller]
pub fn must(cmd: &str, args: &[&str]) -> String {
    run(cmd, args).unwrap_or_else(|e| panic!("{e}"))
}

/// One network namespace, deleted on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates the namespace `name` (its loopback up); deleted on drop.
    pub fn create(name: String) -> Self {
        if let Err(e) = run("ip", &["netns", "add", &name]) {
            panic!(
                "cannot create network namespaces here, so the nftables tests cannot run \
                 (they need root or CAP_SYS_ADMIN + CAP_NET_ADMIN, and iproute2): {e}"
            );
        }
        let ns = Self { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip -n NAME ARGS`.
    #[track_caller]
    pub fn ip(&self, args: &[&str]) -> String {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        must("ip", &all)
    }

    #[track_caller]
    pub fn sysctl(&self, key: &str, value: &str) {
        must("ip", &["netns", "exec", &self.name, "sysctl", "-qw", &format!("{key}={value}")]);
    }

    /// `nft` run in this namespace.
    pub fn nft(&self) -> Nft {
        Nft::in_netns(&self.name)
    }

    /// `nft ARGS` (text output) in this namespace.
    pub fn nft_text(&self, args: &[&str]) -> Result<String, String> {
        let mut all = vec!["netns", "exec", self.name.as_str(), "nft"];
        all.extend_from_slice(args);
        run("ip", &all)
    }

    /// The namespace's TCP `RetransSegs` (from `/proc/thread-self/net/snmp`).
    pub fn tcp_retransmitted_segments(&self) -> u64 {
        let snmp = self.enter(|| std::fs::read_to_string("/proc/thread-self/net/snmp"));
        let snmp = snmp.unwrap_or_else(|e| panic!("read /proc/thread-self/net/snmp: {e}"));
        let tcp: Vec<&str> = snmp.lines().filter(|l| l.starts_with("Tcp:")).collect();
        let [names, values] = tcp.as_slice() else { panic!("no Tcp lines in {snmp}") };
        names
            .split_whitespace()
            .zip(values.split_whitespace())
            .find(|(n, _)| *n == "RetransSegs")
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or_else(|| panic!("no RetransSegs in {snmp}"))
    }

    /// Runs `f` on a thread that entered this namespace; sockets it makes live there.
    pub fn enter<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/run/netns/{}", self.name);
        std::thread::spawn(move || {
            let file = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
            rustix::thread::move_into_link_name_space(
                std::os::fd::AsFd::as_fd(&file),
                Some(rustix::thread::LinkNameSpaceType::Network),
            )
            .unwrap_or_else(|e| panic!("setns into {path}: {e}"));
            f()
        })
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(e) = run("ip", &["netns", "del", &self.name]) {
            eprintln!("cleanup: {e}");
        }
    }
}

/// Deletes namespaces that test processes which no longer run left behind (killed runs).
fn delete_orphans() {
    let Ok(list) = run("ip", &["netns", "list"]) else { return };
    for line in list.lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        let Some(rest) = name.strip_prefix("spnft-") else { continue };
        let Some(pid) = rest.split('-').next() else { continue };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = run("ip", &["netns", "del", name]);
        }
    }
}

/// Client, proxy and backend namespaces, wired as in the module doc.
#[derive(Debug)]
pub struct Topology {
    pub client: Netns,
    pub proxy: Netns,
    pub backend: Netns,
}

impl Topology {
    pub fn new() -> Self {
        static ORPHANS: Once = Once::new();
        static SEQ: AtomicUsize = AtomicUsize::new(0);
        for tool in ["ip", "nft", "sysctl"] {
            if run("sh", &["-c", &format!("command -v {tool}")]).is_err() {
                panic!("`{tool}` is missing: the nftables tests need iproute2, nftables, procps");
            }
        }
        ORPHANS.call_once(delete_orphans);
        let id = format!("spnft-{}-{}", std::process::id(), SEQ.fetch_add(1, Ordering::Relaxed));
        let client = Netns::create(format!("{id}-client"));
        let proxy = Netns::create(format!("{id}-proxy"));
        let backend = Netns::create(format!("{id}-backend"));
        // Veth pairs made inside the namespaces: nothing is added to the host's namespace.
        client.ip(&[
            "link",
            "add",
            "eth0",
            "type",
            "veth",
            "peer",
            "name",
            "veth-c",
            "netns",
            proxy.name(),
        ]);
        backend.ip(&[
            "link",
            "add",
            "eth0",
            "type",
            "veth",
            "peer",
            "name",
            "veth-b",
            "netns",
            proxy.name(),
        ]);
        for (ns, dev, addrs) in [
            (
                &client,
                "eth0",
                [format!("{CLIENT}/24"), format!("{CLIENT2}/24"), format!("{CLIENT6}/64")],
            ),
            (&proxy, "veth-c", ["10.200.1.1/24".into(), format!("{PROXY6}/64"), String::new()]),
            (
                &proxy,
                "veth-b",
                ["10.200.2.1/24".into(), format!("{PROXY6_INSIDE}/64"), String::new()],
            ),
            (
                &backend,
                "eth0",
                [format!("{BACKEND}/24"), format!("{BACKEND2}/24"), format!("{BACKEND6}/64")],
            ),
        ] {
            for a in addrs.iter().filter(|a| !a.is_empty()) {
                let mut args = vec!["addr", "add", a.as_str(), "dev", dev];
                if a.contains(':') {
                    args.push("nodad");
                }
                ns.ip(&args);
            }
            ns.ip(&["link", "set", "dev", dev, "up"]);
        }
        client.ip(&["route", "add", "default", "via", PROXY]);
        client.ip(&["-6", "route", "add", "default", "via", PROXY6]);
        backend.ip(&["route", "add", "default", "via", PROXY_INSIDE]);
        backend.ip(&["-6", "route", "add", "default", "via", PROXY6_INSIDE]);
        proxy.sysctl("net.ipv4.ip_forward", "1");
        proxy.sysctl("net.ipv6.conf.all.forwarding", "1");
        Self { client, proxy, backend }
    }

    /// A manager of the proxy namespace's table.
    pub fn manager(&self) -> Manager {
        Manager::new(self.proxy.nft())
    }
}

pub fn sa(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse::<IpAddr>().expect("test address"), port)
}

/// Polls `f` every 10 ms until it returns `Some`, for at most `limit`; panics naming `what`.
#[track_caller]
pub fn eventually<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        if start.elapsed() > limit {
            panic!("timed out after {limit:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A TCP server in a namespace. Each connection first gets one line, `LOCAL PEER\n` (the
/// address it reached and the client address it saw), then an echo of everything it sends.
#[derive(Debug)]
pub struct TcpEcho {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    pub addr: SocketAddr,
}

impl TcpEcho {
    pub fn start(ns: &Netns, addr: SocketAddr) -> Self {
        let listener = ns.enter(move || TcpListener::bind(addr));
        let listener = listener.unwrap_or_else(|e| panic!("bind {addr}: {e}"));
        listener.set_nonblocking(true).expect("nonblocking listener");
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((conn, peer)) => {
                        std::thread::spawn(move || echo(conn, peer));
                    }
                    // The accept loop of a test server: a short poll keeps stopping simple.
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Self { stop, thread: Some(thread), addr }
    }
}

fn echo(mut conn: TcpStream, peer: SocketAddr) {
    let _ = conn.set_nonblocking(false);
    let local = conn.local_addr().map(|a| a.to_string()).unwrap_or_default();
    if conn.write_all(format!("{local} {peer}\n").as_bytes()).is_err() {
        return;
    }
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if conn.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = conn.shutdown(std::net::Shutdown::Write);
}

impl Drop for TcpEcho {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A client connection through the proxy, with the server's greeting read.
#[derive(Debug)]
pub struct Conn {
    pub stream: BufReader<TcpStream>,
    /// The address of the backend that answered.
    pub backend: SocketAddr,
    /// The client address the backend saw.
    pub seen_as: SocketAddr,
}

/// Connects from the client namespace (optionally from `source`) to `to`.
pub fn connect(
    ns: &Netns,
    source: Option<&str>,
    to: SocketAddr,
    timeout: Duration,
) -> std::io::Result<TcpStream> {
    let source = source.map(|s| sa(s, 0));
    ns.enter(move || {
        let domain = if to.is_ipv4() { socket2::Domain::IPV4 } else { socket2::Domain::IPV6 };
        let s = socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))?;
        if let Some(src) = source {
            s.bind(&src.into())?;
        }
        s.connect_timeout(&to.into(), timeout)?;
        Ok(s.into())
    })
}

/// [`connect`] that must work, with the greeting read.
#[track_caller]
pub fn open(ns: &Netns, source: Option<&str>, to: SocketAddr) -> Conn {
    let stream =
        connect(ns, source, to, PATIENCE).unwrap_or_else(|e| panic!("connect to {to}: {e}"));
    stream.set_read_timeout(Some(PATIENCE)).expect("read timeout");
    let mut stream = BufReader::new(stream);
    let mut line = String::new();
    stream.read_line(&mut line).unwrap_or_else(|e| panic!("greeting from {to}: {e}"));
    let mut parts = line.split_whitespace().map(|p| p.parse::<SocketAddr>());
    match (parts.next(), parts.next()) {
        (Some(Ok(backend)), Some(Ok(seen_as))) => Conn { stream, backend, seen_as },
        _ => panic!("bad greeting from {to}: {line:?}"),
    }
}

impl Conn {
    /// Sends `data` and reads the same number of bytes back; returns them.
    #[track_caller]
    pub fn round_trip(&mut self, data: &[u8]) -> Vec<u8> {
        let mut writer = self.stream.get_ref().try_clone().expect("clone stream");
        let len = data.len();
        let data = data.to_vec();
        // Write on another thread: an echo of a large buffer would fill both directions.
        let w = std::thread::spawn(move || writer.write_all(&data));
        let mut back = vec![0u8; len];
        self.stream.read_exact(&mut back).unwrap_or_else(|e| panic!("echo of {len} bytes: {e}"));
        w.join().expect("writer thread").expect("write");
        back
    }

    /// Half-closes, then waits for the server's end of stream.
    #[track_caller]
    pub fn finish(mut self) {
        self.stream.get_ref().shutdown(std::net::Shutdown::Write).expect("shutdown");
        let mut rest = Vec::new();
        self.stream.read_to_end(&mut rest).expect("end of stream");
        assert!(rest.is_empty(), "{} unexpected bytes after the echo", rest.len());
    }
}

/// Bytes that differ from one position to the next, so that a reordering shows.
pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u32).wrapping_mul(2_654_435_761).to_be_bytes()[0] ^ seed).collect()
}

/// What [`UdpEcho`] adds to every datagram it sends back (so that the two directions differ).
pub const UDP_SUFFIX: &[u8] = b"ok!";

/// A UDP echo server in a namespace; every datagram is answered with itself followed by
/// [`UDP_SUFFIX`], and the sender's address is reported on `peers`.
#[derive(Debug)]
pub struct UdpEcho {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    pub peers: Receiver<SocketAddr>,
}

impl UdpEcho {
    pub fn start(ns: &Netns, addr: SocketAddr) -> Self {
        let socket = ns
            .enter(move || UdpSocket::bind(addr))
            .unwrap_or_else(|e| panic!("bind udp {addr}: {e}"));
        socket.set_read_timeout(Some(Duration::from_millis(50))).expect("timeout");
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let (tx, peers) = mpsc::channel();
        let thread = std::thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            while !flag.load(Ordering::Relaxed) {
                if let Ok((n, peer)) = socket.recv_from(&mut buf[..65000]) {
                    let _ = tx.send(peer);
                    buf[n..n + UDP_SUFFIX.len()].copy_from_slice(UDP_SUFFIX);
                    let _ = socket.send_to(&buf[..n + UDP_SUFFIX.len()], peer);
                }
            }
        });
        Self { stop, thread: Some(thread), peers }
    }
}

impl Drop for UdpEcho {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
