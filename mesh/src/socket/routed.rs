//! Routed paths under the mesh socket ([`super::Path::Router`]): datagrams of a QUIC
//! connection that runs through another member of the mesh ([`crate::route`]).
//!
//! Flow:
//! 1. The route hub hands the socket the sending end of a bounded queue
//!    ([`super::MeshSocket::route_out`]).
//! 2. Send: a transmit whose path is a route is cut into its segments; each goes into
//!    that queue as one [`RoutedDatagram`] (the hub sends it as a QUIC datagram of the
//!    connection to the router). A full queue or no hub drops it (counted): quinn
//!    recovers as from any loss.
//! 3. Receive: the hub hands each datagram the router forwarded to
//!    [`super::MeshSocket::inject_routed`]; the path table names its synthetic source
//!    (routed sources are never learned), the datagram waits in a bounded queue and the
//!    socket wakes its receive task to hand it to quinn.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};

use bytes::Bytes;
use tokio::sync::mpsc;

use super::path::RouteId;
use super::relay::RelayedQueue;

/// Default bound of the routed-datagram queue (each way).
pub const DEFAULT_ROUTED_QUEUE: usize = 1024;

/// One datagram for a route, as the socket hands it to the route hub.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoutedDatagram {
    /// The route.
    pub route: RouteId,
    /// One QUIC datagram of the inner connection.
    pub datagram: Bytes,
}

/// The socket's side of routed paths (see the module docs).
#[derive(Debug)]
pub(crate) struct RoutedPlane {
    /// Whether a hub is attached (skips every lock on the receive path otherwise).
    armed: AtomicBool,
    out: Mutex<Option<mpsc::Sender<RoutedDatagram>>>,
    pub(crate) inbound: Mutex<RelayedQueue>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every holder leaves the value consistent.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Default for RoutedPlane {
    fn default() -> Self {
        Self {
            armed: AtomicBool::new(false),
            out: Mutex::new(None),
            inbound: Mutex::new(RelayedQueue::new(DEFAULT_ROUTED_QUEUE)),
        }
    }
}

impl RoutedPlane {
    /// Step 1.
    pub(crate) fn set_out(&self, out: mpsc::Sender<RoutedDatagram>) {
        *lock(&self.out) = Some(out);
        self.armed.store(true, Ordering::Release);
    }

    /// Whether a hub is attached.
    #[inline]
    pub(crate) fn is_armed(&self) -> bool {
        self.armed.load(Ordering::Acquire)
    }

    /// Step 2: queues every segment of `contents`; returns how many were dropped.
    pub(crate) fn send(&self, route: RouteId, contents: &[u8], segment: Option<usize>) -> u64 {
        let guard = lock(&self.out);
        let size = segment.unwrap_or(contents.len()).max(1);
        let mut dropped = 0;
        for chunk in contents.chunks(size) {
            let sent = guard.as_ref().is_some_and(|out| {
                out.try_send(RoutedDatagram {
                    route,
                    datagram: Bytes::copy_from_slice(chunk),
                })
                .is_ok()
            });
            if !sent {
                dropped += 1;
            }
        }
        dropped
    }
}
