//! The metrics leaf: every metric's name (`names.rs`), the Prometheus recorder, the handles the request
//! path records through (`handles.rs`), and the recording of process-wide events. It records and never
//! reads the proxy's state back: each subsystem resolves its own handles (a backend's in `balancer`, an
//! upstream's in `routing`, the request path's in `proxy`), and rendering the state at scrape time belongs
//! to the admin listener.
//!
//! Histograms are exported as real buckets (`*_seconds` and `*_bytes`). Labels are bounded: method folded to
//! a fixed set, status code, protocol, upstream and backend names from config; never path or client address.

mod handles;
mod names;

use std::sync::OnceLock;

use metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::protocol::Protocol;

pub use handles::{method_label, request_counter, status_label, CounterCache, GaugeGuard, RequestCounters};
pub use names::*;

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
            names::describe();
            gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
            register_process_wide();
            Ok(handle)
        })
        .clone()
}

/// Registers the process-wide series of rare events at zero, so that their first increment shows as a
/// change from zero, which `rate()` can see, instead of a series appearing.
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
    for result in ["issued", "failed"] {
        counter!(ACME_ORDERS_TOTAL, "result" => result).absolute(0);
    }
    for result in ["delivered", "previous_process", "dropped"] {
        counter!(QUIC_PACKETS_HANDED_OFF_TOTAL, "result" => result).absolute(0);
    }
    for protocol in ["tcp", "quic"] {
        counter!(CLIENT_CONNECTIONS_REFUSED_TOTAL, "protocol" => protocol).absolute(0);
    }
    for protocol in Protocol::CONNECTIONS.map(Protocol::label) {
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

/// Counts an open client connection until the returned guard is dropped.
pub fn connection_open(protocol: Protocol) -> GaugeGuard {
    counter!(CONNECTIONS_TOTAL, "protocol" => protocol.label()).increment(1);
    GaugeGuard::new(gauge!(CONNECTIONS_OPEN, "protocol" => protocol.label()))
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

/// Counts a finished ACME order.
pub fn record_acme_order(issued: bool) {
    let result = if issued { "issued" } else { "failed" };
    counter!(ACME_ORDERS_TOTAL, "result" => result).increment(1);
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
/// The counters of QUIC datagrams handed to where their connection is: delivered to another worker, sent
/// to the previous process (across a binary upgrade), dropped.
pub fn quic_handoff_counters() -> (metrics::Counter, metrics::Counter, metrics::Counter) {
    (
        counter!(QUIC_PACKETS_HANDED_OFF_TOTAL, "result" => "delivered"),
        counter!(QUIC_PACKETS_HANDED_OFF_TOTAL, "result" => "previous_process"),
        counter!(QUIC_PACKETS_HANDED_OFF_TOTAL, "result" => "dropped"),
    )
}

pub fn record_quic_retry() {
    counter!(QUIC_RETRY_PACKETS_SENT_TOTAL).increment(1);
}

/// Records a QUIC connection refused at the limit.
pub fn record_quic_refused() {
    counter!(QUIC_CONNECTIONS_REFUSED_TOTAL).increment(1);
}

/// Records a connection closed because its client has `server.max_connections_per_client` open.
pub fn record_client_refused(protocol: &'static str) {
    counter!(CLIENT_CONNECTIONS_REFUSED_TOTAL, "protocol" => protocol).increment(1);
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
