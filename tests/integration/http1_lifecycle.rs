//! Connections over time: keep-alive, protocol upgrades, large streamed bodies and graceful shutdown.

use std::io;
use std::time::Duration;

use crate::support::*;
use bytes::Bytes;
use futures_util::{stream, StreamExt as _};
use http::header::HOST;
use http::{Request, StatusCode};
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_serves_many_requests_on_one_connection() {
    guarded(async {
        let running = proxy_with_backends(&["ka1", "ka2"], "round_robin").await;
        let mut connection = Connection::open(running.fallback_addr).await;
        for i in 0..10 {
            let path = format!("/req/{i}");
            let reply = connection
                .get("app.test", &path, &[])
                .await
                .unwrap_or_else(|e| panic!("request {i} on the kept-alive connection: {e}"));
            assert_eq!(reply.status, StatusCode::OK);
            assert_eq!(reply.json()["path"], path.as_str());
            assert_eq!(reply.backend(), if i % 2 == 0 { "ka1" } else { "ka2" });
        }
        assert!(
            !connection.task.is_finished(),
            "the proxy closed a healthy keep-alive connection"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_tunnels_bytes_both_ways() {
    guarded(async {
        let running = proxy_with_backends(&["ws"], "round_robin").await;
        let mut stream = TcpStream::connect(running.fallback_addr)
            .await
            .expect("connect to the proxy");
        stream
            .write_all(
                // A protocol of the demo backend's that echoes raw bytes (its WebSocket echo speaks frames).
                b"GET /ws HTTP/1.1\r\nHost: app.test\r\nConnection: Upgrade\r\nUpgrade: byte-echo\r\n\r\n",
            )
            .await
            .expect("send the upgrade request");
        let head = read_head(&mut stream).await;
        assert!(head.starts_with("HTTP/1.1 101 "), "{head:?}");
        let lower = head.to_ascii_lowercase();
        assert!(lower.contains("upgrade: byte-echo"), "{head:?}");

        // Several round trips, one larger than a socket read, all through the same tunnel.
        let large: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        for message in [&b"hello tunnel"[..], &b"second message"[..], &large[..]] {
            stream.write_all(message).await.expect("write into the tunnel");
            let mut echoed = vec![0u8; message.len()];
            stream
                .read_exact(&mut echoed)
                .await
                .expect("echo comes back through the tunnel");
            assert!(echoed == message, "echo differs from what was sent");
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tunnel_silent_both_ways_for_the_idle_timeout_is_closed() {
    guarded(async {
        let addrs = start_backends(&["ws"]);
        let running = start_proxy(&render_config(
            &["idle_timeout: 1s"],
            &format!("backends: {}", equal_backends(&["ws"], &addrs)),
        ))
        .await;
        let mut stream = TcpStream::connect(running.fallback_addr)
            .await
            .expect("connect to the proxy");
        stream
            .write_all(b"GET /ws HTTP/1.1\r\nHost: app.test\r\nConnection: Upgrade\r\nUpgrade: byte-echo\r\n\r\n")
            .await
            .expect("send the upgrade request");
        let head = read_head(&mut stream).await;
        assert!(head.starts_with("HTTP/1.1 101 "), "{head:?}");
        stream.write_all(b"ping").await.expect("write into the tunnel");
        let mut echoed = [0u8; 4];
        stream.read_exact(&mut echoed).await.expect("the echo");
        let silent_since = std::time::Instant::now();
        // Nothing more either way: the proxy closes the tunnel once it has been silent for the idle timeout.
        let mut rest = Vec::new();
        let read = stream.read_to_end(&mut rest).await;
        assert!(
            matches!(read, Ok(0)) || read.is_err(),
            "the tunnel ended with {read:?}, {rest:?}"
        );
        assert!(
            silent_since.elapsed() >= Duration::from_millis(900),
            "closed after {:?}, before the idle timeout",
            silent_since.elapsed()
        );
    })
    .await;
}

const LARGE: usize = 64 * 1024 * 1024;
const CHUNK: usize = 64 * 1024;
/// Streaming 64 MiB through unoptimised builds, hashing it on both ends, takes a while.
const LARGE_GUARD: Duration = Duration::from_secs(120);

/// Pseudo-random bytes from which upload chunks are cut at varying offsets, so a reordered, repeated
/// or dropped chunk changes the digest.
fn source_block() -> Bytes {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let block: Vec<u8> = (0..(1 << 20))
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect();
    Bytes::from(block)
}

fn upload_chunk(block: &Bytes, index: usize) -> Bytes {
    let offset = (index * 7919) % (block.len() - CHUNK);
    block.slice(offset..offset + CHUNK)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn large_upload_streams_intact() {
    guarded_for(LARGE_GUARD, async {
        let running = proxy_with_backends(&["sink"], "round_robin").await;
        let block = source_block();
        let mut expected = Sha256::new();
        for index in 0..LARGE / CHUNK {
            expected.update(upload_chunk(&block, index));
        }
        let expected = format!("{:x}", expected.finalize());

        // Generated lazily, chunk by chunk: the body is never held in memory as a whole.
        let chunks = stream::iter(0..LARGE / CHUNK)
            .map(move |index| Ok::<_, BoxError>(Frame::data(upload_chunk(&block, index))));
        let body = BodyExt::boxed(StreamBody::new(chunks));
        let client = HttpClient::new(running.fallback_addr);
        let request = client
            .request("POST", "/upload")
            .header(HOST, "app.test")
            .body(body)
            .expect("request");
        let reply = client.send(request).await;
        assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
        let json = reply.json();
        assert_eq!(json["body_bytes"], LARGE as u64);
        assert_eq!(json["body_sha256"], expected.as_str());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn large_download_arrives_complete() {
    guarded_for(LARGE_GUARD, async {
        let running = proxy_with_backends(&["source"], "round_robin").await;
        let mut connection = Connection::open(running.fallback_addr).await;
        let request = Request::builder()
            .uri(format!("/bytes/{LARGE}"))
            .header(HOST, "app.test")
            .body(empty())
            .expect("request");
        let reply = connection.send(request).await.expect("download");
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.header("content-length"), Some("67108864"));
        assert_eq!(reply.body.len(), LARGE);
        assert!(reply.body.iter().all(|&b| b == b'x'), "the demo backend sends only `x`");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_finishes_in_flight_request_then_refuses_connections() {
    guarded(async {
        let running = proxy_with_backends(&["drain"], "round_robin").await;
        let addr = running.fallback_addr;
        let backend = running.snapshot().upstreams()[0].backends[0].clone();

        let mut connection = Connection::open(addr).await;
        let slow = tokio::spawn(async move {
            connection
                .get("app.test", "/?delay_ms=500", &[])
                .await
                .expect("the in-flight request completes")
        });
        wait_until(|| backend.in_flight() == 1).await;

        assert!(running.shutdown().await, "shutdown reported requests left unfinished");
        let reply = slow.await.expect("client task");
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.backend(), "drain");

        let refused = TcpStream::connect(addr).await;
        assert!(
            matches!(&refused, Err(e) if e.kind() == io::ErrorKind::ConnectionRefused),
            "connecting after shutdown: {refused:?}"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_idle_connections_without_waiting() {
    guarded(async {
        let addrs = start_backends(&["idle"]);
        // A drain timeout far below the header read timeout: shutdown reports false if it waits for a
        // connection that is not in the middle of a request.
        let running = start_proxy(&render_config(
            &["drain_timeout: 3s", "header_read_timeout: 60s"],
            &format!("backends: {}", equal_backends(&["idle"], &addrs)),
        ))
        .await;
        let addr = running.fallback_addr;

        let mut kept_alive = Connection::open(addr).await;
        let reply = kept_alive
            .get("app.test", "/", &[])
            .await
            .expect("request before shutdown");
        assert_eq!(reply.status, StatusCode::OK);
        // A client that connected and has not sent anything yet; a round trip on another connection
        // cannot prove the proxy accepted it, so wait until a request after it has been served.
        let mut silent = TcpStream::connect(addr).await.expect("connect");
        let mut probe = Connection::open(addr).await;
        probe
            .get("app.test", "/", &[])
            .await
            .expect("request after the silent connection was accepted");

        assert!(running.shutdown().await, "shutdown waited for idle connections");
        let mut rest = Vec::new();
        let closed = tokio::time::timeout(CLOSE_BOUND, silent.read_to_end(&mut rest)).await;
        assert!(closed.is_ok(), "the silent connection is still open after shutdown");
        let finished = tokio::time::timeout(CLOSE_BOUND, kept_alive.task)
            .await
            .expect("the kept-alive connection ended after shutdown");
        assert!(finished.is_ok(), "client connection task panicked");
    })
    .await;
}

/// A config whose plain listener is on `fallback` (the rest on ports from the OS), with two workers.
fn two_workers_on(fallback: &str, reuse_port: bool, backend: std::net::SocketAddr) -> String {
    render_config(
        &["workers: 2", &format!("reuse_port: {reuse_port}")],
        &format!("backends: {}", equal_backends(&["shared"], &[backend])),
    )
    .replace(
        "fallback_address: \"127.0.0.1:0\"",
        &format!("fallback_address: \"{fallback}\""),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_instance_on_a_taken_address_fails_unless_both_share_it() {
    guarded(async {
        let backend = start_backends(&["shared"])[0];
        let first = start_proxy(&two_workers_on("127.0.0.1:0", false, backend)).await;
        let taken = first.fallback_addr.to_string();
        let config = quic_proxy::Config::parse(
            std::path::Path::new("second.yaml"),
            &two_workers_on(&taken, false, backend),
        )
        .expect("the second config is valid");
        let refused = quic_proxy::app::start(config, None).await;
        let error = refused.expect_err("an address another instance holds must stop start-up");
        assert!(format!("{error:#}").contains("server.fallback_address"), "{error:#}");

        let sharing = start_proxy(&two_workers_on("127.0.0.1:0", true, backend)).await;
        let joined = start_proxy(&two_workers_on(&sharing.fallback_addr.to_string(), true, backend)).await;
        assert_eq!(joined.fallback_addr, sharing.fallback_addr);
        let reply = HttpClient::new(joined.fallback_addr).get("/").await;
        assert_eq!((reply.status, reply.backend()), (StatusCode::OK, "shared"));
    })
    .await;
}

/// A backend that counts the connections it accepts and answers `/length`, `/chunked`, `/trailers` and
/// `/empty` with bodies framed that way.
fn counting_backend() -> (std::net::SocketAddr, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let listener = bind_loopback();
    let addr = listener.local_addr().expect("backend address");
    let accepted = std::sync::Arc::new(AtomicUsize::new(0));
    let counter = std::sync::Arc::clone(&accepted);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::Relaxed);
            let service = hyper::service::service_fn(|request: Request<hyper::body::Incoming>| async move {
                let chunks = |trailers: bool| {
                    let mut frames: Vec<Result<Frame<Bytes>, io::Error>> = vec![
                        Ok(Frame::data(Bytes::from_static(b"chunk one "))),
                        Ok(Frame::data(Bytes::from_static(b"chunk two"))),
                    ];
                    if trailers {
                        let mut map = http::HeaderMap::new();
                        map.insert("x-checksum", http::HeaderValue::from_static("abc"));
                        frames.push(Ok(Frame::trailers(map)));
                    }
                    BodyExt::boxed(StreamBody::new(stream::iter(frames)))
                };
                let body = match request.uri().path() {
                    "/length" => http_body_util::Full::new(Bytes::from_static(b"sixteen bytes..."))
                        .map_err(|never| match never {})
                        .boxed(),
                    "/chunked" => chunks(false),
                    "/trailers" => chunks(true),
                    _ => http_body_util::Empty::new().map_err(|never| match never {}).boxed(),
                };
                Ok::<_, io::Error>(http::Response::new(body))
            });
            tokio::spawn(async move {
                let io = hyper_util::rt::TokioIo::new(stream);
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(io, service)
                    .await;
            });
        }
    });
    (addr, accepted)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_connections_are_reused_whatever_the_response_framing() {
    guarded(async {
        let (backend, accepted) = counting_backend();
        let running = start_proxy(&render_config(
            &["workers: 1"],
            &format!("backends: [{{name: counted, url: \"http://{backend}\"}}]"),
        ))
        .await;
        let mut connection = Connection::open(running.fallback_addr).await;
        for round in 0..25 {
            for path in ["/length", "/chunked", "/trailers", "/empty"] {
                let reply = connection
                    .get("app.test", path, &[])
                    .await
                    .unwrap_or_else(|e| panic!("{path} in round {round}: {e}"));
                assert_eq!(reply.status, StatusCode::OK, "{path}");
            }
        }
        // One worker sends the 100 requests one after another: one connection serves them all.
        assert_eq!(accepted.load(std::sync::atomic::Ordering::Relaxed), 1);
    })
    .await;
}
