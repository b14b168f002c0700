//! State shared between the session task and the game's [`super::Session`] handle: the
//! table of member links that `send`/`broadcast` use without a hop through the task, the
//! membership snapshot, and the counters.
//!
//! Steps of a send: check the session is open, find the member's link (only current
//! members are in the table), then either encode one `App` frame (once for a broadcast)
//! and queue it on the link's stream, leaving the reserved slots to membership frames, or
//! send a datagram checked against the connection's datagram size.

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
    /// Game messages dropped because the game did not take events fast enough.
    pub events_dropped: AtomicU64,
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
    pub stats: SessionStats,
}

impl Shared {
    pub fn snapshot(&self) -> Snapshot {
        self.snapshot
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
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
        let mut first_error = None;
        for (peer, link) in links {
            let result = match &frame {
                Some(f) if link.send_frame(f.clone()) => Ok(()),
                Some(_) => Err(SendError::QueueFull(peer.to_string())),
                None => send_datagram(&link, bytes.clone()),
            };
            if let Err(e) = result {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
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

fn send_datagram(link: &LinkHandle, bytes: Bytes) -> Result<(), SendError> {
    let max = link.conn.max_datagram_size().unwrap_or(0);
    if bytes.len() > max {
        return Err(SendError::TooLarge {
            len: bytes.len(),
            max,
        });
    }
    link.conn
        .send_datagram(bytes)
        .map_err(|e| SendError::Datagram(e.to_string()))
}
