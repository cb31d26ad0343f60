//! Live reconfiguration: a new configuration is validated completely, then swapped in atomically for new
//! requests. Backends that keep their identity keep their state; open connections and requests in flight
//! are never touched. Settings that need new sockets are reported by name and keep their running values.

use std::collections::BTreeSet;
use std::fmt;
use std::sync::Arc;

use crate::config::{Config, ConfigError};
use crate::discovery::Resolved;
use crate::metrics;
use crate::routing::Snapshot;
use crate::tls::TlsError;

use super::Shared;

/// Why a reload changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("{0}")]
    Invalid(#[from] ConfigError),
    #[error("{file}: {error}")]
    Certificate { file: String, error: TlsError },
}

/// What a reload did.
#[derive(Debug, Clone)]
pub struct ReloadReport {
    pub generation: u64,
    pub digest: String,
    /// One entry per kind of change: backends added/removed/changed, routes, settings.
    pub changes: Vec<String>,
    /// Settings that changed in the file but need a restart (new sockets) to apply.
    pub restart_required: Vec<String>,
}

impl fmt::Display for ReloadReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "configuration {} (generation {}): ", self.digest, self.generation)?;
        if self.changes.is_empty() {
            f.write_str("no changes")?;
        } else {
            f.write_str(&self.changes.join("; "))?;
        }
        for key in &self.restart_required {
            write!(f, "; {key} changed: restart to apply")?;
        }
        Ok(())
    }
}

impl Shared {
    /// Reads the running configuration's file again and applies it (SIGHUP, the admin API, `--watch`).
    pub async fn reload_from_file(&self) -> Result<ReloadReport, ReloadError> {
        let path = self.snapshot().config.path.clone();
        let result = match Config::load(&path) {
            Ok(config) => self.resolve_and_apply(config).await,
            Err(error) => Err(ReloadError::from(error)),
        };
        if result.is_err() {
            metrics::record_reload(false);
        }
        result
    }

    /// Validates what only the running process can check (certificates), then swaps `config` in.
    pub async fn reload(&self, config: Config) -> Result<ReloadReport, ReloadError> {
        let result = self.resolve_and_apply(config).await;
        if result.is_err() {
            metrics::record_reload(false);
        }
        result
    }

    /// Resolves the names `config` adds (see [`crate::discovery::resolve_new`]), then applies it.
    async fn resolve_and_apply(&self, config: Config) -> Result<ReloadReport, ReloadError> {
        let resolved = crate::discovery::resolve_new(&config, &self.resolved()).await;
        self.apply(config, resolved)
    }

    fn apply(&self, config: Config, resolved: Resolved) -> Result<ReloadReport, ReloadError> {
        let _one_at_a_time = self.lock_reloads();
        let previous = self.snapshot();
        // Against what the sockets were bound for: a change stays reported until a restart applies it.
        let restart_required = restart_required(self.bound(), &config);
        let file = config.path.display().to_string();
        let tls = config.server.tls.clone();
        let level = config.telemetry.logging.level.clone();
        // Everything that can fail comes before anything changes: the snapshot (backends' TLS files), then
        // the certificate, which is read even when its paths are unchanged (the files may have been renewed).
        let next = Arc::new(previous.next(config, &resolved, self.events())?);
        let mut certificate_replaced = false;
        if let (Some(certs), Some(tls)) = (self.certs(), &tls) {
            certificate_replaced = certs
                .reload(tls)
                .map_err(|error| ReloadError::Certificate { file, error })?;
        }
        next.settle();
        let mut changes = changes(&previous, &next);
        if certificate_replaced {
            changes.push("certificate replaced".to_owned());
        }
        let report = ReloadReport {
            generation: next.generation,
            digest: next.config.digest.clone(),
            changes,
            restart_required,
        };
        self.resolved.store(Arc::new(resolved));
        self.install(next);
        crate::logging::set_level(&level);
        metrics::record_reload(true);
        self.events().record("reload", None, None, report.to_string());
        Ok(report)
    }
}

impl Shared {
    /// Installs a snapshot of the running configuration built with new endpoints from DNS discovery.
    pub fn rediscover(&self, resolved: Resolved) -> Result<(), ConfigError> {
        let _one_at_a_time = self.lock_reloads();
        let previous = self.snapshot();
        let next = Arc::new(previous.next(Config::clone(&previous.config), &resolved, self.events())?);
        self.resolved.store(Arc::new(resolved));
        next.settle();
        let changes = changes(&previous, &next);
        let summary = if changes.is_empty() {
            "addresses re-resolved, no endpoint changed".to_owned()
        } else {
            changes.join("; ")
        };
        tracing::info!("DNS discovery: {summary}");
        self.events().record("discovery", None, None, summary);
        self.install(next);
        Ok(())
    }
}

/// Settings whose new value needs new sockets or a new process.
fn restart_required(old: &Config, new: &Config) -> Vec<String> {
    let mut keys = Vec::new();
    let mut check = |key: &str, changed: bool| {
        if changed {
            keys.push(key.to_owned());
        }
    };
    check("server.address", old.server.address != new.server.address);
    check(
        "server.fallback_address",
        old.server.fallback_address != new.server.fallback_address,
    );
    check("server.tls", old.server.tls.is_some() != new.server.tls.is_some());
    let acme = |config: &Config| config.server.tls.as_ref().and_then(|tls| tls.acme.clone());
    check("server.tls.acme", acme(old) != acme(new));
    check("server.workers", old.server.workers != new.server.workers);
    check("server.reuse_port", old.server.reuse_port != new.server.reuse_port);
    check(
        "quic.socket_receive_buffer",
        old.quic.socket_receive_buffer != new.quic.socket_receive_buffer,
    );
    check(
        "quic.socket_send_buffer",
        old.quic.socket_send_buffer != new.quic.socket_send_buffer,
    );
    check("quic.stateless_reset_key", old.quic_secret != new.quic_secret);
    check(
        "quic.connection_id_length",
        old.quic.connection_id_length != new.quic.connection_id_length,
    );
    check(
        "telemetry.metrics.enabled",
        old.telemetry.metrics.enabled != new.telemetry.metrics.enabled,
    );
    check(
        "telemetry.metrics.address",
        old.telemetry.metrics.address != new.telemetry.metrics.address,
    );
    check(
        "telemetry.logging.format",
        old.telemetry.logging.format != new.telemetry.logging.format,
    );
    keys
}

/// A summary of what differs between two snapshots, for the reload's log line and the API's answer.
fn changes(old: &Snapshot, new: &Snapshot) -> Vec<String> {
    let names = |snapshot: &Snapshot| -> BTreeSet<String> {
        snapshot
            .backends()
            .map(|b| format!("{}/{}", b.upstream, b.name))
            .collect()
    };
    let (before, after) = (names(old), names(new));
    let mut changes = Vec::new();
    let list = |items: Vec<&String>| items.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ");
    let added: Vec<&String> = after.difference(&before).collect();
    if !added.is_empty() {
        changes.push(format!("backends added: {}", list(added)));
    }
    let removed: Vec<&String> = before.difference(&after).collect();
    if !removed.is_empty() {
        changes.push(format!("backends removed: {}", list(removed)));
    }
    let changed: Vec<String> = new
        .upstreams()
        .iter()
        .filter_map(|upstream| {
            let was = old.config.upstreams.iter().find(|u| u.name == upstream.name)?;
            let now = new.config.upstreams.iter().find(|u| u.name == upstream.name)?;
            let differs = now.backends.iter().filter(|b| {
                was.backends
                    .iter()
                    .find(|w| w.name == b.name)
                    .is_some_and(|w| format!("{w:?}") != format!("{b:?}"))
            });
            let names: Vec<String> = differs.map(|b| format!("{}/{}", upstream.name, b.name)).collect();
            (!names.is_empty()).then(|| names.join(", "))
        })
        .collect();
    if !changed.is_empty() {
        changes.push(format!("backends changed: {}", changed.join(", ")));
    }
    let policies: Vec<&str> = new
        .config
        .upstreams
        .iter()
        .filter(|now| {
            old.config.upstreams.iter().any(|was| {
                was.name == now.name && (was.balancer != now.balancer || was.health_check != now.health_check)
            })
        })
        .map(|u| u.name.as_str())
        .collect();
    if !policies.is_empty() {
        changes.push(format!("upstream settings changed: {}", policies.join(", ")));
    }
    if format!("{:?}", old.config.routes) != format!("{:?}", new.config.routes)
        || old.config.default_upstream != new.config.default_upstream
    {
        changes.push(format!(
            "routes: {} -> {}",
            old.config.routes.len(),
            new.config.routes.len()
        ));
    }
    let (o, n) = (&old.config, &new.config);
    let sections = [
        ("server", format!("{:?}", o.server) != format!("{:?}", n.server)),
        ("quic", format!("{:?}", o.quic) != format!("{:?}", n.quic)),
        ("timeouts", format!("{:?}", o.timeouts) != format!("{:?}", n.timeouts)),
        ("admin", o.admin != n.admin),
        (
            "telemetry",
            format!("{:?}", o.telemetry) != format!("{:?}", n.telemetry),
        ),
    ];
    let settings: Vec<&str> = sections.iter().filter(|(_, c)| *c).map(|(s, _)| *s).collect();
    if !settings.is_empty() {
        changes.push(format!("settings changed: {}", settings.join(", ")));
    }
    changes
}
