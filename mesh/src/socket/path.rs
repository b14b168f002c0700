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
//!    The previous path stays live as a standby ([`PathTable::add_path`] adds one
//!    directly), so datagrams still arriving on it during a switch reach the same
//!    connection; every live path's source maps to the one synthetic address, at most
//!    [`MAX_PATHS_PER_PEER`] per entry (the oldest standby goes first), until
//!    [`PathTable::remove_path`] drops it.
//! 6. Relayed paths ([`Path::Relay`], RFC 8656 channels) are keyed by (TURN server,
//!    channel): [`PathTable::on_relayed`] maps an unwrapped ChannelData datagram to its
//!    synthetic address, and [`PathTable::is_relay_server`] tells the socket which sources
//!    are relays, so it can decide by source before looking at the first byte (RFC 9443).
//!    Relayed sources are never learned: only a path set up by this node exists.
//!
//! Nothing here does I/O or reads a clock: callers pass `now`.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use super::family::canonical;
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

/// Most paths (the active one and standbys) one entry keeps.
pub const MAX_PATHS_PER_PEER: usize = 4;

/// One of the node's local UDP sockets, as a path names it. Today every node has one
/// socket ([`LocalSocket::PRIMARY`]), which QUIC, STUN and the TURN allocations share;
/// birthday probing opens more, and a direct path found from one of them names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct LocalSocket(pub u16);

impl LocalSocket {
    /// The node's main socket (the one it registered with the punch server).
    pub const PRIMARY: LocalSocket = LocalSocket(0);
}

/// A route through another member of the mesh ([`crate::route`]): the id both the
/// socket and the route hub name it by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RouteId(pub u32);

/// How datagrams for one synthetic address reach the peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Path {
    /// Straight to the peer's address, from one of the node's sockets.
    Direct {
        /// The peer's address.
        remote: SocketAddr,
        /// The local socket the path uses.
        local: LocalSocket,
    },
    /// Through a TURN server on a channel bound to the peer (RFC 8656 section 12): each
    /// datagram goes to `server` inside a ChannelData message of `channel`. Allocations
    /// live on the primary socket.
    Relay {
        /// The TURN server's address.
        server: SocketAddr,
        /// The channel number (0x4000-0x4FFF).
        channel: u16,
    },
    /// Through another member that forwards between the two ends ([`crate::route`]): each
    /// datagram goes out as a QUIC datagram of the connection to that member, with a
    /// routing header; the inner connection stays end to end.
    Router {
        /// The route.
        route: RouteId,
    },
}

impl Path {
    /// A direct path to `remote` from the primary socket.
    pub fn direct(remote: SocketAddr) -> Self {
        Path::Direct {
            remote,
            local: LocalSocket::PRIMARY,
        }
    }

    /// The local socket the path uses.
    pub fn local(&self) -> LocalSocket {
        match self {
            Path::Direct { local, .. } => *local,
            Path::Relay { .. } | Path::Router { .. } => LocalSocket::PRIMARY,
        }
    }

    /// The real address datagrams on this path are sent to (the TURN server for a relay;
    /// the unspecified address `0.0.0.0:0` for a routed path, which has none).
    pub fn remote(&self) -> SocketAddr {
        match self {
            Path::Direct { remote, .. } => *remote,
            Path::Relay { server, .. } => *server,
            Path::Router { .. } => SocketAddr::from(([0, 0, 0, 0], 0)),
        }
    }

    /// The channel number of a relayed path.
    pub fn channel(&self) -> Option<u16> {
        match self {
            Path::Direct { .. } | Path::Router { .. } => None,
            Path::Relay { channel, .. } => Some(*channel),
        }
    }

    /// The same path with its address made canonical ([`canonical`]: IPv4-mapped becomes
    /// IPv4), as the table stores every path.
    pub fn canonical(self) -> Self {
        match self {
            Path::Direct { remote, local } => Path::Direct {
                remote: canonical(remote),
                local,
            },
            Path::Relay { server, channel } => Path::Relay {
                server: canonical(server),
                channel,
            },
            routed @ Path::Router { .. } => routed,
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
    /// The active path: where datagrams to the peer go.
    path: Path,
    /// Other live paths whose datagrams still map to this entry, oldest first.
    standby: Vec<Path>,
    peer: Option<PeerId>,
    last_rx: Instant,
    /// When each live path last delivered a datagram (at most [`MAX_PATHS_PER_PEER`]).
    rx: Vec<(Path, Instant)>,
}

impl Entry {
    fn paths(&self) -> impl Iterator<Item = &Path> {
        std::iter::once(&self.path).chain(self.standby.iter())
    }

    /// Notes a datagram that arrived on `path` (per packet: a scan of at most
    /// [`MAX_PATHS_PER_PEER`] slots).
    #[inline]
    fn note_rx(&mut self, path: Path, now: Instant) {
        self.last_rx = now;
        if let Some(slot) = self.rx.iter_mut().find(|(p, _)| *p == path) {
            slot.1 = now;
            return;
        }
        let (active, standby) = (&self.path, &self.standby);
        self.rx.retain(|(p, _)| p == active || standby.contains(p));
        if self.rx.len() < MAX_PATHS_PER_PEER {
            self.rx.push((path, now));
        }
    }
}

/// Bounded map between synthetic addresses and live paths.
#[derive(Debug)]
pub struct PathTable {
    next_id: u64,
    entries: HashMap<u64, Entry>,
    /// Every live path (active or standby) to its entry: a direct path is keyed by the
    /// peer's address, a relayed one by (server, channel).
    by_source: HashMap<Path, u64>,
    /// Live relayed paths per TURN server.
    relay_servers: HashMap<SocketAddr, usize>,
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
            by_source: HashMap::new(),
            relay_servers: HashMap::new(),
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
    /// unknown sources. `None` means the table is full: drop the datagram. `from` must be
    /// canonical already (the socket makes it so; this runs per packet).
    #[inline]
    pub fn on_incoming(&mut self, now: Instant, from: SocketAddr) -> Option<SocketAddr> {
        self.on_incoming_on(now, from, LocalSocket::PRIMARY)
    }

    /// [`PathTable::on_incoming`] for a datagram that arrived on local socket `local`: a
    /// path is a (remote, local socket) pair.
    #[inline]
    pub fn on_incoming_on(
        &mut self,
        now: Instant,
        from: SocketAddr,
        local: LocalSocket,
    ) -> Option<SocketAddr> {
        let path = Path::Direct {
            remote: from,
            local,
        };
        if let Some(&id) = self.by_source.get(&path) {
            if let Some(e) = self.entries.get_mut(&id) {
                e.note_rx(path, now);
                return Some(synthetic_addr(id));
            }
        }
        self.insert(now, path, None).ok()
    }

    /// The synthetic address of a datagram that arrived from TURN server `server` on
    /// `channel` (per packet, on receive); `None` if no live path uses that channel (drop
    /// it: relayed sources are never learned).
    #[inline]
    pub fn on_relayed(
        &mut self,
        now: Instant,
        server: SocketAddr,
        channel: u16,
    ) -> Option<SocketAddr> {
        let id = *self.by_source.get(&Path::Relay { server, channel })?;
        let e = self.entries.get_mut(&id)?;
        e.note_rx(Path::Relay { server, channel }, now);
        Some(synthetic_addr(id))
    }

    /// The synthetic address of a datagram that arrived on `route` (per packet); `None` if
    /// no live path uses it (drop it: routed sources are never learned).
    #[inline]
    pub fn on_routed(&mut self, now: Instant, route: RouteId) -> Option<SocketAddr> {
        let path = Path::Router { route };
        let id = *self.by_source.get(&path)?;
        let e = self.entries.get_mut(&id)?;
        e.note_rx(path, now);
        Some(synthetic_addr(id))
    }

    /// When `path` of a synthetic address last delivered a datagram (`None`: never, or
    /// not one of its live paths).
    pub fn last_rx_on(&self, synthetic: &SocketAddr, path: Path) -> Option<Instant> {
        let path = path.canonical();
        let e = self.entries.get(&synthetic_id(synthetic)?)?;
        e.rx.iter().find(|(p, _)| *p == path).map(|(_, at)| *at)
    }

    /// Whether `addr` is a TURN server some live path relays through (so its datagrams are
    /// TURN, whatever their first byte).
    #[inline]
    pub fn is_relay_server(&self, addr: &SocketAddr) -> bool {
        !self.relay_servers.is_empty() && self.relay_servers.contains_key(addr)
    }

    /// Every live path of a synthetic address, the active one first.
    pub fn paths_of(&self, synthetic: &SocketAddr) -> Vec<Path> {
        synthetic_id(synthetic)
            .and_then(|id| self.entries.get(&id))
            .map(|e| e.paths().copied().collect())
            .unwrap_or_default()
    }

    /// Adds a standby path to a synthetic address: its datagrams map to the entry, nothing is
    /// sent on it. Returns false if the address is unknown.
    pub fn add_path(&mut self, synthetic: &SocketAddr, path: Path) -> bool {
        let path = path.canonical();
        let Some(id) = synthetic_id(synthetic).filter(|id| self.entries.contains_key(id)) else {
            return false;
        };
        let active = self.entries.get(&id).map(|e| e.path);
        if active == Some(path) {
            return true;
        }
        self.link(id, path);
        self.push_standby(id, path);
        true
    }

    /// Drops a standby path of a synthetic address (the active one cannot be removed: set
    /// another first). Returns whether it was there.
    pub fn remove_path(&mut self, synthetic: &SocketAddr, path: Path) -> bool {
        let path = path.canonical();
        let Some(id) = synthetic_id(synthetic) else {
            return false;
        };
        let Some(e) = self.entries.get_mut(&id) else {
            return false;
        };
        let before = e.standby.len();
        e.standby.retain(|p| *p != path);
        if e.standby.len() == before {
            return false;
        }
        self.unlink_path(id, path);
        true
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
        let path = path.canonical();
        if let Some(&id) = self.by_peer.get(&peer) {
            self.set_path_id(id, path);
            return Ok(DialTarget::existing(id));
        }
        if let Some(&id) = self.by_source.get(&path) {
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
        let remote = canonical(remote);
        if let Some(&id) = self.by_source.get(&Path::direct(remote)) {
            if self.entries.contains_key(&id) {
                return Ok(DialTarget::existing(id));
            }
        }
        self.insert(now, Path::direct(remote), None)
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
                self.set_path_id(id, path.canonical());
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
        for path in e.paths() {
            self.unlink_path(id, *path);
        }
        if let Some(p) = e.peer {
            if self.by_peer.get(&p) == Some(&id) {
                self.by_peer.remove(&p);
            }
        }
    }

    /// Maps `path`'s source to entry `id`. A learned entry that held it is merged away.
    fn link(&mut self, id: u64, path: Path) {
        match self.by_source.insert(path, id) {
            Some(other) if other == id => return,
            Some(other) => {
                // The source moved to this entry; the other keeps its remaining paths, or
                // goes away if it was only learned and had nothing else.
                let learned = self.entries.get(&other).is_some_and(|e| e.peer.is_none());
                if learned {
                    if let Some(e) = self.entries.remove(&other) {
                        for p in e.paths().filter(|p| **p != path) {
                            self.unlink_path(other, *p);
                        }
                    }
                } else if let Some(e) = self.entries.get_mut(&other) {
                    e.standby.retain(|p| *p != path);
                }
                if matches!(path, Path::Relay { .. }) {
                    // Still one live relayed path: the count does not change.
                    return;
                }
            }
            None => {}
        }
        if let Path::Relay { server, .. } = path {
            *self.relay_servers.entry(server).or_insert(0) += 1;
        }
    }

    /// Removes `path`'s source mapping if it points to entry `id`.
    fn unlink_path(&mut self, id: u64, path: Path) {
        if self.by_source.get(&path) != Some(&id) {
            return;
        }
        self.by_source.remove(&path);
        if let Path::Relay { server, .. } = path {
            if let Some(n) = self.relay_servers.get_mut(&server) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    self.relay_servers.remove(&server);
                }
            }
        }
    }

    /// Keeps `path` as a standby of entry `id` (bounded: the oldest standby goes).
    fn push_standby(&mut self, id: u64, path: Path) {
        let Some(e) = self.entries.get_mut(&id) else {
            return;
        };
        e.standby.retain(|p| *p != path);
        e.standby.push(path);
        let mut dropped = Vec::new();
        while e.standby.len() > MAX_PATHS_PER_PEER - 1 {
            dropped.push(e.standby.remove(0));
        }
        for p in dropped {
            self.unlink_path(id, p);
        }
    }

    fn set_path_id(&mut self, id: u64, path: Path) {
        let Some(old) = self.entries.get(&id).map(|e| e.path) else {
            return;
        };
        if old == path {
            return;
        }
        self.link(id, path);
        if let Some(e) = self.entries.get_mut(&id) {
            e.standby.retain(|p| *p != path);
            e.path = path;
        }
        // The old path stays live for datagrams still in flight on it.
        self.push_standby(id, old);
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
                standby: Vec::new(),
                peer,
                last_rx: now,
                rx: Vec::new(),
            },
        );
        self.link(id, path);
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
#[path = "path_tests.rs"]
mod tests;
