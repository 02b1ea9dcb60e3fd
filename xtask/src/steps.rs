//! Timing of named steps and the test totals, printed at the end of `ci` and `release`.

use std::fmt::Write as _;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// The steps run so far, with their time and outcome.
#[derive(Debug, Default)]
pub(crate) struct Steps {
    done: Vec<(String, Duration, bool)>,
}

impl Steps {
    /// Runs one step, announcing it first and recording its time whatever the outcome.
    pub(crate) fn run<T>(&mut self, name: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
        println!("\n==> {name}");
        let t = Instant::now();
        let r = f();
        self.done.push((name.to_owned(), t.elapsed(), r.is_ok()));
        r
    }

    /// The table of steps: name, time, ok/FAILED.
    pub(crate) fn summary(&self) -> String {
        let mut s = String::new();
        let total: Duration = self.done.iter().map(|d| d.1).sum();
        for (name, time, ok) in &self.done {
            let _ = writeln!(
                s,
                "  {name:<44} {:>8}  {}",
                format_duration(*time),
                if *ok { "ok" } else { "FAILED" }
            );
        }
        let _ = writeln!(s, "  {:<44} {:>8}", "total", format_duration(total));
        s
    }
}

pub(crate) fn format_duration(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s < 60.0 {
        format!("{s:.1} s")
    } else {
        format!("{}m{:02}s", d.as_secs() / 60, d.as_secs() % 60)
    }
}

/// Test counts summed over every test binary (and doc-test run) of a `cargo test`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TestTotals {
    pub(crate) binaries: u64,
    pub(crate) passed: u64,
    pub(crate) failed: u64,
    pub(crate) ignored: u64,
    pub(crate) filtered: u64,
}

impl TestTotals {
    /// Adds a libtest summary line:
    /// `test result: ok. 12 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.02s`.
    pub(crate) fn add_line(&mut self, line: &str) {
        let Some(rest) = line.trim().strip_prefix("test result: ") else {
            return;
        };
        self.binaries += 1;
        for part in rest.split(';') {
            let words: Vec<&str> = part.split_whitespace().collect();
            // "ok. 12 passed" or "12 failed" or "0 filtered out"
            let (n, what) = match words.as_slice() {
                [_, n, what, ..] if words[0].ends_with('.') => (*n, *what),
                [n, what, ..] => (*n, *what),
                _ => continue,
            };
            let Ok(n) = n.parse::<u64>() else { continue };
            match what {
                "passed" => self.passed += n,
                "failed" => self.failed += n,
                "ignored" => self.ignored += n,
                "filtered" => self.filtered += n,
                _ => {}
            }
        }
    }
}

impl std::fmt::Display for TestTotals {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} passed, {} failed, {} ignored ({} test binaries and doc-test runs)",
            self.passed, self.failed, self.ignored, self.binaries
        )
    }
}

/// Runs `cargo ARGS` passing its output through, and sums the test results it prints.
/// Returns the totals even when tests failed (the error says how many).
pub(crate) fn cargo_test(args: &[&str], envs: &[(&str, &str)]) -> (TestTotals, Result<()>) {
    println!("$ cargo {}", args.join(" "));
    let mut totals = TestTotals::default();
    let mut run = || -> Result<()> {
        let mut child = Command::new("cargo")
            .args(args)
            .envs(envs.iter().copied())
            .stdout(Stdio::piped())
            .spawn()
            .context("could not start cargo")?;
        let stdout = child.stdout.take().context("cargo's stdout")?;
        for line in BufReader::new(stdout).lines() {
            let line = line.context("reading cargo's output")?;
            println!("{line}");
            totals.add_line(&line);
        }
        let status = child.wait().context("waiting for cargo")?;
        if !status.success() {
            bail!("`cargo {}` failed ({status})", args.join(" "));
        }
        Ok(())
    };
    let r = run();
    (totals, r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_result_lines_are_summed() {
        let mut t = TestTotals::default();
        for line in [
            "running 3 tests",
            "test result: ok. 12 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.02s",
            "test result: FAILED. 3 passed; 2 failed; 0 ignored; 0 measured; 4 filtered out; finished in 1.00s",
            "   Doc-tests smartproxy_routing",
            "test result: ok. 0 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.00s",
            "test foo ... ok",
        ] {
            t.add_line(line);
        }
        assert_eq!(t, TestTotals { binaries: 3, passed: 15, failed: 2, ignored: 1, filtered: 4 });
        assert_eq!(
            t.to_string(),
            "15 passed, 2 failed, 1 ignored (3 test binaries and doc-test runs)"
        );
    }

    #[test]
    fn steps_are_timed_and_failures_marked() {
        let mut s = Steps::default();
        s.run("first", || Ok(())).unwrap();
        assert!(s.run("second", || -> Result<()> { bail!("no") }).is_err());
        let out = s.summary();
        assert!(out.contains("first") && out.contains("ok"), "{out}");
        assert!(out.contains("second") && out.contains("FAILED"), "{out}");
        assert!(out.contains("total"), "{out}");
        assert_eq!(format_duration(Duration::from_secs(125)), "2m05s");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1.5 s");
    }

    #[test]
    fn a_real_cargo_run_is_passed_through_and_counted() {
        // `cargo --version` prints no test result: zero binaries, success.
        let (t, r) = cargo_test(&["--version"], &[]);
        r.unwrap();
        assert_eq!(t, TestTotals::default());
        // A failing cargo is an error (`--locked` with a missing manifest fails quietly).
        let (_, r) =
            cargo_test(&["--quiet", "metadata", "--manifest-path", "/nonexistent/Cargo.toml"], &[]);
        assert!(r.is_err());
    }
}
