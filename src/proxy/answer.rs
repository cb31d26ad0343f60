//! The proxy's own answers: a short plain-text response for an error, from the one status table
//! (`ProxyError::status`), and its gRPC form (a trailers-only response whose `grpc-status` a gRPC client
//! reads) for gRPC calls; and a gRPC call's deadline, which stretches its timeouts.

use http::header::{self, HeaderValue};
use http::{Request, Response, Version};

use crate::body::Body;
use crate::error::{Origin, ProxyError};
use crate::protocol::Protocol;

/// A gRPC call: HTTP/2 or HTTP/3 with a gRPC content type.
pub fn is_grpc(request: &Request<Body>) -> bool {
    request.version() >= Version::HTTP_2
        && request
            .headers()
            .get(header::CONTENT_TYPE)
            .is_some_and(|t| t.as_bytes().starts_with(b"application/grpc"))
}

/// The proxy's own error as a gRPC client reads it: a trailers-only response (HTTP 200, no body) whose
/// `grpc-status` follows gRPC's mapping of HTTP statuses, so clients see UNAVAILABLE (and retry) where an
/// HTTP client sees 502, 503 or 504, instead of failing to parse a text body.
pub fn grpc_error_response(error: &ProxyError) -> Response<Body> {
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
pub fn grpc_timeout(headers: &http::HeaderMap) -> Option<std::time::Duration> {
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
pub fn error_response(error: &ProxyError, protocol: Protocol) -> Response<Body> {
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
    if error.closes_connection() && matches!(protocol, Protocol::Http11 | Protocol::Http10) {
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
