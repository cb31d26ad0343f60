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
    pub load_balancer: BalancerSection,
    pub health_check: Option<HealthCheckConfig>,
    #[serde(default)]
    pub upstreams: BTreeMap<String, FileUpstream>,
    #[serde(default)]
    pub routes: Vec<FileRoute>,
    #[serde(default)]
    pub quic: QuicConfig,
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
    #[serde(
        default = "default_fallback_address",
        deserialize_with = "units::listen_addr"
    )]
    pub fallback_address: SocketAddr,
    /// Certificate and key for HTTPS and QUIC; without it only the plain HTTP/1.1 listener runs.
    pub tls: Option<TlsConfig>,
    /// Peers whose X-Forwarded-For is extended instead of replaced.
    #[serde(default)]
    pub trusted_proxies: Vec<IpNet>,
    /// How long in-flight requests may run on after SIGTERM.
    #[serde(
        default = "default_drain_timeout",
        deserialize_with = "units::duration"
    )]
    pub drain_timeout: Duration,
    /// How long a client may take to send a complete request head.
    #[serde(
        default = "default_header_read_timeout",
        deserialize_with = "units::duration"
    )]
    pub header_read_timeout: Duration,
    /// Largest request head accepted; larger ones get 431.
    #[serde(default = "default_max_header_bytes", deserialize_with = "units::size")]
    pub max_header_bytes: u64,
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
    #[serde(
        default = "default_connection_window",
        deserialize_with = "units::size"
    )]
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
    /// UDP sockets (SO_REUSEPORT) each driven by its own task; defaults to the number of cores.
    pub endpoints: Option<usize>,
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
            endpoints: None,
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
}

#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct BalancerSection {
    #[serde(default)]
    pub algorithm: Algorithm,
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

/// Active health checking of an upstream's backends.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckConfig {
    #[serde(default = "yes")]
    pub enabled: bool,
    #[serde(default = "default_interval", deserialize_with = "units::duration")]
    pub interval: Duration,
    #[serde(
        default = "default_check_timeout",
        deserialize_with = "units::duration"
    )]
    pub timeout: Duration,
    #[serde(default = "default_check_path")]
    pub path: String,
    #[serde(default = "default_unhealthy_threshold")]
    pub unhealthy_threshold: u32,
    #[serde(default = "default_healthy_threshold")]
    pub healthy_threshold: u32,
}

impl HealthCheckConfig {
    /// The configuration used when a file has no `health_check` section: the defaults, switched off.
    pub fn disabled() -> Self {
        Self {
            enabled: false,
            interval: default_interval(),
            timeout: default_check_timeout(),
            path: default_check_path(),
            unhealthy_threshold: default_unhealthy_threshold(),
            healthy_threshold: default_healthy_threshold(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileUpstream {
    #[serde(default)]
    pub backends: Vec<FileBackend>,
    pub load_balancer: Option<BalancerSection>,
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
    #[serde(
        default = "default_connect_timeout",
        deserialize_with = "units::duration"
    )]
    pub connect: Duration,
    #[serde(
        default = "default_response_header_timeout",
        deserialize_with = "units::duration"
    )]
    pub response_header: Duration,
    #[serde(
        default = "default_pool_idle_timeout",
        deserialize_with = "units::duration"
    )]
    pub pool_idle: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            connect: default_connect_timeout(),
            response_header: default_response_header_timeout(),
            pool_idle: default_pool_idle_timeout(),
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
}

/// The admin listener: `/metrics`, `/health`, `/ready`, `/live`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    #[serde(default = "yes")]
    pub enabled: bool,
    #[serde(
        default = "default_metrics_address",
        deserialize_with = "units::listen_addr"
    )]
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
