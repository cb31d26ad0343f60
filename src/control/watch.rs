//! `--watch`: reload the configuration when its file, or the certificate or key it names, changes. The
//! files' metadata is checked once a second (following symlinks, so a Kubernetes ConfigMap or Secret update,
//! which swaps a symlink, is seen like an edit). A changed config text reloads; a changed certificate or key
//! reloads too (a renewal keeps the same config). Polling needs no inotify quirks for editors that write by
//! rename, and a second of delay is nothing next to how ConfigMap and Secret updates propagate.

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
        // No recorded state for the config file: the first look compares its text with the running
        // configuration, so a change made while the proxy was starting is not missed.
        let mut seen = None;
        let mut seen_tls = tls_stamps(&shared);
        let mut ticks = tokio::time::interval(INTERVAL);
        loop {
            ticks.tick().await;
            let (now, now_tls) = (Stamp::of(&path), tls_stamps(&shared));
            if now == seen && now_tls == seen_tls {
                continue;
            }
            let tls_changed = now_tls != seen_tls;
            (seen, seen_tls) = (now, now_tls);
            // The same text again (touched, or rewritten unchanged) is not a reload, unless the certificate
            // changed under it.
            let unchanged = std::fs::read_to_string(&path)
                .ok()
                .is_some_and(|text| crate::config::digest(&text) == shared.snapshot().config.digest);
            if unchanged && !tls_changed {
                continue;
            }
            match shared.reload_from_file().await {
                Ok(report) => tracing::info!("watched files changed: {report}"),
                Err(error) => {
                    tracing::error!("watched files changed: not reloaded, the running configuration stays: {error}")
                }
            }
        }
    }))
}

/// Every certificate and key file the running configuration names.
fn tls_stamps(shared: &Shared) -> Vec<(Option<Stamp>, Option<Stamp>)> {
    let snapshot = shared.snapshot();
    let Some(tls) = snapshot.config.server.tls.as_ref() else {
        return Vec::new();
    };
    tls.files()
        .iter()
        .map(|(_, pair)| (Stamp::of(&pair.cert_file), Stamp::of(&pair.key_file)))
        .collect()
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
