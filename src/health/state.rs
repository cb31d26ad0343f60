//! The per-backend health state machine, pure: observations in, at most one transition out.
//!
//! Active probes: unhealthy after `unhealthy_threshold` consecutive failures, healthy again after
//! `healthy_threshold` consecutive successes. Passive observation of traffic: `passive.unhealthy_threshold`
//! consecutive failed requests eject a healthy backend; so do the outlier detectors (a failure rate or a
//! latency over a sliding period), which report their verdicts here. Without probes, an ejected backend
//! comes back on probation after the reactivation period, doubled for each consecutive ejection up to
//! `max_ejection`; one failure on probation ejects it again, one success ends probation. Outlier ejections
//! are always timed: a backend that answers probes but fails or drags on real traffic stays out for its
//! period even while its probes succeed.

use std::time::Duration;

use crate::config::{HealthCheckConfig, InitialState};

/// Which side saw an outcome, or which detector ejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Probe,
    /// Consecutive failed requests.
    Traffic,
    /// The failure rate over a period.
    FailureRate,
    /// A latency quantile over a period, or consecutive slow responses.
    Latency,
}

impl Source {
    /// The detectors that eject on real traffic.
    pub const TRAFFIC: [Self; 3] = [Self::Traffic, Self::FailureRate, Self::Latency];

    /// As logs name it.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Probe => "probes",
            Source::Traffic => "requests",
            Source::FailureRate => "failure rate",
            Source::Latency => "latency",
        }
    }

    /// Why a backend is out, as the API and the metrics label it.
    pub fn reason(self) -> &'static str {
        match self {
            Source::Probe => "probes",
            Source::Traffic => "consecutive_failures",
            Source::FailureRate => "failure_rate",
            Source::Latency => "latency",
        }
    }

    /// An ejection decided by real traffic (limited by `max_ejection_percent`).
    pub fn is_traffic(self) -> bool {
        self != Source::Probe
    }
}

/// A change of state, emitted exactly once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    pub healthy: bool,
    /// How many consecutive observations caused it.
    pub after: u32,
    pub source: Source,
    /// The last failure's cause, for transitions to unhealthy.
    pub cause: Option<String>,
    /// For timed ejections: when to put the backend back on probation, and which ejection that ends.
    pub reactivate_after: Option<(Duration, u64)>,
}

impl Transition {
    /// What caused it, as logs and the console say it: `after 3 failed probes: status 503`.
    pub fn describe(&self) -> String {
        match (self.source, &self.cause, self.after) {
            (Source::FailureRate | Source::Latency, Some(cause), _) => cause.clone(),
            (source, Some(cause), after) => format!("after {after} failed {}: {cause}", source.as_str()),
            (_, None, 0) => "ejection period over, back on probation".to_owned(),
            (source, None, after) => format!("after {after} successful {}", source.as_str()),
        }
    }
}

/// The counters behind a backend's health.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct State {
    healthy: bool,
    successes: u32,
    failures: u32,
    request_failures: u32,
    ejections: u32,
    probation: bool,
    /// Out for a set period that probes cannot shorten (an outlier ejection).
    timed: bool,
    /// Counts ejections, so that a timer ends only the ejection it was set for.
    epoch: u64,
}

/// The thresholds of one upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub probes: bool,
    pub unhealthy_threshold: u32,
    pub healthy_threshold: u32,
    pub passive: bool,
    pub passive_threshold: u32,
    pub reactivation: Duration,
    pub max_ejection: Duration,
}

impl From<&HealthCheckConfig> for Policy {
    fn from(config: &HealthCheckConfig) -> Self {
        Self {
            probes: config.enabled,
            unhealthy_threshold: config.unhealthy_threshold,
            healthy_threshold: config.healthy_threshold,
            passive: config.passive.enabled,
            passive_threshold: config.passive.unhealthy_threshold,
            reactivation: config.passive.reactivation,
            max_ejection: config.passive.max_ejection,
        }
    }
}

impl State {
    /// The state before any observation.
    pub fn new(initial: InitialState) -> Self {
        Self {
            healthy: initial == InitialState::Healthy,
            successes: 0,
            failures: 0,
            request_failures: 0,
            ejections: 0,
            probation: false,
            timed: false,
            epoch: 0,
        }
    }

    pub fn is_healthy(&self) -> bool {
        self.healthy
    }
    pub fn consecutive_successes(&self) -> u32 {
        self.successes
    }
    pub fn consecutive_failures(&self) -> u32 {
        self.failures.max(self.request_failures)
    }
    /// True while a passive observation would change something (the request path's fast check).
    pub fn watching_requests(&self) -> bool {
        self.request_failures > 0 || self.probation
    }

    /// An active probe succeeded.
    pub fn probe_succeeded(&mut self, policy: &Policy) -> Option<Transition> {
        self.failures = 0;
        self.successes = self.successes.saturating_add(1);
        if self.healthy || self.timed || self.successes < policy.healthy_threshold {
            return None;
        }
        self.healthy = true;
        self.request_failures = 0;
        self.probation = false;
        Some(Transition {
            healthy: true,
            after: self.successes,
            source: Source::Probe,
            cause: None,
            reactivate_after: None,
        })
    }

    /// An active probe failed.
    pub fn probe_failed(&mut self, cause: &str, policy: &Policy) -> Option<Transition> {
        self.successes = 0;
        self.failures = self.failures.saturating_add(1);
        if !self.healthy || self.failures < policy.unhealthy_threshold {
            return None;
        }
        self.healthy = false;
        Some(Transition {
            healthy: false,
            after: self.failures,
            source: Source::Probe,
            cause: Some(cause.to_owned()),
            reactivate_after: None,
        })
    }

    /// A request to the backend got a good answer.
    pub fn request_succeeded(&mut self) {
        self.request_failures = 0;
        if self.probation {
            self.probation = false;
            self.ejections = 0;
        }
    }

    /// A request to the backend failed (connect error, timeout, or a failure status). `may_eject` says
    /// whether the upstream can spare the backend; when it cannot, the failure is counted but the backend
    /// stays (and the next failure asks again).
    pub fn request_failed(
        &mut self,
        cause: &str,
        policy: &Policy,
        may_eject: impl FnOnce() -> bool,
    ) -> Option<Transition> {
        if !policy.passive || !self.healthy {
            return None;
        }
        self.request_failures = self.request_failures.saturating_add(1);
        if !self.probation && self.request_failures < policy.passive_threshold {
            return None;
        }
        if !may_eject() {
            return None;
        }
        let after = self.request_failures;
        // With probes, they decide when a backend ejected for failing requests is back.
        Some(self.eject(Source::Traffic, after, cause, policy, !policy.probes))
    }

    /// An outlier detector found the backend failing or slow (`cause` says how). Ejects a healthy backend
    /// for a timed period that probes do not shorten.
    pub fn outlier(&mut self, source: Source, cause: &str, policy: &Policy) -> Option<Transition> {
        if !self.healthy {
            return None;
        }
        Some(self.eject(source, 0, cause, policy, true))
    }

    fn eject(&mut self, source: Source, after: u32, cause: &str, policy: &Policy, timed: bool) -> Transition {
        self.healthy = false;
        self.successes = 0;
        self.request_failures = 0;
        self.probation = false;
        self.timed = timed;
        self.ejections = self.ejections.saturating_add(1);
        self.epoch += 1;
        Transition {
            healthy: false,
            after,
            source,
            cause: Some(cause.to_owned()),
            reactivate_after: timed.then(|| (ejection_period(policy, self.ejections), self.epoch)),
        }
    }

    /// The period of ejection `epoch` ended: back in rotation, on probation. Nothing happens when the
    /// backend came back (or was ejected again) meanwhile.
    pub fn reactivate(&mut self, epoch: u64) -> Option<Transition> {
        if self.healthy || epoch != self.epoch {
            return None;
        }
        self.healthy = true;
        self.probation = true;
        self.timed = false;
        Some(Transition {
            healthy: true,
            after: 0,
            source: Source::Traffic,
            cause: None,
            reactivate_after: None,
        })
    }
}

/// `reactivation`, doubled per consecutive ejection, capped at `max_ejection`.
fn ejection_period(policy: &Policy, ejections: u32) -> Duration {
    let doublings = ejections.saturating_sub(1).min(16);
    policy
        .reactivation
        .saturating_mul(1 << doublings)
        .min(policy.max_ejection)
}
