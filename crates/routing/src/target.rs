//! Target selection: round-robin, least-connections, ip-hash, with live connection counts.

use std::hash::{Hash, Hasher};
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use crate::ip::canonical_ip;
use crate::model::{HealthCheck, HealthOptions, LoadBalancing, Target, TargetPort};

/// The targets of a forward route, with a round-robin cursor and open-connection counts.
#[derive(Debug)]
pub(crate) struct TargetSet {
    pub(crate) list: Box<[Target]>,
    /// Each target's host as an IP address when it is one, parsed once here rather than at
    /// every connect.
    ips: Box<[Option<IpAddr>]>,
    pub(crate) lb: LoadBalancing,
    rr: AtomicUsize,
    pub(crate) active: Arc<[AtomicUsize]>,
    /// Outcome of the latest connects, per target (kept across reloads with `active`).
    pub(crate) health: Arc<[TargetHealth]>,
    /// How long a target that failed a connect is skipped (milliseconds; 0: never skipped).
    cooldown_ms: u64,
    /// Active checks (`health.check`), run by the engine's checker.
    check: Option<HealthCheck>,
}

/// What the proxy saw of a target's connects: written only when a connect fails, or when the
/// first connect after a failure succeeds (one relaxed load per connect otherwise), so the
/// connection path stays free of locks and clock reads while every target is up. The clock is
/// read only to decide whether a down target's cool-down is over.
#[derive(Debug, Default)]
pub(crate) struct TargetHealth {
    down: AtomicBool,
    failures: AtomicU64,
    /// UNIX milliseconds of the latest failed connect (0: none).
    last_failure_ms: AtomicU64,
    last_error: AtomicU8,
    /// UNIX milliseconds of the latest success after a failure (0: none).
    recovered_ms: AtomicU64,
    /// While down: UNIX milliseconds from which one connection may try the target again.
    retry_at_ms: AtomicU64,
    /// Active checks (written by the checker only): down after `fall` failures in a row,
    /// up after `rise` passes in a row. A target starts up.
    check_down: AtomicBool,
    /// Results in a row of the same kind as the latest one.
    check_streak: AtomicU32,
    checks: AtomicU64,
    check_failures: AtomicU64,
    /// UNIX milliseconds of the latest check (0: none yet).
    last_check_ms: AtomicU64,
    /// 0: passed; else the [`ConnectFailure`] code of the latest failed check.
    last_check_error: AtomicU8,
    /// UNIX milliseconds from which the next check is due (claimed by the checker).
    next_check_ms: AtomicU64,
}

/// Why a connect to a target failed, as the caller classified it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum ConnectFailure {
    /// The target refused the connection (RST).
    Refused,
    /// No answer within the connect timeout.
    Timeout,
    /// The name did not resolve.
    Resolve,
    /// Any other error (unreachable network, reset during setup, TLS to the target, ...).
    Other,
    /// The proxy itself is out of resources (no file descriptor: EMFILE / ENFILE; no buffer
    /// or memory: ENOBUFS / ENOMEM): not the target's fault, so it is not marked down.
    Local,
}

impl ConnectFailure {
    fn code(self) -> u8 {
        match self {
            Self::Refused => 1,
            Self::Timeout => 2,
            Self::Resolve => 3,
            Self::Other => 4,
            Self::Local => 5,
        }
    }

    fn from_code(c: u8) -> Option<Self> {
        Some(match c {
            1 => Self::Refused,
            2 => Self::Timeout,
            3 => Self::Resolve,
            4 => Self::Other,
            5 => Self::Local,
            _ => return None,
        })
    }

    /// Classifies an I/O error of a connect.
    pub fn of_io(e: &std::io::Error) -> Self {
        // EMFILE, ENFILE, ENOBUFS, ENOMEM on Linux.
        if matches!(e.raw_os_error(), Some(24 | 23 | 105 | 12)) {
            return Self::Local;
        }
        match e.kind() {
            std::io::ErrorKind::ConnectionRefused => Self::Refused,
            std::io::ErrorKind::TimedOut => Self::Timeout,
            _ => Self::Other,
        }
    }
}

/// A target's connect health as last observed: the engine marks a target down when a connect
/// fails and up again at the next successful connect (passive checks: no probes are sent).
/// Load balancing skips a down target until `retry_at_unix_ms` (the route's `health.cooldown`
/// after the failure), then offers it to one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[non_exhaustive]
pub struct TargetHealthSnapshot {
    /// The latest connect failed.
    pub down: bool,
    /// Failed connects since the target first appeared (kept across reloads).
    pub connect_failures: u64,
    /// UNIX milliseconds of the latest failed connect.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_failure_unix_ms: Option<u64>,
    /// Why the latest connect failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<ConnectFailure>,
    /// UNIX milliseconds of the first successful connect after the latest failure.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recovered_unix_ms: Option<u64>,
    /// While down: UNIX milliseconds from which a connection may try the target again.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_at_unix_ms: Option<u64>,
    /// Active checks, when the route has `health.check` (`down` is then true while either
    /// the connects or the checks say so).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub check: Option<CheckSnapshot>,
}

/// The active checks of a target (`health.check`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[non_exhaustive]
pub struct CheckSnapshot {
    /// `"up"`, or `"down"` after `fall` failed checks in a row (until `rise` passed ones).
    pub state: CheckState,
    /// `"passed"`, `"failed"`, or absent before the first check.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_result: Option<CheckResult>,
    /// Why the latest check failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<ConnectFailure>,
    /// UNIX milliseconds of the latest check.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_check_unix_ms: Option<u64>,
    /// Results in a row like the latest one.
    pub consecutive: u32,
    /// Checks run, and failed, since the target first appeared (kept across reloads).
    pub checks: u64,
    /// Failed checks.
    pub failures: u64,
}

/// The state active checks put a target in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum CheckState {
    /// Serving (the initial state).
    #[default]
    Up,
    /// `fall` failed checks in a row: skipped by load balancing until `rise` pass.
    Down,
}

/// The outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum CheckResult {
    /// The connect succeeded within the timeout.
    Passed,
    /// It failed or timed out.
    Failed,
}

impl TargetHealth {
    fn failed(&self, now_unix_ms: u64, why: ConnectFailure, cooldown_ms: u64) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        self.last_failure_ms.store(now_unix_ms, Ordering::Relaxed);
        self.retry_at_ms.store(now_unix_ms.saturating_add(cooldown_ms), Ordering::Relaxed);
        self.last_error.store(why.code(), Ordering::Relaxed);
        self.down.store(true, Ordering::Relaxed);
    }

    /// `now` is only called when the target was down.
    fn connected(&self, now_unix_ms: impl FnOnce() -> u64) {
        if self.down.load(Ordering::Relaxed) {
            self.recovered_ms.store(now_unix_ms(), Ordering::Relaxed);
            self.down.store(false, Ordering::Relaxed);
        }
    }

    /// Whether a connection may be sent to this target now: it is up, or its cool-down is
    /// over and this caller wins the one try of the next cool-down (the others keep skipping
    /// it while that connect runs). `now` reads the clock, at most once per selection.
    fn available(&self, cooldown_ms: u64, now: &mut impl FnMut() -> u64) -> bool {
        if self.check_down.load(Ordering::Relaxed) {
            // Down by the active checks: only they bring it back.
            return false;
        }
        if cooldown_ms == 0 || !self.down.load(Ordering::Relaxed) {
            return true;
        }
        let retry_at = self.retry_at_ms.load(Ordering::Relaxed);
        let now = now();
        now >= retry_at
            && self
                .retry_at_ms
                .compare_exchange(
                    retry_at,
                    now.saturating_add(cooldown_ms),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
    }

    /// Records a check's outcome (`Ok` passed); `Some(up)` when it changed the state.
    fn checked(
        &self,
        now_unix_ms: u64,
        result: Result<(), ConnectFailure>,
        c: &HealthCheck,
    ) -> Option<bool> {
        let first = self.checks.fetch_add(1, Ordering::Relaxed) == 0;
        self.last_check_ms.store(now_unix_ms, Ordering::Relaxed);
        let code = match result {
            Ok(()) => 0,
            Err(why) => {
                self.check_failures.fetch_add(1, Ordering::Relaxed);
                why.code()
            }
        };
        let previous = self.last_check_error.swap(code, Ordering::Relaxed);
        let same_kind = !first && (previous == 0) == (code == 0);
        let streak = if same_kind {
            self.check_streak.fetch_add(1, Ordering::Relaxed).saturating_add(1)
        } else {
            self.check_streak.store(1, Ordering::Relaxed);
            1
        };
        let down = self.check_down.load(Ordering::Relaxed);
        match result {
            Ok(()) if down && streak >= c.rise => {
                self.check_down.store(false, Ordering::Relaxed);
                Some(true)
            }
            Err(_) if !down && streak >= c.fall => {
                self.check_down.store(true, Ordering::Relaxed);
                Some(false)
            }
            _ => None,
        }
    }

    /// Claims the check due at `now_unix_ms` (`true`: the caller runs it); the next one is
    /// due `interval_ms` later.
    fn claim_check(&self, now_unix_ms: u64, interval_ms: u64) -> bool {
        let next = self.next_check_ms.load(Ordering::Relaxed);
        now_unix_ms >= next
            && self
                .next_check_ms
                .compare_exchange(
                    next,
                    now_unix_ms.saturating_add(interval_ms),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
    }

    fn check_snapshot(&self) -> CheckSnapshot {
        let checks = self.checks.load(Ordering::Relaxed);
        let code = self.last_check_error.load(Ordering::Relaxed);
        CheckSnapshot {
            state: if self.check_down.load(Ordering::Relaxed) {
                CheckState::Down
            } else {
                CheckState::Up
            },
            last_result: (checks > 0).then_some(if code == 0 {
                CheckResult::Passed
            } else {
                CheckResult::Failed
            }),
            last_error: ConnectFailure::from_code(code),
            last_check_unix_ms: (checks > 0).then(|| self.last_check_ms.load(Ordering::Relaxed)),
            consecutive: self.check_streak.load(Ordering::Relaxed),
            checks,
            failures: self.check_failures.load(Ordering::Relaxed),
        }
    }

    fn snapshot(&self, checked: bool) -> TargetHealthSnapshot {
        let opt = |v: u64| (v != 0).then_some(v);
        let down = self.down.load(Ordering::Relaxed);
        let check = checked.then(|| self.check_snapshot());
        TargetHealthSnapshot {
            down: down || check.is_some_and(|c| c.state == CheckState::Down),
            check,
            retry_at_unix_ms: if down {
                opt(self.retry_at_ms.load(Ordering::Relaxed))
            } else {
                None
            },
            connect_failures: self.failures.load(Ordering::Relaxed),
            last_failure_unix_ms: opt(self.last_failure_ms.load(Ordering::Relaxed)),
            last_error: ConnectFailure::from_code(self.last_error.load(Ordering::Relaxed)),
            recovered_unix_ms: opt(self.recovered_ms.load(Ordering::Relaxed)),
        }
    }
}

impl TargetSet {
    pub(crate) fn new(list: Vec<Target>, lb: LoadBalancing, health: HealthOptions) -> Self {
        let active: Arc<[AtomicUsize]> = list.iter().map(|_| AtomicUsize::new(0)).collect();
        let states: Arc<[TargetHealth]> = list.iter().map(|_| TargetHealth::default()).collect();
        let cooldown_ms = millis(health.cooldown);
        let ips = list.iter().map(Target::ip).collect();
        Self {
            list: list.into_boxed_slice(),
            ips,
            lb,
            rr: AtomicUsize::new(0),
            active,
            health: states,
            cooldown_ms,
            check: health.check,
        }
    }

    /// `index` when its target may be tried now, else the next one in ring order that may;
    /// `index` itself when none may (every target down and cooling down: try anyway).
    fn skip_down(&self, index: usize) -> usize {
        let n = self.list.len();
        let mut now_ms = None;
        let mut now = || *now_ms.get_or_insert_with(unix_ms);
        (0..n)
            .map(|d| (index + d) % n)
            .find(|&i| self.health.get(i).is_none_or(|h| h.available(self.cooldown_ms, &mut now)))
            .unwrap_or(index)
    }

    /// Keeps the live counts, health and the cursor of `prev` when the target list is the
    /// same.
    pub(crate) fn inherit(&mut self, prev: &TargetSet) {
        if self.list == prev.list {
            self.active = Arc::clone(&prev.active);
            self.health = Arc::clone(&prev.health);
            self.rr.store(prev.rr.load(Ordering::Relaxed), Ordering::Relaxed);
        }
    }

    /// Picks a target. `attempt` 0 is the first choice; `attempt` k > 0 is the k-th next
    /// candidate after refused connects, and `None` once every target has been offered.
    pub(crate) fn select(
        &self,
        client_ip: IpAddr,
        listen_port: u16,
        attempt: usize,
    ) -> Option<SelectedTarget<'_>> {
        let n = self.list.len();
        if n == 0 || attempt >= n {
            return None;
        }
        let index = match self.lb {
            LoadBalancing::IpHash => (ip_hash(client_ip) as usize).wrapping_add(attempt) % n,
            LoadBalancing::LeastConnections => self.least_loaded(attempt),
            // Round-robin and anything added later.
            _ => {
                if attempt == 0 {
                    self.rr.fetch_add(1, Ordering::Relaxed) % n
                } else {
                    // Relative to the latest pick. Under concurrent selection this can
                    // repeat a target; `next_after` is exact.
                    self.rr.load(Ordering::Relaxed).wrapping_sub(1).wrapping_add(attempt) % n
                }
            }
        };
        Some(self.make(self.skip_down(index), listen_port))
    }

    /// The candidate after `prev` (in ring order), or `None` when `attempts` targets
    /// have been tried.
    pub(crate) fn next_after(
        &self,
        prev_index: usize,
        attempts: usize,
        listen_port: u16,
    ) -> Option<SelectedTarget<'_>> {
        let n = self.list.len();
        if n == 0 || attempts >= n {
            return None;
        }
        let index = match self.lb {
            LoadBalancing::LeastConnections => {
                // Least loaded among the others; ties go to the next in ring order.
                (1..n)
                    .map(|d| (prev_index + d) % n)
                    .min_by_key(|&i| self.active[i].load(Ordering::Relaxed))
                    .unwrap_or((prev_index + 1) % n)
            }
            _ => (prev_index + 1) % n,
        };
        Some(self.make(self.skip_down(index), listen_port))
    }

    /// The `rank`-th least loaded target; ties broken in ring order from the round-robin
    /// cursor so that idle targets share the load.
    fn least_loaded(&self, rank: usize) -> usize {
        let n = self.list.len();
        let start = if rank == 0 {
            self.rr.fetch_add(1, Ordering::Relaxed)
        } else {
            self.rr.load(Ordering::Relaxed).wrapping_sub(1)
        };
        let key = |i: usize| (self.active[i].load(Ordering::Relaxed), (i + n - start % n) % n);
        // Selection of the rank-th smallest key without allocating: O(n * rank).
        let mut last: Option<(usize, usize)> = None;
        let mut pick = start % n;
        for _ in 0..=rank {
            let mut best: Option<((usize, usize), usize)> = None;
            for i in 0..n {
                let k = key(i);
                if last.is_some_and(|l| k <= l) {
                    continue;
                }
                if best.is_none_or(|(bk, _)| k < bk) {
                    best = Some((k, i));
                }
            }
            match best {
                Some((k, i)) => {
                    last = Some(k);
                    pick = i;
                }
                None => break,
            }
        }
        pick
    }

    fn make(&self, index: usize, listen_port: u16) -> SelectedTarget<'_> {
        let target = &self.list[index];
        SelectedTarget {
            target,
            ip: self.ips[index],
            index,
            port: target.port.resolve(listen_port),
            guard: ConnectionGuard::new(Arc::clone(&self.active), index),
        }
    }

    pub(crate) fn active(&self, index: usize) -> usize {
        self.active.get(index).map_or(0, |a| a.load(Ordering::Relaxed))
    }

    pub(crate) fn connect_failed(&self, index: usize, now_unix_ms: u64, why: ConnectFailure) {
        if why == ConnectFailure::Local {
            return;
        }
        if let Some(h) = self.health.get(index) {
            h.failed(now_unix_ms, why, self.cooldown_ms);
        }
    }

    pub(crate) fn connected(&self, index: usize, now_unix_ms: impl FnOnce() -> u64) {
        if let Some(h) = self.health.get(index) {
            h.connected(now_unix_ms);
        }
    }

    pub(crate) fn health(&self, index: usize) -> TargetHealthSnapshot {
        let checked = self.check.is_some();
        self.health.get(index).map(|h| h.snapshot(checked)).unwrap_or_default()
    }

    pub(crate) fn check(&self) -> Option<HealthCheck> {
        self.check
    }

    /// The targets whose check is due at `now_unix_ms`, claimed for the caller: their index,
    /// host, parsed address and port (targets with `port = "preserve"` have no port to check
    /// and are left out).
    pub(crate) fn claim_due_checks(
        &self,
        now_unix_ms: u64,
    ) -> Vec<(usize, &str, Option<IpAddr>, u16)> {
        let Some(c) = self.check else { return Vec::new() };
        let interval = millis(c.interval);
        self.list
            .iter()
            .zip(self.health.iter())
            .enumerate()
            .filter_map(|(i, (t, h))| match t.port {
                TargetPort::Port(p) if h.claim_check(now_unix_ms, interval) => {
                    Some((i, t.host.as_str(), self.ips[i], p))
                }
                _ => None,
            })
            .collect()
    }

    /// The earliest UNIX millisecond at which a check is due (`None`: no checks).
    pub(crate) fn next_check_ms(&self) -> Option<u64> {
        self.check?;
        self.health.iter().map(|h| h.next_check_ms.load(Ordering::Relaxed)).min()
    }

    pub(crate) fn checked(
        &self,
        index: usize,
        now_unix_ms: u64,
        result: Result<(), ConnectFailure>,
    ) -> Option<bool> {
        let c = self.check.as_ref()?;
        self.health.get(index)?.checked(now_unix_ms, result, c)
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// UNIX milliseconds, read only when a candidate target is down.
fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn ip_hash(ip: IpAddr) -> u64 {
    // FNV-1a: stable across processes and releases (unlike `DefaultHasher`), so a client
    // keeps its target across restarts as long as the target list is unchanged.
    struct Fnv(u64);
    impl Hasher for Fnv {
        fn finish(&self) -> u64 {
            self.0
        }
        fn write(&mut self, bytes: &[u8]) {
            for b in bytes {
                self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
            }
        }
    }
    let mut h = Fnv(0xcbf2_9ce4_8422_2325);
    match canonical_ip(ip) {
        IpAddr::V4(v4) => v4.octets().hash(&mut h),
        IpAddr::V6(v6) => v6.octets().hash(&mut h),
    }
    h.finish()
}

/// A picked target. Holds a [`ConnectionGuard`] that counts the connection as open on the
/// target until it is dropped (least-connections reads these counts).
#[derive(Debug)]
pub struct SelectedTarget<'a> {
    target: &'a Target,
    ip: Option<IpAddr>,
    index: usize,
    port: u16,
    guard: ConnectionGuard,
}

impl<'a> SelectedTarget<'a> {
    /// The target as configured.
    pub fn target(&self) -> &'a Target {
        self.target
    }

    /// Host name or IP address to connect to.
    pub fn host(&self) -> &'a str {
        &self.target.host
    }

    /// The host as an IP address when it is one ([`Target::ip`], parsed when the route was
    /// compiled); `None` for a host name.
    pub fn ip(&self) -> Option<IpAddr> {
        self.ip
    }

    /// Port to connect to (`"preserve"` resolved to the listening port).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Position of the target in the route's `targets`.
    pub fn index(&self) -> usize {
        self.index
    }

    /// The open-connection guard, to keep with the connection (it is `'static`).
    pub fn into_guard(self) -> ConnectionGuard {
        self.guard
    }
}

/// Counts one open connection on one target; dropping it releases the count.
#[derive(Debug)]
pub struct ConnectionGuard {
    counts: Arc<[AtomicUsize]>,
    index: usize,
}

impl ConnectionGuard {
    fn new(counts: Arc<[AtomicUsize]>, index: usize) -> Self {
        if let Some(c) = counts.get(index) {
            c.fetch_add(1, Ordering::Relaxed);
        }
        Self { counts, index }
    }

    /// Position of the target in the route's `targets`.
    pub fn index(&self) -> usize {
        self.index
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        if let Some(c) = self.counts.get(self.index) {
            c.fetch_sub(1, Ordering::Relaxed);
        }
    }
}
