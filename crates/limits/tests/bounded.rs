//! Memory and correctness of `IpLimiter` at scale and under concurrency.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;
use smartproxy_limits::{IpLimiter, IpLimits, Refused};

fn v4(i: u32) -> IpAddr {
    IpAddr::from(i.to_be_bytes())
}

/// 1,000,000 distinct addresses, each admitted and released at once under a rate limit:
/// the table never holds more than `max_tracked` entries (plus nothing for closed ones).
#[test]
fn a_million_addresses_stay_within_max_tracked() {
    let max_tracked = 65_536;
    let l = IpLimiter::new(IpLimits { max_open: 10, per_minute: 60, max_tracked });
    let t = Duration::from_secs(1);
    let mut peak = 0;
    for i in 0..1_000_000u32 {
        let g = l.try_acquire_at(v4(i), t).expect("first connection of each address");
        drop(g);
        if i % 50_000 == 0 {
            peak = peak.max(l.tracked());
        }
    }
    let end = l.tracked();
    assert!(end <= max_tracked, "{end} entries after 1M addresses");
    assert!(peak <= max_tracked + 64, "peak {peak}");
    // The same 1M addresses with open connections held: bounded by the open ones only.
    let held: Vec<_> =
        (0..1000u32).map(|i| l.try_acquire_at(v4(i + 5_000_000), t).unwrap()).collect();
    assert!(l.tracked() <= max_tracked + 1000);
    drop(held);
}

/// Without a rate limit, closed addresses leave nothing behind: 1M admitted and released, 0
/// entries.
#[test]
fn counting_only_keeps_nothing_for_closed_connections() {
    let l = IpLimiter::new(IpLimits { max_open: 5, ..IpLimits::default() });
    for i in 0..1_000_000u32 {
        drop(l.try_acquire(v4(i)).unwrap());
    }
    assert_eq!(l.tracked(), 0);
}

/// Threads admit and release on a few addresses: the open count never exceeds the limit and
/// every guard releases exactly once.
#[test]
fn concurrent_admission_never_exceeds_the_limit() {
    let l = IpLimiter::new(IpLimits { max_open: 3, ..IpLimits::default() });
    let ips: Vec<IpAddr> = (1..=4u32).map(v4).collect();
    std::thread::scope(|s| {
        for t in 0..4 {
            let (l, ips) = (Arc::clone(&l), ips.clone());
            s.spawn(move || {
                let mut held = Vec::new();
                for round in 0..5000usize {
                    let ip = ips[(round + t) % ips.len()];
                    if let Ok(g) = l.try_acquire(ip) {
                        held.push(g);
                    }
                    assert!(l.open(ip) <= 3);
                    if round % 3 == 0 && !held.is_empty() {
                        held.swap_remove(round % held.len());
                    }
                }
            });
        }
    });
    assert_eq!(l.tracked(), 0, "every guard released exactly once");
}

proptest! {
    /// Against a model: a sequence of admissions and releases at increasing times gives the
    /// same answers as a plain GCRA + counter per address.
    #[test]
    fn matches_a_model(ops in prop::collection::vec((0u8..4, any::<bool>(), 0u64..3_000), 1..300),
                       max_open in 0u32..4, per_minute in 0u32..5) {
        let l = IpLimiter::new(IpLimits { max_open, per_minute, max_tracked: 1_000 });
        let interval = if per_minute == 0 { 0 } else { 60_000_000_000u64 / u64::from(per_minute) };
        let tolerance = interval * u64::from(per_minute.max(1) - 1);
        let mut now = 1_000_000_000u64;
        let mut model: std::collections::HashMap<u8, (u32, u64)> = Default::default();
        let mut held: Vec<(u8, smartproxy_limits::IpGuard)> = Vec::new();
        for (who, acquire, dt) in ops {
            now += dt * 10_000_000;
            if acquire {
                let (open, tat) = model.get(&who).copied().unwrap_or((0, 0));
                let mut expect_ok = true;
                let mut new_tat = tat;
                if interval > 0 {
                    let t = tat.max(now);
                    if t - now > tolerance { expect_ok = false; } else { new_tat = t + interval; }
                }
                let rate_ok = expect_ok;
                if rate_ok && max_open > 0 && open >= max_open { expect_ok = false; }
                let got = l.try_acquire_at(v4(u32::from(who)), Duration::from_nanos(now));
                prop_assert_eq!(got.is_ok(), expect_ok);
                if let Err(Refused::TooManyOpen { .. }) = &got { prop_assert!(rate_ok); }
                if rate_ok { model.insert(who, (open + u32::from(expect_ok), new_tat)); }
                if let Ok(g) = got { held.push((who, g)); }
            } else if let Some(pos) = held.iter().position(|(w, _)| *w == who) {
                held.swap_remove(pos);
                if let Some(m) = model.get_mut(&who) { m.0 -= 1; }
            }
            for (w, (open, _)) in &model {
                prop_assert_eq!(l.open(v4(u32::from(*w))), *open);
            }
        }
    }
}

/// The keyed request limiter: 1,000,000 distinct keys under a one-minute window (none of
/// them expires during the test) leave at most `max_tracked` entries, and a key that stays
/// keeps being limited meanwhile.
#[test]
fn a_million_keys_stay_within_max_tracked() {
    use smartproxy_limits::{Rate, RateLimiter};
    let max_tracked = 65_536;
    let l = RateLimiter::<u64>::new(Rate::new(3, Duration::from_secs(60)), max_tracked);
    let t = Duration::from_secs(1);
    let mut peak = 0;
    for i in 0..1_000_000u64 {
        l.check_at(&i, t).expect("the first request of each key");
        if i % 50_000 == 0 {
            peak = peak.max(l.tracked());
        }
    }
    assert!(l.tracked() <= max_tracked, "{} entries after 1M keys", l.tracked());
    assert!(peak <= max_tracked, "peak {peak}");
    // A hot key is still limited exactly at its figure.
    let hot = u64::MAX;
    for _ in 0..3 {
        l.check_at(&hot, t).unwrap();
    }
    assert!(l.check_at(&hot, t).is_err());
}
