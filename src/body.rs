//! The one body type every listener and the forwarder speak.
//!
//! A body is a hyper `Incoming` (HTTP/1.1, HTTP/2, upstream responses), a channel fed by an HTTP/3 stream
//! reader, a complete buffer (synthetic responses) or nothing. It may carry an in-flight guard, so that a
//! backend counts as busy until the response body has been delivered or dropped.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use tokio::sync::mpsc;

use crate::balancer::InFlight;

/// Boxed error carried by body frames.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A streaming HTTP body.
pub struct Body {
    kind: Kind,
    /// Released when the body is dropped, whether it was read to the end or not.
    guard: Option<InFlight>,
    /// Counts the bytes that pass; records them when the body is dropped.
    meter: Option<Meter>,
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
    Full(Option<Bytes>),
    Incoming(hyper::body::Incoming),
    Channel {
        rx: mpsc::Receiver<Result<Frame<Bytes>, BoxError>>,
        remaining: Option<u64>,
    },
}

impl Body {
    /// No body.
    pub fn empty() -> Self {
        Self {
            kind: Kind::Empty,
            guard: None,
            meter: None,
        }
    }

    /// A body held in memory.
    pub fn full(data: impl Into<Bytes>) -> Self {
        let data = data.into();
        let kind = if data.is_empty() {
            Kind::Empty
        } else {
            Kind::Full(Some(data))
        };
        Self {
            kind,
            guard: None,
            meter: None,
        }
    }

    /// A body fed through a channel; `length` is the declared Content-Length, if any.
    pub fn channel(length: Option<u64>) -> (mpsc::Sender<Result<Frame<Bytes>, BoxError>>, Self) {
        // A small channel: the sender waits for the receiver, so memory stays flat for any body size.
        let (tx, rx) = mpsc::channel(4);
        (
            tx,
            Self {
                kind: Kind::Channel { rx, remaining: length },
                guard: None,
                meter: None,
            },
        )
    }

    /// Records the number of bytes that pass through this body in `histogram` when it is dropped.
    pub fn with_meter(mut self, histogram: metrics::Histogram) -> Self {
        self.meter = Some(Meter { histogram, bytes: 0 });
        self
    }

    /// Keeps `guard` alive for as long as this body exists.
    pub fn with_guard(mut self, guard: InFlight) -> Self {
        self.guard = Some(guard);
        self
    }
}

impl From<hyper::body::Incoming> for Body {
    fn from(incoming: hyper::body::Incoming) -> Self {
        Self {
            kind: Kind::Incoming(incoming),
            guard: None,
            meter: None,
        }
    }
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let polled = match &mut this.kind {
            Kind::Empty => Poll::Ready(None),
            Kind::Full(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            Kind::Incoming(incoming) => Pin::new(incoming).poll_frame(cx).map_err(Into::into),
            Kind::Channel { rx, remaining } => {
                let polled = rx.poll_recv(cx);
                if let (Poll::Ready(Some(Ok(frame))), Some(left)) = (&polled, remaining.as_mut()) {
                    if let Some(data) = frame.data_ref() {
                        *left = left.saturating_sub(data.len() as u64);
                    }
                }
                polled
            }
        };
        if let (Some(meter), Poll::Ready(Some(Ok(frame)))) = (this.meter.as_mut(), &polled) {
            if let Some(data) = frame.data_ref() {
                meter.bytes += data.len() as u64;
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Empty => true,
            Kind::Full(data) => data.is_none(),
            Kind::Incoming(incoming) => incoming.is_end_stream(),
            Kind::Channel { .. } => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Empty => SizeHint::with_exact(0),
            Kind::Full(data) => SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64)),
            Kind::Incoming(incoming) => incoming.size_hint(),
            Kind::Channel {
                remaining: Some(left), ..
            } => SizeHint::with_exact(*left),
            Kind::Channel { remaining: None, .. } => SizeHint::default(),
        }
    }
}
