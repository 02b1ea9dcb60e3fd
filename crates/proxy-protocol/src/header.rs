//! The parsed or to-be-generated header: version, command, addresses, TLVs.

use std::fmt;
use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6};

use crate::error::Error;
use crate::tlv::{self, Ssl, Tlv, Tlvs};

/// PROXY protocol version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Version {
    /// The text format (`PROXY TCP4 ...\r\n`).
    V1,
    /// The binary format (12-byte signature, then version/command, family, length).
    V2,
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Version::V1 => "v1",
            Version::V2 => "v2",
        })
    }
}

/// What the receiver should do with the addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Command {
    /// Use the real connection endpoints (v2 LOCAL, and v1 `UNKNOWN`): health checks and the like.
    Local,
    /// The connection was relayed on behalf of the client in [`Header::addresses`].
    Proxy,
}

/// Transport protocol of the proxied connection (low nibble of v2 byte 13).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Transport {
    /// Unspecified (LOCAL, UNSPEC family, v1 `UNKNOWN`).
    Unspec,
    /// `SOCK_STREAM`: TCP, or a UNIX stream socket. Every v1 TCP4/TCP6 header is `Stream`.
    Stream,
    /// `SOCK_DGRAM`: UDP, or a UNIX datagram socket.
    Dgram,
}

/// A `sun_path`-style UNIX socket address: 108 bytes, NUL-padded, not necessarily NUL-terminated.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct UnixPath(Box<[u8; 108]>);

impl UnixPath {
    /// Builds a path from its bytes (at most 108), padded with NULs.
    pub fn new(path: &[u8]) -> Result<Self, Error> {
        if path.len() > 108 {
            return Err(Error::UnixPathTooLong(path.len()));
        }
        let mut raw = Box::new([0u8; 108]);
        raw[..path.len()].copy_from_slice(path);
        Ok(UnixPath(raw))
    }

    pub(crate) fn from_raw(raw: &[u8]) -> Self {
        let mut b = Box::new([0u8; 108]);
        let n = raw.len().min(108);
        b[..n].copy_from_slice(&raw[..n]);
        UnixPath(b)
    }

    /// All 108 bytes, as carried on the wire.
    pub fn raw(&self) -> &[u8; 108] {
        &self.0
    }

    /// The path: the bytes before the first NUL (all 108 if there is none). An abstract socket
    /// name starts with a NUL, so its `path()` is empty; use [`raw`](Self::raw) for those.
    pub fn path(&self) -> &[u8] {
        let end = self.0.iter().position(|&b| b == 0).unwrap_or(108);
        &self.0[..end]
    }
}

impl fmt::Debug for UnixPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "UnixPath({:?})", String::from_utf8_lossy(self.path()))
    }
}

/// Source and destination carried by the header.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Addresses {
    /// No addresses: LOCAL, v1 `UNKNOWN`, or v2 family UNSPEC.
    Unspec,
    /// IPv4 (v1 `TCP4`, v2 family INET).
    Ipv4 {
        /// The client.
        src: SocketAddrV4,
        /// The address the client connected to.
        dst: SocketAddrV4,
    },
    /// IPv6 (v1 `TCP6`, v2 family INET6).
    Ipv6 {
        /// The client.
        src: SocketAddrV6,
        /// The address the client connected to.
        dst: SocketAddrV6,
    },
    /// UNIX sockets (v2 family UNIX).
    Unix {
        /// The client's socket path.
        src: UnixPath,
        /// The socket path the client connected to.
        dst: UnixPath,
    },
}

impl Addresses {
    /// Size of the v2 address block for these addresses.
    pub(crate) fn v2_block_len(&self) -> usize {
        match self {
            Addresses::Unspec => 0,
            Addresses::Ipv4 { .. } => 12,
            Addresses::Ipv6 { .. } => 36,
            Addresses::Unix { .. } => 216,
        }
    }

    /// Builds IP addresses from two socket addresses. When the families differ, the IPv4 one is
    /// mapped to IPv4-mapped IPv6 (`::ffff:a.b.c.d`), as HAProxy's `make_proxy_line_v1/v2` do.
    pub fn from_socket_addrs(src: SocketAddr, dst: SocketAddr) -> Addresses {
        match (src, dst) {
            (SocketAddr::V4(s), SocketAddr::V4(d)) => Addresses::Ipv4 { src: s, dst: d },
            (s, d) => Addresses::Ipv6 { src: to_v6(s), dst: to_v6(d) },
        }
    }
}

fn to_v6(a: SocketAddr) -> SocketAddrV6 {
    match a {
        SocketAddr::V6(a) => SocketAddrV6::new(*a.ip(), a.port(), 0, 0),
        SocketAddr::V4(a) => SocketAddrV6::new(a.ip().to_ipv6_mapped(), a.port(), 0, 0),
    }
}

/// A PROXY protocol header (v1 or v2), parsed or built for sending.
///
/// Built with [`Header::v1`], [`Header::v1_unknown`], [`Header::v2`], [`Header::v2_local`] or
/// [`Header::v2_proxy`], then optionally `with_*` TLVs and [`with_crc32c`](Header::with_crc32c);
/// sent with [`encode`](Header::encode).
///
/// The CRC32C TLV is not listed by [`tlvs`](Header::tlvs): a parsed header had a CRC32C TLV (and
/// it matched) exactly when [`crc32c`](Header::crc32c) is true, and [`encode`](Header::encode)
/// appends one, computed over the whole header, when it is true.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Header {
    pub(crate) version: Version,
    pub(crate) command: Command,
    pub(crate) transport: Transport,
    pub(crate) addresses: Addresses,
    pub(crate) crc32c: bool,
    /// Raw TLVs (type, length, value), in wire order, without the CRC32C TLV. Validated.
    pub(crate) tlvs: Vec<u8>,
}

impl Header {
    /// A v1 header for a TCP connection from `src` to `dst`.
    ///
    /// Two IPv4 addresses give `TCP4`; anything else gives `TCP6`, with an IPv4 address written
    /// as IPv4-mapped IPv6 (`::ffff:a.b.c.d`), as HAProxy does for mixed families. Flow info and
    /// scope ids of IPv6 addresses are dropped (the protocol cannot carry them). This mapping
    /// means the function does not fail today; the `Result` leaves room for future checks.
    pub fn v1(src: SocketAddr, dst: SocketAddr) -> Result<Header, Error> {
        Ok(Header {
            version: Version::V1,
            command: Command::Proxy,
            transport: Transport::Stream,
            addresses: clean(Addresses::from_socket_addrs(src, dst)),
            crc32c: false,
            tlvs: Vec::new(),
        })
    }

    /// The v1 `PROXY UNKNOWN\r\n` line: the receiver keeps the real connection's addresses.
    pub fn v1_unknown() -> Header {
        Header {
            version: Version::V1,
            command: Command::Local,
            transport: Transport::Unspec,
            addresses: Addresses::Unspec,
            crc32c: false,
            tlvs: Vec::new(),
        }
    }

    /// A v2 PROXY header for a TCP (STREAM) connection from `src` to `dst`.
    ///
    /// Mixed families are mapped to IPv6 as in [`Header::v1`] (HAProxy's rule). Does not fail
    /// today; the `Result` leaves room for future checks.
    pub fn v2(src: SocketAddr, dst: SocketAddr) -> Result<Header, Error> {
        Header::v2_proxy(Addresses::from_socket_addrs(src, dst), Transport::Stream)
    }

    /// A v2 LOCAL header (family UNSPEC, no addresses), as health checks send.
    pub fn v2_local() -> Header {
        Header {
            version: Version::V2,
            command: Command::Local,
            transport: Transport::Unspec,
            addresses: Addresses::Unspec,
            crc32c: false,
            tlvs: Vec::new(),
        }
    }

    /// A v2 PROXY header with any addresses and transport: UDP, UNIX sockets, or UNSPEC.
    ///
    /// `Addresses::Unspec` needs `Transport::Unspec`; the others need `Stream` or `Dgram`.
    pub fn v2_proxy(addresses: Addresses, transport: Transport) -> Result<Header, Error> {
        let ok = matches!(
            (&addresses, transport),
            (Addresses::Unspec, Transport::Unspec)
                | (
                    Addresses::Ipv4 { .. } | Addresses::Ipv6 { .. } | Addresses::Unix { .. },
                    Transport::Stream | Transport::Dgram
                )
        );
        if !ok {
            return Err(Error::TransportMismatch { transport });
        }
        Ok(Header {
            version: Version::V2,
            command: Command::Proxy,
            transport,
            addresses: clean(addresses),
            crc32c: false,
            tlvs: Vec::new(),
        })
    }

    /// Asks [`encode`](Header::encode) to append a CRC32C TLV (v2 only; no effect on v1).
    #[must_use]
    pub fn with_crc32c(mut self, on: bool) -> Header {
        self.crc32c = on && self.version == Version::V2;
        self
    }

    /// Appends a TLV. The value is checked as the parser would check it (UNIQUE_ID at most 128
    /// bytes, AUTHORITY UTF-8 and at most 255 bytes, SSL well formed), so that what is sent
    /// parses back. CRC32C is refused here: use [`with_crc32c`](Header::with_crc32c).
    pub fn with_tlv(mut self, kind: u8, value: &[u8]) -> Result<Header, Error> {
        if self.version != Version::V2 {
            return Err(Error::TlvOnV1);
        }
        if kind == Tlv::CRC32C {
            return Err(Error::TlvCrc32c);
        }
        let len = u16::try_from(value.len()).map_err(|_| Error::TlvTooLarge(value.len()))?;
        tlv::check_value(kind, value, 0)?;
        // One allocation for the usual handful of small TLVs.
        self.tlvs.reserve((3 + value.len()).max(64 - self.tlvs.len().min(64)));
        self.tlvs.push(kind);
        self.tlvs.extend_from_slice(&len.to_be_bytes());
        self.tlvs.extend_from_slice(value);
        Ok(self)
    }

    /// Appends an ALPN TLV (0x01).
    pub fn with_alpn(self, alpn: &[u8]) -> Result<Header, Error> {
        self.with_tlv(Tlv::ALPN, alpn)
    }

    /// Appends an AUTHORITY TLV (0x02), e.g. the TLS SNI.
    pub fn with_authority(self, authority: &str) -> Result<Header, Error> {
        self.with_tlv(Tlv::AUTHORITY, authority.as_bytes())
    }

    /// Appends a UNIQUE_ID TLV (0x05), at most 128 bytes.
    pub fn with_unique_id(self, id: &[u8]) -> Result<Header, Error> {
        self.with_tlv(Tlv::UNIQUE_ID, id)
    }

    /// Appends a NOOP TLV (0x04) of `len` zero bytes (padding).
    pub fn with_noop(self, len: usize) -> Result<Header, Error> {
        if len > usize::from(u16::MAX) {
            return Err(Error::TlvTooLarge(len));
        }
        let zeros = vec![0u8; len];
        self.with_tlv(Tlv::NOOP, &zeros)
    }

    /// Appends a NETNS TLV (0x30).
    pub fn with_netns(self, name: &str) -> Result<Header, Error> {
        self.with_tlv(Tlv::NETNS, name.as_bytes())
    }

    /// Appends an SSL TLV (0x20): `client` bits, `verify` result, then sub-TLVs such as
    /// (`Ssl::VERSION`, `b"TLSv1.3"`), in that order.
    pub fn with_ssl(
        self,
        client: u8,
        verify: u32,
        sub_tlvs: &[(u8, &[u8])],
    ) -> Result<Header, Error> {
        let mut v =
            Vec::with_capacity(5 + sub_tlvs.iter().map(|(_, s)| 3 + s.len()).sum::<usize>());
        v.push(client);
        v.extend_from_slice(&verify.to_be_bytes());
        for (kind, value) in sub_tlvs {
            let len = u16::try_from(value.len()).map_err(|_| Error::TlvTooLarge(value.len()))?;
            v.push(*kind);
            v.extend_from_slice(&len.to_be_bytes());
            v.extend_from_slice(value);
        }
        self.with_tlv(Tlv::SSL, &v)
    }

    /// Appends the AWS VPC endpoint id TLV (0xEA, subtype 0x01).
    pub fn with_aws_vpce_id(self, id: &str) -> Result<Header, Error> {
        let mut v = Vec::with_capacity(1 + id.len());
        v.push(tlv::AWS_SUBTYPE_VPCE_ID);
        v.extend_from_slice(id.as_bytes());
        self.with_tlv(Tlv::AWS, &v)
    }

    /// Appends the Azure Private Link id TLV (0xEE, subtype 0x01, little-endian u32).
    pub fn with_azure_link_id(self, id: u32) -> Result<Header, Error> {
        let mut v = [0u8; 5];
        v[0] = tlv::AZURE_SUBTYPE_LINK_ID;
        v[1..].copy_from_slice(&id.to_le_bytes());
        self.with_tlv(Tlv::AZURE, &v)
    }

    /// Appends the GCP Private Service Connect connection id TLV (0xE0, big-endian u64).
    pub fn with_gcp_psc_id(self, id: u64) -> Result<Header, Error> {
        self.with_tlv(Tlv::GCP, &id.to_be_bytes())
    }

    /// The protocol version.
    pub fn version(&self) -> Version {
        self.version
    }

    /// LOCAL or PROXY. v1 `UNKNOWN` is reported as [`Command::Local`].
    pub fn command(&self) -> Command {
        self.command
    }

    /// STREAM, DGRAM or UNSPEC. Always `Unspec` for LOCAL headers.
    pub fn transport(&self) -> Transport {
        self.transport
    }

    /// The addresses carried by the header. Always `Unspec` for LOCAL headers: the protocol block
    /// of a LOCAL header is discarded, family included, as the spec asks.
    pub fn addresses(&self) -> &Addresses {
        &self.addresses
    }

    /// The real client's address; `None` for LOCAL, `UNKNOWN`, UNSPEC and UNIX headers.
    pub fn source(&self) -> Option<SocketAddr> {
        match &self.addresses {
            Addresses::Ipv4 { src, .. } => Some(SocketAddr::V4(*src)),
            Addresses::Ipv6 { src, .. } => Some(SocketAddr::V6(*src)),
            _ => None,
        }
    }

    /// The address the client connected to; `None` when [`source`](Header::source) is `None`.
    pub fn destination(&self) -> Option<SocketAddr> {
        match &self.addresses {
            Addresses::Ipv4 { dst, .. } => Some(SocketAddr::V4(*dst)),
            Addresses::Ipv6 { dst, .. } => Some(SocketAddr::V6(*dst)),
            _ => None,
        }
    }

    /// Whether the header carried a (verified) CRC32C TLV, or will be sent with one.
    pub fn crc32c(&self) -> bool {
        self.crc32c
    }

    /// All TLVs in wire order, unknown types included, the CRC32C TLV excluded.
    pub fn tlvs(&self) -> Tlvs<'_> {
        Tlvs::new(&self.tlvs)
    }

    /// The value of the first TLV of type `kind`.
    pub fn tlv(&self, kind: u8) -> Option<&[u8]> {
        self.tlvs().find(|t| t.kind() == kind).map(|t| t.value())
    }

    /// ALPN TLV (0x01).
    pub fn alpn(&self) -> Option<&[u8]> {
        self.tlv(Tlv::ALPN)
    }

    /// AUTHORITY TLV (0x02); the parser has checked that it is UTF-8 and at most 255 bytes.
    pub fn authority(&self) -> Option<&str> {
        self.tlv(Tlv::AUTHORITY).and_then(|v| std::str::from_utf8(v).ok())
    }

    /// UNIQUE_ID TLV (0x05), at most 128 bytes.
    pub fn unique_id(&self) -> Option<&[u8]> {
        self.tlv(Tlv::UNIQUE_ID)
    }

    /// SSL TLV (0x20), with its client bits, verify result and sub-TLVs.
    pub fn ssl(&self) -> Option<Ssl<'_>> {
        self.tlv(Tlv::SSL).and_then(Ssl::new)
    }

    /// NETNS TLV (0x30): the network namespace name, raw bytes (ASCII from HAProxy).
    pub fn netns(&self) -> Option<&[u8]> {
        self.tlv(Tlv::NETNS)
    }

    /// AWS VPC endpoint id (TLV 0xEA, subtype 0x01), if present and made of `[A-Za-z0-9-]`.
    /// Custom-range TLV: trust it only when you know the sender is an AWS NLB.
    pub fn aws_vpce_id(&self) -> Option<&str> {
        self.tlvs().find_map(|t| tlv::aws_vpce_id(t))
    }

    /// Azure Private Link LINKID (TLV 0xEE, subtype 0x01, little-endian u32).
    /// Custom-range TLV: trust it only when you know the sender is Azure.
    pub fn azure_link_id(&self) -> Option<u32> {
        self.tlvs().find_map(|t| tlv::azure_link_id(t))
    }

    /// GCP Private Service Connect connection id (TLV 0xE0, big-endian u64).
    /// Custom-range TLV: trust it only when you know the sender is GCP.
    pub fn gcp_psc_id(&self) -> Option<u64> {
        self.tlvs().find_map(|t| tlv::gcp_psc_id(t))
    }

    /// Appends the wire form to `out` and returns the number of bytes written. For v2, the
    /// length field is computed from the bytes actually written.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<usize, Error> {
        match self.version {
            Version::V1 => Ok(crate::v1::encode(self, out)),
            Version::V2 => crate::v2::encode(self, out),
        }
    }

    /// The wire form in a new `Vec`.
    pub fn to_vec(&self) -> Result<Vec<u8>, Error> {
        let mut v = Vec::with_capacity(self.encoded_len());
        self.encode(&mut v)?;
        Ok(v)
    }

    /// Number of bytes [`encode`](Header::encode) writes (for v2, even when above the 65535-byte
    /// body limit that makes `encode` fail).
    pub fn encoded_len(&self) -> usize {
        match self.version {
            Version::V1 => crate::v1::encoded_len(self),
            Version::V2 => 16 + self.v2_body_len(),
        }
    }

    pub(crate) fn v2_body_len(&self) -> usize {
        self.addresses.v2_block_len() + self.tlvs.len() + if self.crc32c { 7 } else { 0 }
    }
}

/// Drops what the wire cannot carry (IPv6 flow info and scope id) so that a built header equals
/// its parsed form.
fn clean(a: Addresses) -> Addresses {
    match a {
        Addresses::Ipv6 { src, dst } => Addresses::Ipv6 {
            src: SocketAddrV6::new(*src.ip(), src.port(), 0, 0),
            dst: SocketAddrV6::new(*dst.ip(), dst.port(), 0, 0),
        },
        other => other,
    }
}
