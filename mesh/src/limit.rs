//! The workspace's one token bucket: a sans-IO rate limiter that takes the time as an
//! argument.
//!
//! Tokens refill continuously at `per_sec` up to `burst`; [`TokenBucket::take`] spends
//! them (a packet, a byte count, a request). A zero rate never limits. The bucket starts
//! full.

use std::time::Instant;

/// A token bucket (see the module docs).
#[derive(Debug, Clone)]
pub struct TokenBucket {
    per_sec: u64,
    burst: u64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket refilling `per_sec` tokens a second up to `burst` (0 = unlimited).
    pub fn new(per_sec: u64, burst: u64, now: Instant) -> Self {
        Self {
            per_sec,
            burst,
            tokens: burst as f64,
            last: now,
        }
    }

    /// Whether the bucket never limits.
    pub fn is_unlimited(&self) -> bool {
        self.per_sec == 0
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = self.last.max(now);
        self.tokens = (self.tokens + elapsed * self.per_sec as f64).min(self.burst as f64);
    }

    /// Whether `n` tokens are available at `now` (without taking them).
    pub fn ready(&mut self, now: Instant, n: u64) -> bool {
        if self.is_unlimited() {
            return true;
        }
        self.refill(now);
        self.tokens >= n as f64
    }

    /// Takes `n` tokens if they are available; `false` (nothing taken) otherwise.
    pub fn take(&mut self, now: Instant, n: u64) -> bool {
        if !self.ready(now, n) {
            return false;
        }
        if !self.is_unlimited() {
            self.tokens -= n as f64;
        }
        true
    }

    /// The latest time the bucket was refilled or spent (it refills from then on).
    pub fn last_used(&self) -> Instant {
        self.last
    }

    /// Whether the bucket is full at `now` (an unlimited one always is).
    pub fn is_full(&mut self, now: Instant) -> bool {
        if self.is_unlimited() {
            return true;
        }
        self.refill(now);
        self.tokens >= self.burst as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn tokens_refill_at_the_rate_up_to_the_burst() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(1000, 100, t0);
        assert!(b.take(t0, 100));
        assert!(!b.take(t0, 1), "empty after the burst");
        assert!(
            b.take(t0 + Duration::from_millis(10), 10),
            "10 ms refill 10"
        );
        assert!(!b.take(t0 + Duration::from_millis(10), 1));
        assert!(
            b.is_full(t0 + Duration::from_secs(5)),
            "capped at the burst"
        );
        assert!(
            !b.take(t0 + Duration::from_secs(5), 101),
            "never above the burst"
        );
        // A clock that goes back takes nothing and gives nothing.
        assert!(b.take(t0, 100));
    }

    #[test]
    fn a_zero_rate_never_limits() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(0, 0, t0);
        assert!(b.take(t0, u64::MAX));
        assert!(b.is_full(t0));
    }
}
