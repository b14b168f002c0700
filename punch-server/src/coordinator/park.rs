//! Parking idle peers: a registered peer without a control connection, kept alive by
//! authenticated keep-alives ([`mesh::coord::park`]) and woken when someone connects.
//!
//! Steps:
//! 1. `Capabilities { park: true }` on a connection arms its idle check (`park_after`).
//!    When the check fires, a connection that is registered, has no pending request and
//!    sent nothing but pongs for `park_after` gets `Park { key, keepalive }` (a fresh
//!    random 32-byte key) and is closed ([`CloseReason::Parked`]); otherwise the check
//!    is set again for when it could be idle. The peer keeps a small [`Parked`] entry
//!    (address, key, deadline, held requests), counted in `max_connections`; it sends
//!    its candidates and policy again when it is back.
//! 2. [`Coordinator::handle_keepalive`]: a keep-alive that names a parked peer and whose
//!    MAC checks with its key moves the peer's deadline to `park_misses` intervals later,
//!    takes the datagram's source as its address (NAT rebinding) and is answered with a
//!    signed Binding success; anything else gets a 401, which tells a real peer to dial
//!    again. A retransmission (the same transaction id) is answered again but moves
//!    nothing. The deadline passing drops the entry, but not while requests are held for
//!    it (a woken peer sends no keep-alives while it dials back): then it goes when the
//!    last of them is decided.
//! 3. A `Connect` to a parked peer holds the request (its deadline runs) and sends wake
//!    datagrams to the peer's address: `wake_sends` of them, the first at once, then after
//!    `wake_rto`, doubling. A keep-alive from a new address while requests are held is
//!    followed by a wake to that address at once.
//! 4. The peer dials again; its TLS key proves who it is, so `handle_connected` takes the
//!    entry back: held requests move to the new connection and are asked (`Incoming`, or
//!    `Go` at once under accept-all) as soon as it registers.
//! 5. A leave (a keep-alive with a `park-leave:` USERNAME) whose MAC checks drops the
//!    entry at once: held requests fail with `TargetGone`, later ones with
//!    `UnknownTarget`.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mesh::coord::park::{self, ParkKey, ParkMessage};
use mesh::coord::ServerMsg;
use mesh::identity::PeerId;
use rand::Rng;

use super::conn::canonical;
use super::{CloseReason, ConnId, Coordinator, Timer};

/// A parked peer.
#[derive(Debug)]
pub(crate) struct Parked {
    pub(crate) peer: PeerId,
    /// Its latest address (the source of its latest good keep-alive).
    pub(crate) addr: SocketAddr,
    pub(crate) key: ParkKey,
    /// Dropped when this passes without a good keep-alive (its timer is set for
    /// `expiry_timer`, which may be earlier: it is moved lazily).
    pub(crate) expires: Instant,
    pub(crate) expiry_timer: Instant,
    /// Transaction id of the latest good keep-alive.
    pub(crate) last_transaction: Option<[u8; 12]>,
    /// Requests held for the peer (server ids).
    pub(crate) incoming: Vec<u64>,
    /// The wake-up in progress: (wake datagrams sent, when the next one is due).
    pub(crate) wake: Option<(u32, Option<Instant>)>,
}

impl Coordinator {
    /// `Capabilities` from `conn`: arm (or disarm) its idle check.
    pub(crate) fn on_capabilities(&mut self, now: Instant, conn: ConnId, park: bool) {
        let after = self.config.park_after;
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        c.parkable = park;
        if let (true, Some(after), None) = (park, after, c.park_at) {
            let at = now + after;
            c.park_at = Some(at);
            self.timers.insert((at, Timer::Park(conn)));
        }
    }

    /// The idle check of `conn` fired: park it, or check again later.
    pub(crate) fn park_check(&mut self, now: Instant, conn: ConnId) {
        let Some(after) = self.config.park_after else {
            return;
        };
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        c.park_at = None;
        if !c.parkable {
            return;
        }
        let idle_from = c.last_active + after;
        let busy = c.candidates.is_none()
            || !c.outgoing.is_empty()
            || !c.incoming.is_empty()
            || !c.deferred.is_empty();
        if now < idle_from || busy {
            let at = idle_from.max(now + after.min(Duration::from_secs(1)));
            c.park_at = Some(at);
            self.timers.insert((at, Timer::Park(conn)));
            return;
        }
        self.park(now, conn);
    }

    /// Sends `Park`, closes `conn` and keeps the peer's [`Parked`] entry.
    fn park(&mut self, now: Instant, conn: ConnId) {
        let key = ParkKey(self.rng.gen());
        let keepalive = self.config.park_keepalive;
        let Some(c) = self.conns.get(&conn) else {
            return;
        };
        let expires = now + keepalive.saturating_mul(self.config.park_misses);
        let entry = Parked {
            peer: c.peer,
            addr: c.observed,
            key,
            expires,
            expiry_timer: expires,
            last_transaction: None,
            incoming: Vec::new(),
            wake: None,
        };
        tracing::debug!(%conn, peer = %entry.peer.short(), addr = %entry.addr, "parked");
        self.send(conn, ServerMsg::Park { key, keepalive });
        self.close(conn, CloseReason::Parked);
        self.by_peer.insert(entry.peer, conn);
        self.parked.insert(conn, entry);
        self.timers.insert((expires, Timer::ParkExpiry(conn)));
        self.stats.parked += 1;
    }

    /// Takes back the entry of a parked `peer` that connected again.
    pub(crate) fn unpark(&mut self, peer: &PeerId) -> Option<Parked> {
        let id = *self.by_peer.get(peer)?;
        let p = self.remove_parked(id)?;
        tracing::debug!(peer = %peer.short(), held = p.incoming.len(), "unparked");
        self.stats.unparked += 1;
        Some(p)
    }

    /// Forgets the parked entry `id` with its timers.
    fn remove_parked(&mut self, id: ConnId) -> Option<Parked> {
        let p = self.parked.remove(&id)?;
        self.timers.remove(&(p.expiry_timer, Timer::ParkExpiry(id)));
        if let Some((_, Some(at))) = p.wake {
            self.timers.remove(&(at, Timer::Wake(id)));
        }
        if self.by_peer.get(&p.peer) == Some(&id) {
            self.by_peer.remove(&p.peer);
        }
        Some(p)
    }

    /// The keep-alive deadline of parked entry `id` came: drop it, unless a keep-alive
    /// moved it.
    pub(crate) fn park_expiry(&mut self, now: Instant, id: ConnId) {
        let Some(p) = self.parked.get_mut(&id) else {
            return;
        };
        // While requests are held the peer may be on its way back (a woken peer sends no
        // keep-alives while it dials): keep the entry until the last of them is decided.
        let held_until = p
            .incoming
            .iter()
            .filter_map(|r| self.pending.get(r).map(|r| r.deadline))
            .max();
        let keep_until = held_until.map_or(p.expires, |d| d.max(p.expires));
        if now < keep_until {
            p.expiry_timer = keep_until;
            self.timers.insert((keep_until, Timer::ParkExpiry(id)));
            return;
        }
        if let Some(p) = self.remove_parked(id) {
            tracing::debug!(peer = %p.peer.short(), "parked peer expired");
            self.stats.park_expired += 1;
            self.fail_held(p.incoming);
        }
    }

    /// Sends the next wake datagram to parked entry `id` and schedules the one after.
    pub(crate) fn send_wake(&mut self, now: Instant, id: ConnId) {
        let (sends, rto) = (self.config.wake_sends, self.config.wake_rto);
        let transaction: [u8; 12] = self.rng.gen();
        let Some(p) = self.parked.get_mut(&id) else {
            return;
        };
        let sent = p.wake.map_or(0, |(n, _)| n) + 1;
        let next = (sent < sends).then(|| now + rto.saturating_mul(1 << (sent - 1).min(16)));
        p.wake = Some((sent, next));
        if let Some(at) = next {
            self.timers.insert((at, Timer::Wake(id)));
        }
        let to = p.addr;
        match park::wake(&p.peer, &p.key, transaction) {
            Ok(datagram) => {
                tracing::debug!(peer = %p.peer.short(), %to, sent, "wake");
                self.stats.wakes_sent += 1;
                self.transmits.push_back((to, datagram));
            }
            Err(e) => tracing::warn!(error = %e, "cannot encode a wake datagram"),
        }
    }

    /// A STUN keep-alive (a Binding request with a `park:` USERNAME) or leave
    /// (`park-leave:`) that arrived at the server's port from `from` (see the module docs,
    /// steps 2 and 5). The answer is queued for [`Coordinator::poll_transmit`].
    pub fn handle_keepalive(&mut self, now: Instant, from: SocketAddr, datagram: &[u8]) {
        self.tick(now);
        let from = canonical(from);
        let (peer, transaction, leaving) = match park::parse(datagram) {
            Some(ParkMessage::Keepalive { peer, transaction }) => (peer, transaction, false),
            Some(ParkMessage::Leave { peer, transaction }) => (peer, transaction, true),
            _ => {
                self.stats.keepalives_refused += 1;
                return;
            }
        };
        let id = self.by_peer.get(&peer).copied();
        let entry = id.and_then(|id| self.parked.get_mut(&id).map(|p| (id, p)));
        let Some((id, p)) = entry.filter(|(_, p)| park::verify(datagram, &p.key)) else {
            tracing::debug!(peer = %peer.short(), %from, "keep-alive refused");
            self.stats.keepalives_refused += 1;
            if let Ok(answer) = park::unauthorized(transaction) {
                self.transmits.push_back((from, answer));
            }
            return;
        };
        if leaving {
            if let Ok(answer) = park::keepalive_success(&p.key, transaction, from) {
                self.transmits.push_back((from, answer));
            }
            if let Some(p) = self.remove_parked(id) {
                tracing::debug!(peer = %p.peer.short(), "parked peer left");
                self.stats.park_left += 1;
                self.fail_held(p.incoming);
            }
            return;
        }
        let mut wake_again = false;
        if p.last_transaction != Some(transaction) {
            p.last_transaction = Some(transaction);
            if p.addr != from {
                tracing::debug!(peer = %peer.short(), old = %p.addr, new = %from, "parked peer moved");
                p.addr = from;
                wake_again = !p.incoming.is_empty();
            }
            p.expires = now
                + self
                    .config
                    .park_keepalive
                    .saturating_mul(self.config.park_misses);
            self.stats.keepalives += 1;
        }
        match park::keepalive_success(&p.key, transaction, from) {
            Ok(answer) => self.transmits.push_back((from, answer)),
            Err(e) => tracing::warn!(error = %e, "cannot encode a keep-alive answer"),
        }
        if wake_again {
            // The earlier wakes went to the old address: one more to the new one now
            // (it does not count against `wake_sends`).
            let transaction: [u8; 12] = self.rng.gen();
            if let Some(p) = self.parked.get(&id) {
                if let Ok(datagram) = park::wake(&p.peer, &p.key, transaction) {
                    self.stats.wakes_sent += 1;
                    self.transmits.push_back((p.addr, datagram));
                }
            }
        }
    }
}
