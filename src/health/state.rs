//! The per-backend health state machine, pure: observations in, at most one transition out.
//!
//! Active probes: unhealthy after `unhealthy_threshold` consecutive failures, healthy again after
//! `healthy_threshold` consecutive successes. Passive observation of traffic: `passive.unhealthy_threshold`
//! consecutive failed requests eject a healthy backend. Without probes, an ejected backend comes back on
//! probation after the reactivation period, doubled for each consecutive ejection up to `max_ejection`;
//! one failure on probation ejects it again, one success ends probation.

use std::time::Duration;

use crate::config::{HealthCheckConfig, InitialState};

/// Which side saw an outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Probe,
    Traffic,
}

impl Source {
    /// As logs name it.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Probe => "probes",
            Source::Traffic => "requests",
        }
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
    /// Without active probes: when to put the backend back on probation.
    pub reactivate_after: Option<Duration>,
}

impl Transition {
    /// What caused it, as logs and the console say it: `after 3 failed probes: status 503`.
    pub fn describe(&self) -> String {
        match (&self.cause, self.after) {
            (Some(cause), after) => format!("after {after} failed {}: {cause}", self.source.as_str()),
            (None, 0) => "ejection period over, back on probation".to_owned(),
            (None, after) => format!("after {after} successful {}", self.source.as_str()),
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
        if self.healthy || self.successes < policy.healthy_threshold {
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

    /// A request to the backend failed (connect error, timeout, or a failure status).
    pub fn request_failed(&mut self, cause: &str, policy: &Policy) -> Option<Transition> {
        if !policy.passive || !self.healthy {
            return None;
        }
        self.request_failures = self.request_failures.saturating_add(1);
        if !self.probation && self.request_failures < policy.passive_threshold {
            return None;
        }
        let after = self.request_failures;
        self.healthy = false;
        self.successes = 0;
        self.request_failures = 0;
        self.probation = false;
        self.ejections = self.ejections.saturating_add(1);
        let reactivate_after = (!policy.probes).then(|| ejection_period(policy, self.ejections));
        Some(Transition {
            healthy: false,
            after,
            source: Source::Traffic,
            cause: Some(cause.to_owned()),
            reactivate_after,
        })
    }

    /// The ejection period ended (passive checks only): back in rotation, on probation.
    pub fn reactivate(&mut self) -> Option<Transition> {
        if self.healthy {
            return None;
        }
        self.healthy = true;
        self.probation = true;
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
