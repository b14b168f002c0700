//! Everything a game links: identity, the path layer under QUIC, NAT traversal, UPnP, the
//! master-server client and the session/mesh protocol.
//!
//! Start at [`session::Mesh`]: host a session (listed on the master server), list sessions,
//! join one; a [`session::Session`] is a verified, fully connected QUIC mesh with one agreed
//! host that migrates when the host leaves or dies. The README of the repository describes
//! the architecture, the protocols and the measured figures.
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod backoff;
pub mod conn;
pub mod coord;
pub mod direct;
pub mod identity;
pub mod limit;
pub mod listing;
pub mod nat;
pub mod punch;
pub mod route;
pub mod session;
pub mod socket;
pub mod stun;
pub mod turn;
pub mod upnp;
