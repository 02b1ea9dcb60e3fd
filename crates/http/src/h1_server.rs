//! HTTP/1.1 towards the client, read and written by the connection's own task for the
//! requests almost every client sends: HTTP/1.1, no body (no `Content-Length` other than 0,
//! no `Transfer-Encoding`), no `Expect`, no `TE`, no upgrade, not `HEAD` or `CONNECT`. The
//! first request that is anything else, or a head that does not parse or is too large,
//! hands the connection with the bytes read so far to hyper's server (`conn.rs`), which
//! serves the rest of it: request bodies, `100-continue`, upgrades, HTTP/1.0, trailers and
//! the answers to bad heads stay hyper's.
//!
//! Behaves as hyper's server does for what it takes: keep-alive unless `Connection: close`
//! (answered with `connection: close`), pipelined requests in order, the response framed by
//! its `Content-Length`, else the body's exact size, else `chunked`; no body for 1xx, 204
//! and 304; a `date` field when the response has none; the request dropped (the target
//! connection with it) when the client closes while it runs; the same header and keep-alive
//! timers (`conn::Timers`) and the same 408 on a head that trickles in too slowly.

use std::cell::RefCell;
use std::future::{Future, poll_fn};
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::Poll;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, StatusCode, Uri, Version};
use http_body::Body;
use smartproxy_metrics::HttpErrorReason;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio_util::io::poll_read_buf;

use crate::body::{ClientBody, ResponseBody};
use crate::conn::{CloseReason, MAX_HEADERS, Tick, Timers, answer_and_close, rejected};
use crate::ctx::ConnCtx;
use crate::h1::BoxError;
use crate::headers::{field_name, is_named};
use crate::quiet::Quiet;
use crate::service::handle;

/// Bytes of response gathered before a write: a head and a small body go out in one.
const WRITE_BATCH: usize = 64 * 1024;
/// A body frame at least this large is written as it is, not copied behind the head.
const DIRECT_WRITE: usize = 16 * 1024;

/// How this path left the connection.
pub(crate) enum Served<I> {
    /// Done: the connection is closed.
    Closed(CloseReason),
    /// A request this path does not take: hyper serves the connection from these bytes on.
    Hyper(I, Vec<u8>),
}

/// What the read buffer holds.
#[allow(clippy::large_enum_variant, reason = "a return value, moved once")]
enum Head {
    Partial,
    /// Not for this path (or not valid): the bytes go to hyper as they were read.
    Other,
    Ready(Request<ClientBody>, bool),
}

/// Serves requests on `io` (after `prefix`, the bytes already read) until the connection
/// closes or a request for hyper arrives.
pub(crate) async fn serve<I, F>(
    ctx: &Arc<ConnCtx>,
    mut io: I,
    prefix: Option<Vec<u8>>,
    timers: Timers,
    max_head: usize,
    mut shutdown: Pin<&mut F>,
) -> Served<I>
where
    I: AsyncRead + AsyncWrite + Unpin,
    F: Future<Output = ()>,
{
    let mut buf =
        prefix.map_or_else(|| BytesMut::with_capacity(4096), |p| BytesMut::from(Bytes::from(p)));
    let mut out = BytesMut::new();
    // Polled only once it fires, not at every wake of the task.
    let sleep = std::pin::pin!(tokio::time::sleep_until(ctx.start + timers.header));
    let mut sleep = Quiet::new(sleep);
    let state = &ctx.state;
    loop {
        // A complete request head.
        let (req, keep_alive) = loop {
            if !buf.is_empty() {
                if state.head_started.load(Ordering::Relaxed) == 0 {
                    state.head_started.store(ctx.now() + 1, Ordering::Relaxed);
                }
                match parse(&mut buf, max_head) {
                    Head::Ready(req, keep_alive) => break (req, keep_alive),
                    Head::Other => return Served::Hyper(io, buf.to_vec()),
                    Head::Partial => {}
                }
            }
            if buf.capacity() - buf.len() < 1024 {
                buf.reserve(4096);
            }
            tokio::select! {
                biased;
                r = poll_fn(|cx| poll_read_buf(Pin::new(&mut io), cx, &mut buf)) => match r {
                    Ok(0) => {
                        if !buf.is_empty() {
                            tracing::debug!(client = %ctx.client, "client closed mid-request head");
                        }
                        return Served::Closed(CloseReason::ClientClosed);
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::debug!(client = %ctx.client, "connection error: {e}");
                        return Served::Closed(CloseReason::Error);
                    }
                },
                () = &mut sleep => match timers.tick(ctx) {
                    Tick::Next(at) => sleep.get_mut().as_mut().reset(at),
                    Tick::Idle => return Served::Closed(CloseReason::KeepaliveTimeout),
                    Tick::HeadTimeout => {
                        rejected(ctx, HttpErrorReason::HeaderTimeout, &"request head not complete in time");
                        answer_and_close(&mut io, 408).await;
                        return Served::Closed(CloseReason::HeaderTimeout);
                    }
                },
                // Between requests (a head not complete is not a request yet, as for hyper).
                () = shutdown.as_mut() => return Served::Closed(CloseReason::Shutdown),
            }
        };

        // The request, watched for the client going away.
        let request = std::pin::pin!(handle(Arc::clone(ctx), req, false));
        let delay = if keep_alive { None } else { ctx.close_watch_delay };
        let Some(Ok(resp)) = watch(request, &mut io, &mut buf, delay).await else {
            tracing::debug!(client = %ctx.client, "client closed while its request ran");
            return Served::Closed(CloseReason::ClientClosed);
        };
        // A graceful shutdown that began meanwhile: this is the connection's last response.
        let shutting = poll_fn(|cx| Poll::Ready(shutdown.as_mut().poll(cx).is_ready())).await;
        let keep_alive = keep_alive && !shutting;
        let (parts, mut body) = resp.into_parts();
        out.clear();
        let framing = encode_head(&parts, &mut body, keep_alive, &mut out);
        drop(parts);
        // The connection's last response: its last write holds its bytes for the FIN
        // (`MSG_MORE`, see `send_body`), which the shutdown after it sends with them.
        let sent = send_body(&mut io, &mut out, &mut body, framing, &mut buf, !keep_alive).await;
        // The request is finished here (metrics, access log, pooled target connection).
        drop(body);
        state.response_done.store(false, Ordering::Relaxed);
        if state.in_flight.load(Ordering::Relaxed) == 0 {
            state.expect_head.store(true, Ordering::Relaxed);
        }
        match sent {
            Ok(()) => {}
            Err(Failure::ClientGone) => {
                tracing::debug!(client = %ctx.client, "client closed during the response");
                return Served::Closed(CloseReason::ClientClosed);
            }
            Err(Failure::Io(e)) => {
                tracing::debug!(client = %ctx.client, "connection error: {e}");
                return Served::Closed(CloseReason::Error);
            }
            Err(Failure::Body(e)) => {
                tracing::debug!(client = %ctx.client, "response body failed: {e}");
                return Served::Closed(CloseReason::Error);
            }
        }
        if !keep_alive {
            // The FIN now, in one segment with the response's last bytes held for it (on TLS
            // after the close_notify alert, held too). Not left to the close: a socket closed
            // with bytes of the client unread (a client that sent more after its `close`)
            // sends a reset instead, and drops what it holds.
            let _ = poll_fn(|cx| crate::io::as_last_write(|| Pin::new(&mut io).poll_shutdown(cx)))
                .await;
            let reason = if shutting { CloseReason::Shutdown } else { CloseReason::ClientClosed };
            return Served::Closed(reason);
        }
    }
}

/// Runs `fut`; `None` if the client closes (or fails) first. Bytes the client sends
/// meanwhile (the next, pipelined, request) are kept in `buf`; reading stops there, as
/// hyper's does. `delay`: the client is watched only once `fut` has run this long
/// ([`crate::ConnInfo::close_watch_delay`]; the timer is set only if `fut` has to wait).
async fn watch<T, I: AsyncRead + Unpin>(
    mut fut: Pin<&mut impl Future<Output = T>>,
    io: &mut I,
    buf: &mut BytesMut,
    mut delay: Option<std::time::Duration>,
) -> Option<T> {
    let mut pause = std::pin::pin!(None::<tokio::time::Sleep>);
    poll_fn(|cx| {
        if let Poll::Ready(v) = fut.as_mut().poll(cx) {
            return Poll::Ready(Some(v));
        }
        if let Some(d) = delay.take() {
            pause.set(Some(tokio::time::sleep(d)));
        }
        if let Some(p) = pause.as_mut().as_pin_mut() {
            if p.poll(cx).is_pending() {
                return Poll::Pending;
            }
            pause.set(None);
        }
        if buf.is_empty() {
            if buf.capacity() < 1024 {
                buf.reserve(4096);
            }
            match poll_read_buf(Pin::new(&mut *io), cx, buf) {
                Poll::Ready(Ok(0) | Err(_)) => return Poll::Ready(None),
                Poll::Ready(Ok(_)) | Poll::Pending => {}
            }
        }
        Poll::Pending
    })
    .await
}

/// Parses the request head at the start of `buf` and consumes it if this path takes it.
fn parse(buf: &mut BytesMut, max_head: usize) -> Head {
    let mut fields = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    let len = match httparse::ParserConfig::default().parse_request_with_uninit_headers(
        &mut req,
        buf,
        &mut fields,
    ) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() > max_head => return Head::Other,
        Ok(httparse::Status::Partial) => return Head::Partial,
        Err(_) => return Head::Other,
    };
    if len > max_head || req.version != Some(1) {
        return Head::Other;
    }
    let (Some(m), Some(path)) = (req.method, req.path) else { return Head::Other };
    let method = match m {
        "GET" => Method::GET,
        "POST" => Method::POST,
        "PUT" => Method::PUT,
        "DELETE" => Method::DELETE,
        "OPTIONS" => Method::OPTIONS,
        "PATCH" => Method::PATCH,
        "HEAD" | "CONNECT" => return Head::Other,
        m => match Method::from_bytes(m.as_bytes()) {
            Ok(m) => m,
            Err(_) => return Head::Other,
        },
    };
    let mut keep_alive = true;
    let mut hosts = 0u32;
    for h in req.headers.iter() {
        let (name, value) = (h.name.as_bytes(), h.value);
        match name.len() {
            // More than one is a bad request (RFC 9112 §3.2): hyper's path answers it, and
            // `proxy.rs` relies on at most one here.
            4 if is_named(name, b"host") => {
                hosts += 1;
                if hosts > 1 {
                    return Head::Other;
                }
            }
            14 if is_named(name, b"content-length") && value.trim_ascii() != b"0" => {
                return Head::Other;
            }
            2 | 6 | 7 | 17
                if is_named(name, b"te")
                    || is_named(name, b"expect")
                    || is_named(name, b"upgrade")
                    || is_named(name, b"transfer-encoding") =>
            {
                return Head::Other;
            }
            10 if is_named(name, b"connection") => {
                for token in value.split(|&b| b == b',') {
                    let t = token.trim_ascii();
                    if t.eq_ignore_ascii_case(b"close") {
                        keep_alive = false;
                    } else if t.eq_ignore_ascii_case(b"upgrade") {
                        return Head::Other;
                    }
                }
            }
            _ => {}
        }
    }
    // The fields as offsets into the head, which is then split off without a copy.
    let base = buf.as_ptr() as usize;
    let path_at = path.as_ptr() as usize - base;
    let path_range = path_at..path_at + path.len();
    let mut names = Vec::with_capacity(req.headers.len());
    for h in req.headers.iter() {
        let Some(name) = field_name(h.name.as_bytes()) else { return Head::Other };
        let start = h.value.as_ptr() as usize - base;
        names.push((name, start, start + h.value.len()));
    }
    let head = buf.split_to(len).freeze();
    match build(&head, method, path_range, names) {
        Some(req) => Head::Ready(req, keep_alive),
        None => {
            // Given back whole: hyper answers it.
            let mut all = BytesMut::with_capacity(head.len() + buf.len());
            all.extend_from_slice(&head);
            all.extend_from_slice(buf);
            *buf = all;
            Head::Other
        }
    }
}

fn build(
    head: &Bytes,
    method: Method,
    path: std::ops::Range<usize>,
    fields: Vec<(HeaderName, usize, usize)>,
) -> Option<Request<ClientBody>> {
    let uri = Uri::from_maybe_shared(head.slice(path)).ok()?;
    // Room for what the proxy adds (X-Forwarded-For/-Proto/-Host, Forwarded, Via): the map
    // does not grow and rehash per request.
    let mut headers = HeaderMap::with_capacity(fields.len() + 5);
    for (name, start, end) in fields {
        headers.append(name, HeaderValue::from_maybe_shared(head.slice(start..end)).ok()?);
    }
    let mut req = Request::new(ClientBody::Empty);
    *req.method_mut() = method;
    *req.uri_mut() = uri;
    *req.version_mut() = Version::HTTP_11;
    *req.headers_mut() = headers;
    Some(req)
}

/// How the response body is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// No body (1xx, 204, 304), or an empty one.
    None,
    Length(u64),
    Chunked,
}

/// The status line and fields of `parts` into `out`, as hyper's server writes them, then
/// the target's raw fields if the body has them (`h1.rs`: taken here, so that the read
/// buffer they point into is the target connection's alone again).
fn encode_head(
    parts: &http::response::Parts,
    body: &mut ResponseBody,
    keep_alive: bool,
    out: &mut BytesMut,
) -> Framing {
    let status = parts.status;
    let reason = parts.extensions.get::<hyper::ext::ReasonPhrase>();
    let raw = body.take_raw_fields();
    out.reserve(128 + parts.headers.len() * 32 + raw.as_ref().map_or(0, |r| r.bytes.len()));
    if status == StatusCode::OK && reason.is_none() {
        out.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
    } else {
        out.extend_from_slice(b"HTTP/1.1 ");
        out.extend_from_slice(status.as_str().as_bytes());
        out.extend_from_slice(b" ");
        match reason {
            Some(r) => out.extend_from_slice(r.as_bytes()),
            None => out.extend_from_slice(status.canonical_reason().unwrap_or("<none>").as_bytes()),
        }
        out.extend_from_slice(b"\r\n");
    }
    let can_have_body = !(status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED);
    let ended = body.is_end_stream();
    let exact = body.size_hint().exact();
    let mut framing: Option<Framing> = None;
    let mut wrote_date = false;
    let mut connection_close = false;
    for (name, value) in &parts.headers {
        if *name == header::CONTENT_LENGTH {
            if !can_have_body || framing.is_some() {
                continue;
            }
            let len = if ended { Some(0) } else { exact.or_else(|| parse_length(value)) };
            let Some(len) = len else { continue };
            framing = Some(if len == 0 { Framing::None } else { Framing::Length(len) });
            if ended && value.as_bytes() != b"0" {
                out.extend_from_slice(b"content-length: 0\r\n");
                continue;
            }
        } else if *name == header::TRANSFER_ENCODING {
            // Hop-by-hop: a target's is gone by now; the framing is this layer's own.
            continue;
        } else if *name == header::DATE {
            wrote_date = true;
        } else if *name == header::CONNECTION {
            connection_close |= value.as_bytes().eq_ignore_ascii_case(b"close");
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    // Neither framing nor hop-by-hop fields among them (see `RawFields`).
    if let Some(raw) = raw {
        out.extend_from_slice(&raw.bytes);
        wrote_date |= raw.date;
    }
    let framing = if !can_have_body {
        Framing::None
    } else if let Some(f) = framing {
        f
    } else if ended || exact == Some(0) {
        out.extend_from_slice(b"content-length: 0\r\n");
        Framing::None
    } else if let Some(n) = exact {
        out.extend_from_slice(b"content-length: ");
        out.extend_from_slice(itoa(n, &mut [0; 20]));
        out.extend_from_slice(b"\r\n");
        Framing::Length(n)
    } else {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
        Framing::Chunked
    };
    if !keep_alive && !connection_close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    if !wrote_date {
        out.extend_from_slice(b"date: ");
        date(out);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    framing
}

fn parse_length(v: &HeaderValue) -> Option<u64> {
    let b = v.as_bytes();
    if b.is_empty() || !b.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(b).ok()?.parse().ok()
}

/// `n` in decimal, in `buf`.
fn itoa(mut n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[i..];
        }
    }
}

/// `n` in hexadecimal, in `buf` (a chunk size).
fn hex(mut n: usize, buf: &mut [u8; 16]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b"0123456789abcdef"[n & 15];
        n >>= 4;
        if n == 0 {
            return &buf[i..];
        }
    }
}

/// The current time as an HTTP date, formatted once a second per thread.
fn date(out: &mut BytesMut) {
    thread_local! {
        static CACHE: RefCell<(u64, [u8; 29])> = const { RefCell::new((u64::MAX, [0; 29])) };
    }
    let now = SystemTime::now();
    let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    CACHE.with(|c| {
        let mut c = c.borrow_mut();
        if c.0 != secs {
            let text = httpdate::fmt_http_date(now);
            if text.len() == 29 {
                c.1.copy_from_slice(text.as_bytes());
                c.0 = secs;
            } else {
                out.extend_from_slice(text.as_bytes());
                return;
            }
        }
        out.extend_from_slice(&c.1);
    });
}

enum Failure {
    ClientGone,
    Io(io::Error),
    Body(BoxError),
}

/// Writes the head in `out` and the body after it: small frames gathered behind the head,
/// large ones written as they are; everything gathered goes out when the body has nothing
/// more ready. `last`: the connection shuts down right after this response: the final write
/// is marked as the connection's last ([`crate::io::last_write`]: it leaves with the FIN).
async fn send_body<I: AsyncRead + AsyncWrite + Unpin>(
    io: &mut I,
    out: &mut BytesMut,
    body: &mut ResponseBody,
    framing: Framing,
    buf: &mut BytesMut,
    last: bool,
) -> Result<(), Failure> {
    let mut left = match framing {
        Framing::Length(n) => n,
        _ => 0,
    };
    while framing != Framing::None && !body.is_end_stream() {
        let frame = match poll_fn(|cx| Poll::Ready(Pin::new(&mut *body).poll_frame(cx))).await {
            Poll::Ready(f) => f,
            Poll::Pending => {
                // Out before the wait: gathered bytes, and what a TLS stream holds back.
                flush(io, out).await?;
                io.flush().await.map_err(Failure::Io)?;
                let next = std::pin::pin!(poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx)));
                watch(next, io, buf, None).await.ok_or(Failure::ClientGone)?
            }
        };
        let Some(frame) = frame else { break };
        let data = match frame.map_err(Failure::Body)?.into_data() {
            Ok(d) => d,
            // Trailers: only to a client that asked for them (`TE: trailers`: hyper's).
            Err(_) => continue,
        };
        if data.is_empty() {
            continue;
        }
        if let Framing::Length(_) = framing {
            let n = data.len() as u64;
            if n > left {
                return Err(Failure::Body("response body longer than its content-length".into()));
            }
            left -= n;
        }
        if framing == Framing::Chunked {
            out.extend_from_slice(hex(data.len(), &mut [0; 16]));
            out.extend_from_slice(b"\r\n");
        }
        if data.len() >= DIRECT_WRITE {
            flush(io, out).await?;
            io.write_all(&data).await.map_err(Failure::Io)?;
        } else {
            out.extend_from_slice(&data);
        }
        if framing == Framing::Chunked {
            out.extend_from_slice(b"\r\n");
        }
        if out.len() >= WRITE_BATCH {
            flush(io, out).await?;
        }
    }
    if let Framing::Length(_) = framing
        && left > 0
    {
        let _ = flush(io, out).await;
        return Err(Failure::Body("response body shorter than its content-length".into()));
    }
    if framing == Framing::Chunked {
        out.extend_from_slice(b"0\r\n\r\n");
    }
    if last {
        write_last(io, out).await.map_err(Failure::Io)?;
        out.clear();
    } else {
        flush(io, out).await?;
    }
    io.flush().await.map_err(Failure::Io)
}

/// Writes what `out` gathered.
async fn flush<I: AsyncWrite + Unpin>(io: &mut I, out: &mut BytesMut) -> Result<(), Failure> {
    if !out.is_empty() {
        io.write_all(out).await.map_err(Failure::Io)?;
        out.clear();
    }
    Ok(())
}

/// Writes all of `bytes` as the connection's last write: each poll of the write with
/// [`crate::io::last_write`] set, so that the socket can hold the bytes for the FIN of the
/// close that follows.
pub(crate) async fn write_last<I: AsyncWrite + Unpin>(
    io: &mut I,
    mut bytes: &[u8],
) -> io::Result<()> {
    while !bytes.is_empty() {
        let n = poll_fn(|cx| crate::io::as_last_write(|| Pin::new(&mut *io).poll_write(cx, bytes)))
            .await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        bytes = &bytes[n..];
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(raw: &[u8]) -> Head {
        let mut buf = BytesMut::from(raw);
        parse(&mut buf, 65536)
    }

    #[test]
    fn simple_requests_are_taken_and_the_rest_goes_to_hyper() {
        let Head::Ready(req, keep) =
            parsed(b"GET /a?b=1 HTTP/1.1\r\nHost: x.example\r\nX-A: 1\r\n\r\n")
        else {
            panic!("not taken")
        };
        assert!(keep);
        assert_eq!(req.uri().path(), "/a");
        assert_eq!(req.uri().query(), Some("b=1"));
        assert_eq!(req.headers()["host"], "x.example");
        assert_eq!(req.headers()["x-a"], "1");
        let Head::Ready(_, keep) =
            parsed(b"DELETE / HTTP/1.1\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")
        else {
            panic!("not taken")
        };
        assert!(!keep);
        for other in [
            &b"GET / HTTP/1.0\r\n\r\n"[..],
            b"HEAD / HTTP/1.1\r\n\r\n",
            b"CONNECT a:1 HTTP/1.1\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            b"GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
            b"GET / HTTP/1.1\r\nExpect: 100-continue\r\n\r\n",
            b"GET / HTTP/1.1\r\nTE: trailers\r\n\r\n",
            b"GET /a b HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\r\nBad Name: x\r\n\r\n",
        ] {
            assert!(matches!(parsed(other), Head::Other), "{}", String::from_utf8_lossy(other));
        }
        assert!(matches!(parsed(b"GET / HTTP/1.1\r\nHost: x"), Head::Partial));
        let mut big = b"GET / HTTP/1.1\r\nX: ".to_vec();
        big.resize(70_000, b'a');
        assert!(matches!(parsed(&big), Head::Other));
    }

    /// Mutated and truncated request heads (a fixed-seed generator, bounded count): `parse`
    /// never panics, leaves the buffer as it was unless it takes a head, and takes exactly
    /// the head when it does.
    #[test]
    fn arbitrary_bytes_never_panic_and_lose_nothing() {
        let seeds: [&[u8]; 4] = [
            b"GET /a?b HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, close\r\n\r\nGET / HTTP/1.1\r\n\r\n",
            b"POST http://h/p HTTP/1.1\r\nContent-Length: 0\r\nX: \xff\xfe\r\n\r\n",
            b"OPTIONS * HTTP/1.1\r\nHost: [::1]:80\r\nTE: x\r\n\r\nrest",
            b"PATCH /%20 HTTP/1.1\nHost:x\n\n",
        ];
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for i in 0..20_000u32 {
            let mut input = seeds[i as usize % seeds.len()].to_vec();
            for _ in 0..(next() % 4) {
                let at = (next() as usize) % input.len().max(1);
                match next() % 4 {
                    0 => input.truncate(at),
                    1 => input.insert(at, (next() & 0xff) as u8),
                    2 if at < input.len() => input[at] = (next() & 0xff) as u8,
                    _ => {
                        if at < input.len() {
                            input.remove(at);
                        }
                    }
                }
            }
            let mut buf = BytesMut::from(&input[..]);
            match parse(&mut buf, 4096) {
                Head::Partial | Head::Other => assert_eq!(&buf[..], &input[..]),
                Head::Ready(req, _) => {
                    assert!(input.ends_with(&buf), "{input:?}");
                    assert!(req.headers().len() <= MAX_HEADERS);
                }
            }
        }
    }

    /// The shortcut names are the ones `HeaderName::from_bytes` gives, in any case; others
    /// and invalid ones as it says.
    #[test]
    fn a_pipelined_request_stays_in_the_buffer() {
        let mut buf = BytesMut::from(&b"GET /1 HTTP/1.1\r\n\r\nGET /2 HTTP/1.1\r\n\r\n"[..]);
        assert!(matches!(parse(&mut buf, 1024), Head::Ready(..)));
        assert_eq!(&buf[..], b"GET /2 HTTP/1.1\r\n\r\n");
    }

    fn head(status: u16, headers: &[(&str, &str)], mut body: ResponseBody, keep: bool) -> String {
        let mut resp = http::Response::new(());
        *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
        for (n, v) in headers {
            resp.headers_mut().append(
                HeaderName::from_bytes(n.as_bytes()).unwrap_or(header::WARNING),
                HeaderValue::from_str(v).unwrap_or(HeaderValue::from_static("x")),
            );
        }
        let (parts, ()) = resp.into_parts();
        let mut out = BytesMut::new();
        let f = encode_head(&parts, &mut body, keep, &mut out);
        format!("{f:?}\n{}", String::from_utf8_lossy(&out))
    }

    #[test]
    fn heads_are_framed_as_hyper_frames_them() {
        let h = head(200, &[("x-a", "1")], ResponseBody::full("hello"), true);
        assert!(
            h.starts_with("Length(5)\nHTTP/1.1 200 OK\r\nx-a: 1\r\ncontent-length: 5\r\ndate: ")
        );
        assert!(h.ends_with(" GMT\r\n\r\n"), "{h}");
        let h = head(
            404,
            &[("content-length", "5"), ("date", "d")],
            ResponseBody::full("hello"),
            false,
        );
        assert_eq!(
            h,
            "Length(5)\nHTTP/1.1 404 Not Found\r\ncontent-length: 5\r\ndate: d\r\nconnection: close\r\n\r\n"
        );
        let h = head(204, &[("date", "d"), ("content-length", "0")], ResponseBody::empty(), true);
        assert_eq!(h, "None\nHTTP/1.1 204 No Content\r\ndate: d\r\n\r\n");
        let h = head(301, &[("date", "d"), ("location", "/x")], ResponseBody::empty(), true);
        assert_eq!(
            h,
            "None\nHTTP/1.1 301 Moved Permanently\r\ndate: d\r\nlocation: /x\r\ncontent-length: 0\r\n\r\n"
        );
    }

    #[test]
    fn numbers_are_written() {
        for n in [0u64, 9, 10, 12345, u64::MAX] {
            assert_eq!(itoa(n, &mut [0; 20]), n.to_string().as_bytes());
        }
        for n in [0usize, 15, 16, 0xabcdef] {
            assert_eq!(hex(n, &mut [0; 16]), format!("{n:x}").as_bytes());
        }
        let mut out = BytesMut::new();
        date(&mut out);
        date(&mut out);
        assert_eq!(out.len(), 58);
        assert!(httpdate::parse_http_date(std::str::from_utf8(&out[..29]).unwrap_or("")).is_ok());
    }
}
