//! Memory bound of socket-handler connections under slow readers (issue 17; TLS termination:
//! `reliability.rs`, plain and splice: `datapath.rs`): the built-in `echo` handler fed by
//! clients that never read, and the `static` handler answering a 1 MiB body to clients that
//! do not read it. The proxy's RSS growth per stalled connection is printed and bounded; then
//! every byte is read, exact.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::Duration;

use smartproxy_tests::*;

const CONNS: usize = 32;
/// The growth of the proxy's resident set allowed per stalled connection.
const BOUND_KIB: f64 = 128.0;

/// Bytes particular to connection `i`.
fn payload(len: usize, i: usize) -> Vec<u8> {
    (0..len).map(|k| (k * 31 + i * 7 + k / 4093) as u8).collect()
}

fn config(port: u16, handler: &str, extra: &str) -> String {
    format!(
        "bind = [\"127.0.0.1\"]\n[defaults]\nmax_connections_per_ip = 0\n\
         [[routes]]\nname = \"{handler}\"\nmatch = {{ ports = [{port}] }}\n\
         action = {{ type = \"socket-handler\", handler = \"{handler}\"{extra} }}\n"
    )
}

/// `echo`: 32 clients each send 16 MiB and read nothing for 3 s (the handler must stop reading
/// when its writes block: then the rest waits in the kernel's buffers, where TCP's flow control
/// stops the senders); RSS growth per stalled connection < 128 KiB; then every echo is exact.
#[test]
fn echo_handler_slow_readers_keep_memory_bounded() {
    const LEN: usize = 16 << 20;
    let (proxy, [port]) = Proxy::start_on(|[port]| config(port, "echo", ""));
    let transfer = |s: &mut TcpStream, i: usize, written: Arc<AtomicUsize>| {
        let data = payload(LEN, i);
        let mut w = s.try_clone().unwrap();
        let d = data.clone();
        let writer = thread::spawn(move || -> std::io::Result<()> {
            w.set_write_timeout(Some(Duration::from_secs(60)))?;
            for chunk in d.chunks(64 << 10) {
                w.write_all(chunk)?;
                written.fetch_add(chunk.len(), Ordering::Relaxed);
            }
            Ok(())
        });
        (data, writer)
    };
    // Warm-up: one whole transfer.
    let mut warm = connect(port);
    let (data, writer) = transfer(&mut warm, 999, Arc::default());
    let mut got = vec![0u8; LEN];
    warm.read_exact(&mut got).unwrap();
    writer.join().unwrap().unwrap();
    assert!(got == data, "warm-up echo differs");
    drop(warm);
    let before = proxy.rss_kib();

    let written = Arc::new(AtomicUsize::new(0));
    let mut conns: Vec<TcpStream> = (0..CONNS).map(|_| connect(port)).collect();
    let transfers: Vec<_> =
        conns.iter_mut().enumerate().map(|(i, s)| transfer(s, i, written.clone())).collect();
    // Nobody reads for 3 s: the sockets fill up and the handler must stop reading too. The
    // stall itself is the test's load, not a synchronisation.
    thread::sleep(Duration::from_secs(3));
    let during = proxy.rss_kib();
    let held = written.load(Ordering::Relaxed);
    let per_conn = during.saturating_sub(before) as f64 / CONNS as f64;
    eprintln!(
        "echo handler, slow readers: RSS {before} KiB -> {during} KiB with {CONNS} stalled \
         connections ({per_conn:.1} KiB each); {held} bytes written, none read"
    );
    assert!(held >= CONNS << 20, "only {held} bytes held back: the test did not load the path");
    for (i, (s, (data, writer))) in conns.iter_mut().zip(transfers).enumerate() {
        let mut got = vec![0u8; LEN];
        s.read_exact(&mut got).unwrap_or_else(|e| panic!("connection {i}: {e}"));
        writer.join().unwrap().unwrap_or_else(|e| panic!("connection {i}: write: {e}"));
        assert!(got == data, "connection {i}: echo differs");
    }
    assert!(per_conn < BOUND_KIB, "{per_conn:.1} KiB of RSS per stalled echo connection");
}

/// `static` with a 1 MiB body: 32 clients send a request and do not read the answer for 2 s
/// (the kernel's buffers take only part of it); RSS growth per stalled connection < 128 KiB,
/// i.e. the body is not copied per connection; then every answer is read whole.
#[test]
fn static_handler_large_body_slow_readers_keep_memory_bounded() {
    const BODY: usize = 1 << 20;
    let body: String = (0..BODY).map(|k| char::from(b'a' + (k % 26) as u8)).collect();
    let (proxy, [port]) =
        Proxy::start_on(|[port]| config(port, "static", &format!(", body = \"{body}\"")));
    let request = |s: &mut TcpStream| {
        s.write_all(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n").unwrap();
    };
    let answer = |s: &mut TcpStream, what: &str| {
        let (got, _) = read_to_end(s);
        let text = String::from_utf8_lossy(&got);
        let (head, rest) = text.split_once("\r\n\r\n").unwrap_or_else(|| panic!("{what}: {text}"));
        assert!(head.starts_with("HTTP/1.1 200"), "{what}: {head}");
        assert!(rest == body, "{what}: a body of {} bytes, not the {BODY} configured", rest.len());
    };
    // Warm-up: one whole answer.
    let mut warm = connect(port);
    request(&mut warm);
    answer(&mut warm, "warm-up");
    let before = proxy.rss_kib();

    let mut conns: Vec<TcpStream> = (0..CONNS).map(|_| connect(port)).collect();
    for s in &mut conns {
        request(s);
    }
    // Nobody reads for 2 s: the stall is the test's load, not a synchronisation.
    thread::sleep(Duration::from_secs(2));
    let during = proxy.rss_kib();
    let per_conn = during.saturating_sub(before) as f64 / CONNS as f64;
    eprintln!(
        "static handler, 1 MiB body, slow readers: RSS {before} KiB -> {during} KiB with \
         {CONNS} stalled connections ({per_conn:.1} KiB each)"
    );
    for (i, s) in conns.iter_mut().enumerate() {
        answer(s, &format!("connection {i}"));
    }
    assert!(per_conn < BOUND_KIB, "{per_conn:.1} KiB of RSS per stalled static connection");
}
