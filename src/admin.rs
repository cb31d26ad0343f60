//! The admin listener: Prometheus metrics and the liveness/readiness endpoints.

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;

use crate::body::Body;
use crate::server::{accept_loop, Shutdown};

/// What the admin endpoints report on.
#[derive(Clone)]
pub struct State {
    pub metrics: PrometheusHandle,
    /// Listeners are bound and the proxy is not draining.
    pub ready: Arc<AtomicBool>,
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
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
    }
    match request.uri().path() {
        "/metrics" => {
            let mut response = Response::new(Body::full(state.metrics.render()));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            response
        }
        "/live" => text(StatusCode::OK, "live\n"),
        "/ready" if state.ready.load(Ordering::Relaxed) => text(StatusCode::OK, "ready\n"),
        "/ready" => text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n"),
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
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
