//! HTTP/1.1 to backends, driven by the request's own task: no connection task, no channel, no hop between
//! tasks. The task writes the request (head and body, Content-Length or chunked, trailers included) while
//! it reads the response head; the response body then reads straight from the connection, and hands the
//! connection back to its worker's pool once the exchange is complete and the connection reusable.
//!
//! Responses are read strictly: a head larger than the limit, a malformed head or chunk, or a body that ends
//! early fails the exchange (the backend's fault). Chunked framing wins over a Content-Length sent with it
//! (RFC 9112 6.3) and the Content-Length is dropped. Nothing ambiguous is ever relayed as complete.

use std::fmt::Write as _;
use std::future::Future as _;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Response, StatusCode, Version};
use http_body::{Body as _, Frame};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

use crate::body::{Body, BoxError};

use super::connect::Stream;
use super::limits::Limits;

/// The largest response head (and trailer section) read from a backend.
const MAX_HEAD: usize = 64 * 1024;
/// Response header fields read from a backend at most.
const MAX_FIELDS: usize = 256;
/// Idle connections kept per backend and worker.
const MAX_IDLE: usize = 256;
/// How much is read from a backend at a time.
const READ_CHUNK: usize = 16 * 1024;

/// A connection to a backend with what was read from it and not yet used.
#[derive(Debug)]
pub struct Conn {
    stream: Stream,
    buffer: BytesMut,
    /// Taken from the pool (it served a request before).
    pub reused: bool,
}

impl Conn {
    /// A fresh connection.
    pub fn new(stream: Stream) -> Self {
        Self {
            stream,
            buffer: BytesMut::new(),
            reused: false,
        }
    }
}

/// What a response body reads from: the whole connection, or only its reading half while a task still
/// writes the rest of the request on the other.
#[derive(Debug)]
enum Reader {
    Whole(Conn),
    Half {
        half: tokio::io::ReadHalf<Stream>,
        buffer: BytesMut,
    },
}

impl Reader {
    fn parts(&mut self) -> (Pin<&mut (dyn AsyncRead + Send + Unpin)>, &mut BytesMut) {
        match self {
            Self::Whole(conn) => (Pin::new(&mut conn.stream), &mut conn.buffer),
            Self::Half { half, buffer } => (Pin::new(half), buffer),
        }
    }
}

/// One worker's idle connections to one backend.
#[derive(Debug)]
pub struct Pool {
    idle: Mutex<Vec<(Conn, Instant)>>,
    /// Told when a connection goes idle, for requests waiting under the backend's connection limit.
    limits: Arc<Limits>,
}

impl Pool {
    /// An empty pool whose connections count against `limits`.
    pub fn new(limits: Arc<Limits>) -> Self {
        Self {
            idle: Mutex::default(),
            limits,
        }
    }

    /// The most recently used idle connection still fit for a request: idle less than `max_idle` and not
    /// closed by the backend meanwhile.
    pub fn checkout(&self, max_idle: Duration) -> Option<Conn> {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        while let Some((mut conn, since)) = idle.pop() {
            if since.elapsed() < max_idle && conn.stream.idle_usable() {
                conn.reused = true;
                return Some(conn);
            }
        }
        None
    }

    fn checkin(&self, conn: Conn) {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        if idle.len() < MAX_IDLE {
            idle.push((conn, Instant::now()));
            drop(idle);
            self.limits.connection_idle();
        }
    }

    /// Closes the longest-idle connection, freeing its slot; false when none is idle.
    pub fn close_oldest(&self) -> bool {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        if idle.is_empty() {
            return false;
        }
        drop(idle.remove(0));
        true
    }

    /// Closes connections idle longer than `max_idle`.
    pub fn prune(&self, max_idle: Duration) {
        self.idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|(_, since)| since.elapsed() < max_idle);
    }
}

/// How an exchange failed.
#[derive(Debug)]
pub enum Failure {
    /// The request body failed (the client's side): the error it gave.
    Body(BoxError),
    /// Writing to or reading from the backend failed; `responded` says whether any response byte came.
    Io { error: io::Error, responded: bool },
    /// The backend closed the connection; `responded` as above.
    Closed { responded: bool },
    /// The backend sent something that is not a valid HTTP/1.1 response.
    Protocol(&'static str),
    /// No response head within the deadline after the request was sent.
    Timeout,
}

/// A response, or the connection the backend switched to another protocol (101).
pub enum Answer {
    Response(Response<Body>),
    Upgraded(Response<Body>, Upgraded),
}

/// A request head encoded for the wire, kept so that the request can be sent again on a fresh connection.
#[derive(Debug, Clone)]
pub struct EncodedHead {
    bytes: Bytes,
    chunked: bool,
    head_request: bool,
    upgrade: bool,
}

impl EncodedHead {
    /// Encodes the request line and fields, framing the body by Content-Length when `body` knows its size
    /// and chunked (which carries trailers) when not.
    pub fn new(method: &Method, uri: &http::Uri, headers: &HeaderMap, body: &Body) -> Self {
        let mut out = BytesMut::with_capacity(256 + headers.len() * 32);
        out.put_slice(method.as_str().as_bytes());
        out.put_u8(b' ');
        out.put_slice(uri.path_and_query().map_or("/", |p| p.as_str()).as_bytes());
        out.put_slice(b" HTTP/1.1\r\n");
        for (name, value) in headers.iter() {
            if name == header::CONTENT_LENGTH || name == header::TRANSFER_ENCODING {
                continue;
            }
            out.put_slice(name.as_str().as_bytes());
            out.put_slice(b": ");
            out.put_slice(value.as_bytes());
            out.put_slice(b"\r\n");
        }
        let chunked = if body.is_end_stream() {
            // A request method that defines a body gets an explicit empty one.
            if matches!(*method, Method::POST | Method::PUT | Method::PATCH) {
                out.put_slice(b"content-length: 0\r\n");
            }
            false
        } else if let Some(length) = body.size_hint().exact() {
            let _ = write!(out, "content-length: {length}\r\n");
            false
        } else {
            out.put_slice(b"transfer-encoding: chunked\r\n");
            true
        };
        out.put_slice(b"\r\n");
        Self {
            bytes: out.freeze(),
            chunked,
            head_request: *method == Method::HEAD,
            upgrade: headers.contains_key(header::UPGRADE),
        }
    }
}

/// Sends a request (`head`, then `body`) on `conn` and reads the response head. The body is written while
/// the head is read, so a backend that answers before reading the whole body (413, an early 401) is heard.
/// `response_timeout` runs from the moment the request has been written in full; `on_sent` is told then.
pub async fn exchange(
    mut conn: Conn,
    head: &EncodedHead,
    mut body: Body,
    response_timeout: Duration,
    on_sent: impl FnOnce(),
    pool: &std::sync::Arc<Pool>,
) -> Result<Answer, Failure> {
    let mut writer = Writer {
        head: head.bytes.clone(),
        out: BytesMut::new(),
        data: Bytes::new(),
        suffix: b"",
        chunked: head.chunked,
        body_ended: body.is_end_stream(),
        done: false,
    };
    let mut on_sent = Some(on_sent);
    let mut deadline: Option<Pin<Box<tokio::time::Sleep>>> = None;
    let head_read = std::future::poll_fn(|cx| {
        if !writer.done {
            match writer.poll(cx, &mut conn.stream, &mut body) {
                Poll::Ready(Ok(())) => {
                    writer.done = true;
                    if let Some(on_sent) = on_sent.take() {
                        on_sent();
                    }
                    deadline = Some(Box::pin(tokio::time::sleep(response_timeout)));
                }
                Poll::Ready(Err(failure)) => return Poll::Ready(Err(failure)),
                Poll::Pending => {}
            }
        }
        loop {
            let response = match poll_head(cx, &mut conn) {
                Poll::Ready(response) => response?,
                Poll::Pending => {
                    let expired = deadline
                        .as_mut()
                        .is_some_and(|timer| timer.as_mut().poll(cx).is_ready());
                    return if expired {
                        Poll::Ready(Err(Failure::Timeout))
                    } else {
                        Poll::Pending
                    };
                }
            };
            // Interim answers (100 Continue, 103 Early Hints) are skipped; 101 ends the exchange.
            if response.status.is_informational() && response.status != StatusCode::SWITCHING_PROTOCOLS {
                continue;
            }
            return Poll::Ready(Ok(response));
        }
    })
    .await?;

    let mut response = Response::new(Body::empty());
    *response.status_mut() = head_read.status;
    *response.version_mut() = head_read.version;
    let mut headers = head_read.headers;
    if head_read.status == StatusCode::SWITCHING_PROTOCOLS {
        if !head.upgrade {
            return Err(Failure::Protocol(
                "101 Switching Protocols to a request that asked for no upgrade",
            ));
        }
        *response.headers_mut() = headers;
        let upgraded = Upgraded {
            leftover: conn.buffer.split().freeze(),
            stream: conn.stream,
        };
        return Ok(Answer::Upgraded(response, upgraded));
    }
    let framing = response_framing(head_read.status, head.head_request, &mut headers)?;
    let reusable = keeps_alive(head_read.version, &headers) && !matches!(framing, Framing::UntilClose);
    *response.headers_mut() = headers;
    let body = if writer.done {
        match framing {
            Framing::Length(0) => {
                if reusable && conn.buffer.is_empty() {
                    pool.checkin(conn);
                }
                Body::empty()
            }
            framing => Body::from(ResponseBody {
                reader: Some(Reader::Whole(conn)),
                framing,
                reusable,
                pool: std::sync::Arc::clone(pool),
            }),
        }
    } else {
        // The backend answered before it had the whole request (it streams a reply to a streamed request,
        // like an echo or a gRPC bidirectional call, or refuses an upload early): a task of its own writes
        // the rest, so that request and response flow independently. The connection is not reused.
        let (half, mut write) = tokio::io::split(conn.stream);
        tokio::spawn(async move {
            let written = std::future::poll_fn(|cx| writer.poll(cx, &mut write, &mut body)).await;
            if let Err(Failure::Body(error)) = written {
                tracing::debug!("request body failed while the response streamed: {error}");
            }
        });
        Body::from(ResponseBody {
            reader: Some(Reader::Half {
                half,
                buffer: conn.buffer,
            }),
            framing,
            reusable: false,
            pool: std::sync::Arc::clone(pool),
        })
    };
    *response.body_mut() = body;
    Ok(Answer::Response(response))
}

/// Writes the request: its encoded head, then the body as it comes, in chunks (with trailers) when the
/// head said chunked.
struct Writer {
    /// The encoded head, until written.
    head: Bytes,
    /// Chunk framing (and trailers) not yet written, before `data`.
    out: BytesMut,
    /// Body data not yet written.
    data: Bytes,
    /// Bytes to write after `data` (a chunk's CRLF).
    suffix: &'static [u8],
    chunked: bool,
    body_ended: bool,
    done: bool,
}

impl Writer {
    fn poll<W: AsyncWrite + Unpin>(
        &mut self,
        cx: &mut Context<'_>,
        stream: &mut W,
        body: &mut Body,
    ) -> Poll<Result<(), Failure>> {
        loop {
            if !self.head.is_empty() || !self.out.is_empty() || !self.data.is_empty() || !self.suffix.is_empty() {
                let slices = [
                    io::IoSlice::new(&self.head),
                    io::IoSlice::new(&self.out),
                    io::IoSlice::new(&self.data),
                    io::IoSlice::new(self.suffix),
                ];
                let written =
                    ready!(Pin::new(&mut *stream).poll_write_vectored(cx, &slices)).map_err(|error| Failure::Io {
                        error,
                        responded: false,
                    })?;
                if written == 0 {
                    return Poll::Ready(Err(Failure::Closed { responded: false }));
                }
                self.advance(written);
                continue;
            }
            if self.body_ended {
                ready!(Pin::new(&mut *stream).poll_flush(cx)).map_err(|error| Failure::Io {
                    error,
                    responded: false,
                })?;
                return Poll::Ready(Ok(()));
            }
            match ready!(Pin::new(&mut *body).poll_frame(cx)) {
                None => {
                    if self.chunked {
                        self.out.put_slice(b"0\r\n\r\n");
                    }
                    self.body_ended = true;
                }
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) if data.is_empty() => {}
                    Ok(data) => {
                        if self.chunked {
                            let _ = write!(self.out, "{:x}\r\n", data.len());
                            self.suffix = b"\r\n";
                        }
                        self.data = data;
                    }
                    Err(frame) => {
                        // Trailers can only travel in a chunked body; after a known length they are dropped.
                        if let (true, Ok(trailers)) = (self.chunked, frame.into_trailers()) {
                            self.out.put_slice(b"0\r\n");
                            for (name, value) in trailers.iter().filter(|(name, _)| allowed_in_trailers(name)) {
                                self.out.put_slice(name.as_str().as_bytes());
                                self.out.put_slice(b": ");
                                self.out.put_slice(value.as_bytes());
                                self.out.put_slice(b"\r\n");
                            }
                            self.out.put_slice(b"\r\n");
                            self.chunked = false;
                            self.body_ended = true;
                        }
                    }
                },
                Some(Err(error)) => return Poll::Ready(Err(Failure::Body(error))),
            }
        }
    }

    fn advance(&mut self, mut written: usize) {
        let taken = written.min(self.head.len());
        self.head.advance(taken);
        written -= taken;
        let taken = written.min(self.out.len());
        self.out.advance(taken);
        written -= taken;
        let taken = written.min(self.data.len());
        self.data.advance(taken);
        written -= taken;
        self.suffix = &self.suffix[written.min(self.suffix.len())..];
    }
}

/// RFC 9110 6.5.1: fields that frame, route, authenticate or describe the content never travel in
/// trailers; a client that sends them there is trying to smuggle them past the head's checks.
fn allowed_in_trailers(name: &HeaderName) -> bool {
    ![
        header::AUTHORIZATION,
        header::CACHE_CONTROL,
        header::CONTENT_ENCODING,
        header::CONTENT_LENGTH,
        header::CONTENT_RANGE,
        header::CONTENT_TYPE,
        header::HOST,
        header::MAX_FORWARDS,
        header::SET_COOKIE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::TE,
        header::CONNECTION,
    ]
    .contains(name)
}

struct Head {
    status: StatusCode,
    version: Version,
    headers: HeaderMap,
}

/// Reads until a complete response head is in the buffer, then parses and removes it.
fn poll_head(cx: &mut Context<'_>, conn: &mut Conn) -> Poll<Result<Head, Failure>> {
    loop {
        if let Some(head) = parse_head(&mut conn.buffer)? {
            return Poll::Ready(Ok(head));
        }
        if conn.buffer.len() > MAX_HEAD {
            return Poll::Ready(Err(Failure::Protocol("response head larger than 64 KiB")));
        }
        let responded = !conn.buffer.is_empty();
        let read = ready!(read_more(cx, &mut conn.stream, &mut conn.buffer))
            .map_err(|error| Failure::Io { error, responded })?;
        if read == 0 {
            return Poll::Ready(Err(Failure::Closed { responded }));
        }
    }
}

fn read_more(cx: &mut Context<'_>, stream: &mut Stream, buffer: &mut BytesMut) -> Poll<io::Result<usize>> {
    read_into(cx, Pin::new(stream), buffer)
}

fn read_into<R: AsyncRead + ?Sized>(
    cx: &mut Context<'_>,
    reader: Pin<&mut R>,
    buffer: &mut BytesMut,
) -> Poll<io::Result<usize>> {
    buffer.reserve(READ_CHUNK);
    tokio_util::io::poll_read_buf(reader, cx, buffer)
}

fn parse_head(buffer: &mut BytesMut) -> Result<Option<Head>, Failure> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_FIELDS];
    let mut response = httparse::Response::new(&mut fields);
    let length = match response.parse(buffer) {
        Ok(httparse::Status::Complete(length)) => length,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(Failure::Protocol("too many response header fields")),
        Err(_) => return Err(Failure::Protocol("malformed response head")),
    };
    let status = response
        .code
        .and_then(|code| StatusCode::from_u16(code).ok())
        .ok_or(Failure::Protocol("invalid response status"))?;
    let version = match response.version {
        Some(0) => Version::HTTP_10,
        _ => Version::HTTP_11,
    };
    let mut headers = HeaderMap::with_capacity(response.headers.len());
    for field in response.headers.iter() {
        let name = HeaderName::from_bytes(field.name.as_bytes())
            .map_err(|_| Failure::Protocol("invalid response header name"))?;
        let value =
            HeaderValue::from_bytes(field.value).map_err(|_| Failure::Protocol("invalid response header value"))?;
        headers.append(name, value);
    }
    buffer.advance(length);
    Ok(Some(Head {
        status,
        version,
        headers,
    }))
}

/// How a response body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    Length(u64),
    Chunked(Chunk),
    UntilClose,
}

/// Where a chunked body's decoder is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    Size,
    Data(u64),
    DataEnd,
    Trailers,
    Done,
}

/// RFC 9112 6.3: no body for HEAD, 1xx, 204 and 304; chunked when Transfer-Encoding ends in chunked (the
/// Content-Length, if any, is removed); another Transfer-Encoding reads until close; else Content-Length,
/// all values equal; else until close.
fn response_framing(status: StatusCode, head_request: bool, headers: &mut HeaderMap) -> Result<Framing, Failure> {
    if head_request || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
        return Ok(Framing::Length(0));
    }
    if headers.contains_key(header::TRANSFER_ENCODING) {
        headers.remove(header::CONTENT_LENGTH);
        let chunked = headers
            .get_all(header::TRANSFER_ENCODING)
            .iter()
            .next_back()
            .and_then(|v| v.as_bytes().rsplit(|&b| b == b',').next())
            .is_some_and(|coding| coding.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        return Ok(if chunked {
            Framing::Chunked(Chunk::Size)
        } else {
            Framing::UntilClose
        });
    }
    let mut length: Option<u64> = None;
    for value in headers.get_all(header::CONTENT_LENGTH) {
        for item in value.as_bytes().split(|&b| b == b',') {
            let item = item.trim_ascii();
            let parsed = std::str::from_utf8(item)
                .ok()
                .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|s| s.parse::<u64>().ok())
                .ok_or(Failure::Protocol("invalid Content-Length in the response"))?;
            if length.is_some_and(|l| l != parsed) {
                return Err(Failure::Protocol("conflicting Content-Length values in the response"));
            }
            length = Some(parsed);
        }
    }
    Ok(match length {
        Some(length) => Framing::Length(length),
        None => Framing::UntilClose,
    })
}

/// HTTP/1.1 keeps the connection unless `Connection: close`; HTTP/1.0 responses are never reused.
fn keeps_alive(version: Version, headers: &HeaderMap) -> bool {
    version == Version::HTTP_11
        && !headers
            .get_all(header::CONNECTION)
            .iter()
            .flat_map(|v| v.as_bytes().split(|&b| b == b','))
            .any(|token| token.trim_ascii().eq_ignore_ascii_case(b"close"))
}

/// A response body read from the connection as the client reads it.
pub struct ResponseBody {
    reader: Option<Reader>,
    framing: Framing,
    reusable: bool,
    pool: std::sync::Arc<Pool>,
}

impl std::fmt::Debug for ResponseBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseBody").field("framing", &self.framing).finish()
    }
}

/// Why a response body failed.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("the backend closed the connection before the response body was complete")]
    Incomplete,
    #[error("the backend's response body is malformed: {0}")]
    Malformed(&'static str),
    #[error("reading the response body failed: {0}")]
    Io(#[from] io::Error),
    #[error("the request body failed while the response was streaming")]
    RequestFailed,
}

impl ResponseBody {
    /// The body is complete: the connection goes back to the pool when it can serve another request (the
    /// request was written in full, and nothing unread is left on it).
    fn finish(&mut self) {
        if let Some(Reader::Whole(conn)) = self.reader.take() {
            if self.reusable && conn.buffer.is_empty() {
                self.pool.checkin(conn);
            }
        }
    }

    /// Polls for the next frame. The connection is dropped (closed) on any failure.
    pub fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let polled = self.poll_inner(cx);
        match &polled {
            Poll::Ready(None) => self.finish(),
            Poll::Ready(Some(Err(_))) => self.reader = None,
            // The last frame: a consumer that knows the body is complete (by its length, or from
            // `is_end_stream`) never polls again, so the connection is returned now.
            Poll::Ready(Some(Ok(_))) if matches!(self.framing, Framing::Length(0) | Framing::Chunked(Chunk::Done)) => {
                self.finish();
            }
            _ => {}
        }
        polled
    }

    fn poll_inner(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let Some(reader) = self.reader.as_mut() else {
            return Poll::Ready(None);
        };
        let (mut io, buffer) = reader.parts();
        loop {
            match self.framing {
                Framing::Length(0) | Framing::Chunked(Chunk::Done) => return Poll::Ready(None),
                Framing::Length(left) => {
                    if !buffer.is_empty() {
                        let take = usize::try_from(left).unwrap_or(usize::MAX).min(buffer.len());
                        self.framing = Framing::Length(left - take as u64);
                        return Poll::Ready(Some(Ok(Frame::data(buffer.split_to(take).freeze()))));
                    }
                    if ready!(read_into(cx, io.as_mut(), buffer))? == 0 {
                        return Poll::Ready(Some(Err(BodyError::Incomplete)));
                    }
                }
                Framing::UntilClose => {
                    if !buffer.is_empty() {
                        return Poll::Ready(Some(Ok(Frame::data(buffer.split().freeze()))));
                    }
                    if ready!(read_into(cx, io.as_mut(), buffer))? == 0 {
                        self.reusable = false;
                        return Poll::Ready(None);
                    }
                }
                Framing::Chunked(state) => {
                    match decode_chunked(state, buffer)? {
                        Decoded::Frame(next, frame) => {
                            self.framing = Framing::Chunked(next);
                            return Poll::Ready(Some(Ok(frame)));
                        }
                        Decoded::State(next) => {
                            self.framing = Framing::Chunked(next);
                            continue;
                        }
                        Decoded::NeedMore => {}
                    }
                    if buffer.len() > MAX_HEAD {
                        return Poll::Ready(Some(Err(BodyError::Malformed("chunk framing line too long"))));
                    }
                    if ready!(read_into(cx, io.as_mut(), buffer))? == 0 {
                        return Poll::Ready(Some(Err(BodyError::Incomplete)));
                    }
                }
            }
        }
    }

    /// True once nothing more will come.
    pub fn is_end_stream(&self) -> bool {
        self.reader.is_none() || matches!(self.framing, Framing::Length(0) | Framing::Chunked(Chunk::Done))
    }

    /// The exact remaining length, when the response declared one.
    pub fn exact_length(&self) -> Option<u64> {
        match self.framing {
            Framing::Length(left) => Some(left),
            _ => None,
        }
    }
}

enum Decoded {
    Frame(Chunk, Frame<Bytes>),
    State(Chunk),
    NeedMore,
}

fn decode_chunked(state: Chunk, buffer: &mut BytesMut) -> Result<Decoded, BodyError> {
    match state {
        Chunk::Size => {
            let Some(end) = buffer.iter().position(|&b| b == b'\n') else {
                return Ok(Decoded::NeedMore);
            };
            let line = buffer.split_to(end + 1);
            let line = line.strip_suffix(b"\n").unwrap_or(&line);
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let digits = line.split(|&b| b == b';').next().unwrap_or_default().trim_ascii();
            if digits.is_empty() || digits.len() > 16 || !digits.iter().all(u8::is_ascii_hexdigit) {
                return Err(BodyError::Malformed("invalid chunk size"));
            }
            let size = std::str::from_utf8(digits)
                .ok()
                .and_then(|d| u64::from_str_radix(d, 16).ok())
                .ok_or(BodyError::Malformed("invalid chunk size"))?;
            Ok(Decoded::State(if size == 0 {
                Chunk::Trailers
            } else {
                Chunk::Data(size)
            }))
        }
        Chunk::Data(left) => {
            if buffer.is_empty() {
                return Ok(Decoded::NeedMore);
            }
            let take = usize::try_from(left).unwrap_or(usize::MAX).min(buffer.len());
            let data = buffer.split_to(take).freeze();
            let next = if take as u64 == left {
                Chunk::DataEnd
            } else {
                Chunk::Data(left - take as u64)
            };
            Ok(Decoded::Frame(next, Frame::data(data)))
        }
        Chunk::DataEnd => {
            if buffer.starts_with(b"\r\n") {
                buffer.advance(2);
            } else if buffer.starts_with(b"\n") {
                buffer.advance(1);
            } else if buffer.len() >= 2 || (buffer.len() == 1 && buffer[0] != b'\r') {
                return Err(BodyError::Malformed("chunk data not followed by CRLF"));
            } else {
                return Ok(Decoded::NeedMore);
            }
            Ok(Decoded::State(Chunk::Size))
        }
        Chunk::Trailers => {
            // The trailer section ends with an empty line; it may be empty itself.
            let end = if buffer.starts_with(b"\r\n") {
                Some(2)
            } else if buffer.starts_with(b"\n") {
                Some(1)
            } else {
                find_blank_line(buffer)
            };
            let Some(end) = end else {
                return Ok(Decoded::NeedMore);
            };
            let section = buffer.split_to(end);
            let trailers = parse_trailers(&section)?;
            if trailers.is_empty() {
                return Ok(Decoded::State(Chunk::Done));
            }
            Ok(Decoded::Frame(Chunk::Done, Frame::trailers(trailers)))
        }
        Chunk::Done => Ok(Decoded::State(Chunk::Done)),
    }
}

/// Just past the first empty line (after a line end) in `bytes`.
fn find_blank_line(bytes: &[u8]) -> Option<usize> {
    let mut from = 0;
    while let Some(offset) = bytes[from..].iter().position(|&b| b == b'\n') {
        let newline = from + offset;
        match bytes.get(newline + 1..) {
            Some([b'\n', ..]) => return Some(newline + 2),
            Some([b'\r', b'\n', ..]) => return Some(newline + 3),
            _ => from = newline + 1,
        }
    }
    None
}

fn parse_trailers(section: &[u8]) -> Result<HeaderMap, BodyError> {
    let mut fields = [httparse::EMPTY_HEADER; 64];
    let parsed = httparse::parse_headers(section, &mut fields).map_err(|_| BodyError::Malformed("invalid trailers"))?;
    let httparse::Status::Complete((_, fields)) = parsed else {
        return Err(BodyError::Malformed("incomplete trailers"));
    };
    let mut trailers = HeaderMap::with_capacity(fields.len());
    for field in fields {
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(field.name.as_bytes()),
            HeaderValue::from_bytes(field.value),
        ) else {
            return Err(BodyError::Malformed("invalid trailer field"));
        };
        trailers.append(name, value);
    }
    Ok(trailers)
}

/// A connection the backend switched to another protocol: the bytes it sent after its 101, then the socket.
pub struct Upgraded {
    leftover: Bytes,
    stream: Stream,
}

impl AsyncRead for Upgraded {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.leftover.is_empty() {
            let take = this.leftover.len().min(buf.remaining());
            buf.put_slice(&this.leftover.split_to(take));
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Upgraded {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, data)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(mut input: BytesMut) -> Result<(Vec<u8>, Option<HeaderMap>), BodyError> {
        let mut state = Chunk::Size;
        let (mut data, mut trailers) = (Vec::new(), None);
        loop {
            match decode_chunked(state, &mut input)? {
                Decoded::Frame(next, frame) => {
                    state = next;
                    match frame.into_data() {
                        Ok(bytes) => data.extend_from_slice(&bytes),
                        Err(frame) => trailers = frame.into_trailers().ok(),
                    }
                }
                Decoded::State(Chunk::Done) => return Ok((data, trailers)),
                Decoded::State(next) => state = next,
                Decoded::NeedMore => return Err(BodyError::Incomplete),
            }
        }
    }

    #[test]
    fn chunked_bodies_with_and_without_trailers() {
        let (data, trailers) =
            decode_all(BytesMut::from(&b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"[..])).unwrap_or_default();
        assert_eq!(data, b"hello world");
        assert!(trailers.is_none());
        let (data, trailers) = decode_all(BytesMut::from(
            &b"3\r\nabc\r\n0\r\ngrpc-status: 0\r\nx-a: b\r\n\r\n"[..],
        ))
        .unwrap_or_default();
        assert_eq!(data, b"abc");
        let trailers = trailers.unwrap_or_default();
        assert_eq!(trailers.get("grpc-status").map(HeaderValue::as_bytes), Some(&b"0"[..]));
        assert_eq!(trailers.len(), 2);
    }

    #[test]
    fn malformed_chunks_fail() {
        for bad in [
            &b"zz\r\nabc\r\n0\r\n\r\n"[..],
            b"3\r\nabcX\r\n0\r\n\r\n",
            b"11111111111111111\r\n",
        ] {
            assert!(
                matches!(decode_all(BytesMut::from(bad)), Err(BodyError::Malformed(_))),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn framing_follows_rfc_9112() {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("3"));
        headers.insert(header::TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        assert!(matches!(
            response_framing(StatusCode::OK, false, &mut headers),
            Ok(Framing::Chunked(Chunk::Size))
        ));
        assert!(
            !headers.contains_key(header::CONTENT_LENGTH),
            "chunked wins, the length goes"
        );
        let mut headers = HeaderMap::new();
        headers.append(header::CONTENT_LENGTH, HeaderValue::from_static("3"));
        headers.append(header::CONTENT_LENGTH, HeaderValue::from_static("4"));
        assert!(response_framing(StatusCode::OK, false, &mut headers).is_err());
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("10"));
        assert_eq!(
            response_framing(StatusCode::OK, true, &mut headers).ok(),
            Some(Framing::Length(0)),
            "HEAD"
        );
        assert_eq!(
            response_framing(StatusCode::NOT_MODIFIED, false, &mut headers).ok(),
            Some(Framing::Length(0))
        );
        assert_eq!(
            response_framing(StatusCode::OK, false, &mut HeaderMap::new()).ok(),
            Some(Framing::UntilClose)
        );
    }
}
