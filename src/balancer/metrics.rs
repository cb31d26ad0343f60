//! A backend's metric handles, resolved once when the backend is built (after the recorder is installed),
//! so that nothing on the request path, in the prober or in a health transition builds a metric key. Every
//! series is registered at creation, so a backend shows in every panel and rare events (a first failure, a
//! first transition) show as a change from zero, which `rate()` can see.

use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
use metrics::{counter, histogram, Counter, Histogram, SharedString};

use crate::error::CircuitLimit;
use crate::health::Source;
use crate::metrics::{
    request_counter, status_label, CounterCache, RequestCounters, BACKEND_CONNECT_ERRORS_TOTAL,
    BACKEND_EJECTIONS_PREVENTED_TOTAL, BACKEND_EJECTIONS_TOTAL, BACKEND_HEALTH_TRANSITIONS_TOTAL,
    BACKEND_REQUESTS_TOTAL, BACKEND_RESPONSE_TIME_SECONDS, CIRCUIT_BREAKER_REJECTIONS_TOTAL, HEALTH_CHECKS_TOTAL,
    HEALTH_CHECK_FAILURES_TOTAL,
};
use crate::protocol::Protocol;

/// A backend's metric handles.
#[derive(Debug)]
pub struct BackendMetrics {
    upstream: SharedString,
    /// The backend's name as the `backend` label has it.
    pub label: SharedString,
    /// `http_requests_total` of the requests this backend answered, by method, status and protocol.
    pub requests: RequestCounters,
    attempts: CounterCache<u16>,
    response_time: Histogram,
    connect_errors: Counter,
    /// Transitions to healthy and to unhealthy.
    transitions: [Counter; 2],
    /// Ejections by traffic, and ejections `max_ejection_percent` prevented, by detector.
    ejections: [Counter; 3],
    ejections_prevented: [Counter; 3],
    circuit_rejections: [Counter; 3],
    /// Health checks that succeeded and failed.
    checks: [Counter; 2],
    check_failures: Counter,
}

impl BackendMetrics {
    /// Handles for `backend` of `upstream`.
    pub fn new(upstream: &str, backend: &str) -> Self {
        let upstream = SharedString::from_shared(Arc::<str>::from(upstream));
        let label = SharedString::from_shared(Arc::<str>::from(backend));
        let (u, b) = (upstream.clone(), label.clone());
        let per_backend = |name: &'static str| counter!(name, "upstream" => u.clone(), "backend" => b.clone());
        let by = |name: &'static str, key: &'static str, value: &'static str| counter!(name, "upstream" => u.clone(), "backend" => b.clone(), key => value);
        let metrics = Self {
            response_time: histogram!(BACKEND_RESPONSE_TIME_SECONDS, "upstream" => u.clone(), "backend" => b.clone()),
            connect_errors: per_backend(BACKEND_CONNECT_ERRORS_TOTAL),
            transitions: ["healthy", "unhealthy"].map(|to| by(BACKEND_HEALTH_TRANSITIONS_TOTAL, "to", to)),
            ejections: Source::TRAFFIC.map(|s| by(BACKEND_EJECTIONS_TOTAL, "reason", s.reason())),
            ejections_prevented: Source::TRAFFIC.map(|s| by(BACKEND_EJECTIONS_PREVENTED_TOTAL, "reason", s.reason())),
            circuit_rejections: CircuitLimit::ALL.map(|l| by(CIRCUIT_BREAKER_REJECTIONS_TOTAL, "limit", l.as_str())),
            checks: ["success", "failure"].map(|result| by(HEALTH_CHECKS_TOTAL, "result", result)),
            check_failures: per_backend(HEALTH_CHECK_FAILURES_TOTAL),
            requests: RequestCounters::default(),
            attempts: CounterCache::default(),
            upstream,
            label,
        };
        metrics
            .attempts
            .register(200, || metrics.attempt_counter(Some(StatusCode::OK)));
        for protocol in Protocol::CONNECTIONS.map(Protocol::label) {
            metrics.requests.register(("GET", 200, protocol), || {
                request_counter("GET", StatusCode::OK, metrics.label.clone(), protocol)
            });
        }
        metrics
    }

    fn attempt_counter(&self, status: Option<StatusCode>) -> Counter {
        let status = status.map_or(SharedString::const_str("error"), status_label);
        counter!(BACKEND_REQUESTS_TOTAL, "upstream" => self.upstream.clone(), "backend" => self.label.clone(), "status_code" => status)
    }

    /// One attempt sent to this backend: its status (`None`: no response) and time to response head.
    pub fn record_attempt(&self, status: Option<StatusCode>, elapsed: Duration) {
        let code = status.map_or(0, |s| s.as_u16());
        self.attempts.increment(code, || self.attempt_counter(status));
        self.response_time.record(elapsed.as_secs_f64());
    }

    /// A failed connect to this backend.
    pub fn record_connect_error(&self) {
        self.connect_errors.increment(1);
    }

    /// A health transition, and for an ejection by traffic, which detector made it.
    pub fn record_transition(&self, healthy: bool, source: Source) {
        self.transitions[usize::from(!healthy)].increment(1);
        if let Some(index) = Source::TRAFFIC.iter().position(|s| *s == source).filter(|_| !healthy) {
            self.ejections[index].increment(1);
        }
    }

    /// An ejection by `source` that `max_ejection_percent` prevented.
    pub fn record_ejection_prevented(&self, source: Source) {
        if let Some(index) = Source::TRAFFIC.iter().position(|s| *s == source) {
            self.ejections_prevented[index].increment(1);
        }
    }

    /// A request the circuit breaker refused at `limit`.
    pub fn record_circuit_open(&self, limit: CircuitLimit) {
        let index = CircuitLimit::ALL.iter().position(|l| *l == limit).unwrap_or(0);
        self.circuit_rejections[index].increment(1);
    }

    /// One active health check.
    pub fn record_check(&self, healthy: bool) {
        self.checks[usize::from(!healthy)].increment(1);
        if !healthy {
            self.check_failures.increment(1);
        }
    }
}
