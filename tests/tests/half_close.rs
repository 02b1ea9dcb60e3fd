//! `half_close` (issue 19): what the end of one side of a plain TCP connection does. By default
//! (`true`) its FIN is passed on as a half-close and the other direction runs on; with
//! `half_close = false` (nginx's `proxy_half_close off`) the first FIN closes the whole
//! connection, both sides, once what was in hand is written. Real sockets on both ends, for
//! the route key and for `[defaults]`; each case waits on the peers' reads (EOF), no sleeps.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use smartproxy_tests::*;

/// A backend on a loopback port: every connection is handed to `serve` (reads time out
/// after [`WAIT`]), and what it returns is reported on the channel.
fn backend(serve: fn(&mut TcpStream) -> Vec<u8>) -> (u16, mpsc::Receiver<Vec<u8>>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            s.set_read_timeout(Some(WAIT)).unwrap();
            if tx.send(serve(&mut s)).is_err() {
                return;
            }
        }
    });
    (port, rx)
}

/// A backend that speaks first: it sends `bye`, shuts its write side down and reads what the
/// client sends after that until EOF, then reports it.
fn server_first_backend() -> (u16, mpsc::Receiver<Vec<u8>>) {
    backend(|s| {
        s.write_all(b"bye").unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        let mut after = Vec::new();
        // An error (a reset) counts as what came before it.
        let _ = s.read_to_end(&mut after);
        after
    })
}

/// A backend that answers a whole request: it reads until the client's EOF, then writes
/// `answer` (ignoring a failure: the proxy may have closed already) and closes; reports the
/// request.
fn request_then_answer_backend() -> (u16, mpsc::Receiver<Vec<u8>>) {
    backend(|s| {
        let mut req = Vec::new();
        let _ = s.read_to_end(&mut req);
        let _ = s.write_all(b"answer");
        req
    })
}

fn config(ports: [u16; 4], server_first: u16, answering: u16, defaults: &str, key: &str) -> String {
    let [a, b, c, d] = ports;
    let route = |name: &str, port: u16, backend: u16, half: &str| {
        format!(
            "[[routes]]\nname = \"{name}\"\nmatch = {{ ports = [{port}] }}\naction = {{ type = \
             \"forward\", targets = [{{ host = \"127.0.0.1\", port = {backend} }}]{half} }}\n\n"
        )
    };
    format!(
        "bind = [\"127.0.0.1\"]\n\n[defaults]\n{defaults}\n\n{}{}{}{}",
        route("server-first", a, server_first, ""),
        route("answering", b, answering, ""),
        route("server-first-key", c, server_first, key),
        route("answering-key", d, answering, key),
    )
}

/// The backend speaks and half-closes; the client reads to EOF, then sends `late` and
/// half-closes. Returns (what the client got, what the backend got after its FIN).
fn backend_ends_first(port: u16, backend: &mpsc::Receiver<Vec<u8>>) -> (Vec<u8>, Vec<u8>) {
    let mut s = connect(port);
    let (got, clean) = read_to_end(&mut s);
    assert!(clean, "port {port}: the client's side ended with a reset");
    // Refused or reset when the proxy closed the connection: that is the case under test.
    let _ = s.write_all(b"late");
    let _ = s.shutdown(Shutdown::Write);
    let after = backend.recv_timeout(WAIT).expect("the backend's read ended");
    (got, after)
}

/// The client sends `req` and half-closes, then reads the answer to EOF. Returns (what the
/// backend got, what the client got).
fn client_ends_first(port: u16, backend: &mpsc::Receiver<Vec<u8>>) -> (Vec<u8>, Vec<u8>) {
    let mut s = connect(port);
    s.write_all(b"req").unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let (answer, _) = read_to_end(&mut s);
    let req = backend.recv_timeout(WAIT).expect("the backend's read ended");
    (req, answer)
}

const WAIT: Duration = Duration::from_secs(10);

/// Default: a FIN is a half-close. The backend's `bye` and FIN reach the client and the
/// client's later `late` still reaches the backend; a client that half-closes after its
/// request gets the answer. `half_close = false` on the route: the first FIN closes both
/// sides, so `late` never reaches the backend (it reads EOF right after its own FIN) and the
/// half-closed client gets no answer (the backend reads the request, then EOF).
#[test]
fn route_half_close_false_closes_both_sides_at_the_first_fin() {
    let (server_first, sf) = server_first_backend();
    let (answering, an) = request_then_answer_backend();
    let (_proxy, [a, b, c, d]) =
        Proxy::start_on(|ports| config(ports, server_first, answering, "", ", half_close = false"));

    assert_eq!(backend_ends_first(a, &sf), (b"bye".to_vec(), b"late".to_vec()), "default");
    assert_eq!(client_ends_first(b, &an), (b"req".to_vec(), b"answer".to_vec()), "default");

    let (got, after) = backend_ends_first(c, &sf);
    assert_eq!(got, b"bye", "half_close = false: what the backend sent before its FIN");
    assert_eq!(after, b"", "half_close = false: the backend side was closed at its FIN");
    let (req, answer) = client_ends_first(d, &an);
    assert_eq!(req, b"req", "half_close = false: the request before the client's FIN");
    assert_eq!(answer, b"", "half_close = false: closed at the client's FIN, no answer");
}

/// `[defaults] half_close = false` applies to routes that do not say, and a route's
/// `half_close = true` wins over it.
#[test]
fn defaults_half_close_false_applies_unless_the_route_says() {
    let (server_first, sf) = server_first_backend();
    let (answering, an) = request_then_answer_backend();
    let (_proxy, [a, b, c, d]) = Proxy::start_on(|ports| {
        config(ports, server_first, answering, "half_close = false", ", half_close = true")
    });

    assert_eq!(backend_ends_first(a, &sf), (b"bye".to_vec(), Vec::new()), "from [defaults]");
    assert_eq!(client_ends_first(b, &an), (b"req".to_vec(), Vec::new()), "from [defaults]");
    assert_eq!(backend_ends_first(c, &sf), (b"bye".to_vec(), b"late".to_vec()), "route wins");
    assert_eq!(client_ends_first(d, &an), (b"req".to_vec(), b"answer".to_vec()), "route wins");
}

/// A half_close key where no plain copy runs is refused with the key and the reason.
#[test]
fn half_close_on_an_http_route_is_a_config_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("half.toml");
    std::fs::write(
        &file,
        r#"[[routes]]
name = "web"
match = { ports = [8080] }
action = { type = "forward", targets = [{ host = "127.0.0.1", port = 9 }], http = {}, half_close = false }
"#,
    )
    .unwrap();
    let out = std::process::Command::new(smartproxy_bin())
        .args(["validate", "-c"])
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "validate refuses it");
    let out =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert!(
        out.contains("routes[0].action.half_close") && out.contains("HTTP layer"),
        "the error names the key and why: {out}"
    );
}
