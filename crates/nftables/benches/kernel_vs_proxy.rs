//! The same bulk TCP transfer (iperf3, one stream, like the whole-proxy harness's `bulk1`)
//! through a kernel-forwarded route (`forwarding_engine = "nftables"`) and through a proxied
//! route of the same `smartproxy` binary, in network namespaces this tool creates (client,
//! proxy, backend; the test support of this crate). `../shared/bench/run` cannot run inside
//! namespaces, hence this tool.
//!
//! The kernel's work is not in the proxy process, so the figure that compares the two is the
//! CPU of the whole machine per GB (busy time of every CPU from `/proc/stat`: user, system,
//! irq, softirq, steal; the iperf3 client and server are in it for every row alike), next to
//! the proxy process's own CPU per GB (`/proc/PID/stat`).
//!
//! Rows: `routed` (the client's packets forwarded by the proxy namespace to the backend
//! without NAT: the cost of the namespaces and iperf3 alone), `proxied` (the proxied route, no
//! nftables table), `nftables` (the kernel route), `proxied + table` (the proxied route while
//! the table exists, so conntrack tracks its connections too).
//!
//! ```sh
//! cargo build --release -p smartproxy
//! cargo bench -p smartproxy-nftables --bench kernel_vs_proxy     # or: cargo xtask bench --kernel
//! BENCH_SECONDS=10 BENCH_REPEAT=5 SMARTPROXY_BIN=target/release/smartproxy cargo bench ...
//! ```
//!
//! Needs root (namespaces, nft), `ip`, `nft`, `sysctl`, `iperf3` and the release binary
//! (`SMARTPROXY_BIN`, default `target/release/smartproxy`); it fails naming what is missing.
//! Not run by a plain `cargo bench` (`bench = false`): it needs a quiet machine.
#![allow(clippy::print_stdout, missing_docs)]

#[path = "../tests/support/mod.rs"]
mod support;

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::*;

const IPERF_PORT: u16 = 5201;
const KERNEL_PORT: u16 = 5202;
const PROXIED_PORT: u16 = 5203;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn binary() -> PathBuf {
    let bin = std::env::var_os("SMARTPROXY_BIN").map(PathBuf::from).unwrap_or_else(|| {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/release/smartproxy")
    });
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build --release -p smartproxy` (or set SMARTPROXY_BIN)",
        bin.display()
    );
    bin
}

fn require(tool: &str) {
    let ok = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(ok, "`{tool}` is missing: apt-get install {tool}");
}

/// Busy and total CPU ticks of the whole machine (`cpu` line of /proc/stat).
fn machine_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/stat").expect("/proc/stat");
    let line = stat.lines().find(|l| l.starts_with("cpu ")).expect("cpu line");
    let v: Vec<u64> =
        line.split_whitespace().skip(1).take(8).map(|x| x.parse().unwrap_or(0)).collect();
    // user nice system idle iowait irq softirq steal: busy = all but idle and iowait.
    v.iter().sum::<u64>() - v[3] - v[4]
}

/// utime + stime of a process (all its threads), in ticks.
fn process_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, a)| a);
    let f: Vec<&str> = after.split_whitespace().collect();
    // After the comm field: state is field 3, utime 14, stime 15 (1-based over the whole line).
    f.get(11).and_then(|x| x.parse::<u64>().ok()).unwrap_or(0)
        + f.get(12).and_then(|x| x.parse::<u64>().ok()).unwrap_or(0)
}

fn clock_ticks() -> f64 {
    let out = Command::new("getconf").arg("CLK_TCK").output().expect("getconf CLK_TCK");
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or(100.0)
}

/// Whether TCP `port` listens in the namespace (read from inside it).
fn listening(ns: &Netns, port: u16) -> bool {
    let needle = format!(":{port:04X} ");
    ns.enter(move || {
        std::fs::read_to_string("/proc/thread-self/net/tcp").unwrap_or_default().lines().any(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            cols.len() > 3 && format!("{} ", cols[1]).ends_with(&needle) && cols[3] == "0A"
        })
    })
}

/// One transfer's figures.
#[derive(Debug, Clone, Copy)]
struct Figures {
    gbps: f64,
    machine_s_per_gb: f64,
    proxy_s_per_gb: Option<f64>,
}

fn transfer(
    topo: &Topology,
    to: &str,
    port: u16,
    seconds: u64,
    proxy: Option<u32>,
    hz: f64,
) -> Figures {
    let (m0, p0) = (machine_ticks(), proxy.map(process_ticks));
    let out = Command::new("ip")
        .args(["netns", "exec", topo.client.name(), "iperf3", "-c", to, "-p"])
        .arg(port.to_string())
        .args(["-t", &seconds.to_string(), "-P", "1", "-J"])
        .output()
        .expect("run iperf3 -c");
    let (m1, p1) = (machine_ticks(), proxy.map(process_ticks));
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!("iperf3 gave no JSON ({e}): {}", String::from_utf8_lossy(&out.stderr))
    });
    if let Some(e) = j.get("error") {
        panic!("iperf3 to {to}:{port}: {e}");
    }
    let recv = &j["end"]["sum_received"];
    let bytes = recv["bytes"].as_f64().expect("bytes received");
    let gb = bytes / 1e9;
    Figures {
        gbps: recv["bits_per_second"].as_f64().unwrap_or(0.0) / 1e9,
        machine_s_per_gb: (m1 - m0) as f64 / hz / gb,
        proxy_s_per_gb: p0.zip(p1).map(|(a, b)| (b - a) as f64 / hz / gb),
    }
}

/// `smartproxy run` in the proxy namespace, until SIGTERM on drop.
struct Proxy {
    child: Child,
    _dir: Scratch,
}

/// A scratch directory, removed on drop.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Proxy {
    fn start(topo: &Topology, bin: &Path, kernel: bool) -> Self {
        let dir = std::env::temp_dir().join(format!("spnft-bench-{}-{kernel}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("scratch dir");
        let mut config = format!(
            r#"workers = 1
[[routes]]
name = "proxied"
match = {{ ports = [{PROXIED_PORT}] }}
action = {{ type = "forward", targets = [{{ host = "{BACKEND}", port = {IPERF_PORT} }}] }}
"#
        );
        if kernel {
            config.push_str(&format!(
                r#"
[[routes]]
name = "kernel"
match = {{ ports = [{KERNEL_PORT}] }}
action = {{ type = "forward", targets = [{{ host = "{BACKEND}", port = {IPERF_PORT} }}], forwarding_engine = "nftables" }}
"#
            ));
        }
        let path = dir.join("bench.toml");
        std::fs::write(&path, config).expect("config");
        let log = dir.join("proxy.log");
        let child = Command::new("ip")
            .args(["netns", "exec", topo.proxy.name()])
            .arg(bin)
            .args(["run", "-c"])
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&log).expect("log file"))
            .spawn()
            .expect("start smartproxy");
        let p = Self { child, _dir: Scratch(dir) };
        let ready = || {
            let mut text = String::new();
            let _ = File::open(&log).and_then(|mut f| f.read_to_string(&mut text));
            listening(&topo.proxy, PROXIED_PORT)
                && (!kernel || text.contains("kernel forwarding rules applied"))
                || text.contains("kernel forwarding failed")
        };
        eventually("smartproxy to start", PATIENCE, || ready().then_some(()));
        let mut text = String::new();
        let _ = File::open(&log).and_then(|mut f| f.read_to_string(&mut text));
        assert!(!text.contains("kernel forwarding failed"), "{text}");
        p
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let deadline = Instant::now() + PATIENCE;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let seconds: u64 = env_or("BENCH_SECONDS", 5);
    let repeat: usize = env_or("BENCH_REPEAT", 3).max(1);
    let bin = binary();
    require("iperf3");
    let hz = clock_ticks();
    let topo = Topology::new();
    let mut server = Command::new("ip")
        .args(["netns", "exec", topo.backend.name(), "iperf3", "-s", "-B", BACKEND, "-p"])
        .arg(IPERF_PORT.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start iperf3 -s");
    eventually("the iperf3 server", PATIENCE, || {
        listening(&topo.backend, IPERF_PORT).then_some(())
    });

    let rows = ["routed", "proxied", "nftables", "proxied + table"];
    let mut runs: Vec<Vec<Figures>> = vec![Vec::new(); rows.len()];
    for round in 0..repeat {
        println!("round {} of {repeat} ({seconds} s per transfer)", round + 1);
        runs[0].push(transfer(&topo, BACKEND, IPERF_PORT, seconds, None, hz));
        {
            let p = Proxy::start(&topo, &bin, false);
            runs[1].push(transfer(&topo, PROXY, PROXIED_PORT, seconds, Some(p.pid()), hz));
        }
        {
            let p = Proxy::start(&topo, &bin, true);
            runs[2].push(transfer(&topo, PROXY, KERNEL_PORT, seconds, Some(p.pid()), hz));
            runs[3].push(transfer(&topo, PROXY, PROXIED_PORT, seconds, Some(p.pid()), hz));
        }
    }
    let _ = server.kill();
    let _ = server.wait();

    println!(
        "\nbulk1 (iperf3 -P 1, {seconds} s, median of {repeat}) through network namespaces, workers = 1"
    );
    println!("| path | Gbit/s | machine CPU s/GB | proxy process CPU s/GB |");
    println!("|---|---|---|---|");
    for (name, r) in rows.iter().zip(&runs) {
        let gbps = median(r.iter().map(|f| f.gbps).collect());
        let machine = median(r.iter().map(|f| f.machine_s_per_gb).collect());
        let proxy = r
            .iter()
            .map(|f| f.proxy_s_per_gb)
            .collect::<Option<Vec<f64>>>()
            .map_or_else(|| "-".to_owned(), |v| format!("{:.3}", median(v)));
        println!("| {name} | {gbps:.2} | {machine:.3} | {proxy} |");
    }
    println!(
        "\nmachine CPU: busy time of every CPU (/proc/stat) per GB received, iperf3 client and \
         server included; proxy process: utime + stime of smartproxy per GB."
    );
}
