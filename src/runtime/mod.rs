//! The runtime layer every listener sits on: worker threads, sockets and accept loops, the shared
//! configuration snapshot that a reload swaps atomically, readiness, and shutdown. Listeners, the admin
//! listener and the health prober depend on it; it depends on none of them.

mod activity;
mod clients;
pub mod inherit;
mod net;
pub mod notify;
mod reload;
mod shutdown;
mod state;
pub mod workers;

pub use activity::{Activity, Watched};
pub use clients::ClientSlot;
pub use net::{accept_loop, bind_tcp, bind_tcp_group, bind_tcp_std, bind_udp, is_address_in_use, Counted};
pub use reload::{ReloadError, ReloadReport};
pub use shutdown::Shutdown;
pub use state::{NotReady, Readiness, Shared, TcpSlot, UpgradeRequest};
