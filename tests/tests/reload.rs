//! SIGHUP reloads: established transfers complete byte-exact, new ports answer, removed ports
//! stop, a bad file is refused and the old config stays.

use std::io::{Read, Write};
use std::thread;

use smartproxy_tests::*;

fn route(name: &str, port: u16, backend: u16) -> String {
    format!(
        "[[routes]]\nname = \"{name}\"\nmatch = {{ ports = [{port}] }}\naction = {{ type = \"forward\", targets = [{{ host = \"127.0.0.1\", port = {backend} }}] }}\n"
    )
}

const HEAD: &str = "bind = [\"127.0.0.1\"]\n";

#[test]
fn reload_during_a_long_transfer_keeps_it_byte_exact_and_opens_new_ports() {
    let backend = Backend::echo();
    let (mut proxy, [a]) =
        Proxy::start_on(|[a]| format!("{HEAD}{}", route("a", a, backend.port())));
    // Listened on after the reload.
    let b = reserve_port();

    // 32 MiB each way through the proxy, written by one thread and checked by another.
    const TOTAL: usize = 32 << 20;
    let mut s = connect(a);
    let mut w = s.try_clone().unwrap();
    let writer = thread::spawn(move || {
        let chunk: Vec<u8> = (0..65536u32).map(|i| (i % 251) as u8).collect();
        let mut sent = 0;
        while sent < TOTAL {
            w.write_all(&chunk).unwrap();
            sent += chunk.len();
        }
        w.shutdown(std::net::Shutdown::Write).unwrap();
    });
    let mut got = 0usize;
    let mut buf = vec![0u8; 65536];
    let mut reloaded = false;
    loop {
        let n = s.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        for (i, byte) in buf[..n].iter().enumerate() {
            assert_eq!(*byte, (((got + i) % 65536) % 251) as u8, "byte {} differs", got + i);
        }
        got += n;
        if !reloaded && got > TOTAL / 4 {
            proxy.reload(&format!(
                "{HEAD}{}{}",
                route("a", a, backend.port()),
                route("b", b, backend.port())
            ));
            proxy.wait_listening(b);
            reloaded = true;
        }
    }
    writer.join().unwrap();
    assert!(reloaded);
    assert_eq!(got, TOTAL, "the whole transfer came back");
    let mut n = connect(b);
    assert_eq!(echo_roundtrip(&mut n, b"new port").unwrap(), b"new port");
}

#[test]
fn removed_port_stops_and_bad_file_is_refused_keeping_the_old_config() {
    let backend = Backend::echo();
    let (mut proxy, [a, b]) = Proxy::start_on(|[a, b]| {
        format!("{HEAD}{}{}", route("a", a, backend.port()), route("b", b, backend.port()))
    });
    // An established connection on the port that goes away keeps running.
    let mut kept = connect(b);
    assert_eq!(echo_roundtrip(&mut kept, b"1").unwrap(), b"1");

    proxy.reload(&format!("{HEAD}{}", route("a", a, backend.port())));
    wait_until("port b closed", || !port_listening(b));
    assert_eq!(echo_roundtrip(&mut kept, b"still here").unwrap(), b"still here");

    // A file with an error: refused, logged with the key, and port a still serves.
    proxy.reload(&format!(
        "{HEAD}{}",
        route("a", a, backend.port()).replace("ports = [", "ports = [0, ")
    ));
    const REFUSED: &str = "configuration refused, keeping the old one";
    proxy.wait_for_events(1, REFUSED, &[]);
    // The errors follow the event, one line each: file, line, key and why.
    let file = proxy.config_path.display().to_string();
    let want =
        format!("  {file}:4: routes[0].match.ports[0]: port 0 in `0` is not a listening port");
    assert!(proxy.output().lines().any(|l| l == want), "{want:?} in:\n{}", proxy.output());
    let mut s = connect(a);
    assert_eq!(echo_roundtrip(&mut s, b"old config").unwrap(), b"old config");
    // And a file that does not parse at all.
    proxy.reload("this is = = not toml");
    proxy.wait_for_events(2, REFUSED, &[]);
    let want = format!("  {file}:1: TOML syntax: key with no value, expected `=`");
    assert!(proxy.output().lines().any(|l| l == want), "{want:?} in:\n{}", proxy.output());
    let mut s = connect(a);
    assert_eq!(echo_roundtrip(&mut s, b"still old").unwrap(), b"still old");
}

#[test]
fn sigterm_drains_and_exits_zero() {
    let backend = Backend::echo();
    let (proxy, [a]) = Proxy::start_on(|[a]| {
        format!("{HEAD}[defaults]\nshutdown_grace = \"2s\"\n{}", route("a", a, backend.port()))
    });
    let mut s = connect(a);
    assert_eq!(echo_roundtrip(&mut s, b"x").unwrap(), b"x");
    assert_eq!(proxy.terminate(), Some(0));
    assert!(!port_listening(a));
}

/// Both runtimes with 3 workers: `per-worker` (the default: one thread per worker, each with
/// its own SO_REUSEPORT socket per port) and `multi-thread` (one shared socket per port):
/// forwarding, SIGHUP (a port added on every worker, one removed from every worker) and
/// SIGTERM.
#[test]
fn both_runtimes_forward_reload_and_stop() {
    for runtime in ["per-worker", "multi-thread"] {
        workers_forward_reload_and_stop(runtime);
    }
}

fn workers_forward_reload_and_stop(runtime: &str) {
    let backend = Backend::echo();
    let head = format!("{HEAD}workers = 3\nruntime = \"{runtime}\"\n");
    let (mut proxy, [a]) =
        Proxy::start_on(|[a]| format!("{head}{}", route("a", a, backend.port())));
    let b = reserve_port();
    let threads = std::fs::read_dir(format!("/proc/{}/task", proxy.pid())).unwrap().count();
    assert!(threads >= 4, "{runtime}: main thread + 3 workers, saw {threads} threads");
    // The address is printed once, although with per-worker three sockets listen on it.
    let out = proxy.output();
    let printed =
        out.lines().filter(|l| l.starts_with("listening on") && l.contains(&format!(":{a}")));
    assert_eq!(printed.count(), 1, "{runtime}: {out}");
    // Many connections: each is served whichever worker's socket the kernel picked.
    for i in 0..60u32 {
        let mut s = connect(a);
        let msg = format!("hello {i}");
        assert_eq!(echo_roundtrip(&mut s, msg.as_bytes()).unwrap(), msg.as_bytes());
    }
    proxy.reload(&format!("{head}{}", route("b", b, backend.port())));
    proxy.wait_listening(b);
    for i in 0..30u32 {
        let mut s = connect(b);
        let msg = format!("after reload {i}");
        assert_eq!(echo_roundtrip(&mut s, msg.as_bytes()).unwrap(), msg.as_bytes());
    }
    // Removed from every worker: no socket of the group is left to accept.
    wait_until("port a closed on every worker", || !port_listening(a));
    for _ in 0..30 {
        assert!(
            std::net::TcpStream::connect(("127.0.0.1", a)).is_err(),
            "{runtime}: a worker still accepts on {a}"
        );
    }
    assert_eq!(proxy.terminate(), Some(0), "{runtime}");
}
