//! Configuration: the file's sections (`file`), scalar parsing (`units`), and the validated `Config`.
//!
//! Loading happens in two stages: serde reads the YAML into `file` structs (unknown keys rejected, defaults
//! filled in), then `validate` checks everything that spans fields and builds the `Config` the proxy runs on.

mod file;
mod locate;
mod problem;
mod route;
mod template;
mod units;

use std::fmt;
use std::path::{Path, PathBuf};

use http::uri::{Authority, Scheme};
use http::Uri;

pub use file::{
    AcmeConfig, AdminConfig, Algorithm, AllUnhealthy, BackendTls, BalancerConfig, CertificateFiles, ChallengeType,
    CheckKind, CircuitBreaker, DiscoveryConfig, ExternalAccount, FailureRate, HashOn, HealthCheckConfig, InitialState,
    IpFamily, LatencyOutlier, LogFormat, LoggingConfig, MetricsConfig, OtlpProtocol, PassiveConfig, QuicConfig,
    RateKey, RetryBudget, RetryMode, ServerConfig, StatusRange, StickyCookie, Telemetry, Timeouts, TlsConfig,
    TracingConfig, UpstreamProtocol, LETS_ENCRYPT,
};
pub use route::{
    Actions, Coding, Compress, HeaderRules, HostMatch, PathMatch, RateLimit, Rewrite, RouteConfig, StaticFiles, Target,
    COMPRESSIBLE_TYPES,
};
pub use template::{Placeholder, Template};
pub use units::{parse_duration, parse_listen_addr, parse_size};

use file::{FileBackend, FileConfig};
use problem::{with_suggestion, Invalid};

/// The name of the pool built from the top-level `backends` list.
pub const DEFAULT_UPSTREAM: &str = "default";

/// The longest period a traffic rule (failure rate, latency) may cover: what each backend's traffic window
/// keeps.
pub const LONGEST_TRAFFIC_PERIOD: std::time::Duration = std::time::Duration::from_secs(30);

/// A configuration that passed every check.
#[derive(Debug, Clone)]
pub struct Config {
    pub server: ServerConfig,
    pub upstreams: Vec<UpstreamConfig>,
    pub routes: Vec<RouteConfig>,
    /// What happens to requests that match no route (`route_defaults`).
    pub route_defaults: Actions,
    /// The upstream for requests that match no route.
    pub default_upstream: Option<String>,
    pub quic: QuicConfig,
    /// `quic.stateless_reset_key`, decoded.
    pub quic_secret: Option<Vec<u8>>,
    pub admin: AdminConfig,
    /// `admin.token`, or the contents of `admin.token_file`.
    pub admin_token: Option<String>,
    pub timeouts: Timeouts,
    pub telemetry: Telemetry,
    pub discovery: DiscoveryConfig,
    /// The file this configuration was read from (as given, not canonicalised).
    pub path: PathBuf,
    /// The first 16 hex digits of the SHA-256 of the file's text: which configuration is running.
    pub digest: String,
    /// The file's text, for showing (with secrets redacted) in the admin console.
    pub text: std::sync::Arc<str>,
    /// Where spans are exported, when tracing is on.
    pub tracing: Option<Tracing>,
}

/// Tracing, validated: on, with an endpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct Tracing {
    pub endpoint: Uri,
    pub protocol: OtlpProtocol,
    pub sampling_ratio: f64,
    pub service_name: String,
    pub resource_attributes: Vec<(String, String)>,
    pub queue_size: usize,
    pub export_timeout: std::time::Duration,
}

/// A named pool of backends with its balancing and health settings.
#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    pub name: String,
    /// Where its backends are in the file (`backends`, `upstreams.api.backends`), for error messages.
    pub key: String,
    pub backends: Vec<BackendConfig>,
    pub balancer: BalancerConfig,
    pub health_check: HealthCheckConfig,
}

/// One backend server.
#[derive(Debug, Clone)]
pub struct BackendConfig {
    pub name: String,
    pub scheme: Scheme,
    pub authority: Authority,
    pub weight: u32,
    /// Where active checks go instead of `authority` + `health_check.path`.
    pub health_url: Option<Uri>,
    pub protocol: UpstreamProtocol,
    /// For `https://` backends; the defaults (system roots, SNI from the host) when the file has no `tls`.
    pub tls: Option<BackendTls>,
    /// For an endpoint found by DNS discovery: the address its connections go to (the URL's host still
    /// names it in Host, SNI and certificate checks).
    pub address: Option<std::net::SocketAddr>,
}

/// A configuration problem: the file, where in it, and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    /// Key path such as `upstreams.api.backends[1].weight`; empty for file-level problems.
    pub key: String,
    pub line: Option<usize>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if !self.key.is_empty() {
            write!(f, ": {}", self.key)?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Worker threads: `server.workers`, or one per core.
    pub fn workers(&self) -> usize {
        self.server
            .workers
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, usize::from))
    }

    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.to_owned(),
            key: String::new(),
            line: None,
            message: format!("cannot read the file: {e}"),
        })?;
        Self::parse(path, &text)
    }

    /// Parses and validates config text; `path` is only used in error messages.
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let error = |key: String, line: Option<usize>, message: String| ConfigError {
            file: path.to_owned(),
            key,
            line,
            message,
        };
        let has_content = text.lines().any(|line| {
            let line = line.trim();
            !line.is_empty() && !line.starts_with('#') && line != "---"
        });
        if !has_content {
            return Err(error(String::new(), None, "the file is empty".to_owned()));
        }
        let deserializer = serde_yaml::Deserializer::from_str(text);
        let raw: FileConfig = serde_path_to_error::deserialize(deserializer).map_err(|e| {
            let key = e.path().to_string();
            let inner = e.into_inner();
            let line = inner.location().map(|l| l.line());
            error(
                if key == "." { String::new() } else { key },
                line,
                explain_serde_error(&inner),
            )
        })?;
        let mut config = validate(raw).map_err(|(key, message)| {
            let line = locate::line_of(text, &key);
            error(key, line, message)
        })?;
        config.path = path.to_owned();
        config.digest = digest(text);
        config.text = std::sync::Arc::from(text);
        Ok(config)
    }
}

/// serde's message without its location suffix or serde_yaml's own path prefix (the key path is printed
/// once, from `serde_path_to_error`), with a "did you mean" for near-miss keys and variants.
fn explain_serde_error(e: &serde_yaml::Error) -> String {
    let full = e.to_string();
    let mut message = match full.find(" at line ") {
        Some(end) => &full[..end],
        None => full.as_str(),
    };
    if let Some((prefix, rest)) = message.split_once(": ") {
        if !prefix.contains(char::is_whitespace) && !prefix.contains('`') {
            message = rest;
        }
    }
    if !(message.starts_with("unknown field") || message.starts_with("unknown variant")) {
        return message.to_owned();
    }
    let quoted: Vec<&str> = message.split('`').skip(1).step_by(2).collect();
    match quoted.split_first() {
        Some((given, candidates)) => with_suggestion(message, given, candidates),
        None => message.to_owned(),
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Algorithm::RoundRobin => "round_robin",
            Algorithm::Weighted => "weighted",
            Algorithm::LeastConnections => "least_connections",
            Algorithm::P2c => "p2c",
            Algorithm::Random => "random",
            Algorithm::Hash => "hash",
        })
    }
}

fn validate(raw: FileConfig) -> Result<Config, Invalid> {
    let FileConfig {
        server,
        backends,
        load_balancer,
        health_check,
        upstreams: raw_upstreams,
        routes: raw_routes,
        route_defaults: raw_route_defaults,
        quic,
        admin,
        timeouts,
        telemetry,
        discovery,
    } = raw;
    let default_health = health_check.unwrap_or_else(HealthCheckConfig::disabled);
    check_health("health_check", &default_health)?;

    let mut upstreams = Vec::new();
    if let Some(list) = backends {
        if list.is_empty() {
            return Err(("backends".into(), "the list is empty; add at least one backend".into()));
        }
        check_balancer("load_balancer", &load_balancer)?;
        upstreams.push(upstream(
            DEFAULT_UPSTREAM,
            "backends",
            list,
            load_balancer.clone(),
            default_health.clone(),
        )?);
    }
    for (name, raw_upstream) in raw_upstreams {
        let key = format!("upstreams.{name}");
        if name.is_empty() {
            return Err((key, "an upstream needs a name".into()));
        }
        if upstreams.iter().any(|u: &UpstreamConfig| u.name == name) {
            return Err((
                key,
                format!("`{name}` is taken by the top-level backends list; choose another name"),
            ));
        }
        if raw_upstream.backends.is_empty() {
            return Err((
                format!("{key}.backends"),
                "missing or empty; add at least one backend".into(),
            ));
        }
        let health = raw_upstream.health_check.unwrap_or_else(|| default_health.clone());
        check_health(&format!("{key}.health_check"), &health)?;
        let balancer = match raw_upstream.load_balancer {
            Some(balancer) => {
                check_balancer(&format!("{key}.load_balancer"), &balancer)?;
                balancer
            }
            None => {
                check_balancer("load_balancer", &load_balancer)?;
                load_balancer.clone()
            }
        };
        upstreams.push(upstream(
            &name,
            &format!("{key}.backends"),
            raw_upstream.backends,
            balancer,
            health,
        )?);
    }
    // A proxy with routes that only answer, redirect or serve files needs no upstream at all.
    if upstreams.is_empty() && raw_routes.is_empty() {
        return Err((
            "backends".into(),
            "missing: define `backends`, an entry in `upstreams`, or routes".into(),
        ));
    }

    let route_defaults = route::defaults(&raw_route_defaults)?;
    let upstream_names: Vec<&str> = upstreams.iter().map(|u| u.name.as_str()).collect();
    let routes = raw_routes
        .into_iter()
        .enumerate()
        .map(|(index, raw)| route::route(index, raw, &raw_route_defaults, &upstream_names))
        .collect::<Result<Vec<_>, _>>()?;

    let default_upstream = upstreams
        .iter()
        .find(|u| u.name == DEFAULT_UPSTREAM)
        .map(|u| u.name.clone());
    if default_upstream.is_none() && routes.is_empty() {
        return Err((
            "routes".into(),
            "no top-level `backends` and no routes: no request could reach an upstream".into(),
        ));
    }
    const LEVELS: [&str; 6] = ["error", "warn", "info", "debug", "trace", "off"];
    if !LEVELS.contains(&telemetry.logging.level.to_ascii_lowercase().as_str()) {
        return Err((
            "telemetry.logging.level".into(),
            format!(
                "`{}` is not a log level (error, warn, info, debug, trace)",
                telemetry.logging.level
            ),
        ));
    }
    check_server(&server)?;
    let mut server = server;
    if let Some(tls) = &mut server.tls {
        check_tls(tls, &routes)?;
    }
    if timeouts.response_body.is_zero() {
        return Err(("timeouts.response_body".into(), "must be above zero".into()));
    }
    let quic_secret = check_quic(&quic)?;
    let admin_token = admin_token(&admin)?;
    let tracing = check_tracing(&telemetry.tracing)?;
    Ok(Config {
        server,
        upstreams,
        routes,
        route_defaults,
        default_upstream,
        quic,
        quic_secret,
        admin,
        admin_token,
        timeouts,
        telemetry,
        discovery,
        path: PathBuf::new(),
        digest: String::new(),
        text: std::sync::Arc::from(""),
        tracing,
    })
}

/// The first 16 hex digits of the SHA-256 of a config text.
pub fn digest(text: &str) -> String {
    use sha2::Digest as _;
    let hash = sha2::Sha256::digest(text.as_bytes());
    hash.iter().take(8).map(|byte| format!("{byte:02x}")).collect()
}

fn check_quic(quic: &QuicConfig) -> Result<Option<Vec<u8>>, Invalid> {
    if !(4..=20).contains(&quic.connection_id_length) {
        return Err((
            "quic.connection_id_length".into(),
            "must be between 4 and 20 bytes".into(),
        ));
    }
    if quic.max_concurrent_streams == 0 {
        return Err(("quic.max_concurrent_streams".into(), "must be at least 1".into()));
    }
    if quic.max_header_bytes < 1024 {
        return Err(("quic.max_header_bytes".into(), "must be at least 1KiB".into()));
    }
    if quic.stream_receive_window == 0 || quic.receive_window < quic.stream_receive_window {
        return Err((
            "quic.receive_window".into(),
            "must be at least quic.stream_receive_window, and both above zero".into(),
        ));
    }
    let (key, hex) = match (&quic.stateless_reset_key, &quic.stateless_reset_key_file) {
        (None, None) => return Ok(None),
        (Some(_), Some(_)) => {
            return Err((
                "quic.stateless_reset_key_file".into(),
                "set either stateless_reset_key or stateless_reset_key_file, not both".into(),
            ))
        }
        (Some(hex), None) => ("quic.stateless_reset_key", hex.clone()),
        (None, Some(file)) => (
            "quic.stateless_reset_key_file",
            read_secret("quic.stateless_reset_key_file", file)?,
        ),
    };
    let hex = hex.trim();
    let bytes: Option<Vec<u8>> = (hex.len() % 2 == 0)
        .then(|| {
            (0..hex.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
                .collect()
        })
        .flatten();
    match bytes {
        Some(bytes) if bytes.len() >= 32 => Ok(Some(bytes)),
        _ => Err((
            key.into(),
            "must be at least 32 bytes written as hex (64 hex digits); generate one with `openssl rand -hex 32`".into(),
        )),
    }
}

/// The contents of a secret file, named in errors by its key path.
fn read_secret(key: &str, path: &Path) -> Result<String, Invalid> {
    std::fs::read_to_string(path).map_err(|e| (key.to_owned(), format!("cannot read {}: {e}", path.display())))
}

fn admin_token(admin: &AdminConfig) -> Result<Option<String>, Invalid> {
    let token = match (&admin.token, &admin.token_file) {
        (None, None) => return Ok(None),
        (Some(_), Some(_)) => {
            return Err((
                "admin.token_file".into(),
                "set either token or token_file, not both".into(),
            ))
        }
        (Some(token), None) => token.clone(),
        (None, Some(file)) => read_secret("admin.token_file", file)?,
    };
    let token = token.trim().to_owned();
    if token.len() < 16 {
        return Err((
            if admin.token.is_some() {
                "admin.token"
            } else {
                "admin.token_file"
            }
            .into(),
            "must be at least 16 characters; generate one with `openssl rand -hex 32`".into(),
        ));
    }
    Ok(Some(token))
}

fn check_tracing(tracing: &TracingConfig) -> Result<Option<Tracing>, Invalid> {
    let key = |field: &str| format!("telemetry.tracing.{field}");
    let (field, endpoint) = match (&tracing.otlp_endpoint, &tracing.jaeger_endpoint) {
        (Some(_), Some(_)) => {
            return Err((
                key("jaeger_endpoint"),
                "set otlp_endpoint or its alias jaeger_endpoint, not both".into(),
            ))
        }
        (Some(endpoint), None) => ("otlp_endpoint", endpoint),
        (None, Some(endpoint)) => ("jaeger_endpoint", endpoint),
        (None, None) if tracing.enabled == Some(true) => {
            return Err((
                key("otlp_endpoint"),
                "tracing is enabled but has no endpoint; write it like http://127.0.0.1:4317".into(),
            ))
        }
        (None, None) => return Ok(None),
    };
    if !(0.0..=1.0).contains(&tracing.sampling_ratio) {
        return Err((key("sampling_ratio"), "must be between 0 and 1".into()));
    }
    if tracing.queue_size == 0 {
        return Err((key("queue_size"), "must be at least 1".into()));
    }
    if tracing.export_timeout.is_zero() {
        return Err((key("export_timeout"), "must be above zero".into()));
    }
    let uri: Uri = endpoint
        .parse()
        .map_err(|e| (key(field), format!("`{endpoint}` is not a URL ({e})")))?;
    if uri.scheme_str() != Some("http") || uri.authority().is_none() {
        return Err((
            key(field),
            format!(
                "`{endpoint}` needs http:// and a host, like http://127.0.0.1:4317 (a collector on the same host or network)"
            ),
        ));
    }
    if tracing.enabled == Some(false) {
        return Ok(None);
    }
    Ok(Some(Tracing {
        endpoint: uri,
        protocol: tracing.protocol,
        sampling_ratio: tracing.sampling_ratio,
        service_name: tracing.service_name.clone(),
        resource_attributes: tracing
            .resource_attributes
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        queue_size: tracing.queue_size,
        export_timeout: tracing.export_timeout,
    }))
}

fn check_server(server: &ServerConfig) -> Result<(), Invalid> {
    if server.max_header_bytes < 8192 {
        return Err(("server.max_header_bytes".into(), "must be at least 8KiB".into()));
    }
    if server.idle_timeout < std::time::Duration::from_secs(1) {
        return Err(("server.idle_timeout".into(), "must be at least 1s".into()));
    }
    if server.max_connections == 0 {
        return Err(("server.max_connections".into(), "must be at least 1".into()));
    }
    if !(1..=10_000).contains(&server.max_headers) {
        return Err(("server.max_headers".into(), "must be between 1 and 10000".into()));
    }
    if server.client_body_timeout.is_zero() {
        return Err(("server.client_body_timeout".into(), "must be above zero".into()));
    }
    if server.header_read_timeout.is_zero() {
        return Err(("server.header_read_timeout".into(), "must be above zero".into()));
    }
    if server.workers.is_some_and(|w| !(1..=1024).contains(&w)) {
        return Err(("server.workers".into(), "must be between 1 and 1024".into()));
    }
    Ok(())
}

fn check_tls(tls: &mut TlsConfig, routes: &[RouteConfig]) -> Result<(), Invalid> {
    if tls.cert_file.is_some() != tls.key_file.is_some() {
        return Err((
            "server.tls.key_file".into(),
            "cert_file and key_file go together".into(),
        ));
    }
    if tls.cert_file.is_none() && tls.certificates.is_empty() && tls.acme.is_none() {
        return Err((
            "server.tls".into(),
            "no certificate: give cert_file and key_file, a `certificates` list, or `acme`".into(),
        ));
    }
    let Some(acme) = &mut tls.acme else {
        return Ok(());
    };
    let directory = acme
        .directory
        .parse::<Uri>()
        .map_err(|e| ("server.tls.acme.directory".to_owned(), format!("not a URL: {e}")))?;
    if directory.scheme() != Some(&Scheme::HTTPS) || directory.host().is_none() {
        return Err((
            "server.tls.acme.directory".into(),
            "must be an https:// URL (RFC 8555 requires HTTPS)".into(),
        ));
    }
    if let Some(email) = &acme.email {
        if !email.contains('@') || email.chars().any(|c| c.is_whitespace() || c == ',') {
            return Err((
                "server.tls.acme.email".into(),
                format!("`{email}` is not an email address"),
            ));
        }
    }
    if acme.domains.is_empty() {
        acme.domains = routes
            .iter()
            .filter_map(|route| match &route.host {
                HostMatch::Exact(host) if host.parse::<std::net::IpAddr>().is_err() => Some(host.clone()),
                _ => None,
            })
            .collect();
        acme.domains.dedup();
        if acme.domains.is_empty() {
            return Err((
                "server.tls.acme.domains".into(),
                "no names: list them, or give routes an exact `host`".into(),
            ));
        }
    }
    for (index, name) in acme.domains.iter_mut().enumerate() {
        let key = format!("server.tls.acme.domains[{index}]");
        if name.starts_with("*.") {
            return Err((
                key,
                format!("`{name}`: a wildcard needs the dns-01 challenge, which this proxy does not answer"),
            ));
        }
        if !is_dns_name(name) {
            return Err((key, format!("`{name}` is not a DNS name")));
        }
        name.make_ascii_lowercase();
    }
    if acme.challenges.is_empty() {
        return Err((
            "server.tls.acme.challenges".into(),
            "empty: list http-01, tls-alpn-01 or both".into(),
        ));
    }
    if acme.request_timeout.is_zero() {
        return Err(("server.tls.acme.request_timeout".into(), "must be above zero".into()));
    }
    if acme.renew_before.is_some_and(|d| d.is_zero()) {
        return Err(("server.tls.acme.renew_before".into(), "must be above zero".into()));
    }
    if let Some(eab) = &acme.eab {
        use base64::Engine as _;
        if eab.kid.is_empty() {
            return Err(("server.tls.acme.eab.kid".into(), "must not be empty".into()));
        }
        let decoded = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(eab.hmac_key.trim_end_matches('='));
        if !decoded.is_ok_and(|key| !key.is_empty()) {
            return Err((
                "server.tls.acme.eab.hmac_key".into(),
                "not base64url (the MAC key as the CA gave it)".into(),
            ));
        }
    }
    Ok(())
}

/// A name a public CA can certify: dot-separated labels of letters, digits and inner hyphens, at most 253
/// bytes, not an IP address.
fn is_dns_name(name: &str) -> bool {
    let label = |l: &str| {
        (1..=63).contains(&l.len())
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    name.len() <= 253 && name.parse::<std::net::IpAddr>().is_err() && name.split('.').all(label)
}

fn upstream(
    name: &str,
    key: &str,
    backends: Vec<FileBackend>,
    balancer: BalancerConfig,
    health_check: HealthCheckConfig,
) -> Result<UpstreamConfig, Invalid> {
    let mut checked: Vec<BackendConfig> = Vec::with_capacity(backends.len());
    for (index, raw) in backends.into_iter().enumerate() {
        let at = |field: &str| format!("{key}[{index}].{field}");
        if raw.name.trim().is_empty() {
            return Err((at("name"), "a backend needs a name".into()));
        }
        if checked.iter().any(|b| b.name == raw.name) {
            return Err((at("name"), format!("duplicate backend name `{}`", raw.name)));
        }
        if raw.weight == 0 {
            return Err((
                at("weight"),
                "must be at least 1 (drain a backend instead of weighting it 0)".into(),
            ));
        }
        let (scheme, authority) = backend_url(&raw.url).map_err(|message| (at("url"), message))?;
        let https = scheme == Scheme::HTTPS;
        match raw.protocol {
            UpstreamProtocol::H2 if !https => {
                return Err((
                    at("protocol"),
                    "h2 needs an https:// backend; for clear text use h2c".into(),
                ))
            }
            UpstreamProtocol::H2c if https => {
                return Err((
                    at("protocol"),
                    "h2c is clear text; for an https:// backend use h2".into(),
                ))
            }
            _ => {}
        }
        let tls = match (https, raw.tls) {
            (false, Some(_)) => return Err((at("tls"), "only an https:// backend takes a tls section".into())),
            (true, tls) => Some(tls.unwrap_or_default()),
            (false, None) => None,
        };
        if let Some(tls) = &tls {
            if tls.cert_file.is_some() != tls.key_file.is_some() {
                return Err((at("tls.key_file"), "cert_file and key_file go together".into()));
            }
        }
        let health_url = raw
            .health_url
            .as_deref()
            .map(|text| health_url(text).map_err(|message| (at("health_url"), message)))
            .transpose()?;
        checked.push(BackendConfig {
            name: raw.name,
            scheme,
            authority,
            weight: raw.weight,
            health_url,
            protocol: raw.protocol,
            tls,
            address: None,
        });
    }
    if health_check.kind == CheckKind::Grpc {
        let http2 = |b: &BackendConfig| match b.protocol {
            UpstreamProtocol::H2 | UpstreamProtocol::H2c => true,
            UpstreamProtocol::Auto => b.scheme == Scheme::HTTPS,
            UpstreamProtocol::Http1 => false,
        };
        if let Some(index) = checked.iter().position(|b| !http2(b)) {
            return Err((
                format!("{key}[{index}].protocol"),
                "gRPC health checks need HTTP/2: set protocol h2c (or h2 for https://)".into(),
            ));
        }
    }
    Ok(UpstreamConfig {
        name: name.to_owned(),
        key: key.to_owned(),
        backends: checked,
        balancer,
        health_check,
    })
}

fn backend_url(text: &str) -> Result<(Scheme, Authority), String> {
    let uri: Uri = text
        .parse()
        .map_err(|e| format!("`{text}` is not a URL ({e}); write it like http://127.0.0.1:8001"))?;
    let (Some(scheme), Some(authority)) = (uri.scheme(), uri.authority()) else {
        return Err(format!(
            "`{text}` needs a scheme and a host, like http://127.0.0.1:8001"
        ));
    };
    if scheme != &Scheme::HTTP && scheme != &Scheme::HTTPS {
        return Err(format!("`{text}`: a backend is http:// or https://"));
    }
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err(format!("`{text}`: a backend URL has no path or query"));
    }
    if authority.as_str().contains('@') {
        return Err(format!("`{text}`: credentials in a backend URL are not supported"));
    }
    Ok((scheme.clone(), authority.clone()))
}

fn health_url(text: &str) -> Result<Uri, String> {
    let uri: Uri = text
        .parse()
        .map_err(|e| format!("`{text}` is not a URL ({e}); write it like http://127.0.0.1:9001/healthz"))?;
    match (uri.scheme(), uri.authority()) {
        (Some(scheme), Some(_)) if scheme == &Scheme::HTTP => Ok(uri),
        _ => Err(format!(
            "`{text}` needs http:// and a host, like http://127.0.0.1:9001/healthz"
        )),
    }
}

fn check_health(key: &str, health: &HealthCheckConfig) -> Result<(), Invalid> {
    if health.interval.is_zero() {
        return Err((format!("{key}.interval"), "must be above zero".into()));
    }
    if health.timeout.is_zero() {
        return Err((format!("{key}.timeout"), "must be above zero".into()));
    }
    if health.timeout > health.interval {
        return Err((
            format!("{key}.timeout"),
            format!(
                "{:?} is longer than the interval ({:?}); a probe must finish before the next one starts",
                health.timeout, health.interval
            ),
        ));
    }
    if health.unhealthy_threshold == 0 {
        return Err((format!("{key}.unhealthy_threshold"), "must be at least 1".into()));
    }
    if health.healthy_threshold == 0 {
        return Err((format!("{key}.healthy_threshold"), "must be at least 1".into()));
    }
    let passive = &health.passive;
    if passive.unhealthy_threshold == 0 {
        return Err((
            format!("{key}.passive.unhealthy_threshold"),
            "must be at least 1".into(),
        ));
    }
    if passive.reactivation.is_zero() || passive.max_ejection < passive.reactivation {
        return Err((
            format!("{key}.passive.max_ejection"),
            "reactivation must be above zero and max_ejection at least reactivation".into(),
        ));
    }
    if let Some(status) = passive.failure_statuses.iter().find(|s| !(100..=599).contains(*s)) {
        return Err((
            format!("{key}.passive.failure_statuses"),
            format!("{status} is not an HTTP status"),
        ));
    }
    if !(1..=100).contains(&passive.max_ejection_percent) {
        return Err((
            format!("{key}.passive.max_ejection_percent"),
            "must be between 1 and 100".into(),
        ));
    }
    let period = |field: &str, period: std::time::Duration| {
        if period < std::time::Duration::from_secs(1) || period > LONGEST_TRAFFIC_PERIOD {
            return Err((
                format!("{key}.passive.{field}.period"),
                format!(
                    "must be between 1s and {:?} (the traffic window kept per backend)",
                    LONGEST_TRAFFIC_PERIOD
                ),
            ));
        }
        Ok(())
    };
    if let Some(rate) = &passive.failure_rate {
        if !(1..=100).contains(&rate.percentage) {
            return Err((
                format!("{key}.passive.failure_rate.percentage"),
                "must be between 1 and 100".into(),
            ));
        }
        if rate.minimum_requests == 0 {
            return Err((
                format!("{key}.passive.failure_rate.minimum_requests"),
                "must be at least 1".into(),
            ));
        }
        period("failure_rate", rate.period)?;
    }
    if let Some(latency) = &passive.latency {
        if latency.unhealthy_latency.is_zero() {
            return Err((
                format!("{key}.passive.latency.unhealthy_latency"),
                "must be above zero".into(),
            ));
        }
        if !(latency.quantile > 0.0 && latency.quantile <= 1.0) {
            return Err((
                format!("{key}.passive.latency.quantile"),
                "must be above 0 and at most 1, like 0.99".into(),
            ));
        }
        if latency.minimum_requests == 0 {
            return Err((
                format!("{key}.passive.latency.minimum_requests"),
                "must be at least 1".into(),
            ));
        }
        period("latency", latency.period)?;
    }
    if health.expected_statuses.is_empty() {
        return Err((
            format!("{key}.expected_statuses"),
            "list at least one status or range".into(),
        ));
    }
    if !health.path.starts_with('/') {
        return Err((format!("{key}.path"), format!("`{}` must start with /", health.path)));
    }
    Ok(())
}

fn check_balancer(key: &str, balancer: &BalancerConfig) -> Result<(), Invalid> {
    match (balancer.algorithm, &balancer.hash_on) {
        (Algorithm::Hash, None) => {
            return Err((
                format!("{key}.hash_on"),
                "algorithm hash needs hash_on: {header: NAME}, {cookie: NAME}, client_address or path".into(),
            ))
        }
        (algorithm, Some(_)) if algorithm != Algorithm::Hash => {
            return Err((
                format!("{key}.hash_on"),
                format!("only algorithm hash uses hash_on (the algorithm is {algorithm})"),
            ))
        }
        (_, Some(HashOn::Header(name))) if http::HeaderName::from_bytes(name.as_bytes()).is_err() => {
            return Err((
                format!("{key}.hash_on.header"),
                format!("`{name}` is not a header name"),
            ))
        }
        (_, Some(HashOn::Cookie(name))) if !is_cookie_name(name) => {
            return Err((
                format!("{key}.hash_on.cookie"),
                format!("`{name}` is not a cookie name"),
            ))
        }
        _ => {}
    }
    if let Some(cookie) = &balancer.sticky_cookie {
        if !is_cookie_name(&cookie.name) {
            return Err((
                format!("{key}.sticky_cookie.name"),
                format!("`{}` is not a cookie name", cookie.name),
            ));
        }
        if !cookie.path.starts_with('/') || cookie.path.bytes().any(|b| b == b';' || b.is_ascii_control()) {
            return Err((
                format!("{key}.sticky_cookie.path"),
                format!(
                    "`{}` must start with / and hold no ; or control characters",
                    cookie.path
                ),
            ));
        }
    }
    if balancer.min_healthy_percent > 100 {
        return Err((format!("{key}.min_healthy_percent"), "must be between 0 and 100".into()));
    }
    if let Some(status) = balancer.retry_on_statuses.iter().find(|s| !(100..=599).contains(*s)) {
        return Err((
            format!("{key}.retry_on_statuses"),
            format!("{status} is not an HTTP status"),
        ));
    }
    if balancer.retry_backoff_max < balancer.retry_backoff {
        return Err((
            format!("{key}.retry_backoff_max"),
            "must be at least retry_backoff".into(),
        ));
    }
    let budget = &balancer.retry_budget;
    if !(0.0..=1.0).contains(&budget.ratio) {
        return Err((
            format!("{key}.retry_budget.ratio"),
            "must be between 0 and 1, like 0.2 for 20%".into(),
        ));
    }
    let breaker = &balancer.circuit_breaker;
    if breaker.max_pending > 0 && breaker.max_connections == 0 {
        return Err((
            format!("{key}.circuit_breaker.max_pending"),
            "requests only wait for a connection under max_connections; set it too".into(),
        ));
    }
    Ok(())
}

/// A cookie name is an HTTP token (RFC 6265 4.1.1).
fn is_cookie_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

#[cfg(test)]
mod tests;
