//! Listeners and the process lifecycle: bind everything first, serve, then drain on shutdown.

pub mod framing;
pub mod http1;
pub mod quic;
mod quic_fields;
mod quic_tee;
pub mod tls;

use std::future::Future;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use http::HeaderValue;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admin;
use crate::config::Config;
use crate::health::active::Prober;
use crate::proxy::Core;
use crate::tls::CertStore;

use quic::QuicListener;

/// Stops accept loops and tells open connections to finish their requests and close.
#[derive(Debug, Clone, Default)]
pub struct Shutdown {
    token: CancellationToken,
    tasks: TaskTracker,
}

impl Shutdown {
    /// Resolves once shutdown has begun.
    pub async fn begun(&self) {
        self.token.cancelled().await;
    }

    /// Runs `task` as part of the work shutdown waits for.
    pub fn spawn<F>(&self, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.tasks.spawn(task);
    }

    /// Begins shutdown and waits up to `timeout` for tracked work to finish; true if everything finished.
    pub async fn drain(&self, timeout: Duration) -> bool {
        self.token.cancel();
        self.tasks.close();
        tokio::time::timeout(timeout, self.tasks.wait()).await.is_ok()
    }
}

/// A running proxy: its bound addresses and the handle that stops it.
#[derive(Debug)]
pub struct Running {
    /// The plain HTTP/1.1 listener.
    pub fallback_addr: SocketAddr,
    /// The HTTPS (TCP) listener, when TLS is configured.
    pub https_addr: Option<SocketAddr>,
    /// The QUIC (UDP) listener, when TLS is configured.
    pub quic_addr: Option<SocketAddr>,
    /// The admin listener (`/metrics`, `/live`, `/ready`), when enabled.
    pub admin_addr: Option<SocketAddr>,
    pub core: Arc<Core>,
    shutdown: Shutdown,
    ready: Arc<AtomicBool>,
    drain_timeout: Duration,
}

impl Running {
    /// Stops accepting, lets in-flight requests finish up to the drain timeout; true if all finished.
    pub async fn shutdown(self) -> bool {
        self.ready.store(false, Ordering::Relaxed);
        self.shutdown.drain(self.drain_timeout).await
    }
}

/// Binds every listener (failing before serving anything if one cannot be bound), then serves.
/// With `certs`, HTTPS (TCP) and QUIC (UDP) listen on `server.address`.
pub async fn start(config: &Config, certs: Option<Arc<CertStore>>) -> anyhow::Result<Running> {
    let fallback = bind_tcp(config.server.fallback_address)
        .with_context(|| format!("cannot bind server.fallback_address {}", config.server.fallback_address))?;
    let secure = match &certs {
        Some(certs) => Some(bind_secure(config, certs)?),
        None => None,
    };
    let admin_listener = if config.telemetry.metrics.enabled {
        let address = config.telemetry.metrics.address;
        Some(bind_tcp(address).with_context(|| format!("cannot bind telemetry.metrics.address {address}"))?)
    } else {
        None
    };
    let metrics = match admin_listener {
        Some(_) => Some(crate::metrics::install().map_err(anyhow::Error::msg)?),
        None => None,
    };

    let core = Arc::new(Core::new(config));
    let shutdown = Shutdown::default();
    let prober = Prober::default();
    for upstream in core.router().upstreams() {
        crate::metrics::register_upstream(&upstream.name);
        for backend in &upstream.backends {
            crate::metrics::register_backend(&upstream.name, &backend.name, backend.health.is_healthy());
        }
    }
    for upstream in core.router().upstreams().iter().filter(|u| u.health_check.enabled) {
        for backend in &upstream.backends {
            prober.spawn(
                Arc::clone(backend),
                Arc::clone(&upstream.health_check),
                shutdown.clone(),
            );
        }
    }
    let ready = Arc::new(AtomicBool::new(false));
    let settings = http1::Settings::new(config);
    let fallback_addr = fallback.local_addr()?;
    tracing::info!(address = %fallback_addr, "HTTP/1.1 listener bound");
    shutdown.spawn(http1::serve(
        fallback,
        Arc::clone(&core),
        settings.clone(),
        shutdown.clone(),
    ));

    let (mut https_addr, mut quic_addr) = (None, None);
    if let Some((tcp, acceptor, quic)) = secure {
        let (tcp_address, udp_address) = (tcp.local_addr()?, quic.local_addr()?);
        let advertised = config.quic.alt_svc_port.unwrap_or(udp_address.port());
        let alt_svc = HeaderValue::from_str(&format!("h3=\":{advertised}\"; ma=86400"))?;
        tracing::info!(address = %tcp_address, "HTTPS listener bound (h2, http/1.1)");
        tracing::info!(address = %udp_address, "QUIC listener bound (h3)");
        let limits = tls::Http2Limits {
            max_concurrent_streams: config.quic.max_concurrent_streams,
        };
        let https_settings = http1::Settings {
            alt_svc: Some(alt_svc),
            ..settings
        };
        shutdown.spawn(tls::serve(
            tcp,
            acceptor,
            Arc::clone(&core),
            https_settings,
            limits,
            shutdown.clone(),
        ));
        shutdown.spawn(quic.serve(Arc::clone(&core), shutdown.clone()));
        (https_addr, quic_addr) = (Some(tcp_address), Some(udp_address));
    }

    let admin_addr = match (admin_listener, metrics) {
        (Some(listener), Some(metrics)) => {
            let address = listener.local_addr()?;
            tracing::info!(%address, "admin listener bound (/metrics /health /ready /live /api/backends)");
            let state = admin::State {
                metrics,
                ready: Arc::clone(&ready),
                core: Arc::clone(&core),
                prober: prober.clone(),
                token: config.admin.token.clone(),
            };
            tokio::spawn(admin::serve(listener, state, shutdown.clone()));
            Some(address)
        }
        _ => None,
    };
    ready.store(true, Ordering::Relaxed);
    Ok(Running {
        fallback_addr,
        https_addr,
        quic_addr,
        admin_addr,
        core,
        shutdown,
        ready,
        drain_timeout: config.server.drain_timeout,
    })
}

/// Binds HTTPS on TCP and QUIC on UDP at `server.address`; with port 0, UDP takes TCP's port.
fn bind_secure(config: &Config, certs: &Arc<CertStore>) -> anyhow::Result<(TcpListener, TlsAcceptor, QuicListener)> {
    let address = config.server.address;
    let tcp_config = certs.tcp_server_config().context("cannot build the HTTPS TLS config")?;
    let acceptor = TlsAcceptor::from(Arc::new(tcp_config));
    // With port 0 the OS picks the TCP port and QUIC takes the same one, as Alt-Svc clients expect; that
    // UDP port may already be in use, so a few fresh ports are tried.
    let attempts = if address.port() == 0 { 16 } else { 1 };
    let mut attempt = 0;
    loop {
        attempt += 1;
        let tcp = bind_tcp(address).with_context(|| format!("cannot bind server.address {address} (TCP)"))?;
        let udp_address = SocketAddr::new(address.ip(), tcp.local_addr()?.port());
        match QuicListener::bind(config, udp_address, certs) {
            Ok(quic) => return Ok((tcp, acceptor, quic)),
            Err(error) if attempt < attempts && is_address_in_use(&error) => continue,
            Err(error) => return Err(error),
        }
    }
}

fn is_address_in_use(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause
            .downcast_ref::<io::Error>()
            .is_some_and(|e| e.kind() == io::ErrorKind::AddrInUse)
    })
}

/// A TCP listener; an unspecified IPv6 address (`:80`) takes IPv4 too, or falls back to IPv4 alone.
pub fn bind_tcp(address: SocketAddr) -> io::Result<TcpListener> {
    let listener = match bind_tcp_socket(address) {
        Err(e) if address.ip().is_unspecified() && address.is_ipv6() && e.kind() != io::ErrorKind::AddrInUse => {
            bind_tcp_socket(SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), address.port()))?
        }
        other => other?,
    };
    TcpListener::from_std(listener)
}

fn bind_tcp_socket(address: SocketAddr) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(address), Type::STREAM, Some(Protocol::TCP))?;
    if address.is_ipv6() {
        socket.set_only_v6(!address.ip().is_unspecified())?;
    }
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&address.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

/// Drives a hyper connection; once shutdown begins, calls `graceful` (hyper's `graceful_shutdown`) so it
/// finishes its in-flight requests and closes.
pub async fn serve_until_drained<C>(connection: C, drain: &Shutdown, graceful: impl FnOnce(Pin<&mut C>)) -> C::Output
where
    C: Future,
{
    tokio::pin!(connection);
    tokio::select! {
        result = connection.as_mut() => result,
        () = drain.begun() => {
            graceful(connection.as_mut());
            connection.await
        }
    }
}

/// Accepts connections until shutdown and hands each to `serve` as a tracked task.
pub async fn accept_loop<F, Fut>(listener: TcpListener, shutdown: Shutdown, serve: F)
where
    F: Fn(TcpStream, SocketAddr) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    loop {
        let accepted = tokio::select! {
            () = shutdown.begun() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                let peer = SocketAddr::new(peer.ip().to_canonical(), peer.port());
                if let Err(error) = stream.set_nodelay(true) {
                    tracing::debug!(%peer, "cannot set TCP_NODELAY: {error}");
                }
                shutdown.spawn(serve(stream, peer));
            }
            Err(error) => {
                // Out of file descriptors or similar: pause instead of spinning on the same error.
                tracing::warn!("accept failed: {error}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}
