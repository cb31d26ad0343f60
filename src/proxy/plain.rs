//! What only the plain HTTP listener answers itself: ACME http-01 challenges, and with
//! `server.redirect_to_https` a 308 to the same URL on HTTPS for everything else.

use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};

use super::checks::request_host;
use crate::body::Body;
use crate::error::ProxyError;
use crate::routing::Snapshot;
use crate::runtime::Shared;
use crate::tls::HTTP_CHALLENGE_PREFIX;

/// The plain listener's own answer to `request`, if it has one; `None` lets the request be routed.
pub fn answer(
    shared: &Shared,
    snapshot: &Snapshot,
    request: &Request<Body>,
) -> Result<Option<Response<Body>>, ProxyError> {
    let tls = snapshot.config.server.tls.as_ref();
    let path = request.uri().path();
    if tls.is_some_and(|tls| tls.acme.is_some()) && path.starts_with(HTTP_CHALLENGE_PREFIX) {
        // With ACME on, the proxy owns the challenge path: a token it does not know is a 404, never a
        // redirect or a backend's answer.
        let key_authorization = shared.certs().and_then(|certs| certs.challenges().http_answer(path));
        return Ok(Some(match key_authorization {
            Some(text) => plain(StatusCode::OK, text),
            None => plain(StatusCode::NOT_FOUND, "no such ACME challenge\n".to_owned()),
        }));
    }
    if !snapshot.config.server.redirect_to_https || tls.is_none() {
        return Ok(None);
    }
    let host = request_host(request).ok_or(ProxyError::BadRequest("a redirect to HTTPS needs a Host"))?;
    let host = host_without_port(&host).ok_or(ProxyError::BadRequest("the Host field is not a host name"))?;
    let port = match shared.https_port() {
        Some(443) | None => String::new(),
        Some(port) => format!(":{port}"),
    };
    let target = request
        .uri()
        .path_and_query()
        .map(|pq| pq.as_str())
        .filter(|pq| pq.starts_with('/'))
        .unwrap_or("/");
    let location = format!("https://{host}{port}{target}");
    let location =
        HeaderValue::try_from(location).map_err(|_| ProxyError::BadRequest("the request target is invalid"))?;
    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::PERMANENT_REDIRECT;
    response.headers_mut().insert(header::LOCATION, location);
    Ok(Some(response))
}

fn plain(status: StatusCode, text: String) -> Response<Body> {
    let mut response = Response::new(Body::full(text));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// `a.test:8080` -> `a.test`, `[::1]:80` -> `[::1]`; `None` unless what is left is a DNS name, an IPv4
/// address or a bracketed IPv6 address (nothing that could bend the Location it goes into).
fn host_without_port(host: &str) -> Option<&str> {
    let name = if let Some(rest) = host.strip_prefix('[') {
        let end = rest.find(']')?;
        let literal = &rest[..end];
        literal.parse::<std::net::Ipv6Addr>().ok()?;
        let after = &rest[end + 1..];
        if !(after.is_empty() || after.strip_prefix(':').is_some_and(is_port)) {
            return None;
        }
        return Some(&host[..end + 2]);
    } else {
        match host.rsplit_once(':') {
            Some((name, port)) if is_port(port) => name,
            Some(_) => return None,
            None => host,
        }
    };
    let valid = !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_');
    valid.then_some(name)
}

fn is_port(text: &str) -> bool {
    (1..=5).contains(&text.len()) && text.bytes().all(|b| b.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::host_without_port;

    #[test]
    fn hosts_for_a_location() {
        assert_eq!(host_without_port("a.test"), Some("a.test"));
        assert_eq!(host_without_port("a.test:8080"), Some("a.test"));
        assert_eq!(host_without_port("127.0.0.1:80"), Some("127.0.0.1"));
        assert_eq!(host_without_port("[::1]:80"), Some("[::1]"));
        assert_eq!(host_without_port("[::1]"), Some("[::1]"));
        for bad in [
            "",
            "a.test:",
            "a.test:x",
            "a b",
            "a.test/evil",
            "[::1",
            "[zz]",
            "[::1]x",
            "user@a.test",
            ":80",
        ] {
            assert_eq!(host_without_port(bad), None, "{bad}");
        }
    }
}
