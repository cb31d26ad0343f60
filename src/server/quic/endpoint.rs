//! The QUIC endpoints: one per worker, on its own SO_REUSEPORT socket, sharing one identity (stateless
//! reset key, connection-ID key, Retry token key, TLS session cache) and the counters that the
//! connection limit and the Retry threshold apply to. Each worker's connection IDs name it, and its socket
//! hands datagrams for other workers' (or, after a binary upgrade, the previous process's) connections to
//! where they belong (`handoff.rs`). The accept loop refuses connections over
//! `quic.max_connections`, answers with Retry when unvalidated handshakes pass the threshold (or always),
//! and hands every other connection to its own task (`connection.rs`). Reloads rebuild the server config
//! whole, for new connections.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use anyhow::Context as _;
use quinn::crypto::rustls::QuicServerConfig;
use quinn::{EndpointConfig, IdleTimeout, TransportConfig, VarInt};

use super::connection::{serve_connection, Settings};
use super::handoff::{CidCodec, HandOff, WorkerCids};
use crate::config::{Config, QuicConfig, RetryMode};
use crate::logging::RateLimit;
use crate::metrics;
use crate::proxy::Core;
use crate::runtime::{Counted, Shutdown};
use crate::tls::CertStore;

impl std::fmt::Debug for QuicGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuicGroup")
            .field("generation", &self.generation)
            .field("open", &self.open)
            .finish_non_exhaustive()
    }
}

/// TLS sessions kept for resumption (each a few hundred bytes).
const TLS_SESSIONS: usize = 16_384;

/// What the QUIC endpoints of every worker share: the endpoint identity (stateless reset key, connection ID
/// key, Retry token key), the queues that hand packets to the worker owning their connection, and the
/// counters the connection limit and the Retry threshold apply to.
pub struct QuicGroup {
    endpoint_config: EndpointConfig,
    cids: Arc<CidCodec>,
    /// The key the endpoint identity derives from, handed to the next process in a binary upgrade.
    secret: Vec<u8>,
    /// This process's generation (0 or 1), which its connection IDs carry.
    generation: u8,
    /// Where a datagram goes when it reached the wrong socket: another worker, or the previous process.
    handoff: Arc<HandOff>,
    token_key: Arc<dyn quinn::crypto::HandshakeTokenKey>,
    certs: Arc<CertStore>,
    /// TLS sessions for resumption and 0-RTT, shared so that a ticket is good on every worker and across
    /// reloads (which rebuild the TLS config).
    sessions: Arc<dyn rustls::server::StoresServerSessions>,
    /// Connections accepted and not yet closed, over every worker.
    open: Arc<AtomicUsize>,
    /// Unvalidated handshakes in progress, over every worker, counted from the moment they are accepted.
    handshaking: Arc<AtomicUsize>,
    /// Refusals at `quic.max_connections` are logged at most once a second.
    refusals: RateLimit,
}

impl QuicGroup {
    /// The endpoint identity from config for `workers` workers; without `quic.stateless_reset_key` the keys
    /// are random, but the same for every worker of this process.
    pub fn new(config: &Config, certs: &Arc<CertStore>, workers: usize, generation: u8) -> anyhow::Result<Arc<Self>> {
        let secret = match &config.quic_secret {
            Some(secret) => secret.clone(),
            None => {
                let mut random = vec![0u8; 32];
                ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut random)
                    .map_err(|_| anyhow::anyhow!("no randomness for the QUIC keys"))?;
                random
            }
        };
        let token_key = ring::hkdf::Salt::new(ring::hkdf::HKDF_SHA256, b"quic-proxy retry tokens").extract(&secret);
        let endpoint_config = EndpointConfig::new(Arc::new(ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &secret)));
        let cids = Arc::new(CidCodec::new(&secret, config.quic.connection_id_length)?);
        let handoff = HandOff::new(Arc::clone(&cids), workers, generation);
        let group = Arc::new(Self {
            endpoint_config,
            cids,
            secret,
            generation,
            handoff,
            token_key: Arc::new(token_key),
            certs: Arc::clone(certs),
            sessions: rustls::server::ServerSessionMemoryCache::new(TLS_SESSIONS),
            open: Arc::default(),
            handshaking: Arc::default(),
            refusals: RateLimit::default(),
        });
        // A bad transport setting stops start-up here rather than in a worker.
        group.server_config(&config.quic)?;
        Ok(group)
    }

    /// The key the QUIC identity derives from (the next process in an upgrade takes it over).
    pub fn key(&self) -> &[u8] {
        &self.secret
    }

    /// QUIC connections open, over every worker.
    pub fn open_connections(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// The previous process's link: datagrams for its connections go there (see `handoff.rs`).
    pub fn set_previous(&self, link: std::os::unix::net::UnixDatagram) -> io::Result<()> {
        self.handoff.set_previous(link)
    }

    /// A newer process reads the sockets from now on: stop reading them, keep sending.
    pub fn stop_receiving(&self) {
        self.handoff.stop_receiving();
    }

    /// A datagram the newer process passed over the link, for one of this process's connections.
    pub fn deliver(&self, message: &[u8]) {
        self.handoff.deliver(message);
    }

    /// The server side of the QUIC config: TLS, Retry token key and transport, rebuilt whole on each reload
    /// (quinn replaces the server config as one piece).
    fn server_config(&self, quic: &QuicConfig) -> anyhow::Result<quinn::ServerConfig> {
        let rustls_config = self
            .certs
            .quic_server_config(quic.early_data, Arc::clone(&self.sessions))
            .context("cannot build the QUIC TLS config")?;
        let crypto = QuicServerConfig::try_from(rustls_config).context("cannot build the QUIC TLS config")?;
        let mut server_config = quinn::ServerConfig::new(Arc::new(crypto), Arc::clone(&self.token_key));
        server_config.transport_config(Arc::new(transport(quic)?));
        Ok(server_config)
    }

    /// Binds one UDP socket per worker on `address` (SO_REUSEPORT when more than one, or when `shared` with
    /// other processes).
    pub fn bind(
        address: SocketAddr,
        count: usize,
        shared: bool,
        quic: &QuicConfig,
    ) -> anyhow::Result<Vec<std::net::UdpSocket>> {
        let mut address = address;
        let mut sockets = Vec::with_capacity(count);
        for index in 0..count {
            // Only the first socket checks that nobody else holds the address; the others join it.
            let socket = bind_udp(address, quic, count > 1 || shared, shared || index > 0)
                .with_context(|| format!("cannot bind server.address {address} (UDP)"))?;
            // Later sockets join the first one's port.
            address = socket.local_addr()?;
            sockets.push(socket);
        }
        Ok(sockets)
    }

    /// Serves QUIC on worker `worker`'s socket until shutdown; then sends GOAWAY, lets open requests finish
    /// and closes the endpoint. Follows reloads: new connections get the new transport settings.
    pub async fn serve(
        self: Arc<Self>,
        worker: usize,
        socket: std::net::UdpSocket,
        core: Arc<Core>,
        shutdown: Shutdown,
    ) {
        let mut changes = core.shared().subscribe();
        let endpoint = match self.endpoint(worker, socket, &changes.borrow_and_update().config.quic) {
            Ok(endpoint) => endpoint,
            Err(error) => {
                tracing::error!("QUIC endpoint not started: {error:#}");
                return;
            }
        };
        let follower = {
            let (endpoint, group, shutdown) = (endpoint.clone(), Arc::clone(&self), shutdown.clone());
            async move {
                loop {
                    tokio::select! {
                        () = shutdown.begun() => return,
                        changed = changes.changed() => if changed.is_err() { return },
                    }
                    let quic = changes.borrow_and_update().config.quic.clone();
                    match group.server_config(&quic) {
                        Ok(config) => endpoint.set_server_config(Some(config)),
                        Err(error) => tracing::error!("QUIC settings not applied: {error:#}"),
                    }
                }
            }
        };
        tokio::join!(follower, accept_loop(endpoint.clone(), self, core, shutdown));
        // Connections close themselves once their requests finish after GOAWAY; the drain timeout bounds it.
        endpoint.wait_idle().await;
    }

    /// Worker `worker`'s endpoint: its connection IDs name it, and its socket takes the packets other
    /// workers' sockets received for its connections.
    fn endpoint(
        &self,
        worker: usize,
        socket: std::net::UdpSocket,
        quic: &QuicConfig,
    ) -> anyhow::Result<quinn::Endpoint> {
        let runtime = quinn::default_runtime().context("no async runtime for QUIC")?;
        let socket = runtime.wrap_udp_socket(socket).context("cannot use the UDP socket")?;
        let socket = self
            .handoff
            .socket(worker, socket)
            .with_context(|| format!("worker {worker} has no hand-off queue"))?;
        let mut endpoint_config = self.endpoint_config.clone();
        let (cids, generation) = (Arc::clone(&self.cids), self.generation);
        endpoint_config.cid_generator(move || Box::new(WorkerCids::new(Arc::clone(&cids), worker, generation)));
        quinn::Endpoint::new_with_abstract_socket(endpoint_config, Some(self.server_config(quic)?), socket, runtime)
            .context("cannot start the QUIC endpoint")
    }
}

fn transport(quic: &QuicConfig) -> anyhow::Result<TransportConfig> {
    let varint = |value: u64, key: &str| VarInt::from_u64(value).with_context(|| format!("quic.{key} is too large"));
    let mut transport = TransportConfig::default();
    transport
        .max_concurrent_bidi_streams(VarInt::from_u32(quic.max_concurrent_streams))
        // The peer's control and QPACK streams; HTTP/3 needs no more.
        .max_concurrent_uni_streams(VarInt::from_u32(3))
        .max_idle_timeout(Some(
            IdleTimeout::try_from(quic.idle_timeout).context("quic.idle_timeout is too large")?,
        ))
        .stream_receive_window(varint(quic.stream_receive_window, "stream_receive_window")?)
        .receive_window(varint(quic.receive_window, "receive_window")?)
        .send_window(quic.receive_window);
    Ok(transport)
}

/// A UDP socket with explicit buffer sizes; warns when the kernel grants less than asked.
fn bind_udp(address: SocketAddr, quic: &QuicConfig, reuse_port: bool, shared: bool) -> io::Result<std::net::UdpSocket> {
    let socket = crate::runtime::bind_udp(address, reuse_port, shared)?;
    let asked = |bytes: u64| usize::try_from(bytes).unwrap_or(usize::MAX);
    if let Err(error) = socket.set_recv_buffer_size(asked(quic.socket_receive_buffer)) {
        tracing::warn!("cannot set the UDP receive buffer: {error}");
    }
    if let Err(error) = socket.set_send_buffer_size(asked(quic.socket_send_buffer)) {
        tracing::warn!("cannot set the UDP send buffer: {error}");
    }
    // Linux reports twice the granted size (it counts bookkeeping); halve it to compare with the request.
    let granted = |size: io::Result<usize>| size.map(|s| s as u64 / 2).unwrap_or(0);
    for (name, wanted, got, sysctl) in [
        (
            "receive",
            quic.socket_receive_buffer,
            granted(socket.recv_buffer_size()),
            "net.core.rmem_max",
        ),
        (
            "send",
            quic.socket_send_buffer,
            granted(socket.send_buffer_size()),
            "net.core.wmem_max",
        ),
    ] {
        if got < wanted {
            tracing::warn!(
                wanted,
                granted = got,
                "the kernel capped the UDP {name} buffer; raise {sysctl} for high throughput"
            );
        }
    }
    Ok(socket.into())
}

async fn accept_loop(endpoint: quinn::Endpoint, group: Arc<QuicGroup>, core: Arc<Core>, shutdown: Shutdown) {
    loop {
        let incoming = tokio::select! {
            () = shutdown.begun() => return,
            incoming = endpoint.accept() => match incoming {
                Some(incoming) => incoming,
                None => return,
            },
        };
        let snapshot = core.shared().snapshot();
        let quic = &snapshot.config.quic;
        let Some(open) = Counted::within(&group.open, quic.max_connections) else {
            if group.refusals.allow() {
                tracing::warn!(peer = %incoming.remote_address(), limit = quic.max_connections, "QUIC connection refused: quic.max_connections reached");
            }
            incoming.refuse();
            metrics::record_quic_refused();
            continue;
        };
        let validated = incoming.remote_address_validated();
        if !validated && incoming.may_retry() && wants_retry(quic, &group) {
            match incoming.retry() {
                Ok(()) => metrics::record_quic_retry(),
                Err(error) => tracing::debug!("Retry not sent: {error}"),
            }
            continue;
        }
        // Counted here, before the connection's task runs, so that a burst of Initials read in one go
        // sees every handshake the loop already let through.
        let handshake = (!validated).then(|| Counted::new(&group.handshaking));
        let settings = Settings {
            header_read_timeout: snapshot.config.server.header_read_timeout,
            client_body_timeout: snapshot.config.server.client_body_timeout,
            max_header_bytes: quic.max_header_bytes,
            early_data: quic.early_data,
        };
        let (core, drain) = (Arc::clone(&core), shutdown.clone());
        shutdown.spawn(async move {
            let peer = incoming.remote_address();
            if let Err(error) = serve_connection(incoming, handshake, open, core, settings, drain).await {
                tracing::debug!(%peer, "QUIC connection ended: {error:#}");
            }
        });
    }
}

fn wants_retry(quic: &QuicConfig, group: &QuicGroup) -> bool {
    match quic.retry {
        RetryMode::Always => true,
        RetryMode::Auto => group.handshaking.load(Ordering::Relaxed) >= quic.retry_threshold,
    }
}
