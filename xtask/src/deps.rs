//! Test peers: the real programs the end-to-end tests talk to. Each one missing is installed
//! (Debian packages with apt-get as root, npm packages into `target/test-peers`, cargo tools
//! with `cargo install --locked NAME@VERSION`, pinned here), or the run fails saying exactly
//! what is missing. Tests never skip. Installs say what they do and report progress, so that
//! minutes of building a tool do not look like a hang.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::sh;

/// (command that must exist, Debian package that provides it)
const APT_PEERS: &[(&str, &str)] = &[
    ("haproxy", "haproxy"),
    ("nginx", "nginx-light"),
    ("curl", "curl"),
    ("openssl", "openssl"),
    ("promtool", "prometheus"),
    ("prometheus", "prometheus"),
    ("wrk", "wrk"),
    ("h2load", "nghttp2-client"),
    // The bulk transfer of the PGO training loads (xtask/src/pgo.rs, a CI step).
    ("iperf3", "iperf3"),
    ("node", "nodejs"),
    ("npm", "npm"),
    // crates/nftables tests: rules in network namespaces they create.
    ("nft", "nftables"),
    ("ip", "iproute2"),
    ("sysctl", "procps"),
    ("setpriv", "util-linux"),
    // The ACME CA of crates/acme's tests (also ships pebble-challtestsrv).
    ("pebble", "pebble"),
    // `man -l` renders the generated manual page in crates/smartproxy/tests/completions.rs.
    ("man", "man-db"),
    // `tar` lists the packaged .crate files (xtask package / release).
    ("tar", "tar"),
    // The dashboard's browser test (tests/tests/dashboard.rs): headless, over DevTools.
    ("chromium", "chromium"),
    // `systemd-analyze verify` of deploy/systemd/smartproxy.service (tests/tests/deploy.rs).
    ("systemd-analyze", "systemd"),
    // `htpasswd` writes the password files of the basic_auth tests (crates/http, tests/).
    ("htpasswd", "apache2-utils"),
];

/// Extra Debian packages that provide no command of their own.
const APT_EXTRA: &[(&str, &str)] =
    &[("/usr/lib/nginx/modules/ngx_stream_module.so", "libnginx-mod-stream")];

/// Where `npm install` puts the npm peers (the statsd daemon).
pub(crate) const NPM_PREFIX: &str = "target/test-peers";

fn have(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {cmd} >/dev/null 2>&1")])
        .status()
        .is_ok_and(|s| s.success())
}

/// The packages of the commands not on `PATH`, each once.
pub(crate) fn missing<'a>(commands: &[(&str, &'a str)]) -> Vec<&'a str> {
    let mut missing = Vec::new();
    for &(cmd, pkg) in commands {
        if !have(cmd) && !missing.contains(&pkg) {
            missing.push(pkg);
        }
    }
    missing
}

/// Installs the packages of the commands not on `PATH` (`(command, Debian package)`).
pub(crate) fn ensure_commands(commands: &[(&str, &str)]) -> Result<()> {
    apt_install(&missing(commands))
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.starts_with(b"0\n"))
}

pub(crate) fn apt_install(packages: &[&str]) -> Result<()> {
    if packages.is_empty() {
        return Ok(());
    }
    if !is_root() || !have("apt-get") {
        bail!(
            "missing test peers: {}. Install them with: sudo apt-get install -y {}",
            packages.join(", "),
            packages.join(" ")
        );
    }
    println!("xtask: installing Debian packages: {}", packages.join(" "));
    sh("apt-get", &["update", "-qq"])?;
    let mut args = vec!["install", "-y", "-qq", "--no-install-recommends"];
    args.extend(packages);
    crate::sh_env("apt-get", &args, &[("DEBIAN_FRONTEND", "noninteractive")])
}

/// A cargo subcommand the gate uses, pinned to one version.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Tool {
    /// The binary (`cargo-deny`); `cargo deny --version` must print `VERSION`.
    pub(crate) binary: &'static str,
    pub(crate) krate: &'static str,
    pub(crate) version: &'static str,
}

/// cargo-deny 0.20 reads the deny.toml format in use (needs Rust 1.88+).
pub(crate) const CARGO_DENY: Tool =
    Tool { binary: "cargo-deny", krate: "cargo-deny", version: "0.20.2" };
pub(crate) const CARGO_FUZZ: Tool =
    Tool { binary: "cargo-fuzz", krate: "cargo-fuzz", version: "0.13.2" };

/// The version a cargo subcommand reports (`cargo-deny 0.20.2` -> `0.20.2`), if installed.
fn installed_version(binary: &str) -> Option<String> {
    let sub = binary.strip_prefix("cargo-")?;
    let out = Command::new("cargo").args([sub, "--version"]).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace().nth(1).map(str::to_owned)
}

/// Installs `tool` at its pinned version unless that version is there.
pub(crate) fn ensure_cargo_tool(tool: Tool) -> Result<()> {
    let found = installed_version(tool.binary);
    if found.as_deref() == Some(tool.version) {
        return Ok(());
    }
    let spec = format!("{}@{}", tool.krate, tool.version);
    match &found {
        Some(v) => {
            println!("xtask: {} {v} is installed; the gate pins {}", tool.binary, tool.version)
        }
        None => println!("xtask: {} is not installed", tool.binary),
    }
    // A target dir of its own, so that the tool's build does not touch the workspace's.
    run_with_progress(
        &format!("cargo install --locked {spec}"),
        Command::new("cargo")
            .args(["install", "--locked", "--force", &spec])
            .env("CARGO_TARGET_DIR", "target/tools"),
        Path::new(&format!("target/tools/install-{}.log", tool.krate)),
    )?;
    match installed_version(tool.binary) {
        Some(v) if v == tool.version => Ok(()),
        other => bail!(
            "installed {spec}, but `cargo {} --version` reports {other:?}",
            tool.binary.trim_start_matches("cargo-")
        ),
    }
}

/// Runs a long command with its output in `log`, printing a line every 15 s with how many
/// crates it compiled, and the end of the log if it fails.
fn run_with_progress(what: &str, cmd: &mut Command, log: &Path) -> Result<()> {
    if let Some(dir) = log.parent() {
        std::fs::create_dir_all(dir)?;
    }
    println!("$ {what}  (minutes on 2 cores; progress every 15 s; log: {})", log.display());
    let t = Instant::now();
    let mut file = File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("could not start {what}"))?;
    let compiled = Arc::new(AtomicUsize::new(0));
    let total = Arc::new(AtomicUsize::new(0));
    let stderr = child.stderr.take().context("stderr")?;
    let stdout = child.stdout.take().context("stdout")?;
    let (c, n) = (compiled.clone(), total.clone());
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let tx2 = tx.clone();
    let err_reader = std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let l = line.trim_start();
            if l.starts_with("Compiling ") {
                c.fetch_add(1, Ordering::Relaxed);
            } else if let Some(rest) = l.strip_prefix("Locking ")
                && let Some(count) = rest.split_whitespace().next().and_then(|x| x.parse().ok())
            {
                n.store(count, Ordering::Relaxed);
            }
            let _ = tx.send(line);
        }
    });
    let out_reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx2.send(line);
        }
    });
    let mut last = Instant::now();
    let mut tail: Vec<String> = Vec::new();
    let status = loop {
        // Log lines as they come; a status line every 15 s.
        while let Ok(line) = rx.recv_timeout(Duration::from_millis(500)) {
            writeln!(file, "{line}")?;
            tail.push(line);
            if tail.len() > 40 {
                tail.remove(0);
            }
            if last.elapsed() >= Duration::from_secs(15) {
                break;
            }
        }
        if let Some(st) = child.try_wait()? {
            break st;
        }
        if last.elapsed() >= Duration::from_secs(15) {
            let total = total.load(Ordering::Relaxed);
            let of = if total > 0 { format!(" of ~{total}") } else { String::new() };
            println!(
                "  ... {what}: {} crates compiled{of}, {:.0} s",
                compiled.load(Ordering::Relaxed),
                t.elapsed().as_secs_f64()
            );
            last = Instant::now();
        }
    };
    let _ = err_reader.join();
    let _ = out_reader.join();
    for line in rx.try_iter() {
        writeln!(file, "{line}")?;
        tail.push(line);
    }
    if !status.success() {
        let start = tail.len().saturating_sub(40);
        eprintln!("{}", tail[start..].join("\n"));
        bail!("{what} failed ({status}); the whole log is {}", log.display());
    }
    println!(
        "  {what}: done in {:.0} s ({} crates compiled)",
        t.elapsed().as_secs_f64(),
        compiled.load(Ordering::Relaxed)
    );
    Ok(())
}

/// Everything `cargo xtask test` and `ci` need.
pub(crate) fn ensure_all() -> Result<()> {
    let mut missing = missing(APT_PEERS);
    for (path, pkg) in APT_EXTRA {
        if !Path::new(path).exists() && !missing.contains(pkg) {
            missing.push(pkg);
        }
    }
    apt_install(&missing)?;
    for (cmd, pkg) in APT_PEERS {
        if !have(cmd) {
            bail!("`{cmd}` is still missing after installing `{pkg}`");
        }
    }
    let statsd = Path::new(NPM_PREFIX).join("node_modules/statsd/stats.js");
    if !statsd.exists() {
        println!("xtask: installing the statsd daemon (npm) into {NPM_PREFIX}");
        sh(
            "npm",
            &[
                "install",
                "--no-audit",
                "--no-fund",
                "--silent",
                "--prefix",
                NPM_PREFIX,
                "statsd@0.9",
            ],
        )?;
        if !statsd.exists() {
            bail!("npm installed statsd but {} is not there", statsd.display());
        }
    }
    ensure_cargo_tool(CARGO_DENY)?;
    ensure_cargo_tool(CARGO_FUZZ)?;
    Ok(())
}

/// What `cargo xtask bench --kernel` needs (crates/nftables/benches/kernel_vs_proxy.rs).
pub(crate) fn ensure_kernel_bench_tools() -> Result<()> {
    ensure_commands(&[("iperf3", "iperf3"), ("nft", "nftables"), ("ip", "iproute2")])
}

/// What `../shared/bench/run` needs.
pub(crate) fn ensure_bench_tools() -> Result<()> {
    let mut missing = missing(&[
        ("haproxy", "haproxy"),
        ("nginx", "nginx-light"),
        ("wrk", "wrk"),
        ("iperf3", "iperf3"),
    ]);
    if !Path::new("/usr/lib/nginx/modules/ngx_stream_module.so").exists() {
        missing.push("libnginx-mod-stream");
    }
    apt_install(&missing)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> std::path::PathBuf {
        std::env::temp_dir().join(format!("xtask-{name}-{}", std::process::id()))
    }

    #[test]
    fn a_long_command_is_logged_and_its_crates_counted() {
        let log = scratch("progress-ok").join("install.log");
        run_with_progress(
            "fake install",
            Command::new("sh").args([
                "-c",
                "echo '   Compiling a v1' >&2; echo out; echo '   Compiling b v1' >&2",
            ]),
            &log,
        )
        .unwrap();
        let text = std::fs::read_to_string(&log).unwrap();
        assert!(text.contains("Compiling a v1") && text.contains("out"), "{text}");
        std::fs::remove_dir_all(log.parent().unwrap()).unwrap();
    }

    #[test]
    fn a_failing_command_names_its_log() {
        let log = scratch("progress-fail").join("install.log");
        let err = run_with_progress(
            "fake install",
            Command::new("sh").args(["-c", "echo 'error: no such crate' >&2; exit 3"]),
            &log,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("fake install failed") && err.contains("install.log"), "{err}");
        assert!(std::fs::read_to_string(&log).unwrap().contains("error: no such crate"));
        std::fs::remove_dir_all(log.parent().unwrap()).unwrap();
    }
}
