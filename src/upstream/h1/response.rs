//! The response side of an exchange: the head read strictly (size and field limits, one Content-Length,
//! framing per RFC 9112 6.3), then the body read from the connection as the client reads it, after which
//! the connection goes back to its worker's pool when it can serve another request.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{StatusCode, Version};
use http_body::{Frame, SizeHint};
use tokio::io::AsyncRead;

use super::failure::Failure;
use super::pool::{Conn, Pool};
use crate::error::BoxError;
use crate::upstream::connect::Stream;
use crate::wire::{self, chunked, ResponseHead};

/// The largest response head (and trailer section) read from a backend.
const MAX_HEAD: usize = 64 * 1024;
/// How much is read from a backend at a time.
const READ_CHUNK: usize = 16 * 1024;

/// Reads until a complete response head is in the connection's buffer, then parses and removes it.
pub(super) fn poll_head(cx: &mut Context<'_>, conn: &mut Conn) -> Poll<Result<ResponseHead, Failure>> {
    loop {
        if let Some(head) = parse_head(&mut conn.buffer)? {
            return Poll::Ready(Ok(head));
        }
        if conn.buffer.len() > MAX_HEAD {
            return Poll::Ready(Err(Failure::Protocol("response head larger than 64 KiB")));
        }
        let responded = !conn.buffer.is_empty();
        let read = ready!(read_into(cx, Pin::new(&mut conn.stream), &mut conn.buffer))
            .map_err(|error| Failure::Io { error, responded })?;
        if read == 0 {
            return Poll::Ready(Err(Failure::Closed { responded }));
        }
    }
}

fn read_into<R: AsyncRead + ?Sized>(
    cx: &mut Context<'_>,
    reader: Pin<&mut R>,
    buffer: &mut BytesMut,
) -> Poll<io::Result<usize>> {
    buffer.reserve(READ_CHUNK);
    tokio_util::io::poll_read_buf(reader, cx, buffer)
}

/// A complete response head from the front of `buffer` (removed from it), or `None` while it is partial.
fn parse_head(buffer: &mut BytesMut) -> Result<Option<ResponseHead>, Failure> {
    match wire::response_head(buffer) {
        Ok(Some((head, length))) => {
            buffer.advance(length);
            Ok(Some(head))
        }
        Ok(None) => Ok(None),
        Err(malformed) => Err(Failure::Protocol(malformed)),
    }
}

/// How a response body is delimited.
#[derive(Debug, Clone)]
pub(super) enum Framing {
    Length(u64),
    Chunked(chunked::Decoder),
    UntilClose,
}

/// RFC 9112 6.3: no body for HEAD, 1xx, 204 and 304; chunked when Transfer-Encoding ends in chunked (the
/// Content-Length, if any, is removed); another Transfer-Encoding reads until close; else the one
/// Content-Length ([`wire::content_length`]); else until close.
pub(super) fn response_framing(
    status: StatusCode,
    head_request: bool,
    headers: &mut HeaderMap,
) -> Result<Framing, Failure> {
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
            Framing::Chunked(chunked::Decoder::new(MAX_HEAD))
        } else {
            Framing::UntilClose
        });
    }
    let length = wire::content_length(
        headers
            .get_all(header::CONTENT_LENGTH)
            .iter()
            .map(HeaderValue::as_bytes),
    )
    .map_err(|_| Failure::Protocol("invalid Content-Length in the response"))?;
    Ok(length.map_or(Framing::UntilClose, Framing::Length))
}

/// HTTP/1.1 keeps the connection unless `Connection: close`; HTTP/1.0 responses are never reused.
pub(super) fn keeps_alive(version: Version, headers: &HeaderMap) -> bool {
    version == Version::HTTP_11
        && !headers
            .get_all(header::CONNECTION)
            .iter()
            .flat_map(|v| v.as_bytes().split(|&b| b == b','))
            .any(|token| token.trim_ascii().eq_ignore_ascii_case(b"close"))
}

/// What a response body reads from: the whole connection, or only its reading half while a task still
/// writes the rest of the request on the other.
#[derive(Debug)]
pub(super) enum Reader {
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

/// A response body read from the connection as the client reads it.
pub struct ResponseBody {
    reader: Option<Reader>,
    framing: Framing,
    reusable: bool,
    pool: Arc<Pool>,
    /// The trailer section of a chunked body, as it arrives.
    trailers: Vec<u8>,
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
}

impl ResponseBody {
    /// A body read from `reader`, framed by `framing`; the connection goes back to `pool` at its end when
    /// `reusable`.
    pub(super) fn new(reader: Reader, framing: Framing, reusable: bool, pool: &Arc<Pool>) -> Self {
        Self {
            reader: Some(reader),
            framing,
            reusable,
            pool: Arc::clone(pool),
            trailers: Vec::new(),
        }
    }

    /// A body that ended with its head.
    pub(super) fn empty(pool: &Arc<Pool>) -> Self {
        Self {
            reader: None,
            framing: Framing::Length(0),
            reusable: false,
            pool: Arc::clone(pool),
            trailers: Vec::new(),
        }
    }

    /// The body is complete: the connection goes back to the pool when it can serve another request (the
    /// request was written in full, and nothing unread is left on it).
    fn finish(&mut self) {
        if let Some(Reader::Whole(conn)) = self.reader.take() {
            if self.reusable && conn.buffer.is_empty() {
                self.pool.checkin(conn);
            }
        }
    }

    fn poll_inner(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let Some(reader) = self.reader.as_mut() else {
            return Poll::Ready(None);
        };
        let (mut io, buffer) = reader.parts();
        loop {
            match &mut self.framing {
                Framing::Length(0) => return Poll::Ready(None),
                Framing::Length(left) => {
                    if !buffer.is_empty() {
                        let take = usize::try_from(*left).unwrap_or(usize::MAX).min(buffer.len());
                        *left -= take as u64;
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
                Framing::Chunked(decoder) => {
                    if decoder.is_done() {
                        let trailers = parse_trailers(&std::mem::take(&mut self.trailers))?;
                        return Poll::Ready((!trailers.is_empty()).then(|| Ok(Frame::trailers(trailers))));
                    }
                    if buffer.is_empty() {
                        if ready!(read_into(cx, io.as_mut(), buffer))? == 0 {
                            return Poll::Ready(Some(Err(BodyError::Incomplete)));
                        }
                        continue;
                    }
                    match decoder
                        .step(buffer)
                        .map_err(|malformed| BodyError::Malformed(malformed.0))?
                    {
                        chunked::Step::Framing(read) => buffer.advance(read),
                        chunked::Step::Data(length) => {
                            return Poll::Ready(Some(Ok(Frame::data(buffer.split_to(length).freeze()))));
                        }
                        chunked::Step::Trailers(length) => {
                            self.trailers.extend_from_slice(&buffer[..length]);
                            buffer.advance(length);
                        }
                    }
                }
            }
        }
    }

    /// True once nothing more will come.
    fn is_complete(&self) -> bool {
        self.reader.is_none()
            || match &self.framing {
                Framing::Length(left) => *left == 0,
                Framing::Chunked(decoder) => decoder.is_done() && self.trailers.is_empty(),
                Framing::UntilClose => false,
            }
    }
}

impl http_body::Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    /// The next frame. The connection is dropped (closed) on any failure, and returned to the pool as soon
    /// as the last frame is handed out: a consumer that knows the body is complete (by its length, or from
    /// `is_end_stream`) never polls again.
    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let polled = this.poll_inner(cx);
        match &polled {
            Poll::Ready(None) => this.finish(),
            Poll::Ready(Some(Err(_))) => this.reader = None,
            Poll::Ready(Some(Ok(_))) if this.is_complete() => this.finish(),
            _ => {}
        }
        polled.map_err(Into::into)
    }

    fn is_end_stream(&self) -> bool {
        self.is_complete()
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing {
            Framing::Length(left) => SizeHint::with_exact(left),
            _ => SizeHint::default(),
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn framing_follows_rfc_9112() {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("3"));
        headers.insert(header::TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        assert!(matches!(
            response_framing(StatusCode::OK, false, &mut headers),
            Ok(Framing::Chunked(_))
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
        assert!(matches!(
            response_framing(StatusCode::OK, true, &mut headers),
            Ok(Framing::Length(0))
        ));
        assert!(matches!(
            response_framing(StatusCode::NOT_MODIFIED, false, &mut headers),
            Ok(Framing::Length(0))
        ));
        assert!(matches!(
            response_framing(StatusCode::OK, false, &mut HeaderMap::new()),
            Ok(Framing::UntilClose)
        ));
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("+3"));
        assert!(response_framing(StatusCode::OK, false, &mut headers).is_err());
    }

    #[test]
    fn trailer_sections_parse_to_fields() {
        let trailers = parse_trailers(b"grpc-status: 0\r\nx-a: b\r\n\r\n").unwrap_or_default();
        assert_eq!(trailers.get("grpc-status").map(HeaderValue::as_bytes), Some(&b"0"[..]));
        assert_eq!(trailers.len(), 2);
        assert!(parse_trailers(b"\r\n").is_ok_and(|t| t.is_empty()));
        assert!(parse_trailers(b"bad field\r\n\r\n").is_err());
    }
}
