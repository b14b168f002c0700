//! The per-connection path core: which path carries one peer connection, as a sans-IO state
//! machine ([`PathManager`]) for both the dialing and the accepting side.
//!
//! A connection may have several paths to its peer (RFC 8445 candidate pairs found by
//! probing, and relayed paths through a TURN server, RFC 8656), exactly one of them active.
//! The core decides which, and when to look for a better one:
//!
//! 1. **Relay first.** A relayed path the driver has set up (allocation, permission and
//!    channel confirmed by the TURN server) is reported with [`PathManager::add_relay`]; it
//!    counts as validated, and becomes active at once if nothing better is.
//! 2. **Direct rounds.** A probing round ([`PathManager::start_direct_round`]: the peer's
//!    candidates, fresh credentials and a common start, from the punch coordinator or from
//!    the peer over the relayed connection) runs a [`crate::punch::Prober`]. A pair it
//!    nominates becomes a validated direct path and, being preferred to a relay, the active
//!    one ([`ConnEvent::PathChanged`]).
//! 3. **Retries.** While no direct path is active, the controlling side (the dialer) asks
//!    for a new round ([`ConnEvent::DirectRoundDue`]) at least every
//!    [`ConnConfig::retry_early`] during the first [`ConnConfig::early_phase`], then with
//!    the workspace's backoff ([`crate::backoff::Backoff`]) up to at most
//!    [`ConnConfig::retry_max`] apart. The phase starts over whenever a direct path dies.
//! 4. **Liveness** (consent freshness, RFC 7675): the driver reports every datagram that
//!    arrives on a path ([`PathManager::on_receive`]). When the active direct path has been
//!    silent for [`ConnConfig::keepalive_after`], the core sends a check on it (the peer's
//!    core answers with the round's credentials); after [`ConnConfig::dead_after`] of
//!    silence the path is dead.
//! 5. **Fallback.** A dead (or removed) active path is replaced by the best validated live
//!    path left: a direct one, else a relay. A path is never made active unless it was
//!    validated. With none left, [`ConnEvent::NoPath`]; the next validated path becomes
//!    active when it appears.
//!
//! The core sends only STUN checks ([`PathManager::poll_transmit`]); QUIC rides on the
//! active path, which the driver reads with [`PathManager::active`] and installs in its
//! path table.

mod manager;
#[cfg(test)]
mod sim_tests;

use std::net::SocketAddr;
use std::time::Duration;

use crate::punch::{NoDirectPath, ProbeConfig};
use crate::socket::{LocalSocket, RouteId};

pub use manager::PathManager;

/// Identifies one path of a connection (unique for the connection's life).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PathId(pub u32);

/// How datagrams on a path reach the peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PathKind {
    /// Straight to the peer's address (a nominated candidate pair).
    Direct {
        /// The peer's address.
        remote: SocketAddr,
        /// The node's socket the path leaves from (an extra one after birthday probing).
        local: LocalSocket,
    },
    /// Through a TURN server (RFC 8656), on a bound channel.
    Relay {
        /// The TURN server's address.
        server: SocketAddr,
        /// The channel number bound to the peer.
        channel: u16,
    },
    /// To the peer's relayed address (its allocation on a TURN server), from this node's
    /// own address: the relay is the peer's.
    RelayedPeer {
        /// The peer's relayed address.
        remote: SocketAddr,
    },
    /// Through another member of the mesh that forwards ([`crate::route`]); treated as a
    /// relayed path.
    Routed {
        /// The route.
        route: RouteId,
    },
}

impl PathKind {
    /// Whether this is a direct path.
    pub fn is_direct(&self) -> bool {
        matches!(self, PathKind::Direct { .. })
    }
}

/// Why the active path changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SwitchReason {
    /// The first path of the connection.
    First,
    /// A better path validated (a direct path replacing a relay).
    Upgrade,
    /// The active path died or was removed.
    Fallback,
}

/// What the core reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnEvent {
    /// `path` is now active; QUIC goes over it.
    PathChanged {
        /// The new active path.
        path: PathId,
        /// What it is.
        kind: PathKind,
        /// Why it changed.
        reason: SwitchReason,
    },
    /// The active path died and no validated path is left.
    NoPath,
    /// The controlling side wants a new direct round: arrange one with the peer (fresh
    /// candidates and credentials) and call [`PathManager::start_direct_round`] on both
    /// sides.
    DirectRoundDue,
    /// A direct round ended without a pair.
    DirectRoundFailed(NoDirectPath),
}

/// Tunables of a [`PathManager`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnConfig {
    /// Each direct round's probing (budget, pacing, pairs).
    pub probe: ProbeConfig,
    /// Longest gap between direct rounds during the early phase. Default 5 s.
    pub retry_early: Duration,
    /// How long the early phase lasts from the connection's start or a direct path's
    /// death. Default 60 s.
    pub early_phase: Duration,
    /// Longest gap between direct rounds after the early phase. Default 60 s.
    pub retry_max: Duration,
    /// Silence on the active direct path after which a consent check is sent, and the gap
    /// between such checks. Default 1 s.
    pub keepalive_after: Duration,
    /// Silence on the active direct path after which it is dead. Default 3 s.
    pub dead_after: Duration,
    /// Most paths remembered per connection (the oldest dead or non-active one goes
    /// first). Default 8.
    pub max_paths: usize,
    /// Seed of the retry jitter (tests); `None` draws from the OS.
    pub seed: Option<u64>,
}

impl Default for ConnConfig {
    fn default() -> Self {
        ConnConfig {
            probe: ProbeConfig::default(),
            retry_early: Duration::from_secs(5),
            early_phase: Duration::from_secs(60),
            retry_max: Duration::from_secs(60),
            keepalive_after: Duration::from_secs(1),
            dead_after: Duration::from_secs(3),
            max_paths: 8,
            seed: None,
        }
    }
}
