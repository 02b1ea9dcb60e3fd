//! `cargo xtask`: the project's automation, in Rust so it runs wherever cargo does.
//!
//! ```text
//! cargo xtask ci                 the full gate: deps, fmt --check, clippy -D warnings (benches
//!                                included), tests, docs, cargo-deny, fuzz targets checked
//! cargo xtask deps               install the test peers (haproxy, nginx, curl, openssl, prometheus,
//!                                wrk, the npm `statsd` daemon, cargo-deny) that are missing
//! cargo xtask fmt [--check]
//! cargo xtask lint               clippy -D warnings, rustdoc -D warnings, cargo-deny
//! cargo xtask test               every test of the workspace (peers installed first)
//! cargo xtask bench [--whole] [ARGS..]   criterion benches; --whole runs ../shared/bench/run with
//!                                the release binary (ARGS are passed to it)
//! cargo xtask fuzz [--secs N] [TARGET..] run the fuzz targets (all by default) for N s each
//! cargo xtask release            release build, publish dry-run per crate, checksums
//! ```
//!
//! Avoid adding dependencies here: it is built before anything else runs.
#![allow(clippy::print_stdout)]

use std::env;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Instant;

use anyhow::{Context, Result, bail};

mod deps;

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<()> {
    let root = workspace_root();
    env::set_current_dir(&root).context("cd to the workspace root")?;
    let args: Vec<String> = env::args().skip(1).collect();
    let (cmd, rest) = match args.split_first() {
        Some((c, r)) => (c.as_str(), r),
        None => ("help", &[][..]),
    };
    match cmd {
        "ci" => ci(),
        "deps" => deps::ensure_all(),
        "fmt" => fmt(rest.iter().any(|a| a == "--check")),
        "lint" => lint(),
        "test" => {
            deps::ensure_all()?;
            test()
        }
        "bench" => bench(rest),
        "fuzz" => fuzz(rest),
        "release" => release(),
        "help" | "--help" | "-h" => {
            println!(
                "{}",
                include_str!("main.rs")
                    .lines()
                    .skip(2)
                    .take(14)
                    .map(|l| l.trim_start_matches("//! ").trim_start_matches("//!"))
                    .collect::<Vec<_>>()
                    .join("\n")
            );
            Ok(())
        }
        other => bail!("unknown command `{other}` (try `cargo xtask help`)"),
    }
}

fn workspace_root() -> PathBuf {
    let dir = env::var_os("CARGO_MANIFEST_DIR").map(PathBuf::from).unwrap_or_else(|| ".".into());
    dir.parent().map(Path::to_path_buf).unwrap_or(dir)
}

/// Runs a command in the foreground, echoing it; fails with its exit status.
pub(crate) fn sh(program: &str, args: &[&str]) -> Result<()> {
    sh_env(program, args, &[])
}

pub(crate) fn sh_env(program: &str, args: &[&str], envs: &[(&str, &str)]) -> Result<()> {
    println!("$ {} {}", program, args.join(" "));
    let t = Instant::now();
    let status = Command::new(program)
        .args(args)
        .envs(envs.iter().copied())
        .status()
        .with_context(|| format!("could not start `{program}`"))?;
    if !status.success() {
        bail!("`{program} {}` failed ({status})", args.join(" "));
    }
    println!("  ({:.1} s)", t.elapsed().as_secs_f64());
    Ok(())
}

fn ci() -> Result<()> {
    let t = Instant::now();
    deps::ensure_all()?;
    fmt(true)?;
    lint()?;
    test()?;
    // Benches are type-checked by clippy --all-targets above; the fuzz crates (their own
    // workspaces) are checked here so that they cannot rot.
    fuzz_check()?;
    println!("xtask ci: all checks passed in {:.0} s", t.elapsed().as_secs_f64());
    Ok(())
}

fn fmt(check: bool) -> Result<()> {
    if check {
        sh("cargo", &["fmt", "--all", "--", "--check"])
    } else {
        sh("cargo", &["fmt", "--all"])
    }
}

fn lint() -> Result<()> {
    sh(
        "cargo",
        &[
            "clippy",
            "--workspace",
            "--all-targets",
            "--all-features",
            "--quiet",
            "--",
            "-D",
            "warnings",
        ],
    )?;
    sh_env(
        "cargo",
        &["doc", "--workspace", "--no-deps", "--quiet"],
        &[("RUSTDOCFLAGS", "-D warnings")],
    )?;
    // Advisories need the RustSec database from the network; CI machines here reach only the
    // package registries, so the gate checks bans, licences and sources.
    sh("cargo", &["deny", "--log-level", "error", "check", "bans", "licenses", "sources"])
}

fn test() -> Result<()> {
    // insta must not write snapshots in CI: a drift fails the run.
    sh_env(
        "cargo",
        &["test", "--workspace", "--all-features", "--no-fail-fast"],
        &[("INSTA_UPDATE", "no"), ("CI", "true")],
    )
}

fn fuzz_dirs() -> Result<Vec<PathBuf>> {
    let mut dirs = Vec::new();
    for entry in std::fs::read_dir("crates")? {
        let fuzz = entry?.path().join("fuzz");
        if fuzz.join("Cargo.toml").exists() {
            dirs.push(fuzz);
        }
    }
    dirs.sort();
    Ok(dirs)
}

fn fuzz_targets(dir: &Path) -> Result<Vec<String>> {
    let mut t = Vec::new();
    for e in std::fs::read_dir(dir.join("fuzz_targets"))? {
        let p = e?.path();
        if p.extension().is_some_and(|x| x == "rs") {
            t.push(p.file_stem().unwrap_or_default().to_string_lossy().into_owned());
        }
    }
    t.sort();
    Ok(t)
}

/// cargo-fuzz needs nightly features; the machine has one stable toolchain, so
/// RUSTC_BOOTSTRAP=1 lets it use them.
fn fuzz_check() -> Result<()> {
    for dir in fuzz_dirs()? {
        let d = dir.to_string_lossy().into_owned();
        println!("$ (cd {d}) cargo fuzz check");
        let st = Command::new("cargo")
            .args(["fuzz", "check", "--fuzz-dir", "."])
            .current_dir(&dir)
            .env("RUSTC_BOOTSTRAP", "1")
            .status()
            .context("cargo fuzz")?;
        if !st.success() {
            bail!("cargo fuzz check failed in {d}");
        }
    }
    Ok(())
}

fn fuzz(args: &[String]) -> Result<()> {
    deps::ensure_cargo_tool("cargo-fuzz", "cargo-fuzz")?;
    let mut secs = 60u64;
    let mut wanted = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == "--secs" {
            secs = it.next().context("--secs needs a number")?.parse().context("--secs")?;
        } else {
            wanted.push(a.clone());
        }
    }
    for dir in fuzz_dirs()? {
        for target in fuzz_targets(&dir)? {
            if !wanted.is_empty() && !wanted.contains(&target) {
                continue;
            }
            println!("$ (cd {}) cargo fuzz run {target} -- -max_total_time={secs}", dir.display());
            let corpus = dir.join("corpus").join(&target);
            std::fs::create_dir_all(&corpus)?;
            let st = Command::new("cargo")
                .args(["fuzz", "run", "--fuzz-dir", ".", &target, "--"])
                .arg(format!("-max_total_time={secs}"))
                .current_dir(&dir)
                .env("RUSTC_BOOTSTRAP", "1")
                .status()?;
            if !st.success() {
                bail!("fuzz target {target} failed: see the artifacts folder in {}", dir.display());
            }
        }
    }
    Ok(())
}

fn bench(args: &[String]) -> Result<()> {
    if args.first().map(String::as_str) == Some("--whole") {
        deps::ensure_bench_tools()?;
        sh("cargo", &["build", "--release", "--locked", "-p", "smartproxy"])?;
        let harness = Path::new("../shared/bench/run");
        if !harness.exists() {
            bail!(
                "the benchmark harness is not at ../shared/bench/run (it ships beside the repository)"
            );
        }
        let mut a: Vec<&str> = args[1..].iter().map(String::as_str).collect();
        if !a.iter().any(|x| x.starts_with("--proxies")) {
            a.extend(["--proxies", "direct,haproxy,nginx,smartproxy"]);
        }
        return sh(harness.to_str().unwrap_or("../shared/bench/run"), &a);
    }
    let mut a = vec!["bench", "--workspace"];
    a.extend(args.iter().map(String::as_str));
    sh("cargo", &a)
}

/// Crates in dependency order, for `cargo publish --dry-run`.
const PUBLISH_ORDER: &[&str] = &[
    "smartproxy-proxy-protocol",
    "smartproxy-tls-hello",
    "smartproxy-routing",
    "smartproxy-throughput",
    "smartproxy-wrapped-socket",
    "smartproxy-metrics",
    "smartproxy-metrics-export",
    "smartproxy-acme",
    "smartproxy-engine",
    "smartproxy-admin",
    "smartproxy",
];

fn release() -> Result<()> {
    sh("cargo", &["build", "--release", "--locked", "-p", "smartproxy"])?;
    // Crates that depend on unpublished siblings can only be packaged once those are on the
    // registry; `cargo package --no-verify` still checks the manifest and file list.
    for (i, krate) in PUBLISH_ORDER.iter().enumerate() {
        if i == 0
            || ["smartproxy-tls-hello", "smartproxy-routing", "smartproxy-throughput"]
                .contains(krate)
        {
            sh("cargo", &["publish", "--dry-run", "--locked", "--allow-dirty", "-p", krate])?;
        } else {
            sh("cargo", &["package", "--no-verify", "--locked", "--allow-dirty", "-p", krate])?;
        }
    }
    let bin = Path::new("target/release/smartproxy");
    let out = Command::new("sha256sum").arg(bin).output().context("sha256sum")?;
    let sums = String::from_utf8_lossy(&out.stdout).into_owned();
    std::fs::write("target/release/SHA256SUMS", &sums)?;
    println!("{sums}target/release/SHA256SUMS written");
    Ok(())
}
