//! The packaging check: every publishable crate is packaged and built from its `.crate` file
//! alone, all in one `cargo package` run so that the workspace's unpublished crates see each
//! other (cargo's multi-package packaging puts the fresh `.crate` files in a local overlay
//! registry, target/package-verify/package/tmp-registry). Then the contents of each `.crate` are checked;
//! for a release, `cargo publish --dry-run --no-verify` follows.

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::workspace::{Member, Workspace};

/// A `.crate` may hold at most this much that is not Rust source, a manifest, the lock file,
/// Markdown or the licence (test fixtures, snapshots, bench inputs, ...).
pub(crate) const DATA_CAP: u64 = 64 * 1024;
/// No single file in a `.crate` above this.
pub(crate) const FILE_CAP: u64 = 256 * 1024;
/// The compressed `.crate` file (crates.io takes up to 10 MiB).
pub(crate) const CRATE_CAP: u64 = 512 * 1024;
/// Path components that never belong in a package: fuzz projects and their corpora, build
/// output.
const FORBIDDEN_DIRS: &[&str] = &["fuzz", "corpus", "artifacts", "target"];

/// What follows the packaging.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// `cargo package` only: the CI check.
    Package,
    /// Then `cargo publish --dry-run --no-verify` of the same crates: cargo's pre-upload checks
    /// (the release). It packages into a scratch directory of its own, so the contents are
    /// checked on the `cargo package` output.
    PublishDryRun,
}

/// One packaged crate, as checked.
#[derive(Debug)]
pub(crate) struct Packaged {
    pub(crate) name: String,
    pub(crate) version: String,
    pub(crate) files: usize,
    pub(crate) unpacked: u64,
    pub(crate) compressed: u64,
    pub(crate) data: u64,
}

/// Packages and verifies `crates` (all publishable ones when empty) and checks each `.crate`.
pub(crate) fn check(ws: &Workspace, crates: &[&Member], mode: Mode) -> Result<Vec<Packaged>> {
    let all: Vec<&Member> = ws.publishable().collect();
    let crates = if crates.is_empty() { &all[..] } else { crates };
    check_sources(ws, crates)?;
    // A target directory of its own, emptied first. The verify builds see the workspace's
    // crates through cargo's overlay registry, and cargo never rebuilds a registry crate of the
    // same version: with a shared, warm target a verify build compiled against an older
    // packaging of a sibling crate (a method added since was "not found"). A `.crate` left
    // from an earlier run can not pass for this one either.
    let build = ws.target.join("package-verify");
    if build.exists() {
        std::fs::remove_dir_all(&build).with_context(|| format!("removing {}", build.display()))?;
    }
    clear_overlay_sources(crates)?;
    let target = build.join("package");
    let build_dir = build.to_string_lossy().into_owned();
    // --allow-dirty: CI and a release in progress package the working tree as it is.
    let mut args: Vec<&str> =
        vec!["package", "--locked", "--allow-dirty", "--target-dir", build_dir.as_str()];
    for m in crates {
        args.extend(["-p", m.name.as_str()]);
    }
    crate::sh("cargo", &args)?;
    let mut out = Vec::new();
    let mut errors = Vec::new();
    let licence = std::fs::read(ws.root.join("LICENSE")).context("reading LICENSE")?;
    for m in crates {
        let path = target.join(format!("{}-{}.crate", m.name, m.version));
        match inspect(&path, m, &licence) {
            Ok(p) => out.push(p),
            Err(e) => errors.push(format!("{}: {e:#}", m.name)),
        }
    }
    print!("{}", table(&out));
    if !errors.is_empty() {
        bail!("package contents:\n  {}", errors.join("\n  "));
    }
    if mode == Mode::PublishDryRun {
        // The packages were built above; this adds the registry's view (versions already
        // published are reported) without building them again.
        let mut args: Vec<&str> =
            vec!["publish", "--dry-run", "--no-verify", "--locked", "--allow-dirty"];
        for m in crates {
            args.extend(["-p", m.name.as_str()]);
        }
        crate::sh("cargo", &args)?;
    }
    Ok(out)
}

/// Removes cargo's unpacked copies of earlier packagings of `crates` from the overlay
/// registry (`$CARGO_HOME/registry/src/-HASH/NAME-VERSION`; an overlay registry has no name,
/// hence the leading `-`). Cargo unpacks a registry crate once per name and version and then
/// trusts the copy, so a verify build used the sources of the first packaging of a sibling
/// crate that has not changed its version since (a method added since was "not found").
fn clear_overlay_sources(crates: &[&Member]) -> Result<()> {
    let home = match std::env::var_os("CARGO_HOME") {
        Some(h) => std::path::PathBuf::from(h),
        None => match std::env::var_os("HOME") {
            Some(h) => Path::new(&h).join(".cargo"),
            None => return Ok(()),
        },
    };
    let Ok(registries) = std::fs::read_dir(home.join("registry").join("src")) else {
        return Ok(());
    };
    for reg in registries.flatten() {
        if !reg.file_name().to_string_lossy().starts_with('-') {
            continue;
        }
        for m in crates {
            let dir = reg.path().join(format!("{}-{}", m.name, m.version));
            if dir.exists() {
                std::fs::remove_dir_all(&dir)
                    .with_context(|| format!("removing {}", dir.display()))?;
            }
        }
    }
    Ok(())
}

/// What can be checked before packaging: the licence text matches the `license` field, and
/// the files every package must carry exist.
fn check_sources(ws: &Workspace, crates: &[&Member]) -> Result<()> {
    let licence = std::fs::read_to_string(ws.root.join("LICENSE"))
        .context("the workspace has no LICENSE file")?;
    let mut errors = Vec::new();
    for m in crates {
        let dir = ws.root.join(&m.dir);
        match m.license.as_deref() {
            Some("Apache-2.0") => {
                if !(licence.contains("Apache License")
                    && licence.contains("Version 2.0, January 2004"))
                {
                    errors.push(format!(
                        "{}: license = Apache-2.0 but LICENSE is not the Apache License 2.0 text",
                        m.name
                    ));
                }
            }
            other => errors.push(format!(
                "{}: license = {other:?}; the workspace ships the Apache-2.0 LICENSE only",
                m.name
            )),
        }
        if !dir.join("LICENSE").exists() {
            errors.push(format!(
                "{}: no LICENSE in {} (add it: `ln -s ../../LICENSE {}/LICENSE`)",
                m.name,
                m.dir.display(),
                m.dir.display()
            ));
        }
        let readme = m.readme.as_deref().unwrap_or("README.md");
        if !dir.join(readme).exists() {
            errors.push(format!("{}: no {readme} in {}", m.name, m.dir.display()));
        }
        if !dir.join("CHANGELOG.md").exists() {
            errors.push(format!("{}: no CHANGELOG.md in {}", m.name, m.dir.display()));
        }
        errors.extend(manifest_problems(m, &dir).into_iter().map(|e| format!("{}: {e}", m.name)));
    }
    if !errors.is_empty() {
        bail!("before packaging:\n  {}", errors.join("\n  "));
    }
    Ok(())
}

/// What DESIGN.md asks of every publishable crate's manifest and library root.
fn manifest_problems(m: &Member, dir: &Path) -> Vec<String> {
    let mut e = Vec::new();
    for (field, value) in [("description", &m.description), ("repository", &m.repository)] {
        if value.as_deref().is_none_or(|v| v.trim().is_empty()) {
            e.push(format!("no `{field}` in Cargo.toml"));
        }
    }
    if m.keywords.is_empty() {
        e.push("no `keywords` in Cargo.toml".into());
    }
    match std::fs::read_to_string(dir.join("Cargo.toml")) {
        Ok(text) if crate::bump::package_version(&text).is_none() => e.push(
            "[package] has no `version = \"...\"` of its own (crates are versioned one by one, \
             not with version.workspace)"
                .into(),
        ),
        Ok(_) => {}
        Err(err) => e.push(format!("Cargo.toml: {err}")),
    }
    // The README's examples are doc tests of the library.
    if let Some(lib) = &m.lib_src {
        let readme = m.readme.as_deref().unwrap_or("README.md");
        let include = format!("include_str!(\"../{readme}\")");
        match std::fs::read_to_string(lib) {
            Ok(src) if src.contains(&include) => {}
            Ok(_) => e.push(format!(
                "{} does not run the README's examples as doc tests: add \
                 `#![cfg_attr(doctest, doc = {include})]` after its `//!` docs",
                lib.display()
            )),
            Err(err) => e.push(format!("{}: {err}", lib.display())),
        }
    }
    e
}

/// Reads the `.crate` (a gzipped tar) with `tar` and applies the rules.
fn inspect(path: &Path, m: &Member, licence: &[u8]) -> Result<Packaged> {
    let compressed = std::fs::metadata(path)
        .with_context(|| format!("{} was not written", path.display()))?
        .len();
    let out = Command::new("tar")
        .arg("-tvzf")
        .arg(path)
        .output()
        .context("could not start `tar` (needed to list the .crate files)")?;
    if !out.status.success() {
        bail!("tar -tvzf {}: {}", path.display(), String::from_utf8_lossy(&out.stderr));
    }
    let listing = String::from_utf8_lossy(&out.stdout);
    let prefix = format!("{}-{}/", m.name, m.version);
    let entries = parse_listing(&listing, &prefix)?;
    let readme = m.readme.clone().unwrap_or_else(|| "README.md".into());
    let report = rules(&entries, &readme, compressed);
    if !report.errors.is_empty() {
        bail!("{}", report.errors.join("; "));
    }
    // The licence file is the workspace's LICENSE (cargo follows the crate's symlink).
    let packed = Command::new("tar")
        .arg("-xzOf")
        .arg(path)
        .arg(format!("{prefix}LICENSE"))
        .output()
        .context("tar")?;
    if packed.stdout != licence {
        bail!("its LICENSE differs from the workspace's LICENSE");
    }
    Ok(Packaged {
        name: m.name.clone(),
        version: m.version.clone(),
        files: entries.len(),
        unpacked: entries.iter().map(|e| e.1).sum(),
        compressed,
        data: report.data,
    })
}

/// (path inside the package, size) from `tar -tvzf` lines such as
/// `-rw-r--r-- 0/0    2374 1970-01-01 00:00 name-0.1.0/Cargo.toml`.
fn parse_listing(listing: &str, prefix: &str) -> Result<Vec<(String, u64)>> {
    let mut entries = Vec::new();
    for line in listing.lines().filter(|l| !l.trim().is_empty()) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() < 6 {
            bail!("unexpected tar listing line `{line}`");
        }
        if fields[0].starts_with('d') {
            continue;
        }
        let size: u64 = fields[2].parse().with_context(|| format!("tar listing `{line}`"))?;
        let path = fields[5..].join(" ");
        let Some(rel) = path.strip_prefix(prefix) else {
            bail!("`{path}` is outside {prefix}");
        };
        entries.push((rel.to_owned(), size));
    }
    Ok(entries)
}

#[derive(Debug, Default)]
struct Report {
    data: u64,
    errors: Vec<String>,
}

/// The content rules, on the listing.
fn rules(entries: &[(String, u64)], readme: &str, compressed: u64) -> Report {
    let mut r = Report::default();
    let has = |name: &str| entries.iter().any(|(p, _)| p == name);
    for required in [readme, "LICENSE", "CHANGELOG.md", "Cargo.toml"] {
        if !has(required) {
            r.errors.push(format!("{required} is missing"));
        }
    }
    for (path, size) in entries {
        if let Some(dir) = path.split('/').find(|c| FORBIDDEN_DIRS.contains(c)) {
            r.errors.push(format!("{path} is inside a `{dir}` directory"));
        }
        if *size > FILE_CAP {
            r.errors.push(format!("{path} is {} (cap {})", kib(*size), kib(FILE_CAP)));
        }
        if !is_source(path) {
            r.data += size;
        }
    }
    if r.data > DATA_CAP {
        let mut big: Vec<&(String, u64)> = entries.iter().filter(|(p, _)| !is_source(p)).collect();
        big.sort_by_key(|b| std::cmp::Reverse(b.1));
        let top: Vec<String> =
            big.iter().take(5).map(|(p, s)| format!("{p} {}", kib(*s))).collect();
        r.errors.push(format!(
            "{} of files that are not source, manifest or docs (cap {}): {}; exclude them with \
             `exclude = [...]` in [package]",
            kib(r.data),
            kib(DATA_CAP),
            top.join(", ")
        ));
    }
    if compressed > CRATE_CAP {
        r.errors.push(format!("the .crate is {} (cap {})", kib(compressed), kib(CRATE_CAP)));
    }
    r
}

/// Rust source, manifests, the lock file, Markdown, the licence and cargo's own metadata, and
/// web source compiled into a crate (the admin dashboard's HTML, CSS, JavaScript and icon).
fn is_source(path: &str) -> bool {
    let file = path.rsplit('/').next().unwrap_or(path);
    path.ends_with(".rs")
        || path.ends_with(".md")
        || path.ends_with(".html")
        || path.ends_with(".css")
        || path.ends_with(".js")
        || path.ends_with(".svg")
        || file.starts_with("LICENSE")
        || matches!(file, "Cargo.toml" | "Cargo.toml.orig" | "Cargo.lock" | ".cargo_vcs_info.json")
}

fn kib(bytes: u64) -> String {
    format!("{:.1} KiB", bytes as f64 / 1024.0)
}

/// The sizes table printed after packaging.
pub(crate) fn table(rows: &[Packaged]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<32} {:>8} {:>6} {:>12} {:>12} {:>12}",
        "crate", "version", "files", "unpacked", ".crate", "data"
    );
    for p in rows {
        let _ = writeln!(
            s,
            "{:<32} {:>8} {:>6} {:>12} {:>12} {:>12}",
            p.name,
            p.version,
            p.files,
            kib(p.unpacked),
            kib(p.compressed),
            kib(p.data)
        );
    }
    let _ = writeln!(
        s,
        "caps: data (not source/manifest/docs) {} per crate, {} per file, {} per .crate",
        kib(DATA_CAP),
        kib(FILE_CAP),
        kib(CRATE_CAP)
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    const LISTING: &str = "\
-rw-r--r-- 0/0             106 1970-01-01 00:00 a-0.1.0/.cargo_vcs_info.json
-rw-r--r-- 0/0             994 1970-01-01 00:00 a-0.1.0/CHANGELOG.md
-rw-r--r-- 0/0           20169 1970-01-01 00:00 a-0.1.0/Cargo.lock
-rw-r--r-- 0/0            2212 1970-01-01 00:00 a-0.1.0/Cargo.toml
-rw-r--r-- 0/0             815 1970-01-01 00:00 a-0.1.0/Cargo.toml.orig
-rw-r--r-- 0/0           11357 1970-01-01 00:00 a-0.1.0/LICENSE
-rw-r--r-- 0/0            1542 1970-01-01 00:00 a-0.1.0/README.md
-rw-r--r-- 0/0            9054 1970-01-01 00:00 a-0.1.0/src/lib.rs
-rw-r--r-- 0/0           12566 1970-01-01 00:00 a-0.1.0/tests/snapshots/x.snap
-rw-r--r-- 0/0             300 1970-01-01 00:00 a-0.1.0/tests/data/with space.bin
";

    #[test]
    fn a_good_package_passes_and_its_data_is_counted() {
        let e = parse_listing(LISTING, "a-0.1.0/").unwrap();
        assert_eq!(e.len(), 10);
        assert_eq!(e[9], ("tests/data/with space.bin".to_owned(), 300));
        let r = rules(&e, "README.md", 40_000);
        assert!(r.errors.is_empty(), "{:?}", r.errors);
        assert_eq!(r.data, 12_566 + 300);
    }

    #[test]
    fn missing_files_forbidden_dirs_and_caps_are_reported() {
        let mut e = parse_listing(LISTING, "a-0.1.0/").unwrap();
        e.retain(|(p, _)| p != "LICENSE" && p != "CHANGELOG.md");
        e.push(("fuzz/corpus/parse/seed1".into(), 10));
        e.push(("benches/data/big.bin".into(), 300 * 1024));
        let r = rules(&e, "README.md", 600 * 1024);
        let all = r.errors.join("\n");
        assert!(all.contains("LICENSE is missing"), "{all}");
        assert!(all.contains("CHANGELOG.md is missing"), "{all}");
        assert!(all.contains("fuzz/corpus/parse/seed1 is inside a `fuzz` directory"), "{all}");
        assert!(all.contains("benches/data/big.bin is 300.0 KiB (cap 256.0 KiB)"), "{all}");
        assert!(all.contains("(cap 64.0 KiB): benches/data/big.bin 300.0 KiB"), "{all}");
        assert!(all.contains("the .crate is 600.0 KiB (cap 512.0 KiB)"), "{all}");
    }

    #[test]
    fn a_listing_outside_the_package_is_an_error() {
        assert!(
            parse_listing("-rw-r--r-- 0/0 1 1970-01-01 00:00 b-0.1.0/x\n", "a-0.1.0/").is_err()
        );
        assert!(parse_listing("garbage\n", "a-0.1.0/").is_err());
    }

    #[test]
    fn manifest_and_readme_doc_test_rules() {
        let dir = std::env::temp_dir().join(format!("xtask-manifest-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("src")).unwrap();
        std::fs::write(
            dir.join("Cargo.toml"),
            "[package]\nname = \"a\"\nversion.workspace = true\n",
        )
        .unwrap();
        std::fs::write(dir.join("src/lib.rs"), "//! a\n").unwrap();
        let mut m = Member {
            name: "a".into(),
            version: "0.1.0".into(),
            dir: "crates/a".into(),
            publishable: true,
            license: Some("Apache-2.0".into()),
            readme: Some("README.md".into()),
            deps: vec![],
            has_bin: false,
            lib_src: Some(dir.join("src/lib.rs")),
            description: None,
            repository: Some("https://x".into()),
            keywords: vec![],
        };
        let all = manifest_problems(&m, &dir).join("\n");
        assert!(all.contains("no `description`"), "{all}");
        assert!(all.contains("no `keywords`"), "{all}");
        assert!(all.contains("no `version = \"...\"` of its own"), "{all}");
        assert!(all.contains("does not run the README's examples as doc tests"), "{all}");
        std::fs::write(dir.join("Cargo.toml"), "[package]\nname = \"a\"\nversion = \"0.1.0\"\n")
            .unwrap();
        std::fs::write(
            dir.join("src/lib.rs"),
            "//! a\n#![cfg_attr(doctest, doc = include_str!(\"../README.md\"))]\n",
        )
        .unwrap();
        m.description = Some("a".into());
        m.keywords = vec!["k".into()];
        assert_eq!(manifest_problems(&m, &dir), Vec::<String>::new());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
