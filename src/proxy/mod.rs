//! The protocol-independent proxy: routing, upstream pools, header rewriting and forwarding.

mod handler;
mod headers;

pub use handler::{error_response, protocol_label, ClientInfo, Core, Refused};
