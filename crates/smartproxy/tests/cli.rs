//! The binary's exit codes and the embedded demo.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::Duration;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_smartproxy"))
}

#[test]
fn usage_errors_exit_64_and_version_exits_0() {
    let out = bin().arg("--no-such-flag").output().unwrap();
    assert_eq!(out.status.code(), Some(64));
    let out = bin().args(["run"]).output().unwrap();
    assert_eq!(out.status.code(), Some(64), "run needs -c");
    let out = bin().arg("--version").output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("smartproxy "));
}

#[test]
fn validate_missing_file_exits_1() {
    let out = bin().args(["validate", "-c", "/nonexistent/smartproxy.toml"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read the file"));
}

#[test]
fn demo_serves_and_stops_on_sigterm() {
    // The demo binds fixed ports: a test that cannot have them fails and says why (no skip).
    for port in [8080, 8081, 8082, 9900] {
        assert!(
            std::net::TcpListener::bind(("127.0.0.1", port)).is_ok(),
            "port {port} is taken by another process: the demo needs 8080-8082 and 9900"
        );
    }
    let mut child = bin().stdout(Stdio::piped()).stderr(Stdio::null()).spawn().unwrap();
    // The first four lines, read on a thread so that the wait is bounded.
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    while seen.len() < 4 {
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(line) => seen.push(line),
            Err(e) => {
                let exited = child.try_wait().unwrap();
                let _ = child.kill();
                let _ = child.wait();
                panic!("the demo printed {seen:?}, then {e} (exited: {exited:?})");
            }
        }
    }
    assert_eq!(
        seen,
        [
            "listening on 127.0.0.1:8080",
            "listening on 127.0.0.1:8081",
            "listening on 127.0.0.1:8082",
            "admin API listening on http://127.0.0.1:9900/ (metrics: /metrics, /metrics/json)"
        ]
    );
    let mut s = TcpStream::connect("127.0.0.1:8080").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    assert!(resp.ends_with("Hello from smartproxy\n"), "{resp}");
    let mut e = TcpStream::connect("127.0.0.1:8082").unwrap();
    e.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    e.write_all(b"via forward").unwrap();
    let mut b = [0u8; 11];
    e.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"via forward");
    drop(e);
    let st = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(st.success());
    for _ in 0..250 {
        if let Some(st) = child.try_wait().unwrap() {
            assert_eq!(st.code(), Some(0));
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    panic!("smartproxy did not exit after SIGTERM");
}
