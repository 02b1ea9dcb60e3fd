//! Errors of header reads and peeks.

use std::io;
use std::time::Duration;

/// Why a PROXY header could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HeaderError {
    /// The deadline passed before a complete header arrived.
    #[error("no complete PROXY header within {0:?}")]
    Timeout(Duration),
    /// The peer closed the connection before a complete header arrived.
    #[error("connection closed after {received} bytes, before a complete PROXY header")]
    Eof {
        /// Bytes received before the end of stream.
        received: usize,
    },
    /// The bytes are not a valid PROXY header.
    #[error("malformed PROXY header")]
    Malformed(#[source] smartproxy_proxy_protocol::Error),
    /// A header is required but the connection starts with something else.
    #[error("connection does not start with a PROXY header")]
    Missing,
    /// The header would exceed the configured cap.
    #[error("PROXY header longer than {max} bytes")]
    TooLong {
        /// The cap.
        max: usize,
    },
    /// A peer that is not trusted sent a PROXY header (or the start of one).
    #[error("PROXY header from an untrusted peer")]
    Untrusted,
    /// Reading from the socket failed.
    #[error("reading the PROXY header failed")]
    Io(#[from] io::Error),
}

impl HeaderError {
    /// A short stable label for logs and metrics (`timeout`, `eof`, `malformed`, `missing`,
    /// `too_long`, `untrusted`, `io`).
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Timeout(_) => "timeout",
            Self::Eof { .. } => "eof",
            Self::Malformed(_) => "malformed",
            Self::Missing => "missing",
            Self::TooLong { .. } => "too_long",
            Self::Untrusted => "untrusted",
            Self::Io(_) => "io",
        }
    }
}

/// Why buffering more bytes failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PeekError {
    /// The deadline passed first.
    #[error("deadline passed while waiting for data")]
    Timeout,
    /// The buffer already holds the maximum number of bytes allowed.
    #[error("peek buffer full ({cap} bytes)")]
    CapReached {
        /// The cap.
        cap: usize,
    },
    /// The socket failed.
    #[error("reading failed")]
    Io(#[from] io::Error),
}
