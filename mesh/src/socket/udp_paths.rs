//! The mesh socket's paths besides the primary socket's own datagrams: extra local
//! sockets ([`crate::socket::extra`]: open, send, poll), relayed datagrams ([`crate::socket::relay`]:
//! ChannelData out, unwrapped in) and routed ones ([`crate::socket::routed`]: handed to the route
//! hub, injected back), and the receive task's waker that new extra sockets and injected
//! datagrams wake. The flow is the parent module's (steps 5 to 7).

use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::task::{Context, Poll};
use std::time::Instant;

use quinn_udp::{RecvMeta, Transmit};
use tokio::io::Interest;
use tokio::sync::mpsc;

use super::MeshSocket;
use crate::socket::extra::{ExtraSocket, ExtraSocketError};
use crate::socket::path::{LocalSocket, PathTable, RouteId};
use crate::socket::relay::{self, RelaySegment, RelayedQueue};
use crate::socket::routed::RoutedDatagram;

impl MeshSocket {
    /// Opens `n` extra local sockets on this socket's IP ([`crate::socket::extra`]); their ids.
    pub fn open_extra(&self, n: usize) -> Result<Vec<LocalSocket>, ExtraSocketError> {
        let ids = self.extras.open(self.io.local_addr()?, n)?;
        // The receive task may be waiting on the other sockets only: poll the new ones.
        self.wake_recv();
        Ok(ids)
    }

    /// Keeps the receive task's waker (at the start of every receive poll, before any
    /// queue or socket is looked at, so no wake-up falls between).
    pub(super) fn register_recv_waker(&self, cx: &Context<'_>) {
        let mut slot = self.recv_waker.lock().unwrap_or_else(|p| p.into_inner());
        if !slot.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            *slot = Some(cx.waker().clone());
        }
    }

    /// Wakes the receive task (something to read outside the primary socket).
    pub(super) fn wake_recv(&self) {
        let waker = self
            .recv_waker
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    /// Closes extra local sockets (unknown ids are ignored).
    pub fn close_extra(&self, ids: &[LocalSocket]) {
        self.extras.close(ids);
    }

    /// How many extra local sockets are open.
    pub fn extra_count(&self) -> usize {
        self.extras.len()
    }

    /// The real local address of extra socket `id`, if open.
    pub fn extra_local_addr(&self, id: LocalSocket) -> Option<SocketAddr> {
        self.extras.local_addr(id)
    }

    /// Attaches the route hub: datagrams of routed paths go to `out` ([`crate::socket::routed`]).
    pub fn route_out(&self, out: mpsc::Sender<RoutedDatagram>) {
        self.routed.set_out(out);
    }

    /// Hands quinn a datagram that arrived on `route` (the route hub calls this); `false`
    /// if it was dropped (no live path on the route, or the queue is full).
    pub fn inject_routed(&self, route: RouteId, datagram: &[u8]) -> bool {
        let synthetic = self.paths().on_routed(Instant::now(), route);
        let queued = synthetic.is_some_and(|from| {
            let mut queue = self
                .routed
                .inbound
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            queue.push(from, datagram)
        });
        if queued {
            self.wake_recv();
        } else {
            self.counters.routed_dropped.fetch_add(1, Ordering::Relaxed);
        }
        queued
    }

    /// Sends a transmit on a relayed path: every segment wrapped in ChannelData.
    pub(super) fn send_relayed(
        &self,
        transmit: &Transmit<'_>,
        destination: SocketAddr,
        channel: u16,
    ) -> io::Result<()> {
        let mut wrapped = Vec::new();
        let Some(segment_size) = relay::wrap(
            channel,
            transmit.contents,
            transmit.segment_size,
            &mut wrapped,
        ) else {
            self.counters.unroutable_tx.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        };
        let real = Transmit {
            destination,
            ecn: transmit.ecn,
            contents: &wrapped,
            segment_size,
            src_ip: transmit.src_ip,
        };
        self.io.try_io(Interest::WRITABLE, || {
            self.state.send((&self.io).into(), &real)
        })?;
        self.counters.relayed_tx.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Sends a transmit from extra socket `local` (a closed socket's packet is dropped and
    /// counted, as is one that would block: quinn's poller watches the primary socket).
    pub(super) fn send_extra(
        &self,
        transmit: &Transmit<'_>,
        local: LocalSocket,
        remote: SocketAddr,
    ) -> io::Result<()> {
        let extra = self.extras.get(local);
        let routed = extra.and_then(|e| self.family.to_socket(remote).map(|d| (e, d)));
        let Some((extra, destination)) = routed else {
            self.counters.unroutable_tx.fetch_add(1, Ordering::Relaxed);
            tracing::trace!(?local, %remote, "no such local socket, dropped");
            return Ok(());
        };
        let real = super::redirected(transmit, destination);
        match extra.state.send((&extra.io).into(), &real) {
            Ok(()) => {
                self.counters.quic_tx.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                self.counters.unroutable_tx.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => return Err(e),
        }
        Ok(())
    }

    /// One receive poll of the extra sockets: `Ready(n)` with `n > 0` when one delivered
    /// QUIC, `Ready(0)` when some was readable (poll again), `Pending` when none was.
    pub(super) fn poll_recv_extra(
        &self,
        cx: &mut Context<'_>,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        if self.extras.is_empty() {
            return Poll::Pending;
        }
        let extras = self.extras.read();
        let mut readable = false;
        for extra in extras.iter() {
            let ExtraSocket { id, io, state } = extra.as_ref();
            match io.poll_recv_ready(cx) {
                Poll::Pending => continue,
                Poll::Ready(Err(e)) => {
                    tracing::debug!(?id, error = %e, "extra socket failed");
                    continue;
                }
                Poll::Ready(Ok(())) => {}
            }
            readable = true;
            let received = io.try_io(Interest::READABLE, || state.recv(io.into(), bufs, meta));
            let Ok(n) = received else { continue };
            let kept = self.filter_batch(bufs, meta, n, *id);
            if kept > 0 {
                return Poll::Ready(Ok(kept));
            }
        }
        if readable {
            Poll::Ready(Ok(0))
        } else {
            Poll::Pending
        }
    }

    /// Sorts what a relay server sent (see [`relay`]): STUN to the STUN queue, ChannelData
    /// payloads to the relayed queue under their peer's synthetic address.
    pub(super) fn unwrap_relayed(
        &self,
        table: &mut PathTable,
        now: Instant,
        server: SocketAddr,
        buf: &[u8],
        stride: usize,
    ) {
        let mut queue = self.relayed.lock().unwrap_or_else(|p| p.into_inner());
        relay::split(buf, stride, |segment| match segment {
            RelaySegment::Stun(data) => self.queue_stun(server, LocalSocket::PRIMARY, data),
            RelaySegment::Channel { channel, payload } => {
                let queued = table
                    .on_relayed(now, server, channel)
                    .is_some_and(|synthetic| queue.push(synthetic, payload));
                let counter = if queued {
                    &self.counters.relayed_rx
                } else {
                    &self.counters.relayed_dropped
                };
                counter.fetch_add(1, Ordering::Relaxed);
                if !queued {
                    tracing::trace!(%server, channel, "relayed datagram dropped");
                }
            }
            RelaySegment::Malformed => {
                self.counters.unknown_rx.fetch_add(1, Ordering::Relaxed);
            }
        });
    }

    /// Hands queued relayed and routed datagrams to quinn, one per buffer; returns how
    /// many.
    pub(super) fn deliver_relayed(
        &self,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> usize {
        let n = Self::deliver_queue(&self.relayed, &self.counters.relayed_dropped, bufs, meta);
        if n > 0 || !self.routed.is_armed() {
            return n;
        }
        let n = Self::deliver_queue(
            &self.routed.inbound,
            &self.counters.routed_dropped,
            bufs,
            meta,
        );
        self.counters
            .routed_rx
            .fetch_add(n as u64, Ordering::Relaxed);
        n
    }

    /// Hands the datagrams of `queue` to quinn, one per buffer; returns how many.
    pub(super) fn deliver_queue(
        queue: &Mutex<RelayedQueue>,
        dropped: &AtomicU64,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> usize {
        let mut queue = queue.lock().unwrap_or_else(|p| p.into_inner());
        if queue.is_empty() {
            return 0;
        }
        let mut n = 0;
        while n < bufs.len().min(meta.len()) {
            let Some((from, payload)) = queue.pop() else {
                break;
            };
            let Some(dst) = bufs[n].get_mut(..payload.len()) else {
                // Larger than quinn's receive buffer: cannot be a valid QUIC datagram.
                dropped.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            dst.copy_from_slice(&payload);
            meta[n] = RecvMeta {
                addr: from,
                len: payload.len(),
                stride: payload.len(),
                ecn: None,
                dst_ip: None,
            };
            n += 1;
        }
        n
    }
}
