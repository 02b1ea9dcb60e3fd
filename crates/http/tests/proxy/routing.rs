//! Per-request routing on one kept-alive connection, handlers per request, 404 / 403,
//! forwarding headers, hop-by-hop removal, Host handling, reload per request.

use crate::common::*;

fn three_routes(port: u16, api: u16, web: u16) -> String {
    format!(
        r#"
[[routes]]
name = "api"
match = {{ ports = [{port}], domains = ["api.test"], path = "/v1/*" }}
action = {{ type = "forward", targets = [{{ host = "127.0.0.1", port = {api} }}], http = {{ }} }}

[[routes]]
name = "web"
match = {{ ports = [{port}], domains = ["web.test", "*.web.test"] }}
action = {{ type = "forward", targets = [{{ host = "127.0.0.1", port = {web} }}], http = {{ via = true }} }}

[[routes]]
name = "env"
match = {{ ports = [{port}], domains = ["api.test"], headers = {{ "x-env" = "canary" }} }}
action = {{ type = "forward", targets = [{{ host = "127.0.0.1", port = {web} }}], http = {{ preserve_host = false }} }}

[[routes]]
name = "old"
match = {{ ports = [{port}], path = "/old/:id" }}
action = {{ type = "socket-handler", handler = "redirect", location = "https://{{domain}}/new/{{pathParams.id}}?{{query}}", status = 308 }}

[[routes]]
name = "static"
match = {{ ports = [{port}], path = "/hello" }}
action = {{ type = "socket-handler", handler = "static", status = 201, body = "hello\n", headers = {{ "x-static" = "yes", "content-type" = "text/x-hello" }} }}

[[routes]]
name = "blocked"
match = {{ ports = [{port}], path = "/admin/*" }}
action = {{ type = "socket-handler", handler = "block", status = 451 }}

[[routes]]
name = "internal"
match = {{ ports = [{port}], domains = ["internal.test"] }}
action = {{ type = "forward", targets = [{{ host = "127.0.0.1", port = {web} }}], http = {{ }} }}
security = {{ ip_allow_list = ["10.0.0.0/8"] }}
"#
    )
}

/// curl sends several requests for different routes over one connection; each reaches
/// its own backend (or handler), and `num_connects` shows the connection was reused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keepalive_connection_routes_each_request() {
    let api = Backend::h1("api").await;
    let web = Backend::h1("web").await;
    let (ap, wp) = (api.port(), web.port());
    let proxy = Proxy::start(|p| three_routes(p, ap, wp), Opts::default()).await;
    let u = |path: &str| proxy.url(path);
    let out = curl(&[
        "-w",
        "\n%{http_code} %{num_connects}\n",
        "-H",
        "Host: api.test",
        &u("/v1/users?id=7"),
        "--next",
        "-w",
        "\n%{http_code} %{num_connects}\n",
        "-H",
        "Host: web.test",
        &u("/index.html"),
        "--next",
        "-w",
        "\n%{http_code} %{num_connects}\n",
        "-H",
        "Host: API.test:1234",
        "-H",
        "x-env: canary",
        &u("/other"),
        "--next",
        "-w",
        "\n%{http_code} %{num_connects} %{redirect_url}\n",
        "-H",
        "Host: shop.test",
        &u("/old/42?x=1"),
        "--next",
        "-w",
        "\n%{http_code} %{num_connects} %{content_type}\n",
        "-H",
        "x-ignored: 1",
        &u("/hello"),
        "--next",
        "-w",
        "\n%{http_code} %{num_connects}\n",
        &u("/admin/x"),
        "--next",
        "-w",
        "\n%{http_code} %{num_connects}\n",
        "-H",
        "Host: nowhere.test",
        &u("/x"),
        "--next",
        "-w",
        "\n%{http_code} %{num_connects}\n",
        "-H",
        "Host: a.web.test",
        &u("/again"),
    ])
    .await;
    let text = stdout(&out);
    assert!(out.status.success(), "{text}\n{}", String::from_utf8_lossy(&out.stderr));
    let codes: Vec<&str> = text
        .lines()
        .filter(|l| {
            l.len() >= 5
                && l.as_bytes()[..3].iter().all(u8::is_ascii_digit)
                && l.as_bytes()[3] == b' '
        })
        .collect();
    assert_eq!(
        codes,
        [
            "200 1",
            "200 0",
            "200 0",
            "308 0 https://shop.test/new/42?x=1",
            "201 0 text/x-hello",
            "451 0",
            "404 0",
            "200 0",
        ],
        "{text}"
    );
    let docs = json_docs(&text);
    assert_eq!(docs.len(), 4, "{text}");
    assert_eq!(docs[0]["backend"], "api");
    assert_eq!(docs[0]["uri"], "/v1/users?id=7");
    assert_eq!(docs[1]["backend"], "web");
    assert_eq!(docs[1]["headers"]["host"][0], "web.test");
    assert_eq!(docs[1]["headers"]["via"][0], "1.1 smartproxy");
    // preserve_host = false: the target's address.
    assert_eq!(docs[2]["backend"], "web");
    assert_eq!(docs[2]["headers"]["host"][0], format!("127.0.0.1:{wp}"));
    assert_eq!(docs[2]["headers"]["x-forwarded-host"][0], "API.test:1234");
    assert_eq!(docs[3]["headers"]["host"][0], "a.web.test");
    assert!(text.contains("hello\n"), "{text}");
    assert!(text.contains("no route for this request"), "{text}");
    // One client connection; the backends saw one pooled connection each.
    assert_eq!(api.accepted(), 1);
    assert_eq!(web.accepted(), 1);
    let m = proxy.metrics.snapshot();
    assert_eq!(m.http.requests_total, 8);
    assert_eq!(m.http.errors["no_route"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_headers_and_hop_by_hop() {
    let b = Backend::h1("b").await;
    let bp = b.port();
    // Untrusted peer: X-Forwarded-For is replaced, Proto and Host are ours.
    let proxy = Proxy::start(
        |p| {
            format!(
                r#"[[routes]]
name = "b"
match = {{ ports = [{p}] }}
action = {{ type = "forward", targets = [{{ host = "127.0.0.1", port = {bp} }}], http = {{ forwarded = true }} }}
"#
            )
        },
        Opts::default(),
    )
    .await;
    let out = curl(&[
        "-H",
        "X-Forwarded-For: 6.6.6.6",
        "-H",
        "X-Forwarded-Proto: https",
        "-H",
        "Forwarded: for=6.6.6.6",
        "-H",
        "Connection: keep-alive, X-Drop-Me",
        "-H",
        "X-Drop-Me: secret",
        "-H",
        "Keep-Alive: timeout=5",
        "-H",
        "TE: trailers",
        "-H",
        "Proxy-Connection: keep-alive",
        "-D",
        "-",
        &proxy.url("/h"),
    ])
    .await;
    let text = stdout(&out);
    let doc = &json_docs(text.split("\r\n\r\n").nth(1).unwrap_or(""))[0];
    let h = &doc["headers"];
    assert_eq!(h["x-forwarded-for"], serde_json::json!(["127.0.0.1"]), "{doc}");
    assert_eq!(h["x-forwarded-proto"][0], "http");
    assert_eq!(h["x-forwarded-host"][0], format!("127.0.0.1:{}", proxy.port()));
    assert_eq!(
        h["forwarded"][0],
        format!("for=127.0.0.1;host=\"127.0.0.1:{}\";proto=http", proxy.port())
    );
    for gone in [
        "x-drop-me",
        "keep-alive",
        "te",
        "proxy-connection",
        "connection",
        "transfer-encoding",
        "upgrade",
    ] {
        assert!(h.get(gone).is_none(), "{gone} reached the backend: {doc}");
    }
    // The backend's Keep-Alive header does not reach the client.
    let head = text.split("\r\n\r\n").next().unwrap_or("").to_ascii_lowercase();
    assert!(head.contains("x-backend: b"), "{head}");
    assert!(!head.contains("keep-alive:"), "{head}");
}

/// A trusted peer (the engine read a PROXY header): the real client is appended to
/// X-Forwarded-For; Proto and Host from the front proxy are kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trusted_peer_appends_real_client() {
    let b = Backend::h1("b").await;
    let bp = b.port();
    let real: std::net::SocketAddr = "198.51.100.7:40000".parse().unwrap();
    let proxy = Proxy::start(
        |p| {
            format!(
                r#"[[routes]]
name = "b"
match = {{ ports = [{p}], client_ip = ["198.51.100.0/24"] }}
action = {{ type = "forward", targets = [{{ host = "127.0.0.1", port = {bp} }}], http = {{ forwarded = true }} }}
"#
            )
        },
        Opts { real_client: Some(real), ..Opts::default() },
    )
    .await;
    let out = curl(&[
        "-H",
        "X-Forwarded-For: 203.0.113.1",
        "-H",
        "X-Forwarded-Proto: https",
        "-H",
        "X-Forwarded-Host: front.test",
        "-H",
        "Forwarded: for=203.0.113.1",
        &proxy.url("/h"),
    ])
    .await;
    let doc = &json_docs(&stdout(&out))[0];
    let h = &doc["headers"];
    assert_eq!(h["x-forwarded-for"], serde_json::json!(["203.0.113.1, 198.51.100.7"]), "{doc}");
    assert_eq!(h["x-forwarded-proto"][0], "https");
    assert_eq!(h["x-forwarded-host"][0], "front.test");
    assert!(
        h["forwarded"][0].as_str().unwrap_or("").starts_with("for=203.0.113.1, for=198.51.100.7;"),
        "{doc}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_list_is_checked_per_request() {
    let b = Backend::h1("b").await;
    let (bp,) = (b.port(),);
    let proxy = Proxy::start(|p| three_routes(p, bp, bp), Opts::default()).await;
    let out = curl(&["-w", "\n%{http_code}", "-H", "Host: internal.test", &proxy.url("/")]).await;
    let text = stdout(&out);
    assert!(text.ends_with("\n403"), "{text}");
    assert_eq!(b.requests.load(std::sync::atomic::Ordering::SeqCst), 0);
    assert_eq!(proxy.metrics.snapshot().http.errors["forbidden"], 1);
}

/// A reload takes effect for the next request of a kept-alive connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_applies_per_request() {
    let one = Backend::h1("one").await;
    let two = Backend::h1("two").await;
    let (p1, p2) = (one.port(), two.port());
    let doc = |port: u16, target: u16| {
        format!(
            r#"[[routes]]
name = "r"
match = {{ ports = [{port}] }}
action = {{ type = "forward", targets = [{{ host = "127.0.0.1", port = {target} }}], http = {{ }} }}
"#
        )
    };
    let proxy = Proxy::start(|p| doc(p, p1), Opts::default()).await;
    let mut tx = h1_client(proxy.addr).await;
    let get = |path: &str| http::Request::get(path).header("host", "x.test").body(empty()).unwrap();
    let r1 = text(tx.send_request(get("/a")).await.unwrap()).await;
    proxy.reload(&doc(proxy.port(), p2));
    tx.ready().await.unwrap();
    let r2 = text(tx.send_request(get("/b")).await.unwrap()).await;
    assert!(r1.contains("\"backend\":\"one\""), "{r1}");
    assert!(r2.contains("\"backend\":\"two\""), "{r2}");
}

/// `request_headers`, `response_headers` (templates) and `rewrite_path` (DESIGN.md §3.1).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_operations_and_path_rewrite() {
    let b = Backend::h1("ops").await;
    let bp = b.port();
    let proxy = Proxy::start(
        |p| {
            format!(
                r#"[[routes]]
name = "api"
match = {{ ports = [{p}], path = "/v1/:item/*" }}
action = {{ type = "forward", targets = [{{ host = "127.0.0.1", port = {bp} }}], http = {{
  request_headers = {{ set = {{ "X-Route" = "{{routeName}} {{clientIp}}", "X-Item" = "{{pathParams.item}}", "X-Static" = "s" }}, add = {{ "X-Forwarded-For" = "10.9.9.9" }}, remove = ["X-Debug"] }},
  response_headers = {{ set = {{ "Strict-Transport-Security" = "max-age=63072000", "X-Host" = "{{domain}}" }}, remove = ["X-Backend"] }},
  rewrite_path = {{ from = "^/v1/(.*)$", to = "/api/$1" }} }} }}
"#
            )
        },
        Opts::default(),
    )
    .await;
    let out = curl(&[
        "-D",
        "-",
        "-H",
        "Host: ops.test",
        "-H",
        "X-Debug: 1",
        &proxy.url("/v1/books/42?x=1"),
    ])
    .await;
    let text = stdout(&out);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or_default();
    let doc = &json_docs(body)[0];
    assert_eq!(doc["uri"], "/api/books/42?x=1", "{doc}");
    let h = &doc["headers"];
    assert_eq!(h["x-route"][0], "api 127.0.0.1");
    assert_eq!(h["x-item"][0], "books");
    assert_eq!(h["x-static"][0], "s");
    assert_eq!(h["x-forwarded-for"], serde_json::json!(["127.0.0.1", "10.9.9.9"]));
    assert!(h.get("x-debug").is_none());
    let head = head.to_ascii_lowercase();
    assert!(head.contains("strict-transport-security: max-age=63072000"), "{head}");
    assert!(head.contains("x-host: ops.test"), "{head}");
    assert!(!head.contains("x-backend"), "{head}");
}

/// A `rewrite_path` that is not a prefix swap goes through the regex (captures reordered);
/// a path it does not match is forwarded as it came. (Prefix swaps take a faster path with
/// the same result: `header_operations_and_path_rewrite`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regex_path_rewrite_and_paths_it_does_not_match() {
    let b = Backend::h1("re").await;
    let bp = b.port();
    let proxy = Proxy::start(
        |p| {
            format!(
                r#"[[routes]]
name = "re"
match = {{ ports = [{p}] }}
action = {{ type = "forward", targets = [{{ host = "127.0.0.1", port = {bp} }}], http = {{
  rewrite_path = {{ from = "^/(\\w+)/v([0-9])$", to = "/v$2/$1" }} }} }}
"#
            )
        },
        Opts::default(),
    )
    .await;
    for (path, want) in [
        ("/books/v2?x=1", "/v2/books?x=1"),
        ("/books/v2", "/v2/books"),
        ("/books/latest?y=2", "/books/latest?y=2"),
    ] {
        let out = curl(&[&proxy.url(path)]).await;
        let doc = &json_docs(&stdout(&out))[0];
        assert_eq!(doc["uri"], want, "{path}: {doc}");
    }
}

/// A target that answers in HTTP/1.0 and closes (python's http.server, old appliances): the
/// client still gets HTTP/1.1 answers on one kept-alive connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http10_target_keeps_the_client_connection_alive() {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut head = Vec::new();
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = s.write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\nold").await;
            });
        }
    });
    let proxy = Proxy::start(
        |p| {
            format!(
                "[[routes]]\nname = \"r\"\nmatch = {{ ports = [{p}] }}\naction = {{ type = \"forward\", targets = [{{ host = \"127.0.0.1\", port = {target} }}], http = {{ }} }}\n"
            )
        },
        Opts::default(),
    )
    .await;
    let w = "\n%{http_code} %{http_version} %{num_connects}\n";
    let out = curl(&["-w", w, &proxy.url("/a"), "--next", "-w", w, &proxy.url("/b")]).await;
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().filter(|l| l.starts_with("200 ")).collect();
    assert_eq!(lines, vec!["200 1.1 1", "200 1.1 0"], "{text}");
}
