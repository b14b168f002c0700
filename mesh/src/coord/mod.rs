//! The punch coordinator protocol: the messages a peer and the punch server exchange on the
//! QUIC control connection, their framing, and how a peer names its punch server.
//!
//! Flow of one punch, as seen on the wire:
//! 1. The peer dials the server named by a [`PunchAddr`] (`ID@HOST:PORT`; the QUIC-TLS
//!    handshake proves the server holds `ID`, and the server learns the peer's id from the
//!    peer's own certificate). It opens one bidirectional stream and keeps it open.
//! 2. The peer sends [`ClientMsg::Register`] with its host and UPnP-mapped candidates; the
//!    server answers [`ServerMsg::Registered`] with the reflexive address it observes. The
//!    server sends [`ServerMsg::Ping`] now and then and the peer echoes [`ClientMsg::Pong`],
//!    which gives the server the RTT it needs for step 5. A server configured with TURN
//!    relays follows the first `Registered` with [`ServerMsg::Relays`]: each relay's URI
//!    with REST API credentials for this peer (username `EXPIRY:PEER_ID`), and sends fresh
//!    ones at half their lifetime.
//! 3. The requester sends [`ClientMsg::Connect`] `{ request_id, target }` (its own id for the
//!    request). An unknown target is answered at once with [`ServerMsg::Error`]
//!    ([`ErrorKind::UnknownTarget`]).
//! 4. The target gets [`ServerMsg::Incoming`] `{ request_id, from }`, where `request_id` is
//!    the server's id for the request, and answers [`ClientMsg::Accept`] or
//!    [`ClientMsg::Refuse`] with it. A refusal reaches the requester as
//!    [`ErrorKind::Refused`]; no answer in time as [`ErrorKind::Timeout`] (and the target
//!    gets [`ServerMsg::Cancelled`]).
//! 5. On accept, both sides get a [`ServerMsg::Go`] ([`Go`]): the other side's candidates
//!    (including the reflexive address the server saw), fresh short-term credentials for
//!    the probes, the ICE-style [`Role`], and `start_in`: how long after *receiving* the
//!    message to send the first probe. The server picks the delays so both sides start at
//!    the same moment and both messages arrive before it. [`Go::start_at`] and
//!    [`Go::probe_candidates`] turn it into the prober's inputs ([`crate::punch`]).
//!
//! Wire format ([`encode`], [`FrameDecoder`]): every message is one frame
//!
//! ```text
//! +----------------+---------+------+------------------+
//! | length: u16 BE | version | type | body             |
//! +----------------+---------+------+------------------+
//!   length counts version + type + body, at most MAX_FRAME_LEN (16 KiB)
//! ```
//!
//! The length prefix and the version byte keep this layout in every protocol version, so a
//! peer of another version is told so ([`CodecError::VersionMismatch`]) instead of hanging.
//! Bodies are compact big-endian binary: integers fixed width, a peer id its 32 raw key
//! bytes, a socket address `family (4|6), ip, port`, a string `u8 length, UTF-8` (at most
//! [`MAX_STRING_LEN`]), a list `u8 count, items` (at most [`MAX_CANDIDATES`]), an option
//! `0 | 1 value`, a duration whole microseconds in a u32. A body with trailing bytes, an
//! unknown type or enum code is malformed. Type and enum codes are listed on [`ClientMsg`],
//! [`ServerMsg`] and their field types.
//!
//! # Version rule
//!
//! Every frame carries [`PROTOCOL_VERSION`]; a frame of another version is fatal and the
//! server answers `Error { VersionMismatch }`, so peers of incompatible versions get a
//! clear error instead of a hang. Within a version, the only compatible change is a *new
//! message type*: a receiver that does not know a type reports
//! [`CodecError::UnknownType`], which is not fatal (the frame is skipped, the stream stays
//! in sync), and both the server and this crate's peers carry on. A new type that a
//! receiver must understand, or any change to an existing message's layout (a body with
//! trailing bytes is malformed), needs a version bump. [`ServerMsg::Relays`] (0x88) was
//! added this way: a server sends it after `Registered`, so a peer that predates it still
//! registers and punches; it just gets no relays.
//!
//! The server closes a control connection with a [`CloseCode`] (QUIC application error
//! code and reason); a peer reads it back to decide whether reconnecting can help.
//!
//! Parking (an extension within version 1): a peer that sends
//! [`ClientMsg::Capabilities`] `{ park: true }` may get [`ServerMsg::Park`] after an idle
//! while; the server then closes the connection ([`CloseCode::Parked`]) and keeps the
//! registration as long as the peer sends authenticated keep-alives ([`park`], driven by
//! the sans-IO [`ParkKeeper`]). A connect request for a parked peer makes the server send
//! it a wake-up datagram; the peer dials again (its TLS key proves it is the same peer),
//! registers, and gets the held `Incoming`. Peers that never send `Capabilities` are never
//! parked.
//!
//! A server that gets a frame of another version answers `Error { VersionMismatch }` in its
//! own version and closes; the peer's decoder then reports [`CodecError::VersionMismatch`]
//! with both version numbers.

mod addr;
mod body;
mod close;
mod codec;
mod convert;
mod msg;
pub mod park;
mod park_keeper;
#[cfg(test)]
mod tests;

pub use addr::{ParsePunchAddrError, PunchAddr};
pub use close::CloseCode;
pub use codec::{decode_frame, encode, CodecError, FrameDecoder, Reader, WireMessage, Writer};
pub use msg::{
    Candidate, CandidateKind, ClientMsg, Credentials, ErrorKind, Go, NatMapping, RelayCredential,
    Role, ServerMsg,
};
pub use park::ParkKey;
pub use park_keeper::{ParkEvent, ParkKeeper, ParkLost};

/// The protocol version carried by every frame.
pub const PROTOCOL_VERSION: u8 = 1;

/// Largest frame accepted: version + type + body, in bytes.
pub const MAX_FRAME_LEN: usize = 16 * 1024;

/// Most candidates one message may carry.
pub const MAX_CANDIDATES: usize = 16;

/// Most relays one [`ServerMsg::Relays`] may carry.
pub const MAX_RELAYS: usize = 8;

/// Longest string field (ufrag, password, error detail), in bytes.
pub const MAX_STRING_LEN: usize = 255;
