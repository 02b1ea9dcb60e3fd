//! The dashboard in a real browser: Debian's `chromium`, headless, driven through the DevTools
//! protocol (a small client over a websocket, below). The test drives traffic of every kind
//! through the binary, then checks that the page's figures are those of `/metrics/json`, that
//! they follow new traffic within a second or so, that the chart has points, that the page keeps
//! working across a reload, and that the polling fallback works on its own. Screenshots (light,
//! dark, phone) are saved under `target/dashboard/` for people to look at.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{Value, json};
use smartproxy_tests::*;

const TOKEN: &str = "dashboard-test-token-0123456789";

/// How soon the page must show what `/metrics/json` shows: one frame (1 s) and the margin of
/// a loaded CI machine.
const FOLLOW: Duration = Duration::from_millis(2_000);

// ----------------------------------------------------------------------------------------
// A minimal DevTools protocol client

/// A headless chromium with its own profile directory; killed on drop.
struct Browser {
    child: Child,
    ws: tungstenite::WebSocket<tungstenite::stream::MaybeTlsStream<TcpStream>>,
    next_id: u64,
    session: String,
    _profile: TempDir,
}

impl Browser {
    fn launch() -> Browser {
        let chromium = require("chromium", "chromium");
        let profile = tempfile::tempdir().unwrap();
        let mut child = Command::new(chromium)
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-default-apps",
                "--disable-extensions",
                "--no-first-run",
                "--no-default-browser-check",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn chromium");
        // "DevTools listening on ws://127.0.0.1:PORT/devtools/browser/ID" on stderr.
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut sent = false;
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if !sent {
                    if let Some(at) = line.find("ws://") {
                        let _ = tx.send(line[at..].trim().to_owned());
                        sent = true;
                    }
                }
            }
        });
        let url = rx.recv_timeout(WAIT).expect("chromium printed no DevTools address");
        let (ws, _) = tungstenite::connect(url.as_str()).expect("connect to DevTools");
        if let tungstenite::stream::MaybeTlsStream::Plain(s) = ws.get_ref() {
            s.set_read_timeout(Some(WAIT)).unwrap();
        }
        let mut b = Browser { child, ws, next_id: 0, session: String::new(), _profile: profile };
        let target = b.call_browser("Target.createTarget", json!({ "url": "about:blank" }));
        let id = target["targetId"].as_str().unwrap().to_owned();
        let attached =
            b.call_browser("Target.attachToTarget", json!({ "targetId": id, "flatten": true }));
        b.session = attached["sessionId"].as_str().unwrap().to_owned();
        b.call("Network.enable", json!({}));
        b
    }

    fn send(&mut self, method: &str, params: Value, session: bool) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut msg = json!({ "id": id, "method": method, "params": params });
        if session {
            msg["sessionId"] = Value::String(self.session.clone());
        }
        self.ws.send(tungstenite::Message::text(msg.to_string())).unwrap();
        let deadline = Instant::now() + WAIT;
        loop {
            assert!(Instant::now() < deadline, "no answer to {method}");
            let m = self.ws.read().unwrap_or_else(|e| panic!("DevTools read ({method}): {e}"));
            let tungstenite::Message::Text(t) = m else { continue };
            let v: Value = serde_json::from_str(t.as_str()).unwrap();
            if v["id"] == id {
                assert!(v.get("error").is_none(), "{method}: {}", v["error"]);
                return v["result"].clone();
            }
        }
    }

    fn call_browser(&mut self, method: &str, params: Value) -> Value {
        self.send(method, params, false)
    }

    fn call(&mut self, method: &str, params: Value) -> Value {
        self.send(method, params, true)
    }

    /// Evaluates `expr` in the page; its value (JSON).
    fn eval(&mut self, expr: &str) -> Value {
        let r = self.call(
            "Runtime.evaluate",
            json!({ "expression": expr, "returnByValue": true, "awaitPromise": true }),
        );
        assert!(r.get("exceptionDetails").is_none(), "{expr}: {}", r["exceptionDetails"]);
        r["result"]["value"].clone()
    }

    /// Polls `expr` until it is `true`; panics with `what` after [`WAIT`].
    fn wait_for(&mut self, what: &str, expr: &str) {
        let deadline = Instant::now() + WAIT;
        // While a page loads, `document.body` may not exist yet: an exception is a `false`.
        let guarded =
            format!("(() => {{ try {{ return ({expr}); }} catch (e) {{ return false; }} }})()");
        while Instant::now() < deadline {
            if self.eval(&guarded) == Value::Bool(true) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("page: timed out waiting for {what} ({expr})");
    }

    fn viewport(&mut self, width: u32, height: u32, mobile: bool, dark: bool) {
        self.call(
            "Emulation.setDeviceMetricsOverride",
            json!({ "width": width, "height": height, "deviceScaleFactor": if mobile { 2 } else { 1 }, "mobile": mobile }),
        );
        let scheme = if dark { "dark" } else { "light" };
        self.call(
            "Emulation.setEmulatedMedia",
            json!({ "features": [{ "name": "prefers-color-scheme", "value": scheme }] }),
        );
    }

    fn navigate(&mut self, url: &str) {
        self.call("Page.navigate", json!({ "url": url }));
    }

    /// A PNG of the whole page at the current width.
    fn screenshot(&mut self, path: &PathBuf) {
        let metrics = self.call("Page.getLayoutMetrics", json!({}));
        let height = metrics["cssContentSize"]["height"].as_f64().unwrap_or(1000.0).ceil();
        let width = metrics["cssLayoutViewport"]["clientWidth"].as_f64().unwrap_or(1440.0);
        let shot = self.call(
            "Page.captureScreenshot",
            json!({ "format": "png", "captureBeyondViewport": true,
                    "clip": { "x": 0, "y": 0, "width": width, "height": height, "scale": 1 } }),
        );
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().unwrap())
            .unwrap();
        assert!(png.starts_with(b"\x89PNG") && png.len() > 10_000, "screenshot too small");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, png).unwrap();
        eprintln!("screenshot: {}", path.display());
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `target/` of this build (the test binary is target/<profile>/deps/NAME).
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.ancestors().nth(3).expect("target dir").to_path_buf()
}

// ----------------------------------------------------------------------------------------
// The proxy and its traffic

fn auth() -> (&'static str, String) {
    ("Authorization", format!("Bearer {TOKEN}"))
}

/// `/metrics/json` with the admin token.
fn snapshot_json(admin: u16) -> Value {
    let (k, v) = auth();
    let r = http(admin, "GET", "/metrics/json", &[(k, &v)]);
    assert_eq!(r.status, 200, "{}", r.body);
    serde_json::from_str(&r.body).unwrap()
}

/// Sends `n` connections of `size` bytes through the echo route and reads the echo back.
fn echo_traffic(port: u16, n: usize, size: usize) {
    for _ in 0..n {
        let mut s = connect(port);
        s.write_all(&vec![b'x'; size]).unwrap();
        s.shutdown(std::net::Shutdown::Write).unwrap();
        let (got, _) = read_to_end(&mut s);
        assert_eq!(got.len(), size);
    }
}

/// A connection that the proxy refuses (or fails upstream): connect, wait for the close.
fn refused(port: u16, n: usize) {
    for _ in 0..n {
        let mut s = connect(port);
        let mut buf = [0u8; 64];
        let _ = s.read(&mut buf);
    }
}

fn config(
    admin: u16,
    token_file: &std::path::Path,
    ports: &[u16; 5],
    echo: u16,
    web: u16,
    leaf: &LeafFiles,
    extra: &str,
) -> String {
    let [fwd, web_port, blocked, dead, tls] = ports;
    format!(
        r#"bind = ["127.0.0.1"]
[admin]
listen = "127.0.0.1:{admin}"
token_file = "{token}"

[metrics]
per_ip = true

[[routes]]
name = "echo"
match = {{ ports = [{fwd}] }}
action = {{ type = "forward", targets = [{{ host = "127.0.0.1", port = {echo} }}] }}

[[routes]]
name = "web"
match = {{ ports = [{web_port}], path = "/app/*" }}
action = {{ type = "forward", targets = [{{ host = "127.0.0.1", port = {web} }}], http = {{ upstream = "http1" }} }}

[[routes]]
name = "blocked"
match = {{ ports = [{blocked}] }}
action = {{ type = "socket-handler", handler = "echo" }}
security = {{ ip_block_list = ["127.0.0.1"] }}

[[routes]]
name = "dead-backend"
match = {{ ports = [{dead}] }}
action = {{ type = "forward", targets = [{{ host = "127.0.0.1", port = 1 }}] }}

[[routes]]
name = "tls"
match = {{ ports = [{tls}], domains = ["dash.test"] }}
action = {{ type = "forward", targets = [{{ host = "127.0.0.1", port = {echo} }}], tls = {{ mode = "terminate", certificate = {{ cert = "{cert}", key = "{key}" }} }} }}
{extra}"#,
        token = token_file.display(),
        cert = leaf.cert.display(),
        key = leaf.key.display(),
    )
}

/// The page's figures and the JSON's, side by side: (name, page, json).
fn figures(browser: &mut Browser, snap: &Value) -> Vec<(String, Value, Value)> {
    let page = browser.eval(
        r#"(() => {
          const v = id => Number(document.getElementById(id).dataset.value);
          const rows = {};
          document.querySelectorAll('#routes tbody tr[data-route]').forEach(tr => {
            rows[tr.dataset.route] = { total: Number(tr.dataset.total), bytes_in: Number(tr.dataset.bytesIn),
              bytes_out: Number(tr.dataset.bytesOut), refused: Number(tr.dataset.refused) };
          });
          const bars = sel => { const o = {}; document.querySelectorAll(sel + ' .bar-row').forEach(r => o[r.dataset.key] = Number(r.dataset.value)); return o; };
          return { conn_total: v('conn-total'), bytes_in: v('bytes-in'), bytes_out: v('bytes-out'),
                   refused: v('refused-total'), req_total: v('req-total'), backend_failures: v('backend-failures'),
                   rows, classes: bars('#http-classes'), refusals: bars('#refusals'),
                   certs: document.querySelectorAll('#certs tr[data-cert]').length };
        })()"#,
    );
    let mut out = Vec::new();
    let mut push = |name: &str, p: &Value, j: Value| out.push((name.to_owned(), p.clone(), j));
    push("connections total", &page["conn_total"], snap["totals"]["connections"].clone());
    push("bytes in", &page["bytes_in"], snap["totals"]["bytes_in"].clone());
    push("bytes out", &page["bytes_out"], snap["totals"]["bytes_out"].clone());
    push("requests total", &page["req_total"], snap["requests"]["total"].clone());
    push(
        "backend connect failures",
        &page["backend_failures"],
        snap["backend"]["connect_failures"].clone(),
    );
    let refused: u64 =
        snap["refused"].as_object().unwrap().values().filter_map(Value::as_u64).sum();
    push("refused", &page["refused"], json!(refused));
    for r in snap["routes"].as_array().unwrap() {
        let name = r["name"].as_str().unwrap();
        let row = &page["rows"][name];
        push(&format!("route {name} total"), &row["total"], r["total"].clone());
        push(&format!("route {name} bytes in"), &row["bytes_in"], r["bytes_in"].clone());
        push(&format!("route {name} bytes out"), &row["bytes_out"], r["bytes_out"].clone());
    }
    for (reason, n) in snap["refused"].as_object().unwrap() {
        if n.as_u64() > Some(0) {
            push(&format!("refusals {reason}"), &page["refusals"][reason], n.clone());
        }
    }
    let mut classes = std::collections::BTreeMap::<String, u64>::new();
    let mut reqs: Vec<&Value> = Vec::new();
    for r in snap["routes"].as_array().unwrap() {
        reqs.extend(r["http"]["requests"].as_array().into_iter().flatten());
    }
    reqs.extend(snap["http"]["unrouted"]["requests"].as_array().into_iter().flatten());
    for q in reqs {
        *classes.entry(q["code_class"].as_str().unwrap().to_owned()).or_default() +=
            q["count"].as_u64().unwrap();
    }
    for (class, n) in classes {
        push(&format!("HTTP {class}"), &page["classes"][&class], json!(n));
    }
    let certs = snap["certificates"].as_array().map_or(0, Vec::len);
    push("certificates listed", &page["certs"], json!(certs));
    out
}

fn numbers_equal(a: &Value, b: &Value) -> bool {
    matches!((a.as_f64(), b.as_f64()), (Some(x), Some(y)) if x == y)
}

/// Waits (at most `within`) until every page figure equals the JSON's.
fn assert_page_matches(browser: &mut Browser, admin: u16, within: Duration) {
    let started = Instant::now();
    loop {
        let snap = snapshot_json(admin);
        let figs = figures(browser, &snap);
        let wrong: Vec<_> = figs.iter().filter(|(_, p, j)| !numbers_equal(p, j)).collect();
        if wrong.is_empty() {
            assert!(figs.len() > 15, "too few figures compared: {figs:?}");
            return;
        }
        assert!(
            started.elapsed() < within,
            "the page differs from /metrics/json after {:?}: {wrong:?}",
            started.elapsed()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn the_dashboard_shows_the_proxy_live_in_a_real_browser() {
    let echo = Backend::echo();
    let web = HttpBackend::start("hello from the app\n");
    let pki = Pki::new();
    let leaf = pki.leaf("dash", &["dash.test"]);
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("admin.token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let (mut proxy, [admin, fwd, web_port, blocked, dead, tls]) =
        Proxy::start_on(|[admin, a, b, c, d, e]| {
            config(admin, &token_file, &[a, b, c, d, e], echo.port(), web.port(), &leaf, "")
        });
    let ports = [fwd, web_port, blocked, dead, tls];
    // Listened on after the reload.
    let extra_port = reserve_port();

    // Without the token: 401, but health stays open.
    assert_eq!(get(admin, "/").status, 401);
    assert_eq!(get(admin, "/healthz").status, 200);

    // Traffic of every kind: forwarded bytes, HTTP 2xx and 404, refusals, backend failures.
    echo_traffic(fwd, 20, 50_000);
    for _ in 0..12 {
        assert_eq!(get(web_port, "/app/x").status, 200);
    }
    for _ in 0..3 {
        assert_eq!(get(web_port, "/nothing-here").status, 404);
    }
    refused(blocked, 7);
    refused(dead, 4);
    wait_until("traffic sampled", || {
        let s = snapshot_json(admin);
        s["totals"]["bytes_in"].as_u64() >= Some(1_000_000)
            && s["refused"]["blocked"] == 7
            && s["backend"]["connect_failures"] == 4
    });

    let mut browser = Browser::launch();
    let (_, bearer) = auth();
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("ops:{TOKEN}"))
    );
    browser.call("Network.setExtraHTTPHeaders", json!({ "headers": { "Authorization": basic } }));
    browser.viewport(1440, 1000, false, false);
    let url = format!("http://127.0.0.1:{admin}/");
    browser.navigate(&url);
    browser.wait_for("two frames over SSE", "Number(document.body.dataset.frames || 0) >= 2");
    assert_eq!(
        browser.eval("window.smartproxyDashboard.mode"),
        "live",
        "served by the event stream"
    );
    assert_page_matches(&mut browser, admin, Duration::from_secs(3));

    // The chart has the history and the traffic.
    browser.wait_for(
        "chart points",
        "(s => s.x.length >= 5 && Math.max(...s.in) > 0 && Math.max(...s.out) > 0)(window.smartproxyDashboard.series)",
    );
    assert_eq!(browser.eval("document.querySelectorAll('#chart canvas').length > 0"), true);
    // Target health and per-route refusals from /api/routes.
    assert_eq!(
        browser.eval("document.querySelector('tr[data-route=\"blocked\"]').dataset.refused"),
        "7"
    );
    assert_eq!(
        browser
            .eval("document.querySelectorAll('tr[data-route=\"dead-backend\"] .tdot.down').length"),
        1
    );
    assert_eq!(
        browser.eval("document.querySelectorAll('#ips tr[data-ip=\"127.0.0.1\"]').length"),
        1
    );
    let _ = bearer;

    // New traffic shows up within about a second of being in /metrics/json.
    let before = snapshot_json(admin)["totals"]["connections"].as_u64().unwrap();
    echo_traffic(fwd, 5, 123_456);
    wait_until("new traffic sampled", || {
        snapshot_json(admin)["totals"]["connections"].as_u64() >= Some(before + 5)
    });
    assert_page_matches(&mut browser, admin, FOLLOW);

    // A reload (a new route) reaches the page, which keeps streaming.
    let frames = browser.eval("window.smartproxyDashboard.frames").as_u64().unwrap();
    let extra = format!(
        "\n[[routes]]\nname = \"added-by-reload\"\nmatch = {{ ports = [{extra_port}] }}\naction = {{ type = \"socket-handler\", handler = \"echo\" }}\n"
    );
    proxy.reload(&config(admin, &token_file, &ports, echo.port(), web.port(), &leaf, &extra));
    proxy.wait_for_log("configuration reloaded");
    browser.wait_for(
        "the reload in the history",
        "document.querySelectorAll('#reloads li[data-ok=\"true\"]').length === 1",
    );
    browser.wait_for(
        "the new route",
        "!!document.querySelector('tr[data-route=\"added-by-reload\"]')",
    );
    echo_traffic(fwd, 3, 10_000);
    wait_until("traffic after the reload sampled", || {
        snapshot_json(admin)["totals"]["connections"].as_u64() >= Some(before + 8)
    });
    assert_page_matches(&mut browser, admin, FOLLOW);
    let now = browser.eval("window.smartproxyDashboard.frames").as_u64().unwrap();
    assert!(now > frames, "frames kept coming after the reload");
    assert_eq!(browser.eval("window.smartproxyDashboard.mode"), "live");
    // A refused reload is listed too.
    proxy.reload("this is not toml [");
    browser.wait_for(
        "the refused reload",
        "document.querySelectorAll('#reloads li[data-ok=\"false\"]').length === 1",
    );

    browser.screenshot(&target_dir().join("dashboard/dashboard-light.png"));
    browser.viewport(1440, 1000, false, true);
    browser.wait_for(
        "dark colours",
        "getComputedStyle(document.body).backgroundColor === 'rgb(14, 19, 32)'",
    );
    browser.wait_for("chart redrawn", "document.querySelectorAll('#chart canvas').length === 1");
    browser.screenshot(&target_dir().join("dashboard/dashboard-dark.png"));

    // The 24 h view: minute points.
    browser.eval("document.querySelector('[data-range=\"86400\"]').click()");
    browser.wait_for(
        "minute points",
        "(s => s.x.length >= 1 && s.x.every(t => t % 60 === 0))(window.smartproxyDashboard.series)",
    );

    // A phone, dark.
    browser.viewport(390, 844, true, true);
    browser.navigate(&url);
    browser.wait_for("frames on the phone", "Number(document.body.dataset.frames || 0) >= 2");
    browser.wait_for("no horizontal overflow", "document.documentElement.scrollWidth <= 390");
    browser.screenshot(&target_dir().join("dashboard/dashboard-phone-dark.png"));

    // The polling fallback on its own (a wall screen: 2560 wide).
    browser.viewport(2560, 1440, false, false);
    browser.navigate(&format!("{url}?transport=poll"));
    browser.wait_for("frames by polling", "Number(document.body.dataset.frames || 0) >= 3");
    assert_eq!(browser.eval("window.smartproxyDashboard.mode"), "polling");
    assert_page_matches(&mut browser, admin, Duration::from_secs(3));
    browser.screenshot(&target_dir().join("dashboard/dashboard-wall-light.png"));
    drop(browser);
    drop(proxy);
}
