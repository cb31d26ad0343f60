//! A backend as the request path sees it.
//!
//! A backend outlives configuration snapshots: a reload that keeps it (same upstream, name and URL) hands the
//! same object to the new snapshot, so its health, in-flight count, slow-start clock and pooled connections
//! carry over, and only its reloadable settings (weight, slow start, health settings, limits) are updated in
//! place.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use http::uri::{Authority, Scheme};
use http::Uri;

use crate::config::{BackendConfig, BackendTls, CircuitBreaker, HealthCheckConfig, UpstreamProtocol};
use crate::events::Events;
use crate::health::window::Window;
use crate::health::{BackendHealth, Transition};
use crate::upstream::Transport;

use super::metrics::BackendMetrics;

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
    /// The endpoint's address, for backends found by DNS discovery.
    pub address: Option<std::net::SocketAddr>,
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
    /// `circuit_breaker.max_requests`; 0 for no limit.
    max_requests: AtomicU32,
    /// Responses in a row slower than the latency detector's threshold.
    slow_streak: AtomicU32,
    /// Keeps the circuit breaker's log lines to one a second.
    pub log_limiter: crate::logging::RateLimit,
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
        let settings = Settings {
            health,
            slow_start,
            limits: &CircuitBreaker::default(),
        };
        Self::in_pool(upstream, config, &settings, &Arc::default(), 1)
    }

    /// A backend of a running proxy's pool with `workers` worker threads, telling its events to `events`.
    /// Fails when its TLS files cannot be used: the key under the backend, and why.
    pub fn in_pool(
        upstream: &str,
        config: &BackendConfig,
        settings: &Settings<'_>,
        events: &Arc<Events>,
        workers: usize,
    ) -> Result<Self, (String, String)> {
        let backend = Self {
            transport: Transport::new(config, workers)?,
            key: Self::key_of(upstream, config),
            name: config.name.clone(),
            upstream: upstream.to_owned(),
            scheme: config.scheme.clone(),
            authority: config.authority.clone(),
            health: BackendHealth::new(settings.health),
            metrics: BackendMetrics::new(upstream, &config.name),
            window: Window::default(),
            events: Arc::clone(events),
            weight: AtomicU32::new(config.weight),
            slow_start_ms: AtomicU64::new(0),
            health_url: ArcSwapOption::empty(),
            drained: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
            max_requests: AtomicU32::new(0),
            slow_streak: AtomicU32::new(0),
            log_limiter: crate::logging::RateLimit::default(),
        };
        backend.apply(config, settings);
        Ok(backend)
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
            address: config.address,
        }
    }

    /// Takes a reloaded configuration's settings; state (health, in-flight, drain, clocks) is kept.
    pub fn apply(&self, config: &BackendConfig, settings: &Settings<'_>) {
        self.weight.store(config.weight, Ordering::Relaxed);
        self.slow_start_ms
            .store(window_ms(settings.slow_start), Ordering::Relaxed);
        self.health_url.store(config.health_url.clone().map(Arc::new));
        self.health.set_policy(settings.health);
        self.max_requests.store(settings.limits.max_requests, Ordering::Relaxed);
        self.transport.limits().set(settings.limits);
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

    /// Counts one more request in flight, unless `circuit_breaker.max_requests` are already; every
    /// request counted must end with [`Backend::end_request`].
    pub fn try_begin_request(&self) -> bool {
        let max = self.max_requests.load(Ordering::Relaxed) as usize;
        if max == 0 {
            self.in_flight.fetch_add(1, Ordering::Relaxed);
            return true;
        }
        self.in_flight
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| (n < max).then_some(n + 1))
            .is_ok()
    }

    /// Ends a request counted by [`Backend::try_begin_request`].
    pub fn end_request(&self) {
        let before = self.in_flight.fetch_sub(1, Ordering::Relaxed);
        debug_assert!(before > 0, "in-flight count went below zero");
    }

    /// True while `circuit_breaker.max_requests` requests are in flight.
    pub fn is_full(&self) -> bool {
        let max = self.max_requests.load(Ordering::Relaxed) as usize;
        max > 0 && self.in_flight() >= max
    }

    /// True while the circuit breaker refuses new requests (requests or connections at their limit).
    pub fn circuit_open(&self) -> bool {
        self.is_full() || self.transport.limits().is_open_circuit()
    }

    /// Counts a response slower (`true`) or faster than the latency detector's threshold; returns how
    /// many slow ones came in a row.
    pub fn record_slowness(&self, slow: bool) -> u32 {
        if slow {
            self.slow_streak.fetch_add(1, Ordering::Relaxed).saturating_add(1)
        } else {
            if self.slow_streak.load(Ordering::Relaxed) != 0 {
                self.slow_streak.store(0, Ordering::Relaxed);
            }
            0
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

    /// Tells of a health transition, once: a log line, the console's timeline, the metrics, and for a timed
    /// ejection the timer that puts the backend back on probation when its period is over.
    pub fn announce(self: &Arc<Self>, transition: Transition) {
        let (from, to) = if transition.healthy {
            ("unhealthy", "healthy")
        } else {
            ("healthy", "unhealthy")
        };
        let separator = if transition.after == 0 { ":" } else { "" };
        let what = format!("{from} -> {to}{separator} {}", transition.describe());
        if transition.healthy {
            tracing::info!("backend={} upstream={} {what}", self.name, self.upstream);
        } else {
            tracing::warn!("backend={} upstream={} {what}", self.name, self.upstream);
        }
        self.events
            .record("health", Some(&self.upstream), Some(&self.name), what);
        self.metrics.record_transition(transition.healthy, transition.source);
        if let Some((period, epoch)) = transition.reactivate_after {
            let backend = Arc::clone(self);
            tokio::spawn(async move {
                tokio::time::sleep(period).await;
                if let Some(transition) = backend.health.reactivate(epoch) {
                    backend.announce(transition);
                }
            });
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

/// A pool's settings for its backends.
#[derive(Debug, Clone, Copy)]
pub struct Settings<'a> {
    pub health: &'a HealthCheckConfig,
    pub slow_start: Option<Duration>,
    pub limits: &'a CircuitBreaker,
}
