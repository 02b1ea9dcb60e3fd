//! The data path against itself: chains of 1, 2 and 3 smartproxy hops (real processes on
//! loopback) in front of an echo server, for each runtime (`workers = 1`, `per-worker` and
//! `multi-thread` with 2 workers), splice on and off, and with no PROXY header, v1 or v2 on
//! every hop (the client sends one to the first hop, each hop to the next).
//!
//! Every transfer checks the exact SHA-256 of what came back against what was sent, under a
//! deadline, and fails with how far it got. Issue 10: two hops in a row stalled after 2-7 MiB
//! of an 8 MiB echo (a short splice cleared the socket's readiness with bytes still queued).
//!
//! A transfer writes from one thread while it reads on another ("while reading
//! concurrently"); the half-close case writes everything, shuts its write side down, and only
//! then reads the echo to EOF.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use ring::digest::{SHA256, digest};
use smartproxy_proxy_protocol::Header;
use smartproxy_tests::*;

const KIB: usize = 1024;
const MIB: usize = 1024 * KIB;

/// How the hops run their workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rt {
    /// `workers = 1`.
    One,
    /// `workers = 2`, `runtime = "per-worker"`.
    PerWorker,
    /// `workers = 2`, `runtime = "multi-thread"`.
    MultiThread,
}

impl Rt {
    const ALL: [Rt; 3] = [Rt::One, Rt::PerWorker, Rt::MultiThread];

    fn config(self) -> &'static str {
        match self {
            Rt::One => "workers = 1\n",
            Rt::PerWorker => "workers = 2\nruntime = \"per-worker\"\n",
            Rt::MultiThread => "workers = 2\nruntime = \"multi-thread\"\n",
        }
    }
}

/// The PROXY header on every hop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pp {
    Off,
    V1,
    V2,
}

impl Pp {
    const ALL: [Pp; 3] = [Pp::Off, Pp::V1, Pp::V2];

    fn name(self) -> &'static str {
        match self {
            Pp::Off => "false",
            Pp::V1 => "\"v1\"",
            Pp::V2 => "\"v2\"",
        }
    }
}

/// `hops` smartproxy processes in a row in front of an echo backend.
struct Chain {
    /// The first hop first.
    hops: Vec<Proxy>,
    entry: u16,
    pp: Pp,
    label: String,
    _backend: Backend,
}

impl Chain {
    fn start(hops: usize, rt: Rt, splice: bool, pp: Pp) -> Chain {
        let backend = Backend::echo();
        let mut started = Vec::new();
        // The last hop first, so that each hop's target listens before it is used.
        let mut next_hop: Option<u16> = None;
        for i in (0..hops).rev() {
            let (next, send) = match next_hop {
                Some(p) => (p, pp.name()),
                None => (backend.port(), "false"),
            };
            let trust = if pp == Pp::Off { "" } else { "proxy_ips = [\"127.0.0.1\"]\n" };
            let (hop, [port]) = Proxy::start_on(|[port]| {
                format!(
                    "{rt}bind = [\"127.0.0.1\"]\n{trust}\n[defaults]\nsplice = {splice}\n\
                     max_connections_per_ip = 1000\n\n[[routes]]\nname = \"hop{i}\"\n\
                     match = {{ ports = [{port}] }}\naction = {{ type = \"forward\", targets = \
                     [{{ host = \"127.0.0.1\", port = {next} }}], send_proxy_protocol = {send} }}\n",
                    rt = rt.config(),
                )
            });
            started.push(hop);
            next_hop = Some(port);
        }
        started.reverse();
        let label = format!("{hops} hop(s), {rt:?}, splice {splice}, PROXY {pp:?}");
        let entry = next_hop.expect("at least one hop");
        Chain { hops: started, entry, pp, label, _backend: backend }
    }

    /// A connection to the first hop, with the client's PROXY header sent when the chain uses
    /// one.
    fn connect(&self) -> TcpStream {
        let mut s = connect(self.entry);
        let header = match self.pp {
            Pp::Off => None,
            Pp::V1 => Some(Header::v1(client_addr(&s), server_addr(self.entry))),
            Pp::V2 => Some(Header::v2(client_addr(&s), server_addr(self.entry))),
        };
        if let Some(h) = header {
            let mut buf = Vec::new();
            h.expect("a valid header").encode(&mut buf).expect("encode");
            s.write_all(&buf).expect("send the PROXY header");
        }
        s
    }
}

fn client_addr(s: &TcpStream) -> SocketAddr {
    s.local_addr().expect("local address")
}

fn server_addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Bytes that differ from run to run and are not periodic (a stall or a duplicated chunk shows
/// in the digest).
fn payload(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn sha256(b: &[u8]) -> Vec<u8> {
    digest(&SHA256, b).as_ref().to_vec()
}

/// Reads to EOF within `deadline`; on a timeout or an error, panics with how far it got.
fn read_all_by(s: &mut TcpStream, expected: usize, deadline: Instant, what: &str) -> Vec<u8> {
    let mut got = Vec::with_capacity(expected);
    let mut buf = vec![0u8; 256 * KIB];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "{what}: deadline passed with {} of {expected} bytes back",
            got.len()
        );
        s.set_read_timeout(Some(left)).expect("read timeout");
        match s.read(&mut buf) {
            Ok(0) => return got,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => panic!("{what}: {e} with {} of {expected} bytes back", got.len()),
        }
    }
}

/// Sends `len` bytes from one thread while this one reads the echo (to EOF after the client's
/// half-close), then compares SHA-256 digests.
fn echo_concurrently(chain: &Chain, len: usize, deadline: Duration) {
    let what = format!("{}: {len} bytes echoed while sending", chain.label);
    let data = payload(len, len as u64 ^ 0x9e37);
    let mut s = chain.connect();
    let mut w = s.try_clone().expect("clone");
    let started = Instant::now();
    let sent = sha256(&data);
    let writer = thread::spawn(move || {
        w.set_write_timeout(Some(deadline)).expect("write timeout");
        let r = w.write_all(&data);
        let _ = w.shutdown(Shutdown::Write);
        r
    });
    let got = read_all_by(&mut s, len, started + deadline, &what);
    writer.join().expect("writer thread").unwrap_or_else(|e| panic!("{what}: write: {e}"));
    assert_eq!(got.len(), len, "{what}: length");
    assert!(sha256(&got) == sent, "{what}: SHA-256 differs");
}

/// Half-close: sends everything, shuts down the write side, then reads the echo to EOF.
/// `len` fits in the sockets' buffers along the chain, so nothing needs reading to finish.
fn echo_after_half_close(chain: &Chain, len: usize, deadline: Duration) {
    let what = format!("{}: {len} bytes echoed after half-close", chain.label);
    let data = payload(len, 7);
    let mut s = chain.connect();
    let started = Instant::now();
    s.set_write_timeout(Some(deadline)).expect("write timeout");
    s.write_all(&data).unwrap_or_else(|e| panic!("{what}: write: {e}"));
    s.shutdown(Shutdown::Write).expect("shutdown");
    let got = read_all_by(&mut s, len, started + deadline, &what);
    assert!(got.len() == len && sha256(&got) == sha256(&data), "{what}: {} bytes back", got.len());
}

/// Every size of the matrix through one chain; 64 MiB only where `big`.
fn sizes(chain: &Chain, big: bool) {
    for len in [1, 64 * KIB, 8 * MIB] {
        echo_concurrently(chain, len, Duration::from_secs(60));
    }
    if big {
        echo_concurrently(chain, 64 * MIB, Duration::from_secs(120));
    }
    echo_after_half_close(chain, 256 * KIB, Duration::from_secs(30));
}

/// The whole matrix for one chain length: 3 runtimes x splice on/off x 3 PROXY settings, each
/// with 1 B, 64 KiB and 8 MiB echoed while sending and a half-close; 64 MiB with PROXY v2
/// (every runtime and splice setting).
fn matrix(hops: usize) {
    for rt in Rt::ALL {
        for splice in [true, false] {
            for pp in Pp::ALL {
                let chain = Chain::start(hops, rt, splice, pp);
                sizes(&chain, pp == Pp::V2);
            }
        }
    }
}

#[test]
fn one_hop_every_size_runtime_splice_and_proxy_setting() {
    matrix(1);
}

#[test]
fn two_hops_every_size_runtime_splice_and_proxy_setting() {
    matrix(2);
}

#[test]
fn three_hops_every_size_runtime_splice_and_proxy_setting() {
    matrix(3);
}

/// Request and response on one connection: each message is echoed before the next is sent,
/// so a direction that parks with bytes queued is never woken by more data or a FIN (the
/// stall of issue 10 shows here as a message that never comes back). 48 messages from 1 B to
/// 1 MiB, for each chain length and runtime, splice on and off.
#[test]
fn ping_pong_messages_come_back_whole() {
    for hops in 1..=3 {
        for rt in Rt::ALL {
            for splice in [true, false] {
                let chain = Chain::start(hops, rt, splice, Pp::V1);
                let mut s = chain.connect();
                let mut buf = vec![0u8; 256 * KIB];
                for i in 0..48u64 {
                    let len = match i % 4 {
                        0 => 1 + (i as usize * 7919) % 1000,
                        1 => 64 * KIB + i as usize,
                        2 => 300 * KIB + (i as usize * 4099) % (200 * KIB),
                        _ => MIB,
                    };
                    let what = format!("{}: message {i} of {len} bytes", chain.label);
                    let data = payload(len, i + 1);
                    let mut w = s.try_clone().expect("clone");
                    let d2 = data.clone();
                    let writer = thread::spawn(move || w.write_all(&d2));
                    let deadline = Instant::now() + Duration::from_secs(20);
                    let mut got = Vec::with_capacity(len);
                    while got.len() < len {
                        let left = deadline.saturating_duration_since(Instant::now());
                        assert!(
                            !left.is_zero(),
                            "{what}: {} bytes back by the deadline",
                            got.len()
                        );
                        s.set_read_timeout(Some(left)).expect("read timeout");
                        let want = (len - got.len()).min(buf.len());
                        match s.read(&mut buf[..want]) {
                            Ok(0) => panic!("{what}: EOF after {} bytes", got.len()),
                            Ok(n) => got.extend_from_slice(&buf[..n]),
                            Err(e) => panic!("{what}: {e} after {} bytes", got.len()),
                        }
                    }
                    writer.join().expect("writer").unwrap_or_else(|e| panic!("{what}: {e}"));
                    assert!(sha256(&got) == sha256(&data), "{what}: SHA-256 differs");
                }
            }
        }
    }
}

/// 32 connections at once through each chain length and runtime, splice on and off (PROXY
/// v2): 1 MiB each way on every connection, all byte-exact.
#[test]
fn thirty_two_connections_at_once() {
    for hops in 1..=3 {
        for rt in Rt::ALL {
            for splice in [true, false] {
                let chain = Chain::start(hops, rt, splice, Pp::V2);
                thread::scope(|sc| {
                    let workers: Vec<_> = (0..32)
                        .map(|_| {
                            sc.spawn(|| echo_concurrently(&chain, MIB, Duration::from_secs(60)))
                        })
                        .collect();
                    for w in workers {
                        w.join().expect("a connection failed (see its panic above)");
                    }
                });
            }
        }
    }
}

/// The largest resident set a hop had (VmHWM, KiB).
fn peak_kib(p: &Proxy) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", p.pid())).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmHWM in /proc/PID/status")
}

/// Memory bound under a slow reader: the client sends 48 MiB as fast as the chain takes it
/// while it reads the echo at about 2 MB/s for 3 s, then reads the rest at full speed. The
/// copy holds at most one 16 KiB buffer per direction of a connection in user space (plus a
/// pipe of at most 256 KiB in the kernel while it splices); everything else waits in the
/// kernel's socket buffers, where TCP's flow control stops the sender. Asserted: each hop's
/// peak resident set grows by less than 4 MiB during the transfer while at least 8 MiB are held
/// back between the writer and the slow reader, and the echo is byte-exact.
#[test]
fn slow_reader_keeps_every_hop_memory_bounded() {
    const BOUND_KIB: u64 = 4 * 1024;
    const TOTAL: usize = 48 * MIB;
    for (hops, rt, splice) in [
        (2, Rt::One, true),
        (2, Rt::PerWorker, false),
        (3, Rt::MultiThread, true),
        (3, Rt::One, false),
    ] {
        let chain = Chain::start(hops, rt, splice, Pp::V2);
        let what = format!("{}: slow reader", chain.label);
        // Warm up: the buffer and pipe pools are filled once.
        echo_concurrently(&chain, 4 * MIB, Duration::from_secs(30));
        let before: Vec<u64> = chain.hops.iter().map(peak_kib).collect();

        let data = payload(TOTAL, 99);
        let sent = sha256(&data);
        let mut s = chain.connect();
        let mut w = s.try_clone().expect("clone");
        let written = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let written2 = written.clone();
        let writer = thread::spawn(move || {
            w.set_write_timeout(Some(Duration::from_secs(60))).expect("write timeout");
            for chunk in data.chunks(64 * KIB) {
                w.write_all(chunk)?;
                written2.fetch_add(chunk.len(), std::sync::atomic::Ordering::Relaxed);
            }
            w.shutdown(Shutdown::Write)
        });

        // About 2 MB/s: 64 KiB every 32 ms, for 3 s.
        let mut got = Vec::with_capacity(TOTAL);
        let mut buf = vec![0u8; 64 * KIB];
        s.set_read_timeout(Some(Duration::from_secs(30))).expect("read timeout");
        let slow_until = Instant::now() + Duration::from_secs(3);
        let mut next = Instant::now();
        while Instant::now() < slow_until {
            let n = s.read(&mut buf).unwrap_or_else(|e| panic!("{what}: read: {e}"));
            assert!(n > 0, "{what}: EOF after {} bytes", got.len());
            got.extend_from_slice(&buf[..n]);
            // Pacing on purpose: the slow reader.
            next += Duration::from_millis(32);
            thread::sleep(next.saturating_duration_since(Instant::now()));
        }
        let held_back = written.load(std::sync::atomic::Ordering::Relaxed) - got.len();
        assert!(
            held_back >= 8 * MIB,
            "{what}: only {held_back} bytes were waiting for the slow reader; the test did not \
             load the chain"
        );
        let during: Vec<u64> = chain.hops.iter().map(peak_kib).collect();
        for (i, (b, d)) in before.iter().zip(&during).enumerate() {
            assert!(
                d - b < BOUND_KIB,
                "{what}: hop {i}'s peak RSS grew from {b} KiB to {d} KiB with {held_back} bytes \
                 held back (bound: {BOUND_KIB} KiB)"
            );
        }
        got.extend(read_all_by(&mut s, TOTAL, Instant::now() + Duration::from_secs(60), &what));
        writer.join().expect("writer").unwrap_or_else(|e| panic!("{what}: write: {e}"));
        assert_eq!(got.len(), TOTAL, "{what}: length");
        assert!(sha256(&got) == sent, "{what}: SHA-256 differs");
    }
}
