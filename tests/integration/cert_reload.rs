//! Certificate reload on SIGHUP, against the real binary: new handshakes (QUIC and TCP) get the new
//! certificate, open connections keep theirs and keep working, the transport settings stay as
//! configured, and a reload that fails leaves the previous certificate serving.
//!
//! Every client here trusts both the old and the new certificate, so a handshake succeeds either way
//! and the assertions on the presented certificate are what tell the two apart.

use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitStatus;
use std::sync::Arc;
use std::time::Duration;

use crate::support::http3::*;
use crate::support::*;
use bytes::Bytes;
use futures_util::FutureExt as _;
use http::{Request, StatusCode};
use http_body_util::{BodyExt as _, Empty};
use hyper_util::rt::TokioIo;
use quinn::crypto::rustls::QuicClientConfig;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::RootCertStore;
use serde_json::Value;
use tempfile::TempDir;
use tokio::net::TcpStream;

/// Starting a process and several handshakes in a debug build, possibly next to other test binaries.
const PROCESS_GUARD: Duration = Duration::from_secs(60);

type Sender = h3::client::SendRequest<h3_quinn::OpenStreams, Bytes>;

/// The proxy binary running with a config of its own (the shared [`ProxyProcess`]), and that config's
/// directory.
struct Proxy {
    process: ProxyProcess,
    quic: SocketAddr,
    https: SocketAddr,
    _config_dir: TempDir,
}

impl Proxy {
    /// Starts the binary in front of `backend`, with TLS from `certs` and `quic` as its `quic` section.
    async fn start(certs: &TestCerts, backend: SocketAddr, quic: &str) -> Self {
        let config_dir = tempfile::tempdir().expect("create a temporary directory");
        let config = config_dir.path().join("proxy.yaml");
        let yaml = format!(
            "server:\n  address: \"127.0.0.1:0\"\n  fallback_address: \"127.0.0.1:0\"\n  drain_timeout: 5s\n  {}\n\
             quic: {quic}\n\
             telemetry:\n  metrics:\n    address: \"127.0.0.1:0\"\n  logging:\n    level: info\n    format: json\n\
             backends: {}\n",
            certs.server_line(),
            backend_list(&[("reload", backend, 1)]),
        );
        std::fs::write(&config, yaml).expect("write the config");
        // Returns once "quic-proxy started" is logged, after the signal handlers are in place: a SIGHUP
        // before them would end the process.
        let process = ProxyProcess::start(&config, &[]).await;
        Self {
            quic: process.quic.expect("TLS is configured, so QUIC listens"),
            https: process.https.expect("TLS is configured, so HTTPS listens"),
            process,
            _config_dir: config_dir,
        }
    }

    async fn wait_for_log(&mut self, matches: impl Fn(&Value) -> bool, what: &str) -> Value {
        self.process.wait_for_log(matches, what).await
    }

    async fn signal(&self, signal: &str) {
        self.process.signal(signal).await;
    }

    /// SIGTERM, then the exit status once the drain is over.
    async fn terminate(self) -> ExitStatus {
        self.process.terminate().await
    }
}

/// The certificate in a PEM file, as a server presents it.
fn read_cert(path: &Path) -> CertificateDer<'static> {
    let pem = std::fs::read(path).expect("read the certificate");
    let cert = rustls_pemfile::certs(&mut pem.as_slice())
        .next()
        .expect("a certificate in the file")
        .expect("valid PEM");
    cert
}

/// Writes a fresh certificate and key over the files `certs` names.
fn replace_certificate(certs: &TestCerts) -> CertificateDer<'static> {
    let dir = certs.cert_file.parent().expect("the certificate is in a directory");
    let (cert_file, key_file) =
        quic_proxy::tls::generate_self_signed(dir, &[SERVER_NAME.to_owned(), "127.0.0.1".to_owned()])
            .expect("generate a new certificate");
    assert_eq!((&cert_file, &key_file), (&certs.cert_file, &certs.key_file));
    read_cert(&cert_file)
}

/// A TLS client config trusting exactly `trusted`, offering `alpn`.
fn tls_client(trusted: &[&CertificateDer<'static>], alpn: &[&[u8]]) -> rustls::ClientConfig {
    quic_proxy::tls::install_crypto_provider();
    let mut roots = RootCertStore::empty();
    for cert in trusted {
        roots.add((*cert).clone()).expect("trust the certificate");
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    config
}

/// A QUIC connection (ALPN h3) trusting `trusted`.
async fn quic_connect(addr: SocketAddr, trusted: &[&CertificateDer<'static>]) -> (quinn::Endpoint, quinn::Connection) {
    let crypto = QuicClientConfig::try_from(tls_client(trusted, &[b"h3"])).expect("a TLS config usable for QUIC");
    let endpoint = quinn::Endpoint::client(SocketAddr::from(([127, 0, 0, 1], 0))).expect("bind a client UDP socket");
    let connection = endpoint
        .connect_with(quinn::ClientConfig::new(Arc::new(crypto)), addr, SERVER_NAME)
        .expect("start a QUIC handshake")
        .await
        .expect("QUIC handshake with the proxy");
    (endpoint, connection)
}

/// The leaf certificate the peer presented on `connection`.
fn presented(connection: &quinn::Connection) -> CertificateDer<'static> {
    let identity = connection.peer_identity().expect("the server presented a certificate");
    let chain = identity
        .downcast::<Vec<CertificateDer<'static>>>()
        .expect("rustls reports a certificate chain");
    chain.first().expect("a leaf certificate").clone()
}

/// An HTTP/3 connection to the proxy with its driver running.
struct H3Connection {
    endpoint: quinn::Endpoint,
    connection: quinn::Connection,
    sender: Sender,
    authority: String,
}

impl H3Connection {
    async fn open(addr: SocketAddr, trusted: &[&CertificateDer<'static>]) -> Self {
        let (endpoint, connection) = quic_connect(addr, trusted).await;
        let (mut driver, sender) = h3::client::new(h3_quinn::Connection::new(connection.clone()))
            .await
            .expect("HTTP/3 connection setup");
        tokio::spawn(async move {
            drop(std::future::poll_fn(|cx| driver.poll_close(cx)).await);
        });
        Self {
            endpoint,
            connection,
            sender,
            authority: format!("{SERVER_NAME}:{}", addr.port()),
        }
    }

    async fn get(&mut self, path: &str) -> H3Reply {
        let request = Request::get(format!("https://{}{path}", self.authority))
            .body(())
            .expect("request");
        let mut stream = self.sender.send_request(request).await.expect("send the request");
        stream.finish().await.expect("finish the request");
        read_reply(&mut stream).await.expect("read the response")
    }

    async fn close(self) {
        self.connection.close(0u32.into(), b"test done");
        self.endpoint.wait_idle().await;
    }
}

/// An HTTPS (HTTP/1.1 over TLS) request on a new connection: the certificate presented and the status.
async fn https_get(
    addr: SocketAddr,
    trusted: &[&CertificateDer<'static>],
    path: &str,
) -> (CertificateDer<'static>, StatusCode) {
    let connector = tokio_rustls::TlsConnector::from(Arc::new(tls_client(trusted, &[b"http/1.1"])));
    let tcp = TcpStream::connect(addr).await.expect("connect to the HTTPS listener");
    let tls = connector
        .connect(ServerName::try_from(SERVER_NAME).expect("server name"), tcp)
        .await
        .expect("TLS handshake with the proxy");
    let cert = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .expect("the server presented a certificate")
        .clone()
        .into_owned();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .expect("HTTP/1.1 handshake");
    tokio::spawn(connection);
    let request = Request::get(path)
        .header(http::header::HOST, SERVER_NAME)
        .body(Empty::<Bytes>::new())
        .expect("request");
    let response = sender.send_request(request).await.expect("HTTPS request");
    let status = response.status();
    response.into_body().collect().await.expect("response body");
    (cert, status)
}

/// Checks the peer's limit on concurrent request streams on a fresh connection: `limit` streams open at
/// once, one more must wait. Opening a stream sends nothing, so only the proxy's transport parameters
/// decide.
async fn assert_stream_limit(addr: SocketAddr, trusted: &[&CertificateDer<'static>], limit: usize) {
    let (endpoint, connection) = quic_connect(addr, trusted).await;
    let mut streams = Vec::new();
    for opened in 0..limit {
        let stream = connection
            .open_bi()
            .now_or_never()
            .unwrap_or_else(|| panic!("stream {} of {limit} could not be opened", opened + 1));
        streams.push(stream.expect("open a stream"));
    }
    assert!(
        connection.open_bi().now_or_never().is_none(),
        "stream {} opened: the proxy allows more than {limit}",
        limit + 1
    );
    connection.close(0u32.into(), b"probe done");
    drop(streams);
    endpoint.wait_idle().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_gives_new_connections_the_new_certificate() {
    guarded_for(PROCESS_GUARD, async {
        let certs = TestCerts::generate();
        let backend = start_backends(&["reload"])[0];
        let mut proxy = Proxy::start(&certs, backend, "{max_concurrent_streams: 7}").await;
        let old = read_cert(&certs.cert_file);

        let mut before = H3Connection::open(proxy.quic, &[&old]).await;
        let reply = before.get("/before").await;
        assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
        assert_eq!(reply.backend(), "reload");
        assert!(presented(&before.connection) == old);
        assert_stream_limit(proxy.quic, &[&old], 7).await;

        let new = replace_certificate(&certs);
        assert!(new != old, "a new certificate was generated");
        proxy.signal("HUP").await;
        proxy
            .wait_for_log(
                |line| {
                    line["message"]
                        .as_str()
                        .is_some_and(|m| m.starts_with("SIGHUP: configuration") && m.contains("certificate replaced"))
                },
                "SIGHUP: ... certificate replaced",
            )
            .await;

        let mut after = H3Connection::open(proxy.quic, &[&old, &new]).await;
        assert!(
            presented(&after.connection) == new,
            "a new QUIC handshake got the old certificate"
        );
        let reply = after.get("/after").await;
        assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);

        let (https_cert, status) = https_get(proxy.https, &[&old, &new], "/https").await;
        assert!(
            https_cert == new,
            "a new TLS handshake over TCP got the old certificate"
        );
        assert_eq!(status, StatusCode::OK);

        let reply = before.get("/still-open").await;
        assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
        assert!(presented(&before.connection) == old);

        // The file is unchanged but for the certificate, so the QUIC transport is the configured one still.
        assert_stream_limit(proxy.quic, &[&old, &new], 7).await;

        before.close().await;
        after.close().await;
        let status = proxy.terminate().await;
        assert_eq!(status.code(), Some(0), "{status}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_with_a_broken_key_keeps_the_previous_certificate() {
    guarded_for(PROCESS_GUARD, async {
        let certs = TestCerts::generate();
        let backend = start_backends(&["reload"])[0];
        let mut proxy = Proxy::start(&certs, backend, "{}").await;
        let old = read_cert(&certs.cert_file);
        let mut open = H3Connection::open(proxy.quic, &[&old]).await;
        assert_eq!(open.get("/before").await.status, StatusCode::OK);

        // A new certificate with an unusable key: neither half may be taken.
        let new = replace_certificate(&certs);
        std::fs::write(&certs.key_file, b"this is not a private key\n").expect("overwrite the key");
        proxy.signal("HUP").await;
        let error = proxy
            .wait_for_log(
                |line| {
                    line["message"]
                        .as_str()
                        .is_some_and(|m| m.starts_with("SIGHUP: configuration not reloaded"))
                },
                "SIGHUP: configuration not reloaded",
            )
            .await;
        assert_eq!(error["level"], "ERROR", "{error}");
        assert!(
            error["message"].as_str().is_some_and(|m| m.contains("key_file")),
            "{error}"
        );

        let mut fresh = H3Connection::open(proxy.quic, &[&old, &new]).await;
        assert!(
            presented(&fresh.connection) == old,
            "a new QUIC handshake got the unloadable certificate"
        );
        assert_eq!(fresh.get("/after").await.status, StatusCode::OK);
        let (https_cert, status) = https_get(proxy.https, &[&old, &new], "/https").await;
        assert!(
            https_cert == old,
            "a new TLS handshake over TCP got the unloadable certificate"
        );
        assert_eq!(status, StatusCode::OK);
        assert_eq!(open.get("/still-open").await.status, StatusCode::OK);

        open.close().await;
        fresh.close().await;
        let status = proxy.terminate().await;
        assert_eq!(status.code(), Some(0), "{status}");
    })
    .await;
}
