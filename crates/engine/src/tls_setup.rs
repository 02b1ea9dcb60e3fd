//! TLS setup: the rustls configurations of one configuration, built when the engine's state is
//! built (start and every reload) from the certificate material the configuration loaded. A
//! `ServerConfig` per terminating route, with a certificate resolver over every terminating
//! route's certificate that shares a port with it (ACME routes through their certificate
//! manager's handle, swapped by renewals), and a `ClientConfig` per re-encrypting route. A new connection therefore uses the certificates of the configuration in force when
//! it was accepted; established connections keep theirs. The per-connection TLS traffic is
//! [`crate::pipeline::serve_tls`].

use std::collections::HashMap;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, NoServerSessionStorage, ResolvesServerCert};
use rustls::server::{
    ProducesTickets, ServerSessionMemoryCache, StoresServerSessions, WantsServerCert,
};
use rustls::sign::CertifiedKey;
use rustls::{
    ClientConfig, ConfigBuilder, DigitallySignedStruct, RootCertStore, ServerConfig,
    SignatureScheme,
};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use smartproxy_acme::{CertHandle, CertManager};
use smartproxy_routing::{
    CertificateConfig, DomainPattern, PortSpec, RouteAction, RouteConfig, TlsConfig, TlsMode,
    TlsVersion, UPSTREAM_SNI,
};
use tokio_rustls::TlsAcceptor;

use crate::config::tls_files::{LoadedCert, provider, terminating};
use crate::config::{Config, ConfigError};

static TLS13_ONLY: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13];
static TLS12_AND_13: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

/// Session cache entries per terminating route (when `session_resumption` is on).
const SESSION_CACHE: usize = 4096;

/// The TLS side of one configuration: acceptors and connectors by route index.
#[derive(Default)]
pub(crate) struct TlsState {
    routes: Vec<Option<RouteTls>>,
    /// Ticket keys and session caches by route name, handed to the next configuration so
    /// that sessions survive a reload.
    resumption: HashMap<String, Resumption>,
}

/// A terminating route's session resumption state, and the certificate it was used with.
#[derive(Clone)]
struct Resumption {
    ticketer: Arc<dyn ProducesTickets>,
    cache: Arc<dyn StoresServerSessions>,
    leaf: Vec<u8>,
}

/// What a terminating route needs per connection.
pub(crate) struct RouteTls {
    pub(crate) acceptor: TlsAcceptor,
    pub(crate) upstream: Option<Upstream>,
}

/// Re-encryption towards the target.
pub(crate) struct Upstream {
    /// Without ALPN, then one per ALPN protocol of the route (the client's choice is passed on).
    plain: Arc<ClientConfig>,
    by_alpn: Vec<(Vec<u8>, Arc<ClientConfig>)>,
    pub(crate) server_name: UpstreamName,
}

/// The name sent to (SNI) and verified against the upstream (`upstream_server_name`).
pub(crate) enum UpstreamName {
    /// The target's host (default): an IP address is verified against the certificate's IP
    /// addresses, a DNS name is sent as SNI and verified.
    Target,
    /// `"{sni}"`: the client's SNI (the target's host when the client sent none).
    ClientSni,
    /// A fixed name.
    Fixed(ServerName<'static>),
}

impl UpstreamName {
    /// The name for one connection to `host` from a client that sent `sni`.
    pub(crate) fn resolve(
        &self,
        host: &str,
        sni: Option<&str>,
    ) -> Result<ServerName<'static>, String> {
        let name = match self {
            Self::Fixed(n) => return Ok(n.clone()),
            Self::ClientSni => sni.unwrap_or(host),
            Self::Target => host,
        };
        // An IPv6 target is written in brackets.
        let name = name.trim_start_matches('[').trim_end_matches(']');
        ServerName::try_from(name.to_owned())
            .map_err(|e| format!("upstream server name `{name}`: {e}"))
    }
}

impl Upstream {
    pub(crate) fn config(&self, alpn: Option<&[u8]>) -> Arc<ClientConfig> {
        alpn.and_then(|a| self.by_alpn.iter().find(|(p, _)| p == a))
            .map_or_else(|| Arc::clone(&self.plain), |(_, c)| Arc::clone(c))
    }
}

impl TlsState {
    /// Loads every certificate and builds the rustls configurations of `config`. Routes of
    /// the same name and certificate in `old` (the configuration being replaced) pass on their
    /// session ticket keys and session cache.
    pub(crate) fn build(
        config: &Config,
        old: Option<&TlsState>,
        acme: &CertManager,
    ) -> Result<Self, Vec<ConfigError>> {
        let provider = provider();
        let files = &config.compiled().tls;
        let mut errors = Vec::new();
        // Every enabled terminating route: (index, ports, domains, certificate).
        let mut certs: Vec<(usize, &PortSpec, Vec<DomainPattern>, Key)> = Vec::new();
        for (i, r) in config.routes.iter().enumerate() {
            let Some((_, tls)) = terminating(r).filter(|_| r.enabled) else { continue };
            let key = match &tls.certificate {
                Some(CertificateConfig::Auto) => {
                    let name = config.table().routes().get(i).map(|c| c.name());
                    match name.and_then(|n| acme.handle(n)) {
                        Some(h) => Key::Acme { handle: h, names: lower(&r.matcher.domains) },
                        None => {
                            errors.push(ConfigError::new(
                                format!("routes[{i}].action.tls.certificate"),
                                "the certificate manager has no certificate for this route",
                            ));
                            continue;
                        }
                    }
                }
                _ => match files.route(i).and_then(|f| f.cert.clone()) {
                    Some(loaded) => Key::Files(loaded),
                    None => continue,
                },
            };
            let domains =
                r.matcher.domains.iter().filter_map(|d| DomainPattern::parse(d).ok()).collect();
            certs.push((i, &r.matcher.ports, domains, key));
        }
        let default = config.default_cert().map(|c| Arc::clone(&c.key));

        let mut resumption = HashMap::new();
        let mut routes: Vec<Option<RouteTls>> = Vec::new();
        routes.resize_with(config.routes.len(), || None);
        for (i, ports, _, own) in &certs {
            let r = &config.routes[*i];
            let Some((_, tls)) = terminating(r) else { continue };
            let others = certs
                .iter()
                .filter(|(j, p, _, _)| j != i && overlaps(ports, p))
                .map(|(_, _, domains, c)| Candidate { cert: c.clone(), domains: domains.clone() })
                .collect();
            let own_domains =
                r.matcher.domains.iter().filter_map(|d| DomainPattern::parse(d).ok()).collect();
            let resolver = Resolver {
                own: Candidate { cert: own.clone(), domains: own_domains },
                others,
                default: default.clone(),
            };
            let kept = if tls.session_resumption {
                let name = r.name.clone().unwrap_or_else(|| format!("route-{i}"));
                let leaf = own.key().cert.first().map(|c| c.to_vec()).unwrap_or_default();
                // Kept only with the same certificate: after a change every client sees the
                // new one at once.
                let kept =
                    match old.and_then(|o| o.resumption.get(&name)).filter(|k| k.leaf == leaf) {
                        Some(k) => k.clone(),
                        None => match rustls::crypto::ring::Ticketer::new() {
                            Ok(ticketer) => Resumption {
                                ticketer,
                                cache: ServerSessionMemoryCache::new(SESSION_CACHE),
                                leaf,
                            },
                            Err(e) => {
                                errors.push(ConfigError::new(
                                    format!("routes[{i}].action.tls.session_resumption"),
                                    format!("cannot build the session ticketer: {e}"),
                                ));
                                continue;
                            }
                        },
                    };
                resumption.insert(name, kept.clone());
                Some(kept)
            } else {
                None
            };
            let http = matches!(&r.action, RouteAction::Forward(f) if f.http.is_some());
            let server = match server_config(&provider, tls, resolver, kept, http) {
                Ok(s) => s,
                Err(e) => {
                    errors.push(ConfigError::new(format!("routes[{i}].action.tls"), e));
                    continue;
                }
            };
            let upstream = if tls.mode == TlsMode::TerminateAndReencrypt {
                let roots = files.route(*i).and_then(|f| f.upstream_roots.clone());
                match upstream(&provider, *i, r, tls, roots) {
                    Ok(u) => Some(u),
                    Err(e) => {
                        errors.push(e);
                        continue;
                    }
                }
            } else {
                None
            };
            routes[*i] = Some(RouteTls { acceptor: TlsAcceptor::from(Arc::new(server)), upstream });
        }
        if errors.is_empty() { Ok(Self { routes, resumption }) } else { Err(errors) }
    }

    pub(crate) fn route(&self, index: usize) -> Option<&RouteTls> {
        self.routes.get(index).and_then(Option::as_ref)
    }
}

/// TLS towards the targets of re-encrypting HTTP routes, for the HTTP layer: the route's
/// client configuration with the ALPN protocols the layer offers.
pub(crate) struct UpstreamConnector(pub(crate) Arc<TlsState>);

impl smartproxy_http::UpstreamTls for UpstreamConnector {
    fn connect<'a>(
        &'a self,
        tcp: tokio::net::TcpStream,
        req: smartproxy_http::TlsConnectRequest<'a>,
    ) -> smartproxy_http::TlsConnectFuture<'a> {
        Box::pin(async move {
            let other = |m: String| std::io::Error::other(m);
            let up =
                self.0.route(req.route.index()).and_then(|r| r.upstream.as_ref()).ok_or_else(
                    || other(format!("route {} does not re-encrypt", req.route.name())),
                )?;
            let name = up.server_name.resolve(req.host, req.client_sni).map_err(other)?;
            let mut config = (*up.plain).clone();
            config.alpn_protocols = req.alpn.iter().map(|a| a.to_vec()).collect();
            let tls = tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp).await?;
            let alpn = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
            Ok(smartproxy_http::TlsStream::new(Box::new(tls), alpn))
        })
    }
}

fn overlaps(a: &PortSpec, b: &PortSpec) -> bool {
    a.0.iter().any(|x| b.0.iter().any(|y| x.start <= y.end && y.start <= x.end))
}

fn server_config(
    provider: &Arc<CryptoProvider>,
    tls: &TlsConfig,
    resolver: Resolver,
    resumption: Option<Resumption>,
    http: bool,
) -> Result<ServerConfig, String> {
    let builder: ConfigBuilder<ServerConfig, WantsServerCert> =
        ServerConfig::builder_with_provider(Arc::clone(provider))
            .with_protocol_versions(match tls.min_version {
                TlsVersion::Tls13 => TLS13_ONLY,
                _ => TLS12_AND_13,
            })
            .map_err(|e| format!("cannot build the TLS configuration: {e}"))?
            .with_no_client_auth();
    let mut sc = builder.with_cert_resolver(Arc::new(resolver));
    sc.alpn_protocols = tls.alpn.iter().map(|a| a.as_bytes().to_vec()).collect();
    if http && sc.alpn_protocols.is_empty() {
        // The HTTP layer speaks both; h2 first, as browsers and curl prefer it.
        sc.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    }
    match resumption {
        Some(r) => {
            sc.session_storage = r.cache;
            sc.ticketer = r.ticketer;
        }
        None => {
            sc.session_storage = Arc::new(NoServerSessionStorage {});
            sc.send_tls13_tickets = 0;
        }
    }
    Ok(sc)
}

fn upstream(
    provider: &Arc<CryptoProvider>,
    i: usize,
    r: &RouteConfig,
    tls: &TlsConfig,
    own_roots: Option<RootCertStore>,
) -> Result<Upstream, ConfigError> {
    let name = r.name.clone().unwrap_or_else(|| format!("route-{i}"));
    let builder = ClientConfig::builder_with_provider(Arc::clone(provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| ConfigError::new(format!("routes[{i}].action.tls"), e.to_string()))?;
    let base = if tls.upstream_verify {
        let roots = own_roots.unwrap_or_else(|| {
            RootCertStore::from_iter(webpki_roots::TLS_SERVER_ROOTS.iter().cloned())
        });
        builder.with_root_certificates(roots).with_no_client_auth()
    } else {
        tracing::warn!(
            route = %name,
            "upstream_verify = false: the certificates of this route's targets are NOT verified"
        );
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCert(Arc::clone(provider))))
            .with_no_client_auth()
    };
    let server_name = match tls.upstream_server_name.as_deref().map(str::trim) {
        None => UpstreamName::Target,
        Some(UPSTREAM_SNI) => UpstreamName::ClientSni,
        Some(n) => UpstreamName::Fixed(ServerName::try_from(n.to_owned()).map_err(|e| {
            ConfigError::new(
                format!("routes[{i}].action.tls.upstream_server_name"),
                format!("`{n}` is not a DNS name or IP address: {e}"),
            )
        })?),
    };
    let by_alpn = tls
        .alpn
        .iter()
        .map(|a| {
            let mut c = base.clone();
            c.alpn_protocols = vec![a.as_bytes().to_vec()];
            (a.as_bytes().to_vec(), Arc::new(c))
        })
        .collect();
    Ok(Upstream { plain: Arc::new(base), by_alpn, server_name })
}

/// Where a terminating route's key comes from.
#[derive(Clone)]
enum Key {
    /// PEM files, loaded with the configuration.
    Files(LoadedCert),
    /// `certificate = "auto"`: the ACME manager's current key for the route (one atomic load
    /// per handshake; the self-signed fallback while the first certificate is obtained).
    Acme {
        handle: CertHandle,
        /// The names the certificate is issued for (the route's domains, lower-case).
        names: Vec<String>,
    },
}

impl Key {
    fn key(&self) -> Arc<CertifiedKey> {
        match self {
            Self::Files(c) => Arc::clone(&c.key),
            Self::Acme { handle, .. } => handle.certified_key(),
        }
    }

    fn names(&self) -> &[String] {
        match self {
            Self::Files(c) => &c.names,
            Self::Acme { names, .. } => names,
        }
    }
}

fn lower(domains: &[String]) -> Vec<String> {
    domains.iter().map(|d| d.to_ascii_lowercase()).collect()
}

/// A terminating route's certificate and the names it answers for.
#[derive(Clone)]
struct Candidate {
    cert: Key,
    domains: Vec<DomainPattern>,
}

impl Candidate {
    fn cert_names(&self, sni: &str) -> bool {
        self.cert.names().iter().any(|n| dns_name_matches(n, sni))
    }

    fn route_domains(&self, sni: &str) -> bool {
        self.domains.iter().any(|d| d.matches(sni))
    }
}

/// A certificate name (exact, or `*.rest` covering one label) against a server name.
fn dns_name_matches(pattern: &str, name: &str) -> bool {
    let name = name.strip_suffix('.').unwrap_or(name);
    match pattern.strip_prefix("*.") {
        Some(rest) => name
            .split_once('.')
            .is_some_and(|(label, tail)| !label.is_empty() && tail.eq_ignore_ascii_case(rest)),
        None => pattern.eq_ignore_ascii_case(name),
    }
}

/// Picks the certificate for a handshake on a terminating route: the first whose
/// subjectAltNames (for an ACME route: its domains) cover the SNI, the route's own first, then
/// the other terminating routes sharing a port with it in configuration order; else the first
/// whose route `domains` cover it (same order); else `[tls] default_certificate` when set,
/// else the route's own (also without SNI).
struct Resolver {
    own: Candidate,
    others: Vec<Candidate>,
    default: Option<Arc<CertifiedKey>>,
}

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resolver")
            .field("own", &self.own.cert.names())
            .field("others", &self.others.len())
            .field("default", &self.default.is_some())
            .finish()
    }
}

impl Resolver {
    /// Neither SNI nor a route's name: the default certificate, else the route's own.
    fn unnamed(&self) -> Arc<CertifiedKey> {
        match &self.default {
            Some(k) => Arc::clone(k),
            None => self.own.cert.key(),
        }
    }
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let Some(sni) = hello.server_name() else { return Some(self.unnamed()) };
        let all = || std::iter::once(&self.own).chain(&self.others);
        let pick =
            all().find(|c| c.cert_names(sni)).or_else(|| all().find(|c| c.route_domains(sni)));
        Some(pick.map_or_else(|| self.unnamed(), |c| c.cert.key()))
    }
}

/// `upstream_verify = false`: any certificate is accepted (signatures are still checked, so
/// the peer holds the key of the certificate it shows).
#[derive(Debug)]
struct AcceptAnyCert(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::dns_name_matches;

    #[test]
    fn wildcard_names_cover_one_label() {
        assert!(dns_name_matches("a.test", "A.test"));
        assert!(dns_name_matches("*.a.test", "x.a.test"));
        assert!(dns_name_matches("*.a.test", "x.a.test."));
        assert!(!dns_name_matches("*.a.test", "a.test"));
        assert!(!dns_name_matches("*.a.test", "y.x.a.test"));
        assert!(!dns_name_matches("*.a.test", ".a.test"));
    }
}
