//! What the request path routes over: a snapshot of the routes, upstream pools and backends built from one
//! validated configuration. A snapshot is immutable; a reload builds a new one and swaps it in, carrying
//! backends over by identity so that their state survives.

mod router;
mod upstream;

use std::collections::HashMap;
use std::sync::Arc;

use crate::balancer::{Backend, BackendKey};
use crate::config::Config;
use crate::events::Events;

pub use router::{Destination, Router};
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
    /// Builds the first snapshot; its backends tell their events to `events`.
    pub fn new(config: Config, events: &Arc<Events>) -> Self {
        Self {
            router: Router::new(&config, |_| None, events),
            config: Arc::new(config),
            generation: 1,
        }
    }

    /// Builds the snapshot that follows `self` for `config`, keeping every backend whose identity
    /// (upstream, name, URL) is unchanged.
    pub fn next(&self, config: Config, events: &Arc<Events>) -> Self {
        let kept: HashMap<BackendKey, &Arc<Backend>> = self.backends().map(|b| (b.key(), b)).collect();
        Self {
            router: Router::new(&config, |key| kept.get(key).map(|b| Arc::clone(b)), events),
            config: Arc::new(config),
            generation: self.generation + 1,
        }
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
