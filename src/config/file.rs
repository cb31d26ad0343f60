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
    pub route_defaults: FileActions,
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
#[serde(default, deny_unknown_fields)]
pub struct DiscoveryConfig {
    /// Names are resolved again this often (and soon after a connect error).
    #[serde(deserialize_with = "units::duration")]
    pub dns_refresh: Duration,
    /// DNS servers to ask (`10.0.0.10`, `127.0.0.1:5353`) instead of those in /etc/resolv.conf.
    #[serde(deserialize_with = "units::nameservers")]
    pub nameservers: Vec<SocketAddr>,
    /// How long one resolution may take.
    #[serde(deserialize_with = "units::duration")]
    pub timeout: Duration,
    /// Which address families become endpoints.
    pub ip_family: IpFamily,
}

impl Default for DiscoveryConfig {
    fn default() -> Self {
        Self {
            dns_refresh: Duration::from_secs(30),
            nameservers: Vec::new(),
            timeout: Duration::from_secs(2),
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
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// QUIC (UDP) and HTTPS (TCP) listen address.
    #[serde(deserialize_with = "units::listen_addr")]
    pub address: SocketAddr,
    /// Plain HTTP/1.1 listen address.
    #[serde(deserialize_with = "units::listen_addr")]
    pub fallback_address: SocketAddr,
    /// Certificate and key for HTTPS and QUIC; without it only the plain HTTP/1.1 listener runs.
    pub tls: Option<TlsConfig>,
    /// Answer every request on the plain listener with 308 to the same URL on HTTPS (ACME http-01
    /// challenges excepted).
    pub redirect_to_https: bool,
    /// Peers whose X-Forwarded-For is extended instead of replaced.
    pub trusted_proxies: Vec<IpNet>,
    /// How long in-flight requests may run on after SIGTERM.
    #[serde(deserialize_with = "units::duration")]
    pub drain_timeout: Duration,
    /// How long a client may take to send a complete request head.
    #[serde(deserialize_with = "units::duration")]
    pub header_read_timeout: Duration,
    /// Largest request head accepted; larger ones get 431.
    #[serde(deserialize_with = "units::size")]
    pub max_header_bytes: u64,
    /// Most header fields in an HTTP/1.1 request head; more get 431.
    pub max_headers: usize,
    /// Longest silence while a client sends a request body; then 408 (or the stream is reset).
    #[serde(deserialize_with = "units::duration")]
    pub client_body_timeout: Duration,
    /// Worker threads, each with its own listeners, QUIC endpoint and upstream connections; default: one
    /// per core.
    pub workers: Option<usize>,
    /// Let other processes listen on the same addresses (SO_REUSEPORT), to run several instances on one
    /// host; otherwise an address already in use stops start-up.
    pub reuse_port: bool,
    /// TCP client connections open at once (HTTP/1.1 and HTTPS together); beyond it new ones are closed
    /// as soon as they are accepted.
    pub max_connections: usize,
    /// An HTTP/2 client connection that moves no byte for this long is closed (GOAWAY; requests in flight
    /// finish). HTTP/1.1 keep-alive connections wait at most `header_read_timeout` for their next request.
    #[serde(deserialize_with = "units::duration")]
    pub idle_timeout: Duration,
    /// Client connections one address (IPv6: one /64) may have open at once, over TCP and QUIC each;
    /// beyond it new ones are closed on accept. 0: no limit beyond `max_connections`.
    pub max_connections_per_client: usize,
    /// Give every request an ID in `request_id_header` (kept when a trusted proxy sent one), passed to the
    /// backend, logged, traced, and returned to the client.
    pub request_id: bool,
    #[serde(deserialize_with = "units::header_name")]
    pub request_id_header: http::HeaderName,
    /// Responses compressed at once (each holds an encoder); beyond it responses go out uncompressed.
    pub max_compressed_streams: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            address: SocketAddr::from(([0u16; 8], 443)),
            fallback_address: SocketAddr::from(([0u16; 8], 80)),
            tls: None,
            redirect_to_https: false,
            trusted_proxies: Vec::new(),
            drain_timeout: Duration::from_secs(30),
            header_read_timeout: Duration::from_secs(10),
            max_header_bytes: 64 * 1024,
            max_headers: 100,
            client_body_timeout: Duration::from_secs(60),
            workers: None,
            reuse_port: false,
            max_connections: 10_000,
            idle_timeout: Duration::from_secs(60),
            max_connections_per_client: 1_000,
            request_id: true,
            request_id_header: http::HeaderName::from_static("x-request-id"),
            max_compressed_streams: 256,
        }
    }
}

/// The TLS listeners' certificates: one pair of files, a list chosen by SNI, certificates from an ACME CA,
/// or any mix of them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// The one-certificate form: a PEM chain and its key.
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// More certificates, chosen by SNI against their names; the first one the config names (this list's
    /// or `cert_file`) serves clients without SNI or with a name no certificate has.
    pub certificates: Vec<CertificateFiles>,
    /// Certificates obtained and renewed from an ACME CA (RFC 8555).
    pub acme: Option<AcmeConfig>,
}

impl TlsConfig {
    /// Every certificate read from files: `cert_file`/`key_file` first, then `certificates`, each with the
    /// key its errors are reported under.
    pub fn files(&self) -> Vec<(String, CertificateFiles)> {
        let mut files = Vec::with_capacity(self.certificates.len() + 1);
        if let (Some(cert_file), Some(key_file)) = (&self.cert_file, &self.key_file) {
            let pair = CertificateFiles {
                cert_file: cert_file.clone(),
                key_file: key_file.clone(),
            };
            files.push(("server.tls".to_owned(), pair));
        }
        for (index, pair) in self.certificates.iter().enumerate() {
            files.push((format!("server.tls.certificates[{index}]"), pair.clone()));
        }
        files
    }
}

/// A certificate chain and its key, both PEM.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateFiles {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

/// Let's Encrypt's production directory, `acme.directory`'s default.
pub const LETS_ENCRYPT: &str = "https://acme-v02.api.letsencrypt.org/directory";

/// Automatic certificates from an ACME CA.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AcmeConfig {
    /// The CA's directory URL.
    pub directory: String,
    /// PEM certificates trusted for the directory's own HTTPS (a private or test CA), beside the system's.
    pub directory_ca_file: Option<PathBuf>,
    /// Contact for the CA's expiry and policy mail.
    pub email: Option<String>,
    /// Names to get certificates for, one certificate each; empty: every exact `host` of `routes`.
    pub domains: Vec<String>,
    /// Account key, certificates, keys and lock files; instances sharing it share certificates.
    pub storage: PathBuf,
    /// Challenge types offered, in order of preference.
    pub challenges: Vec<ChallengeType>,
    /// Renew when less than this is left; default: a third of the certificate's lifetime.
    #[serde(deserialize_with = "units::optional_duration")]
    pub renew_before: Option<Duration>,
    /// External Account Binding, for CAs that need one.
    pub eab: Option<ExternalAccount>,
    /// The longest one request to the CA may take, connecting included.
    #[serde(deserialize_with = "units::duration")]
    pub request_timeout: Duration,
}

impl Default for AcmeConfig {
    fn default() -> Self {
        Self {
            directory: LETS_ENCRYPT.to_owned(),
            directory_ca_file: None,
            email: None,
            domains: Vec::new(),
            storage: PathBuf::from("/var/lib/quic-proxy/acme"),
            challenges: vec![ChallengeType::Http01, ChallengeType::TlsAlpn01],
            renew_before: None,
            eab: None,
            request_timeout: Duration::from_secs(30),
        }
    }
}

/// An ACME challenge type this proxy answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum ChallengeType {
    /// A token over plain HTTP on `server.fallback_address` (port 80 for the CA).
    #[serde(rename = "http-01")]
    Http01,
    /// A special certificate over TLS on `server.address` (port 443 for the CA).
    #[serde(rename = "tls-alpn-01")]
    TlsAlpn01,
}

impl ChallengeType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Http01 => "http-01",
            Self::TlsAlpn01 => "tls-alpn-01",
        }
    }
}

/// An External Account Binding: the key ID and the base64url MAC key the CA issued.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExternalAccount {
    pub kid: String,
    pub hmac_key: String,
}

/// The QUIC transport and its HTTP/3 limits.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QuicConfig {
    /// Concurrent request streams a client may open per connection.
    pub max_concurrent_streams: u32,
    /// A connection with no traffic for this long is closed.
    #[serde(deserialize_with = "units::duration")]
    pub idle_timeout: Duration,
    /// Flow-control window per stream.
    #[serde(deserialize_with = "units::size")]
    pub stream_receive_window: u64,
    /// Flow-control window per connection, over all streams.
    #[serde(deserialize_with = "units::size")]
    pub receive_window: u64,
    /// Largest request header section (QPACK-decoded); larger ones get 431.
    #[serde(deserialize_with = "units::size")]
    pub max_header_bytes: u64,
    /// Connections open at once; new ones are refused beyond it.
    pub max_connections: usize,
    /// UDP socket receive buffer asked of the kernel.
    #[serde(deserialize_with = "units::size")]
    pub socket_receive_buffer: u64,
    /// UDP socket send buffer asked of the kernel.
    #[serde(deserialize_with = "units::size")]
    pub socket_send_buffer: u64,
    /// Address validation: `auto` sends Retry once unvalidated handshakes exceed `retry_threshold`.
    pub retry: RetryMode,
    pub retry_threshold: usize,
    /// Hex secret (at least 32 bytes) for stateless reset and Retry tokens; share it between instances
    /// behind one address. Random per process when absent.
    pub stateless_reset_key: Option<String>,
    /// Length of the connection IDs this server issues (4 to 20 bytes).
    pub connection_id_length: usize,
    /// Accept 0-RTT requests (safe methods only; others get 425).
    pub early_data: bool,
    /// The port advertised in Alt-Svc; the bound UDP port when absent (set it behind port forwarding).
    pub alt_svc_port: Option<u16>,
    /// A file holding `stateless_reset_key` (a mounted secret), instead of writing the key in the config.
    pub stateless_reset_key_file: Option<PathBuf>,
}

impl Default for QuicConfig {
    fn default() -> Self {
        Self {
            max_concurrent_streams: 100,
            idle_timeout: Duration::from_secs(30),
            stream_receive_window: 1 << 20,
            receive_window: 8 << 20,
            max_header_bytes: 64 * 1024,
            max_connections: 10_000,
            socket_receive_buffer: 4 << 20,
            socket_send_buffer: 4 << 20,
            retry: RetryMode::default(),
            retry_threshold: 128,
            stateless_reset_key: None,
            connection_id_length: 8,
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
#[serde(default, deny_unknown_fields)]
pub struct BackendTls {
    /// The name sent (SNI) and verified; default: the URL's host.
    pub server_name: Option<String>,
    /// PEM certificates of the CAs to trust instead of the system's.
    pub ca_file: Option<PathBuf>,
    /// A client certificate chain and key (PEM), for backends that require mutual TLS.
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// Accept any certificate. Only ever for testing; the proxy warns at start-up.
    pub insecure_skip_verify: bool,
}

/// How an upstream picks a backend, and what it does when backends fail or are overloaded.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BalancerConfig {
    pub algorithm: Algorithm,
    /// `algorithm: hash`: what in a request picks its backend.
    pub hash_on: Option<HashOn>,
    /// The proxy sets a cookie naming (opaquely) the backend that answered; a request carrying it goes back
    /// there while that backend is usable.
    pub sticky_cookie: Option<StickyCookie>,
    /// What to do when no backend is healthy.
    pub when_all_unhealthy: AllUnhealthy,
    /// Panic threshold: while fewer than this share (in percent) of the backends are healthy, balance over
    /// all of them, so that the few healthy ones are not crushed by the whole load. 0 turns it off.
    pub min_healthy_percent: u8,
    /// A recovered backend's weight ramps from 10% to 100% over this window.
    #[serde(deserialize_with = "units::optional_duration")]
    pub slow_start: Option<Duration>,
    /// Further attempts on other backends when one fails before answering.
    pub retries: u32,
    /// Request bodies up to this size are kept so they can be sent again; larger ones are not retried.
    #[serde(deserialize_with = "units::size")]
    pub retry_buffer: u64,
    /// Response statuses retried on another backend, for idempotent requests (failures before an answer
    /// always are).
    pub retry_on_statuses: Vec<u16>,
    /// A retry waits a random time up to this long, doubled for each further retry, up to `retry_backoff_max`.
    #[serde(deserialize_with = "units::duration")]
    pub retry_backoff: Duration,
    #[serde(deserialize_with = "units::duration")]
    pub retry_backoff_max: Duration,
    pub retry_budget: RetryBudget,
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
            retries: 2,
            retry_buffer: 64 * 1024,
            retry_on_statuses: Vec::new(),
            retry_backoff: Duration::from_millis(25),
            retry_backoff_max: Duration::from_millis(250),
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
        let expected = "client_address, path, {header: NAME} or {cookie: NAME}";
        let invalid = |what: &str| serde::de::Error::custom(format!("{what}; write {expected}"));
        match KeyForm::read(d, "not a hash key", expected)? {
            KeyForm::Name(name) => match name.as_str() {
                "client_address" => Ok(Self::ClientAddress),
                "path" => Ok(Self::Path),
                "header" | "cookie" => Err(invalid(&format!("`{name}` needs a name"))),
                _ => Err(invalid(&format!("unknown hash key `{name}`"))),
            },
            KeyForm::Field(kind, name) => match kind.as_str() {
                "header" => Ok(Self::Header(name.to_ascii_lowercase())),
                "cookie" => Ok(Self::Cookie(name)),
                _ => Err(invalid(&format!("unknown hash key `{kind}`"))),
            },
        }
    }
}

/// A key written as a bare name (`client_address`) or a map of one entry (`{header: NAME}`), as hash keys
/// and rate-limit keys are.
enum KeyForm {
    Name(String),
    Field(String, String),
}

impl KeyForm {
    /// Reads one; `what` and `expected` make the error for anything else.
    fn read<'de, D: serde::Deserializer<'de>>(d: D, what: &str, expected: &str) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Name(String),
            Field(BTreeMap<String, String>),
        }
        let invalid = |what: &str| serde::de::Error::custom(format!("{what}; write {expected}"));
        match Raw::deserialize(d).map_err(|_| invalid(what))? {
            Raw::Name(name) => Ok(Self::Name(name)),
            Raw::Field(field) => {
                let mut entries = field.into_iter();
                match (entries.next(), entries.next()) {
                    (Some((kind, name)), None) => Ok(Self::Field(kind, name)),
                    _ => Err(invalid("one key expected")),
                }
            }
        }
    }
}

/// The affinity cookie the proxy sets.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StickyCookie {
    pub name: String,
    /// How long the browser keeps it; without it, until the browser closes.
    #[serde(deserialize_with = "units::optional_duration")]
    pub max_age: Option<Duration>,
    pub path: String,
}

impl Default for StickyCookie {
    fn default() -> Self {
        Self {
            name: "quic_proxy_backend".to_owned(),
            max_age: None,
            path: "/".to_owned(),
        }
    }
}

/// At most `ratio` of an upstream's requests (over the last 10 seconds) may be retries, plus
/// `min_per_second`, so that a failing upstream is never hit by a retry storm.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetryBudget {
    pub ratio: f64,
    pub min_per_second: u32,
}

impl Default for RetryBudget {
    fn default() -> Self {
        Self {
            ratio: 0.2,
            min_per_second: 10,
        }
    }
}

/// Per-backend overload limits; over them a request is refused at once with 503, never queued behind
/// others. 0 means no limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CircuitBreaker {
    /// Open connections to the backend, over every worker.
    pub max_connections: u32,
    /// Requests waiting for a connection while `max_connections` are open; 0 with `max_connections` set
    /// means none wait.
    pub max_pending: u32,
    /// Requests in flight to the backend.
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
#[serde(default, deny_unknown_fields)]
pub struct HealthCheckConfig {
    /// Active probes on or off.
    pub enabled: bool,
    #[serde(rename = "type")]
    pub kind: CheckKind,
    #[serde(deserialize_with = "units::duration")]
    pub interval: Duration,
    #[serde(deserialize_with = "units::duration")]
    pub timeout: Duration,
    pub path: String,
    /// `type: grpc`: the service asked about; empty asks about the server as a whole.
    pub grpc_service: String,
    pub unhealthy_threshold: u32,
    pub healthy_threshold: u32,
    /// Statuses that count as healthy: codes (`204`) or ranges (`"200-399"`).
    pub expected_statuses: Vec<StatusRange>,
    /// A substring the probe's response body must contain.
    pub expect_body: Option<String>,
    /// The state before the first probe.
    pub initial_state: InitialState,
    pub passive: PassiveConfig,
}

impl Default for HealthCheckConfig {
    /// A `health_check` section that says nothing else: probes on.
    fn default() -> Self {
        Self {
            enabled: true,
            kind: CheckKind::default(),
            interval: Duration::from_secs(10),
            timeout: Duration::from_secs(5),
            path: "/health".to_owned(),
            grpc_service: String::new(),
            unhealthy_threshold: 3,
            healthy_threshold: 2,
            expected_statuses: vec![StatusRange { low: 200, high: 399 }],
            expect_body: None,
            initial_state: InitialState::default(),
            passive: PassiveConfig::default(),
        }
    }
}

impl HealthCheckConfig {
    /// The configuration used when a file has no `health_check` section: no probes, passive checks on.
    pub fn disabled() -> Self {
        Self {
            enabled: false,
            ..Self::default()
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
#[serde(default, deny_unknown_fields)]
pub struct PassiveConfig {
    pub enabled: bool,
    /// Consecutive failed requests that eject a backend.
    pub unhealthy_threshold: u32,
    /// Response statuses that count as failures (connect errors and timeouts always do).
    pub failure_statuses: Vec<u16>,
    /// Without active probes, an ejected backend returns on probation after this long (doubling on
    /// repeated ejections, up to `max_ejection`).
    #[serde(deserialize_with = "units::duration")]
    pub reactivation: Duration,
    #[serde(deserialize_with = "units::duration")]
    pub max_ejection: Duration,
    /// Never more than this share (in percent) of an upstream's backends ejected by traffic at once; one
    /// ejection is always allowed.
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
            unhealthy_threshold: 5,
            failure_statuses: vec![502, 503, 504],
            reactivation: Duration::from_secs(30),
            max_ejection: Duration::from_secs(300),
            max_ejection_percent: 50,
            failure_rate: None,
            latency: None,
        }
    }
}

/// Eject a backend when, over the last `period`, at least `minimum_requests` were answered and more than
/// `percentage` of them failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FailureRate {
    pub percentage: u8,
    pub minimum_requests: u32,
    #[serde(deserialize_with = "units::duration")]
    pub period: Duration,
}

impl Default for FailureRate {
    fn default() -> Self {
        Self {
            percentage: 50,
            minimum_requests: default_outlier_minimum(),
            period: default_outlier_period(),
        }
    }
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
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    /// Bearer token required by the state-changing endpoints (drain, undrain, reload); without it they are
    /// refused.
    pub token: Option<String>,
    /// A file holding the token (a mounted secret), instead of writing it in the config.
    pub token_file: Option<PathBuf>,
    /// The web console at `/` on the admin listener.
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

/// A route: which requests it takes (host, path), where they go (an upstream, static files, a redirect or a
/// direct answer), and what happens on the way. The action keys are those of [`FileActions`]; serde cannot
/// both flatten them in and refuse unknown keys, so they are repeated here.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileRoute {
    pub host: Option<String>,
    #[serde(default = "default_route_path")]
    pub path: String,
    pub upstream: Option<String>,
    pub redirect: Option<FileRedirect>,
    pub respond: Option<FileRespond>,
    #[serde(rename = "static")]
    pub static_files: Option<FileStatic>,
    pub strip_prefix: Option<String>,
    pub rewrite: Option<FileRewrite>,
    pub request_headers: Option<FileHeaderRules>,
    pub response_headers: Option<FileHeaderRules>,
    pub compress: Option<FileCompress>,
    pub rate_limit: Option<FileRateLimit>,
    pub allow: Option<Vec<IpNet>>,
    pub deny: Option<Vec<IpNet>>,
}

impl FileRoute {
    /// The route's own actions, each falling back to `defaults` where the route says nothing.
    pub fn actions(&self, defaults: &FileActions) -> FileActions {
        FileActions {
            request_headers: self
                .request_headers
                .clone()
                .or_else(|| defaults.request_headers.clone()),
            response_headers: self
                .response_headers
                .clone()
                .or_else(|| defaults.response_headers.clone()),
            compress: self.compress.clone().or_else(|| defaults.compress.clone()),
            rate_limit: self.rate_limit.clone().or_else(|| defaults.rate_limit.clone()),
            allow: self.allow.clone().or_else(|| defaults.allow.clone()),
            deny: self.deny.clone().or_else(|| defaults.deny.clone()),
        }
    }
}

/// What a route does besides choosing a target; `route_defaults` gives every route (and requests that match
/// none) these, unless the route sets the key itself.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileActions {
    pub request_headers: Option<FileHeaderRules>,
    pub response_headers: Option<FileHeaderRules>,
    pub compress: Option<FileCompress>,
    pub rate_limit: Option<FileRateLimit>,
    pub allow: Option<Vec<IpNet>>,
    pub deny: Option<Vec<IpNet>>,
}

/// `redirect: {to, status}`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileRedirect {
    pub to: String,
    #[serde(default = "default_redirect_status")]
    pub status: u16,
}

/// `respond: {status, body, content_type, headers}`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileRespond {
    #[serde(default = "default_respond_status")]
    pub status: u16,
    #[serde(default)]
    pub body: String,
    pub content_type: Option<String>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

/// `static: {root, index, precompressed}`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileStatic {
    pub root: PathBuf,
    #[serde(default = "default_index")]
    pub index: Vec<String>,
    /// Serve `file.zst`, `file.br` or `file.gz` beside `file` to clients that accept it.
    #[serde(default = "default_true")]
    pub precompressed: bool,
}

/// `rewrite: {regex, replacement}`: the path (without the query) rewritten before it goes on.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileRewrite {
    pub regex: String,
    pub replacement: String,
}

/// `request_headers` / `response_headers`: fields set (replacing), added, and removed.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileHeaderRules {
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    #[serde(default)]
    pub add: BTreeMap<String, String>,
    #[serde(default)]
    pub remove: Vec<String>,
}

/// `compress: true` or `compress: {algorithms, min_size, types}`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub(super) enum FileCompress {
    Enabled(bool),
    Options(FileCompressOptions),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileCompressOptions {
    pub algorithms: Option<Vec<String>>,
    #[serde(default, deserialize_with = "units::optional_size")]
    pub min_size: Option<u64>,
    pub types: Option<Vec<String>>,
}

/// `rate_limit: {requests_per_second, burst, key}`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileRateLimit {
    pub requests_per_second: f64,
    pub burst: Option<u32>,
    #[serde(default)]
    pub key: RateKey,
}

/// What a rate limit counts requests by.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub enum RateKey {
    /// The client's address (the real one, behind trusted proxies); IPv6 by /64.
    #[default]
    ClientAddress,
    /// One bucket for the whole route.
    Route,
    /// A request header's value; requests without it count by client address.
    Header(http::HeaderName),
}

impl<'de> Deserialize<'de> for RateKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let expected = "client_address, route or {header: NAME}";
        let invalid = |what: &str| serde::de::Error::custom(format!("{what}; write {expected}"));
        match KeyForm::read(d, "not a rate limit key", expected)? {
            KeyForm::Name(name) => match name.as_str() {
                "client_address" => Ok(Self::ClientAddress),
                "route" => Ok(Self::Route),
                _ => Err(invalid(&format!("unknown rate limit key `{name}`"))),
            },
            KeyForm::Field(kind, name) => match kind.as_str() {
                "header" => http::HeaderName::from_bytes(name.as_bytes())
                    .map(Self::Header)
                    .map_err(|_| invalid(&format!("`{name}` is not a header name"))),
                _ => Err(invalid(&format!("unknown rate limit key `{kind}`"))),
            },
        }
    }
}

/// Upstream connection timeouts.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Timeouts {
    #[serde(deserialize_with = "units::duration")]
    pub connect: Duration,
    #[serde(deserialize_with = "units::duration")]
    pub response_header: Duration,
    #[serde(deserialize_with = "units::duration")]
    pub pool_idle: Duration,
    /// Longest silence while a backend sends a response body; then both sides are aborted and the backend
    /// is charged with a failure.
    #[serde(deserialize_with = "units::duration")]
    pub response_body: Duration,
    /// A gRPC call's deadline (`grpc-timeout`) extends `response_header` and `response_body` for that call,
    /// up to this long, so that a backend is given the time its client allows.
    #[serde(deserialize_with = "units::duration")]
    pub grpc_deadline_max: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            connect: Duration::from_secs(5),
            response_header: Duration::from_secs(60),
            pool_idle: Duration::from_secs(90),
            response_body: Duration::from_secs(60),
            grpc_deadline_max: Duration::from_secs(300),
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
#[serde(default, deny_unknown_fields)]
pub struct Telemetry {
    pub metrics: MetricsConfig,
    pub logging: LoggingConfig,
    pub tracing: TracingConfig,
}

/// Distributed tracing: a span per request and per upstream attempt, exported over OTLP.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TracingConfig {
    /// On when the section names an endpoint, unless set to false.
    pub enabled: Option<bool>,
    /// Where spans go: an OTLP receiver, `http://collector:4317` (gRPC) or `http://collector:4318` (HTTP).
    pub otlp_endpoint: Option<String>,
    /// The same, for a Jaeger collector (Jaeger takes OTLP).
    pub jaeger_endpoint: Option<String>,
    /// `grpc` or `http` (OTLP/HTTP with protobuf bodies, to `<endpoint>/v1/traces`).
    pub protocol: OtlpProtocol,
    /// Share of new traces recorded; a request that carries a `traceparent` follows its sampled flag.
    pub sampling_ratio: f64,
    pub service_name: String,
    /// Further resource attributes, like `deployment.environment: production`.
    pub resource_attributes: BTreeMap<String, String>,
    /// Finished spans waiting for export; beyond this, spans are dropped (and counted).
    pub queue_size: usize,
    #[serde(deserialize_with = "units::duration")]
    pub export_timeout: Duration,
}

impl Default for TracingConfig {
    fn default() -> Self {
        Self {
            enabled: None,
            otlp_endpoint: None,
            jaeger_endpoint: None,
            protocol: OtlpProtocol::default(),
            sampling_ratio: 1.0,
            service_name: "quic-proxy".to_owned(),
            resource_attributes: BTreeMap::new(),
            queue_size: 2048,
            export_timeout: Duration::from_secs(10),
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
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    pub enabled: bool,
    #[serde(deserialize_with = "units::listen_addr")]
    pub address: SocketAddr,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            address: SocketAddr::from(([0u16; 8], 9090)),
        }
    }
}

/// Log level and line format.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LoggingConfig {
    pub level: String,
    pub format: LogFormat,
}

impl Default for LoggingConfig {
    fn default() -> Self {
        Self {
            level: "info".to_owned(),
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

fn default_weight() -> u32 {
    1
}
fn default_route_path() -> String {
    "/*".to_owned()
}
fn default_redirect_status() -> u16 {
    302
}
fn default_respond_status() -> u16 {
    200
}
fn default_index() -> Vec<String> {
    vec!["index.html".to_owned()]
}
fn default_true() -> bool {
    true
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
