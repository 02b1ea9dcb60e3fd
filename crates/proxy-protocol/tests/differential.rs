//! Differential tests against `ppp` 2.3 and `proxy-header` 0.1 over generated inputs.
//!
//! Every disagreement falls into one of the explained categories below (the test fails and
//! prints the input otherwise). The README lists the same table.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;

use common::{IP4_BLOCK, ip6_block, tlv, unix_block, v2, v2_crc};
use ppp::PartialResult;
use smartproxy_proxy_protocol::{Error, ParseOptions, Parsed, parse_with};

/// What a parser made of an input, normalised across the three APIs.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Out {
    Incomplete,
    Invalid,
    /// A header with IP addresses (PROXY command).
    Ip {
        consumed: usize,
        src: SocketAddr,
        dst: SocketAddr,
    },
    /// A header without IP addresses to use: LOCAL, UNKNOWN, UNSPEC or UNIX.
    NoIp {
        consumed: usize,
    },
}

fn ours(buf: &[u8]) -> (Out, Option<Error>) {
    // `proxy-header` and `ppp` have no cap on v2 `len`; compare with the protocol's maximum.
    let opts = ParseOptions::default().max_v2_len(65535);
    match parse_with(buf, &opts) {
        Ok(Parsed::Incomplete { .. }) => (Out::Incomplete, None),
        Ok(Parsed::Complete { header, consumed }) => {
            match (header.source(), header.destination()) {
                (Some(src), Some(dst)) => (Out::Ip { consumed, src, dst }, None),
                _ => (Out::NoIp { consumed }, None),
            }
        }
        Ok(other) => panic!("{other:?}"),
        Err(e) => (Out::Invalid, Some(e)),
    }
}

fn ppp_out(buf: &[u8]) -> Out {
    use ppp::HeaderResult;
    match HeaderResult::parse(buf) {
        HeaderResult::V1(Ok(h)) => match h.addresses {
            ppp::v1::Addresses::Tcp4(a) => Out::Ip {
                consumed: h.header.len(),
                src: SocketAddr::new(a.source_address.into(), a.source_port),
                dst: SocketAddr::new(a.destination_address.into(), a.destination_port),
            },
            ppp::v1::Addresses::Tcp6(a) => Out::Ip {
                consumed: h.header.len(),
                src: SocketAddr::new(a.source_address.into(), a.source_port),
                dst: SocketAddr::new(a.destination_address.into(), a.destination_port),
            },
            ppp::v1::Addresses::Unknown => Out::NoIp { consumed: h.header.len() },
        },
        HeaderResult::V2(Ok(h)) => match (h.command, h.addresses) {
            (ppp::v2::Command::Proxy, ppp::v2::Addresses::IPv4(a)) => Out::Ip {
                consumed: h.len(),
                src: SocketAddr::new(a.source_address.into(), a.source_port),
                dst: SocketAddr::new(a.destination_address.into(), a.destination_port),
            },
            (ppp::v2::Command::Proxy, ppp::v2::Addresses::IPv6(a)) => Out::Ip {
                consumed: h.len(),
                src: SocketAddr::new(a.source_address.into(), a.source_port),
                dst: SocketAddr::new(a.destination_address.into(), a.destination_port),
            },
            _ => Out::NoIp { consumed: h.len() },
        },
        r if r.is_incomplete() => Out::Incomplete,
        _ => Out::Invalid,
    }
}

fn ph_out(buf: &[u8]) -> Out {
    use proxy_header::{Error as E, ParseConfig, ProxyHeader};
    match ProxyHeader::parse(buf, ParseConfig::default()) {
        Ok((h, consumed)) => match h.proxied_address() {
            Some(a) => Out::Ip { consumed, src: a.source, dst: a.destination },
            None => Out::NoIp { consumed },
        },
        Err(E::BufferTooShort) => Out::Incomplete,
        Err(_) => Out::Invalid,
    }
}

// ---------------------------------------------------------------------------------------------
// Inputs

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn seeds() -> Vec<Vec<u8>> {
    let six = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff";
    let mut v: Vec<Vec<u8>> = [
        &b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n"[..],
        b"PROXY TCP4 0.0.0.0 0.0.0.0 0 0\r\n",
        b"PROXY TCP6 2001:db8::1 2001:db8::2 1 65535\r\n",
        b"PROXY TCP6 ::ffff:1.2.3.4 ::1 80 8080\r\n",
        b"PROXY UNKNOWN\r\n",
        b"PROXY UNKNOWN 1.2.3.4 5.6.7.8 1 2\r\n",
        b"PROXY TCP4 01.2.3.4 5.6.7.8 1 2\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 +1 2\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n",
        b"PROXY TCP4 1.2.3.4  5.6.7.8 1 2\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 65536\r\n",
        b"PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n",
        b"PROXY TCP6 1.2.3.4 5.6.7.8 1 2\r\n",
        b"PROXY TCP4 ::1 ::1 1 2\r\n",
        b"PROXY TCP6 2001:db8::1 192.0.2.1 1 2\r\n",
        b"PROXY tcp4 1.2.3.4 5.6.7.8 1 2\r\n",
        b"PROXYjunk",
        b"PROXY UNKNOWN\r",
    ]
    .iter()
    .map(|s| s.to_vec())
    .collect();
    v.push(format!("PROXY UNKNOWN {six} {six} 65535 65535\r\n").into_bytes());
    v.push(format!("PROXY TCP6 {six} {six} 65535 65535\r\n").into_bytes());
    let mut tlvs = IP4_BLOCK.to_vec();
    tlvs.extend(tlv(0x01, b"h2"));
    tlvs.extend(tlv(0x02, b"example.com"));
    tlvs.extend(tlv(0x20, &[0x07, 0, 0, 0, 0, 0x21, 0, 3, b'T', b'L', b'S']));
    tlvs.extend(tlv(0x05, b"uid"));
    let mut aws = tlv(0x03, &[0xbc, 0xe5, 0x95, 0x1f]);
    aws.extend(tlv(0x04, &[0; 74]));
    v.extend([
        v2(0x21, 0x11, &IP4_BLOCK),
        v2(0x21, 0x12, &IP4_BLOCK),
        v2(0x21, 0x21, &ip6_block()),
        v2(0x21, 0x22, &ip6_block()),
        v2(0x21, 0x31, &unix_block(b"/a", b"/b")),
        v2(0x20, 0x00, &[]),
        v2(0x21, 0x00, &[]),
        v2(0x20, 0x11, &aws),
        v2(0x20, 0x11, &IP4_BLOCK),
        v2_crc(0x21, 0x11, &tlvs),
        v2(0x21, 0x11, &tlvs),
        v2(0x21, 0x11, &[IP4_BLOCK.as_slice(), &tlv(0x05, &[0; 129])].concat()),
        v2(0x21, 0x11, &[IP4_BLOCK.as_slice(), &tlv(0x02, &[0xff])].concat()),
        v2(0x21, 0x11, &[IP4_BLOCK.as_slice(), &tlv(0x03, &[0; 4])].concat()),
        v2(0x21, 0x11, &[IP4_BLOCK.as_slice(), &tlv(0x03, &[0; 5])].concat()),
        v2(0x21, 0x11, &[IP4_BLOCK.as_slice(), &[1, 0, 9, 1]].concat()),
        v2(0x21, 0x11, &[IP4_BLOCK.as_slice(), &[4]].concat()),
        v2(0x21, 0x11, &[IP4_BLOCK.as_slice(), &tlv(0x20, &[1, 0])].concat()),
    ]);
    v
}

/// Seeds, every truncation of them, and seeded random mutations (byte changes, insertions,
/// deletions, and values that hit the interesting positions).
fn inputs() -> Vec<Vec<u8>> {
    let seeds = seeds();
    let mut out = Vec::new();
    for s in &seeds {
        for k in 0..=s.len() {
            out.push(s[..k].to_vec());
        }
    }
    let specials =
        [b' ', b'\r', b'\n', b'0', b'9', b':', b'.', b'+', b'\t', 0, 0xff, 0x20, 0x21, 0x11, 0x31];
    let mut rng = Rng(0x5eed_1234_abcd_ef01);
    for _ in 0..60_000 {
        let mut s = seeds[rng.below(seeds.len())].clone();
        for _ in 0..1 + rng.below(3) {
            let at = rng.below(s.len() + 1);
            match rng.below(4) {
                0 if at < s.len() => s[at] = specials[rng.below(specials.len())],
                1 if at < s.len() => s[at] = rng.next() as u8,
                2 => s.insert(at, specials[rng.below(specials.len())]),
                _ if at < s.len() => {
                    s.remove(at);
                }
                _ => {}
            }
        }
        out.push(s);
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Known disagreements

/// Why we and another parser disagree. Each one is deliberate on our side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Why {
    /// We reject at the first impossible byte; they wait for more bytes (or a CRLF) first.
    WeRejectEarly,
    /// v1 leading zeros in octets or ports: forbidden (octal confusion); they accept.
    V1LeadingZero,
    /// v1 IPv4-mapped dotted quad in TCP6 (`::ffff:1.2.3.4`): we accept it as HAProxy writes it.
    V1DottedQuadInTcp6,
    /// v1 line shapes outside the grammar they accept (signs, LF only, extra tokens, ...).
    V1Grammar,
    /// v1 `UNKNOWN` line: they parse the addresses/limits differently from the spec.
    V1Unknown,
    /// v2 LOCAL: we skip `len` bytes and keep no addresses; they fail on family/len checks.
    V2Local,
    /// v2 TLV rules they do not enforce: overrun, stray bytes, CRC32C value or length,
    /// UNIQUE_ID > 128, AUTHORITY not UTF-8, malformed SSL.
    V2Tlv,
    /// v2 family/transport, version or command values they accept or reject differently.
    V2Header,
    /// They report invalid where the input is a valid prefix for us (more bytes could make it
    /// a valid header), because their incomplete detection is approximate.
    IncompleteDetection,
    /// v1: they end a line at a lone LF; the grammar wants CRLF.
    V1LoneLf,
}

fn explain(input: &[u8], us: &Out, err: Option<&Error>, them: &Out) -> Option<Why> {
    use Out::*;
    let v1 = input.first() == Some(&b'P');
    match (us, them) {
        (Invalid, Incomplete) => Some(Why::WeRejectEarly),
        (Incomplete, Invalid) => Some(Why::IncompleteDetection),
        (Incomplete, Ip { .. } | NoIp { .. }) if v1 && lone_lf(input) => Some(Why::V1LoneLf),
        (Invalid, Ip { .. } | NoIp { .. }) => Some(match err? {
            Error::V1LeadingZero { .. } => Why::V1LeadingZero,
            Error::V1Syntax { .. }
            | Error::V1Ipv6 { .. }
            | Error::V1LoneCr { .. }
            | Error::V1OctetRange { .. }
            | Error::V1PortRange { .. }
            | Error::V1Protocol { .. }
            | Error::NotProxyProtocol { .. } => Why::V1Grammar,
            Error::V1TooLong => Why::V1Unknown,
            Error::TlvOverrun { .. }
            | Error::Crc32cMismatch { .. }
            | Error::Crc32cLength(_)
            | Error::Crc32cDuplicate
            | Error::UniqueIdTooLong(_)
            | Error::InvalidAuthority
            | Error::InvalidSsl { .. } => Why::V2Tlv,
            Error::V2Version(_)
            | Error::V2Command(_)
            | Error::V2FamilyTransport(_)
            | Error::V2AddressBlock { .. } => Why::V2Header,
            _ => return None,
        }),
        (Ip { .. } | NoIp { .. }, Invalid | Incomplete) => Some(if v1 {
            if input.windows(7).any(|w| w == b"UNKNOWN") {
                Why::V1Unknown
            } else if input.contains(&b'.') && input.starts_with(b"PROXY TCP6") {
                Why::V1DottedQuadInTcp6
            } else {
                return None;
            }
        } else if input.get(12).is_some_and(|b| b & 0x0f == 0) {
            Why::V2Local
        } else {
            Why::V2Header
        }),
        (NoIp { .. }, Ip { .. }) | (Ip { .. }, NoIp { .. })
            if !v1 && input.get(12).is_some_and(|b| b & 0x0f == 0) =>
        {
            Some(Why::V2Local)
        }
        (Ip { .. } | NoIp { .. }, Ip { .. } | NoIp { .. })
            if v1 && input.windows(7).any(|w| w == b"UNKNOWN") =>
        {
            Some(Why::V1Unknown)
        }
        _ => None,
    }
}

fn lone_lf(input: &[u8]) -> bool {
    input.iter().enumerate().any(|(i, &b)| b == b'\n' && (i == 0 || input[i - 1] != b'\r'))
}

/// Our error's variant name, for the report.
fn variant(e: Option<&Error>) -> String {
    e.map(|e| format!("{e:?}").split([' ', '(', '{']).next().unwrap_or_default().to_string())
        .unwrap_or_default()
}

type Key = (&'static str, Why, String);

/// (parser, input, our outcome, our error, their outcome)
type Unexplained = (&'static str, Vec<u8>, Out, Option<Error>, Out);

struct Report {
    counts: BTreeMap<Key, usize>,
    example: BTreeMap<Key, Vec<Vec<u8>>>,
    unexplained: Vec<Unexplained>,
    agree: usize,
    total: usize,
}

fn run() -> Report {
    let mut r = Report {
        counts: BTreeMap::new(),
        example: BTreeMap::new(),
        unexplained: Vec::new(),
        agree: 0,
        total: 0,
    };
    for input in inputs() {
        let (us, err) = ours(&input);
        for (name, them) in [("ppp", ppp_out(&input)), ("proxy-header", ph_out(&input))] {
            r.total += 1;
            if us == them {
                r.agree += 1;
                continue;
            }
            match explain(&input, &us, err.as_ref(), &them) {
                Some(why) => {
                    let key = (name, why, variant(err.as_ref()));
                    *r.counts.entry(key.clone()).or_default() += 1;
                    let ex = r.example.entry(key).or_default();
                    if ex.len() < 3 && input.len() < 70 {
                        ex.push(input.clone());
                    }
                }
                None => r.unexplained.push((name, input.clone(), us.clone(), err.clone(), them)),
            }
        }
    }
    r
}

#[test]
fn differential_every_disagreement_is_explained() {
    let r = run();
    for (key, n) in &r.counts {
        let ex: Vec<String> =
            r.example[key].iter().map(|e| format!("{:?}", String::from_utf8_lossy(e))).collect();
        eprintln!("{:>12} {:?} {}: {n}  e.g. {}", key.0, key.1, key.2, ex.join(" | "));
    }
    eprintln!("agree {} of {}", r.agree, r.total);
    for (name, input, us, err, them) in r.unexplained.iter().take(30) {
        eprintln!(
            "UNEXPLAINED {name}: {:?} {input:02x?}\n  us {us:?} {err:?}\n  them {them:?}",
            String::from_utf8_lossy(input)
        );
    }
    assert!(r.unexplained.is_empty(), "{} unexplained disagreements", r.unexplained.len());
}

/// One input per kind of disagreement, with what each parser does and why.
/// (input, ours, ppp, proxy-header, explanation)
fn named() -> Vec<(&'static str, Vec<u8>, Out, Out, Out)> {
    use Out::*;
    let ip = |c: usize, s: &str, d: &str| Ip {
        consumed: c,
        src: s.parse().unwrap(),
        dst: d.parse().unwrap(),
    };
    let mut aws = tlv(0x03, &[0xbc, 0xe5, 0x95, 0x1f]);
    aws.extend(tlv(0x04, &[0; 74]));
    let mut bad_crc = v2_crc(0x21, 0x11, &IP4_BLOCK);
    bad_crc[30] ^= 1;
    let long_unknown = [b"PROXY UNKNOWN ".as_slice(), &[b'a'; 100], b"\r\n"].concat();
    vec![
        (
            "leading zero in a port (octal confusion): spec forbids it; proxy-header accepts",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n".to_vec(),
            Invalid,
            Invalid,
            ip(33, "1.2.3.4:1", "5.6.7.8:2"),
        ),
        (
            "signed port: outside the grammar; both accept it (Rust's u16 parser takes '+')",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 +1 2\r\n".to_vec(),
            Invalid,
            ip(33, "1.2.3.4:1", "5.6.7.8:2"),
            ip(33, "1.2.3.4:1", "5.6.7.8:2"),
        ),
        (
            "any byte instead of the space after PROXY: proxy-header skips it",
            b"PROXY0TCP4 1.2.3.4 5.6.7.8 1 2\r\n".to_vec(),
            Invalid,
            Invalid,
            ip(32, "1.2.3.4:1", "5.6.7.8:2"),
        ),
        (
            "lone LF ends an UNKNOWN line for ppp; the grammar needs CRLF, so we wait for it",
            b"PROXY UNKNOWN \n".to_vec(),
            Incomplete,
            NoIp { consumed: 15 },
            Incomplete,
        ),
        (
            "UNKNOWN followed by non-UTF-8 bytes: the spec says ignore up to CRLF; ppp rejects",
            b"PROXY UNKNOWN 1.2.\xff.4 5.6.7.8 1 2\r\n".to_vec(),
            NoIp { consumed: 35 },
            Invalid,
            NoIp { consumed: 35 },
        ),
        (
            "UNKNOWN line longer than 107 bytes: capped (CVE-2021-23351); proxy-header accepts",
            long_unknown,
            Invalid,
            Invalid,
            NoIp { consumed: 116 },
        ),
        (
            "a valid prefix that ppp already calls invalid: a header split here fails with ppp",
            b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 ".to_vec(),
            Incomplete,
            Invalid,
            Incomplete,
        ),
        (
            "signature prefix followed by junk: we reject at the bad byte; proxy-header waits",
            b"PROXYj".to_vec(),
            Invalid,
            Invalid,
            Incomplete,
        ),
        (
            "LOCAL with family TCP4 and len 0: the spec says skip len bytes; ppp rejects, proxy-header waits for an address block len says is absent (a hang until timeout)",
            v2(0x20, 0x11, &[]),
            NoIp { consumed: 16 },
            Invalid,
            Incomplete,
        ),
        (
            "AWS NLB health check (LOCAL, family 0x11, CRC+NOOP from offset 16): all accept; ppp reads garbage addresses from the TLVs (hidden here: LOCAL)",
            v2(0x20, 0x11, &aws),
            NoIp { consumed: 100 },
            NoIp { consumed: 100 },
            NoIp { consumed: 100 },
        ),
        (
            "wrong CRC32C: must be rejected; neither checks it",
            bad_crc,
            Invalid,
            ip(35, "192.168.0.1:56324", "192.168.0.11:443"),
            ip(35, "192.168.0.1:56324", "192.168.0.11:443"),
        ),
        (
            "TLV overrunning len: must be rejected (HAProxy 488ee7fb); both accept (TLVs are lazy)",
            v2(0x21, 0x11, &[IP4_BLOCK.as_slice(), &[1, 0, 9, 1]].concat()),
            Invalid,
            ip(32, "192.168.0.1:56324", "192.168.0.11:443"),
            ip(32, "192.168.0.1:56324", "192.168.0.11:443"),
        ),
        (
            "UNIQUE_ID of 129 bytes: HAProxy's limit is 128; both accept",
            v2(0x21, 0x11, &[IP4_BLOCK.as_slice(), &tlv(0x05, &[0; 129])].concat()),
            Invalid,
            ip(160, "192.168.0.1:56324", "192.168.0.11:443"),
            ip(160, "192.168.0.1:56324", "192.168.0.11:443"),
        ),
        (
            "family INET6 with transport UNSPEC (0x20) is not a valid byte 13; ppp accepts",
            v2(0x21, 0x20, &ip6_block()),
            Invalid,
            ip(52, "[2001:db8::1]:1234", "[2001:db8::2]:443"),
            Invalid,
        ),
    ]
}

#[test]
fn differential_named_disagreements() {
    let mut failures = Vec::new();
    for (why, input, us, p, ph) in named() {
        let got = (ours(&input).0, ppp_out(&input), ph_out(&input));
        if got != (us.clone(), p.clone(), ph.clone()) {
            failures.push(format!("{why}\n  expected {:?}\n  got      {got:?}", (us, p, ph)));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn differential_ppp_reads_aws_nlb_local_tlvs_as_addresses() {
    // The reference's trap: LOCAL with family 0x11 and the TLVs at offset 16. ppp reads the first
    // 12 TLV bytes as an address block; we discard the block and find the (verified) CRC32C.
    let mut aws = tlv(0x03, &[0xbc, 0xe5, 0x95, 0x1f]);
    aws.extend(tlv(0x04, &[0; 74]));
    let buf = v2(0x20, 0x11, &aws);
    let h = ppp::v2::Header::try_from(buf.as_slice()).unwrap();
    let ppp::v2::Addresses::IPv4(a) = h.addresses else { panic!("{:?}", h.addresses) };
    assert_eq!(
        (
            SocketAddr::new(a.source_address.into(), a.source_port),
            SocketAddr::new(a.destination_address.into(), a.destination_port)
        ),
        ("3.0.4.188:74".parse().unwrap(), "229.149.31.4:0".parse().unwrap())
    );
    let Ok(Parsed::Complete { header, consumed: 100 }) = smartproxy_proxy_protocol::parse(&buf)
    else {
        panic!()
    };
    assert!(header.crc32c());
    assert_eq!(header.source(), None);
}
