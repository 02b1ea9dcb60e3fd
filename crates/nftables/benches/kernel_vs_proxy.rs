//! The same bulk TCP transfer (iperf3, one stream, like the whole-proxy harness's `bulk1`)
//! through a kernel-forwarded route (`forwarding_engine = "nftables"`) and through a proxied
//! route of the same `smartproxy` binary, in network namespaces this tool creates (client,
//! proxy, backend; the test support of this crate). `../shared/bench/run` cannot run inside
//! namespaces, hence this tool.
//!
//! The kernel's work is not in the proxy process, so the figure that compares the two is the
//! CPU of the transfer on the whole machine per GB: the iperf3 client and server, the proxy
//! (with the `nft` runs it waited for), kernel threads, and the hard and soft interrupt time of
//! every CPU (`/proc/stat`), where the kernel forwards and NATs the packets. It is the
//! machine's busy time per GB on an idle machine, and stays meaningful on a machine shared
//! with other work (shown too: busy time less that of other processes). Next to it, the proxy
//! process's own CPU per GB.
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

use std::collections::HashMap;
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

/// CPU ticks of the whole machine (`cpu` line of /proc/stat): busy (all but idle and iowait)
/// and the part spent in hard and soft interrupts (where packets are forwarded and NATed).
fn machine() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").expect("/proc/stat");
    let line = stat.lines().find(|l| l.starts_with("cpu ")).expect("cpu line");
    let v: Vec<u64> =
        line.split_whitespace().skip(1).take(8).map(|x| x.parse().unwrap_or(0)).collect();
    // user nice system idle iowait irq softirq steal
    (v.iter().sum::<u64>() - v[3] - v[4], v[5] + v[6])
}

/// (utime + stime, cutime + cstime) of a process in ticks: its threads, and its children that
/// exited and were waited for.
fn process_times(pid: u32) -> (u64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, a)| a);
    let f: Vec<u64> = after.split_whitespace().skip(1).map(|x| x.parse().unwrap_or(0)).collect();
    // After the state: utime f[10], stime f[11], cutime f[12], cstime f[13].
    let at = |i: usize| f.get(i).copied().unwrap_or(0);
    (at(10) + at(11), at(12) + at(13))
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
    /// CPU of the transfer per GB: iperf3 client and server, the proxy (with the `nft` runs it
    /// waited for), kernel threads, and hard and soft interrupts.
    cpu_s_per_gb: f64,
    /// Busy CPU of the machine per GB, less what other processes used meanwhile.
    machine_s_per_gb: f64,
    proxy_s_per_gb: Option<f64>,
    /// CPU seconds other processes (not the proxy, iperf3, this tool or kernel threads) used
    /// during the transfer.
    foreign_s: f64,
}

/// A process seen in /proc.
#[derive(Debug, Clone, Copy)]
struct Proc {
    ppid: u32,
    start: u64,
    ticks: u64,
}

impl Proc {
    /// A kernel thread (kthreadd or one of its children).
    fn kernel(&self, pid: u32) -> bool {
        pid == 2 || self.ppid == 2
    }
}

/// Every process, by PID.
fn processes() -> HashMap<u32, Proc> {
    let mut out = HashMap::new();
    let Ok(dir) = std::fs::read_dir("/proc") else { return out };
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let after = stat.rsplit_once(')').map_or("", |(_, a)| a);
        let f: Vec<u64> =
            after.split_whitespace().skip(1).map(|x| x.parse().unwrap_or(0)).collect();
        // After the state: ppid is f[0], utime f[10], stime f[11], starttime f[18].
        let (Some(&ppid), Some(&ut), Some(&st), Some(&start)) =
            (f.first(), f.get(10), f.get(11), f.get(18))
        else {
            continue;
        };
        out.insert(pid, Proc { ppid: u32::try_from(ppid).unwrap_or(0), start, ticks: ut + st });
    }
    out
}

/// Ticks used between the snapshots by the processes `pick` selects.
fn ticks_between(
    before: &HashMap<u32, Proc>,
    after: &HashMap<u32, Proc>,
    pick: impl Fn(u32, &Proc) -> bool,
) -> u64 {
    after
        .iter()
        .filter(|(pid, p)| pick(**pid, p))
        .map(|(pid, p)| match before.get(pid) {
            Some(b) if b.start == p.start => p.ticks.saturating_sub(b.ticks),
            _ => p.ticks,
        })
        .sum()
}

/// Waits (up to `limit`) until the machine has been idle for two seconds in a row (below 5 %
/// of one CPU busy), so that a transfer does not start during someone else's build.
fn wait_idle(limit: Duration, hz: f64) {
    let start = Instant::now();
    let mut quiet = 0;
    let mut last = machine().0;
    while quiet < 2 {
        std::thread::sleep(Duration::from_secs(1));
        let now = machine().0;
        quiet = if ((now - last) as f64 / hz) < 0.05 { quiet + 1 } else { 0 };
        last = now;
        if start.elapsed() > limit {
            println!("  (the machine was not idle within {limit:?}; measuring anyway)");
            return;
        }
    }
}

fn transfer_once(
    topo: &Topology,
    to: &str,
    port: u16,
    seconds: u64,
    ours: &[u32],
    hz: f64,
) -> Figures {
    let (me, proxy, server) = (ours[0], ours[1], ours[2]);
    let times = |pid: u32| (pid != 0).then(|| process_times(pid));
    let f0 = processes();
    let (m0, i0) = machine();
    let (p0, c0) = (times(proxy), process_times(me).1);
    let client = Command::new("ip")
        .args(["netns", "exec", topo.client.name(), "iperf3", "-c", to, "-p"])
        .arg(port.to_string())
        .args(["-t", &seconds.to_string(), "-P", "1", "-J"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run iperf3 -c");
    let out = client.wait_with_output().expect("iperf3 -c");
    let (p1, c1) = (times(proxy), process_times(me).1);
    let (m1, i1) = machine();
    let f1 = processes();
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!("iperf3 gave no JSON ({e}): {}", String::from_utf8_lossy(&out.stderr))
    });
    if let Some(e) = j.get("error") {
        panic!("iperf3 to {to}:{port}: {e}");
    }
    let recv = &j["end"]["sum_received"];
    let bytes = recv["bytes"].as_f64().expect("bytes received");
    let gb = bytes / 1e9;

    // The client exited and was waited for: its time is in this process's children's time.
    let client = c1 - c0;
    let proxy_ticks = p0.zip(p1).map(|((a, ac), (b, bc))| (b + bc) - (a + ac));
    let server_ticks = ticks_between(&f0, &f1, |pid, _| pid == server);
    let kernel = ticks_between(&f0, &f1, |pid, p| p.kernel(pid));
    let attributed = client + server_ticks + proxy_ticks.unwrap_or(0) + kernel + (i1 - i0);
    let foreign = ticks_between(&f0, &f1, |pid, p| {
        !p.kernel(pid) && !ours.contains(&pid) && !ours.contains(&p.ppid)
    });
    Figures {
        gbps: recv["bits_per_second"].as_f64().unwrap_or(0.0) / 1e9,
        cpu_s_per_gb: attributed as f64 / hz / gb,
        machine_s_per_gb: (m1 - m0).saturating_sub(foreign) as f64 / hz / gb,
        proxy_s_per_gb: proxy_ticks.map(|t| t as f64 / hz / gb),
        foreign_s: foreign as f64 / hz,
    }
}

/// A transfer taken on an idle machine if there is one: measured again (up to 3 times) while
/// other processes used more than 2 % of one CPU during it; on a machine that stays busy the
/// last attempt is kept, with their CPU subtracted and shown. `ours`: this tool, the proxy (0
/// for none), the iperf3 server.
fn transfer(topo: &Topology, to: &str, port: u16, seconds: u64, ours: &[u32], hz: f64) -> Figures {
    let idle_limit = Duration::from_secs(env_or("BENCH_WAIT_IDLE", 20));
    let mut last = None;
    for attempt in 1..=3 {
        wait_idle(idle_limit, hz);
        let got = transfer_once(topo, to, port, seconds, ours, hz);
        if got.foreign_s <= 0.02 * seconds as f64 {
            return got;
        }
        println!(
            "  attempt {attempt}: other processes used {:.2} CPU s meanwhile; again",
            got.foreign_s
        );
        last = Some(got);
    }
    last.expect("three attempts")
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
    let (me, iperf_s) = (std::process::id(), server.id());

    let rows = ["routed", "proxied", "nftables", "proxied + table"];
    let mut runs: Vec<Vec<Figures>> = vec![Vec::new(); rows.len()];
    for round in 0..repeat {
        println!("round {} of {repeat} ({seconds} s per transfer)", round + 1);
        runs[0].push(transfer(&topo, BACKEND, IPERF_PORT, seconds, &[me, 0, iperf_s], hz));
        {
            let p = Proxy::start(&topo, &bin, false);
            let ours = [me, p.pid(), iperf_s];
            runs[1].push(transfer(&topo, PROXY, PROXIED_PORT, seconds, &ours, hz));
        }
        {
            let p = Proxy::start(&topo, &bin, true);
            let ours = [me, p.pid(), iperf_s];
            runs[2].push(transfer(&topo, PROXY, KERNEL_PORT, seconds, &ours, hz));
            runs[3].push(transfer(&topo, PROXY, PROXIED_PORT, seconds, &ours, hz));
        }
    }
    let _ = server.kill();
    let _ = server.wait();

    println!(
        "\nbulk1 (iperf3 -P 1, {seconds} s, median of {repeat}) through network namespaces, workers = 1"
    );
    println!(
        "| path | Gbit/s | CPU s/GB | machine busy s/GB | proxy process CPU s/GB | others, CPU s |"
    );
    println!("|---|---|---|---|---|---|");
    for (name, r) in rows.iter().zip(&runs) {
        let gbps = median(r.iter().map(|f| f.gbps).collect());
        let cpu = median(r.iter().map(|f| f.cpu_s_per_gb).collect());
        let machine = median(r.iter().map(|f| f.machine_s_per_gb).collect());
        let proxy = r
            .iter()
            .map(|f| f.proxy_s_per_gb)
            .collect::<Option<Vec<f64>>>()
            .map_or_else(|| "-".to_owned(), |v| format!("{:.3}", median(v)));
        let foreign = r.iter().map(|f| f.foreign_s).fold(0.0, f64::max);
        println!("| {name} | {gbps:.2} | {cpu:.3} | {machine:.3} | {proxy} | {foreign:.2} (max) |");
    }
    println!(
        "\nCPU s/GB: CPU time of the transfer per GB received: iperf3 client and server, the \
         proxy (and the nft runs it waited for), kernel threads, hard and soft interrupts \
         (/proc/stat), which is where the kernel forwards and NATs. Machine busy: busy time of \
         every CPU less that of other processes (last column, the most in any round), the same \
         figure on an idle machine. Proxy process: utime + stime of smartproxy and its \
         children per GB. A transfer waits up to BENCH_WAIT_IDLE (20 s) for an idle machine \
         and is taken again (3 times at most) while other processes used more than 2 % of a \
         CPU during it."
    );
}
