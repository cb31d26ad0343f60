//! A gRPC client over HTTP/3, for the gRPC suite (tests/grpc): tonic's client (`tonic::client::Grpc` with the
//! prost codec, so gRPC framing, status, `grpc-message` decoding and trailers-only answers are tonic's) over a
//! tower service that carries each call on an HTTP/3 request stream (h3 + h3-quinn), as tonic's own channel
//! carries it on an HTTP/2 stream. The messages are those of tests/grpc/echo.proto, declared by hand.
//!
//! `grpc_h3_client --connect ADDR --ca FILE [--server-name NAME] CALL [options]`
//!
//! CALL is unary, server-stream, client-stream, bidi, fail, fail-stream or deadline (the Echo methods).
//! Options: `--text S`, `--payload-bytes N` (each request's payload: byte i is i % 251), `--reply-bytes N`,
//! `--replies N`, `--messages N` (client-stream and bidi), `--code N` and `--message S` (fail),
//! `--wait-ms N` (deadline and server-stream: the server then waits that long, or until the call ends),
//! `--timeout-ms N` (the call's deadline, sent as `grpc-timeout`; nothing here enforces it, the server does),
//! `--metadata KEY=VALUE` (repeatable), `--count N` (the call N times in turn on one connection, texts
//! suffixed `-0`, `-1`, ...), `--limit-ms N` (this program's own bound on each call, default 30000),
//! `--cancel-after-replies N` (streaming calls: give up after N replies; the dropped stream is stopped with
//! STOP_SENDING by quinn, since h3-quinn panics on an explicit stop while a read is pending), `--hold` (keep
//! the connection open after the calls until stdin closes).
//!
//! The certificate in `--ca` is the only one trusted. Each call prints one JSON line: the outcome as tonic
//! reports it (`code`, `message`, `metadata`, `replies`) and the response as it came off the wire (`wire`:
//! HTTP status, header fields, trailer fields, body bytes), so a test can tell a trailers-only answer.
//! Bidi sends each request only after the reply to the previous one arrived, so it proves the proxy streams
//! both directions as they go. Exits non-zero when a call outlives `--limit-ms` or the connection fails.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::future::Future;
use std::io::Write as _;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use bytes::{Buf as _, Bytes};
use h3::client::{RequestStream, SendRequest};
use http::uri::PathAndQuery;
use http::HeaderMap;
use http_body::Frame;
use http_body_util::BodyExt as _;
use rustls::pki_types::CertificateDer;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tonic::client::Grpc;
use tonic::metadata::MetadataMap;
use tonic_prost::ProstCodec;

/// Large-message tests send 4 MiB payloads, above tonic's default 4 MiB limit once framed.
const MAX_MESSAGE: usize = 16 * 1024 * 1024;

#[derive(Clone, PartialEq, prost::Message)]
struct EchoRequest {
    #[prost(string, tag = "1")]
    text: String,
    #[prost(bytes = "bytes", tag = "2")]
    payload: Bytes,
    #[prost(uint32, tag = "3")]
    replies: u32,
    #[prost(uint64, tag = "4")]
    reply_bytes: u64,
    #[prost(uint32, tag = "5")]
    fail_code: u32,
    #[prost(string, tag = "6")]
    fail_message: String,
    #[prost(uint32, tag = "7")]
    wait_ms: u32,
}

#[derive(Clone, PartialEq, prost::Message)]
struct EchoReply {
    #[prost(string, tag = "1")]
    text: String,
    #[prost(bytes = "bytes", tag = "2")]
    payload: Bytes,
    #[prost(uint32, tag = "3")]
    index: u32,
    #[prost(uint32, tag = "4")]
    received_messages: u32,
    #[prost(uint64, tag = "5")]
    received_bytes: u64,
    #[prost(string, tag = "6")]
    received_sha256: String,
    #[prost(string, tag = "7")]
    server: String,
    #[prost(double, tag = "8")]
    time_remaining: f64,
    #[prost(string, tag = "9")]
    via: String,
}

#[derive(Clone, Copy, PartialEq)]
enum Call {
    Unary,
    ServerStream,
    ClientStream,
    Bidi,
    Fail,
    FailStream,
    Deadline,
}

impl Call {
    fn path(self) -> PathAndQuery {
        PathAndQuery::from_static(match self {
            Self::Unary => "/quicproxy.test.Echo/Unary",
            Self::ServerStream => "/quicproxy.test.Echo/ServerStream",
            Self::ClientStream => "/quicproxy.test.Echo/ClientStream",
            Self::Bidi => "/quicproxy.test.Echo/Bidi",
            Self::Fail => "/quicproxy.test.Echo/Fail",
            Self::FailStream => "/quicproxy.test.Echo/FailStream",
            Self::Deadline => "/quicproxy.test.Echo/Deadline",
        })
    }
}

struct Options {
    connect: SocketAddr,
    server_name: String,
    ca: String,
    call: Call,
    text: String,
    payload_bytes: usize,
    reply_bytes: u64,
    replies: u32,
    messages: u32,
    code: u32,
    message: String,
    wait_ms: u32,
    timeout: Option<Duration>,
    metadata: Vec<(String, String)>,
    count: u32,
    limit: Duration,
    cancel_after_replies: Option<usize>,
    hold: bool,
}

fn options() -> anyhow::Result<Options> {
    let usage = "usage: grpc_h3_client --connect ADDR --ca FILE [--server-name NAME] \
                 unary|server-stream|client-stream|bidi|fail|fail-stream|deadline [options]";
    let mut args = std::env::args().skip(1);
    let mut options = Options {
        connect: SocketAddr::from(([127, 0, 0, 1], 0)),
        server_name: "localhost".to_owned(),
        ca: String::new(),
        call: Call::Unary,
        text: "hello".to_owned(),
        payload_bytes: 0,
        reply_bytes: 0,
        replies: 1,
        messages: 1,
        code: 0,
        message: String::new(),
        wait_ms: 0,
        timeout: None,
        metadata: Vec::new(),
        count: 1,
        limit: Duration::from_secs(30),
        cancel_after_replies: None,
        hold: false,
    };
    let mut call = None;
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or_else(|| anyhow!("{arg} needs a value; {usage}"));
        match arg.as_str() {
            "--connect" => options.connect = value()?.parse().context("--connect")?,
            "--server-name" => options.server_name = value()?,
            "--ca" => options.ca = value()?,
            "--text" => options.text = value()?,
            "--payload-bytes" => options.payload_bytes = value()?.parse().context("--payload-bytes")?,
            "--reply-bytes" => options.reply_bytes = value()?.parse().context("--reply-bytes")?,
            "--replies" => options.replies = value()?.parse().context("--replies")?,
            "--messages" => options.messages = value()?.parse().context("--messages")?,
            "--code" => options.code = value()?.parse().context("--code")?,
            "--message" => options.message = value()?,
            "--wait-ms" => options.wait_ms = value()?.parse().context("--wait-ms")?,
            "--timeout-ms" => options.timeout = Some(Duration::from_millis(value()?.parse().context("--timeout-ms")?)),
            "--limit-ms" => options.limit = Duration::from_millis(value()?.parse().context("--limit-ms")?),
            "--count" => options.count = value()?.parse().context("--count")?,
            "--cancel-after-replies" => {
                options.cancel_after_replies = Some(value()?.parse().context("--cancel-after-replies")?)
            }
            "--hold" => options.hold = true,
            "--metadata" => {
                let pair = value()?;
                let (key, value) = pair
                    .split_once('=')
                    .ok_or_else(|| anyhow!("--metadata {pair}: expected KEY=VALUE"))?;
                options.metadata.push((key.to_owned(), value.to_owned()));
            }
            _ if arg.starts_with("--") => bail!("unknown option {arg}; {usage}"),
            name => {
                call = Some(match name {
                    "unary" => Call::Unary,
                    "server-stream" => Call::ServerStream,
                    "client-stream" => Call::ClientStream,
                    "bidi" => Call::Bidi,
                    "fail" => Call::Fail,
                    "fail-stream" => Call::FailStream,
                    "deadline" => Call::Deadline,
                    other => bail!("unknown call {other}; {usage}"),
                })
            }
        }
    }
    options.call = call.ok_or_else(|| anyhow!("{usage}"))?;
    if options.ca.is_empty() || options.connect.port() == 0 {
        bail!("{usage}");
    }
    Ok(options)
}

/// What one response looked like on the wire, recorded by the transport as tonic reads it.
#[derive(Default)]
struct Wire {
    status: u16,
    headers: HeaderMap,
    trailers: Option<HeaderMap>,
    body_bytes: u64,
}

/// The tower service tonic calls: each gRPC call is one HTTP/3 request stream on a shared connection.
#[derive(Clone)]
struct H3Channel {
    sender: SendRequest<h3_quinn::OpenStreams, Bytes>,
    wire: Arc<Mutex<Wire>>,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl tower_service::Service<http::Request<tonic::body::Body>> for H3Channel {
    type Response = http::Response<H3Body>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        let mut sender = self.sender.clone();
        let wire = Arc::clone(&self.wire);
        Box::pin(async move {
            let (parts, body) = request.into_parts();
            let stream = sender.send_request(http::Request::from_parts(parts, ())).await?;
            let (send, mut recv) = stream.split();
            tokio::spawn(send_body(send, body));
            let head = recv.recv_response().await?;
            *lock(&wire) = Wire {
                status: head.status().as_u16(),
                headers: head.headers().clone(),
                trailers: None,
                body_bytes: 0,
            };
            Ok(head.map(|()| H3Body {
                recv,
                data_done: false,
                done: false,
                wire,
            }))
        })
    }
}

/// Writes tonic's request body on the stream: DATA frames as tonic encodes messages, then the end of the
/// stream. A stream the server has stopped reading (it answered already) is left as it is.
async fn send_body(mut send: RequestStream<h3_quinn::SendStream<Bytes>, Bytes>, mut body: tonic::body::Body) {
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else {
            send.stop_stream(h3::error::Code::H3_REQUEST_CANCELLED);
            return;
        };
        if let Ok(data) = frame.into_data() {
            if send.send_data(data).await.is_err() {
                return;
            }
        }
    }
    let _ = send.finish().await;
}

/// A response body read from the request stream: DATA, then trailers.
struct H3Body {
    recv: RequestStream<h3_quinn::RecvStream, Bytes>,
    data_done: bool,
    done: bool,
    wire: Arc<Mutex<Wire>>,
}

impl http_body::Body for H3Body {
    type Data = Bytes;
    type Error = h3::error::StreamError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        if !this.data_done {
            match ready!(this.recv.poll_recv_data(cx)) {
                Ok(Some(mut chunk)) => {
                    let data = chunk.copy_to_bytes(chunk.remaining());
                    lock(&this.wire).body_bytes += data.len() as u64;
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Ok(None) => this.data_done = true,
                Err(error) => return Poll::Ready(Some(Err(error))),
            }
        }
        let trailers = ready!(this.recv.poll_recv_trailers(cx));
        this.done = true;
        match trailers {
            Ok(Some(trailers)) => {
                lock(&this.wire).trailers = Some(trailers.clone());
                Poll::Ready(Some(Ok(Frame::trailers(trailers))))
            }
            Ok(None) => Poll::Ready(None),
            Err(error) => Poll::Ready(Some(Err(error))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }
}

fn lock(wire: &Mutex<Wire>) -> std::sync::MutexGuard<'_, Wire> {
    wire.lock().unwrap_or_else(PoisonError::into_inner)
}

/// `size` bytes where byte i is i % 251, as the server's payloads are.
fn pattern(size: usize) -> Bytes {
    (0..size).map(|i| (i % 251) as u8).collect::<Vec<u8>>().into()
}

fn request_for(options: &Options, text: &str) -> EchoRequest {
    EchoRequest {
        text: text.to_owned(),
        payload: pattern(options.payload_bytes),
        replies: options.replies,
        reply_bytes: options.reply_bytes,
        fail_code: options.code,
        fail_message: options.message.clone(),
        wait_ms: options.wait_ms,
    }
}

fn tonic_request<T>(options: &Options, message: T) -> anyhow::Result<tonic::Request<T>> {
    let mut request = tonic::Request::new(message);
    if let Some(timeout) = options.timeout {
        request.set_timeout(timeout);
    }
    for (key, value) in &options.metadata {
        let key: tonic::metadata::MetadataKey<tonic::metadata::Ascii> =
            key.parse().with_context(|| format!("metadata key {key}"))?;
        request
            .metadata_mut()
            .insert(key, value.parse().with_context(|| format!("metadata value {value}"))?);
    }
    Ok(request)
}

fn reply_json(reply: &EchoReply) -> Value {
    json!({
        "text": reply.text,
        "index": reply.index,
        "payload_bytes": reply.payload.len(),
        "payload_intact": reply.payload == pattern(reply.payload.len()),
        "received_messages": reply.received_messages,
        "received_bytes": reply.received_bytes,
        "received_sha256": reply.received_sha256,
        "server": reply.server,
        "time_remaining": reply.time_remaining,
        "via": reply.via,
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn fields_json(headers: &HeaderMap) -> Value {
    let mut fields: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, value) in headers {
        let text = if name.as_str().ends_with("-bin") {
            hex(value.as_bytes())
        } else {
            String::from_utf8_lossy(value.as_bytes()).into_owned()
        };
        fields.entry(name.as_str().to_owned()).or_default().push(text);
    }
    json!(fields)
}

/// Metadata as tonic hands it over (the response head's, then the trailers'); binary values decoded from
/// base64 as tonic does and shown in hex, so a test compares the bytes the server set.
fn metadata_json(maps: &[MetadataMap]) -> Value {
    let mut fields: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for map in maps {
        for entry in map.iter() {
            let (key, text) = match entry {
                tonic::metadata::KeyAndValueRef::Ascii(key, value) => (
                    key.as_str(),
                    String::from_utf8_lossy(value.as_encoded_bytes()).into_owned(),
                ),
                tonic::metadata::KeyAndValueRef::Binary(key, value) => match value.to_bytes() {
                    Ok(bytes) => (key.as_str(), hex(&bytes)),
                    Err(_) => (key.as_str(), "<invalid base64>".to_owned()),
                },
            };
            fields.entry(key.to_owned()).or_default().push(text);
        }
    }
    json!(fields)
}

/// The outcome of one call as tonic reports it.
struct Outcome {
    status: Option<tonic::Status>,
    metadata: Vec<MetadataMap>,
    replies: Vec<EchoReply>,
    /// The client gave up on the call (`--cancel-after-replies`).
    cancelled: bool,
}

impl Outcome {
    fn failed(status: tonic::Status) -> Self {
        Self {
            metadata: vec![status.metadata().clone()],
            status: Some(status),
            replies: Vec::new(),
            cancelled: false,
        }
    }

    fn done(metadata: Vec<MetadataMap>, replies: Vec<EchoReply>) -> Self {
        Self {
            status: None,
            metadata,
            replies,
            cancelled: false,
        }
    }
}

async fn run_call(grpc: &mut Grpc<H3Channel>, options: &Options, text: &str) -> anyhow::Result<Outcome> {
    grpc.ready().await.map_err(|e| anyhow!("channel not ready: {e}"))?;
    let codec = ProstCodec::<EchoRequest, EchoReply>::default();
    let path = options.call.path();
    let outcome = match options.call {
        Call::Unary | Call::Fail | Call::Deadline => {
            let request = tonic_request(options, request_for(options, text))?;
            match grpc.unary(request, path, codec).await {
                Ok(response) => {
                    let (metadata, reply, _) = response.into_parts();
                    Outcome::done(vec![metadata], vec![reply])
                }
                Err(status) => Outcome::failed(status),
            }
        }
        Call::ServerStream | Call::FailStream => {
            let request = tonic_request(options, request_for(options, text))?;
            match grpc.server_streaming(request, path, codec).await {
                Ok(response) => {
                    let (metadata, stream, _) = response.into_parts();
                    drain(stream, metadata, None, options.cancel_after_replies).await
                }
                Err(status) => Outcome::failed(status),
            }
        }
        Call::ClientStream => {
            let requests: Vec<EchoRequest> = (0..options.messages).map(|_| request_for(options, text)).collect();
            let request = tonic_request(options, futures_util::stream::iter(requests))?;
            match grpc.client_streaming(request, path, codec).await {
                Ok(response) => {
                    let (metadata, reply, _) = response.into_parts();
                    Outcome::done(vec![metadata], vec![reply])
                }
                Err(status) => Outcome::failed(status),
            }
        }
        Call::Bidi => bidi(grpc, options, text, codec).await?,
    };
    Ok(outcome)
}

/// Reads a response stream to its end, trailers included; with a feeder, each reply lets the next request go.
/// With `cancel_after`, gives up once that many replies came: dropping the stream cancels the call.
async fn drain(
    mut stream: tonic::codec::Streaming<EchoReply>,
    metadata: MetadataMap,
    mut feeder: Option<Feeder<'_>>,
    cancel_after: Option<usize>,
) -> Outcome {
    let mut replies = Vec::new();
    loop {
        if cancel_after.is_some_and(|count| replies.len() >= count) {
            return Outcome {
                cancelled: true,
                ..Outcome::done(vec![metadata], replies)
            };
        }
        match stream.message().await {
            Ok(Some(reply)) => {
                replies.push(reply);
                if let Some(feeder) = &mut feeder {
                    feeder.send_next().await;
                }
            }
            Ok(None) => break,
            Err(status) => {
                return Outcome {
                    metadata: vec![metadata, status.metadata().clone()],
                    status: Some(status),
                    replies,
                    cancelled: false,
                }
            }
        }
    }
    match stream.trailers().await {
        Ok(trailers) => Outcome::done([metadata].into_iter().chain(trailers).collect(), replies),
        Err(status) => Outcome {
            metadata: vec![metadata, status.metadata().clone()],
            status: Some(status),
            replies,
            cancelled: false,
        },
    }
}

/// The request side of a bidi call: `--messages` requests, texts suffixed `#0`, `#1`, ..., each sent when
/// asked; the request stream ends after the last.
struct Feeder<'a> {
    tx: Option<mpsc::Sender<EchoRequest>>,
    next: u32,
    options: &'a Options,
    text: &'a str,
}

impl Feeder<'_> {
    async fn send_next(&mut self) {
        if self.next < self.options.messages {
            if let Some(tx) = &self.tx {
                let request = request_for(self.options, &format!("{}#{}", self.text, self.next));
                if tx.send(request).await.is_err() {
                    // The call is over (tonic dropped the request stream): nothing more to send.
                    self.tx = None;
                }
            }
            self.next += 1;
        }
        if self.next >= self.options.messages {
            self.tx = None;
        }
    }
}

/// Request i goes out only once reply i-1 has come back, so neither direction can be buffered whole.
async fn bidi(
    grpc: &mut Grpc<H3Channel>,
    options: &Options,
    text: &str,
    codec: ProstCodec<EchoRequest, EchoReply>,
) -> anyhow::Result<Outcome> {
    let (tx, rx) = mpsc::channel::<EchoRequest>(1);
    let outgoing = futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) });
    let mut feeder = Feeder {
        tx: Some(tx),
        next: 0,
        options,
        text,
    };
    feeder.send_next().await;
    let request = tonic_request(options, outgoing)?;
    let response = match grpc.streaming(request, Call::Bidi.path(), codec).await {
        Ok(response) => response,
        Err(status) => return Ok(Outcome::failed(status)),
    };
    let (metadata, stream, _) = response.into_parts();
    Ok(drain(stream, metadata, Some(feeder), options.cancel_after_replies).await)
}

fn client_tls(ca: &str, server_alpn: &[u8]) -> anyhow::Result<rustls::ClientConfig> {
    let pem = std::fs::read(ca).with_context(|| format!("read {ca}"))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
        let cert: CertificateDer<'static> = cert.with_context(|| format!("parse {ca}"))?;
        roots.add(cert).with_context(|| format!("trust {ca}"))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![server_alpn.to_vec()];
    Ok(tls)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let options = options()?;
    let tls = client_tls(&options.ca, b"h3")?;
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls)?;
    let bind: SocketAddr = if options.connect.is_ipv6() {
        "[::1]:0"
    } else {
        "127.0.0.1:0"
    }
    .parse()?;
    let mut endpoint = quinn::Endpoint::client(bind)?;
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(quic)));
    let connection = tokio::time::timeout(options.limit, endpoint.connect(options.connect, &options.server_name)?)
        .await
        .context("QUIC handshake timed out")?
        .context("QUIC handshake")?;
    let (mut driver, sender) = h3::client::new(h3_quinn::Connection::new(connection.clone())).await?;
    let driving = tokio::spawn(async move { std::future::poll_fn(|cx| driver.poll_close(cx)).await });

    let wire = Arc::new(Mutex::new(Wire::default()));
    let origin: http::Uri = format!("https://{}:{}", options.server_name, options.connect.port()).parse()?;
    let channel = H3Channel {
        sender,
        wire: Arc::clone(&wire),
    };
    let mut grpc = Grpc::with_origin(channel, origin)
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE);

    for number in 0..options.count {
        let text = if options.count == 1 {
            options.text.clone()
        } else {
            format!("{}-{number}", options.text)
        };
        let started = Instant::now();
        let Ok(outcome) = tokio::time::timeout(options.limit, run_call(&mut grpc, &options, &text)).await else {
            println!("{}", json!({"text": text, "limit_exceeded": true}));
            bail!("the call {text:?} did not end within {:?}", options.limit);
        };
        let outcome = outcome?;
        let elapsed = started.elapsed();
        let wire = std::mem::take(&mut *lock(&wire));
        let (code, message) = match &outcome.status {
            Some(status) => (status.code() as i32, status.message().to_owned()),
            None => (0, String::new()),
        };
        let line = json!({
            "text": text,
            "code": code,
            "message": message,
            "metadata": metadata_json(&outcome.metadata),
            "replies": outcome.replies.iter().map(reply_json).collect::<Vec<_>>(),
            "cancelled": outcome.cancelled,
            "elapsed_ms": elapsed.as_secs_f64() * 1000.0,
            "wire": {
                "status": wire.status,
                "headers": fields_json(&wire.headers),
                "trailers": wire.trailers.as_ref().map(fields_json),
                "body_bytes": wire.body_bytes,
            },
        });
        println!("{line}");
    }

    if options.hold {
        // The connection stays open until the test closes stdin, so what it checks meanwhile is the work of
        // the calls above, not of the connection closing.
        std::io::stdout().flush()?;
        let mut rest = Vec::new();
        tokio::io::AsyncReadExt::read_to_end(&mut tokio::io::stdin(), &mut rest).await?;
    }

    drop(grpc);
    connection.close(0u32.into(), b"done");
    let _ = tokio::time::timeout(Duration::from_secs(5), endpoint.wait_idle()).await;
    driving.abort();
    Ok(())
}
