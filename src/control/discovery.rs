//! The DNS refresh: the running configuration's backend names resolved again every `discovery.dns_refresh`,
//! after a reload adds or removes names, and soon after a connect error to an endpoint. When an address set
//! changes, the snapshot is rebuilt with the same configuration, so endpoints that stay keep their state and
//! only the ones added or removed change.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::discovery::{names, resolve_all};
use crate::runtime::{Shared, Shutdown};

/// The shortest time between two resolutions asked for by connect errors.
const NUDGE_INTERVAL: Duration = Duration::from_secs(1);

/// Resolves the names of the running configuration again every `dns_refresh` (as the configuration says
/// now: a reload that shortens it applies at once), after a reload adds or removes names, and soon after a
/// connect error; installs a new snapshot when an address set changed.
pub async fn run(shared: Arc<Shared>, shutdown: Shutdown) {
    let mut changes = shared.subscribe();
    let mut last_refresh = Instant::now();
    let mut nudged = false;
    loop {
        let snapshot = Arc::clone(&changes.borrow_and_update());
        let config = &snapshot.config;
        let known = shared.resolved();
        let wanted = names(config);
        let renamed = known.keys().cloned().collect::<BTreeSet<_>>() != wanted;
        if renamed || nudged || Instant::now() >= last_refresh + config.discovery.dns_refresh {
            nudged = false;
            last_refresh = Instant::now();
            let resolved = resolve_all(config, &known).await;
            if resolved != *known {
                if let Err(error) = shared.rediscover(resolved) {
                    tracing::error!("endpoints found by DNS not applied: {error}");
                }
            }
        }
        let next_refresh = last_refresh + config.discovery.dns_refresh;
        tokio::select! {
            () = shutdown.begun() => break,
            () = tokio::time::sleep_until(next_refresh) => {}
            () = shared.discovery_nudged() => {
                tokio::time::sleep(NUDGE_INTERVAL).await;
                nudged = true;
            }
            changed = changes.changed() => if changed.is_err() { break },
        }
    }
}
