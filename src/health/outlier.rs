//! Outlier detection: backends that answer, but badly. Every second, each backend's traffic window is
//! checked against its upstream's rules: a failure rate above `percentage` over `period` (with at least
//! `minimum_requests`), or a latency quantile above `unhealthy_latency`. Consecutive slow responses are
//! caught on the request path instead ([`slow_response`]), as soon as they happen. A verdict ejects through
//! the same state machine, transitions, logs and metrics as consecutive failures, within the upstream's
//! `max_ejection_percent`.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::MissedTickBehavior;

use crate::balancer::window::Counts;
use crate::balancer::Backend;
use crate::config::{FailureRate, LatencyOutlier};
use crate::routing::Upstream;
use crate::runtime::{Shared, Shutdown};

use super::Source;

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
        // Only traffic since the backend last came back counts: what ejected it must not eject it again.
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
            eject(upstream, backend, source, &cause);
        }
    }
}

/// Counts a response's latency for the `consecutive` rule; ejects the backend when that many in a row were
/// slower than `unhealthy_latency`.
pub fn slow_response(upstream: &Upstream, backend: &Arc<Backend>, latency: Duration) {
    let Some(rule) = upstream
        .health_check
        .passive
        .latency
        .as_ref()
        .filter(|r| r.consecutive > 0)
    else {
        return;
    };
    let streak = backend.record_slowness(latency > rule.unhealthy_latency);
    if streak >= rule.consecutive && backend.health.is_healthy() {
        let cause = format!(
            "{streak} responses in a row slower than {:?} (the last took {latency:.1?})",
            rule.unhealthy_latency
        );
        eject(upstream, backend, Source::Latency, &cause);
        backend.record_slowness(false);
    }
}

fn eject(upstream: &Upstream, backend: &Arc<Backend>, source: Source, cause: &str) {
    if !upstream.may_eject(backend, source) {
        return;
    }
    if let Some(transition) = backend.health.record_outlier(source, cause) {
        super::announce(backend, transition);
    }
}

/// Whole seconds of `period` that passed since the backend's recovery (all of it when it never failed).
fn covered(period: Duration, since_recovery: Option<Duration>) -> u64 {
    let period = period.as_secs();
    since_recovery.map_or(period, |since| since.as_secs().min(period))
}

/// The failure-rate rule's verdict on `counts`: why to eject, or nothing.
pub fn failure_rate(counts: &Counts, rule: &FailureRate) -> Option<String> {
    if counts.requests < u64::from(rule.minimum_requests) {
        return None;
    }
    let ratio = counts.failure_ratio()?;
    (ratio * 100.0 > f64::from(rule.percentage)).then(|| {
        format!(
            "failure rate {:.0}% over the last {}s ({} of {} requests failed), above {}%",
            ratio * 100.0,
            counts.seconds,
            counts.failures,
            counts.requests,
            rule.percentage
        )
    })
}

/// The latency rule's verdict on `counts`: why to eject, or nothing. Latencies are known to a half-octave
/// bucket; only a quantile whose whole bucket lies above the threshold ejects.
pub fn latency(counts: &Counts, rule: &LatencyOutlier) -> Option<String> {
    if counts.requests < u64::from(rule.minimum_requests) {
        return None;
    }
    let floor = counts.quantile_floor(rule.quantile)?;
    (floor >= rule.unhealthy_latency).then(|| {
        format!(
            "p{} latency at least {floor:.0?} over the last {}s ({} requests), above {:?}",
            rule.quantile * 100.0,
            counts.seconds,
            counts.requests,
            rule.unhealthy_latency
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balancer::window::Window;

    fn rate(percentage: u8, minimum_requests: u32) -> FailureRate {
        FailureRate {
            percentage,
            minimum_requests,
            period: Duration::from_secs(10),
        }
    }

    fn slow(threshold_ms: u64, quantile: f64, minimum_requests: u32) -> LatencyOutlier {
        LatencyOutlier {
            unhealthy_latency: Duration::from_millis(threshold_ms),
            quantile,
            minimum_requests,
            period: Duration::from_secs(10),
            consecutive: 0,
        }
    }

    /// `requests` answered after `latency`, `failures` of them failed, one second ago.
    async fn window(requests: u32, failures: u32, latency: Duration) -> Window {
        let window = Window::default();
        for n in 0..requests {
            window.record(latency, n < failures);
        }
        tokio::time::advance(Duration::from_secs(1)).await;
        window
    }

    #[tokio::test(start_paused = true)]
    async fn failure_rate_ejects_above_the_percentage_with_enough_requests() {
        let ms = Duration::from_millis(1);
        assert_eq!(
            failure_rate(&window(19, 19, ms).await.counts(10), &rate(50, 20)),
            None,
            "too few"
        );
        assert_eq!(
            failure_rate(&window(20, 10, ms).await.counts(10), &rate(50, 20)),
            None,
            "50% is not above 50%"
        );
        let cause = failure_rate(&window(20, 11, ms).await.counts(10), &rate(50, 20));
        assert_eq!(
            cause.as_deref(),
            Some("failure rate 55% over the last 10s (11 of 20 requests failed), above 50%")
        );
    }

    #[tokio::test(start_paused = true)]
    async fn latency_ejects_only_when_the_quantile_is_surely_above_the_threshold() {
        let rule = slow(100, 0.9, 10);
        let fast = window(100, 0, Duration::from_millis(20)).await;
        assert_eq!(latency(&fast.counts(10), &rule), None);
        let slowish = window(100, 0, Duration::from_millis(95)).await;
        assert_eq!(
            latency(&slowish.counts(10), &rule),
            None,
            "within the bucket of the threshold"
        );
        let slow = window(100, 0, Duration::from_millis(300)).await;
        let cause = latency(&slow.counts(10), &rule).unwrap_or_default();
        assert!(cause.starts_with("p90 latency at least"), "{cause}");
        assert_eq!(
            latency(&window(9, 0, Duration::from_secs(1)).await.counts(10), &rule),
            None,
            "too few"
        );
    }

    #[test]
    fn only_traffic_since_recovery_counts() {
        let ten = Duration::from_secs(10);
        assert_eq!(covered(ten, None), 10);
        assert_eq!(covered(ten, Some(Duration::from_millis(3_500))), 3);
        assert_eq!(covered(ten, Some(Duration::from_secs(60))), 10);
        assert_eq!(covered(ten, Some(Duration::from_millis(200))), 0);
    }
}
