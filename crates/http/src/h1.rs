//! The HTTP/1.1 exchange the proxy runs most: a request without a body to a target over plain
//! TCP, answered by a response streamed back to the client. It runs inside the client
//! connection's task, on a socket the request owns while it lasts: no connection task, no
//! request channel, no response-body channel; a connection back in its pool keeps its small
//! read buffer for the next request and frees it after a second idle. Everything else (request
//! bodies, WebSocket upgrades, TLS to the target, HTTP/2) goes through hyper's client
//! (`upstream.rs`).
//!
//! The response head is parsed with `httparse` (at most [`MAX_HEADERS`] fields,
//! [`MAX_HEAD_BYTES`] bytes, as hyper's client); the body is framed by `Content-Length`,
//! `chunked` (trailers passed on) or the close of the connection (RFC 9112 §6.3). A connection
//! goes back to its pool only after a complete exchange with a response that keeps it alive.

use std::error::Error as StdError;
use std::future::poll_fn;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll, Waker, ready};

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use http_body::{Frame, SizeHint};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_util::io::poll_read_buf;

use crate::body::UpBody;
use crate::headers::{Forwarding, field_name, is_named};

/// Most header fields in a response head (hyper's client: 100).
pub(crate) const MAX_HEADERS: usize = 100;
// One bit per field in `Scan`'s masks.
const _: () = assert!(MAX_HEADERS <= 128);
/// Largest response head, and largest chunk-size or trailer section (hyper's client: 408 KiB).
pub(crate) const MAX_HEAD_BYTES: usize = 8192 + 4096 * 100;
/// First read of an exchange; a read that fills the buffer doubles the next one up to
/// [`MAX_READ`] (large bodies: fewer, larger reads).
const FIRST_READ: usize = 4096;
const MAX_READ: usize = 256 * 1024;

/// Errors of this module, boxed for the response body.
pub(crate) type BoxError = Box<dyn StdError + Send + Sync>;

/// Whether a response head may reach the client with its fields as the target wrote them
/// ([`RawFields`]) instead of through a `HeaderMap`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RawHead {
    /// Into a `HeaderMap`: the route changes response fields, or hyper writes the head.
    Never,
    /// Raw, unless the head has a `Location` (which `rewrite_location` may change).
    UnlessLocation,
    Always,
}

/// The fields of a target's response head as they go to the client: all but the hop-by-hop
/// ones and `Content-Length` (the body's framing on the client's connection is the
/// server's: the length comes with the body), each `name: value\r\n`, in the target's order
/// and spelling. Written by `h1_server.rs` after the response's `HeaderMap` (then empty):
/// no map built, filled and dropped per request. Compacted in place in the connection's
/// read buffer (no copy to a new one).
#[derive(Debug, Clone)]
pub(crate) struct RawFields {
    pub(crate) bytes: Bytes,
    /// One of them is `Date` (the server adds its own otherwise).
    pub(crate) date: bool,
}

/// What went wrong in an exchange.
#[derive(Debug)]
pub(crate) enum ExchangeError {
    /// The connection closed or failed before a byte of the response: the target may never
    /// have seen the request (a pooled connection it had just closed).
    Closed(io::Error),
    /// The request could not be written.
    Write(io::Error),
    /// Anything after the first byte of the response.
    Failed(BoxError),
}

impl std::fmt::Display for ExchangeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Closed(e) => write!(f, "connection closed before the response: {e}"),
            Self::Write(e) => write!(f, "cannot send the request: {e}"),
            Self::Failed(e) => write!(f, "{e}"),
        }
    }
}

impl StdError for ExchangeError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match self {
            Self::Closed(e) | Self::Write(e) => Some(e),
            Self::Failed(e) => Some(&**e),
        }
    }
}

fn invalid(msg: &'static str) -> BoxError {
    Box::new(io::Error::new(io::ErrorKind::InvalidData, msg))
}

/// A backend connection for this exchange: the socket and the bytes read from it but not
/// used yet (none between exchanges).
#[derive(Debug)]
pub(crate) struct H1Conn {
    tcp: TcpStream,
    /// Empty between exchanges. A connection back in its pool keeps the allocation of a
    /// small one (the next exchange reuses it in place: no `malloc` and `free` per request)
    /// until the pool's reaper finds it idle for [`SHED_AFTER`](crate::pool::SHED_AFTER).
    buf: BytesMut,
    /// The largest allocation `buf` had in this exchange.
    allocated: usize,
    next_read: usize,
    /// The fields of the response being read, when they came raw: here rather than in the
    /// body, which is moved with the response several times per request.
    raw: Option<RawFields>,
}

impl H1Conn {
    pub(crate) fn new(tcp: TcpStream) -> Self {
        Self { tcp, buf: BytesMut::new(), allocated: 0, next_read: FIRST_READ, raw: None }
    }

    /// Frees the (empty) read buffer of a connection idle in its pool.
    pub(crate) fn shed_buffer(&mut self) {
        if self.allocated != 0 && self.buf.is_empty() {
            self.buf = BytesMut::new();
            self.allocated = 0;
        }
    }

    /// The socket, for hyper's client (between exchanges: nothing is buffered).
    pub(crate) fn into_tcp(self) -> TcpStream {
        self.tcp
    }

    /// Whether an idle connection can take a request: nothing arrived on it since its last
    /// exchange (a FIN, a reset or stray bytes mean the target is done with it). No system call
    /// unless the reactor saw the socket become readable.
    pub(crate) fn usable(&self) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        match self.tcp.poll_read_ready(&mut cx) {
            Poll::Pending => true,
            Poll::Ready(Err(_)) => false,
            // Readiness can be left over from the last read: ask the socket.
            Poll::Ready(Ok(())) => {
                let mut b = [0u8; 1];
                matches!(self.tcp.try_read(&mut b), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
            }
        }
    }

    /// Reads once into the buffer; `Ok(0)` at the end of the stream.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.buf.capacity() - self.buf.len() < self.next_read / 2 {
            self.buf.reserve(self.next_read);
            self.allocated = self.allocated.max(self.buf.capacity());
        }
        let room = self.buf.capacity() - self.buf.len();
        let n = ready!(poll_read_buf(Pin::new(&mut self.tcp), cx, &mut self.buf))?;
        if n == room && self.next_read < MAX_READ {
            self.next_read *= 2;
        }
        Poll::Ready(Ok(n))
    }

    /// Sends the head of `req` (which has no body) and reads the response head. The body
    /// comes with the response; the connection goes with the body (and is closed on an
    /// error).
    /// `raw`: whether the response's fields may come as [`RawFields`]. `fwd`: the forwarding
    /// fields, when they are not in the request's map yet.
    pub(crate) async fn exchange(
        mut self: Box<Self>,
        req: &Request<UpBody>,
        raw: RawHead,
        fwd: Option<Forwarding<'_>>,
    ) -> Result<Response<H1Body>, ExchangeError> {
        // The head goes out from the read buffer (empty between exchanges), which the
        // response then fills: one allocation for both.
        self.buf.reserve(FIRST_READ);
        self.allocated = self.allocated.max(self.buf.capacity());
        encode_head(req, fwd, &mut self.buf);
        let sent = self.tcp.write_all(&self.buf).await;
        self.buf.clear();
        if let Err(e) = sent {
            return Err(ExchangeError::Write(e));
        }
        let head_request = req.method() == Method::HEAD;
        // Whether any byte of a response came (a 1xx counts: the target saw the request).
        let mut answered = false;
        loop {
            match parse_head(&mut self.buf, head_request, raw) {
                Ok(Some(Parsed::Informational)) => continue,
                Ok(Some(Parsed::Final(parts, framing, keep_alive, raw))) => {
                    let decode = match framing {
                        Framing::Empty => Decode::Done,
                        Framing::Length(0) => Decode::Done,
                        Framing::Length(n) => Decode::Length(n),
                        Framing::Chunked => Decode::ChunkSize,
                        Framing::Eof => Decode::Eof,
                    };
                    let reuse = keep_alive && !matches!(framing, Framing::Eof);
                    self.raw = raw;
                    let body = H1Body { conn: Some(self), decode, reuse };
                    return Ok(Response::from_parts(parts, body));
                }
                Ok(None) => {}
                Err(e) => return Err(ExchangeError::Failed(e)),
            }
            if self.buf.len() >= MAX_HEAD_BYTES {
                return Err(ExchangeError::Failed(invalid("response head too large")));
            }
            let started = !answered && self.buf.is_empty();
            answered = true;
            match poll_fn(|cx| self.poll_fill(cx)).await {
                Ok(0) if started => {
                    let e = io::Error::from(io::ErrorKind::UnexpectedEof);
                    return Err(ExchangeError::Closed(e));
                }
                Ok(0) => {
                    let e = invalid("connection closed inside the response head");
                    return Err(ExchangeError::Failed(e));
                }
                Ok(_) => {}
                Err(e) if started => return Err(ExchangeError::Closed(e)),
                Err(e) => return Err(ExchangeError::Failed(Box::new(e))),
            }
        }
    }
}

/// `METHOD path HTTP/1.1`, the fields as they are (lower-case names, as hyper writes them),
/// the forwarding fields `fwd` (after the map's, those they replace left out), and
/// `content-length: 0` where the method defines a body and the request has none.
fn encode_head(req: &Request<UpBody>, fwd: Option<Forwarding<'_>>, out: &mut BytesMut) {
    out.extend_from_slice(req.method().as_str().as_bytes());
    out.extend_from_slice(b" ");
    match req.uri().path_and_query() {
        Some(pq) => out.extend_from_slice(pq.as_str().as_bytes()),
        None => out.extend_from_slice(b"/"),
    }
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in req.headers() {
        if fwd.is_some_and(|f| f.replaces(name)) {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if let Some(f) = fwd {
        f.write(req.headers(), out);
    }
    let no_payload_semantics =
        matches!(*req.method(), Method::GET | Method::HEAD | Method::DELETE | Method::CONNECT);
    if !no_payload_semantics && !req.headers().contains_key(header::CONTENT_LENGTH) {
        out.extend_from_slice(b"content-length: 0\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// How a response body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    Empty,
    Length(u64),
    Chunked,
    Eof,
}

enum Parsed {
    /// A 1xx (not 101) response, consumed: the final one follows.
    Informational,
    /// The head (an empty `HeaderMap` when the fields come raw), the body's framing,
    /// whether the connection stays open.
    Final(http::response::Parts, Framing, bool, Option<RawFields>),
}

/// What one pass over a head's raw fields found: the framing and persistence fields, and
/// whether the hop-by-hop fields can be left out of the map here (not when `Connection`
/// names other fields: the generic removal handles that rare case).
#[derive(Default)]
struct Scan<'a> {
    close: bool,
    keep_alive: bool,
    /// `Connection` names a field other than `close` / `keep-alive`.
    names_others: bool,
    /// A `Location` field.
    location: bool,
    /// A `Date` field.
    date: bool,
    /// The last `Transfer-Encoding` field.
    transfer_encoding: Option<&'a [u8]>,
    /// The `Content-Length` (all values equal), or why not.
    length: Option<Result<u64, &'static str>>,
    /// Bit `i`: field `i` is hop-by-hop (RFC 9110 §7.6.1; `MAX_HEADERS` fits).
    hop: u128,
    /// Bit `i`: field `i` is `Content-Length`.
    length_at: u128,
}

/// `Content-Length: 4` and `4, 4` are 4; anything but digits, or differing values, is an error.
fn content_length(value: &[u8], length: &mut Option<Result<u64, &'static str>>) {
    for part in value.split(|&b| b == b',') {
        let part = part.trim_ascii();
        let n = if part.is_empty() || !part.iter().all(u8::is_ascii_digit) {
            Err("invalid content-length")
        } else {
            std::str::from_utf8(part)
                .ok()
                .and_then(|p| p.parse::<u64>().ok())
                .ok_or("invalid content-length")
        };
        *length = Some(match (*length, n) {
            (Some(Err(e)), _) | (_, Err(e)) => Err(e),
            (Some(Ok(l)), Ok(n)) if l != n => Err("conflicting content-length values"),
            (_, Ok(n)) => Ok(n),
        });
    }
}

impl<'a> Scan<'a> {
    /// Field `i`: one comparison for most names (by length first, as
    /// [`crate::headers::is_hop_by_hop`]), the hop-by-hop ones marked for both the map and
    /// the raw fields.
    fn field(&mut self, i: usize, name: &[u8], value: &'a [u8]) {
        let bit = 1u128 << i;
        match name.len() {
            2 if is_named(name, b"te") => self.hop |= bit,
            4 if is_named(name, b"date") => self.date = true,
            7 if is_named(name, b"upgrade") => self.hop |= bit,
            8 if is_named(name, b"location") => self.location = true,
            10 if is_named(name, b"connection") => {
                self.hop |= bit;
                for token in value.split(|&b| b == b',') {
                    let t = token.trim_ascii();
                    if t.eq_ignore_ascii_case(b"close") {
                        self.close = true;
                    } else if t.eq_ignore_ascii_case(b"keep-alive") {
                        self.keep_alive = true;
                    } else if !t.is_empty() {
                        self.names_others = true;
                    }
                }
            }
            10 if is_named(name, b"keep-alive") => self.hop |= bit,
            14 if is_named(name, b"content-length") => {
                self.length_at |= bit;
                content_length(value, &mut self.length);
            }
            16 if is_named(name, b"proxy-connection") => self.hop |= bit,
            17 if is_named(name, b"transfer-encoding") => {
                self.hop |= bit;
                self.transfer_encoding = Some(value);
            }
            _ => {}
        }
    }
}

/// Parses a response head at the start of `buf` and consumes it; `None` if incomplete.
/// Framing and persistence are read off the raw fields in one pass; the hop-by-hop fields
/// (which the response to the client must not carry) do not go into the map, nor into the
/// raw fields when `raw` allows those.
fn parse_head(
    buf: &mut BytesMut,
    head_request: bool,
    raw: RawHead,
) -> Result<Option<Parsed>, BoxError> {
    if buf.is_empty() {
        return Ok(None);
    }
    let mut fields = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut res = httparse::Response::new(&mut []);
    let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut res,
        buf,
        &mut fields,
    ) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(invalid("too many response headers")),
        Err(_) => return Err(invalid("malformed response head")),
    };
    let code = res.code.unwrap_or(0);
    let status = StatusCode::from_u16(code).map_err(|_| invalid("invalid response status"))?;
    if status.is_informational() {
        if status == StatusCode::SWITCHING_PROTOCOLS {
            return Err(invalid("backend switched protocols unasked"));
        }
        let _ = buf.split_to(len);
        return Ok(Some(Parsed::Informational));
    }
    let version = if res.version == Some(0) { Version::HTTP_10 } else { Version::HTTP_11 };
    let mut scan = Scan::default();
    for (i, h) in res.headers.iter().enumerate() {
        scan.field(i, h.name.as_bytes(), h.value);
    }
    let strip = !scan.names_others;
    let base = buf.as_ptr() as usize;
    let keep_alive = match version {
        Version::HTTP_10 => scan.keep_alive,
        _ => !scan.close,
    };
    let (framing, keep_alive) = if head_request {
        (Framing::Empty, keep_alive)
    } else {
        framing(status, &scan, keep_alive)?
    };
    let want_raw = !head_request
        && strip
        && match raw {
            RawHead::Never => false,
            RawHead::UnlessLocation => !scan.location,
            RawHead::Always => true,
        };
    if want_raw {
        let mut plan = RawPlan::empty();
        if plan.fill(res.headers, scan.hop | scan.length_at, base, len) {
            let date = scan.date;
            let end = plan.write(&mut buf[..len]);
            let head = buf.split_to(len).freeze();
            let fields = RawFields { bytes: head.slice(plan.start..end), date };
            let parts = head_parts(status, version, HeaderMap::new());
            return Ok(Some(Parsed::Final(parts, framing, keep_alive, Some(fields))));
        }
    }
    // The fields as offsets into the head, which is then split off without a copy.
    let mut kept = Vec::with_capacity(res.headers.len());
    for (i, h) in res.headers.iter().enumerate() {
        if strip && scan.hop & (1 << i) != 0 {
            continue;
        }
        let name = field_name(h.name.as_bytes()).ok_or_else(|| invalid("invalid header name"))?;
        let start = h.value.as_ptr() as usize - base;
        kept.push((name, start, start + h.value.len()));
    }
    let head = buf.split_to(len).freeze();
    let mut headers = HeaderMap::with_capacity(kept.len());
    for (name, start, end) in kept {
        let value = HeaderValue::from_maybe_shared(head.slice(start..end))
            .map_err(|_| invalid("invalid header value"))?;
        headers.append(name, value);
    }
    let parts = head_parts(status, version, headers);
    Ok(Some(Parsed::Final(parts, framing, keep_alive, None)))
}

/// The parts of a response with this status line and these fields.
fn head_parts(status: StatusCode, version: Version, headers: HeaderMap) -> http::response::Parts {
    let mut resp = Response::new(());
    *resp.status_mut() = status;
    *resp.version_mut() = version;
    *resp.headers_mut() = headers;
    resp.into_parts().0
}

/// How the body of a response (not to a HEAD request) is delimited (RFC 9112 §6.3), and
/// whether the connection can still be kept alive.
fn framing(
    status: StatusCode,
    scan: &Scan<'_>,
    keep_alive: bool,
) -> Result<(Framing, bool), BoxError> {
    if status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
        return Ok((Framing::Empty, keep_alive));
    }
    if let Some(te) = scan.transfer_encoding {
        // With both, Transfer-Encoding wins and the connection is not reused.
        let keep_alive = keep_alive && scan.length.is_none();
        let last = te.rsplit(|&b| b == b',').next().map(<[u8]>::trim_ascii);
        let framing = if last.is_some_and(|t| t.eq_ignore_ascii_case(b"chunked")) {
            Framing::Chunked
        } else {
            Framing::Eof
        };
        return Ok((framing, keep_alive));
    }
    match scan.length {
        None => Ok((Framing::Eof, keep_alive)),
        Some(Ok(n)) => Ok((Framing::Length(n), keep_alive)),
        Some(Err(e)) => Err(invalid(e)),
    }
}

/// Most fields a head can keep as [`RawFields`]; a head with more goes into a `HeaderMap`.
const RAW_MAX_FIELDS: usize = 32;

/// Where each field kept for [`RawFields`] goes when the head is compacted in place: every
/// field is rewritten as `name: value\r\n` at or before where it was, over the fields left
/// out, so that no byte is overwritten before it is moved. A head where that does not hold
/// (a field written `name:value`, without the space, after nothing was left out) has no
/// plan and goes into a `HeaderMap`. Fields in place (all of them up to the first one left
/// out, in the common `name: value\r\n` form) are not moved at all.
struct RawPlan {
    /// Offset of the first field in the head.
    start: usize,
    /// Name offset, name length, value offset, value length of each field kept.
    fields: [(u32, u32, u32, u32); RAW_MAX_FIELDS],
    count: usize,
}

impl RawPlan {
    /// Filled in place by [`RawPlan::fill`] (the plan is built in its caller's frame: no
    /// copy of it is returned).
    const fn empty() -> Self {
        Self { start: 0, fields: [(0, 0, 0, 0); RAW_MAX_FIELDS], count: 0 }
    }

    /// `skip`: bit `i` set for each field `i` left out; `base`: the address of the head's
    /// first byte; `len`: the head's length. False: no plan (see above).
    fn fill(
        &mut self,
        headers: &[httparse::Header<'_>],
        skip: u128,
        base: usize,
        len: usize,
    ) -> bool {
        let first = headers.first().map_or(len, |h| h.name.as_ptr() as usize - base);
        self.start = first;
        self.count = 0;
        let mut at = first;
        for (i, h) in headers.iter().enumerate() {
            if skip & (1 << i) != 0 {
                continue;
            }
            let name = h.name.as_bytes();
            let name_at = name.as_ptr() as usize - base;
            let value_at = h.value.as_ptr() as usize - base;
            // The field's line ends where the next begins (the last one: at the end of the
            // head, whose blank line is not needed any more).
            let limit = headers.get(i + 1).map_or(len, |n| n.name.as_ptr() as usize - base);
            let value_to = at + name.len() + 2;
            let end = value_to + h.value.len() + 2;
            if value_to > value_at || end > limit || self.count == RAW_MAX_FIELDS {
                return false;
            }
            let (Ok(a), Ok(b), Ok(c), Ok(d)) = (
                u32::try_from(name_at),
                u32::try_from(name.len()),
                u32::try_from(value_at),
                u32::try_from(h.value.len()),
            ) else {
                return false;
            };
            self.fields[self.count] = (a, b, c, d);
            self.count += 1;
            at = end;
        }
        true
    }

    /// Compacts the kept fields of `head`; returns where they end.
    fn write(&self, head: &mut [u8]) -> usize {
        let mut at = self.start;
        for &(name_at, name_len, value_at, value_len) in &self.fields[..self.count] {
            let (name_at, name_len) = (name_at as usize, name_len as usize);
            let (value_at, value_len) = (value_at as usize, value_len as usize);
            if value_at == name_at + name_len + 2 {
                // One separator byte after the colon: name and value move as one (or not
                // at all when nothing before them was left out).
                if at != name_at {
                    head.copy_within(name_at..value_at + value_len, at);
                }
            } else {
                head.copy_within(name_at..name_at + name_len, at);
                head.copy_within(value_at..value_at + value_len, at + name_len + 2);
            }
            head[at + name_len..at + name_len + 2].copy_from_slice(b": ");
            at += name_len + 2 + value_len;
            head[at..at + 2].copy_from_slice(b"\r\n");
            at += 2;
        }
        at
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Decode {
    /// Bytes of the body left.
    Length(u64),
    /// At a chunk-size line.
    ChunkSize,
    /// Bytes of the current chunk left.
    ChunkData(u64),
    /// The CRLF after a chunk's data.
    ChunkEnd,
    /// After the last chunk: trailer fields up to an empty line.
    Trailers,
    /// Until the target closes the connection.
    Eof,
    Done,
}

/// A response body read from the target by whoever polls it (the client connection's task).
#[derive(Debug)]
pub(crate) struct H1Body {
    conn: Option<Box<H1Conn>>,
    decode: Decode,
    /// The connection may serve another request once the body is read to the end.
    reuse: bool,
}

impl H1Body {
    pub(crate) fn is_end_stream(&self) -> bool {
        self.decode == Decode::Done
    }

    pub(crate) fn size_hint(&self) -> SizeHint {
        // `Length` only comes from a Content-Length, and an empty body starts `Done`.
        match self.decode {
            Decode::Done => SizeHint::with_exact(0),
            Decode::Length(n) => SizeHint::with_exact(n),
            _ => SizeHint::default(),
        }
    }

    /// The response's fields, if they came raw (see [`RawFields`]); taken once.
    pub(crate) fn take_raw(&mut self) -> Option<RawFields> {
        self.conn.as_mut()?.raw.take()
    }

    /// The connection, once the body was read to the end and the response keeps it alive.
    pub(crate) fn take_reusable(&mut self) -> Option<Box<H1Conn>> {
        if self.decode != Decode::Done || !self.reuse {
            return None;
        }
        let mut conn = self.conn.take()?;
        // Fields never written (no server took them) must not pin the read buffer.
        conn.raw = None;
        // Bytes past the response (a target that answers more than asked) make the connection
        // unusable. A buffer grown for a large body is freed; a small one is kept for the
        // next exchange (see `H1Conn::buf`).
        if !conn.buf.is_empty() {
            return None;
        }
        if conn.allocated > 2 * FIRST_READ {
            conn.buf = BytesMut::new();
            conn.allocated = 0;
        }
        Some(conn)
    }

    pub(crate) fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let r = self.poll_inner(cx);
        if let Poll::Ready(Some(Err(_))) = &r {
            self.decode = Decode::Done;
            self.reuse = false;
            self.conn = None;
        }
        r
    }

    fn poll_inner(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let Some(conn) = self.conn.as_mut() else { return Poll::Ready(None) };
        loop {
            match self.decode {
                Decode::Done => return Poll::Ready(None),
                Decode::Length(left) | Decode::ChunkData(left) => {
                    if conn.buf.is_empty() {
                        match ready!(conn.poll_fill(cx)) {
                            Ok(0) => {
                                return Poll::Ready(Some(Err(invalid(
                                    "connection closed before the end of the response body",
                                ))));
                            }
                            Ok(_) => {}
                            Err(e) => return Poll::Ready(Some(Err(Box::new(e)))),
                        }
                    }
                    let n = usize::try_from(left).unwrap_or(usize::MAX).min(conn.buf.len());
                    let data = conn.buf.split_to(n).freeze();
                    let left = left - n as u64;
                    self.decode = match self.decode {
                        Decode::Length(_) if left == 0 => Decode::Done,
                        Decode::Length(_) => Decode::Length(left),
                        _ if left == 0 => Decode::ChunkEnd,
                        _ => Decode::ChunkData(left),
                    };
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                // Body bytes that came with the head (or the last read) go first.
                Decode::Eof if !conn.buf.is_empty() => {
                    let data = conn.buf.split().freeze();
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Decode::Eof => match ready!(conn.poll_fill(cx)) {
                    Ok(0) => {
                        self.decode = Decode::Done;
                        return Poll::Ready(None);
                    }
                    Ok(_) => {
                        let data = conn.buf.split().freeze();
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                    Err(e) => return Poll::Ready(Some(Err(Box::new(e)))),
                },
                Decode::ChunkSize => {
                    let Some(line) = take_line(&mut conn.buf)? else {
                        ready!(fill_more(conn, cx, "chunk size"))?;
                        continue;
                    };
                    let size = chunk_size(&line)?;
                    self.decode =
                        if size == 0 { Decode::Trailers } else { Decode::ChunkData(size) };
                }
                Decode::ChunkEnd => {
                    let Some(line) = take_line(&mut conn.buf)? else {
                        ready!(fill_more(conn, cx, "chunk"))?;
                        continue;
                    };
                    if !line.is_empty() {
                        return Poll::Ready(Some(Err(invalid("chunk data longer than its size"))));
                    }
                    self.decode = Decode::ChunkSize;
                }
                Decode::Trailers => {
                    // The trailer section ends with an empty line; parse it whole.
                    let Some(end) = find_blank_line(&conn.buf) else {
                        ready!(fill_more(conn, cx, "trailer section"))?;
                        continue;
                    };
                    let section = conn.buf.split_to(end);
                    self.decode = Decode::Done;
                    let trailers = parse_trailers(&section)?;
                    if trailers.is_empty() {
                        return Poll::Ready(None);
                    }
                    return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                }
            }
        }
    }
}

/// Reads more for an incomplete line or section, within [`MAX_HEAD_BYTES`].
fn fill_more(
    conn: &mut H1Conn,
    cx: &mut Context<'_>,
    what: &'static str,
) -> Poll<Result<(), BoxError>> {
    if conn.buf.len() >= MAX_HEAD_BYTES {
        return Poll::Ready(Err(invalid("chunked framing line too long")));
    }
    match ready!(conn.poll_fill(cx)) {
        Ok(0) => Poll::Ready(Err(Box::new(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("connection closed inside a {what}"),
        )))),
        Ok(_) => Poll::Ready(Ok(())),
        Err(e) => Poll::Ready(Err(Box::new(e))),
    }
}

/// A line (without its CRLF or bare LF) taken off the front of `buf`, if complete.
fn take_line(buf: &mut BytesMut) -> Result<Option<Bytes>, BoxError> {
    let Some(lf) = buf.iter().position(|&b| b == b'\n') else { return Ok(None) };
    let mut line = buf.split_to(lf + 1);
    line.truncate(lf);
    if line.last() == Some(&b'\r') {
        line.truncate(lf - 1);
    }
    Ok(Some(line.freeze()))
}

/// A chunk-size line: hex digits, then optional whitespace and `;extensions`.
fn chunk_size(line: &[u8]) -> Result<u64, BoxError> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 || digits > 16 {
        return Err(invalid("invalid chunk size"));
    }
    let rest = &line[digits..];
    let rest_ok = rest.iter().position(|&b| b == b';').map_or(rest, |i| &rest[..i]);
    if !rest_ok.iter().all(|&b| b == b' ' || b == b'\t') {
        return Err(invalid("invalid chunk size"));
    }
    let hex = std::str::from_utf8(&line[..digits]).map_err(|_| invalid("invalid chunk size"))?;
    u64::from_str_radix(hex, 16).map_err(|_| invalid("invalid chunk size"))
}

/// The length of the trailer section at the front of `buf`, its final empty line included.
fn find_blank_line(buf: &[u8]) -> Option<usize> {
    let mut start = 0;
    loop {
        let lf = buf[start..].iter().position(|&b| b == b'\n')? + start;
        let line = &buf[start..lf];
        if line.is_empty() || line == b"\r" {
            return Some(lf + 1);
        }
        start = lf + 1;
    }
}

fn parse_trailers(section: &[u8]) -> Result<HeaderMap, BoxError> {
    let mut map = HeaderMap::new();
    if section.len() <= 2 {
        return Ok(map);
    }
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    match httparse::parse_headers(section, &mut fields) {
        Ok(httparse::Status::Complete((_, fields))) => {
            for f in fields {
                let name = HeaderName::from_bytes(f.name.as_bytes())
                    .map_err(|_| invalid("invalid trailer name"))?;
                let value = HeaderValue::from_bytes(f.value)
                    .map_err(|_| invalid("invalid trailer value"))?;
                map.append(name, value);
            }
            Ok(map)
        }
        _ => Err(invalid("malformed trailer section")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(s: &str, head_request: bool) -> Result<Option<Parsed>, BoxError> {
        let mut b = BytesMut::from(s.as_bytes());
        parse_head(&mut b, head_request, RawHead::Never)
    }

    fn framing(s: &str) -> (Framing, bool) {
        match head(s, false) {
            Ok(Some(Parsed::Final(_, f, k, None))) => (f, k),
            _ => panic!("not a final head: {s:?}"),
        }
    }

    #[test]
    fn framing_follows_rfc_9112() {
        assert_eq!(
            framing("HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n"),
            (Framing::Length(5), true)
        );
        assert_eq!(
            framing("HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n"),
            (Framing::Chunked, true)
        );
        assert_eq!(
            framing("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 3\r\n\r\n"),
            (Framing::Chunked, false)
        );
        assert_eq!(framing("HTTP/1.1 200 OK\r\n\r\n"), (Framing::Eof, true));
        assert_eq!(
            framing("HTTP/1.1 204 No Content\r\ncontent-length: 9\r\n\r\n").0,
            Framing::Empty
        );
        assert_eq!(framing("HTTP/1.1 304 Not Modified\r\n\r\n").0, Framing::Empty);
        assert_eq!(
            framing("HTTP/1.0 200 OK\r\ncontent-length: 1\r\n\r\n"),
            (Framing::Length(1), false)
        );
        assert_eq!(
            framing("HTTP/1.0 200 OK\r\nconnection: keep-alive\r\ncontent-length: 1\r\n\r\n"),
            (Framing::Length(1), true)
        );
        assert_eq!(
            framing("HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 1\r\n\r\n"),
            (Framing::Length(1), false)
        );
        assert_eq!(
            framing("HTTP/1.1 200 OK\r\ncontent-length: 4, 4\r\n\r\n"),
            (Framing::Length(4), true)
        );
        assert!(matches!(
            head("HTTP/1.1 200 OK\r\ncontent-length: 7\r\n\r\n", true),
            Ok(Some(Parsed::Final(_, Framing::Empty, true, None)))
        ));
    }

    #[test]
    fn bad_heads_are_errors() {
        for s in [
            "HTTP/1.1 200 OK\r\ncontent-length: 4\r\ncontent-length: 5\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: +4\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: 4x\r\n\r\n",
            "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n\r\n",
            "HTTP/1.1 2000 OK\r\n\r\n",
            "NOTHTTP 200 OK\r\n\r\n",
        ] {
            assert!(head(s, false).is_err(), "{s:?}");
        }
        let many = format!("HTTP/1.1 200 OK\r\n{}\r\n", "a: b\r\n".repeat(MAX_HEADERS + 1));
        assert!(head(&many, false).is_err());
    }

    #[test]
    fn informational_and_partial_heads() {
        let mut b = BytesMut::from(
            &b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"[..],
        );
        assert!(matches!(
            parse_head(&mut b, false, RawHead::Never),
            Ok(Some(Parsed::Informational))
        ));
        let Ok(Some(Parsed::Final(parts, Framing::Length(0), true, None))) =
            parse_head(&mut b, false, RawHead::Never)
        else {
            panic!("no final response after the 100");
        };
        assert_eq!(parts.status, StatusCode::OK);
        assert!(b.is_empty());
        assert!(matches!(head("HTTP/1.1 200 OK\r\ncontent-le", false), Ok(None)));
        assert!(matches!(head("", false), Ok(None)));
    }

    #[test]
    fn header_values_are_kept_exactly() {
        let Ok(Some(Parsed::Final(parts, _, _, None))) =
            head("HTTP/1.1 200 OK\r\nX-A: 1\r\nx-a: two words\r\nSet-Cookie: k=v\r\n\r\n", false)
        else {
            panic!("no head");
        };
        let v: Vec<_> = parts.headers.get_all("x-a").iter().map(|v| v.to_str().unwrap()).collect();
        assert_eq!(v, ["1", "two words"]);
        assert_eq!(parts.headers["set-cookie"], "k=v");
    }

    #[test]
    fn hop_by_hop_fields_stay_out_unless_connection_names_others() {
        let Ok(Some(Parsed::Final(parts, Framing::Chunked, true, None))) = head(
            "HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\n\
             Transfer-Encoding: chunked\r\nProxy-Connection: x\r\nUpgrade: h2c\r\nTE: a\r\n\
             Server: s\r\n\r\n",
            false,
        ) else {
            panic!("no head");
        };
        let names: Vec<_> = parts.headers.keys().map(HeaderName::as_str).collect();
        assert_eq!(names, ["server"]);
        // `Connection: x-private` makes `x-private` hop-by-hop too: everything stays for the
        // generic removal, which knows the named fields.
        let Ok(Some(Parsed::Final(parts, Framing::Length(0), false, None))) = head(
            "HTTP/1.1 200 OK\r\nConnection: close, x-private\r\nX-Private: 1\r\n\
             Content-Length: 0\r\n\r\n",
            false,
        ) else {
            panic!("no head");
        };
        assert_eq!(parts.headers.len(), 3);
    }

    fn raw(s: &str, mode: RawHead) -> (Framing, bool, Option<(String, bool)>, HeaderMap) {
        let mut b = BytesMut::from(s.as_bytes());
        match parse_head(&mut b, false, mode) {
            Ok(Some(Parsed::Final(parts, f, k, r))) => {
                let r = r.map(|r| (String::from_utf8(r.bytes.to_vec()).unwrap(), r.date));
                (f, k, r, parts.headers)
            }
            _ => panic!("not a final head: {s:?}"),
        }
    }

    /// Raw fields: the target's order and spelling, `name: value` each, without the
    /// hop-by-hop fields and `Content-Length`; the framing and persistence are those of the
    /// map's path.
    #[test]
    fn raw_fields_are_the_targets_without_hop_by_hop_and_length() {
        let s = "HTTP/1.1 200 OK\r\nServer: nginx\r\nDate: Thu, 03 Dec 2026 20:00:00 GMT\r\n\
                 Content-Type: text/plain\r\nContent-Length: 5\r\nConnection: keep-alive\r\n\
                 X-A: 1\r\nx-a: two  words\r\nSet-Cookie: k=v\r\n\r\nhello";
        let (f, k, r, map) = raw(s, RawHead::Always);
        assert_eq!((f, k), (Framing::Length(5), true));
        assert!(map.is_empty());
        let (fields, date) = r.expect("raw fields");
        assert_eq!(
            fields,
            "Server: nginx\r\nDate: Thu, 03 Dec 2026 20:00:00 GMT\r\nContent-Type: text/plain\r\n\
             X-A: 1\r\nx-a: two  words\r\nSet-Cookie: k=v\r\n"
        );
        assert!(date);
        let (_, _, r, _) =
            raw("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", RawHead::Always);
        assert_eq!(r, Some((String::new(), false)));
        // The same framing as the map's path, for every case of RFC 9112 §6.3.
        for s in [
            "HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n",
            "HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n",
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 3\r\n\r\n",
            "HTTP/1.1 200 OK\r\n\r\n",
            "HTTP/1.1 204 No Content\r\ncontent-length: 9\r\n\r\n",
            "HTTP/1.0 200 OK\r\ncontent-length: 1\r\n\r\n",
            "HTTP/1.0 200 OK\r\nconnection: keep-alive\r\ncontent-length: 1\r\n\r\n",
            "HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 1\r\n\r\n",
        ] {
            let (f, k, r, _) = raw(s, RawHead::Always);
            assert!(r.is_some(), "{s:?}");
            assert_eq!((f, k), framing(s), "{s:?}");
        }
    }

    /// The map's path where raw fields cannot be right: a `Location` that may be rewritten,
    /// a `Connection` that names other fields, and a head that cannot be compacted in place.
    #[test]
    fn raw_fields_only_where_they_are_right() {
        let loc = "HTTP/1.1 302 Found\r\nLocation: http://t/x\r\ncontent-length: 0\r\n\r\n";
        let (_, _, r, map) = raw(loc, RawHead::UnlessLocation);
        assert!(r.is_none());
        assert_eq!(map["location"], "http://t/x");
        assert_eq!(raw(loc, RawHead::Always).2.unwrap().0, "Location: http://t/x\r\n");
        assert!(raw(loc, RawHead::Never).2.is_none());
        let named = "HTTP/1.1 200 OK\r\nConnection: x-private\r\nX-Private: 1\r\n\r\n";
        assert!(raw(named, RawHead::Always).2.is_none());
        // `a:1` would grow by one byte written as `a: 1`, over the start of the next field.
        let tight = "HTTP/1.1 200 OK\r\na:1\r\nb:2\r\n\r\n";
        let (_, _, r, map) = raw(tight, RawHead::Always);
        assert!(r.is_none());
        assert_eq!(
            (&map["a"], &map["b"]),
            (&HeaderValue::from_static("1"), &HeaderValue::from_static("2"))
        );
        // ... unless a field left out before it makes the room.
        let roomy = "HTTP/1.1 200 OK\r\nconnection: keep-alive\r\na:1\r\nb:2\r\n\r\n";
        assert_eq!(raw(roomy, RawHead::Always).2.unwrap().0, "a: 1\r\nb: 2\r\n");
        // More fields than a plan holds.
        let many = format!("HTTP/1.1 200 OK\r\n{}\r\n", "a: b\r\n".repeat(RAW_MAX_FIELDS + 1));
        let (_, _, r, map) = raw(&many, RawHead::Always);
        assert!(r.is_none());
        assert_eq!(map.get_all("a").iter().count(), RAW_MAX_FIELDS + 1);
        let most = format!("HTTP/1.1 200 OK\r\n{}\r\n", "a: b\r\n".repeat(RAW_MAX_FIELDS));
        assert_eq!(raw(&most, RawHead::Always).2.unwrap().0, "a: b\r\n".repeat(RAW_MAX_FIELDS));
        // A response to HEAD keeps its Content-Length: never raw.
        let mut b = BytesMut::from(&b"HTTP/1.1 200 OK\r\ncontent-length: 7\r\n\r\n"[..]);
        let Ok(Some(Parsed::Final(parts, Framing::Empty, true, None))) =
            parse_head(&mut b, true, RawHead::Always)
        else {
            panic!("no head");
        };
        assert_eq!(parts.headers["content-length"], "7");
    }

    /// Heads of random fields (names hop-by-hop or not, any spacing around the colon and
    /// the value, CRLF or bare LF line ends): whenever raw fields come, they are the map's
    /// fields written `name: value`, in the target's order; the framing is the map's path's,
    /// and the bytes after the head (the body) are untouched.
    #[test]
    fn raw_fields_equal_the_maps_on_random_heads() {
        let mut next = crate::testing::xorshift(0x9e37_79b9_7f4a_7c15);
        let names = [
            "server",
            "Date",
            "content-type",
            "X-Long-Field-Name",
            "a",
            "connection",
            "Keep-Alive",
            "te",
            "Upgrade",
            "set-cookie",
            "ETag",
            "Transfer-Encoding",
        ];
        let values = ["", "1", "keep-alive", "text/html; charset=utf-8", "a  b", "x,y , z"];
        let mut raw_seen = 0;
        for _ in 0..20_000 {
            let mut s = String::from("HTTP/1.1 200 OK\r\n");
            let mut kept_names = Vec::new();
            for _ in 0..next(12) {
                let name = names[next(names.len() as u64) as usize];
                let value = match name {
                    "connection" => "close",
                    "Transfer-Encoding" => "chunked",
                    _ => values[next(values.len() as u64) as usize],
                };
                if !crate::headers::is_hop_by_hop(name.as_bytes()) {
                    kept_names.push(name.to_ascii_lowercase());
                }
                let sep = [":", ": ", ":  ", ":\t"][next(4) as usize];
                let tail = [" ", "", ""][next(3) as usize];
                let eol = ["\r\n", "\n", "\r\n"][next(3) as usize];
                s.push_str(&format!("{name}{sep}{value}{tail}{eol}"));
            }
            s.push_str(if next(2) == 0 { "\r\n" } else { "\n" });
            s.push_str("BODY");
            let mut m = BytesMut::from(s.as_bytes());
            let Ok(Some(Parsed::Final(parts, fm, km, None))) =
                parse_head(&mut m, false, RawHead::Never)
            else {
                panic!("no map head: {s:?}");
            };
            let mut b = BytesMut::from(s.as_bytes());
            let Ok(Some(Parsed::Final(rparts, fr, kr, r))) =
                parse_head(&mut b, false, RawHead::Always)
            else {
                panic!("no raw head: {s:?}");
            };
            assert_eq!((fm, km), (fr, kr), "{s:?}");
            assert_eq!((&m[..], &b[..]), (&b"BODY"[..], &b"BODY"[..]), "{s:?}");
            let Some(r) = r else {
                assert_eq!(rparts.headers, parts.headers, "{s:?}");
                continue;
            };
            raw_seen += 1;
            assert!(rparts.headers.is_empty());
            let (read_back, order) = crate::testing::fields(&r.bytes);
            assert!(r.bytes.ends_with(b"\r\n") || r.bytes.is_empty(), "{s:?}");
            assert_eq!(read_back, parts.headers, "{s:?}");
            assert_eq!(order, kept_names, "{s:?}");
            assert_eq!(r.date, parts.headers.contains_key(header::DATE), "{s:?}");
        }
        assert!(raw_seen > 5_000, "raw fields came for only {raw_seen} heads");
    }

    /// The scan marks exactly the fields `headers::is_hop_by_hop` names, in any case, and
    /// notes `Content-Length`, `Date` and `Location` by position or presence.
    #[test]
    fn scan_marks_what_is_hop_by_hop() {
        let names = [
            "te",
            "TE",
            "date",
            "Date",
            "upgrade",
            "Upgrade",
            "location",
            "Location",
            "connection",
            "Connection",
            "keep-alive",
            "Keep-Alive",
            "content-length",
            "Content-Length",
            "proxy-connection",
            "Proxy-Connection",
            "transfer-encoding",
            "Transfer-Encoding",
            "server",
            "x-te",
            "dates",
            "x",
            "content-type",
            "trailer",
        ];
        for (i, name) in names.iter().enumerate() {
            let mut scan = Scan::default();
            scan.field(i, name.as_bytes(), b"1");
            let bit = 1u128 << i;
            assert_eq!(
                scan.hop & bit != 0,
                crate::headers::is_hop_by_hop(name.as_bytes()),
                "{name}"
            );
            assert_eq!(scan.hop & !bit, 0, "{name}");
            assert_eq!(scan.length_at != 0, name.eq_ignore_ascii_case("content-length"), "{name}");
            assert_eq!(scan.date, name.eq_ignore_ascii_case("date"), "{name}");
            assert_eq!(scan.location, name.eq_ignore_ascii_case("location"), "{name}");
        }
        let mut scan = Scan::default();
        scan.field(MAX_HEADERS - 1, b"Connection", b"close");
        assert_eq!(scan.hop, 1 << (MAX_HEADERS - 1));
        assert!(scan.close);
    }

    /// A target that answers each request head on one connection with `bodies[i]` bytes.
    async fn target(bodies: Vec<usize>) -> std::net::SocketAddr {
        use tokio::io::AsyncReadExt;
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut head = Vec::new();
            for n in bodies {
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    let mut b = [0u8; 1024];
                    let k = s.read(&mut b).await.unwrap();
                    assert!(k > 0, "the proxy side closed");
                    head.extend_from_slice(&b[..k]);
                }
                head.clear();
                let mut resp =
                    format!("HTTP/1.1 200 OK\r\ncontent-length: {n}\r\n\r\n").into_bytes();
                resp.resize(resp.len() + n, b'x');
                s.write_all(&resp).await.unwrap();
            }
        });
        addr
    }

    /// One exchange to the end of its body; the connection if it can be reused.
    async fn exchange_once(conn: Box<H1Conn>) -> (Option<Box<H1Conn>>, usize) {
        let mut req = Request::new(UpBody::Empty);
        req.headers_mut().insert("host", HeaderValue::from_static("t"));
        let Ok(resp) = conn.exchange(&req, RawHead::Always, None).await else {
            panic!("exchange failed")
        };
        let mut body = resp.into_body();
        let mut n = 0;
        while let Some(f) = poll_fn(|cx| body.poll_frame(cx)).await {
            n += f.unwrap().into_data().map_or(0, |d| d.len());
        }
        (body.take_reusable(), n)
    }

    /// A pooled connection keeps a small read buffer between exchanges (reused in place by
    /// the next one), gives it back when shed (idle in its pool), and never keeps one grown
    /// for a large body.
    #[tokio::test]
    async fn read_buffer_kept_small_between_exchanges_and_shed_when_idle() {
        let addr = target(vec![2, 3, 300_000, 2]).await;
        let conn = Box::new(H1Conn::new(TcpStream::connect(addr).await.unwrap()));
        let (conn, n) = exchange_once(conn).await;
        assert_eq!(n, 2);
        let conn = conn.expect("reusable after a complete exchange");
        assert!(conn.buf.is_empty() && conn.buf.capacity() > 0, "a small buffer is kept");
        let (conn, n) = exchange_once(conn).await;
        assert_eq!(n, 3);
        let mut conn = conn.expect("reusable");
        assert!(conn.allocated <= 2 * FIRST_READ, "the kept buffer was reused, not grown");
        conn.shed_buffer();
        assert_eq!((conn.buf.capacity(), conn.allocated), (0, 0), "shed when idle");
        let (conn, n) = exchange_once(conn).await;
        assert_eq!(n, 300_000);
        let conn = conn.expect("reusable");
        assert_eq!(conn.buf.capacity(), 0, "a buffer grown for a large body is not kept");
        let (conn, n) = exchange_once(conn).await;
        assert_eq!(n, 2);
        assert!(conn.is_some());
    }

    /// The forwarding fields written by the encoder are the ones `forwarded_headers` puts in
    /// the map (as a multimap: the fields they replace are written after the others instead
    /// of in their place), for trusted and untrusted peers, with and without the client's own.
    #[test]
    fn forwarding_written_by_the_encoder_equals_the_maps() {
        let mut next = crate::testing::xorshift(0x2545_f491_4f6c_dd1d);
        let names = [
            "host",
            "x-forwarded-for",
            "x-forwarded-proto",
            "x-forwarded-host",
            "accept",
            "x-forwarded-fox",
            "x-forwarded-hosts",
        ];
        let values = ["", "10.0.0.1", "https", "a.example", "1.2.3.4, 5.6.7.8"];
        let client = HeaderValue::from_static("192.0.2.7");
        let host = HeaderValue::from_static("client.example:8080");
        // The request line and the fields (as a multimap).
        let lines = |head: &[u8]| {
            let at = head.windows(2).position(|w| w == b"\r\n").unwrap();
            (head[..at].to_vec(), crate::testing::fields(&head[at + 2..]).0)
        };
        let mut replaced = 0;
        for _ in 0..5_000 {
            let mut req = Request::new(UpBody::Empty);
            *req.uri_mut() = "/p".parse().unwrap();
            for _ in 0..next(7) {
                let name = names[next(names.len() as u64) as usize];
                let value = values[next(values.len() as u64) as usize];
                req.headers_mut().append(HeaderName::from_static(name), value.parse().unwrap());
            }
            let f = Forwarding {
                trusted: next(2) == 0,
                client: &client,
                tls: next(2) == 0,
                host: (next(3) != 0).then_some(&host),
            };
            let mut mapped = Request::new(UpBody::Empty);
            *mapped.uri_mut() = req.uri().clone();
            *mapped.headers_mut() = req.headers().clone();
            crate::headers::forwarded_headers(mapped.headers_mut(), f);
            let (mut a, mut b) = (BytesMut::new(), BytesMut::new());
            encode_head(&mapped, None, &mut a);
            encode_head(&req, Some(f), &mut b);
            let (la, lb) = (lines(&a), lines(&b));
            assert_eq!(la, lb, "{f:?} {:?}", req.headers());
            if req.headers().keys().any(|n| f.replaces(n)) {
                replaced += 1;
            }
        }
        assert!(replaced > 1_000, "only {replaced} requests had a field to replace");
    }

    #[test]
    fn chunk_sizes() {
        assert_eq!(chunk_size(b"1a").unwrap(), 26);
        assert_eq!(chunk_size(b"0").unwrap(), 0);
        assert_eq!(chunk_size(b"10;name=value").unwrap(), 16);
        assert_eq!(chunk_size(b"10 ;x").unwrap(), 16);
        assert!(chunk_size(b"").is_err());
        assert!(chunk_size(b"zz").is_err());
        assert!(chunk_size(b"1 2").is_err());
        assert!(chunk_size(b"11111111111111111").is_err());
    }

    #[test]
    fn trailer_sections() {
        assert_eq!(find_blank_line(b"\r\nrest"), Some(2));
        assert_eq!(find_blank_line(b"a: b\r\nc: d\r\n\r\nrest"), Some(14));
        assert_eq!(find_blank_line(b"a: b\r\n"), None);
        let t = parse_trailers(b"a: b\r\nc: d\r\n\r\n").unwrap();
        assert_eq!(t["a"], "b");
        assert_eq!(t["c"], "d");
        assert!(parse_trailers(b"\r\n").unwrap().is_empty());
        assert!(parse_trailers(b"bad line\r\n\r\n").is_err());
    }

    #[test]
    fn request_heads() {
        let mut req = Request::new(UpBody::Empty);
        *req.uri_mut() = "/a?b=c".parse().unwrap();
        req.headers_mut().insert("host", HeaderValue::from_static("example.com"));
        let mut out = BytesMut::new();
        encode_head(&req, None, &mut out);
        assert_eq!(&out[..], b"GET /a?b=c HTTP/1.1\r\nhost: example.com\r\n\r\n");
        *req.method_mut() = Method::POST;
        out.clear();
        encode_head(&req, None, &mut out);
        assert_eq!(
            &out[..],
            b"POST /a?b=c HTTP/1.1\r\nhost: example.com\r\ncontent-length: 0\r\n\r\n"
        );
    }
}
