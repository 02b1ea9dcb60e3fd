//! Disk space around `cargo xtask ci`: what is free before it builds, what `target/` holds
//! after, and a plain "the disk is full" when a step failed for want of space (a compiler
//! reports it deep inside a build script's output otherwise).

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};

/// Below this, `cargo xtask ci` does not start: a fresh run (empty `target/`) writes about
/// [`FRESH_RUN_BYTES`], and a run on a warm `target/` far less; with less than this free, even
/// a warm run is likely to die half-way with a compiler's "No space left on device".
pub(crate) const MIN_FREE_BYTES: u64 = 3 << 30;

/// What a fresh `cargo xtask ci` leaves in `target/` (measured on 2026-12-03 with the dev
/// profile's line tables only: see the workspace Cargo.toml).
pub(crate) const FRESH_RUN_BYTES: u64 = 10 << 30;

/// Bytes available to an unprivileged writer on the filesystem holding `dir` (`df -Pk`).
pub(crate) fn free_bytes(dir: &Path) -> Result<u64> {
    let out = Command::new("df").arg("-Pk").arg(dir).output().context("could not run `df`")?;
    if !out.status.success() {
        bail!("`df -Pk {}` failed ({})", dir.display(), out.status);
    }
    parse_df(&String::from_utf8_lossy(&out.stdout))
        .with_context(|| format!("unexpected output of `df -Pk {}`", dir.display()))
}

/// The "Available" column (KiB) of `df -Pk`'s one data line, in bytes.
fn parse_df(out: &str) -> Result<u64> {
    let line = out.lines().nth(1).context("no data line")?;
    let avail = line.split_whitespace().nth(3).context("no Available column")?;
    let kib: u64 = avail.parse().with_context(|| format!("Available is `{avail}`"))?;
    Ok(kib.saturating_mul(1024))
}

/// What `dir` holds on disk (`du -sk`); 0 when it does not exist.
pub(crate) fn used_bytes(dir: &Path) -> u64 {
    if !dir.exists() {
        return 0;
    }
    Command::new("du")
        .arg("-sk")
        .arg(dir)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout).split_whitespace().next()?.parse::<u64>().ok()
        })
        .map_or(0, |kib| kib.saturating_mul(1024))
}

/// `12.3 GiB`, `512 MiB`.
pub(crate) fn human(bytes: u64) -> String {
    const GIB: f64 = (1u64 << 30) as f64;
    const MIB: f64 = (1u64 << 20) as f64;
    let b = bytes as f64;
    if b >= GIB { format!("{:.1} GiB", b / GIB) } else { format!("{:.0} MiB", b / MIB) }
}

/// Fails, saying how much is free and how much a run needs, when the disk holding `target`
/// has less than [`MIN_FREE_BYTES`] free.
pub(crate) fn check_before_ci(target: &Path) -> Result<()> {
    let probe = if target.exists() { target } else { target.parent().unwrap_or(target) };
    let free = free_bytes(probe)?;
    let held = used_bytes(target);
    println!(
        "disk: {} free where {} is; target/ holds {} (a fresh run writes about {})",
        human(free),
        target.display(),
        human(held),
        human(FRESH_RUN_BYTES)
    );
    if free < MIN_FREE_BYTES {
        bail!(
            "only {} free on the disk holding {}: cargo xtask ci needs at least {} on a warm \
             target/ and about {} on an empty one; free space (for instance `cargo clean`) \
             and run it again",
            human(free),
            target.display(),
            human(MIN_FREE_BYTES),
            human(FRESH_RUN_BYTES)
        );
    }
    Ok(())
}

/// The closing line of `cargo xtask ci`: what target/ holds and what is left free, with a
/// plain statement when the disk is (nearly) full, the likely cause of a failed step.
pub(crate) fn report_after_ci(target: &Path) -> String {
    let held = used_bytes(target);
    match free_bytes(target) {
        Ok(free) if free < (1 << 30) => format!(
            "disk: target/ holds {}, only {} left free: a step that failed may have failed \
             for want of disk space (look for \"No space left on device\" above)",
            human(held),
            human(free)
        ),
        Ok(free) => format!("disk: target/ holds {}, {} left free", human(held), human(free)),
        Err(e) => format!("disk: target/ holds {} (free space unknown: {e:#})", human(held)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn df_available_column_is_read_in_bytes() {
        let out = "Filesystem     1024-blocks     Used Available Capacity Mounted on\n\
                   /dev/vda         264140800 16777216  81788928      17% /\n";
        assert_eq!(parse_df(out).unwrap(), 81_788_928 * 1024);
        assert!(parse_df("Filesystem 1024-blocks\n").is_err());
        assert!(parse_df("").is_err());
    }

    #[test]
    fn sizes_read_as_an_operator_writes_them() {
        assert_eq!(human(12 << 30), "12.0 GiB");
        assert_eq!(human(512 << 20), "512 MiB");
    }

    #[test]
    fn free_space_of_this_directory_is_known() {
        let free = free_bytes(Path::new(env!("CARGO_MANIFEST_DIR"))).unwrap();
        assert!(free > 0);
        assert!(used_bytes(Path::new(env!("CARGO_MANIFEST_DIR"))) > 0);
        assert_eq!(used_bytes(Path::new("/nonexistent/smartproxy-xtask")), 0);
    }
}
