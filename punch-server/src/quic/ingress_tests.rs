//! Unit tests of the ingress hook and queue, and of [`HookSocket`] on a loopback socket.

use std::future::poll_fn;
use std::net::UdpSocket as StdUdpSocket;
use std::time::Duration;

use super::*;
use crate::quic::CoordMetrics;

const PRIMARY: &str = "127.0.0.1:3478";

fn meta(from: &str) -> DatagramMeta {
    DatagramMeta {
        local: PRIMARY.parse().expect("addr"),
        from: from.parse().expect("addr"),
        dst_ip: Some("127.0.0.1".parse().expect("ip")),
        ecn: None,
    }
}

fn setup(capacity: usize, max_len: usize) -> (HookFactory, IngressQueue, Arc<CoordMetrics>) {
    let metrics = Arc::new(CoordMetrics::default());
    let (factory, queue) = ingress(capacity, max_len, Arc::clone(&metrics));
    (factory, queue, metrics)
}

fn get(c: &std::sync::atomic::AtomicU64) -> u64 {
    QuicCounters::get(c)
}

/// The hook queues exactly what mesh's demultiplexer calls QUIC (the byte ranges
/// themselves are tested in `mesh::socket::demux`).
#[test]
fn hook_queues_exactly_the_quic_first_bytes() {
    let (factory, mut queue, metrics) = setup(4, 1500);
    let mut hook = factory(SocketId::PRIMARY);
    for b in 0..=255u8 {
        hook.on_datagram(&meta("127.0.0.1:1"), &[b, 0]);
        let queued = queue.rx.try_recv().is_ok();
        let quic = matches!(b, 64..=127 | 192..=255);
        assert_eq!(queued, quic, "{b}");
        assert_eq!(queued, classify(&[b, 0]) == DatagramKind::Quic, "{b}");
    }
    hook.on_datagram(&meta("127.0.0.1:1"), &[]);
    assert!(queue.rx.try_recv().is_err(), "empty is not QUIC");
    let q = &metrics.quic;
    assert_eq!(get(&q.datagrams_queued), 128);
    assert_eq!(get(&q.dropped_not_quic), 129);
}

#[test]
fn queue_is_bounded_and_drops_are_counted() {
    let (factory, mut queue, metrics) = setup(2, 1500);
    let mut hook = factory(SocketId::PRIMARY);
    for i in 0..5u8 {
        hook.on_datagram(&meta("127.0.0.1:4000"), &[0xc0, i]);
    }
    let q = &metrics.quic;
    assert_eq!(get(&q.datagrams_queued), 2);
    assert_eq!(get(&q.dropped_queue_full), 3);
    // The first two are kept, in order, with their metadata.
    let first = queue.rx.try_recv().expect("queued");
    assert_eq!(first.data, vec![0xc0, 0]);
    assert_eq!(first.from, "127.0.0.1:4000".parse().expect("addr"));
    assert_eq!(first.dst_ip, Some("127.0.0.1".parse().expect("ip")));
    assert_eq!(queue.rx.try_recv().expect("queued").data, vec![0xc0, 1]);
    assert!(queue.rx.try_recv().is_err(), "nothing beyond the bound");
    // Space again: queued again.
    hook.on_datagram(&meta("127.0.0.1:4000"), &[0x40, 9]);
    assert_eq!(get(&q.datagrams_queued), 3);
}

#[test]
fn non_quic_oversized_and_alternate_socket_datagrams_are_dropped() {
    let (factory, mut queue, metrics) = setup(16, 1300);
    let mut primary = factory(SocketId::PRIMARY);
    let mut alternate = factory(SocketId::ALL[3]);
    // DTLS (20-63) and RTP/greased QUIC (128-191) are not QUIC for us.
    primary.on_datagram(&meta("127.0.0.1:1"), &[23, 1, 2]);
    primary.on_datagram(&meta("127.0.0.1:1"), &[0x80, 1, 2]);
    primary.on_datagram(&meta("127.0.0.1:1"), &[]);
    primary.on_datagram(&meta("127.0.0.1:1"), &vec![0xc0; 1301]);
    alternate.on_datagram(&meta("127.0.0.1:1"), &[0xc0, 1]);
    let q = &metrics.quic;
    assert_eq!(get(&q.dropped_not_quic), 3);
    assert_eq!(get(&q.dropped_too_large), 1);
    assert_eq!(get(&q.dropped_other_socket), 1);
    assert_eq!(get(&q.datagrams_queued), 0);
    assert!(queue.rx.try_recv().is_err());
    // At the bound exactly: accepted.
    primary.on_datagram(&meta("127.0.0.1:1"), &vec![0xc0; 1300]);
    assert_eq!(get(&q.datagrams_queued), 1);
}

#[test]
fn closed_queue_counts_no_endpoint() {
    let (factory, queue, metrics) = setup(4, 1500);
    let mut hook = factory(SocketId::PRIMARY);
    drop(queue);
    hook.on_datagram(&meta("127.0.0.1:1"), &[0xc0, 1]);
    assert_eq!(get(&metrics.quic.dropped_no_endpoint), 1);
}

/// `n` receive buffers of `len` bytes each, and their metadata, as quinn offers them.
struct RecvBufs {
    storage: Vec<Vec<u8>>,
    metas: Vec<RecvMeta>,
}

impl RecvBufs {
    fn new(n: usize, len: usize) -> Self {
        Self {
            storage: vec![vec![0u8; len]; n],
            metas: vec![RecvMeta::default(); n],
        }
    }

    /// One `poll_recv` of `socket` into these buffers.
    fn poll(&mut self, socket: &HookSocket, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let mut bufs: Vec<IoSliceMut<'_>> = self
            .storage
            .iter_mut()
            .map(|b| IoSliceMut::new(b))
            .collect();
        socket.poll_recv(cx, &mut bufs, &mut self.metas)
    }

    /// Waits (at most 5 s) for `socket` to fill some buffers; returns how many.
    async fn recv(&mut self, socket: &HookSocket) -> usize {
        tokio::time::timeout(Duration::from_secs(5), poll_fn(|cx| self.poll(socket, cx)))
            .await
            .expect("ready")
            .expect("recv")
    }
}

async fn socket_pair(
    capacity: usize,
) -> (HookFactory, Arc<HookSocket>, Arc<CoordMetrics>, SocketAddr) {
    let (factory, queue, metrics) = setup(capacity, 1500);
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let local = sock.local_addr().expect("addr");
    let io = Arc::new(SocketIo::new(sock).expect("io"));
    let socket = HookSocket::new(io, local, queue, Arc::clone(&metrics));
    (factory, socket, metrics, local)
}

#[tokio::test]
async fn poll_recv_drains_the_queue_into_quinn_buffers() {
    let (factory, socket, _metrics, local) = socket_pair(8).await;
    assert_eq!(socket.local_addr().expect("addr"), local);
    let mut hook = factory(SocketId::PRIMARY);
    hook.on_datagram(&meta("127.0.0.1:5000"), &[0xc1, 1, 2, 3]);
    hook.on_datagram(&meta("127.0.0.1:5001"), &[0x41, 9]);
    let mut r = RecvBufs::new(4, 64);
    assert_eq!(r.recv(&socket).await, 2);
    let metas = &r.metas;
    assert_eq!(metas[0].addr, "127.0.0.1:5000".parse().expect("addr"));
    assert_eq!((metas[0].len, metas[0].stride), (4, 4));
    assert_eq!(metas[0].dst_ip, Some("127.0.0.1".parse().expect("ip")));
    assert_eq!(&r.storage[0][..4], &[0xc1, 1, 2, 3]);
    assert_eq!(metas[1].addr, "127.0.0.1:5001".parse().expect("addr"));
    assert_eq!(&r.storage[1][..2], &[0x41, 9]);
    // Empty queue: pending until the next datagram arrives.
    let pending = poll_fn(|cx| Poll::Ready(r.poll(&socket, cx))).await;
    assert!(pending.is_pending());
}

#[tokio::test]
async fn oversized_for_quinn_buffer_is_skipped() {
    let (factory, socket, metrics, _) = socket_pair(8).await;
    let mut hook = factory(SocketId::PRIMARY);
    hook.on_datagram(&meta("127.0.0.1:5000"), &[0xc1; 100]);
    hook.on_datagram(&meta("127.0.0.1:5000"), &[0xc2; 10]);
    let mut r = RecvBufs::new(2, 32);
    assert_eq!(r.recv(&socket).await, 1);
    assert_eq!(r.metas[0].len, 10);
    assert_eq!(&r.storage[0][..10], &[0xc2; 10]);
    assert_eq!(QuicCounters::get(&metrics.quic.dropped_too_large), 1);
}

#[tokio::test]
async fn try_send_leaves_from_the_shared_socket() {
    let (_factory, socket, _metrics, local) = socket_pair(8).await;
    let rx = StdUdpSocket::bind("127.0.0.1:0").expect("bind");
    rx.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let transmit = Transmit {
        destination: rx.local_addr().expect("addr"),
        ecn: None,
        contents: &[0xc3, 4, 5],
        segment_size: None,
        src_ip: None,
    };
    // As quinn does: wait for writability (a fresh socket's readiness is not known yet),
    // then send.
    let mut poller = Arc::clone(&socket).create_io_poller();
    tokio::time::timeout(
        Duration::from_secs(5),
        poll_fn(|cx| poller.as_mut().poll_writable(cx)),
    )
    .await
    .expect("writable")
    .expect("ok");
    socket.try_send(&transmit).expect("send");
    let mut buf = [0u8; 16];
    let (n, from) = rx.recv_from(&mut buf).expect("datagram");
    assert_eq!(&buf[..n], &[0xc3, 4, 5]);
    assert_eq!(from, local, "QUIC leaves from the STUN port");
}
