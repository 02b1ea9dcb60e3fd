//! Real peers for the ACME tests: Debian's `pebble` (the ACME CA) with `pebble-challtestsrv`
//! as its DNS server (every name resolves to 127.0.0.1), challenge responders built from the
//! crate's HTTP-01 and TLS-ALPN-01 helpers, a TLS server presenting a route's certificate,
//! a switchable TCP relay that takes the CA "down", and `curl`.
#![allow(dead_code, unreachable_pub)]

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use rustls::pki_types::{CertificateDer, ServerName};
use smartproxy_acme::{CertHandle, CertManager};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Polls `cond` every 50 ms until it holds; fails loudly with `what` after `limit`.
pub async fn eventually<F, Fut>(what: &str, limit: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    loop {
        if cond().await {
            return;
        }
        assert!(Instant::now() < deadline, "timed out after {limit:?} waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Fails naming the missing program (tests never skip).
pub fn require(cmd: &str, package: &str) {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {cmd}")])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        found,
        "`{cmd}` is missing: install the Debian package `{package}` (cargo xtask deps does)"
    );
}

/// The manager the responders answer for; swapped when a test "restarts" the proxy.
#[derive(Clone, Default)]
pub struct Current(Arc<Mutex<Option<CertManager>>>);

impl Current {
    pub fn set(&self, m: &CertManager) {
        *self.0.lock() = Some(m.clone());
    }
    fn get(&self) -> Option<CertManager> {
        self.0.lock().clone()
    }
}

/// A port-80 stand-in: reads the request head, lets the manager answer HTTP-01, else 404.
pub struct Http01Responder {
    pub addr: SocketAddr,
    pub answered: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl Http01Responder {
    pub async fn start(current: Current) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let answered = Arc::new(AtomicU64::new(0));
        let count = Arc::clone(&answered);
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else { return };
                let current = current.clone();
                let count = Arc::clone(&count);
                tokio::spawn(async move {
                    let Some(head) = read_head(&mut s).await else { return };
                    let mut headers = [httparse::EMPTY_HEADER; 32];
                    let mut req = httparse::Request::new(&mut headers);
                    let (method, target) = match req.parse(&head) {
                        Ok(_) => {
                            (req.method.unwrap_or("").to_owned(), req.path.unwrap_or("").to_owned())
                        }
                        Err(_) => return,
                    };
                    if let Some(m) = current.get() {
                        if m.answer_http01(&mut s, &method, &target).await.unwrap_or(false) {
                            count.fetch_add(1, Ordering::Relaxed);
                            return;
                        }
                    }
                    let _ = s
                        .write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                        .await;
                });
            }
        });
        Self { addr, answered, task }
    }
}

impl Drop for Http01Responder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn read_head(s: &mut TcpStream) -> Option<Vec<u8>> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        if buf.len() > 16 * 1024 {
            return None;
        }
        let n =
            tokio::time::timeout(Duration::from_secs(10), s.read(&mut chunk)).await.ok()?.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Some(buf)
}

/// A port-443 stand-in for validation: every connection is a TLS-ALPN-01 handshake.
pub struct TlsAlpnResponder {
    pub addr: SocketAddr,
    pub answered: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl TlsAlpnResponder {
    pub async fn start(current: Current) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let answered = Arc::new(AtomicU64::new(0));
        let count = Arc::clone(&answered);
        let task = tokio::spawn(async move {
            loop {
                let Ok((s, _)) = listener.accept().await else { return };
                let current = current.clone();
                let count = Arc::clone(&count);
                tokio::spawn(async move {
                    if let Some(m) = current.get() {
                        if m.answer_tls_alpn01(s).await.is_ok() {
                            count.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                });
            }
        });
        Self { addr, answered, task }
    }
}

impl Drop for TlsAlpnResponder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A TLS server presenting `handle`'s certificate (as the engine's resolver would); answers
/// every HTTP/1.1 request on a connection with `200 ok`.
pub struct TlsServer {
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl TlsServer {
    pub async fn start(handle: CertHandle) -> Self {
        let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(handle));
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            loop {
                let Ok((s, _)) = listener.accept().await else { return };
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(s).await else { return };
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 1024];
                    loop {
                        let Ok(n) = tls.read(&mut chunk).await else { return };
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            buf.drain(..end + 4);
                            let rsp = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n";
                            if tls.write_all(rsp).await.is_err() {
                                return;
                            }
                        }
                    }
                });
            }
        });
        Self { addr, task }
    }
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A verifying TLS client connection to a [`TlsServer`], trusting only `root`.
pub struct Client {
    tls: tokio_rustls::client::TlsStream<TcpStream>,
}

impl Client {
    pub async fn connect(addr: SocketAddr, name: &str, root: &Path) -> Result<Self, String> {
        let mut roots = rustls::RootCertStore::empty();
        let pem = std::fs::read(root).unwrap();
        for c in rustls::pki_types::pem::PemObject::pem_slice_iter(&pem) {
            let c: CertificateDer<'static> = c.unwrap();
            roots.add(c).unwrap();
        }
        let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        let name = ServerName::try_from(name.to_owned()).unwrap();
        let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
            .connect(name, tcp)
            .await
            .map_err(|e| e.to_string())?;
        Ok(Self { tls })
    }

    /// The serial (hex) of the certificate the server presented.
    pub fn serial(&self) -> String {
        let (_, conn) = self.tls.get_ref();
        let leaf = &conn.peer_certificates().unwrap()[0];
        serial_of(leaf)
    }

    /// One request/response round trip on this connection.
    pub async fn round_trip(&mut self) -> Result<(), String> {
        self.tls
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .map_err(|e| e.to_string())?;
        let mut got = Vec::new();
        let mut chunk = [0u8; 256];
        while !got.ends_with(b"ok\n") {
            let n = tokio::time::timeout(Duration::from_secs(5), self.tls.read(&mut chunk))
                .await
                .map_err(|_| "no response within 5s".to_owned())?
                .map_err(|e| e.to_string())?;
            if n == 0 {
                return Err("connection closed".into());
            }
            got.extend_from_slice(&chunk[..n]);
        }
        Ok(())
    }
}

pub fn serial_of(der: &[u8]) -> String {
    use x509_parser::prelude::FromDer;
    let (_, c) = x509_parser::certificate::X509Certificate::from_der(der).unwrap();
    c.raw_serial_as_string().replace(':', "")
}

/// `curl --cacert ROOT --resolve NAME:PORT:127.0.0.1 https://NAME:PORT/`: (exit code, stdout,
/// stderr).
pub async fn curl(addr: SocketAddr, name: &str, root: &Path) -> (i32, String, String) {
    let out = tokio::process::Command::new("curl")
        .args(["-sS", "--max-time", "10", "--cacert"])
        .arg(root)
        .arg("--resolve")
        .arg(format!("{name}:{}:127.0.0.1", addr.port()))
        .arg(format!("https://{name}:{}/", addr.port()))
        .output()
        .await
        .expect("run curl");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A TCP relay in front of the CA: `up` forwards, `down` closes every connection (the CA
/// is unreachable), dropping those already open.
pub struct Relay {
    pub addr: SocketAddr,
    target: Arc<Mutex<SocketAddr>>,
    up: Arc<AtomicBool>,
    open: Arc<Mutex<Vec<JoinHandle<()>>>>,
    task: JoinHandle<()>,
}

impl Relay {
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let up = Arc::new(AtomicBool::new(true));
        let open = Arc::new(Mutex::new(Vec::<JoinHandle<()>>::new()));
        let target = Arc::new(Mutex::new(target));
        let (u, o, t) = (Arc::clone(&up), Arc::clone(&open), Arc::clone(&target));
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else { return };
                if !u.load(Ordering::SeqCst) {
                    continue; // dropped: closed at once
                }
                let target = *t.lock();
                let conn = tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(target).await else { return };
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                });
                let mut open = o.lock();
                open.retain(|c| !c.is_finished());
                open.push(conn);
            }
        });
        Self { addr, target, up, open, task }
    }

    /// Sends new connections to `target`; when it returns, the open ones are closed.
    pub async fn retarget(&self, target: SocketAddr) {
        *self.target.lock() = target;
        self.close_open().await;
    }

    /// Down: every new connection is closed at once, and when it returns the open ones are.
    pub async fn set_up(&self, up: bool) {
        self.up.store(up, Ordering::SeqCst);
        if !up {
            self.close_open().await;
        }
    }

    /// Aborts every relayed connection and waits until each task (and so its two
    /// sockets) is gone.
    async fn close_open(&self) {
        let open = std::mem::take(&mut *self.open.lock());
        for conn in open {
            conn.abort();
            let _ = conn.await;
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
        for conn in self.open.lock().iter() {
            conn.abort();
        }
    }
}

/// Pebble with its own configuration and HTTPS certificate (made here with rcgen), and
/// pebble-challtestsrv as its DNS server answering 127.0.0.1 for every name.
pub struct Pebble {
    dir: tempfile::TempDir,
    children: Vec<Child>,
    pub acme: SocketAddr,
    pub management: SocketAddr,
    /// The CA of pebble's own HTTPS certificate (`ca_roots`).
    pub https_ca: PathBuf,
}

#[derive(Debug, Clone, Copy)]
pub struct PebbleOptions {
    /// Where pebble sends HTTP-01 validation requests (`httpPort`).
    pub http_port: u16,
    /// Where pebble makes TLS-ALPN-01 validation handshakes (`tlsPort`).
    pub tls_port: u16,
    /// `certificateValidityPeriod` in seconds (pebble's default: 5 years).
    pub validity_secs: Option<u64>,
}

impl Pebble {
    pub async fn start(opts: PebbleOptions) -> Self {
        Self::start_inner(opts, None).await
    }

    /// A second pebble (fresh state: no accounts) with the same HTTPS certificate as `other`,
    /// so that it can take `other`'s place behind a [`Relay`].
    pub async fn start_sharing_https(opts: PebbleOptions, other: &Pebble) -> Self {
        Self::start_inner(opts, Some(other.dir.path())).await
    }

    async fn start_inner(opts: PebbleOptions, https_from: Option<&Path>) -> Self {
        require("pebble", "pebble");
        require("pebble-challtestsrv", "pebble");
        require("curl", "curl");
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path();

        // Pebble's HTTPS endpoint certificate, from a CA of our own.
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "smartproxy test CA for pebble's HTTPS");
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca_params, ca_key);
        let leaf_key = KeyPair::generate().unwrap();
        let leaf = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .unwrap()
            .signed_by(&leaf_key, &issuer)
            .unwrap();
        let https_ca = p.join("https-ca.pem");
        std::fs::write(&https_ca, ca_cert.pem()).unwrap();
        std::fs::write(p.join("cert.pem"), leaf.pem()).unwrap();
        std::fs::write(p.join("key.pem"), leaf_key.serialize_pem()).unwrap();
        if let Some(from) = https_from {
            for f in ["https-ca.pem", "cert.pem", "key.pem"] {
                std::fs::copy(from.join(f), p.join(f)).unwrap();
            }
        }

        let mut children = Vec::new();
        let dns = spawn(
            Command::new("pebble-challtestsrv")
                .args(["-dns01", "127.0.0.1:0", "-http01", "", "-https01", "", "-tlsalpn01", ""])
                .args([
                    "-management",
                    "127.0.0.1:0",
                    "-defaultIPv4",
                    "127.0.0.1",
                    "-defaultIPv6",
                    "",
                ]),
            &p.join("challtestsrv.log"),
        );
        let dns_pid = dns.id();
        children.push(dns);
        let mut me = Self {
            dir,
            children,
            acme: SocketAddr::from(([127, 0, 0, 1], 0)),
            management: SocketAddr::from(([127, 0, 0, 1], 0)),
            https_ca,
        };
        let dns_port = me.wait_ports(dns_pid, "udp", 1).await[0];

        let validity = opts.validity_secs.map(|v| format!(",\"certificateValidityPeriod\":{v}"));
        let config = format!(
            r#"{{"pebble":{{"listenAddress":"127.0.0.1:0","managementListenAddress":"127.0.0.1:0","certificate":"cert.pem","privateKey":"key.pem","httpPort":{},"tlsPort":{},"ocspResponderURL":"","externalAccountBindingRequired":false{}}}}}"#,
            opts.http_port,
            opts.tls_port,
            validity.unwrap_or_default()
        );
        std::fs::write(me.dir.path().join("pebble.json"), config).unwrap();
        let pebble = spawn(
            Command::new("pebble")
                .current_dir(me.dir.path())
                .args(["-config", "pebble.json", "-dnsserver"])
                .arg(format!("127.0.0.1:{dns_port}"))
                .env("PEBBLE_VA_NOSLEEP", "1"),
            &me.dir.path().join("pebble.log"),
        );
        let pid = pebble.id();
        me.children.push(pebble);
        let ports = me.wait_ports(pid, "tcp", 2).await;
        // Which listener is which: the ACME one serves the directory.
        for port in ports {
            let (code, body, _) = me.curl_get(port, "/dir").await;
            if code == 0 && body.contains("newAccount") {
                me.acme.set_port(port);
            } else {
                me.management.set_port(port);
            }
        }
        assert!(
            me.acme.port() != 0 && me.management.port() != 0,
            "cannot tell pebble's listeners apart\n{}",
            me.logs()
        );
        me
    }

    /// The directory URL.
    pub fn directory(&self) -> String {
        format!("https://localhost:{}/dir", self.acme.port())
    }

    /// The directory URL through `relay`.
    pub fn directory_via(&self, relay: &Relay) -> String {
        format!("https://localhost:{}/dir", relay.addr.port())
    }

    /// Pebble's issuing root (fresh each run), from the management interface, as a file.
    pub async fn issuing_root(&self) -> PathBuf {
        let (code, body, err) = self.curl_get(self.management.port(), "/roots/0").await;
        assert!(code == 0 && body.contains("BEGIN CERTIFICATE"), "GET /roots/0: {code} {err}");
        let path = self.dir.path().join("issuing-root.pem");
        std::fs::write(&path, body).unwrap();
        path
    }

    pub fn logs(&self) -> String {
        let read = |n: &str| std::fs::read_to_string(self.dir.path().join(n)).unwrap_or_default();
        format!(
            "--- pebble.log\n{}\n--- challtestsrv.log\n{}",
            read("pebble.log"),
            read("challtestsrv.log")
        )
    }

    async fn curl_get(&self, port: u16, path: &str) -> (i32, String, String) {
        let out = tokio::process::Command::new("curl")
            .args(["-sS", "--max-time", "5", "--cacert"])
            .arg(&self.https_ca)
            .arg(format!("https://localhost:{port}{path}"))
            .output()
            .await
            .expect("run curl");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// The ports `pid` listens on (`tcp`) or is bound to (`udp`), read from /proc once there
    /// are `n` of them: the processes bind port 0 and we read the ports back.
    async fn wait_ports(&self, pid: u32, proto: &str, n: usize) -> Vec<u16> {
        let mut found = Vec::new();
        eventually(
            &format!("{n} {proto} socket(s) of pid {pid}\n{}", self.logs()),
            Duration::from_secs(20),
            || {
                found = socket_ports(pid, proto);
                let ok = found.len() >= n;
                async move { ok }
            },
        )
        .await;
        found
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn spawn(cmd: &mut Command, log: &Path) -> Child {
    let out = std::fs::File::create(log).unwrap();
    let err = out.try_clone().unwrap();
    cmd.stdin(Stdio::null()).stdout(out).stderr(err).spawn().expect("start test peer")
}

/// Local ports of `pid`'s sockets in /proc/PID/net/{tcp,udp} (IPv4): listening TCP sockets,
/// or bound UDP sockets.
fn socket_ports(pid: u32, proto: &str) -> Vec<u16> {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { return Vec::new() };
    let inodes: Vec<String> = fds
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|l| {
            let l = l.to_string_lossy().into_owned();
            Some(l.strip_prefix("socket:[")?.strip_suffix(']')?.to_owned())
        })
        .collect();
    let table = std::fs::read_to_string(format!("/proc/{pid}/net/{proto}")).unwrap_or_default();
    let want_state = if proto == "tcp" { "0A" } else { "07" };
    let mut ports = Vec::new();
    for line in table.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 10 || f[3] != want_state || !inodes.iter().any(|i| i == f[9]) {
            continue;
        }
        if let Some(port) = f[1].rsplit(':').next().and_then(|h| u16::from_str_radix(h, 16).ok()) {
            if port != 0 {
                ports.push(port);
            }
        }
    }
    ports.sort_unstable();
    ports
}
