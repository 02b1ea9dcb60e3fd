//! Domain patterns: `example.com`, `*.example.com`, `example.*`, `*.lossless*`, `*`.
//!
//! Matching is ASCII case-insensitive and ignores surrounding whitespace and one trailing dot
//! on the name being checked. `*` stands for any run of characters, dots included, so
//! `*.example.com` matches `a.example.com` and `a.b.example.com` but not `example.com`.

use std::fmt;

/// Longest DNS name, in bytes.
pub(crate) const MAX_NAME: usize = 253;

/// A compiled domain pattern (stored lower-case).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DomainPattern {
    text: Box<str>,
    kind: DomainKind,
}

/// The shape of a domain pattern, from most to least specific.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum DomainKind {
    /// `*`: any name.
    CatchAll,
    /// Any other pattern with a `*`.
    Glob,
    /// `*.suffix` with no other `*`.
    Suffix,
    /// No `*`.
    Exact,
}

/// Why a domain pattern was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DomainPatternError {
    /// Empty pattern.
    #[error("empty domain pattern")]
    Empty,
    /// Longer than 253 bytes.
    #[error("domain pattern is longer than 253 bytes")]
    TooLong,
    /// A character that cannot appear in a host name.
    #[error(
        "`{pattern}` has the character {ch:?}, which cannot appear in a host name (non-ASCII names are written in punycode)"
    )]
    BadChar {
        /// The pattern.
        pattern: String,
        /// The character.
        ch: char,
    },
    /// `..`, a leading dot, or `**`.
    #[error("`{0}` has an empty label or a doubled `*`")]
    EmptyLabel(String),
}

impl DomainPattern {
    /// Parses and lower-cases a pattern. A trailing dot is dropped.
    pub fn parse(s: &str) -> Result<Self, DomainPatternError> {
        let t = s.trim();
        let t = t.strip_suffix('.').unwrap_or(t);
        if t.is_empty() {
            return Err(DomainPatternError::Empty);
        }
        if t.len() > MAX_NAME {
            return Err(DomainPatternError::TooLong);
        }
        if let Some(ch) =
            t.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | '*')))
        {
            return Err(DomainPatternError::BadChar { pattern: s.to_owned(), ch });
        }
        if t.starts_with('.') || t.contains("..") || t.contains("**") {
            return Err(DomainPatternError::EmptyLabel(s.to_owned()));
        }
        let text: Box<str> = t.to_ascii_lowercase().into();
        let stars = text.bytes().filter(|&b| b == b'*').count();
        let kind = if &*text == "*" {
            DomainKind::CatchAll
        } else if stars == 0 {
            DomainKind::Exact
        } else if stars == 1 && text.starts_with("*.") {
            DomainKind::Suffix
        } else {
            DomainKind::Glob
        };
        Ok(Self { text, kind })
    }

    /// The pattern, lower-case.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    pub(crate) fn kind(&self) -> DomainKind {
        self.kind
    }

    /// For `*.example.com`: `example.com`.
    pub(crate) fn suffix(&self) -> Option<&str> {
        match self.kind {
            DomainKind::Suffix => self.text.get(2..),
            _ => None,
        }
    }

    /// Characters other than `*`: more literal text means more specific.
    pub(crate) fn literal_len(&self) -> usize {
        self.text.bytes().filter(|&b| b != b'*').count()
    }

    /// Whether `name` (any case, optional trailing dot, optional `:port`) is matched.
    pub fn matches(&self, name: &str) -> bool {
        let Some(name) = normalize(name) else { return false };
        self.matches_normalized(name.as_bytes())
    }

    /// `name` must be trimmed, without trailing dot; compared ASCII case-insensitively.
    pub(crate) fn matches_normalized(&self, name: &[u8]) -> bool {
        match self.kind {
            DomainKind::CatchAll => !name.is_empty(),
            DomainKind::Exact => name.eq_ignore_ascii_case(self.text.as_bytes()),
            DomainKind::Suffix => {
                // "*.example.com": the name ends with ".example.com" and has at least one
                // character before it.
                let dot_suffix = &self.text.as_bytes()[1..];
                name.len() > dot_suffix.len()
                    && name[name.len() - dot_suffix.len()..].eq_ignore_ascii_case(dot_suffix)
            }
            DomainKind::Glob => glob(self.text.as_bytes(), name),
        }
    }
}

impl fmt::Display for DomainPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// Trims whitespace, a `:port` suffix (as in a Host header; `[v6]:port` keeps the address
/// without brackets) and one trailing dot; `None` when empty or longer than a DNS name.
#[inline]
pub(crate) fn normalize(name: &str) -> Option<&str> {
    let mut t = name.trim();
    if let Some(v6) = t.strip_prefix('[') {
        t = v6.split(']').next().unwrap_or(v6);
    } else if let Some((host, port)) = t.rsplit_once(':')
        && !host.contains(':')
        && !port.is_empty()
        && port.bytes().all(|b| b.is_ascii_digit())
    {
        t = host;
    }
    let t = t.strip_suffix('.').unwrap_or(t);
    (!t.is_empty() && t.len() <= MAX_NAME).then_some(t)
}

/// `*` matches any run of bytes (possibly empty); other bytes compare case-insensitively.
/// Iterative with single backtrack point: O(pattern * name) at worst, no allocation.
fn glob(pat: &[u8], name: &[u8]) -> bool {
    let (mut p, mut n) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while n < name.len() {
        match pat.get(p) {
            Some(b'*') => {
                star = Some((p, n));
                p += 1;
            }
            Some(&c) if c.eq_ignore_ascii_case(&name[n]) => {
                p += 1;
                n += 1;
            }
            _ => match star {
                Some((sp, sn)) => {
                    p = sp + 1;
                    n = sn + 1;
                    star = Some((sp, sn + 1));
                }
                None => return false,
            },
        }
    }
    pat[p..].iter().all(|&c| c == b'*')
}

/// Whether two patterns can match a common name (used to find conflicting routes).
/// Conservative: two globs that might overlap are reported as overlapping.
pub(crate) fn may_overlap(a: &DomainPattern, b: &DomainPattern) -> bool {
    if a.kind == DomainKind::Exact {
        return b.matches_normalized(a.text.as_bytes());
    }
    if b.kind == DomainKind::Exact {
        return a.matches_normalized(b.text.as_bytes());
    }
    if let (Some(sa), Some(sb)) = (a.suffix(), b.suffix()) {
        // `*.x.y` and `*.y` overlap; `*.a.com` and `*.b.com` do not.
        return sa == sb || sa.ends_with(&format!(".{sb}")) || sb.ends_with(&format!(".{sa}"));
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(p: &str, n: &str) -> bool {
        DomainPattern::parse(p).unwrap().matches(n)
    }

    #[test]
    fn matching() {
        assert!(m("example.com", "EXAMPLE.com."));
        assert!(m("example.com", " example.com "));
        assert!(m("example.com", "example.com:8443"));
        assert!(m("example.com", "Example.com.:80"));
        assert!(!m("example.com", "example.com:"));
        assert!(m("*", "[::1]:8080"));
        assert!(!m("example.com", "a.example.com"));
        assert!(m("*.example.com", "a.example.com"));
        assert!(m("*.example.com", "a.b.example.com"));
        assert!(!m("*.example.com", "example.com"));
        assert!(!m("*.example.com", "aexample.com"));
        assert!(!m("*.example.com", ".example.com"));
        assert!(m("example.*", "example.org"));
        assert!(m("example.*", "example.co.uk"));
        assert!(!m("example.*", "www.example.org"));
        assert!(m("*.lossless*", "a.lossless.one"));
        assert!(m("*", "anything.at.all"));
        assert!(!m("*", ""));
        assert!(!m("example.com", ""));
        assert!(m("a*b*c", "aXXbYYc"));
        assert!(!m("a*b*c", "aXXbYY"));
    }

    #[test]
    fn parse_errors() {
        assert_eq!(DomainPattern::parse(""), Err(DomainPatternError::Empty));
        assert!(DomainPattern::parse("a..b").is_err());
        assert!(DomainPattern::parse(".a").is_err());
        assert!(DomainPattern::parse("a b").is_err());
        assert!(DomainPattern::parse("**.a").is_err());
        assert!(DomainPattern::parse("exämple.com").is_err());
        assert!(DomainPattern::parse(&"a".repeat(254)).is_err());
        assert_eq!(DomainPattern::parse("Example.COM.").unwrap().as_str(), "example.com");
    }

    #[test]
    fn overlap() {
        let p = |s| DomainPattern::parse(s).unwrap();
        assert!(may_overlap(&p("a.example.com"), &p("*.example.com")));
        assert!(!may_overlap(&p("example.com"), &p("*.example.com")));
        assert!(may_overlap(&p("*.x.example.com"), &p("*.example.com")));
        assert!(!may_overlap(&p("*.a.com"), &p("*.b.com")));
        assert!(may_overlap(&p("*"), &p("*.b.com")));
    }
}

#[cfg(test)]
mod props {
    use super::*;
    use proptest::prelude::*;

    /// The SmartProxy definition: `*` becomes `.*`, anchored, case-insensitive.
    fn reference(pattern: &str, name: &str) -> bool {
        let re = format!(
            "(?i)^{}$",
            pattern.split('*').map(regex::escape).collect::<Vec<_>>().join(".*")
        );
        let name = name.trim();
        let name = name.strip_suffix('.').unwrap_or(name);
        !name.is_empty() && regex::Regex::new(&re).unwrap().is_match(name)
    }

    proptest! {
        #[test]
        fn glob_agrees_with_regex(
            pattern in "[*]?([a-c]{1,2}[.*]){0,3}[a-c]{1,2}[*]?",
            name in "([a-cA-C]{1,2}[.]){0,4}[a-c]{1,2}[.]?",
        ) {
            if let Ok(p) = DomainPattern::parse(&pattern) {
                prop_assert_eq!(p.matches(&name), reference(&pattern, &name), "{} {}", pattern, name);
            }
        }
    }
}
