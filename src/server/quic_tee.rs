//! Wraps h3-quinn's connection so that each request stream's first HEADERS frame is seen on its way to h3
//! and checked by `quic_fields`. Only malformed verdicts are kept, by stream id; the request task takes its
//! stream's verdict once h3 has resolved the request (which it can only do after reading that frame).
//! Everything else is passed through unchanged.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use h3::quic::{self, ConnectionErrorIncoming, StreamErrorIncoming, StreamId, WriteBuf};

use super::quic_fields::{self, Malformed};

/// Malformed request streams of one connection, by id.
#[derive(Debug, Clone, Default)]
pub struct Verdicts(Arc<Mutex<HashMap<StreamId, Malformed>>>);

impl Verdicts {
    /// Takes the verdict on stream `id`, if its field section was malformed.
    pub fn take(&self, id: StreamId) -> Option<Malformed> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).remove(&id)
    }

    fn record(&self, id: StreamId, malformed: Malformed) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id, malformed);
    }
}

/// Follows the frames at the start of a request stream until the HEADERS frame has been checked.
struct Tee {
    /// The stream's id, taken when it is accepted (h3-quinn cannot give it after the stream ends).
    id: StreamId,
    verdicts: Verdicts,
    pending: Vec<u8>,
    done: bool,
    /// Beyond this many buffered bytes the section is too large for h3 anyway; stop looking.
    limit: usize,
}

type RecvPoll = Poll<Result<Option<Bytes>, StreamErrorIncoming>>;

const HEADERS: u64 = 0x01;
const DATA: u64 = 0x00;

impl Tee {
    fn new(id: StreamId, verdicts: Verdicts, limit: usize) -> Self {
        Self {
            id,
            verdicts,
            pending: Vec::new(),
            done: false,
            limit,
        }
    }

    fn observe(&mut self, data: &[u8]) {
        if self.done {
            return;
        }
        self.pending.extend_from_slice(data);
        loop {
            let mut frame = self.pending.as_slice();
            let (Some(kind), Some(length)) = (varint(&mut frame), varint(&mut frame)) else {
                break;
            };
            let header = self.pending.len() - frame.len();
            let length = usize::try_from(length).unwrap_or(usize::MAX);
            if kind == DATA {
                // DATA before HEADERS: h3 refuses the stream itself.
                self.finish();
                return;
            }
            if frame.len() < length {
                break;
            }
            if kind == HEADERS {
                if let Err(malformed) = quic_fields::check_request(&frame[..length]) {
                    self.verdicts.record(self.id, malformed);
                }
                self.finish();
                return;
            }
            // Reserved or unknown frame types before HEADERS are skipped, as h3 does.
            self.pending.drain(..header + length);
        }
        if self.pending.len() > self.limit {
            self.finish();
        }
    }

    /// Passes a receive poll through, observing the data it carries.
    fn pass(&mut self, polled: RecvPoll) -> RecvPoll {
        if let Poll::Ready(Ok(Some(data))) = &polled {
            self.observe(data);
        }
        polled
    }

    fn finish(&mut self) {
        self.done = true;
        self.pending = Vec::new();
    }
}

/// A QUIC variable-length integer (RFC 9000 16).
fn varint(input: &mut &[u8]) -> Option<u64> {
    let first = *input.first()?;
    let length = 1usize << (first >> 6);
    if input.len() < length {
        return None;
    }
    let value = input[1..length]
        .iter()
        .fold(u64::from(first & 0x3f), |value, &byte| (value << 8) | u64::from(byte));
    *input = &input[length..];
    Some(value)
}

/// h3-quinn's connection, with tees on the request streams it accepts.
pub struct TeeConnection {
    inner: h3_quinn::Connection,
    /// The connection's own stream-opening role, wrapped like the openers it hands out.
    opener: TeeOpener,
}

impl TeeConnection {
    /// Wraps `inner`; HEADERS frames larger than `limit` are not inspected (h3 refuses them).
    pub fn new(inner: h3_quinn::Connection, verdicts: Verdicts, limit: usize) -> Self {
        let opener = TeeOpener {
            inner: quic::Connection::<Bytes>::opener(&inner),
            verdicts,
            limit,
        };
        Self { inner, opener }
    }
}

impl<B: Buf> quic::OpenStreams<B> for TeeConnection {
    type BidiStream = TeeBidi<B>;
    type SendStream = h3_quinn::SendStream<B>;

    fn poll_open_bidi(&mut self, cx: &mut Context<'_>) -> Poll<Result<Self::BidiStream, StreamErrorIncoming>> {
        self.opener.poll_open_bidi(cx)
    }

    fn poll_open_send(&mut self, cx: &mut Context<'_>) -> Poll<Result<Self::SendStream, StreamErrorIncoming>> {
        self.opener.poll_open_send(cx)
    }

    fn close(&mut self, code: h3::error::Code, reason: &[u8]) {
        quic::OpenStreams::<B>::close(&mut self.opener, code, reason);
    }
}

impl<B: Buf> quic::Connection<B> for TeeConnection {
    type RecvStream = h3_quinn::RecvStream;
    type OpenStreams = TeeOpener;

    fn poll_accept_recv(&mut self, cx: &mut Context<'_>) -> Poll<Result<Self::RecvStream, ConnectionErrorIncoming>> {
        quic::Connection::<B>::poll_accept_recv(&mut self.inner, cx)
    }

    fn poll_accept_bidi(&mut self, cx: &mut Context<'_>) -> Poll<Result<Self::BidiStream, ConnectionErrorIncoming>> {
        let (verdicts, limit) = (self.opener.verdicts.clone(), self.opener.limit);
        quic::Connection::<B>::poll_accept_bidi(&mut self.inner, cx).map_ok(|s| TeeBidi::new(s, verdicts, limit))
    }

    fn opener(&self) -> Self::OpenStreams {
        TeeOpener {
            inner: quic::Connection::<B>::opener(&self.inner),
            verdicts: self.opener.verdicts.clone(),
            limit: self.opener.limit,
        }
    }
}

/// h3-quinn's stream opener; its bidi streams carry tees too, so that the types line up.
pub struct TeeOpener {
    inner: h3_quinn::OpenStreams,
    verdicts: Verdicts,
    limit: usize,
}

impl<B: Buf> quic::OpenStreams<B> for TeeOpener {
    type BidiStream = TeeBidi<B>;
    type SendStream = h3_quinn::SendStream<B>;

    fn poll_open_bidi(&mut self, cx: &mut Context<'_>) -> Poll<Result<Self::BidiStream, StreamErrorIncoming>> {
        let (verdicts, limit) = (self.verdicts.clone(), self.limit);
        quic::OpenStreams::<B>::poll_open_bidi(&mut self.inner, cx).map_ok(|s| TeeBidi::new(s, verdicts, limit))
    }

    fn poll_open_send(&mut self, cx: &mut Context<'_>) -> Poll<Result<Self::SendStream, StreamErrorIncoming>> {
        quic::OpenStreams::<B>::poll_open_send(&mut self.inner, cx)
    }

    fn close(&mut self, code: h3::error::Code, reason: &[u8]) {
        quic::OpenStreams::<B>::close(&mut self.inner, code, reason);
    }
}

/// A request stream whose received bytes pass the tee.
pub struct TeeBidi<B: Buf> {
    inner: h3_quinn::BidiStream<B>,
    tee: Tee,
}

impl<B: Buf> TeeBidi<B> {
    fn new(inner: h3_quinn::BidiStream<B>, verdicts: Verdicts, limit: usize) -> Self {
        let id = quic::RecvStream::recv_id(&inner);
        Self {
            inner,
            tee: Tee::new(id, verdicts, limit),
        }
    }
}

impl<B: Buf> quic::SendStream<B> for TeeBidi<B> {
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), StreamErrorIncoming>> {
        self.inner.poll_ready(cx)
    }
    fn send_data<T: Into<WriteBuf<B>>>(&mut self, data: T) -> Result<(), StreamErrorIncoming> {
        self.inner.send_data(data)
    }
    fn poll_finish(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), StreamErrorIncoming>> {
        self.inner.poll_finish(cx)
    }
    fn reset(&mut self, reset_code: u64) {
        self.inner.reset(reset_code);
    }
    fn send_id(&self) -> StreamId {
        self.inner.send_id()
    }
}

impl<B: Buf> quic::RecvStream for TeeBidi<B> {
    type Buf = Bytes;

    fn poll_data(&mut self, cx: &mut Context<'_>) -> RecvPoll {
        let polled = self.inner.poll_data(cx);
        self.tee.pass(polled)
    }
    fn stop_sending(&mut self, error_code: u64) {
        self.inner.stop_sending(error_code);
    }
    fn recv_id(&self) -> StreamId {
        // h3-quinn's own recv_id panics once the stream has ended; the id taken at accept never does.
        self.tee.id
    }
}

impl<B: Buf> quic::BidiStream<B> for TeeBidi<B> {
    type SendStream = h3_quinn::SendStream<B>;
    type RecvStream = TeeRecv;

    fn split(self) -> (Self::SendStream, Self::RecvStream) {
        let (send, recv) = self.inner.split();
        (
            send,
            TeeRecv {
                inner: recv,
                tee: self.tee,
            },
        )
    }
}

/// The receive half of a split request stream, still passing the tee.
pub struct TeeRecv {
    inner: h3_quinn::RecvStream,
    tee: Tee,
}

impl quic::RecvStream for TeeRecv {
    type Buf = Bytes;

    fn poll_data(&mut self, cx: &mut Context<'_>) -> RecvPoll {
        let polled = self.inner.poll_data(cx);
        self.tee.pass(polled)
    }
    fn stop_sending(&mut self, error_code: u64) {
        self.inner.stop_sending(error_code);
    }
    fn recv_id(&self) -> StreamId {
        // h3-quinn's own recv_id panics once the stream has ended; the id taken at accept never does.
        self.tee.id
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quic_varints_of_every_length() {
        for (bytes, value) in [
            (&[0x25][..], 37u64),
            (&[0x7b, 0xbd][..], 15_293),
            (&[0x9d, 0x7f, 0x3e, 0x7d][..], 494_878_333),
            (
                &[0xc2, 0x19, 0x7c, 0x5e, 0xff, 0x14, 0xe8, 0x8c][..],
                151_288_809_941_952_652,
            ),
        ] {
            let mut input = bytes;
            assert_eq!(varint(&mut input), Some(value));
            assert!(input.is_empty());
        }
        assert_eq!(varint(&mut &[0x7b][..]), None);
    }
}
