//! HTTP/1.1 connections: the plain fallback listener, and HTTPS connections that negotiated http/1.1.
//! Keep-alive, header limits and timeouts, framing checks under hyper, upgrades, graceful close.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use http::header::HeaderValue;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::rt::{Read, Write};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

use crate::body::Body;
use crate::config::Config;
use crate::protocol::Protocol;
use crate::proxy::{ClientInfo, Core, Refused};
use crate::runtime::{accept_loop, Shutdown};

use super::framing::FramingWatch;
use super::serve_until_drained;

/// Connection settings shared by the HTTP/1.1 and HTTP/2 serving code, read from the current snapshot
/// when a connection is accepted.
#[derive(Debug, Clone)]
pub struct Settings {
    pub header_read_timeout: Duration,
    pub max_header_bytes: usize,
    pub max_headers: usize,
    /// HTTP/2 streams per connection.
    pub max_concurrent_streams: u32,
    /// An HTTP/2 connection that moves no byte for this long is closed (GOAWAY).
    pub idle_timeout: std::time::Duration,
    /// Added to every response (the HTTPS listener advertises HTTP/3 with it).
    pub alt_svc: Option<HeaderValue>,
}

impl Settings {
    /// Settings from config, without Alt-Svc.
    pub fn new(config: &Config) -> Self {
        Self {
            header_read_timeout: config.server.header_read_timeout,
            max_header_bytes: usize::try_from(config.server.max_header_bytes).unwrap_or(usize::MAX),
            max_headers: config.server.max_headers,
            max_concurrent_streams: config.quic.max_concurrent_streams,
            idle_timeout: config.server.idle_timeout,
            alt_svc: None,
        }
    }
}

/// Serves plain HTTP/1.1 on `listener` until shutdown.
pub async fn serve(listener: TcpListener, core: Arc<Core>, shutdown: Shutdown) {
    let drain = shutdown.clone();
    accept_loop(listener, shutdown, move |stream, peer| {
        let admitted = core.shared().admit_tcp(peer);
        let settings = Settings::new(&core.shared().snapshot().config);
        let connection = admitted.map(|slot| {
            let connection = serve_connection(
                TokioIo::new(stream),
                Arc::clone(&core),
                ClientInfo { peer, tls: false },
                &settings,
                drain.clone(),
            );
            (slot, connection)
        });
        async move {
            if let Some((_slot, connection)) = connection {
                connection.await;
            }
        }
    })
    .await;
}

/// Hands a hyper request to the core and adds Alt-Svc to the response when the listener advertises HTTP/3.
pub async fn handle(
    core: &Core,
    request: Request<Incoming>,
    client: ClientInfo,
    alt_svc: Option<HeaderValue>,
) -> Response<Body> {
    let mut response = core.handle(request.map(Body::from), client).await;
    if let Some(alt_svc) = alt_svc {
        response.headers_mut().insert(http::header::ALT_SVC, alt_svc);
    }
    response
}

/// Serves one HTTP/1.1 connection; on shutdown it finishes the current request and closes.
pub fn serve_connection<I>(
    io: I,
    core: Arc<Core>,
    client: ClientInfo,
    settings: &Settings,
    drain: Shutdown,
) -> impl std::future::Future<Output = ()> + Send + 'static
where
    I: Read + Write + Unpin + Send + 'static,
{
    let (io, verdicts) = FramingWatch::new(io, settings.max_header_bytes);
    let shared = Arc::clone(core.shared());
    let alt_svc = settings.alt_svc.clone();
    // Shared by the connection's requests: an Arc clone per request, not a cancellation token's.
    let closing = Arc::new(drain.clone());
    let service = service_fn(move |mut request: Request<Incoming>| {
        if let Some(violation) = verdicts.next_request() {
            request.extensions_mut().insert(Refused(violation.error()));
        }
        let (core, alt_svc, closing) = (Arc::clone(&core), alt_svc.clone(), Arc::clone(&closing));
        async move {
            let mut response = handle(&core, request, client, alt_svc).await;
            // Once shutdown has begun every response says the connection ends with it, so the client opens
            // a new one (to the process taking over, in an upgrade) rather than racing a close.
            if closing.has_begun() && response.status() != http::StatusCode::SWITCHING_PROTOCOLS {
                response
                    .headers_mut()
                    .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
            }
            Ok::<_, Infallible>(response)
        }
    });
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(settings.header_read_timeout)
        .keep_alive(true)
        .max_headers(settings.max_headers)
        .max_buf_size(settings.max_header_bytes);
    let connection = builder.serve_connection(io, service).with_upgrades();
    async move {
        let _open = shared.connection_open(Protocol::Http11);
        // On shutdown hyper closes an idle connection at once, which a request already on its way would meet;
        // in a hand-over there is no hurry, so the connection ends after its next response instead (or at
        // its header timeout, or the drain timeout).
        let result = serve_until_drained(connection, &drain, |c| {
            if !drain.is_handover() {
                c.graceful_shutdown();
            }
        })
        .await;
        if let Err(error) = result {
            tracing::debug!(peer = %client.peer, "HTTP/1.1 connection ended: {error}");
        }
    }
}
