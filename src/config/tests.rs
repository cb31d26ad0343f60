use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::*;
use http::uri::Scheme;

/// The sample from the issue, verbatim: it must keep working as the config grows.
const SAMPLE: &str = r#"server:
  address: ":443"
  fallback_address: ":80"
  tls:
    cert_file: "certs/server.crt"
    key_file: "certs/server.key"
backends:
  - name: "backend1"
    url: "http://127.0.0.1:8001"
    weight: 1
load_balancer:
  algorithm: "round_robin"
health_check:
  enabled: true
  interval: "10s"
  timeout: "5s"
  path: "/health"
  unhealthy_threshold: 3
  healthy_threshold: 2
telemetry:
  metrics:
    enabled: true
    address: ":9090"
  logging:
    level: "info"
    format: "json"
"#;

/// The smallest valid file: one backend. Error cases append a section to it, so the lines 1-3 are fixed.
const ONE_BACKEND: &str = "backends:\n  - name: a\n    url: \"http://127.0.0.1:8001\"\n";

fn parse(text: &str) -> Config {
    Config::parse(Path::new("proxy.yaml"), text).unwrap_or_else(|e| panic!("{e}"))
}

fn error(text: &str) -> ConfigError {
    match Config::parse(Path::new("proxy.yaml"), text) {
        Ok(config) => panic!("accepted an invalid config: {config:?}"),
        Err(e) => e,
    }
}

/// `ONE_BACKEND` followed by `extra`, rejected.
fn error_with(extra: &str) -> ConfigError {
    error(&format!("{ONE_BACKEND}{extra}"))
}

/// Asserts a problem found after reading down to the last character; its line is where the key is, when
/// the file has it (`problems_found_after_reading_name_their_line` checks the lines themselves).
fn assert_invalid(e: &ConfigError, key: &str, message: &str) {
    assert_eq!(e.file, PathBuf::from("proxy.yaml"));
    assert_eq!(e.key, key);
    assert_eq!(e.message, message);
    let at = e.line.map_or_else(String::new, |line| format!(":{line}"));
    assert_eq!(e.to_string(), format!("proxy.yaml{at}: {key}: {message}"));
}

#[test]
fn problems_found_after_reading_name_their_line() {
    let e = error(
        "backends:\n  - name: a\n    url: \"http://127.0.0.1:8001\"\n  - name: a\n    url: \"http://127.0.0.1:8002\"\n",
    );
    assert_eq!((e.line, e.key.as_str()), (Some(4), "backends[1].name"));
    let e = error_with("upstreams:\n  api:\n    backends: [{name: b, url: \"http://127.0.0.1:1\", weight: 0}]\n");
    assert_eq!((e.line, e.key.as_str()), (Some(6), "upstreams.api.backends[0].weight"));
    let e = error_with("load_balancer:\n  algorithm: hash\n");
    assert_eq!(
        (e.line, e.key.as_str()),
        (None, "load_balancer.hash_on"),
        "a missing key has no line"
    );
    let e = error_with("load_balancer:\n  retry_budget: {ratio: 2}\n");
    assert_eq!((e.line, e.key.as_str()), (Some(5), "load_balancer.retry_budget.ratio"));
}

#[test]
fn traffic_policy_keys_are_checked() {
    let cases: [(&str, &str, &str); 12] = [
        (
            "load_balancer: {algorithm: hash}",
            "load_balancer.hash_on",
            "algorithm hash needs hash_on",
        ),
        (
            "load_balancer: {hash_on: path}",
            "load_balancer.hash_on",
            "only algorithm hash uses hash_on",
        ),
        (
            "load_balancer: {algorithm: hash, hash_on: {header: \"bad header\"}}",
            "load_balancer.hash_on.header",
            "is not a header name",
        ),
        (
            "load_balancer: {algorithm: hash, hash_on: {cookie: \"a;b\"}}",
            "load_balancer.hash_on.cookie",
            "is not a cookie name",
        ),
        (
            "load_balancer: {sticky_cookie: {name: \"x y\"}}",
            "load_balancer.sticky_cookie.name",
            "is not a cookie name",
        ),
        (
            "load_balancer: {min_healthy_percent: 101}",
            "load_balancer.min_healthy_percent",
            "between 0 and 100",
        ),
        (
            "load_balancer: {retry_on_statuses: [999]}",
            "load_balancer.retry_on_statuses",
            "not an HTTP status",
        ),
        (
            "load_balancer: {retry_backoff: 1s, retry_backoff_max: 10ms}",
            "load_balancer.retry_backoff_max",
            "at least retry_backoff",
        ),
        (
            "load_balancer: {circuit_breaker: {max_pending: 5}}",
            "load_balancer.circuit_breaker.max_pending",
            "set it too",
        ),
        (
            "health_check: {passive: {failure_rate: {percentage: 0}}}",
            "health_check.passive.failure_rate.percentage",
            "between 1 and 100",
        ),
        (
            "health_check: {passive: {latency: {unhealthy_latency: 1s, quantile: 1.5}}}",
            "health_check.passive.latency.quantile",
            "at most 1",
        ),
        (
            "health_check: {passive: {failure_rate: {period: 1m}}}",
            "health_check.passive.failure_rate.period",
            "between 1s and 30s",
        ),
    ];
    for (extra, key, problem) in cases {
        let e = error_with(&format!("{extra}\n"));
        assert_eq!(e.key, key, "{extra}: {e}");
        assert!(e.message.contains(problem), "{extra}: {e}");
    }
    let e = error_with("load_balancer: {algorithm: hash, hash_on: {query: x}}\n");
    assert!(e.message.contains("unknown hash key `query`"), "{e}");
    let e = error_with("discovery: {nameservers: [\"dns.example\"]}\n");
    assert!(e.message.contains("is not a DNS server address"), "{e}");
}

#[test]
fn traffic_policy_defaults_and_forms() {
    let config = parse(&format!(
        "{ONE_BACKEND}load_balancer:\n  algorithm: hash\n  hash_on: {{header: X-User}}\n  sticky_cookie: {{}}\ndiscovery: {{nameservers: [\"10.0.0.10\", \"127.0.0.1:5353\"]}}\n"
    ));
    let balancer = &config.upstreams[0].balancer;
    assert_eq!(balancer.hash_on, Some(HashOn::Header("x-user".to_owned())));
    let sticky = balancer
        .sticky_cookie
        .clone()
        .unwrap_or_else(|| panic!("sticky cookie"));
    assert_eq!(
        (sticky.name.as_str(), sticky.path.as_str(), sticky.max_age),
        ("quic_proxy_backend", "/", None)
    );
    assert_eq!(
        balancer.retry_budget,
        RetryBudget {
            ratio: 0.2,
            min_per_second: 10
        }
    );
    assert_eq!(balancer.circuit_breaker, CircuitBreaker::default());
    assert_eq!(
        (balancer.retry_backoff, balancer.retry_backoff_max),
        (Duration::from_millis(25), Duration::from_millis(250))
    );
    assert_eq!(
        config.discovery.nameservers,
        [addr("10.0.0.10:53"), addr("127.0.0.1:5353")]
    );
    assert_eq!(config.discovery.dns_refresh, Duration::from_secs(30));
    let passive = &config.upstreams[0].health_check.passive;
    assert_eq!(
        (passive.max_ejection_percent, passive.failure_rate, passive.latency),
        (50, None, None)
    );
    for form in ["client_address", "path", "{cookie: sid}"] {
        parse(&format!(
            "{ONE_BACKEND}load_balancer: {{algorithm: hash, hash_on: {form}}}\n"
        ));
    }
}

/// Asserts a problem serde found while reading: file, line and key path exact, and the message includes
/// `problem`.
fn assert_unreadable(e: &ConfigError, line: usize, key: &str, problem: &str) {
    assert_eq!(e.file, PathBuf::from("proxy.yaml"));
    assert_eq!(e.line, Some(line), "{e}");
    assert_eq!(e.key, key, "{e}");
    assert!(e.message.contains(problem), "{e}");
    assert!(e.to_string().starts_with(&format!("proxy.yaml:{line}: {key}: ")), "{e}");
}

fn addr(text: &str) -> SocketAddr {
    text.parse().unwrap()
}

fn backend_summary(upstream: &UpstreamConfig) -> Vec<(&str, String, u32)> {
    upstream
        .backends
        .iter()
        .map(|b| (b.name.as_str(), b.authority.to_string(), b.weight))
        .collect()
}

#[test]
fn the_issue_sample_is_accepted_as_is() {
    let config = parse(SAMPLE);
    assert_eq!(config.server.address, addr("[::]:443"));
    assert_eq!(config.server.fallback_address, addr("[::]:80"));
    let tls = config.server.tls.as_ref().expect("tls section kept");
    assert_eq!(tls.cert_file, Some(PathBuf::from("certs/server.crt")));
    assert_eq!(tls.key_file, Some(PathBuf::from("certs/server.key")));

    assert_eq!(config.upstreams.len(), 1);
    let default = &config.upstreams[0];
    assert_eq!(default.name, DEFAULT_UPSTREAM);
    assert_eq!(default.balancer.algorithm, Algorithm::RoundRobin);
    assert_eq!(backend_summary(default), [("backend1", "127.0.0.1:8001".to_owned(), 1)]);
    assert_eq!(default.backends[0].scheme, Scheme::HTTP);
    assert_eq!(
        default.health_check,
        HealthCheckConfig {
            enabled: true,
            ..HealthCheckConfig::disabled()
        }
    );
    assert!(config.routes.is_empty());
    assert_eq!(config.default_upstream.as_deref(), Some(DEFAULT_UPSTREAM));

    assert!(config.telemetry.metrics.enabled);
    assert_eq!(config.telemetry.metrics.address, addr("[::]:9090"));
    assert_eq!(config.telemetry.logging.level, "info");
    assert_eq!(config.telemetry.logging.format, LogFormat::Json);
}

#[test]
fn the_shipped_config_loads() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/proxy.yaml");
    let config = Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.upstreams.len(), 1);
    assert_eq!(
        backend_summary(&config.upstreams[0]),
        [
            ("backend1", "127.0.0.1:8001".to_owned(), 1),
            ("backend2", "127.0.0.1:8002".to_owned(), 1),
            ("backend3", "127.0.0.1:8003".to_owned(), 1),
        ]
    );
    assert_eq!(config.default_upstream.as_deref(), Some(DEFAULT_UPSTREAM));
}

#[test]
fn a_minimal_file_gets_the_documented_defaults() {
    let config = parse(ONE_BACKEND);
    assert_eq!(config.server.fallback_address, addr("[::]:80"));
    assert_eq!(config.server.drain_timeout, Duration::from_secs(30));
    assert_eq!(config.server.max_header_bytes, 64 * 1024);
    let default = &config.upstreams[0];
    assert_eq!(default.balancer.algorithm, Algorithm::RoundRobin);
    assert_eq!(default.backends[0].weight, 1);
    assert_eq!(default.health_check, HealthCheckConfig::disabled());
    assert_eq!(config.timeouts.connect, Duration::from_secs(5));
}

const ROUTED: &str = r#"
backends:
  - name: web1
    url: "http://127.0.0.1:8001"
load_balancer:
  algorithm: least_connections
health_check:
  interval: 20s
  timeout: 2s
upstreams:
  static:
    backends:
      - name: s1
        url: "http://10.0.0.1"
  api:
    load_balancer:
      algorithm: weighted
    health_check:
      path: /ready
      interval: 3s
      timeout: 1s
    backends:
      - name: api1
        url: "http://10.0.0.2:9000"
        weight: 3
      - name: api2
        url: "http://[::1]:9001/"
routes:
  - host: API.Example.com
    path: "/api/*"
    upstream: api
  - host: "*.example.com"
    path: /x
    upstream: static
  - upstream: default
"#;

#[test]
fn routed_form_builds_named_upstreams() {
    let config = parse(ROUTED);
    let names: Vec<&str> = config.upstreams.iter().map(|u| u.name.as_str()).collect();
    assert_eq!(names, ["default", "api", "static"]);
    let [default, api, static_files] = &config.upstreams[..] else {
        unreachable!()
    };

    assert_eq!(backend_summary(default), [("web1", "127.0.0.1:8001".into(), 1)]);
    assert_eq!(
        backend_summary(api),
        [("api1", "10.0.0.2:9000".into(), 3), ("api2", "[::1]:9001".into(), 1)]
    );
    assert_eq!(backend_summary(static_files), [("s1", "10.0.0.1".into(), 1)]);

    // An upstream's own sections win; without them it inherits the top-level ones.
    assert_eq!(api.balancer.algorithm, Algorithm::Weighted);
    assert_eq!(api.health_check.path, "/ready");
    assert_eq!(api.health_check.interval, Duration::from_secs(3));
    assert_eq!(static_files.balancer.algorithm, Algorithm::LeastConnections);
    assert_eq!(default.balancer.algorithm, Algorithm::LeastConnections);
    assert_eq!(static_files.health_check, default.health_check);
    assert_eq!(default.health_check.interval, Duration::from_secs(20));
    assert!(default.health_check.enabled);

    assert_eq!(config.default_upstream.as_deref(), Some("default"));
}

#[test]
fn routed_form_parses_host_and_path_matches() {
    let config = parse(ROUTED);
    let routes: Vec<(HostMatch, PathMatch, &str)> = config
        .routes
        .iter()
        .map(|r| match &r.target {
            Target::Upstream(name) => (r.host.clone(), r.path.clone(), name.as_str()),
            other => panic!("not an upstream: {other}"),
        })
        .collect();
    assert_eq!(
        routes,
        [
            (
                HostMatch::Exact("api.example.com".into()),
                PathMatch::Prefix("/api/".into()),
                "api"
            ),
            (
                HostMatch::Suffix(".example.com".into()),
                PathMatch::Exact("/x".into()),
                "static"
            ),
            (HostMatch::Any, PathMatch::Prefix("/".into()), "default"),
        ]
    );
}

#[test]
fn routes_alone_need_no_top_level_backends() {
    let config = parse(
        "upstreams:\n  api:\n    backends:\n      - name: a\n        url: \"http://127.0.0.1:8001\"\n\
         routes:\n  - path: /api/*\n    upstream: api\n",
    );
    assert_eq!(config.upstreams.len(), 1);
    assert_eq!(config.upstreams[0].name, "api");
    assert_eq!(config.default_upstream, None);
}

#[test]
fn unknown_key_names_file_line_and_key_path() {
    let e = error_with("load_balancer:\n  algoritm: round_robin\n");
    assert_unreadable(
        &e,
        5,
        "load_balancer.algoritm",
        "unknown field `algoritm`, expected one of `algorithm`, `hash_on`, `sticky_cookie`, `when_all_unhealthy`, `min_healthy_percent`, `slow_start`, `retries`, `retry_buffer`, `retry_on_statuses`, `retry_backoff`, `retry_backoff_max`, `retry_budget`, `circuit_breaker`",
    );
}

#[test]
fn unknown_key_suggests_the_closest_field() {
    let e = error_with("load_balancer:\n  algoritm: round_robin\n");
    assert_eq!(
        e.to_string(),
        "proxy.yaml:5: load_balancer.algoritm: unknown field `algoritm`, expected one of `algorithm`, `hash_on`, `sticky_cookie`, `when_all_unhealthy`, `min_healthy_percent`, `slow_start`, `retries`, `retry_buffer`, `retry_on_statuses`, `retry_backoff`, `retry_backoff_max`, `retry_budget`, `circuit_breaker`; \
         did you mean `algorithm`?"
    );
    let e = error_with("server:\n  adress: \":80\"\n");
    assert_eq!(e.key, "server.adress");
    assert!(e.message.ends_with("; did you mean `address`?"), "{}", e.message);
}

#[test]
fn unknown_key_in_a_backend_entry() {
    let e = error("backends:\n  - name: a\n    url: \"http://127.0.0.1:8001\"\n    wieght: 2\n");
    assert_unreadable(
        &e,
        4,
        "backends[0].wieght",
        "unknown field `wieght`, expected one of `name`, `url`, `weight`",
    );
}

#[test]
fn unknown_top_level_key() {
    let e = error_with("helth_check:\n  enabled: true\n");
    assert_unreadable(&e, 4, "helth_check", "unknown field `helth_check`, expected one of");
}

#[test]
fn unknown_algorithm_names_the_choices() {
    let e = error_with("load_balancer:\n  algorithm: round_robbin\n");
    assert_unreadable(
        &e,
        5,
        "load_balancer.algorithm",
        "unknown variant `round_robbin`, expected one of `round_robin`, `weighted`, `least_connections`, `p2c`, `random`, `hash`",
    );
}

#[test]
fn unknown_algorithm_suggests_the_closest() {
    let e = error_with("load_balancer:\n  algorithm: round_robbin\n");
    assert_eq!(
        e.to_string(),
        "proxy.yaml:5: load_balancer.algorithm: unknown variant `round_robbin`, expected one of \
         `round_robin`, `weighted`, `least_connections`, `p2c`, `random`, `hash`; did you mean `round_robin`?"
    );
}

#[test]
fn unknown_algorithm_in_an_upstream() {
    let e = error(
        "upstreams:\n  api:\n    load_balancer:\n      algorithm: weigthed\n    backends:\n      - name: a\n        \
         url: \"http://127.0.0.1:8001\"\nroutes:\n  - upstream: api\n",
    );
    assert_unreadable(
        &e,
        4,
        "upstreams.api.load_balancer.algorithm",
        "unknown variant `weigthed`",
    );
}

#[test]
fn missing_backends() {
    let e = error("load_balancer:\n  algorithm: round_robin\n");
    assert_invalid(
        &e,
        "backends",
        "missing: define `backends`, an entry in `upstreams`, or routes",
    );
}

#[test]
fn a_site_of_static_files_needs_no_upstream() {
    let root = std::env::temp_dir();
    let config = parse(&format!(
        "routes:\n  - path: /*\n    static:\n      root: {}\n",
        root.display()
    ));
    assert!(config.upstreams.is_empty());
    assert_eq!(config.default_upstream, None);
    let e = error("routes:\n  - path: /api/*\n    upstream: api\n");
    assert!(e.to_string().contains("routes[0].upstream"), "{e}");
}

#[test]
fn empty_backends_list() {
    assert_invalid(
        &error("backends: []\n"),
        "backends",
        "the list is empty; add at least one backend",
    );
}

#[test]
fn upstream_without_backends() {
    let e = error("upstreams:\n  api: {}\nroutes:\n  - upstream: api\n");
    assert_invalid(
        &e,
        "upstreams.api.backends",
        "missing or empty; add at least one backend",
    );
}

#[test]
fn backend_without_url() {
    let e = error("backends:\n  - name: a\n");
    assert_unreadable(&e, 2, "backends[0]", "missing field `url`");
}

#[test]
fn duplicate_backend_names() {
    let e = error_with("  - name: a\n    url: \"http://127.0.0.1:8002\"\n");
    assert_invalid(&e, "backends[1].name", "duplicate backend name `a`");
}

#[test]
fn weight_zero() {
    let e = error("backends:\n  - name: a\n    url: \"http://127.0.0.1:8001\"\n    weight: 0\n");
    assert_invalid(
        &e,
        "backends[0].weight",
        "must be at least 1 (drain a backend instead of weighting it 0)",
    );
}

#[test]
fn weight_zero_in_an_upstream_names_the_upstream() {
    let e = error(
        "upstreams:\n  api:\n    backends:\n      - name: a\n        url: \"http://127.0.0.1:8001\"\n        \
         weight: 0\nroutes:\n  - upstream: api\n",
    );
    assert_invalid(
        &e,
        "upstreams.api.backends[0].weight",
        "must be at least 1 (drain a backend instead of weighting it 0)",
    );
}

fn url_error(url: &str) -> ConfigError {
    error(&format!("backends:\n  - name: a\n    url: \"{url}\"\n"))
}

#[test]
fn unparsable_backend_url() {
    assert_invalid(
        &url_error("http://[::1"),
        "backends[0].url",
        "`http://[::1` is not a URL (invalid authority); write it like http://127.0.0.1:8001",
    );
    assert_invalid(
        &url_error("127.0.0.1:8001"),
        "backends[0].url",
        "`127.0.0.1:8001` needs a scheme and a host, like http://127.0.0.1:8001",
    );
}

#[test]
fn backend_url_schemes() {
    assert_invalid(
        &url_error("ftp://127.0.0.1:8001"),
        "backends[0].url",
        "`ftp://127.0.0.1:8001`: a backend is http:// or https://",
    );
    let https = parse("backends:\n  - {name: a, url: \"https://api.internal:8443\"}\n");
    let backend = &https.upstreams[0].backends[0];
    assert_eq!(backend.scheme, Scheme::HTTPS);
    assert_eq!(
        backend.tls,
        Some(BackendTls::default()),
        "https gets TLS with the defaults"
    );
}

#[test]
fn backend_protocols_and_tls_must_fit_the_scheme() {
    for (backend, key, message) in [
        (
            "{name: a, url: \"http://127.0.0.1:1\", protocol: h2}",
            "backends[0].protocol",
            "h2 needs an https:// backend; for clear text use h2c",
        ),
        (
            "{name: a, url: \"https://127.0.0.1:1\", protocol: h2c}",
            "backends[0].protocol",
            "h2c is clear text; for an https:// backend use h2",
        ),
        (
            "{name: a, url: \"http://127.0.0.1:1\", tls: {insecure_skip_verify: true}}",
            "backends[0].tls",
            "only an https:// backend takes a tls section",
        ),
        (
            "{name: a, url: \"https://127.0.0.1:1\", tls: {cert_file: c.pem}}",
            "backends[0].tls.key_file",
            "cert_file and key_file go together",
        ),
    ] {
        let e = error(&format!("backends:\n  - {backend}\n"));
        assert_eq!((e.key.as_str(), e.message.as_str()), (key, message), "{backend}");
    }
    let grpc = error("backends:\n  - {name: a, url: \"http://127.0.0.1:1\"}\nhealth_check: {type: grpc}\n");
    assert_eq!(grpc.key, "backends[0].protocol");
    assert!(grpc.message.contains("HTTP/2"), "{}", grpc.message);
}

#[test]
fn backend_url_with_path_or_credentials() {
    assert_invalid(
        &url_error("http://127.0.0.1:8001/api"),
        "backends[0].url",
        "`http://127.0.0.1:8001/api`: a backend URL has no path or query",
    );
    assert_invalid(
        &url_error("http://127.0.0.1:8001?x=1"),
        "backends[0].url",
        "`http://127.0.0.1:8001?x=1`: a backend URL has no path or query",
    );
    assert_invalid(
        &url_error("http://u:p@127.0.0.1:8001"),
        "backends[0].url",
        "`http://u:p@127.0.0.1:8001`: credentials in a backend URL are not supported",
    );
}

#[test]
fn unparsable_listen_address() {
    let e = error(&format!("server:\n  fallback_address: \"nope\"\n{ONE_BACKEND}"));
    assert_unreadable(
        &e,
        2,
        "server.fallback_address",
        "`nope` is not a listen address; write it like :80, 127.0.0.1:8080 or [::1]:8443",
    );
    let e = error_with("server:\n  address: \":99999\"\n");
    assert_unreadable(&e, 5, "server.address", "`:99999` has no valid port; write it like :80");
}

#[test]
fn bad_duration() {
    let e = error_with("health_check:\n  interval: ten\n");
    assert_unreadable(&e, 5, "health_check.interval", "`ten` is not a duration");
    assert!(e.message.ends_with("; write it like 500ms, 10s, 5m or 1h"), "{e}");
}

#[test]
fn scalar_errors_do_not_repeat_the_key_path() {
    let e = error(&format!("server:\n  fallback_address: \"nope\"\n{ONE_BACKEND}"));
    assert_eq!(
        e.to_string(),
        "proxy.yaml:2: server.fallback_address: `nope` is not a listen address; \
         write it like :80, 127.0.0.1:8080 or [::1]:8443"
    );
    let e = error("backends:\n  - name: a\n");
    assert_eq!(e.to_string(), "proxy.yaml:2: backends[0]: missing field `url`");
}

#[test]
fn route_to_an_unknown_upstream_lists_the_defined_ones() {
    let e = error_with(
        "upstreams:\n  api:\n    backends:\n      - name: b\n        url: \"http://127.0.0.1:8002\"\n\
         routes:\n  - path: /x\n    upstream: apj\n",
    );
    assert_invalid(
        &e,
        "routes[0].upstream",
        "unknown upstream `apj`; defined: default, api; did you mean `api`?",
    );
}

#[test]
fn invalid_route_host_and_path() {
    let route = |spec: &str| error_with(&format!("routes:\n  - upstream: default\n    {spec}\n"));
    assert_invalid(
        &route("host: \"*.\""),
        "routes[0].host",
        "`*.` is not a valid wildcard; write *.example.com",
    );
    assert_invalid(
        &route("host: \"example.com:443\""),
        "routes[0].host",
        "`example.com:443` is not a host name; write example.com or *.example.com (no port)",
    );
    assert_invalid(&route("path: api"), "routes[0].path", "`api` must start with /");
    assert_invalid(
        &route("path: \"/api*\""),
        "routes[0].path",
        "`/api*`: a wildcard is only allowed as a final /*, like /api/*",
    );
}

#[test]
fn health_check_timeout_longer_than_interval() {
    let e = error_with("health_check:\n  interval: 1s\n  timeout: 5s\n");
    assert_invalid(
        &e,
        "health_check.timeout",
        "5s is longer than the interval (1s); a probe must finish before the next one starts",
    );
}

#[test]
fn health_check_timeout_in_an_upstream_names_the_upstream() {
    let e = error(
        "upstreams:\n  api:\n    health_check:\n      interval: 2s\n      timeout: 3s\n    backends:\n      \
         - name: a\n        url: \"http://127.0.0.1:8001\"\nroutes:\n  - upstream: api\n",
    );
    assert_invalid(
        &e,
        "upstreams.api.health_check.timeout",
        "3s is longer than the interval (2s); a probe must finish before the next one starts",
    );
}

#[test]
fn health_check_zero_durations() {
    let e = error_with("health_check:\n  interval: 0s\n  timeout: 0s\n");
    assert_invalid(&e, "health_check.interval", "must be above zero");
    let e = error_with("health_check:\n  interval: 1s\n  timeout: 0s\n");
    assert_invalid(&e, "health_check.timeout", "must be above zero");
}

#[test]
fn health_check_zero_interval_says_so() {
    let e = error_with("health_check:\n  interval: 0s\n");
    assert_invalid(&e, "health_check.interval", "must be above zero");
}

#[test]
fn upstream_named_default_clashes_with_top_level_backends() {
    let e =
        error_with("upstreams:\n  default:\n    backends:\n      - name: b\n        url: \"http://127.0.0.1:8002\"\n");
    assert_invalid(
        &e,
        "upstreams.default",
        "`default` is taken by the top-level backends list; choose another name",
    );
}

#[test]
fn upstreams_without_routes_reach_nothing() {
    let e = error("upstreams:\n  api:\n    backends:\n      - name: a\n        url: \"http://127.0.0.1:8001\"\n");
    assert_invalid(
        &e,
        "routes",
        "no top-level `backends` and no routes: no request could reach an upstream",
    );
}

#[test]
fn empty_file() {
    for text in ["", "  \n\n"] {
        let e = error(text);
        assert_eq!(e.key, "");
        assert_eq!(e.line, None);
        assert_eq!(e.to_string(), "proxy.yaml: the file is empty");
    }
}

#[test]
fn header_limit_too_small() {
    assert_invalid(
        &error_with("server:\n  max_header_bytes: 100\n"),
        "server.max_header_bytes",
        "must be at least 8KiB",
    );
}

#[test]
fn unknown_log_level() {
    assert_invalid(
        &error_with("telemetry:\n  logging:\n    level: loud\n"),
        "telemetry.logging.level",
        "`loud` is not a log level (error, warn, info, debug, trace)",
    );
}

#[test]
fn missing_file_is_named() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/no-such-file.yaml");
    let e = Config::load(&path).unwrap_err();
    assert_eq!(e.file, path);
    assert_eq!(e.key, "");
    assert!(
        e.to_string()
            .starts_with(&format!("{}: cannot read the file: ", path.display())),
        "{e}"
    );
}

#[test]
fn display_formats_each_part() {
    let e = ConfigError {
        file: PathBuf::from("conf/p.yaml"),
        key: "upstreams.api.backends[1].weight".into(),
        line: Some(12),
        message: "must be at least 1".into(),
    };
    assert_eq!(
        e.to_string(),
        "conf/p.yaml:12: upstreams.api.backends[1].weight: must be at least 1"
    );
    let e = ConfigError {
        key: String::new(),
        line: None,
        ..e
    };
    assert_eq!(e.to_string(), "conf/p.yaml: must be at least 1");
}

/// A route-actions case: the routes appended to one backend, the key and message the error names.
fn route_error(routes: &str) -> ConfigError {
    error(&format!("{ONE_BACKEND}routes:\n{routes}"))
}

#[test]
fn route_actions_are_checked_where_they_are_written() {
    let e = route_error("  - path: /a\n    respond: {body: \"{uri}\"}\n");
    assert_eq!((e.line, e.key.as_str()), (Some(6), "routes[0].respond.body"));
    assert!(e.message.contains("unknown placeholder `{uri}`"), "{}", e.message);

    let e = route_error("  - path: /a/*\n    upstream: default\n    rewrite: {regex: \"(\", replacement: /x}\n");
    assert_eq!(e.key, "routes[0].rewrite.regex");
    assert!(e.message.contains("does not compile"), "{}", e.message);
    assert_eq!(e.line, Some(7));

    let e = route_error("  - path: /s/*\n    static: {root: /no/such/root}\n");
    assert_eq!(e.key, "routes[0].static.root");
    assert!(e.message.contains("/no/such/root"), "{}", e.message);

    let e = route_error("  - path: /p/*\n    upstream: default\n    allow: [10.0.0.0/8]\n    deny: [10.1.0.0/16]\n");
    assert_eq!((e.line, e.key.as_str()), (Some(8), "routes[0].deny"));
    assert!(e.message.contains("overlaps 10.0.0.0/8"), "{}", e.message);

    let e = route_error("  - path: /a\n    upstream: default\n    redirect: {to: /b}\n");
    assert_eq!(e.key, "routes[0].redirect");
    assert!(e.message.contains("one target"), "{}", e.message);

    let e = route_error("  - path: /a\n");
    assert_eq!(e.key, "routes[0]");

    let e = route_error("  - path: /a/*\n    upstream: default\n    strip_prefix: /b\n");
    assert_eq!(e.key, "routes[0].strip_prefix");
    assert!(e.message.contains("would never apply"), "{}", e.message);

    let e = route_error("  - path: /a\n    redirect: {to: /b, status: 200}\n");
    assert_eq!(e.key, "routes[0].redirect.status");

    let e = route_error("  - path: /a\n    upstream: default\n    compress: {algorithms: [lzma]}\n");
    assert_eq!(e.key, "routes[0].compress.algorithms");

    let e = route_error("  - path: /a\n    upstream: default\n    rate_limit: {requests_per_second: 0}\n");
    assert_eq!(e.key, "routes[0].rate_limit.requests_per_second");

    let e = route_error("  - path: /a\n    upstream: default\n    request_headers: {set: {\"bad name\": x}}\n");
    assert_eq!(e.key, "routes[0].request_headers.set");
    assert!(e.message.contains("not a header name"), "{}", e.message);
}

#[test]
fn route_defaults_fill_what_a_route_leaves_unset_and_errors_name_them() {
    let config = parse(&format!(
        "{ONE_BACKEND}route_defaults:\n  compress: true\n  deny: [192.0.2.0/24]\nroutes:\n  - path: /a/*\n    upstream: default\n    compress: false\n"
    ));
    assert!(
        config.routes[0].actions.compress.is_none(),
        "the route's own setting wins"
    );
    assert_eq!(config.routes[0].actions.deny.len(), 1, "the default fills in");
    assert!(config.route_defaults.compress.is_some());
    let e = error(&format!(
        "{ONE_BACKEND}route_defaults:\n  allow: [10.0.0.0/8]\n  deny: [10.1.0.0/16]\n"
    ));
    assert_eq!(e.key, "route_defaults.deny");
    let e = error(&format!("{ONE_BACKEND}route_defaults:\n  upstream: default\n"));
    assert!(e.message.contains("unknown field `upstream`"), "{}", e.message);
}

#[test]
fn acme_settings_are_checked_with_their_keys() {
    let server = |tls: &str| format!("server:\n  tls: {tls}\n{ONE_BACKEND}");
    for (tls, key, message) in [
        (
            "{}",
            "server.tls",
            "no certificate: give cert_file and key_file, a `certificates` list, or `acme`",
        ),
        (
            "{cert_file: a.crt}",
            "server.tls.key_file",
            "cert_file and key_file go together",
        ),
        (
            "{acme: {domains: [a.test], directory: \"http://ca.test/dir\"}}",
            "server.tls.acme.directory",
            "must be an https:// URL (RFC 8555 requires HTTPS)",
        ),
        (
            "{acme: {domains: [\"*.a.test\"]}}",
            "server.tls.acme.domains[0]",
            "`*.a.test`: a wildcard needs the dns-01 challenge, which this proxy does not answer",
        ),
        (
            "{acme: {domains: [a.test, \"bad name\"]}}",
            "server.tls.acme.domains[1]",
            "`bad name` is not a DNS name",
        ),
        (
            "{acme: {domains: [127.0.0.1]}}",
            "server.tls.acme.domains[0]",
            "`127.0.0.1` is not a DNS name",
        ),
        (
            "{acme: {domains: [a.test], email: \"ops at example\"}}",
            "server.tls.acme.email",
            "`ops at example` is not an email address",
        ),
        (
            "{acme: {domains: [a.test], challenges: []}}",
            "server.tls.acme.challenges",
            "empty: list http-01, tls-alpn-01 or both",
        ),
        (
            "{acme: {domains: [a.test], eab: {kid: k, hmac_key: \"not base64!\"}}}",
            "server.tls.acme.eab.hmac_key",
            "not base64url (the MAC key as the CA gave it)",
        ),
        (
            "{acme: {domains: [a.test], request_timeout: 0s}}",
            "server.tls.acme.request_timeout",
            "must be above zero",
        ),
        (
            "{acme: {}}",
            "server.tls.acme.domains",
            "no names: list them, or give routes an exact `host`",
        ),
    ] {
        let e = error(&server(tls));
        assert_eq!((e.key.as_str(), e.message.as_str()), (key, message), "{tls}");
    }
    let unknown = error(&server("{acme: {domains: [a.test], challenges: [dns-01]}}"));
    assert!(unknown.key.starts_with("server.tls.acme.challenges"), "{}", unknown.key);
}

#[test]
fn acme_names_default_to_the_exact_hosts_of_routes() {
    let config = parse(
        "server:\n  tls: {acme: {email: ops@a.test}}\nroutes:\n  - {host: WWW.A.test, path: \"/*\", respond: {status: 200}}\n  - {host: \"*.b.test\", path: \"/*\", respond: {status: 200}}\n  - {host: 127.0.0.1, path: \"/*\", respond: {status: 200}}\n  - {path: \"/*\", respond: {status: 404}}\n",
    );
    let acme = config.server.tls.as_ref().and_then(|tls| tls.acme.as_ref());
    assert_eq!(acme.map(|a| a.domains.clone()), Some(vec!["www.a.test".to_owned()]));
    assert_eq!(acme.map(|a| a.directory.as_str()), Some(LETS_ENCRYPT));
    assert_eq!(
        acme.map(|a| a.challenges.clone()),
        Some(vec![ChallengeType::Http01, ChallengeType::TlsAlpn01])
    );
    let listed = parse(&format!(
        "server:\n  redirect_to_https: true\n  tls:\n    certificates:\n      - {{cert_file: a.crt, key_file: a.key}}\n      - {{cert_file: b.crt, key_file: b.key}}\n{ONE_BACKEND}"
    ));
    assert!(listed.server.redirect_to_https);
    let files: Vec<String> = listed
        .server
        .tls
        .as_ref()
        .map(|tls| {
            tls.files()
                .into_iter()
                .map(|(key, pair)| format!("{key} {}", pair.cert_file.display()))
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(
        files,
        ["server.tls.certificates[0] a.crt", "server.tls.certificates[1] b.crt"]
    );
}
