//! The client stream as hyper sees it: replays the bytes read to tell HTTP/1 from HTTP/2,
//! marks the first byte of each HTTP/1 request head (for `request_header_timeout`), and
//! replaces hyper's automatic empty answer to a bad head with one that has a short body.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::ctx::ConnCtx;

/// Bytes already read from the client, replayed before the stream.
#[derive(Debug)]
pub(crate) struct Prefix {
    buf: Vec<u8>,
    pos: usize,
}

impl Prefix {
    pub(crate) fn new(buf: Vec<u8>) -> Self {
        Self { buf, pos: 0 }
    }

    /// The bytes not replayed yet.
    pub(crate) fn into_vec(mut self) -> Vec<u8> {
        if self.pos > 0 {
            self.buf.drain(..self.pos);
        }
        self.buf
    }
}

pub(crate) struct ClientIo<I> {
    io: I,
    prefix: Option<Prefix>,
    ctx: Arc<ConnCtx>,
    /// HTTP/1: track heads and intercept automatic answers.
    h1: bool,
    /// An answer being written in place of hyper's (bytes, written so far).
    reply: Option<(&'static [u8], usize)>,
}

impl<I> ClientIo<I> {
    pub(crate) fn new(io: I, prefix: Option<Prefix>, ctx: Arc<ConnCtx>, h1: bool) -> Self {
        Self { io, prefix, ctx, h1, reply: None }
    }

    fn on_read(&self, n: usize) {
        if self.h1 && n > 0 {
            let s = &self.ctx.state;
            if s.in_flight.load(Ordering::Relaxed) == 0
                && s.head_started.load(Ordering::Relaxed) == 0
            {
                s.head_started.store(self.ctx.now() + 1, Ordering::Relaxed);
            }
        }
    }

    /// Whether a write now is hyper's automatic answer to a bad request head.
    fn is_auto_answer(&self) -> bool {
        self.h1 && self.ctx.state.expect_head.load(Ordering::Relaxed)
    }
}

impl<I> ClientIo<I> {
    /// The client stream itself, without the answer interception (an answer of our own
    /// once hyper let go).
    pub(crate) fn raw_mut(&mut self) -> &mut I {
        &mut self.io
    }
}

impl<I: AsyncWrite + Unpin> ClientIo<I> {
    /// Replaces hyper's answer (`head` is its first bytes) with ours; returns when it is
    /// written. Hyper is told its bytes were written, then closes the connection.
    fn poll_answer(&mut self, cx: &mut Context<'_>, head: &[u8]) -> Poll<io::Result<()>> {
        if self.reply.is_none() {
            let status = parse_status(head).unwrap_or(400);
            self.ctx.state.auto_status.store(status, Ordering::Relaxed);
            self.reply = Some((answer(status), 0));
        }
        while let Some((bytes, pos)) = &mut self.reply {
            if *pos >= bytes.len() {
                break;
            }
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &bytes[*pos..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            *pos += n;
        }
        Poll::Ready(Ok(()))
    }
}

/// The status code of `HTTP/1.x NNN ...`.
fn parse_status(b: &[u8]) -> Option<u16> {
    let code = b.get(9..12)?;
    if !b.starts_with(b"HTTP/1.") || !code.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(code).ok()?.parse().ok()
}

/// A complete `Connection: close` answer with a short body.
pub(crate) fn answer(status: u16) -> &'static [u8] {
    match status {
        408 => {
            b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: 33\r\nconnection: close\r\n\r\nrequest header timeout exceeded\r\n"
        }
        414 => {
            b"HTTP/1.1 414 URI Too Long\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: 24\r\nconnection: close\r\n\r\nrequest target too long\n"
        }
        431 => {
            b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: 32\r\nconnection: close\r\n\r\nrequest header fields too large\n"
        }
        _ => {
            b"HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: 24\r\nconnection: close\r\n\r\nmalformed request head\r\n"
        }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for ClientIo<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(p) = &mut this.prefix {
            let n = buf.remaining().min(p.buf.len() - p.pos);
            buf.put_slice(&p.buf[p.pos..p.pos + n]);
            p.pos += n;
            if p.pos >= p.buf.len() {
                this.prefix = None;
            }
            this.on_read(n);
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.io).poll_read(cx, buf))?;
        this.on_read(buf.filled().len() - before);
        Poll::Ready(Ok(()))
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for ClientIo<I> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.is_auto_answer() {
            ready!(this.poll_answer(cx, b))?;
            return Poll::Ready(Ok(b.len()));
        }
        Pin::new(&mut this.io).poll_write(cx, b)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.is_auto_answer() {
            let first = bufs.iter().find(|b| !b.is_empty()).map_or(&[][..], |b| &b[..]);
            ready!(this.poll_answer(cx, first))?;
            return Poll::Ready(Ok(bufs.iter().map(|b| b.len()).sum()));
        }
        Pin::new(&mut this.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(Pin::new(&mut this.io).poll_flush(cx))?;
        let s = &this.ctx.state;
        // The last bytes of a finished response are out: from now on the connection waits
        // for a new head, and anything hyper writes before one is its own answer.
        if this.h1 && s.response_done.load(Ordering::Relaxed) {
            s.response_done.store(false, Ordering::Relaxed);
            if s.in_flight.load(Ordering::Relaxed) == 0 {
                s.expect_head.store(true, Ordering::Relaxed);
            }
        }
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_well_formed() {
        for status in [400, 408, 414, 431] {
            let a = answer(status);
            assert_eq!(parse_status(a), Some(status));
            let text = std::str::from_utf8(a).unwrap_or_default();
            let (head, body) = text.split_once("\r\n\r\n").unwrap_or_default();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .and_then(|v| v.parse().ok())
                .unwrap_or(usize::MAX);
            assert_eq!(len, body.len(), "{status}");
        }
        assert_eq!(parse_status(b"HTTP/1.1 431 Request Header"), Some(431));
        assert_eq!(parse_status(b"HTTP/1.1 4x1"), None);
        assert_eq!(parse_status(b"xx"), None);
    }
}

thread_local! {
    static LAST_WRITE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Whether the write being made on this thread carries a client connection's last bytes: the
/// stream's shutdown (on TLS the `close_notify` alert, then the shutdown) follows at once, so
/// a TCP socket under the stream can send them with `MSG_MORE` and let the FIN leave in the
/// same segment (one segment and one acknowledgement fewer per closing connection). The HTTP
/// layer sets it only for the length of one synchronous `poll_write` / `poll_shutdown` call on
/// the client stream (the last response of a connection, `h1_server`, and the error answers
/// before a close); the engine's plain client socket reads it; any other stream may ignore
/// it.
pub fn last_write() -> bool {
    LAST_WRITE.with(std::cell::Cell::get)
}

/// Runs `f`, one synchronous poll of a write on a client stream, with [`last_write`] set
/// (cleared again when `f` returns or unwinds).
pub(crate) fn as_last_write<R>(f: impl FnOnce() -> R) -> R {
    struct Reset;
    impl Drop for Reset {
        fn drop(&mut self) {
            LAST_WRITE.with(|c| c.set(false));
        }
    }
    LAST_WRITE.with(|c| c.set(true));
    let _reset = Reset;
    f()
}
