//! Backend selection. Pure: given a pool's backends and their counters, pick one.
//!
//! Every algorithm takes an `accept` predicate; the caller uses it to skip backends that are unhealthy,
//! drained, full, or already tried for this request.

mod backend;
mod least_connections;
pub mod maglev;
mod metrics;
mod random;
mod round_robin;
mod weighted;

pub use backend::{Backend, BackendKey, Settings, WEIGHT_SCALE};
pub use metrics::BackendMetrics;

use std::sync::Arc;

use crate::config::Algorithm;

/// One balancer per upstream pool; holds the algorithm's own state (cursor, current weights, hash table).
#[derive(Debug)]
pub enum Balancer {
    RoundRobin(round_robin::RoundRobin),
    Weighted(weighted::SmoothWeighted),
    LeastConnections(least_connections::LeastConnections),
    P2c,
    Random,
    Hash(maglev::Maglev),
}

impl Balancer {
    /// A balancer for a pool of `backends`.
    pub fn new(algorithm: Algorithm, backends: &[Arc<Backend>]) -> Self {
        match algorithm {
            Algorithm::RoundRobin => Self::RoundRobin(round_robin::RoundRobin::default()),
            Algorithm::Weighted => Self::Weighted(weighted::SmoothWeighted::new(backends.len())),
            Algorithm::LeastConnections => Self::LeastConnections(least_connections::LeastConnections::default()),
            Algorithm::P2c => Self::P2c,
            Algorithm::Random => Self::Random,
            Algorithm::Hash => Self::Hash(maglev::Maglev::new(backends)),
        }
    }

    /// Picks a backend among those `accept` allows; `None` when it allows none. `key` is the request's hash
    /// key, for the hash balancer (without one, it picks at random by weight).
    pub fn select(
        &self,
        backends: &[Arc<Backend>],
        accept: impl Fn(&Backend) -> bool,
        key: Option<u64>,
    ) -> Option<Arc<Backend>> {
        let index = match (self, key) {
            (Self::RoundRobin(rr), _) => rr.select(backends, &accept),
            (Self::Weighted(w), _) => w.select(backends, &accept),
            (Self::LeastConnections(lc), _) => lc.select(backends, &accept),
            (Self::P2c, _) => random::power_of_two(backends, &accept),
            (Self::Random, _) | (Self::Hash(_), None) => random::weighted(backends, &accept),
            (Self::Hash(table), Some(key)) => table.select(backends, &accept, key),
        }?;
        debug_assert!(accept(&backends[index]), "selected a backend the caller refused");
        backends.get(index).cloned()
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod backend_tests;
