//! HTTP path patterns: `/api/users` (exact), `/api/*` (prefix), `/users/:id` (parameters),
//! `/api/users/:id/*` (mixed), `/files/*/raw` (`*` as one segment when not last).
//!
//! The path is split on `/` and compared segment by segment, case-sensitively. A query
//! (`?…`) or fragment (`#…`) on the request path is ignored. A trailing `*` matches the rest of
//! the path, including nothing: `/api/*` matches `/api`, `/api/` and `/api/v1/x`.

use std::fmt;

/// Most parameters one pattern may declare (the [`PathParams`] inline capacity).
pub const MAX_PARAMS: usize = 8;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Seg {
    Lit(Box<str>),
    Param(Box<str>),
    Any,
}

/// A compiled path pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathPattern {
    text: Box<str>,
    segs: Box<[Seg]>,
    rest: bool,
}

/// Why a path pattern was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PathPatternError {
    /// Does not start with `/`.
    #[error("path pattern `{0}` must start with `/`")]
    NoLeadingSlash(String),
    /// Whitespace, control characters, `?` or `#`.
    #[error("path pattern `{0}` has whitespace, a control character, `?` or `#`")]
    BadChar(String),
    /// `*` inside a segment (`/a*`) rather than as a whole segment.
    #[error("in `{0}`, `*` must be a whole segment (`/a/*`), not part of one")]
    PartialWildcard(String),
    /// `:` with no name, or a name with characters other than letters, digits and `_`.
    #[error("in `{0}`, a parameter must be `:name` with letters, digits or `_`")]
    BadParam(String),
    /// The same parameter name twice.
    #[error("in `{0}`, parameter `{1}` appears twice")]
    DuplicateParam(String, String),
    /// More than [`MAX_PARAMS`] parameters.
    #[error("`{0}` has more than 8 parameters")]
    TooManyParams(String),
}

impl PathPattern {
    /// Parses a pattern.
    pub fn parse(s: &str) -> Result<Self, PathPatternError> {
        if !s.starts_with('/') {
            return Err(PathPatternError::NoLeadingSlash(s.to_owned()));
        }
        if s.chars().any(|c| c.is_whitespace() || c.is_control() || c == '?' || c == '#') {
            return Err(PathPatternError::BadChar(s.to_owned()));
        }
        let parts: Vec<&str> = s[1..].split('/').collect();
        let mut segs = Vec::with_capacity(parts.len());
        let mut rest = false;
        let mut names: Vec<&str> = Vec::new();
        for (i, p) in parts.iter().enumerate() {
            let last = i + 1 == parts.len();
            if *p == "*" {
                if last {
                    rest = true;
                } else {
                    segs.push(Seg::Any);
                }
            } else if p.contains('*') {
                return Err(PathPatternError::PartialWildcard(s.to_owned()));
            } else if let Some(name) = p.strip_prefix(':') {
                if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                    return Err(PathPatternError::BadParam(s.to_owned()));
                }
                if names.contains(&name) {
                    return Err(PathPatternError::DuplicateParam(s.to_owned(), name.to_owned()));
                }
                names.push(name);
                if names.len() > MAX_PARAMS {
                    return Err(PathPatternError::TooManyParams(s.to_owned()));
                }
                segs.push(Seg::Param(name.into()));
            } else {
                segs.push(Seg::Lit((*p).into()));
            }
        }
        Ok(Self { text: s.into(), segs: segs.into_boxed_slice(), rest })
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The first segment when it is literal (`/api/*`: `api`; `/`: the empty segment).
    pub(crate) fn first_literal(&self) -> Option<&str> {
        match self.segs.first() {
            Some(Seg::Lit(l)) => Some(l),
            _ => None,
        }
    }

    /// Specificity: (class, literal bytes). Class 3 = exact, 2 = parameters or single-segment
    /// wildcards but no trailing `*`, 1 = trailing `*`.
    pub(crate) fn specificity(&self) -> (u8, usize) {
        let lit: usize =
            self.segs.iter().map(|s| if let Seg::Lit(l) = s { l.len() + 1 } else { 0 }).sum();
        let class = if self.rest {
            1
        } else if self.segs.iter().all(|s| matches!(s, Seg::Lit(_))) {
            3
        } else {
            2
        };
        (class, lit)
    }

    /// Matches `path` (query and fragment ignored) and returns the parameters. No allocation.
    pub fn matches<'a>(&'a self, path: &'a str) -> Option<PathParams<'a>> {
        let path = path.split(['?', '#']).next().unwrap_or(path);
        let body = path.strip_prefix('/')?;
        let mut params = PathParams::default();
        let mut it = body.split('/');
        let mut consumed = 0usize; // bytes of `body` consumed, including separators
        for seg in self.segs.iter() {
            let part = it.next()?;
            match seg {
                Seg::Lit(l) if **l == *part => {}
                Seg::Lit(_) => return None,
                Seg::Param(name) => {
                    if part.is_empty() {
                        return None;
                    }
                    params.push(name, part);
                }
                Seg::Any => {
                    if part.is_empty() {
                        return None;
                    }
                }
            }
            consumed += part.len() + 1;
        }
        if self.rest {
            // `/api/*` on `/api` (nothing left), `/api/` or `/api/x/y`.
            params.remainder = Some(body.get(consumed.min(body.len())..).unwrap_or(""));
            let end = if consumed == 0 { 1 } else { 1 + (consumed - 1).min(body.len()) };
            params.matched = path.get(..end).unwrap_or(path);
            Some(params)
        } else if it.next().is_none() {
            params.matched = path;
            Some(params)
        } else {
            None
        }
    }
}

impl fmt::Display for PathPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// The first segment of a request path (query and fragment ignored), as compared with
/// [`PathPattern::first_literal`]; `None` when the path does not start with `/`.
pub(crate) fn first_segment(path: &str) -> Option<&str> {
    let path = path.split(['?', '#']).next().unwrap_or(path);
    let body = path.strip_prefix('/')?;
    body.split('/').next()
}

/// Parameters captured by a path match, stored inline (no allocation).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PathParams<'a> {
    items: [(&'a str, &'a str); MAX_PARAMS],
    len: usize,
    remainder: Option<&'a str>,
    matched: &'a str,
}

impl<'a> PathParams<'a> {
    fn push(&mut self, name: &'a str, value: &'a str) {
        if let Some(slot) = self.items.get_mut(self.len) {
            *slot = (name, value);
            self.len += 1;
        }
    }

    /// The value of parameter `name` (`/users/:id` on `/users/7`: `get("id") == Some("7")`).
    pub fn get(&self, name: &str) -> Option<&'a str> {
        self.iter().find(|(n, _)| *n == name).map(|(_, v)| v)
    }

    /// `(name, value)` pairs in pattern order.
    pub fn iter(&self) -> impl Iterator<Item = (&'a str, &'a str)> + '_ {
        self.items[..self.len].iter().copied()
    }

    /// Number of parameters.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// What a trailing `*` matched, without its leading `/` (`/api/*` on `/api/v1/x`: `v1/x`).
    /// `None` when the pattern has no trailing `*` or no path pattern matched.
    pub fn remainder(&self) -> Option<&'a str> {
        self.remainder
    }

    /// The part of the request path matched by the pattern before any trailing `*`
    /// (`/api/*` on `/api/v1/x`: `/api`); the whole path for patterns without `*`; empty when
    /// the route has no path pattern.
    pub fn matched(&self) -> &'a str {
        self.matched
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> PathPattern {
        PathPattern::parse(s).unwrap()
    }

    #[test]
    fn exact() {
        assert!(p("/api/users").matches("/api/users").is_some());
        assert!(p("/api/users").matches("/api/users?x=1").is_some());
        assert!(p("/api/users").matches("/api/users/").is_none());
        assert!(p("/api/users").matches("/api/users/1").is_none());
        assert!(p("/api/users").matches("/api").is_none());
        assert!(p("/").matches("/").is_some());
        assert!(p("/").matches("/x").is_none());
        assert!(p("/api").matches("api").is_none());
    }

    #[test]
    fn wildcard() {
        let pat = p("/api/*");
        for (path, rem, matched) in
            [("/api", "", "/api"), ("/api/", "", "/api"), ("/api/v1/x", "v1/x", "/api")]
        {
            let m = pat.matches(path).unwrap_or_else(|| panic!("{path}"));
            assert_eq!(m.remainder(), Some(rem), "{path}");
            assert_eq!(m.matched(), matched, "{path}");
        }
        assert!(pat.matches("/apix").is_none());
        assert!(pat.matches("/other").is_none());
        let all = p("/*");
        assert_eq!(all.matches("/a/b").unwrap().remainder(), Some("a/b"));
        assert_eq!(all.matches("/").unwrap().remainder(), Some(""));
        let mid = p("/files/*/raw");
        assert!(mid.matches("/files/x/raw").is_some());
        assert!(mid.matches("/files//raw").is_none());
    }

    #[test]
    fn params() {
        let pat = p("/users/:id/posts/:post/*");
        let m = pat.matches("/users/42/posts/7/comments").unwrap();
        assert_eq!(m.get("id"), Some("42"));
        assert_eq!(m.get("post"), Some("7"));
        assert_eq!(m.get("nope"), None);
        assert_eq!(m.len(), 2);
        assert_eq!(m.remainder(), Some("comments"));
        assert!(p("/users/:id").matches("/users/").is_none());
        assert!(p("/users/:id").matches("/users/1/2").is_none());
    }

    #[test]
    fn errors() {
        assert!(matches!(PathPattern::parse("api"), Err(PathPatternError::NoLeadingSlash(_))));
        assert!(matches!(PathPattern::parse("/a b"), Err(PathPatternError::BadChar(_))));
        assert!(matches!(PathPattern::parse("/a*"), Err(PathPatternError::PartialWildcard(_))));
        assert!(matches!(PathPattern::parse("/:"), Err(PathPatternError::BadParam(_))));
        assert!(matches!(PathPattern::parse("/:a-b"), Err(PathPatternError::BadParam(_))));
        assert!(matches!(
            PathPattern::parse("/:a/:a"),
            Err(PathPatternError::DuplicateParam(_, _))
        ));
        assert!(matches!(
            PathPattern::parse("/:a/:b/:c/:d/:e/:f/:g/:h/:i"),
            Err(PathPatternError::TooManyParams(_))
        ));
    }
}
