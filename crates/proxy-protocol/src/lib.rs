//! HAProxy PROXY protocol v1 (text) and v2 (binary): a strict, streaming-safe, sans-I/O parser
//! and generator, written with [`nom`](https://docs.rs/nom).
//!
//! Start with [`parse`]: give it the bytes received so far. It returns
//! [`Parsed::Incomplete`] while the buffer is a valid prefix of a header, [`Parsed::Complete`]
//! with the header and the number of bytes it took once the whole header is there (the bytes
//! after it belong to the application and are never looked at), or an [`Error`] as soon as a
//! byte cannot lead to a valid header. Splitting the input anywhere gives the same final result.
//!
//! ```
//! use smartproxy_proxy_protocol::{parse, Header, Parsed};
//!
//! let mut buf = b"PROXY TCP4 192.0.2.1 198.51.100.7 51234 443\r\nGET / HTTP/1.1\r\n".to_vec();
//! assert!(matches!(parse(&buf[..20]), Ok(Parsed::Incomplete { .. })));
//! let Parsed::Complete { header, consumed } = parse(&buf).unwrap() else { unreachable!() };
//! assert_eq!(header.source(), Some("192.0.2.1:51234".parse().unwrap()));
//! assert_eq!(&buf[consumed..], b"GET / HTTP/1.1\r\n");
//!
//! // Sending: a v2 header with an AUTHORITY TLV and a CRC32C.
//! let h = Header::v2("192.0.2.1:51234".parse().unwrap(), "198.51.100.7:443".parse().unwrap())?
//!     .with_authority("example.com")?
//!     .with_crc32c(true);
//! buf.clear();
//! let n = h.encode(&mut buf)?;
//! assert_eq!(parse(&buf), Ok(Parsed::Complete { header: h, consumed: n }));
//! # Ok::<(), smartproxy_proxy_protocol::Error>(())
//! ```
//!
//! The spec forbids guessing whether a header is present: enable the protocol per listener,
//! accept it only from trusted peers, and use [`detect`] to refuse headers from the others.
#![cfg_attr(doctest, doc = include_str!("../README.md"))] // README examples run as doc tests
#![forbid(unsafe_code)]

mod crc32c;
mod error;
mod header;
mod tlv;
mod v1;
mod v2;

pub use self::error::Error;
pub use self::header::{Addresses, Command, Header, Transport, UnixPath, Version};
pub use self::tlv::{Ssl, Tlv, Tlvs};

/// Longest v1 line, CRLF included (`PROXY UNKNOWN` followed by full IPv6 fields).
pub const V1_MAX_LEN: usize = v1::MAX_LEN;

/// The 12-byte v2 signature, `\r\n\r\n\0\r\nQUIT\n`.
pub const V2_SIGNATURE: [u8; 12] = v2::SIGNATURE;

/// Default cap on the v2 `len` field.
pub const DEFAULT_MAX_V2_LEN: usize = 4096;

/// Which versions [`parse_with`] accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum Versions {
    /// v1 and v2, told apart by the first byte.
    #[default]
    Any,
    /// v1 only; input that starts like v2 is rejected at its first byte.
    V1Only,
    /// v2 only; input that starts like v1 is rejected at its first byte.
    V2Only,
}

/// Options for [`parse_with`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct ParseOptions {
    /// Versions accepted.
    pub versions: Versions,
    /// Largest accepted v2 `len` field (bytes after the 16-byte prefix); checked as soon as the
    /// field is read. Default 4096.
    pub max_v2_len: usize,
}

impl Default for ParseOptions {
    fn default() -> Self {
        ParseOptions { versions: Versions::Any, max_v2_len: DEFAULT_MAX_V2_LEN }
    }
}

impl ParseOptions {
    /// Sets [`versions`](ParseOptions::versions).
    #[must_use]
    pub fn versions(mut self, versions: Versions) -> Self {
        self.versions = versions;
        self
    }

    /// Sets [`max_v2_len`](ParseOptions::max_v2_len).
    #[must_use]
    pub fn max_v2_len(mut self, max: usize) -> Self {
        self.max_v2_len = max;
        self
    }
}

/// Outcome of a parse that did not fail.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Parsed {
    /// A whole header.
    Complete {
        /// The header.
        header: Header,
        /// Bytes taken by the header; the rest of the buffer is application data.
        consumed: usize,
    },
    /// The buffer is a valid prefix of a header; read more.
    Incomplete {
        /// A lower bound on the number of bytes still missing, where it is known
        /// (always for v2; for v1 the line length is not known until its CRLF arrives).
        needed: Option<usize>,
    },
}

/// What the first bytes of a connection look like; see [`detect`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Detection {
    /// Not a PROXY protocol signature.
    NotProxy,
    /// The buffer is a strict prefix of a signature (`PROXY ` or the v2 signature).
    NeedMore,
    /// Starts with `PROXY `.
    V1,
    /// Starts with the 12-byte v2 signature.
    V2,
}

/// Tells whether a buffer starts with a PROXY protocol signature, without parsing the header.
///
/// For refusing PROXY headers from untrusted peers: the spec forbids using this to decide
/// whether to parse a header (configure it per listener instead).
pub fn detect(buf: &[u8]) -> Detection {
    fn against(buf: &[u8], sig: &[u8], found: Detection) -> Detection {
        let n = buf.len().min(sig.len());
        if buf[..n] != sig[..n] {
            Detection::NotProxy
        } else if n < sig.len() {
            Detection::NeedMore
        } else {
            found
        }
    }
    match buf.first() {
        None => Detection::NeedMore,
        Some(b'P') => against(buf, b"PROXY ", Detection::V1),
        Some(b'\r') => against(buf, &V2_SIGNATURE, Detection::V2),
        Some(_) => Detection::NotProxy,
    }
}

/// Parses a header of either version at the start of `buf`, with the default options.
///
/// See [`parse_with`].
#[inline]
pub fn parse(buf: &[u8]) -> Result<Parsed, Error> {
    parse_with(buf, &ParseOptions::default())
}

/// Parses a header at the start of `buf`, which may hold only part of it.
///
/// Returns [`Parsed::Incomplete`] while `buf` is a valid prefix, [`Parsed::Complete`] once the
/// whole header is there, and an error as soon as a byte cannot lead to a valid header.
/// Never looks at bytes after the header, never panics, allocates only for v2 TLVs and UNIX
/// paths.
#[inline]
pub fn parse_with(buf: &[u8], opts: &ParseOptions) -> Result<Parsed, Error> {
    match buf.first() {
        None => Ok(Parsed::Incomplete {
            needed: Some(match opts.versions {
                Versions::V2Only => 16,
                _ => 15,
            }),
        }),
        Some(b'P') if opts.versions == Versions::V2Only => {
            Err(Error::VersionNotAllowed(Version::V1))
        }
        Some(b'\r') if opts.versions == Versions::V1Only => {
            Err(Error::VersionNotAllowed(Version::V2))
        }
        Some(b'P') => {
            // The whole line, CRLF included, must fit in 107 bytes: the parser never sees more,
            // and running out of those 107 bytes is the error.
            let line = &buf[..buf.len().min(V1_MAX_LEN)];
            match v1::parse(line) {
                Ok((rest, header)) => {
                    Ok(Parsed::Complete { header, consumed: line.len() - rest.len() })
                }
                Err(nom::Err::Incomplete(_)) if line.len() == V1_MAX_LEN => Err(Error::V1TooLong),
                Err(nom::Err::Incomplete(n)) => Ok(Parsed::Incomplete {
                    needed: match n {
                        nom::Needed::Size(s) => Some(s.get()),
                        nom::Needed::Unknown => None,
                    },
                }),
                Err(nom::Err::Error(f) | nom::Err::Failure(f)) => Err(f.into_error(line.len())),
            }
        }
        Some(b'\r') => v2::parse(buf, opts.max_v2_len),
        Some(_) => Err(Error::NotProxyProtocol { offset: 0 }),
    }
}
