//! A token bucket on the caller's clock, for the coordinator's per-peer limits.

use std::time::Instant;

use super::config::Rate;

/// Tokens refill at `rate.per_sec`, up to `rate.burst`; a zero rate never limits.
#[derive(Debug, Clone)]
pub(crate) struct TokenBucket {
    rate: Rate,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub(crate) fn new(rate: Rate, now: Instant) -> Self {
        Self {
            rate,
            tokens: f64::from(rate.burst),
            last: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = self.last.max(now);
        self.tokens =
            (self.tokens + elapsed * f64::from(self.rate.per_sec)).min(f64::from(self.rate.burst));
    }

    /// Whether a token is available now (without taking it).
    pub(crate) fn ready(&mut self, now: Instant) -> bool {
        if self.rate.per_sec == 0 {
            return true;
        }
        self.refill(now);
        self.tokens >= 1.0
    }

    /// Takes a token if one is available.
    pub(crate) fn take(&mut self, now: Instant) -> bool {
        if !self.ready(now) {
            return false;
        }
        if self.rate.per_sec != 0 {
            self.tokens -= 1.0;
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn burst_then_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(
            Rate {
                per_sec: 2,
                burst: 3,
            },
            t0,
        );
        assert!((0..3).all(|_| b.take(t0)));
        assert!(!b.take(t0));
        assert!(!b.take(t0 + Duration::from_millis(400)));
        assert!(b.take(t0 + Duration::from_millis(500)));
        // Never more than the burst, and a clock going backwards does no harm.
        let later = t0 + Duration::from_secs(100);
        assert!((0..3).all(|_| b.take(later)));
        assert!(!b.take(later));
        assert!(!b.take(t0));
        let mut free = TokenBucket::new(
            Rate {
                per_sec: 0,
                burst: 0,
            },
            t0,
        );
        assert!((0..1000).all(|_| free.take(t0)));
    }
}
