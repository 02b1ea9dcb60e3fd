//! One client connection: HTTP/1 or HTTP/2, the header and keep-alive timers, graceful
//! shutdown, and the wait for upgraded connections at the end.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioIo, TokioTimer};
use smartproxy_metrics::{HttpErrorReason, HttpMethod};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::time::Instant;

use crate::body::ClientBody;
use crate::ctx::{ConnCtx, ConnInfo};
use crate::h1_server::Served;
use crate::io::{ClientIo, Prefix, answer};
use crate::quiet::Quiet;
use crate::service::{Boxed, Inner, handle};
use tokio_util::either::Either;

/// The HTTP/2 connection preface.
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Headers in one HTTP/1 request head at most.
pub(crate) const MAX_HEADERS: usize = 200;

/// How a client connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CloseReason {
    /// The client closed, or asked to (`Connection: close`), or an upgraded connection ended.
    ClientClosed,
    /// Idle longer than `http_keepalive_timeout` between requests.
    KeepaliveTimeout,
    /// A request head took longer than `request_header_timeout` (HTTP/1: a 408 was sent).
    HeaderTimeout,
    /// Nothing (or no request) arrived within `request_header_timeout` of accept.
    NoRequest,
    /// A bad request head was answered with this status (400, 414, 431) and the connection
    /// closed.
    Rejected(u16),
    /// Graceful shutdown.
    Shutdown,
    /// An I/O or protocol error (logged at debug level).
    Error,
}

/// The protocol spoken with the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Protocol {
    /// HTTP/1.0 or HTTP/1.1.
    Http1,
    /// HTTP/2 (ALPN `h2`, or the preface on a plain connection).
    Http2,
}

/// What [`HttpService::serve`](crate::HttpService::serve) returns when a connection is done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct ServeOutcome {
    /// Requests received.
    pub requests: u64,
    /// Why the connection ended.
    pub reason: CloseReason,
    /// `None` when the client closed before its protocol could be told.
    pub protocol: Option<Protocol>,
}

/// Aborts the connection's tunnels when the serve future goes away (forced close).
struct AbortTunnels(Arc<ConnCtx>);

impl Drop for AbortTunnels {
    fn drop(&mut self) {
        if let Some(set) = self.0.tunnels.lock().as_mut() {
            set.abort_all();
        }
    }
}

enum Detected {
    H1(Prefix),
    H2(Prefix),
    Closed,
    Timeout,
    Error(std::io::Error),
}

/// Reads until the bytes are, or cannot be, the HTTP/2 preface. Most requests tell at their
/// first byte; the bytes are replayed to hyper.
async fn detect<I: AsyncRead + Unpin>(io: &mut I, deadline: Instant) -> Detected {
    let mut buf = Vec::with_capacity(4096);
    loop {
        match tokio::time::timeout_at(deadline, io.read_buf(&mut buf)).await {
            Err(_) => return Detected::Timeout,
            Ok(Err(e)) => return Detected::Error(e),
            Ok(Ok(0)) if buf.is_empty() => return Detected::Closed,
            // Closed mid-way: hyper sees the partial head and closes.
            Ok(Ok(0)) => return Detected::H1(Prefix::new(buf)),
            Ok(Ok(_)) => {}
        }
        let n = buf.len().min(PREFACE.len());
        if buf[..n] != PREFACE[..n] {
            return Detected::H1(Prefix::new(buf));
        }
        if n == PREFACE.len() {
            return Detected::H2(Prefix::new(buf));
        }
        if buf.len() == buf.capacity() {
            buf.reserve(PREFACE.len());
        }
    }
}

pub(crate) async fn serve<I, F>(
    inner: Arc<Inner>,
    mut io: I,
    info: ConnInfo,
    shutdown: F,
) -> ServeOutcome
where
    I: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    F: Future<Output = ()>,
{
    let snap = inner.snapshot.load_full();
    let st = &snap.settings.http;
    let alpn = info.tls.as_ref().and_then(|t| t.alpn.clone());
    let keepalive = info.keepalive_timeout.map_or(st.http_keepalive_timeout, crate::snapshot::cap);
    let ctx = Arc::new(ConnCtx::new(inner, info));
    let _abort = AbortTunnels(Arc::clone(&ctx));
    // Polled only once it fires, not at every wake of the connection's task.
    let shutdown = std::pin::pin!(shutdown);
    let mut shutdown = Quiet::new(shutdown);
    let mut shutdown = Pin::new(&mut shutdown);
    let done = |reason, protocol| ServeOutcome {
        requests: ctx.state.requests.load(Ordering::Relaxed),
        reason,
        protocol,
    };
    let (h2, prefix) = match alpn.as_deref() {
        Some(b"h2") => (true, None),
        Some(p) if p.starts_with(b"http/1") => (false, None),
        _ => {
            let deadline = ctx.start + st.request_header_timeout;
            tokio::select! {
                d = detect(&mut io, deadline) => match d {
                    Detected::H1(p) => (false, Some(p)),
                    Detected::H2(p) => (true, Some(p)),
                    Detected::Closed | Detected::Timeout => return done(CloseReason::NoRequest, None),
                    Detected::Error(e) => {
                        tracing::debug!(client = %ctx.client, "reading the first request failed: {e}");
                        return done(CloseReason::Error, None);
                    }
                },
                () = shutdown.as_mut() => return done(CloseReason::Shutdown, None),
            }
        }
    };
    ctx.h2.store(h2, Ordering::Relaxed);
    let timers = Timers { header: st.request_header_timeout, keepalive };
    let reason = if h2 {
        let io = TokioIo::new(ClientIo::new(io, prefix, Arc::clone(&ctx), false));
        serve_h2(&ctx, io, st, timers, shutdown.as_mut()).await
    } else {
        // HTTP/1.1: the connection's task serves the common requests itself
        // (`h1_server.rs`) and hands the connection to hyper at the first one it does not
        // take; hyper's server is rare from then on: boxed, out of every connection's future.
        let max_head = st.max_request_header_bytes;
        let first = prefix.map(Prefix::into_vec);
        match crate::h1_server::serve(&ctx, io, first, timers, max_head, shutdown.as_mut()).await {
            Served::Closed(reason) => return done(reason, Some(Protocol::Http1)),
            Served::Hyper(io, rest) => {
                let prefix = (!rest.is_empty()).then(|| Prefix::new(rest));
                let io = TokioIo::new(ClientIo::new(io, prefix, Arc::clone(&ctx), true));
                Box::pin(hyper_h1(&ctx, io, st, timers, shutdown.as_mut())).await
            }
        }
    };
    // Requests still running (upgraded connections, HTTP/2 streams) end before the
    // connection is reported closed.
    ctx.state.closing.store(true, Ordering::Release);
    while ctx.state.in_flight.load(Ordering::Acquire) > 0 {
        ctx.drained.notified().await;
    }
    done(reason, Some(if h2 { Protocol::Http2 } else { Protocol::Http1 }))
}

/// The stream futures hyper hands over on an HTTP/2 connection, run by the connection's own
/// task (`serve_h2`) instead of a task each: no task allocation, registration and scheduling
/// per request, and a stream's wake-ups are the connection task's. hyper calls `execute` from
/// the connection future's poll; the loop then moves them into its set.
#[derive(Clone, Default)]
struct StreamExec(Arc<parking_lot::Mutex<Vec<StreamFuture>>>);

type StreamFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

impl<F: Future<Output = ()> + Send + 'static> hyper::rt::Executor<F> for StreamExec {
    fn execute(&self, fut: F) {
        self.0.lock().push(Box::pin(fut));
    }
}

/// What woke an HTTP/2 connection's loop.
enum H2Event {
    Done(hyper::Result<()>),
    Timer,
    Shutdown,
}

/// An HTTP/2 connection (hyper's server), its streams run in this task.
async fn serve_h2<I, F>(
    ctx: &Arc<ConnCtx>,
    io: TokioIo<ClientIo<I>>,
    st: &smartproxy_routing::HttpSettings,
    timers: Timers,
    mut shutdown: Pin<&mut F>,
) -> CloseReason
where
    I: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    F: Future<Output = ()>,
{
    use futures_util::StreamExt as _;
    use std::task::Poll;

    let svc_ctx = Arc::clone(ctx);
    let svc = hyper::service::service_fn(move |req| handle_h2(Arc::clone(&svc_ctx), req));
    let exec = StreamExec::default();
    let mut b = http2::Builder::new(exec.clone());
    b.timer(TokioTimer::new())
        .max_concurrent_streams(st.http2_max_concurrent_streams)
        .max_header_list_size(u32::try_from(st.max_request_header_bytes).unwrap_or(u32::MAX))
        .enable_connect_protocol();
    let conn = b.serve_connection(io, svc);
    let mut conn = std::pin::pin!(conn);
    let mut streams = futures_util::stream::FuturesUnordered::<StreamFuture>::new();
    // Polled only when it fires, not at every wake of the connection (every frame).
    let sleep = std::pin::pin!(tokio::time::sleep_until(ctx.start + timers.header));
    let mut sleep = Quiet::new(sleep);
    let mut closing: Option<CloseReason> = None;
    loop {
        // The connection first, then the streams it handed over (which it may need to
        // write their frames: they wake this task), then the timer and the shutdown.
        let event = std::future::poll_fn(|cx| {
            if let Poll::Ready(r) = conn.as_mut().poll(cx) {
                return Poll::Ready(H2Event::Done(r));
            }
            streams.extend(exec.0.lock().drain(..));
            while let Poll::Ready(Some(())) = streams.poll_next_unpin(cx) {}
            if closing.is_none() && Pin::new(&mut sleep).poll(cx).is_ready() {
                return Poll::Ready(H2Event::Timer);
            }
            if closing != Some(CloseReason::Shutdown) && shutdown.as_mut().poll(cx).is_ready() {
                return Poll::Ready(H2Event::Shutdown);
            }
            Poll::Pending
        })
        .await;
        match event {
            H2Event::Done(r) => {
                return match r {
                    Ok(()) => closing.unwrap_or(CloseReason::ClientClosed),
                    Err(e) => {
                        tracing::debug!(client = %ctx.client, "HTTP/2 connection error: {e}");
                        closing.unwrap_or(CloseReason::Error)
                    }
                };
            }
            H2Event::Timer => match timers.tick(ctx) {
                Tick::Next(at) => sleep.get_mut().as_mut().reset(at),
                Tick::Idle => {
                    conn.as_mut().graceful_shutdown();
                    closing = Some(CloseReason::KeepaliveTimeout);
                }
                Tick::HeadTimeout => {
                    conn.as_mut().graceful_shutdown();
                    closing = Some(CloseReason::NoRequest);
                }
            },
            H2Event::Shutdown => {
                conn.as_mut().graceful_shutdown();
                closing = Some(CloseReason::Shutdown);
            }
        }
    }
}

/// An HTTP/1 connection served by hyper from here on (requests with bodies, upgrades,
/// HTTP/1.0, bad heads: `h1_server.rs` hands those over).
async fn hyper_h1<I, F>(
    ctx: &Arc<ConnCtx>,
    io: TokioIo<ClientIo<I>>,
    st: &smartproxy_routing::HttpSettings,
    timers: Timers,
    mut shutdown: Pin<&mut F>,
) -> CloseReason
where
    I: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    F: Future<Output = ()>,
{
    let svc_ctx = Arc::clone(ctx);
    let svc = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        handle(Arc::clone(&svc_ctx), req.map(ClientBody::Hyper), false)
    });
    let mut b = http1::Builder::new();
    // One buffer, one `send` per flush: cheaper than `writev` for the small heads and
    // bodies most requests are (profiled: l7 keep-alive); large bodies are copied into
    // the buffer instead (bounded by hyper's buffer size, so memory stays flat).
    b.writev(false);
    b.max_header_size(st.max_request_header_bytes).max_headers(MAX_HEADERS);
    if st.max_request_header_bytes >= 400 * 1024 {
        b.max_buf_size(st.max_request_header_bytes + 8192);
    }
    let mut conn = b.serve_connection(io, svc).with_upgrades();
    let mut sleep = std::pin::pin!(tokio::time::sleep_until(ctx.start + timers.header));
    let mut closing: Option<CloseReason> = None;
    loop {
        tokio::select! {
            // In this order, without a random pick each time the connection wakes.
            biased;
            r = &mut conn => return h1_end(ctx, r, closing),
            () = sleep.as_mut(), if closing.is_none() => match timers.tick(ctx) {
                Tick::Next(at) => sleep.as_mut().reset(at),
                Tick::Idle => {
                    Pin::new(&mut conn).graceful_shutdown();
                    closing = Some(CloseReason::KeepaliveTimeout);
                }
                Tick::HeadTimeout => {
                    slowloris(ctx, conn).await;
                    return CloseReason::HeaderTimeout;
                }
            },
            () = shutdown.as_mut(), if closing != Some(CloseReason::Shutdown) => {
                Pin::new(&mut conn).graceful_shutdown();
                closing = Some(CloseReason::Shutdown);
            }
        }
    }
}

/// A request on an HTTP/2 connection. hyper moves a stream's future whole several times on
/// its way to the executor (`StreamExec`, which boxes it): the exchange is boxed where it is
/// made (`proxy::forward`), so that those moves are small (one allocation and one copy into
/// it instead).
pub(crate) fn handle_h2(
    ctx: Arc<ConnCtx>,
    req: hyper::Request<hyper::body::Incoming>,
) -> Either<std::future::Ready<crate::proxy::Answer>, Boxed> {
    match handle(ctx, req.map(ClientBody::Hyper), true) {
        Either::Left(now) => Either::Left(now),
        Either::Right(Either::Right(boxed)) => Either::Right(boxed),
        // Not made with `boxed` set; boxed here all the same.
        Either::Right(Either::Left(exchange)) => Either::Right(Box::pin(exchange)),
    }
}

#[derive(Clone, Copy)]
pub(crate) struct Timers {
    pub(crate) header: Duration,
    pub(crate) keepalive: Duration,
}

pub(crate) enum Tick {
    Next(Instant),
    Idle,
    HeadTimeout,
}

impl Timers {
    /// What the connection's timer should do now. While requests run it only re-checks
    /// every `header` interval, or every `keepalive` one when that is shorter (a timer set
    /// while a request ran is not re-armed when it ends: this bounds how late the idle close
    /// comes after a short keep-alive timeout); that bounds how late a slow head is noticed.
    pub(crate) fn tick(&self, ctx: &ConnCtx) -> Tick {
        let s = &ctx.state;
        let at = |ns: u64| ctx.start + Duration::from_nanos(ns);
        let now = at(ctx.now());
        if s.in_flight.load(Ordering::Relaxed) > 0 {
            return Tick::Next(now + self.header.min(self.keepalive));
        }
        let head = s.head_started.load(Ordering::Relaxed);
        if head != 0 {
            let deadline = at(head - 1) + self.header;
            return if now >= deadline { Tick::HeadTimeout } else { Tick::Next(deadline) };
        }
        let deadline = at(s.idle_since.load(Ordering::Relaxed)) + self.keepalive;
        if now >= deadline { Tick::Idle } else { Tick::Next(deadline.min(now + self.header)) }
    }
}

/// How an HTTP/1 connection ended; a bad head is counted and logged here, once.
fn h1_end(ctx: &ConnCtx, r: hyper::Result<()>, closing: Option<CloseReason>) -> CloseReason {
    let e = match r {
        Ok(()) => return closing.unwrap_or(CloseReason::ClientClosed),
        Err(e) => e,
    };
    let auto = ctx.state.auto_status.load(Ordering::Relaxed);
    let status = if auto != 0 {
        auto
    } else if e.is_parse_too_large() {
        431
    } else if e.is_parse() {
        400
    } else {
        if e.is_incomplete_message() || e.is_canceled() {
            tracing::debug!(client = %ctx.client, "client closed mid-request: {e}");
            return CloseReason::ClientClosed;
        }
        tracing::debug!(client = %ctx.client, "connection error: {e}");
        return closing.unwrap_or(CloseReason::Error);
    };
    let reason = match status {
        431 => HttpErrorReason::HeaderTooLarge,
        414 => HttpErrorReason::UriTooLong,
        _ => HttpErrorReason::BadRequest,
    };
    rejected(ctx, reason, &e);
    CloseReason::Rejected(status)
}

/// Counts and logs a request refused before it could be routed.
pub(crate) fn rejected(ctx: &ConnCtx, reason: HttpErrorReason, detail: &dyn std::fmt::Display) {
    if let Some(m) = &ctx.service.metrics {
        m.http_error(reason);
        m.http_request_started(None);
        m.http_request_finished(None, HttpMethod::Other, reason.status(), Duration::ZERO);
    }
    tracing::info!(
        client = %ctx.client,
        port = ctx.port,
        status = reason.status(),
        reason = reason.as_str(),
        "request head refused: {detail}"
    );
}

/// A request head that did not arrive in time: 408, then close.
async fn slowloris<I, S>(ctx: &ConnCtx, conn: http1::UpgradeableConnection<TokioIo<ClientIo<I>>, S>)
where
    I: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    S: hyper::service::HttpService<hyper::body::Incoming, ResBody = crate::body::ResponseBody>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    rejected(ctx, HttpErrorReason::HeaderTimeout, &"request head not complete in time");
    let Some(parts) = conn.into_parts() else { return };
    let mut io = parts.io.into_inner();
    answer_and_close(io.raw_mut(), 408).await;
}

/// Writes the layer's own answer for `status` straight to the client, then closes the
/// write side; at most a second for both (the client may not read).
pub(crate) async fn answer_and_close<W: AsyncWrite + Unpin>(io: &mut W, status: u16) {
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        // The connection's last bytes: they leave with the FIN of the shutdown.
        crate::h1_server::write_last(io, answer(status)).await?;
        std::future::poll_fn(|cx| crate::io::as_last_write(|| Pin::new(&mut *io).poll_shutdown(cx)))
            .await
    })
    .await;
}
