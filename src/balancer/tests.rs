use std::collections::BTreeMap;
use std::sync::Arc;

use http::uri::{Authority, Scheme};
use proptest::prelude::*;

use super::{Backend, Balancer, InFlight};
use crate::config::{Algorithm, BackendConfig, UpstreamProtocol};

/// Backends `a`, `b`, `c`, ... with the given weights; each gets its own port so they are distinguishable.
fn pool(weights: &[u32]) -> Vec<Arc<Backend>> {
    weights
        .iter()
        .enumerate()
        .map(|(index, &weight)| {
            let name = char::from(b'a' + u8::try_from(index).unwrap()).to_string();
            let authority: Authority = format!("127.0.0.1:{}", 8001 + index).parse().unwrap();
            let config = BackendConfig {
                name,
                scheme: Scheme::HTTP,
                authority,
                weight,
                health_url: None,
                protocol: UpstreamProtocol::Auto,
                tls: None,
            };
            Arc::new(Backend::new("test", &config).expect("a plain backend"))
        })
        .collect()
}

fn balancer(algorithm: Algorithm, backends: &[Arc<Backend>]) -> Balancer {
    Balancer::new(algorithm, backends.len())
}

fn pick(balancer: &Balancer, backends: &[Arc<Backend>]) -> String {
    pick_where(balancer, backends, |_| true)
}

fn pick_where(balancer: &Balancer, backends: &[Arc<Backend>], accept: impl Fn(&Backend) -> bool) -> String {
    balancer
        .select(backends, accept)
        .expect("some backend is accepted")
        .name
        .clone()
}

/// Names of `n` consecutive picks, concatenated (backend names are single letters).
fn sequence(balancer: &Balancer, backends: &[Arc<Backend>], n: usize) -> String {
    (0..n).map(|_| pick(balancer, backends)).collect()
}

/// How often each backend is picked in `n` picks; no request is started, so loads stay as they are.
fn counts(
    balancer: &Balancer,
    backends: &[Arc<Backend>],
    n: usize,
    accept: impl Fn(&Backend) -> bool,
) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for _ in 0..n {
        *counts.entry(pick_where(balancer, backends, &accept)).or_default() += 1;
    }
    counts
}

fn expected(pairs: &[(&str, usize)]) -> BTreeMap<String, usize> {
    pairs.iter().map(|&(n, c)| (n.to_owned(), c)).collect()
}

fn hold(backend: &Arc<Backend>, requests: usize) -> Vec<InFlight> {
    (0..requests).map(|_| backend.start_request()).collect()
}

fn in_flight(backends: &[Arc<Backend>]) -> Vec<usize> {
    backends.iter().map(|b| b.in_flight()).collect()
}

#[test]
fn every_algorithm_returns_none_when_nothing_is_accepted() {
    let backends = pool(&[1, 2]);
    for algorithm in [Algorithm::RoundRobin, Algorithm::Weighted, Algorithm::LeastConnections] {
        let balancer = balancer(algorithm, &backends);
        assert!(balancer.select(&backends, |_| false).is_none(), "{algorithm}");
        assert!(balancer.select(&[], |_| true).is_none(), "{algorithm}");
    }
}

#[test]
fn round_robin_rotates_strictly() {
    let backends = pool(&[1, 1, 1]);
    let balancer = balancer(Algorithm::RoundRobin, &backends);
    assert_eq!(sequence(&balancer, &backends, 9), "abcabcabc");
}

#[test]
fn round_robin_ignores_weights() {
    let backends = pool(&[5, 1]);
    let balancer = balancer(Algorithm::RoundRobin, &backends);
    assert_eq!(sequence(&balancer, &backends, 6), "ababab");
}

#[test]
fn round_robin_skips_refused_backends() {
    let backends = pool(&[1, 1, 1]);
    let balancer = balancer(Algorithm::RoundRobin, &backends);
    let picked = counts(&balancer, &backends, 300, |b| b.name != "b");
    assert_eq!(picked.keys().collect::<Vec<_>>(), ["a", "c"]);
    assert_eq!(picked.values().sum::<usize>(), 300);
}

#[test]
fn round_robin_shares_a_refused_backends_turn_evenly() {
    let backends = pool(&[1, 1, 1]);
    let balancer = balancer(Algorithm::RoundRobin, &backends);
    assert_eq!(
        counts(&balancer, &backends, 300, |b| b.name != "b"),
        expected(&[("a", 150), ("c", 150)])
    );
}

#[test]
fn weighted_interleaves_5_1_1_as_a_a_b_a_c_a_a() {
    let backends = pool(&[5, 1, 1]);
    let balancer = balancer(Algorithm::Weighted, &backends);
    assert_eq!(
        sequence(&balancer, &backends, 21),
        "aabacaa".repeat(3),
        "the cycle must repeat unchanged"
    );
}

#[test]
fn weighted_3_1_1_over_500_picks_is_exact() {
    let backends = pool(&[3, 1, 1]);
    let balancer = balancer(Algorithm::Weighted, &backends);
    assert_eq!(
        counts(&balancer, &backends, 500, |_| true),
        expected(&[("a", 300), ("b", 100), ("c", 100)])
    );
}

/// The sequence has period `total weight`, so any window of that length (not only one aligned to the
/// start) holds each backend exactly `weight` times; with two or more backends no run can exceed the
/// weight. Runs can cross a cycle boundary though: 5,1,1 gives `a a` at the end and `a a` at the start.
#[test]
fn weighted_runs_are_bounded_by_weight_across_cycles() {
    let backends = pool(&[5, 1, 1]);
    let balancer = balancer(Algorithm::Weighted, &backends);
    let picks = sequence(&balancer, &backends, 7 * 4);
    assert_eq!(longest_run(&picks, 'a'), 4);
    assert_eq!(longest_run(&picks, 'b'), 1);
    assert_eq!(longest_run(&picks, 'c'), 1);
}

#[test]
fn weighted_splits_by_weight_among_accepted_backends() {
    let backends = pool(&[3, 4, 1]);
    let balancer = balancer(Algorithm::Weighted, &backends);
    let without_b = |b: &Backend| b.name != "b";
    assert_eq!(
        counts(&balancer, &backends, 400, without_b),
        expected(&[("a", 300), ("c", 100)])
    );
    let picks: String = (0..8).map(|_| pick_where(&balancer, &backends, without_b)).collect();
    assert_eq!(picks, "aacaaaca");
}

#[test]
fn weighted_single_backend_is_always_picked() {
    let backends = pool(&[3]);
    let balancer = balancer(Algorithm::Weighted, &backends);
    assert_eq!(sequence(&balancer, &backends, 5), "aaaaa");
}

#[test]
fn least_connections_prefers_the_least_loaded() {
    let backends = pool(&[1, 1, 1]);
    let balancer = balancer(Algorithm::LeastConnections, &backends);
    let _a = hold(&backends[0], 2);
    let _c = hold(&backends[2], 1);
    for _ in 0..5 {
        assert_eq!(pick(&balancer, &backends), "b");
    }
}

#[test]
fn least_connections_spreads_held_requests_by_weight() {
    let backends = pool(&[1, 2, 3]);
    let balancer = balancer(Algorithm::LeastConnections, &backends);
    let mut guards = Vec::new();
    for _ in 0..12 {
        let chosen = balancer.select(&backends, |_| true).unwrap();
        guards.push(chosen.start_request());
    }
    assert_eq!(in_flight(&backends), [2, 4, 6]);
    drop(guards);
    assert_eq!(in_flight(&backends), [0, 0, 0]);
}

#[test]
fn least_connections_compares_load_per_weight() {
    // a: weight 2 with 2 in flight; b: weight 1 with 1 in flight; both carry 1 per unit of weight.
    let backends = pool(&[2, 1]);
    let balancer = balancer(Algorithm::LeastConnections, &backends);
    let _a = hold(&backends[0], 2);
    let mut b = hold(&backends[1], 1);
    assert_eq!(
        counts(&balancer, &backends, 100, |_| true),
        expected(&[("a", 50), ("b", 50)]),
        "equal load per weight is a tie"
    );
    b.extend(hold(&backends[1], 1));
    assert_eq!(
        counts(&balancer, &backends, 10, |_| true),
        expected(&[("a", 10)]),
        "2/2 is lighter than 2/1"
    );
}

#[test]
fn least_connections_shares_ties_among_idle_backends() {
    let backends = pool(&[1, 1, 1]);
    let balancer = balancer(Algorithm::LeastConnections, &backends);
    assert_eq!(
        counts(&balancer, &backends, 300, |_| true),
        expected(&[("a", 100), ("b", 100), ("c", 100)])
    );
}

#[test]
fn least_connections_shares_ties_evenly_next_to_a_busy_backend() {
    let backends = pool(&[1, 1, 1]);
    let balancer = balancer(Algorithm::LeastConnections, &backends);
    let _a = hold(&backends[0], 1);
    assert_eq!(
        counts(&balancer, &backends, 300, |_| true),
        expected(&[("b", 150), ("c", 150)])
    );
}

#[test]
fn least_connections_skips_refused_backends() {
    let backends = pool(&[1, 1, 1]);
    let balancer = balancer(Algorithm::LeastConnections, &backends);
    let _c = hold(&backends[2], 3);
    // `a` is idle but refused, so the lightest accepted one (b, idle) must win, never `a`.
    assert_eq!(
        counts(&balancer, &backends, 30, |b| b.name != "a"),
        expected(&[("b", 30)])
    );
}

#[test]
fn guard_counts_while_alive_and_reports_its_backend() {
    let backends = pool(&[1]);
    let guard = backends[0].start_request();
    let second = backends[0].start_request();
    assert_eq!(backends[0].in_flight(), 2);
    assert!(Arc::ptr_eq(guard.backend(), &backends[0]));
    drop(guard);
    assert_eq!(backends[0].in_flight(), 1);
    drop(second);
    assert_eq!(backends[0].in_flight(), 0);
}

#[test]
fn guard_dropped_on_another_thread_decrements() {
    let backends = pool(&[1]);
    let guards = hold(&backends[0], 8);
    assert_eq!(backends[0].in_flight(), 8);
    let handles: Vec<_> = guards
        .into_iter()
        .map(|guard| std::thread::spawn(move || drop(guard)))
        .collect();
    for handle in handles {
        handle.join().unwrap();
    }
    assert_eq!(backends[0].in_flight(), 0);
}

#[test]
fn guard_dropped_by_a_finished_or_aborted_task_decrements() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    let backends = pool(&[1]);
    let backend = Arc::clone(&backends[0]);
    runtime.block_on(async move {
        let finished = backend.start_request();
        tokio::spawn(async move { drop(finished) }).await.unwrap();
        assert_eq!(backend.in_flight(), 0);

        // A request cancelled mid-flight (client gone) must not leak its count.
        let cancelled = backend.start_request();
        let task = tokio::spawn(async move {
            let _held = cancelled;
            std::future::pending::<()>().await;
        });
        assert_eq!(backend.in_flight(), 1);
        task.abort();
        assert!(task.await.unwrap_err().is_cancelled());
        assert_eq!(backend.in_flight(), 0);
    });
}

fn longest_run(picks: &str, name: char) -> usize {
    picks.split(|c| c != name).map(str::len).max().unwrap_or(0)
}

fn weights() -> impl Strategy<Value = Vec<u32>> {
    prop::collection::vec(1u32..=20, 1..=8)
}

proptest! {
    #[test]
    fn weighted_gives_each_backend_its_weight_per_cycle(weights in weights()) {
        let backends = pool(&weights);
        let balancer = balancer(Algorithm::Weighted, &backends);
        let total: usize = weights.iter().map(|&w| w as usize).sum();
        let picks = sequence(&balancer, &backends, total * 3);
        for (index, window) in picks.as_bytes().windows(total).enumerate() {
            for (backend, &weight) in backends.iter().zip(&weights) {
                let name = backend.name.as_bytes()[0];
                let seen = window.iter().filter(|&&c| c == name).count();
                prop_assert_eq!(
                    seen, weight as usize,
                    "backend {} in window starting at {} of {}", backend.name, index, picks
                );
            }
        }
        if backends.len() > 1 {
            for (backend, &weight) in backends.iter().zip(&weights) {
                let name = char::from(backend.name.as_bytes()[0]);
                prop_assert!(longest_run(&picks, name) <= weight as usize, "{} in {}", name, picks);
            }
        }
    }

    #[test]
    fn least_connections_picks_a_minimal_load_per_weight(
        weights in weights(),
        steps in prop::collection::vec((any::<bool>(), any::<prop::sample::Index>(), any::<u8>()), 1..200),
    ) {
        let backends = pool(&weights);
        let balancer = balancer(Algorithm::LeastConnections, &backends);
        let mut held: Vec<InFlight> = Vec::new();
        for (start, victim, refused_mask) in steps {
            if !start && !held.is_empty() {
                held.swap_remove(victim.index(held.len()));
                continue;
            }
            // Refuse some backends, but always accept at least the first.
            let accepted = |index: usize| index == 0 || refused_mask & (1 << index) == 0;
            let accept = |b: &Backend| {
                backends.iter().position(|x| x.name == b.name).is_some_and(accepted)
            };
            let chosen = balancer.select(&backends, accept).unwrap();
            let chosen_index = backends.iter().position(|b| Arc::ptr_eq(b, &chosen)).unwrap();
            prop_assert!(accepted(chosen_index));
            for (index, other) in backends.iter().enumerate().filter(|&(i, _)| accepted(i)) {
                // chosen.load / chosen.weight <= other.load / other.weight, without division.
                prop_assert!(
                    chosen.in_flight() as u64 * u64::from(other.weight())
                        <= other.in_flight() as u64 * u64::from(chosen.weight()),
                    "picked {} ({}/{}) over {} ({}/{}) at index {}",
                    chosen.name, chosen.in_flight(), chosen.weight(),
                    other.name, other.in_flight(), other.weight(), index
                );
            }
            held.push(chosen.start_request());
        }
        let total: usize = in_flight(&backends).iter().sum();
        prop_assert_eq!(total, held.len());
        drop(held);
        prop_assert!(in_flight(&backends).iter().all(|&n| n == 0));
    }
}
