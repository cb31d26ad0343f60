//! An upstream pool: its backends, the balancer that picks among them, and its traffic policy: affinity
//! (hashing, sticky cookie), the panic threshold, circuit breaking, the retry budget, and what a request's
//! outcome says about the backend that served it.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use http::header::{self, HeaderValue};
use http::request::Parts;

use crate::balancer::maglev::hash_bytes;
use crate::balancer::{Backend, BackendKey, Balancer, Settings};
use crate::config::{AllUnhealthy, BackendConfig, BalancerConfig, HashOn, HealthCheckConfig, UpstreamConfig};
use crate::error::ProxyError;
use crate::events::Events;
use crate::health::{self, Source};
use crate::metrics;

use super::budget::RetryBudget;

/// The addresses DNS discovery found, by host and port.
pub type Resolved = std::collections::HashMap<(String, u16), Vec<SocketAddr>>;

/// A named pool of backends.
#[derive(Debug)]
pub struct Upstream {
    pub name: String,
    pub backends: Vec<Arc<Backend>>,
    /// Each backend's configuration (for endpoints found by DNS, one per address), in `backends`' order.
    pub configs: Vec<BackendConfig>,
    pub policy: BalancerConfig,
    pub health_check: Arc<HealthCheckConfig>,
    balancer: Balancer,
    /// The sticky-cookie value of each backend, in `backends`' order.
    tokens: Vec<u64>,
    budget: RetryBudget,
    /// Set while every backend is unhealthy, so the fail-open warning is logged once per episode.
    all_unhealthy: AtomicBool,
    /// Set while fewer backends are healthy than `min_healthy_percent`, for the same reason.
    panicking: AtomicBool,
}

/// What ties a request to a backend: its hash key (`algorithm: hash`) and the backend its sticky cookie
/// names.
#[derive(Debug, Clone, Copy, Default)]
pub struct Affinity {
    pub key: Option<u64>,
    pub sticky: Option<u64>,
}

impl Upstream {
    /// Builds the pool from its config; `existing` hands back a backend that a previous snapshot already
    /// has under the same identity, which is kept with its state (`Snapshot::settle` gives it the new
    /// settings once the new snapshot is certain to be used). Backends named by DNS become one endpoint per
    /// address in `resolved`.
    pub fn new(
        config: &UpstreamConfig,
        resolved: &Resolved,
        existing: impl Fn(&BackendKey) -> Option<Arc<Backend>>,
        events: &Arc<Events>,
        workers: usize,
    ) -> Result<Self, (String, String)> {
        let settings = Settings {
            health: &config.health_check,
            slow_start: config.balancer.slow_start,
            limits: &config.balancer.circuit_breaker,
        };
        let configs = endpoints(config, resolved);
        let mut backends: Vec<Arc<Backend>> = Vec::with_capacity(configs.len());
        for (index, b) in &configs {
            let backend = match existing(&Backend::key_of(&config.name, b)) {
                Some(kept) => kept,
                None => Arc::new(
                    Backend::in_pool(&config.name, b, &settings, events, workers)
                        .map_err(|(key, message)| (format!("{}[{index}].{key}", config.key), message))?,
                ),
            };
            backends.push(backend);
        }
        let configs: Vec<BackendConfig> = configs.into_iter().map(|(_, c)| c).collect();
        let balancer = Balancer::new(config.balancer.algorithm, &backends);
        let tokens = backends.iter().map(|b| sticky_token(b)).collect();
        Ok(Self {
            name: config.name.clone(),
            backends,
            configs,
            policy: config.balancer.clone(),
            health_check: Arc::new(config.health_check.clone()),
            balancer,
            tokens,
            budget: RetryBudget::new(config.balancer.retry_budget),
            all_unhealthy: AtomicBool::new(false),
            panicking: AtomicBool::new(false),
        })
    }

    /// Gives every backend this pool's settings (see `Snapshot::settle`).
    pub fn settle(&self) {
        let settings = Settings {
            health: &self.health_check,
            slow_start: self.policy.slow_start,
            limits: &self.policy.circuit_breaker,
        };
        for (backend, config) in self.backends.iter().zip(&self.configs) {
            backend.apply(config, &settings);
        }
    }

    /// Picks a backend among those `accept` allows.
    pub fn select(&self, accept: impl Fn(&Backend) -> bool) -> Option<Arc<Backend>> {
        self.balancer.select(&self.backends, accept, None)
    }

    /// What in `request` ties it to a backend, by this pool's `hash_on` and sticky cookie.
    pub fn affinity(&self, request: &Parts, client: IpAddr) -> Affinity {
        let key = self.policy.hash_on.as_ref().and_then(|on| match on {
            HashOn::Header(name) => {
                let values = request.headers.get_all(name.as_str());
                let mut values = values.iter().peekable();
                values.peek()?;
                // Every value of the field, in order, as one key.
                let mut hash = 0;
                for value in values {
                    hash = hash_bytes(value.as_bytes(), hash);
                }
                Some(hash)
            }
            HashOn::Cookie(name) => cookie(request, name).map(|value| hash_bytes(value, 0)),
            HashOn::ClientAddress => Some(match client {
                IpAddr::V4(ip) => hash_bytes(&ip.octets(), 0),
                IpAddr::V6(ip) => hash_bytes(&ip.octets(), 0),
            }),
            HashOn::Path => Some(hash_bytes(request.uri.path().as_bytes(), 0)),
        });
        let sticky = self.policy.sticky_cookie.as_ref().and_then(|sticky| {
            let value = cookie(request, &sticky.name)?;
            u64::from_str_radix(std::str::from_utf8(value).ok()?, 16).ok()
        });
        Affinity { key, sticky }
    }

    /// Picks a usable backend not in `tried`: the one the request's sticky cookie names while it is usable,
    /// else the balancer's choice (by the request's hash key for `hash`). Backends whose circuit breaker
    /// refuses more requests are skipped; when every candidate is refused, a 503 says so at once. Below
    /// `min_healthy_percent` healthy backends, every non-drained backend is a candidate (panic mode); with
    /// none healthy, `when_all_unhealthy` decides: fail open (any non-drained backend) or closed (503).
    pub fn pick(&self, affinity: &Affinity, tried: &[Arc<Backend>]) -> Result<Arc<Backend>, ProxyError> {
        let fresh = |b: &Backend| !tried.iter().any(|t| std::ptr::eq(t.as_ref(), b));
        if let Some(token) = affinity.sticky {
            let named = self.tokens.iter().position(|&t| t == token).map(|i| &self.backends[i]);
            if let Some(backend) = named.filter(|b| b.is_usable() && fresh(b) && !b.is_full()) {
                return Ok(Arc::clone(backend));
            }
        }
        let select = |accept: &dyn Fn(&Backend) -> bool| {
            self.balancer
                .select(&self.backends, |b| accept(b) && fresh(b) && !b.is_full(), affinity.key)
                .ok_or_else(|| self.refusal(affinity, &|b| accept(b) && fresh(b)))
        };
        let usable = self.usable_count();
        let routable = self.backends.iter().filter(|b| !b.is_drained()).count();
        let threshold = usize::from(self.policy.min_healthy_percent);
        if usable > 0 && usable * 100 < threshold * routable {
            if !self.panicking.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    upstream = %self.name,
                    "only {usable} of {routable} backends are healthy, below min_healthy_percent {threshold}%: \
                     balancing over all of them"
                );
            }
            metrics::record_panic(&self.name);
            return select(&|b| !b.is_drained());
        }
        if usable > 0 && self.panicking.swap(false, Ordering::Relaxed) {
            tracing::info!(upstream = %self.name, "enough backends are healthy again: panic mode over");
        }
        match select(&|b| b.is_usable()) {
            Ok(backend) => {
                if self.all_unhealthy.swap(false, Ordering::Relaxed) {
                    tracing::info!(upstream = %self.name, "a healthy backend is available again");
                }
                return Ok(backend);
            }
            // Healthy backends exist but were all tried for this request, or are full.
            Err(refusal) if usable > 0 => return Err(refusal),
            Err(_) => {}
        }
        match self.policy.when_all_unhealthy {
            AllUnhealthy::FailOpen => {
                let backend = select(&|b| !b.is_drained())?;
                if !self.all_unhealthy.swap(true, Ordering::Relaxed) {
                    tracing::warn!(upstream = %self.name, "every backend is unhealthy: failing open, routing to all of them");
                }
                metrics::record_fail_open(&self.name);
                Ok(backend)
            }
            AllUnhealthy::FailClosed => {
                if !self.all_unhealthy.swap(true, Ordering::Relaxed) {
                    tracing::warn!(upstream = %self.name, "every backend is unhealthy: failing closed, answering 503");
                }
                let retry_after = self.health_check.interval.as_secs().max(1);
                Err(ProxyError::NoBackend {
                    upstream: self.name.clone(),
                    retry_after: Some(retry_after),
                })
            }
        }
    }

    /// Why no candidate could be picked: a full backend's circuit breaker (the one the balancer would have
    /// picked), or no candidate at all.
    fn refusal(&self, affinity: &Affinity, candidate: &dyn Fn(&Backend) -> bool) -> ProxyError {
        match self.balancer.select(&self.backends, candidate, affinity.key) {
            Some(full) => ProxyError::CircuitOpen {
                backend: full.name.clone(),
                limit: "max_requests",
            },
            None => ProxyError::NoBackend {
                upstream: self.name.clone(),
                retry_after: None,
            },
        }
    }

    /// Counts a request in flight on `backend` until the returned guard is dropped; refused (503) when the
    /// backend's `max_requests` were reached since it was picked.
    pub fn begin(self: &Arc<Self>, backend: &Arc<Backend>) -> Result<InFlight, ProxyError> {
        if !backend.try_begin_request() {
            return Err(ProxyError::CircuitOpen {
                backend: backend.name.clone(),
                limit: "max_requests",
            });
        }
        Ok(InFlight {
            backend: Arc::clone(backend),
            upstream: Arc::clone(self),
        })
    }

    /// Counts a request that arrived for this pool, for the retry budget.
    pub fn record_request(&self) {
        self.budget.record_request();
    }

    /// Whether the retry budget allows one more retry now; counts it when it does.
    pub fn allow_retry(&self) -> bool {
        let allowed = self.budget.try_retry();
        if !allowed {
            metrics::record_retry_budget_exhausted(&self.name);
        }
        allowed
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
            metrics::record_ejection_prevented(&self.name, &backend.name, source.reason());
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

    /// Records what a request's outcome says about `backend` (a passive check), announcing any transition.
    pub fn record_outcome(&self, backend: &Arc<Backend>, verdict: Result<(), String>) {
        if let Some(transition) = backend
            .health
            .record_request(verdict, || self.may_eject(backend, Source::Traffic))
        {
            health::announce(backend, transition);
        }
    }

    /// The `Set-Cookie` value that ties the client to `backend`, when this pool has a sticky cookie and the
    /// request's cookie named another backend (or none).
    pub fn sticky_cookie(&self, backend: &Backend, affinity: &Affinity, secure: bool) -> Option<HeaderValue> {
        let sticky = self.policy.sticky_cookie.as_ref()?;
        let token = sticky_token(backend);
        if affinity.sticky == Some(token) {
            return None;
        }
        let mut cookie = format!(
            "{}={token:016x}; Path={}; HttpOnly; SameSite=Lax",
            sticky.name, sticky.path
        );
        if let Some(max_age) = sticky.max_age {
            cookie.push_str(&format!("; Max-Age={}", max_age.as_secs()));
        }
        if secure {
            cookie.push_str("; Secure");
        }
        HeaderValue::from_str(&cookie).ok()
    }

    /// Healthy, non-drained backends.
    pub fn usable_count(&self) -> usize {
        self.backends.iter().filter(|b| b.is_usable()).count()
    }
}

/// An opaque, stable name for a backend in the sticky cookie: it says nothing of its address.
fn sticky_token(backend: &Backend) -> u64 {
    hash_bytes(format!("{}/{}", backend.upstream, backend.name).as_bytes(), 0x571c)
}

/// The value of the first cookie called `name` in the request's Cookie fields.
fn cookie<'a>(request: &'a Parts, name: &str) -> Option<&'a [u8]> {
    request
        .headers
        .get_all(header::COOKIE)
        .iter()
        .flat_map(|value| value.as_bytes().split(|&b| b == b';'))
        .find_map(|pair| {
            let pair = pair.trim_ascii();
            let (key, value) = pair.split_at(pair.iter().position(|&b| b == b'=')?);
            (key == name.as_bytes()).then(|| value[1..].trim_ascii())
        })
}

/// The backends of `config`, with each backend named by DNS replaced by its endpoints in `resolved` (named
/// `backend@address`), each paired with its index in the file for error messages. A name not resolved
/// yet keeps one backend, connected by the system's resolver.
fn endpoints(config: &UpstreamConfig, resolved: &Resolved) -> Vec<(usize, BackendConfig)> {
    let mut endpoints = Vec::with_capacity(config.backends.len());
    for (index, backend) in config.backends.iter().enumerate() {
        match resolved.get(&dns_name(backend).unwrap_or_default()) {
            Some(addresses) => endpoints.extend(addresses.iter().map(|&address| {
                let endpoint = BackendConfig {
                    name: format!("{}@{address}", backend.name),
                    address: Some(address),
                    ..backend.clone()
                };
                (index, endpoint)
            })),
            None => endpoints.push((index, backend.clone())),
        }
    }
    endpoints
}

/// The DNS name and port of a backend whose URL names its host (not an IP address).
pub fn dns_name(backend: &BackendConfig) -> Option<(String, u16)> {
    let host = backend.authority.host();
    if host.starts_with('[') || host.parse::<IpAddr>().is_ok() {
        return None;
    }
    let default_port = if backend.scheme == http::uri::Scheme::HTTPS {
        443
    } else {
        80
    };
    Some((
        host.to_ascii_lowercase(),
        backend.authority.port_u16().unwrap_or(default_port),
    ))
}

/// One request in flight on a backend of a pool; dropping it, on any path, ends the count.
#[derive(Debug)]
pub struct InFlight {
    backend: Arc<Backend>,
    upstream: Arc<Upstream>,
}

impl InFlight {
    /// The backend this request went to.
    pub fn backend(&self) -> &Arc<Backend> {
        &self.backend
    }

    /// The response body from the backend failed (reset, cut short, or stalled): a passive-health failure.
    pub fn body_failed(&self, error: &(dyn std::error::Error + 'static)) {
        use crate::upstream::h1::BodyError;
        // The client's upload failing while the response streamed is the client's doing.
        if matches!(error.downcast_ref::<BodyError>(), Some(BodyError::RequestFailed)) {
            return;
        }
        let cause = match error.downcast_ref::<ProxyError>() {
            Some(error) => error.cause(),
            None => format!("response body failed: {error}"),
        };
        self.upstream.record_outcome(&self.backend, Err(cause));
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.backend.end_request();
    }
}
