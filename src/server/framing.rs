//! Watches an HTTP/1.1 connection's bytes on their way to hyper, finds each request head, and flags heads
//! that hyper would let through, or answer wrongly, but a proxy must refuse:
//! - both Content-Length and Transfer-Encoding: hyper drops Content-Length and keeps the connection open,
//!   but another hop may frame the body differently (request smuggling);
//! - a head over the size limit: hyper checks its limit only between reads, so it can overshoot by one read;
//! - a Content-Length the one wire grammar refuses (`crate::wire::content_length`: a sign, a list, a
//!   repeated field, more than 19 digits): hyper reads some of these its own way and answers others itself;
//! - chunked framing the one chunked decoder refuses (`crate::wire::chunked`): the stream can no longer be
//!   followed, so every later request on the connection is refused.
//!
//! A head is held back until it is complete, then judged and handed to hyper whole, so the watch and hyper
//! always agree on where a head ends (`crate::wire::head_end`, httparse's line endings) and a head can be
//! neutralised before hyper parses it: a refused Content-Length is rewritten to `0` (padded to the same
//! length) and the request flagged. Body bytes are passed on as they come, never held.
//!
//! The core answers a flagged request (400 or 431) and closes the connection.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper::rt::{Read, ReadBufCursor, Write};

use crate::error::ProxyError;
use crate::proxy::length_refusal;
use crate::wire::{self, chunked, LengthError};

/// Why a request head was flagged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FramingViolation {
    /// Both Content-Length and Transfer-Encoding.
    ConflictingLength,
    /// The head is larger than the limit.
    HeadTooLarge,
    /// A Content-Length the wire grammar refuses.
    InvalidLength(LengthError),
    /// The previous request's chunked body could not be followed.
    MalformedChunk,
}

/// Shared between the watcher and the connection's service: the first flagged head and why.
#[derive(Debug)]
pub struct Verdicts {
    first_flagged: AtomicU64,
    /// The first flagged head's violation, as [`FramingViolation::code`].
    violation: AtomicU8,
    answered: AtomicU64,
}

impl FramingViolation {
    /// The error the core answers with.
    pub fn error(self) -> ProxyError {
        match self {
            Self::ConflictingLength => ProxyError::BadRequest("both Content-Length and Transfer-Encoding"),
            Self::HeadTooLarge => ProxyError::HeadTooLarge,
            Self::InvalidLength(error) => ProxyError::BadRequest(length_refusal(error)),
            Self::MalformedChunk => ProxyError::BadRequest("malformed chunked framing earlier on this connection"),
        }
    }

    /// The violation as one byte, for [`Verdicts`].
    fn code(self) -> u8 {
        match self {
            Self::ConflictingLength => 0,
            Self::HeadTooLarge => 1,
            Self::InvalidLength(LengthError::Invalid) => 2,
            Self::InvalidLength(LengthError::Repeated) => 3,
            Self::MalformedChunk => 4,
        }
    }

    fn from_code(code: u8) -> Self {
        match code {
            1 => Self::HeadTooLarge,
            2 => Self::InvalidLength(LengthError::Invalid),
            3 => Self::InvalidLength(LengthError::Repeated),
            4 => Self::MalformedChunk,
            _ => Self::ConflictingLength,
        }
    }
}

impl Verdicts {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            first_flagged: AtomicU64::new(u64::MAX),
            violation: AtomicU8::new(0),
            answered: AtomicU64::new(0),
        })
    }

    fn flag(&self, index: u64, violation: FramingViolation) {
        if self.first_flagged.fetch_min(index, Ordering::Relaxed) > index {
            self.violation.store(violation.code(), Ordering::Relaxed);
        }
    }

    /// Called once per request, in order: the violation of this request's head, if it was flagged.
    /// The connection closes after a flagged request, so every later request inherits the verdict.
    pub fn next_request(&self) -> Option<FramingViolation> {
        let index = self.answered.fetch_add(1, Ordering::Relaxed);
        (index >= self.first_flagged.load(Ordering::Relaxed))
            .then(|| FramingViolation::from_code(self.violation.load(Ordering::Relaxed)))
    }
}

/// An IO wrapper that tracks request framing on the read side; writes pass straight through.
#[derive(Debug)]
pub struct FramingWatch<T> {
    inner: T,
    tracker: Tracker,
    verdicts: Arc<Verdicts>,
    /// Released bytes hyper's buffer had no room for yet, and how many of them it has taken.
    overflow: Vec<u8>,
    taken: usize,
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
                overflow: Vec::new(),
                taken: 0,
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
        loop {
            if this.taken < this.overflow.len() {
                let take = buf.remaining().min(this.overflow.len() - this.taken);
                buf.put_slice(&this.overflow[this.taken..this.taken + take]);
                this.taken += take;
                if this.taken == this.overflow.len() {
                    this.overflow.clear();
                    this.taken = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if this.tracker.phase == Phase::Done {
                return Pin::new(&mut this.inner).poll_read(cx, buf);
            }
            let mut delivered = 0usize;
            let stop = SCRATCH_BUFFER.with_borrow_mut(|scratch| {
                // A body of known length is read no further than its end, so the next head starts a read.
                let room = match this.tracker.phase {
                    Phase::Fixed(left) => usize::try_from(left).unwrap_or(usize::MAX).min(scratch.len()),
                    _ => scratch.len(),
                };
                let mut read_buf = hyper::rt::ReadBuf::new(&mut scratch[..room]);
                match Pin::new(&mut this.inner).poll_read(cx, read_buf.unfilled()) {
                    Poll::Ready(Ok(())) => {}
                    other => return Some(other),
                }
                let filled = read_buf.filled();
                if filled.is_empty() {
                    // End of input: whatever is held goes to hyper, which judges an incomplete head itself.
                    this.tracker
                        .release_held(&mut |bytes| this.overflow.extend_from_slice(bytes));
                    this.tracker.phase = Phase::Done;
                    return this.overflow.is_empty().then_some(Poll::Ready(Ok(())));
                }
                let (overflow, buf) = (&mut this.overflow, &mut buf);
                let mut emit = |bytes: &[u8]| {
                    let direct = if overflow.is_empty() {
                        buf.remaining().min(bytes.len())
                    } else {
                        0
                    };
                    buf.put_slice(&bytes[..direct]);
                    delivered += direct;
                    overflow.extend_from_slice(&bytes[direct..]);
                };
                if let Some((index, violation)) = this.tracker.feed(filled, &mut emit) {
                    this.verdicts.flag(index, violation);
                }
                None
            });
            if let Some(polled) = stop {
                return polled;
            }
            if delivered > 0 {
                return Poll::Ready(Ok(()));
            }
            // Nothing for hyper yet: a head is still incomplete (read on), or it all went to the overflow.
        }
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

#[derive(Debug, Clone, PartialEq, Eq)]
enum Phase {
    /// Collecting a request head.
    Head,
    /// A body of known length.
    Fixed(u64),
    /// A chunked body, followed by the one chunked decoder.
    Chunked(chunked::Decoder),
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
    /// Consumes bytes, handing to `emit` what may go on to hyper now (head bytes are held until the head is
    /// complete); returns the index of a flagged head and why, if one is found here.
    fn feed(&mut self, mut data: &[u8], emit: &mut impl FnMut(&[u8])) -> Option<(u64, FramingViolation)> {
        let mut flagged = None;
        while !data.is_empty() {
            let passed = match &mut self.phase {
                Phase::Done => data.len(),
                Phase::Head => {
                    let consumed = self.feed_head(data, &mut flagged, emit);
                    data = &data[consumed..];
                    continue;
                }
                Phase::Fixed(left) => {
                    let take = (*left).min(data.len() as u64);
                    self.phase = if take == *left {
                        Phase::Head
                    } else {
                        Phase::Fixed(*left - take)
                    };
                    take as usize
                }
                Phase::Chunked(decoder) => match decoder.step(data) {
                    Ok(chunked::Step::Framing(read) | chunked::Step::Data(read) | chunked::Step::Trailers(read)) => {
                        if decoder.is_done() {
                            self.phase = Phase::Head;
                        }
                        read
                    }
                    // hyper decides about this request's body; every later one on the connection is refused.
                    Err(_) => {
                        flagged.get_or_insert((self.heads.saturating_sub(1), FramingViolation::MalformedChunk));
                        self.phase = Phase::Done;
                        data.len()
                    }
                },
            };
            emit(&data[..passed]);
            data = &data[passed..];
        }
        flagged
    }

    /// Hands everything held to `emit` (the connection's input ended: hyper judges what it got).
    fn release_held(&mut self, emit: &mut impl FnMut(&[u8])) {
        emit(&self.head);
        self.head.clear();
    }

    /// Holds head bytes until the blank line; then judges the head and hands it on whole. Returns bytes
    /// consumed.
    fn feed_head(
        &mut self,
        data: &[u8],
        flagged: &mut Option<(u64, FramingViolation)>,
        emit: &mut impl FnMut(&[u8]),
    ) -> usize {
        // Empty lines before a request line are allowed and ignored (hyper skips them too).
        if self.head.is_empty() {
            let skip = data.iter().take_while(|b| matches!(b, b'\r' | b'\n')).count();
            if skip > 0 {
                emit(&data[..skip]);
                return skip;
            }
        }
        let before = self.head.len();
        self.head.extend_from_slice(data);
        let search_from = before.saturating_sub(2);
        let end = wire::head_end(&self.head[search_from..]).map(|e| e + search_from);
        let index = self.heads;
        if end.unwrap_or(self.head.len()) > self.max_head {
            // hyper refuses it too; the flag makes sure of the status even when hyper's check overshoots.
            *flagged = Some((index, FramingViolation::HeadTooLarge));
            self.phase = Phase::Done;
            self.release_held(emit);
            return data.len();
        }
        let Some(end) = end else {
            return data.len();
        };
        let consumed = end - before;
        self.heads += 1;
        let (framing, violation) = classify(&mut self.head[..end], self.max_head);
        if let Some(violation) = violation {
            flagged.get_or_insert((index, violation));
        }
        self.phase = match framing {
            Framing::Length(0) => Phase::Head,
            Framing::Length(length) => Phase::Fixed(length),
            Framing::Chunked => Phase::Chunked(chunked::Decoder::new(self.max_head)),
            Framing::Untracked => Phase::Done,
        };
        emit(&self.head[..end]);
        self.head.clear();
        if self.head.capacity() > KEPT_HEAD_CAPACITY {
            self.head = Vec::new();
        }
        consumed
    }
}

/// A head buffer larger than this is not kept for the connection's next head.
const KEPT_HEAD_CAPACITY: usize = 8 * 1024;

enum Framing {
    Length(u64),
    Chunked,
    /// An upgrade request, a transfer coding other than chunked, or a head hyper will refuse: stop tracking.
    Untracked,
}

/// How a head frames its body, and what is wrong with it. A Content-Length the wire grammar refuses is
/// rewritten in place to `0` (padded with spaces, which hyper trims), so that hyper neither reads a body by
/// its own reading of the value nor answers the request itself: the core refuses it.
fn classify(head: &mut [u8], max_head: usize) -> (Framing, Option<FramingViolation>) {
    let mut headers = [httparse::EMPTY_HEADER; 128];
    let mut more_headers;
    let mut request = httparse::Request::new(&mut headers);
    let parsed = match request.parse(head) {
        Err(httparse::Error::TooManyHeaders) => {
            // Rare: more fields than fit on the stack; every line is at most one field.
            let lines = head.iter().filter(|&&b| b == b'\n').count();
            more_headers = vec![httparse::EMPTY_HEADER; lines.min(max_head)];
            request = httparse::Request::new(&mut more_headers);
            request.parse(head)
        }
        other => other,
    };
    if !matches!(parsed, Ok(httparse::Status::Complete(_))) {
        return (Framing::Untracked, None);
    }
    // After an upgrade request the bytes may be tunnel data, which must flow at once and which hyper no
    // longer parses; tracking stops, and the core closes the connection if the upgrade is declined. CONNECT
    // is never tunnelled (the core answers 405), so the next request is judged like any other.
    let mut tunnel = false;
    let mut lengths = Vec::new();
    let mut chunked = None;
    for header in request.headers.iter() {
        if header.name.eq_ignore_ascii_case("upgrade") {
            tunnel = true;
        }
        if header.name.eq_ignore_ascii_case("content-length") {
            let start = header.value.as_ptr() as usize - head.as_ptr() as usize;
            lengths.push(start..start + header.value.len());
        } else if header.name.eq_ignore_ascii_case("transfer-encoding") {
            let last = header.value.rsplit(|&b| b == b',').next().unwrap_or_default();
            chunked = Some(last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        }
    }
    let length = wire::content_length(lengths.iter().filter_map(|range| head.get(range.clone())));
    if !lengths.is_empty() && chunked.is_some() {
        return (Framing::Untracked, Some(FramingViolation::ConflictingLength));
    }
    let length = match length {
        Ok(length) => length,
        Err(error) => {
            // An empty value has no room for the `0`; hyper refuses a head with one itself.
            for range in lengths {
                if let Some((first, rest)) = head.get_mut(range).and_then(<[u8]>::split_first_mut) {
                    *first = b'0';
                    rest.fill(b' ');
                }
            }
            return (Framing::Length(0), Some(FramingViolation::InvalidLength(error)));
        }
    };
    let framing = match (length, chunked) {
        _ if tunnel => Framing::Untracked,
        (_, Some(true)) => Framing::Chunked,
        (_, Some(false)) => Framing::Untracked,
        (Some(length), None) => Framing::Length(length),
        (None, None) => Framing::Length(0),
    };
    (framing, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    impl Tracker {
        /// Feeds bytes, discarding what would go on to hyper.
        fn feed_all(&mut self, data: &[u8]) -> Option<(u64, FramingViolation)> {
            self.feed(data, &mut |_| {})
        }

        /// Feeds bytes in pieces of `chunk`, returning everything released and the first flag.
        fn pass(&mut self, data: &[u8], chunk: usize) -> (Vec<u8>, Option<(u64, FramingViolation)>) {
            let mut out = Vec::new();
            let mut flagged = None;
            for piece in data.chunks(chunk.max(1)) {
                let found = self.feed(piece, &mut |bytes: &[u8]| out.extend_from_slice(bytes));
                flagged = flagged.or(found);
            }
            (out, flagged)
        }
    }

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
        stream.chunks(1).find_map(|b| t.feed_all(b))
    }

    const CONFLICT: FramingViolation = FramingViolation::ConflictingLength;

    #[test]
    fn flags_conflicting_head_in_either_order() {
        let cl_first = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n";
        let te_first = b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n";
        assert_eq!(tracker().feed_all(cl_first), Some((0, CONFLICT)));
        assert_eq!(tracker().feed_all(te_first), Some((0, CONFLICT)));
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
        assert_eq!(tracker().feed_all(&stream), Some((3, CONFLICT)));
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
        assert_eq!(t.feed_all(&stream), None);
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
        fn the_head_end_agrees_with_httparse_for_every_line_ending(
            endings in proptest::collection::vec(proptest::bool::ANY, 1..12),
            fields in 0usize..10,
            tail in proptest::collection::vec(proptest::num::u8::ANY, 0..32),
        ) {
            let head = head_with_endings(&endings, fields);
            let mut bytes = head.clone();
            bytes.extend_from_slice(&tail);
            let mut headers = [httparse::EMPTY_HEADER; 16];
            let parsed = httparse::Request::new(&mut headers).parse(&bytes);
            proptest::prop_assert_eq!(parsed, Ok(httparse::Status::Complete(head.len())));
            proptest::prop_assert_eq!(wire::head_end(&bytes), Some(head.len()));
        }

        #[test]
        fn a_valid_stream_passes_through_byte_for_byte_however_split(
            requests in proptest::collection::vec(
                (0u8..3, proptest::collection::vec(proptest::num::u8::ANY, 0..200), proptest::collection::vec(1usize..90, 0..4)),
                1..6,
            ),
            chunk in 1usize..120,
        ) {
            let stream: Vec<u8> = requests.iter().flat_map(|(kind, body, cuts)| request(*kind, body, cuts)).collect();
            let (out, flagged) = tracker().pass(&stream, chunk);
            proptest::prop_assert_eq!(flagged, None);
            proptest::prop_assert_eq!(out, stream);
        }

        #[test]
        fn any_bytes_in_any_chunking_never_panic_and_stay_bounded(
            data in proptest::collection::vec(proptest::num::u8::ANY, 0..4096),
            chunk in 1usize..64,
        ) {
            let mut t = Tracker { phase: Phase::Head, head: Vec::new(), max_head: 512, heads: 0 };
            for piece in data.chunks(chunk) {
                t.feed_all(piece);
                proptest::prop_assert!(t.head.len() <= 512 + 64);
            }
        }

        #[test]
        fn any_framing_field_value_and_any_chunked_bytes_never_panic(
            value in proptest::collection::vec(proptest::num::u8::ANY, 0..24),
            body in proptest::collection::vec(proptest::num::u8::ANY, 0..256),
            chunk in 1usize..32,
        ) {
            let value: Vec<u8> = value.into_iter().filter(|b| *b != b'\r' && *b != b'\n').collect();
            for name in ["Content-Length", "Transfer-Encoding"] {
                let mut stream = format!("POST / HTTP/1.1\r\nHost: x\r\n{name}:").into_bytes();
                stream.extend_from_slice(&value);
                stream.extend_from_slice(b"\r\n\r\n");
                stream.extend_from_slice(&body);
                let _ = tracker().pass(&stream, chunk);
            }
            let mut chunked = b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
            chunked.extend_from_slice(&body);
            let _ = tracker().pass(&chunked, chunk);
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
            proptest::prop_assert_eq!(whole.feed_all(&stream), None);
            proptest::prop_assert_eq!(whole.heads, requests.len() as u64);
            proptest::prop_assert_eq!(whole.phase, Phase::Head);
            let mut split = tracker();
            let flagged = stream.chunks(chunk).find_map(|piece| split.feed_all(piece));
            proptest::prop_assert_eq!(flagged, None);
            proptest::prop_assert_eq!(split.heads, requests.len() as u64);
        }
    }

    #[test]
    fn a_bare_lf_before_the_final_crlf_ends_the_head_as_for_hyper() {
        let mut stream = b"GET /a HTTP/1.1\r\nHost: x\n\r\n".to_vec();
        stream.extend_from_slice(
            b"POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
        );
        assert_eq!(flagged_bytewise(&stream), Some((1, CONFLICT)));
        assert_eq!(tracker().feed_all(&stream), Some((1, CONFLICT)));
        for (ending, end) in [(&b"\n\n"[..], 2), (b"\n\r\n", 3), (b"\r\n\n", 3), (b"\r\n\r\n", 4)] {
            let mut head = b"GET / HTTP/1.1\r\nHost: x".to_vec();
            head.extend_from_slice(ending);
            assert_eq!(wire::head_end(&head), Some(head.len()), "{ending:?}");
            assert_eq!(head.len(), 23 + end);
        }
        assert_eq!(wire::head_end(b"GET / HTTP/1.1\r\nHost: x\r\n\r"), None);
    }

    #[test]
    fn a_head_is_held_until_complete_and_then_passed_on_whole() {
        let stream = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabcGET / HTTP/1.1\r\nHost: x\r\n\r\n";
        let mut t = tracker();
        let mut out = Vec::new();
        let head_end = stream.iter().position(|&b| b == b'a').unwrap_or(0);
        for (index, byte) in stream.iter().enumerate() {
            t.feed(std::slice::from_ref(byte), &mut |bytes: &[u8]| {
                out.extend_from_slice(bytes)
            });
            if index + 1 < head_end {
                assert!(out.is_empty(), "head bytes released before the head was complete");
            }
        }
        assert_eq!(out, stream.to_vec());
    }

    #[test]
    fn a_refused_content_length_is_neutralised_and_flagged() {
        let invalid = FramingViolation::InvalidLength(LengthError::Invalid);
        for value in [
            "18446744073709551615",
            "99999999999999999999",
            "+5",
            "0x5",
            "5, 5",
            "5,6",
            "-1",
        ] {
            let head = format!("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: {value}\r\n\r\n");
            let (out, flagged) = tracker().pass(head.as_bytes(), 7);
            assert_eq!(flagged, Some((0, invalid)), "{value}");
            let expected = head.replace(value, &format!("0{}", " ".repeat(value.len() - 1)));
            assert_eq!(String::from_utf8_lossy(&out), expected);
        }
        let repeated = "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n";
        let (out, flagged) = tracker().pass(repeated.as_bytes(), 9);
        assert_eq!(
            flagged,
            Some((0, FramingViolation::InvalidLength(LengthError::Repeated)))
        );
        assert_eq!(String::from_utf8_lossy(&out), repeated.replace(": 5", ": 0"));
        let empty = "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: \r\n\r\n";
        let (out, flagged) = tracker().pass(empty.as_bytes(), 3);
        assert_eq!(flagged, Some((0, invalid)), "an empty value");
        assert_eq!(String::from_utf8_lossy(&out), empty);
        let fine = "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 9999999999999999999\r\n\r\n";
        assert_eq!(tracker().pass(fine.as_bytes(), 5).1, None);
    }

    #[test]
    fn every_head_after_connect_is_judged() {
        let mut stream = b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n".to_vec();
        stream.extend_from_slice(
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
        );
        assert_eq!(flagged_bytewise(&stream), Some((1, CONFLICT)));
    }

    #[test]
    fn malformed_chunked_framing_refuses_every_later_request() {
        let mut stream = b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        stream.extend_from_slice(b"5\nhello\r\n0\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n");
        let mut t = tracker();
        assert_eq!(t.feed_all(&stream), Some((0, FramingViolation::MalformedChunk)));
        assert_eq!(t.phase, Phase::Done);
        assert_eq!(flagged_bytewise(&stream), Some((0, FramingViolation::MalformedChunk)));
    }

    #[test]
    fn heads_with_more_fields_than_the_stack_holds_are_still_judged() {
        let mut head = String::from("POST / HTTP/1.1\r\nHost: x\r\n");
        for n in 0..300 {
            head.push_str(&format!("X-{n}: y\r\n"));
        }
        head.push_str("Content-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n");
        let mut t = Tracker {
            phase: Phase::Head,
            head: Vec::new(),
            max_head: 65536,
            heads: 0,
        };
        assert_eq!(t.feed_all(head.as_bytes()), Some((0, CONFLICT)));
    }

    /// A request head with random line endings (CRLF or bare LF) and fields.
    fn head_with_endings(endings: &[bool], fields: usize) -> Vec<u8> {
        let ending = |i: usize| {
            if endings.get(i).copied().unwrap_or(true) {
                &b"\r\n"[..]
            } else {
                &b"\n"[..]
            }
        };
        let mut head = b"GET /p HTTP/1.1".to_vec();
        head.extend_from_slice(ending(0));
        for n in 0..fields {
            head.extend_from_slice(format!("X-F{n}: v{n}").as_bytes());
            head.extend_from_slice(ending(n + 1));
        }
        head.extend_from_slice(ending(fields + 1));
        head
    }

    #[test]
    fn flags_the_head_that_crosses_the_limit() {
        let mut t = Tracker {
            phase: Phase::Head,
            head: Vec::new(),
            max_head: 64,
            heads: 0,
        };
        assert_eq!(t.feed_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"), None);
        let big = format!("GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n", "a".repeat(64));
        assert_eq!(
            big.as_bytes().chunks(7).find_map(|c| t.feed_all(c)),
            Some((1, FramingViolation::HeadTooLarge))
        );
    }
}
