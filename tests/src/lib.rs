//! Shared helpers for the end-to-end tests: the `smartproxy` binary as a real process, real
//! peers (haproxy, prometheus, the statsd daemon), loopback backends that record what they see,
//! and clients bound to chosen 127.0.0.x source addresses.
//!
//! Every wait here is bounded; a peer that is missing fails the test with what to install
//! (`cargo xtask deps` installs them all).
#![allow(clippy::print_stdout, clippy::print_stderr, missing_docs)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

pub use tempfile::TempDir;

pub mod pebble;

/// How long any single wait in these helpers may take.
pub const WAIT: Duration = Duration::from_secs(15);

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ has a parent").to_path_buf()
}

/// Path of the `smartproxy` binary, built once per test process with the same profile and
/// target directory as the tests themselves, so it is never stale.
pub fn smartproxy_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        // target/<profile>/deps/<test-exe>
        let exe = std::env::current_exe().expect("current_exe");
        let profile_dir = exe.parent().and_then(Path::parent).expect("target/<profile>");
        let target_dir = profile_dir.parent().expect("target dir");
        let release = profile_dir.file_name().is_some_and(|n| n == "release");
        let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        // Without the variables cargo sets for this test process: build scripts that watch
        // them (ring's: `CARGO_MANIFEST_DIR`, `CARGO_PKG_NAME`, ...) would otherwise see them
        // change between this build and the next `cargo test`, and both would rebuild ring,
        // rustls and the engine every time (20-40 s per test binary).
        for (k, _) in std::env::vars_os() {
            let k = k.to_string_lossy();
            if k.starts_with("CARGO_PKG_")
                || k.starts_with("CARGO_MANIFEST_")
                || k.starts_with("CARGO_BIN_")
                || matches!(&*k, "CARGO_CRATE_NAME" | "CARGO_TARGET_TMPDIR" | "OUT_DIR")
            {
                cmd.env_remove(&*k);
            }
        }
        cmd.args(["build", "--quiet", "-p", "smartproxy", "--target-dir"])
            .arg(target_dir)
            .current_dir(workspace_root());
        if release {
            cmd.arg("--release");
        }
        let st = cmd.status().expect("run cargo build -p smartproxy");
        assert!(st.success(), "cargo build -p smartproxy failed");
        let bin = profile_dir.join("smartproxy");
        assert!(bin.exists(), "{} missing after build", bin.display());
        bin
    })
    .clone()
}

/// Fails the test, naming the package, when a peer program is missing.
pub fn require(cmd: &str, package: &str) -> PathBuf {
    let out = Command::new("sh").args(["-c", &format!("command -v {cmd}")]).output().expect("sh");
    let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(
        out.status.success() && !path.is_empty(),
        "`{cmd}` is not installed: run `cargo xtask deps` or `apt-get install {package}`"
    );
    PathBuf::from(path)
}

/// A free TCP port on 127.0.0.1 for a server the test starts later.
///
/// Taken below the kernel's ephemeral range (32768-60999 by default), so that no outgoing
/// connection (the proxy's own, to its backends) can take it between now and the bind; each
/// call hands out a new one (a counter from a per-process start, checked by binding on every
/// address the proxies use).
pub fn free_port() -> u16 {
    use std::sync::atomic::AtomicU32;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let base = 10_000 + (std::process::id() % 100) * 200;
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = (base + n % 20_000) as u16;
        let port = if port >= 32_000 { port - 22_000 } else { port };
        let free = TcpListener::bind(("127.0.0.1", port)).is_ok()
            && TcpListener::bind(("0.0.0.0", port)).is_ok()
            && !port_listening(port);
        if free {
            return port;
        }
    }
}

/// Several distinct free ports.
pub fn free_ports<const N: usize>() -> [u16; N] {
    std::array::from_fn(|_| free_port())
}

/// Whether some socket on this machine listens on TCP `port` (read from /proc/net/tcp{,6},
/// so that no probe connection is made).
pub fn port_listening(port: u16) -> bool {
    let needle = format!(":{port:04X} ");
    ["/proc/net/tcp", "/proc/net/tcp6"].iter().any(|f| {
        std::fs::read_to_string(f).unwrap_or_default().lines().skip(1).any(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            cols.len() > 3 && format!("{} ", cols[1]).ends_with(&needle) && cols[3] == "0A"
        })
    })
}

/// Connects to `to` from the source address `from` (any 127.0.0.x works on Linux loopback).
pub fn connect_from(from: Ipv4Addr, to: SocketAddr) -> std::io::Result<TcpStream> {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    sock.bind(&SocketAddr::new(IpAddr::V4(from), 0).into())?;
    sock.connect_timeout(&to.into(), WAIT)?;
    let s: TcpStream = sock.into();
    s.set_read_timeout(Some(WAIT))?;
    s.set_write_timeout(Some(WAIT))?;
    Ok(s)
}

/// Connects to 127.0.0.1:`port` with timeouts set.
pub fn connect(port: u16) -> TcpStream {
    connect_from(Ipv4Addr::LOCALHOST, SocketAddr::from(([127, 0, 0, 1], port)))
        .unwrap_or_else(|e| panic!("connect to 127.0.0.1:{port}: {e}"))
}

/// Reads until EOF (bounded by the stream's read timeout); returns what came and whether the
/// peer closed (true) or reset / timed out (false).
pub fn read_to_end(s: &mut TcpStream) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return (out, true),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(_) => return (out, false),
        }
    }
}

/// Sends a line and waits for the same bytes back (for echo backends).
pub fn echo_roundtrip(s: &mut TcpStream, msg: &[u8]) -> std::io::Result<Vec<u8>> {
    s.write_all(msg)?;
    let mut got = vec![0u8; msg.len()];
    s.read_exact(&mut got)?;
    Ok(got)
}

/// Waits until `f` is true, polling; panics with `what` after [`WAIT`].
pub fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        if f() {
            return;
        }
        thread::sleep(Duration::from_millis(25));
    }
    panic!("timed out waiting for: {what}");
}

// ----------------------------------------------------------------------------------------
// The proxy process

/// A running `smartproxy run -c FILE`; killed on drop. Its stdout and stderr are collected.
pub struct Proxy {
    child: Child,
    pub dir: TempDir,
    pub config_path: PathBuf,
    output: Arc<Mutex<String>>,
    readers: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy").field("pid", &self.child.id()).finish()
    }
}

impl Proxy {
    /// Starts the binary with this TOML config and waits until every port in `ports` accepts
    /// connections as the binary reports them (its "listening on" lines).
    pub fn start(config: &str, ports: &[u16]) -> Proxy {
        Self::start_with(config, "toml", ports, &[])
    }

    /// Same, with the config file extension (`toml` / `json`) and extra environment.
    pub fn start_with(config: &str, ext: &str, ports: &[u16], env: &[(&str, &str)]) -> Proxy {
        let dir = tempfile::tempdir().unwrap();
        let config_path = dir.path().join(format!("smartproxy.{ext}"));
        std::fs::write(&config_path, config).unwrap();
        let mut child = Command::new(smartproxy_bin())
            .args(["run", "-c"])
            .arg(&config_path)
            .env("RUST_LOG", std::env::var("SMARTPROXY_TEST_LOG").unwrap_or_else(|_| "info".into()))
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn smartproxy");
        let output = Arc::new(Mutex::new(String::new()));
        let mut readers = Vec::new();
        let out: Box<dyn Read + Send> = Box::new(child.stdout.take().unwrap());
        let err: Box<dyn Read + Send> = Box::new(child.stderr.take().unwrap());
        for stream in [out, err] {
            let output = output.clone();
            readers.push(thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    if std::env::var_os("SMARTPROXY_TEST_ECHO").is_some() {
                        eprintln!("[proxy] {line}");
                    }
                    let mut o = output.lock();
                    o.push_str(&line);
                    o.push('\n');
                }
            }));
        }
        let mut p = Proxy { child, dir, config_path, output, readers };
        for port in ports {
            let needle = format!(":{port}");
            p.wait_for_output(&format!("listening on port {port}"), |o| {
                o.lines().any(|l| l.contains("listening") && l.contains(&needle))
            });
        }
        p
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the process printed so far (stdout and stderr).
    pub fn output(&self) -> String {
        self.output.lock().clone()
    }

    /// Waits until the output satisfies `f`; panics with the output on timeout.
    pub fn wait_for_output(&mut self, what: &str, f: impl Fn(&str) -> bool) {
        let deadline = Instant::now() + WAIT;
        loop {
            if f(&self.output()) {
                return;
            }
            if let Ok(Some(st)) = self.child.try_wait() {
                thread::sleep(Duration::from_millis(100));
                panic!("smartproxy exited ({st}) while waiting for {what}:\n{}", self.output());
            }
            if Instant::now() > deadline {
                panic!("timed out waiting for {what}; smartproxy printed:\n{}", self.output());
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until `needle` appears in the output.
    pub fn wait_for_log(&mut self, needle: &str) {
        let n = needle.to_string();
        self.wait_for_output(needle, move |o| o.contains(&n));
    }

    pub fn signal(&self, sig: &str) {
        let st =
            Command::new("kill").args([&format!("-{sig}"), &self.child.id().to_string()]).status();
        assert!(st.is_ok_and(|s| s.success()), "kill -{sig}");
    }

    /// Rewrites the config file and sends SIGHUP.
    pub fn reload(&self, config: &str) {
        std::fs::write(&self.config_path, config).unwrap();
        self.signal("HUP");
    }

    /// SIGTERM, then waits for the exit (bounded); returns the exit code.
    pub fn terminate(mut self) -> Option<i32> {
        self.signal("TERM");
        let deadline = Instant::now() + WAIT;
        loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                return st.code();
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("smartproxy did not exit within {WAIT:?} of SIGTERM:\n{}", self.output());
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Resident set size in KiB (from /proc).
    pub fn rss_kib(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
        if thread::panicking() {
            eprintln!("---- smartproxy output ----\n{}", self.output());
        }
    }
}

// ----------------------------------------------------------------------------------------
// Backends

/// What a backend saw on one connection.
#[derive(Debug, Clone)]
pub struct Seen {
    /// TCP peer of the connection (the proxy).
    pub peer: SocketAddr,
    /// Source address from the PROXY header, if the backend expects one.
    pub proxy_source: Option<SocketAddr>,
    /// The PROXY header version (1 or 2) if one came.
    pub proxy_version: Option<u8>,
    /// Bytes received (after the PROXY header).
    pub bytes: u64,
}

/// A loopback TCP backend on its own thread: optionally parses a PROXY header with our own
/// parser, then echoes every byte, and records what it saw per connection.
pub struct Backend {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backend").field("addr", &self.addr).finish()
    }
}

/// How a [`Backend`] answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Echo every byte back.
    Echo,
    /// Write the client address it saw (PROXY source, else peer) as a line, then echo.
    TellAddr,
}

impl Backend {
    /// An echo backend that expects no PROXY header.
    pub fn echo() -> Backend {
        Self::start(false, Mode::Echo)
    }

    /// A backend that requires a PROXY header (v1 or v2) and echoes after it.
    pub fn expecting_proxy() -> Backend {
        Self::start(true, Mode::Echo)
    }

    pub fn start(expect_proxy: bool, mode: Mode) -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (seen2, stop2) = (seen.clone(), stop.clone());
        let thread = thread::spawn(move || {
            while !stop2.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((s, peer)) => {
                        let seen = seen2.clone();
                        thread::spawn(move || serve(s, peer, expect_proxy, mode, seen));
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        thread::sleep(Duration::from_millis(5));
                    }
                    Err(_) => thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Backend { addr, seen, stop, thread: Some(thread) }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().clone()
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(
    mut s: TcpStream,
    peer: SocketAddr,
    expect_proxy: bool,
    mode: Mode,
    seen: Arc<Mutex<Vec<Seen>>>,
) {
    let _ = s.set_nonblocking(false);
    let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
    let mut buf = Vec::with_capacity(512);
    let (mut proxy_source, mut proxy_version) = (None, None);
    let mut chunk = [0u8; 64 * 1024];
    if expect_proxy {
        loop {
            match smartproxy_proxy_protocol::parse(&buf) {
                Ok(smartproxy_proxy_protocol::Parsed::Complete { header, consumed }) => {
                    proxy_source = header.source();
                    proxy_version = Some(match header.version() {
                        smartproxy_proxy_protocol::Version::V1 => 1,
                        _ => 2,
                    });
                    buf.drain(..consumed);
                    break;
                }
                Ok(_) => match s.read(&mut chunk) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                },
                Err(_) => return,
            }
        }
    }
    let idx = {
        let mut v = seen.lock();
        v.push(Seen { peer, proxy_source, proxy_version, bytes: buf.len() as u64 });
        v.len() - 1
    };
    if mode == Mode::TellAddr {
        let who = proxy_source.unwrap_or(peer);
        if s.write_all(format!("{who}\n").as_bytes()).is_err() {
            return;
        }
    }
    if !buf.is_empty() && s.write_all(&buf).is_err() {
        return;
    }
    loop {
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                seen.lock()[idx].bytes += n as u64;
                if s.write_all(&chunk[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = s.shutdown(Shutdown::Write);
}

// ----------------------------------------------------------------------------------------
// HAProxy

/// A real haproxy process (`haproxy -db -f cfg`), killed on drop.
#[derive(Debug)]
pub struct Haproxy {
    child: Child,
    _dir: TempDir,
}

impl Haproxy {
    /// Starts haproxy with this config and waits until `port` accepts connections.
    pub fn start(config: &str, port: u16) -> Haproxy {
        let bin = require("haproxy", "haproxy");
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("haproxy.cfg");
        std::fs::write(&cfg, config).unwrap();
        let check = Command::new(&bin).args(["-c", "-q", "-f"]).arg(&cfg).output().unwrap();
        assert!(check.status.success(), "haproxy -c: {}", String::from_utf8_lossy(&check.stderr));
        let child = Command::new(&bin)
            .args(["-db", "-f"])
            .arg(&cfg)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        wait_until("haproxy listening", || port_listening(port));
        Haproxy { child, _dir: dir }
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ----------------------------------------------------------------------------------------
// Certificates (generated per test; never committed)

/// A throwaway CA and leaf certificates, written as PEM files into a temporary directory.
#[derive(Debug)]
pub struct Pki {
    pub dir: TempDir,
    pub ca_pem: PathBuf,
    ca: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
}

/// A leaf certificate's files.
#[derive(Debug, Clone)]
pub struct LeafFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Pki {
    pub fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.distinguished_name.push(rcgen::DnType::CommonName, "smartproxy test CA");
        params.key_usages =
            vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign];
        let ca = rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().unwrap())
            .unwrap();
        let ca_pem = dir.path().join("ca.pem");
        std::fs::write(&ca_pem, ca.pem()).unwrap();
        Pki { dir, ca_pem, ca }
    }

    /// A leaf for these DNS names (and 127.0.0.1), signed by the CA; `name` names the files.
    pub fn leaf(&self, name: &str, dns: &[&str]) -> LeafFiles {
        let mut sans: Vec<String> = dns.iter().map(|s| s.to_string()).collect();
        sans.push("127.0.0.1".into());
        let mut params = rcgen::CertificateParams::new(sans).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, dns.first().copied().unwrap_or(name));
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.ca).unwrap();
        let files = LeafFiles {
            cert: self.dir.path().join(format!("{name}.pem")),
            key: self.dir.path().join(format!("{name}.key")),
        };
        std::fs::write(&files.cert, cert.pem()).unwrap();
        std::fs::write(&files.key, key.serialize_pem()).unwrap();
        files
    }
}

impl Default for Pki {
    fn default() -> Self {
        Self::new()
    }
}

/// `openssl s_server` on a loopback port with this leaf, answering HTTP with `-www`; killed on
/// drop.
#[derive(Debug)]
pub struct OpensslServer {
    child: Child,
    pub port: u16,
}

impl OpensslServer {
    pub fn start(leaf: &LeafFiles) -> OpensslServer {
        let bin = require("openssl", "openssl");
        let port = free_port();
        let child = Command::new(bin)
            .args(["s_server", "-quiet", "-www", "-accept"])
            .arg(format!("127.0.0.1:{port}"))
            .arg("-cert")
            .arg(&leaf.cert)
            .arg("-key")
            .arg(&leaf.key)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        wait_until("openssl s_server listening", || port_listening(port));
        OpensslServer { child, port }
    }
}

impl Drop for OpensslServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs curl with these arguments (bounded by --max-time); returns (exit code, stdout, stderr).
pub fn curl(args: &[&str]) -> (i32, String, String) {
    let bin = require("curl", "curl");
    let out = Command::new(bin).args(["-sS", "--max-time", "10"]).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

// ----------------------------------------------------------------------------------------
// HTTP (admin API, Prometheus): a minimal HTTP/1.1 client over a fresh connection.

/// An HTTP response: status, headers (lower-case names) and body.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

/// Sends one request to 127.0.0.1:`port` (`Connection: close`) and reads the whole answer.
pub fn http(port: u16, method: &str, path: &str, headers: &[(&str, &str)]) -> HttpResponse {
    let mut s = connect(port);
    let mut req =
        format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if method == "POST" {
        req.push_str("Content-Length: 0\r\n");
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    let (raw, _) = read_to_end(&mut s);
    let raw = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {raw:?}"));
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let chunked = headers.iter().any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"));
    let body = if chunked { dechunk(body) } else { body.to_owned() };
    HttpResponse { status, headers, body }
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// `GET path` on the admin API.
pub fn get(port: u16, path: &str) -> HttpResponse {
    http(port, "GET", path, &[])
}

// ----------------------------------------------------------------------------------------
// HTTP backend and TLS probes (TLS termination, routing, load balancing, reload under load)

/// A loopback HTTP/1.1 server on its own threads: answers every request (keep-alive; request
/// bodies are not expected) with `200 OK` and its `body`, and counts requests and connections.
pub struct HttpBackend {
    pub addr: SocketAddr,
    pub requests: Arc<std::sync::atomic::AtomicU64>,
    pub connections: Arc<std::sync::atomic::AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for HttpBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpBackend").field("addr", &self.addr).finish()
    }
}

impl HttpBackend {
    pub fn start(body: &str) -> HttpBackend {
        use std::sync::atomic::AtomicU64;
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(AtomicU64::new(0));
        let connections = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let response = Arc::new(
            format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .into_bytes(),
        );
        let (req2, conn2, stop2) = (requests.clone(), connections.clone(), stop.clone());
        let thread = thread::spawn(move || {
            while !stop2.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut s, _)) => {
                        conn2.fetch_add(1, Ordering::Relaxed);
                        let (reqs, resp, stop) = (req2.clone(), response.clone(), stop2.clone());
                        thread::spawn(move || {
                            let _ = s.set_nonblocking(false);
                            let _ = s.set_nodelay(true);
                            let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
                            let mut buf = Vec::with_capacity(4096);
                            let mut chunk = [0u8; 8192];
                            while !stop.load(Ordering::Relaxed) {
                                while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n")
                                {
                                    buf.drain(..end + 4);
                                    reqs.fetch_add(1, Ordering::Relaxed);
                                    if s.write_all(&resp).is_err() {
                                        return;
                                    }
                                }
                                match s.read(&mut chunk) {
                                    Ok(0) => return,
                                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                                    Err(e)
                                        if matches!(
                                            e.kind(),
                                            std::io::ErrorKind::WouldBlock
                                                | std::io::ErrorKind::TimedOut
                                        ) => {}
                                    Err(_) => return,
                                }
                            }
                        });
                    }
                    Err(_) => thread::sleep(Duration::from_millis(2)),
                }
            }
        });
        HttpBackend { addr, requests, connections, stop, thread: Some(thread) }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }
}

impl Drop for HttpBackend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The subject line (`subject=CN = ...`) of the certificate served on 127.0.0.1:`port` for
/// `sni`, as `openssl s_client` prints it (empty when the handshake failed).
pub fn served_subject(port: u16, sni: &str) -> String {
    let bin = require("openssl", "openssl");
    let out = Command::new(bin)
        .args(["s_client", "-connect", &format!("127.0.0.1:{port}"), "-servername", sni])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find(|l| l.starts_with("subject="))
        .unwrap_or("")
        .to_string()
}

/// Runs `wrk` with these arguments (`-t1 -c10 -d10s URL`); returns its stdout.
pub fn wrk(args: &[&str]) -> String {
    let bin = require("wrk", "wrk");
    let out = Command::new(bin).args(args).output().unwrap();
    assert!(out.status.success(), "wrk failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// nginx serving HTTPS on a loopback port with this leaf, answering every request with
/// `body`; killed on drop.
#[derive(Debug)]
pub struct NginxTls {
    child: Child,
    pub port: u16,
    _dir: TempDir,
}

impl NginxTls {
    pub fn start(leaf: &LeafFiles, body: &str) -> NginxTls {
        let bin = require("nginx", "nginx-light");
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display();
        let port = free_port();
        let conf = format!(
            "daemon off;\nmaster_process off;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\n\
             events {{ worker_connections 256; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n  fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
             \x20 server {{\n    listen 127.0.0.1:{port} ssl;\n    ssl_certificate {c};\n    ssl_certificate_key {k};\n    location / {{ return 200 \"{body}\"; }}\n  }}\n}}\n",
            c = leaf.cert.display(),
            k = leaf.key.display()
        );
        let path = dir.path().join("nginx.conf");
        std::fs::write(&path, conf).unwrap();
        let child = Command::new(bin)
            .arg("-p")
            .arg(dir.path())
            .arg("-e")
            .arg(dir.path().join("error.log"))
            .arg("-c")
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        wait_until("nginx listening", || port_listening(port));
        NginxTls { child, port, _dir: dir }
    }
}

impl Drop for NginxTls {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
