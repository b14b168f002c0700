//! [`MeshSocket`]: the one UDP socket of an endpoint, seen by quinn as a
//! [`quinn::AsyncUdpSocket`] that only carries QUIC to synthetic addresses.
//!
//! Flow:
//! 1. [`MeshSocket::bind`] opens one tokio UDP socket and wraps it in `quinn-udp` state, so
//!    batched I/O (GSO on send, GRO and `recvmmsg` on receive) and ECN work as in bare quinn.
//! 2. Receive (quinn's endpoint driver calls `poll_recv`): read a batch, classify every
//!    datagram, and every GRO segment, with [`retain_quic`] (RFC 7983 / RFC 9443). STUN is copied
//!    into the bounded STUN queue ([`StunReceiver`]); unknown datagrams are dropped and
//!    counted; QUIC stays in quinn's buffer (compacted in place when a batch mixes kinds) and
//!    its real source is rewritten to the peer's synthetic address ([`PathTable`]).
//! 3. Send (quinn's `try_send`): the synthetic destination is rewritten to the live path's
//!    real address and the transmit goes out unchanged otherwise. A destination that is not a
//!    known synthetic address is never sent to: the packet is dropped and counted.
//! 4. Other code sends STUN through the same socket with [`MeshSocket::send_stun`], so the
//!    NAT mapping it sees is the one QUIC uses.
//!
//! Per packet there is no allocation except copying a STUN datagram into its queue.

use std::fmt;
use std::io::{self, IoSliceMut};
use std::net::{Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{ready, Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use quinn::{AsyncUdpSocket, UdpPoller};
use quinn_udp::{RecvMeta, Transmit, UdpSocketState};
use tokio::io::Interest;
use tokio::sync::mpsc;

use super::demux::{retain_quic, DatagramKind};
use super::path::{is_synthetic, PathTable};
use super::poller::{SharedUdpSocket, WritablePoller};

/// Default bound of the STUN queue (datagrams).
pub const DEFAULT_STUN_QUEUE: usize = 256;

/// A non-QUIC datagram received on the shared socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StunDatagram {
    /// The real address it came from.
    pub from: SocketAddr,
    /// The whole datagram.
    pub data: Bytes,
}

/// The receiving end of the STUN queue of a [`MeshSocket`].
#[derive(Debug)]
pub struct StunReceiver(mpsc::Receiver<StunDatagram>);

impl StunReceiver {
    /// The next STUN datagram; `None` once the socket is gone.
    pub async fn recv(&mut self) -> Option<StunDatagram> {
        self.0.recv().await
    }

    /// A STUN datagram if one is queued, without waiting.
    pub fn try_recv(&mut self) -> Option<StunDatagram> {
        self.0.try_recv().ok()
    }
}

/// Counters of the shared socket (monotonic).
#[derive(Debug, Default)]
struct Counters {
    quic_rx: AtomicU64,
    stun_rx: AtomicU64,
    stun_queue_full: AtomicU64,
    unknown_rx: AtomicU64,
    table_full: AtomicU64,
    quic_tx: AtomicU64,
    unroutable_tx: AtomicU64,
}

/// A snapshot of the shared socket's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SocketStats {
    /// QUIC datagrams handed to quinn (GRO segments counted one by one).
    pub quic_rx: u64,
    /// STUN datagrams queued.
    pub stun_rx: u64,
    /// STUN datagrams dropped because the queue was full or closed.
    pub stun_queue_full: u64,
    /// Datagrams of no known kind, dropped.
    pub unknown_rx: u64,
    /// QUIC datagrams from a new source dropped because the path table was full.
    pub table_full: u64,
    /// Transmits (possibly GSO batches) quinn sent.
    pub quic_tx: u64,
    /// Transmits to an unknown or non-synthetic address, dropped instead of sent.
    pub unroutable_tx: u64,
}

/// Errors of sending raw (non-QUIC) datagrams.
#[derive(Debug, thiserror::Error)]
pub enum RawSendError {
    /// Synthetic addresses exist only inside quinn; they are never a real target.
    #[error("{0} is a synthetic address and cannot be sent to")]
    SyntheticDestination(SocketAddr),
    /// The socket failed.
    #[error("send failed: {0}")]
    Io(#[from] io::Error),
}

/// The endpoint's one UDP socket, shared by QUIC (through quinn) and STUN.
pub struct MeshSocket {
    io: tokio::net::UdpSocket,
    state: UdpSocketState,
    paths: Mutex<PathTable>,
    stun_tx: mpsc::Sender<StunDatagram>,
    counters: Counters,
}

impl fmt::Debug for MeshSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MeshSocket")
            .field("local", &self.io.local_addr())
            .finish_non_exhaustive()
    }
}

impl MeshSocket {
    /// Binds the UDP socket (inside a tokio runtime). Returns the socket and its STUN queue,
    /// which holds at most `stun_queue` datagrams.
    pub fn bind(
        addr: SocketAddr,
        paths: PathTable,
        stun_queue: usize,
    ) -> io::Result<(Arc<Self>, StunReceiver)> {
        let std_socket = std::net::UdpSocket::bind(addr)?;
        std_socket.set_nonblocking(true)?;
        let state = UdpSocketState::new((&std_socket).into())?;
        let io = tokio::net::UdpSocket::from_std(std_socket)?;
        let (stun_tx, stun_rx) = mpsc::channel(stun_queue.max(1));
        let socket = Self {
            io,
            state,
            paths: Mutex::new(paths),
            stun_tx,
            counters: Counters::default(),
        };
        Ok((Arc::new(socket), StunReceiver(stun_rx)))
    }

    /// The real local address of the socket.
    pub fn real_local_addr(&self) -> io::Result<SocketAddr> {
        self.io.local_addr()
    }

    /// The path table (lock held while the guard lives; keep it short).
    pub fn paths(&self) -> MutexGuard<'_, PathTable> {
        // The table stays consistent even if a holder panicked: every method is atomic.
        self.paths.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> SocketStats {
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        SocketStats {
            quic_rx: get(&c.quic_rx),
            stun_rx: get(&c.stun_rx),
            stun_queue_full: get(&c.stun_queue_full),
            unknown_rx: get(&c.unknown_rx),
            table_full: get(&c.table_full),
            quic_tx: get(&c.quic_tx),
            unroutable_tx: get(&c.unroutable_tx),
        }
    }

    /// Sends one raw datagram (a STUN message, a probe) to a real address through the shared
    /// socket.
    pub async fn send_stun(&self, dest: SocketAddr, data: &[u8]) -> Result<(), RawSendError> {
        if is_synthetic(&dest) {
            return Err(RawSendError::SyntheticDestination(dest));
        }
        let transmit = Transmit {
            destination: dest,
            ecn: None,
            contents: data,
            segment_size: None,
            src_ip: None,
        };
        loop {
            self.io.writable().await?;
            match self.io.try_io(Interest::WRITABLE, || {
                self.state.send((&self.io).into(), &transmit)
            }) {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    fn queue_stun(&self, from: SocketAddr, data: &[u8]) {
        let datagram = StunDatagram {
            from,
            data: Bytes::copy_from_slice(data),
        };
        match self.stun_tx.try_send(datagram) {
            Ok(()) => {
                self.counters.stun_rx.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => {
                self.counters
                    .stun_queue_full
                    .fetch_add(1, Ordering::Relaxed);
                tracing::trace!(%from, "stun queue full, datagram dropped");
            }
        }
    }

    /// Demultiplexes one received datagram or GRO batch in place (see [`retain_quic`]);
    /// returns the number of QUIC bytes left at the start of `buf`.
    fn demux_in_place(&self, buf: &mut [u8], stride: usize, from: SocketAddr) -> usize {
        let (kept, segments) = retain_quic(buf, stride, |kind, data| match kind {
            DatagramKind::Stun => self.queue_stun(from, data),
            _ => {
                self.counters.unknown_rx.fetch_add(1, Ordering::Relaxed);
                tracing::trace!(%from, len = data.len(), first = ?data.first(), "unknown datagram dropped");
            }
        });
        self.counters
            .quic_rx
            .fetch_add(segments as u64, Ordering::Relaxed);
        kept
    }

    /// Post-processes a received batch in place; returns how many entries quinn gets.
    fn filter_batch(&self, bufs: &mut [IoSliceMut<'_>], meta: &mut [RecvMeta], n: usize) -> usize {
        let now = Instant::now();
        let mut kept = 0;
        let mut paths: Option<MutexGuard<'_, PathTable>> = None;
        for i in 0..n.min(bufs.len()).min(meta.len()) {
            let m = meta[i];
            let len = m.len.min(bufs[i].len());
            let quic_len = self.demux_in_place(&mut bufs[i][..len], m.stride, m.addr);
            if quic_len == 0 {
                continue;
            }
            let table = paths.get_or_insert_with(|| self.paths());
            let Some(synthetic) = table.on_incoming(now, m.addr) else {
                self.counters.table_full.fetch_add(1, Ordering::Relaxed);
                tracing::trace!(from = %m.addr, "path table full, datagram dropped");
                continue;
            };
            meta[i].len = quic_len;
            meta[i].addr = synthetic;
            if kept != i {
                bufs.swap(kept, i);
                meta.swap(kept, i);
            }
            kept += 1;
        }
        kept
    }
}

impl SharedUdpSocket for MeshSocket {
    fn udp_socket(&self) -> &tokio::net::UdpSocket {
        &self.io
    }
}

impl AsyncUdpSocket for MeshSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        Box::pin(WritablePoller::new(self))
    }

    fn try_send(&self, transmit: &Transmit<'_>) -> io::Result<()> {
        let path = self.paths().resolve(&transmit.destination);
        let Some(path) = path else {
            self.counters.unroutable_tx.fetch_add(1, Ordering::Relaxed);
            tracing::trace!(dest = %transmit.destination, "no path for destination, dropped");
            // Report success: the packet is lost as on any network, quinn recovers or times out.
            return Ok(());
        };
        let real = Transmit {
            destination: path.remote(),
            ecn: transmit.ecn,
            contents: transmit.contents,
            segment_size: transmit.segment_size,
            src_ip: transmit.src_ip,
        };
        self.io.try_io(Interest::WRITABLE, || {
            self.state.send((&self.io).into(), &real)
        })?;
        self.counters.quic_tx.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn poll_recv(
        &self,
        cx: &mut Context<'_>,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.io.poll_recv_ready(cx))?;
            let received = self.io.try_io(Interest::READABLE, || {
                self.state.recv((&self.io).into(), bufs, meta)
            });
            // As quinn's own tokio socket: on an error (readiness cleared on WouldBlock), poll
            // again.
            let Ok(n) = received else { continue };
            let kept = self.filter_batch(bufs, meta, n);
            if kept > 0 {
                return Poll::Ready(Ok(kept));
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        // quinn only sees synthetic IPv6 remotes, so it must believe the socket is IPv6.
        let real = self.io.local_addr()?;
        Ok(SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), real.port()))
    }

    fn max_transmit_segments(&self) -> usize {
        self.state.max_gso_segments()
    }

    fn max_receive_segments(&self) -> usize {
        self.state.gro_segments()
    }

    fn may_fragment(&self) -> bool {
        self.state.may_fragment()
    }
}
