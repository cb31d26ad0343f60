//! An upstream pool: its backends, the balancer that picks among them, and its traffic policy: the panic
//! threshold, circuit breaking, `when_all_unhealthy` and the retry budget. Affinity lives in `affinity.rs`,
//! what outcomes say about backends in `outcome.rs`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::balancer::{Backend, BackendKey, Balancer, Settings};
use crate::config::{AllUnhealthy, BackendConfig, BalancerConfig, HealthCheckConfig, UpstreamConfig};
use crate::discovery::{dns_name, Resolved};
use crate::error::{CircuitLimit, ProxyError};
use crate::events::Events;

use super::affinity::{sticky_token, Affinity};
use super::budget::RetryBudget;
use super::metrics::UpstreamMetrics;

/// A named pool of backends.
#[derive(Debug)]
pub struct Upstream {
    pub name: String,
    pub backends: Vec<Arc<Backend>>,
    /// Each backend's configuration (for endpoints found by DNS, one per address), in `backends`' order.
    pub configs: Vec<BackendConfig>,
    pub policy: BalancerConfig,
    pub health_check: Arc<HealthCheckConfig>,
    balancer: Balancer,
    /// The sticky-cookie value of each backend, in `backends`' order.
    tokens: Vec<u64>,
    budget: RetryBudget,
    /// Set while every backend is unhealthy, so the fail-open warning is logged once per episode.
    all_unhealthy: AtomicBool,
    /// Set while fewer backends are healthy than `min_healthy_percent`, for the same reason.
    panicking: AtomicBool,
    pub metrics: UpstreamMetrics,
}

impl Upstream {
    /// Builds the pool from its config; `existing` hands back a backend that a previous snapshot already
    /// has under the same identity, which is kept with its state (`Snapshot::settle` gives it the new
    /// settings once the new snapshot is certain to be used). Backends named by DNS become one endpoint per
    /// address in `resolved`.
    pub fn new(
        config: &UpstreamConfig,
        resolved: &Resolved,
        existing: impl Fn(&BackendKey) -> Option<Arc<Backend>>,
        events: &Arc<Events>,
        workers: usize,
    ) -> Result<Self, (String, String)> {
        let settings = Settings {
            health: &config.health_check,
            slow_start: config.balancer.slow_start,
            limits: &config.balancer.circuit_breaker,
        };
        let configs = endpoints(config, resolved);
        let mut backends: Vec<Arc<Backend>> = Vec::with_capacity(configs.len());
        for (index, b) in &configs {
            let backend = match existing(&Backend::key_of(&config.name, b)) {
                Some(kept) => kept,
                None => Arc::new(
                    Backend::in_pool(&config.name, b, &settings, events, workers)
                        .map_err(|(key, message)| (format!("{}[{index}].{key}", config.key), message))?,
                ),
            };
            backends.push(backend);
        }
        let configs: Vec<BackendConfig> = configs.into_iter().map(|(_, c)| c).collect();
        let balancer = Balancer::new(config.balancer.algorithm, &backends);
        let tokens = backends.iter().map(|b| sticky_token(b)).collect();
        Ok(Self {
            name: config.name.clone(),
            backends,
            configs,
            policy: config.balancer.clone(),
            health_check: Arc::new(config.health_check.clone()),
            balancer,
            tokens,
            budget: RetryBudget::new(config.balancer.retry_budget),
            all_unhealthy: AtomicBool::new(false),
            panicking: AtomicBool::new(false),
            metrics: UpstreamMetrics::new(&config.name),
        })
    }

    /// Gives every backend this pool's settings (see `Snapshot::settle`).
    pub fn settle(&self) {
        let settings = Settings {
            health: &self.health_check,
            slow_start: self.policy.slow_start,
            limits: &self.policy.circuit_breaker,
        };
        for (backend, config) in self.backends.iter().zip(&self.configs) {
            backend.apply(config, &settings);
        }
    }

    /// What in `request` ties it to a backend, by this pool's `hash_on` and sticky cookie.
    pub fn affinity(&self, request: &http::request::Parts, client: std::net::IpAddr) -> Affinity {
        Affinity::of(request, client, &self.policy)
    }

    /// The `Set-Cookie` value that ties the client to `backend`, when this pool has a sticky cookie and the
    /// request's cookie named another backend (or none).
    pub fn sticky_cookie(&self, backend: &Backend, affinity: &Affinity, secure: bool) -> Option<http::HeaderValue> {
        affinity.sticky_cookie(&self.policy, backend, secure)
    }

    /// Picks a backend among those `accept` allows.
    pub fn select(&self, accept: impl Fn(&Backend) -> bool) -> Option<Arc<Backend>> {
        self.balancer.select(&self.backends, accept, None)
    }

    /// Picks a usable backend not in `tried`: the one the request's sticky cookie names while it is usable,
    /// else the balancer's choice (by the request's hash key for `hash`). Backends whose circuit breaker
    /// refuses more requests are skipped; when every candidate is refused, a 503 says so at once. Below
    /// `min_healthy_percent` healthy backends, every non-drained backend is a candidate (panic mode); with
    /// none healthy, `when_all_unhealthy` decides: fail open (any non-drained backend) or closed (503).
    pub fn pick(&self, affinity: &Affinity, tried: &[Arc<Backend>]) -> Result<Arc<Backend>, ProxyError> {
        let fresh = |b: &Backend| !tried.iter().any(|t| std::ptr::eq(t.as_ref(), b));
        if let Some(token) = affinity.sticky {
            let named = self.tokens.iter().position(|&t| t == token).map(|i| &self.backends[i]);
            if let Some(backend) = named.filter(|b| b.is_usable() && fresh(b) && !b.is_full()) {
                return Ok(Arc::clone(backend));
            }
        }
        let select = |accept: &dyn Fn(&Backend) -> bool| {
            self.balancer
                .select(&self.backends, |b| accept(b) && fresh(b) && !b.is_full(), affinity.key)
                .ok_or_else(|| self.refusal(affinity, &|b| accept(b) && fresh(b)))
        };
        let usable = self.usable_count();
        let routable = self.backends.iter().filter(|b| !b.is_drained()).count();
        let threshold = usize::from(self.policy.min_healthy_percent);
        if usable > 0 && usable * 100 < threshold * routable {
            if !self.panicking.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    upstream = %self.name,
                    "only {usable} of {routable} backends are healthy, below min_healthy_percent {threshold}%: \
                     balancing over all of them"
                );
            }
            self.metrics.panic.increment(1);
            return select(&|b| !b.is_drained());
        }
        if usable > 0 && self.panicking.swap(false, Ordering::Relaxed) {
            tracing::info!(upstream = %self.name, "enough backends are healthy again: panic mode over");
        }
        match select(&|b| b.is_usable()) {
            Ok(backend) => {
                if self.all_unhealthy.swap(false, Ordering::Relaxed) {
                    tracing::info!(upstream = %self.name, "a healthy backend is available again");
                }
                return Ok(backend);
            }
            // Healthy backends exist but were all tried for this request, or are full.
            Err(refusal) if usable > 0 => return Err(refusal),
            Err(_) => {}
        }
        match self.policy.when_all_unhealthy {
            AllUnhealthy::FailOpen => {
                let backend = select(&|b| !b.is_drained())?;
                if !self.all_unhealthy.swap(true, Ordering::Relaxed) {
                    tracing::warn!(upstream = %self.name, "every backend is unhealthy: failing open, routing to all of them");
                }
                self.metrics.fail_open.increment(1);
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

    /// Why no candidate could be picked: a full backend's circuit breaker (the one the balancer would have
    /// picked), or no candidate at all.
    fn refusal(&self, affinity: &Affinity, candidate: &dyn Fn(&Backend) -> bool) -> ProxyError {
        match self.balancer.select(&self.backends, candidate, affinity.key) {
            Some(full) => ProxyError::CircuitOpen {
                backend: full.name.clone(),
                limit: CircuitLimit::MaxRequests,
            },
            None => ProxyError::NoBackend {
                upstream: self.name.clone(),
                retry_after: None,
            },
        }
    }

    /// Counts a request that arrived for this pool, for the retry budget.
    pub fn record_request(&self) {
        self.budget.record_request();
    }

    /// Whether the retry budget allows one more retry now; counts it when it does.
    pub fn allow_retry(&self) -> bool {
        let allowed = self.budget.try_retry();
        if !allowed {
            self.metrics.budget_exhausted.increment(1);
        }
        allowed
    }

    /// Healthy, non-drained backends.
    pub fn usable_count(&self) -> usize {
        self.backends.iter().filter(|b| b.is_usable()).count()
    }
}

/// The backends of `config`, with each backend named by DNS replaced by its endpoints in `resolved` (named
/// `backend@address`), each paired with its index in the file for error messages. A name not resolved
/// yet keeps one backend, connected by the system's resolver.
fn endpoints(config: &UpstreamConfig, resolved: &Resolved) -> Vec<(usize, BackendConfig)> {
    let mut endpoints = Vec::with_capacity(config.backends.len());
    for (index, backend) in config.backends.iter().enumerate() {
        match resolved.get(&dns_name(backend).unwrap_or_default()) {
            Some(addresses) => endpoints.extend(addresses.iter().map(|&address| {
                let endpoint = BackendConfig {
                    name: format!("{}@{address}", backend.name),
                    address: Some(address),
                    ..backend.clone()
                };
                (index, endpoint)
            })),
            None => endpoints.push((index, backend.clone())),
        }
    }
    endpoints
}
