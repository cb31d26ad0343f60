//! The proxy's side of a backend, end to end: `https://` backends (verification against a CA file, SNI,
//! `insecure_skip_verify`, client certificates), HTTP/2 by ALPN and with prior knowledge, multiplexed
//! backend connections, probes over the backend's own protocol, trailers and large bodies. Backends are
//! hyper servers behind rustls with certificates from a test CA, on loopback ports chosen by the OS; each
//! test checks what the backend observed (SNI, client certificate, HTTP version, connections) as well as
//! what the client got.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use crate::support::backends::*;
use crate::support::http3::*;
use crate::support::*;
use bytes::Buf as _;
use http::{HeaderMap, Request, StatusCode, Version};
use http_body::Frame;
use http_body_util::{BodyExt as _, StreamBody};
use hyper::client::conn::http2::SendRequest;
use quic_proxy::app::Running;
use serde_json::Value;
use sha2::{Digest, Sha256};
use tempfile::TempDir;

/// Bulk-transfer tests move tens of MiB through unoptimised builds of rustls, hyper, quinn and h3.
const BULK_GUARD: Duration = Duration::from_secs(120);

/// Tests that start the proxy binary, whose start-up and log lines take longer than an in-process proxy.
const PROCESS_GUARD: Duration = Duration::from_secs(60);

const BOTH: &[&[u8]] = &[b"h2", b"http/1.1"];
const HTTP1_ONLY: &[&[u8]] = &[b"http/1.1"];
const H2_ONLY: &[&[u8]] = &[b"h2"];

/// A backend entry as a YAML flow map; `extra` adds keys (`protocol: h2`, `tls: {...}`).
fn entry(name: &str, url: &str, extra: &str) -> String {
    let extra = if extra.is_empty() {
        String::new()
    } else {
        format!(", {extra}")
    };
    format!(r#"{{name: "{name}", url: "{url}"{extra}}}"#)
}

/// `tls: {ca_file: ...}` trusting `ca`, with `extra` keys added.
fn trusting(ca: &TestCa, extra: &str) -> String {
    let extra = if extra.is_empty() {
        String::new()
    } else {
        format!(", {extra}")
    };
    format!("tls: {{ca_file: {:?}{extra}}}", ca.cert_file.display().to_string())
}

/// `tls: {ca_file, cert_file, key_file}`: trust `ca` and present `client`.
fn trusting_with_client(ca: &TestCa, client: &Identity) -> String {
    trusting(
        ca,
        &format!(
            "cert_file: {:?}, key_file: {:?}",
            client.cert_file.display().to_string(),
            client.key_file.display().to_string()
        ),
    )
}

/// Upstreams reached by path: `/<name>/...` goes to upstream `name`, whose backends are `entries`.
fn upstreams(list: &[(&str, Vec<String>)]) -> String {
    let mut yaml = String::from("upstreams:\n");
    for (name, entries) in list {
        yaml.push_str(&format!("  {name}:\n    backends: [{}]\n", entries.join(", ")));
    }
    yaml.push_str("routes:\n");
    for (name, _) in list {
        yaml.push_str(&format!("  - {{path: \"/{name}/*\", upstream: {name}}}\n"));
    }
    yaml
}

/// A proxy with TLS listeners (HTTPS and QUIC, certificate from `certs`), `workers` worker threads and
/// `rest` at top level.
async fn tls_proxy(certs: &TestCerts, workers: usize, rest: &str) -> Running {
    let workers = format!("workers: {workers}");
    start_tls_proxy(&render_config(&[certs.server_line().as_str(), workers.as_str()], rest)).await
}

async fn h2_get(sender: &mut SendRequest<TestBody>, authority: &str, path: &str) -> Reply {
    let request = Request::get(format!("https://{authority}{path}"))
        .body(empty())
        .expect("request");
    let response = sender
        .send_request(request)
        .await
        .expect("HTTP/2 request through the proxy");
    let (parts, body) = response.into_parts();
    let body = body.collect().await.expect("HTTP/2 response body").to_bytes();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

/// GETs `path` over HTTP/1.1 (the plain listener), HTTP/2 and HTTP/3 (the TLS listeners), each answered
/// 200 by `backend`.
async fn get_over_every_client(running: &Running, certs: &TestCerts, path: &str, backend: &str) {
    let reply = HttpClient::new(running.fallback_addr).get(&format!("{path}/h1")).await;
    assert_eq!(
        (reply.status, reply.backend()),
        (StatusCode::OK, backend),
        "HTTP/1.1: {}",
        reply.text()
    );

    let (mut sender, authority) = h2_connect(running, certs).await;
    let reply = h2_get(&mut sender, &authority, &format!("{path}/h2")).await;
    assert_eq!(
        (reply.status, reply.backend()),
        (StatusCode::OK, backend),
        "HTTP/2: {}",
        reply.text()
    );

    let mut client = H3Client::connect(quic_addr(running), certs).await;
    let reply = client.get(&format!("{path}/h3")).await.expect("GET over HTTP/3");
    assert_eq!(
        (reply.status, reply.backend()),
        (StatusCode::OK, backend),
        "HTTP/3: {:?}",
        reply.body
    );
    client.close().await;
}

/// How long a backend may take to see what a test waits for.
const BACKEND_WAIT: Duration = Duration::from_secs(20);

/// Polls `ready` until it holds, at most [`BACKEND_WAIT`]; `what` and `seen()` describe the failure.
async fn wait_for(what: &str, mut ready: impl FnMut() -> bool, seen: impl Fn() -> String) {
    let waited = tokio::time::timeout(BACKEND_WAIT, async {
        while !ready() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert!(
        waited.is_ok(),
        "{what} did not happen within {BACKEND_WAIT:?}; {}",
        seen()
    );
}

/// The one request `backend` received for `path`.
fn only_request(backend: &TestBackend, path: &str) -> Seen {
    let seen = backend.requests_to(path);
    assert_eq!(
        seen.len(),
        1,
        "{} received {path} {} times: {seen:?}",
        backend.name,
        seen.len()
    );
    seen.into_iter().next().expect("one request")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_backend_verified_with_a_ca_file_serves_h1_h2_and_h3_clients() {
    guarded(async {
        let ca = TestCa::new("upstream test CA");
        let backend = TestBackend::start("secure", Wire::tls(ca.server_identity(&["localhost"]), BOTH));
        let url = format!("https://localhost:{}", backend.addr.port());
        let certs = TestCerts::generate();
        let running = tls_proxy(
            &certs,
            2,
            &upstreams(&[("secure", vec![entry("secure", &url, &trusting(&ca, ""))])]),
        )
        .await;

        get_over_every_client(&running, &certs, "/secure", "secure").await;

        for client in ["h1", "h2", "h3"] {
            let seen = only_request(&backend, &format!("/secure/{client}"));
            assert!(seen.tls, "{client}: the backend got the request in clear text");
            assert_eq!(seen.sni.as_deref(), Some("localhost"), "{client}");
            assert_eq!(seen.version, Version::HTTP_2, "{client}: ALPN offered h2");
        }
        assert!(
            backend.handshake_errors().is_empty(),
            "{:?}",
            backend.handshake_errors()
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_is_the_url_host_unless_tls_server_name_is_set() {
    guarded(async {
        let ca = TestCa::new("upstream test CA");
        let by_host = TestBackend::start("by-host", Wire::tls(ca.server_identity(&["localhost"]), BOTH));
        let by_name = TestBackend::start("by-name", Wire::tls(ca.server_identity(&["api.internal"]), BOTH));
        // An address in the URL: no SNI (RFC 6066 allows only host names), the address is verified instead.
        let no_sni = TestBackend::start("no-sni", Wire::tls(ca.server_identity(&["127.0.0.1"]), BOTH));
        // An address in the URL and tls.server_name: the name is sent and verified.
        let by_address = TestBackend::start(
            "by-address",
            Wire::tls(ca.server_identity(&["svc.internal"]), HTTP1_ONLY),
        );
        let certs = TestCerts::generate();
        let running = tls_proxy(
            &certs,
            2,
            &upstreams(&[
                (
                    "by-host",
                    vec![entry(
                        "by-host",
                        &format!("https://localhost:{}", by_host.addr.port()),
                        &trusting(&ca, ""),
                    )],
                ),
                (
                    "by-name",
                    vec![entry(
                        "by-name",
                        &format!("https://localhost:{}", by_name.addr.port()),
                        &trusting(&ca, "server_name: api.internal"),
                    )],
                ),
                (
                    "no-sni",
                    vec![entry("no-sni", &format!("https://{}", no_sni.addr), &trusting(&ca, ""))],
                ),
                (
                    "by-address",
                    vec![entry(
                        "by-address",
                        &format!("https://{}", by_address.addr),
                        &trusting(&ca, "server_name: svc.internal"),
                    )],
                ),
            ]),
        )
        .await;
        let client = HttpClient::new(running.fallback_addr);
        for (backend, sni) in [
            (&by_host, Some("localhost")),
            (&by_name, Some("api.internal")),
            (&no_sni, None),
            (&by_address, Some("svc.internal")),
        ] {
            let path = format!("/{}/x", backend.name);
            let reply = client.get(&path).await;
            assert_eq!(reply.status, StatusCode::OK, "{path}: {}", reply.text());
            assert_eq!(reply.backend(), backend.name);
            let hellos = backend.hellos();
            assert!(!hellos.is_empty(), "{} saw no ClientHello", backend.name);
            assert!(
                hellos.iter().all(|h| h.as_deref() == sni),
                "{} saw SNI {hellos:?}, expected {sni:?}",
                backend.name
            );
            assert_eq!(only_request(backend, &path).sni.as_deref(), sni);
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_presents_the_configured_client_certificate() {
    guarded(async {
        let ca = TestCa::new("upstream test CA");
        let client_identity = ca.client_identity("quic-proxy upstream client");
        let backend = TestBackend::start(
            "mtls",
            Wire::Tls {
                identity: ca.server_identity(&["localhost"]),
                alpn: BOTH.to_vec(),
                client_ca: Some(ca.certificate()),
            },
        );
        let url = format!("https://localhost:{}", backend.addr.port());
        let certs = TestCerts::generate();
        let running = tls_proxy(
            &certs,
            2,
            &upstreams(&[
                (
                    "h2",
                    vec![entry("mtls-h2", &url, &trusting_with_client(&ca, &client_identity))],
                ),
                (
                    "h1",
                    vec![entry(
                        "mtls-h1",
                        &url,
                        &format!("protocol: http1, {}", trusting_with_client(&ca, &client_identity)),
                    )],
                ),
            ]),
        )
        .await;
        let client = HttpClient::new(running.fallback_addr);
        for (path, version) in [("/h2/x", Version::HTTP_2), ("/h1/x", Version::HTTP_11)] {
            let reply = client.get(path).await;
            assert_eq!(reply.status, StatusCode::OK, "{path}: {}", reply.text());
            let seen = only_request(&backend, path);
            assert_eq!(seen.version, version, "{path}");
            let presented = seen.client_cert.expect("the backend saw a client certificate");
            assert_eq!(
                subject_common_name(&presented).as_deref(),
                Some("quic-proxy upstream client"),
                "{path}"
            );
            assert_eq!(
                &presented,
                client_identity.leaf(),
                "{path}: not the configured certificate"
            );
        }
        assert!(
            backend.handshake_errors().is_empty(),
            "{:?}",
            backend.handshake_errors()
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_without_a_client_certificate_is_a_bad_gateway() {
    guarded(async {
        let ca = TestCa::new("upstream test CA");
        let client_identity = ca.client_identity("quic-proxy upstream client");
        let backend = TestBackend::start(
            "mtls",
            Wire::Tls {
                identity: ca.server_identity(&["localhost"]),
                alpn: BOTH.to_vec(),
                client_ca: Some(ca.certificate()),
            },
        );
        let url = format!("https://localhost:{}", backend.addr.port());
        let certs = TestCerts::generate();
        let running = tls_proxy(
            &certs,
            2,
            &upstreams(&[
                ("anonymous-h2", vec![entry("anonymous-h2", &url, &trusting(&ca, ""))]),
                (
                    "anonymous-h1",
                    vec![entry(
                        "anonymous-h1",
                        &url,
                        &format!("protocol: http1, {}", trusting(&ca, "")),
                    )],
                ),
                (
                    "identified",
                    vec![entry("identified", &url, &trusting_with_client(&ca, &client_identity))],
                ),
            ]),
        )
        .await;
        let client = HttpClient::new(running.fallback_addr);
        for path in ["/anonymous-h2/x", "/anonymous-h1/x"] {
            let reply = client.get(path).await;
            // 400 would blame the client; the backend refused the proxy.
            assert_eq!(reply.status, StatusCode::BAD_GATEWAY, "{path}: {}", reply.text());
            assert!(backend.requests_to(path).is_empty(), "{path} reached the backend");
        }
        let errors = backend.handshake_errors_at_least(2).await;
        assert!(
            errors.len() >= 2 && errors.iter().all(|e| e.contains("peer sent no certificates")),
            "the backend's handshakes failed for another reason: {errors:?}"
        );

        // The proxy keeps serving, the same backend included, once a certificate is presented.
        let reply = client.get("/identified/x").await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        assert!(only_request(&backend, "/identified/x").client_cert.is_some());
        let live = HttpClient::new(running.admin_addr.expect("admin listens"))
            .get("/live")
            .await;
        assert_eq!(live.status, StatusCode::OK);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_version_follows_alpn_the_protocol_setting_and_prior_knowledge() {
    guarded(async {
        let ca = TestCa::new("upstream test CA");
        let offers_both = TestBackend::start("offers-both", Wire::tls(ca.server_identity(&["localhost"]), BOTH));
        let h2c = TestBackend::start("h2c", Wire::H2c);
        let both_url = format!("https://localhost:{}", offers_both.addr.port());
        let certs = TestCerts::generate();
        let running = tls_proxy(
            &certs,
            2,
            &upstreams(&[
                ("auto", vec![entry("auto", &both_url, &trusting(&ca, ""))]),
                (
                    "http1",
                    vec![entry(
                        "http1",
                        &both_url,
                        &format!("protocol: http1, {}", trusting(&ca, "")),
                    )],
                ),
                (
                    "h2",
                    vec![entry("h2", &both_url, &format!("protocol: h2, {}", trusting(&ca, "")))],
                ),
                (
                    "h2c",
                    vec![entry("h2c", &format!("http://{}", h2c.addr), "protocol: h2c")],
                ),
            ]),
        )
        .await;
        let client = HttpClient::new(running.fallback_addr);
        for (path, backend, tls, version) in [
            ("/auto/x", &offers_both, true, Version::HTTP_2),
            ("/http1/x", &offers_both, true, Version::HTTP_11),
            ("/h2/x", &offers_both, true, Version::HTTP_2),
            ("/h2c/x", &h2c, false, Version::HTTP_2),
        ] {
            let reply = client.get(path).await;
            assert_eq!(reply.status, StatusCode::OK, "{path}: {}", reply.text());
            assert_eq!(
                reply.header("x-backend-version"),
                Some(format!("{version:?}").as_str()),
                "{path}"
            );
            let seen = only_request(backend, path);
            assert_eq!((seen.tls, seen.version), (tls, version), "{path}");
        }
    })
    .await;
}

/// Requests in flight at once through the proxy, each on its own client connection so that both workers
/// get some.
const CONCURRENT: usize = 50;

/// Sends [`CONCURRENT`] requests for `path` that the backend holds until all have arrived, and returns
/// how many TCP connections the backend had accepted while it held them all.
async fn connections_for_concurrent_requests(running: &Running, backend: &TestBackend, path: &str) -> usize {
    let before = backend.requests_to(path).len();
    let mut tasks = Vec::new();
    for _ in 0..CONCURRENT {
        let addr = running.fallback_addr;
        let path = path.to_owned();
        tasks.push(tokio::spawn(async move {
            let mut connection = Connection::open(addr).await;
            connection.get("multiplex.test", &path, &[]).await
        }));
    }
    // Every request is at the backend at once, so the proxy cannot have sent them one after another.
    wait_for(
        &format!("{CONCURRENT} requests held at {}", backend.name),
        || backend.held() == CONCURRENT,
        || format!("{} held, {} connections", backend.held(), backend.connections()),
    )
    .await;
    let connections = backend.connections();
    backend.release();
    for task in tasks {
        let reply = task.await.expect("request task").expect("request through the proxy");
        assert_eq!(reply.status, StatusCode::OK, "{path}: {}", reply.text());
    }
    let seen = backend.requests_to(path);
    assert_eq!(seen.len() - before, CONCURRENT);
    assert!(
        seen.iter().all(|s| s.version == Version::HTTP_2),
        "{path}: not all over HTTP/2"
    );
    connections
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_share_one_http2_connection_per_worker() {
    guarded(async {
        const WORKERS: usize = 2;
        let ca = TestCa::new("upstream test CA");
        let h2c = TestBackend::start("h2c", Wire::H2c);
        let h2 = TestBackend::start("h2", Wire::tls(ca.server_identity(&["localhost"]), H2_ONLY));
        let alpn = TestBackend::start("alpn", Wire::tls(ca.server_identity(&["localhost"]), BOTH));
        let certs = TestCerts::generate();
        let running = tls_proxy(
            &certs,
            WORKERS,
            &upstreams(&[
                (
                    "h2c",
                    vec![entry("h2c", &format!("http://{}", h2c.addr), "protocol: h2c")],
                ),
                (
                    "h2",
                    vec![entry(
                        "h2",
                        &format!("https://localhost:{}", h2.addr.port()),
                        &format!("protocol: h2, {}", trusting(&ca, "")),
                    )],
                ),
                (
                    "alpn",
                    vec![entry(
                        "alpn",
                        &format!("https://localhost:{}", alpn.addr.port()),
                        &trusting(&ca, ""),
                    )],
                ),
            ]),
        )
        .await;
        let mut used = Vec::new();
        for (backend, path) in [(&h2c, "/h2c/hold"), (&h2, "/h2/hold"), (&alpn, "/alpn/hold")] {
            let connections = connections_for_concurrent_requests(&running, backend, path).await;
            used.push((backend.name.as_str(), connections));
        }
        assert!(
            used.iter().all(|(_, connections)| (1..=WORKERS).contains(connections)),
            "{CONCURRENT} concurrent requests with {WORKERS} workers used these numbers of backend connections: \
             {used:?}"
        );
    })
    .await;
}

fn admin(running: &Running) -> HttpClient {
    HttpClient::new(running.admin_addr.expect("the admin listener runs"))
}

/// `/api/backends`, by backend name (a backend whose URL names a host may be listed per address, as
/// `name@address`; each test's host resolves to one).
async fn api_backends(running: &Running) -> BTreeMap<String, Value> {
    let reply = admin(running).get("/api/backends").await;
    assert_eq!(reply.status, StatusCode::OK);
    let json: Value = serde_json::from_slice(&reply.body).expect("/api/backends is JSON");
    json["backends"]
        .as_array()
        .expect("a backends array")
        .iter()
        .map(|b| {
            let name = b["name"].as_str().unwrap_or_default();
            (name.split('@').next().unwrap_or(name).to_owned(), b.clone())
        })
        .collect()
}

/// How long a backend's health may take to reach the state a test waits for.
const HEALTH_WAIT: Duration = Duration::from_secs(20);

/// Polls `/api/backends` until `ready` holds for it, at most [`HEALTH_WAIT`]; `what` names the state for
/// the failure message.
async fn wait_for_backends(
    running: &Running,
    what: &str,
    ready: impl Fn(&BTreeMap<String, Value>) -> bool,
) -> BTreeMap<String, Value> {
    let deadline = tokio::time::Instant::now() + HEALTH_WAIT;
    loop {
        let backends = api_backends(running).await;
        if ready(&backends) {
            return backends;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "/api/backends did not show {what} within {HEALTH_WAIT:?}: {backends:#?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn state_of<'a>(backends: &'a BTreeMap<String, Value>, name: &str) -> &'a str {
    backends[name]["state"].as_str().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_follow_the_backend_and_a_failing_backend_is_taken_out() {
    guarded(async {
        let ca = TestCa::new("upstream test CA");
        let tls = TestBackend::start("tls", Wire::tls(ca.server_identity(&["localhost"]), HTTP1_ONLY));
        let h2c = TestBackend::start("h2c", Wire::H2c);
        let certs = TestCerts::generate();
        let running = tls_proxy(
            &certs,
            2,
            &format!(
                "upstreams:\n  pool:\n    backends: [{}, {}]\n    health_check: {{interval: 300ms, timeout: 300ms, \
                 unhealthy_threshold: 2, healthy_threshold: 1}}\nroutes:\n  - {{path: \"/*\", upstream: pool}}\n",
                entry(
                    "tls",
                    &format!("https://localhost:{}", tls.addr.port()),
                    &trusting(&ca, "")
                ),
                entry("h2c", &format!("http://{}", h2c.addr), "protocol: h2c"),
            ),
        )
        .await;

        // Two probes each, the second on the connection the first opened or a new one, all through the
        // backend's own protocol.
        wait_for(
            "two probes of each backend",
            || tls.requests_to("/health").len() >= 2 && h2c.requests_to("/health").len() >= 2,
            || format!("tls saw {:?}, h2c saw {:?}", tls.requests(), h2c.requests()),
        )
        .await;
        for probe in tls.requests_to("/health") {
            assert!(probe.tls, "a probe reached the https backend in clear text");
            assert_eq!(probe.sni.as_deref(), Some("localhost"));
            assert_eq!(probe.version, Version::HTTP_11);
            assert_eq!(probe.header("user-agent"), Some("quic-proxy-health"));
        }
        for probe in h2c.requests_to("/health") {
            assert!(!probe.tls);
            assert_eq!(
                probe.version,
                Version::HTTP_2,
                "a probe reached the h2c backend over HTTP/1.1"
            );
            assert_eq!(probe.header("user-agent"), Some("quic-proxy-health"));
        }
        wait_for_backends(&running, "both backends probed and healthy", |b| {
            ["tls", "h2c"]
                .iter()
                .all(|n| state_of(b, n) == "healthy" && b[*n]["last_check"].is_string())
        })
        .await;

        tls.set_health(503);
        wait_for_backends(&running, "tls unhealthy for its 503s, h2c healthy", |b| {
            state_of(b, "tls") == "unhealthy"
                && b["tls"]["last_error"] == "status 503"
                && state_of(b, "h2c") == "healthy"
        })
        .await;
        let client = HttpClient::new(running.fallback_addr);
        let before = tls.requests().len();
        for i in 0..10 {
            let reply = client.get(&format!("/failover/{i}")).await;
            assert_eq!(
                (reply.status, reply.backend()),
                (StatusCode::OK, "h2c"),
                "{}",
                reply.text()
            );
        }
        assert!(
            tls.requests()[before..].iter().all(|r| r.path == "/health"),
            "traffic reached the unhealthy backend"
        );

        tls.set_health(200);
        wait_for_backends(&running, "tls healthy again", |b| state_of(b, "tls") == "healthy").await;
        let mut answered = std::collections::BTreeSet::new();
        for i in 0..10 {
            let reply = client.get(&format!("/back/{i}")).await;
            assert_eq!(reply.status, StatusCode::OK);
            answered.insert(reply.backend().to_owned());
        }
        assert_eq!(
            answered,
            ["h2c".to_owned(), "tls".to_owned()].into(),
            "the recovered backend gets traffic again"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_probes_speak_the_health_checking_protocol_over_h2c_and_h2() {
    guarded(async {
        const SERVICE: &str = "upstream.Test";
        let ca = TestCa::new("upstream test CA");
        let h2c = TestBackend::start("h2c", Wire::H2c);
        let h2 = TestBackend::start("h2", Wire::tls(ca.server_identity(&["localhost"]), BOTH));
        let certs = TestCerts::generate();
        let running = tls_proxy(
            &certs,
            2,
            &format!(
                "upstreams:\n  grpc:\n    backends: [{}, {}]\n    health_check: {{type: grpc, grpc_service: {SERVICE}, \
                 interval: 300ms, timeout: 300ms, unhealthy_threshold: 2, healthy_threshold: 1}}\n\
                 routes:\n  - {{path: \"/*\", upstream: grpc}}\n",
                entry("h2c", &format!("http://{}", h2c.addr), "protocol: h2c"),
                entry("h2", &format!("https://localhost:{}", h2.addr.port()), &trusting(&ca, "")),
            ),
        )
        .await;

        const CHECK: &str = "/grpc.health.v1.Health/Check";
        wait_for(
            "two gRPC probes of each backend",
            || h2c.requests_to(CHECK).len() >= 2 && h2.requests_to(CHECK).len() >= 2,
            || format!("h2c saw {:?}, h2 saw {:?}", h2c.requests(), h2.requests()),
        )
        .await;
        // HealthCheckRequest { service = 1 } in a gRPC frame.
        let mut asked = vec![0u8, 0, 0, 0, SERVICE.len() as u8 + 2, 0x0a, SERVICE.len() as u8];
        asked.extend_from_slice(SERVICE.as_bytes());
        for (backend, tls) in [(&h2c, false), (&h2, true)] {
            for probe in backend.requests_to(CHECK) {
                assert_eq!((probe.tls, probe.version), (tls, Version::HTTP_2), "{}", backend.name);
                assert_eq!(probe.method, http::Method::POST);
                assert_eq!(probe.header("content-type"), Some("application/grpc"));
                assert_eq!(probe.header("te"), Some("trailers"));
                assert_eq!(
                    probe.body_start, asked,
                    "{}: not a HealthCheckRequest for {SERVICE}",
                    backend.name
                );
            }
        }
        wait_for_backends(&running, "both backends probed and healthy", |b| {
            ["h2c", "h2"]
                .iter()
                .all(|n| state_of(b, n) == "healthy" && b[*n]["last_check"].is_string())
        })
        .await;

        h2c.set_health(503);
        wait_for_backends(&running, "h2c unhealthy as NOT_SERVING, h2 healthy", |b| {
            state_of(b, "h2c") == "unhealthy"
                && b["h2c"]["last_error"] == "serving status 2 (not SERVING)"
                && state_of(b, "h2") == "healthy"
        })
        .await;
        let client = HttpClient::new(running.fallback_addr);
        for i in 0..6 {
            let reply = client.get(&format!("/after/{i}")).await;
            assert_eq!(
                (reply.status, reply.backend()),
                (StatusCode::OK, "h2"),
                "{}",
                reply.text()
            );
        }
    })
    .await;
}

/// An 8 MiB body each way, never held whole by the client.
const BULK_BYTES: u64 = 8 * 1024 * 1024;

/// What a `/stream` exchange delivered to the client.
struct Streamed {
    status: StatusCode,
    body_bytes: u64,
    body_sha256: String,
    trailers: Option<HeaderMap>,
}

/// The pattern the backend streams for `seed`, and its digest, computed here independently.
fn expected_sha256(seed: u64, total: u64) -> String {
    let mut hasher = Sha256::new();
    let mut sent = 0;
    while sent < total {
        let size = (total - sent).min(CHUNK as u64);
        hasher.update(pattern_chunk(seed, sent / CHUNK as u64, size as usize));
        sent += size;
    }
    hex(&hasher.finalize())
}

/// A request body of `total` pattern bytes for `seed`, generated as it is sent, ending with `trailer` as
/// `x-client-trailer`.
fn streamed_request_body(seed: u64, total: u64, trailer: &'static str) -> TestBody {
    let frames = futures_util::stream::unfold(Some(0u64), move |sent| async move {
        let sent = sent?;
        if sent < total {
            let size = (total - sent).min(CHUNK as u64);
            let chunk = pattern_chunk(seed, sent / CHUNK as u64, size as usize);
            return Some((Ok::<_, BoxError>(Frame::data(chunk)), Some(sent + size)));
        }
        let mut trailers = HeaderMap::new();
        trailers.insert("x-client-trailer", http::HeaderValue::from_static(trailer));
        Some((Ok(Frame::trailers(trailers)), None))
    });
    StreamBody::new(frames).boxed()
}

/// `/stream` over HTTP/2 to the proxy: the request body and its trailer go up, the response body and its
/// trailers come down, both hashed as they pass.
async fn stream_over_h2(
    sender: &mut SendRequest<TestBody>,
    authority: &str,
    path: &str,
    seed: u64,
    trailer: &'static str,
) -> Streamed {
    let request = Request::post(format!("https://{authority}{path}?bytes={BULK_BYTES}&seed={seed}"))
        .header("te", "trailers")
        .body(streamed_request_body(seed, BULK_BYTES, trailer))
        .expect("request");
    let response = sender
        .send_request(request)
        .await
        .expect("HTTP/2 request through the proxy");
    let status = response.status();
    let mut body = response.into_body();
    let mut hasher = Sha256::new();
    let mut body_bytes = 0;
    let mut trailers = None;
    while let Some(frame) = body.frame().await {
        let frame = frame.expect("HTTP/2 response body");
        match frame.into_data() {
            Ok(data) => {
                body_bytes += data.len() as u64;
                hasher.update(&data);
            }
            Err(frame) => trailers = frame.into_trailers().ok(),
        }
    }
    Streamed {
        status,
        body_bytes,
        body_sha256: hex(&hasher.finalize()),
        trailers,
    }
}

/// `/stream` over HTTP/3 to the proxy, like [`stream_over_h2`].
async fn stream_over_h3(client: &mut H3Client, path: &str, seed: u64, trailer: &'static str) -> Streamed {
    let request = client
        .request("POST", &format!("{path}?bytes={BULK_BYTES}&seed={seed}"))
        .body(())
        .expect("request");
    let mut stream = client.open(request).await.expect("open an HTTP/3 request");
    let mut sent = 0;
    while sent < BULK_BYTES {
        let size = (BULK_BYTES - sent).min(CHUNK as u64);
        stream
            .send_data(pattern_chunk(seed, sent / CHUNK as u64, size as usize))
            .await
            .expect("send request data");
        sent += size;
    }
    let mut trailers = HeaderMap::new();
    trailers.insert("x-client-trailer", http::HeaderValue::from_static(trailer));
    stream.send_trailers(trailers).await.expect("send request trailers");
    stream.finish().await.expect("finish the request stream");
    let response = stream.recv_response().await.expect("HTTP/3 response");
    let mut hasher = Sha256::new();
    let mut body_bytes = 0;
    while let Some(mut chunk) = stream.recv_data().await.expect("HTTP/3 response body") {
        let data = chunk.copy_to_bytes(chunk.remaining());
        body_bytes += data.len() as u64;
        hasher.update(&data);
    }
    Streamed {
        status: response.status(),
        body_bytes,
        body_sha256: hex(&hasher.finalize()),
        trailers: stream.recv_trailers().await.expect("HTTP/3 response trailers"),
    }
}

/// Checks one `/stream` exchange from both ends: what the client got and what `backend` received.
fn assert_streamed(streamed: &Streamed, backend: &TestBackend, path: &str, seed: u64, trailer: &str) {
    assert_eq!(streamed.status, StatusCode::OK, "{path}");
    let expected = expected_sha256(seed, BULK_BYTES);
    assert_eq!(streamed.body_bytes, BULK_BYTES, "{path}: response body length");
    assert_eq!(
        streamed.body_sha256, expected,
        "{path}: response body differs from what the backend sent"
    );
    let trailers = streamed
        .trailers
        .as_ref()
        .unwrap_or_else(|| panic!("{path}: no response trailers"));
    let field = |name: &str| {
        trailers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    assert_eq!(field("x-response-sha256"), expected, "{path}");
    assert_eq!(
        field("x-request-sha256"),
        expected,
        "{path}: request body as the backend hashed it"
    );
    assert_eq!(field("x-request-bytes"), BULK_BYTES.to_string(), "{path}");
    assert_eq!(
        field("x-request-trailer"),
        trailer,
        "{path}: request trailer as the backend saw it"
    );

    let seen = only_request(backend, path);
    assert_eq!(seen.version, Version::HTTP_2, "{path}");
    assert_eq!(
        (seen.body_bytes, seen.body_sha256.as_str()),
        (BULK_BYTES, expected.as_str()),
        "{path}"
    );
    let request_trailers = seen
        .trailers
        .unwrap_or_else(|| panic!("{path}: the backend got no request trailers"));
    assert_eq!(
        request_trailers.get("x-client-trailer").and_then(|v| v.to_str().ok()),
        Some(trailer),
        "{path}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn trailers_and_a_large_streamed_body_cross_h2c_and_h2_backends() {
    guarded_for(BULK_GUARD, async {
        let ca = TestCa::new("upstream test CA");
        let h2c = TestBackend::start("h2c", Wire::H2c);
        let h2 = TestBackend::start("h2", Wire::tls(ca.server_identity(&["localhost"]), H2_ONLY));
        let certs = TestCerts::generate();
        let running = tls_proxy(
            &certs,
            2,
            &upstreams(&[
                (
                    "h2c",
                    vec![entry("h2c", &format!("http://{}", h2c.addr), "protocol: h2c")],
                ),
                (
                    "h2",
                    vec![entry(
                        "h2",
                        &format!("https://localhost:{}", h2.addr.port()),
                        &format!("protocol: h2, {}", trusting(&ca, "")),
                    )],
                ),
            ]),
        )
        .await;

        let (mut sender, authority) = h2_connect(&running, &certs).await;
        for (backend, path, seed, trailer) in [
            (&h2c, "/h2c/h2/stream", 11, "from-an-h2-client-to-h2c"),
            (&h2, "/h2/h2/stream", 12, "from-an-h2-client-to-h2"),
        ] {
            let streamed = stream_over_h2(&mut sender, &authority, path, seed, trailer).await;
            assert_streamed(&streamed, backend, path, seed, trailer);
        }

        let mut client = H3Client::connect(quic_addr(&running), &certs).await;
        for (backend, path, seed, trailer) in [
            (&h2c, "/h2c/h3/stream", 13, "from-an-h3-client-to-h2c"),
            (&h2, "/h2/h3/stream", 14, "from-an-h3-client-to-h2"),
        ] {
            let streamed = stream_over_h3(&mut client, path, seed, trailer).await;
            assert_streamed(&streamed, backend, path, seed, trailer);
        }
        client.close().await;
    })
    .await;
}

// ---------------------------------------------------------------------------------------------------------
// The binary: what the proxy logs about its backends' TLS.
// ---------------------------------------------------------------------------------------------------------

/// A config file for the binary: plain HTTP/1.1 and the admin listener on OS-assigned ports, JSON logs at
/// `info`, and `rest` at top level.
fn process_config(rest: &str) -> (TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("create a temporary directory");
    let path = dir.path().join("proxy.yaml");
    let yaml = format!(
        "server:\n  fallback_address: \"127.0.0.1:0\"\n  drain_timeout: 5s\n  workers: 1\n\
         telemetry:\n  metrics:\n    address: \"127.0.0.1:0\"\n  logging:\n    level: info\n    format: json\n\
         {rest}\n"
    );
    std::fs::write(&path, yaml).expect("write the config");
    (dir, path)
}

fn message(line: &Value) -> &str {
    line["message"].as_str().unwrap_or_default()
}

async fn process_guarded<F: Future>(test: F) -> F::Output {
    guarded_for(PROCESS_GUARD, test).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_failures_are_bad_gateways_and_the_log_names_the_cause() {
    process_guarded(async {
        let ca = TestCa::new("upstream test CA");
        let stranger = TestCa::new("a CA nobody configured");
        let wrong_name = TestBackend::start("wrong-name", Wire::tls(ca.server_identity(&["other.example"]), BOTH));
        let untrusted = TestBackend::start("untrusted", Wire::tls(stranger.server_identity(&["localhost"]), BOTH));
        let http1_only = TestBackend::start("http1-only", Wire::tls(ca.server_identity(&["localhost"]), HTTP1_ONLY));
        let url = |backend: &TestBackend| format!("https://localhost:{}", backend.addr.port());
        let (_dir, config) = process_config(&upstreams(&[
            (
                "wrong-name",
                vec![entry("wrong-name", &url(&wrong_name), &trusting(&ca, ""))],
            ),
            (
                "untrusted",
                vec![entry("untrusted", &url(&untrusted), &trusting(&ca, ""))],
            ),
            (
                "http1-only",
                vec![entry(
                    "http1-only",
                    &url(&http1_only),
                    &format!("protocol: h2, {}", trusting(&ca, "")),
                )],
            ),
        ]));
        let mut proxy = ProxyProcess::start(&config, &[]).await;
        let client = HttpClient::new(proxy.fallback);
        for (backend, cause) in [
            (&wrong_name, "certificate not valid for name \"localhost\""),
            (&untrusted, "UnknownIssuer"),
            (&http1_only, "NoApplicationProtocol"),
        ] {
            let path = format!("/{}/x", backend.name);
            let reply = client.get(&path).await;
            assert_eq!(reply.status, StatusCode::BAD_GATEWAY, "{path}: {}", reply.text());
            let name = backend.name.clone();
            let line = proxy
                .wait_for_log(
                    |l| l["upstream"] == name.as_str() && l["level"] == "WARN",
                    &format!("the warning about {name}"),
                )
                .await;
            let logged = message(&line);
            assert!(
                logged.contains("TLS handshake failed") && logged.contains(cause),
                "{name}: expected the TLS failure ({cause}) in {line}"
            );
            assert!(
                backend.requests().is_empty(),
                "{name} received a request: {:?}",
                backend.requests()
            );
            assert!(
                backend.hellos().iter().all(|h| h.as_deref() == Some("localhost")),
                "{name}: {:?}",
                backend.hellos()
            );
            // The backend records its failure after its alert has gone out: wait for it (the guard bounds it).
            assert!(
                !backend.handshake_errors_at_least(1).await.is_empty(),
                "{name}: no failed handshake at the backend"
            );
        }
        let status = proxy.terminate().await;
        assert_eq!(status.code(), Some(0), "{status}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn insecure_skip_verify_accepts_an_untrusted_certificate_and_warns_at_start_up() {
    process_guarded(async {
        let stranger = TestCa::new("a CA nobody configured");
        let backend = TestBackend::start(
            "unverified",
            Wire::tls(stranger.server_identity(&["other.example"]), BOTH),
        );
        let (_dir, config) = process_config(&upstreams(&[(
            "unverified",
            vec![entry(
                "unverified",
                &format!("https://localhost:{}", backend.addr.port()),
                "tls: {insecure_skip_verify: true}",
            )],
        )]));
        let proxy = ProxyProcess::start(&config, &[]).await;
        let warnings: Vec<Value> = proxy
            .seen
            .iter()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|l| l["level"] == "WARN" && message(l).contains("insecure_skip_verify"))
            .collect();
        assert!(
            !warnings.is_empty(),
            "no start-up warning about insecure_skip_verify; logged:\n{}",
            proxy.seen.join("\n")
        );

        let reply = HttpClient::new(proxy.fallback).get("/unverified/x").await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        assert_eq!(reply.backend(), "unverified");
        let seen = only_request(&backend, "/unverified/x");
        assert!(seen.tls);
        assert_eq!(seen.sni.as_deref(), Some("localhost"));
        let status = proxy.terminate().await;
        assert_eq!(status.code(), Some(0), "{status}");
    })
    .await;
}
