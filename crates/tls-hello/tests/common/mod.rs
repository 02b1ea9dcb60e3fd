//! Shared helpers: real ClientHellos from rustls, openssl and curl, and the tls-parser
//! reference view of a ClientHello.

#![allow(dead_code, unreachable_pub)]

use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig, ServerConnection};
use smartproxy_tls_hello::{ClientHello, Peek, PeekOptions, peek};
use tls_parser::{TlsExtension, TlsExtensionType, TlsMessage, TlsMessageHandshake};

pub const FIXTURES: &[&str] = &[
    "openssl-s_client-tls13.bin",
    "openssl-s_client-tls12.bin",
    "openssl-s_client-nosni.bin",
    "curl-h2.bin",
    "curl-http1.bin",
    "rustls-resume-tls13.bin",
];

pub fn fixture(name: &str) -> Vec<u8> {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The first flight of a rustls client.
pub fn rustls_hello(
    sni: &str,
    alpn: &[&[u8]],
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Vec<u8> {
    let mut cfg = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(RootCertStore::empty())
        .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
    first_flight(&Arc::new(cfg), sni)
}

fn first_flight(cfg: &Arc<ClientConfig>, sni: &str) -> Vec<u8> {
    let name = ServerName::try_from(sni.to_owned()).unwrap();
    let mut conn = ClientConnection::new(Arc::clone(cfg), name).unwrap();
    let mut out = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut out).unwrap();
    }
    out
}

/// A ClientHello that resumes: a full in-memory handshake with a rustls server (rcgen
/// certificate), then the second connection's first flight (PSK for TLS 1.3, a session
/// ticket for TLS 1.2).
pub fn rustls_resumption_hello(version: &'static rustls::SupportedProtocolVersion) -> Vec<u8> {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["resume.example.com".to_owned()])
        .unwrap()
        .signed_by(&leaf_key, &ca)
        .unwrap();

    let mut roots = RootCertStore::empty();
    roots.add(CertificateDer::from(ca.der().to_vec())).unwrap();
    let mut client = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[version])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    client.alpn_protocols = vec![b"h2".to_vec()];
    let client = Arc::new(client);
    let mut server = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[version])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![CertificateDer::from(leaf.der().to_vec())],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der())),
        )
        .unwrap();
    server.ticketer = rustls::crypto::ring::Ticketer::new().unwrap();
    server.alpn_protocols = vec![b"h2".to_vec()];
    let server = Arc::new(server);

    let mut c = ClientConnection::new(
        Arc::clone(&client),
        ServerName::try_from("resume.example.com").unwrap(),
    )
    .unwrap();
    let mut s = ServerConnection::new(server).unwrap();
    for _ in 0..10 {
        let mut buf = Vec::new();
        while c.wants_write() {
            c.write_tls(&mut buf).unwrap();
        }
        s.read_tls(&mut buf.as_slice()).unwrap();
        s.process_new_packets().unwrap();
        let mut buf = Vec::new();
        while s.wants_write() {
            s.write_tls(&mut buf).unwrap();
        }
        c.read_tls(&mut buf.as_slice()).unwrap();
        c.process_new_packets().unwrap();
        if !c.is_handshaking() && !s.is_handshaking() && !s.wants_write() {
            break;
        }
    }
    assert!(!c.is_handshaking(), "handshake did not finish");
    first_flight(&client, "resume.example.com")
}

pub fn complete(buf: &[u8]) -> ClientHello {
    match peek(buf, &PeekOptions::default()) {
        Ok(Peek::Complete(h)) => h,
        other => panic!("expected a complete ClientHello, got {other:?}"),
    }
}

/// The fields compared between this crate and tls-parser.
#[derive(Debug, PartialEq, Eq)]
pub struct View {
    pub legacy_version: u16,
    pub random: Vec<u8>,
    pub session_id: Vec<u8>,
    pub ciphers: Vec<u16>,
    pub compression: Vec<u8>,
    pub ext_types: Vec<u16>,
    pub sni: Option<Vec<u8>>,
    pub alpn: Vec<Vec<u8>>,
    pub supported_versions: Vec<u16>,
    pub session_ticket: Option<usize>,
    pub psk: bool,
    pub early_data: bool,
}

fn grease(t: u16) -> u16 {
    if t & 0x0f0f == 0x0a0a && t >> 8 == t & 0xff { 0xfafa } else { t }
}

pub fn view(h: &ClientHello) -> View {
    View {
        legacy_version: h.legacy_version,
        random: h.random.to_vec(),
        session_id: h.session_id.clone(),
        ciphers: h.cipher_suites.clone(),
        compression: h.compression_methods.clone(),
        ext_types: h.extensions.iter().map(|&t| grease(t)).collect(),
        sni: h.server_name.as_ref().map(|s| s.as_bytes().to_vec()),
        alpn: h.alpn.clone(),
        supported_versions: h.supported_versions.clone(),
        session_ticket: h.session_ticket,
        psk: h.psk,
        early_data: h.early_data,
    }
}

/// tls-parser's view of a single-record ClientHello; `None` when it does not parse it.
pub fn reference(buf: &[u8]) -> Option<View> {
    let (_, rec) = tls_parser::parse_tls_plaintext(buf).ok()?;
    let Some(TlsMessage::Handshake(TlsMessageHandshake::ClientHello(ch))) = rec.msg.first() else {
        return None;
    };
    let exts = match ch.ext {
        None => Vec::new(),
        Some(e) => {
            let (rest, v) = tls_parser::parse_tls_client_hello_extensions(e).ok()?;
            if !rest.is_empty() {
                return None;
            }
            v
        }
    };
    let mut v = View {
        legacy_version: ch.version.0,
        random: ch.random.to_vec(),
        session_id: ch.session_id.map(<[u8]>::to_vec).unwrap_or_default(),
        ciphers: ch.ciphers.iter().map(|c| c.0).collect(),
        compression: ch.comp.iter().map(|c| c.0).collect(),
        ext_types: exts.iter().map(|e| grease(TlsExtensionType::from(e).0)).collect(),
        sni: None,
        alpn: Vec::new(),
        supported_versions: Vec::new(),
        session_ticket: None,
        psk: false,
        early_data: false,
    };
    for e in &exts {
        match e {
            TlsExtension::SNI(list) => {
                v.sni = list.iter().find(|(t, _)| t.0 == 0).map(|(_, n)| n.to_vec());
            }
            TlsExtension::ALPN(list) => v.alpn = list.iter().map(|p| p.to_vec()).collect(),
            TlsExtension::SupportedVersions(list) => {
                v.supported_versions = list.iter().map(|x| x.0).collect();
            }
            TlsExtension::SessionTicket(t) => v.session_ticket = Some(t.len()),
            TlsExtension::PreSharedKey(_) => v.psk = true,
            TlsExtension::EarlyData(_) => v.early_data = true,
            _ => {}
        }
    }
    Some(v)
}

/// Re-frames the handshake bytes of a single-record ClientHello into records cut at `cuts`
/// (offsets into the handshake message, increasing, inside it).
pub fn split_records(buf: &[u8], cuts: &[usize]) -> Vec<u8> {
    let hs_len = usize::from(u16::from_be_bytes([buf[3], buf[4]]));
    let hs = &buf[5..5 + hs_len];
    let mut out = Vec::new();
    let mut start = 0;
    for &c in cuts.iter().chain(std::iter::once(&hs.len())) {
        let frag = &hs[start..c];
        out.extend_from_slice(&[0x16, buf[1], buf[2]]);
        out.extend_from_slice(&(frag.len() as u16).to_be_bytes());
        out.extend_from_slice(frag);
        start = c;
    }
    out.extend_from_slice(&buf[5 + hs_len..]);
    out
}
