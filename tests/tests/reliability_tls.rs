//! Reliability through TLS termination and re-encryption (issue 17): the half-close matrix of
//! `reliability.rs` (which covers the plain copy and splice) with a real rustls client, and for
//! re-encryption a rustls backend.
//!
//! A TLS half-close is a `close_notify` followed by the TCP FIN (`shutdown(Write)`). The proxy
//! must pass each on: the client's `close_notify` and FIN become a FIN to a plain backend (a
//! `close_notify` and a FIN to a TLS backend) while the other direction keeps running; the
//! backend's FIN becomes a `close_notify` and a FIN to the client.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::sync::mpsc::{self, Receiver};
use std::thread;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use smartproxy_tests::*;

fn sha256(b: &[u8]) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA256, b).as_ref().to_vec()
}

/// Bytes of a given length, different for each `seed`.
fn payload(len: usize, seed: usize) -> Vec<u8> {
    (0..len).map(|k| (k * (seed * 2 + 1) + k / 251 + seed) as u8).collect()
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn client_config(
    ca: &Path,
    version: &'static rustls::SupportedProtocolVersion,
) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[version])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    Arc::new(config)
}

fn server_config(leaf: &LeafFiles) -> Arc<rustls::ServerConfig> {
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(&leaf.cert).unwrap().map(Result::unwrap).collect();
    let key = PrivateKeyDer::from_pem_file(&leaf.key).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    Arc::new(config)
}

/// How a peer's reading ended.
#[derive(Debug)]
struct Ended {
    /// The plaintext that came.
    data: Vec<u8>,
    /// A TLS `close_notify` came before the FIN (always false on plain TCP).
    close_notify: bool,
    /// When the FIN came.
    at: Instant,
}

/// One end of a connection, TLS (rustls) or plain TCP, used by a writer and a reader thread at
/// once: each does its socket I/O on its own clone of the TCP stream; the rustls state is
/// shared behind a mutex (a write to the socket happens under it, so records keep their order).
struct End {
    tcp: TcpStream,
    tls: Option<Arc<Mutex<rustls::Connection>>>,
}

impl End {
    fn plain(tcp: TcpStream) -> End {
        tcp.set_read_timeout(Some(WAIT)).unwrap();
        tcp.set_write_timeout(Some(WAIT)).unwrap();
        End { tcp, tls: None }
    }

    /// Completes the handshake of `conn` over `tcp` (blocking).
    fn tls(tcp: TcpStream, conn: impl Into<rustls::Connection>) -> io::Result<End> {
        let mut end = End::plain(tcp);
        let mut conn = conn.into();
        // The writer flushes after every chunk: no need to stop at rustls' default limit.
        conn.set_buffer_limit(None);
        while conn.is_handshaking() {
            conn.complete_io(&mut end.tcp)?;
        }
        end.tls = Some(Arc::new(Mutex::new(conn)));
        Ok(end)
    }

    fn try_clone(&self) -> End {
        End { tcp: self.tcp.try_clone().unwrap(), tls: self.tls.clone() }
    }

    /// Sends `data` (encrypted when TLS).
    fn send(&mut self, data: &[u8]) -> io::Result<()> {
        let Some(tls) = &self.tls else { return self.tcp.write_all(data) };
        for chunk in data.chunks(16 * 1024) {
            let mut c = tls.lock();
            c.writer().write_all(chunk)?;
            while c.wants_write() {
                c.write_tls(&mut self.tcp)?;
            }
        }
        Ok(())
    }

    /// Half-closes: a `close_notify` (TLS), then the FIN.
    fn close_write(&mut self) -> io::Result<()> {
        if let Some(tls) = &self.tls {
            let mut c = tls.lock();
            c.send_close_notify();
            while c.wants_write() {
                c.write_tls(&mut self.tcp)?;
            }
        }
        self.tcp.shutdown(Shutdown::Write)
    }

    /// Reads until the peer's FIN (bounded by the socket's read timeout, [`WAIT`]).
    fn read_to_fin(&mut self) -> io::Result<Ended> {
        let mut data = Vec::new();
        let mut raw = vec![0u8; 64 * 1024];
        let mut plain = vec![0u8; 64 * 1024];
        let mut close_notify = false;
        loop {
            let n = self.tcp.read(&mut raw)?;
            let Some(tls) = &self.tls else {
                if n == 0 {
                    return Ok(Ended { data, close_notify, at: Instant::now() });
                }
                data.extend_from_slice(&raw[..n]);
                continue;
            };
            let mut c = tls.lock();
            if n == 0 {
                let at = Instant::now();
                if !close_notify {
                    // Tells rustls about the EOF; what it still holds is drained below.
                    c.read_tls(&mut &[][..])?;
                    // UnexpectedEof: the TCP connection ended without a close_notify.
                    let end = io::ErrorKind::UnexpectedEof;
                    close_notify = drain_plaintext(c.reader(), &mut plain, &mut data, end)?;
                }
                return Ok(Ended { data, close_notify, at });
            }
            if close_notify {
                let e = format!("{n} bytes after the peer's close_notify");
                return Err(io::Error::other(e));
            }
            let mut rest = &raw[..n];
            while !rest.is_empty() && !close_notify {
                c.read_tls(&mut rest)?;
                c.process_new_packets().map_err(io::Error::other)?;
                let more = io::ErrorKind::WouldBlock;
                close_notify = drain_plaintext(c.reader(), &mut plain, &mut data, more)?;
            }
            if close_notify && !rest.is_empty() {
                let e = format!("{} bytes after the peer's close_notify", rest.len());
                return Err(io::Error::other(e));
            }
            // Anything rustls has to answer (a key update).
            while c.wants_write() {
                c.write_tls(&mut self.tcp)?;
            }
        }
    }
}

/// A case of the matrix: what each side does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Case {
    /// The client sends `n` bytes and half-closes; the backend reads to EOF, then answers `n`
    /// bytes and closes.
    ClientFirst(usize),
    /// The backend sends `n` bytes and half-closes at once, then reads to EOF; the client sends
    /// `n` bytes meanwhile and half-closes.
    BackendFirst(usize),
    /// The client half-closes at once; the backend stays silent with its side open.
    ClientHalfOpen,
    /// The backend half-closes at once; the client stays silent with its side open.
    BackendHalfOpen,
    /// Neither sends nor closes.
    BothSilent,
}

impl Case {
    /// The bytes client -> backend and backend -> client.
    fn payloads(self, i: usize) -> (Vec<u8>, Vec<u8>) {
        let n = match self {
            Case::ClientFirst(n) | Case::BackendFirst(n) => n,
            _ => 0,
        };
        (payload(n, 2 * i + 1), payload(n, 2 * i + 2))
    }
}

/// What the backend saw: how its read ended (with the SHA-256 of what it read), and how long
/// after it accepted (or half-closed, when it did first).
#[derive(Debug)]
struct Report {
    digest: Vec<u8>,
    close_notify: bool,
    /// From the accept, or from the backend's own half-close when it closed first, to the FIN.
    fin_after: Duration,
}

/// A backend for one case (TLS when `tls` is given): reports what it saw once its read ended,
/// then keeps a silent side open until the proxy closes it (at most [`WAIT`]).
fn backend(
    case: Case,
    tls: Option<Arc<rustls::ServerConfig>>,
    reply: Vec<u8>,
) -> (u16, Receiver<Result<Report, String>>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let run = || -> io::Result<(Report, End)> {
            let (tcp, _) = l.accept()?;
            let mut end = match tls {
                Some(cfg) => End::tls(tcp, rustls::ServerConnection::new(cfg).unwrap())?,
                None => End::plain(tcp),
            };
            let mut from = Instant::now();
            if matches!(case, Case::BackendFirst(_) | Case::BackendHalfOpen) {
                end.send(&reply)?;
                end.close_write()?;
                from = Instant::now();
            }
            let ended = end.read_to_fin()?;
            if matches!(case, Case::ClientFirst(_)) {
                end.send(&reply)?;
                end.close_write()?;
            }
            let report = Report {
                digest: sha256(&ended.data),
                close_notify: ended.close_notify,
                fin_after: ended.at - from,
            };
            Ok((report, end))
        };
        match run() {
            Ok((report, end)) => {
                let _ = tx.send(Ok(report));
                if matches!(case, Case::ClientHalfOpen) {
                    // Keeps its side open: only the proxy may end the connection.
                    thread::park_timeout(WAIT);
                }
                drop(end);
            }
            Err(e) => {
                let _ = tx.send(Err(format!("backend {case:?}: {e}")));
            }
        }
    });
    (port, rx)
}

/// TLS to the proxy on `port`, for the name `a.test`.
fn client(port: u16, cfg: &Arc<rustls::ClientConfig>) -> End {
    let name = ServerName::try_from("a.test").unwrap();
    let conn = rustls::ClientConnection::new(Arc::clone(cfg), name).unwrap();
    End::tls(connect(port), conn).unwrap_or_else(|e| panic!("handshake with port {port}: {e}"))
}

const CASES: [Case; 7] = [
    Case::ClientFirst(0),
    Case::ClientFirst(4 << 20),
    Case::BackendFirst(0),
    Case::BackendFirst(4 << 20),
    Case::ClientHalfOpen,
    Case::BackendHalfOpen,
    Case::BothSilent,
];

/// The inactivity timeout of the routes under test, and the window in which a half-open
/// connection must be closed (the timeout is checked every quarter of it).
const IDLE: Duration = Duration::from_secs(1);
const IDLE_MIN: Duration = Duration::from_millis(950);
const IDLE_MAX: Duration = Duration::from_millis(2500);
/// A close that is passed on (not timed out) arrives well within this.
const PROMPT: Duration = Duration::from_millis(500);

/// Runs every case of [`CASES`] through one proxy whose routes terminate TLS (`reencrypt`:
/// and re-encrypt to TLS backends), with the client on `version`.
fn matrix(reencrypt: bool, version: &'static rustls::SupportedProtocolVersion) {
    let pki = Pki::new();
    let front = pki.leaf("front", &["a.test"]);
    let back = pki.leaf("back", &["backend.test"]);
    let backend_tls = reencrypt.then(|| server_config(&back));
    let backends: Vec<(u16, Receiver<Result<Report, String>>)> = CASES
        .iter()
        .enumerate()
        .map(|(i, &case)| backend(case, backend_tls.clone(), case.payloads(i).1))
        .collect();
    let ca = pki.ca_pem.display().to_string();
    let (proxy, ports) = Proxy::start_on(|ports: [u16; 8]| {
        let mut c = format!(
            "bind = [\"127.0.0.1\"]\n[defaults]\ninactivity_timeout = \"{}ms\"\n\
             [admin]\nlisten = \"127.0.0.1:{}\"\n",
            IDLE.as_millis(),
            ports[7]
        );
        for (i, (b, _)) in backends.iter().enumerate() {
            let tls = if reencrypt {
                format!("mode = \"terminate-and-reencrypt\", upstream_ca = \"{ca}\", ")
            } else {
                "mode = \"terminate\", ".to_owned()
            };
            c.push_str(&format!(
                "[[routes]]\nname = \"r{i}\"\nmatch = {{ ports = [{}] }}\n\
                 action = {{ type = \"forward\", targets = [{{ host = \"127.0.0.1\", port = {b} }}], \
                 tls = {{ {tls}certificate = {{ cert = \"{}\", key = \"{}\" }} }} }}\n",
                ports[i],
                front.cert.display(),
                front.key.display()
            ));
        }
        c
    });
    let admin = ports[7];
    let cfg = client_config(&pki.ca_pem, version);
    let label = format!(
        "{} {:?}",
        if reencrypt { "re-encryption" } else { "termination" },
        version.version
    );
    // Every case at once: the half-open ones each wait for the inactivity timeout.
    let threads: Vec<_> = CASES
        .iter()
        .enumerate()
        .map(|(i, &case)| {
            let (port, cfg) = (ports[i], cfg.clone());
            let what = format!("{label}, {case:?}");
            thread::spawn(move || -> (Ended, Option<Duration>) {
                let (up, down) = case.payloads(i);
                let mut end = client(port, &cfg);
                match case {
                    Case::ClientFirst(_) | Case::BackendFirst(_) => {
                        let mut w = end.try_clone();
                        let writer = thread::spawn(move || {
                            w.send(&up)?;
                            w.close_write()
                        });
                        let ended = end.read_to_fin().unwrap_or_else(|e| panic!("{what}: {e}"));
                        writer.join().unwrap().unwrap_or_else(|e| panic!("{what}: send: {e}"));
                        assert!(
                            ended.data == down,
                            "{what}: {} of {} bytes back",
                            ended.data.len(),
                            down.len()
                        );
                        (ended, None)
                    }
                    Case::ClientHalfOpen => {
                        end.close_write().unwrap();
                        let from = Instant::now();
                        let ended = end.read_to_fin().unwrap_or_else(|e| panic!("{what}: {e}"));
                        let after = ended.at - from;
                        (ended, Some(after))
                    }
                    Case::BackendHalfOpen => {
                        let from = Instant::now();
                        let ended = end.read_to_fin().unwrap_or_else(|e| panic!("{what}: {e}"));
                        let after = ended.at - from;
                        // Keeps its side open and silent until the proxy closed the backend's
                        // connection (then this one is closed too: checked below).
                        thread::park_timeout(WAIT);
                        (ended, Some(after))
                    }
                    Case::BothSilent => {
                        let from = Instant::now();
                        let ended = end.read_to_fin().unwrap_or_else(|e| panic!("{what}: {e}"));
                        let after = ended.at - from;
                        (ended, Some(after))
                    }
                }
            })
        })
        .collect();
    for (i, &case) in CASES.iter().enumerate() {
        let what = format!("{label}, {case:?}");
        let (up, _) = case.payloads(i);
        let b = backends[i].1.recv_timeout(WAIT * 2).unwrap_or_else(|_| panic!("{what}: backend"));
        let b = b.unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(b.digest, sha256(&up), "{what}: what the backend read");
        eprintln!("{what}: backend FIN after {:?}, close_notify {}", b.fin_after, b.close_notify);
        match case {
            // The client's half-close is passed on (a close_notify too to a TLS backend) at once.
            Case::ClientFirst(_) | Case::BackendFirst(_) | Case::ClientHalfOpen => {
                assert_eq!(b.close_notify, reencrypt, "{what}: close_notify to the backend");
                if case == Case::ClientHalfOpen {
                    assert!(b.fin_after < PROMPT, "{what}: FIN after {:?}", b.fin_after);
                }
            }
            // The backend half-closed (or stayed silent) and the client did not: the proxy
            // closed the connection at the inactivity timeout.
            Case::BackendHalfOpen | Case::BothSilent => assert_within(
                &format!("{what}: the backend's connection closed"),
                b.fin_after,
                IDLE_MIN,
                IDLE_MAX,
            ),
        }
    }
    // Closed whole on both sides: the proxy holds no connection any more and every gauge is 0,
    // while the silent sides of the half-open connections still hold theirs open (their close
    // would otherwise end the connection normally).
    let pid = proxy.pid();
    wait_for(
        "the proxy without open TCP connections",
        || {
            let mine = socket_inodes(pid);
            tcp_table().into_iter().filter(|t| t.state != 0x0A && mine.contains(&t.inode)).count()
        },
        |&n| n == 0,
    );
    wait_for("no open connection", || metrics_json(admin), |m| m["connections"]["active"] == 0);
    for (i, t) in threads.into_iter().enumerate() {
        let case = CASES[i];
        let what = format!("{label}, {case:?}");
        if case == Case::BackendHalfOpen {
            t.thread().unpark();
        }
        let (ended, after) = t.join().unwrap_or_else(|_| panic!("{what}: client failed"));
        eprintln!(
            "{what}: client got {} bytes, close_notify {}, FIN after {after:?}",
            ended.data.len(),
            ended.close_notify
        );
        match case {
            // The backend's FIN reaches the client as a close_notify and a FIN.
            Case::ClientFirst(_) | Case::BackendFirst(_) | Case::BackendHalfOpen => {
                assert!(ended.close_notify, "{what}: no close_notify before the FIN");
                if let Some(after) = after {
                    assert!(after < PROMPT, "{what}: the backend's FIN came after {after:?}");
                }
            }
            Case::ClientHalfOpen | Case::BothSilent => {
                let after = after.expect("timed");
                assert_within(
                    &format!("{what}: the client's connection closed"),
                    after,
                    IDLE_MIN,
                    IDLE_MAX,
                );
            }
        }
    }
}

/// The half-close matrix (issue 17) through TLS termination, with TLS 1.3 and TLS 1.2 clients:
/// each side closing first with 4 MiB in flight each way and with none, every byte arrives
/// (SHA-256 on the backend, byte comparison on the client); the client's `close_notify` and
/// FIN reach the backend as a FIN at once, the backend's FIN reaches the client as a
/// `close_notify` and a FIN; a connection half-closed by one side (or by neither) and silent
/// on the other is closed whole at the inactivity timeout (1 s) on both sides; the proxy then
/// holds no connection and every gauge is back to 0.
#[test]
fn half_close_matrix_tls_termination() {
    matrix(false, &rustls::version::TLS13);
    matrix(false, &rustls::version::TLS12);
}

/// The same matrix through TLS re-encryption (a rustls backend): a half-close is passed on
/// as a `close_notify` and a FIN in both directions.
#[test]
fn half_close_matrix_tls_reencryption() {
    matrix(true, &rustls::version::TLS13);
}

/// Reads what rustls holds decrypted into `data`: `Ok(true)` once the peer's close_notify was
/// read, `Ok(false)` when rustls stops with `until` (nothing more for now, or the end of the
/// stream without a close_notify).
fn drain_plaintext(
    mut r: rustls::Reader<'_>,
    plain: &mut [u8],
    data: &mut Vec<u8>,
    until: io::ErrorKind,
) -> io::Result<bool> {
    loop {
        match r.read(plain) {
            Ok(0) => return Ok(true),
            Ok(k) => data.extend_from_slice(&plain[..k]),
            Err(e) if e.kind() == until => return Ok(false),
            Err(e) => return Err(e),
        }
    }
}
