//! The rate limiters of Phase: a token bucket per key (a peer, a signer, a client address),
//! with a bounded number of keys so a flood of new keys cannot grow memory; and a byte pacer
//! ([`BytePacer`]) for transfers (pulls, shared model files) an operator caps.
//!
//! It lives here, the lowest crate that needs one (the job relay limits each peer); the node
//! core re-exports it and the daemons use it for signers and HTTP clients. The rate is given
//! on every call, so a limit an operator changes at run time applies at once.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::hash::Hash;
use std::time::{Duration, Instant};

/// How often something may happen: bursts of up to `burst`, refilled at `per_second`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    /// Most events at once.
    pub burst: f64,
    /// Events regained per second.
    pub per_second: f64,
}

impl Rate {
    /// `n` a minute, all at once if need be.
    pub fn per_minute(n: u32) -> Self {
        Self { burst: f64::from(n), per_second: f64::from(n) / 60.0 }
    }

    /// `n` a second, in bursts of up to twice that.
    pub fn per_second(n: f64) -> Self {
        Self { burst: (n * 2.0).max(1.0), per_second: n }
    }
}

/// Token buckets by key.
pub struct RateLimiter<K> {
    max_keys: usize,
    buckets: Mutex<HashMap<K, (f64, Instant)>>,
}

impl<K: Hash + Eq + Clone> RateLimiter<K> {
    /// A limiter that remembers at most `max_keys` keys; when full, keys whose bucket has
    /// refilled are forgotten first, and a new key is refused until one has.
    pub fn new(max_keys: usize) -> Self {
        Self { max_keys: max_keys.max(1), buckets: Mutex::new(HashMap::new()) }
    }

    /// Takes one event for `key` at `rate`; `Err` says how long until the next is allowed.
    pub fn take(&self, key: &K, rate: Rate) -> Result<(), Duration> {
        if rate.burst < 1.0 || rate.per_second <= 0.0 {
            return Err(Duration::from_secs(60));
        }
        let now = Instant::now();
        let refilled = |tokens: f64, at: Instant| {
            (tokens + now.duration_since(at).as_secs_f64() * rate.per_second).min(rate.burst)
        };
        let mut buckets = self.buckets.lock();
        if buckets.len() >= self.max_keys && !buckets.contains_key(key) {
            buckets.retain(|_, (tokens, at)| refilled(*tokens, *at) < rate.burst);
            if buckets.len() >= self.max_keys {
                return Err(Duration::from_secs(1));
            }
        }
        let (tokens, at) = buckets.entry(key.clone()).or_insert((rate.burst, now));
        *tokens = refilled(*tokens, *at);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - *tokens) / rate.per_second))
        }
    }
}

/// A shared byte rate: each taker waits its turn after the bytes taken before it, so any
/// number of transfers together stay under the rate (no burst: a pull that is capped at
/// 10 MB/s never sends 100 MB in its first second).
pub struct BytePacer {
    rate: f64,
    next: Mutex<Instant>,
}

impl BytePacer {
    /// Paces to `bytes_per_second` (at least 1).
    pub fn new(bytes_per_second: u64) -> Self {
        Self { rate: bytes_per_second.max(1) as f64, next: Mutex::new(Instant::now()) }
    }

    /// Waits until `bytes` more may go.
    pub async fn take(&self, bytes: u64) {
        let start = {
            let mut next = self.next.lock();
            let start = (*next).max(Instant::now());
            *next = start + Duration::from_secs_f64(bytes as f64 / self.rate);
            start
        };
        tokio::time::sleep_until(start.into()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_pacer_spaces_takers_by_their_bytes() {
        let pacer = BytePacer::new(1000);
        let start = Instant::now();
        pacer.take(0).await;
        pacer.take(100).await;
        pacer.take(100).await;
        // Two takes of 100 bytes at 1000 B/s: the next taker's turn is 0.2 s after the first.
        assert!(*pacer.next.lock() >= start + Duration::from_millis(200));
    }

    #[test]
    fn a_key_gets_its_burst_then_waits_and_others_are_not_affected() {
        let limiter = RateLimiter::new(16);
        let rate = Rate::per_second(2.0);
        for _ in 0..4 {
            assert!(limiter.take(&"a", rate).is_ok());
        }
        let wait = limiter.take(&"a", rate).expect_err("over the burst");
        assert!(wait > Duration::ZERO && wait <= Duration::from_millis(500), "{wait:?}");
        assert!(limiter.take(&"b", rate).is_ok(), "another key is not affected");
        let per_minute = Rate::per_minute(2);
        assert!(limiter.take(&"c", per_minute).is_ok() && limiter.take(&"c", per_minute).is_ok());
        assert!(limiter.take(&"c", per_minute).is_err(), "two a minute");
        assert!(limiter.take(&"d", Rate::per_minute(0)).is_err(), "zero means none");
    }

    #[test]
    fn keys_are_bounded() {
        let limiter = RateLimiter::new(2);
        let rate = Rate::per_minute(1);
        assert!(limiter.take(&1, rate).is_ok() && limiter.take(&2, rate).is_ok());
        assert!(limiter.take(&3, rate).is_err(), "full of keys that have not refilled");
        assert_eq!(limiter.buckets.lock().len(), 2);
    }
}
