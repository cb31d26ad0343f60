//! The outlier sweep: once a second, each healthy backend's traffic window is judged by its upstream's
//! failure-rate and latency rules (`health::outlier`); a verdict ejects it, within the upstream's
//! `max_ejection_percent`. Consecutive slow responses are caught on the request path instead, as soon as
//! they happen (`routing::Upstream::observe`).

use std::sync::Arc;
use std::time::Duration;

use tokio::time::MissedTickBehavior;

use crate::health::outlier::{covered, failure_rate, latency};
use crate::health::Source;
use crate::routing::Upstream;
use crate::runtime::{Shared, Shutdown};

/// How often windows are checked.
const SWEEP: Duration = Duration::from_secs(1);

/// Checks every upstream with outlier rules once a second until shutdown.
pub async fn run(shared: Arc<Shared>, shutdown: Shutdown) {
    let mut tick = tokio::time::interval(SWEEP);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.begun() => break,
            _ = tick.tick() => {}
        }
        for upstream in shared.snapshot().upstreams() {
            sweep(upstream);
        }
    }
}

/// Checks each healthy backend of `upstream` against its failure-rate and latency rules.
pub fn sweep(upstream: &Upstream) {
    let passive = &upstream.health_check.passive;
    if !passive.enabled || (passive.failure_rate.is_none() && passive.latency.is_none()) {
        return;
    }
    for backend in &upstream.backends {
        if !backend.health.is_healthy() || backend.is_drained() {
            continue;
        }
        let since = backend.health.since_recovery();
        let counts = |period: Duration| match covered(period, since) {
            0 => None,
            seconds => Some(backend.window.counts(seconds)),
        };
        let verdict = passive
            .failure_rate
            .as_ref()
            .and_then(|rule| failure_rate(&counts(rule.period)?, rule).map(|cause| (Source::FailureRate, cause)))
            .or_else(|| {
                let rule = passive.latency.as_ref()?;
                latency(&counts(rule.period)?, rule).map(|cause| (Source::Latency, cause))
            });
        if let Some((source, cause)) = verdict {
            upstream.eject(backend, source, &cause);
        }
    }
}
