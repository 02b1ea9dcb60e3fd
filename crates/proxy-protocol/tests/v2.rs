//! Version 2 rules (reference §1.3-§1.5), one test per rule.

mod common;

use std::net::SocketAddr;

use common::{
    IP4_BLOCK, SIG, crc32c, err, err_with, incomplete, ip6_block, ok, ok_with, tlv, unix_block, v2,
    v2_crc,
};
use smartproxy_proxy_protocol::{
    Addresses, Command, Detection, Error, Header, ParseOptions, Parsed, Ssl, Tlv, Transport,
    UnixPath, V2_SIGNATURE, Version, Versions, detect, parse,
};

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

#[test]
fn v2_signature_constant_matches_spec() {
    assert_eq!(
        V2_SIGNATURE,
        [0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A]
    );
}

#[test]
fn v2_tcp4_proxy_parses() {
    let (h, n) = ok(&v2(0x21, 0x11, &IP4_BLOCK));
    assert_eq!(n, 28);
    assert_eq!(h.version(), Version::V2);
    assert_eq!(h.command(), Command::Proxy);
    assert_eq!(h.transport(), Transport::Stream);
    assert_eq!(h.source(), Some(sa("192.168.0.1:56324")));
    assert_eq!(h.destination(), Some(sa("192.168.0.11:443")));
}

#[test]
fn v2_udp4_proxy_parses_as_dgram() {
    let (h, _) = ok(&v2(0x21, 0x12, &IP4_BLOCK));
    assert_eq!(h.transport(), Transport::Dgram);
    assert_eq!(h.source(), Some(sa("192.168.0.1:56324")));
}

#[test]
fn v2_tcp6_and_udp6_parse() {
    let (h, n) = ok(&v2(0x21, 0x21, &ip6_block()));
    assert_eq!(n, 52);
    assert_eq!(h.source(), Some(sa("[2001:db8::1]:1234")));
    assert_eq!(h.destination(), Some(sa("[2001:db8::2]:443")));
    let (h, _) = ok(&v2(0x21, 0x22, &ip6_block()));
    assert_eq!(h.transport(), Transport::Dgram);
}

#[test]
fn v2_unix_stream_and_dgram_parse_paths() {
    let (h, n) = ok(&v2(0x21, 0x31, &unix_block(b"/run/a.sock", b"/run/b.sock")));
    assert_eq!(n, 16 + 216);
    let Addresses::Unix { src, dst } = h.addresses() else { panic!() };
    assert_eq!(src.path(), b"/run/a.sock");
    assert_eq!(dst.path(), b"/run/b.sock");
    assert_eq!(h.source(), None);
    assert_eq!(h.transport(), Transport::Stream);
    let (h, _) = ok(&v2(0x21, 0x32, &unix_block(b"/x", b"/y")));
    assert_eq!(h.transport(), Transport::Dgram);
}

#[test]
fn v2_unix_path_without_nul_terminator_uses_all_108_bytes() {
    let full = [b'a'; 108];
    let (h, _) = ok(&v2(0x21, 0x31, &unix_block(&full, b"\0abstract")));
    let Addresses::Unix { src, dst } = h.addresses() else { panic!() };
    assert_eq!(src.path(), &full[..]);
    assert_eq!(dst.path(), b"");
    assert_eq!(&dst.raw()[..9], b"\0abstract");
}

#[test]
fn v2_proxy_unspec_has_no_addresses_and_tlvs_from_offset_16() {
    let (h, n) = ok(&v2(0x21, 0x00, &tlv(0x01, b"h2")));
    assert_eq!(n, 21);
    assert_eq!(h.command(), Command::Proxy);
    assert_eq!(h.addresses(), &Addresses::Unspec);
    assert_eq!(h.source(), None);
    assert_eq!(h.alpn(), Some(&b"h2"[..]));
}

#[test]
fn v2_version_other_than_2_is_rejected_at_byte_12() {
    for v in [0x0u8, 0x1, 0x3, 0xf] {
        let mut b = SIG.to_vec();
        b.push(v << 4 | 1);
        assert_eq!(err(&b), Error::V2Version(v));
    }
}

#[test]
fn v2_command_other_than_local_or_proxy_is_rejected_at_byte_12() {
    for c in 2..=0xfu8 {
        let mut b = SIG.to_vec();
        b.push(0x20 | c);
        assert_eq!(err(&b), Error::V2Command(c));
    }
}

#[test]
fn v2_every_family_transport_byte_is_checked() {
    for fam in 0..=255u8 {
        let mut b = SIG.to_vec();
        b.extend_from_slice(&[0x21, fam]);
        let valid = [0x00, 0x11, 0x12, 0x21, 0x22, 0x31, 0x32].contains(&fam);
        match parse(&b) {
            Ok(Parsed::Incomplete { needed: Some(2) }) => assert!(valid, "{fam:#04x}"),
            Err(Error::V2FamilyTransport(f)) => assert!(!valid && f == fam),
            other => panic!("{fam:#04x}: {other:?}"),
        }
    }
}

#[test]
fn v2_proxy_with_len_smaller_than_address_block_is_rejected_when_len_is_read() {
    let mut b = SIG.to_vec();
    b.extend_from_slice(&[0x21, 0x11, 0x00, 0x0b]);
    assert_eq!(err(&b), Error::V2AddressBlock { len: 11, block: 12 });
    let mut b = SIG.to_vec();
    b.extend_from_slice(&[0x21, 0x21, 0x00, 0x0c]);
    assert_eq!(err(&b), Error::V2AddressBlock { len: 12, block: 36 });
    let mut b = SIG.to_vec();
    b.extend_from_slice(&[0x21, 0x31, 0x00, 0xd7]);
    assert_eq!(err(&b), Error::V2AddressBlock { len: 215, block: 216 });
}

#[test]
fn v2_len_larger_than_address_block_carries_tlvs() {
    let mut body = IP4_BLOCK.to_vec();
    body.extend(tlv(0x02, b"example.com"));
    let (h, n) = ok(&v2(0x21, 0x11, &body));
    assert_eq!(n, 16 + 12 + 14);
    assert_eq!(h.authority(), Some("example.com"));
}

#[test]
fn v2_len_above_default_cap_4096_is_rejected_when_len_is_read() {
    let mut b = SIG.to_vec();
    b.extend_from_slice(&[0x21, 0x11, 0x10, 0x01]);
    assert_eq!(err(&b), Error::V2TooLong { len: 4097, max: 4096 });
    let mut b = SIG.to_vec();
    b.extend_from_slice(&[0x21, 0x11, 0x10, 0x00]);
    assert_eq!(incomplete(&b), Some(4096));
}

#[test]
fn v2_len_cap_is_configurable() {
    let opts = ParseOptions::default().max_v2_len(12);
    let mut body = IP4_BLOCK.to_vec();
    ok_with(&v2(0x21, 0x11, &body), &opts);
    body.push(4);
    body.extend_from_slice(&[0, 0]);
    assert_eq!(err_with(&v2(0x21, 0x11, &body), &opts), Error::V2TooLong { len: 15, max: 12 });
    let big = ParseOptions::default().max_v2_len(65535);
    let mut body = IP4_BLOCK.to_vec();
    body.extend(tlv(0x04, &vec![0; 65535 - 15]));
    assert_eq!(ok_with(&v2(0x21, 0x11, &body), &big).1, 65551);
}

#[test]
fn v2_local_unspec_len_0() {
    let (h, n) = ok(&v2(0x20, 0x00, &[]));
    assert_eq!(n, 16);
    assert_eq!(h, Header::v2_local());
    assert_eq!(h.command(), Command::Local);
    assert_eq!(h.source(), None);
}

#[test]
fn v2_local_with_any_family_skips_len_bytes_and_discards_addresses() {
    for fam in [0x11u8, 0x12, 0x21, 0x22, 0x31, 0x32] {
        let block = match fam >> 4 {
            1 => IP4_BLOCK.to_vec(),
            2 => ip6_block(),
            _ => unix_block(b"/a", b"/b"),
        };
        let mut buf = v2(0x20, fam, &block);
        buf.extend_from_slice(b"app data");
        let (h, n) = ok(&buf);
        assert_eq!(n, 16 + block.len());
        assert_eq!(h.command(), Command::Local);
        assert_eq!(h.addresses(), &Addresses::Unspec);
        assert_eq!(h.transport(), Transport::Unspec);
        assert_eq!(h.source(), None);
    }
}

#[test]
fn v2_local_with_len_shorter_than_family_block_is_accepted() {
    let (h, n) = ok(&v2(0x20, 0x21, &[1, 2, 3]));
    assert_eq!(n, 19);
    assert_eq!(h.command(), Command::Local);
}

#[test]
fn v2_local_aws_nlb_health_check_crc_from_offset_16() {
    // kubernetes/kubernetes#57250: LOCAL, family 0x11, len 84, CRC32C then a 74-byte NOOP.
    let mut body = tlv(0x03, &[0xbc, 0xe5, 0x95, 0x1f]);
    body.extend(tlv(0x04, &[0; 74]));
    let buf = v2(0x20, 0x11, &body);
    assert_eq!(buf.len(), 100);
    let (h, n) = ok(&buf);
    assert_eq!(n, 100);
    assert!(h.crc32c());
    assert_eq!(h.tlvs().map(|t| t.kind()).collect::<Vec<_>>(), vec![0x04]);
    // One CRC bit flipped: HAProxy rejects it, so do we.
    let mut bad = buf.clone();
    bad[22] ^= 1;
    assert!(matches!(
        err(&bad),
        Error::Crc32cMismatch { carried: 0xbce5951e, computed: 0xbce5951f }
    ));
}

#[test]
fn v2_local_with_address_block_then_tlvs_finds_the_tlvs() {
    let mut body = IP4_BLOCK.to_vec();
    body.extend(tlv(0x05, b"abc"));
    let (h, _) = ok(&v2(0x20, 0x11, &body));
    assert_eq!(h.unique_id(), Some(&b"abc"[..]));
}

#[test]
fn v2_local_with_unwalkable_tlvs_is_accepted_without_tlvs() {
    let (h, n) = ok(&v2(0x20, 0x11, &[0xff, 0xff, 0xff, 1, 2]));
    assert_eq!(n, 21);
    assert_eq!(h.tlvs().count(), 0);
    assert!(!h.crc32c());
}

#[test]
fn v2_tlv_overrunning_len_is_rejected() {
    let mut body = IP4_BLOCK.to_vec();
    body.extend_from_slice(&[0x01, 0x00, 0x05, b'h', b'2']);
    assert_eq!(err(&v2(0x21, 0x11, &body)), Error::TlvOverrun { offset: 28 });
}

#[test]
fn v2_one_or_two_stray_bytes_after_tlvs_are_rejected() {
    for stray in [&[0x04u8][..], &[0x04, 0x00]] {
        let mut body = IP4_BLOCK.to_vec();
        body.extend(tlv(0x01, b"h2"));
        body.extend_from_slice(stray);
        assert_eq!(err(&v2(0x21, 0x11, &body)), Error::TlvOverrun { offset: 33 });
    }
}

#[test]
fn v2_tlv_walk_is_bounded_by_len_not_by_the_buffer() {
    // HAProxy 488ee7fb: bytes after 16+len look like a TLV but are application data.
    let mut buf = v2(0x21, 0x11, &IP4_BLOCK);
    buf.extend(tlv(0x02, b"evil.example"));
    let (h, n) = ok(&buf);
    assert_eq!(n, 28);
    assert_eq!(h.authority(), None);
}

#[test]
fn v2_crc32c_reference_example_verifies() {
    let mut body = IP4_BLOCK.to_vec();
    body.extend(tlv(0x03, &0x1c1a_e9c6u32.to_be_bytes()));
    let buf = v2(0x21, 0x11, &body);
    assert_eq!(&buf[12..16], &[0x21, 0x11, 0x00, 0x13]);
    let (h, _) = ok(&buf);
    assert!(h.crc32c());
    assert_eq!(h.tlvs().count(), 0, "the CRC32C TLV is reported by crc32c(), not tlvs()");
}

#[test]
fn v2_crc32c_mismatch_is_rejected() {
    let mut buf = v2_crc(0x21, 0x11, &IP4_BLOCK);
    buf[17] ^= 0x40; // flip an address bit
    assert!(matches!(err(&buf), Error::Crc32cMismatch { .. }));
}

#[test]
fn v2_crc32c_with_length_other_than_4_is_rejected() {
    for len in [0usize, 3, 5, 8] {
        let mut body = IP4_BLOCK.to_vec();
        body.extend(tlv(0x03, &vec![0; len]));
        assert_eq!(err(&v2(0x21, 0x11, &body)), Error::Crc32cLength(len));
    }
}

#[test]
fn v2_crc32c_duplicate_is_rejected() {
    let mut body = IP4_BLOCK.to_vec();
    body.extend(tlv(0x03, &[0; 4]));
    let buf = v2_crc(0x21, 0x11, &body);
    assert_eq!(err(&buf), Error::Crc32cDuplicate);
}

#[test]
fn v2_crc32c_in_the_middle_of_tlvs_verifies() {
    let mut body = IP4_BLOCK.to_vec();
    body.extend(tlv(0x01, b"h2"));
    body.extend(tlv(0x03, &[0; 4]));
    body.extend(tlv(0x02, b"a.example"));
    let mut buf = v2(0x21, 0x11, &body);
    let c = crc32c(&buf);
    buf[36..40].copy_from_slice(&c.to_be_bytes());
    let (h, _) = ok(&buf);
    assert!(h.crc32c());
    assert_eq!(h.alpn(), Some(&b"h2"[..]));
    assert_eq!(h.authority(), Some("a.example"));
}

#[test]
fn v2_alpn_authority_noop_netns_are_exposed() {
    let mut body = IP4_BLOCK.to_vec();
    body.extend(tlv(Tlv::ALPN, b"http/1.1"));
    body.extend(tlv(Tlv::AUTHORITY, "bücher.example".as_bytes()));
    body.extend(tlv(Tlv::NOOP, &[]));
    body.extend(tlv(Tlv::NETNS, b"blue"));
    let (h, _) = ok(&v2(0x21, 0x11, &body));
    assert_eq!(h.alpn(), Some(&b"http/1.1"[..]));
    assert_eq!(h.authority(), Some("bücher.example"));
    assert_eq!(h.netns(), Some(&b"blue"[..]));
    let kinds: Vec<u8> = h.tlvs().map(|t| t.kind()).collect();
    assert_eq!(kinds, vec![0x01, 0x02, 0x04, 0x30]);
}

#[test]
fn v2_tlv_type_numbers_match_the_spec_table() {
    // ppp 775977ba shipped 20/30 (decimal) for SSL and NETNS.
    assert_eq!(
        [Tlv::ALPN, Tlv::AUTHORITY, Tlv::CRC32C, Tlv::NOOP, Tlv::UNIQUE_ID, Tlv::SSL, Tlv::NETNS],
        [0x01, 0x02, 0x03, 0x04, 0x05, 0x20, 0x30]
    );
    assert_eq!(
        [
            Ssl::VERSION,
            Ssl::CN,
            Ssl::CIPHER,
            Ssl::SIG_ALG,
            Ssl::KEY_ALG,
            Ssl::GROUP,
            Ssl::SIG_SCHEME,
            Ssl::CLIENT_CERT
        ],
        [0x21, 0x22, 0x23, 0x24, 0x25, 0x26, 0x27, 0x28]
    );
    assert_eq!([Tlv::GCP, Tlv::AWS, Tlv::AZURE], [0xE0, 0xEA, 0xEE]);
}

#[test]
fn v2_unique_id_up_to_128_bytes_accepted_129_rejected() {
    let mut body = IP4_BLOCK.to_vec();
    body.extend(tlv(0x05, &[7; 128]));
    assert_eq!(ok(&v2(0x21, 0x11, &body)).0.unique_id(), Some(&[7u8; 128][..]));
    let mut body = IP4_BLOCK.to_vec();
    body.extend(tlv(0x05, &[7; 129]));
    assert_eq!(err(&v2(0x21, 0x11, &body)), Error::UniqueIdTooLong(129));
}

#[test]
fn v2_authority_must_be_utf8_and_at_most_255_bytes() {
    let mut body = IP4_BLOCK.to_vec();
    body.extend(tlv(0x02, &[0xff, 0xfe]));
    assert_eq!(err(&v2(0x21, 0x11, &body)), Error::InvalidAuthority);
    let mut body = IP4_BLOCK.to_vec();
    body.extend(tlv(0x02, &[b'a'; 256]));
    assert_eq!(err(&v2(0x21, 0x11, &body)), Error::InvalidAuthority);
}

#[test]
fn v2_ssl_tlv_with_sub_tlvs_and_client_bits() {
    let mut ssl = vec![0x07, 0, 0, 0, 0];
    ssl.extend(tlv(Ssl::VERSION, b"TLSv1.3"));
    ssl.extend(tlv(Ssl::CN, b"client.example"));
    ssl.extend(tlv(Ssl::CIPHER, b"TLS_AES_128_GCM_SHA256"));
    ssl.extend(tlv(Ssl::SIG_ALG, b"RSA-SHA256"));
    ssl.extend(tlv(Ssl::KEY_ALG, b"RSA2048"));
    ssl.extend(tlv(Ssl::GROUP, b"secp256r1"));
    ssl.extend(tlv(Ssl::SIG_SCHEME, b"rsa_pss_rsae_sha256"));
    ssl.extend(tlv(Ssl::CLIENT_CERT, &[0x30, 0x82]));
    let mut body = IP4_BLOCK.to_vec();
    body.extend(tlv(0x20, &ssl));
    let (h, _) = ok(&v2(0x21, 0x11, &body));
    let s = h.ssl().unwrap();
    assert!(s.is_tls() && s.cert_in_connection() && s.cert_in_session() && s.verified());
    assert_eq!(s.version(), Some("TLSv1.3"));
    assert_eq!(s.cn(), Some("client.example"));
    assert_eq!(s.cipher(), Some("TLS_AES_128_GCM_SHA256"));
    assert_eq!(s.sig_alg(), Some("RSA-SHA256"));
    assert_eq!(s.key_alg(), Some("RSA2048"));
    assert_eq!(s.group(), Some("secp256r1"));
    assert_eq!(s.sig_scheme(), Some("rsa_pss_rsae_sha256"));
    assert_eq!(s.client_cert(), Some(&[0x30, 0x82][..]));
    assert_eq!(s.sub_tlvs().count(), 8);
}

#[test]
fn v2_ssl_verify_zero_without_cert_bits_is_not_verified() {
    let mut body = IP4_BLOCK.to_vec();
    body.extend(tlv(0x20, &[0x01, 0, 0, 0, 0]));
    let h = ok(&v2(0x21, 0x11, &body)).0;
    let s = h.ssl().unwrap();
    assert!(s.is_tls());
    assert_eq!(s.verify(), 0);
    assert!(!s.verified());
    let mut body = IP4_BLOCK.to_vec();
    body.extend(tlv(0x20, &[0x03, 0, 0, 0, 1]));
    assert!(!ok(&v2(0x21, 0x11, &body)).0.ssl().unwrap().verified());
}

#[test]
fn v2_malformed_ssl_tlv_is_rejected() {
    for ssl in [
        &[0x01u8, 0, 0, 0][..],
        &[0x01, 0, 0, 0, 0, 0x21, 0x00, 0x09, b'x'],
        &[1, 0, 0, 0, 0, 0x21],
    ] {
        let mut body = IP4_BLOCK.to_vec();
        body.extend(tlv(0x20, ssl));
        assert_eq!(err(&v2(0x21, 0x11, &body)), Error::InvalidSsl { offset: 28 });
    }
}

#[test]
fn v2_ssl_sub_tlvs_are_not_recursed() {
    // An SSL sub-TLV of type SSL holding garbage is just bytes (one level deep, Netty CVE-2022-41881).
    let mut ssl = vec![0x01, 0, 0, 0, 0];
    ssl.extend(tlv(0x20, &[0xff, 0xff]));
    let mut body = IP4_BLOCK.to_vec();
    body.extend(tlv(0x20, &ssl));
    assert_eq!(ok(&v2(0x21, 0x11, &body)).0.ssl().unwrap().sub_tlvs().count(), 1);
}

#[test]
fn v2_cloud_tlvs_have_typed_accessors() {
    let mut body = IP4_BLOCK.to_vec();
    body.extend(tlv(0xEA, b"\x01vpce-0123abcd"));
    body.extend(tlv(0xEE, &[0x01, 0x78, 0x56, 0x34, 0x12]));
    body.extend(tlv(0xE0, &0x0102_0304_0506_0708u64.to_be_bytes()));
    let (h, _) = ok(&v2(0x21, 0x11, &body));
    assert_eq!(h.aws_vpce_id(), Some("vpce-0123abcd"));
    assert_eq!(h.azure_link_id(), Some(0x1234_5678), "little-endian");
    assert_eq!(h.gcp_psc_id(), Some(0x0102_0304_0506_0708), "big-endian");
}

#[test]
fn v2_cloud_accessors_refuse_malformed_values() {
    let mut body = IP4_BLOCK.to_vec();
    body.extend(tlv(0xEA, b"\x01vpce;rm -rf"));
    body.extend(tlv(0xEE, &[0x02, 1, 2, 3, 4]));
    body.extend(tlv(0xE0, &[1, 2, 3]));
    let (h, _) = ok(&v2(0x21, 0x11, &body));
    assert_eq!(h.aws_vpce_id(), None);
    assert_eq!(h.azure_link_id(), None);
    assert_eq!(h.gcp_psc_id(), None);
    assert_eq!(h.tlvs().count(), 3, "kept as raw TLVs");
}

#[test]
fn v2_unknown_tlvs_are_kept_in_order() {
    let mut body = IP4_BLOCK.to_vec();
    body.extend(tlv(0xF1, b"exp"));
    body.extend(tlv(0xE1, b""));
    body.extend(tlv(0xFF, &[1, 2, 3]));
    let (h, _) = ok(&v2(0x21, 0x11, &body));
    let got: Vec<(u8, Vec<u8>)> = h.tlvs().map(|t| (t.kind(), t.value().to_vec())).collect();
    assert_eq!(got, vec![(0xF1, b"exp".to_vec()), (0xE1, vec![]), (0xFF, vec![1, 2, 3])]);
    assert_eq!(h.tlv(0xE1), Some(&[][..]));
}

#[test]
fn v2_rejects_signature_mismatch_at_the_first_bad_byte() {
    assert_eq!(err(b"\r\n\r\nX"), Error::NotProxyProtocol { offset: 4 });
    assert_eq!(err(b"\r\r"), Error::NotProxyProtocol { offset: 1 });
    assert_eq!(err(b"GET / HTTP/1.1\r\n"), Error::NotProxyProtocol { offset: 0 });
}

#[test]
fn v2_incomplete_reports_bytes_needed() {
    assert_eq!(incomplete(&SIG[..5]), Some(11));
    let full = v2(0x21, 0x11, &IP4_BLOCK);
    assert_eq!(incomplete(&full[..16]), Some(12));
    assert_eq!(incomplete(&full[..27]), Some(1));
}

#[test]
fn v2_only_option_parses_v2() {
    let opts = ParseOptions::default().versions(Versions::V2Only);
    ok_with(&v2(0x21, 0x11, &IP4_BLOCK), &opts);
    assert_eq!(err_with(b"PROXY UNKNOWN\r\n", &opts), Error::VersionNotAllowed(Version::V1));
}

#[test]
fn detect_tells_signatures_and_prefixes_apart() {
    assert_eq!(detect(b""), Detection::NeedMore);
    assert_eq!(detect(b"PRO"), Detection::NeedMore);
    assert_eq!(detect(b"PROXY "), Detection::V1);
    assert_eq!(detect(b"PROXY TCP4"), Detection::V1);
    assert_eq!(detect(b"PROXX"), Detection::NotProxy);
    assert_eq!(detect(&SIG[..11]), Detection::NeedMore);
    assert_eq!(detect(&SIG), Detection::V2);
    assert_eq!(detect(b"\r\n\r\n\r"), Detection::NotProxy);
    assert_eq!(detect(b"\x16\x03\x01"), Detection::NotProxy);
    assert_eq!(detect(b"GET /"), Detection::NotProxy);
}

#[test]
fn v2_generator_tcp4_bytes_are_exact() {
    let h = Header::v2(sa("192.168.0.1:56324"), sa("192.168.0.11:443")).unwrap();
    assert_eq!(h.to_vec().unwrap(), v2(0x21, 0x11, &IP4_BLOCK));
}

#[test]
fn v2_generator_crc32c_matches_reference_example() {
    let h = Header::v2(sa("192.168.0.1:56324"), sa("192.168.0.11:443")).unwrap().with_crc32c(true);
    let b = h.to_vec().unwrap();
    assert_eq!(&b[14..16], &[0x00, 0x13]);
    assert_eq!(&b[28..], &[0x03, 0x00, 0x04, 0x1c, 0x1a, 0xe9, 0xc6]);
}

#[test]
fn v2_generator_local_is_unspec_len_0() {
    assert_eq!(Header::v2_local().to_vec().unwrap(), v2(0x20, 0x00, &[]));
}

#[test]
fn v2_generator_maps_mixed_families_to_ipv6_like_haproxy() {
    let h = Header::v2(sa("192.0.2.1:5"), sa("[2001:db8::2]:443")).unwrap();
    assert_eq!(h.source(), Some(sa("[::ffff:192.0.2.1]:5")));
    let b = h.to_vec().unwrap();
    assert_eq!(b[13], 0x21);
    assert_eq!(ok(&b).0, h);
}

#[test]
fn v2_generator_udp_unix_unspec() {
    let a = Addresses::from_socket_addrs(sa("1.2.3.4:5"), sa("6.7.8.9:10"));
    let h = Header::v2_proxy(a.clone(), Transport::Dgram).unwrap();
    assert_eq!(h.to_vec().unwrap()[13], 0x12);
    let u =
        Addresses::Unix { src: UnixPath::new(b"/a").unwrap(), dst: UnixPath::new(b"/b").unwrap() };
    let h = Header::v2_proxy(u, Transport::Stream).unwrap();
    let b = h.to_vec().unwrap();
    assert_eq!((b[13], b.len()), (0x31, 232));
    assert_eq!(ok(&b).0, h);
    let h = Header::v2_proxy(Addresses::Unspec, Transport::Unspec).unwrap();
    assert_eq!(h.to_vec().unwrap(), v2(0x21, 0x00, &[]));
    assert_eq!(
        Header::v2_proxy(Addresses::Unspec, Transport::Stream),
        Err(Error::TransportMismatch { transport: Transport::Stream })
    );
    assert_eq!(
        Header::v2_proxy(a, Transport::Unspec),
        Err(Error::TransportMismatch { transport: Transport::Unspec })
    );
    assert_eq!(UnixPath::new(&[1; 109]), Err(Error::UnixPathTooLong(109)));
}

#[test]
fn v2_generator_len_counts_every_tlv_written() {
    // Envoy CVE-2026-47692: TLVs emitted but left out of `len`.
    let h = Header::v2(sa("1.2.3.4:5"), sa("6.7.8.9:10"))
        .unwrap()
        .with_alpn(b"h2")
        .unwrap()
        .with_tlv(0xE1, &[9; 300])
        .unwrap()
        .with_crc32c(true);
    let b = h.to_vec().unwrap();
    let len = usize::from(u16::from_be_bytes([b[14], b[15]]));
    assert_eq!(16 + len, b.len());
    assert_eq!(b.len(), h.encoded_len());
    assert_eq!(ok(&b), (h, b.len()));
}

#[test]
fn v2_generator_refuses_oversized_headers_and_tlvs() {
    let h = Header::v2_local();
    assert_eq!(h.clone().with_tlv(0xE1, &vec![0; 65536]), Err(Error::TlvTooLarge(65536)));
    let big = h.with_tlv(0xE1, &vec![0; 65535 - 3]).unwrap().with_crc32c(true);
    let mut out = b"keep".to_vec();
    assert_eq!(big.encode(&mut out), Err(Error::EncodeTooLarge(65542)));
    assert_eq!(out, b"keep", "nothing written on error");
}

#[test]
fn v2_generator_refuses_tlvs_the_parser_would_reject() {
    let h = Header::v2_local();
    assert_eq!(h.clone().with_tlv(Tlv::CRC32C, &[0; 4]), Err(Error::TlvCrc32c));
    assert_eq!(h.clone().with_unique_id(&[0; 129]), Err(Error::UniqueIdTooLong(129)));
    assert_eq!(h.clone().with_tlv(Tlv::AUTHORITY, &[0xff]), Err(Error::InvalidAuthority));
    assert_eq!(h.with_tlv(Tlv::SSL, &[1, 2]), Err(Error::InvalidSsl { offset: 0 }));
}

#[test]
fn v2_generator_typed_tlvs_round_trip() {
    let h = Header::v2(sa("[2001:db8::1]:1"), sa("[2001:db8::2]:2"))
        .unwrap()
        .with_alpn(b"h2")
        .unwrap()
        .with_authority("example.com")
        .unwrap()
        .with_unique_id(b"id-42")
        .unwrap()
        .with_noop(5)
        .unwrap()
        .with_netns("blue")
        .unwrap()
        .with_ssl(0x05, 0, &[(Ssl::VERSION, b"TLSv1.3"), (Ssl::CN, b"me")])
        .unwrap()
        .with_aws_vpce_id("vpce-1")
        .unwrap()
        .with_azure_link_id(77)
        .unwrap()
        .with_gcp_psc_id(u64::MAX)
        .unwrap()
        .with_crc32c(true);
    let b = h.to_vec().unwrap();
    let (p, n) = ok(&b);
    assert_eq!(n, b.len());
    assert_eq!(p, h);
    assert_eq!(p.authority(), Some("example.com"));
    assert_eq!(p.ssl().unwrap().cn(), Some("me"));
    assert_eq!(p.aws_vpce_id(), Some("vpce-1"));
    assert_eq!(p.azure_link_id(), Some(77));
    assert_eq!(p.gcp_psc_id(), Some(u64::MAX));
}
