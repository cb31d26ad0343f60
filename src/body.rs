//! The one body type every listener and the forwarder speak.
//!
//! A body is a hyper `Incoming` (HTTP/1.1, HTTP/2, upstream responses), a channel fed by an HTTP/3 stream
//! reader, a complete buffer (synthetic responses, bodies kept for a retry), any other body boxed (a
//! backend's HTTP/1.1 response read from its connection) or nothing. Around that it may carry:
//! - an [`Observer`], told if the body fails and dropped with it: the in-flight guard that keeps a backend
//!   busy until its response has been delivered and charges it with a failed body, or the flag that marks
//!   a client's upload as failed;
//! - an idle timeout: while the reader waits for the next frame longer than that, the body fails with the
//!   given error (a stalled client upload, a stalled backend response). Time the reader spends not asking
//!   (backpressure from the other side) never counts;
//! - a signal sent once the last frame has been handed out, which starts the response-header timer only
//!   when the request has been sent in full.

use std::future::Future as _;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body as _, Frame, SizeHint};
use tokio::sync::{mpsc, oneshot};
use tokio::time::{Instant, Sleep};

pub use crate::error::BoxError;
use crate::error::ProxyError;
use crate::trace::Finish;

/// Told when a body fails; dropped with the body, whether it was read to the end or not.
pub trait Observer: Send + Sync {
    /// The body failed with `error`.
    fn failed(&self, error: &(dyn std::error::Error + 'static));
}

/// Set once the body it observes has failed, for whoever must tell that failure from others.
#[derive(Debug, Clone, Default)]
pub struct FailureFlag(Arc<AtomicBool>);

impl FailureFlag {
    /// True once the observed body failed.
    pub fn is_set(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

impl Observer for FailureFlag {
    fn failed(&self, _: &(dyn std::error::Error + 'static)) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Any body of bytes, boxed.
type Boxed = Pin<Box<dyn http_body::Body<Data = Bytes, Error = BoxError> + Send + Sync>>;

/// A streaming HTTP body.
pub struct Body {
    kind: Kind,
    observer: Option<Box<dyn Observer>>,
    /// Counts the bytes that pass; records them when the body is dropped.
    meter: Option<Meter>,
    idle: Option<Box<Idle>>,
    /// Told when the last frame has been handed out.
    sent: Option<oneshot::Sender<()>>,
    exact: Option<Exact>,
    /// The request's server span, ended when this (response) body is dropped.
    trace: Option<Finish>,
}

/// A declared length, enforced: more or fewer bytes are an error, and the frame that completes the length
/// is held back until the inner body has ended, so that a reader relaying it never sees a complete message
/// that the client then overruns.
struct Exact {
    remaining: u64,
    /// The data frame that completed the length, waiting for the inner body's end.
    held: Option<Frame<Bytes>>,
    /// Trailers that arrived after a held frame, handed out next.
    queued: Option<Frame<Bytes>>,
}

const LENGTH_MISMATCH: ProxyError = ProxyError::BadRequest("request body does not match its Content-Length");

/// The longest wait for a frame, and what a longer one means.
struct Idle {
    timeout: Duration,
    timer: Pin<Box<Sleep>>,
    /// True while the reader is waiting and the timer runs.
    armed: bool,
    stalled: ProxyError,
}

/// What a channel body's sender sends.
#[derive(Debug)]
pub enum Item {
    Frame(Frame<Bytes>),
    Error(BoxError),
    /// The body is complete.
    End,
}

/// Feeds a channel body; see [`Body::channel`].
#[derive(Debug)]
pub struct BodySender {
    tx: mpsc::Sender<Item>,
}

/// The body's reader is gone.
#[derive(Debug)]
pub struct ReaderGone;

impl BodySender {
    /// Sends a chunk, waiting while the reader is behind.
    pub async fn data(&self, data: Bytes) -> Result<(), ReaderGone> {
        self.tx
            .send(Item::Frame(Frame::data(data)))
            .await
            .map_err(|_| ReaderGone)
    }

    /// Ends the body with trailers.
    pub async fn trailers(self, trailers: http::HeaderMap) {
        if self.tx.send(Item::Frame(Frame::trailers(trailers))).await.is_ok() {
            self.finish().await;
        }
    }

    /// Fails the body: its reader gets `error`.
    pub async fn fail(self, error: impl Into<BoxError>) {
        let _ = self.tx.send(Item::Error(error.into())).await;
    }

    /// Ends the body.
    pub async fn finish(self) {
        let _ = self.tx.send(Item::End).await;
    }

    /// Resolves once the reader is gone.
    pub async fn closed(&self) {
        self.tx.closed().await;
    }
}

/// A size histogram and the bytes seen so far.
struct Meter {
    histogram: metrics::Histogram,
    bytes: u64,
}

impl Drop for Meter {
    fn drop(&mut self) {
        self.histogram.record(self.bytes as f64);
    }
}

enum Kind {
    Empty,
    Full {
        data: Option<Bytes>,
        trailers: Option<HeaderMap>,
    },
    Incoming(hyper::body::Incoming),
    Boxed(Boxed),
    Channel {
        rx: mpsc::Receiver<Item>,
        remaining: Option<u64>,
        /// The sender said the body is complete; without that, a sender that goes away is a failure.
        ended: bool,
    },
}

impl Body {
    fn of(kind: Kind) -> Self {
        Self {
            kind,
            observer: None,
            meter: None,
            idle: None,
            sent: None,
            exact: None,
            trace: None,
        }
    }

    /// No body.
    pub fn empty() -> Self {
        Self::of(Kind::Empty)
    }

    /// A body held in memory.
    pub fn full(data: impl Into<Bytes>) -> Self {
        Self::complete(data.into(), None)
    }

    /// A body held in memory, ending with `trailers`.
    pub fn complete(data: Bytes, trailers: Option<HeaderMap>) -> Self {
        if data.is_empty() && trailers.is_none() {
            return Self::empty();
        }
        Self::of(Kind::Full {
            data: (!data.is_empty()).then_some(data),
            trailers,
        })
    }

    /// A body fed through a channel; `length` is the declared Content-Length, if any. It ends only when
    /// the sender says so ([`BodySender::finish`]): a sender dropped before that fails the body, so a
    /// stream cut off half-way is never passed on as complete.
    pub fn channel(length: Option<u64>) -> (BodySender, Self) {
        // A small channel: the sender waits for the receiver, so memory stays flat for any body size.
        let (tx, rx) = mpsc::channel(4);
        let body = Self::of(Kind::Channel {
            rx,
            remaining: length,
            ended: false,
        });
        (BodySender { tx }, body)
    }

    /// Records the number of bytes that pass through this body in `histogram` when it is dropped.
    pub fn with_meter(mut self, histogram: metrics::Histogram) -> Self {
        self.meter = Some(Meter { histogram, bytes: 0 });
        self
    }

    /// Any other body, boxed.
    pub fn boxed(body: impl http_body::Body<Data = Bytes, Error = BoxError> + Send + Sync + 'static) -> Self {
        Self::of(Kind::Boxed(Box::pin(body)))
    }

    /// Tells `observer` if this body fails, and keeps it for as long as the body exists.
    pub fn with_observer(mut self, observer: impl Observer + 'static) -> Self {
        debug_assert!(self.observer.is_none(), "a body has one observer");
        self.observer = Some(Box::new(observer));
        self
    }

    /// Fails with `stalled` when a wait for the next frame lasts longer than `timeout`.
    pub fn with_idle_timeout(mut self, timeout: Duration, stalled: ProxyError) -> Self {
        if !self.is_end_stream() {
            self.idle = Some(Box::new(Idle {
                timeout,
                timer: Box::pin(tokio::time::sleep(timeout)),
                armed: false,
                stalled,
            }));
        }
        self
    }

    /// A copy of a body held in memory (empty or complete), for sending it again; `None` for a streaming body.
    pub fn try_clone(&self) -> Option<Self> {
        match &self.kind {
            Kind::Empty => Some(Self::empty()),
            Kind::Full { data, trailers } => Some(Self::complete(data.clone().unwrap_or_default(), trailers.clone())),
            _ => None,
        }
    }

    /// Ends the request's server span when this body is dropped (delivered, or abandoned by the client).
    pub fn with_trace(mut self, finish: Finish) -> Self {
        self.trace = Some(finish);
        self
    }

    /// Enforces the body's declared length (its exact size hint), if it has one: see [`Exact`].
    pub fn with_exact_length(mut self) -> Self {
        if let Some(remaining) = self.size_hint().exact().filter(|_| !self.is_end_stream()) {
            self.exact = Some(Exact {
                remaining,
                held: None,
                queued: None,
            });
        }
        self
    }

    /// Sends on `sent` once the whole body has been handed out (at once for an empty body).
    pub fn with_sent_signal(mut self, sent: oneshot::Sender<()>) -> Self {
        if self.is_end_stream() {
            let _ = sent.send(());
        } else {
            self.sent = Some(sent);
        }
        self
    }

    fn poll_checked(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let Some(exact) = &mut self.exact else {
            return self.kind.poll(cx);
        };
        loop {
            if let Some(trailers) = exact.queued.take() {
                return Poll::Ready(Some(Ok(trailers)));
            }
            let frame = match ready!(self.kind.poll(cx)) {
                None if exact.held.is_some() => return Poll::Ready(exact.held.take().map(Ok)),
                None if exact.remaining == 0 => return Poll::Ready(None),
                None => return Poll::Ready(Some(Err(LENGTH_MISMATCH.into()))),
                Some(Err(error)) => return Poll::Ready(Some(Err(error))),
                Some(Ok(frame)) => frame,
            };
            let frame = match frame.into_data() {
                Ok(data) if data.is_empty() => continue,
                Ok(data) => {
                    let length = data.len() as u64;
                    if exact.held.is_some() || length > exact.remaining {
                        return Poll::Ready(Some(Err(LENGTH_MISMATCH.into())));
                    }
                    exact.remaining -= length;
                    if exact.remaining == 0 && !self.kind.is_end_stream() {
                        exact.held = Some(Frame::data(data));
                        continue;
                    }
                    Frame::data(data)
                }
                Err(trailers) => {
                    if exact.remaining > 0 {
                        return Poll::Ready(Some(Err(LENGTH_MISMATCH.into())));
                    }
                    match exact.held.take() {
                        Some(held) => {
                            exact.queued = Some(trailers);
                            held
                        }
                        None => trailers,
                    }
                }
            };
            return Poll::Ready(Some(Ok(frame)));
        }
    }
}

impl Kind {
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self {
            Kind::Empty => Poll::Ready(None),
            Kind::Full { data, trailers } => Poll::Ready(match data.take() {
                Some(data) => Some(Ok(Frame::data(data))),
                None => trailers.take().map(|t| Ok(Frame::trailers(t))),
            }),
            Kind::Incoming(incoming) => Pin::new(incoming).poll_frame(cx).map_err(Into::into),
            Kind::Boxed(body) => body.as_mut().poll_frame(cx),
            Kind::Channel { rx, remaining, ended } => {
                if *ended {
                    return Poll::Ready(None);
                }
                match ready!(rx.poll_recv(cx)) {
                    Some(Item::Frame(frame)) => {
                        if let (Some(left), Some(data)) = (remaining.as_mut(), frame.data_ref()) {
                            *left = left.saturating_sub(data.len() as u64);
                        }
                        Poll::Ready(Some(Ok(frame)))
                    }
                    Some(Item::Error(error)) => {
                        *ended = true;
                        Poll::Ready(Some(Err(error)))
                    }
                    Some(Item::End) => {
                        *ended = true;
                        Poll::Ready(None)
                    }
                    None => {
                        *ended = true;
                        Poll::Ready(Some(Err("the body was cut off before it ended".into())))
                    }
                }
            }
        }
    }
}

impl Idle {
    /// Called when the inner body has nothing yet: runs the timer; `Some` once it has expired.
    fn poll_expired(&mut self, cx: &mut Context<'_>) -> Option<ProxyError> {
        if !self.armed {
            self.armed = true;
            self.timer.as_mut().reset(Instant::now() + self.timeout);
        }
        self.timer.as_mut().poll(cx).is_ready().then(|| self.stalled.clone())
    }
}

impl From<hyper::body::Incoming> for Body {
    fn from(incoming: hyper::body::Incoming) -> Self {
        Self::of(Kind::Incoming(incoming))
    }
}

impl Body {
    fn signal_sent(&mut self) {
        if let Some(sent) = self.sent.take() {
            let _ = sent.send(());
        }
    }
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let mut polled = this.poll_checked(cx);
        if let Some(idle) = this.idle.as_mut() {
            if polled.is_pending() {
                if let Some(stalled) = idle.poll_expired(cx) {
                    polled = Poll::Ready(Some(Err(stalled.into())));
                }
            } else {
                idle.armed = false;
            }
        }
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(meter), Some(data)) = (this.meter.as_mut(), frame.data_ref()) {
                    meter.bytes += data.len() as u64;
                }
                if this.sent.is_some() && this.is_end_stream() {
                    this.signal_sent();
                }
            }
            Poll::Ready(None) => this.signal_sent(),
            Poll::Ready(Some(Err(error))) => {
                if let Some(observer) = &this.observer {
                    observer.failed(error.as_ref());
                }
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        if self
            .exact
            .as_ref()
            .is_some_and(|e| e.held.is_some() || e.queued.is_some())
        {
            return false;
        }
        self.kind.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        match &self.exact {
            Some(exact) => SizeHint::with_exact(
                exact.remaining
                    + exact
                        .held
                        .as_ref()
                        .and_then(Frame::data_ref)
                        .map_or(0, |d| d.len() as u64),
            ),
            None => self.kind.size_hint(),
        }
    }
}

impl Kind {
    fn is_end_stream(&self) -> bool {
        match self {
            Kind::Empty => true,
            Kind::Full { data, trailers } => data.is_none() && trailers.is_none(),
            Kind::Incoming(incoming) => incoming.is_end_stream(),
            Kind::Boxed(body) => body.is_end_stream(),
            Kind::Channel { ended, .. } => *ended,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Kind::Empty => SizeHint::with_exact(0),
            Kind::Full { data, .. } => SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64)),
            Kind::Incoming(incoming) => incoming.size_hint(),
            Kind::Boxed(body) => body.size_hint(),
            Kind::Channel {
                remaining: Some(left), ..
            } => SizeHint::with_exact(*left),
            Kind::Channel { remaining: None, .. } => SizeHint::default(),
        }
    }
}
