//! A backend's recent traffic: requests, failures and a latency histogram over the last few seconds, in
//! one-second slots of atomics. The request path adds to the current slot; readers merge the slots that are
//! still inside the window. For the console's rates and quantiles, and for outlier detection.
//!
//! A slot is reset by the first request of a new second that lands on it; a request racing that reset may
//! be lost or counted in the old second. The figures are estimates by design, never accounting.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use crate::config::LONGEST_TRAFFIC_PERIOD;

/// Seconds kept: the longest period summarised, plus the second still filling.
pub const SLOTS: usize = LONGEST_TRAFFIC_PERIOD.as_secs() as usize + 1;
/// Latency buckets: bucket `i` holds latencies below `FIRST_BOUND * 2^(i/2)`, the last one everything above.
const BUCKETS: usize = 40;
const FIRST_BOUND: Duration = Duration::from_micros(100);

#[derive(Debug)]
struct Slot {
    /// The second (since the window's start) this slot counts, plus one; 0 when never used.
    second: AtomicU64,
    requests: AtomicU64,
    failures: AtomicU64,
    latency: [AtomicU32; BUCKETS],
}

impl Default for Slot {
    fn default() -> Self {
        Self {
            second: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            latency: std::array::from_fn(|_| AtomicU32::new(0)),
        }
    }
}

/// Recent requests, failures and latencies of one backend.
#[derive(Debug)]
pub struct Window {
    start: Instant,
    slots: [Slot; SLOTS],
}

impl Default for Window {
    fn default() -> Self {
        Self {
            start: Instant::now(),
            slots: Default::default(),
        }
    }
}

/// The window's counts over some seconds.
#[derive(Debug, Clone, PartialEq)]
pub struct Counts {
    /// How many seconds the figures cover.
    pub seconds: u64,
    pub requests: u64,
    pub failures: u64,
    latency: [u64; BUCKETS],
}

impl Counts {
    /// Requests per second over the covered time.
    pub fn rate(&self) -> f64 {
        self.requests as f64 / self.seconds.max(1) as f64
    }

    /// Failed requests over all requests; `None` without requests.
    pub fn failure_ratio(&self) -> Option<f64> {
        (self.requests > 0).then(|| self.failures as f64 / self.requests as f64)
    }

    /// The latency below which a share `q` of the requests answered, as an upper bound (the top of its
    /// half-octave bucket); `None` without requests.
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        self.quantile_bucket(q).map(bound_of)
    }

    /// The same quantile as a lower bound: at least this share of the requests took this long or less, and
    /// the rest took at least this long (the bottom of the quantile's bucket).
    pub fn quantile_floor(&self, q: f64) -> Option<Duration> {
        self.quantile_bucket(q)
            .map(|index| index.checked_sub(1).map_or(Duration::ZERO, bound_of))
    }

    fn quantile_bucket(&self, q: f64) -> Option<usize> {
        let total: u64 = self.latency.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = ((total as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        self.latency.iter().position(|&count| {
            seen += count;
            seen >= rank
        })
    }
}

impl Window {
    /// Counts one request answered (or failed) after `latency`.
    pub fn record(&self, latency: Duration, failed: bool) {
        let slot = self.current();
        slot.requests.fetch_add(1, Ordering::Relaxed);
        if failed {
            slot.failures.fetch_add(1, Ordering::Relaxed);
        }
        slot.latency[bucket_of(latency)].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a request already counted as failed after all: its response body failed after the head came.
    pub fn record_late_failure(&self) {
        self.current().failures.fetch_add(1, Ordering::Relaxed);
    }

    /// The slot of the current second, emptied first if it last counted an older one.
    fn current(&self) -> &Slot {
        let second = self.start.elapsed().as_secs() + 1;
        let slot = &self.slots[(second % SLOTS as u64) as usize];
        if slot.second.load(Ordering::Relaxed) != second && slot.second.swap(second, Ordering::Relaxed) != second {
            slot.requests.store(0, Ordering::Relaxed);
            slot.failures.store(0, Ordering::Relaxed);
            for bucket in &slot.latency {
                bucket.store(0, Ordering::Relaxed);
            }
        }
        slot
    }

    /// The last `seconds` complete seconds (at most [`SLOTS`] - 1; the current second is still filling).
    pub fn counts(&self, seconds: u64) -> Counts {
        let seconds = seconds.clamp(1, SLOTS as u64 - 1);
        let now = self.start.elapsed().as_secs() + 1;
        let mut counts = Counts {
            seconds,
            requests: 0,
            failures: 0,
            latency: [0; BUCKETS],
        };
        for slot in &self.slots {
            let second = slot.second.load(Ordering::Relaxed);
            if second == 0 || second >= now || now - second > seconds {
                continue;
            }
            counts.requests += slot.requests.load(Ordering::Relaxed);
            counts.failures += slot.failures.load(Ordering::Relaxed);
            for (sum, bucket) in counts.latency.iter_mut().zip(&slot.latency) {
                *sum += u64::from(bucket.load(Ordering::Relaxed));
            }
        }
        counts
    }
}

fn bucket_of(latency: Duration) -> usize {
    let ratio = latency.as_secs_f64() / FIRST_BOUND.as_secs_f64();
    if ratio < 1.0 {
        return 0;
    }
    // Half-octave buckets: index = floor(2 * log2(ratio)) + 1.
    ((2.0 * ratio.log2()).floor() as usize + 1).min(BUCKETS - 1)
}

/// The upper bound of bucket `index`.
fn bound_of(index: usize) -> Duration {
    FIRST_BOUND.mul_f64(2f64.powf(index as f64 / 2.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_ordered_and_bound_their_latencies() {
        for micros in [0u64, 50, 100, 141, 150, 1_000, 12_345, 1_000_000, 30_000_000] {
            let latency = Duration::from_micros(micros);
            let index = bucket_of(latency);
            assert!(
                latency < bound_of(index) || index == BUCKETS - 1,
                "{latency:?} in {index}"
            );
            if index > 0 {
                assert!(latency >= bound_of(index - 1), "{latency:?} in {index}");
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn summarises_complete_seconds_only_and_forgets_old_ones() {
        let window = Window::default();
        for n in 0..100u32 {
            window.record(Duration::from_millis(u64::from(n % 10) + 1), n % 4 == 0);
        }
        assert_eq!(window.counts(5).requests, 0, "the current second is still filling");
        tokio::time::advance(Duration::from_secs(1)).await;
        let summary = window.counts(5);
        assert_eq!((summary.requests, summary.failures), (100, 25));
        assert_eq!(summary.failure_ratio(), Some(0.25));
        let p50 = summary.quantile(0.5).unwrap_or_default();
        assert!(
            p50 >= Duration::from_millis(5) && p50 < Duration::from_millis(8),
            "{p50:?}"
        );
        let p99 = summary.quantile(0.99).unwrap_or_default();
        assert!(
            p99 >= Duration::from_millis(10) && p99 < Duration::from_millis(15),
            "{p99:?}"
        );
        tokio::time::advance(Duration::from_secs(6)).await;
        assert_eq!(window.counts(5).requests, 0);
        assert_eq!(window.counts(SLOTS as u64).requests, 100);
        // SLOTS seconds after the first second, its slot is reused.
        tokio::time::advance(Duration::from_secs(SLOTS as u64 - 7)).await;
        window.record(Duration::from_millis(1), false);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(
            window.counts(SLOTS as u64).requests,
            1,
            "a reused slot starts from zero"
        );
    }
}
