//! What a request's outcome says about the backend that served it, reported through one entry point,
//! [`Upstream::observe`]: the backend's attempt metrics, its traffic window (which the outlier sweep
//! reads), its passive health and the consecutive-slow-responses rule all learn of an attempt there, and
//! of a response body that fails after its head was relayed (through the [`InFlight`] guard the body
//! carries). Failures of the client (an upload cut off or stalled) and of the proxy itself (its circuit
//! breaker, its own descriptors) say nothing about the backend and never reach its health.

use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;

use super::upstream::Upstream;
use crate::balancer::Backend;
use crate::body::{FailureFlag, Observer};
use crate::error::{CircuitLimit, Origin, ProxyError};
use crate::health::{passive, Source};

/// Something that happened to a request at a backend.
#[derive(Debug, Clone, Copy)]
pub enum Observation<'a> {
    /// An attempt ended: with a response head of this status, or with this error; `latency` runs from the
    /// moment the backend had the whole request.
    Attempt {
        result: Result<StatusCode, &'a ProxyError>,
        latency: Duration,
    },
    /// The response body failed after its head had been relayed.
    BodyFailed(&'a (dyn std::error::Error + 'static)),
}

impl Upstream {
    /// Reports `observation` about `backend`: the one way outcomes reach metrics, the traffic window, the
    /// latency rule and passive health (see the module comment).
    pub fn observe(&self, backend: &Arc<Backend>, observation: Observation<'_>) {
        match observation {
            Observation::Attempt { result, latency } => {
                backend.metrics.record_attempt(result.ok(), latency);
                if let Err(error) = result {
                    if matches!(
                        error,
                        ProxyError::ConnectFailed { .. } | ProxyError::ConnectTimeout { .. }
                    ) {
                        backend.metrics.record_connect_error();
                    }
                    self.record_refusal(error);
                }
                let Some(verdict) = passive::verdict(result, &self.health_check.passive.failure_statuses) else {
                    return;
                };
                backend.window.record(latency, verdict.is_err());
                if result.is_ok() {
                    self.slow_response(backend, latency);
                }
                self.record_verdict(backend, verdict);
            }
            Observation::BodyFailed(error) => {
                let cause = match error.downcast_ref::<ProxyError>() {
                    Some(error) if error.origin() != Origin::Upstream => return,
                    Some(error) => error.cause(),
                    None => format!("response body failed: {error}"),
                };
                backend.window.record_late_failure();
                self.record_verdict(backend, Err(cause));
            }
        }
    }

    /// Counts a request on `backend` until the returned guard is dropped; refused (503) when the backend's
    /// `max_requests` were reached since it was picked. `client_body` is set if the client's upload fails:
    /// a response body failing after that is the client's doing.
    pub fn begin(
        self: &Arc<Self>,
        backend: &Arc<Backend>,
        client_body: Option<FailureFlag>,
    ) -> Result<InFlight, ProxyError> {
        if !backend.try_begin_request() {
            let error = ProxyError::CircuitOpen {
                backend: backend.name.clone(),
                limit: CircuitLimit::MaxRequests,
            };
            self.record_refusal(&error);
            return Err(error);
        }
        Ok(InFlight {
            backend: Arc::clone(backend),
            upstream: Arc::clone(self),
            client_body,
        })
    }

    /// Counts a request the proxy refused for its own reasons (a circuit breaker, its own resources), and
    /// logs it at most once a second per backend.
    pub fn record_refusal(&self, error: &ProxyError) {
        let named = |name: &str| self.backends.iter().find(|b| b.name == name);
        match error {
            ProxyError::CircuitOpen { backend, limit } => {
                if let Some(backend) = named(backend) {
                    backend.metrics.record_circuit_open(*limit);
                    if backend.log_limiter.allow() {
                        tracing::warn!(upstream = %self.name, backend = %backend.name, "circuit breaker open: {limit} reached, answering 503");
                    }
                }
            }
            ProxyError::LocalExhausted { backend, cause } => {
                if let Some(backend) = named(backend).filter(|b| b.log_limiter.allow()) {
                    tracing::error!(upstream = %self.name, backend = %backend.name, "cannot connect, the proxy is out of resources ({cause}): answering 503; raise the file descriptor limit (LimitNOFILE, ulimit -n) or lower server.max_connections and quic.max_connections");
                }
            }
            _ => {}
        }
    }

    /// Whether the pool can spare `backend` for an ejection by traffic: never more than
    /// `max_ejection_percent` of its backends out at once, though one ejection is always allowed.
    pub fn may_eject(&self, backend: &Backend, source: Source) -> bool {
        let others = self
            .backends
            .iter()
            .filter(|b| !std::ptr::eq(b.as_ref(), backend) && b.health.ejected_by().is_some())
            .count();
        let percent = usize::from(self.health_check.passive.max_ejection_percent);
        let allowed = others == 0 || (others + 1) * 100 <= percent * self.backends.len();
        if !allowed {
            backend.metrics.record_ejection_prevented(source);
            tracing::debug!(
                upstream = %self.name,
                backend = %backend.name,
                "not ejected ({}): {others} of {} backends are out already, max_ejection_percent is {percent}",
                source.reason(),
                self.backends.len()
            );
        }
        allowed
    }

    /// Ejects `backend` for an outlier detector's `cause`, if the pool can spare it.
    pub fn eject(&self, backend: &Arc<Backend>, source: Source, cause: &str) {
        if !self.may_eject(backend, source) {
            return;
        }
        if let Some(transition) = backend.health.record_outlier(source, cause) {
            backend.announce(transition);
        }
    }

    /// What one request says about `backend` (a passive check), announcing any transition.
    fn record_verdict(&self, backend: &Arc<Backend>, verdict: Result<(), String>) {
        if let Some(transition) = backend
            .health
            .record_request(verdict, || self.may_eject(backend, Source::Traffic))
        {
            backend.announce(transition);
        }
    }

    /// Counts a response's latency for the `consecutive` rule; ejects the backend when that many in a row
    /// were slower than `unhealthy_latency`.
    fn slow_response(&self, backend: &Arc<Backend>, latency: Duration) {
        let Some(rule) = self.health_check.passive.latency.as_ref().filter(|r| r.consecutive > 0) else {
            return;
        };
        let streak = backend.record_slowness(latency > rule.unhealthy_latency);
        if streak >= rule.consecutive && backend.health.is_healthy() {
            let cause = format!(
                "{streak} responses in a row slower than {:?} (the last took {latency:.1?})",
                rule.unhealthy_latency
            );
            self.eject(backend, Source::Latency, &cause);
            backend.record_slowness(false);
        }
    }
}

/// One request in flight on a backend of a pool; dropping it, on any path, ends the count. Carried by the
/// response body, it reports a body that fails.
#[derive(Debug)]
pub struct InFlight {
    backend: Arc<Backend>,
    upstream: Arc<Upstream>,
    client_body: Option<FailureFlag>,
}

impl InFlight {
    /// The backend this request went to.
    pub fn backend(&self) -> &Arc<Backend> {
        &self.backend
    }
}

impl Observer for InFlight {
    fn failed(&self, error: &(dyn std::error::Error + 'static)) {
        // The client's upload failed first: the backend saw a request cut off, and answered accordingly.
        if self.client_body.as_ref().is_some_and(FailureFlag::is_set) {
            return;
        }
        self.upstream.observe(&self.backend, Observation::BodyFailed(error));
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.backend.end_request();
    }
}
