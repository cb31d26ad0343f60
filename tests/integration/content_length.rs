//! One Content-Length grammar on every listener (RFC 9110 8.6: one value, `1*DIGIT`): the same malformed
//! value gets the same answer over HTTP/1.1, HTTP/2 and HTTP/3, and never reaches a backend. HTTP/1.1 and
//! HTTP/3 answer 400; on HTTP/2 the frame layer resets a stream whose length it cannot parse with
//! PROTOCOL_ERROR (RFC 9113 8.1.1, the answer it prescribes for a malformed message) before the request is
//! formed, and what it lets through (a repeated field) gets the same 400.

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::BodyExt as _;
use quic_proxy::app::Running;
use tokio::sync::mpsc;

use crate::support::http3::*;
use crate::support::*;

/// The body every request carries: five bytes, so `5` would be the right length.
const BODY: &[u8] = b"hello";

/// A Content-Length as sent: every field's value, in order.
struct Case {
    name: &'static str,
    values: &'static [&'static str],
    /// HTTP/1.1 strips whitespace around a field value (it is OWS there), so a leading space is no part of
    /// the value on that listener and the request is well formed.
    valid_over_http1: bool,
}

const CASES: &[Case] = &[
    Case {
        name: "a sign",
        values: &["+5"],
        valid_over_http1: false,
    },
    Case {
        name: "a list of equal values",
        values: &["5, 5"],
        valid_over_http1: false,
    },
    Case {
        name: "a list of different values",
        values: &["5,6"],
        valid_over_http1: false,
    },
    Case {
        name: "a leading space",
        values: &[" 5"],
        valid_over_http1: true,
    },
    Case {
        name: "hex",
        values: &["0x5"],
        valid_over_http1: false,
    },
    Case {
        name: "over 19 digits",
        values: &["99999999999999999999"],
        valid_over_http1: false,
    },
    Case {
        name: "a negative number",
        values: &["-5"],
        valid_over_http1: false,
    },
    Case {
        name: "the field twice",
        values: &["5", "5"],
        valid_over_http1: false,
    },
];

/// The proxy in front of a backend that reports every request head it receives.
async fn proxy(certs: &TestCerts) -> (Running, mpsc::UnboundedReceiver<String>) {
    let (backend, heads) = start_raw_backend(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
    let tls = certs.server_line();
    let running = start_tls_proxy(&render_config(
        &[tls.as_str()],
        &format!("backends: {}", backend_list(&[("lengths", backend, 1)])),
    ))
    .await;
    (running, heads)
}

/// What a listener did with a request.
#[derive(Debug, PartialEq)]
enum Answer {
    Status(StatusCode),
    /// The stream was reset (HTTP/2's frame layer refusing a malformed message).
    Reset(String),
}

async fn http1(running: &Running, case: &Case) -> Answer {
    let mut request = String::from("POST / HTTP/1.1\r\nHost: lengths.test\r\n");
    for value in case.values {
        request.push_str(&format!("Content-Length: {value}\r\n"));
    }
    request.push_str("\r\n");
    let mut bytes = request.into_bytes();
    bytes.extend_from_slice(BODY);
    let mut stream = tokio::net::TcpStream::connect(running.fallback_addr)
        .await
        .expect("connect");
    tokio::io::AsyncWriteExt::write_all(&mut stream, &bytes)
        .await
        .expect("send");
    let head = read_head(&mut stream).await;
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse::<u16>().ok())
        .and_then(|c| StatusCode::from_u16(c).ok());
    Answer::Status(code.unwrap_or_else(|| panic!("no status line: {head:?}")))
}

async fn http2(running: &Running, certs: &TestCerts, case: &Case) -> Answer {
    let (mut sender, authority) = h2_connect(running, certs).await;
    let mut request = Request::post(format!("https://{authority}/"));
    for value in case.values {
        request = request.header("content-length", *value);
    }
    let body = http_body_util::Full::new(Bytes::from_static(BODY))
        .map_err(|never| match never {})
        .boxed();
    match sender.send_request(request.body(body).expect("request")).await {
        Ok(response) => Answer::Status(response.status()),
        Err(error) => Answer::Reset(format!("{error:?}")),
    }
}

async fn http3(running: &Running, certs: &TestCerts, case: &Case) -> Answer {
    let mut client = H3Client::connect(quic_addr(running), certs).await;
    let mut request = client.sender.request("POST", "/");
    for value in case.values {
        request = request.header("content-length", *value);
    }
    let reply = client
        .sender
        .send(request.body(()).expect("request"), [Bytes::from_static(BODY)])
        .await;
    client.close().await;
    match reply {
        Ok(reply) => Answer::Status(reply.status),
        Err(error) => Answer::Reset(format!("{error:?}")),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_listener_refuses_the_same_malformed_lengths_and_none_reaches_a_backend() {
    guarded(async {
        let certs = TestCerts::generate();
        let (running, mut heads) = proxy(&certs).await;
        let bad_request = Answer::Status(StatusCode::BAD_REQUEST);
        for case in CASES {
            let over_http1 = http1(&running, case).await;
            if case.valid_over_http1 {
                assert_eq!(over_http1, Answer::Status(StatusCode::OK), "HTTP/1.1, {}", case.name);
                heads.recv().await.expect("the well-formed request reached the backend");
            } else {
                assert_eq!(over_http1, bad_request, "HTTP/1.1, {}", case.name);
            }
            let over_http2 = http2(&running, &certs, case).await;
            match &over_http2 {
                Answer::Status(status) => assert_eq!(*status, StatusCode::BAD_REQUEST, "HTTP/2, {}", case.name),
                Answer::Reset(error) => assert!(
                    error.contains("PROTOCOL_ERROR"),
                    "HTTP/2, {}: reset with {error}",
                    case.name
                ),
            }
            assert_eq!(
                http3(&running, &certs, case).await,
                bad_request,
                "HTTP/3, {}",
                case.name
            );
            assert!(
                heads.try_recv().is_err(),
                "{}: a malformed request reached the backend",
                case.name
            );
        }
        assert!(running.shutdown().await);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_well_formed_length_passes_on_every_listener() {
    guarded(async {
        let certs = TestCerts::generate();
        let (running, mut heads) = proxy(&certs).await;
        let well_formed = Case {
            name: "five",
            values: &["5"],
            valid_over_http1: true,
        };
        let ok = Answer::Status(StatusCode::OK);
        assert_eq!(http1(&running, &well_formed).await, ok);
        assert_eq!(http2(&running, &certs, &well_formed).await, ok);
        assert_eq!(http3(&running, &certs, &well_formed).await, ok);
        for protocol in ["HTTP/1.1", "HTTP/2", "HTTP/3"] {
            let head = heads.recv().await.expect("the request reached the backend");
            assert!(head.contains("content-length: 5\r\n"), "{protocol}: {head}");
        }
        assert!(running.shutdown().await);
    })
    .await;
}
