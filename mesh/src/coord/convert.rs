//! From a received [`Go`] to what the prober of [`crate::punch`] needs.
//!
//! Steps:
//! 1. [`Go::start_at`]: the local instant of the first probe, from when the message arrived.
//! 2. [`Go::probe_candidates`]: the peer's candidates as probing candidates, with their
//!    RFC 8445 priorities; relayed ones are left to the TURN layer.
//! 3. [`Go::credentials`] and [`Go::role`] are the prober's own types and are used as they are.

use std::time::Instant;

use super::msg::{Candidate, CandidateKind, Go};
use crate::punch;

impl Go {
    /// When to send the first probe, given when this message was received. Late messages
    /// (a start already past) mean: start at once.
    pub fn start_at(&self, received: Instant) -> Instant {
        received.checked_add(self.start_in).unwrap_or(received)
    }

    /// The peer's candidates that can be probed directly, as probing candidates.
    pub fn probe_candidates(&self) -> Vec<punch::Candidate> {
        self.peer_candidates
            .iter()
            .filter_map(Candidate::to_probe)
            .collect()
    }
}

impl Candidate {
    /// This candidate for direct probing; `None` for a relayed one.
    pub fn to_probe(&self) -> Option<punch::Candidate> {
        let kind = match self.kind {
            CandidateKind::Host => punch::CandidateKind::Host,
            CandidateKind::ServerReflexive => punch::CandidateKind::ServerReflexive,
            CandidateKind::Upnp => punch::CandidateKind::Upnp,
            CandidateKind::Relay => return None,
        };
        Some(punch::Candidate::new(self.addr, kind))
    }
}
