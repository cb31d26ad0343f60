//! The OTLP exporter: batches finished spans and sends them to the collector, over gRPC (HTTP/2, the
//! `TraceService/Export` call) or HTTP (a protobuf POST to `/v1/traces`). It runs on the control thread and
//! follows reloads: a changed tracing section gets a new queue and exporter, and the old one flushes and ends.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, UNIX_EPOCH};

use bytes::{BufMut as _, Bytes, BytesMut};
use http::header::{self, HeaderValue};
use http::{Request, StatusCode, Uri};
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{status, ResourceSpans, ScopeSpans, Span, Status};
use prost::Message as _;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::config::{OtlpProtocol, Tracing};
use crate::metrics;

use super::{SpanData, Tracer, Value};

/// Spans sent in one export call at most.
const MAX_BATCH: usize = 512;
/// How long a partial batch waits for more spans.
const BATCH_DELAY: Duration = Duration::from_secs(1);

/// Keeps the proxy's tracer in line with its configuration: started with it, changed by a reload the
/// moment the new configuration is installed, and flushed at shutdown.
#[derive(Debug, Default)]
pub struct Exporters {
    state: Mutex<ExporterState>,
}

#[derive(Debug, Default)]
struct ExporterState {
    current: Option<Tracing>,
    /// Every exporter started: each ends once its tracer is gone and its last batch is sent.
    running: Vec<JoinHandle<()>>,
}

impl Exporters {
    /// The tracer `config` asks for (or none) when it differs from the current one, its exporter started;
    /// `None` when nothing changed. Must run on a tokio runtime: a new exporter is a task.
    pub fn apply(&self, config: Option<&Tracing>) -> Option<Option<Arc<Tracer>>> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if state.current.as_ref() == config {
            return None;
        }
        let tracer = config.map(|config| {
            let (tracer, spans) = super::tracer(config);
            state.running.push(tokio::spawn(export(spans, config.clone())));
            tracing::info!(endpoint = %config.endpoint, sampling_ratio = config.sampling_ratio, "tracing on");
            tracer
        });
        if tracer.is_none() {
            tracing::info!("tracing off");
        }
        state.running.retain(|task| !task.is_finished());
        state.current = config.cloned();
        Some(tracer)
    }

    /// Waits (at most `timeout`) for the exporters to send what they hold, once the tracer is gone: the
    /// spans of the last requests, drained at shutdown, go out too.
    pub async fn flush(&self, timeout: Duration) {
        let running = std::mem::take(&mut self.state.lock().unwrap_or_else(PoisonError::into_inner).running);
        let all = futures_util::future::join_all(running);
        if tokio::time::timeout(timeout, all).await.is_err() {
            tracing::warn!("span export did not finish within {timeout:?}; the last spans are lost");
        }
    }
}

/// Sends batches until every sender is gone (a reload replaced the tracer, or the proxy stops).
async fn export(mut spans: mpsc::Receiver<SpanData>, config: Tracing) {
    let client = Collector::new(&config);
    while let Some(first) = spans.recv().await {
        let mut batch = vec![first];
        let deadline = tokio::time::sleep(BATCH_DELAY);
        tokio::pin!(deadline);
        while batch.len() < MAX_BATCH {
            tokio::select! {
                span = spans.recv() => match span {
                    Some(span) => batch.push(span),
                    None => break,
                },
                () = &mut deadline => break,
            }
        }
        let count = batch.len() as u64;
        let request = encode(&config, batch);
        match tokio::time::timeout(config.export_timeout, client.send(request)).await {
            Ok(Ok(())) => metrics::record_spans_exported(count),
            Ok(Err(error)) => {
                tracing::debug!(endpoint = %config.endpoint, "span export failed: {error}");
                metrics::record_span_export_failure(count);
            }
            Err(_) => {
                tracing::debug!(endpoint = %config.endpoint, "span export timed out");
                metrics::record_span_export_failure(count);
            }
        }
    }
}

/// The collector's endpoint and the connection to it.
struct Collector {
    client: Client<HttpConnector, Full<Bytes>>,
    uri: Uri,
    protocol: OtlpProtocol,
}

impl Collector {
    fn new(config: &Tracing) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(config.export_timeout));
        let mut builder = Client::builder(TokioExecutor::new());
        builder.http2_only(config.protocol == OtlpProtocol::Grpc);
        let path = match config.protocol {
            OtlpProtocol::Grpc => "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
            OtlpProtocol::Http => "/v1/traces",
        };
        let base = config.endpoint.path().trim_end_matches('/');
        let mut parts = config.endpoint.clone().into_parts();
        parts.path_and_query = format!("{base}{path}").parse().ok();
        Self {
            client: builder.build(connector),
            uri: Uri::from_parts(parts).unwrap_or_else(|_| config.endpoint.clone()),
            protocol: config.protocol,
        }
    }

    async fn send(&self, request: ExportTraceServiceRequest) -> Result<(), String> {
        let message = request.encode_to_vec();
        let (body, content_type) = match self.protocol {
            // gRPC frames the message: no compression flag, then its length.
            OtlpProtocol::Grpc => {
                let mut framed = BytesMut::with_capacity(message.len() + 5);
                framed.put_u8(0);
                framed.put_u32(u32::try_from(message.len()).map_err(|_| "batch too large".to_owned())?);
                framed.put_slice(&message);
                (framed.freeze(), "application/grpc")
            }
            OtlpProtocol::Http => (Bytes::from(message), "application/x-protobuf"),
        };
        let mut http_request = Request::post(self.uri.clone())
            .body(Full::new(body))
            .map_err(|e| e.to_string())?;
        let headers = http_request.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        if self.protocol == OtlpProtocol::Grpc {
            headers.insert(header::TE, HeaderValue::from_static("trailers"));
        }
        let response = self.client.request(http_request).await.map_err(|e| e.to_string())?;
        let status = response.status();
        let grpc_status_in_head = response.headers().get("grpc-status").cloned();
        let collected = response.into_body().collect().await.map_err(|e| e.to_string())?;
        if status != StatusCode::OK {
            return Err(format!("collector answered {status}"));
        }
        if self.protocol == OtlpProtocol::Grpc {
            let grpc_status =
                grpc_status_in_head.or_else(|| collected.trailers().and_then(|t| t.get("grpc-status").cloned()));
            match grpc_status.as_ref().map(HeaderValue::as_bytes) {
                Some(b"0") => {}
                Some(other) => return Err(format!("grpc-status {}", String::from_utf8_lossy(other))),
                None => return Err("no grpc-status in the answer".to_owned()),
            }
        }
        Ok(())
    }
}

/// One OTLP request: the proxy as the resource, its spans under one instrumentation scope.
fn encode(config: &Tracing, spans: Vec<SpanData>) -> ExportTraceServiceRequest {
    let mut resource = vec![
        attribute("service.name", Value::from(config.service_name.as_str())),
        attribute("service.version", Value::from(env!("CARGO_PKG_VERSION"))),
    ];
    resource.extend(config.resource_attributes.iter().map(|(k, v)| KeyValue {
        key: k.clone(),
        value: Some(any(Value::from(v.as_str()))),
        ..KeyValue::default()
    }));
    let spans = spans.into_iter().map(span).collect();
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: resource,
                ..Resource::default()
            }),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: "quic-proxy".to_owned(),
                    version: env!("CARGO_PKG_VERSION").to_owned(),
                    ..InstrumentationScope::default()
                }),
                spans,
                ..ScopeSpans::default()
            }],
            ..ResourceSpans::default()
        }],
    }
}

fn span(data: SpanData) -> Span {
    let nanos = |at: std::time::SystemTime| {
        at.duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
    };
    let status = match &data.error {
        Some(message) => Status {
            code: status::StatusCode::Error as i32,
            message: message.clone(),
        },
        None => Status::default(),
    };
    Span {
        trace_id: data.trace_id.to_vec(),
        span_id: data.span_id.to_vec(),
        parent_span_id: data.parent.map(|p| p.to_vec()).unwrap_or_default(),
        trace_state: data.trace_state.unwrap_or_default(),
        name: data.name,
        kind: data.kind as i32,
        start_time_unix_nano: nanos(data.start),
        end_time_unix_nano: nanos(data.end),
        attributes: data.attributes.into_iter().map(|(k, v)| attribute(k, v)).collect(),
        status: Some(status),
        ..Span::default()
    }
}

fn attribute(key: &str, value: Value) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(any(value)),
        ..KeyValue::default()
    }
}

fn any(value: Value) -> AnyValue {
    AnyValue {
        value: Some(match value {
            Value::Text(text) => any_value::Value::StringValue(text),
            Value::Int(n) => any_value::Value::IntValue(n),
        }),
    }
}
