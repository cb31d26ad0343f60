//! `--watch`: reload the configuration when its file changes. The file's metadata is checked once a second
//! (following symlinks, so a Kubernetes ConfigMap update, which swaps a symlink, is seen like an edit), and
//! a change of the text reloads it. Polling needs no inotify quirks for editors that write by rename, and a
//! second of delay is nothing next to how ConfigMap updates propagate.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::task::JoinHandle;

use crate::runtime::Shared;

/// How often the file is looked at.
const INTERVAL: Duration = Duration::from_secs(1);

/// Watches `path` until the returned handle is dropped.
pub fn spawn(path: &Path, shared: Arc<Shared>) -> Watcher {
    let path = path.to_owned();
    Watcher(tokio::spawn(async move {
        let mut seen = Stamp::of(&path);
        let mut ticks = tokio::time::interval(INTERVAL);
        loop {
            ticks.tick().await;
            let now = Stamp::of(&path);
            if now == seen {
                continue;
            }
            seen = now;
            // The same text again (touched, or rewritten unchanged) is not a reload.
            let unchanged = std::fs::read_to_string(&path)
                .ok()
                .is_some_and(|text| crate::config::digest(&text) == shared.snapshot().config.digest);
            if unchanged {
                continue;
            }
            match shared.reload_from_file() {
                Ok(report) => tracing::info!("config file changed: {report}"),
                Err(error) => {
                    tracing::error!("config file changed: not reloaded, the running configuration stays: {error}")
                }
            }
        }
    }))
}

/// Stops watching when dropped.
#[derive(Debug)]
pub struct Watcher(JoinHandle<()>);

impl Drop for Watcher {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What tells a file changed without reading it.
#[derive(Debug, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    length: u64,
    inode: u64,
    path: PathBuf,
}

impl Stamp {
    fn of(path: &Path) -> Option<Self> {
        use std::os::unix::fs::MetadataExt as _;
        let metadata = std::fs::metadata(path).ok()?;
        Some(Self {
            modified: metadata.modified().ok(),
            length: metadata.len(),
            inode: metadata.ino(),
            path: std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned()),
        })
    }
}
