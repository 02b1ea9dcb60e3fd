//! Reload under load (issue 17): SIGHUPs, each adding a route, removing an older one and
//! changing the certificate of a terminating route, while `wrk` drives HTTPS keep-alive traffic
//! through that route and 16 long-lived plain TCP connections echo through another. No request
//! fails, no established connection is dropped (wrk never reconnects; every long-lived
//! connection echoes exactly after every reload), the new route of each reload answers, the
//! removed one is gone, and new TLS connections get the new certificate.
//!
//! 20 reloads in CI; `SMARTPROXY_RELOADS=N` runs N (wrk runs long enough for all of them).

use std::io::Read;
use std::net::{Shutdown, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use smartproxy_tests::*;

/// The long-lived plain connections kept open through every reload.
const LONG_LIVED: usize = 16;
/// wrk's connections (`-c`).
const WRK_CONNECTIONS: u64 = 10;

fn reloads() -> usize {
    std::env::var("SMARTPROXY_RELOADS").ok().and_then(|v| v.parse().ok()).unwrap_or(20)
}

/// The configuration of `generation`: the terminating route under wrk's load (certificate
/// `leaf`), the plain echo route of the long-lived connections, and the static routes of the
/// last two generations (each on its own port of `extra`; the newest answers with its
/// generation): every reload adds one route and removes one.
fn config(
    generation: usize,
    wrk_port: u16,
    echo_port: u16,
    leaf: &LeafFiles,
    backend: u16,
    echo: u16,
    extra: &[u16],
) -> String {
    let mut c = format!(
        r#"bind = ["127.0.0.1"]

[[routes]]
name = "load"
match = {{ ports = [{wrk_port}] }}
action = {{ type = "forward", targets = [{{ host = "127.0.0.1", port = {backend} }}], tls = {{ mode = "terminate", certificate = {{ cert = "{c}", key = "{k}" }} }} }}

[[routes]]
name = "long-lived"
match = {{ ports = [{echo_port}] }}
action = {{ type = "forward", targets = [{{ host = "127.0.0.1", port = {echo} }}] }}
"#,
        c = leaf.cert.display(),
        k = leaf.key.display()
    );
    for (i, port) in
        extra.iter().enumerate().take(generation + 1).skip(generation.saturating_sub(1))
    {
        c.push_str(&format!(
            "\n[[routes]]\nname = \"generation-{i}\"\nmatch = {{ ports = [{port}] }}\naction = {{ type = \"socket-handler\", handler = \"static\", body = \"generation {i} of {generation}\" }}\n"
        ));
    }
    c
}

/// One echo round trip on every long-lived connection, byte-exact.
fn echo_all(conns: &mut [TcpStream], round: &str) {
    for (i, s) in conns.iter_mut().enumerate() {
        let msg = format!("connection {i}, {round}\n");
        let got = echo_roundtrip(s, msg.as_bytes())
            .unwrap_or_else(|e| panic!("long-lived connection {i} dropped at {round}: {e}"));
        assert_eq!(got, msg.as_bytes(), "long-lived connection {i} at {round}");
    }
}

#[test]
fn reloads_during_wrk_lose_no_request_and_drop_no_connection() {
    let reloads = reloads();
    let pki = Pki::new();
    // Two certificates for the same name, told apart by their CN.
    let leaves = [
        pki.leaf("blue", &["blue.a.test", "a.test"]),
        pki.leaf("green", &["green.a.test", "a.test"]),
    ];
    let cn = ["blue.a.test", "green.a.test"];
    let backend = HttpBackend::start("hello from the backend");
    let echo = Backend::echo();
    // Generation 0 listens on the load port, the echo port and its own; each reload adds one
    // more and closes the one before last.
    let later: Vec<u16> = (1..=reloads).map(|_| reserve_port()).collect();
    let with_later =
        |first: u16| -> Vec<u16> { std::iter::once(first).chain(later.clone()).collect() };
    let (proxy, [wrk_port, echo_port, first]) = Proxy::start_on(|[wrk_port, echo_port, first]| {
        let extra = with_later(first);
        config(0, wrk_port, echo_port, &leaves[0], backend.port(), echo.port(), &extra)
    });
    let extra = with_later(first);
    let mut subjects_asked = 0u64;
    assert!(served_subject(wrk_port, "a.test").contains(cn[0]));
    subjects_asked += 1;

    let mut long: Vec<TcpStream> = (0..LONG_LIVED).map(|_| connect(echo_port)).collect();
    echo_all(&mut long, "before the reloads");

    // wrk runs until after the last reload: about 0.3 s per reload on the 2-core machine.
    let secs = (reloads / 2).max(10);
    let url = format!("https://127.0.0.1:{wrk_port}/");
    let duration = format!("-d{secs}s");
    let connections = format!("-c{WRK_CONNECTIONS}");
    let load = thread::spawn(move || wrk(&["-t1", &connections, &duration, &url]));
    // Let wrk open its connections.
    wait_until("wrk traffic", || backend.requests() > 100);
    let backend_connections_before = backend.connections.load(std::sync::atomic::Ordering::Relaxed);
    let started = Instant::now();
    let mut during = 0;
    for generation in 1..=reloads {
        proxy.reload(&config(
            generation,
            wrk_port,
            echo_port,
            &leaves[generation % 2],
            backend.port(),
            echo.port(),
            &extra,
        ));
        // The new route answers...
        let url = format!("http://127.0.0.1:{}/", extra[generation]);
        let want = format!("generation {generation} of {generation}");
        wait_until(&format!("route of generation {generation}"), || {
            let (code, body, _) = curl(&[&url]);
            code == 0 && body == want
        });
        // ...the one before is still there, with the new configuration...
        let (code, body, _) = curl(&[&format!("http://127.0.0.1:{}/", extra[generation - 1])]);
        assert_eq!((code, body), (0, format!("generation {} of {generation}", generation - 1)));
        // ...the one before that is gone...
        if generation >= 2 {
            let gone = extra[generation - 2];
            wait_until(&format!("port {gone} closed by generation {generation}"), || {
                TcpStream::connect(("127.0.0.1", gone)).is_err()
            });
        }
        // ...a new TLS connection gets the new certificate...
        let subject = served_subject(wrk_port, "a.test");
        subjects_asked += 1;
        assert!(subject.contains(cn[generation % 2]), "generation {generation}: {subject}");
        // ...and every established connection still echoes.
        echo_all(&mut long, &format!("after reload {generation}"));
        if !load.is_finished() {
            during += 1;
        }
        // Pacing on purpose: the reloads spread over wrk's run.
        thread::sleep(Duration::from_millis(150));
    }
    let took = started.elapsed();
    let report = load.join().unwrap();
    // Established connections at the end: exact echo, then a clean close from both sides.
    echo_all(&mut long, "at the end");
    for (i, s) in long.iter_mut().enumerate() {
        s.shutdown(Shutdown::Write).unwrap();
        let mut rest = Vec::new();
        s.read_to_end(&mut rest).unwrap_or_else(|e| panic!("long-lived connection {i}: {e}"));
        assert!(rest.is_empty(), "long-lived connection {i}: {} stray bytes", rest.len());
    }
    // wrk opened its connections once: the backend saw one connection per wrk connection and
    // one per certificate probe (each `openssl s_client` handshake is forwarded), no more.
    let backend_connections = backend.connections.load(std::sync::atomic::Ordering::Relaxed);
    let probes_during = subjects_asked - 1;
    eprintln!(
        "{report}\n{during} of {reloads} reloads happened while wrk ran ({took:?} for all); \
         backend connections during the run: {} ({probes_during} certificate probes); \
         {LONG_LIVED} long-lived connections echoed after every reload",
        backend_connections - backend_connections_before
    );
    assert_eq!(
        backend_connections - backend_connections_before,
        probes_during,
        "wrk reconnected: a kept-alive connection was dropped\n{report}"
    );
    assert_eq!(during, reloads, "every reload happens under load\n{report}");
    let requests: u64 = report
        .lines()
        .find(|l| l.contains("requests in"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("wrk summary missing:\n{report}"));
    assert!(requests > 1000, "{report}");
    // wrk prints these lines only when a count is not 0 (connect, read, write, timeout errors;
    // responses other than 2xx and 3xx).
    assert!(!report.contains("Non-2xx or 3xx responses"), "failed requests:\n{report}");
    assert!(!report.contains("Socket errors"), "socket errors:\n{report}");
    let out = proxy.output();
    assert_eq!(out.matches("configuration reloaded").count(), reloads, "{out}");
}
