//! `--rate-limit-tokens-per-second`: a token bucket per shard. A request admitted to
//! the proxy takes a token; without one it gets 429 with `Retry-After` (when the next
//! token comes), which OpenAI's SDKs honour. The router-wide rate is split evenly over
//! the shards, like the admission limits: exact when connections spread evenly, and a
//! single busy connection meets one shard's share.
//!
//! 0.1.17 gives tokens back when a request ends and starts with
//! `--max-concurrent-requests` of them, so its "rate" limits nothing until that many
//! requests run at once; here a token is spent, so the flag caps requests per second,
//! with a burst of one second's worth.

use std::cell::Cell;
use std::time::{Duration, Instant};

/// One shard's bucket.
pub struct TokenBucket {
    per_second: f64,
    capacity: f64,
    tokens: Cell<f64>,
    refilled: Cell<Instant>,
}

impl TokenBucket {
    /// `per_second` is this shard's share of the rate; it starts full.
    pub fn new(per_second: f64, now: Instant) -> Self {
        let per_second = per_second.max(f64::MIN_POSITIVE);
        let capacity = per_second.max(1.0);
        TokenBucket {
            per_second,
            capacity,
            tokens: Cell::new(capacity),
            refilled: Cell::new(now),
        }
    }

    /// Takes a token, or says how long until one is there.
    pub fn take(&self, now: Instant) -> Result<(), Duration> {
        let elapsed = now
            .saturating_duration_since(self.refilled.get())
            .as_secs_f64();
        let tokens = (self.tokens.get() + elapsed * self.per_second).min(self.capacity);
        self.refilled.set(now);
        if tokens >= 1.0 {
            self.tokens.set(tokens - 1.0);
            return Ok(());
        }
        self.tokens.set(tokens);
        Err(Duration::from_secs_f64((1.0 - tokens) / self.per_second))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_of_one_second_then_the_rate() {
        let t0 = Instant::now();
        let b = TokenBucket::new(2.0, t0);
        assert!(b.take(t0).is_ok());
        assert!(b.take(t0).is_ok());
        let wait = b.take(t0).unwrap_err();
        assert_eq!(wait, Duration::from_millis(500));
        assert!(b.take(t0 + Duration::from_millis(499)).is_err());
        assert!(b.take(t0 + Duration::from_millis(500)).is_ok());
        // Idle for long, the bucket holds one second's worth, no more.
        let later = t0 + Duration::from_secs(60);
        assert!(b.take(later).is_ok() && b.take(later).is_ok());
        assert!(b.take(later).is_err());
    }

    #[test]
    fn a_slow_rate_still_admits_one() {
        let t0 = Instant::now();
        let b = TokenBucket::new(0.5, t0);
        assert!(b.take(t0).is_ok());
        assert_eq!(b.take(t0).unwrap_err(), Duration::from_secs(2));
    }
}
