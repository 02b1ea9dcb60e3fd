//! One time series: a ring of 1-second samples and a ring of 1-minute aggregates.

use crate::sample::{HistoryPoint, Sample, WindowSum};

/// Seconds in a minute slot.
const MINUTE: u64 = 60;

/// Sizes of the two rings of a [`Series`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeriesConfig {
    /// Number of 1-second slots kept (the retention of 1 s samples, in seconds). At least 1.
    pub second_slots: usize,
    /// Number of 1-minute slots kept, the open minute included. 0 turns minute aggregates off.
    pub minute_slots: usize,
}

impl SeriesConfig {
    /// 1 h of 1-second samples and 24 h of 1-minute aggregates.
    pub const DEFAULT: Self = Self { second_slots: 3600, minute_slots: 1440 };

    /// Builds a configuration, raising `second_slots` to at least 1.
    #[must_use]
    pub const fn new(second_slots: usize, minute_slots: usize) -> Self {
        let second_slots = if second_slots == 0 { 1 } else { second_slots };
        Self { second_slots, minute_slots }
    }

    /// The longest window this configuration can answer, in seconds.
    #[must_use]
    pub const fn max_window(&self) -> u64 {
        let secs = self.second_slots as u64;
        let mins = self.minute_slots as u64 * MINUTE;
        if mins > secs { mins } else { secs }
    }

    /// Bytes of heap one series of this configuration holds.
    #[must_use]
    pub const fn heap_bytes(&self) -> usize {
        (self.second_slots + self.minute_slots) * size_of::<Sample>()
    }
}

impl Default for SeriesConfig {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// A throughput time series with fixed memory.
///
/// Time is a `u64` count of seconds on the caller's clock (any epoch). A sample pushed at time
/// `t` stands for the traffic of the second that ends at `t`, that is `(t - 1, t]`.
///
/// * Both rings are allocated once, in [`Series::new`]; nothing allocates afterwards except
///   [`Series::history`], which returns a `Vec`.
/// * A minute is folded into the minute ring when it closes (the first push in a later minute);
///   until then it lives in an accumulator, so the cost of aggregation is one addition per push.
/// * Time never goes backwards inside a series: a push stamped earlier than the newest one is
///   counted in the newest second. A jump forward zeroes the skipped slots (bounded by the ring
///   size, however large the jump).
#[derive(Debug, Clone)]
pub struct Series {
    cfg: SeriesConfig,
    secs: Box<[Sample]>,
    mins: Box<[Sample]>,
    /// Time the series started; windows never reach before it.
    start: u64,
    /// Newest sample time.
    now: u64,
    /// Traffic of minute `now / 60` so far.
    minute_acc: Sample,
    /// Everything ever pushed.
    total: Sample,
}

impl Series {
    /// A new, empty series that starts at `start`.
    #[must_use]
    pub fn new(cfg: SeriesConfig, start: u64) -> Self {
        let cfg = SeriesConfig::new(cfg.second_slots, cfg.minute_slots);
        Self {
            cfg,
            secs: vec![Sample::ZERO; cfg.second_slots].into_boxed_slice(),
            mins: vec![Sample::ZERO; cfg.minute_slots].into_boxed_slice(),
            start,
            now: start,
            minute_acc: Sample::ZERO,
            total: Sample::ZERO,
        }
    }

    /// Empties the series and restarts it at `start`, keeping its memory.
    pub fn reset(&mut self, start: u64) {
        self.secs.fill(Sample::ZERO);
        self.mins.fill(Sample::ZERO);
        self.start = start;
        self.now = start;
        self.minute_acc = Sample::ZERO;
        self.total = Sample::ZERO;
    }

    /// The ring sizes.
    #[must_use]
    pub fn config(&self) -> SeriesConfig {
        self.cfg
    }

    /// Time the series started.
    #[must_use]
    pub fn start(&self) -> u64 {
        self.start
    }

    /// Time of the newest sample (the start time before the first push).
    #[must_use]
    pub fn now(&self) -> u64 {
        self.now
    }

    /// Everything pushed since the start.
    #[must_use]
    pub fn total(&self) -> Sample {
        self.total
    }

    /// Bytes this series occupies (struct plus both rings).
    #[must_use]
    pub fn memory_bytes(&self) -> usize {
        size_of::<Self>() + self.cfg.heap_bytes()
    }

    /// Adds `sample` to the second ending at `now`. See the type docs for clock rules.
    pub fn push(&mut self, now: u64, sample: Sample) {
        self.advance(now);
        let idx = self.sec_index(self.now);
        self.secs[idx] += sample;
        self.minute_acc += sample;
        self.total += sample;
    }

    /// Moves the clock to `now` without traffic (zeroing skipped slots, closing minutes).
    /// Earlier times are ignored.
    pub fn advance(&mut self, now: u64) {
        if now <= self.now {
            return;
        }
        let r = self.cfg.second_slots as u64;
        let gap = now - self.now;
        if gap >= r {
            self.secs.fill(Sample::ZERO);
        } else {
            for t in self.now + 1..=now {
                let idx = self.sec_index(t);
                self.secs[idx] = Sample::ZERO;
            }
        }
        let cur_m = self.now / MINUTE;
        let new_m = now / MINUTE;
        if new_m > cur_m {
            let m = self.cfg.minute_slots as u64;
            if m > 0 {
                if new_m - cur_m >= m {
                    // Even the minute that just closed is out of retention.
                    self.mins.fill(Sample::ZERO);
                } else {
                    let idx = self.min_index(cur_m);
                    self.mins[idx] = self.minute_acc;
                    for mm in cur_m + 1..new_m {
                        let idx = self.min_index(mm);
                        self.mins[idx] = Sample::ZERO;
                    }
                }
            }
            self.minute_acc = Sample::ZERO;
        }
        self.now = now;
    }

    fn sec_index(&self, t: u64) -> usize {
        // The modulo is below `second_slots`, a usize.
        (t % self.cfg.second_slots as u64) as usize
    }

    fn min_index(&self, m: u64) -> usize {
        (m % self.cfg.minute_slots as u64) as usize
    }

    /// The sample of second `t`, zero outside retention or in the future.
    #[must_use]
    pub fn second(&self, t: u64) -> Sample {
        let r = self.cfg.second_slots as u64;
        if t > self.now || t + r <= self.now || t < self.start {
            return Sample::ZERO;
        }
        self.secs[self.sec_index(t)]
    }

    /// The aggregate of minute `m` (seconds `60m .. 60m + 59`), zero outside retention.
    /// The newest minute is the open accumulator.
    #[must_use]
    pub fn minute(&self, m: u64) -> Sample {
        let cur = self.now / MINUTE;
        let slots = self.cfg.minute_slots as u64;
        if m > cur || slots == 0 || m + slots <= cur {
            return Sample::ZERO;
        }
        if m == cur { self.minute_acc } else { self.mins[self.min_index(m)] }
    }

    /// Totals over the `window` seconds that end at `now` (samples stamped in
    /// `(now - window, now]`).
    ///
    /// `now` earlier than the newest sample is raised to it. Windows up to the 1-second retention
    /// are exact to the second; longer ones (up to [`SeriesConfig::max_window`]) use minute
    /// aggregates and start at the first whole minute inside the window. `window` is raised to
    /// 1 and lowered to the longest window kept. The returned `seconds` is the real length:
    /// `min(window, now - start)`, at least 1.
    #[must_use]
    pub fn window(&self, now: u64, window: u64) -> WindowSum {
        let now = now.max(self.now);
        let window = window.clamp(1, self.cfg.max_window());
        let age = now.saturating_sub(self.start).max(1);
        let mut sum = Sample::ZERO;
        if window <= self.cfg.second_slots as u64 {
            let first = (now + 1).saturating_sub(window).max(self.start);
            let last = now.min(self.now);
            if first <= last {
                // At most `second_slots` seconds, all inside retention: one or two slices.
                let len = (last - first + 1) as usize;
                let a = self.sec_index(first);
                let (head, wrap) = if a + len <= self.secs.len() {
                    (&self.secs[a..a + len], &self.secs[..0])
                } else {
                    (&self.secs[a..], &self.secs[..a + len - self.secs.len()])
                };
                sum = sum_slots(head);
                sum += sum_slots(wrap);
            }
            WindowSum { sum, seconds: window.min(age) }
        } else {
            let first_m = self.first_minute(now, window);
            for m in first_m..=now / MINUTE {
                sum += self.minute(m);
            }
            let span = now + 1 - first_m * MINUTE;
            WindowSum { sum, seconds: span.min(age) }
        }
    }

    /// First minute of a minute-resolution window: the first whole minute whose seconds all lie
    /// in `(now - window, now]`, no older than the minute ring keeps, and no later than the
    /// current minute.
    fn first_minute(&self, now: u64, window: u64) -> u64 {
        let lo = (now + 1).saturating_sub(window);
        // A window that reaches back past the start covers everything since the start.
        let first = if lo <= self.start { self.start / MINUTE } else { lo.div_ceil(MINUTE) };
        let oldest = (now / MINUTE + 1).saturating_sub(self.cfg.minute_slots as u64);
        // A window shorter than a minute that holds no whole minute uses the current one.
        first.max(oldest).min(now / MINUTE)
    }

    /// History for graphs over the `seconds` that end at `now`, oldest first.
    ///
    /// Up to the 1-second retention, one point per second (`(now - seconds, now]`, from the start
    /// on); beyond it, one point per minute, from the first whole minute inside the range.
    #[must_use]
    pub fn history(&self, now: u64, seconds: u64) -> Vec<HistoryPoint> {
        let now = now.max(self.now);
        let seconds = seconds.clamp(1, self.cfg.max_window());
        if seconds <= self.cfg.second_slots as u64 {
            let first = (now + 1).saturating_sub(seconds).max(self.start);
            (first..=now)
                .map(|t| HistoryPoint { timestamp: t, span: 1, sample: self.second(t) })
                .collect()
        } else {
            let first_m = self.first_minute(now, seconds).max(self.start / MINUTE);
            (first_m..=now / MINUTE)
                .map(|m| HistoryPoint {
                    timestamp: m * MINUTE,
                    span: (now + 1 - m * MINUTE).min(MINUTE),
                    sample: self.minute(m),
                })
                .collect()
        }
    }
}

/// Sum of a run of slots with wrapping adds (the compiler vectorises them): a window holds at
/// most a day of samples, far from overflowing a `u64`.
fn sum_slots(slots: &[Sample]) -> Sample {
    let (mut i, mut o, mut e) = (0u64, 0u64, 0u64);
    for x in slots {
        i = i.wrapping_add(x.bytes_in);
        o = o.wrapping_add(x.bytes_out);
        e = e.wrapping_add(x.events);
    }
    Sample::new(i, o, e)
}
