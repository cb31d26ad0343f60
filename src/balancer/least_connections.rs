//! Weighted least connections: the backend with the fewest requests in flight per unit of weight; ties go
//! round robin among the tied backends, so idle backends share the load instead of the first one taking it all.

use std::cmp::Ordering as Compare;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use super::Backend;

/// The tie-breaking cursor.
#[derive(Debug, Default)]
pub struct LeastConnections {
    next: AtomicUsize,
}

/// In-flight requests per unit of weight, compared without division.
#[derive(Debug, Clone, Copy)]
struct Load {
    in_flight: u128,
    weight: u128,
}

impl Load {
    fn of(backend: &Backend) -> Self {
        Self {
            in_flight: backend.in_flight() as u128,
            weight: u128::from(backend.effective_weight().max(1)),
        }
    }

    fn compare(self, other: Self) -> Compare {
        (self.in_flight * other.weight).cmp(&(other.in_flight * self.weight))
    }
}

impl LeastConnections {
    pub(super) fn select(&self, backends: &[Arc<Backend>], accept: &impl Fn(&Backend) -> bool) -> Option<usize> {
        let mut lightest: Option<Load> = None;
        let mut tied = 0usize;
        for backend in backends.iter().filter(|b| accept(b)) {
            let load = Load::of(backend);
            match lightest.map(|l| load.compare(l)) {
                None | Some(Compare::Less) => {
                    lightest = Some(load);
                    tied = 1;
                }
                Some(Compare::Equal) => tied += 1,
                Some(Compare::Greater) => {}
            }
        }
        let lightest = lightest?;
        let turn = self.next.fetch_add(1, Ordering::Relaxed) % tied;
        let candidates = || backends.iter().enumerate().filter(|(_, b)| accept(b));
        // Counters move under concurrent requests; if the tie changed between the passes, take the lightest now.
        candidates()
            .filter(|(_, b)| Load::of(b).compare(lightest) != Compare::Greater)
            .nth(turn)
            .or_else(|| candidates().min_by(|(_, a), (_, b)| Load::of(a).compare(Load::of(b))))
            .map(|(index, _)| index)
    }
}
