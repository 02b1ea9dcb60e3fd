//! Errors: the bytes are not (or cannot become) a TLS ClientHello.

/// Why the buffered bytes are not a ClientHello. "Need more bytes" is not an error: see
/// [`crate::Peek::Incomplete`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A record that is not a handshake record (content type 22) came first or in the middle
    /// of the ClientHello.
    #[error("record content type {0} is not handshake (22)")]
    NotHandshake(u8),
    /// The record version is not 3.x (SSL 3.0 to TLS 1.3 all use major version 3).
    #[error("record version {0:#06x} is not a TLS record version")]
    RecordVersion(u16),
    /// A record length outside 1..=16384 (plus 2048 for peers that overshoot).
    #[error("record length {0} is out of range")]
    RecordLength(usize),
    /// The first handshake message is not a ClientHello (type 1).
    #[error("handshake message type {0} is not a ClientHello (1)")]
    NotClientHello(u8),
    /// The ClientHello would take more bytes than the configured cap.
    #[error("ClientHello needs more than {max} bytes")]
    TooLarge {
        /// The cap ([`crate::PeekOptions::max_bytes`]).
        max: usize,
    },
    /// The ClientHello is cut or has inconsistent lengths; the text names the field.
    #[error("malformed ClientHello: {0}")]
    Malformed(&'static str),
}
