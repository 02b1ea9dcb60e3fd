//! `[acme]`: the CA, the account contact, the store, renewal timing.

use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustls::RootCertStore;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use serde::{Deserialize, Serialize};
use smartproxy_routing::duration as dur;

/// Let's Encrypt's production directory, the default `directory`.
pub const LETS_ENCRYPT_DIRECTORY: &str = "https://acme-v02.api.letsencrypt.org/directory";

/// The `[acme]` table.
///
/// ```toml
/// [acme]
/// directory = "https://acme-v02.api.letsencrypt.org/directory"   # any RFC 8555 CA
/// email = "ops@example.com"
/// storage = "/var/lib/smartproxy/acme"
/// renew_before = "30d"
/// # ca_roots = "pebble.minica.pem"   challenge = "http-01" | "tls-alpn-01"
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct AcmeConfig {
    /// The CA's RFC 8555 directory URL (`https://`). Default: Let's Encrypt production.
    #[serde(default = "default_directory")]
    pub directory: String,
    /// Contact address given to the CA when the account is created (expiry notices).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// Directory of the account key, certificates, keys and state (created 0700; files 0600).
    pub storage: PathBuf,
    /// Renew this long before `not_after` (default 30 days).
    #[serde(default = "d30d", with = "dur")]
    pub renew_before: Duration,
    /// PEM file of extra CA certificates trusted for the CA's own HTTPS endpoint (a private
    /// CA, or Pebble in tests), on top of the public Web PKI roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_roots: Option<PathBuf>,
    /// How domains are proven: `"http-01"` (default; port 80) or `"tls-alpn-01"` (port 443).
    #[serde(default)]
    pub challenge: Challenge,
    /// How often certificates are checked for renewal (default 12 h, ±10 % jitter).
    #[serde(default = "d12h", with = "dur")]
    pub check_interval: Duration,
    /// Wait after the first failed attempt (default 5 min); doubles per failure.
    #[serde(default = "d5m", with = "dur")]
    pub retry_initial: Duration,
    /// Longest wait between failed attempts (default 24 h).
    #[serde(default = "d24h", with = "dur")]
    pub retry_max: Duration,
    /// Longest time one order may take, challenges and issuance included (default 2 min).
    #[serde(default = "d2m", with = "dur")]
    pub order_timeout: Duration,
}

fn default_directory() -> String {
    LETS_ENCRYPT_DIRECTORY.to_owned()
}
fn d30d() -> Duration {
    Duration::from_secs(30 * 86_400)
}
fn d12h() -> Duration {
    Duration::from_secs(12 * 3600)
}
fn d5m() -> Duration {
    Duration::from_secs(300)
}
fn d24h() -> Duration {
    Duration::from_secs(86_400)
}
fn d2m() -> Duration {
    Duration::from_secs(120)
}

/// The ACME challenge used to prove control of a domain.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[non_exhaustive]
pub enum Challenge {
    /// `http-01`: the CA fetches `http://DOMAIN/.well-known/acme-challenge/TOKEN` on port 80.
    #[default]
    #[serde(rename = "http-01")]
    Http01,
    /// `tls-alpn-01` (RFC 8737): the CA connects to port 443 with ALPN `acme-tls/1`.
    #[serde(rename = "tls-alpn-01")]
    TlsAlpn01,
}

impl fmt::Display for Challenge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Http01 => "http-01",
            Self::TlsAlpn01 => "tls-alpn-01",
        })
    }
}

/// One configuration error: the key (`acme.email`) and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConfigError {
    /// Key path, e.g. `acme.renew_before`.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

impl ConfigError {
    fn new(key: &str, message: impl Into<String>) -> Self {
        Self { path: format!("acme.{key}"), message: message.into() }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

impl std::error::Error for ConfigError {}

impl AcmeConfig {
    /// A configuration with the defaults, for `directory` and `storage`.
    pub fn new(directory: impl Into<String>, storage: impl Into<PathBuf>) -> Self {
        Self {
            directory: directory.into(),
            email: None,
            storage: storage.into(),
            renew_before: d30d(),
            ca_roots: None,
            challenge: Challenge::default(),
            check_interval: d12h(),
            retry_initial: d5m(),
            retry_max: d24h(),
            order_timeout: d2m(),
        }
    }

    /// Sets `email`.
    pub fn with_email(mut self, email: impl Into<String>) -> Self {
        self.email = Some(email.into());
        self
    }

    /// Sets `renew_before`.
    pub fn with_renew_before(mut self, d: Duration) -> Self {
        self.renew_before = d;
        self
    }

    /// Sets `ca_roots`.
    pub fn with_ca_roots(mut self, pem: impl Into<PathBuf>) -> Self {
        self.ca_roots = Some(pem.into());
        self
    }

    /// Sets `challenge`.
    pub fn with_challenge(mut self, c: Challenge) -> Self {
        self.challenge = c;
        self
    }

    /// Sets `check_interval`.
    pub fn with_check_interval(mut self, d: Duration) -> Self {
        self.check_interval = d;
        self
    }

    /// Sets `retry_initial` and `retry_max`.
    pub fn with_retry(mut self, initial: Duration, max: Duration) -> Self {
        self.retry_initial = initial;
        self.retry_max = max;
        self
    }

    /// Sets `order_timeout`.
    pub fn with_order_timeout(mut self, d: Duration) -> Self {
        self.order_timeout = d;
        self
    }

    /// Every problem with these settings, each naming its key (`acme.directory`, ...). Reads
    /// `ca_roots`; touches nothing else on disk and makes no request.
    pub fn validate(&self) -> Vec<ConfigError> {
        let mut errors = Vec::new();
        if let Err(m) = check_directory(&self.directory) {
            errors.push(ConfigError::new("directory", m));
        }
        if let Some(email) = &self.email {
            if let Err(m) = check_email(email) {
                errors.push(ConfigError::new("email", m));
            }
        }
        if self.storage.as_os_str().is_empty() {
            errors.push(ConfigError::new("storage", "must name a directory"));
        } else if self.storage.exists() && !self.storage.is_dir() {
            errors.push(ConfigError::new(
                "storage",
                format!("`{}` exists and is not a directory", self.storage.display()),
            ));
        }
        if self.renew_before.is_zero() {
            errors.push(ConfigError::new("renew_before", "must be longer than 0s"));
        }
        if let Some(p) = &self.ca_roots {
            if let Err(m) = load_roots(p) {
                errors.push(ConfigError::new("ca_roots", m));
            }
        }
        if self.check_interval < Duration::from_secs(1) {
            errors.push(ConfigError::new("check_interval", "must be at least 1s"));
        }
        if self.retry_initial.is_zero() {
            errors.push(ConfigError::new("retry_initial", "must be longer than 0s"));
        }
        if self.retry_max < self.retry_initial {
            errors.push(ConfigError::new(
                "retry_max",
                format!(
                    "must not be shorter than retry_initial ({})",
                    dur::format(self.retry_initial)
                ),
            ));
        }
        if self.order_timeout < Duration::from_secs(1) {
            errors.push(ConfigError::new("order_timeout", "must be at least 1s"));
        }
        errors
    }
}

fn check_directory(url: &str) -> Result<(), String> {
    let uri: http::Uri = url.parse().map_err(|e| format!("`{url}` is not a URL: {e}"))?;
    if uri.scheme_str() != Some("https") {
        return Err(format!("`{url}` must be an https:// URL (RFC 8555 requires HTTPS)"));
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(format!("`{url}` has no host"));
    }
    Ok(())
}

fn check_email(email: &str) -> Result<(), String> {
    let bad = || format!("`{email}` is not an email address (expected user@domain)");
    let (user, domain) = email.split_once('@').ok_or_else(bad)?;
    if user.is_empty()
        || domain.is_empty()
        || domain.contains('@')
        || !domain.contains('.')
        || email.chars().any(|c| c.is_whitespace() || c.is_control() || c == ',' || c == ':')
    {
        return Err(bad());
    }
    Ok(())
}

/// Reads a PEM file of CA certificates into a root store; the error names the file.
pub(crate) fn load_roots(path: &Path) -> Result<RootCertStore, String> {
    let bytes =
        std::fs::read(path).map_err(|e| format!("cannot read `{}`: {e}", path.display()))?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("`{}`: invalid PEM: {e}", path.display()))?;
    let mut roots = RootCertStore::empty();
    let (_, bad) = roots.add_parsable_certificates(certs);
    if roots.is_empty() {
        return Err(format!(
            "`{}` holds no usable CA certificate ({bad} rejected)",
            path.display()
        ));
    }
    Ok(roots)
}

/// Checks that a route domain can get a certificate from an ACME CA with the challenges
/// this crate answers: a fully qualified DNS name, not a wildcard (wildcards need DNS-01),
/// not an IP address. The engine can call it while validating a configuration.
pub fn check_domain(domain: &str) -> Result<(), String> {
    if domain.contains('*') {
        return Err("wildcard domains need the DNS-01 challenge, which smartproxy does not \
                    answer; list the names, or give the route a certificate file"
            .into());
    }
    let name = domain.strip_suffix('.').unwrap_or(domain);
    if name.parse::<IpAddr>().is_ok() || name.trim_start_matches('[').parse::<IpAddr>().is_ok() {
        return Err("IP addresses cannot get ACME certificates here; use a domain name".into());
    }
    if name.is_empty() || name.len() > 253 {
        return Err("not a domain name (1 to 253 characters)".into());
    }
    if !name.contains('.') {
        return Err("not a fully qualified domain name (an ACME CA needs at least one dot)".into());
    }
    for label in name.split('.') {
        let ok = !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if !ok {
            return Err(format!(
                "label `{label}` is not a DNS label (letters, digits, `-`, 1 to 63 characters; \
                 internationalised names in punycode)"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_stable_keys_with_defaults() {
        let c: AcmeConfig = toml::from_str(
            r#"
            directory = "https://acme.example/dir"
            email = "ops@example.com"
            storage = "/var/lib/smartproxy/acme"
            renew_before = "30d"
            challenge = "tls-alpn-01"
            "#,
        )
        .unwrap();
        assert_eq!(c.directory, "https://acme.example/dir");
        assert_eq!(c.renew_before, Duration::from_secs(30 * 86_400));
        assert_eq!(c.challenge, Challenge::TlsAlpn01);
        assert_eq!(c.check_interval, Duration::from_secs(12 * 3600));
        assert!(c.validate().is_empty(), "{:?}", c.validate());

        let d: AcmeConfig = toml::from_str(r#"storage = "/tmp/x""#).unwrap();
        assert_eq!(d.directory, LETS_ENCRYPT_DIRECTORY);
        assert_eq!(d.challenge, Challenge::Http01);
    }

    #[test]
    fn unknown_keys_and_challenges_are_refused() {
        let e = toml::from_str::<AcmeConfig>("storage = \"/x\"\nchallenge = \"dns-01\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("dns-01"), "{e}");
        let e = toml::from_str::<AcmeConfig>("storage = \"/x\"\nrenew = \"1d\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown field `renew`"), "{e}");
    }

    #[test]
    fn validation_names_each_key() {
        let mut c = AcmeConfig::new("http://acme.example/dir", "")
            .with_email("not-an-address")
            .with_renew_before(Duration::ZERO)
            .with_ca_roots("/nonexistent/roots.pem")
            .with_retry(Duration::from_secs(60), Duration::from_secs(10));
        c.order_timeout = Duration::ZERO;
        let errors: Vec<String> = c.validate().iter().map(ToString::to_string).collect();
        let keys: Vec<&str> =
            errors.iter().map(|e| e.split(':').next().unwrap_or_default()).collect();
        assert_eq!(
            keys,
            [
                "acme.directory",
                "acme.email",
                "acme.storage",
                "acme.renew_before",
                "acme.ca_roots",
                "acme.retry_max",
                "acme.order_timeout"
            ],
            "{errors:#?}"
        );
        assert!(errors[0].contains("must be an https:// URL"), "{}", errors[0]);
        assert!(errors[4].contains("/nonexistent/roots.pem"), "{}", errors[4]);
    }

    #[test]
    fn domains() {
        assert!(check_domain("a.example.com").is_ok());
        assert!(check_domain("xn--bcher-kva.example").is_ok());
        assert!(check_domain("*.example.com").unwrap_err().contains("DNS-01"));
        assert!(check_domain("127.0.0.1").unwrap_err().contains("IP address"));
        assert!(check_domain("::1").unwrap_err().contains("IP address"));
        assert!(check_domain("localhost").unwrap_err().contains("fully qualified"));
        assert!(check_domain("a..b").unwrap_err().contains("label"));
        assert!(check_domain("a_b.example").unwrap_err().contains("label"));
    }
}
