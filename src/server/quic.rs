//! The QUIC listener: quinn endpoints on UDP, HTTP/3 via h3, every request handed to the shared core.
//!
//! Lifecycle of a connection: `Incoming` (maybe answered with Retry, or refused over the connection
//! limit) -> handshake (0-RTT allowed only when configured) -> h3 connection -> one task per request
//! stream -> GOAWAY on shutdown, open requests finish, the connection closes.
//!
//! A request stream is split: the receive half feeds a bounded channel that is the request body the
//! core forwards; the send half writes the core's response. The receive half is always read to its end,
//! or stopped, so clients never see a reset for a request the proxy answered.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::Context as _;
use bytes::{Buf, Bytes, BytesMut};
use futures_util::FutureExt as _;
use h3::error::Code;
use h3::server::RequestStream;
use http::header::{self, HeaderMap};
use http::{Method, Request, Response};

use http_body_util::BodyExt as _;
use quinn::crypto::rustls::QuicServerConfig;
use quinn::{EndpointConfig, IdleTimeout, TransportConfig, VarInt, ZeroRttAccepted};
use tokio_util::task::TaskTracker;

use crate::body::{Body, BodySender, BoxError};
use crate::config::{Config, QuicConfig, RetryMode};
use crate::error::ProxyError;
use crate::logging::RateLimit;
use crate::metrics;
use crate::proxy::{ClientInfo, Core, Refused};
use crate::runtime::{Counted, Shutdown};
use crate::tls::CertStore;

use super::h3_transport::{self, BidiStream, Notes};
use super::quic_fields::Malformed;

/// Request bodies up to this size with a declared Content-Length are read completely before forwarding,
/// so a body that does not match its Content-Length is refused before any backend sees the request.
const PREREAD_LIMIT: u64 = 64 * 1024;

/// TLS sessions kept for resumption (each a few hundred bytes).
const TLS_SESSIONS: usize = 16_384;

/// The HTTP/3 application error code for a clean close (RFC 9114 8.1).
const H3_NO_ERROR: u32 = 0x100;

type SendHalf = RequestStream<h3_transport::SendStream<Bytes>, Bytes>;
type RecvHalf = RequestStream<h3_transport::RecvStream, Bytes>;

/// What the QUIC endpoints of every worker share: the endpoint identity (stateless reset key, connection ID
/// generator, Retry token key) and the counters the connection limit and the Retry threshold apply to.
pub struct QuicGroup {
    endpoint_config: EndpointConfig,
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
    /// The endpoint identity from config; without `quic.stateless_reset_key` the keys are random, but the
    /// same for every worker of this process.
    pub fn new(config: &Config, certs: &Arc<CertStore>) -> anyhow::Result<Arc<Self>> {
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
        let mut endpoint_config = EndpointConfig::new(Arc::new(ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &secret)));
        let cid_length = config.quic.connection_id_length;
        endpoint_config.cid_generator(move || Box::new(quinn_proto::RandomConnectionIdGenerator::new(cid_length)));
        let group = Arc::new(Self {
            endpoint_config,
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

    /// Serves QUIC on one worker's socket until shutdown; then sends GOAWAY, lets open requests finish and
    /// closes the endpoint. Follows reloads: new connections get the new transport settings.
    pub async fn serve(self: Arc<Self>, socket: std::net::UdpSocket, core: Arc<Core>, shutdown: Shutdown) {
        let mut changes = core.shared().subscribe();
        let endpoint = match self.endpoint(socket, &changes.borrow_and_update().config.quic) {
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

    fn endpoint(&self, socket: std::net::UdpSocket, quic: &QuicConfig) -> anyhow::Result<quinn::Endpoint> {
        let runtime = quinn::default_runtime().context("no async runtime for QUIC")?;
        quinn::Endpoint::new(
            self.endpoint_config.clone(),
            Some(self.server_config(quic)?),
            socket,
            runtime,
        )
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

/// What a connection's requests need from the configuration it was accepted under.
#[derive(Debug, Clone, Copy)]
struct Settings {
    header_read_timeout: Duration,
    client_body_timeout: Duration,
    max_header_bytes: u64,
    early_data: bool,
}

async fn serve_connection(
    incoming: quinn::Incoming,
    handshake: Option<Counted>,
    open: Counted,
    core: Arc<Core>,
    settings: Settings,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    let handshaken = async {
        let connecting = incoming.accept()?;
        anyhow::Ok(if settings.early_data {
            match connecting.into_0rtt() {
                Ok((connection, accepted)) => (connection, Handshake::pending(accepted)),
                Err(connecting) => (connecting.await?, Handshake::complete()),
            }
        } else {
            (connecting.await?, Handshake::complete())
        })
    };
    // Shutdown drains requests, not handshakes: one still in progress is abandoned.
    let handshaken = tokio::select! {
        handshaken = handshaken => handshaken,
        () = shutdown.begun() => return Ok(()),
    };
    metrics::record_quic_handshake(handshaken.is_ok());
    drop(handshake);
    let (connection, handshake) = handshaken?;
    let handshake = Arc::new(handshake);
    let shared = Arc::clone(core.shared());
    let _open = (open, shared.connection_open("h3"));
    let stats_source = connection.clone();
    let served = serve_h3(connection, handshake, core, settings, shutdown).await;
    metrics::record_quic_connection(&stats_source.stats());
    served
}

async fn serve_h3(
    connection: quinn::Connection,
    handshake: Arc<Handshake>,
    core: Arc<Core>,
    settings: Settings,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    let peer = connection.remote_address();
    let closer = connection.clone();
    let client = ClientInfo {
        peer: SocketAddr::new(peer.ip().to_canonical(), peer.port()),
        tls: true,
    };

    // The request streams pass a tee that checks each field section for what h3 lets through.
    let notes = Notes::default();
    let tee_limit = usize::try_from(settings.max_header_bytes)
        .unwrap_or(usize::MAX)
        .saturating_add(16);
    let mut h3 = h3::server::builder()
        .max_field_section_size(settings.max_header_bytes)
        .send_grease(true)
        .build::<_, Bytes>(h3_transport::Connection::new(connection, notes.clone(), tee_limit))
        .await?;
    let requests = TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            () = shutdown.begun() => {
                // GOAWAY: the client opens no new requests here; those already accepted run to the end,
                // then the connection closes without waiting for the client to hang up.
                h3.shutdown(1).await?;
                requests.close();
                requests.wait().await;
                // A finished response may still be in flight unacknowledged; closing now would discard it.
                // Give the client a few round trips to close first (it usually does, after GOAWAY).
                let linger = (closer.rtt() * 4).clamp(Duration::from_millis(200), Duration::from_secs(2));
                if tokio::time::timeout(linger, closer.closed()).await.is_err() {
                    closer.close(VarInt::from_u32(H3_NO_ERROR), b"shutdown");
                }
                return Ok(());
            }
            accepted = h3.accept() => accepted,
        };
        match accepted {
            Ok(Some(resolver)) => {
                let (core, handshake, notes) = (Arc::clone(&core), Arc::clone(&handshake), notes.clone());
                let header_read_timeout = settings.header_read_timeout;
                let body_timeout = settings.client_body_timeout;
                requests.spawn(async move {
                    match tokio::time::timeout(header_read_timeout, resolver.resolve_request()).await {
                        Ok(Ok((request, stream))) => {
                            let Some(claim) = notes.claim(stream.id()) else {
                                return;
                            };
                            let handshake = &handshake;
                            let request = Incoming {
                                request,
                                stream,
                                malformed: claim.malformed,
                                handshake,
                                body_timeout,
                            };
                            // A client that stops the response stream has given up: so does the proxy, and
                            // the upstream request is abandoned with everything it holds.
                            tokio::select! {
                                () = serve_request(request, &core, client) => {}
                                () = claim.stopped => {
                                    tracing::debug!(peer = %client.peer, "HTTP/3 request cancelled by the client");
                                }
                            }
                        }
                        // h3 has already answered: 431 for an oversized header section, H3_MESSAGE_ERROR else.
                        Ok(Err(error)) => {
                            tracing::debug!(peer = %client.peer, "HTTP/3 request refused: {error}")
                        }
                        // Dropping the half-read stream stops it and frees what it buffered.
                        Err(_) => tracing::debug!(
                            peer = %client.peer,
                            "HTTP/3 request head not received within {header_read_timeout:?}"
                        ),
                    }
                });
            }
            Ok(None) => return Ok(()),
            Err(error) if error.is_h3_no_error() => return Ok(()),
            Err(error) => return Err(error.into()),
        }
    }
}

/// A request stream whose head h3 has resolved, and what its task needs to know about it.
struct Incoming<'a> {
    request: Request<()>,
    stream: RequestStream<BidiStream<Bytes>, Bytes>,
    malformed: Option<Malformed>,
    handshake: &'a Handshake,
    body_timeout: Duration,
}

async fn serve_request(incoming: Incoming<'_>, core: &Core, client: ClientInfo) {
    let Incoming {
        request,
        stream,
        malformed,
        handshake,
        body_timeout,
    } = incoming;
    let (mut send, mut recv) = stream.split();
    let (parts, ()) = request.into_parts();
    let mut refusal = malformed.map(ProxyError::BadRequest);
    if !is_safe(&parts.method) && !handshake.is_complete() {
        refusal = Some(ProxyError::TooEarly);
    }
    let declared = match declared_length(&parts.headers) {
        Ok(declared) => declared,
        Err(error) => {
            refusal.get_or_insert(error);
            None
        }
    };

    let (body, pump) = match declared {
        // Refused: the body will never be read. Say so with the HTTP/3 code for "nothing wrong", rather
        // than the transport's default, which clients report as a reset.
        _ if refusal.is_some() => {
            recv.stop_sending(Code::H3_NO_ERROR);
            (Body::empty(), None)
        }
        Some(length) if length <= PREREAD_LIMIT => match preread(&mut recv, length, body_timeout).await {
            Ok(body) => (body, None),
            Err(error) => {
                refusal = Some(error);
                (Body::empty(), None)
            }
        },
        None => match peek(&mut recv) {
            Peek::Ended => (Body::empty(), None),
            Peek::First(first) => {
                let (tx, channel) = Body::channel(declared);
                (channel, Some(pump_body(recv, tx, declared, first, body_timeout)))
            }
        },
        Some(_) => {
            let (tx, channel) = Body::channel(declared);
            (channel, Some(pump_body(recv, tx, declared, None, body_timeout)))
        }
    };
    let mut request = Request::from_parts(parts, body);
    if let Some(error) = refusal {
        request.extensions_mut().insert(Refused(error));
    }
    let respond = async {
        let response = core.handle(request, client).await;
        if let Err(error) = send_response(&mut send, response).await {
            tracing::debug!(peer = %client.peer, "HTTP/3 response not completed: {error}");
        }
    };
    match pump {
        Some(pump) => {
            tokio::join!(pump, respond);
        }
        None => respond.await,
    }
}

/// Whether the TLS handshake has completed: before that, requests arrive as 0-RTT data that an attacker
/// could replay, so only safe methods are served.
struct Handshake {
    /// Fulfilled by quinn's connection driver the moment the handshake completes; `None` once seen.
    pending: Mutex<Option<ZeroRttAccepted>>,
}

impl Handshake {
    fn complete() -> Self {
        Self {
            pending: Mutex::new(None),
        }
    }

    fn pending(accepted: ZeroRttAccepted) -> Self {
        Self {
            pending: Mutex::new(Some(accepted)),
        }
    }

    fn is_complete(&self) -> bool {
        let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(accepted) = pending.as_mut() else {
            return true;
        };
        // Polled in place, never awaited: the answer is what quinn knows right now.
        if accepted.now_or_never().is_some() {
            *pending = None;
            return true;
        }
        false
    }
}

fn is_safe(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

fn declared_length(headers: &HeaderMap) -> Result<Option<u64>, ProxyError> {
    let mut declared = None;
    for value in headers.get_all(header::CONTENT_LENGTH) {
        let length = value
            .to_str()
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
            .ok_or(ProxyError::BadRequest("invalid Content-Length"))?;
        if declared.is_some_and(|d| d != length) {
            return Err(ProxyError::BadRequest("conflicting Content-Length values"));
        }
        declared = Some(length);
    }
    Ok(declared)
}

const LENGTH_MISMATCH: ProxyError = ProxyError::BadRequest("request body does not match its Content-Length");

/// What a request stream holds right after its head, looked at without waiting.
enum Peek {
    /// The client finished the stream with the head: there is no body.
    Ended,
    /// A body may follow; here is its first chunk if it already arrived.
    First(Option<Bytes>),
}

/// Tells a request without a body (HEADERS with FIN) from one whose body follows, without waiting,
/// so that bodiless requests are forwarded with no body at all instead of an empty chunked one.
fn peek(recv: &mut RecvHalf) -> Peek {
    match std::future::poll_fn(|cx| recv.poll_recv_data(cx)).now_or_never() {
        Some(Ok(None)) => Peek::Ended,
        Some(Ok(Some(mut chunk))) => Peek::First(Some(chunk.copy_to_bytes(chunk.remaining()))),
        // Not yet known, or a stream error that the pump will meet again and report.
        Some(Err(_)) | None => Peek::First(None),
    }
}

/// Reads a small body completely and checks it against its Content-Length before anything is forwarded.
/// Each wait for more of it is bounded by `server.client_body_timeout`.
async fn preread(recv: &mut RecvHalf, length: u64, body_timeout: Duration) -> Result<Body, ProxyError> {
    let stalled = |recv: &mut RecvHalf| {
        recv.stop_sending(Code::H3_REQUEST_CANCELLED);
        ProxyError::ClientBodyTimeout(body_timeout)
    };
    let mut buffer = BytesMut::with_capacity(usize::try_from(length).unwrap_or(0));
    loop {
        let Ok(next) = tokio::time::timeout(body_timeout, recv.recv_data()).await else {
            return Err(stalled(recv));
        };
        match next {
            Ok(Some(mut chunk)) => {
                if (buffer.len() + chunk.remaining()) as u64 > length {
                    recv.stop_sending(Code::H3_MESSAGE_ERROR);
                    return Err(LENGTH_MISMATCH);
                }
                buffer.extend_from_slice(&chunk.copy_to_bytes(chunk.remaining()));
            }
            Ok(None) => break,
            Err(_) => return Err(ProxyError::BadRequest("request stream failed")),
        }
    }
    if buffer.len() as u64 != length {
        return Err(LENGTH_MISMATCH);
    }
    let Ok(trailers) = tokio::time::timeout(body_timeout, end_of_request(recv)).await else {
        return Err(stalled(recv));
    };
    Ok(Body::complete(buffer.freeze(), trailers?))
}

/// What ends a request stream once its DATA frames are over: its trailers, if any, and then the end of the
/// stream itself. Anything after the trailers (DATA, a second HEADERS) is malformed (RFC 9114 4.1), and the
/// request is refused rather than passed on as complete.
async fn end_of_request(recv: &mut RecvHalf) -> Result<Option<HeaderMap>, ProxyError> {
    const AFTER_TRAILERS: ProxyError = ProxyError::BadRequest("frames after the request's trailers");
    let failed = |_| ProxyError::BadRequest("request stream failed");
    let Some(trailers) = recv.recv_trailers().await.map_err(failed)? else {
        return Ok(None);
    };
    let more_data = recv.recv_data().await.map_err(failed)?.is_some();
    if more_data || recv.recv_trailers().await.map_err(failed)?.is_some() {
        recv.stop_sending(Code::H3_FRAME_UNEXPECTED);
        return Err(AFTER_TRAILERS);
    }
    Ok(Some(trailers))
}

/// Streams the request body (after `first`, a chunk already read) into the channel, checking it against
/// Content-Length as it goes, and ends it only once the stream has ended properly. Stops, and stops the
/// stream, as soon as the core drops the body (the backend answered without it, or it stalled), so a
/// silent client never keeps this task alive.
async fn pump_body(
    mut recv: RecvHalf,
    tx: BodySender,
    declared: Option<u64>,
    mut first: Option<Bytes>,
    body_timeout: Duration,
) {
    let mut received = 0u64;
    loop {
        let next = match first.take() {
            Some(data) => Ok(Some(data)),
            None => tokio::select! {
                next = recv.recv_data() => next.map(|chunk| chunk.map(|mut c| c.copy_to_bytes(c.remaining()))),
                () = tx.closed() => {
                    recv.stop_sending(Code::H3_NO_ERROR);
                    return;
                }
            },
        };
        match next {
            Ok(Some(data)) => {
                received += data.len() as u64;
                if declared.is_some_and(|length| received > length) {
                    recv.stop_sending(Code::H3_MESSAGE_ERROR);
                    tx.fail(LENGTH_MISMATCH).await;
                    return;
                }
                if tx.data(data).await.is_err() {
                    // The core stopped reading: the backend answered without the rest of the body.
                    recv.stop_sending(Code::H3_NO_ERROR);
                    return;
                }
            }
            Ok(None) => break,
            Err(error) => {
                tx.fail(error).await;
                return;
            }
        }
    }
    if declared.is_some_and(|length| received != length) {
        tx.fail(LENGTH_MISMATCH).await;
        return;
    }
    let ended = tokio::select! {
        ended = tokio::time::timeout(body_timeout, end_of_request(&mut recv)) => ended,
        () = tx.closed() => return,
    };
    match ended {
        Ok(Ok(Some(trailers))) => tx.trailers(trailers).await,
        Ok(Ok(None)) => tx.finish().await,
        Ok(Err(error)) => tx.fail(error).await,
        Err(_) => {
            recv.stop_sending(Code::H3_REQUEST_CANCELLED);
            tx.fail(ProxyError::ClientBodyTimeout(body_timeout)).await;
        }
    }
}

/// Writes the core's response on the stream: head, data, trailers, then FIN.
async fn send_response(send: &mut SendHalf, response: Response<Body>) -> Result<(), BoxError> {
    let (parts, mut body) = response.into_parts();
    send.send_response(Response::from_parts(parts, ())).await?;
    while let Some(frame) = body.frame().await {
        let frame = match frame {
            Ok(frame) => frame,
            Err(error) => {
                send.stop_stream(Code::H3_INTERNAL_ERROR);
                return Err(error);
            }
        };
        match frame.into_data() {
            Ok(data) => send.send_data(data).await?,
            Err(frame) => {
                if let Ok(trailers) = frame.into_trailers() {
                    send.send_trailers(trailers).await?;
                    break;
                }
            }
        }
    }
    send.finish().await?;
    Ok(())
}
