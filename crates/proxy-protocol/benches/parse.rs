//! Parse and generate benchmarks, with the same inputs through `ppp` in the same run.
//!
//! `cargo bench -p smartproxy-proxy-protocol --bench parse -- --measurement-time 3`

use std::hint::black_box;
use std::net::SocketAddr;

use criterion::{Criterion, criterion_group, criterion_main};
use smartproxy_proxy_protocol::{Header, Parsed, parse};

fn v2_tcp4() -> Vec<u8> {
    Header::v2("192.168.0.1:56324".parse().unwrap(), "192.168.0.11:443".parse().unwrap())
        .unwrap()
        .to_vec()
        .unwrap()
}

fn v2_tlvs_crc() -> Vec<u8> {
    Header::v2("192.168.0.1:56324".parse().unwrap(), "192.168.0.11:443".parse().unwrap())
        .unwrap()
        .with_alpn(b"h2")
        .unwrap()
        .with_authority("www.example.com")
        .unwrap()
        .with_unique_id(b"0123456789abcdef")
        .unwrap()
        .with_ssl(0x01, 0, &[(0x21, b"TLSv1.3"), (0x23, b"TLS_AES_128_GCM_SHA256")])
        .unwrap()
        .with_crc32c(true)
        .to_vec()
        .unwrap()
}

fn check(buf: &[u8]) {
    assert!(matches!(parse(buf), Ok(Parsed::Complete { .. })));
    assert!(matches!(
        ppp::HeaderResult::parse(buf),
        ppp::HeaderResult::V1(Ok(_)) | ppp::HeaderResult::V2(Ok(_))
    ));
}

fn bench_parse(c: &mut Criterion) {
    let v1_tcp4 = b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n".to_vec();
    let v1_tcp6 = b"PROXY TCP6 2001:db8:85a3::8a2e:370:7334 2001:db8::2 56324 443\r\n".to_vec();
    let v2_tcp4 = v2_tcp4();
    let v2_tlvs_crc = v2_tlvs_crc();
    for (name, buf, v1) in [
        ("v1_tcp4", &v1_tcp4, true),
        ("v1_tcp6", &v1_tcp6, true),
        ("v2_tcp4", &v2_tcp4, false),
        ("v2_tlvs_crc32c", &v2_tlvs_crc, false),
    ] {
        check(buf);
        let mut g = c.benchmark_group(format!("parse/{name}"));
        g.bench_function("smartproxy", |b| b.iter(|| parse(black_box(buf))));
        if v1 {
            g.bench_function("ppp", |b| {
                b.iter(|| ppp::v1::Header::try_from(black_box(buf.as_slice())))
            });
        } else {
            g.bench_function("ppp", |b| {
                b.iter(|| ppp::v2::Header::try_from(black_box(buf.as_slice())))
            });
            // ppp parses TLVs lazily and never checks the CRC32C: add the walk for reference.
            g.bench_function("ppp+walk_tlvs", |b| {
                b.iter(|| {
                    let h = ppp::v2::Header::try_from(black_box(buf.as_slice())).unwrap();
                    h.tlvs().filter(|t| t.is_ok()).count()
                })
            });
        }
        g.finish();
    }
}

fn bench_generate(c: &mut Criterion) {
    let src: SocketAddr = "192.168.0.1:56324".parse().unwrap();
    let dst: SocketAddr = "192.168.0.11:443".parse().unwrap();

    let mut g = c.benchmark_group("generate/v1_tcp4");
    let mut out = Vec::with_capacity(128);
    g.bench_function("smartproxy", |b| {
        b.iter(|| {
            out.clear();
            Header::v1(black_box(src), black_box(dst)).unwrap().encode(&mut out).unwrap()
        })
    });
    g.bench_function("ppp", |b| {
        b.iter(|| {
            let (SocketAddr::V4(s), SocketAddr::V4(d)) = (black_box(src), black_box(dst)) else {
                unreachable!()
            };
            ppp::v1::Addresses::new_tcp4(*s.ip(), *d.ip(), s.port(), d.port()).to_string()
        })
    });
    g.finish();

    let mut g = c.benchmark_group("generate/v2_tcp4");
    g.bench_function("smartproxy", |b| {
        b.iter(|| {
            out.clear();
            Header::v2(black_box(src), black_box(dst)).unwrap().encode(&mut out).unwrap()
        })
    });
    g.bench_function("ppp", |b| {
        b.iter(|| {
            ppp::v2::Builder::with_addresses(
                0x21,
                ppp::v2::Protocol::Stream,
                (black_box(src), black_box(dst)),
            )
            .build()
            .unwrap()
        })
    });
    g.finish();

    let mut g = c.benchmark_group("generate/v2_tlvs_crc32c");
    g.bench_function("smartproxy", |b| {
        b.iter(|| {
            out.clear();
            Header::v2(black_box(src), black_box(dst))
                .unwrap()
                .with_alpn(b"h2")
                .unwrap()
                .with_authority("www.example.com")
                .unwrap()
                .with_crc32c(true)
                .encode(&mut out)
                .unwrap()
        })
    });
    g.bench_function("ppp", |b| {
        b.iter(|| {
            ppp::v2::Builder::with_addresses(
                0x21,
                ppp::v2::Protocol::Stream,
                (black_box(src), black_box(dst)),
            )
            .write_tlv(0x01, b"h2")
            .unwrap()
            .write_tlv(0x02, b"www.example.com")
            .unwrap()
            .build()
            .unwrap()
        })
    });
    g.finish();
}

criterion_group!(benches, bench_parse, bench_generate);
criterion_main!(benches);
