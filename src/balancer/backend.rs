//! A backend as the request path sees it, and the guard that counts its requests in flight.
//!
//! A backend outlives configuration snapshots: a reload that keeps it (same upstream, name and URL) hands the
//! same object to the new snapshot, so its health, in-flight count, slow-start clock and pooled connections
//! carry over, and only its reloadable settings (weight, slow start, health settings) are updated in place.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use http::uri::{Authority, Scheme};
use http::Uri;

use crate::config::{BackendConfig, BackendTls, HealthCheckConfig, UpstreamProtocol};
use crate::events::Events;
use crate::health::BackendHealth;
use crate::metrics::BackendMetrics;
use crate::upstream::Transport;

use super::window::Window;

/// Weights are scaled by this factor so that slow start can ramp them in small steps.
pub const WEIGHT_SCALE: u64 = 100;

/// What makes two backends of two snapshots the same backend.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BackendKey {
    pub upstream: String,
    pub name: String,
    pub scheme: Scheme,
    pub authority: Authority,
    pub protocol: UpstreamProtocol,
    pub tls: Option<BackendTls>,
}

/// A backend server of an upstream pool.
#[derive(Debug)]
pub struct Backend {
    pub name: String,
    pub upstream: String,
    pub scheme: Scheme,
    pub authority: Authority,
    pub health: BackendHealth,
    /// Metric handles, resolved once.
    pub metrics: BackendMetrics,
    /// The last seconds of traffic: rates, failures, latency quantiles.
    pub window: Window,
    /// How requests reach it: connections, TLS, protocol, per-worker pools.
    pub transport: Transport,
    key: BackendKey,
    /// Where this backend's health transitions and drains are told.
    pub events: Arc<Events>,
    weight: AtomicU32,
    /// The slow-start window in milliseconds; 0 when off.
    slow_start_ms: AtomicU64,
    health_url: ArcSwapOption<Uri>,
    drained: AtomicBool,
    in_flight: AtomicUsize,
}

impl Backend {
    /// A backend of `upstream` with default health settings and no slow start, for one worker.
    pub fn new(upstream: &str, config: &BackendConfig) -> Result<Self, (String, String)> {
        Self::configured(upstream, config, &HealthCheckConfig::disabled(), None)
    }

    /// A backend of `upstream` with its upstream's health settings and slow-start window, for one worker.
    pub fn configured(
        upstream: &str,
        config: &BackendConfig,
        health: &HealthCheckConfig,
        slow_start: Option<Duration>,
    ) -> Result<Self, (String, String)> {
        Self::in_pool(upstream, config, health, slow_start, &Arc::default(), 1)
    }

    /// A backend of a running proxy's pool with `workers` worker threads, telling its events to `events`.
    /// Fails when its TLS files cannot be used: the key under the backend, and why.
    pub fn in_pool(
        upstream: &str,
        config: &BackendConfig,
        health: &HealthCheckConfig,
        slow_start: Option<Duration>,
        events: &Arc<Events>,
        workers: usize,
    ) -> Result<Self, (String, String)> {
        Ok(Self {
            transport: Transport::new(config, workers)?,
            key: Self::key_of(upstream, config),
            name: config.name.clone(),
            upstream: upstream.to_owned(),
            scheme: config.scheme.clone(),
            authority: config.authority.clone(),
            health: BackendHealth::new(health),
            metrics: BackendMetrics::new(upstream, &config.name),
            window: Window::default(),
            events: Arc::clone(events),
            weight: AtomicU32::new(config.weight),
            slow_start_ms: AtomicU64::new(window_ms(slow_start)),
            health_url: ArcSwapOption::new(config.health_url.clone().map(Arc::new)),
            drained: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
        })
    }

    /// The identity a reload matches backends by.
    pub fn key(&self) -> &BackendKey {
        &self.key
    }

    /// The identity `config` would have as a backend of `upstream`.
    pub fn key_of(upstream: &str, config: &BackendConfig) -> BackendKey {
        BackendKey {
            upstream: upstream.to_owned(),
            name: config.name.clone(),
            scheme: config.scheme.clone(),
            authority: config.authority.clone(),
            protocol: config.protocol,
            tls: config.tls.clone(),
        }
    }

    /// Takes a reloaded configuration's settings; state (health, in-flight, drain, clocks) is kept.
    pub fn apply(&self, config: &BackendConfig, health: &HealthCheckConfig, slow_start: Option<Duration>) {
        self.weight.store(config.weight, Ordering::Relaxed);
        self.slow_start_ms.store(window_ms(slow_start), Ordering::Relaxed);
        self.health_url.store(config.health_url.clone().map(Arc::new));
        self.health.set_policy(health);
    }

    /// The configured weight.
    pub fn weight(&self) -> u32 {
        self.weight.load(Ordering::Relaxed)
    }

    /// Where active checks go instead of the backend's own address, if configured.
    pub fn health_url(&self) -> Option<Arc<Uri>> {
        self.health_url.load_full()
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

    /// A response body from this backend failed (reset, cut short, or stalled): a passive-health failure.
    pub fn body_failed(self: &Arc<Self>, error: &(dyn std::error::Error + 'static)) {
        use crate::upstream::h1::BodyError;
        // The client's upload failing while the response streamed is the client's doing.
        if matches!(error.downcast_ref::<BodyError>(), Some(BodyError::RequestFailed)) {
            return;
        }
        let cause = match error.downcast_ref::<crate::error::ProxyError>() {
            Some(error) => error.cause(),
            None => format!("response body failed: {error}"),
        };
        if let Some(transition) = self.health.record_request(Err(cause)) {
            crate::health::announce(self, transition);
        }
    }

    /// Healthy and not drained: the balancer may pick it.
    pub fn is_usable(&self) -> bool {
        self.health.is_healthy() && !self.is_drained()
    }

    /// True while a recovered backend's weight is still ramping up.
    pub fn in_slow_start(&self) -> bool {
        self.effective_weight() < u64::from(self.weight()) * WEIGHT_SCALE
    }

    /// The weight the balancer uses, scaled by `WEIGHT_SCALE`: during slow start after a recovery it
    /// ramps from 10% to 100% of the configured weight.
    pub fn effective_weight(&self) -> u64 {
        let full = u64::from(self.weight()) * WEIGHT_SCALE;
        let window = Duration::from_millis(self.slow_start_ms.load(Ordering::Relaxed));
        let Some(since) = self.health.since_recovery() else {
            return full;
        };
        if window.is_zero() || since >= window {
            return full;
        }
        let fraction = (since.as_secs_f64() / window.as_secs_f64()).max(0.1);
        ((full as f64 * fraction) as u64).max(1)
    }
}

fn window_ms(window: Option<Duration>) -> u64 {
    window.map_or(0, |w| u64::try_from(w.as_millis()).unwrap_or(u64::MAX))
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
