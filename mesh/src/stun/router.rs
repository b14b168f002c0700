//! Sans-IO routing of received STUN messages to their owner by transaction id (RFC 8489
//! section 6.3.3: a response is matched to its request by the transaction id alone).
//!
//! Several parts of a node speak STUN on its one socket: the connectivity checks of the
//! punch engine, the parked node's keep-alives, NAT discovery, the TURN client. Steps:
//! 1. Every STUN request goes out through [`StunRouter::on_send`], which records its
//!    transaction id with the sender's [`StunOwner`] for [`TRANSACTION_LIFETIME`] (an
//!    RFC 8489 transaction lasts at most 39.5 s); retransmissions keep the first entry.
//! 2. [`StunRouter::route`] on receipt: a response (success or error) goes to the owner
//!    of its transaction; a response nobody is waiting for is [`Route::Unclaimed`] (the
//!    caller drops and counts it). Requests and indications go to
//!    [`StunOwner::Default`], the engine, which answers checks and passes the punch
//!    server's wake-ups on.
//! 3. Entries expire after their lifetime; the table holds at most `max_pending` entries
//!    and a full table forgets its oldest entry (counted in [`RouterStats::evicted`]).
//!
//! Time comes in as an argument; nothing here reads the clock or touches a socket.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use super::codec::{looks_like_stun, HEADER_LEN};

/// How long a request's transaction id is remembered (RFC 8489 section 6.2.1: 39.5 s
/// with the default RTO, rounded up).
pub const TRANSACTION_LIFETIME: Duration = Duration::from_secs(40);

/// Default bound of the transaction table.
pub const DEFAULT_MAX_PENDING: usize = 4096;

/// Who sent a STUN request and gets its responses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StunOwner {
    /// The punch engine (connectivity checks), and whatever sends through the socket
    /// without naming an owner; also gets every request and indication.
    Default,
    /// The control task: a parked node's keep-alives to the punch server.
    Control,
    /// NAT behaviour discovery (RFC 5780).
    Discovery,
    /// The TURN client (RFC 8656).
    Turn,
}

impl StunOwner {
    /// Every owner, in a fixed order (for per-owner tables).
    pub const ALL: [StunOwner; 4] = [Self::Default, Self::Control, Self::Discovery, Self::Turn];

    /// The owner's index in [`StunOwner::ALL`].
    pub fn index(self) -> usize {
        match self {
            Self::Default => 0,
            Self::Control => 1,
            Self::Discovery => 2,
            Self::Turn => 3,
        }
    }
}

/// Where a received STUN datagram goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// To this owner.
    To(StunOwner),
    /// A response to no request we remember: drop and count it.
    Unclaimed,
}

/// Counters of a [`StunRouter`] (monotonic).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RouterStats {
    /// Requests recorded (retransmissions not counted again).
    pub recorded: u64,
    /// Responses routed to the owner of their transaction.
    pub responses_routed: u64,
    /// Responses to no remembered transaction.
    pub unclaimed: u64,
    /// Entries forgotten early because the table was full.
    pub evicted: u64,
}

type TransactionId = [u8; 12];

/// The transaction table; see the module docs.
#[derive(Debug)]
pub struct StunRouter {
    pending: HashMap<TransactionId, (StunOwner, Instant)>,
    /// Transaction ids in the order they were recorded (= expiry order).
    order: VecDeque<(Instant, TransactionId)>,
    max_pending: usize,
    stats: RouterStats,
}

impl StunRouter {
    /// A router remembering at most `max_pending` transactions (at least 1).
    pub fn new(max_pending: usize) -> Self {
        Self {
            pending: HashMap::new(),
            order: VecDeque::new(),
            max_pending: max_pending.max(1),
            stats: RouterStats::default(),
        }
    }

    /// Notes a datagram `owner` is about to send; a STUN request's transaction is recorded.
    pub fn on_send(&mut self, now: Instant, owner: StunOwner, datagram: &[u8]) {
        self.expire(now);
        let Some((class, txn)) = class_and_transaction(datagram) else {
            return;
        };
        if class != Class::Request || self.pending.contains_key(&txn) {
            return;
        }
        if self.pending.len() >= self.max_pending {
            if let Some((_, oldest)) = self.order.pop_front() {
                self.pending.remove(&oldest);
                self.stats.evicted += 1;
            }
        }
        let expires = now + TRANSACTION_LIFETIME;
        self.pending.insert(txn, (owner, expires));
        self.order.push_back((expires, txn));
        self.stats.recorded += 1;
    }

    /// Where a received STUN datagram goes.
    pub fn route(&mut self, now: Instant, datagram: &[u8]) -> Route {
        self.expire(now);
        match class_and_transaction(datagram) {
            Some((Class::Response, txn)) => match self.pending.get(&txn) {
                Some((owner, _)) => {
                    self.stats.responses_routed += 1;
                    Route::To(*owner)
                }
                None => {
                    self.stats.unclaimed += 1;
                    Route::Unclaimed
                }
            },
            _ => Route::To(StunOwner::Default),
        }
    }

    /// Transactions remembered now.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// The counters.
    pub fn stats(&self) -> RouterStats {
        self.stats
    }

    fn expire(&mut self, now: Instant) {
        while let Some(&(expires, txn)) = self.order.front() {
            if expires > now {
                break;
            }
            self.order.pop_front();
            self.pending.remove(&txn);
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    Request,
    Indication,
    Response,
}

/// The class (RFC 8489 section 5: bits C1 and C0 of the message type) and transaction id.
fn class_and_transaction(datagram: &[u8]) -> Option<(Class, TransactionId)> {
    if !looks_like_stun(datagram) {
        return None;
    }
    let msg_type = u16::from_be_bytes([datagram[0], datagram[1]]);
    let class = match ((msg_type >> 7) & 0x2) | ((msg_type >> 4) & 0x1) {
        0 => Class::Request,
        1 => Class::Indication,
        _ => Class::Response,
    };
    let txn = datagram.get(8..HEADER_LEN)?.try_into().ok()?;
    Some((class, txn))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A bare STUN header of message type `msg_type` with transaction id `[t; 12]`.
    fn stun(msg_type: u16, t: u8) -> Vec<u8> {
        let mut d = msg_type.to_be_bytes().to_vec();
        d.extend_from_slice(&[0, 0]);
        d.extend_from_slice(&super::super::MAGIC_COOKIE.to_be_bytes());
        d.extend_from_slice(&[t; 12]);
        d
    }

    const REQUEST: u16 = 0x0001;
    const INDICATION: u16 = 0x0011;
    const SUCCESS: u16 = 0x0101;
    const ERROR: u16 = 0x0111;

    #[test]
    fn responses_reach_the_owner_of_their_request() {
        let now = Instant::now();
        let mut r = StunRouter::new(16);
        r.on_send(now, StunOwner::Control, &stun(REQUEST, 1));
        r.on_send(now, StunOwner::Discovery, &stun(REQUEST, 2));
        r.on_send(now, StunOwner::Default, &stun(REQUEST, 3));
        assert_eq!(
            r.route(now, &stun(SUCCESS, 1)),
            Route::To(StunOwner::Control)
        );
        assert_eq!(
            r.route(now, &stun(ERROR, 2)),
            Route::To(StunOwner::Discovery)
        );
        assert_eq!(
            r.route(now, &stun(SUCCESS, 3)),
            Route::To(StunOwner::Default)
        );
        // A duplicate answer (a retransmission was answered too) still finds its owner.
        assert_eq!(
            r.route(now, &stun(SUCCESS, 1)),
            Route::To(StunOwner::Control)
        );
        assert_eq!(r.route(now, &stun(SUCCESS, 9)), Route::Unclaimed);
        let s = r.stats();
        assert_eq!((s.recorded, s.responses_routed, s.unclaimed), (3, 4, 1));
    }

    #[test]
    fn requests_and_indications_go_to_the_default_owner() {
        let now = Instant::now();
        let mut r = StunRouter::new(16);
        r.on_send(now, StunOwner::Control, &stun(REQUEST, 1));
        // Same transaction id, but a request from a peer: not a response to ours.
        assert_eq!(
            r.route(now, &stun(REQUEST, 1)),
            Route::To(StunOwner::Default)
        );
        assert_eq!(
            r.route(now, &stun(INDICATION, 5)),
            Route::To(StunOwner::Default)
        );
        // What we send that is not a request is not recorded.
        r.on_send(now, StunOwner::Turn, &stun(INDICATION, 6));
        r.on_send(now, StunOwner::Turn, &stun(SUCCESS, 7));
        r.on_send(now, StunOwner::Turn, b"not stun at all, long enough");
        assert_eq!(r.pending(), 1);
    }

    #[test]
    fn transactions_expire_and_retransmissions_keep_the_first_entry() {
        let t0 = Instant::now();
        let mut r = StunRouter::new(16);
        r.on_send(t0, StunOwner::Turn, &stun(REQUEST, 1));
        let later = t0 + TRANSACTION_LIFETIME / 2;
        r.on_send(later, StunOwner::Turn, &stun(REQUEST, 1));
        assert_eq!(r.stats().recorded, 1);
        let just_before = t0 + TRANSACTION_LIFETIME - Duration::from_millis(1);
        assert_eq!(
            r.route(just_before, &stun(SUCCESS, 1)),
            Route::To(StunOwner::Turn)
        );
        assert_eq!(
            r.route(t0 + TRANSACTION_LIFETIME, &stun(SUCCESS, 1)),
            Route::Unclaimed
        );
        assert_eq!(r.pending(), 0);
    }

    #[test]
    fn a_full_table_forgets_its_oldest_transaction() {
        let now = Instant::now();
        let mut r = StunRouter::new(3);
        for t in 1..=5 {
            r.on_send(now, StunOwner::Discovery, &stun(REQUEST, t));
        }
        assert_eq!(r.pending(), 3);
        assert_eq!(r.stats().evicted, 2);
        assert_eq!(r.route(now, &stun(SUCCESS, 1)), Route::Unclaimed);
        assert_eq!(r.route(now, &stun(SUCCESS, 2)), Route::Unclaimed);
        for t in 3..=5 {
            assert_eq!(
                r.route(now, &stun(SUCCESS, t)),
                Route::To(StunOwner::Discovery)
            );
        }
    }

    #[test]
    fn garbage_never_panics_and_goes_nowhere_special() {
        let now = Instant::now();
        let mut r = StunRouter::new(4);
        for len in 0..40 {
            let d = vec![0u8; len];
            r.on_send(now, StunOwner::Turn, &d);
            let _ = r.route(now, &d);
        }
        assert_eq!(r.pending(), 0);
    }
}
