//! TLS fixtures: a self-signed certificate per test, a proxy started with it, an h3 client over quinn and
//! an HTTP/2 client over rustls that trust exactly that certificate.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::{Buf, Bytes, BytesMut};
use h3::error::{ConnectionError, StreamError};
use http::{HeaderMap, Request, StatusCode};
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use quic_proxy::app::{self, Running};
use quic_proxy::tls::CertStore;
use quic_proxy::Config;
use quinn::crypto::rustls::QuicClientConfig;
use rustls::pki_types::CertificateDer;
use rustls::RootCertStore;
use tempfile::TempDir;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

use super::TestBody;

/// The name the generated certificate is issued for and that clients send as SNI and `:authority`.
pub const SERVER_NAME: &str = "localhost";

/// A self-signed certificate and key in a directory that lives as long as this value.
pub struct TestCerts {
    _dir: TempDir,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

impl TestCerts {
    pub fn generate() -> Self {
        quic_proxy::tls::install_crypto_provider();
        let dir = tempfile::tempdir().expect("create a temporary directory");
        let (cert_file, key_file) =
            quic_proxy::tls::generate_self_signed(dir.path(), &[SERVER_NAME.to_owned(), "127.0.0.1".to_owned()])
                .expect("generate a self-signed certificate");
        Self {
            _dir: dir,
            cert_file,
            key_file,
        }
    }

    /// The `server.tls` entry, as one line for the `server` section.
    pub fn server_line(&self) -> String {
        format!(
            "tls: {{cert_file: {:?}, key_file: {:?}}}",
            self.cert_file.display().to_string(),
            self.key_file.display().to_string()
        )
    }

    /// A root store holding only this certificate, so that nothing else is trusted.
    pub fn roots(&self) -> RootCertStore {
        let pem = std::fs::read(&self.cert_file).expect("read the generated certificate");
        let certs: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut pem.as_slice())
            .collect::<Result<_, _>>()
            .expect("parse the generated certificate");
        let mut roots = RootCertStore::empty();
        for cert in certs {
            roots.add(cert).expect("trust the generated certificate");
        }
        roots
    }

    /// A TLS client config trusting this certificate, offering `alpn`.
    pub fn client_config(&self, alpn: &[&[u8]]) -> rustls::ClientConfig {
        quic_proxy::tls::install_crypto_provider();
        let mut config =
            rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .expect("TLS versions")
                .with_root_certificates(self.roots())
                .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        config
    }

    /// A quinn client config for HTTP/3 trusting this certificate.
    pub fn quic_client_config(&self) -> quinn::ClientConfig {
        let crypto =
            QuicClientConfig::try_from(self.client_config(&[b"h3"])).expect("a TLS 1.3 config usable for QUIC");
        quinn::ClientConfig::new(Arc::new(crypto))
    }
}

/// Parses `yaml` and starts the proxy with the certificate its `server.tls` names.
pub async fn start_tls_proxy(yaml: &str) -> Running {
    let config = Config::parse(Path::new("h3-integration-test.yaml"), yaml)
        .unwrap_or_else(|e| panic!("config rejected: {e}\n---\n{yaml}"));
    let tls = config.server.tls.as_ref().expect("the config has a server.tls section");
    let certs = CertStore::load(tls).expect("load the test certificate");
    app::start(config, Some(certs)).await.expect("proxy starts")
}

/// The UDP address of a proxy's QUIC listener.
pub fn quic_addr(running: &Running) -> SocketAddr {
    running.quic_addr.expect("TLS is configured, so QUIC listens")
}

/// An HTTP/2 connection to the proxy's HTTPS listener; returns the sender and the `:authority` to use.
pub async fn h2_connect(running: &Running, certs: &TestCerts) -> (SendRequest<TestBody>, String) {
    let addr = running.https_addr.expect("HTTPS listens");
    let connector = tokio_rustls::TlsConnector::from(Arc::new(certs.client_config(&[b"h2"])));
    let tcp = TcpStream::connect(addr).await.expect("connect to the HTTPS listener");
    let name = rustls::pki_types::ServerName::try_from(SERVER_NAME).expect("server name");
    let tls = connector
        .connect(name, tcp)
        .await
        .expect("TLS handshake with the proxy");
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (sender, connection) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
        .await
        .expect("HTTP/2 handshake with the proxy");
    tokio::spawn(connection);
    (sender, format!("{SERVER_NAME}:{}", addr.port()))
}

/// A QUIC connection (handshake complete, ALPN h3) from a fresh client endpoint.
pub async fn connect_quic(
    addr: SocketAddr,
    certs: &TestCerts,
) -> Result<(quinn::Endpoint, quinn::Connection), quinn::ConnectionError> {
    let endpoint = quinn::Endpoint::client(SocketAddr::from(([127, 0, 0, 1], 0))).expect("bind a client UDP socket");
    let connecting = endpoint
        .connect_with(certs.quic_client_config(), addr, SERVER_NAME)
        .expect("start a QUIC handshake");
    let connection = connecting.await?;
    Ok((endpoint, connection))
}

type Sender = h3::client::SendRequest<h3_quinn::OpenStreams, Bytes>;
type Driver = h3::client::Connection<h3_quinn::Connection, Bytes>;
/// One request stream as the h3 client sees it.
pub type H3Stream = h3::client::RequestStream<h3_quinn::BidiStream<Bytes>, Bytes>;

/// Opens request streams on one HTTP/3 connection; clones share the connection.
#[derive(Clone)]
pub struct H3Sender {
    sender: Sender,
    authority: String,
}

impl H3Sender {
    /// The `:authority` every request from this client carries.
    pub fn authority(&self) -> &str {
        &self.authority
    }

    /// A request to `path_and_query` on the proxy with this client's `:authority`.
    pub fn request(&self, method: &str, path_and_query: &str) -> http::request::Builder {
        Request::builder()
            .method(method)
            .uri(format!("https://{}{path_and_query}", self.authority))
    }

    /// Sends the request head; the caller writes the body and finishes the stream.
    pub async fn open(&mut self, request: Request<()>) -> Result<H3Stream, StreamError> {
        self.sender.send_request(request).await
    }

    /// Sends `request` with `body` (one DATA frame per chunk) and reads the whole response.
    pub async fn send<I>(&mut self, request: Request<()>, body: I) -> Result<H3Reply, StreamError>
    where
        I: IntoIterator<Item = Bytes>,
    {
        let mut stream = self.open(request).await?;
        for chunk in body {
            stream.send_data(chunk).await?;
        }
        stream.finish().await?;
        read_reply(&mut stream).await
    }

    pub async fn get(&mut self, path_and_query: &str) -> Result<H3Reply, StreamError> {
        let request = self.request("GET", path_and_query).body(()).expect("request");
        self.send(request, []).await
    }
}

/// Reads a response head, its body to the end and any trailers.
pub async fn read_reply(stream: &mut H3Stream) -> Result<H3Reply, StreamError> {
    let response = stream.recv_response().await?;
    let mut body = BytesMut::new();
    while let Some(mut chunk) = stream.recv_data().await? {
        body.extend_from_slice(&chunk.copy_to_bytes(chunk.remaining()));
    }
    let trailers = stream.recv_trailers().await?;
    Ok(H3Reply {
        status: response.status(),
        headers: response.headers().clone(),
        body: body.freeze(),
        trailers,
    })
}

/// An HTTP/3 client connection to the proxy, with the h3 connection driver running (or not yet).
pub struct H3Client {
    pub sender: H3Sender,
    pub connection: quinn::Connection,
    endpoint: quinn::Endpoint,
    driver: DriverState,
}

enum DriverState {
    /// Control streams are not read yet, so the client has not learnt the server's SETTINGS.
    Idle(Box<Driver>),
    Running(JoinHandle<ConnectionError>),
    Taken,
}

impl H3Client {
    /// Connects and drives the HTTP/3 connection (control streams, SETTINGS, GOAWAY) in a task.
    pub async fn connect(addr: SocketAddr, certs: &TestCerts) -> Self {
        let mut client = Self::connect_undriven(addr, certs).await;
        client.start_driver();
        client
    }

    /// Connects without reading the server's control stream until [`H3Client::start_driver`], so the
    /// client does not know the server's limits (SETTINGS) and sends requests a compliant client
    /// would hold back.
    pub async fn connect_undriven(addr: SocketAddr, certs: &TestCerts) -> Self {
        let (endpoint, connection) = connect_quic(addr, certs).await.expect("QUIC handshake with the proxy");
        let (driver, sender) = h3::client::new(h3_quinn::Connection::new(connection.clone()))
            .await
            .expect("HTTP/3 connection setup");
        Self {
            sender: H3Sender {
                sender,
                authority: format!("{SERVER_NAME}:{}", addr.port()),
            },
            connection,
            endpoint,
            driver: DriverState::Idle(Box::new(driver)),
        }
    }

    pub fn start_driver(&mut self) {
        if !matches!(self.driver, DriverState::Idle(_)) {
            return;
        }
        if let DriverState::Idle(mut driver) = std::mem::replace(&mut self.driver, DriverState::Taken) {
            self.driver = DriverState::Running(tokio::spawn(async move {
                std::future::poll_fn(|cx| driver.poll_close(cx)).await
            }));
        }
    }

    /// Resolves when the HTTP/3 connection has ended, with the reason.
    pub async fn closed(&mut self) -> ConnectionError {
        self.start_driver();
        match std::mem::replace(&mut self.driver, DriverState::Taken) {
            DriverState::Running(task) => task.await.expect("h3 driver task"),
            _ => panic!("the h3 connection driver was already consumed"),
        }
    }

    /// Closes the connection and waits until the peer has been told.
    pub async fn close(self) {
        self.connection.close(0u32.into(), b"test done");
        self.endpoint.wait_idle().await;
    }

    pub async fn get(&mut self, path_and_query: &str) -> Result<H3Reply, StreamError> {
        self.sender.get(path_and_query).await
    }

    /// The client's own UDP address.
    pub fn local_addr(&self) -> SocketAddr {
        self.endpoint.local_addr().expect("the client endpoint's address")
    }

    /// Moves the client to a new UDP socket on a new port: active migration (RFC 9000 §9), in which quinn
    /// also switches to a connection ID the server issued and the client has not used yet.
    pub fn migrate(&self) {
        let socket =
            std::net::UdpSocket::bind(SocketAddr::from(([127, 0, 0, 1], 0))).expect("bind a new client socket");
        self.endpoint.rebind(socket).expect("move the client to the new socket");
    }
}

impl std::ops::Deref for H3Client {
    type Target = H3Sender;

    fn deref(&self) -> &H3Sender {
        &self.sender
    }
}

impl std::ops::DerefMut for H3Client {
    fn deref_mut(&mut self) -> &mut H3Sender {
        &mut self.sender
    }
}

/// A complete HTTP/3 response.
#[derive(Debug)]
pub struct H3Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub trailers: Option<HeaderMap>,
}

impl H3Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The demo backend that answered.
    pub fn backend(&self) -> &str {
        self.header("x-backend").unwrap_or("<no x-backend header>")
    }

    /// The demo backend's description of the request it received.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "expected the demo backend's JSON, got {} {:?}: {e}",
                self.status,
                String::from_utf8_lossy(&self.body[..self.body.len().min(500)])
            )
        })
    }

    /// Every value of `name` in the demo backend's description of the request headers.
    pub fn seen_header(&self, name: &str) -> Option<Vec<String>> {
        // Every test binary that includes this file also has `mod common` at its root.
        super::seen_header_values(&self.json(), name)
    }
}

/// Parses the config file at `path` and starts the proxy with the certificate its `server.tls` names, so
/// that `Shared::reload_from_file` reads that same file again.
pub async fn start_tls_proxy_from_file(path: &Path) -> Running {
    let config = Config::load(path).unwrap_or_else(|e| panic!("config rejected: {e}"));
    let tls = config.server.tls.as_ref().expect("the config has a server.tls section");
    let certs = CertStore::load(tls).expect("load the test certificate");
    app::start(config, Some(certs)).await.expect("proxy starts")
}

impl TestCerts {
    /// The certificate the files hold now, as a server presents it.
    pub fn certificate(&self) -> CertificateDer<'static> {
        let pem = std::fs::read(&self.cert_file).expect("read the certificate");
        let cert = rustls_pemfile::certs(&mut pem.as_slice())
            .next()
            .expect("a certificate in the file")
            .expect("valid PEM");
        cert
    }

    /// Writes a fresh certificate and key over this pair's files (a renewal in place) and returns the new
    /// certificate.
    pub fn regenerate(&self) -> CertificateDer<'static> {
        let dir = self.cert_file.parent().expect("the certificate is in a directory");
        let (cert_file, key_file) =
            quic_proxy::tls::generate_self_signed(dir, &[SERVER_NAME.to_owned(), "127.0.0.1".to_owned()])
                .expect("generate a new certificate");
        assert_eq!((&cert_file, &key_file), (&self.cert_file, &self.key_file));
        self.certificate()
    }
}

/// A TLS client config trusting exactly `trusted`, offering `alpn`.
pub fn client_config_trusting(trusted: &[CertificateDer<'static>], alpn: &[&[u8]]) -> rustls::ClientConfig {
    quic_proxy::tls::install_crypto_provider();
    let mut roots = RootCertStore::empty();
    for cert in trusted {
        roots.add(cert.clone()).expect("trust the certificate");
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    config
}

/// A quinn client config for HTTP/3 trusting exactly `trusted`.
pub fn quic_client_config_trusting(trusted: &[CertificateDer<'static>]) -> quinn::ClientConfig {
    let crypto = QuicClientConfig::try_from(client_config_trusting(trusted, &[b"h3"]))
        .expect("a TLS 1.3 config usable for QUIC");
    quinn::ClientConfig::new(Arc::new(crypto))
}

/// The leaf certificate the server presented on a QUIC connection.
pub fn quic_presented(connection: &quinn::Connection) -> CertificateDer<'static> {
    let identity = connection.peer_identity().expect("the server presented a certificate");
    let chain = identity
        .downcast::<Vec<CertificateDer<'static>>>()
        .expect("rustls reports a certificate chain");
    chain.first().expect("a leaf certificate").clone()
}

impl H3Client {
    /// Connects with `config` (trust, transport settings) and drives the HTTP/3 connection; the handshake's
    /// failure is returned rather than panicking, for tests where it is expected to fail.
    pub async fn connect_with(addr: SocketAddr, config: quinn::ClientConfig) -> Result<Self, quinn::ConnectionError> {
        let endpoint =
            quinn::Endpoint::client(SocketAddr::from(([127, 0, 0, 1], 0))).expect("bind a client UDP socket");
        let connection = endpoint
            .connect_with(config, addr, SERVER_NAME)
            .expect("start a QUIC handshake")
            .await?;
        let (driver, sender) = h3::client::new(h3_quinn::Connection::new(connection.clone()))
            .await
            .expect("HTTP/3 connection setup");
        let mut client = Self {
            sender: H3Sender {
                sender,
                authority: format!("{SERVER_NAME}:{}", addr.port()),
            },
            connection,
            endpoint,
            driver: DriverState::Idle(Box::new(driver)),
        };
        client.start_driver();
        Ok(client)
    }
}
