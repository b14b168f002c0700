//! The relay port pool and EVEN-PORT reservations (RFC 8656 sections 7.2 and 14.9).
//!
//! Steps:
//!
//! 1. [`PortPool::pick`] chooses a free port of the range at random (RFC 8656 section
//!    7.2 asks for unpredictable ports), even if EVEN-PORT asked, and with its successor
//!    free too if the R bit asked to reserve it.
//! 2. The port stays taken until the allocation is freed ([`PortPool::release`]); a port
//!    the driver could not bind is released and another one picked.
//! 3. With the R bit, the successor is taken as well and kept in [`Reservations`] under a
//!    random 8-byte token for [`RESERVATION_LIFETIME`]; an Allocate with
//!    RESERVATION-TOKEN claims it, and an unclaimed one is released when it expires.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rand::Rng;

use crate::config::PortRange;

/// How long a reserved port waits for its RESERVATION-TOKEN (RFC 8656 suggests about 30 s).
pub const RESERVATION_LIFETIME: Duration = Duration::from_secs(30);

/// Which ports of the range are taken (a 65 536-bit set, 8 KiB).
#[derive(Debug)]
pub(crate) struct PortPool {
    range: PortRange,
    used: Vec<u64>,
    taken: usize,
}

impl PortPool {
    pub fn new(range: PortRange) -> Self {
        Self {
            range,
            used: vec![0; 1024],
            taken: 0,
        }
    }

    /// Whether `port` is in the range and taken.
    pub fn is_taken(&self, port: u16) -> bool {
        let (word, bit) = (usize::from(port) / 64, port % 64);
        self.used.get(word).is_some_and(|w| w & (1 << bit) != 0)
    }

    /// Marks `port` taken; `false` if it is outside the range or already taken.
    pub fn take(&mut self, port: u16) -> bool {
        if !self.range.contains(port) || self.is_taken(port) {
            return false;
        }
        if let Some(w) = self.used.get_mut(usize::from(port) / 64) {
            *w |= 1 << (port % 64);
            self.taken += 1;
        }
        true
    }

    /// Frees `port` (no-op if it was free).
    pub fn release(&mut self, port: u16) {
        if !self.is_taken(port) {
            return;
        }
        if let Some(w) = self.used.get_mut(usize::from(port) / 64) {
            *w &= !(1 << (port % 64));
            self.taken -= 1;
        }
    }

    /// Picks and takes a free port at random: even if `even`, and with its successor
    /// free (and taken too) if `pair`. `None` if none qualifies.
    pub fn pick(&mut self, rng: &mut impl Rng, even: bool, pair: bool) -> Option<u16> {
        let len = self.range.len();
        if self.taken >= len {
            return None;
        }
        let start = rng.gen_range(0..len);
        for i in 0..len {
            let offset = (start + i) % len;
            let Ok(offset) = u16::try_from(offset) else {
                continue;
            };
            let port = self.range.lo.saturating_add(offset);
            if (even && port % 2 != 0) || self.is_taken(port) {
                continue;
            }
            if pair {
                let next = port.checked_add(1).filter(|n| self.range.contains(*n));
                match next {
                    Some(n) if !self.is_taken(n) => {
                        self.take(port);
                        self.take(n);
                        return Some(port);
                    }
                    _ => continue,
                }
            }
            self.take(port);
            return Some(port);
        }
        None
    }
}

/// A port held for a later Allocate with its token.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Reservation {
    pub port: u16,
    pub expires: Instant,
}

/// Outstanding reservations by token (bounded by `max_reservations`).
#[derive(Debug, Default)]
pub(crate) struct Reservations {
    by_token: HashMap<[u8; 8], Reservation>,
}

impl Reservations {
    pub fn len(&self) -> usize {
        self.by_token.len()
    }

    /// Adds a reservation of `port` under a fresh random token.
    pub fn add(&mut self, rng: &mut impl Rng, port: u16, now: Instant) -> [u8; 8] {
        loop {
            let token: [u8; 8] = rng.gen();
            if let std::collections::hash_map::Entry::Vacant(e) = self.by_token.entry(token) {
                e.insert(Reservation {
                    port,
                    expires: now + RESERVATION_LIFETIME,
                });
                return token;
            }
        }
    }

    /// Claims the reservation of `token` if it is live; the port stays taken.
    pub fn claim(&mut self, token: &[u8], now: Instant) -> Option<u16> {
        let token: [u8; 8] = token.try_into().ok()?;
        let r = self.by_token.remove(&token)?;
        (r.expires > now).then_some(r.port)
    }

    /// Removes expired reservations; returns their ports (to release).
    pub fn expire(&mut self, now: Instant) -> Vec<u16> {
        let mut freed = Vec::new();
        self.by_token.retain(|_, r| {
            let live = r.expires > now;
            if !live {
                freed.push(r.port);
            }
            live
        });
        freed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    #[test]
    fn pool_hands_out_each_port_once() {
        let mut rng = StdRng::seed_from_u64(1);
        let mut pool = PortPool::new(PortRange {
            lo: 50000,
            hi: 50009,
        });
        let mut got: Vec<u16> = (0..10)
            .filter_map(|_| pool.pick(&mut rng, false, false))
            .collect();
        got.sort_unstable();
        assert_eq!(got, (50000..=50009).collect::<Vec<_>>());
        assert_eq!(pool.pick(&mut rng, false, false), None);
        pool.release(50004);
        assert_eq!(pool.pick(&mut rng, false, false), Some(50004));
        assert!(!pool.take(40000), "outside the range");
    }

    #[test]
    fn even_and_pairs() {
        let mut rng = StdRng::seed_from_u64(2);
        let mut pool = PortPool::new(PortRange {
            lo: 50001,
            hi: 50006,
        });
        let p = pool.pick(&mut rng, true, true).expect("pair");
        assert_eq!(p % 2, 0);
        assert!(pool.is_taken(p) && pool.is_taken(p + 1));
        let q = pool.pick(&mut rng, true, true).expect("second pair");
        assert_ne!(p, q);
        // 50001 and 50006 are left: no even pair, but 50006 is even.
        assert_eq!(pool.pick(&mut rng, true, true), None);
        assert_eq!(pool.pick(&mut rng, true, false), Some(50006));
    }

    #[test]
    fn reservations_are_claimed_once_and_expire() {
        let mut rng = StdRng::seed_from_u64(3);
        let t0 = Instant::now();
        let mut r = Reservations::default();
        let token = r.add(&mut rng, 50001, t0);
        assert_eq!(r.claim(&token, t0), Some(50001));
        assert_eq!(r.claim(&token, t0), None, "claimed once");
        let token = r.add(&mut rng, 50003, t0);
        assert_eq!(r.claim(&token[..7], t0), None, "wrong length");
        assert_eq!(r.expire(t0 + RESERVATION_LIFETIME), vec![50003]);
        assert_eq!(r.len(), 0);
    }
}
