//! The service manager's readiness protocol (sd_notify): a datagram to `$NOTIFY_SOCKET` saying the proxy
//! serves, or, after a binary upgrade, which process is now the main one. Without the variable (not run by
//! systemd with `Type=notify`) nothing is sent.

use std::os::linux::net::SocketAddrExt as _;
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::net::{SocketAddr, UnixDatagram};

/// Sends `state` (such as `READY=1`) to the service manager, if one listens; failures are logged.
pub fn notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET").filter(|p| !p.is_empty()) else {
        return;
    };
    let bytes = path.as_bytes();
    let sent = (|| {
        let address = match bytes.strip_prefix(b"@") {
            Some(name) => SocketAddr::from_abstract_name(name)?,
            None => SocketAddr::from_pathname(&path)?,
        };
        UnixDatagram::unbound()?.send_to_addr(state.as_bytes(), &address)
    })();
    if let Err(error) = sent {
        tracing::warn!("cannot notify the service manager ({state}): {error}");
    }
}
