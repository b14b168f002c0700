//! Everything a game links: identity, the path layer under QUIC, NAT traversal, UPnP and the
//! session/mesh protocol. See `DESIGN.md` for the architecture.
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod backoff;
pub mod coord;
pub mod direct;
pub mod identity;
pub mod listing;
pub mod nat;
pub mod punch;
pub mod session;
pub mod socket;
pub mod upnp;
