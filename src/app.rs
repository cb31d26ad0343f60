//! Start-up and shutdown of the whole proxy: bind every socket (failing before anything is served), start
//! the worker threads with their listeners, the admin listener and the prober, and stop them in order.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio_rustls::TlsAcceptor;

use crate::admin;
use crate::config::Config;
use crate::control::{self, probe::Prober};
use crate::metrics;
use crate::proxy::Core;
use crate::routing::Snapshot;
use crate::runtime::{self, workers::Worker, Shared, Shutdown};
use crate::server::quic::QuicGroup;
use crate::server::{http1, tls};
use crate::tls::CertStore;
use crate::trace::Exporters;

/// A running proxy: its bound addresses, its shared state, and the handle that stops it.
#[derive(Debug)]
pub struct Running {
    /// The plain HTTP/1.1 listener.
    pub fallback_addr: SocketAddr,
    /// The HTTPS (TCP) listener, when TLS is configured.
    pub https_addr: Option<SocketAddr>,
    /// The QUIC (UDP) listener, when TLS is configured.
    pub quic_addr: Option<SocketAddr>,
    /// The admin listener (`/metrics`, `/live`, `/ready`, the API), when enabled.
    pub admin_addr: Option<SocketAddr>,
    shared: Arc<Shared>,
    /// The data plane: listeners and their connections, on the worker threads.
    data: Shutdown,
    /// The control plane: admin listener and prober, which outlive the data plane's drain.
    control: Shutdown,
    workers: Vec<Worker>,
    exporters: Arc<Exporters>,
}

impl Running {
    /// The shared state (snapshot, readiness, reload).
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// The configuration snapshot new requests use.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.shared.snapshot()
    }

    /// Stops accepting, lets in-flight requests finish up to `server.drain_timeout`, then stops the worker
    /// threads and the control plane. True if every request finished in time. `/ready` answers 503 and the
    /// rest of the admin listener keeps serving while the drain lasts.
    pub async fn shutdown(self) -> bool {
        self.shared.readiness().set_draining();
        let drain_timeout = self.shared.snapshot().config.server.drain_timeout;
        let finished = self.data.drain(drain_timeout).await;
        // A worker ends right after the drain; the margin only covers closing its sockets.
        for worker in self.workers {
            worker.join(Duration::from_secs(5)).await;
        }
        let export_timeout = self
            .shared
            .snapshot()
            .config
            .tracing
            .as_ref()
            .map_or(Duration::ZERO, |t| t.export_timeout);
        self.shared.set_tracer(None);
        self.exporters.flush(export_timeout).await;
        self.control.begin();
        finished
    }
}

/// Binds every listener (failing before serving anything if one cannot be bound), then serves.
/// With `certs`, HTTPS (TCP) and QUIC (UDP) listen on `server.address`.
pub async fn start(config: Config, certs: Option<Arc<CertStore>>) -> anyhow::Result<Running> {
    let worker_count = config.workers();
    let fallback = runtime::bind_tcp_group(config.server.fallback_address, worker_count, config.server.reuse_port)
        .with_context(|| format!("cannot bind server.fallback_address {}", config.server.fallback_address))?;
    let secure = match &certs {
        Some(certs) => Some(bind_secure(&config, certs, worker_count)?),
        None => None,
    };
    let admin_listener = if config.telemetry.metrics.enabled {
        let address = config.telemetry.metrics.address;
        Some(runtime::bind_tcp(address).with_context(|| format!("cannot bind telemetry.metrics.address {address}"))?)
    } else {
        None
    };
    let metrics_handle = match admin_listener {
        Some(_) => Some(metrics::install().map_err(anyhow::Error::msg)?),
        None => None,
    };

    // Backends named by DNS start with the addresses their names have now.
    let resolved = crate::discovery::resolve_all(&config, &Default::default()).await;
    let shared = Shared::new(config, resolved, certs)?;
    let core = Arc::new(Core::new(Arc::clone(&shared)));
    let (data, control) = (Shutdown::default(), Shutdown::default());
    tokio::spawn(Prober::default().run(Arc::clone(&shared), control.clone()));
    tokio::spawn(control::discovery::run(Arc::clone(&shared), control.clone()));
    tokio::spawn(control::outlier::run(Arc::clone(&shared), control.clone()));
    control::acme::load_stored(&shared);
    tokio::spawn(control::acme::run(Arc::clone(&shared), control.clone()));
    let exporters = Arc::new(Exporters::default());
    {
        let exporters = Arc::clone(&exporters);
        shared.on_install(move |shared, snapshot| {
            if let Some(tracer) = exporters.apply(snapshot.config.tracing.as_ref()) {
                shared.set_tracer(tracer);
            }
        });
    }
    tokio::spawn(control::pools::close_idle(Arc::clone(&shared), control.clone()));

    let fallback_addr = fallback[0].local_addr()?;
    tracing::info!(address = %fallback_addr, workers = worker_count, "HTTP/1.1 listener bound");
    let (mut https_addr, mut quic_addr) = (None, None);
    let mut secure_per_worker: Vec<Option<SecureWorker>> = (0..worker_count).map(|_| None).collect();
    if let Some(secure) = secure {
        let (tcp_address, udp_address) = (secure.tcp[0].local_addr()?, secure.udp[0].local_addr()?);
        tracing::info!(address = %tcp_address, "HTTPS listener bound (h2, http/1.1)");
        tracing::info!(address = %udp_address, "QUIC listener bound (h3)");
        for ((slot, tcp), udp) in secure_per_worker.iter_mut().zip(secure.tcp).zip(secure.udp) {
            *slot = Some(SecureWorker {
                tcp,
                udp,
                acceptor: secure.acceptor.clone(),
                quic: Arc::clone(&secure.quic),
                udp_port: udp_address.port(),
            });
        }
        shared.set_https_port(tcp_address.port());
        (https_addr, quic_addr) = (Some(tcp_address), Some(udp_address));
    }

    let mut workers = Vec::with_capacity(worker_count);
    for (index, (plain, secure)) in fallback.into_iter().zip(secure_per_worker).enumerate() {
        let (core, data) = (Arc::clone(&core), data.clone());
        workers.push(
            Worker::spawn(index, move || serve_worker(index, plain, secure, core, data))
                .context("cannot start a worker thread")?,
        );
    }

    let admin_addr = match (admin_listener, metrics_handle) {
        (Some(listener), Some(metrics)) => {
            let address = listener.local_addr()?;
            tracing::info!(%address, "admin listener bound (/metrics /health /ready /live /api)");
            let state = admin::State {
                metrics,
                shared: Arc::clone(&shared),
            };
            tokio::spawn(admin::serve(listener, state, control.clone()));
            Some(address)
        }
        _ => None,
    };
    shared.readiness().set_listening();
    Ok(Running {
        fallback_addr,
        https_addr,
        quic_addr,
        admin_addr,
        shared,
        data,
        control,
        workers,
        exporters,
    })
}

/// One worker's share of the TLS listeners.
struct SecureWorker {
    tcp: std::net::TcpListener,
    udp: std::net::UdpSocket,
    acceptor: TlsAcceptor,
    quic: Arc<QuicGroup>,
    udp_port: u16,
}

/// A worker thread's work: its listeners until shutdown, then the drain of its connections.
async fn serve_worker(
    index: usize,
    plain: std::net::TcpListener,
    secure: Option<SecureWorker>,
    core: Arc<Core>,
    data: Shutdown,
) {
    let plain = match tokio::net::TcpListener::from_std(plain) {
        Ok(listener) => http1::serve(listener, Arc::clone(&core), data.clone()),
        Err(error) => {
            tracing::error!("worker cannot serve its HTTP/1.1 socket: {error}");
            return;
        }
    };
    let secure = async {
        let Some(secure) = secure else { return };
        let https = match tokio::net::TcpListener::from_std(secure.tcp) {
            Ok(listener) => tls::serve(
                listener,
                secure.acceptor,
                Arc::clone(&core),
                secure.udp_port,
                data.clone(),
            ),
            Err(error) => {
                tracing::error!("worker cannot serve its HTTPS socket: {error}");
                return;
            }
        };
        tokio::join!(
            https,
            secure.quic.serve(index, secure.udp, Arc::clone(&core), data.clone())
        );
    };
    tokio::join!(plain, secure);
    // The accept loops stopped: shutdown began. Connections of this worker run on its runtime, which ends
    // with this function, so it waits here for the drain (bounded by the drain timeout).
    let drain_timeout = core.shared().snapshot().config.server.drain_timeout;
    data.finished(drain_timeout).await;
}

/// The TLS listeners' sockets: one TCP and one UDP socket per worker on `server.address`, plus the shared
/// TLS acceptor and QUIC endpoint identity.
struct Secure {
    tcp: Vec<std::net::TcpListener>,
    udp: Vec<std::net::UdpSocket>,
    acceptor: TlsAcceptor,
    quic: Arc<QuicGroup>,
}

/// Binds HTTPS on TCP and QUIC on UDP at `server.address`; with port 0, UDP takes TCP's port.
fn bind_secure(config: &Config, certs: &Arc<CertStore>, workers: usize) -> anyhow::Result<Secure> {
    let address = config.server.address;
    let tcp_config = certs.tcp_server_config().context("cannot build the HTTPS TLS config")?;
    let acceptor = TlsAcceptor::from(Arc::new(tcp_config));
    let quic = QuicGroup::new(config, certs, workers)?;
    // With port 0 the OS picks the TCP port and QUIC takes the same one, as Alt-Svc clients expect; that
    // UDP port may already be in use, so a few fresh ports are tried.
    let attempts = if address.port() == 0 { 16 } else { 1 };
    let mut attempt = 0;
    loop {
        attempt += 1;
        let shared = config.server.reuse_port;
        let tcp = runtime::bind_tcp_group(address, workers, shared)
            .with_context(|| format!("cannot bind server.address {address} (TCP)"))?;
        let udp_address = SocketAddr::new(address.ip(), tcp[0].local_addr()?.port());
        match QuicGroup::bind(udp_address, workers, shared, &config.quic) {
            Ok(udp) => {
                return Ok(Secure {
                    tcp,
                    udp,
                    acceptor,
                    quic,
                })
            }
            Err(error) if attempt < attempts && runtime::is_address_in_use(&error) => continue,
            Err(error) => return Err(error),
        }
    }
}
