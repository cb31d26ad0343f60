//! The proxy's side of each backend: connections (TCP, TLS), the protocol spoken (HTTP/1.1 driven by the
//! request's own task, or multiplexed HTTP/2), and per-worker pools, so that a worker only ever uses
//! connections its own runtime drives.

mod connect;
pub mod h1;
mod h2;

use std::sync::Arc;
use std::time::Duration;

use http::uri::Scheme;
use http::{Request, Response};
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::body::Body;
use crate::config::{BackendConfig, Timeouts, UpstreamProtocol};
use crate::error::ProxyError;
use crate::runtime::workers;

pub use connect::Stream;
pub use h1::Upgraded;

use connect::{ConnectError, Tls};

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

/// How one backend is reached.
pub struct Transport {
    host: String,
    port: u16,
    protocol: UpstreamProtocol,
    tls: Option<Tls>,
    /// For protocol upgrades with `protocol: auto` over TLS, which must not negotiate HTTP/2.
    tls_http1: Option<Tls>,
    /// One set of pools per worker, and one for the control thread (health probes).
    pools: Box<[WorkerPools]>,
}

#[derive(Debug, Default)]
struct WorkerPools {
    h1: Arc<h1::Pool>,
    h2: h2::Pool,
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transport")
            .field("host", &self.host)
            .field("port", &self.port)
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
        Ok(Self {
            host,
            port,
            protocol: config.protocol,
            tls,
            tls_http1,
            pools: (0..=workers).map(|_| WorkerPools::default()).collect(),
        })
    }

    /// The calling worker's pools; the last set belongs to every thread that is no worker.
    fn pools(&self) -> &WorkerPools {
        let control = self.pools.len() - 1;
        &self.pools[workers::current().map_or(control, |index| index.min(control))]
    }

    /// Closes idle connections older than `max_idle` (called from the control thread now and then).
    pub fn prune(&self, max_idle: Duration) {
        for pools in self.pools.iter() {
            pools.h1.prune(max_idle);
        }
    }

    /// Sends `request` (addressed to this backend) and waits for the response head, at most
    /// `timeouts.response_header` after the request has been sent in full: however slowly a client uploads,
    /// that time is never the backend's. Returns the answer and how long the backend took once it had the
    /// whole request.
    pub async fn send(
        &self,
        backend: &str,
        request: Request<Body>,
        timeouts: &Timeouts,
    ) -> (Result<Answer, ProxyError>, Duration) {
        let upgrade = request.headers().contains_key(http::header::UPGRADE);
        let started = Instant::now();
        let result = match self.protocol {
            UpstreamProtocol::H2 | UpstreamProtocol::H2c if upgrade => Err(ProxyError::UpstreamFailed {
                backend: backend.to_owned(),
                cause: "a protocol upgrade needs an HTTP/1.1 backend".to_owned(),
            }),
            UpstreamProtocol::H2 | UpstreamProtocol::H2c => {
                return self.send_h2(backend, request, None, timeouts).await;
            }
            UpstreamProtocol::Auto if self.tls.is_some() && !upgrade => {
                if self.pools().h2.sender().is_some() {
                    return self.send_h2(backend, request, None, timeouts).await;
                }
                match self.connect(backend, timeouts, false).await {
                    Ok(stream) if stream.is_h2() => {
                        return self.send_h2(backend, request, Some(stream), timeouts).await
                    }
                    Ok(stream) => return self.send_h1(backend, request, Some(stream), timeouts).await,
                    Err(error) => Err(error),
                }
            }
            _ => return self.send_h1(backend, request, None, timeouts).await,
        };
        (result, started.elapsed())
    }

    async fn connect(&self, backend: &str, timeouts: &Timeouts, for_upgrade: bool) -> Result<Stream, ProxyError> {
        let tls = if for_upgrade {
            self.tls_http1.as_ref().or(self.tls.as_ref())
        } else {
            self.tls.as_ref()
        };
        connect::connect(&self.host, self.port, timeouts.connect, tls)
            .await
            .map_err(|error| connect_error(backend, error))
    }

    async fn send_h1(
        &self,
        backend: &str,
        request: Request<Body>,
        fresh: Option<Stream>,
        timeouts: &Timeouts,
    ) -> (Result<Answer, ProxyError>, Duration) {
        let started = Instant::now();
        let (parts, body) = request.into_parts();
        let head = h1::EncodedHead::new(&parts.method, &parts.uri, &parts.headers, &body);
        let upgrade = parts.headers.contains_key(http::header::UPGRADE);
        let pool = &self.pools().h1;
        let replay = body.try_clone();
        let mut body = Some(body);
        let mut fresh = fresh;
        loop {
            let conn = match fresh.take() {
                Some(stream) => h1::Conn::new(stream),
                None => match pool.checkout(timeouts.pool_idle) {
                    Some(conn) => conn,
                    None => match self.connect(backend, timeouts, upgrade).await {
                        Ok(stream) => h1::Conn::new(stream),
                        Err(error) => return (Err(error), started.elapsed()),
                    },
                },
            };
            let reused = conn.reused;
            let Some(request_body) = body.take().or_else(|| replay.as_ref().and_then(Body::try_clone)) else {
                break (Err(stale(backend)), started.elapsed());
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
                Ok(h1::Answer::Response(response)) => break (Ok(Answer::Response(response)), waited),
                Ok(h1::Answer::Upgraded(response, io)) => break (Ok(Answer::Upgraded(response, io)), waited),
                // A pooled connection the backend closed just as it was taken: the request never reached it,
                // so it goes once more, on a new connection, if it can be sent again.
                Err(h1::Failure::Closed { responded: false } | h1::Failure::Io { responded: false, .. })
                    if reused && replay.is_some() =>
                {
                    continue;
                }
                Err(failure) => break (Err(h1_error(backend, failure, timeouts.response_header)), waited),
            }
        }
    }

    async fn send_h2(
        &self,
        backend: &str,
        request: Request<Body>,
        fresh: Option<Stream>,
        timeouts: &Timeouts,
    ) -> (Result<Answer, ProxyError>, Duration) {
        let started = Instant::now();
        let pool = &self.pools().h2;
        let mut sender = match (fresh, pool.sender()) {
            (None, Some(sender)) => sender,
            (fresh, _) => {
                let stream = match fresh {
                    Some(stream) => stream,
                    None => match self.connect(backend, timeouts, false).await {
                        Ok(stream) => stream,
                        Err(error) => return (Err(error), started.elapsed()),
                    },
                };
                match pool.handshake(stream, backend).await {
                    Ok(sender) => sender,
                    Err(error) => {
                        let error = ProxyError::ConnectFailed {
                            backend: backend.to_owned(),
                            cause: format!("HTTP/2 handshake failed: {error}"),
                        };
                        return (Err(error), started.elapsed());
                    }
                }
            }
        };
        let (sent, sending) = oneshot::channel();
        let request = request.map(|body| body.with_sent_signal(sent));
        let response = sender.send_request(request);
        tokio::pin!(response);
        let classify = |error: hyper::Error| h2_error(backend, &error);
        let sent_at = tokio::select! {
            response = &mut response => {
                let result = response.map(|r| Answer::Response(r.map(Body::from))).map_err(classify);
                return (result, started.elapsed());
            }
            sent = sending => match sent {
                Ok(()) => Instant::now(),
                // A body that fails is never sent in full; the response future ends with its error instead.
                Err(_) => {
                    let result = response.await.map(|r| Answer::Response(r.map(Body::from))).map_err(classify);
                    return (result, started.elapsed());
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
        (result, sent_at.elapsed())
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
