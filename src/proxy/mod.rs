//! The routing core, shared by every listener: one request in, one response out.
//!
//! - `core.rs`: the outer layer (access log, metrics, the server span, errors turned into answers);
//! - `forward.rs`: the inner layer (route, rewrite, forward with retries, relay the response);
//! - `checks.rs`: what is refused before routing, the same for every protocol;
//! - `headers.rs`: hop-by-hop removal and the forwarding fields;
//! - `retry.rs`: backoff, idempotency, the body kept for a retry;
//! - `answer.rs`: the proxy's own answers, plain text or gRPC;
//! - `metrics.rs`: the request path's metric handles.

mod answer;
mod checks;
mod core;
mod forward;
mod headers;
mod metrics;
mod plain;
mod retry;
mod websocket;

pub use answer::error_response;
pub use checks::{length_refusal, ConnectProtocol, Refused, WEBSOCKET};
pub use core::{ClientInfo, Core};
