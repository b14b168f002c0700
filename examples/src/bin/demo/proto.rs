//! The JSON-lines protocol between the demo and its peer processes.
//!
//! Steps of one peer's life, as seen on the wire:
//! 1. The peer prints `hosted` (host) or `joined` (joiner) once it is a member.
//! 2. It prints every session event (`member_joined`, `member_left`, `host_changed`,
//!    `message`, `ended`) with the member list it sees afterwards.
//! 3. The demo writes commands (`broadcast`) on the peer's stdin; closing stdin makes the
//!    peer leave gracefully and print `left` before it exits.
//!
//! A peer that fails prints `failed` with the reason and exits non-zero.

use serde::{Deserialize, Serialize};

/// A line from a peer process to the demo (its stdout).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "ev", rename_all = "snake_case")]
pub enum FromPeer {
    /// The peer hosts a listed session.
    Hosted {
        /// Its peer id.
        peer: String,
        /// The listing id on the master server.
        listing: String,
        /// Milliseconds `Mesh::host` took.
        latency_ms: u64,
    },
    /// The peer joined a session.
    Joined {
        /// Its peer id.
        peer: String,
        /// The host it sees.
        host: String,
        /// The members it sees, in join order.
        members: Vec<String>,
        /// Milliseconds `Mesh::join` took.
        latency_ms: u64,
    },
    /// Host: a joiner asked to join and was accepted.
    Accepted {
        /// The joiner.
        peer: String,
    },
    /// A member joined.
    MemberJoined {
        /// The member.
        peer: String,
        /// The members afterwards.
        members: Vec<String>,
    },
    /// A member left.
    MemberLeft {
        /// The member.
        peer: String,
        /// Why (`left`, `lost`, ...).
        reason: String,
        /// The members afterwards.
        members: Vec<String>,
    },
    /// The host changed.
    HostChanged {
        /// The previous host.
        old: String,
        /// The new host.
        new: String,
    },
    /// A game message arrived.
    Message {
        /// The sender.
        from: String,
        /// The message as text.
        text: String,
        /// Whether it came on the reliable stream.
        reliable: bool,
    },
    /// The session ended for this peer.
    Ended {
        /// Why.
        reason: String,
    },
    /// The peer left gracefully (after its stdin closed).
    Left,
    /// Something failed; the peer exits.
    Failed {
        /// What.
        error: String,
    },
}

/// A line from the demo to a peer process (its stdin).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum ToPeer {
    /// Broadcast `text` reliably to every other member.
    Broadcast {
        /// The message.
        text: String,
    },
}
