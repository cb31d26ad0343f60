//! One HTTP/3 request stream, bridged to the core: the receive half feeds the request body the core
//! forwards, the send half writes the core's response. A body is exact: none when the stream ended with
//! the head, a complete buffer when a Content-Length of at most 64 KiB was declared (read and checked before
//! forwarding), or a bounded channel fed by a pump that checks the length as it streams; either way the
//! stream must end properly after its trailers, and every wait for the client is bounded by
//! `server.client_body_timeout`. The receive half is always read to its end, or stopped, so clients never
//! see a reset for a request the proxy answered.

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use futures_util::FutureExt as _;
use h3::error::Code;
use h3::server::RequestStream;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response};
use http_body_util::BodyExt as _;
use quinn::ZeroRttAccepted;

use super::fields::Malformed;
use super::transport::{self, BidiStream};
use crate::body::{Body, BodySender, BoxError};
use crate::error::ProxyError;
use crate::proxy::{length_refusal, ClientInfo, ConnectProtocol, Core, Refused};
use crate::wire;

/// Request bodies up to this size with a declared Content-Length are read completely before forwarding,
/// so a body that does not match its Content-Length is refused before any backend sees the request.
const PREREAD_LIMIT: u64 = 64 * 1024;

type SendHalf = RequestStream<transport::SendStream<Bytes>, Bytes>;
type RecvHalf = RequestStream<transport::RecvStream, Bytes>;

/// A request stream whose head h3 has resolved, and what its task needs to know about it.
pub(super) struct Incoming<'a> {
    pub request: Request<()>,
    pub stream: RequestStream<BidiStream<Bytes>, Bytes>,
    pub malformed: Option<Malformed>,
    /// An extended CONNECT for WebSocket (h3 saw a stand-in `:protocol`, see `fields.rs`).
    pub websocket: bool,
    pub handshake: &'a Handshake,
    pub body_timeout: Duration,
}

pub(super) async fn serve_request(incoming: Incoming<'_>, core: &Core, client: ClientInfo) {
    let Incoming {
        request,
        stream,
        malformed,
        websocket,
        handshake,
        mut body_timeout,
    } = incoming;
    let (mut send, mut recv) = stream.split();
    let (mut parts, ()) = request.into_parts();
    // An extended CONNECT's `:protocol`, in the form every listener gives the core.
    let protocol = match parts.extensions.remove::<h3::ext::Protocol>() {
        Some(_) if websocket => Some(crate::proxy::WEBSOCKET.to_owned()),
        Some(protocol) => Some(protocol.as_str().to_owned()),
        None => None,
    };
    if websocket {
        // The request body is the client's half of a tunnel, whose silence the core bounds as a whole
        // (`server.idle_timeout`, both directions): one direction may rightly be quiet for long.
        body_timeout = Duration::MAX;
    }
    if let Some(protocol) = protocol {
        parts.extensions.insert(ConnectProtocol(protocol));
    }
    let mut refusal = malformed.map(ProxyError::BadRequest);
    if !is_safe(&parts.method) && !handshake.is_complete() {
        refusal = Some(ProxyError::TooEarly);
    }
    let declared = match declared_length(&parts.headers) {
        Ok(declared) => declared,
        Err(error) => {
            refusal.get_or_insert(error);
            None
        }
    };

    let (body, pump) = match declared {
        // Refused: the body will never be read. Say so with the HTTP/3 code for "nothing wrong", rather
        // than the transport's default, which clients report as a reset.
        _ if refusal.is_some() => {
            recv.stop_sending(Code::H3_NO_ERROR);
            (Body::empty(), None)
        }
        Some(length) if length <= PREREAD_LIMIT => match preread(&mut recv, length, body_timeout).await {
            Ok(body) => (body, None),
            Err(error) => {
                refusal = Some(error);
                (Body::empty(), None)
            }
        },
        None => match peek(&mut recv) {
            Peek::Ended => (Body::empty(), None),
            Peek::First(first) => {
                let (tx, channel) = Body::channel(declared);
                (channel, Some(pump_body(recv, tx, declared, first, body_timeout)))
            }
        },
        Some(_) => {
            let (tx, channel) = Body::channel(declared);
            (channel, Some(pump_body(recv, tx, declared, None, body_timeout)))
        }
    };
    let mut request = Request::from_parts(parts, body);
    if let Some(error) = refusal {
        request.extensions_mut().insert(Refused(error));
    }
    let respond = async {
        let response = core.handle(request, client).await;
        if let Err(error) = send_response(&mut send, response).await {
            tracing::debug!(peer = %client.peer, "HTTP/3 response not completed: {error}");
        }
    };
    match pump {
        Some(pump) => {
            tokio::join!(pump, respond);
        }
        None => respond.await,
    }
}

/// Whether the TLS handshake has completed: before that, requests arrive as 0-RTT data that an attacker
/// could replay, so only safe methods are served.
pub(super) struct Handshake {
    /// Fulfilled by quinn's connection driver the moment the handshake completes; `None` once seen.
    pending: Mutex<Option<ZeroRttAccepted>>,
}

impl Handshake {
    pub(super) fn complete() -> Self {
        Self {
            pending: Mutex::new(None),
        }
    }

    pub(super) fn pending(accepted: ZeroRttAccepted) -> Self {
        Self {
            pending: Mutex::new(Some(accepted)),
        }
    }

    fn is_complete(&self) -> bool {
        let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(accepted) = pending.as_mut() else {
            return true;
        };
        // Polled in place, never awaited: the answer is what quinn knows right now.
        if accepted.now_or_never().is_some() {
            *pending = None;
            return true;
        }
        false
    }
}

fn is_safe(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// The request's Content-Length, by the one grammar every listener uses.
fn declared_length(headers: &HeaderMap) -> Result<Option<u64>, ProxyError> {
    wire::content_length(
        headers
            .get_all(header::CONTENT_LENGTH)
            .iter()
            .map(HeaderValue::as_bytes),
    )
    .map_err(|error| ProxyError::BadRequest(length_refusal(error)))
}

const LENGTH_MISMATCH: ProxyError = ProxyError::BadRequest("request body does not match its Content-Length");

/// What a request stream holds right after its head, looked at without waiting.
enum Peek {
    /// The client finished the stream with the head: there is no body.
    Ended,
    /// A body may follow; here is its first chunk if it already arrived.
    First(Option<Bytes>),
}

/// Tells a request without a body (HEADERS with FIN) from one whose body follows, without waiting,
/// so that bodiless requests are forwarded with no body at all instead of an empty chunked one.
fn peek(recv: &mut RecvHalf) -> Peek {
    match std::future::poll_fn(|cx| recv.poll_recv_data(cx)).now_or_never() {
        Some(Ok(None)) => Peek::Ended,
        Some(Ok(Some(mut chunk))) => Peek::First(Some(chunk.copy_to_bytes(chunk.remaining()))),
        // Not yet known, or a stream error that the pump will meet again and report.
        Some(Err(_)) | None => Peek::First(None),
    }
}

/// Reads a small body completely and checks it against its Content-Length before anything is forwarded.
/// Each wait for more of it is bounded by `server.client_body_timeout`.
async fn preread(recv: &mut RecvHalf, length: u64, body_timeout: Duration) -> Result<Body, ProxyError> {
    let stalled = |recv: &mut RecvHalf| {
        recv.stop_sending(Code::H3_REQUEST_CANCELLED);
        ProxyError::ClientBodyTimeout(body_timeout)
    };
    let mut buffer = BytesMut::with_capacity(usize::try_from(length).unwrap_or(0));
    loop {
        let Ok(next) = tokio::time::timeout(body_timeout, recv.recv_data()).await else {
            return Err(stalled(recv));
        };
        match next {
            Ok(Some(mut chunk)) => {
                if (buffer.len() + chunk.remaining()) as u64 > length {
                    recv.stop_sending(Code::H3_MESSAGE_ERROR);
                    return Err(LENGTH_MISMATCH);
                }
                buffer.extend_from_slice(&chunk.copy_to_bytes(chunk.remaining()));
            }
            Ok(None) => break,
            Err(_) => return Err(ProxyError::BadRequest("request stream failed")),
        }
    }
    if buffer.len() as u64 != length {
        return Err(LENGTH_MISMATCH);
    }
    let Ok(trailers) = tokio::time::timeout(body_timeout, end_of_request(recv)).await else {
        return Err(stalled(recv));
    };
    Ok(Body::complete(buffer.freeze(), trailers?))
}

/// What ends a request stream once its DATA frames are over: its trailers, if any, and then the end of the
/// stream itself. Anything after the trailers (DATA, a second HEADERS) is malformed (RFC 9114 4.1), and the
/// request is refused rather than passed on as complete.
async fn end_of_request(recv: &mut RecvHalf) -> Result<Option<HeaderMap>, ProxyError> {
    const AFTER_TRAILERS: ProxyError = ProxyError::BadRequest("frames after the request's trailers");
    let failed = |_| ProxyError::BadRequest("request stream failed");
    let Some(trailers) = recv.recv_trailers().await.map_err(failed)? else {
        return Ok(None);
    };
    let more_data = recv.recv_data().await.map_err(failed)?.is_some();
    if more_data || recv.recv_trailers().await.map_err(failed)?.is_some() {
        recv.stop_sending(Code::H3_FRAME_UNEXPECTED);
        return Err(AFTER_TRAILERS);
    }
    Ok(Some(trailers))
}

/// Streams the request body (after `first`, a chunk already read) into the channel, checking it against
/// Content-Length as it goes, and ends it only once the stream has ended properly. Stops, and stops the
/// stream, as soon as the core drops the body (the backend answered without it, or it stalled), so a
/// silent client never keeps this task alive.
async fn pump_body(
    mut recv: RecvHalf,
    tx: BodySender,
    declared: Option<u64>,
    mut first: Option<Bytes>,
    body_timeout: Duration,
) {
    let mut received = 0u64;
    loop {
        let next = match first.take() {
            Some(data) => Ok(Some(data)),
            None => tokio::select! {
                next = recv.recv_data() => next.map(|chunk| chunk.map(|mut c| c.copy_to_bytes(c.remaining()))),
                () = tx.closed() => {
                    recv.stop_sending(Code::H3_NO_ERROR);
                    return;
                }
            },
        };
        match next {
            Ok(Some(data)) => {
                received += data.len() as u64;
                if declared.is_some_and(|length| received > length) {
                    recv.stop_sending(Code::H3_MESSAGE_ERROR);
                    tx.fail(LENGTH_MISMATCH).await;
                    return;
                }
                if tx.data(data).await.is_err() {
                    // The core stopped reading: the backend answered without the rest of the body.
                    recv.stop_sending(Code::H3_NO_ERROR);
                    return;
                }
            }
            Ok(None) => break,
            Err(error) => {
                tx.fail(error).await;
                return;
            }
        }
    }
    if declared.is_some_and(|length| received != length) {
        tx.fail(LENGTH_MISMATCH).await;
        return;
    }
    let ended = tokio::select! {
        ended = tokio::time::timeout(body_timeout, end_of_request(&mut recv)) => ended,
        () = tx.closed() => return,
    };
    match ended {
        Ok(Ok(Some(trailers))) => tx.trailers(trailers).await,
        Ok(Ok(None)) => tx.finish().await,
        Ok(Err(error)) => tx.fail(error).await,
        Err(_) => {
            recv.stop_sending(Code::H3_REQUEST_CANCELLED);
            tx.fail(ProxyError::ClientBodyTimeout(body_timeout)).await;
        }
    }
}

/// Writes the core's response on the stream: head, data, trailers, then FIN.
async fn send_response(send: &mut SendHalf, response: Response<Body>) -> Result<(), BoxError> {
    let (parts, mut body) = response.into_parts();
    send.send_response(Response::from_parts(parts, ())).await?;
    while let Some(frame) = body.frame().await {
        let frame = match frame {
            Ok(frame) => frame,
            Err(error) => {
                send.stop_stream(Code::H3_INTERNAL_ERROR);
                return Err(error);
            }
        };
        match frame.into_data() {
            Ok(data) => send.send_data(data).await?,
            Err(frame) => {
                if let Ok(trailers) = frame.into_trailers() {
                    send.send_trailers(trailers).await?;
                    break;
                }
            }
        }
    }
    send.finish().await?;
    Ok(())
}
