//! Random choices: weighted random, and the power of two random choices (Envoy's least-request default):
//! two backends drawn at random, the one with fewer requests in flight per unit of weight wins. The latter
//! needs no shared cursor and avoids least-connections' herd on the one idlest backend.

use std::sync::Arc;

use super::Backend;

/// A random backend among the accepted ones, each as likely as its effective weight.
pub(super) fn weighted(backends: &[Arc<Backend>], accept: &impl Fn(&Backend) -> bool) -> Option<usize> {
    weighted_except(backends, accept, None)
}

/// [`weighted`], leaving out the backend at `except`.
fn weighted_except(
    backends: &[Arc<Backend>],
    accept: &impl Fn(&Backend) -> bool,
    except: Option<usize>,
) -> Option<usize> {
    let eligible = |index: usize, backend: &Backend| Some(index) != except && accept(backend);
    let total: u64 = backends
        .iter()
        .enumerate()
        .filter(|(index, b)| eligible(*index, b))
        .map(|(_, b)| b.effective_weight())
        .sum();
    if total == 0 {
        return None;
    }
    let mut point = fastrand::u64(..total);
    backends
        .iter()
        .enumerate()
        .filter(|(index, b)| eligible(*index, b))
        .find_map(|(index, backend)| {
            let weight = backend.effective_weight();
            if point < weight {
                Some(index)
            } else {
                point -= weight;
                None
            }
        })
}

/// The lighter of two distinct accepted backends, each drawn as likely as its weight: the one with fewer
/// requests in flight per unit of weight wins, and on a tie the first drawn. Drawing by weight is what makes
/// the shares follow the weights when nothing is in flight (sequential clients, light load); comparing load
/// per weight is what steers away from a slow backend under load.
pub(super) fn power_of_two(backends: &[Arc<Backend>], accept: &impl Fn(&Backend) -> bool) -> Option<usize> {
    let first = weighted_except(backends, accept, None)?;
    let Some(second) = weighted_except(backends, accept, Some(first)) else {
        return Some(first);
    };
    let load = |i: usize| {
        let backend = &backends[i];
        (
            backend.in_flight() as u128,
            u128::from(backend.effective_weight().max(1)),
        )
    };
    let ((load_a, weight_a), (load_b, weight_b)) = (load(first), load(second));
    // load_a / weight_a <= load_b / weight_b, without division.
    Some(if load_a * weight_b <= load_b * weight_a {
        first
    } else {
        second
    })
}
