//! The message types of the coordinator protocol (see the [module docs](super) for the flow).

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use super::park::ParkKey;
use crate::identity::PeerId;

/// Where a candidate address comes from (as ICE, RFC 8445 §5.1.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CandidateKind {
    /// An address of a local interface. Wire code 0.
    Host,
    /// The address the punch server (or a STUN server) saw the socket as. Wire code 1.
    ServerReflexive,
    /// A port mapping made with UPnP IGD on the local router. Wire code 2.
    Upnp,
    /// A relayed address on a TURN server. Wire code 3.
    Relay,
}

impl CandidateKind {
    pub(crate) fn code(self) -> u8 {
        match self {
            Self::Host => 0,
            Self::ServerReflexive => 1,
            Self::Upnp => 2,
            Self::Relay => 3,
        }
    }

    pub(crate) fn from_code(code: u8) -> Option<Self> {
        Some(match code {
            0 => Self::Host,
            1 => Self::ServerReflexive,
            2 => Self::Upnp,
            3 => Self::Relay,
            _ => return None,
        })
    }
}

/// One address a peer may be reachable at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Candidate {
    /// Where the address comes from.
    pub kind: CandidateKind,
    /// The address.
    pub addr: SocketAddr,
}

impl Candidate {
    /// A candidate of `kind` at `addr`.
    pub fn new(kind: CandidateKind, addr: SocketAddr) -> Self {
        Self { kind, addr }
    }
}

/// How a peer's NAT maps its socket to public ports, as the peer's own RFC 5780 probe
/// found it ([`crate::nat::MappingProbe`]): what decides birthday probing
/// ([`crate::punch::birthday`]) between two peers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NatMapping {
    /// One public port for every destination (RFC 4787 endpoint-independent mapping, or
    /// no NAT). Wire code 1.
    EndpointIndependent,
    /// A new port per destination, in a pattern (sequential or a fixed step): port
    /// prediction covers it. Wire code 2.
    Predictable,
    /// A new random port per destination: a "hard" side for birthday probing. Wire code 3.
    Random,
}

impl NatMapping {
    pub(crate) fn code(self) -> u8 {
        match self {
            Self::EndpointIndependent => 1,
            Self::Predictable => 2,
            Self::Random => 3,
        }
    }

    pub(crate) fn from_code(code: u8) -> Option<Self> {
        Some(match code {
            1 => Self::EndpointIndependent,
            2 => Self::Predictable,
            3 => Self::Random,
            _ => return None,
        })
    }
}

/// Per-attempt credentials and roles are the prober's own types, carried as they are
/// (wire codes of [`Role`]: 0 = controlling (the requester), 1 = controlled (the target)).
pub use crate::punch::{Credentials, Role};

/// What went wrong, in an [`ServerMsg::Error`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// No registered peer has the requested id. Wire code 1.
    UnknownTarget,
    /// The target refused the request. Wire code 2.
    Refused,
    /// The target did not answer in time. Wire code 3.
    Timeout,
    /// The peer speaks another protocol version; the server closes the connection. Code 4.
    VersionMismatch,
    /// The peer sent too many requests; try again later. Wire code 5.
    RateLimited,
    /// A message could not be decoded; it was dropped. Wire code 6.
    Malformed,
    /// `Connect` before `Register`. Wire code 7.
    NotRegistered,
    /// A bound was reached: pending requests of the peer, of the target, of the server, or
    /// registrations. Wire code 8.
    LimitReached,
    /// The target disconnected before the request was answered. Wire code 9.
    TargetGone,
    /// `Accept` or `Refuse` for a request that does not exist (any more). Wire code 10.
    UnknownRequest,
    /// A request that makes no sense: to oneself, or a request id already pending. Code 11.
    InvalidRequest,
}

impl ErrorKind {
    pub(crate) fn code(self) -> u8 {
        match self {
            Self::UnknownTarget => 1,
            Self::Refused => 2,
            Self::Timeout => 3,
            Self::VersionMismatch => 4,
            Self::RateLimited => 5,
            Self::Malformed => 6,
            Self::NotRegistered => 7,
            Self::LimitReached => 8,
            Self::TargetGone => 9,
            Self::UnknownRequest => 10,
            Self::InvalidRequest => 11,
        }
    }

    pub(crate) fn from_code(code: u8) -> Option<Self> {
        Some(match code {
            1 => Self::UnknownTarget,
            2 => Self::Refused,
            3 => Self::Timeout,
            4 => Self::VersionMismatch,
            5 => Self::RateLimited,
            6 => Self::Malformed,
            7 => Self::NotRegistered,
            8 => Self::LimitReached,
            9 => Self::TargetGone,
            10 => Self::UnknownRequest,
            11 => Self::InvalidRequest,
            _ => return None,
        })
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::UnknownTarget => "unknown target",
            Self::Refused => "refused by target",
            Self::Timeout => "target did not answer in time",
            Self::VersionMismatch => "protocol version mismatch",
            Self::RateLimited => "rate limited",
            Self::Malformed => "malformed message",
            Self::NotRegistered => "not registered",
            Self::LimitReached => "limit reached",
            Self::TargetGone => "target disconnected",
            Self::UnknownRequest => "unknown request",
            Self::InvalidRequest => "invalid request",
        })
    }
}

/// A message from a peer to the punch server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientMsg {
    /// Register (or replace the registration) with local and UPnP candidates. Type 0x01.
    Register {
        /// Host, UPnP and relay candidates; the server adds the reflexive one it sees.
        candidates: Vec<Candidate>,
    },
    /// Ask to punch to `target`. Type 0x02.
    Connect {
        /// The requester's own id for this request, echoed in `Go` and `Error`.
        request_id: u64,
        /// Whom to connect to.
        target: PeerId,
    },
    /// Accept an [`ServerMsg::Incoming`] request. Type 0x03.
    Accept {
        /// The server's request id from `Incoming`.
        request_id: u64,
    },
    /// Refuse an [`ServerMsg::Incoming`] request. Type 0x04.
    Refuse {
        /// The server's request id from `Incoming`.
        request_id: u64,
    },
    /// Liveness and RTT check of the peer; answered with [`ServerMsg::Pong`]. Type 0x05.
    Ping {
        /// Opaque value echoed back.
        ts: u64,
    },
    /// Answer to a [`ServerMsg::Ping`], echoing its `ts`. Type 0x06.
    Pong {
        /// The value from the ping.
        ts: u64,
    },
    /// How the peer answers connect requests, decided in advance. Type 0x07. With
    /// `accept_all` the server treats every `Connect` to this peer as accepted at once:
    /// both sides get their `Go` without the `Incoming` / `Accept` round trip (one RTT
    /// saved); the dialer is still authenticated by its key in the QUIC handshake. The
    /// default (never sent, or `false`) is to ask with `Incoming`.
    Policy {
        /// Accept every request without being asked.
        accept_all: bool,
    },
    /// What the peer can do beyond protocol version 1's base. Type 0x08. An older server
    /// answers `Error { Malformed }` and the peer goes on as before.
    Capabilities {
        /// The peer can be parked ([`ServerMsg::Park`]): it keeps its registration alive
        /// with keep-alives ([`super::park`]) and dials again when woken.
        park: bool,
    },
    /// Keep this peer's own address from the peers it is introduced to: the server leaves
    /// out the reflexive candidate it observes, so the registered candidates (only relayed
    /// ones, for a relay-only peer) are all another peer learns. Type 0x09, no body; sent
    /// before `Register` and kept for the connection. An older server answers
    /// `Error { Malformed }` (unknown type) before `Registered`, which a relay-only peer
    /// treats as "this server cannot hide my address".
    HideAddress,
    /// How this peer's NAT maps ([`NatMapping`]), from its own probe. Type 0x0A, sent after
    /// `Register` and again when it changes. The server passes it on to the peers this one
    /// is introduced to ([`ServerMsg::PeerMapping`]), and from then on sends this peer the
    /// mappings of its own peers. An older server skips it (unknown type).
    NatMapping {
        /// The mapping behaviour.
        mapping: NatMapping,
    },
}

/// The instruction to start probing, sent to both sides of an accepted request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Go {
    /// The id this side knows the request by: its own for the requester, the server's
    /// (from `Incoming`) for the target.
    pub request_id: u64,
    /// The other side.
    pub peer: PeerId,
    /// The other side's candidates, its server-reflexive address included.
    pub peer_candidates: Vec<Candidate>,
    /// Short-term credentials for the probes of this attempt.
    pub credentials: Credentials,
    /// Send the first probe this long after receiving the message (the server already
    /// subtracted its estimate of the message's transit time). Microsecond precision.
    pub start_in: Duration,
    /// This side's role.
    pub role: Role,
    /// How the other side's NAT maps, when the server knows it: not part of the `Go` body,
    /// but taken from the [`ServerMsg::PeerMapping`] the server sends just before it (for
    /// the same request id). `None` from a server or peer that does not tell.
    pub peer_mapping: Option<NatMapping>,
}

/// A message from the punch server to a peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerMsg {
    /// The registration is in place. Type 0x81.
    Registered {
        /// The peer's address as the server sees it (its server-reflexive candidate).
        observed_addr: SocketAddr,
        /// The server's smoothed RTT estimate to the peer, if it has one.
        rtt: Option<Duration>,
    },
    /// Someone wants to connect; answer with `Accept` or `Refuse`. Type 0x82.
    Incoming {
        /// The server's id for the request.
        request_id: u64,
        /// The requester.
        from: PeerId,
    },
    /// Start probing. Type 0x83.
    Go(Go),
    /// An `Incoming` request was withdrawn (requester gone or timed out). Type 0x84.
    Cancelled {
        /// The server's id for the request.
        request_id: u64,
    },
    /// A request failed or a message was rejected. Type 0x85.
    Error {
        /// The request it concerns, if any (the id the receiver knows it by).
        request_id: Option<u64>,
        /// What went wrong.
        kind: ErrorKind,
        /// Human-readable detail.
        detail: String,
    },
    /// RTT probe; answer with [`ClientMsg::Pong`] echoing `ts`. Type 0x86.
    Ping {
        /// Opaque value to echo.
        ts: u64,
    },
    /// Answer to a [`ClientMsg::Ping`]. Type 0x87.
    Pong {
        /// The value from the ping.
        ts: u64,
    },
    /// The TURN relays this peer may use, with fresh credentials. Type 0x88. Sent right
    /// after the first `Registered` by a server configured with relays, and again (fresh
    /// credentials replacing the previous ones) at half their lifetime. A message type
    /// added in version 1 without a version bump: an older peer skips it as an unknown
    /// type (see the [version rule](super#version-rule)).
    Relays {
        /// At most [`MAX_RELAYS`](super::MAX_RELAYS) relays.
        relays: Vec<RelayCredential>,
    },
    /// The control connection was idle: the server closes it ([`super::CloseCode::Parked`])
    /// and keeps the registration while the peer sends keep-alives ([`super::park`]).
    /// Sent only to peers that announced [`ClientMsg::Capabilities`] `{ park: true }`.
    /// Type 0x89.
    Park {
        /// The key of the keep-alives and wake-ups (32 bytes, raw on the wire).
        key: ParkKey,
        /// Send a keep-alive this often (whole microseconds in a u32).
        keepalive: Duration,
    },
    /// How the other side of a request maps ([`ClientMsg::NatMapping`]), sent right before
    /// the request's `Go`, and only to peers that sent `NatMapping` themselves. Type 0x8A.
    PeerMapping {
        /// The id this side knows the request by (as in the `Go` that follows).
        request_id: u64,
        /// The other side's mapping behaviour.
        mapping: NatMapping,
    },
}

/// A relay offer in [`ServerMsg::Relays`]: the relay's URI, REST API credentials
/// (`EXPIRY:PEER_ID` and the password derived from the relays' shared secret) and their
/// expiry.
pub use crate::turn::RelayCredential;
