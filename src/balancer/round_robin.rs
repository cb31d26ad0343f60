//! Plain round robin over the accepted backends.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use super::Backend;

/// A rotating cursor.
#[derive(Debug, Default)]
pub struct RoundRobin {
    next: AtomicUsize,
}

impl RoundRobin {
    pub(super) fn select(
        &self,
        backends: &[Arc<Backend>],
        accept: &impl Fn(&Backend) -> bool,
    ) -> Option<usize> {
        let count = backends.len();
        if count == 0 {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..count)
            .map(|offset| (start + offset) % count)
            .find(|&index| accept(&backends[index]))
    }
}
