//! The ClientHello body (RFC 8446 §4.1.2, RFC 5246 §7.4.1.2) and the extensions we read.

use nom::Parser;
use nom::bytes::complete::take;
use nom::multi::length_data;
use nom::number::complete::{be_u8, be_u16};

use crate::error::Error;

type NomErr<'a> = nom::error::Error<&'a [u8]>;
type R<'a, T> = Result<(&'a [u8], T), Error>;

fn u8_<'a>(i: &'a [u8], what: &'static str) -> R<'a, u8> {
    be_u8::<_, NomErr<'a>>(i).map_err(|_| Error::Malformed(what))
}

fn u16_<'a>(i: &'a [u8], what: &'static str) -> R<'a, u16> {
    be_u16::<_, NomErr<'a>>(i).map_err(|_| Error::Malformed(what))
}

fn take_<'a>(i: &'a [u8], n: usize, what: &'static str) -> R<'a, &'a [u8]> {
    take::<_, _, NomErr<'a>>(n).parse(i).map_err(|_| Error::Malformed(what))
}

fn vec8<'a>(i: &'a [u8], what: &'static str) -> R<'a, &'a [u8]> {
    length_data(be_u8::<_, NomErr<'a>>).parse(i).map_err(|_| Error::Malformed(what))
}

fn vec16<'a>(i: &'a [u8], what: &'static str) -> R<'a, &'a [u8]> {
    length_data(be_u16::<_, NomErr<'a>>).parse(i).map_err(|_| Error::Malformed(what))
}

/// A TLS protocol version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum TlsVersion {
    /// SSL 3.0 (0x0300).
    Ssl3,
    /// TLS 1.0 (0x0301).
    Tls10,
    /// TLS 1.1 (0x0302).
    Tls11,
    /// TLS 1.2 (0x0303).
    Tls12,
    /// TLS 1.3 (0x0304).
    Tls13,
}

impl TlsVersion {
    /// The version of a wire value; `None` for GREASE, drafts and unknown values.
    pub const fn from_u16(v: u16) -> Option<Self> {
        match v {
            0x0300 => Some(Self::Ssl3),
            0x0301 => Some(Self::Tls10),
            0x0302 => Some(Self::Tls11),
            0x0303 => Some(Self::Tls12),
            0x0304 => Some(Self::Tls13),
            _ => None,
        }
    }

    /// The wire value.
    pub const fn to_u16(self) -> u16 {
        match self {
            Self::Ssl3 => 0x0300,
            Self::Tls10 => 0x0301,
            Self::Tls11 => 0x0302,
            Self::Tls12 => 0x0303,
            Self::Tls13 => 0x0304,
        }
    }

    /// `"1.2"`-style name (`"3.0"` for SSL 3.0).
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Ssl3 => "3.0",
            Self::Tls10 => "1.0",
            Self::Tls11 => "1.1",
            Self::Tls12 => "1.2",
            Self::Tls13 => "1.3",
        }
    }
}

/// Extension type numbers read by this crate.
pub mod ext {
    /// server_name (RFC 6066).
    pub const SERVER_NAME: u16 = 0;
    /// application_layer_protocol_negotiation (RFC 7301).
    pub const ALPN: u16 = 16;
    /// session_ticket (RFC 5077).
    pub const SESSION_TICKET: u16 = 35;
    /// pre_shared_key (RFC 8446).
    pub const PRE_SHARED_KEY: u16 = 41;
    /// early_data (RFC 8446).
    pub const EARLY_DATA: u16 = 42;
    /// supported_versions (RFC 8446).
    pub const SUPPORTED_VERSIONS: u16 = 43;
    /// psk_key_exchange_modes (RFC 8446).
    pub const PSK_KEY_EXCHANGE_MODES: u16 = 45;
}

/// What a ClientHello says, as far as routing cares. Owned (the message may have been
/// reassembled from several records).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ClientHello {
    /// Version in the first record header (often 0x0301 for compatibility).
    pub record_version: u16,
    /// `legacy_version` of the ClientHello (0x0303 for TLS 1.2 and 1.3 clients).
    pub legacy_version: u16,
    /// Client random.
    pub random: [u8; 32],
    /// Legacy session id (0 to 32 bytes; non-empty for TLS 1.2 resumption and TLS 1.3
    /// middlebox compatibility).
    pub session_id: Vec<u8>,
    /// Offered cipher suites, in client order (GREASE values included).
    pub cipher_suites: Vec<u16>,
    /// Offered compression methods.
    pub compression_methods: Vec<u8>,
    /// Extension types in the order sent.
    pub extensions: Vec<u16>,
    /// SNI host name (the first `host_name` entry), as sent (not lower-cased).
    pub server_name: Option<String>,
    /// ALPN protocol names, in client preference order.
    pub alpn: Vec<Vec<u8>>,
    /// `supported_versions` values, in client order (GREASE included).
    pub supported_versions: Vec<u16>,
    /// `Some(n)` when the session_ticket extension is present: `n` is the ticket length
    /// (0: the client supports tickets but has none to offer).
    pub session_ticket: Option<usize>,
    /// Whether the pre_shared_key extension is present (TLS 1.3 resumption or external PSK).
    pub psk: bool,
    /// psk_key_exchange_modes values (1 = psk_dhe_ke, 0 = psk_ke).
    pub psk_key_exchange_modes: Vec<u8>,
    /// Whether the early_data extension is present (0-RTT data follows).
    pub early_data: bool,
    /// Number of TLS records the ClientHello spanned.
    pub records: usize,
    /// Bytes of input taken by those records (headers included). Bytes after them (such as
    /// 0-RTT data) belong to the connection and must be forwarded too.
    pub len: usize,
}

impl ClientHello {
    /// The SNI host name.
    pub fn server_name(&self) -> Option<&str> {
        self.server_name.as_deref()
    }

    /// ALPN names that are UTF-8 (`"h2"`, `"http/1.1"`).
    pub fn alpn_str(&self) -> impl Iterator<Item = &str> + '_ {
        self.alpn.iter().filter_map(|p| std::str::from_utf8(p).ok())
    }

    /// Number of cipher suites offered.
    pub fn cipher_suites_count(&self) -> usize {
        self.cipher_suites.len()
    }

    /// Whether a non-empty session ticket is presented (TLS 1.2 resumption).
    pub fn offers_session_ticket(&self) -> bool {
        self.session_ticket.is_some_and(|n| n > 0)
    }

    /// Whether a pre-shared key is offered (TLS 1.3 resumption).
    pub fn offers_psk(&self) -> bool {
        self.psk
    }

    /// Whether the client will send 0-RTT data.
    pub fn offers_early_data(&self) -> bool {
        self.early_data
    }

    /// Whether this looks like a resumption attempt (ticket, PSK or a TLS 1.2 session id
    /// without supported_versions).
    pub fn is_resumption(&self) -> bool {
        self.offers_session_ticket()
            || self.psk
            || (!self.session_id.is_empty() && self.supported_versions.is_empty())
    }

    /// The highest version offered: from `supported_versions` when present (TLS 1.3 if it
    /// is listed), else `legacy_version`. `None` when no known version is offered.
    pub fn max_version(&self) -> Option<TlsVersion> {
        if self.supported_versions.is_empty() {
            TlsVersion::from_u16(self.legacy_version)
        } else {
            self.supported_versions.iter().filter_map(|&v| TlsVersion::from_u16(v)).max()
        }
    }

    /// Whether the extension `ty` was sent.
    pub fn has_extension(&self, ty: u16) -> bool {
        self.extensions.contains(&ty)
    }
}

/// Parses a complete ClientHello handshake body (after the 4-byte handshake header).
pub(crate) fn parse_body(body: &[u8], record_version: u16) -> Result<ClientHello, Error> {
    let (i, legacy_version) = u16_(body, "legacy_version")?;
    let (i, random) = take_(i, 32, "random")?;
    let (i, session_id) = vec8(i, "session_id")?;
    if session_id.len() > 32 {
        return Err(Error::Malformed("session_id longer than 32 bytes"));
    }
    let (i, suites) = vec16(i, "cipher_suites")?;
    if suites.is_empty() || suites.len() % 2 != 0 {
        return Err(Error::Malformed("cipher_suites length"));
    }
    let (i, compression) = vec8(i, "compression_methods")?;
    if compression.is_empty() {
        return Err(Error::Malformed("no compression method"));
    }
    let mut hello = ClientHello {
        record_version,
        legacy_version,
        random: random.try_into().map_err(|_| Error::Malformed("random"))?,
        session_id: session_id.to_vec(),
        cipher_suites: suites.chunks_exact(2).map(|c| u16::from_be_bytes([c[0], c[1]])).collect(),
        compression_methods: compression.to_vec(),
        extensions: Vec::new(),
        server_name: None,
        alpn: Vec::new(),
        supported_versions: Vec::new(),
        session_ticket: None,
        psk: false,
        psk_key_exchange_modes: Vec::new(),
        early_data: false,
        records: 0,
        len: 0,
    };
    if i.is_empty() {
        return Ok(hello); // no extensions (SSL 3.0 style)
    }
    let (i, mut exts) = vec16(i, "extensions")?;
    if !i.is_empty() {
        return Err(Error::Malformed("bytes after extensions"));
    }
    while !exts.is_empty() {
        let (r, ty) = u16_(exts, "extension type")?;
        let (r, data) = vec16(r, "extension length")?;
        exts = r;
        if hello.extensions.contains(&ty) {
            return Err(Error::Malformed("duplicate extension"));
        }
        hello.extensions.push(ty);
        match ty {
            ext::SERVER_NAME => hello.server_name = parse_sni(data)?,
            ext::ALPN => hello.alpn = parse_alpn(data)?,
            ext::SUPPORTED_VERSIONS => {
                let (r, list) = vec8(data, "supported_versions")?;
                if !r.is_empty() || list.is_empty() || list.len() % 2 != 0 {
                    return Err(Error::Malformed("supported_versions length"));
                }
                hello.supported_versions =
                    list.chunks_exact(2).map(|c| u16::from_be_bytes([c[0], c[1]])).collect();
            }
            ext::SESSION_TICKET => hello.session_ticket = Some(data.len()),
            ext::PRE_SHARED_KEY => hello.psk = true,
            ext::EARLY_DATA => hello.early_data = true,
            ext::PSK_KEY_EXCHANGE_MODES => {
                let (r, modes) = vec8(data, "psk_key_exchange_modes")?;
                if !r.is_empty() || modes.is_empty() {
                    return Err(Error::Malformed("psk_key_exchange_modes length"));
                }
                hello.psk_key_exchange_modes = modes.to_vec();
            }
            _ => {}
        }
    }
    Ok(hello)
}

fn parse_sni(data: &[u8]) -> Result<Option<String>, Error> {
    let (r, mut list) = vec16(data, "server_name list")?;
    if !r.is_empty() || list.is_empty() {
        return Err(Error::Malformed("server_name list length"));
    }
    let mut found = None;
    while !list.is_empty() {
        let (r, kind) = u8_(list, "server_name type")?;
        let (r, name) = vec16(r, "server_name length")?;
        list = r;
        if kind == 0 && found.is_none() {
            if name.is_empty() {
                return Err(Error::Malformed("empty server_name"));
            }
            // Host names are ASCII (RFC 6066 §3); anything else cannot be routed on.
            if !name.iter().all(|b| b.is_ascii_graphic()) {
                return Err(Error::Malformed("server_name is not an ASCII host name"));
            }
            found = Some(name.iter().map(|&b| b as char).collect());
        }
    }
    Ok(found)
}

fn parse_alpn(data: &[u8]) -> Result<Vec<Vec<u8>>, Error> {
    let (r, mut list) = vec16(data, "alpn list")?;
    if !r.is_empty() || list.is_empty() {
        return Err(Error::Malformed("alpn list length"));
    }
    let mut out = Vec::new();
    while !list.is_empty() {
        let (r, name) = vec8(list, "alpn protocol")?;
        if name.is_empty() {
            return Err(Error::Malformed("empty alpn protocol"));
        }
        out.push(name.to_vec());
        list = r;
    }
    Ok(out)
}
