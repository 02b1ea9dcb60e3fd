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
use std::task::{Context, Poll, Waker, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf, Ready};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::{Instant, Sleep};

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
///
/// A connection's task polls it on every wake-up, that is on every read. Polling the channel's
/// wait locks the channel's list of waiters, one list shared by all connections; so once the
/// wait is registered it is polled again only when the channel's version has moved (an
/// atomic load) or the task's waker has changed.
pub(crate) async fn wait_stop(stop: &mut watch::Receiver<bool>) {
    let probe = stop.clone();
    let mut wait = std::pin::pin!(wait_forced(stop));
    let mut registered: Option<Waker> = None;
    std::future::poll_fn(move |cx| {
        let same_waker = registered.as_ref().is_some_and(|w| w.will_wake(cx.waker()));
        if same_waker && matches!(probe.has_changed(), Ok(false)) {
            return Poll::Pending;
        }
        registered = Some(cx.waker().clone());
        wait.as_mut().poll(cx)
    })
    .await
}

/// As `wait_for(|v| *v)`, in a smaller future (it is in every idle connection's task).
async fn wait_forced(stop: &mut watch::Receiver<bool>) {
    while !*stop.borrow_and_update() {
        if stop.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// The inactivity and lifetime checks, driven by one timer: it is set to the earlier of the
/// next inactivity check and the end of the lifetime. Inactivity is checked every quarter of
/// the timeout (10 ms to 60 s): no byte counted since the last check for the whole timeout
/// ends the connection. The byte counters are the copy's own, so a read costs nothing here.
struct Clock {
    /// The activity marker at the last check.
    last: u64,
    idle_since: Instant,
}

impl Clock {
    /// Starts counting idle time now.
    fn start(obs: &ConnObserver) -> Self {
        Self { last: obs.activity(), idle_since: Instant::now() }
    }

    /// The timer's deadline right after [`Clock::start`].
    fn first_deadline(&self, t: &Timeouts) -> Instant {
        (self.idle_since + Self::tick(t)).min(t.deadline)
    }

    /// The interval between two inactivity checks.
    fn tick(t: &Timeouts) -> Duration {
        (t.inactivity / 4).clamp(Duration::from_millis(10), Duration::from_secs(60))
    }

    /// The timer set for `at` fired: the outcome that ends the connection, or the timer's
    /// next deadline. `at` is the instant the timer was set for (not when it was polled), as
    /// an interval tick would report it; a late check delays the next one (no catching up).
    fn fired(&mut self, at: Instant, obs: &ConnObserver, t: &Timeouts) -> Result<Instant, Outcome> {
        if at >= t.deadline {
            return Err(Outcome::Lifetime);
        }
        let a = obs.activity();
        if a != self.last {
            self.last = a;
            self.idle_since = at;
        } else if at.duration_since(self.idle_since) >= t.inactivity {
            return Err(Outcome::Inactive);
        }
        Ok((Instant::now() + Self::tick(t)).min(t.deadline))
    }

    /// Polls the timer, rearming it after each check; `Ready` with the outcome when a timeout
    /// ends the connection.
    fn poll(
        &mut self,
        cx: &mut Context<'_>,
        timer: &mut Pin<&mut Sleep>,
        obs: &ConnObserver,
        t: &Timeouts,
    ) -> Poll<Outcome> {
        while timer.as_mut().poll(cx).is_ready() {
            match self.fired(timer.deadline(), obs, t) {
                Ok(next) => timer.as_mut().reset(next),
                Err(o) => return Poll::Ready(o),
            }
        }
        Poll::Pending
    }
}

/// The timeouts of [`supervise`], with `stop` ending the wait as [`Outcome::Shutdown`].
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
    let mut clock = Clock::start(obs);
    let timer = tokio::time::sleep_until(clock.first_deadline(t));
    tokio::pin!(timer, stop);
    std::future::poll_fn(|cx| {
        if let Poll::Ready(out) = Pin::new(&mut fut).poll(cx) {
            return Poll::Ready(Ok(out));
        }
        if let Poll::Ready(o) = clock.poll(cx, &mut timer, obs, t) {
            return Poll::Ready(Err(o));
        }
        match stop.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(Outcome::Shutdown)),
            Poll::Pending => Poll::Pending,
        }
    })
    .await
}

/// Copies both ways between two plain TCP sockets until both sides are done, a timeout ends
/// the connection or `stop` resolves (forced shutdown). Bytes from the client count as in,
/// bytes to it as out.
///
/// Polled by hand, in one small future: two direction states, one timer and the caller's
/// (pinned) shutdown waiter. It is most of an idle connection's task.
pub(crate) fn pipe_tcp<'a, S>(
    conn: &'a PlainConn,
    stop: Pin<&'a mut S>,
) -> impl Future<Output = Outcome> + Send + 'a
where
    S: Future<Output = ()> + Send,
{
    let clock = Clock::start(&conn.obs);
    let mut pipe = PipeTcp { conn, both: Duplex::default(), clock, stop };
    // The arguments are moved into `pipe` before the `async` block, which stores only it and
    // the timer.
    async move {
        let timer = tokio::time::sleep_until(pipe.clock.first_deadline(&pipe.conn.timeouts));
        tokio::pin!(timer);
        std::future::poll_fn(|cx| pipe.poll(cx, &mut timer)).await
    }
}

/// What [`pipe_tcp`] copies between, and under which timeouts.
#[derive(Debug)]
pub(crate) struct PlainConn {
    pub(crate) backend: TcpStream,
    pub(crate) client: TcpStream,
    pub(crate) obs: Arc<ConnObserver>,
    pub(crate) timeouts: Timeouts,
}

/// The state of [`pipe_tcp`] but its timer (which must be pinned).
struct PipeTcp<'a, S> {
    conn: &'a PlainConn,
    both: Duplex<'a>,
    clock: Clock,
    stop: Pin<&'a mut S>,
}

impl<S: Future<Output = ()>> PipeTcp<'_, S> {
    fn poll(&mut self, cx: &mut Context<'_>, timer: &mut Pin<&mut Sleep>) -> Poll<Outcome> {
        let c = self.conn;
        let obs = &*c.obs;
        let (up, down) = (|n| obs.add_in(n), |n| obs.add_out(n));
        match self.both.poll(cx, &c.client, &c.backend, up, down) {
            Poll::Ready(Ok(())) => return Poll::Ready(Outcome::Done),
            Poll::Ready(Err(e)) => return Poll::Ready(Outcome::Error(e)),
            Poll::Pending => {}
        }
        if let Poll::Ready(o) = self.clock.poll(cx, timer, obs, &c.timeouts) {
            return Poll::Ready(o);
        }
        match self.stop.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Outcome::Shutdown),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// Copies both ways between `a` and `b` until both directions reach EOF (no timeouts).
/// `up(n)` counts bytes `a` -> `b`, `down(n)` bytes `b` -> `a`.
pub(crate) async fn copy_both<U, D>(a: &TcpStream, b: &TcpStream, up: U, down: D) -> io::Result<()>
where
    U: FnMut(u64) + Copy + Send,
    D: FnMut(u64) + Copy + Send,
{
    let mut both = Duplex::default();
    std::future::poll_fn(|cx| both.poll(cx, a, b, up, down)).await
}

/// Both directions of a plain TCP copy. EOF on one side shuts down the write half of the
/// other while the opposite direction keeps running (half-close); the first error ends both.
#[derive(Default)]
struct Duplex<'a> {
    up: Dir<'a>,
    down: Dir<'a>,
}

impl<'a> Duplex<'a> {
    /// `Ready(Ok)` once both directions reached EOF, `Ready(Err)` on the first error.
    fn poll<U, D>(
        &mut self,
        cx: &mut Context<'_>,
        a: &'a TcpStream,
        b: &'a TcpStream,
        up: U,
        down: D,
    ) -> Poll<io::Result<()>>
    where
        U: FnMut(u64) + Copy + Send + 'a,
        D: FnMut(u64) + Copy + Send + 'a,
    {
        if !self.up.is_done() {
            if let Poll::Ready(r) = self.up.poll(cx, a, b, up) {
                r?;
                if !self.down.is_done() {
                    half_close(b)?;
                }
            }
        }
        if !self.down.is_done() {
            if let Poll::Ready(r) = self.down.poll(cx, b, a, down) {
                r?;
                if !self.up.is_done() {
                    half_close(a)?;
                }
            }
        }
        if self.up.is_done() && self.down.is_done() { Poll::Ready(Ok(())) } else { Poll::Pending }
    }
}

/// The peer of `to` sees EOF; the other direction keeps running. (When both directions have
/// ended, closing both sockets right after sends the FIN: no shutdown then.)
fn half_close(to: &TcpStream) -> io::Result<()> {
    match socket2::SockRef::from(to).shutdown(Shutdown::Write) {
        Err(e) if e.kind() != io::ErrorKind::NotConnected => Err(e),
        _ => Ok(()),
    }
}

/// One direction, `from` to `to`, polled by hand.
///
/// It waits for readability with no buffer (through the socket's read-waker slot, which keeps
/// nothing in the future; each socket is read by one direction only), takes a buffer from
/// the per-thread pool only for the time one chunk is read and written (an idle connection
/// holds none), and treats a short read as "socket drained": the readiness is cleared
/// without the extra read that would return `EAGAIN`. A write that would block waits through
/// the write-waker slot of `to` (the other direction only reads `to`).
#[derive(Default)]
enum Dir<'a> {
    /// Waiting for `from` to be readable.
    #[default]
    Read,
    /// Writing `buf[pos..end]` to `to` (u32: at most [`TCP_BUF`] bytes, a smaller state).
    Write {
        buf: PooledBuf,
        pos: u32,
        end: u32,
        /// The peer's FIN had arrived before the read and the read drained the queue: the
        /// next read would return 0, skip it.
        eof: bool,
        /// The read filled the whole buffer: bulk transfer, splice the rest (Linux).
        bulk: bool,
    },
    /// Bulk transfer through a pipe. Boxed: only bulk connections pay for the splice state.
    #[cfg_attr(not(all(feature = "splice", target_os = "linux")), allow(dead_code))]
    Splice(Pin<Box<dyn Future<Output = io::Result<()>> + Send + 'a>>),
    /// `from` reached EOF.
    Done,
}

impl<'a> Dir<'a> {
    fn is_done(&self) -> bool {
        matches!(self, Self::Done)
    }

    /// Advances this direction; `Ready(Ok)` once `from` reached EOF (this direction is then
    /// done; the caller passes the half-close on). `count(n)` runs after each chunk has been
    /// written.
    fn poll<C>(
        &mut self,
        cx: &mut Context<'_>,
        from: &'a TcpStream,
        to: &'a TcpStream,
        mut count: C,
    ) -> Poll<io::Result<()>>
    where
        C: FnMut(u64) + Copy + Send + 'a,
    {
        loop {
            match self {
                Self::Read => {
                    let ready = ready!(poll_readable(from, cx))?;
                    let mut buf = PooledBuf::take();
                    let b = buf.get();
                    let len = b.len();
                    let mut short = 0usize;
                    let r = from.try_io(Interest::READABLE, || {
                        let n = (&*socket2::SockRef::from(from)).read(b)?;
                        if n > 0 && n < len {
                            // A short read means the receive queue is empty now: clear the
                            // readiness instead of reading again for EAGAIN. Data or FIN
                            // arriving later raises a new readiness event; a FIN seen already
                            // stays (tokio keeps closed states).
                            short = n;
                            return Err(io::ErrorKind::WouldBlock.into());
                        }
                        Ok(n)
                    });
                    let n = match r {
                        Ok(0) => {
                            *self = Self::Done;
                            return Poll::Ready(Ok(()));
                        }
                        Ok(n) => n,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            if short == 0 {
                                continue; // Spurious readiness: wait again.
                            }
                            short
                        }
                        Err(e) => return Poll::Ready(Err(e)),
                    };
                    let eof = short > 0 && ready.is_read_closed();
                    // `n` <= TCP_BUF.
                    let end = u32::try_from(n).unwrap_or(u32::MAX);
                    *self = Self::Write { buf, pos: 0, end, eof, bulk: n == len };
                }
                Self::Write { buf, pos, end, eof, bulk } => {
                    while *pos < *end {
                        match to.try_write(&buf.get()[*pos as usize..*end as usize]) {
                            Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                            // `n` <= `end - pos`.
                            Ok(n) => *pos += n as u32,
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                                ready!(to.poll_write_ready(cx))?;
                            }
                            Err(e) => return Poll::Ready(Err(e)),
                        }
                    }
                    let (n, eof, _bulk) = (*end, *eof, *bulk);
                    // The buffer goes back to the pool.
                    *self = Self::Read;
                    count(u64::from(n));
                    if eof {
                        *self = Self::Done;
                        return Poll::Ready(Ok(()));
                    }
                    #[cfg(all(feature = "splice", target_os = "linux"))]
                    if _bulk {
                        *self = Self::Splice(Box::pin(crate::splice::splice_until_eof(
                            from, to, count,
                        )));
                    }
                }
                Self::Splice(f) => {
                    ready!(f.as_mut().poll(cx))?;
                    *self = Self::Done;
                    return Poll::Ready(Ok(()));
                }
                Self::Done => return Poll::Ready(Ok(())),
            }
        }
    }
}

/// Polls `s` for readability and returns its readiness, which tells whether the peer's FIN
/// has arrived.
///
/// The wait goes through the socket's read-waker slot, which keeps nothing in the caller's
/// state (a `ready()` future would keep its waiter, over 100 bytes, in every idle
/// connection's task). Once the socket is readable, a `ready()` future polled once reads the
/// readiness without waiting.
fn poll_readable(s: &TcpStream, cx: &mut Context<'_>) -> Poll<io::Result<Ready>> {
    ready!(s.poll_read_ready(cx))?;
    let once = std::pin::pin!(s.ready(Interest::READABLE));
    match once.poll(cx) {
        Poll::Ready(r) => Poll::Ready(r),
        // Cannot happen (only this direction clears the read readiness); the read that
        // follows sorts it out (it sees WouldBlock and waits again).
        Poll::Pending => Poll::Ready(Ok(Ready::READABLE)),
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
    tokio::pin!(copy);
    match supervise(copy, &obs, t, stop).await {
        Ok(Ok(_)) => Outcome::Done,
        Ok(Err(e)) => Outcome::Error(e),
        Err(o) => o,
    }
}
