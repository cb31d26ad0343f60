//! HTTPS over TCP: rustls with ALPN, then HTTP/2 or HTTP/1.1 into the same core. Every response
//! advertises HTTP/3 with Alt-Svc.

use std::convert::Infallible;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::Request;
use hyper::body::Incoming;
use hyper::server::conn::http2;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use http::HeaderValue;

use crate::protocol::Protocol;
use crate::proxy::{ClientInfo, Core};
use crate::runtime::{accept_loop, Shutdown};

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
    let service = service_fn(move |request: Request<Incoming>| {
        let (core, alt_svc) = (Arc::clone(&core), alt_svc.clone());
        async move { Ok::<_, Infallible>(http1::handle(&core, request, client, alt_svc).await) }
    });
    let mut builder = http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
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

/// When a connection last moved a byte, in milliseconds after `since`.
#[derive(Clone)]
struct Activity {
    since: Instant,
    last_ms: Arc<AtomicU64>,
}

impl Activity {
    fn touch(&self) {
        let now = u64::try_from(self.since.elapsed().as_millis()).unwrap_or(u64::MAX);
        // One store per read or write; a relaxed atomic is all the watchdog needs.
        self.last_ms.store(now, Ordering::Relaxed);
    }

    /// Resolves once no byte has moved for `limit`.
    async fn silent_for(&self, limit: Duration) {
        loop {
            let last = self.since + Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
            if last.elapsed() >= limit {
                return;
            }
            tokio::time::sleep_until((last + limit).into()).await;
        }
    }
}

/// A stream that records when it last read or wrote anything.
struct Watched<S> {
    inner: S,
    activity: Activity,
}

impl<S> Watched<S> {
    fn new(inner: S) -> (Self, Activity) {
        let activity = Activity {
            since: Instant::now(),
            last_ms: Arc::new(AtomicU64::new(0)),
        };
        (
            Self {
                inner,
                activity: activity.clone(),
            },
            activity,
        )
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.touch();
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
