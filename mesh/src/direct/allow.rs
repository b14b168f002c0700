//! [`Allowlist`]: per-peer decisions on incoming connect requests
//! ([`super::IncomingPolicy::Allowlist`]).
//!
//! Steps, for one `Incoming { request_id, from }` from the punch server:
//! 1. The control task asks [`Allowlist::allows`]: an open list (a session's host takes
//!    joiners) or a listed peer (a member, an announced joiner) is accepted at once.
//! 2. Anyone else is held for up to [`HOLD`] (the host's announcement of a joiner may
//!    arrive after the joiner's request) and re-checked whenever the list changes; still
//!    unknown then, it is refused, so a stranger cannot make a member probe.
//! 3. At most [`MAX_HELD`] requests are held; more are refused at once.
//! 4. While the list is open, the control task tells the punch server to accept everyone
//!    on our behalf (`Policy { accept_all: true }`), which saves the `Incoming` round trip
//!    on every join; closing the list withdraws it.

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::watch;

use crate::identity::PeerId;
use crate::session::MAX_MEMBERS;

/// Longest an unknown peer's request is held before it is refused.
pub const HOLD: Duration = Duration::from_secs(1);
/// Most requests held at once.
pub const MAX_HELD: usize = 64;
/// Most peers on the list (members and announced joiners of one session, with room).
const MAX_PEERS: usize = 4 * MAX_MEMBERS;

#[derive(Debug, Default)]
struct State {
    open: bool,
    peers: HashSet<PeerId>,
}

/// Which peers may connect to this node; shared by the node's owner and its control task.
#[derive(Debug)]
pub struct Allowlist {
    state: Mutex<State>,
    changed: watch::Sender<u64>,
}

impl Default for Allowlist {
    fn default() -> Self {
        Self {
            state: Mutex::new(State::default()),
            changed: watch::channel(0).0,
        }
    }
}

impl Allowlist {
    fn with<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        let mut guard = self.state.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut guard)
    }

    fn bump(&self) {
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Whether `peer` may connect now.
    pub fn allows(&self, peer: &PeerId) -> bool {
        self.with(|s| s.open || s.peers.contains(peer))
    }

    /// Whether the list is open to everyone.
    pub fn is_open(&self) -> bool {
        self.with(|s| s.open)
    }

    /// Lets `peer` connect. False if the list is full.
    pub fn allow(&self, peer: PeerId) -> bool {
        let added = self.with(|s| {
            if s.peers.len() >= MAX_PEERS && !s.peers.contains(&peer) {
                return false;
            }
            s.peers.insert(peer);
            true
        });
        if added {
            self.bump();
        }
        added
    }

    /// Stops letting `peer` connect (unless the list is open).
    pub fn disallow(&self, peer: &PeerId) {
        self.with(|s| s.peers.remove(peer));
    }

    /// Opens the list to everyone (a host taking joiners) or closes it to the listed peers.
    pub fn set_open(&self, open: bool) {
        let changed = self.with(|s| std::mem::replace(&mut s.open, open) != open);
        if changed {
            self.bump();
        }
    }

    /// Changes whenever a peer is added or the list opens.
    pub fn watch(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listed_peers_and_an_open_list_are_allowed_and_changes_are_signalled() {
        let list = Allowlist::default();
        let mut w = list.watch();
        let a = PeerId::from_bytes([1; 32]);
        assert!(!list.allows(&a));
        assert!(list.allow(a));
        assert!(w.has_changed().unwrap_or(false));
        w.mark_unchanged();
        assert!(list.allows(&a));
        list.disallow(&a);
        assert!(!list.allows(&a));
        list.set_open(true);
        assert!(list.allows(&a) && w.has_changed().unwrap_or(false));
    }

    #[test]
    fn the_list_is_bounded() {
        let list = Allowlist::default();
        for i in 0..MAX_PEERS {
            let mut b = [0u8; 32];
            b[..8].copy_from_slice(&(i as u64).to_be_bytes());
            assert!(list.allow(PeerId::from_bytes(b)));
        }
        assert!(!list.allow(PeerId::from_bytes([0xff; 32])));
    }
}
