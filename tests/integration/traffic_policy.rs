//! Traffic policy end to end: p2c and random balancing, consistent hashing and the sticky cookie, outlier
//! ejection by failure rate and latency within `max_ejection_percent`, the panic threshold, circuit
//! breaking, retries on statuses and the retry budget, and client faults kept off a backend's record.
//!
//! The proxy runs in-process on loopback ports chosen by the OS, in front of backends whose failures,
//! latency, health and held requests the tests set at run time and which count what they receive. Tests
//! wait for state with bounded polls; the only fixed waits are observation periods that prove something
//! did not happen, and no assertion is about how long anything took. Every upstream has a name of its own,
//! because metrics are process-wide.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use crate::support::http3::{quic_addr, start_tls_proxy, H3Client, TestCerts};
use crate::support::policy::*;
use crate::support::*;
use http::{Method, StatusCode};
use quic_proxy::app::Running;
use serde_json::Value;
use tokio::io::AsyncWriteExt as _;
use tokio::net::TcpStream;

/// The admin token every config here carries (drain and undrain need it).
const TOKEN: &str = "traffic-policy-admin-token";

/// The longest a test waits for a state it caused (an ejection, a probe verdict, a reactivation).
const STATE_WAIT: Duration = Duration::from_secs(20);

/// One upstream of the `upstreams` section, with flow-style YAML for each part.
fn upstream(name: &str, backends: &str, health_check: &str, load_balancer: &str) -> String {
    format!(
        "  {name}:\n    backends: {backends}\n    health_check: {health_check}\n    load_balancer: {load_balancer}\n"
    )
}

/// `upstreams` (from [`upstream`]) and `routes` as `(path, upstream)` pairs, with the admin token.
fn routed(upstreams: &[String], routes: &[(&str, &str)]) -> String {
    let mut yaml = format!("admin: {{token: {TOKEN}}}\nupstreams:\n");
    for block in upstreams {
        yaml.push_str(block);
    }
    yaml.push_str("routes:\n");
    for (path, upstream) in routes {
        yaml.push_str(&format!("  - {{path: \"{path}\", upstream: {upstream}}}\n"));
    }
    yaml
}

/// One upstream that every request is routed to.
fn single(name: &str, backends: &str, health_check: &str, load_balancer: &str) -> String {
    routed(
        &[upstream(name, backends, health_check, load_balancer)],
        &[("/*", name)],
    )
}

/// A proxy for `rest` with `server_extra` lines, its admin API and a client of its HTTP/1.1 listener.
async fn start(server_extra: &[&str], rest: &str) -> (Running, Admin, HttpClient) {
    let running = start_proxy(&render_config(server_extra, rest)).await;
    let admin = Admin::new(running.admin_addr, TOKEN);
    let client = HttpClient::new(running.fallback_addr);
    (running, admin, client)
}

async fn send_get(client: &HttpClient, path: &str, headers: &[(&str, &str)]) -> Reply {
    let mut request = client.request("GET", path);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    client.send(request.body(empty()).expect("request")).await
}

/// `count` GETs of `path` one after another, each answered 200.
async fn get_ok(client: &HttpClient, path: &str, count: usize) -> Vec<Reply> {
    let mut replies = Vec::with_capacity(count);
    for _ in 0..count {
        let reply = client.get(path).await;
        assert_eq!(reply.status, StatusCode::OK, "GET {path}: {}", reply.text());
        replies.push(reply);
    }
    replies
}

/// A metric's samples for `upstream` (and the other `labels`), summed.
fn metric(text: &str, name: &str, upstream: &str, labels: &[(&str, &str)]) -> f64 {
    let mut all = vec![("upstream", upstream)];
    all.extend_from_slice(labels);
    sample_sum(text, name, &all)
}

/// A GET sent in the background, for requests a backend holds.
fn spawn_get(client: &HttpClient, path: &str) -> tokio::task::JoinHandle<Reply> {
    let (client, path) = (client.clone(), path.to_owned());
    tokio::spawn(async move { client.get(&path).await })
}

// ---------------------------------------------------------------------------------------------------------
// p2c and random

/// 600 GETs through `algorithm` over backends weighted 1, 2 and 3: how many each answered.
async fn shares_under(algorithm: &str) -> BTreeMap<String, usize> {
    let backends = ["w1", "w2", "w3"].map(PolicyBackend::start);
    let list = format!(
        "[{}, {}, {}]",
        backends[0].entry(1),
        backends[1].entry(2),
        backends[2].entry(3)
    );
    let name = format!("shares-{algorithm}");
    let (_running, _admin, client) = start(
        &[],
        &single(&name, &list, "{enabled: false}", &format!("{{algorithm: {algorithm}}}")),
    )
    .await;
    tally(&get_ok(&client, "/", 600).await)
}

/// Each backend's share is within 40% (relative) of its weight's share of 600.
fn assert_weighted(algorithm: &str, shares: &BTreeMap<String, usize>) {
    for (name, weight) in [("w1", 1.0), ("w2", 2.0), ("w3", 3.0)] {
        let expected = 600.0 * weight / 6.0;
        let got = shares.get(name).copied().unwrap_or(0) as f64;
        assert!(
            (expected * 0.6..=expected * 1.4).contains(&got),
            "{algorithm}: {name} (weight {weight}) answered {got} of 600, expected about {expected}; all: {shares:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_shares_follow_weights() {
    guarded(async {
        let shares = shares_under("random").await;
        assert_weighted("random", &shares);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p2c_shares_follow_weights() {
    guarded(async {
        let shares = shares_under("p2c").await;
        assert_weighted("p2c", &shares);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p2c_steers_away_from_a_backend_holding_slow_requests() {
    guarded(async {
        let backends = ["p2c-busy", "p2c-b", "p2c-c"].map(PolicyBackend::start);
        let [busy, b, c] = &backends;
        for backend in &backends {
            backend.hold();
        }
        let (_running, _admin, client) = start(
            &[],
            &single(
                "p2c-steer",
                &backend_entries(&[busy, b, c]),
                "{enabled: false}",
                "{algorithm: p2c}",
            ),
        )
        .await;

        // Every backend holds its share of 24 slow requests; then two of them answer theirs, and only the
        // busy one still has requests in flight.
        const SLOW: usize = 24;
        let slow: Vec<_> = (0..SLOW).map(|_| spawn_get(&client, "/slow/hold")).collect();
        wait_until(|| busy.held() + b.held() + c.held() == SLOW).await;
        let still_held = busy.held();
        assert!(
            still_held >= 3,
            "p2c gave the busy backend {still_held} of {SLOW} concurrent requests"
        );
        b.release();
        c.release();
        // Their requests are over for the proxy too once the clients have the whole answers.
        wait_until(|| slow.iter().filter(|t| t.is_finished()).count() == SLOW - still_held).await;

        let replies = get_ok(&client, "/fast", 60).await;
        let shares = tally(&replies);
        assert_eq!(
            busy.count_under("/fast"),
            0,
            "p2c picked the backend with {still_held} requests in flight over idle ones: {shares:?}"
        );
        assert!(
            shares.contains_key("p2c-b") && shares.contains_key("p2c-c"),
            "{shares:?}"
        );

        busy.release();
        for task in slow {
            assert_eq!(task.await.expect("request task").status, StatusCode::OK);
        }
    })
    .await;
}

// ---------------------------------------------------------------------------------------------------------
// Consistent hashing

/// What a hashed request is keyed on.
#[derive(Debug, Clone, Copy)]
enum Key {
    Header,
    Cookie,
    Path,
    ClientAddress,
}

impl Key {
    fn hash_on(self) -> &'static str {
        match self {
            Key::Header => "{header: x-user}",
            Key::Cookie => "{cookie: session}",
            Key::Path => "path",
            Key::ClientAddress => "client_address",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Key::Header => "header",
            Key::Cookie => "cookie",
            Key::Path => "path",
            Key::ClientAddress => "address",
        }
    }
}

/// The backend that answers a request with key number `key`. `variant` changes what is not part of the
/// key (other cookies, the query, the path when the key is elsewhere), which must not matter.
async fn owner_of(client: &HttpClient, proxy: SocketAddr, on: Key, key: usize, variant: usize) -> String {
    let other = format!("/other/{variant}?v={variant}");
    let reply = match on {
        Key::Header => send_get(client, &other, &[("x-user", &format!("user-{key}"))]).await,
        Key::Cookie => {
            let cookies = match variant % 3 {
                0 => format!("session=s-{key}"),
                1 => format!("theme=dark; session=s-{key}"),
                _ => format!("session=s-{key}; lang=en-{variant}"),
            };
            send_get(client, &other, &[("cookie", &cookies)]).await
        }
        Key::Path => client.get(&format!("/items/{key}?v={variant}")).await,
        Key::ClientAddress => {
            let source = IpAddr::V4(Ipv4Addr::new(127, 0, 1, u8::try_from(key + 2).expect("few keys")));
            get_from(source, proxy, &other).await
        }
    };
    assert_eq!(reply.status, StatusCode::OK, "key {key}: {}", reply.text());
    reply.backend().to_owned()
}

/// The owner of every key in `keys`, asked once.
async fn owners(client: &HttpClient, proxy: SocketAddr, on: Key, keys: usize) -> BTreeMap<usize, String> {
    let mut owners = BTreeMap::new();
    for key in 0..keys {
        owners.insert(key, owner_of(client, proxy, on, key, 0).await);
    }
    owners
}

/// Same key, same backend; keys spread over all backends; draining one moves only its keys, and
/// undraining brings them back.
async fn hash_affinity(on: Key) {
    const KEYS: usize = 45;
    let backends = ["alpha", "beta", "gamma"].map(PolicyBackend::start);
    let name = format!("hash-{}", on.label());
    let (running, admin, client) = start(
        &[],
        &single(
            &name,
            &backend_entries(&[&backends[0], &backends[1], &backends[2]]),
            "{enabled: false}",
            &format!("{{algorithm: hash, hash_on: {}}}", on.hash_on()),
        ),
    )
    .await;
    let proxy = running.fallback_addr;

    let mut before = BTreeMap::new();
    for key in 0..KEYS {
        let first = owner_of(&client, proxy, on, key, 0).await;
        for variant in 1..4 {
            let again = owner_of(&client, proxy, on, key, variant).await;
            assert_eq!(
                again, first,
                "{on:?}: key {key} moved from {first} to {again} (variant {variant})"
            );
        }
        before.insert(key, first);
    }
    let mut per_backend: BTreeMap<&str, usize> = BTreeMap::new();
    for owner in before.values() {
        *per_backend.entry(owner.as_str()).or_insert(0) += 1;
    }
    assert_eq!(
        per_backend.len(),
        3,
        "{on:?}: {KEYS} keys did not reach every backend: {per_backend:?}"
    );

    let (&drained, _) = per_backend.iter().max_by_key(|(_, keys)| **keys).expect("a backend");
    admin.set_drained(&name, drained, true).await;
    let during = owners(&client, proxy, on, KEYS).await;
    for key in 0..KEYS {
        if before[&key] == drained {
            assert_ne!(
                during[&key], drained,
                "{on:?}: key {key} still goes to drained {drained}"
            );
        } else {
            assert_eq!(
                during[&key], before[&key],
                "{on:?}: key {key} moved from {} to {} though only {drained} was drained",
                before[&key], during[&key]
            );
        }
    }

    admin.set_drained(&name, drained, false).await;
    let after = owners(&client, proxy, on, KEYS).await;
    assert_eq!(
        after, before,
        "{on:?}: undraining {drained} did not give every key its backend back"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hash_on_a_header_keeps_keys_on_their_backend() {
    guarded(hash_affinity(Key::Header)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hash_on_a_cookie_keeps_keys_on_their_backend() {
    guarded(hash_affinity(Key::Cookie)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hash_on_the_path_keeps_keys_on_their_backend() {
    guarded(hash_affinity(Key::Path)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hash_on_the_client_address_keeps_clients_on_their_backend() {
    guarded(hash_affinity(Key::ClientAddress)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hash_shares_follow_weights() {
    guarded(async {
        let (light, heavy) = (PolicyBackend::start("light"), PolicyBackend::start("heavy"));
        let list = format!("[{}, {}]", light.entry(1), heavy.entry(3));
        let (running, _admin, client) = start(
            &[],
            &single(
                "hash-weights",
                &list,
                "{enabled: false}",
                "{algorithm: hash, hash_on: path}",
            ),
        )
        .await;
        let owners = owners(&client, running.fallback_addr, Key::Path, 400).await;
        let heavy_keys = owners.values().filter(|o| *o == "heavy").count();
        assert!(
            (240..=360).contains(&heavy_keys),
            "the backend with 3/4 of the weight owns {heavy_keys} of 400 keys"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_removes_one_of_four_backends_moves_about_a_quarter_of_the_keys() {
    guarded(async {
        const KEYS: usize = 200;
        let backends = ["ring-a", "ring-b", "ring-c", "ring-d"].map(PolicyBackend::start);
        let yaml = |with_d: bool| {
            let kept: Vec<&PolicyBackend> = backends.iter().filter(|b| with_d || b.name != "ring-d").collect();
            render_config(
                &[],
                &single(
                    "hash-reload",
                    &backend_entries(&kept),
                    "{enabled: false}",
                    "{algorithm: hash, hash_on: {header: x-user}}",
                ),
            )
        };
        let dir = tempfile::tempdir().expect("a temporary directory");
        let path = dir.path().join("proxy.yaml");
        std::fs::write(&path, yaml(true)).expect("write the config");
        let running = start_proxy_from_file(&path).await;
        let client = HttpClient::new(running.fallback_addr);

        let before = owners(&client, running.fallback_addr, Key::Header, KEYS).await;
        let on_d = before.values().filter(|o| *o == "ring-d").count();
        assert!(on_d > 0, "no key on ring-d: {before:?}");

        std::fs::write(&path, yaml(false)).expect("rewrite the config");
        running
            .shared()
            .reload_from_file()
            .await
            .unwrap_or_else(|e| panic!("reload_from_file failed: {e}"));
        let after = owners(&client, running.fallback_addr, Key::Header, KEYS).await;
        assert!(
            after.values().all(|o| o != "ring-d"),
            "a key still goes to the removed backend"
        );
        let moved = (0..KEYS).filter(|k| before[k] != after[k]).count();
        let bound = KEYS * 35 / 100;
        assert!(
            moved <= bound,
            "removing 1 of 4 backends moved {moved} of {KEYS} keys ({on_d} were on it); at most {bound} may move"
        );
        assert!(running.shutdown().await);
    })
    .await;
}

// ---------------------------------------------------------------------------------------------------------
// Sticky cookie

/// A `Set-Cookie` value split into its `name`, value and attributes.
fn parse_set_cookie(value: &str) -> (String, String, Vec<String>) {
    let mut parts = value.split(';').map(str::trim);
    let pair = parts.next().unwrap_or_default();
    let (name, token) = pair
        .split_once('=')
        .unwrap_or_else(|| panic!("no name=value in {value:?}"));
    (name.to_owned(), token.to_owned(), parts.map(str::to_owned).collect())
}

/// The value of the only `Set-Cookie` of `reply`, which must be the cookie `name`.
fn sticky_token(reply: &Reply, name: &str) -> String {
    let cookies: Vec<&str> = reply
        .headers
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().expect("ASCII"))
        .collect();
    assert_eq!(cookies.len(), 1, "expected one Set-Cookie, got {cookies:?}");
    let (cookie_name, token, _) = parse_set_cookie(cookies[0]);
    assert_eq!(cookie_name, name, "{cookies:?}");
    assert!(!token.is_empty(), "{cookies:?}");
    token
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sticky_cookie_keeps_a_client_on_its_backend_until_it_is_drained() {
    guarded(async {
        let backends = ["st-a", "st-b", "st-c"].map(PolicyBackend::start);
        let list = backend_entries(&[&backends[0], &backends[1], &backends[2]]);
        let yaml = routed(
            &[
                upstream(
                    "sticky",
                    &list,
                    "{enabled: false}",
                    "{algorithm: round_robin, sticky_cookie: {name: qp, max_age: 1h, path: /}}",
                ),
                upstream(
                    "sticky-session",
                    &list,
                    "{enabled: false}",
                    "{algorithm: round_robin, sticky_cookie: {name: qs, path: /session}}",
                ),
            ],
            &[("/session/*", "sticky-session"), ("/*", "sticky")],
        );
        let (_running, admin, client) = start(&[], &yaml).await;

        let first = client.get("/").await;
        assert_eq!(first.status, StatusCode::OK);
        let set_cookie = first
            .header("set-cookie")
            .expect("a Set-Cookie on the first answer")
            .to_owned();
        let (name, token, attributes) = parse_set_cookie(&set_cookie);
        assert_eq!(name, "qp");
        assert_eq!(
            attributes,
            ["Path=/", "HttpOnly", "SameSite=Lax", "Max-Age=3600"],
            "{set_cookie:?} (no Secure in clear text)"
        );
        let home = first.backend().to_owned();

        // Round robin would spread these; the cookie holds them on one backend and is not set again.
        let cookie = format!("qp={token}");
        for n in 0..100 {
            let reply = send_get(&client, "/", &[("cookie", &cookie)]).await;
            assert_eq!(
                (reply.status, reply.backend()),
                (StatusCode::OK, home.as_str()),
                "request {n} with the cookie"
            );
            assert_eq!(
                reply.header("set-cookie"),
                None,
                "request {n}: the cookie already names {home}"
            );
        }
        let without = tally(&get_ok(&client, "/", 6).await);
        assert_eq!(
            without.len(),
            3,
            "without the cookie, round robin uses every backend: {without:?}"
        );

        // Drained: the request goes elsewhere and the client is given a cookie for its new backend.
        admin.set_drained("sticky", &home, true).await;
        let moved = send_get(&client, "/", &[("cookie", &cookie)]).await;
        assert_eq!(moved.status, StatusCode::OK);
        assert_ne!(moved.backend(), home, "a drained backend kept its sticky client");
        let new_token = sticky_token(&moved, "qp");
        assert_ne!(new_token, token);
        let new_home = moved.backend().to_owned();
        for _ in 0..10 {
            let reply = send_get(&client, "/", &[("cookie", &format!("qp={new_token}"))]).await;
            assert_eq!((reply.status, reply.backend()), (StatusCode::OK, new_home.as_str()));
        }
        admin.set_drained("sticky", &home, false).await;
        let back = send_get(&client, "/", &[("cookie", &cookie)]).await;
        assert_eq!(
            (back.status, back.backend()),
            (StatusCode::OK, home.as_str()),
            "undrained: the old cookie holds again"
        );

        // A value that names no backend is ignored: the request is balanced and gets a fresh cookie.
        for garbage in ["qp=not-a-backend", "qp=", "qp=ffffffffffffffff", "qp=%00%ff; other=1"] {
            let reply = send_get(&client, "/", &[("cookie", garbage)]).await;
            assert_eq!(reply.status, StatusCode::OK, "{garbage}: {}", reply.text());
            let fresh = sticky_token(&reply, "qp");
            let again = send_get(&client, "/", &[("cookie", &format!("qp={fresh}"))]).await;
            assert_eq!(
                again.backend(),
                reply.backend(),
                "the fresh cookie after {garbage:?} holds"
            );
        }

        // Without max_age the cookie lasts the browser session; the path is the configured one.
        let session = client.get("/session/x").await;
        assert_eq!(session.status, StatusCode::OK);
        let (name, _, attributes) = parse_set_cookie(session.header("set-cookie").expect("a Set-Cookie"));
        assert_eq!(name, "qs");
        assert_eq!(attributes, ["Path=/session", "HttpOnly", "SameSite=Lax"]);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sticky_cookie_is_secure_over_http3() {
    guarded(async {
        let backends = ["sh-a", "sh-b", "sh-c"].map(PolicyBackend::start);
        let certs = TestCerts::generate();
        let rest = single(
            "sticky-h3",
            &backend_entries(&[&backends[0], &backends[1], &backends[2]]),
            "{enabled: false}",
            "{algorithm: round_robin, sticky_cookie: {name: qp}}",
        );
        let running = start_tls_proxy(&render_config(&[&certs.server_line()], &rest)).await;
        let mut client = H3Client::connect(quic_addr(&running), &certs).await;

        let first = client.get("/").await.expect("HTTP/3 request");
        assert_eq!(first.status, StatusCode::OK);
        let set_cookie = first.header("set-cookie").expect("a Set-Cookie").to_owned();
        let (name, token, attributes) = parse_set_cookie(&set_cookie);
        assert_eq!(name, "qp");
        assert_eq!(attributes, ["Path=/", "HttpOnly", "SameSite=Lax", "Secure"]);
        let home = first.backend().to_owned();
        for _ in 0..20 {
            let request = client
                .request("GET", "/")
                .header("cookie", format!("qp={token}"))
                .body(())
                .expect("request");
            let reply = client.send(request, []).await.expect("HTTP/3 request");
            assert_eq!((reply.status, reply.backend()), (StatusCode::OK, home.as_str()));
        }
        client.close().await;
    })
    .await;
}

// ---------------------------------------------------------------------------------------------------------
// Outlier detection

/// The `/api/backends` entries of `upstream` whose state is `state`, by name.
async fn in_state(admin: &Admin, upstream: &str, state: &str) -> BTreeSet<String> {
    admin
        .upstream(upstream)
        .await
        .iter()
        .filter(|b| b["state"] == state)
        .map(|b| b["name"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// Sends GETs of `path` one at a time until `backend` of `upstream` is ejected (at most [`STATE_WAIT`]);
/// returns its `/api/backends` entry.
async fn traffic_until_ejected(client: &HttpClient, admin: &Admin, upstream: &str, backend: &str, path: &str) -> Value {
    let deadline = tokio::time::Instant::now() + STATE_WAIT;
    let mut sent = 0usize;
    loop {
        for _ in 0..10 {
            client.get(path).await;
            sent += 1;
        }
        let entry = admin.backend(upstream, backend).await;
        if entry["state"] == "ejected" {
            return entry;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{upstream}/{backend} not ejected after {sent} requests in {STATE_WAIT:?}: {entry}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_rate_above_the_percentage_ejects_and_the_backend_returns_on_probation() {
    guarded(async {
        let (ok1, ok2, flaky) = (
            PolicyBackend::start("fr-ok1"),
            PolicyBackend::start("fr-ok2"),
            PolicyBackend::start("fr-flaky"),
        );
        flaky.set_failures(80, 500);
        let (_running, admin, client) = start(
            &[],
            &single(
                "failure-rate",
                &backend_entries(&[&ok1, &ok2, &flaky]),
                "{enabled: false, passive: {unhealthy_threshold: 1000, failure_statuses: [500], reactivation: 2s, \
                 max_ejection: 2s, failure_rate: {percentage: 50, minimum_requests: 20, period: 10s}}}",
                "{algorithm: round_robin}",
            ),
        )
        .await;

        let entry = traffic_until_ejected(&client, &admin, "failure-rate", "fr-flaky", "/").await;
        assert_eq!(entry["ejected_by"], "failure_rate", "{entry}");
        let reason = entry["state_reason"].as_str().unwrap_or_default();
        assert!(
            reason.starts_with("failure rate ") && reason.ends_with("above 50%"),
            "state_reason: {reason:?}"
        );
        let metrics = admin.metrics().await;
        let ejections = |backend: &str, reason: &str| {
            metric(
                &metrics,
                "backend_ejections_total",
                "failure-rate",
                &[("backend", backend), ("reason", reason)],
            )
        };
        assert_eq!(ejections("fr-flaky", "failure_rate"), 1.0);
        assert_eq!(ejections("fr-flaky", "consecutive_failures"), 0.0);
        assert_eq!(
            ejections("fr-ok1", "failure_rate") + ejections("fr-ok2", "failure_rate"),
            0.0
        );
        let ejected = |backend: &str, reason: &str| {
            metric(
                &metrics,
                "backend_ejected",
                "failure-rate",
                &[("backend", backend), ("reason", reason)],
            )
        };
        assert_eq!(ejected("fr-flaky", "failure_rate"), 1.0);
        assert_eq!(ejected("fr-flaky", "latency"), 0.0);
        assert_eq!(ejected("fr-ok1", "failure_rate"), 0.0);

        let seen = flaky.count();
        let replies = get_ok(&client, "/", 30).await;
        assert!(replies.iter().all(|r| r.backend() != "fr-flaky"));
        assert_eq!(flaky.count(), seen, "requests reached the ejected backend");

        // Fixed, it comes back after the reactivation period and takes traffic again.
        flaky.set_failures(0, 500);
        eventually("fr-flaky back in rotation", STATE_WAIT, move || async move {
            let entry = admin.backend("failure-rate", "fr-flaky").await;
            if entry["state"] == "ejected" {
                return Err(entry.to_string());
            }
            Ok(())
        })
        .await;
        let back = admin.backend("failure-rate", "fr-flaky").await;
        assert_eq!(back["ejected_by"], Value::Null, "{back}");
        let before = flaky.count();
        get_ok(&client, "/", 9).await;
        assert!(flaky.count() > before, "the reactivated backend got no requests");
        let metrics = admin.metrics().await;
        assert_eq!(
            metric(
                &metrics,
                "backend_ejected",
                "failure-rate",
                &[("backend", "fr-flaky"), ("reason", "failure_rate")]
            ),
            0.0
        );

        // The failures that ejected it are still in its window; they must not eject it again.
        let observe = tokio::time::Instant::now() + Duration::from_millis(2500);
        while tokio::time::Instant::now() < observe {
            get_ok(&client, "/", 3).await;
        }
        let entry = admin.backend("failure-rate", "fr-flaky").await;
        assert_ne!(
            entry["state"], "ejected",
            "ejected again by the failures before its return: {entry}"
        );
        let metrics = admin.metrics().await;
        assert_eq!(
            metric(
                &metrics,
                "backend_ejections_total",
                "failure-rate",
                &[("backend", "fr-flaky")]
            ),
            1.0
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outlier_ejection_outlasts_successful_probes() {
    guarded(async {
        let (ok, flaky) = (PolicyBackend::start("op-ok"), PolicyBackend::start("op-flaky"));
        flaky.set_failures(100, 500);
        let (_running, admin, client) = start(
            &[],
            &single(
                "outlier-probes",
                &backend_entries(&[&ok, &flaky]),
                "{interval: 100ms, timeout: 100ms, healthy_threshold: 1, passive: {unhealthy_threshold: 1000, \
                 failure_statuses: [500], reactivation: 1h, max_ejection: 1h, \
                 failure_rate: {percentage: 50, minimum_requests: 10, period: 10s}}}",
                "{algorithm: round_robin}",
            ),
        )
        .await;
        traffic_until_ejected(&client, &admin, "outlier-probes", "op-flaky", "/").await;

        // Its health endpoint answers 200 all along: probes succeed, yet the ejection holds its period.
        let entry = eventually(
            "probes succeed on the ejected backend",
            STATE_WAIT,
            move || async move {
                let entry = admin.backend("outlier-probes", "op-flaky").await;
                if entry["consecutive_successes"].as_u64().unwrap_or(0) >= 3 {
                    Ok(entry)
                } else {
                    Err(entry.to_string())
                }
            },
        )
        .await;
        assert_eq!(
            (entry["state"].as_str(), entry["ejected_by"].as_str()),
            (Some("ejected"), Some("failure_rate")),
            "successful probes ended an outlier ejection early: {entry}"
        );
        let seen = flaky.count();
        get_ok(&client, "/", 10).await;
        assert_eq!(flaky.count(), seen);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_latency_quantile_ejects_and_fast_backends_stay() {
    guarded(async {
        let (fast1, fast2, slow) = (
            PolicyBackend::start("lq-fast1"),
            PolicyBackend::start("lq-fast2"),
            PolicyBackend::start("lq-slow"),
        );
        slow.set_latency(Duration::from_millis(300));
        let (_running, admin, client) = start(
            &[],
            &single(
                "latency-quantile",
                &backend_entries(&[&fast1, &fast2, &slow]),
                "{enabled: false, passive: {unhealthy_threshold: 1000, reactivation: 1h, max_ejection: 1h, \
                 latency: {unhealthy_latency: 150ms, quantile: 0.9, minimum_requests: 5, period: 10s}}}",
                "{algorithm: round_robin}",
            ),
        )
        .await;

        let entry = traffic_until_ejected(&client, &admin, "latency-quantile", "lq-slow", "/").await;
        assert_eq!(entry["ejected_by"], "latency", "{entry}");
        let reason = entry["state_reason"].as_str().unwrap_or_default();
        assert!(reason.starts_with("p90 latency at least"), "state_reason: {reason:?}");

        let seen = slow.count();
        let replies = get_ok(&client, "/", 20).await;
        assert!(replies.iter().all(|r| r.backend() != "lq-slow"));
        assert_eq!(slow.count(), seen);
        let metrics = admin.metrics().await;
        let ejections = |backend: &str| {
            metric(
                &metrics,
                "backend_ejections_total",
                "latency-quantile",
                &[("backend", backend)],
            )
        };
        assert_eq!(
            metric(
                &metrics,
                "backend_ejections_total",
                "latency-quantile",
                &[("backend", "lq-slow"), ("reason", "latency")]
            ),
            1.0
        );
        assert_eq!(ejections("lq-fast1") + ejections("lq-fast2"), 0.0);
        assert_eq!(
            in_state(&admin, "latency-quantile", "healthy").await,
            BTreeSet::from(["lq-fast1".to_owned(), "lq-fast2".to_owned()])
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consecutive_slow_responses_eject_at_once() {
    guarded(async {
        let (fast1, fast2, slow) = (
            PolicyBackend::start("lc-fast1"),
            PolicyBackend::start("lc-fast2"),
            PolicyBackend::start("lc-slow"),
        );
        slow.set_latency(Duration::from_millis(300));
        let (_running, admin, client) = start(
            &[],
            &single(
                "latency-consecutive",
                &backend_entries(&[&fast1, &fast2, &slow]),
                "{enabled: false, passive: {unhealthy_threshold: 1000, reactivation: 1h, max_ejection: 1h, \
                 latency: {unhealthy_latency: 150ms, consecutive: 3, minimum_requests: 100000, period: 10s}}}",
                "{algorithm: round_robin}",
            ),
        )
        .await;

        // One request at a time: the third slow answer ejects before it reaches the client.
        let mut sent = 0;
        while slow.count() < 3 {
            assert!(sent < 30, "three requests never reached lc-slow");
            let reply = client.get("/").await;
            assert_eq!(reply.status, StatusCode::OK);
            sent += 1;
        }
        let entry = admin.backend("latency-consecutive", "lc-slow").await;
        assert_eq!(
            (entry["state"].as_str(), entry["ejected_by"].as_str()),
            (Some("ejected"), Some("latency")),
            "{entry}"
        );
        let reason = entry["state_reason"].as_str().unwrap_or_default();
        assert!(
            reason.starts_with("3 responses in a row slower than 150ms"),
            "state_reason: {reason:?}"
        );
        get_ok(&client, "/", 20).await;
        assert_eq!(slow.count(), 3, "the ejected backend got more requests");
        let metrics = admin.metrics().await;
        assert_eq!(
            metric(
                &metrics,
                "backend_ejections_total",
                "latency-consecutive",
                &[("reason", "latency")]
            ),
            1.0,
            "only lc-slow is ejected, once"
        );
        assert_eq!(
            in_state(&admin, "latency-consecutive", "healthy").await,
            BTreeSet::from(["lc-fast1".to_owned(), "lc-fast2".to_owned()])
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_ejection_percent_keeps_half_of_the_failing_backends_in() {
    guarded(async {
        let backends = ["me-a", "me-b", "me-c", "me-d"].map(PolicyBackend::start);
        for backend in &backends {
            backend.set_failures(100, 500);
        }
        let (_running, admin, client) = start(
            &[],
            &single(
                "max-ejection",
                &backend_entries(&[&backends[0], &backends[1], &backends[2], &backends[3]]),
                "{enabled: false, passive: {unhealthy_threshold: 2, failure_statuses: [500], reactivation: 1h, \
                 max_ejection: 1h, max_ejection_percent: 50}}",
                "{algorithm: round_robin}",
            ),
        )
        .await;

        // One request at a time, so that no two ejections race each other.
        for _ in 0..40 {
            assert_eq!(client.get("/").await.status, StatusCode::INTERNAL_SERVER_ERROR);
        }
        let ejected = in_state(&admin, "max-ejection", "ejected").await;
        assert_eq!(ejected.len(), 2, "50% of 4 backends: {ejected:?}");
        let metrics = admin.metrics().await;
        assert_eq!(metric(&metrics, "backend_ejections_total", "max-ejection", &[]), 2.0);
        assert!(metric(&metrics, "backend_ejections_prevented_total", "max-ejection", &[]) >= 1.0);

        // The two left keep failing and keep serving.
        let mut replies = Vec::new();
        for _ in 0..20 {
            replies.push(client.get("/").await);
        }
        let answered = tally(&replies);
        assert!(
            answered.keys().all(|b| !ejected.contains(b)),
            "{answered:?} vs ejected {ejected:?}"
        );
        assert_eq!(in_state(&admin, "max-ejection", "ejected").await, ejected);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_ejection_percent_holds_under_concurrent_failures() {
    guarded(async {
        let backends = ["mc-a", "mc-b", "mc-c", "mc-d"].map(PolicyBackend::start);
        for backend in &backends {
            backend.set_failures(100, 500);
            backend.hold();
        }
        let (_running, admin, client) = start(
            &[],
            &single(
                "max-ejection-burst",
                &backend_entries(&[&backends[0], &backends[1], &backends[2], &backends[3]]),
                "{enabled: false, passive: {unhealthy_threshold: 1, failure_statuses: [500], reactivation: 1h, \
                 max_ejection: 1h, max_ejection_percent: 25}}",
                "{algorithm: round_robin}",
            ),
        )
        .await;
        // Every backend holds requests, then all fail at the same moment.
        const BURST: usize = 40;
        let burst: Vec<_> = (0..BURST).map(|_| spawn_get(&client, "/hold")).collect();
        wait_until(|| backends.iter().map(PolicyBackend::held).sum::<usize>() == BURST).await;
        for backend in &backends {
            backend.release();
        }
        for task in burst {
            task.await.expect("request task");
        }
        let ejected = in_state(&admin, "max-ejection-burst", "ejected").await;
        assert_eq!(
            ejected.len(),
            1,
            "max_ejection_percent 25 of 4 backends, concurrent failures: {ejected:?}"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_ejection_is_always_allowed_whatever_the_percentage() {
    guarded(async {
        let (x, y) = (PolicyBackend::start("one-x"), PolicyBackend::start("one-y"));
        x.set_failures(100, 500);
        y.set_failures(100, 500);
        let (_running, admin, client) = start(
            &[],
            &single(
                "one-ejection",
                &backend_entries(&[&x, &y]),
                "{enabled: false, passive: {unhealthy_threshold: 1000, failure_statuses: [500], reactivation: 1h, \
                 max_ejection: 1h, max_ejection_percent: 10, \
                 failure_rate: {percentage: 50, minimum_requests: 10, period: 10s}}}",
                "{algorithm: round_robin}",
            ),
        )
        .await;

        // 10% of 2 backends is less than one, yet one may go; the other stays while the detector, checking
        // every second, is refused.
        let client = &client;
        let prevented = eventually("one ejection, then one prevented", STATE_WAIT, move || async move {
            for _ in 0..10 {
                client.get("/").await;
            }
            let ejected = in_state(&admin, "one-ejection", "ejected").await;
            let prevented = metric(
                &admin.metrics().await,
                "backend_ejections_prevented_total",
                "one-ejection",
                &[("reason", "failure_rate")],
            );
            if ejected.len() == 1 && prevented >= 1.0 {
                Ok(prevented)
            } else {
                Err(format!("ejected {ejected:?}, prevented {prevented}"))
            }
        })
        .await;
        assert!(prevented >= 1.0);
        let ejected = in_state(&admin, "one-ejection", "ejected").await;
        assert_eq!(ejected.len(), 1, "{ejected:?}");
        let metrics = admin.metrics().await;
        assert_eq!(
            metric(
                &metrics,
                "backend_ejections_total",
                "one-ejection",
                &[("reason", "failure_rate")]
            ),
            1.0
        );
    })
    .await;
}

// ---------------------------------------------------------------------------------------------------------
// Panic threshold

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn below_min_healthy_percent_every_backend_takes_traffic() {
    guarded(async {
        let backends = ["pn-up", "pn-sick1", "pn-sick2", "pn-sick3"].map(PolicyBackend::start);
        for sick in &backends[1..] {
            sick.set_health(503);
        }
        let list = backend_entries(&[&backends[0], &backends[1], &backends[2], &backends[3]]);
        let probes = "{interval: 100ms, timeout: 100ms, unhealthy_threshold: 1, healthy_threshold: 1}";
        let yaml = routed(
            &[
                upstream(
                    "panic-on",
                    &list,
                    probes,
                    "{algorithm: round_robin, min_healthy_percent: 50}",
                ),
                upstream(
                    "panic-off",
                    &list,
                    probes,
                    "{algorithm: round_robin, min_healthy_percent: 0}",
                ),
            ],
            &[("/on/*", "panic-on"), ("/off/*", "panic-off")],
        );
        let (_running, admin, client) = start(&[], &yaml).await;
        for name in ["panic-on", "panic-off"] {
            eventually("three backends unhealthy", STATE_WAIT, move || async move {
                let states = states(&admin.upstream(name).await);
                let unhealthy = states.values().filter(|s| *s == "unhealthy").count();
                if unhealthy == 3 && states["pn-up"] == "healthy" {
                    Ok(())
                } else {
                    Err(format!("{name}: {states:?}"))
                }
            })
            .await;
        }

        // 1 of 4 healthy is below 50%: all four share the load, unhealthy ones included.
        let panic_before = metric(&admin.metrics().await, "upstream_panic_requests_total", "panic-on", &[]);
        let shares = tally(&get_ok(&client, "/on/x", 200).await);
        assert_eq!(
            shares.len(),
            4,
            "in panic mode every backend takes requests: {shares:?}"
        );
        assert!(shares.values().all(|&n| n >= 20), "{shares:?}");
        let panic_after = metric(&admin.metrics().await, "upstream_panic_requests_total", "panic-on", &[]);
        assert!(panic_after - panic_before >= 200.0, "{panic_before} -> {panic_after}");

        // Without a panic threshold only the healthy backend is used.
        let only = tally(&get_ok(&client, "/off/x", 40).await);
        assert_eq!(only, BTreeMap::from([("pn-up".to_owned(), 40)]));
        assert_eq!(
            metric(
                &admin.metrics().await,
                "upstream_panic_requests_total",
                "panic-off",
                &[]
            ),
            0.0
        );

        // A drained backend stays out, panic or not.
        admin.set_drained("panic-on", "pn-sick1", true).await;
        let drained_seen = backends[1].count();
        let shares = tally(&get_ok(&client, "/on/x", 60).await);
        assert_eq!(
            backends[1].count(),
            drained_seen,
            "a drained backend took panic traffic: {shares:?}"
        );
        assert_eq!(shares.len(), 3, "{shares:?}");

        // Healthy again: panic mode ends and stops being counted.
        for sick in &backends[1..] {
            sick.set_health(200);
        }
        eventually("every backend healthy", STATE_WAIT, move || async move {
            let states = states(&admin.upstream("panic-on").await);
            let healthy = states.values().filter(|s| *s == "healthy").count();
            if healthy == 3 {
                Ok(())
            } else {
                Err(format!("{states:?}"))
            }
        })
        .await;
        let calm = metric(&admin.metrics().await, "upstream_panic_requests_total", "panic-on", &[]);
        get_ok(&client, "/on/x", 20).await;
        assert_eq!(
            metric(&admin.metrics().await, "upstream_panic_requests_total", "panic-on", &[]),
            calm
        );
    })
    .await;
}

// ---------------------------------------------------------------------------------------------------------
// Circuit breaking

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_requests_refuses_at_once_without_marking_the_backend_unhealthy() {
    guarded(async {
        let holder = PolicyBackend::start("cb-holder");
        holder.hold();
        let (_running, admin, client) = start(
            &[],
            &single(
                "cb-requests",
                &backend_entries(&[&holder]),
                "{enabled: false}",
                "{circuit_breaker: {max_requests: 2}}",
            ),
        )
        .await;
        let held = [spawn_get(&client, "/hold"), spawn_get(&client, "/hold")];
        wait_until(|| holder.held() == 2).await;

        let refused = client.get("/third").await;
        assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE, "{}", refused.text());
        assert_eq!(holder.held(), 2, "the held requests are still waiting");
        assert!(held.iter().all(|t| !t.is_finished()));
        assert_eq!(holder.count(), 2, "the refused request reached the backend");

        let entry = admin.backend("cb-requests", "cb-holder").await;
        assert_eq!(entry["circuit_open"], true, "{entry}");
        assert_eq!(entry["in_flight"], 2, "{entry}");
        let metrics = admin.metrics().await;
        assert_eq!(
            metric(
                &metrics,
                "circuit_breaker_rejections_total",
                "cb-requests",
                &[("limit", "max_requests")]
            ),
            1.0
        );
        assert_eq!(
            metric(
                &metrics,
                "backend_circuit_open",
                "cb-requests",
                &[("backend", "cb-holder")]
            ),
            1.0
        );

        // Many refusals are the proxy's own 503s: never a passive failure of the backend.
        for _ in 0..20 {
            assert_eq!(client.get("/more").await.status, StatusCode::SERVICE_UNAVAILABLE);
        }
        // At its limit, not unhealthy: the state says why it takes no more, and no failure was counted.
        let entry = admin.backend("cb-requests", "cb-holder").await;
        assert_eq!(entry["state"], "circuit_open", "{entry}");
        assert_eq!(entry["circuit_open"], true, "{entry}");
        assert_eq!(entry["consecutive_failures"], 0, "{entry}");
        let metrics = admin.metrics().await;
        assert_eq!(
            metric(
                &metrics,
                "circuit_breaker_rejections_total",
                "cb-requests",
                &[("limit", "max_requests")]
            ),
            21.0
        );
        assert_eq!(metric(&metrics, "backend_ejections_total", "cb-requests", &[]), 0.0);
        assert_eq!(
            metric(
                &metrics,
                "backend_health_transitions_total",
                "cb-requests",
                &[("to", "unhealthy")]
            ),
            0.0
        );

        holder.release();
        for task in held {
            let reply = task.await.expect("request task");
            assert_eq!((reply.status, reply.backend()), (StatusCode::OK, "cb-holder"));
        }
        eventually("the circuit closes", STATE_WAIT, move || async move {
            let entry = admin.backend("cb-requests", "cb-holder").await;
            if entry["circuit_open"] == false {
                Ok(())
            } else {
                Err(entry.to_string())
            }
        })
        .await;
        get_ok(&client, "/after", 3).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_at_max_requests_is_skipped_while_another_has_room() {
    guarded(async {
        let (holder, spare) = (PolicyBackend::start("skip-holder"), PolicyBackend::start("skip-spare"));
        holder.hold();
        let (_running, admin, client) = start(
            &[],
            &single(
                "cb-skip",
                &backend_entries(&[&holder, &spare]),
                "{enabled: false}",
                "{algorithm: round_robin, circuit_breaker: {max_requests: 1}}",
            ),
        )
        .await;
        let mut held = None;
        while held.is_none() {
            let task = spawn_get(&client, "/hold");
            wait_until(|| task.is_finished() || holder.held() == 1).await;
            if task.is_finished() {
                assert_eq!(task.await.expect("request task").backend(), "skip-spare");
            } else {
                held = Some(task);
            }
        }
        let shares = tally(&get_ok(&client, "/x", 10).await);
        assert_eq!(shares, BTreeMap::from([("skip-spare".to_owned(), 10)]));
        let metrics = admin.metrics().await;
        assert_eq!(
            metric(&metrics, "circuit_breaker_rejections_total", "cb-skip", &[]),
            0.0
        );
        holder.release();
        let reply = held.expect("a held request").await.expect("request task");
        assert_eq!((reply.status, reply.backend()), (StatusCode::OK, "skip-holder"));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connections_without_a_waiting_room_refuses_a_second_connection() {
    guarded(async {
        let holder = PolicyBackend::start("mc-holder");
        holder.hold();
        let (_running, admin, client) = start(
            &[],
            &single(
                "cb-connections",
                &backend_entries(&[&holder]),
                "{enabled: false}",
                "{circuit_breaker: {max_connections: 1, max_pending: 0}}",
            ),
        )
        .await;
        let held = spawn_get(&client, "/hold");
        wait_until(|| holder.held() == 1).await;

        let refused = client.get("/second").await;
        assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE, "{}", refused.text());
        assert_eq!(holder.accepted(), 1, "the backend saw a second connection");
        assert_eq!(holder.count(), 1);
        let entry = admin.backend("cb-connections", "mc-holder").await;
        assert_eq!(
            (&entry["connections"], &entry["pending"], &entry["circuit_open"]),
            (&Value::from(1), &Value::from(0), &Value::from(true)),
            "{entry}"
        );
        let metrics = admin.metrics().await;
        assert_eq!(
            metric(
                &metrics,
                "circuit_breaker_rejections_total",
                "cb-connections",
                &[("limit", "max_pending")]
            ),
            1.0
        );
        assert_eq!(
            metric(
                &metrics,
                "backend_connections",
                "cb-connections",
                &[("backend", "mc-holder")]
            ),
            1.0
        );
        let entry = admin.backend("cb-connections", "mc-holder").await;
        assert_eq!(entry["state"], "circuit_open", "{entry}");
        assert_eq!(entry["consecutive_failures"], 0, "{entry}");

        holder.release();
        assert_eq!(held.await.expect("request task").status, StatusCode::OK);
        get_ok(&client, "/after", 3).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_waits_for_the_one_connection_when_max_pending_allows() {
    guarded(async {
        let holder = PolicyBackend::start("mp-holder");
        holder.hold();
        // One worker, so the waiting request is on the worker whose connection goes idle.
        let (_running, admin, client) = start(
            &["workers: 1"],
            &single(
                "cb-pending",
                &backend_entries(&[&holder]),
                "{enabled: false}",
                "{circuit_breaker: {max_connections: 1, max_pending: 1}}",
            ),
        )
        .await;
        let first = spawn_get(&client, "/hold");
        wait_until(|| holder.held() == 1).await;
        let waiting = spawn_get(&client, "/waiting");
        eventually("one request waiting for a connection", STATE_WAIT, move || async move {
            let entry = admin.backend("cb-pending", "mp-holder").await;
            if entry["pending"] == 1 {
                Ok(())
            } else {
                Err(entry.to_string())
            }
        })
        .await;
        let entry = admin.backend("cb-pending", "mp-holder").await;
        assert_eq!(
            entry["circuit_open"], true,
            "connections and waiting room full: {entry}"
        );

        // The waiting room holds one: a third request is refused.
        let refused = client.get("/third").await;
        assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE, "{}", refused.text());
        let metrics = admin.metrics().await;
        assert_eq!(
            metric(
                &metrics,
                "circuit_breaker_rejections_total",
                "cb-pending",
                &[("limit", "max_pending")]
            ),
            1.0
        );

        holder.release();
        assert_eq!(first.await.expect("request task").status, StatusCode::OK);
        let reply = waiting.await.expect("request task");
        assert_eq!((reply.status, reply.backend()), (StatusCode::OK, "mp-holder"));
        assert_eq!(holder.count_under("/waiting"), 1);
        assert_eq!(holder.count_under("/third"), 0);
        assert_eq!(holder.max_open(), 1, "the backend saw more than one connection at once");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_request_is_refused_when_no_connection_frees_up_in_time() {
    guarded(async {
        let holder = PolicyBackend::start("mw-holder");
        holder.hold();
        let (_running, admin, client) = start(
            &[],
            &format!(
                "timeouts: {{connect: 300ms}}\n{}",
                single(
                    "cb-wait",
                    &backend_entries(&[&holder]),
                    "{enabled: false}",
                    "{circuit_breaker: {max_connections: 1, max_pending: 4}}",
                )
            ),
        )
        .await;
        let held = spawn_get(&client, "/hold");
        wait_until(|| holder.held() == 1).await;

        // It may wait as long as a connect may take; the held request keeps the connection longer.
        let refused = client.get("/waited").await;
        assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE, "{}", refused.text());
        assert_eq!(holder.count_under("/waited"), 0);
        let metrics = admin.metrics().await;
        assert_eq!(
            metric(
                &metrics,
                "circuit_breaker_rejections_total",
                "cb-wait",
                &[("limit", "max_connections")]
            ),
            1.0
        );
        assert_eq!(admin.backend("cb-wait", "mw-holder").await["pending"], 0);

        holder.release();
        assert_eq!(held.await.expect("request task").status, StatusCode::OK);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_the_backend_closes_gives_its_slot_back() {
    guarded(async {
        let closer = PolicyBackend::start("cc-closer");
        closer.set_closing(true);
        let (_running, admin, client) = start(
            &[],
            &single(
                "cb-closed",
                &backend_entries(&[&closer]),
                "{enabled: false}",
                "{circuit_breaker: {max_connections: 1, max_pending: 0}}",
            ),
        )
        .await;
        // Every answer ends its connection, so each request needs the one slot again.
        for n in 0..20 {
            let reply = client.get(&format!("/one/{n}")).await;
            assert_eq!(reply.status, StatusCode::OK, "request {n}: {}", reply.text());
        }
        assert_eq!(closer.accepted(), 20);
        assert_eq!(closer.max_open(), 1);
        let metrics = admin.metrics().await;
        assert_eq!(
            metric(&metrics, "circuit_breaker_rejections_total", "cb-closed", &[]),
            0.0
        );
    })
    .await;
}

// ---------------------------------------------------------------------------------------------------------
// Retries

/// Passive checks off: these tests are about retries, and a backend that answers 503 must stay in.
const NO_HEALTH: &str = "{enabled: false, passive: {enabled: false}}";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_on_statuses_retries_idempotent_requests_on_another_backend() {
    guarded(async {
        let (bad, good) = (PolicyBackend::start("rs-bad"), PolicyBackend::start("rs-good"));
        bad.set_failures(100, 503);
        let (_running, admin, client) = start(
            &[],
            &single(
                "retry-status",
                &backend_entries(&[&bad, &good]),
                NO_HEALTH,
                "{algorithm: round_robin, retries: 2, retry_on_statuses: [503], retry_backoff: 5ms, retry_backoff_max: 20ms}",
            ),
        )
        .await;

        let replies = get_ok(&client, "/get", 20).await;
        assert!(replies.iter().all(|r| r.backend() == "rs-good"), "{:?}", tally(&replies));
        let retried = bad.count_of(&Method::GET);
        assert!(retried >= 1, "round robin never picked rs-bad");
        assert_eq!(good.count_of(&Method::GET), 20);
        let retries = metric(&admin.metrics().await, "proxy_retries_total", "retry-status", &[]);
        assert_eq!(retries, retried as f64, "one retry per 503");

        // POST is not idempotent: the 503 reaches the client and nothing is sent twice.
        let mut statuses = BTreeMap::new();
        for n in 0..10 {
            let request = client.request("POST", "/post").body(full(format!("order {n}"))).expect("request");
            let reply = client.send(request).await;
            *statuses.entry((reply.status.as_u16(), reply.backend().to_owned())).or_insert(0) += 1;
        }
        let refused = statuses.get(&(503, "rs-bad".to_owned())).copied().unwrap_or(0);
        let served = statuses.get(&(200, "rs-good".to_owned())).copied().unwrap_or(0);
        assert!(refused >= 1, "no POST went to rs-bad: {statuses:?}");
        assert_eq!(refused + served, 10, "{statuses:?}");
        assert_eq!((bad.count_of(&Method::POST), good.count_of(&Method::POST)), (refused, served));
        assert_eq!(metric(&admin.metrics().await, "proxy_retries_total", "retry-status", &[]), retries);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_every_backend_answers_a_retried_status_the_last_answer_is_returned() {
    guarded(async {
        let (one, two) = (PolicyBackend::start("ra-one"), PolicyBackend::start("ra-two"));
        one.set_failures(100, 503);
        two.set_failures(100, 503);
        let (_running, admin, client) = start(
            &[],
            &single(
                "retry-all-fail",
                &backend_entries(&[&one, &two]),
                NO_HEALTH,
                "{algorithm: round_robin, retries: 2, retry_on_statuses: [503], retry_backoff: 5ms, retry_backoff_max: 20ms}",
            ),
        )
        .await;
        for n in 0..10 {
            let reply = client.get("/x").await;
            assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE, "request {n}: {}", reply.text());
            assert!(
                reply.text().starts_with("ra-"),
                "request {n}: the backend's own answer is passed on, got {:?}",
                reply.text()
            );
        }
        // Each request tried both backends once: one retry each, then nothing fresh was left to try.
        assert_eq!((one.count(), two.count()), (10, 10));
        assert_eq!(metric(&admin.metrics().await, "proxy_retries_total", "retry-all-fail", &[]), 10.0);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_retry_budget_retries_nothing() {
    guarded(async {
        let (bad, good) = (PolicyBackend::start("rz-bad"), PolicyBackend::start("rz-good"));
        bad.set_failures(100, 503);
        let dead = dead_port_addr();
        let no_budget = "{algorithm: round_robin, retries: 2, retry_on_statuses: [503], \
                         retry_budget: {ratio: 0, min_per_second: 0}}";
        let refused_list = format!(r#"[{{name: "rz-dead", url: "http://{dead}"}}, {}]"#, good.entry(1));
        let yaml = routed(
            &[
                upstream("retry-none", &backend_entries(&[&bad, &good]), NO_HEALTH, no_budget),
                upstream("retry-none-dead", &refused_list, NO_HEALTH, no_budget),
            ],
            &[("/status/*", "retry-none"), ("/dead/*", "retry-none-dead")],
        );
        let (_running, admin, client) = start(&[], &yaml).await;

        let mut statuses = BTreeMap::new();
        for _ in 0..20 {
            let reply = client.get("/status/x").await;
            *statuses
                .entry((reply.status.as_u16(), reply.backend().to_owned()))
                .or_insert(0) += 1;
        }
        let unretried = statuses.get(&(503, "rz-bad".to_owned())).copied().unwrap_or(0);
        assert!(unretried >= 1, "{statuses:?}");
        assert_eq!(
            unretried + statuses.get(&(200, "rz-good".to_owned())).copied().unwrap_or(0),
            20,
            "{statuses:?}"
        );
        let metrics = admin.metrics().await;
        assert_eq!(metric(&metrics, "proxy_retries_total", "retry-none", &[]), 0.0);
        assert_eq!(
            metric(&metrics, "retry_budget_exhausted_total", "retry-none", &[]),
            unretried as f64,
            "every retry refused is counted"
        );

        let mut refused = 0;
        for _ in 0..10 {
            let reply = client.get("/dead/x").await;
            match reply.status {
                StatusCode::BAD_GATEWAY => refused += 1,
                StatusCode::OK => assert_eq!(reply.backend(), "rz-good"),
                other => panic!("unexpected {other}: {}", reply.text()),
            }
        }
        assert!(refused >= 1, "round robin never picked the dead backend");
        let metrics = admin.metrics().await;
        assert_eq!(metric(&metrics, "proxy_retries_total", "retry-none-dead", &[]), 0.0);
        assert_eq!(
            metric(&metrics, "retry_budget_exhausted_total", "retry-none-dead", &[]),
            f64::from(refused)
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_upstream_gets_no_retry_storm() {
    guarded(async {
        const REQUESTS: usize = 200;
        const CONCURRENCY: usize = 10;
        let dead: Vec<String> = (0..3)
            .map(|n| format!(r#"{{name: "storm-{n}", url: "http://{}"}}"#, dead_port_addr()))
            .collect();
        let (_running, admin, client) = start(
            &[],
            &single(
                "storm",
                &format!("[{}]", dead.join(", ")),
                NO_HEALTH,
                "{algorithm: round_robin, retries: 2, retry_backoff: 1ms, retry_backoff_max: 5ms, \
                 retry_budget: {ratio: 0.2, min_per_second: 1}}",
            ),
        )
        .await;

        let started = tokio::time::Instant::now();
        let mut tasks = Vec::new();
        for worker in 0..CONCURRENCY {
            let client = client.clone();
            tasks.push(tokio::spawn(async move {
                let mut statuses = Vec::new();
                for _ in (worker..REQUESTS).step_by(CONCURRENCY) {
                    statuses.push(client.get("/").await.status);
                }
                statuses
            }));
        }
        let mut statuses = Vec::new();
        for task in tasks {
            statuses.extend(task.await.expect("client task"));
        }
        let elapsed = started.elapsed();
        assert_eq!(statuses.len(), REQUESTS);
        assert!(statuses.iter().all(|s| *s == StatusCode::BAD_GATEWAY), "{statuses:?}");

        let metrics = admin.metrics().await;
        let retries = metric(&metrics, "proxy_retries_total", "storm", &[]);
        // 20% of the requests plus one a second over the budget's 10-second window (more if the burst took
        // longer), and a little for counts that race.
        let windows = 1.0 + elapsed.as_secs_f64() / 10.0;
        let bound = 0.2 * REQUESTS as f64 + 10.0 * windows.ceil() + 5.0;
        assert!(
            retries <= bound,
            "{retries} retries for {REQUESTS} requests in {elapsed:?}; the budget allows about {bound}"
        );
        assert!(
            retries >= 10.0,
            "the floor allows at least 10 retries, {retries} were made"
        );
        assert!(metric(&metrics, "retry_budget_exhausted_total", "storm", &[]) >= 1.0);
    })
    .await;
}

// ---------------------------------------------------------------------------------------------------------
// Client faults

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clients_faults_are_never_counted_against_the_backend() {
    guarded(async {
        let backend = PolicyBackend::start("cf-backend");
        let (running, admin, client) = start(
            &["client_body_timeout: 300ms"],
            &single(
                "client-faults",
                &backend_entries(&[&backend]),
                "{enabled: false, passive: {unhealthy_threshold: 1, reactivation: 1h, max_ejection: 1h, \
                 failure_rate: {percentage: 1, minimum_requests: 1, period: 10s}}}",
                "{}",
            ),
        )
        .await;
        let proxy = running.fallback_addr;

        // Malformed requests: 400 before any backend is involved.
        let malformed: [&[u8]; 3] = [
            b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\nBad Header: y\r\n\r\n",
        ];
        for n in 0..100 {
            let exchange = raw_exchange(proxy, malformed[n % malformed.len()]).await;
            assert_eq!(exchange.status(), Some(400), "{}", exchange.text());
        }

        // Uploads the client abandons mid-body, after the proxy has started forwarding them.
        for n in 0..60 {
            let (seen, errors) = (backend.count(), backend.body_errors());
            let mut stream = TcpStream::connect(proxy).await.expect("connect to the proxy");
            stream
                .write_all(b"POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n400\r\n")
                .await
                .expect("send the head");
            stream.write_all(&[b'u'; 512]).await.expect("send half a chunk");
            wait_until(|| backend.count() > seen).await;
            drop(stream);
            // The proxy must end the forwarded request too, or the backend waits for the rest forever.
            let backend = &backend;
            eventually(
                "the backend sees the abandoned upload end",
                STATE_WAIT,
                move || async move {
                    if backend.body_errors() > errors {
                        Ok(())
                    } else {
                        Err(format!(
                            "upload {n}: {} body errors at the backend",
                            backend.body_errors()
                        ))
                    }
                },
            )
            .await;
        }

        // Uploads that stall: the proxy gives up on the client (408).
        let stalls: Vec<_> = (0..20)
            .map(|_| {
                tokio::spawn(async move {
                    let mut stream = TcpStream::connect(proxy).await.expect("connect to the proxy");
                    stream
                        .write_all(
                            b"POST /stall HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
                        )
                        .await
                        .expect("send the head");
                    read_head(&mut stream).await
                })
            })
            .collect();
        for stall in stalls {
            let head = stall.await.expect("stalled upload task");
            assert!(head.starts_with("HTTP/1.1 408"), "{head}");
        }

        // Clients that hang up while the backend is still answering.
        backend.hold();
        for _ in 0..20 {
            let before = backend.held();
            let mut stream = TcpStream::connect(proxy).await.expect("connect to the proxy");
            stream
                .write_all(b"GET /wait/hold HTTP/1.1\r\nHost: x\r\n\r\n")
                .await
                .expect("send the request");
            wait_until(|| backend.held() > before).await;
            drop(stream);
        }
        backend.release();

        let replies = get_ok(&client, "/ok", 5).await;
        assert!(replies.iter().all(|r| r.backend() == "cf-backend"));
        let entry = admin.backend("client-faults", "cf-backend").await;
        assert_eq!(entry["state"], "healthy", "{entry}");
        assert_eq!(entry["consecutive_failures"], 0, "{entry}");
        assert_eq!(entry["last_error"], Value::Null, "{entry}");
        // Once the second of the good requests is complete, the recent window shows what was counted.
        let recent = eventually(
            "the recent window covers the good requests",
            STATE_WAIT,
            move || async move {
                let entry = admin.state_of("client-faults", "cf-backend").await;
                if entry["requests_per_second"].as_f64().unwrap_or(0.0) > 0.0 {
                    Ok(entry)
                } else {
                    Err(entry.to_string())
                }
            },
        )
        .await;
        assert_eq!(recent["error_ratio"].as_f64(), Some(0.0), "{recent}");
        let metrics = admin.metrics().await;
        assert_eq!(metric(&metrics, "backend_ejections_total", "client-faults", &[]), 0.0);
        assert_eq!(
            metric(
                &metrics,
                "backend_health_transitions_total",
                "client-faults",
                &[("to", "unhealthy")]
            ),
            0.0
        );
        assert_eq!(admin.backend("client-faults", "cf-backend").await["state"], "healthy");
    })
    .await;
}
