//! Watches an HTTP/1.1 connection's bytes as hyper reads them, finds each request head, and flags heads
//! that hyper would let through but a proxy must refuse:
//! - both Content-Length and Transfer-Encoding: hyper drops Content-Length and keeps the connection open,
//!   but another hop may frame the body differently (request smuggling);
//! - a head over the size limit: hyper checks its limit only between reads, so it can overshoot by one read.
//!
//! The core answers a flagged request (400 or 431) and closes the connection.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper::rt::{Read, ReadBufCursor, Write};

use crate::error::ProxyError;

/// Why a request head was flagged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FramingViolation {
    /// Both Content-Length and Transfer-Encoding.
    ConflictingLength,
    /// The head is larger than the limit.
    HeadTooLarge,
}

/// Shared between the watcher and the connection's service: the first flagged head and why.
#[derive(Debug)]
pub struct Verdicts {
    first_flagged: AtomicU64,
    too_large: AtomicBool,
    answered: AtomicU64,
}

impl FramingViolation {
    /// The error the core answers with.
    pub fn error(self) -> ProxyError {
        match self {
            Self::ConflictingLength => ProxyError::BadRequest("both Content-Length and Transfer-Encoding"),
            Self::HeadTooLarge => ProxyError::HeadTooLarge,
        }
    }
}

impl Verdicts {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            first_flagged: AtomicU64::new(u64::MAX),
            too_large: AtomicBool::new(false),
            answered: AtomicU64::new(0),
        })
    }

    fn flag(&self, index: u64, violation: FramingViolation) {
        if self.first_flagged.fetch_min(index, Ordering::Relaxed) > index {
            self.too_large
                .store(violation == FramingViolation::HeadTooLarge, Ordering::Relaxed);
        }
    }

    /// Called once per request, in order: the violation of this request's head, if it was flagged.
    /// The connection closes after a flagged request, so every later request inherits the verdict.
    pub fn next_request(&self) -> Option<FramingViolation> {
        let index = self.answered.fetch_add(1, Ordering::Relaxed);
        (index >= self.first_flagged.load(Ordering::Relaxed)).then(|| {
            if self.too_large.load(Ordering::Relaxed) {
                FramingViolation::HeadTooLarge
            } else {
                FramingViolation::ConflictingLength
            }
        })
    }
}

/// An IO wrapper that tracks request framing on the read side; writes pass straight through.
#[derive(Debug)]
pub struct FramingWatch<T> {
    inner: T,
    tracker: Tracker,
    verdicts: Arc<Verdicts>,
}

impl<T> FramingWatch<T> {
    /// Wraps `inner`; heads larger than `max_head` are left for hyper to refuse.
    pub fn new(inner: T, max_head: usize) -> (Self, Arc<Verdicts>) {
        let verdicts = Verdicts::new();
        let tracker = Tracker {
            phase: Phase::Head,
            head: Vec::new(),
            max_head,
            heads: 0,
        };
        (
            Self {
                inner,
                tracker,
                verdicts: Arc::clone(&verdicts),
            },
            verdicts,
        )
    }
}

/// Bytes inspected per read. hyper's safe read API only takes copies, so reads go through this buffer.
const SCRATCH: usize = 16 * 1024;

thread_local! {
    // One buffer per thread, not per connection: `poll_read` never yields while it holds it.
    static SCRATCH_BUFFER: std::cell::RefCell<Box<[u8]>> = std::cell::RefCell::new(vec![0; SCRATCH].into_boxed_slice());
}

impl<T: Read + Unpin> Read for FramingWatch<T> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, mut buf: ReadBufCursor<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.tracker.phase == Phase::Done {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        }
        SCRATCH_BUFFER.with_borrow_mut(|scratch| {
            let room = buf.remaining().min(scratch.len());
            let mut read_buf = hyper::rt::ReadBuf::new(&mut scratch[..room]);
            match Pin::new(&mut this.inner).poll_read(cx, read_buf.unfilled()) {
                Poll::Ready(Ok(())) => {
                    let filled = read_buf.filled();
                    if let Some((index, violation)) = this.tracker.feed(filled) {
                        this.verdicts.flag(index, violation);
                    }
                    buf.put_slice(filled);
                    Poll::Ready(Ok(()))
                }
                other => other,
            }
        })
    }
}

impl<T: Write + Unpin> Write for FramingWatch<T> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, data)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Collecting a request head.
    Head,
    /// A body of known length.
    Fixed(u64),
    /// A chunk-size line.
    ChunkSize {
        size: u64,
        digits: bool,
        in_extension: bool,
    },
    /// Chunk data, then its CRLF.
    ChunkData(u64),
    ChunkEnd {
        seen_cr: bool,
    },
    /// Trailer lines after the last chunk; `line_empty` while the current line has no content.
    Trailers {
        line_empty: bool,
    },
    /// Nothing more to track: the connection ends, switches protocol, or hyper will refuse it.
    Done,
}

#[derive(Debug)]
struct Tracker {
    phase: Phase,
    head: Vec<u8>,
    max_head: usize,
    heads: u64,
}

impl Tracker {
    /// Consumes bytes; returns the index of a flagged head and why, if one is found here.
    fn feed(&mut self, mut data: &[u8]) -> Option<(u64, FramingViolation)> {
        let mut flagged = None;
        while !data.is_empty() {
            match self.phase {
                Phase::Done => return flagged,
                Phase::Head => {
                    let consumed = self.feed_head(data, &mut flagged);
                    data = &data[consumed..];
                }
                Phase::Fixed(left) => {
                    let take = left.min(data.len() as u64);
                    data = &data[take as usize..];
                    self.phase = if take == left {
                        Phase::Head
                    } else {
                        Phase::Fixed(left - take)
                    };
                }
                Phase::ChunkData(left) => {
                    let take = left.min(data.len() as u64);
                    data = &data[take as usize..];
                    self.phase = if take == left {
                        Phase::ChunkEnd { seen_cr: false }
                    } else {
                        Phase::ChunkData(left - take)
                    };
                }
                _ => {
                    self.phase = self.step(data[0]);
                    data = &data[1..];
                }
            }
        }
        flagged
    }

    /// One byte of chunked framing outside chunk data.
    fn step(&self, byte: u8) -> Phase {
        match self.phase {
            Phase::ChunkSize {
                size,
                digits,
                in_extension,
            } => match byte {
                b'\n' if !digits => Phase::Done,
                b'\n' if size == 0 => Phase::Trailers { line_empty: true },
                b'\n' => Phase::ChunkData(size),
                b'\r' => self.phase,
                _ if in_extension => self.phase,
                b';' | b' ' | b'\t' => Phase::ChunkSize {
                    size,
                    digits,
                    in_extension: true,
                },
                _ => match (byte as char).to_digit(16) {
                    Some(digit) => match size.checked_mul(16) {
                        Some(shifted) => Phase::ChunkSize {
                            size: shifted + u64::from(digit),
                            digits: true,
                            in_extension,
                        },
                        None => Phase::Done,
                    },
                    None => Phase::Done,
                },
            },
            Phase::ChunkEnd { seen_cr } => match byte {
                b'\r' if !seen_cr => Phase::ChunkEnd { seen_cr: true },
                b'\n' => Phase::ChunkSize {
                    size: 0,
                    digits: false,
                    in_extension: false,
                },
                _ => Phase::Done,
            },
            Phase::Trailers { line_empty } => match byte {
                b'\n' if line_empty => Phase::Head,
                b'\n' => Phase::Trailers { line_empty: true },
                b'\r' => self.phase,
                _ => Phase::Trailers { line_empty: false },
            },
            other => other,
        }
    }

    /// Appends head bytes until the blank line; then classifies the head. Returns bytes consumed.
    fn feed_head(&mut self, data: &[u8], flagged: &mut Option<(u64, FramingViolation)>) -> usize {
        // Empty lines before a request line are allowed and ignored.
        if self.head.is_empty() {
            let skip = data.iter().take_while(|b| matches!(b, b'\r' | b'\n')).count();
            if skip > 0 {
                return skip;
            }
        }
        let before = self.head.len();
        self.head.extend_from_slice(data);
        let search_from = before.saturating_sub(3);
        let end = find_head_end(&self.head[search_from..]).map(|e| e + search_from);
        let index = self.heads;
        if end.unwrap_or(self.head.len()) > self.max_head {
            *flagged = Some((index, FramingViolation::HeadTooLarge));
            self.phase = Phase::Done;
            return data.len();
        }
        let Some(end) = end else {
            return data.len();
        };
        let consumed = end - before;
        let head = std::mem::take(&mut self.head);
        self.heads += 1;
        self.phase = match classify(&head[..end]) {
            Framing::Conflicting => {
                *flagged = Some((index, FramingViolation::ConflictingLength));
                Phase::Done
            }
            Framing::Length(0) => Phase::Head,
            Framing::Length(length) => Phase::Fixed(length),
            Framing::Chunked => Phase::ChunkSize {
                size: 0,
                digits: false,
                in_extension: false,
            },
            Framing::Untracked => Phase::Done,
        };
        consumed
    }
}

/// End of the head (just past the blank line), accepting bare LF line ends as hyper does.
fn find_head_end(bytes: &[u8]) -> Option<usize> {
    bytes.windows(2).enumerate().find_map(|(i, w)| match w {
        b"\n\n" => Some(i + 2),
        b"\r\n" if bytes.get(i + 2..i + 4) == Some(b"\r\n") => Some(i + 4),
        _ => None,
    })
}

enum Framing {
    Conflicting,
    Length(u64),
    Chunked,
    /// CONNECT, or heads hyper will refuse: stop tracking.
    Untracked,
}

fn classify(head: &[u8]) -> Framing {
    let mut headers = [httparse::EMPTY_HEADER; 128];
    let mut request = httparse::Request::new(&mut headers);
    if !matches!(request.parse(head), Ok(httparse::Status::Complete(_))) {
        return Framing::Untracked;
    }
    let mut length = None;
    let mut chunked = None;
    // An upgrade request is still framed as HTTP: if the backend declines it, the next request follows.
    // After a 101 the bytes are tunnel data, which hyper no longer parses, so verdicts no longer matter.
    let tunnel = request.method == Some("CONNECT");
    for header in request.headers.iter() {
        if header.name.eq_ignore_ascii_case("content-length") {
            length = std::str::from_utf8(header.value)
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
                .or(Some(u64::MAX));
        } else if header.name.eq_ignore_ascii_case("transfer-encoding") {
            let last = header.value.rsplit(|&b| b == b',').next().unwrap_or_default();
            chunked = Some(last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        }
    }
    match (length, chunked) {
        (Some(_), Some(_)) => Framing::Conflicting,
        _ if tunnel => Framing::Untracked,
        (_, Some(true)) => Framing::Chunked,
        (_, Some(false)) | (Some(u64::MAX), None) => Framing::Untracked,
        (Some(length), None) => Framing::Length(length),
        (None, None) => Framing::Length(0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tracker() -> Tracker {
        Tracker {
            phase: Phase::Head,
            head: Vec::new(),
            max_head: 65536,
            heads: 0,
        }
    }

    /// Feeds `stream` one byte at a time, the worst split, and returns the flagged head, if any.
    fn flagged_bytewise(stream: &[u8]) -> Option<(u64, FramingViolation)> {
        let mut t = tracker();
        stream.chunks(1).find_map(|b| t.feed(b))
    }

    const CONFLICT: FramingViolation = FramingViolation::ConflictingLength;

    #[test]
    fn flags_conflicting_head_in_either_order() {
        let cl_first = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n";
        let te_first = b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n";
        assert_eq!(tracker().feed(cl_first), Some((0, CONFLICT)));
        assert_eq!(tracker().feed(te_first), Some((0, CONFLICT)));
        assert_eq!(flagged_bytewise(te_first), Some((0, CONFLICT)));
    }

    #[test]
    fn finds_later_heads_across_bodies() {
        let mut stream = Vec::new();
        stream.extend_from_slice(b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 47\r\n\r\n");
        stream.extend_from_slice(b"GET /fake HTTP/1.1\r\nContent-Length: 1\r\n\r\n!!!!!!"); // 47 body bytes
        stream.extend_from_slice(b"POST /b HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n");
        stream.extend_from_slice(b"1a;ext=1\r\nTransfer-Encoding: chunked\r\n0\r\nX-Trailer: 1\r\n\r\n");
        stream.extend_from_slice(b"GET /c HTTP/1.1\r\nHost: x\r\n\r\n");
        stream.extend_from_slice(
            b"PUT /d HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n",
        );
        assert_eq!(flagged_bytewise(&stream), Some((3, CONFLICT)));
        assert_eq!(tracker().feed(&stream), Some((3, CONFLICT)));
    }

    #[test]
    fn clean_keep_alive_stream_is_not_flagged() {
        let mut stream = Vec::new();
        for _ in 0..3 {
            stream.extend_from_slice(
                b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            );
            stream.extend_from_slice(b"\r\nGET / HTTP/1.1\nHost: x\nContent-Length: 3\n\nabc");
        }
        assert_eq!(flagged_bytewise(&stream), None);
        let mut t = tracker();
        assert_eq!(t.feed(&stream), None);
        assert_eq!(t.heads, 6);
        assert_eq!(t.phase, Phase::Head);
    }

    /// One valid request: a Content-Length body, a chunked body (random chunk sizes), or none.
    fn request(kind: u8, body: &[u8], cuts: &[usize]) -> Vec<u8> {
        let mut out = Vec::new();
        match kind % 3 {
            0 => {
                out.extend_from_slice(
                    format!("POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n", body.len()).as_bytes(),
                );
                out.extend_from_slice(body);
            }
            1 => {
                out.extend_from_slice(b"POST /b HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n");
                let mut rest = body;
                for &cut in cuts {
                    let (chunk, tail) = rest.split_at(cut.min(rest.len()));
                    if !chunk.is_empty() {
                        out.extend_from_slice(format!("{:x};ext=1\r\n", chunk.len()).as_bytes());
                        out.extend_from_slice(chunk);
                        out.extend_from_slice(b"\r\n");
                    }
                    rest = tail;
                }
                if !rest.is_empty() {
                    out.extend_from_slice(format!("{:X}\r\n", rest.len()).as_bytes());
                    out.extend_from_slice(rest);
                    out.extend_from_slice(b"\r\n");
                }
                out.extend_from_slice(b"0\r\nX-Trailer: 1\r\n\r\n");
            }
            _ => out.extend_from_slice(b"GET /c HTTP/1.1\r\nHost: x\r\n\r\n"),
        }
        out
    }

    proptest::proptest! {
        #[test]
        fn any_bytes_in_any_chunking_never_panic_and_stay_bounded(
            data in proptest::collection::vec(proptest::num::u8::ANY, 0..4096),
            chunk in 1usize..64,
        ) {
            let mut t = Tracker { phase: Phase::Head, head: Vec::new(), max_head: 512, heads: 0 };
            for piece in data.chunks(chunk) {
                t.feed(piece);
                proptest::prop_assert!(t.head.len() <= 512 + 64);
            }
        }

        #[test]
        fn valid_keep_alive_streams_are_never_flagged_however_split(
            requests in proptest::collection::vec(
                (0u8..3, proptest::collection::vec(proptest::num::u8::ANY, 0..300), proptest::collection::vec(1usize..90, 0..4)),
                1..8,
            ),
            chunk in 1usize..200,
        ) {
            let stream: Vec<u8> = requests.iter().flat_map(|(kind, body, cuts)| request(*kind, body, cuts)).collect();
            let mut whole = tracker();
            proptest::prop_assert_eq!(whole.feed(&stream), None);
            proptest::prop_assert_eq!(whole.heads, requests.len() as u64);
            proptest::prop_assert_eq!(whole.phase, Phase::Head);
            let mut split = tracker();
            let flagged = stream.chunks(chunk).find_map(|piece| split.feed(piece));
            proptest::prop_assert_eq!(flagged, None);
            proptest::prop_assert_eq!(split.heads, requests.len() as u64);
        }
    }

    #[test]
    fn flags_the_head_that_crosses_the_limit() {
        let mut t = Tracker {
            phase: Phase::Head,
            head: Vec::new(),
            max_head: 64,
            heads: 0,
        };
        assert_eq!(t.feed(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"), None);
        let big = format!("GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n", "a".repeat(64));
        assert_eq!(
            big.as_bytes().chunks(7).find_map(|c| t.feed(c)),
            Some((1, FramingViolation::HeadTooLarge))
        );
    }
}
