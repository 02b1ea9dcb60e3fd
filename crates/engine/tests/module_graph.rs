//! The engine's modules import each other one way (the redesign's rule): no import circle.
//! A module is a file of `src/` (`pipeline/route.rs` is `pipeline::route`); an import is any
//! `crate::a` or `crate::a::b` path outside comments, counted at the deepest module it names.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

fn modules(dir: &Path, prefix: &str, out: &mut BTreeMap<String, String>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
    entries.sort();
    for p in entries {
        let stem = p.file_stem().unwrap().to_string_lossy().into_owned();
        if p.is_dir() {
            modules(&p, &format!("{prefix}{stem}::"), out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            let name = if stem == "mod" {
                prefix.trim_end_matches("::").to_owned()
            } else {
                format!("{prefix}{stem}")
            };
            let code: String = std::fs::read_to_string(&p)
                .unwrap()
                .lines()
                .filter(|l| !l.trim_start().starts_with("//"))
                .map(|l| format!("{l}\n"))
                .collect();
            out.insert(name, code);
        }
    }
}

/// The modules named by `crate::` paths in `code`, resolved against `names`.
fn imports(code: &str, names: &BTreeSet<String>) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (i, _) in code.match_indices("crate::") {
        let path: String = code[i + 7..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == ':')
            .collect();
        let parts: Vec<&str> = path.split("::").filter(|p| !p.is_empty()).collect();
        if parts.len() >= 2 && names.contains(&format!("{}::{}", parts[0], parts[1])) {
            out.insert(format!("{}::{}", parts[0], parts[1]));
        } else if let Some(first) = parts.first().filter(|f| names.contains(**f)) {
            out.insert((*first).to_owned());
        }
    }
    out
}

#[test]
fn engine_modules_import_each_other_without_a_circle() {
    let mut mods = BTreeMap::new();
    modules(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"), "", &mut mods);
    let names: BTreeSet<String> = mods.keys().cloned().collect();
    assert!(names.contains("pipeline::route") && names.contains("engine"), "{names:?}");
    let edges: BTreeMap<&str, BTreeSet<String>> = mods
        .iter()
        .map(|(n, code)| {
            let mut deps = imports(code, &names);
            deps.remove(n);
            (n.as_str(), deps)
        })
        .collect();
    // Depth-first search for a back edge; the first circle found is reported whole.
    fn visit<'a>(
        n: &'a str,
        edges: &'a BTreeMap<&'a str, BTreeSet<String>>,
        path: &mut Vec<&'a str>,
        done: &mut BTreeSet<&'a str>,
    ) -> Option<Vec<String>> {
        if let Some(i) = path.iter().position(|p| *p == n) {
            let mut circle: Vec<String> = path[i..].iter().map(|s| (*s).to_owned()).collect();
            circle.push(n.to_owned());
            return Some(circle);
        }
        if done.contains(n) {
            return None;
        }
        path.push(n);
        for d in edges.get(n).into_iter().flatten() {
            if let Some((k, _)) = edges.get_key_value(d.as_str())
                && let Some(c) = visit(k, edges, path, done)
            {
                return Some(c);
            }
        }
        path.pop();
        done.insert(n);
        None
    }
    let mut done = BTreeSet::new();
    for n in edges.keys() {
        if let Some(c) = visit(n, &edges, &mut Vec::new(), &mut done) {
            panic!("import circle among the engine's modules: {}", c.join(" -> "));
        }
    }
}
