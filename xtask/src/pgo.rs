//! `cargo xtask pgo`: the release binary built with profile-guided optimisation.
//!
//! 1. An instrumented release build (`-Cprofile-generate`) in `target/pgo-generate`.
//! 2. Training: that binary serves the traffic it is built for, on loopback against an nginx
//!    backend, each for a few seconds: layer-4 forwarding (keep-alive and a connection per
//!    request), the HTTP layer (HTTP/1.1 keep-alive and close, HTTP/2 over TLS with h2load,
//!    HTTP/1.1 over TLS), TLS termination at layer 4 (keep-alive and a handshake per request),
//!    TLS passthrough by SNI, and a bulk transfer (iperf3). Then it is stopped with SIGINT, so
//!    that it writes its profile on the way out.
//! 3. `llvm-profdata merge` (rustup's `llvm-tools`, installed when missing: the profile format
//!    follows the compiler's LLVM, so the system's `llvm-profdata` may not read it).
//! 4. The release build again with `-Cprofile-use`, in `target/pgo-use`, copied to
//!    `target/pgo/smartproxy`.
//!
//! Both builds name the host as `--target`, so that `RUSTFLAGS` reach the proxy's own code and
//! its dependencies but not build scripts or proc macros (which would write profiles of their
//! own while cargo runs them).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::instructions::{Reaped, output, self_signed, start_backend, wait_for};

/// Seconds of each training load.
const SECS: u32 = 3;

/// The training run of `cargo xtask ci`: the debug build through every load for a second
/// each, so that a change the training no longer works with (a config key, a route kind, a
/// load that fails) fails CI and not the next release.
pub(crate) fn check_training() -> Result<()> {
    ensure_tools()?;
    // The debug build the tests made (tests/src/lib.rs `smartproxy_bin`), built the same way:
    // without the variables cargo set for this xtask, which build scripts watch (a build with
    // them would rebuild ring and rustls, and the next test run again without them).
    let mut cargo = Command::new("cargo");
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy();
        if k.starts_with("CARGO_PKG_")
            || k.starts_with("CARGO_MANIFEST_")
            || k.starts_with("CARGO_BIN_")
            || matches!(&*k, "CARGO_CRATE_NAME" | "CARGO_TARGET_TMPDIR" | "OUT_DIR")
        {
            cargo.env_remove(&*k);
        }
    }
    let st = cargo
        .args(["build", "--locked", "--quiet", "-p", "smartproxy"])
        .status()
        .context("could not start cargo")?;
    if !st.success() {
        bail!("cargo build -p smartproxy failed ({st})");
    }
    let dir = std::env::current_dir()?.join("target").join("pgo-check");
    fs::create_dir_all(&dir)?;
    train(Path::new("target/debug/smartproxy"), &dir, 1)
}

fn ensure_tools() -> Result<()> {
    crate::deps::ensure_commands(&[
        ("wrk", "wrk"),
        ("nginx", "nginx-light"),
        ("taskset", "util-linux"),
        ("h2load", "nghttp2-client"),
        ("openssl", "openssl"),
        ("curl", "curl"),
        ("iperf3", "iperf3"),
    ])
}

/// Builds `target/pgo/smartproxy`; returns its path.
pub(crate) fn build() -> Result<PathBuf> {
    ensure_tools()?;
    let host = crate::release::host_triple()?;
    let profdata_tool = llvm_profdata(&host)?;
    let root = std::env::current_dir().context("current directory")?;
    let target = root.join("target");
    let out = target.join("pgo");
    let raw = out.join("profiles");
    if raw.exists() {
        fs::remove_dir_all(&raw).with_context(|| format!("emptying {}", raw.display()))?;
    }
    fs::create_dir_all(&raw)?;

    let gen_dir = target.join("pgo-generate");
    cargo_release(&gen_dir, &host, &format!("-Cprofile-generate={}", raw.display()))?;
    let instrumented = gen_dir.join(&host).join("release").join("smartproxy");
    let work = out.join("training");
    fs::create_dir_all(&work)?;
    train(&instrumented, &work, SECS)?;
    let profiles = fs::read_dir(&raw)?
        .filter_map(|e| e.ok())
        .filter(|e| e.path().extension().is_some_and(|x| x == "profraw"))
        .count();
    if profiles == 0 {
        bail!("the instrumented proxy wrote no profile into {}", raw.display());
    }
    let profdata = out.join("smartproxy.profdata");
    crate::sh(
        &profdata_tool.to_string_lossy(),
        &["merge", "-o", &profdata.to_string_lossy(), &raw.to_string_lossy()],
    )?;

    let use_dir = target.join("pgo-use");
    cargo_release(&use_dir, &host, &format!("-Cprofile-use={}", profdata.display()))?;
    let built = use_dir.join(&host).join("release").join("smartproxy");
    let bin = out.join("smartproxy");
    fs::copy(&built, &bin)
        .with_context(|| format!("copying {} to {}", built.display(), bin.display()))?;
    let size = fs::metadata(&bin)?.len();
    println!(
        "{}: {size} bytes ({:.1} MiB), profile-guided ({profiles} profiles merged)\n\
         measure it: SMARTPROXY_BIN={} ../shared/bench/run --proxies direct,haproxy,nginx,smartproxy",
        bin.display(),
        size as f64 / 1048576.0,
        bin.display()
    );
    Ok(bin)
}

/// `llvm-profdata` of the compiler's own LLVM (rustup component `llvm-tools`).
fn llvm_profdata(host: &str) -> Result<PathBuf> {
    let sysroot = output("rustc", &["--print", "sysroot"])?;
    let tool =
        Path::new(sysroot.trim()).join("lib/rustlib").join(host).join("bin").join("llvm-profdata");
    if !tool.exists() {
        crate::sh("rustup", &["component", "add", "llvm-tools"]).context(
            "PGO needs llvm-profdata of the compiler's LLVM: `rustup component add llvm-tools`",
        )?;
    }
    if !tool.exists() {
        bail!("no llvm-profdata at {} after `rustup component add llvm-tools`", tool.display());
    }
    Ok(tool)
}

fn cargo_release(target_dir: &Path, host: &str, rustflags: &str) -> Result<()> {
    crate::sh_env(
        "cargo",
        &["build", "--release", "--locked", "-p", "smartproxy", "--target", host],
        &[("CARGO_TARGET_DIR", &target_dir.to_string_lossy()), ("RUSTFLAGS", rustflags)],
    )
}

/// The proxy's training config: one route per kind of traffic, each on its own port.
fn training_config(
    p: &Ports,
    backend: u16,
    backend_tls: u16,
    iperf: u16,
    cert: &Path,
    key: &Path,
) -> String {
    let tls =
        format!("certificate = {{ cert = \"{}\", key = \"{}\" }}", cert.display(), key.display());
    let target = |port: u16| format!("targets = [{{ host = \"127.0.0.1\", port = {port} }}]");
    format!(
        "workers = 1\n\n\
         [[routes]]\nname = \"l4\"\nmatch = {{ ports = [{l4}] }}\n\
         action = {{ type = \"forward\", {be} }}\n\n\
         [[routes]]\nname = \"http\"\nmatch = {{ ports = [{http}] }}\n\
         action = {{ type = \"forward\", {be}, http = {{}} }}\n\n\
         [[routes]]\nname = \"https\"\nmatch = {{ ports = [{https}] }}\n\
         action = {{ type = \"forward\", {be}, http = {{}}, tls = {{ mode = \"terminate\", {tls} }} }}\n\n\
         [[routes]]\nname = \"tls-term\"\nmatch = {{ ports = [{term}] }}\n\
         action = {{ type = \"forward\", {be}, tls = {{ mode = \"terminate\", {tls}, session_resumption = false }} }}\n\n\
         [[routes]]\nname = \"tls-pass\"\nmatch = {{ ports = [{pass}], domains = [\"bench.local\"] }}\n\
         action = {{ type = \"forward\", {be_tls}, tls = {{ mode = \"passthrough\" }} }}\n\n\
         [[routes]]\nname = \"bulk\"\nmatch = {{ ports = [{bulk}] }}\n\
         action = {{ type = \"forward\", {iperf} }}\n",
        l4 = p.l4,
        http = p.http,
        https = p.https,
        term = p.term,
        pass = p.pass,
        bulk = p.bulk,
        be = target(backend),
        be_tls = target(backend_tls),
        iperf = target(iperf),
    )
}

struct Ports {
    l4: u16,
    http: u16,
    https: u16,
    term: u16,
    pass: u16,
    bulk: u16,
}

/// Distinct ports free on every address, held all at once while they are found, then
/// released. Taken below the kernel's ephemeral range (32768 and up by default), from which
/// the training's own connections take their source ports: a port handed out from there
/// could be some connection's local port by the time the proxy binds it on the wildcard
/// addresses (its default `bind`), which then fails.
fn free_ports<const N: usize>() -> Result<[u16; N]> {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos())
        ^ std::process::id();
    let (low, span) = (20_000u32, 12_000u32);
    let mut held = Vec::with_capacity(N);
    let mut ports = [0u16; N];
    let mut found = 0;
    for i in 0..span {
        if found == N {
            break;
        }
        let port = u16::try_from(low + (seed.wrapping_add(i.wrapping_mul(7_919))) % span)
            .context("port out of range")?;
        // `[::]` without IPV6_V6ONLY holds the IPv4 wildcard too; 0.0.0.0 where there is no
        // IPv6.
        let l = std::net::TcpListener::bind(("::", port))
            .or_else(|_| std::net::TcpListener::bind(("0.0.0.0", port)));
        if let Ok(l) = l {
            if !ports[..found].contains(&port) {
                held.push(l);
                ports[found] = port;
                found += 1;
            }
        }
    }
    if found < N {
        bail!("found only {found} of {N} free ports in {low}..{}", low + span);
    }
    Ok(ports)
}

/// Runs `program` (a load generator) and fails unless it exits 0 and its output passes `ok`.
fn load(what: &str, program: &str, args: &[&str], ok: impl Fn(&str) -> bool) -> Result<()> {
    println!("  training: {what}");
    let out = output(program, args)?;
    if !ok(&out) {
        bail!("training load `{what}` did not complete cleanly:\n{out}");
    }
    Ok(())
}

/// wrk finished requests and reported no socket errors or non-2xx answers.
fn wrk_ok(out: &str) -> bool {
    out.contains(" requests in ") && !out.contains("Socket errors") && !out.contains("Non-2xx")
}

fn train(binary: &Path, dir: &Path, secs: u32) -> Result<()> {
    let (cert, key) = self_signed(dir)?;
    let [backend, backend_tls, iperf, l4, http, https, term, pass, bulk] = free_ports()?;
    let mut nginx = start_backend(dir, backend, Some((backend_tls, &cert, &key)))?;
    wait_for(backend, "the nginx backend", &mut nginx.0)?;
    wait_for(backend_tls, "the nginx backend (HTTPS)", &mut nginx.0)?;
    // Its log also has a complaint about every connection that only checks it listens.
    let iperf_log = dir.join("iperf3.log");
    let log_file = fs::File::create(&iperf_log)?;
    let mut iperf_server = Reaped(
        Command::new("iperf3")
            .args(["-s", "-B", "127.0.0.1", "-p", &iperf.to_string()])
            .stdout(log_file.try_clone()?)
            .stderr(log_file)
            .spawn()
            .context("could not start the iperf3 server")?,
    );
    wait_for(iperf, "the iperf3 server", &mut iperf_server.0)
        .with_context(|| format!("its log: {}", iperf_log.display()))?;
    let p = Ports { l4, http, https, term, pass, bulk };
    let config = dir.join("proxy.toml");
    fs::write(&config, training_config(&p, backend, backend_tls, iperf, &cert, &key))?;
    // Its log (wrk's SNI is an address, which rustls logs as a warning per handshake).
    let log = dir.join("proxy.log");
    let mut proxy = Reaped(
        Command::new(binary)
            .args(["run", "-c"])
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log)?)
            .spawn()
            .with_context(|| format!("could not start {}", binary.display()))?,
    );
    for port in [p.l4, p.http, p.https, p.term, p.pass, p.bulk] {
        wait_for(port, "the instrumented proxy", &mut proxy.0)?;
    }
    let dur = format!("{secs}s");
    let url = |scheme: &str, port: u16| format!("{scheme}://127.0.0.1:{port}/");
    let wrk = |what: &str, u: String, close: bool| {
        let mut a = vec!["-t", "1", "-c", "10", "-d", &dur];
        if close {
            a.extend(["-H", "Connection: close"]);
        }
        a.push(&u);
        load(what, "wrk", &a, wrk_ok)
    };
    wrk("layer 4, keep-alive", url("http", p.l4), false)?;
    wrk("layer 4, a connection per request", url("http", p.l4), true)?;
    wrk("HTTP/1.1 keep-alive", url("http", p.http), false)?;
    wrk("HTTP/1.1, a connection per request", url("http", p.http), true)?;
    wrk("HTTP/1.1 over TLS", url("https", p.https), false)?;
    wrk("TLS termination, keep-alive", url("https", p.term), false)?;
    wrk("TLS termination, a handshake per request", url("https", p.term), true)?;
    let n = (secs * 15_000).to_string();
    let h2 = url("https", p.https);
    load("HTTP/2 over TLS", "h2load", &["-c", "4", "-m", "10", "-t", "1", "-n", &n, &h2], |o| {
        o.contains(&format!("requests: {n} total")) && o.contains(" 0 failed")
    })?;
    // Passthrough routes by SNI: wrk sends none for an address, so curl names the host.
    let pass = format!("bench.local:{}:127.0.0.1", p.pass);
    let pass_url = format!("https://bench.local:{}/", p.pass);
    for _ in 0..200 {
        output("curl", &["-skf", "-o", "/dev/null", "--resolve", &pass, &pass_url])
            .context("training load `TLS passthrough` failed")?;
    }
    println!("  training: TLS passthrough (200 curl requests)");
    let bulk_port = p.bulk.to_string();
    load(
        "bulk transfer",
        "iperf3",
        &["-c", "127.0.0.1", "-p", &bulk_port, "-t", &secs.to_string()],
        |o| o.contains("receiver"),
    )?;
    // SIGINT: a graceful stop, after which the profile is written.
    output("kill", &["-INT", &proxy.0.id().to_string()])?;
    let status = wait_timeout(&mut proxy.0, Duration::from_secs(60))?;
    if !status.success() {
        bail!("the instrumented proxy exited with {status} (its log: {})", log.display());
    }
    Ok(())
}

fn wait_timeout(
    child: &mut std::process::Child,
    limit: Duration,
) -> Result<std::process::ExitStatus> {
    let start = std::time::Instant::now();
    loop {
        if let Some(s) = child.try_wait()? {
            return Ok(s);
        }
        if start.elapsed() > limit {
            bail!("the instrumented proxy did not stop within {} s of SIGINT", limit.as_secs());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn training_config_has_a_route_per_kind_of_traffic_on_its_own_port() {
        let p = Ports { l4: 1001, http: 1002, https: 1003, term: 1004, pass: 1005, bulk: 1006 };
        let c = training_config(&p, 2001, 2002, 2003, Path::new("/c.pem"), Path::new("/k.pem"));
        for (name, port) in [
            ("l4", 1001),
            ("http", 1002),
            ("https", 1003),
            ("tls-term", 1004),
            ("tls-pass", 1005),
            ("bulk", 1006),
        ] {
            assert!(
                c.contains(&format!("name = \"{name}\"\nmatch = {{ ports = [{port}]")),
                "route {name} on {port} missing:\n{c}"
            );
        }
        assert_eq!(c.matches("http = {}").count(), 2, "{c}");
        assert_eq!(c.matches("mode = \"terminate\"").count(), 2, "{c}");
        assert!(c.contains("port = 2002 }], tls = { mode = \"passthrough\" }"), "{c}");
        assert!(c.contains("port = 2003 }] }"), "{c}");
    }

    #[test]
    fn free_ports_are_distinct_below_the_ephemeral_range_and_free() {
        let ports: [u16; 9] = free_ports().unwrap();
        let mut sorted = ports.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), 9, "{ports:?}");
        for p in ports {
            assert!((20_000..32_000).contains(&p), "{p}");
            std::net::TcpListener::bind(("127.0.0.1", p)).unwrap();
        }
    }

    #[test]
    fn wrk_output_with_errors_is_not_a_clean_run() {
        let clean = "  30000 requests in 3.00s, 4.2MB read\nRequests/sec: 10000\n";
        assert!(wrk_ok(clean));
        assert!(!wrk_ok(&format!(
            "{clean}  Socket errors: connect 0, read 3, write 0, timeout 0\n"
        )));
        assert!(!wrk_ok(&format!("{clean}  Non-2xx or 3xx responses: 12\n")));
        assert!(!wrk_ok("unable to connect to 127.0.0.1:1 Connection refused\n"));
    }
}
