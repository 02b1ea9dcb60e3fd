//! `cargo xtask`: the project's automation, in Rust so it runs wherever cargo does.
//!
//! ```text
//! cargo xtask ci                 the full gate: deps, fmt --check, clippy -D warnings (benches
//!                                included), rustdoc, cargo-deny, tests (totals summed at the end),
//!                                fuzz targets checked, the PGO training loads (debug build),
//!                                packaging check; prints each step's time
//! cargo xtask deps               install the test peers that are missing (haproxy, nginx, curl,
//!                                openssl, prometheus, wrk, man-db, the npm `statsd` daemon) and
//!                                the pinned cargo tools (cargo-deny, cargo-fuzz)
//! cargo xtask fmt [--check]
//! cargo xtask lint               clippy -D warnings, rustdoc -D warnings, cargo-deny
//! cargo xtask test               every test of the workspace (peers installed first)
//! cargo xtask package            package every publishable crate in one go (the workspace's
//!                                unpublished crates see each other), build each from its .crate
//!                                alone, check contents (README, LICENSE, CHANGELOG, size caps)
//! cargo xtask bench [--whole [--pgo]] [ARGS..]   criterion benches; --whole runs
//!                                ../shared/bench/run with the release binary (--pgo: the
//!                                profile-guided one of `cargo xtask pgo`; ARGS are passed to it)
//! cargo xtask bench --instructions [WORKLOAD] [--binary PATH]   user-space instructions per
//!                                request of the proxy (callgrind; the profiling build by
//!                                default) under l7-ka (default), l7-close, h2-term, http-ka or
//!                                http-close against an nginx backend: repeatable where CPU
//!                                time is noisy
//! cargo xtask bench --kernel     bulk1 through a kernel-forwarded (nftables) and a proxied route
//!                                of the release binary, in network namespaces (root, iperf3):
//!                                machine and proxy CPU per GB
//! cargo xtask pgo [--check]      the release binary built with profile-guided optimisation:
//!                                an instrumented build serves loopback traffic of every kind
//!                                (layer 4, HTTP/1.1, HTTP/2, TLS, bulk) against nginx, then the
//!                                release build uses its profile -> target/pgo/smartproxy;
//!                                --check: only the training loads, through the debug build
//! cargo xtask fuzz [--secs N] [--runs N] [TARGET..] run the fuzz targets (all by default)
//!                                for N s each (and at most N executions with --runs)
//! cargo xtask soak [--connections N] [--debug]   N connections (default 1,000,000) through two
//!                                hops with PROXY v2 (release build): fds, RSS and gauges of both
//!                                hops at start vs end (tests/tests/reliability.rs `soak`)
//! cargo xtask release [--version X [--bump CRATE=major|minor|patch].. [--plan]] [--no-pgo]
//!                                with --version: bump the binary to X and every crate changed
//!                                since the last vX tag (--plan: print, change nothing); then
//!                                package + verify those crates, publish --dry-run, the release
//!                                binary (profile-guided unless --no-pgo), man page,
//!                                completions, release notes, tarball and
//!                                SHA256SUMS in target/dist. Uploads, commits and tags nothing.
//! ```
//!
//! Avoid adding dependencies here: it is built before anything else runs.
#![allow(clippy::print_stdout)]

use std::env;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Instant;

use anyhow::{Context, Result, bail};

mod bump;
mod deps;
mod disk;
mod instructions;
mod package;
mod pgo;
mod release;
mod steps;
mod workspace;

use crate::steps::{Steps, TestTotals};

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
            let (totals, r) = test();
            println!("xtask test: {totals}");
            r
        }
        "package" => package_check().map(|_| ()),
        "pgo" => match rest.first().map(String::as_str) {
            None => pgo::build().map(|_| ()),
            Some("--check") => pgo::check_training(),
            Some(other) => bail!("pgo: unknown argument `{other}` (--check: the training only)"),
        },
        "bench" => bench(rest),
        "fuzz" => fuzz(rest),
        "soak" => soak(rest),
        "release" => release::release(rest),
        "help" | "--help" | "-h" => {
            println!("{}", help());
            Ok(())
        }
        other => bail!("unknown command `{other}` (try `cargo xtask help`)"),
    }
}

/// The command list of the crate doc above (between the ```text fences).
fn help() -> String {
    include_str!("main.rs")
        .lines()
        .skip_while(|l| !l.starts_with("//! ```text"))
        .skip(1)
        .take_while(|l| !l.starts_with("//! ```"))
        .map(|l| l.trim_start_matches("//! ").trim_start_matches("//!"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Cargo's target directory: `CARGO_TARGET_DIR` when set, else `target/` of the workspace.
fn target_dir() -> PathBuf {
    env::var_os("CARGO_TARGET_DIR").map_or_else(|| workspace_root().join("target"), PathBuf::from)
}

/// One target directory for the fuzz crates (each its own workspace): they share most of
/// their dependencies, built once with the sanitizer flags instead of once per crate.
fn fuzz_target_dir() -> String {
    target_dir().join("fuzz").to_string_lossy().into_owned()
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
    let target = target_dir();
    disk::check_before_ci(&target)?;
    let mut steps = Steps::default();
    let mut totals = TestTotals::default();
    let r = ci_steps(&mut steps, &mut totals);
    println!("\nxtask ci: steps\n{}", steps.summary());
    println!("tests: {totals}");
    println!("{}", disk::report_after_ci(&target));
    r?;
    println!("xtask ci: all checks passed in {:.0} s", t.elapsed().as_secs_f64());
    Ok(())
}

fn ci_steps(steps: &mut Steps, totals: &mut TestTotals) -> Result<()> {
    steps.run("deps (test peers, pinned cargo tools)", deps::ensure_all)?;
    steps.run("fmt --check", || fmt(true))?;
    steps.run("clippy -D warnings", clippy)?;
    steps.run("rustdoc -D warnings", rustdoc)?;
    steps.run("cargo deny", deny)?;
    steps.run("tests", || {
        let (t, r) = test();
        *totals = t;
        r
    })?;
    // Benches are type-checked by clippy --all-targets above; the fuzz crates (their own
    // workspaces) are checked here so that they cannot rot.
    steps.run("fuzz targets (cargo fuzz check)", fuzz_check)?;
    steps.run("PGO training loads (debug build, 1 s each)", pgo::check_training)?;
    // Last, so that the verify builds reuse what the tests built in target/debug.
    steps.run("packaging (cargo package, each .crate built)", || package_check().map(|_| ()))?;
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
    clippy()?;
    rustdoc()?;
    deny()
}

fn clippy() -> Result<()> {
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
    )
}

fn rustdoc() -> Result<()> {
    sh_env(
        "cargo",
        &["doc", "--workspace", "--no-deps", "--quiet"],
        &[("RUSTDOCFLAGS", "-D warnings")],
    )
}

fn deny() -> Result<()> {
    deps::ensure_cargo_tool(deps::CARGO_DENY)?;
    // Advisories need the RustSec database from the network; CI machines here reach only the
    // package registries, so the gate checks bans, licences and sources.
    sh("cargo", &["deny", "--log-level", "error", "check", "bans", "licenses", "sources"])
}

/// Every test of the workspace (doc tests included); the totals are summed from libtest's
/// summary lines.
fn test() -> (TestTotals, Result<()>) {
    // insta must not write snapshots in CI: a drift fails the run.
    steps::cargo_test(
        &["test", "--workspace", "--all-features", "--no-fail-fast"],
        &[("INSTA_UPDATE", "no"), ("CI", "true")],
    )
}

/// `cargo package` of every publishable crate with verification, and the contents check.
fn package_check() -> Result<Vec<package::Packaged>> {
    let ws = workspace::Workspace::load(&env::current_dir()?)?;
    package::check(&ws, &[], package::Mode::Package)
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
            .args(["fuzz", "check", "--fuzz-dir", ".", "--target-dir", &fuzz_target_dir()])
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
    deps::ensure_cargo_tool(deps::CARGO_FUZZ)?;
    let mut secs = 60u64;
    let mut runs: Option<u64> = None;
    let mut wanted = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == "--secs" {
            secs = it.next().context("--secs needs a number")?.parse().context("--secs")?;
        } else if a == "--runs" {
            let n = it.next().context("--runs needs a number")?;
            runs = Some(n.replace(['_', ','], "").parse().context("--runs")?);
        } else {
            wanted.push(a.clone());
        }
    }
    // With --runs, a target stops at N executions or at --secs, whichever comes first.
    let limits: Vec<String> = std::iter::once(format!("-max_total_time={secs}"))
        .chain(runs.map(|n| format!("-runs={n}")))
        .collect();
    for dir in fuzz_dirs()? {
        for target in fuzz_targets(&dir)? {
            if !wanted.is_empty() && !wanted.contains(&target) {
                continue;
            }
            println!("$ (cd {}) cargo fuzz run {target} -- {}", dir.display(), limits.join(" "));
            let corpus = dir.join("corpus").join(&target);
            std::fs::create_dir_all(&corpus)?;
            let st = Command::new("cargo")
                .args([
                    "fuzz",
                    "run",
                    "--fuzz-dir",
                    ".",
                    "--target-dir",
                    &fuzz_target_dir(),
                    &target,
                ])
                .arg("--")
                .args(&limits)
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

/// The soak test of `tests/tests/reliability.rs` (5,000 connections in CI) with N connections.
fn soak(args: &[String]) -> Result<()> {
    let mut connections = 1_000_000u64;
    let mut release = true;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--connections" => {
                connections = it
                    .next()
                    .context("--connections needs a number")?
                    .parse()
                    .context("--connections")?;
            }
            "--debug" => release = false,
            other => bail!("soak: unknown argument `{other}`"),
        }
    }
    let mut cmd = Command::new("cargo");
    cmd.args(["test", "-p", "smartproxy-tests", "--test", "reliability"]);
    if release {
        cmd.arg("--release");
    }
    cmd.args(["soak", "--", "--nocapture", "--exact"])
        .env("SMARTPROXY_SOAK_CONNECTIONS", connections.to_string());
    println!("$ {cmd:?}");
    if !cmd.status().context("cargo test")?.success() {
        bail!("the soak failed");
    }
    Ok(())
}

fn bench(args: &[String]) -> Result<()> {
    if args.first().map(String::as_str) == Some("--instructions") {
        return instructions::run(&args[1..]);
    }
    if args.first().map(String::as_str) == Some("--kernel") {
        deps::ensure_kernel_bench_tools()?;
        sh("cargo", &["build", "--release", "--locked", "-p", "smartproxy"])?;
        return sh(
            "cargo",
            &["bench", "--locked", "-p", "smartproxy-nftables", "--bench", "kernel_vs_proxy"],
        );
    }
    if args.first().map(String::as_str) == Some("--whole") {
        deps::ensure_bench_tools()?;
        let harness = Path::new("../shared/bench/run");
        if !harness.exists() {
            bail!(
                "the benchmark harness is not at ../shared/bench/run (it ships beside the repository)"
            );
        }
        let pgo = args.get(1).map(String::as_str) == Some("--pgo");
        // The harness's smartproxy recipe runs $SMARTPROXY_BIN, else target/release/smartproxy.
        let bin = if pgo {
            pgo::build()?.to_string_lossy().into_owned()
        } else {
            sh("cargo", &["build", "--release", "--locked", "-p", "smartproxy"])?;
            "target/release/smartproxy".to_owned()
        };
        let mut a: Vec<&str> = args[1 + usize::from(pgo)..].iter().map(String::as_str).collect();
        if !a.iter().any(|x| x.starts_with("--proxies")) {
            a.extend(["--proxies", "direct,haproxy,nginx,smartproxy"]);
        }
        return sh_env(
            harness.to_str().unwrap_or("../shared/bench/run"),
            &a,
            &[("SMARTPROXY_BIN", &bin)],
        );
    }
    let mut a = vec!["bench", "--workspace"];
    a.extend(args.iter().map(String::as_str));
    sh("cargo", &a)
}
