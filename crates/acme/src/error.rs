//! The crate's error type.

use std::path::PathBuf;

use crate::config::ConfigError;
use crate::status::Timestamp;

/// What went wrong, grouped by what the caller can do about it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The `[acme]` settings are not usable (the first problem; `AcmeConfig::validate` lists
    /// them all).
    #[error("{0}")]
    Config(ConfigError),
    /// A route cannot get an ACME certificate for this domain (wildcard, IP address, not a
    /// domain name). Fix the route's `domains` or give it a certificate file.
    #[error("route `{route}`: domain `{domain}`: {reason}")]
    Domain {
        /// The route.
        route: String,
        /// The domain as configured.
        domain: String,
        /// Why it is refused.
        reason: String,
    },
    /// A route asks for `certificate = "auto"` but the manager has no `[acme]` configuration.
    #[error("route `{0}` uses certificate = \"auto\" but there is no [acme] section")]
    NoAcmeConfig(String),
    /// Two certificate specifications for the same route.
    #[error("route `{0}` is listed twice")]
    DuplicateRoute(String),
    /// No certificate is managed for this route.
    #[error("no certificate is managed for route `{0}`")]
    UnknownRoute(String),
    /// The route's certificate comes from files, not from ACME.
    #[error("route `{0}` has a manual certificate; only ACME certificates are renewed")]
    NotAcme(String),
    /// A certificate or key could not be used.
    #[error("{0}")]
    Certificate(String),
    /// The certificate store could not be read or written.
    #[error("certificate store: `{}`: {message}", path.display())]
    Storage {
        /// The file or directory.
        path: PathBuf,
        /// What failed.
        message: String,
    },
    /// The ACME exchange failed (CA unreachable, challenge failed, order invalid, ...).
    #[error("ACME {step}: {message}")]
    Acme {
        /// The step: `account`, `new order`, `challenge`, `finalize`, ...
        step: &'static str,
        /// The CA's problem document or the transport error, with its causes.
        message: String,
    },
    /// The CA asked us to wait (HTTP `Retry-After` on a 429 or 503); nothing was sent.
    #[error("the CA asked to wait until {until} (Retry-After)")]
    RateLimited {
        /// When the CA accepts requests again.
        until: Timestamp,
    },
    /// The attempt took longer than `order_timeout`.
    #[error("ACME order did not complete within {0}")]
    Timeout(String),
}

impl Error {
    pub(crate) fn storage(path: impl Into<PathBuf>, e: impl std::fmt::Display) -> Self {
        Self::Storage { path: path.into(), message: e.to_string() }
    }

    pub(crate) fn acme(step: &'static str, e: &(dyn std::error::Error + 'static)) -> Self {
        Self::Acme { step, message: chain(e) }
    }
}

/// An error and its causes, `outer: inner: innermost`, without repeating a message that the
/// outer one already contains.
pub(crate) fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let m = s.to_string();
        if !out.contains(&m) {
            out.push_str(": ");
            out.push_str(&m);
        }
        cur = s.source();
    }
    out
}
