//! Direct connectivity through a punch server: the piece a game links to reach a peer by
//! its [`PeerId`](crate::identity::PeerId) alone.
//!
//! Flow (ICE-like, RFC 8445 ideas over the `mesh::coord` protocol):
//! 1. [`DirectNode::start`] binds the one UDP socket, dials the punch server over QUIC from
//!    it (key verified), registers its host candidate and learns its reflexive address;
//!    UPnP adds a mapped candidate in the background, port prediction a window of
//!    predicted reflexive candidates for a NAT that allocates ports in sequence
//!    (`predicted`), and each offered TURN relay a relayed one.
//! 2. [`DirectNode::connect`] asks the server for the target; the target's node accepts
//!    (by [`IncomingPolicy`]); both get a `Go` with each other's candidates, fresh
//!    credentials and a common start time.
//! 3. Both probe ([`crate::punch::Prober`], in the engine task) and, with a TURN relay
//!    offered by the punch server, set up a relayed path at the same time (`race`); QUIC
//!    runs on whichever is ready first, pinned to the target's key. A relayed connection
//!    moves to a direct pair when one validates, and back to the relay when the direct
//!    path dies: each live connection's path core ([`crate::conn::PathManager`], hosted
//!    by the engine, `conn_slots`; applied by `supervise`), with consent checks on a
//!    silent direct path; [`DirectConnection::path`] reports each move. The target's
//!    [`DirectNode::accept`] yields the connection.
//! 4. Failures are typed ([`DialError`]): unknown target, refused, timeout, no direct
//!    path (with every pair tried), handshake failures.
//! 5. A lost control connection is dialed again in the background with backoff; dials
//!    made meanwhile fail with `control_lost`, established peer connections are unaffected.
//! 6. [`DirectNode::shutdown`] closes everything and removes the UPnP mapping; dropping the
//!    node instead closes the control connection and stops its tasks (no reconnection),
//!    while peer connections already handed out stay up.

mod allow;
mod birthdays;
mod candidates;
mod client;
mod config;
mod conn_slots;
mod control;
mod control_park;
mod control_task;
mod engine;
mod error;
mod node;
mod predicted;
mod race;
mod rebind;
mod relays;
mod route;
mod supervise;

pub use allow::{Allowlist, HOLD as ALLOWLIST_HOLD};
pub use birthdays::BirthdaySnapshot;
pub use client::{ClientEvent, ClientSettings, ControlClient, RequestId};
pub use config::{DirectConfig, IncomingPolicy};
pub use control::Registration;
pub use error::{ControlError, DialError, StartError};
pub use node::{
    DirectConnection, DirectNode, PREDICT_WAIT, RELAY_OFFER_MIN_WAIT, RELAY_OFFER_WAIT,
    RELAY_READY_WAIT,
};
pub use relays::{
    RelayError, RelayState, RelayStatus, RelayedAddr, BIND_TIMEOUT, MAX_WAITING_BINDS,
    RELEASE_WAIT, RESOLVE_TIMEOUT,
};
pub use route::{ActivePath, How, HowFinder, PathType, MAX_WATCHED_PATHS};
pub use supervise::{DEAD_AFTER, EARLY_PHASE, RETRY_EARLY, RETRY_MAX, TICK};

use std::time::{Duration, Instant};

/// Farthest a deadline is set: a configured duration beyond it (e.g. `Duration::MAX` for
/// "never") counts as this long.
const FAR_FUTURE: Duration = Duration::from_secs(365 * 24 * 60 * 60);

/// Sleeps until `deadline`, or forever without one (a `select!` arm with no timer).
pub(crate) async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d.into()).await,
        None => std::future::pending().await,
    }
}

/// `from + d`, with `d` capped at [`FAR_FUTURE`] (never overflows).
pub(crate) fn deadline_from(from: Instant, d: Duration) -> Instant {
    let d = d.min(FAR_FUTURE);
    from.checked_add(d).unwrap_or(from)
}

/// The deadline `d` from now, capped at [`FAR_FUTURE`] (never overflows).
pub(crate) fn deadline_after(d: Duration) -> Instant {
    deadline_from(Instant::now(), d)
}

/// A configured queue or concurrency bound as tokio accepts it: at least 1, at most
/// [`tokio::sync::Semaphore::MAX_PERMITS`] (a larger bound would panic).
pub(crate) fn queue_bound(n: usize) -> usize {
    n.clamp(1, tokio::sync::Semaphore::MAX_PERMITS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadlines_saturate_instead_of_overflowing() {
        let now = Instant::now();
        assert_eq!(deadline_from(now, Duration::MAX), now + FAR_FUTURE);
        assert_eq!(
            deadline_from(now, Duration::from_secs(3)),
            now + Duration::from_secs(3)
        );
        assert!(deadline_after(Duration::MAX) > now);
    }

    #[test]
    fn queue_bounds_are_clamped_to_what_tokio_accepts() {
        assert_eq!(queue_bound(0), 1);
        assert_eq!(queue_bound(64), 64);
        assert_eq!(queue_bound(usize::MAX), tokio::sync::Semaphore::MAX_PERMITS);
        let _ = tokio::sync::mpsc::channel::<()>(queue_bound(usize::MAX));
    }
}
