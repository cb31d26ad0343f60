use http::Request;
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;

use super::{Affinity, Observation, Upstream};
use crate::balancer::Backend;
use crate::config::Config;
use crate::discovery::Resolved;
use crate::error::{CircuitLimit, ProxyError};
use crate::health::Source;

/// An upstream of `count` backends `b0`, `b1`, ... on distinct ports, with `balancer` and `passive` as the
/// `load_balancer` and `health_check.passive` sections (YAML flow maps).
fn upstream(count: usize, balancer: &str, passive: &str) -> Arc<Upstream> {
    let backends: Vec<String> = (0..count)
        .map(|i| format!("{{name: b{i}, url: \"http://127.0.0.1:{}\"}}", 9000 + i))
        .collect();
    let yaml = format!(
        "backends: [{}]\nload_balancer: {balancer}\nhealth_check: {{enabled: false, passive: {passive}}}\n",
        backends.join(", ")
    );
    let config = Config::parse(Path::new("routing-test.yaml"), &yaml).unwrap_or_else(|e| panic!("{e}\n{yaml}"));
    let upstream = Upstream::new(&config.upstreams[0], &Resolved::default(), |_| None, &Arc::default(), 1)
        .unwrap_or_else(|(key, message)| panic!("{key}: {message}"));
    upstream.settle();
    Arc::new(upstream)
}

fn parts(headers: &[(&str, &str)], path: &str) -> http::request::Parts {
    let mut request = Request::builder().uri(path);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request
        .body(())
        .map(|r| r.into_parts().0)
        .unwrap_or_else(|e| panic!("{e}"))
}

fn client(last: u8) -> IpAddr {
    IpAddr::from([192, 0, 2, last])
}

fn pick(upstream: &Upstream, affinity: &Affinity) -> String {
    upstream
        .pick(affinity, &[])
        .map(|b| b.name.clone())
        .unwrap_or_else(|e| panic!("no backend: {e}"))
}

/// Ejects `backend` as consecutive failed requests would (the passive threshold is 1 in these tests).
fn eject(upstream: &Upstream, backend: &Arc<Backend>) {
    let status = Ok(http::StatusCode::BAD_GATEWAY);
    let latency = std::time::Duration::ZERO;
    upstream.observe(
        backend,
        Observation::Attempt {
            result: status,
            latency,
        },
    );
    assert!(!backend.health.is_healthy(), "{} not ejected", backend.name);
}

#[test]
fn affinity_keys_come_from_the_configured_part_of_the_request() {
    let by_header = upstream(3, "{algorithm: hash, hash_on: {header: x-user}}", "{}");
    let alice = parts(&[("x-user", "alice")], "/a");
    let key = by_header.affinity(&alice, client(1)).key;
    assert!(key.is_some());
    assert_eq!(
        by_header.affinity(&parts(&[("x-user", "alice")], "/b"), client(2)).key,
        key
    );
    assert_ne!(
        by_header.affinity(&parts(&[("x-user", "bob")], "/a"), client(1)).key,
        key
    );
    assert_eq!(
        by_header.affinity(&parts(&[], "/a"), client(1)).key,
        None,
        "no header, no key"
    );

    let by_cookie = upstream(3, "{algorithm: hash, hash_on: {cookie: session}}", "{}");
    let with = |cookie: &str| by_cookie.affinity(&parts(&[("cookie", cookie)], "/"), client(1)).key;
    assert_eq!(with("a=1; session=xyz; b=2"), with("session=xyz"));
    assert_ne!(with("session=xyz"), with("session=xyz2"));
    assert_eq!(with("sessions=xyz"), None, "another cookie's name is no match");

    let by_client = upstream(3, "{algorithm: hash, hash_on: client_address}", "{}");
    let of = |ip| by_client.affinity(&parts(&[], "/"), ip).key;
    assert_eq!(of(client(1)), of(client(1)));
    assert_ne!(of(client(1)), of(client(2)));

    let by_path = upstream(3, "{algorithm: hash, hash_on: path}", "{}");
    let of = |path| by_path.affinity(&parts(&[], path), client(1)).key;
    assert_eq!(of("/a?x=1"), of("/a?y=2"), "the query is not part of the key");
    assert_ne!(of("/a"), of("/b"));
}

#[test]
fn hashing_keeps_keys_on_their_backend_and_moves_only_a_refused_backends_keys() {
    let upstream = upstream(5, "{algorithm: hash, hash_on: path}", "{unhealthy_threshold: 1}");
    let keys: Vec<Affinity> = (0..500)
        .map(|n| upstream.affinity(&parts(&[], &format!("/item/{n}")), client(1)))
        .collect();
    let before: Vec<String> = keys.iter().map(|k| pick(&upstream, k)).collect();
    assert_eq!(
        before,
        keys.iter().map(|k| pick(&upstream, k)).collect::<Vec<_>>(),
        "stable"
    );
    let used: BTreeSet<&String> = before.iter().collect();
    assert_eq!(used.len(), 5, "500 keys spread over every backend");

    upstream.backends[2].set_drained(true);
    let after: Vec<String> = keys.iter().map(|k| pick(&upstream, k)).collect();
    for (was, now) in before.iter().zip(&after) {
        if was == "b2" {
            assert_ne!(now, "b2");
        } else {
            assert_eq!(was, now, "a key not on the drained backend moved");
        }
    }
    upstream.backends[2].set_drained(false);
    assert_eq!(
        before,
        keys.iter().map(|k| pick(&upstream, k)).collect::<Vec<_>>(),
        "back home"
    );
}

#[test]
fn a_sticky_cookie_names_its_backend_opaquely_and_leads_back_to_it() {
    let upstream = upstream(
        3,
        "{algorithm: round_robin, sticky_cookie: {name: qp, max_age: 1h}}",
        "{}",
    );
    let fresh = upstream.affinity(&parts(&[], "/"), client(1));
    let backend = upstream.pick(&fresh, &[]).unwrap_or_else(|e| panic!("{e}"));
    let cookie = upstream
        .sticky_cookie(&backend, &fresh, true)
        .unwrap_or_else(|| panic!("a new client gets a cookie"));
    let text = cookie.to_str().unwrap_or_default().to_owned();
    assert!(
        text.ends_with("; Path=/; HttpOnly; SameSite=Lax; Max-Age=3600; Secure"),
        "{text}"
    );
    assert!(!text.contains(&backend.name) && !text.contains("127.0.0.1"), "{text}");
    let pair = text.split(';').next().unwrap_or_default().to_owned();

    let returning = upstream.affinity(&parts(&[("cookie", &pair)], "/"), client(1));
    for _ in 0..30 {
        assert_eq!(pick(&upstream, &returning), backend.name, "round robin would move on");
    }
    assert!(
        upstream.sticky_cookie(&backend, &returning, true).is_none(),
        "already set"
    );

    backend.set_drained(true);
    let elsewhere = upstream.pick(&returning, &[]).unwrap_or_else(|e| panic!("{e}"));
    assert_ne!(elsewhere.name, backend.name);
    let moved = upstream
        .sticky_cookie(&elsewhere, &returning, false)
        .map(|v| v.to_str().unwrap_or_default().to_owned());
    assert!(
        moved.is_some_and(|c| !c.contains("Secure")),
        "a new cookie, without Secure over clear text"
    );

    let garbage = upstream.affinity(&parts(&[("cookie", "qp=not-hex")], "/"), client(1));
    assert_eq!(garbage.sticky, None);
    assert!(upstream.pick(&garbage, &[]).is_ok());
}

// Ejections by traffic without probes are timed: they start a timer task, hence a runtime.
#[tokio::test]
async fn below_the_panic_threshold_every_backend_takes_traffic() {
    let spread = |min_healthy: u8| {
        let upstream = upstream(
            4,
            &format!("{{algorithm: round_robin, min_healthy_percent: {min_healthy}}}"),
            "{unhealthy_threshold: 1, max_ejection_percent: 100}",
        );
        for backend in &upstream.backends[1..] {
            eject(&upstream, backend);
        }
        let mut seen = BTreeMap::<String, usize>::new();
        for _ in 0..40 {
            *seen.entry(pick(&upstream, &Affinity::default())).or_default() += 1;
        }
        seen
    };
    assert_eq!(
        spread(0).keys().collect::<Vec<_>>(),
        ["b0"],
        "1 of 4 healthy, no panic threshold"
    );
    assert_eq!(
        spread(25).keys().collect::<Vec<_>>(),
        ["b0"],
        "25% healthy is not below 25%"
    );
    assert_eq!(spread(50).len(), 4, "25% healthy is below 50%: all four take traffic");
}

#[test]
fn a_full_backend_is_skipped_and_when_all_are_full_the_refusal_names_the_limit() {
    let upstream = upstream(2, "{algorithm: round_robin, circuit_breaker: {max_requests: 1}}", "{}");
    let first = upstream
        .begin(&upstream.backends[0], None)
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(upstream.backends[0].circuit_open());
    for _ in 0..10 {
        assert_eq!(pick(&upstream, &Affinity::default()), "b1", "b0 is full");
    }
    assert!(
        matches!(
            upstream.begin(&upstream.backends[0], None),
            Err(ProxyError::CircuitOpen {
                limit: CircuitLimit::MaxRequests,
                ..
            })
        ),
        "a second request on b0"
    );
    let second = upstream
        .begin(&upstream.backends[1], None)
        .unwrap_or_else(|e| panic!("{e}"));
    match upstream.pick(&Affinity::default(), &[]) {
        Err(ProxyError::CircuitOpen { limit, .. }) => assert_eq!(limit, CircuitLimit::MaxRequests),
        other => panic!("expected a circuit breaker refusal, got {other:?}"),
    }
    assert!(
        upstream.backends.iter().all(|b| b.health.is_healthy()),
        "overload is no failure"
    );
    drop((first, second));
    assert_eq!(upstream.backends.iter().map(|b| b.in_flight()).sum::<usize>(), 0);
    assert!(upstream.pick(&Affinity::default(), &[]).is_ok());
}

#[tokio::test]
async fn ejections_stop_at_max_ejection_percent_but_one_is_always_allowed() {
    let upstream = upstream(4, "{}", "{unhealthy_threshold: 1, max_ejection_percent: 50}");
    for backend in &upstream.backends {
        let status = Ok(http::StatusCode::BAD_GATEWAY);
        let latency = std::time::Duration::ZERO;
        upstream.observe(
            backend,
            Observation::Attempt {
                result: status,
                latency,
            },
        );
    }
    let out = upstream.backends.iter().filter(|b| !b.health.is_healthy()).count();
    assert_eq!(out, 2, "half of 4");
    let ejected: Vec<Option<Source>> = upstream.backends.iter().map(|b| b.health.ejected_by()).collect();
    assert_eq!(ejected.iter().filter(|e| **e == Some(Source::Traffic)).count(), 2);

    let pair = self::upstream(2, "{}", "{unhealthy_threshold: 1, max_ejection_percent: 10}");
    eject(&pair, &pair.backends[0]);
    let status = Ok(http::StatusCode::BAD_GATEWAY);
    let latency = std::time::Duration::ZERO;
    pair.observe(
        &pair.backends[1],
        Observation::Attempt {
            result: status,
            latency,
        },
    );
    assert!(
        pair.backends[1].health.is_healthy(),
        "10% of 2 allows the first ejection only"
    );
}

#[test]
fn a_request_guard_counts_while_alive_on_any_thread_or_task() {
    let upstream = upstream(1, "{}", "{}");
    let backend = &upstream.backends[0];
    let guard = upstream.begin(backend, None).unwrap_or_else(|e| panic!("{e}"));
    let second = upstream.begin(backend, None).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(backend.in_flight(), 2);
    assert!(Arc::ptr_eq(guard.backend(), backend));
    drop(guard);
    assert_eq!(backend.in_flight(), 1);
    std::thread::spawn(move || drop(second))
        .join()
        .unwrap_or_else(|_| panic!("thread"));
    assert_eq!(backend.in_flight(), 0);

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    runtime.block_on(async {
        // A request cancelled mid-flight (client gone) must not leak its count.
        let held = upstream.begin(backend, None).unwrap_or_else(|e| panic!("{e}"));
        let task = tokio::spawn(async move {
            let _held = held;
            std::future::pending::<()>().await;
        });
        assert_eq!(backend.in_flight(), 1);
        task.abort();
        assert!(task.await.is_err_and(|e| e.is_cancelled()));
        assert_eq!(backend.in_flight(), 0);
    });
}

#[test]
fn names_resolved_by_dns_become_one_endpoint_per_address() {
    let yaml = "backends:\n  - {name: api, url: \"http://api.svc.test:8080\"}\n  - {name: fixed, url: \"http://127.0.0.1:9\"}\n";
    let config = Config::parse(Path::new("routing-test.yaml"), yaml).unwrap_or_else(|e| panic!("{e}"));
    let addresses: Vec<SocketAddr> = ["10.0.0.5:8080", "10.0.0.6:8080"]
        .iter()
        .filter_map(|a| a.parse().ok())
        .collect();
    let mut resolved = Resolved::default();
    resolved.insert(("api.svc.test".to_owned(), 8080), addresses);
    let upstream = Upstream::new(&config.upstreams[0], &resolved, |_| None, &Arc::default(), 1)
        .unwrap_or_else(|(key, message)| panic!("{key}: {message}"));
    let names: Vec<&str> = upstream.backends.iter().map(|b| b.name.as_str()).collect();
    assert_eq!(names, ["api@10.0.0.5:8080", "api@10.0.0.6:8080", "fixed"]);
    assert!(
        upstream
            .backends
            .iter()
            .all(|b| b.authority.as_str() != "10.0.0.5:8080"),
        "Host stays the name"
    );

    let unresolved = Upstream::new(&config.upstreams[0], &Resolved::default(), |_| None, &Arc::default(), 1)
        .unwrap_or_else(|(key, message)| panic!("{key}: {message}"));
    assert_eq!(
        unresolved.backends.len(),
        2,
        "not resolved yet: the system resolves at connect"
    );
    let mut empty = Resolved::default();
    empty.insert(("api.svc.test".to_owned(), 8080), Vec::new());
    let none = Upstream::new(&config.upstreams[0], &empty, |_| None, &Arc::default(), 1)
        .unwrap_or_else(|(key, message)| panic!("{key}: {message}"));
    assert_eq!(none.backends.len(), 1, "a name without addresses has no endpoints");
}
