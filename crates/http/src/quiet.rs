//! [`Quiet`]: a future that is polled only when it was woken itself.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Wake, Waker};

use parking_lot::Mutex;

/// A future polled only when its own waker fired (or the task's waker changed, or on its
/// first poll). A connection's task is woken by its sockets many times per request, and every
/// wake polls all the branches of its `select!`: a timer or a shutdown signal beside the
/// sockets would be polled each time, a few hundred instructions each, for nothing. Wrapped
/// in `Quiet` and kept across those polls, it is skipped with one atomic load until it is
/// woken.
///
/// `F` is `Unpin`: pin the future first (`Quiet::new(std::pin::pin!(fut))`).
pub struct Quiet<F> {
    fut: F,
    /// Its waker (set when woken, then wakes the task) and the waker given to the future.
    own: Option<(Arc<Flag>, Waker)>,
    /// The task's waker the flag wakes.
    task: Option<Waker>,
    /// Poll at the next poll whatever the flag says ([`Quiet::get_mut`]).
    force: bool,
}

struct Flag {
    woken: AtomicBool,
    task: Mutex<Option<Waker>>,
}

impl Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        if let Some(w) = self.task.lock().as_ref() {
            w.wake_by_ref();
        }
    }
}

impl<F> Quiet<F> {
    /// Wraps `fut`.
    pub fn new(fut: F) -> Self {
        Self { fut, own: None, task: None, force: true }
    }

    /// The future, to change it (a timer reset): it is polled at the next poll.
    pub fn get_mut(&mut self) -> &mut F {
        self.force = true;
        &mut self.fut
    }
}

impl<F: std::fmt::Debug> std::fmt::Debug for Quiet<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Quiet").field("fut", &self.fut).finish_non_exhaustive()
    }
}

impl<F: Future + Unpin> Future for Quiet<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.get_mut();
        let (flag, waker) = this.own.get_or_insert_with(|| {
            let flag = Arc::new(Flag { woken: AtomicBool::new(false), task: Mutex::new(None) });
            let waker = Waker::from(Arc::clone(&flag));
            (flag, waker)
        });
        let same_task = this.task.as_ref().is_some_and(|t| t.will_wake(cx.waker()));
        if !same_task {
            *flag.task.lock() = Some(cx.waker().clone());
            this.task = Some(cx.waker().clone());
        } else if !this.force && !flag.woken.load(Ordering::Acquire) {
            return Poll::Pending;
        }
        this.force = false;
        // Cleared before the poll: a wake from here on is seen at the next one.
        flag.woken.store(false, Ordering::Release);
        Pin::new(&mut this.fut).poll(&mut Context::from_waker(waker))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;

    /// Counts its polls; ready once `ready` is set (and wakes its waker when set).
    struct Probe {
        polls: Arc<AtomicUsize>,
        ready: Arc<AtomicBool>,
        waker: Arc<Mutex<Option<Waker>>>,
    }

    impl Future for Probe {
        type Output = ();
        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            self.polls.fetch_add(1, Ordering::SeqCst);
            *self.waker.lock() = Some(cx.waker().clone());
            if self.ready.load(Ordering::SeqCst) { Poll::Ready(()) } else { Poll::Pending }
        }
    }

    #[tokio::test]
    async fn polled_only_when_woken_and_never_misses_a_wake() {
        let polls = Arc::new(AtomicUsize::new(0));
        let ready = Arc::new(AtomicBool::new(false));
        let waker = Arc::new(Mutex::new(None::<Waker>));
        let probe = Probe {
            polls: Arc::clone(&polls),
            ready: Arc::clone(&ready),
            waker: Arc::clone(&waker),
        };
        let mut quiet = Quiet::new(probe);
        // The task is woken 100 times by something else: the probe is polled once.
        let mut other = 0;
        let done = std::future::poll_fn(|cx| {
            if Pin::new(&mut quiet).poll(cx).is_ready() {
                return Poll::Ready(other);
            }
            other += 1;
            if other < 100 {
                cx.waker().wake_by_ref();
            } else if other == 100 {
                // Now the probe's own waker fires.
                ready.store(true, Ordering::SeqCst);
                if let Some(w) = waker.lock().take() {
                    w.wake();
                }
            }
            Poll::Pending
        });
        let woken_by_others = tokio::time::timeout(Duration::from_secs(5), done)
            .await
            .unwrap_or_else(|_| panic!("the probe's wake was missed"));
        assert_eq!(woken_by_others, 100);
        assert_eq!(polls.load(Ordering::SeqCst), 2, "polled at the start and when woken");
    }

    #[tokio::test]
    async fn a_reset_timer_is_polled_again() {
        let mut sleep = Quiet::new(Box::pin(tokio::time::sleep(Duration::from_secs(3600))));
        assert!(futures_poll(&mut sleep).is_pending());
        sleep.get_mut().as_mut().reset(tokio::time::Instant::now() + Duration::from_millis(10));
        tokio::time::timeout(Duration::from_secs(1), &mut sleep)
            .await
            .unwrap_or_else(|_| panic!("the reset timer did not fire"));
    }

    fn futures_poll<F: Future + Unpin>(f: &mut F) -> Poll<F::Output> {
        let mut cx = Context::from_waker(Waker::noop());
        Pin::new(f).poll(&mut cx)
    }
}
