//! The routing core: one request in, one response out, for every listener.
//!
//! `handle` is the outer layer (turns errors into responses, writes the access log and metrics);
//! `proxy` is the inner one and just uses `?`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::uri::{PathAndQuery, Uri};
use http::{Method, Request, Response, Version};
use http_body::Body as _;
use http_body_util::BodyExt as _;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

use crate::balancer::Backend;
use crate::body::Body;
use crate::error::{Origin, ProxyError};
use crate::health::passive;
use crate::metrics;
use crate::routing::{InFlight, Upstream};
use crate::runtime::Shared;
use crate::trace::{self, RequestTrace};
use crate::upstream::{Answer, Upgraded};

use super::headers::{self, Forwarding};

/// A problem a listener found in a request that the core must answer (and log) instead of forwarding it.
#[derive(Debug, Clone)]
pub struct Refused(pub ProxyError);

/// The client side of a request, as the listener saw it.
#[derive(Debug, Clone, Copy)]
pub struct ClientInfo {
    pub peer: SocketAddr,
    /// The request arrived over TLS (HTTPS or QUIC).
    pub tls: bool,
}

/// The protocol a request arrived on, as logs and metrics name it.
pub fn protocol_label(version: Version) -> &'static str {
    match version {
        Version::HTTP_3 => "h3",
        Version::HTTP_2 => "h2",
        Version::HTTP_10 => "http/1.0",
        _ => "http/1.1",
    }
}

/// Routing, balancing and forwarding, shared by every listener.
#[derive(Debug)]
pub struct Core {
    shared: Arc<Shared>,
    metrics: metrics::RequestMetrics,
}

/// What the access log, metrics and trace learn while a request is proxied.
#[derive(Default)]
struct Outcome {
    upstream: Option<Arc<Upstream>>,
    route: Option<Arc<str>>,
    backend: Option<Arc<Backend>>,
}

impl Core {
    /// The core over the shared state.
    pub fn new(shared: Arc<Shared>) -> Self {
        Self {
            shared,
            metrics: metrics::RequestMetrics::default(),
        }
    }

    /// The shared state: configuration snapshot, readiness, certificates.
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Proxies one request; never fails: errors become short plain-text responses.
    pub async fn handle(&self, request: Request<Body>, client: ClientInfo) -> Response<Body> {
        let started = Instant::now();
        let method = request.method().clone();
        let version = request.version();
        let protocol = protocol_label(version);
        // A Uri clone shares its bytes: the access log costs no copy of the path.
        let uri = request.uri().clone();
        let in_flight = self.metrics.in_flight(protocol);
        let trace = self
            .shared
            .tracer()
            .map(|tracer| RequestTrace::begin(tracer, request.headers()));
        let host = request_host(&request);
        let grpc = is_grpc(&request);
        let request = request.map(|body| body.with_meter(self.metrics.request_size(protocol)));
        let mut outcome = Outcome::default();
        let mut failure = None;
        let response = match self.proxy(request, client, trace.as_ref(), &mut outcome).await {
            Ok(response) => response,
            Err(error) => {
                if error.origin() != Origin::Client {
                    tracing::warn!(
                        upstream = outcome.upstream.as_ref().map(|u| u.name.as_str()),
                        backend = outcome.backend.as_ref().map(|b| b.name.as_str()),
                        "{error}"
                    );
                }
                let response = if grpc {
                    grpc_error_response(&error)
                } else {
                    error_response(&error, version)
                };
                failure = Some(error);
                response
            }
        };
        drop(in_flight);
        let elapsed = started.elapsed();
        let upstream = outcome.upstream.as_ref().map_or("-", |u| u.name.as_str());
        let backend = outcome.backend.as_ref().map_or("-", |b| b.name.as_str());
        // A gRPC client's error is HTTP 200 on the wire; logs and metrics count it by what went wrong.
        let status = failure.as_ref().map_or(response.status(), ProxyError::status);
        let trace_id = trace.as_ref().map(RequestTrace::trace_id);
        tracing::info!(
            target: "access",
            method = %method,
            path = %uri.path(),
            status = status.as_u16(),
            upstream,
            backend,
            duration_ms = elapsed.as_secs_f64() * 1000.0,
            protocol,
            client = %client.peer.ip(),
            trace_id,
        );
        let answered_by = outcome.backend.as_ref().map(|b| &b.metrics);
        self.metrics
            .record_request(&method, status, answered_by, protocol, elapsed);
        let finish = trace.map(|trace| {
            let route = outcome.route.as_deref();
            let name = match route {
                Some(route) => format!("{method} {route}"),
                None => method.to_string(),
            };
            let mut attributes: Vec<(&'static str, trace::Value)> = vec![
                ("http.request.method", method.as_str().into()),
                ("http.response.status_code", i64::from(status.as_u16()).into()),
                ("network.protocol.name", "http".into()),
                ("network.protocol.version", via_version(version).into()),
                ("client.address", client.peer.ip().to_string().into()),
                ("url.path", uri.path().into()),
            ];
            if let Some(route) = route {
                attributes.push(("http.route", route.into()));
            }
            if let Some(host) = host.as_deref().and_then(|h| h.parse::<http::uri::Authority>().ok()) {
                attributes.push(("server.address", host.host().into()));
                if let Some(port) = host.port_u16() {
                    attributes.push(("server.port", i64::from(port).into()));
                }
            }
            if upstream != "-" {
                attributes.push(("quic_proxy.upstream", upstream.into()));
            }
            let error = failure
                .filter(|e| e.origin() != Origin::Client || status.is_server_error())
                .map(|e| e.to_string())
                .or_else(|| status.is_server_error().then(|| status.to_string()));
            trace.finish(name, attributes, error)
        });
        response.map(|body| {
            let body = body.with_meter(self.metrics.response_size(protocol));
            match finish {
                Some(finish) => body.with_trace(finish),
                None => body,
            }
        })
    }

    async fn proxy(
        &self,
        mut request: Request<Body>,
        client: ClientInfo,
        trace: Option<&RequestTrace>,
        outcome: &mut Outcome,
    ) -> Result<Response<Body>, ProxyError> {
        check_framing(&request)?;
        let snapshot = self.shared.snapshot();
        let host = request_host(&request);
        let destination = snapshot
            .router()
            .destination(host.as_deref(), request.uri().path())
            .ok_or(ProxyError::NoRoute)?;
        let upstream = destination.upstream;
        upstream.record_request();
        outcome.upstream = Some(Arc::clone(upstream));
        if trace.is_some() {
            outcome.route = Some(Arc::from(destination.route));
        }

        let is_http1 = request.version() <= Version::HTTP_11;
        let upgrade = is_http1 && headers::is_upgrade_request(request.headers());
        // The connection's framing is no longer followed after a head that asks for an upgrade (its bytes may
        // become tunnel data), so unless the upgrade happens, the connection ends with this response.
        let close_unless_switched = is_http1 && request.headers().contains_key(header::UPGRADE);
        let mut client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut request));

        let (mut parts, body) = request.into_parts();
        let affinity = upstream.affinity(&parts, client.peer.ip());
        headers::remove_hop_by_hop(&mut parts.headers, upgrade);
        // The target's authority wins over a Host header (RFC 9112 3.2.2, RFC 9113 8.3.1, RFC 9114 4.3.1).
        if let Some(authority) = parts.uri.authority() {
            if let Ok(value) = HeaderValue::from_str(authority.as_str()) {
                parts.headers.insert(header::HOST, value);
            }
        }
        headers::add_forwarding(
            &mut parts.headers,
            &Forwarding {
                client_ip: client.peer.ip(),
                trusted_proxies: &snapshot.config.server.trusted_proxies,
                https: client.tls,
                host: host.as_deref(),
                via_version: via_version(parts.version),
            },
        );
        let path_and_query = parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        let idempotent = is_idempotent(&parts.method);

        let timeouts = match grpc_timeout(&parts.headers) {
            Some(deadline) => snapshot.config.timeouts.for_deadline(deadline),
            None => snapshot.config.timeouts,
        };
        let client_body_timeout = snapshot.config.server.client_body_timeout;
        let body = body
            .with_exact_length()
            .with_idle_timeout(client_body_timeout, ProxyError::ClientBodyTimeout(client_body_timeout));
        let retries = if upgrade { 0 } else { upstream.policy.retries };
        let (mut body, replay) = replayable(body, retries, upstream.policy.retry_buffer).await?;
        // A body that could not be kept still goes to another backend when no connection could be had for it
        // (the transport hands it back unsent).
        let attempts = retries + 1;
        let mut tried: Vec<Arc<Backend>> = Vec::new();
        let mut last_error = None;
        let mut attempt_number: u32 = 0;
        // A backend already picked for the next attempt (a retry on a response status checks first that
        // there is another backend to try).
        let mut next: Option<Arc<Backend>> = None;
        loop {
            attempt_number += 1;
            let picked = match next.take() {
                Some(backend) => Ok(backend),
                None => upstream.pick(&affinity, &tried),
            };
            let backend = match picked {
                Ok(backend) => backend,
                // Out of backends to retry on: the client hears what actually went wrong.
                Err(error) => {
                    record_refusal(upstream, &error);
                    return Err(last_error.unwrap_or(error));
                }
            };
            if attempt_number > 1 {
                tracing::info!(
                    upstream = %upstream.name,
                    backend = %backend.name,
                    "retrying after: {}",
                    last_error.as_ref().map_or_else(String::new, ToString::to_string)
                );
                metrics::record_retry(&upstream.name);
                tokio::time::sleep(backoff(&upstream.policy, attempt_number - 1)).await;
            }
            outcome.backend = Some(Arc::clone(&backend));
            let in_flight = match upstream.begin(&backend) {
                Ok(in_flight) => in_flight,
                Err(error) => {
                    record_refusal(upstream, &error);
                    return Err(error);
                }
            };
            let last = attempt_number >= attempts;
            let mut upstream_request = Request::new(match &replay {
                Some(kept) => kept.body(),
                None => std::mem::replace(&mut body, Body::empty()),
            });
            *upstream_request.method_mut() = parts.method.clone();
            *upstream_request.version_mut() = Version::HTTP_11;
            *upstream_request.headers_mut() = if last {
                std::mem::take(&mut parts.headers)
            } else {
                parts.headers.clone()
            };
            *upstream_request.uri_mut() = Uri::builder()
                .scheme(backend.scheme.clone())
                .authority(backend.authority.clone())
                .path_and_query(path_and_query.clone())
                .build()
                .map_err(|_| ProxyError::BadRequest("request target cannot be forwarded"))?;

            let traced = trace.map(|t| t.attempt(upstream_request.headers_mut()));
            let sent = backend.transport.send(&backend.name, upstream_request, &timeouts).await;
            let (result, waited) = (sent.result, sent.waited);
            let unsent = sent.unsent.map(Request::into_body);
            let status = result.as_ref().ok().map(Answer::status);
            if let (Some(trace), Some(attempt)) = (trace, traced) {
                let mut attributes: Vec<(&'static str, trace::Value)> = vec![
                    ("http.request.method", parts.method.as_str().into()),
                    ("server.address", backend.authority.host().into()),
                    ("quic_proxy.backend", backend.name.as_str().into()),
                    ("quic_proxy.upstream", upstream.name.as_str().into()),
                    ("http.request.resend_count", i64::from(attempt_number - 1).into()),
                ];
                if let Some(port) = backend.authority.port_u16() {
                    attributes.push(("server.port", i64::from(port).into()));
                }
                let error = match (&result, status) {
                    // For a client span, any 4xx or 5xx answer is an error (OpenTelemetry HTTP conventions).
                    (Ok(_), Some(status)) => {
                        attributes.push(("http.response.status_code", i64::from(status.as_u16()).into()));
                        (status.is_client_error() || status.is_server_error()).then(|| status.to_string())
                    }
                    (Err(error), _) => {
                        attributes.push(("error.type", error.cause().into()));
                        Some(error.to_string())
                    }
                    (Ok(_), None) => None,
                };
                trace.end_attempt(attempt, attributes, error);
            }
            backend.metrics.record_attempt(status, waited);
            if let Err(ProxyError::ConnectFailed { .. } | ProxyError::ConnectTimeout { .. }) = &result {
                backend.metrics.record_connect_error();
                // The address may be gone: an endpoint found by DNS has its name resolved again soon.
                if backend.key().address.is_some() {
                    self.shared.nudge_discovery();
                }
            }
            let verdict = passive::verdict(
                result.as_ref().map(Answer::status),
                &upstream.health_check.passive.failure_statuses,
            );
            if let Some(verdict) = verdict {
                backend.window.record(waited, verdict.is_err());
                if result.is_ok() {
                    crate::health::outlier::slow_response(upstream, &backend, waited);
                }
                upstream.record_outcome(&backend, verdict);
            }
            if let Err(error) = &result {
                record_refusal(upstream, error);
            }
            let mut response = match result {
                Ok(Answer::Response(response)) => response,
                Ok(Answer::Upgraded(response, upgraded)) => {
                    let Some(client_upgrade) = client_upgrade.take() else {
                        return Err(ProxyError::UpstreamFailed {
                            backend: backend.name.clone(),
                            cause: "101 Switching Protocols to a request that asked for no upgrade".to_owned(),
                        });
                    };
                    tokio::spawn(tunnel(client_upgrade, upgraded, in_flight));
                    return Ok(response);
                }
                Err(error)
                    if !last
                        && error.retryable(idempotent)
                        && (replay.is_some() || unsent.is_some())
                        && upstream.allow_retry() =>
                {
                    if let Some(unsent) = unsent {
                        body = unsent;
                    }
                    tried.push(backend);
                    last_error = Some(error);
                    continue;
                }
                Err(error) => return Err(error),
            };
            // A status the upstream retries: another backend answers instead, if there is one to try.
            let status = response.status();
            if !last
                && idempotent
                && replay.is_some()
                && upstream.policy.retry_on_statuses.contains(&status.as_u16())
                && client_upgrade.is_none()
            {
                tried.push(Arc::clone(&backend));
                if let Ok(another) = upstream.pick(&affinity, &tried) {
                    if upstream.allow_retry() {
                        next = Some(another);
                        last_error = Some(ProxyError::UpstreamFailed {
                            backend: backend.name.clone(),
                            cause: format!("status {}", status.as_u16()),
                        });
                        continue;
                    }
                }
            }
            if let Some(cookie) = upstream.sticky_cookie(&backend, &affinity, client.tls) {
                response.headers_mut().append(header::SET_COOKIE, cookie);
            }
            // RFC 9112 6.3: chunked framing wins over a Content-Length sent with it, which must not be passed on
            // (the client would take the body for complete after that many bytes).
            if response.headers().contains_key(header::TRANSFER_ENCODING) {
                response.headers_mut().remove(header::CONTENT_LENGTH);
            }
            headers::remove_hop_by_hop(response.headers_mut(), false);
            if close_unless_switched {
                response
                    .headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            let stalled = ProxyError::UpstreamBodyStalled {
                backend: backend.name.clone(),
                after: timeouts.response_body,
            };
            return Ok(response.map(|body| {
                body.with_idle_timeout(timeouts.response_body, stalled)
                    .with_guard(in_flight)
            }));
        }
    }
}

/// Counts a request a circuit breaker refused, by backend and limit, and logs it (or a connection the
/// proxy could not make for want of its own resources) at most once a second per backend.
fn record_refusal(upstream: &Upstream, error: &ProxyError) {
    let named = |name: &str| upstream.backends.iter().find(|b| b.name == name);
    match error {
        ProxyError::CircuitOpen { backend, limit } => {
            metrics::record_circuit_open(&upstream.name, backend, limit);
            if let Some(backend) = named(backend).filter(|b| b.log_limiter.allow()) {
                tracing::warn!(upstream = %upstream.name, backend = %backend.name, "circuit breaker open: {limit} reached, answering 503");
            }
        }
        ProxyError::LocalExhausted { backend, cause } => {
            if let Some(backend) = named(backend).filter(|b| b.log_limiter.allow()) {
                tracing::error!(upstream = %upstream.name, backend = %backend.name, "cannot connect, the proxy is out of resources ({cause}): answering 503; raise the file descriptor limit (LimitNOFILE, ulimit -n) or lower server.max_connections and quic.max_connections");
            }
        }
        _ => {}
    }
}

/// The wait before retry number `retry`: a random time up to `retry_backoff` doubled for each retry before
/// it, at most `retry_backoff_max` (full jitter, so that retries from many clients spread out).
fn backoff(policy: &crate::config::BalancerConfig, retry: u32) -> std::time::Duration {
    let doublings = retry.saturating_sub(1).min(16);
    let ceiling = policy
        .retry_backoff
        .saturating_mul(1 << doublings)
        .min(policy.retry_backoff_max);
    ceiling.mul_f64(fastrand::f64())
}

/// GET, HEAD, PUT, DELETE, OPTIONS and TRACE may be sent twice without changing the outcome.
fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::PUT | Method::DELETE | Method::OPTIONS | Method::TRACE
    )
}

/// A request body read completely, so that it can be sent again.
struct Kept {
    data: Bytes,
    trailers: Option<http::HeaderMap>,
}

impl Kept {
    fn body(&self) -> Body {
        Body::complete(self.data.clone(), self.trailers.clone())
    }
}

/// Splits a request body into what the first attempt sends and, when retries may need it again, a copy.
/// Empty bodies and bodies of known size up to `limit` are kept; anything else streams once, unretried.
async fn replayable(body: Body, retries: u32, limit: u64) -> Result<(Body, Option<Kept>), ProxyError> {
    if retries == 0 {
        return Ok((body, None));
    }
    if body.is_end_stream() {
        let empty = Kept {
            data: Bytes::new(),
            trailers: None,
        };
        return Ok((body, Some(empty)));
    }
    match body.size_hint().exact() {
        Some(length) if length <= limit => {
            let collected = body.collect().await.map_err(|error| {
                // A stalled or failed client body says why; anything else is the client's body failing.
                error
                    .downcast_ref::<ProxyError>()
                    .cloned()
                    .unwrap_or(ProxyError::ClientBodyFailed)
            })?;
            let trailers = collected.trailers().cloned();
            let kept = Kept {
                data: collected.to_bytes(),
                trailers,
            };
            Ok((Body::empty(), Some(kept)))
        }
        _ => Ok((body, None)),
    }
}

/// Copies bytes both ways between an upgraded client and backend until either side closes.
async fn tunnel(client: OnUpgrade, mut backend: Upgraded, in_flight: InFlight) {
    let name = &in_flight.backend().name;
    match client.await {
        Ok(client) => {
            let mut client = TokioIo::new(client);
            if let Err(error) = tokio::io::copy_bidirectional(&mut client, &mut backend).await {
                tracing::debug!(backend = %name, "upgraded connection ended: {error}");
            }
        }
        Err(error) => tracing::warn!(backend = %name, "protocol upgrade failed: {error}"),
    }
}

/// HTTP/1 framing checks hyper leaves to us: request smuggling vectors and the Host rules of RFC 9112.
fn check_framing(request: &Request<Body>) -> Result<(), ProxyError> {
    if let Some(Refused(error)) = request.extensions().get::<Refused>() {
        return Err(error.clone());
    }
    // A reverse proxy is no tunnel: CONNECT (and extended CONNECT) is answered here, never forwarded.
    if request.method() == Method::CONNECT {
        return Err(ProxyError::MethodNotAllowed);
    }
    // The asterisk form is for OPTIONS alone (RFC 9110 9.3.7, RFC 9114 4.3.1).
    if request.uri().path() == "*" && request.method() != Method::OPTIONS {
        return Err(ProxyError::BadRequest("only OPTIONS may have the target *"));
    }
    // Userinfo in a target is deprecated and never forwarded (RFC 9110 4.2.4, RFC 9114 4.3.1).
    if request.uri().authority().is_some_and(|a| a.as_str().contains('@')) {
        return Err(ProxyError::BadRequest("userinfo in the request target"));
    }
    if request.version() > Version::HTTP_11 {
        return check_fields(request);
    }
    let headers = request.headers();
    let content_lengths: Vec<&HeaderValue> = headers.get_all(header::CONTENT_LENGTH).iter().collect();
    if !content_lengths.is_empty() && headers.contains_key(header::TRANSFER_ENCODING) {
        return Err(ProxyError::BadRequest("both Content-Length and Transfer-Encoding"));
    }
    check_transfer_coding(headers)?;
    let mut declared: Option<&[u8]> = None;
    for value in &content_lengths {
        for item in value.as_bytes().split(|&b| b == b',') {
            let item = item.trim_ascii();
            if item.is_empty() || !item.iter().all(u8::is_ascii_digit) {
                return Err(ProxyError::BadRequest("invalid Content-Length"));
            }
            if declared.is_some_and(|first| first != item) {
                return Err(ProxyError::BadRequest("conflicting Content-Length values"));
            }
            declared = Some(item);
        }
    }
    let hosts = headers.get_all(header::HOST).iter().count();
    if hosts > 1 {
        return Err(ProxyError::BadRequest("more than one Host header"));
    }
    if hosts == 0 && request.version() == Version::HTTP_11 {
        return Err(ProxyError::BadRequest("missing Host header"));
    }
    if let Some(host) = headers.get(header::HOST) {
        if host.is_empty()
            || host
                .as_bytes()
                .iter()
                .any(|b| b.is_ascii_whitespace() || *b == b'/' || *b == b'@')
        {
            return Err(ProxyError::BadRequest("invalid Host header"));
        }
    }
    Ok(())
}

/// A request's Transfer-Encoding must be exactly `chunked` (RFC 9112 6.1): another coding is one this
/// proxy does not decode (501), and `chunked` more than once, or not last, is malformed (400). Lenient
/// readings of the header are how requests get smuggled past one hop and reframed by the next.
fn check_transfer_coding(headers: &http::HeaderMap) -> Result<(), ProxyError> {
    let mut codings = headers
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .flat_map(|value| value.as_bytes().split(|&b| b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|coding| !coding.is_empty());
    let Some(first) = codings.next() else {
        return if headers.contains_key(header::TRANSFER_ENCODING) {
            Err(ProxyError::BadRequest("empty Transfer-Encoding"))
        } else {
            Ok(())
        };
    };
    let chunked = |coding: &[u8]| coding.eq_ignore_ascii_case(b"chunked");
    match (chunked(first), codings.next()) {
        (true, None) => Ok(()),
        (true, Some(_)) => Err(ProxyError::BadRequest("chunked is not the only transfer coding")),
        (false, _) => Err(ProxyError::NotImplemented("unsupported transfer coding")),
    }
}

/// RFC 9113 8.2.2 and RFC 9114 4.2: HTTP/2 and HTTP/3 requests carry no connection-specific fields, and
/// TE only as `trailers`.
fn check_fields(request: &Request<Body>) -> Result<(), ProxyError> {
    let headers = request.headers();
    let connection_specific = [
        header::CONNECTION,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
        HeaderName::from_static("keep-alive"),
        HeaderName::from_static("proxy-connection"),
    ];
    if connection_specific.iter().any(|name| headers.contains_key(name)) {
        return Err(ProxyError::BadRequest(
            "connection-specific header field in an HTTP/2 or HTTP/3 request",
        ));
    }
    if headers
        .get_all(header::TE)
        .iter()
        .any(|te| !te.as_bytes().eq_ignore_ascii_case(b"trailers"))
    {
        return Err(ProxyError::BadRequest(
            "TE other than \"trailers\" in an HTTP/2 or HTTP/3 request",
        ));
    }
    Ok(())
}

/// The host the client asked for: the URI's authority (HTTP/2, HTTP/3, absolute-form), else `Host`.
fn request_host(request: &Request<Body>) -> Option<String> {
    if let Some(authority) = request.uri().authority() {
        return Some(authority.as_str().to_owned());
    }
    request
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned)
}

fn via_version(version: Version) -> &'static str {
    match version {
        Version::HTTP_10 => "1.0",
        Version::HTTP_2 => "2",
        Version::HTTP_3 => "3",
        _ => "1.1",
    }
}

/// A gRPC call: HTTP/2 or HTTP/3 with a gRPC content type.
fn is_grpc(request: &Request<Body>) -> bool {
    request.version() >= Version::HTTP_2
        && request
            .headers()
            .get(header::CONTENT_TYPE)
            .is_some_and(|t| t.as_bytes().starts_with(b"application/grpc"))
}

/// The proxy's own error as a gRPC client reads it: a trailers-only response (HTTP 200, no body) whose
/// `grpc-status` follows gRPC's mapping of HTTP statuses, so clients see UNAVAILABLE (and retry) where an
/// HTTP client sees 502, 503 or 504, instead of failing to parse a text body.
fn grpc_error_response(error: &ProxyError) -> Response<Body> {
    let status = error.status();
    let code: u8 = match status.as_u16() {
        400 => 13,
        404 => 12,
        408 => 4,
        425 | 429 | 502..=504 => 14,
        431 => 8,
        _ => 2,
    };
    let message = match error.origin() {
        Origin::Client => error.to_string(),
        Origin::Upstream | Origin::Proxy => status.canonical_reason().unwrap_or("error").to_owned(),
    };
    let mut response = Response::new(Body::empty());
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    headers.insert("grpc-status", HeaderValue::from(u16::from(code)));
    if let Ok(value) = HeaderValue::from_str(&percent_encode(&format!("{} {message}", status.as_u16()))) {
        headers.insert("grpc-message", value);
    }
    response
}

/// A gRPC call's deadline from its `grpc-timeout` field: up to 8 digits and a unit (H, M, S, m, u, n).
fn grpc_timeout(headers: &http::HeaderMap) -> Option<std::time::Duration> {
    let value = headers.get("grpc-timeout")?.as_bytes();
    let (&unit, digits) = value.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let amount: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit {
        b'H' => std::time::Duration::from_secs(amount.saturating_mul(3600)),
        b'M' => std::time::Duration::from_secs(amount.saturating_mul(60)),
        b'S' => std::time::Duration::from_secs(amount),
        b'm' => std::time::Duration::from_millis(amount),
        b'u' => std::time::Duration::from_micros(amount),
        b'n' => std::time::Duration::from_nanos(amount),
        _ => return None,
    })
}

/// gRPC's percent-encoding of `grpc-message`: printable ASCII stays, except `%`.
fn percent_encode(text: &str) -> String {
    let mut encoded = String::with_capacity(text.len());
    for byte in text.bytes() {
        if (0x20..=0x7e).contains(&byte) && byte != b'%' {
            encoded.push(char::from(byte));
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
}

/// A short plain-text error response; framing errors also close an HTTP/1 connection.
pub fn error_response(error: &ProxyError, version: Version) -> Response<Body> {
    let status = error.status();
    let reason = status.canonical_reason().unwrap_or("Error");
    let text = match error.origin() {
        Origin::Client => format!("{} {reason}: {error}\n", status.as_u16()),
        Origin::Upstream | Origin::Proxy => format!("{} {reason}\n", status.as_u16()),
    };
    let mut response = Response::new(Body::full(text));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    if let ProxyError::NoBackend {
        retry_after: Some(seconds),
        ..
    } = error
    {
        headers.insert(header::RETRY_AFTER, HeaderValue::from(*seconds));
    }
    if let ProxyError::MethodNotAllowed = error {
        headers.insert(
            header::ALLOW,
            HeaderValue::from_static("GET, HEAD, POST, PUT, DELETE, OPTIONS, PATCH, TRACE"),
        );
    }
    if error.closes_connection() && version <= Version::HTTP_11 {
        headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use http::{HeaderMap, HeaderValue};

    use super::{grpc_timeout, percent_encode};

    fn timeout(value: &'static str) -> Option<Duration> {
        let mut headers = HeaderMap::new();
        headers.insert("grpc-timeout", HeaderValue::from_static(value));
        grpc_timeout(&headers)
    }

    #[test]
    fn grpc_timeouts_in_every_unit_and_nothing_else() {
        assert_eq!(timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(timeout("2M"), Some(Duration::from_secs(120)));
        assert_eq!(timeout("10S"), Some(Duration::from_secs(10)));
        assert_eq!(timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(timeout("7u"), Some(Duration::from_micros(7)));
        assert_eq!(timeout("99999999n"), Some(Duration::from_nanos(99_999_999)));
        for bad in ["", "S", "100", "123456789S", "1.5S", "-1S", "10s", "10 S"] {
            assert_eq!(timeout(bad), None, "{bad:?}");
        }
        assert_eq!(grpc_timeout(&HeaderMap::new()), None);
    }

    #[test]
    fn grpc_messages_are_percent_encoded() {
        assert_eq!(percent_encode("503 Service Unavailable"), "503 Service Unavailable");
        assert_eq!(percent_encode("100% é\n"), "100%25 %C3%A9%0A");
    }
}
