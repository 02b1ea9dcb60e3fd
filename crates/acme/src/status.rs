//! Per-route certificate status, as the admin API and the metrics show it.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Serialize, Serializer};

/// A point in time with one-second resolution (certificate validity, attempts). Serialises
/// as an RFC 3339 string in UTC (`"2026-05-01T12:00:00Z"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(i64);

impl Timestamp {
    /// From seconds since the Unix epoch.
    pub const fn from_unix(secs: i64) -> Self {
        Self(secs)
    }

    /// Seconds since the Unix epoch (what `*_timestamp_seconds` metrics export).
    pub const fn unix_seconds(self) -> i64 {
        self.0
    }

    /// The current time.
    pub fn now() -> Self {
        Self::from(SystemTime::now())
    }

    /// As a `SystemTime`.
    pub fn to_system_time(self) -> SystemTime {
        if self.0 >= 0 {
            UNIX_EPOCH + Duration::from_secs(self.0.unsigned_abs())
        } else {
            UNIX_EPOCH - Duration::from_secs(self.0.unsigned_abs())
        }
    }

    /// Rounded up to the next whole second (a deadline never comes early).
    pub(crate) fn ceil(t: SystemTime) -> Self {
        match t.duration_since(UNIX_EPOCH) {
            Ok(d) => Self(
                i64::try_from(d.as_secs())
                    .unwrap_or(i64::MAX)
                    .saturating_add(i64::from(d.subsec_nanos() > 0)),
            ),
            Err(_) => Self::from(t),
        }
    }

    pub(crate) fn plus(self, d: Duration) -> Self {
        Self(self.0.saturating_add(i64::try_from(d.as_secs()).unwrap_or(i64::MAX)))
    }

    pub(crate) fn minus(self, d: Duration) -> Self {
        Self(self.0.saturating_sub(i64::try_from(d.as_secs()).unwrap_or(i64::MAX)))
    }
}

impl From<SystemTime> for Timestamp {
    fn from(t: SystemTime) -> Self {
        match t.duration_since(UNIX_EPOCH) {
            Ok(d) => Self(i64::try_from(d.as_secs()).unwrap_or(i64::MAX)),
            Err(e) => Self(-i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX)),
        }
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let formatted = time::OffsetDateTime::from_unix_timestamp(self.0)
            .ok()
            .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok());
        match formatted {
            Some(s) => f.write_str(&s),
            None => write!(f, "@{}", self.0),
        }
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Where a route's certificate comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum CertSource {
    /// PEM files named in the configuration.
    Manual,
    /// Obtained and renewed from the ACME CA.
    Acme,
}

/// Where a route's certificate stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum CertState {
    /// No certificate yet: the self-signed fallback is served while the ACME order runs or
    /// waits for its next attempt.
    Obtaining,
    /// A certificate that is within its validity and not yet due for renewal.
    Valid,
    /// Due for renewal (inside `renew_before`, or the route's domains or the CA changed); the
    /// current certificate is served until the new one arrives.
    RenewalDue,
    /// Past `not_after` (renewal failed, or a manual certificate was not replaced); still
    /// served, clients will refuse it.
    Expired,
}

/// One route's certificate, for `GET /api/certificates` and the expiry metric.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct CertStatus {
    /// The route's name.
    pub route: String,
    /// `manual` or `acme`.
    pub source: CertSource,
    /// The route's domains (what the certificate is for).
    pub domains: Vec<String>,
    /// Where it stands.
    pub state: CertState,
    /// DNS names in the served certificate (subjectAltName, sorted); empty while obtaining.
    pub names: Vec<String>,
    /// Start of validity of the served certificate (not the fallback).
    pub not_before: Option<Timestamp>,
    /// End of validity of the served certificate (not the fallback).
    pub not_after: Option<Timestamp>,
    /// Issuer's distinguished name, e.g. `CN=R11, O=Let's Encrypt, C=US`.
    pub issuer: Option<String>,
    /// Serial number, hex.
    pub serial: Option<String>,
    /// When renewal becomes due (`not_after - renew_before`); ACME only.
    pub renew_at: Option<Timestamp>,
    /// Start of the last ACME attempt (successful or not).
    pub last_attempt: Option<Timestamp>,
    /// End of the last successful ACME issuance.
    pub last_success: Option<Timestamp>,
    /// The error of the last attempt, if it failed.
    pub last_error: Option<String>,
    /// Failed attempts in a row (reset by a success).
    pub failures: u32,
    /// Earliest time of the next attempt after failures (backoff, or the CA's Retry-After).
    pub next_attempt: Option<Timestamp>,
    /// An ACME order for this route is running now.
    pub in_progress: bool,
}
