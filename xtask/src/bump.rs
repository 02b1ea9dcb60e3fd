//! `cargo xtask release --version X`: which crates get a new version, and the edits.
//!
//! The rules:
//! - The last release is the newest git tag `vA.B.C` (none before the first release).
//! - The binary (`smartproxy`) gets version X, which must be above its version at that tag.
//! - A library crate is *changed* when its directory differs from the tag (uncommitted edits
//!   count), or when there is no tag yet. A changed crate must say what changed: the top
//!   section of its CHANGELOG.md is `## Unreleased` or `## 0.2.0 (unreleased)` with entries.
//! - Its new version: the one its pending CHANGELOG heading names, else the version already in
//!   its Cargo.toml if someone raised it since the tag, else its version at the tag with the
//!   patch number raised (`--bump NAME=minor|major` raises that part instead). A crate that is
//!   new since the tag is released at its current version.
//! - A crate whose dependency (of ours) moves to an incompatible version (0.1 -> 0.2, 1.x ->
//!   2.0) must be released again too: if unchanged, it gets a patch bump and a CHANGELOG entry
//!   naming the dependency.
//! - Edits: `version` in each crate's `[package]`, the `version` requirement of every path
//!   dependency on it (root `[workspace.dependencies]` and member manifests), the pending
//!   CHANGELOG heading becomes `## NEW (YYYY-MM-DD)`, and Cargo.lock is refreshed offline.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::workspace::Workspace;

/// A semver version (`1.2.3` or `1.2.3-rc.1`; build metadata is not used here).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Version {
    pub(crate) major: u64,
    pub(crate) minor: u64,
    pub(crate) patch: u64,
    pub(crate) pre: String,
}

impl Version {
    pub(crate) fn parse(s: &str) -> Result<Self> {
        let s = s.trim().trim_start_matches('v');
        let (core, pre) = match s.split_once('-') {
            Some((c, p)) => (c, p.to_owned()),
            None => (s, String::new()),
        };
        let parts: Vec<&str> = core.split('.').collect();
        if parts.len() != 3 {
            bail!("`{s}` is not a version (MAJOR.MINOR.PATCH)");
        }
        let num = |p: &str| -> Result<u64> {
            if p.is_empty() || (p.len() > 1 && p.starts_with('0')) {
                bail!("`{s}` is not a version (MAJOR.MINOR.PATCH)");
            }
            p.parse().with_context(|| format!("`{s}` is not a version (MAJOR.MINOR.PATCH)"))
        };
        Ok(Self { major: num(parts[0])?, minor: num(parts[1])?, patch: num(parts[2])?, pre })
    }

    pub(crate) fn bumped(&self, level: Level) -> Self {
        match level {
            Level::Major => Self { major: self.major + 1, minor: 0, patch: 0, pre: String::new() },
            Level::Minor => {
                Self { major: self.major, minor: self.minor + 1, patch: 0, pre: String::new() }
            }
            Level::Patch => Self {
                major: self.major,
                minor: self.minor,
                patch: self.patch + 1,
                pre: String::new(),
            },
        }
    }

    /// Cargo's `^` compatibility: the leftmost non-zero part is the same.
    pub(crate) fn compatible(&self, other: &Self) -> bool {
        if self.major != other.major {
            return false;
        }
        if self.major > 0 {
            return true;
        }
        if self.minor != other.minor {
            return false;
        }
        self.minor > 0 || self.patch == other.patch
    }
}

impl Ord for Version {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.major, self.minor, self.patch)
            .cmp(&(other.major, other.minor, other.patch))
            .then_with(|| match (self.pre.is_empty(), other.pre.is_empty()) {
                (true, true) => Ordering::Equal,
                (true, false) => Ordering::Greater,
                (false, true) => Ordering::Less,
                (false, false) => self.pre.cmp(&other.pre),
            })
    }
}

impl PartialOrd for Version {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)?;
        if !self.pre.is_empty() {
            write!(f, "-{}", self.pre)?;
        }
        Ok(())
    }
}

/// Which part of a version `--bump NAME=LEVEL` raises.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Level {
    Major,
    Minor,
    Patch,
}

impl Level {
    pub(crate) fn parse(s: &str) -> Result<Self> {
        match s {
            "major" => Ok(Self::Major),
            "minor" => Ok(Self::Minor),
            "patch" => Ok(Self::Patch),
            _ => bail!("`{s}`: the level is major, minor or patch"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// CHANGELOG.md

/// The top section of a CHANGELOG when it is not released yet.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Pending {
    /// Line index of the `## ...` heading.
    pub(crate) line: usize,
    /// The version the heading names (`## 0.2.0 (unreleased)`), if any.
    pub(crate) version: Option<Version>,
    /// The section has at least one non-blank line.
    pub(crate) has_entries: bool,
}

/// The first `## ` heading, if it says "unreleased".
pub(crate) fn pending(changelog: &str) -> Option<Pending> {
    let lines: Vec<&str> = changelog.lines().collect();
    let line = lines.iter().position(|l| l.starts_with("## "))?;
    let heading = lines[line];
    if !heading.to_ascii_lowercase().contains("unreleased") {
        return None;
    }
    let version = heading[3..].split_whitespace().next().and_then(|t| Version::parse(t).ok());
    let has_entries = lines[line + 1..]
        .iter()
        .take_while(|l| !l.starts_with("## "))
        .any(|l| !l.trim().is_empty());
    Some(Pending { line, version, has_entries })
}

/// The heading of the top section (`## 0.1.0 (2026-01-02)`), if any.
pub(crate) fn top_heading(changelog: &str) -> Option<&str> {
    changelog.lines().find(|l| l.starts_with("## "))
}

/// The text of the section for `version` (its heading's first word), without the heading.
pub(crate) fn section<'a>(changelog: &'a str, version: &str) -> Option<&'a str> {
    let mut start = None;
    let mut offset = 0;
    for line in changelog.split_inclusive('\n') {
        if let Some(heading) = line.strip_prefix("## ") {
            if let Some(s) = start {
                return Some(changelog[s..offset].trim_matches('\n'));
            }
            if heading.split_whitespace().next() == Some(version) {
                start = Some(offset + line.len());
            }
        }
        offset += line.len();
    }
    start.map(|s| changelog[s..].trim_matches('\n'))
}

/// Replaces the pending heading with `## VERSION (DATE)`.
fn release_heading(changelog: &str, p: &Pending, version: &Version, date: &str) -> String {
    let mut out = String::with_capacity(changelog.len() + 16);
    for (i, line) in changelog.split_inclusive('\n').enumerate() {
        if i == p.line {
            out.push_str(&format!("## {version} ({date})\n"));
        } else {
            out.push_str(line);
        }
    }
    out
}

/// Adds a section `## VERSION (DATE)` with one entry above the first section.
fn add_section(changelog: &str, version: &Version, date: &str, entry: &str) -> String {
    let new = format!("## {version} ({date})\n\n- {entry}\n\n");
    match changelog.find("\n## ") {
        Some(i) => format!("{}{new}{}", &changelog[..=i], &changelog[i + 1..]),
        None if changelog.starts_with("## ") => format!("{new}{changelog}"),
        None => format!("{}\n\n{new}", changelog.trim_end()),
    }
}

// ---------------------------------------------------------------------------------------------
// Cargo.toml, edited line by line (no TOML library in xtask; the layouts are ours).

/// The `version = "..."` of the `[package]` table.
pub(crate) fn package_version(manifest: &str) -> Option<String> {
    let mut in_package = false;
    for line in manifest.lines() {
        let t = line.trim();
        if t.starts_with('[') {
            in_package = t == "[package]";
        } else if in_package && let Some(rest) = t.strip_prefix("version") {
            let rest = rest.trim_start().strip_prefix('=')?.trim();
            return Some(rest.trim_matches('"').to_owned());
        }
    }
    None
}

/// Sets `version` in `[package]` from `old` to `new`.
fn set_package_version(manifest: &str, old: &str, new: &str) -> Result<String> {
    let mut in_package = false;
    let mut done = false;
    let mut out = String::with_capacity(manifest.len());
    for line in manifest.split_inclusive('\n') {
        let t = line.trim();
        if t.starts_with('[') {
            in_package = t == "[package]";
        } else if in_package && !done && t.starts_with("version") {
            if t.starts_with("version.workspace") {
                bail!("the crate inherits its version from the workspace; it must have its own");
            }
            let want = format!("version = \"{old}\"");
            if t != want {
                bail!("expected `{want}` in [package], found `{t}`");
            }
            out.push_str(&line.replace(&want, &format!("version = \"{new}\"")));
            done = true;
            continue;
        }
        out.push_str(line);
    }
    if !done {
        bail!("no `version` in [package]");
    }
    Ok(out)
}

/// Sets the version requirement of every path dependency on `dep` (`dep = { path = "...",
/// version = "..." }`) to `new`. Returns the text and how many lines changed.
fn set_dep_requirement(manifest: &str, dep: &str, new: &str) -> (String, usize) {
    let mut n = 0;
    let mut out = String::with_capacity(manifest.len());
    for line in manifest.split_inclusive('\n') {
        let t = line.trim_start();
        let is_dep = t
            .strip_prefix(dep)
            .is_some_and(|r| r.trim_start().starts_with('=') && r.contains("path"));
        if is_dep && let Some(i) = line.find("version = \"") {
            let start = i + "version = \"".len();
            if let Some(len) = line[start..].find('"') {
                out.push_str(&line[..start]);
                out.push_str(new);
                out.push_str(&line[start + len..]);
                n += 1;
                continue;
            }
        }
        out.push_str(line);
    }
    (out, n)
}

// ---------------------------------------------------------------------------------------------
// The plan

/// What the last release left: the tag, the crates changed since, their versions then.
#[derive(Debug, Default)]
pub(crate) struct History {
    pub(crate) tag: Option<String>,
    /// Names of the crates whose directory differs from the tag.
    pub(crate) changed: BTreeSet<String>,
    /// Versions at the tag (crates that did not exist then are absent).
    pub(crate) released: BTreeMap<String, Version>,
}

impl History {
    /// Reads git: the newest `v*` tag reachable from HEAD, `git diff --quiet TAG -- DIR` per
    /// crate, and each crate's Cargo.toml at the tag.
    pub(crate) fn from_git(ws: &Workspace) -> Result<Self> {
        let root = &ws.root;
        let tag = git(root, &["describe", "--tags", "--abbrev=0", "--match", "v[0-9]*"])
            .ok()
            .map(|t| t.trim().to_owned())
            .filter(|t| !t.is_empty());
        let mut h = Self { tag: tag.clone(), ..Self::default() };
        let Some(tag) = tag else {
            return Ok(h);
        };
        for m in ws.publishable() {
            let dir = m.dir.to_string_lossy().into_owned();
            let st = Command::new("git")
                .args(["diff", "--quiet", &tag, "--", &dir])
                .current_dir(root)
                .status()
                .context("could not start git")?;
            match st.code() {
                Some(0) => {}
                Some(1) => {
                    h.changed.insert(m.name.clone());
                }
                _ => bail!("`git diff --quiet {tag} -- {dir}` failed ({st})"),
            }
            if let Ok(manifest) = git(root, &["show", &format!("{tag}:{dir}/Cargo.toml")])
                && let Some(v) = package_version(&manifest)
            {
                h.released.insert(m.name.clone(), Version::parse(&v)?);
            }
        }
        Ok(h)
    }
}

fn git(root: &Path, args: &[&str]) -> Result<String> {
    let out = Command::new("git").args(args).current_dir(root).output().context("git")?;
    if !out.status.success() {
        bail!("git {} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// One crate of the release.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Bump {
    pub(crate) name: String,
    pub(crate) from: Version,
    pub(crate) to: Version,
    /// Why it is in the release (printed with the plan).
    pub(crate) why: String,
    /// The CHANGELOG gets a new section with this entry (dependency-only releases).
    pub(crate) entry: Option<String>,
}

/// What the plan needs from each publishable crate.
#[derive(Debug, Clone)]
pub(crate) struct CrateState {
    pub(crate) name: String,
    pub(crate) version: Version,
    pub(crate) changelog: String,
    /// Workspace crates it depends on (not dev).
    pub(crate) deps: Vec<String>,
}

/// Works out the release: the binary at `binary_version`, every changed crate, and the
/// crates that must follow an incompatible dependency. Fails with every problem found.
pub(crate) fn plan(
    crates: &[CrateState],
    binary: &str,
    binary_version: &Version,
    history: &History,
    levels: &BTreeMap<String, Level>,
) -> Result<Vec<Bump>> {
    let mut errors = Vec::new();
    for name in levels.keys() {
        if !crates.iter().any(|c| &c.name == name) {
            errors.push(format!("--bump {name}: no publishable crate of that name"));
        }
    }
    let since = history.tag.as_deref().map_or("the first release".to_owned(), |t| t.to_owned());
    let mut bumps: BTreeMap<String, Bump> = BTreeMap::new();
    for c in crates {
        let pending = pending(&c.changelog);
        let released = history.released.get(&c.name);
        let changed = history.tag.is_none() || history.changed.contains(&c.name);
        if c.name == binary {
            if let Some(r) = released
                && binary_version <= r
            {
                errors.push(format!(
                    "{}: --version {binary_version} is not above {r}, the version at {since}",
                    c.name
                ));
            }
            if *binary_version < c.version {
                errors.push(format!(
                    "{}: --version {binary_version} is below its Cargo.toml version {}",
                    c.name, c.version
                ));
            }
            match &pending {
                Some(p) if p.has_entries => {}
                _ => errors.push(format!(
                    "{}: CHANGELOG.md has no `## Unreleased` section with entries: say what the \
                     release brings",
                    c.name
                )),
            }
            bumps.insert(
                c.name.clone(),
                Bump {
                    name: c.name.clone(),
                    from: c.version.clone(),
                    to: binary_version.clone(),
                    why: "the binary: --version".into(),
                    entry: None,
                },
            );
            continue;
        }
        // An empty `## Unreleased` placeholder on an unchanged crate is fine.
        if !changed && !pending.as_ref().is_some_and(|p| p.has_entries) {
            continue;
        }
        let Some(p) = pending.filter(|p| p.has_entries) else {
            errors.push(format!(
                "{}: changed since {since} but CHANGELOG.md has no `## Unreleased` section with \
                 entries",
                c.name
            ));
            continue;
        };
        let to = match (&p.version, released) {
            (Some(v), _) => v.clone(),
            (None, None) => c.version.clone(),
            (None, Some(r)) if c.version > *r => c.version.clone(),
            (None, Some(r)) => r.bumped(levels.get(&c.name).copied().unwrap_or(Level::Patch)),
        };
        if to < c.version {
            errors.push(format!(
                "{}: the CHANGELOG names {to}, below its Cargo.toml version {}",
                c.name, c.version
            ));
        }
        if let Some(r) = released
            && to <= *r
        {
            errors.push(format!("{}: {to} is not above {r}, the version at {since}", c.name));
        }
        let why = if history.tag.is_none() {
            "first release".to_owned()
        } else if changed {
            format!("changed since {since}")
        } else {
            "unreleased CHANGELOG entries".to_owned()
        };
        bumps.insert(
            c.name.clone(),
            Bump { name: c.name.clone(), from: c.version.clone(), to, why, entry: None },
        );
    }
    // Dependents of crates that move to an incompatible version, until nothing changes.
    loop {
        let mut added = false;
        for c in crates {
            if bumps.contains_key(&c.name) {
                continue;
            }
            let breaking = c.deps.iter().find(|d| {
                bumps.get(*d).is_some_and(|b| {
                    let base = history.released.get(*d).unwrap_or(&b.from);
                    !b.to.compatible(base)
                })
            });
            if let Some(dep) = breaking {
                let b = &bumps[dep];
                let base = history.released.get(&c.name).unwrap_or(&c.version);
                let to = base.bumped(levels.get(&c.name).copied().unwrap_or(Level::Patch));
                let to = if to < c.version { c.version.clone() } else { to };
                let entry = format!("Depends on `{dep}` {}.", b.to);
                let why = format!("{dep} moves to the incompatible {}", b.to);
                bumps.insert(
                    c.name.clone(),
                    Bump {
                        name: c.name.clone(),
                        from: c.version.clone(),
                        to,
                        why,
                        entry: Some(entry),
                    },
                );
                added = true;
            }
        }
        if !added {
            break;
        }
    }
    if !errors.is_empty() {
        bail!("the release cannot be planned:\n  {}", errors.join("\n  "));
    }
    // In the workspace's order.
    Ok(crates.iter().filter_map(|c| bumps.remove(&c.name)).collect())
}

/// Writes the plan: manifests, dependency requirements, CHANGELOG headings; then refreshes
/// Cargo.lock without the network.
pub(crate) fn apply(ws: &Workspace, bumps: &[Bump], date: &str) -> Result<()> {
    let root = &ws.root;
    let mut manifests: Vec<std::path::PathBuf> = vec![root.join("Cargo.toml")];
    manifests.extend(ws.members.iter().map(|m| root.join(&m.dir).join("Cargo.toml")));
    for b in bumps {
        let m = ws.member(&b.name).with_context(|| format!("no member {}", b.name))?;
        let dir = root.join(&m.dir);
        let path = dir.join("Cargo.toml");
        let text = read(&path)?;
        let from = b.from.to_string();
        let to = b.to.to_string();
        if from != to {
            let text = set_package_version(&text, &from, &to)
                .with_context(|| path.display().to_string())?;
            write(&path, &text)?;
        }
        for path in &manifests {
            let text = read(path)?;
            let (new, n) = set_dep_requirement(&text, &b.name, &to);
            if n > 0 && new != text {
                write(path, &new)?;
            }
        }
        let path = dir.join("CHANGELOG.md");
        let text = read(&path)?;
        let new = match (&b.entry, pending(&text)) {
            (None, Some(p)) => release_heading(&text, &p, &b.to, date),
            (Some(entry), _) => add_section(&text, &b.to, date, entry),
            (None, None) => bail!("{}: no pending CHANGELOG section", path.display()),
        };
        write(&path, &new)?;
    }
    // `cargo metadata` rewrites the lock file's entries for the members' new versions; offline,
    // so that nothing else in it moves.
    let st = Command::new("cargo")
        .args(["metadata", "--format-version", "1", "--offline"])
        .current_dir(root)
        .stdout(std::process::Stdio::null())
        .status()
        .context("cargo metadata")?;
    if !st.success() {
        bail!("`cargo metadata --offline` could not update Cargo.lock");
    }
    Ok(())
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

fn write(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// Today's date (UTC) as YYYY-MM-DD, from the system clock.
pub(crate) fn today() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    civil_date(secs / 86_400)
}

/// Days since 1970-01-01 to a proleptic Gregorian date (H. Hinnant's `civil_from_days`).
fn civil_date(days: u64) -> String {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Version {
        Version::parse(s).unwrap()
    }

    #[test]
    fn versions_parse_order_bump_and_compatibility() {
        assert_eq!(v("1.2.3").to_string(), "1.2.3");
        assert_eq!(v("v0.1.0-rc.1").to_string(), "0.1.0-rc.1");
        assert!(Version::parse("1.2").is_err());
        assert!(Version::parse("1.02.3").is_err());
        assert!(Version::parse("a.b.c").is_err());
        assert!(v("0.1.0-rc.1") < v("0.1.0"));
        assert!(v("0.1.10") > v("0.1.9"));
        assert_eq!(v("0.1.3").bumped(Level::Patch), v("0.1.4"));
        assert_eq!(v("0.1.3").bumped(Level::Minor), v("0.2.0"));
        assert_eq!(v("1.4.3").bumped(Level::Major), v("2.0.0"));
        assert!(v("0.1.4").compatible(&v("0.1.0")));
        assert!(!v("0.2.0").compatible(&v("0.1.9")));
        assert!(v("1.9.0").compatible(&v("1.0.0")));
        assert!(!v("0.0.2").compatible(&v("0.0.1")));
    }

    #[test]
    fn dates() {
        assert_eq!(civil_date(0), "1970-01-01");
        assert_eq!(civil_date(11_016), "2000-02-29");
        assert_eq!(civil_date(20_454), "2026-01-01");
        assert_eq!(civil_date(20_513), "2026-03-01");
    }

    const LOG: &str = "# Changelog\n\n## 0.2.0 (unreleased)\n\n- New thing.\n\n## 0.1.0 (2025-01-01)\n\n- First.\n";

    #[test]
    fn changelog_sections() {
        let p = pending(LOG).unwrap();
        assert_eq!(p, Pending { line: 2, version: Some(v("0.2.0")), has_entries: true });
        assert!(
            !pending("# C\n\n## Unreleased\n\n## 0.1.0 (2025-01-01)\n- x\n").unwrap().has_entries
        );
        assert_eq!(pending("# C\n\n## Unreleased\n- x\n").unwrap().version, None);
        assert!(pending("# C\n\n## 0.1.0 (2025-01-01)\n- x\n").is_none());
        assert_eq!(section(LOG, "0.1.0"), Some("- First."));
        assert_eq!(section(LOG, "0.2.0"), Some("- New thing."));
        assert_eq!(section(LOG, "0.3.0"), None);
        let out = release_heading(LOG, &p, &v("0.2.0"), "2026-02-03");
        assert!(out.contains("\n## 0.2.0 (2026-02-03)\n\n- New thing.\n\n## 0.1.0"), "{out}");
        assert_eq!(top_heading(&out), Some("## 0.2.0 (2026-02-03)"));
        let out = add_section(
            "# Changelog\n\n## 0.1.0 (2025-01-01)\n\n- First.\n",
            &v("0.1.1"),
            "2026-02-03",
            "Depends on `a` 0.2.0.",
        );
        assert_eq!(
            out,
            "# Changelog\n\n## 0.1.1 (2026-02-03)\n\n- Depends on `a` 0.2.0.\n\n## 0.1.0 (2025-01-01)\n\n- First.\n"
        );
    }

    #[test]
    fn manifest_edits() {
        let m = "[package]\nname = \"a\"\nversion = \"0.1.0\"\n\n[dependencies]\nb = { path = \"../b\", version = \"0.1.0\" }\nbb = { version = \"0.1.0\" }\n\n[dev-dependencies]\nb = { path = \"../b\", version = \"0.1.0\", features = [\"x\"] }\n";
        assert_eq!(package_version(m).as_deref(), Some("0.1.0"));
        let out = set_package_version(m, "0.1.0", "0.1.1").unwrap();
        assert!(out.starts_with("[package]\nname = \"a\"\nversion = \"0.1.1\"\n"));
        assert!(out.contains("b = { path = \"../b\", version = \"0.1.0\" }"), "deps untouched");
        assert!(set_package_version(m, "0.2.0", "0.2.1").is_err(), "the old version must match");
        assert!(
            set_package_version("[package]\nversion.workspace = true\n", "0.1.0", "0.2.0").is_err()
        );
        let (out, n) = set_dep_requirement(m, "b", "0.2.0");
        assert_eq!(n, 2);
        assert!(out.contains("b = { path = \"../b\", version = \"0.2.0\" }"));
        assert!(out.contains("b = { path = \"../b\", version = \"0.2.0\", features = [\"x\"] }"));
        assert!(out.contains("bb = { version = \"0.1.0\" }"), "another crate with the prefix");
        assert!(out.contains("version = \"0.1.0\"\n\n[dependencies]"), "[package] untouched");
    }

    fn state(name: &str, version: &str, changelog: &str, deps: &[&str]) -> CrateState {
        CrateState {
            name: name.into(),
            version: v(version),
            changelog: changelog.into(),
            deps: deps.iter().map(|d| (*d).to_owned()).collect(),
        }
    }

    const RELEASED: &str = "# Changelog\n\n## 0.1.0 (2025-01-01)\n\n- First.\n";
    const UNRELEASED: &str =
        "# Changelog\n\n## Unreleased\n\n- Fix.\n\n## 0.1.0 (2025-01-01)\n\n- First.\n";

    fn history(changed: &[&str]) -> History {
        History {
            tag: Some("v0.1.0".into()),
            changed: changed.iter().map(|c| (*c).to_owned()).collect(),
            released: ["a", "b", "c", "smartproxy"]
                .iter()
                .map(|n| ((*n).to_owned(), v("0.1.0")))
                .collect(),
        }
    }

    #[test]
    fn first_release_takes_every_crate_at_its_version() {
        let log = "# Changelog\n\n## 0.1.0 (unreleased)\n\n- First.\n";
        let crates = [state("a", "0.1.0", log, &[]), state("smartproxy", "0.1.0", log, &["a"])];
        let plan = plan(&crates, "smartproxy", &v("0.1.0"), &History::default(), &BTreeMap::new())
            .unwrap();
        assert_eq!(plan.len(), 2);
        assert!(plan.iter().all(|b| b.from == v("0.1.0") && b.to == v("0.1.0")));
        assert_eq!(plan[0].why, "first release");
    }

    #[test]
    fn changed_crates_are_bumped_and_unchanged_ones_kept() {
        let crates = [
            state("a", "0.1.0", UNRELEASED, &[]),
            state("b", "0.1.0", RELEASED, &["a"]),
            state("c", "0.1.0", "# Changelog\n\n## 0.1.3 (unreleased)\n\n- X.\n", &[]),
            state("smartproxy", "0.1.0", UNRELEASED, &["a", "b"]),
        ];
        let plan =
            plan(&crates, "smartproxy", &v("0.2.0"), &history(&["a", "c"]), &BTreeMap::new())
                .unwrap();
        let got: Vec<(&str, String)> =
            plan.iter().map(|b| (b.name.as_str(), b.to.to_string())).collect();
        // a: patch (compatible, so b is not released again); c: the version its CHANGELOG names.
        assert_eq!(
            got,
            [("a", "0.1.1".into()), ("c", "0.1.3".into()), ("smartproxy", "0.2.0".into())]
        );
    }

    #[test]
    fn an_incompatible_bump_releases_the_dependents_with_an_entry() {
        let crates = [
            state("a", "0.1.0", UNRELEASED, &[]),
            state("b", "0.1.0", RELEASED, &["a"]),
            state("c", "0.1.0", RELEASED, &["b"]),
            state("smartproxy", "0.1.0", UNRELEASED, &["c"]),
        ];
        let levels = BTreeMap::from([("a".to_owned(), Level::Minor)]);
        let plan = plan(&crates, "smartproxy", &v("0.1.1"), &history(&["a"]), &levels).unwrap();
        let got: Vec<(&str, String)> =
            plan.iter().map(|b| (b.name.as_str(), b.to.to_string())).collect();
        assert_eq!(
            got,
            [("a", "0.2.0".into()), ("b", "0.1.1".into()), ("smartproxy", "0.1.1".into())],
            "b follows a; c only needs b's compatible 0.1.1"
        );
        assert_eq!(plan[1].entry.as_deref(), Some("Depends on `a` 0.2.0."));
    }

    #[test]
    fn refusals_name_every_problem() {
        let crates =
            [state("a", "0.1.0", RELEASED, &[]), state("smartproxy", "0.1.0", RELEASED, &["a"])];
        let levels = BTreeMap::from([("nope".to_owned(), Level::Minor)]);
        let err = plan(&crates, "smartproxy", &v("0.1.0"), &history(&["a"]), &levels)
            .unwrap_err()
            .to_string();
        assert!(err.contains("--bump nope: no publishable crate"), "{err}");
        assert!(err.contains("a: changed since v0.1.0 but CHANGELOG.md has no"), "{err}");
        assert!(err.contains("smartproxy: --version 0.1.0 is not above 0.1.0"), "{err}");
        assert!(err.contains("smartproxy: CHANGELOG.md has no `## Unreleased`"), "{err}");
    }

    /// Real git and cargo on a scratch workspace: tag, change a crate, plan, write.
    #[test]
    fn release_version_end_to_end_on_a_scratch_git_workspace() {
        let dir = std::env::temp_dir().join(format!(
            "xtask-bump-{}-{}",
            std::process::id(),
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
        ));
        let file = |rel: &str, text: &str| {
            let p = dir.join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        };
        let sh = |args: &[&str]| {
            let out = Command::new(args[0]).args(&args[1..]).current_dir(&dir).output().unwrap();
            assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        };
        file(
            "Cargo.toml",
            "[workspace]\nresolver = \"3\"\nmembers = [\"crates/*\"]\n\n[workspace.package]\n\
             edition = \"2024\"\nlicense = \"Apache-2.0\"\n\n[workspace.dependencies]\n\
             a = { path = \"crates/a\", version = \"0.1.0\" }\n\
             b = { path = \"crates/b\", version = \"0.1.0\" }\n",
        );
        for (name, deps, kind) in [
            ("a", "", "lib"),
            ("b", "a.workspace = true\n", "lib"),
            ("smartproxy", "b.workspace = true\n", "main"),
        ] {
            file(
                &format!("crates/{name}/Cargo.toml"),
                &format!(
                    "[package]\nname = \"{name}\"\nversion = \"0.1.0\"\nedition.workspace = true\n\
                     license.workspace = true\n\n[dependencies]\n{deps}"
                ),
            );
            let src = if kind == "lib" { "//! x\n" } else { "fn main() {}\n" };
            file(&format!("crates/{name}/src/{kind}.rs"), src);
            file(&format!("crates/{name}/CHANGELOG.md"), RELEASED);
        }
        sh(&["cargo", "metadata", "--offline", "--format-version", "1"]);
        sh(&["git", "init", "-q"]);
        sh(&["git", "add", "-A"]);
        sh(&[
            "git",
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@localhost",
            "-c",
            "commit.gpgsign=false",
            "commit",
            "-q",
            "-m",
            "first",
        ]);
        sh(&["git", "tag", "v0.1.0"]);
        // a changes incompatibly (uncommitted edits count); b does not; the binary says why.
        file("crates/a/src/lib.rs", "//! x\npub fn new_api() {}\n");
        file("crates/a/CHANGELOG.md", UNRELEASED);
        file("crates/smartproxy/CHANGELOG.md", UNRELEASED);

        let ws = Workspace::load(&dir).unwrap();
        let history = History::from_git(&ws).unwrap();
        assert_eq!(history.tag.as_deref(), Some("v0.1.0"));
        assert_eq!(history.changed, BTreeSet::from(["a".to_owned(), "smartproxy".to_owned()]));
        let states: Vec<CrateState> = ws
            .publish_order()
            .unwrap()
            .iter()
            .map(|m| CrateState {
                name: m.name.clone(),
                version: v(&m.version),
                changelog: std::fs::read_to_string(dir.join(&m.dir).join("CHANGELOG.md")).unwrap(),
                deps: m.deps.clone(),
            })
            .collect();
        let levels = BTreeMap::from([("a".to_owned(), Level::Minor)]);
        let bumps = plan(&states, "smartproxy", &v("0.2.0"), &history, &levels).unwrap();
        let got: Vec<(&str, String)> =
            bumps.iter().map(|b| (b.name.as_str(), b.to.to_string())).collect();
        assert_eq!(
            got,
            [("a", "0.2.0".into()), ("b", "0.1.1".into()), ("smartproxy", "0.2.0".into())]
        );
        apply(&ws, &bumps, "2026-01-02").unwrap();

        let read = |rel: &str| std::fs::read_to_string(dir.join(rel)).unwrap();
        let ws = Workspace::load(&dir).unwrap();
        let versions: Vec<(&str, &str)> =
            ws.members.iter().map(|m| (m.name.as_str(), m.version.as_str())).collect();
        assert_eq!(versions, [("a", "0.2.0"), ("b", "0.1.1"), ("smartproxy", "0.2.0")]);
        let root = read("Cargo.toml");
        assert!(root.contains("a = { path = \"crates/a\", version = \"0.2.0\" }"), "{root}");
        assert!(root.contains("b = { path = \"crates/b\", version = \"0.1.1\" }"), "{root}");
        assert_eq!(top_heading(&read("crates/a/CHANGELOG.md")), Some("## 0.2.0 (2026-01-02)"));
        let b_log = read("crates/b/CHANGELOG.md");
        assert_eq!(section(&b_log, "0.1.1"), Some("- Depends on `a` 0.2.0."), "{b_log}");
        assert_eq!(
            top_heading(&read("crates/smartproxy/CHANGELOG.md")),
            Some("## 0.2.0 (2026-01-02)")
        );
        let lock = read("Cargo.lock");
        assert!(lock.contains("name = \"a\"\nversion = \"0.2.0\""), "{lock}");
        assert!(lock.contains("name = \"b\"\nversion = \"0.1.1\""), "{lock}");
        // A second plan for the same version is refused: nothing is above it any more... the
        // binary's CHANGELOG has no pending section left.
        let states: Vec<CrateState> = ws
            .publish_order()
            .unwrap()
            .iter()
            .map(|m| CrateState {
                name: m.name.clone(),
                version: v(&m.version),
                changelog: std::fs::read_to_string(dir.join(&m.dir).join("CHANGELOG.md")).unwrap(),
                deps: m.deps.clone(),
            })
            .collect();
        let err = plan(&states, "smartproxy", &v("0.2.0"), &history, &BTreeMap::new()).unwrap_err();
        assert!(err.to_string().contains("smartproxy: CHANGELOG.md has no"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
