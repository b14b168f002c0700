//! The live connections' path cores, hosted by the punch engine: one sans-IO
//! [`PathManager`] per connected peer, fed from the node's one socket.
//!
//! Steps (all inside the engine task, which owns the socket's STUN queue):
//! 1. **Adopt.** When a connection is up, its task ([`super::supervise`]) hands the engine
//!    the peer, its synthetic address, its role and its paths so far
//!    ([`ConnCmd::Adopt`]). The core takes over the introduction's round: a prober that
//!    nominated the pair QUIC runs on becomes the held round of that direct path (it
//!    answers the peer's consent checks and sends ours); one still probing becomes the
//!    running round. A relayed path is added as validated.
//! 2. **Input.** STUN datagrams no attempt claims are offered to each core (its rounds
//!    claim them by their credentials). Before every timer, the path table's per-path
//!    receive times ([`crate::socket::PathTable::last_rx_on`]) are reported to the cores,
//!    so QUIC traffic counts as liveness and consent checks are sent only on a silent
//!    path (RFC 7675).
//! 3. **Output.** The cores' checks go out through the socket; their events go to the
//!    connection's task, which moves the path table and the path watch. A core whose task
//!    is gone (the connection closed) is dropped.
//! 4. **Rounds.** A later introduction of the same peer ([`super::engine::Engine::round`])
//!    runs in the core, not as a separate attempt.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Instant;

use tokio::sync::mpsc;

use super::birthdays::Found;
use super::supervise::{DEAD_AFTER, EARLY_PHASE, RETRY_EARLY, RETRY_MAX};
use crate::conn::{ConnConfig, ConnEvent, PathKind, PathManager};
use crate::identity::PeerId;
use crate::punch::{Prober, Role, Transmit};
use crate::socket::{LocalSocket, Path, PathTable};

/// Most connections with a core (beyond this, new ones run without one).
pub(crate) const MAX_CONNS: usize = 4096;

/// A live connection handed to the engine (step 1).
#[derive(Debug)]
pub(crate) struct Adoption {
    pub peer: PeerId,
    pub synthetic: SocketAddr,
    /// The dialer controls.
    pub role: Role,
    /// The relayed path, if one is up.
    pub relay: Option<PathKind>,
    /// The direct path QUIC runs on, if it runs on one: the peer's address and this
    /// node's socket.
    pub direct: Option<(SocketAddr, LocalSocket)>,
    /// Where the core's events go.
    pub events: mpsc::Sender<ConnEvent>,
}

/// What a connection's task asks of the engine about its core.
#[derive(Debug)]
pub(crate) enum ConnCmd {
    /// Step 1.
    Adopt(Adoption),
    /// A relayed path came up after the adoption.
    Relay { peer: PeerId, kind: PathKind },
}

struct Slot {
    manager: PathManager,
    synthetic: SocketAddr,
    events: mpsc::Sender<ConnEvent>,
}

/// The cores of the node's live connections (see the module docs).
pub(crate) struct ConnSlots {
    slots: HashMap<PeerId, Slot>,
    config: ConnConfig,
}

/// The core's path of a birthday pair.
fn direct_kind(found: Found) -> PathKind {
    PathKind::Direct {
        remote: found.remote,
        local: found.local,
    }
}

/// The socket's path for a core's path.
pub(crate) fn socket_path(kind: PathKind) -> Path {
    match kind {
        PathKind::Direct { remote, local } => Path::Direct { remote, local },
        PathKind::RelayedPeer { remote } => Path::direct(remote),
        PathKind::Routed { route } => Path::Router { route },
        PathKind::Relay { server, channel } => Path::Relay { server, channel },
    }
}

impl ConnSlots {
    /// No connections yet; each core gets `config`.
    pub(crate) fn new(config: ConnConfig) -> Self {
        Self {
            slots: HashMap::new(),
            config,
        }
    }

    /// The settings a node's cores use: the timings [`super::supervise`] publishes
    /// (rounds every [`RETRY_EARLY`] during the first [`EARLY_PHASE`], then backed off to
    /// [`RETRY_MAX`]; dead after [`DEAD_AFTER`] of silence), the rest as
    /// [`ConnConfig::default`] (a consent check after 1 s of silence).
    pub(crate) fn config() -> ConnConfig {
        ConnConfig {
            retry_early: RETRY_EARLY,
            early_phase: EARLY_PHASE,
            retry_max: RETRY_MAX,
            dead_after: DEAD_AFTER,
            ..ConnConfig::default()
        }
    }

    /// Step 1. `round` is the introduction's prober, taken from the engine's attempts:
    /// with the pair it nominated, or still probing.
    pub(crate) fn adopt(&mut self, now: Instant, adoption: Adoption, round: Option<Prober>) {
        let Adoption {
            peer,
            synthetic,
            role,
            relay,
            direct,
            events,
        } = adoption;
        if self.slots.len() >= MAX_CONNS && !self.slots.contains_key(&peer) {
            tracing::warn!(peer = %peer.short(), "too many connections for path cores");
            return;
        }
        let mut manager = PathManager::new(now, self.config.clone(), role);
        if let Some(kind) = relay {
            manager.add_relayed(now, kind);
        }
        match (round, direct) {
            (Some(round), _) => match round.nominated() {
                Some(remote) => manager.adopt_direct(now, remote, Some(round)),
                None => manager.adopt_round(now, round),
            },
            (None, Some((remote, local))) => manager.add_direct(now, remote, local),
            (None, None) => {}
        }
        tracing::debug!(peer = %peer.short(), ?relay, ?direct, "path core adopted the connection");
        self.slots.insert(
            peer,
            Slot {
                manager,
                synthetic,
                events,
            },
        );
    }

    /// A relayed path for `peer`'s core; it replaces the relayed path the core had (a
    /// channel moved to the peer's learned port, see [`super::rebind`]).
    pub(crate) fn add_relay(&mut self, now: Instant, peer: &PeerId, kind: PathKind) {
        let Some(s) = self.slots.get_mut(peer) else {
            return;
        };
        let new = s.manager.add_relayed(now, kind);
        let old: Vec<_> = s
            .manager
            .live_paths()
            .filter(|(id, k)| *id != new && !k.is_direct())
            .map(|(id, _)| id)
            .collect();
        for id in old {
            s.manager.remove_path(now, id);
        }
    }

    /// Step 4: runs `round` in `peer`'s core; gives it back when the peer has none.
    pub(crate) fn round(&mut self, now: Instant, peer: &PeerId, round: Prober) -> Option<Prober> {
        match self.slots.get_mut(peer) {
            Some(s) => {
                s.manager.adopt_round(now, round);
                None
            }
            None => Some(round),
        }
    }

    /// A direct pair birthday probing found for `peer` ([`super::birthdays`]): the core
    /// takes it over as an upgrade. `false` when the peer has no core (yet).
    pub(crate) fn add_direct(&mut self, now: Instant, peer: &PeerId, found: Found) -> bool {
        let Some(s) = self.slots.get_mut(peer) else {
            return false;
        };
        s.manager.add_direct(now, found.remote, found.local);
        true
    }

    /// The peer was heard on a birthday pair at `now` (its consent check or answer).
    pub(crate) fn heard(&mut self, now: Instant, peer: &PeerId, found: Found) {
        let Some(s) = self.slots.get_mut(peer) else {
            return;
        };
        let kind = direct_kind(found);
        let id = s
            .manager
            .live_paths()
            .find(|(_, k)| *k == kind)
            .map(|(id, _)| id);
        if let Some(id) = id {
            s.manager.on_receive(now, id);
        }
    }

    /// Whether `peer`'s core has the birthday pair `found` as a live path.
    pub(crate) fn uses(&self, peer: &PeerId, found: &Found) -> bool {
        let kind = direct_kind(*found);
        self.slots
            .get(peer)
            .is_some_and(|s| s.manager.live_paths().any(|(_, k)| k == kind))
    }

    /// Whether `peer`'s connection runs on a direct path now.
    pub(crate) fn runs_direct(&self, peer: &PeerId) -> bool {
        self.slots
            .get(peer)
            .and_then(|s| s.manager.active())
            .is_some_and(|(_, k)| k.is_direct())
    }

    /// Whether `peer` has a core.
    pub(crate) fn has(&self, peer: &PeerId) -> bool {
        self.slots.contains_key(peer)
    }

    /// Step 2: offers a STUN datagram; `true` if a core took it.
    pub(crate) fn offer(&mut self, now: Instant, from: SocketAddr, data: &[u8]) -> bool {
        self.slots
            .values_mut()
            .any(|s| s.manager.handle_input(now, from, data))
    }

    /// Step 2: for each core whose timer is due, reports the path table's receive times
    /// (traffic may have made the timer moot), then runs the timer if it is still due.
    pub(crate) fn handle_timeout(&mut self, now: Instant, paths: &PathTable) {
        let due = |m: &PathManager| m.poll_timeout().is_some_and(|t| t <= now);
        for s in self.slots.values_mut().filter(|s| due(&s.manager)) {
            let live: Vec<_> = s.manager.live_paths().collect();
            for (id, kind) in live {
                if let Some(at) = paths.last_rx_on(&s.synthetic, socket_path(kind)) {
                    s.manager.on_receive(at.min(now), id);
                }
            }
            if due(&s.manager) {
                s.manager.handle_timeout(now);
            }
        }
    }

    /// When the next core timer is due.
    pub(crate) fn next_wake(&self) -> Option<Instant> {
        self.slots
            .values()
            .filter_map(|s| s.manager.poll_timeout())
            .min()
    }

    /// Step 3: the checks to send; events go to the connections' tasks, and cores whose
    /// task is gone are dropped.
    pub(crate) fn drain(&mut self) -> Vec<Transmit> {
        let mut out = Vec::new();
        for (peer, s) in &mut self.slots {
            out.extend(std::iter::from_fn(|| s.manager.poll_transmit()));
            while let Some(event) = s.manager.poll_event() {
                if s.events.try_send(event).is_err() && !s.events.is_closed() {
                    tracing::warn!(peer = %peer.short(), "path event dropped: task not keeping up");
                }
            }
        }
        self.slots.retain(|_, s| !s.events.is_closed());
        out
    }
}
