//! Plain round robin over the accepted backends.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use super::Backend;

/// A rotating cursor over the backends the caller accepts.
#[derive(Debug, Default)]
pub struct RoundRobin {
    next: AtomicUsize,
}

impl RoundRobin {
    pub(super) fn select(&self, backends: &[Arc<Backend>], accept: &impl Fn(&Backend) -> bool) -> Option<usize> {
        // Rotating over the accepted backends only (not skipping forward from a refused one) keeps
        // the share even: a refused backend's turn is spread over all the others, not given to its neighbour.
        let accepted = backends.iter().filter(|b| accept(b)).count();
        if accepted == 0 {
            return None;
        }
        let turn = self.next.fetch_add(1, Ordering::Relaxed) % accepted;
        backends
            .iter()
            .enumerate()
            .filter(|(_, b)| accept(b))
            .nth(turn)
            .map(|(index, _)| index)
    }
}
