//! Reload under load: 20 SIGHUPs, each changing the routes and the certificate of a
//! terminating route, while `wrk` drives HTTPS keep-alive traffic through that route. No
//! request fails, the new route of each reload answers, and new TLS connections get the new
//! certificate.

use std::thread;
use std::time::{Duration, Instant};

use smartproxy_tests::*;

const RELOADS: usize = 20;

fn config(
    generation: usize,
    wrk_port: u16,
    leaf: &LeafFiles,
    backend: u16,
    extra: &[u16],
) -> String {
    let mut c = format!(
        r#"bind = ["127.0.0.1"]

[[routes]]
name = "load"
match = {{ ports = [{wrk_port}] }}
action = {{ type = "forward", targets = [{{ host = "127.0.0.1", port = {backend} }}], tls = {{ mode = "terminate", certificate = {{ cert = "{c}", key = "{k}" }} }} }}
"#,
        c = leaf.cert.display(),
        k = leaf.key.display()
    );
    // Generation `n` has one static route per generation so far, each on its own port; the
    // newest answers with its generation.
    for (i, port) in extra.iter().enumerate().take(generation + 1) {
        c.push_str(&format!(
            "\n[[routes]]\nname = \"generation-{i}\"\nmatch = {{ ports = [{port}] }}\naction = {{ type = \"socket-handler\", handler = \"static\", body = \"generation {i} of {generation}\" }}\n"
        ));
    }
    c
}

#[test]
fn twenty_reloads_during_wrk_lose_no_request() {
    let pki = Pki::new();
    // Two certificates for the same name, told apart by their CN.
    let leaves = [
        pki.leaf("blue", &["blue.a.test", "a.test"]),
        pki.leaf("green", &["green.a.test", "a.test"]),
    ];
    let cn = ["blue.a.test", "green.a.test"];
    let backend = HttpBackend::start("hello from the backend");
    // Generation 0 listens on the load port and its own; each reload adds one more.
    let later: Vec<u16> = (1..=RELOADS).map(|_| reserve_port()).collect();
    let with_later =
        |first: u16| -> Vec<u16> { std::iter::once(first).chain(later.clone()).collect() };
    let (proxy, [wrk_port, first]) = Proxy::start_on(|[wrk_port, first]| {
        config(0, wrk_port, &leaves[0], backend.port(), &with_later(first))
    });
    let extra = with_later(first);
    assert!(served_subject(wrk_port, "a.test").contains(cn[0]));

    let url = format!("https://127.0.0.1:{wrk_port}/");
    let load = thread::spawn(move || wrk(&["-t1", "-c10", "-d10s", &url]));
    // Let wrk open its connections.
    wait_until("wrk traffic", || backend.requests() > 100);
    let started = Instant::now();
    let mut during = 0;
    for generation in 1..=RELOADS {
        proxy.reload(&config(
            generation,
            wrk_port,
            &leaves[generation % 2],
            backend.port(),
            &extra,
        ));
        // The new route answers...
        let url = format!("http://127.0.0.1:{}/", extra[generation]);
        let want = format!("generation {generation} of {generation}");
        wait_until(&format!("route of generation {generation}"), || {
            let (code, body, _) = curl(&[&url]);
            code == 0 && body == want
        });
        // ...an older one is still there, with the new configuration...
        let (code, body, _) = curl(&[&format!("http://127.0.0.1:{}/", extra[generation - 1])]);
        assert_eq!((code, body), (0, format!("generation {} of {generation}", generation - 1)));
        // ...and a new TLS connection gets the new certificate.
        let subject = served_subject(wrk_port, "a.test");
        assert!(subject.contains(cn[generation % 2]), "generation {generation}: {subject}");
        if !load.is_finished() {
            during += 1;
        }
        // Pacing on purpose: the reloads spread over wrk's 10 s run.
        thread::sleep(Duration::from_millis(150));
    }
    let took = started.elapsed();
    let report = load.join().unwrap();
    eprintln!("{report}\n{during} of {RELOADS} reloads happened while wrk ran ({took:?} for all)");
    assert!(during >= RELOADS / 2, "most reloads happen under load: {during}\n{report}");
    let requests: u64 = report
        .lines()
        .find(|l| l.contains("requests in"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("wrk summary missing:\n{report}"));
    assert!(requests > 1000, "{report}");
    assert!(!report.contains("Non-2xx or 3xx responses"), "failed requests:\n{report}");
    assert!(!report.contains("Socket errors"), "socket errors:\n{report}");
    let out = proxy.output();
    assert_eq!(out.matches("configuration reloaded").count(), RELOADS, "{out}");
}
