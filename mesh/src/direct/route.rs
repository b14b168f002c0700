//! Which path carries a direct connection: the relayed path both ends agree on (RFC 8656
//! channels, RFC 8445 relayed candidates), and the active path each connection reports.
//!
//! Steps, for one introduction (a `Go` on either side):
//! 1. Each node registers the relayed addresses it holds as `Relay` candidates, so the
//!    coordinator hands them to the other end with the rest.
//! 2. Both ends decide the same [`RelayPlan`] from what the coordinator saw: their own
//!    registered relayed address and the peer's `Relay` candidate.
//!    - Both have one: relay-to-relay. Each binds a channel on its own allocation to the
//!      peer's relayed address; neither learns the other's own address, and it works
//!      whatever both NATs do (the proxy hands data between its own allocations).
//!    - Only this end has one: it binds a channel to the peer's server-reflexive address
//!      (else UPnP, else host), and the peer sends to this end's relayed address.
//!    - Only the peer has one: this end sends plain QUIC to the peer's relayed address.
//! 3. The driver runs the plan in parallel with probing; the path that is ready first
//!    carries the QUIC handshake, and a direct pair nominated later takes over (the
//!    relayed path stays as a standby in the path table).
//! 4. Every connection carries a [`watch`] of its [`ActivePath`], updated on each switch.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;

use tokio::sync::watch;

use crate::coord::{Candidate, CandidateKind};
use crate::identity::PeerId;
use crate::socket::Path;

/// Most peers whose active path is watched at once (entries without a live receiver are
/// pruned first).
pub const MAX_WATCHED_PATHS: usize = 4096;

/// What kind of path carries a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PathType {
    /// Straight between the two ends (a punched pair, UPnP or a host address).
    Direct,
    /// Through a TURN relay.
    Relay,
    /// Through another member of the mesh that forwards ([`crate::route`]).
    Router,
}

impl PathType {
    /// `"direct"`, `"relay"` or `"router"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Direct => "direct",
            Self::Relay => "relay",
            Self::Router => "router",
        }
    }
}

impl std::fmt::Display for PathType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The path a connection runs on now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ActivePath {
    /// Direct, relayed or routed.
    pub kind: PathType,
    /// The peer's address on that path: its own address for a direct path, the address
    /// the relay forwards to (the peer's relayed or reflexive address) for a relayed one,
    /// the unspecified address for a routed one.
    pub remote: SocketAddr,
    /// The member that forwards, on a routed path.
    pub via: Option<PeerId>,
}

impl ActivePath {
    /// A direct path to `remote`.
    pub fn direct(remote: SocketAddr) -> Self {
        Self {
            kind: PathType::Direct,
            remote,
            via: None,
        }
    }

    /// A relayed path to the peer's `remote` address.
    pub fn relay(remote: SocketAddr) -> Self {
        Self {
            kind: PathType::Relay,
            remote,
            via: None,
        }
    }

    /// A path through member `via` (`None` if the route is gone already).
    pub fn routed(via: Option<PeerId>) -> Self {
        Self {
            kind: PathType::Router,
            remote: SocketAddr::from(([0, 0, 0, 0], 0)),
            via,
        }
    }
}

/// How a direct path was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum How {
    /// Hole punching to an address the peer offered or the punch server observed.
    Punch,
    /// One of the peer's predicted ports (port prediction).
    Predicted,
    /// The peer's UPnP-mapped port.
    Upnp,
    /// Birthday probing between a random-port NAT and an endpoint-independent one.
    Birthday,
}

impl How {
    /// `"punch"`, `"predicted"`, `"upnp"` or `"birthday"`.
    pub fn as_str(self) -> &'static str {
        match self {
            How::Punch => "punch",
            How::Predicted => "predicted",
            How::Upnp => "upnp",
            How::Birthday => "birthday",
        }
    }

    /// How a direct path to `remote` was found, from the peer's candidates in its
    /// latest `Go`: its UPnP address, or a reflexive one it registered itself (the
    /// punch server's own observation is the last reflexive candidate it adds).
    pub(crate) fn of(remote: SocketAddr, peer_candidates: &[Candidate]) -> How {
        let reflexive: Vec<SocketAddr> = peer_candidates
            .iter()
            .filter(|c| c.kind == CandidateKind::ServerReflexive)
            .map(|c| c.addr)
            .collect();
        let observed = reflexive.last().copied();
        if peer_candidates
            .iter()
            .any(|c| c.kind == CandidateKind::Upnp && c.addr == remote)
        {
            How::Upnp
        } else if reflexive.contains(&remote) && Some(remote) != observed {
            How::Predicted
        } else {
            How::Punch
        }
    }
}

/// Tells how a path of one connection was found (see [`How`]); cheap to clone into a task
/// that watches the connection's path.
#[derive(Debug, Clone)]
pub struct HowFinder {
    pub(crate) peer: PeerId,
    pub(crate) watches: std::sync::Arc<PathWatches>,
}

impl HowFinder {
    /// How `path` was found: `None` for a relayed path.
    pub fn how(&self, path: &ActivePath) -> Option<How> {
        self.watches.how(self.peer, path)
    }
}

/// How the relayed path of one introduction is set up (see the module docs, step 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RelayPlan {
    /// Neither end holds a relayed address.
    None,
    /// Bind a channel on this node's own allocation to `peer`.
    OwnChannel {
        /// The peer's relayed address, or its reflexive one when it has none.
        peer: SocketAddr,
    },
    /// Send plain datagrams to the peer's relayed address.
    PeerRelayed {
        /// The peer's relayed address.
        relayed: SocketAddr,
    },
}

impl RelayPlan {
    /// The plan for an introduction, from this node's registered relayed address (if
    /// any) and the peer's candidates as the coordinator sent them.
    pub(crate) fn decide(own_relayed: Option<SocketAddr>, peer: &[Candidate]) -> Self {
        let of_kind = |kind: CandidateKind| peer.iter().find(|c| c.kind == kind).map(|c| c.addr);
        let peer_relayed = of_kind(CandidateKind::Relay);
        match (own_relayed, peer_relayed) {
            (Some(_), Some(relayed)) => Self::OwnChannel { peer: relayed },
            (Some(_), None) => of_kind(CandidateKind::ServerReflexive)
                .or_else(|| of_kind(CandidateKind::Upnp))
                .or_else(|| of_kind(CandidateKind::Host))
                .map_or(Self::None, |peer| Self::OwnChannel { peer }),
            (None, Some(relayed)) => Self::PeerRelayed { relayed },
            (None, None) => Self::None,
        }
    }

    /// The peer's address on the relayed path this plan sets up.
    pub(crate) fn remote(self) -> Option<SocketAddr> {
        match self {
            Self::None => None,
            Self::OwnChannel { peer } => Some(peer),
            Self::PeerRelayed { relayed } => Some(relayed),
        }
    }
}

/// One watched peer: its active path, and the relayed path to fall back on.
#[derive(Debug)]
struct Watched {
    tx: watch::Sender<ActivePath>,
    relay: Option<(Path, SocketAddr)>,
}

/// The active path of every connected peer, shared by the node's tasks (bounded).
#[derive(Debug, Default)]
pub(crate) struct PathWatches {
    peers: Mutex<HashMap<PeerId, Watched>>,
    /// Each peer's candidates from its latest `Go` (to tell how a direct path was found),
    /// and the peer's address on a path the peer reached at one of this node's predicted
    /// ports.
    offered: Mutex<HashMap<PeerId, Offered>>,
    /// The peer's address on the pair birthday probing found with it.
    birthday: Mutex<HashMap<PeerId, SocketAddr>>,
}

/// A peer's candidates from its latest `Go`, and its address on a path it reached at one
/// of this node's predicted ports.
type Offered = (Vec<Candidate>, Option<SocketAddr>);

/// Most peers whose birthday pair is remembered.
const MAX_BIRTHDAY_PAIRS: usize = MAX_WATCHED_PATHS;

impl PathWatches {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<PeerId, Watched>> {
        self.peers.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Remembers `peer`'s candidates from its latest `Go`.
    pub(crate) fn set_offered(&self, peer: PeerId, candidates: &[Candidate]) {
        let mut offered = self.offered.lock().unwrap_or_else(|p| p.into_inner());
        if offered.len() >= MAX_WATCHED_PATHS && !offered.contains_key(&peer) {
            offered.clear();
        }
        offered.insert(peer, (candidates.to_vec(), None));
    }

    /// The direct path to `remote` of `peer` was found on one of this node's predicted
    /// ports (the peer saw this node at one of them).
    pub(crate) fn set_reached_on_predicted(&self, peer: PeerId, remote: SocketAddr) {
        let mut offered = self.offered.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(o) = offered.get_mut(&peer) {
            o.1 = Some(remote);
        }
    }

    /// Birthday probing found a pair with `peer`, at its address `remote`.
    pub(crate) fn set_birthday(&self, peer: PeerId, remote: SocketAddr) {
        let mut pairs = self.birthday.lock().unwrap_or_else(|p| p.into_inner());
        if pairs.len() >= MAX_BIRTHDAY_PAIRS && !pairs.contains_key(&peer) {
            pairs.clear();
        }
        pairs.insert(peer, remote);
    }

    /// How a direct path to `remote` of `peer` was found (`None` for a relayed path).
    pub(crate) fn how(&self, peer: PeerId, path: &ActivePath) -> Option<How> {
        if path.kind != PathType::Direct {
            return None;
        }
        let birthday = self.birthday.lock().unwrap_or_else(|p| p.into_inner());
        if birthday.get(&peer) == Some(&path.remote) {
            return Some(How::Birthday);
        }
        drop(birthday);
        let offered = self.offered.lock().unwrap_or_else(|p| p.into_inner());
        let Some((candidates, ours)) = offered.get(&peer) else {
            return Some(How::Punch);
        };
        if *ours == Some(path.remote) {
            return Some(How::Predicted);
        }
        Some(How::of(path.remote, candidates))
    }

    /// Starts watching `peer` afresh (a new connection) at `path`; returns a receiver.
    pub(crate) fn set(&self, peer: PeerId, path: ActivePath) -> watch::Receiver<ActivePath> {
        let mut peers = self.lock();
        if let Some(w) = peers.get_mut(&peer) {
            w.tx.send_if_modified(|p| std::mem::replace(p, path) != path);
            return w.tx.subscribe();
        }
        if peers.len() >= MAX_WATCHED_PATHS {
            peers.retain(|_, w| w.tx.receiver_count() > 0);
        }
        let (tx, rx) = watch::channel(path);
        if peers.len() < MAX_WATCHED_PATHS {
            peers.insert(peer, Watched { tx, relay: None });
        }
        rx
    }

    /// `peer`'s watch if there is one, else a new one starting at `path`.
    pub(crate) fn get_or_set(&self, peer: PeerId, path: ActivePath) -> watch::Receiver<ActivePath> {
        if let Some(w) = self.lock().get(&peer) {
            return w.tx.subscribe();
        }
        self.set(peer, path)
    }

    /// Stops watching `peer` (receivers see the sender closed).
    pub(crate) fn forget(&self, peer: PeerId) {
        self.lock().remove(&peer);
    }

    /// Whether a live connection watches `peer` (someone holds a receiver).
    pub(crate) fn is_live(&self, peer: PeerId) -> bool {
        self.lock()
            .get(&peer)
            .is_some_and(|w| w.tx.receiver_count() > 0)
    }

    /// `peer`'s active path, if watched.
    pub(crate) fn current(&self, peer: PeerId) -> Option<ActivePath> {
        self.lock().get(&peer).map(|w| *w.tx.borrow())
    }

    /// Records the relayed path of `peer`'s connection (and the peer's address on it).
    pub(crate) fn set_relay(&self, peer: PeerId, path: Path, remote: SocketAddr) {
        if let Some(w) = self.lock().get_mut(&peer) {
            w.relay = Some((path, remote));
        }
    }

    /// The peers whose relayed path is a channel on `server` bound to an address of `ip`
    /// other than `remote` (`remote` came from a port they were not bound to): with the
    /// path and the bound address.
    pub(crate) fn rebind_candidates(
        &self,
        server: SocketAddr,
        remote: SocketAddr,
    ) -> Vec<(PeerId, Path, SocketAddr)> {
        self.lock()
            .iter()
            .filter_map(|(peer, w)| {
                let (path, bound) = w.relay?;
                let on_server = matches!(path, Path::Relay { server: s, .. } if s == server);
                (on_server && bound.ip() == remote.ip() && bound != remote)
                    .then_some((*peer, path, bound))
            })
            .collect()
    }

    /// The relayed path of `peer`'s connection, if it has one.
    pub(crate) fn relay_of(&self, peer: PeerId) -> Option<(Path, SocketAddr)> {
        self.lock().get(&peer).and_then(|w| w.relay)
    }

    /// Updates `peer`'s active path if it is watched; returns whether it changed.
    pub(crate) fn update(&self, peer: PeerId, path: ActivePath) -> bool {
        self.lock().get(&peer).is_some_and(|w| {
            w.tx.send_if_modified(|p| std::mem::replace(p, path) != path)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().expect("addr")
    }

    fn cand(kind: CandidateKind, a: &str) -> Candidate {
        Candidate::new(kind, addr(a))
    }

    #[test]
    fn a_path_reached_on_our_predicted_port_reads_predicted() {
        let w = PathWatches::default();
        let peer = PeerId::from_bytes([7; 32]);
        let remote = addr("198.18.2.2:5000");
        let path = ActivePath::direct(remote);
        assert_eq!(
            w.how(peer, &path),
            Some(How::Punch),
            "nothing known: punched"
        );
        w.set_offered(
            peer,
            &[cand(CandidateKind::ServerReflexive, "198.18.2.2:5000")],
        );
        assert_eq!(w.how(peer, &path), Some(How::Punch));
        w.set_reached_on_predicted(peer, remote);
        assert_eq!(w.how(peer, &path), Some(How::Predicted));
        let relayed = ActivePath::relay(remote);
        assert_eq!(w.how(peer, &relayed), None);
        // A new introduction starts over.
        w.set_offered(peer, &[]);
        assert_eq!(w.how(peer, &path), Some(How::Punch));
    }

    #[test]
    fn how_a_direct_path_was_found_follows_the_peers_candidates() {
        let offered = [
            cand(CandidateKind::Host, "10.0.1.2:4000"),
            cand(CandidateKind::Upnp, "198.18.1.2:5000"),
            cand(CandidateKind::ServerReflexive, "198.18.1.2:20003"),
            cand(CandidateKind::ServerReflexive, "198.18.1.2:20004"),
            // The punch server's observation comes last.
            cand(CandidateKind::ServerReflexive, "198.18.1.2:20000"),
        ];
        assert_eq!(How::of(addr("198.18.1.2:5000"), &offered), How::Upnp);
        assert_eq!(How::of(addr("198.18.1.2:20004"), &offered), How::Predicted);
        assert_eq!(How::of(addr("198.18.1.2:20000"), &offered), How::Punch);
        assert_eq!(How::of(addr("10.0.1.2:4000"), &offered), How::Punch);
        // A peer-reflexive address (not offered at all) was punched.
        assert_eq!(How::of(addr("198.18.1.2:31000"), &offered), How::Punch);
        assert_eq!(How::of(addr("198.18.1.2:31000"), &[]), How::Punch);
    }

    #[test]
    fn both_ends_pick_matching_halves_of_one_plan() {
        let a_relayed = addr("198.18.0.9:50001");
        let b_relayed = addr("198.18.0.9:50002");
        let a_cands = [
            cand(CandidateKind::Host, "10.0.1.2:4000"),
            cand(CandidateKind::ServerReflexive, "198.18.1.2:4000"),
            cand(CandidateKind::Relay, "198.18.0.9:50001"),
        ];
        let b_cands = [
            cand(CandidateKind::ServerReflexive, "198.18.2.2:5000"),
            cand(CandidateKind::Relay, "198.18.0.9:50002"),
        ];
        // Both hold a relay: each binds to the other's relayed address.
        assert_eq!(
            RelayPlan::decide(Some(a_relayed), &b_cands),
            RelayPlan::OwnChannel { peer: b_relayed }
        );
        assert_eq!(
            RelayPlan::decide(Some(b_relayed), &a_cands),
            RelayPlan::OwnChannel { peer: a_relayed }
        );
        // Only A: A binds to B's reflexive address, B sends to A's relayed address.
        let b_plain = &b_cands[..1];
        assert_eq!(
            RelayPlan::decide(Some(a_relayed), b_plain),
            RelayPlan::OwnChannel {
                peer: addr("198.18.2.2:5000")
            }
        );
        assert_eq!(
            RelayPlan::decide(None, &a_cands),
            RelayPlan::PeerRelayed { relayed: a_relayed }
        );
        assert_eq!(RelayPlan::decide(None, b_plain), RelayPlan::None);
        assert_eq!(RelayPlan::decide(Some(a_relayed), &[]), RelayPlan::None);
    }

    #[test]
    fn watches_report_changes_only() {
        let w = PathWatches::default();
        let peer = PeerId::from_bytes([7; 32]);
        let relay = ActivePath::relay(addr("198.18.0.9:50002"));
        let direct = ActivePath::direct(addr("198.18.2.2:5000"));
        assert!(!w.update(peer, direct), "not watched yet");
        let mut rx = w.set(peer, relay);
        assert_eq!(*rx.borrow_and_update(), relay);
        assert!(!w.update(peer, relay), "same path");
        assert!(w.update(peer, direct));
        assert!(rx.has_changed().unwrap_or(false));
        assert_eq!(*rx.borrow_and_update(), direct);
        assert!(w.is_live(peer));
        assert_eq!(w.current(peer), Some(direct));
        let relay_path = Path::Relay {
            server: addr("198.18.0.9:3478"),
            channel: 0x4000,
        };
        w.set_relay(peer, relay_path, relay.remote);
        assert_eq!(w.relay_of(peer), Some((relay_path, relay.remote)));
        drop(rx);
        assert!(!w.is_live(peer), "nobody holds the connection's watch");
        w.forget(peer);
        assert_eq!(w.current(peer), None);
    }
}
