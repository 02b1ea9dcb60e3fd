//! The access log: one JSON line per request, off by default.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::ctx::ConnCtx;

/// Where access log lines go. Each call gets one complete JSON object, without a newline.
///
/// ```json
/// {"time":"2026-05-01T12:00:00.123Z","client":"192.0.2.7:50412","route":"api","method":"GET",
///  "host":"api.example.com","path":"/v1/x?y=1","status":200,"bytes_in":0,"bytes_out":512,
///  "duration_ms":1.204,"upstream":"127.0.0.1:9000","protocol":"h1"}
/// ```
///
/// `bytes_in` / `bytes_out` are body bytes; `upstream` is empty when no target was used
/// (handlers, errors before a connect); `protocol` is `h1` or `h2` towards the client.
pub trait AccessLog: Send + Sync + 'static {
    /// Writes one line.
    fn log(&self, line: &str);
}

/// Writes each line as an `INFO` event of target `smartproxy::access` through `tracing`
/// (the line is the event's message).
#[derive(Debug, Clone, Copy, Default)]
pub struct TracingAccessLog;

impl AccessLog for TracingAccessLog {
    fn log(&self, line: &str) {
        tracing::info!(target: "smartproxy::access", "{line}");
    }
}

impl<F: Fn(&str) + Send + Sync + 'static> AccessLog for F {
    fn log(&self, line: &str) {
        self(line)
    }
}

/// What a request contributes to its line (built only when the access log is on).
#[derive(Debug, Default)]
pub(crate) struct AccessEntry {
    pub(crate) sink: Option<Arc<dyn AccessLog>>,
    pub(crate) time: Option<SystemTime>,
    pub(crate) method: String,
    pub(crate) host: String,
    pub(crate) path: String,
    pub(crate) upstream: String,
}

impl std::fmt::Debug for dyn AccessLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AccessLog")
    }
}

impl AccessEntry {
    pub(crate) fn write(
        &self,
        ctx: &ConnCtx,
        route: &str,
        status: u16,
        bytes_in: u64,
        bytes_out: u64,
        took: Duration,
    ) {
        let Some(sink) = &self.sink else { return };
        let mut line = String::with_capacity(256);
        line.push_str("{\"time\":\"");
        rfc3339(self.time.unwrap_or_else(SystemTime::now), &mut line);
        line.push_str("\",\"client\":\"");
        let _ = write!(line, "{}", ctx.client);
        line.push_str("\",\"route\":");
        json_str(route, &mut line);
        line.push_str(",\"method\":");
        json_str(&self.method, &mut line);
        line.push_str(",\"host\":");
        json_str(&self.host, &mut line);
        line.push_str(",\"path\":");
        json_str(&self.path, &mut line);
        let _ = write!(
            line,
            ",\"status\":{status},\"bytes_in\":{bytes_in},\"bytes_out\":{bytes_out},\"duration_ms\":{:.3},\"upstream\":",
            took.as_secs_f64() * 1000.0
        );
        json_str(&self.upstream, &mut line);
        let proto = if ctx.h2.load(std::sync::atomic::Ordering::Relaxed) { "h2" } else { "h1" };
        let _ = write!(line, ",\"protocol\":\"{proto}\"}}");
        sink.log(&line);
    }
}

/// Appends `s` as a JSON string.
fn json_str(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// `2026-05-01T12:00:00.123Z`.
fn rfc3339(t: SystemTime, out: &mut String) {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let _ = write!(
        out,
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_and_strings() {
        let mut s = String::new();
        rfc3339(UNIX_EPOCH + Duration::from_millis(1_700_000_000_123), &mut s);
        assert_eq!(s, "2023-11-14T22:13:20.123Z");
        s.clear();
        rfc3339(UNIX_EPOCH + Duration::from_secs(951_782_400), &mut s); // leap day 2000
        assert_eq!(s, "2000-02-29T00:00:00.000Z");
        s.clear();
        json_str("a\"b\\c\n\u{1}é", &mut s);
        assert_eq!(s, r#""a\"b\\c\n\u0001é""#);
        let v: serde_json::Value = serde_json::from_str(&s).unwrap_or_default();
        assert_eq!(v, "a\"b\\c\n\u{1}é");
    }
}
