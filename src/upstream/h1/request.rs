//! The request side of an exchange: the head encoded once, then the body written as it comes, framed by
//! Content-Length or chunked (with trailers).

use std::fmt::Write as _;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName};
use http::Method;
use http_body::Body;
use tokio::io::AsyncWrite;

use super::failure::Failure;
use crate::error::BoxError;

/// A request head encoded for the wire, kept so that the request can be sent again on a fresh connection.
#[derive(Debug, Clone)]
pub struct EncodedHead {
    bytes: Bytes,
    chunked: bool,
    pub(super) head_request: bool,
    pub(super) upgrade: bool,
}

impl EncodedHead {
    /// Encodes the request line and fields, framing the body by Content-Length when `body` knows its size
    /// and chunked (which carries trailers) when not.
    pub fn new(method: &Method, uri: &http::Uri, headers: &HeaderMap, body: &impl Body) -> Self {
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

/// Writes the request: its encoded head, then the body as it comes, in chunks (with trailers) when the
/// head said chunked.
pub(super) struct Writer {
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
    /// Everything was written and flushed.
    pub(super) done: bool,
}

impl Writer {
    /// A writer of `head` and then a body that `body_ended` says is already over.
    pub(super) fn new(head: &EncodedHead, body_ended: bool) -> Self {
        Self {
            head: head.bytes.clone(),
            out: BytesMut::new(),
            data: Bytes::new(),
            suffix: b"",
            chunked: head.chunked,
            body_ended,
            done: false,
        }
    }

    /// Writes what it can of the head and `body`; ready once all of it is written and flushed.
    pub(super) fn poll<W, B>(&mut self, cx: &mut Context<'_>, stream: &mut W, body: &mut B) -> Poll<Result<(), Failure>>
    where
        W: AsyncWrite + Unpin,
        B: Body<Data = Bytes, Error = BoxError> + Unpin,
    {
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
