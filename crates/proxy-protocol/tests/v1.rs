//! Version 1 rules (reference §1.2), one test per rule.

mod common;

use std::net::SocketAddr;

use common::{err, err_with, incomplete, ok};
use smartproxy_proxy_protocol::{
    Addresses, Command, Error, Header, ParseOptions, Transport, V1_MAX_LEN, Version, Versions,
};

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

#[test]
fn v1_tcp4_parses_addresses_in_source_destination_order() {
    let (h, n) = ok(b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n");
    assert_eq!(n, 47);
    assert_eq!(h.version(), Version::V1);
    assert_eq!(h.command(), Command::Proxy);
    assert_eq!(h.transport(), Transport::Stream);
    assert_eq!(h.source(), Some(sa("192.168.0.1:56324")));
    assert_eq!(h.destination(), Some(sa("192.168.0.11:443")));
    assert!(matches!(h.addresses(), Addresses::Ipv4 { .. }));
    assert_eq!(h.tlvs().count(), 0);
}

#[test]
fn v1_tcp6_parses_addresses() {
    let (h, n) = ok(b"PROXY TCP6 2001:db8::1 2001:DB8::2 1 65535\r\n");
    assert_eq!(n, 44);
    assert_eq!(h.source(), Some(sa("[2001:db8::1]:1")));
    assert_eq!(h.destination(), Some(sa("[2001:db8::2]:65535")));
}

#[test]
fn v1_tcp6_accepts_upper_and_lower_case_hex() {
    let (a, _) = ok(b"PROXY TCP6 ABCD:EF01::1 ::1 1 2\r\n");
    let (b, _) = ok(b"PROXY TCP6 abcd:ef01::1 ::1 1 2\r\n");
    assert_eq!(a, b);
}

#[test]
fn v1_tcp6_accepts_ipv4_mapped_dotted_quad_as_haproxy_writes_it() {
    let (h, _) = ok(b"PROXY TCP6 ::ffff:192.0.2.1 ::1 80 8080\r\n");
    assert_eq!(h.source(), Some(sa("[::ffff:192.0.2.1]:80")));
}

#[test]
fn v1_tcp6_full_and_compressed_forms() {
    ok(b"PROXY TCP6 1:2:3:4:5:6:7:8 :: 1 2\r\n");
    ok(b"PROXY TCP6 1:: ::8 1 2\r\n");
    ok(b"PROXY TCP6 1:2:3:4:5:6:7:: 1::2:3:4:5:6:7 1 2\r\n");
    ok(b"PROXY TCP6 1:2:3:4:5:6:1.2.3.4 ::1.2.3.4 1 2\r\n");
}

#[test]
fn v1_tcp6_rejects_more_than_128_bits_or_two_gaps() {
    assert!(matches!(
        err(b"PROXY TCP6 1:2:3:4:5:6:7:8:9 ::1 1 2\r\n"),
        Error::V1Ipv6 { offset: 26 }
    ));
    assert!(matches!(err(b"PROXY TCP6 1::2::3 ::1 1 2\r\n"), Error::V1Ipv6 { offset: 16 }));
    assert!(matches!(err(b"PROXY TCP6 1:2:3:4:5:6:7:8:: ::1 1 2\r\n"), Error::V1Ipv6 { .. }));
    assert!(matches!(err(b"PROXY TCP6 12345:: ::1 1 2\r\n"), Error::V1Ipv6 { offset: 15 }));
    assert!(matches!(err(b"PROXY TCP6 1:2:3 ::1 1 2\r\n"), Error::V1Ipv6 { offset: 16 }));
    assert!(matches!(err(b"PROXY TCP6 :1::2 ::1 1 2\r\n"), Error::V1Ipv6 { offset: 12 }));
    assert!(matches!(err(b"PROXY TCP6 1::2: ::1 1 2\r\n"), Error::V1Ipv6 { .. }));
}

#[test]
fn v1_unknown_shortest_line_is_15_bytes() {
    let (h, n) = ok(b"PROXY UNKNOWN\r\n");
    assert_eq!(n, 15);
    assert_eq!(h, Header::v1_unknown());
    assert_eq!(h.command(), Command::Local);
    assert_eq!(h.source(), None);
    assert_eq!(h.addresses(), &Addresses::Unspec);
}

#[test]
fn v1_unknown_ignores_the_rest_of_the_line() {
    let (h, n) = ok(b"PROXY UNKNOWN ffff::1 ::1 1 2\r\nabc");
    assert_eq!(n, 31);
    assert_eq!(h, Header::v1_unknown());
}

#[test]
fn v1_unknown_worst_case_107_bytes_accepted() {
    let six = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff";
    let line = format!("PROXY UNKNOWN {six} {six} 65535 65535\r\n");
    assert_eq!(line.len(), V1_MAX_LEN);
    let (_, n) = ok(line.as_bytes());
    assert_eq!(n, 107);
}

#[test]
fn v1_line_lengths_match_the_reference_table() {
    assert_eq!(ok(b"PROXY TCP4 0.0.0.0 0.0.0.0 0 0\r\n").1, 32);
    assert_eq!(ok(b"PROXY TCP4 255.255.255.255 255.255.255.255 65535 65535\r\n").1, 56);
    let six = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff";
    assert_eq!(ok(format!("PROXY TCP6 {six} {six} 65535 65535\r\n").as_bytes()).1, 104);
}

#[test]
fn v1_no_crlf_within_107_bytes_is_rejected_at_byte_107() {
    let mut line = b"PROXY UNKNOWN ".to_vec();
    line.resize(106, b'a');
    assert_eq!(incomplete(&line), None);
    line.push(b'a');
    assert_eq!(err(&line), Error::V1TooLong);
    // CR as byte 107 would put the LF at byte 108.
    let mut line = b"PROXY UNKNOWN ".to_vec();
    line.resize(106, b'a');
    line.push(b'\r');
    assert_eq!(err(&line), Error::V1TooLong);
}

#[test]
fn v1_tcp6_line_longer_than_107_bytes_is_rejected() {
    // Two longest dotted-quad IPv6 forms make a 116-byte line: grammatical, but over the cap.
    let a = "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255";
    let line = format!("PROXY TCP6 {a} {a} 65535 65535\r\n");
    assert_eq!(line.len(), 116);
    assert_eq!(err(line.as_bytes()), Error::V1TooLong);
    incomplete(&line.as_bytes()[..106]);
    assert_eq!(err(&line.as_bytes()[..107]), Error::V1TooLong);
    // 107 bytes exactly is fine.
    let b = "ffff:ffff:ffff:ffff:ffff:ffff:1.2.3.4";
    let line = format!("PROXY TCP6 {a} {b} 65535 6553\r\n");
    assert_eq!(line.len(), 107);
    assert_eq!(ok(line.as_bytes()).1, 107);
}

#[test]
fn v1_lone_cr_is_rejected() {
    assert_eq!(err(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\rX"), Error::V1LoneCr { offset: 30 });
    assert_eq!(err(b"PROXY UNKNOWN\rX"), Error::V1LoneCr { offset: 13 });
}

#[test]
fn v1_lone_lf_is_rejected() {
    assert!(matches!(err(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n"), Error::V1Syntax { offset: 30, .. }));
    // In UNKNOWN an LF is an ordinary byte: the line still needs its CRLF.
    assert_eq!(incomplete(b"PROXY UNKNOWN\n"), None);
}

#[test]
fn v1_double_space_is_rejected() {
    assert!(matches!(err(b"PROXY  TCP4 1.2.3.4 5.6.7.8 1 2\r\n"), Error::V1Protocol { offset: 6 }));
    assert!(matches!(
        err(b"PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n"),
        Error::V1Syntax { offset: 11, .. }
    ));
    assert!(matches!(
        err(b"PROXY TCP4 1.2.3.4  5.6.7.8 1 2\r\n"),
        Error::V1Syntax { offset: 19, .. }
    ));
    assert!(matches!(
        err(b"PROXY TCP4 1.2.3.4 5.6.7.8 1  2\r\n"),
        Error::V1Syntax { offset: 29, .. }
    ));
}

#[test]
fn v1_tab_instead_of_space_is_rejected() {
    assert!(matches!(
        err(b"PROXY\tTCP4 1.2.3.4 5.6.7.8 1 2\r\n"),
        Error::NotProxyProtocol { offset: 5 }
    ));
    assert!(matches!(
        err(b"PROXY TCP4\t1.2.3.4 5.6.7.8 1 2\r\n"),
        Error::V1Syntax { offset: 10, .. }
    ));
}

#[test]
fn v1_trailing_space_before_crlf_is_rejected() {
    assert!(matches!(
        err(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n"),
        Error::V1Syntax { offset: 30, .. }
    ));
}

#[test]
fn v1_trailing_tokens_are_rejected() {
    assert!(matches!(
        err(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n"),
        Error::V1Syntax { offset: 30, .. }
    ));
}

#[test]
fn v1_proxyjunk_is_rejected() {
    assert!(matches!(err(b"PROXYjunk"), Error::NotProxyProtocol { offset: 5 }));
}

#[test]
fn v1_unknown_protocol_token_is_rejected() {
    assert_eq!(err(b"PROXY TCP5 "), Error::V1Protocol { offset: 9 });
    assert_eq!(err(b"PROXY tcp4 "), Error::V1Protocol { offset: 6 });
    assert_eq!(err(b"PROXY UDP4 "), Error::V1Protocol { offset: 7 });
    assert_eq!(err(b"PROXY UNKNOWX"), Error::V1Protocol { offset: 12 });
}

#[test]
fn v1_leading_zero_in_octet_is_rejected() {
    assert_eq!(err(b"PROXY TCP4 01.2.3.4 5.6.7.8 1 2\r\n"), Error::V1LeadingZero { offset: 12 });
    assert_eq!(err(b"PROXY TCP4 1.2.3.4 5.6.7.00 1 2\r\n"), Error::V1LeadingZero { offset: 26 });
}

#[test]
fn v1_leading_zero_in_port_is_rejected() {
    assert_eq!(err(b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n"), Error::V1LeadingZero { offset: 28 });
    assert_eq!(err(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 00\r\n"), Error::V1LeadingZero { offset: 30 });
}

#[test]
fn v1_zero_port_and_zero_octets_are_valid() {
    let (h, _) = ok(b"PROXY TCP4 0.0.0.0 0.0.0.0 0 0\r\n");
    assert_eq!(h.source(), Some(sa("0.0.0.0:0")));
}

#[test]
fn v1_port_above_65535_is_rejected_at_the_digit() {
    assert_eq!(err(b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n"), Error::V1PortRange { offset: 31 });
    assert_eq!(err(b"PROXY TCP4 1.2.3.4 5.6.7.8 655350"), Error::V1PortRange { offset: 32 });
    assert_eq!(err(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 99999"), Error::V1PortRange { offset: 33 });
}

#[test]
fn v1_octet_above_255_is_rejected_at_the_digit() {
    assert_eq!(err(b"PROXY TCP4 256."), Error::V1OctetRange { offset: 13 });
    assert_eq!(err(b"PROXY TCP4 1.2.3.2555 "), Error::V1OctetRange { offset: 20 });
}

#[test]
fn v1_signed_or_empty_port_is_rejected() {
    assert!(matches!(
        err(b"PROXY TCP4 1.2.3.4 5.6.7.8 +1 2\r\n"),
        Error::V1Syntax { offset: 27, .. }
    ));
    assert!(matches!(
        err(b"PROXY TCP4 1.2.3.4 5.6.7.8 -1 2\r\n"),
        Error::V1Syntax { offset: 27, .. }
    ));
    assert!(matches!(
        err(b"PROXY TCP4 1.2.3.4 5.6.7.8  2\r\n"),
        Error::V1Syntax { offset: 27, .. }
    ));
}

#[test]
fn v1_ipv6_in_tcp4_is_rejected() {
    assert!(matches!(err(b"PROXY TCP4 ::1 ::1 1 2\r\n"), Error::V1Syntax { offset: 11, .. }));
}

#[test]
fn v1_ipv4_in_tcp6_is_rejected() {
    assert_eq!(err(b"PROXY TCP6 1.2.3.4 5.6.7.8 1 2\r\n"), Error::V1Ipv6 { offset: 12 });
}

#[test]
fn v1_mixed_families_nginx_style_are_rejected() {
    // nginx #1609: `TCP6 <v6> <v4>`. The grammar wants both addresses of the token's family.
    assert_eq!(err(b"PROXY TCP6 2001:db8::1 192.0.2.1 1 2\r\n"), Error::V1Ipv6 { offset: 26 });
    assert_eq!(
        err(b"PROXY TCP4 192.0.2.1 2001:db8::1 1 2\r\n"),
        Error::V1OctetRange { offset: 24 }
    );
}

#[test]
fn v1_zone_id_is_rejected() {
    assert!(matches!(
        err(b"PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n"),
        Error::V1Syntax { offset: 18, .. }
    ));
}

#[test]
fn v1_bytes_after_crlf_are_not_consumed() {
    let buf = b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\nPROXY TCP4 9.9.9.9 9.9.9.9 9 9\r\n";
    let (h, n) = ok(buf);
    assert_eq!(n, 32);
    assert_eq!(h.source(), Some(sa("1.2.3.4:1")));
}

#[test]
fn v1_rejects_at_the_first_bad_byte_without_waiting() {
    // No CRLF anywhere, yet the error comes at once.
    assert_eq!(err(b"PROXY TCP4 1.2.3.4 5.6.7.8 70000"), Error::V1PortRange { offset: 31 });
    assert!(matches!(err(b"PROXY X"), Error::V1Protocol { offset: 6 }));
    assert!(matches!(err(b"PX"), Error::NotProxyProtocol { offset: 1 }));
}

#[test]
fn v1_incomplete_for_every_valid_prefix() {
    assert_eq!(incomplete(b""), Some(15));
    assert_eq!(incomplete(b"PRO"), Some(3));
    assert_eq!(incomplete(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2"), Some(2));
    assert_eq!(incomplete(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r"), Some(1));
}

#[test]
fn v1_only_option_rejects_v2_at_first_byte() {
    let opts = ParseOptions::default().versions(Versions::V1Only);
    assert_eq!(err_with(b"\r", &opts), Error::VersionNotAllowed(Version::V2));
    let opts = ParseOptions::default().versions(Versions::V2Only);
    assert_eq!(err_with(b"P", &opts), Error::VersionNotAllowed(Version::V1));
}

#[test]
fn v1_generator_writes_canonical_lines() {
    let h = Header::v1(sa("192.168.0.1:56324"), sa("192.168.0.11:443")).unwrap();
    assert_eq!(h.to_vec().unwrap(), b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n");
    let h = Header::v1(sa("[2001:db8::1]:1"), sa("[::1]:0")).unwrap();
    assert_eq!(h.to_vec().unwrap(), b"PROXY TCP6 2001:db8::1 ::1 1 0\r\n");
    assert_eq!(Header::v1_unknown().to_vec().unwrap(), b"PROXY UNKNOWN\r\n");
}

#[test]
fn v1_generator_maps_mixed_families_to_tcp6_like_haproxy() {
    let h = Header::v1(sa("192.0.2.1:5"), sa("[2001:db8::2]:443")).unwrap();
    let bytes = h.to_vec().unwrap();
    assert_eq!(bytes, b"PROXY TCP6 ::ffff:192.0.2.1 2001:db8::2 5 443\r\n");
    assert_eq!(ok(&bytes).0, h);
}

#[test]
fn v1_generator_drops_scope_ids_it_cannot_carry() {
    let src = SocketAddr::V6(std::net::SocketAddrV6::new("fe80::1".parse().unwrap(), 1, 7, 3));
    let h = Header::v1(src, sa("[::1]:2")).unwrap();
    assert_eq!(h.to_vec().unwrap(), b"PROXY TCP6 fe80::1 ::1 1 2\r\n");
    assert_eq!(ok(&h.to_vec().unwrap()).0, h);
}

#[test]
fn v1_encoded_len_matches_bytes_written() {
    for (s, d) in [("1.2.3.4:5", "255.255.255.255:65535"), ("[::1]:1", "[ffff::ffff]:22")] {
        let h = Header::v1(sa(s), sa(d)).unwrap();
        let mut out = b"xx".to_vec();
        let n = h.encode(&mut out).unwrap();
        assert_eq!(n, out.len() - 2);
        assert_eq!(n, h.encoded_len());
    }
}

#[test]
fn v1_tlvs_and_crc_are_refused_on_v1_headers() {
    let h = Header::v1_unknown();
    assert_eq!(h.clone().with_alpn(b"h2"), Err(Error::TlvOnV1));
    assert!(!h.with_crc32c(true).crc32c());
}
