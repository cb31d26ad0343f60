//! The state every listener, the admin listener and the prober share: the current configuration snapshot
//! (swapped atomically by a reload), readiness, and the certificate store.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

use arc_swap::{ArcSwap, ArcSwapOption};
use tokio::sync::{watch, Notify};

use crate::config::{Config, ConfigError};
use crate::discovery::Resolved;
use crate::events::Events;
use crate::metrics::{self, GaugeGuard};
use crate::policy::CompressionStreams;
use crate::protocol::Protocol;
use crate::routing::Snapshot;
use crate::tls::CertStore;
use crate::trace::Tracer;

use super::clients::{ClientSlot, PerClient};

/// The running proxy's shared state.
#[derive(Debug)]
pub struct Shared {
    current: ArcSwap<Snapshot>,
    changed: watch::Sender<Arc<Snapshot>>,
    readiness: Readiness,
    certs: Option<Arc<CertStore>>,
    events: Arc<Events>,
    tracer: ArcSwapOption<Tracer>,
    connections: Connections,
    started: SystemTime,
    /// The configuration the process started with: the one its sockets were bound for.
    bound: Arc<Config>,
    /// Serialises reloads; the request path never takes it.
    pub(super) reloading: Mutex<()>,
    /// Called with each snapshot as it is installed, before a reload returns.
    hooks: Hooks,
    /// The endpoints DNS discovery found, which every snapshot is built with.
    pub(super) resolved: ArcSwap<Resolved>,
    /// Wakes DNS discovery early (a connect error).
    discovery_nudge: Notify,
    /// TCP client connections open (HTTP/1.1 and HTTPS listeners, every worker): `server.max_connections`.
    tcp_open: Arc<AtomicUsize>,
    /// Refusals at that limit are logged at most once a second.
    tcp_refusals: crate::logging::RateLimit,
    /// TCP and QUIC connections open per client address: `server.max_connections_per_client`.
    tcp_clients: PerClient,
    quic_clients: PerClient,
    /// Responses being compressed, over every worker: `server.max_compressed_streams`.
    compression: CompressionStreams,
    /// The HTTPS listener's bound port, for redirects from plain HTTP (0 until it is bound).
    https_port: std::sync::atomic::AtomicU16,
    /// Binary upgrades asked for through the admin API, for whoever runs them (the binary's main loop).
    upgrades: UpgradeRequests,
}

/// A binary upgrade asked for: answered with the new process's ID, or why there is none.
pub type UpgradeRequest = tokio::sync::oneshot::Sender<Result<u32, String>>;

/// The queue of upgrade requests; its receiving end is taken once, by what can run an upgrade.
#[derive(Debug)]
struct UpgradeRequests {
    sender: tokio::sync::mpsc::Sender<UpgradeRequest>,
    receiver: Mutex<Option<tokio::sync::mpsc::Receiver<UpgradeRequest>>>,
}

impl Default for UpgradeRequests {
    fn default() -> Self {
        let (sender, receiver) = tokio::sync::mpsc::channel(1);
        Self {
            sender,
            receiver: Mutex::new(Some(receiver)),
        }
    }
}

/// A TCP connection's places under `server.max_connections` and its client's share.
#[derive(Debug)]
pub struct TcpSlot {
    _total: super::Counted,
    _client: ClientSlot,
}

type Hook = Box<dyn Fn(&Shared, &Snapshot) + Send + Sync>;

#[derive(Default)]
struct Hooks(Mutex<Vec<Hook>>);

impl std::fmt::Debug for Hooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Hooks")
    }
}

impl Shared {
    /// State for a proxy starting with `config` and the endpoints DNS discovery `resolved`, serving `certs`
    /// when TLS is configured. Fails when a backend's TLS files cannot be used.
    pub fn new(config: Config, resolved: Resolved, certs: Option<Arc<CertStore>>) -> Result<Arc<Self>, ConfigError> {
        let events = Arc::new(Events::default());
        let snapshot = Arc::new(Snapshot::new(config, &resolved, &events)?);
        let bound = Arc::clone(&snapshot.config);
        let (changed, _) = watch::channel(Arc::clone(&snapshot));
        Ok(Arc::new(Self {
            current: ArcSwap::new(snapshot),
            changed,
            readiness: Readiness::default(),
            certs,
            events,
            tracer: ArcSwapOption::empty(),
            connections: Connections::default(),
            started: SystemTime::now(),
            bound,
            reloading: Mutex::new(()),
            hooks: Hooks::default(),
            resolved: ArcSwap::from_pointee(resolved),
            discovery_nudge: Notify::new(),
            tcp_open: Arc::default(),
            tcp_refusals: crate::logging::RateLimit::default(),
            tcp_clients: PerClient::default(),
            quic_clients: PerClient::default(),
            compression: CompressionStreams::default(),
            https_port: std::sync::atomic::AtomicU16::new(0),
            upgrades: UpgradeRequests::default(),
        }))
    }

    /// Asks for a binary upgrade and waits for its outcome: the new process's ID, or why there is none.
    pub async fn request_upgrade(&self) -> Result<u32, String> {
        let (reply, outcome) = tokio::sync::oneshot::channel();
        self.upgrades
            .sender
            .try_send(reply)
            .map_err(|_| "an upgrade is already under way".to_owned())?;
        outcome.await.unwrap_or_else(|_| {
            Err("this process does not run binary upgrades (only the quic-proxy binary does)".to_owned())
        })
    }

    /// The upgrade requests, for the one loop that runs them (`None` once taken).
    pub fn take_upgrade_requests(&self) -> Option<tokio::sync::mpsc::Receiver<UpgradeRequest>> {
        self.upgrades
            .receiver
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }

    /// The HTTPS listener's port, once bound.
    pub fn https_port(&self) -> Option<u16> {
        match self.https_port.load(Ordering::Relaxed) {
            0 => None,
            port => Some(port),
        }
    }

    pub fn set_https_port(&self, port: u16) {
        self.https_port.store(port, Ordering::Relaxed);
    }

    /// The tracer new requests record spans with, when tracing is on.
    pub fn tracer(&self) -> Option<Arc<Tracer>> {
        self.tracer.load_full()
    }

    /// Installs (or removes) the tracer; requests already traced keep theirs.
    pub fn set_tracer(&self, tracer: Option<Arc<Tracer>>) {
        self.tracer.store(tracer);
    }

    /// Recent health transitions, reloads and drains.
    pub fn events(&self) -> &Arc<Events> {
        &self.events
    }

    /// The configuration the process started with; settings that need new sockets keep these values.
    pub fn bound(&self) -> &Config {
        &self.bound
    }

    /// When the proxy started.
    pub fn started(&self) -> SystemTime {
        self.started
    }

    /// Counts an open client connection of `protocol` until the returned guard is dropped.
    pub fn connection_open(&self, protocol: Protocol) -> ConnectionGuard<'_> {
        let counter = self.connections.of(protocol);
        counter.fetch_add(1, Ordering::Relaxed);
        ConnectionGuard {
            counter,
            _metric: metrics::connection_open(protocol),
        }
    }

    /// Client connections open now, by protocol.
    pub fn connections_open(&self) -> [(Protocol, usize); 3] {
        Protocol::CONNECTIONS.map(|protocol| (protocol, self.connections.of(protocol).load(Ordering::Relaxed)))
    }

    /// A slot under `server.max_connections` for a TCP connection just accepted, or `None`: the caller
    /// closes it at once (counted, and logged at most once a second), so that a flood of connections runs
    /// into a bound of the proxy's choosing, well before the process runs out of file descriptors.
    pub fn admit_tcp(&self, peer: std::net::SocketAddr) -> Option<TcpSlot> {
        let snapshot = self.snapshot();
        let server = &snapshot.config.server;
        let limit = server.max_connections;
        let Some(total) = super::Counted::within(&self.tcp_open, limit) else {
            metrics::record_tcp_refused();
            if self.tcp_refusals.allow() {
                tracing::warn!(%peer, limit, "TCP connection refused: server.max_connections reached");
            }
            return None;
        };
        let client = self.admit_client(&self.tcp_clients, peer, "tcp", server.max_connections_per_client)?;
        Some(TcpSlot {
            _total: total,
            _client: client,
        })
    }

    /// A QUIC connection's place in its client's share, or `None`: the caller refuses it.
    pub fn admit_quic_client(&self, peer: std::net::SocketAddr) -> Option<ClientSlot> {
        let limit = self.snapshot().config.server.max_connections_per_client;
        self.admit_client(&self.quic_clients, peer, "quic", limit)
    }

    fn admit_client(
        &self,
        table: &PerClient,
        peer: std::net::SocketAddr,
        protocol: &'static str,
        limit: usize,
    ) -> Option<ClientSlot> {
        let admitted = table.admit(peer.ip(), limit);
        if admitted.is_none() {
            metrics::record_client_refused(protocol);
            if self.tcp_refusals.allow() {
                tracing::warn!(%peer, limit, protocol, "connection refused: server.max_connections_per_client reached for this client");
            }
        }
        admitted
    }

    /// Client addresses with a TCP connection open, and with a QUIC connection open.
    pub fn clients_connected(&self) -> (usize, usize) {
        (self.tcp_clients.clients(), self.quic_clients.clients())
    }

    /// Responses being compressed, against `server.max_compressed_streams`.
    pub fn compression(&self) -> &CompressionStreams {
        &self.compression
    }

    /// The current snapshot. A request holds the one it started with until it ends.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Notified with every new snapshot (the prober and the QUIC listeners follow reloads this way).
    pub fn subscribe(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.changed.subscribe()
    }

    /// The endpoints DNS discovery found.
    pub fn resolved(&self) -> Arc<Resolved> {
        self.resolved.load_full()
    }

    /// Asks DNS discovery to resolve again soon (a backend named by DNS refused a connection).
    pub fn nudge_discovery(&self) {
        self.discovery_nudge.notify_one();
    }

    /// Resolves when DNS discovery was asked to resolve again.
    pub async fn discovery_nudged(&self) {
        self.discovery_nudge.notified().await;
    }

    /// Whether the proxy should receive traffic.
    pub fn readiness(&self) -> &Readiness {
        &self.readiness
    }

    /// The serving certificate, when TLS is configured.
    pub fn certs(&self) -> Option<&Arc<CertStore>> {
        self.certs.as_ref()
    }

    /// Runs `hook` with the current snapshot now, and with every snapshot a reload installs, before the
    /// reload returns (for what must follow a reload at once, where a subscriber would lag).
    pub fn on_install(&self, hook: impl Fn(&Shared, &Snapshot) + Send + Sync + 'static) {
        hook(self, &self.snapshot());
        self.hooks
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Box::new(hook));
    }

    /// Makes `snapshot` current for new requests and tells the hooks and subscribers.
    pub(super) fn install(&self, snapshot: Arc<Snapshot>) {
        self.current.store(Arc::clone(&snapshot));
        for hook in self.hooks.0.lock().unwrap_or_else(PoisonError::into_inner).iter() {
            hook(self, &snapshot);
        }
        self.changed.send_replace(snapshot);
    }

    pub(super) fn lock_reloads(&self) -> std::sync::MutexGuard<'_, ()> {
        self.reloading.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Open client connections by protocol, in the order of [`Protocol::CONNECTIONS`].
#[derive(Debug, Default)]
struct Connections([AtomicUsize; 3]);

impl Connections {
    fn of(&self, protocol: Protocol) -> &AtomicUsize {
        let index = Protocol::CONNECTIONS.iter().position(|p| *p == protocol).unwrap_or(2);
        &self.0[index]
    }
}

/// One open client connection; counted until dropped.
pub struct ConnectionGuard<'a> {
    counter: &'a AtomicUsize,
    _metric: GaugeGuard,
}

impl Drop for ConnectionGuard<'_> {
    fn drop(&mut self) {
        self.counter.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Ready means: every listener is bound, the first round of health checks has finished, and the proxy is
/// not draining.
#[derive(Debug, Default)]
pub struct Readiness {
    listening: AtomicBool,
    draining: AtomicBool,
    first_probes_pending: AtomicUsize,
}

/// Why the proxy is not ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotReady {
    Starting,
    Draining,
    FirstHealthChecks,
}

impl Readiness {
    /// `Ok` when the proxy should receive traffic.
    pub fn check(&self) -> Result<(), NotReady> {
        if self.draining.load(Ordering::Relaxed) {
            Err(NotReady::Draining)
        } else if !self.listening.load(Ordering::Relaxed) {
            Err(NotReady::Starting)
        } else if self.first_probes_pending.load(Ordering::Relaxed) > 0 {
            Err(NotReady::FirstHealthChecks)
        } else {
            Ok(())
        }
    }

    /// Every listener is bound and serving.
    pub fn set_listening(&self) {
        self.listening.store(true, Ordering::Relaxed);
    }

    /// Shutdown began: load balancers should stop sending new connections.
    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    /// True once shutdown began.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// A backend's first health check is due before the proxy counts as ready.
    pub fn first_probe_pending(&self) {
        self.first_probes_pending.fetch_add(1, Ordering::Relaxed);
    }

    /// A backend's first health check finished (or its probing stopped before it did).
    pub fn first_probe_done(&self) {
        // Never below zero, whatever order probes start and stop in.
        let _ = self
            .first_probes_pending
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
    }

    /// True once every backend probed at start-up has been checked once.
    pub fn first_probes_done(&self) -> bool {
        self.first_probes_pending.load(Ordering::Relaxed) == 0
    }
}
