//! The files under `deploy/`: every metric the Grafana dashboard and the alerting rules use is
//! one the binary exports (after traffic of every kind, so that the HTTP, certificate, per-IP
//! and PROXY-header series exist), `promtool check rules` accepts the rules, and
//! `systemd-analyze verify` accepts the service unit.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::process::Command;

use smartproxy_tests::*;

/// Every `smartproxy_*` name in `text`.
fn names_in(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("smartproxy_") {
        let tail = &rest[at..];
        let end =
            tail.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(tail.len());
        out.insert(tail[..end].to_owned());
        rest = &tail[end..];
    }
    out
}

/// The names of the samples in a Prometheus text exposition (not just their HELP/TYPE lines).
fn sample_names(exposition: &str) -> BTreeSet<String> {
    exposition
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_owned)
        .collect()
}

fn strings_in(v: &serde_json::Value, out: &mut String) {
    match v {
        serde_json::Value::String(s) => {
            out.push_str(s);
            out.push('\n');
        }
        serde_json::Value::Array(a) => a.iter().for_each(|x| strings_in(x, out)),
        serde_json::Value::Object(o) => o.values().for_each(|x| strings_in(x, out)),
        _ => {}
    }
}

#[test]
fn grafana_and_alerts_use_only_exported_metrics_and_the_tools_accept_the_files() {
    let promtool = require("promtool", "prometheus");
    let analyze = require("systemd-analyze", "systemd");
    let root = workspace_root();
    let echo = Backend::echo();
    let web = HttpBackend::start("ok\n");
    let pki = Pki::new();
    let leaf = pki.leaf("deploy", &["deploy.test"]);
    let config = |[admin, fwd, http_port, tls_port, dead]: [u16; 5]| {
        format!(
            r#"bind = ["127.0.0.1"]
[admin]
listen = "127.0.0.1:{admin}"
[metrics]
per_ip = true

[[routes]]
name = "echo"
match = {{ ports = [{fwd}] }}
action = {{ type = "forward", targets = [{{ host = "127.0.0.1", port = {echo} }}] }}

[[routes]]
name = "web"
match = {{ ports = [{http_port}] }}
action = {{ type = "forward", targets = [{{ host = "127.0.0.1", port = {web} }}], http = {{ upstream = "http1" }} }}

[[routes]]
name = "tls"
match = {{ ports = [{tls_port}], domains = ["deploy.test"] }}
action = {{ type = "forward", targets = [{{ host = "127.0.0.1", port = {echo} }}], tls = {{ mode = "terminate", certificate = {{ cert = "{cert}", key = "{key}" }} }} }}

[[routes]]
name = "dead"
match = {{ ports = [{dead}] }}
action = {{ type = "forward", targets = [{{ host = "127.0.0.1", port = 1 }}] }}
"#,
            echo = echo.port(),
            web = web.port(),
            cert = leaf.cert.display(),
            key = leaf.key.display(),
        )
    };
    let (mut proxy, [admin, fwd, http_port, _tls_port, dead]) = Proxy::start_on(config);
    // Plain bytes, HTTP requests (2xx), a failed backend connect, a PROXY header from an
    // untrusted peer, a reload that is refused.
    let mut s = connect(fwd);
    s.write_all(&[1u8; 10_000]).unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    assert_eq!(read_to_end(&mut s).0.len(), 10_000);
    for _ in 0..3 {
        assert_eq!(get(http_port, "/").status, 200);
    }
    let mut s = connect(dead);
    let _ = s.read(&mut [0u8; 16]);
    let mut s = connect(fwd);
    s.write_all(b"PROXY TCP4 192.0.2.1 192.0.2.2 1000 80\r\n").unwrap();
    let _ = s.read(&mut [0u8; 16]);
    proxy.reload("not toml [");
    proxy.wait_for_log("configuration refused");
    wait_until("every series sampled", || {
        let body = get(admin, "/metrics").body;
        let names = sample_names(&body);
        names.contains("smartproxy_http_request_duration_seconds_bucket")
            && names.contains("smartproxy_proxy_headers_rejected_total")
            && names.contains("smartproxy_ip_bytes_total")
            && names.contains("smartproxy_tls_certificate_expiry_timestamp_seconds")
            && body.contains("smartproxy_route_backend_connect_failures_total{route=\"dead\"} 1")
    });
    let exported = sample_names(&get(admin, "/metrics").body);

    let grafana_text =
        std::fs::read_to_string(root.join("deploy/grafana/smartproxy.json")).unwrap();
    let grafana: serde_json::Value =
        serde_json::from_str(&grafana_text).expect("deploy/grafana/smartproxy.json is JSON");
    assert_eq!(grafana["uid"], "smartproxy");
    let mut strings = String::new();
    strings_in(&grafana, &mut strings);
    let used_by_grafana = names_in(&strings);
    let alerts_path = root.join("deploy/prometheus/alerts.yml");
    let used_by_alerts = names_in(&std::fs::read_to_string(&alerts_path).unwrap());
    assert!(used_by_grafana.len() >= 15, "{used_by_grafana:?}");
    assert!(used_by_alerts.len() >= 6, "{used_by_alerts:?}");
    for (file, used) in [("grafana", &used_by_grafana), ("alerts", &used_by_alerts)] {
        let missing: Vec<&String> = used.difference(&exported).collect();
        assert!(
            missing.is_empty(),
            "{file} uses metrics that /metrics does not export: {missing:?}"
        );
    }
    // The alerts cover what the issue names.
    for name in [
        "smartproxy_route_backend_connect_failures_total",
        "smartproxy_refused_connections_total",
        "smartproxy_tls_certificate_expiry_timestamp_seconds",
        "smartproxy_draining",
    ] {
        assert!(used_by_alerts.contains(name), "no alert on {name}");
    }

    let out = Command::new(&promtool).args(["check", "rules"]).arg(&alerts_path).output().unwrap();
    assert!(
        out.status.success(),
        "promtool check rules: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // The unit, pointed at the binary under test (verify checks that ExecStart exists).
    let unit = std::fs::read_to_string(root.join("deploy/systemd/smartproxy.service")).unwrap();
    for line in
        ["Type=notify", "WatchdogSec=", "ExecReload=/bin/kill -HUP $MAINPID", "TimeoutStopSec="]
    {
        assert!(unit.lines().any(|l| l.starts_with(line)), "the unit lacks {line}");
    }
    let dir = tempfile::tempdir().unwrap();
    let local = dir.path().join("smartproxy.service");
    let bin = smartproxy_bin();
    std::fs::write(&local, unit.replace("/usr/local/bin/smartproxy", &bin.display().to_string()))
        .unwrap();
    let out = Command::new(&analyze).args(["verify", "--man=no"]).arg(&local).output().unwrap();
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "systemd-analyze verify: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
