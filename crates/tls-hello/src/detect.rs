//! First-bytes protocol detection for ports that take both TLS and plain HTTP.

/// HTTP/1 methods (and the HTTP/2 preface `PRI`), each followed by a space.
const METHODS: &[&[u8]] = &[
    b"GET ",
    b"HEAD ",
    b"POST ",
    b"PUT ",
    b"DELETE ",
    b"CONNECT ",
    b"OPTIONS ",
    b"TRACE ",
    b"PATCH ",
    b"PRI ",
];

/// Whether a connection whose first byte is `first_byte` may be TLS (a handshake record).
pub const fn looks_like_tls(first_byte: u8) -> bool {
    first_byte == 0x16
}

/// Whether `buf` starts with an HTTP request line (`GET `, `POST `, … or the HTTP/2
/// preface `PRI `). A shorter `buf` that is a prefix of one of them is not enough: see
/// [`detect`].
pub fn is_http_start(buf: &[u8]) -> bool {
    METHODS.iter().any(|m| buf.starts_with(m))
}

/// What the first bytes of a connection are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Protocol {
    /// A TLS handshake record (confirm with [`crate::peek`]).
    Tls,
    /// An HTTP request line.
    Http,
    /// Neither.
    Unknown,
    /// Too few bytes to tell (empty, or a prefix of an HTTP method).
    NeedMore,
}

/// Tells TLS from HTTP from the first bytes.
pub fn detect(buf: &[u8]) -> Protocol {
    match buf.first() {
        None => Protocol::NeedMore,
        Some(&b) if looks_like_tls(b) => Protocol::Tls,
        Some(_) if is_http_start(buf) => Protocol::Http,
        Some(_) if METHODS.iter().any(|m| m.starts_with(buf)) => Protocol::NeedMore,
        Some(_) => Protocol::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detection() {
        assert_eq!(detect(b""), Protocol::NeedMore);
        assert_eq!(detect(b"\x16\x03\x01"), Protocol::Tls);
        assert_eq!(detect(b"GET / HTTP/1.1\r\n"), Protocol::Http);
        assert_eq!(detect(b"PRI * HTTP/2.0\r\n"), Protocol::Http);
        assert_eq!(detect(b"GE"), Protocol::NeedMore);
        assert_eq!(detect(b"DELETE"), Protocol::NeedMore);
        assert_eq!(detect(b"GETX"), Protocol::Unknown);
        assert_eq!(detect(b"SSH-2.0"), Protocol::Unknown);
        assert!(is_http_start(b"OPTIONS * HTTP/1.1"));
        assert!(!is_http_start(b"get / HTTP/1.1"));
        assert!(looks_like_tls(0x16) && !looks_like_tls(0x47));
    }
}
