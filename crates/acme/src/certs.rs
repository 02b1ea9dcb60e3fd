//! Certificate material: PEM parsing, what a leaf says (validity, issuer, names), the
//! self-signed fallback, and the RFC 8737 `acme-tls/1` challenge certificate.

use std::sync::Arc;

use rcgen::{CertificateParams, CustomExtension, DistinguishedName, DnType, KeyPair};
use rustls::crypto::CryptoProvider;
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

use crate::status::Timestamp;

/// The `ring` provider, which the workspace's rustls uses everywhere.
pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// What the leaf certificate says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LeafInfo {
    /// subjectAltName DNS names, lower-case, sorted.
    pub(crate) names: Vec<String>,
    pub(crate) not_before: Timestamp,
    pub(crate) not_after: Timestamp,
    pub(crate) issuer: String,
    pub(crate) serial: String,
}

impl LeafInfo {
    /// Whether the certificate's names cover `domain` (exactly, or by a one-label wildcard).
    pub(crate) fn covers(&self, domain: &str) -> bool {
        let domain = domain.strip_suffix('.').unwrap_or(domain);
        self.names.iter().any(|n| match n.strip_prefix("*.") {
            Some(rest) => domain
                .split_once('.')
                .is_some_and(|(l, tail)| !l.is_empty() && tail.eq_ignore_ascii_case(rest)),
            None => n.eq_ignore_ascii_case(domain),
        })
    }
}

/// A chain with its key, ready for rustls, and what its leaf says.
#[derive(Debug, Clone)]
pub(crate) struct Loaded {
    pub(crate) key: Arc<CertifiedKey>,
    pub(crate) info: LeafInfo,
}

/// Reads the leaf of a chain.
pub(crate) fn leaf_info(der: &[u8]) -> Result<LeafInfo, String> {
    let (_, cert) =
        X509Certificate::from_der(der).map_err(|e| format!("invalid X.509 certificate: {e}"))?;
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            if let GeneralName::DNSName(d) = n {
                names.push(d.to_ascii_lowercase());
            }
        }
    }
    names.sort_unstable();
    names.dedup();
    Ok(LeafInfo {
        names,
        not_before: Timestamp::from_unix(cert.validity().not_before.timestamp()),
        not_after: Timestamp::from_unix(cert.validity().not_after.timestamp()),
        issuer: cert.issuer().to_string(),
        serial: cert.raw_serial_as_string().replace(':', ""),
    })
}

/// Builds a rustls key from a chain and a private key; refuses a key that does not fit.
pub(crate) fn load(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Loaded, String> {
    let leaf = chain.first().ok_or("no certificate in the chain")?;
    let info = leaf_info(leaf)?;
    let key = CertifiedKey::from_der(chain, key, &provider())
        .map_err(|e| format!("the private key does not fit the certificate: {e}"))?;
    Ok(Loaded { key: Arc::new(key), info })
}

/// Parses PEM text holding a chain (leaf first) and a private key, in any order.
pub(crate) fn load_pem(pem: &[u8]) -> Result<Loaded, String> {
    let chain = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("invalid PEM certificate: {e}"))?;
    let key =
        PrivateKeyDer::from_pem_slice(pem).map_err(|e| format!("no usable private key: {e}"))?;
    load(chain, key)
}

/// The status of a key handed over by the caller (manual certificates).
pub(crate) fn from_certified(key: Arc<CertifiedKey>) -> Result<Loaded, String> {
    let leaf = key.cert.first().ok_or("the certified key has no certificate")?;
    let info = leaf_info(leaf)?;
    Ok(Loaded { key, info })
}

/// A self-signed certificate for `domains`, served while the real one is obtained. Clients
/// that verify (browsers, curl) refuse it; it exists so that the handshake completes with
/// a clear "untrusted certificate" rather than an opaque alert, and so that clients that do
/// not verify keep working.
pub(crate) fn self_signed(domains: &[String]) -> Result<Arc<CertifiedKey>, String> {
    let mut params = CertificateParams::new(domains.to_vec())
        .map_err(|e| format!("cannot build the fallback certificate: {e}"))?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "smartproxy fallback (ACME certificate pending)");
    params.distinguished_name = dn;
    certified(params)
}

/// The RFC 8737 challenge certificate for `domain`: its only name is `domain`, and the
/// critical `id-pe-acmeIdentifier` extension holds the SHA-256 of the key authorization.
pub(crate) fn tls_alpn01(domain: &str, digest: &[u8]) -> Result<Arc<CertifiedKey>, String> {
    let mut params = CertificateParams::new(vec![domain.to_owned()])
        .map_err(|e| format!("cannot build the tls-alpn-01 certificate: {e}"))?;
    params.distinguished_name = DistinguishedName::new();
    params.custom_extensions = vec![CustomExtension::new_acme_identifier(digest)];
    certified(params)
}

fn certified(params: CertificateParams) -> Result<Arc<CertifiedKey>, String> {
    let key_pair = KeyPair::generate().map_err(|e| format!("key generation failed: {e}"))?;
    let cert =
        params.self_signed(&key_pair).map_err(|e| format!("certificate signing failed: {e}"))?;
    let key = PrivateKeyDer::try_from(key_pair.serialize_der())
        .map_err(|e| format!("generated key: {e}"))?;
    // `CertifiedKey::new`, not `from_der`: the key is ours, and the webpki parse behind
    // `from_der`'s key check refuses the critical acmeIdentifier extension.
    let signing =
        provider().key_provider.load_private_key(key).map_err(|e| format!("generated key: {e}"))?;
    Ok(Arc::new(CertifiedKey::new(vec![cert.der().clone()], signing)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fallback_covers_the_domains_and_is_self_issued() {
        let domains = vec!["a.example.com".to_owned(), "b.example.com".to_owned()];
        let key = self_signed(&domains).unwrap();
        let info = leaf_info(&key.cert[0]).unwrap();
        assert!(info.covers("a.example.com") && info.covers("B.example.com."));
        assert!(!info.covers("c.example.com"));
        assert!(info.issuer.contains("smartproxy fallback"), "{}", info.issuer);
        assert!(info.not_before < info.not_after);
    }

    #[test]
    fn tls_alpn01_certificate_carries_the_critical_acme_identifier() {
        let digest = [7u8; 32];
        let key = tls_alpn01("a.example.com", &digest).unwrap();
        let (_, cert) = X509Certificate::from_der(&key.cert[0]).unwrap();
        let ext = cert
            .extensions()
            .iter()
            .find(|e| e.oid.to_id_string() == "1.3.6.1.5.5.7.1.31")
            .expect("acmeIdentifier extension");
        assert!(ext.critical);
        // An OCTET STRING of 32 bytes holding the digest.
        assert_eq!(ext.value, [&[0x04, 0x20][..], &digest].concat());
        assert_eq!(leaf_info(&key.cert[0]).unwrap().names, ["a.example.com"]);
    }

    #[test]
    fn pem_bundle_round_trips_and_a_foreign_key_is_refused() {
        let kp = KeyPair::generate().unwrap();
        let cert =
            CertificateParams::new(vec!["x.example".to_owned()]).unwrap().self_signed(&kp).unwrap();
        let bundle = format!("{}{}", cert.pem(), kp.serialize_pem());
        let loaded = load_pem(bundle.as_bytes()).unwrap();
        assert_eq!(loaded.info.names, ["x.example"]);
        let other = KeyPair::generate().unwrap();
        let wrong = format!("{}{}", cert.pem(), other.serialize_pem());
        assert!(load_pem(wrong.as_bytes()).unwrap_err().contains("does not fit"));
        assert!(load_pem(b"garbage").is_err());
    }
}
