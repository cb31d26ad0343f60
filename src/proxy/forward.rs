//! The upstream side: one pooled hyper client, the request sent to a backend, and errors classified.

use std::io;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::balancer::Backend;
use crate::body::Body;
use crate::config::Timeouts;
use crate::error::ProxyError;

/// Sends requests to backends over pooled keep-alive connections.
#[derive(Debug, Clone)]
pub struct Forwarder {
    client: Client<HttpConnector, Body>,
}

impl Forwarder {
    /// A client with the configured connect, response-header and idle timeouts.
    pub fn new(timeouts: &Timeouts) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(timeouts.connect));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(timeouts.pool_idle)
            .build(connector);
        Self { client }
    }

    /// Sends `request` (already addressed to `backend`) and waits for the response head, for at most
    /// `timeout` after the request body has been sent in full (`sent` says when): however slowly a client
    /// uploads, that time is never the backend's. Returns the outcome and how long the backend took to
    /// answer once it had the whole request.
    pub async fn send(
        &self,
        backend: &Backend,
        request: Request<Body>,
        sent: oneshot::Receiver<()>,
        timeout: Duration,
    ) -> (Result<Response<Incoming>, ProxyError>, Duration) {
        let started = Instant::now();
        let response = self.client.request(request);
        tokio::pin!(response);
        let sent_at = tokio::select! {
            response = &mut response => {
                return (response.map_err(|error| classify(backend, &error)), started.elapsed());
            }
            sent = sent => match sent {
                Ok(()) => Instant::now(),
                // A body that fails is never sent in full; the response future ends with its error instead.
                Err(_) => {
                    let response = response.await.map_err(|error| classify(backend, &error));
                    return (response, started.elapsed());
                }
            },
        };
        let result = match tokio::time::timeout(timeout, response).await {
            Ok(response) => response.map_err(|error| classify(backend, &error)),
            Err(_) => Err(ProxyError::ResponseTimeout {
                backend: backend.name.clone(),
                after: timeout,
            }),
        };
        (result, sent_at.elapsed())
    }
}

fn classify(backend: &Backend, error: &hyper_util::client::legacy::Error) -> ProxyError {
    // A failure of the client's own request body (a listener found it malformed, or the client went
    // away mid-upload) is not the backend's fault: it must neither count against the backend nor be retried.
    // The proxy's own verdict on the body (stalled, wrong length) is deeper in the chain than hyper's
    // "user body failed", and is the one the client hears.
    let mut source = std::error::Error::source(error);
    let mut user_body_failed = false;
    while let Some(inner) = source {
        if let Some(client_error) = inner.downcast_ref::<ProxyError>() {
            return client_error.clone();
        }
        user_body_failed |= inner.downcast_ref::<hyper::Error>().is_some_and(hyper::Error::is_user);
        source = inner.source();
    }
    if user_body_failed {
        return ProxyError::ClientBodyFailed;
    }
    let io_kind = io_error_kind(error);
    let cause = match io_kind {
        Some(io::ErrorKind::ConnectionRefused) => "connection refused".to_owned(),
        Some(io::ErrorKind::ConnectionReset) => "connection reset".to_owned(),
        Some(io::ErrorKind::ConnectionAborted) => "connection aborted".to_owned(),
        _ => root_cause(error),
    };
    let backend = backend.name.clone();
    if error.is_connect() {
        if io_kind == Some(io::ErrorKind::TimedOut) {
            ProxyError::ConnectTimeout { backend }
        } else {
            ProxyError::ConnectFailed { backend, cause }
        }
    } else {
        ProxyError::UpstreamFailed { backend, cause }
    }
}

fn io_error_kind(error: &(dyn std::error::Error + 'static)) -> Option<io::ErrorKind> {
    let mut source = error.source();
    while let Some(inner) = source {
        if let Some(io_error) = inner.downcast_ref::<io::Error>() {
            return Some(io_error.kind());
        }
        source = inner.source();
    }
    None
}

fn root_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut deepest = error;
    while let Some(inner) = deepest.source() {
        deepest = inner;
    }
    deepest.to_string()
}
