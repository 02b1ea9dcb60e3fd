//! The certificate manager: per-route slots (the served key behind an `ArcSwap`), the
//! renewal loop, status, and the challenge answers the engine consults.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use parking_lot::{Mutex, RwLock};
use rustls::ServerConfig;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use smartproxy_routing::duration as dur;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{Notify, watch};
use tracing::{info, warn};

use crate::certs::{self, LeafInfo};
use crate::challenge::{self, Challenges};
use crate::config::{AcmeConfig, check_domain};
use crate::error::Error;
use crate::order::AcmeRuntime;
use crate::status::{CertSource, CertState, CertStatus, Timestamp};
use crate::store::{RouteState, write_atomic};

/// What the manager should hold for one route: an ACME certificate for its domains, or a
/// manual certificate (PEM files loaded by the caller) that only appears in the status.
#[derive(Clone)]
pub struct RouteCert {
    route: String,
    domains: Vec<String>,
    manual: Option<Arc<CertifiedKey>>,
}

impl RouteCert {
    /// `certificate = "auto"`: one ACME certificate covering `domains`.
    pub fn acme(
        route: impl Into<String>,
        domains: impl IntoIterator<Item = impl Into<String>>,
    ) -> Self {
        Self {
            route: route.into(),
            domains: domains.into_iter().map(Into::into).collect(),
            manual: None,
        }
    }

    /// A certificate from PEM files, loaded by the caller; listed in the status with
    /// `source = manual` and served through its handle like an ACME one.
    pub fn manual(
        route: impl Into<String>,
        domains: impl IntoIterator<Item = impl Into<String>>,
        key: Arc<CertifiedKey>,
    ) -> Self {
        Self {
            route: route.into(),
            domains: domains.into_iter().map(Into::into).collect(),
            manual: Some(key),
        }
    }
}

impl fmt::Debug for RouteCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RouteCert")
            .field("route", &self.route)
            .field("domains", &self.domains)
            .field("source", &if self.manual.is_some() { "manual" } else { "acme" })
            .finish()
    }
}

/// One route's certificate as the manager keeps it.
struct Slot {
    route: String,
    source: CertSource,
    /// What handshakes get: the issued certificate, the manual one, or the fallback.
    key: ArcSwap<CertifiedKey>,
    fallback: AtomicBool,
    info: Mutex<SlotInfo>,
}

/// Why a certificate must be ordered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Due {
    Missing,
    Domains,
    Directory,
    /// Inside `renew_before`: ordered by the periodic check (or a retry after a failure).
    Expiring,
}

impl Due {
    fn as_str(self) -> &'static str {
        match self {
            Self::Missing => "no certificate yet",
            Self::Domains => "the route's domains changed",
            Self::Directory => "the CA directory changed",
            Self::Expiring => "renewal is due",
        }
    }
}

#[derive(Debug, Clone, Default)]
struct SlotInfo {
    domains: Vec<String>,
    /// The served certificate's leaf (`None` while the fallback is served).
    leaf: Option<LeafInfo>,
    /// The directory the served certificate came from.
    cert_directory: Option<String>,
    last_attempt: Option<Timestamp>,
    last_success: Option<Timestamp>,
    last_error: Option<String>,
    failures: u32,
    next_attempt: Option<Timestamp>,
    in_progress: bool,
}

impl SlotInfo {
    /// Why this ACME certificate must be (re)ordered now, if it must.
    fn due(&self, now: Timestamp, config: &AcmeConfig) -> Option<Due> {
        let Some(leaf) = &self.leaf else { return Some(Due::Missing) };
        if !self.domains.iter().all(|d| leaf.covers(d)) {
            return Some(Due::Domains);
        }
        if self.cert_directory.as_deref() != Some(config.directory.as_str()) {
            return Some(Due::Directory);
        }
        (now >= leaf.not_after.minus(config.renew_before)).then_some(Due::Expiring)
    }

    fn persisted(&self) -> RouteState {
        RouteState {
            domains: self.domains.clone(),
            directory: self.cert_directory.clone(),
            last_attempt: self.last_attempt.map(Timestamp::unix_seconds),
            last_success: self.last_success.map(Timestamp::unix_seconds),
            last_error: self.last_error.clone(),
            failures: self.failures,
            next_attempt: self.next_attempt.map(Timestamp::unix_seconds),
        }
    }
}

impl Slot {
    fn status(&self, config: Option<&AcmeConfig>) -> CertStatus {
        let i = self.info.lock();
        let now = Timestamp::now();
        let due = match (self.source, config) {
            (CertSource::Acme, Some(c)) => i.due(now, c).is_some(),
            _ => false,
        };
        let state = match &i.leaf {
            None => CertState::Obtaining,
            Some(l) if now >= l.not_after => CertState::Expired,
            Some(_) if due => CertState::RenewalDue,
            Some(_) => CertState::Valid,
        };
        let renew_at = match (self.source, config, &i.leaf) {
            (CertSource::Acme, Some(c), Some(l)) => Some(l.not_after.minus(c.renew_before)),
            _ => None,
        };
        CertStatus {
            route: self.route.clone(),
            source: self.source,
            domains: i.domains.clone(),
            state,
            names: i.leaf.as_ref().map(|l| l.names.clone()).unwrap_or_default(),
            not_before: i.leaf.as_ref().map(|l| l.not_before),
            not_after: i.leaf.as_ref().map(|l| l.not_after),
            issuer: i.leaf.as_ref().map(|l| l.issuer.clone()),
            serial: i.leaf.as_ref().map(|l| l.serial.clone()),
            renew_at,
            last_attempt: i.last_attempt,
            last_success: i.last_success,
            last_error: i.last_error.clone(),
            failures: i.failures,
            next_attempt: i.next_attempt,
            in_progress: i.in_progress,
        }
    }
}

/// A route's live certificate, for the TLS handshake path. Cheap to clone; reading is one
/// atomic load (no lock), and a renewal swaps the key in for the next handshake while
/// established connections keep theirs.
#[derive(Clone)]
pub struct CertHandle(Arc<Slot>);

impl CertHandle {
    /// The route.
    pub fn route(&self) -> &str {
        &self.0.route
    }

    /// The key to present now: the issued (or manual) certificate, or the self-signed
    /// fallback while an ACME certificate is being obtained.
    pub fn certified_key(&self) -> Arc<CertifiedKey> {
        self.0.key.load_full()
    }

    /// Whether the self-signed fallback is what [`certified_key`](Self::certified_key) gives.
    pub fn is_fallback(&self) -> bool {
        self.0.fallback.load(Ordering::Acquire)
    }
}

impl fmt::Debug for CertHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertHandle")
            .field("route", &self.0.route)
            .field("fallback", &self.is_fallback())
            .finish()
    }
}

/// Presents the route's current certificate, whatever the SNI (the engine picks the
/// route before the handshake).
impl ResolvesServerCert for CertHandle {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.certified_key())
    }
}

/// One sample of the certificate expiry metric.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Expiry {
    /// The route.
    pub route: String,
    /// One of the route's domains.
    pub domain: String,
    /// The served certificate's `not_after` ([`Timestamp::unix_seconds`] for the metric).
    pub not_after: Timestamp,
}

struct Inner {
    acme: Option<AcmeRuntime>,
    slots: RwLock<BTreeMap<String, Arc<Slot>>>,
    challenges: Arc<Challenges>,
    tls_alpn01: Arc<ServerConfig>,
    changes: watch::Sender<u64>,
    wake: Notify,
    checks: AtomicU64,
}

/// Owns the ACME account, the certificate store and every route's certificate; renews them
/// in a background task ([`start`](Self::start)). Cheap to clone (shared state).
#[derive(Clone)]
pub struct CertManager {
    inner: Arc<Inner>,
}

impl fmt::Debug for CertManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertManager")
            .field("acme", &self.inner.acme)
            .field("routes", &self.inner.slots.read().keys().collect::<Vec<_>>())
            .finish()
    }
}

/// The background renewal task; dropping it (or [`stop`](Self::stop)) ends it. An order in
/// flight is abandoned (its challenge answers are withdrawn).
#[derive(Debug)]
pub struct RenewalTask(tokio::task::JoinHandle<()>);

impl RenewalTask {
    /// Ends the task.
    pub fn stop(self) {}
}

impl Drop for RenewalTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl CertManager {
    /// A manager for `[acme]` (or `None`: manual certificates only). Validates the
    /// configuration, opens (creates) the store; sends nothing to the CA.
    pub fn new(acme: Option<AcmeConfig>) -> Result<Self, Error> {
        let acme = match acme {
            Some(c) => {
                if let Some(e) = c.validate().into_iter().next() {
                    return Err(Error::Config(e));
                }
                Some(AcmeRuntime::new(c)?)
            }
            None => None,
        };
        let challenges = Arc::new(Challenges::default());
        let tls_alpn01 = challenge::tls_alpn01_config(Arc::clone(&challenges))?;
        Ok(Self {
            inner: Arc::new(Inner {
                acme,
                slots: RwLock::new(BTreeMap::new()),
                challenges,
                tls_alpn01,
                changes: watch::Sender::new(0),
                wake: Notify::new(),
                checks: AtomicU64::new(0),
            }),
        })
    }

    /// The `[acme]` settings, if any.
    pub fn config(&self) -> Option<&AcmeConfig> {
        self.inner.acme.as_ref().map(|a| &a.config)
    }

    /// Makes the managed set exactly `routes` (at start and on every reload). Every entry is
    /// checked first; on any error nothing changes and every problem is returned.
    ///
    /// ACME routes keep their state across calls (same route name); a route whose domains
    /// changed gets a new order at once. A new ACME route loads its certificate from the
    /// store, or serves the self-signed fallback until the order completes. Routes that are
    /// no longer listed are dropped from the status (their files stay in the store).
    pub fn sync(&self, routes: Vec<RouteCert>) -> Result<(), Vec<Error>> {
        let mut errors = Vec::new();
        let mut seen = HashSet::new();
        for r in &routes {
            if !seen.insert(r.route.as_str()) {
                errors.push(Error::DuplicateRoute(r.route.clone()));
            }
            match &r.manual {
                Some(key) => {
                    if let Err(m) = certs::from_certified(Arc::clone(key)) {
                        errors.push(Error::Certificate(format!("route `{}`: {m}", r.route)));
                    }
                }
                None => {
                    if self.inner.acme.is_none() {
                        errors.push(Error::NoAcmeConfig(r.route.clone()));
                    }
                    if r.domains.is_empty() {
                        errors.push(Error::Domain {
                            route: r.route.clone(),
                            domain: String::new(),
                            reason: "an ACME certificate needs at least one domain in \
                                     match.domains"
                                .into(),
                        });
                    }
                    for d in &r.domains {
                        if let Err(reason) = check_domain(d) {
                            errors.push(Error::Domain {
                                route: r.route.clone(),
                                domain: d.clone(),
                                reason,
                            });
                        }
                    }
                }
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }

        let old = self.inner.slots.read().clone();
        let mut slots = BTreeMap::new();
        for r in routes {
            let domains = normalize(&r.domains);
            let slot = match (r.manual, old.get(&r.route)) {
                (Some(key), _) => match manual_slot(&r.route, domains, key) {
                    Ok(s) => s,
                    Err(e) => {
                        errors.push(e);
                        continue;
                    }
                },
                (None, Some(s)) if s.source == CertSource::Acme => {
                    self.update_domains(s, domains);
                    Arc::clone(s)
                }
                (None, _) => match self.acme_slot(&r.route, domains) {
                    Ok(s) => s,
                    Err(e) => {
                        errors.push(e);
                        continue;
                    }
                },
            };
            slots.insert(r.route, slot);
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        *self.inner.slots.write() = slots;
        self.inner.bump();
        self.inner.wake.notify_one();
        Ok(())
    }

    fn update_domains(&self, slot: &Arc<Slot>, domains: Vec<String>) {
        let state = {
            let mut i = slot.info.lock();
            if i.domains == domains {
                return;
            }
            info!(route = %slot.route, ?domains, "route domains changed; the certificate will be reordered");
            i.domains = domains;
            // A new configuration is worth a new attempt now.
            i.failures = 0;
            i.next_attempt = None;
            i.persisted()
        };
        self.inner.persist(&slot.route, &state);
    }

    /// A new ACME slot: the stored certificate and state, or the fallback.
    fn acme_slot(&self, route: &str, domains: Vec<String>) -> Result<Arc<Slot>, Error> {
        let Some(rt) = &self.inner.acme else { return Err(Error::NoAcmeConfig(route.into())) };
        let state = rt.store.load_state(route).unwrap_or_else(|e| {
            warn!(route, error = %e, "ignoring unreadable certificate state");
            None
        });
        let path = rt.store.cert_path(route);
        let loaded = match rt.store.read(&path) {
            Ok(Some(pem)) => match certs::load_pem(&pem) {
                Ok(l) => Some(l),
                Err(m) => {
                    warn!(route, file = %path.display(), error = %m, "ignoring unusable stored certificate");
                    None
                }
            },
            Ok(None) => None,
            Err(e) => {
                warn!(route, error = %e, "cannot read the stored certificate");
                None
            }
        };
        let fallback = loaded.is_none();
        let (key, leaf) = match loaded {
            Some(l) => (l.key, Some(l.info)),
            None => (certs::self_signed(&domains).map_err(Error::Certificate)?, None),
        };
        let mut info = SlotInfo { domains, leaf, ..SlotInfo::default() };
        if let Some(s) = state {
            info.cert_directory = s.directory;
            info.last_attempt = s.last_attempt.map(Timestamp::from_unix);
            info.last_success = s.last_success.map(Timestamp::from_unix);
            info.last_error = s.last_error;
            // Backoff survives restarts (a crash loop must not hammer the CA), unless the
            // configuration changed.
            if s.domains == info.domains {
                info.failures = s.failures;
                info.next_attempt = s.next_attempt.map(Timestamp::from_unix);
            }
        }
        Ok(Arc::new(Slot {
            route: route.to_owned(),
            source: CertSource::Acme,
            key: ArcSwap::new(key),
            fallback: AtomicBool::new(fallback),
            info: Mutex::new(info),
        }))
    }

    /// The handle of a route's certificate, for its TLS resolver.
    pub fn handle(&self, route: &str) -> Option<CertHandle> {
        self.inner.slots.read().get(route).map(|s| CertHandle(Arc::clone(s)))
    }

    /// Every route's certificate status, ordered by route name.
    pub fn status(&self) -> Vec<CertStatus> {
        let config = self.config();
        self.inner.slots.read().values().map(|s| s.status(config)).collect()
    }

    /// The series of `smartproxy_tls_certificate_expiry_timestamp_seconds{route,domain}`:
    /// one per route domain that the served certificate covers (none for a route on the
    /// fallback), ordered by route.
    pub fn expiries(&self) -> Vec<Expiry> {
        let slots: Vec<Arc<Slot>> = self.inner.slots.read().values().cloned().collect();
        let mut out = Vec::new();
        for slot in slots {
            let i = slot.info.lock();
            let Some(leaf) = &i.leaf else { continue };
            for d in i.domains.iter().filter(|d| leaf.covers(d)) {
                out.push(Expiry {
                    route: slot.route.clone(),
                    domain: d.clone(),
                    not_after: leaf.not_after,
                });
            }
        }
        out
    }

    /// One route's certificate status.
    pub fn route_status(&self, route: &str) -> Option<CertStatus> {
        let slot = self.inner.slots.read().get(route).cloned()?;
        Some(slot.status(self.config()))
    }

    /// A receiver whose value changes whenever a certificate or a status changes (issued,
    /// renewed, attempt started or failed, routes synced).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.inner.changes.subscribe()
    }

    /// HTTP requests sent to the CA since the manager was made.
    pub fn acme_requests(&self) -> u64 {
        self.inner.acme.as_ref().map_or(0, |a| a.stats.requests.load(Ordering::Relaxed))
    }

    /// Renewal checks completed by the background task (each looks at every route).
    pub fn checks(&self) -> u64 {
        self.inner.checks.load(Ordering::Relaxed)
    }

    /// Orders a new certificate for an ACME route now, ignoring the backoff (not the CA's
    /// `Retry-After`), and waits for the outcome: the new status, or why it failed (also
    /// recorded in the status). `POST /api/certificates/{route}/renew`.
    pub async fn renew_now(&self, route: &str) -> Result<CertStatus, Error> {
        let slot = self
            .inner
            .slots
            .read()
            .get(route)
            .cloned()
            .ok_or_else(|| Error::UnknownRoute(route.into()))?;
        if slot.source != CertSource::Acme {
            return Err(Error::NotAcme(route.into()));
        }
        let rt = self.inner.acme.as_ref().ok_or_else(|| Error::NoAcmeConfig(route.into()))?;
        if let Some(until) = rt.stats.retry_after().filter(|t| *t > Timestamp::now()) {
            return Err(Error::RateLimited { until });
        }
        let result = self.inner.attempt(rt, &slot, "requested").await;
        // The loop plans its next wake-up from the new state (a failure starts a backoff).
        self.inner.wake.notify_one();
        result?;
        Ok(slot.status(self.config()))
    }

    /// Starts the renewal loop on the current tokio runtime: a check at once, then every
    /// `check_interval` (±10 %), and at the end of each backoff.
    pub fn start(&self) -> RenewalTask {
        let inner = Arc::clone(&self.inner);
        RenewalTask(tokio::spawn(async move { inner.run().await }))
    }

    /// HTTP-01: whether an order is waiting for validation requests now (one atomic load).
    /// A listener that does not read HTTP request heads anyway can look at its first bytes
    /// only while this is true.
    pub fn http01_pending(&self) -> bool {
        self.inner.challenges.http01_pending()
    }

    /// HTTP-01: the key authorization for a token of a running order.
    pub fn http01_key_authorization(&self, token: &str) -> Option<String> {
        self.inner.challenges.http01(token)
    }

    /// HTTP-01: the whole HTTP/1.1 response (200, `Connection: close`) for a `GET` or `HEAD`
    /// of `/.well-known/acme-challenge/TOKEN` whose token belongs to a running order;
    /// `None` for any other request (route it as usual).
    pub fn http01_response(&self, method: &str, target: &str) -> Option<Vec<u8>> {
        self.inner.challenges.http01_response(method, target)
    }

    /// HTTP-01: answers the request whose head was already read (method and target from
    /// its request line) on `stream`, then shuts the stream down. `Ok(false)`: not a
    /// validation request of ours, nothing was written.
    pub async fn answer_http01<S: AsyncWrite + Unpin>(
        &self,
        stream: &mut S,
        method: &str,
        target: &str,
    ) -> io::Result<bool> {
        self.inner.challenges.answer_http01(stream, method, target).await
    }

    /// TLS-ALPN-01: the challenge certificate for an SNI while its order runs.
    pub fn tls_alpn01_certificate(&self, sni: &str) -> Option<Arc<CertifiedKey>> {
        self.inner.challenges.tls_alpn01(sni)
    }

    /// TLS-ALPN-01: the rustls server configuration for validation handshakes (ALPN
    /// `acme-tls/1`, the challenge certificate for the SNI, no session resumption).
    pub fn tls_alpn01_config(&self) -> Arc<ServerConfig> {
        Arc::clone(&self.inner.tls_alpn01)
    }

    /// TLS-ALPN-01: runs the validation handshake on `stream` (the ClientHello still
    /// unread, or replayed) and closes it. Call it when the peeked ClientHello's ALPN list
    /// is exactly `acme-tls/1` ([`is_tls_alpn01`](crate::is_tls_alpn01)).
    pub async fn answer_tls_alpn01<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        stream: S,
    ) -> io::Result<()> {
        challenge::answer_tls_alpn01(self.tls_alpn01_config(), stream).await
    }
}

fn manual_slot(
    route: &str,
    domains: Vec<String>,
    key: Arc<CertifiedKey>,
) -> Result<Arc<Slot>, Error> {
    let loaded = certs::from_certified(key)
        .map_err(|m| Error::Certificate(format!("route `{route}`: {m}")))?;
    Ok(Arc::new(Slot {
        route: route.to_owned(),
        source: CertSource::Manual,
        key: ArcSwap::new(loaded.key),
        fallback: AtomicBool::new(false),
        info: Mutex::new(SlotInfo { domains, leaf: Some(loaded.info), ..SlotInfo::default() }),
    }))
}

/// Lower-case, no trailing dot, no duplicates, in configuration order.
fn normalize(domains: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(domains.len());
    for d in domains {
        let d = d.strip_suffix('.').unwrap_or(d).to_ascii_lowercase();
        if !out.contains(&d) {
            out.push(d);
        }
    }
    out
}

impl Inner {
    fn bump(&self) {
        self.changes.send_modify(|g| *g = g.wrapping_add(1));
    }

    fn persist(&self, route: &str, state: &RouteState) {
        if let Some(rt) = &self.acme {
            if let Err(e) = rt.store.save_state(route, state) {
                warn!(route, error = %e, "cannot save certificate state");
            }
        }
    }

    async fn run(self: Arc<Self>) {
        let Some(rt) = &self.acme else { return };
        let interval = rt.config.check_interval;
        let mut next_check = tokio::time::Instant::now();
        loop {
            let now = tokio::time::Instant::now();
            let periodic = now >= next_check;
            if periodic {
                next_check = now + jitter(interval);
            }
            self.check(rt, periodic).await;
            let checks = self.checks.fetch_add(1, Ordering::Relaxed) + 1;
            tracing::debug!(checks, periodic, "certificate renewal check done");
            self.bump();
            let mut wake_at = next_check;
            if let Some(t) = self.earliest_retry(rt) {
                let wait = t.to_system_time().duration_since(SystemTime::now()).unwrap_or_default();
                wake_at = wake_at.min(tokio::time::Instant::now() + wait);
            }
            tokio::select! {
                () = tokio::time::sleep_until(wake_at) => {}
                () = self.wake.notified() => {}
            }
        }
    }

    /// One pass: every ACME route that is due and not backing off gets an order. Outside
    /// the periodic check (a wake-up for a sync, a retry or `renew_now`), a certificate that
    /// is merely inside `renew_before` is left alone unless it is retrying after a failure:
    /// with `renew_before` longer than the lifetime it would otherwise be reordered at
    /// every wake-up.
    async fn check(&self, rt: &AcmeRuntime, periodic: bool) {
        let slots: Vec<Arc<Slot>> =
            self.slots.read().values().filter(|s| s.source == CertSource::Acme).cloned().collect();
        for slot in slots {
            // Dropped by a sync since the snapshot?
            if !self.slots.read().get(&slot.route).is_some_and(|s| Arc::ptr_eq(s, &slot)) {
                continue;
            }
            let now = Timestamp::now();
            let reason = {
                let i = slot.info.lock();
                match (i.due(now, &rt.config), i.next_attempt) {
                    (None, _) => continue,
                    (Some(_), Some(t)) if t > now => continue,
                    (Some(Due::Expiring), None) if !periodic => continue,
                    (Some(r), _) => r,
                }
            };
            if rt.stats.retry_after().is_some_and(|t| t > now) {
                continue;
            }
            // Failures are recorded in the status and logged by `attempt`.
            let _ = self.attempt(rt, &slot, reason.as_str()).await;
        }
    }

    /// When the loop must wake for a route that is due but backing off.
    fn earliest_retry(&self, rt: &AcmeRuntime) -> Option<Timestamp> {
        let now = Timestamp::now();
        let gate = rt.stats.retry_after().filter(|t| *t > now);
        self.slots
            .read()
            .values()
            .filter(|s| s.source == CertSource::Acme)
            .filter_map(|s| {
                let i = s.info.lock();
                i.due(now, &rt.config)?;
                // A due route without a failure was just renewed (renew_before longer than
                // the lifetime): it waits for the next periodic check, not a retry.
                match (i.next_attempt, gate) {
                    (Some(t), g) => Some(t.max(g.unwrap_or(t))),
                    (None, g) => g,
                }
            })
            .min()
    }

    /// One order for one route; the outcome goes into the slot, the store and the status.
    async fn attempt(&self, rt: &AcmeRuntime, slot: &Arc<Slot>, reason: &str) -> Result<(), Error> {
        let _one_at_a_time = rt.issuing.lock().await;
        let domains = {
            let mut i = slot.info.lock();
            i.in_progress = true;
            i.last_attempt = Some(Timestamp::now());
            i.domains.clone()
        };
        // Cleared however this future ends (also when it is dropped: the task stopped, an
        // admin request went away).
        let in_progress = InProgress(Some(slot));
        self.bump();
        info!(route = %slot.route, ?domains, reason, "ordering an ACME certificate");
        let result = match tokio::time::timeout(
            rt.config.order_timeout,
            rt.obtain(&self.challenges, &domains),
        )
        .await
        {
            Ok(r) => r,
            Err(_) => Err(Error::Timeout(dur::format(rt.config.order_timeout))),
        };
        let result = result.and_then(|pem| {
            let loaded = certs::load_pem(pem.as_bytes())
                .map_err(|m| Error::Certificate(format!("the CA's certificate: {m}")))?;
            if let Some(d) = domains.iter().find(|d| !loaded.info.covers(d)) {
                return Err(Error::Certificate(format!(
                    "the CA's certificate does not cover `{d}`"
                )));
            }
            write_atomic(&rt.store.cert_path(&slot.route), pem.as_bytes())?;
            Ok(loaded)
        });
        let now = Timestamp::now();
        let state = {
            let mut i = slot.info.lock();
            match &result {
                Ok(loaded) => {
                    slot.key.store(Arc::clone(&loaded.key));
                    slot.fallback.store(false, Ordering::Release);
                    i.leaf = Some(loaded.info.clone());
                    i.cert_directory = Some(rt.config.directory.clone());
                    i.last_success = Some(now);
                    i.last_error = None;
                    i.failures = 0;
                    i.next_attempt = None;
                    info!(route = %slot.route, not_after = %loaded.info.not_after, issuer = %loaded.info.issuer, "ACME certificate installed");
                    let lifetime = loaded.info.not_after.unix_seconds()
                        - loaded.info.not_before.unix_seconds();
                    if u64::try_from(lifetime).unwrap_or(0) <= rt.config.renew_before.as_secs() {
                        warn!(route = %slot.route, renew_before = %dur::format(rt.config.renew_before), lifetime_secs = lifetime, "renew_before is not shorter than the certificate's lifetime: it is renewed at every check");
                    }
                }
                Err(e) => {
                    i.failures = i.failures.saturating_add(1);
                    i.last_error = Some(e.to_string());
                    let wait = backoff(&rt.config, i.failures);
                    let mut next = Timestamp::ceil(SystemTime::now() + wait);
                    if let Some(gate) = rt.stats.retry_after() {
                        next = next.max(gate);
                    }
                    i.next_attempt = Some(next);
                    warn!(route = %slot.route, error = %e, failures = i.failures, next_attempt = %next, "ACME order failed");
                }
            }
            i.persisted()
        };
        self.persist(&slot.route, &state);
        // The attempt ends only once its outcome is on disk too: whoever sees `in_progress`
        // false (status, the admin API, a restart) finds the state file written.
        in_progress.disarm();
        slot.info.lock().in_progress = false;
        self.bump();
        result.map(|_| ())
    }
}

/// Clears a slot's `in_progress` if the attempt is dropped before it records its outcome.
struct InProgress<'a>(Option<&'a Slot>);

impl InProgress<'_> {
    /// The outcome is being recorded (with `in_progress = false` under the same lock).
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for InProgress<'_> {
    fn drop(&mut self) {
        if let Some(slot) = self.0 {
            slot.info.lock().in_progress = false;
        }
    }
}

/// `retry_initial * 2^(failures-1)`, at most `retry_max`, ±10 %.
fn backoff(config: &AcmeConfig, failures: u32) -> Duration {
    let exp = failures.saturating_sub(1).min(30);
    let base = config.retry_initial.saturating_mul(1u32 << exp).min(config.retry_max);
    jitter(base)
}

/// `d` scaled by a random factor in [0.9, 1.1].
fn jitter(d: Duration) -> Duration {
    let mut b = [0u8; 4];
    let r = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b)
        .map(|()| u32::from_le_bytes(b))
        .unwrap_or(u32::MAX / 2);
    let f = 0.9 + 0.2 * (f64::from(r) / f64::from(u32::MAX));
    d.mul_f64(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let c = AcmeConfig::new("https://ca.example/dir", "/tmp/x")
            .with_retry(Duration::from_secs(60), Duration::from_secs(600));
        for (failures, base) in [(1, 60), (2, 120), (3, 240), (4, 480), (5, 600), (40, 600)] {
            let b = backoff(&c, failures).as_secs_f64();
            let base = f64::from(base);
            assert!(b >= base * 0.9 - 0.001 && b <= base * 1.1 + 0.001, "{failures}: {b}");
        }
    }

    #[test]
    fn domains_are_normalized() {
        let d = normalize(&["A.example.".into(), "a.example".into(), "b.example".into()]);
        assert_eq!(d, ["a.example", "b.example"]);
    }

    #[test]
    fn sync_refuses_bad_routes_and_changes_nothing() {
        let m = CertManager::new(None).unwrap();
        let key = certs::self_signed(&["m.example".into()]).unwrap();
        // A domain the certificate does not cover gets no expiry series.
        m.sync(vec![RouteCert::manual("m", ["m.example", "x.example"], Arc::clone(&key))]).unwrap();
        let errors = m
            .sync(vec![
                RouteCert::acme("a", ["a.example"]),
                RouteCert::manual("m", ["m.example"], Arc::clone(&key)),
                RouteCert::manual("m", ["m.example"], key),
            ])
            .unwrap_err();
        let errors: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert_eq!(
            errors,
            [
                "route `a` uses certificate = \"auto\" but there is no [acme] section",
                "route `m` is listed twice"
            ]
        );
        let status = m.status();
        assert_eq!(status.len(), 1);
        let e = m.expiries();
        assert_eq!(e.len(), 1);
        assert_eq!((e[0].route.as_str(), e[0].domain.as_str()), ("m", "m.example"));
        assert_eq!(Some(e[0].not_after), status[0].not_after);
        assert_eq!(status[0].source, CertSource::Manual);
        assert_eq!(status[0].state, CertState::Valid);
        assert!(m.handle("m").is_some_and(|h| !h.is_fallback()));
    }
}
