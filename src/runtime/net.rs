//! Sockets: TCP and UDP listeners (optionally in an SO_REUSEPORT group, one socket per worker) and the
//! accept loop every TCP listener runs.

use std::future::Future;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::{TcpListener, TcpStream};

use super::Shutdown;

/// A TCP listener; an unspecified IPv6 address (`:80`) takes IPv4 too, or falls back to IPv4 alone.
pub fn bind_tcp(address: SocketAddr) -> io::Result<TcpListener> {
    TcpListener::from_std(bind_tcp_std(address, false)?)
}

/// A non-blocking std TCP listener, for handing to the runtime that will serve it. With `reuse_port`, more
/// sockets can join the same address (one per worker) and the kernel spreads connections over them.
pub fn bind_tcp_std(address: SocketAddr, reuse_port: bool) -> io::Result<std::net::TcpListener> {
    match tcp_socket(address, reuse_port) {
        Err(e) if is_dual_stack_wildcard(address) && e.kind() != io::ErrorKind::AddrInUse => tcp_socket(
            SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), address.port()),
            reuse_port,
        ),
        other => other,
    }
}

/// `count` TCP listeners on one address in an SO_REUSEPORT group (one plain listener when `count` is 1,
/// unless `shared`). With port 0 the first socket takes a port the kernel knows to be free, and the others
/// join it. Unless `shared` (other processes may join on purpose), an address some other socket already
/// holds is refused, as it would be without SO_REUSEPORT: a second instance started by mistake fails to start
/// instead of silently taking half the connections.
pub fn bind_tcp_group(address: SocketAddr, count: usize, shared: bool) -> io::Result<Vec<std::net::TcpListener>> {
    let reuse_port = count > 1 || shared;
    if reuse_port && !shared && address.port() != 0 {
        drop(bind_tcp_std(address, false)?);
    }
    let first = bind_tcp_std(address, reuse_port)?;
    let bound = first.local_addr()?;
    let mut group = vec![first];
    for _ in 1..count {
        group.push(tcp_socket(bound, true)?);
    }
    Ok(group)
}

fn tcp_socket(address: SocketAddr, reuse_port: bool) -> io::Result<std::net::TcpListener> {
    let socket = new_socket(address, Type::STREAM, Protocol::TCP, reuse_port)?;
    socket.set_reuse_address(true)?;
    socket.bind(&address.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

/// A non-blocking UDP socket, with the same dual-stack fallback as TCP. With `reuse_port` and not `shared`,
/// an address another socket already holds is refused (see [`bind_tcp_group`]).
pub fn bind_udp(address: SocketAddr, reuse_port: bool, shared: bool) -> io::Result<Socket> {
    if reuse_port && !shared && address.port() != 0 {
        drop(bind_udp(address, false, false)?);
    }
    let bind = |address: SocketAddr| {
        let socket = new_socket(address, Type::DGRAM, Protocol::UDP, reuse_port)?;
        socket.bind(&address.into())?;
        Ok::<_, io::Error>(socket)
    };
    match bind(address) {
        Err(e) if is_dual_stack_wildcard(address) && e.kind() != io::ErrorKind::AddrInUse => {
            bind(SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), address.port()))
        }
        other => other,
    }
}

fn is_dual_stack_wildcard(address: SocketAddr) -> bool {
    address.ip().is_unspecified() && address.is_ipv6()
}

fn new_socket(address: SocketAddr, kind: Type, protocol: Protocol, reuse_port: bool) -> io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(address), kind, Some(protocol))?;
    if address.is_ipv6() {
        socket.set_only_v6(!address.ip().is_unspecified())?;
    }
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    socket.set_nonblocking(true)?;
    Ok(socket)
}

/// True when `error` (or one of its causes) says the address is already in use.
pub fn is_address_in_use(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause
            .downcast_ref::<io::Error>()
            .is_some_and(|e| e.kind() == io::ErrorKind::AddrInUse)
    })
}

/// Accepts connections until shutdown and hands each to `serve` as a tracked task.
pub async fn accept_loop<F, Fut>(listener: TcpListener, shutdown: Shutdown, serve: F)
where
    F: Fn(TcpStream, SocketAddr) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let accept_errors = crate::logging::RateLimit::default();
    loop {
        let accepted = tokio::select! {
            () = shutdown.begun() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                let peer = SocketAddr::new(peer.ip().to_canonical(), peer.port());
                if let Err(error) = stream.set_nodelay(true) {
                    tracing::debug!(%peer, "cannot set TCP_NODELAY: {error}");
                }
                shutdown.spawn(serve(stream, peer));
            }
            Err(error) => {
                // Out of file descriptors or similar: pause instead of spinning on the same error, and say
                // so at most once a second.
                if accept_errors.allow() {
                    tracing::warn!("accept failed: {error}");
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// One unit of a shared count (open connections, handshakes in progress), given back on drop.
#[derive(Debug)]
pub struct Counted(Arc<AtomicUsize>);

impl Counted {
    /// Counts one more, whatever the count.
    pub fn new(counter: &Arc<AtomicUsize>) -> Self {
        counter.fetch_add(1, Ordering::Relaxed);
        Self(Arc::clone(counter))
    }

    /// Counts one more unless the count is already at `limit`.
    pub fn within(counter: &Arc<AtomicUsize>, limit: usize) -> Option<Self> {
        counter
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| (n < limit).then_some(n + 1))
            .ok()
            .map(|_| Self(Arc::clone(counter)))
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}
