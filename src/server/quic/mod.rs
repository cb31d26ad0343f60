//! The QUIC listener: quinn endpoints on UDP, HTTP/3 via h3, every request handed to the shared core.
//!
//! Lifecycle of a connection: `Incoming` (maybe answered with Retry, or refused over the connection
//! limit) -> handshake (0-RTT allowed only when configured) -> h3 connection -> one task per request
//! stream -> GOAWAY on shutdown, open requests finish, the connection closes.
//!
//! A request stream is split: the receive half feeds a bounded channel that is the request body the
//! core forwards; the send half writes the core's response. The receive half is always read to its end,
//! or stopped, so clients never see a reset for a request the proxy answered.
//!
//! - `endpoint.rs`: the endpoints of every worker, their shared identity, Retry and the connection limit;
//! - `handoff.rs`: connection IDs that name their worker, and packets handed to it from the others' sockets;
//! - `connection.rs`: one connection's handshake, its request tasks and its shutdown;
//! - `request.rs`: one request stream bridged to the core (request body in, response out);
//! - `transport.rs`: h3's QUIC traits over quinn, with reads that cannot panic;
//! - `fields.rs`: the checks on each request's encoded field section that h3 does not make.

mod connection;
mod endpoint;
mod fields;
mod handoff;
mod request;
mod transport;

pub use endpoint::QuicGroup;
