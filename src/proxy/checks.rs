//! What the core refuses before routing: what a listener flagged (`Refused`), CONNECT (a reverse proxy is
//! no tunnel), the asterisk form for anything but OPTIONS, userinfo in a target; for HTTP/1 the framing and
//! Host rules of RFC 9112 (through the one wire syntax, `crate::wire`), for HTTP/2 and HTTP/3 the
//! connection-specific fields they forbid. The same malformed input gets the same answer on every listener.

use http::header::{self, HeaderName, HeaderValue};
use http::{Method, Request, Version};

use crate::body::Body;
use crate::error::ProxyError;
use crate::wire::{self, CodingError};

/// A problem a listener found in a request that the core must answer (and log) instead of forwarding it.
#[derive(Debug, Clone)]
pub struct Refused(pub ProxyError);

/// The `:protocol` of an extended CONNECT (RFC 8441 over HTTP/2, RFC 9220 over HTTP/3), as the listener
/// received it.
#[derive(Debug, Clone)]
pub struct ConnectProtocol(pub String);

/// The one protocol an extended CONNECT may ask for: WebSocket, carried to an HTTP/1.1 backend as an upgrade.
pub const WEBSOCKET: &str = "websocket";

/// True when `request` is a WebSocket over HTTP/2 or HTTP/3 (an extended CONNECT the core serves).
pub fn is_websocket_connect<B>(request: &Request<B>) -> bool {
    request.method() == Method::CONNECT
        && request.version() >= Version::HTTP_2
        && request
            .extensions()
            .get::<ConnectProtocol>()
            .is_some_and(|protocol| protocol.0 == WEBSOCKET)
}

/// Refuses a request that must not reach a backend.
pub fn check_request(request: &Request<Body>) -> Result<(), ProxyError> {
    if let Some(Refused(error)) = request.extensions().get::<Refused>() {
        return Err(error.clone());
    }
    // A reverse proxy is no tunnel: CONNECT is answered here, never forwarded. An extended CONNECT is served
    // for WebSocket alone, and needs the target a WebSocket URI has (RFC 8441 4, RFC 9220 3).
    if request.method() == Method::CONNECT {
        if is_websocket_connect(request) {
            if request.uri().scheme().is_none() || request.uri().path_and_query().is_none() {
                return Err(ProxyError::BadRequest("an extended CONNECT without :scheme or :path"));
            }
        } else if request.extensions().get::<ConnectProtocol>().is_some() {
            return Err(ProxyError::NotImplemented(
                "extended CONNECT for a protocol other than websocket",
            ));
        } else {
            return Err(ProxyError::MethodNotAllowed);
        }
    }
    // The asterisk form is for OPTIONS alone (RFC 9110 9.3.7, RFC 9114 4.3.1).
    if request.uri().path() == "*" && request.method() != Method::OPTIONS {
        return Err(ProxyError::BadRequest("only OPTIONS may have the target *"));
    }
    // Userinfo in a target is deprecated and never forwarded (RFC 9110 4.2.4, RFC 9114 4.3.1).
    if request.uri().authority().is_some_and(|a| a.as_str().contains('@')) {
        return Err(ProxyError::BadRequest("userinfo in the request target"));
    }
    let headers = request.headers();
    // One Content-Length grammar for every protocol (RFC 9110 8.6).
    wire::content_length(
        headers
            .get_all(header::CONTENT_LENGTH)
            .iter()
            .map(HeaderValue::as_bytes),
    )
    .map_err(|error| ProxyError::BadRequest(length_refusal(error)))?;
    if request.version() > Version::HTTP_11 {
        return check_fields(request);
    }
    if headers.contains_key(header::CONTENT_LENGTH) && headers.contains_key(header::TRANSFER_ENCODING) {
        return Err(ProxyError::BadRequest("both Content-Length and Transfer-Encoding"));
    }
    wire::transfer_coding(
        headers
            .get_all(header::TRANSFER_ENCODING)
            .iter()
            .map(HeaderValue::as_bytes),
    )
    .map_err(|error| match error {
        CodingError::Malformed(why) => ProxyError::BadRequest(why),
        CodingError::Unsupported => ProxyError::NotImplemented("unsupported transfer coding"),
    })?;
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

/// What the client is told about a Content-Length the wire syntax refused.
pub fn length_refusal(error: wire::LengthError) -> &'static str {
    match error {
        wire::LengthError::Invalid => "invalid Content-Length",
        wire::LengthError::Repeated => "more than one Content-Length",
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
pub fn request_host(request: &Request<Body>) -> Option<String> {
    if let Some(authority) = request.uri().authority() {
        return Some(authority.as_str().to_owned());
    }
    request
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned)
}
