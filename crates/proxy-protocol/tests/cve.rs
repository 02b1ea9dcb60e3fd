//! One test per row of the reference's table of CVEs and notable bugs (§4).

mod common;

use std::net::SocketAddr;

use common::{IP4_BLOCK, SIG, err, incomplete, ip6_block, ok, tlv, unix_block, v2, v2_crc};
use smartproxy_proxy_protocol::{
    Addresses, Command, DEFAULT_MAX_V2_LEN, Error, Header, ParseOptions, Parsed, Tlv, Versions,
    parse,
};

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

#[test]
fn haproxy_50872daa_tlv_start_is_set_for_every_family_and_command() {
    // PROXY with UNSPEC, UDP and UNIX families, each followed by a TLV.
    for (fam, block) in [
        (0x00u8, vec![]),
        (0x12, IP4_BLOCK.to_vec()),
        (0x22, ip6_block()),
        (0x31, unix_block(b"/a", b"/b")),
        (0x32, unix_block(b"/a", b"/b")),
    ] {
        let mut body = block;
        body.extend(tlv(0x02, b"host.example"));
        let (h, _) = ok(&v2_crc(0x21, fam, &body));
        assert_eq!(h.authority(), Some("host.example"), "family {fam:#04x}");
        assert!(h.crc32c());
    }
    // LOCAL with and without an address block.
    ok(&v2(0x20, 0x00, &[]));
    ok(&v2(0x20, 0x11, &IP4_BLOCK));
    ok(&v2(0x20, 0x21, &ip6_block()));
}

#[test]
fn cve_2021_23351_v1_line_is_capped_at_107_bytes() {
    let mut flood = b"PROXY UNKNOWN ".to_vec();
    flood.resize(1 << 20, b'A');
    assert_eq!(err(&flood), Error::V1TooLong);
    // The verdict comes at byte 107, whatever follows.
    assert_eq!(err(&flood[..107]), Error::V1TooLong);
    assert_eq!(incomplete(&flood[..106]), None);
}

#[test]
fn cve_2021_23409_partial_header_is_incomplete_so_the_caller_can_apply_a_deadline() {
    // Sans-I/O: the parser never waits; it reports what is missing and the caller's deadline
    // (engine: header timeout) ends slow senders.
    let full = v2(0x21, 0x11, &IP4_BLOCK);
    for k in 0..full.len() {
        assert!(matches!(parse(&full[..k]), Ok(Parsed::Incomplete { .. })));
    }
}

#[test]
fn go_proxyproto_69_needed_never_asks_past_the_header() {
    // A server-speaks-first protocol must not be blocked by reading more than the header.
    let mut full = v2(0x21, 0x11, &IP4_BLOCK);
    full.extend(b"220 banner");
    for k in 0..28 {
        let needed = match parse(&full[..k]) {
            Ok(Parsed::Incomplete { needed: Some(n) }) => n,
            other => panic!("{other:?}"),
        };
        assert!(k + needed <= 28, "prefix {k} asks for {needed}");
    }
    assert_eq!(incomplete(&full[..16]), Some(12), "exactly the rest once len is known");
}

#[test]
fn gate_936_defaults_are_strict() {
    let d = ParseOptions::default();
    assert_eq!(d.max_v2_len, DEFAULT_MAX_V2_LEN);
    assert_eq!(d.max_v2_len, 4096);
    assert_eq!(d.versions, Versions::Any);
    // No "use the header if present" mode: data without a header is an error, not a pass-through.
    assert_eq!(err(b"GET / HTTP/1.1\r\n"), Error::NotProxyProtocol { offset: 0 });
}

#[test]
fn cve_2019_14243_udp4_with_len_0_is_rejected_without_reading_addresses() {
    let mut b = SIG.to_vec();
    b.extend_from_slice(&[0x21, 0x12, 0x00, 0x00]);
    assert_eq!(err(&b), Error::V2AddressBlock { len: 0, block: 12 });
}

#[test]
fn cve_2022_41881_deeply_nested_ssl_tlvs_do_not_recurse() {
    // 10000 SSL TLVs nested inside each other's sub-TLV area: only one level is walked.
    let mut inner: Vec<u8> = Vec::new();
    for _ in 0..10_000 {
        if inner.len() + 8 > 60_000 {
            break;
        }
        let mut v = vec![0x01, 0, 0, 0, 0];
        v.extend(&inner);
        inner = tlv(0x20, &v);
    }
    let mut body = IP4_BLOCK.to_vec();
    body.extend(&inner);
    let opts = ParseOptions::default().max_v2_len(65535);
    let r = smartproxy_proxy_protocol::parse_with(&v2(0x21, 0x11, &body), &opts);
    let Ok(Parsed::Complete { header, .. }) = r else { panic!("{r:?}") };
    assert_eq!(header.ssl().unwrap().sub_tlvs().count(), 1);
}

#[test]
fn netty_9201_tlv_length_is_validated_before_it_is_used() {
    // A TLV claiming 65535 bytes inside a 20-byte header: rejected, nothing retained.
    let mut body = IP4_BLOCK.to_vec();
    body.extend_from_slice(&[0x01, 0xff, 0xff, b'h']);
    assert_eq!(err(&v2(0x21, 0x11, &body)), Error::TlvOverrun { offset: 28 });
}

#[test]
fn cve_2024_23327_local_header_has_no_addresses_and_re_encodes() {
    let (h, _) = ok(&v2(0x20, 0x11, &IP4_BLOCK));
    assert_eq!(h.command(), Command::Local);
    assert_eq!(h.source(), None);
    assert_eq!(h.destination(), None);
    assert_eq!(h.addresses(), &Addresses::Unspec);
    // Building the upstream header from it works and gives a pure LOCAL.
    assert_eq!(h.to_vec().unwrap(), v2(0x20, 0x00, &[]));
}

#[test]
fn cve_2024_23325_ipv6_addresses_are_plain_values() {
    // No socket or OS call is involved in representing an IPv6 address from a header.
    let (h, _) = ok(b"PROXY TCP6 ::1 2001:db8::1 1 2\r\n");
    assert_eq!(h.source(), Some(sa("[::1]:1")));
    let (h, _) = ok(&v2(0x21, 0x21, &ip6_block()));
    assert!(matches!(h.addresses(), Addresses::Ipv6 { .. }));
}

#[test]
fn cve_2024_23324_non_utf8_tlv_values_are_not_exposed_as_text() {
    let mut body = IP4_BLOCK.to_vec();
    body.extend(tlv(Tlv::AUTHORITY, b"ok\xff"));
    assert_eq!(err(&v2(0x21, 0x11, &body)), Error::InvalidAuthority);
    let mut ssl = vec![0x03, 0, 0, 0, 0];
    ssl.extend(tlv(0x22, b"cn\xff\xfe"));
    let mut body = IP4_BLOCK.to_vec();
    body.extend(tlv(Tlv::SSL, &ssl));
    body.extend(tlv(Tlv::AWS, b"\x01vpce\x00x"));
    let (h, _) = ok(&v2(0x21, 0x11, &body));
    assert_eq!(h.ssl().unwrap().cn(), None, "not UTF-8: no &str");
    assert_eq!(h.aws_vpce_id(), None, "outside [A-Za-z0-9-]");
}

#[test]
fn cve_2026_47692_len_is_computed_from_the_bytes_written() {
    let h = Header::v2(sa("1.2.3.4:1"), sa("5.6.7.8:2"))
        .unwrap()
        .with_tlv(0xE1, &[0xAB; 1000])
        .unwrap()
        .with_tlv(0xE2, &[])
        .unwrap()
        .with_crc32c(true);
    let mut out = b"prefix".to_vec();
    let n = h.encode(&mut out).unwrap();
    let b = &out[6..];
    assert_eq!(n, b.len());
    assert_eq!(usize::from(u16::from_be_bytes([b[14], b[15]])), b.len() - 16);
    assert_eq!(ok(b), (h, n));
}

#[test]
fn haproxy_488ee7fb_tlvs_after_len_are_application_data() {
    let mut buf = v2(0x21, 0x11, &IP4_BLOCK);
    buf.extend(tlv(0x05, b"injected"));
    let (h, n) = ok(&buf);
    assert_eq!(n, 28);
    assert_eq!(h.unique_id(), None);
    // And a header whose TLVs end short of len is refused.
    let mut body = IP4_BLOCK.to_vec();
    body.extend(tlv(0x05, b"x"));
    body.push(0);
    assert_eq!(err(&v2(0x21, 0x11, &body)), Error::TlvOverrun { offset: 32 });
}

#[test]
fn haproxy_02c88036_local_with_addresses_and_tlvs_is_accepted() {
    // Dovecot said "Invalid TLV", RabbitMQ crashed: LOCAL with a family, a block and TLVs.
    let mut body = IP4_BLOCK.to_vec();
    body.extend(tlv(0x04, &[0; 3]));
    let (h, n) = ok(&v2(0x20, 0x11, &body));
    assert_eq!(n, 16 + body.len());
    assert_eq!(h.command(), Command::Local);
    let (h, _) = ok(&v2(0x20, 0x21, &ip6_block()));
    assert_eq!(h.command(), Command::Local);
}

#[test]
fn haproxy_2d74dd7e_crc_tlv_is_reserved_whole_or_not_at_all() {
    // A header that fits in 65535 bytes without the CRC32C TLV but not with it.
    let h = Header::v2(sa("1.2.3.4:1"), sa("5.6.7.8:2"))
        .unwrap()
        .with_tlv(0xE1, &vec![0; 65535 - 12 - 3])
        .unwrap();
    assert_eq!(h.to_vec().unwrap().len(), 65551);
    let with_crc = h.with_crc32c(true);
    let mut out = Vec::with_capacity(8);
    assert_eq!(with_crc.encode(&mut out), Err(Error::EncodeTooLarge(65542)));
    assert!(out.is_empty());
}

#[test]
fn ppp_b7d57d59_input_ending_in_cr_never_panics() {
    for s in [
        &b"\r"[..],
        b"PROXY\r",
        b"PROXY \r",
        b"PROXY TCP4\r",
        b"PROXY TCP4 1.2.3.4\r",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r",
        b"PROXY UNKNOWN\r",
        b"PROXY UNKNOWN foo\r",
        b"\r\n\r\n\0\r\nQUIT\n\r",
    ] {
        let _ = parse(s);
    }
    assert_eq!(incomplete(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r"), Some(1));
}

#[test]
fn ppp_775977ba_ssl_and_netns_types_are_hex() {
    assert_eq!(Tlv::SSL, 0x20);
    assert_eq!(Tlv::NETNS, 0x30);
    let mut body = IP4_BLOCK.to_vec();
    body.extend(tlv(20, b"not ssl"));
    body.extend(tlv(30, b"not netns"));
    let (h, _) = ok(&v2(0x21, 0x11, &body));
    assert!(h.ssl().is_none());
    assert!(h.netns().is_none());
}

#[test]
fn proximyst_12_missing_lf_and_truncated_v2_are_incomplete_not_panics() {
    assert_eq!(incomplete(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r"), Some(1));
    let full = v2(0x21, 0x21, &ip6_block());
    for k in 0..full.len() {
        assert!(matches!(parse(&full[..k]), Ok(Parsed::Incomplete { needed: Some(_) })));
    }
}

#[test]
fn nginx_1400_header_spanning_segments_is_reassembled() {
    let full = b"PROXY TCP6 2001:db8::1 2001:db8::2 1234 443\r\n";
    let (whole, n) = ok(full);
    for k in 1..full.len() {
        assert!(matches!(parse(&full[..k]), Ok(Parsed::Incomplete { .. })));
    }
    assert_eq!(n, full.len());
    assert_eq!(whole.source(), Some(sa("[2001:db8::1]:1234")));
}

#[test]
fn nginx_1609_mixed_family_v1_lines_are_rejected_and_we_send_tcp6_mapped() {
    assert!(matches!(err(b"PROXY TCP6 2001:db8::1 192.0.2.1 1 2\r\n"), Error::V1Ipv6 { .. }));
    let h = Header::v1(sa("[2001:db8::1]:1"), sa("192.0.2.1:2")).unwrap();
    assert_eq!(h.to_vec().unwrap(), b"PROXY TCP6 2001:db8::1 ::ffff:192.0.2.1 1 2\r\n");
}

#[test]
fn ntirpc_301_header_is_only_accepted_at_byte_0() {
    assert_eq!(
        err(b"hello PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n"),
        Error::NotProxyProtocol { offset: 0 }
    );
    let mut b = b"x".to_vec();
    b.extend(v2(0x21, 0x11, &IP4_BLOCK));
    assert_eq!(err(&b), Error::NotProxyProtocol { offset: 0 });
    // A second header right after the first is application data.
    let two = b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\nPROXY TCP4 6.6.6.6 6.6.6.6 6 6\r\n";
    let (h, n) = ok(two);
    assert_eq!((h.source(), n), (Some(sa("1.2.3.4:1")), 32));
}

#[test]
fn haproxy_2450_no_optional_mode_non_proxy_input_is_an_error() {
    for data in [&b"\x16\x03\x01\x02\x00"[..], b"SSH-2.0-x\r\n", b"EHLO x\r\n"] {
        assert_eq!(err(data), Error::NotProxyProtocol { offset: 0 });
    }
}
