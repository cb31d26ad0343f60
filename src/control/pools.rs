//! Idle backend connections closed once they pass `timeouts.pool_idle`, so that a quiet proxy does not
//! keep sockets the backends have long closed on their side.

use std::sync::Arc;
use std::time::Duration;

use crate::runtime::{Shared, Shutdown};

/// How often idle backend connections are looked at.
const IDLE_SWEEP: Duration = Duration::from_secs(5);

/// Closes backend connections idle longer than `timeouts.pool_idle`, every few seconds until shutdown.
pub async fn close_idle(shared: Arc<Shared>, shutdown: Shutdown) {
    let mut ticks = tokio::time::interval(IDLE_SWEEP);
    loop {
        tokio::select! {
            () = shutdown.begun() => return,
            _ = ticks.tick() => {}
        }
        let snapshot = shared.snapshot();
        let max_idle = snapshot.config.timeouts.pool_idle;
        for backend in snapshot.backends() {
            backend.transport.prune(max_idle);
        }
    }
}
