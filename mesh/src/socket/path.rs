//! Sans-IO path table: stable synthetic addresses for quinn, mapped to live network paths.
//!
//! Flow:
//! 1. quinn never sees a real address. Each remote peer gets a synthetic IPv6 address in
//!    [`SYNTHETIC_NET`] (a ULA /64, RFC 4193, that this crate reserves; never routed, never
//!    sent to), with a 64-bit interface id that is never reused.
//! 2. Dialing: [`PathTable::dial_peer`] gives the peer's synthetic address (creating it, or
//!    moving the existing one to a new [`Path`]); [`PathTable::dial_remote`] gives the one of
//!    a remote whose key is not known yet. quinn connects to that address. Both tell whether
//!    they created the entry ([`DialTarget::created`]), so a failed dial removes only its own.
//! 3. Sending (per packet): [`PathTable::resolve`] turns quinn's synthetic destination into
//!    the live path. An unknown synthetic address resolves to nothing: the caller drops the
//!    packet and counts it.
//! 4. Receiving (per packet): [`PathTable::on_incoming`] turns the real source into its
//!    synthetic address; an unknown source (a peer dialing us) is learned, up to the table's
//!    capacity. When full, an entry idle for longer than the idle timeout (longer than QUIC's
//!    idle timeout) is evicted, learned entries first; if none is, the datagram is dropped.
//! 5. [`PathTable::set_path`] moves a synthetic address to a new path, so a live QUIC
//!    connection (RFC 9000) switches between direct and relayed paths without noticing.
//!
//! Nothing here does I/O or reads a clock: callers pass `now`.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use crate::identity::PeerId;

/// The network of synthetic addresses: `fd6d:6573:6800:1::/64` ("mesh" in the ULA global id).
pub const SYNTHETIC_NET: [u16; 4] = [0xfd6d, 0x6573, 0x6800, 0x0001];

/// The UDP port of every synthetic address (any non-zero value; quinn rejects port 0).
pub const SYNTHETIC_PORT: u16 = 1;

/// Default bound on the number of entries.
pub const DEFAULT_CAPACITY: usize = 4096;

/// Default idle time after which an entry may be evicted from a full table; well above quinn's
/// default 30 s idle timeout, so no live connection loses its path.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(120);

/// How datagrams for one synthetic address reach the peer.
///
/// New variants (TURN channel, router peer) come with relays.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Path {
    /// Straight to the peer's address.
    Direct(SocketAddr),
}

impl Path {
    /// The real address datagrams on this path are sent to.
    pub fn remote(&self) -> SocketAddr {
        match self {
            Path::Direct(addr) => *addr,
        }
    }
}

/// Whether `addr` lies in the synthetic network.
#[inline]
pub fn is_synthetic(addr: &SocketAddr) -> bool {
    synthetic_id(addr).is_some()
}

/// The interface id of a synthetic address, or `None` for any other address.
#[inline]
pub fn synthetic_id(addr: &SocketAddr) -> Option<u64> {
    match addr.ip() {
        IpAddr::V6(ip) => {
            let s = ip.segments();
            if s[..4] == SYNTHETIC_NET && addr.port() == SYNTHETIC_PORT {
                Some(u64::from_be_bytes(ip.octets()[8..16].try_into().ok()?))
            } else {
                None
            }
        }
        IpAddr::V4(_) => None,
    }
}

/// The synthetic address with interface id `id`.
pub fn synthetic_addr(id: u64) -> SocketAddr {
    let n = SYNTHETIC_NET;
    let i = id.to_be_bytes();
    let seg = |a: u8, b: u8| u16::from_be_bytes([a, b]);
    let ip = Ipv6Addr::new(
        n[0],
        n[1],
        n[2],
        n[3],
        seg(i[0], i[1]),
        seg(i[2], i[3]),
        seg(i[4], i[5]),
        seg(i[6], i[7]),
    );
    SocketAddr::new(IpAddr::V6(ip), SYNTHETIC_PORT)
}

/// The table is full and no entry could be evicted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("path table full ({capacity} entries)")]
pub struct PathTableFull {
    /// The table's capacity.
    pub capacity: usize,
}

/// A synthetic address to dial, from [`PathTable::dial_peer`] or [`PathTable::dial_remote`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DialTarget {
    /// The synthetic address quinn connects to.
    pub synthetic: SocketAddr,
    /// Whether the call added the entry. Only such an entry may be removed again when the
    /// dial fails: an adopted or moved one may carry another connection.
    pub created: bool,
}

impl DialTarget {
    fn existing(id: u64) -> Self {
        Self {
            synthetic: synthetic_addr(id),
            created: false,
        }
    }

    fn added(synthetic: SocketAddr) -> Self {
        Self {
            synthetic,
            created: true,
        }
    }
}

#[derive(Debug, Clone)]
struct Entry {
    path: Path,
    peer: Option<PeerId>,
    last_rx: Instant,
}

/// Bounded map between synthetic addresses and live paths.
#[derive(Debug)]
pub struct PathTable {
    next_id: u64,
    entries: HashMap<u64, Entry>,
    by_remote: HashMap<SocketAddr, u64>,
    by_peer: HashMap<PeerId, u64>,
    capacity: usize,
    idle_timeout: Duration,
}

impl Default for PathTable {
    fn default() -> Self {
        Self::new(DEFAULT_CAPACITY, DEFAULT_IDLE_TIMEOUT)
    }
}

impl PathTable {
    /// An empty table holding at most `capacity` entries (at least 1).
    pub fn new(capacity: usize, idle_timeout: Duration) -> Self {
        Self {
            next_id: 1,
            entries: HashMap::new(),
            by_remote: HashMap::new(),
            by_peer: HashMap::new(),
            capacity: capacity.max(1),
            idle_timeout,
        }
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the table has no entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The live path of a synthetic address (per packet, on send).
    #[inline]
    pub fn resolve(&self, synthetic: &SocketAddr) -> Option<Path> {
        let id = synthetic_id(synthetic)?;
        self.entries.get(&id).map(|e| e.path)
    }

    /// The synthetic address of a datagram's real source (per packet, on receive); learns
    /// unknown sources. `None` means the table is full: drop the datagram.
    #[inline]
    pub fn on_incoming(&mut self, now: Instant, from: SocketAddr) -> Option<SocketAddr> {
        if let Some(&id) = self.by_remote.get(&from) {
            if let Some(e) = self.entries.get_mut(&id) {
                e.last_rx = now;
                return Some(synthetic_addr(id));
            }
        }
        self.insert(now, Path::Direct(from), None).ok()
    }

    /// The synthetic address of `peer`, set to `path`: created if the peer has none, moved to
    /// `path` if it has one. A learned entry for the same remote without a peer is adopted.
    pub fn upsert_peer(
        &mut self,
        now: Instant,
        peer: PeerId,
        path: Path,
    ) -> Result<SocketAddr, PathTableFull> {
        self.dial_peer(now, peer, path).map(|t| t.synthetic)
    }

    /// [`PathTable::upsert_peer`] for dialing `peer`: also tells whether the entry is new.
    pub fn dial_peer(
        &mut self,
        now: Instant,
        peer: PeerId,
        path: Path,
    ) -> Result<DialTarget, PathTableFull> {
        if let Some(&id) = self.by_peer.get(&peer) {
            self.set_path_id(id, path);
            return Ok(DialTarget::existing(id));
        }
        if let Some(&id) = self.by_remote.get(&path.remote()) {
            if let Some(e) = self.entries.get_mut(&id) {
                if e.peer.is_none() {
                    e.peer = Some(peer);
                    self.by_peer.insert(peer, id);
                    return Ok(DialTarget::existing(id));
                }
            }
        }
        self.insert(now, path, Some(peer)).map(DialTarget::added)
    }

    /// The synthetic address for dialing `remote` before its key is known (insecure mode):
    /// the entry already holding `remote` (pinned or not), else a new learned one, which
    /// [`PathTable::bind_peer`] pins once the key is verified. Unlike
    /// [`PathTable::on_incoming`] this is not a receipt (an existing entry's idle time is
    /// kept) and a full table is an error.
    pub fn dial_remote(
        &mut self,
        now: Instant,
        remote: SocketAddr,
    ) -> Result<DialTarget, PathTableFull> {
        if let Some(&id) = self.by_remote.get(&remote) {
            if self.entries.contains_key(&id) {
                return Ok(DialTarget::existing(id));
            }
        }
        self.insert(now, Path::Direct(remote), None)
            .map(DialTarget::added)
    }

    /// Pins a learned synthetic address to `peer` once its identity is verified, so dialing
    /// the same peer later reuses it. Returns false if the address is unknown or belongs to
    /// another peer.
    pub fn bind_peer(&mut self, synthetic: &SocketAddr, peer: PeerId) -> bool {
        let Some(id) = synthetic_id(synthetic) else {
            return false;
        };
        let Some(e) = self.entries.get_mut(&id) else {
            return false;
        };
        match e.peer {
            Some(p) if p != peer => false,
            _ => {
                e.peer = Some(peer);
                self.by_peer.entry(peer).or_insert(id);
                true
            }
        }
    }

    /// The synthetic address pinned to `peer`, if any.
    pub fn synthetic_for_peer(&self, peer: &PeerId) -> Option<SocketAddr> {
        self.by_peer.get(peer).map(|&id| synthetic_addr(id))
    }

    /// The peer a synthetic address is pinned to, if any.
    pub fn peer_of(&self, synthetic: &SocketAddr) -> Option<PeerId> {
        self.entries.get(&synthetic_id(synthetic)?)?.peer
    }

    /// Moves a synthetic address to a new path. Returns false if it is unknown.
    pub fn set_path(&mut self, synthetic: &SocketAddr, path: Path) -> bool {
        match synthetic_id(synthetic) {
            Some(id) if self.entries.contains_key(&id) => {
                self.set_path_id(id, path);
                true
            }
            _ => false,
        }
    }

    /// Forgets a synthetic address; returns its last path.
    pub fn remove(&mut self, synthetic: &SocketAddr) -> Option<Path> {
        let id = synthetic_id(synthetic)?;
        let e = self.entries.remove(&id)?;
        self.unlink(id, &e);
        Some(e.path)
    }

    fn unlink(&mut self, id: u64, e: &Entry) {
        if self.by_remote.get(&e.path.remote()) == Some(&id) {
            self.by_remote.remove(&e.path.remote());
        }
        if let Some(p) = e.peer {
            if self.by_peer.get(&p) == Some(&id) {
                self.by_peer.remove(&p);
            }
        }
    }

    fn set_path_id(&mut self, id: u64, path: Path) {
        let Some(old) = self.entries.get(&id).map(|e| e.path) else {
            return;
        };
        if self.by_remote.get(&old.remote()) == Some(&id) {
            self.by_remote.remove(&old.remote());
        }
        // A learned entry already holding the new remote is merged into this one.
        if let Some(other) = self.by_remote.insert(path.remote(), id) {
            if other != id && self.entries.get(&other).is_some_and(|e| e.peer.is_none()) {
                self.entries.remove(&other);
            }
        }
        if let Some(e) = self.entries.get_mut(&id) {
            e.path = path;
        }
    }

    fn insert(
        &mut self,
        now: Instant,
        path: Path,
        peer: Option<PeerId>,
    ) -> Result<SocketAddr, PathTableFull> {
        if self.entries.len() >= self.capacity && !self.evict_one(now) {
            return Err(PathTableFull {
                capacity: self.capacity,
            });
        }
        let id = self.next_id;
        self.next_id += 1;
        self.entries.insert(
            id,
            Entry {
                path,
                peer,
                last_rx: now,
            },
        );
        self.by_remote.insert(path.remote(), id);
        if let Some(p) = peer {
            self.by_peer.insert(p, id);
        }
        Ok(synthetic_addr(id))
    }

    /// Evicts the longest-idle entry idle for at least the idle timeout, learned entries
    /// first. The idle timeout exceeds QUIC's idle timeout, so no live connection uses it.
    fn evict_one(&mut self, now: Instant) -> bool {
        let victim = self
            .entries
            .iter()
            .filter(|(_, e)| now.saturating_duration_since(e.last_rx) >= self.idle_timeout)
            .min_by_key(|(_, e)| (e.peer.is_some(), e.last_rx))
            .map(|(&id, _)| id);
        match victim.and_then(|id| self.entries.remove(&id).map(|e| (id, e))) {
            Some((id, e)) => {
                self.unlink(id, &e);
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    fn peer(n: u8) -> PeerId {
        PeerId::from_bytes([n; 32])
    }

    #[test]
    fn synthetic_addresses_round_trip_and_are_recognised() {
        for id in [1u64, 2, 0xdead_beef, u64::MAX] {
            let a = synthetic_addr(id);
            assert_eq!(synthetic_id(&a), Some(id));
            assert!(is_synthetic(&a));
            assert!(a.ip().to_string().starts_with("fd6d:6573:6800:1:"), "{a}");
        }
        assert!(!is_synthetic(&addr(1)));
        assert!(!is_synthetic(&"[::1]:1".parse().unwrap()));
        let other_port = SocketAddr::new(synthetic_addr(5).ip(), 2);
        assert!(!is_synthetic(&other_port));
    }

    #[test]
    fn incoming_is_learned_and_stable() {
        let now = Instant::now();
        let mut t = PathTable::default();
        let s1 = t.on_incoming(now, addr(1000)).unwrap();
        let s2 = t.on_incoming(now, addr(2000)).unwrap();
        assert_ne!(s1, s2);
        assert_eq!(t.on_incoming(now, addr(1000)), Some(s1));
        assert_eq!(t.resolve(&s1), Some(Path::Direct(addr(1000))));
        assert_eq!(t.resolve(&synthetic_addr(999)), None);
        assert_eq!(t.resolve(&addr(1000)), None);
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn dialing_reuses_and_moves_the_peer_address() {
        let now = Instant::now();
        let mut t = PathTable::default();
        let s = t
            .upsert_peer(now, peer(1), Path::Direct(addr(1000)))
            .unwrap();
        assert_eq!(t.on_incoming(now, addr(1000)), Some(s));
        assert_eq!(t.peer_of(&s), Some(peer(1)));
        // The peer moves: same synthetic address, new path, old remote forgotten.
        let s_again = t
            .upsert_peer(now, peer(1), Path::Direct(addr(1001)))
            .unwrap();
        assert_eq!(s, s_again);
        assert_eq!(t.resolve(&s), Some(Path::Direct(addr(1001))));
        assert_eq!(t.on_incoming(now, addr(1001)), Some(s));
        assert_ne!(t.on_incoming(now, addr(1000)), Some(s));
    }

    #[test]
    fn learned_entry_is_adopted_and_bound() {
        let now = Instant::now();
        let mut t = PathTable::default();
        let learned = t.on_incoming(now, addr(1000)).unwrap();
        assert_eq!(
            t.upsert_peer(now, peer(1), Path::Direct(addr(1000))),
            Ok(learned)
        );
        let other = t.on_incoming(now, addr(2000)).unwrap();
        assert!(t.bind_peer(&other, peer(2)));
        assert!(!t.bind_peer(&other, peer(3)));
        assert!(!t.bind_peer(&synthetic_addr(12345), peer(3)));
        assert_eq!(
            t.upsert_peer(now, peer(2), Path::Direct(addr(2000))),
            Ok(other)
        );
    }

    #[test]
    fn moving_onto_a_learned_remote_merges_it() {
        let now = Instant::now();
        let mut t = PathTable::default();
        let s = t
            .upsert_peer(now, peer(1), Path::Direct(addr(1000)))
            .unwrap();
        let learned = t.on_incoming(now, addr(3000)).unwrap();
        assert!(t.set_path(&s, Path::Direct(addr(3000))));
        assert_eq!(t.on_incoming(now, addr(3000)), Some(s));
        assert_eq!(t.resolve(&learned), None);
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn bounded_with_idle_eviction() {
        let t0 = Instant::now();
        let idle = Duration::from_secs(10);
        let mut t = PathTable::new(3, idle);
        let pinned = t.upsert_peer(t0, peer(1), Path::Direct(addr(1))).unwrap();
        let a = t.on_incoming(t0, addr(2)).unwrap();
        let _b = t.on_incoming(t0 + Duration::from_secs(5), addr(3)).unwrap();
        // Full, nothing idle long enough.
        assert_eq!(t.on_incoming(t0 + Duration::from_secs(1), addr(4)), None);
        assert!(t.upsert_peer(t0, peer(9), Path::Direct(addr(9))).is_err());
        // `a` is idle for 10 s now and is evicted first.
        let c = t.on_incoming(t0 + idle, addr(4)).unwrap();
        assert_eq!(t.resolve(&a), None);
        assert_eq!(t.resolve(&c), Some(Path::Direct(addr(4))));
        // Learned entries go before the idle pinned one.
        assert!(t.on_incoming(t0 + idle * 100, addr(5)).is_some());
        assert_eq!(t.resolve(&pinned), Some(Path::Direct(addr(1))));
        assert_eq!(t.len(), 3);
        assert_eq!(t.synthetic_for_peer(&peer(1)), Some(pinned));
        assert_eq!(t.remove(&pinned), Some(Path::Direct(addr(1))));
        assert_eq!(t.remove(&pinned), None);
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn dialing_tells_whether_the_entry_is_new() {
        let t0 = Instant::now();
        let idle = Duration::from_secs(10);
        let mut t = PathTable::new(2, idle);
        let learned = t.on_incoming(t0, addr(1000)).unwrap();
        // A known remote is reused as it is, pinned or not; its idle time is kept.
        assert_eq!(
            t.dial_remote(t0 + idle, addr(1000)),
            Ok(DialTarget {
                synthetic: learned,
                created: false
            })
        );
        assert_eq!(t.peer_of(&learned), None);
        let pinned = t.dial_peer(t0, peer(1), Path::Direct(addr(2000))).unwrap();
        assert!(pinned.created);
        assert_eq!(
            t.dial_remote(t0, addr(2000)),
            Ok(DialTarget {
                synthetic: pinned.synthetic,
                created: false
            })
        );
        // Adopting or moving is not creating.
        let adopted = t.dial_peer(t0, peer(2), Path::Direct(addr(1000))).unwrap();
        assert_eq!((adopted.synthetic, adopted.created), (learned, false));
        let moved = t.dial_peer(t0, peer(1), Path::Direct(addr(2001))).unwrap();
        assert_eq!((moved.synthetic, moved.created), (pinned.synthetic, false));
        // Full, nothing idle: an error, not a silent drop.
        assert_eq!(
            t.dial_remote(t0, addr(3000)),
            Err(PathTableFull { capacity: 2 })
        );
        // Created over an evicted entry: the length stays, `created` still says so.
        let fresh = t.dial_remote(t0 + idle, addr(3000)).unwrap();
        assert!(fresh.created);
        assert_eq!(t.len(), 2);
        assert_eq!(t.resolve(&fresh.synthetic), Some(Path::Direct(addr(3000))));
        assert_eq!(t.on_incoming(t0 + idle, addr(3000)), Some(fresh.synthetic));
    }

    #[test]
    fn ids_are_never_reused() {
        let now = Instant::now();
        let mut t = PathTable::new(1, Duration::ZERO);
        let a = t.on_incoming(now, addr(1)).unwrap();
        t.remove(&a);
        let b = t.on_incoming(now, addr(1)).unwrap();
        assert_ne!(a, b);
    }
}
