//! Maps a key path (`routes[2].action.targets[0].port`) to its line in the file.

use std::collections::HashMap;

use toml_edit::{Item, Value};

use super::{ConfigError, Format};

/// Line numbers of every key path of a document.
#[derive(Debug, Default)]
pub(crate) struct Locator {
    lines: HashMap<String, usize>,
}

impl Locator {
    /// Parses the text for its structure only; a syntax error comes back with its line.
    pub(crate) fn new(text: &str, format: Format) -> Result<Self, ConfigError> {
        let starts = LineStarts::new(text);
        let mut lines = HashMap::new();
        match format {
            Format::Toml => {
                let doc = toml_edit::Document::parse(text).map_err(|e| ConfigError {
                    path: String::new(),
                    line: e.span().map(|s| starts.line(s.start)),
                    message: format!("TOML syntax: {}", e.message().trim_end()),
                })?;
                walk_item(doc.as_item(), String::new(), &starts, &mut lines);
            }
            Format::Json => {
                if let Err(e) = serde_json::from_str::<serde_json::Value>(text) {
                    return Err(ConfigError {
                        path: String::new(),
                        line: Some(e.line()),
                        message: format!("JSON syntax: {e}"),
                    });
                }
                let mut scan =
                    JsonScan { s: text.as_bytes(), i: 0, starts: &starts, out: &mut lines };
                scan.value(String::new());
            }
        }
        Ok(Self { lines })
    }

    /// The line of `path`, or of its closest parent that is in the file.
    pub(crate) fn line_of(&self, path: &str) -> Option<usize> {
        let mut p = path;
        loop {
            if let Some(l) = self.lines.get(p) {
                return Some(*l);
            }
            let cut = p.rfind(['.', '['])?;
            p = &p[..cut];
        }
    }
}

struct LineStarts(Vec<usize>);

impl LineStarts {
    fn new(text: &str) -> Self {
        let mut v = vec![0];
        v.extend(text.bytes().enumerate().filter(|(_, b)| *b == b'\n').map(|(i, _)| i + 1));
        Self(v)
    }

    /// 1-based line of a byte offset.
    fn line(&self, offset: usize) -> usize {
        self.0.partition_point(|&s| s <= offset)
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() { key.to_owned() } else { format!("{path}.{key}") }
}

fn walk_item(item: &Item, path: String, starts: &LineStarts, out: &mut HashMap<String, usize>) {
    match item {
        Item::Table(t) => {
            if let Some(s) = t.span() {
                out.entry(path.clone()).or_insert(starts.line(s.start));
            }
            for (k, v) in t.iter() {
                let p = join(&path, k);
                if let Some(s) = t.key(k).and_then(|k| k.span()) {
                    out.insert(p.clone(), starts.line(s.start));
                }
                walk_item(v, p, starts, out);
            }
        }
        Item::ArrayOfTables(a) => {
            for (i, t) in a.iter().enumerate() {
                let p = format!("{path}[{i}]");
                if let Some(s) = t.span() {
                    out.insert(p.clone(), starts.line(s.start));
                }
                walk_item(&Item::Table(t.clone()), p, starts, out);
            }
        }
        Item::Value(v) => walk_value(v, path, starts, out),
        Item::None => {}
    }
}

fn walk_value(v: &Value, path: String, starts: &LineStarts, out: &mut HashMap<String, usize>) {
    if let Some(s) = v.span() {
        out.entry(path.clone()).or_insert(starts.line(s.start));
    }
    match v {
        Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                walk_value(x, format!("{path}[{i}]"), starts, out);
            }
        }
        Value::InlineTable(t) => {
            for (k, x) in t.iter() {
                let p = join(&path, k);
                if let Some(s) = t.key(k).and_then(|k| k.span()) {
                    out.insert(p.clone(), starts.line(s.start));
                }
                walk_value(x, p, starts, out);
            }
        }
        _ => {}
    }
}

/// A scanner over JSON that is known to be valid, recording where each key starts.
struct JsonScan<'a> {
    s: &'a [u8],
    i: usize,
    starts: &'a LineStarts,
    out: &'a mut HashMap<String, usize>,
}

impl JsonScan<'_> {
    fn ws(&mut self) {
        while self.i < self.s.len() && self.s[self.i].is_ascii_whitespace() {
            self.i += 1;
        }
    }

    fn peek(&self) -> u8 {
        self.s.get(self.i).copied().unwrap_or(0)
    }

    fn string(&mut self) -> String {
        let start = self.i + 1;
        self.i += 1;
        while self.i < self.s.len() {
            match self.s[self.i] {
                b'\\' => self.i += 2,
                b'"' => break,
                _ => self.i += 1,
            }
        }
        let raw = &self.s[start.min(self.s.len())..self.i.min(self.s.len())];
        self.i += 1;
        // Keys with escapes are rare in a config; keep them as written.
        String::from_utf8_lossy(raw).into_owned()
    }

    fn value(&mut self, path: String) {
        self.ws();
        self.out.entry(path.clone()).or_insert(self.starts.line(self.i));
        match self.peek() {
            b'{' => {
                self.i += 1;
                loop {
                    self.ws();
                    match self.peek() {
                        b'"' => {
                            let line = self.starts.line(self.i);
                            let key = self.string();
                            let p = join(&path, &key);
                            self.out.insert(p.clone(), line);
                            self.ws();
                            self.i += 1; // ':'
                            self.value(p);
                        }
                        b',' => self.i += 1,
                        _ => {
                            self.i += 1; // '}' (or end)
                            return;
                        }
                    }
                }
            }
            b'[' => {
                self.i += 1;
                let mut n = 0;
                loop {
                    self.ws();
                    match self.peek() {
                        b']' | 0 => {
                            self.i += 1;
                            return;
                        }
                        b',' => self.i += 1,
                        _ => {
                            self.value(format!("{path}[{n}]"));
                            n += 1;
                        }
                    }
                }
            }
            b'"' => {
                self.string();
            }
            _ => {
                while self.i < self.s.len() && !matches!(self.s[self.i], b',' | b'}' | b']') {
                    self.i += 1;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_paths() {
        let text = "workers = 2\n\n[[routes]]\nname = \"a\"\nmatch = { ports = [80] }\n\n[[routes]]\nname = \"b\"\naction = { type = \"forward\", targets = [{ host = \"x\",\n port = 0 }] }\n";
        let l = Locator::new(text, Format::Toml).unwrap();
        assert_eq!(l.line_of("workers"), Some(1));
        assert_eq!(l.line_of("routes[0]"), Some(3));
        assert_eq!(l.line_of("routes[0].match.ports[0]"), Some(5));
        assert_eq!(l.line_of("routes[1].action.targets[0].port"), Some(10));
        assert_eq!(l.line_of("routes[1].action.targets[0].host"), Some(9));
        assert_eq!(l.line_of("routes[1].nothing.here"), Some(7));
    }

    #[test]
    fn json_paths() {
        let text = "{\n \"workers\": 2,\n \"routes\": [\n  {\"name\": \"a\",\n   \"match\": {\"ports\": [80, 81]}}\n ]\n}";
        let l = Locator::new(text, Format::Json).unwrap();
        assert_eq!(l.line_of("workers"), Some(2));
        assert_eq!(l.line_of("routes[0].name"), Some(4));
        assert_eq!(l.line_of("routes[0].match.ports[1]"), Some(5));
    }

    #[test]
    fn syntax_error_has_line() {
        let e = Locator::new("a = 1\nb = = 2\n", Format::Toml).unwrap_err();
        assert_eq!(e.line, Some(2));
        let e = Locator::new("{\n\"a\": 1,\n}", Format::Json).unwrap_err();
        assert_eq!(e.line, Some(3));
    }
}
