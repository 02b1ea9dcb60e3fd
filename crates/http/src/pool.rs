//! Upstream connection pools: one per target (and upstream protocol / TLS), sharded by worker
//! thread so that a thread takes its own connections back without contending for a lock.
//!
//! HTTP/1.1 connections are idle in stacks (the most recently used first: its socket is the
//! warmest), one for hyper's connections and one for the in-task exchanges of `h1.rs`, of at
//! most `max_idle` together per shard (an in-task connection the target closed while idle is
//! dropped when taken or by the next reaper round); HTTP/2 connections are shared, one per shard,
//! and multiplexed. A reaper task per shard drops connections idle longer than the idle
//! timeout and stops when the shard is empty. Pools for connections that carry a client's
//! PROXY header are private to that client connection (see `ConnCtx::private_pools`).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use hyper::client::conn::{http1, http2};
use parking_lot::Mutex;
use tokio::time::Instant;

use crate::body::UpBody;
use crate::h1::H1Conn;

pub(crate) type H1Sender = http1::SendRequest<UpBody>;
pub(crate) type H2Sender = http2::SendRequest<UpBody>;

/// A request sender on a backend connection.
#[derive(Debug)]
pub(crate) enum Sender {
    H1(H1Sender),
    H2(H2Sender),
    /// A connection for in-task exchanges (`h1.rs`), owned by the request using it.
    Raw(Box<H1Conn>),
}

impl Sender {
    pub(crate) fn is_h2(&self) -> bool {
        matches!(self, Self::H2(_))
    }
}

/// An in-task connection idle this long in its pool gives its read buffer back at the
/// reaper's next round (busy connections keep theirs between requests).
pub(crate) const SHED_AFTER: Duration = Duration::from_secs(1);

/// A connection idle on one of a shard's HTTP/1.1 stacks.
struct Idle<C> {
    conn: C,
    since: Instant,
}

/// Whether an idle HTTP/1.1 connection can still take a request.
trait Reusable {
    fn reusable(&self) -> bool;
}

impl Reusable for H1Sender {
    /// hyper's connection task saw no close.
    fn reusable(&self) -> bool {
        !self.is_closed()
    }
}

impl Reusable for Box<H1Conn> {
    /// Nothing arrived on the socket since its last exchange (see [`H1Conn::usable`]).
    fn reusable(&self) -> bool {
        self.usable()
    }
}

/// One of a shard's HTTP/1.1 stacks.
type Stack<C> = fn(&mut Shard) -> &mut Vec<Idle<C>>;

#[derive(Default)]
struct Shard {
    h1: Vec<Idle<H1Sender>>,
    raw: Vec<Idle<Box<H1Conn>>>,
    h2: Option<(H2Sender, Instant)>,
    reaper: bool,
}

impl Shard {
    fn h1(&mut self) -> &mut Vec<Idle<H1Sender>> {
        &mut self.h1
    }

    fn raw(&mut self) -> &mut Vec<Idle<Box<H1Conn>>> {
        &mut self.raw
    }
}

/// The pool of one target.
pub(crate) struct Pool {
    shards: Box<[Mutex<Shard>]>,
    max_idle: usize,
    idle_timeout: Duration,
    /// Private pools live with their client connection: no reaper, one shard.
    private: bool,
    weak: Weak<Pool>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("shards", &self.shards.len())
            .field("max_idle", &self.max_idle)
            .field("idle", &self.idle())
            .finish()
    }
}

fn shard_count() -> usize {
    static N: OnceLock<usize> = OnceLock::new();
    *N.get_or_init(|| std::thread::available_parallelism().map_or(4, |n| n.get()).clamp(1, 64))
}

fn thread_index() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static INDEX: usize = NEXT.fetch_add(1, Ordering::Relaxed);
    }
    INDEX.with(|i| *i)
}

impl Pool {
    /// A shared pool: one shard per CPU, reaped.
    pub(crate) fn new(max_idle: usize, idle_timeout: Duration) -> Arc<Self> {
        Self::build(shard_count(), max_idle, idle_timeout, false)
    }

    /// A pool private to one client connection.
    pub(crate) fn private(max_idle: usize, idle_timeout: Duration) -> Arc<Self> {
        Self::build(1, max_idle, idle_timeout, true)
    }

    fn build(shards: usize, max_idle: usize, idle_timeout: Duration, private: bool) -> Arc<Self> {
        Arc::new_cyclic(|weak| Self {
            shards: (0..shards).map(|_| Mutex::new(Shard::default())).collect(),
            max_idle,
            idle_timeout,
            private,
            weak: weak.clone(),
        })
    }

    fn shard(&self) -> (usize, &Mutex<Shard>) {
        let i = thread_index() % self.shards.len();
        (i, &self.shards[i])
    }

    /// An idle hyper HTTP/1.1 connection (see [`Pool::take`]).
    pub(crate) fn take_h1(&self, now: Instant) -> Option<(H1Sender, Duration)> {
        self.take(now, Shard::h1)
    }

    /// An idle connection for an in-task exchange (see [`Pool::take`]); one the target closed
    /// (or sent anything on) while idle is dropped.
    pub(crate) fn take_raw(&self, now: Instant) -> Option<(Box<H1Conn>, Duration)> {
        self.take(now, Shard::raw)
    }

    /// Gives a hyper connection back after a complete exchange (`now`: the caller's clock
    /// read); one hyper saw closed is dropped.
    pub(crate) fn put_h1(&self, tx: H1Sender, now: Instant) {
        if !tx.is_closed() {
            self.put(tx, now, Shard::h1);
        }
    }

    /// Gives an in-task connection back after a complete exchange.
    pub(crate) fn put_raw(&self, conn: Box<H1Conn>, now: Instant) {
        self.put(conn, now, Shard::raw);
    }

    /// An idle connection from `stack`, the most recently used first; closed and expired
    /// ones are dropped on the way. This thread's shard first, then the others (tasks of a
    /// work-stealing runtime move between threads; with one runtime per thread the own
    /// shard nearly always has one).
    /// Also returns how long the connection was idle.
    /// `now` is the caller's clock read (the request's start).
    fn take<C: Reusable>(&self, now: Instant, stack: Stack<C>) -> Option<(C, Duration)> {
        let (own, _) = self.shard();
        let n = self.shards.len();
        for k in 0..n {
            let mut s = self.shards[(own + k) % n].lock();
            while let Some(idle) = stack(&mut s).pop() {
                let idle_for = now.saturating_duration_since(idle.since);
                if idle_for < self.idle_timeout && idle.conn.reusable() {
                    return Some((idle.conn, idle_for));
                }
            }
        }
        None
    }

    /// Puts `conn` on this thread's `stack`; the two HTTP/1.1 stacks hold at most `max_idle`
    /// together.
    fn put<C>(&self, conn: C, now: Instant, stack: Stack<C>) {
        if self.max_idle == 0 {
            return;
        }
        let (i, shard) = self.shard();
        let start_reaper = {
            let mut s = shard.lock();
            if s.h1.len() + s.raw.len() >= self.max_idle {
                // Full: the oldest of this kind goes, or of the other kind if none.
                if !stack(&mut s).is_empty() {
                    stack(&mut s).remove(0);
                } else if s.h1.is_empty() {
                    s.raw.remove(0);
                } else {
                    s.h1.remove(0);
                }
            }
            stack(&mut s).push(Idle { conn, since: now });
            !std::mem::replace(&mut s.reaper, true)
        };
        if start_reaper {
            self.spawn_reaper(i);
        }
    }

    /// An open shared HTTP/2 connection (this thread's shard first).
    pub(crate) fn h2(&self) -> Option<H2Sender> {
        let (own, _) = self.shard();
        let n = self.shards.len();
        for k in 0..n {
            let mut s = self.shards[(own + k) % n].lock();
            match &mut s.h2 {
                Some((tx, used)) if !tx.is_closed() => {
                    *used = Instant::now();
                    return Some(tx.clone());
                }
                Some(_) => s.h2 = None,
                None => {}
            }
        }
        None
    }

    /// Keeps `tx` as this shard's HTTP/2 connection.
    pub(crate) fn set_h2(&self, tx: H2Sender) {
        let (i, shard) = self.shard();
        let start_reaper = {
            let mut s = shard.lock();
            s.h2 = Some((tx, Instant::now()));
            !std::mem::replace(&mut s.reaper, true)
        };
        if start_reaper {
            self.spawn_reaper(i);
        }
    }

    /// Idle HTTP/1.1 connections and open HTTP/2 connections, all shards.
    pub(crate) fn idle(&self) -> usize {
        self.shards
            .iter()
            .map(|s| {
                let s = s.lock();
                s.h1.len() + s.raw.len() + usize::from(s.h2.is_some())
            })
            .sum()
    }

    /// Drops expired and closed connections of shard `i`; whether it is now empty.
    fn reap(&self, i: usize) -> bool {
        let Some(shard) = self.shards.get(i) else { return true };
        let mut s = shard.lock();
        let now = Instant::now();
        let timeout = self.idle_timeout;
        s.h1.retain(|c| now.duration_since(c.since) < timeout && c.conn.reusable());
        s.raw.retain_mut(|c| {
            let idle = now.duration_since(c.since);
            if idle >= SHED_AFTER {
                c.conn.shed_buffer();
            }
            idle < timeout && c.conn.reusable()
        });
        if let Some((tx, used)) = &s.h2
            && (tx.is_closed() || now.duration_since(*used) >= timeout)
        {
            s.h2 = None;
        }
        let empty = s.h1.is_empty() && s.raw.is_empty() && s.h2.is_none();
        if empty {
            s.reaper = false;
        }
        empty
    }

    fn spawn_reaper(&self, i: usize) {
        if self.private {
            return;
        }
        let weak = self.weak.clone();
        // Idle in-task connections have no task watching them: a connection the target
        // closed waits for the next round (at most 5 s) to be closed on this side too.
        let period =
            (self.idle_timeout / 2).min(Duration::from_secs(5)).max(Duration::from_millis(100));
        // Outside a runtime (tests of the pool alone) nothing is reaped lazily.
        if tokio::runtime::Handle::try_current().is_err() {
            if let Some(shard) = self.shards.get(i) {
                shard.lock().reaper = false;
            }
            return;
        }
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(period).await;
                let Some(pool) = weak.upgrade() else { return };
                if pool.reap(i) {
                    return;
                }
            }
        });
    }
}
