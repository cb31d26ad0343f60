//! Binary upgrades: the listening sockets a running process hands to the next one, and the link between
//! the two.
//!
//! The running process starts the new binary with its listening sockets as inherited file descriptors
//! (3 and up, named in `LISTEN_FDNAMES` and counted in `LISTEN_FDS`, as systemd's socket activation passes
//! them) plus one end of a Unix datagram socket pair: the link. Over the link the old process first sends its
//! QUIC key (so the new one issues resets, Retry tokens and connection IDs under the same key), the new
//! process answers `ready` once it serves, and from then on the new process sends the QUIC datagrams it reads
//! for the old process's connections. Sockets are the same open files in both processes: nothing is closed
//! or rebound, so no connection attempt meets a closed port.

use std::ffi::OsString;
use std::io;
use std::net::{TcpListener, UdpSocket};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use tokio::process::{Child, Command};

use anyhow::Context as _;
use command_fds::{CommandFdExt as _, FdMapping};

/// The environment variable that marks a process started by an upgrade, holding its generation (0 or 1).
pub const GENERATION_ENV: &str = "QUIC_PROXY_UPGRADE_GENERATION";

/// The first inherited descriptor, as in systemd's protocol.
const FIRST_FD: i32 = 3;

/// The longest link message: a tag and addresses, then a QUIC datagram of up to 64 KiB.
pub const LINK_MESSAGE: usize = 64 * 1024 + 64;

/// Link messages start with a tag: the old process's QUIC key (old to new, first).
pub const TAG_KEY: u8 = b'K';
/// The new process serves (new to old).
pub const TAG_READY: u8 = b'R';
/// A QUIC datagram for one of the old process's connections (new to old).
pub const TAG_DATAGRAM: u8 = b'D';

/// What each inherited descriptor is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// One worker's plain HTTP/1.1 listener.
    Fallback,
    /// One worker's HTTPS listener.
    Https,
    /// One worker's QUIC socket.
    Quic,
    /// The admin listener.
    Admin,
    /// The link to the previous process.
    Link,
}

impl Role {
    fn name(self) -> &'static str {
        match self {
            Self::Fallback => "fallback",
            Self::Https => "https",
            Self::Quic => "quic",
            Self::Admin => "admin",
            Self::Link => "upgrade-link",
        }
    }

    fn parse(name: &str) -> Option<Self> {
        [Self::Fallback, Self::Https, Self::Quic, Self::Admin, Self::Link]
            .into_iter()
            .find(|role| role.name() == name)
    }
}

/// The listening sockets of a running proxy, as another process would take them over.
#[derive(Debug, Default)]
pub struct Listeners {
    pub fallback: Vec<TcpListener>,
    pub https: Vec<TcpListener>,
    pub quic: Vec<UdpSocket>,
    pub admin: Option<TcpListener>,
}

impl Listeners {
    /// Copies of every socket (the same open sockets, new descriptors), with their roles.
    pub fn duplicate(&self) -> io::Result<Vec<(Role, OwnedFd)>> {
        let mut fds = Vec::new();
        for listener in &self.fallback {
            fds.push((Role::Fallback, OwnedFd::from(listener.try_clone()?)));
        }
        for listener in &self.https {
            fds.push((Role::Https, OwnedFd::from(listener.try_clone()?)));
        }
        for socket in &self.quic {
            fds.push((Role::Quic, OwnedFd::from(socket.try_clone()?)));
        }
        if let Some(listener) = &self.admin {
            fds.push((Role::Admin, OwnedFd::from(listener.try_clone()?)));
        }
        Ok(fds)
    }
}

/// What a process started by an upgrade received from the one before it.
#[derive(Debug)]
pub struct Inherited {
    pub listeners: Listeners,
    /// The link to the previous process (blocking; the caller sets what it needs).
    pub link: UnixDatagram,
    /// This process's generation: the previous one's, flipped.
    pub generation: u8,
}

impl Inherited {
    /// The sockets passed to this process, when an upgrade started it. Call before any thread starts: the
    /// inherited descriptors are claimed (and the systemd variables cleared) here.
    pub fn from_env() -> anyhow::Result<Option<Self>> {
        let Some(generation) = std::env::var_os(GENERATION_ENV) else {
            return Ok(None);
        };
        let generation = match generation.to_str() {
            Some("0") => 0,
            Some("1") => 1,
            _ => anyhow::bail!("{GENERATION_ENV} must be 0 or 1"),
        };
        let names = std::env::var("LISTEN_FDNAMES").context("an upgrade passes LISTEN_FDNAMES")?;
        let mut fds = listenfd::ListenFd::from_env();
        let mut listeners = Listeners::default();
        let mut link = None;
        for (index, name) in names.split(':').enumerate() {
            let role = Role::parse(name).with_context(|| format!("inherited descriptor {index} is named {name:?}"))?;
            let missing = || format!("inherited descriptor {index} ({name}) is missing");
            match role {
                Role::Fallback => listeners
                    .fallback
                    .push(fds.take_tcp_listener(index)?.with_context(missing)?),
                Role::Https => listeners
                    .https
                    .push(fds.take_tcp_listener(index)?.with_context(missing)?),
                Role::Quic => listeners.quic.push(fds.take_udp_socket(index)?.with_context(missing)?),
                Role::Admin => listeners.admin = Some(fds.take_tcp_listener(index)?.with_context(missing)?),
                Role::Link => link = Some(fds.take_unix_datagram(index)?.with_context(missing)?),
            }
        }
        Ok(Some(Self {
            listeners,
            link: link.context("an upgrade passes the link to the previous process")?,
            generation,
        }))
    }
}

/// The binary that was started, and its arguments, for starting it again: read at start-up, because once
/// the file is replaced the running process's own path names a deleted file.
#[derive(Debug, Clone)]
pub struct Program {
    pub path: PathBuf,
    pub args: Vec<OsString>,
}

impl Program {
    pub fn current() -> io::Result<Self> {
        Ok(Self {
            path: std::env::current_exe()?,
            args: std::env::args_os().skip(1).collect(),
        })
    }
}

/// Starts `program` as the next generation with `sockets` and the other end of the returned link
/// (non-blocking). Call on a tokio runtime, which reaps the child.
pub fn spawn_next(
    program: &Program,
    sockets: Vec<(Role, OwnedFd)>,
    generation: u8,
) -> anyhow::Result<(Child, UnixDatagram)> {
    let (ours, theirs) = UnixDatagram::pair().context("cannot create the upgrade link")?;
    let mut names = Vec::with_capacity(sockets.len() + 1);
    let mut mappings = Vec::with_capacity(sockets.len() + 1);
    for (child_fd, (role, fd)) in (FIRST_FD..).zip(sockets.into_iter().chain([(Role::Link, OwnedFd::from(theirs))])) {
        names.push(role.name());
        mappings.push(FdMapping {
            parent_fd: fd,
            child_fd,
        });
    }
    let mut command = Command::new(&program.path);
    command
        .args(&program.args)
        .env("LISTEN_FDS", mappings.len().to_string())
        .env("LISTEN_FDNAMES", names.join(":"))
        .env_remove("LISTEN_PID")
        .env_remove("LISTEN_FDS_FIRST_FD")
        .env(GENERATION_ENV, (generation ^ 1).to_string());
    command
        .fd_mappings(mappings)
        .map_err(|_| anyhow::anyhow!("two inherited sockets were given one descriptor"))?;
    let child = command
        .spawn()
        .with_context(|| format!("cannot start {}", program.path.display()))?;
    ours.set_nonblocking(true).context("cannot set up the upgrade link")?;
    Ok((child, ours))
}
