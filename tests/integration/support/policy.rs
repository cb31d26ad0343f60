//! Fixtures for the traffic-policy tests: a backend whose failures, latency, health and held requests the
//! test sets at run time and that counts what only it can see (requests by path, requests in flight,
//! accepted and open TCP connections), the admin API and metrics as JSON and text, clients that connect from
//! a chosen loopback address, and bounded polling with a report of the last state seen.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderValue, HOST};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::watch;

use super::{send_with_authorization, HttpClient, Reply};

/// Longest a held request waits for its release, so that a failed test never leaves one behind.
const HOLD_LIMIT: Duration = Duration::from_secs(60);

/// One request as the backend received it (its head; the body may still be arriving).
#[derive(Debug, Clone)]
pub struct Received {
    pub method: Method,
    pub path: String,
}

struct State {
    name: String,
    /// Share of requests answered with `failure_status`, in percent, spread evenly over the requests.
    failure_percent: AtomicU32,
    failure_status: AtomicU16,
    latency_ms: AtomicU64,
    health_status: AtomicU16,
    /// While true, every answer says `connection: close`, so the connection ends with it.
    closing: AtomicBool,
    /// While true, requests whose last path segment is `hold` wait.
    holding: watch::Sender<bool>,
    answered: AtomicU64,
    received: Mutex<Vec<Received>>,
    held: AtomicUsize,
    accepted: AtomicUsize,
    open: AtomicUsize,
    max_open: AtomicUsize,
    body_errors: AtomicUsize,
}

/// A backend on a loopback port chosen by the OS; it serves until the test's runtime ends.
///
/// Every answer carries `x-backend: NAME`. `/health` (any prefix) answers the status set with
/// [`PolicyBackend::set_health`] and is not counted as a request. Any other request is counted when its
/// head arrives; its body is read to the end; a path whose last segment is `hold` waits while the backend
/// holds (see [`PolicyBackend::hold`]); then the answer waits the set latency and is a failure for the set
/// share of requests, else 200.
pub struct PolicyBackend {
    pub name: String,
    pub addr: SocketAddr,
    state: Arc<State>,
}

/// Decrements a counter when dropped, so a request the proxy abandons still leaves the count.
struct Count<'a>(&'a AtomicUsize);

impl<'a> Count<'a> {
    fn enter(counter: &'a AtomicUsize, max: &AtomicUsize) -> Self {
        let now = counter.fetch_add(1, Ordering::SeqCst) + 1;
        max.fetch_max(now, Ordering::SeqCst);
        Self(counter)
    }
}

impl Drop for Count<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl PolicyBackend {
    /// Starts a backend called `name` that answers every request 200 at once.
    pub fn start(name: &str) -> Self {
        let listener = std::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).expect("bind a backend");
        listener.set_nonblocking(true).expect("non-blocking listener");
        let addr = listener.local_addr().expect("backend address");
        let listener = TcpListener::from_std(listener).expect("register the listener");
        let (holding, _) = watch::channel(false);
        let state = Arc::new(State {
            name: name.to_owned(),
            failure_percent: AtomicU32::new(0),
            failure_status: AtomicU16::new(500),
            latency_ms: AtomicU64::new(0),
            health_status: AtomicU16::new(200),
            closing: AtomicBool::new(false),
            holding,
            answered: AtomicU64::new(0),
            received: Mutex::new(Vec::new()),
            held: AtomicUsize::new(0),
            accepted: AtomicUsize::new(0),
            open: AtomicUsize::new(0),
            max_open: AtomicUsize::new(0),
            body_errors: AtomicUsize::new(0),
        });
        let serving = Arc::clone(&state);
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                serving.accepted.fetch_add(1, Ordering::SeqCst);
                let state = Arc::clone(&serving);
                tokio::spawn(async move {
                    let _open = Count::enter(&state.open, &state.max_open);
                    let service = service_fn(|request| {
                        let state = Arc::clone(&state);
                        async move { Ok::<_, Infallible>(respond(&state, request).await) }
                    });
                    // Errors here are the proxy going away, which tests observe from the proxy's side.
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), service)
                        .await;
                });
            }
        });
        Self {
            name: name.to_owned(),
            addr,
            state,
        }
    }

    /// `percent` of the requests from now on are answered with `status`, evenly spread (80 fails four of
    /// every five).
    pub fn set_failures(&self, percent: u32, status: u16) {
        self.state.failure_status.store(status, Ordering::SeqCst);
        self.state.failure_percent.store(percent.min(100), Ordering::SeqCst);
    }

    /// Every answer from now on waits `latency` first.
    pub fn set_latency(&self, latency: Duration) {
        self.state
            .latency_ms
            .store(u64::try_from(latency.as_millis()).unwrap_or(u64::MAX), Ordering::SeqCst);
    }

    /// The status `/health` answers from now on.
    pub fn set_health(&self, status: u16) {
        self.state.health_status.store(status, Ordering::SeqCst);
    }

    /// From now on every answer closes its connection (`true`), or connections are kept alive.
    pub fn set_closing(&self, closing: bool) {
        self.state.closing.store(closing, Ordering::SeqCst);
    }

    /// Requests to `.../hold` wait from now on, until [`PolicyBackend::release`].
    pub fn hold(&self) {
        self.state.holding.send_replace(true);
    }

    /// Lets every waiting `.../hold` request answer, and later ones answer at once.
    pub fn release(&self) {
        self.state.holding.send_replace(false);
    }

    /// Every request received so far, health probes aside.
    pub fn received(&self) -> Vec<Received> {
        self.state
            .received
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// How many requests have been received so far, health probes aside.
    pub fn count(&self) -> usize {
        self.state.received.lock().unwrap_or_else(PoisonError::into_inner).len()
    }

    /// How many requests whose path starts with `prefix` have been received.
    pub fn count_under(&self, prefix: &str) -> usize {
        self.received().iter().filter(|r| r.path.starts_with(prefix)).count()
    }

    /// How many requests with `method` have been received.
    pub fn count_of(&self, method: &Method) -> usize {
        self.received().iter().filter(|r| r.method == method).count()
    }

    /// Requests waiting for [`PolicyBackend::release`] now.
    pub fn held(&self) -> usize {
        self.state.held.load(Ordering::SeqCst)
    }

    /// TCP connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.state.accepted.load(Ordering::SeqCst)
    }

    /// The most TCP connections ever open at once.
    pub fn max_open(&self) -> usize {
        self.state.max_open.load(Ordering::SeqCst)
    }

    /// Requests whose body failed before its end (the sender went away mid-body).
    pub fn body_errors(&self) -> usize {
        self.state.body_errors.load(Ordering::SeqCst)
    }

    /// This backend as an entry of a YAML flow list of backends.
    pub fn entry(&self, weight: u32) -> String {
        format!(
            r#"{{name: "{}", url: "http://{}", weight: {weight}}}"#,
            self.name, self.addr
        )
    }
}

/// A YAML flow list of `backends`, each with weight 1.
pub fn backend_entries(backends: &[&PolicyBackend]) -> String {
    let entries: Vec<String> = backends.iter().map(|b| b.entry(1)).collect();
    format!("[{}]", entries.join(", "))
}

async fn respond(state: &State, request: Request<Incoming>) -> Response<Full<Bytes>> {
    let (parts, mut body) = request.into_parts();
    let path = parts.uri.path().to_owned();
    if path.ends_with("/health") {
        let status = state.health_status.load(Ordering::SeqCst);
        return answer(state, StatusCode::from_u16(status).unwrap_or(StatusCode::OK));
    }
    state
        .received
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(Received {
            method: parts.method.clone(),
            path: path.clone(),
        });
    while let Some(frame) = body.frame().await {
        if frame.is_err() {
            state.body_errors.fetch_add(1, Ordering::SeqCst);
            return answer(state, StatusCode::BAD_REQUEST);
        }
    }
    if path.rsplit('/').next() == Some("hold") {
        let mut holding = state.holding.subscribe();
        state.held.fetch_add(1, Ordering::SeqCst);
        let released = tokio::time::timeout(HOLD_LIMIT, holding.wait_for(|held| !*held)).await;
        state.held.fetch_sub(1, Ordering::SeqCst);
        if released.is_err() {
            return answer(state, StatusCode::SERVICE_UNAVAILABLE);
        }
    }
    let latency = state.latency_ms.load(Ordering::SeqCst);
    if latency > 0 {
        tokio::time::sleep(Duration::from_millis(latency)).await;
    }
    let n = state.answered.fetch_add(1, Ordering::SeqCst);
    let percent = u64::from(state.failure_percent.load(Ordering::SeqCst));
    // Request n fails when the running count of failures owed, n * percent / 100, steps up at it.
    let fails = (n + 1) * percent / 100 > n * percent / 100;
    if fails {
        let status = state.failure_status.load(Ordering::SeqCst);
        return answer(
            state,
            StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        );
    }
    answer(state, StatusCode::OK)
}

fn answer(state: &State, status: StatusCode) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(format!("{} {}", state.name, status.as_u16()))));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert("x-backend", HeaderValue::from_str(&state.name).expect("backend name"));
    if state.closing.load(Ordering::SeqCst) {
        response
            .headers_mut()
            .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

/// How many of `replies` each backend answered, by `x-backend`.
pub fn tally<'a>(replies: impl IntoIterator<Item = &'a Reply>) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for reply in replies {
        *counts.entry(reply.backend().to_owned()).or_insert(0) += 1;
    }
    counts
}

/// A GET of `path` on a new connection from `source` (any address of 127.0.0.0/8 works on loopback), so
/// that the proxy sees that client address.
pub async fn get_from(source: IpAddr, proxy: SocketAddr, path: &str) -> Reply {
    let socket = TcpSocket::new_v4().expect("a client socket");
    socket
        .bind(SocketAddr::new(source, 0))
        .unwrap_or_else(|e| panic!("bind the client to {source}: {e}"));
    let stream = socket.connect(proxy).await.expect("connect to the proxy");
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("HTTP/1.1 handshake");
    tokio::spawn(connection);
    let request = Request::get(path)
        .header(HOST, proxy.to_string())
        .body(Empty::<Bytes>::new())
        .expect("request");
    let response = sender.send_request(request).await.expect("request through the proxy");
    let (parts, body) = response.into_parts();
    let body = body.collect().await.expect("response body arrives").to_bytes();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

/// Polls `probe` until it yields a value, at most `limit`; `probe` says what it saw otherwise, and the
/// last of those is in the failure message.
pub async fn eventually<T, F, Fut>(what: &str, limit: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match probe().await {
            Ok(value) => return value,
            Err(seen) if tokio::time::Instant::now() >= deadline => {
                panic!("{what}: not within {limit:?}; last seen: {seen}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}

/// The admin listener of a running proxy, with the token its config carries.
#[derive(Debug, Clone, Copy)]
pub struct Admin {
    pub addr: SocketAddr,
    pub token: &'static str,
}

impl Admin {
    pub fn new(addr: Option<SocketAddr>, token: &'static str) -> Self {
        Self {
            addr: addr.expect("the admin listener runs"),
            token,
        }
    }

    async fn get_json(&self, path: &str) -> Value {
        let reply = HttpClient::new(self.addr).get(path).await;
        assert_eq!(reply.status, StatusCode::OK, "{path}: {}", reply.text());
        serde_json::from_slice(&reply.body).unwrap_or_else(|e| panic!("{path} is not JSON ({e}): {}", reply.text()))
    }

    /// Every entry of `GET /api/backends`.
    pub async fn backends(&self) -> Vec<Value> {
        let json = self.get_json("/api/backends").await;
        json["backends"]
            .as_array()
            .cloned()
            .unwrap_or_else(|| panic!("no backends array in {json}"))
    }

    /// The entries of `upstream` in `GET /api/backends`.
    pub async fn upstream(&self, upstream: &str) -> Vec<Value> {
        self.backends()
            .await
            .into_iter()
            .filter(|b| b["upstream"] == upstream)
            .collect()
    }

    /// The entry of `upstream`/`name` in `GET /api/backends`.
    pub async fn backend(&self, upstream: &str, name: &str) -> Value {
        self.upstream(upstream)
            .await
            .into_iter()
            .find(|b| b["name"] == name)
            .unwrap_or_else(|| panic!("{upstream}/{name} missing from /api/backends"))
    }

    /// The entry of `upstream`/`name` in `GET /api/state`, with its recent traffic figures.
    pub async fn state_of(&self, upstream: &str, name: &str) -> Value {
        let json = self.get_json("/api/state").await;
        json["upstreams"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|u| u["name"] == upstream)
            .flat_map(|u| u["backends"].as_array().cloned().unwrap_or_default())
            .find(|b| b["name"] == name)
            .unwrap_or_else(|| panic!("{upstream}/{name} missing from /api/state: {json}"))
    }

    /// The text of `GET /metrics`.
    pub async fn metrics(&self) -> String {
        let reply = HttpClient::new(self.addr).get("/metrics").await;
        assert_eq!(reply.status, StatusCode::OK, "/metrics: {}", reply.text());
        reply.text().to_owned()
    }

    /// Drains (`true`) or undrains `upstream`/`name` through the API, with the token.
    pub async fn set_drained(&self, upstream: &str, name: &str, drained: bool) {
        let action = if drained { "drain" } else { "undrain" };
        let reply = send_with_authorization(
            self.addr,
            "POST",
            &format!("/api/backends/{upstream}/{name}/{action}"),
            Some(&format!("Bearer {}", self.token)),
        )
        .await;
        assert_eq!(
            reply.status,
            StatusCode::OK,
            "{action} {upstream}/{name}: {}",
            reply.text()
        );
    }
}

/// The `state` of every backend of an upstream, by name, from `/api/backends` entries.
pub fn states(entries: &[Value]) -> BTreeMap<String, String> {
    entries
        .iter()
        .map(|b| {
            (
                b["name"].as_str().unwrap_or_default().to_owned(),
                b["state"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}
