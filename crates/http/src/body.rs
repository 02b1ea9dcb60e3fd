//! Bodies: the request body sent upstream, the response body sent to the client, and the
//! per-request guard that finishes a request exactly once (metrics, access log, pool, idle
//! timer) when hyper is done with the response.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use smartproxy_metrics::HttpMethod;
use smartproxy_routing::ConnectionGuard;
use tokio::time::Instant;

use crate::access::AccessEntry;
use crate::ctx::ConnCtx;
use crate::h1::{BoxError, H1Body};
use crate::pool::{Pool, Sender};
use crate::snapshot::Snapshot;

/// A client's request body: hyper's, or none (a request read by `h1_server.rs`, which
/// serves only requests without one).
#[derive(Debug)]
pub(crate) enum ClientBody {
    Hyper(Incoming),
    Empty,
}

/// A request body on its way to a target: the client's, streamed frame by frame (hyper
/// polls it only when the backend connection can take more: backpressure), or nothing.
#[derive(Debug)]
pub(crate) enum UpBody {
    /// No body.
    Empty,
    /// The client's body, with its upload progress (for the response timeout, which counts
    /// from the last byte sent, and the access log).
    Stream {
        /// The client's body.
        inner: Incoming,
        /// Bytes and time of the last frame.
        progress: Arc<Progress>,
    },
}

/// How far a request body has been sent.
#[derive(Debug)]
pub(crate) struct Progress {
    base: Instant,
    pub(crate) bytes: AtomicU64,
    /// Nanoseconds after `base` of the last frame.
    last: AtomicU64,
}

impl Progress {
    pub(crate) fn new() -> Self {
        Self { base: Instant::now(), bytes: AtomicU64::new(0), last: AtomicU64::new(0) }
    }

    fn touch(&self, n: usize) {
        self.bytes.fetch_add(n as u64, Ordering::Relaxed);
        let t = u64::try_from(self.base.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.last.store(t, Ordering::Relaxed);
    }

    /// When the last frame went out (the start if none did).
    pub(crate) fn last(&self) -> Instant {
        self.base + std::time::Duration::from_nanos(self.last.load(Ordering::Relaxed))
    }
}

impl Body for UpBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            Self::Empty => Poll::Ready(None),
            Self::Stream { inner, progress } => {
                let r = Pin::new(inner).poll_frame(cx);
                if let Poll::Ready(Some(Ok(f))) = &r {
                    progress.touch(f.data_ref().map_or(0, Bytes::len));
                }
                r
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Empty => true,
            Self::Stream { inner, .. } => inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Empty => SizeHint::with_exact(0),
            Self::Stream { inner, .. } => inner.size_hint(),
        }
    }
}

/// A target's response body: hyper's, or read directly by the client connection's task.
#[derive(Debug)]
pub(crate) enum BackBody {
    Hyper(Incoming),
    Direct(H1Body),
}

/// The backend side of a proxied request, kept until its response body is done.
pub(crate) struct Upstream {
    pub(crate) sender: Option<Sender>,
    pub(crate) pool: Option<Arc<Pool>>,
    pub(crate) _target: ConnectionGuard,
}

/// Finishes one request when dropped: the route's request metrics, the access log line,
/// the connection's in-flight count, and the backend connection back to its pool if the
/// response was read to the end.
pub(crate) struct RequestGuard {
    pub(crate) ctx: Arc<ConnCtx>,
    pub(crate) snap: Option<Arc<Snapshot>>,
    /// Route index in `snap` (`None`: no route took the request).
    pub(crate) route: Option<usize>,
    pub(crate) method: HttpMethod,
    /// The status sent, or 499 until a response exists (the client went away first).
    pub(crate) status: u16,
    pub(crate) started: Instant,
    pub(crate) upstream: Option<Upstream>,
    pub(crate) bytes_in: Option<Arc<Progress>>,
    pub(crate) bytes_out: u64,
    /// The response body was sent to the end.
    pub(crate) complete: bool,
    pub(crate) access: Option<Box<AccessEntry>>,
}

impl RequestGuard {
    /// Starts a request on `ctx` (counts it in flight on the connection).
    pub(crate) fn new(ctx: Arc<ConnCtx>, method: HttpMethod) -> Self {
        ctx.request_started();
        Self {
            ctx,
            snap: None,
            route: None,
            method,
            status: 499,
            started: Instant::now(),
            upstream: None,
            bytes_in: None,
            bytes_out: 0,
            complete: false,
            access: None,
        }
    }

    /// The request was routed: counted in flight on the route (or as unrouted).
    pub(crate) fn routed(&mut self, snap: Arc<Snapshot>, route: Option<usize>) {
        if let Some(m) = &self.ctx.service.metrics {
            m.http_request_started(route.and_then(|i| snap.route_metrics(i)));
        }
        self.snap = Some(snap);
        self.route = route;
    }
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        let now = Instant::now();
        if let Some(up) = self.upstream.take()
            && self.complete
            && let Some(pool) = &up.pool
        {
            match up.sender {
                Some(Sender::H1(tx)) => pool.put_h1(tx, now),
                Some(Sender::Raw(conn)) => pool.put_raw(conn, now),
                _ => {}
            }
        }
        let took = now.saturating_duration_since(self.started);
        if let (Some(m), Some(snap)) = (&self.ctx.service.metrics, &self.snap) {
            let route = self.route.and_then(|i| snap.route_metrics(i));
            m.http_request_finished(route, self.method, self.status, took);
        }
        if let Some(entry) = self.access.take() {
            let bytes_in = self.bytes_in.as_ref().map_or(0, |p| p.bytes.load(Ordering::Relaxed));
            let route = match (&self.snap, self.route) {
                (Some(s), Some(i)) => s.route_name(i),
                _ => "",
            };
            entry.write(&self.ctx, route, self.status, bytes_in, self.bytes_out, took);
        }
        self.ctx.request_finished(now);
    }
}

/// What a response carries.
enum Kind {
    Empty,
    Full(Option<Bytes>),
    Proxied(Incoming),
    /// Read by this task from a backend connection it owns (`h1.rs`).
    Direct(H1Body),
}

/// The body of every response the HTTP layer sends: a target's body streamed through, or
/// a short body of its own. It carries the request's [`RequestGuard`].
pub(crate) struct ResponseBody {
    kind: Kind,
    guard: Option<RequestGuard>,
}

impl std::fmt::Debug for ResponseBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match &self.kind {
            Kind::Empty => "empty",
            Kind::Full(_) => "full",
            Kind::Proxied(_) => "proxied",
            Kind::Direct(_) => "direct",
        };
        f.debug_struct("ResponseBody").field("kind", &kind).finish_non_exhaustive()
    }
}

impl ResponseBody {
    pub(crate) fn empty() -> Self {
        Self { kind: Kind::Empty, guard: None }
    }

    pub(crate) fn full(b: impl Into<Bytes>) -> Self {
        let b = b.into();
        if b.is_empty() {
            return Self::empty();
        }
        Self { kind: Kind::Full(Some(b)), guard: None }
    }

    pub(crate) fn proxied(b: BackBody) -> Self {
        let kind = match b {
            BackBody::Hyper(b) => Kind::Proxied(b),
            BackBody::Direct(b) => Kind::Direct(b),
        };
        Self { kind, guard: None }
    }

    /// The response's fields if they came raw from the target (`h1.rs`); taken once, by
    /// `h1_server.rs` as it writes the head.
    pub(crate) fn take_raw_fields(&mut self) -> Option<crate::h1::RawFields> {
        match &mut self.kind {
            Kind::Direct(b) => b.take_raw(),
            _ => None,
        }
    }

    /// Attaches the request guard, which learns the response status.
    pub(crate) fn with_guard(mut self, mut g: RequestGuard, status: u16) -> Self {
        g.status = status;
        self.guard = Some(g);
        self
    }

    /// A direct body read to the end gives its connection to the guard, which puts it back
    /// in its pool when the request is finished.
    fn release(&mut self) {
        if let (Kind::Direct(b), Some(g)) = (&mut self.kind, &mut self.guard)
            && b.is_end_stream()
        {
            g.complete = true;
            if let (Some(conn), Some(up)) = (b.take_reusable(), &mut g.upstream) {
                up.sender = Some(Sender::Raw(conn));
            }
        }
    }

    fn count(&mut self, n: usize) {
        if let Some(g) = &mut self.guard {
            g.bytes_out += n as u64;
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        match &mut this.kind {
            Kind::Empty => Poll::Ready(None),
            Kind::Full(b) => {
                let r = b.take();
                if let Some(b) = &r {
                    let n = b.len();
                    this.count(n);
                }
                Poll::Ready(r.map(|b| Ok(Frame::data(b))))
            }
            Kind::Proxied(inner) => {
                let r = Pin::new(inner).poll_frame(cx);
                match &r {
                    Poll::Ready(Some(Ok(f))) => {
                        if let Some(d) = f.data_ref() {
                            let n = d.len();
                            this.count(n);
                        }
                    }
                    Poll::Ready(None) => {
                        if let Some(g) = &mut this.guard {
                            g.complete = true;
                        }
                    }
                    _ => {}
                }
                r.map(|o| o.map(|r| r.map_err(BoxError::from)))
            }
            Kind::Direct(inner) => {
                let r = inner.poll_frame(cx);
                match &r {
                    Poll::Ready(Some(Ok(f))) => {
                        if let Some(d) = f.data_ref() {
                            let n = d.len();
                            this.count(n);
                        }
                        this.release();
                    }
                    Poll::Ready(None) => this.release(),
                    _ => {}
                }
                r
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Empty => true,
            Kind::Full(b) => b.is_none(),
            Kind::Proxied(inner) => inner.is_end_stream(),
            Kind::Direct(inner) => inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Empty => SizeHint::with_exact(0),
            Kind::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            Kind::Proxied(inner) => inner.size_hint(),
            Kind::Direct(inner) => inner.size_hint(),
        }
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        // Hyper stops polling once `is_end_stream` says so: that is the end too.
        let done = match &self.kind {
            Kind::Empty => true,
            Kind::Full(b) => b.is_none(),
            Kind::Proxied(inner) => inner.is_end_stream(),
            Kind::Direct(_) => {
                self.release();
                return;
            }
        };
        if let Some(g) = &mut self.guard {
            g.complete |= done;
        }
    }
}
