//! Every metric's name and description, in one place: the code records under these names, docs/metrics.md
//! lists them, and the dashboard and alerts query them.

use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};

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
pub const QUIC_PACKETS_HANDED_OFF_TOTAL: &str = "quic_packets_handed_off_total";
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
pub const ROUTE_ACTIONS_TOTAL: &str = "route_actions_total";
pub const CLIENT_CONNECTIONS_REFUSED_TOTAL: &str = "client_connections_refused_total";
pub const TRACING_SPANS_EXPORTED_TOTAL: &str = "tracing_spans_exported_total";
pub const TRACING_SPANS_DROPPED_TOTAL: &str = "tracing_spans_dropped_total";
pub const TRACING_EXPORT_FAILURES_TOTAL: &str = "tracing_export_failures_total";
pub const ACME_ORDERS_TOTAL: &str = "acme_orders_total";
pub const TLS_CERTIFICATE_EXPIRY: &str = "tls_certificate_expiry_timestamp_seconds";

/// Describes every metric to the recorder (HELP and TYPE lines).
pub(super) fn describe() {
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
        QUIC_PACKETS_HANDED_OFF_TOTAL,
        Unit::Count,
        "QUIC packets that reached one worker's socket for a connection of another, by result (delivered to the owning worker, previous_process: sent to the process before a binary upgrade, dropped: its queue was full or that process is gone)."
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
    describe_counter!(
        ROUTE_ACTIONS_TOTAL,
        Unit::Count,
        "What each route's actions did, by route, action (access, rate_limit, rewrite, request_headers, response_headers, compress, redirect, respond, static) and result."
    );
    describe_counter!(
        ACME_ORDERS_TOTAL,
        Unit::Count,
        "Certificate orders at the ACME CA, by result (issued, failed)."
    );
    describe_counter!(
        CLIENT_CONNECTIONS_REFUSED_TOTAL,
        Unit::Count,
        "Connections closed on accept because their client address had server.max_connections_per_client open, by protocol."
    );
    describe_gauge!(
        CONFIG_LAST_RELOAD_SUCCESS,
        Unit::Seconds,
        "When the running configuration was loaded (start-up or the last successful reload), Unix time."
    );
}
