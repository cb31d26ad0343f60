//! Live reconfiguration: `Shared::reload_from_file`, `POST /api/reload`, SIGHUP and `--watch` all read and
//! validate the whole file and swap it in for new requests only if it is valid. Under continuous load over
//! HTTP/1.1, HTTP/2 and HTTP/3 nothing fails and no connection is dropped; a bad file changes nothing;
//! backends that keep their identity keep their state; settings that need new sockets are reported and
//! keep their running values.
//!
//! In-process proxies are started from a real file, so every reload reads the file the way the binary
//! does; the tests of the binary itself run it as a child process and read its JSON log lines.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use crate::support::http3::*;
use crate::support::*;
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt as _, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use quic_proxy::app::Running;
use quic_proxy::balancer::Backend;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::Value;
use tempfile::TempDir;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

/// The admin token every config here carries.
const TOKEN: &str = "reload-test-token";

/// The headline test runs a few thousand requests and ten reloads through an unoptimised build, possibly
/// next to every other test binary on two cores.
const LOAD_GUARD: Duration = Duration::from_secs(240);

/// Starting a process, reloading it and waiting for its log lines in a debug build.
const PROCESS_GUARD: Duration = Duration::from_secs(90);

/// Demo backends by name; each answers with its name in `x-backend`.
fn fleet(names: &[&'static str]) -> BTreeMap<&'static str, SocketAddr> {
    names.iter().copied().zip(start_backends(names)).collect()
}

/// A config file in a directory of its own that lives as long as this value.
struct ConfigFile {
    _dir: TempDir,
    path: PathBuf,
}

impl ConfigFile {
    fn new(yaml: &str) -> Self {
        let dir = tempfile::tempdir().expect("create a temporary directory");
        let path = dir.path().join("proxy.yaml");
        let file = Self { _dir: dir, path };
        file.write(yaml);
        file
    }

    fn write(&self, yaml: &str) {
        std::fs::write(&self.path, yaml).expect("write the config");
    }
}

/// What a reload reported, from either `Shared::reload_from_file` or the admin API's JSON.
#[derive(Debug)]
struct Reloaded {
    generation: u64,
    digest: String,
    changes: Vec<String>,
    restart_required: Vec<String>,
}

impl Reloaded {
    fn mentions(&self, text: &str) -> bool {
        self.changes.iter().any(|change| change.contains(text))
    }
}

/// `Shared::reload_from_file`, which must succeed.
async fn reload_file(running: &Running) -> Reloaded {
    let report = running
        .shared()
        .reload_from_file()
        .await
        .unwrap_or_else(|e| panic!("reload_from_file failed: {e}"));
    Reloaded {
        generation: report.generation,
        digest: report.digest,
        changes: report.changes,
        restart_required: report.restart_required,
    }
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .unwrap_or_else(|| panic!("expected an array, got {value}"))
        .iter()
        .map(|v| v.as_str().expect("a string").to_owned())
        .collect()
}

/// `POST /api/reload` with the token, which must succeed.
async fn reload_api(admin: SocketAddr) -> Reloaded {
    let reply = send_with_authorization(admin, "POST", "/api/reload", Some(&format!("Bearer {TOKEN}"))).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let json: Value = serde_json::from_slice(&reply.body).expect("the reload report is JSON");
    Reloaded {
        generation: json["generation"].as_u64().expect("generation"),
        digest: json["digest"].as_str().expect("digest").to_owned(),
        changes: strings(&json["changes"]),
        restart_required: strings(&json["restart_required"]),
    }
}

async fn admin_get(admin: SocketAddr, path: &str) -> Reply {
    let reply = HttpClient::new(admin).get(path).await;
    assert_eq!(reply.status, StatusCode::OK, "{path}: {}", reply.text());
    reply
}

async fn metrics_of(admin: SocketAddr) -> String {
    admin_get(admin, "/metrics").await.text().to_owned()
}

/// The `(digest, generation)` that `quic_proxy_config_info` reports.
fn config_info(metrics: &str) -> (String, String) {
    let line = metrics
        .lines()
        .find(|line| line.starts_with("quic_proxy_config_info{"))
        .unwrap_or_else(|| panic!("no quic_proxy_config_info in:\n{metrics}"));
    let label = |name: &str| {
        let start = line.find(&format!("{name}=\"")).expect("label present") + name.len() + 2;
        line[start..].split('"').next().expect("closing quote").to_owned()
    };
    (label("digest"), label("generation"))
}

/// The `(upstream, name)` pairs `/api/backends` lists.
async fn api_backends(admin: SocketAddr) -> BTreeSet<(String, String)> {
    let json: Value = serde_json::from_slice(&admin_get(admin, "/api/backends").await.body).expect("JSON");
    json["backends"]
        .as_array()
        .expect("a backends array")
        .iter()
        .map(|b| {
            (
                b["upstream"].as_str().expect("upstream").to_owned(),
                b["name"].as_str().expect("name").to_owned(),
            )
        })
        .collect()
}

fn default_backends(names: &[&str]) -> BTreeSet<(String, String)> {
    names.iter().map(|n| ("default".to_owned(), (*n).to_owned())).collect()
}

/// Which demo backends answered `count` sequential GETs of `path` on the fallback listener.
async fn answered_by(addr: SocketAddr, path: &str, count: usize) -> BTreeMap<String, usize> {
    let client = HttpClient::new(addr);
    let mut seen = BTreeMap::new();
    for _ in 0..count {
        let reply = client.get_with_host("localhost", path).await;
        assert_eq!(reply.status, StatusCode::OK, "GET {path}: {}", reply.text());
        *seen.entry(reply.backend().to_owned()).or_insert(0) += 1;
    }
    seen
}

fn names_of(seen: &BTreeMap<String, usize>) -> BTreeSet<&str> {
    seen.keys().map(String::as_str).collect()
}

// ---------------------------------------------------------------------------------------------------------
// The headline test: ten reloads under load.
// ---------------------------------------------------------------------------------------------------------

/// What the load requests; the upstream each reaches depends on the routes in force.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Target {
    Root,
    Api,
    Shop,
}

impl Target {
    const ALL: [Target; 3] = [Target::Root, Target::Api, Target::Shop];

    fn path(self) -> &'static str {
        match self {
            Target::Root => "/",
            Target::Api => "/api/item",
            Target::Shop => "/shop/item",
        }
    }
}

const PROTOCOLS: [&str; 3] = ["HTTP/1.1", "HTTP/2", "HTTP/3"];
const H1: usize = 0;
const H2: usize = 1;
const H3: usize = 2;

/// Load clients per protocol: HTTP/1.1 tasks each own a connection; HTTP/2 connections are shared by two
/// tasks each; every HTTP/3 task shares the one long-lived QUIC connection.
const H1_TASKS: usize = 3;
const H2_CONNECTIONS: usize = 2;
const H2_TASKS_PER_CONNECTION: usize = 2;
const H3_TASKS: usize = 3;

/// Answers each protocol must get under a configuration before the next reload.
const ANSWERS_PER_STEP: u64 = 25;
/// Answers sent under the last configuration before the distribution is judged.
const FINAL_ANSWERS: u64 = 600;

/// One configuration of the headline test: rendered to the file, and the model every answer is checked
/// against.
#[derive(Clone, Debug)]
struct Plan {
    /// The default upstream's backends and weights.
    web: Vec<(&'static str, u32)>,
    algorithm: &'static str,
    /// The upstream `/api/*` is routed to, if a route says so.
    api_route: Option<&'static str>,
    /// Whether host `localhost` with path `/shop/*` is routed to upstream `api`.
    shop_route: bool,
    health_check: &'static str,
    /// Which certificate pair `server.tls` names.
    cert: usize,
}

const HEALTH_BEFORE: &str = "{interval: 1s, timeout: 1s, path: /health, unhealthy_threshold: 3, healthy_threshold: 2}";
const HEALTH_AFTER: &str = "{interval: 500ms, timeout: 400ms, path: /health, unhealthy_threshold: 2, \
                            healthy_threshold: 1, expected_statuses: [200], expect_body: ok}";

impl Plan {
    fn upstream_for(&self, target: Target) -> &'static str {
        match target {
            Target::Root => "default",
            Target::Api => self.api_route.unwrap_or("default"),
            Target::Shop if self.shop_route => "api",
            Target::Shop => "default",
        }
    }

    /// Whether `backend` may answer `target` under this configuration.
    fn serves(&self, target: Target, backend: &str) -> bool {
        match self.upstream_for(target) {
            "default" => self.web.iter().any(|(name, _)| *name == backend),
            "api" => backend == "api1",
            "alt" => backend == "api2",
            other => panic!("unknown upstream {other}"),
        }
    }

    fn yaml(&self, fleet: &BTreeMap<&str, SocketAddr>, certs: &[TestCerts]) -> String {
        let web: Vec<(&str, SocketAddr, u32)> = self.web.iter().map(|(n, w)| (*n, fleet[n], *w)).collect();
        let mut routes = Vec::new();
        if self.shop_route {
            routes.push(r#"  - {host: "localhost", path: "/shop/*", upstream: api}"#.to_owned());
        }
        if let Some(upstream) = self.api_route {
            routes.push(format!(r#"  - {{path: "/api/*", upstream: {upstream}}}"#));
        }
        let routes = if routes.is_empty() {
            "routes: []".to_owned()
        } else {
            format!("routes:\n{}", routes.join("\n"))
        };
        let tls = certs[self.cert].server_line();
        render_config(
            &[tls.as_str()],
            &format!(
                "admin: {{token: {TOKEN}}}\nbackends: {}\nload_balancer: {{algorithm: {}}}\nhealth_check: {}\n\
                 upstreams:\n  api: {{backends: {}}}\n  alt: {{backends: {}}}\n{routes}",
                backend_list(&web),
                self.algorithm,
                self.health_check,
                backend_list(&[("api1", fleet["api1"], 1)]),
                backend_list(&[("api2", fleet["api2"], 1)]),
            ),
        )
    }
}

/// The starting configuration, then each reload's configuration with what its report must mention.
fn plans() -> Vec<(Plan, &'static [&'static str])> {
    let start = Plan {
        web: vec![("web1", 1), ("web2", 1), ("web3", 1)],
        algorithm: "round_robin",
        api_route: Some("api"),
        shop_route: false,
        health_check: HEALTH_BEFORE,
        cert: 0,
    };
    let mut plans: Vec<(Plan, &'static [&'static str])> = vec![(start.clone(), &[])];
    let mut next = |change: &dyn Fn(&mut Plan), mentions: &'static [&'static str]| {
        let mut plan = plans.last().expect("a previous plan").0.clone();
        change(&mut plan);
        plans.push((plan, mentions));
    };
    next(&|p| p.web.push(("web4", 1)), &["backends added: default/web4"]);
    next(
        &|p| p.web.retain(|(n, _)| *n != "web1"),
        &["backends removed: default/web1"],
    );
    next(
        &|p| {
            p.algorithm = "weighted";
            p.web = vec![("web2", 3), ("web3", 1), ("web4", 1)];
        },
        &["backends changed: default/web2", "upstream settings changed: default"],
    );
    next(&|p| p.api_route = Some("alt"), &["routes: 1 -> 1"]);
    next(
        &|p| p.health_check = HEALTH_AFTER,
        &["upstream settings changed: default"],
    );
    // The same file, with a renewed certificate written over the files it names.
    next(&|_| {}, &["certificate replaced"]);
    next(
        &|p| {
            p.web = vec![("web2", 3), ("web3", 1), ("web5", 1)];
            p.shop_route = true;
        },
        &[
            "backends added: default/web5",
            "backends removed: default/web4",
            "routes: 1 -> 2",
        ],
    );
    next(&|p| p.cert = 1, &["certificate replaced", "settings changed: server"]);
    next(&|p| p.api_route = None, &["routes: 2 -> 1"]);
    next(
        &|p| p.web = vec![("web2", 3), ("web5", 1)],
        &["backends removed: default/web3"],
    );
    plans
}

/// One answered request of the load.
#[derive(Debug)]
struct Answer {
    protocol: usize,
    target: Target,
    /// Reloads finished when the request was sent: the configuration in force then.
    sent_under: usize,
    /// Reloads begun when the answer had arrived: the newest configuration the request could have met.
    latest: usize,
    backend: String,
}

/// What the load clients share with the test.
#[derive(Default)]
struct Load {
    stop: AtomicBool,
    begun: AtomicUsize,
    finished: AtomicUsize,
    last_reload: AtomicUsize,
    answered: [AtomicU64; 3],
    answered_under_last: AtomicU64,
    opened: [AtomicUsize; 3],
    answers: Mutex<Vec<Answer>>,
    failures: Mutex<Vec<String>>,
}

impl Load {
    fn running(&self) -> bool {
        !self.stop.load(Ordering::SeqCst)
    }

    fn sent_under(&self) -> usize {
        self.finished.load(Ordering::SeqCst)
    }

    fn fail(&self, what: String) {
        self.failures.lock().unwrap_or_else(PoisonError::into_inner).push(what);
    }

    fn failures(&self) -> Vec<String> {
        self.failures.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Records an answer; anything but a 200 from a named backend is a failure.
    fn answer(&self, protocol: usize, target: Target, sent_under: usize, status: StatusCode, backend: Option<&str>) {
        let latest = self.begun.load(Ordering::SeqCst);
        match backend {
            Some(backend) if status == StatusCode::OK => {
                self.answers
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(Answer {
                        protocol,
                        target,
                        sent_under,
                        latest,
                        backend: backend.to_owned(),
                    });
                self.answered[protocol].fetch_add(1, Ordering::SeqCst);
                if sent_under == self.last_reload.load(Ordering::SeqCst) {
                    self.answered_under_last.fetch_add(1, Ordering::SeqCst);
                }
            }
            _ => self.fail(format!(
                "{} GET {}: status {status}, backend {backend:?}",
                PROTOCOLS[protocol],
                target.path()
            )),
        }
    }

    fn answered(&self, protocol: usize) -> u64 {
        self.answered[protocol].load(Ordering::SeqCst)
    }
}

async fn open_h1(load: &Load, addr: SocketAddr) -> Connection {
    load.opened[H1].fetch_add(1, Ordering::SeqCst);
    Connection::open(addr).await
}

/// Sequential requests on one HTTP/1.1 connection of its own until the test stops the load; a failure ends
/// the task, since every later request would fail the same way.
async fn h1_client(load: Arc<Load>, addr: SocketAddr, task: usize) -> Connection {
    let mut connection = open_h1(&load, addr).await;
    let mut n = task;
    while load.running() {
        let target = Target::ALL[n % 3];
        n += 1;
        let sent_under = load.sent_under();
        match connection.get("localhost", target.path(), &[]).await {
            Ok(reply) => load.answer(H1, target, sent_under, reply.status, reply.header("x-backend")),
            Err(error) => {
                load.fail(format!("HTTP/1.1 task {task}: GET {}: {error}", target.path()));
                break;
            }
        }
    }
    connection
}

type H2Sender = hyper::client::conn::http2::SendRequest<Empty<Bytes>>;

/// One HTTP/2 connection over TLS (ALPN h2) and its driver task.
struct H2Connection {
    sender: H2Sender,
    driver: JoinHandle<Result<(), hyper::Error>>,
    authority: String,
}

impl H2Connection {
    async fn open(load: &Load, addr: SocketAddr, tls: Arc<rustls::ClientConfig>) -> Self {
        load.opened[H2].fetch_add(1, Ordering::SeqCst);
        let tcp = TcpStream::connect(addr).await.expect("connect to the HTTPS listener");
        let stream = tokio_rustls::TlsConnector::from(tls)
            .connect(ServerName::try_from(SERVER_NAME).expect("server name"), tcp)
            .await
            .expect("TLS handshake");
        assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]), "ALPN chose h2");
        let (sender, connection) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("HTTP/2 handshake");
        Self {
            sender,
            driver: tokio::spawn(connection),
            authority: format!("{SERVER_NAME}:{}", addr.port()),
        }
    }
}

async fn h2_get(
    sender: &mut H2Sender,
    authority: &str,
    path: &str,
) -> Result<(StatusCode, Option<String>), hyper::Error> {
    sender.ready().await?;
    let request = Request::get(format!("https://{authority}{path}"))
        .body(Empty::new())
        .expect("request");
    let response = sender.send_request(request).await?;
    let status = response.status();
    let backend = response
        .headers()
        .get("x-backend")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    response.into_body().collect().await?;
    Ok((status, backend))
}

/// Sequential requests on a shared HTTP/2 connection.
async fn h2_client(load: Arc<Load>, mut sender: H2Sender, authority: String, task: usize) {
    let mut n = task;
    while load.running() {
        let target = Target::ALL[n % 3];
        n += 1;
        let sent_under = load.sent_under();
        match h2_get(&mut sender, &authority, target.path()).await {
            Ok((status, backend)) => load.answer(H2, target, sent_under, status, backend.as_deref()),
            Err(error) => {
                load.fail(format!("HTTP/2 task {task}: GET {}: {error}", target.path()));
                return;
            }
        }
    }
}

/// Sequential requests on the shared long-lived QUIC connection.
async fn h3_client(load: Arc<Load>, mut sender: H3Sender, task: usize) {
    let mut n = task;
    while load.running() {
        let target = Target::ALL[n % 3];
        n += 1;
        let sent_under = load.sent_under();
        match sender.get(target.path()).await {
            Ok(reply) => load.answer(H3, target, sent_under, reply.status, reply.header("x-backend")),
            Err(error) => {
                load.fail(format!("HTTP/3 task {task}: GET {}: {error}", target.path()));
                return;
            }
        }
    }
}

/// The certificates a new QUIC handshake and a new TLS-over-TCP handshake are given now.
async fn presented_now(
    running: &Running,
    trusted: &[CertificateDer<'static>],
) -> (CertificateDer<'static>, CertificateDer<'static>) {
    let mut quic = H3Client::connect_with(quic_addr(running), quic_client_config_trusting(trusted))
        .await
        .expect("a new QUIC handshake");
    let on_quic = quic_presented(&quic.connection);
    let reply = quic.get("/").await.expect("a request on the new QUIC connection");
    assert_eq!(reply.status, StatusCode::OK);
    quic.close().await;
    let tls = Arc::new(client_config_trusting(trusted, &[b"h2"]));
    let tcp = TcpStream::connect(running.https_addr.expect("HTTPS listens"))
        .await
        .expect("connect to the HTTPS listener");
    let stream = tokio_rustls::TlsConnector::from(tls)
        .connect(ServerName::try_from(SERVER_NAME).expect("server name"), tcp)
        .await
        .expect("a new TLS handshake");
    let on_tcp = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .expect("the server presented a certificate")
        .clone()
        .into_owned();
    (on_quic, on_tcp)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_reloads_under_load_fail_no_request_and_drop_no_connection() {
    guarded_for(LOAD_GUARD, async {
        let fleet = fleet(&["web1", "web2", "web3", "web4", "web5", "api1", "api2"]);
        let certs = [TestCerts::generate(), TestCerts::generate()];
        let plans = plans();
        let last = plans.len() - 1;
        let file = ConfigFile::new(&plans[0].0.yaml(&fleet, &certs));
        let running = start_tls_proxy_from_file(&file.path).await;
        let admin = running.admin_addr.expect("the admin listener runs");
        assert_eq!(running.snapshot().generation, 1);

        let load = Arc::new(Load::default());
        load.last_reload.store(last, Ordering::SeqCst);
        let original = certs[0].certificate();
        let mut tasks_h1 = Vec::new();
        for task in 0..H1_TASKS {
            tasks_h1.push(tokio::spawn(h1_client(Arc::clone(&load), running.fallback_addr, task)));
        }
        let h2_tls = Arc::new(client_config_trusting(std::slice::from_ref(&original), &[b"h2"]));
        let mut h2_connections = Vec::new();
        let mut tasks_h2 = Vec::new();
        for connection in 0..H2_CONNECTIONS {
            let h2 = H2Connection::open(&load, running.https_addr.expect("HTTPS listens"), Arc::clone(&h2_tls)).await;
            for task in 0..H2_TASKS_PER_CONNECTION {
                tasks_h2.push(tokio::spawn(h2_client(
                    Arc::clone(&load),
                    h2.sender.clone(),
                    h2.authority.clone(),
                    connection * H2_TASKS_PER_CONNECTION + task,
                )));
            }
            h2_connections.push(h2);
        }
        load.opened[H3].fetch_add(1, Ordering::SeqCst);
        let mut long_lived = H3Client::connect(quic_addr(&running), &certs[0]).await;
        let quic_id = long_lived.connection.stable_id();
        let mut tasks_h3 = Vec::new();
        for task in 0..H3_TASKS {
            tasks_h3.push(tokio::spawn(h3_client(Arc::clone(&load), long_lived.sender.clone(), task)));
        }

        // Every protocol is under way before the first reload, and between any two.
        let mut marks = [0u64; 3];
        let mut through_api = 0;
        let mut renewed = None;
        for (step, (plan, mentions)) in plans.iter().enumerate() {
            if step > 0 {
                if step == 6 {
                    renewed = Some(certs[0].regenerate());
                }
                file.write(&plan.yaml(&fleet, &certs));
                load.begun.fetch_add(1, Ordering::SeqCst);
                let report = if step % 2 == 0 {
                    through_api += 1;
                    reload_api(admin).await
                } else {
                    reload_file(&running).await
                };
                load.finished.fetch_add(1, Ordering::SeqCst);
                assert_eq!(report.generation, step as u64 + 1, "{report:?}");
                assert!(report.restart_required.is_empty(), "step {step}: {report:?}");
                for mention in *mentions {
                    assert!(report.mentions(mention), "step {step}: no {mention:?} in {report:?}");
                }
                assert_eq!(running.snapshot().generation, step as u64 + 1);
            }
            for (protocol, mark) in marks.iter_mut().enumerate() {
                let target = *mark + ANSWERS_PER_STEP;
                let load = &load;
                wait_until(|| load.answered(protocol) >= target || !load.failures().is_empty()).await;
                *mark = load.answered(protocol);
            }
            assert_eq!(load.failures(), Vec::<String>::new(), "failures by step {step}");
            if step == 6 {
                let renewed = renewed.clone().expect("renewed at this step");
                let trusted = [original.clone(), renewed.clone()];
                let (on_quic, on_tcp) = presented_now(&running, &trusted).await;
                assert!(on_quic == renewed, "a new QUIC handshake after the renewal got the old certificate");
                assert!(on_tcp == renewed, "a new TLS handshake after the renewal got the old certificate");
            }
            if step == 8 {
                let other = certs[1].certificate();
                let trusted = [original.clone(), renewed.clone().expect("renewed"), other.clone()];
                let (on_quic, on_tcp) = presented_now(&running, &trusted).await;
                assert!(on_quic == other, "a new QUIC handshake did not get the newly named certificate");
                assert!(on_tcp == other, "a new TLS handshake did not get the newly named certificate");
            }
        }
        {
            let load = &load;
            wait_until(|| load.answered_under_last.load(Ordering::SeqCst) >= FINAL_ANSWERS || !load.failures().is_empty())
                .await;
        }
        load.stop.store(true, Ordering::SeqCst);

        let mut h1_connections = Vec::new();
        for task in tasks_h1 {
            h1_connections.push(task.await.expect("HTTP/1.1 client task"));
        }
        for task in tasks_h2.into_iter().chain(tasks_h3) {
            task.await.expect("client task");
        }
        assert_eq!(load.failures(), Vec::<String>::new(), "failed requests");

        // Every connection the load opened is still open and still serves.
        let mut kept = 0;
        for (index, connection) in h1_connections.iter_mut().enumerate() {
            assert!(!connection.task.is_finished(), "HTTP/1.1 connection {index} was closed");
            let reply = connection
                .get("localhost", "/still-open", &[])
                .await
                .unwrap_or_else(|e| panic!("HTTP/1.1 connection {index} after the reloads: {e}"));
            assert_eq!(reply.status, StatusCode::OK);
            kept += 1;
        }
        for (index, connection) in h2_connections.iter_mut().enumerate() {
            assert!(!connection.driver.is_finished(), "HTTP/2 connection {index} was closed");
            let (status, _) = h2_get(&mut connection.sender, &connection.authority, "/still-open")
                .await
                .unwrap_or_else(|e| panic!("HTTP/2 connection {index} after the reloads: {e}"));
            assert_eq!(status, StatusCode::OK);
            kept += 1;
        }
        assert!(
            long_lived.connection.close_reason().is_none(),
            "the long-lived QUIC connection closed: {:?}",
            long_lived.connection.close_reason()
        );
        assert_eq!(long_lived.connection.stable_id(), quic_id);
        let reply = long_lived.get("/still-open").await.expect("the long-lived QUIC connection still serves");
        assert_eq!(reply.status, StatusCode::OK);
        kept += 1;
        let opened: Vec<usize> = load.opened.iter().map(|o| o.load(Ordering::SeqCst)).collect();
        assert_eq!(opened, [H1_TASKS, H2_CONNECTIONS, 1], "connections opened per protocol");

        // Every answer came from a backend that the configuration in force when it was sent, or one that a
        // reload made current while it was in flight, routes its path to.
        let answers = std::mem::take(&mut *load.answers.lock().unwrap_or_else(PoisonError::into_inner));
        let mut wrong = Vec::new();
        for answer in &answers {
            let allowed = (answer.sent_under..=answer.latest).any(|g| plans[g].0.serves(answer.target, &answer.backend));
            if !allowed {
                wrong.push(format!("{answer:?}"));
            }
        }
        assert!(wrong.is_empty(), "{} answers from a backend no configuration in force routed to:\n{}", wrong.len(), wrong.join("\n"));

        let count = |backend: &str, under: &dyn Fn(usize) -> bool| {
            answers
                .iter()
                .filter(|a| a.backend == backend && under(a.sent_under))
                .count()
        };
        assert_eq!(count("web1", &|g| g >= 2), 0, "web1 answered after its removal");
        assert_eq!(count("web4", &|g| g >= 7), 0, "web4 answered after its removal");
        assert_eq!(count("web3", &|g| g >= 10), 0, "web3 answered after its removal");
        assert!(count("web4", &|g| (1..7).contains(&g)) > 0, "the added web4 got no traffic");
        assert!(count("web5", &|g| g >= 7) > 0, "the added web5 got no traffic");
        assert!(count("api2", &|g| (4..9).contains(&g)) > 0, "the re-routed /api/* never reached api2");
        assert!(count("api1", &|g| g >= 7) > 0, "the host route for /shop/* never reached api1");

        // The last configuration weighs web2 3 to web5's 1 in the default upstream, which now also gets /api/*.
        let (web2, web5) = (count("web2", &|g| g == last), count("web5", &|g| g == last));
        let ratio = web2 as f64 / web5.max(1) as f64;
        assert!(web2 + web5 >= 300, "too few answers under the last configuration: {web2} + {web5}");
        assert!((2.6..=3.4).contains(&ratio), "weights 3:1 gave web2 {web2}, web5 {web5}");

        let per_protocol: Vec<usize> = (0..3).map(|p| answers.iter().filter(|a| a.protocol == p).count()).collect();
        let spanning = answers.iter().filter(|a| a.sent_under != a.latest).count();
        let expected_connections = H1_TASKS + H2_CONNECTIONS + 1;
        println!(
            "reload under load: {} requests (HTTP/1.1 {}, HTTP/2 {}, HTTP/3 {}), 0 failed; {last} reloads \
             ({through_api} through POST /api/reload, {} through reload_from_file; added, removed and re-weighted \
             backends, re-routed paths and hosts, new health settings, a renewed and a newly named certificate); \
             {spanning} requests were in flight across a reload; connections opened {}, expected {expected_connections}, \
             still open and serving at the end {kept} (the HTTP/3 one carried {} requests); last configuration \
             web2:web5 = {web2}:{web5} for weights 3:1",
            answers.len(),
            per_protocol[H1],
            per_protocol[H2],
            per_protocol[H3],
            last - through_api,
            opened.iter().sum::<usize>(),
            per_protocol[H3],
        );
        drop(h1_connections);
        drop(h2_connections);
        long_lived.close().await;
        assert!(running.shutdown().await, "in-flight requests finished within the drain timeout");
    })
    .await;
}

// ---------------------------------------------------------------------------------------------------------
// A bad file changes nothing.
// ---------------------------------------------------------------------------------------------------------

/// The line (1-based) of `text` that is exactly `line`.
fn line_of(text: &str, line: &str) -> usize {
    text.lines()
        .position(|l| l == line)
        .unwrap_or_else(|| panic!("no line {line:?} in:\n{text}"))
        + 1
}

/// The proxy's state that a failed reload must leave alone.
#[derive(Debug, PartialEq)]
struct Applied {
    generation: u64,
    digest: String,
    info: (String, String),
}

async fn running_state(running: &Running, admin: SocketAddr) -> Applied {
    let snapshot = running.snapshot();
    Applied {
        generation: snapshot.generation,
        digest: snapshot.config.digest.clone(),
        info: config_info(&metrics_of(admin).await),
    }
}

async fn failed_reloads(admin: SocketAddr) -> f64 {
    sample_sum(
        &metrics_of(admin).await,
        "config_reloads_total",
        &[("result", "failure")],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_file_changes_nothing_and_says_where_it_is_wrong() {
    guarded_for(PROCESS_GUARD, async {
        let fleet = fleet(&["web1", "web2", "web3"]);
        let block = |weight2: u32, third: bool| {
            let mut backends = format!(
                "backends:\n  - name: web1\n    url: \"http://{}\"\n    weight: 1\n  - name: web2\n    url: \"http://{}\"\n    weight: {weight2}\n",
                fleet["web1"], fleet["web2"]
            );
            if third {
                backends.push_str(&format!("  - name: web3\n    url: \"http://{}\"\n    weight: 1\n", fleet["web3"]));
            }
            render_config(&[], &format!("admin: {{token: {TOKEN}}}\n{backends}"))
        };
        let good = block(1, false);
        let file = ConfigFile::new(&good);
        let running = start_proxy_from_file(&file.path).await;
        let admin = running.admin_addr.expect("the admin listener runs");
        let path = file.path.display().to_string();
        let before = running_state(&running, admin).await;
        assert_eq!(before.info, (before.digest.clone(), "1".to_owned()));
        assert_eq!(
            names_of(&answered_by(running.fallback_addr, "/", 4).await),
            BTreeSet::from(["web1", "web2"])
        );

        // (file text, what the message must contain after "<file>:")
        let unknown_key = format!("{good}load_balancer:\n  algoritm: weighted\n");
        let bad_value = format!("{good}timeouts:\n  connect: soon\n");
        let zero_weight = block(0, true);
        let broken_yaml = format!("{good}routes: [{{path: \"/x\", upstream: default}}\n");
        let cases: Vec<(String, String)> = vec![
            (
                unknown_key.clone(),
                format!(
                    "{path}:{}: load_balancer.algoritm: unknown field `algoritm`",
                    line_of(&unknown_key, "  algoritm: weighted")
                ),
            ),
            (
                bad_value.clone(),
                format!("{path}:{}: timeouts.connect: ", line_of(&bad_value, "  connect: soon")),
            ),
            // Cross-field checks run after parsing, and name the line and the key all the same.
            (
                zero_weight.clone(),
                format!(
                    "{path}:{}: backends[1].weight: must be at least 1",
                    line_of(&zero_weight, "    weight: 0")
                ),
            ),
            (broken_yaml, format!("{path}:")),
        ];
        // The counter is process-wide; no other test in this file makes a reload fail.
        let mut failures = failed_reloads(admin).await;
        for (text, expected) in &cases {
            file.write(text);
            let error = running
                .shared()
                .reload_from_file()
                .await
                .expect_err("an invalid file is not applied")
                .to_string();
            assert!(error.starts_with(expected.as_str()), "expected {expected:?}…, got {error:?}");
            if expected.ends_with(':') {
                let line = error[expected.len()..].split(':').next().unwrap_or_default();
                assert!(line.parse::<usize>().is_ok(), "no line number in {error:?}");
            }

            let reply = send_with_authorization(admin, "POST", "/api/reload", Some(&format!("Bearer {TOKEN}"))).await;
            assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{}", reply.text());
            let json: Value = serde_json::from_slice(&reply.body).expect("a JSON error");
            assert_eq!(json["error"], error.as_str(), "the API reports the same message");

            failures += 2.0;
            assert_eq!(failed_reloads(admin).await, failures, "config_reloads_total{{result=\"failure\"}}");
            assert_eq!(running_state(&running, admin).await, before, "after {expected:?}");
            assert_eq!(
                names_of(&answered_by(running.fallback_addr, "/", 4).await),
                BTreeSet::from(["web1", "web2"]),
                "traffic after {expected:?}"
            );
        }

        // Without the token nothing is reloaded, valid file or not.
        file.write(&block(1, true));
        for authorization in [None, Some("Bearer not-the-reload-token"), Some(TOKEN)] {
            let reply = send_with_authorization(admin, "POST", "/api/reload", authorization).await;
            assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{authorization:?}");
            assert_eq!(reply.header("www-authenticate"), Some("Bearer"));
        }
        assert_eq!(running_state(&running, admin).await, before);

        let started = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .expect("after 1970")
            .as_secs_f64();
        let report = reload_api(admin).await;
        assert_eq!(report.generation, 2);
        assert!(report.mentions("backends added: default/web3"), "{report:?}");
        assert_ne!(report.digest, before.digest);
        let metrics = metrics_of(admin).await;
        assert_eq!(config_info(&metrics), (report.digest.clone(), "2".to_owned()));
        let last_success = sample_sum(&metrics, "config_last_reload_success_timestamp_seconds", &[]);
        assert!(last_success >= started.floor(), "last success {last_success}, reload at {started}");
        assert_eq!(sample_sum(&metrics, "config_reloads_total", &[("result", "failure")]), failures);
        assert_eq!(
            names_of(&answered_by(running.fallback_addr, "/", 6).await),
            BTreeSet::from(["web1", "web2", "web3"])
        );
        assert!(running.shutdown().await);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reload_api_is_refused_without_an_admin_token_configured() {
    guarded(async {
        let fleet = fleet(&["web1"]);
        let file = ConfigFile::new(&render_config(
            &[],
            &format!("backends: {}", backend_list(&[("web1", fleet["web1"], 1)])),
        ));
        let running = start_proxy_from_file(&file.path).await;
        let admin = running.admin_addr.expect("the admin listener runs");
        let reply = send_with_authorization(admin, "POST", "/api/reload", Some(&format!("Bearer {TOKEN}"))).await;
        assert_eq!(reply.status, StatusCode::FORBIDDEN, "{}", reply.text());
        assert_eq!(running.snapshot().generation, 1);
        assert!(running.shutdown().await);
    })
    .await;
}

// ---------------------------------------------------------------------------------------------------------
// Backends that keep their identity keep their state.
// ---------------------------------------------------------------------------------------------------------

fn backend(running: &Running, upstream: &str, name: &str) -> Arc<Backend> {
    running
        .snapshot()
        .backend(upstream, name)
        .cloned()
        .unwrap_or_else(|| panic!("no backend {upstream}/{name}"))
}

/// Tells a demo backend to answer its health checks with `status`.
async fn set_health(addr: SocketAddr, status: u16) {
    let reply = send_with_authorization(addr, "POST", &format!("/control/health/{status}"), None).await;
    assert_eq!(reply.status, StatusCode::OK);
}

/// A POST of `path` whose body stays open until the returned sender is dropped: the request is in flight.
fn held_request(
    addr: SocketAddr,
    path: &str,
) -> (
    tokio::sync::mpsc::Sender<Bytes>,
    JoinHandle<Result<http::Response<hyper::body::Incoming>, hyper_util::client::legacy::Error>>,
) {
    let (sender, body) = held_body();
    let client = Client::builder(TokioExecutor::new()).build_http::<TestBody>();
    let request = Request::post(format!("http://{addr}{path}"))
        .header(http::header::HOST, "localhost")
        .body(body)
        .expect("request");
    (sender, tokio::spawn(async move { client.request(request).await }))
}

/// Sends the rest of a held request's body and reads the demo backend's answer: who answered and how many
/// body bytes it received.
async fn finish_held(
    sender: tokio::sync::mpsc::Sender<Bytes>,
    response: JoinHandle<Result<http::Response<hyper::body::Incoming>, hyper_util::client::legacy::Error>>,
) -> (String, u64) {
    sender
        .send(Bytes::from_static(b"second half"))
        .await
        .expect("send the rest of the body");
    drop(sender);
    let response = response
        .await
        .expect("request task")
        .expect("the held request is answered");
    assert_eq!(response.status(), StatusCode::OK);
    let backend = response.headers()["x-backend"].to_str().expect("name").to_owned();
    let body = response.into_body().collect().await.expect("the whole body").to_bytes();
    let json: Value = serde_json::from_slice(&body).expect("the demo backend's JSON");
    (backend, json["body_bytes"].as_u64().expect("body_bytes"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backends_keep_health_drain_and_in_flight_across_reloads() {
    guarded_for(PROCESS_GUARD, async {
        let fleet = fleet(&["a", "b", "c", "d", "f", "h1", "g1", "g2"]);
        let yaml = |main: &[&str], initial_state: &str, healthy_threshold: u32, swap: &str| {
            let main: Vec<(&str, SocketAddr, u32)> = main.iter().map(|n| (*n, fleet[n], 1)).collect();
            let side_health = "{interval: 1s, timeout: 1s}";
            render_config(
                &[],
                &format!(
                    "admin: {{token: {TOKEN}}}\nbackends: {}\nload_balancer: {{algorithm: round_robin}}\n\
                     health_check: {{interval: 200ms, timeout: 200ms, unhealthy_threshold: 1, \
                     healthy_threshold: {healthy_threshold}, initial_state: {initial_state}}}\n\
                     upstreams:\n  hold: {{backends: {}, health_check: {side_health}}}\n  \
                     swap: {{backends: {}, health_check: {side_health}}}\n\
                     routes:\n  - {{path: \"/hold/*\", upstream: hold}}\n  - {{path: \"/swap/*\", upstream: swap}}",
                    backend_list(&main),
                    backend_list(&[("h1", fleet["h1"], 1)]),
                    backend_list(&[(swap, fleet[swap], 1)]),
                ),
            )
        };
        let file = ConfigFile::new(&yaml(&["a", "b", "c"], "healthy", 1, "g1"));
        let running = start_proxy_from_file(&file.path).await;
        let admin = running.admin_addr.expect("the admin listener runs");

        // b fails its probes and is taken out by them; c is drained through the API.
        let (a, b, c) = (
            backend(&running, "default", "a"),
            backend(&running, "default", "b"),
            backend(&running, "default", "c"),
        );
        set_health(fleet["b"], 503).await;
        wait_until(|| !b.health.is_healthy()).await;
        let reply = send_with_authorization(
            admin,
            "POST",
            "/api/backends/default/c/drain",
            Some(&format!("Bearer {TOKEN}")),
        )
        .await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        assert!(c.is_drained());

        // One request in flight on h1, which stays, and one on g1, which the reload removes.
        let (h1, g1) = (backend(&running, "hold", "h1"), backend(&running, "swap", "g1"));
        let (hold_sender, hold_response) = held_request(running.fallback_addr, "/hold/upload");
        let (swap_sender, swap_response) = held_request(running.fallback_addr, "/swap/upload");
        hold_sender
            .send(Bytes::from_static(b"first half, "))
            .await
            .expect("send");
        swap_sender
            .send(Bytes::from_static(b"first half, "))
            .await
            .expect("send");
        wait_until(|| h1.in_flight() == 1 && g1.in_flight() == 1).await;

        // d is new and fails its probes; the upstream's new initial_state is unhealthy.
        set_health(fleet["d"], 503).await;
        file.write(&yaml(&["a", "b", "c", "d"], "unhealthy", 10, "g2"));
        let report = reload_file(&running).await;
        for mention in ["backends added: default/d, swap/g2", "backends removed: swap/g1"] {
            assert!(report.mentions(mention), "{report:?}");
        }
        let snapshot = running.snapshot();
        let same = |upstream: &str, name: &str, was: &Arc<Backend>| {
            let now = snapshot
                .backend(upstream, name)
                .unwrap_or_else(|| panic!("{name} is gone"));
            assert!(
                Arc::ptr_eq(now, was),
                "{upstream}/{name} is a new object after the reload"
            );
        };
        same("default", "a", &a);
        same("default", "b", &b);
        same("default", "c", &c);
        same("hold", "h1", &h1);
        assert!(a.health.is_healthy(), "a lost its health to the new initial_state");
        assert!(!b.health.is_healthy(), "b's probe verdict was forgotten");
        assert!(c.is_drained(), "c's drain was forgotten");
        assert_eq!(h1.in_flight(), 1, "h1's in-flight count was reset");
        assert!(snapshot.backend("swap", "g1").is_none(), "g1 was not removed");
        assert_eq!(g1.in_flight(), 1, "the removed g1 still has its request in flight");
        let d = backend(&running, "default", "d");
        assert!(!d.health.is_healthy(), "d did not start per initial_state: unhealthy");
        let api: Value = serde_json::from_slice(&admin_get(admin, "/api/backends").await.body).expect("JSON");
        let view = |name: &str| {
            api["backends"]
                .as_array()
                .expect("backends")
                .iter()
                .find(|v| v["upstream"] == "default" && v["name"] == name)
                .cloned()
                .unwrap_or_else(|| panic!("{name} missing from {api}"))
        };
        assert_eq!(view("c")["drained"], true);
        assert_eq!(view("b")["state"], "unhealthy");
        assert_eq!(view("d")["state"], "unhealthy");

        let seen = answered_by(running.fallback_addr, "/", 12).await;
        assert_eq!(
            names_of(&seen),
            BTreeSet::from(["a"]),
            "only a is healthy and not drained: {seen:?}"
        );
        let seen = answered_by(running.fallback_addr, "/swap/next", 3).await;
        assert_eq!(names_of(&seen), BTreeSet::from(["g2"]));

        assert_eq!(finish_held(hold_sender, hold_response).await, ("h1".to_owned(), 23));
        assert_eq!(finish_held(swap_sender, swap_response).await, ("g1".to_owned(), 23));
        wait_until(|| h1.in_flight() == 0 && g1.in_flight() == 0).await;

        // f is new under initial_state: healthy, with 10 good probes needed to become healthy otherwise
        // (two seconds at least): healthy right after the reload means it started so. d keeps its state.
        file.write(&yaml(&["a", "b", "c", "d", "f"], "healthy", 10, "g2"));
        let report = reload_file(&running).await;
        assert!(report.mentions("backends added: default/f"), "{report:?}");
        let f = backend(&running, "default", "f");
        assert!(f.health.is_healthy(), "f did not start per initial_state: healthy");
        assert!(!d.health.is_healthy(), "d was reset to the new initial_state");
        assert!(Arc::ptr_eq(&backend(&running, "default", "d"), &d));
        let seen = answered_by(running.fallback_addr, "/", 12).await;
        assert_eq!(names_of(&seen), BTreeSet::from(["a", "f"]), "{seen:?}");

        // The carried-over b still follows its probes.
        set_health(fleet["b"], 200).await;
        wait_until(|| b.health.is_healthy()).await;
        assert!(Arc::ptr_eq(&backend(&running, "default", "b"), &b));
        let seen = answered_by(running.fallback_addr, "/", 12).await;
        assert_eq!(names_of(&seen), BTreeSet::from(["a", "b", "f"]), "{seen:?}");
        assert!(running.shutdown().await);
    })
    .await;
}

// ---------------------------------------------------------------------------------------------------------
// Settings that need new sockets.
// ---------------------------------------------------------------------------------------------------------

/// A TLS config with the given listen addresses, QUIC connection ID length and web1's weight (web2 has 1).
fn restart_yaml(
    certs: &TestCerts,
    fleet: &BTreeMap<&str, SocketAddr>,
    server_address: &str,
    metrics_address: &str,
    connection_id_length: u32,
    web1_weight: u32,
) -> String {
    format!(
        "server:\n  address: \"{server_address}\"\n  fallback_address: \"127.0.0.1:0\"\n  drain_timeout: 10s\n  {}\n\
         quic: {{connection_id_length: {connection_id_length}}}\n\
         telemetry:\n  metrics:\n    address: \"{metrics_address}\"\n  logging:\n    level: warn\n\
         backends: {}\nload_balancer: {{algorithm: weighted}}\n",
        certs.server_line(),
        backend_list(&[("web1", fleet["web1"], web1_weight), ("web2", fleet["web2"], 1)]),
    )
}

async fn refused(addr: SocketAddr) -> bool {
    matches!(TcpStream::connect(addr).await, Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused)
}

const NEEDS_RESTART: [&str; 3] = [
    "server.address",
    "quic.connection_id_length",
    "telemetry.metrics.address",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_that_need_new_sockets_are_reported_and_the_rest_applies() {
    guarded_for(PROCESS_GUARD, async {
        let fleet = fleet(&["web1", "web2"]);
        let certs = TestCerts::generate();
        let file = ConfigFile::new(&restart_yaml(&certs, &fleet, "127.0.0.1:0", "127.0.0.1:0", 8, 1));
        let running = start_tls_proxy_from_file(&file.path).await;
        let admin = running.admin_addr.expect("the admin listener runs");
        let https = running.https_addr.expect("HTTPS listens");
        let mut before = H3Client::connect(quic_addr(&running), &certs).await;
        assert_eq!(before.get("/").await.expect("GET").status, StatusCode::OK);

        let (new_server, new_admin) = (dead_port_addr(), dead_port_addr());
        file.write(&restart_yaml(
            &certs,
            &fleet,
            &new_server.to_string(),
            &new_admin.to_string(),
            12,
            3,
        ));
        let report = running
            .shared()
            .reload_from_file()
            .await
            .unwrap_or_else(|e| panic!("reload: {e}"));
        let listed: BTreeSet<&str> = report.restart_required.iter().map(String::as_str).collect();
        assert_eq!(listed, BTreeSet::from(NEEDS_RESTART), "{report}");
        let summary = report.to_string();
        for key in NEEDS_RESTART {
            assert!(
                summary.contains(&format!("{key} changed: restart to apply")),
                "{summary}"
            );
        }
        assert!(summary.contains("backends changed: default/web1"), "{summary}");
        assert_eq!(backend(&running, "default", "web1").weight(), 3);

        // The listeners stay where they were; nothing listens at the new addresses.
        assert!(refused(new_server).await, "something listens at the new server.address");
        assert!(
            refused(new_admin).await,
            "something listens at the new telemetry.metrics.address"
        );
        assert_eq!(admin_get(admin, "/live").await.text(), "live\n");
        assert_eq!(running.https_addr, Some(https));
        let (_, on_tcp) = presented_now(&running, &[certs.certificate()]).await;
        assert!(on_tcp == certs.certificate());

        // The weight applies at once: 3:1 over the open QUIC connection and plain HTTP/1.1 together.
        let mut counts = answered_by(running.fallback_addr, "/", 100).await;
        for _ in 0..100 {
            let reply = before
                .get("/")
                .await
                .expect("GET on the connection opened before the reload");
            assert_eq!(reply.status, StatusCode::OK);
            *counts.entry(reply.backend().to_owned()).or_insert(0) += 1;
        }
        let (web1, web2) = (counts["web1"], counts["web2"]);
        assert!((140..=160).contains(&web1), "weights 3:1 gave web1 {web1}, web2 {web2}");
        before.close().await;
        assert!(running.shutdown().await);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_setting_that_needs_a_restart_stays_reported_until_the_restart() {
    guarded_for(PROCESS_GUARD, async {
        let fleet = fleet(&["web1", "web2"]);
        let certs = TestCerts::generate();
        let file = ConfigFile::new(&restart_yaml(&certs, &fleet, "127.0.0.1:0", "127.0.0.1:0", 8, 1));
        let running = start_tls_proxy_from_file(&file.path).await;
        let (new_server, new_admin) = (dead_port_addr(), dead_port_addr());
        let pending = |weight| {
            restart_yaml(
                &certs,
                &fleet,
                &new_server.to_string(),
                &new_admin.to_string(),
                12,
                weight,
            )
        };
        file.write(&pending(2));
        let first = reload_file(&running).await;
        assert_eq!(
            first
                .restart_required
                .iter()
                .map(String::as_str)
                .collect::<BTreeSet<_>>(),
            BTreeSet::from(NEEDS_RESTART)
        );

        // Another change to the same file: the listeners are still the old ones, so the restart is still due.
        file.write(&pending(3));
        let second = reload_file(&running).await;
        assert!(second.mentions("backends changed: default/web1"), "{second:?}");
        assert_eq!(
            second
                .restart_required
                .iter()
                .map(String::as_str)
                .collect::<BTreeSet<_>>(),
            BTreeSet::from(NEEDS_RESTART),
            "the running listeners still differ from the file"
        );
        assert!(running.shutdown().await);
    })
    .await;
}

// ---------------------------------------------------------------------------------------------------------
// The binary: SIGHUP, the admin API, the log level, --watch.
// ---------------------------------------------------------------------------------------------------------

/// A config for the binary: plain HTTP/1.1 and the admin listener on OS-assigned ports, JSON logs at
/// `level`, and `rest` at top level.
fn process_yaml(level: &str, rest: &str) -> String {
    format!(
        "server:\n  fallback_address: \"127.0.0.1:0\"\n  drain_timeout: 5s\n\
         telemetry:\n  metrics:\n    address: \"127.0.0.1:0\"\n  logging:\n    level: {level}\n    format: json\n\
         {rest}\n"
    )
}

fn message(line: &Value) -> &str {
    line["message"].as_str().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_whole_file_and_logs_what_changed() {
    guarded_for(PROCESS_GUARD, async {
        let fleet = fleet(&["web1", "web2"]);
        let one = process_yaml(
            "info",
            &format!("backends: {}", backend_list(&[("web1", fleet["web1"], 1)])),
        );
        let two = process_yaml(
            "info",
            &format!(
                "backends: {}",
                backend_list(&[("web1", fleet["web1"], 1), ("web2", fleet["web2"], 1)])
            ),
        );
        let file = ConfigFile::new(&one);
        let mut proxy = ProxyProcess::start(&file.path, &[]).await;
        let admin = proxy.admin_addr();
        assert_eq!(api_backends(admin).await, default_backends(&["web1"]));

        file.write(&two);
        proxy.signal("HUP").await;
        let line = proxy
            .wait_for_log(
                |l| message(l).contains("SIGHUP") && message(l).contains("(generation 2)"),
                "the SIGHUP reload line",
            )
            .await;
        assert_eq!(line["level"], "INFO", "{line}");
        let summary = message(&line);
        assert!(
            summary.contains("(generation 2): backends added: default/web2"),
            "{summary}"
        );
        assert_eq!(api_backends(admin).await, default_backends(&["web1", "web2"]));
        assert_eq!(
            names_of(&answered_by(proxy.fallback, "/", 4).await),
            BTreeSet::from(["web1", "web2"])
        );

        let bad = format!("{two}load_balancer:\n  algoritm: weighted\n");
        file.write(&bad);
        proxy.signal("HUP").await;
        let line = proxy
            .wait_for_log(
                |l| message(l).contains("SIGHUP") && message(l).contains("not reloaded"),
                "the SIGHUP refusal",
            )
            .await;
        assert_eq!(line["level"], "ERROR", "{line}");
        let expected = format!(
            "{}:{}: load_balancer.algoritm: unknown field `algoritm`",
            file.path.display(),
            line_of(&bad, "  algoritm: weighted")
        );
        assert!(message(&line).contains(&expected), "expected {expected:?} in {line}");
        assert_eq!(api_backends(admin).await, default_backends(&["web1", "web2"]));
        let metrics = metrics_of(admin).await;
        assert_eq!(config_info(&metrics).1, "2");
        assert_eq!(
            sample_sum(&metrics, "config_reloads_total", &[("result", "failure")]),
            1.0
        );
        assert_eq!(
            sample_sum(&metrics, "config_reloads_total", &[("result", "success")]),
            1.0
        );
        let status = proxy.terminate().await;
        assert_eq!(status.code(), Some(0), "{status}");
        drop(file);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reload_api_needs_the_token_and_a_new_log_level_applies_at_once() {
    guarded_for(PROCESS_GUARD, async {
        let fleet = fleet(&["web1"]);
        let rest = format!(
            "admin: {{token: {TOKEN}}}\nbackends: {}",
            backend_list(&[("web1", fleet["web1"], 1)])
        );
        let file = ConfigFile::new(&process_yaml("info", &rest));
        let mut proxy = ProxyProcess::start(&file.path, &[]).await;
        let admin = proxy.admin_addr();

        file.write(&process_yaml("warn", &rest));
        for authorization in [None, Some("Bearer wrong-token-wrong-token".to_owned())] {
            let reply = send_with_authorization(admin, "POST", "/api/reload", authorization.as_deref()).await;
            assert_eq!(
                reply.status,
                StatusCode::UNAUTHORIZED,
                "{authorization:?}: {}",
                reply.text()
            );
            assert_eq!(reply.header("www-authenticate"), Some("Bearer"));
        }
        assert_eq!(
            config_info(&metrics_of(admin).await).1,
            "1",
            "reloaded without the token"
        );

        let report = reload_api(admin).await;
        assert_eq!(report.generation, 2);
        assert!(report.mentions("settings changed: telemetry"), "{report:?}");
        assert!(report.restart_required.is_empty(), "{report:?}");

        // At warn an access line (info) is not written; the error of the next, invalid, reload is, and
        // lines come out in order, so once it is read any access line for this request would have been.
        let reply = HttpClient::new(proxy.fallback).get("/quiet-at-warn").await;
        assert_eq!(reply.status, StatusCode::OK);
        let bad = format!("{}load_balancer:\n  algoritm: weighted\n", process_yaml("warn", &rest));
        file.write(&bad);
        let reply = send_with_authorization(admin, "POST", "/api/reload", Some(&format!("Bearer {TOKEN}"))).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST);
        let json: Value = serde_json::from_slice(&reply.body).expect("a JSON error");
        let expected = format!(
            "{}:{}: load_balancer.algoritm: unknown field `algoritm`",
            file.path.display(),
            line_of(&bad, "  algoritm: weighted")
        );
        assert!(
            json["error"].as_str().is_some_and(|e| e.starts_with(&expected)),
            "expected {expected:?}…, got {json}"
        );
        let line = proxy
            .wait_for_log(|l| message(l).contains("not reloaded"), "the admin API's refusal")
            .await;
        assert_eq!(line["level"], "ERROR", "{line}");
        let quiet: Vec<&String> = proxy.seen.iter().filter(|l| l.contains("/quiet-at-warn")).collect();
        assert!(quiet.is_empty(), "an access line was written at level warn: {quiet:?}");

        file.write(&process_yaml("info", &rest));
        assert_eq!(reload_api(admin).await.generation, 3);
        let reply = HttpClient::new(proxy.fallback).get("/loud-at-info").await;
        assert_eq!(reply.status, StatusCode::OK);
        let line = proxy
            .wait_for_log(
                |l| l["target"] == "access" && l["path"] == "/loud-at-info",
                "the access line of /loud-at-info",
            )
            .await;
        assert_eq!(line["status"], 200, "{line}");
        let status = proxy.terminate().await;
        assert_eq!(status.code(), Some(0), "{status}");
    })
    .await;
}

/// A directory laid out like a mounted Kubernetes ConfigMap: `proxy.yaml -> ..data/proxy.yaml`,
/// `..data -> ..<timestamp>`, updated by writing a new timestamped directory and renaming a new `..data`
/// symlink over the old one, then removing the old directory.
struct ConfigMap {
    dir: TempDir,
    version: u32,
}

impl ConfigMap {
    fn new(yaml: &str) -> Self {
        let mut map = Self {
            dir: tempfile::tempdir().expect("create a temporary directory"),
            version: 0,
        };
        map.publish(yaml);
        std::os::unix::fs::symlink("..data/proxy.yaml", map.path()).expect("link proxy.yaml");
        map
    }

    fn path(&self) -> PathBuf {
        self.dir.path().join("proxy.yaml")
    }

    fn version_dir(version: u32) -> String {
        format!("..2026_12_02_10_{:02}_00.{:09}", version, 100 + version)
    }

    fn publish(&mut self, yaml: &str) {
        self.version += 1;
        let name = Self::version_dir(self.version);
        let data = self.dir.path().join(&name);
        std::fs::create_dir(&data).expect("create the new data directory");
        std::fs::write(data.join("proxy.yaml"), yaml).expect("write the new config");
        let staged = self.dir.path().join("..data_tmp");
        std::os::unix::fs::symlink(&name, &staged).expect("link the new data directory");
        std::fs::rename(&staged, self.dir.path().join("..data")).expect("swap ..data atomically");
        if self.version > 1 {
            std::fs::remove_dir_all(self.dir.path().join(Self::version_dir(self.version - 1)))
                .expect("remove the old data directory");
        }
    }
}

/// Polls `/api/backends` until it lists exactly `names` in the default upstream.
async fn wait_for_backends(admin: SocketAddr, names: &[&str]) {
    let wanted = default_backends(names);
    while api_backends(admin).await != wanted {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_follows_a_configmap_symlink_swap_and_ignores_a_bad_update() {
    guarded_for(PROCESS_GUARD, async {
        let fleet = fleet(&["web1", "web2", "web3"]);
        let config = |names: &[&str]| {
            let list: Vec<(&str, SocketAddr, u32)> = names.iter().map(|n| (*n, fleet[n], 1)).collect();
            process_yaml("info", &format!("backends: {}", backend_list(&list)))
        };
        let mut map = ConfigMap::new(&config(&["web1"]));
        let path = map.path();
        let mut proxy = ProxyProcess::start(&path, &["--watch"]).await;
        let admin = proxy.admin_addr();
        // The admin listener runs on the control thread, where the watcher was queued before it: once it
        // answers, the watcher has taken its first look at the file.
        assert_eq!(api_backends(admin).await, default_backends(&["web1"]));

        map.publish(&config(&["web1", "web2"]));
        wait_for_backends(admin, &["web1", "web2"]).await;
        let line = proxy
            .wait_for_log(|l| message(l).contains("(generation 2)"), "the watcher's reload line")
            .await;
        assert_eq!(line["level"], "INFO", "{line}");
        assert!(message(&line).contains("backends added: default/web2"), "{line}");

        let bad = format!("{}timeouts:\n  connect: soon\n", config(&["web3"]));
        map.publish(&bad);
        let line = proxy
            .wait_for_log(|l| message(l).contains("not reloaded"), "the watcher's refusal")
            .await;
        assert_eq!(line["level"], "ERROR", "{line}");
        let expected = format!(
            "{}:{}: timeouts.connect: ",
            path.display(),
            line_of(&bad, "  connect: soon")
        );
        assert!(message(&line).contains(&expected), "expected {expected:?} in {line}");
        assert_eq!(api_backends(admin).await, default_backends(&["web1", "web2"]));
        assert_eq!(config_info(&metrics_of(admin).await).1, "2");
        assert_eq!(
            names_of(&answered_by(proxy.fallback, "/", 4).await),
            BTreeSet::from(["web1", "web2"])
        );

        map.publish(&config(&["web3"]));
        wait_for_backends(admin, &["web3"]).await;
        assert_eq!(config_info(&metrics_of(admin).await).1, "3");
        assert_eq!(
            names_of(&answered_by(proxy.fallback, "/", 2).await),
            BTreeSet::from(["web3"])
        );
        let status = proxy.terminate().await;
        assert_eq!(status.code(), Some(0), "{status}");
    })
    .await;
}
