//! Backend selection. Pure: given a pool's backends and their counters, pick one.
//!
//! Every algorithm takes an `accept` predicate; the caller uses it to skip backends that are unhealthy,
//! drained, or already tried for this request.

mod backend;
mod least_connections;
mod round_robin;
mod weighted;
pub mod window;

pub use backend::{Backend, BackendKey, InFlight, WEIGHT_SCALE};

use std::sync::Arc;

use crate::config::Algorithm;

/// One balancer per upstream pool; holds the algorithm's own state (cursor, current weights).
#[derive(Debug)]
pub enum Balancer {
    RoundRobin(round_robin::RoundRobin),
    Weighted(weighted::SmoothWeighted),
    LeastConnections(least_connections::LeastConnections),
}

impl Balancer {
    /// A balancer for a pool of `size` backends.
    pub fn new(algorithm: Algorithm, size: usize) -> Self {
        match algorithm {
            Algorithm::RoundRobin => Self::RoundRobin(round_robin::RoundRobin::default()),
            Algorithm::Weighted => Self::Weighted(weighted::SmoothWeighted::new(size)),
            Algorithm::LeastConnections => Self::LeastConnections(least_connections::LeastConnections::default()),
        }
    }

    /// Picks a backend among those `accept` allows; `None` when it allows none.
    pub fn select(&self, backends: &[Arc<Backend>], accept: impl Fn(&Backend) -> bool) -> Option<Arc<Backend>> {
        let index = match self {
            Self::RoundRobin(rr) => rr.select(backends, &accept),
            Self::Weighted(w) => w.select(backends, &accept),
            Self::LeastConnections(lc) => lc.select(backends, &accept),
        }?;
        debug_assert!(accept(&backends[index]), "selected a backend the caller refused");
        backends.get(index).cloned()
    }
}

#[cfg(test)]
mod tests;
