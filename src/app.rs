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
use crate::runtime::inherit::{self, Inherited, Listeners, Program};
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
    /// The data plane's TCP side: listeners and their connections, on the worker threads.
    tcp: Shutdown,
    /// The data plane's QUIC side, which a binary upgrade keeps running after the TCP side has stopped.
    quic: Shutdown,
    /// The QUIC endpoints' shared identity, when TLS is on.
    quic_group: Option<Arc<QuicGroup>>,
    /// Copies of every listening socket, for the next process in a binary upgrade.
    listeners: Listeners,
    /// This process's generation (0, or the previous process's flipped).
    generation: u8,
    /// The process this one took over from in an upgrade: while it still serves its QUIC connections,
    /// another upgrade would leave them unreachable, so it waits.
    previous_pid: Option<u32>,
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
        self.quic.begin();
        // One drain timeout for both sides, not one after the other.
        let (tcp, quic) = tokio::join!(self.tcp.drain(drain_timeout), self.quic.finished(drain_timeout));
        self.finish(tcp && quic).await
    }

    /// Stops the worker threads and the control plane once the data plane has drained.
    async fn finish(self, finished: bool) -> bool {
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

/// How long a new process started by an upgrade has to say it serves before it is stopped.
const UPGRADE_START_TIMEOUT: Duration = Duration::from_secs(60);

/// The new process of a binary upgrade, serving: its process ID and the link to it.
#[derive(Debug)]
pub struct Successor {
    pub pid: u32,
    link: tokio::net::UnixDatagram,
}

impl Running {
    /// Starts `program` with this process's listening sockets and waits until it serves. On any failure the
    /// new process is stopped and this one goes on as before; on success call [`Running::hand_over`].
    pub async fn upgrade(&self, program: &Program) -> anyhow::Result<Successor> {
        if let Some(pid) = self
            .previous_pid
            .filter(|pid| std::path::Path::new(&format!("/proc/{pid}")).exists())
        {
            anyhow::bail!(
                "the process this one replaced (pid {pid}) still serves its QUIC connections; upgrade again once it has exited"
            );
        }
        let sockets = self
            .listeners
            .duplicate()
            .context("cannot copy the listening sockets")?;
        let (mut child, link) = inherit::spawn_next(program, sockets, self.generation)?;
        let pid = child.id().unwrap_or_default();
        tracing::info!(pid, program = %program.path.display(), "upgrade: new process started");
        let link = tokio::net::UnixDatagram::from_std(link).context("cannot set up the upgrade link")?;
        let mut key = vec![inherit::TAG_KEY];
        key.extend_from_slice(self.quic_group.as_ref().map_or(&[][..], |group| group.key()));
        let ready = async {
            link.send(&key).await?;
            let mut message = [0u8; 16];
            loop {
                let length = link.recv(&mut message).await?;
                if length >= 1 && message[0] == inherit::TAG_READY {
                    return std::io::Result::Ok(());
                }
            }
        };
        let failure = tokio::select! {
            ready = ready => match ready {
                Ok(()) => return Ok(Successor { pid, link }),
                Err(error) => format!("the upgrade link failed: {error}"),
            },
            status = child.wait() => match status {
                Ok(status) => format!("the new process exited ({status}) before serving; its log says why"),
                Err(error) => format!("the new process could not be waited for: {error}"),
            },
            () = tokio::time::sleep(UPGRADE_START_TIMEOUT) => {
                format!("the new process did not serve within {UPGRADE_START_TIMEOUT:?}")
            }
        };
        if child.start_kill().is_ok() {
            let _ = child.wait().await;
        }
        anyhow::bail!("{failure}")
    }

    /// Gives the listeners to the successor: stops accepting on TCP and lets those connections finish as on
    /// shutdown; stops reading QUIC datagrams and serves this process's QUIC connections with what the
    /// successor passes on, until they have all closed or `server.drain_timeout` has passed; then stops.
    /// True if everything finished in time.
    pub async fn hand_over(self, successor: Successor) -> bool {
        let drain_timeout = self.shared.snapshot().config.server.drain_timeout;
        tracing::info!(
            pid = successor.pid,
            ?drain_timeout,
            "upgrade: the new process serves; this one finishes its TCP requests and keeps its QUIC connections until they close"
        );
        self.shared.readiness().set_draining();
        // The admin listener, the prober and the other control tasks are the new process's now.
        self.control.begin();
        self.tcp.begin_handover();
        let deadline = tokio::time::Instant::now() + drain_timeout;
        let quic_closed = async {
            let Some(group) = &self.quic_group else { return true };
            group.stop_receiving();
            let relay = {
                let (group, link) = (Arc::clone(group), successor.link);
                async move {
                    let mut message = vec![0u8; inherit::LINK_MESSAGE];
                    while let Ok(length) = link.recv(&mut message).await {
                        group.deliver(&message[..length]);
                    }
                }
            };
            let closed = async {
                let mut check = tokio::time::interval(Duration::from_millis(50));
                while group.open_connections() > 0 {
                    check.tick().await;
                }
            };
            tokio::select! {
                () = closed => true,
                () = relay => false,
                () = tokio::time::sleep_until(deadline) => false,
            }
        };
        let (tcp_finished, quic_closed) = tokio::join!(self.tcp.finished(drain_timeout), quic_closed);
        // What is still open past the drain timeout gets GOAWAY and a short linger, as on shutdown.
        self.quic.begin();
        let quic_finished = self.quic.finished(Duration::from_secs(1)).await;
        tracing::info!(quic_closed, "upgrade: this process is done");
        self.finish(tcp_finished && (quic_closed || quic_finished)).await
    }
}

/// Binds every listener (failing before serving anything if one cannot be bound), then serves.
/// With `certs`, HTTPS (TCP) and QUIC (UDP) listen on `server.address`.
pub async fn start(config: Config, certs: Option<Arc<CertStore>>) -> anyhow::Result<Running> {
    start_with(config, certs, None).await
}

/// [`start`], taking over the listening sockets of a previous process when a binary upgrade started this
/// one: the same sockets, so no connection attempt meets a closed port. Settings that would need other
/// sockets (addresses, `server.workers`) keep the inherited ones, with a warning.
pub async fn start_with(
    config: Config,
    certs: Option<Arc<CertStore>>,
    inherited: Option<Inherited>,
) -> anyhow::Result<Running> {
    let generation = inherited.as_ref().map_or(0, |i| i.generation);
    // Before anything resolves its metric handles (the QUIC endpoints do when they are built).
    let metrics_handle = if config.telemetry.metrics.enabled {
        Some(metrics::install().map_err(anyhow::Error::msg)?)
    } else {
        None
    };
    let (mut taken, link) = match inherited {
        Some(inherited) => (Some(inherited.listeners), Some(inherited.link)),
        None => (None, None),
    };
    let mut worker_count = config.workers();
    if let Some(taken) = &taken {
        if taken.fallback.is_empty() {
            anyhow::bail!("the previous process passed no HTTP/1.1 listener");
        }
        if taken.fallback.len() != worker_count {
            tracing::warn!(
                inherited = taken.fallback.len(),
                configured = worker_count,
                "server.workers needs a restart to change: the upgrade keeps the previous process's sockets"
            );
            worker_count = taken.fallback.len();
        }
        if certs.is_some() == taken.quic.is_empty() {
            anyhow::bail!("server.tls was turned on or off: that needs a restart, not an upgrade");
        }
    }
    let fallback = match taken.as_mut() {
        Some(taken) => std::mem::take(&mut taken.fallback),
        None => runtime::bind_tcp_group(config.server.fallback_address, worker_count, config.server.reuse_port)
            .with_context(|| format!("cannot bind server.fallback_address {}", config.server.fallback_address))?,
    };
    let secure = match &certs {
        Some(certs) => Some(match taken.as_mut() {
            Some(taken) => secure_from(
                &config,
                certs,
                std::mem::take(&mut taken.https),
                std::mem::take(&mut taken.quic),
                generation,
            )?,
            None => bind_secure(&config, certs, worker_count)?,
        }),
        None => None,
    };
    let admin_listener = if config.telemetry.metrics.enabled {
        let address = config.telemetry.metrics.address;
        match taken.as_mut().and_then(|taken| taken.admin.take()) {
            Some(listener) => Some(listener),
            None => Some(
                runtime::bind_tcp_std(address, false)
                    .with_context(|| format!("cannot bind telemetry.metrics.address {address}"))?,
            ),
        }
    } else {
        None
    };
    let mut listeners = Listeners {
        fallback: fallback
            .iter()
            .map(std::net::TcpListener::try_clone)
            .collect::<Result<_, _>>()?,
        admin: admin_listener
            .as_ref()
            .map(std::net::TcpListener::try_clone)
            .transpose()?,
        ..Listeners::default()
    };
    if let Some(secure) = &secure {
        listeners.https = secure
            .tcp
            .iter()
            .map(std::net::TcpListener::try_clone)
            .collect::<Result<_, _>>()?;
        listeners.quic = secure
            .udp
            .iter()
            .map(std::net::UdpSocket::try_clone)
            .collect::<Result<_, _>>()?;
        if let Some(link) = &link {
            secure
                .quic
                .set_previous(link.try_clone()?)
                .context("cannot use the upgrade link")?;
        }
    }
    let admin_listener = admin_listener.map(tokio::net::TcpListener::from_std).transpose()?;

    // Backends named by DNS start with the addresses their names have now.
    let resolved = crate::discovery::resolve_all(&config, &Default::default()).await;
    let shared = Shared::new(config, resolved, certs)?;
    let core = Arc::new(Core::new(Arc::clone(&shared)));
    let (tcp, quic, control) = (Shutdown::default(), Shutdown::default(), Shutdown::default());
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
    let quic_group = secure.as_ref().map(|secure| Arc::clone(&secure.quic));
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
        let (core, plane) = (
            Arc::clone(&core),
            Plane {
                tcp: tcp.clone(),
                quic: quic.clone(),
            },
        );
        workers.push(
            Worker::spawn(index, move || serve_worker(index, plain, secure, core, plane))
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
        tcp,
        quic,
        quic_group,
        listeners,
        generation,
        previous_pid: link.is_some().then(std::os::unix::process::parent_id),
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

/// The data plane's two sides, stopped apart in a binary upgrade.
struct Plane {
    tcp: Shutdown,
    quic: Shutdown,
}

/// A worker thread's work: its listeners until shutdown, then the drain of its connections.
async fn serve_worker(
    index: usize,
    plain: std::net::TcpListener,
    secure: Option<SecureWorker>,
    core: Arc<Core>,
    plane: Plane,
) {
    let plain = match tokio::net::TcpListener::from_std(plain) {
        Ok(listener) => http1::serve(listener, Arc::clone(&core), plane.tcp.clone()),
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
                plane.tcp.clone(),
            ),
            Err(error) => {
                tracing::error!("worker cannot serve its HTTPS socket: {error}");
                return;
            }
        };
        tokio::join!(
            https,
            secure
                .quic
                .serve(index, secure.udp, Arc::clone(&core), plane.quic.clone())
        );
    };
    tokio::join!(plain, secure);
    // The accept loops stopped: shutdown began. Connections of this worker run on its runtime, which ends
    // with this function, so it waits here for the drain (bounded by the drain timeout).
    let drain_timeout = core.shared().snapshot().config.server.drain_timeout;
    tokio::join!(plane.tcp.finished(drain_timeout), plane.quic.finished(drain_timeout));
}

/// The TLS listeners' sockets: one TCP and one UDP socket per worker on `server.address`, plus the shared
/// TLS acceptor and QUIC endpoint identity.
struct Secure {
    tcp: Vec<std::net::TcpListener>,
    udp: Vec<std::net::UdpSocket>,
    acceptor: TlsAcceptor,
    quic: Arc<QuicGroup>,
}

/// The TLS listeners from sockets a previous process passed on.
fn secure_from(
    config: &Config,
    certs: &Arc<CertStore>,
    tcp: Vec<std::net::TcpListener>,
    udp: Vec<std::net::UdpSocket>,
    generation: u8,
) -> anyhow::Result<Secure> {
    if tcp.len() != udp.len() {
        anyhow::bail!(
            "the previous process passed {} HTTPS and {} QUIC sockets",
            tcp.len(),
            udp.len()
        );
    }
    let tcp_config = certs.tcp_server_config().context("cannot build the HTTPS TLS config")?;
    Ok(Secure {
        acceptor: TlsAcceptor::from(Arc::new(tcp_config)),
        quic: QuicGroup::new(config, certs, udp.len(), generation)?,
        tcp,
        udp,
    })
}

/// Binds HTTPS on TCP and QUIC on UDP at `server.address`; with port 0, UDP takes TCP's port.
fn bind_secure(config: &Config, certs: &Arc<CertStore>, workers: usize) -> anyhow::Result<Secure> {
    let address = config.server.address;
    let tcp_config = certs.tcp_server_config().context("cannot build the HTTPS TLS config")?;
    let acceptor = TlsAcceptor::from(Arc::new(tcp_config));
    let quic = QuicGroup::new(config, certs, workers, 0)?;
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
