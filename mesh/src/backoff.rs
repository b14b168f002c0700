//! The workspace's one retry backoff: sans-IO, doubling from `min` up to `max`, each
//! delay scaled by a random factor in [0.75, 1.25] so that many clients retrying against
//! a restarted server spread out instead of arriving together.
//!
//! Steps:
//! 1. [`Backoff::next`] returns the current delay with ±25 % jitter, then doubles the
//!    current delay (saturating, capped at `max`).
//! 2. After a success, [`Backoff::reset`] goes back to `min`.
//!
//! `max` caps the un-jittered delay, so a returned delay is at most `max × 1.25`.
//! Arithmetic saturates: `Duration::MAX` ("never") neither overflows nor panics.
//! The caller passes the random number generator, so tests can seed it.

use std::time::Duration;

use rand::Rng;

/// Exponential backoff with jitter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    current: Duration,
}

impl Backoff {
    /// A backoff starting at `min` and doubling up to `max` (raised to `min` if smaller).
    pub fn new(min: Duration, max: Duration) -> Self {
        Backoff {
            min,
            max: max.max(min),
            current: min,
        }
    }

    /// The delay before the next attempt (jittered), then doubles the base delay.
    pub fn next(&mut self, rng: &mut impl Rng) -> Duration {
        let delay = jitter(self.current, rng);
        self.current = self.current.saturating_mul(2).min(self.max);
        delay
    }

    /// Back to `min` (after a success).
    pub fn reset(&mut self) {
        self.current = self.min;
    }

    /// The base (un-jittered) delay the next call to [`Backoff::next`] uses.
    pub fn current(&self) -> Duration {
        self.current
    }

    /// The smallest base delay.
    pub fn min(&self) -> Duration {
        self.min
    }

    /// The largest base delay.
    pub fn max(&self) -> Duration {
        self.max
    }
}

/// `d` scaled by a random factor in [0.75, 1.25], saturating at `Duration::MAX`.
pub fn jitter(d: Duration, rng: &mut impl Rng) -> Duration {
    let factor = rng.gen_range(0.75..=1.25);
    Duration::try_from_secs_f64(d.as_secs_f64() * factor).unwrap_or(Duration::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    #[test]
    fn jitter_stays_within_a_quarter_and_saturates() {
        let mut rng = StdRng::seed_from_u64(7);
        let d = Duration::from_millis(400);
        let mut seen_low = false;
        let mut seen_high = false;
        for _ in 0..1000 {
            let j = jitter(d, &mut rng);
            assert!(j >= Duration::from_millis(300) && j <= Duration::from_millis(500));
            seen_low |= j < Duration::from_millis(350);
            seen_high |= j > Duration::from_millis(450);
        }
        assert!(seen_low && seen_high, "jitter spreads over the whole range");
        assert!(jitter(Duration::MAX, &mut rng) >= Duration::MAX.mul_f64(0.74));
        assert_eq!(jitter(Duration::ZERO, &mut rng), Duration::ZERO);
    }

    #[test]
    fn doubles_up_to_max_and_resets() {
        let mut rng = StdRng::seed_from_u64(1);
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(1000));
        let mut bases = Vec::new();
        for _ in 0..7 {
            bases.push(b.current().as_millis());
            let d = b.next(&mut rng);
            let base = *bases.last().unwrap_or(&0) as f64;
            let ms = d.as_secs_f64() * 1000.0;
            assert!(
                ms >= base * 0.75 - 1e-6 && ms <= base * 1.25 + 1e-6,
                "{ms} vs {base}"
            );
        }
        assert_eq!(bases, vec![100, 200, 400, 800, 1000, 1000, 1000]);
        b.reset();
        assert_eq!(b.current(), Duration::from_millis(100));
    }

    #[test]
    fn never_overflows() {
        let mut rng = StdRng::seed_from_u64(2);
        let mut b = Backoff::new(Duration::from_secs(1), Duration::MAX);
        for _ in 0..200 {
            let _ = b.next(&mut rng);
        }
        assert_eq!(b.current(), Duration::MAX);
        assert!(b.next(&mut rng) >= Duration::MAX.mul_f64(0.74));
        let mut huge = Backoff::new(Duration::MAX, Duration::ZERO);
        assert_eq!(huge.max(), Duration::MAX, "max is raised to min");
        let _ = huge.next(&mut rng);
        assert_eq!(huge.current(), Duration::MAX);
    }
}
