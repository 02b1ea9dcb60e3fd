//! TLS bytes pass through a chain of two proxies untouched: curl verifies the backend's
//! certificate end to end, and the backend (openssl s_server) sees a normal handshake.

use smartproxy_tests::*;

#[test]
fn tls_passthrough_through_a_proxy_chain_with_proxy_v2() {
    let pki = Pki::new();
    let leaf = pki.leaf("backend", &["backend.test"]);
    let server = OpensslServer::start(&leaf);
    let (_inner, [inner]) = Proxy::start_on(|[inner]| {
        format!(
            r#"
bind = ["127.0.0.1"]
proxy_ips = ["127.0.0.1"]
[[routes]]
name = "inner"
match = {{ ports = [{inner}] }}
action = {{ type = "forward", targets = [{{ host = "127.0.0.1", port = {p} }}], tls = {{ mode = "passthrough" }} }}
"#,
            p = server.port
        )
    });
    let (_outer, [outer]) = Proxy::start_on(|[outer]| {
        format!(
            r#"
bind = ["127.0.0.1"]
[[routes]]
name = "outer"
match = {{ ports = [{outer}] }}
action = {{ type = "forward", targets = [{{ host = "127.0.0.1", port = {inner} }}], send_proxy_protocol = "v2" }}
"#
        )
    });
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
