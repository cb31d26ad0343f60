//! Typed errors of the request path and the one table that maps them to a status code.

use http::StatusCode;

/// Boxed error carried by body frames and upstream failures.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The circuit-breaker limit that refused a request, as the error, the metric label and the config name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CircuitLimit {
    MaxRequests,
    MaxConnections,
    MaxPending,
}

impl CircuitLimit {
    /// Every limit, in the order metrics register them.
    pub const ALL: [Self; 3] = [Self::MaxRequests, Self::MaxConnections, Self::MaxPending];

    /// The setting's name under `circuit_breaker`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::MaxRequests => "max_requests",
            Self::MaxConnections => "max_connections",
            Self::MaxPending => "max_pending",
        }
    }
}

impl std::fmt::Display for CircuitLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where an error came from: decides the status code, the metric label and whether a retry is safe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Client,
    Upstream,
    Proxy,
}

/// Everything that can stop a request before a backend's response reaches the client.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ProxyError {
    #[error("{0}")]
    BadRequest(&'static str),
    #[error("request head larger than the limit")]
    HeadTooLarge,
    #[error("the request body failed before it was complete")]
    ClientBodyFailed,
    #[error("the client sent no request body data for {0:?}")]
    ClientBodyTimeout(std::time::Duration),
    #[error("CONNECT is not supported: this is a reverse proxy")]
    MethodNotAllowed,
    #[error("{0}")]
    NotImplemented(&'static str),
    #[error("0-RTT early data is only accepted for safe methods; retry after the handshake")]
    TooEarly,
    #[error("no route for this host and path")]
    NoRoute,
    #[error("no backend available in upstream {upstream}")]
    NoBackend { upstream: String, retry_after: Option<u64> },
    #[error("connect to {backend} failed: {cause}")]
    ConnectFailed { backend: String, cause: String },
    #[error("connect to {backend} timed out")]
    ConnectTimeout { backend: String },
    #[error("{backend} sent no response headers within {after:?}")]
    ResponseTimeout {
        backend: String,
        after: std::time::Duration,
    },
    #[error("{backend} failed: {cause}")]
    UpstreamFailed { backend: String, cause: String },
    #[error("{backend} sent no response body data for {after:?}")]
    UpstreamBodyStalled {
        backend: String,
        after: std::time::Duration,
    },
    #[error("circuit breaker open for {backend}: {limit} reached")]
    CircuitOpen { backend: String, limit: CircuitLimit },
    /// The proxy itself ran out of something a connection needs (file descriptors, local ports, memory):
    /// no fault of the backend, so never counted against it.
    #[error("no connection to {backend}: the proxy is out of resources ({cause})")]
    LocalExhausted { backend: String, cause: String },
}

impl ProxyError {
    /// The status code the client sees.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) | Self::ClientBodyFailed => StatusCode::BAD_REQUEST,
            Self::ClientBodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::NotImplemented(_) => StatusCode::NOT_IMPLEMENTED,
            Self::HeadTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Self::NoRoute => StatusCode::NOT_FOUND,
            Self::TooEarly => StatusCode::TOO_EARLY,
            Self::NoBackend { .. } | Self::CircuitOpen { .. } | Self::LocalExhausted { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Self::ConnectFailed { .. } | Self::UpstreamFailed { .. } => StatusCode::BAD_GATEWAY,
            Self::ConnectTimeout { .. } | Self::ResponseTimeout { .. } | Self::UpstreamBodyStalled { .. } => {
                StatusCode::GATEWAY_TIMEOUT
            }
        }
    }

    /// Who is to blame, for logs and metrics.
    pub fn origin(&self) -> Origin {
        match self {
            Self::BadRequest(_)
            | Self::HeadTooLarge
            | Self::ClientBodyFailed
            | Self::ClientBodyTimeout(_)
            | Self::MethodNotAllowed
            | Self::NotImplemented(_)
            | Self::NoRoute
            | Self::TooEarly => Origin::Client,
            Self::NoBackend { .. } | Self::CircuitOpen { .. } | Self::LocalExhausted { .. } => Origin::Proxy,
            Self::ConnectFailed { .. }
            | Self::ConnectTimeout { .. }
            | Self::ResponseTimeout { .. }
            | Self::UpstreamFailed { .. }
            | Self::UpstreamBodyStalled { .. } => Origin::Upstream,
        }
    }

    /// True when the request may be sent again to another backend: always when it never reached one
    /// (the connect failed), otherwise only for idempotent methods.
    pub fn retryable(&self, idempotent: bool) -> bool {
        match self {
            Self::ConnectFailed { .. } | Self::ConnectTimeout { .. } => true,
            Self::UpstreamFailed { .. } | Self::ResponseTimeout { .. } => idempotent,
            _ => false,
        }
    }

    /// A short cause for health logs: what went wrong with the backend.
    pub fn cause(&self) -> String {
        match self {
            Self::ConnectFailed { cause, .. } | Self::UpstreamFailed { cause, .. } => cause.clone(),
            Self::ConnectTimeout { .. } => "connect timed out".to_owned(),
            Self::ResponseTimeout { .. } => "response headers timed out".to_owned(),
            Self::UpstreamBodyStalled { .. } => "response body stalled".to_owned(),
            other => other.to_string(),
        }
    }

    /// True when the client's connection must be closed after the response (framing errors).
    pub fn closes_connection(&self) -> bool {
        matches!(
            self,
            Self::BadRequest(_)
                | Self::HeadTooLarge
                | Self::ClientBodyFailed
                | Self::ClientBodyTimeout(_)
                | Self::NotImplemented(_)
        )
    }
}
