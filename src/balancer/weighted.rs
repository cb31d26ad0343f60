//! Smooth weighted round robin: over a cycle of total weight each backend is picked exactly its weight
//! times, interleaved (weights 5,1,1 give a a b a c a a).

use std::sync::{Arc, Mutex, PoisonError};

use super::Backend;

/// Each backend's current weight, raised by its weight every pick and lowered by the total when chosen.
#[derive(Debug)]
pub struct SmoothWeighted {
    current: Mutex<Vec<i64>>,
}

impl SmoothWeighted {
    pub(super) fn new(size: usize) -> Self {
        Self {
            current: Mutex::new(vec![0; size]),
        }
    }

    pub(super) fn select(&self, backends: &[Arc<Backend>], accept: &impl Fn(&Backend) -> bool) -> Option<usize> {
        // A panic elsewhere cannot leave the weights inconsistent: every update below is complete.
        let mut current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        current.resize(backends.len(), 0);
        let mut total = 0i64;
        let mut best: Option<usize> = None;
        for (index, backend) in backends.iter().enumerate() {
            if !accept(backend) {
                continue;
            }
            let weight = i64::try_from(backend.effective_weight()).unwrap_or(i64::MAX / 1024);
            current[index] += weight;
            total += weight;
            if best.is_none_or(|b| current[index] > current[b]) {
                best = Some(index);
            }
        }
        let chosen = best?;
        current[chosen] -= total;
        Some(chosen)
    }
}
