//! The socket layer: every datagram of an endpoint (QUIC to peers and to the punch server,
//! STUN, probes) goes through its primary UDP socket, or through one of the extra sockets
//! birthday probing opens ([`extra`]), or as a routed datagram through another member
//! ([`routed`]); quinn sees only QUIC, addressed to stable synthetic addresses that the
//! path layer maps to live paths.
//!
//! Flow:
//! 1. [`demux::classify`] sorts each received datagram by its first byte (RFC 7983,
//!    RFC 9443): QUIC, STUN (with the RFC 8489 magic cookie), or unknown.
//! 2. [`path::PathTable`] maps synthetic addresses to [`path::Path`]s and real sources back
//!    (sans-IO, bounded).
//! 3. [`udp::MeshSocket`] is the `quinn::AsyncUdpSocket` that applies both per packet, with
//!    batched I/O from `quinn-udp`; STUN goes to a bounded queue.
//!    Its [`poller::WritablePoller`] (shared with the punch server's QUIC socket) waits for the
//!    socket to become writable when a send would block.
//!    Addresses cross the kernel boundary through [`family`] only: IPv4-mapped sources of a
//!    dual-stack socket become IPv4, and IPv4 destinations become IPv4-mapped again.
//! 4. [`endpoint::Endpoint`] ties socket, quinn endpoint and identity together: `connect` to a
//!    known peer id, `accept` with the remote's verified peer id.

pub mod demux;
pub mod endpoint;
pub mod extra;
pub mod family;
pub mod path;
pub mod poller;
pub mod relay;
pub mod routed;
pub mod udp;

pub use endpoint::{
    default_transport, endpoint_config, BindError, ConnectError, Endpoint, EndpointOptions,
    PeerConnection, INITIAL_RTT,
};
pub use extra::{ExtraSocketError, MAX_EXTRA_SOCKETS};
pub use family::{bind_udp, canonical, SocketFamily};
pub use path::{LocalSocket, Path, PathTable, RouteId};
pub use poller::{SharedUdpSocket, WritablePoller};
pub use routed::RoutedDatagram;
pub use udp::{MeshSocket, RawSendError, SocketStats, StunDatagram, StunReceiver};
