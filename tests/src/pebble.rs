//! Debian's `pebble` (an RFC 8555 ACME CA for tests) with `pebble-challtestsrv` as its DNS
//! server (every name is 127.0.0.1), started per test with their own configuration: pebble's
//! HTTPS certificate made here (trusted through `[acme] ca_roots`), `PEBBLE_VA_NOSLEEP=1`,
//! `httpPort` / `tlsPort` pointed at the proxy's listeners. Both bind port 0; the ports are
//! read back from /proc.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::require;

/// Where pebble validates, and how long its certificates last.
#[derive(Debug, Clone, Copy)]
pub struct PebbleOptions {
    /// `httpPort`: where HTTP-01 validation requests go.
    pub http_port: u16,
    /// `tlsPort`: where TLS-ALPN-01 validation handshakes go.
    pub tls_port: u16,
    /// `certificateValidityPeriod` in seconds (pebble's default: 5 years).
    pub validity_secs: Option<u64>,
}

/// A running pebble and its DNS server; killed on drop (or by [`Pebble::stop`]).
#[derive(Debug)]
pub struct Pebble {
    dir: TempDir,
    children: Vec<Child>,
    /// The ACME (directory) port.
    pub acme_port: u16,
    /// The management port (`/roots/0`).
    pub management_port: u16,
    /// The CA of pebble's own HTTPS certificate: `[acme] ca_roots`.
    pub https_ca: PathBuf,
}

impl Pebble {
    /// Starts pebble-challtestsrv and pebble, and waits until the directory answers.
    pub fn start(opts: PebbleOptions) -> Pebble {
        require("pebble", "pebble");
        require("pebble-challtestsrv", "pebble");
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path();

        // Pebble's HTTPS endpoint certificate, from a CA of our own.
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca.distinguished_name.push(rcgen::DnType::CommonName, "test CA for pebble's HTTPS");
        let ca =
            rcgen::CertifiedIssuer::self_signed(ca, rcgen::KeyPair::generate().unwrap()).unwrap();
        let leaf_key = rcgen::KeyPair::generate().unwrap();
        let leaf = rcgen::CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()])
            .unwrap()
            .signed_by(&leaf_key, &ca)
            .unwrap();
        let https_ca = p.join("https-ca.pem");
        std::fs::write(&https_ca, ca.pem()).unwrap();
        std::fs::write(p.join("cert.pem"), leaf.pem()).unwrap();
        std::fs::write(p.join("key.pem"), leaf_key.serialize_pem()).unwrap();

        let mut me =
            Pebble { dir, children: Vec::new(), acme_port: 0, management_port: 0, https_ca };
        let dns = me.spawn(
            Command::new("pebble-challtestsrv")
                .args(["-dns01", "127.0.0.1:0", "-http01", "", "-https01", "", "-tlsalpn01", ""])
                .args(["-management", "127.0.0.1:0", "-defaultIPv4", "127.0.0.1"])
                .args(["-defaultIPv6", ""]),
            "challtestsrv.log",
        );
        let dns_port = me.wait_ports(dns, "udp", 1)[0];

        let validity = opts.validity_secs.map(|v| format!(",\"certificateValidityPeriod\":{v}"));
        let config = format!(
            r#"{{"pebble":{{"listenAddress":"127.0.0.1:0","managementListenAddress":"127.0.0.1:0","certificate":"cert.pem","privateKey":"key.pem","httpPort":{},"tlsPort":{},"ocspResponderURL":"","externalAccountBindingRequired":false{}}}}}"#,
            opts.http_port,
            opts.tls_port,
            validity.unwrap_or_default()
        );
        std::fs::write(me.dir.path().join("pebble.json"), config).unwrap();
        let pebble = me.spawn(
            Command::new("pebble")
                .current_dir(me.dir.path())
                .args(["-config", "pebble.json", "-dnsserver"])
                .arg(format!("127.0.0.1:{dns_port}"))
                .env("PEBBLE_VA_NOSLEEP", "1"),
            "pebble.log",
        );
        // Which listener is which: the ACME one serves the directory.
        for port in me.wait_ports(pebble, "tcp", 2) {
            let (code, body) = me.https_get(port, "/dir");
            if code == 0 && body.contains("newAccount") {
                me.acme_port = port;
            } else {
                me.management_port = port;
            }
        }
        assert!(
            me.acme_port != 0 && me.management_port != 0,
            "cannot tell pebble's listeners apart\n{}",
            me.logs()
        );
        me
    }

    /// The directory URL (`[acme] directory`).
    pub fn directory(&self) -> String {
        format!("https://localhost:{}/dir", self.acme_port)
    }

    /// Pebble's issuing root (made fresh by each pebble), as a PEM file: what clients trust.
    pub fn issuing_root(&self) -> PathBuf {
        let (code, body) = self.https_get(self.management_port, "/roots/0");
        assert!(code == 0 && body.contains("BEGIN CERTIFICATE"), "GET /roots/0: {code} {body}");
        let path = self.dir.path().join("issuing-root.pem");
        std::fs::write(&path, body).unwrap();
        path
    }

    /// Orders pebble has received (`POST /order-plz`, from its log).
    pub fn orders(&self) -> usize {
        self.log("pebble.log").matches("POST /order-plz").count()
    }

    /// Both logs.
    pub fn logs(&self) -> String {
        format!(
            "--- pebble.log\n{}\n--- challtestsrv.log\n{}",
            self.log("pebble.log"),
            self.log("challtestsrv.log")
        )
    }

    /// Stops the CA (and its DNS server): the CA is down.
    pub fn stop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default()
    }

    fn spawn(&mut self, cmd: &mut Command, log: &str) -> u32 {
        let out = std::fs::File::create(self.dir.path().join(log)).unwrap();
        let err = out.try_clone().unwrap();
        let child =
            cmd.stdin(Stdio::null()).stdout(out).stderr(err).spawn().expect("start test peer");
        let pid = child.id();
        self.children.push(child);
        pid
    }

    fn https_get(&self, port: u16, path: &str) -> (i32, String) {
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "5", "--cacert"])
            .arg(&self.https_ca)
            .arg(format!("https://localhost:{port}{path}"))
            .output()
            .expect("run curl");
        (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The ports `pid` listens on (`tcp`) or is bound to (`udp`), once there are `n`.
    fn wait_ports(&self, pid: u32, proto: &str, n: usize) -> Vec<u16> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let found = socket_ports(pid, proto);
            if found.len() >= n {
                return found;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {n} {proto} socket(s) of pid {pid}\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(25));
        }
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Local ports of `pid`'s IPv4 sockets: listening TCP sockets, or bound UDP sockets.
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
    let state = if proto == "tcp" { "0A" } else { "07" };
    let mut ports: Vec<u16> = table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 10 || f[3] != state || !inodes.iter().any(|i| i == f[9]) {
                return None;
            }
            u16::from_str_radix(f[1].rsplit(':').next()?, 16).ok().filter(|p| *p != 0)
        })
        .collect();
    ports.sort_unstable();
    ports
}
