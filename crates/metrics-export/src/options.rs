//! Export options.

pub use smartproxy_metrics::PerIp;

/// What the exporters write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportOptions {
    /// Prefix of every metric name. Default `smartproxy_`. Characters that Prometheus does
    /// not allow in names become `_`. StatsD names use it with the trailing `_` turned into
    /// a `.` (`smartproxy.`).
    pub prefix: String,
    /// Per-route series (labelled `route="<name>"`). Default on.
    pub per_route: bool,
    /// Per-IP series. Default off: IPs are unbounded label values. `TopN(n)` writes the first
    /// `n` IPs of the snapshot (the busiest).
    pub per_ip: PerIp,
}

impl Default for ExportOptions {
    fn default() -> Self {
        Self { prefix: "smartproxy_".to_owned(), per_route: true, per_ip: PerIp::Off }
    }
}

impl ExportOptions {
    /// The prefix, cleaned for Prometheus names.
    pub(crate) fn prom_prefix(&self) -> String {
        self.prefix
            .chars()
            .enumerate()
            .map(|(i, c)| {
                let ok = c.is_ascii_alphabetic()
                    || c == '_'
                    || c == ':'
                    || (i > 0 && c.is_ascii_digit());
                if ok { c } else { '_' }
            })
            .collect()
    }

    /// The prefix for StatsD names: `smartproxy_` becomes `smartproxy.`.
    pub(crate) fn statsd_prefix(&self) -> String {
        let p = crate::statsd::clean_name(self.prefix.trim_end_matches(['_', '.']));
        if p.is_empty() { p } else { p + "." }
    }

    /// How many IPs to write.
    pub(crate) fn ip_limit(&self) -> usize {
        match self.per_ip {
            PerIp::TopN(n) => n,
            _ => 0,
        }
    }
}
