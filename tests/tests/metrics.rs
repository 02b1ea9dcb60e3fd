//! Metrics end to end through the binary: rates and totals against what the test sent, the
//! admin API, and real consumers (a Prometheus server scraping, promtool, the statsd daemon).

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;
use smartproxy_tests::*;

fn routes(backend: u16, ports: &[(&str, u16)]) -> String {
    ports
        .iter()
        .map(|(name, port)| {
            format!(
                "[[routes]]\nname = \"{name}\"\nmatch = {{ ports = [{port}] }}\naction = {{ type = \"forward\", targets = [{{ host = \"127.0.0.1\", port = {backend} }}] }}\n"
            )
        })
        .collect()
}

fn json(admin: u16) -> Value {
    metrics_json(admin)
}

fn window(rates: &Value, seconds: u64) -> (f64, f64) {
    let w = rates
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["window_seconds"] == seconds)
        .unwrap_or_else(|| panic!("no {seconds} s window in {rates}"));
    (w["in"].as_f64().unwrap(), w["out"].as_f64().unwrap())
}

fn route<'a>(snap: &'a Value, name: &str) -> &'a Value {
    snap["routes"].as_array().unwrap().iter().find(|r| r["name"] == name).unwrap()
}

/// Sends `rate` bytes/s for `secs` seconds, paced every 10 ms on an absolute schedule, and
/// drains the echo. Returns the bytes sent (all of them come back).
fn steady(port: u16, rate: u64, secs: f64, sent: Arc<AtomicU64>) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        let mut s = connect(port);
        let mut r = s.try_clone().unwrap();
        let reader = thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            let mut got = 0u64;
            while let Ok(n) = r.read(&mut buf) {
                if n == 0 {
                    break;
                }
                got += n as u64;
            }
            got
        });
        let chunk = vec![b'x'; (rate / 100) as usize];
        let start = Instant::now();
        let slices = (secs * 100.0) as u32;
        for k in 0..slices {
            let at = start + Duration::from_millis(10 * u64::from(k));
            if let Some(d) = at.checked_duration_since(Instant::now()) {
                thread::sleep(d);
            }
            s.write_all(&chunk).unwrap();
            sent.fetch_add(chunk.len() as u64, Ordering::Relaxed);
        }
        s.shutdown(std::net::Shutdown::Write).unwrap();
        let got = reader.join().unwrap();
        assert_eq!(got, sent.load(Ordering::Relaxed), "the echo came back whole");
    })
}

/// Three steady rates on three routes for 63 s: the 10 s and 60 s rates per route, the global
/// rates and the byte totals are within 1 % of what the test sent.
#[test]
fn rates_and_totals_match_what_was_sent_within_one_percent() {
    let backend = Backend::echo();
    let (_proxy, [admin, a, b, c]) = Proxy::start_on(|[admin, a, b, c]| {
        format!(
            "bind = [\"127.0.0.1\"]\n[admin]\nlisten = \"127.0.0.1:{admin}\"\n{}",
            routes(backend.port(), &[("slow", a), ("medium", b), ("fast", c)])
        )
    });
    let plan = [("slow", a, 20_000u64), ("medium", b, 100_000), ("fast", c, 500_000)];
    let counters: Vec<Arc<AtomicU64>> = plan.iter().map(|_| Arc::new(AtomicU64::new(0))).collect();
    let started = Instant::now();
    let senders: Vec<_> = plan
        .iter()
        .zip(&counters)
        .map(|((_, port, rate), sent)| steady(*port, *rate, 66.0, sent.clone()))
        .collect();

    // Read while the traffic is steady and the 60 s window lies entirely inside it: the
    // measurement takes this long (not a wait for an event).
    thread::sleep(Duration::from_secs(63).saturating_sub(started.elapsed()));
    let snap = json(admin);
    let close = |what: &str, got: f64, want: f64| {
        assert!((got - want).abs() <= want * 0.01, "{what}: {got} B/s, sent {want} B/s");
    };
    let mut sum = 0.0;
    for (name, _, rate) in plan {
        let r = route(&snap, name);
        for w in [10, 60] {
            let (i, o) = window(&r["throughput"], w);
            close(&format!("{name} in over {w} s"), i, rate as f64);
            close(&format!("{name} out over {w} s"), o, rate as f64);
        }
        sum += rate as f64;
    }
    for w in [10, 60] {
        let (i, o) = window(&snap["throughput"]["windows"], w);
        close(&format!("global in over {w} s"), i, sum);
        close(&format!("global out over {w} s"), o, sum);
    }
    assert_eq!(snap["connections"]["active"], 3);

    for s in senders {
        s.join().unwrap();
    }
    let sent: u64 = counters.iter().map(|c| c.load(Ordering::Relaxed)).sum();
    // Totals are exact once the last sample after the close has been taken.
    wait_until("totals sampled", || {
        let t = &json(admin)["totals"];
        t["bytes_in"] == sent && t["bytes_out"] == sent
    });
    let snap = json(admin);
    assert_eq!(snap["connections"]["active"], 0, "every connection closed in the metrics");
    for ((name, _, _), c) in plan.iter().zip(&counters) {
        assert_eq!(route(&snap, name)["bytes_in"], c.load(Ordering::Relaxed), "{name}");
    }
}

#[test]
fn admin_api_endpoints_through_the_binary() {
    let backend = Backend::echo();
    let cfg = |admin: u16, a: u16| {
        format!(
            "bind = [\"127.0.0.1\"]\n[defaults]\nshutdown_grace = \"10s\"\n[admin]\nlisten = \"127.0.0.1:{admin}\"\n{}",
            routes(backend.port(), &[("a", a)])
        )
    };
    let (mut proxy, [admin, a]) = Proxy::start_on(|[admin, a]| cfg(admin, a));
    let cfg = cfg(admin, a);
    // Listened on after a reload.
    let b = reserve_port();
    let mut s = connect(a);
    assert_eq!(echo_roundtrip(&mut s, b"hello").unwrap(), b"hello");

    let h = get(admin, "/healthz");
    assert_eq!((h.status, h.body.trim()), (200, "ok"));
    assert_eq!(get(admin, "/ready").status, 200);
    let prom = get(admin, "/metrics");
    assert_eq!(prom.status, 200);
    assert!(prom.header("content-type").unwrap().starts_with("text/plain"));
    assert!(prom.body.contains("smartproxy_connections_active 1"), "{}", prom.body);
    assert!(prom.body.contains("route=\"a\""));
    let om = http(
        admin,
        "GET",
        "/metrics",
        &[("Accept", "application/openmetrics-text; version=1.0.0")],
    );
    assert!(om.header("content-type").unwrap().starts_with("application/openmetrics-text"));
    assert!(om.body.ends_with("# EOF\n"));
    let hist = get(admin, "/api/throughput/history?seconds=5");
    assert_eq!(hist.status, 200);
    assert!(
        serde_json::from_str::<Value>(&hist.body).unwrap().is_array()
            || hist.body.contains("history")
    );

    // Mutations are POST only.
    assert_eq!(get(admin, "/reload").status, 405);
    // POST /reload applies the file: a new port answers.
    std::fs::write(&proxy.config_path, format!("{cfg}{}", routes(backend.port(), &[("b", b)])))
        .unwrap();
    let r = http(admin, "POST", "/reload", &[]);
    assert_eq!(r.status, 200, "{}", r.body);
    let mut n = connect(b);
    assert_eq!(echo_roundtrip(&mut n, b"new").unwrap(), b"new");
    // A bad file is refused with its errors, and counted.
    std::fs::write(&proxy.config_path, cfg.replace("ports = [", "ports = [0, ")).unwrap();
    let r = http(admin, "POST", "/reload", &[]);
    assert!(r.status >= 400, "{}", r.body);
    assert!(r.body.contains("routes[0].match.ports"), "{}", r.body);
    let snap = json(admin);
    assert_eq!(snap["reloads"]["ok"], 1);
    assert_eq!(snap["reloads"]["failed"], 1);

    // Draining: /ready answers 503 while the open connection holds the shutdown.
    proxy.signal("TERM");
    wait_until("ready turns 503", || get(admin, "/ready").status == 503);
    assert_eq!(
        echo_roundtrip(&mut s, b"still served while draining").unwrap(),
        b"still served while draining"
    );
    drop(s);
    drop(n);
    // Drained: nothing was left to force closed.
    proxy.wait_for_event("stopped", &[("forced", "0")]);
}

#[test]
fn refusals_and_proxy_headers_are_counted() {
    let backend = Backend::echo();
    let (_proxy, [admin, a]) = Proxy::start_on(|[admin, a]| {
        format!(
            "bind = [\"127.0.0.1\"]\nproxy_ips = [\"127.0.0.1\"]\n[admin]\nlisten = \"127.0.0.1:{admin}\"\n{}",
            routes(backend.port(), &[("a", a)])
        )
    });
    for header in [
        &b"PROXY TCP4 192.0.2.1 127.0.0.1 1000 80\r\n"[..],
        b"PROXY TCP4 192.0.2.1 127.0.0.1 01 80\r\n",
        b"hello\r\n",
    ] {
        let mut s = connect(a);
        s.write_all(header).unwrap();
        s.shutdown(std::net::Shutdown::Write).unwrap();
        let _ = read_to_end(&mut s);
    }
    wait_until("counted", || {
        let s = json(admin);
        s["proxy_headers"]["accepted"]["v1"] == 1
            && s["proxy_headers"]["rejected"].as_array().is_some_and(|r| r.len() == 2)
    });
    let s = json(admin);
    assert_eq!(s["refused"]["proxy_header_invalid"], 1, "{}", s["refused"]);
    assert_eq!(s["refused"]["proxy_header_required"], 1, "{}", s["refused"]);
}

#[test]
fn promtool_accepts_the_output_and_prometheus_scrapes_it() {
    let promtool = require("promtool", "prometheus");
    let prometheus = require("prometheus", "prometheus");
    let backend = Backend::echo();
    let (_proxy, [admin, a]) = Proxy::start_on(|[admin, a]| {
        format!(
            "bind = [\"127.0.0.1\"]\n[admin]\nlisten = \"127.0.0.1:{admin}\"\n{}",
            routes(backend.port(), &[("scraped", a)])
        )
    });
    let mut s = connect(a);
    let payload = vec![7u8; 123_456];
    s.write_all(&payload).unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    assert_eq!(read_to_end(&mut s).0.len(), payload.len());
    wait_until("sampled", || json(admin)["totals"]["bytes_in"] == 123_456);

    // promtool lints the Prometheus text format (it does not parse OpenMetrics: the real
    // Prometheus server below negotiates and scrapes that).
    {
        let body = http(admin, "GET", "/metrics", &[("Accept", "text/plain")]).body;
        let mut child = Command::new(&promtool)
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(body.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "promtool check metrics: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // A real Prometheus server scraping every second.
    let (prom, [prom_port]) = Server::start("prometheus", &[], |[prom_port], dir| {
        let prom_cfg = dir.join("prometheus.yml");
        std::fs::write(
            &prom_cfg,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: smartproxy\n    static_configs:\n      - targets: ['127.0.0.1:{admin}']\n"
            ),
        )
        .unwrap();
        let mut cmd = Command::new(&prometheus);
        cmd.arg(format!("--config.file={}", prom_cfg.display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{prom_port}"))
            .stdout(Stdio::null());
        cmd
    });
    let query = "/api/v1/query?query=smartproxy_bytes_total%7Bdirection%3D%22in%22%7D";
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last;
    // Bounded poll (the first scrapes take a few seconds): fails with Prometheus's last answer.
    let found = loop {
        let r = get(prom_port, query);
        last = r.body.clone();
        if let Ok(v) = serde_json::from_str::<Value>(&r.body) {
            let value = &v["data"]["result"][0]["value"][1];
            if value == "123456" {
                break true;
            }
        }
        if Instant::now() > deadline {
            break false;
        }
        thread::sleep(Duration::from_millis(250));
    };
    drop(prom);
    assert!(found, "Prometheus never returned the byte counter; last answer: {last}");
}

#[test]
fn the_statsd_daemon_receives_the_pushed_lines_without_bad_ones() {
    let node = require("node", "nodejs");
    let stats_js = workspace_root().join("target/test-peers/node_modules/statsd/stats.js");
    assert!(stats_js.exists(), "{} is missing: run `cargo xtask deps`", stats_js.display());
    // The daemon on a UDP port (index 0) and its management TCP port.
    let (mut daemon, [udp, _mgmt]) = Server::start(
        "the statsd daemon",
        &[0],
        |[udp, mgmt], dir| {
            let statsd_cfg = dir.join("statsd.js");
            std::fs::write(
            &statsd_cfg,
            format!(
                "{{ port: {udp}, address: \"127.0.0.1\", mgmt_port: {mgmt}, mgmt_address: \"127.0.0.1\", flushInterval: 1000, backends: [\"./backends/console\"], console: {{ prettyprint: false }} }}\n"
            ),
        )
        .unwrap();
            let mut cmd = Command::new(&node);
            cmd.arg(&stats_js)
                .arg(&statsd_cfg)
                .current_dir(stats_js.parent().unwrap())
                .stdout(Stdio::piped());
            cmd
        },
    );
    let out = Arc::new(parking_lot::Mutex::new(String::new()));
    let out2 = out.clone();
    let stdout = daemon.child.stdout.take().unwrap();
    let reader = thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            out2.lock().push_str(&(line + "\n"));
        }
    });

    let backend = Backend::echo();
    let (_proxy, [_admin, a]) = Proxy::start_on(|[admin, a]| {
        format!(
            "bind = [\"127.0.0.1\"]\n[admin]\nlisten = \"127.0.0.1:{admin}\"\n[metrics]\nstatsd = {{ address = \"127.0.0.1:{udp}\", interval = \"1s\" }}\n{}",
            routes(backend.port(), &[("pushed", a)])
        )
    });
    let mut s = connect(a);
    assert_eq!(echo_roundtrip(&mut s, &[1u8; 5000]).unwrap(), vec![1u8; 5000]);
    drop(s);
    wait_until("statsd saw our counters", || {
        let o = out.lock();
        o.contains("'smartproxy.bytes_in': 5000") || o.contains("smartproxy.bytes_in': 5000")
    });
    // Two more flushes, printed whole (a flush's output ends where the next one's "Flushing
    // stats" line starts), then check that statsd never counted a bad line.
    let flushes = || out.lock().matches("Flushing stats at").count();
    let seen = flushes();
    wait_for("two more statsd flushes", flushes, |n| *n >= seen + 3);
    drop(daemon);
    let _ = reader.join();
    let o = out.lock().clone();
    let bad: Vec<&str> = o
        .lines()
        .filter(|l| l.contains("bad_lines_seen") && !l.contains("bad_lines_seen': 0"))
        .collect();
    assert!(bad.is_empty(), "statsd counted bad lines: {bad:?}\n{o}");
    assert!(o.contains("bad_lines_seen': 0"), "statsd's own counter is in its output:\n{o}");
    assert!(o.contains("smartproxy.connections_active"), "gauges arrive too:\n{o}");
}
