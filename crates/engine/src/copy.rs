//! The data path: the bidirectional copy with its timeouts.
//!
//! Plain TCP on both sides ([`pipe_tcp`]): one task drives both directions, a state machine
//! polled by hand ([`duplex`]). Each direction waits for readability with no buffer, takes a
//! buffer from a per-thread pool only for the time one chunk is read and written (an idle
//! connection holds no buffer), and treats a short read as "socket drained" (which saves a
//! third of the syscalls of a small request; `duplex` says why that is safe for `read(2)` and
//! not for `splice(2)`). On Linux (cargo feature `splice`, on by default, and `[defaults]
//! splice = true`) a direction switches to `splice(2)` through a pooled pipe once a read fills
//! the whole buffer (HAProxy's "splice-auto") and back once a splice round moves less than a
//! buffer. EOF on one side shuts down the write half of the other while the opposite direction
//! keeps running (half-close), and a full writer stops the reads that feed it (backpressure).
//!
//! Other streams (TLS, socket handlers) go through [`pipe`], tokio's
//! `copy_bidirectional_with_sizes` with the [`Counted`] wrapper for the client.
//!
//! Inactivity costs nothing per read: a coarse timer compares the byte counters, which the
//! copy updates anyway.

mod duplex;
#[cfg(test)]
mod model_tests;
#[cfg(all(feature = "splice", target_os = "linux"))]
mod splice;

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::{Instant, Sleep};

use smartproxy_metrics::CloseReason;

use self::duplex::{CopySocket, Duplex};
use crate::observe::ConnObserver;

/// Buffer per direction of the generic copy ([`pipe`]).
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

/// Timeouts of an established connection, with its keep-alive treatment and jitter already
/// applied ([`crate::timeouts::EffectiveTimeouts::for_connection`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timeouts {
    /// No byte for this long ends the connection; `Duration::MAX`: never (`immortal`).
    pub(crate) inactivity: Duration,
    /// Absolute end of the connection's life (far in the future when it has none).
    pub(crate) deadline: Instant,
}

impl Timeouts {
    /// Whether the connection can end for inactivity.
    fn has_inactivity(&self) -> bool {
        self.inactivity != Duration::MAX
    }
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
    /// The metrics' label: a keepalive failure is the kernel's `ETIMEDOUT` on a socket (no
    /// other timeout of ours surfaces as an OS error), EOF / reset / broken pipe is the peer.
    pub(crate) fn close_reason(&self) -> CloseReason {
        match self {
            Self::Done => CloseReason::Peer,
            Self::Inactive => CloseReason::Inactivity,
            Self::Lifetime => CloseReason::Lifetime,
            Self::Shutdown => CloseReason::Shutdown,
            Self::Error(e) => match e.kind() {
                io::ErrorKind::TimedOut if e.raw_os_error().is_some() => CloseReason::Keepalive,
                io::ErrorKind::ConnectionReset
                | io::ErrorKind::ConnectionAborted
                | io::ErrorKind::BrokenPipe
                | io::ErrorKind::UnexpectedEof
                | io::ErrorKind::NotConnected => CloseReason::Peer,
                _ => CloseReason::Error,
            },
        }
    }

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

/// A plain connection's backend gets its TCP keepalive probes this long after the copy
/// starts: a connection that ends sooner (most: a request and its answer) never pays the four
/// `setsockopt` calls, and a long one gets them long before the first probe could be due.
pub(crate) const KEEPALIVE_AFTER: Duration = Duration::from_secs(1);

impl Clock {
    /// Starts counting idle time now.
    fn start(obs: &ConnObserver) -> Self {
        Self { last: obs.activity(), idle_since: Instant::now() }
    }

    /// The timer's deadline right after [`Clock::start`]; with `keepalive` (probes to set on
    /// the backend) no later than [`KEEPALIVE_AFTER`] from now.
    fn first_deadline(&self, t: &Timeouts, keepalive: bool) -> Instant {
        let n = Self::next(self.idle_since, t);
        match self.idle_since.checked_add(KEEPALIVE_AFTER) {
            Some(k) if keepalive => k.min(n),
            _ => n,
        }
    }

    /// The timer's next deadline after a check at `from`: the next inactivity check, or the
    /// end of the lifetime when that is earlier or there is no inactivity timeout (an
    /// `immortal` connection's timer sleeps until its lifetime ends: no wake-up while idle).
    fn next(from: Instant, t: &Timeouts) -> Instant {
        if !t.has_inactivity() {
            return t.deadline;
        }
        from.checked_add(Self::tick(t)).map_or(t.deadline, |n| n.min(t.deadline))
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
        } else if t.has_inactivity() && at.duration_since(self.idle_since) >= t.inactivity {
            return Err(Outcome::Inactive);
        }
        Ok(Self::next(Instant::now(), t))
    }

    /// Polls the timer, rearming it after each check; `Ready` with the outcome when a timeout
    /// ends the connection. `backend`: the socket that gets its keepalive probes at the
    /// timer's first firing (see [`PlainConn::backend_keepalive`]).
    fn poll(
        &mut self,
        cx: &mut Context<'_>,
        timer: &mut Pin<&mut Sleep>,
        obs: &ConnObserver,
        t: &Timeouts,
        backend: Option<(&TcpStream, &BackendKeepalive)>,
    ) -> Poll<Outcome> {
        while timer.as_mut().poll(cx).is_ready() {
            if let Some((sock, k)) = backend
                && k.pending.swap(false, std::sync::atomic::Ordering::Relaxed)
            {
                crate::net::set_keepalive(&socket2::SockRef::from(sock), &k.secs.expand());
            }
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
    let timer = tokio::time::sleep_until(clock.first_deadline(t, false));
    tokio::pin!(timer, stop);
    std::future::poll_fn(|cx| {
        if let Poll::Ready(out) = Pin::new(&mut fut).poll(cx) {
            return Poll::Ready(Ok(out));
        }
        if let Poll::Ready(o) = clock.poll(cx, &mut timer, obs, t, None) {
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
/// (pinned) shutdown waiter. It is most of an idle connection's task. `splice`: bulk transfers
/// may switch to `splice(2)` (`[defaults] splice`; kept in the direction states, no extra byte).
pub(crate) fn pipe_tcp<'a, S>(
    conn: &'a PlainConn,
    stop: Pin<&'a mut S>,
    splice: bool,
) -> impl Future<Output = Outcome> + Send + 'a
where
    S: Future<Output = ()> + Send,
{
    let clock = Clock::start(&conn.obs);
    let mut pipe = PipeTcp { conn, both: Duplex::new(splice), clock, stop };
    // The arguments are moved into `pipe` before the `async` block, which stores only it and
    // the timer.
    async move {
        let keepalive = pipe.conn.backend_keepalive.is_some();
        let timer =
            tokio::time::sleep_until(pipe.clock.first_deadline(&pipe.conn.timeouts, keepalive));
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
    /// The route's TCP keepalive probes, set on `backend` by [`pipe_tcp`] once the
    /// connection is [`KEEPALIVE_AFTER`] old (the client socket inherits its probes from the
    /// listener at accept). Six bytes: it is in every connection's task.
    pub(crate) backend_keepalive: Option<BackendKeepalive>,
    /// The route's `half_close`: the end of one side is passed on as a half-close (`true`)
    /// or closes the connection (see [`Duplex::poll`]). In the padding after the probes.
    pub(crate) half_close: bool,
}

/// The backend's keepalive probes, and whether they are still to be set.
#[derive(Debug)]
pub(crate) struct BackendKeepalive {
    secs: KeepaliveSecs,
    pending: std::sync::atomic::AtomicBool,
}

impl BackendKeepalive {
    /// Probes to set later; `None` for `Off`, or for values this cannot hold (then the
    /// caller sets them before the connect, as for other connections).
    pub(crate) fn deferred(k: &smartproxy_routing::TcpKeepalive) -> Option<Self> {
        Some(Self { secs: KeepaliveSecs::pack(k)?, pending: true.into() })
    }
}

/// TCP keepalive probes in whole seconds (as configured: 1 to 32767 s, 1 to 127 probes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct KeepaliveSecs {
    idle: std::num::NonZeroU16,
    interval: u16,
    count: u8,
}

impl KeepaliveSecs {
    fn pack(k: &smartproxy_routing::TcpKeepalive) -> Option<Self> {
        let smartproxy_routing::TcpKeepalive::On { idle, interval, count } = *k else {
            return None;
        };
        let secs = |d: Duration| u16::try_from(d.as_secs()).ok().filter(|_| d.subsec_nanos() == 0);
        Some(Self {
            idle: std::num::NonZeroU16::new(secs(idle)?)?,
            interval: secs(interval)?,
            count: u8::try_from(count).ok()?,
        })
    }

    fn expand(self) -> smartproxy_routing::TcpKeepalive {
        smartproxy_routing::TcpKeepalive::On {
            idle: Duration::from_secs(self.idle.get().into()),
            interval: Duration::from_secs(self.interval.into()),
            count: self.count.into(),
        }
    }
}

/// The state of [`pipe_tcp`] but its timer (which must be pinned).
struct PipeTcp<'a, S> {
    conn: &'a PlainConn,
    both: Duplex<<TcpStream as CopySocket>::Pipe>,
    clock: Clock,
    stop: Pin<&'a mut S>,
}

impl<S: Future<Output = ()>> PipeTcp<'_, S> {
    fn poll(&mut self, cx: &mut Context<'_>, timer: &mut Pin<&mut Sleep>) -> Poll<Outcome> {
        let c = self.conn;
        let obs = &*c.obs;
        let (mut up, mut down) = (|n| obs.add_in(n), |n| obs.add_out(n));
        match self.both.poll(cx, &c.client, &c.backend, &mut up, &mut down, c.half_close) {
            Poll::Ready(Ok(())) => return Poll::Ready(Outcome::Done),
            Poll::Ready(Err(e)) => return Poll::Ready(Outcome::Error(e)),
            Poll::Pending => {}
        }
        let backend = c.backend_keepalive.as_ref().map(|k| (&c.backend, k));
        if let Poll::Ready(o) = self.clock.poll(cx, timer, obs, &c.timeouts, backend) {
            return Poll::Ready(o);
        }
        match self.stop.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Outcome::Shutdown),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// Copies both ways between `a` and `b` until both directions reach EOF (no timeouts), with
/// splice on. `up(n)` counts bytes `a` -> `b`, `down(n)` bytes `b` -> `a`.
pub(crate) async fn copy_both(
    a: &TcpStream,
    b: &TcpStream,
    mut up: impl FnMut(u64),
    mut down: impl FnMut(u64),
) -> io::Result<()> {
    let mut both = Duplex::new(true);
    std::future::poll_fn(|cx| both.poll(cx, a, b, &mut up, &mut down, true)).await
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
