//! Test peers: the real programs the end-to-end tests talk to. Each one missing is installed
//! (Debian packages with apt-get as root, npm packages into `target/test-peers`, cargo tools with
//! `cargo install --locked`), or the run fails saying exactly what is missing. Tests never skip.

use std::path::Path;
use std::process::Command;

use anyhow::{Result, bail};

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
    ("node", "nodejs"),
    ("npm", "npm"),
];

/// Extra Debian packages that provide no command of their own.
const APT_EXTRA: &[(&str, &str)] =
    &[("/usr/lib/nginx/modules/ngx_stream_module.so", "libnginx-mod-stream")];

/// Where `npm install` puts the npm peers (the statsd daemon).
pub(crate) const NPM_PREFIX: &str = "target/test-peers";

pub(crate) fn have(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {cmd} >/dev/null 2>&1")])
        .status()
        .is_ok_and(|s| s.success())
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.starts_with(b"0\n"))
}

fn apt_install(packages: &[&str]) -> Result<()> {
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
    sh("apt-get", &["update", "-qq"])?;
    let mut args = vec!["install", "-y", "-qq", "--no-install-recommends"];
    args.extend(packages);
    crate::sh_env("apt-get", &args, &[("DEBIAN_FRONTEND", "noninteractive")])
}

pub(crate) fn ensure_cargo_tool(binary: &str, krate: &str) -> Result<()> {
    if have(binary) {
        return Ok(());
    }
    // A target dir of its own, so that the tool's build does not touch the workspace's.
    crate::sh_env(
        "cargo",
        &["install", "--locked", "--quiet", krate],
        &[("CARGO_TARGET_DIR", "target/tools")],
    )
}

/// Everything `cargo xtask test` and `ci` need.
pub(crate) fn ensure_all() -> Result<()> {
    let mut missing: Vec<&str> = Vec::new();
    for (cmd, pkg) in APT_PEERS {
        if !have(cmd) && !missing.contains(pkg) {
            missing.push(pkg);
        }
    }
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
    ensure_cargo_tool("cargo-deny", "cargo-deny")?;
    ensure_cargo_tool("cargo-fuzz", "cargo-fuzz")?;
    Ok(())
}

/// What `../shared/bench/run` needs.
pub(crate) fn ensure_bench_tools() -> Result<()> {
    let mut missing = Vec::new();
    for (cmd, pkg) in
        [("haproxy", "haproxy"), ("nginx", "nginx-light"), ("wrk", "wrk"), ("iperf3", "iperf3")]
    {
        if !have(cmd) {
            missing.push(pkg);
        }
    }
    if !Path::new("/usr/lib/nginx/modules/ngx_stream_module.so").exists() {
        missing.push("libnginx-mod-stream");
    }
    apt_install(&missing)
}
