//! Backends for the upstream protocol tests: a test CA that issues server and client certificates, and
//! hyper servers on loopback ports chosen by the OS that speak HTTP/1.1, HTTP/2 with prior knowledge (h2c),
//! or either over rustls by ALPN, optionally requiring a client certificate. Each records what only the
//! backend can see: the SNI of every ClientHello, failed handshakes, accepted TCP connections, and for
//! every request its HTTP version, client certificate, head, body checksum and trailers.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http::header::HeaderValue;
use http::{HeaderMap, Method, Request, Response, StatusCode, Version};
use http_body::Frame;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt as _, Full, StreamBody};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::RootCertStore;
use sha2::{Digest, Sha256};
use tempfile::TempDir;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// A certificate authority of the test's own, with the files it issues in a directory that lives as long
/// as it does.
pub struct TestCa {
    dir: TempDir,
    issuer: CertifiedIssuer<'static, KeyPair>,
    /// The CA certificate (PEM), for `tls.ca_file` or a backend's client verifier.
    pub cert_file: PathBuf,
    issued: AtomicUsize,
}

/// A certificate chain and its key, in memory and as PEM files.
pub struct Identity {
    pub chain: Vec<CertificateDer<'static>>,
    key: PrivatePkcs8KeyDer<'static>,
    /// The chain: the leaf, then the CA that issued it.
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

impl Identity {
    /// The end-entity certificate.
    pub fn leaf(&self) -> &CertificateDer<'static> {
        &self.chain[0]
    }

    pub fn key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(self.key.clone_key())
    }
}

impl TestCa {
    /// A new CA whose certificate says `common_name`.
    pub fn new(common_name: &str) -> Self {
        quic_proxy::tls::install_crypto_provider();
        let dir = tempfile::tempdir().expect("create a temporary directory");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
        params.distinguished_name.push(DnType::CommonName, common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().expect("generate the CA key");
        let issuer = CertifiedIssuer::self_signed(params, key).expect("self-sign the CA");
        let cert_file = dir.path().join("ca.crt");
        std::fs::write(&cert_file, issuer.pem()).expect("write the CA certificate");
        Self {
            dir,
            issuer,
            cert_file,
            issued: AtomicUsize::new(0),
        }
    }

    /// The CA certificate.
    pub fn certificate(&self) -> CertificateDer<'static> {
        self.issuer.der().clone()
    }

    /// A server certificate for `names` (DNS names or IP addresses).
    pub fn server_identity(&self, names: &[&str]) -> Identity {
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let mut params = CertificateParams::new(names.clone()).expect("server certificate parameters");
        params.distinguished_name.push(DnType::CommonName, names[0].as_str());
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.issue(params)
    }

    /// A client certificate whose subject is `common_name`.
    pub fn client_identity(&self, common_name: &str) -> Identity {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("client certificate parameters");
        params.distinguished_name.push(DnType::CommonName, common_name);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.issue(params)
    }

    fn issue(&self, params: CertificateParams) -> Identity {
        let key = KeyPair::generate().expect("generate a key");
        let cert = params.signed_by(&key, &self.issuer).expect("sign the certificate");
        let serial = self.issued.fetch_add(1, Ordering::Relaxed);
        let cert_file = self.dir.path().join(format!("issued-{serial}.crt"));
        let key_file = self.dir.path().join(format!("issued-{serial}.key"));
        std::fs::write(&cert_file, format!("{}{}", cert.pem(), self.issuer.pem())).expect("write the chain");
        std::fs::write(&key_file, key.serialize_pem()).expect("write the key");
        Identity {
            chain: vec![cert.der().clone(), self.certificate()],
            key: PrivatePkcs8KeyDer::from(key.serialize_der()),
            cert_file,
            key_file,
        }
    }
}

/// How a backend speaks.
pub enum Wire {
    /// Clear-text HTTP/2 with prior knowledge.
    H2c,
    /// TLS with `identity`, the ALPN protocols it offers (HTTP/2 when `h2` is negotiated, else HTTP/1.1),
    /// and, with `client_ca`, a client certificate issued by that CA required.
    Tls {
        identity: Identity,
        alpn: Vec<&'static [u8]>,
        client_ca: Option<CertificateDer<'static>>,
    },
}

impl Wire {
    /// TLS offering `alpn`, no client certificate asked for.
    pub fn tls(identity: Identity, alpn: &[&'static [u8]]) -> Self {
        Self::Tls {
            identity,
            alpn: alpn.to_vec(),
            client_ca: None,
        }
    }
}

/// One request as the backend received it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub tls: bool,
    /// The SNI of the connection's handshake.
    pub sni: Option<String>,
    /// The client certificate the connection's handshake presented.
    pub client_cert: Option<CertificateDer<'static>>,
    pub version: Version,
    pub method: Method,
    pub path: String,
    pub headers: HeaderMap,
    pub body_bytes: u64,
    pub body_sha256: String,
    /// The first [`KEPT_BODY`] bytes of the body.
    pub body_start: Bytes,
    pub trailers: Option<HeaderMap>,
}

/// How much of each request body a backend keeps for the test to read.
pub const KEPT_BODY: usize = 1024;

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

#[derive(Default)]
struct Record {
    /// The SNI of every ClientHello, in order (None when the client sent none).
    hellos: Vec<Option<String>>,
    handshake_errors: Vec<String>,
    requests: Vec<Seen>,
}

struct State {
    name: String,
    connections: AtomicUsize,
    record: Mutex<Record>,
    health_status: AtomicU16,
    /// `hold` requests waiting for [`TestBackend::release`].
    held: AtomicUsize,
    release: watch::Sender<bool>,
    /// Failed TLS handshakes so far, for waiting on one: the backend records a failure after its alert has
    /// gone out, so the client can learn of it first.
    handshakes_failed: watch::Sender<usize>,
}

impl State {
    fn record(&self) -> std::sync::MutexGuard<'_, Record> {
        self.record.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A running backend; it serves until the test's runtime ends.
pub struct TestBackend {
    pub name: String,
    pub addr: SocketAddr,
    state: Arc<State>,
}

/// Longest a `hold` request waits for its release, so a failed test never leaves it behind.
const HOLD_LIMIT: Duration = Duration::from_secs(60);

/// Response bodies of `/stream` are written in chunks of this size.
pub const CHUNK: usize = 64 * 1024;

impl TestBackend {
    /// Starts a backend called `name` on a loopback port chosen by the OS.
    ///
    /// Routes, by the last path segment: `health` answers the status set with [`TestBackend::set_health`]
    /// (200 at first), and `/grpc.health.v1.Health/Check` SERVING while that status is 200, NOT_SERVING
    /// otherwise; `hold` waits for [`TestBackend::release`]; `stream?bytes=N&seed=S` answers N bytes of
    /// [`pattern_chunk`]s followed by trailers: `x-request-sha256`, `x-request-bytes`, the request's
    /// `x-client-trailer` trailer as `x-request-trailer`, and `x-response-sha256`. Every answer carries
    /// `x-backend` (the name) and `x-backend-version` (the HTTP version the request came in).
    pub fn start(name: &str, wire: Wire) -> Self {
        let listener = std::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).expect("bind a backend");
        listener.set_nonblocking(true).expect("non-blocking listener");
        let addr = listener.local_addr().expect("backend address");
        let listener = TcpListener::from_std(listener).expect("register the listener");
        let (release, _) = watch::channel(false);
        let state = Arc::new(State {
            name: name.to_owned(),
            connections: AtomicUsize::new(0),
            record: Mutex::new(Record::default()),
            health_status: AtomicU16::new(200),
            held: AtomicUsize::new(0),
            release,
            handshakes_failed: watch::channel(0).0,
        });
        let h2c = matches!(wire, Wire::H2c);
        let acceptor = match wire {
            Wire::Tls {
                identity,
                alpn,
                client_ca,
            } => Some(tls_acceptor(&state, identity, &alpn, client_ca)),
            Wire::H2c => None,
        };
        let serving = Arc::clone(&state);
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                serving.connections.fetch_add(1, Ordering::SeqCst);
                let state = Arc::clone(&serving);
                let acceptor = acceptor.clone();
                tokio::spawn(serve_connection(state, tcp, acceptor, h2c));
            }
        });
        Self {
            name: name.to_owned(),
            addr,
            state,
        }
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        self.state.connections.load(Ordering::SeqCst)
    }

    /// The SNI of every ClientHello received so far.
    pub fn hellos(&self) -> Vec<Option<String>> {
        self.state.record().hellos.clone()
    }

    /// Why each failed TLS handshake failed, as the backend's rustls saw it.
    pub fn handshake_errors(&self) -> Vec<String> {
        self.state.record().handshake_errors.clone()
    }

    /// Why each failed TLS handshake failed, once at least `count` have failed; the caller bounds the wait.
    pub async fn handshake_errors_at_least(&self, count: usize) -> Vec<String> {
        let mut failed = self.state.handshakes_failed.subscribe();
        // The sender lives in `self.state`, so the wait ends only by reaching the count.
        let _ = failed.wait_for(|&n| n >= count).await;
        self.handshake_errors()
    }

    /// Every request received so far (once its body has been read).
    pub fn requests(&self) -> Vec<Seen> {
        self.state.record().requests.clone()
    }

    /// The requests received so far whose path is `path`.
    pub fn requests_to(&self, path: &str) -> Vec<Seen> {
        self.requests().into_iter().filter(|r| r.path == path).collect()
    }

    /// The status `/health` answers from now on.
    pub fn set_health(&self, status: u16) {
        self.state.health_status.store(status, Ordering::SeqCst);
    }

    /// `hold` requests waiting now.
    pub fn held(&self) -> usize {
        self.state.held.load(Ordering::SeqCst)
    }

    /// Lets every `hold` request, present and future, answer.
    pub fn release(&self) {
        self.state.release.send_replace(true);
    }
}

/// Serves `certified` to every client, noting the SNI of each ClientHello first.
#[derive(Debug)]
struct RecordingResolver {
    certified: Arc<CertifiedKey>,
    state: Arc<State>,
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State").field("name", &self.name).finish()
    }
}

impl ResolvesServerCert for RecordingResolver {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.state
            .record()
            .hellos
            .push(client_hello.server_name().map(str::to_owned));
        Some(Arc::clone(&self.certified))
    }
}

fn tls_acceptor(
    state: &Arc<State>,
    identity: Identity,
    alpn: &[&[u8]],
    client_ca: Option<CertificateDer<'static>>,
) -> tokio_rustls::TlsAcceptor {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .expect("TLS versions");
    let builder = match client_ca {
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            roots.add(ca).expect("trust the client CA");
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider))
                .build()
                .expect("a client certificate verifier");
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let key = provider
        .key_provider
        .load_private_key(identity.key())
        .expect("a usable server key");
    let resolver = RecordingResolver {
        certified: Arc::new(CertifiedKey::new(identity.chain.clone(), key)),
        state: Arc::clone(state),
    };
    let mut config = builder.with_cert_resolver(Arc::new(resolver));
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}

/// What every request on one connection shares.
#[derive(Clone)]
struct ConnectionInfo {
    tls: bool,
    sni: Option<String>,
    client_cert: Option<CertificateDer<'static>>,
}

async fn serve_connection(state: Arc<State>, tcp: TcpStream, acceptor: Option<tokio_rustls::TlsAcceptor>, h2c: bool) {
    let Some(acceptor) = acceptor else {
        let info = ConnectionInfo {
            tls: false,
            sni: None,
            client_cert: None,
        };
        serve_http(state, TokioIo::new(tcp), info, h2c).await;
        return;
    };
    let tls = match acceptor.accept(tcp).await {
        Ok(tls) => tls,
        Err(error) => {
            state.record().handshake_errors.push(error.to_string());
            state.handshakes_failed.send_modify(|n| *n += 1);
            return;
        }
    };
    let session = tls.get_ref().1;
    let info = ConnectionInfo {
        tls: true,
        sni: session.server_name().map(str::to_owned),
        client_cert: session.peer_certificates().and_then(|chain| chain.first()).cloned(),
    };
    let h2 = session.alpn_protocol() == Some(b"h2");
    serve_http(state, TokioIo::new(tls), info, h2).await;
}

async fn serve_http<IO>(state: Arc<State>, io: TokioIo<IO>, info: ConnectionInfo, h2: bool)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |request| {
        let state = Arc::clone(&state);
        let info = info.clone();
        async move { Ok::<_, Infallible>(respond(state, info, request).await) }
    });
    // Errors here are the peer going away, which tests observe from the proxy's side.
    if h2 {
        let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .serve_connection(io, service)
            .await;
    } else {
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(io, service)
            .await;
    }
}

type ResponseBody = BoxBody<Bytes, Infallible>;

async fn respond(state: Arc<State>, info: ConnectionInfo, request: Request<Incoming>) -> Response<ResponseBody> {
    let (parts, mut body) = request.into_parts();
    let mut hasher = Sha256::new();
    let mut body_bytes = 0u64;
    let mut body_start = Vec::new();
    let mut trailers = None;
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else {
            return plain(StatusCode::BAD_REQUEST, "request body failed");
        };
        match frame.into_data() {
            Ok(data) => {
                body_bytes += data.len() as u64;
                hasher.update(&data);
                let room = KEPT_BODY.saturating_sub(body_start.len());
                body_start.extend_from_slice(&data[..room.min(data.len())]);
            }
            Err(frame) => {
                if let Ok(fields) = frame.into_trailers() {
                    trailers = Some(fields);
                }
            }
        }
    }
    let body_sha256 = hex(&hasher.finalize());
    let client_trailer = trailers
        .as_ref()
        .and_then(|t: &HeaderMap| t.get("x-client-trailer").cloned());
    let path = parts.uri.path().to_owned();
    let query = parts.uri.query().unwrap_or_default().to_owned();
    state.record().requests.push(Seen {
        tls: info.tls,
        sni: info.sni.clone(),
        client_cert: info.client_cert.clone(),
        version: parts.version,
        method: parts.method.clone(),
        path: path.clone(),
        headers: parts.headers.clone(),
        body_bytes,
        body_sha256: body_sha256.clone(),
        body_start: Bytes::from(body_start),
        trailers,
    });
    // Tests route to a backend by a path prefix, so the last segment picks the behaviour.
    let mut response = match path.rsplit('/').next().unwrap_or_default() {
        "health" => {
            let status = StatusCode::from_u16(state.health_status.load(Ordering::SeqCst)).unwrap_or(StatusCode::OK);
            plain(status, "health")
        }
        "hold" => {
            state.held.fetch_add(1, Ordering::SeqCst);
            let mut release = state.release.subscribe();
            let released = tokio::time::timeout(HOLD_LIMIT, release.wait_for(|go| *go)).await;
            state.held.fetch_sub(1, Ordering::SeqCst);
            match released {
                Ok(_) => plain(StatusCode::OK, "released"),
                Err(_) => plain(StatusCode::SERVICE_UNAVAILABLE, "never released"),
            }
        }
        "stream" => stream_response(&query, &body_sha256, body_bytes, client_trailer),
        "Check" if path == "/grpc.health.v1.Health/Check" => {
            grpc_health_response(state.health_status.load(Ordering::SeqCst) == 200)
        }
        _ => plain(StatusCode::OK, "ok"),
    };
    let headers = response.headers_mut();
    headers.insert("x-backend", HeaderValue::from_str(&state.name).expect("backend name"));
    headers.insert(
        "x-backend-version",
        HeaderValue::from_str(&format!("{:?}", parts.version)).expect("version"),
    );
    response
}

fn plain(status: StatusCode, text: &'static str) -> Response<ResponseBody> {
    let mut response = Response::new(Full::new(Bytes::from_static(text.as_bytes())).boxed());
    *response.status_mut() = status;
    response
}

/// `bytes` and `seed` from a `/stream` query.
fn stream_params(query: &str) -> (u64, u64) {
    let value = |key: &str| {
        query
            .split('&')
            .filter_map(|pair| pair.split_once('='))
            .find(|(k, _)| *k == key)
            .and_then(|(_, v)| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    (value("bytes"), value("seed"))
}

fn stream_response(
    query: &str,
    request_sha256: &str,
    request_bytes: u64,
    client_trailer: Option<HeaderValue>,
) -> Response<ResponseBody> {
    let (total, seed) = stream_params(query);
    let mut trailers = HeaderMap::new();
    trailers.insert(
        "x-request-sha256",
        HeaderValue::from_str(request_sha256).expect("hex digest"),
    );
    trailers.insert("x-request-bytes", HeaderValue::from(request_bytes));
    if let Some(value) = client_trailer {
        trailers.insert("x-request-trailer", value);
    }
    // The response is produced chunk by chunk as it is sent; its digest is known once the last chunk is.
    let state = (0u64, Sha256::new(), Some(trailers));
    let frames = futures_util::stream::unfold(state, move |(sent, mut hasher, trailers)| async move {
        if sent < total {
            let size = (total - sent).min(CHUNK as u64);
            let chunk = pattern_chunk(seed, sent / CHUNK as u64, size as usize);
            hasher.update(&chunk);
            return Some((Ok::<_, Infallible>(Frame::data(chunk)), (sent + size, hasher, trailers)));
        }
        let mut trailers = trailers?;
        let digest = hex(&hasher.clone().finalize());
        trailers.insert("x-response-sha256", HeaderValue::from_str(&digest).expect("hex digest"));
        Some((Ok(Frame::trailers(trailers)), (sent, hasher, None)))
    });
    let mut response = Response::new(StreamBody::new(frames).boxed());
    // An HTTP/1.1 server writes only the trailer fields announced here.
    response.headers_mut().insert(
        "trailer",
        HeaderValue::from_static("x-request-sha256, x-request-bytes, x-request-trailer, x-response-sha256"),
    );
    response
}

/// A `grpc.health.v1.Health/Check` answer: SERVING (1) or NOT_SERVING (2), status OK in the trailers.
fn grpc_health_response(serving: bool) -> Response<ResponseBody> {
    // HealthCheckResponse { ServingStatus status = 1; } in a gRPC frame: no compression, then the length.
    let message = [0x08, if serving { 1 } else { 2 }];
    let mut frame = vec![0u8];
    frame.extend_from_slice(&(message.len() as u32).to_be_bytes());
    frame.extend_from_slice(&message);
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from_static("0"));
    let frames = vec![
        Ok::<_, Infallible>(Frame::data(Bytes::from(frame))),
        Ok(Frame::trailers(trailers)),
    ];
    let mut response = Response::new(StreamBody::new(futures_util::stream::iter(frames)).boxed());
    response
        .headers_mut()
        .insert("content-type", HeaderValue::from_static("application/grpc"));
    response
}

/// Deterministic incompressible data: chunk `index` of a stream seeded with `seed`.
pub fn pattern_chunk(seed: u64, index: u64, size: usize) -> Bytes {
    let mut rng = fastrand::Rng::with_seed(seed ^ index.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let mut chunk = vec![0u8; size];
    rng.fill(&mut chunk);
    Bytes::from(chunk)
}

/// Lower-case hexadecimal.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The common name in a certificate's subject, read from its DER encoding.
pub fn subject_common_name(certificate: &[u8]) -> Option<String> {
    const SEQUENCE: u8 = 0x30;
    const SET: u8 = 0x31;
    const OID: u8 = 0x06;
    const COMMON_NAME: &[u8] = &[0x55, 0x04, 0x03];
    let (tag, certificate, _) = der_element(certificate)?;
    if tag != SEQUENCE {
        return None;
    }
    let (_, tbs, _) = der_element(certificate)?;
    // TBSCertificate: [0] version (optional), serial, signature algorithm, issuer, validity, subject.
    let mut fields = tbs;
    let (first, _, _) = der_element(fields)?;
    if first == 0xa0 {
        fields = der_element(fields)?.2;
    }
    for _ in 0..4 {
        fields = der_element(fields)?.2;
    }
    let (tag, mut names, _) = der_element(fields)?;
    if tag != SEQUENCE {
        return None;
    }
    while !names.is_empty() {
        let (set_tag, set, rest) = der_element(names)?;
        names = rest;
        if set_tag != SET {
            return None;
        }
        let (_, attribute, _) = der_element(set)?;
        let (oid_tag, oid, value) = der_element(attribute)?;
        if oid_tag == OID && oid == COMMON_NAME {
            let (_, text, _) = der_element(value)?;
            return String::from_utf8(text.to_vec()).ok();
        }
    }
    None
}

/// One DER element: its tag, its contents and what follows it.
fn der_element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (length, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let count = usize::from(first & 0x7f);
        if count == 0 || count > 4 || rest.len() < count {
            return None;
        }
        let length = rest[..count].iter().fold(0usize, |n, &b| (n << 8) | usize::from(b));
        (length, &rest[count..])
    };
    if rest.len() < length {
        return None;
    }
    Some((tag, &rest[..length], &rest[length..]))
}
