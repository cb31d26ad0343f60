//! WebSocket over HTTP/2 and HTTP/3 (RFC 8441, RFC 9220) to an HTTP/1.1 backend: the client's extended
//! CONNECT becomes the backend's upgrade request (RFC 6455 4.1), with a key of the proxy's own, and the
//! backend's 101 becomes the client's 200 once its Sec-WebSocket-Accept proves it understood. The frames
//! that follow are the same on both sides and cross the tunnel untouched.

use base64::Engine as _;
use http::header::{self, HeaderMap, HeaderValue};
use http::request::Parts;
use http::{Method, Response, StatusCode, Version};
use rand::Rng as _;

/// Turns an extended CONNECT into an HTTP/1.1 WebSocket upgrade request; returns the key it sent.
pub(super) fn as_upgrade(parts: &mut Parts) -> String {
    let mut nonce = [0u8; 16];
    rand::rng().fill_bytes(&mut nonce);
    let key = base64::engine::general_purpose::STANDARD.encode(nonce);
    parts.method = Method::GET;
    parts.version = Version::HTTP_11;
    let headers = &mut parts.headers;
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    if let Ok(value) = HeaderValue::from_str(&key) {
        headers.insert(header::SEC_WEBSOCKET_KEY, value);
    }
    // RFC 8441 5: the client sends the version as over HTTP/1.1; 13 is the only one there is.
    headers
        .entry(header::SEC_WEBSOCKET_VERSION)
        .or_insert(HeaderValue::from_static("13"));
    key
}

/// True when the backend's 101 carries the right Sec-WebSocket-Accept for `key`.
pub(super) fn accepted(key: &str, headers: &HeaderMap) -> bool {
    headers
        .get(header::SEC_WEBSOCKET_ACCEPT)
        .is_some_and(|value| value.as_bytes() == crate::wire::websocket_accept(key).as_bytes())
}

/// The backend's 101 as the extended CONNECT's answer: 200, without the HTTP/1.1 handshake's fields;
/// the negotiated subprotocol and extensions stay.
pub(super) fn as_connect_response<B>(response: &mut Response<B>) {
    *response.status_mut() = StatusCode::OK;
    let headers = response.headers_mut();
    for name in [
        header::UPGRADE,
        header::CONNECTION,
        header::SEC_WEBSOCKET_ACCEPT,
        header::CONTENT_LENGTH,
    ] {
        headers.remove(name);
    }
}
