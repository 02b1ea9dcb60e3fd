//! Streaming: every split point of a set of valid (and invalid) headers gives the same final
//! result as the whole input at once.

mod common;

use common::{IP4_BLOCK, ip6_block, tlv, unix_block, v2, v2_crc};
use smartproxy_proxy_protocol::{Parsed, parse};

fn valid_headers() -> Vec<Vec<u8>> {
    let six = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff";
    let mut tlvs = IP4_BLOCK.to_vec();
    tlvs.extend(tlv(0x01, b"h2"));
    tlvs.extend(tlv(0x02, b"example.com"));
    tlvs.extend(tlv(
        0x20,
        &[0x01, 0, 0, 0, 0, 0x21, 0, 7, b'T', b'L', b'S', b'v', b'1', b'.', b'3'],
    ));
    tlvs.extend(tlv(0xEE, &[1, 2, 3, 4, 5]));
    let mut aws = tlv(0x03, &[0xbc, 0xe5, 0x95, 0x1f]);
    aws.extend(tlv(0x04, &[0; 74]));
    vec![
        b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n".to_vec(),
        b"PROXY TCP4 0.0.0.0 0.0.0.0 0 0\r\n".to_vec(),
        b"PROXY TCP6 2001:db8::1 ::ffff:1.2.3.4 1 65535\r\n".to_vec(),
        format!("PROXY TCP6 {six} {six} 65535 65535\r\n").into_bytes(),
        b"PROXY UNKNOWN\r\n".to_vec(),
        format!("PROXY UNKNOWN {six} {six} 65535 65535\r\n").into_bytes(),
        v2(0x21, 0x11, &IP4_BLOCK),
        v2(0x21, 0x12, &IP4_BLOCK),
        v2(0x21, 0x21, &ip6_block()),
        v2(0x21, 0x32, &unix_block(b"/a", b"/b")),
        v2(0x20, 0x00, &[]),
        v2(0x20, 0x11, &aws),
        v2_crc(0x21, 0x11, &tlvs),
        v2_crc(0x21, 0x00, &tlv(0x05, b"id")),
    ]
}

#[test]
fn every_split_point_of_valid_headers_is_incomplete_then_complete() {
    for h in valid_headers() {
        let mut buf = h.clone();
        buf.extend_from_slice(b"\x00payload after the header");
        let whole = parse(&buf).unwrap();
        let Parsed::Complete { consumed, .. } = &whole else { panic!("{h:02x?}: {whole:?}") };
        assert_eq!(*consumed, h.len());
        for k in 0..h.len() {
            match parse(&buf[..k]) {
                Ok(Parsed::Incomplete { needed }) => {
                    if let Some(n) = needed {
                        assert!(n >= 1 && k + n <= h.len(), "prefix {k} of {h:02x?}: needed {n}");
                    }
                }
                other => panic!("prefix {k} of {h:02x?}: {other:?}"),
            }
        }
        // Two-segment delivery: first k bytes, then the rest, gives the same header.
        for k in 0..=buf.len() {
            let mut acc = buf[..k].to_vec();
            let first = parse(&acc).unwrap();
            if k < h.len() {
                assert!(matches!(first, Parsed::Incomplete { .. }));
            }
            acc.extend_from_slice(&buf[k..]);
            assert_eq!(parse(&acc).unwrap(), whole);
        }
    }
}

#[test]
fn every_split_point_of_invalid_headers_is_incomplete_or_the_same_error() {
    let mut bad_crc = v2_crc(0x21, 0x11, &IP4_BLOCK);
    bad_crc[20] ^= 1;
    let cases: Vec<Vec<u8>> = vec![
        b"PROXY TCP4 01.2.3.4 5.6.7.8 1 2\r\n".to_vec(),
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 65536\r\n".to_vec(),
        b"PROXY TCP6 1.2.3.4 5.6.7.8 1 2\r\n".to_vec(),
        b"PROXY TCP6 ::1::2 ::1 1 2\r\n".to_vec(),
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n".to_vec(),
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\r".to_vec(),
        [b"PROXY UNKNOWN ".as_slice(), &[b'x'; 120]].concat(),
        v2(0x31, 0x11, &IP4_BLOCK),
        v2(0x22, 0x11, &IP4_BLOCK),
        v2(0x21, 0x13, &IP4_BLOCK),
        v2(0x21, 0x21, &IP4_BLOCK),
        [v2(0x21, 0x11, &IP4_BLOCK), vec![0]].concat(),
        v2(0x21, 0x11, &[IP4_BLOCK.as_slice(), &[1, 0, 9, 1]].concat()),
        bad_crc,
    ];
    for c in cases {
        let mut c = c;
        if c.len() > 16
            && c[0] == b'\r'
            && c.len() != 16 + usize::from(u16::from_be_bytes([c[14], c[15]]))
        {
            // The appended stray byte: fix len so it is inside the header.
            let len = (c.len() - 16) as u16;
            c[14..16].copy_from_slice(&len.to_be_bytes());
        }
        let whole = parse(&c).unwrap_err();
        let mut seen_error_at = None;
        for k in 0..c.len() {
            match parse(&c[..k]) {
                Ok(Parsed::Incomplete { .. }) => {
                    assert!(seen_error_at.is_none(), "incomplete after error")
                }
                Err(e) => {
                    assert_eq!(e, whole, "prefix {k} of {c:02x?}");
                    seen_error_at.get_or_insert(k);
                }
                other => panic!("prefix {k} of {c:02x?}: {other:?}"),
            }
        }
    }
}

#[test]
fn errors_come_at_the_first_impossible_byte() {
    // (input, length of the shortest prefix that is already an error)
    let cases: [(&[u8], usize); 6] = [
        (b"PROXY TCP4 01.2.3.4 5.6.7.8 1 2\r\n", 13),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 65536\r\n", 34),
        (b"PROXY TCP6 1.2.3.4 5.6.7.8 1 2\r\n", 13),
        (b"XPROXY", 1),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\r", 32),
        (b"\r\n\r\n\0\r\nQUIT\n\x31", 13),
    ];
    for (input, at) in cases {
        assert!(matches!(parse(&input[..at - 1]), Ok(Parsed::Incomplete { .. })), "{input:?}");
        assert!(parse(&input[..at]).is_err(), "{input:?} at {at}");
    }
}
