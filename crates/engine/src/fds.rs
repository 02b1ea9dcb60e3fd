//! The proxy out of file descriptors: connections whose backend socket could not be made
//! (EMFILE / ENFILE) wait for one instead of being closed, and the accept loops pause while
//! any connection waits (new clients stay in the kernel's accept queue rather than take the
//! fds that the waiting connections need).
//!
//! The waiters take turns (FIFO): only the first one probes for a free fd (one `socket(2)`
//! and its `close`, every 10 ms growing to 50 ms), so a thousand waiting connections cost no
//! more CPU than one. The engine also holds a few spare fds (`/dev/null`, the nginx / HAProxy
//! trick): when the probe fails, the waiter whose turn it is closes a spare and takes its
//! slot. That keeps the proxy moving when every fd is held by a connection waiting for a
//! second one (a burst of accepts before any backend connect): without it none could
//! proceed until their connect timeouts. The spares are opened again as soon as fds come
//! free. Nothing here runs while fds are available: the accept loops read two flags per
//! accept, and the connect path comes here only after an EMFILE / ENFILE.

use std::fs::File;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::{Mutex, Notify};
use tokio::time::Instant;

/// The first and the longest pause between two probes of the waiter whose turn it is.
const FIRST_PROBE: Duration = Duration::from_millis(10);
const LONGEST_PROBE: Duration = Duration::from_millis(50);

/// Spare fds held by the engine: the connections that can always get a backend socket.
const SPARE_FDS: usize = 8;

/// Connections waiting for a file descriptor, and the spare fds (one per engine).
#[derive(Debug, Default)]
pub(crate) struct FdWait {
    /// Connections waiting now; the accept loops pause while it is not 0.
    waiting: AtomicUsize,
    /// The waiter holding it probes; the others queue (tokio's mutex is fair).
    turn: Mutex<()>,
    /// Woken when `waiting` falls to 0.
    resumed: Notify,
    spare: parking_lot::Mutex<Vec<File>>,
    /// Fewer than [`SPARE_FDS`] spares are open (the accept loops then reopen them).
    spare_short: AtomicBool,
    /// UNIX seconds of the latest "out of file descriptors" log (one a second at most), and
    /// whether the episode it began was logged (its end is logged then).
    last_log_s: AtomicU64,
    logged: AtomicBool,
}

/// The error is the process (or the system) out of file descriptors: EMFILE or ENFILE.
pub(crate) fn is_out_of_fds(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(24 | 23))
}

impl FdWait {
    /// With its spare fds open.
    pub(crate) fn new() -> Self {
        let fds = Self::default();
        fds.refill();
        fds
    }

    /// Opens spares up to [`SPARE_FDS`], as many as the process can.
    fn refill(&self) {
        let mut spare = self.spare.lock();
        while spare.len() < SPARE_FDS {
            match File::open("/dev/null") {
                Ok(f) => spare.push(f),
                Err(_) => break,
            }
        }
        self.spare_short.store(spare.len() < SPARE_FDS, Ordering::Relaxed);
    }

    /// Reopens the spares used during an exhaustion, when some are missing (one relaxed load
    /// otherwise: called by the accept loops after each accept).
    pub(crate) fn refill_if_short(&self) {
        if self.spare_short.load(Ordering::Relaxed) {
            self.refill();
        }
    }

    /// Whether to log the start of an episode now (at most one a second).
    fn log_now(&self) -> bool {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let last = self.last_log_s.swap(now, Ordering::Relaxed);
        let log = last != now;
        if log {
            self.logged.store(true, Ordering::Relaxed);
        }
        log
    }

    /// Closes one spare: its slot is free for the caller's socket.
    fn release_spare(&self) -> bool {
        let mut spare = self.spare.lock();
        let released = spare.pop().is_some();
        if released {
            self.spare_short.store(true, Ordering::Relaxed);
        }
        released
    }

    /// Whether connections wait for an fd (one relaxed load: read by the accept loops).
    pub(crate) fn any_waiting(&self) -> bool {
        self.waiting.load(Ordering::Relaxed) != 0
    }

    /// How many connections wait for an fd.
    pub(crate) fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    /// Resolves when no connection waits for an fd (at once when none does).
    pub(crate) async fn until_none_waiting(&self) {
        loop {
            let resumed = self.resumed.notified();
            let mut resumed = std::pin::pin!(resumed);
            // Registered before the check, so that a decrement to 0 in between is not missed.
            resumed.as_mut().enable();
            if !self.any_waiting() {
                return;
            }
            resumed.await;
        }
    }

    /// Waits, in turn with the other waiters, until a file descriptor can be had (a probe
    /// socket was made and closed, or a spare closed), or `deadline` passes (`None`). The
    /// caller then makes its own socket, holding the returned guard until it has: the accept
    /// loops stay paused meanwhile, so that they do not take the freed slot. When another
    /// thread took it first the caller fails again and comes back.
    pub(crate) async fn wait_for_fd(&self, deadline: Instant) -> Option<Waiting<'_>> {
        let waiting = Waiting::new(self);
        let got = tokio::time::timeout_at(deadline, async {
            let _turn = self.turn.lock().await;
            let mut pause = FIRST_PROBE;
            loop {
                if self.spare_short.load(Ordering::Relaxed) {
                    self.refill();
                }
                // A free fd, or the slot of a spare (the caller's socket takes it at once).
                if probe() || self.release_spare() {
                    return;
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(LONGEST_PROBE);
            }
        })
        .await;
        got.ok().map(|()| waiting)
    }
}

/// Counts one waiting connection; the accept loops resume when the last one is dropped.
#[derive(Debug)]
pub(crate) struct Waiting<'a>(&'a FdWait);

impl<'a> Waiting<'a> {
    fn new(fds: &'a FdWait) -> Self {
        if fds.waiting.fetch_add(1, Ordering::Relaxed) == 0 && fds.log_now() {
            tracing::warn!(
                "out of file descriptors: connections wait for one (up to their connect \
                 timeout); accepting paused"
            );
        }
        Self(fds)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if self.0.waiting.fetch_sub(1, Ordering::Relaxed) == 1 {
            if self.0.logged.load(Ordering::Relaxed) {
                self.0.logged.store(false, Ordering::Relaxed);
                tracing::info!("file descriptors available again; accepting resumed");
            }
            self.0.refill();
            self.0.resumed.notify_waiters();
        }
    }
}

/// Whether a socket can be made now (it is closed at once).
fn probe() -> bool {
    match socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None) {
        Ok(_) => true,
        Err(e) => !is_out_of_fds(&e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn accept_loops_resume_when_the_last_waiter_leaves() {
        let fds = std::sync::Arc::new(FdWait::new());
        assert!(!fds.any_waiting());
        fds.until_none_waiting().await;
        let w = Waiting::new(&fds);
        assert_eq!(fds.waiting(), 1);
        let f2 = std::sync::Arc::clone(&fds);
        let resumed = tokio::spawn(async move { f2.until_none_waiting().await });
        tokio::task::yield_now().await;
        assert!(!resumed.is_finished());
        drop(w);
        tokio::time::timeout(Duration::from_secs(1), resumed).await.unwrap().unwrap();
        assert!(!fds.any_waiting());
    }

    #[tokio::test]
    async fn a_waiter_gets_its_turn_when_a_probe_succeeds() {
        let fds = FdWait::new();
        assert_eq!(fds.spare.lock().len(), SPARE_FDS);
        assert!(!fds.spare_short.load(Ordering::Relaxed));
        // The test process has fds: the first probe succeeds.
        let turn = fds.wait_for_fd(Instant::now() + Duration::from_secs(1)).await;
        assert!(turn.is_some());
        assert!(fds.any_waiting(), "still counted until the caller made its socket");
        drop(turn);
        assert!(!fds.any_waiting());
        // A waiter whose turn does not come before its deadline gives up.
        let turn = fds.turn.lock().await;
        assert!(fds.wait_for_fd(Instant::now() + Duration::from_millis(100)).await.is_none());
        drop(turn);
        assert!(!fds.any_waiting());
        // A spare used is opened again by the next refill.
        assert!(fds.release_spare());
        assert!(fds.spare_short.load(Ordering::Relaxed));
        fds.refill_if_short();
        assert_eq!(fds.spare.lock().len(), SPARE_FDS);
        assert!(!fds.spare_short.load(Ordering::Relaxed));
    }
}
