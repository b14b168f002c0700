//! Listing a game session on a master server (`master-server`).
//!
//! - [`wire`]: the API's JSON types, shared with the server.
//! - [`ListingClient`]: one call per API route.
//! - [`Keeper`]: the sans-IO state machine that keeps one row alive (heartbeats, coalesced
//!   patches, retries with backoff, re-creation after expiry, delisting).
//! - [`KeeperTask`]: runs a keeper with a client on tokio; the game talks to it through a
//!   [`KeeperHandle`] that never blocks.
//!
//! Flow of a hosted game:
//! 1. Build a [`ListingClient`] for the master server's URL.
//! 2. Build a [`Keeper`] with [`Keeper::create`] and the [`Desired`] row (its `connect` is
//!    the host's [`ConnectInfo`]).
//! 3. [`KeeperTask::spawn`] it; update the row with the handle's setters.
//! 4. [`KeeperHandle::delist`] when the game ends (or drop the handle: the row expires).

pub mod client;
pub mod keeper;
pub mod keeper_io;
pub mod keeper_task;
pub mod wire;

pub use client::{Filter, ListingClient, ListingError, MAX_RESPONSE_BYTES};
pub use keeper::Keeper;
pub use keeper_io::{Desired, KeeperConfig, KeeperEvent, KeeperRequest, KeeperResponse, RequestId};
pub use keeper_task::{DelistError, KeeperHandle, KeeperStatus, KeeperTask, OwnerToken};
pub use wire::{
    Attributes, ConnectInfo, CreateSession, Created, ErrorBody, ErrorDetail, HeartbeatAck,
    ListingId, PatchSession, SessionList, SessionRow,
};
