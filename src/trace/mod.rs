//! Distributed tracing: a server span per request and a client span per upstream attempt, continued from
//! the client's W3C `traceparent` and passed on to the backend, exported over OTLP.
//!
//! The request path never waits for tracing: finished spans go into a bounded queue (`try_send`), and a
//! span that does not fit is dropped and counted (`tracing_spans_dropped_total`). The exporter, on the
//! control thread, sends batches and drops (and counts) a batch the collector does not take, so an
//! unreachable collector costs a counter and nothing else. With tracing off the request path pays one
//! atomic load.

mod context;
mod export;

use std::sync::Arc;
use std::time::SystemTime;

use http::header::{HeaderMap, HeaderName, HeaderValue};
use tokio::sync::mpsc;

pub use context::{hex, SpanId, TraceId, TraceParent};
pub use export::Exporters;

use crate::config::Tracing;
use crate::metrics;

pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
pub const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// Where finished spans go, and how new traces are sampled.
#[derive(Debug)]
pub struct Tracer {
    sampling_ratio: f64,
    queue: mpsc::Sender<SpanData>,
}

impl Tracer {
    fn submit(&self, span: SpanData) {
        if self.queue.try_send(span).is_err() {
            metrics::record_spans_dropped(1);
        }
    }
}

/// A span's kind, as OTLP numbers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpanKind {
    Server = 2,
    Client = 3,
}

/// An attribute value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Text(String),
    Int(i64),
}

impl From<&str> for Value {
    fn from(text: &str) -> Self {
        Self::Text(text.to_owned())
    }
}

impl From<String> for Value {
    fn from(text: String) -> Self {
        Self::Text(text)
    }
}

impl From<i64> for Value {
    fn from(n: i64) -> Self {
        Self::Int(n)
    }
}

/// A finished span, waiting for export.
#[derive(Debug, Clone)]
pub struct SpanData {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    pub parent: Option<SpanId>,
    pub trace_state: Option<String>,
    pub name: String,
    pub kind: SpanKind,
    pub start: SystemTime,
    pub end: SystemTime,
    pub attributes: Vec<(&'static str, Value)>,
    /// Set when the span failed.
    pub error: Option<String>,
}

/// The trace one request takes through the proxy: its server span, and the parent of each upstream attempt.
#[derive(Debug)]
pub struct RequestTrace {
    tracer: Arc<Tracer>,
    trace_id: TraceId,
    span_id: SpanId,
    parent: Option<SpanId>,
    trace_state: Option<String>,
    sampled: bool,
    start: SystemTime,
}

/// One upstream attempt's span, from its start.
#[derive(Debug)]
pub struct Attempt {
    span_id: SpanId,
    start: SystemTime,
}

impl RequestTrace {
    /// Continues the trace the client's `traceparent` names (following its sampled flag), or starts one
    /// sampled at the configured ratio.
    pub fn begin(tracer: Arc<Tracer>, headers: &HeaderMap) -> Self {
        let parent = headers.get(TRACEPARENT).and_then(TraceParent::parse);
        let sampled = match parent {
            Some(parent) => parent.sampled,
            None => fastrand::f64() < tracer.sampling_ratio,
        };
        let trace_state = parent
            .and_then(|_| headers.get(TRACESTATE))
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        Self {
            trace_id: parent.map_or_else(random_trace_id, |p| p.trace_id),
            span_id: random_span_id(),
            parent: parent.map(|p| p.parent_id),
            trace_state,
            sampled,
            tracer,
            start: SystemTime::now(),
        }
    }

    /// The trace id in hex, for the access log.
    pub fn trace_id(&self) -> String {
        hex(&self.trace_id)
    }

    /// Starts an upstream attempt and sets the `traceparent` (and `tracestate`) the backend receives.
    pub fn attempt(&self, upstream_headers: &mut HeaderMap) -> Attempt {
        let attempt = Attempt {
            span_id: random_span_id(),
            start: SystemTime::now(),
        };
        upstream_headers.insert(
            TRACEPARENT,
            TraceParent::header(&self.trace_id, &attempt.span_id, self.sampled),
        );
        match self.trace_state.as_deref().and_then(|s| HeaderValue::from_str(s).ok()) {
            Some(state) => upstream_headers.insert(TRACESTATE, state),
            None => upstream_headers.remove(TRACESTATE),
        };
        attempt
    }

    /// Ends an upstream attempt: its backend, retry number and outcome.
    pub fn end_attempt(&self, attempt: Attempt, attributes: Vec<(&'static str, Value)>, error: Option<String>) {
        if !self.sampled {
            return;
        }
        self.tracer.submit(SpanData {
            trace_id: self.trace_id,
            span_id: attempt.span_id,
            parent: Some(self.span_id),
            trace_state: self.trace_state.clone(),
            name: "upstream attempt".to_owned(),
            kind: SpanKind::Client,
            start: attempt.start,
            end: SystemTime::now(),
            attributes,
            error,
        });
    }

    /// The request's server span, ended (and submitted) when the returned value is dropped: once the
    /// response body has been delivered or abandoned.
    pub fn finish(self, name: String, attributes: Vec<(&'static str, Value)>, error: Option<String>) -> Finish {
        let span = self.sampled.then(|| SpanData {
            trace_id: self.trace_id,
            span_id: self.span_id,
            parent: self.parent,
            trace_state: self.trace_state.clone(),
            name,
            kind: SpanKind::Server,
            start: self.start,
            end: self.start,
            attributes,
            error,
        });
        Finish {
            tracer: self.tracer,
            span,
        }
    }
}

/// Submits a server span when dropped.
#[derive(Debug)]
pub struct Finish {
    tracer: Arc<Tracer>,
    span: Option<SpanData>,
}

impl Drop for Finish {
    fn drop(&mut self) {
        if let Some(mut span) = self.span.take() {
            span.end = SystemTime::now();
            self.tracer.submit(span);
        }
    }
}

fn random_trace_id() -> TraceId {
    loop {
        let id = fastrand::u128(..).to_be_bytes();
        if id != [0; 16] {
            return id;
        }
    }
}

fn random_span_id() -> SpanId {
    fastrand::u64(1..).to_be_bytes()
}

/// A tracer for `config` and the receiving end of its queue, for the exporter.
fn tracer(config: &Tracing) -> (Arc<Tracer>, mpsc::Receiver<SpanData>) {
    let (queue, spans) = mpsc::channel(config.queue_size);
    let tracer = Tracer {
        sampling_ratio: config.sampling_ratio,
        queue,
    };
    (Arc::new(tracer), spans)
}
