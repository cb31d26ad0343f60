//! Connections to backends: TCP (no Nagle, a connect deadline), and TLS with rustls for `https://`
//! backends: SNI and verification against the system's roots or a configured CA, an optional client
//! certificate, ALPN for the protocols the backend may speak.

use std::fs;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use crate::config::{BackendTls, UpstreamProtocol};

use super::limits::Slot;

/// A connection to a backend, in clear text or TLS, holding its share of the backend's connection limit.
#[derive(Debug)]
pub struct Stream {
    io: Io,
    _slot: Option<Slot>,
}

#[derive(Debug)]
enum Io {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl Stream {
    /// The TCP connection underneath.
    pub fn tcp(&self) -> &TcpStream {
        match &self.io {
            Io::Plain(tcp) => tcp,
            Io::Tls(tls) => tls.get_ref().0,
        }
    }

    /// True when TLS negotiated HTTP/2.
    pub fn is_h2(&self) -> bool {
        matches!(&self.io, Io::Tls(tls) if tls.get_ref().1.alpn_protocol() == Some(b"h2"))
    }

    /// Whether the connection still looks usable after sitting idle, without consuming anything: closed
    /// (or reset) by the backend means no. Unexpected bytes on a clear-text connection mean no (an HTTP/1.1
    /// backend sends nothing unasked); on TLS they may be a session ticket, which is fine.
    pub fn idle_usable(&self) -> bool {
        let mut probe = [0u8; 1];
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        let mut buf = ReadBuf::new(&mut probe);
        match self.tcp().poll_peek(&mut cx, &mut buf) {
            Poll::Pending => true,
            Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => false,
            Poll::Ready(Ok(_)) => matches!(self.io, Io::Tls(_)),
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(tcp) => Pin::new(tcp).poll_read(cx, buf),
            Io::Tls(tls) => Pin::new(tls.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().io {
            Io::Plain(tcp) => Pin::new(tcp).poll_write(cx, data),
            Io::Tls(tls) => Pin::new(tls.as_mut()).poll_write(cx, data),
        }
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().io {
            Io::Plain(tcp) => Pin::new(tcp).poll_write_vectored(cx, bufs),
            Io::Tls(tls) => Pin::new(tls.as_mut()).poll_write_vectored(cx, bufs),
        }
    }
    fn is_write_vectored(&self) -> bool {
        match &self.io {
            Io::Plain(tcp) => tcp.is_write_vectored(),
            Io::Tls(tls) => tls.is_write_vectored(),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(tcp) => Pin::new(tcp).poll_flush(cx),
            Io::Tls(tls) => Pin::new(tls.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(tcp) => Pin::new(tcp).poll_shutdown(cx),
            Io::Tls(tls) => Pin::new(tls.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Why a connection could not be made.
#[derive(Debug)]
pub enum ConnectError {
    /// TCP did not connect within the deadline.
    Timeout,
    /// TCP failed (refused, unreachable, ...).
    Tcp(io::Error),
    /// The TLS handshake failed (certificate, protocol, ...).
    Tls(io::Error),
}

/// TLS to one backend: the client config (roots, client certificate, ALPN) and the name to verify.
#[derive(Clone)]
pub struct Tls {
    connector: TlsConnector,
    server_name: ServerName<'static>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls").field("server_name", &self.server_name).finish()
    }
}

impl Tls {
    /// The TLS client for a backend at `host`, offering the ALPN protocols `protocol` allows. Files are
    /// read now: a missing or bad CA, certificate or key is an error naming the key.
    pub fn new(settings: &BackendTls, host: &str, protocol: UpstreamProtocol) -> Result<Self, (String, String)> {
        crate::tls::install_crypto_provider();
        let roots = match &settings.ca_file {
            Some(path) => {
                let pem = fs::read(path).map_err(|e| ("tls.ca_file".to_owned(), format!("{}: {e}", path.display())))?;
                let mut roots = RootCertStore::empty();
                for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
                    let cert = cert.map_err(|e| {
                        (
                            "tls.ca_file".to_owned(),
                            format!("{}: not valid PEM: {e}", path.display()),
                        )
                    })?;
                    roots
                        .add(cert)
                        .map_err(|e| ("tls.ca_file".to_owned(), format!("{}: {e}", path.display())))?;
                }
                if roots.is_empty() {
                    return Err((
                        "tls.ca_file".to_owned(),
                        format!("{}: no certificate in it", path.display()),
                    ));
                }
                Arc::new(roots)
            }
            None => system_roots(),
        };
        let builder = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| ("tls".to_owned(), e.to_string()))?;
        if settings.insecure_skip_verify {
            tracing::warn!(
                host,
                "tls.insecure_skip_verify: the backend's certificate is not verified"
            );
        }
        let builder = if settings.insecure_skip_verify {
            builder
                .dangerous()
                .with_custom_certificate_verifier(any_certificate(provider()))
        } else {
            builder.with_root_certificates(roots)
        };
        let mut config = match (&settings.cert_file, &settings.key_file) {
            (Some(cert), Some(key)) => {
                let (chain, key) = client_identity(cert, key)?;
                builder.with_client_auth_cert(chain, key).map_err(|e| {
                    (
                        "tls.key_file".to_owned(),
                        format!("unusable client certificate or key: {e}"),
                    )
                })?
            }
            _ => builder.with_no_client_auth(),
        };
        config.alpn_protocols = match protocol {
            UpstreamProtocol::Auto => vec![b"h2".to_vec(), b"http/1.1".to_vec()],
            UpstreamProtocol::H2 => vec![b"h2".to_vec()],
            UpstreamProtocol::Http1 | UpstreamProtocol::H2c => vec![b"http/1.1".to_vec()],
        };
        let name = settings.server_name.as_deref().unwrap_or(host);
        let server_name =
            ServerName::try_from(name.trim_start_matches('[').trim_end_matches(']').to_owned()).map_err(|_| {
                (
                    "tls.server_name".to_owned(),
                    format!("`{name}` is not a host name or address"),
                )
            })?;
        Ok(Self {
            connector: TlsConnector::from(Arc::new(config)),
            server_name,
        })
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The system's trusted roots, read once.
fn system_roots() -> Arc<RootCertStore> {
    static ROOTS: OnceLock<Arc<RootCertStore>> = OnceLock::new();
    Arc::clone(ROOTS.get_or_init(|| {
        let mut roots = RootCertStore::empty();
        let loaded = rustls_native_certs::load_native_certs();
        for error in &loaded.errors {
            tracing::warn!("reading the system's trusted certificates: {error}");
        }
        let (added, _ignored) = roots.add_parsable_certificates(loaded.certs);
        if added == 0 {
            tracing::warn!("no trusted certificates found on the system: https backends need tls.ca_file");
        }
        Arc::new(roots)
    }))
}

type Identity = (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>);

fn client_identity(cert: &std::path::Path, key: &std::path::Path) -> Result<Identity, (String, String)> {
    let cert_pem = fs::read(cert).map_err(|e| ("tls.cert_file".to_owned(), format!("{}: {e}", cert.display())))?;
    let chain: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut cert_pem.as_slice())
        .collect::<Result<_, _>>()
        .map_err(|e| {
            (
                "tls.cert_file".to_owned(),
                format!("{}: not valid PEM: {e}", cert.display()),
            )
        })?;
    if chain.is_empty() {
        return Err((
            "tls.cert_file".to_owned(),
            format!("{}: no certificate in it", cert.display()),
        ));
    }
    let key_pem = fs::read(key).map_err(|e| ("tls.key_file".to_owned(), format!("{}: {e}", key.display())))?;
    let key = rustls_pemfile::private_key(&mut key_pem.as_slice())
        .map_err(|e| {
            (
                "tls.key_file".to_owned(),
                format!("{}: not valid PEM: {e}", key.display()),
            )
        })?
        .ok_or_else(|| {
            (
                "tls.key_file".to_owned(),
                format!("{}: no private key in it", key.display()),
            )
        })?;
    Ok((chain, key))
}

/// Connects to `host:port` within `timeout`, then TLS when `tls` is given.
pub async fn connect(
    to: &Address,
    timeout: Duration,
    tls: Option<&Tls>,
    slot: Option<Slot>,
) -> Result<Stream, ConnectError> {
    let connecting = match to {
        Address::Resolved(address) => tokio::time::timeout(timeout, TcpStream::connect(*address)).await,
        Address::Name(host, port) => {
            let host = host.trim_start_matches('[').trim_end_matches(']');
            tokio::time::timeout(timeout, TcpStream::connect((host, *port))).await
        }
    };
    let tcp = match connecting {
        Ok(Ok(tcp)) => tcp,
        Ok(Err(error)) => return Err(ConnectError::Tcp(error)),
        Err(_) => return Err(ConnectError::Timeout),
    };
    // Requests and responses are written whole; waiting to coalesce them only adds latency.
    let _ = tcp.set_nodelay(true);
    let Some(tls) = tls else {
        return Ok(Stream {
            io: Io::Plain(tcp),
            _slot: slot,
        });
    };
    // The handshake shares the connect deadline: a backend that accepts and then stalls is a timeout too.
    match tokio::time::timeout(timeout, tls.connector.connect(tls.server_name.clone(), tcp)).await {
        Ok(Ok(stream)) => Ok(Stream {
            io: Io::Tls(Box::new(stream)),
            _slot: slot,
        }),
        Ok(Err(error)) => Err(ConnectError::Tls(error)),
        Err(_) => Err(ConnectError::Timeout),
    }
}

/// Where a backend's connections go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    /// An address found by discovery (or written as an IP address).
    Resolved(std::net::SocketAddr),
    /// A host name resolved by the system at each connect.
    Name(String, u16),
}

/// A verifier for `tls.insecure_skip_verify` (and the benchmark clients, against self-signed loopback
/// peers): any certificate is accepted, but the handshake's signatures are still checked with `provider`,
/// so the connection is at least consistent with the certificate presented.
pub fn any_certificate(provider: Arc<rustls::crypto::CryptoProvider>) -> Arc<dyn ServerCertVerifier> {
    Arc::new(AnyCertificate(provider))
}

#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
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
