//! Consistent hashing with a Maglev lookup table (Eisenbud et al., NSDI 2016): every backend fills table
//! slots in the order of its own permutation, taking turns in proportion to its weight, so each holds a
//! share of the table close to its share of the weight, and removing one of N backends moves about 1/N of
//! the keys. A key whose backend is refused (unhealthy, drained, tried) is hashed again, so only the keys
//! of that backend move, and they spread over the others.

use std::sync::Arc;

use super::Backend;

/// Table sizes: primes, the first with at least 100 slots per backend. The size changes only past 655
/// backends: a table of another size maps every key anew, so adding or removing a backend must not change it.
const SIZES: [usize; 3] = [65_537, 655_373, 6_553_751];

/// Hashes again this many times before scanning for any accepted backend.
const REHASHES: u64 = 32;

/// The lookup table of one upstream's backends.
#[derive(Debug)]
pub struct Maglev {
    table: Box<[u32]>,
}

impl Maglev {
    /// Builds the table for `backends`, each identified by `identity` (stable across reloads) and
    /// weighted by its configured weight.
    pub fn new(backends: &[Arc<Backend>]) -> Self {
        let identities: Vec<String> = backends
            .iter()
            .map(|b| format!("{}/{}/{}", b.upstream, b.name, b.authority))
            .collect();
        let weights: Vec<u64> = backends.iter().map(|b| u64::from(b.weight().max(1))).collect();
        Self::build(&identities, &weights)
    }

    fn build(identities: &[String], weights: &[u64]) -> Self {
        let count = identities.len();
        if count == 0 {
            return Self { table: Box::new([]) };
        }
        let size = SIZES
            .iter()
            .copied()
            .find(|&size| size >= count * 100)
            .unwrap_or(SIZES[SIZES.len() - 1]);
        let permutations: Vec<(u64, u64)> = identities
            .iter()
            .map(|id| {
                let offset = hash_bytes(id.as_bytes(), 0x5151) % size as u64;
                let skip = hash_bytes(id.as_bytes(), 0xa3a3) % (size as u64 - 1) + 1;
                (offset, skip)
            })
            .collect();
        let heaviest = weights.iter().copied().max().unwrap_or(1);
        let mut table = vec![u32::MAX; size];
        let mut next = vec![0u64; count];
        let mut credit = vec![0u64; count];
        let mut filled = 0;
        while filled < size {
            for backend in 0..count {
                // Weighted turns: a backend fills a slot each time its credit reaches the heaviest weight.
                credit[backend] += weights[backend];
                if credit[backend] < heaviest {
                    continue;
                }
                credit[backend] -= heaviest;
                let (offset, skip) = permutations[backend];
                loop {
                    let slot = ((offset + next[backend] * skip) % size as u64) as usize;
                    next[backend] += 1;
                    if table[slot] == u32::MAX {
                        table[slot] = u32::try_from(backend).unwrap_or(u32::MAX);
                        filled += 1;
                        break;
                    }
                }
                if filled == size {
                    break;
                }
            }
        }
        Self {
            table: table.into_boxed_slice(),
        }
    }

    /// The backend for `key` among those `accept` allows.
    pub(super) fn select(
        &self,
        backends: &[Arc<Backend>],
        accept: &impl Fn(&Backend) -> bool,
        key: u64,
    ) -> Option<usize> {
        if self.table.is_empty() {
            return None;
        }
        for round in 0..REHASHES {
            let slot =
                (mix(key.wrapping_add(round.wrapping_mul(0x9e37_79b9_7f4a_7c15))) % self.table.len() as u64) as usize;
            let index = self.table[slot] as usize;
            if backends.get(index).is_some_and(|b| accept(b)) {
                return Some(index);
            }
        }
        backends.iter().position(|b| accept(b))
    }
}

/// A stable 64-bit hash (FNV-1a, then a finaliser), the same in every process: instances behind one address
/// send a key to the same backend.
pub fn hash_bytes(bytes: &[u8], seed: u64) -> u64 {
    let mut hash = 0xcbf2_9ce4_8422_2325u64 ^ seed;
    for &byte in bytes {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    mix(hash)
}

/// splitmix64's finaliser: spreads nearby values over the whole range.
fn mix(mut value: u64) -> u64 {
    value = (value ^ (value >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    value = (value ^ (value >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    value ^ (value >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(count: usize) -> Vec<String> {
        (0..count).map(|i| format!("pool/backend-{i}/10.0.0.{i}:80")).collect()
    }

    fn owner(table: &Maglev, key: u64) -> u32 {
        table.table[(mix(key) % table.table.len() as u64) as usize]
    }

    #[test]
    fn shares_follow_weights() {
        let table = Maglev::build(&names(3), &[1, 2, 1]);
        let mut shares = [0usize; 3];
        for &owner in table.table.iter() {
            shares[owner as usize] += 1;
        }
        let total = table.table.len() as f64;
        for (share, expected) in shares.iter().zip([0.25, 0.5, 0.25]) {
            let got = *share as f64 / total;
            assert!(
                (got - expected).abs() < 0.02,
                "share {got} for weight share {expected}: {shares:?}"
            );
        }
    }

    proptest::proptest! {
        // Each case builds two full tables; a few dozen cases cover the sizes and positions well.
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(48))]

        /// Removing one of N backends moves the keys it held, and few others: in all, about 1/N of the keys
        /// (Maglev's bound is not exact; a few points of the table more is allowed).
        #[test]
        fn removing_one_backend_moves_about_one_nth_of_the_keys(
            count in 3usize..40,
            removed in 0usize..40,
            seed in proptest::num::u64::ANY,
        ) {
            let removed = removed % count;
            let all = names(count);
            let before = Maglev::build(&all, &vec![1; count]);
            let kept: Vec<String> = all.iter().enumerate().filter(|(i, _)| *i != removed).map(|(_, n)| n.clone()).collect();
            let after = Maglev::build(&kept, &vec![1; count - 1]);
            let keys = 20_000u64;
            let mut moved = 0u64;
            for n in 0..keys {
                let key = mix(seed ^ n);
                let was = &all[owner(&before, key) as usize];
                let now = &kept[owner(&after, key) as usize];
                if was != now {
                    moved += 1;
                }
            }
            let share = moved as f64 / keys as f64;
            let bound = 1.0 / count as f64 + 0.05;
            proptest::prop_assert!(share <= bound, "{count} backends, one removed: {share} of the keys moved (bound {bound})");
        }
    }
}
