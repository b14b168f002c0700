//! TURN relay server (RFC 8656 over UDP) for peers that have no direct path to each other.
//!
//! Flow:
//!
//! 1. [`config`]: the runtime settings (addresses, realm, shared secret, limits, peer
//!    policy), filled in by the `proxy` binary's flags or by a library user.
//! 2. [`server`]: the sans-IO core (Binding, Allocate, Refresh, CreatePermission,
//!    ChannelBind, Send/Data indications, ChannelData), with long-term credentials in the
//!    TURN REST API form ([`credentials`]) and stun-rs as the STUN codec ([`wire`]), both
//!    shared with the punch server and peers through `mesh::turn`.
//! 3. [`driver`]: one thread owning the core, the listening socket and one socket per
//!    allocation, with batched receives and GSO sends (quinn-udp).
//! 4. [`metrics`]: the core's counters as Prometheus metrics (the `metrics` crate) on
//!    `/metrics`, plus `/healthz`.
//! 5. [`client`]: the workspace's TURN client (`mesh::turn`) over a blocking socket, for
//!    tests, benchmarks and tools.

pub mod client;
pub mod config;
pub mod driver;
pub mod metrics;
pub mod server;

/// The TURN REST API credentials, shared with the punch server and peers.
pub use mesh::turn::credentials;
/// The framing glue to stun-rs and ChannelData, shared with the TURN client in `mesh`.
pub use mesh::turn::wire;
