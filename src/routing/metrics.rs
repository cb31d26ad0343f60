//! An upstream's metric handles, resolved when its pool is built, so the request path never builds a key.

use metrics::{counter, Counter};

use crate::metrics::{RETRIES_TOTAL, RETRY_BUDGET_EXHAUSTED_TOTAL, UPSTREAM_FAIL_OPEN_TOTAL, UPSTREAM_PANIC_TOTAL};

/// Counters of one upstream pool, registered at zero.
#[derive(Debug)]
pub struct UpstreamMetrics {
    /// Requests sent again to another backend.
    pub retries: Counter,
    /// Requests routed to an unhealthy backend because every backend was unhealthy.
    pub fail_open: Counter,
    /// Retries the retry budget refused.
    pub budget_exhausted: Counter,
    /// Requests balanced over every backend in panic mode.
    pub panic: Counter,
}

impl UpstreamMetrics {
    /// Handles for upstream `name`.
    pub fn new(name: &str) -> Self {
        let of = |metric: &'static str| counter!(metric, "upstream" => name.to_owned());
        Self {
            retries: of(RETRIES_TOTAL),
            fail_open: of(UPSTREAM_FAIL_OPEN_TOTAL),
            budget_exhausted: of(RETRY_BUDGET_EXHAUSTED_TOTAL),
            panic: of(UPSTREAM_PANIC_TOTAL),
        }
    }
}
