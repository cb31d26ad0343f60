//! A small HTTP/3 load generator for the benchmark: `h3load URL CONNECTIONS STREAMS SECONDS`.
//! Opens CONNECTIONS QUIC connections, keeps STREAMS requests in flight on each for SECONDS, trusts any
//! certificate (loopback benchmarks only), and prints one JSON line: completed 2xx responses, errors,
//! requests/s over the configured duration, and latency p50/p99 in milliseconds.
#![forbid(unsafe_code)]

use std::net::ToSocketAddrs;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context as _};
use bytes::Buf as _;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

/// Accepts any certificate: the benchmark measures servers on loopback with self-signed certificates.
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[derive(Default)]
struct Tally {
    ok: u64,
    errors: u64,
    latencies: Vec<Duration>,
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let usage = || anyhow!("usage: h3load URL CONNECTIONS STREAMS SECONDS");
    let url: http::Uri = args.get(1).ok_or_else(usage)?.parse()?;
    let connections: usize = args.get(2).ok_or_else(usage)?.parse()?;
    let streams: usize = args.get(3).ok_or_else(usage)?.parse()?;
    let seconds: u64 = args.get(4).ok_or_else(usage)?.parse()?;
    let authority = url.authority().ok_or_else(usage)?.clone();
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let address = (host.as_str(), authority.port_u16().unwrap_or(443))
        .to_socket_addrs()?
        .next()
        .context("the URL's host does not resolve")?;

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"h3".to_vec()];
    let client_config = quinn::ClientConfig::new(Arc::new(quinn::crypto::rustls::QuicClientConfig::try_from(tls)?));
    let bind: std::net::SocketAddr = if address.is_ipv6() { "[::]:0" } else { "0.0.0.0:0" }.parse()?;
    let mut endpoint = quinn::Endpoint::client(bind)?;
    endpoint.set_default_client_config(client_config);

    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut workers = Vec::new();
    for _ in 0..connections {
        let connection = endpoint.connect(address, &host)?.await.context("QUIC handshake")?;
        let (mut driver, sender) = h3::client::new(h3_quinn::Connection::new(connection)).await?;
        tokio::spawn(async move { std::future::poll_fn(|cx| driver.poll_close(cx)).await });
        for _ in 0..streams {
            let (mut sender, url) = (sender.clone(), url.clone());
            workers.push(tokio::spawn(async move {
                let mut tally = Tally::default();
                while Instant::now() < deadline {
                    let started = Instant::now();
                    let request = http::Request::get(url.clone()).body(()).unwrap_or_default();
                    let outcome = async {
                        let mut stream = sender.send_request(request).await?;
                        stream.finish().await?;
                        let response = stream.recv_response().await?;
                        while let Some(mut chunk) = stream.recv_data().await? {
                            chunk.advance(chunk.remaining());
                        }
                        anyhow::Ok(response.status())
                    };
                    match tokio::time::timeout(Duration::from_secs(5), outcome).await {
                        Ok(Ok(status)) if status.is_success() => {
                            tally.ok += 1;
                            tally.latencies.push(started.elapsed());
                        }
                        _ => tally.errors += 1,
                    }
                }
                tally
            }));
        }
    }
    let mut total = Tally::default();
    for worker in workers {
        let tally = worker.await?;
        total.ok += tally.ok;
        total.errors += tally.errors;
        total.latencies.extend(tally.latencies);
    }
    total.latencies.sort();
    let percentile = |p: f64| {
        let index = ((total.latencies.len() as f64 * p) as usize).min(total.latencies.len().saturating_sub(1));
        total.latencies.get(index).map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    println!(
        "{{\"ok\": {}, \"errors\": {}, \"rps\": {:.0}, \"p50_ms\": {:.2}, \"p99_ms\": {:.2}}}",
        total.ok,
        total.errors,
        total.ok as f64 / seconds as f64,
        percentile(0.50),
        percentile(0.99)
    );
    Ok(())
}
