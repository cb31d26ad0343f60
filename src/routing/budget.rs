//! The retry budget of an upstream: over the last [`SECONDS`] seconds, retries may be at most `ratio` of the
//! requests plus `min_per_second` a second. When backends fail, retries grow with the failures but never
//! multiply the load (a retry storm turns a partial outage into a full one); the floor lets a quiet
//! upstream still retry its rare failures.
//!
//! Counts live in one-second slots of atomics, like the backends' traffic windows: a request or retry
//! racing a slot's reset may be lost, which only makes the budget a little more generous or strict.

use std::sync::atomic::{AtomicU64, Ordering};

use tokio::time::Instant;

use crate::config;

/// The seconds a budget looks back over.
pub const SECONDS: u64 = 10;

#[derive(Debug, Default)]
struct Slot {
    /// The second this slot counts, plus one; 0 when never used.
    second: AtomicU64,
    requests: AtomicU64,
    retries: AtomicU64,
}

/// One upstream's retry budget.
#[derive(Debug)]
pub struct RetryBudget {
    ratio: f64,
    floor: u64,
    start: Instant,
    slots: [Slot; SECONDS as usize],
}

impl RetryBudget {
    pub fn new(settings: config::RetryBudget) -> Self {
        Self {
            ratio: settings.ratio,
            floor: u64::from(settings.min_per_second) * SECONDS,
            start: Instant::now(),
            slots: Default::default(),
        }
    }

    /// The current second's slot, reset first if it still holds an older second.
    fn slot(&self) -> &Slot {
        let second = self.start.elapsed().as_secs() + 1;
        let slot = &self.slots[(second % SECONDS) as usize];
        if slot.second.load(Ordering::Relaxed) != second && slot.second.swap(second, Ordering::Relaxed) != second {
            slot.requests.store(0, Ordering::Relaxed);
            slot.retries.store(0, Ordering::Relaxed);
        }
        slot
    }

    /// Counts a request (its first attempt).
    pub fn record_request(&self) {
        self.slot().requests.fetch_add(1, Ordering::Relaxed);
    }

    /// True, and counted, when one more retry stays within the budget.
    pub fn try_retry(&self) -> bool {
        let now = self.start.elapsed().as_secs() + 1;
        let (mut requests, mut retries) = (0u64, 0u64);
        for slot in &self.slots {
            let second = slot.second.load(Ordering::Relaxed);
            // A slot another thread has just moved to the next second counts too (saturating, never underflowing).
            if second != 0 && now.saturating_sub(second) < SECONDS {
                requests += slot.requests.load(Ordering::Relaxed);
                retries += slot.retries.load(Ordering::Relaxed);
            }
        }
        let allowed = (requests as f64 * self.ratio) as u64 + self.floor;
        if retries >= allowed {
            return false;
        }
        self.slot().retries.fetch_add(1, Ordering::Relaxed);
        true
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn budget(ratio: f64, min_per_second: u32) -> RetryBudget {
        RetryBudget::new(config::RetryBudget { ratio, min_per_second })
    }

    fn retries_allowed(budget: &RetryBudget, attempts: u32) -> u32 {
        (0..attempts).filter(|_| budget.try_retry()).count() as u32
    }

    #[tokio::test(start_paused = true)]
    async fn retries_are_a_share_of_requests_plus_the_floor() {
        let budget = budget(0.2, 1);
        for _ in 0..1_000 {
            budget.record_request();
        }
        // 20% of 1000, plus 1 a second over the 10-second window.
        assert_eq!(retries_allowed(&budget, 1_000), 200 + 10);
    }

    #[tokio::test(start_paused = true)]
    async fn the_floor_alone_lets_a_quiet_upstream_retry() {
        let budget = budget(0.2, 2);
        assert_eq!(retries_allowed(&budget, 100), 20);
        let none = self::budget(0.5, 0);
        assert_eq!(retries_allowed(&none, 100), 0, "no requests, no floor: no retries");
    }

    #[tokio::test(start_paused = true)]
    async fn the_budget_refills_as_old_seconds_leave_the_window() {
        let budget = budget(0.1, 0);
        for _ in 0..100 {
            budget.record_request();
        }
        assert_eq!(retries_allowed(&budget, 50), 10);
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(retries_allowed(&budget, 50), 0, "still inside the window");
        for _ in 0..100 {
            budget.record_request();
        }
        assert_eq!(retries_allowed(&budget, 50), 10, "200 requests allow 20, 10 were spent");
        tokio::time::advance(Duration::from_secs(SECONDS)).await;
        assert_eq!(
            retries_allowed(&budget, 50),
            0,
            "the requests left the window with the retries"
        );
    }
}
