//! Certificates for smartproxy: ACME (RFC 8555) issuance and renewal with HTTP-01 or
//! TLS-ALPN-01, an on-disk store that survives restarts, manual PEM certificates in the same
//! status, and the pieces the engine wires into its listeners.
//!
//! Start with [`CertManager`]: build it from an [`AcmeConfig`] (the `[acme]` table), give it
//! the routes with [`CertManager::sync`], serve [`CertHandle::certified_key`] in the TLS
//! resolver, answer challenges with [`CertManager::answer_http01`] (port 80) and
//! [`CertManager::answer_tls_alpn01`] (ALPN `acme-tls/1`), and run [`CertManager::start`].
//!
//! While an ACME certificate is being obtained the route serves a self-signed fallback
//! certificate for its domains (clients that verify refuse it; the handshake itself
//! completes). Wildcard domains are refused: they need DNS-01.
//!
//! ```no_run
//! use std::sync::Arc;
//! use smartproxy_acme::{AcmeConfig, CertManager, RouteCert};
//!
//! # async fn demo(tcp: tokio::net::TcpStream) -> Result<(), Box<dyn std::error::Error>> {
//! let config: AcmeConfig = toml::from_str(r#"
//!     email = "ops@example.com"
//!     storage = "/var/lib/smartproxy/acme"
//! "#)?;
//! let certs = CertManager::new(Some(config))?;
//! certs.sync(vec![RouteCert::acme("web", ["a.example.com", "b.example.com"])])
//!     .map_err(|errors| errors[0].clone())?;
//! let _renewal = certs.start(); // keep it: dropping it stops renewals
//!
//! // TLS: the route's resolver presents the handle's key (one atomic load per handshake).
//! let handle = certs.handle("web").expect("synced above");
//! let server = rustls::ServerConfig::builder_with_provider(Arc::new(
//!     rustls::crypto::ring::default_provider(),
//! ))
//! .with_safe_default_protocol_versions()?
//! .with_no_client_auth()
//! .with_cert_resolver(Arc::new(handle));
//! # let _ = (server, tcp);
//! # Ok(())
//! # }
//! ```
#![cfg_attr(doctest, doc = include_str!("../README.md"))] // README examples run as doc tests

mod certs;
mod challenge;
mod client;
mod config;
mod error;
mod manager;
mod order;
mod status;
mod store;

pub use self::challenge::{
    ACME_TLS_ALPN_PROTOCOL, HTTP01_PATH_PREFIX, http01_token, is_tls_alpn01,
};
pub use self::config::{AcmeConfig, Challenge, ConfigError, LETS_ENCRYPT_DIRECTORY, check_domain};
pub use self::error::Error;
pub use self::manager::{CertHandle, CertManager, Expiry, RenewalTask, RouteCert};
pub use self::status::{CertSource, CertState, CertStatus, Timestamp};
