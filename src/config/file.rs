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
    #[serde(default)]
    pub discovery: DiscoveryConfig,
}

/// How backends named by DNS are found: every address a name resolves to is an endpoint of its pool.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiscoveryConfig {
    /// Names are resolved again this often (and soon after a connect error).
    #[serde(default = "default_dns_refresh", deserialize_with = "units::duration")]
    pub dns_refresh: Duration,
    /// DNS servers to ask (`10.0.0.10`, `127.0.0.1:5353`) instead of those in /etc/resolv.conf.
    #[serde(default, deserialize_with = "units::nameservers")]
    pub nameservers: Vec<SocketAddr>,
    /// How long one resolution may take.
    #[serde(default = "default_dns_timeout", deserialize_with = "units::duration")]
    pub timeout: Duration,
    /// Which address families become endpoints.
    #[serde(default)]
    pub ip_family: IpFamily,
}

impl Default for DiscoveryConfig {
    fn default() -> Self {
        Self {
            dns_refresh: default_dns_refresh(),
            nameservers: Vec::new(),
            timeout: default_dns_timeout(),
            ip_family: IpFamily::default(),
        }
    }
}

/// The address families a name's endpoints are taken from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IpFamily {
    /// The IPv4 addresses when there are any, else the IPv6 ones: a name that also has an AAAA record
    /// (such as `localhost` in /etc/hosts) does not add endpoints nothing may listen on.
    #[default]
    Ipv4Preferred,
    /// Every address of both families (dual-stack Services whose pods listen on both).
    All,
    Ipv4,
    Ipv6,
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
    /// TCP client connections open at once (HTTP/1.1 and HTTPS together); beyond it new ones are closed
    /// as soon as they are accepted.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// An HTTP/2 client connection that moves no byte for this long is closed (GOAWAY; requests in flight
    /// finish). HTTP/1.1 keep-alive connections wait at most `header_read_timeout` for their next request.
    #[serde(default = "default_server_idle_timeout", deserialize_with = "units::duration")]
    pub idle_timeout: Duration,
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
            max_connections: default_max_connections(),
            idle_timeout: default_server_idle_timeout(),
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

/// How an upstream picks a backend, and what it does when backends fail or are overloaded.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BalancerConfig {
    #[serde(default)]
    pub algorithm: Algorithm,
    /// `algorithm: hash`: what in a request picks its backend.
    pub hash_on: Option<HashOn>,
    /// The proxy sets a cookie naming (opaquely) the backend that answered; a request carrying it goes back
    /// there while that backend is usable.
    pub sticky_cookie: Option<StickyCookie>,
    /// What to do when no backend is healthy.
    #[serde(default)]
    pub when_all_unhealthy: AllUnhealthy,
    /// Panic threshold: while fewer than this share (in percent) of the backends are healthy, balance over
    /// all of them, so that the few healthy ones are not crushed by the whole load. 0 turns it off.
    #[serde(default)]
    pub min_healthy_percent: u8,
    /// A recovered backend's weight ramps from 10% to 100% over this window.
    #[serde(default, deserialize_with = "units::optional_duration")]
    pub slow_start: Option<Duration>,
    /// Further attempts on other backends when one fails before answering.
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// Request bodies up to this size are kept so they can be sent again; larger ones are not retried.
    #[serde(default = "default_retry_buffer", deserialize_with = "units::size")]
    pub retry_buffer: u64,
    /// Response statuses retried on another backend, for idempotent requests (failures before an answer
    /// always are).
    #[serde(default)]
    pub retry_on_statuses: Vec<u16>,
    /// A retry waits a random time up to this long, doubled for each further retry, up to `retry_backoff_max`.
    #[serde(default = "default_retry_backoff", deserialize_with = "units::duration")]
    pub retry_backoff: Duration,
    #[serde(default = "default_retry_backoff_max", deserialize_with = "units::duration")]
    pub retry_backoff_max: Duration,
    #[serde(default)]
    pub retry_budget: RetryBudget,
    #[serde(default)]
    pub circuit_breaker: CircuitBreaker,
}

impl Default for BalancerConfig {
    fn default() -> Self {
        Self {
            algorithm: Algorithm::default(),
            hash_on: None,
            sticky_cookie: None,
            when_all_unhealthy: AllUnhealthy::default(),
            min_healthy_percent: 0,
            slow_start: None,
            retries: default_retries(),
            retry_buffer: default_retry_buffer(),
            retry_on_statuses: Vec::new(),
            retry_backoff: default_retry_backoff(),
            retry_backoff_max: default_retry_backoff_max(),
            retry_budget: RetryBudget::default(),
            circuit_breaker: CircuitBreaker::default(),
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
    /// Power of two random choices: the lighter (in-flight requests over weight) of two random backends.
    P2c,
    /// Weighted random.
    Random,
    /// Consistent hashing (a Maglev table) on `hash_on`.
    Hash,
}

/// The part of a request that `algorithm: hash` hashes: `client_address`, `path`, `{header: NAME}` or
/// `{cookie: NAME}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashOn {
    /// A request header's value (`hash_on: {header: x-user-id}`).
    Header(String),
    /// A cookie's value (`hash_on: {cookie: session}`).
    Cookie(String),
    /// The client's IP address (the connection's peer).
    ClientAddress,
    /// The request path, without the query.
    Path,
}

impl<'de> Deserialize<'de> for HashOn {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Name(String),
            Field(BTreeMap<String, String>),
        }
        let expected = "client_address, path, {header: NAME} or {cookie: NAME}";
        let invalid = |what: &str| serde::de::Error::custom(format!("{what}; write {expected}"));
        match Raw::deserialize(d).map_err(|_| invalid("not a hash key"))? {
            Raw::Name(name) => match name.as_str() {
                "client_address" => Ok(Self::ClientAddress),
                "path" => Ok(Self::Path),
                "header" | "cookie" => Err(invalid(&format!("`{name}` needs a name"))),
                _ => Err(invalid(&format!("unknown hash key `{name}`"))),
            },
            Raw::Field(field) => {
                let mut entries = field.into_iter();
                match (entries.next(), entries.next()) {
                    (Some((kind, name)), None) if kind == "header" => Ok(Self::Header(name.to_ascii_lowercase())),
                    (Some((kind, name)), None) if kind == "cookie" => Ok(Self::Cookie(name)),
                    (Some((kind, _)), None) => Err(invalid(&format!("unknown hash key `{kind}`"))),
                    _ => Err(invalid("one key expected")),
                }
            }
        }
    }
}

/// The affinity cookie the proxy sets.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StickyCookie {
    #[serde(default = "default_sticky_name")]
    pub name: String,
    /// How long the browser keeps it; without it, until the browser closes.
    #[serde(default, deserialize_with = "units::optional_duration")]
    pub max_age: Option<Duration>,
    #[serde(default = "default_cookie_path")]
    pub path: String,
}

/// At most `ratio` of an upstream's requests (over the last 10 seconds) may be retries, plus
/// `min_per_second`, so that a failing upstream is never hit by a retry storm.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryBudget {
    #[serde(default = "default_retry_ratio")]
    pub ratio: f64,
    #[serde(default = "default_retry_floor")]
    pub min_per_second: u32,
}

impl Default for RetryBudget {
    fn default() -> Self {
        Self {
            ratio: default_retry_ratio(),
            min_per_second: default_retry_floor(),
        }
    }
}

/// Per-backend overload limits; over them a request is refused at once with 503, never queued behind
/// others. 0 means no limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CircuitBreaker {
    /// Open connections to the backend, over every worker.
    #[serde(default)]
    pub max_connections: u32,
    /// Requests waiting for a connection while `max_connections` are open; 0 with `max_connections` set
    /// means none wait.
    #[serde(default)]
    pub max_pending: u32,
    /// Requests in flight to the backend.
    #[serde(default)]
    pub max_requests: u32,
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
#[derive(Debug, Clone, PartialEq, Deserialize)]
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

/// Passive checks and outlier detection: real traffic's failures and latencies eject a backend.
#[derive(Debug, Clone, PartialEq, Deserialize)]
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
    /// Never more than this share (in percent) of an upstream's backends ejected by traffic at once; one
    /// ejection is always allowed.
    #[serde(default = "default_max_ejection_percent")]
    pub max_ejection_percent: u8,
    /// Ejection by failure rate over a sliding period.
    pub failure_rate: Option<FailureRate>,
    /// Ejection by latency: a quantile, or consecutive responses, slower than `unhealthy_latency`.
    pub latency: Option<LatencyOutlier>,
}

impl Default for PassiveConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            unhealthy_threshold: default_passive_threshold(),
            failure_statuses: default_failure_statuses(),
            reactivation: default_reactivation(),
            max_ejection: default_max_ejection(),
            max_ejection_percent: default_max_ejection_percent(),
            failure_rate: None,
            latency: None,
        }
    }
}

/// Eject a backend when, over the last `period`, at least `minimum_requests` were answered and more than
/// `percentage` of them failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FailureRate {
    #[serde(default = "default_outlier_percentage")]
    pub percentage: u8,
    #[serde(default = "default_outlier_minimum")]
    pub minimum_requests: u32,
    #[serde(default = "default_outlier_period", deserialize_with = "units::duration")]
    pub period: Duration,
}

/// Eject a backend whose `quantile` latency over the last `period` (with at least `minimum_requests`), or
/// whose last `consecutive` responses, took longer than `unhealthy_latency`.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LatencyOutlier {
    #[serde(deserialize_with = "units::duration")]
    pub unhealthy_latency: Duration,
    #[serde(default = "default_latency_quantile")]
    pub quantile: f64,
    #[serde(default = "default_outlier_minimum")]
    pub minimum_requests: u32,
    #[serde(default = "default_outlier_period", deserialize_with = "units::duration")]
    pub period: Duration,
    /// This many responses in a row slower than `unhealthy_latency` eject at once; 0 turns it off.
    #[serde(default)]
    pub consecutive: u32,
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
    /// A gRPC call's deadline (`grpc-timeout`) extends `response_header` and `response_body` for that call,
    /// up to this long, so that a backend is given the time its client allows.
    #[serde(default = "default_grpc_deadline_max", deserialize_with = "units::duration")]
    pub grpc_deadline_max: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            connect: default_connect_timeout(),
            response_header: default_response_header_timeout(),
            pool_idle: default_pool_idle_timeout(),
            response_body: default_body_timeout(),
            grpc_deadline_max: default_grpc_deadline_max(),
        }
    }
}

impl Timeouts {
    /// The timeouts for a gRPC call whose client allows it `deadline`: the backend may take that long for
    /// its response head and between body chunks, within `grpc_deadline_max`.
    pub fn for_deadline(mut self, deadline: Duration) -> Self {
        let deadline = deadline.min(self.grpc_deadline_max);
        self.response_header = self.response_header.max(deadline);
        self.response_body = self.response_body.max(deadline);
        self
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
fn default_server_idle_timeout() -> Duration {
    Duration::from_secs(60)
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
fn default_grpc_deadline_max() -> Duration {
    Duration::from_secs(300)
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
fn default_retry_backoff() -> Duration {
    Duration::from_millis(25)
}
fn default_retry_backoff_max() -> Duration {
    Duration::from_millis(250)
}
fn default_retry_ratio() -> f64 {
    0.2
}
fn default_retry_floor() -> u32 {
    10
}
fn default_sticky_name() -> String {
    "quic_proxy_backend".to_owned()
}
fn default_cookie_path() -> String {
    "/".to_owned()
}
fn default_outlier_percentage() -> u8 {
    50
}
fn default_outlier_minimum() -> u32 {
    20
}
fn default_outlier_period() -> Duration {
    Duration::from_secs(10)
}
fn default_latency_quantile() -> f64 {
    0.99
}
fn default_max_ejection_percent() -> u8 {
    50
}
fn default_dns_refresh() -> Duration {
    Duration::from_secs(30)
}
fn default_dns_timeout() -> Duration {
    Duration::from_secs(2)
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
