//! What the request path routes over: a snapshot of the routes, upstream pools and backends built from one
//! validated configuration. A snapshot is immutable; a reload builds a new one and swaps it in, carrying
//! backends over by identity so that their state survives.

mod affinity;
mod budget;
mod metrics;
mod outcome;
mod router;
mod upstream;

use std::collections::HashMap;
use std::sync::Arc;

use crate::balancer::{Backend, BackendKey};
use crate::config::{Config, ConfigError};
use crate::discovery::Resolved;
use crate::events::Events;
use crate::policy::Limiter;

fn error_in(config: &Config, (key, message): (String, String)) -> ConfigError {
    ConfigError {
        file: config.path.clone(),
        key,
        line: None,
        message,
    }
}

pub use affinity::Affinity;
pub use outcome::{InFlight, Observation};
pub use router::{Route, RouteTarget, Router};
pub use upstream::Upstream;

/// One configuration, built into routes and pools.
#[derive(Debug)]
pub struct Snapshot {
    pub config: Arc<Config>,
    /// Counts snapshots since start-up; the first is 1.
    pub generation: u64,
    router: Router,
}

impl Snapshot {
    /// Builds the first snapshot, with the endpoints DNS discovery `resolved`; its backends tell their events
    /// to `events`. Fails when a backend's TLS files cannot be used.
    pub fn new(config: Config, resolved: &Resolved, events: &Arc<Events>) -> Result<Self, ConfigError> {
        Ok(Self {
            router: Router::new(&config, resolved, |_| None, |_| None, events).map_err(|e| error_in(&config, e))?,
            config: Arc::new(config),
            generation: 1,
        })
    }

    /// Builds the snapshot that follows `self` for `config` and the endpoints DNS discovery `resolved`,
    /// keeping every backend whose identity (upstream, name, URL, address, protocol, TLS settings) is
    /// unchanged.
    pub fn next(&self, config: Config, resolved: &Resolved, events: &Arc<Events>) -> Result<Self, ConfigError> {
        let kept: HashMap<&BackendKey, &Arc<Backend>> = self.backends().map(|b| (b.key(), b)).collect();
        let limiters: HashMap<&str, &Arc<Limiter>> = self
            .router
            .routes()
            .filter_map(|r| Some((&*r.policy.label, r.policy.limiter()?)))
            .collect();
        Ok(Self {
            router: Router::new(
                &config,
                resolved,
                |key| kept.get(key).map(|b| Arc::clone(b)),
                |label| limiters.get(label).map(|l| Arc::clone(l)),
                events,
            )
            .map_err(|e| error_in(&config, e))?,
            config: Arc::new(config),
            generation: self.generation + 1,
        })
    }

    /// Gives every backend this snapshot's settings for it (weight, slow start, health thresholds, health
    /// URL). Backends carried over from the previous snapshot are shared with it, so this is done only once
    /// the new snapshot is going to be installed: a reload that fails later changes nothing.
    pub fn settle(&self) {
        for upstream in self.upstreams() {
            upstream.settle();
        }
    }

    /// Checks what only building a snapshot can (a backend's TLS files), without keeping it.
    pub fn check(config: &Config) -> Result<(), ConfigError> {
        Router::new(config, &Resolved::default(), |_| None, |_| None, &Arc::default())
            .map(drop)
            .map_err(|e| error_in(config, e))
    }

    /// The route table.
    pub fn router(&self) -> &Router {
        &self.router
    }

    /// Every upstream pool, in config order.
    pub fn upstreams(&self) -> &[Arc<Upstream>] {
        self.router.upstreams()
    }

    /// Every backend of every upstream.
    pub fn backends(&self) -> impl Iterator<Item = &Arc<Backend>> {
        self.upstreams().iter().flat_map(|u| u.backends.iter())
    }

    /// The upstream called `name`.
    pub fn upstream(&self, name: &str) -> Option<&Arc<Upstream>> {
        self.upstreams().iter().find(|u| u.name == name)
    }

    /// The backend `name` of upstream `upstream`.
    pub fn backend(&self, upstream: &str, name: &str) -> Option<&Arc<Backend>> {
        self.upstream(upstream)?.backends.iter().find(|b| b.name == name)
    }
}

#[cfg(test)]
mod tests;
