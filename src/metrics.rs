//! Every metric name in one place, the Prometheus recorder, and the recording helpers the request path uses.
//!
//! Histograms are exported as real buckets (`*_seconds` and `*_bytes`). Labels are bounded: method folded to
//! a fixed set, status code, protocol, upstream and backend names from config; never path or client address.
//! Process metrics are read from /proc at scrape time and appended to the exporter's output.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::hash::Hash;
use std::sync::{Arc, OnceLock, PoisonError, RwLock};
use std::time::Duration;

use http::{Method, StatusCode};
use metrics::{
    counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram, Counter, Histogram, SharedString,
    Unit,
};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::balancer::Backend;
use crate::routing::Snapshot;

pub const HTTP_REQUESTS_TOTAL: &str = "http_requests_total";
pub const HTTP_REQUEST_DURATION_SECONDS: &str = "http_request_duration_seconds";
pub const HTTP_REQUEST_SIZE_BYTES: &str = "http_request_size_bytes";
pub const HTTP_RESPONSE_SIZE_BYTES: &str = "http_response_size_bytes";
pub const HTTP_REQUESTS_IN_FLIGHT: &str = "http_requests_in_flight";
pub const BACKEND_REQUESTS_TOTAL: &str = "backend_requests_total";
pub const BACKEND_RESPONSE_TIME_SECONDS: &str = "backend_response_time_seconds";
pub const BACKEND_CONNECT_ERRORS_TOTAL: &str = "backend_connect_errors_total";
pub const BACKEND_HEALTH: &str = "backend_health";
pub const HEALTH_CHECKS_TOTAL: &str = "health_checks_total";
pub const HEALTH_CHECK_FAILURES_TOTAL: &str = "health_check_failures_total";
pub const BACKEND_HEALTH_TRANSITIONS_TOTAL: &str = "backend_health_transitions_total";
pub const UPSTREAM_FAIL_OPEN_TOTAL: &str = "upstream_fail_open_requests_total";
pub const RETRIES_TOTAL: &str = "proxy_retries_total";
pub const CONNECTIONS_OPEN: &str = "connections_open";
pub const CONNECTIONS_TOTAL: &str = "connections_total";
pub const QUIC_HANDSHAKES_TOTAL: &str = "quic_handshakes_total";
pub const QUIC_HANDSHAKE_FAILURES_TOTAL: &str = "quic_handshake_failures_total";
pub const QUIC_RETRY_PACKETS_SENT_TOTAL: &str = "quic_retry_packets_sent_total";
pub const QUIC_CONNECTIONS_REFUSED_TOTAL: &str = "quic_connections_refused_total";
pub const TCP_CONNECTIONS_REFUSED_TOTAL: &str = "tcp_connections_refused_total";
pub const QUIC_RTT_SECONDS: &str = "quic_rtt_seconds";
pub const QUIC_LOST_PACKETS_TOTAL: &str = "quic_lost_packets_total";
pub const QUIC_SENT_PACKETS_TOTAL: &str = "quic_sent_packets_total";
pub const BUILD_INFO: &str = "quic_proxy_build_info";
pub const CONFIG_INFO: &str = "quic_proxy_config_info";
pub const CONFIG_RELOADS_TOTAL: &str = "config_reloads_total";
pub const CONFIG_LAST_RELOAD_SUCCESS: &str = "config_last_reload_success_timestamp_seconds";
pub const BACKEND_IN_FLIGHT: &str = "backend_in_flight_requests";
pub const BACKEND_EFFECTIVE_WEIGHT: &str = "backend_effective_weight";
pub const BACKEND_DRAINED: &str = "backend_drained";
pub const BACKEND_CONNECTIONS: &str = "backend_connections";
pub const BACKEND_CIRCUIT_OPEN: &str = "backend_circuit_open";
pub const BACKEND_EJECTED: &str = "backend_ejected";
pub const BACKEND_EJECTIONS_TOTAL: &str = "backend_ejections_total";
pub const BACKEND_EJECTIONS_PREVENTED_TOTAL: &str = "backend_ejections_prevented_total";
pub const CIRCUIT_BREAKER_REJECTIONS_TOTAL: &str = "circuit_breaker_rejections_total";
pub const RETRY_BUDGET_EXHAUSTED_TOTAL: &str = "retry_budget_exhausted_total";
pub const UPSTREAM_PANIC_TOTAL: &str = "upstream_panic_requests_total";
pub const TRACING_SPANS_EXPORTED_TOTAL: &str = "tracing_spans_exported_total";
pub const TRACING_SPANS_DROPPED_TOTAL: &str = "tracing_spans_dropped_total";
pub const TRACING_EXPORT_FAILURES_TOTAL: &str = "tracing_export_failures_total";

/// Latency buckets from 1 ms to 60 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];
/// Size buckets from 100 B to 1 GiB.
const SIZE_BUCKETS: &[f64] = &[100.0, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1_073_741_824.0];

static HANDLE: OnceLock<Result<PrometheusHandle, String>> = OnceLock::new();

/// Installs the process-wide recorder once and returns its handle; later calls share the first.
pub fn install() -> Result<PrometheusHandle, String> {
    HANDLE
        .get_or_init(|| {
            let handle = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".to_owned()), LATENCY_BUCKETS)
                .and_then(|builder| builder.set_buckets_for_metric(Matcher::Suffix("_bytes".to_owned()), SIZE_BUCKETS))
                .and_then(|builder| builder.install_recorder())
                .map_err(|e| format!("cannot install the metrics recorder: {e}"))?;
            describe();
            gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
            register_process_wide();
            Ok(handle)
        })
        .clone()
}

fn describe() {
    describe_counter!(
        HTTP_REQUESTS_TOTAL,
        Unit::Count,
        "Requests answered, by method, status, backend and protocol."
    );
    describe_histogram!(
        HTTP_REQUEST_DURATION_SECONDS,
        Unit::Seconds,
        "Time from request head to response head."
    );
    describe_histogram!(HTTP_REQUEST_SIZE_BYTES, Unit::Bytes, "Request body sizes.");
    describe_histogram!(
        HTTP_RESPONSE_SIZE_BYTES,
        Unit::Bytes,
        "Response body sizes, as delivered to the client."
    );
    describe_gauge!(
        HTTP_REQUESTS_IN_FLIGHT,
        Unit::Count,
        "Requests waiting for their response head."
    );
    describe_counter!(
        BACKEND_REQUESTS_TOTAL,
        Unit::Count,
        "Attempts sent to each backend, by status (error when none)."
    );
    describe_histogram!(
        BACKEND_RESPONSE_TIME_SECONDS,
        Unit::Seconds,
        "Backend time to response head."
    );
    describe_counter!(
        BACKEND_CONNECT_ERRORS_TOTAL,
        Unit::Count,
        "Failed connects to a backend."
    );
    describe_counter!(HEALTH_CHECKS_TOTAL, Unit::Count, "Active health checks, by result.");
    describe_counter!(HEALTH_CHECK_FAILURES_TOTAL, Unit::Count, "Failed active health checks.");
    describe_counter!(
        BACKEND_HEALTH_TRANSITIONS_TOTAL,
        Unit::Count,
        "Health state changes, by new state."
    );
    describe_counter!(
        UPSTREAM_FAIL_OPEN_TOTAL,
        Unit::Count,
        "Requests routed while every backend was unhealthy."
    );
    describe_counter!(RETRIES_TOTAL, Unit::Count, "Requests sent again to another backend.");
    describe_gauge!(CONNECTIONS_OPEN, Unit::Count, "Client connections open, by protocol.");
    describe_counter!(
        CONNECTIONS_TOTAL,
        Unit::Count,
        "Client connections accepted, by protocol."
    );
    describe_counter!(QUIC_HANDSHAKES_TOTAL, Unit::Count, "Completed QUIC handshakes.");
    describe_counter!(QUIC_HANDSHAKE_FAILURES_TOTAL, Unit::Count, "Failed QUIC handshakes.");
    describe_counter!(
        QUIC_RETRY_PACKETS_SENT_TOTAL,
        Unit::Count,
        "Retry packets sent for address validation."
    );
    describe_counter!(
        QUIC_CONNECTIONS_REFUSED_TOTAL,
        Unit::Count,
        "QUIC connections refused at the connection limit."
    );
    describe_counter!(
        TCP_CONNECTIONS_REFUSED_TOTAL,
        Unit::Count,
        "TCP client connections closed on accept at server.max_connections."
    );
    describe_histogram!(
        QUIC_RTT_SECONDS,
        Unit::Seconds,
        "Smoothed round-trip time of QUIC connections at close."
    );
    describe_counter!(QUIC_LOST_PACKETS_TOTAL, Unit::Count, "QUIC packets declared lost.");
    describe_counter!(QUIC_SENT_PACKETS_TOTAL, Unit::Count, "QUIC packets sent.");
    describe_gauge!(
        BUILD_INFO,
        Unit::Count,
        "Always 1; the version label says which build runs."
    );
    describe_counter!(
        TRACING_SPANS_EXPORTED_TOTAL,
        Unit::Count,
        "Spans the trace collector accepted."
    );
    describe_counter!(
        TRACING_SPANS_DROPPED_TOTAL,
        Unit::Count,
        "Spans dropped: the export queue was full, or the collector did not take their batch."
    );
    describe_counter!(
        TRACING_EXPORT_FAILURES_TOTAL,
        Unit::Count,
        "Export calls the collector refused, failed or did not answer in time."
    );
    describe_counter!(
        CONFIG_RELOADS_TOTAL,
        Unit::Count,
        "Configuration reloads, by result (success, failure)."
    );
    describe_counter!(
        BACKEND_EJECTIONS_TOTAL,
        Unit::Count,
        "Backends ejected by traffic, by reason (consecutive_failures, failure_rate, latency)."
    );
    describe_counter!(
        BACKEND_EJECTIONS_PREVENTED_TOTAL,
        Unit::Count,
        "Ejections not made because max_ejection_percent of the upstream was out already, by reason."
    );
    describe_counter!(
        CIRCUIT_BREAKER_REJECTIONS_TOTAL,
        Unit::Count,
        "Requests refused with 503 by a backend's circuit breaker, by limit (max_requests, max_connections, max_pending)."
    );
    describe_counter!(
        RETRY_BUDGET_EXHAUSTED_TOTAL,
        Unit::Count,
        "Retries not made because the upstream's retry budget was spent."
    );
    describe_counter!(
        UPSTREAM_PANIC_TOTAL,
        Unit::Count,
        "Requests balanced over every backend, healthy or not, because fewer than min_healthy_percent were healthy."
    );
    describe_gauge!(
        CONFIG_LAST_RELOAD_SUCCESS,
        Unit::Seconds,
        "When the running configuration was loaded (start-up or the last successful reload), Unix time."
    );
}

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
    /// Registers the counter for `key` at zero, so that its series exists before the first event.
    fn register(&self, key: K, make: impl FnOnce() -> Counter) {
        self.counters
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(key)
            .or_insert_with(make)
            .absolute(0);
    }

    /// Increments the counter for `key`, registering it with `make` the first time.
    fn increment(&self, key: K, make: impl FnOnce() -> Counter) {
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
type RequestCounters = CounterCache<(&'static str, u16, &'static str)>;

/// A backend's metric handles. Built when the backend is, after the recorder is installed.
#[derive(Debug)]
pub struct BackendMetrics {
    upstream: SharedString,
    backend: SharedString,
    requests: RequestCounters,
    attempts: CounterCache<u16>,
    response_time: Histogram,
    connect_errors: Counter,
}

impl BackendMetrics {
    /// Handles for `backend` of `upstream`. The commonest request series (GET answered 200, per protocol)
    /// are registered at zero, so that a backend shows in every panel and query from start-up.
    pub fn new(upstream: &str, backend: &str) -> Self {
        let upstream = SharedString::from_shared(Arc::<str>::from(upstream));
        let backend = SharedString::from_shared(Arc::<str>::from(backend));
        let metrics = Self {
            response_time: histogram!(BACKEND_RESPONSE_TIME_SECONDS, "upstream" => upstream.clone(), "backend" => backend.clone()),
            connect_errors: counter!(BACKEND_CONNECT_ERRORS_TOTAL, "upstream" => upstream.clone(), "backend" => backend.clone()),
            requests: RequestCounters::default(),
            attempts: CounterCache::default(),
            upstream,
            backend,
        };
        metrics
            .attempts
            .register(200, || metrics.attempt_counter(Some(StatusCode::OK)));
        for protocol in PROTOCOLS {
            metrics.requests.register(("GET", 200, protocol), || {
                request_counter("GET", StatusCode::OK, metrics.backend.clone(), protocol)
            });
        }
        metrics
    }

    fn attempt_counter(&self, status: Option<StatusCode>) -> Counter {
        let status = status.map_or(SharedString::const_str("error"), status_label);
        counter!(BACKEND_REQUESTS_TOTAL, "upstream" => self.upstream.clone(), "backend" => self.backend.clone(), "status_code" => status)
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
}

/// The per-protocol handles of the request path.
#[derive(Debug)]
struct ProtocolMetrics {
    label: &'static str,
    duration: Histogram,
    in_flight: metrics::Gauge,
    request_size: Histogram,
    response_size: Histogram,
}

impl ProtocolMetrics {
    fn new(label: &'static str) -> Self {
        Self {
            label,
            duration: histogram!(HTTP_REQUEST_DURATION_SECONDS, "protocol" => label),
            in_flight: gauge!(HTTP_REQUESTS_IN_FLIGHT, "protocol" => label),
            request_size: histogram!(HTTP_REQUEST_SIZE_BYTES, "protocol" => label),
            response_size: histogram!(HTTP_RESPONSE_SIZE_BYTES, "protocol" => label),
        }
    }
}

/// The request path's metric handles, resolved once when the core is built.
#[derive(Debug)]
pub struct RequestMetrics {
    protocols: [ProtocolMetrics; 4],
    /// Requests answered without a backend (no route, refused, no backend available).
    unrouted: RequestCounters,
}

impl Default for RequestMetrics {
    fn default() -> Self {
        Self {
            protocols: ["h3", "h2", "http/1.1", "http/1.0"].map(ProtocolMetrics::new),
            unrouted: RequestCounters::default(),
        }
    }
}

impl RequestMetrics {
    fn protocol(&self, label: &'static str) -> &ProtocolMetrics {
        self.protocols
            .iter()
            .find(|p| p.label == label)
            .unwrap_or(&self.protocols[2])
    }

    /// Counts a request in flight until the returned guard is dropped.
    pub fn in_flight(&self, protocol: &'static str) -> GaugeGuard {
        GaugeGuard::new(self.protocol(protocol).in_flight.clone())
    }

    /// The histogram a request body's size goes to.
    pub fn request_size(&self, protocol: &'static str) -> Histogram {
        self.protocol(protocol).request_size.clone()
    }

    /// The histogram a response body's size goes to.
    pub fn response_size(&self, protocol: &'static str) -> Histogram {
        self.protocol(protocol).response_size.clone()
    }

    /// Records one answered request, by the backend that answered it (if any).
    pub fn record_request(
        &self,
        method: &Method,
        status: StatusCode,
        backend: Option<&BackendMetrics>,
        protocol: &'static str,
        elapsed: Duration,
    ) {
        let method = method_label(method);
        let (counters, backend_label) = match backend {
            Some(b) => (&b.requests, b.backend.clone()),
            None => (&self.unrouted, SharedString::const_str("-")),
        };
        counters.increment((method, status.as_u16(), protocol), || {
            request_counter(method, status, backend_label, protocol)
        });
        self.protocol(protocol).duration.record(elapsed.as_secs_f64());
    }
}

fn request_counter(method: &'static str, status: StatusCode, backend: SharedString, protocol: &'static str) -> Counter {
    counter!(
        HTTP_REQUESTS_TOTAL,
        "method" => method,
        "status_code" => status_label(status),
        "backend" => backend,
        "protocol" => protocol,
    )
}

/// The client protocols, as the `protocol` label names them.
const PROTOCOLS: [&str; 3] = ["h3", "h2", "http/1.1"];

/// Counts an open client connection until the returned guard is dropped.
pub fn connection_open(protocol: &'static str) -> GaugeGuard {
    counter!(CONNECTIONS_TOTAL, "protocol" => protocol).increment(1);
    GaugeGuard::new(gauge!(CONNECTIONS_OPEN, "protocol" => protocol))
}

/// Increments a gauge now and decrements it on drop.
pub struct GaugeGuard(metrics::Gauge);

impl GaugeGuard {
    fn new(gauge: metrics::Gauge) -> Self {
        gauge.increment(1.0);
        Self(gauge)
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

/// Records one active health check.
pub fn record_health_check(upstream: &str, backend: &str, healthy: bool) {
    let (upstream, backend) = (upstream.to_owned(), backend.to_owned());
    let result = if healthy { "success" } else { "failure" };
    counter!(HEALTH_CHECKS_TOTAL, "upstream" => upstream.clone(), "backend" => backend.clone(), "result" => result)
        .increment(1);
    if !healthy {
        counter!(HEALTH_CHECK_FAILURES_TOTAL, "upstream" => upstream, "backend" => backend).increment(1);
    }
}

/// Registers a backend's series at start-up, so that rare events (a first failure, a first transition)
/// show as a change from zero instead of appearing with their first increment, which `rate()` cannot see.
pub fn register_backend(upstream: &str, backend: &str) {
    let (upstream, backend) = (upstream.to_owned(), backend.to_owned());
    for to in ["healthy", "unhealthy"] {
        counter!(BACKEND_HEALTH_TRANSITIONS_TOTAL, "upstream" => upstream.clone(), "backend" => backend.clone(), "to" => to)
            .absolute(0);
    }
    for reason in EJECTION_REASONS {
        counter!(BACKEND_EJECTIONS_TOTAL, "upstream" => upstream.clone(), "backend" => backend.clone(), "reason" => reason)
            .absolute(0);
        counter!(BACKEND_EJECTIONS_PREVENTED_TOTAL, "upstream" => upstream.clone(), "backend" => backend.clone(), "reason" => reason)
            .absolute(0);
    }
    for limit in CIRCUIT_LIMITS {
        counter!(CIRCUIT_BREAKER_REJECTIONS_TOTAL, "upstream" => upstream.clone(), "backend" => backend.clone(), "limit" => limit)
            .absolute(0);
    }
    counter!(HEALTH_CHECK_FAILURES_TOTAL, "upstream" => upstream, "backend" => backend).absolute(0);
}

/// Why traffic ejects a backend, as the metrics label it.
const EJECTION_REASONS: [&str; 3] = ["consecutive_failures", "failure_rate", "latency"];
/// The circuit breaker's limits, as the metrics label them.
const CIRCUIT_LIMITS: [&str; 3] = ["max_requests", "max_connections", "max_pending"];

/// Records a backend ejected by traffic.
pub fn record_ejection(upstream: &str, backend: &str, reason: &'static str) {
    counter!(BACKEND_EJECTIONS_TOTAL, "upstream" => upstream.to_owned(), "backend" => backend.to_owned(), "reason" => reason)
        .increment(1);
}

/// Records an ejection that `max_ejection_percent` prevented.
pub fn record_ejection_prevented(upstream: &str, backend: &str, reason: &'static str) {
    counter!(BACKEND_EJECTIONS_PREVENTED_TOTAL, "upstream" => upstream.to_owned(), "backend" => backend.to_owned(), "reason" => reason)
        .increment(1);
}

/// Records a request a backend's circuit breaker refused.
pub fn record_circuit_open(upstream: &str, backend: &str, limit: &'static str) {
    counter!(CIRCUIT_BREAKER_REJECTIONS_TOTAL, "upstream" => upstream.to_owned(), "backend" => backend.to_owned(), "limit" => limit)
        .increment(1);
}

/// Records a retry the retry budget refused.
pub fn record_retry_budget_exhausted(upstream: &str) {
    counter!(RETRY_BUDGET_EXHAUSTED_TOTAL, "upstream" => upstream.to_owned()).increment(1);
}

/// Records a request balanced in panic mode.
pub fn record_panic(upstream: &str) {
    counter!(UPSTREAM_PANIC_TOTAL, "upstream" => upstream.to_owned()).increment(1);
}

/// Registers the process-wide series of rare events at zero (see `register_backend`).
fn register_process_wide() {
    for name in [
        QUIC_HANDSHAKES_TOTAL,
        QUIC_HANDSHAKE_FAILURES_TOTAL,
        QUIC_RETRY_PACKETS_SENT_TOTAL,
        QUIC_CONNECTIONS_REFUSED_TOTAL,
        TCP_CONNECTIONS_REFUSED_TOTAL,
        QUIC_LOST_PACKETS_TOTAL,
        QUIC_SENT_PACKETS_TOTAL,
        TRACING_SPANS_EXPORTED_TOTAL,
        TRACING_SPANS_DROPPED_TOTAL,
        TRACING_EXPORT_FAILURES_TOTAL,
    ] {
        counter!(name).absolute(0);
    }
    for result in ["success", "failure"] {
        counter!(CONFIG_RELOADS_TOTAL, "result" => result).absolute(0);
    }
    for protocol in PROTOCOLS {
        counter!(CONNECTIONS_TOTAL, "protocol" => protocol).absolute(0);
        gauge!(CONNECTIONS_OPEN, "protocol" => protocol).set(0.0);
    }
    // An empty histogram renders its buckets at zero.
    drop(histogram!(QUIC_RTT_SECONDS));
    gauge!(CONFIG_LAST_RELOAD_SUCCESS).set(unix_now());
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Counts spans the collector accepted.
pub fn record_spans_exported(count: u64) {
    counter!(TRACING_SPANS_EXPORTED_TOTAL).increment(count);
}

/// Counts spans dropped before export.
pub fn record_spans_dropped(count: u64) {
    counter!(TRACING_SPANS_DROPPED_TOTAL).increment(count);
}

/// Counts an export call that failed, and its spans as dropped.
pub fn record_span_export_failure(spans: u64) {
    counter!(TRACING_EXPORT_FAILURES_TOTAL).increment(1);
    record_spans_dropped(spans);
}

/// Records a reload attempt.
pub fn record_reload(success: bool) {
    let result = if success { "success" } else { "failure" };
    counter!(CONFIG_RELOADS_TOTAL, "result" => result).increment(1);
    if success {
        gauge!(CONFIG_LAST_RELOAD_SUCCESS).set(unix_now());
    }
}

/// Registers an upstream's series at start-up (see `register_backend`).
pub fn register_upstream(upstream: &str) {
    for name in [
        RETRIES_TOTAL,
        UPSTREAM_FAIL_OPEN_TOTAL,
        RETRY_BUDGET_EXHAUSTED_TOTAL,
        UPSTREAM_PANIC_TOTAL,
    ] {
        counter!(name, "upstream" => upstream.to_owned()).absolute(0);
    }
}

/// Records a backend's health transition.
pub fn record_health_transition(upstream: &str, backend: &str, healthy: bool) {
    let to = if healthy { "healthy" } else { "unhealthy" };
    counter!(BACKEND_HEALTH_TRANSITIONS_TOTAL, "upstream" => upstream.to_owned(), "backend" => backend.to_owned(), "to" => to)
        .increment(1);
}

/// Records a request routed to an unhealthy backend because every backend of its upstream is unhealthy.
pub fn record_fail_open(upstream: &str) {
    counter!(UPSTREAM_FAIL_OPEN_TOTAL, "upstream" => upstream.to_owned()).increment(1);
}

/// Records a retry on another backend.
pub fn record_retry(upstream: &str) {
    counter!(RETRIES_TOTAL, "upstream" => upstream.to_owned()).increment(1);
}

/// Records the outcome of a QUIC handshake.
pub fn record_quic_handshake(ok: bool) {
    counter!(if ok {
        QUIC_HANDSHAKES_TOTAL
    } else {
        QUIC_HANDSHAKE_FAILURES_TOTAL
    })
    .increment(1);
}

/// Records a Retry packet sent.
pub fn record_quic_retry() {
    counter!(QUIC_RETRY_PACKETS_SENT_TOTAL).increment(1);
}

/// Records a QUIC connection refused at the limit.
pub fn record_quic_refused() {
    counter!(QUIC_CONNECTIONS_REFUSED_TOTAL).increment(1);
}

/// Records a TCP connection closed at `server.max_connections`.
pub fn record_tcp_refused() {
    counter!(TCP_CONNECTIONS_REFUSED_TOTAL).increment(1);
}

/// Records a closed QUIC connection's path statistics.
pub fn record_quic_connection(stats: &quinn::ConnectionStats) {
    histogram!(QUIC_RTT_SECONDS).record(stats.path.rtt.as_secs_f64());
    counter!(QUIC_LOST_PACKETS_TOTAL).increment(stats.path.lost_packets);
    counter!(QUIC_SENT_PACKETS_TOTAL).increment(stats.path.sent_packets);
}

/// The method as a bounded label: the standard ones by name, anything else `OTHER`.
fn method_label(method: &Method) -> &'static str {
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
fn status_label(status: StatusCode) -> SharedString {
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

/// Process metrics in the Prometheus text format, read from /proc at scrape time (Linux only; empty elsewhere).
pub fn render_process_metrics() -> String {
    let mut out = String::new();
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|value| value.parse::<f64>().ok())
    };
    if let Some(rss_kib) = field("VmRSS:") {
        metric(
            &mut out,
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory size in bytes.",
            rss_kib * 1024.0,
        );
    }
    if let Some(threads) = field("Threads:") {
        metric(
            &mut out,
            "process_threads",
            "gauge",
            "OS threads in the process.",
            threads,
        );
    }
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which may contain spaces) start at the state, field 3.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |index: usize| fields.get(index).and_then(|v| v.parse::<f64>().ok());
    // utime and stime are fields 14 and 15; the kernel's USER_HZ is 100 on every Linux ABI.
    if let (Some(user), Some(system)) = (ticks(11), ticks(12)) {
        metric(
            &mut out,
            "process_cpu_seconds_total",
            "counter",
            "User and system CPU time in seconds.",
            (user + system) / 100.0,
        );
    }
    if let Ok(entries) = std::fs::read_dir("/proc/self/fd") {
        metric(
            &mut out,
            "process_open_fds",
            "gauge",
            "Open file descriptors.",
            entries.count() as f64,
        );
    }
    let boot = std::fs::read_to_string("/proc/stat").ok().and_then(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("btime "))
            .and_then(|v| v.trim().parse::<f64>().ok())
    });
    if let (Some(boot), Some(start)) = (boot, ticks(19)) {
        metric(
            &mut out,
            "process_start_time_seconds",
            "gauge",
            "Start time since the Unix epoch in seconds.",
            boot + start / 100.0,
        );
    }
    out
}

/// Gauges of the current snapshot's state, computed at scrape time: a backend that a reload removed
/// disappears from them at once, instead of leaving a stale series behind.
pub fn render_state_metrics(snapshot: &Snapshot) -> String {
    let mut out = String::new();
    let _ = write!(
        out,
        "# HELP {CONFIG_INFO} Always 1; digest is the running configuration's, generation counts reloads.\n\
         # TYPE {CONFIG_INFO} gauge\n{CONFIG_INFO}{{digest=\"{}\",generation=\"{}\"}} 1\n\n",
        snapshot.config.digest, snapshot.generation
    );
    type Gauge = (&'static str, &'static str, fn(&Backend) -> f64);
    let gauges: [Gauge; 6] = [
        (BACKEND_HEALTH, "1 when the backend is healthy, 0 when not.", |b| {
            f64::from(u8::from(b.health.is_healthy()))
        }),
        (
            BACKEND_IN_FLIGHT,
            "Requests sent to the backend whose responses are not yet delivered.",
            |b| b.in_flight() as f64,
        ),
        (
            BACKEND_EFFECTIVE_WEIGHT,
            "The weight the balancer uses now (lower during slow start).",
            |b| b.effective_weight() as f64 / crate::balancer::WEIGHT_SCALE as f64,
        ),
        (BACKEND_DRAINED, "1 when an operator drained the backend.", |b| {
            f64::from(u8::from(b.is_drained()))
        }),
        (
            BACKEND_CONNECTIONS,
            "Connections open from the proxy's workers to the backend.",
            |b| b.transport.limits().open() as f64,
        ),
        (
            BACKEND_CIRCUIT_OPEN,
            "1 while the backend's circuit breaker refuses new requests.",
            |b| f64::from(u8::from(b.circuit_open())),
        ),
    ];
    for (name, help, value) in gauges {
        let _ = write!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n");
        for backend in snapshot.backends() {
            let _ = writeln!(
                out,
                "{name}{{upstream=\"{}\",backend=\"{}\"}} {}",
                label_value(&backend.upstream),
                label_value(&backend.name),
                value(backend)
            );
        }
        out.push('\n');
    }
    let _ = write!(
        out,
        "# HELP {BACKEND_EJECTED} 1 while traffic keeps the backend ejected, by reason.\n# TYPE {BACKEND_EJECTED} gauge\n"
    );
    for backend in snapshot.backends() {
        let ejected_by = backend.health.ejected_by().map(crate::health::Source::reason);
        for reason in EJECTION_REASONS {
            let _ = writeln!(
                out,
                "{BACKEND_EJECTED}{{upstream=\"{}\",backend=\"{}\",reason=\"{reason}\"}} {}",
                label_value(&backend.upstream),
                label_value(&backend.name),
                u8::from(ejected_by == Some(reason))
            );
        }
    }
    out.push('\n');
    out
}

/// A label value escaped for the Prometheus text format.
fn label_value(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

fn metric(out: &mut String, name: &str, kind: &str, help: &str, value: f64) {
    // Writing to a String cannot fail.
    let _ = write!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n\n");
}
