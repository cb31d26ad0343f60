//! The control plane's tasks, on the main thread beside the admin listener, never on a worker: they read
//! the shared snapshot and act on backends, and the request path never waits for them.
//!
//! - `probe.rs`: active health checks, one task per probed backend, following reloads;
//! - `outlier.rs`: the once-a-second outlier sweep over every backend's traffic window;
//! - `discovery.rs`: DNS names resolved again, and the snapshot rebuilt when their addresses change;
//! - `pools.rs`: idle backend connections closed past `timeouts.pool_idle`;
//! - `watch.rs`: `--watch`, a reload when the config file, certificate or key changes;
//! - `acme/`: certificates ordered from an ACME CA, stored, served and renewed.

pub mod acme;
pub mod discovery;
pub mod outlier;
pub mod pools;
pub mod probe;
pub mod watch;
