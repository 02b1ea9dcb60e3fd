//! The certificates of the terminating routes, in one [`CertManager`] per `[acme]` table: ACME
//! routes (`certificate = "auto"`) get their key through a [`CertHandle`] that renewals swap
//! without touching established connections, and routes with PEM files are listed beside them
//! (status, expiry metric). The manager is synced with the routes when a state is built (start
//! and every reload); it is kept across reloads while `[acme]` stays the same, and replaced
//! when it changes.
//!
//! [`CertHandle`]: smartproxy_acme::CertHandle

use std::sync::Arc;

use smartproxy_acme::{CertManager, Error as AcmeError, RouteCert};
use smartproxy_metrics::{CertificateExpiry, Metrics};
use smartproxy_routing::CertificateConfig;
use tokio::task::JoinHandle;

use crate::config::tls_files::terminating;
use crate::config::{Config, ConfigError};

/// Whether `old` can serve `config` (same `[acme]` table), so that its routes keep their
/// state, their order in flight and their renewal task.
pub(crate) fn reusable(old: &CertManager, config: &Config) -> bool {
    old.config() == config.acme.as_ref()
}

/// The manager of `config`: `old` when [`reusable`], else a new one; synced with the routes.
/// The flag says whether it is new (its renewal task must be started).
pub(crate) fn manager(
    config: &Config,
    old: Option<&CertManager>,
) -> Result<(CertManager, bool), Vec<ConfigError>> {
    let (m, fresh) = match old.filter(|o| reusable(o, config)) {
        Some(o) => (o.clone(), false),
        None => (CertManager::new(config.acme.clone()).map_err(|e| vec![error(config, e)])?, true),
    };
    sync(&m, config)?;
    Ok((m, fresh))
}

/// Makes `m`'s route set that of `config` (all or nothing).
pub(crate) fn sync(m: &CertManager, config: &Config) -> Result<(), Vec<ConfigError>> {
    m.sync(route_certs(config))
        .map_err(|errors| errors.into_iter().map(|e| error(config, e)).collect())
}

/// The name under which `[tls] default_certificate` appears in the status and the expiry
/// metric (a route may not be called so while it is set).
pub(crate) const DEFAULT_CERT_NAME: &str = "tls.default_certificate";

/// What the manager holds for each enabled terminating route: an ACME certificate for its
/// domains, or its PEM certificate for the domains of the route (the certificate's own names
/// when the route has no `domains`); and `[tls] default_certificate` for its own names.
fn route_certs(config: &Config) -> Vec<RouteCert> {
    let files = &config.compiled().tls;
    let table = config.table();
    let mut out = Vec::new();
    for (i, r) in config.routes.iter().enumerate() {
        let Some((_, tls)) = terminating(r) else { continue };
        let Some(name) = table.routes().get(i).map(|c| c.name().to_owned()) else { continue };
        if !r.enabled {
            continue;
        }
        match &tls.certificate {
            Some(CertificateConfig::Auto) => {
                out.push(RouteCert::acme(name, r.matcher.domains.iter().cloned()));
            }
            _ => {
                let Some(loaded) = files.route(i).and_then(|f| f.cert.as_ref()) else { continue };
                let domains = if r.matcher.domains.is_empty() {
                    loaded.names.clone()
                } else {
                    r.matcher.domains.clone()
                };
                out.push(RouteCert::manual(name, domains, Arc::clone(&loaded.key)));
            }
        }
    }
    if let Some(d) = config.default_cert() {
        out.push(RouteCert::manual(DEFAULT_CERT_NAME, d.names.clone(), Arc::clone(&d.key)));
    }
    out
}

/// A manager error as a configuration error, at the key it is about.
fn error(config: &Config, e: AcmeError) -> ConfigError {
    let route_path = |route: &str| {
        config
            .table()
            .routes()
            .iter()
            .position(|r| r.name() == route)
            .map_or_else(String::new, |i| format!("routes[{i}]"))
    };
    match &e {
        AcmeError::Config(c) => ConfigError::new(c.path.clone(), c.message.clone()),
        AcmeError::Storage { .. } => ConfigError::new("acme.storage", e.to_string()),
        AcmeError::Domain { route, .. }
        | AcmeError::NoAcmeConfig(route)
        | AcmeError::DuplicateRoute(route) => ConfigError::new(route_path(route), e.to_string()),
        _ => ConfigError::new("", e.to_string()),
    }
}

/// The expiry gauge's series from the manager (ACME and PEM certificates alike).
pub(crate) fn expiries(m: &CertManager) -> Vec<CertificateExpiry> {
    m.expiries()
        .into_iter()
        .map(|e| CertificateExpiry::new(e.route, e.domain, e.not_after.unix_seconds()))
        .collect()
}

/// The background work of one manager: its renewal loop, and (with metrics) a task that
/// copies its expiries into the collector whenever a certificate or the route set changes.
/// Dropping it stops both.
#[derive(Debug)]
pub(crate) struct CertTasks {
    _renewal: smartproxy_acme::RenewalTask,
    metrics: Option<JoinHandle<()>>,
}

impl CertTasks {
    /// Starts the tasks of `m` on the current runtime.
    pub(crate) fn start(m: &CertManager, metrics: Option<Arc<Metrics>>) -> Self {
        let metrics = metrics.map(|metrics| {
            let m = m.clone();
            tokio::spawn(async move {
                let mut changes = m.subscribe();
                loop {
                    metrics.set_certificate_expiries(expiries(&m));
                    if changes.changed().await.is_err() {
                        return;
                    }
                }
            })
        });
        Self { _renewal: m.start(), metrics }
    }
}

impl Drop for CertTasks {
    fn drop(&mut self) {
        if let Some(t) = self.metrics.take() {
            t.abort();
        }
    }
}
