//! Game traffic of one link: reliable messages on their own QUIC stream, unreliable ones as
//! datagrams, both handed straight to the game's message queue.
//!
//! Reliable messages are end to end: nothing is dropped at the receiver.
//! 1. Each side opens one unidirectional stream toward the other (the *app stream*) when the
//!    link starts; [`SessionMsg::App`] frames travel on it, apart from the membership
//!    stream, so a game that stops reading never stalls heartbeats or views.
//! 2. The reader decodes frames and waits for room in the game's bounded message queue.
//!    While it waits it reads nothing more, QUIC flow control fills up, the sender's link
//!    queue fills, and its `send` returns [`super::SendError::QueueFull`].
//! 3. A message is delivered only while its sender is a current member on this link. A
//!    member's message can outrun the view that admits it (it comes from another
//!    connection than the host's view): the reader waits for the view, up to
//!    [`ADMIT_WAIT`], and drops it (counted) if it never comes.
//! 4. Datagrams take the same gate but never wait: one that finds the queue full or its
//!    sender not admitted is dropped and counted.
//! 5. Anything but an `App` frame on the app stream, or a second app stream, is a protocol
//!    violation: the session task closes the link.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;

use super::api::{Reliability, SessionEvent};
use super::link::Input;
use super::shared::Shared;
use super::SessionMsg;
use crate::coord::FrameDecoder;
use crate::identity::PeerId;
use crate::route::RouteHub;

/// Longest a message waits for the view that admits its sender.
pub(crate) const ADMIT_WAIT: Duration = Duration::from_secs(20);

/// Where a link's game traffic goes: the game's queue, behind the membership gate.
#[derive(Debug, Clone)]
pub(crate) struct AppSink {
    /// The game's message queue.
    pub messages: mpsc::Sender<SessionEvent>,
    /// The published membership (which links are current members).
    pub shared: Arc<Shared>,
    /// The node's route hub: the links' datagrams also carry routed traffic.
    pub routes: RouteHub,
}

impl AppSink {
    /// Sorts a datagram of the link to `peer`: routed traffic to the route hub, a game
    /// datagram to the game if its sender is admitted and there is room.
    pub fn datagram(&self, peer: PeerId, link: u64, bytes: Bytes) {
        let Some(bytes) = self.routes.on_datagram(peer, bytes) else {
            return;
        };
        let stats = &self.shared.stats;
        if !self.shared.is_current(&peer, link) {
            stats.messages_refused.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let event = SessionEvent::Message {
            from: peer,
            bytes,
            reliability: Reliability::Unreliable,
        };
        if self.messages.try_send(event).is_err() {
            stats
                .links
                .datagrams_dropped
                .fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Hands a reliable message to the game, waiting for its sender's admission and for
    /// room. False once the game's queue is gone.
    async fn reliable(&self, peer: PeerId, link: u64, data: Vec<u8>) -> bool {
        if !self.admitted(peer, link).await {
            self.shared
                .stats
                .messages_refused
                .fetch_add(1, Ordering::Relaxed);
            return true;
        }
        let event = SessionEvent::Message {
            from: peer,
            bytes: Bytes::from(data),
            reliability: Reliability::ReliableOrdered,
        };
        self.messages.send(event).await.is_ok()
    }

    /// Waits until `peer` on `link` is a published member, up to [`ADMIT_WAIT`].
    async fn admitted(&self, peer: PeerId, link: u64) -> bool {
        let wait = async {
            loop {
                // Register for the next publication before looking, so none is missed.
                let published = self.shared.published.notified();
                if self.shared.is_current(&peer, link) {
                    return true;
                }
                if self.shared.closed.load(Ordering::Relaxed) {
                    return false;
                }
                published.await;
            }
        };
        tokio::time::timeout(ADMIT_WAIT, wait)
            .await
            .unwrap_or(false)
    }
}

/// Writes the queued game frames on this side's app stream; an empty frame finishes it.
pub(crate) async fn write_loop(conn: quinn::Connection, mut rx: mpsc::Receiver<Bytes>) {
    let mut send = match conn.open_uni().await {
        Ok(s) => s,
        Err(e) => {
            tracing::debug!(error = %e, "app stream not opened");
            return;
        }
    };
    while let Some(frame) = rx.recv().await {
        if frame.is_empty() {
            break;
        }
        if let Err(e) = send.write_chunk(frame).await {
            tracing::debug!(error = %e, "app stream write failed");
            return;
        }
    }
    let _ = send.finish();
    let _ = send.stopped().await;
}

/// Reads the peer's app stream into the game's queue (see the module docs).
pub(crate) async fn read_loop(
    peer: PeerId,
    link: u64,
    conn: quinn::Connection,
    input: mpsc::Sender<Input>,
    sink: AppSink,
) {
    let Ok(mut recv) = conn.accept_uni().await else {
        return;
    };
    let violation = |error: &str| Input::Malformed {
        peer,
        link,
        error: error.to_string(),
    };
    let mut decoder = FrameDecoder::<SessionMsg>::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        tokio::select! {
            read = recv.read(&mut buf) => match read {
                Ok(Some(n)) => decoder.push(buf.get(..n).unwrap_or_default()),
                Ok(None) | Err(_) => return,
            },
            // A second app stream is not part of the protocol.
            Ok(_) = conn.accept_uni() => {
                let _ = input.send(violation("a second app stream")).await;
                return;
            }
        }
        while let Some(frame) = decoder.pop() {
            let data = match frame {
                Ok(SessionMsg::App { data }) => data,
                Ok(_) => {
                    let _ = input
                        .send(violation("a membership frame on the app stream"))
                        .await;
                    return;
                }
                Err(e) => {
                    sink.shared
                        .stats
                        .links
                        .malformed
                        .fetch_add(1, Ordering::Relaxed);
                    let _ = input.send(violation(&e.to_string())).await;
                    return;
                }
            };
            if !sink.reliable(peer, link, data).await {
                return;
            }
        }
        if decoder.is_failed() {
            let _ = input.send(violation("undecodable app stream")).await;
            return;
        }
    }
}
