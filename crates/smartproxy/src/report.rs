//! What `validate` prints besides OK: the timeouts each route's connections get (its
//! `timeouts` table over `[defaults]`, keep-alive treatment applied).

use std::fmt::Write;

use smartproxy_engine::Config;
use smartproxy_engine::routing::duration::format as dur;

/// A table, one route per line, columns aligned:
///
/// ```text
/// route  treatment  inactivity  max_lifetime  connect  initial_data  http_keepalive  tcp_keepalive  randomize
/// db     immortal   off         7d            3s       1m            -               1m+10s*6       no
/// ```
///
/// `http_keepalive`: the idle time between requests of HTTP routes (`-` for other routes);
/// `tcp_keepalive` reads idle + interval * count (`off` without probes); `randomize` is the
/// ±5 % jitter.
pub(crate) fn timeouts_table(config: &Config) -> String {
    let head = [
        "route",
        "treatment",
        "inactivity",
        "max_lifetime",
        "connect",
        "initial_data",
        "http_keepalive",
        "tcp_keepalive",
        "randomize",
    ];
    let mut rows = vec![head.map(str::to_owned).to_vec()];
    let routes = config.table().routes();
    for (i, (name, t)) in config.route_timeouts().into_iter().enumerate() {
        let http = routes.get(i).is_some_and(|r| r.http().is_some());
        rows.push(vec![
            name,
            t.keepalive_treatment.to_string(),
            t.inactivity.map_or_else(|| "off".to_owned(), dur),
            t.max_lifetime.map_or_else(|| "none".to_owned(), dur),
            dur(t.connect),
            dur(t.initial_data),
            match (http, t.http_keepalive) {
                (false, _) => "-".to_owned(),
                (true, Some(d)) => dur(d),
                (true, None) => "off".to_owned(),
            },
            t.tcp_keepalive.to_string(),
            if t.randomize { "±5%" } else { "no" }.to_owned(),
        ]);
    }
    let widths: Vec<usize> = (0..head.len())
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in &rows {
        let mut line = String::new();
        for (c, cell) in r.iter().enumerate() {
            let _ = write!(line, "{cell:<w$}  ", w = widths[c]);
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}
