//! The routing core's inner layer: check, route, rewrite, and forward with retries. It uses `?`; the outer
//! layer (`core.rs`) turns its errors into answers.
//!
//! A request is checked (`checks.rs`), routed to an upstream by host and path, stripped of hop-by-hop
//! fields and given the forwarding ones (`headers.rs`), and its body bounded (declared length enforced,
//! silence limited by `server.client_body_timeout`) and, when retries may need it, kept (`retry.rs`). Then
//! each attempt picks a backend not tried yet, sends the request over the backend's transport and reports
//! the outcome through `Upstream::observe`; a failure before any response byte is retried on another
//! backend when the error, the method, the body and the retry budget allow, and a status in
//! `retry_on_statuses` likewise. The response goes back with its hop-by-hop fields removed, its body
//! bounded by `timeouts.response_body` and carrying the in-flight guard; a 101 starts a byte tunnel.

use std::sync::Arc;

use http::header::{self, HeaderMap, HeaderValue};
use http::request::Parts;
use http::uri::{PathAndQuery, Uri};
use http::{Request, Response, StatusCode, Version};
use http_body::Body as _;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

use super::answer::grpc_timeout;
use super::checks::{check_request, is_websocket_connect, request_host};
use super::core::{ClientInfo, Core, Outcome};
use super::headers::{self, Forwarding};
use super::retry::{backoff, is_idempotent, replayable, Kept};
use super::websocket;
use crate::balancer::Backend;
use crate::body::{Body, FailureFlag};
use crate::config::Target;
use crate::config::Timeouts;
use crate::error::{Origin, ProxyError};
use crate::policy::{self, files, Admission, Context, RoutePolicy};
use crate::protocol::Protocol;
use crate::routing::{Affinity, InFlight, Observation, RouteTarget, Snapshot, Upstream};
use crate::runtime::Watched;
use crate::trace::{self, RequestTrace};
use crate::upstream::{Answer, Upgraded};

impl Core {
    /// Routes one request and runs its route's policy around the target (see the module comment).
    pub(super) async fn proxy(
        &self,
        mut request: Request<Body>,
        client: ClientInfo,
        request_id: &str,
        trace: Option<&RequestTrace>,
        outcome: &mut Outcome,
    ) -> Result<Response<Body>, ProxyError> {
        check_request(&request)?;
        let snapshot = self.shared.snapshot();
        if !client.tls {
            if let Some(response) = super::plain::answer(&self.shared, &snapshot, &request)? {
                return Ok(response);
            }
        }
        let host = request_host(&request);
        let route = snapshot
            .router()
            .destination(host.as_deref(), request.uri().path())
            .ok_or(ProxyError::NoRoute)?;
        let policy = &route.policy;
        if trace.is_some() {
            outcome.route = Some(Arc::clone(&policy.label));
        }
        let trusted = &snapshot.config.server.trusted_proxies;
        let client_ip = policy::client::address(client.peer.ip(), request.headers(), trusted);
        let admitted = match policy.admit(client_ip, request.headers()) {
            Admission::Admitted(admitted) => admitted,
            Admission::Refused(refusal) => return Ok(*refusal),
        };
        let requested = matches!(route.target, RouteTarget::Static(_)).then(|| request.uri().path().to_owned());
        if let Some(path) = policy.rewrite(request.uri().path()) {
            *request.uri_mut() = RoutePolicy::with_path(request.uri(), &path)
                .ok_or(ProxyError::BadRequest("the rewritten request target is invalid"))?;
        }
        // What placeholders stand for, borrowed from the request as the route left it (a Uri clone shares
        // its bytes), so the response actions can render them once the request is gone.
        let target_uri = policy.uses_placeholders().then(|| request.uri().clone());
        let context = target_uri.as_ref().map(|uri| Context {
            host: host.as_deref().unwrap_or_default(),
            uri,
            client_ip,
            request_id,
            scheme: if client.tls { "https" } else { "http" },
        });
        let method = request.method().clone();
        let ranged = request.headers().contains_key(header::RANGE);
        let mut kept = HeaderMap::new();
        if policy.actions().compress.is_some() {
            if let Some(accept) = request.headers().get(header::ACCEPT_ENCODING) {
                kept.insert(header::ACCEPT_ENCODING, accept.clone());
            }
        }
        let response = match &route.target {
            RouteTarget::Upstream(upstream) => {
                upstream.record_request();
                outcome.upstream = Some(Arc::clone(upstream));
                policy.request_headers(request.headers_mut(), context.as_ref());
                let mut forward = Forward::new(request, client, &snapshot, upstream, host.as_deref()).await?;
                forward.run(self, trace, outcome).await?
            }
            RouteTarget::Static(files) => {
                let requested = requested.as_deref().unwrap_or_default();
                let (response, served) =
                    files::serve(files, &method, request.uri().path(), requested, request.headers()).await;
                policy.record_target("static", served.label());
                response
            }
            RouteTarget::Answer(answer) => {
                let context = context
                    .as_ref()
                    .ok_or(ProxyError::BadRequest("no context for the answer"))?;
                match answer {
                    Target::Redirect { to, status } => {
                        policy.record_target("redirect", "answered");
                        policy::redirect(to, *status, context)
                    }
                    Target::Respond { status, body, headers } => {
                        policy.record_target("respond", "answered");
                        policy::respond(*status, body, headers, context, &method)
                    }
                    _ => return Err(ProxyError::NoRoute),
                }
            }
        };
        let facts = policy::Request {
            method: &method,
            headers: &kept,
            ranged,
            admitted,
            streams: self.shared.compression(),
            max_streams: snapshot.config.server.max_compressed_streams,
        };
        Ok(policy.respond(response, &facts, context.as_ref()))
    }
}

/// One request on its way to an upstream's backends.
struct Forward<'a> {
    upstream: &'a Arc<Upstream>,
    client: ClientInfo,
    parts: Parts,
    path_and_query: PathAndQuery,
    affinity: Affinity,
    idempotent: bool,
    timeouts: Timeouts,
    /// The body for the next attempt, when `replay` does not hold a copy.
    body: Body,
    /// The body kept whole, for every attempt.
    replay: Option<Kept>,
    /// Set if the client's streamed upload fails: what goes wrong after that is the client's doing.
    client_body: Option<FailureFlag>,
    /// The client's side of a protocol upgrade the backend may accept.
    client_upgrade: Option<ClientSide>,
    /// An HTTP/1 head that asked for an upgrade is followed no further; unless the upgrade happens, the
    /// connection closes after this response.
    close_unless_switched: bool,
    /// A WebSocket over HTTP/2 or HTTP/3, sent to the backend as an HTTP/1.1 upgrade with this key.
    websocket_key: Option<String>,
    /// A tunnel that moves no byte either way for this long is closed (`server.idle_timeout`).
    tunnel_idle: std::time::Duration,
    attempts: u32,
}

impl<'a> Forward<'a> {
    async fn new(
        mut request: Request<Body>,
        client: ClientInfo,
        snapshot: &Snapshot,
        upstream: &'a Arc<Upstream>,
        host: Option<&str>,
    ) -> Result<Self, ProxyError> {
        let is_http1 = request.version() <= Version::HTTP_11;
        let websocket = is_websocket_connect(&request);
        let upgrade = (is_http1 && headers::is_upgrade_request(request.headers())) || websocket;
        let close_unless_switched = is_http1 && request.headers().contains_key(header::UPGRADE);
        // HTTP/3 has no connection to hand over: the request body and the response body are the tunnel.
        let streams = websocket && request.version() == Version::HTTP_3;
        let client_upgrade = (upgrade && !streams).then(|| ClientSide::Hyper(hyper::upgrade::on(&mut request)));

        let (mut parts, body) = request.into_parts();
        let (client_upgrade, body) = match streams {
            true => (Some(ClientSide::Streams(Box::new(body))), Body::empty()),
            false => (client_upgrade, body),
        };
        let websocket_key = websocket.then(|| websocket::as_upgrade(&mut parts));
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
                host,
                via_version: Protocol::of(parts.version).version_number(),
            },
        );
        let path_and_query = parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
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
        let mut client_body = None;
        if replay.is_none() && !body.is_end_stream() {
            let flag = FailureFlag::default();
            body = body.with_observer(flag.clone());
            client_body = Some(flag);
        }
        Ok(Self {
            upstream,
            client,
            idempotent: is_idempotent(&parts.method),
            parts,
            path_and_query,
            affinity,
            timeouts,
            body,
            replay,
            client_body,
            client_upgrade,
            close_unless_switched,
            websocket_key,
            tunnel_idle: snapshot.config.server.idle_timeout,
            attempts: retries + 1,
        })
    }

    /// Attempts until a backend answers, or no attempt is left: a failure before any response byte is
    /// retried when the error, the method, the body and the retry budget allow. A body that could not be
    /// kept still goes to another backend when no connection could be had for it (the transport hands it
    /// back unsent).
    async fn run(
        &mut self,
        core: &Core,
        trace: Option<&RequestTrace>,
        outcome: &mut Outcome,
    ) -> Result<Response<Body>, ProxyError> {
        let upstream = self.upstream;
        let mut tried: Vec<Arc<Backend>> = Vec::new();
        let mut last_error: Option<ProxyError> = None;
        // A backend already picked for the next attempt (a retry on a response status checks first that
        // there is another backend to try).
        let mut next: Option<Arc<Backend>> = None;
        for number in 1..=self.attempts {
            let backend = match next.take().map_or_else(|| upstream.pick(&self.affinity, &tried), Ok) {
                Ok(backend) => backend,
                // Out of backends to retry on: the client hears what actually went wrong.
                Err(error) => {
                    upstream.record_refusal(&error);
                    return Err(last_error.unwrap_or(error));
                }
            };
            if number > 1 {
                tracing::info!(
                    upstream = %upstream.name,
                    backend = %backend.name,
                    "retrying after: {}",
                    last_error.as_ref().map_or_else(String::new, ToString::to_string)
                );
                upstream.metrics.retries.increment(1);
                tokio::time::sleep(backoff(&upstream.policy, number - 1)).await;
            }
            outcome.backend = Some(Arc::clone(&backend));
            let in_flight = upstream.begin(&backend, self.client_body.clone())?;
            let last = number == self.attempts;
            let mut request = self.request_for(&backend, last)?;
            let attempt = trace.map(|t| t.attempt(request.headers_mut()));
            let sent = backend.transport.send(&backend.name, request, &self.timeouts).await;
            let result = self.blamed(sent.result);
            if let (Some(trace), Some(attempt)) = (trace, attempt) {
                end_attempt(trace, attempt, &self.parts, &backend, number, &result);
            }
            let observed = result.as_ref().map(Answer::status);
            upstream.observe(
                &backend,
                Observation::Attempt {
                    result: observed,
                    latency: sent.waited,
                },
            );
            // An endpoint found by DNS that cannot be reached may be gone: its name is resolved again soon.
            if matches!(
                observed,
                Err(ProxyError::ConnectFailed { .. } | ProxyError::ConnectTimeout { .. })
            ) && backend.key().address.is_some()
            {
                core.shared.nudge_discovery();
            }
            let response = match result {
                Ok(Answer::Response(response)) => response,
                Ok(Answer::Upgraded(response, upgraded)) => return self.switch(response, upgraded, in_flight),
                Err(error)
                    if !last
                        && error.retryable(self.idempotent)
                        && (self.replay.is_some() || sent.unsent.is_some())
                        && upstream.allow_retry() =>
                {
                    if let Some(unsent) = sent.unsent {
                        self.body = unsent.into_body();
                    }
                    tried.push(backend);
                    last_error = Some(error);
                    continue;
                }
                Err(error) => return Err(error),
            };
            // A status the upstream retries: another backend answers instead, if there is one to try.
            let status = response.status();
            if !last && self.retries_status(status) {
                tried.push(Arc::clone(&backend));
                if let Ok(another) = upstream.pick(&self.affinity, &tried) {
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
            return Ok(self.relay(response, &backend, in_flight));
        }
        Err(last_error.unwrap_or_else(|| ProxyError::NoBackend {
            upstream: upstream.name.clone(),
            retry_after: None,
        }))
    }

    /// The request for one attempt at `backend`: its own copy of the head (the last attempt takes the
    /// original), and the kept body or the streamed one.
    fn request_for(&mut self, backend: &Backend, last: bool) -> Result<Request<Body>, ProxyError> {
        let body = match &self.replay {
            Some(kept) => kept.body(),
            None => std::mem::replace(&mut self.body, Body::empty()),
        };
        let mut request = Request::new(body);
        *request.method_mut() = self.parts.method.clone();
        *request.version_mut() = Version::HTTP_11;
        *request.headers_mut() = if last {
            std::mem::take(&mut self.parts.headers)
        } else {
            self.parts.headers.clone()
        };
        *request.uri_mut() = Uri::builder()
            .scheme(backend.scheme.clone())
            .authority(backend.authority.clone())
            .path_and_query(self.path_and_query.clone())
            .build()
            .map_err(|_| ProxyError::BadRequest("request target cannot be forwarded"))?;
        Ok(request)
    }

    /// An attempt's failure while the client's upload was failing is the client's: the backend saw a
    /// request cut off, and answered (or hung up) accordingly.
    fn blamed(&self, result: Result<Answer, ProxyError>) -> Result<Answer, ProxyError> {
        match result {
            Err(error)
                if error.origin() != Origin::Client && self.client_body.as_ref().is_some_and(FailureFlag::is_set) =>
            {
                Err(ProxyError::ClientBodyFailed)
            }
            other => other,
        }
    }

    /// Whether a response of `status` is retried on another backend: only for idempotent requests whose
    /// body was kept, never for an upgrade.
    fn retries_status(&self, status: StatusCode) -> bool {
        self.idempotent
            && self.replay.is_some()
            && self.client_upgrade.is_none()
            && self.upstream.policy.retry_on_statuses.contains(&status.as_u16())
    }

    /// The backend switched protocols: its answer goes to the client, and a tunnel joins the two.
    fn switch(
        &mut self,
        mut response: Response<Body>,
        upgraded: Upgraded,
        in_flight: InFlight,
    ) -> Result<Response<Body>, ProxyError> {
        let failed = |cause: &str| ProxyError::UpstreamFailed {
            backend: in_flight.backend().name.clone(),
            cause: cause.to_owned(),
        };
        let Some(client_upgrade) = self.client_upgrade.take() else {
            return Err(failed("101 Switching Protocols to a request that asked for no upgrade"));
        };
        if let Some(key) = &self.websocket_key {
            // The client's handshake is the CONNECT and its 200; the backend's must be a real one.
            if !websocket::accepted(key, response.headers()) {
                return Err(failed(
                    "the backend's WebSocket handshake answered with a wrong Sec-WebSocket-Accept",
                ));
            }
            websocket::as_connect_response(&mut response);
        }
        match client_upgrade {
            ClientSide::Hyper(client) => {
                tokio::spawn(tunnel(client, upgraded, in_flight, self.tunnel_idle));
            }
            ClientSide::Streams(from_client) => {
                let (to_client, body) = Body::channel(None);
                *response.body_mut() = body;
                tokio::spawn(tunnel_streams(
                    *from_client,
                    to_client,
                    upgraded,
                    in_flight,
                    self.tunnel_idle,
                ));
            }
        }
        Ok(response)
    }

    /// The backend's response on its way to the client: hop-by-hop fields removed, its body bounded by
    /// `timeouts.response_body` and carrying the in-flight guard until it is delivered.
    fn relay(&self, mut response: Response<Body>, backend: &Backend, in_flight: InFlight) -> Response<Body> {
        if let Some(cookie) = self.upstream.sticky_cookie(backend, &self.affinity, self.client.tls) {
            response.headers_mut().append(header::SET_COOKIE, cookie);
        }
        // RFC 9112 6.3: chunked framing wins over a Content-Length sent with it, which must not be passed on
        // (the client would take the body for complete after that many bytes).
        if response.headers().contains_key(header::TRANSFER_ENCODING) {
            response.headers_mut().remove(header::CONTENT_LENGTH);
        }
        headers::remove_hop_by_hop(response.headers_mut(), false);
        if self.close_unless_switched {
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        let stalled = ProxyError::UpstreamBodyStalled {
            backend: backend.name.clone(),
            after: self.timeouts.response_body,
        };
        let timeout = self.timeouts.response_body;
        response.map(|body| body.with_idle_timeout(timeout, stalled).with_observer(in_flight))
    }
}

/// Ends an attempt's client span with the OpenTelemetry HTTP attributes: any 4xx or 5xx answer is an error
/// for a client span.
fn end_attempt(
    trace: &RequestTrace,
    attempt: trace::Attempt,
    parts: &Parts,
    backend: &Backend,
    number: u32,
    result: &Result<Answer, ProxyError>,
) {
    let mut attributes: Vec<(&'static str, trace::Value)> = vec![
        ("http.request.method", parts.method.as_str().into()),
        ("server.address", backend.authority.host().into()),
        ("quic_proxy.backend", backend.name.as_str().into()),
        ("quic_proxy.upstream", backend.upstream.as_str().into()),
        ("http.request.resend_count", i64::from(number - 1).into()),
    ];
    if let Some(port) = backend.authority.port_u16() {
        attributes.push(("server.port", i64::from(port).into()));
    }
    let error = match result {
        Ok(answer) => {
            let status = answer.status();
            attributes.push(("http.response.status_code", i64::from(status.as_u16()).into()));
            (status.is_client_error() || status.is_server_error()).then(|| status.to_string())
        }
        Err(error) => {
            attributes.push(("error.type", error.cause().into()));
            Some(error.to_string())
        }
    };
    trace.end_attempt(attempt, attributes, error);
}

/// The client's side of a tunnel.
enum ClientSide {
    /// HTTP/1.1 and HTTP/2: hyper hands over the connection (or the stream) once the response is sent.
    Hyper(OnUpgrade),
    /// HTTP/3: what the client sends is the request body; what it receives, the response body.
    Streams(Box<Body>),
}

/// The HTTP/3 form of [`tunnel`]: the client's request body into the backend, the backend's bytes into the
/// response body, until either side ends or nothing has moved either way for `idle`.
async fn tunnel_streams(
    mut from_client: Body,
    to_client: crate::body::BodySender,
    backend: Upgraded,
    in_flight: InFlight,
    idle: std::time::Duration,
) {
    use http_body_util::BodyExt as _;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let name = &in_flight.backend().name;
    let (backend, activity) = Watched::new(backend);
    let (mut from_backend, mut to_backend) = tokio::io::split(backend);
    let upstream = async {
        while let Some(frame) = from_client.frame().await {
            let Ok(frame) = frame else { break };
            if let Ok(data) = frame.into_data() {
                if to_backend.write_all(&data).await.is_err() {
                    break;
                }
            }
        }
        let _ = to_backend.shutdown().await;
    };
    let downstream = async move {
        let mut buffer = bytes::BytesMut::with_capacity(16 * 1024);
        loop {
            buffer.reserve(16 * 1024);
            match from_backend.read_buf(&mut buffer).await {
                Ok(0) => return to_client.finish().await,
                Err(error) => return to_client.fail(error).await,
                Ok(_) => {
                    if to_client.data(buffer.split().freeze()).await.is_err() {
                        return;
                    }
                }
            }
        }
    };
    // The tunnel ends when the backend is done with it (after the client's end, which the backend sees);
    // what the client still sends then has nowhere to go.
    tokio::select! {
        () = downstream => {}
        () = async { upstream.await; std::future::pending::<()>().await } => {}
        () = activity.silent_for(idle) => {
            tracing::debug!(backend = %name, "tunnel idle for {idle:?}: closed");
        }
    }
}

/// Copies bytes both ways between an upgraded client and backend until either side closes, or until no
/// byte has moved either way for `idle`.
async fn tunnel(client: OnUpgrade, mut backend: Upgraded, in_flight: InFlight, idle: std::time::Duration) {
    let name = &in_flight.backend().name;
    match client.await {
        Ok(client) => {
            let (mut client, activity) = Watched::new(TokioIo::new(client));
            tokio::select! {
                copied = tokio::io::copy_bidirectional(&mut client, &mut backend) => if let Err(error) = copied {
                    tracing::debug!(backend = %name, "upgraded connection ended: {error}");
                },
                () = activity.silent_for(idle) => {
                    tracing::debug!(backend = %name, "upgraded connection idle for {idle:?}: closed");
                }
            }
        }
        Err(error) => tracing::warn!(backend = %name, "protocol upgrade failed: {error}"),
    }
}
