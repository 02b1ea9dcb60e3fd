//! ClientHello peek speed on real first flights.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use smartproxy_tls_hello::{Peek, PeekOptions, peek};

const CURL: &[u8] = include_bytes!("../tests/fixtures/curl-h2.bin");
const OPENSSL: &[u8] = include_bytes!("../tests/fixtures/openssl-s_client-tls13.bin");

/// The same ClientHello re-framed in records of at most `size` handshake bytes.
fn reframe(buf: &[u8], size: usize) -> Vec<u8> {
    let len = usize::from(u16::from_be_bytes([buf[3], buf[4]]));
    let mut out = Vec::new();
    for chunk in buf[5..5 + len].chunks(size) {
        out.extend_from_slice(&buf[..3]);
        out.extend_from_slice(&(chunk.len() as u16).to_be_bytes());
        out.extend_from_slice(chunk);
    }
    out
}

fn bench(c: &mut Criterion) {
    let opts = PeekOptions::default();
    let split = reframe(CURL, 100);
    for (name, buf) in
        [("curl_517B", CURL), ("openssl_343B", OPENSSL), ("curl_6_records", &split[..])]
    {
        assert!(matches!(peek(buf, &opts), Ok(Peek::Complete(_))));
        c.bench_function(&format!("peek/{name}"), |b| b.iter(|| peek(black_box(buf), &opts)));
    }
    c.bench_function("peek/incomplete_half", |b| {
        b.iter(|| peek(black_box(&CURL[..CURL.len() / 2]), &opts))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
