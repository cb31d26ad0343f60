//! 0-RTT on the QUIC listener: with `quic.early_data` a resuming client may send requests before the
//! handshake completes; the proxy serves safe methods from them and answers the rest with 425 Too Early,
//! because early data can be replayed by an attacker.
//!
//! On loopback a handshake completes within microseconds, so whether a request arrives before or after
//! it would be a race. A UDP relay between client and proxy removes the race: while it holds the proxy's
//! packets back, the client cannot finish its handshake and can only send 0-RTT; while it then holds the
//! client's packets back, the proxy never receives the client's Finished and stays before the end of its
//! handshake for as long as the test wants.

use std::net::SocketAddr;
use std::sync::Arc;

use crate::support::http3::*;
use crate::support::*;
use bytes::Bytes;
use http::{Request, StatusCode};
use quic_proxy::app::Running;
use quinn::crypto::rustls::QuicClientConfig;
use rustls::client::{
    ClientSessionMemoryCache, ClientSessionStore, Resumption, Tls12ClientSessionValue, Tls13ClientSessionValue,
};
use rustls::pki_types::ServerName;
use rustls::NamedGroup;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

type Sender = h3::client::SendRequest<h3_quinn::OpenStreams, Bytes>;

/// rustls's default in-memory session cache, reporting the TLS 1.3 tickets it is given and hands out,
/// so a test can wait for the ticket to arrive instead of guessing how long that takes.
#[derive(Debug)]
struct TicketStore {
    inner: ClientSessionMemoryCache,
    stored: watch::Sender<usize>,
    taken: watch::Sender<usize>,
}

impl TicketStore {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            inner: ClientSessionMemoryCache::new(16),
            stored: watch::channel(0).0,
            taken: watch::channel(0).0,
        })
    }

    async fn wait_for_ticket(&self) {
        self.stored
            .subscribe()
            .wait_for(|stored| *stored > 0)
            .await
            .expect("the store outlives the wait");
    }

    fn tickets_taken(&self) -> usize {
        *self.taken.borrow()
    }
}

impl ClientSessionStore for TicketStore {
    fn set_kx_hint(&self, server_name: ServerName<'static>, group: NamedGroup) {
        self.inner.set_kx_hint(server_name, group);
    }

    fn kx_hint(&self, server_name: &ServerName<'_>) -> Option<NamedGroup> {
        self.inner.kx_hint(server_name)
    }

    fn set_tls12_session(&self, server_name: ServerName<'static>, value: Tls12ClientSessionValue) {
        self.inner.set_tls12_session(server_name, value);
    }

    fn tls12_session(&self, server_name: &ServerName<'_>) -> Option<Tls12ClientSessionValue> {
        self.inner.tls12_session(server_name)
    }

    fn remove_tls12_session(&self, server_name: &ServerName<'static>) {
        self.inner.remove_tls12_session(server_name);
    }

    fn insert_tls13_ticket(&self, server_name: ServerName<'static>, value: Tls13ClientSessionValue) {
        self.inner.insert_tls13_ticket(server_name, value);
        self.stored.send_modify(|stored| *stored += 1);
    }

    fn take_tls13_ticket(&self, server_name: &ServerName<'static>) -> Option<Tls13ClientSessionValue> {
        let ticket = self.inner.take_tls13_ticket(server_name);
        if ticket.is_some() {
            self.taken.send_modify(|taken| *taken += 1);
        }
        ticket
    }
}

/// A QUIC client that remembers session tickets across connections and offers early data.
struct ResumingClient {
    endpoint: quinn::Endpoint,
    config: quinn::ClientConfig,
    tickets: Arc<TicketStore>,
}

impl ResumingClient {
    fn new(certs: &TestCerts) -> Self {
        let tickets = TicketStore::new();
        let mut tls = certs.client_config(&[b"h3"]);
        tls.enable_early_data = true;
        tls.resumption = Resumption::store(Arc::clone(&tickets) as Arc<dyn ClientSessionStore>);
        let crypto = QuicClientConfig::try_from(tls).expect("a TLS 1.3 config usable for QUIC");
        let endpoint =
            quinn::Endpoint::client(SocketAddr::from(([127, 0, 0, 1], 0))).expect("bind a client UDP socket");
        Self {
            endpoint,
            config: quinn::ClientConfig::new(Arc::new(crypto)),
            tickets,
        }
    }

    fn connect(&self, addr: SocketAddr) -> quinn::Connecting {
        self.endpoint
            .connect_with(self.config.clone(), addr, SERVER_NAME)
            .expect("start a QUIC handshake")
    }

    /// A full handshake and one request, kept open until the proxy's session ticket has arrived.
    async fn get_ticket(&self, addr: SocketAddr, authority: &str) {
        let connection = self.connect(addr).await.expect("QUIC handshake with the proxy");
        let (mut sender, _driver) = h3_on(connection.clone()).await;
        let reply = exchange(&mut sender, authority, "GET", "/first", b"").await;
        assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
        self.tickets.wait_for_ticket().await;
        connection.close(0u32.into(), b"ticket received");
    }
}

/// HTTP/3 on an established (or 0-RTT) QUIC connection, with the connection driver running.
async fn h3_on(connection: quinn::Connection) -> (Sender, JoinHandle<()>) {
    let (mut driver, sender) = h3::client::new(h3_quinn::Connection::new(connection))
        .await
        .expect("HTTP/3 connection setup");
    let driver = tokio::spawn(async move {
        drop(std::future::poll_fn(|cx| driver.poll_close(cx)).await);
    });
    (sender, driver)
}

/// Sends one request with `body` and reads the whole response.
///
/// No Content-Length: with one, a small body hangs in the proxy for reasons unrelated to early data
/// (see `small_body_with_content_length_is_answered`).
async fn exchange(sender: &mut Sender, authority: &str, method: &str, path: &str, body: &'static [u8]) -> H3Reply {
    let request = Request::builder()
        .method(method)
        .uri(format!("https://{authority}{path}"))
        .body(())
        .expect("request");
    let mut stream = sender.send_request(request).await.expect("send the request head");
    if !body.is_empty() {
        stream
            .send_data(Bytes::from_static(body))
            .await
            .expect("send the request body");
    }
    stream.finish().await.expect("finish the request");
    read_reply(&mut stream).await.expect("read the response")
}

/// What the relay passes on; everything else waits, in order, until the gate opens further.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Gate {
    /// Client to proxy only: the client never learns the handshake keys, so all it sends is 0-RTT.
    ToProxyOnly,
    /// Proxy to client only: the proxy never receives the client's Finished.
    ToClientOnly,
    Open,
}

/// A UDP relay in front of the proxy that holds datagrams back according to its [`Gate`].
struct Relay {
    addr: SocketAddr,
    gate: watch::Sender<Gate>,
    task: JoinHandle<()>,
}

impl Relay {
    async fn start(proxy: SocketAddr) -> Self {
        let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
        let front = UdpSocket::bind(loopback).await.expect("bind the relay's client side");
        let back = UdpSocket::bind(loopback).await.expect("bind the relay's proxy side");
        back.connect(proxy).await.expect("aim the relay at the proxy");
        let addr = front.local_addr().expect("relay address");
        let (gate, mut state) = watch::channel(Gate::ToProxyOnly);
        let task = tokio::spawn(async move {
            let mut client = None;
            let (mut to_proxy, mut to_client) = (Vec::<Vec<u8>>::new(), Vec::<Vec<u8>>::new());
            let (mut from_client, mut from_proxy) = (vec![0u8; 65536], vec![0u8; 65536]);
            loop {
                let gate = *state.borrow_and_update();
                if gate != Gate::ToProxyOnly {
                    if let Some(client) = client {
                        for datagram in to_client.drain(..) {
                            drop(front.send_to(&datagram, client).await);
                        }
                    }
                }
                if gate != Gate::ToClientOnly {
                    for datagram in to_proxy.drain(..) {
                        drop(back.send(&datagram).await);
                    }
                }
                tokio::select! {
                    received = front.recv_from(&mut from_client) => {
                        let Ok((length, from)) = received else { continue };
                        client = Some(from);
                        if gate == Gate::ToClientOnly {
                            to_proxy.push(from_client[..length].to_vec());
                        } else {
                            drop(back.send(&from_client[..length]).await);
                        }
                    }
                    received = back.recv(&mut from_proxy) => {
                        let Ok(length) = received else { continue };
                        match client {
                            Some(client) if gate != Gate::ToProxyOnly => {
                                drop(front.send_to(&from_proxy[..length], client).await);
                            }
                            _ => to_client.push(from_proxy[..length].to_vec()),
                        }
                    }
                    changed = state.changed() => if changed.is_err() { return },
                }
            }
        });
        Self { addr, gate, task }
    }

    fn set(&self, gate: Gate) {
        self.gate.send_replace(gate);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A proxy with TLS and `quic` as its `quic` section, in front of `backend` only.
async fn proxy_to(backend: SocketAddr, quic: &str) -> (Running, TestCerts) {
    let certs = TestCerts::generate();
    let tls = certs.server_line();
    let running = start_tls_proxy(&render_config(
        &[tls.as_str()],
        &format!("backends: {}\n{quic}", backend_list(&[("only", backend, 1)])),
    ))
    .await;
    (running, certs)
}

/// How many HTTP/3 POSTs the proxy has answered 425 in this process.
fn too_early_posts() -> u64 {
    let metrics = quic_proxy::metrics::install().expect("the proxy installed its metrics recorder");
    metrics
        .render()
        .lines()
        .filter(|line| {
            line.starts_with("http_requests_total{")
                && ["method=\"POST\"", "status_code=\"425\"", "protocol=\"h3\""]
                    .iter()
                    .all(|label| line.contains(label))
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// A backend that reads each request completely (head and body), reports its method and path and
/// answers "ok". Unlike a demo backend it shows every request that reached it, in order.
fn start_recording_backend() -> (SocketAddr, mpsc::UnboundedReceiver<String>) {
    let listener = bind_loopback();
    let addr = listener.local_addr().expect("backend address");
    let (lines, received) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let (mut stream, _) = listener.accept().await.expect("accept");
            let lines = lines.clone();
            tokio::spawn(async move {
                let mut data = Vec::new();
                let mut buffer = [0u8; 4096];
                loop {
                    let mut headers = [httparse::EMPTY_HEADER; 64];
                    let mut request = httparse::Request::new(&mut headers);
                    if let Ok(httparse::Status::Complete(head_length)) = request.parse(&data) {
                        let header = |name: &str| {
                            request
                                .headers
                                .iter()
                                .find(|h| h.name.eq_ignore_ascii_case(name))
                                .and_then(|h| std::str::from_utf8(h.value).ok())
                                .map(str::trim)
                        };
                        let length = header("content-length").and_then(|v| v.parse::<usize>().ok());
                        let chunked = header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
                        // Answering before the whole body is read would make the close a reset, which the
                        // proxy may see before the response.
                        let complete = if chunked {
                            data[head_length..].ends_with(b"0\r\n\r\n")
                        } else {
                            data.len() >= head_length + length.unwrap_or(0)
                        };
                        if complete {
                            let line = format!(
                                "{} {}",
                                request.method.unwrap_or_default(),
                                request.path.unwrap_or_default()
                            );
                            let _ = lines.send(line);
                            let _ = stream.write_all(OK_RESPONSE).await;
                            return;
                        }
                    }
                    match stream.read(&mut buffer).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => data.extend_from_slice(&buffer[..n]),
                    }
                }
            });
        }
    });
    (addr, received)
}

/// Waits for the next request the recording backend receives.
async fn next_request(requests: &mut mpsc::UnboundedReceiver<String>) -> String {
    requests.recv().await.expect("the recording backend is running")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn early_data_serves_safe_methods_and_refuses_others_until_the_handshake_completes() {
    guarded(async {
        let (backend, mut requests) = start_recording_backend();
        let (running, certs) = proxy_to(backend, "quic: {early_data: true}").await;
        let proxy = quic_addr(&running);
        let authority = format!("{SERVER_NAME}:{}", proxy.port());
        let client = ResumingClient::new(&certs);
        client.get_ticket(proxy, &authority).await;
        assert_eq!(next_request(&mut requests).await, "GET /first");

        let relay = Relay::start(proxy).await;
        let refused_before = too_early_posts();
        let (connection, accepted) = client
            .connect(relay.addr)
            .into_0rtt()
            .unwrap_or_else(|_| panic!("a session ticket allowing early data was stored, so 0-RTT is possible"));
        assert_eq!(
            client.tickets.tickets_taken(),
            1,
            "the client resumed with the stored ticket"
        );
        let (sender, _driver) = h3_on(connection.clone()).await;
        let early_post = tokio::spawn({
            let (mut sender, authority) = (sender.clone(), authority.clone());
            async move { exchange(&mut sender, &authority, "POST", "/early-post", b"replayable").await }
        });
        let early_get = tokio::spawn({
            let (mut sender, authority) = (sender.clone(), authority.clone());
            async move { exchange(&mut sender, &authority, "GET", "/early-get", b"").await }
        });

        // Both requests must have reached the proxy as 0-RTT before the client may learn any keys:
        // once it has them it would send whatever is left in 1-RTT packets instead.
        assert_eq!(next_request(&mut requests).await, "GET /early-get");
        wait_until(|| too_early_posts() > refused_before).await;

        relay.set(Gate::ToClientOnly);
        let early_post = early_post.await.expect("early POST task");
        let early_get = early_get.await.expect("early GET task");
        assert_eq!(
            connection.stats().frame_rx.handshake_done,
            0,
            "the proxy cannot have completed its handshake: the client's Finished is held back"
        );
        assert_eq!(early_post.status, StatusCode::TOO_EARLY, "{:?}", early_post.body);
        assert_eq!(early_get.status, StatusCode::OK, "{:?}", early_get.body);
        assert_eq!(early_get.body, Bytes::from_static(b"ok"));

        relay.set(Gate::Open);
        assert!(accepted.await, "the proxy accepted the early data");
        // HANDSHAKE_DONE is the proxy's own word that its handshake completed.
        wait_until(|| connection.stats().frame_rx.handshake_done > 0).await;
        let mut sender = sender;
        let late_post = exchange(&mut sender, &authority, "POST", "/late-post", b"safe now").await;
        assert_eq!(late_post.status, StatusCode::OK, "{:?}", late_post.body);
        assert_eq!(
            next_request(&mut requests).await,
            "POST /late-post",
            "the refused early POST never reached the backend"
        );
        assert!(requests.try_recv().is_err(), "no other request reached the backend");
        connection.close(0u32.into(), b"test done");
        client.endpoint.wait_idle().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_early_data_resumption_waits_for_the_handshake() {
    guarded(async {
        let (backend, mut requests) = start_recording_backend();
        let (running, certs) = proxy_to(backend, "").await;
        let proxy = quic_addr(&running);
        let authority = format!("{SERVER_NAME}:{}", proxy.port());
        let client = ResumingClient::new(&certs);
        client.get_ticket(proxy, &authority).await;
        assert_eq!(next_request(&mut requests).await, "GET /first");

        let connection = match client.connect(proxy).into_0rtt() {
            // The ticket carries the server's early-data limit, 0 here, so the client does not even try.
            Err(connecting) => connecting.await.expect("QUIC handshake with the proxy"),
            Ok((connection, accepted)) => {
                assert!(!accepted.await, "the proxy accepted 0-RTT although early_data is off");
                connection
            }
        };
        assert_eq!(
            client.tickets.tickets_taken(),
            1,
            "the client offered its ticket, so only early data was refused, not resumption"
        );
        let (mut sender, _driver) = h3_on(connection.clone()).await;
        let post = exchange(&mut sender, &authority, "POST", "/post", b"after the handshake").await;
        assert_eq!(post.status, StatusCode::OK, "{:?}", post.body);
        assert_eq!(next_request(&mut requests).await, "POST /post");
        let get = exchange(&mut sender, &authority, "GET", "/get", b"").await;
        assert_eq!(get.status, StatusCode::OK, "{:?}", get.body);
        assert_eq!(next_request(&mut requests).await, "GET /get");
        connection.close(0u32.into(), b"test done");
        client.endpoint.wait_idle().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_body_with_content_length_is_answered() {
    guarded(async {
        let (backend, mut requests) = start_recording_backend();
        let (running, certs) = proxy_to(backend, "").await;
        let mut client = H3Client::connect(quic_addr(&running), &certs).await;
        let request = client
            .request("POST", "/sized")
            .header("content-length", 5)
            .body(())
            .expect("request");
        let reply = client
            .send(request, [Bytes::from_static(b"hello")])
            .await
            .expect("POST over HTTP/3");
        assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
        assert_eq!(next_request(&mut requests).await, "POST /sized");
        client.close().await;
    })
    .await;
}
