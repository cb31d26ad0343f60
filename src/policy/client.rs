//! The client a request comes from: the peer, or, when the peer is one of `server.trusted_proxies`, the
//! address that proxy put last in `X-Forwarded-For` (and so on through every trusted hop). Access lists,
//! rate limits and `{client_ip}` all use it.

use std::net::IpAddr;

use http::HeaderMap;
use ipnet::IpNet;

/// The request's real client: walks `X-Forwarded-For` from the right while the address in hand is a
/// trusted proxy's, and stops at the first address that is not (or that does not parse).
pub fn address(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let peer = canonical(peer);
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    let mut client = peer;
    let chain = headers
        .get_all("x-forwarded-for")
        .iter()
        .rev()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.rsplit(','));
    for entry in chain {
        let Ok(ip) = entry.trim().parse::<IpAddr>().map(canonical) else {
            break;
        };
        client = ip;
        if !is_trusted(&client) {
            break;
        }
    }
    client
}

/// An IPv4-mapped IPv6 address as the IPv4 address it is.
fn canonical(ip: IpAddr) -> IpAddr {
    ip.to_canonical()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap_or(IpAddr::from([0; 4]))
    }

    fn forwarded(values: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for value in values {
            if let Ok(value) = http::HeaderValue::from_str(value) {
                headers.append("x-forwarded-for", value);
            }
        }
        headers
    }

    #[test]
    fn only_trusted_hops_are_believed() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap_or_else(|_| unreachable!())];
        let chain = forwarded(&["6.6.6.6, 198.51.100.7", "10.0.0.2"]);
        assert_eq!(
            address(ip("192.0.2.1"), &chain, &trusted),
            ip("192.0.2.1"),
            "untrusted peer"
        );
        assert_eq!(address(ip("10.0.0.1"), &chain, &trusted), ip("198.51.100.7"));
        assert_eq!(
            address(ip("10.0.0.1"), &forwarded(&["garbage"]), &trusted),
            ip("10.0.0.1")
        );
        assert_eq!(address(ip("10.0.0.1"), &HeaderMap::new(), &trusted), ip("10.0.0.1"));
        assert_eq!(address(ip("::ffff:192.0.2.1"), &chain, &trusted), ip("192.0.2.1"));
    }
}
