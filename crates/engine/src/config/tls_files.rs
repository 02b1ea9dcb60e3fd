//! Certificate material: the PEM files that terminating routes name (certificate chain,
//! private key, upstream CA), read once when the configuration is parsed. Errors name the key
//! path and the file. TLS setup ([`crate::tls_setup`]) builds rustls configurations from what
//! is loaded here and never reads a file.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use smartproxy_routing::{
    CertificateConfig, ForwardAction, RouteAction, RouteConfig, TlsConfig, TlsMode,
};

use super::{CertificateFiles, ConfigError};

/// The crypto provider of every TLS configuration (ring).
pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The forward action and TLS block of a terminating route (`terminate` or
/// `terminate-and-reencrypt`).
pub(crate) fn terminating(r: &RouteConfig) -> Option<(&ForwardAction, &TlsConfig)> {
    match &r.action {
        RouteAction::Forward(f) => match &f.tls {
            Some(t) if matches!(t.mode, TlsMode::Terminate | TlsMode::TerminateAndReencrypt) => {
                Some((f, t))
            }
            _ => None,
        },
        _ => None,
    }
}

/// A certificate chain with its key, and the DNS names it is for (from subjectAltName).
#[derive(Clone, Debug)]
pub(crate) struct LoadedCert {
    pub(crate) key: Arc<CertifiedKey>,
    pub(crate) names: Vec<String>,
}

/// What one terminating route's files hold.
#[derive(Debug, Default)]
pub(crate) struct RouteFiles {
    /// Its certificate (`None` when the route names none).
    pub(crate) cert: Option<LoadedCert>,
    /// Its `upstream_ca` (re-encrypting routes that verify against their own CA).
    pub(crate) upstream_roots: Option<RootCertStore>,
}

/// The TLS files of every route, by route index (`None` for routes that do not terminate).
#[derive(Debug, Default)]
pub(crate) struct TlsFiles {
    routes: Vec<Option<RouteFiles>>,
}

impl TlsFiles {
    /// Reads every file the routes name, once per file pair; pushes an error per bad file.
    pub(crate) fn load(routes: &[RouteConfig], errors: &mut Vec<ConfigError>) -> Self {
        let provider = provider();
        let mut seen: HashMap<(PathBuf, PathBuf), LoadedCert> = HashMap::new();
        let mut out = Vec::with_capacity(routes.len());
        for (i, r) in routes.iter().enumerate() {
            let Some((_, tls)) = terminating(r) else {
                out.push(None);
                continue;
            };
            let mut files = RouteFiles::default();
            // `certificate = "auto"`: the certificate comes from the ACME manager at run time.
            if let Some(CertificateConfig::Files { cert, key }) = &tls.certificate {
                if !cert.as_os_str().is_empty() && !key.as_os_str().is_empty() {
                    let id = (cert.clone(), key.clone());
                    match seen.get(&id) {
                        Some(l) => files.cert = Some(l.clone()),
                        None => match load_cert(
                            &format!("routes[{i}].action.tls.certificate"),
                            cert,
                            key,
                            &provider,
                        ) {
                            Ok(l) => {
                                seen.insert(id, l.clone());
                                files.cert = Some(l);
                            }
                            Err(e) => errors.push(e),
                        },
                    }
                }
            }
            if tls.mode == TlsMode::TerminateAndReencrypt && tls.upstream_verify {
                if let Some(ca) = &tls.upstream_ca {
                    match load_roots(i, ca) {
                        Ok(roots) => files.upstream_roots = Some(roots),
                        Err(e) => errors.push(e),
                    }
                }
            }
            out.push(Some(files));
        }
        Self { routes: out }
    }

    /// The files of route `index`.
    pub(crate) fn route(&self, index: usize) -> Option<&RouteFiles> {
        self.routes.get(index).and_then(Option::as_ref)
    }
}

/// Loads `[tls] default_certificate`; errors name `tls.default_certificate.cert` / `.key`.
pub(crate) fn load_default(files: &CertificateFiles) -> Result<LoadedCert, ConfigError> {
    let at = "tls.default_certificate";
    for (k, p) in [("cert", &files.cert), ("key", &files.key)] {
        if p.as_os_str().is_empty() {
            return Err(ConfigError::new(format!("{at}.{k}"), "path is empty"));
        }
    }
    load_cert(at, &files.cert, &files.key, &provider())
}

/// Loads a certificate chain and its private key; errors name the key path (`at.cert`,
/// `at.key`) and the file.
fn load_cert(
    at: &str,
    cert: &Path,
    key: &Path,
    provider: &CryptoProvider,
) -> Result<LoadedCert, ConfigError> {
    let cert_key = format!("{at}.cert");
    let key_key = format!("{at}.key");
    let chain = read_certs(cert).map_err(|m| ConfigError::new(&cert_key, m))?;
    let der = read_key(key).map_err(|m| ConfigError::new(&key_key, m))?;
    let leaf = webpki::EndEntityCert::try_from(&chain[0]).map_err(|e| {
        ConfigError::new(&cert_key, format!("`{}`: invalid certificate: {e}", cert.display()))
    })?;
    let names = leaf.valid_dns_names().map(str::to_ascii_lowercase).collect();
    let certified = CertifiedKey::from_der(chain, der, provider).map_err(|e| {
        ConfigError::new(
            &key_key,
            format!("`{}` does not fit the certificate `{}`: {e}", key.display(), cert.display()),
        )
    })?;
    Ok(LoadedCert { key: Arc::new(certified), names })
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let bytes =
        std::fs::read(path).map_err(|e| format!("cannot read `{}`: {e}", path.display()))?;
    let chain = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("`{}`: invalid PEM: {e}", path.display()))?;
    if chain.is_empty() {
        return Err(format!("`{}` holds no PEM certificate", path.display()));
    }
    Ok(chain)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    let bytes =
        std::fs::read(path).map_err(|e| format!("cannot read `{}`: {e}", path.display()))?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| match e {
        rustls_pki_types::pem::Error::NoItemsFound => {
            format!("`{}` holds no PEM private key (PKCS#8, PKCS#1 or SEC1)", path.display())
        }
        e => format!("`{}`: invalid PEM private key: {e}", path.display()),
    })
}

fn load_roots(i: usize, ca: &Path) -> Result<RootCertStore, ConfigError> {
    let path = format!("routes[{i}].action.tls.upstream_ca");
    let certs = read_certs(ca).map_err(|m| ConfigError::new(&path, m))?;
    let mut roots = RootCertStore::empty();
    let (_, bad) = roots.add_parsable_certificates(certs);
    if roots.is_empty() {
        return Err(ConfigError::new(
            &path,
            format!("`{}`: no usable CA certificate ({bad} rejected)", ca.display()),
        ));
    }
    Ok(roots)
}
