//! The coordinator's per-peer limits on the caller's clock: token buckets, a peer's
//! connect and attempt buckets ([`PeerLimits`]), and the table that keeps them across
//! reconnects ([`Departed`]).
//!
//! Steps:
//! 1. A connecting peer takes its remembered [`PeerLimits`] out of [`Departed`] if it left
//!    recently, or gets full buckets.
//! 2. Its connection spends from them (connect requests, punch attempts).
//! 3. When the connection goes (disconnect, close, or superseded by a newer connection of
//!    the same peer), its limits go back into [`Departed`] (unless they are full), until
//!    they would be full again anyway; the table holds at most `max_connections` peers, the oldest departures
//!    dropped first.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use mesh::identity::PeerId;

use super::config::{CoordConfig, Rate};

/// The workspace's token bucket ([`mesh::limit`]), one token per connect, attempt or
/// message.
pub(crate) use mesh::limit::TokenBucket;

/// A full bucket of `rate` (tokens refill at `rate.per_sec` up to `rate.burst`; a zero rate
/// never limits).
pub(crate) fn bucket(rate: Rate, now: Instant) -> TokenBucket {
    TokenBucket::new(u64::from(rate.per_sec), u64::from(rate.burst), now)
}

/// How long an empty bucket of `rate` takes to fill up; `None` for no limit.
fn fill_time(rate: Rate) -> Option<Duration> {
    (rate.per_sec != 0).then(|| Duration::from_secs(u64::from(rate.burst)) / rate.per_sec)
}

/// A peer's connect and attempt buckets: they belong to the peer, not to one connection,
/// and outlast it in [`Departed`].
#[derive(Debug, Clone)]
pub(crate) struct PeerLimits {
    /// Connect requests the peer makes (`connect_rate`).
    pub(crate) connects: TokenBucket,
    /// Punch attempts the peer takes part in, as requester or target (`attempt_rate`).
    pub(crate) attempts: TokenBucket,
}

impl PeerLimits {
    /// Full buckets.
    pub(crate) fn new(config: &CoordConfig, now: Instant) -> Self {
        Self {
            connects: bucket(config.connect_rate, now),
            attempts: bucket(config.attempt_rate, now),
        }
    }

    /// Whether both buckets are full at `now`: nothing to remember.
    fn is_full(&mut self, now: Instant) -> bool {
        self.connects.is_full(now) && self.attempts.is_full(now)
    }

    /// The last time either bucket was used: they only refill from then on.
    fn touched(&self) -> Instant {
        self.connects.last_used().max(self.attempts.last_used())
    }
}

/// One remembered departure.
#[derive(Debug)]
struct Departure {
    limits: PeerLimits,
    /// When the buckets are full again, at the latest: the entry is useless from then on.
    expires: Instant,
    /// The queue entry of this departure; queue entries with another number are stale.
    seq: u64,
}

/// The [`PeerLimits`] of peers whose connection went, so that reconnecting (or a new
/// connection superseding the old one) does not refill them.
///
/// Bounded: at most `capacity` peers (the oldest departures are dropped first), each kept
/// only until its buckets would be full again (the longer `burst / per_sec` of the two
/// rates; with no rate at all nothing is kept). The queue holds `(seq, peer)` in departure
/// order, which is expiry order as every entry is kept equally long; entries of peers that
/// came back (or departed again) are stale and skipped, and the queue is compacted when
/// they make it longer than twice the capacity.
#[derive(Debug)]
pub(crate) struct Departed {
    entries: HashMap<PeerId, Departure>,
    queue: VecDeque<(u64, PeerId)>,
    capacity: usize,
    /// How long a departure is kept; `None` when neither rate limits.
    keep: Option<Duration>,
    next_seq: u64,
}

impl Departed {
    /// An empty table for `config`'s rates, holding at most `max_connections` peers.
    pub(crate) fn new(config: &CoordConfig) -> Self {
        Self {
            entries: HashMap::new(),
            queue: VecDeque::new(),
            capacity: config.max_connections,
            keep: fill_time(config.connect_rate).max(fill_time(config.attempt_rate)),
            next_seq: 0,
        }
    }

    /// Remembers the limits of `peer`, whose connection went at `now` (or earlier: the
    /// entry is kept from the later of `now` and the buckets' last use).
    pub(crate) fn insert(&mut self, peer: PeerId, mut limits: PeerLimits, now: Instant) {
        let Some(keep) = self.keep else {
            return;
        };
        if limits.is_full(now) {
            // A fresh connection would get the same; keeping it could only evict others.
            self.entries.remove(&peer);
            return;
        }
        if self.capacity == 0 {
            return;
        }
        self.prune(now);
        let Some(expires) = now.max(limits.touched()).checked_add(keep) else {
            return;
        };
        let seq = self.next_seq;
        self.next_seq = self.next_seq.wrapping_add(1);
        self.entries.insert(
            peer,
            Departure {
                limits,
                expires,
                seq,
            },
        );
        self.queue.push_back((seq, peer));
        // Every entry has its queue item, so this finds one to drop.
        while self.entries.len() > self.capacity {
            let Some((seq, peer)) = self.queue.pop_front() else {
                break;
            };
            self.remove_current(seq, peer);
        }
        if self.queue.len() > self.capacity.saturating_mul(2) {
            let entries = &self.entries;
            self.queue
                .retain(|(seq, peer)| entries.get(peer).is_some_and(|d| d.seq == *seq));
        }
    }

    /// The remembered limits of `peer`, if its buckets are not full again by `now`; the
    /// entry is gone either way.
    pub(crate) fn take(&mut self, peer: &PeerId, now: Instant) -> Option<PeerLimits> {
        self.prune(now);
        let d = self.entries.remove(peer)?;
        (d.expires > now).then_some(d.limits)
    }

    /// Drops the departures expired by `now` (and stale queue items) from the front.
    fn prune(&mut self, now: Instant) {
        while let Some(&(seq, peer)) = self.queue.front() {
            if self
                .entries
                .get(&peer)
                .is_some_and(|d| d.seq == seq && d.expires > now)
            {
                break;
            }
            self.queue.pop_front();
            self.remove_current(seq, peer);
        }
    }

    /// Removes the entry of `peer` if queue item `seq` is its current one.
    fn remove_current(&mut self, seq: u64, peer: PeerId) {
        if let Entry::Occupied(e) = self.entries.entry(peer) {
            if e.get().seq == seq {
                e.remove();
            }
        }
    }

    /// Peers remembered, and queue items (stale ones included), for tests of the bounds.
    #[cfg(test)]
    pub(crate) fn sizes(&self) -> (usize, usize) {
        (self.entries.len(), self.queue.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(n: u8) -> PeerId {
        PeerId::from_bytes([n; 32])
    }

    fn rate(per_sec: u32, burst: u32) -> Rate {
        Rate { per_sec, burst }
    }

    /// Capacity 2; connects fill in 4 s, attempts in 2 s: entries are kept 4 s.
    fn config() -> CoordConfig {
        CoordConfig {
            max_connections: 2,
            connect_rate: rate(1, 4),
            attempt_rate: rate(2, 4),
            ..CoordConfig::default()
        }
    }

    #[test]
    fn burst_then_rate() {
        let t0 = Instant::now();
        let mut b = bucket(rate(2, 3), t0);
        assert!((0..3).all(|_| b.take(t0, 1)));
        assert!(!b.take(t0, 1));
        assert!(!b.take(t0 + Duration::from_millis(400), 1));
        assert!(b.take(t0 + Duration::from_millis(500), 1));
        // Never more than the burst, and a clock going backwards does no harm.
        let later = t0 + Duration::from_secs(100);
        assert!((0..3).all(|_| b.take(later, 1)));
        assert!(!b.take(later, 1));
        assert!(!b.take(t0, 1));
        let mut free = bucket(rate(0, 0), t0);
        assert!((0..1000).all(|_| free.take(t0, 1)));
    }

    #[test]
    fn departures_expire_once_the_buckets_are_full_again() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut d = Departed::new(&config());
        let mut limits = PeerLimits::new(&config(), t0);
        assert!((0..4).all(|_| limits.connects.take(t0, 1)));
        d.insert(peer(1), limits.clone(), t0);
        // Just before the longer fill time (4 s) the spent buckets come back...
        let mut back = d.take(&peer(1), t0 + s(4) - Duration::from_millis(1));
        assert!(back
            .as_mut()
            .is_some_and(|l| !l.connects.take(t0 + s(1) / 2, 1)));
        assert_eq!(d.sizes(), (0, 1), "taken: only a stale queue item is left");
        // ...from then on they would be full anyway: the entry is dropped.
        d.insert(peer(1), limits.clone(), t0);
        assert!(d.take(&peer(1), t0 + s(4)).is_none());
        // Expired entries go when the table is next used, for any peer.
        d.insert(peer(1), limits.clone(), t0);
        d.insert(peer(2), limits.clone(), t0 + s(1));
        assert!(d.take(&peer(3), t0 + s(4)).is_none());
        assert_eq!(d.sizes(), (1, 1));
        // Kept from the buckets' last use if the departure time given is older.
        assert!(limits.connects.ready(t0 + s(2), 1));
        d.insert(peer(3), limits, t0);
        assert!(d.take(&peer(3), t0 + s(5)).is_some());
        // Full buckets are not kept either: a new connection gets the same.
        d.insert(peer(4), PeerLimits::new(&config(), t0), t0);
        assert!(d.take(&peer(4), t0).is_none());
        // Without any rate nothing is kept.
        let none = rate(0, 0);
        let free = CoordConfig {
            connect_rate: none,
            attempt_rate: none,
            ..config()
        };
        let mut d = Departed::new(&free);
        d.insert(peer(1), PeerLimits::new(&free, t0), t0);
        assert_eq!(d.sizes(), (0, 0));
    }

    #[test]
    fn departures_are_bounded_oldest_first() {
        let t0 = Instant::now();
        let mut d = Departed::new(&config());
        let mut limits = PeerLimits::new(&config(), t0);
        // Only spent limits are worth keeping.
        assert!(limits.attempts.take(t0, 1));
        for n in 1..=3 {
            d.insert(peer(n), limits.clone(), t0);
        }
        assert_eq!(d.sizes().0, 2);
        assert!(d.take(&peer(1), t0).is_none(), "the oldest was dropped");
        assert!(d.take(&peer(3), t0).is_some());
        // A peer coming and going behind a long-kept one leaves stale queue items; they
        // never make the queue longer than twice the capacity.
        for _ in 0..100 {
            d.insert(peer(4), limits.clone(), t0);
            assert!(d.take(&peer(4), t0).is_some());
            let (entries, queued) = d.sizes();
            assert!(entries <= 2 && queued <= 4, "{entries} {queued}");
        }
        assert!(d.take(&peer(2), t0).is_some(), "the live entry survived");
    }
}
