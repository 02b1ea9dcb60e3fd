//! Property tests: the rings agree with a naive recomputation over a plain list of samples.

use proptest::prelude::*;
use smartproxy_throughput::{KeyedSeries, Sample, Series, SeriesConfig, WindowSum};

/// The naive model: every push kept, with its time clamped as the series documents.
#[derive(Debug)]
struct Naive {
    cfg: SeriesConfig,
    start: u64,
    now: u64,
    pushes: Vec<(u64, Sample)>,
}

impl Naive {
    fn new(cfg: SeriesConfig, start: u64) -> Self {
        Self { cfg, start, now: start, pushes: Vec::new() }
    }

    fn push(&mut self, t: u64, s: Sample) {
        self.now = self.now.max(t);
        self.pushes.push((self.now, s));
    }

    fn sum(&self, keep: impl Fn(u64) -> bool) -> Sample {
        let mut sum = Sample::ZERO;
        for (t, s) in &self.pushes {
            if keep(*t) {
                sum += *s;
            }
        }
        sum
    }

    fn first_minute(&self, now: u64, w: u64) -> u64 {
        let lo = (now + 1).saturating_sub(w);
        let by_window = if lo <= self.start { self.start / 60 } else { lo.div_ceil(60) };
        let oldest = (now / 60 + 1).saturating_sub(self.cfg.minute_slots as u64);
        by_window.max(oldest).min(now / 60)
    }

    fn window(&self, now: u64, w: u64) -> WindowSum {
        let now = now.max(self.now);
        let w = w.clamp(1, self.cfg.max_window());
        let age = (now - self.start).max(1);
        if w <= self.cfg.second_slots as u64 {
            let sum = self.sum(|t| t + w > now && t <= now);
            WindowSum { sum, seconds: w.min(age) }
        } else {
            let first = self.first_minute(now, w);
            let sum = self.sum(|t| t / 60 >= first && t <= now);
            WindowSum { sum, seconds: (now + 1 - first * 60).min(age) }
        }
    }

    fn history(&self, now: u64, n: u64) -> Vec<(u64, Sample)> {
        let now = now.max(self.now);
        let n = n.clamp(1, self.cfg.max_window());
        if n <= self.cfg.second_slots as u64 {
            let first = (now + 1).saturating_sub(n).max(self.start);
            (first..=now).map(|t| (t, self.sum(|x| x == t))).collect()
        } else {
            let first = self.first_minute(now, n).max(self.start / 60);
            (first..=now / 60).map(|m| (m * 60, self.sum(|x| x / 60 == m))).collect()
        }
    }
}

/// A step of the random clock: mostly one second, sometimes the same second, backwards, or a
/// large skip.
fn step() -> impl Strategy<Value = i64> {
    prop_oneof![
        6 => Just(1i64),
        2 => Just(0i64),
        1 => -100i64..0,
        2 => 2i64..90,
        1 => 90i64..5_000,
    ]
}

fn sample() -> impl Strategy<Value = Sample> {
    (0u64..1_000_000, 0u64..1_000_000, 0u64..5).prop_map(|(a, b, c)| Sample::new(a, b, c))
}

fn config() -> impl Strategy<Value = SeriesConfig> {
    (1usize..150, 0usize..12).prop_map(|(s, m)| SeriesConfig::new(s, m))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn windows_and_history_match_naive(
        cfg in config(),
        start in 0u64..2_000_000,
        steps in prop::collection::vec((step(), sample()), 1..300),
        queries in prop::collection::vec((0u64..900, 0u64..200), 1..12),
    ) {
        let mut series = Series::new(cfg, start);
        let mut naive = Naive::new(cfg, start);
        let mut clock = start as i64;
        for (i, (dt, s)) in steps.iter().enumerate() {
            clock = (clock + dt).max(0);
            series.push(clock as u64, *s);
            naive.push(clock as u64, *s);
            if i % 37 == 0 || i + 1 == steps.len() {
                for (w, ahead) in &queries {
                    // Query at, after and before the newest sample.
                    for now in [naive.now, naive.now + ahead, naive.now.saturating_sub(*ahead)] {
                        prop_assert_eq!(series.window(now, *w), naive.window(now, *w),
                            "window {} at {}", w, now);
                        let got: Vec<(u64, Sample)> = series.history(now, *w)
                            .iter().map(|p| (p.timestamp, p.sample)).collect();
                        prop_assert_eq!(got, naive.history(now, *w), "history {} at {}", w, now);
                    }
                }
            }
        }
        prop_assert_eq!(series.total(), naive.sum(|_| true));
    }

    #[test]
    fn keyed_matches_naive_without_eviction(
        start in 0u64..100_000,
        steps in prop::collection::vec((step(), 0u8..6, sample()), 1..200),
        w in 1u64..200,
    ) {
        let cfg = SeriesConfig::new(60, 5);
        let mut keyed = KeyedSeries::new(cfg, 16, start);
        let mut naive: Vec<Naive> = (0..6).map(|_| Naive::new(cfg, start)).collect();
        let mut clock = start as i64;
        for (dt, k, s) in &steps {
            clock = (clock + dt).max(0);
            keyed.push(k, clock as u64, *s);
            if !s.is_zero() {
                naive[*k as usize].push(keyed.now(), *s);
            }
        }
        for k in 0u8..6 {
            let model = &naive[k as usize];
            match keyed.window(&k, w) {
                None => prop_assert!(model.pushes.is_empty()),
                Some(got) => prop_assert_eq!(got, model.window(keyed.now(), w)),
            }
        }
    }

    #[test]
    fn keyed_evicts_least_recently_active(
        max in 1usize..40,
        steps in prop::collection::vec((0u64..3, 0u32..100), 1..400),
    ) {
        let mut keyed = KeyedSeries::new(SeriesConfig::new(10, 0), max, 0);
        let mut last_seen = std::collections::HashMap::new();
        let mut clock = 0;
        for (dt, k) in &steps {
            clock += dt;
            let before: Vec<(u32, u64)> = last_seen.iter().map(|(k, t)| (*k, *t)).collect();
            keyed.push(k, clock, Sample::new(1, 0, 0));
            prop_assert!(keyed.len() <= max);
            last_seen.insert(*k, clock);
            // Whoever was dropped by this push was no more recently active than any survivor
            // (the new key aside).
            let dropped: Vec<u64> = before.iter()
                .filter(|(key, _)| !keyed.contains(key)).map(|(_, t)| *t).collect();
            for (key, t) in &before {
                if keyed.contains(key) && key != k {
                    for d in &dropped {
                        prop_assert!(d <= t);
                    }
                }
            }
            last_seen.retain(|key, _| keyed.contains(key));
        }
    }
}

#[test]
fn young_process_divides_by_its_age() {
    let mut s = Series::new(SeriesConfig::default(), 100);
    s.push(101, Sample::new(500, 0, 0));
    s.push(102, Sample::new(500, 0, 0));
    let w = s.window(102, 60);
    assert_eq!(w.seconds, 2);
    assert!((w.rate().bytes_in - 500.0).abs() < f64::EPSILON);
}

#[test]
fn day_window_uses_minutes() {
    let start = 0;
    let mut s = Series::new(SeriesConfig::default(), start);
    for t in 1..=7_200 {
        s.push(t, Sample::new(10, 20, 0));
    }
    let day = s.window(7_200, 86_400);
    // The first minute (0) holds seconds 1..59 only; the window is the whole age.
    assert_eq!(day.seconds, 7_200);
    assert_eq!(day.sum.bytes_in, 72_000);
    let h = s.history(7_200, 7_200);
    assert_eq!(h.len(), 120);
    assert_eq!(h[0].timestamp, 60);
    assert_eq!(h[0].sample.bytes_out, 1_200);
}

#[test]
fn memory_of_default_rings_is_under_one_megabyte() {
    let s = Series::new(SeriesConfig::default(), 0);
    assert!(s.memory_bytes() < 1 << 20, "{} bytes", s.memory_bytes());
}

#[test]
fn clock_backwards_counts_in_newest_second_and_skips_zero_slots() {
    let mut s = Series::new(SeriesConfig::new(10, 2), 1_000);
    s.push(1_005, Sample::new(1, 0, 0));
    s.push(990, Sample::new(2, 0, 0)); // backwards: lands in 1005
    assert_eq!(s.second(1_005).bytes_in, 3);
    s.push(1_000_000, Sample::new(4, 0, 0)); // huge skip: old slots zeroed
    assert_eq!(s.window(1_000_000, 10).sum.bytes_in, 4);
    assert_eq!(s.window(1_000_000, 120).sum.bytes_in, 4);
    assert_eq!(s.total().bytes_in, 7);
}
