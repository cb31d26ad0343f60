//! The admin listener: Prometheus metrics, health endpoints for load balancers and Kubernetes, and the
//! backend API (state, drain, undrain).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::{json, Value};
use tokio::net::TcpListener;

use crate::body::Body;
use crate::runtime::{accept_loop, NotReady, Shared, Shutdown};

/// What the admin endpoints report on.
#[derive(Clone)]
pub struct State {
    pub metrics: PrometheusHandle,
    pub shared: Arc<Shared>,
}

/// Serves the admin endpoints until shutdown; runs the metrics upkeep alongside.
pub async fn serve(listener: TcpListener, state: State, shutdown: Shutdown) {
    let upkeep = state.metrics.clone();
    let upkeep_shutdown = shutdown.clone();
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(Duration::from_secs(5));
        loop {
            tokio::select! {
                () = upkeep_shutdown.begun() => return,
                _ = ticks.tick() => upkeep.run_upkeep(),
            }
        }
    });
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(10));
    accept_loop(listener, shutdown, move |stream, _peer| {
        let state = state.clone();
        let connection = builder.serve_connection(
            TokioIo::new(stream),
            service_fn(move |request| {
                let response = respond(&state, &request);
                async move { Ok::<_, Infallible>(response) }
            }),
        );
        async move {
            if let Err(error) = connection.await {
                tracing::debug!("admin connection ended: {error}");
            }
        }
    })
    .await;
}

fn respond(state: &State, request: &Request<Incoming>) -> Response<Body> {
    let path = request.uri().path();
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (request.method(), segments.as_slice()) {
        (&Method::POST, ["api", "backends", upstream, name, action @ ("drain" | "undrain")]) => {
            authorized(state, request).unwrap_or_else(|| drain(state, upstream, name, *action == "drain"))
        }
        (&Method::POST, ["api", "reload"]) => authorized(state, request).unwrap_or_else(|| reload(state)),
        (&Method::GET | &Method::HEAD, _) => match path {
            "/metrics" => {
                let mut text = state.metrics.render();
                text.push_str(&crate::metrics::render_process_metrics());
                text.push_str(&crate::metrics::render_state_metrics(&state.shared.snapshot()));
                let mut response = Response::new(Body::full(text));
                response.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                );
                response
            }
            "/live" => text(StatusCode::OK, "live\n"),
            "/ready" => match state.shared.readiness().check() {
                Ok(()) => text(StatusCode::OK, "ready\n"),
                Err(NotReady::Starting) => text(StatusCode::SERVICE_UNAVAILABLE, "not ready: starting\n"),
                Err(NotReady::Draining) => text(StatusCode::SERVICE_UNAVAILABLE, "not ready: draining\n"),
                Err(NotReady::FirstHealthChecks) => text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "not ready: first health check round running\n",
                ),
            },
            "/health" => health(state),
            "/api/backends" => backends(state),
            _ => text(StatusCode::NOT_FOUND, "not found\n"),
        },
        _ => text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n"),
    }
}

/// Overall status: healthy when every backend is, degraded when every upstream still has one, else unhealthy.
fn health(state: &State) -> Response<Body> {
    let snapshot = state.shared.snapshot();
    let upstreams = snapshot.upstreams();
    let mut summary = serde_json::Map::new();
    let (mut healthy_total, mut backends_total, mut any_empty) = (0, 0, false);
    for upstream in upstreams {
        let (healthy, total) = (upstream.usable_count(), upstream.backends.len());
        healthy_total += healthy;
        backends_total += total;
        any_empty |= healthy == 0;
        summary.insert(
            upstream.name.clone(),
            json!({ "status": status_word(healthy, total), "healthy_backends": healthy, "total_backends": total }),
        );
    }
    let status = if any_empty {
        "unhealthy"
    } else {
        status_word(healthy_total, backends_total)
    };
    let body = json!({
        "status": status,
        "healthy_backends": healthy_total,
        "total_backends": backends_total,
        "timestamp": humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
        "upstreams": summary,
    });
    let code = if status == "unhealthy" {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    json_response(code, &body)
}

fn status_word(healthy: usize, total: usize) -> &'static str {
    match healthy {
        0 => "unhealthy",
        n if n == total => "healthy",
        _ => "degraded",
    }
}

fn backends(state: &State) -> Response<Body> {
    let snapshot = state.shared.snapshot();
    let list: Vec<Value> = snapshot
        .upstreams()
        .iter()
        .flat_map(|upstream| upstream.backends.iter().map(move |b| (upstream, b)))
        .map(|(upstream, backend)| {
            let report = backend.health.report();
            json!({
                "upstream": upstream.name,
                "name": backend.name,
                "url": format!("{}://{}", backend.scheme, backend.authority),
                "state": if report.healthy { "healthy" } else { "unhealthy" },
                "consecutive_successes": report.consecutive_successes,
                "consecutive_failures": report.consecutive_failures,
                "last_check": report.last_check.map(|t| humantime::format_rfc3339_millis(t).to_string()),
                "last_latency_ms": report.last_latency.map(|d| d.as_secs_f64() * 1000.0),
                "last_error": report.last_error,
                "in_flight": backend.in_flight(),
                "weight": backend.weight(),
                "effective_weight": backend.effective_weight() as f64 / crate::balancer::WEIGHT_SCALE as f64,
                "drained": backend.is_drained(),
            })
        })
        .collect();
    json_response(StatusCode::OK, &json!({ "backends": list }))
}

/// `None` when the request carries the admin token; otherwise the refusal to send.
fn authorized(state: &State, request: &Request<Incoming>) -> Option<Response<Body>> {
    let snapshot = state.shared.snapshot();
    let Some(token) = &snapshot.config.admin_token else {
        return Some(text(
            StatusCode::FORBIDDEN,
            "state-changing endpoints are disabled: set admin.token to enable them\n",
        ));
    };
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, credentials)| credentials.trim());
    if presented.is_some_and(|p| constant_time_eq(p.as_bytes(), token.as_bytes())) {
        return None;
    }
    let mut response = text(
        StatusCode::UNAUTHORIZED,
        "a valid Authorization: Bearer token is required\n",
    );
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    Some(response)
}

/// Reads the configuration file again and applies it: 200 with what changed, or 400 with why nothing did.
fn reload(state: &State) -> Response<Body> {
    match state.shared.reload_from_file() {
        Ok(report) => {
            tracing::info!("admin API: {report}");
            json_response(
                StatusCode::OK,
                &json!({
                    "generation": report.generation,
                    "digest": report.digest,
                    "changes": report.changes,
                    "restart_required": report.restart_required,
                }),
            )
        }
        Err(error) => {
            tracing::error!("admin API: configuration not reloaded, the running one stays: {error}");
            json_response(StatusCode::BAD_REQUEST, &json!({ "error": error.to_string() }))
        }
    }
}

fn drain(state: &State, upstream: &str, name: &str, drained: bool) -> Response<Body> {
    let snapshot = state.shared.snapshot();
    let Some(backend) = snapshot.backend(upstream, name) else {
        return text(StatusCode::NOT_FOUND, "no such upstream/backend\n");
    };
    let was = backend.set_drained(drained);
    if was != drained {
        tracing::info!(
            upstream,
            backend = name,
            in_flight = backend.in_flight(),
            "backend {}",
            if drained { "drained" } else { "undrained" }
        );
    }
    json_response(
        StatusCode::OK,
        &json!({ "upstream": upstream, "name": name, "drained": drained, "in_flight": backend.in_flight() }),
    )
}

/// Compares secrets without leaking where they differ through timing.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn json_response(status: StatusCode, body: &Value) -> Response<Body> {
    let mut response = Response::new(Body::full(body.to_string()));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut response = Response::new(Body::full(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
