//! The sans-IO core of a parked peer: keep-alives with retransmission, and the wake-up.
//!
//! Steps (the driver feeds it the time and the STUN datagrams from the punch server's
//! address, and sends what it queues from the peer's one socket):
//! 1. [`ParkKeeper::new`] after [`super::ServerMsg::Park`]: the first keep-alive is due one
//!    interval later (the control connection just kept the NAT binding fresh).
//! 2. Each keep-alive is a Binding request with a fresh random transaction id
//!    ([`super::park::keepalive_request`]). Unanswered, it is sent again with the same id
//!    after an RTO that doubles (RFC 8489 §6.2.1), starting at the smaller of
//!    [`MAX_RTO`] and an eighth of the interval; after [`MAX_TRIES`] sends the keeper
//!    reports [`ParkEvent::Lost`] ([`ParkLost::NoAnswer`]), well before the server drops
//!    the entry (after three intervals without a keep-alive).
//! 3. A Binding success for the outstanding id whose MAC checks with the key confirms the
//!    registration ([`ParkEvent::Confirmed`], with the address the server saw); the next
//!    keep-alive is due one interval later. A 401 for it is [`ParkLost::Refused`]: the
//!    server no longer knows us (it restarted, or dropped the entry).
//! 4. A wake indication for our peer id with a correct MAC is [`ParkEvent::Woken`]. Wakes
//!    are retransmitted by the server, so several may arrive: each is reported; the driver
//!    acts on the first and drops the keeper.
//!
//! 5. When the node stops, [`ParkKeeper::leave`] gives a signed goodbye for the server.
//!
//! Everything not from the server's address, or not a park message for us with the right
//! MAC, is ignored (and not claimed, so the driver can offer it elsewhere).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::park::{self, ParkKey, ParkMessage};
use crate::identity::PeerId;

/// Longest first retransmission timeout of a keep-alive.
pub const MAX_RTO: Duration = Duration::from_millis(500);
/// Sends of one keep-alive (the first and its retransmissions) before giving up.
pub const MAX_TRIES: u32 = 4;

/// Why a parked registration is no longer good.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParkLost {
    /// No answer to a keep-alive after its retransmissions (4 sends in all).
    NoAnswer,
    /// The server answered 401: it does not know us (any more).
    Refused,
}

/// What the keeper reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParkEvent {
    /// The server confirmed a keep-alive; it saw us at `mapped`.
    Confirmed {
        /// Our address as the server saw it.
        mapped: Option<SocketAddr>,
    },
    /// The server wants us back: someone is connecting. Dial the control connection.
    Woken,
    /// The parked registration is gone or unreachable: dial the control connection.
    Lost(ParkLost),
}

#[derive(Debug)]
struct Outstanding {
    transaction: [u8; 12],
    request: Vec<u8>,
    tries: u32,
    rto: Duration,
    retransmit_at: Instant,
}

/// A parked peer's keep-alive and wake-up state (see the module docs).
#[derive(Debug)]
pub struct ParkKeeper {
    peer: PeerId,
    key: ParkKey,
    server: SocketAddr,
    interval: Duration,
    next_keepalive: Instant,
    outstanding: Option<Outstanding>,
    transmits: VecDeque<Vec<u8>>,
    events: VecDeque<ParkEvent>,
    rng: StdRng,
}

impl ParkKeeper {
    /// A keeper for `peer`, parked at `now` on `server` with `key`, sending a keep-alive
    /// every `interval` (at least 100 ms). `seed` seeds the transaction ids.
    pub fn new(
        now: Instant,
        peer: PeerId,
        key: ParkKey,
        server: SocketAddr,
        interval: Duration,
        seed: u64,
    ) -> Self {
        let interval = interval.max(Duration::from_millis(100));
        Self {
            peer,
            key,
            server,
            interval,
            next_keepalive: now + interval,
            outstanding: None,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            rng: StdRng::seed_from_u64(seed),
        }
    }

    /// The keep-alive interval.
    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// When [`ParkKeeper::handle_timeout`] is next due.
    pub fn poll_timeout(&self) -> Instant {
        match &self.outstanding {
            Some(o) => o.retransmit_at,
            None => self.next_keepalive,
        }
    }

    /// Sends or retransmits the keep-alive when due.
    pub fn handle_timeout(&mut self, now: Instant) {
        if let Some(o) = &mut self.outstanding {
            if now < o.retransmit_at {
                return;
            }
            if o.tries >= MAX_TRIES {
                self.outstanding = None;
                self.next_keepalive = now + self.interval;
                self.events.push_back(ParkEvent::Lost(ParkLost::NoAnswer));
                return;
            }
            o.tries += 1;
            o.rto = o.rto.saturating_mul(2);
            o.retransmit_at = now + o.rto;
            self.transmits.push_back(o.request.clone());
            return;
        }
        if now < self.next_keepalive {
            return;
        }
        let transaction: [u8; 12] = self.rng.gen();
        let Ok(request) = park::keepalive_request(&self.peer, &self.key, transaction) else {
            // Never expected (fixed fields); count it as a lost registration.
            self.events.push_back(ParkEvent::Lost(ParkLost::NoAnswer));
            return;
        };
        let rto = (self.interval / 8).min(MAX_RTO);
        self.transmits.push_back(request.clone());
        self.outstanding = Some(Outstanding {
            transaction,
            request,
            tries: 1,
            rto,
            retransmit_at: now + rto,
        });
    }

    /// A STUN datagram from `from`; `true` if it was ours (a park message for us, with a
    /// correct MAC where it carries one).
    pub fn handle_datagram(&mut self, now: Instant, from: SocketAddr, data: &[u8]) -> bool {
        if from != self.server {
            return false;
        }
        let outstanding = self.outstanding.as_ref().map(|o| o.transaction);
        match park::parse(data) {
            Some(ParkMessage::Wake { peer, .. })
                if peer == self.peer && park::verify(data, &self.key) =>
            {
                self.events.push_back(ParkEvent::Woken);
                true
            }
            Some(ParkMessage::Success {
                transaction,
                mapped,
            }) if Some(transaction) == outstanding && park::verify(data, &self.key) => {
                self.outstanding = None;
                self.next_keepalive = now + self.interval;
                self.events.push_back(ParkEvent::Confirmed { mapped });
                true
            }
            Some(ParkMessage::Unauthorized { transaction }) if Some(transaction) == outstanding => {
                self.outstanding = None;
                self.events.push_back(ParkEvent::Lost(ParkLost::Refused));
                true
            }
            _ => false,
        }
    }

    /// The leave to send when the node stops ([`super::park::leave`]), best effort: not
    /// retransmitted (a lost one leaves the entry to expire).
    pub fn leave(&mut self) -> Option<Vec<u8>> {
        park::leave(&self.peer, &self.key, self.rng.gen()).ok()
    }

    /// The next datagram to send to the server.
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.transmits.pop_front()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<ParkEvent> {
        self.events.pop_front()
    }

    /// The server's address.
    pub fn server(&self) -> SocketAddr {
        self.server
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECS: Duration = Duration::from_secs(1);

    fn setup() -> (ParkKeeper, Instant, ParkKey, SocketAddr) {
        let now = Instant::now();
        let key = ParkKey([8; 32]);
        let server: SocketAddr = "198.18.0.1:3478".parse().expect("addr");
        let k = ParkKeeper::new(now, PeerId::from_bytes([1; 32]), key, server, 8 * SECS, 1);
        (k, now, key, server)
    }

    fn transaction(req: &[u8]) -> [u8; 12] {
        match park::parse(req) {
            Some(ParkMessage::Keepalive { transaction, .. }) => transaction,
            other => panic!("not a keep-alive: {other:?}"),
        }
    }

    #[test]
    fn keepalives_are_answered_and_repeat_every_interval() {
        let (mut k, t0, key, server) = setup();
        assert_eq!(k.poll_timeout(), t0 + 8 * SECS);
        k.handle_timeout(t0 + 8 * SECS);
        let req = k.poll_transmit().expect("keep-alive");
        assert!(park::verify(&req, &key));
        let mapped: SocketAddr = "198.18.5.5:9".parse().expect("addr");
        let ok = park::keepalive_success(&key, transaction(&req), mapped).expect("encode");
        let t1 = t0 + 8 * SECS + Duration::from_millis(3);
        assert!(k.handle_datagram(t1, server, &ok));
        assert_eq!(
            k.poll_event(),
            Some(ParkEvent::Confirmed {
                mapped: Some(mapped)
            })
        );
        assert_eq!(k.poll_timeout(), t1 + 8 * SECS);
        // A second answer (duplicate) is not ours any more.
        assert!(!k.handle_datagram(t1, server, &ok));
    }

    #[test]
    fn lost_keepalives_are_retransmitted_then_reported() {
        let (mut k, t0, _, _) = setup();
        let mut now = t0 + 8 * SECS;
        k.handle_timeout(now);
        let first = k.poll_transmit().expect("keep-alive");
        let mut sends = 1;
        while k.poll_event().is_none() {
            now = k.poll_timeout();
            k.handle_timeout(now);
            if let Some(again) = k.poll_transmit() {
                assert_eq!(again, first, "a retransmission keeps its transaction id");
                sends += 1;
            } else {
                break;
            }
        }
        assert_eq!(sends, MAX_TRIES);
        assert_eq!(k.poll_event(), Some(ParkEvent::Lost(ParkLost::NoAnswer)));
        // 0.5 + 1 + 2 + 4 s: well inside the server's three intervals (24 s).
        assert!(now - (t0 + 8 * SECS) <= Duration::from_millis(7500));
    }

    #[test]
    fn a_wake_with_a_bad_mac_or_for_another_peer_is_ignored() {
        let (mut k, t0, key, server) = setup();
        let me = PeerId::from_bytes([1; 32]);
        let forged = park::wake(&me, &ParkKey([9; 32]), [1; 12]).expect("encode");
        assert!(!k.handle_datagram(t0, server, &forged));
        let other = park::wake(&PeerId::from_bytes([2; 32]), &key, [1; 12]).expect("encode");
        assert!(!k.handle_datagram(t0, server, &other));
        let good = park::wake(&me, &key, [1; 12]).expect("encode");
        let elsewhere: SocketAddr = "198.18.0.2:3478".parse().expect("addr");
        assert!(!k.handle_datagram(t0, elsewhere, &good));
        assert_eq!(k.poll_event(), None);
        assert!(k.handle_datagram(t0, server, &good));
        assert_eq!(k.poll_event(), Some(ParkEvent::Woken));
    }

    #[test]
    fn a_401_for_the_outstanding_keepalive_means_reconnect() {
        let (mut k, t0, _, server) = setup();
        k.handle_timeout(t0 + 8 * SECS);
        let req = k.poll_transmit().expect("keep-alive");
        // A 401 for another transaction (an off-path guess) is ignored.
        let stray = park::unauthorized([0; 12]).expect("encode");
        assert!(!k.handle_datagram(t0, server, &stray));
        let no = park::unauthorized(transaction(&req)).expect("encode");
        assert!(k.handle_datagram(t0, server, &no));
        assert_eq!(k.poll_event(), Some(ParkEvent::Lost(ParkLost::Refused)));
    }
}
