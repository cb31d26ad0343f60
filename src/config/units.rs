//! Parsing of the scalar forms the config file uses: durations, listen addresses, byte sizes.

use std::net::{Ipv6Addr, SocketAddr};
use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// A duration written as `500ms`, `10s`, `5m` or `1h`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim())
        .map_err(|e| format!("`{text}` is not a duration ({e}); write it like 500ms, 10s, 5m or 1h"))
}

/// A listen address: `:80` (every interface, IPv4 and IPv6), `127.0.0.1:8080` or `[::1]:8443`.
pub fn parse_listen_addr(text: &str) -> Result<SocketAddr, String> {
    let text = text.trim();
    if let Some(port) = text.strip_prefix(':') {
        let port: u16 = port
            .parse()
            .map_err(|_| format!("`{text}` has no valid port; write it like :80"))?;
        return Ok(SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), port));
    }
    text.parse()
        .map_err(|_| format!("`{text}` is not a listen address; write it like :80, 127.0.0.1:8080 or [::1]:8443"))
}

/// A byte size written as `65536`, `64KiB`, `16MiB` or `1GiB`.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let multiplier: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" | "KB" | "K" | "k" => 1 << 10,
        "MiB" | "MB" | "M" => 1 << 20,
        "GiB" | "GB" | "G" => 1 << 30,
        _ => return Err(format!("`{text}` is not a size; write it like 65536, 64KiB or 16MiB")),
    };
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(multiplier))
        .ok_or_else(|| format!("`{text}` is not a size; write it like 65536, 64KiB or 16MiB"))
}

/// Serde adapter: a duration string.
pub fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    parse_duration(&text).map_err(serde::de::Error::custom)
}

/// Serde adapter: an optional duration string.
pub fn optional_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    Option::<String>::deserialize(d)?
        .map(|text| parse_duration(&text).map_err(serde::de::Error::custom))
        .transpose()
}

/// Serde adapter: DNS servers, each an IP address (port 53) or an address with a port.
pub fn nameservers<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<SocketAddr>, D::Error> {
    Vec::<String>::deserialize(d)?
        .iter()
        .map(|text| {
            let text = text.trim();
            text.parse::<SocketAddr>()
                .or_else(|_| text.parse::<std::net::IpAddr>().map(|ip| SocketAddr::new(ip, 53)))
                .map_err(|_| {
                    serde::de::Error::custom(format!(
                        "`{text}` is not a DNS server address; write it like 10.0.0.10 or 127.0.0.1:5353"
                    ))
                })
        })
        .collect()
}

/// Serde adapter: a listen address string.
pub fn listen_addr<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
    let text = String::deserialize(d)?;
    parse_listen_addr(&text).map_err(serde::de::Error::custom)
}

/// Serde adapter: a header field name.
pub fn header_name<'de, D: Deserializer<'de>>(d: D) -> Result<http::HeaderName, D::Error> {
    let name = String::deserialize(d)?;
    http::HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| serde::de::Error::custom(format!("`{name}` is not a header name")))
}

/// Serde adapter: an optional byte size (see [`size`]).
pub fn optional_size<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    #[derive(Deserialize)]
    struct Size(#[serde(deserialize_with = "size")] u64);
    Ok(Option::<Size>::deserialize(d)?.map(|Size(bytes)| bytes))
}

/// Serde adapter: a byte size, as a number or a string with a unit.
pub fn size<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Number(u64),
        Text(String),
    }
    match Raw::deserialize(d)? {
        Raw::Number(n) => Ok(n),
        Raw::Text(text) => parse_size(&text).map_err(serde::de::Error::custom),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert!(parse_duration("ten seconds").is_err());
    }

    #[test]
    fn listen_addresses() {
        assert_eq!(
            parse_listen_addr(":80").map(|a| (a.ip().is_unspecified(), a.port())),
            Ok((true, 80))
        );
        assert_eq!(
            parse_listen_addr("127.0.0.1:8080"),
            Ok("127.0.0.1:8080".parse().unwrap_or_else(|_| unreachable!()))
        );
        assert_eq!(parse_listen_addr("[::1]:8443").map(|a| a.is_ipv6()), Ok(true));
        assert!(parse_listen_addr(":http").is_err());
        assert!(parse_listen_addr("localhost").is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("65536"), Ok(65536));
        assert_eq!(parse_size("64KiB"), Ok(65536));
        assert_eq!(parse_size("16MiB"), Ok(16 << 20));
        assert!(parse_size("lots").is_err());
    }
}
