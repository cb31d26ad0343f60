//! HTTPS over TCP: rustls with ALPN, then HTTP/2 or HTTP/1.1 into the same core. Every response
//! advertises HTTP/3 with Alt-Svc.

use std::convert::Infallible;
use std::sync::Arc;

use http::Request;
use hyper::body::Incoming;
use hyper::server::conn::http2;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use http::HeaderValue;

use crate::protocol::Protocol;
use crate::proxy::{ClientInfo, ConnectProtocol, Core};
use crate::runtime::{accept_loop, Activity, Shutdown, Watched};

use super::http1::{self, Settings};

/// Serves HTTPS on `listener` until shutdown. `udp_port` is the QUIC listener's, for Alt-Svc.
pub async fn serve(listener: TcpListener, acceptor: TlsAcceptor, core: Arc<Core>, udp_port: u16, shutdown: Shutdown) {
    let drain = shutdown.clone();
    accept_loop(listener, shutdown, move |stream, peer| {
        let config = Arc::clone(&core.shared().snapshot().config);
        let advertised = config.quic.alt_svc_port.unwrap_or(udp_port);
        let settings = Settings {
            alt_svc: HeaderValue::from_str(&format!("h3=\":{advertised}\"; ma=86400")).ok(),
            ..Settings::new(&config)
        };
        let (acceptor, core, drain) = (acceptor.clone(), Arc::clone(&core), drain.clone());
        let client = ClientInfo { peer, tls: true };
        let admitted = core.shared().admit_tcp(peer);
        async move {
            let Some(_slot) = admitted else { return };
            // The handshake shares the header read deadline: a client that stalls it holds no slot for long.
            let tls = match tokio::time::timeout(settings.header_read_timeout, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(error)) => {
                    tracing::debug!(%peer, "TLS handshake failed: {error}");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake timed out");
                    return;
                }
            };
            let alpn = tls.get_ref().1.alpn_protocol();
            if alpn == Some(crate::tls::ACME_TLS_ALPN) {
                // A CA validating tls-alpn-01 only needed the handshake (RFC 8737 section 3).
                tracing::debug!(%peer, "tls-alpn-01 validation handshake served");
                return;
            }
            let h2 = alpn == Some(b"h2");
            if h2 {
                let (io, activity) = Watched::new(tls);
                serve_h2(TokioIo::new(io), activity, core, client, &settings, drain).await;
            } else {
                http1::serve_connection(TokioIo::new(tls), core, client, &settings, drain).await;
            }
        }
    })
    .await;
}

async fn serve_h2<I>(
    io: I,
    activity: Activity,
    core: Arc<Core>,
    client: ClientInfo,
    settings: &Settings,
    drain: Shutdown,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let alt_svc = settings.alt_svc.clone();
    let shared = Arc::clone(core.shared());
    let service = service_fn(move |mut request: Request<Incoming>| {
        // An extended CONNECT's `:protocol`, in the form every listener gives the core.
        if let Some(protocol) = request.extensions().get::<hyper::ext::Protocol>() {
            let protocol = ConnectProtocol(protocol.as_str().to_owned());
            request.extensions_mut().insert(protocol);
        }
        let (core, alt_svc) = (Arc::clone(&core), alt_svc.clone());
        async move { Ok::<_, Infallible>(http1::handle(&core, request, client, alt_svc).await) }
    });
    let mut builder = http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        // SETTINGS_ENABLE_CONNECT_PROTOCOL: WebSocket over HTTP/2 (RFC 8441).
        .enable_connect_protocol()
        .max_concurrent_streams(settings.max_concurrent_streams)
        .max_header_list_size(u32::try_from(settings.max_header_bytes).unwrap_or(u32::MAX));
    let connection = builder.serve_connection(io, service);
    let _open = shared.connection_open(Protocol::H2);
    tokio::pin!(connection);
    // Shutdown and a connection silent for `idle_timeout` both end it the same way: GOAWAY, then the
    // requests in flight finish (a silent request is bounded by its own timeouts).
    let result = tokio::select! {
        result = connection.as_mut() => result,
        () = drain.begun() => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
        () = activity.silent_for(settings.idle_timeout) => {
            tracing::debug!(peer = %client.peer, "HTTP/2 connection idle for {:?}: closing", settings.idle_timeout);
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(error) = result {
        tracing::debug!(peer = %client.peer, "HTTP/2 connection ended: {error}");
    }
}
