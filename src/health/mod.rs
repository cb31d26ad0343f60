//! Backend health, pure and below everything that acts on it: the state machine per backend (`state`), the
//! verdict of one request's outcome (`passive`), a backend's recent traffic (`window`) and the outlier
//! rules' verdicts on it (`outlier`). Probes, the outlier sweep and the request path feed observations in;
//! each observation returns at most one [`Transition`], which the backend announces once (a log line,
//! metrics, an event, and for a timed ejection the timer that ends it). The request path reads only atomics.

pub mod outlier;
pub mod passive;
pub mod state;
pub mod window;

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use crate::config::HealthCheckConfig;

pub use state::{Policy, Source, Transition};

/// A snapshot of one backend's health, for the admin API.
#[derive(Debug, Clone)]
pub struct Report {
    pub healthy: bool,
    /// While unhealthy: which side took it out, and why (`after 3 failed probes: status 503`).
    pub down: Option<(Source, String)>,
    pub consecutive_successes: u32,
    pub consecutive_failures: u32,
    pub last_check: Option<SystemTime>,
    pub last_latency: Option<Duration>,
    pub last_error: Option<String>,
}

#[derive(Debug)]
struct Detail {
    state: state::State,
    policy: Policy,
    last_check: Option<SystemTime>,
    last_latency: Option<Duration>,
    last_error: Option<String>,
    down: Option<(Source, String)>,
}

/// One backend's health: atomics for the request path, the state machine behind a lock for observations.
#[derive(Debug)]
pub struct BackendHealth {
    healthy: AtomicBool,
    /// Set while a passive success would change the state; lets successful requests skip the lock.
    watching: AtomicBool,
    /// While ejected by traffic: 1 + the index of the detector in `TRAFFIC`; 0 otherwise.
    ejected_by: AtomicU8,
    /// When the backend last became healthy, in ms after `created` plus one; 0 when never (no slow start).
    recovered_at_ms: AtomicU64,
    created: Instant,
    detail: Mutex<Detail>,
}

impl BackendHealth {
    /// A backend's health in its initial state.
    pub fn new(config: &HealthCheckConfig) -> Self {
        let state = state::State::new(config.initial_state);
        Self {
            healthy: AtomicBool::new(state.is_healthy()),
            watching: AtomicBool::new(false),
            ejected_by: AtomicU8::new(0),
            recovered_at_ms: AtomicU64::new(0),
            created: Instant::now(),
            detail: Mutex::new(Detail {
                state,
                policy: Policy::from(config),
                down: None,
                last_check: None,
                last_latency: None,
                last_error: None,
            }),
        }
    }

    /// Whether the balancer may pick this backend.
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Which traffic detector ejected the backend, while it is out because of one.
    pub fn ejected_by(&self) -> Option<Source> {
        match self.ejected_by.load(Ordering::Relaxed) {
            0 => None,
            n => Source::TRAFFIC.get(usize::from(n) - 1).copied(),
        }
    }

    /// Time since the backend last recovered, if it ever did.
    pub fn since_recovery(&self) -> Option<Duration> {
        match self.recovered_at_ms.load(Ordering::Relaxed) {
            0 => None,
            at => Some(self.created.elapsed().saturating_sub(Duration::from_millis(at - 1))),
        }
    }

    /// The current state, for the admin API.
    pub fn report(&self) -> Report {
        let detail = self.lock();
        Report {
            healthy: detail.state.is_healthy(),
            down: detail.down.clone(),
            consecutive_successes: detail.state.consecutive_successes(),
            consecutive_failures: detail.state.consecutive_failures(),
            last_check: detail.last_check,
            last_latency: detail.last_latency,
            last_error: detail.last_error.clone(),
        }
    }

    /// Takes reloaded thresholds; the counters and the current state are kept.
    pub fn set_policy(&self, config: &HealthCheckConfig) {
        self.lock().policy = Policy::from(config);
    }

    fn lock(&self) -> MutexGuard<'_, Detail> {
        // Every update below leaves the state consistent, so a poisoned lock is still usable.
        self.detail.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records an active probe's outcome; returns the transition it caused, if any.
    pub fn record_probe(&self, outcome: Result<(), String>, latency: Duration) -> Option<Transition> {
        let mut detail = self.lock();
        detail.last_check = Some(SystemTime::now());
        detail.last_latency = Some(latency);
        let Detail { state, policy, .. } = &mut *detail;
        let transition = match outcome {
            Ok(()) => state.probe_succeeded(policy),
            Err(cause) => {
                let transition = state.probe_failed(&cause, policy);
                detail.last_error = Some(cause);
                transition
            }
        };
        self.publish(&mut detail, transition.as_ref());
        transition
    }

    /// Records a request's outcome; returns the transition it caused, if any. `may_eject` is asked before
    /// ejecting, whether the upstream can spare the backend.
    pub fn record_request(&self, outcome: Result<(), String>, may_eject: impl FnOnce() -> bool) -> Option<Transition> {
        if outcome.is_ok() && !self.watching.load(Ordering::Relaxed) {
            return None;
        }
        let mut detail = self.lock();
        let transition = match outcome {
            Ok(()) => {
                detail.state.request_succeeded();
                None
            }
            Err(cause) => {
                let Detail { state, policy, .. } = &mut *detail;
                let transition = state.request_failed(&cause, policy, may_eject);
                detail.last_error = Some(cause);
                transition
            }
        };
        self.publish(&mut detail, transition.as_ref());
        transition
    }

    /// An outlier detector's verdict: ejects the backend (when healthy) for a timed period.
    pub fn record_outlier(&self, source: Source, cause: &str) -> Option<Transition> {
        let mut detail = self.lock();
        let Detail { state, policy, .. } = &mut *detail;
        let transition = state.outlier(source, cause, policy);
        self.publish(&mut detail, transition.as_ref());
        transition
    }

    /// Ends timed ejection `epoch`: the backend goes back into rotation on probation.
    pub fn reactivate(&self, epoch: u64) -> Option<Transition> {
        let mut detail = self.lock();
        let transition = detail.state.reactivate(epoch);
        self.publish(&mut detail, transition.as_ref());
        transition
    }

    fn publish(&self, detail: &mut Detail, transition: Option<&Transition>) {
        if let Some(transition) = transition {
            detail.down = (!transition.healthy).then(|| (transition.source, transition.describe()));
            let ejected_by = match &detail.down {
                Some((source, _)) => Source::TRAFFIC
                    .iter()
                    .position(|s| s == source)
                    .map_or(0, |i| i as u8 + 1),
                None => 0,
            };
            self.ejected_by.store(ejected_by, Ordering::Relaxed);
        }
        self.healthy.store(detail.state.is_healthy(), Ordering::Relaxed);
        self.watching.store(detail.state.watching_requests(), Ordering::Relaxed);
        if transition.is_some_and(|t| t.healthy) {
            let now = u64::try_from(self.created.elapsed().as_millis()).unwrap_or(u64::MAX - 1);
            self.recovered_at_ms.store(now + 1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests;
