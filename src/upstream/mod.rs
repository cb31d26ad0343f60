//! The proxy's side of each backend: connections (TCP, TLS), the protocol spoken (HTTP/1.1 driven by the
//! request's own task, or multiplexed HTTP/2), and per-worker pools, so that a worker only ever uses
//! connections its own runtime drives.

mod connect;
pub mod h1;
mod h2;
pub mod limits;
pub mod worker;

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::uri::Scheme;
use http::{Request, Response};
use hyper::client::conn::http2::SendRequest;
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::body::Body;
use crate::config::{BackendConfig, Timeouts, UpstreamProtocol};
use crate::error::ProxyError;

pub use connect::{any_certificate, Address, Stream};
pub use h1::Upgraded;

use connect::{ConnectError, Tls};
use limits::{Limits, Refusal, Slot};

/// What came back from a backend.
pub enum Answer {
    Response(Response<Body>),
    /// The backend switched protocols (101): the response to relay and the connection to tunnel.
    Upgraded(Response<Body>, Upgraded),
}

impl Answer {
    /// The response's status.
    pub fn status(&self) -> http::StatusCode {
        match self {
            Self::Response(response) | Self::Upgraded(response, _) => response.status(),
        }
    }
}

/// One exchange with a backend.
pub struct Sent {
    pub result: Result<Answer, ProxyError>,
    /// How long the backend took once it had the whole request.
    pub waited: Duration,
    /// The request, whole, when it never left the proxy (no connection could be had): it may go elsewhere
    /// even when its body could not be kept for a retry.
    pub unsent: Option<Request<Body>>,
}

impl Sent {
    fn new(result: Result<Answer, ProxyError>, waited: Duration) -> Self {
        Self {
            result,
            waited,
            unsent: None,
        }
    }

    fn unsent(error: ProxyError, started: Instant, request: Request<Body>) -> Self {
        Self {
            result: Err(error),
            waited: started.elapsed(),
            unsent: Some(request),
        }
    }
}

/// How one backend is reached.
pub struct Transport {
    address: Address,
    protocol: UpstreamProtocol,
    tls: Option<Tls>,
    /// For HTTP/1.1 connections with `protocol: auto` over TLS (pooled requests once the backend has
    /// chosen HTTP/1.1, protocol upgrades), which must not negotiate HTTP/2.
    tls_http1: Option<Tls>,
    /// What a `protocol: auto` backend over TLS chose by ALPN: [`ALPN_UNKNOWN`] until its first connection.
    alpn: AtomicU8,
    /// The circuit breaker on this backend's connections, over every worker.
    limits: Arc<Limits>,
    /// One set of pools per worker, and one for the control thread (health probes).
    pools: Box<[WorkerPools]>,
}

const ALPN_UNKNOWN: u8 = 0;
const ALPN_HTTP1: u8 = 1;
const ALPN_H2: u8 = 2;

/// How a request goes to an HTTP/2-capable backend.
enum Channel {
    H2(SendRequest<Body>),
    /// The backend chose HTTP/1.1 by ALPN: on this new connection, or on a pooled one.
    Http1(Option<Stream>),
}

#[derive(Debug)]
struct WorkerPools {
    h1: Arc<h1::Pool>,
    h2: h2::Pool,
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transport")
            .field("address", &self.address)
            .field("protocol", &self.protocol)
            .finish()
    }
}

impl Transport {
    /// The transport to `config`'s backend for `workers` worker threads. TLS files are read now; an error
    /// names the key under the backend (`tls.ca_file`) and the problem.
    pub fn new(config: &BackendConfig, workers: usize) -> Result<Self, (String, String)> {
        let host = config.authority.host().to_owned();
        let https = config.scheme == Scheme::HTTPS;
        let port = config.authority.port_u16().unwrap_or(if https { 443 } else { 80 });
        let ip = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>();
        let address = match (config.address, ip) {
            (Some(address), _) => Address::Resolved(address),
            (None, Ok(ip)) => Address::Resolved(std::net::SocketAddr::new(ip, port)),
            (None, Err(_)) => Address::Name(host.clone(), port),
        };
        let (tls, tls_http1) = match (&config.tls, https) {
            (Some(settings), true) => {
                let tls = Tls::new(settings, &host, config.protocol)?;
                let tls_http1 = (config.protocol == UpstreamProtocol::Auto)
                    .then(|| Tls::new(settings, &host, UpstreamProtocol::Http1))
                    .transpose()?;
                (Some(tls), tls_http1)
            }
            _ => (None, None),
        };
        let limits = Arc::new(Limits::default());
        Ok(Self {
            address,
            protocol: config.protocol,
            tls,
            tls_http1,
            alpn: AtomicU8::new(ALPN_UNKNOWN),
            pools: (0..=workers)
                .map(|_| WorkerPools {
                    h1: Arc::new(h1::Pool::new(Arc::clone(&limits))),
                    h2: h2::Pool::default(),
                })
                .collect(),
            limits,
        })
    }

    /// The circuit breaker on this backend's connections.
    pub fn limits(&self) -> &Arc<Limits> {
        &self.limits
    }

    /// Where connections go.
    pub fn address(&self) -> &Address {
        &self.address
    }

    /// The calling worker's pools; the last set belongs to every thread that is no worker.
    fn pools(&self) -> &WorkerPools {
        let control = self.pools.len() - 1;
        &self.pools[worker::current().map_or(control, |index| index.min(control))]
    }

    /// Closes idle connections older than `max_idle` (called from the control thread now and then).
    pub fn prune(&self, max_idle: Duration) {
        for pools in self.pools.iter() {
            pools.h1.prune(max_idle);
        }
    }

    /// Sends `request` (addressed to this backend) and waits for the response head, at most
    /// `timeouts.response_header` after the request has been sent in full: however slowly a client uploads,
    /// that time is never the backend's.
    pub async fn send(&self, backend: &str, request: Request<Body>, timeouts: &Timeouts) -> Sent {
        let upgrade = request.headers().contains_key(http::header::UPGRADE);
        let started = Instant::now();
        match self.protocol {
            UpstreamProtocol::H2 | UpstreamProtocol::H2c if upgrade => {
                let error = ProxyError::UpstreamFailed {
                    backend: backend.to_owned(),
                    cause: "a protocol upgrade needs an HTTP/1.1 backend".to_owned(),
                };
                Sent::new(Err(error), started.elapsed())
            }
            UpstreamProtocol::H2 | UpstreamProtocol::H2c => self.send_h2(backend, request, timeouts).await,
            UpstreamProtocol::Auto
                if self.tls.is_some() && !upgrade && self.alpn.load(Ordering::Relaxed) != ALPN_HTTP1 =>
            {
                self.send_h2(backend, request, timeouts).await
            }
            _ => self.send_h1(backend, request, None, timeouts).await,
        }
    }

    async fn connect(
        &self,
        backend: &str,
        timeouts: &Timeouts,
        http1_only: bool,
        slot: Option<Slot>,
    ) -> Result<Stream, ProxyError> {
        let tls = if http1_only {
            self.tls_http1.as_ref().or(self.tls.as_ref())
        } else {
            self.tls.as_ref()
        };
        connect::connect(&self.address, timeouts.connect, tls, slot)
            .await
            .map_err(|error| connect_error(backend, error))
    }

    /// A slot under the connection limit for a new connection: at once when one is free or an idle
    /// connection can give up its own, else after waiting (see [`Limits::acquire`]). Connections of the
    /// control thread (health probes) are not limited.
    async fn slot(&self, backend: &str, timeouts: &Timeouts) -> Result<Option<Slot>, ProxyError> {
        if worker::current().is_none() {
            return Ok(None);
        }
        if let Some(slot) = self.limits.try_acquire() {
            return Ok(Some(slot));
        }
        self.limits
            .acquire(timeouts.connect, || self.free_slot())
            .await
            .map(Some)
            .map_err(|refusal| circuit_open(backend, refusal))
    }

    /// A free slot, closing another worker's idle connection to make one if need be.
    fn free_slot(&self) -> Option<Slot> {
        self.limits.try_acquire().or_else(|| {
            self.pools
                .iter()
                .any(|pools| pools.h1.close_oldest())
                .then(|| self.limits.try_acquire())
                .flatten()
        })
    }

    /// An HTTP/1.1 connection: this worker's most recent idle one, or a new one under the connection limit
    /// (waiting, if allowed, for one to go idle or close).
    async fn h1_conn(&self, backend: &str, timeouts: &Timeouts) -> Result<h1::Conn, ProxyError> {
        let pool = &self.pools().h1;
        if let Some(conn) = pool.checkout(timeouts.pool_idle) {
            return Ok(conn);
        }
        if worker::current().is_none() {
            return self.connect(backend, timeouts, true, None).await.map(h1::Conn::new);
        }
        let found = match self.limits.try_acquire() {
            Some(slot) => Ok(slot),
            None => self
                .limits
                .acquire(timeouts.connect, || match pool.checkout(timeouts.pool_idle) {
                    Some(conn) => Some(Err(conn)),
                    None => self.free_slot().map(Ok),
                })
                .await
                .map_err(|refusal| circuit_open(backend, refusal))?,
        };
        match found {
            Ok(slot) => self
                .connect(backend, timeouts, true, Some(slot))
                .await
                .map(h1::Conn::new),
            Err(pooled) => Ok(pooled),
        }
    }

    async fn send_h1(&self, backend: &str, request: Request<Body>, fresh: Option<Stream>, timeouts: &Timeouts) -> Sent {
        let started = Instant::now();
        let (parts, body) = request.into_parts();
        let head = h1::EncodedHead::new(&parts.method, &parts.uri, &parts.headers, &body);
        let pool = &self.pools().h1;
        let replay = body.try_clone();
        let mut body = Some(body);
        let mut fresh = fresh;
        loop {
            let conn = match fresh.take() {
                Some(stream) => h1::Conn::new(stream),
                None => match self.h1_conn(backend, timeouts).await {
                    Ok(conn) => conn,
                    Err(error) => {
                        return match body.take() {
                            Some(body) => Sent::unsent(error, started, Request::from_parts(parts, body)),
                            None => Sent::new(Err(error), started.elapsed()),
                        }
                    }
                },
            };
            let reused = conn.reused;
            let Some(request_body) = body.take().or_else(|| replay.as_ref().and_then(Body::try_clone)) else {
                break Sent::new(Err(stale(backend)), started.elapsed());
            };
            let mut sent_at = None;
            let result = h1::exchange(
                conn,
                &head,
                request_body,
                timeouts.response_header,
                || sent_at = Some(Instant::now()),
                pool,
            )
            .await;
            let waited = sent_at.map_or_else(|| started.elapsed(), |at| at.elapsed());
            match result {
                Ok(h1::Answer::Response(response)) => {
                    break Sent::new(Ok(Answer::Response(response.map(response_body))), waited)
                }
                Ok(h1::Answer::Upgraded(response, io)) => {
                    let response = response.map(|()| Body::empty());
                    break Sent::new(Ok(Answer::Upgraded(response, io)), waited);
                }
                // A pooled connection the backend closed just as it was taken: the request never reached it,
                // so it goes once more, on a new connection, if it can be sent again.
                Err(h1::Failure::Closed { responded: false } | h1::Failure::Io { responded: false, .. })
                    if reused && replay.is_some() =>
                {
                    continue;
                }
                Err(failure) => break Sent::new(Err(h1_error(backend, failure, timeouts.response_header)), waited),
            }
        }
    }

    /// This worker's HTTP/2 connection, or a new one. Requests that find none wait for the one connection
    /// being made rather than each opening their own; at the connection limit, another worker's connection
    /// carries the request rather than none. A `protocol: auto` backend that chooses HTTP/1.1 by ALPN gets
    /// the new connection back as such, and HTTP/1.1 from then on.
    async fn channel(&self, backend: &str, timeouts: &Timeouts) -> Result<Channel, ProxyError> {
        let pool = &self.pools().h2;
        if let Some(sender) = pool.sender() {
            return Ok(Channel::H2(sender));
        }
        let _connecting = tokio::time::timeout(timeouts.connect, pool.connecting())
            .await
            .map_err(|_| ProxyError::ConnectTimeout {
                backend: backend.to_owned(),
            })?;
        if let Some(sender) = pool.sender() {
            return Ok(Channel::H2(sender));
        }
        let auto = self.protocol == UpstreamProtocol::Auto;
        if auto && self.alpn.load(Ordering::Relaxed) == ALPN_HTTP1 {
            return Ok(Channel::Http1(None));
        }
        if self.limits.is_full() {
            if let Some(sender) = self.pools.iter().find_map(|pools| pools.h2.sender()) {
                return Ok(Channel::H2(sender));
            }
        }
        let slot = self.slot(backend, timeouts).await?;
        let stream = self.connect(backend, timeouts, false, slot).await?;
        if auto {
            if !stream.is_h2() {
                self.alpn.store(ALPN_HTTP1, Ordering::Relaxed);
                return Ok(Channel::Http1(Some(stream)));
            }
            self.alpn.store(ALPN_H2, Ordering::Relaxed);
        }
        pool.handshake(stream, backend)
            .await
            .map(Channel::H2)
            .map_err(|error| ProxyError::ConnectFailed {
                backend: backend.to_owned(),
                cause: format!("HTTP/2 handshake failed: {error}"),
            })
    }

    async fn send_h2(&self, backend: &str, request: Request<Body>, timeouts: &Timeouts) -> Sent {
        let started = Instant::now();
        let mut sender = match self.channel(backend, timeouts).await {
            Ok(Channel::H2(sender)) => sender,
            Ok(Channel::Http1(fresh)) => return self.send_h1(backend, request, fresh, timeouts).await,
            Err(error) => return Sent::unsent(error, started, request),
        };
        let (sent, sending) = oneshot::channel();
        let request = request.map(|body| body.with_sent_signal(sent));
        let response = sender.send_request(request);
        tokio::pin!(response);
        let classify = |error: hyper::Error| h2_error(backend, &error);
        let sent_at = tokio::select! {
            response = &mut response => {
                let result = response.map(|r| Answer::Response(r.map(Body::from))).map_err(classify);
                return Sent::new(result, started.elapsed());
            }
            sent = sending => match sent {
                Ok(()) => Instant::now(),
                // A body that fails is never sent in full; the response future ends with its error instead.
                Err(_) => {
                    let result = response.await.map(|r| Answer::Response(r.map(Body::from))).map_err(classify);
                    return Sent::new(result, started.elapsed());
                }
            },
        };
        let result = match tokio::time::timeout(timeouts.response_header, response).await {
            Ok(response) => response.map(|r| Answer::Response(r.map(Body::from))).map_err(classify),
            Err(_) => Err(ProxyError::ResponseTimeout {
                backend: backend.to_owned(),
                after: timeouts.response_header,
            }),
        };
        Sent::new(result, sent_at.elapsed())
    }
}

/// A backend's HTTP/1.1 response body as the proxy's body: nothing when it ended with the head.
fn response_body(body: h1::ResponseBody) -> Body {
    if http_body::Body::is_end_stream(&body) {
        Body::empty()
    } else {
        Body::boxed(body)
    }
}

fn circuit_open(backend: &str, refusal: Refusal) -> ProxyError {
    ProxyError::CircuitOpen {
        backend: backend.to_owned(),
        limit: refusal.limit(),
    }
}

fn stale(backend: &str) -> ProxyError {
    ProxyError::UpstreamFailed {
        backend: backend.to_owned(),
        cause: "connection closed before the response".to_owned(),
    }
}

fn connect_error(backend: &str, error: ConnectError) -> ProxyError {
    let backend = backend.to_owned();
    match error {
        ConnectError::Timeout => ProxyError::ConnectTimeout { backend },
        ConnectError::Tcp(error) if is_local_exhaustion(&error) => ProxyError::LocalExhausted {
            backend,
            cause: error.to_string(),
        },
        ConnectError::Tcp(error) => ProxyError::ConnectFailed {
            backend,
            cause: io_cause(&error),
        },
        ConnectError::Tls(error) => ProxyError::ConnectFailed {
            backend,
            cause: format!("TLS handshake failed: {error}"),
        },
    }
}

/// Errors that say the proxy's own host is out of something (descriptors, ephemeral ports, buffers,
/// memory), not that the backend is unwell.
fn is_local_exhaustion(error: &std::io::Error) -> bool {
    // EMFILE, ENFILE, ENOBUFS and ENOMEM have no ErrorKind of their own on stable Rust.
    const EMFILE: i32 = 24;
    const ENFILE: i32 = 23;
    const ENOBUFS: i32 = 105;
    const ENOMEM: i32 = 12;
    matches!(
        error.kind(),
        std::io::ErrorKind::AddrNotAvailable | std::io::ErrorKind::OutOfMemory
    ) || matches!(error.raw_os_error(), Some(EMFILE | ENFILE | ENOBUFS | ENOMEM))
}

fn io_cause(error: &std::io::Error) -> String {
    match error.kind() {
        std::io::ErrorKind::ConnectionRefused => "connection refused".to_owned(),
        std::io::ErrorKind::ConnectionReset => "connection reset".to_owned(),
        std::io::ErrorKind::ConnectionAborted => "connection aborted".to_owned(),
        std::io::ErrorKind::BrokenPipe => "connection closed".to_owned(),
        _ => error.to_string(),
    }
}

fn h1_error(backend: &str, failure: h1::Failure, timeout: Duration) -> ProxyError {
    let backend = backend.to_owned();
    match failure {
        // The client's body failed: its own verdict (stalled, wrong length) if the proxy gave one.
        h1::Failure::Body(error) => error
            .downcast_ref::<ProxyError>()
            .cloned()
            .unwrap_or(ProxyError::ClientBodyFailed),
        h1::Failure::Io { error, .. } => ProxyError::UpstreamFailed {
            backend,
            cause: io_cause(&error),
        },
        h1::Failure::Closed { .. } => ProxyError::UpstreamFailed {
            backend,
            cause: "connection closed before the response".to_owned(),
        },
        h1::Failure::Protocol(cause) => ProxyError::UpstreamFailed {
            backend,
            cause: cause.to_owned(),
        },
        h1::Failure::Timeout => ProxyError::ResponseTimeout {
            backend,
            after: timeout,
        },
    }
}

fn h2_error(backend: &str, error: &hyper::Error) -> ProxyError {
    // The client's own body failing is not the backend's fault (see h1_error).
    let mut source = std::error::Error::source(error);
    while let Some(inner) = source {
        if let Some(client_error) = inner.downcast_ref::<ProxyError>() {
            return client_error.clone();
        }
        source = inner.source();
    }
    if error.is_user() {
        return ProxyError::ClientBodyFailed;
    }
    ProxyError::UpstreamFailed {
        backend: backend.to_owned(),
        cause: error.to_string(),
    }
}
