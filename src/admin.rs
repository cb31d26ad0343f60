//! The admin listener: Prometheus metrics, health endpoints for load balancers and Kubernetes, the API
//! (state, drain, undrain, reload) and the web console. It runs on the control thread, apart from the
//! workers, and keeps serving while the data plane drains.
//!
//! State-changing endpoints need the admin token as a Bearer credential, and a request that carries an
//! `Origin` other than the admin listener's own is refused, so that no other web page a browser has open
//! can drive them. The console page is served with a strict Content-Security-Policy: its script and style
//! come from this listener only, nothing inline.

mod api;
mod exposition;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use http::header::{self, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;

use crate::body::Body;
use crate::runtime::{accept_loop, Shared, Shutdown};

/// What the admin endpoints report on.
#[derive(Clone)]
pub struct State {
    pub metrics: PrometheusHandle,
    pub shared: Arc<Shared>,
}

const CONSOLE_HTML: &str = include_str!("admin/console/index.html");
const CONSOLE_JS: &str = include_str!("admin/console/console.js");
const CONSOLE_CSS: &str = include_str!("admin/console/console.css");
const DASHBOARD: &str = include_str!("../monitoring/grafana/dashboards/quic-proxy-dashboard.json");

const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

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
                let state = state.clone();
                async move { Ok::<_, Infallible>(respond(&state, &request).await) }
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

async fn respond(state: &State, request: &Request<Incoming>) -> Response<Body> {
    let mut response = route(state, request).await;
    let headers = response.headers_mut();
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

async fn route(state: &State, request: &Request<Incoming>) -> Response<Body> {
    let path = request.uri().path();
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let shared = &state.shared;
    match (request.method(), segments.as_slice()) {
        (&Method::POST, ["api", "backends", upstream, name, action @ ("drain" | "undrain")]) => {
            authorized(shared, request).unwrap_or_else(|| json(api::drain(shared, upstream, name, *action == "drain")))
        }
        (&Method::POST, ["api", "reload"]) => match authorized(shared, request) {
            Some(refused) => refused,
            None => json(api::reload(shared).await),
        },
        (&Method::POST, ["api", "upgrade"]) => match authorized(shared, request) {
            Some(refused) => refused,
            None => json(api::upgrade(shared).await),
        },
        (&Method::GET | &Method::HEAD, _) => match path {
            "/metrics" => {
                let mut text = state.metrics.render();
                text.push_str(&exposition::process_metrics());
                text.push_str(&exposition::state_metrics(&shared.snapshot()));
                if let Some(certs) = shared.certs() {
                    text.push_str(&exposition::certificate_metrics(certs));
                }
                with_type(Body::full(text), "text/plain; version=0.0.4; charset=utf-8")
            }
            "/live" => text(StatusCode::OK, "live\n"),
            "/ready" => match shared.readiness().check() {
                Ok(()) => text(StatusCode::OK, "ready\n"),
                Err(reason) => text(StatusCode::SERVICE_UNAVAILABLE, not_ready_text(reason)),
            },
            "/health" => json(api::health(shared)),
            "/api/backends" => json((StatusCode::OK, api::backends(shared))),
            "/api/state" => json((StatusCode::OK, api::state(shared))),
            "/api/config" => with_type(Body::full(api::config(shared)), "application/yaml; charset=utf-8"),
            _ => console(shared, path).unwrap_or_else(|| text(StatusCode::NOT_FOUND, "not found\n")),
        },
        _ => text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n"),
    }
}

fn not_ready_text(reason: crate::runtime::NotReady) -> &'static str {
    match reason {
        crate::runtime::NotReady::Starting => "not ready: starting\n",
        crate::runtime::NotReady::Draining => "not ready: draining\n",
        crate::runtime::NotReady::FirstHealthChecks => "not ready: first health check round running\n",
    }
}

/// The console's files, unless `admin.console` is off.
fn console(shared: &Shared, path: &str) -> Option<Response<Body>> {
    if !shared.snapshot().config.admin.console {
        return None;
    }
    let (content, content_type) = match path {
        "/" | "/index.html" => (CONSOLE_HTML, "text/html; charset=utf-8"),
        "/console.js" => (CONSOLE_JS, "text/javascript; charset=utf-8"),
        "/console.css" => (CONSOLE_CSS, "text/css; charset=utf-8"),
        "/dashboard.json" => (DASHBOARD, "application/json"),
        _ => return None,
    };
    let mut response = with_type(Body::full(content), content_type);
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        HeaderName::from_static("cross-origin-opener-policy"),
        HeaderValue::from_static("same-origin"),
    );
    Some(response)
}

/// `None` when the request carries the admin token and no foreign `Origin`; otherwise the refusal to send.
fn authorized(shared: &Shared, request: &Request<Incoming>) -> Option<Response<Body>> {
    if !same_origin(request) {
        return Some(text(
            StatusCode::FORBIDDEN,
            "cross-origin requests to the admin API are refused\n",
        ));
    }
    let snapshot = shared.snapshot();
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

/// True without an `Origin` (curl, scripts) or with this listener's own (`http://` + the Host asked for).
fn same_origin(request: &Request<Incoming>) -> bool {
    let Some(origin) = request.headers().get(header::ORIGIN) else {
        return true;
    };
    let host = request.headers().get(header::HOST).map(HeaderValue::as_bytes);
    match (origin.as_bytes().strip_prefix(b"http://"), host) {
        (Some(origin_host), Some(host)) => origin_host.eq_ignore_ascii_case(host),
        _ => false,
    }
}

/// Compares secrets without leaking where they differ through timing.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn json((status, body): (StatusCode, serde_json::Value)) -> Response<Body> {
    let mut response = with_type(Body::full(body.to_string()), "application/json");
    *response.status_mut() = status;
    response
}

fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut response = with_type(Body::full(body), "text/plain; charset=utf-8");
    *response.status_mut() = status;
    response
}

fn with_type(body: Body, content_type: &'static str) -> Response<Body> {
    let mut response = Response::new(body);
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}
