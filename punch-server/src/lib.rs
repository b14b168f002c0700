//! STUN server (RFC 8489, RFC 5780 behaviour discovery) and punchthrough coordinator.
//!
//! Layout:
//!
//! - [`server`]: the sans-IO STUN core (`handle_input(now, local, from, bytes) -> Outcome`),
//!   with [`wire`] (structural checks, FINGERPRINT; RFC 7983 classification is
//!   `mesh::socket::demux`, the workspace's one demux),
//!   [`response`] (encoding with `stun-rs`), [`rate_limit`] and [`counters`].
//! - [`config`]: the runtime configuration, apart from the CLI.
//! - [`driver`]: the thin tokio driver (sockets, workers, the non-STUN hook, shutdown),
//!   with [`send_batch`] (GSO coalescing of responses).
//! - [`memory`]: returning the heap memory of parked connections to the OS.
//! - [`metrics_http`]: the `/metrics` and `/healthz` HTTP endpoint.
//! - [`coordinator`]: the sans-IO punch coordinator (registrations, connect requests, the
//!   common start time); its wire protocol is `mesh::coord`.
//! - [`quic`]: the coordinator's QUIC driver on the STUN port: QUIC datagrams from the
//!   primary worker's non-STUN hook feed a quinn endpoint (mutual TLS with the server's
//!   identity), one task per connection pumps its control stream, one task owns the
//!   coordinator; [`quic::start`] starts STUN and QUIC together.
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod config;
pub mod coordinator;
pub mod counters;
pub mod driver;
pub mod memory;
pub mod metrics_http;
pub mod quic;
pub mod rate_limit;
pub mod response;
pub mod send_batch;
pub mod server;
pub mod wire;

pub use config::{ConfigError, ServerConfig, StunConfig};
pub use counters::{Counters, DropReason};
pub use server::{Endpoints, Outcome, SocketId, StunServer, Transmit};
