use std::time::Duration;

use super::state::State;
use super::{BackendHealth, Policy, Source, Transition};
use crate::config::{HealthCheckConfig, InitialState};

fn probes(unhealthy_threshold: u32, healthy_threshold: u32) -> Policy {
    Policy {
        probes: true,
        unhealthy_threshold,
        healthy_threshold,
        passive: false,
        passive_threshold: 5,
        reactivation: Duration::from_secs(30),
        max_ejection: Duration::from_secs(300),
    }
}

fn passive_only(threshold: u32, reactivation: Duration, max_ejection: Duration) -> Policy {
    Policy {
        probes: false,
        unhealthy_threshold: 3,
        healthy_threshold: 2,
        passive: true,
        passive_threshold: threshold,
        reactivation,
        max_ejection,
    }
}

/// The ejection after `after` failed requests; timed ones carry their period and which ejection they are.
fn ejected(after: u32, reactivate_after: Option<(Duration, u64)>) -> Transition {
    Transition {
        healthy: false,
        after,
        source: Source::Traffic,
        cause: Some("connection refused".to_owned()),
        reactivate_after,
    }
}

/// The number of the ejection a timed transition was for.
fn epoch(transition: &Transition) -> u64 {
    transition.reactivate_after.map_or(0, |(_, epoch)| epoch)
}

/// Feeds `count` failed requests and returns the transitions they caused, paired with their position.
fn fail_requests(state: &mut State, policy: &Policy, count: u32) -> Vec<(u32, Transition)> {
    (1..=count)
        .filter_map(|n| {
            state
                .request_failed("connection refused", policy, || true)
                .map(|t| (n, t))
        })
        .collect()
}

#[test]
fn probes_mark_unhealthy_after_exactly_the_unhealthy_threshold() {
    for threshold in [1, 2, 3, 7] {
        let policy = probes(threshold, 2);
        let mut state = State::new(InitialState::Healthy);
        for n in 1..threshold {
            assert_eq!(
                state.probe_failed("status 503", &policy),
                None,
                "failure {n} of {threshold}"
            );
            assert!(state.is_healthy(), "still healthy after {n} of {threshold} failures");
            assert_eq!(state.consecutive_failures(), n);
        }
        let transition = state.probe_failed("status 503", &policy);
        assert_eq!(
            transition,
            Some(Transition {
                healthy: false,
                after: threshold,
                source: Source::Probe,
                cause: Some("status 503".to_owned()),
                reactivate_after: None,
            })
        );
        assert!(!state.is_healthy());
        // Further failures must not announce the same transition again.
        for _ in 0..5 {
            assert_eq!(state.probe_failed("status 503", &policy), None);
        }
        assert_eq!(state.consecutive_failures(), threshold + 5);
    }
}

#[test]
fn probes_mark_healthy_after_exactly_the_healthy_threshold() {
    for threshold in [1, 2, 4] {
        let policy = probes(3, threshold);
        let mut state = State::new(InitialState::Unhealthy);
        for n in 1..threshold {
            assert_eq!(state.probe_succeeded(&policy), None, "success {n} of {threshold}");
            assert!(!state.is_healthy());
            assert_eq!(state.consecutive_successes(), n);
        }
        let transition = state.probe_succeeded(&policy);
        assert_eq!(
            transition,
            Some(Transition {
                healthy: true,
                after: threshold,
                source: Source::Probe,
                cause: None,
                reactivate_after: None,
            })
        );
        assert!(state.is_healthy());
        for _ in 0..5 {
            assert_eq!(state.probe_succeeded(&policy), None);
        }
    }
}

#[test]
fn a_probe_success_resets_the_failure_count_so_flapping_never_trips() {
    let policy = probes(3, 2);
    let mut state = State::new(InitialState::Healthy);
    for _ in 0..50 {
        assert_eq!(state.probe_failed("timed out", &policy), None);
        assert_eq!(state.probe_failed("timed out", &policy), None);
        assert_eq!(state.probe_succeeded(&policy), None);
        assert_eq!(state.consecutive_failures(), 0);
        assert!(state.is_healthy());
    }
    // The reset counts from the last success: N more failures are needed, not one.
    assert_eq!(state.probe_failed("timed out", &policy), None);
    assert_eq!(state.probe_failed("timed out", &policy), None);
    assert!(state.probe_failed("timed out", &policy).is_some());
}

#[test]
fn a_probe_failure_resets_the_success_count_while_recovering() {
    let policy = probes(3, 3);
    let mut state = State::new(InitialState::Unhealthy);
    for _ in 0..50 {
        assert_eq!(state.probe_succeeded(&policy), None);
        assert_eq!(state.probe_succeeded(&policy), None);
        assert_eq!(state.probe_failed("status 500", &policy), None);
        assert_eq!(state.consecutive_successes(), 0);
        assert!(!state.is_healthy());
    }
    assert_eq!(state.probe_succeeded(&policy), None);
    assert_eq!(state.probe_succeeded(&policy), None);
    assert!(state
        .probe_succeeded(&policy)
        .is_some_and(|t| t.healthy && t.after == 3));
}

#[test]
fn every_transition_of_a_long_probe_sequence_is_emitted_once() {
    let policy = probes(2, 3);
    let mut state = State::new(InitialState::Healthy);
    let outcomes = "ffffsssssffsfsfffsss";
    let transitions: Vec<(usize, bool)> = outcomes
        .chars()
        .enumerate()
        .filter_map(|(index, outcome)| {
            let transition = match outcome {
                's' => state.probe_succeeded(&policy),
                _ => state.probe_failed("status 503", &policy),
            };
            transition.map(|t| (index, t.healthy))
        })
        .collect();
    // Down at the 2nd failure, up at the 3rd success, down again at "ff" (index 9..10), up at the
    // final "sss"; the alternating middle section changes nothing.
    assert_eq!(transitions, vec![(1, false), (6, true), (10, false), (19, true)]);
}

#[test]
fn passive_checks_eject_after_exactly_the_threshold() {
    for threshold in [1, 2, 5] {
        let policy = passive_only(threshold, Duration::from_secs(10), Duration::from_secs(60));
        let mut state = State::new(InitialState::Healthy);
        let transitions = fail_requests(&mut state, &policy, threshold + 4);
        assert_eq!(
            transitions,
            vec![(threshold, ejected(threshold, Some((Duration::from_secs(10), 1))))],
            "threshold {threshold}"
        );
        assert!(!state.is_healthy());
    }
}

#[test]
fn a_successful_request_resets_the_passive_failure_count() {
    let policy = passive_only(3, Duration::from_secs(10), Duration::from_secs(60));
    let mut state = State::new(InitialState::Healthy);
    for _ in 0..50 {
        assert!(fail_requests(&mut state, &policy, 2).is_empty());
        assert!(
            state.watching_requests(),
            "a success must be observed to reset the count"
        );
        state.request_succeeded();
        assert!(!state.watching_requests());
        assert_eq!(state.consecutive_failures(), 0);
    }
    assert!(state.is_healthy());
}

#[test]
fn passive_checks_off_never_eject() {
    let mut policy = passive_only(1, Duration::from_secs(10), Duration::from_secs(60));
    policy.passive = false;
    let mut state = State::new(InitialState::Healthy);
    assert!(fail_requests(&mut state, &policy, 20).is_empty());
    assert!(state.is_healthy());
}

#[test]
fn passive_ejection_period_doubles_per_consecutive_ejection_up_to_max_ejection() {
    let policy = passive_only(2, Duration::from_secs(10), Duration::from_secs(70));
    let mut state = State::new(InitialState::Healthy);
    let first = fail_requests(&mut state, &policy, 2);
    assert_eq!(first, vec![(2, ejected(2, Some((Duration::from_secs(10), 1))))]);
    let mut current = epoch(&first[0].1);
    let mut periods = Vec::new();
    for _ in 0..5 {
        assert_eq!(
            state.reactivate(current + 1),
            None,
            "another ejection's timer changes nothing"
        );
        let back = state.reactivate(current).expect("the ejection period ends");
        assert!(back.healthy && back.after == 0 && back.cause.is_none() && back.reactivate_after.is_none());
        assert!(state.is_healthy());
        // On probation a single failure ejects again, well below the threshold of 2.
        let transitions = fail_requests(&mut state, &policy, 1);
        assert_eq!(transitions.len(), 1, "one failure on probation ejects");
        let (_, transition) = &transitions[0];
        assert_eq!(transition.after, 1);
        let (period, next) = transition.reactivate_after.expect("passive-only ejections are timed");
        assert_eq!(next, current + 1);
        current = next;
        periods.push(period);
    }
    let secs: Vec<u64> = periods.iter().map(Duration::as_secs).collect();
    assert_eq!(secs, vec![20, 40, 70, 70, 70]);
}

#[test]
fn passive_ejection_period_never_overflows() {
    let policy = passive_only(1, Duration::from_secs(1), Duration::MAX);
    let mut state = State::new(InitialState::Healthy);
    let mut last = Duration::ZERO;
    for _ in 0..100 {
        let transitions = fail_requests(&mut state, &policy, 1);
        let (period, epoch) = transitions[0].1.reactivate_after.expect("timed");
        assert!(period >= last, "the period must not shrink: {last:?} then {period:?}");
        last = period;
        state.reactivate(epoch).expect("reactivates");
    }
}

#[test]
fn one_success_on_probation_ends_it_and_resets_the_backoff() {
    let policy = passive_only(3, Duration::from_secs(10), Duration::from_secs(300));
    let mut state = State::new(InitialState::Healthy);
    fail_requests(&mut state, &policy, 3);
    state.reactivate(1).expect("reactivates");
    assert_eq!(
        fail_requests(&mut state, &policy, 1)[0].1.reactivate_after,
        Some((Duration::from_secs(20), 2))
    );
    state.reactivate(2).expect("reactivates");
    assert!(
        state.watching_requests(),
        "on probation a success must reach the state machine"
    );
    state.request_succeeded();
    assert!(!state.watching_requests());
    // Off probation: the full threshold applies again, and the period starts over from `reactivation`.
    let transitions = fail_requests(&mut state, &policy, 3);
    assert_eq!(transitions, vec![(3, ejected(3, Some((Duration::from_secs(10), 3))))]);
}

#[test]
fn with_probes_a_passive_ejection_waits_for_the_probes() {
    let mut policy = probes(3, 2);
    policy.passive = true;
    policy.passive_threshold = 2;
    let mut state = State::new(InitialState::Healthy);
    assert_eq!(fail_requests(&mut state, &policy, 2), vec![(2, ejected(2, None))]);
    assert_eq!(state.probe_succeeded(&policy), None);
    let back = state.probe_succeeded(&policy).expect("healthy after 2 probe successes");
    assert_eq!((back.healthy, back.after, back.source), (true, 2, Source::Probe));
    // Probes brought it back: no probation, a single failed request does not eject it.
    assert!(fail_requests(&mut state, &policy, 1).is_empty());
    assert!(state.is_healthy());
}

#[test]
fn requests_to_an_unhealthy_backend_change_nothing() {
    let policy = passive_only(1, Duration::from_secs(10), Duration::from_secs(60));
    let mut state = State::new(InitialState::Unhealthy);
    assert!(fail_requests(&mut state, &policy, 10).is_empty());
    state.request_succeeded();
    assert!(!state.is_healthy());
}

#[test]
fn reactivating_a_healthy_backend_is_no_transition() {
    let mut state = State::new(InitialState::Healthy);
    assert_eq!(state.reactivate(0), None);
}

#[test]
fn initial_state_unhealthy_starts_out_of_rotation() {
    let state = State::new(InitialState::Unhealthy);
    assert!(!state.is_healthy());

    let config = HealthCheckConfig {
        initial_state: InitialState::Unhealthy,
        ..HealthCheckConfig::disabled()
    };
    let health = BackendHealth::new(&config);
    assert!(!health.is_healthy());
    assert!(health.since_recovery().is_none());

    let health = BackendHealth::new(&HealthCheckConfig::disabled());
    assert!(health.is_healthy(), "the default initial state is healthy");
}

#[test]
fn backend_health_reports_counters_and_the_last_probe() {
    let config = HealthCheckConfig {
        enabled: true,
        ..HealthCheckConfig::disabled()
    };
    let health = BackendHealth::new(&config);
    let report = health.report();
    assert!(report.healthy && report.last_check.is_none() && report.last_error.is_none());

    health.record_probe(Err("status 503".to_owned()), Duration::from_millis(7));
    health.record_probe(Err("connection refused".to_owned()), Duration::from_millis(3));
    let report = health.report();
    assert!(report.healthy);
    assert_eq!(report.consecutive_failures, 2);
    assert_eq!(report.last_latency, Some(Duration::from_millis(3)));
    assert_eq!(report.last_error.as_deref(), Some("connection refused"));
    assert!(report.last_check.is_some());

    let transition = health.record_probe(Err("timed out".to_owned()), Duration::from_millis(1));
    assert!(transition.is_some_and(|t| !t.healthy && t.after == 3));
    assert!(!health.is_healthy());
    assert!(!health.report().healthy);
}

/// Successful requests take the lock-free path unless a failure or probation made them meaningful.
#[test]
fn backend_health_observes_successes_that_matter() {
    let config = HealthCheckConfig {
        passive: crate::config::PassiveConfig {
            unhealthy_threshold: 2,
            ..Default::default()
        },
        ..HealthCheckConfig::disabled()
    };
    let health = BackendHealth::new(&config);
    for _ in 0..10 {
        assert_eq!(health.record_request(Err("status 502".to_owned()), || true), None);
        assert_eq!(health.record_request(Ok(()), || true), None);
    }
    assert!(health.is_healthy());
    assert!(health.record_request(Err("status 502".to_owned()), || true).is_none());
    assert!(health.record_request(Err("status 502".to_owned()), || true).is_some());
    assert!(!health.is_healthy());
}
