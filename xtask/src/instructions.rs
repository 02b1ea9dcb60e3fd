//! `cargo xtask bench --instructions WORKLOAD`: user-space instructions per request of the
//! proxy under a fixed load, counted by valgrind's callgrind. Unlike CPU time, the count
//! hardly moves with what else the machine does (within about 1 % between runs: how many
//! requests one wake-up serves still varies), so two builds can be compared without a quiet
//! machine; the kernel's share (system calls, loopback TCP) is not in it.
//!
//! The proxy (the `profiling` build, or `--binary PATH`) runs under callgrind on CPU 1 with
//! an nginx backend answering 29 bytes; instrumentation is switched on after a warm-up for
//! one load run on CPU 0 (wrk -t1 -c10 10 s, h2load -c4 -m10 20,000 requests for h2-term).

use std::fs;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// The workloads: the shared harness's names for the same routes.
const WORKLOADS: &[&str] = &["l7-ka", "l7-close", "h2-term", "http-ka", "http-close"];

/// Kills and reaps a child when dropped (a failed run leaves no process behind).
pub(crate) struct Reaped(pub(crate) Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub(crate) fn run(args: &[String]) -> Result<()> {
    let mut workload = None;
    let mut binary = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--binary" => binary = Some(PathBuf::from(it.next().context("--binary needs a path")?)),
            w if WORKLOADS.contains(&w) => workload = Some(w.to_owned()),
            other => bail!("unknown argument `{other}` (workloads: {})", WORKLOADS.join(", ")),
        }
    }
    let workload = workload.unwrap_or_else(|| "l7-ka".to_owned());
    crate::deps::ensure_commands(&[
        ("valgrind", "valgrind"),
        ("callgrind_control", "valgrind"),
        ("wrk", "wrk"),
        ("nginx", "nginx-light"),
        ("taskset", "util-linux"),
        ("h2load", "nghttp2-client"),
        ("openssl", "openssl"),
    ])?;
    let binary = match binary {
        Some(b) => b,
        None => {
            crate::sh(
                "cargo",
                &["build", "--locked", "--profile", "profiling", "-p", "smartproxy"],
            )?;
            PathBuf::from("target/profiling/smartproxy")
        }
    };
    let dir = std::env::temp_dir().join(format!("xtask-instructions-{}", std::process::id()));
    fs::create_dir_all(&dir)?;
    let result = measure(&workload, &binary, &dir);
    if result.is_ok() {
        // The profile stays for callgrind_annotate; the rest goes.
        for f in ["backend.conf", "proxy.toml", "cert.pem", "key.pem"] {
            let _ = fs::remove_file(dir.join(f));
        }
    }
    result
}

pub(crate) fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

pub(crate) fn wait_for(port: u16, what: &str, child: &mut Child) -> Result<()> {
    let started = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Some(status) = child.try_wait()? {
            bail!("{what} exited before listening on port {port} ({status})");
        }
        if started.elapsed() > Duration::from_secs(60) {
            bail!("{what} did not listen on port {port} within 60 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

pub(crate) fn output(program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("could not start `{program}`"))?;
    if !out.status.success() {
        bail!(
            "`{program} {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The load on CPU 0; returns the requests it completed.
fn load(workload: &str, port: u16, secs: u32) -> Result<u64> {
    let dur = format!("{secs}s");
    if workload == "h2-term" {
        let n = (secs * 2000).to_string();
        let url = format!("https://127.0.0.1:{port}/");
        let args = ["-c", "0", "h2load", "-c", "4", "-m", "10", "-t", "1", "-n", &n, &url];
        let out = output("taskset", &args)?;
        let done = out
            .lines()
            .find_map(|l| l.strip_prefix("requests: "))
            .and_then(|l| l.split(", ").find_map(|p| p.strip_suffix(" succeeded")))
            .and_then(|n| n.parse().ok())
            .with_context(|| format!("no request count in h2load's output:\n{out}"))?;
        return Ok(done);
    }
    let url = format!("http://127.0.0.1:{port}/");
    let mut args = vec!["-c", "0", "wrk", "-t", "1", "-c", "10", "-d", &dur];
    if workload.ends_with("-close") {
        args.extend(["-H", "Connection: close"]);
    }
    args.push(&url);
    let out = output("taskset", &args)?;
    // "  123456 requests in 10.00s, 12.34MB read"
    let done = out
        .lines()
        .find_map(|l| {
            let mut w = l.split_whitespace();
            let n = w.next()?.parse().ok()?;
            (w.next() == Some("requests") && w.next() == Some("in")).then_some(n)
        })
        .with_context(|| format!("no request count in wrk's output:\n{out}"))?;
    Ok(done)
}

/// The nginx backend on CPU 0: 29 bytes for every request on `port` (plain HTTP) and, with
/// `https`, on that port over TLS with the given certificate and key.
pub(crate) fn start_backend(
    dir: &Path,
    port: u16,
    https: Option<(u16, &Path, &Path)>,
) -> Result<Reaped> {
    let tls_server = https.map_or(String::new(), |(p, cert, key)| {
        format!(
            "  server {{\n    listen 127.0.0.1:{p} ssl backlog=4096;\n    ssl_certificate {};\n\
             ssl_certificate_key {};\n    location / {{ default_type text/plain; \
             return 200 \"hello from the bench backend\\n\"; }}\n  }}\n",
            cert.display(),
            key.display()
        )
    });
    let backend_conf = dir.join("backend.conf");
    fs::write(
        &backend_conf,
        format!(
            "daemon off;\nmaster_process off;\nworker_processes 1;\npid {d}/backend.pid;\n\
             error_log {d}/backend.err warn;\nevents {{ worker_connections 10000; }}\n\
             http {{\n  access_log off;\n  keepalive_requests 100000000;\n\
             server {{\n    listen 127.0.0.1:{port} backlog=4096;\n\
             location / {{ default_type text/plain; return 200 \"hello from the bench backend\\n\"; }}\n  }}\n{tls_server}}}\n",
            d = dir.display()
        ),
    )?;
    let conf = backend_conf.to_string_lossy().into_owned();
    let prefix = format!("{}/", dir.display());
    let backend = Reaped(
        Command::new("taskset")
            .args(["-c", "0", "nginx", "-p", &prefix, "-e", "stderr", "-c", &conf])
            .stdout(Stdio::null())
            .spawn()
            .context("could not start the nginx backend")?,
    );
    Ok(backend)
}

/// A self-signed P-256 certificate for 127.0.0.1 and `bench.local` (openssl), valid two days:
/// `cert.pem` and `key.pem` in `dir`.
pub(crate) fn self_signed(dir: &Path) -> Result<(PathBuf, PathBuf)> {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    output(
        "openssl",
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=bench.local",
            "-addext",
            "subjectAltName=DNS:bench.local,IP:127.0.0.1",
            "-keyout",
            &key.to_string_lossy(),
            "-out",
            &cert.to_string_lossy(),
        ],
    )?;
    Ok((cert, key))
}

fn measure(workload: &str, binary: &Path, dir: &Path) -> Result<()> {
    let backend_port = free_port()?;
    let proxy_port = free_port()?;
    let mut backend = start_backend(dir, backend_port, None)?;
    wait_for(backend_port, "the nginx backend", &mut backend.0)?;

    let action = match workload {
        "l7-ka" | "l7-close" => "http = {}".to_owned(),
        "h2-term" => {
            let (cert, key) = self_signed(dir)?;
            format!(
                "http = {{}}, tls = {{ mode = \"terminate\", certificate = {{ cert = \"{}\", key = \"{}\" }}, \
                 min_version = \"1.3\", session_resumption = false }}",
                cert.display(),
                key.display()
            )
        }
        _ => String::new(),
    };
    let sep = if action.is_empty() { "" } else { ", " };
    let config = dir.join("proxy.toml");
    fs::write(
        &config,
        format!(
            "workers = 1\n[[routes]]\nname = \"bench\"\nmatch = {{ ports = [{proxy_port}] }}\n\
             action = {{ type = \"forward\", targets = [{{ host = \"127.0.0.1\", port = {backend_port} }}]{sep}{action} }}\n"
        ),
    )?;
    let profile = dir.join(format!("callgrind.{workload}.out"));
    let mut proxy = Reaped(
        Command::new("taskset")
            .args(["-c", "1", "valgrind", "--tool=callgrind", "--instr-atstart=no"])
            .arg(format!("--callgrind-out-file={}", profile.display()))
            .arg(binary)
            .args(["run", "-c"])
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("could not start valgrind")?,
    );
    wait_for(proxy_port, "the proxy under callgrind", &mut proxy.0)?;
    let pid = proxy.0.id().to_string();
    load(workload, proxy_port, 2)?;
    output("callgrind_control", &["-i", "on", &pid])?;
    let requests = load(workload, proxy_port, 10)?;
    output("callgrind_control", &["-i", "off", &pid])?;
    output("kill", &["-INT", &pid])?;
    let status = proxy.0.wait()?;
    if !status.success() {
        bail!("the proxy under callgrind exited with {status}");
    }
    let text = fs::read_to_string(&profile)
        .with_context(|| format!("no callgrind profile at {}", profile.display()))?;
    // `totals:` closes the profile (a `summary:` line near the top may say 0).
    let instructions: u64 = text
        .lines()
        .filter_map(|l| l.strip_prefix("totals: "))
        .filter_map(|v| v.trim().parse::<u64>().ok())
        .max()
        .context("no instruction total in the callgrind profile")?;
    if requests == 0 {
        bail!("the load completed no request");
    }
    println!(
        "{workload}: {} instructions per request (user space: {instructions} instructions, {requests} requests)",
        instructions / requests
    );
    println!("profile: callgrind_annotate {}", profile.display());
    Ok(())
}
