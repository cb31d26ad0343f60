//! Every metric name in one place, the Prometheus recorder, and the recording helpers the request path uses.

use std::sync::OnceLock;
use std::time::Duration;

use http::{Method, StatusCode};
use metrics::{counter, describe_counter, describe_histogram, gauge, histogram, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub const HTTP_REQUESTS_TOTAL: &str = "http_requests_total";
pub const HTTP_REQUEST_DURATION_SECONDS: &str = "http_request_duration_seconds";
pub const BACKEND_HEALTH: &str = "backend_health";
pub const UPSTREAM_FAIL_OPEN_TOTAL: &str = "upstream_fail_open_requests_total";
pub const RETRIES_TOTAL: &str = "proxy_retries_total";
pub const HEALTH_CHECKS_TOTAL: &str = "health_checks_total";
pub const HEALTH_CHECK_FAILURES_TOTAL: &str = "health_check_failures_total";
pub const BACKEND_HEALTH_TRANSITIONS_TOTAL: &str = "backend_health_transitions_total";

/// Latency buckets from 1 ms to 60 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

static HANDLE: OnceLock<Result<PrometheusHandle, String>> = OnceLock::new();

/// Installs the process-wide recorder once and returns its handle; later calls share the first.
pub fn install() -> Result<PrometheusHandle, String> {
    HANDLE
        .get_or_init(|| {
            let handle = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".to_owned()), LATENCY_BUCKETS)
                .and_then(|builder| builder.install_recorder())
                .map_err(|e| format!("cannot install the metrics recorder: {e}"))?;
            describe();
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
        "Time from request head to response head, by protocol."
    );
}

/// Records one answered request.
pub fn record_request(method: &Method, status: StatusCode, backend: &str, protocol: &'static str, elapsed: Duration) {
    counter!(
        HTTP_REQUESTS_TOTAL,
        "method" => method_label(method),
        "status_code" => status.as_u16().to_string(),
        "backend" => backend.to_owned(),
        "protocol" => protocol,
    )
    .increment(1);
    histogram!(HTTP_REQUEST_DURATION_SECONDS, "protocol" => protocol).record(elapsed.as_secs_f64());
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

/// Records one active health check.
pub fn record_health_check(upstream: &str, backend: &str, healthy: bool) {
    let (upstream, backend) = (upstream.to_owned(), backend.to_owned());
    counter!(HEALTH_CHECKS_TOTAL, "upstream" => upstream.clone(), "backend" => backend.clone(), "result" => if healthy { "success" } else { "failure" }).increment(1);
    if !healthy {
        counter!(HEALTH_CHECK_FAILURES_TOTAL, "upstream" => upstream, "backend" => backend).increment(1);
    }
}

/// Records a backend's health transition and its new state.
pub fn record_health_transition(upstream: &str, backend: &str, healthy: bool) {
    let (upstream, backend) = (upstream.to_owned(), backend.to_owned());
    counter!(BACKEND_HEALTH_TRANSITIONS_TOTAL, "upstream" => upstream.clone(), "backend" => backend.clone(), "to" => if healthy { "healthy" } else { "unhealthy" }).increment(1);
    gauge!(BACKEND_HEALTH, "upstream" => upstream, "backend" => backend).set(if healthy { 1.0 } else { 0.0 });
}

/// Records a request routed to an unhealthy backend because every backend of its upstream is unhealthy.
pub fn record_fail_open(upstream: &str) {
    counter!(UPSTREAM_FAIL_OPEN_TOTAL, "upstream" => upstream.to_owned()).increment(1);
}

/// Records a retry on another backend.
pub fn record_retry(upstream: &str) {
    counter!(RETRIES_TOTAL, "upstream" => upstream.to_owned()).increment(1);
}
