//! The integration tests: the real proxy on OS-assigned loopback ports, in front of real backends, spoken to
//! by real clients (hyper for HTTP/1.1 and HTTP/2, quinn and h3 for HTTP/3, raw sockets for what no
//! well-behaved client sends), and the real binary as a child process where a test needs signals, exit
//! codes or a second instance. One crate, one binary: `support` is shared by every module.

mod support;

mod cert_reload;
mod cli;
mod content_length;
mod h3_early_data;
mod h3_proxy;
mod health;
mod health_failover;
mod http1_framing;
mod http1_lifecycle;
mod http1_proxy;
mod instances;
mod migration;
mod reload;
mod resource_exhaustion;
mod route_actions;
mod traffic_policy;
mod upgrade;
mod upload_aborts;
mod upstream_protocols;
