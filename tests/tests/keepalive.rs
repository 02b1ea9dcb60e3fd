//! Long-lived connections through the binary (issue 20): TCP keepalive probes notice a peer
//! that vanished (a network namespace whose packets the test drops with nftables) on the
//! backend side and on the client side, and the metrics say `keepalive`; `randomize_timeouts`
//! spreads the closes of 1,000 connections opened together; `validate` prints the timeouts
//! each route gets.
//!
//! ```text
//!  namespace A (the proxy, near peers)              namespace B (the far peers)
//!  lo 127.0.0.1: routes 7000-7002, admin 9900
//!  veth-a 10.203.0.1/24  <------------------------>  veth-b 10.203.0.2/24
//! ```
//!
//! Both namespaces are made by the test (`ip netns`, root), so fixed ports cannot collide
//! and no packet leaves them.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Once};

use parking_lot::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use smartproxy_tests::*;

// The network namespaces of the nftables tests (crates/nftables/tests/support).
#[path = "../../crates/nftables/tests/support/mod.rs"]
mod support;
use support::{Netns, run};

// ----------------------------------------------------------------------------------------
// Network namespaces

/// `ip netns exec NAME CMD`: `cmd` run inside the namespace.
fn command_in(ns: &Netns, cmd: &std::path::Path) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns.name()]).arg(cmd);
    c
}

/// Loads an nftables ruleset in the namespace.
fn load_ruleset(ns: &Netns, ruleset: &str) {
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns.name(), "nft", "-f", "-"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run nft (apt-get install nftables)");
    child.stdin.take().unwrap().write_all(ruleset.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "nft: {}", String::from_utf8_lossy(&out.stderr));
}

const A_ADDR: &str = "10.203.0.1";
const B_ADDR: &str = "10.203.0.2";

/// Namespaces A and B joined by a veth pair (made inside them: the host's namespace is not
/// touched). Namespaces of killed earlier runs are deleted first.
fn pair() -> (Netns, Netns) {
    static ORPHANS: Once = Once::new();
    static SEQ: AtomicUsize = AtomicUsize::new(0);
    require("ip", "iproute2");
    require("nft", "nftables");
    ORPHANS.call_once(|| {
        for line in run("ip", &["netns", "list"]).unwrap_or_default().lines() {
            let name = line.split_whitespace().next().unwrap_or("");
            let Some(pid) = name.strip_prefix("spka-").and_then(|r| r.split('-').next()) else {
                continue;
            };
            if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
                let _ = run("ip", &["netns", "del", name]);
            }
        }
    });
    let id = format!("spka-{}-{}", std::process::id(), SEQ.fetch_add(1, Ordering::Relaxed));
    let a = Netns::create(format!("{id}-a"));
    let b = Netns::create(format!("{id}-b"));
    a.ip(&["link", "add", "veth-a", "type", "veth", "peer", "name", "veth-b", "netns", b.name()]);
    a.ip(&["addr", "add", &format!("{A_ADDR}/24"), "dev", "veth-a"]);
    b.ip(&["addr", "add", &format!("{B_ADDR}/24"), "dev", "veth-b"]);
    a.ip(&["link", "set", "veth-a", "up"]);
    b.ip(&["link", "set", "veth-b", "up"]);
    (a, b)
}

// ----------------------------------------------------------------------------------------
// Peers

/// The binary running inside a namespace, killed on drop.
struct NsProxy {
    child: Child,
    output: Arc<Mutex<String>>,
    _dir: TempDir,
}

impl NsProxy {
    fn start(ns: &Netns, config: &str, ports: &[u16]) -> NsProxy {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("smartproxy.toml");
        std::fs::write(&path, config).unwrap();
        let mut child = command_in(ns, &smartproxy_bin())
            .arg("run")
            .arg("-c")
            .arg(&path)
            .env("RUST_LOG", "info,smartproxy_engine=debug")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn smartproxy in the namespace");
        let output = Arc::new(Mutex::new(String::new()));
        let streams: [Box<dyn Read + Send>; 2] =
            [Box::new(child.stdout.take().unwrap()), Box::new(child.stderr.take().unwrap())];
        for mut s in streams {
            let output = Arc::clone(&output);
            thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    output.lock().push_str(&String::from_utf8_lossy(&buf[..n]));
                }
            });
        }
        let p = NsProxy { child, output, _dir: dir };
        for port in ports {
            let needle = format!(":{port}\n");
            wait_until(&format!("smartproxy listening on {port}"), || p.output().contains(&needle));
        }
        p
    }

    fn output(&self) -> String {
        self.output.lock().clone()
    }
}

impl Drop for NsProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if thread::panicking() {
            eprintln!("---- smartproxy output ----\n{}", self.output());
        }
    }
}

/// An echo server on `ip:0` inside `ns`; records the instant each connection ended (EOF or an
/// error from the proxy's side), in accept order.
struct Echo {
    addr: SocketAddr,
    ended: Arc<Mutex<Vec<Option<Instant>>>>,
}

fn echo_in(ns: &Netns, ip: &str) -> Echo {
    let bind = format!("{ip}:0");
    let listener = ns.enter(move || TcpListener::bind(bind).expect("bind the echo server"));
    let addr = listener.local_addr().unwrap();
    let ended = Arc::new(Mutex::new(Vec::new()));
    let ended2 = Arc::clone(&ended);
    thread::spawn(move || {
        for s in listener.incoming() {
            let Ok(mut s) = s else { break };
            let idx = {
                let mut e = ended2.lock();
                e.push(None);
                e.len() - 1
            };
            let ended = Arc::clone(&ended2);
            thread::spawn(move || {
                let mut buf = [0u8; 1024];
                loop {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if s.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                    }
                }
                ended.lock()[idx] = Some(Instant::now());
                let _ = s.shutdown(Shutdown::Both);
            });
        }
    });
    Echo { addr, ended }
}

/// Connects from inside `ns`, then one echoed round trip; returns the stream and the instant
/// the echo came back (the connection's last activity).
fn client_in(ns: &Netns, to: SocketAddr) -> (TcpStream, Instant) {
    let mut s = ns.enter(move || TcpStream::connect_timeout(&to, WAIT).expect("connect"));
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.write_all(b"ping").unwrap();
    let mut b = [0u8; 4];
    s.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"ping");
    (s, Instant::now())
}

/// `GET path` on the admin API inside `ns`: the body.
fn admin_get(ns: &Netns, path: &str) -> String {
    let req = format!("GET {path} HTTP/1.0\r\nHost: a\r\n\r\n");
    let mut s = ns.enter(|| TcpStream::connect("127.0.0.1:9900").expect("admin"));
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.write_all(req.as_bytes()).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default()
}

fn closed_total(metrics: &str, reason: &str) -> Option<u64> {
    let needle = format!("smartproxy_connections_closed_total{{reason=\"{reason}\"}} ");
    metrics.lines().find_map(|l| l.strip_prefix(&needle)?.trim().parse().ok())
}

// ----------------------------------------------------------------------------------------
// Tests

/// idle 2 s, interval 1 s, count 2: a silent peer is declared dead 4 s after its last packet.
const DETECT: Duration = Duration::from_secs(4);
/// How late the close may come after `DETECT` (the kernel's timers, then the proxy's close).
const DETECT_MARGIN: Duration = Duration::from_millis(1500);

#[test]
fn keepalive_probes_close_connections_to_a_vanished_peer_on_either_side() {
    let (a, b) = pair();
    let far_backend = echo_in(&b, B_ADDR);
    let near_backend = echo_in(&a, "127.0.0.1");
    let config = format!(
        r#"bind = ["0.0.0.0"]
[defaults]
inactivity_timeout = "1h"
tcp_keepalive = {{ idle = "2s", interval = "1s", count = 2 }}
[admin]
listen = "127.0.0.1:9900"
[[routes]]
name = "to-far-backend"
match = {{ ports = [7000] }}
action = {{ type = "forward", targets = [{{ host = "{B_ADDR}", port = {fb} }}] }}
[[routes]]
name = "from-far-client"
match = {{ ports = [7001] }}
action = {{ type = "forward", targets = [{{ host = "127.0.0.1", port = {nb} }}] }}
[[routes]]
name = "no-probes"
match = {{ ports = [7002] }}
action = {{ type = "forward", targets = [{{ host = "{B_ADDR}", port = {fb} }}] }}
timeouts = {{ tcp_keepalive = false }}
"#,
        fb = far_backend.addr.port(),
        nb = near_backend.addr.port(),
    );
    let proxy = NsProxy::start(&a, &config, &[7000, 7001, 7002]);

    // (1) near client -> proxy -> far backend; (2) far client -> proxy -> near backend;
    // (3) as (1) on a route without probes.
    let local = |port| SocketAddr::from(([127, 0, 0, 1], port));
    let (mut c1, t1) = client_in(&a, local(7000));
    let (_c2, t2) = client_in(&b, format!("{A_ADDR}:7001").parse().unwrap());
    let (mut c3, _) = client_in(&a, local(7002));
    // Namespace B vanishes: every packet in or out is dropped, nothing is answered or reset.
    load_ruleset(
        &b,
        "table inet vanish {
           chain in { type filter hook input priority 0; policy drop; }
           chain out { type filter hook output priority 0; policy drop; }
         }",
    );
    let dropped = Instant::now();
    assert!(dropped - t1.min(t2) < Duration::from_secs(2), "the drop came after the idle time");

    // (1): the proxy's backend socket times out; it closes the client.
    let mut buf = [0u8; 16];
    let r = c1.read(&mut buf);
    let after1 = t1.elapsed();
    assert!(matches!(r, Ok(0) | Err(_)), "{r:?}");
    // (2): the proxy's client socket times out; it closes the backend.
    wait_until("the near backend sees its connection end", || {
        near_backend.ended.lock().first().copied().flatten().is_some()
    });
    let ended2 = near_backend.ended.lock()[0].unwrap();
    let after2 = ended2 - t2;
    eprintln!("closed after the last packet: backend side {after1:?}, client side {after2:?}");
    for (side, after) in [("backend", after1), ("client", after2)] {
        assert!(
            after + Duration::from_millis(100) >= DETECT && after <= DETECT + DETECT_MARGIN,
            "{side} side: closed {after:?} after the last packet, expected idle + interval * \
             count = {DETECT:?} (+ {DETECT_MARGIN:?})"
        );
    }
    // (3): no probes, no notice: still open.
    c3.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
    let r = c3.read(&mut buf);
    assert!(
        matches!(&r, Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut)),
        "the route without probes must not notice: {r:?}"
    );

    // Both closes are counted as `keepalive`, in the Prometheus text and the JSON snapshot.
    let mut metrics = String::new();
    wait_until("two keepalive closes in /metrics", || {
        metrics = admin_get(&a, "/metrics");
        closed_total(&metrics, "keepalive") == Some(2)
    });
    assert_eq!(closed_total(&metrics, "peer"), Some(0), "{metrics}");
    assert_eq!(closed_total(&metrics, "inactivity"), Some(0), "{metrics}");
    let json: serde_json::Value = serde_json::from_str(&admin_get(&a, "/metrics/json")).unwrap();
    assert_eq!(json["closed"]["keepalive"], 2, "{json}");
    // The close log line says why.
    assert!(
        proxy.output().contains("close=\"keepalive\"")
            || proxy.output().contains("close=keepalive")
    );
    drop(proxy);
}

/// 1,000 connections opened together on a route with `randomize_timeouts`, and 200 on one
/// without: the first close over more than a second, the second within a fraction of one.
#[test]
fn randomized_inactivity_spreads_the_closes_of_connections_opened_together() {
    const N: usize = 1000;
    const CONTROL: usize = 200;
    const INACTIVITY: f64 = 12.0;
    let [jitter, fixed] = reserve_ports::<2>();
    let config = format!(
        r#"bind = ["127.0.0.1"]
[defaults]
inactivity_timeout = "12s"
max_connections_per_ip = 0
[[routes]]
name = "jitter"
match = {{ ports = [{jitter}] }}
action = {{ type = "socket-handler", handler = "echo" }}
timeouts = {{ randomize = true }}
[[routes]]
name = "fixed"
match = {{ ports = [{fixed}] }}
action = {{ type = "socket-handler", handler = "echo" }}
"#
    );
    let proxy = Proxy::start(&config, &[jitter, fixed]);
    let start = Instant::now();
    // Every connection gets its own thread (small stack): blocking reads, the close instant
    // taken as the read returns.
    let spawn_group = |port: u16, n: usize| -> Vec<thread::JoinHandle<(Instant, Instant)>> {
        (0..n)
            .map(|_| {
                thread::Builder::new()
                    .stack_size(64 * 1024)
                    .spawn(move || {
                        let mut s = connect(port);
                        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
                        s.write_all(b"x").unwrap();
                        let mut b = [0u8; 1];
                        s.read_exact(&mut b).unwrap();
                        let last = Instant::now();
                        let r = s.read(&mut b);
                        assert!(matches!(r, Ok(0) | Err(_)), "{r:?}");
                        (last, Instant::now())
                    })
                    .unwrap()
            })
            .collect()
    };
    let jittered = spawn_group(jitter, N);
    let control = spawn_group(fixed, CONTROL);
    let collect = |hs: Vec<thread::JoinHandle<(Instant, Instant)>>| -> Vec<(f64, f64)> {
        hs.into_iter()
            .map(|h| {
                let (last, closed) = h.join().expect("a client thread");
                ((closed - start).as_secs_f64(), (closed - last).as_secs_f64())
            })
            .collect()
    };
    let (jittered, control) = (collect(jittered), collect(control));
    let opened = jittered.iter().map(|(c, idle)| c - idle).fold(0f64, f64::max);
    let spread = |v: &[(f64, f64)]| {
        let lo = v.iter().map(|x| x.0).fold(f64::MAX, f64::min);
        let hi = v.iter().map(|x| x.0).fold(0f64, f64::max);
        (lo, hi)
    };
    let (jlo, jhi) = spread(&jittered);
    let (clo, chi) = spread(&control);
    // Closes per 250 ms after the first one, for the record.
    let mut hist = vec![0usize; ((jhi - jlo) / 0.25) as usize + 1];
    for (c, _) in &jittered {
        hist[((c - jlo) / 0.25) as usize] += 1;
    }
    eprintln!(
        "opened within {opened:.2} s; randomized: closes from {jlo:.2} s to {jhi:.2} s (spread \
         {:.2} s), per 250 ms: {hist:?}; fixed: {clo:.2} s to {chi:.2} s (spread {:.2} s)",
        jhi - jlo,
        chi - clo
    );
    assert!(opened < 5.0, "opening took {opened:.2} s");
    // Each close: the jittered timeout (±5 %), plus at most one inactivity check (a quarter of
    // it) and scheduling.
    for (_, idle) in &jittered {
        assert!(
            (INACTIVITY * 0.95 - 0.05..=INACTIVITY * 1.05 * 1.25 + 1.0).contains(idle),
            "a randomized close {idle:.2} s after the last byte"
        );
    }
    assert!(
        jhi - jlo >= 1.2,
        "1,000 randomized closes within {:.2} s: not spread over more than a second",
        jhi - jlo
    );
    // The busiest second holds well under all of them.
    let busiest = (0..hist.len()).map(|i| hist[i..(i + 4).min(hist.len())].iter().sum::<usize>());
    let busiest = busiest.max().unwrap_or(0);
    assert!(busiest < N * 9 / 10, "{busiest} of {N} closes within one second");
    assert!(
        chi - clo < opened + 1.0,
        "without randomize the closes should follow the opens: spread {:.2} s",
        chi - clo
    );
    drop(proxy);
}

#[test]
fn validate_prints_the_effective_timeouts_of_each_route() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("ka.toml");
    std::fs::write(
        &file,
        r#"[defaults]
keepalive_treatment = "standard"
keepalive_inactivity_multiplier = 6
tcp_keepalive = { idle = "60s", interval = "10s", count = 6 }
randomize_timeouts = false
[[routes]]
name = "db"
match = { ports = [5432] }
action = { type = "forward", targets = [{ host = "10.0.0.5", port = 5432 }] }
timeouts = { inactivity = "8h", max_lifetime = "7d", connect = "3s", keepalive_treatment = "immortal" }
[[routes]]
name = "events"
match = { ports = [8080] }
action = { type = "forward", targets = [{ host = "127.0.0.1", port = 9000 }], connect_timeout = "5s" }
timeouts = { keepalive_treatment = "extended", tcp_keepalive = false, randomize = true }
[[routes]]
name = "web"
match = { ports = [8081] }
action = { type = "socket-handler", handler = "echo" }
[[routes]]
name = "api"
match = { ports = [8082] }
action = { type = "forward", targets = [{ host = "127.0.0.1", port = 9001 }], http = { upstream = "http1" } }
timeouts = { http_keepalive = "2m", keepalive_treatment = "extended", keepalive_inactivity_multiplier = 2 }
"#,
    )
    .unwrap();
    let out = Command::new(smartproxy_bin()).args(["validate", "-c"]).arg(&file).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(
        stdout,
        "route   treatment  inactivity  max_lifetime  connect  initial_data  http_keepalive  tcp_keepalive  randomize\n\
         db      immortal   off         7d            3s       1m            -               1m+10s*6       no\n\
         events  extended   1d          7d            5s       1m            -               off            ±5%\n\
         web     standard   4h          1d            10s      1m            -               1m+10s*6       no\n\
         api     extended   8h          7d            10s      1m            4m              1m+10s*6       no\n\
         OK\n"
    );
    // A bad value names its key and line.
    std::fs::write(
        &file,
        "[defaults]\ntcp_keepalive = { idle = \"500ms\" }\n[[routes]]\nmatch = { ports = [1] }\naction = { type = \"socket-handler\", handler = \"echo\" }\ntimeouts = { keepalive_treatment = \"forever\" }\n",
    )
    .unwrap();
    let out = Command::new(smartproxy_bin()).args(["validate", "-c"]).arg(&file).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(
            ":2: defaults.tcp_keepalive.idle: `500ms`: TCP keepalive times are whole seconds"
        ),
        "{stderr}"
    );
    assert!(
        stderr.contains(":6: routes[0].timeouts.keepalive_treatment: unknown variant `forever`"),
        "{stderr}"
    );
}

// ----------------------------------------------------------------------------------------
// HTTP routes: keep-alive idle time and WebSocket tunnels under the treatments

/// An HTTP/1.1 keep-alive backend answering every request with `ok`; WebSocket upgrades are
/// accepted (tungstenite) and echoed. Returns its port.
fn http_backend() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    thread::spawn(move || {
        for s in l.incoming().flatten() {
            thread::spawn(move || {
                let mut peek = [0u8; 2048];
                let n = s.peek(&mut peek).unwrap_or(0);
                if peek[..n].windows(7).any(|w| w.eq_ignore_ascii_case(b"upgrade")) {
                    let Ok(mut ws) = tungstenite::accept(s) else { return };
                    while let Ok(m) = ws.read() {
                        if m.is_close() || ws.send(m).is_err() {
                            return;
                        }
                    }
                    return;
                }
                let mut s = s;
                let mut buf = Vec::new();
                let mut chunk = [0u8; 1024];
                loop {
                    match s.read(&mut chunk) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        buf.drain(..end + 4);
                        let resp = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
                        if s.write_all(resp.as_bytes()).is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    port
}

/// One request on `s` (keep-alive); returns when the whole answer arrived.
fn get_ok(s: &mut TcpStream) {
    s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
    let mut got = Vec::new();
    let mut b = [0u8; 512];
    while !got.ends_with(b"\r\n\r\nok") {
        let n = s.read(&mut b).expect("the answer");
        assert!(n > 0, "closed before the answer: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&b[..n]);
    }
}

/// Waits (at most `limit`) for the proxy to close `s`; `None` if it is still open then.
fn closed_within(s: &mut TcpStream, limit: Duration) -> Option<Instant> {
    s.set_read_timeout(Some(limit)).unwrap();
    let mut b = [0u8; 64];
    match s.read(&mut b) {
        Ok(0) => Some(Instant::now()),
        Ok(n) => panic!("{n} unexpected bytes"),
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            None
        }
        Err(_) => Some(Instant::now()),
    }
}

#[test]
fn http_keepalive_idle_time_follows_the_treatment() {
    let backend = http_backend();
    let [std_port, ext_port, imm_port, admin] = reserve_ports::<4>();
    let route = |name: &str, port: u16, timeouts: &str| {
        format!(
            "[[routes]]\nname = \"{name}\"\nmatch = {{ ports = [{port}] }}\n\
             action = {{ type = \"forward\", targets = [{{ host = \"127.0.0.1\", port = {backend} }}], http = {{}} }}\n\
             timeouts = {{ {timeouts} }}\n"
        )
    };
    let config = format!(
        "bind = [\"127.0.0.1\"]\n[defaults]\nhttp_keepalive_timeout = \"400ms\"\nrequest_header_timeout = \"300ms\"\n[admin]\nlisten = \"127.0.0.1:{admin}\"\n{}{}{}",
        route("standard", std_port, "keepalive_treatment = \"standard\""),
        route(
            "extended",
            ext_port,
            "keepalive_treatment = \"extended\", keepalive_inactivity_multiplier = 3"
        ),
        route("immortal", imm_port, "keepalive_treatment = \"immortal\""),
    );
    let proxy = Proxy::start(&config, &[std_port, ext_port, imm_port]);
    let mut conns: Vec<(&str, TcpStream, Instant)> =
        [("standard", std_port), ("extended", ext_port), ("immortal", imm_port)]
            .into_iter()
            .map(|(name, port)| {
                let mut s = connect(port);
                get_ok(&mut s);
                get_ok(&mut s); // kept alive
                (name, s, Instant::now())
            })
            .collect();
    let margin = Duration::from_millis(900);
    let waits: Vec<_> = conns
        .drain(..)
        .map(|(name, mut s, last)| {
            thread::spawn(move || {
                let at = closed_within(&mut s, Duration::from_millis(2500));
                (name, at.map(|t| t - last), s)
            })
        })
        .collect();
    let mut immortal = None;
    for w in waits {
        let (name, after, s) = w.join().unwrap();
        eprintln!("{name}: closed after {after:?}");
        match name {
            "standard" => {
                let a = after.expect("standard: closed at the keep-alive timeout");
                assert!(
                    a + Duration::from_millis(30) >= Duration::from_millis(400)
                        && a <= Duration::from_millis(400) + margin,
                    "standard: {a:?}"
                );
            }
            "extended" => {
                let a = after.expect("extended: closed at 3 x the keep-alive timeout");
                assert!(
                    a + Duration::from_millis(30) >= Duration::from_millis(1200)
                        && a <= Duration::from_millis(1200) + margin,
                    "extended: {a:?}"
                );
            }
            _ => {
                assert!(after.is_none(), "immortal: closed after {after:?}");
                immortal = Some(s);
            }
        }
    }
    // The immortal connection still serves requests, 2.5 s (six keep-alive timeouts) later.
    let mut s = immortal.unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    get_ok(&mut s);
    let mut metrics = String::new();
    wait_until("two inactivity closes in /metrics", || {
        metrics = get(admin, "/metrics").body;
        closed_total(&metrics, "inactivity") == Some(2)
    });
    drop(s);
    wait_until("the immortal connection counted as closed by its peer", || {
        closed_total(&get(admin, "/metrics").body, "peer") == Some(1)
    });
    drop(proxy);
}

#[test]
fn websocket_tunnels_follow_the_route_treatment() {
    let backend = http_backend();
    let [std_port, imm_port] = reserve_ports::<2>();
    let route = |name: &str, port: u16, timeouts: &str| {
        format!(
            "[[routes]]\nname = \"{name}\"\nmatch = {{ ports = [{port}] }}\n\
             action = {{ type = \"forward\", targets = [{{ host = \"127.0.0.1\", port = {backend} }}], http = {{}} }}\n\
             timeouts = {{ {timeouts} }}\n"
        )
    };
    let config = format!(
        "bind = [\"127.0.0.1\"]\n[defaults]\ninactivity_timeout = \"600ms\"\n{}{}",
        route("ws-standard", std_port, "keepalive_treatment = \"standard\""),
        route("ws-immortal", imm_port, "keepalive_treatment = \"immortal\""),
    );
    let _proxy = Proxy::start(&config, &[std_port, imm_port]);
    let open = |port: u16| {
        let (mut ws, resp) = tungstenite::connect(format!("ws://127.0.0.1:{port}/chat"))
            .expect("WebSocket handshake");
        assert_eq!(resp.status().as_u16(), 101);
        ws.send(tungstenite::Message::text("hi")).unwrap();
        assert_eq!(ws.read().unwrap().into_text().unwrap().as_str(), "hi");
        (ws, Instant::now())
    };
    let (mut std_ws, std_last) = open(std_port);
    let (mut imm_ws, _) = open(imm_port);
    // Standard: the tunnel closes after 600 ms without a frame.
    if let tungstenite::stream::MaybeTlsStream::Plain(s) = std_ws.get_mut() {
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    }
    let r = std_ws.read();
    let after = std_last.elapsed();
    assert!(r.is_err(), "the standard tunnel must close when idle: {r:?}");
    assert!(
        after + Duration::from_millis(30) >= Duration::from_millis(600)
            && after <= Duration::from_millis(600) + Duration::from_millis(1200),
        "standard tunnel closed {after:?} after its last frame"
    );
    // Immortal: still open 2 s (over three inactivity timeouts) later, frames still pass.
    if let tungstenite::stream::MaybeTlsStream::Plain(s) = imm_ws.get_mut() {
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    }
    match imm_ws.read() {
        Err(tungstenite::Error::Io(e))
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) => {}
        other => panic!("the immortal tunnel must stay open: {other:?}"),
    }
    imm_ws.send(tungstenite::Message::text("still here")).unwrap();
    assert_eq!(imm_ws.read().unwrap().into_text().unwrap().as_str(), "still here");
}
