//! Version 2 (binary): parser and encoder.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV4, SocketAddrV6};

use nom::Parser;
use nom::bytes::complete::take;
use nom::number::complete::{be_u16, be_u32, be_u128};

use crate::error::Error;
use crate::header::{Addresses, Command, Header, Transport, UnixPath, Version};
use crate::tlv::{self, Tlv};
use crate::{Parsed, crc32c};

/// The 12-byte v2 signature.
pub(crate) const SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

/// The 16-byte prefix of a PROXY TCP/IPv4 header without TLVs, and of a TCP/IPv6 one.
const PREFIX_TCP4: [u8; 16] = prefix_for(0x11, 12);
const PREFIX_TCP6: [u8; 16] = prefix_for(0x21, 36);

const fn prefix_for(fam: u8, len: u8) -> [u8; 16] {
    let mut p = [0u8; 16];
    let mut i = 0;
    while i < 12 {
        p[i] = SIGNATURE[i];
        i += 1;
    }
    p[12] = 0x21;
    p[13] = fam;
    p[15] = len;
    p
}

/// Address block size for a valid family/transport byte; `None` for an invalid byte.
fn block_len(fam: u8) -> Option<usize> {
    match fam {
        0x00 => Some(0),
        0x11 | 0x12 => Some(12),
        0x21 | 0x22 => Some(36),
        0x31 | 0x32 => Some(216),
        _ => None,
    }
}

/// Checks the fixed 16-byte prefix as far as it has arrived, rejecting at the first bad byte.
/// Returns `(command, family byte, len)` once all 16 bytes are there.
#[inline]
fn prefix(buf: &[u8], max_len: usize) -> Result<Option<(Command, u8, usize)>, Error> {
    // Whole signatures (the usual case) are compared at a fixed size, without a `bcmp` call.
    let signature_ok = match buf.first_chunk::<12>() {
        Some(sig) => *sig == SIGNATURE,
        None => buf[..] == SIGNATURE[..buf.len()],
    };
    if !signature_ok {
        let offset = buf.iter().zip(&SIGNATURE).position(|(a, b)| a != b).unwrap_or(0);
        return Err(Error::NotProxyProtocol { offset });
    }
    let Some(&vc) = buf.get(12) else { return Ok(None) };
    if vc >> 4 != 2 {
        return Err(Error::V2Version(vc >> 4));
    }
    let command = match vc & 0x0f {
        0 => Command::Local,
        1 => Command::Proxy,
        c => return Err(Error::V2Command(c)),
    };
    let Some(&fam) = buf.get(13) else { return Ok(None) };
    let Some(block) = block_len(fam) else { return Err(Error::V2FamilyTransport(fam)) };
    let (Some(&hi), Some(&lo)) = (buf.get(14), buf.get(15)) else { return Ok(None) };
    let len = usize::from(u16::from_be_bytes([hi, lo]));
    if len > max_len {
        return Err(Error::V2TooLong { len, max: max_len });
    }
    if command == Command::Proxy && len < block {
        return Err(Error::V2AddressBlock { len, block });
    }
    Ok(Some((command, fam, len)))
}

type NomRes<'a, T> = nom::IResult<&'a [u8], T, ()>;

fn inet(i: &[u8]) -> NomRes<'_, Addresses> {
    let (i, (s, d, sp, dp)) = (be_u32, be_u32, be_u16, be_u16).parse(i)?;
    Ok((
        i,
        Addresses::Ipv4 {
            src: SocketAddrV4::new(Ipv4Addr::from(s), sp),
            dst: SocketAddrV4::new(Ipv4Addr::from(d), dp),
        },
    ))
}

fn inet6(i: &[u8]) -> NomRes<'_, Addresses> {
    let (i, (s, d, sp, dp)) = (be_u128, be_u128, be_u16, be_u16).parse(i)?;
    Ok((
        i,
        Addresses::Ipv6 {
            src: SocketAddrV6::new(Ipv6Addr::from(s), sp, 0, 0),
            dst: SocketAddrV6::new(Ipv6Addr::from(d), dp, 0, 0),
        },
    ))
}

fn unix(i: &[u8]) -> NomRes<'_, Addresses> {
    let (i, (s, d)) = (take(108usize), take(108usize)).parse(i)?;
    Ok((i, Addresses::Unix { src: UnixPath::from_raw(s), dst: UnixPath::from_raw(d) }))
}

/// Walks the TLV region of `header` (the whole 16 + len bytes) starting at `tlv_start`, checks
/// the CRC32C if there is one, and copies the TLVs (without the CRC32C one) out.
fn tlvs(header: &[u8], tlv_start: usize) -> Result<(bool, Vec<u8>), Error> {
    let region = header.get(tlv_start..).unwrap_or(&[]);
    if region.is_empty() {
        return Ok((false, Vec::new()));
    }
    let walk = tlv::walk(region, tlv_start)?;
    match walk.crc {
        None => Ok((false, region.to_vec())),
        Some((at, carried)) => {
            let computed = crc32c::header_crc(header, tlv_start + at);
            if computed != carried {
                return Err(Error::Crc32cMismatch { carried, computed });
            }
            // Drop the CRC32C TLV (3 bytes of type/length before `at`, 4 of value). It is
            // usually the last one (HAProxy and this crate's encoder put it there): one copy.
            let (before, after) = (&region[..at - 3], &region[at + 4..]);
            if after.is_empty() {
                return Ok((true, before.to_vec()));
            }
            let mut v = Vec::with_capacity(region.len() - 7);
            v.extend_from_slice(before);
            v.extend_from_slice(after);
            Ok((true, v))
        }
    }
}

/// Parses a v2 header at the start of `buf` (which starts with at least the first signature byte).
#[inline(always)]
pub(crate) fn parse(buf: &[u8], max_len: usize) -> Result<Parsed, Error> {
    // Fast path for the most common headers: PROXY over TCP/IPv4 or TCP/IPv6 without TLVs,
    // whole. Same checks as the general path, with fixed-size comparisons only.
    if let Some(f) = buf.first_chunk::<28>() {
        if f[..16] == PREFIX_TCP4 && max_len >= 12 {
            let ip = |i: usize| Ipv4Addr::new(f[i], f[i + 1], f[i + 2], f[i + 3]);
            let port = |i: usize| u16::from_be_bytes([f[i], f[i + 1]]);
            let addresses = Addresses::Ipv4 {
                src: SocketAddrV4::new(ip(16), port(24)),
                dst: SocketAddrV4::new(ip(20), port(26)),
            };
            return Ok(Parsed::Complete { header: stream_proxy(addresses), consumed: 28 });
        }
    }
    if let Some(f) = buf.first_chunk::<52>() {
        if f[..16] == PREFIX_TCP6 && max_len >= 36 {
            let ip = |i: usize| {
                let mut o = [0u8; 16];
                o.copy_from_slice(&f[i..i + 16]);
                Ipv6Addr::from(o)
            };
            let port = |i: usize| u16::from_be_bytes([f[i], f[i + 1]]);
            let addresses = Addresses::Ipv6 {
                src: SocketAddrV6::new(ip(16), port(48), 0, 0),
                dst: SocketAddrV6::new(ip(32), port(50), 0, 0),
            };
            return Ok(Parsed::Complete { header: stream_proxy(addresses), consumed: 52 });
        }
    }
    general(buf, max_len)
}

#[inline]
fn stream_proxy(addresses: Addresses) -> Header {
    Header {
        version: Version::V2,
        command: Command::Proxy,
        transport: Transport::Stream,
        addresses,
        crc32c: false,
        tlvs: Vec::new(),
    }
}

fn general(buf: &[u8], max_len: usize) -> Result<Parsed, Error> {
    let Some((command, fam, len)) = prefix(buf, max_len)? else {
        return Ok(Parsed::Incomplete { needed: Some(16 - buf.len()) });
    };
    let total = 16 + len;
    let Some(header) = buf.get(..total) else {
        return Ok(Parsed::Incomplete { needed: Some(total - buf.len()) });
    };
    let body = &header[16..];
    let h = match command {
        Command::Proxy => {
            let parsed = match fam >> 4 {
                1 => inet(body),
                2 => inet6(body),
                3 => unix(body),
                _ => Ok((body, Addresses::Unspec)),
            };
            // `prefix` checked len >= block, so the address parsers cannot run short.
            let Ok((_, addresses)) = parsed else {
                return Err(Error::V2AddressBlock { len, block: block_len(fam).unwrap_or(0) });
            };
            let transport = match (fam >> 4, fam & 0x0f) {
                (0, _) => Transport::Unspec,
                (_, 1) => Transport::Stream,
                _ => Transport::Dgram,
            };
            let block = addresses.v2_block_len();
            let (crc32c, tlvs) = tlvs(header, 16 + block)?;
            Header { version: Version::V2, command, transport, addresses, crc32c, tlvs }
        }
        Command::Local => {
            // Discard the protocol block, family included. TLVs are looked for from offset 16
            // (HAProxy, and the AWS NLB health check); if that walk is malformed, after the
            // address block the family implies; if that fails too, there are no TLVs. Only a
            // well-formed walk whose CRC32C does not match rejects the header.
            let block = block_len(fam).unwrap_or(0);
            let found = match tlvs(header, 16) {
                Ok(found) => found,
                Err(e @ Error::Crc32cMismatch { .. }) => return Err(e),
                Err(_) if block > 0 && len >= block => match tlvs(header, 16 + block) {
                    Ok(found) => found,
                    Err(e @ Error::Crc32cMismatch { .. }) => return Err(e),
                    Err(_) => (false, Vec::new()),
                },
                Err(_) => (false, Vec::new()),
            };
            Header {
                version: Version::V2,
                command,
                transport: Transport::Unspec,
                addresses: Addresses::Unspec,
                crc32c: found.0,
                tlvs: found.1,
            }
        }
    };
    Ok(Parsed::Complete { header: h, consumed: total })
}

/// Writes the v2 header; returns its length.
pub(crate) fn encode(h: &Header, out: &mut Vec<u8>) -> Result<usize, Error> {
    let body_len = h.v2_body_len();
    let len = u16::try_from(body_len).map_err(|_| Error::EncodeTooLarge(body_len))?;
    let start = out.len();
    out.reserve(16 + body_len);
    out.extend_from_slice(&SIGNATURE);
    out.push(match h.command {
        Command::Local => 0x20,
        Command::Proxy => 0x21,
    });
    let fam = match &h.addresses {
        Addresses::Unspec => 0x00,
        Addresses::Ipv4 { .. } => 0x10,
        Addresses::Ipv6 { .. } => 0x20,
        Addresses::Unix { .. } => 0x30,
    };
    let tr = match h.transport {
        Transport::Unspec => 0x00,
        Transport::Stream => 0x01,
        Transport::Dgram => 0x02,
    };
    out.push(if fam == 0 { 0 } else { fam | tr });
    // Placeholder, patched below from the bytes actually written.
    out.extend_from_slice(&[0, 0]);
    match &h.addresses {
        Addresses::Unspec => {}
        Addresses::Ipv4 { src, dst } => {
            out.extend_from_slice(&src.ip().octets());
            out.extend_from_slice(&dst.ip().octets());
            out.extend_from_slice(&src.port().to_be_bytes());
            out.extend_from_slice(&dst.port().to_be_bytes());
        }
        Addresses::Ipv6 { src, dst } => {
            out.extend_from_slice(&src.ip().octets());
            out.extend_from_slice(&dst.ip().octets());
            out.extend_from_slice(&src.port().to_be_bytes());
            out.extend_from_slice(&dst.port().to_be_bytes());
        }
        Addresses::Unix { src, dst } => {
            out.extend_from_slice(src.raw());
            out.extend_from_slice(dst.raw());
        }
    }
    out.extend_from_slice(&h.tlvs);
    let crc_at = if h.crc32c {
        // The whole TLV is reserved before the CRC is computed (HAProxy 2d74dd7e).
        out.extend_from_slice(&[Tlv::CRC32C, 0, 4, 0, 0, 0, 0]);
        Some(out.len() - 4)
    } else {
        None
    };
    let written = out.len() - start;
    debug_assert_eq!(usize::from(len), written - 16);
    let Ok(len) = u16::try_from(written - 16) else {
        out.truncate(start);
        return Err(Error::EncodeTooLarge(written - 16));
    };
    out[start + 14..start + 16].copy_from_slice(&len.to_be_bytes());
    if let Some(at) = crc_at {
        let crc = crc32c::header_crc(&out[start..], at - start);
        out[at..at + 4].copy_from_slice(&crc.to_be_bytes());
    }
    Ok(written)
}
