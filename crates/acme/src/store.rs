//! The on-disk store: `storage/` (0700) holding
//!
//! ```text
//! accounts/<sha256(directory) prefix>.json   account key and URL for one CA (0600)
//! certs/<route>.pem                          chain, leaf first, then its private key (0600)
//! certs/<route>.json                         domains, CA, attempts, errors, backoff (0600)
//! ```
//!
//! Every file is written to a temporary file in the same directory (created 0600), synced,
//! and renamed over the old one, then the directory is synced: a crash leaves the old file or
//! the new one, never a mix. The chain and its key share one file so they cannot disagree.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use crate::error::Error;

#[derive(Debug)]
pub(crate) struct Store {
    root: PathBuf,
}

/// Per-route state kept across restarts (times in Unix seconds).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub(crate) struct RouteState {
    pub(crate) domains: Vec<String>,
    /// The directory URL the stored certificate came from.
    pub(crate) directory: Option<String>,
    pub(crate) last_attempt: Option<i64>,
    pub(crate) last_success: Option<i64>,
    pub(crate) last_error: Option<String>,
    pub(crate) failures: u32,
    pub(crate) next_attempt: Option<i64>,
}

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

impl Store {
    /// Opens (creating) the store directory and its subdirectories, mode 0700.
    pub(crate) fn open(root: &Path) -> Result<Self, Error> {
        for dir in [root.to_path_buf(), root.join("accounts"), root.join("certs")] {
            std::fs::create_dir_all(&dir).map_err(|e| Error::storage(&dir, e))?;
            restrict_dir(&dir)?;
        }
        Ok(Self { root: root.to_path_buf() })
    }

    pub(crate) fn root(&self) -> &Path {
        &self.root
    }

    pub(crate) fn account_path(&self, directory: &str) -> PathBuf {
        let digest = ring::digest::digest(&ring::digest::SHA256, directory.as_bytes());
        let hex: String = digest.as_ref()[..8].iter().map(|b| format!("{b:02x}")).collect();
        self.root.join("accounts").join(format!("{hex}.json"))
    }

    pub(crate) fn cert_path(&self, route: &str) -> PathBuf {
        self.root.join("certs").join(format!("{}.pem", file_name(route)))
    }

    pub(crate) fn state_path(&self, route: &str) -> PathBuf {
        self.root.join("certs").join(format!("{}.json", file_name(route)))
    }

    /// The file's bytes, `None` if it does not exist.
    pub(crate) fn read(&self, path: &Path) -> Result<Option<Vec<u8>>, Error> {
        match std::fs::read(path) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::storage(path, e)),
        }
    }

    pub(crate) fn load_state(&self, route: &str) -> Result<Option<RouteState>, Error> {
        let path = self.state_path(route);
        match self.read(&path)? {
            None => Ok(None),
            Some(b) => serde_json::from_slice(&b).map(Some).map_err(|e| Error::storage(&path, e)),
        }
    }

    pub(crate) fn save_state(&self, route: &str, state: &RouteState) -> Result<(), Error> {
        let path = self.state_path(route);
        let bytes = serde_json::to_vec_pretty(state).map_err(|e| Error::storage(&path, e))?;
        write_atomic(&path, &bytes)
    }

    /// Moves a file aside (`NAME.rejected`), keeping it for the operator.
    pub(crate) fn set_aside(&self, path: &Path) -> Result<(), Error> {
        let mut aside = path.as_os_str().to_owned();
        aside.push(".rejected");
        std::fs::rename(path, &aside).map_err(|e| Error::storage(path, e))
    }
}

/// A route name as a file name: letters, digits, `-` and `_` as they are, everything else
/// (and a leading `.`) as `%XX`, so that distinct names never share a file.
fn file_name(route: &str) -> String {
    let mut out = String::with_capacity(route.len());
    for (i, b) in route.bytes().enumerate() {
        if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || (b == b'.' && i > 0) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    if out.is_empty() { "%".into() } else { out }
}

/// Writes `bytes` to `path` atomically, mode 0600.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    let dir = path.parent().ok_or_else(|| Error::storage(path, "no parent directory"))?;
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(
        ".{name}.tmp-{}-{}",
        std::process::id(),
        TMP_COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| {
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
        let mut f = opts.open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)?;
        // The rename itself is made durable by syncing the directory.
        std::fs::File::open(dir)?.sync_all()
    })();
    result.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::storage(path, e)
    })
}

#[cfg(unix)]
fn restrict_dir(dir: &Path) -> Result<(), Error> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| Error::storage(dir, e))
}

#[cfg(not(unix))]
fn restrict_dir(_dir: &Path) -> Result<(), Error> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_are_distinct_and_safe() {
        assert_eq!(file_name("web-1_a"), "web-1_a");
        assert_eq!(file_name("a/b"), "a%2Fb");
        assert_eq!(file_name("../x"), "%2E.%2Fx");
        assert_eq!(file_name("a b"), "a%20b");
        assert_eq!(file_name(""), "%");
        assert_ne!(file_name("a%2Fb"), file_name("a/b"));
    }

    #[cfg(unix)]
    #[test]
    fn atomic_write_replaces_with_mode_0600() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s")).unwrap();
        let p = store.cert_path("r");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
        let mode = std::fs::metadata(store.root()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        // No temporary file is left behind.
        let names: Vec<_> = std::fs::read_dir(p.parent().unwrap()).unwrap().collect();
        assert_eq!(names.len(), 1);
    }

    #[test]
    fn state_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.load_state("r").unwrap(), None);
        let s = RouteState {
            domains: vec!["a.example".into()],
            failures: 3,
            last_error: Some("x".into()),
            ..RouteState::default()
        };
        store.save_state("r", &s).unwrap();
        assert_eq!(store.load_state("r").unwrap(), Some(s));
    }
}
