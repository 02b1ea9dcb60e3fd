//! systemd's notification protocol (`Type=notify`): `READY=1` once every listener is bound,
//! `RELOADING=1` (with `MONOTONIC_USEC`) and `READY=1` around each reload, `STOPPING=1` when
//! the drain begins, and `WATCHDOG=1` every half `WatchdogSec` when the service has one. Without
//! `NOTIFY_SOCKET` (not started by systemd) every call does nothing.

use std::time::Duration;

use sd_notify::NotifyState;
use tokio::sync::watch;

fn send(states: &[NotifyState<'_>]) {
    // Keep NOTIFY_SOCKET: reloads and the stop notify later.
    if let Err(e) = sd_notify::notify(false, states) {
        tracing::warn!(error = %e, "cannot notify systemd (NOTIFY_SOCKET)");
    }
}

/// Every listener is bound: the service is up.
pub(crate) fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// A reload begins (`Type=notify-reload` wants the monotonic time with it).
pub(crate) fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send(&[NotifyState::Reloading, now]),
        Err(_) => send(&[NotifyState::Reloading]),
    }
}

/// The reload is over (applied or refused: the service serves either way).
pub(crate) fn reloaded(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// Shutdown begins.
pub(crate) fn stopping() {
    send(&[NotifyState::Stopping, NotifyState::Status("draining connections")]);
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
                _ = tick.tick() => send(&[NotifyState::Watchdog]),
                _ = stop.wait_for(|v| *v) => return,
            }
        }
    });
}
