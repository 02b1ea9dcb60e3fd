//! Running the binary as an operator does: under systemd (a fake `NOTIFY_SOCKET`), with
//! `watch_config`, and under a flood of refused connections (quiet logs).

use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::net::UnixDatagram;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;
use smartproxy_tests::*;

fn echo_route(name: &str, port: u16) -> String {
    format!(
        "\n[[routes]]\nname = \"{name}\"\nmatch = {{ ports = [{port}] }}\naction = {{ type = \"socket-handler\", handler = \"echo\" }}\n"
    )
}

/// The fake service manager: the datagrams the binary sends to `NOTIFY_SOCKET`.
struct Notify {
    sock: UnixDatagram,
    _dir: TempDir,
    path: std::path::PathBuf,
}

impl Notify {
    fn bind() -> Notify {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let sock = UnixDatagram::bind(&path).unwrap();
        sock.set_read_timeout(Some(WAIT)).unwrap();
        Notify { sock, _dir: dir, path }
    }

    /// The next message that is not a watchdog ping (counted in `pings`).
    fn next(&self, pings: &mut u32) -> String {
        loop {
            let mut buf = [0u8; 4096];
            let n = self.sock.recv(&mut buf).expect("no notification within the wait");
            let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
            if msg == "WATCHDOG=1\n" {
                *pings += 1;
                continue;
            }
            return msg;
        }
    }
}

#[test]
fn sd_notify_ready_reloading_stopping_and_watchdog() {
    let notify = Notify::bind();
    let base =
        |admin: u16| format!("bind = [\"127.0.0.1\"]\n[admin]\nlisten = \"127.0.0.1:{admin}\"\n");
    let socket = notify.path.display().to_string();
    // WATCHDOG_PID unset: the watchdog is meant for this process (as libsystemd reads it).
    let env = [("NOTIFY_SOCKET", socket.as_str()), ("WATCHDOG_USEC", "200000")];
    let (proxy, [admin, a]) = Proxy::start_on_with("toml", &env, |[admin, a]| {
        format!("{}{}", base(admin), echo_route("a", a))
    });
    let cfg = format!("{}{}", base(admin), echo_route("a", a));
    let b = reserve_port();
    let mut pings = 0;
    let ready = notify.next(&mut pings);
    assert!(ready.starts_with("READY=1\n"), "{ready:?}");
    // Every listener accepts once READY=1 is sent.
    let mut s = connect(a);
    assert_eq!(echo_roundtrip(&mut s, b"ping").unwrap(), b"ping");
    assert_eq!(get(admin, "/healthz").status, 200);

    // Pings every WATCHDOG_USEC / 2.
    let started = Instant::now();
    let mut got = 0;
    while got < 5 {
        let mut buf = [0u8; 64];
        let n = notify.sock.recv(&mut buf).expect("watchdog ping");
        assert_eq!(&buf[..n], b"WATCHDOG=1\n");
        got += 1;
    }
    let took = started.elapsed();
    assert!(took < Duration::from_millis(1_500), "5 pings took {took:?} (every 100 ms expected)");

    // SIGHUP: RELOADING=1 (with MONOTONIC_USEC), the reload, READY=1.
    proxy.reload(&format!("{cfg}{}", echo_route("b", b)));
    let reloading = notify.next(&mut pings);
    assert!(reloading.starts_with("RELOADING=1\nMONOTONIC_USEC="), "{reloading:?}");
    let ready = notify.next(&mut pings);
    assert!(ready.starts_with("READY=1\n"), "{ready:?}");
    let mut s = connect(b);
    assert_eq!(
        echo_roundtrip(&mut s, b"new").unwrap(),
        b"new",
        "the reload was applied before READY=1"
    );
    // A refused reload is announced the same way.
    proxy.reload("not toml [");
    assert!(notify.next(&mut pings).starts_with("RELOADING=1\n"));
    let ready = notify.next(&mut pings);
    assert!(ready.starts_with("READY=1\nSTATUS=serving; last reload refused"), "{ready:?}");

    // SIGTERM: STOPPING=1, then the exit.
    proxy.signal("TERM");
    let stopping = notify.next(&mut pings);
    assert!(stopping.starts_with("STOPPING=1\n"), "{stopping:?}");
    assert_eq!(proxy.terminate(), Some(0));
}

/// A service manager that stops reading `NOTIFY_SOCKET` (its queue holds ten datagrams): the
/// proxy goes on serving, answering the admin API, reloading and stopping on signals, and what
/// it could not send yet arrives in order once the socket is read again. (Before the fix the
/// watchdog's blocking send froze the main runtime: `/healthz` hung and SIGTERM did nothing.)
#[test]
fn a_notification_socket_nobody_reads_does_not_freeze_the_proxy() {
    let notify = Notify::bind();
    let base =
        |admin: u16| format!("bind = [\"127.0.0.1\"]\n[admin]\nlisten = \"127.0.0.1:{admin}\"\n");
    let socket = notify.path.display().to_string();
    // A ping every 10 ms: the queue is full within a tenth of a second.
    let env = [("NOTIFY_SOCKET", socket.as_str()), ("WATCHDOG_USEC", "20000")];
    let (proxy, [admin, a]) = Proxy::start_on_with("toml", &env, |[admin, a]| {
        format!("{}{}", base(admin), echo_route("a", a))
    });
    // Full: a datagram of our own no longer fits (each probe that fits only fills it sooner).
    let probe = UnixDatagram::unbound().unwrap();
    probe.connect(&notify.path).unwrap();
    probe.set_nonblocking(true).unwrap();
    wait_until(
        "the notification queue is full",
        || matches!(probe.send(b"probe"), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
    );

    assert_eq!(get(admin, "/healthz").status, 200, "the admin API answers");
    let mut s = connect(a);
    assert_eq!(echo_roundtrip(&mut s, b"ping").unwrap(), b"ping");
    let b = reserve_port();
    proxy.reload(&format!("{}{}{}", base(admin), echo_route("a", a), echo_route("b", b)));
    wait_until("route b after SIGHUP", || port_listening(b));
    let mut t = connect(b);
    assert_eq!(echo_roundtrip(&mut t, b"new").unwrap(), b"new");
    drop((s, t));

    // Read again: every state change arrives, in order, STOPPING=1 before the exit.
    let reader = thread::spawn(move || {
        let mut states = Vec::new();
        let mut pings = 0;
        loop {
            let msg = notify.next(&mut pings);
            if msg == "probe" {
                continue;
            }
            let name = msg.lines().next().unwrap_or_default().to_owned();
            states.push(name.split('=').next().unwrap_or_default().to_owned());
            if name == "STOPPING=1" {
                return (states, pings);
            }
        }
    });
    assert_eq!(proxy.terminate(), Some(0), "SIGTERM stops it");
    let (states, pings) = reader.join().expect("the notifications, STOPPING=1 last");
    assert_eq!(states, ["READY", "RELOADING", "READY", "STOPPING"]);
    assert!(pings >= 1, "watchdog pings were sent");
}

#[test]
fn watch_config_reloads_on_change_including_atomic_renames() {
    let base = |admin: u16| {
        format!(
            "watch_config = true\nbind = [\"127.0.0.1\"]\n[admin]\nlisten = \"127.0.0.1:{admin}\"\n"
        )
    };
    let (mut proxy, [admin, a]) =
        Proxy::start_on(|[admin, a]| format!("{}{}", base(admin), echo_route("a", a)));
    let base = base(admin);
    let [b, c] = reserve_ports::<2>();
    proxy.wait_for_log("watching the configuration file");
    let path = proxy.config_path.clone();
    let reloads = |admin| {
        let j = metrics_json(admin);
        (j["reloads"]["ok"].as_u64().unwrap(), j["reloads"]["failed"].as_u64().unwrap())
    };

    // An editor that saves atomically: a new file renamed over the old one.
    let tmp = path.with_extension("toml.swp");
    std::fs::write(&tmp, format!("{base}{}{}", echo_route("a", a), echo_route("b", b))).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    wait_until("route b after the rename", || port_listening(b));
    wait_until("one reload", || reloads(admin) == (1, 0));
    let mut s = connect(b);
    assert_eq!(echo_roundtrip(&mut s, b"renamed").unwrap(), b"renamed");

    // Writes in place, in a burst: one reload once the file is quiet.
    let text = format!("{base}{}{}", echo_route("a", a), echo_route("c", c));
    for i in 0..5 {
        std::fs::write(&path, &text[..text.len() * (i + 1) / 5]).unwrap();
        thread::sleep(Duration::from_millis(30));
    }
    wait_until("route c after the writes", || port_listening(c));
    wait_until("the second reload", || reloads(admin) == (2, 0));
    // Quiet for several debounce periods: no further reload (of a half-written file either).
    thread::sleep(Duration::from_secs(1));
    assert_eq!(reloads(admin), (2, 0), "a burst of writes is one reload");
    assert!(!port_listening(b), "route b was removed");

    // A bad save is refused; the running configuration stays.
    std::fs::write(&path, "routes = 3\n").unwrap();
    wait_until("the refused reload", || reloads(admin) == (2, 1));
    let mut s = connect(c);
    assert_eq!(echo_roundtrip(&mut s, b"still").unwrap(), b"still");
    let frame: Value = serde_json::from_str(&get(admin, "/api/dashboard").body).unwrap();
    let history = frame["reloads"].as_array().unwrap();
    assert_eq!(history.len(), 3);
    assert!(history.iter().all(|r| r["trigger"] == "file change"), "{history:?}");
    assert_eq!(history[0]["ok"], false);
    assert!(history[0]["message"].as_str().unwrap().contains("routes"), "{history:?}");
}

/// Refused connections are logged at most a few lines a second per reason, then one summary
/// line per second with the count: 100,000 refused connections write a bounded number of
/// lines, and logged + suppressed = refused.
#[test]
fn a_flood_of_refused_connections_writes_a_bounded_number_of_lines() {
    const TOTAL: u64 = 100_000;
    const THREADS: u8 = 8;
    // One new connection per minute and client IP: every further one is refused at admission.
    let (proxy, [admin, port]) = Proxy::start_on(|[admin, port]| {
        format!(
            "bind = [\"127.0.0.1\"]\n[defaults]\nconnection_rate_limit_per_minute = 1\n[admin]\nlisten = \"127.0.0.1:{admin}\"\n\n[[routes]]\nname = \"static\"\nmatch = {{ ports = [{port}] }}\naction = {{ type = \"socket-handler\", handler = \"static\", body = \"hi\\n\" }}\n"
        )
    });
    let done = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + Duration::from_secs(180);
    let to = SocketAddr::from(([127, 0, 0, 1], port));
    let workers: Vec<_> = (0..THREADS)
        .map(|t| {
            let done = done.clone();
            thread::spawn(move || {
                // Clients from 127.0.0.2..9: each address has its own ephemeral ports.
                let from = Ipv4Addr::new(127, 0, 0, 2 + t);
                let mut buf = [0u8; 64];
                while done.fetch_add(1, Ordering::Relaxed) < TOTAL {
                    assert!(Instant::now() < deadline, "the flood did not finish in time");
                    let mut s = connect_from(from, to).expect("connect");
                    // Until the proxy closes (EOF or reset).
                    while let Ok(n) = s.read(&mut buf) {
                        if n == 0 {
                            break;
                        }
                    }
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    let flood = started.elapsed();
    let refused_expected = TOTAL - u64::from(THREADS);
    wait_until("every refusal counted", || {
        metrics_json(admin)["refused"]["rate_limit"].as_u64() == Some(refused_expected)
    });
    // The summary of the last second comes at the next flush.
    let count = |out: &str| {
        let logged = out
            .lines()
            .filter(|l| l.contains("connection refused") && l.contains("rate_limit"))
            .count() as u64;
        let summaries: Vec<u64> = out
            .lines()
            .filter(|l| l.contains("similar lines suppressed") && l.contains("rate_limit"))
            .map(|l| {
                let v = l.split("suppressed=").nth(1).expect("suppressed= field");
                v.split_whitespace().next().unwrap().parse::<u64>().unwrap()
            })
            .collect();
        (logged, summaries)
    };
    wait_until("logged + suppressed = refused", || {
        let (logged, summaries) = count(&proxy.output());
        logged + summaries.iter().sum::<u64>() == refused_expected
    });
    let out = proxy.output();
    let (logged, summaries) = count(&out);
    let lines = out.lines().count();
    let secs = flood.as_secs() + 3;
    if std::env::var_os("FLOOD_DEBUG").is_some() {
        eprintln!("{out}");
    }
    eprintln!(
        "flood: {TOTAL} connections in {flood:?}; {logged} refusal lines, {} summary lines, {lines} lines in all",
        summaries.len()
    );
    assert!(logged <= 5 * secs, "{logged} refusal lines in {flood:?}");
    assert!(summaries.len() as u64 <= secs, "{} summaries in {flood:?}", summaries.len());
    assert!(lines < 200 + 6 * secs as usize, "{lines} lines in all");
}
