//! The demo backend (`quic-proxy backend`): answers with its name and what it received, and can be told
//! over HTTP to fail its health checks or slow down, for demos, tests, failover drills and benchmarks.
//!
//! - `GET /health`: 200 `ok`, or the status set through `/control/health/{status}`.
//! - `POST /control/health/{status}`, `POST /control/latency/{ms}`: change behaviour (`200`, `0` restore).
//! - `/bytes/{n}`: streams `n` bytes. `/echo`: streams the request body back. `/status/{code}`: that status.
//! - `/text/{n}`: `n` bytes of JSON lines (`text/plain`), as compressible as a typical API answer.
//! - `?delay_ms=N` on any request: wait N ms before answering.
//! - any other request: JSON with the backend's name, the method, path, headers, and body size and SHA-256.
//! - `Upgrade` requests: 101, then the upgraded connection echoes what it receives; a WebSocket handshake
//!   (`Upgrade: websocket` with a key) is answered as RFC 6455 says and every message is echoed.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt as _;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt as _, BodyStream};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;

use crate::body::Body;
use crate::runtime::{accept_loop, Shutdown};

/// A demo backend's name and the behaviour it was told to have.
#[derive(Debug)]
pub struct DemoBackend {
    name: String,
    health_status: AtomicU16,
    latency_ms: AtomicU64,
}

const CHUNK: usize = 64 * 1024;
static PATTERN: [u8; CHUNK] = [b'x'; CHUNK];

impl DemoBackend {
    /// A backend that answers as `name`.
    pub fn new(name: &str) -> Arc<Self> {
        Arc::new(Self {
            name: name.to_owned(),
            health_status: AtomicU16::new(200),
            latency_ms: AtomicU64::new(0),
        })
    }

    /// Serves on `listener` until `shutdown` begins.
    pub async fn serve(self: Arc<Self>, listener: TcpListener, shutdown: Shutdown) {
        let mut builder = http1::Builder::new();
        builder.timer(TokioTimer::new()).keep_alive(true);
        accept_loop(listener, shutdown, move |stream, _peer| {
            let backend = Arc::clone(&self);
            let connection = builder
                .serve_connection(
                    TokioIo::new(stream),
                    service_fn(move |request| {
                        let backend = Arc::clone(&backend);
                        async move { Ok::<_, Infallible>(backend.respond(request).await) }
                    }),
                )
                .with_upgrades();
            async move {
                if let Err(error) = connection.await {
                    tracing::debug!("demo backend connection ended: {error}");
                }
            }
        })
        .await;
    }

    async fn respond(&self, mut request: Request<Incoming>) -> Response<Body> {
        let delay =
            self.latency_ms.load(Ordering::Relaxed) + query_number(request.uri().query(), "delay_ms").unwrap_or(0);
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        let path = request.uri().path().to_owned();
        let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        let mut response = match (request.method(), segments.as_slice()) {
            (_, ["health"]) => {
                let status = StatusCode::from_u16(self.health_status.load(Ordering::Relaxed)).unwrap_or(StatusCode::OK);
                text(status, if status.is_success() { "ok\n" } else { "failing\n" })
            }
            (&Method::POST, ["control", "health", status]) => {
                match status.parse::<u16>().ok().and_then(|s| StatusCode::from_u16(s).ok()) {
                    Some(status) => {
                        self.health_status.store(status.as_u16(), Ordering::Relaxed);
                        text(StatusCode::OK, "health status set\n")
                    }
                    None => text(StatusCode::BAD_REQUEST, "expected /control/health/{status}\n"),
                }
            }
            (&Method::POST, ["control", "latency", ms]) => match ms.parse::<u64>() {
                Ok(ms) => {
                    self.latency_ms.store(ms, Ordering::Relaxed);
                    text(StatusCode::OK, "latency set\n")
                }
                Err(_) => text(StatusCode::BAD_REQUEST, "expected /control/latency/{ms}\n"),
            },
            (_, ["bytes", count]) => match count.parse::<u64>() {
                Ok(count) => stream_bytes(count),
                Err(_) => text(StatusCode::BAD_REQUEST, "expected /bytes/{count}\n"),
            },
            (_, ["text", count]) => match count.parse::<u64>() {
                Ok(count) => stream_text(count),
                Err(_) => text(StatusCode::BAD_REQUEST, "expected /text/{count}\n"),
            },
            (_, ["status", code]) => match code.parse::<u16>().ok().and_then(|c| StatusCode::from_u16(c).ok()) {
                Some(status) => text(status, "as requested\n"),
                None => text(StatusCode::BAD_REQUEST, "expected /status/{code}\n"),
            },
            (_, ["echo"]) => Response::new(Body::from(request.into_body())),
            _ if request.headers().contains_key(header::UPGRADE) => upgrade_and_echo(&mut request),
            _ => self.describe(request).await,
        };
        if let Ok(name) = HeaderValue::from_str(&self.name) {
            response.headers_mut().insert("x-backend", name);
        }
        response
    }

    /// The JSON description of a request; reads the body to the end to count and hash it.
    async fn describe(&self, request: Request<Incoming>) -> Response<Body> {
        let (parts, body) = request.into_parts();
        let mut hasher = Sha256::new();
        let mut body_bytes = 0u64;
        let mut frames = BodyStream::new(body);
        while let Some(frame) = frames.next().await {
            match frame {
                Ok(frame) => {
                    if let Some(data) = frame.data_ref() {
                        body_bytes += data.len() as u64;
                        hasher.update(data);
                    }
                }
                Err(error) => return text(StatusCode::BAD_REQUEST, &format!("body read failed: {error}\n")),
            }
        }
        let headers: BTreeMap<&str, Vec<&str>> = parts
            .headers
            .keys()
            .map(|name| {
                let values = parts
                    .headers
                    .get_all(name)
                    .iter()
                    .map(|v| v.to_str().unwrap_or("<binary>"))
                    .collect();
                (name.as_str(), values)
            })
            .collect();
        let description = serde_json::json!({
            "backend": self.name,
            "method": parts.method.as_str(),
            "path": parts.uri.path(),
            "query": parts.uri.query(),
            "version": format!("{:?}", parts.version),
            "headers": headers,
            "body_bytes": body_bytes,
            "body_sha256": format!("{:x}", hasher.finalize()),
        });
        let mut response = Response::new(Body::full(description.to_string()));
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        response
    }
}

fn query_number(query: Option<&str>, key: &str) -> Option<u64> {
    query?
        .split('&')
        .find_map(|pair| pair.strip_prefix(key)?.strip_prefix('=')?.parse().ok())
}

fn text(status: StatusCode, body: &str) -> Response<Body> {
    let mut response = Response::new(Body::full(body.to_owned()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

fn stream_bytes(count: u64) -> Response<Body> {
    let (tx, body) = Body::channel(Some(count));
    tokio::spawn(async move {
        let mut left = count;
        while left > 0 {
            let take = left.min(CHUNK as u64) as usize;
            if tx.data(Bytes::from_static(&PATTERN[..take])).await.is_err() {
                return;
            }
            left -= take as u64;
        }
        tx.finish().await;
    });
    let mut response = Response::new(body);
    response
        .headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from(count));
    response
}

/// `CHUNK` bytes of JSON lines with varying numbers and names, made once: the same every run, and about as
/// compressible as real API answers (gzip takes it to roughly a fifth), unlike a run of one byte.
fn json_lines() -> &'static Bytes {
    static TEXT: std::sync::OnceLock<Bytes> = std::sync::OnceLock::new();
    TEXT.get_or_init(|| {
        const WORDS: [&str; 8] = ["alpha", "bravo", "delta", "kilo", "lima", "oscar", "sierra", "tango"];
        let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut text = Vec::with_capacity(CHUNK + 256);
        let mut id = 0u64;
        while text.len() < CHUNK {
            id += 1;
            let (a, b, c) = (next(), next(), next());
            let line = format!(
                "{{\"id\":{id},\"name\":\"{}-{}\",\"price\":{}.{:02},\"stock\":{},\"tags\":[\"{}\",\"{}\"]}}\n",
                WORDS[(a % 8) as usize],
                a % 10_000,
                b % 1_000,
                b % 100,
                c % 500,
                WORDS[(c % 8) as usize],
                WORDS[(b % 8) as usize],
            );
            text.extend_from_slice(line.as_bytes());
        }
        text.truncate(CHUNK);
        Bytes::from(text)
    })
}

fn stream_text(count: u64) -> Response<Body> {
    let (tx, body) = Body::channel(Some(count));
    tokio::spawn(async move {
        let mut left = count;
        while left > 0 {
            let take = left.min(CHUNK as u64) as usize;
            if tx.data(json_lines().slice(..take)).await.is_err() {
                return;
            }
            left -= take as u64;
        }
        tx.finish().await;
    });
    let mut response = Response::new(body);
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(count));
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

fn upgrade_and_echo(request: &mut Request<Incoming>) -> Response<Body> {
    let protocol = request.headers().get(header::UPGRADE).cloned();
    let websocket_key = request
        .headers()
        .get(header::SEC_WEBSOCKET_KEY)
        .and_then(|key| key.to_str().ok())
        .filter(|_| {
            protocol
                .as_ref()
                .is_some_and(|p| p.as_bytes().eq_ignore_ascii_case(b"websocket"))
        })
        .map(str::to_owned);
    let on_upgrade = hyper::upgrade::on(request);
    if let Some(key) = websocket_key {
        tokio::spawn(async move {
            if let Ok(upgraded) = on_upgrade.await {
                echo_websocket(TokioIo::new(upgraded)).await;
            }
        });
        let mut response = Response::new(Body::empty());
        *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let headers = response.headers_mut();
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        if let Ok(accept) = HeaderValue::from_str(&crate::wire::websocket_accept(&key)) {
            headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
        }
        return response;
    }
    tokio::spawn(async move {
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        let mut io = TokioIo::new(upgraded);
        let mut buffer = vec![0u8; 16 * 1024];
        while let Ok(read) = io.read(&mut buffer).await {
            if read == 0 || io.write_all(&buffer[..read]).await.is_err() {
                return;
            }
        }
    });
    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    if let Some(protocol) = protocol {
        headers.insert(header::UPGRADE, protocol);
    }
    response
}

/// A WebSocket server that sends every text and binary message back, answers pings (tungstenite does) and
/// closes when the client does.
async fn echo_websocket<S>(io: S)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use futures_util::{SinkExt as _, StreamExt as _};
    use tokio_tungstenite::tungstenite::protocol::Role;
    use tokio_tungstenite::tungstenite::Message;
    let mut socket = tokio_tungstenite::WebSocketStream::from_raw_socket(io, Role::Server, None).await;
    while let Some(Ok(message)) = socket.next().await {
        // A close from the client is answered by tungstenite itself, then the stream ends.
        let echo = match message {
            Message::Text(_) | Message::Binary(_) => message,
            Message::Close(_) | Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => continue,
        };
        if socket.send(echo).await.is_err() {
            return;
        }
    }
}

/// Drains a body without keeping it (used by clients in tests and benches).
pub async fn drain(body: Incoming) -> Result<u64, hyper::Error> {
    let mut total = 0u64;
    let mut body = body;
    while let Some(frame) = body.frame().await {
        if let Some(data) = frame?.data_ref() {
            total += data.len() as u64;
        }
    }
    Ok(total)
}
