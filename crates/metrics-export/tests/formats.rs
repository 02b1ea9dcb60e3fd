//! Snapshot tests of the four formats, promtool, and the UDP pusher.

mod common;

use std::net::UdpSocket;
use std::process::Command;
use std::time::Duration;

use smartproxy_metrics_export::{
    ExportOptions, Format, MAX_DATAGRAM, PerIp, StatsdPusher, StatsdStyle, batch_datagrams, json,
    openmetrics_text, prometheus_text, statsd_lines,
};

fn with_ips() -> ExportOptions {
    ExportOptions { per_ip: PerIp::TopN(1), ..Default::default() }
}

#[test]
fn prometheus_snapshot() {
    insta::assert_snapshot!("prometheus", prometheus_text(&common::snapshot(), &with_ips()));
}

#[test]
fn openmetrics_snapshot() {
    let text = openmetrics_text(&common::snapshot(), &ExportOptions::default());
    assert!(text.ends_with("# EOF\n"));
    insta::assert_snapshot!("openmetrics", text);
}

#[test]
fn json_snapshot() {
    insta::assert_snapshot!("json", json(&common::snapshot()));
}

#[test]
fn statsd_snapshots() {
    let (first, second) = common::two_snapshots();
    let o = with_ips();
    insta::assert_snapshot!(
        "statsd_plain_first",
        statsd_lines(&first, None, StatsdStyle::Plain, &o).join("\n")
    );
    insta::assert_snapshot!(
        "statsd_dogstatsd_delta",
        statsd_lines(&second, Some(&first), StatsdStyle::DogStatsd, &o).join("\n")
    );
}

#[test]
fn fixed_names_and_units() {
    let text = prometheus_text(&common::snapshot(), &ExportOptions::default());
    for needle in [
        "# TYPE smartproxy_bytes_total counter",
        "smartproxy_bytes_total{direction=\"in\"} ",
        "smartproxy_bytes_total{direction=\"out\"} ",
        "# TYPE smartproxy_connections_active gauge",
        "# TYPE smartproxy_connections_total counter",
        "# TYPE smartproxy_connection_duration_seconds histogram",
        "smartproxy_connection_duration_seconds_bucket{le=\"+Inf\"} 2",
        "smartproxy_throughput_bytes_per_second{direction=\"in\",window=\"1s\"} ",
        "smartproxy_route_bytes_total{route=\"web\",direction=\"in\"} ",
        "route=\"api \\\"v2\\\"\"",
        "# TYPE smartproxy_http_requests_total counter",
        "smartproxy_http_requests_total{route=\"web\",code_class=\"2xx\",method=\"GET\"} 2",
        "# TYPE smartproxy_http_request_duration_seconds histogram",
        "smartproxy_http_request_duration_seconds_count{route=\"web\"} 3",
        "# TYPE smartproxy_http_requests_in_flight gauge",
        "smartproxy_http_errors_total{reason=\"no_route\"} 1",
        "smartproxy_http_errors_total{reason=\"rate_limited\"} 2",
        "smartproxy_http_errors_total{reason=\"unauthorized\"} 1",
        "# TYPE smartproxy_http_policy_refusals_total counter",
        "smartproxy_http_policy_refusals_total{route=\"web\",reason=\"rate_limited\"} 2",
        "smartproxy_http_policy_refusals_total{route=\"web\",reason=\"auth_missing\"} 1",
        "# TYPE smartproxy_connections_closed_total counter",
        "smartproxy_connections_closed_total{reason=\"inactivity\"} 1",
        "smartproxy_connections_closed_total{reason=\"keepalive\"} 0",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in\n{text}");
    }
    assert!(!text.contains("ip=\""), "per-IP series are off by default");
    assert!(!text.contains("# EOF"));
    let custom = ExportOptions { prefix: "edge-".into(), ..Default::default() };
    assert!(prometheus_text(&common::snapshot(), &custom).contains("edge_bytes_total{"));
}

#[test]
fn per_ip_series_are_capped() {
    let s = common::snapshot();
    assert_eq!(s.ips.len(), 2);
    let text = prometheus_text(&s, &with_ips());
    let ips: std::collections::BTreeSet<&str> = text
        .lines()
        .filter_map(|l| l.split("ip=\"").nth(1))
        .filter_map(|r| r.split('"').next())
        .collect();
    assert_eq!(ips.len(), 1, "{ips:?}");
}

#[test]
fn accept_header_negotiation() {
    assert_eq!(Format::from_accept(None), Format::Prometheus);
    assert_eq!(Format::from_accept(Some("text/plain")), Format::Prometheus);
    assert_eq!(
        Format::from_accept(Some(
            "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
        )),
        Format::OpenMetrics
    );
    assert_eq!(
        Format::from_accept(Some("application/openmetrics-text;q=0, text/plain")),
        Format::Prometheus
    );
    assert!(Format::OpenMetrics.content_type().starts_with("application/openmetrics-text"));
}

/// Runs `promtool check metrics` on `text`; fails loudly when promtool is missing.
fn promtool_check(text: &str) {
    let promtool = std::env::var_os("PROMTOOL").unwrap_or_else(|| "promtool".into());
    let mut child = match Command::new(&promtool)
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => panic!(
            "promtool is required by this test and could not be run ({e}); install it \
             (Debian: apt-get install prometheus) or point PROMTOOL at it"
        ),
    };
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap_or_else(|| panic!("promtool stdin"));
        stdin.write_all(text.as_bytes()).unwrap_or_else(|e| panic!("writing to promtool: {e}"));
    }
    let out = child.wait_with_output().unwrap_or_else(|e| panic!("promtool: {e}"));
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}\n--- input ---\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn promtool_accepts_the_prometheus_output() {
    promtool_check(&prometheus_text(&common::snapshot(), &with_ips()));
    // An empty collector too.
    let empty = smartproxy_metrics::Metrics::new(Default::default(), 0).snapshot();
    promtool_check(&prometheus_text(&empty, &ExportOptions::default()));
}

#[test]
fn datagrams_are_batched_under_the_limit() {
    let lines: Vec<String> = (0..500).map(|i| format!("smartproxy.test.{i}:1|c")).collect();
    let batches = batch_datagrams(&lines, MAX_DATAGRAM);
    assert!(batches.len() > 1);
    assert!(batches.iter().all(|b| b.len() <= MAX_DATAGRAM));
    let rejoined: Vec<&str> = batches.iter().flat_map(|b| b.split('\n')).collect();
    assert_eq!(rejoined, lines.iter().map(String::as_str).collect::<Vec<_>>());
    let long = vec!["x".repeat(2_000), "y".into()];
    assert_eq!(batch_datagrams(&long, MAX_DATAGRAM).len(), 2);
}

#[test]
fn pusher_sends_deltas_over_udp() {
    let server = UdpSocket::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("bind: {e}"));
    server.set_read_timeout(Some(Duration::from_secs(5))).unwrap_or_else(|e| panic!("{e}"));
    let addr = server.local_addr().unwrap_or_else(|e| panic!("{e}"));
    let mut pusher = StatsdPusher::new(addr, StatsdStyle::DogStatsd, ExportOptions::default())
        .unwrap_or_else(|e| panic!("pusher: {e}"));
    let (first, second) = common::two_snapshots();
    let recv_all = |n: usize| {
        let mut got = String::new();
        let mut buf = [0u8; 2048];
        for _ in 0..n {
            let len = server.recv(&mut buf).unwrap_or_else(|e| panic!("recv: {e}"));
            assert!(len <= MAX_DATAGRAM);
            got.push_str(&String::from_utf8_lossy(&buf[..len]));
            got.push('\n');
        }
        got
    };
    let n = pusher.push(&first).unwrap_or_else(|e| panic!("push: {e}"));
    let got = recv_all(n);
    assert!(got.contains("smartproxy.bytes_in:6600|c\n"), "{got}");
    let n = pusher.push(&second).unwrap_or_else(|e| panic!("push: {e}"));
    let got = recv_all(n);
    assert!(got.contains("smartproxy.bytes_in:5|c\n"), "{got}");
    assert!(got.contains("smartproxy.refused:1|c|#reason:no_route"), "{got}");
    assert!(got.contains("smartproxy.connections_active:1|g\n"), "{got}");
}
