//! Running `nft -j`: a process with arguments and a stdin pipe, never a shell.

use std::ffi::{OsStr, OsString};
use std::io::{self, Write};
use std::process::{Command, Stdio};

use serde_json::Value;

use crate::error::Error;

/// How to run `nft`: the program (default `nft` from `PATH`) and an optional command prefix
/// that runs it elsewhere, e.g. in a network namespace (`ip netns exec NAME`).
#[derive(Debug, Clone)]
pub struct Nft {
    program: OsString,
    prefix: Vec<OsString>,
}

impl Default for Nft {
    fn default() -> Self {
        Self::new()
    }
}

impl Nft {
    /// `nft` from `PATH`.
    pub fn new() -> Self {
        Self { program: "nft".into(), prefix: Vec::new() }
    }

    /// Another `nft` program (a path, or a name looked up in `PATH`).
    pub fn program(mut self, program: impl Into<OsString>) -> Self {
        self.program = program.into();
        self
    }

    /// A command put before `nft`: `["ip", "netns", "exec", "ns1"]`, `["nsenter",
    /// "--net=/run/netns/ns1"]`. Its first word is the program that is started.
    pub fn prefix<I, S>(mut self, prefix: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.prefix = prefix.into_iter().map(Into::into).collect();
        self
    }

    /// `nft` run inside the named network namespace (`ip netns exec NAME nft`).
    pub fn in_netns(name: &str) -> Self {
        Self::new().prefix(["ip", "netns", "exec", name])
    }

    fn command(&self, args: &[&str]) -> (Command, String) {
        let (first, rest): (&OsStr, &[OsString]) = match self.prefix.split_first() {
            Some((first, rest)) => (first, rest),
            None => (&self.program, &[]),
        };
        let mut cmd = Command::new(first);
        cmd.args(rest);
        if !self.prefix.is_empty() {
            cmd.arg(&self.program);
        }
        cmd.args(args);
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
        (cmd, first.to_string_lossy().into_owned())
    }

    /// Runs `nft ARGS` with `input` on stdin; returns stdout.
    fn run(&self, args: &[&str], input: &[u8]) -> Result<Vec<u8>, Error> {
        let (mut cmd, started) = self.command(args);
        let mut child = cmd.spawn().map_err(|source| {
            if source.kind() == io::ErrorKind::NotFound {
                Error::NftMissing { program: started.clone() }
            } else {
                Error::Spawn { program: started.clone(), source }
            }
        })?;
        let stdin = child.stdin.take();
        // Writing from another thread: nft could fill its stdout or stderr pipe while we
        // still write, and both sides would wait on each other.
        let output = std::thread::scope(|s| {
            let writer = s.spawn(move || -> io::Result<()> {
                if let Some(mut stdin) = stdin {
                    stdin.write_all(input)?;
                }
                Ok(())
            });
            let output = child.wait_with_output();
            // A write error (nft exited early) shows in its exit status and stderr.
            let _ = writer.join();
            output
        })
        .map_err(|source| Error::Spawn { program: started.clone(), source })?;
        if output.status.success() {
            return Ok(output.stdout);
        }
        let stderr = String::from_utf8_lossy(&output.stderr).trim().to_owned();
        Err(classify(&self.program, output.status.to_string(), stderr))
    }

    /// Applies one JSON batch (`nft -j -f -`): one transaction, all or nothing.
    pub(crate) fn apply(&self, batch: &Value) -> Result<(), Error> {
        let text = serde_json::to_vec(batch).map_err(|e| Error::Output(e.to_string()))?;
        self.run(&["-j", "-f", "-"], &text).map(drop)
    }

    /// `nft -j ARGS` (a `list` command), parsed.
    pub(crate) fn list(&self, args: &[&str]) -> Result<Value, Error> {
        let mut all = vec!["-j"];
        all.extend_from_slice(args);
        let out = self.run(&all, &[])?;
        serde_json::from_slice(&out).map_err(|e| {
            let head: String = String::from_utf8_lossy(&out).chars().take(200).collect();
            Error::Output(format!("{e} in `{head}`"))
        })
    }

    /// Checks that `nft` runs and may read the ruleset (`nft -j list tables`).
    pub fn probe(&self) -> Result<(), Error> {
        self.list(&["list", "tables"]).map(drop)
    }
}

fn classify(program: &OsStr, status: String, stderr: String) -> Error {
    let program = program.to_string_lossy().into_owned();
    // `ip netns exec` / `nsenter` report a program they cannot run on stderr.
    if (stderr.contains("exec of") || stderr.contains("failed to execute"))
        && stderr.contains("No such file or directory")
    {
        return Error::NftMissing { program };
    }
    if stderr.contains("Operation not permitted") {
        return Error::PermissionDenied { stderr };
    }
    Error::Nft { status, stderr }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_told_apart() {
        let p = OsStr::new("nft");
        assert!(
            classify(p, "1".into(), "exec of \"nft\" failed: No such file or directory".into())
                .is_nft_missing()
        );
        assert!(
            classify(
                p,
                "1".into(),
                "nsenter: failed to execute nft: No such file or directory".into()
            )
            .is_nft_missing()
        );
        assert!(
            classify(
                p,
                "1".into(),
                "netlink: Error: cache initialization failed: Operation not permitted".into()
            )
            .is_permission_denied()
        );
        let e = classify(
            p,
            "exit status: 1".into(),
            "Error: Could not process rule: No such file or directory".into(),
        );
        assert!(matches!(e, Error::Nft { .. }), "{e:?}");
    }

    #[test]
    fn a_missing_program_is_reported_as_such() {
        let e = Nft::new().program("/nonexistent/nft").probe().expect_err("no such program");
        assert!(e.is_nft_missing(), "{e:?}");
        assert!(e.to_string().contains("/nonexistent/nft"), "{e}");
    }
}
