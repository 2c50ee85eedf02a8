//! Per-caller rate limits: one token bucket per caller and class (creates, reads), kept in
//! this replica's memory. Each replica enforces the whole limit on its own: with N replicas
//! behind a balancer a caller may reach N times the limit, which keeps the check off the
//! network on every request (docs/api.md says so).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// Which bucket a request draws from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RateClass {
    /// `POST /v1/videos`.
    Create = 0,
    /// Every other API request.
    Read = 1,
}

/// Rate-limit settings (`[gateway.rate_limit]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitConfig {
    /// Creates per minute per caller (also the burst).
    pub creates_per_minute: u32,
    /// Reads per minute per caller (also the burst).
    pub reads_per_minute: u32,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        Self {
            creates_per_minute: 600,
            reads_per_minute: 6_000,
        }
    }
}

/// The outcome of one draw, with what the `RateLimit-*` headers say.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Decision {
    /// Whether the request may go on.
    pub allowed: bool,
    /// The bucket's size (`RateLimit-Limit`).
    pub limit: u32,
    /// Whole tokens left after this request (`RateLimit-Remaining`).
    pub remaining: u32,
    /// Seconds until the bucket is full again (`RateLimit-Reset`).
    pub reset_s: u64,
    /// Seconds until the next token (`Retry-After` when refused).
    pub retry_after_s: u64,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Buckets of every caller seen recently: `[create, read]` per caller.
#[derive(Debug)]
pub struct RateLimiter {
    config: RateLimitConfig,
    buckets: Mutex<HashMap<String, [Bucket; 2]>>,
}

/// Buckets kept before full ones are dropped (a full bucket is the same as no bucket).
const PRUNE_ABOVE: usize = 10_000;

impl RateLimiter {
    /// Limits with `config`.
    pub fn new(config: RateLimitConfig) -> Self {
        Self {
            config,
            buckets: Mutex::default(),
        }
    }

    /// Takes one token from `caller`'s bucket of `class`, at `now`.
    pub fn check(&self, caller: &str, class: RateClass, now: Instant) -> Decision {
        let per_minute = self.per_minute(class);
        let capacity = f64::from(per_minute.max(1));
        let rate = capacity / 60.0;
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() > PRUNE_ABOVE {
            // A caller whose two buckets have refilled is the same as one never seen.
            buckets.retain(|_, pair| {
                [RateClass::Create, RateClass::Read]
                    .into_iter()
                    .any(|class| !self.refilled(&pair[class as usize], class, now))
            });
        }
        // The caller's name is copied only when it is first seen, not on every request.
        if !buckets.contains_key(caller) {
            let full = |class| Bucket {
                tokens: f64::from(self.per_minute(class).max(1)),
                at: now,
            };
            buckets.insert(
                caller.to_owned(),
                [full(RateClass::Create), full(RateClass::Read)],
            );
        }
        let pair = buckets.get_mut(caller).expect("inserted above if absent");
        let bucket = &mut pair[class as usize];
        let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * rate).min(capacity);
        bucket.at = now;
        let allowed = bucket.tokens >= 1.0;
        if allowed {
            bucket.tokens -= 1.0;
        }
        let to_full = Duration::from_secs_f64((capacity - bucket.tokens) / rate);
        let to_next = Duration::from_secs_f64(((1.0 - bucket.tokens) / rate).max(0.0));
        Decision {
            allowed,
            limit: per_minute,
            // Whole tokens: the value is below 2^32 as tokens never exceed `capacity`.
            remaining: bucket.tokens.floor() as u32,
            reset_s: to_full.as_secs_f64().ceil() as u64,
            retry_after_s: (to_next.as_secs_f64().ceil() as u64).max(1),
        }
    }

    fn per_minute(&self, class: RateClass) -> u32 {
        match class {
            RateClass::Create => self.config.creates_per_minute,
            RateClass::Read => self.config.reads_per_minute,
        }
    }

    /// Whether `bucket` of `class` is full again at `now`.
    fn refilled(&self, bucket: &Bucket, class: RateClass, now: Instant) -> bool {
        let capacity = f64::from(self.per_minute(class).max(1));
        let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
        bucket.tokens + elapsed * capacity / 60.0 >= capacity
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(creates: u32) -> RateLimiter {
        RateLimiter::new(RateLimitConfig {
            creates_per_minute: creates,
            reads_per_minute: 100,
        })
    }

    #[test]
    fn the_burst_is_the_limit_then_refusals_say_when_to_retry() {
        let limiter = limiter(3);
        let now = Instant::now();
        let remaining: Vec<u32> = (0..3)
            .map(|_| limiter.check("k", RateClass::Create, now))
            .inspect(|d| assert!(d.allowed))
            .map(|d| d.remaining)
            .collect();
        assert_eq!(remaining, [2, 1, 0]);
        let refused = limiter.check("k", RateClass::Create, now);
        assert!(!refused.allowed);
        assert_eq!(refused.retry_after_s, 20, "one token per 20 s at 3/min");
        assert_eq!(refused.reset_s, 60);
        // Reads and other callers have their own buckets.
        assert!(limiter.check("k", RateClass::Read, now).allowed);
        assert!(limiter.check("other", RateClass::Create, now).allowed);
    }

    #[test]
    fn tokens_come_back_at_the_rate() {
        let limiter = limiter(60);
        let start = Instant::now();
        for _ in 0..60 {
            assert!(limiter.check("k", RateClass::Create, start).allowed);
        }
        assert!(!limiter.check("k", RateClass::Create, start).allowed);
        let later = start + Duration::from_millis(2_100);
        assert!(limiter.check("k", RateClass::Create, later).allowed);
        assert!(limiter.check("k", RateClass::Create, later).allowed);
        assert!(!limiter.check("k", RateClass::Create, later).allowed);
    }

    #[test]
    fn pruning_judges_each_bucket_by_its_own_size() {
        let limiter = limiter(600);
        let now = Instant::now();
        for _ in 0..600 {
            assert!(limiter.check("hot", RateClass::Create, now).allowed);
        }
        for i in 0..=PRUNE_ABOVE {
            limiter.check(&format!("c{i}"), RateClass::Read, now);
        }
        // 15 s later "hot" has 150 of its 600 creates back: more than a full read bucket
        // (100), yet not full. A prune run by a read must keep it, not reset it to 600.
        let later = now + Duration::from_secs(15);
        limiter.check("someone", RateClass::Read, later);
        let decision = limiter.check("hot", RateClass::Create, later);
        assert_eq!(decision.remaining, 149);
    }
}
