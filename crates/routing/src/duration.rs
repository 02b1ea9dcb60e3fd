//! Durations written as strings: `"250ms"`, `"30s"`, `"5m"`, `"4h"`, `"1d"`, or combined
//! (`"1h30m"`). A bare number (`10`, `"10"`) is refused: HAProxy reads milliseconds where
//! others read seconds, so the unit must be written.

use std::fmt;
use std::time::Duration;

use serde::Serializer;
use serde::de::{self, Deserializer, Visitor};

/// Parses a duration string; the error says what was wrong.
pub fn parse(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if s.is_empty() {
        return Err("empty duration".into());
    }
    if s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bare(s));
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
        if digits == 0 {
            return Err(format!("invalid duration `{s}`: expected a number before the unit"));
        }
        let n: u64 = rest[..digits]
            .parse()
            .map_err(|_| format!("invalid duration `{s}`: number too large"))?;
        rest = &rest[digits..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit()).unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let part = match unit {
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => Duration::from_secs(n.saturating_mul(60)),
            "h" => Duration::from_secs(n.saturating_mul(3600)),
            "d" => Duration::from_secs(n.saturating_mul(86_400)),
            "" => return Err(format!("invalid duration `{s}`: missing unit (ms, s, m, h, d)")),
            u => {
                return Err(format!("invalid duration `{s}`: unknown unit `{u}` (ms, s, m, h, d)"));
            }
        };
        total = total.saturating_add(part);
    }
    Ok(total)
}

fn bare(n: impl fmt::Display) -> String {
    format!(
        "invalid duration `{n}`: a number needs a unit: \"{n}s\" (seconds) or \"{n}ms\" \
         (milliseconds); units: ms, s, m, h, d"
    )
}

/// Formats a duration the way [`parse`] reads it (`"90s"` -> `"1m30s"`).
pub fn format(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        return "0s".into();
    }
    let mut out = String::new();
    let (mut secs, millis) = ((ms / 1000) as u64, (ms % 1000) as u64);
    for (unit, size) in [("d", 86_400), ("h", 3600), ("m", 60), ("s", 1)] {
        if secs >= size {
            out.push_str(&format!("{}{unit}", secs / size));
            secs %= size;
        }
    }
    if millis > 0 {
        out.push_str(&format!("{millis}ms"));
    }
    out
}

struct DurationVisitor;

impl Visitor<'_> for DurationVisitor {
    type Value = Duration;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a duration such as \"30s\", \"5m\" or \"4h\"")
    }
    fn visit_u64<E: de::Error>(self, n: u64) -> Result<Duration, E> {
        Err(E::custom(bare(n)))
    }
    fn visit_i64<E: de::Error>(self, n: i64) -> Result<Duration, E> {
        Err(E::custom(bare(n)))
    }
    fn visit_f64<E: de::Error>(self, n: f64) -> Result<Duration, E> {
        Err(E::custom(bare(n)))
    }
    fn visit_str<E: de::Error>(self, s: &str) -> Result<Duration, E> {
        parse(s).map_err(E::custom)
    }
}

/// `#[serde(with = "smartproxy_routing::duration")]` for a `Duration` field.
pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    d.deserialize_any(DurationVisitor)
}

/// Serialises as a string [`parse`] reads back.
pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format(*d))
}

/// `#[serde(with = "smartproxy_routing::duration::option")]` for an `Option<Duration>` field.
pub mod option {
    use super::*;

    /// Deserialises a present duration.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        d.deserialize_any(DurationVisitor).map(Some)
    }

    /// Serialises a present duration as a string.
    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => super::serialize(d, s),
            None => s.serialize_none(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units_and_combinations() {
        assert_eq!(parse("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse("4h"), Ok(Duration::from_secs(4 * 3600)));
        assert_eq!(parse("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse("1h30m"), Ok(Duration::from_secs(5400)));
    }

    #[test]
    fn rejects_bad_input_with_reason() {
        assert!(parse("").unwrap_err().contains("empty"));
        assert!(parse("5x").unwrap_err().contains("unknown unit `x`"));
        assert!(parse("s").unwrap_err().contains("number before"));
        let e = parse("10").unwrap_err();
        assert!(e.contains("\"10s\" (seconds) or \"10ms\""), "{e}");
    }

    #[test]
    fn format_round_trips() {
        for s in ["1m30s", "4h", "250ms", "1d2h", "0s"] {
            assert_eq!(format(parse(s).unwrap()), s);
        }
    }
}
