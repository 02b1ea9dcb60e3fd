//! Quiet logs under attack: per reason, at most [`BURST`] lines a second; the rest are counted
//! and reported by one summary line per reason and second ("N similar lines suppressed"), as
//! SmartProxy's log deduplicator does. A flood of refused connections thus writes a bounded
//! number of lines while every refusal is still counted in the metrics.
//!
//! The check is one relaxed `fetch_add` on the reason's slot (no lock, no clock read): a task
//! refills every slot once a second ([`LogLimiter::flush`]) and writes the summaries.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};

/// Lines per reason and second that are written in full.
pub(crate) const BURST: u32 = 5;

/// How often the slots are refilled and the summaries written.
pub(crate) const INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

#[derive(Debug)]
struct Slot {
    name: &'static str,
    used: AtomicU32,
    suppressed: AtomicU64,
}

/// One slot per reason name.
#[derive(Debug)]
pub(crate) struct LogLimiter {
    slots: Box<[Slot]>,
}

impl Default for LogLimiter {
    fn default() -> Self {
        let names = smartproxy_metrics::RefuseReason::ALL
            .iter()
            .map(|r| r.as_str())
            .chain(["backend_connect_failed", "proxy_header_rejected"]);
        Self::new(names)
    }
}

impl LogLimiter {
    pub(crate) fn new(names: impl IntoIterator<Item = &'static str>) -> Self {
        let slots = names
            .into_iter()
            .map(|name| Slot { name, used: AtomicU32::new(0), suppressed: AtomicU64::new(0) })
            .collect();
        Self { slots }
    }

    /// Whether a line for `reason` may be written now; counts it as suppressed otherwise.
    /// An unknown reason is always written.
    pub(crate) fn allow(&self, reason: &str) -> bool {
        let Some(slot) = self.slots.iter().find(|s| s.name == reason) else { return true };
        if slot.used.fetch_add(1, Relaxed) < BURST {
            return true;
        }
        // Keep `used` from wrapping in a very long second.
        slot.used.store(BURST, Relaxed);
        slot.suppressed.fetch_add(1, Relaxed);
        false
    }

    /// Refills every slot and writes one summary line per reason that suppressed lines since
    /// the last call; returns them.
    pub(crate) fn flush(&self) -> Vec<(&'static str, u64)> {
        let mut out = Vec::new();
        for s in self.slots.iter() {
            s.used.store(0, Relaxed);
            let n = s.suppressed.swap(0, Relaxed);
            if n > 0 {
                tracing::info!(
                    reason = s.name,
                    suppressed = n,
                    "{n} similar lines suppressed (at most {BURST} a second per reason)"
                );
                out.push((s.name, n));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_per_reason_then_counted_until_the_next_flush() {
        let l = LogLimiter::new(["a", "b"]);
        let written = (0..1000).filter(|_| l.allow("a")).count();
        assert_eq!(written, BURST as usize);
        assert!(l.allow("b"), "reasons have their own budget");
        assert!(l.allow("unknown"));
        assert_eq!(l.flush(), vec![("a", 1000 - u64::from(BURST))]);
        assert!(l.flush().is_empty(), "nothing suppressed since");
        assert_eq!((0..10).filter(|_| l.allow("a")).count(), BURST as usize, "refilled");
    }
}
