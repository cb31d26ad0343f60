//! The HTTP/1.1 listener end to end: balancing, routing, header rewriting and upstream failures, with
//! real demo backends and a proxy started from a YAML config, all on OS-assigned loopback ports.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use crate::support::*;
use http::StatusCode;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_cycles_through_backends_in_order() {
    guarded(async {
        let running = proxy_with_backends(&["backend1", "backend2", "backend3"], "round_robin").await;
        let client = HttpClient::new(running.fallback_addr);
        let mut answered = Vec::new();
        for _ in 0..9 {
            let reply = client.get("/").await;
            assert_eq!(reply.status, StatusCode::OK);
            answered.push(reply.backend().to_owned());
        }
        let expected: Vec<String> = ["backend1", "backend2", "backend3"]
            .iter()
            .cycle()
            .take(9)
            .map(|s| (*s).to_owned())
            .collect();
        assert_eq!(answered, expected);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn weighted_split_is_exact_over_whole_cycles() {
    guarded(async {
        let names = ["heavy", "light1", "light2"];
        let addrs = start_backends(&names);
        let list = backend_list(&[
            (names[0], addrs[0], 3),
            (names[1], addrs[1], 1),
            (names[2], addrs[2], 1),
        ]);
        let running = start_proxy(&render_config(
            &[],
            &format!("backends: {list}\nload_balancer: {{algorithm: weighted}}"),
        ))
        .await;
        let client = HttpClient::new(running.fallback_addr);
        // Concurrent clients: the split over 100 whole cycles must not depend on request order.
        let workers: Vec<_> = (0..10)
            .map(|_| {
                let client = client.clone();
                tokio::spawn(async move {
                    let mut seen = Vec::new();
                    for _ in 0..50 {
                        let reply = client.get("/").await;
                        assert_eq!(reply.status, StatusCode::OK);
                        seen.push(reply.backend().to_owned());
                    }
                    seen
                })
            })
            .collect();
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        for worker in workers {
            for name in worker.await.expect("worker finished") {
                *counts.entry(name).or_default() += 1;
            }
        }
        let expected: BTreeMap<String, usize> = [("heavy", 300), ("light1", 100), ("light2", 100)]
            .into_iter()
            .map(|(n, c)| (n.to_owned(), c))
            .collect();
        assert_eq!(counts, expected);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn least_connections_avoids_backends_holding_slow_requests() {
    guarded(async {
        let names = ["lc1", "lc2", "lc3", "lc4"];
        let running = proxy_with_backends(&names, "least_connections").await;
        let backends = running.snapshot().upstreams()[0].backends.clone();
        let total_in_flight = {
            let backends = backends.clone();
            move || backends.iter().map(|b| b.in_flight()).sum::<usize>()
        };

        // Slow requests that outlive the test; they are abandoned when the runtime shuts down.
        const SLOW: usize = 3;
        let client = HttpClient::new(running.fallback_addr);
        for _ in 0..SLOW {
            let client = client.clone();
            tokio::spawn(async move { client.get("/?delay_ms=60000").await });
        }
        wait_until(|| total_in_flight() == SLOW).await;
        let busy: BTreeSet<String> = backends
            .iter()
            .filter(|b| b.in_flight() > 0)
            .map(|b| b.name.clone())
            .collect();
        let idle: BTreeSet<String> = backends
            .iter()
            .filter(|b| b.in_flight() == 0)
            .map(|b| b.name.clone())
            .collect();
        assert!(!idle.is_empty(), "more backends than slow requests");

        for _ in 0..8 {
            let reply = client.get("/").await;
            assert_eq!(reply.status, StatusCode::OK);
            assert!(
                idle.contains(reply.backend()),
                "fast request went to {} although it holds a slow request (busy: {busy:?})",
                reply.backend()
            );
            // The response is complete for the client a moment before the proxy drops its in-flight
            // guard; wait for that, or the next pick could see a tie with the busy backends.
            wait_until(|| total_in_flight() == SLOW).await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_by_exact_host_wildcard_host_path_prefix_and_exact_path() {
    guarded(async {
        let names = ["exact-host", "wildcard-host", "api-prefix", "exact-path"];
        let addrs = start_backends(&names);
        // No top-level `backends`, so there is no default upstream: unmatched requests get 404.
        let rest = format!(
            "upstreams:\n  \
               exacthost: {{backends: {}}}\n  \
               wildcard: {{backends: {}}}\n  \
               api: {{backends: {}}}\n  \
               exactpath: {{backends: {}}}\n\
             routes:\n  \
               - {{host: \"app.example.com\", upstream: exacthost}}\n  \
               - {{host: \"*.example.com\", upstream: wildcard}}\n  \
               - {{path: \"/api/*\", upstream: api}}\n  \
               - {{path: \"/status-page\", upstream: exactpath}}",
            equal_backends(&names[0..1], &addrs[0..1]),
            equal_backends(&names[1..2], &addrs[1..2]),
            equal_backends(&names[2..3], &addrs[2..3]),
            equal_backends(&names[3..4], &addrs[3..4]),
        );
        let running = start_proxy(&render_config(&[], &rest)).await;
        let client = HttpClient::new(running.fallback_addr);

        let cases = [
            ("app.example.com", "/anything", "exact-host"),
            ("APP.Example.com:8080", "/api/users", "exact-host"),
            ("foo.example.com", "/", "wildcard-host"),
            ("a.b.example.com", "/api/x", "wildcard-host"),
            // The wildcard needs a label before the domain.
            ("example.com", "/api/users", "api-prefix"),
            ("other.test", "/api", "api-prefix"),
            ("other.test", "/api/v1/items?x=1", "api-prefix"),
            ("other.test", "/status-page", "exact-path"),
        ];
        for (host, path, backend) in cases {
            let reply = client.get_with_host(host, path).await;
            assert_eq!(reply.status, StatusCode::OK, "{host}{path}");
            assert_eq!(reply.backend(), backend, "{host}{path}");
            assert_eq!(reply.seen_header("host"), Some(vec![host.to_owned()]));
        }

        for (host, path) in [
            ("other.test", "/"),
            ("other.test", "/apix"),
            ("other.test", "/status-page/more"),
            ("example.com", "/"),
        ] {
            let reply = client.get_with_host(host, path).await;
            assert_eq!(reply.status, StatusCode::NOT_FOUND, "{host}{path}");
            assert_eq!(reply.header("x-backend"), None);
            assert!(
                reply
                    .header("content-type")
                    .is_some_and(|t| t.starts_with("text/plain")),
                "{:?}",
                reply.headers
            );
            assert!(
                reply.body.len() < 200 && reply.text().starts_with("404"),
                "{:?}",
                reply.text()
            );
        }
    })
    .await;
}

/// Headers a client sends that must not cross the proxy, and the ones that must.
const HOP_BY_HOP_REQUEST: &[(&str, &str)] = &[
    ("connection", "keep-alive, X-Secret"),
    ("keep-alive", "timeout=5"),
    // Removed as hop-by-hop; only `TE: trailers` would be re-added, as the proxy's own.
    ("te", "gzip"),
    // Upgrade without `Connection: upgrade` is not an upgrade request, so it is just a hop-by-hop header.
    ("upgrade", "h2c"),
    ("proxy-connection", "keep-alive"),
    ("x-secret", "1"),
    ("x-forwarded-for", "203.0.113.9"),
    ("x-forwarded-proto", "https"),
    ("x-forwarded-host", "spoofed.test"),
    ("forwarded", "for=203.0.113.9;proto=https"),
    ("x-custom", "kept"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_sees_rewritten_headers() {
    guarded(async {
        let running = proxy_with_backends(&["echo"], "round_robin").await;
        let mut connection = Connection::open(running.fallback_addr).await;
        let reply = connection
            .get("app.example.test:8080", "/inspect", HOP_BY_HOP_REQUEST)
            .await
            .expect("request through the proxy");
        assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
        let json = reply.json();
        let seen = json["headers"].as_object().expect("headers object");

        for name in [
            "connection",
            "keep-alive",
            "te",
            "upgrade",
            "proxy-connection",
            "x-secret",
        ] {
            assert!(
                !seen.contains_key(name),
                "hop-by-hop `{name}` reached the backend: {seen:?}"
            );
        }
        assert_eq!(
            reply.seen_header("host"),
            Some(vec!["app.example.test:8080".to_owned()])
        );
        assert_eq!(reply.seen_header("x-custom"), Some(vec!["kept".to_owned()]));
        assert_eq!(
            reply.seen_header("x-forwarded-for"),
            Some(vec!["127.0.0.1".to_owned()]),
            "an untrusted client's X-Forwarded-For is replaced"
        );
        assert_eq!(
            reply.seen_header("x-forwarded-proto"),
            Some(vec!["http".to_owned()]),
            "an untrusted client's X-Forwarded-Proto is replaced"
        );
        assert!(
            !seen.contains_key("forwarded"),
            "an untrusted client's Forwarded header reached the backend"
        );
        assert_eq!(
            reply.seen_header("x-forwarded-host"),
            Some(vec!["app.example.test:8080".to_owned()])
        );
        let via = reply.seen_header("via").expect("Via reaches the backend");
        assert!(via.len() == 1 && via[0].contains("quic-proxy"), "Via: {via:?}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_named_in_connection_still_reaches_backend() {
    // Host is end to end: a client listing it in Connection must not make the backend see another host
    // than the one the proxy routed on.
    guarded(async {
        let running = proxy_with_backends(&["echo"], "round_robin").await;
        let mut connection = Connection::open(running.fallback_addr).await;
        let reply = connection
            .get("app.example.test", "/", &[("connection", "host")])
            .await
            .expect("request through the proxy");
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.seen_header("host"), Some(vec!["app.example.test".to_owned()]));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absolute_form_target_decides_host_for_routing_and_backend() {
    // RFC 9112 3.2.2: with an absolute-form target the Host field is ignored, and a proxy forwards a Host
    // generated from the target. Routing and the backend must agree on that host.
    guarded(async {
        let names = ["app", "fallback"];
        let addrs = start_backends(&names);
        let rest = format!(
            "backends: {}\nupstreams:\n  app: {{backends: {}}}\n\
             routes:\n  - {{host: \"app.example.com\", upstream: app}}",
            equal_backends(&names[1..2], &addrs[1..2]),
            equal_backends(&names[0..1], &addrs[0..1]),
        );
        let running = start_proxy(&render_config(&[], &rest)).await;
        let exchange = raw_exchange(
            running.fallback_addr,
            b"GET http://app.example.com/x HTTP/1.1\r\nHost: other.test\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert_eq!(exchange.status(), Some(200), "{:?}", exchange.text());
        let json: serde_json::Value = serde_json::from_slice(exchange.body()).expect("the demo backend's JSON");
        assert_eq!(json["backend"], "app", "routed by the target's host");
        assert_eq!(
            json["headers"]["host"],
            serde_json::json!(["app.example.com"]),
            "the backend sees the host the request was routed by"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_response_headers_are_removed() {
    guarded(async {
        let (backend, _received) = start_raw_backend(
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close, X-Internal\r\n\
              X-Internal: secret\r\nKeep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\n\
              X-Public: yes\r\n\r\nok",
        );
        let running = start_proxy(&render_config(
            &[],
            &format!("backends: {}", backend_list(&[("raw", backend, 1)])),
        ))
        .await;
        let mut connection = Connection::open(running.fallback_addr).await;
        let reply = connection
            .get("app.test", "/", &[])
            .await
            .expect("request through the proxy");
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.text(), "ok");
        assert_eq!(reply.header("x-public"), Some("yes"));
        for name in ["x-internal", "keep-alive", "proxy-connection", "connection"] {
            assert_eq!(
                reply.header(name),
                None,
                "`{name}` crossed the proxy: {:?}",
                reply.headers
            );
        }
        // The backend closing its connection does not close the client's.
        let again = connection
            .get("app.test", "/", &[])
            .await
            .expect("the client connection is still usable");
        assert_eq!(again.status, StatusCode::OK);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trusted_proxy_forwarded_for_is_extended() {
    guarded(async {
        let addrs = start_backends(&["echo"]);
        let running = start_proxy(&render_config(
            &[r#"trusted_proxies: ["127.0.0.0/8"]"#],
            &format!("backends: {}", equal_backends(&["echo"], &addrs)),
        ))
        .await;
        let mut connection = Connection::open(running.fallback_addr).await;
        let reply = connection
            .get(
                "app.example.test",
                "/",
                &[("x-forwarded-for", "203.0.113.9, 198.51.100.2")],
            )
            .await
            .expect("request through the proxy");
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(
            reply.seen_header("x-forwarded-for"),
            Some(vec!["203.0.113.9, 198.51.100.2, 127.0.0.1".to_owned()])
        );
    })
    .await;
}

// Upstream failures, each run twice: with the default retries (every attempt fails the same way, as
// there is one backend) and with `retries: 0`. Either way the client must learn what went wrong: 502 for
// a backend that cannot be reached or hangs up, 504 for one that does not answer in time.
const NO_RETRIES: &str = "\n  retries: 0";

/// `backends` with `load_balancer` settings appended (`extra` starts with a newline and indent).
fn single_backend(name: &str, addr: std::net::SocketAddr, extra: &str) -> String {
    format!(
        "backends: {}\nload_balancer:\n  algorithm: round_robin{extra}",
        backend_list(&[(name, addr, 1)])
    )
}

fn assert_short_text_error(reply: &Reply, status: StatusCode) {
    assert_eq!(reply.status, status, "{:?}", reply.body);
    assert!(
        reply
            .header("content-type")
            .is_some_and(|t| t.starts_with("text/plain")),
        "{:?}",
        reply.headers
    );
    assert!(
        reply.body.len() < 200 && reply.text().starts_with(status.as_str()),
        "{:?}",
        reply.text()
    );
}

async fn dead_backend_case(balancer_extra: &str) {
    // The guard is well under the 30 s connect timeout: a refused connection must not wait for it.
    guarded_for(Duration::from_secs(10), async {
        let dead = dead_port_addr();
        let running = start_proxy(&render_config(
            &[],
            &format!(
                "{}\ntimeouts: {{connect: 30s}}",
                single_backend("dead", dead, balancer_extra)
            ),
        ))
        .await;
        let reply = HttpClient::new(running.fallback_addr).get("/").await;
        assert_short_text_error(&reply, StatusCode::BAD_GATEWAY);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_backend_gives_prompt_502() {
    dead_backend_case("").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_backend_gives_prompt_502_without_retries() {
    dead_backend_case(NO_RETRIES).await;
}

async fn hang_up_case(balancer_extra: &str) {
    guarded(async {
        let (backend, mut received) = start_raw_backend(b"");
        let running = start_proxy(&render_config(&[], &single_backend("mute", backend, balancer_extra))).await;
        let reply = HttpClient::new(running.fallback_addr).get("/").await;
        assert_short_text_error(&reply, StatusCode::BAD_GATEWAY);
        let head = received.recv().await.expect("the request reached the backend");
        assert!(head.starts_with("GET / HTTP/1.1\r\n"), "{head:?}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_hanging_up_without_response_gives_502() {
    hang_up_case("").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_hanging_up_without_response_gives_502_without_retries() {
    hang_up_case(NO_RETRIES).await;
}

async fn slow_head_case(balancer_extra: &str) {
    guarded(async {
        let addrs = start_backends(&["slow"]);
        let running = start_proxy(&render_config(
            &[],
            &format!(
                "{}\ntimeouts: {{response_header: 300ms}}",
                single_backend("slow", addrs[0], balancer_extra)
            ),
        ))
        .await;
        let started = Instant::now();
        let reply = HttpClient::new(running.fallback_addr).get("/?delay_ms=5000").await;
        assert_short_text_error(&reply, StatusCode::GATEWAY_TIMEOUT);
        assert!(
            started.elapsed() < Duration::from_millis(4500),
            "504 came after {:?}, so the proxy waited for the backend",
            started.elapsed()
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_response_head_gives_504() {
    slow_head_case("").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_response_head_gives_504_without_retries() {
    slow_head_case(NO_RETRIES).await;
}
