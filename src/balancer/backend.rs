//! A backend as the request path sees it, and the guard that counts its requests in flight.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use http::uri::{Authority, Scheme};

use crate::config::BackendConfig;

/// A backend server of an upstream pool.
#[derive(Debug)]
pub struct Backend {
    pub name: String,
    pub upstream: String,
    pub scheme: Scheme,
    pub authority: Authority,
    pub weight: u32,
    in_flight: AtomicUsize,
}

impl Backend {
    /// A backend of `upstream` built from its config.
    pub fn new(upstream: &str, config: &BackendConfig) -> Self {
        Self {
            name: config.name.clone(),
            upstream: upstream.to_owned(),
            scheme: config.scheme.clone(),
            authority: config.authority.clone(),
            weight: config.weight,
            in_flight: AtomicUsize::new(0),
        }
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
