//! Shared helpers for the end-to-end tests: the `smartproxy` binary as a real process, real
//! peers (haproxy, prometheus, the statsd daemon), loopback backends that record what they see,
//! and clients bound to chosen 127.0.0.x source addresses.
//!
//! Every wait here is bounded and fails loudly with what it waited for; a peer that is
//! missing fails the test with what to install (`cargo xtask deps` installs them all).
//!
//! Ports: every server a test starts (the proxy, haproxy, nginx, openssl, prometheus, the
//! statsd daemon) gets ports reserved across all test processes of the workspace (the
//! engine tests' `ports.rs`, included below), is started again on fresh ports when it cannot
//! bind one (a program outside the tests took it), and counts as started only once the
//! sockets listening on its ports are its own.
#![allow(clippy::print_stdout, clippy::print_stderr, missing_docs)]

#[path = "../../crates/engine/tests/common/ports.rs"]
mod ports;
pub use ports::*;

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

/// How many sets of fresh ports a server is started on before the test gives up.
const ATTEMPTS: usize = 5;

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

/// Waits until the server's end of the connection between ports `server` and `client` has
/// read everything that arrived (a fine-grained bounded poll of `/proc/net/tcp`), so that
/// what the client sends next comes in a read of its own.
pub fn wait_consumed(server: u16, client: u16) {
    let deadline = Instant::now() + WAIT;
    loop {
        let unread = unread_by_server(server, client);
        if unread == Some(0) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the server on port {server} did not read what client port {client} sent within \
             {WAIT:?}: {unread:?} bytes unread"
        );
        thread::sleep(Duration::from_micros(200));
    }
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

/// Reads until the peer closes the connection; returns what came and whether it closed
/// cleanly (EOF: true) or reset it (false). Fails when the connection is still open after
/// [`WAIT`] (the stream's read timeout, which [`connect`] sets).
pub fn read_to_end(s: &mut TcpStream) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    let started = Instant::now();
    loop {
        match s.read(&mut buf) {
            Ok(0) => return (out, true),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                panic!(
                    "the connection is still open after {:?}; {} bytes came: {:?}",
                    started.elapsed(),
                    out.len(),
                    String::from_utf8_lossy(&out[..out.len().min(200)])
                )
            }
            Err(_) => return (out, false),
        }
    }
}

/// Reads until the peer closes the connection, which must happen without a byte coming;
/// returns the instant the close was seen.
pub fn expect_closed_without_data(s: &mut TcpStream) -> Instant {
    let (got, _) = read_to_end(s);
    let at = Instant::now();
    assert!(
        got.is_empty(),
        "closed, but {} bytes came first: {:?}",
        got.len(),
        String::from_utf8_lossy(&got[..got.len().min(200)])
    );
    at
}

/// Fails unless `elapsed` is within `[min, max]`; `what` says what was measured.
#[track_caller]
pub fn assert_within(what: &str, elapsed: Duration, min: Duration, max: Duration) {
    assert!(
        elapsed >= min && elapsed <= max,
        "{what} after {elapsed:?}, expected between {min:?} and {max:?}"
    );
}

/// Sends a line and waits for the same bytes back (for echo backends).
pub fn echo_roundtrip(s: &mut TcpStream, msg: &[u8]) -> std::io::Result<Vec<u8>> {
    s.write_all(msg)?;
    let mut got = vec![0u8; msg.len()];
    s.read_exact(&mut got)?;
    Ok(got)
}

/// Polls `probe` until `done` holds for what it returns, and returns that value; fails
/// after [`WAIT`] naming `what` and the last value seen.
pub fn wait_for<T: std::fmt::Debug>(
    what: &str,
    mut probe: impl FnMut() -> T,
    mut done: impl FnMut(&T) -> bool,
) -> T {
    let deadline = Instant::now() + WAIT;
    loop {
        let v = probe();
        if done(&v) {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {WAIT:?} waiting for {what}; last saw {v:?}"
        );
        thread::sleep(Duration::from_millis(25));
    }
}

/// The admin API's JSON snapshot (`GET /metrics/json` on 127.0.0.1:`admin`).
pub fn metrics_json(admin: u16) -> serde_json::Value {
    let r = get(admin, "/metrics/json");
    assert_eq!(r.status, 200, "{}", r.body);
    serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("{e}: {}", r.body))
}

/// The fields of a `/proc/PID/stat` or `/proc/PID/task/TID/stat` line after the command
/// name (which is in parentheses and may contain spaces): the first is the state (`R`, `S`,
/// `T`, ...), the 12th and 13th `utime` and `stime`.
pub fn stat_fields(stat: &str) -> impl Iterator<Item = &str> {
    let rest = stat.rfind(')').map_or("", |i| &stat[i + 1..]);
    rest.split_whitespace()
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
    /// Starts the binary with the TOML config `config(ports)` on `N` reserved ports, which
    /// the proxy must all listen on (routes' ports, the admin API's), and waits until it
    /// reports each one ("listening on ADDR", "admin API listening on http://ADDR/") and the
    /// sockets listening there are its own. When it cannot bind one ("cannot listen on") it
    /// is started again on fresh ports. Returns the proxy and its ports.
    pub fn start_on<const N: usize>(config: impl Fn([u16; N]) -> String) -> (Proxy, [u16; N]) {
        Self::start_on_with("toml", &[], config)
    }

    /// Same, with the config file extension (`toml` / `json`) and extra environment.
    pub fn start_on_with<const N: usize>(
        ext: &str,
        env: &[(&str, &str)],
        config: impl Fn([u16; N]) -> String,
    ) -> (Proxy, [u16; N]) {
        let mut last = String::new();
        for _ in 0..ATTEMPTS {
            let ports = reserve_ports::<N>();
            match Self::try_start(&[], &config(ports), ext, &ports, env) {
                Ok(p) => return (p, ports),
                Err(out) if out.contains("cannot listen on") => {
                    eprintln!(
                        "smartproxy could not bind {ports:?}; retrying on fresh ports:\n{out}"
                    );
                    last = out;
                }
                Err(out) => panic!("smartproxy exited while starting:\n{out}"),
            }
        }
        panic!(
            "smartproxy could not bind fresh ports in {ATTEMPTS} attempts; last output:\n{last}"
        );
    }

    /// Starts the binary with this TOML config on ports the caller reserved
    /// ([`reserve_ports`]) and waits until it listens on every one of `ports`; fails the test
    /// with its output if it exits first. Prefer [`Proxy::start_on`], which also retries when a
    /// port was taken by a program outside the tests; this is for configurations whose ports
    /// must be known before the proxy starts (peers started first, ports it does not listen on).
    pub fn start(config: &str, ports: &[u16]) -> Proxy {
        Self::start_with(config, "toml", ports, &[])
    }

    /// [`Proxy::start`] with the config file extension and extra environment.
    pub fn start_with(config: &str, ext: &str, ports: &[u16], env: &[(&str, &str)]) -> Proxy {
        Self::start_wrapped(&[], config, ext, ports, env)
    }

    /// Same, started through `wrapper`, a command that ends by exec'ing the binary with its
    /// arguments (so that the process, its PID and its signals are the binary's):
    /// `["ip", "netns", "exec", NS]` runs it inside a network namespace, `["env", "PATH=..."]`
    /// changes what it finds. An empty wrapper starts the binary itself.
    pub fn start_wrapped(
        wrapper: &[&str],
        config: &str,
        ext: &str,
        ports: &[u16],
        env: &[(&str, &str)],
    ) -> Proxy {
        match Self::try_start(wrapper, config, ext, ports, env) {
            Ok(p) => p,
            Err(out) => panic!("smartproxy exited while starting:\n{out}"),
        }
    }

    /// Starts the process and waits until it listens on every port of `ports`; its output
    /// when it exits first. (Started through a wrapper, it may live in another network
    /// namespace, where this one's socket table does not see its sockets: then only its own
    /// report of the ports is checked.)
    fn try_start(
        wrapper: &[&str],
        config: &str,
        ext: &str,
        ports: &[u16],
        env: &[(&str, &str)],
    ) -> Result<Proxy, String> {
        let dir = tempfile::tempdir().unwrap();
        let config_path = dir.path().join(format!("smartproxy.{ext}"));
        std::fs::write(&config_path, config).unwrap();
        let mut command = match wrapper.split_first() {
            None => Command::new(smartproxy_bin()),
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(smartproxy_bin());
                c
            }
        };
        let mut child = command
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
        let deadline = Instant::now() + WAIT;
        loop {
            let out = p.output();
            let announced = announced_ports(&out);
            if ports.iter().all(|port| announced.contains(port)) {
                break;
            }
            if let Ok(Some(st)) = p.child.try_wait() {
                // Let the readers take the last lines.
                for r in p.readers.drain(..) {
                    let _ = r.join();
                }
                return Err(format!("(exited: {st})\n{}", p.output()));
            }
            assert!(
                Instant::now() < deadline,
                "smartproxy did not listen on all of {ports:?} within {WAIT:?} (it reported \
                 {announced:?}):\n{out}"
            );
            thread::sleep(Duration::from_millis(20));
        }
        for &port in ports.iter().filter(|_| wrapper.is_empty()) {
            assert!(
                listened_by(p.pid(), port),
                "port {port} is listened on by another process too: {:?}\n{}",
                listeners(port),
                p.output()
            );
        }
        Ok(p)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the process printed so far (stdout and stderr).
    pub fn output(&self) -> String {
        self.output.lock().clone()
    }

    /// Waits until the output satisfies `f`; panics with the output on timeout, or when the
    /// process exits first.
    pub fn wait_for_output(&mut self, what: &str, f: impl Fn(&str) -> bool) {
        let deadline = Instant::now() + WAIT;
        loop {
            if f(&self.output()) {
                return;
            }
            if let Ok(Some(st)) = self.child.try_wait() {
                // Its pipes are closed: the readers end once they have taken the last lines.
                for r in self.readers.drain(..) {
                    let _ = r.join();
                }
                if f(&self.output()) {
                    return;
                }
                panic!("smartproxy exited ({st}) while waiting for {what}:\n{}", self.output());
            }
            if Instant::now() > deadline {
                panic!("timed out waiting for {what}; smartproxy printed:\n{}", self.output());
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until the output contains `needle` (for messages that are not log events with
    /// fields, e.g. the ACME client's).
    pub fn wait_for_log(&mut self, needle: &str) {
        let n = needle.to_owned();
        self.wait_for_output(needle, move |o| o.contains(&n));
    }

    /// Waits until the proxy logs that it listens on 127.0.0.1:`port` (after a reload) and
    /// the sockets there are its own.
    pub fn wait_listening(&mut self, port: u16) {
        self.wait_for_event("listening", &[("addr", &format!("127.0.0.1:{port}"))]);
        assert!(
            listened_by(self.pid(), port),
            "port {port} is listened on by another process too: {:?}",
            listeners(port)
        );
    }

    /// Waits until the proxy logged an event with this message and these fields (see
    /// [`is_event`]); returns its line.
    pub fn wait_for_event(&mut self, message: &str, fields: &[(&str, &str)]) -> String {
        let what = format!("a log line `{message}` with {fields:?}");
        self.wait_for_output(&what, |o| o.lines().any(|l| is_event(l, message, fields)));
        self.events(message, fields).remove(0)
    }

    /// Waits until the proxy logged `n` events with this message and these fields (and
    /// fails when there are more).
    pub fn wait_for_events(&mut self, n: usize, message: &str, fields: &[(&str, &str)]) {
        let what = format!("{n} log lines `{message}` with {fields:?}");
        self.wait_for_output(&what, |o| {
            o.lines().filter(|l| is_event(l, message, fields)).count() >= n
        });
        let seen = self.events(message, fields);
        assert_eq!(seen.len(), n, "more than {n} of {what}: {seen:#?}");
    }

    /// Waits until `n` log events with this message and these fields are accounted for,
    /// written or suppressed: the engine writes at most a few lines a second per reason and
    /// then one "N similar lines suppressed" summary per reason (`quiet_reasons`: the reasons
    /// these events are limited under) and second. Fails when more than `n` are accounted for.
    pub fn wait_for_events_or_suppressed(
        &mut self,
        n: usize,
        message: &str,
        fields: &[(&str, &str)],
        quiet_reasons: &[&str],
    ) {
        let count = |o: &str| {
            let written = o.lines().filter(|l| is_event(l, message, fields)).count();
            let suppressed: usize = o
                .lines()
                .filter_map(|l| l.split_once(": ").map(|(_, r)| r))
                .filter(|r| r.contains(" similar lines suppressed "))
                .filter(|r| quiet_reasons.iter().any(|q| fields_match(r, &[("reason", q)])))
                .filter_map(|r| r.split(" suppressed=").nth(1))
                .filter_map(|v| v.split(' ').next()?.parse::<usize>().ok())
                .sum();
            written + suppressed
        };
        let what = format!("{n} log lines `{message}` with {fields:?}, written or suppressed");
        self.wait_for_output(&what, |o| count(o) >= n);
        assert_eq!(count(&self.output()), n, "more than {n} of {what}:\n{}", self.output());
    }

    /// The log lines with this message and these fields.
    pub fn events(&self, message: &str, fields: &[(&str, &str)]) -> Vec<String> {
        self.output().lines().filter(|l| is_event(l, message, fields)).map(str::to_owned).collect()
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

    /// Waits (bounded) for the process to exit on its own; returns the exit code.
    pub fn wait_exit(&mut self) -> Option<i32> {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                return st.code();
            }
            if Instant::now() > deadline {
                panic!("smartproxy did not exit within {WAIT:?}:\n{}", self.output());
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

/// The ports the proxy's output reports listening on: `listening on ADDR` for the routes'
/// ports, `admin API listening on http://ADDR/ ...` for the admin API (whole lines, not the
/// log lines that mention an address).
pub fn announced_ports(output: &str) -> Vec<u16> {
    output
        .lines()
        .filter_map(|l| {
            let addr = match l.strip_prefix("listening on ") {
                Some(a) => a,
                None => l.strip_prefix("admin API listening on http://")?.split('/').next()?,
            };
            addr.parse::<SocketAddr>().ok().map(|a| a.port())
        })
        .collect()
}

/// Whether `line` is a log line (`TIME LEVEL target: message key=value ...`) with exactly
/// this message and every one of these fields. A field matches `key=value` or
/// `key="value"` as a whole token (strings are logged quoted); a value ending in `*` matches
/// any value that starts with the rest (`("client", "127.0.0.4:*")`).
pub fn is_event(line: &str, message: &str, fields: &[(&str, &str)]) -> bool {
    let Some(rest) = line.split_once(": ").map(|(_, r)| r) else { return false };
    let Some(after) = rest.strip_prefix(message) else { return false };
    if !(after.is_empty() || after.starts_with(' ')) {
        return false;
    }
    fields_match(after, fields)
}

/// Whether the `key=value` fields of a log line's text (after its message) include these
/// (`value*`: a prefix).
fn fields_match(after: &str, fields: &[(&str, &str)]) -> bool {
    fields.iter().all(|(k, v)| {
        let (v, prefix) = match v.strip_suffix('*') {
            Some(p) => (p, true),
            None => (*v, false),
        };
        let quote = if prefix { "" } else { "\"" };
        [format!(" {k}={v}"), format!(" {k}=\"{v}{quote}")].iter().any(|token| {
            after.match_indices(token.as_str()).any(|(i, _)| {
                let tail = &after[i + token.len()..];
                prefix || tail.is_empty() || tail.starts_with(' ')
            })
        })
    })
}

// ----------------------------------------------------------------------------------------
// Servers the tests start: on reserved ports, retried on fresh ones

/// A peer program listening on reserved ports; killed on drop.
#[derive(Debug)]
pub struct Server {
    pub child: Child,
    pub ports: Vec<u16>,
    _dir: TempDir,
}

impl Server {
    /// Starts `command(ports, dir)` (`dir`: a temporary directory of its own) on `N` reserved
    /// ports and waits until the sockets listening on every one of them are the child's
    /// (`udp`: ports it binds for UDP instead, by index). A child that exits first (it could
    /// not bind, most likely) is started again on fresh ports; after a few tries the test
    /// fails with its stderr.
    pub fn start<const N: usize>(
        what: &str,
        udp: &[usize],
        mut command: impl FnMut([u16; N], &Path) -> Command,
    ) -> (Server, [u16; N]) {
        let mut last = String::new();
        for _ in 0..ATTEMPTS {
            let ports = reserve_ports::<N>();
            let dir = tempfile::tempdir().unwrap();
            let stderr = std::fs::File::create(dir.path().join("stderr")).unwrap();
            let mut cmd = command(ports, dir.path());
            let child = cmd
                .stdin(Stdio::null())
                .stderr(stderr)
                .spawn()
                .unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
            let mut server = Server { child, ports: ports.to_vec(), _dir: dir };
            let deadline = Instant::now() + WAIT;
            let up = loop {
                let pid = server.child.id();
                let all = ports.iter().enumerate().all(|(i, &p)| {
                    if udp.contains(&i) { udp_bound_by(pid, p) } else { listened_by(pid, p) }
                });
                if all {
                    break true;
                }
                if let Ok(Some(_)) = server.child.try_wait() {
                    break false;
                }
                assert!(
                    Instant::now() < deadline,
                    "{what} did not listen on {ports:?} within {WAIT:?}: {:?}",
                    ports.map(listeners)
                );
                thread::sleep(Duration::from_millis(20));
            };
            if up {
                return (server, ports);
            }
            let status = server.child.wait().unwrap();
            last = format!(
                "{what} on {ports:?} exited ({status}): {}",
                std::fs::read_to_string(server._dir.path().join("stderr")).unwrap_or_default()
            );
            eprintln!("{last}; retrying on fresh ports");
        }
        panic!("{what} did not start in {ATTEMPTS} attempts; last: {last}");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
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
pub struct Haproxy(pub Server);

impl Haproxy {
    /// Starts haproxy with the config `config(ports)` on `N` reserved ports, which it must
    /// all listen on (see [`Server::start`]); returns it and the ports.
    pub fn start<const N: usize>(config: impl Fn([u16; N]) -> String) -> (Haproxy, [u16; N]) {
        let bin = require("haproxy", "haproxy");
        let (server, ports) = Server::start("haproxy", &[], |ports, dir| {
            let cfg = dir.join("haproxy.cfg");
            std::fs::write(&cfg, config(ports)).unwrap();
            let check = Command::new(&bin).args(["-c", "-q", "-f"]).arg(&cfg).output().unwrap();
            assert!(
                check.status.success(),
                "haproxy -c: {}",
                String::from_utf8_lossy(&check.stderr)
            );
            let mut cmd = Command::new(&bin);
            cmd.args(["-db", "-f"]).arg(&cfg).stdout(Stdio::null());
            cmd
        });
        (Haproxy(server), ports)
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
    pub port: u16,
    _server: Server,
}

impl OpensslServer {
    /// `s_server -www`: every request gets its status page.
    pub fn start(leaf: &LeafFiles) -> OpensslServer {
        Self::run(leaf, "-www", None)
    }

    /// `s_server -WWW` in `dir`: `GET /name` gets the file `dir/name` (HTTP/1.0, then close).
    pub fn serving_files(leaf: &LeafFiles, dir: &Path) -> OpensslServer {
        Self::run(leaf, "-WWW", Some(dir))
    }

    fn run(leaf: &LeafFiles, mode: &str, dir: Option<&Path>) -> OpensslServer {
        let bin = require("openssl", "openssl");
        let (server, [port]) = Server::start("openssl s_server", &[], |[port], _| {
            let mut cmd = Command::new(&bin);
            cmd.args(["s_server", "-quiet", mode, "-accept"])
                .arg(format!("127.0.0.1:{port}"))
                .arg("-cert")
                .arg(&leaf.cert)
                .arg("-key")
                .arg(&leaf.key)
                .stdout(Stdio::null());
            if let Some(dir) = dir {
                cmd.current_dir(dir);
            }
            cmd
        });
        OpensslServer { port, _server: server }
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
    pub port: u16,
    _server: Server,
}

impl NginxTls {
    pub fn start(leaf: &LeafFiles, body: &str) -> NginxTls {
        let bin = require("nginx", "nginx-light");
        let (server, [port]) = Server::start("nginx", &[], |[port], dir| {
            let d = dir.display();
            let conf = format!(
                "daemon off;\nmaster_process off;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\n\
                 events {{ worker_connections 256; }}\n\
                 http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n  fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
                 \x20 server {{\n    listen 127.0.0.1:{port} ssl;\n    ssl_certificate {c};\n    ssl_certificate_key {k};\n    location / {{ return 200 \"{body}\"; }}\n  }}\n}}\n",
                c = leaf.cert.display(),
                k = leaf.key.display()
            );
            let path = dir.join("nginx.conf");
            std::fs::write(&path, conf).unwrap();
            let mut cmd = Command::new(&bin);
            cmd.arg("-p")
                .arg(dir)
                .arg("-e")
                .arg(dir.join("error.log"))
                .arg("-c")
                .arg(&path)
                .stdout(Stdio::null());
            cmd
        });
        NginxTls { port, _server: server }
    }
}
