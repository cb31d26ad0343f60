//! The admin API's JSON documents: overall health, backends, the console's state, drain, reload, and the
//! running configuration with its secrets redacted.

use std::time::{Duration, SystemTime};

use http::StatusCode;
use serde_json::{json, Value};

use crate::balancer::Backend;
use crate::health::Source;
use crate::runtime::{NotReady, Shared};

/// Seconds of traffic the console's rates and quantiles cover.
const RECENT_SECONDS: u64 = 5;

/// Overall status: healthy when every backend is, degraded when every upstream still has one, else unhealthy.
pub fn health(shared: &Shared) -> (StatusCode, Value) {
    let snapshot = shared.snapshot();
    let mut summary = serde_json::Map::new();
    let (mut healthy_total, mut backends_total, mut any_empty) = (0, 0, false);
    for upstream in snapshot.upstreams() {
        let (healthy, total) = (upstream.usable_count(), upstream.backends.len());
        healthy_total += healthy;
        backends_total += total;
        any_empty |= healthy == 0;
        summary.insert(
            upstream.name.clone(),
            json!({ "status": status_word(healthy, total), "healthy_backends": healthy, "total_backends": total }),
        );
    }
    let status = if any_empty {
        "unhealthy"
    } else {
        status_word(healthy_total, backends_total)
    };
    let body = json!({
        "status": status,
        "healthy_backends": healthy_total,
        "total_backends": backends_total,
        "timestamp": timestamp(SystemTime::now()),
        "upstreams": summary,
    });
    let code = if status == "unhealthy" {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    (code, body)
}

fn status_word(healthy: usize, total: usize) -> &'static str {
    match healthy {
        0 => "unhealthy",
        n if n == total => "healthy",
        _ => "degraded",
    }
}

/// Every backend, flat: `GET /api/backends`.
pub fn backends(shared: &Shared) -> Value {
    let snapshot = shared.snapshot();
    let list: Vec<Value> = snapshot.backends().map(|b| backend(b, false)).collect();
    json!({ "backends": list })
}

/// Everything the console shows: `GET /api/state`.
pub fn state(shared: &Shared) -> Value {
    let snapshot = shared.snapshot();
    let upstreams: Vec<Value> = snapshot
        .upstreams()
        .iter()
        .map(|upstream| {
            json!({
                "name": upstream.name,
                "algorithm": upstream.policy.algorithm.to_string(),
                "when_all_unhealthy": match upstream.policy.when_all_unhealthy {
                    crate::config::AllUnhealthy::FailOpen => "fail_open",
                    crate::config::AllUnhealthy::FailClosed => "fail_closed",
                },
                "healthy_backends": upstream.usable_count(),
                "total_backends": upstream.backends.len(),
                "backends": upstream.backends.iter().map(|b| backend(b, true)).collect::<Vec<_>>(),
            })
        })
        .collect();
    let connections: serde_json::Map<String, Value> = shared
        .connections_open()
        .into_iter()
        .map(|(protocol, open)| (protocol.label().to_owned(), json!(open)))
        .collect();
    let events: Vec<Value> = shared
        .events()
        .recent()
        .into_iter()
        .map(|event| {
            json!({
                "at": timestamp(event.at),
                "kind": event.kind,
                "upstream": event.upstream,
                "backend": event.backend,
                "message": event.message,
            })
        })
        .collect();
    let not_ready = shared.readiness().check().err().map(|reason| match reason {
        NotReady::Starting => "starting",
        NotReady::Draining => "draining",
        NotReady::FirstHealthChecks => "first health checks",
    });
    let routes: Vec<Value> = snapshot.router().routes().map(route).collect();
    let (tcp_clients, quic_clients) = shared.clients_connected();
    json!({
        "version": env!("CARGO_PKG_VERSION"),
        "pid": std::process::id(),
        "generation": snapshot.generation,
        "digest": snapshot.config.digest,
        "started_at": timestamp(shared.started()),
        "uptime_seconds": shared.started().elapsed().unwrap_or_default().as_secs_f64(),
        "ready": not_ready.is_none(),
        "not_ready_reason": not_ready,
        "connections": connections,
        "clients": {"tcp": tcp_clients, "quic": quic_clients},
        "compressing": shared.compression().open(),
        "upstreams": upstreams,
        "routes": routes,
        "events": events,
        "certificates": certificates(shared),
        "acme": acme(shared),
    })
}

/// Every certificate the TLS listeners can serve.
fn certificates(shared: &Shared) -> Vec<Value> {
    let Some(certs) = shared.certs() else {
        return Vec::new();
    };
    certs
        .served()
        .iter()
        .map(|served| {
            json!({
                "names": served.names,
                "source": served.source.as_str(),
                "not_before": served.not_before,
                "not_after": served.not_after,
                "serial": served.serial,
                "file": served.file.as_ref().map(|path| path.display().to_string()),
            })
        })
        .collect()
}

/// The ACME CA and how each name is doing, when ACME is configured.
fn acme(shared: &Shared) -> Value {
    let Some(certs) = shared.certs() else {
        return Value::Null;
    };
    // The ACME client runs with the settings the process started with.
    let Some(acme) = shared.bound().server.tls.as_ref().and_then(|tls| tls.acme.as_ref()) else {
        return Value::Null;
    };
    json!({
        "directory": acme.directory,
        "names": certs.acme_status(),
    })
}

/// One route: what it matches, where it goes, its actions and what they did in this configuration.
fn route(route: &crate::routing::Route) -> Value {
    let policy = &route.policy;
    let mut counts = serde_json::Map::new();
    for (action, result, count) in policy.counts() {
        let entry = counts.entry(action).or_insert_with(|| json!({}));
        entry[result] = json!(count);
    }
    let limit = policy.limiter().map(|limiter| {
        let config = limiter.config();
        json!({
            "requests_per_second": config.requests_per_second,
            "burst": config.burst,
            "keys": limiter.keys(),
            "evicted": limiter.evicted(),
        })
    });
    json!({
        "route": &*policy.label,
        "target": route.target.describe(),
        "actions": policy.actions().names(),
        "rate_limit": limit,
        "counts": counts,
    })
}

/// One backend's state; with `traffic`, its recent rates and latency quantiles too.
fn backend(backend: &Backend, traffic: bool) -> Value {
    let report = backend.health.report();
    let (state, reason) = match (&report.down, backend.is_drained()) {
        (_, true) => ("draining", None),
        (Some((Source::Probe, why)), false) => ("unhealthy", Some(why.clone())),
        (Some((_, why)), false) => ("ejected", Some(why.clone())),
        (None, false) if !report.healthy => ("unhealthy", None),
        (None, false) if backend.circuit_open() => (
            "circuit_open",
            Some("at a circuit-breaker limit: new requests answered 503".to_owned()),
        ),
        (None, false) if backend.in_slow_start() => ("slow_start", None),
        (None, false) => ("healthy", None),
    };
    let mut value = json!({
        "upstream": backend.upstream,
        "name": backend.name,
        "url": format!("{}://{}", backend.scheme, backend.authority),
        "state": state,
        "state_reason": reason,
        "consecutive_successes": report.consecutive_successes,
        "consecutive_failures": report.consecutive_failures,
        "last_check": report.last_check.map(timestamp),
        "last_latency_ms": report.last_latency.map(milliseconds),
        "last_error": report.last_error,
        "in_flight": backend.in_flight(),
        "weight": backend.weight(),
        "effective_weight": backend.effective_weight() as f64 / crate::balancer::WEIGHT_SCALE as f64,
        "drained": backend.is_drained(),
        "ejected_by": report.down.as_ref().filter(|(source, _)| source.is_traffic()).map(|(source, _)| source.reason()),
        "circuit_open": backend.circuit_open(),
        "connections": backend.transport.limits().open(),
        "pending": backend.transport.limits().pending(),
    });
    if traffic {
        let recent = backend.window.counts(RECENT_SECONDS);
        if let Some(fields) = value.as_object_mut() {
            fields.insert("requests_per_second".into(), json!(recent.rate()));
            fields.insert("error_ratio".into(), json!(recent.failure_ratio()));
            fields.insert("p50_ms".into(), json!(recent.quantile(0.5).map(milliseconds)));
            fields.insert("p99_ms".into(), json!(recent.quantile(0.99).map(milliseconds)));
        }
    }
    value
}

/// Takes `name` of `upstream` out of rotation (or puts it back).
pub fn drain(shared: &Shared, upstream: &str, name: &str, drained: bool) -> (StatusCode, Value) {
    let snapshot = shared.snapshot();
    let Some(backend) = snapshot.backend(upstream, name) else {
        return (StatusCode::NOT_FOUND, json!({ "error": "no such upstream/backend" }));
    };
    let was = backend.set_drained(drained);
    if was != drained {
        let what = if drained { "drained" } else { "undrained" };
        tracing::info!(
            upstream,
            backend = name,
            in_flight = backend.in_flight(),
            "backend {what}"
        );
        shared.events().record(
            "drain",
            Some(upstream),
            Some(name),
            match backend.in_flight() {
                1 => format!("{what} (1 request in flight)"),
                n => format!("{what} ({n} requests in flight)"),
            },
        );
    }
    (
        StatusCode::OK,
        json!({ "upstream": upstream, "name": name, "drained": drained, "in_flight": backend.in_flight() }),
    )
}

/// Reads the configuration file again and applies it: 200 with what changed, or 400 with why nothing did.
pub async fn reload(shared: &Shared) -> (StatusCode, Value) {
    match shared.reload_from_file().await {
        Ok(report) => {
            tracing::info!("admin API: {report}");
            let body = json!({
                "generation": report.generation,
                "digest": report.digest,
                "changes": report.changes,
                "restart_required": report.restart_required,
            });
            (StatusCode::OK, body)
        }
        Err(error) => {
            tracing::error!("admin API: configuration not reloaded, the running one stays: {error}");
            (StatusCode::BAD_REQUEST, json!({ "error": error.to_string() }))
        }
    }
}

/// Starts the binary again with the listening sockets (a binary upgrade): 200 with the new process's ID once
/// it serves, 500 with why it does not (this process then serves on as before).
pub async fn upgrade(shared: &Shared) -> (StatusCode, Value) {
    match shared.request_upgrade().await {
        Ok(pid) => (StatusCode::OK, json!({ "pid": pid })),
        Err(error) => (StatusCode::INTERNAL_SERVER_ERROR, json!({ "error": error })),
    }
}

/// Keys whose values never leave the process.
const SECRETS: [&str; 4] = ["token", "stateless_reset_key", "password", "secret"];

/// The running configuration file, as YAML, with every secret value replaced.
pub fn config(shared: &Shared) -> String {
    let snapshot = shared.snapshot();
    match serde_yaml::from_str::<serde_yaml::Value>(&snapshot.config.text) {
        Ok(mut tree) => {
            redact(&mut tree);
            let yaml = serde_yaml::to_string(&tree).unwrap_or_default();
            format!(
                "# {} (configuration {}, generation {}); secrets redacted\n{yaml}",
                snapshot.config.path.display(),
                snapshot.config.digest,
                snapshot.generation
            )
        }
        // A running configuration was parsed once already; this cannot fail, but nothing leaks if it does.
        Err(_) => "# the configuration cannot be shown\n".to_owned(),
    }
}

fn redact(value: &mut serde_yaml::Value) {
    match value {
        serde_yaml::Value::Mapping(mapping) => {
            for (key, value) in mapping.iter_mut() {
                if key.as_str().is_some_and(|k| SECRETS.contains(&k)) {
                    *value = serde_yaml::Value::String("<redacted>".into());
                } else {
                    redact(value);
                }
            }
        }
        serde_yaml::Value::Sequence(items) => items.iter_mut().for_each(redact),
        serde_yaml::Value::Tagged(tagged) => redact(&mut tagged.value),
        _ => {}
    }
}

fn timestamp(at: SystemTime) -> String {
    humantime::format_rfc3339_millis(at).to_string()
}

fn milliseconds(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_redacted_wherever_they_are() {
        let mut tree: serde_yaml::Value = serde_yaml::from_str(
            "admin: {token: hunter2hunter2hunter2}\nquic:\n  stateless_reset_key: abcdef\nbackends:\n  - {name: a, url: \"http://x\", password: p}\n",
        )
        .unwrap_or_default();
        redact(&mut tree);
        let text = serde_yaml::to_string(&tree).unwrap_or_default();
        for secret in ["hunter2", "abcdef", "password: p"] {
            assert!(!text.contains(secret), "{secret} leaked: {text}");
        }
        assert!(text.contains("name: a"));
    }
}
