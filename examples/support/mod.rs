//! What the benchmark's client programs share: a TLS client that trusts any certificate (loopback
//! benchmarks against self-signed certificates only), QUIC client endpoints, and URL parsing.

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context as _};

/// A TLS client config offering `alpn`, without certificate checks.
pub fn insecure_tls(alpn: &[&[u8]], tls13_only: bool) -> anyhow::Result<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let versions: &[&rustls::SupportedProtocolVersion] = if tls13_only {
        &[&rustls::version::TLS13]
    } else {
        rustls::DEFAULT_VERSIONS
    };
    let mut tls = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(versions)?
        .dangerous()
        .with_custom_certificate_verifier(quic_proxy::upstream::any_certificate(provider))
        .with_no_client_auth();
    tls.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(tls)
}

/// A QUIC client config for HTTP/3; `keep_alive` sends a PING whenever the connection is idle that long.
pub fn h3_client_config(keep_alive: Option<Duration>) -> anyhow::Result<quinn::ClientConfig> {
    let tls = insecure_tls(&[b"h3"], true)?;
    let mut config = quinn::ClientConfig::new(Arc::new(quinn::crypto::rustls::QuicClientConfig::try_from(tls)?));
    let mut transport = quinn::TransportConfig::default();
    transport.keep_alive_interval(keep_alive);
    config.transport_config(Arc::new(transport));
    Ok(config)
}

/// A client endpoint on its own UDP socket, as every real client has: servers that spread connections
/// over several sockets by source address (SO_REUSEPORT) see them as they would in production.
pub fn quic_endpoint(server: SocketAddr, config: &quinn::ClientConfig) -> anyhow::Result<quinn::Endpoint> {
    let bind: SocketAddr = if server.is_ipv6() { "[::]:0" } else { "0.0.0.0:0" }.parse()?;
    let mut endpoint = quinn::Endpoint::client(bind)?;
    endpoint.set_default_client_config(config.clone());
    Ok(endpoint)
}

/// A URL's host (without brackets), socket address and `host[:port]` for Host headers.
pub struct Target {
    pub host: String,
    pub address: SocketAddr,
    pub authority: String,
}

pub fn target(url: &http::Uri) -> anyhow::Result<Target> {
    let authority = url.authority().ok_or_else(|| anyhow!("{url}: no host"))?;
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let default_port = if url.scheme_str() == Some("http") { 80 } else { 443 };
    let address = (host.as_str(), authority.port_u16().unwrap_or(default_port))
        .to_socket_addrs()?
        .next()
        .context("the URL's host does not resolve")?;
    Ok(Target {
        host,
        address,
        authority: authority.as_str().to_owned(),
    })
}
