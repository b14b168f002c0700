//! Probing: ICE-style connectivity checks between two peers that a punch coordinator has
//! introduced, as a sans-IO state machine ([`Prober`]).
//!
//! The coordinator gives both sides each other's candidates, per-attempt short-term
//! credentials ([`Credentials`]), their [`Role`] and a common start time. Then:
//!
//! 1. **Check list.** Every remote candidate becomes one pair. All local candidates share
//!    the one UDP socket, so a server-reflexive or UPnP local candidate is replaced by its
//!    base and redundant pairs collapse into one per remote address (RFC 8445 section
//!    6.1.2.4); pairs are ordered by the RFC 8445 pair priority (section 6.1.2.3) and
//!    bounded by [`ProbeConfig::max_pairs`].
//! 2. **Checks.** From `start_at` (never before) a STUN Binding request goes to one pair
//!    every [`ProbeConfig::pacing`]; each pair is retransmitted on its own schedule
//!    (`retransmit_initial` doubling up to `retransmit_max`) with a fresh transaction id,
//!    so each response measures a true round-trip time. Requests carry USERNAME
//!    `"<remote ufrag>:<local ufrag>"`, PRIORITY, ICE-CONTROLLING / ICE-CONTROLLED,
//!    MESSAGE-INTEGRITY keyed with the remote password and FINGERPRINT (RFC 8445 section
//!    7.1, RFC 8489 section 9.1 short-term credentials).
//! 3. **Answers.** An incoming request whose USERNAME starts with our ufrag and whose
//!    MESSAGE-INTEGRITY verifies with our password is answered with a success response
//!    (XOR-MAPPED-ADDRESS = its source). A source we did not know becomes a peer-reflexive
//!    remote candidate (RFC 8445 section 7.3.1.3), and a triggered check goes to the source
//!    at once (section 7.3.1.4): that is what opens a path through a symmetric NAT on the
//!    other side. Anything unauthenticated is dropped and counted ([`ProbeCounters`]).
//! 4. **Validation.** A success response validates its pair if its transaction id is one
//!    of ours, it comes from the address the request went to (symmetric addresses, RFC 8445
//!    section 7.2.5.2.1) and its MESSAGE-INTEGRITY verifies with the remote password.
//! 5. **Nomination** (regular nomination, RFC 8445 section 8.1.1): the controlling side
//!    (the dialer) nominates the first validated pair, reports
//!    [`ProbeEvent::Nominated`] at once (the QUIC handshake may start right away) and sends
//!    a check with USE-CANDIDATE on that pair until it is answered. The controlled side
//!    (the listener) nominates the pair on which an authenticated USE-CANDIDATE request
//!    arrived once its own check on that pair has succeeded. Both sides therefore agree on
//!    the pair, and checks on every other pair stop.
//! 6. **Budget.** If nothing is nominated [`ProbeConfig::budget`] after `start_at`, the
//!    prober reports [`ProbeEvent::Failed`] with [`NoDirectPath`]: every pair tried and its
//!    [`PairOutcome`]. The caller then falls back to a relay.
//!
//! [`birthday`] is the other strategy, for a symmetric NAT facing an endpoint-independent
//! one: many sockets on one side, random ports on the other.
//!
//! After the outcome the prober keeps answering authenticated checks (the peer may still
//! need answers to finish) until the caller drops it. NAT behaviour (RFC 4787 mapping and
//! filtering) decides which pairs can work; the simulation tests in this module model it.

pub mod birthday;
pub mod predict;
mod prober;
mod stun;
mod types;

#[cfg(test)]
mod birthday_sim;
#[cfg(test)]
mod sim;
#[cfg(test)]
mod sim_tests;

pub use prober::Prober;
pub use types::{
    Candidate, CandidateKind, Credentials, NoDirectPath, PairOutcome, ProbeConfig, ProbeCounters,
    ProbeEvent, Role, Transmit,
};
