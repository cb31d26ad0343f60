//! An upstream pool: its backends and the balancer that picks among them.

use std::sync::Arc;

use crate::balancer::{Backend, Balancer};
use crate::config::UpstreamConfig;

/// A named pool of backends.
#[derive(Debug)]
pub struct Upstream {
    pub name: String,
    pub backends: Vec<Arc<Backend>>,
    balancer: Balancer,
}

impl Upstream {
    /// Builds the pool from its config.
    pub fn new(config: &UpstreamConfig) -> Self {
        let backends: Vec<Arc<Backend>> = config
            .backends
            .iter()
            .map(|b| Arc::new(Backend::new(&config.name, b)))
            .collect();
        let balancer = Balancer::new(config.algorithm, backends.len());
        Self {
            name: config.name.clone(),
            backends,
            balancer,
        }
    }

    /// Picks a backend among those `accept` allows.
    pub fn select(&self, accept: impl Fn(&Backend) -> bool) -> Option<Arc<Backend>> {
        self.balancer.select(&self.backends, accept)
    }
}
