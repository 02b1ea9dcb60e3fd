//! systemd's notification protocol (`Type=notify`): `READY=1` once every listener is bound,
//! `RELOADING=1` (with `MONOTONIC_USEC`) and `READY=1` around each reload, `STOPPING=1` when
//! the drain begins, and `WATCHDOG=1` every half `WatchdogSec` when the service has one. Without
//! `NOTIFY_SOCKET` (not started by systemd) every call does nothing.
//!
//! The datagrams are sent from a thread of their own. Sending to a full notification socket
//! blocks (the kernel queues ten datagrams per socket by default, `net.unix.max_dgram_qlen`):
//! a service manager that reads late would otherwise freeze the runtime that sends, and with
//! it the admin API, the signals and (on a one-worker runtime) every connection. Watchdog
//! pings are coalesced while one waits to be sent, so the queue to the thread stays short.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use sd_notify::NotifyState;
use tokio::sync::watch;

enum Msg {
    Ready(&'static str),
    Reloading,
    Stopping,
    Watchdog,
    /// Answered once every earlier message has been sent (or failed).
    Flush(mpsc::SyncSender<()>),
}

struct Notifier {
    tx: mpsc::Sender<Msg>,
    /// A `WATCHDOG=1` is queued and not yet sent: further pings are dropped meanwhile.
    ping_queued: AtomicBool,
}

/// The notifier thread, started on first use when `NOTIFY_SOCKET` is set.
fn notifier() -> Option<&'static Notifier> {
    static NOTIFIER: OnceLock<Option<Notifier>> = OnceLock::new();
    NOTIFIER
        .get_or_init(|| {
            std::env::var_os("NOTIFY_SOCKET")?;
            let (tx, rx) = mpsc::channel::<Msg>();
            let spawned =
                std::thread::Builder::new().name("smartproxy-sd-notify".into()).spawn(move || {
                    let mut failing = false;
                    for msg in rx {
                        // Logged when sending starts failing and when it works again, not at
                        // every watchdog ping in between.
                        match deliver(msg) {
                            Err(e) if !failing => {
                                failing = true;
                                tracing::warn!(error = %e, "cannot notify systemd (NOTIFY_SOCKET)");
                            }
                            Ok(()) if failing => {
                                failing = false;
                                tracing::info!("systemd notifications are sent again");
                            }
                            _ => {}
                        }
                    }
                });
            match spawned {
                Ok(_) => Some(Notifier { tx, ping_queued: AtomicBool::new(false) }),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot start the systemd notification thread");
                    None
                }
            }
        })
        .as_ref()
}

/// On the notifier thread: one datagram (this call may block while the manager's queue is full).
fn deliver(msg: Msg) -> std::io::Result<()> {
    match msg {
        Msg::Ready(status) => send(&[NotifyState::Ready, NotifyState::Status(status)]),
        Msg::Reloading => match NotifyState::monotonic_usec_now() {
            Ok(now) => send(&[NotifyState::Reloading, now]),
            Err(_) => send(&[NotifyState::Reloading]),
        },
        Msg::Stopping => {
            send(&[NotifyState::Stopping, NotifyState::Status("draining connections")])
        }
        Msg::Watchdog => {
            if let Some(n) = notifier() {
                n.ping_queued.store(false, Ordering::Relaxed);
            }
            send(&[NotifyState::Watchdog])
        }
        Msg::Flush(done) => {
            let _ = done.send(());
            Ok(())
        }
    }
}

fn send(states: &[NotifyState<'_>]) -> std::io::Result<()> {
    // Keep NOTIFY_SOCKET: reloads and the stop notify later.
    sd_notify::notify(false, states)
}

fn post(msg: Msg) {
    if let Some(n) = notifier() {
        // The thread lives as long as the process: a send fails only if it panicked.
        let _ = n.tx.send(msg);
    }
}

/// Every listener is bound: the service is up.
pub(crate) fn ready(status: &'static str) {
    post(Msg::Ready(status));
}

/// A reload begins (`Type=notify-reload` wants the monotonic time with it, taken when sent).
pub(crate) fn reloading() {
    post(Msg::Reloading);
}

/// The reload is over (applied or refused: the service serves either way).
pub(crate) fn reloaded(status: &'static str) {
    post(Msg::Ready(status));
}

/// Shutdown begins.
pub(crate) fn stopping() {
    post(Msg::Stopping);
}

/// Waits (at most `limit`) until every notification posted so far has been sent: called
/// before the process exits, so that `STOPPING=1` is not lost with the thread.
pub(crate) fn flush(limit: Duration) {
    let Some(n) = notifier() else { return };
    let (done, wait) = mpsc::sync_channel(1);
    if n.tx.send(Msg::Flush(done)).is_ok() && wait.recv_timeout(limit).is_err() {
        tracing::warn!(
            ?limit,
            "systemd notifications not sent before the exit (NOTIFY_SOCKET not read)"
        );
    }
}

fn ping() {
    if let Some(n) = notifier() {
        if !n.ping_queued.swap(true, Ordering::Relaxed) {
            let _ = n.tx.send(Msg::Watchdog);
        }
    }
}

/// The watchdog interval systemd asks for: `WATCHDOG_USEC`, for this process when
/// `WATCHDOG_PID` is set (as libsystemd's `sd_watchdog_enabled`).
fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.trim().parse().ok()?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID") {
        if pid.trim().parse::<u32>().ok() != Some(std::process::id()) {
            return None;
        }
    }
    (usec > 0).then(|| Duration::from_micros(usec))
}

/// Pings the watchdog every half interval until `stop` turns true (from the main runtime,
/// which also runs signals and reloads: a stuck main loop stops the pings).
pub(crate) fn spawn_watchdog(stop: &watch::Receiver<bool>) {
    let Some(every) = watchdog_interval() else { return };
    let half = every / 2;
    tracing::info!(interval = ?every, "systemd watchdog: pinging every half interval");
    let mut stop = stop.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(half);
        loop {
            tokio::select! {
                _ = tick.tick() => ping(),
                _ = stop.wait_for(|v| *v) => return,
            }
        }
    });
}
