//! `watch_config = true`: the configuration file is watched (inotify through the `notify`
//! crate) and reloaded like on SIGHUP once it has been quiet for [`DEBOUNCE`]. The directory is
//! watched, not the file, so that editors that save by writing a new file and renaming it over
//! the old one (vim, most IDEs, `kubectl` config maps) are followed; only events that change
//! the file count (reads, ours included, do not).

use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::{EventKind, RecursiveMode, Watcher};
use tokio::sync::{mpsc, watch};

use crate::control::Control;

/// How long the file must stay unchanged before it is reloaded (an editor's save is several
/// events: truncate, write, rename, chmod).
pub(crate) const DEBOUNCE: Duration = Duration::from_millis(300);

/// Starts watching `path` for `control`; stops when `stop` turns true.
pub(crate) fn start(
    control: Control,
    path: &Path,
    stop: &watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let path = std::path::absolute(path)?;
    let dir = path.parent().map_or_else(|| PathBuf::from("/"), Path::to_path_buf);
    let name = path.file_name().map(std::ffi::OsStr::to_os_string);
    let (tx, mut rx) = mpsc::unbounded_channel::<()>();
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        let Ok(ev) = res else { return };
        let changes =
            matches!(ev.kind, EventKind::Create(_) | EventKind::Modify(_) | EventKind::Remove(_));
        if changes && ev.paths.iter().any(|p| p.file_name() == name.as_deref()) {
            let _ = tx.send(());
        }
    })
    .map_err(|e| anyhow::anyhow!("watch_config: cannot watch {}: {e}", dir.display()))?;
    watcher
        .watch(&dir, RecursiveMode::NonRecursive)
        .map_err(|e| anyhow::anyhow!("watch_config: cannot watch {}: {e}", dir.display()))?;
    tracing::info!(file = %path.display(), "watching the configuration file (watch_config)");
    let mut stop = stop.clone();
    tokio::spawn(async move {
        // Dropped with the task: the watch ends.
        let _watcher = watcher;
        loop {
            tokio::select! {
                got = rx.recv() => if got.is_none() { return },
                _ = stop.wait_for(|v| *v) => return,
            }
            // Debounce: wait until the file has been quiet for DEBOUNCE.
            loop {
                match tokio::time::timeout(DEBOUNCE, rx.recv()).await {
                    Ok(Some(())) => continue,
                    Ok(None) => return,
                    Err(_) => break,
                }
            }
            if *stop.borrow() {
                return;
            }
            if !path.exists() {
                tracing::warn!(file = %path.display(), "the configuration file is gone; keeping the running configuration");
                continue;
            }
            tracing::info!(file = %path.display(), "configuration file changed");
            // `Control::reload` logs and counts the outcome.
            let _ = control.reload("file change").await;
        }
    });
    Ok(())
}
