//! Health checking end to end: active probes, passive ejection, the all-unhealthy policies, drain and
//! undrain, and the admin endpoints, with real demo backends and a proxy on OS-assigned loopback ports.
//!
//! Probes run on short intervals; tests wait for the state they need with bounded polls (under the test
//! guard) and never assert how long anything took.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::support::*;
use bytes::Bytes;
use http::header::{AUTHORIZATION, RETRY_AFTER, WWW_AUTHENTICATE};
use http::uri::{Authority, Scheme};
use http::{Request, StatusCode};
use http_body::Frame;
use http_body_util::{BodyExt as _, StreamBody};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use quic_proxy::app::Running;
use quic_proxy::balancer::Backend;
use quic_proxy::config::{BackendConfig, CheckKind, HealthCheckConfig, StatusRange};
use quic_proxy::control::probe::Prober;
use serde_json::Value;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const TOKEN: &str = "s3cret-admin-token";

/// One upstream called `name` that every request is routed to, with the given flow-style YAML sections.
fn upstream_yaml(name: &str, backends: &str, health_check: &str, load_balancer: &str) -> String {
    format!(
        "upstreams:\n  {name}:\n    backends: {backends}\n    health_check: {health_check}\n    \
         load_balancer: {load_balancer}\nroutes:\n  - {{path: \"/*\", upstream: {name}}}\n"
    )
}

/// A proxy in front of [`upstream_yaml`]'s one upstream.
async fn upstream_proxy(name: &str, backends: &str, health_check: &str, load_balancer: &str) -> Running {
    start_proxy(&render_config(
        &[],
        &upstream_yaml(name, backends, health_check, load_balancer),
    ))
    .await
}

fn backend_with_health_url(name: &str, addr: SocketAddr, health_url: &str) -> String {
    format!(r#"{{name: "{name}", url: "http://{addr}", health_url: "{health_url}"}}"#)
}

/// The proxy's own view of a backend (the same objects the admin API reports on).
fn backend_of(running: &Running, upstream: &str, name: &str) -> Arc<Backend> {
    running
        .snapshot()
        .backend(upstream, name)
        .cloned()
        .unwrap_or_else(|| panic!("no backend {upstream}/{name}"))
}

/// Polls an async condition until it holds; the test guard bounds the wait.
async fn poll<F, Fut>(mut ready: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    while !ready().await {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn admin(running: &Running) -> HttpClient {
    HttpClient::new(running.admin_addr.expect("the admin listener runs"))
}

async fn admin_json(running: &Running, path: &str) -> (StatusCode, Value) {
    let reply = admin(running).get(path).await;
    let json =
        serde_json::from_slice(&reply.body).unwrap_or_else(|e| panic!("{path} is not JSON ({e}): {:?}", reply.text()));
    (reply.status, json)
}

/// `/api/backends` entry of `upstream`/`name`.
async fn api_backend(running: &Running, upstream: &str, name: &str) -> Value {
    let (status, json) = admin_json(running, "/api/backends").await;
    assert_eq!(status, StatusCode::OK);
    json["backends"]
        .as_array()
        .expect("a backends array")
        .iter()
        .find(|b| b["upstream"] == upstream && b["name"] == name)
        .cloned()
        .unwrap_or_else(|| panic!("{upstream}/{name} missing from /api/backends: {json}"))
}

async fn metrics_text(running: &Running) -> String {
    let reply = admin(running).get("/metrics").await;
    assert_eq!(reply.status, StatusCode::OK);
    reply.text().to_owned()
}

/// The sum of the samples of `name` whose labels include `labels`; 0 when there are none.
fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|line| line.strip_prefix(name).is_some_and(|rest| rest.starts_with('{')))
        .filter(|line| labels.iter().all(|(k, v)| line.contains(&format!("{k}=\"{v}\""))))
        .map(|line| {
            line.rsplit(' ')
                .next()
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or_else(|| panic!("unparsable sample: {line}"))
        })
        .sum()
}

async fn transitions(running: &Running, upstream: &str, backend: &str, to: &str) -> f64 {
    metric(
        &metrics_text(running).await,
        "backend_health_transitions_total",
        &[("upstream", upstream), ("backend", backend), ("to", to)],
    )
}

async fn retries(running: &Running, upstream: &str) -> f64 {
    metric(
        &metrics_text(running).await,
        "proxy_retries_total",
        &[("upstream", upstream)],
    )
}

/// POSTs to the admin API with `authorization` as the header value, if any.
async fn admin_post(running: &Running, path: &str, authorization: Option<&str>) -> Reply {
    let client = admin(running);
    let mut request = client.request("POST", path);
    if let Some(value) = authorization {
        request = request.header(AUTHORIZATION, value);
    }
    client.send(request.body(empty()).expect("request")).await
}

async fn set_drained(running: &Running, upstream: &str, name: &str, drained: bool) -> Value {
    let action = if drained { "drain" } else { "undrain" };
    let reply = admin_post(
        running,
        &format!("/api/backends/{upstream}/{name}/{action}"),
        Some(&format!("Bearer {TOKEN}")),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{action}: {}", reply.text());
    serde_json::from_slice(&reply.body).expect("JSON")
}

/// Tells a demo backend directly (not through the proxy) how to behave.
async fn control(backend: SocketAddr, path: &str) {
    let client = HttpClient::new(backend);
    let reply = client
        .send(client.request("POST", path).body(empty()).expect("request"))
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{path}: {}", reply.text());
}

/// A listener that accepts TCP connections and never speaks HTTP.
fn start_silent_listener() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = bind_loopback();
    let addr = listener.local_addr().expect("address");
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            drop(stream);
        }
    });
    (addr, task)
}

fn probed_backend(name: &str, addr: SocketAddr, health_url: Option<&str>, config: &HealthCheckConfig) -> Arc<Backend> {
    let backend = BackendConfig {
        name: name.to_owned(),
        scheme: Scheme::HTTP,
        authority: Authority::try_from(addr.to_string().as_str()).expect("authority"),
        weight: 1,
        health_url: health_url.map(|u| u.parse().expect("health URL")),
        protocol: quic_proxy::config::UpstreamProtocol::Auto,
        tls: None,
        address: None,
    };
    Arc::new(Backend::configured("probes", &backend, config, None).expect("a plain backend"))
}

/// Runs one probe and returns the report's (healthy, successes, failures, last error).
async fn probe(
    prober: &Prober,
    backend: &Arc<Backend>,
    config: &HealthCheckConfig,
) -> (bool, u32, u32, Option<String>) {
    prober.probe_once(backend, config).await;
    let report = backend.health.report();
    (
        report.healthy,
        report.consecutive_successes,
        report.consecutive_failures,
        report.last_error,
    )
}

fn probe_config() -> HealthCheckConfig {
    HealthCheckConfig {
        enabled: true,
        timeout: Duration::from_secs(10),
        unhealthy_threshold: 3,
        healthy_threshold: 2,
        ..HealthCheckConfig::disabled()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_cross_the_thresholds_after_exactly_n_and_m_outcomes() {
    guarded(async {
        let addr = start_backends(&["exact"])[0];
        let config = probe_config();
        let backend = probed_backend("exact", addr, None, &config);
        let prober = Prober::default();
        let status = Some("status 503".to_owned());

        assert_eq!(probe(&prober, &backend, &config).await, (true, 1, 0, None));
        control(addr, "/control/health/503").await;
        assert_eq!(probe(&prober, &backend, &config).await, (true, 0, 1, status.clone()));
        assert_eq!(probe(&prober, &backend, &config).await, (true, 0, 2, status.clone()));
        assert_eq!(probe(&prober, &backend, &config).await, (false, 0, 3, status.clone()));
        assert_eq!(probe(&prober, &backend, &config).await, (false, 0, 4, status.clone()));
        control(addr, "/control/health/200").await;
        assert_eq!(probe(&prober, &backend, &config).await, (false, 1, 0, status.clone()));
        assert_eq!(probe(&prober, &backend, &config).await, (true, 2, 0, status.clone()));
        assert!(backend.health.report().last_check.is_some());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_probe_kind_fails_for_its_own_reason() {
    guarded(async {
        let addrs = start_backends(&["kinds", "elsewhere"]);
        let (addr, elsewhere) = (addrs[0], addrs[1]);
        let dead = dead_port_addr();
        let (silent, _silent_task) = start_silent_listener();
        let prober = Prober::default();
        let once = |c: HealthCheckConfig| HealthCheckConfig {
            unhealthy_threshold: 1,
            healthy_threshold: 1,
            ..c
        };
        let outcome = |addr: SocketAddr, health_url: Option<String>, config: HealthCheckConfig| {
            let prober = prober.clone();
            async move {
                let backend = probed_backend("kinds", addr, health_url.as_deref(), &config);
                probe(&prober, &backend, &config).await.3
            }
        };

        let http = once(probe_config());
        assert_eq!(outcome(addr, None, http.clone()).await, None);
        assert_eq!(
            outcome(dead, None, http.clone()).await.as_deref(),
            Some("connection refused")
        );
        let tcp = HealthCheckConfig {
            kind: CheckKind::Tcp,
            ..http.clone()
        };
        assert_eq!(
            outcome(silent, None, tcp.clone()).await,
            None,
            "TCP needs only a connect"
        );
        assert_eq!(outcome(dead, None, tcp).await.as_deref(), Some("connection refused"));

        let body = |expected: &str| HealthCheckConfig {
            expect_body: Some(expected.to_owned()),
            ..http.clone()
        };
        assert_eq!(outcome(addr, None, body("ok")).await, None);
        assert_eq!(
            outcome(addr, None, body("ready")).await.as_deref(),
            Some("body does not contain \"ready\"")
        );

        let statuses = |ranges: &[(u16, u16)]| HealthCheckConfig {
            expected_statuses: ranges.iter().map(|&(low, high)| StatusRange { low, high }).collect(),
            ..http.clone()
        };
        control(addr, "/control/health/418").await;
        assert_eq!(outcome(addr, None, statuses(&[(200, 299), (410, 420)])).await, None);
        assert_eq!(
            outcome(addr, None, statuses(&[(200, 399)])).await.as_deref(),
            Some("status 418")
        );
        assert_eq!(outcome(addr, None, statuses(&[(418, 418)])).await, None);

        // The backend itself answers 418, its health URL elsewhere answers 200.
        let url = format!("http://{elsewhere}/health");
        assert_eq!(outcome(addr, Some(url), http.clone()).await, None);
        let dead_url = format!("http://{dead}/health");
        control(addr, "/control/health/200").await;
        assert_eq!(
            outcome(addr, Some(dead_url), http.clone()).await.as_deref(),
            Some("connection refused")
        );

        let slow = HealthCheckConfig {
            timeout: Duration::from_millis(50),
            ..http
        };
        control(addr, "/control/latency/2000").await;
        assert_eq!(outcome(addr, None, slow).await.as_deref(), Some("timed out after 50ms"));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_health_takes_a_backend_out_of_rotation_and_back() {
    guarded(async {
        let names = ["rot-a", "rot-b"];
        let addrs = start_backends(&names);
        let running = upstream_proxy(
            "rotation",
            &equal_backends(&names, &addrs),
            "{interval: 100ms, timeout: 100ms, unhealthy_threshold: 3, healthy_threshold: 2}",
            "{}",
        )
        .await;
        let client = HttpClient::new(running.fallback_addr);
        let b = backend_of(&running, "rotation", "rot-b");
        wait_until(|| b.health.report().consecutive_successes >= 1).await;

        control(addrs[1], "/control/health/503").await;
        // Whatever moment it is observed at, the state must agree with the failure count.
        let mut failures_while_healthy = Vec::new();
        loop {
            let report = b.health.report();
            if !report.healthy {
                assert!(report.consecutive_failures >= 3, "unhealthy after {report:?}");
                break;
            }
            assert!(report.consecutive_failures < 3, "still healthy after {report:?}");
            failures_while_healthy.push(report.consecutive_failures);
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let view = api_backend(&running, "rotation", "rot-b").await;
        assert_eq!(view["state"], "unhealthy");
        assert!(view["consecutive_failures"].as_u64().expect("a number") >= 3, "{view}");
        assert_eq!(view["consecutive_successes"], 0);
        assert_eq!(view["last_error"], "status 503");

        for _ in 0..10 {
            let reply = client.get("/").await;
            assert_eq!((reply.status, reply.backend()), (StatusCode::OK, "rot-a"));
        }
        assert_eq!(
            transitions(&running, "rotation", "rot-b", "unhealthy").await,
            1.0,
            "announced once, not per failed probe"
        );

        control(addrs[1], "/control/health/200").await;
        loop {
            let report = b.health.report();
            if report.healthy {
                assert!(report.consecutive_successes >= 2, "healthy after {report:?}");
                break;
            }
            assert!(report.consecutive_successes < 2, "still unhealthy after {report:?}");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let view = api_backend(&running, "rotation", "rot-b").await;
        assert_eq!(view["state"], "healthy");
        assert!(view["consecutive_successes"].as_u64().expect("a number") >= 2, "{view}");
        assert_eq!(view["consecutive_failures"], 0);
        let mut answered = Vec::new();
        for _ in 0..4 {
            let reply = client.get("/").await;
            assert_eq!(reply.status, StatusCode::OK);
            answered.push(reply.backend().to_owned());
        }
        assert_eq!(answered.iter().filter(|b| *b == "rot-b").count(), 2, "{answered:?}");
        assert_eq!(transitions(&running, "rotation", "rot-b", "healthy").await, 1.0);
        assert_eq!(transitions(&running, "rotation", "rot-b", "unhealthy").await, 1.0);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_probes_detect_a_closed_port() {
    guarded(async {
        let (silent, silent_task) = start_silent_listener();
        let dead = dead_port_addr();
        let backends = backend_list(&[("tcp-silent", silent, 1), ("tcp-dead", dead, 1)]);
        let running = upstream_proxy(
            "tcp-probes",
            &backends,
            "{type: tcp, interval: 100ms, timeout: 100ms, unhealthy_threshold: 2, healthy_threshold: 1}",
            "{}",
        )
        .await;
        let silent_backend = backend_of(&running, "tcp-probes", "tcp-silent");
        let dead_backend = backend_of(&running, "tcp-probes", "tcp-dead");
        // A listener that never answers HTTP is healthy for a TCP check.
        wait_until(|| silent_backend.health.report().consecutive_successes >= 2).await;
        assert!(silent_backend.health.is_healthy());
        wait_until(|| !dead_backend.health.is_healthy()).await;
        let view = api_backend(&running, "tcp-probes", "tcp-dead").await;
        assert_eq!(view["last_error"], "connection refused");

        silent_task.abort();
        wait_until(|| !silent_backend.health.is_healthy()).await;
        let view = api_backend(&running, "tcp-probes", "tcp-silent").await;
        assert_eq!(view["state"], "unhealthy");
        assert_eq!(view["last_error"], "connection refused");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expect_body_mismatch_counts_as_a_failure() {
    guarded(async {
        let addr = start_backends(&["body"])[0];
        let one = backend_list(&[("body", addr, 1)]);
        let yaml = format!(
            "upstreams:\n  \
               body-match:\n    backends: {one}\n    health_check: {{interval: 100ms, timeout: 100ms, \
               healthy_threshold: 1, initial_state: unhealthy, expect_body: \"ok\"}}\n  \
               body-mismatch:\n    backends: {one}\n    health_check: {{interval: 100ms, timeout: 100ms, \
               unhealthy_threshold: 1, expect_body: \"all systems go\"}}\n\
             routes:\n  - {{path: \"/*\", upstream: body-match}}\n"
        );
        let running = start_proxy(&render_config(&[], &yaml)).await;
        let matching = backend_of(&running, "body-match", "body");
        let mismatching = backend_of(&running, "body-mismatch", "body");
        wait_until(|| matching.health.is_healthy()).await;
        wait_until(|| !mismatching.health.is_healthy()).await;
        let view = api_backend(&running, "body-mismatch", "body").await;
        assert_eq!(view["last_error"], "body does not contain \"all systems go\"");
        let view = api_backend(&running, "body-match", "body").await;
        assert_eq!(view["last_error"], Value::Null);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expected_status_ranges_are_honoured() {
    guarded(async {
        let names = ["st-418", "st-302", "st-503"];
        let addrs = start_backends(&names);
        for (addr, status) in addrs.iter().zip([418, 302, 503]) {
            control(*addr, &format!("/control/health/{status}")).await;
        }
        let all = equal_backends(&names, &addrs);
        let teapot = backend_list(&[("st-418", addrs[0], 1)]);
        let yaml = format!(
            "upstreams:\n  \
               ranges:\n    backends: {all}\n    health_check: {{interval: 100ms, timeout: 100ms, \
               healthy_threshold: 1, unhealthy_threshold: 1, initial_state: unhealthy, \
               expected_statuses: [\"200-299\", \"300-399\", \"410-420\"]}}\n  \
               strict:\n    backends: {teapot}\n    health_check: {{interval: 100ms, timeout: 100ms, \
               unhealthy_threshold: 1, expected_statuses: [200]}}\n\
             routes:\n  - {{path: \"/*\", upstream: ranges}}\n"
        );
        let running = start_proxy(&render_config(&[], &yaml)).await;
        let [teapot, redirect, unavailable] = names.map(|n| backend_of(&running, "ranges", n));
        wait_until(|| teapot.health.is_healthy() && redirect.health.is_healthy()).await;
        wait_until(|| unavailable.health.report().consecutive_failures >= 2).await;
        assert!(!unavailable.health.is_healthy());
        assert_eq!(
            api_backend(&running, "ranges", "st-503").await["last_error"],
            "status 503"
        );

        let strict = backend_of(&running, "strict", "st-418");
        wait_until(|| !strict.health.is_healthy()).await;
        assert_eq!(
            api_backend(&running, "strict", "st-418").await["last_error"],
            "status 418"
        );

        let client = HttpClient::new(running.fallback_addr);
        for _ in 0..6 {
            let reply = client.get("/").await;
            assert_eq!(reply.status, StatusCode::OK);
            assert_ne!(reply.backend(), "st-503");
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_url_probes_another_port() {
    guarded(async {
        let addrs = start_backends(&["hu-sick", "hu-helper", "hu-fine"]);
        let (sick, helper, fine) = (addrs[0], addrs[1], addrs[2]);
        let dead = dead_port_addr();
        // hu-sick's own /health fails but its health URL (another server) says it is fine; hu-fine is the
        // other way round.
        control(sick, "/control/health/503").await;
        let backends = format!(
            "[{}, {}]",
            backend_with_health_url("hu-sick", sick, &format!("http://{helper}/health")),
            backend_with_health_url("hu-fine", fine, &format!("http://{dead}/health")),
        );
        let running = upstream_proxy(
            "health-url",
            &backends,
            "{interval: 100ms, timeout: 100ms, healthy_threshold: 1, initial_state: unhealthy}",
            "{}",
        )
        .await;
        let sick_backend = backend_of(&running, "health-url", "hu-sick");
        let fine_backend = backend_of(&running, "health-url", "hu-fine");
        wait_until(|| sick_backend.health.is_healthy()).await;
        wait_until(|| fine_backend.health.report().consecutive_failures >= 2).await;
        assert!(!fine_backend.health.is_healthy());
        assert_eq!(
            api_backend(&running, "health-url", "hu-fine").await["last_error"],
            "connection refused"
        );
        let client = HttpClient::new(running.fallback_addr);
        for _ in 0..4 {
            let reply = client.get("/").await;
            assert_eq!((reply.status, reply.backend()), (StatusCode::OK, "hu-sick"));
        }
    })
    .await;
}

/// Sends GETs one at a time until `done` holds (at most `limit`), asserting each was answered 200.
async fn get_until(client: &HttpClient, limit: usize, mut done: impl FnMut() -> bool) -> Vec<String> {
    let mut answered = Vec::new();
    while !done() {
        assert!(
            answered.len() < limit,
            "still not done after {limit} requests: {answered:?}"
        );
        let reply = client.get("/").await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        answered.push(reply.backend().to_owned());
    }
    answered
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passive_checks_eject_a_refusing_backend_after_exactly_the_threshold() {
    guarded(async {
        let live = start_backends(&["pr-live"])[0];
        let backends = backend_list(&[("pr-live", live, 1), ("pr-dead", dead_port_addr(), 1)]);
        let running = upstream_proxy(
            "passive-refused",
            &backends,
            "{enabled: false, passive: {unhealthy_threshold: 2, reactivation: 1h, max_ejection: 1h}}",
            "{}",
        )
        .await;
        let client = HttpClient::new(running.fallback_addr);
        let dead = backend_of(&running, "passive-refused", "pr-dead");

        // Every attempt on the dead backend is retried on the live one: the client never sees it.
        let answered = get_until(&client, 50, || !dead.health.is_healthy()).await;
        assert!(answered.iter().all(|b| b == "pr-live"), "{answered:?}");
        assert_eq!(
            retries(&running, "passive-refused").await,
            2.0,
            "one attempt per failure up to the threshold"
        );
        let view = api_backend(&running, "passive-refused", "pr-dead").await;
        assert_eq!(view["state"], "ejected", "taken out by traffic, not by probes");
        assert_eq!(view["state_reason"], "after 2 failed requests: connection refused");
        assert_eq!(view["last_error"], "connection refused");

        for _ in 0..20 {
            let reply = client.get("/").await;
            assert_eq!((reply.status, reply.backend()), (StatusCode::OK, "pr-live"));
        }
        assert_eq!(
            retries(&running, "passive-refused").await,
            2.0,
            "no request went to the ejected backend"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passive_ejection_ends_on_probation_and_one_failure_ejects_again() {
    guarded(async {
        let live = start_backends(&["pp-live"])[0];
        let backends = backend_list(&[("pp-live", live, 1), ("pp-dead", dead_port_addr(), 1)]);
        let running = upstream_proxy(
            "passive-probation",
            &backends,
            "{enabled: false, passive: {unhealthy_threshold: 2, reactivation: 100ms, max_ejection: 300ms}}",
            "{}",
        )
        .await;
        let client = HttpClient::new(running.fallback_addr);
        let dead = backend_of(&running, "passive-probation", "pp-dead");

        get_until(&client, 50, || !dead.health.is_healthy()).await;
        assert_eq!(retries(&running, "passive-probation").await, 2.0);
        for round in 1..=3 {
            wait_until(|| dead.health.is_healthy()).await;
            assert_eq!(
                api_backend(&running, "passive-probation", "pp-dead").await["state"],
                "healthy"
            );
            let answered = get_until(&client, 10, || !dead.health.is_healthy()).await;
            assert!(answered.iter().all(|b| b == "pp-live"), "{answered:?}");
            assert_eq!(
                retries(&running, "passive-probation").await,
                2.0 + f64::from(round),
                "one failure on probation ejects"
            );
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revived_backend_passes_probation_with_one_success() {
    guarded(async {
        let names = ["rv-a", "rv-b"];
        let addrs = start_backends(&names);
        let running = upstream_proxy(
            "passive-revive",
            &equal_backends(&names, &addrs),
            "{enabled: false, passive: {unhealthy_threshold: 2, reactivation: 100ms, max_ejection: 100ms}}",
            "{}",
        )
        .await;
        let client = HttpClient::new(running.fallback_addr);
        let b = backend_of(&running, "passive-revive", "rv-b");
        // Proxied requests for /health get the demo backend's health status: 503 from rv-b is a failure
        // status for passive checks.
        control(addrs[1], "/control/health/503").await;
        let mut failed = 0;
        while b.health.is_healthy() {
            let reply = client.get("/health").await;
            match reply.backend() {
                "rv-b" => {
                    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
                    failed += 1;
                }
                _ => assert_eq!(reply.status, StatusCode::OK),
            }
            assert!(failed <= 2, "still healthy after {failed} failures");
        }
        assert_eq!(failed, 2);

        control(addrs[1], "/control/health/200").await;
        wait_until(|| b.health.is_healthy()).await;
        loop {
            let reply = client.get("/health").await;
            assert_eq!(reply.status, StatusCode::OK);
            if reply.backend() == "rv-b" {
                break;
            }
        }
        // Off probation after that success: a single failure no longer ejects, the threshold does.
        control(addrs[1], "/control/health/503").await;
        let mut failed = 0;
        while failed < 2 {
            let reply = client.get("/health").await;
            if reply.backend() == "rv-b" {
                failed += 1;
                assert_eq!(
                    b.health.is_healthy(),
                    failed < 2,
                    "after {failed} failures off probation"
                );
            }
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_open_routes_to_unhealthy_backends_and_counts_them() {
    guarded(async {
        let names = ["fo-a", "fo-b"];
        let addrs = start_backends(&names);
        for addr in &addrs {
            control(*addr, "/control/health/503").await;
        }
        let running = upstream_proxy(
            "all-down-open",
            &equal_backends(&names, &addrs),
            "{interval: 100ms, timeout: 100ms, initial_state: unhealthy}",
            "{when_all_unhealthy: fail_open}",
        )
        .await;
        let client = HttpClient::new(running.fallback_addr);
        for _ in 0..4 {
            let reply = client.get("/").await;
            assert_eq!(reply.status, StatusCode::OK);
            assert!(names.contains(&reply.backend()), "{}", reply.backend());
        }
        assert!(names
            .iter()
            .all(|n| !backend_of(&running, "all-down-open", n).health.is_healthy()));
        let text = metrics_text(&running).await;
        assert_eq!(
            metric(
                &text,
                "upstream_fail_open_requests_total",
                &[("upstream", "all-down-open")]
            ),
            4.0,
            "{text}"
        );
        let (status, health) = admin_json(&running, "/health").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(health["status"], "unhealthy");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_closed_answers_503_with_retry_after() {
    guarded(async {
        let names = ["fc-a", "fc-b"];
        let addrs = start_backends(&names);
        for addr in &addrs {
            control(*addr, "/control/health/503").await;
        }
        let running = upstream_proxy(
            "all-down-closed",
            &equal_backends(&names, &addrs),
            "{interval: 2s, timeout: 1s, initial_state: unhealthy}",
            "{when_all_unhealthy: fail_closed}",
        )
        .await;
        let client = HttpClient::new(running.fallback_addr);
        for _ in 0..3 {
            let reply = client.get("/").await;
            assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
            assert_eq!(reply.header(RETRY_AFTER.as_str()), Some("2"), "the probe interval");
            assert_eq!(reply.header("x-backend"), None, "no backend was asked");
        }
        let text = metrics_text(&running).await;
        assert_eq!(
            metric(
                &text,
                "upstream_fail_open_requests_total",
                &[("upstream", "all-down-closed")]
            ),
            0.0
        );
    })
    .await;
}

fn drain_config(names: &[&str], addrs: &[SocketAddr], token: Option<&str>) -> String {
    let mut yaml = upstream_yaml("drainable", &equal_backends(names, addrs), "{enabled: false}", "{}");
    if let Some(token) = token {
        yaml.push_str(&format!("admin: {{token: \"{token}\"}}\n"));
    }
    render_config(&[], &yaml)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_is_forbidden_without_an_admin_token() {
    guarded(async {
        let names = ["dn-a", "dn-b"];
        let addrs = start_backends(&names);
        let running = start_proxy(&drain_config(&names, &addrs, None)).await;
        for action in ["drain", "undrain"] {
            let path = format!("/api/backends/drainable/dn-a/{action}");
            for authorization in [None, Some("Bearer anything"), Some("Bearer ")] {
                let reply = admin_post(&running, &path, authorization).await;
                assert_eq!(reply.status, StatusCode::FORBIDDEN, "{action} with {authorization:?}");
            }
        }
        assert!(!backend_of(&running, "drainable", "dn-a").is_drained());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_needs_the_right_bearer_token() {
    guarded(async {
        let names = ["dt-a", "dt-b"];
        let addrs = start_backends(&names);
        let running = start_proxy(&drain_config(&names, &addrs, Some(TOKEN))).await;
        let wrong = [
            None,
            Some("Bearer wrong-token".to_owned()),
            Some(format!("Bearer {TOKEN}x")),
            Some(format!("Bearer {}", &TOKEN[..TOKEN.len() - 1])),
            Some(format!("Basic {TOKEN}")),
            Some(TOKEN.to_owned()),
            Some("Bearer ".to_owned()),
        ];
        for action in ["drain", "undrain"] {
            let path = format!("/api/backends/drainable/dt-a/{action}");
            for authorization in &wrong {
                let reply = admin_post(&running, &path, authorization.as_deref()).await;
                assert_eq!(
                    reply.status,
                    StatusCode::UNAUTHORIZED,
                    "{action} with {authorization:?}"
                );
                assert_eq!(reply.header(WWW_AUTHENTICATE.as_str()), Some("Bearer"));
            }
        }
        assert!(!backend_of(&running, "drainable", "dt-a").is_drained());

        let bearer = format!("Bearer {TOKEN}");
        for path in [
            "/api/backends/drainable/nobody/drain",
            "/api/backends/nowhere/dt-a/drain",
            "/api/backends/nowhere/nobody/undrain",
        ] {
            let reply = admin_post(&running, path, Some(&bearer)).await;
            assert_eq!(reply.status, StatusCode::NOT_FOUND, "{path}");
        }
        let drained = set_drained(&running, "drainable", "dt-a", true).await;
        assert_eq!(drained["drained"], true);
        assert!(backend_of(&running, "drainable", "dt-a").is_drained());
    })
    .await;
}

/// A request body the test feeds chunk by chunk; the request stays in flight until the sender is dropped.
fn streamed_body() -> (tokio::sync::mpsc::Sender<Bytes>, TestBody) {
    let (sender, receiver) = tokio::sync::mpsc::channel::<Bytes>(4);
    let chunks = futures_util::stream::unfold(receiver, |mut receiver| async move {
        let chunk = receiver.recv().await?;
        Some((Ok::<_, BoxError>(Frame::data(chunk)), receiver))
    });
    (sender, StreamBody::new(chunks).boxed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_backend_finishes_in_flight_requests_and_gets_no_new_ones() {
    guarded(async {
        let names = ["dr-a", "dr-b"];
        let addrs = start_backends(&names);
        let running = start_proxy(&drain_config(&names, &addrs, Some(TOKEN))).await;
        let client = HttpClient::new(running.fallback_addr);

        let (sender, body) = streamed_body();
        sender.send(Bytes::from_static(b"first half, ")).await.expect("send");
        let streaming = Client::builder(TokioExecutor::new()).build_http::<TestBody>();
        let request = Request::post(format!("http://{}/echo", running.fallback_addr))
            .body(body)
            .expect("request");
        let response = streaming.request(request).await.expect("response head");
        assert_eq!(response.status(), StatusCode::OK);
        let busy = response.headers()["x-backend"].to_str().expect("name").to_owned();
        let other = names.iter().find(|n| **n != busy).expect("the other backend");
        let backend = backend_of(&running, "drainable", &busy);
        assert_eq!(backend.in_flight(), 1);

        let drained = set_drained(&running, "drainable", &busy, true).await;
        assert_eq!(drained["drained"], true);
        assert_eq!(drained["in_flight"], 1);
        let view = api_backend(&running, "drainable", &busy).await;
        assert_eq!(
            (view["drained"].clone(), view["in_flight"].clone()),
            (Value::Bool(true), 1.into())
        );
        for _ in 0..6 {
            let reply = client.get("/").await;
            assert_eq!((reply.status, reply.backend()), (StatusCode::OK, *other));
        }

        sender.send(Bytes::from_static(b"second half")).await.expect("send");
        drop(sender);
        let echoed = response.into_body().collect().await.expect("the whole body").to_bytes();
        assert_eq!(&echoed[..], b"first half, second half");
        wait_until(|| backend.in_flight() == 0).await;

        let undrained = set_drained(&running, "drainable", &busy, false).await;
        assert_eq!(undrained["drained"], false);
        let mut answered = Vec::new();
        for _ in 0..2 {
            let reply = client.get("/").await;
            assert_eq!(reply.status, StatusCode::OK);
            answered.push(reply.backend().to_owned());
        }
        assert!(answered.contains(&busy), "{answered:?}");
        assert_eq!(api_backend(&running, "drainable", &busy).await["drained"], false);
    })
    .await;
}

fn summary(status: &str, healthy: u64, total: u64) -> Value {
    serde_json::json!({ "status": status, "healthy_backends": healthy, "total_backends": total })
}

/// Checks `/health` of the proxy with upstreams `h-one` and `h-two` (3 backends in all).
async fn check_health(running: &Running, code: StatusCode, status: &str, one: Value, two: Value, healthy: u64) {
    let (got, body) = admin_json(running, "/health").await;
    assert_eq!(got, code, "{body}");
    assert_eq!(body["status"], status, "{body}");
    assert_eq!(body["healthy_backends"], healthy, "{body}");
    assert_eq!(body["total_backends"], 3, "{body}");
    assert_eq!(body["upstreams"], serde_json::json!({ "h-one": one, "h-two": two }));
    let timestamp = body["timestamp"].as_str().expect("a timestamp");
    humantime::parse_rfc3339(timestamp).expect("an RFC 3339 timestamp");
    let keys: Vec<&String> = body.as_object().expect("an object").keys().collect();
    assert_eq!(
        keys,
        ["healthy_backends", "status", "timestamp", "total_backends", "upstreams"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_endpoint_reports_healthy_degraded_and_unhealthy() {
    guarded(async {
        let addrs = start_backends(&["h1-a", "h1-b", "h2-a"]);
        let yaml = format!(
            "upstreams:\n  \
               h-one:\n    backends: {}\n    health_check: {{enabled: false}}\n  \
               h-two:\n    backends: {}\n    health_check: {{enabled: false}}\n\
             routes:\n  - {{path: \"/*\", upstream: h-one}}\nadmin: {{token: \"{TOKEN}\"}}\n",
            equal_backends(&["h1-a", "h1-b"], &addrs[..2]),
            equal_backends(&["h2-a"], &addrs[2..]),
        );
        let running = start_proxy(&render_config(&[], &yaml)).await;
        // Each step drains or undrains one backend (or nothing), then checks the whole report.
        let (up, down) = (StatusCode::OK, StatusCode::SERVICE_UNAVAILABLE);
        // One row a step reads more easily than rustfmt's one field a line.
        #[rustfmt::skip]
        let steps = [
            (None, up, "healthy", ("healthy", 2, 2), ("healthy", 1, 1), 3),
            (Some(("h-one", "h1-b", true)), up, "degraded", ("degraded", 1, 2), ("healthy", 1, 1), 2),
            (Some(("h-two", "h2-a", true)), down, "unhealthy", ("degraded", 1, 2), ("unhealthy", 0, 1), 1),
            (Some(("h-one", "h1-b", false)), down, "unhealthy", ("healthy", 2, 2), ("unhealthy", 0, 1), 2),
            (Some(("h-two", "h2-a", false)), up, "healthy", ("healthy", 2, 2), ("healthy", 1, 1), 3),
        ];
        for (change, code, status, one, two, healthy) in steps {
            if let Some((upstream, name, drained)) = change {
                set_drained(&running, upstream, name, drained).await;
            }
            check_health(
                &running,
                code,
                status,
                summary(one.0, one.1, one.2),
                summary(two.0, two.1, two.2),
                healthy,
            )
            .await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_waits_for_the_first_probe_round_and_live_never_does() {
    guarded(async {
        let addr = start_backends(&["ready-a"])[0];
        // The probe goes to a socket the test answers by hand, so the first round ends when the test says.
        let gate = bind_loopback();
        let gate_addr = gate.local_addr().expect("address");
        let backends = format!(
            "[{}]",
            backend_with_health_url("ready-a", addr, &format!("http://{gate_addr}/gate-health"))
        );
        let running = upstream_proxy("readiness", &backends, "{interval: 30s, timeout: 20s}", "{}").await;
        let endpoints = admin(&running);

        assert_eq!(endpoints.get("/ready").await.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(endpoints.get("/live").await.status, StatusCode::OK);
        let (mut probe, _) = gate.accept().await.expect("the first probe connects");
        let head = read_head_request(&mut probe).await;
        assert!(head.starts_with("GET /gate-health HTTP/1.1\r\n"), "{head}");
        assert!(
            head.to_ascii_lowercase().contains("user-agent: quic-proxy-health"),
            "{head}"
        );
        let ready = endpoints.get("/ready").await;
        assert_eq!(ready.status, StatusCode::SERVICE_UNAVAILABLE, "probe still unanswered");
        assert!(ready.text().contains("first health check round"), "{}", ready.text());
        assert_eq!(endpoints.get("/live").await.status, StatusCode::OK);

        probe.write_all(OK_RESPONSE).await.expect("answer the probe");
        poll(|| {
            let endpoints = endpoints.clone();
            async move { endpoints.get("/ready").await.status == StatusCode::OK }
        })
        .await;
        assert_eq!(endpoints.get("/live").await.status, StatusCode::OK);
        let view = api_backend(&running, "readiness", "ready-a").await;
        assert!(view["last_check"].is_string(), "{view}");
    })
    .await;
}

async fn read_head_request(stream: &mut tokio::net::TcpStream) -> String {
    let mut head = Vec::new();
    let mut buffer = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let read = stream.read(&mut buffer).await.expect("read the probe");
        assert!(read > 0, "probe closed early: {:?}", String::from_utf8_lossy(&head));
        head.extend_from_slice(&buffer[..read]);
    }
    String::from_utf8(head).expect("UTF-8")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_backends_reports_every_field() {
    guarded(async {
        let live = start_backends(&["f-live"])[0];
        let dead = dead_port_addr();
        let backends = backend_list(&[("f-live", live, 3), ("f-dead", dead, 1)]);
        let running = upstream_proxy(
            "fields",
            &backends,
            "{interval: 100ms, timeout: 100ms, unhealthy_threshold: 1}",
            "{}",
        )
        .await;
        let live_backend = backend_of(&running, "fields", "f-live");
        let dead_backend = backend_of(&running, "fields", "f-dead");
        wait_until(|| live_backend.health.report().consecutive_successes >= 1 && !dead_backend.health.is_healthy())
            .await;

        let (status, json) = admin_json(&running, "/api/backends").await;
        assert_eq!(status, StatusCode::OK);
        let list = json["backends"].as_array().expect("an array");
        assert_eq!(list.len(), 2, "{json}");
        let expected_keys = [
            "circuit_open",
            "connections",
            "consecutive_failures",
            "consecutive_successes",
            "drained",
            "effective_weight",
            "ejected_by",
            "in_flight",
            "last_check",
            "last_error",
            "last_latency_ms",
            "name",
            "pending",
            "state",
            "state_reason",
            "upstream",
            "url",
            "weight",
        ];
        for entry in list {
            let keys: Vec<&String> = entry.as_object().expect("an object").keys().collect();
            assert_eq!(keys, expected_keys, "{entry}");
            assert_eq!(entry["upstream"], "fields");
            assert_eq!(entry["in_flight"], 0);
            assert_eq!(entry["drained"], false);
            let last_check = entry["last_check"].as_str().expect("probed");
            humantime::parse_rfc3339(last_check).expect("an RFC 3339 time");
            assert!(entry["last_latency_ms"].as_f64().expect("a latency") >= 0.0, "{entry}");
        }
        let live_view = &list[0];
        assert_eq!(live_view["name"], "f-live");
        assert_eq!(live_view["url"], format!("http://{live}"));
        assert_eq!(live_view["state"], "healthy");
        assert!(live_view["consecutive_successes"].as_u64().expect("a number") >= 1);
        assert_eq!(live_view["consecutive_failures"], 0);
        assert_eq!(live_view["last_error"], Value::Null);
        assert_eq!(live_view["weight"], 3);
        assert_eq!(live_view["effective_weight"], 3.0);
        let dead_view = &list[1];
        assert_eq!(dead_view["name"], "f-dead");
        assert_eq!(dead_view["url"], format!("http://{dead}"));
        assert_eq!(dead_view["state"], "unhealthy");
        assert_eq!(dead_view["consecutive_successes"], 0);
        assert!(dead_view["consecutive_failures"].as_u64().expect("a number") >= 1);
        assert_eq!(dead_view["last_error"], "connection refused");
        assert_eq!(dead_view["weight"], 1);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recovered_backend_starts_slowly() {
    guarded(async {
        let addr = start_backends(&["slow-start"])[0];
        let backends = backend_list(&[("slow-start", addr, 10)]);
        // A window far longer than the test: the weight cannot reach full while it runs.
        let running = upstream_proxy(
            "slow-start",
            &backends,
            "{interval: 100ms, timeout: 100ms, healthy_threshold: 1, initial_state: unhealthy}",
            "{slow_start: 1h}",
        )
        .await;
        let backend = backend_of(&running, "slow-start", "slow-start");
        wait_until(|| backend.health.is_healthy()).await;
        let view = api_backend(&running, "slow-start", "slow-start").await;
        let weight = view["effective_weight"].as_f64().expect("a number");
        assert!((1.0..10.0).contains(&weight), "10% of 10 at first, rising: {view}");
    })
    .await;
}
