//! Streaming bodies with backpressure: a 1 GiB download and 1 GiB uploads (content-length and
//! chunked) through the HTTP layer with flat memory; `Expect: 100-continue`.
//!
//! The client is curl (its own process), the backend a hyper server in this process that
//! streams from one shared 64 KiB chunk and counts what it receives, so the heap this
//! process grows by during a transfer is the proxy's (plus the backend's per-frame state).
//! A counting global allocator measures it. `SMARTPROXY_HTTP_STREAM_BYTES` changes the size
//! (default 1 GiB).

#[path = "proxy/common/mod.rs"]
mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use common::*;

/// Counts live heap bytes and their peak.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

#[allow(unsafe_code)]
// SAFETY: every method forwards to `System` with the caller's arguments unchanged; the
// counters are plain atomics and never touch the memory.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        // SAFETY: same contract as the caller's.
        let p = unsafe { System.alloc(l) };
        if !p.is_null() {
            let now = LIVE.fetch_add(l.size(), Ordering::Relaxed) + l.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size(), Ordering::Relaxed);
        // SAFETY: `p` was allocated by `System` with `l` (see `alloc`).
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        // SAFETY: same contract as the caller's.
        let q = unsafe { System.realloc(p, l, new) };
        if !q.is_null() {
            if new >= l.size() {
                let now = LIVE.fetch_add(new - l.size(), Ordering::Relaxed) + (new - l.size());
                PEAK.fetch_max(now, Ordering::Relaxed);
            } else {
                LIVE.fetch_sub(l.size() - new, Ordering::Relaxed);
            }
        }
        q
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn size() -> u64 {
    std::env::var("SMARTPROXY_HTTP_STREAM_BYTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1 << 30)
}

/// Runs `f` and returns the heap growth above the level before it (peak - start).
async fn peak_growth<F: std::future::Future<Output = T>, T>(f: F) -> (T, usize) {
    let start = LIVE.load(Ordering::Relaxed);
    PEAK.store(start, Ordering::Relaxed);
    let out = f.await;
    (out, PEAK.load(Ordering::Relaxed).saturating_sub(start))
}

const MIB: usize = 1 << 20;
/// What a transfer may add to the heap, whatever its size.
const FLAT: usize = 16 * MIB;

fn route(port: u16, target: u16) -> String {
    format!(
        r#"[[routes]]
name = "stream"
match = {{ ports = [{port}] }}
action = {{ type = "forward", targets = [{{ host = "127.0.0.1", port = {target} }}], http = {{ }} }}
"#
    )
}

/// Download, content-length upload, chunked upload: one test, so that the heap figures of
/// one transfer are not mixed with another's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gigabyte_both_ways_with_flat_memory() {
    let n = size();
    let b = Backend::h1("stream").await;
    let bp = b.port();
    let proxy = Proxy::start(|p| route(p, bp), Opts::default()).await;
    // Warm up (pools, lazily built tables), so the first transfer is measured like the rest.
    let _ = curl(&["-o", "/dev/null", &proxy.url("/bytes/100000")]).await;

    let started = Instant::now();
    let (out, grown) = peak_growth(curl(&[
        "-o",
        "/dev/null",
        "-w",
        "%{size_download} %{http_code}",
        &proxy.url(&format!("/bytes/{n}")),
    ]))
    .await;
    assert_eq!(stdout(&out), format!("{n} 200"), "{}", String::from_utf8_lossy(&out.stderr));
    eprintln!(
        "download of {n} bytes: {:.1} s, heap grew by {:.2} MiB at most",
        started.elapsed().as_secs_f64(),
        grown as f64 / MIB as f64
    );
    assert!(grown < FLAT, "download grew the heap by {grown} bytes");

    // Upload with Content-Length: a sparse file reads as zeros without using the disk.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("zeros");
    std::fs::File::create(&file).unwrap().set_len(n).unwrap();
    let started = Instant::now();
    let (out, grown) =
        peak_growth(curl(&["-T", file.to_str().unwrap(), "-H", "Expect:", &proxy.url("/upload")]))
            .await;
    let doc = &json_docs(&stdout(&out))[0];
    assert_eq!(doc["body_len"], n, "{doc}");
    assert_eq!(doc["headers"]["content-length"][0], n.to_string());
    eprintln!(
        "content-length upload of {n} bytes: {:.1} s, heap grew by {:.2} MiB at most",
        started.elapsed().as_secs_f64(),
        grown as f64 / MIB as f64
    );
    assert!(grown < FLAT, "upload grew the heap by {grown} bytes");

    // Chunked upload from a pipe (curl does not know the length).
    let started = Instant::now();
    let (out, grown) = peak_growth(async {
        let cmd = format!(
            "head -c {n} /dev/zero | curl -sS --max-time 120 -T - -H 'Expect:' {}",
            proxy.url("/upload")
        );
        tokio::process::Command::new("sh").args(["-c", &cmd]).output().await.unwrap()
    })
    .await;
    let doc = &json_docs(&stdout(&out))[0];
    assert_eq!(doc["body_len"], n, "{doc}");
    // Framed again for the backend hop (hyper writes chunked for an unknown length).
    assert_eq!(doc["headers"]["transfer-encoding"][0], "chunked", "{doc}");
    assert!(doc["headers"].get("content-length").is_none(), "{doc}");
    eprintln!(
        "chunked upload of {n} bytes: {:.1} s, heap grew by {:.2} MiB at most",
        started.elapsed().as_secs_f64(),
        grown as f64 / MIB as f64
    );
    assert!(grown < FLAT, "chunked upload grew the heap by {grown} bytes");
    assert_eq!(b.accepted(), 1, "one pooled backend connection for all of it");
}

/// `Expect: 100-continue`: the client gets its 100 from the proxy once the body is wanted,
/// and the body arrives whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expect_100_continue() {
    let b = Backend::h1("expect").await;
    let bp = b.port();
    let proxy = Proxy::start(|p| route(p, bp), Opts::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("body");
    std::fs::write(&file, vec![b'z'; 3 * 1024 * 1024]).unwrap();
    let started = Instant::now();
    // --expect100-timeout 10: without a 100 curl would wait 10 s before sending.
    let out = curl(&[
        "-v",
        "--expect100-timeout",
        "10",
        "-H",
        "Expect: 100-continue",
        "--data-binary",
        &format!("@{}", file.display()),
        &proxy.url("/upload"),
    ])
    .await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("< HTTP/1.1 100 Continue"), "{err}");
    assert!(started.elapsed().as_secs() < 8, "curl waited for its 100: {err}");
    let doc = &json_docs(&stdout(&out))[0];
    assert_eq!(doc["body_len"], 3 * 1024 * 1024);
}
