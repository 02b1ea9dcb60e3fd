//! Command line and configuration sources.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

/// smartproxy: a reverse proxy with PROXY protocol, SNI routing and traffic metrics.
///
/// Without a command it runs a small demo configuration on 127.0.0.1:8080-8082, with the admin
/// API on 127.0.0.1:9900.
#[derive(Debug, Parser)]
#[command(name = "smartproxy", version, about)]
pub(crate) struct Cli {
    /// Log format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    pub(crate) log_format: LogFormat,
    /// Log level or filter (e.g. `debug`, `smartproxy_engine=trace`); RUST_LOG wins when set.
    #[arg(long, global = true)]
    pub(crate) log_level: Option<String>,
    #[command(subcommand)]
    pub(crate) command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Run with a configuration file (TOML, or JSON for a .json extension).
    Run {
        /// Configuration file.
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Check a configuration file: print the timeouts of each route's connections and OK, and
    /// exit 0; or every error and exit 1.
    Validate {
        /// Configuration file.
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Print a shell completion script on stdout (e.g. `smartproxy completions bash >
    /// /etc/bash_completion.d/smartproxy`).
    Completions {
        /// The shell to complete for.
        #[arg(value_enum, value_name = "SHELL")]
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff) on stdout (e.g. `smartproxy man | man -l -`).
    Man,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// The configuration run when no command is given.
pub(crate) const DEMO: &str = r#"
# smartproxy demo: try `curl http://127.0.0.1:8080/`, `nc 127.0.0.1 8081`, `nc 127.0.0.1 8082`,
# and the admin API: `curl http://127.0.0.1:9900/metrics` (or /metrics/json, /healthz, /ready).
bind = ["127.0.0.1"]

[defaults]
shutdown_grace = "5s"

[admin]
listen = "127.0.0.1:9900"

[[routes]]
name = "demo-static"
match = { ports = [8080] }
action = { type = "socket-handler", handler = "static", body = "Hello from smartproxy\n" }

[[routes]]
name = "demo-echo"
match = { ports = [8081] }
action = { type = "socket-handler", handler = "echo" }

[[routes]]
name = "demo-forward"
match = { ports = [8082] }
action = { type = "forward", targets = [{ host = "127.0.0.1", port = 8081 }] }
"#;
