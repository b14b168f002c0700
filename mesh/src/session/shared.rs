//! State shared between the session task and the game's [`super::Session`] handle: the
//! table of member links that `send`/`broadcast` use without a hop through the task, the
//! membership snapshot, and the counters.
//!
//! Steps of a send: check the session is open, find the member's link (only current
//! members are in the table), then either encode one `App` frame (once for a broadcast)
//! and queue it on the link's app stream, or send a datagram checked against the
//! connection's datagram size. A broadcast tries every member and names the ones it
//! missed ([`SendError::Partial`]).
//!
//! The receiving links' tasks read the same table to admit game messages
//! ([`Shared::is_current`]) and wait on [`Shared::published`] for a view that admits a
//! sender.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use bytes::Bytes;

use super::api::{Reliability, SendError};
use super::link::{LinkHandle, LinkStats};
use super::{Membership, SessionMsg, MAX_RELIABLE_MESSAGE};
use crate::coord::encode;
use crate::identity::PeerId;

/// Counters of one session.
#[derive(Debug, Default)]
pub struct SessionStats {
    /// Membership events dropped because the game did not take events at all (reliable
    /// messages are never dropped: they wait; datagrams are counted in `links`).
    pub events_dropped: AtomicU64,
    /// Game messages from peers that were not (or no longer) members on that link.
    pub messages_refused: AtomicU64,
    /// Protocol violations by peers (their links were closed).
    pub violations: AtomicU64,
    /// Membership frames that found a link's queue full (that link was closed).
    pub frames_dropped: AtomicU64,
    /// Per-link counters (datagrams dropped, malformed frames).
    pub links: Arc<LinkStats>,
}

/// A view of the membership for the game's handle.
#[derive(Debug, Clone, Default)]
pub(crate) struct Snapshot {
    pub epoch: u64,
    pub members: Vec<PeerId>,
    pub host: Option<PeerId>,
    pub listing: Option<String>,
}

impl Snapshot {
    /// The view of `core` now.
    pub(super) fn of(core: &Membership) -> Self {
        Snapshot {
            epoch: core.view().epoch,
            members: if core.is_member() {
                core.view().members.clone()
            } else {
                Vec::new()
            },
            host: core.host_id(),
            listing: core.grant().map(|g| g.listing.clone()),
        }
    }
}

/// State shared between the session task and the game's handle.
#[derive(Debug)]
pub(crate) struct Shared {
    /// Links to current members (what `send` may use).
    pub(super) links: RwLock<HashMap<PeerId, LinkHandle>>,
    pub(super) snapshot: Mutex<Snapshot>,
    pub(super) closed: AtomicBool,
    /// Notified each time the link table is published.
    pub(super) published: tokio::sync::Notify,
    pub stats: SessionStats,
}

impl Shared {
    pub fn snapshot(&self) -> Snapshot {
        self.snapshot
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Whether `peer` is a current member reached over `link` (its messages may go to the
    /// game).
    pub fn is_current(&self, peer: &PeerId, link: u64) -> bool {
        let links = self.links.read().unwrap_or_else(|p| p.into_inner());
        links.get(peer).is_some_and(|l| l.id == link)
    }

    /// Forgets every link (the session is over).
    pub fn clear_links(&self) {
        self.links
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }

    fn link(&self, peer: &PeerId) -> Option<LinkHandle> {
        let links = self.links.read().unwrap_or_else(|p| p.into_inner());
        links.get(peer).cloned()
    }

    pub fn send(
        &self,
        peer: PeerId,
        bytes: Bytes,
        reliability: Reliability,
    ) -> Result<(), SendError> {
        if self.closed.load(Ordering::Relaxed) {
            return Err(SendError::Closed);
        }
        let link = self
            .link(&peer)
            .ok_or_else(|| SendError::NotMember(peer.to_string()))?;
        match reliability {
            Reliability::ReliableOrdered => {
                let frame = encode_app(&bytes)?;
                if link.send_frame(frame) {
                    Ok(())
                } else {
                    Err(SendError::QueueFull(peer.to_string()))
                }
            }
            Reliability::Unreliable => send_datagram(&link, bytes),
        }
    }

    pub fn broadcast(&self, bytes: Bytes, reliability: Reliability) -> Result<(), SendError> {
        if self.closed.load(Ordering::Relaxed) {
            return Err(SendError::Closed);
        }
        let links: Vec<(PeerId, LinkHandle)> = {
            let links = self.links.read().unwrap_or_else(|p| p.into_inner());
            links.iter().map(|(p, l)| (*p, l.clone())).collect()
        };
        // Encode once for every member.
        let frame = match reliability {
            Reliability::ReliableOrdered => Some(encode_app(&bytes)?),
            Reliability::Unreliable => None,
        };
        let mut sent = 0;
        let mut failed = Vec::new();
        for (peer, link) in links {
            let result = match &frame {
                Some(f) if link.send_frame(f.clone()) => Ok(()),
                Some(_) => Err(SendError::QueueFull(peer.to_string())),
                None => send_datagram(&link, bytes.clone()),
            };
            match result {
                Ok(()) => sent += 1,
                Err(e) => failed.push((peer, e)),
            }
        }
        if failed.is_empty() {
            Ok(())
        } else {
            Err(SendError::Partial { sent, failed })
        }
    }
}

fn encode_app(bytes: &[u8]) -> Result<Bytes, SendError> {
    if bytes.len() > MAX_RELIABLE_MESSAGE {
        return Err(SendError::TooLarge {
            len: bytes.len(),
            max: MAX_RELIABLE_MESSAGE,
        });
    }
    let mut buf = Vec::with_capacity(bytes.len() + 6);
    encode(
        &SessionMsg::App {
            data: bytes.to_vec(),
        },
        &mut buf,
    )
    .map_err(|_| SendError::TooLarge {
        len: bytes.len(),
        max: MAX_RELIABLE_MESSAGE,
    })?;
    Ok(Bytes::from(buf))
}

/// Sends a game datagram behind its one-byte tag ([`crate::route::wire`]: the link's
/// datagrams also carry routed traffic).
fn send_datagram(link: &LinkHandle, bytes: Bytes) -> Result<(), SendError> {
    let max = link.conn.max_datagram_size().unwrap_or(0).saturating_sub(1);
    if bytes.len() > max {
        return Err(SendError::TooLarge {
            len: bytes.len(),
            max,
        });
    }
    link.conn
        .send_datagram(crate::route::wire::game(&bytes))
        .map_err(|e| SendError::Datagram(e.to_string()))
}
