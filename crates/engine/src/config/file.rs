//! The configuration file as written: the serde model of every key, with addresses and names
//! still as strings. [`super::parse`] turns it into the typed [`super::Config`]; nothing
//! else reads it.

use std::time::Duration;

use serde::Deserialize;
use smartproxy_routing::duration as dur;

use super::{Defaults, PerIpSetting, Runtime};

/// The top level of the file, routes aside (they are deserialised one by one).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct File {
    #[serde(default)]
    pub(crate) workers: Option<usize>,
    #[serde(default)]
    pub(crate) runtime: Runtime,
    #[serde(default)]
    pub(crate) bind: Option<Vec<String>>,
    #[serde(default)]
    pub(crate) reuse_port: bool,
    #[serde(default)]
    pub(crate) defer_accept: Option<bool>,
    #[serde(default)]
    pub(crate) proxy_ips: Vec<String>,
    #[serde(default)]
    pub(crate) accept_proxy_protocol: Option<bool>,
    #[serde(default, with = "dur::option")]
    pub(crate) proxy_protocol_timeout: Option<Duration>,
    #[serde(default)]
    pub(crate) proxy_protocol_optional: bool,
    #[serde(default, with = "dur::option")]
    pub(crate) proxy_protocol_detect_timeout: Option<Duration>,
    #[serde(default)]
    pub(crate) defaults: Defaults,
    #[serde(default)]
    pub(crate) access_log: bool,
    #[serde(default)]
    pub(crate) watch_config: bool,
    #[serde(default)]
    pub(crate) admin: Option<AdminFile>,
    #[serde(default)]
    pub(crate) metrics: MetricsFile,
    #[serde(default)]
    pub(crate) acme: Option<smartproxy_acme::AcmeConfig>,
    #[serde(default)]
    pub(crate) tls: TlsFile,
    /// Only there so that the key is known (the routes are taken out before this struct is
    /// deserialised; a `routes` that is not an array stays and is reported here).
    #[serde(default)]
    #[allow(dead_code)]
    pub(crate) routes: Vec<serde::de::IgnoredAny>,
}

/// `[admin]` as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AdminFile {
    pub(crate) listen: String,
    #[serde(default)]
    pub(crate) token_file: Option<std::path::PathBuf>,
    #[serde(default)]
    pub(crate) allow_unauthenticated: bool,
}

/// `[tls]` as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TlsFile {
    #[serde(default)]
    pub(crate) default_certificate: Option<super::CertificateFiles>,
}

/// `[metrics]` as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct MetricsFile {
    #[serde(default = "super::yes")]
    pub(crate) enabled: bool,
    #[serde(default, with = "dur::option")]
    pub(crate) sample_interval: Option<Duration>,
    #[serde(default, with = "dur::option")]
    pub(crate) retention: Option<Duration>,
    #[serde(default)]
    pub(crate) prefix: Option<String>,
    #[serde(default)]
    pub(crate) per_ip: PerIpSetting,
    #[serde(default)]
    pub(crate) statsd: Option<StatsdFile>,
}

impl Default for MetricsFile {
    fn default() -> Self {
        Self {
            enabled: true,
            sample_interval: None,
            retention: None,
            prefix: None,
            per_ip: PerIpSetting::Off,
            statsd: None,
        }
    }
}

/// `[metrics.statsd]` as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct StatsdFile {
    pub(crate) address: String,
    #[serde(default, with = "dur::option")]
    pub(crate) interval: Option<Duration>,
    #[serde(default)]
    pub(crate) style: Option<String>,
}
