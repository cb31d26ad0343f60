//! A client whose upload fails half-way is never the backend's fault, on every protocol: whether the
//! backend answers as it reads (an echo streams the request back, so the response is already flowing when
//! the upload breaks) or waits for the whole body first. After repeated aborted uploads the backend is
//! still healthy, with no failure counted against it, and nothing is left in flight.

use bytes::Bytes;
use h3::error::Code;
use http::{Request, StatusCode};
use http_body::Frame;
use http_body_util::{BodyExt as _, StreamBody};
use quic_proxy::app::Running;
use quic_proxy::balancer::Backend;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use crate::support::http3::*;
use crate::support::*;

/// Uploads aborted per protocol and backend behaviour: more than the passive threshold (1), so a single
/// failure charged to the backend would take it out.
const ABORTS: usize = 3;

/// When the backend answers an upload: while it reads (an echo), or once it has read it whole.
#[derive(Debug, Clone, Copy)]
enum Replies {
    WhileReading,
    AfterReading,
}

impl Replies {
    fn path(self) -> &'static str {
        match self {
            Self::WhileReading => "/echo",
            Self::AfterReading => "/upload",
        }
    }
}

async fn proxy(certs: &TestCerts) -> Running {
    let backend = start_backends(&["uploads"])[0];
    let tls = certs.server_line();
    start_tls_proxy(&render_config(
        &[tls.as_str(), "client_body_timeout: 3s"],
        &format!(
            "backends: {}\nhealth_check: {{enabled: false, passive: {{unhealthy_threshold: 1, reactivation: 1h, \
             max_ejection: 1h}}}}\ntimeouts: {{response_body: 3s}}\n",
            backend_list(&[("uploads", backend, 1)])
        ),
    ))
    .await
}

fn backend_of(running: &Running) -> std::sync::Arc<Backend> {
    let snapshot = running.snapshot();
    let backend = snapshot.backend("default", "uploads").expect("the backend");
    std::sync::Arc::clone(backend)
}

/// Once the proxy is done with every aborted exchange, the backend must be as clean as it started.
async fn assert_clean(running: &Running, what: &str) {
    let backend = backend_of(running);
    wait_until(|| backend.in_flight() == 0).await;
    let report = backend.health.report();
    assert!(
        report.healthy && report.consecutive_failures == 0 && report.last_error.is_none(),
        "{what}: the backend was charged with the client's failure: {report:?}"
    );
}

/// Waits until the upload has reached the backend (the proxy counts it in flight there).
async fn forwarded(running: &Running) {
    let backend = backend_of(running);
    wait_until(|| backend.in_flight() > 0).await;
}

/// HTTP/1.1: a chunked upload whose client half-closes the connection after the first chunk.
async fn h1_abort(running: &Running, replies: Replies) {
    let mut stream = TcpStream::connect(running.fallback_addr).await.expect("connect");
    let head = format!(
        "POST {} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
        replies.path()
    );
    stream
        .write_all(head.as_bytes())
        .await
        .expect("send the head and a chunk");
    match replies {
        Replies::WhileReading => {
            let mut seen = Vec::new();
            while !String::from_utf8_lossy(&seen).contains("hello") {
                let mut buffer = [0u8; 1024];
                let read = stream.read(&mut buffer).await.expect("read the echo");
                assert!(read > 0, "closed before the echo: {}", String::from_utf8_lossy(&seen));
                seen.extend_from_slice(&buffer[..read]);
            }
            assert!(String::from_utf8_lossy(&seen).starts_with("HTTP/1.1 200"));
        }
        Replies::AfterReading => forwarded(running).await,
    }
    stream.shutdown().await.expect("half-close");
    let mut rest = Vec::new();
    let _ = stream.read_to_end(&mut rest).await;
}

/// A request body the test can break: chunks, then an error.
fn breakable() -> (mpsc::Sender<Result<Bytes, BoxError>>, TestBody) {
    let (sender, receiver) = mpsc::channel::<Result<Bytes, BoxError>>(4);
    let frames = futures_util::stream::unfold(receiver, |mut receiver| async move {
        let item = receiver.recv().await?;
        Some((item.map(Frame::data), receiver))
    });
    (sender, StreamBody::new(frames).boxed())
}

/// HTTP/2: an upload whose client resets the stream after the first chunk.
async fn h2_abort(running: &Running, certs: &TestCerts, replies: Replies) {
    let (mut sender, authority) = h2_connect(running, certs).await;
    let (chunks, body) = breakable();
    let request = Request::post(format!("https://{authority}{}", replies.path()))
        .body(body)
        .expect("request");
    chunks
        .send(Ok(Bytes::from_static(b"hello")))
        .await
        .expect("first chunk");
    let response = tokio::spawn(sender.send_request(request));
    let broken = || Err::<Bytes, BoxError>("the client gave up on its upload".into());
    match replies {
        Replies::WhileReading => {
            let response = response.await.expect("request task").expect("response head");
            assert_eq!(response.status(), StatusCode::OK);
            let mut body = response.into_body();
            let first = body.frame().await.expect("a frame").expect("the echo");
            assert_eq!(first.into_data().ok().as_deref(), Some(&b"hello"[..]));
            chunks.send(broken()).await.expect("break the upload");
            while let Some(Ok(_)) = body.frame().await {}
        }
        Replies::AfterReading => {
            forwarded(running).await;
            chunks.send(broken()).await.expect("break the upload");
            let answered = response.await.expect("request task");
            assert!(
                answered.as_ref().map_or(true, |r| r.status() != StatusCode::OK),
                "a broken upload was answered 200"
            );
        }
    }
}

/// HTTP/3: an upload whose client resets its sending side after the first chunk and keeps reading.
async fn h3_abort(running: &Running, certs: &TestCerts, replies: Replies) {
    let mut client = H3Client::connect(quic_addr(running), certs).await;
    let request = client.sender.request("POST", replies.path()).body(()).expect("request");
    let mut stream = client.sender.open(request).await.expect("open the stream");
    stream
        .send_data(Bytes::from_static(b"hello"))
        .await
        .expect("first chunk");
    match replies {
        Replies::WhileReading => {
            let response = stream.recv_response().await.expect("response head");
            assert_eq!(response.status(), StatusCode::OK);
            let first = stream.recv_data().await.expect("the echo").expect("a chunk");
            assert!(bytes::Buf::remaining(&first) > 0);
            stream.stop_stream(Code::H3_REQUEST_CANCELLED);
            while let Ok(Some(_)) = stream.recv_data().await {}
        }
        Replies::AfterReading => {
            forwarded(running).await;
            stream.stop_stream(Code::H3_REQUEST_CANCELLED);
            if let Ok(response) = stream.recv_response().await {
                assert_ne!(response.status(), StatusCode::OK, "a broken upload was answered 200");
            }
        }
    }
    client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http1_upload_cut_off_is_never_the_backends_fault() {
    guarded(async {
        let certs = TestCerts::generate();
        let running = proxy(&certs).await;
        for replies in [Replies::WhileReading, Replies::AfterReading] {
            for _ in 0..ABORTS {
                h1_abort(&running, replies).await;
                assert_clean(&running, &format!("HTTP/1.1, {replies:?}")).await;
            }
        }
        assert!(running.shutdown().await);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_upload_reset_is_never_the_backends_fault() {
    guarded(async {
        let certs = TestCerts::generate();
        let running = proxy(&certs).await;
        for replies in [Replies::WhileReading, Replies::AfterReading] {
            for _ in 0..ABORTS {
                h2_abort(&running, &certs, replies).await;
                assert_clean(&running, &format!("HTTP/2, {replies:?}")).await;
            }
        }
        assert!(running.shutdown().await);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http3_upload_reset_is_never_the_backends_fault() {
    guarded(async {
        let certs = TestCerts::generate();
        let running = proxy(&certs).await;
        for replies in [Replies::WhileReading, Replies::AfterReading] {
            for _ in 0..ABORTS {
                h3_abort(&running, &certs, replies).await;
                assert_clean(&running, &format!("HTTP/3, {replies:?}")).await;
            }
        }
        assert!(running.shutdown().await);
    })
    .await;
}
