//! Failover under load: a backend killed with SIGKILL while GETs keep flowing costs the clients nothing,
//! because failed attempts are retried on the other backends and passive checks eject the dead one.

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::*;
use http::{Request, StatusCode};
use http_body_util::BodyExt as _;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::{Child, Command};

/// Starts `quic-proxy backend` as a child process and reads its address from its startup log line.
async fn spawn_backend(name: &str) -> (Child, SocketAddr) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_quic-proxy"))
        .args(["backend", "--listen", "127.0.0.1:0", "--name", name])
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start a demo backend process");
    let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
    let addr = loop {
        let line = lines
            .next_line()
            .await
            .expect("read the backend's log")
            .unwrap_or_else(|| panic!("backend {name} exited before listening"));
        let Ok(event) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        if event["message"] == "demo backend listening" {
            break event["address"]
                .as_str()
                .expect("an address field")
                .parse()
                .expect("a socket address");
        }
    };
    // Keeps reading so a chatty backend never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killing_one_of_three_backends_under_load_fails_no_get() {
    guarded(async {
        let names = ["kill-a", "kill-b", "kill-c"];
        let mut children = Vec::new();
        let mut addrs = Vec::new();
        for name in names {
            let (child, addr) = spawn_backend(name).await;
            children.push(child);
            addrs.push(addr);
        }
        let yaml = format!(
            "upstreams:\n  failover:\n    backends: {}\n    health_check: {{interval: 200ms, timeout: 200ms}}\n\
             routes:\n  - {{path: \"/*\", upstream: failover}}\n",
            equal_backends(&names, &addrs)
        );
        let running = start_proxy(&render_config(&[], &yaml)).await;
        let target = running.fallback_addr;

        const TOTAL: usize = 2_000;
        const KILL_AFTER: usize = 300;
        let budget = Duration::from_secs(10);
        let started = Instant::now();
        let issued = Arc::new(AtomicUsize::new(0));
        let succeeded = Arc::new(AtomicUsize::new(0));
        let killed = Arc::new(AtomicBool::new(false));
        let after_kill = Arc::new(AtomicUsize::new(0));
        let failures = Arc::new(Mutex::new(Vec::<String>::new()));
        let served_by_victim = Arc::new(AtomicUsize::new(0));

        let workers: Vec<_> = (0..4)
            .map(|_| {
                let (issued, succeeded, killed, after_kill, failures, served_by_victim) = (
                    Arc::clone(&issued),
                    Arc::clone(&succeeded),
                    Arc::clone(&killed),
                    Arc::clone(&after_kill),
                    Arc::clone(&failures),
                    Arc::clone(&served_by_victim),
                );
                tokio::spawn(async move {
                    let client = Client::builder(TokioExecutor::new()).build_http::<TestBody>();
                    while issued.fetch_add(1, Ordering::Relaxed) < TOTAL && started.elapsed() < budget {
                        let was_killed = killed.load(Ordering::Relaxed);
                        let request = Request::get(format!("http://{target}/"))
                            .body(empty())
                            .expect("request");
                        let outcome = match client.request(request).await {
                            Ok(response) => {
                                let status = response.status();
                                let backend = response
                                    .headers()
                                    .get("x-backend")
                                    .and_then(|v| v.to_str().ok())
                                    .unwrap_or_default()
                                    .to_owned();
                                match response.into_body().collect().await {
                                    Ok(_) if status == StatusCode::OK => Ok(backend),
                                    Ok(body) => Err(format!("{status}: {:?}", body.to_bytes())),
                                    Err(error) => Err(format!("{status}, body failed: {error}")),
                                }
                            }
                            Err(error) => Err(format!("request failed: {error:?}")),
                        };
                        match outcome {
                            Ok(backend) => {
                                succeeded.fetch_add(1, Ordering::Relaxed);
                                if was_killed {
                                    after_kill.fetch_add(1, Ordering::Relaxed);
                                }
                                if backend == "kill-b" && !was_killed {
                                    served_by_victim.fetch_add(1, Ordering::Relaxed);
                                }
                            }
                            Err(failure) => failures.lock().expect("failures").push(failure),
                        }
                    }
                })
            })
            .collect();

        // Kill partway through, once the load is flowing.
        wait_until(|| succeeded.load(Ordering::Relaxed) >= KILL_AFTER || workers.iter().all(|w| w.is_finished())).await;
        let victim = &mut children[1];
        victim.start_kill().expect("SIGKILL the backend");
        killed.store(true, Ordering::Relaxed);
        victim.wait().await.expect("the backend exits");

        for worker in workers {
            worker.await.expect("a load worker panicked");
        }
        let failures = std::mem::take(&mut *failures.lock().expect("failures"));
        assert!(
            failures.is_empty(),
            "{} failed GETs: {:?}",
            failures.len(),
            &failures[..failures.len().min(10)]
        );
        assert!(
            served_by_victim.load(Ordering::Relaxed) > 0,
            "the killed backend served nothing before"
        );
        assert!(
            after_kill.load(Ordering::Relaxed) > 0,
            "no request completed after the kill ({} in all)",
            succeeded.load(Ordering::Relaxed)
        );
        let victim = backend_of_failover(&running, "kill-b");
        wait_until(|| !victim.health.is_healthy()).await;
    })
    .await;
}

fn backend_of_failover(running: &quic_proxy::app::Running, name: &str) -> Arc<quic_proxy::balancer::Backend> {
    running.snapshot().upstreams()[0]
        .backends
        .iter()
        .find(|b| b.name == name)
        .cloned()
        .expect("a backend of that name")
}
