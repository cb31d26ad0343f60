//! Binary upgrades: SIGUSR2 (or `POST /api/upgrade`) starts the binary again with the listening sockets;
//! the new process serves new connections at once, the old one finishes its TCP requests and keeps its QUIC
//! connections (the new process hands it their datagrams) until they close, then exits 0. A new process that
//! fails to start leaves the old one serving. Each test runs the real binary and follows both processes
//! through their log lines, which share the old process's stderr.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use crate::support::http3::*;
use crate::support::*;
use http::StatusCode;
use serde_json::Value;
use tempfile::TempDir;

const TOKEN: &str = "upgrade-test-token";

/// Two processes started, handshakes, a drain, in a debug build next to other tests.
const UPGRADE_GUARD: Duration = Duration::from_secs(120);

/// A proxy binary with TLS and two workers in front of one demo backend, its config in a file the test can
/// rewrite.
struct Setup {
    certs: TestCerts,
    dir: TempDir,
    config: PathBuf,
    yaml: String,
}

impl Setup {
    fn new() -> Self {
        let certs = TestCerts::generate();
        let backend = start_backends(&["origin"])[0];
        let dir = tempfile::tempdir().expect("a temporary directory");
        let config = dir.path().join("proxy.yaml");
        let yaml = format!(
            "server:\n  address: \"127.0.0.1:0\"\n  fallback_address: \"127.0.0.1:0\"\n  workers: 2\n  drain_timeout: 30s\n  {}\n\
             admin:\n  token: {TOKEN}\n\
             telemetry:\n  metrics:\n    address: \"127.0.0.1:0\"\n  logging:\n    level: info\n    format: json\n\
             backends: {}\n",
            certs.server_line(),
            backend_list(&[("origin", backend, 1)]),
        );
        std::fs::write(&config, &yaml).expect("write the config");
        Self {
            certs,
            dir,
            config,
            yaml,
        }
    }

    fn break_config(&self) {
        std::fs::write(&self.config, format!("{}no_such_key: 1\n", self.yaml)).expect("write the config");
    }

    fn mend_config(&self) {
        std::fs::write(&self.config, &self.yaml).expect("write the config");
    }

    fn path(&self) -> &Path {
        let _ = self.dir.path();
        &self.config
    }
}

/// A process the old one started, which the test did not: stopped when the test ends, however it ends.
struct Successor(u32);

impl Successor {
    /// SIGTERM, then waits until the process is gone (its drain included).
    async fn terminate(self) {
        let pid = self.0;
        let status = tokio::process::Command::new("kill")
            .arg("-TERM")
            .arg(pid.to_string())
            .status()
            .await
            .expect("run kill");
        assert!(status.success(), "kill -TERM {pid}");
        let proc = PathBuf::from(format!("/proc/{pid}"));
        wait_until(|| !proc.exists()).await;
        std::mem::forget(self);
    }
}

impl Drop for Successor {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill")
            .arg("-KILL")
            .arg(self.0.to_string())
            .status();
    }
}

/// Sends SIGUSR2 and waits until the old process says the new one serves; returns the new one.
async fn upgrade(old: &mut ProxyProcess) -> Successor {
    old.signal("USR2").await;
    let line = old
        .wait_for_log(
            |l| message(l).starts_with("upgrade: the new process serves"),
            "the hand-over to the new process",
        )
        .await;
    let pid = line["pid"]
        .as_u64()
        .and_then(|p| u32::try_from(p).ok())
        .expect("the new process's pid");
    assert_ne!(Some(pid), old.child.id(), "the new process is another process");
    Successor(pid)
}

fn message(line: &Value) -> &str {
    line["message"].as_str().unwrap_or_default()
}

/// `/api/state` of whichever process holds the admin listener now.
async fn admin_state(admin: SocketAddr) -> Value {
    let reply = HttpClient::new(admin).get("/api/state").await;
    assert_eq!(reply.status, StatusCode::OK);
    serde_json::from_slice(&reply.body).expect("the state is JSON")
}

async fn metric(admin: SocketAddr, name: &str, labels: &[(&str, &str)]) -> f64 {
    let reply = HttpClient::new(admin).get("/metrics").await;
    assert_eq!(reply.status, StatusCode::OK);
    sample_sum(reply.text(), name, labels)
}

async fn h3_ok(client: &mut H3Client, path: &str) {
    let reply = client
        .get(path)
        .await
        .unwrap_or_else(|e| panic!("{path}: {e} (connection: {:?})", client.connection.close_reason()));
    assert_eq!((reply.status, reply.backend()), (StatusCode::OK, "origin"), "{path}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_keeps_quic_connections_and_new_connections_reach_the_new_process() {
    guarded_for(UPGRADE_GUARD, async {
        let setup = Setup::new();
        let mut old = ProxyProcess::start(setup.path(), &[]).await;
        let (quic, admin) = (old.quic.expect("QUIC listens"), old.admin_addr());
        let old_pid = admin_state(admin).await["pid"].as_u64();
        let mut before = H3Client::connect(quic, &setup.certs).await;
        h3_ok(&mut before, "/before").await;

        let successor = upgrade(&mut old).await;
        assert_eq!(
            admin_state(admin).await["pid"].as_u64(),
            Some(u64::from(successor.0)),
            "the admin listener is the new process's"
        );
        assert_ne!(old_pid, Some(u64::from(successor.0)));

        // The connection opened before the upgrade goes on, through the old process.
        for n in 0..10 {
            h3_ok(&mut before, &format!("/during/{n}")).await;
        }
        assert!(
            metric(
                admin,
                "quic_packets_handed_off_total",
                &[("result", "previous_process")]
            )
            .await
                >= 1.0,
            "the new process passed nothing to the old one"
        );
        // New connections, over every listener, reach the new process.
        let mut after = H3Client::connect(quic, &setup.certs).await;
        h3_ok(&mut after, "/after").await;
        let reply = HttpClient::new(old.fallback).get("/after-http1").await;
        assert_eq!(reply.status, StatusCode::OK);
        assert!(
            metric(admin, "http_requests_total", &[("protocol", "h3")]).await >= 1.0,
            "the new process counted no HTTP/3 request"
        );
        assert!(
            old.child.try_wait().expect("the old process's status").is_none(),
            "the old process left early"
        );
        // Only one previous process is reachable: another upgrade waits until this one has left.
        let reply = send_with_authorization(admin, "POST", "/api/upgrade", Some(&format!("Bearer {TOKEN}"))).await;
        assert_eq!(reply.status, StatusCode::INTERNAL_SERVER_ERROR, "{}", reply.text());
        assert!(reply.text().contains("still serves"), "{}", reply.text());

        // Once its last connection closes, the old process exits 0.
        before.close().await;
        let line = old
            .wait_for_log(
                |l| message(l) == "upgrade: this process is done",
                "the old process's end",
            )
            .await;
        assert_eq!(line["quic_closed"], true, "{line}");
        let status = old.child.wait().await.expect("wait for the old process");
        assert_eq!(status.code(), Some(0), "{status}");
        h3_ok(&mut after, "/after-the-old-one-left").await;
        successor.terminate().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_process_that_fails_to_start_leaves_the_old_one_serving() {
    guarded_for(UPGRADE_GUARD, async {
        let setup = Setup::new();
        let mut old = ProxyProcess::start(setup.path(), &[]).await;
        let (quic, admin) = (old.quic.expect("QUIC listens"), old.admin_addr());
        let mut before = H3Client::connect(quic, &setup.certs).await;
        h3_ok(&mut before, "/before").await;

        setup.break_config();
        old.signal("USR2").await;
        let line = old
            .wait_for_log(|l| message(l).starts_with("upgrade failed"), "the failed upgrade")
            .await;
        assert!(message(&line).contains("exit status: 64"), "{line}");
        // Through the API too, with the reason in the answer.
        let bearer = format!("Bearer {TOKEN}");
        let reply = send_with_authorization(admin, "POST", "/api/upgrade", Some(&bearer)).await;
        assert_eq!(reply.status, StatusCode::INTERNAL_SERVER_ERROR, "{}", reply.text());
        assert!(reply.text().contains("exited"), "{}", reply.text());

        // Nothing changed: the old connection, new connections, every listener.
        h3_ok(&mut before, "/still").await;
        let mut fresh = H3Client::connect(quic, &setup.certs).await;
        h3_ok(&mut fresh, "/fresh").await;
        assert_eq!(HttpClient::new(old.fallback).get("/fresh").await.status, StatusCode::OK);
        assert_eq!(admin_state(admin).await["pid"].as_u64(), old.child.id().map(u64::from));

        // Mended, `quic-proxy upgrade` (the same API, with the config's token) upgrades.
        setup.mend_config();
        let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_quic-proxy"))
            .arg("upgrade")
            .arg("--config")
            .arg(setup.path())
            // The config's admin address is port 0: the one the proxy was given is passed.
            .arg("--admin")
            .arg(admin.to_string())
            .output()
            .await
            .expect("run quic-proxy upgrade");
        assert!(output.status.success(), "{output:?}");
        let json: Value = serde_json::from_slice(&output.stdout).expect("the new process, as JSON");
        let successor = Successor(json["pid"].as_u64().and_then(|p| u32::try_from(p).ok()).expect("pid"));
        assert_eq!(admin_state(admin).await["pid"].as_u64(), Some(u64::from(successor.0)));
        before.close().await;
        fresh.close().await;
        let status = old.child.wait().await.expect("wait for the old process");
        assert_eq!(status.code(), Some(0), "{status}");
        successor.terminate().await;
    })
    .await;
}

/// Requests each load task makes after the upgrade before it stops.
const AFTER_UPGRADE: usize = 30;
const H1_TASKS: usize = 4;
const H3_TASKS: usize = 2;

#[derive(Default)]
struct Load {
    answered: AtomicUsize,
    upgraded: AtomicBool,
    failures: Mutex<Vec<String>>,
}

impl Load {
    fn fail(&self, what: String) {
        self.failures.lock().unwrap_or_else(PoisonError::into_inner).push(what);
    }

    fn failures(&self) -> Vec<String> {
        self.failures.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_request_fails_while_the_binary_is_upgraded_under_load() {
    guarded_for(UPGRADE_GUARD, async {
        let setup = Setup::new();
        let mut old = ProxyProcess::start(setup.path(), &[]).await;
        let (quic, fallback) = (old.quic.expect("QUIC listens"), old.fallback);
        let load = Arc::new(Load::default());
        let mut tasks = Vec::new();
        for task in 0..H1_TASKS {
            let load = Arc::clone(&load);
            tasks.push(tokio::spawn(async move {
                // Keep-alive connections from a pool, as a browser or an HTTP library keeps them.
                let client = HttpClient::new(fallback);
                let mut after = 0;
                for n in 0.. {
                    let upgraded = load.upgraded.load(Ordering::SeqCst);
                    let reply = client.try_get(&format!("/h1/{task}/{n}")).await;
                    match reply {
                        Ok(reply) if reply.status == StatusCode::OK => {}
                        Ok(reply) => load.fail(format!("HTTP/1.1 {task}/{n}: {}", reply.status)),
                        Err(error) => load.fail(format!("HTTP/1.1 {task}/{n}: {error}")),
                    }
                    load.answered.fetch_add(1, Ordering::SeqCst);
                    if upgraded {
                        after += 1;
                        if after == AFTER_UPGRADE {
                            return;
                        }
                    }
                }
            }));
        }
        for task in 0..H3_TASKS {
            let (load, certs) = (Arc::clone(&load), setup.certs.quic_client_config());
            tasks.push(tokio::spawn(async move {
                // One connection through the upgrade, then a new one, as a client opens after an idle close.
                let mut client = H3Client::connect_with(quic, certs.clone())
                    .await
                    .expect("QUIC handshake");
                let mut after = 0;
                for n in 0.. {
                    let upgraded = load.upgraded.load(Ordering::SeqCst);
                    match client.get(&format!("/h3/{task}/{n}")).await {
                        Ok(reply) if reply.status == StatusCode::OK => {}
                        Ok(reply) => load.fail(format!("HTTP/3 {task}/{n}: {}", reply.status)),
                        Err(error) => load.fail(format!("HTTP/3 {task}/{n}: {error}")),
                    }
                    load.answered.fetch_add(1, Ordering::SeqCst);
                    if upgraded {
                        after += 1;
                        if after == AFTER_UPGRADE / 2 {
                            client.close().await;
                            client = H3Client::connect_with(quic, certs.clone())
                                .await
                                .expect("QUIC handshake");
                        }
                        if after == AFTER_UPGRADE {
                            client.close().await;
                            return;
                        }
                    }
                }
            }));
        }
        {
            let load = &load;
            wait_until(|| load.answered.load(Ordering::SeqCst) >= 100).await;
        }
        let successor = upgrade(&mut old).await;
        load.upgraded.store(true, Ordering::SeqCst);
        for task in tasks {
            task.await.expect("a load task");
        }
        assert_eq!(load.failures(), Vec::<String>::new(), "failed requests");
        let status = old.child.wait().await.expect("wait for the old process");
        assert_eq!(status.code(), Some(0), "{status}");
        println!(
            "upgrade under load: {} requests over HTTP/1.1 and HTTP/3, none failed",
            load.answered.load(Ordering::SeqCst)
        );
        successor.terminate().await;
    })
    .await;
}
