//! The config file as serde reads it: every section, its defaults and its scalar types.
//!
//! Sections that need no cross-field checks are used as they are by the validated `Config`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;

use super::units;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileConfig {
    #[serde(default)]
    pub server: ServerConfig,
    pub backends: Option<Vec<FileBackend>>,
    #[serde(default)]
    pub load_balancer: BalancerConfig,
    pub health_check: Option<HealthCheckConfig>,
    #[serde(default)]
    pub upstreams: BTreeMap<String, FileUpstream>,
    #[serde(default)]
    pub routes: Vec<FileRoute>,
    #[serde(default)]
    pub quic: QuicConfig,
    #[serde(default)]
    pub admin: AdminConfig,
    #[serde(default)]
    pub timeouts: Timeouts,
    #[serde(default)]
    pub telemetry: Telemetry,
}

/// Listeners and connection handling.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// QUIC (UDP) and HTTPS (TCP) listen address.
    #[serde(default = "default_address", deserialize_with = "units::listen_addr")]
    pub address: SocketAddr,
    /// Plain HTTP/1.1 listen address.
    #[serde(default = "default_fallback_address", deserialize_with = "units::listen_addr")]
    pub fallback_address: SocketAddr,
    /// Certificate and key for HTTPS and QUIC; without it only the plain HTTP/1.1 listener runs.
    pub tls: Option<TlsConfig>,
    /// Peers whose X-Forwarded-For is extended instead of replaced.
    #[serde(default)]
    pub trusted_proxies: Vec<IpNet>,
    /// How long in-flight requests may run on after SIGTERM.
    #[serde(default = "default_drain_timeout", deserialize_with = "units::duration")]
    pub drain_timeout: Duration,
    /// How long a client may take to send a complete request head.
    #[serde(default = "default_header_read_timeout", deserialize_with = "units::duration")]
    pub header_read_timeout: Duration,
    /// Largest request head accepted; larger ones get 431.
    #[serde(default = "default_max_header_bytes", deserialize_with = "units::size")]
    pub max_header_bytes: u64,
    /// Most header fields in an HTTP/1.1 request head; more get 431.
    #[serde(default = "default_max_headers")]
    pub max_headers: usize,
    /// Longest silence while a client sends a request body; then 408 (or the stream is reset).
    #[serde(default = "default_body_timeout", deserialize_with = "units::duration")]
    pub client_body_timeout: Duration,
    /// Worker threads, each with its own listeners, QUIC endpoint and upstream connections; default: one
    /// per core.
    pub workers: Option<usize>,
    /// Let other processes listen on the same addresses (SO_REUSEPORT), to run several instances on one
    /// host; otherwise an address already in use stops start-up.
    #[serde(default)]
    pub reuse_port: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            address: default_address(),
            fallback_address: default_fallback_address(),
            tls: None,
            trusted_proxies: Vec::new(),
            drain_timeout: default_drain_timeout(),
            header_read_timeout: default_header_read_timeout(),
            max_header_bytes: default_max_header_bytes(),
            max_headers: default_max_headers(),
            client_body_timeout: default_body_timeout(),
            workers: None,
            reuse_port: false,
        }
    }
}

/// Certificate chain and key (PEM) for the TLS listeners.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

/// The QUIC transport and its HTTP/3 limits.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuicConfig {
    /// Concurrent request streams a client may open per connection.
    #[serde(default = "default_max_streams")]
    pub max_concurrent_streams: u32,
    /// A connection with no traffic for this long is closed.
    #[serde(default = "default_idle_timeout", deserialize_with = "units::duration")]
    pub idle_timeout: Duration,
    /// Flow-control window per stream.
    #[serde(default = "default_stream_window", deserialize_with = "units::size")]
    pub stream_receive_window: u64,
    /// Flow-control window per connection, over all streams.
    #[serde(default = "default_connection_window", deserialize_with = "units::size")]
    pub receive_window: u64,
    /// Largest request header section (QPACK-decoded); larger ones get 431.
    #[serde(default = "default_max_header_bytes", deserialize_with = "units::size")]
    pub max_header_bytes: u64,
    /// Connections open at once; new ones are refused beyond it.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// UDP socket receive buffer asked of the kernel.
    #[serde(default = "default_socket_buffer", deserialize_with = "units::size")]
    pub socket_receive_buffer: u64,
    /// UDP socket send buffer asked of the kernel.
    #[serde(default = "default_socket_buffer", deserialize_with = "units::size")]
    pub socket_send_buffer: u64,
    /// Address validation: `auto` sends Retry once unvalidated handshakes exceed `retry_threshold`.
    #[serde(default)]
    pub retry: RetryMode,
    #[serde(default = "default_retry_threshold")]
    pub retry_threshold: usize,
    /// Hex secret (at least 32 bytes) for stateless reset and Retry tokens; share it between instances
    /// behind one address. Random per process when absent.
    pub stateless_reset_key: Option<String>,
    /// Length of the connection IDs this server issues (4 to 20 bytes).
    #[serde(default = "default_cid_length")]
    pub connection_id_length: usize,
    /// Accept 0-RTT requests (safe methods only; others get 425).
    #[serde(default)]
    pub early_data: bool,
    /// The port advertised in Alt-Svc; the bound UDP port when absent (set it behind port forwarding).
    pub alt_svc_port: Option<u16>,
    /// A file holding `stateless_reset_key` (a mounted secret), instead of writing the key in the config.
    pub stateless_reset_key_file: Option<PathBuf>,
}

impl Default for QuicConfig {
    fn default() -> Self {
        Self {
            max_concurrent_streams: default_max_streams(),
            idle_timeout: default_idle_timeout(),
            stream_receive_window: default_stream_window(),
            receive_window: default_connection_window(),
            max_header_bytes: default_max_header_bytes(),
            max_connections: default_max_connections(),
            socket_receive_buffer: default_socket_buffer(),
            socket_send_buffer: default_socket_buffer(),
            retry: RetryMode::default(),
            retry_threshold: default_retry_threshold(),
            stateless_reset_key: None,
            connection_id_length: default_cid_length(),
            early_data: false,
            alt_svc_port: None,
            stateless_reset_key_file: None,
        }
    }
}

/// When the QUIC listener sends Retry packets to validate client addresses.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RetryMode {
    #[default]
    Auto,
    Always,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileBackend {
    pub name: String,
    pub url: String,
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// Where active checks go when the service exposes health elsewhere, like http://127.0.0.1:9001/healthz.
    pub health_url: Option<String>,
    #[serde(default)]
    pub protocol: UpstreamProtocol,
    /// TLS to an `https://` backend.
    pub tls: Option<BackendTls>,
}

/// The HTTP version spoken to a backend.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UpstreamProtocol {
    /// `https://`: HTTP/2 or HTTP/1.1 as the backend chooses by ALPN; `http://`: HTTP/1.1.
    #[default]
    Auto,
    /// HTTP/1.1 only.
    Http1,
    /// HTTP/2 over TLS (ALPN `h2`), `https://` only.
    H2,
    /// HTTP/2 in clear text with prior knowledge, `http://` only (gRPC servers, for one).
    H2c,
}

/// How the proxy talks TLS to a backend.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendTls {
    /// The name sent (SNI) and verified; default: the URL's host.
    pub server_name: Option<String>,
    /// PEM certificates of the CAs to trust instead of the system's.
    pub ca_file: Option<PathBuf>,
    /// A client certificate chain and key (PEM), for backends that require mutual TLS.
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// Accept any certificate. Only ever for testing; the proxy warns at start-up.
    #[serde(default)]
    pub insecure_skip_verify: bool,
}

/// How an upstream picks a backend, and what it does when backends fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BalancerConfig {
    #[serde(default)]
    pub algorithm: Algorithm,
    /// What to do when no backend is healthy.
    #[serde(default)]
    pub when_all_unhealthy: AllUnhealthy,
    /// A recovered backend's weight ramps from 10% to 100% over this window.
    #[serde(default, deserialize_with = "units::optional_duration")]
    pub slow_start: Option<Duration>,
    /// Further attempts on other backends when one fails before answering.
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// Request bodies up to this size are kept so they can be sent again; larger ones are not retried.
    #[serde(default = "default_retry_buffer", deserialize_with = "units::size")]
    pub retry_buffer: u64,
}

impl Default for BalancerConfig {
    fn default() -> Self {
        Self {
            algorithm: Algorithm::default(),
            when_all_unhealthy: AllUnhealthy::default(),
            slow_start: None,
            retries: default_retries(),
            retry_buffer: default_retry_buffer(),
        }
    }
}

/// How a pool picks a backend.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Algorithm {
    #[default]
    RoundRobin,
    Weighted,
    LeastConnections,
}

/// The policy when every backend of an upstream is unhealthy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AllUnhealthy {
    /// Route to all backends anyway (a warning and a metric say so).
    #[default]
    FailOpen,
    /// Answer 503 with Retry-After.
    FailClosed,
}

/// Health checking of an upstream's backends: active probes and passive observation of traffic.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckConfig {
    /// Active probes on or off.
    #[serde(default = "yes")]
    pub enabled: bool,
    #[serde(default, rename = "type")]
    pub kind: CheckKind,
    #[serde(default = "default_interval", deserialize_with = "units::duration")]
    pub interval: Duration,
    #[serde(default = "default_check_timeout", deserialize_with = "units::duration")]
    pub timeout: Duration,
    #[serde(default = "default_check_path")]
    pub path: String,
    /// `type: grpc`: the service asked about; empty asks about the server as a whole.
    #[serde(default)]
    pub grpc_service: String,
    #[serde(default = "default_unhealthy_threshold")]
    pub unhealthy_threshold: u32,
    #[serde(default = "default_healthy_threshold")]
    pub healthy_threshold: u32,
    /// Statuses that count as healthy: codes (`204`) or ranges (`"200-399"`).
    #[serde(default = "default_expected_statuses")]
    pub expected_statuses: Vec<StatusRange>,
    /// A substring the probe's response body must contain.
    pub expect_body: Option<String>,
    /// The state before the first probe.
    #[serde(default)]
    pub initial_state: InitialState,
    #[serde(default)]
    pub passive: PassiveConfig,
}

impl HealthCheckConfig {
    /// The configuration used when a file has no `health_check` section: no probes, passive checks on.
    pub fn disabled() -> Self {
        Self {
            enabled: false,
            kind: CheckKind::default(),
            interval: default_interval(),
            timeout: default_check_timeout(),
            path: default_check_path(),
            grpc_service: String::new(),
            unhealthy_threshold: default_unhealthy_threshold(),
            healthy_threshold: default_healthy_threshold(),
            expected_statuses: default_expected_statuses(),
            expect_body: None,
            initial_state: InitialState::default(),
            passive: PassiveConfig::default(),
        }
    }
}

/// What an active probe does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckKind {
    /// GET `path`; healthy when the status is expected (and the body contains `expect_body`).
    #[default]
    Http,
    /// A TCP connect within the timeout.
    Tcp,
    /// The gRPC health checking protocol: `grpc.health.v1.Health/Check` must answer SERVING (over HTTP/2:
    /// the backend's protocol must be h2c, h2, or auto over TLS).
    Grpc,
}

/// A backend's state before its first probe.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InitialState {
    #[default]
    Healthy,
    Unhealthy,
}

/// A status code or an inclusive range of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatusRange {
    pub low: u16,
    pub high: u16,
}

impl StatusRange {
    /// True when `status` is in the range.
    pub fn contains(&self, status: u16) -> bool {
        (self.low..=self.high).contains(&status)
    }
}

impl<'de> Deserialize<'de> for StatusRange {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Code(u16),
            Text(String),
        }
        let invalid =
            |text: &str| serde::de::Error::custom(format!("`{text}` is not a status code or range like 200-399"));
        let (low, high) = match Raw::deserialize(d)? {
            Raw::Code(code) => (code, code),
            Raw::Text(text) => {
                let (low, high) = text.split_once('-').unwrap_or((&text, &text));
                match (low.trim().parse(), high.trim().parse()) {
                    (Ok(low), Ok(high)) => (low, high),
                    _ => return Err(invalid(&text)),
                }
            }
        };
        if !(100..=599).contains(&low) || !(100..=599).contains(&high) || low > high {
            return Err(invalid(&format!("{low}-{high}")));
        }
        Ok(Self { low, high })
    }
}

/// Passive checks: real traffic's failures eject a backend.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PassiveConfig {
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Consecutive failed requests that eject a backend.
    #[serde(default = "default_passive_threshold")]
    pub unhealthy_threshold: u32,
    /// Response statuses that count as failures (connect errors and timeouts always do).
    #[serde(default = "default_failure_statuses")]
    pub failure_statuses: Vec<u16>,
    /// Without active probes, an ejected backend returns on probation after this long (doubling on
    /// repeated ejections, up to `max_ejection`).
    #[serde(default = "default_reactivation", deserialize_with = "units::duration")]
    pub reactivation: Duration,
    #[serde(default = "default_max_ejection", deserialize_with = "units::duration")]
    pub max_ejection: Duration,
}

impl Default for PassiveConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            unhealthy_threshold: default_passive_threshold(),
            failure_statuses: default_failure_statuses(),
            reactivation: default_reactivation(),
            max_ejection: default_max_ejection(),
        }
    }
}

/// The admin API.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Bearer token required by the state-changing endpoints (drain, undrain, reload); without it they are
    /// refused.
    pub token: Option<String>,
    /// A file holding the token (a mounted secret), instead of writing it in the config.
    pub token_file: Option<PathBuf>,
    /// The web console at `/` on the admin listener.
    #[serde(default = "yes")]
    pub console: bool,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            token: None,
            token_file: None,
            console: true,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileUpstream {
    #[serde(default)]
    pub backends: Vec<FileBackend>,
    pub load_balancer: Option<BalancerConfig>,
    pub health_check: Option<HealthCheckConfig>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileRoute {
    pub host: Option<String>,
    #[serde(default = "default_route_path")]
    pub path: String,
    pub upstream: String,
}

/// Upstream connection timeouts.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Timeouts {
    #[serde(default = "default_connect_timeout", deserialize_with = "units::duration")]
    pub connect: Duration,
    #[serde(default = "default_response_header_timeout", deserialize_with = "units::duration")]
    pub response_header: Duration,
    #[serde(default = "default_pool_idle_timeout", deserialize_with = "units::duration")]
    pub pool_idle: Duration,
    /// Longest silence while a backend sends a response body; then both sides are aborted and the backend
    /// is charged with a failure.
    #[serde(default = "default_body_timeout", deserialize_with = "units::duration")]
    pub response_body: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            connect: default_connect_timeout(),
            response_header: default_response_header_timeout(),
            pool_idle: default_pool_idle_timeout(),
            response_body: default_body_timeout(),
        }
    }
}

/// Metrics and logging.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Telemetry {
    #[serde(default)]
    pub metrics: MetricsConfig,
    #[serde(default)]
    pub logging: LoggingConfig,
    #[serde(default)]
    pub tracing: TracingConfig,
}

/// Distributed tracing: a span per request and per upstream attempt, exported over OTLP.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TracingConfig {
    /// On when the section names an endpoint, unless set to false.
    pub enabled: Option<bool>,
    /// Where spans go: an OTLP receiver, `http://collector:4317` (gRPC) or `http://collector:4318` (HTTP).
    pub otlp_endpoint: Option<String>,
    /// The same, for a Jaeger collector (Jaeger takes OTLP).
    pub jaeger_endpoint: Option<String>,
    /// `grpc` or `http` (OTLP/HTTP with protobuf bodies, to `<endpoint>/v1/traces`).
    #[serde(default)]
    pub protocol: OtlpProtocol,
    /// Share of new traces recorded; a request that carries a `traceparent` follows its sampled flag.
    #[serde(default = "default_sampling_ratio")]
    pub sampling_ratio: f64,
    #[serde(default = "default_service_name")]
    pub service_name: String,
    /// Further resource attributes, like `deployment.environment: production`.
    #[serde(default)]
    pub resource_attributes: BTreeMap<String, String>,
    /// Finished spans waiting for export; beyond this, spans are dropped (and counted).
    #[serde(default = "default_trace_queue")]
    pub queue_size: usize,
    #[serde(default = "default_export_timeout", deserialize_with = "units::duration")]
    pub export_timeout: Duration,
}

impl Default for TracingConfig {
    fn default() -> Self {
        Self {
            enabled: None,
            otlp_endpoint: None,
            jaeger_endpoint: None,
            protocol: OtlpProtocol::default(),
            sampling_ratio: default_sampling_ratio(),
            service_name: default_service_name(),
            resource_attributes: BTreeMap::new(),
            queue_size: default_trace_queue(),
            export_timeout: default_export_timeout(),
        }
    }
}

/// How spans are sent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OtlpProtocol {
    #[default]
    Grpc,
    Http,
}

/// The admin listener: `/metrics`, `/health`, `/ready`, `/live`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    #[serde(default = "yes")]
    pub enabled: bool,
    #[serde(default = "default_metrics_address", deserialize_with = "units::listen_addr")]
    pub address: SocketAddr,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            address: default_metrics_address(),
        }
    }
}

/// Log level and line format.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoggingConfig {
    #[serde(default = "default_log_level")]
    pub level: String,
    #[serde(default)]
    pub format: LogFormat,
}

impl Default for LoggingConfig {
    fn default() -> Self {
        Self {
            level: default_log_level(),
            format: LogFormat::default(),
        }
    }
}

/// One JSON object per line, or human-readable text.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    #[default]
    Json,
    Text,
}

fn yes() -> bool {
    true
}
fn default_address() -> SocketAddr {
    SocketAddr::from(([0u16; 8], 443))
}
fn default_fallback_address() -> SocketAddr {
    SocketAddr::from(([0u16; 8], 80))
}
fn default_metrics_address() -> SocketAddr {
    SocketAddr::from(([0u16; 8], 9090))
}
fn default_max_streams() -> u32 {
    100
}
fn default_idle_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_stream_window() -> u64 {
    1 << 20
}
fn default_connection_window() -> u64 {
    8 << 20
}
fn default_max_connections() -> usize {
    10_000
}
fn default_socket_buffer() -> u64 {
    4 << 20
}
fn default_retry_threshold() -> usize {
    128
}
fn default_cid_length() -> usize {
    8
}
fn default_drain_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_header_read_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_max_header_bytes() -> u64 {
    64 * 1024
}
fn default_sampling_ratio() -> f64 {
    1.0
}
fn default_service_name() -> String {
    "quic-proxy".to_owned()
}
fn default_trace_queue() -> usize {
    2048
}
fn default_export_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_max_headers() -> usize {
    100
}
fn default_body_timeout() -> Duration {
    Duration::from_secs(60)
}
fn default_weight() -> u32 {
    1
}
fn default_interval() -> Duration {
    Duration::from_secs(10)
}
fn default_check_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_check_path() -> String {
    "/health".to_owned()
}
fn default_unhealthy_threshold() -> u32 {
    3
}
fn default_healthy_threshold() -> u32 {
    2
}
fn default_route_path() -> String {
    "/*".to_owned()
}
fn default_connect_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_response_header_timeout() -> Duration {
    Duration::from_secs(60)
}
fn default_pool_idle_timeout() -> Duration {
    Duration::from_secs(90)
}
fn default_log_level() -> String {
    "info".to_owned()
}
fn default_retries() -> u32 {
    2
}
fn default_retry_buffer() -> u64 {
    64 * 1024
}
fn default_expected_statuses() -> Vec<StatusRange> {
    vec![StatusRange { low: 200, high: 399 }]
}
fn default_passive_threshold() -> u32 {
    5
}
fn default_failure_statuses() -> Vec<u16> {
    vec![502, 503, 504]
}
fn default_reactivation() -> Duration {
    Duration::from_secs(30)
}
fn default_max_ejection() -> Duration {
    Duration::from_secs(300)
}
