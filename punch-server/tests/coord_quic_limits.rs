//! Loopback tests of the QUIC coordinator's protective limits, run in process.
//!
//! Flow of every test:
//! 1. [`Coord::start`] starts STUN + QUIC with `punch_server::quic::start` on 127.0.0.1:0,
//!    with a fresh server identity and small `QuicConfig` / `CoordConfig` bounds so the
//!    limit is reached in well under a second.
//! 2. Peers are `mesh::socket::Endpoint`s (one UDP socket each, on 127.0.0.1) that dial the
//!    server's id and speak `mesh::coord` frames on one bidirectional stream ([`Peer`]).
//! 3. The test asserts what a peer sees (the QUIC close code, `Registered`, `Error`s) and
//!    what an operator sees (the `CoordMetrics` counters behind `/metrics`), then shuts
//!    the server down.
//!
//! The Retry test puts a [`Relay`] (two UDP sockets on 127.0.0.1) between each peer and
//! the server to see the server's Retry packets on the wire, and checks the server's
//! `retries_sent` counter against them. The migration test moves a relay to a new
//! server-side socket (a NAT rebinding) and waits for the coordinator to hand out the new
//! reflexive address. Every wait has a timeout, every loop a bound; traffic goes to
//! 127.0.0.1 only.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mesh::coord::{
    encode, Candidate, CandidateKind, ClientMsg, CloseCode, ErrorKind, FrameDecoder, ServerMsg,
};
use mesh::identity::{Identity, PeerId};
use mesh::socket::{default_transport, ConnectError, Endpoint, EndpointOptions, INITIAL_RTT};
use punch_server::coordinator::{CoordConfig, Rate};
use punch_server::driver::Server;
use punch_server::quic::{CoordMetrics, CoordServer, QuicConfig, QuicCounters};
use punch_server::ServerConfig;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::{sleep, timeout};

/// Longest wait for any one thing.
const WAIT: Duration = Duration::from_secs(10);

/// A coordinator running in this process.
struct Coord {
    stun: Server,
    quic: CoordServer,
    id: PeerId,
    metrics: Arc<CoordMetrics>,
}

impl Coord {
    async fn start(quic: QuicConfig, coord: CoordConfig) -> Coord {
        let identity = Identity::generate().expect("server identity");
        let config = ServerConfig {
            listen: "127.0.0.1:0".parse().expect("addr"),
            ..ServerConfig::default()
        };
        let (stun, quic) = punch_server::quic::start(config, quic, coord, &identity)
            .await
            .expect("start the coordinator");
        Coord {
            metrics: quic.metrics(),
            stun,
            quic,
            id: identity.peer_id(),
        }
    }

    fn addr(&self) -> SocketAddr {
        self.quic.local_addr()
    }

    async fn stop(self) {
        timeout(WAIT, async {
            self.quic.shutdown().await;
            self.stun.shutdown().await;
        })
        .await
        .expect("shutdown in time");
    }
}

/// Coordinator settings without rate limits, so only the limit under test can bite.
fn unlimited() -> CoordConfig {
    let none = Rate {
        per_sec: 0,
        burst: 0,
    };
    CoordConfig {
        connect_rate: none,
        attempt_rate: none,
        message_rate: none,
        max_pending_per_peer: 1000,
        max_incoming_per_peer: 1000,
        ..CoordConfig::default()
    }
}

/// Reads a counter.
fn get(counter: &AtomicU64) -> u64 {
    QuicCounters::get(counter)
}

/// Polls `check` every 10 ms until it holds; fails after [`WAIT`].
async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        sleep(Duration::from_millis(10)).await;
    }
}

fn bind(options: EndpointOptions) -> Endpoint {
    let identity = Arc::new(Identity::generate().expect("identity"));
    let addr: SocketAddr = "127.0.0.1:0".parse().expect("addr");
    Endpoint::bind(addr, identity, options).expect("bind").0
}

/// Completes the handshake with `coord` (nothing more).
async fn connect(endpoint: &Endpoint, coord: &Coord) -> quinn::Connection {
    let connect = endpoint.connect(coord.id, coord.addr());
    let pc = timeout(WAIT, connect).await.expect("handshake in time");
    pc.expect("connect").connection
}

/// A peer with its control stream open.
struct Peer {
    endpoint: Endpoint,
    conn: quinn::Connection,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    decoder: FrameDecoder<ServerMsg>,
}

impl Peer {
    async fn open(endpoint: Endpoint, conn: quinn::Connection) -> Peer {
        let (send, recv) = timeout(WAIT, conn.open_bi())
            .await
            .expect("stream in time")
            .expect("open the control stream");
        Peer {
            endpoint,
            conn,
            send,
            recv,
            decoder: FrameDecoder::new(),
        }
    }

    async fn dial(coord: &Coord, options: EndpointOptions) -> Peer {
        let endpoint = bind(options);
        let conn = connect(&endpoint, coord).await;
        Peer::open(endpoint, conn).await
    }

    async fn send_all(&mut self, msgs: &[ClientMsg]) {
        let mut frames = Vec::new();
        for msg in msgs {
            encode(msg, &mut frames).expect("encode");
        }
        timeout(WAIT, self.send.write_all(&frames))
            .await
            .expect("write in time")
            .expect("write");
    }

    /// The next server message other than a ping (pings are answered).
    async fn next(&mut self) -> ServerMsg {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            while let Some(msg) = self.decoder.pop() {
                match msg.expect("valid server frame") {
                    ServerMsg::Ping { ts } => self.send_all(&[ClientMsg::Pong { ts }]).await,
                    other => return other,
                }
            }
            let chunk = tokio::time::timeout_at(deadline, self.recv.read_chunk(4096, true))
                .await
                .expect("server message in time")
                .expect("read")
                .expect("stream still open");
            self.decoder.push(&chunk.bytes);
        }
    }

    async fn register(&mut self) {
        self.send_all(&[ClientMsg::Register { candidates: vec![] }])
            .await;
        let msg = self.next().await;
        assert!(matches!(msg, ServerMsg::Registered { .. }), "{msg:?}");
    }

    /// Asserts the server still answers this peer.
    async fn ping(&mut self, ts: u64) {
        self.send_all(&[ClientMsg::Ping { ts }]).await;
        assert_eq!(self.next().await, ServerMsg::Pong { ts });
    }
}

#[tokio::test]
async fn peer_without_control_stream_is_closed_with_no_control_stream() {
    let control_stream_timeout = Duration::from_millis(300);
    let quic = QuicConfig {
        control_stream_timeout,
        ..QuicConfig::default()
    };
    let coord = Coord::start(quic, CoordConfig::default()).await;
    let q = &coord.metrics.quic;
    // A well-behaved peer, dialed first: the timeout must not touch it.
    let mut good = Peer::dial(&coord, EndpointOptions::default()).await;
    good.register().await;
    // The lazy peer completes the handshake and then opens nothing.
    let lazy = bind(EndpointOptions::default());
    let conn = connect(&lazy, &coord).await;
    let connected = Instant::now();
    let e = timeout(WAIT, conn.closed()).await.expect("closed in time");
    let waited = connected.elapsed();
    let quinn::ConnectionError::ApplicationClosed(close) = &e else {
        panic!("expected an application close, got {e:?}");
    };
    assert_eq!(close.error_code.into_inner(), 7, "{e}");
    assert_eq!(CloseCode::from_quic(&e), Some(CloseCode::NoControlStream));
    assert!(
        waited >= control_stream_timeout - Duration::from_millis(50)
            && waited < control_stream_timeout + Duration::from_secs(2),
        "closed after {waited:?}, timeout {control_stream_timeout:?}"
    );
    assert_eq!(get(&q.no_control_stream), 1);
    assert_eq!(get(&q.connections_accepted), 2);
    assert_eq!(get(&q.connections_established), 1, "only the good peer");
    eventually("the lazy connection's task to end", || {
        get(&q.connections_active) == 1
    })
    .await;
    // The coordinator never heard of the lazy peer; the good one is still served.
    let snapshot = coord.metrics.snapshot();
    assert_eq!((snapshot.connections, snapshot.registered), (1, 1));
    good.ping(11).await;
    coord.stop().await;
}

/// A UDP relay between one peer and the server that counts the server's Retry packets,
/// and can move to a new server-side socket as a NAT rebinding would ([`Relay::rebind`]).
struct Relay {
    addr: SocketAddr,
    rebind: mpsc::Sender<oneshot::Sender<SocketAddr>>,
    task: JoinHandle<()>,
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A QUIC v1 Retry packet: long header, fixed bit, type 3 (RFC 9000 §17.2.5).
fn is_retry(datagram: &[u8]) -> bool {
    datagram.len() > 5 && datagram[0] & 0xf0 == 0xf0 && datagram[1..5] == [0, 0, 0, 1]
}

/// A socket on 127.0.0.1 sending to `server` only.
async fn back_socket(server: SocketAddr) -> UdpSocket {
    let back = UdpSocket::bind("127.0.0.1:0").await.expect("bind back");
    back.connect(server).await.expect("connect back");
    back
}

impl Relay {
    async fn start(server: SocketAddr, retries: Arc<AtomicU64>) -> Relay {
        let front = UdpSocket::bind("127.0.0.1:0").await.expect("bind front");
        let mut back = back_socket(server).await;
        let addr = front.local_addr().expect("front addr");
        let (rebind, mut rebinds) = mpsc::channel::<oneshot::Sender<SocketAddr>>(1);
        let forward = async move {
            let (mut up, mut down) = ([0u8; 2048], [0u8; 2048]);
            let mut peer = None;
            // Ends on drop (abort), on a socket error, or after a minute at most.
            loop {
                tokio::select! {
                    r = front.recv_from(&mut up) => {
                        let Ok((n, from)) = r else { break };
                        peer = Some(from);
                        let _ = back.send(&up[..n]).await;
                    }
                    r = back.recv(&mut down) => {
                        let Ok(n) = r else { break };
                        if is_retry(&down[..n]) {
                            retries.fetch_add(1, Ordering::Relaxed);
                        }
                        if let Some(peer) = peer {
                            let _ = front.send_to(&down[..n], peer).await;
                        }
                    }
                    Some(reply) = rebinds.recv() => {
                        back = back_socket(server).await;
                        let _ = reply.send(back.local_addr().expect("back addr"));
                    }
                }
            }
        };
        let task = tokio::spawn(async move {
            let _ = timeout(Duration::from_secs(60), forward).await;
        });
        Relay { addr, rebind, task }
    }

    /// Forwards from a new server-side socket from now on; its address.
    async fn rebind(&self) -> SocketAddr {
        let (reply, new_addr) = oneshot::channel();
        self.rebind.send(reply).await.expect("relay running");
        timeout(WAIT, new_addr)
            .await
            .expect("rebound in time")
            .expect("relay running")
    }
}

/// Dials through `relay` until admitted, as a peer whose connection is refused would,
/// with a short growing pause; returns the peer and how often it was refused.
async fn dial_until_admitted(server: PeerId, relay: Relay) -> (Peer, Relay, u64) {
    let endpoint = bind(EndpointOptions::default());
    let mut refused = 0;
    for attempt in 1..=100u64 {
        let result = timeout(WAIT, endpoint.connect(server, relay.addr))
            .await
            .expect("handshake ends in time");
        match result {
            Ok(pc) => {
                let mut peer = Peer::open(endpoint, pc.connection).await;
                peer.register().await;
                return (peer, relay, refused);
            }
            Err(ConnectError::Handshake(quinn::ConnectionError::ConnectionClosed(c)))
                if c.error_code == quinn::TransportErrorCode::CONNECTION_REFUSED =>
            {
                refused += 1;
                sleep(Duration::from_millis(5 * attempt.min(20))).await;
            }
            Err(e) => panic!("unexpected dial error: {e}"),
        }
    }
    panic!("still refused after 100 attempts");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn busy_server_sends_retry_and_still_admits_every_peer() {
    const PEERS: usize = 16;
    let quic = QuicConfig {
        max_handshakes: 2,
        ..QuicConfig::default()
    };
    let coord = Coord::start(quic, CoordConfig::default()).await;
    let q = &coord.metrics.quic;
    let retries = Arc::new(AtomicU64::new(0));
    let mut relays = Vec::new();
    for _ in 0..PEERS {
        relays.push(Relay::start(coord.addr(), Arc::clone(&retries)).await);
    }
    // All dial at once.
    let mut dials = JoinSet::new();
    for relay in relays {
        dials.spawn(dial_until_admitted(coord.id, relay));
    }
    let mut peers = Vec::new();
    let mut refused_seen = 0;
    while let Some(done) = timeout(Duration::from_secs(30), dials.join_next())
        .await
        .expect("every peer admitted in time")
    {
        let (peer, relay, refused) = done.expect("dial task");
        refused_seen += refused;
        peers.push((peer, relay));
    }
    assert_eq!(peers.len(), PEERS);
    let seen = retries.load(Ordering::Relaxed);
    assert!(seen >= 1, "the server never asked for a Retry");
    // The operator's counter matches what went on the wire.
    assert_eq!(get(&q.retries_sent), seen);
    // Each admitted handshake completed: no failures, one control stream each.
    assert_eq!(get(&q.connections_accepted), PEERS as u64);
    assert_eq!(get(&q.connections_established), PEERS as u64);
    assert_eq!(get(&q.handshakes_failed), 0);
    // Every refusal the server counted reached a peer (quinn may refuse more on its own).
    assert!(get(&q.connections_refused) <= refused_seen);
    eventually("all peers registered", || {
        coord.metrics.snapshot().registered == PEERS
    })
    .await;
    for (i, (peer, _)) in peers.iter_mut().enumerate() {
        peer.ping(i as u64).await;
    }
    coord.stop().await;
}

#[tokio::test]
async fn peer_that_does_not_read_is_closed_as_too_slow() {
    const CONNECTS: u64 = 64;
    let write_timeout = Duration::from_millis(300);
    let quic = QuicConfig {
        write_timeout,
        // Room for every message of this test, so only the stalled write can bite.
        outgoing_queue: 256,
        ..QuicConfig::default()
    };
    let coord = Coord::start(quic, unlimited()).await;
    let q = &coord.metrics.quic;
    // The slow peer grants 1 KiB on its control stream: ~23 `Incoming`s fill it.
    let slow_options = EndpointOptions {
        transport: |rtt| {
            let mut transport = default_transport(rtt.unwrap_or(INITIAL_RTT));
            transport.stream_receive_window(quinn::VarInt::from_u32(1024));
            transport
        },
        ..EndpointOptions::default()
    };
    let mut slow = Peer::dial(&coord, slow_options).await;
    slow.register().await;
    let mut requester = Peer::dial(&coord, EndpointOptions::default()).await;
    requester.register().await;
    let target = slow.endpoint.peer_id();
    let connects: Vec<ClientMsg> = (1..=CONNECTS)
        .map(|request_id| ClientMsg::Connect { request_id, target })
        .collect();
    let started = Instant::now();
    requester.send_all(&connects).await;
    // The slow peer never reads again.
    let e = timeout(WAIT, slow.conn.closed())
        .await
        .expect("closed in time");
    assert_eq!(CloseCode::from_quic(&e), Some(CloseCode::TooSlow), "{e}");
    assert!(
        started.elapsed() >= write_timeout - Duration::from_millis(50),
        "closed after {:?}, before the write timeout",
        started.elapsed()
    );
    // Every request to it is answered: the target is gone.
    let mut answered = Vec::new();
    for _ in 0..CONNECTS {
        match requester.next().await {
            ServerMsg::Error {
                request_id: Some(id),
                kind: ErrorKind::TargetGone,
                ..
            } => answered.push(id),
            other => panic!("expected Error {{ TargetGone }}, got {other:?}"),
        }
    }
    answered.sort_unstable();
    assert_eq!(answered, (1..=CONNECTS).collect::<Vec<_>>());
    // The requester is unharmed; the slow peer is forgotten.
    requester.ping(5).await;
    eventually("the slow peer to be forgotten", || {
        let s = coord.metrics.snapshot();
        (s.connections, s.registered, s.pending) == (1, 1, 0)
    })
    .await;
    assert_eq!(get(&q.too_slow), 1, "only the slow peer");
    coord.stop().await;
}

#[tokio::test]
async fn rtt_and_address_changes_reach_the_coordinator() {
    let quic = QuicConfig {
        report_interval: Duration::from_millis(50),
        ..QuicConfig::default()
    };
    let coord = Coord::start(quic, unlimited()).await;
    // The target sits behind a relay that will rebind; the requester dials directly.
    let relay = Relay::start(coord.addr(), Arc::new(AtomicU64::new(0))).await;
    let (mut target, relay, _) = dial_until_admitted(coord.id, relay).await;
    let mut requester = Peer::dial(&coord, EndpointOptions::default()).await;
    requester.register().await;
    // One sample on connect, then one per connection every report interval.
    let at_start = coord.metrics.snapshot().stats.rtt_samples;
    eventually("RTT samples every report interval", || {
        coord.metrics.snapshot().stats.rtt_samples >= at_start + 6
    })
    .await;
    // The target's NAT mapping changes: the server sees it migrate, and connects to it
    // get the new reflexive address once the coordinator has read it.
    let moved = relay.rebind().await;
    target.ping(1).await;
    let srflx = Candidate::new(CandidateKind::ServerReflexive, moved);
    let target_id = target.endpoint.peer_id();
    for request_id in 1..=100u64 {
        requester
            .send_all(&[ClientMsg::Connect {
                request_id,
                target: target_id,
            }])
            .await;
        let ServerMsg::Incoming { request_id: id, .. } = target.next().await else {
            panic!("expected Incoming");
        };
        target
            .send_all(&[ClientMsg::Accept { request_id: id }])
            .await;
        let ServerMsg::Go(go) = requester.next().await else {
            panic!("expected Go");
        };
        assert!(matches!(target.next().await, ServerMsg::Go(_)));
        if go.peer_candidates.contains(&srflx) {
            coord.stop().await;
            return;
        }
        sleep(Duration::from_millis(50)).await;
    }
    panic!("the new address {moved} never reached the coordinator");
}
