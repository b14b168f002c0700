//! Routing through a member of the mesh (as RakNet's Router2): when two members reach
//! each other neither directly nor through a relay, a third member that reaches both
//! forwards their QUIC packets. The inner connection between the two ends stays end to
//! end encrypted: the router reads only a routing header.
//!
//! Flow of one route:
//! 1. Each end asks the router (the session's membership protocol carries the asks); the
//!    router's [`Forwarder`] opens the route once both asked, only between members of its
//!    own session, within a bandwidth and packet-rate budget.
//! 2. Each end's [`RouteHub::open_end`] points the other end's entry in the path table at
//!    the route ([`crate::socket::Path::Router`]); the socket hands the inner
//!    connection's datagrams to the hub.
//! 3. The hub sends each as a QUIC datagram of its connection to the router, behind a
//!    one-byte tag and the other end's id ([`wire`]); the router forwards it to the other
//!    end with the source's id; that end's hub hands it to its socket under the source's
//!    synthetic address. The outer connections must carry
//!    [`wire::MIN_OUTER_DATAGRAM`]-byte datagrams (QUIC's 1200 plus the header), or the
//!    route is refused with that reason.
//!
//! Datagram format and sizes: [`wire`]. Budgets: [`forward`]. The driver: [`hub`].

pub mod forward;
pub mod hub;
pub mod wire;

pub use forward::{Asked, ForwardConfig, ForwardStats, Forwarder, Refused};
pub use hub::{HubStats, RouteError, RouteHub};
