//! Property tests: `parse(generate(h)) == h` for every header the generator can build.

use std::net::{IpAddr, SocketAddr};

use proptest::prelude::*;
use smartproxy_proxy_protocol::{
    Addresses, Header, ParseOptions, Parsed, Transport, UnixPath, parse, parse_with,
};

fn socket() -> impl Strategy<Value = SocketAddr> {
    prop_oneof![
        (any::<[u8; 4]>(), any::<u16>()).prop_map(|(ip, p)| SocketAddr::new(IpAddr::from(ip), p)),
        (any::<[u8; 16]>(), any::<u16>()).prop_map(|(ip, p)| SocketAddr::new(IpAddr::from(ip), p)),
        // IPv4-mapped IPv6, which v1 writes as a dotted quad.
        (any::<[u8; 4]>(), any::<u16>()).prop_map(|(ip, p)| SocketAddr::new(
            IpAddr::from(std::net::Ipv4Addr::from(ip).to_ipv6_mapped()),
            p
        )),
    ]
}

#[derive(Debug, Clone)]
enum T {
    Raw(u8, Vec<u8>),
    Alpn(Vec<u8>),
    Authority(String),
    UniqueId(Vec<u8>),
    Noop(usize),
    Ssl(u8, u32, Vec<(u8, Vec<u8>)>),
    Aws(String),
    Azure(u32),
    Gcp(u64),
}

fn tlv() -> impl Strategy<Value = T> {
    prop_oneof![
        (
            any::<u8>().prop_filter("not CRC32C", |k| *k != 3),
            proptest::collection::vec(any::<u8>(), 0..40)
        )
            .prop_map(|(k, v)| T::Raw(k, v)),
        proptest::collection::vec(any::<u8>(), 0..20).prop_map(T::Alpn),
        "[a-z0-9.é-]{0,40}".prop_map(T::Authority),
        proptest::collection::vec(any::<u8>(), 0..=128).prop_map(T::UniqueId),
        (0usize..50).prop_map(T::Noop),
        (
            any::<u8>(),
            any::<u32>(),
            proptest::collection::vec(
                (any::<u8>(), proptest::collection::vec(any::<u8>(), 0..10)),
                0..4
            )
        )
            .prop_map(|(c, v, s)| T::Ssl(c, v, s)),
        "vpce-[a-z0-9]{0,17}".prop_map(T::Aws),
        any::<u32>().prop_map(T::Azure),
        any::<u64>().prop_map(T::Gcp),
    ]
}

fn add(h: Header, t: &T) -> Header {
    match t {
        // Random bytes under a checked type (AUTHORITY, SSL) may be refused: skip those.
        T::Raw(k, v) => return h.clone().with_tlv(*k, v).unwrap_or(h),
        T::Alpn(v) => h.with_alpn(v),
        T::Authority(s) => h.with_authority(s),
        T::UniqueId(v) => h.with_unique_id(v),
        T::Noop(n) => h.with_noop(*n),
        T::Ssl(c, v, s) => {
            let subs: Vec<(u8, &[u8])> = s.iter().map(|(k, v)| (*k, v.as_slice())).collect();
            h.with_ssl(*c, *v, &subs)
        }
        T::Aws(s) => h.with_aws_vpce_id(s),
        T::Azure(v) => h.with_azure_link_id(*v),
        T::Gcp(v) => h.with_gcp_psc_id(*v),
    }
    .expect("valid TLV")
}

fn unix_path() -> impl Strategy<Value = UnixPath> {
    proptest::collection::vec(any::<u8>(), 0..=108).prop_map(|v| UnixPath::new(&v).unwrap())
}

fn header() -> impl Strategy<Value = Header> {
    let base = prop_oneof![
        (socket(), socket()).prop_map(|(s, d)| Header::v1(s, d).unwrap()),
        Just(Header::v1_unknown()),
        (socket(), socket()).prop_map(|(s, d)| Header::v2(s, d).unwrap()),
        Just(Header::v2_local()),
        (socket(), socket(), any::<bool>()).prop_map(|(s, d, dgram)| {
            let t = if dgram { Transport::Dgram } else { Transport::Stream };
            Header::v2_proxy(Addresses::from_socket_addrs(s, d), t).unwrap()
        }),
        (unix_path(), unix_path(), any::<bool>()).prop_map(|(s, d, dgram)| {
            let t = if dgram { Transport::Dgram } else { Transport::Stream };
            Header::v2_proxy(Addresses::Unix { src: s, dst: d }, t).unwrap()
        }),
        Just(Header::v2_proxy(Addresses::Unspec, Transport::Unspec).unwrap()),
    ];
    (base, proptest::collection::vec(tlv(), 0..6), any::<bool>()).prop_map(|(h, tlvs, crc)| {
        let is_v2 = h.version() == smartproxy_proxy_protocol::Version::V2;
        let h = if is_v2 { tlvs.iter().fold(h, add) } else { h };
        h.with_crc32c(crc)
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn parse_of_generate_is_identity(h in header(), tail in proptest::collection::vec(any::<u8>(), 0..8)) {
        let mut buf = Vec::new();
        let n = h.encode(&mut buf).unwrap();
        prop_assert_eq!(n, buf.len());
        prop_assert_eq!(n, h.encoded_len());
        buf.extend_from_slice(&tail);
        prop_assert_eq!(parse(&buf), Ok(Parsed::Complete { header: h.clone(), consumed: n }));
        // And every strict prefix is incomplete.
        for k in [0, 1, n / 2, n - 1] {
            prop_assert!(matches!(parse(&buf[..k]), Ok(Parsed::Incomplete { .. })), "prefix {}", k);
        }
    }

    #[test]
    fn parser_never_panics_on_arbitrary_input(data in proptest::collection::vec(any::<u8>(), 0..300)) {
        let _ = parse(&data);
        let _ = parse_with(&data, &ParseOptions::default().max_v2_len(65535));
    }

    #[test]
    fn parser_never_panics_after_a_v2_prefix(fam in any::<u8>(), vc in any::<u8>(), body in proptest::collection::vec(any::<u8>(), 0..300)) {
        let mut b = smartproxy_proxy_protocol::V2_SIGNATURE.to_vec();
        b.extend_from_slice(&[vc, fam]);
        b.extend_from_slice(&(body.len() as u16).to_be_bytes());
        b.extend_from_slice(&body);
        if let Ok(Parsed::Complete { header, consumed }) = parse(&b) {
            prop_assert_eq!(consumed, b.len());
            // Whatever parsed re-encodes to something that parses to the same header.
            let again = header.to_vec().unwrap();
            prop_assert_eq!(parse(&again), Ok(Parsed::Complete { header, consumed: again.len() }));
        }
    }
}
