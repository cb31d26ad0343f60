//! An upstream pool: its backends, the balancer that picks among them, and what to do when they fail.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::balancer::{Backend, BackendKey, Balancer};
use crate::config::{AllUnhealthy, BalancerConfig, HealthCheckConfig, UpstreamConfig};
use crate::error::ProxyError;
use crate::events::Events;
use crate::metrics;

/// A named pool of backends.
#[derive(Debug)]
pub struct Upstream {
    pub name: String,
    pub backends: Vec<Arc<Backend>>,
    pub policy: BalancerConfig,
    pub health_check: Arc<HealthCheckConfig>,
    balancer: Balancer,
    /// Set while every backend is unhealthy, so the fail-open warning is logged once per episode.
    all_unhealthy: AtomicBool,
}

impl Upstream {
    /// Builds the pool from its config; `existing` hands back a backend that a previous snapshot already
    /// has under the same identity, which is kept with its state (`Snapshot::settle` gives it the new
    /// settings once the new snapshot is certain to be used).
    pub fn new(
        config: &UpstreamConfig,
        existing: impl Fn(&BackendKey) -> Option<Arc<Backend>>,
        events: &Arc<Events>,
        workers: usize,
    ) -> Result<Self, (String, String)> {
        let mut backends: Vec<Arc<Backend>> = Vec::with_capacity(config.backends.len());
        for (index, b) in config.backends.iter().enumerate() {
            let backend = match existing(&Backend::key_of(&config.name, b)) {
                Some(kept) => kept,
                None => Arc::new(
                    Backend::in_pool(
                        &config.name,
                        b,
                        &config.health_check,
                        config.balancer.slow_start,
                        events,
                        workers,
                    )
                    .map_err(|(key, message)| (format!("{}[{index}].{key}", config.key), message))?,
                ),
            };
            backends.push(backend);
        }
        let balancer = Balancer::new(config.balancer.algorithm, backends.len());
        Ok(Self {
            name: config.name.clone(),
            backends,
            policy: config.balancer,
            health_check: Arc::new(config.health_check.clone()),
            balancer,
            all_unhealthy: AtomicBool::new(false),
        })
    }

    /// Picks a backend among those `accept` allows.
    pub fn select(&self, accept: impl Fn(&Backend) -> bool) -> Option<Arc<Backend>> {
        self.balancer.select(&self.backends, accept)
    }

    /// Picks a healthy, non-drained backend not in `tried`. When no backend is healthy at all, applies
    /// `when_all_unhealthy`: fail open (any non-drained backend) or fail closed (503).
    pub fn pick(&self, tried: &[Arc<Backend>]) -> Result<Arc<Backend>, ProxyError> {
        let fresh = |b: &Backend| !tried.iter().any(|t| std::ptr::eq(t.as_ref(), b));
        if let Some(backend) = self.select(|b| b.is_usable() && fresh(b)) {
            if self.all_unhealthy.swap(false, Ordering::Relaxed) {
                tracing::info!(upstream = %self.name, "a healthy backend is available again");
            }
            return Ok(backend);
        }
        let no_backend = ProxyError::NoBackend {
            upstream: self.name.clone(),
            retry_after: None,
        };
        if self.backends.iter().any(|b| b.is_usable()) {
            // Healthy backends exist but were all tried for this request.
            return Err(no_backend);
        }
        match self.policy.when_all_unhealthy {
            AllUnhealthy::FailOpen => {
                let backend = self.select(|b| !b.is_drained() && fresh(b)).ok_or(no_backend)?;
                if !self.all_unhealthy.swap(true, Ordering::Relaxed) {
                    tracing::warn!(upstream = %self.name, "every backend is unhealthy: failing open, routing to all of them");
                }
                metrics::record_fail_open(&self.name);
                Ok(backend)
            }
            AllUnhealthy::FailClosed => {
                if !self.all_unhealthy.swap(true, Ordering::Relaxed) {
                    tracing::warn!(upstream = %self.name, "every backend is unhealthy: failing closed, answering 503");
                }
                let retry_after = self.health_check.interval.as_secs().max(1);
                Err(ProxyError::NoBackend {
                    upstream: self.name.clone(),
                    retry_after: Some(retry_after),
                })
            }
        }
    }

    /// Healthy, non-drained backends.
    pub fn usable_count(&self) -> usize {
        self.backends.iter().filter(|b| b.is_usable()).count()
    }
}
