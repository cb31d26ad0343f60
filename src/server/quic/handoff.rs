//! Connection IDs that name their worker, and the hand-off of packets that reach the wrong one.
//!
//! Every worker has its own UDP socket in an SO_REUSEPORT group, and the kernel picks the socket from the
//! packet's 4-tuple. When a client's address changes (NAT rebinding, or active migration, RFC 9000 §9) its
//! packets may land on another worker's socket, whose endpoint does not know the connection and would answer
//! with a stateless reset. So each worker issues connection IDs that say which worker owns them, and each
//! worker's socket reads the destination connection ID (in the clear in every packet header) of what it
//! receives and hands a packet that belongs to another worker to that worker's queue, where its endpoint
//! reads it as if its own socket had received it. Replies leave from the owner's socket, which has the same
//! local address.
//!
//! ## Connection ID layout
//! `quic.connection_id_length` bytes (8 by default): two routing bytes, then random bytes from a CSPRNG.
//! The routing bytes hold a 16-bit field, `generation << 15 | worker`, encrypted: XORed with a mask that is
//! AES-128 (QUIC's header-protection function) of the random bytes under a key derived from the stateless
//! reset key. An observer without the key sees uniformly random IDs, so the IDs of one connection cannot be
//! linked to each other or to a worker (RFC 9000 §9.5); instances sharing `quic.stateless_reset_key` can read
//! each other's routing bytes. The generation bit tells the process that issued the ID from the one before
//! it across a binary upgrade (`runtime::inherit`), which passes its key on.
//!
//! ## Across a binary upgrade
//! Both processes hold the same UDP sockets. The new one reads them all; the old one stops reading
//! ([`HandOff::stop_receiving`]) and keeps sending. A datagram the new process reads for an ID of the other
//! generation goes over the link to the old process ([`HandOff::set_previous`]), which hands it to the
//! owning worker ([`HandOff::deliver`]), until the old process exits and the link closes; from then on such
//! IDs are unknown and get a stateless reset.
//!
//! ## What is handed off
//! Short-header packets and Handshake packets, by their destination connection ID. Initial and 0-RTT packets
//! are not: their destination ID may be the client's own random choice, and the kernel keeps a handshake's
//! packets on one socket as long as its 4-tuple holds. An ID that decodes to no worker stays where it
//! arrived (and gets the stateless reset an unknown ID gets). Each worker's queue holds at most
//! [`QUEUE_BYTES`]; a packet that does not fit is dropped and counted, so a flood of forged IDs costs a
//! decode and a copy per packet and never unbounded memory.

use std::fmt;
use std::io::{self, IoSliceMut};
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::os::unix::net::UnixDatagram;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::task::{Context, Poll};

use bytes::Bytes;
use quinn::udp::{EcnCodepoint, RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};
use quinn_proto::{ConnectionId, ConnectionIdGenerator};
use rand::Rng as _;
use ring::aead::quic::{HeaderProtectionKey, AES_128};
use tokio::sync::mpsc;

use crate::runtime::inherit::TAG_DATAGRAM;

/// Bytes of packets waiting in one worker's queue, at most.
pub const QUEUE_BYTES: usize = 2 << 20;

/// Packets in one worker's queue, at most (a bound on the queue's own bookkeeping).
const QUEUE_PACKETS: usize = 4096;

/// The longest connection ID QUIC version 1 allows (RFC 9000 §17.2).
const MAX_ID_BYTES: usize = 20;

/// The routing bytes at the start of every connection ID.
const ROUTE_BYTES: usize = 2;

/// Bytes of the random part that feed the mask (AES's block).
const SAMPLE: usize = 16;

/// QUIC version 1's long-header packet type for Handshake packets (RFC 9000 §17.2).
const HANDSHAKE: u8 = 2;

/// Encodes and reads the routing bytes of connection IDs; shared by every worker of a process.
pub struct CidCodec {
    key: HeaderProtectionKey,
    length: usize,
}

impl fmt::Debug for CidCodec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CidCodec")
            .field("length", &self.length)
            .finish_non_exhaustive()
    }
}

impl CidCodec {
    /// IDs of `length` bytes (at least 4, as config validation ensures), keyed from `secret`.
    pub fn new(secret: &[u8], length: usize) -> anyhow::Result<Self> {
        let prk = ring::hkdf::Salt::new(ring::hkdf::HKDF_SHA256, b"quic-proxy connection ids").extract(secret);
        let okm = prk
            .expand(&[b"route"], &AES_128)
            .map_err(|_| anyhow::anyhow!("cannot derive the connection ID key"))?;
        Ok(Self {
            key: HeaderProtectionKey::from(okm),
            length: length.clamp(ROUTE_BYTES + 1, MAX_ID_BYTES),
        })
    }

    fn mask(&self, random: &[u8]) -> u16 {
        let mut sample = [0u8; SAMPLE];
        let used = random.len().min(SAMPLE);
        sample[..used].copy_from_slice(&random[..used]);
        match self.key.new_mask(&sample) {
            Ok(mask) => u16::from_be_bytes([mask[0], mask[1]]),
            Err(ring::error::Unspecified) => 0,
        }
    }

    /// A new connection ID carrying `route` (`generation << 15 | worker`).
    fn encode(&self, route: u16) -> ConnectionId {
        let mut bytes = [0u8; MAX_ID_BYTES];
        let id = &mut bytes[..self.length];
        rand::rng().fill_bytes(&mut id[ROUTE_BYTES..]);
        let field = route ^ self.mask(&id[ROUTE_BYTES..]);
        id[..ROUTE_BYTES].copy_from_slice(&field.to_be_bytes());
        ConnectionId::new(id)
    }

    /// The route a connection ID of ours carries (any ID of the right length decodes to something).
    fn decode(&self, id: &[u8]) -> u16 {
        u16::from_be_bytes([id[0], id[1]]) ^ self.mask(&id[ROUTE_BYTES..])
    }

    /// The route in the destination connection ID of a datagram's first packet, when it is a packet that
    /// is routed by it (see the module's documentation).
    fn route(&self, datagram: &[u8]) -> Option<u16> {
        let first = *datagram.first()?;
        let id = if first & 0x80 == 0 {
            datagram.get(1..1 + self.length)?
        } else {
            let version = u32::from_be_bytes(datagram.get(1..5)?.try_into().ok()?);
            // Version 1 and the drafts quinn still speaks share the packet types.
            let known = version == 1 || version >> 8 == 0x00ff_0000;
            if !known || (first >> 4) & 0x03 != HANDSHAKE || usize::from(*datagram.get(5)?) != self.length {
                return None;
            }
            datagram.get(6..6 + self.length)?
        };
        Some(self.decode(id))
    }
}

/// The connection ID generator of one worker: every ID it issues routes to that worker.
pub struct WorkerCids {
    codec: Arc<CidCodec>,
    route: u16,
}

impl WorkerCids {
    pub fn new(codec: Arc<CidCodec>, worker: usize, generation: u8) -> Self {
        Self {
            codec,
            route: route_of(worker, generation),
        }
    }
}

/// The generation bit of a route field.
const GENERATION: u16 = 0x8000;

/// The route field of worker `worker` (config keeps workers at 1024 or fewer) in `generation`.
fn route_of(worker: usize, generation: u8) -> u16 {
    let worker = u16::try_from(worker).map_or(!GENERATION, |w| w & !GENERATION);
    if generation & 1 == 1 {
        worker | GENERATION
    } else {
        worker
    }
}

impl ConnectionIdGenerator for WorkerCids {
    fn generate_cid(&mut self) -> ConnectionId {
        self.codec.encode(self.route)
    }

    fn cid_len(&self) -> usize {
        self.codec.length
    }

    fn cid_lifetime(&self) -> Option<std::time::Duration> {
        None
    }
}

/// A datagram handed from the worker that received it to the worker that owns its connection.
struct Handed {
    data: Bytes,
    meta: RecvMeta,
}

/// One worker's queue: its sending side, shared by every worker, and the bytes waiting in it.
struct Mailbox {
    sender: mpsc::Sender<Handed>,
    queued: AtomicUsize,
}

/// The queues of every worker of a process, and the receiving ends until each worker takes its own.
pub struct HandOff {
    codec: Arc<CidCodec>,
    /// This process's generation bit.
    generation: u16,
    mailboxes: Vec<Mailbox>,
    receivers: Mutex<Vec<Option<mpsc::Receiver<Handed>>>>,
    /// False once a newer process reads the sockets (this one only sends, and takes what it is handed).
    receiving: AtomicBool,
    /// The link to the process before this one, while it serves connections of its own.
    previous: OnceLock<Previous>,
    delivered: metrics::Counter,
    to_previous: metrics::Counter,
    dropped: metrics::Counter,
}

/// The link to the previous process, non-blocking.
struct Previous {
    link: UnixDatagram,
    open: AtomicBool,
}

/// Where a datagram goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Owner {
    /// This worker (its own connection, an unknown one, or a packet not routed by its ID).
    Here,
    /// Another worker of this process.
    Worker(usize),
    /// The previous process, across the upgrade link.
    Previous,
}

impl fmt::Debug for HandOff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HandOff")
            .field("workers", &self.mailboxes.len())
            .finish_non_exhaustive()
    }
}

impl HandOff {
    pub fn new(codec: Arc<CidCodec>, workers: usize, generation: u8) -> Arc<Self> {
        let (mailboxes, receivers) = (0..workers)
            .map(|_| {
                let (sender, receiver) = mpsc::channel(QUEUE_PACKETS);
                (
                    Mailbox {
                        sender,
                        queued: AtomicUsize::new(0),
                    },
                    Some(receiver),
                )
            })
            .unzip();
        let (delivered, to_previous, dropped) = crate::metrics::quic_handoff_counters();
        Arc::new(Self {
            codec,
            generation: route_of(0, generation),
            mailboxes,
            receivers: Mutex::new(receivers),
            receiving: AtomicBool::new(true),
            previous: OnceLock::new(),
            delivered,
            to_previous,
            dropped,
        })
    }

    /// From now on datagrams for IDs of the other generation go to the previous process over `link`.
    pub fn set_previous(&self, link: UnixDatagram) -> io::Result<()> {
        link.set_nonblocking(true)?;
        let _ = self.previous.set(Previous {
            link,
            open: AtomicBool::new(true),
        });
        Ok(())
    }

    /// Stops reading the sockets: a newer process reads them now and hands this one its datagrams.
    pub fn stop_receiving(&self) {
        self.receiving.store(false, Ordering::Relaxed);
    }

    /// A datagram the newer process read for one of this process's connections, as it came over the link:
    /// handed to the worker that holds the connection.
    pub fn deliver(&self, message: &[u8]) {
        let Some((datagram, meta)) = decode_message(message) else {
            self.dropped.increment(1);
            return;
        };
        let worker = self.codec.route(datagram).and_then(|route| {
            let worker = usize::from(route & !GENERATION);
            (route & GENERATION == self.generation && worker < self.mailboxes.len()).then_some(worker)
        });
        match worker {
            Some(worker) => self.hand_to(worker, datagram, &meta),
            None => self.dropped.increment(1),
        }
    }

    /// Worker `worker`'s socket: `inner`, plus the packets other workers hand to it. `None` when the
    /// worker's queue was taken already (each worker serves one socket).
    pub fn socket(self: &Arc<Self>, worker: usize, inner: Arc<dyn AsyncUdpSocket>) -> Option<Arc<dyn AsyncUdpSocket>> {
        let receiver = self
            .receivers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get_mut(worker)?
            .take()?;
        Some(Arc::new(HandOffSocket {
            inner,
            worker,
            group: Arc::clone(self),
            receiver: Mutex::new(receiver),
        }))
    }

    /// Where a datagram that reached worker `here`'s socket belongs.
    fn owner(&self, datagram: &[u8], here: usize) -> Owner {
        let Some(route) = self.codec.route(datagram) else {
            return Owner::Here;
        };
        if route & GENERATION != self.generation {
            let previous = self.previous.get().is_some_and(|p| p.open.load(Ordering::Relaxed));
            return if previous { Owner::Previous } else { Owner::Here };
        }
        let worker = usize::from(route & !GENERATION);
        if worker != here && worker < self.mailboxes.len() {
            Owner::Worker(worker)
        } else {
            Owner::Here
        }
    }

    /// Queues `datagram` for worker `owner`, within its queue's bound.
    fn hand_to(&self, owner: usize, datagram: &[u8], meta: &RecvMeta) {
        let Some(mailbox) = self.mailboxes.get(owner) else {
            self.dropped.increment(1);
            return;
        };
        let size = datagram.len();
        let reserved = mailbox
            .queued
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |queued| {
                (queued + size <= QUEUE_BYTES).then_some(queued + size)
            })
            .is_ok();
        if !reserved {
            self.dropped.increment(1);
            return;
        }
        let handed = Handed {
            data: Bytes::copy_from_slice(datagram),
            meta: RecvMeta {
                len: size,
                stride: size,
                ..*meta
            },
        };
        match mailbox.sender.try_send(handed) {
            Ok(()) => self.delivered.increment(1),
            Err(_) => {
                mailbox.queued.fetch_sub(size, Ordering::Relaxed);
                self.dropped.increment(1);
            }
        }
    }

    /// Sends `datagram` to the previous process; when its link is gone, the datagram is dropped and IDs of
    /// its generation are treated as unknown from then on.
    fn hand_to_previous(&self, datagram: &[u8], meta: &RecvMeta) {
        let Some(previous) = self.previous.get() else {
            self.dropped.increment(1);
            return;
        };
        match previous.link.send(&encode_message(datagram, meta)) {
            Ok(_) => self.to_previous.increment(1),
            Err(error) => {
                if error.kind() != io::ErrorKind::WouldBlock {
                    tracing::info!("the previous process is gone: its connections' datagrams get resets from now on");
                    previous.open.store(false, Ordering::Relaxed);
                }
                self.dropped.increment(1);
            }
        }
    }
}

/// A datagram on the upgrade link: a tag, the ECN bits, the source address (16 bytes of IPv6 or mapped
/// IPv4, then the port), the local address it was sent to (a family byte, 0 when unknown, then 16 bytes),
/// then the datagram.
const MESSAGE_HEAD: usize = 1 + 1 + 16 + 2 + 1 + 16;

fn encode_message(datagram: &[u8], meta: &RecvMeta) -> Vec<u8> {
    let mut message = Vec::with_capacity(MESSAGE_HEAD + datagram.len());
    message.push(TAG_DATAGRAM);
    message.push(meta.ecn.map_or(0, |ecn| ecn as u8));
    let source = match meta.addr.ip() {
        IpAddr::V4(ip) => ip.to_ipv6_mapped(),
        IpAddr::V6(ip) => ip,
    };
    message.extend_from_slice(&source.octets());
    message.extend_from_slice(&meta.addr.port().to_be_bytes());
    match meta.dst_ip {
        None => message.extend_from_slice(&[0; 17]),
        Some(IpAddr::V4(ip)) => {
            message.push(4);
            message.extend_from_slice(&ip.to_ipv6_mapped().octets());
        }
        Some(IpAddr::V6(ip)) => {
            message.push(6);
            message.extend_from_slice(&ip.octets());
        }
    }
    message.extend_from_slice(datagram);
    message
}

fn decode_message(message: &[u8]) -> Option<(&[u8], RecvMeta)> {
    if message.len() <= MESSAGE_HEAD || message[0] != TAG_DATAGRAM {
        return None;
    }
    let ip = |bytes: &[u8]| -> Option<Ipv6Addr> { Some(Ipv6Addr::from(<[u8; 16]>::try_from(bytes).ok()?)) };
    let source = ip(&message[2..18])?;
    let source = source.to_ipv4_mapped().map_or(IpAddr::V6(source), IpAddr::V4);
    let port = u16::from_be_bytes([message[18], message[19]]);
    let local = ip(&message[21..37])?;
    let dst_ip = match message[20] {
        4 => Some(IpAddr::V4(local.to_ipv4_mapped()?)),
        6 => Some(IpAddr::V6(local)),
        _ => None,
    };
    let datagram = &message[MESSAGE_HEAD..];
    let meta = RecvMeta {
        addr: SocketAddr::new(source, port),
        len: datagram.len(),
        stride: datagram.len(),
        ecn: EcnCodepoint::from_bits(message[1]),
        dst_ip,
    };
    Some((datagram, meta))
}

/// A worker's UDP socket as its quinn endpoint sees it: sends go out as they are; receives are the packets
/// other workers handed over, then what the socket read, less what belongs to other workers.
struct HandOffSocket {
    inner: Arc<dyn AsyncUdpSocket>,
    worker: usize,
    group: Arc<HandOff>,
    receiver: Mutex<mpsc::Receiver<Handed>>,
}

impl fmt::Debug for HandOffSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HandOffSocket")
            .field("worker", &self.worker)
            .finish_non_exhaustive()
    }
}

impl HandOffSocket {
    /// Moves handed-over datagrams into `bufs`; how many.
    fn take_handed(&self, cx: &mut Context, bufs: &mut [IoSliceMut<'_>], meta: &mut [RecvMeta]) -> usize {
        let mut receiver = self.receiver.lock().unwrap_or_else(PoisonError::into_inner);
        let mailbox = &self.group.mailboxes[self.worker];
        let mut count = 0;
        while count < bufs.len().min(meta.len()) {
            let handed = if count == 0 {
                match receiver.poll_recv(cx) {
                    Poll::Ready(Some(handed)) => handed,
                    Poll::Ready(None) | Poll::Pending => break,
                }
            } else {
                match receiver.try_recv() {
                    Ok(handed) => handed,
                    Err(_) => break,
                }
            };
            mailbox.queued.fetch_sub(handed.data.len(), Ordering::Relaxed);
            let buf = &mut bufs[count];
            // Datagrams are handed over whole and a buffer holds the largest one quinn reads.
            let Some(target) = buf.get_mut(..handed.data.len()) else {
                self.group.dropped.increment(1);
                continue;
            };
            target.copy_from_slice(&handed.data);
            meta[count] = handed.meta;
            count += 1;
        }
        count
    }

    /// Hands the datagrams of `buf` that belong to other workers to them, and closes the gaps they leave.
    /// Under GRO a buffer holds several datagrams of one sender at `stride` intervals, the last maybe
    /// shorter; the kept ones stay at `stride` intervals in order, so the shorter one stays last.
    fn sort(&self, buf: &mut [u8], meta: &mut RecvMeta) {
        let length = meta.len.min(buf.len());
        let stride = if meta.stride == 0 { length } else { meta.stride };
        let (mut kept, mut offset) = (0, 0);
        while offset < length {
            let end = (offset + stride).min(length);
            match self.group.owner(&buf[offset..end], self.worker) {
                Owner::Here => {
                    if kept != offset {
                        buf.copy_within(offset..end, kept);
                    }
                    kept += end - offset;
                }
                Owner::Worker(owner) => self.group.hand_to(owner, &buf[offset..end], meta),
                Owner::Previous => self.group.hand_to_previous(&buf[offset..end], meta),
            }
            offset = end;
        }
        meta.len = kept;
    }
}

impl AsyncUdpSocket for HandOffSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        Arc::clone(&self.inner).create_io_poller()
    }

    fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
        self.inner.try_send(transmit)
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        let handed = self.take_handed(cx, bufs, meta);
        if handed > 0 {
            return Poll::Ready(Ok(handed));
        }
        if !self.group.receiving.load(Ordering::Relaxed) {
            // The handed-over queue is registered to wake this endpoint; the socket is another process's now.
            return Poll::Pending;
        }
        let received = self.inner.poll_recv(cx, bufs, meta);
        if let Poll::Ready(Ok(count)) = received {
            for (buf, meta) in bufs.iter_mut().zip(meta.iter_mut()).take(count) {
                self.sort(buf, meta);
            }
        }
        received
    }

    fn local_addr(&self) -> io::Result<std::net::SocketAddr> {
        self.inner.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        self.inner.max_transmit_segments()
    }

    fn max_receive_segments(&self) -> usize {
        self.inner.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.inner.may_fragment()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn codec() -> Arc<CidCodec> {
        Arc::new(CidCodec::new(b"a secret of any length", 8).expect("a key"))
    }

    fn short_header(id: &ConnectionId) -> Vec<u8> {
        let mut packet = vec![0x40];
        packet.extend_from_slice(id);
        packet.extend_from_slice(&[0xaa; 30]);
        packet
    }

    fn long_header(kind: u8, id: &[u8]) -> Vec<u8> {
        let mut packet = vec![0xc0 | kind << 4, 0, 0, 0, 1, u8::try_from(id.len()).unwrap_or(0)];
        packet.extend_from_slice(id);
        packet.push(8);
        packet.extend_from_slice(&[0x55; 8]);
        packet.extend_from_slice(&[0xbb; 30]);
        packet
    }

    #[test]
    fn every_id_a_worker_issues_routes_back_to_it() {
        let codec = codec();
        for worker in [0, 1, 7, 1023] {
            let mut cids = WorkerCids::new(Arc::clone(&codec), worker, 0);
            for _ in 0..100 {
                let id = cids.generate_cid();
                assert_eq!(id.len(), 8);
                assert_eq!(codec.route(&short_header(&id)), Some(route_of(worker, 0)));
                assert_eq!(codec.route(&long_header(HANDSHAKE, &id)), Some(route_of(worker, 0)));
            }
        }
    }

    #[test]
    fn the_routing_bytes_look_random_without_the_key() {
        // Worker 0's IDs: were the field in the clear, their first two bytes would always be 0.
        let mut cids = WorkerCids::new(codec(), 0, 0);
        let firsts: std::collections::HashSet<[u8; 2]> = (0..200)
            .map(|_| {
                let id = cids.generate_cid();
                [id[0], id[1]]
            })
            .collect();
        assert!(
            firsts.len() > 150,
            "only {} distinct routing prefixes in 200 IDs",
            firsts.len()
        );
        // Another key reads another route from the same IDs.
        let other = CidCodec::new(b"another secret", 8).expect("a key");
        let routes: std::collections::HashSet<u16> = (0..50)
            .filter_map(|_| other.route(&short_header(&cids.generate_cid())))
            .collect();
        assert!(routes.len() > 40, "{routes:?}");
    }

    #[test]
    fn initial_and_0rtt_packets_and_short_datagrams_are_not_routed() {
        let codec = codec();
        let id = WorkerCids::new(Arc::clone(&codec), 1, 0).generate_cid();
        assert_eq!(codec.route(&long_header(0, &id)), None, "Initial");
        assert_eq!(codec.route(&long_header(1, &id)), None, "0-RTT");
        assert_eq!(
            codec.route(&long_header(HANDSHAKE, &id[..5])),
            None,
            "an ID of another length"
        );
        assert_eq!(codec.route(&[0x40, 1, 2]), None, "truncated");
        assert_eq!(codec.route(&[]), None, "empty");
        let mut other_version = long_header(HANDSHAKE, &id);
        other_version[1..5].copy_from_slice(&[0x6b, 0x33, 0x43, 0xcf]);
        assert_eq!(codec.route(&other_version), None, "QUIC version 2");
    }

    #[test]
    fn a_route_past_the_last_worker_stays_where_it_arrived() {
        let codec = codec();
        let group = HandOff::new(Arc::clone(&codec), 2, 0);
        let packet = |worker| short_header(&WorkerCids::new(Arc::clone(&codec), worker, 0).generate_cid());
        assert_eq!(group.owner(&packet(1), 0), Owner::Worker(1));
        assert_eq!(group.owner(&packet(0), 0), Owner::Here, "its own");
        assert_eq!(group.owner(&packet(5), 0), Owner::Here, "no worker 5");
    }

    #[test]
    fn a_worker_queue_holds_at_most_its_bytes_and_drops_the_rest() {
        let group = HandOff::new(codec(), 2, 0);
        let datagram = vec![0x40; 64 * 1024];
        let fits = QUEUE_BYTES / datagram.len();
        for _ in 0..fits + 8 {
            group.hand_to(1, &datagram, &RecvMeta::default());
        }
        assert_eq!(group.mailboxes[1].queued.load(Ordering::Relaxed), fits * datagram.len());
        let mut receiver = group.receivers.lock().unwrap_or_else(PoisonError::into_inner)[1]
            .take()
            .expect("worker 1's queue");
        let mut queued = 0;
        while receiver.try_recv().is_ok() {
            queued += 1;
        }
        assert_eq!(queued, fits, "the datagrams past the bound were dropped, not queued");
    }

    #[test]
    fn ids_of_the_other_generation_go_to_the_previous_process_while_it_is_there() {
        let codec = codec();
        let group = HandOff::new(Arc::clone(&codec), 2, 1);
        let old = short_header(&WorkerCids::new(Arc::clone(&codec), 1, 0).generate_cid());
        let new = short_header(&WorkerCids::new(Arc::clone(&codec), 1, 1).generate_cid());
        assert_eq!(
            group.owner(&old, 0),
            Owner::Here,
            "no previous process: unknown, reset here"
        );
        assert_eq!(group.owner(&new, 0), Owner::Worker(1));
        let (link, _other_end) = UnixDatagram::pair().expect("a socket pair");
        group.set_previous(link).expect("a non-blocking link");
        assert_eq!(group.owner(&old, 0), Owner::Previous);
        assert_eq!(group.owner(&new, 0), Owner::Worker(1));
    }

    #[test]
    fn a_link_message_carries_the_datagram_and_its_addresses() {
        for (from, to) in [
            ("192.0.2.7:4433", Some("127.0.0.1")),
            ("[2001:db8::1]:9", Some("::1")),
            ("198.51.100.1:1", None),
        ] {
            let meta = RecvMeta {
                addr: from.parse().expect("an address"),
                dst_ip: to.map(|ip| ip.parse().expect("an address")),
                ecn: Some(EcnCodepoint::Ce),
                ..RecvMeta::default()
            };
            let message = encode_message(b"a datagram", &meta);
            let (datagram, decoded) = decode_message(&message).expect("a message");
            assert_eq!(datagram, b"a datagram");
            assert_eq!(
                (decoded.addr, decoded.dst_ip, decoded.ecn),
                (meta.addr, meta.dst_ip, meta.ecn)
            );
            assert_eq!((decoded.len, decoded.stride), (10, 10));
        }
        assert!(decode_message(b"P").is_none());
        assert!(decode_message(&[b'R'; 64]).is_none());
    }
}
