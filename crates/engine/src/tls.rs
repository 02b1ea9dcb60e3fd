//! TLS termination and re-encryption with rustls (tokio-rustls, `ring` provider).
//!
//! Everything is built when the engine's `State` is built (start and every reload): a rustls
//! `ServerConfig` per terminating route, with a certificate resolver over every terminating
//! route's certificate that shares a port with it, and a `ClientConfig` per re-encrypting
//! route. A new connection therefore uses the certificates of the configuration in force when
//! it was accepted; established connections keep theirs.
//!
//! Connection flow (after routing on the peeked ClientHello): the handshake reads the peeked
//! bytes again from the `WrappedSocket`, which replays them; then the target is connected
//! (PROXY header first, in plain), optionally wrapped in a rustls client, and the plaintext is
//! copied both ways by the same copy path as plain forwarding. `bytes_in` / `bytes_out` count
//! the plaintext from and to the client.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
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
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use smartproxy_proxy_protocol::Header;
use smartproxy_routing::{
    CompiledRoute, DomainPattern, ForwardAction, LimitExceeded, MatchInput, PortSpec, RouteAction,
    RouteConfig, TlsConfig, TlsMode, TlsVersion,
};
use smartproxy_wrapped_socket::{PeerAddr, WrappedSocket};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::config::{Config, ConfigError};
use crate::copy::{self, Counted, Timeouts};
use crate::engine::{Inner, State};
use crate::http::RequestHead;
use crate::net::canonical;
use crate::observe::{ConnObserver, Refusal};

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
struct RouteTls {
    acceptor: TlsAcceptor,
    upstream: Option<Upstream>,
}

/// Re-encryption towards the target.
struct Upstream {
    /// Without ALPN, then one per ALPN protocol of the route (the client's choice is passed on).
    plain: Arc<ClientConfig>,
    by_alpn: Vec<(Vec<u8>, Arc<ClientConfig>)>,
    server_name: Option<ServerName<'static>>,
}

impl Upstream {
    fn config(&self, alpn: Option<&[u8]>) -> Arc<ClientConfig> {
        alpn.and_then(|a| self.by_alpn.iter().find(|(p, _)| p == a))
            .map_or_else(|| Arc::clone(&self.plain), |(_, c)| Arc::clone(c))
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn terminating(r: &RouteConfig) -> Option<(&ForwardAction, &TlsConfig)> {
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
#[derive(Clone)]
struct LoadedCert {
    key: Arc<CertifiedKey>,
    names: Vec<String>,
}

/// Loads a certificate chain and its private key; errors name the key path and the file.
fn load_cert(
    i: usize,
    cert: &Path,
    key: &Path,
    provider: &CryptoProvider,
) -> Result<LoadedCert, ConfigError> {
    let cert_key = format!("routes[{i}].action.tls.certificate.cert");
    let key_key = format!("routes[{i}].action.tls.certificate.key");
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

/// Checks the files a route's TLS block names (certificate, key, upstream CA), for
/// configuration validation. Reports through `err(path, message)`.
pub(crate) fn check_route(i: usize, r: &RouteConfig, err: &mut dyn FnMut(String, String)) {
    let Some((_, tls)) = terminating(r) else { return };
    let provider = provider();
    if let Some(c) = &tls.certificate {
        if !c.cert.as_os_str().is_empty() && !c.key.as_os_str().is_empty() {
            if let Err(e) = load_cert(i, &c.cert, &c.key, &provider) {
                err(e.path, e.message);
            }
        }
    }
    if tls.mode == TlsMode::TerminateAndReencrypt {
        if let Some(ca) = tls.upstream_ca.as_deref().filter(|_| tls.upstream_verify) {
            if let Err(e) = load_roots(i, ca) {
                err(e.path, e.message);
            }
        }
    }
}

impl TlsState {
    /// Loads every certificate and builds the rustls configurations of `config`. Routes of
    /// the same name and certificate in `old` (the configuration being replaced) pass on their
    /// session ticket keys and session cache.
    pub(crate) fn build(config: &Config, old: Option<&TlsState>) -> Result<Self, Vec<ConfigError>> {
        let provider = provider();
        let mut errors = Vec::new();
        let mut files: HashMap<(PathBuf, PathBuf), LoadedCert> = HashMap::new();
        // Every enabled terminating route: (index, ports, domains, certificate).
        let mut certs: Vec<(usize, &PortSpec, Vec<DomainPattern>, LoadedCert)> = Vec::new();
        for (i, r) in config.routes.iter().enumerate() {
            let Some((_, tls)) = terminating(r) else { continue };
            let Some(c) = &tls.certificate else { continue };
            let id = (c.cert.clone(), c.key.clone());
            let loaded = match files.get(&id) {
                Some(l) => l.clone(),
                None => match load_cert(i, &c.cert, &c.key, &provider) {
                    Ok(l) => {
                        files.insert(id, l.clone());
                        l
                    }
                    Err(e) => {
                        errors.push(e);
                        continue;
                    }
                },
            };
            if r.enabled {
                let domains =
                    r.matcher.domains.iter().filter_map(|d| DomainPattern::parse(d).ok()).collect();
                certs.push((i, &r.matcher.ports, domains, loaded));
            }
        }

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
            let resolver =
                Resolver { own: Candidate { cert: own.clone(), domains: own_domains }, others };
            let kept = if tls.session_resumption {
                let name = r.name.clone().unwrap_or_else(|| format!("route-{i}"));
                let leaf = own.key.cert.first().map(|c| c.to_vec()).unwrap_or_default();
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
            let server = match server_config(&provider, tls, resolver, kept) {
                Ok(s) => s,
                Err(e) => {
                    errors.push(ConfigError::new(format!("routes[{i}].action.tls"), e));
                    continue;
                }
            };
            let upstream = if tls.mode == TlsMode::TerminateAndReencrypt {
                match upstream(&provider, *i, r, tls) {
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

    fn route(&self, index: usize) -> Option<&RouteTls> {
        self.routes.get(index).and_then(Option::as_ref)
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
) -> Result<Upstream, ConfigError> {
    let name = r.name.clone().unwrap_or_else(|| format!("route-{i}"));
    let builder = ClientConfig::builder_with_provider(Arc::clone(provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| ConfigError::new(format!("routes[{i}].action.tls"), e.to_string()))?;
    let base = if tls.upstream_verify {
        let roots = match &tls.upstream_ca {
            Some(ca) => load_roots(i, ca)?,
            None => RootCertStore::from_iter(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        };
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
    let server_name = match &tls.upstream_server_name {
        Some(n) => Some(ServerName::try_from(n.trim().to_owned()).map_err(|e| {
            ConfigError::new(
                format!("routes[{i}].action.tls.upstream_server_name"),
                format!("`{n}` is not a DNS name or IP address: {e}"),
            )
        })?),
        None => None,
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

/// A terminating route's certificate and the names it answers for.
#[derive(Clone)]
struct Candidate {
    cert: LoadedCert,
    domains: Vec<DomainPattern>,
}

impl Candidate {
    fn cert_names(&self, sni: &str) -> bool {
        self.cert.names.iter().any(|n| dns_name_matches(n, sni))
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
/// subjectAltNames cover the SNI, the route's own first, then the other terminating routes
/// sharing a port with it in configuration order; else the first whose route `domains` cover
/// it (same order); else the route's own (also without SNI).
struct Resolver {
    own: Candidate,
    others: Vec<Candidate>,
}

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resolver")
            .field("own", &self.own.cert.names)
            .field("others", &self.others.len())
            .finish()
    }
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let Some(sni) = hello.server_name() else { return Some(Arc::clone(&self.own.cert.key)) };
        let all = || std::iter::once(&self.own).chain(&self.others);
        let pick = all()
            .find(|c| c.cert_names(sni))
            .or_else(|| all().find(|c| c.route_domains(sni)))
            .unwrap_or(&self.own);
        Some(Arc::clone(&pick.cert.key))
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

/// Serves a connection routed to a terminating route: handshake with the client, connect the
/// target (PROXY header, then TLS for re-encryption), copy plaintext both ways.
#[allow(clippy::too_many_arguments)] // Mirrors conn::forward, its only caller.
pub(crate) async fn forward(
    inner: &Inner,
    state: &State,
    route: &CompiledRoute,
    f: &ForwardAction,
    sock: WrappedSocket<TcpStream>,
    local: SocketAddr,
    obs: &Arc<ConnObserver>,
    timeouts: Timeouts,
    stop: &mut tokio::sync::watch::Receiver<bool>,
    port: u16,
) {
    let client = sock.client_addr().0;
    let client_ip = canonical(client.ip());
    let refuse = |reason: Refusal, detail: &str| inner.obs.refused(reason, client, port, detail);
    let Some(rt) = state.tls.route(route.index()) else {
        return refuse(Refusal::NoRoute, "TLS configuration missing for the route");
    };
    let proxy_dst = sock.proxy_header().and_then(Header::destination).unwrap_or(local);

    // Handshake with the client; the peeked ClientHello is replayed by the socket.
    // Bounded by `initial_data_timeout`, and ended by a forced shutdown.
    let handshake_timeout = state.config.defaults.initial_data_timeout;
    let accept = tokio::time::timeout(handshake_timeout, rt.acceptor.accept(sock));
    let tls = tokio::select! {
        r = accept => match r {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                tracing::info!(%client, port, route = route.name(), error = %e, "TLS handshake failed");
                return refuse(Refusal::TlsHandshake, &format!("tls handshake: {e}"));
            }
            Err(_) => return refuse(Refusal::TlsHandshake, "tls handshake timed out"),
        },
        () = crate::copy::wait_stop(stop) => return refuse(Refusal::ShuttingDown, "during the TLS handshake"),
    };
    let (sni, alpn) = {
        let c = tls.get_ref().1;
        (c.server_name().map(str::to_owned), c.alpn_protocol().map(<[u8]>::to_vec))
    };
    tracing::debug!(%client, port, route = route.name(), sni = sni.as_deref(), "TLS accepted");
    let version = match tls.get_ref().1.protocol_version() {
        Some(rustls::ProtocolVersion::TLSv1_3) => Some(TlsVersion::Tls13),
        Some(rustls::ProtocolVersion::TLSv1_2) => Some(TlsVersion::Tls12),
        _ => None,
    };
    // The plaintext side replays what the second routing step reads.
    let mut tls = WrappedSocket::new(tls, PeerAddr(client));

    // Routes with `path` or `headers` criteria on this port: the lookup before the handshake
    // skipped those criteria; route again on the decrypted request head.
    let mut _second_guard = None;
    let (route, f, rt) = if state.table.http_after_termination(port) {
        let deadline = Instant::now() + state.config.defaults.initial_data_timeout;
        let head = loop {
            match crate::http::parse_head(tls.buffered()) {
                Ok(Some((head, _))) => break Some(head),
                // Not HTTP: route on what is known (SNI, port, client).
                Err(_) => break None,
                Ok(None) => match tls.peek_more(crate::http::MAX_HEAD, deadline).await {
                    Ok(0) => {
                        return tracing::debug!(%client, port, "closed before a request head");
                    }
                    Ok(_) => {}
                    Err(e) => {
                        return refuse(
                            Refusal::InitialData,
                            &format!("request head after TLS: {e}"),
                        );
                    }
                },
            }
        };
        let second = {
            let host = head.as_ref().and_then(RequestHead::domain);
            let mut input = MatchInput::new(port, client_ip).with_tls(version);
            if let Some(d) = sni.as_deref().or(host.as_deref()) {
                input = input.with_domain(d);
            }
            if let Some(h) = &head {
                input = input.with_path(h.path()).with_headers(h);
            }
            // By index: the lookup ties its result to the input's borrows.
            state.table.lookup(&input).map(|m| m.route.index())
        };
        let Some(second) = second.and_then(|i| state.table.routes().get(i)) else {
            return refuse(Refusal::NoRoute, "no route for the request after TLS termination");
        };
        let (Some((f2, _)), Some(rt2)) =
            (terminating(second.config()), state.tls.route(second.index()))
        else {
            return refuse(
                Refusal::NoRoute,
                &format!("{}: not a terminating route on this port", second.name()),
            );
        };
        if second.index() != route.index() {
            if !second.allows_ip(client_ip) {
                return refuse(Refusal::NotAllowed, second.name());
            }
            match second.limits().try_acquire(client_ip) {
                Ok(g) => _second_guard = Some(g),
                Err(e) => {
                    let reason = match e {
                        LimitExceeded::MaxConnections { .. } => Refusal::RouteLimit,
                        _ => Refusal::RouteIpLimit,
                    };
                    return refuse(reason, &format!("{}: {e}", second.name()));
                }
            }
            tracing::debug!(%client, port, route = second.name(), "routed after TLS termination");
        }
        (second, f2, rt2)
    } else {
        (route, f, rt)
    };

    // Target.
    let connect_timeout = f.connect_timeout.unwrap_or(state.config.defaults.connect_timeout);
    let connected = crate::conn::connect_target(
        inner,
        obs,
        route,
        f,
        client_ip,
        port,
        connect_timeout,
        |host, port| TcpStream::connect((host, port)),
    )
    .await;
    let Some((mut tcp, target)) = connected else {
        return refuse(Refusal::BackendUnavailable, route.name());
    };
    let host = target.host().to_owned();
    let _target_guard = target.into_guard();
    let _ = tcp.set_nodelay(true);
    if !f.send_proxy_protocol.is_off() {
        let mut first = Vec::new();
        let encoded = crate::conn::proxy_header(f.send_proxy_protocol, client, proxy_dst)
            .map_err(|e| e.to_string())
            .and_then(|h| h.encode(&mut first).map_err(|e| e.to_string()));
        if let Err(e) = encoded {
            tracing::warn!(error = %e, %client, "cannot build the PROXY header");
            return refuse(Refusal::BackendUnavailable, "PROXY header");
        }
        let write = tokio::time::timeout(connect_timeout, tcp.write_all(&first)).await;
        if !matches!(write, Ok(Ok(()))) {
            tracing::debug!(%client, "backend closed before the PROXY header was written");
            return;
        }
    }

    let mut client_side = Counted { inner: tls, obs: Arc::clone(obs) };
    let outcome = match &rt.upstream {
        None => copy::pipe(&mut client_side, &mut tcp, timeouts, stop).await,
        Some(up) => {
            let name = match up.server_name.clone() {
                Some(n) => n,
                None => {
                    let n = sni.unwrap_or(host);
                    match ServerName::try_from(n.clone()) {
                        Ok(n) => n,
                        Err(e) => {
                            return refuse(
                                Refusal::BackendUnavailable,
                                &format!("upstream server name `{n}`: {e}"),
                            );
                        }
                    }
                }
            };
            let connector = TlsConnector::from(up.config(alpn.as_deref()));
            let up_tls = tokio::time::timeout(connect_timeout, connector.connect(name, tcp)).await;
            let mut up_tls = match up_tls {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::warn!(%client, route = route.name(), error = %e, "upstream TLS handshake failed");
                    return refuse(
                        Refusal::BackendUnavailable,
                        &format!("{}: upstream tls: {e}", route.name()),
                    );
                }
                Err(_) => {
                    return refuse(
                        Refusal::BackendUnavailable,
                        &format!("{}: upstream tls handshake timed out", route.name()),
                    );
                }
            };
            copy::pipe(&mut client_side, &mut up_tls, timeouts, stop).await
        }
    };
    crate::conn::log_close(obs, client, port, route.name(), &outcome);
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
