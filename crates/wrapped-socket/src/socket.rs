//! [`WrappedSocket`] and the address newtypes.

use std::fmt;
use std::io::{self, IoSlice};
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::task::{Context, Poll};

use smartproxy_proxy_protocol::Header;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::time::Instant;

use crate::error::PeekError;

/// The real client address: from an accepted PROXY header, else the TCP peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientAddr(pub SocketAddr);

impl ClientAddr {
    /// The IP address.
    pub fn ip(&self) -> IpAddr {
        self.0.ip()
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.0.port()
    }
}

impl fmt::Display for ClientAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The TCP peer: whoever opened the connection to us (a load balancer, or the client itself).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PeerAddr(pub SocketAddr);

impl PeerAddr {
    /// The IP address.
    pub fn ip(&self) -> IpAddr {
        self.0.ip()
    }
}

impl fmt::Display for PeerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A stream that replays bytes already read, and knows the real client behind a proxy.
///
/// Reads return the buffered bytes first, then read from the inner stream. Writes go straight
/// to the inner stream (vectored writes included).
pub struct WrappedSocket<S> {
    inner: S,
    buf: Vec<u8>,
    pos: usize,
    peer: PeerAddr,
    client: Option<SocketAddr>,
    trusted: bool,
    header: Option<Header>,
}

impl<S: fmt::Debug> fmt::Debug for WrappedSocket<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WrappedSocket")
            .field("inner", &self.inner)
            .field("buffered", &(self.buf.len() - self.pos))
            .field("peer", &self.peer)
            .field("client", &self.client)
            .field("trusted", &self.trusted)
            .field("header", &self.header)
            .finish()
    }
}

impl<S> WrappedSocket<S> {
    /// Wraps a stream with nothing buffered and the peer as the client.
    pub fn new(inner: S, peer: PeerAddr) -> Self {
        Self::with_buffered(inner, peer, Vec::new())
    }

    /// Wraps a stream whose first bytes were already read into `buffered`.
    pub fn with_buffered(inner: S, peer: PeerAddr, buffered: Vec<u8>) -> Self {
        Self { inner, buf: buffered, pos: 0, peer, client: None, trusted: false, header: None }
    }

    /// The real client: the source address of the accepted PROXY header, else the peer.
    ///
    /// A PROXY `LOCAL` header (health check) or an `UNKNOWN`/unix source keeps the peer.
    pub fn client_addr(&self) -> ClientAddr {
        ClientAddr(self.client.unwrap_or(self.peer.0))
    }

    /// The TCP peer.
    pub fn peer_addr(&self) -> PeerAddr {
        self.peer
    }

    /// Whether the connection came from a trusted proxy (its PROXY header was accepted).
    pub fn is_from_trusted_proxy(&self) -> bool {
        self.trusted
    }

    /// The accepted PROXY header (its TLVs, destination, version).
    pub fn proxy_header(&self) -> Option<&Header> {
        self.header.as_ref()
    }

    /// Records an accepted PROXY header from a trusted peer: its source becomes the client.
    pub fn set_proxy_header(&mut self, header: Header) {
        self.client = header.source();
        self.trusted = true;
        self.header = Some(header);
    }

    /// Bytes buffered and not yet read.
    pub fn buffered(&self) -> &[u8] {
        &self.buf[self.pos..]
    }

    /// Takes the buffered bytes out (for example to send them in the same write as an outgoing
    /// PROXY header); later reads go to the inner stream.
    pub fn take_buffered(&mut self) -> Vec<u8> {
        let mut v = std::mem::take(&mut self.buf);
        if self.pos > 0 {
            v.drain(..self.pos);
        }
        self.pos = 0;
        v
    }

    /// The inner stream.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner stream, mutably. Reading from it directly skips the buffered bytes.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The same socket (buffered bytes, peer, client, PROXY header) around `f(inner)`: for a
    /// wrapper of the inner stream that takes its place.
    pub fn map_inner<T>(self, f: impl FnOnce(S) -> T) -> WrappedSocket<T> {
        let Self { inner, buf, pos, peer, client, trusted, header } = self;
        WrappedSocket { inner: f(inner), buf, pos, peer, client, trusted, header }
    }

    /// The inner stream and the bytes still buffered.
    pub fn into_parts(mut self) -> (S, Vec<u8>) {
        let buf = self.take_buffered();
        (self.inner, buf)
    }
}

impl<S: AsyncRead + Unpin> WrappedSocket<S> {
    /// Reads once from the inner stream and appends what arrives to the buffered bytes, so that
    /// a later read replays it. Never buffers more than `cap` bytes in total.
    ///
    /// Returns the number of bytes added; `Ok(0)` is the end of the stream.
    pub async fn peek_more(&mut self, cap: usize, deadline: Instant) -> Result<usize, PeekError> {
        if self.pos > 0 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        let room = cap.saturating_sub(self.buf.len());
        if room == 0 {
            return Err(PeekError::CapReached { cap });
        }
        let want = room.min(16 * 1024);
        self.buf.reserve(want);
        let mut limited = (&mut self.inner).take(want as u64);
        match tokio::time::timeout_at(deadline, limited.read_buf(&mut self.buf)).await {
            Ok(Ok(n)) => Ok(n),
            Ok(Err(e)) => Err(PeekError::Io(e)),
            Err(_) => Err(PeekError::Timeout),
        }
    }

    /// Buffers until at least `n` bytes are buffered (bounded by `cap`), or the stream ends.
    ///
    /// Returns the number of bytes buffered, which is below `n` only at the end of the stream.
    pub async fn peek_at_least(
        &mut self,
        n: usize,
        cap: usize,
        deadline: Instant,
    ) -> Result<usize, PeekError> {
        while self.buffered().len() < n {
            if self.peek_more(cap, deadline).await? == 0 {
                break;
            }
        }
        Ok(self.buffered().len())
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for WrappedSocket<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.pos < this.buf.len() {
            let avail = &this.buf[this.pos..];
            let n = avail.len().min(out.remaining());
            out.put_slice(&avail[..n]);
            this.pos += n;
            if this.pos == this.buf.len() {
                // Release the memory: replay is a one-time thing.
                this.buf = Vec::new();
                this.pos = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, out)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for WrappedSocket<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, data)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}
