//! STUN (RFC 8489) for the whole workspace: one codec ([`codec`], on stun-rs), its
//! constants, and the routing of received messages to their owner by transaction id
//! ([`router`]). The RFC 7983 demux of the one socket is `crate::socket::demux`; TURN framing
//! (ChannelData) is `crate::turn::wire`.

pub mod codec;
pub mod router;

pub use codec::{
    decode_stun, encode_stun, fingerprint_value, integrity_ok, looks_like_stun, Decoded,
    ATTR_FINGERPRINT, HEADER_LEN, MAGIC_COOKIE,
};
pub use router::{Route, RouterStats, StunOwner, StunRouter};
