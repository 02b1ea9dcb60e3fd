//! Helpers shared by the integration tests.
#![allow(dead_code, unreachable_pub)]

use smartproxy_proxy_protocol::{Error, Header, ParseOptions, Parsed, parse_with};

pub const SIG: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

/// Parses with the default options and expects a complete header.
pub fn ok(buf: &[u8]) -> (Header, usize) {
    ok_with(buf, &ParseOptions::default())
}

pub fn ok_with(buf: &[u8], opts: &ParseOptions) -> (Header, usize) {
    match parse_with(buf, opts) {
        Ok(Parsed::Complete { header, consumed }) => (header, consumed),
        other => panic!("expected a complete header for {buf:02x?}, got {other:?}"),
    }
}

/// Parses with the default options and expects an error.
pub fn err(buf: &[u8]) -> Error {
    err_with(buf, &ParseOptions::default())
}

pub fn err_with(buf: &[u8], opts: &ParseOptions) -> Error {
    match parse_with(buf, opts) {
        Err(e) => e,
        other => panic!("expected an error for {buf:02x?}, got {other:?}"),
    }
}

/// Parses with the default options and expects "incomplete"; returns `needed`.
pub fn incomplete(buf: &[u8]) -> Option<usize> {
    match parse_with(buf, &ParseOptions::default()) {
        Ok(Parsed::Incomplete { needed }) => needed,
        other => panic!("expected incomplete for {buf:02x?}, got {other:?}"),
    }
}

pub fn tlv(kind: u8, value: &[u8]) -> Vec<u8> {
    let mut v = vec![kind];
    v.extend_from_slice(&(value.len() as u16).to_be_bytes());
    v.extend_from_slice(value);
    v
}

/// A v2 header with the given version/command byte, family byte and body; `len` from the body.
pub fn v2(vc: u8, fam: u8, body: &[u8]) -> Vec<u8> {
    let mut v = SIG.to_vec();
    v.push(vc);
    v.push(fam);
    v.extend_from_slice(&(body.len() as u16).to_be_bytes());
    v.extend_from_slice(body);
    v
}

/// Reference bitwise CRC-32C (independent of the crate's slice-by-8 one).
pub fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0x82F6_3B78 } else { crc >> 1 };
        }
    }
    !crc
}

/// Like [`v2`], with a CRC32C TLV appended and filled in.
pub fn v2_crc(vc: u8, fam: u8, body: &[u8]) -> Vec<u8> {
    let mut b = body.to_vec();
    b.extend_from_slice(&tlv(0x03, &[0; 4]));
    let mut h = v2(vc, fam, &b);
    let n = h.len();
    let c = crc32c(&h);
    h[n - 4..].copy_from_slice(&c.to_be_bytes());
    h
}

/// 192.168.0.1:56324 -> 192.168.0.11:443, the reference's example.
pub const IP4_BLOCK: [u8; 12] = [192, 168, 0, 1, 192, 168, 0, 11, 0xdc, 0x04, 0x01, 0xbb];

pub fn ip6_block() -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(&"2001:db8::1".parse::<std::net::Ipv6Addr>().unwrap().octets());
    v.extend_from_slice(&"2001:db8::2".parse::<std::net::Ipv6Addr>().unwrap().octets());
    v.extend_from_slice(&1234u16.to_be_bytes());
    v.extend_from_slice(&443u16.to_be_bytes());
    v
}

pub fn unix_block(src: &[u8], dst: &[u8]) -> Vec<u8> {
    let mut v = vec![0u8; 216];
    v[..src.len()].copy_from_slice(src);
    v[108..108 + dst.len()].copy_from_slice(dst);
    v
}
