//! [`MeshSocket`]: the one UDP socket of an endpoint, seen by quinn as a
//! [`quinn::AsyncUdpSocket`] that only carries QUIC to synthetic addresses.
//!
//! Flow:
//! 1. [`MeshSocket::bind`] opens one tokio UDP socket and wraps it in `quinn-udp` state, so
//!    batched I/O (GSO on send, GRO and `recvmmsg` on receive) and ECN work as in bare quinn.
//! 2. Receive (quinn's endpoint driver calls `poll_recv`): read a batch, classify every
//!    datagram, and every GRO segment, with [`retain_quic`] (RFC 7983 / RFC 9443). STUN is
//!    routed by transaction id ([`StunRouter`]): a response goes to the bounded queue of the
//!    owner that sent the request ([`MeshSocket::route_stun`]), requests and indications to
//!    the default queue ([`StunReceiver`]), a response nobody waits for is dropped and
//!    counted (`stun_unclaimed`); unknown datagrams are dropped and
//!    counted; QUIC stays in quinn's buffer (compacted in place when a batch mixes kinds) and
//!    its real source is rewritten to the peer's synthetic address ([`PathTable`]).
//! 3. Send (quinn's `try_send`): the synthetic destination is rewritten to the live path's
//!    real address (IPv4-mapped again on a dual-stack socket, [`SocketFamily::to_socket`]) and the transmit goes out unchanged otherwise. A destination that is not a
//!    known synthetic address is never sent to: the packet is dropped and counted.
//!    Sources are made canonical first ([`canonical`]): a dual-stack socket's IPv4-mapped
//!    sources are IPv4 to everything above the socket.
//! 4. Other code sends STUN through the same socket with [`MeshSocket::send_stun`] (or
//!    [`MeshSocket::send_stun_as`], naming the owner of the answers), so the NAT mapping it
//!    sees is the one QUIC uses.
//!
//! 5. Relayed paths ([`super::relay`]): datagrams from a relay server are TURN whatever
//!    their first byte (decided by source first, RFC 9443); their ChannelData payloads are
//!    queued under the peer's synthetic address and handed to quinn at the next receive.
//!    Sends on a relayed path get a ChannelData header per segment.
//!
//! 6. Extra local sockets ([`super::extra`], birthday probing): polled after the primary
//!    one with the same demux, their datagrams tagged with their [`LocalSocket`]; a path
//!    naming one is sent from it.
//!
//! 7. Routed paths ([`super::routed`]): a transmit on a route goes to the route hub's
//!    queue, segment by segment; datagrams the hub injects are handed to quinn like
//!    relayed ones.
//!
//! Per direct packet there is no allocation except copying a STUN datagram into its queue;
//! a relayed datagram is copied once each way.

use std::fmt;
use std::io::{self, IoSliceMut};
use std::net::{Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use bytes::Bytes;
use quinn::{AsyncUdpSocket, UdpPoller};
use quinn_udp::{RecvMeta, Transmit, UdpSocketState};
use tokio::io::Interest;
use tokio::sync::mpsc;

use super::demux::{retain_quic, DatagramKind};
use super::extra::ExtraSockets;
use super::family::{bind_udp, canonical, SocketFamily};
use super::path::{is_synthetic, PathTable};
use super::path::{LocalSocket, Path};
use super::poller::{SharedUdpSocket, WritablePoller};
use super::relay::{RelayedQueue, DEFAULT_RELAYED_QUEUE};
use super::routed::RoutedPlane;
use crate::stun::router::DEFAULT_MAX_PENDING;
use crate::stun::{Route, StunOwner, StunRouter};

/// Default bound of the STUN queue (datagrams).
pub const DEFAULT_STUN_QUEUE: usize = 256;

/// A non-QUIC datagram received on the shared socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StunDatagram {
    /// The real address it came from.
    pub from: SocketAddr,
    /// The local socket it arrived on.
    pub local: LocalSocket,
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
    relayed_rx: AtomicU64,
    relayed_dropped: AtomicU64,
    relayed_tx: AtomicU64,
    stun_unclaimed: AtomicU64,
    routed_rx: AtomicU64,
    routed_tx: AtomicU64,
    routed_dropped: AtomicU64,
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
    /// Transmits to an unknown or non-synthetic address, or to a family the socket cannot
    /// reach, dropped instead of sent.
    pub unroutable_tx: u64,
    /// QUIC datagrams unwrapped from a relay's ChannelData and handed to quinn.
    pub relayed_rx: u64,
    /// Relayed datagrams dropped: no path on their channel, or the queue was full.
    pub relayed_dropped: u64,
    /// Transmits (possibly GSO batches) sent wrapped in ChannelData.
    pub relayed_tx: u64,
    /// STUN responses to no request a part of the node is waiting for, dropped.
    pub stun_unclaimed: u64,
    /// STUN transactions forgotten early because the router's table was full.
    pub stun_evicted: u64,
    /// Datagrams of routed paths handed to quinn.
    pub routed_rx: u64,
    /// Datagrams of routed paths handed to the route hub.
    pub routed_tx: u64,
    /// Datagrams of routed paths dropped: no route in the table, a full queue, no hub.
    pub routed_dropped: u64,
}

/// The STUN side of the socket: the transaction router and each owner's queue.
#[derive(Debug)]
struct StunQueues {
    router: StunRouter,
    /// Indexed by [`StunOwner::index`]; `Default`'s is set at bind.
    owners: [Option<mpsc::Sender<StunDatagram>>; 4],
}

/// Errors of sending raw (non-QUIC) datagrams.
#[derive(Debug, thiserror::Error)]
pub enum RawSendError {
    /// Synthetic addresses exist only inside quinn; they are never a real target.
    #[error("{0} is a synthetic address and cannot be sent to")]
    SyntheticDestination(SocketAddr),
    /// The socket is of the other address family (an IPv4-only socket cannot reach IPv6).
    #[error("{0} is not reachable from a socket of family {1:?}")]
    WrongFamily(SocketAddr, SocketFamily),
    /// No extra local socket has that id (closed).
    #[error("no local socket {0:?}")]
    NoSuchSocket(LocalSocket),
    /// The socket failed.
    #[error("send failed: {0}")]
    Io(#[from] io::Error),
}

/// The endpoint's one UDP socket, shared by QUIC (through quinn) and STUN.
pub struct MeshSocket {
    io: tokio::net::UdpSocket,
    family: SocketFamily,
    state: UdpSocketState,
    paths: Mutex<PathTable>,
    relayed: Mutex<RelayedQueue>,
    stun: Mutex<StunQueues>,
    extras: ExtraSockets,
    routed: RoutedPlane,
    /// Flips on each receive poll while extra sockets are open: which goes first.
    extras_first: AtomicBool,
    /// The receive task's waker: opening extra sockets and injecting routed datagrams
    /// wake it (nothing else would: the task waits on the sockets' readiness).
    recv_waker: Mutex<Option<Waker>>,
    counters: Counters,
}

#[path = "udp_paths.rs"]
mod paths;

impl fmt::Debug for MeshSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MeshSocket")
            .field("local", &self.io.local_addr())
            .finish_non_exhaustive()
    }
}

impl MeshSocket {
    /// Binds the UDP socket (inside a tokio runtime; `[::]:PORT` as one dual-stack socket, see
    /// [`bind_udp`]). Returns the socket and its STUN queue, which holds at most `stun_queue`
    /// datagrams.
    pub fn bind(
        addr: SocketAddr,
        paths: PathTable,
        stun_queue: usize,
    ) -> io::Result<(Arc<Self>, StunReceiver)> {
        let std_socket = bind_udp(addr)?;
        let family = SocketFamily::of(&std_socket)?;
        std_socket.set_nonblocking(true)?;
        let state = UdpSocketState::new((&std_socket).into())?;
        let io = tokio::net::UdpSocket::from_std(std_socket)?;
        let (stun_tx, stun_rx) = mpsc::channel(stun_queue.max(1));
        let stun = StunQueues {
            router: StunRouter::new(DEFAULT_MAX_PENDING),
            owners: [Some(stun_tx), None, None, None],
        };
        let socket = Self {
            io,
            family,
            state,
            paths: Mutex::new(paths),
            relayed: Mutex::new(RelayedQueue::new(DEFAULT_RELAYED_QUEUE)),
            stun: Mutex::new(stun),
            extras: ExtraSockets::default(),
            routed: RoutedPlane::default(),
            extras_first: AtomicBool::new(false),
            recv_waker: Mutex::new(None),
            counters: Counters::default(),
        };
        Ok((Arc::new(socket), StunReceiver(stun_rx)))
    }

    /// The real local address of the socket.
    pub fn real_local_addr(&self) -> io::Result<SocketAddr> {
        self.io.local_addr()
    }

    /// The address families the socket reaches.
    pub fn family(&self) -> SocketFamily {
        self.family
    }

    /// The path table (lock held while the guard lives; keep it short).
    pub fn paths(&self) -> MutexGuard<'_, PathTable> {
        // The table stays consistent even if a holder panicked: every method is atomic.
        self.paths.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sends the answers to `owner`'s STUN requests (sent with [`Self::send_stun_as`]) to
    /// `queue` from now on, replacing an earlier queue. The default owner's queue is the
    /// [`StunReceiver`] from [`Self::bind`].
    pub fn route_stun(&self, owner: StunOwner, queue: mpsc::Sender<StunDatagram>) {
        self.stun_queues().owners[owner.index()] = Some(queue);
    }

    fn stun_queues(&self) -> MutexGuard<'_, StunQueues> {
        // Every router method leaves the table consistent.
        self.stun.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> SocketStats {
        let stun_evicted = self.stun_queues().router.stats().evicted;
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
            relayed_rx: get(&c.relayed_rx),
            relayed_dropped: get(&c.relayed_dropped),
            relayed_tx: get(&c.relayed_tx),
            stun_unclaimed: get(&c.stun_unclaimed),
            stun_evicted,
            routed_rx: get(&c.routed_rx),
            routed_tx: get(&c.routed_tx),
            routed_dropped: get(&c.routed_dropped),
        }
    }

    /// Sends one raw datagram (a STUN message, a probe) to a real address through the shared
    /// socket; answers to a STUN request come back on the default queue.
    pub async fn send_stun(&self, dest: SocketAddr, data: &[u8]) -> Result<(), RawSendError> {
        self.send_stun_as(StunOwner::Default, dest, data).await
    }

    /// Sends one raw datagram like [`Self::send_stun`]; answers to a STUN request come back
    /// on `owner`'s queue ([`Self::route_stun`]).
    pub async fn send_stun_as(
        &self,
        owner: StunOwner,
        dest: SocketAddr,
        data: &[u8],
    ) -> Result<(), RawSendError> {
        self.send_stun_from(LocalSocket::PRIMARY, owner, dest, data)
            .await
    }

    /// Sends one raw datagram like [`Self::send_stun_as`] from local socket `local` (an
    /// extra socket's datagram that would block is dropped: it is a probe).
    pub async fn send_stun_from(
        &self,
        local: LocalSocket,
        owner: StunOwner,
        dest: SocketAddr,
        data: &[u8],
    ) -> Result<(), RawSendError> {
        if is_synthetic(&dest) {
            return Err(RawSendError::SyntheticDestination(dest));
        }
        let Some(destination) = self.family.to_socket(dest) else {
            return Err(RawSendError::WrongFamily(dest, self.family));
        };
        let transmit = Transmit {
            destination,
            ecn: None,
            contents: data,
            segment_size: None,
            src_ip: None,
        };
        self.stun_queues()
            .router
            .on_send(Instant::now(), owner, data);
        if local != LocalSocket::PRIMARY {
            let Some(extra) = self.extras.get(local) else {
                return Err(RawSendError::NoSuchSocket(local));
            };
            return match extra.state.send((&extra.io).into(), &transmit) {
                Err(e) if e.kind() != io::ErrorKind::WouldBlock => Err(e.into()),
                _ => Ok(()),
            };
        }
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

    /// Routes one STUN datagram to its owner's queue, copying it only when there is one.
    fn queue_stun(&self, from: SocketAddr, local: LocalSocket, data: &[u8]) {
        let queued = {
            let mut stun = self.stun_queues();
            match stun.router.route(Instant::now(), data) {
                Route::To(owner) => stun.owners[owner.index()].as_ref().map(|queue| {
                    let datagram = StunDatagram {
                        from,
                        local,
                        data: Bytes::copy_from_slice(data),
                    };
                    queue.try_send(datagram).is_ok()
                }),
                Route::Unclaimed => None,
            }
        };
        match queued {
            Some(true) => {
                self.counters.stun_rx.fetch_add(1, Ordering::Relaxed);
            }
            Some(false) => {
                self.counters
                    .stun_queue_full
                    .fetch_add(1, Ordering::Relaxed);
                tracing::trace!(%from, "stun queue full, datagram dropped");
            }
            None => {
                self.counters.stun_unclaimed.fetch_add(1, Ordering::Relaxed);
                tracing::trace!(%from, "STUN response to no pending request dropped");
            }
        }
    }

    /// Demultiplexes one received datagram or GRO batch in place (see [`retain_quic`]);
    /// returns the number of QUIC bytes left at the start of `buf`.
    fn demux_in_place(
        &self,
        buf: &mut [u8],
        stride: usize,
        from: SocketAddr,
        local: LocalSocket,
    ) -> usize {
        let (kept, segments) = retain_quic(buf, stride, |kind, data| match kind {
            DatagramKind::Stun => self.queue_stun(from, local, data),
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
    fn filter_batch(
        &self,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
        n: usize,
        local: LocalSocket,
    ) -> usize {
        let now = Instant::now();
        let mut kept = 0;
        let mut paths: Option<MutexGuard<'_, PathTable>> = None;
        for i in 0..n.min(bufs.len()).min(meta.len()) {
            let m = meta[i];
            let from = canonical(m.addr);
            let len = m.len.min(bufs[i].len());
            let table = paths.get_or_insert_with(|| self.paths());
            if local == LocalSocket::PRIMARY && table.is_relay_server(&from) {
                self.unwrap_relayed(table, now, from, &bufs[i][..len], m.stride);
                continue;
            }
            let quic_len = self.demux_in_place(&mut bufs[i][..len], m.stride, from, local);
            if quic_len == 0 {
                continue;
            }
            let Some(synthetic) = table.on_incoming_on(now, from, local) else {
                self.counters.table_full.fetch_add(1, Ordering::Relaxed);
                tracing::trace!(%from, "path table full, datagram dropped");
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

/// `transmit` as it is, sent to the real `destination` instead of its synthetic one.
fn redirected<'a>(transmit: &Transmit<'a>, destination: SocketAddr) -> Transmit<'a> {
    Transmit {
        destination,
        ecn: transmit.ecn,
        contents: transmit.contents,
        segment_size: transmit.segment_size,
        src_ip: transmit.src_ip,
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
        if let Some(Path::Direct { remote, local }) =
            path.filter(|p| p.local() != LocalSocket::PRIMARY)
        {
            return self.send_extra(transmit, local, remote);
        }
        if let Some(Path::Router { route }) = path {
            let dropped = self
                .routed
                .send(route, transmit.contents, transmit.segment_size);
            self.counters.routed_tx.fetch_add(1, Ordering::Relaxed);
            if dropped > 0 {
                self.counters
                    .routed_dropped
                    .fetch_add(dropped, Ordering::Relaxed);
            }
            return Ok(());
        }
        let routed = path.and_then(|p| self.family.to_socket(p.remote()).map(|d| (p, d)));
        let Some((path, destination)) = routed else {
            self.counters.unroutable_tx.fetch_add(1, Ordering::Relaxed);
            tracing::trace!(dest = %transmit.destination, "no path for destination, dropped");
            // Report success: the packet is lost as on any network, quinn recovers or times out.
            return Ok(());
        };
        if let Path::Relay { channel, .. } = path {
            return self.send_relayed(transmit, destination, channel);
        }
        let real = redirected(transmit, destination);
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
        self.register_recv_waker(cx);
        loop {
            let relayed = self.deliver_relayed(bufs, meta);
            if relayed > 0 {
                return Poll::Ready(Ok(relayed));
            }
            // Every other poll looks at the extra sockets first: a busy primary socket
            // must not starve a connection that runs on an extra one.
            if !self.extras.is_empty() && self.extras_first.fetch_xor(true, Ordering::Relaxed) {
                if let Poll::Ready(result) = self.poll_recv_extra(cx, bufs, meta) {
                    match result {
                        Ok(0) => {}
                        other => return Poll::Ready(other),
                    }
                }
            }
            let primary = match self.io.poll_recv_ready(cx) {
                Poll::Ready(ready) => ready,
                Poll::Pending => match self.poll_recv_extra(cx, bufs, meta) {
                    Poll::Ready(Ok(0)) => continue,
                    other => return other,
                },
            };
            primary?;
            let received = self.io.try_io(Interest::READABLE, || {
                self.state.recv((&self.io).into(), bufs, meta)
            });
            // As quinn's own tokio socket: on an error (readiness cleared on WouldBlock), poll
            // again.
            let Ok(n) = received else { continue };
            let kept = self.filter_batch(bufs, meta, n, LocalSocket::PRIMARY);
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
