//! The crate's error type, and the internal nom error that maps onto it.

use crate::header::Version;

/// Everything that can be wrong with a PROXY protocol header, or with a header being built.
///
/// Offsets count from the first byte of the buffer given to [`parse`](crate::parse), so
/// `offset` is also the index of the first byte that cannot be part of a valid header.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The input does not start with the v1 (`PROXY `) or the v2 signature.
    #[error("not a PROXY protocol header: byte {offset} does not match the signature")]
    NotProxyProtocol {
        /// Index of the first byte that differs from the signature.
        offset: usize,
    },
    /// The input starts like a header of a version that the [`ParseOptions`](crate::ParseOptions) exclude.
    #[error("PROXY protocol {0} headers are not accepted by the parse options")]
    VersionNotAllowed(Version),

    /// v1: a byte that the grammar does not allow at this position.
    #[error("v1: invalid byte at offset {offset}, expected {expected}")]
    V1Syntax {
        /// Index of the offending byte.
        offset: usize,
        /// What the grammar wanted there.
        expected: &'static str,
    },
    /// v1: the protocol token is not `TCP4`, `TCP6` or `UNKNOWN`.
    #[error("v1: unknown protocol at offset {offset}, expected TCP4, TCP6 or UNKNOWN")]
    V1Protocol {
        /// Index of the first byte that cannot start a known token.
        offset: usize,
    },
    /// v1: a number (octet or port) starts with `0` and has more digits.
    #[error("v1: number with a leading zero at offset {offset}")]
    V1LeadingZero {
        /// Index of the digit after the leading zero.
        offset: usize,
    },
    /// v1: an IPv4 octet above 255.
    #[error("v1: IPv4 octet above 255 at offset {offset}")]
    V1OctetRange {
        /// Index of the digit that pushed the value out of range.
        offset: usize,
    },
    /// v1: a port above 65535.
    #[error("v1: port above 65535 at offset {offset}")]
    V1PortRange {
        /// Index of the digit that pushed the value out of range.
        offset: usize,
    },
    /// v1: an IPv6 address that is not 128 bits of colon-separated hex groups.
    #[error("v1: invalid IPv6 address at offset {offset}")]
    V1Ipv6 {
        /// Index of the first byte that cannot continue a valid address.
        offset: usize,
    },
    /// v1: a carriage return that is not followed by a line feed.
    #[error("v1: carriage return at offset {offset} is not followed by a line feed")]
    V1LoneCr {
        /// Index of the carriage return.
        offset: usize,
    },
    /// v1: no CRLF within the first 107 bytes.
    #[error("v1: no CRLF within the first 107 bytes")]
    V1TooLong,

    /// v2: the high nibble of byte 12 is not 2.
    #[error("v2: unsupported version {0} in byte 12, expected 2")]
    V2Version(u8),
    /// v2: the low nibble of byte 12 is neither LOCAL (0) nor PROXY (1).
    #[error("v2: invalid command {0:#x} in byte 12")]
    V2Command(u8),
    /// v2: byte 13 is not one of 0x00, 0x11, 0x12, 0x21, 0x22, 0x31, 0x32.
    #[error("v2: invalid address family and transport byte {0:#04x}")]
    V2FamilyTransport(u8),
    /// v2: the length field is above the configured limit.
    #[error("v2: length {len} exceeds the limit of {max} bytes")]
    V2TooLong {
        /// The length field.
        len: usize,
        /// The limit from [`ParseOptions::max_v2_len`](crate::ParseOptions::max_v2_len).
        max: usize,
    },
    /// v2: a PROXY header whose length is smaller than its address block.
    #[error("v2: length {len} is smaller than the {block}-byte address block")]
    V2AddressBlock {
        /// The length field.
        len: usize,
        /// Size of the address block the family byte implies.
        block: usize,
    },
    /// v2: a TLV (or 1 or 2 stray bytes) that runs past the end of the header.
    #[error("v2: TLV at offset {offset} runs past the end of the header")]
    TlvOverrun {
        /// Index of the TLV's type byte.
        offset: usize,
    },
    /// v2: a CRC32C TLV whose length is not 4.
    #[error("v2: CRC32C TLV has length {0}, expected 4")]
    Crc32cLength(usize),
    /// v2: the CRC32C TLV does not match the header.
    #[error("v2: CRC32C mismatch: the header carries {carried:#010x}, computed {computed:#010x}")]
    Crc32cMismatch {
        /// The value in the TLV.
        carried: u32,
        /// The value computed over the header.
        computed: u32,
    },
    /// v2: more than one CRC32C TLV.
    #[error("v2: more than one CRC32C TLV")]
    Crc32cDuplicate,
    /// v2: a UNIQUE_ID TLV longer than 128 bytes.
    #[error("v2: UNIQUE_ID TLV has {0} bytes, the limit is 128")]
    UniqueIdTooLong(usize),
    /// v2: an AUTHORITY TLV that is not UTF-8 or is longer than 255 bytes.
    #[error("v2: AUTHORITY TLV is not UTF-8 or is longer than 255 bytes")]
    InvalidAuthority,
    /// v2: an SSL TLV shorter than 5 bytes or whose sub-TLVs do not fill it exactly.
    #[error("v2: malformed SSL TLV at offset {offset}")]
    InvalidSsl {
        /// Index of the SSL TLV's type byte (when building a header: 0).
        offset: usize,
    },

    /// Generator: the v2 header would need a length field above 65535.
    #[error("v2: header body would be {0} bytes, more than 65535")]
    EncodeTooLarge(usize),
    /// Generator: a TLV value longer than 65535 bytes.
    #[error("TLV value of {0} bytes does not fit in a 16-bit length")]
    TlvTooLarge(usize),
    /// Generator: TLVs were added to a v1 header.
    #[error("TLVs can only be carried by v2 headers")]
    TlvOnV1,
    /// Generator: a CRC32C TLV passed to `with_tlv`; use `with_crc32c`.
    #[error("the CRC32C TLV is added with with_crc32c, not with_tlv")]
    TlvCrc32c,
    /// Generator: a UNIX socket path longer than 108 bytes.
    #[error("unix socket path of {0} bytes is longer than 108 bytes")]
    UnixPathTooLong(usize),
    /// Generator: the transport does not fit the addresses (UNSPEC goes with UNSPEC only).
    #[error("transport {transport:?} cannot carry these addresses")]
    TransportMismatch {
        /// The transport that was asked for.
        transport: crate::header::Transport,
    },
}

/// What went wrong, before the position is turned into an absolute offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Signature,
    V1Syntax(&'static str),
    V1Protocol,
    V1LeadingZero,
    V1OctetRange,
    V1PortRange,
    V1Ipv6,
    V1LoneCr,
    V1TooLong,
}

/// The nom error used inside the crate: a kind and the length of the input left at the failure,
/// which gives the absolute offset once the length of the whole buffer is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Fail {
    pub(crate) rest: usize,
    pub(crate) kind: Kind,
}

impl Fail {
    pub(crate) fn at(input: &[u8], kind: Kind) -> nom::Err<Fail> {
        nom::Err::Error(Fail { rest: input.len(), kind })
    }

    pub(crate) fn into_error(self, total: usize) -> Error {
        let offset = total.saturating_sub(self.rest);
        match self.kind {
            Kind::Signature => Error::NotProxyProtocol { offset },
            Kind::V1Syntax(expected) => Error::V1Syntax { offset, expected },
            Kind::V1Protocol => Error::V1Protocol { offset },
            Kind::V1LeadingZero => Error::V1LeadingZero { offset },
            Kind::V1OctetRange => Error::V1OctetRange { offset },
            Kind::V1PortRange => Error::V1PortRange { offset },
            Kind::V1Ipv6 => Error::V1Ipv6 { offset },
            Kind::V1LoneCr => Error::V1LoneCr { offset },
            Kind::V1TooLong => Error::V1TooLong,
        }
    }
}

impl<'a> nom::error::ParseError<&'a [u8]> for Fail {
    fn from_error_kind(input: &'a [u8], _kind: nom::error::ErrorKind) -> Self {
        Fail { rest: input.len(), kind: Kind::V1Syntax("a different byte") }
    }

    fn append(_input: &'a [u8], _kind: nom::error::ErrorKind, other: Self) -> Self {
        other
    }
}
