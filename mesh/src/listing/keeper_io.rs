//! The inputs and outputs of the sans-IO [`super::Keeper`]: the desired row, the
//! tuning, the requests it asks a driver to send, their responses and its events.
//!
//! A driver's loop, in order:
//! 1. Send what [`super::Keeper::poll_request`] returns (at most one at a time).
//! 2. Feed its answer back with [`super::Keeper::handle_response`].
//! 3. Sleep until [`super::Keeper::poll_timeout`], then call
//!    [`super::Keeper::handle_timeout`].
//! 4. Report what [`super::Keeper::poll_event`] returns.

use std::time::Duration;

use super::client::ListingError;
use super::wire::{
    Attributes, ConnectInfo, CreateSession, Created, HeartbeatAck, ListingId, PatchSession,
    SessionRow,
};

/// Most events kept until polled; older ones are dropped first.
pub const MAX_EVENTS: usize = 32;

/// The session a keeper lists: what the host wants the row to say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Desired {
    /// Game name.
    pub game: String,
    /// Display name.
    pub name: String,
    /// Capacity.
    pub max_players: u32,
    /// Current players.
    pub players: u32,
    /// Filterable attributes.
    pub attributes: Attributes,
    /// How to reach the host.
    pub connect: Option<ConnectInfo>,
}

/// Tuning of a listing keeper ([`crate::listing::KeeperTask`]).
#[derive(Debug, Clone)]
pub struct KeeperConfig {
    /// Heartbeat interval as a fraction of the row's timeout (clamped to 0.05..=0.9).
    /// Default 1/3.
    pub heartbeat_fraction: f64,
    /// First retry delay after a failure. Default 250 ms.
    pub retry_min: Duration,
    /// Seed of the jitter's random number generator.
    pub seed: u64,
}

impl Default for KeeperConfig {
    fn default() -> Self {
        KeeperConfig {
            heartbeat_fraction: 1.0 / 3.0,
            retry_min: Duration::from_millis(250),
            seed: rand::random(),
        }
    }
}

/// Identifies a request the keeper asked for, to match its response.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RequestId(pub u64);

/// A request for the driver to send.
#[derive(Debug, Clone)]
pub enum KeeperRequest {
    /// `POST /v1/sessions`; answer with [`KeeperResponse::Created`].
    Create(CreateSession),
    /// `POST /v1/sessions/{id}/heartbeat`.
    Heartbeat {
        /// The row.
        id: ListingId,
        /// Its owner token.
        token: String,
    },
    /// `PATCH /v1/sessions/{id}`.
    Patch {
        /// The row.
        id: ListingId,
        /// Its owner token.
        token: String,
        /// The changed fields.
        patch: PatchSession,
    },
    /// `DELETE /v1/sessions/{id}`.
    Delete {
        /// The row.
        id: ListingId,
        /// Its owner token.
        token: String,
    },
}

/// A successful answer to a [`KeeperRequest`].
#[derive(Debug, Clone)]
pub enum KeeperResponse {
    /// Answer to `Create`.
    Created(Created),
    /// Answer to `Heartbeat`.
    Heartbeat(HeartbeatAck),
    /// Answer to `Patch`.
    Patched(SessionRow),
    /// Answer to `Delete`.
    Deleted,
}

/// What happened, for the driver to report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeeperEvent {
    /// The row was created.
    Listed {
        /// Its id.
        id: ListingId,
        /// Its owner token.
        token: String,
    },
    /// A patch was applied.
    Updated,
    /// A request failed; the next one goes out after `retry_in`.
    Failed {
        /// Why.
        error: ListingError,
        /// Delay before the retry.
        retry_in: Duration,
    },
    /// The row had expired (404) and was posted again.
    Recreated {
        /// The new id.
        id: ListingId,
        /// The new owner token.
        token: String,
    },
    /// The server refused the token (401/403); the keeper stopped.
    Unauthorized,
    /// The row is delisted; the keeper stopped.
    Delisted,
}
