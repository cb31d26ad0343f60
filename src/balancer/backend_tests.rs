//! A backend's health as it acts: transitions announced once, timed ejections that end on their own,
//! and slow start after a recovery. Timed behaviour runs on tokio's paused clock: time only moves when
//! every task waits, so these checks are exact and instant.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::uri::{Authority, Scheme};

use super::{Backend, WEIGHT_SCALE};
use crate::config::{BackendConfig, HealthCheckConfig, InitialState};

fn backend(health: &HealthCheckConfig, slow_start: Option<Duration>) -> Arc<Backend> {
    backend_weighted(health, slow_start, 1)
}

fn backend_weighted(health: &HealthCheckConfig, slow_start: Option<Duration>, weight: u32) -> Arc<Backend> {
    let config = BackendConfig {
        name: "backend1".to_owned(),
        scheme: Scheme::HTTP,
        authority: Authority::from_static("127.0.0.1:9"),
        weight,
        health_url: None,
        protocol: crate::config::UpstreamProtocol::Auto,
        tls: None,
        address: None,
    };
    Arc::new(Backend::configured("default", &config, health, slow_start).expect("a plain backend"))
}

fn passive_only_config(threshold: u32, reactivation: Duration, max_ejection: Duration) -> HealthCheckConfig {
    HealthCheckConfig {
        enabled: false,
        passive: crate::config::PassiveConfig {
            enabled: true,
            unhealthy_threshold: threshold,
            failure_statuses: vec![502, 503, 504],
            reactivation,
            max_ejection,
            ..Default::default()
        },
        ..HealthCheckConfig::disabled()
    }
}

#[tokio::test(start_paused = true)]
async fn passive_ejection_ends_after_exactly_the_reactivation_period_and_backs_off() {
    let reactivation = Duration::from_secs(30);
    let max_ejection = Duration::from_secs(300);
    let backend = backend(&passive_only_config(2, reactivation, max_ejection), None);
    let just = Duration::from_millis(1);

    assert_eq!(
        backend
            .health
            .record_request(Err("connection refused".to_owned()), || true),
        None
    );
    let transition = backend
        .health
        .record_request(Err("connection refused".to_owned()), || true)
        .expect("ejected at the threshold");
    assert_eq!(transition.reactivate_after.map(|(d, _)| d), Some(reactivation));
    backend.announce(transition);
    tokio::time::sleep(reactivation - just).await;
    assert!(!backend.is_usable(), "back before the reactivation period");
    tokio::time::sleep(just * 2).await;
    assert!(backend.is_usable(), "not back after the reactivation period");

    // On probation one failure ejects again, for twice as long each time, up to max_ejection.
    for period in [60, 120, 240, 300, 300].map(Duration::from_secs) {
        let transition = backend
            .health
            .record_request(Err("connection refused".to_owned()), || true)
            .expect("one failure on probation ejects");
        assert_eq!(transition.reactivate_after.map(|(d, _)| d), Some(period));
        backend.announce(transition);
        tokio::time::sleep(period - just).await;
        assert!(!backend.health.is_healthy());
        tokio::time::sleep(just * 2).await;
        assert!(backend.health.is_healthy());
    }

    // A success ends probation and resets the backoff: it takes the full threshold again, then 30 s.
    assert_eq!(backend.health.record_request(Ok(()), || true), None);
    assert_eq!(
        backend.health.record_request(Err("status 503".to_owned()), || true),
        None
    );
    let transition = backend
        .health
        .record_request(Err("status 503".to_owned()), || true)
        .expect("ejected again");
    assert_eq!(transition.reactivate_after.map(|(d, _)| d), Some(reactivation));
}

fn recovering(window: Duration, weight: u32) -> Arc<Backend> {
    let config = HealthCheckConfig {
        enabled: true,
        initial_state: InitialState::Unhealthy,
        ..HealthCheckConfig::disabled()
    };
    backend_weighted(&config, Some(window), weight)
}

/// Two good probes: the default healthy threshold.
fn recover(backend: &Backend) {
    assert_eq!(backend.health.record_probe(Ok(()), Duration::ZERO), None);
    backend
        .health
        .record_probe(Ok(()), Duration::ZERO)
        .expect("recovers at the healthy threshold");
}

#[tokio::test(start_paused = true)]
async fn slow_start_ramps_from_ten_percent_to_full_over_the_window() {
    let backend = recovering(Duration::from_secs(30), 10);
    let full = 10 * WEIGHT_SCALE;
    assert_eq!(backend.effective_weight(), full, "never recovered: no slow start");
    recover(&backend);
    let mut seen = Vec::new();
    for _ in 0..=6 {
        seen.push(backend.effective_weight());
        tokio::time::advance(Duration::from_secs(5)).await;
    }
    // 10% floor until 3 s, then linear: 5 s -> 1/6, 10 s -> 1/3, ... 30 s -> full.
    assert_eq!(seen, [100, 166, 333, 500, 666, 833, 1000]);
    tokio::time::advance(Duration::from_secs(60)).await;
    assert_eq!(backend.effective_weight(), full);

    // Failing and recovering again starts a new ramp from the floor.
    for _ in 0..3 {
        backend
            .health
            .record_probe(Err("status 503".to_owned()), Duration::ZERO);
    }
    assert!(!backend.is_usable());
    recover(&backend);
    assert_eq!(backend.effective_weight(), full / 10);
}

#[tokio::test(start_paused = true)]
async fn without_slow_start_a_recovered_backend_gets_its_full_weight() {
    let config = HealthCheckConfig {
        enabled: true,
        initial_state: InitialState::Unhealthy,
        healthy_threshold: 1,
        ..HealthCheckConfig::disabled()
    };
    let backend = backend_weighted(&config, None, 3);
    backend.health.record_probe(Ok(()), Duration::ZERO).expect("recovers");
    assert_eq!(backend.effective_weight(), 3 * WEIGHT_SCALE);
}

/// Collects what a `fmt` subscriber writes, so log lines can be checked.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log buffer").extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().expect("log buffer")).into_owned()
    }
}

#[tokio::test(start_paused = true)]
async fn announce_logs_each_transition_once() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let config = HealthCheckConfig {
        enabled: true,
        ..HealthCheckConfig::disabled()
    };
    let probed = backend(&config, None);
    for _ in 0..5 {
        if let Some(transition) = probed
            .health
            .record_probe(Err("connection refused".to_owned()), Duration::ZERO)
        {
            probed.announce(transition);
        }
    }
    for _ in 0..2 {
        if let Some(transition) = probed.health.record_probe(Ok(()), Duration::ZERO) {
            probed.announce(transition);
        }
    }

    let reactivation = Duration::from_millis(20);
    let passive = backend(&passive_only_config(1, reactivation, reactivation), None);
    let transition = passive
        .health
        .record_request(Err("connection reset".to_owned()), || true)
        .expect("ejects");
    passive.announce(transition);
    tokio::time::sleep(reactivation * 2).await;
    assert!(passive.health.is_healthy());

    let logs = captured.text();
    let down = "backend=backend1 upstream=default healthy -> unhealthy after 3 failed probes: connection refused";
    let up = "backend=backend1 upstream=default unhealthy -> healthy after 2 successful probes";
    let ejected = "backend=backend1 upstream=default healthy -> unhealthy after 1 failed requests: connection reset";
    let back = "backend=backend1 upstream=default unhealthy -> healthy: ejection period over, back on probation";
    for line in [down, up, ejected, back] {
        assert_eq!(
            logs.matches(line).count(),
            1,
            "expected once: {line}\n--- logs:\n{logs}"
        );
    }
    assert_eq!(logs.lines().count(), 4, "{logs}");
}
