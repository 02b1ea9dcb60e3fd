//! The data path: the bidirectional copy with its timeouts.
//!
//! Plain TCP on both sides ([`pipe_tcp`]): one task drives both directions. Each direction
//! waits for readability with no buffer, takes a buffer from a per-thread pool only for the
//! time one chunk is read and written (an idle connection holds no buffer), and treats a short
//! read as "socket drained": the readiness is cleared without the extra read that would return
//! `EAGAIN` (nginx does the same), which saves a third of the syscalls of a small request. On
//! Linux (cargo feature `splice`, on by default) a direction switches to `splice(2)` through a
//! pooled pipe once a read fills the whole buffer (HAProxy's "splice-auto"). EOF on one side
//! shuts down the write half of the other while the opposite direction keeps running
//! (half-close), and a full writer stops the reads that feed it (backpressure).
//!
//! Other streams (TLS, socket handlers) go through [`pipe`], tokio's
//! `copy_bidirectional_with_sizes` with the [`Counted`] wrapper for the client.
//!
//! Inactivity costs nothing per read: a coarse timer compares the byte counters, which the
//! copy updates anyway.

use std::cell::RefCell;
use std::io::{self, IoSlice, Read};
use std::net::Shutdown;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf, Ready};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::observe::ConnObserver;

/// Buffer per direction of the generic copy ([`pipe`]).
const BUF: usize = 32 * 1024;

/// Buffer of the plain-TCP copy ([`pipe_tcp`]), taken from the pool per chunk. A read that
/// fills it switches the direction to splice where available.
pub(crate) const TCP_BUF: usize = 16 * 1024;

/// Idle buffers kept per worker thread.
const POOL_MAX: usize = 32;

thread_local! {
    static BUFS: RefCell<Vec<Box<[u8]>>> = const { RefCell::new(Vec::new()) };
}

/// A copy buffer from the per-thread pool, returned to it on drop.
struct PooledBuf(Option<Box<[u8]>>);

impl PooledBuf {
    fn take() -> Self {
        let b = BUFS.with(|p| p.borrow_mut().pop());
        Self(Some(b.unwrap_or_else(|| vec![0u8; TCP_BUF].into_boxed_slice())))
    }

    fn get(&mut self) -> &mut [u8] {
        self.0.as_deref_mut().unwrap_or_default()
    }
}

impl Drop for PooledBuf {
    fn drop(&mut self) {
        if let Some(b) = self.0.take() {
            BUFS.with(|p| {
                let mut p = p.borrow_mut();
                if p.len() < POOL_MAX {
                    p.push(b);
                }
            });
        }
    }
}

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
///
/// `fut` is polled in place (a pinned reference or a box): moving it into this future would
/// store it twice in the connection's task.
pub(crate) async fn supervise<F>(
    fut: F,
    obs: &ConnObserver,
    t: Timeouts,
    stop: &mut watch::Receiver<bool>,
) -> Result<F::Output, Outcome>
where
    F: Future + Unpin,
{
    watch_timeouts(fut, obs, &t, wait_stop(stop)).await
}

/// Resolves when the engine forces connections closed; never when the engine is gone
/// without asking (then the connection runs to its end).
pub(crate) async fn wait_stop(stop: &mut watch::Receiver<bool>) {
    if stop.wait_for(|v| *v).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// The timeouts of [`supervise`], with `stop` ending the wait as [`Outcome::Shutdown`]
/// (`std::future::pending()` when the caller watches for shutdown itself).
///
/// One timer serves both timeouts: it is set to the earlier of the next inactivity check
/// and the end of the lifetime. Inactivity is checked every quarter of the timeout (10 ms to
/// 60 s): no byte counted since the last check for the whole timeout ends the connection.
async fn watch_timeouts<F, S>(
    mut fut: F,
    obs: &ConnObserver,
    t: &Timeouts,
    stop: S,
) -> Result<F::Output, Outcome>
where
    F: Future + Unpin,
    S: Future<Output = ()>,
{
    let tick = (t.inactivity / 4).clamp(Duration::from_millis(10), Duration::from_secs(60));
    let mut last = obs.activity();
    let mut idle_since = Instant::now();
    let timer = tokio::time::sleep_until((idle_since + tick).min(t.deadline));
    tokio::pin!(timer, stop);
    loop {
        tokio::select! {
            biased;
            out = &mut fut => return Ok(out),
            () = &mut timer => {
                // The instant the timer was set for (not when it was polled), as an interval
                // tick would report it.
                let at = timer.deadline();
                if at >= t.deadline {
                    return Err(Outcome::Lifetime);
                }
                let a = obs.activity();
                if a != last {
                    last = a;
                    idle_since = at;
                } else if at.duration_since(idle_since) >= t.inactivity {
                    return Err(Outcome::Inactive);
                }
                // A late check delays the next one (no burst of checks to catch up).
                timer.as_mut().reset((Instant::now() + tick).min(t.deadline));
            }
            () = &mut stop => return Err(Outcome::Shutdown),
        }
    }
}

/// Copies both ways between two plain TCP sockets until both sides are done or a timeout ends
/// the connection. Bytes from the client count as in, bytes to it as out.
///
/// Forced shutdown is the caller's to watch (`conn::serve` selects this future against it):
/// an idle connection's task keeps one shutdown waiter, not two.
pub(crate) async fn pipe_tcp(
    client: &TcpStream,
    backend: &TcpStream,
    obs: &ConnObserver,
    t: &Timeouts,
) -> Outcome {
    let done = [AtomicBool::new(false), AtomicBool::new(false)];
    let both = async {
        tokio::try_join!(
            one_way(client, backend, |n| obs.add_in(n), &done[0], &done[1]),
            one_way(backend, client, |n| obs.add_out(n), &done[1], &done[0]),
        )
    };
    tokio::pin!(both);
    match watch_timeouts(both, obs, t, std::future::pending()).await {
        Ok(Ok(_)) => Outcome::Done,
        Ok(Err(e)) => Outcome::Error(e),
        Err(o) => o,
    }
}

/// Waits until `s` is readable and returns its readiness, which tells whether the peer's FIN
/// has arrived.
///
/// The wait goes through the socket's read-waker slot, which keeps nothing in the future (a
/// `ready()` future would keep its waiter, over 100 bytes, in every idle connection's task).
/// Each socket of a connection is read by one direction only, so the slot has one user.
/// Once the socket is readable, a `ready()` future polled once reads the readiness without
/// waiting.
fn readable(s: &TcpStream) -> impl Future<Output = io::Result<Ready>> + '_ {
    std::future::poll_fn(move |cx| {
        ready!(s.poll_read_ready(cx))?;
        let once = std::pin::pin!(s.ready(Interest::READABLE));
        match once.poll(cx) {
            Poll::Ready(r) => Poll::Ready(r),
            // Cannot happen (only this task clears the read readiness); the read that follows
            // sorts it out (it sees WouldBlock and waits again).
            Poll::Pending => Poll::Ready(Ok(Ready::READABLE)),
        }
    })
}

/// One direction: `from` to `to` until EOF from `from`, then the write half of `to` is shut
/// down (unless the other direction has ended already: closing both sockets right after
/// sends the FIN). `count(n)` runs after each chunk has been written. `done` is set when this
/// direction ends, `other_done` is the opposite direction's flag.
pub(crate) async fn one_way(
    from: &TcpStream,
    to: &TcpStream,
    mut count: impl FnMut(u64),
    done: &AtomicBool,
    other_done: &AtomicBool,
) -> io::Result<()> {
    loop {
        // No buffer while waiting: an idle connection holds none.
        let ready = readable(from).await?;
        let mut buf = PooledBuf::take();
        let b = buf.get();
        let len = b.len();
        let mut short = 0usize;
        let r = from.try_io(Interest::READABLE, || {
            let n = (&*socket2::SockRef::from(from)).read(b)?;
            if n > 0 && n < len {
                // A short read means the receive queue is empty now: clear the readiness
                // instead of reading again for EAGAIN. Data or FIN arriving later raises a
                // new readiness event; a FIN seen already stays (tokio keeps closed states).
                short = n;
                return Err(io::ErrorKind::WouldBlock.into());
            }
            Ok(n)
        });
        let n = match r {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if short == 0 {
                    continue; // Spurious readiness.
                }
                short
            }
            Err(e) => return Err(e),
        };
        write_all(to, &b[..n]).await?;
        drop(buf);
        count(n as u64);
        if short > 0 && ready.is_read_closed() {
            // The peer's FIN had arrived before this read and the read drained the queue:
            // the next read would return 0, skip it.
            break;
        }
        #[cfg(all(feature = "splice", target_os = "linux"))]
        if n == len {
            // Bulk transfer: the rest of this direction goes through a pipe.
            // Boxed: only bulk connections pay for the splice state.
            Box::pin(crate::splice::splice_until_eof(from, to, &mut count)).await?;
            break;
        }
    }
    done.store(true, Ordering::Relaxed);
    if other_done.load(Ordering::Relaxed) {
        return Ok(());
    }
    // Half-close: the peer of `to` sees EOF, the other direction keeps running.
    match socket2::SockRef::from(to).shutdown(Shutdown::Write) {
        Err(e) if e.kind() != io::ErrorKind::NotConnected => Err(e),
        _ => Ok(()),
    }
}

async fn write_all(to: &TcpStream, mut b: &[u8]) -> io::Result<()> {
    while !b.is_empty() {
        match to.try_write(b) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => b = &b[n..],
            // The write-waker slot: nothing kept in the future while the peer is slow. The
            // other direction only reads `to`.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                std::future::poll_fn(|cx| to.poll_write_ready(cx)).await?;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
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
    tokio::pin!(copy);
    match supervise(copy, &obs, t, stop).await {
        Ok(Ok(_)) => Outcome::Done,
        Ok(Err(e)) => Outcome::Error(e),
        Err(o) => o,
    }
}
