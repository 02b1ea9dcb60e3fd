//! Connections to targets: TCP (plus the PROXY header the engine builds), TLS through the
//! engine's connector, then an HTTP/1.1 or HTTP/2 handshake.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use smartproxy_routing::{CompiledRoute, SendProxyProtocol, UpstreamProtocol};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

use crate::body::UpBody;
use crate::ctx::ConnCtx;
use crate::h1::H1Conn;
use crate::pool::Sender;
use crate::snapshot::{ProxyRoute, TargetState};

/// A byte stream to a target (what an [`UpstreamTls`] connector returns).
pub trait UpstreamStream: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> UpstreamStream for T {}

/// What a TLS connection to a target is for.
#[derive(Debug)]
#[non_exhaustive]
pub struct TlsConnectRequest<'a> {
    /// The route (its `tls` block: `upstream_ca`, `upstream_server_name`, …).
    pub route: &'a CompiledRoute,
    /// Target host as configured.
    pub host: &'a str,
    /// Target port.
    pub port: u16,
    /// The server name the client sent, if the client connection was TLS.
    pub client_sni: Option<&'a str>,
    /// ALPN protocols to offer, in preference order (`h2`, `http/1.1`).
    pub alpn: &'a [&'a [u8]],
}

/// A TLS stream to a target and the ALPN protocol it negotiated.
#[non_exhaustive]
pub struct TlsStream {
    /// The encrypted stream.
    pub io: Box<dyn UpstreamStream>,
    /// The negotiated ALPN protocol.
    pub alpn: Option<Vec<u8>>,
}

impl TlsStream {
    /// A stream and its negotiated protocol.
    pub fn new(io: Box<dyn UpstreamStream>, alpn: Option<Vec<u8>>) -> Self {
        Self { io, alpn }
    }
}

impl std::fmt::Debug for TlsStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsStream").field("alpn", &self.alpn).finish_non_exhaustive()
    }
}

/// The future of [`UpstreamTls::connect`].
pub type TlsConnectFuture<'a> = Pin<Box<dyn Future<Output = io::Result<TlsStream>> + Send + 'a>>;

/// Sets up TLS towards targets of `terminate-and-reencrypt` routes. The engine implements it
/// with its rustls client configurations (CA, server name, verification per route).
pub trait UpstreamTls: Send + Sync + 'static {
    /// Runs the TLS handshake over `tcp` (the PROXY header, if any, is already written).
    fn connect<'a>(&'a self, tcp: TcpStream, req: TlsConnectRequest<'a>) -> TlsConnectFuture<'a>;
}

/// Why a target could not be used.
#[derive(Debug)]
pub(crate) enum ConnectError {
    /// The TCP connect did not finish within the connect timeout.
    Timeout,
    /// Refused, unreachable, TLS or handshake failure.
    Failed(io::Error),
}

impl ConnectError {
    /// The kind, for the target's health record.
    pub(crate) fn failure(&self) -> smartproxy_routing::ConnectFailure {
        match self {
            Self::Timeout => smartproxy_routing::ConnectFailure::Timeout,
            Self::Failed(e) => smartproxy_routing::ConnectFailure::of_io(e),
        }
    }
}

/// UNIX milliseconds, for the targets' health records (read on a failure or a recovery only).
pub(crate) fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Timeout => f.write_str("connect timed out"),
            Self::Failed(e) => write!(f, "{e}"),
        }
    }
}

/// The IO of a backend connection.
enum UpIo {
    Tcp(TcpStream),
    Tls(Box<dyn UpstreamStream>),
}

impl AsyncRead for UpIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Self::Tls(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for UpIo {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Tcp(s) => Pin::new(s).poll_write(cx, b),
            Self::Tls(s) => Pin::new(s).poll_write(cx, b),
        }
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Self::Tls(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }
    fn is_write_vectored(&self) -> bool {
        match self {
            Self::Tcp(s) => s.is_write_vectored(),
            Self::Tls(s) => s.is_write_vectored(),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Tcp(s) => Pin::new(s).poll_flush(cx),
            Self::Tls(s) => Pin::new(s).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Self::Tls(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// Everything a new backend connection needs.
pub(crate) struct ConnectParams<'a> {
    pub(crate) ctx: &'a ConnCtx,
    pub(crate) route: &'a CompiledRoute,
    pub(crate) pr: &'a ProxyRoute,
    pub(crate) target: &'a TargetState,
    pub(crate) port: u16,
    pub(crate) tls: Option<&'a dyn UpstreamTls>,
    /// HTTP/1.1 whatever `upstream` says (WebSocket), with upgrades enabled.
    pub(crate) upgrade: bool,
    /// A connection for the in-task exchange (`h1.rs`): plain TCP, HTTP/1.1, no hyper.
    pub(crate) direct: bool,
}

async fn tcp(p: &ConnectParams<'_>) -> io::Result<TcpStream> {
    let s = match p.target.ip {
        Some(ip) => TcpStream::connect(SocketAddr::new(ip, p.port)).await?,
        None => TcpStream::connect((&*p.target.host, p.port)).await?,
    };
    // Best effort: on a connection the target already reset this fails, and the reset is
    // then reported by the exchange (502 backend_error), not as a failed connect.
    let _ = s.set_nodelay(true);
    set_keepalive(&s, &p.pr.tcp_keepalive);
    Ok(s)
}

/// Connects, writes the PROXY header, sets up TLS, runs the HTTP handshake and spawns the
/// connection's task. The connect timeout covers TCP and TLS.
pub(crate) async fn connect(p: ConnectParams<'_>) -> Result<Sender, ConnectError> {
    let timeout = p.pr.connect_timeout;
    let io = match tokio::time::timeout(timeout, open(&p)).await {
        Err(_) => return Err(ConnectError::Timeout),
        Ok(Err(e)) => return Err(ConnectError::Failed(e)),
        Ok(Ok(io)) => io,
    };
    let (io, negotiated_h2) = match io {
        (UpIo::Tcp(tcp), _) if p.direct => return Ok(Sender::Raw(Box::new(H1Conn::new(tcp)))),
        io => io,
    };
    let h2 = !p.upgrade
        && match p.pr.upstream {
            UpstreamProtocol::Http2 => true,
            UpstreamProtocol::Auto => negotiated_h2,
            _ => false,
        };
    let io = TokioIo::new(io);
    let hs = async {
        if h2 {
            let (tx, conn) = http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .handshake::<_, UpBody>(io)
                .await?;
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!("backend HTTP/2 connection ended: {e}");
                }
            });
            Ok::<_, hyper::Error>(Sender::H2(tx))
        } else {
            http1(io, p.upgrade).await.map(Sender::H1)
        }
    };
    match tokio::time::timeout(timeout, hs).await {
        Err(_) => Err(ConnectError::Timeout),
        Ok(Err(e)) => Err(ConnectError::Failed(io::Error::other(e))),
        Ok(Ok(s)) => Ok(s),
    }
}

/// hyper's HTTP/1.1 client on `io` (no I/O: the handshake only sets up the connection's
/// task).
async fn http1(
    io: TokioIo<UpIo>,
    upgrade: bool,
) -> Result<http1::SendRequest<UpBody>, hyper::Error> {
    let (tx, conn) = http1::Builder::new()
        // As towards clients: one buffer, one `send` (see conn.rs).
        .writev(false)
        .handshake::<_, UpBody>(io)
        .await?;
    if upgrade {
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!("backend connection ended: {e}");
            }
        });
    } else {
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!("backend connection ended: {e}");
            }
        });
    }
    Ok(tx)
}

/// Hands an idle connection of the in-task exchange over to hyper's client (for a request
/// with a body). `None` if hyper cannot take it.
pub(crate) async fn adopt(conn: Box<H1Conn>) -> Option<Sender> {
    http1(TokioIo::new(UpIo::Tcp((*conn).into_tcp())), false).await.ok().map(Sender::H1)
}

async fn open(p: &ConnectParams<'_>) -> io::Result<(UpIo, bool)> {
    let mut s = tcp(p).await?;
    if p.pr.proxy_protocol != SendProxyProtocol::Off {
        let Some(f) = &p.ctx.proxy_header else {
            return Err(io::Error::other(
                "the route sends a PROXY header but the engine gave no header source",
            ));
        };
        s.write_all(&f(p.pr.proxy_protocol)).await?;
    }
    if !p.pr.tls {
        return Ok((UpIo::Tcp(s), false));
    }
    let Some(tls) = p.tls else {
        return Err(io::Error::other("the route re-encrypts but the engine gave no TLS connector"));
    };
    let alpn: &[&[u8]] = match (p.upgrade, p.pr.upstream) {
        (true, _) | (false, UpstreamProtocol::Http1) => &[b"http/1.1"],
        (false, UpstreamProtocol::Http2) => &[b"h2"],
        _ => &[b"h2", b"http/1.1"],
    };
    let req = TlsConnectRequest {
        route: p.route,
        host: &p.target.host,
        port: p.port,
        client_sni: p.ctx.tls.as_ref().and_then(|t| t.sni.as_deref()),
        alpn,
    };
    let t = tls.connect(s, req).await?;
    let h2 = t.alpn.as_deref() == Some(b"h2");
    Ok((UpIo::Tls(t.io), h2))
}

/// Whether a connect error was a timeout.
pub(crate) fn is_timeout(e: &ConnectError) -> bool {
    matches!(e, ConnectError::Timeout)
}

/// The connect timeout default (10 s, as the engine's `connect_timeout`).
pub(crate) const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// TCP keepalive probes on a new backend connection (four `setsockopt` calls, once; a failure
/// leaves the connection without probes).
fn set_keepalive(s: &TcpStream, k: &smartproxy_routing::TcpKeepalive) {
    if let Err(e) = set_tcp_keepalive(&socket2::SockRef::from(s), k) {
        tracing::debug!(error = %e, "cannot set TCP keepalive on a backend connection");
    }
}

/// Turns on TCP keepalive probes on `sock` as `k` says (`SO_KEEPALIVE`, `TCP_KEEPIDLE`,
/// `TCP_KEEPINTVL`, `TCP_KEEPCNT` where the system has them: four `setsockopt` calls, once per
/// socket; nothing per packet). [`TcpKeepalive::Off`](smartproxy_routing::TcpKeepalive::Off)
/// calls nothing (new sockets have no probes). Shared with the engine's client and backend
/// sockets.
pub fn set_tcp_keepalive(
    sock: &socket2::SockRef<'_>,
    k: &smartproxy_routing::TcpKeepalive,
) -> std::io::Result<()> {
    let smartproxy_routing::TcpKeepalive::On { idle, interval, count } = *k else { return Ok(()) };
    let params = socket2::TcpKeepalive::new().with_time(idle);
    #[cfg(any(
        target_os = "linux",
        target_os = "android",
        target_os = "macos",
        target_os = "freebsd"
    ))]
    let params = params.with_interval(interval).with_retries(count);
    #[cfg(not(any(
        target_os = "linux",
        target_os = "android",
        target_os = "macos",
        target_os = "freebsd"
    )))]
    let _ = (interval, count);
    sock.set_tcp_keepalive(&params)
}
