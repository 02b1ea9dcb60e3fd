//! The tunnel of an upgraded request (WebSocket): bytes both ways, untouched, until either
//! side closes or nothing moves for the tunnel's inactivity timeout. The HTTP keep-alive and
//! header timers do not apply to it.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

use crate::body::{Progress, RequestGuard};

/// Counts bytes read and stamps the time of the last one.
struct Tracked<'a, T> {
    io: T,
    base: Instant,
    last: &'a AtomicU64,
    read: u64,
}

impl<T: AsyncRead + Unpin> AsyncRead for Tracked<'_, T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.io).poll_read(cx, buf))?;
        let n = buf.filled().len() - before;
        if n > 0 {
            this.read += n as u64;
            let t = u64::try_from(this.base.elapsed().as_nanos()).unwrap_or(u64::MAX);
            this.last.store(t, Ordering::Relaxed);
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Tracked<'_, T> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, b)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// Relays an upgraded client connection and its target until one side closes, an error, or
/// `idle` without a byte either way. The request is finished (metrics, access log) when it
/// ends.
pub(crate) async fn tunnel(
    client: OnUpgrade,
    backend: OnUpgrade,
    idle: Duration,
    mut guard: RequestGuard,
    route: &str,
    peer: SocketAddr,
) {
    let (client, backend) = match tokio::try_join!(client, backend) {
        Ok(x) => x,
        Err(e) => {
            tracing::debug!(client = %peer, route, "upgrade failed: {e}");
            return;
        }
    };
    let base = Instant::now();
    let last = AtomicU64::new(0);
    let mut c = Tracked { io: TokioIo::new(client), base, last: &last, read: 0 };
    let mut b = Tracked { io: TokioIo::new(backend), base, last: &last, read: 0 };
    let timed_out = {
        let copy = tokio::io::copy_bidirectional(&mut c, &mut b);
        let mut copy = std::pin::pin!(copy);
        let mut deadline = base + idle;
        loop {
            tokio::select! {
                r = &mut copy => {
                    if let Err(e) = r {
                        tracing::debug!(client = %peer, route, "tunnel ended: {e}");
                    }
                    break false;
                }
                () = tokio::time::sleep_until(deadline) => {
                    let l = base + Duration::from_nanos(last.load(Ordering::Relaxed));
                    if Instant::now() >= l + idle {
                        break true;
                    }
                    deadline = l + idle;
                }
            }
        }
    };
    if timed_out {
        tracing::debug!(client = %peer, route, "tunnel closed after {idle:?} without traffic");
    }
    guard.bytes_out = b.read;
    let up = Progress::new();
    up.bytes.store(c.read, Ordering::Relaxed);
    guard.bytes_in = Some(std::sync::Arc::new(up));
    guard.complete = true;
}
