//! TLS termination and re-encryption over loopback with real rustls clients and servers and
//! certificates made by rcgen: certificate per SNI, versions, ALPN, resumption, upstream
//! verification, reload of certificates, bad files.

mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, HandshakeKind, RootCertStore, ServerConfig};
use smartproxy_engine::{Config, Engine, Format};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::client::TlsStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// A throwaway CA writing leaf PEM files into a temporary directory.
struct Pki {
    dir: tempfile::TempDir,
    ca: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
}

struct Leaf {
    cert: PathBuf,
    key: PathBuf,
}

impl Pki {
    fn new() -> Self {
        Self::named("test CA")
    }

    fn named(cn: &str) -> Self {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.distinguished_name.push(rcgen::DnType::CommonName, cn);
        params.key_usages =
            vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign];
        let ca = rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().unwrap())
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
        Self { dir, ca }
    }

    fn ca_path(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    fn roots(&self) -> RootCertStore {
        let mut r = RootCertStore::empty();
        r.add(self.ca.der().clone()).unwrap();
        r
    }

    fn leaf(&self, name: &str, dns: &[&str]) -> Leaf {
        let mut params =
            rcgen::CertificateParams::new(dns.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>())
                .unwrap();
        params.distinguished_name.push(rcgen::DnType::CommonName, dns[0]);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.ca).unwrap();
        let leaf = Leaf {
            cert: self.dir.path().join(format!("{name}.pem")),
            key: self.dir.path().join(format!("{name}.key")),
        };
        std::fs::write(&leaf.cert, cert.pem()).unwrap();
        std::fs::write(&leaf.key, key.serialize_pem()).unwrap();
        leaf
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn client_config(
    roots: RootCertStore,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> ClientConfig {
    ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth()
}

fn both() -> Vec<&'static rustls::SupportedProtocolVersion> {
    vec![&rustls::version::TLS13, &rustls::version::TLS12]
}

async fn tls_connect(
    port: u16,
    sni: &str,
    config: Arc<ClientConfig>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = connect(port).await;
    let name = ServerName::try_from(sni.to_owned()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), TlsConnector::from(config).connect(name, tcp))
        .await
        .map_err(|_| std::io::Error::other("handshake timed out"))?
}

/// The subject CN of the certificate the server presented.
fn peer_cn(s: &TlsStream<TcpStream>) -> String {
    let der = s.get_ref().1.peer_certificates().unwrap()[0].clone();
    // The CN is the only UTF8String/PrintableString holding a dotted name in these certs; find
    // it by the DER of the CN attribute type (2.5.4.3) followed by a string.
    let bytes = der.as_ref();
    let oid = [0x06, 0x03, 0x55, 0x04, 0x03];
    let pos = bytes.windows(oid.len()).rposition(|w| w == oid).unwrap();
    let len = bytes[pos + 6] as usize;
    String::from_utf8(bytes[pos + 7..pos + 7 + len].to_vec()).unwrap()
}

/// Reads until the other side closes (EOF, or an error such as a missing close_notify) and
/// returns what came; fails when the connection is still open after [`WAIT`].
async fn read_to_close<S: tokio::io::AsyncRead + Unpin>(s: &mut S) -> Vec<u8> {
    let mut out = Vec::new();
    match tokio::time::timeout(WAIT, s.read_to_end(&mut out)).await {
        Ok(_) => out,
        Err(_) => panic!("still open after {WAIT:?}; {} bytes came: {out:?}", out.len()),
    }
}

async fn roundtrip(s: &mut TlsStream<TcpStream>, msg: &[u8]) -> Vec<u8> {
    exchange(s, msg, msg.len()).await
}

async fn exchange(s: &mut TlsStream<TcpStream>, msg: &[u8], expect: usize) -> Vec<u8> {
    s.write_all(msg).await.unwrap();
    let mut got = vec![0u8; expect];
    tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut got)).await.unwrap().unwrap();
    got
}

fn terminate_route(
    name: &str,
    port: u16,
    domains: &str,
    backend: u16,
    leaf: &Leaf,
    extra: &str,
) -> String {
    format!(
        r#"
[[routes]]
name = "{name}"
match = {{ ports = [{port}], domains = [{domains}] }}
action = {{ type = "forward", targets = [{{ host = "127.0.0.1", port = {backend} }}], tls = {{ mode = "terminate", certificate = {{ cert = "{c}", key = "{k}" }}{extra} }} }}
"#,
        c = leaf.cert.display(),
        k = leaf.key.display()
    )
}

#[tokio::test]
async fn terminates_with_the_certificate_of_each_domain_and_forwards_plaintext() {
    let pki = Pki::new();
    let a = pki.leaf("a", &["a.test"]);
    let b = pki.leaf("b", &["b.test", "*.b.test"]);
    let (echo, _t) = echo_backend().await;
    let (engine, [port]) = engine_on(|[port]| {
        let toml = format!(
            "{}{}",
            terminate_route("a", port, "\"a.test\"", echo.port(), &a, ""),
            terminate_route("b", port, "\"b.test\", \"*.b.test\"", echo.port(), &b, "")
        );
        toml
    })
    .await;
    let cfg = Arc::new(client_config(pki.roots(), &both()));
    for (sni, cn) in [("a.test", "a.test"), ("b.test", "b.test"), ("www.b.test", "b.test")] {
        let mut s = tls_connect(port, sni, Arc::clone(&cfg)).await.unwrap();
        assert_eq!(peer_cn(&s), cn, "certificate for {sni}");
        let msg = format!("hello {sni}");
        assert_eq!(roundtrip(&mut s, msg.as_bytes()).await, msg.as_bytes());
        s.shutdown().await.unwrap();
        let rest = read_to_close(&mut s).await;
        assert!(rest.is_empty(), "{rest:?}");
    }
    settle(&engine).await;
    // Plaintext is counted: 3 messages each way.
    let total: u64 = ["a.test", "b.test", "www.b.test"].iter().map(|s| 6 + s.len() as u64).sum();
    let st = engine.stats();
    assert_eq!((st.bytes_in, st.bytes_out), (total, total));
}

#[tokio::test]
async fn unknown_sni_on_a_port_only_route_gets_the_route_certificate() {
    let pki = Pki::new();
    let a = pki.leaf("a", &["a.test"]);
    let (echo, _t) = echo_backend().await;
    let (_engine, [port]) = engine_on(|[port]| {
        let toml = format!(
            r#"
    [[routes]]
    match = {{ ports = [{port}] }}
    action = {{ type = "forward", targets = [{{ host = "127.0.0.1", port = {} }}], tls = {{ mode = "terminate", certificate = {{ cert = "{}", key = "{}" }} }} }}
    "#,
            echo.port(),
            a.cert.display(),
            a.key.display()
        );
        toml
    })
    .await;
    // A client that asks for another name receives a.test's certificate and refuses it.
    let cfg = Arc::new(client_config(pki.roots(), &both()));
    let err = tls_connect(port, "other.test", Arc::clone(&cfg)).await.unwrap_err();
    assert!(
        err.to_string().contains("NotValidForName") || err.to_string().contains("certificate"),
        "{err}"
    );
    let mut s = tls_connect(port, "a.test", cfg).await.unwrap();
    assert_eq!(roundtrip(&mut s, b"x").await, b"x");
}

#[tokio::test]
async fn min_version_alpn_and_session_resumption() {
    let pki = Pki::new();
    let a = pki.leaf("a", &["a.test"]);
    let b = pki.leaf("b", &["b.test"]);
    let (echo, _t) = echo_backend().await;
    let (engine, [p13, p12]) = engine_on(|[p13, p12]| {
        let toml = format!(
            "{}{}",
            terminate_route(
                "tls13",
                p13,
                "\"a.test\"",
                echo.port(),
                &a,
                r#", min_version = "1.3", session_resumption = false, alpn = ["h2", "http/1.1"]"#
            ),
            terminate_route("tls12", p12, "\"b.test\"", echo.port(), &b, "")
        );
        toml
    })
    .await;

    // TLS 1.2 only: refused on the 1.3 route (counted), accepted on the default route.
    let only12 = Arc::new(client_config(pki.roots(), &[&rustls::version::TLS12]));
    assert!(tls_connect(p13, "a.test", Arc::clone(&only12)).await.is_err());
    let s = tls_connect(p12, "b.test", only12).await.unwrap();
    assert_eq!(s.get_ref().1.protocol_version(), Some(rustls::ProtocolVersion::TLSv1_2));
    drop(s);

    // ALPN: the route's preference among what the client offers.
    let mut c = client_config(pki.roots(), &both());
    c.alpn_protocols = vec![b"http/1.1".to_vec(), b"h2".to_vec()];
    let c = Arc::new(c);
    let mut s = tls_connect(p13, "a.test", Arc::clone(&c)).await.unwrap();
    assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    assert_eq!(roundtrip(&mut s, b"alpn").await, b"alpn");
    drop(s);

    // No resumption on the 1.3 route: every handshake is full.
    for _ in 0..2 {
        let mut s = tls_connect(p13, "a.test", Arc::clone(&c)).await.unwrap();
        assert_eq!(roundtrip(&mut s, b"r").await, b"r");
        assert_eq!(s.get_ref().1.handshake_kind(), Some(HandshakeKind::Full));
    }
    // Resumption on (default): the second handshake resumes (TLS 1.3 ticket).
    let c = Arc::new(client_config(pki.roots(), &both()));
    let mut kinds = Vec::new();
    for _ in 0..2 {
        let mut s = tls_connect(p12, "b.test", Arc::clone(&c)).await.unwrap();
        // Reading lets the client take the ticket that follows the handshake.
        assert_eq!(roundtrip(&mut s, b"r").await, b"r");
        kinds.push(s.get_ref().1.handshake_kind());
    }
    assert_eq!(kinds, [Some(HandshakeKind::Full), Some(HandshakeKind::Resumed)]);
    assert_eq!(engine.stats().refused_connections, 1, "the TLS 1.2 handshake counted as refused");
}

/// A TLS echo server (rustls) with this leaf.
async fn tls_echo_backend(leaf: &Leaf) -> u16 {
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(&leaf.cert).unwrap().map(Result::unwrap).collect();
    let key = PrivateKeyDer::from_pem_file(&leaf.key).unwrap();
    let sc = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    let acceptor = TlsAcceptor::from(Arc::new(sc));
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = l.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(s) = acceptor.accept(tcp).await else { return };
                let (mut r, mut w) = tokio::io::split(s);
                let _ = w.write_all(b"tls-backend:").await;
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    port
}

fn reencrypt_route(name: &str, port: u16, backend: u16, front: &Leaf, upstream: &str) -> String {
    format!(
        r#"
[[routes]]
name = "{name}"
match = {{ ports = [{port}] }}
action = {{ type = "forward", targets = [{{ host = "127.0.0.1", port = {backend} }}], tls = {{ mode = "terminate-and-reencrypt", certificate = {{ cert = "{c}", key = "{k}" }}{upstream} }} }}
"#,
        c = front.cert.display(),
        k = front.key.display()
    )
}

#[tokio::test]
async fn reencrypts_verifying_the_upstream_and_refuses_a_mismatch() {
    let pki = Pki::new();
    let front = pki.leaf("front", &["front.test"]);
    let back = pki.leaf("back", &["backend.internal"]);
    let other_ca = Pki::named("untrusted CA");
    let untrusted = other_ca.leaf("untrusted", &["backend.internal"]);
    let backend = tls_echo_backend(&back).await;
    let untrusted_backend = tls_echo_backend(&untrusted).await;
    let ca = pki.ca_path();
    let (engine, [ok, wrong_name, wrong_ca, no_verify]) =
        engine_on(|[ok, wrong_name, wrong_ca, no_verify]| {
            let toml = format!(
                "{}{}{}{}",
                reencrypt_route(
                    "ok",
                    ok,
                    backend,
                    &front,
                    &format!(
                        r#", upstream_ca = "{}", upstream_server_name = "backend.internal""#,
                        ca.display()
                    )
                ),
                reencrypt_route(
                    "wrong-name",
                    wrong_name,
                    backend,
                    &front,
                    &format!(
                        r#", upstream_ca = "{}", upstream_server_name = "elsewhere.internal""#,
                        ca.display()
                    )
                ),
                reencrypt_route(
                    "wrong-ca",
                    wrong_ca,
                    untrusted_backend,
                    &front,
                    &format!(
                        r#", upstream_ca = "{}", upstream_server_name = "backend.internal""#,
                        ca.display()
                    )
                ),
                reencrypt_route(
                    "no-verify",
                    no_verify,
                    untrusted_backend,
                    &front,
                    ", upstream_verify = false"
                ),
            );
            toml
        })
        .await;
    let c = Arc::new(client_config(pki.roots(), &both()));

    let mut s = tls_connect(ok, "front.test", Arc::clone(&c)).await.unwrap();
    assert_eq!(exchange(&mut s, b"ping", 16).await, b"tls-backend:ping");

    for port in [wrong_name, wrong_ca] {
        // The client's handshake with the proxy succeeds; the upstream one fails and the
        // client is closed without a byte served.
        let mut s = tls_connect(port, "front.test", Arc::clone(&c)).await.unwrap();
        let _ = s.write_all(b"ping").await;
        let got = read_to_close(&mut s).await;
        assert!(got.is_empty(), "nothing served on port {port}: {got:?}");
    }

    let mut s = tls_connect(no_verify, "front.test", Arc::clone(&c)).await.unwrap();
    assert_eq!(exchange(&mut s, b"x", 13).await, b"tls-backend:x");
    assert_eq!(engine.stats().refused_connections, 2, "{:?}", engine.stats());
}

#[tokio::test]
async fn bad_certificate_files_are_config_errors_naming_the_key_and_the_file() {
    let pki = Pki::new();
    let a = pki.leaf("a", &["a.test"]);
    let b = pki.leaf("b", &["b.test"]);
    let garbage = pki.dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not a certificate\n").unwrap();
    let missing = pki.dir.path().join("missing.pem");
    // Only parsed, never bound.
    let port = 8443;
    let cases = [
        (garbage.clone(), a.key.clone(), "routes[0].action.tls.certificate.cert", "garbage.pem"),
        (missing.clone(), a.key.clone(), "routes[0].action.tls.certificate.cert", "missing.pem"),
        (a.cert.clone(), garbage.clone(), "routes[0].action.tls.certificate.key", "garbage.pem"),
        // The key of another certificate.
        (a.cert.clone(), b.key.clone(), "routes[0].action.tls.certificate.key", "b.key"),
    ];
    for (cert, key, path, file) in cases {
        let text = format!(
            r#"
[[routes]]
match = {{ ports = [{port}] }}
action = {{ type = "forward", targets = [{{ host = "127.0.0.1", port = 1 }}], tls = {{ mode = "terminate", certificate = {{ cert = "{}", key = "{}" }} }} }}
"#,
            cert.display(),
            key.display()
        );
        let e = Config::from_str(&text, Format::Toml).unwrap_err();
        let shown = e.to_string();
        assert!(e.errors.iter().any(|x| x.path == path), "{path} in {shown}");
        assert!(shown.contains(file), "{file} in {shown}");
        assert!(e.errors.iter().all(|x| x.line.is_some()), "{shown}");
    }
}

#[tokio::test]
async fn reload_swaps_certificates_for_new_connections_only_and_refuses_bad_ones() {
    let pki = Pki::new();
    let old = pki.leaf("old", &["a.test"]);
    let new = pki.leaf("new", &["a.test", "new.a.test"]);
    let (echo, _t) = echo_backend().await;
    let (e, [port]) =
        engine_on(|[port]| terminate_route("a", port, "\"a.test\"", echo.port(), &old, "")).await;
    let route = |leaf: &Leaf| terminate_route("a", port, "\"a.test\"", echo.port(), leaf, "");
    let c = Arc::new(client_config(pki.roots(), &both()));
    let mut established = tls_connect(port, "a.test", Arc::clone(&c)).await.unwrap();
    let old_der = established.get_ref().1.peer_certificates().unwrap()[0].clone();
    assert_eq!(roundtrip(&mut established, b"before").await, b"before");

    let reload = |toml: String| {
        let text = format!("bind = [\"127.0.0.1\"]\n{toml}");
        Config::from_str(&text, Format::Toml)
    };
    e.reload(reload(route(&new)).unwrap()).await.unwrap();
    let s = tls_connect(port, "a.test", Arc::clone(&c)).await.unwrap();
    let new_der = s.get_ref().1.peer_certificates().unwrap()[0].clone();
    assert_ne!(old_der, new_der, "a new connection gets the new certificate");
    drop(s);
    // The established connection is untouched.
    assert_eq!(roundtrip(&mut established, b"after").await, b"after");

    // A certificate file that went bad: the configuration is refused when it is read (the
    // certificate material is loaded once, with the rest of the configuration), naming the
    // key and the file, and the engine keeps the old one.
    let broken = Leaf { cert: pki.dir.path().join("broken.pem"), key: new.key.clone() };
    std::fs::write(&broken.cert, "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
        .unwrap();
    let err = reload(route(&broken)).unwrap_err();
    e.reload_refused(&err);
    assert!(err.to_string().contains("routes[0].action.tls.certificate.cert"), "{err}");
    assert!(err.to_string().contains("broken.pem"), "{err}");
    let s = tls_connect(port, "a.test", c).await.unwrap();
    assert_eq!(s.get_ref().1.peer_certificates().unwrap()[0], new_der, "still the new one");
    assert_eq!(e.stats().reloads_failed, 1);
}

#[tokio::test]
async fn a_failed_handshake_closes_the_connection_and_counts_a_refusal() {
    let pki = Pki::new();
    let a = pki.leaf("a", &["a.test"]);
    let (echo, _t) = echo_backend().await;
    let (e, [port]) =
        engine_on(|[port]| terminate_route("a", port, "\"a.test\"", echo.port(), &a, "")).await;
    // A ClientHello with no cipher suite in common: the handshake fails at the proxy.
    let mut hello = vec![0x03, 0x03];
    hello.extend_from_slice(&[1u8; 32]);
    hello.push(0);
    hello.extend_from_slice(&[0x00, 0x02, 0x00, 0x0a]); // TLS_RSA_WITH_3DES_EDE_CBC_SHA
    hello.extend_from_slice(&[0x01, 0x00]);
    let sni = b"a.test";
    let mut ext = vec![0x00, 0x00];
    ext.extend_from_slice(&((sni.len() + 5) as u16).to_be_bytes());
    ext.extend_from_slice(&((sni.len() + 3) as u16).to_be_bytes());
    ext.push(0);
    ext.extend_from_slice(&(sni.len() as u16).to_be_bytes());
    ext.extend_from_slice(sni);
    hello.extend_from_slice(&(ext.len() as u16).to_be_bytes());
    hello.extend_from_slice(&ext);
    let mut hs = vec![0x01, 0x00];
    hs.extend_from_slice(&(hello.len() as u16).to_be_bytes());
    hs.extend_from_slice(&hello);
    let mut rec = vec![0x16, 0x03, 0x01];
    rec.extend_from_slice(&(hs.len() as u16).to_be_bytes());
    rec.extend_from_slice(&hs);
    let mut s = connect(port).await;
    s.write_all(&rec).await.unwrap();
    let got = read_all(&mut s, 10).await;
    // At most a TLS alert record (content type 21), never application data.
    assert!(got.is_empty() || got[0] == 21, "{got:?}");
    settle(&e).await;
    assert_eq!(e.stats().refused_connections, 1);
}

#[tokio::test]
async fn proxy_header_goes_out_in_plain_before_the_decrypted_bytes() {
    let pki = Pki::new();
    let a = pki.leaf("a", &["a.test"]);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Vec<u8>>();
    let (addr, _t) = backend(move |mut s| {
        let tx = tx.clone();
        async move {
            let _ = tx.send(read_to_close(&mut s).await);
        }
    })
    .await;
    let (_e, [port]) = engine_on(|[port]| {
        terminate_route("a", port, "\"a.test\"", addr.port(), &a, "")
            .replace("tls = {", "send_proxy_protocol = \"v1\", tls = {")
    })
    .await;
    let c = Arc::new(client_config(pki.roots(), &both()));
    let mut s = tls_connect(port, "a.test", c).await.unwrap();
    s.write_all(b"GET / HTTP/1.0\r\n\r\n").await.unwrap();
    s.shutdown().await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(10), rx.recv()).await.unwrap().unwrap();
    let text = String::from_utf8(got).unwrap();
    assert!(text.starts_with("PROXY TCP4 127.0.0.1 127.0.0.1 "), "{text}");
    assert!(text.ends_with("\r\nGET / HTTP/1.0\r\n\r\n"), "{text}");
}

/// The certificate is read once, when the configuration is parsed: a file removed afterwards
/// changes nothing, the engine serves what was read (and the parsed configuration can never
/// lack its certificate).
#[tokio::test]
async fn the_certificate_is_read_once_when_the_config_is_parsed() {
    let pki = Pki::new();
    let a = pki.leaf("a", &["a.test"]);
    let (echo, _t) = echo_backend().await;
    let served = std::fs::read(&a.cert).unwrap();
    let (_e, [port]) = start_on(|[port]| {
        // Each attempt parses its own copy of the file and removes it before starting.
        let cert = pki.dir.path().join(format!("a-{port}.pem"));
        std::fs::write(&cert, &served).unwrap();
        let leaf = Leaf { cert: cert.clone(), key: a.key.clone() };
        let text = format!(
            "bind = [\"127.0.0.1\"]\n{}",
            terminate_route("a", port, "\"a.test\"", echo.port(), &leaf, "")
        );
        let config = Config::from_str(&text, Format::Toml).unwrap();
        std::fs::remove_file(&cert).unwrap();
        Engine::start(config)
    })
    .await;
    let c = Arc::new(client_config(pki.roots(), &both()));
    let mut s = tls_connect(port, "a.test", c).await.unwrap();
    let der = s.get_ref().1.peer_certificates().unwrap()[0].clone();
    let pem_der = CertificateDer::pem_slice_iter(&served).next().unwrap().unwrap();
    assert_eq!(der, pem_der, "the certificate read at parse time");
    assert_eq!(roundtrip(&mut s, b"x").await, b"x");
}

#[tokio::test]
async fn path_routes_behind_termination_are_chosen_on_the_decrypted_request() {
    let pki = Pki::new();
    let a = pki.leaf("a", &["a.test"]);
    // Each backend answers with its name and the request line it received.
    let named = |name: &'static str| {
        backend(move |mut s| async move {
            let mut buf = vec![0u8; 4096];
            let mut got = Vec::new();
            while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                }
            }
            let line = String::from_utf8_lossy(&got).lines().next().unwrap_or("").to_owned();
            let _ = s.write_all(format!("{name}: {line}\n").as_bytes()).await;
            let _ = s.shutdown().await;
        })
    };
    let (api, _t1) = named("api").await;
    let (web, _t2) = named("web").await;
    let (admin, _t3) = named("admin").await;
    let (e, [port]) = engine_on(|[port]| {
        let tls = format!(
            r#"tls = {{ mode = "terminate", certificate = {{ cert = "{}", key = "{}" }} }}"#,
            a.cert.display(),
            a.key.display()
        );
        let toml = format!(
            r#"
    [[routes]]
    name = "web"
    match = {{ ports = [{port}], domains = ["a.test"] }}
    action = {{ type = "forward", targets = [{{ host = "127.0.0.1", port = {web} }}], {tls} }}

    [[routes]]
    name = "api"
    match = {{ ports = [{port}], domains = ["a.test"], path = "/api/*" }}
    action = {{ type = "forward", targets = [{{ host = "127.0.0.1", port = {api} }}], {tls} }}

    [[routes]]
    name = "admin"
    match = {{ ports = [{port}], domains = ["a.test"], headers = {{ "x-admin" = "yes" }} }}
    action = {{ type = "forward", targets = [{{ host = "127.0.0.1", port = {admin} }}], {tls} }}
    security = {{ ip_allow_list = ["10.9.9.9"] }}
    "#,
            web = web.port(),
            api = api.port(),
            admin = admin.port()
        );
        toml
    })
    .await;
    let c = Arc::new(client_config(pki.roots(), &both()));
    let ask = |req: &'static str| {
        let c = Arc::clone(&c);
        async move {
            let mut s = tls_connect(port, "a.test", c).await.unwrap();
            s.write_all(req.as_bytes()).await.unwrap();
            String::from_utf8_lossy(&read_to_close(&mut s).await).into_owned()
        }
    };
    assert_eq!(
        ask("GET /api/users HTTP/1.1\r\nHost: a.test\r\n\r\n").await,
        "api: GET /api/users HTTP/1.1\n"
    );
    assert_eq!(
        ask("GET /index.html HTTP/1.1\r\nHost: a.test\r\n\r\n").await,
        "web: GET /index.html HTTP/1.1\n"
    );
    // The admin route matches on its header but refuses this client: closed, nothing served.
    assert_eq!(ask("GET / HTTP/1.1\r\nHost: a.test\r\nX-Admin: yes\r\n\r\n").await, "");
    settle(&e).await;
    assert_eq!(e.stats().refused_connections, 1);
}

#[tokio::test]
async fn a_certificate_of_another_route_on_the_port_serves_a_name_the_route_lacks() {
    let pki = Pki::new();
    let a = pki.leaf("a", &["a.test"]);
    let b = pki.leaf("b", &["b.test"]);
    let (echo, _t) = echo_backend().await;
    let (other, _t2) = backend(|mut s| async move {
        let _ = s.write_all(b"route b").await;
    })
    .await;
    let (_e, [port]) = engine_on(|[port]| {
        // The catch-all route wins by priority for every name, but only has a.test's certificate.
        let toml = format!(
            "{}{}",
            terminate_route("catch-all", port, "\"*\"", echo.port(), &a, "")
                .replace("name = \"catch-all\"", "name = \"catch-all\"\npriority = 10"),
            terminate_route("b", port, "\"b.test\"", other.port(), &b, "")
        );
        toml
    })
    .await;
    let c = Arc::new(client_config(pki.roots(), &both()));
    let mut s = tls_connect(port, "b.test", Arc::clone(&c)).await.unwrap();
    assert_eq!(peer_cn(&s), "b.test", "b.test's certificate, from the other route");
    assert_eq!(roundtrip(&mut s, b"to the catch-all").await, b"to the catch-all");
    let s = tls_connect(port, "a.test", c).await.unwrap();
    assert_eq!(peer_cn(&s), "a.test");
}

#[tokio::test]
async fn shutdown_ends_a_connection_stuck_in_the_handshake() {
    let pki = Pki::new();
    let a = pki.leaf("a", &["a.test"]);
    let (echo, _t) = echo_backend().await;
    let (e, [port]) =
        engine_on(|[port]| terminate_route("a", port, "\"a.test\"", echo.port(), &a, "")).await;
    // A real ClientHello, then silence: the proxy answers and waits for the client's Finished.
    let cfg = Arc::new(client_config(pki.roots(), &both()));
    let mut conn =
        rustls::ClientConnection::new(cfg, ServerName::try_from("a.test").unwrap()).unwrap();
    let mut hello = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut hello).unwrap();
    }
    let mut s = connect(port).await;
    s.write_all(&hello).await.unwrap();
    let mut first = [0u8; 1];
    s.read_exact(&mut first).await.unwrap();
    assert_eq!(first[0], 0x16, "the ServerHello came");
    let summary = e.shutdown(Duration::from_millis(200)).await;
    assert_eq!(summary.forced, 1);
    assert_eq!(e.stats().active_connections, 0);
    // The rest of the server's flight may still arrive, then the connection is closed.
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "the proxy closed the connection");
}

#[tokio::test]
async fn a_bad_upstream_ca_is_a_config_error_naming_its_key() {
    let pki = Pki::new();
    let a = pki.leaf("a", &["a.test"]);
    let bad_ca = pki.dir.path().join("not-a-ca.pem");
    std::fs::write(&bad_ca, "nothing here\n").unwrap();
    let text =
        reencrypt_route("r", 8443, 1, &a, &format!(r#", upstream_ca = "{}""#, bad_ca.display()));
    let e = Config::from_str(&text, Format::Toml).unwrap_err();
    assert!(e.errors.iter().any(|x| x.path == "routes[0].action.tls.upstream_ca"), "{e}");
    assert!(e.to_string().contains("not-a-ca.pem"), "{e}");
    // With verification off the CA is not read.
    let text = reencrypt_route(
        "r",
        8443,
        1,
        &a,
        &format!(r#", upstream_ca = "{}", upstream_verify = false"#, bad_ca.display()),
    );
    assert!(Config::from_str(&text, Format::Toml).is_ok());
}

#[tokio::test]
async fn sessions_resume_across_a_reload() {
    let pki = Pki::new();
    let a = pki.leaf("a", &["a.test"]);
    let (echo, _t) = echo_backend().await;
    let (e, [port]) =
        engine_on(|[port]| terminate_route("a", port, "\"a.test\"", echo.port(), &a, "")).await;
    let route = terminate_route("a", port, "\"a.test\"", echo.port(), &a, "");
    let c = Arc::new(client_config(pki.roots(), &both()));
    let mut s = tls_connect(port, "a.test", Arc::clone(&c)).await.unwrap();
    assert_eq!(roundtrip(&mut s, b"1").await, b"1");
    assert_eq!(s.get_ref().1.handshake_kind(), Some(HandshakeKind::Full));
    drop(s);
    let text = format!("bind = [\"127.0.0.1\"]\n{route}");
    e.reload(Config::from_str(&text, Format::Toml).unwrap()).await.unwrap();
    let mut s = tls_connect(port, "a.test", Arc::clone(&c)).await.unwrap();
    assert_eq!(roundtrip(&mut s, b"2").await, b"2");
    assert_eq!(s.get_ref().1.handshake_kind(), Some(HandshakeKind::Resumed));
    // A renamed route, or a new certificate, starts with fresh ticket keys: full handshake.
    let renamed = text.replace("name = \"a\"", "name = \"a2\"");
    e.reload(Config::from_str(&renamed, Format::Toml).unwrap()).await.unwrap();
    let mut s = tls_connect(port, "a.test", c).await.unwrap();
    assert_eq!(roundtrip(&mut s, b"3").await, b"3");
    assert_eq!(s.get_ref().1.handshake_kind(), Some(HandshakeKind::Full));
}

#[tokio::test]
async fn upstream_name_defaults_to_the_client_sni_then_the_target_host() {
    let pki = Pki::new();
    let front = pki.leaf("front", &["backend.internal", "127.0.0.1"]);
    let back = pki.leaf("back", &["backend.internal", "127.0.0.1"]);
    let backend = tls_echo_backend(&back).await;
    let (_e, [port]) = engine_on(|[port]| {
        reencrypt_route(
            "r",
            port,
            backend,
            &front,
            &format!(r#", upstream_ca = "{}""#, pki.ca_path().display()),
        )
    })
    .await;
    let c = Arc::new(client_config(pki.roots(), &both()));
    // The client's SNI goes upstream and the backend's certificate is valid for it.
    let mut s = tls_connect(port, "backend.internal", Arc::clone(&c)).await.unwrap();
    assert_eq!(exchange(&mut s, b"sni", 15).await, b"tls-backend:sni");
    // An IP address as server name: the client sends no SNI, so the target host (127.0.0.1,
    // in the backend's certificate) is verified.
    let mut s = tls_connect(port, "127.0.0.1", c).await.unwrap();
    assert_eq!(exchange(&mut s, b"ip", 14).await, b"tls-backend:ip");
}
