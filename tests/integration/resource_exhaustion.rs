//! The proxy's own exhaustion is never a backend's fault: a proxy process out of file descriptors answers
//! 503 to requests it cannot connect upstream for, logs why, and keeps the backend's health record clean,
//! so that once descriptors are free again the same backend answers at once.

use std::time::Duration;

use crate::support::*;
use http::StatusCode;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// The descriptor limit the proxy runs under: enough to start (listeners, epoll, the runtime's own), few
/// enough that a few dozen client connections use up the rest.
const NOFILE: u32 = 64;

/// Client connections opened to use up the proxy's descriptors; more than `NOFILE`, so some always wait.
const FLOOD: usize = 80;

/// Reads one HTTP/1.1 response head and returns its status line.
async fn status_line(stream: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n") {
        let read = stream.read(&mut byte).await.expect("read the response");
        assert!(read > 0, "the proxy closed the connection before answering: {head:?}");
        head.push(byte[0]);
    }
    String::from_utf8_lossy(&head).trim_end().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_out_of_descriptors_answers_503_and_spares_the_backend() {
    guarded_for(Duration::from_secs(90), async {
        let backend = start_backends(&["fd-only"])[0];
        let dir = tempfile::tempdir().expect("create a temporary directory");
        let config = dir.path().join("proxy.yaml");
        // One passive failure would eject the only backend: a request after the flood proves none counted.
        let yaml = format!(
            "server:\n  fallback_address: \"127.0.0.1:0\"\n  workers: 1\n  drain_timeout: 2s\n\
             telemetry:\n  metrics:\n    address: \"127.0.0.1:0\"\n  logging:\n    level: info\n    format: json\n\
             upstreams:\n  fd:\n    backends: [{{name: fd-only, url: \"http://{backend}\"}}]\n    \
             health_check: {{enabled: false, passive: {{unhealthy_threshold: 1, reactivation: 1h, max_ejection: 1h}}}}\n\
             routes:\n  - {{path: \"/*\", upstream: fd}}\n"
        );
        std::fs::write(&config, yaml).expect("write the config");
        let nofile = format!("--nofile={NOFILE}");
        let mut proxy = ProxyProcess::start_under(&["prlimit", &nofile, "--"], &config, &[]).await;

        // The first connection is accepted before any of the flood (the listen queue is in order), and sends
        // its request only once the proxy has no descriptor left, so its upstream connection cannot be made.
        let mut first = TcpStream::connect(proxy.fallback).await.expect("connect");
        let mut flood = Vec::new();
        for _ in 0..FLOOD {
            flood.push(TcpStream::connect(proxy.fallback).await.expect("connect (queued if not accepted)"));
        }
        proxy
            .wait_for_log(
                |line| {
                    line["message"]
                        .as_str()
                        .is_some_and(|m| m.starts_with("accept failed") && m.contains("Too many open files"))
                },
                "accept failed: Too many open files",
            )
            .await;
        first
            .write_all(b"GET /exhausted HTTP/1.1\r\nhost: fd.test\r\n\r\n")
            .await
            .expect("send the request");
        assert_eq!(status_line(&mut first).await, "HTTP/1.1 503 Service Unavailable");
        let logged = proxy
            .wait_for_log(
                |line| {
                    line["message"]
                        .as_str()
                        .is_some_and(|m| m.contains("the proxy is out of resources"))
                },
                "out of resources",
            )
            .await;
        assert_eq!(logged["backend"], "fd-only", "{logged}");
        assert!(
            !proxy.seen.iter().any(|line| line.contains("unhealthy") || line.contains("ejected")),
            "the backend was charged with the proxy's exhaustion:\n{}",
            proxy.seen.join("\n")
        );

        // Descriptors free again: the same backend answers, and its record shows no failure.
        drop(first);
        drop(flood);
        let client = HttpClient::new(proxy.fallback);
        let reply = client.get("/after").await;
        assert_eq!((reply.status, reply.backend()), (StatusCode::OK, "fd-only"), "{}", reply.text());
        let metrics = HttpClient::new(proxy.admin_addr()).get("/metrics").await;
        assert_eq!(
            sample_sum(metrics.text(), "backend_health", &[("backend", "fd-only")]),
            1.0,
            "{}",
            metrics.text()
        );
        proxy.kill().await;
    })
    .await;
}

/// Reads until the peer closes the connection; true when it did so without sending anything.
async fn closed_silently(stream: &mut TcpStream) -> bool {
    let mut buffer = [0u8; 64];
    matches!(stream.read(&mut buffer).await, Ok(0) | Err(_))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_connections_beyond_max_connections_are_closed_on_accept() {
    guarded(async {
        let backend = start_backends(&["mc-only"])[0];
        let running = start_proxy(&render_config(
            &["max_connections: 3"],
            &format!("backends: {}\n", backend_list(&[("mc-only", backend, 1)])),
        ))
        .await;
        let request = b"GET / HTTP/1.1\r\nhost: limit.test\r\n\r\n";

        // Three connections, each proven admitted by an answer, and kept open.
        let mut admitted = Vec::new();
        for _ in 0..3 {
            let mut stream = TcpStream::connect(running.fallback_addr).await.expect("connect");
            stream.write_all(request).await.expect("send");
            assert_eq!(status_line(&mut stream).await, "HTTP/1.1 200 OK");
            admitted.push(stream);
        }
        // The fourth is accepted by the kernel and closed by the proxy before it reads a byte.
        let mut fourth = TcpStream::connect(running.fallback_addr).await.expect("connect");
        let _ = fourth.write_all(request).await;
        assert!(closed_silently(&mut fourth).await, "a fourth connection was served");
        let metrics = HttpClient::new(running.admin_addr.expect("admin listener"))
            .get("/metrics")
            .await;
        assert_eq!(sample_sum(metrics.text(), "tcp_connections_refused_total", &[]), 1.0);

        // One closed gives its slot back once the proxy has seen it close.
        drop(admitted.pop());
        let admin = HttpClient::new(running.admin_addr.expect("admin listener"));
        let mut open = f64::NAN;
        for _ in 0..500 {
            let metrics = admin.get("/metrics").await;
            open = sample_sum(metrics.text(), "connections_open", &[("protocol", "http/1.1")]);
            if open == 2.0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(open, 2.0, "the closed connection is still counted");
        let mut fifth = TcpStream::connect(running.fallback_addr).await.expect("connect");
        fifth.write_all(request).await.expect("send");
        let answered = status_line(&mut fifth).await == "HTTP/1.1 200 OK";
        assert!(answered, "no connection admitted after one closed");
    })
    .await;
}
