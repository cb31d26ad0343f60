//! Handles the request path records through without building a metric key: counters resolved once per
//! label value and then shared, a gauge held up for as long as a guard lives, and bounded label values.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{PoisonError, RwLock};

use http::{Method, StatusCode};
use metrics::{counter, Counter, SharedString};

use super::names::HTTP_REQUESTS_TOTAL;

/// Counters that differ by a small label key, resolved once per key and then shared: the request path
/// neither allocates nor hashes a metric key after the first request of each kind.
pub struct CounterCache<K> {
    counters: RwLock<HashMap<K, Counter>>,
}

impl<K: Eq + Hash> Default for CounterCache<K> {
    fn default() -> Self {
        Self {
            counters: RwLock::new(HashMap::new()),
        }
    }
}

impl<K: Eq + Hash> CounterCache<K> {
    /// Registers the counter for `key`, so that its series exists (at zero) before the first event.
    pub fn register(&self, key: K, make: impl FnOnce() -> Counter) {
        self.counters
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(key)
            .or_insert_with(make);
    }

    /// Increments the counter for `key`, registering it with `make` the first time.
    pub fn increment(&self, key: K, make: impl FnOnce() -> Counter) {
        if let Some(counter) = self.counters.read().unwrap_or_else(PoisonError::into_inner).get(&key) {
            counter.increment(1);
            return;
        }
        self.counters
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(key)
            .or_insert_with(make)
            .increment(1);
    }
}

impl<K> std::fmt::Debug for CounterCache<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CounterCache")
    }
}

/// `http_requests_total` by method, status and protocol, for one backend label.
pub type RequestCounters = CounterCache<(&'static str, u16, &'static str)>;

/// The `http_requests_total` counter of one method, status, backend and protocol.
pub fn request_counter(
    method: &'static str,
    status: StatusCode,
    backend: SharedString,
    protocol: &'static str,
) -> Counter {
    counter!(
        HTTP_REQUESTS_TOTAL,
        "method" => method,
        "status_code" => status_label(status),
        "backend" => backend,
        "protocol" => protocol,
    )
}

/// Increments a gauge now and decrements it on drop.
pub struct GaugeGuard(metrics::Gauge);

impl GaugeGuard {
    /// Holds `gauge` up by one until dropped.
    pub fn new(gauge: metrics::Gauge) -> Self {
        gauge.increment(1.0);
        Self(gauge)
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

/// The method as a bounded label: the standard ones by name, anything else `OTHER`.
pub fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "OTHER",
    }
}

/// The status code as a label; common codes without allocating.
pub fn status_label(status: StatusCode) -> SharedString {
    let code = match status.as_u16() {
        200 => "200",
        201 => "201",
        204 => "204",
        206 => "206",
        301 => "301",
        302 => "302",
        304 => "304",
        307 => "307",
        308 => "308",
        400 => "400",
        401 => "401",
        403 => "403",
        404 => "404",
        405 => "405",
        408 => "408",
        413 => "413",
        425 => "425",
        429 => "429",
        431 => "431",
        500 => "500",
        502 => "502",
        503 => "503",
        504 => "504",
        other => return SharedString::from(other.to_string()),
    };
    SharedString::const_str(code)
}
