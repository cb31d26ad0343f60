use std::collections::BTreeMap;
use std::sync::Arc;

use http::uri::{Authority, Scheme};
use proptest::prelude::*;

use super::{Backend, Balancer};
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
                address: None,
            };
            Arc::new(Backend::new("test", &config).expect("a plain backend"))
        })
        .collect()
}

fn balancer(algorithm: Algorithm, backends: &[Arc<Backend>]) -> Balancer {
    Balancer::new(algorithm, backends)
}

fn pick(balancer: &Balancer, backends: &[Arc<Backend>]) -> String {
    pick_where(balancer, backends, |_| true)
}

fn pick_where(balancer: &Balancer, backends: &[Arc<Backend>], accept: impl Fn(&Backend) -> bool) -> String {
    balancer
        .select(backends, accept, None)
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

/// A request counted in flight on a backend until dropped, as the request path's guard counts it.
struct Held(Arc<Backend>);

impl Drop for Held {
    fn drop(&mut self) {
        self.0.end_request();
    }
}

fn begin(backend: &Arc<Backend>) -> Held {
    assert!(backend.try_begin_request(), "no request limit in these tests");
    Held(Arc::clone(backend))
}

fn hold(backend: &Arc<Backend>, requests: usize) -> Vec<Held> {
    (0..requests).map(|_| begin(backend)).collect()
}

fn in_flight(backends: &[Arc<Backend>]) -> Vec<usize> {
    backends.iter().map(|b| b.in_flight()).collect()
}

const ALGORITHMS: [Algorithm; 6] = [
    Algorithm::RoundRobin,
    Algorithm::Weighted,
    Algorithm::LeastConnections,
    Algorithm::P2c,
    Algorithm::Random,
    Algorithm::Hash,
];

#[test]
fn every_algorithm_returns_none_when_nothing_is_accepted() {
    let backends = pool(&[1, 2]);
    for algorithm in ALGORITHMS {
        let balancer = balancer(algorithm, &backends);
        for key in [None, Some(7)] {
            assert!(balancer.select(&backends, |_| false, key).is_none(), "{algorithm}");
            assert!(balancer.select(&[], |_| true, key).is_none(), "{algorithm}");
        }
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
        let chosen = balancer.select(&backends, |_| true, None).unwrap();
        guards.push(begin(&chosen));
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
        let mut held: Vec<Held> = Vec::new();
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
            let chosen = balancer.select(&backends, accept, None).unwrap();
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
            held.push(begin(&chosen));
        }
        let total: usize = in_flight(&backends).iter().sum();
        prop_assert_eq!(total, held.len());
        drop(held);
        prop_assert!(in_flight(&backends).iter().all(|&n| n == 0));
    }
}
