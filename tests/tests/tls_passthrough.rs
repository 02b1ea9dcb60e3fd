//! TLS bytes pass through a chain of two proxies untouched: curl verifies the backend's
//! certificate end to end, and the backend (openssl s_server) sees a normal handshake; a bulk
//! download takes the splice path on both hops with the default settings.

use smartproxy_tests::*;

/// The chain: an outer plain hop sending PROXY v2 to an inner passthrough hop in front of the
/// backend on `backend`; `sni` adds `domains = ["backend.test"]` to the inner route, which
/// then routes by the ClientHello it peeks and replays. Returns (outer, inner, outer's port).
fn chain(backend: u16, sni: bool) -> (Proxy, Proxy, u16) {
    let domains = if sni { r#", domains = ["backend.test"]"# } else { "" };
    let (inner, [inner_port]) = Proxy::start_on(|[port]| {
        format!(
            r#"
bind = ["127.0.0.1"]
proxy_ips = ["127.0.0.1"]
[[routes]]
name = "inner"
match = {{ ports = [{port}]{domains} }}
action = {{ type = "forward", targets = [{{ host = "127.0.0.1", port = {backend} }}], tls = {{ mode = "passthrough" }} }}
"#
        )
    });
    let (outer, [outer_port]) = Proxy::start_on(|[port]| {
        format!(
            r#"
bind = ["127.0.0.1"]
[[routes]]
name = "outer"
match = {{ ports = [{port}] }}
action = {{ type = "forward", targets = [{{ host = "127.0.0.1", port = {inner_port} }}], send_proxy_protocol = "v2" }}
"#
        )
    });
    (outer, inner, outer_port)
}

#[test]
fn tls_passthrough_through_a_proxy_chain_with_proxy_v2() {
    let pki = Pki::new();
    let leaf = pki.leaf("backend", &["backend.test"]);
    let server = OpensslServer::start(&leaf);
    let (_outer, _inner, outer) = chain(server.port, false);
    let url = format!("https://backend.test:{outer}/");
    let resolve = format!("backend.test:{outer}:127.0.0.1");
    let ca = pki.ca_pem.to_string_lossy().into_owned();
    for _ in 0..3 {
        let (code, body, err) = curl(&["--cacert", &ca, "--resolve", &resolve, &url]);
        assert_eq!(code, 0, "curl failed: {err}");
        // s_server -www answers with its status page, which names the negotiated cipher.
        assert!(body.contains("Cipher") || body.contains("cipher"), "{body}");
    }
    // A client that does not trust the CA fails the handshake: the proxy did not terminate.
    let (code, _, _) = curl(&["--resolve", &resolve, &url]);
    assert_ne!(code, 0);
}

/// The pipes process `pid` holds (`/proc/PID/fd` links `pipe:[…]`): its stdout and stderr to
/// the test, and the splice pipes it pools.
fn pipes(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
        .filter(|e| {
            std::fs::read_link(e.path()).is_ok_and(|l| l.to_string_lossy().starts_with("pipe:"))
        })
        .count()
}

/// With the default settings a bulk download through the same chain (a plain hop, then the
/// passthrough hop that peeked the ClientHello and replays it) moves through `splice(2)` on
/// both hops and arrives byte for byte: 16 MiB served by `openssl s_server -WWW`, fetched by
/// curl verifying the backend's certificate, compared whole with the file. Splicing shows as
/// the pooled pipe each hop holds afterwards (only the splice path makes pipes; the small
/// page fetched first moves no read that fills a buffer, and makes none).
#[test]
fn a_bulk_download_through_passthrough_splices_on_both_hops_by_default() {
    let pki = Pki::new();
    let leaf = pki.leaf("backend", &["backend.test"]);
    let files = TempDir::new().unwrap();
    let data: Vec<u8> =
        (0..16u32 << 20).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    std::fs::write(files.path().join("bulk.bin"), &data).unwrap();
    std::fs::write(files.path().join("small.txt"), "small\n").unwrap();
    let server = OpensslServer::serving_files(&leaf, files.path());
    let (outer, inner, outer_port) = chain(server.port, true);
    let resolve = format!("backend.test:{outer_port}:127.0.0.1");
    let ca = pki.ca_pem.to_string_lossy().into_owned();
    let url = |name: &str| format!("https://backend.test:{outer_port}/{name}");
    let (code, body, err) = curl(&["--cacert", &ca, "--resolve", &resolve, &url("small.txt")]);
    assert_eq!((code, body.as_str()), (0, "small\n"), "the small page: {err}");
    let before = [pipes(outer.pid()), pipes(inner.pid())];
    let out = files.path().join("got.bin");
    let out_arg = out.to_string_lossy().into_owned();
    let (code, _, err) =
        curl(&["--cacert", &ca, "--resolve", &resolve, "-o", &out_arg, &url("bulk.bin")]);
    assert_eq!(code, 0, "the 16 MiB download: {err}");
    let got = std::fs::read(&out).unwrap();
    assert!(got == data, "the download differs: {} bytes of {}", got.len(), data.len());
    let after = [pipes(outer.pid()), pipes(inner.pid())];
    for (i, hop) in ["outer (plain)", "inner (passthrough)"].iter().enumerate() {
        assert!(
            after[i] > before[i],
            "{hop} hop: {} pipes before the download, {} after: it did not splice",
            before[i],
            after[i]
        );
    }
}
