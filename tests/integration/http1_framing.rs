//! Malformed and hostile HTTP/1.1 requests, written as raw bytes: each must be refused with the right
//! status, on a connection the proxy then closes, without reaching a backend.

use std::time::Duration;

use crate::support::*;
use http::StatusCode;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// Far above [`CLOSE_BOUND`]: a connection that closes in time was closed because of the request.
const PATIENT: &str = "header_read_timeout: 120s";

/// A proxy with one demo backend and the given `server` settings.
async fn proxy_with(server_extra: &[&str]) -> quic_proxy::app::Running {
    let addrs = start_backends(&["demo"]);
    start_proxy(&render_config(
        server_extra,
        &format!("backends: {}", equal_backends(&["demo"], &addrs)),
    ))
    .await
}

/// A patient proxy in front of a raw backend that answers OK and hands over each request head it receives.
async fn proxy_to_recorder() -> (quic_proxy::app::Running, tokio::sync::mpsc::UnboundedReceiver<String>) {
    let (backend, received) = start_raw_backend(OK_RESPONSE);
    let running = start_proxy(&render_config(
        &[PATIENT],
        &format!("backends: {}", backend_list(&[("recorder", backend, 1)])),
    ))
    .await;
    (running, received)
}

fn assert_refused(exchange: &RawExchange, status: u16, what: &str) {
    assert_eq!(exchange.status(), Some(status), "{what}: got {:?}", exchange.text());
    // The refusal comes from the proxy, not a backend.
    assert!(
        !exchange.text().to_ascii_lowercase().contains("x-backend"),
        "{what}: a backend answered: {:?}",
        exchange.text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_length_with_transfer_encoding_is_refused_and_never_forwarded() {
    guarded(async {
        let (running, mut received) = proxy_to_recorder().await;

        // Classic CL.TE and TE.CL shapes: a backend framing the body differently from the proxy would
        // read the embedded GET as a second request.
        let smuggled = "0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: app.test\r\n\r\n";
        let cl_first = format!(
            "POST /cl-first HTTP/1.1\r\nHost: app.test\r\nContent-Length: {}\r\n\
             Transfer-Encoding: chunked\r\n\r\n{smuggled}",
            smuggled.len()
        );
        let te_first = format!(
            "POST /te-first HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\n\
             Content-Length: {}\r\n\r\n{smuggled}",
            smuggled.len()
        );
        for (name, request) in [("CL then TE", cl_first), ("TE then CL", te_first)] {
            // Returning at all means the proxy closed the connection.
            let exchange = raw_exchange(running.fallback_addr, request.as_bytes()).await;
            assert_refused(&exchange, 400, name);
            assert_eq!(
                exchange.text().matches("HTTP/1.1").count(),
                1,
                "{name}: exactly one response, none for the embedded request: {:?}",
                exchange.text()
            );
        }

        // Had either request been forwarded, its head would be the first the backend received: both
        // refusals were read before this request was sent.
        let reply = HttpClient::new(running.fallback_addr).get("/valid").await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.text(), "ok");
        let first = received.recv().await.expect("the backend saw a request");
        assert!(
            first.starts_with("GET /valid HTTP/1.1\r\n"),
            "the first request the backend received was not the valid one: {first:?}"
        );
        assert!(
            received.try_recv().is_err(),
            "the backend received more than the valid request"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflicting_length_in_pipelined_request_is_refused() {
    guarded(async {
        let (running, mut received) = proxy_to_recorder().await;
        // The bad head follows a valid request with a body in the same write, so finding it means
        // following the first request's framing.
        let pipelined = b"POST /first HTTP/1.1\r\nHost: app.test\r\nContent-Length: 5\r\n\r\nhello\
            POST /second HTTP/1.1\r\nHost: app.test\r\nContent-Length: 5\r\n\
            Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
        let exchange = raw_exchange(running.fallback_addr, pipelined).await;
        let text = exchange.text();
        assert_eq!(exchange.status(), Some(200), "{text:?}");
        assert_eq!(text.matches("HTTP/1.1 ").count(), 2, "{text:?}");
        assert!(text.contains("HTTP/1.1 400 "), "{text:?}");

        // The proxy answers only after the backend has reported the head, so a forwarded second
        // request would already be in the channel.
        let first = received.recv().await.expect("the first request was forwarded");
        assert!(first.starts_with("POST /first "), "{first:?}");
        assert!(received.try_recv().is_err(), "the refused request reached the backend");
    })
    .await;
}

/// Sends `first_request` and reads its response on one connection, then a request with both
/// Content-Length and Transfer-Encoding on the same connection: it must be refused and not forwarded.
async fn refuses_conflicting_length_after(first_request: &str) {
    let (running, mut received) = proxy_to_recorder().await;
    let mut stream = TcpStream::connect(running.fallback_addr)
        .await
        .expect("connect to the proxy");
    stream
        .write_all(first_request.as_bytes())
        .await
        .expect("send the first request");
    let head = read_head(&mut stream).await;
    assert!(head.starts_with("HTTP/1.1 200 "), "{head:?}");
    let mut body = [0u8; 2];
    stream.read_exact(&mut body).await.expect("read the body");
    let first = received.recv().await.expect("the first request was forwarded");
    assert!(first.starts_with("GET /first "), "{first:?}");

    stream
        .write_all(
            b"POST /second HTTP/1.1\r\nHost: app.test\r\nContent-Length: 5\r\n\
              Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        )
        .await
        .expect("send the second request");
    let exchange = tokio::time::timeout(CLOSE_BOUND, read_until_closed(&mut stream))
        .await
        .expect("the proxy closed the connection");
    if let Ok(forwarded) = received.try_recv() {
        panic!(
            "the request with Content-Length and Transfer-Encoding reached the backend as {forwarded:?}; \
             the client got {:?}",
            exchange.text()
        );
    }
    // A bare close is acceptable too: the proxy may refuse to reuse the connection at all.
    assert!(
        exchange.bytes.is_empty() || exchange.status() == Some(400),
        "expected 400 or a bare close, got {:?}",
        exchange.text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflicting_length_after_upgrade_header_is_refused() {
    // Upgrade without `Connection: upgrade` is not an upgrade request; the connection stays HTTP/1.1.
    guarded(refuses_conflicting_length_after(
        "GET /first HTTP/1.1\r\nHost: app.test\r\nUpgrade: h2c\r\n\r\n",
    ))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflicting_length_after_declined_upgrade_is_refused() {
    // A real upgrade request the backend answers with 200: the connection stays HTTP/1.1.
    guarded(refuses_conflicting_length_after(
        "GET /first HTTP/1.1\r\nHost: app.test\r\nConnection: upgrade\r\n\
         Upgrade: websocket\r\n\r\n",
    ))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_heads_get_400_and_close() {
    guarded(async {
        let running = proxy_with(&[PATIENT]).await;
        let cases: [(&str, &[u8]); 7] = [
            ("missing Host", b"GET / HTTP/1.1\r\nAccept: */*\r\n\r\n"),
            (
                "two Host headers",
                b"GET / HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\n\r\n",
            ),
            (
                "non-numeric Content-Length",
                b"POST / HTTP/1.1\r\nHost: a.test\r\nContent-Length: abc\r\n\r\n",
            ),
            (
                "negative Content-Length",
                b"POST / HTTP/1.1\r\nHost: a.test\r\nContent-Length: -1\r\n\r\n",
            ),
            (
                "conflicting Content-Lengths",
                b"POST / HTTP/1.1\r\nHost: a.test\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
            ),
            (
                "Transfer-Encoding without chunked last",
                b"POST / HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: gzip\r\n\r\n",
            ),
            (
                "Transfer-Encoding in HTTP/1.0",
                b"POST / HTTP/1.0\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            ),
        ];
        for (name, request) in cases {
            let exchange = raw_exchange(running.fallback_addr, request).await;
            assert_refused(&exchange, 400, name);
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_head_gets_431_and_close() {
    guarded(async {
        let running = proxy_with(&[PATIENT, "max_header_bytes: 16KiB"]).await;
        let request = format!(
            "GET / HTTP/1.1\r\nHost: a.test\r\nX-Padding: {}\r\n\r\n",
            "a".repeat(20 * 1000)
        );
        let exchange = raw_exchange(running.fallback_addr, request.as_bytes()).await;
        assert_refused(&exchange, 431, "20 KB head over a 16 KiB limit");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_just_over_limit_gets_431() {
    // Heads the size of the limit plus a little, sent in one write, can fit in a single read that
    // overshoots the limit; the proxy must still refuse them.
    guarded(async {
        let running = proxy_with(&[PATIENT, "max_header_bytes: 16KiB"]).await;
        for over in [1usize, 100, 2000] {
            let prefix = "GET / HTTP/1.1\r\nHost: a.test\r\nX-Padding: ";
            let suffix = "\r\n\r\n";
            let padding = 16 * 1024 + over - prefix.len() - suffix.len();
            let request = format!("{prefix}{}{suffix}", "a".repeat(padding));
            let exchange = raw_exchange(running.fallback_addr, request.as_bytes()).await;
            assert_refused(&exchange, 431, &format!("head {over} bytes over the limit"));
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_partial_head_is_cut_off() {
    guarded(async {
        let running = proxy_with(&["header_read_timeout: 300ms"]).await;
        let mut stream = TcpStream::connect(running.fallback_addr)
            .await
            .expect("connect to the proxy");
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: a.test\r\nX-Slow: ")
            .await
            .expect("send a partial head");
        // Well under the 10 s default, so the configured timeout is the one that fired.
        let exchange = tokio::time::timeout(Duration::from_secs(5), read_until_closed(&mut stream))
            .await
            .expect("the proxy closed the connection of a client stalling mid-head");
        assert!(
            exchange.bytes.is_empty() || exchange.status() == Some(408),
            "expected nothing or 408 before the close, got {:?}",
            exchange.text()
        );
    })
    .await;
}
