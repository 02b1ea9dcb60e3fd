#![no_main]
//! Structure-aware: the fuzzer's bytes choose sections, keys (the real ones, a few wrong) and
//! values (durations, numbers, strings, lists, tables; well-formed and not) of a TOML
//! configuration with routes; the document is loaded as TOML, and as JSON when TOML reads it.
//! Any choice gives a configuration or errors, never a panic. File paths never exist, so no
//! file is read.

use std::fmt::Write;

use libfuzzer_sys::fuzz_target;
use smartproxy_engine::{Config, Format};

const TOP: &[&str] = &[
    "bind", "workers", "runtime", "reuse_port", "proxy_ips", "proxy_protocol_timeout",
    "proxy_protocol_optional", "accept_proxy_protocol", "watch_config", "access_log", "bogus",
];
const DEFAULTS: &[&str] = &[
    "initial_data_timeout", "inactivity_timeout", "max_connection_lifetime",
    "max_connections_per_ip", "connection_rate_limit_per_minute", "max_connections",
    "connect_timeout", "shutdown_grace", "splice", "keepalive_treatment",
    "keepalive_inactivity_multiplier", "extended_keepalive_lifetime", "tcp_keepalive",
    "randomize_timeouts", "request_header_timeout", "http_keepalive_timeout",
    "http_response_timeout", "max_request_header_bytes", "http_pool_max_idle",
    "http_pool_idle_timeout", "http2_max_concurrent_streams", "health", "bogus",
];
const ADMIN: &[&str] = &["listen", "token_file", "allow_unauthenticated", "bogus"];
const METRICS: &[&str] = &["sample_interval", "statsd", "bogus"];
const ROUTE: &[&str] = &["name", "priority", "enabled", "match", "action", "security", "timeouts"];
const MATCH: &[&str] = &["ports", "domains", "path", "client_ip", "tls_version", "headers"];
const ACTION: &[&str] = &[
    "type", "targets", "tls", "send_proxy_protocol", "load_balancing", "connect_timeout", "http",
    "forwarding_engine", "nftables", "health", "handler", "status", "location", "body",
];
const SECURITY: &[&str] = &[
    "ip_allow_list", "ip_block_list", "max_connections", "max_connections_per_ip",
    "rate_limit_per_minute", "rate_limit",
];
const TIMEOUTS: &[&str] = &[
    "inactivity", "max_lifetime", "connect", "initial_data", "http_keepalive",
    "keepalive_treatment", "keepalive_inactivity_multiplier", "tcp_keepalive", "randomize",
];
const VALUES: &[&str] = &[
    "\"10s\"", "\"0s\"", "\"25h\"", "\"1ms\"", "\"x\"", "\"\"", "30", "0", "-1",
    "18446744073709551615", "4294967296", "65536", "1.5", "true", "false",
    "\"127.0.0.1\"", "\"::1\"", "\"0.0.0.0:9900\"", "\"10.0.0.0/8\"", "\"*.example.com\"",
    "\"example.com\"", "\"/api/*\"", "\"/nonexistent/f.pem\"", "\"forward\"",
    "\"socket-handler\"", "\"redirect\"", "\"echo\"", "\"round-robin\"", "\"ip-hash\"",
    "\"least-connections\"", "\"v1\"", "\"v2\"", "\"nftables\"", "\"immortal\"", "\"extended\"",
    "\"per-worker\"", "[]", "[80]", "[80, \"8000-8002\"]", "[\"9000-8000\"]", "[0]",
    "[\"127.0.0.1\", \"bad ip\"]", "[{ host = \"127.0.0.1\", port = 9000 }]",
    "[{ host = \"\", port = 0 }]", "[{ host = \"[::1]\", port = \"preserve\" }]",
    "{ cooldown = \"1s\" }", "{ cooldown = 5 }", "{ idle = \"1s\", interval = \"1s\", count = 0 }",
    "{ mode = \"terminate\" }", "{ mode = \"passthrough\", alpn = [\"h2\"] }",
    "{ mode = \"terminate\", certificate = { cert = \"/nonexistent/c\", key = \"/nonexistent/k\" } }",
    "{ mode = \"terminate\", certificate = \"auto\" }", "{ }", "{ preserve_host = false }",
    "{ ports = 80 }", "{ type = \"forward\", targets = [{ host = \"a\", port = 1 }] }",
    "{ \"X-A\" = \"b\" }", "\"{sni}\"", "\"{path}\"", "\"\\u0000\"",
];

/// Reads choices from the fuzzer's bytes (0 when they run out).
struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn byte(&mut self) -> u8 {
        let (b, rest) = self.0.split_first().map_or((0, &[][..]), |(b, r)| (*b, r));
        self.0 = rest;
        b
    }
    fn pick<'s>(&mut self, list: &[&'s str]) -> &'s str {
        list[usize::from(self.byte()) % list.len()]
    }
}

fn keys(b: &mut Bytes<'_>, out: &mut String, list: &[&str], max: u8) {
    for _ in 0..b.byte() % max {
        let key = b.pick(list);
        let _ = writeln!(out, "{key} = {}", b.pick(VALUES));
    }
}

fn document(b: &mut Bytes<'_>) -> String {
    let mut out = String::new();
    keys(b, &mut out, TOP, 6);
    for _ in 0..b.byte() % 8 {
        match b.byte() % 5 {
            0 => {
                out.push_str("[defaults]\n");
                keys(b, &mut out, DEFAULTS, 8);
            }
            1 => {
                out.push_str("[admin]\n");
                keys(b, &mut out, ADMIN, 4);
            }
            2 => {
                out.push_str("[metrics]\n");
                keys(b, &mut out, METRICS, 3);
            }
            _ => {
                out.push_str("[[routes]]\n");
                keys(b, &mut out, ROUTE, 4);
                for (table, list) in [
                    ("match", MATCH),
                    ("action", ACTION),
                    ("security", SECURITY),
                    ("timeouts", TIMEOUTS),
                ] {
                    if b.byte() % 3 != 0 {
                        let _ = writeln!(out, "[routes.{table}]");
                        keys(b, &mut out, list, 6);
                    }
                }
            }
        }
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let text = document(&mut Bytes(data));
    if let Err(e) = Config::from_str(&text, Format::Toml) {
        let _ = e.to_string();
    }
    // The same document as JSON, when it is a TOML document at all (duplicate keys are not).
    if let Ok(v) = toml::from_str::<toml::Table>(&text) {
        if let Ok(json) = serde_json::to_string(&v) {
            if let Err(e) = Config::from_str(&json, Format::Json) {
                let _ = e.to_string();
            }
        }
    }
});
