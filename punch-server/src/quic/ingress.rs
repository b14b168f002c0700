//! The STUN port as quinn's socket: QUIC datagrams come from the primary STUN worker's
//! non-STUN hook through a bounded queue; quinn's packets leave through the same socket.
//!
//! Steps:
//! 1. [`ingress`] makes the queue and a [`HookFactory`] for
//!    [`Server::start_with_hook`](crate::driver::Server::start_with_hook). The primary
//!    socket's hook ([`QuicHook`]) classifies the datagram with mesh's [`classify`] (QUIC:
//!    first byte 64-127 short header, 192-255 long header, RFC 9443), checks the length,
//!    and copies it into the queue with `try_send`: a full queue drops it and counts, so
//!    the STUN worker never waits.
//!    Alternate sockets (RFC 5780) drop QUIC: peers talk to the primary address only.
//! 2. [`HookSocket`] is the [`quinn::AsyncUdpSocket`]: `poll_recv` drains the queue into
//!    quinn's buffers (one datagram per entry, with the source, the local IP it was sent to
//!    and its ECN codepoint); `try_send` sends through the primary socket's `quinn-udp`
//!    state, so peers see one address for STUN and QUIC.
//!    Parked peers' keep-alives (STUN, see [`crate::coordinator`]) go the same way into a
//!    second bounded queue ([`KEEPALIVE_QUEUE`]), which the coordinator task drains.
//! 3. Writability waits go through tokio's readiness of the shared socket: `create_io_poller`
//!    returns mesh's [`WritablePoller`] over the primary socket ([`SharedUdpSocket`]); the
//!    STUN workers send without waiting, so nothing blocks them.

use std::fmt;
use std::io::{self, IoSliceMut};
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use mesh::socket::demux::{classify, DatagramKind};
use mesh::socket::{SharedUdpSocket, WritablePoller};
use quinn::{AsyncUdpSocket, UdpPoller};
use quinn_udp::{EcnCodepoint, RecvMeta, Transmit};
use tokio::io::Interest;
use tokio::sync::mpsc;

use super::stats::QuicCounters;
use crate::driver::{DatagramMeta, HookFactory, NonStunHook};
use crate::send_batch::SocketIo;
use crate::server::SocketId;

/// One queued QUIC datagram.
#[derive(Debug)]
struct Queued {
    from: SocketAddr,
    dst_ip: Option<IpAddr>,
    ecn: Option<EcnCodepoint>,
    data: Vec<u8>,
}

/// Bound of the keep-alive queue (parked peers' keep-alives on their way to the
/// coordinator task).
pub const KEEPALIVE_QUEUE: usize = 1024;
/// Longest keep-alive passed on (they are about 100 bytes).
const MAX_KEEPALIVE_LEN: usize = 256;

/// A parked peer's keep-alive: its source and bytes.
#[derive(Debug)]
pub struct Keepalive {
    /// Where it came from.
    pub from: SocketAddr,
    /// The STUN message.
    pub data: Vec<u8>,
}

/// The receiving end of the ingress queue; [`HookSocket::new`] takes it, after the
/// coordinator task took the keep-alives ([`IngressQueue::take_keepalives`]).
#[derive(Debug)]
pub struct IngressQueue {
    rx: mpsc::Receiver<Queued>,
    keepalives: Option<mpsc::Receiver<Keepalive>>,
}

impl IngressQueue {
    /// The parked peers' keep-alives (once).
    pub fn take_keepalives(&mut self) -> Option<mpsc::Receiver<Keepalive>> {
        self.keepalives.take()
    }
}

/// Makes the bounded queue (`capacity` datagrams of at most `max_len` bytes) and the hook
/// factory feeding it from the primary socket.
pub fn ingress(
    capacity: usize,
    max_len: usize,
    counters: Arc<super::CoordMetrics>,
) -> (HookFactory, IngressQueue) {
    let (tx, rx) = mpsc::channel(capacity.max(1));
    let (ka_tx, ka_rx) = mpsc::channel(KEEPALIVE_QUEUE);
    let factory: HookFactory = Arc::new(move |id: SocketId| {
        let primary = id == SocketId::PRIMARY;
        Box::new(QuicHook {
            tx: primary.then(|| tx.clone()),
            keepalives: primary.then(|| ka_tx.clone()),
            max_len,
            metrics: Arc::clone(&counters),
        })
    });
    let queue = IngressQueue {
        rx,
        keepalives: Some(ka_rx),
    };
    (factory, queue)
}

/// The non-STUN hook of one STUN worker (see the module docs).
#[derive(Debug)]
pub struct QuicHook {
    /// `None` on the alternate sockets.
    tx: Option<mpsc::Sender<Queued>>,
    /// Keep-alives to the coordinator task; `None` on the alternate sockets.
    keepalives: Option<mpsc::Sender<Keepalive>>,
    max_len: usize,
    metrics: Arc<super::CoordMetrics>,
}

impl NonStunHook for QuicHook {
    fn on_keepalive(&mut self, meta: &DatagramMeta, datagram: &[u8]) {
        let (Some(tx), true) = (&self.keepalives, datagram.len() <= MAX_KEEPALIVE_LEN) else {
            return;
        };
        let keepalive = Keepalive {
            from: meta.from,
            data: datagram.to_vec(),
        };
        if tx.try_send(keepalive).is_err() {
            QuicCounters::inc(&self.metrics.quic.keepalives_dropped);
            tracing::trace!(from = %meta.from, "keep-alive queue full, dropped");
        }
    }

    fn on_datagram(&mut self, meta: &DatagramMeta, datagram: &[u8]) {
        let q = &self.metrics.quic;
        let from = meta.from;
        if classify(datagram) != DatagramKind::Quic {
            QuicCounters::inc(&q.dropped_not_quic);
            tracing::trace!(%from, first = ?datagram.first(), "not QUIC, dropped");
            return;
        }
        let Some(tx) = &self.tx else {
            QuicCounters::inc(&q.dropped_other_socket);
            tracing::trace!(%from, local = %meta.local, "QUIC on an alternate socket, dropped");
            return;
        };
        if datagram.len() > self.max_len {
            QuicCounters::inc(&q.dropped_too_large);
            tracing::trace!(%from, len = datagram.len(), "QUIC datagram too large, dropped");
            return;
        }
        let queued = Queued {
            from,
            dst_ip: meta.dst_ip,
            ecn: meta.ecn,
            data: datagram.to_vec(),
        };
        match tx.try_send(queued) {
            Ok(()) => QuicCounters::inc(&q.datagrams_queued),
            Err(mpsc::error::TrySendError::Full(_)) => {
                QuicCounters::inc(&q.dropped_queue_full);
                tracing::trace!(%from, "QUIC ingress queue full, dropped");
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                QuicCounters::inc(&q.dropped_no_endpoint);
                tracing::trace!(%from, "QUIC endpoint gone, dropped");
            }
        }
    }
}

/// quinn's view of the primary STUN socket (see the module docs).
pub struct HookSocket {
    io: Arc<SocketIo>,
    local: SocketAddr,
    queue: Mutex<IngressQueue>,
    metrics: Arc<super::CoordMetrics>,
}

impl fmt::Debug for HookSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HookSocket")
            .field("local", &self.local)
            .finish_non_exhaustive()
    }
}

impl HookSocket {
    /// quinn's socket: receives from `queue`, sends through `io` (the primary socket, bound
    /// at `local`).
    pub fn new(
        io: Arc<SocketIo>,
        local: SocketAddr,
        queue: IngressQueue,
        metrics: Arc<super::CoordMetrics>,
    ) -> Arc<Self> {
        Arc::new(Self {
            io,
            local,
            queue: Mutex::new(queue),
            metrics,
        })
    }

    /// Copies `d` into entry `i`; false if it does not fit (dropped and counted).
    fn fill(&self, d: &Queued, buf: &mut IoSliceMut<'_>, meta: &mut RecvMeta) -> bool {
        let Some(dst) = buf.get_mut(..d.data.len()) else {
            QuicCounters::inc(&self.metrics.quic.dropped_too_large);
            return false;
        };
        dst.copy_from_slice(&d.data);
        meta.addr = d.from;
        meta.len = d.data.len();
        meta.stride = d.data.len();
        meta.ecn = d.ecn;
        meta.dst_ip = d.dst_ip;
        true
    }
}

impl SharedUdpSocket for HookSocket {
    fn udp_socket(&self) -> &tokio::net::UdpSocket {
        &self.io.sock
    }
}

impl AsyncUdpSocket for HookSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        Box::pin(WritablePoller::new(self))
    }

    fn try_send(&self, transmit: &Transmit<'_>) -> io::Result<()> {
        let sock = &self.io.sock;
        // `send` turns errors other than WouldBlock into a logged success, as quinn's own
        // socket does: UDP loss is normal, quinn retransmits.
        sock.try_io(Interest::WRITABLE, || {
            self.io.state.send(sock.into(), transmit)
        })
    }

    fn poll_recv(
        &self,
        cx: &mut Context<'_>,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        let mut queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        let mut filled = 0;
        let slots = bufs.len().min(meta.len());
        while filled < slots {
            let next = if filled == 0 {
                match queue.rx.poll_recv(cx) {
                    Poll::Ready(Some(d)) => d,
                    // Every STUN worker is gone: nothing will ever arrive. quinn treats
                    // an error as fatal, so stay pending; the endpoint is being shut down.
                    Poll::Ready(None) => return Poll::Pending,
                    Poll::Pending => return Poll::Pending,
                }
            } else {
                match queue.rx.try_recv() {
                    Ok(d) => d,
                    Err(_) => break,
                }
            };
            if let (Some(b), Some(m)) = (bufs.get_mut(filled), meta.get_mut(filled)) {
                if self.fill(&next, b, m) {
                    filled += 1;
                }
            }
        }
        // `filled` is 0 only if quinn offered no buffers at all.
        Poll::Ready(Ok(filled))
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local)
    }

    fn max_transmit_segments(&self) -> usize {
        self.io.state.max_gso_segments()
    }

    fn max_receive_segments(&self) -> usize {
        1
    }

    fn may_fragment(&self) -> bool {
        self.io.state.may_fragment()
    }
}

#[cfg(test)]
#[path = "ingress_tests.rs"]
mod tests;
