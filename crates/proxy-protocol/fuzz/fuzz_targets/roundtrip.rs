#![no_main]
//! generate -> parse: a header built from the fuzz input must parse back to itself, consuming
//! exactly the bytes written.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

use libfuzzer_sys::fuzz_target;
use smartproxy_proxy_protocol::{Addresses, Header, Parsed, Transport, UnixPath, parse};

struct Input<'a>(&'a [u8]);

impl<'a> Input<'a> {
    fn byte(&mut self) -> u8 {
        match self.0.split_first() {
            Some((b, rest)) => {
                self.0 = rest;
                *b
            }
            None => 0,
        }
    }
    fn u16(&mut self) -> u16 {
        u16::from_be_bytes([self.byte(), self.byte()])
    }
    fn u32(&mut self) -> u32 {
        u32::from_be_bytes([self.byte(), self.byte(), self.byte(), self.byte()])
    }
    fn bytes(&mut self, n: usize) -> &'a [u8] {
        let n = n.min(self.0.len());
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        a
    }
    fn v4(&mut self) -> SocketAddr {
        SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::from(self.u32()), self.u16()))
    }
    fn v6(&mut self) -> SocketAddr {
        let mut o = [0u8; 16];
        for b in &mut o {
            *b = self.byte();
        }
        SocketAddr::V6(SocketAddrV6::new(Ipv6Addr::from(o), self.u16(), 0, 0))
    }
    fn ip(&mut self) -> SocketAddr {
        if self.byte() & 1 == 0 { self.v4() } else { self.v6() }
    }
}

fuzz_target!(|data: &[u8]| {
    let mut i = Input(data);
    let sel = i.byte();
    let header = match sel % 6 {
        0 => Header::v1(i.ip(), i.ip()).ok(),
        1 => Some(Header::v1_unknown()),
        2 => Header::v2(i.ip(), i.ip()).ok(),
        3 => Some(Header::v2_local()),
        4 => {
            let t = if i.byte() & 1 == 0 { Transport::Stream } else { Transport::Dgram };
            let a = match i.byte() % 3 {
                0 => Addresses::from_socket_addrs(i.ip(), i.ip()),
                1 => {
                    let (a, b) = (i.byte() as usize % 109, i.byte() as usize % 109);
                    match (UnixPath::new(i.bytes(a)), UnixPath::new(i.bytes(b))) {
                        (Ok(src), Ok(dst)) => Addresses::Unix { src, dst },
                        _ => return,
                    }
                }
                _ => Addresses::Unspec,
            };
            let t = if matches!(a, Addresses::Unspec) { Transport::Unspec } else { t };
            Header::v2_proxy(a, t).ok()
        }
        _ => Header::v2(i.ip(), i.ip()).ok(),
    };
    let Some(mut header) = header else { return };
    // TLVs: (kind, len, value) until the input runs out; builders refuse invalid ones.
    while !i.0.is_empty() {
        let kind = i.byte();
        let len = usize::from(i.byte());
        let value = i.bytes(len);
        header = match kind % 8 {
            0 => header.clone().with_ssl(i.byte(), i.u32(), &[(0x21, value)]).unwrap_or(header),
            1 => header.clone().with_azure_link_id(i.u32()).unwrap_or(header),
            2 => header.clone().with_gcp_psc_id(u64::from(i.u32())).unwrap_or(header),
            _ => header.clone().with_tlv(kind, value).unwrap_or(header),
        };
    }
    let header = header.with_crc32c(sel & 0x80 != 0);
    let mut out = vec![0xAA; 3]; // encode appends
    let n = match header.encode(&mut out) {
        Ok(n) => n,
        Err(_) => return,
    };
    assert_eq!(n, out.len() - 3);
    assert_eq!(n, header.encoded_len());
    out.extend_from_slice(b"tail");
    let opts = smartproxy_proxy_protocol::ParseOptions::default().max_v2_len(65535);
    match smartproxy_proxy_protocol::parse_with(&out[3..], &opts) {
        Ok(Parsed::Complete { header: h2, consumed }) => {
            assert_eq!(h2, header);
            assert_eq!(consumed, n);
        }
        other => panic!("{header:?} encoded as {:?} parses as {other:?}", &out[3..]),
    }
    let _ = parse(&out[3..]);
});
