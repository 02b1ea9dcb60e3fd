//! Reading a PROXY header at the start of a connection.

use std::time::Duration;

use smartproxy_proxy_protocol::{Detection, ParseOptions, Parsed};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::time::Instant;

use crate::error::HeaderError;
use crate::socket::{PeerAddr, WrappedSocket};

/// What to do about a PROXY header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum HeaderPolicy {
    /// The peer is trusted and must send a header: anything else is an error.
    Require,
    /// The peer is trusted and may send a header. Without one (other first bytes, a silent
    /// client until the deadline, or the end of stream) the connection goes on with the peer as
    /// the client.
    Optional,
    /// The peer is not trusted: a PROXY signature (even an incomplete one when the deadline
    /// passes) is refused with [`HeaderError::Untrusted`]; other bytes, silence until the
    /// deadline, or the end of stream let the connection go on untouched.
    Refuse,
}

/// How [`read_proxy_header`] reads.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct HeaderOptions {
    /// What to do about a header.
    pub policy: HeaderPolicy,
    /// Absolute deadline for the whole header.
    pub deadline: Instant,
    /// The length of the deadline, for the error message.
    pub timeout: Duration,
    /// Longest header accepted, in bytes (v1 is at most 107 anyway). Default 4096 + 16.
    pub max_len: usize,
    /// Options passed to the parser.
    pub parse: ParseOptions,
}

impl HeaderOptions {
    /// A policy and a deadline `timeout` from now, with the default cap.
    pub fn new(policy: HeaderPolicy, timeout: Duration) -> Self {
        Self::with_deadline(policy, Instant::now() + timeout, timeout)
    }

    /// A policy and an absolute deadline (for example counted from `accept`).
    pub fn with_deadline(policy: HeaderPolicy, deadline: Instant, timeout: Duration) -> Self {
        Self { policy, deadline, timeout, max_len: 4096 + 16, parse: ParseOptions::default() }
    }

    /// Sets the cap on the header length.
    pub fn max_len(mut self, max_len: usize) -> Self {
        self.max_len = max_len;
        self
    }
}

/// Bytes read per system call while looking for the header; extra bytes are replayed.
const CHUNK: usize = 512;

/// Reads a PROXY header (per the policy) from the start of `stream`.
///
/// It may read bytes past the header (up to a few hundred): they are kept in the returned
/// socket and replayed by its first reads. The whole header must arrive before `deadline`;
/// more than `max_len` bytes without a complete header is an error, as is the end of stream in
/// the middle of a header.
pub async fn read_proxy_header<S: AsyncRead + Unpin>(
    mut stream: S,
    peer: PeerAddr,
    opts: &HeaderOptions,
) -> Result<WrappedSocket<S>, HeaderError> {
    let mut buf: Vec<u8> = Vec::with_capacity(CHUNK);
    loop {
        // Decide on what is buffered.
        if !buf.is_empty() {
            match smartproxy_proxy_protocol::detect(&buf) {
                Detection::NotProxy => {
                    return match opts.policy {
                        HeaderPolicy::Require => Err(HeaderError::Missing),
                        _ => Ok(WrappedSocket::with_buffered(stream, peer, buf)),
                    };
                }
                Detection::NeedMore => {}
                _ if opts.policy == HeaderPolicy::Refuse => return Err(HeaderError::Untrusted),
                _ => match smartproxy_proxy_protocol::parse_with(&buf, &opts.parse) {
                    Ok(Parsed::Complete { header, consumed }) => {
                        buf.drain(..consumed.min(buf.len()));
                        let mut sock = WrappedSocket::with_buffered(stream, peer, buf);
                        sock.set_proxy_header(header);
                        return Ok(sock);
                    }
                    Ok(Parsed::Incomplete { needed }) => {
                        let total = needed.map_or(buf.len() + 1, |n| buf.len() + n);
                        if total > opts.max_len {
                            return Err(HeaderError::TooLong { max: opts.max_len });
                        }
                    }
                    Err(e) => return Err(HeaderError::Malformed(e)),
                    #[allow(unreachable_patterns)] // `Parsed` may grow variants.
                    _ => return Err(HeaderError::Missing),
                },
            }
        }
        if buf.len() >= opts.max_len {
            return Err(HeaderError::TooLong { max: opts.max_len });
        }
        // Read more, never past the cap.
        let room = (opts.max_len - buf.len()).min(CHUNK);
        buf.reserve(room);
        let read = {
            let mut limited = (&mut stream).take(room as u64);
            tokio::time::timeout_at(opts.deadline, limited.read_buf(&mut buf)).await
        };
        match read {
            Ok(Ok(0)) => {
                return match opts.policy {
                    HeaderPolicy::Require => Err(HeaderError::Eof { received: buf.len() }),
                    // An incomplete signature followed by EOF: nothing to forward that a
                    // backend could mistake for a header, but refuse it all the same.
                    HeaderPolicy::Refuse if !buf.is_empty() => Err(HeaderError::Untrusted),
                    HeaderPolicy::Optional if !buf.is_empty() => {
                        Err(HeaderError::Eof { received: buf.len() })
                    }
                    _ => Ok(WrappedSocket::with_buffered(stream, peer, buf)),
                };
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(HeaderError::Io(e)),
            Err(_) => {
                return match opts.policy {
                    // A silent client (a server-speaks-first protocol) goes on.
                    HeaderPolicy::Refuse | HeaderPolicy::Optional if buf.is_empty() => {
                        Ok(WrappedSocket::new(stream, peer))
                    }
                    // A partial signature from an untrusted peer could be completed later
                    // and reach the backend as a spoofed header: refuse it.
                    HeaderPolicy::Refuse => Err(HeaderError::Untrusted),
                    _ => Err(HeaderError::Timeout(opts.timeout)),
                };
            }
        }
    }
}
