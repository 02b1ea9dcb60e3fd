//! The table's life: created, shown, removed; left by a killed process and cleaned up by the
//! next; removed on SIGTERM; and the errors for a missing `nft` or a missing capability.

mod support;

use std::io::{BufRead, BufReader, ErrorKind};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver};

use rustix::process::{Pid, Signal, kill_process};
use smartproxy_nftables::{Error, Manager, Nft, NftRoute, PortRange, Ruleset, Target};
use support::*;

fn db_route(target: &str) -> NftRoute {
    NftRoute::new("db", [PortRange::single(5432)], [Target::new(target, 6000)])
}

#[test]
fn applied_shown_and_removed() {
    let topo = Topology::new();
    let manager = topo.manager();
    assert!(!manager.cleanup_stale().expect("cleanup"), "no table at first");
    assert!(!manager.table_exists().expect("list"));
    let status = manager.status_json().expect("status");
    assert_eq!(status["present"], false);
    assert_eq!(status["routes"], serde_json::json!([]));

    let mut db = db_route(BACKEND);
    db.max_connections = Some(10);
    manager.apply(&Ruleset::build(&[db]).expect("valid")).expect("apply");
    assert!(manager.table_exists().expect("list"));

    let status = manager.status_json().expect("status");
    assert_eq!(status["table"], "smartproxy");
    assert_eq!(status["family"], "inet");
    assert_eq!(status["present"], true);
    let route = &status["routes"][0];
    assert_eq!(route["name"], "db");
    assert_eq!(route["targets"][0]["address"], BACKEND);
    assert_eq!(route["max_connections"], 10);
    assert_eq!(route["counters"]["connections"], 0);
    let items = status["nftables"].as_array().expect("nft listing");
    let chains: Vec<&str> = items.iter().filter_map(|i| i["chain"]["name"].as_str()).collect();
    for chain in ["prerouting", "output", "postrouting", "count_in", "count_out", "route-db"] {
        assert!(chains.contains(&chain), "{chain} in {chains:?}");
    }
    assert!(
        items.iter().any(|i| i["rule"]["chain"] == "route-db"
            && i["rule"]["expr"].to_string().contains(r#""ct count""#)),
        "the connection limit is in the kernel: {items:?}"
    );

    assert!(manager.remove().expect("remove"), "there was a table");
    assert!(!manager.table_exists().expect("list"));
    assert!(topo.proxy.nft_text(&["list", "ruleset"]).expect("ruleset").trim().is_empty());
    assert!(!manager.remove().expect("second remove"), "nothing left to remove");
    assert!(manager.counters().expect("nothing applied").is_empty());
}

fn names(status: &serde_json::Value, kind: &str) -> Vec<String> {
    let items = status["nftables"].as_array().expect("nft listing");
    let mut v: Vec<String> =
        items.iter().filter_map(|i| i[kind]["name"].as_str().map(str::to_owned)).collect();
    v.sort();
    v
}

#[test]
fn reloads_add_and_remove_routes_and_keep_counters() {
    let topo = Topology::new();
    let _one = TcpEcho::start(&topo.backend, sa(BACKEND, 6000));
    let _two = TcpEcho::start(&topo.backend, sa(BACKEND2, 6000));
    let manager = topo.manager();
    let web_two = NftRoute::new(
        "web",
        [PortRange::single(80)],
        [Target::new(BACKEND, 6000), Target::new(BACKEND2, 6000)],
    );
    manager.apply(&Ruleset::build(&[db_route(BACKEND), web_two]).expect("valid")).expect("apply");
    let c = open(&topo.client, None, sa(PROXY, 80));
    c.finish();
    let web_before = manager.counters().expect("counters")[1].clone();
    assert_eq!((web_before.route.as_str(), web_before.connections), ("web", 1));
    let first = manager.status_json().expect("status");
    assert!(names(&first, "chain").contains(&"target-web-1".to_owned()));

    let web_one = NftRoute::new("web", [PortRange::single(80)], [Target::new(BACKEND2, 6000)]);
    let mut dns = NftRoute::new("dns", [PortRange::single(53)], [Target::new(BACKEND, 5353)]);
    dns.protocol = smartproxy_nftables::Protocol::Udp;
    manager.apply(&Ruleset::build(&[web_one, dns]).expect("valid")).expect("reload");
    let status = manager.status_json().expect("status");
    assert_eq!(
        names(&status, "counter"),
        ["dns-conn", "dns-drop", "dns-in", "dns-out", "web-conn", "web-drop", "web-in", "web-out"]
    );
    assert_eq!(
        names(&status, "chain"),
        [
            "count-dns",
            "count-web",
            "count_in",
            "count_out",
            "masquerade",
            "output",
            "postrouting",
            "prerouting",
            "route-dns",
            "route-web"
        ]
    );
    assert_eq!(status["routes"][0]["counters"]["connections"], 1, "kept across the reload");
    // Not reset (a late ACK of the closed connection may have been added).
    let bytes_in = status["routes"][0]["counters"]["bytes_in"].as_u64().expect("bytes_in");
    assert!(bytes_in >= web_before.bytes_in && bytes_in > 0, "{bytes_in} after {web_before:?}");
    let c = open(&topo.client, None, sa(PROXY, 80));
    assert_eq!(c.backend, sa(BACKEND2, 6000));
    c.finish();
    // The route that is gone no longer forwards.
    let e = connect(&topo.client, None, sa(PROXY, 5432), DROPPED).map(|_| ()).expect_err("gone");
    assert_eq!(e.kind(), ErrorKind::ConnectionRefused, "{e}");
}

#[test]
fn counters_of_a_table_deleted_behind_our_back_say_so() {
    let topo = Topology::new();
    let manager = topo.manager();
    manager.apply(&Ruleset::build(&[db_route(BACKEND)]).expect("valid")).expect("apply");
    topo.proxy.nft_text(&["delete", "table", "inet", "smartproxy"]).expect("delete by hand");
    let e = manager.counters().expect_err("no table");
    assert!(matches!(e, Error::TableMissing { .. }), "{e:?}");
    // Applying again recreates it.
    manager.apply(&Ruleset::build(&[db_route(BACKEND)]).expect("valid")).expect("apply");
    assert_eq!(manager.counters().expect("counters").len(), 1);
}

#[test]
fn a_missing_nft_is_reported_distinctly() {
    let topo = Topology::new();
    let ruleset = Ruleset::build(&[db_route(BACKEND)]).expect("valid");
    for nft in [
        Nft::new().program("/nonexistent/nft"),
        Nft::in_netns(topo.proxy.name()).program("/nonexistent/nft"),
    ] {
        let manager = Manager::new(nft);
        let e = manager.probe().expect_err("no nft");
        assert!(e.is_nft_missing(), "{e:?}");
        assert!(e.to_string().contains("install nftables"), "{e}");
        let e = manager.apply(&ruleset).expect_err("no nft");
        assert!(e.is_nft_missing(), "{e:?}");
    }
}

#[test]
fn a_missing_capability_is_reported_distinctly() {
    let topo = Topology::new();
    // nft run without CAP_NET_ADMIN (dropped from the bounding set) inside the namespace.
    let nft = Nft::new().prefix([
        "ip",
        "netns",
        "exec",
        topo.proxy.name(),
        "setpriv",
        "--bounding-set=-net_admin",
        "--inh-caps=-net_admin",
    ]);
    let manager = Manager::new(nft);
    let e = manager.probe().expect_err("no capability");
    assert!(e.is_permission_denied(), "{e:?}");
    assert!(e.to_string().contains("CAP_NET_ADMIN"), "{e}");
    let e =
        manager.apply(&Ruleset::build(&[db_route(BACKEND)]).expect("valid")).expect_err("no cap");
    assert!(e.is_permission_denied(), "{e:?}");
    assert!(!topo.manager().table_exists().expect("list"), "nothing was written");
}

/// The crate's binary holding rules in the proxy namespace, with its stdout as lines.
struct Holder {
    child: Child,
    lines: Receiver<String>,
    routes: PathBuf,
    /// What it printed up to and including `applied ...`.
    startup: Vec<String>,
}

impl Holder {
    fn start(topo: &Topology, routes: &[NftRoute]) -> Self {
        static SEQ: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("spnft-{}-{n}.json", std::process::id()));
        std::fs::write(&path, serde_json::to_vec(routes).expect("json")).expect("routes file");
        let mut child = Command::new(env!("CARGO_BIN_EXE_smartproxy-nftables"))
            .args(["--netns", topo.proxy.name(), "run"])
            .arg(&path)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start smartproxy-nftables");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut h = Self { child, lines, routes: path, startup: Vec::new() };
        loop {
            let line = h.expect_line("");
            h.startup.push(line.clone());
            if line.starts_with("applied") {
                return h;
            }
        }
    }

    #[track_caller]
    fn expect_line(&self, start: &str) -> String {
        loop {
            let line = self
                .lines
                .recv_timeout(PATIENCE)
                .unwrap_or_else(|e| panic!("waiting for a line `{start}...`: {e}"));
            if line.starts_with(start) {
                return line;
            }
        }
    }

    fn signal(&self, sig: Signal) {
        let pid = Pid::from_raw(i32::try_from(self.child.id()).expect("pid")).expect("pid");
        kill_process(pid, sig).expect("signal");
    }

    #[track_caller]
    fn wait(&mut self) -> std::process::ExitStatus {
        let child = &mut self.child;
        eventually("the process to exit", PATIENCE, || child.try_wait().expect("wait"))
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let _ = std::fs::remove_file(&self.routes);
    }
}

#[test]
fn sigterm_removes_the_rules_and_sighup_reloads() {
    let topo = Topology::new();
    let _one = TcpEcho::start(&topo.backend, sa(BACKEND, 6000));
    let _two = TcpEcho::start(&topo.backend, sa(BACKEND2, 6000));
    let mut holder = Holder::start(&topo, &[db_route(BACKEND)]);
    let c = open(&topo.client, None, sa(PROXY, 5432));
    assert_eq!(c.backend, sa(BACKEND, 6000));
    c.finish();

    std::fs::write(&holder.routes, serde_json::to_vec(&[db_route(BACKEND2)]).expect("json"))
        .expect("new routes");
    holder.signal(Signal::HUP);
    holder.expect_line("reloaded");
    let c = open(&topo.client, None, sa(PROXY, 5432));
    assert_eq!(c.backend, sa(BACKEND2, 6000), "the reload is in force");
    c.finish();

    holder.signal(Signal::TERM);
    holder.expect_line("removed table");
    assert!(holder.wait().success());
    assert!(!topo.manager().table_exists().expect("list"), "no table after SIGTERM");
    let e = connect(&topo.client, None, sa(PROXY, 5432), DROPPED).map(|_| ()).expect_err("gone");
    assert_eq!(e.kind(), ErrorKind::ConnectionRefused, "the proxy itself answers now: {e}");
}

#[test]
fn rules_left_by_a_killed_process_are_cleaned_up_at_the_next_start() {
    let topo = Topology::new();
    let _one = TcpEcho::start(&topo.backend, sa(BACKEND, 6000));
    let _two = TcpEcho::start(&topo.backend, sa(BACKEND2, 6000));
    let mut holder = Holder::start(&topo, &[db_route(BACKEND)]);
    holder.signal(Signal::KILL);
    assert!(!holder.wait().success());
    let manager = topo.manager();
    assert!(manager.table_exists().expect("list"), "SIGKILL leaves the table");
    let c = open(&topo.client, None, sa(PROXY, 5432));
    assert_eq!(c.backend, sa(BACKEND, 6000), "and its rules still forward");
    c.finish();

    // The next start: the library's cleanup...
    assert!(manager.cleanup_stale().expect("cleanup"), "a stale table was found");
    assert!(!manager.table_exists().expect("list"));
    let e = connect(&topo.client, None, sa(PROXY, 5432), DROPPED).map(|_| ()).expect_err("gone");
    assert_eq!(e.kind(), ErrorKind::ConnectionRefused, "{e}");

    // ...and the binary's, which starts over a stale table with fresh counters.
    let mut first = Holder::start(&topo, &[db_route(BACKEND)]);
    first.signal(Signal::KILL);
    first.wait();
    let second = Holder::start(&topo, &[db_route(BACKEND2)]);
    assert_eq!(second.startup[0], "removed a stale table", "{:?}", second.startup);
    let c = open(&topo.client, None, sa(PROXY, 5432));
    assert_eq!(c.backend, sa(BACKEND2, 6000));
    c.finish();
    drop(second);
}

#[test]
fn a_missing_namespace_is_not_mistaken_for_a_missing_table() {
    let manager = Manager::new(Nft::in_netns("spnft-no-such-namespace"));
    let e = manager.cleanup_stale().expect_err("no namespace");
    assert!(e.to_string().contains("spnft-no-such-namespace"), "{e}");
    let e = manager.status_json().expect_err("no namespace");
    assert!(matches!(e, Error::Nft { .. }), "{e:?}");
}
