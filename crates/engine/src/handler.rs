//! Socket handlers: the built-in ones (`echo`, `static`, `block`, `redirect`) and the trait a
//! library user implements to register their own.

use std::fmt;
use std::future::Future;
use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use smartproxy_routing::HandlerAction;
use smartproxy_wrapped_socket::{ClientAddr, PeerAddr, WrappedSocket};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::copy::Counted;
use crate::http::{HeadError, RequestHead, read_head};

/// The future a [`SocketHandler`] returns.
pub type HandlerFuture<'a> = Pin<Box<dyn Future<Output = io::Result<()>> + Send + 'a>>;

/// A handler for `type = "socket-handler"` routes, registered with
/// [`crate::EngineBuilder::handler`].
///
/// It owns the client connection: what it reads and writes is counted as the connection's
/// bytes in and out, and the engine's inactivity and lifetime timeouts still apply around it.
pub trait SocketHandler: Send + Sync + 'static {
    /// Serves one connection. Returning closes it.
    fn handle<'a>(&'a self, stream: ClientStream, ctx: HandlerContext) -> HandlerFuture<'a>;
}

/// What a handler knows about its connection.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct HandlerContext {
    /// The real client (after a PROXY header).
    pub client_addr: ClientAddr,
    /// The TCP peer.
    pub peer_addr: PeerAddr,
    /// The local address the client connected to.
    pub local_addr: SocketAddr,
    /// The listening port.
    pub port: u16,
    /// The route's name.
    pub route_name: String,
    /// The route's action (handler name and options).
    pub action: HandlerAction,
    /// Domain from SNI or Host, when the route needed a peek.
    pub domain: Option<String>,
    /// Deadline for the request data (from `initial_data_timeout`).
    pub initial_data_deadline: Instant,
}

/// The client connection given to a handler: replays peeked bytes, counts bytes.
#[derive(Debug)]
pub struct ClientStream {
    pub(crate) inner: Counted<WrappedSocket<TcpStream>>,
}

impl ClientStream {
    /// The real client (after a PROXY header).
    pub fn client_addr(&self) -> ClientAddr {
        self.inner.inner.client_addr()
    }

    /// The TCP peer.
    pub fn peer_addr(&self) -> PeerAddr {
        self.inner.inner.peer_addr()
    }

    /// Whether a PROXY header from a trusted proxy was accepted.
    pub fn is_from_trusted_proxy(&self) -> bool {
        self.inner.inner.is_from_trusted_proxy()
    }
}

impl AsyncRead for ClientStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for ClientStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, b)
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

/// The registered handlers, by name.
#[derive(Clone, Default)]
pub(crate) struct Registry(pub(crate) std::collections::HashMap<String, Arc<dyn SocketHandler>>);

impl Registry {
    /// The registered names.
    pub(crate) fn names(&self) -> Vec<String> {
        self.0.keys().cloned().collect()
    }
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.0.keys()).finish()
    }
}

/// What the engine knows of a handler's connection; a registered handler gets it with the
/// route's name and a copy of its action as a [`HandlerContext`].
#[derive(Debug)]
pub(crate) struct ConnInfo {
    pub(crate) client_addr: ClientAddr,
    pub(crate) peer_addr: PeerAddr,
    pub(crate) local_addr: SocketAddr,
    pub(crate) port: u16,
    pub(crate) domain: Option<String>,
    pub(crate) initial_data_deadline: Instant,
}

/// Runs the handler named in the route's `action`: a registered one first, then the
/// built-ins. The built-ins borrow the route's action instead of a copy: a `static` body is
/// not copied per connection (a client that does not read its answer would otherwise hold
/// two copies of the body in the proxy; measured in `tests/tests/reliability_handlers.rs`).
pub(crate) async fn run(
    registry: &Registry,
    stream: ClientStream,
    route_name: &str,
    action: &HandlerAction,
    info: ConnInfo,
) -> io::Result<()> {
    if let Some(h) = registry.0.get(&action.handler) {
        let ctx = HandlerContext {
            client_addr: info.client_addr,
            peer_addr: info.peer_addr,
            local_addr: info.local_addr,
            port: info.port,
            route_name: route_name.to_owned(),
            action: action.clone(),
            domain: info.domain,
            initial_data_deadline: info.initial_data_deadline,
        };
        return h.handle(stream, ctx).await;
    }
    match action.handler.as_str() {
        "echo" => echo(stream).await,
        "static" => static_response(stream, action, &info).await,
        "block" => block(stream, action, &info).await,
        "redirect" => redirect(stream, action, &info).await,
        other => Err(io::Error::other(format!("unknown handler `{other}`"))),
    }
}

async fn echo(mut s: ClientStream) -> io::Result<()> {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = s.read(&mut buf).await?;
        if n == 0 {
            return s.shutdown().await;
        }
        s.write_all(&buf[..n]).await?;
    }
}

/// Reads the request head; a malformed one gets a 400, a missing one just closes.
async fn head_or_400(s: &mut ClientStream, info: &ConnInfo) -> io::Result<Option<RequestHead>> {
    match read_head(s, info.initial_data_deadline).await {
        Ok(h) => Ok(Some(h)),
        Err(HeadError::Invalid(_) | HeadError::TooLarge(_)) => {
            let code = 400;
            respond(s, code, &[], b"bad request\n").await?;
            Ok(None)
        }
        Err(HeadError::Io(e)) => Err(e),
        Err(_) => Ok(None),
    }
}

async fn static_response(
    mut s: ClientStream,
    a: &HandlerAction,
    info: &ConnInfo,
) -> io::Result<()> {
    if head_or_400(&mut s, info).await?.is_none() {
        return Ok(());
    }
    let headers: Vec<(&str, &str)> =
        a.headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    respond(&mut s, a.status.unwrap_or(200), &headers, a.body.as_deref().unwrap_or("").as_bytes())
        .await
}

async fn block(mut s: ClientStream, a: &HandlerAction, info: &ConnInfo) -> io::Result<()> {
    let Some(status) = a.status else {
        // Close at once.
        return Ok(());
    };
    if head_or_400(&mut s, info).await?.is_none() {
        return Ok(());
    }
    let default;
    let body = match &a.body {
        Some(b) => b.as_str(),
        None => {
            default = format!("{}\n", reason(status));
            &default
        }
    };
    let headers: Vec<(&str, &str)> =
        a.headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    respond(&mut s, status, &headers, body.as_bytes()).await
}

async fn redirect(mut s: ClientStream, a: &HandlerAction, info: &ConnInfo) -> io::Result<()> {
    let Some(head) = head_or_400(&mut s, info).await? else {
        return Ok(());
    };
    let template = a.location.as_deref().unwrap_or("/");
    let location = expand(template, &head, info);
    let status = a.status.unwrap_or(301);
    respond(&mut s, status, &[("Location", &location)], b"").await
}

/// Fills `{domain}`, `{path}`, `{port}`, `{query}` and `{uri}` in a location template.
/// `{query}` is the query without its `?` (empty when there is none); `{uri}` is the path with
/// `?query` when there is one, the form a redirect wants (`https://{domain}{uri}`).
pub(crate) fn expand(template: &str, head: &RequestHead, info: &ConnInfo) -> String {
    let domain = head
        .domain()
        .or_else(|| info.domain.clone())
        .unwrap_or_else(|| info.local_addr.ip().to_string());
    let query = head.query().unwrap_or("");
    let uri = match query {
        "" => head.path().to_owned(),
        q => format!("{}?{q}", head.path()),
    };
    template
        .replace("{domain}", &domain)
        .replace("{uri}", &uri)
        .replace("{path}", head.path())
        .replace("{port}", &info.port.to_string())
        .replace("{query}", query)
}

/// A body up to this size goes out in the same write as the head.
const INLINE_BODY: usize = 16 * 1024;

/// Writes a complete `Connection: close` response, then lets the client read it before the
/// socket closes (a close with unread request bytes would reset the connection).
async fn respond(
    s: &mut ClientStream,
    status: u16,
    headers: &[(&str, &str)],
    body: &[u8],
) -> io::Result<()> {
    let mut out = format!("HTTP/1.1 {status} {}\r\n", reason(status));
    let mut has_type = false;
    for (k, v) in headers {
        if k.eq_ignore_ascii_case("content-length") || k.eq_ignore_ascii_case("connection") {
            continue;
        }
        has_type |= k.eq_ignore_ascii_case("content-type");
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    if !has_type && !body.is_empty() {
        out.push_str("Content-Type: text/plain; charset=utf-8\r\n");
    }
    out.push_str(&format!("Content-Length: {}\r\nConnection: close\r\n\r\n", body.len()));
    let mut bytes = out.into_bytes();
    if body.len() <= INLINE_BODY {
        bytes.extend_from_slice(body);
        s.write_all(&bytes).await?;
    } else {
        // Written from the route's own copy, not from a copy per connection: a client that
        // does not read holds no more than the head and the task in the proxy (the rest waits
        // in the route table, which every connection shares).
        s.write_all(&bytes).await?;
        s.write_all(body).await?;
    }
    s.shutdown().await?;
    // Drain what the client still sends, briefly and boundedly.
    let mut sink = [0u8; 4096];
    let until = Instant::now() + Duration::from_secs(1);
    for _ in 0..64 {
        match tokio::time::timeout_at(until, s.read(&mut sink)).await {
            Ok(Ok(n)) if n > 0 => {}
            _ => break,
        }
    }
    Ok(())
}

/// Reason phrase of a status code.
pub(crate) fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        301 => "Moved Permanently",
        302 => "Found",
        303 => "See Other",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "Status",
    }
}
