//! Outlier detection's verdicts, pure: a backend's traffic window against its upstream's rules, a failure
//! rate above `percentage` over `period` (with at least `minimum_requests`), or a latency quantile above
//! `unhealthy_latency`. The control thread sweeps every backend with them once a second; a verdict ejects
//! through the same state machine, transitions, logs and metrics as consecutive failures.

use std::time::Duration;

use super::window::Counts;
use crate::config::{FailureRate, LatencyOutlier};

/// Whole seconds of `period` that passed since the backend's recovery (all of it when it never failed):
/// only traffic since it last came back counts, so what ejected it cannot eject it again.
pub fn covered(period: Duration, since_recovery: Option<Duration>) -> u64 {
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
    use crate::health::window::Window;

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
