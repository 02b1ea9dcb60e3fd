//! Logs and the process's own messages. Nothing here may stop the proxy: a log line that
//! cannot be written (stderr closed, a full pipe, `smartproxy run ... | head`) is dropped and
//! counted, never a panic (`eprintln!` panics on a write error; this crate denies it).

use std::fmt;
use std::io::{self, IsTerminal, Write};
use std::sync::atomic::{AtomicU64, Ordering};

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

use crate::cli::LogFormat;

/// Log lines (and messages) that could not be written.
static DROPPED: AtomicU64 = AtomicU64::new(0);

/// Lines dropped because stderr could not take them.
pub(crate) fn dropped() -> u64 {
    DROPPED.load(Ordering::Relaxed)
}

/// Writes one line to stderr; a failure is counted, never a panic.
pub(crate) fn say(args: fmt::Arguments<'_>) {
    let mut e = io::stderr().lock();
    if writeln!(e, "{args}").is_err() {
        DROPPED.fetch_add(1, Ordering::Relaxed);
    }
}

/// Writes to stdout (the listening addresses, `validate`'s OK); a failure is counted.
pub(crate) fn out(args: fmt::Arguments<'_>) {
    let mut o = io::stdout().lock();
    if writeln!(o, "{args}").and_then(|()| o.flush()).is_err() {
        DROPPED.fetch_add(1, Ordering::Relaxed);
    }
}

/// stderr for tracing: write errors are swallowed and counted.
struct Stderr;

impl Write for Stderr {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if io::stderr().lock().write_all(buf).is_err() {
            DROPPED.fetch_add(1, Ordering::Relaxed);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        let _ = io::stderr().flush();
        Ok(())
    }
}

struct MakeStderr;

impl<'a> MakeWriter<'a> for MakeStderr {
    type Writer = Stderr;

    fn make_writer(&'a self) -> Stderr {
        Stderr
    }
}

/// The levels `--log-level` takes (besides filter directives such as `smartproxy_engine=debug`).
pub(crate) const LEVELS: &[&str] = &["error", "warn", "info", "debug", "trace", "off"];

/// Libraries whose debug lines are noise for an operator (rustls prints its registry paths):
/// kept at `info` when `--log-level` asks for `debug` or `trace`, unless the filter names them
/// (`RUST_LOG` is taken as written).
const QUIET: &[&str] = &["rustls", "tokio_rustls", "hyper", "hyper_util", "h2", "instant_acme"];

/// The tracing filter of `--log-level`: a level (`warning` is taken as `warn`), or directives.
/// An unknown word is a usage error that lists the accepted ones.
pub(crate) fn filter_of(level: &str) -> Result<String, String> {
    let l = level.trim().to_ascii_lowercase();
    let l = if l == "warning" { "warn".to_owned() } else { l };
    let directives = l.contains('=') || l.contains(',');
    if !directives && !LEVELS.contains(&l.as_str()) {
        return Err(format!(
            "invalid value `{level}` for --log-level: use one of {} (`warning` = `warn`), or \
             filter directives such as `info,smartproxy_engine=debug`",
            LEVELS.join(", ")
        ));
    }
    if EnvFilter::try_new(&l).is_err() {
        return Err(format!("invalid filter `{level}` for --log-level"));
    }
    let mut f = l.clone();
    if l.contains("debug") || l.contains("trace") {
        for q in QUIET {
            if !l.contains(q) {
                f.push_str(&format!(",{q}=info"));
            }
        }
    }
    Ok(f)
}

/// Installs the subscriber: `RUST_LOG` when set (as written), else `--log-level`, else `info`.
pub(crate) fn init(format: LogFormat, level: Option<&str>) -> Result<(), String> {
    let filter = match EnvFilter::try_from_default_env() {
        Ok(f) => f,
        Err(_) => EnvFilter::new(filter_of(level.unwrap_or("info"))?),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(MakeStderr)
        .with_ansi(io::stderr().is_terminal());
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_and_directives() {
        assert_eq!(filter_of("warning").unwrap(), "warn");
        assert_eq!(filter_of("WARN").unwrap(), "warn");
        assert!(filter_of("debug").unwrap().starts_with("debug,rustls=info"));
        assert_eq!(
            filter_of("debug,rustls=debug").unwrap(),
            "debug,rustls=debug,tokio_rustls=info,hyper=info,hyper_util=info,h2=info,instant_acme=info"
        );
        assert_eq!(
            filter_of("smartproxy_engine=trace").unwrap().split(',').next(),
            Some("smartproxy_engine=trace")
        );
        let e = filter_of("verbose").unwrap_err();
        assert!(e.contains("error, warn, info, debug, trace, off"), "{e}");
    }
}
