//! The record layer: find the ClientHello in the first handshake records, reassembling a
//! message split over records, and tell the caller how many more bytes it needs.

use crate::error::Error;
use crate::hello::{ClientHello, parse_body};

/// Handshake content type.
const HANDSHAKE: u8 = 22;
/// ClientHello handshake type.
const CLIENT_HELLO: u8 = 1;
/// Largest plaintext record (RFC 8446 §5.1).
const MAX_RECORD: usize = 1 << 14;
/// Smallest possible ClientHello body: version, random, empty session id, one suite, one
/// compression method.
const MIN_BODY: usize = 2 + 32 + 1 + 2 + 2 + 1 + 1;

/// Options of [`peek`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct PeekOptions {
    /// Most bytes of input the ClientHello may take, record headers included; a longer one
    /// is [`Error::TooLarge`] as soon as its declared length shows it. Default 16 KiB.
    pub max_bytes: usize,
}

impl Default for PeekOptions {
    fn default() -> Self {
        Self { max_bytes: 16 * 1024 }
    }
}

impl PeekOptions {
    /// Sets [`PeekOptions::max_bytes`].
    pub fn with_max_bytes(mut self, max: usize) -> Self {
        self.max_bytes = max;
        self
    }
}

/// The result of [`peek`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
#[allow(
    clippy::large_enum_variant,
    reason = "returned once per connection and moved out at once; a Box would only add an allocation"
)]
pub enum Peek {
    /// So far a valid beginning; read more and call again with all the bytes.
    Incomplete {
        /// At least this many more bytes are needed (`None` when unknown).
        needed: Option<usize>,
    },
    /// The whole ClientHello is buffered.
    Complete(ClientHello),
}

/// Looks for a ClientHello at the start of `buf` (the bytes a client sent first, buffered).
///
/// Returns [`Peek::Incomplete`] while `buf` is a valid but partial beginning (split over TCP
/// segments or over several TLS records), [`Peek::Complete`] once the whole message is in,
/// and an error as soon as the bytes cannot be a ClientHello (first byte not 0x16, record
/// version not 3.x, a non-handshake record, another handshake type, inconsistent lengths, or
/// more than `opts.max_bytes` needed). Never panics, never reads past `buf`.
pub fn peek(buf: &[u8], opts: &PeekOptions) -> Result<Peek, Error> {
    let max = opts.max_bytes;
    let mut pos = 0usize;
    let mut first: &[u8] = &[];
    let mut joined: Option<Vec<u8>> = None;
    let mut records = 0usize;
    let mut record_version = 0u16;
    loop {
        let rest = &buf[pos..];
        // Record header, possibly partial: check what is there.
        if let Some(&ct) = rest.first()
            && ct != HANDSHAKE
        {
            return Err(Error::NotHandshake(ct));
        }
        if let Some(&major) = rest.get(1)
            && major != 3
        {
            return Err(Error::RecordVersion(
                u16::from(major) << 8 | u16::from(rest.get(2).copied().unwrap_or(0)),
            ));
        }
        if let Some(&minor) = rest.get(2)
            && minor > 4
        {
            return Err(Error::RecordVersion(0x0300 | u16::from(minor)));
        }
        if rest.len() < 5 {
            if pos + 5 > max {
                return Err(Error::TooLarge { max });
            }
            return Ok(Peek::Incomplete { needed: Some(5 - rest.len()) });
        }
        let version = u16::from_be_bytes([rest[1], rest[2]]);
        let len = usize::from(u16::from_be_bytes([rest[3], rest[4]]));
        if len == 0 || len > MAX_RECORD {
            return Err(Error::RecordLength(len));
        }
        if records == 0 {
            record_version = version;
        }
        records += 1;
        let end = pos + 5 + len;
        if end > max {
            return Err(Error::TooLarge { max });
        }
        let avail = &rest[5..rest.len().min(5 + len)];

        // The handshake header, from the bytes known so far (a partial record included).
        let mut head = [0u8; 4];
        let mut n = 0;
        for &b in joined.as_deref().unwrap_or(first).iter().chain(avail).take(4) {
            head[n] = b;
            n += 1;
        }
        if n >= 1 && head[0] != CLIENT_HELLO {
            return Err(Error::NotClientHello(head[0]));
        }
        let msg_end = if n == 4 {
            let body =
                (usize::from(head[1]) << 16) | (usize::from(head[2]) << 8) | usize::from(head[3]);
            if body < MIN_BODY {
                return Err(Error::Malformed("ClientHello shorter than its fixed fields"));
            }
            // Lower bound on input: one record header plus the message.
            if 5 + 4 + body > max {
                return Err(Error::TooLarge { max });
            }
            Some(4 + body)
        } else {
            None
        };

        if end > buf.len() {
            // Partial record. Even when the message ends inside the part we have, wait for
            // the whole record so that `ClientHello::len` stays on a record boundary.
            return Ok(Peek::Incomplete { needed: Some(end - buf.len()) });
        }

        // Whole record: append its fragment.
        let frag = avail;
        match (&mut joined, records) {
            (_, 1) => first = frag,
            (None, _) => {
                let mut v = Vec::with_capacity(first.len() + frag.len());
                v.extend_from_slice(first);
                v.extend_from_slice(frag);
                joined = Some(v);
            }
            (Some(v), _) => v.extend_from_slice(frag),
        }
        pos = end;
        let hs = joined.as_deref().unwrap_or(first);
        if let Some(m) = msg_end
            && hs.len() >= m
        {
            let mut hello = parse_body(&hs[4..m], record_version)?;
            hello.records = records;
            hello.len = pos;
            return Ok(Peek::Complete(hello));
        }
        if pos >= max {
            return Err(Error::TooLarge { max });
        }
    }
}
