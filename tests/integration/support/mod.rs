//! The integration tests' shared support: demo backends and a proxy on OS-assigned ports, an HTTP client,
//! raw-socket helpers for requests no well-behaved client would send, and the proxy as a child process.
//!
//! - `http3.rs`: a certificate per test, a TLS proxy, and an HTTP/3 client that trusts exactly it;
//! - `backends.rs`: backends over HTTP/1.1, h2c and TLS from a test CA, recording what only they see;
//! - `policy.rs`: a backend the traffic-policy tests steer, and the admin API and metrics read back.

pub mod backends;
pub mod http3;
pub mod policy;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, HOST};
use http::{HeaderMap, Request, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt as _, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use quic_proxy::app::{self, Running};
use quic_proxy::demo_backend::DemoBackend;
use quic_proxy::runtime::{self, Shutdown};
use quic_proxy::Config;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The request body type every client here sends: empty, buffered or streamed.
pub type TestBody = BoxBody<Bytes, BoxError>;

/// How long a test may run before it counts as hung.
pub const GUARD: Duration = Duration::from_secs(30);

/// Runs a test body under [`GUARD`], so a hang fails the test instead of blocking the suite.
pub async fn guarded<F: Future>(test: F) -> F::Output {
    guarded_for(GUARD, test).await
}

/// Like [`guarded`], for tests that move a lot of data through unoptimised builds.
pub async fn guarded_for<F: Future>(limit: Duration, test: F) -> F::Output {
    tokio::time::timeout(limit, test)
        .await
        .unwrap_or_else(|_| panic!("test did not finish within {limit:?}"))
}

/// Polls `ready` until it holds. Only for waiting on state the test does not control the timing of
/// (such as a request reaching a backend); the caller's time guard bounds the wait.
pub async fn wait_until(mut ready: impl FnMut() -> bool) {
    while !ready() {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// Binds a listener on a loopback port chosen by the OS.
pub fn bind_loopback() -> TcpListener {
    runtime::bind_tcp(loopback()).expect("bind a loopback port")
}

/// Starts one demo backend per name; each answers with its name in `x-backend`.
pub fn start_backends(names: &[&str]) -> Vec<SocketAddr> {
    names
        .iter()
        .map(|name| {
            let listener = bind_loopback();
            let addr = listener.local_addr().expect("backend address");
            tokio::spawn(DemoBackend::new(name).serve(listener, Shutdown::default()));
            addr
        })
        .collect()
}

/// A port nothing listens on: bound by the OS, then released.
pub fn dead_port_addr() -> SocketAddr {
    let listener = std::net::TcpListener::bind(loopback()).expect("bind a loopback port");
    listener.local_addr().expect("address")
}

/// A YAML flow list of backends: `[{name: a, url: "http://127.0.0.1:1234", weight: 1}, ...]`.
pub fn backend_list(backends: &[(&str, SocketAddr, u32)]) -> String {
    let items: Vec<String> = backends
        .iter()
        .map(|(name, addr, weight)| format!(r#"{{name: "{name}", url: "http://{addr}", weight: {weight}}}"#))
        .collect();
    format!("[{}]", items.join(", "))
}

/// A backend list with weight 1 for each of `names`, in order.
pub fn equal_backends(names: &[&str], addrs: &[SocketAddr]) -> String {
    let entries: Vec<(&str, SocketAddr, u32)> = names.iter().zip(addrs).map(|(name, addr)| (*name, *addr, 1)).collect();
    backend_list(&entries)
}

/// A complete config: every listener on a loopback port chosen by the OS, `server_extra` lines added to
/// the `server` section, and `rest` (backends, upstreams, routes, timeouts) appended at top level.
pub fn render_config(server_extra: &[&str], rest: &str) -> String {
    let mut yaml = String::from("server:\n  address: \"127.0.0.1:0\"\n  fallback_address: \"127.0.0.1:0\"\n");
    // Below the test guard, so a drain that waits for nothing still ends with a clear `false`.
    if !server_extra.iter().any(|l| l.starts_with("drain_timeout:")) {
        yaml.push_str("  drain_timeout: 10s\n");
    }
    for line in server_extra {
        yaml.push_str("  ");
        yaml.push_str(line);
        yaml.push('\n');
    }
    yaml.push_str("telemetry:\n  metrics:\n    address: \"127.0.0.1:0\"\n  logging:\n    level: warn\n");
    yaml.push_str(rest);
    yaml.push('\n');
    yaml
}

/// Parses `yaml` as the proxy would and starts every listener.
pub async fn start_proxy(yaml: &str) -> Running {
    let config = Config::parse(Path::new("integration-test.yaml"), yaml)
        .unwrap_or_else(|e| panic!("config rejected: {e}\n---\n{yaml}"));
    app::start(config, None).await.expect("proxy starts")
}

/// A proxy in front of demo backends named `names`, balanced with `algorithm`.
pub async fn proxy_with_backends(names: &[&str], algorithm: &str) -> Running {
    let addrs = start_backends(names);
    start_proxy(&render_config(
        &[],
        &format!(
            "backends: {}\nload_balancer: {{algorithm: {algorithm}}}",
            equal_backends(names, &addrs)
        ),
    ))
    .await
}

/// A response read to the end.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    /// The demo backend that answered.
    pub fn backend(&self) -> &str {
        self.header("x-backend").unwrap_or("<no x-backend header>")
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn text(&self) -> &str {
        std::str::from_utf8(&self.body).expect("body is UTF-8")
    }

    /// The demo backend's description of the request it received.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "expected the demo backend's JSON, got {} {:?}: {e}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// Every value of `name` in the demo backend's description of the request headers.
    pub fn seen_header(&self, name: &str) -> Option<Vec<String>> {
        seen_header_values(&self.json(), name)
    }
}

/// Every value of `name` in a demo backend's JSON description of the request headers.
pub fn seen_header_values(json: &serde_json::Value, name: &str) -> Option<Vec<String>> {
    let values = json["headers"].get(name)?.as_array()?.clone();
    Some(
        values
            .into_iter()
            .map(|v| v.as_str().unwrap_or_default().to_owned())
            .collect(),
    )
}

pub fn empty() -> TestBody {
    Empty::new().map_err(|never| match never {}).boxed()
}

pub fn full(data: impl Into<Bytes>) -> TestBody {
    http_body_util::Full::new(data.into())
        .map_err(|never| match never {})
        .boxed()
}

/// A pooling HTTP/1.1 client aimed at one proxy listener.
#[derive(Clone)]
pub struct HttpClient {
    client: Client<HttpConnector, TestBody>,
    addr: SocketAddr,
}

impl HttpClient {
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            client: Client::builder(TokioExecutor::new()).build_http(),
            addr,
        }
    }

    /// A request to `path_and_query` on the proxy; Host is the listener's address unless set later.
    pub fn request(&self, method: &str, path_and_query: &str) -> http::request::Builder {
        Request::builder()
            .method(method)
            .uri(format!("http://{}{path_and_query}", self.addr))
    }

    pub async fn send(&self, request: Request<TestBody>) -> Reply {
        let response = self.client.request(request).await.expect("request through the proxy");
        let (parts, body) = response.into_parts();
        let body = body.collect().await.expect("response body arrives").to_bytes();
        Reply {
            status: parts.status,
            headers: parts.headers,
            body,
        }
    }

    pub async fn get(&self, path_and_query: &str) -> Reply {
        self.send(self.request("GET", path_and_query).body(empty()).expect("request"))
            .await
    }

    /// A GET whose failure is returned (with its causes) instead of failing the test.
    pub async fn try_get(&self, path_and_query: &str) -> Result<Reply, String> {
        let request = self.request("GET", path_and_query).body(empty()).expect("request");
        let cause = |error: &dyn std::error::Error| {
            let mut text = error.to_string();
            let mut source = error.source();
            while let Some(next) = source {
                text.push_str(&format!(": {next}"));
                source = next.source();
            }
            text
        };
        let response = self.client.request(request).await.map_err(|e| cause(&e))?;
        let (parts, body) = response.into_parts();
        let body = body.collect().await.map_err(|e| cause(&e))?.to_bytes();
        Ok(Reply {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }

    pub async fn get_with_host(&self, host: &str, path_and_query: &str) -> Reply {
        self.send(
            self.request("GET", path_and_query)
                .header(HOST, host)
                .body(empty())
                .expect("request"),
        )
        .await
    }
}

/// One client connection, for tests that care which requests share a connection.
pub struct Connection {
    sender: SendRequest<TestBody>,
    pub task: tokio::task::JoinHandle<Result<(), hyper::Error>>,
}

impl Connection {
    pub async fn open(addr: SocketAddr) -> Self {
        let stream = TcpStream::connect(addr).await.expect("connect to the proxy");
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .expect("HTTP/1.1 handshake");
        Self {
            sender,
            task: tokio::spawn(connection),
        }
    }

    /// Sends `request` on this connection and reads the whole response.
    pub async fn send(&mut self, request: Request<TestBody>) -> Result<Reply, hyper::Error> {
        self.sender.ready().await?;
        let response = self.sender.send_request(request).await?;
        let (parts, body) = response.into_parts();
        let body = body.collect().await?.to_bytes();
        Ok(Reply {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }

    /// A GET of `path_and_query` with the given extra headers (Host first, so it is always present).
    pub async fn get(
        &mut self,
        host: &str,
        path_and_query: &str,
        headers: &[(&str, &str)],
    ) -> Result<Reply, hyper::Error> {
        let mut request = Request::builder()
            .uri(path_and_query)
            .header(HOST, host)
            .body(empty())
            .expect("request");
        for (name, value) in headers {
            request.headers_mut().append(
                HeaderName::from_bytes(name.as_bytes()).expect("header name"),
                HeaderValue::from_str(value).expect("header value"),
            );
        }
        self.send(request).await
    }
}

/// Everything the proxy sent on a raw connection before it closed it.
#[derive(Debug)]
pub struct RawExchange {
    pub bytes: Vec<u8>,
}

impl RawExchange {
    /// The status code of the first response, if a complete head was received.
    pub fn status(&self) -> Option<u16> {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut response = httparse::Response::new(&mut headers);
        match response.parse(&self.bytes) {
            Ok(httparse::Status::Complete(_)) => response.code,
            _ => None,
        }
    }

    /// The body of the first response, by its Content-Length.
    pub fn body(&self) -> &[u8] {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut response = httparse::Response::new(&mut headers);
        let Ok(httparse::Status::Complete(head_len)) = response.parse(&self.bytes) else {
            return &[];
        };
        let length = response
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case("content-length"))
            .and_then(|h| std::str::from_utf8(h.value).ok()?.trim().parse::<usize>().ok())
            .unwrap_or(self.bytes.len() - head_len);
        let end = (head_len + length).min(self.bytes.len());
        &self.bytes[head_len..end]
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes).into_owned()
    }
}

/// Reads until the peer closes, so returning at all (within the test guard) proves the proxy closed the
/// connection. A reset counts as closed: a server that closes with request bytes unread makes the kernel
/// send RST instead of FIN. Never half-closes the write side, so the close is the proxy's decision, not
/// a reaction to ours.
pub async fn read_until_closed(stream: &mut TcpStream) -> RawExchange {
    let mut bytes = Vec::new();
    let mut buffer = [0u8; 16 * 1024];
    loop {
        match stream.read(&mut buffer).await {
            Ok(0) => return RawExchange { bytes },
            Ok(n) => bytes.extend_from_slice(&buffer[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted
                ) =>
            {
                return RawExchange { bytes }
            }
            Err(e) => panic!("reading from the proxy failed: {e}"),
        }
    }
}

/// How long a refused connection may stay open. Tests that rely on it set `server.header_read_timeout`
/// well above it, so that the idle timeout cannot close the connection on the proxy's behalf.
pub const CLOSE_BOUND: Duration = Duration::from_secs(10);

/// Sends `request` as raw bytes on a new connection and reads until the proxy closes it, which must
/// happen within [`CLOSE_BOUND`].
pub async fn raw_exchange(addr: SocketAddr, request: &[u8]) -> RawExchange {
    let mut stream = TcpStream::connect(addr).await.expect("connect to the proxy");
    stream.write_all(request).await.expect("send the request");
    tokio::time::timeout(CLOSE_BOUND, read_until_closed(&mut stream))
        .await
        .unwrap_or_else(|_| {
            panic!(
                "the proxy kept the connection open after {:?}",
                String::from_utf8_lossy(&request[..request.len().min(200)])
            )
        })
}

/// Reads one response head (through the blank line) and nothing after it.
pub async fn read_head(stream: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let read = stream.read(&mut byte).await.expect("read a response head");
        assert_eq!(
            read,
            1,
            "connection closed mid-head: {:?}",
            String::from_utf8_lossy(&head)
        );
        head.push(byte[0]);
    }
    String::from_utf8(head).expect("head is UTF-8")
}

/// A complete response for [`start_raw_backend`] that ends its connection.
pub const OK_RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok";

/// A backend that is only a socket: reports the head of every request it receives, writes `response`
/// verbatim (nothing, to hang up without answering) and closes. Unlike a demo backend it shows exactly
/// what the proxy forwarded, and can answer with bytes no well-behaved server would send.
pub fn start_raw_backend(response: &'static [u8]) -> (SocketAddr, mpsc::UnboundedReceiver<String>) {
    let listener = bind_loopback();
    let addr = listener.local_addr().expect("backend address");
    let (heads, received) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let (mut stream, _) = listener.accept().await.expect("accept");
            let heads = heads.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buffer = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buffer).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => head.extend_from_slice(&buffer[..n]),
                    }
                }
                let _ = heads.send(String::from_utf8_lossy(&head).into_owned());
                let _ = stream.write_all(response).await;
            });
        }
    });
    (addr, received)
}

/// Parses the config file at `path` as the proxy would and starts every listener, so that
/// `Shared::reload_from_file` reads that same file again.
pub async fn start_proxy_from_file(path: &Path) -> Running {
    let config = Config::load(path).unwrap_or_else(|e| panic!("config rejected: {e}"));
    app::start(config, None).await.expect("proxy starts")
}

/// The sum of the samples of metric `name` (with or without labels) whose labels include `labels`; 0 when
/// there are none.
pub fn sample_sum(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|line| {
            line.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter(|line| labels.iter().all(|(k, v)| line.contains(&format!("{k}=\"{v}\""))))
        .map(|line| {
            line.rsplit(' ')
                .next()
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or_else(|| panic!("unparsable sample: {line}"))
        })
        .sum()
}

/// A request on a fresh pooled client with an optional `Authorization` value (the admin API).
pub async fn send_with_authorization(addr: SocketAddr, method: &str, path: &str, authorization: Option<&str>) -> Reply {
    let client = HttpClient::new(addr);
    let mut request = client.request(method, path);
    if let Some(value) = authorization {
        request = request.header(http::header::AUTHORIZATION, value);
    }
    client.send(request.body(empty()).expect("request")).await
}

/// A request body fed chunk by chunk; the request stays in flight until the sender is dropped.
pub fn held_body() -> (mpsc::Sender<Bytes>, TestBody) {
    let (sender, receiver) = mpsc::channel::<Bytes>(4);
    let chunks = futures_util::stream::unfold(receiver, |mut receiver| async move {
        let chunk = receiver.recv().await?;
        Some((Ok::<_, BoxError>(http_body::Frame::data(chunk)), receiver))
    });
    (sender, http_body_util::StreamBody::new(chunks).boxed())
}

/// How long a log line of a proxy process may take to appear before the test reports what it saw.
pub const PROCESS_LOG_WAIT: Duration = Duration::from_secs(30);

/// The proxy binary as a child process, its JSON log lines (stderr) read as they come. Its config must
/// log at level `info` or lower in JSON until it has started, so that the bound addresses can be read.
pub struct ProxyProcess {
    pub child: tokio::process::Child,
    logs: mpsc::UnboundedReceiver<String>,
    /// Every line read so far, for failure messages.
    pub seen: Vec<String>,
    pub fallback: SocketAddr,
    pub https: Option<SocketAddr>,
    pub quic: Option<SocketAddr>,
    pub admin: Option<SocketAddr>,
}

impl ProxyProcess {
    /// Runs `quic-proxy --config <config> <args>` and waits until it has started.
    pub async fn start(config: &Path, args: &[&str]) -> Self {
        Self::start_under(&[], config, args).await
    }

    /// [`ProxyProcess::start`] through a launcher: `launcher` is a command line (such as `prlimit
    /// --nofile=64`) that runs the binary given after it.
    pub async fn start_under(launcher: &[&str], config: &Path, args: &[&str]) -> Self {
        let binary = env!("CARGO_BIN_EXE_quic-proxy");
        let mut command = match launcher.split_first() {
            Some((program, rest)) => {
                let mut command = tokio::process::Command::new(program);
                command.args(rest).arg(binary);
                command
            }
            None => tokio::process::Command::new(binary),
        };
        let mut child = command
            .arg("--config")
            .arg(config)
            .args(args)
            // The config's log level is what the test reads; an inherited override could hide lines.
            .env_remove("RUST_LOG")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start quic-proxy");
        let stderr = child.stderr.take().expect("stderr is piped");
        let (lines, logs) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            use tokio::io::AsyncBufReadExt as _;
            let mut reader = tokio::io::BufReader::new(stderr).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                if lines.send(line).is_err() {
                    return;
                }
            }
        });
        let mut process = Self {
            child,
            logs,
            seen: Vec::new(),
            fallback: loopback(),
            https: None,
            quic: None,
            admin: None,
        };
        // The listeners are logged in this order, then "quic-proxy started" once the signal handlers and
        // every listener are in place.
        loop {
            let line = process
                .wait_for_log(
                    |line| {
                        line["message"].as_str().is_some_and(|m| {
                            m.ends_with("listener bound") || m.contains("listener bound (") || m == "quic-proxy started"
                        })
                    },
                    "listener bound / quic-proxy started",
                )
                .await;
            let message = line["message"].as_str().unwrap_or_default();
            match message {
                "quic-proxy started" => return process,
                "HTTP/1.1 listener bound" => process.fallback = logged_address(&line),
                m if m.starts_with("HTTPS listener bound") => process.https = Some(logged_address(&line)),
                m if m.starts_with("QUIC listener bound") => process.quic = Some(logged_address(&line)),
                m if m.starts_with("admin listener bound") => process.admin = Some(logged_address(&line)),
                _ => {}
            }
        }
    }

    /// Waits for the next JSON log line that `matches`; earlier lines are passed over (and kept in `seen`).
    pub async fn wait_for_log(
        &mut self,
        matches: impl Fn(&serde_json::Value) -> bool,
        what: &str,
    ) -> serde_json::Value {
        let waited = tokio::time::timeout(PROCESS_LOG_WAIT, async {
            while let Some(line) = self.logs.recv().await {
                self.seen.push(line.clone());
                if let Ok(json) = serde_json::from_str::<serde_json::Value>(&line) {
                    if matches(&json) {
                        return Some(json);
                    }
                }
            }
            None
        })
        .await;
        match waited {
            Ok(Some(json)) => json,
            Ok(None) => panic!(
                "quic-proxy exited before logging {what:?}; it logged:\n{}",
                self.seen.join("\n")
            ),
            Err(_) => panic!(
                "no {what:?} log line within {PROCESS_LOG_WAIT:?}; logged:\n{}",
                self.seen.join("\n")
            ),
        }
    }

    /// Sends `signal` (a name such as `HUP` or `TERM`) to the process.
    pub async fn signal(&self, signal: &str) {
        let pid = self.child.id().expect("quic-proxy is running");
        let status = tokio::process::Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string())
            .status()
            .await
            .expect("run kill");
        assert!(status.success(), "kill -{signal} {pid}: {status}");
    }

    /// SIGKILL: the process ends without closing anything itself; returns once it has been reaped, so
    /// its sockets are closed.
    pub async fn kill(mut self) {
        self.child.start_kill().expect("SIGKILL quic-proxy");
        self.child.wait().await.expect("wait for quic-proxy");
    }

    /// SIGTERM, then the exit status once the drain is over.
    pub async fn terminate(mut self) -> std::process::ExitStatus {
        self.signal("TERM").await;
        self.child.wait().await.expect("wait for quic-proxy")
    }

    /// The admin listener's address.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin.expect("the admin listener runs")
    }
}

/// The `address` field of a "listener bound" log line.
pub fn logged_address(line: &serde_json::Value) -> SocketAddr {
    line["address"]
        .as_str()
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no address in {line}"))
}
