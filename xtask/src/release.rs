//! `cargo xtask release [--version X] [--bump NAME=LEVEL].. [--plan]`
//!
//! 1. With `--version X`: plan the versions (see `bump.rs`), print the plan, write it.
//! 2. `cargo package` of the crates to publish, in one run (the workspace's crates see each
//!    other through cargo's local overlay), each built from its `.crate` alone; the contents of
//!    every `.crate` (README, LICENSE, CHANGELOG, size caps); `cargo publish --dry-run
//!    --no-verify` of the same crates.
//! 3. The release binary: built with profile-guided optimisation (`pgo.rs`; `--no-pgo`: a
//!    plain `cargo build --release`), checked to carry no debug info and to report the version.
//! 4. `target/dist/`: `smartproxy-X-TARGET/` (binary, man page, completions, LICENSE, README,
//!    CHANGELOG.md with this version's section), its `.tar.gz`, and `SHA256SUMS`.
//!
//! Nothing is uploaded, committed or tagged: the last lines say what to run for that.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::bump::{self, CrateState, History, Level, Version};
use crate::package::{self, Mode};
use crate::steps::Steps;
use crate::workspace::{Member, Workspace};

#[derive(Debug, Default)]
struct Options {
    version: Option<Version>,
    levels: BTreeMap<String, Level>,
    plan_only: bool,
    no_pgo: bool,
}

impl Options {
    fn parse(args: &[String]) -> Result<Self> {
        let mut o = Self::default();
        let mut it = args.iter();
        while let Some(a) = it.next() {
            match a.as_str() {
                "--version" => {
                    let v = it.next().context("--version needs a version (e.g. 0.2.0)")?;
                    o.version = Some(Version::parse(v)?);
                }
                "--bump" => {
                    let b = it.next().context("--bump needs NAME=major|minor|patch")?;
                    let (name, level) =
                        b.split_once('=').context("--bump needs NAME=major|minor|patch")?;
                    o.levels.insert(name.to_owned(), Level::parse(level)?);
                }
                "--plan" => o.plan_only = true,
                "--no-pgo" => o.no_pgo = true,
                other => bail!("release: unknown argument `{other}` (see `cargo xtask help`)"),
            }
        }
        if o.version.is_none() && (o.plan_only || !o.levels.is_empty()) {
            bail!("--plan and --bump go with --version X");
        }
        Ok(o)
    }
}

pub(crate) fn release(args: &[String]) -> Result<()> {
    let opts = Options::parse(args)?;
    let root = std::env::current_dir().context("current directory")?;
    let mut steps = Steps::default();
    let r = run(&root, &opts, &mut steps);
    println!("\nxtask release: steps\n{}", steps.summary());
    r
}

fn run(root: &Path, opts: &Options, steps: &mut Steps) -> Result<()> {
    let mut ws = Workspace::load(root)?;
    let binary = ws.binary()?.name.clone();
    let mut publish: Vec<String> = ws.publishable().map(|m| m.name.clone()).collect();
    let date = bump::today();
    if let Some(version) = &opts.version {
        let plan = steps.run("plan the versions", || {
            let history = History::from_git(&ws)?;
            let states = crate_states(&ws)?;
            let plan = bump::plan(&states, &binary, version, &history, &opts.levels)?;
            println!(
                "last release: {}",
                history.tag.as_deref().unwrap_or("none (every crate is released)")
            );
            for b in &plan {
                println!("  {:<32} {} -> {}  ({})", b.name, b.from, b.to, b.why);
            }
            Ok(plan)
        })?;
        if opts.plan_only {
            return Ok(());
        }
        steps.run("write versions, requirements, CHANGELOG headings, Cargo.lock", || {
            bump::apply(&ws, &plan, &date)
        })?;
        ws = Workspace::load(root)?;
        publish = plan.iter().map(|b| b.name.clone()).collect();
        // Each released CHANGELOG now starts with its version.
        for name in &publish {
            let m = ws.member(name).context("member")?;
            let log = std::fs::read_to_string(root.join(&m.dir).join("CHANGELOG.md"))?;
            let want = format!("## {} (", m.version);
            if !bump::top_heading(&log).is_some_and(|h| h.starts_with(&want)) {
                bail!("{name}: CHANGELOG.md does not start with `{want}...)` after the bump");
            }
        }
    } else {
        println!("no --version: checking the current versions (a release candidate)");
        for m in ws.publishable() {
            let log =
                std::fs::read_to_string(root.join(&m.dir).join("CHANGELOG.md")).unwrap_or_default();
            let state = bump::top_heading(&log).unwrap_or("(no section)");
            println!("  {:<32} {:<8} CHANGELOG: {state}", m.name, m.version);
        }
    }
    let members: Vec<&Member> =
        publish.iter().filter_map(|n| ws.member(n)).filter(|m| m.publishable).collect();
    let packaged = steps.run("package + build each .crate, publish --dry-run", || {
        package::check(&ws, &members, Mode::PublishDryRun)
    })?;
    let what = if opts.no_pgo { "release binary" } else { "release binary (PGO)" };
    let bin = steps.run(what, || release_binary(&ws, !opts.no_pgo))?;
    let dist = steps.run("artifacts in target/dist", || artifacts(&ws, &bin))?;
    println!("\nreleased crates (.crate files in target/package-verify/package):");
    print!("{}", package::table(&packaged));
    println!("\nartifacts:");
    for f in &dist.files {
        let size = std::fs::metadata(f).map(|m| m.len()).unwrap_or(0);
        println!("  {:<72} {:>10} bytes", f.display(), size);
    }
    println!("\n{}", dist.sums.trim_end());
    let version = &ws.binary()?.version;
    println!("\nnext (not done by xtask):");
    if opts.version.is_some() {
        println!("  git commit -am 'release smartproxy {version}' && git tag v{version}");
    }
    println!(
        "  cargo publish {}    # cargo orders them by dependency; needs a crates.io token",
        members.iter().map(|m| format!("-p {}", m.name)).collect::<Vec<_>>().join(" ")
    );
    println!("  upload {} and SHA256SUMS", dist.tarball.display());
    Ok(())
}

fn crate_states(ws: &Workspace) -> Result<Vec<CrateState>> {
    let mut out = Vec::new();
    for m in ws.publish_order()? {
        let path = ws.root.join(&m.dir).join("CHANGELOG.md");
        out.push(CrateState {
            name: m.name.clone(),
            version: Version::parse(&m.version)?,
            changelog: std::fs::read_to_string(&path)
                .with_context(|| format!("reading {}", path.display()))?,
            deps: m.deps.clone(),
        });
    }
    Ok(out)
}

/// Builds the release binary (profile-guided with `pgo`); checks it has no debug info and
/// reports its version.
fn release_binary(ws: &Workspace, pgo: bool) -> Result<PathBuf> {
    let m = ws.binary()?;
    let bin = if pgo {
        crate::pgo::build()?
    } else {
        crate::sh("cargo", &["build", "--release", "--locked", "-p", &m.name])?;
        ws.target.join("release").join(&m.name)
    };
    let out = Command::new("readelf")
        .args(["-S", "--wide"])
        .arg(&bin)
        .output()
        .context("could not start `readelf` (Debian package binutils)")?;
    if !out.status.success() {
        bail!("readelf -S {}: {}", bin.display(), String::from_utf8_lossy(&out.stderr));
    }
    let sections = String::from_utf8_lossy(&out.stdout);
    let debug: Vec<&str> = sections
        .split_whitespace()
        .filter(|w| w.starts_with(".debug_") || w.starts_with(".zdebug_"))
        .collect();
    if !debug.is_empty() {
        bail!(
            "{} carries debug info ({}): [profile.release] must keep `debug = false` and \
             `strip = \"debuginfo\"`",
            bin.display(),
            debug.join(", ")
        );
    }
    let out = Command::new(&bin).arg("--version").output().context("running the binary")?;
    let said = String::from_utf8_lossy(&out.stdout);
    if said.trim() != format!("{} {}", m.name, m.version) {
        bail!(
            "`{} --version` says `{}`, expected `{} {}`",
            bin.display(),
            said.trim(),
            m.name,
            m.version
        );
    }
    let size = std::fs::metadata(&bin)?.len();
    println!("{}: {size} bytes ({:.1} MiB), no debug info", bin.display(), size as f64 / 1048576.0);
    Ok(bin)
}

#[derive(Debug)]
struct Dist {
    files: Vec<PathBuf>,
    tarball: PathBuf,
    sums: String,
}

/// target/dist/NAME-VERSION-TARGET/{smartproxy, smartproxy.1, completions/, LICENSE,
/// README.md, CHANGELOG.md}, NAME-VERSION-TARGET.tar.gz, SHA256SUMS.
fn artifacts(ws: &Workspace, bin: &Path) -> Result<Dist> {
    let m = ws.binary()?;
    let host = host_triple()?;
    let name = format!("{}-{}-{host}", m.name, m.version);
    let dist = ws.target.join("dist");
    let dir = dist.join(&name);
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    std::fs::create_dir_all(dir.join("completions"))?;
    let mut files = Vec::new();
    let target_bin = dir.join(&m.name);
    std::fs::copy(bin, &target_bin).context("copying the binary")?;
    files.push(target_bin.clone());
    let generated: [(&[&str], PathBuf); 4] = [
        (&["man"], dir.join("smartproxy.1")),
        (&["completions", "bash"], dir.join("completions/smartproxy.bash")),
        (&["completions", "zsh"], dir.join("completions/_smartproxy")),
        (&["completions", "fish"], dir.join("completions/smartproxy.fish")),
    ];
    for (args, path) in generated {
        let out = Command::new(&target_bin).args(args).output().context("running the binary")?;
        if !out.status.success() || out.stdout.is_empty() {
            bail!(
                "`smartproxy {}` failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::fs::write(&path, &out.stdout)?;
        files.push(path);
    }
    for (from, to) in [("LICENSE", "LICENSE"), ("README.md", "README.md")] {
        std::fs::copy(ws.root.join(from), dir.join(to))
            .with_context(|| format!("copying {from}"))?;
        files.push(dir.join(to));
    }
    let notes = release_notes(ws)?;
    std::fs::write(dir.join("CHANGELOG.md"), &notes)?;
    files.push(dir.join("CHANGELOG.md"));
    println!("{notes}");

    // A tarball with fixed owners, order and times (the last commit's), gzip without a name
    // or time stamp.
    let mtime = Command::new("git")
        .args(["log", "-1", "--format=%ct"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .filter(|t| !t.is_empty())
        .unwrap_or_else(|| "0".into());
    let tar = format!("{name}.tar");
    let d = dist.to_string_lossy().into_owned();
    crate::sh(
        "tar",
        &[
            "--sort=name",
            "--owner=0",
            "--group=0",
            "--numeric-owner",
            &format!("--mtime=@{mtime}"),
            "-C",
            &d,
            "-cf",
            &format!("{d}/{tar}"),
            &name,
        ],
    )?;
    crate::sh("gzip", &["-n", "-9", "-f", &format!("{d}/{tar}")])?;
    let tarball = dist.join(format!("{tar}.gz"));
    files.push(tarball.clone());

    let bin_rel = format!("{name}/{}", m.name);
    let tar_rel = format!("{tar}.gz");
    let out = Command::new("sha256sum")
        .args([&tar_rel, &bin_rel])
        .current_dir(&dist)
        .output()
        .context("could not start `sha256sum`")?;
    if !out.status.success() {
        bail!("sha256sum: {}", String::from_utf8_lossy(&out.stderr));
    }
    let sums = String::from_utf8_lossy(&out.stdout).into_owned();
    std::fs::write(dist.join("SHA256SUMS"), &sums)?;
    let check = Command::new("sha256sum")
        .args(["--check", "--quiet", "SHA256SUMS"])
        .current_dir(&dist)
        .status()
        .context("sha256sum --check")?;
    if !check.success() {
        bail!("sha256sum --check SHA256SUMS failed in {}", dist.display());
    }
    files.push(dist.join("SHA256SUMS"));
    Ok(Dist { files, tarball, sums })
}

/// The binary's CHANGELOG section for its version (or its pending section), then the crates
/// with their versions.
fn release_notes(ws: &Workspace) -> Result<String> {
    let m = ws.binary()?;
    let log = std::fs::read_to_string(ws.root.join(&m.dir).join("CHANGELOG.md"))?;
    let section = match bump::pending(&log) {
        Some(p) if p.version.is_none() => {
            // `## Unreleased`: the top section.
            let heading = bump::top_heading(&log).unwrap_or_default();
            let word = heading[3..].split_whitespace().next().unwrap_or_default().to_owned();
            bump::section(&log, &word).map(str::to_owned)
        }
        _ => bump::section(&log, &m.version).map(str::to_owned),
    }
    .with_context(|| {
        format!("{}/CHANGELOG.md has no section for {}", m.dir.display(), m.version)
    })?;
    let heading = bump::top_heading(&log).unwrap_or_default().trim_start_matches("## ");
    let mut notes = format!("# smartproxy {heading}\n\n{section}\n\n## Crates\n\n");
    for c in ws.publish_order()? {
        notes.push_str(&format!("- {} {}\n", c.name, c.version));
    }
    Ok(notes)
}

pub(crate) fn host_triple() -> Result<String> {
    let out = Command::new("rustc").arg("-vV").output().context("rustc -vV")?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: ").map(str::to_owned))
        .context("rustc -vV printed no host")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn options() {
        let o =
            Options::parse(&args(&["--version", "0.2.0", "--bump", "a=minor", "--plan"])).unwrap();
        assert_eq!(o.version, Some(Version::parse("0.2.0").unwrap()));
        assert_eq!(o.levels.get("a"), Some(&Level::Minor));
        assert!(o.plan_only);
        assert!(!o.no_pgo);
        assert!(Options::parse(&args(&["--no-pgo"])).unwrap().no_pgo);
        assert!(Options::parse(&args(&["--plan"])).is_err(), "--plan needs --version");
        assert!(Options::parse(&args(&["--version", "x"])).is_err());
        assert!(Options::parse(&args(&["--version", "0.2.0", "--bump", "a=huge"])).is_err());
        assert!(Options::parse(&args(&["--frobnicate"])).is_err());
    }
}
