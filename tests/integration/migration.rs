//! QUIC connections whose client address changes, with two workers: a NAT that rebinds (same connection ID,
//! new port) and a client that migrates actively (new port and a new connection ID). The kernel picks a
//! worker's socket from the 4-tuple, so about half the time the packets from the new address reach the
//! worker that does not hold the connection; it must hand them to the one that does. Also: a flood of
//! packets with a real connection ID from other ports, and with made-up ones, leaves the workers serving and
//! is counted.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use crate::support::http3::*;
use crate::support::*;
use http::StatusCode;
use quic_proxy::app::Running;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

/// Every try must keep its connection.
const TRIES: usize = 20;

/// Sixty handshakes and their requests through a relay, in a debug build next to other tests.
const MIGRATION_GUARD: Duration = Duration::from_secs(90);

/// The proxy's connection IDs (the default `quic.connection_id_length`).
const ID_LENGTH: usize = 8;

/// A proxy with TLS and two workers in front of one demo backend.
async fn two_workers() -> (Running, TestCerts) {
    let certs = TestCerts::generate();
    let backend = start_backends(&["origin"])[0];
    let yaml = render_config(
        &[certs.server_line().as_str(), "workers: 2"],
        &format!("backends: {}", backend_list(&[("origin", backend, 1)])),
    );
    (start_tls_proxy(&yaml).await, certs)
}

/// `quic_packets_handed_off_total{result}`.
async fn handed_off(running: &Running, result: &str) -> f64 {
    let admin = running.admin_addr.expect("the admin listener is on");
    let reply = HttpClient::new(admin).get("/metrics").await;
    assert_eq!(reply.status, StatusCode::OK);
    sample_sum(reply.text(), "quic_packets_handed_off_total", &[("result", result)])
}

/// A task aborted when dropped.
struct Aborting(JoinHandle<()>);

impl Drop for Aborting {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A NAT in front of one server address: each client address gets its own outside port (a mapping), and the
/// server's answers to that port go back to that client. `rebind` gives every client a new outside port, as
/// a NAT does when a mapping expires; the old port is closed, so what the server still sends there is lost.
struct Nat {
    addr: SocketAddr,
    rebinds: mpsc::UnboundedSender<oneshot::Sender<()>>,
    /// The destination connection ID of every short-header packet from a client, with the client's address.
    ids: Arc<Mutex<Vec<SeenId>>>,
    _task: Aborting,
}

/// A client's address and the destination connection ID of one of its packets.
type SeenId = (SocketAddr, Vec<u8>);

/// One client's outside port: its socket and the task returning the server's answers.
struct Mapping {
    socket: Arc<UdpSocket>,
    _answers: Aborting,
}

impl Mapping {
    async fn open(client: SocketAddr, server: SocketAddr, inside: &Arc<UdpSocket>) -> Self {
        let socket = Arc::new(UdpSocket::bind(loopback()).await.expect("bind an outside port"));
        let answers = {
            let (socket, inside) = (Arc::clone(&socket), Arc::clone(inside));
            tokio::spawn(async move {
                let mut datagram = vec![0u8; 65536];
                while let Ok((length, from)) = socket.recv_from(&mut datagram).await {
                    if from == server {
                        drop(inside.send_to(&datagram[..length], client).await);
                    }
                }
            })
        };
        Self {
            socket,
            _answers: Aborting(answers),
        }
    }
}

fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

impl Nat {
    async fn start(server: SocketAddr) -> Self {
        let inside = Arc::new(UdpSocket::bind(loopback()).await.expect("bind the NAT's inside port"));
        let addr = inside.local_addr().expect("the NAT's address");
        let ids = Arc::new(Mutex::new(Vec::new()));
        let (rebinds, mut commands) = mpsc::unbounded_channel::<oneshot::Sender<()>>();
        let task = {
            let ids = Arc::clone(&ids);
            tokio::spawn(async move {
                let mut mappings: HashMap<SocketAddr, Mapping> = HashMap::new();
                let mut datagram = vec![0u8; 65536];
                loop {
                    tokio::select! {
                        received = inside.recv_from(&mut datagram) => {
                            let Ok((length, client)) = received else { continue };
                            if length > ID_LENGTH && datagram[0] & 0x80 == 0 {
                                ids.lock()
                                    .unwrap_or_else(PoisonError::into_inner)
                                    .push((client, datagram[1..=ID_LENGTH].to_vec()));
                            }
                            if let std::collections::hash_map::Entry::Vacant(entry) = mappings.entry(client) {
                                entry.insert(Mapping::open(client, server, &inside).await);
                            }
                            if let Some(mapping) = mappings.get(&client) {
                                drop(mapping.socket.send_to(&datagram[..length], server).await);
                            }
                        }
                        command = commands.recv() => {
                            let Some(done) = command else { return };
                            for (client, mapping) in mappings.iter_mut() {
                                *mapping = Mapping::open(*client, server, &inside).await;
                            }
                            let _ = done.send(());
                        }
                    }
                }
            })
        };
        Self {
            addr,
            rebinds,
            ids,
            _task: Aborting(task),
        }
    }

    /// Gives every client a new outside port; returns once the old ports are closed.
    async fn rebind(&self) {
        let (done, rebound) = oneshot::channel();
        self.rebinds.send(done).expect("the NAT runs");
        rebound.await.expect("the NAT rebinds");
    }

    /// The destination connection IDs the client at `client` has used.
    fn ids_from(&self, client: SocketAddr) -> Vec<Vec<u8>> {
        let ids = self.ids.lock().unwrap_or_else(PoisonError::into_inner);
        let mut from: Vec<Vec<u8>> = ids
            .iter()
            .filter(|(c, _)| *c == client)
            .map(|(_, id)| id.clone())
            .collect();
        from.dedup();
        from
    }
}

async fn connect(nat: &Nat, certs: &TestCerts) -> H3Client {
    H3Client::connect_with(nat.addr, certs.quic_client_config())
        .await
        .expect("QUIC handshake through the NAT")
}

async fn answered(client: &mut H3Client, path: &str, attempt: usize, after: &str) {
    match client.get(path).await {
        Ok(reply) => assert_eq!(
            (reply.status, reply.backend()),
            (StatusCode::OK, "origin"),
            "try {attempt}, {after}"
        ),
        Err(error) => panic!(
            "try {attempt}: the request {after} failed: {error} (connection: {:?})",
            client.connection.close_reason()
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_survives_nat_rebinding_whichever_worker_the_new_port_reaches() {
    guarded_for(MIGRATION_GUARD, async {
        let (running, certs) = two_workers().await;
        let nat = Nat::start(quic_addr(&running)).await;
        for attempt in 1..=TRIES {
            let mut client = connect(&nat, &certs).await;
            answered(&mut client, "/before", attempt, "before the rebinding").await;
            nat.rebind().await;
            answered(&mut client, "/after", attempt, "after the NAT rebinding").await;
            let ids = nat.ids_from(client.local_addr());
            assert_eq!(
                ids.len(),
                1,
                "try {attempt}: a NAT rebinding keeps the connection ID: {ids:?}"
            );
            client.close().await;
        }
        // With two workers, about half of the new ports reach the other worker: unless some packets were
        // handed between the workers, the test did not test the hand-off (the odds are 2^-20).
        let handed = handed_off(&running, "delivered").await;
        assert!(
            handed >= 1.0,
            "no packet was handed between the workers in {TRIES} rebindings"
        );
        println!("{TRIES} NAT rebindings kept their connections; {handed} packets handed between workers");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_survives_active_migration_to_a_new_port_and_connection_id() {
    guarded_for(MIGRATION_GUARD, async {
        let (running, certs) = two_workers().await;
        let nat = Nat::start(quic_addr(&running)).await;
        for attempt in 1..=TRIES {
            let mut client = connect(&nat, &certs).await;
            answered(&mut client, "/before", attempt, "before migrating").await;
            let old = client.local_addr();
            client.migrate();
            let new = client.local_addr();
            assert_ne!(old, new, "the client moved to a new port");
            answered(&mut client, "/after", attempt, "after migrating").await;
            let (before, after) = (nat.ids_from(old), nat.ids_from(new));
            assert!(
                !after.is_empty() && after.iter().all(|id| !before.contains(id)),
                "try {attempt}: the migrated client must use a new connection ID: before {before:?}, after {after:?}"
            );
            client.close().await;
        }
        let handed = handed_off(&running, "delivered").await;
        assert!(
            handed >= 1.0,
            "no packet was handed between the workers in {TRIES} migrations"
        );
        println!("{TRIES} active migrations kept their connections; {handed} packets handed between workers");
    })
    .await;
}

/// Datagrams of the flood from each of its sockets; the sockets are many so that some reach each worker.
const FLOOD_SOCKETS: usize = 16;
const FLOOD_PER_SOCKET: usize = 500;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_borrowed_and_made_up_connection_ids_leaves_the_workers_serving_and_is_counted() {
    guarded_for(MIGRATION_GUARD, async {
        let (running, certs) = two_workers().await;
        let nat = Nat::start(quic_addr(&running)).await;
        let mut client = connect(&nat, &certs).await;
        answered(&mut client, "/before", 0, "before the flood").await;
        let real = nat
            .ids_from(client.local_addr())
            .pop()
            .expect("the client's connection ID, seen by the NAT");

        let mut sockets = Vec::with_capacity(FLOOD_SOCKETS);
        for _ in 0..FLOOD_SOCKETS {
            sockets.push(UdpSocket::bind(loopback()).await.expect("bind a flood socket"));
        }
        for (index, socket) in sockets.iter().enumerate() {
            for n in 0..FLOOD_PER_SOCKET {
                // Short header, then the ID: the client's real one (the attacker saw it on the wire) or a made-up
                // one, and 60 bytes that decrypt to nothing.
                let mut packet = vec![0x40];
                if n % 2 == 0 {
                    packet.extend_from_slice(&real);
                } else {
                    packet.extend((0..ID_LENGTH).map(|_| fastrand::u8(..)));
                }
                packet.extend((0..60).map(|_| fastrand::u8(..)));
                socket
                    .send_to(&packet, quic_addr(&running))
                    .await
                    .unwrap_or_else(|e| panic!("flood socket {index}: {e}"));
            }
        }

        // Made-up IDs are unknown to every worker: the one that reads them answers with a stateless reset.
        let mut reset = [0u8; 256];
        let (length, from) = tokio::time::timeout(Duration::from_secs(10), sockets[0].recv_from(&mut reset))
            .await
            .expect("a stateless reset for a made-up connection ID")
            .expect("read the reset");
        assert_eq!(from, quic_addr(&running));
        assert!(
            length >= 21 && reset[0] & 0xc0 == 0x40,
            "not a stateless reset: {:?}",
            &reset[..length]
        );

        // The client's connection, which the borrowed ID belongs to, goes on; so do new ones.
        answered(&mut client, "/after", 0, "after the flood").await;
        let mut fresh = H3Client::connect(quic_addr(&running), &certs).await;
        answered(&mut fresh, "/fresh", 0, "on a new connection after the flood").await;

        let (delivered, dropped) = (
            handed_off(&running, "delivered").await,
            handed_off(&running, "dropped").await,
        );
        assert!(
            delivered + dropped >= 1.0,
            "the borrowed ID reached the other worker from none of {FLOOD_SOCKETS} ports"
        );
        println!("flood: {delivered} datagrams handed to the owning worker, {dropped} dropped at its queue");
    })
    .await;
}
