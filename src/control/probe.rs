//! Active checks: each backend of an upstream with `health_check.enabled` is probed on its own schedule,
//! with jitter, over the prober's own connections (never the request pool).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt as _, Empty, Limited};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::balancer::Backend;
use crate::body::Body;
use crate::config::{CheckKind, HealthCheckConfig, Timeouts};
use crate::runtime::{Shared, Shutdown};
use crate::upstream::{Address, Answer};

/// Probe response bodies are read up to this size (to match `expect_body` or to keep the connection).
const MAX_PROBE_BODY: usize = 64 * 1024;

/// The probe client, shared by every backend's probe task (its own connections, never the request pool).
#[derive(Debug, Clone)]
pub struct Prober {
    client: Client<HttpConnector, Empty<Bytes>>,
}

impl Default for Prober {
    fn default() -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(1)
            .build(connector);
        Self { client }
    }
}

/// A running probe task: the backend it checks, with which settings, and how to stop it.
struct Probing {
    backend: Arc<Backend>,
    config: Arc<HealthCheckConfig>,
    stop: CancellationToken,
}

impl Prober {
    /// Probes the backends of every upstream with checks enabled until shutdown, following reloads: a
    /// backend that is removed or whose upstream's check settings change gets its task stopped (and a new
    /// one with the new settings). The first snapshot's backends hold readiness until checked once.
    pub async fn run(self, shared: Arc<Shared>, shutdown: Shutdown) {
        let mut changes = shared.subscribe();
        let mut running: Vec<Probing> = Vec::new();
        let mut first = true;
        loop {
            let snapshot = Arc::clone(&changes.borrow_and_update());
            let wanted: Vec<(&Arc<Backend>, &Arc<HealthCheckConfig>)> = snapshot
                .upstreams()
                .iter()
                .filter(|u| u.health_check.enabled)
                .flat_map(|u| u.backends.iter().map(move |b| (b, &u.health_check)))
                .collect();
            running.retain(|probing| {
                let keep = wanted
                    .iter()
                    .any(|(b, c)| Arc::ptr_eq(b, &probing.backend) && **c == probing.config);
                if !keep {
                    probing.stop.cancel();
                }
                keep
            });
            for (backend, config) in wanted {
                if running.iter().any(|p| Arc::ptr_eq(&p.backend, backend)) {
                    continue;
                }
                let stop = CancellationToken::new();
                let readiness = first.then(|| Arc::clone(&shared));
                if let Some(shared) = &readiness {
                    shared.readiness().first_probe_pending();
                }
                tokio::spawn(
                    self.clone()
                        .probe_loop(Arc::clone(backend), Arc::clone(config), stop.clone(), readiness),
                );
                running.push(Probing {
                    backend: Arc::clone(backend),
                    config: Arc::clone(config),
                    stop,
                });
            }
            first = false;
            tokio::select! {
                () = shutdown.begun() => break,
                changed = changes.changed() => if changed.is_err() { break },
            }
        }
        for probing in running {
            probing.stop.cancel();
        }
    }

    async fn probe_loop(
        self,
        backend: Arc<Backend>,
        config: Arc<HealthCheckConfig>,
        stop: CancellationToken,
        mut readiness: Option<Arc<Shared>>,
    ) {
        // The first round is spread over up to a second, later ones by ±10% of the interval, so that many
        // backends are never probed in lock-step.
        let mut delay = config.interval.min(Duration::from_secs(1)).mul_f64(fastrand::f64());
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                () = tokio::time::sleep(delay) => {}
            }
            tokio::select! {
                () = stop.cancelled() => break,
                () = self.probe_once(&backend, &config) => {}
            }
            if let Some(shared) = readiness.take() {
                shared.readiness().first_probe_done();
            }
            delay = config.interval.mul_f64(0.9 + 0.2 * fastrand::f64());
        }
        // Stopped before its first check (removed by a reload): it no longer holds readiness back.
        if let Some(shared) = readiness {
            shared.readiness().first_probe_done();
        }
    }

    /// Runs one probe and records it.
    pub async fn probe_once(&self, backend: &Arc<Backend>, config: &HealthCheckConfig) {
        let started = Instant::now();
        let outcome = match tokio::time::timeout(config.timeout, self.probe(backend, config)).await {
            Ok(outcome) => outcome,
            Err(_) => Err(format!("timed out after {:?}", config.timeout)),
        };
        backend.metrics.record_check(outcome.is_ok());
        if let Some(transition) = backend.health.record_probe(outcome, started.elapsed()) {
            backend.announce(transition);
        }
    }

    async fn probe(&self, backend: &Backend, config: &HealthCheckConfig) -> Result<(), String> {
        let target = probe_uri(backend, config)?;
        match config.kind {
            CheckKind::Tcp => {
                // An endpoint found by DNS is probed at its own address, never through the name again.
                let connected = match (backend.health_url(), backend.transport.address()) {
                    (None, Address::Resolved(address)) => TcpStream::connect(*address).await,
                    _ => {
                        let host = target
                            .host()
                            .unwrap_or_default()
                            .trim_start_matches('[')
                            .trim_end_matches(']');
                        TcpStream::connect((host, target.port_u16().unwrap_or(80))).await
                    }
                };
                connected.map(drop).map_err(|e| connect_cause(&e))
            }
            CheckKind::Http => {
                let (status, body) = match backend.health_url() {
                    // Elsewhere than the backend itself: a plain HTTP request of the prober's own.
                    Some(_) => self.get_elsewhere(backend, target).await?,
                    // The backend itself: the way requests reach it (TLS, HTTP/2 included).
                    None => send_to_backend(backend, target, config, Method::GET, Body::empty()).await?,
                };
                let status = status.as_u16();
                if !config.expected_statuses.iter().any(|range| range.contains(status)) {
                    return Err(format!("status {status}"));
                }
                match (&config.expect_body, body) {
                    (Some(expected), Ok(body)) if !String::from_utf8_lossy(&body).contains(expected.as_str()) => {
                        Err(format!("body does not contain {expected:?}"))
                    }
                    (Some(_), Err(e)) => Err(format!("body unreadable: {e}")),
                    _ => Ok(()),
                }
            }
            CheckKind::Grpc => grpc_check(backend, config).await,
        }
    }

    async fn get_elsewhere(
        &self,
        backend: &Backend,
        target: Uri,
    ) -> Result<(StatusCode, Result<Bytes, String>), String> {
        let mut request = Request::new(Empty::new());
        *request.uri_mut() = target;
        let headers = request.headers_mut();
        if let Ok(host) = HeaderValue::from_str(backend.authority.as_str()) {
            headers.insert(header::HOST, host);
        }
        headers.insert(header::USER_AGENT, HeaderValue::from_static("quic-proxy-health"));
        let response = self.client.request(request).await.map_err(|e| request_cause(&e))?;
        let status = response.status();
        let body = Limited::new(response.into_body(), MAX_PROBE_BODY)
            .collect()
            .await
            .map(|b| b.to_bytes())
            .map_err(|e| e.to_string());
        Ok((status, body))
    }
}

/// Sends a probe through the backend's own transport (on the control thread's connections, never a
/// worker's) and reads up to [`MAX_PROBE_BODY`] of the answer.
async fn send_to_backend(
    backend: &Backend,
    target: Uri,
    config: &HealthCheckConfig,
    method: Method,
    body: Body,
) -> Result<(StatusCode, Result<Bytes, String>), String> {
    let mut request = Request::new(body);
    *request.method_mut() = method;
    *request.uri_mut() = target;
    let headers = request.headers_mut();
    if let Ok(host) = HeaderValue::from_str(backend.authority.as_str()) {
        headers.insert(header::HOST, host);
    }
    headers.insert(header::USER_AGENT, HeaderValue::from_static("quic-proxy-health"));
    let answer = backend
        .transport
        .send(&backend.name, request, &probe_timeouts(config))
        .await
        .result;
    let response = match answer.map_err(|e| e.cause())? {
        Answer::Response(response) => response,
        Answer::Upgraded(..) => return Err("the backend switched protocols".to_owned()),
    };
    let status = response.status();
    let body = Limited::new(response.into_body(), MAX_PROBE_BODY)
        .collect()
        .await
        .map(|c| c.to_bytes())
        .map_err(|e| e.to_string());
    Ok((status, body))
}

/// The transport's deadlines for a probe. The probe's own deadline (`probe_once`) is what ends a slow probe,
/// with one message whatever stage it reached; these are only a backstop, so that the two never race.
fn probe_timeouts(config: &HealthCheckConfig) -> Timeouts {
    let backstop = config.timeout.saturating_mul(2);
    Timeouts {
        connect: backstop,
        response_header: backstop,
        pool_idle: config.interval.saturating_mul(2),
        response_body: backstop,
        grpc_deadline_max: Duration::ZERO,
    }
}

/// `grpc.health.v1.Health/Check` (https://github.com/grpc/grpc/blob/master/doc/health-checking.md): healthy
/// when the answer is SERVING.
async fn grpc_check(backend: &Backend, config: &HealthCheckConfig) -> Result<(), String> {
    // HealthCheckRequest { string service = 1; }, in a gRPC frame (no compression, then the length).
    let service = config.grpc_service.as_bytes();
    let mut message = Vec::with_capacity(service.len() + 3);
    if !service.is_empty() {
        message.push(0x0a);
        encode_varint(service.len() as u64, &mut message);
        message.extend_from_slice(service);
    }
    let mut frame = Vec::with_capacity(message.len() + 5);
    frame.push(0);
    frame.extend_from_slice(&u32::try_from(message.len()).unwrap_or(u32::MAX).to_be_bytes());
    frame.extend_from_slice(&message);
    let target = Uri::builder()
        .scheme(backend.scheme.clone())
        .authority(backend.authority.clone())
        .path_and_query("/grpc.health.v1.Health/Check")
        .build()
        .map_err(|e| format!("cannot build the probe URL: {e}"))?;
    let mut body = Body::full(frame);
    body = body.with_exact_length();
    let mut request = Request::new(body);
    *request.method_mut() = Method::POST;
    *request.uri_mut() = target;
    let headers = request.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    headers.insert(header::TE, HeaderValue::from_static("trailers"));
    if let Ok(host) = HeaderValue::from_str(backend.authority.as_str()) {
        headers.insert(header::HOST, host);
    }
    headers.insert(header::USER_AGENT, HeaderValue::from_static("quic-proxy-health"));
    let answer = backend
        .transport
        .send(&backend.name, request, &probe_timeouts(config))
        .await
        .result;
    let response = match answer.map_err(|e| e.cause())? {
        Answer::Response(response) => response,
        Answer::Upgraded(..) => return Err("the backend switched protocols".to_owned()),
    };
    if response.status() != StatusCode::OK {
        return Err(format!("status {}", response.status().as_u16()));
    }
    let head_status = response.headers().get("grpc-status").cloned();
    let collected = Limited::new(response.into_body(), MAX_PROBE_BODY)
        .collect()
        .await
        .map_err(|e| format!("answer unreadable: {e}"))?;
    let grpc_status = head_status.or_else(|| collected.trailers().and_then(|t| t.get("grpc-status").cloned()));
    match grpc_status.as_ref().map(HeaderValue::as_bytes) {
        Some(b"0") => {}
        Some(code) => return Err(format!("grpc-status {}", String::from_utf8_lossy(code))),
        None => return Err("no grpc-status in the answer".to_owned()),
    }
    // HealthCheckResponse { ServingStatus status = 1; }: SERVING is 1.
    let answer = collected.to_bytes();
    match answer.get(5..) {
        Some([0x08, 0x01, ..]) => Ok(()),
        Some([0x08, status, ..]) => Err(format!("serving status {status} (not SERVING)")),
        _ => Err("serving status UNKNOWN".to_owned()),
    }
}

fn encode_varint(mut value: u64, out: &mut Vec<u8>) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn probe_uri(backend: &Backend, config: &HealthCheckConfig) -> Result<Uri, String> {
    if let Some(url) = backend.health_url() {
        return Ok(Uri::clone(&url));
    }
    Uri::builder()
        .scheme(backend.scheme.clone())
        .authority(backend.authority.clone())
        .path_and_query(config.path.as_str())
        .build()
        .map_err(|e| format!("cannot build the probe URL: {e}"))
}

fn connect_cause(error: &std::io::Error) -> String {
    match error.kind() {
        std::io::ErrorKind::ConnectionRefused => "connection refused".to_owned(),
        std::io::ErrorKind::ConnectionReset => "connection reset".to_owned(),
        _ => error.to_string(),
    }
}

fn request_cause(error: &hyper_util::client::legacy::Error) -> String {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(error);
    while let Some(inner) = source {
        if let Some(io) = inner.downcast_ref::<std::io::Error>() {
            return connect_cause(io);
        }
        source = inner.source();
    }
    error.to_string()
}
