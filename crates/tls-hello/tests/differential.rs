//! Differential tests against tls-parser over ClientHellos from real clients (rustls in
//! process, openssl s_client and curl live and as fixtures), and over split, truncated and
//! mutated ones.

mod common;

use std::io::Read;
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use rustls::version::{TLS12, TLS13};
use smartproxy_tls_hello::{Error, Peek, PeekOptions, TlsVersion, peek};

fn check_against_reference(buf: &[u8]) {
    let mine = complete(buf);
    assert_eq!(mine.len, buf.len(), "the ClientHello takes the whole first flight");
    let reference = reference(buf).expect("tls-parser parses it");
    assert_eq!(view(&mine), reference);
}

fn rustls_hellos() -> Vec<(String, Vec<u8>)> {
    let mut v = Vec::new();
    for (sni, alpn, versions, label) in [
        ("example.com", &[b"h2".as_slice(), b"http/1.1"][..], &[&TLS13, &TLS12][..], "both"),
        ("a.b.example.org", &[b"http/1.1".as_slice()][..], &[&TLS13][..], "tls13"),
        ("tls12.example.net", &[][..], &[&TLS12][..], "tls12"),
        ("192.0.2.1", &[b"h2".as_slice()][..], &[&TLS13, &TLS12][..], "ip-no-sni"),
    ] {
        v.push((format!("rustls-{label}"), rustls_hello(sni, alpn, versions)));
    }
    v
}

#[test]
fn rustls_client_hellos_agree_with_tls_parser() {
    for (label, buf) in rustls_hellos() {
        check_against_reference(&buf);
        let h = complete(&buf);
        match label.as_str() {
            "rustls-both" => {
                assert_eq!(h.server_name(), Some("example.com"));
                assert_eq!(h.alpn_str().collect::<Vec<_>>(), ["h2", "http/1.1"]);
                assert_eq!(h.max_version(), Some(TlsVersion::Tls13));
                assert!(h.supported_versions.contains(&0x0304));
                assert!(h.supported_versions.contains(&0x0303));
            }
            "rustls-tls12" => {
                assert_eq!(h.server_name(), Some("tls12.example.net"));
                assert_eq!(h.max_version(), Some(TlsVersion::Tls12));
                assert!(h.alpn.is_empty());
            }
            "rustls-ip-no-sni" => assert_eq!(h.server_name(), None, "no SNI for an IP address"),
            _ => {}
        }
        assert!(h.cipher_suites_count() > 0);
        assert!(!h.offers_psk() && !h.offers_early_data());
    }
}

#[test]
fn resumption_flags() {
    let h13 = rustls_resumption_hello(&TLS13);
    check_against_reference(&h13);
    let h = complete(&h13);
    assert!(h.offers_psk(), "TLS 1.3 resumption offers a PSK");
    assert!(!h.psk_key_exchange_modes.is_empty());
    assert!(h.is_resumption());
    assert_eq!(h.extensions.last(), Some(&smartproxy_tls_hello::ext::PRE_SHARED_KEY));

    let h12 = rustls_resumption_hello(&TLS12);
    check_against_reference(&h12);
    let h = complete(&h12);
    assert!(h.offers_session_ticket(), "TLS 1.2 resumption presents a ticket");
    assert!(h.is_resumption());
    assert_eq!(h.max_version(), Some(TlsVersion::Tls12));

    if std::env::var_os("TLS_HELLO_WRITE_FIXTURES").is_some() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
        std::fs::write(dir.join("rustls-resume-tls13.bin"), &h13).unwrap();
    }
}

#[test]
fn fixtures_agree_with_tls_parser() {
    for name in FIXTURES {
        let buf = fixture(name);
        check_against_reference(&buf);
        let h = complete(&buf);
        let sni = h.server_name().map(str::to_owned);
        match *name {
            "openssl-s_client-tls13.bin" => {
                assert_eq!(sni.as_deref(), Some("openssl.example.com"));
                assert_eq!(h.alpn_str().collect::<Vec<_>>(), ["h2", "http/1.1"]);
                assert_eq!(h.max_version(), Some(TlsVersion::Tls13));
            }
            "openssl-s_client-tls12.bin" => {
                assert_eq!(sni.as_deref(), Some("tls12.example.com"));
                assert_eq!(h.max_version(), Some(TlsVersion::Tls12));
            }
            "openssl-s_client-nosni.bin" => assert_eq!(sni, None),
            "curl-h2.bin" => {
                assert_eq!(sni.as_deref(), Some("curl.example.com"));
                assert_eq!(h.alpn_str().collect::<Vec<_>>(), ["h2", "http/1.1"]);
            }
            "curl-http1.bin" => assert_eq!(h.alpn_str().collect::<Vec<_>>(), ["http/1.1"]),
            "rustls-resume-tls13.bin" => assert!(h.offers_psk()),
            _ => {}
        }
    }
}

/// Kills the child on drop, so a failing assertion does not leave it running.
struct Reap(Child);

impl Drop for Reap {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs `cmd` against a local listener and peeks at what it sends, reading as the bytes
/// arrive (several TCP segments are fine). A missing client fails the test, naming the
/// Debian package (`cargo xtask ci` installs it); it is never skipped.
fn capture_live(make: impl FnOnce(u16) -> Command) -> Vec<u8> {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut cmd = make(port);
    let program = cmd.get_program().to_string_lossy().into_owned();
    let child = cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).spawn();
    let child = match child {
        Ok(c) => c,
        Err(e) => panic!(
            "cannot run {:?} ({e}): install the Debian package of that name (openssl, curl)",
            cmd.get_program()
        ),
    };
    let _reap = Reap(child);
    listener.set_nonblocking(true).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut sock = loop {
        match listener.accept() {
            Ok((s, _)) => break s,
            // A bounded poll for the client's connection.
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => panic!("{program} made no connection to port {port} within 10 s: {e}"),
        }
    };
    sock.set_nonblocking(false).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    for _ in 0..1000 {
        match peek(&buf, &PeekOptions::default()).unwrap() {
            Peek::Complete(h) => {
                buf.truncate(h.len);
                return buf;
            }
            Peek::Incomplete { needed } => {
                assert!(needed.unwrap_or(1) >= 1);
                let n = sock.read(&mut chunk).unwrap();
                assert!(n > 0, "client closed before a full ClientHello");
                buf.extend_from_slice(&chunk[..n]);
            }
            _ => unreachable!(),
        }
    }
    panic!("no ClientHello after 1000 reads");
}

#[test]
fn live_openssl_s_client() {
    let buf = capture_live(|port| {
        let mut c = Command::new("openssl");
        c.args(["s_client", "-connect", &format!("127.0.0.1:{port}")]).args([
            "-servername",
            "live.example.com",
            "-alpn",
            "h2,http/1.1",
        ]);
        c
    });
    check_against_reference(&buf);
    let h = complete(&buf);
    assert_eq!(h.server_name(), Some("live.example.com"));
    assert_eq!(h.max_version(), Some(TlsVersion::Tls13));
}

#[test]
fn live_curl() {
    let buf = capture_live(|port| {
        let mut c = Command::new("curl");
        c.args(["-sk", "--max-time", "5", "--resolve"])
            .arg(format!("curl-live.example.com:{port}:127.0.0.1"))
            .arg(format!("https://curl-live.example.com:{port}/"));
        c
    });
    check_against_reference(&buf);
    assert_eq!(complete(&buf).server_name(), Some("curl-live.example.com"));
}

fn all_samples() -> Vec<Vec<u8>> {
    let mut v: Vec<Vec<u8>> = FIXTURES.iter().map(|f| fixture(f)).collect();
    v.extend(rustls_hellos().into_iter().map(|(_, b)| b));
    v
}

/// The fields that do not depend on framing.
fn unframed(h: &smartproxy_tls_hello::ClientHello) -> View {
    view(h)
}

#[test]
fn record_splits_at_every_offset() {
    for buf in all_samples() {
        let want = unframed(&complete(&buf));
        let hs_len = usize::from(u16::from_be_bytes([buf[3], buf[4]]));
        for cut in 1..hs_len {
            let split = split_records(&buf, &[cut]);
            let h = complete(&split);
            assert_eq!(h.records, 2, "cut {cut}");
            assert_eq!(h.len, split.len());
            assert_eq!(unframed(&h), want, "cut {cut}");
        }
        // One byte per record.
        let cuts: Vec<usize> = (1..hs_len).collect();
        let tiny = split_records(&buf, &cuts);
        let h = complete(&tiny);
        assert_eq!(h.records, hs_len);
        assert_eq!(unframed(&h), want);
    }
}

#[test]
fn every_prefix_is_incomplete_with_a_true_lower_bound() {
    for buf in all_samples() {
        for framed in [buf.clone(), split_records(&buf, &[3, 100])] {
            for n in 0..framed.len() {
                match peek(&framed[..n], &PeekOptions::default()) {
                    Ok(Peek::Incomplete { needed }) => {
                        let needed = needed.expect("known");
                        assert!(needed >= 1 && n + needed <= framed.len(), "prefix {n}: {needed}");
                    }
                    other => panic!("prefix {n} of {}: {other:?}", framed.len()),
                }
            }
            assert!(matches!(peek(&framed, &PeekOptions::default()), Ok(Peek::Complete(_))));
        }
    }
}

#[test]
fn trailing_bytes_are_left_alone() {
    let mut buf = fixture("curl-h2.bin");
    let len = buf.len();
    buf.extend_from_slice(b"\x17\x03\x03\x00\x05hello"); // e.g. early data
    assert_eq!(complete(&buf).len, len);
}

#[test]
fn bit_flips_never_panic_and_agree_when_both_accept() {
    let (mut agree, mut both_reject, mut differ) = (0usize, 0usize, 0usize);
    for buf in all_samples().into_iter().take(4) {
        for bit in 0..buf.len() * 8 {
            let mut m = buf.clone();
            m[bit / 8] ^= 1 << (bit % 8);
            let mine = peek(&m, &PeekOptions::default());
            let theirs = reference(&m);
            match (mine, theirs) {
                (Ok(Peek::Complete(h)), Some(r)) => {
                    if h.len == m.len() && h.records == 1 {
                        assert_eq!(view(&h), r, "bit {bit}");
                    }
                    agree += 1;
                }
                (Ok(Peek::Complete(_)), None) | (Err(_) | Ok(Peek::Incomplete { .. }), Some(_)) => {
                    differ += 1
                }
                _ => both_reject += 1,
            }
        }
    }
    // The two parsers differ in strictness (duplicate extensions, SNI characters, length
    // checks); the point is no panic and equal fields when both accept.
    assert!(agree > 0 && both_reject > 0, "{agree} {both_reject} {differ}");
}

#[test]
fn truncations_and_cuts_of_mutants_never_panic() {
    let buf = fixture("openssl-s_client-tls13.bin");
    for i in 0..buf.len() {
        let mut m = buf.clone();
        m[i] = 0xff;
        for n in [i, i + 1, m.len()] {
            let _ = peek(&m[..n.min(m.len())], &PeekOptions::default());
        }
        let mut m2 = buf.clone();
        m2.truncate(i);
        m2.extend_from_slice(&buf[i..].iter().rev().copied().collect::<Vec<_>>());
        let _ = peek(&m2, &PeekOptions::default());
    }
}

#[test]
fn garbage_is_refused_at_once() {
    let o = PeekOptions::default();
    assert_eq!(peek(b"G", &o), Err(Error::NotHandshake(b'G')));
    assert_eq!(peek(b"GET / HTTP/1.1\r\n", &o), Err(Error::NotHandshake(b'G')));
    assert_eq!(peek(b"\x17", &o), Err(Error::NotHandshake(0x17)));
    assert_eq!(peek(b"\x16\x02", &o), Err(Error::RecordVersion(0x0200)));
    assert_eq!(peek(b"\x16\x03\x09", &o), Err(Error::RecordVersion(0x0309)));
    assert_eq!(peek(b"\x16\x03\x01\x00\x00", &o), Err(Error::RecordLength(0)));
    assert_eq!(peek(b"\x16\x03\x01\x48\x01", &o), Err(Error::RecordLength(0x4801)));
    assert_eq!(peek(b"\x16\x03\x01\x00\x10\x02", &o), Err(Error::NotClientHello(2)));
    // Declared message larger than the cap: refused from the header, before the body.
    assert_eq!(
        peek(b"\x16\x03\x01\x40\x00\x01\x00\x40\x00", &o),
        Err(Error::TooLarge { max: 16 * 1024 })
    );
    let small = PeekOptions::default().with_max_bytes(100);
    assert_eq!(peek(&fixture("curl-h2.bin")[..9], &small), Err(Error::TooLarge { max: 100 }));
    assert!(matches!(peek(b"\x16\x03\x01\x00\x08\x01\x00\x00\x04", &o), Err(Error::Malformed(_))));
    // A second record of another content type in the middle of the message.
    let buf = split_records(&fixture("curl-h2.bin"), &[50]);
    let mut bad = buf.clone();
    bad[5 + 50] = 0x15;
    assert_eq!(peek(&bad, &o), Err(Error::NotHandshake(0x15)));
    assert_eq!(peek(b"", &o), Ok(Peek::Incomplete { needed: Some(5) }));
}

#[test]
fn many_tiny_records_hit_the_cap() {
    // 1-byte records: 6 bytes of input per handshake byte, so a 517-byte hello needs ~3 KiB.
    let buf = fixture("curl-h2.bin");
    let hs_len = usize::from(u16::from_be_bytes([buf[3], buf[4]]));
    let tiny = split_records(&buf, &(1..hs_len).collect::<Vec<_>>());
    assert!(matches!(
        peek(&tiny, &PeekOptions::default().with_max_bytes(2048)),
        Err(Error::TooLarge { max: 2048 })
    ));
    assert!(matches!(peek(&tiny, &PeekOptions::default()), Ok(Peek::Complete(_))));
}
