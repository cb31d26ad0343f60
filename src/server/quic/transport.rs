//! h3's QUIC transport traits, implemented over quinn directly.
//!
//! Why not h3-quinn: its receive stream moves the quinn stream into a pending read future, so a
//! `stop_sending` while a read is pending (which h3 can leave behind) panics, and its `recv_id` panics once a
//! stream has ended. Here a read is a fresh, cancel-safe `read_chunk` call each poll, so the stream is always
//! at hand, and ids are taken once when a stream is accepted. Nothing in this file can panic.
//!
//! Request streams also carry the proxy's own rules:
//! - their first HEADERS frame passes a tee that checks the encoded field section for what h3 lets through
//!   (`fields.rs`); a malformed stream's verdict is noted by id for the request task, with a future that
//!   completes when the client stops the stream (so the task can give up at once);
//! - a request stream dropped before its head arrived (the header read timeout) is stopped and reset with
//!   H3_REQUEST_INCOMPLETE; one whose request task dropped it before its response finished is reset, never
//!   finished: a response cut short must not look complete. A stream h3 answered itself (431 for an
//!   oversized head) is finished, as h3 expects.
//!
//! A client may not open push streams (RFC 9114 6.2.2): the first one closes the connection with
//! H3_STREAM_CREATION_ERROR.

use std::collections::HashMap;
use std::future::Future;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use futures_util::stream::{self, BoxStream, StreamExt as _};
use h3::quic::{self, ConnectionErrorIncoming, StreamErrorIncoming, StreamId, WriteBuf};
use quinn::VarInt;

use super::fields::{self, Malformed};

/// HTTP/3 error codes this transport sends (RFC 9114 8.1).
const H3_INTERNAL_ERROR: u64 = 0x102;
const H3_STREAM_CREATION_ERROR: u32 = 0x103;
const H3_REQUEST_CANCELLED: u64 = 0x10c;
const H3_REQUEST_INCOMPLETE: u64 = 0x10d;
/// The unidirectional stream type of a server push (RFC 9114 6.2.2).
const PUSH_STREAM: u64 = 0x01;

/// Completes when the client stops the response stream (STOP_SENDING), or once the response was received.
pub type Stopped = Pin<Box<dyn Future<Output = ()> + Send + Sync>>;

/// What the transport learned about a request stream, for the task serving it.
pub struct Claim {
    /// Why the field section is malformed, if it is.
    pub malformed: Option<Malformed>,
    /// The request is an extended CONNECT for WebSocket (h3 was shown its stand-in protocol).
    pub websocket: bool,
    pub stopped: Stopped,
}

struct Note {
    malformed: Option<Malformed>,
    websocket: bool,
    stopped: Option<Stopped>,
    /// Set once a request task claimed the stream: from then on a stream dropped unfinished is reset.
    claimed: Arc<AtomicBool>,
}

/// The notes on one connection's request streams, by id.
#[derive(Clone, Default)]
pub struct Notes(Arc<Mutex<HashMap<StreamId, Note>>>);

impl Notes {
    fn with<T>(&self, f: impl FnOnce(&mut HashMap<StreamId, Note>) -> T) -> T {
        f(&mut self.0.lock().unwrap_or_else(PoisonError::into_inner))
    }

    fn open(&self, id: StreamId, stopped: Stopped, claimed: Arc<AtomicBool>) {
        self.with(|notes| {
            notes.insert(
                id,
                Note {
                    malformed: None,
                    websocket: false,
                    stopped: Some(stopped),
                    claimed,
                },
            )
        });
    }

    fn record(&self, id: StreamId, malformed: Malformed) {
        self.with(|notes| {
            if let Some(note) = notes.get_mut(&id) {
                note.malformed = Some(malformed);
            }
        });
    }

    fn websocket(&self, id: StreamId) {
        self.with(|notes| {
            if let Some(note) = notes.get_mut(&id) {
                note.websocket = true;
            }
        });
    }

    fn forget(&self, id: StreamId) {
        self.with(|notes| notes.remove(&id));
    }

    /// Takes the notes on stream `id` for the task that serves it.
    pub fn claim(&self, id: StreamId) -> Option<Claim> {
        let note = self.with(|notes| notes.remove(&id))?;
        note.claimed.store(true, Ordering::Relaxed);
        Some(Claim {
            malformed: note.malformed,
            websocket: note.websocket,
            stopped: note.stopped?,
        })
    }
}

type Accepted<T> = BoxStream<'static, Result<T, quinn::ConnectionError>>;

/// A quinn connection as h3 sees it.
pub struct Connection {
    opener: Opener,
    incoming_bidi: Accepted<(quinn::SendStream, quinn::RecvStream)>,
    incoming_uni: Accepted<quinn::RecvStream>,
    notes: Notes,
    /// Beyond this many buffered bytes a HEADERS frame is too large for h3 anyway; the tee stops looking.
    head_limit: usize,
}

impl Connection {
    /// Wraps `connection`; request heads larger than `head_limit` are not inspected (h3 refuses them).
    pub fn new(connection: quinn::Connection, notes: Notes, head_limit: usize) -> Self {
        let accept_bidi = |c: quinn::Connection| async move { Some((c.accept_bi().await, c)) };
        let accept_uni = |c: quinn::Connection| async move { Some((c.accept_uni().await, c)) };
        Self {
            incoming_bidi: stream::unfold(connection.clone(), accept_bidi).boxed(),
            incoming_uni: stream::unfold(connection.clone(), accept_uni).boxed(),
            opener: Opener::new(connection),
            notes,
            head_limit,
        }
    }
}

fn next_accepted<T>(incoming: &mut Accepted<T>, cx: &mut Context<'_>) -> Poll<Result<T, ConnectionErrorIncoming>> {
    match ready!(incoming.poll_next_unpin(cx)) {
        Some(accepted) => Poll::Ready(accepted.map_err(connection_error)),
        None => Poll::Ready(Err(ConnectionErrorIncoming::InternalError(
            "stream acceptance ended".to_owned(),
        ))),
    }
}

impl<B: Buf> quic::Connection<B> for Connection {
    type RecvStream = RecvStream;
    type OpenStreams = Opener;

    fn poll_accept_recv(&mut self, cx: &mut Context<'_>) -> Poll<Result<RecvStream, ConnectionErrorIncoming>> {
        let recv = ready!(next_accepted(&mut self.incoming_uni, cx))?;
        let mut recv = RecvStream::new(recv, None).map_err(internal)?;
        recv.type_check = Some(self.opener.connection.clone());
        Poll::Ready(Ok(recv))
    }

    fn poll_accept_bidi(&mut self, cx: &mut Context<'_>) -> Poll<Result<BidiStream<B>, ConnectionErrorIncoming>> {
        let (send, recv) = ready!(next_accepted(&mut self.incoming_bidi, cx))?;
        let tee = Tee::new(self.notes.clone(), self.head_limit);
        let stopped: Stopped = Box::pin({
            let stopped = send.stopped();
            async move {
                let _ = stopped.await;
            }
        });
        let claimed = Arc::new(AtomicBool::new(false));
        let mut send = SendStream::new(send, true).map_err(internal)?;
        let recv = RecvStream::new(recv, Some(tee)).map_err(internal)?;
        self.notes.open(send.id, stopped, Arc::clone(&claimed));
        send.request = Some(Request {
            notes: self.notes.clone(),
            claimed,
        });
        Poll::Ready(Ok(BidiStream { send, recv }))
    }

    fn opener(&self) -> Opener {
        Opener::new(self.opener.connection.clone())
    }
}

impl<B: Buf> quic::OpenStreams<B> for Connection {
    type BidiStream = BidiStream<B>;
    type SendStream = SendStream<B>;

    fn poll_open_bidi(&mut self, cx: &mut Context<'_>) -> Poll<Result<BidiStream<B>, StreamErrorIncoming>> {
        quic::OpenStreams::<B>::poll_open_bidi(&mut self.opener, cx)
    }

    fn poll_open_send(&mut self, cx: &mut Context<'_>) -> Poll<Result<SendStream<B>, StreamErrorIncoming>> {
        quic::OpenStreams::<B>::poll_open_send(&mut self.opener, cx)
    }

    fn close(&mut self, code: h3::error::Code, reason: &[u8]) {
        quic::OpenStreams::<B>::close(&mut self.opener, code, reason);
    }
}

/// Opens the server's own streams (control and QPACK streams; h3 opens no bidirectional ones on a server).
pub struct Opener {
    connection: quinn::Connection,
    opening_bidi: Option<Accepted<(quinn::SendStream, quinn::RecvStream)>>,
    opening_uni: Option<Accepted<quinn::SendStream>>,
}

impl Opener {
    fn new(connection: quinn::Connection) -> Self {
        Self {
            connection,
            opening_bidi: None,
            opening_uni: None,
        }
    }
}

impl<B: Buf> quic::OpenStreams<B> for Opener {
    type BidiStream = BidiStream<B>;
    type SendStream = SendStream<B>;

    fn poll_open_bidi(&mut self, cx: &mut Context<'_>) -> Poll<Result<BidiStream<B>, StreamErrorIncoming>> {
        let connection = &self.connection;
        let opening = self.opening_bidi.get_or_insert_with(|| {
            stream::unfold(connection.clone(), |c| async move { Some((c.open_bi().await, c)) }).boxed()
        });
        let (send, recv) = ready!(next_accepted(opening, cx)).map_err(stream_of_connection)?;
        let stream = SendStream::new(send, true).and_then(|send| {
            Ok(BidiStream {
                send,
                recv: RecvStream::new(recv, None)?,
            })
        });
        Poll::Ready(stream.map_err(|e| stream_of_connection(internal(e))))
    }

    fn poll_open_send(&mut self, cx: &mut Context<'_>) -> Poll<Result<SendStream<B>, StreamErrorIncoming>> {
        let connection = &self.connection;
        let opening = self.opening_uni.get_or_insert_with(|| {
            stream::unfold(connection.clone(), |c| async move { Some((c.open_uni().await, c)) }).boxed()
        });
        let send = ready!(next_accepted(opening, cx)).map_err(stream_of_connection)?;
        // The control and QPACK streams live as long as the connection: on drop they are finished, as
        // quinn does by default, never reset (a reset critical stream is a connection error for the peer).
        Poll::Ready(SendStream::new(send, false).map_err(|e| stream_of_connection(internal(e))))
    }

    fn close(&mut self, code: h3::error::Code, reason: &[u8]) {
        let code = VarInt::from_u64(code.value()).unwrap_or(VarInt::from_u32(0x102));
        self.connection.close(code, reason);
    }
}

/// A request stream, both halves.
pub struct BidiStream<B: Buf> {
    send: SendStream<B>,
    recv: RecvStream,
}

impl<B: Buf> quic::BidiStream<B> for BidiStream<B> {
    type SendStream = SendStream<B>;
    type RecvStream = RecvStream;

    fn split(self) -> (SendStream<B>, RecvStream) {
        (self.send, self.recv)
    }
}

impl<B: Buf> quic::RecvStream for BidiStream<B> {
    type Buf = Bytes;

    fn poll_data(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<Bytes>, StreamErrorIncoming>> {
        self.recv.poll_data(cx)
    }
    fn stop_sending(&mut self, error_code: u64) {
        self.recv.stop_sending(error_code);
    }
    fn recv_id(&self) -> StreamId {
        self.recv.id
    }
}

impl<B: Buf> quic::SendStream<B> for BidiStream<B> {
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), StreamErrorIncoming>> {
        self.send.poll_ready(cx)
    }
    fn send_data<T: Into<WriteBuf<B>>>(&mut self, data: T) -> Result<(), StreamErrorIncoming> {
        self.send.send_data(data)
    }
    fn poll_finish(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), StreamErrorIncoming>> {
        self.send.poll_finish(cx)
    }
    fn reset(&mut self, reset_code: u64) {
        self.send.reset(reset_code);
    }
    fn send_id(&self) -> StreamId {
        self.send.id
    }
}

/// The receiving half of a stream.
pub struct RecvStream {
    stream: quinn::RecvStream,
    id: StreamId,
    /// Request streams only: follows the frames up to the first HEADERS frame.
    tee: Option<Tee>,
    /// Unidirectional streams from the client, until their type is known: the connection to close if it
    /// is a push stream.
    type_check: Option<quinn::Connection>,
    /// The peer finished the stream and everything was read.
    ended: bool,
}

impl RecvStream {
    fn new(stream: quinn::RecvStream, tee: Option<Tee>) -> Result<Self, quic::InvalidStreamId> {
        let id = StreamId::try_from(u64::from(stream.id()))?;
        Ok(Self {
            stream,
            id,
            tee,
            type_check: None,
            ended: false,
        })
    }

    /// True while this is a request stream whose first HEADERS frame has not arrived completely.
    fn head_pending(&self) -> bool {
        self.tee.as_ref().is_some_and(|tee| !tee.done)
    }
}

impl quic::RecvStream for RecvStream {
    type Buf = Bytes;

    fn poll_data(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<Bytes>, StreamErrorIncoming>> {
        // A read is a new future each poll: `read_chunk` is cancel-safe (quinn keeps the waker with the
        // stream, not in the future), and the stream is never moved out of reach of `stop_sending`.
        loop {
            let read = pin!(self.stream.read_chunk(usize::MAX, true));
            match ready!(read.poll(cx)) {
                Ok(Some(chunk)) => {
                    check_type(&mut self.type_check, &chunk.bytes);
                    let Some(tee) = self.tee.as_mut().filter(|tee| !tee.done) else {
                        return Poll::Ready(Ok(Some(chunk.bytes)));
                    };
                    // The head is held until its HEADERS frame is whole (h3 can do nothing with less).
                    if let Some(head) = tee.take(self.id, chunk.bytes) {
                        return Poll::Ready(Ok(Some(head)));
                    }
                }
                Ok(None) => {
                    if let Some(held) = self.tee.as_mut().and_then(Tee::release) {
                        return Poll::Ready(Ok(Some(held)));
                    }
                    self.ended = true;
                    return Poll::Ready(Ok(None));
                }
                Err(error) => return Poll::Ready(Err(read_error(error))),
            }
        }
    }

    fn stop_sending(&mut self, error_code: u64) {
        // An already stopped or finished stream has nothing left to stop.
        let _ = self.stream.stop(varint(error_code));
    }

    fn recv_id(&self) -> StreamId {
        self.id
    }
}

impl Drop for RecvStream {
    fn drop(&mut self) {
        if self.head_pending() && !self.ended {
            let _ = self.stream.stop(varint(H3_REQUEST_INCOMPLETE));
        }
    }
}

/// The sending half of a stream.
pub struct SendStream<B: Buf> {
    stream: quinn::SendStream,
    id: StreamId,
    writing: Option<WriteBuf<B>>,
    /// Request streams are reset when dropped unfinished; the server's own streams are finished.
    reset_on_drop: bool,
    /// Request streams: the notes to clear, and whether a request task took the stream.
    request: Option<Request>,
    wrote: bool,
    ended: bool,
}

struct Request {
    notes: Notes,
    claimed: Arc<AtomicBool>,
}

impl<B: Buf> SendStream<B> {
    fn new(stream: quinn::SendStream, reset_on_drop: bool) -> Result<Self, quic::InvalidStreamId> {
        let id = StreamId::try_from(u64::from(stream.id()))?;
        Ok(Self {
            stream,
            id,
            writing: None,
            reset_on_drop,
            request: None,
            wrote: false,
            ended: false,
        })
    }
}

impl<B: Buf> quic::SendStream<B> for SendStream<B> {
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), StreamErrorIncoming>> {
        if let Some(data) = &mut self.writing {
            while data.has_remaining() {
                let written = ready!(Pin::new(&mut self.stream).poll_write(cx, data.chunk())).map_err(write_error)?;
                data.advance(written);
            }
        }
        self.writing = None;
        Poll::Ready(Ok(()))
    }

    fn send_data<T: Into<WriteBuf<B>>>(&mut self, data: T) -> Result<(), StreamErrorIncoming> {
        if self.writing.is_some() {
            return Err(StreamErrorIncoming::ConnectionErrorIncoming {
                connection_error: ConnectionErrorIncoming::InternalError(
                    "data sent on a stream that was not ready".to_owned(),
                ),
            });
        }
        self.wrote = true;
        self.writing = Some(data.into());
        Ok(())
    }

    fn poll_finish(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), StreamErrorIncoming>> {
        self.ended = true;
        Poll::Ready(
            self.stream
                .finish()
                .map_err(|e| StreamErrorIncoming::Unknown(Box::new(e))),
        )
    }

    fn reset(&mut self, reset_code: u64) {
        self.ended = true;
        let _ = self.stream.reset(varint(reset_code));
    }

    fn send_id(&self) -> StreamId {
        self.id
    }
}

impl<B: Buf> Drop for SendStream<B> {
    fn drop(&mut self) {
        let claimed = match &self.request {
            Some(request) => {
                request.notes.forget(self.id);
                request.claimed.load(Ordering::Relaxed)
            }
            None => false,
        };
        if !self.reset_on_drop || self.ended {
            return;
        }
        let code = match (claimed, self.wrote) {
            (true, true) => H3_INTERNAL_ERROR,
            (true, false) => H3_REQUEST_CANCELLED,
            // h3 answered the stream itself (an error response): let that answer stand.
            (false, true) => {
                let _ = self.stream.finish();
                return;
            }
            (false, false) => H3_REQUEST_INCOMPLETE,
        };
        let _ = self.stream.reset(varint(code));
    }
}

/// Holds the start of a request stream until its first HEADERS frame is whole, checks its field section
/// for what h3 lets through, and gives h3 a stand-in for `:protocol: websocket`, which h3 cannot parse.
struct Tee {
    notes: Notes,
    pending: BytesMut,
    done: bool,
    limit: usize,
}

const HEADERS: u64 = 0x01;
const DATA: u64 = 0x00;

impl Tee {
    fn new(notes: Notes, limit: usize) -> Self {
        Self {
            notes,
            pending: BytesMut::new(),
            done: false,
            limit,
        }
    }

    /// Takes the next chunk of the stream; returns what h3 may read now (everything held so far, the head
    /// possibly rewritten), or `None` while the HEADERS frame is incomplete.
    fn take(&mut self, id: StreamId, chunk: Bytes) -> Option<Bytes> {
        if self.done {
            return Some(chunk);
        }
        // Most heads arrive in one chunk: it is inspected in place, and copied only when split or rewritten.
        let held = if self.pending.is_empty() {
            chunk
        } else {
            self.pending.extend_from_slice(&chunk);
            std::mem::take(&mut self.pending).freeze()
        };
        match self.scan(id, &held) {
            Scan::Incomplete if held.len() <= self.limit => {
                self.pending = BytesMut::from(&held[..]);
                None
            }
            // Too large for h3 anyway, or no HEADERS frame first: h3 judges it as it is.
            Scan::Incomplete | Scan::Pass => {
                self.done = true;
                Some(held)
            }
            Scan::Rewritten(head) => {
                self.done = true;
                Some(head)
            }
        }
    }

    /// What is held when the stream ends before its HEADERS frame is whole.
    fn release(&mut self) -> Option<Bytes> {
        self.done = true;
        (!self.pending.is_empty()).then(|| std::mem::take(&mut self.pending).freeze())
    }

    /// Walks whole frames up to the first HEADERS frame.
    fn scan(&mut self, id: StreamId, input: &[u8]) -> Scan {
        let mut consumed = 0;
        loop {
            let mut frame = &input[consumed..];
            let (Some(kind), Some(length)) = (varint_of(&mut frame), varint_of(&mut frame)) else {
                return Scan::Incomplete;
            };
            let header = input.len() - consumed - frame.len();
            let length = usize::try_from(length).unwrap_or(usize::MAX);
            if kind == DATA {
                // DATA before HEADERS: h3 refuses the stream itself.
                return Scan::Pass;
            }
            if frame.len() < length {
                return Scan::Incomplete;
            }
            if kind == HEADERS {
                let section = &frame[..length];
                if let Err(malformed) = fields::check_request(section) {
                    self.notes.record(id, malformed);
                    return Scan::Pass;
                }
                let Some(stand_in) = fields::websocket_stand_in(section) else {
                    return Scan::Pass;
                };
                self.notes.websocket(id);
                let mut head = BytesMut::with_capacity(input.len() + 8);
                head.extend_from_slice(&input[..consumed]);
                put_varint(&mut head, HEADERS);
                put_varint(&mut head, stand_in.len() as u64);
                head.extend_from_slice(&stand_in);
                head.extend_from_slice(&frame[length..]);
                return Scan::Rewritten(head.freeze());
            }
            // Reserved or unknown frame types before HEADERS are skipped, as h3 does.
            consumed += header + length;
        }
    }
}

/// What the start of a request stream holds so far.
enum Scan {
    /// The first HEADERS frame is not whole yet.
    Incomplete,
    /// h3 may read it as it is.
    Pass,
    /// The head with its `:protocol` stand-in.
    Rewritten(Bytes),
}

/// Appends a QUIC variable-length integer (RFC 9000 16).
fn put_varint(out: &mut BytesMut, value: u64) {
    if value < 1 << 6 {
        out.extend_from_slice(&[value as u8]);
    } else if value < 1 << 14 {
        out.extend_from_slice(&((value as u16) | 0x4000).to_be_bytes());
    } else if value < 1 << 30 {
        out.extend_from_slice(&((value as u32) | 0x8000_0000).to_be_bytes());
    } else {
        out.extend_from_slice(&(value | 0xc000_0000_0000_0000).to_be_bytes());
    }
}

/// A QUIC variable-length integer (RFC 9000 16).
fn varint_of(input: &mut &[u8]) -> Option<u64> {
    let first = *input.first()?;
    let length = 1usize << (first >> 6);
    let bytes = input.get(1..length)?;
    let value = bytes
        .iter()
        .fold(u64::from(first & 0x3f), |value, &byte| (value << 8) | u64::from(byte));
    *input = &input[length..];
    Some(value)
}

/// Closes the connection if a client's unidirectional stream turns out to be a push stream.
fn check_type(type_check: &mut Option<quinn::Connection>, data: &[u8]) {
    if let Some(connection) = type_check.take() {
        if varint_of(&mut &data[..]) == Some(PUSH_STREAM) {
            connection.close(VarInt::from_u32(H3_STREAM_CREATION_ERROR), b"push stream from a client");
        }
    }
}

fn varint(code: u64) -> VarInt {
    VarInt::from_u64(code).unwrap_or(VarInt::from_u32(0x102))
}

fn internal(error: impl std::fmt::Display) -> ConnectionErrorIncoming {
    ConnectionErrorIncoming::InternalError(error.to_string())
}

fn stream_of_connection(connection_error: ConnectionErrorIncoming) -> StreamErrorIncoming {
    StreamErrorIncoming::ConnectionErrorIncoming { connection_error }
}

fn connection_error(error: quinn::ConnectionError) -> ConnectionErrorIncoming {
    match error {
        quinn::ConnectionError::ApplicationClosed(close) => ConnectionErrorIncoming::ApplicationClose {
            error_code: close.error_code.into_inner(),
        },
        quinn::ConnectionError::TimedOut => ConnectionErrorIncoming::Timeout,
        other => ConnectionErrorIncoming::Undefined(Arc::new(other)),
    }
}

fn read_error(error: quinn::ReadError) -> StreamErrorIncoming {
    match error {
        quinn::ReadError::Reset(code) => StreamErrorIncoming::StreamTerminated {
            error_code: code.into_inner(),
        },
        quinn::ReadError::ConnectionLost(error) => stream_of_connection(connection_error(error)),
        other => StreamErrorIncoming::Unknown(Box::new(other)),
    }
}

fn write_error(error: quinn::WriteError) -> StreamErrorIncoming {
    match error {
        quinn::WriteError::Stopped(code) => StreamErrorIncoming::StreamTerminated {
            error_code: code.into_inner(),
        },
        quinn::WriteError::ConnectionLost(error) => stream_of_connection(connection_error(error)),
        other => StreamErrorIncoming::Unknown(Box::new(other)),
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
            assert_eq!(varint_of(&mut input), Some(value));
            assert!(input.is_empty());
        }
        assert_eq!(varint_of(&mut &[0x7b][..]), None);
    }

    /// Notes with stream 0 open, as when it was accepted.
    fn opened() -> Notes {
        let notes = Notes::default();
        notes.open(stream_id(), Box::pin(std::future::pending()), Arc::default());
        notes
    }

    fn stream_id() -> StreamId {
        StreamId::try_from(0u64).unwrap_or_else(|_| unreachable!())
    }

    /// A HEADERS frame around `section`.
    fn headers_frame(section: &[u8]) -> Vec<u8> {
        let mut frame = vec![0x01, u8::try_from(section.len()).unwrap_or(0)];
        frame.extend_from_slice(section);
        frame
    }

    #[test]
    fn the_tee_judges_a_head_split_anywhere() {
        // `:method GET` twice: repeated pseudo-header.
        let frame = headers_frame(&[0x00, 0x00, 0xd1, 0xd7, 0xc1, 0xd1]);
        for split in 0..=frame.len() {
            let notes = opened();
            let mut tee = Tee::new(notes.clone(), 1024);
            let first = tee.take(stream_id(), Bytes::copy_from_slice(&frame[..split]));
            let second = tee.take(stream_id(), Bytes::copy_from_slice(&frame[split..]));
            assert!(tee.done, "split at {split}");
            // Held until whole, then handed on unchanged.
            let given: Vec<u8> = first.into_iter().chain(second).flat_map(|b| b.to_vec()).collect();
            assert_eq!(given, frame, "split at {split}");
            let malformed = notes.claim(stream_id()).and_then(|claim| claim.malformed);
            assert_eq!(malformed, Some("repeated pseudo-header field"), "split at {split}");
        }
    }

    #[test]
    fn the_tee_skips_unknown_frames_and_stops_at_data_or_the_limit() {
        let notes = opened();
        let mut tee = Tee::new(notes.clone(), 1024);
        let mut bytes = vec![0x21, 0x02, 0xaa, 0xbb];
        bytes.extend(headers_frame(&[0x00, 0x00, 0xd1, 0xd7, 0xc1]));
        assert_eq!(
            tee.take(stream_id(), Bytes::from(bytes.clone())).as_deref(),
            Some(&bytes[..])
        );
        assert!(tee.done);
        assert_eq!(notes.claim(stream_id()).and_then(|claim| claim.malformed), None);

        let mut tee = Tee::new(opened(), 1024);
        assert!(tee.take(stream_id(), Bytes::from_static(&[0x00, 0x01, b'x'])).is_some());
        assert!(tee.done);

        let mut tee = Tee::new(opened(), 8);
        let large = Bytes::from_static(&[0x01, 0x40, 0x64, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(tee.take(stream_id(), large.clone()), Some(large));
        assert!(tee.done);
        assert!(tee.pending.is_empty());
    }

    #[test]
    fn a_websocket_connect_reaches_h3_with_its_stand_in_and_is_noted() {
        // CONNECT, https, `/`, then `:protocol: websocket` as a literal line, then DATA that follows at once.
        let mut section = vec![0x00, 0x00, 0xcf, 0xd7, 0xc1, 0x27, 0x02];
        section.extend_from_slice(b":protocol");
        section.push(9);
        section.extend_from_slice(b"websocket");
        let mut bytes = headers_frame(&section);
        bytes.extend_from_slice(&[0x00, 0x02, b'h', b'i']);
        for split in 1..bytes.len() {
            let notes = opened();
            let mut tee = Tee::new(notes.clone(), 1024);
            let mut out = Vec::new();
            for part in [&bytes[..split], &bytes[split..]] {
                if let Some(given) = tee.take(stream_id(), Bytes::copy_from_slice(part)) {
                    out.extend_from_slice(&given);
                }
            }
            let mut expected_section = section[..section.len() - 10].to_vec();
            expected_section.push(12);
            expected_section.extend_from_slice(b"webtransport");
            let mut expected = headers_frame(&expected_section);
            // Whatever came with the head comes after it, untouched.
            if split < headers_frame(&section).len() {
                expected.extend_from_slice(&[0x00, 0x02, b'h', b'i']);
            } else {
                expected.extend_from_slice(&bytes[headers_frame(&section).len()..split]);
                expected.extend_from_slice(&bytes[split..]);
            }
            assert_eq!(out, expected, "split at {split}");
            assert!(
                notes.claim(stream_id()).is_some_and(|claim| claim.websocket),
                "split at {split}"
            );
        }
    }
}
