//! The routing core's outer layer: one request in, one response out, for every listener. It measures,
//! writes one access-log line, records the request's metrics and server span, and turns a `ProxyError`
//! into a response (`answer.rs`); the inner layer (`forward.rs`) routes and forwards, and just uses `?`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use http::header::{HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri};

use super::answer::{error_response, grpc_error_response, is_grpc};
use super::checks::request_host;
use super::metrics::RequestMetrics;
use crate::balancer::Backend;
use crate::body::Body;
use crate::error::{Origin, ProxyError};
use crate::protocol::Protocol;
use crate::routing::Upstream;
use crate::runtime::Shared;
use crate::trace::{self, Finish, RequestTrace};

/// The client side of a request, as the listener saw it.
#[derive(Debug, Clone, Copy)]
pub struct ClientInfo {
    pub peer: SocketAddr,
    /// The request arrived over TLS (HTTPS or QUIC).
    pub tls: bool,
}

/// Routing, balancing and forwarding, shared by every listener.
#[derive(Debug)]
pub struct Core {
    pub(super) shared: Arc<Shared>,
    metrics: RequestMetrics,
}

/// What the access log, metrics and trace learn while a request is proxied.
#[derive(Default)]
pub(super) struct Outcome {
    pub upstream: Option<Arc<Upstream>>,
    pub route: Option<Arc<str>>,
    pub backend: Option<Arc<Backend>>,
}

impl Core {
    /// The core over the shared state.
    pub fn new(shared: Arc<Shared>) -> Self {
        Self {
            shared,
            metrics: RequestMetrics::default(),
        }
    }

    /// The shared state: configuration snapshot, readiness, certificates.
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Proxies one request; never fails: errors become short plain-text responses (or gRPC statuses).
    pub async fn handle(&self, request: Request<Body>, client: ClientInfo) -> Response<Body> {
        let started = Instant::now();
        let method = request.method().clone();
        let protocol = Protocol::of(request.version());
        // A Uri clone shares its bytes: the access log costs no copy of the path.
        let uri = request.uri().clone();
        let in_flight = self.metrics.in_flight(protocol);
        let trace = self
            .shared
            .tracer()
            .map(|tracer| RequestTrace::begin(tracer, request.headers()));
        let host = trace.is_some().then(|| request_host(&request)).flatten();
        let grpc = is_grpc(&request);
        let mut request = request.map(|body| body.with_meter(self.metrics.request_size(protocol)));
        let request_id = self.request_id(&mut request, client);
        let mut outcome = Outcome::default();
        let mut failure = None;
        let id = request_id
            .as_ref()
            .and_then(|(_, value)| value.to_str().ok())
            .unwrap_or_default();
        let response = match self.proxy(request, client, id, trace.as_ref(), &mut outcome).await {
            Ok(response) => response,
            Err(error) => {
                if error.origin() != Origin::Client {
                    tracing::warn!(
                        upstream = outcome.upstream.as_ref().map(|u| u.name.as_str()),
                        backend = outcome.backend.as_ref().map(|b| b.name.as_str()),
                        "{error}"
                    );
                }
                let response = if grpc {
                    grpc_error_response(&error)
                } else {
                    error_response(&error, protocol)
                };
                failure = Some(error);
                response
            }
        };
        drop(in_flight);
        let elapsed = started.elapsed();
        // A gRPC client's error is HTTP 200 on the wire; logs and metrics count it by what went wrong.
        let status = failure.as_ref().map_or(response.status(), ProxyError::status);
        tracing::info!(
            target: "access",
            method = %method,
            path = %uri.path(),
            status = status.as_u16(),
            upstream = outcome.upstream.as_ref().map_or("-", |u| u.name.as_str()),
            backend = outcome.backend.as_ref().map_or("-", |b| b.name.as_str()),
            duration_ms = elapsed.as_secs_f64() * 1000.0,
            protocol = protocol.label(),
            client = %client.peer.ip(),
            trace_id = trace.as_ref().map(RequestTrace::trace_id),
            request_id = id,
        );
        let answered_by = outcome.backend.as_ref().map(|b| &b.metrics);
        self.metrics
            .record_request(&method, status, answered_by, protocol, elapsed);
        let served = Served {
            request_id: id,
            method: &method,
            uri: &uri,
            host: host.as_deref(),
            protocol,
            client,
            status,
            failure,
        };
        let finish = trace.map(|trace| served.finish(trace, &outcome));
        let mut response = response;
        if let Some((name, value)) = request_id {
            response.headers_mut().insert(name, value);
        }
        response.map(|body| {
            let body = body.with_meter(self.metrics.response_size(protocol));
            match finish {
                Some(finish) => body.with_trace(finish),
                None => body,
            }
        })
    }
}

impl Core {
    /// The request's ID: the one a trusted proxy sent in `server.request_id_header` (if it is a short
    /// printable token), or a new random one; set on the request so the backend gets it. `None` when
    /// request IDs are off.
    fn request_id(&self, request: &mut Request<Body>, client: ClientInfo) -> Option<(HeaderName, HeaderValue)> {
        let snapshot = self.shared.snapshot();
        let server = &snapshot.config.server;
        if !server.request_id {
            return None;
        }
        let name = server.request_id_header.clone();
        let trusted = server.trusted_proxies.iter().any(|net| net.contains(&client.peer.ip()));
        let sent = request.headers().get(&name).filter(|value| {
            trusted && (1..=128).contains(&value.len()) && value.as_bytes().iter().all(u8::is_ascii_graphic)
        });
        let value = match sent {
            Some(value) => value.clone(),
            None => {
                let value = HeaderValue::from_bytes(&random_id()).ok()?;
                request.headers_mut().insert(name.clone(), value.clone());
                value
            }
        };
        Some((name, value))
    }
}

/// 128 random bits as 32 lowercase hex digits.
fn random_id() -> [u8; 32] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let bits = fastrand::u128(..);
    let mut id = [0u8; 32];
    for (i, digit) in id.iter_mut().enumerate() {
        *digit = HEX[(bits >> (124 - 4 * i) & 0xf) as usize];
    }
    id
}

/// What a request came to, for its server span.
struct Served<'a> {
    request_id: &'a str,
    method: &'a Method,
    uri: &'a Uri,
    host: Option<&'a str>,
    protocol: Protocol,
    client: ClientInfo,
    status: StatusCode,
    failure: Option<ProxyError>,
}

impl Served<'_> {
    /// The request's server span with the OpenTelemetry HTTP attributes, ended when the response body is.
    fn finish(self, trace: RequestTrace, outcome: &Outcome) -> Finish {
        let route = outcome.route.as_deref();
        let name = match route {
            Some(route) => format!("{} {route}", self.method),
            None => self.method.to_string(),
        };
        let mut attributes: Vec<(&'static str, trace::Value)> = vec![
            ("http.request.method", self.method.as_str().into()),
            ("http.response.status_code", i64::from(self.status.as_u16()).into()),
            ("network.protocol.name", "http".into()),
            ("network.protocol.version", self.protocol.version_number().into()),
            ("client.address", self.client.peer.ip().to_string().into()),
            ("url.path", self.uri.path().into()),
        ];
        if !self.request_id.is_empty() {
            attributes.push(("quic_proxy.request_id", self.request_id.into()));
        }
        if let Some(route) = route {
            attributes.push(("http.route", route.into()));
        }
        if let Some(host) = self.host.and_then(|h| h.parse::<http::uri::Authority>().ok()) {
            attributes.push(("server.address", host.host().into()));
            if let Some(port) = host.port_u16() {
                attributes.push(("server.port", i64::from(port).into()));
            }
        }
        if let Some(upstream) = &outcome.upstream {
            attributes.push(("quic_proxy.upstream", upstream.name.as_str().into()));
        }
        let status = self.status;
        let error = self
            .failure
            .filter(|e| e.origin() != Origin::Client || status.is_server_error())
            .map(|e| e.to_string())
            .or_else(|| status.is_server_error().then(|| status.to_string()));
        trace.finish(name, attributes, error)
    }
}
