//! The HTTP/3 listener end to end: a real quinn + h3 client against the proxy's QUIC listener, with demo
//! or raw-socket backends, all on OS-assigned loopback ports and a certificate generated per test.
//!
//! Not covered here: requests the h3 client cannot produce. It builds requests from `http::Request`, so
//! uppercase field names, unknown or repeated pseudo-headers and pseudo-headers after regular fields
//! never reach the wire.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::support::http3::*;
use crate::support::*;
use bytes::Bytes;
use h3::error::StreamError;
use http::header::{HeaderName, HeaderValue};
use http::{Request, StatusCode};
use http_body_util::{BodyExt as _, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use quic_proxy::app::Running;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::sync::watch;

/// Bulk-transfer tests move tens of MiB through unoptimised builds of quinn, h3 and hyper.
const BULK_GUARD: Duration = Duration::from_secs(120);

/// A config with TLS from `certs`, `quic` as the `quic` section (a YAML flow map, or empty) and `rest`
/// (backends and so on) at top level.
fn tls_config(certs: &TestCerts, quic: &str, rest: &str) -> String {
    let tls = certs.server_line();
    let quic = if quic.is_empty() {
        String::new()
    } else {
        format!("\nquic: {quic}")
    };
    render_config(&[tls.as_str()], &format!("{rest}{quic}"))
}

/// A proxy with TLS in front of demo backends named `names`, round robin.
async fn demo_proxy(names: &[&str], quic: &str) -> (Running, TestCerts) {
    let certs = TestCerts::generate();
    let addrs = start_backends(names);
    let running = start_tls_proxy(&tls_config(
        &certs,
        quic,
        &format!(
            "backends: {}\nload_balancer: {{algorithm: round_robin}}",
            equal_backends(names, &addrs)
        ),
    ))
    .await;
    (running, certs)
}

/// A proxy with TLS whose only backend is `backend`.
async fn proxy_to(backend: SocketAddr, quic: &str) -> (Running, TestCerts) {
    let certs = TestCerts::generate();
    let running = start_tls_proxy(&tls_config(
        &certs,
        quic,
        &format!("backends: {}", backend_list(&[("only", backend, 1)])),
    ))
    .await;
    (running, certs)
}

const HOP_BY_HOP: [&str; 6] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "upgrade",
    "te",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_is_proxied_with_forwarding_headers() {
    guarded(async {
        let (running, certs) = demo_proxy(&["h3a"], "").await;
        let mut client = H3Client::connect(quic_addr(&running), &certs).await;
        let reply = client.get("/hello?x=1").await.expect("GET over HTTP/3");
        assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
        assert_eq!(reply.backend(), "h3a");
        let json = reply.json();
        assert_eq!(json["method"], "GET");
        assert_eq!(json["path"], "/hello");
        assert_eq!(json["query"], "x=1");
        let authority = client.authority().to_owned();
        assert_eq!(reply.seen_header("host"), Some(vec![authority.clone()]));
        assert_eq!(reply.seen_header("x-forwarded-host"), Some(vec![authority]));
        assert_eq!(reply.seen_header("x-forwarded-proto"), Some(vec!["https".to_owned()]));
        assert_eq!(reply.seen_header("x-forwarded-for"), Some(vec!["127.0.0.1".to_owned()]));
        assert_eq!(reply.seen_header("via"), Some(vec!["3 quic-proxy".to_owned()]));
        for name in HOP_BY_HOP {
            assert!(
                reply.headers.get(name).is_none(),
                "HTTP/3 response carries {name}: {:?}",
                reply.headers
            );
        }
        client.close().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_specific_response_headers_are_stripped() {
    guarded(async {
        let (backend, _heads) = start_raw_backend(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nconnection: keep-alive, x-hop\r\n\
              keep-alive: timeout=5\r\nproxy-connection: keep-alive\r\nupgrade: h2c\r\n\
              x-hop: secret\r\nx-end-to-end: kept\r\n\r\n2\r\nok\r\n0\r\n\r\n",
        );
        let (running, certs) = proxy_to(backend, "").await;
        let mut client = H3Client::connect(quic_addr(&running), &certs).await;
        let reply = client.get("/").await.expect("GET over HTTP/3");
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.body, Bytes::from_static(b"ok"));
        assert_eq!(reply.header("x-end-to-end"), Some("kept"));
        for name in HOP_BY_HOP.iter().chain(&["x-hop"]) {
            assert!(
                reply.headers.get(*name).is_none(),
                "HTTP/3 response carries {name}: {:?}",
                reply.headers
            );
        }
    })
    .await;
}

/// Deterministic incompressible data, generated chunk by chunk so no test holds a whole body twice.
fn pattern_chunk(seed: u64, index: u64, size: usize) -> Bytes {
    let mut rng = fastrand::Rng::with_seed(seed ^ index.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let mut chunk = vec![0u8; size];
    rng.fill(&mut chunk);
    Bytes::from(chunk)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn large_streamed_post_arrives_intact() {
    guarded_for(BULK_GUARD, async {
        const CHUNK: usize = 64 * 1024;
        const CHUNKS: u64 = 512;
        let total = CHUNK as u64 * CHUNKS;
        let (running, certs) = demo_proxy(&["bulk"], "").await;
        let mut client = H3Client::connect(quic_addr(&running), &certs).await;
        let mut expected = Sha256::new();
        for i in 0..CHUNKS {
            expected.update(pattern_chunk(7, i, CHUNK));
        }
        let request = client
            .request("POST", "/upload")
            .header("content-length", total)
            .body(())
            .expect("request");
        // Each chunk is generated as the stream asks for it: the body is never one buffer.
        let reply = client
            .send(request, (0..CHUNKS).map(|i| pattern_chunk(7, i, CHUNK)))
            .await
            .expect("32 MiB POST over HTTP/3");
        assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
        let json = reply.json();
        assert_eq!(json["body_bytes"], total);
        assert_eq!(json["body_sha256"], format!("{:x}", expected.finalize()).as_str());
        assert_eq!(reply.seen_header("content-length"), Some(vec![total.to_string()]));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn large_get_arrives_complete() {
    guarded_for(BULK_GUARD, async {
        const SIZE: usize = 32 * 1024 * 1024;
        let (running, certs) = demo_proxy(&["bulk"], "").await;
        let mut client = H3Client::connect(quic_addr(&running), &certs).await;
        let reply = client
            .get(&format!("/bytes/{SIZE}"))
            .await
            .expect("32 MiB GET over HTTP/3");
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.header("content-length"), Some(SIZE.to_string().as_str()));
        assert_eq!(reply.body.len(), SIZE);
        assert!(
            reply.body.iter().all(|&b| b == b'x'),
            "the body is not the demo backend's pattern"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn echo_round_trips_identical_bytes() {
    guarded_for(BULK_GUARD, async {
        const CHUNK: usize = 16 * 1024;
        const CHUNKS: u64 = 512;
        let (running, certs) = demo_proxy(&["echo"], "").await;
        let mut client = H3Client::connect(quic_addr(&running), &certs).await;
        // No Content-Length: the body is streamed upstream chunked, the path a length check cannot guard.
        let request = client.request("POST", "/echo").body(()).expect("request");
        let reply = client
            .send(request, (0..CHUNKS).map(|i| pattern_chunk(11, i, CHUNK)))
            .await
            .expect("8 MiB echo over HTTP/3");
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.body.len(), CHUNK * CHUNKS as usize);
        for (i, got) in reply.body.chunks(CHUNK).enumerate() {
            assert!(
                got == pattern_chunk(11, i as u64, CHUNK),
                "echoed chunk {i} differs from what was sent"
            );
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hundred_concurrent_requests_share_one_connection() {
    guarded(async {
        let names = ["rr1", "rr2", "rr3"];
        let (running, certs) = demo_proxy(&names, "").await;
        let client = H3Client::connect(quic_addr(&running), &certs).await;
        let requests: Vec<_> = (0..100)
            .map(|i| {
                let mut sender = client.sender.clone();
                tokio::spawn(async move {
                    let path = format!("/concurrent/{i}");
                    let reply = sender.get(&path).await.unwrap_or_else(|e| panic!("request {i}: {e}"));
                    assert_eq!(reply.status, StatusCode::OK, "request {i}");
                    assert_eq!(reply.json()["path"], path.as_str());
                    reply.backend().to_owned()
                })
            })
            .collect();
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        for request in requests {
            *counts.entry(request.await.expect("request task")).or_default() += 1;
        }
        // Round robin over 100 picks is exact whatever order the streams arrive in.
        let mut split: Vec<usize> = counts.values().copied().collect();
        split.sort_unstable();
        assert_eq!(split, [33, 33, 34], "{counts:?}");
        assert!(counts.keys().all(|name| names.contains(&name.as_str())));
        assert!(
            client.connection.close_reason().is_none(),
            "the connection closed during the burst"
        );
    })
    .await;
}

/// What the proxy made of a request it should refuse.
#[derive(Debug)]
enum Refusal {
    Status(StatusCode, Bytes),
    StreamError(String),
}

/// Sends `request` with `body` on a fresh connection and reports how it was answered.
async fn attempt(addr: SocketAddr, certs: &TestCerts, request: Request<()>, body: &[u8]) -> Refusal {
    let mut client = H3Client::connect(addr, certs).await;
    // Only what happens after the head is on the wire counts as the proxy's answer.
    let mut stream = client.open(request).await.expect("the client sends the request head");
    let outcome = async {
        if !body.is_empty() {
            stream.send_data(Bytes::copy_from_slice(body)).await?;
        }
        stream.finish().await?;
        read_reply(&mut stream).await
    }
    .await;
    match outcome {
        Ok(reply) => Refusal::Status(reply.status, reply.body),
        Err(error) => Refusal::StreamError(error.to_string()),
    }
}

fn assert_refused(case: &str, refusal: &Refusal, allowed: &[StatusCode]) {
    match refusal {
        Refusal::Status(status, _) if allowed.contains(status) => println!("{case}: {status}"),
        Refusal::StreamError(error) => println!("{case}: stream error: {error}"),
        Refusal::Status(status, body) => panic!(
            "{case}: expected one of {allowed:?} or a stream error, got {status} {:?}",
            String::from_utf8_lossy(body)
        ),
    }
}

/// Sends one acceptable request and checks it is the first and only thing the raw backend received,
/// which proves that nothing sent before it was forwarded.
async fn assert_only_valid_request_reached(
    addr: SocketAddr,
    certs: &TestCerts,
    heads: &mut tokio::sync::mpsc::UnboundedReceiver<String>,
) {
    let mut client = H3Client::connect(addr, certs).await;
    // TE: trailers is the one TE value HTTP/3 allows; the proxy must not confuse it with the others.
    let request = client
        .request("GET", "/valid-after-refusals")
        .header("te", "trailers")
        .body(())
        .expect("request");
    let reply = client.send(request, []).await.expect("valid request");
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    let first = heads.recv().await.expect("the backend saw a request");
    assert!(
        first.starts_with("GET /valid-after-refusals HTTP/1.1\r\n"),
        "a refused request reached the backend first:\n{first}"
    );
    assert!(heads.try_recv().is_err(), "the backend saw more than the valid request");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_header_section_is_refused_before_the_backend() {
    guarded(async {
        let (backend, mut heads) = start_raw_backend(OK_RESPONSE);
        let (running, certs) = proxy_to(backend, "{max_header_bytes: 4KiB}").await;
        let addr = quic_addr(&running);
        // A client that has read the server's SETTINGS would refuse to send this itself.
        let mut client = H3Client::connect_undriven(addr, &certs).await;
        let mut request = client.request("GET", "/too-big").body(()).expect("request");
        for i in 0..8 {
            request.headers_mut().insert(
                HeaderName::from_bytes(format!("x-filler-{i}").as_bytes()).expect("name"),
                HeaderValue::from_str(&"f".repeat(1024)).expect("value"),
            );
        }
        let mut stream = client
            .open(request)
            .await
            .expect("the client sends the oversized head, not knowing the server's limit");
        let outcome = match stream.finish().await {
            Ok(()) => read_reply(&mut stream).await,
            Err(error) => Err(error),
        };
        match &outcome {
            Ok(reply) => assert_eq!(
                reply.status,
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "{:?}",
                reply.body
            ),
            Err(error) => assert!(
                !error.is_h3_no_error() && !matches!(error, StreamError::HeaderTooBig { .. }),
                "an 8 KiB header section was neither answered nor refused: {error}"
            ),
        }
        println!("oversized header section: {outcome:?}");
        client.start_driver();
        let reply = client
            .get("/fits")
            .await
            .expect("a small request on the same connection");
        assert_eq!(reply.status, StatusCode::OK);
        let first = heads.recv().await.expect("the backend saw a request");
        assert!(
            first.starts_with("GET /fits HTTP/1.1\r\n"),
            "the oversized request reached the backend:\n{first}"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_never_reach_the_backend() {
    guarded(async {
        let (backend, mut heads) = start_raw_backend(OK_RESPONSE);
        let (running, certs) = proxy_to(backend, "").await;
        let addr = quic_addr(&running);
        let authority = format!("{SERVER_NAME}:{}", addr.port());
        let build = |method: &str, headers: &[(&str, &str)]| {
            let mut request = Request::builder()
                .method(method)
                .uri(format!("https://{authority}/malformed"));
            for (name, value) in headers {
                request = request.header(*name, *value);
            }
            request.body(()).expect("request")
        };
        let cases: Vec<(&str, Request<()>, &[u8])> = vec![
            (
                "connection: keep-alive",
                build("GET", &[("connection", "keep-alive")]),
                b"",
            ),
            (
                "transfer-encoding: chunked",
                build("POST", &[("transfer-encoding", "chunked")]),
                b"hello",
            ),
            ("te: gzip", build("GET", &[("te", "gzip")]), b""),
            ("upgrade: websocket", build("GET", &[("upgrade", "websocket")]), b""),
            ("keep-alive: 1", build("GET", &[("keep-alive", "1")]), b""),
            (
                "proxy-connection: keep-alive",
                build("GET", &[("proxy-connection", "keep-alive")]),
                b"",
            ),
            (
                "content-length 10 with 5 bytes",
                build("POST", &[("content-length", "10")]),
                b"12345",
            ),
            (
                "content-length 5 with 10 bytes",
                build("POST", &[("content-length", "5")]),
                b"0123456789",
            ),
            (
                "content-length not a number",
                build("POST", &[("content-length", "five")]),
                b"12345",
            ),
            (
                "two different content-lengths",
                build("POST", &[("content-length", "5"), ("content-length", "6")]),
                b"12345",
            ),
        ];
        for (case, request, body) in cases {
            let refusal = attempt(addr, &certs, request, body).await;
            assert_refused(case, &refusal, &[StatusCode::BAD_REQUEST]);
        }
        assert_only_valid_request_reached(addr, &certs, &mut heads).await;
    })
    .await;
}

/// Sends `lines` as the field section of a raw HEADERS frame on a new request stream and returns the first
/// frame of the answer: the h3 client cannot produce repeated or misplaced pseudo-headers itself.
async fn raw_headers(client: &H3Client, lines: &[&[u8]]) -> Vec<u8> {
    let mut section = vec![0x00, 0x00];
    for line in lines {
        section.extend_from_slice(line);
    }
    let mut frame = vec![0x01, u8::try_from(section.len()).expect("a short section")];
    frame.extend_from_slice(&section);
    let (mut send, mut recv) = client.connection.open_bi().await.expect("a request stream");
    send.write_all(&frame).await.expect("HEADERS sent");
    send.finish().expect("stream finished");
    recv.read_to_end(64 * 1024).await.unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_or_misplaced_pseudo_headers_never_reach_the_backend() {
    guarded(async {
        let (backend, mut heads) = start_raw_backend(OK_RESPONSE);
        let (running, certs) = proxy_to(backend, "").await;
        let addr = quic_addr(&running);
        let client = H3Client::connect(addr, &certs).await;
        let authority = format!("{SERVER_NAME}:{}", addr.port());
        // QPACK static table: :method GET 17, :method POST 20, :scheme https 23, :path / 1, :authority 0.
        let (get, post, https, root) = ([0xc0 | 17], [0xc0 | 20], [0xc0 | 23], [0xc1]);
        let mut authority_line = vec![0x50, u8::try_from(authority.len()).expect("short authority")];
        authority_line.extend_from_slice(authority.as_bytes());
        let regular = b"\x23x-a\x011";
        let cases: [(&str, Vec<&[u8]>); 3] = [
            ("repeated :method", vec![&get, &https, &root, &authority_line, &post]),
            ("repeated :path", vec![&get, &https, &root, &authority_line, &root]),
            (
                "pseudo-header after a regular field",
                vec![&get, &https, regular, &root, &authority_line],
            ),
        ];
        for (case, lines) in cases {
            let answer = raw_headers(&client, &lines).await;
            // A HEADERS frame whose section is :status 400 (static entry 67: 0xff 0x04).
            assert_eq!(answer.first(), Some(&0x01), "{case}: no HEADERS frame in {answer:?}");
            assert_eq!(
                answer.get(2..6),
                Some(&[0x00, 0x00, 0xff, 0x04][..]),
                "{case}: not 400: {answer:?}"
            );
        }
        // Uppercase field names are refused by h3 itself, with a stream error instead of a response.
        let answer = raw_headers(&client, &[&get, &https, &root, &authority_line, b"\x24X-Up\x011"]).await;
        assert!(
            answer.is_empty() || answer.get(2..6) == Some(&[0x00, 0x00, 0xff, 0x04][..]),
            "uppercase name: neither a stream error nor 400: {answer:?}"
        );
        // Then a valid request must be the first thing the backend ever saw.
        assert_only_valid_request_reached(addr, &certs, &mut heads).await;
    })
    .await;
}

/// What a backend that never answers early received on its first connection.
#[derive(Debug, Clone, Default)]
struct Recorded {
    head: String,
    declared: u64,
    body_bytes: u64,
    /// The proxy closed or reset the connection.
    closed: bool,
    /// The whole declared body arrived and the backend answered.
    answered: bool,
}

/// A backend that reads one request head and then its body, publishing progress as it goes. It answers
/// only if the whole declared body arrives, so an aborted upload shows as a connection closed short.
fn start_recording_backend() -> (SocketAddr, watch::Receiver<Recorded>) {
    let listener = bind_loopback();
    let addr = listener.local_addr().expect("backend address");
    let (report, recorded) = watch::channel(Recorded::default());
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.expect("accept");
        let mut buffer = vec![0u8; 64 * 1024];
        let mut head = Vec::new();
        let body_start = loop {
            if let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
                break end + 4;
            }
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => {
                    report.send_modify(|r| r.closed = true);
                    return;
                }
                Ok(n) => head.extend_from_slice(&buffer[..n]),
            }
        };
        let text = String::from_utf8_lossy(&head[..body_start]).into_owned();
        let declared = text
            .lines()
            .find_map(|line| {
                let (name, value) = line.split_once(':')?;
                name.eq_ignore_ascii_case("content-length")
                    .then(|| value.trim().parse::<u64>().ok())?
            })
            .unwrap_or(0);
        let mut received = (head.len() - body_start) as u64;
        report.send_modify(|r| {
            r.head = text;
            r.declared = declared;
            r.body_bytes = received;
        });
        while received < declared {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => {
                    report.send_modify(|r| r.closed = true);
                    return;
                }
                Ok(n) => {
                    received += n as u64;
                    report.send_modify(|r| r.body_bytes = received);
                }
            }
        }
        let _ = stream.write_all(OK_RESPONSE).await;
        report.send_modify(|r| r.answered = true);
    });
    (addr, recorded)
}

/// Bodies above the proxy's 64 KiB pre-read limit are streamed, so the backend already has the head and
/// part of the body when the mismatch shows; the proxy must then abort the upstream request rather than
/// let the backend see a complete message.
///
/// Returns how the client was answered: a status, or `None` for a stream error.
async fn large_length_mismatch(declared: u64, first: usize, second: Option<usize>) -> Option<StatusCode> {
    let (backend, mut recorded) = start_recording_backend();
    let (running, certs) = proxy_to(backend, "").await;
    let mut client = H3Client::connect(quic_addr(&running), &certs).await;
    let request = client
        .request("POST", "/large-mismatch")
        .header("content-length", declared)
        .body(())
        .expect("request");
    let mut stream = client.open(request).await.expect("open the request");
    stream
        .send_data(Bytes::from(vec![b'a'; first]))
        .await
        .expect("send the first part of the body");
    if let Some(second) = second {
        // Once the backend holds everything sent so far, the excess arrives as a chunk of its own.
        recorded
            .wait_for(|r| r.body_bytes == first as u64)
            .await
            .expect("backend task alive");
        // The proxy may already have stopped the stream; the outcome is what counts.
        let _ = stream.send_data(Bytes::from(vec![b'b'; second])).await;
    }
    let _ = stream.finish().await;
    let outcome = read_reply(&mut stream).await;
    let seen = recorded
        .wait_for(|r| r.closed || r.answered)
        .await
        .expect("backend task alive")
        .clone();
    assert!(seen.head.starts_with("POST /large-mismatch HTTP/1.1\r\n"), "{seen:?}");
    assert_eq!(seen.declared, declared, "{seen:?}");
    println!(
        "backend: head forwarded, {} of {declared} body bytes, then the connection closed: {}; \
         client: {:?}",
        seen.body_bytes,
        seen.closed,
        outcome.as_ref().map(|reply| reply.status)
    );
    assert!(
        seen.closed && seen.body_bytes < declared,
        "the backend received a complete body: {seen:?}"
    );
    match outcome {
        Ok(reply) => {
            assert!(
                !reply.status.is_success(),
                "the client was told {} {:?}",
                reply.status,
                reply.body
            );
            Some(reply.status)
        }
        Err(error) => {
            assert!(!error.is_h3_no_error(), "{error}");
            None
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_body_shorter_than_content_length_aborts_upstream() {
    guarded(large_length_mismatch(100_000, 70_000, None)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_body_longer_than_content_length_aborts_upstream() {
    guarded(large_length_mismatch(100_000, 99_999, Some(2))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_content_length_mismatch_is_a_client_error() {
    guarded(async {
        for (case, first, second) in [("shorter", 70_000, None), ("longer", 99_999, Some(2))] {
            let answer = large_length_mismatch(100_000, first, second).await;
            assert!(
                matches!(answer, None | Some(StatusCode::BAD_REQUEST)),
                "body {case} than its Content-Length: answered {answer:?}"
            );
        }
    })
    .await;
}

/// GETs `/trailers` over HTTP/3 through a proxy to `backend`, asking for trailers, and checks that the
/// response carries `body` and ends with the backend's `x-checksum` trailer; returns all the trailers.
async fn get_trailers_over_h3(backend: SocketAddr, body: &'static [u8]) -> http::HeaderMap {
    let (running, certs) = proxy_to(backend, "").await;
    let mut client = H3Client::connect(quic_addr(&running), &certs).await;
    let request = client
        .request("GET", "/trailers")
        .header("te", "trailers")
        .body(())
        .expect("request");
    let reply = client.send(request, []).await.expect("GET over HTTP/3");
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.body, Bytes::from_static(body));
    let trailers = reply.trailers.expect("the response ends with trailers");
    assert_eq!(
        trailers.get("x-checksum").map(HeaderValue::as_bytes),
        Some(&b"abc123"[..])
    );
    trailers
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_trailers_reach_the_h3_client() {
    guarded(async {
        let (backend, _heads) = start_raw_backend(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ntrailer: x-checksum\r\n\r\n\
              5\r\nhello\r\n6\r\n world\r\n0\r\nx-checksum: abc123\r\nx-count: 2\r\n\r\n",
        );
        let trailers = get_trailers_over_h3(backend, b"hello world").await;
        assert_eq!(trailers.get("x-count").map(HeaderValue::as_bytes), Some(&b"2"[..]));
    })
    .await;
}

/// A hyper HTTP/1.1 backend whose responses end with trailers; hyper sends them only to a request that
/// carried `TE: trailers`.
fn start_hyper_trailers_backend() -> SocketAddr {
    let listener = bind_loopback();
    let addr = listener.local_addr().expect("backend address");
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.expect("accept");
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|_request| async {
                    let mut trailers = http::HeaderMap::new();
                    trailers.insert("x-checksum", HeaderValue::from_static("abc123"));
                    let frames = vec![
                        Ok::<_, std::convert::Infallible>(http_body::Frame::data(Bytes::from_static(b"hello"))),
                        Ok(http_body::Frame::trailers(trailers)),
                    ];
                    let body = http_body_util::StreamBody::new(futures_util::stream::iter(frames));
                    let mut response = http::Response::new(body);
                    // hyper writes only the trailer fields announced here.
                    response
                        .headers_mut()
                        .insert("trailer", HeaderValue::from_static("x-checksum"));
                    Ok::<_, std::convert::Infallible>(response)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trailers_from_a_backend_that_honours_te_reach_the_h3_client() {
    guarded(async {
        let backend = start_hyper_trailers_backend();
        let direct = TcpStream::connect(backend).await.expect("connect to the backend");
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(direct))
            .await
            .expect("HTTP/1.1 handshake with the backend");
        tokio::spawn(connection);
        let asked = Request::get("/trailers")
            .header("host", "backend")
            .header("te", "trailers")
            .body(Empty::<Bytes>::new())
            .expect("request");
        let direct = sender.send_request(asked).await.expect("direct request");
        let collected = direct.into_body().collect().await.expect("direct body");
        assert!(
            collected.trailers().is_some(),
            "the backend itself sends no trailers when asked"
        );

        get_trailers_over_h3(backend, b"hello").await;
    })
    .await;
}

/// One request over HTTPS on TCP with `alpn` negotiated; returns the response head's headers.
async fn https_get(running: &Running, certs: &TestCerts, alpn: &[u8]) -> http::HeaderMap {
    let addr = running.https_addr.expect("HTTPS listens");
    let connector = tokio_rustls::TlsConnector::from(Arc::new(certs.client_config(&[alpn])));
    let tcp = TcpStream::connect(addr).await.expect("connect over TCP");
    let name = rustls::pki_types::ServerName::try_from(SERVER_NAME).expect("server name");
    let tls = connector.connect(name, tcp).await.expect("TLS handshake over TCP");
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(alpn));
    let io = TokioIo::new(tls);
    let body = Empty::<Bytes>::new();
    let response = if alpn == b"h2" {
        let (mut sender, connection) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .expect("HTTP/2 handshake");
        tokio::spawn(connection);
        let request = Request::get(format!("https://{SERVER_NAME}:{}/alt", addr.port()))
            .body(body)
            .expect("request");
        sender.send_request(request).await.expect("HTTP/2 request")
    } else {
        let (mut sender, connection) = hyper::client::conn::http1::handshake(io)
            .await
            .expect("HTTP/1.1 handshake");
        tokio::spawn(connection);
        let request = Request::get("/alt")
            .header("host", format!("{SERVER_NAME}:{}", addr.port()))
            .body(body)
            .expect("request");
        sender.send_request(request).await.expect("HTTP/1.1 request")
    };
    let (parts, body) = response.into_parts();
    body.collect().await.expect("response body");
    assert_eq!(parts.status, StatusCode::OK);
    assert!(parts.headers.contains_key("x-backend"), "{:?}", parts.headers);
    parts.headers
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_responses_advertise_the_quic_port() {
    guarded(async {
        let (running, certs) = demo_proxy(&["alt"], "").await;
        let udp_port = quic_addr(&running).port();
        assert_eq!(
            running.https_addr.map(|a| a.port()),
            Some(udp_port),
            "with port 0, QUIC should share the HTTPS port"
        );
        let expected = format!("h3=\":{udp_port}\"; ma=86400");
        for alpn in [&b"h2"[..], b"http/1.1"] {
            let headers = https_get(&running, &certs, alpn).await;
            let alt_svc: Vec<_> = headers.get_all("alt-svc").iter().collect();
            assert_eq!(alt_svc, [expected.as_str()], "over {}", String::from_utf8_lossy(alpn));
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alt_svc_port_overrides_the_advertised_port() {
    guarded(async {
        let (running, certs) = demo_proxy(&["alt"], "{alt_svc_port: 8443}").await;
        assert_ne!(quic_addr(&running).port(), 8443);
        for alpn in [&b"h2"[..], b"http/1.1"] {
            let headers = https_get(&running, &certs, alpn).await;
            let alt_svc: Vec<_> = headers.get_all("alt-svc").iter().collect();
            assert_eq!(
                alt_svc,
                ["h3=\":8443\"; ma=86400"],
                "over {}",
                String::from_utf8_lossy(alpn)
            );
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_an_in_flight_h3_request_finish() {
    guarded(async {
        let (running, certs) = demo_proxy(&["slow"], "").await;
        let addr = quic_addr(&running);
        let mut client = H3Client::connect(addr, &certs).await;
        let mut sender = client.sender.clone();
        let slow = tokio::spawn(async move { sender.get("/slow?delay_ms=500").await });
        let backend = Arc::clone(&running.snapshot().upstreams()[0].backends[0]);
        wait_until(|| backend.in_flight() == 1).await;
        // The client keeps its connection open, as a browser would: the proxy has to close it.
        let drained = running.shutdown().await;
        let reply = slow
            .await
            .expect("request task")
            .unwrap_or_else(|e| panic!("the in-flight request failed ({e}); drained: {drained}"));
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.backend(), "slow");
        assert!(drained, "shutdown did not finish within the drain timeout");
        // Returning at all (within the guard) shows the proxy closed the idle connection.
        client.closed().await;
        // A closed listener may not answer at all, so a handshake that has not completed in time counts.
        let late = tokio::time::timeout(Duration::from_secs(2), connect_quic(addr, &certs)).await;
        assert!(
            !matches!(late, Ok(Ok(_))),
            "the QUIC listener still accepts connections after shutdown"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_limit_refuses_a_second_connection() {
    guarded(async {
        let (running, certs) = demo_proxy(&["limit"], "{max_connections: 1}").await;
        let addr = quic_addr(&running);
        let mut first = H3Client::connect(addr, &certs).await;
        assert_eq!(first.get("/").await.expect("first").status, StatusCode::OK);
        match connect_quic(addr, &certs).await {
            Err(quinn::ConnectionError::ConnectionClosed(close)) => {
                assert_eq!(close.error_code, quinn::TransportErrorCode::CONNECTION_REFUSED)
            }
            Err(other) => panic!("expected CONNECTION_REFUSED, got {other}"),
            Ok(_) => panic!("a second connection was accepted over quic.max_connections: 1"),
        }
        assert_eq!(
            first.get("/").await.expect("first, again").status,
            StatusCode::OK,
            "the refusal disturbed the open connection"
        );
        first.close().await;
        // The slot frees once the proxy has processed the close; each attempt is a real handshake.
        loop {
            if let Ok((endpoint, connection)) = connect_quic(addr, &certs).await {
                connection.close(0u32.into(), b"done");
                endpoint.wait_idle().await;
                break;
            }
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_limit_holds_across_workers() {
    guarded(async {
        let certs = TestCerts::generate();
        let addrs = start_backends(&["limit"]);
        let tls = certs.server_line();
        let yaml = render_config(
            &[tls.as_str(), "workers: 2"],
            &format!(
                "backends: {}\nquic: {{max_connections: 1}}",
                equal_backends(&["limit"], &addrs)
            ),
        );
        let running = start_tls_proxy(&yaml).await;
        let addr = quic_addr(&running);
        let mut first = H3Client::connect(addr, &certs).await;
        assert_eq!(first.get("/").await.expect("first").status, StatusCode::OK);
        // The kernel spreads client ports over the sockets; eight tries all hash to the first
        // connection's socket with probability 1/256.
        let mut accepted = Vec::new();
        for _ in 0..8 {
            if let Ok(extra) = connect_quic(addr, &certs).await {
                accepted.push(extra);
            }
        }
        assert!(
            accepted.is_empty(),
            "{} of 8 connections accepted over quic.max_connections: 1",
            accepted.len()
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_always_still_serves_requests() {
    guarded(async {
        let (running, certs) = demo_proxy(&["retry"], "{retry: always}").await;
        let mut client = H3Client::connect(quic_addr(&running), &certs).await;
        let reply = client.get("/after-retry").await.expect("GET after Retry");
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.json()["path"], "/after-retry");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_without_content_length_reaches_the_backend() {
    guarded(async {
        let (running, certs) = demo_proxy(&["nolength"], "").await;
        let mut client = H3Client::connect(quic_addr(&running), &certs).await;
        for attempt in 0..5 {
            let request = client.request("POST", "/no-length").body(()).expect("request");
            let body = Bytes::from_static(b"hello world");
            let reply = client.send(request, [body.clone()]).await.expect("POST over HTTP/3");
            assert_eq!(reply.status, StatusCode::OK);
            let json = reply.json();
            assert_eq!(json["body_bytes"], body.len(), "attempt {attempt}");
            assert_eq!(
                json["body_sha256"],
                format!("{:x}", Sha256::digest(&body)).as_str(),
                "attempt {attempt}"
            );
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_http2_connection_is_closed_once_its_requests_finish() {
    guarded(async {
        let certs = TestCerts::generate();
        let backend = start_backends(&["idle-h2"])[0];
        let tls = certs.server_line();
        let running = start_tls_proxy(&render_config(
            &[tls.as_str(), "idle_timeout: 1s"],
            &format!("backends: {}", backend_list(&[("idle-h2", backend, 1)])),
        ))
        .await;
        let addr = running.https_addr.expect("HTTPS listens");
        let connector = tokio_rustls::TlsConnector::from(Arc::new(certs.client_config(&[b"h2"])));
        let tcp = TcpStream::connect(addr).await.expect("connect over TCP");
        let name = rustls::pki_types::ServerName::try_from(SERVER_NAME).expect("server name");
        let tls = connector.connect(name, tcp).await.expect("TLS handshake over TCP");
        let (mut sender, connection) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .expect("HTTP/2 handshake");
        let connection = tokio::spawn(connection);

        // The backend takes longer than the idle timeout to answer and nothing moves meanwhile: the
        // connection is told to go away, but the request in flight still gets its whole answer.
        let request = Request::get(format!("https://{SERVER_NAME}:{}/slow?delay_ms=2500", addr.port()))
            .body(Empty::<Bytes>::new())
            .expect("request");
        let response = sender.send_request(request).await.expect("HTTP/2 request");
        assert_eq!(response.status(), StatusCode::OK);
        response.into_body().collect().await.expect("the whole body");

        // Then the proxy closes the connection by itself.
        let ended = connection.await.expect("connection task");
        assert!(ended.is_ok(), "the connection ended with an error: {ended:?}");
        assert!(sender
            .send_request(Request::get("/").body(Empty::new()).expect("request"))
            .await
            .is_err());
    })
    .await;
}
