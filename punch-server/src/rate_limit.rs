//! Per-source rate limiting in a fixed-size table of token buckets (the workspace's one
//! bucket, [`mesh::limit::TokenBucket`]).
//!
//! Steps for each datagram that would get a response:
//!
//! 1. Key the source: the IPv4 address, or the /64 prefix of an IPv6 address (a single host
//!    usually owns a whole /64, so keying by full address would be trivially evaded).
//! 2. Hash the key with a per-server seed (SipHash via `std`'s `DefaultHasher`) into one of a
//!    fixed number of slots. Sources that collide share a bucket; the table never grows, so
//!    a flood of spoofed sources cannot exhaust memory.
//! 3. Take one token from the slot's bucket (a slot's bucket starts full on its first
//!    use); no token means the datagram is dropped.
//!
//! Time comes in as an [`Instant`] argument (sans-IO); nothing here reads a clock.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::net::IpAddr;
use std::time::Instant;

use mesh::limit::TokenBucket;

/// A bounded per-source token-bucket limiter; see the module docs.
#[derive(Debug, Clone)]
pub struct RateLimiter {
    /// One bucket per slot, made on the slot's first use.
    slots: Vec<Option<TokenBucket>>,
    per_second: u64,
    burst: u64,
    seed: u64,
}

impl RateLimiter {
    /// A limiter allowing `per_second` datagrams per second with bursts of `burst`, per
    /// source, over `slots` hash slots. `per_second == 0` disables limiting (and allocates
    /// no table).
    pub fn new(per_second: u32, burst: u32, slots: usize, seed: u64) -> Self {
        let per_second = u64::from(per_second);
        let slots = if per_second == 0 { 0 } else { slots.max(1) };
        Self {
            slots: vec![None; slots],
            per_second,
            burst: u64::from(burst.max(1)),
            seed,
        }
    }

    /// Whether limiting is on.
    pub fn enabled(&self) -> bool {
        self.per_second != 0
    }

    /// Takes a token for `source` at `now`; `false` means the source is over its rate.
    pub fn allow(&mut self, now: Instant, source: IpAddr) -> bool {
        if !self.enabled() || self.slots.is_empty() {
            return true;
        }
        let index = self.slot_index(source);
        let (per_second, burst) = (self.per_second, self.burst);
        let Some(slot) = self.slots.get_mut(index) else {
            return true;
        };
        slot.get_or_insert_with(|| TokenBucket::new(per_second, burst, now))
            .take(now, 1)
    }

    fn slot_index(&self, source: IpAddr) -> usize {
        let mut h = DefaultHasher::new();
        self.seed.hash(&mut h);
        match source {
            IpAddr::V4(v4) => v4.octets().hash(&mut h),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => v4.octets().hash(&mut h),
                None => v6.octets()[..8].hash(&mut h),
            },
        }
        // Truncation is fine: only the low bits pick the slot.
        (h.finish() as usize) % self.slots.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};
    use std::time::Duration;

    const A: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));

    #[test]
    fn disabled_always_allows() {
        let mut r = RateLimiter::new(0, 1, 16, 1);
        let now = Instant::now();
        assert!((0..10_000).all(|_| r.allow(now, A)));
    }

    #[test]
    fn burst_then_refill() {
        let mut r = RateLimiter::new(10, 5, 64, 1);
        let t0 = Instant::now();
        assert!((0..5).all(|_| r.allow(t0, A)));
        assert!(!r.allow(t0, A));
        // 10/s: one token per 100 ms.
        assert!(!r.allow(t0 + Duration::from_millis(50), A));
        assert!(r.allow(t0 + Duration::from_millis(100), A));
        assert!(!r.allow(t0 + Duration::from_millis(100), A));
        // A long pause refills only up to the burst.
        let later = t0 + Duration::from_secs(100);
        assert_eq!((0..20).filter(|_| r.allow(later, A)).count(), 5);
    }

    #[test]
    fn time_going_backwards_does_not_refill_or_panic() {
        let mut r = RateLimiter::new(10, 1, 64, 1);
        let t0 = Instant::now() + Duration::from_secs(10);
        assert!(r.allow(t0, A));
        assert!(!r.allow(t0 - Duration::from_secs(5), A));
    }

    #[test]
    fn sources_are_independent_and_v6_keys_by_prefix() {
        let mut r = RateLimiter::new(1, 1, 1 << 16, 7);
        let t = Instant::now();
        let b = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2));
        assert!(r.allow(t, A));
        assert!(!r.allow(t, A));
        assert!(r.allow(t, b));
        let v6a = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 1, 0, 0, 0, 1));
        let v6b = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 1, 9, 9, 9, 9));
        assert!(r.allow(t, v6a));
        assert!(!r.allow(t, v6b), "same /64 shares a bucket");
    }

    #[test]
    fn table_is_bounded() {
        let mut r = RateLimiter::new(1, 1, 8, 3);
        let t = Instant::now();
        for i in 0..10_000u32 {
            r.allow(t, IpAddr::V4(Ipv4Addr::from(i)));
        }
        assert_eq!(r.slots.len(), 8);
    }
}
