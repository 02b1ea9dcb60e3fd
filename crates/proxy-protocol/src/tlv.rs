//! v2 TLVs: the validating walk used by the parser, and the read-only views over stored TLVs.

use std::fmt;

use nom::Parser;
use nom::bytes::complete::take;
use nom::number::complete::{be_u8, be_u16};

use crate::error::Error;

pub(crate) const AWS_SUBTYPE_VPCE_ID: u8 = 0x01;
pub(crate) const AZURE_SUBTYPE_LINK_ID: u8 = 0x01;

/// One TLV: a type byte and its value. The type numbers are the associated constants.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Tlv<'a> {
    kind: u8,
    value: &'a [u8],
}

impl<'a> Tlv<'a> {
    /// PP2_TYPE_ALPN.
    pub const ALPN: u8 = 0x01;
    /// PP2_TYPE_AUTHORITY.
    pub const AUTHORITY: u8 = 0x02;
    /// PP2_TYPE_CRC32C.
    pub const CRC32C: u8 = 0x03;
    /// PP2_TYPE_NOOP.
    pub const NOOP: u8 = 0x04;
    /// PP2_TYPE_UNIQUE_ID.
    pub const UNIQUE_ID: u8 = 0x05;
    /// PP2_TYPE_SSL.
    pub const SSL: u8 = 0x20;
    /// PP2_TYPE_NETNS.
    pub const NETNS: u8 = 0x30;
    /// GCP Private Service Connect (custom range).
    pub const GCP: u8 = 0xE0;
    /// AWS VPC endpoint (custom range).
    pub const AWS: u8 = 0xEA;
    /// Azure Private Link (custom range).
    pub const AZURE: u8 = 0xEE;

    /// The type byte.
    pub fn kind(&self) -> u8 {
        self.kind
    }

    /// The value bytes (untrusted input: validate before logging or routing on them).
    pub fn value(&self) -> &'a [u8] {
        self.value
    }
}

impl fmt::Debug for Tlv<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Tlv({:#04x}, {:?})", self.kind, self.value)
    }
}

/// Iterator over TLVs (of a header, or sub-TLVs of an SSL TLV), in wire order.
#[derive(Clone, Debug)]
pub struct Tlvs<'a> {
    rest: &'a [u8],
}

impl<'a> Tlvs<'a> {
    pub(crate) fn new(raw: &'a [u8]) -> Self {
        Tlvs { rest: raw }
    }
}

fn one(input: &[u8]) -> nom::IResult<&[u8], Tlv<'_>, ()> {
    let (input, kind) = be_u8(input)?;
    let (input, len) = be_u16(input)?;
    let (input, value) = take(len).parse(input)?;
    Ok((input, Tlv { kind, value }))
}

impl<'a> Iterator for Tlvs<'a> {
    type Item = Tlv<'a>;

    fn next(&mut self) -> Option<Tlv<'a>> {
        // The bytes were validated when stored; a malformed tail simply ends the iteration.
        match one(self.rest) {
            Ok((rest, t)) => {
                self.rest = rest;
                Some(t)
            }
            Err(_) => {
                self.rest = &[];
                None
            }
        }
    }
}

/// View of an SSL TLV (0x20): client bits, verify result, sub-TLVs.
///
/// Caution (HAProxy): `verify` is 0 both when a certificate verified and when none was
/// presented; [`verified`](Ssl::verified) checks the certificate bits as well.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ssl<'a> {
    client: u8,
    verify: u32,
    subs: &'a [u8],
}

impl<'a> Ssl<'a> {
    /// PP2_SUBTYPE_SSL_VERSION.
    pub const VERSION: u8 = 0x21;
    /// PP2_SUBTYPE_SSL_CN.
    pub const CN: u8 = 0x22;
    /// PP2_SUBTYPE_SSL_CIPHER.
    pub const CIPHER: u8 = 0x23;
    /// PP2_SUBTYPE_SSL_SIG_ALG.
    pub const SIG_ALG: u8 = 0x24;
    /// PP2_SUBTYPE_SSL_KEY_ALG.
    pub const KEY_ALG: u8 = 0x25;
    /// PP2_SUBTYPE_SSL_GROUP.
    pub const GROUP: u8 = 0x26;
    /// PP2_SUBTYPE_SSL_SIG_SCHEME.
    pub const SIG_SCHEME: u8 = 0x27;
    /// PP2_SUBTYPE_SSL_CLIENT_CERT (DER).
    pub const CLIENT_CERT: u8 = 0x28;

    /// PP2_CLIENT_SSL bit.
    pub const CLIENT_SSL: u8 = 0x01;
    /// PP2_CLIENT_CERT_CONN bit.
    pub const CLIENT_CERT_CONN: u8 = 0x02;
    /// PP2_CLIENT_CERT_SESS bit.
    pub const CLIENT_CERT_SESS: u8 = 0x04;

    pub(crate) fn new(value: &'a [u8]) -> Option<Self> {
        let (client, rest) = value.split_first()?;
        let verify = rest.get(..4)?;
        let verify = u32::from_be_bytes([verify[0], verify[1], verify[2], verify[3]]);
        Some(Ssl { client: *client, verify, subs: rest.get(4..)? })
    }

    /// The raw client bits.
    pub fn client(&self) -> u8 {
        self.client
    }

    /// The raw verify field (0 = success, when a certificate was presented).
    pub fn verify(&self) -> u32 {
        self.verify
    }

    /// The client connected over SSL/TLS.
    pub fn is_tls(&self) -> bool {
        self.client & Self::CLIENT_SSL != 0
    }

    /// A client certificate was presented on this connection.
    pub fn cert_in_connection(&self) -> bool {
        self.client & Self::CLIENT_CERT_CONN != 0
    }

    /// A client certificate was presented at least once in this TLS session.
    pub fn cert_in_session(&self) -> bool {
        self.client & Self::CLIENT_CERT_SESS != 0
    }

    /// A client certificate was presented (connection or session) and verified.
    pub fn verified(&self) -> bool {
        (self.cert_in_connection() || self.cert_in_session()) && self.verify == 0
    }

    /// The sub-TLVs.
    pub fn sub_tlvs(&self) -> Tlvs<'a> {
        Tlvs::new(self.subs)
    }

    fn sub(&self, kind: u8) -> Option<&'a [u8]> {
        self.sub_tlvs().find(|t| t.kind() == kind).map(|t| t.value())
    }

    fn sub_str(&self, kind: u8) -> Option<&'a str> {
        self.sub(kind).and_then(|v| std::str::from_utf8(v).ok())
    }

    /// TLS version, e.g. `TLSv1.3` (`None` if absent or not UTF-8).
    pub fn version(&self) -> Option<&'a str> {
        self.sub_str(Self::VERSION)
    }

    /// Client certificate subject CN (`None` if absent or not UTF-8).
    pub fn cn(&self) -> Option<&'a str> {
        self.sub_str(Self::CN)
    }

    /// Cipher, e.g. `ECDHE-RSA-AES128-GCM-SHA256`.
    pub fn cipher(&self) -> Option<&'a str> {
        self.sub_str(Self::CIPHER)
    }

    /// Certificate signature algorithm, e.g. `RSA-SHA256`.
    pub fn sig_alg(&self) -> Option<&'a str> {
        self.sub_str(Self::SIG_ALG)
    }

    /// Certificate key algorithm, e.g. `RSA2048`.
    pub fn key_alg(&self) -> Option<&'a str> {
        self.sub_str(Self::KEY_ALG)
    }

    /// Key exchange group, e.g. `secp256r1`.
    pub fn group(&self) -> Option<&'a str> {
        self.sub_str(Self::GROUP)
    }

    /// Signature scheme, e.g. `rsa_pss_rsae_sha256`.
    pub fn sig_scheme(&self) -> Option<&'a str> {
        self.sub_str(Self::SIG_SCHEME)
    }

    /// The client certificate, DER.
    pub fn client_cert(&self) -> Option<&'a [u8]> {
        self.sub(Self::CLIENT_CERT)
    }
}

pub(crate) fn aws_vpce_id(t: Tlv<'_>) -> Option<&str> {
    if t.kind != Tlv::AWS {
        return None;
    }
    let (&sub, id) = t.value.split_first()?;
    if sub != AWS_SUBTYPE_VPCE_ID || !id.iter().all(|b| b.is_ascii_alphanumeric() || *b == b'-') {
        return None;
    }
    std::str::from_utf8(id).ok()
}

pub(crate) fn azure_link_id(t: Tlv<'_>) -> Option<u32> {
    match (t.kind, t.value) {
        (Tlv::AZURE, &[AZURE_SUBTYPE_LINK_ID, a, b, c, d]) => {
            Some(u32::from_le_bytes([a, b, c, d]))
        }
        _ => None,
    }
}

pub(crate) fn gcp_psc_id(t: Tlv<'_>) -> Option<u64> {
    match t.kind {
        Tlv::GCP => t.value.try_into().ok().map(u64::from_be_bytes),
        _ => None,
    }
}

/// Whether `subs` is a sequence of sub-TLVs filling it exactly (one level: sub-TLVs are not
/// searched for further nesting, the Netty recursion bug).
#[inline]
fn subs_fill(mut subs: &[u8]) -> bool {
    while let [_, hi, lo, tail @ ..] = subs {
        let Some((_, after)) = tail.split_at_checked(usize::from(u16::from_be_bytes([*hi, *lo])))
        else {
            return false;
        };
        subs = after;
    }
    subs.is_empty()
}

/// Rules on single TLV values (type-specific). `offset` is where the TLV starts, for errors.
#[inline]
pub(crate) fn check_value(kind: u8, value: &[u8], offset: usize) -> Result<(), Error> {
    match kind {
        Tlv::CRC32C if value.len() != 4 => Err(Error::Crc32cLength(value.len())),
        Tlv::UNIQUE_ID if value.len() > 128 => Err(Error::UniqueIdTooLong(value.len())),
        Tlv::AUTHORITY if value.len() > 255 || std::str::from_utf8(value).is_err() => {
            Err(Error::InvalidAuthority)
        }
        // 5 fixed bytes, then sub-TLVs filling the rest exactly.
        Tlv::SSL => match value.get(5..) {
            Some(subs) if subs_fill(subs) => Ok(()),
            _ => Err(Error::InvalidSsl { offset }),
        },
        _ => Ok(()),
    }
}

/// Result of a successful walk: where the CRC32C value is (relative to the region).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Walk {
    pub(crate) crc: Option<(usize, u32)>,
}

/// Walks the TLVs of `region` exactly to its end, iteratively, checking every rule.
/// `base` is the absolute offset of `region`, for error offsets. Plain slice patterns rather
/// than nom here: this loop is most of the cost of parsing a header with TLVs.
pub(crate) fn walk(region: &[u8], base: usize) -> Result<Walk, Error> {
    let mut crc = None;
    let mut rest = region;
    loop {
        let at = region.len() - rest.len();
        let [kind, hi, lo, tail @ ..] = rest else {
            // 0 bytes left: the walk ended exactly at the end. 1 or 2: stray bytes.
            return if rest.is_empty() {
                Ok(Walk { crc })
            } else {
                Err(Error::TlvOverrun { offset: base + at })
            };
        };
        let len = usize::from(u16::from_be_bytes([*hi, *lo]));
        let Some((value, after)) = tail.split_at_checked(len) else {
            return Err(Error::TlvOverrun { offset: base + at });
        };
        if *kind == Tlv::CRC32C {
            let &[a, b, c, d] = value else { return Err(Error::Crc32cLength(value.len())) };
            if crc.is_some() {
                return Err(Error::Crc32cDuplicate);
            }
            crc = Some((at + 3, u32::from_be_bytes([a, b, c, d])));
        } else {
            check_value(*kind, value, base + at)?;
        }
        rest = after;
    }
}
