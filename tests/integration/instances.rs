//! Many instances behind one address: instances that share `quic.stateless_reset_key` let a client whose
//! server went away fail fast, with a stateless reset it accepts, and accept each other's Retry tokens;
//! with different keys neither happens.
//!
//! Each test runs the real binary twice on one address: instance A serves a client, is killed with SIGKILL
//! (so it sends nothing on its way out, as when a machine or pod is lost), and instance B is started on
//! the same UDP and TCP port. A UDP relay sits between the client and that port; the client's address as
//! the instances see it is the relay's, which does not change, and the relay counts what the instances
//! send and can hold the client's packets back while A is replaced by B.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::support::http3::*;
use crate::support::*;
use http::StatusCode;
use quinn::{ConnectionError, IdleTimeout, TransportConfig};
use tempfile::TempDir;
use tokio::net::UdpSocket;
use tokio::sync::watch;
use tokio::task::JoinHandle;

const KEY: &str = "5f0c8e1d2a7b4c3e9f60718293a4b5c6d7e8f90112233445566778899aabbccd";
const OTHER_KEY: &str = "a1b2c3d4e5f60718293a4b5c6d7e8f9000112233445566778899aabbccddeeff";

/// Two processes started and one killed, handshakes and, where the client must notice nothing, an idle
/// timeout to wait out, in a debug build next to other tests.
const INSTANCE_GUARD: Duration = Duration::from_secs(120);

/// The instances' idle timeout: without a stateless reset the client would wait this long.
const SERVER_IDLE: &str = "30s";

/// A stateless reset must end the connection well within the idle timeout; a bound, not a benchmark.
const RESET_BOUND: Duration = Duration::from_secs(2);

/// The client's own idle timeout where it is expected to time out rather than be reset, so the test does
/// not wait the instances' 30 s. Long enough for instance B to start before it runs out.
const CLIENT_IDLE: Duration = Duration::from_secs(15);

/// One instance: the binary with its own config directory.
struct Instance {
    process: ProxyProcess,
    _dir: TempDir,
}

impl Instance {
    /// Starts the binary with TLS from `certs` on `address` (UDP and TCP) in front of `backend`, with
    /// `quic` (a YAML flow map) as its `quic` section.
    async fn start(certs: &TestCerts, backend: SocketAddr, address: &str, quic: &str) -> Self {
        let dir = tempfile::tempdir().expect("create a temporary directory");
        let config = dir.path().join("proxy.yaml");
        let yaml = format!(
            "server:\n  address: \"{address}\"\n  fallback_address: \"127.0.0.1:0\"\n  drain_timeout: 2s\n  {}\n\
             quic: {quic}\n\
             telemetry:\n  metrics:\n    address: \"127.0.0.1:0\"\n  logging:\n    level: info\n    format: json\n\
             backends: {}\n",
            certs.server_line(),
            backend_list(&[("origin", backend, 1)]),
        );
        std::fs::write(&config, yaml).expect("write the config");
        let process = ProxyProcess::start(&config, &[]).await;
        Self { process, _dir: dir }
    }

    fn quic(&self) -> SocketAddr {
        self.process.quic.expect("TLS is configured, so QUIC listens")
    }

    /// Retry packets this instance has sent.
    async fn retries_sent(&self) -> f64 {
        let reply = HttpClient::new(self.process.admin_addr()).get("/metrics").await;
        assert_eq!(reply.status, StatusCode::OK);
        sample_sum(reply.text(), "quic_retry_packets_sent_total", &[])
    }

    /// SIGKILL, and wait until the process is gone and its sockets with it.
    async fn kill(self) {
        self.process.kill().await;
    }
}

/// What the relay does with the client's datagrams.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// Pass everything both ways.
    Pass,
    /// Pass until the server has sent something, then keep the client's datagrams until `Pass`.
    HoldAfterFirstReply,
}

/// What the relay saw.
#[derive(Debug, Default)]
struct Seen {
    /// Datagrams from the server side.
    from_server: AtomicUsize,
    /// The first byte of each datagram from the server side (the packet type of a long header).
    first_bytes: Mutex<Vec<u8>>,
    /// Client datagrams held back.
    held: AtomicUsize,
}

/// A UDP relay in front of one server address.
struct Relay {
    addr: SocketAddr,
    mode: watch::Sender<Mode>,
    seen: Arc<Seen>,
    task: JoinHandle<()>,
}

impl Relay {
    async fn start(server: SocketAddr, mode: Mode) -> Self {
        let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
        let front = UdpSocket::bind(loopback).await.expect("bind the relay's client side");
        // Not connected: while no instance listens the kernel's port-unreachable errors must not stick to
        // the socket, and the next instance on the same port is reached the same way.
        let back = UdpSocket::bind(loopback).await.expect("bind the relay's server side");
        let addr = front.local_addr().expect("relay address");
        let (mode, mut current) = watch::channel(mode);
        let seen = Arc::new(Seen::default());
        let task = {
            let seen = Arc::clone(&seen);
            tokio::spawn(async move {
                let (mut client, mut replied, mut held) = (None, false, Vec::<Vec<u8>>::new());
                let (mut from_client, mut from_server) = (vec![0u8; 65536], vec![0u8; 65536]);
                loop {
                    let mode = *current.borrow_and_update();
                    if mode == Mode::Pass {
                        for datagram in held.drain(..) {
                            drop(back.send_to(&datagram, server).await);
                        }
                    }
                    tokio::select! {
                        received = front.recv_from(&mut from_client) => {
                            let Ok((length, from)) = received else { continue };
                            client = Some(from);
                            if mode == Mode::HoldAfterFirstReply && replied {
                                held.push(from_client[..length].to_vec());
                                seen.held.fetch_add(1, Ordering::SeqCst);
                            } else {
                                drop(back.send_to(&from_client[..length], server).await);
                            }
                        }
                        received = back.recv_from(&mut from_server) => {
                            let Ok((length, _)) = received else { continue };
                            replied = true;
                            seen.first_bytes.lock().unwrap_or_else(PoisonError::into_inner).push(from_server[0]);
                            seen.from_server.fetch_add(1, Ordering::SeqCst);
                            if let Some(client) = client {
                                drop(front.send_to(&from_server[..length], client).await);
                            }
                        }
                        changed = current.changed() => if changed.is_err() { return },
                    }
                }
            })
        };
        Self { addr, mode, seen, task }
    }

    fn set(&self, mode: Mode) {
        self.mode.send_replace(mode);
    }

    fn server_datagrams(&self) -> usize {
        self.seen.from_server.load(Ordering::SeqCst)
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An HTTP/3 client config trusting `certs`, with `idle` as the client's idle timeout (the smaller of the
/// two sides' applies).
fn client_config(certs: &TestCerts, idle: Duration) -> quinn::ClientConfig {
    let mut config = certs.quic_client_config();
    let mut transport = TransportConfig::default();
    transport.max_idle_timeout(Some(IdleTimeout::try_from(idle).expect("a valid idle timeout")));
    config.transport_config(Arc::new(transport));
    config
}

/// How a client's open connection ended once its server was replaced.
struct AfterSwap {
    reason: ConnectionError,
    /// Whether the connection was still open when the request was sent. A packet the client sends on its
    /// own once B runs (a retransmission of something A never acknowledged before it was killed) may meet
    /// B first; then the request fails at once.
    open_at_request: bool,
    /// From sending the request to learning the connection is gone.
    waited: Duration,
    /// Datagrams that reached the client from the server's address after A was gone: B's.
    from_b: usize,
}

/// A client connected through the relay to A makes a request; A is killed and B started on A's port; the
/// client's next request must fail, and how the connection ended is returned.
async fn next_request_after_swap(quic_a: &str, quic_b: &str, client_idle: Duration) -> AfterSwap {
    let certs = TestCerts::generate();
    let backend = start_backends(&["origin"])[0];
    let a = Instance::start(&certs, backend, "127.0.0.1:0", quic_a).await;
    let address = a.quic();
    let relay = Relay::start(address, Mode::Pass).await;
    let mut client = H3Client::connect_with(relay.addr, client_config(&certs, client_idle))
        .await
        .expect("QUIC handshake with instance A");
    let reply = client.get("/before").await.expect("a request to instance A");
    assert_eq!((reply.status, reply.backend()), (StatusCode::OK, "origin"));

    a.kill().await;
    let before = relay.server_datagrams();
    let b = Instance::start(&certs, backend, &address.to_string(), quic_b).await;
    assert_eq!(b.quic(), address, "instance B listens where A did");

    let open_at_request = client.connection.close_reason().is_none();
    let sent = Instant::now();
    let outcome = tokio::time::timeout(client_idle + Duration::from_secs(30), client.get("/after"))
        .await
        .expect("the request ends once the connection does");
    let waited = sent.elapsed();
    assert!(
        outcome.is_err(),
        "a request on A's connection was answered by B: {outcome:?}"
    );
    let reason = client
        .connection
        .close_reason()
        .expect("the request failed because the connection ended");
    let from_b = relay.server_datagrams() - before;
    b.kill().await;
    AfterSwap {
        reason,
        open_at_request,
        waited,
        from_b,
    }
}

fn quic_section(key: &str) -> String {
    format!("{{idle_timeout: {SERVER_IDLE}, stateless_reset_key: \"{key}\"}}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_shared_key_the_client_is_reset_at_once() {
    guarded_for(INSTANCE_GUARD, async {
        let ended = next_request_after_swap(&quic_section(KEY), &quic_section(KEY), Duration::from_secs(30)).await;
        assert!(
            matches!(ended.reason, ConnectionError::Reset),
            "expected a stateless reset, the connection ended with {:?}",
            ended.reason
        );
        assert!(
            ended.waited < RESET_BOUND,
            "the reset took {:?} (idle timeout {SERVER_IDLE})",
            ended.waited
        );
        assert!(ended.from_b >= 1, "instance B sent nothing");
        println!(
            "shared stateless reset key: the client's request failed {:?} after it was sent ({}; idle timeout \
             {SERVER_IDLE})",
            ended.waited,
            if ended.open_at_request {
                "the request met the reset"
            } else {
                "a retransmission had met the reset already"
            }
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_different_keys_the_client_does_not_accept_the_reset() {
    guarded_for(INSTANCE_GUARD, async {
        let ended = next_request_after_swap(&quic_section(KEY), &quic_section(OTHER_KEY), CLIENT_IDLE).await;
        assert!(
            ended.open_at_request,
            "the connection ended ({:?}) before the request: B took longer to start than the client's idle \
             timeout, so the test shows nothing about B",
            ended.reason
        );
        assert!(
            matches!(ended.reason, ConnectionError::TimedOut),
            "expected the client to wait for its idle timeout, the connection ended with {:?}",
            ended.reason
        );
        // B did answer: with stateless resets whose token the client has never been given.
        assert!(
            ended.from_b >= 1,
            "instance B sent nothing, so the test shows nothing about its resets"
        );
        println!(
            "different stateless reset keys: {} datagrams from B ignored, the client timed out {:?} after its \
             next request",
            ended.from_b, ended.waited
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_file_is_the_same_key_as_the_key_written_inline() {
    guarded_for(INSTANCE_GUARD, async {
        let dir = tempfile::tempdir().expect("create a temporary directory");
        let key_file = dir.path().join("stateless_reset_key");
        // As `openssl rand -hex 32 > file` writes it: with a newline.
        std::fs::write(&key_file, format!("{KEY}\n")).expect("write the key file");
        let from_file = format!(
            "{{idle_timeout: {SERVER_IDLE}, stateless_reset_key_file: {:?}}}",
            key_file.display().to_string()
        );
        let ended = next_request_after_swap(&from_file, &quic_section(KEY), Duration::from_secs(30)).await;
        assert!(
            matches!(ended.reason, ConnectionError::Reset),
            "expected a stateless reset, the connection ended with {:?}",
            ended.reason
        );
        assert!(ended.waited < RESET_BOUND, "the reset took {:?}", ended.waited);
    })
    .await;
}

/// Retry on every handshake, with `key`.
fn retry_section(key: &str) -> String {
    format!("{{retry: always, stateless_reset_key: \"{key}\"}}")
}

/// The first byte of a QUIC version 1 Retry packet: long header, fixed bit, type 3.
fn is_retry(first_byte: u8) -> bool {
    first_byte & 0xf0 == 0xf0
}

/// A handshake that A answers with a Retry, the client's token-bearing Initial held until B has replaced A
/// on the same port, then released to B. Returns the client (or why the handshake failed) and how many
/// Retry packets B sent.
async fn handshake_with_a_token_from_a(key_a: &str, key_b: &str) -> (Result<H3Client, ConnectionError>, f64) {
    let certs = TestCerts::generate();
    let backend = start_backends(&["origin"])[0];
    let a = Instance::start(&certs, backend, "127.0.0.1:0", &retry_section(key_a)).await;
    let address = a.quic();
    let relay = Relay::start(address, Mode::HoldAfterFirstReply).await;
    let connecting = tokio::spawn(H3Client::connect_with(relay.addr, client_config(&certs, CLIENT_IDLE)));

    wait_until(|| relay.seen.held.load(Ordering::SeqCst) >= 1).await;
    let first = relay.seen.first_bytes.lock().unwrap_or_else(PoisonError::into_inner)[0];
    assert!(
        is_retry(first),
        "A's first answer is not a Retry packet (first byte {first:#04x})"
    );
    // The Retry leaves inside quinn before the accept loop counts it: the count may lag the packet.
    let mut retries = a.retries_sent().await;
    while retries < 1.0 {
        tokio::time::sleep(Duration::from_millis(2)).await;
        retries = a.retries_sent().await;
    }
    assert_eq!(retries, 1.0, "instance A sent one Retry");

    a.kill().await;
    let b = Instance::start(&certs, backend, &address.to_string(), &retry_section(key_b)).await;
    assert_eq!(b.quic(), address, "instance B listens where A did");
    relay.set(Mode::Pass);
    let client = connecting.await.expect("the connecting task");
    let retries_by_b = b.retries_sent().await;
    if let Ok(client) = &client {
        let mut sender = client.sender.clone();
        let reply = sender.get("/after-retry").await.expect("a request to instance B");
        assert_eq!((reply.status, reply.backend()), (StatusCode::OK, "origin"));
    }
    b.kill().await;
    (client, retries_by_b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_token_from_one_instance_is_accepted_by_another_with_the_same_key() {
    guarded_for(INSTANCE_GUARD, async {
        let (client, retries_by_b) = handshake_with_a_token_from_a(KEY, KEY).await;
        assert!(client.is_ok(), "the handshake with B failed: {:?}", client.err());
        assert_eq!(
            retries_by_b, 0.0,
            "B asked for another Retry instead of accepting A's token"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_token_from_an_instance_with_another_key_is_rejected() {
    guarded_for(INSTANCE_GUARD, async {
        let (client, retries_by_b) = handshake_with_a_token_from_a(KEY, OTHER_KEY).await;
        // B cannot read the token, so it treats the address as unvalidated and sends a Retry of its own,
        // which a client that already followed one must discard (RFC 9000, 17.2.5.2): no handshake.
        match client {
            Ok(_) => panic!("B completed a handshake with a token it cannot have issued"),
            Err(reason) => assert!(matches!(reason, ConnectionError::TimedOut), "{reason:?}"),
        }
        assert!(
            retries_by_b >= 1.0,
            "B did not refuse the token with a Retry of its own"
        );
    })
    .await;
}
