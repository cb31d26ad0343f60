//! Request rate limits: the generic cell rate algorithm (GCRA), a token bucket kept as one timestamp per key,
//! shared by every worker. A key's "theoretical arrival time" (TAT) moves on by one emission interval per
//! request admitted; a request that finds it more than the burst tolerance ahead of now is refused, and
//! told when it may come back.
//!
//! The keys tracked are bounded: the table is split in shards, each with a cap. A full shard first forgets
//! keys whose bucket has refilled (their TAT has passed: forgetting them changes nothing), then, if every
//! key is active, one of them (its client gets a full bucket back, and the eviction is counted). A client
//! rotating addresses can make the limit forget keys, never the memory grow.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash};
use std::net::IpAddr;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use crate::config::{RateKey, RateLimit};

/// Shards of the key table: requests of different keys rarely wait for one another.
const SHARDS: usize = 16;
/// Keys tracked per limit, over every shard.
pub const MAX_KEYS: usize = 65_536;

/// What a request is counted by: the route, a client address (IPv4 whole, IPv6 by its /64), or a header
/// value's hash (seeded per limiter, so nobody can aim collisions at one key), as one number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Key(u128);

impl Key {
    /// The route's one bucket.
    pub const ROUTE: Self = Self(0);

    /// The key of a client address: IPv4 whole, IPv6 by its /64 (one subscriber's prefix).
    pub fn address(ip: IpAddr) -> Self {
        match ip.to_canonical() {
            IpAddr::V4(v4) => Self(1 << 126 | u128::from(u32::from(v4))),
            IpAddr::V6(v6) => Self(2 << 126 | u128::from(v6) >> 64),
        }
    }

    /// The key of a header value's hash.
    fn value(hash: u64) -> Self {
        Self(3 << 126 | u128::from(hash))
    }

    /// The key numbered `n`, for tests and measurements of the table.
    pub fn numbered(n: u64) -> Self {
        Self::value(n)
    }
}

/// A request the limit let through: what is left of the bucket, and when it is full again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Admitted {
    pub remaining: u32,
    pub reset: Duration,
}

/// A request the limit refused, and how long until one would pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused {
    pub retry_after: Duration,
}

/// One route's rate limit.
pub struct Limiter {
    config: RateLimit,
    /// Time between two requests at the sustained rate, in nanoseconds.
    emission: u64,
    /// How far ahead of now a key's TAT may run: the burst beyond the first request.
    tolerance: u64,
    start: Instant,
    seed: std::hash::RandomState,
    shards: Box<[Mutex<HashMap<Key, u64>>]>,
    per_shard: usize,
    evicted: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for Limiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limiter").field("config", &self.config).finish()
    }
}

impl Limiter {
    /// A limiter for `config`, tracking at most `max_keys` keys.
    pub fn new(config: &RateLimit, max_keys: usize) -> Self {
        let emission = (1e9 / config.requests_per_second).round().max(1.0) as u64;
        Self {
            emission,
            tolerance: emission.saturating_mul(u64::from(config.burst.saturating_sub(1))),
            config: config.clone(),
            start: Instant::now(),
            seed: std::hash::RandomState::new(),
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            per_shard: max_keys.div_ceil(SHARDS).max(1),
            evicted: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// The limit it enforces.
    pub fn config(&self) -> &RateLimit {
        &self.config
    }

    /// The key of a request: by the route, a header's value, or the client's address.
    pub fn key(&self, client: IpAddr, headers: &http::HeaderMap) -> Key {
        match &self.config.key {
            RateKey::Route => Key::ROUTE,
            RateKey::ClientAddress => Key::address(client),
            RateKey::Header(name) => match headers.get(name) {
                Some(value) => Key::value(self.seed.hash_one(value.as_bytes())),
                None => Key::address(client),
            },
        }
    }

    /// Counts one request of `key` now: admitted, or refused until later.
    pub fn check(&self, key: Key) -> Result<Admitted, Refused> {
        let now = u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX);
        let shard = &self.shards[self.shard_of(&key)];
        let mut table = shard.lock().unwrap_or_else(PoisonError::into_inner);
        let tat = table.get(&key).copied().unwrap_or(now).max(now);
        if tat - now > self.tolerance {
            return Err(Refused {
                retry_after: Duration::from_nanos(tat - now - self.tolerance),
            });
        }
        let next = tat + self.emission;
        if !table.contains_key(&key) && table.len() >= self.per_shard {
            self.make_room(&mut table, now);
        }
        table.insert(key, next);
        let slack = (self.tolerance + self.emission).saturating_sub(next - now);
        Ok(Admitted {
            remaining: u32::try_from(slack / self.emission).unwrap_or(u32::MAX),
            reset: Duration::from_nanos(next - now),
        })
    }

    /// Forgets refilled keys; when none is, one active key (counted in [`Limiter::evicted`]).
    fn make_room(&self, table: &mut HashMap<Key, u64>, now: u64) {
        table.retain(|_, tat| *tat > now);
        if table.len() >= self.per_shard {
            if let Some(victim) = table.keys().next().copied() {
                table.remove(&victim);
                self.evicted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
    }

    /// Keys tracked now.
    pub fn keys(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(PoisonError::into_inner).len())
            .sum()
    }

    /// Active keys forgotten so far because the table was full.
    pub fn evicted(&self) -> u64 {
        self.evicted.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The whole bucket, in requests, and the time it takes to refill: the policy clients are told.
    pub fn window(&self) -> (u32, Duration) {
        let refill = Duration::from_nanos(self.emission.saturating_mul(u64::from(self.config.burst)));
        (self.config.burst, refill)
    }

    fn shard_of(&self, key: &Key) -> usize {
        (self.seed.hash_one(key) % SHARDS as u64) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(requests_per_second: f64, burst: u32) -> RateLimit {
        RateLimit {
            requests_per_second,
            burst,
            key: RateKey::ClientAddress,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_then_the_sustained_rate() {
        let limiter = Limiter::new(&limit(5.0, 10), MAX_KEYS);
        let key = Key::ROUTE;
        for expected in (0..10).rev() {
            assert_eq!(limiter.check(key).map(|a| a.remaining), Ok(expected));
        }
        let refused = limiter.check(key).expect_err("the burst is spent");
        assert_eq!(refused.retry_after, Duration::from_millis(200));
        tokio::time::advance(Duration::from_millis(199)).await;
        assert!(limiter.check(key).is_err(), "not before its time");
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(limiter.check(key).map(|a| a.remaining), Ok(0));
        // Quiet for two seconds: the whole bucket is back.
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(limiter.check(key).map(|a| a.remaining), Ok(9));
    }

    #[tokio::test(start_paused = true)]
    async fn keys_are_counted_apart_and_ipv6_by_its_64() {
        let limiter = Limiter::new(&limit(1.0, 1), MAX_KEYS);
        let a = Key::address("192.0.2.1".parse().unwrap_or(IpAddr::from([0; 4])));
        let b = Key::address("192.0.2.2".parse().unwrap_or(IpAddr::from([0; 4])));
        assert!(limiter.check(a).is_ok() && limiter.check(a).is_err());
        assert!(limiter.check(b).is_ok());
        let v6 = |text: &str| Key::address(text.parse().unwrap_or(IpAddr::from([0; 16])));
        assert_eq!(v6("2001:db8:1:2::1"), v6("2001:db8:1:2:ffff::9"));
        assert_ne!(v6("2001:db8:1:2::1"), v6("2001:db8:1:3::1"));
        assert_eq!(v6("::ffff:192.0.2.1"), a, "a mapped IPv4 address is that address");
    }

    #[tokio::test(start_paused = true)]
    async fn the_table_is_bounded_and_forgets_refilled_keys_first() {
        let limiter = Limiter::new(&limit(10.0, 5), 1_000);
        for n in 0..20_000 {
            assert!(limiter.check(Key::numbered(n)).is_ok());
        }
        assert!(limiter.keys() <= 1_000 + SHARDS, "{} keys", limiter.keys());
        let evicted = limiter.evicted();
        assert!(evicted > 0);
        // Once their buckets refill, old keys go before any active one does.
        tokio::time::advance(Duration::from_secs(1)).await;
        for n in 0..500 {
            assert!(limiter.check(Key::numbered(1_000_000 + n)).is_ok());
        }
        assert_eq!(limiter.evicted(), evicted, "only refilled keys were forgotten");
    }
}
