//! Sessions: a verified, fully connected mesh of members with one agreed host.
//!
//! The membership protocol ([`Membership`], sans-IO) follows RakNet's FullyConnectedMesh2:
//! 1. A joiner connects to the host and asks to join with its join data.
//! 2. The host answers with the member list; every member is told to expect the joiner.
//! 3. The joiner connects to every member in parallel and reports which succeeded.
//! 4. If members joined meanwhile, the host sends the new list and the joiner connects to
//!    those too; a member it cannot reach fails the join, naming that member. Otherwise the
//!    host's application accepts or rejects (locked, full, or its own rule).
//! 5. On accept the host sequences the change with the next epoch; every member and the
//!    joiner apply the same views in the same order.
//!
//! The host is the member that has been in the mesh longest (the first in join order);
//! when it is lost the members elect the next one (see `election.rs`), who takes over the
//! master-server listing with the grant every member received at its join.
//!
//! Messages travel as versioned, length-prefixed frames ([`SessionMsg`]) on one QUIC
//! stream per pair of members; the driver ([`crate::session`]'s `Session`) ties the core to
//! `DirectNode` connections.

mod api;
mod app_link;
mod core;
mod driver;
mod election;
mod host;
mod joiner;
mod link;
mod msg;
mod router_choice;
mod shared;
#[cfg(any(test, feature = "sim"))]
#[doc(hidden)]
pub mod sim;
#[cfg(test)]
mod sim_tests;

pub use self::core::{Membership, MembershipConfig};
pub use api::{
    HostError, JoinError, JoinTarget, Mesh, MeshConfig, Reliability, SendError, Session,
    SessionConfig, SessionEvent,
};
pub use link::LinkStats;
pub use msg::{
    ListingGrant, RejectReason, SessionMsg, View, MAX_JOIN_DATA, MAX_MEMBERS, MAX_RELIABLE_MESSAGE,
    MAX_SESSION_FRAME, SESSION_VERSION,
};
pub use router_choice::RTT_REPORT_EVERY;
pub use shared::SessionStats;

use crate::identity::PeerId;

/// Why a member left the membership.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaveReason {
    /// It said goodbye.
    Left,
    /// Its connection broke or went silent.
    Lost,
    /// The host removed it (e.g. it lost its link to another member, so the mesh was no
    /// longer full).
    Removed,
    /// It broke the protocol.
    Violation,
}

impl LeaveReason {
    /// A stable name for logs and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Left => "left",
            Self::Lost => "lost",
            Self::Removed => "removed",
            Self::Violation => "violation",
        }
    }
}

/// Why a join failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JoinFailure {
    /// The host turned the joiner away.
    Rejected(RejectReason),
    /// The joiner could not connect to this member.
    MemberUnreachable {
        /// The member.
        peer: PeerId,
    },
    /// The host could not be reached, or its connection broke during the join.
    HostGone,
    /// The join took longer than `join_timeout`.
    Timeout,
}

impl std::fmt::Display for JoinFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Rejected(r) => write!(f, "rejected: {r}"),
            Self::MemberUnreachable { peer } => write!(f, "member {} unreachable", peer.short()),
            Self::HostGone => f.write_str("the host is gone"),
            Self::Timeout => f.write_str("the join timed out"),
        }
    }
}

/// Why the session ended for this peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionEnd {
    /// It left.
    Left,
    /// The host removed it.
    Removed,
    /// It lost its host and found no successor in time.
    NoHost,
    /// Its join failed.
    JoinFailed(JoinFailure),
}

/// The host application's answer to a join request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Let the joiner in.
    Accept,
    /// Turn it away, with a reason the joiner sees.
    Reject(String),
}

/// What the core reports to its driver and, through it, to the game.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Driver: connect to this peer (the joiner dials the host and every member).
    Dial(PeerId),
    /// Driver: accept connections from this peer.
    Allow(PeerId),
    /// Driver: accept no more connections from this peer.
    Disallow(PeerId),
    /// Driver: close the connection to this peer (if there is one).
    Close(PeerId),
    /// The join succeeded: this peer is a member.
    Joined,
    /// Host: a verified joiner waits for [`Membership::decide`].
    JoinRequest {
        /// The joiner.
        peer: PeerId,
        /// Its join data.
        data: Vec<u8>,
    },
    /// A member joined.
    MemberJoined(PeerId),
    /// A member left.
    MemberLeft {
        /// The member.
        peer: PeerId,
        /// Why.
        reason: LeaveReason,
    },
    /// Another member is host now.
    HostChanged {
        /// The previous host.
        old: PeerId,
        /// The new host.
        new: PeerId,
    },
    /// A peer broke the protocol; its connection is closed.
    Violation {
        /// The peer.
        peer: PeerId,
        /// What it did.
        why: &'static str,
    },
    /// The session is over for this peer; nothing more follows.
    Ended(SessionEnd),
}
