//! The crate's error type.

use std::io;

use crate::check::Problem;

/// What went wrong writing or reading the kernel's rules.
///
/// The cases an operator fixes differently are told apart: [`Error::is_nft_missing`] (install
/// the `nftables` package), [`Error::is_permission_denied`] (run with `CAP_NET_ADMIN`),
/// [`Error::Invalid`] (the routes), [`Error::Nft`] (the kernel or nft refused the rules: see
/// its message, often a missing kernel module).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The `nft` program is not installed (or not where it was said to be).
    #[error("`{program}` was not found; install nftables (Debian: apt-get install nftables)")]
    NftMissing {
        /// The program that could not be run.
        program: String,
    },
    /// `nft` ran but may not change (or read) the ruleset: the process lacks `CAP_NET_ADMIN`
    /// in this network namespace.
    #[error("nft may not change the ruleset: CAP_NET_ADMIN is needed ({stderr})")]
    PermissionDenied {
        /// What nft said.
        stderr: String,
    },
    /// The table is not there (it was never applied, or someone deleted it).
    #[error("table inet {table} does not exist")]
    TableMissing {
        /// The table's name.
        table: String,
    },
    /// `nft` refused the command: the kernel lacks a feature or module, or the rules are
    /// wrong. The message is nft's.
    #[error("nft failed ({status}): {stderr}")]
    Nft {
        /// The exit status.
        status: String,
        /// What nft said.
        stderr: String,
    },
    /// `nft` could not be started for another reason than a missing program.
    #[error("cannot run `{program}`")]
    Spawn {
        /// The program.
        program: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// `nft -j` printed something that is not the JSON expected.
    #[error("unexpected output from nft: {0}")]
    Output(String),
    /// Routes that nftables cannot honour; every problem is listed.
    #[error("{} route problem(s): {}", problems.len(), join(problems))]
    Invalid {
        /// The problems, in route order.
        problems: Vec<Problem>,
    },
}

fn join(problems: &[Problem]) -> String {
    problems.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
}

impl Error {
    /// `nft` is not installed.
    pub fn is_nft_missing(&self) -> bool {
        matches!(self, Self::NftMissing { .. })
    }

    /// The process lacks `CAP_NET_ADMIN`.
    pub fn is_permission_denied(&self) -> bool {
        matches!(self, Self::PermissionDenied { .. })
    }
}
