//! The plain HTTP/1.1 listener (the fallback port): keep-alive, header limits, upgrades, graceful close.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use http::Request;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

use crate::body::Body;
use crate::config::Config;
use crate::proxy::{ClientInfo, Core};

use super::framing::FramingWatch;
use super::{accept_loop, Shutdown};

/// Connection settings of the HTTP/1.1 listener.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    pub header_read_timeout: Duration,
    pub max_header_bytes: usize,
}

impl From<&Config> for Settings {
    fn from(config: &Config) -> Self {
        Self {
            header_read_timeout: config.server.header_read_timeout,
            max_header_bytes: usize::try_from(config.server.max_header_bytes).unwrap_or(usize::MAX),
        }
    }
}

/// Serves HTTP/1.1 on `listener` until shutdown, then lets each connection finish its current request.
pub async fn serve(listener: TcpListener, core: Arc<Core>, settings: Settings, shutdown: Shutdown) {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(settings.header_read_timeout)
        .keep_alive(true)
        .max_buf_size(settings.max_header_bytes);
    let drain = shutdown.clone();
    accept_loop(listener, shutdown, move |stream, peer| {
        let core = Arc::clone(&core);
        let client = ClientInfo { peer, tls: false };
        let (io, verdicts) = FramingWatch::new(TokioIo::new(stream), settings.max_header_bytes);
        let service = service_fn(move |mut request: Request<Incoming>| {
            if let Some(violation) = verdicts.next_request() {
                request.extensions_mut().insert(violation);
            }
            let core = Arc::clone(&core);
            async move { Ok::<_, Infallible>(core.handle(request.map(Body::from), client).await) }
        });
        let connection = builder.serve_connection(io, service).with_upgrades();
        let drain = drain.clone();
        async move {
            tokio::pin!(connection);
            let result = tokio::select! {
                result = connection.as_mut() => result,
                () = drain.begun() => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(error) = result {
                tracing::debug!(%peer, "HTTP/1.1 connection ended: {error}");
            }
        }
    })
    .await;
}
