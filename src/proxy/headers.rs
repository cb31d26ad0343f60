//! Header rewriting between client and backend: hop-by-hop removal, then the forwarding headers.

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use ipnet::IpNet;

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
const HTTP2_SETTINGS: HeaderName = HeaderName::from_static("http2-settings");

/// Removes hop-by-hop headers: the fixed set and every header named in `Connection`. With `keep_upgrade`,
/// `Connection: upgrade` and `Upgrade` survive, for a protocol upgrade the backend must see.
/// `TE: trailers` is kept as the proxy's own: it relays trailers, so the backend may send them. `Trailer`
/// is end-to-end (RFC 9110 6.6.2) and stays: it names the trailer fields a chunked body will end with.
/// `HTTP2-Settings` only ever belongs to an h2c upgrade, which is never forwarded.
pub fn remove_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    let accepts_trailers = headers
        .get_all(header::TE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|token| {
            token
                .split(';')
                .next()
                .is_some_and(|t| t.trim().eq_ignore_ascii_case("trailers"))
        });
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|token| HeaderName::from_bytes(token.trim().as_bytes()).ok())
        .collect();
    for name in named {
        // Host is end-to-end whatever Connection says; the forwarding headers are rewritten afterwards anyway.
        if name != header::HOST && !(keep_upgrade && name == header::UPGRADE) {
            headers.remove(name);
        }
    }
    for name in [
        header::CONNECTION,
        KEEP_ALIVE,
        PROXY_CONNECTION,
        header::TE,
        header::TRANSFER_ENCODING,
        HTTP2_SETTINGS,
    ] {
        headers.remove(name);
    }
    if keep_upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        headers.remove(header::UPGRADE);
    }
    if accepts_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

/// True when the request asks for a protocol upgrade (`Connection: upgrade` with an `Upgrade` header) that
/// may be forwarded. An upgrade to h2c never is: a backend that accepted it would speak HTTP/2 over a
/// connection the proxy treats as an opaque tunnel, outside every check (h2c smuggling).
pub fn is_upgrade_request(headers: &HeaderMap) -> bool {
    let h2c = headers
        .get_all(header::UPGRADE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|token| token.trim().to_ascii_lowercase().starts_with("h2c"));
    headers.contains_key(header::UPGRADE)
        && !h2c
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|token| token.trim().eq_ignore_ascii_case("upgrade"))
}

/// What the forwarding headers say about the client.
pub struct Forwarding<'a> {
    pub client_ip: IpAddr,
    pub trusted_proxies: &'a [IpNet],
    pub https: bool,
    pub host: Option<&'a str>,
    /// `1.1`, `2` or `3`: the protocol version the client spoke, for `Via`.
    pub via_version: &'static str,
}

/// Adds X-Forwarded-For/-Proto/-Host and Via. Runs after hop-by-hop removal, so a client cannot strip them.
/// A client's own X-Forwarded-For is kept and extended only when it is a trusted proxy.
pub fn add_forwarding(headers: &mut HeaderMap, forwarding: &Forwarding<'_>) {
    let trusted = forwarding
        .trusted_proxies
        .iter()
        .any(|net| net.contains(&forwarding.client_ip));
    let client = forwarding.client_ip.to_string();
    let prior = if trusted {
        joined(headers, &X_FORWARDED_FOR)
    } else {
        None
    };
    let chain = match prior {
        Some(prior) => format!("{prior}, {client}"),
        None => client,
    };
    set(headers, X_FORWARDED_FOR, &chain);
    if !trusted || !headers.contains_key(&X_FORWARDED_PROTO) {
        set(
            headers,
            X_FORWARDED_PROTO,
            if forwarding.https { "https" } else { "http" },
        );
    }
    if !trusted || !headers.contains_key(&X_FORWARDED_HOST) {
        match forwarding.host {
            Some(host) => set(headers, X_FORWARDED_HOST, host),
            None => {
                headers.remove(X_FORWARDED_HOST);
            }
        }
    }
    if !trusted {
        headers.remove(header::FORWARDED);
    }
    let via = format!("{} quic-proxy", forwarding.via_version);
    let via = match joined(headers, &header::VIA) {
        Some(prior) => format!("{prior}, {via}"),
        None => via,
    };
    set(headers, header::VIA, &via);
}

fn joined(headers: &HeaderMap, name: &HeaderName) -> Option<String> {
    let values: Vec<&str> = headers.get_all(name).iter().filter_map(|v| v.to_str().ok()).collect();
    (!values.is_empty()).then(|| values.join(", "))
}

fn set(headers: &mut HeaderMap, name: HeaderName, value: &str) {
    match HeaderValue::from_str(value) {
        Ok(value) => {
            headers.insert(name, value);
        }
        Err(_) => {
            headers.remove(name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(name.as_bytes()), HeaderValue::from_str(value)) {
                map.append(n, v);
            }
        }
        map
    }

    fn forwarding<'a>(ip: &str, trusted: &'a [IpNet]) -> Forwarding<'a> {
        Forwarding {
            client_ip: ip.parse().unwrap_or(IpAddr::from([0, 0, 0, 0])),
            trusted_proxies: trusted,
            https: false,
            host: Some("example.com"),
            via_version: "1.1",
        }
    }

    #[test]
    fn removes_fixed_and_connection_named_headers() {
        let mut h = headers(&[
            ("connection", "keep-alive, X-Secret"),
            ("x-secret", "1"),
            ("keep-alive", "timeout=5"),
            ("te", "gzip"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("proxy-connection", "keep-alive"),
            ("http2-settings", "AAMAAABkAAQCAAAAAAIAAAAA"),
            ("trailer", "x-checksum"),
            ("accept", "*/*"),
        ]);
        remove_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 2, "{h:?}");
        assert!(h.contains_key("accept"));
        assert!(h.contains_key("trailer"), "Trailer is end-to-end");
    }

    #[test]
    fn an_h2c_upgrade_is_never_an_upgrade_to_forward() {
        for upgrade in ["h2c", "H2C", "websocket, h2c", "h2c-14"] {
            let mut h = headers(&[
                ("connection", "Upgrade, HTTP2-Settings"),
                ("upgrade", upgrade),
                ("http2-settings", "AAMAAABkAAQCAAAAAAIAAAAA"),
            ]);
            assert!(!is_upgrade_request(&h), "{upgrade}");
            remove_hop_by_hop(&mut h, false);
            assert!(h.is_empty(), "{upgrade}: {h:?}");
        }
    }

    #[test]
    fn te_trailers_is_kept_as_the_proxys_own() {
        let mut h = headers(&[("te", "gzip, trailers;q=1"), ("connection", "TE")]);
        remove_hop_by_hop(&mut h, false);
        assert_eq!(h.get("te").map(|v| v.as_bytes()), Some(&b"trailers"[..]));
        assert_eq!(h.len(), 1);
    }

    #[test]
    fn upgrade_survives_when_asked() {
        let mut h = headers(&[("connection", "Upgrade"), ("upgrade", "websocket")]);
        assert!(is_upgrade_request(&h));
        remove_hop_by_hop(&mut h, true);
        assert_eq!(h.get("upgrade").map(|v| v.as_bytes()), Some(&b"websocket"[..]));
        assert_eq!(h.get("connection").map(|v| v.as_bytes()), Some(&b"upgrade"[..]));
    }

    #[test]
    fn client_cannot_strip_forwarding_headers() {
        let mut h = headers(&[("connection", "X-Forwarded-For, Via")]);
        remove_hop_by_hop(&mut h, false);
        add_forwarding(&mut h, &forwarding("192.0.2.7", &[]));
        assert_eq!(h.get("x-forwarded-for").map(|v| v.as_bytes()), Some(&b"192.0.2.7"[..]));
        assert_eq!(h.get("via").map(|v| v.as_bytes()), Some(&b"1.1 quic-proxy"[..]));
    }

    #[test]
    fn untrusted_forwarded_for_is_replaced_and_trusted_is_extended() {
        let mut h = headers(&[("x-forwarded-for", "6.6.6.6"), ("forwarded", "for=6.6.6.6")]);
        add_forwarding(&mut h, &forwarding("192.0.2.7", &[]));
        assert_eq!(h.get("x-forwarded-for").map(|v| v.as_bytes()), Some(&b"192.0.2.7"[..]));
        assert!(!h.contains_key("forwarded"));

        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap_or_else(|_| unreachable!())];
        let mut h = headers(&[("x-forwarded-for", "198.51.100.1")]);
        add_forwarding(&mut h, &forwarding("10.1.2.3", &trusted));
        assert_eq!(
            h.get("x-forwarded-for").map(|v| v.as_bytes()),
            Some(&b"198.51.100.1, 10.1.2.3"[..])
        );
        assert_eq!(
            h.get("x-forwarded-host").map(|v| v.as_bytes()),
            Some(&b"example.com"[..])
        );
    }
}
