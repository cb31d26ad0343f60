//! What `/metrics` appends to the exporter's output at scrape time: process metrics read from /proc, and
//! gauges of the current snapshot (backend health, in-flight, weights, drains, connections, circuit
//! breakers, ejections, the configuration's digest), so that a backend a reload removed leaves no stale
//! series behind. Rendering reads state; the metrics leaf only records.

use std::fmt::Write as _;

use crate::balancer::{Backend, WEIGHT_SCALE};
use crate::health::Source;
use crate::metrics::{
    BACKEND_CIRCUIT_OPEN, BACKEND_CONNECTIONS, BACKEND_DRAINED, BACKEND_EFFECTIVE_WEIGHT, BACKEND_EJECTED,
    BACKEND_HEALTH, BACKEND_IN_FLIGHT, CONFIG_INFO, TLS_CERTIFICATE_EXPIRY,
};
use crate::routing::Snapshot;
use crate::tls::{self, CertStore};

/// Process metrics in the Prometheus text format, read from /proc at scrape time (Linux only; empty elsewhere).
pub fn process_metrics() -> String {
    let mut out = String::new();
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|value| value.parse::<f64>().ok())
    };
    if let Some(rss_kib) = field("VmRSS:") {
        metric(
            &mut out,
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory size in bytes.",
            rss_kib * 1024.0,
        );
    }
    if let Some(threads) = field("Threads:") {
        metric(
            &mut out,
            "process_threads",
            "gauge",
            "OS threads in the process.",
            threads,
        );
    }
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which may contain spaces) start at the state, field 3.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |index: usize| fields.get(index).and_then(|v| v.parse::<f64>().ok());
    // utime and stime are fields 14 and 15; the kernel's USER_HZ is 100 on every Linux ABI.
    if let (Some(user), Some(system)) = (ticks(11), ticks(12)) {
        metric(
            &mut out,
            "process_cpu_seconds_total",
            "counter",
            "User and system CPU time in seconds.",
            (user + system) / 100.0,
        );
    }
    if let Ok(entries) = std::fs::read_dir("/proc/self/fd") {
        metric(
            &mut out,
            "process_open_fds",
            "gauge",
            "Open file descriptors.",
            entries.count() as f64,
        );
    }
    let boot = std::fs::read_to_string("/proc/stat").ok().and_then(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("btime "))
            .and_then(|v| v.trim().parse::<f64>().ok())
    });
    if let (Some(boot), Some(start)) = (boot, ticks(19)) {
        metric(
            &mut out,
            "process_start_time_seconds",
            "gauge",
            "Start time since the Unix epoch in seconds.",
            boot + start / 100.0,
        );
    }
    out
}

/// When each served certificate expires, one series per name it covers, read at scrape time so that a
/// replaced certificate leaves no series behind.
pub fn certificate_metrics(certs: &CertStore) -> String {
    let mut out = format!(
        "# HELP {TLS_CERTIFICATE_EXPIRY} When each served certificate expires (Unix seconds), by name and source (file, acme).\n# TYPE {TLS_CERTIFICATE_EXPIRY} gauge\n"
    );
    let mut seen = std::collections::HashSet::new();
    // The self-signed fallback is left out: nobody trusts it, so its expiry warns of nothing.
    for served in certs
        .served()
        .iter()
        .filter(|served| served.source != tls::Source::SelfSigned)
    {
        for name in &served.names {
            // A name two certificates of one source cover is served the first one's.
            if seen.insert((name.clone(), served.source.as_str())) {
                let _ = writeln!(
                    out,
                    "{TLS_CERTIFICATE_EXPIRY}{{name=\"{}\",source=\"{}\"}} {}",
                    label_value(name),
                    served.source.as_str(),
                    served.not_after
                );
            }
        }
    }
    out.push('\n');
    out
}

/// Gauges of the current snapshot's state, computed at scrape time: a backend that a reload removed
/// disappears from them at once, instead of leaving a stale series behind.
pub fn state_metrics(snapshot: &Snapshot) -> String {
    let mut out = String::new();
    let _ = write!(
        out,
        "# HELP {CONFIG_INFO} Always 1; digest is the running configuration's, generation counts reloads.\n\
         # TYPE {CONFIG_INFO} gauge\n{CONFIG_INFO}{{digest=\"{}\",generation=\"{}\"}} 1\n\n",
        snapshot.config.digest, snapshot.generation
    );
    type Gauge = (&'static str, &'static str, fn(&Backend) -> f64);
    let gauges: [Gauge; 6] = [
        (BACKEND_HEALTH, "1 when the backend is healthy, 0 when not.", |b| {
            f64::from(u8::from(b.health.is_healthy()))
        }),
        (
            BACKEND_IN_FLIGHT,
            "Requests sent to the backend whose responses are not yet delivered.",
            |b| b.in_flight() as f64,
        ),
        (
            BACKEND_EFFECTIVE_WEIGHT,
            "The weight the balancer uses now (lower during slow start).",
            |b| b.effective_weight() as f64 / WEIGHT_SCALE as f64,
        ),
        (BACKEND_DRAINED, "1 when an operator drained the backend.", |b| {
            f64::from(u8::from(b.is_drained()))
        }),
        (
            BACKEND_CONNECTIONS,
            "Connections open from the proxy's workers to the backend.",
            |b| b.transport.limits().open() as f64,
        ),
        (
            BACKEND_CIRCUIT_OPEN,
            "1 while the backend's circuit breaker refuses new requests.",
            |b| f64::from(u8::from(b.circuit_open())),
        ),
    ];
    for (name, help, value) in gauges {
        let _ = write!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n");
        for backend in snapshot.backends() {
            let _ = writeln!(
                out,
                "{name}{{upstream=\"{}\",backend=\"{}\"}} {}",
                label_value(&backend.upstream),
                label_value(&backend.name),
                value(backend)
            );
        }
        out.push('\n');
    }
    let _ = write!(
        out,
        "# HELP {BACKEND_EJECTED} 1 while traffic keeps the backend ejected, by reason.\n# TYPE {BACKEND_EJECTED} gauge\n"
    );
    for backend in snapshot.backends() {
        let ejected_by = backend.health.ejected_by();
        for source in Source::TRAFFIC {
            let _ = writeln!(
                out,
                "{BACKEND_EJECTED}{{upstream=\"{}\",backend=\"{}\",reason=\"{}\"}} {}",
                label_value(&backend.upstream),
                label_value(&backend.name),
                source.reason(),
                u8::from(ejected_by == Some(source))
            );
        }
    }
    out.push('\n');
    out
}

/// A label value escaped for the Prometheus text format.
fn label_value(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

fn metric(out: &mut String, name: &str, kind: &str, help: &str, value: f64) {
    // Writing to a String cannot fail.
    let _ = write!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n\n");
}
