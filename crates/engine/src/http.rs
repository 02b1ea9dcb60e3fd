//! A small HTTP/1 request-head reader with a byte cap.

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::time::Instant;

/// Largest request head read (bytes).
pub(crate) const MAX_HEAD: usize = 16 * 1024;
const MAX_HEADERS: usize = 100;

/// The parts of an HTTP/1 request head that routing and handlers use.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct RequestHead {
    /// Method (`GET`).
    pub method: String,
    /// Request target as sent (`/a/b?x=1`).
    pub target: String,
    /// `Host` header, as sent (may carry a port).
    pub host: Option<String>,
    /// Every header, names as sent.
    pub headers: Vec<(String, String)>,
}

impl RequestHead {
    /// The path part of the target (before `?`).
    pub fn path(&self) -> &str {
        self.target.split_once('?').map_or(self.target.as_str(), |(p, _)| p)
    }

    /// The query part of the target (after `?`), without the `?`.
    pub fn query(&self) -> Option<&str> {
        self.target.split_once('?').map(|(_, q)| q)
    }

    /// The host without a port, lower-case.
    pub fn domain(&self) -> Option<String> {
        self.host.as_deref().map(strip_port).map(|h| h.to_ascii_lowercase())
    }
}

/// `example.com:8080` -> `example.com`; `[::1]:80` -> `[::1]`.
pub(crate) fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host.find(']').map_or(host, |i| &host[..=i]);
    }
    match host.rsplit_once(':') {
        Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    }
}

/// Why no request head could be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HeadError {
    /// Not HTTP/1.
    #[error("not an HTTP/1 request: {0}")]
    Invalid(String),
    /// Longer than the cap.
    #[error("request head longer than {0} bytes")]
    TooLarge(usize),
    /// The deadline passed first.
    #[error("request head did not arrive in time")]
    Timeout,
    /// The client closed first.
    #[error("connection closed before a complete request head")]
    Eof,
    /// The socket failed.
    #[error("reading the request head failed")]
    Io(#[from] std::io::Error),
}

/// Parses a complete head from `buf`: `Ok(None)` while it is incomplete.
pub(crate) fn parse_head(buf: &[u8]) -> Result<Option<(RequestHead, usize)>, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => {
            let mut head = RequestHead {
                method: req.method.unwrap_or("").to_owned(),
                target: req.path.unwrap_or("/").to_owned(),
                host: None,
                headers: Vec::with_capacity(req.headers.len()),
            };
            for h in req.headers.iter() {
                let v = String::from_utf8_lossy(h.value).into_owned();
                if h.name.eq_ignore_ascii_case("host") && head.host.is_none() {
                    head.host = Some(v.clone());
                }
                head.headers.push((h.name.to_owned(), v));
            }
            Ok(Some((head, n)))
        }
        Ok(httparse::Status::Partial) => Ok(None),
        Err(e) => Err(HeadError::Invalid(e.to_string())),
    }
}

/// Reads a request head from `stream` (bytes after the head are read too and dropped: the
/// handlers that use this answer and close).
pub async fn read_head<S: AsyncRead + Unpin>(
    stream: &mut S,
    deadline: Instant,
) -> Result<RequestHead, HeadError> {
    let mut buf = Vec::with_capacity(1024);
    loop {
        if !buf.is_empty() {
            if let Some((head, _)) = parse_head(&buf)? {
                return Ok(head);
            }
        }
        if buf.len() >= MAX_HEAD {
            return Err(HeadError::TooLarge(MAX_HEAD));
        }
        let room = (MAX_HEAD - buf.len()).min(4096);
        buf.reserve(room);
        let mut limited = (&mut *stream).take(room as u64);
        match tokio::time::timeout_at(deadline, limited.read_buf(&mut buf)).await {
            Ok(Ok(0)) => return Err(HeadError::Eof),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(HeadError::Io(e)),
            Err(_) => return Err(HeadError::Timeout),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_head() {
        let (h, n) =
            parse_head(b"GET /a/b?x=1 HTTP/1.1\r\nHost: Example.com:8080\r\nX-A: 1\r\n\r\nbody")
                .unwrap()
                .unwrap();
        assert_eq!(n, 57);
        assert_eq!(h.path(), "/a/b");
        assert_eq!(h.query(), Some("x=1"));
        assert_eq!(h.domain().as_deref(), Some("example.com"));
        assert_eq!(h.headers.len(), 2);
        assert!(parse_head(b"GET / HTTP/1.1\r\nHost: a").unwrap().is_none());
        assert!(parse_head(b"\x16\x03\x01garbage\r\n\r\n").is_err());
        assert_eq!(strip_port("[::1]:80"), "[::1]");
        assert_eq!(strip_port("a.b"), "a.b");
    }
}
