//! quic-proxy: a QUIC/HTTP-3-first edge reverse proxy.
//!
//! Every listener turns its protocol into `http::Request<Body>` and hands it to one [`proxy::Core`],
//! which routes by host and path, balances over an upstream pool and forwards to a backend.
#![forbid(unsafe_code)]

pub mod admin;
pub mod app;
pub mod balancer;
pub mod body;
pub mod config;
pub mod control;
pub mod demo_backend;
pub mod discovery;
pub mod error;
pub mod events;
pub mod health;
pub mod logging;
pub mod metrics;
pub mod policy;
pub mod protocol;
pub mod proxy;
pub mod routing;
pub mod runtime;
pub mod server;
pub mod tls;
pub mod trace;
pub mod upstream;
pub mod wire;

pub use body::Body;
pub use config::Config;
