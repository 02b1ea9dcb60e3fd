//! The certificate expiry gauge, `tls_certificate_expiry_timestamp_seconds{route,domain}`, in
//! the four formats (insta snapshots of the lines that carry it), and promtool's check.

use std::process::Command;

use smartproxy_metrics::{CertificateExpiry, Metrics, MetricsConfig, Snapshot};
use smartproxy_metrics_export::{
    ExportOptions, StatsdStyle, json, openmetrics_text, prometheus_text, statsd_lines,
};

fn snapshot() -> Snapshot {
    let cfg = MetricsConfig { version: "smartproxy 0.1.0-test".into(), ..Default::default() };
    let m = Metrics::new(cfg, 1_700_000_000);
    m.set_certificate_expiries(vec![
        CertificateExpiry::new("web", "b.example.com", 1_767_225_600),
        CertificateExpiry::new("web", "a.example.com", 1_767_225_600),
        CertificateExpiry::new("api \"v2\"", "api.example.com", 1_798_761_600),
    ]);
    m.tick(1_700_000_001);
    m.snapshot()
}

/// The lines of `text` that mention the certificate gauge.
fn cert_lines(text: &str) -> String {
    text.lines().filter(|l| l.contains("certificate_expiry")).collect::<Vec<_>>().join("\n")
}

#[test]
fn prometheus_and_openmetrics() {
    let s = snapshot();
    insta::assert_snapshot!(
        "certificates_prometheus",
        cert_lines(&prometheus_text(&s, &ExportOptions::default()))
    );
    let om = openmetrics_text(&s, &ExportOptions::default());
    assert!(om.ends_with("# EOF\n"));
    insta::assert_snapshot!("certificates_openmetrics", cert_lines(&om));
    // Per-route series off: the certificate gauge stays (it is not a traffic series).
    let no_routes = ExportOptions { per_route: false, ..Default::default() };
    assert!(prometheus_text(&s, &no_routes).contains("domain=\"a.example.com\"} 1767225600"));
}

#[test]
fn statsd_plain_and_dogstatsd() {
    let s = snapshot();
    let o = ExportOptions::default();
    let lines = |style| {
        statsd_lines(&s, None, style, &o)
            .into_iter()
            .filter(|l| l.contains("certificate_expiry"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    insta::assert_snapshot!("certificates_statsd_plain", lines(StatsdStyle::Plain));
    insta::assert_snapshot!("certificates_statsd_dogstatsd", lines(StatsdStyle::DogStatsd));
}

#[test]
fn json_section() {
    let s = snapshot();
    let v: serde_json::Value =
        serde_json::from_str(&json(&s)).unwrap_or_else(|e| panic!("json: {e}"));
    insta::assert_snapshot!(
        "certificates_json",
        serde_json::to_string_pretty(&v["certificates"]).unwrap_or_default()
    );
}

#[test]
fn promtool_accepts_the_gauge() {
    let text = prometheus_text(&snapshot(), &ExportOptions::default());
    let promtool = std::env::var_os("PROMTOOL").unwrap_or_else(|| "promtool".into());
    let mut child = Command::new(&promtool)
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "promtool is required by this test and could not be run ({e}); install it \
                 (Debian: apt-get install prometheus) or point PROMTOOL at it"
            )
        });
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
