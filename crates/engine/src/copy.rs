//! The data path: a counting wrapper for the client stream and the bidirectional copy with its
//! timeouts. Kept apart so that a splice(2) path can replace it.
//!
//! One task drives both directions (tokio's `copy_bidirectional_with_sizes`): each direction
//! has one buffer allocated once per connection, EOF on one side shuts down the write half of
//! the other while the opposite direction keeps running (half-close), and a full writer stops
//! the reads that feed it (backpressure). Inactivity costs nothing per read: a coarse timer
//! compares the byte counters, which the reads update anyway.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::observe::ConnObserver;

/// Buffer per direction.
const BUF: usize = 32 * 1024;

/// A stream whose reads count as bytes from the client and whose writes count as bytes to it.
#[derive(Debug)]
pub(crate) struct Counted<S> {
    pub(crate) inner: S,
    pub(crate) obs: Arc<ConnObserver>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = r {
            this.obs.add_in((buf.filled().len() - before) as u64);
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write(cx, b);
        if let Poll::Ready(Ok(n)) = r {
            this.obs.add_out(n as u64);
        }
        r
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = r {
            this.obs.add_out(n as u64);
        }
        r
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

/// Timeouts of an established connection.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timeouts {
    pub(crate) inactivity: Duration,
    /// Absolute end of the connection's life.
    pub(crate) deadline: Instant,
}

/// How a copy ended.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// Both directions reached EOF.
    Done,
    /// A socket failed.
    Error(io::Error),
    /// No byte moved for the inactivity timeout.
    Inactive,
    /// The maximum lifetime passed.
    Lifetime,
    /// The engine forced connections closed at the end of the shutdown grace.
    Shutdown,
}

impl Outcome {
    pub(crate) fn as_str(&self) -> &'static str {
        match self {
            Self::Done => "done",
            Self::Error(_) => "error",
            Self::Inactive => "inactivity_timeout",
            Self::Lifetime => "max_lifetime",
            Self::Shutdown => "shutdown",
        }
    }
}

/// Waits for `fut` under the connection's timeouts: lifetime, inactivity (judged from the
/// observer's byte counters) and forced shutdown.
pub(crate) async fn supervise<F>(
    fut: F,
    obs: &ConnObserver,
    t: Timeouts,
    stop: &mut watch::Receiver<bool>,
) -> Result<F::Output, Outcome>
where
    F: std::future::Future,
{
    tokio::pin!(fut);
    let tick = (t.inactivity / 4).clamp(Duration::from_millis(10), Duration::from_secs(60));
    let mut ticker = tokio::time::interval_at(Instant::now() + tick, tick);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last = obs.activity();
    let mut idle_since = Instant::now();
    let lifetime = tokio::time::sleep_until(t.deadline);
    tokio::pin!(lifetime);
    let mut engine_gone = false;
    loop {
        tokio::select! {
            out = &mut fut => return Ok(out),
            _ = &mut lifetime => return Err(Outcome::Lifetime),
            now = ticker.tick() => {
                let a = obs.activity();
                if a != last {
                    last = a;
                    idle_since = now;
                } else if now.duration_since(idle_since) >= t.inactivity {
                    return Err(Outcome::Inactive);
                }
            }
            r = stop.wait_for(|v| *v), if !engine_gone => {
                if r.is_ok() {
                    return Err(Outcome::Shutdown);
                }
                // The engine is gone without asking to stop: keep copying.
                engine_gone = true;
            }
        }
    }
}

/// Copies both ways between the client (counted) and the backend until both sides are done or
/// a timeout ends the connection.
pub(crate) async fn pipe<C, B>(
    client: &mut Counted<C>,
    backend: &mut B,
    t: Timeouts,
    stop: &mut watch::Receiver<bool>,
) -> Outcome
where
    C: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let obs = Arc::clone(&client.obs);
    let copy = tokio::io::copy_bidirectional_with_sizes(client, backend, BUF, BUF);
    match supervise(copy, &obs, t, stop).await {
        Ok(Ok(_)) => Outcome::Done,
        Ok(Err(e)) => Outcome::Error(e),
        Err(o) => o,
    }
}
