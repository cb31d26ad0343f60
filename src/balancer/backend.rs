//! A backend as the request path sees it, and the guard that counts its requests in flight.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::uri::{Authority, Scheme};
use http::Uri;

use crate::config::{BackendConfig, HealthCheckConfig};
use crate::health::BackendHealth;
use crate::metrics::BackendMetrics;

/// Weights are scaled by this factor so that slow start can ramp them in small steps.
pub const WEIGHT_SCALE: u64 = 100;

/// A backend server of an upstream pool.
#[derive(Debug)]
pub struct Backend {
    pub name: String,
    pub upstream: String,
    pub scheme: Scheme,
    pub authority: Authority,
    pub weight: u32,
    pub health_url: Option<Uri>,
    pub health: BackendHealth,
    /// Metric handles, resolved once.
    pub metrics: BackendMetrics,
    slow_start: Option<Duration>,
    drained: AtomicBool,
    in_flight: AtomicUsize,
}

impl Backend {
    /// A backend of `upstream` with default health settings and no slow start.
    pub fn new(upstream: &str, config: &BackendConfig) -> Self {
        Self::configured(upstream, config, &HealthCheckConfig::disabled(), None)
    }

    /// A backend of `upstream` with its upstream's health settings and slow-start window.
    pub fn configured(
        upstream: &str,
        config: &BackendConfig,
        health: &HealthCheckConfig,
        slow_start: Option<Duration>,
    ) -> Self {
        Self {
            name: config.name.clone(),
            upstream: upstream.to_owned(),
            scheme: config.scheme.clone(),
            authority: config.authority.clone(),
            weight: config.weight,
            health_url: config.health_url.clone(),
            health: BackendHealth::new(health),
            metrics: BackendMetrics::new(upstream, &config.name),
            slow_start,
            drained: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
        }
    }

    /// Requests currently sent to this backend whose responses have not been fully delivered.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Counts one request in flight until the returned guard is dropped.
    pub fn start_request(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight {
            backend: Arc::clone(self),
        }
    }

    /// An operator took it out of rotation; its in-flight requests finish.
    pub fn is_drained(&self) -> bool {
        self.drained.load(Ordering::Relaxed)
    }

    /// Takes the backend out of rotation (`true`) or puts it back; returns the previous setting.
    pub fn set_drained(&self, drained: bool) -> bool {
        self.drained.swap(drained, Ordering::Relaxed)
    }

    /// Healthy and not drained: the balancer may pick it.
    pub fn is_usable(&self) -> bool {
        self.health.is_healthy() && !self.is_drained()
    }

    /// The weight the balancer uses, scaled by `WEIGHT_SCALE`: during slow start after a recovery it
    /// ramps from 10% to 100% of the configured weight.
    pub fn effective_weight(&self) -> u64 {
        let full = u64::from(self.weight) * WEIGHT_SCALE;
        let (Some(window), Some(since)) = (self.slow_start, self.health.since_recovery()) else {
            return full;
        };
        if since >= window || window.is_zero() {
            return full;
        }
        let fraction = (since.as_secs_f64() / window.as_secs_f64()).max(0.1);
        ((full as f64 * fraction) as u64).max(1)
    }
}

/// One request in flight on a backend; dropping it, on any path, ends the count.
#[derive(Debug)]
pub struct InFlight {
    backend: Arc<Backend>,
}

impl InFlight {
    /// The backend this request went to.
    pub fn backend(&self) -> &Arc<Backend> {
        &self.backend
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let before = self.backend.in_flight.fetch_sub(1, Ordering::Relaxed);
        debug_assert!(before > 0, "in-flight count went below zero");
    }
}
