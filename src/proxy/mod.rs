//! The protocol-independent proxy: routing, upstream pools, header rewriting and forwarding.

mod forward;
mod handler;
mod headers;
mod router;
mod upstream;

pub use handler::{error_response, protocol_label, ClientInfo, Core, Refused};
pub use router::Router;
pub use upstream::Upstream;
