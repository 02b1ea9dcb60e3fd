//! Version 1 (text): a streaming nom parser that rejects at the first impossible byte, and the
//! encoder.

use std::io::Write as _;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV4, SocketAddrV6};

use nom::bytes::streaming::tag;
use nom::{IResult, Parser};

use crate::error::{Fail, Kind};
use crate::header::{Addresses, Command, Header, Transport, Version};

type Res<'a, T> = IResult<&'a [u8], T, Fail>;

/// Maximum length of a v1 line, CRLF included.
pub(crate) const MAX_LEN: usize = 107;

/// A literal, failing at the exact byte that differs.
fn lit<'a>(expected: &'static [u8], kind: Kind) -> impl Fn(&'a [u8]) -> Res<'a, ()> {
    move |i: &'a [u8]| match tag::<_, _, Fail>(expected).parse(i) {
        Ok((rest, _)) => Ok((rest, ())),
        Err(nom::Err::Incomplete(n)) => Err(nom::Err::Incomplete(n)),
        Err(_) => {
            let at = i.iter().zip(expected).position(|(a, b)| a != b).unwrap_or(0);
            Err(Fail::at(&i[at..], kind))
        }
    }
}

fn sp(i: &[u8]) -> Res<'_, ()> {
    lit(b" ", Kind::V1Syntax("a single space"))(i)
}

fn crlf(i: &[u8]) -> Res<'_, ()> {
    match i {
        [] | [b'\r'] => Err(nom::Err::Incomplete(nom::Needed::new(2 - i.len()))),
        [b'\r', b'\n', rest @ ..] => Ok((rest, ())),
        [b'\r', ..] => Err(Fail::at(i, Kind::V1LoneCr)),
        _ => Err(Fail::at(i, Kind::V1Syntax("CRLF"))),
    }
}

/// `"0" / [1-9] *DIGIT`, at most `max` in value; out-of-range is reported at the digit that
/// makes it so, a leading zero at the digit after the zero.
fn decimal<'a>(i: &'a [u8], max: u32, range: Kind, what: &'static str) -> Res<'a, u32> {
    let first = match i.first() {
        None => return Err(nom::Err::Incomplete(nom::Needed::Unknown)),
        Some(b) if b.is_ascii_digit() => *b,
        Some(_) => return Err(Fail::at(i, Kind::V1Syntax(what))),
    };
    if first == b'0' {
        return match i.get(1) {
            Some(b) if b.is_ascii_digit() => Err(Fail::at(&i[1..], Kind::V1LeadingZero)),
            _ => Ok((&i[1..], 0)),
        };
    }
    let mut v = u32::from(first - b'0');
    let mut n = 1;
    while let Some(b) = i.get(n) {
        if !b.is_ascii_digit() {
            break;
        }
        v = v * 10 + u32::from(b - b'0');
        if v > max {
            return Err(Fail::at(&i[n..], range));
        }
        n += 1;
    }
    Ok((&i[n..], v))
}

fn octet(i: &[u8]) -> Res<'_, u8> {
    let (rest, v) = decimal(i, 255, Kind::V1OctetRange, "an IPv4 octet")?;
    Ok((rest, v as u8))
}

fn port(i: &[u8]) -> Res<'_, u16> {
    let (rest, v) = decimal(i, 65535, Kind::V1PortRange, "a port")?;
    Ok((rest, v as u16))
}

fn dot(i: &[u8]) -> Res<'_, ()> {
    lit(b".", Kind::V1Syntax("'.'"))(i)
}

/// Dotted quad, no leading zeros.
pub(crate) fn ipv4(i: &[u8]) -> Res<'_, Ipv4Addr> {
    let (i, a) = octet(i)?;
    let (i, _) = dot(i)?;
    let (i, b) = octet(i)?;
    let (i, _) = dot(i)?;
    let (i, c) = octet(i)?;
    let (i, _) = dot(i)?;
    let (i, d) = octet(i)?;
    Ok((i, Ipv4Addr::new(a, b, c, d)))
}

fn hex(b: u8) -> Option<u16> {
    match b {
        b'0'..=b'9' => Some(u16::from(b - b'0')),
        b'a'..=b'f' => Some(u16::from(b - b'a' + 10)),
        b'A'..=b'F' => Some(u16::from(b - b'A' + 10)),
        _ => None,
    }
}

/// IPv6 text as `inet_pton` reads it: 1-4 hex digits per group, at most one `::` standing for at
/// least one group, optionally a dotted quad for the last 32 bits (HAProxy writes IPv4-mapped
/// addresses as `::ffff:a.b.c.d`). Stops before the first byte that is not part of the address;
/// rejects as soon as the address cannot be completed.
pub(crate) fn ipv6(i: &[u8]) -> Res<'_, Ipv6Addr> {
    let incomplete = || nom::Err::Incomplete(nom::Needed::Unknown);
    let bad = |at: usize| Fail::at(&i[at..], Kind::V1Ipv6);
    let mut groups = [0u16; 8];
    let mut n = 0usize;
    let mut gap: Option<usize> = None;
    let mut pos = 0usize;
    if i.first() == Some(&b':') {
        match i.get(1) {
            None => return Err(incomplete()),
            Some(b':') => {
                gap = Some(0);
                pos = 2;
            }
            Some(_) => return Err(bad(1)),
        }
    }
    loop {
        let start = pos;
        let limit = if gap.is_some() { 7 } else { 8 };
        let mut v = 0u16;
        let mut digits = 0;
        while let Some(h) = i.get(pos).and_then(|&b| hex(b)) {
            if digits == 0 && n >= limit {
                return Err(bad(pos));
            }
            if digits == 4 {
                return Err(bad(pos));
            }
            v = (v << 4) | h;
            digits += 1;
            pos += 1;
        }
        let Some(&c) = i.get(pos) else { return Err(incomplete()) };
        if digits == 0 {
            if gap == Some(n) && start == pos {
                break; // the address ends right after "::"
            }
            return Err(bad(pos));
        }
        if c == b'.' {
            // Embedded IPv4 for the last two groups.
            // The dotted quad fills the last two groups: exactly groups 7-8 without "::", and
            // leaving room for the "::" group with it. Otherwise this '.' is the first bad byte.
            if (gap.is_none() && n != 6) || n + 2 > limit {
                return Err(bad(pos));
            }
            let (rest, v4) = ipv4(&i[start..]).map_err(|e| match e {
                nom::Err::Error(f) | nom::Err::Failure(f)
                    if matches!(f.kind, Kind::V1Syntax(_)) =>
                {
                    nom::Err::Error(Fail { rest: f.rest, kind: Kind::V1Ipv6 })
                }
                other => other,
            })?;
            let o = v4.octets();
            groups[n] = u16::from_be_bytes([o[0], o[1]]);
            groups[n + 1] = u16::from_be_bytes([o[2], o[3]]);
            n += 2;
            pos = i.len() - rest.len();
            break;
        }
        groups[n] = v;
        n += 1;
        if c != b':' {
            break;
        }
        match i.get(pos + 1) {
            None => return Err(incomplete()),
            Some(b':') => {
                if gap.is_some() || n >= 8 {
                    return Err(bad(pos + 1));
                }
                gap = Some(n);
                pos += 2;
            }
            Some(_) => {
                if n >= 8 {
                    return Err(bad(pos));
                }
                pos += 1;
            }
        }
    }
    match gap {
        None if n != 8 => return Err(bad(pos)),
        None => {}
        Some(g) => {
            let tail = n - g;
            let mut out = [0u16; 8];
            out[..g].copy_from_slice(&groups[..g]);
            out[8 - tail..].copy_from_slice(&groups[g..n]);
            groups = out;
        }
    }
    Ok((&i[pos..], Ipv6Addr::from(groups)))
}

fn tcp4(i: &[u8]) -> Res<'_, Addresses> {
    let (i, src) = ipv4(i)?;
    let (i, _) = sp(i)?;
    let (i, dst) = ipv4(i)?;
    let (i, _) = sp(i)?;
    let (i, sport) = port(i)?;
    let (i, _) = sp(i)?;
    let (i, dport) = port(i)?;
    let (i, _) = crlf(i)?;
    Ok((
        i,
        Addresses::Ipv4 { src: SocketAddrV4::new(src, sport), dst: SocketAddrV4::new(dst, dport) },
    ))
}

fn tcp6(i: &[u8]) -> Res<'_, Addresses> {
    let (i, src) = ipv6(i)?;
    let (i, _) = sp(i)?;
    let (i, dst) = ipv6(i)?;
    let (i, _) = sp(i)?;
    let (i, sport) = port(i)?;
    let (i, _) = sp(i)?;
    let (i, dport) = port(i)?;
    let (i, _) = crlf(i)?;
    Ok((
        i,
        Addresses::Ipv6 {
            src: SocketAddrV6::new(src, sport, 0, 0),
            dst: SocketAddrV6::new(dst, dport, 0, 0),
        },
    ))
}

/// `*(any byte except CR) CRLF`, the whole line within 107 bytes. `i` starts at offset 13.
fn unknown_rest(i: &[u8]) -> Res<'_, ()> {
    const START: usize = 13; // "PROXY UNKNOWN"
    let window = &i[..i.len().min(MAX_LEN - START)];
    match window.iter().position(|&b| b == b'\r') {
        Some(cr) if START + cr + 2 > MAX_LEN => Err(Fail::at(&i[cr..], Kind::V1TooLong)),
        Some(cr) => crlf(&i[cr..]),
        None if window.len() == MAX_LEN - START => {
            Err(Fail::at(&i[window.len()..], Kind::V1TooLong))
        }
        None => Err(nom::Err::Incomplete(nom::Needed::Unknown)),
    }
}

/// Parses a v1 line at the start of `i`; returns the rest and the header.
pub(crate) fn parse(i: &[u8]) -> Res<'_, Header> {
    let (i, _) = lit(b"PROXY ", Kind::Signature)(i)?;
    let proto = Kind::V1Protocol;
    match i.first() {
        None => Err(nom::Err::Incomplete(nom::Needed::new(1))),
        Some(b'T') => {
            let (r, _) = lit(b"TCP", proto)(i)?;
            let (r, addresses) = match r.first() {
                None => return Err(nom::Err::Incomplete(nom::Needed::Unknown)),
                Some(b'4') => {
                    let (r, _) = sp(&r[1..])?;
                    tcp4(r)?
                }
                Some(b'6') => {
                    let (r, _) = sp(&r[1..])?;
                    tcp6(r)?
                }
                Some(_) => return Err(Fail::at(r, proto)),
            };
            Ok((r, header(Command::Proxy, Transport::Stream, addresses)))
        }
        Some(b'U') => {
            let (r, _) = lit(b"UNKNOWN", proto)(i)?;
            let (r, _) = unknown_rest(r)?;
            Ok((r, header(Command::Local, Transport::Unspec, Addresses::Unspec)))
        }
        Some(_) => Err(Fail::at(i, proto)),
    }
}

fn header(command: Command, transport: Transport, addresses: Addresses) -> Header {
    Header { version: Version::V1, command, transport, addresses, crc32c: false, tlvs: Vec::new() }
}

fn push_u16(out: &mut Vec<u8>, v: u16) {
    let mut buf = [0u8; 5];
    let mut n = buf.len();
    let mut v = v;
    loop {
        n -= 1;
        buf[n] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    out.extend_from_slice(&buf[n..]);
}

fn push_v4(out: &mut Vec<u8>, a: &Ipv4Addr) {
    let o = a.octets();
    for (k, b) in o.iter().enumerate() {
        if k > 0 {
            out.push(b'.');
        }
        push_u16(out, u16::from(*b));
    }
}

/// Writes the v1 line; returns its length.
pub(crate) fn encode(h: &Header, out: &mut Vec<u8>) -> usize {
    let start = out.len();
    match &h.addresses {
        Addresses::Ipv4 { src, dst } => {
            out.extend_from_slice(b"PROXY TCP4 ");
            push_v4(out, src.ip());
            out.push(b' ');
            push_v4(out, dst.ip());
            out.push(b' ');
            push_u16(out, src.port());
            out.push(b' ');
            push_u16(out, dst.port());
            out.extend_from_slice(b"\r\n");
        }
        Addresses::Ipv6 { src, dst } => {
            // Writing into a Vec cannot fail.
            let _ = write!(
                out,
                "PROXY TCP6 {} {} {} {}\r\n",
                src.ip(),
                dst.ip(),
                src.port(),
                dst.port()
            );
        }
        // v1 cannot carry UNIX addresses; constructors never build such a v1 header.
        Addresses::Unspec | Addresses::Unix { .. } => out.extend_from_slice(b"PROXY UNKNOWN\r\n"),
    }
    out.len() - start
}

fn digits(v: u16) -> usize {
    match v {
        0..=9 => 1,
        10..=99 => 2,
        100..=999 => 3,
        1000..=9999 => 4,
        _ => 5,
    }
}

pub(crate) fn encoded_len(h: &Header) -> usize {
    match &h.addresses {
        Addresses::Ipv4 { src, dst } => {
            let ip =
                |a: &Ipv4Addr| 3 + a.octets().iter().map(|&o| digits(u16::from(o))).sum::<usize>();
            11 + ip(src.ip())
                + 1
                + ip(dst.ip())
                + 1
                + digits(src.port())
                + 1
                + digits(dst.port())
                + 2
        }
        Addresses::Ipv6 { src, dst } => {
            // Format into a stack buffer: the longest TCP6 line (104 bytes) fits.
            let mut buf = [0u8; MAX_LEN];
            let mut w = &mut buf[..];
            let _ =
                write!(w, "PROXY TCP6 {} {} {} {}\r\n", src.ip(), dst.ip(), src.port(), dst.port());
            MAX_LEN - w.len()
        }
        Addresses::Unspec | Addresses::Unix { .. } => 15,
    }
}
