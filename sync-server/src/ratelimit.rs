//! Per-caller token buckets for api.md's rate limits (polling 60/min, reconcile 10/min, …).
//! A bucket holds `limit` tokens and refills continuously over `window`; a refused call learns
//! how many seconds until a token is back (`Retry-After`). The bucket itself is sdk-core's
//! ([`sdk_core::pacing::Bucket`]): the browser's pacer mirrors exactly this rule.

use sdk_core::pacing;
use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy)]
pub struct Rate {
    pub limit: u32,
    pub window: Duration,
}

impl Rate {
    pub const fn per_minute(limit: u32) -> Self {
        Self { limit, window: Duration::from_secs(60) }
    }

    pub const fn per_second(limit: u32) -> Self {
        Self { limit, window: Duration::from_secs(1) }
    }

    /// The same rate as sdk-core and the wire say it (what `connected` announces).
    pub fn wire(self) -> pacing::Rate {
        pacing::Rate { limit: self.limit, window_ms: self.window.as_millis() as u64 }
    }
}

/// Milliseconds since the process's first use of a bucket: sdk-core's clock for `now`.
fn ms(now: Instant) -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let epoch = *EPOCH.get_or_init(|| Instant::now() - Duration::from_secs(3600));
    now.saturating_duration_since(epoch).as_millis() as u64
}

/// Whole seconds to wait, at least one (`Retry-After`).
fn seconds(wait_ms: u64, rate: Rate) -> u64 {
    if wait_ms == u64::MAX {
        return rate.window.as_secs().max(1);
    }
    wait_ms.div_ceil(1000).max(1)
}

/// One caller's bucket, for a caller that owns its own (a connection): no shared lock.
#[derive(Debug, Clone, Copy)]
pub struct Bucket(pacing::Bucket);

impl Bucket {
    pub fn full(rate: Rate, now: Instant) -> Self {
        Self(pacing::Bucket::full(rate.wire(), ms(now)))
    }

    /// Take a token at `now`; `Err(seconds until one is available)` when empty.
    pub fn take(&mut self, rate: Rate, now: Instant) -> Result<(), u64> {
        self.take_n(rate, now, 1)
    }

    /// Take `n` tokens at once (a batch counts each item), or none.
    pub fn take_n(&mut self, rate: Rate, now: Instant, n: u32) -> Result<(), u64> {
        self.0.take_n(rate.wire(), ms(now), n.max(1)).map_err(|w| seconds(w, rate))
    }

    fn is_full(&self, rate: Rate, now: Instant) -> bool {
        self.0.available(rate.wire(), ms(now)) >= rate.limit
    }

    /// What is left at `now` (the `RateLimit-*` headers).
    pub fn quota(&self, rate: Rate, now: Instant) -> Quota {
        let at = ms(now);
        let full_at = self.0.ready_at(rate.wire(), at, rate.limit);
        Quota {
            limit: rate.limit,
            remaining: self.0.available(rate.wire(), at),
            reset_secs: full_at.saturating_sub(at).div_ceil(1000),
            window_secs: rate.window.as_secs().max(1),
        }
    }
}

/// A caller's standing after a call: what the `RateLimit-Limit`, `RateLimit-Remaining`,
/// `RateLimit-Reset` (seconds until the bucket is full again) and `RateLimit-Policy` headers say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    pub limit: u32,
    pub remaining: u32,
    pub reset_secs: u64,
    pub window_secs: u64,
}

#[derive(Debug, Default)]
pub struct RateLimiter {
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl RateLimiter {
    /// Take a token for `key` at `now`; `Err(seconds until one is available)` when empty.
    pub fn check(&self, key: &str, rate: Rate, now: Instant) -> Result<(), u64> {
        self.check_n(key, rate, now, 1)
    }

    /// Take `n` tokens for `key` at `now`, or none.
    pub fn check_n(&self, key: &str, rate: Rate, now: Instant, n: u32) -> Result<(), u64> {
        self.check_quota(key, rate, now, n).0
    }

    /// [`RateLimiter::check_n`], and the caller's quota after it.
    pub fn check_quota(
        &self,
        key: &str,
        rate: Rate,
        now: Instant,
        n: u32,
    ) -> (Result<(), u64>, Quota) {
        if rate.limit == 0 {
            let window_secs = rate.window.as_secs().max(1);
            let none = Quota { limit: 0, remaining: 0, reset_secs: window_secs, window_secs };
            return (Err(window_secs), none);
        }
        let mut buckets = self.buckets.lock().expect("rate limiter lock");
        if buckets.len() > 100_000 {
            // Forget full buckets so memory stays bounded under many distinct callers.
            buckets.retain(|_, b| !b.is_full(rate, now));
        }
        let bucket = buckets.entry(key.to_string()).or_insert_with(|| Bucket::full(rate, now));
        let taken = bucket.take_n(rate, now, n);
        (taken, bucket.quota(rate, now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_allows_its_limit_then_refuses_and_refills_over_the_window() {
        let rl = RateLimiter::default();
        let t0 = Instant::now();
        let rate = Rate::per_minute(10);
        for _ in 0..10 {
            rl.check("u", rate, t0).unwrap();
        }
        let wait = rl.check("u", rate, t0).unwrap_err();
        assert_eq!(wait, 6, "one token per 6 s");
        assert!(rl.check("other", rate, t0).is_ok(), "buckets are per caller");
        assert!(rl.check("u", rate, t0 + Duration::from_secs(6)).is_ok());
        assert!(rl.check("u", rate, t0 + Duration::from_secs(6)).is_err());
    }

    #[test]
    fn the_quota_says_what_is_left_and_when_the_bucket_is_full_again() {
        let rl = RateLimiter::default();
        let t0 = Instant::now();
        let rate = Rate::per_minute(10);
        let (ok, q) = rl.check_quota("u", rate, t0, 1);
        assert!(ok.is_ok());
        assert_eq!(q, Quota { limit: 10, remaining: 9, reset_secs: 6, window_secs: 60 });
        for _ in 0..9 {
            rl.check("u", rate, t0).unwrap();
        }
        let (refused, q) = rl.check_quota("u", rate, t0, 1);
        assert_eq!(refused, Err(6));
        assert_eq!((q.remaining, q.reset_secs), (0, 60));
    }

    #[test]
    fn a_batch_takes_one_token_per_item_or_none() {
        let rl = RateLimiter::default();
        let t0 = Instant::now();
        let rate = Rate::per_second(1000);
        rl.check_n("svc", rate, t0, 600).unwrap();
        assert_eq!(
            rl.check_n("svc", rate, t0, 500),
            Err(1),
            "400 left: the batch is refused whole"
        );
        rl.check_n("svc", rate, t0, 400).unwrap();
        assert!(rl.check_n("svc", rate, t0, 1001).is_err(), "larger than the bucket: never");
    }
}
