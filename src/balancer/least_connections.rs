//! Weighted least connections: the backend with the fewest requests in flight per unit of weight; ties go
//! round robin, so idle backends share the load instead of the first one taking it all.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use super::Backend;

/// The tie-breaking cursor.
#[derive(Debug, Default)]
pub struct LeastConnections {
    next: AtomicUsize,
}

impl LeastConnections {
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
        let mut best: Option<(usize, u128, u128)> = None;
        for offset in 0..count {
            let index = (start + offset) % count;
            let backend = &backends[index];
            if !accept(backend) {
                continue;
            }
            let load = backend.in_flight() as u128;
            let weight = u128::from(backend.weight.max(1));
            // load / weight < best_load / best_weight, compared without division.
            let lighter = match best {
                None => true,
                Some((_, best_load, best_weight)) => load * best_weight < best_load * weight,
            };
            if lighter {
                best = Some((index, load, weight));
            }
        }
        best.map(|(index, _, _)| index)
    }
}
