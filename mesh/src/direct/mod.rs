//! Direct connectivity through a punch server: the piece a game links to reach a peer by
//! its [`PeerId`](crate::identity::PeerId) alone.
//!
//! Flow (ICE-like, RFC 8445 ideas over the `mesh::coord` protocol):
//! 1. [`DirectNode::start`] binds the one UDP socket, dials the punch server over QUIC from
//!    it (key verified), registers its host candidate and learns its reflexive address;
//!    UPnP adds a mapped candidate in the background.
//! 2. [`DirectNode::connect`] asks the server for the target; the target's node accepts
//!    (by [`IncomingPolicy`]); both get a `Go` with each other's candidates, fresh
//!    credentials and a common start time.
//! 3. Both probe ([`crate::punch::Prober`], in the engine task); the dialer nominates the
//!    first validated pair and runs the QUIC handshake on it, pinned to the target's key.
//!    The target's [`DirectNode::accept`] yields the connection.
//! 4. Failures are typed ([`DialError`]): unknown target, refused, timeout, no direct
//!    path (with every pair tried), handshake failures.
//! 5. A lost control connection is dialed again in the background with backoff; dials
//!    made meanwhile fail with `control_lost`, established peer connections are unaffected.

mod config;
mod control;
mod control_task;
mod engine;
mod error;
mod node;

pub use config::{DirectConfig, IncomingPolicy};
pub use control::Registration;
pub use error::{ControlError, DialError, StartError};
pub use node::{DirectConnection, DirectNode};

/// Sleeps until `deadline`, or forever without one (a `select!` arm with no timer).
pub(crate) async fn sleep_until_opt(deadline: Option<std::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d.into()).await,
        None => std::future::pending().await,
    }
}
