//! Loopback tests of the QUIC punch coordinator in the real `punch-server` binary.
//!
//! Each test starts the binary (`--listen 127.0.0.1:0`, key file in a temporary directory;
//! see `common::ServerProc`), reads the server id and address from its first stdout line,
//! and dials it with peers built from `mesh::socket::Endpoint` (one UDP socket each, on
//! 127.0.0.1) speaking `mesh::coord` frames on one bidirectional stream. Every wait has a
//! timeout; traffic goes to 127.0.0.1 only. The server is killed by its pid on drop.
//!
//! A peer from before `Relays` existed is simulated by decoding with [`V1ServerMsg`],
//! which does not know that message type.

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{binding_request, exchange, http_get, response_to, xor_mapped, ServerProc, WAIT};
use mesh::coord::park;
use mesh::coord::{
    encode, Candidate, CandidateKind, ClientMsg, CloseCode, CodecError, ErrorKind, FrameDecoder,
    Go, Reader, Role, ServerMsg, WireMessage, Writer,
};
use mesh::identity::{Identity, IdentityError, PeerId};
use mesh::socket::{ConnectError, Endpoint, EndpointOptions, StunReceiver};
use stun_rs::MessageClass;
use tokio::time::timeout;

/// Starts the binary on 127.0.0.1:0 with `extra` arguments.
fn start(extra: &[&str]) -> ServerProc {
    let mut args = vec!["--listen", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    ServerProc::start(&args, &[])
}

/// A peer: its own endpoint and one control stream to the server.
struct Peer {
    endpoint: Endpoint,
    stun: StunReceiver,
    conn: quinn::Connection,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    decoder: FrameDecoder<ServerMsg>,
    id: PeerId,
}

fn bind(identity: Arc<Identity>) -> (Endpoint, StunReceiver) {
    let addr: SocketAddr = "127.0.0.1:0".parse().expect("addr");
    Endpoint::bind(addr, identity, EndpointOptions::default()).expect("bind endpoint")
}

impl Peer {
    async fn dial(server: &ServerProc) -> Peer {
        let identity = Arc::new(Identity::generate().expect("identity"));
        Self::dial_as(server, identity)
            .await
            .expect("connect to the server")
    }

    async fn dial_as(server: &ServerProc, identity: Arc<Identity>) -> Result<Peer, ConnectError> {
        let (endpoint, stun) = bind(identity);
        let pc = timeout(WAIT, endpoint.connect(server.id(), server.addr()))
            .await
            .expect("handshake in time")?;
        assert_eq!(pc.peer_id, server.id());
        let (send, recv) = timeout(WAIT, pc.connection.open_bi())
            .await
            .expect("stream in time")
            .expect("open the control stream");
        Ok(Peer {
            id: endpoint.peer_id(),
            endpoint,
            stun,
            conn: pc.connection,
            send,
            recv,
            decoder: FrameDecoder::new(),
        })
    }

    fn local(&self) -> SocketAddr {
        self.endpoint.local_addr().expect("local addr")
    }

    async fn write(&mut self, bytes: &[u8]) {
        timeout(WAIT, self.send.write_all(bytes))
            .await
            .expect("write in time")
            .expect("write");
    }

    async fn send(&mut self, msg: ClientMsg) {
        let mut frame = Vec::new();
        encode(&msg, &mut frame).expect("encode");
        self.write(&frame).await;
    }

    /// The next server message other than a ping (pings are answered if possible).
    async fn next(&mut self) -> ServerMsg {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            while let Some(msg) = self.decoder.pop() {
                match msg.expect("valid server frame") {
                    ServerMsg::Ping { ts } => {
                        // Best effort: the server may be closing (it pings at connect).
                        let mut frame = Vec::new();
                        encode(&ClientMsg::Pong { ts }, &mut frame).expect("encode");
                        let _ = timeout(WAIT, self.send.write_all(&frame)).await;
                    }
                    other => return other,
                }
            }
            let read = tokio::time::timeout_at(deadline, self.recv.read_chunk(4096, true))
                .await
                .expect("server message in time")
                .expect("read");
            let chunk = read.expect("stream still open");
            self.decoder.push(&chunk.bytes);
        }
    }

    /// Registers with `candidates`; returns the observed address.
    async fn register(&mut self, candidates: Vec<Candidate>) -> SocketAddr {
        self.send(ClientMsg::Register { candidates }).await;
        match self.next().await {
            ServerMsg::Registered { observed_addr, .. } => observed_addr,
            other => panic!("expected Registered, got {other:?}"),
        }
    }

    /// Registers with a host candidate on 127.0.0.2 (unlike the observed 127.0.0.1, so
    /// the server adds the reflexive one).
    async fn register_default(&mut self) -> (SocketAddr, Candidate) {
        let host = Candidate::new(
            CandidateKind::Host,
            SocketAddr::new([127, 0, 0, 2].into(), self.local().port()),
        );
        (self.register(vec![host]).await, host)
    }

    /// Waits for the connection to close; returns the server's close code (`None` if it
    /// ended otherwise, or with a code this version does not know).
    async fn close_code(&self) -> Option<CloseCode> {
        let e = timeout(WAIT, self.conn.closed())
            .await
            .expect("closed in time");
        CloseCode::from_quic(&e)
    }
}

fn expect_go(msg: ServerMsg) -> Go {
    match msg {
        ServerMsg::Go(go) => go,
        other => panic!("expected Go, got {other:?}"),
    }
}

/// The request id and kind of an `Error`.
fn expect_error(msg: ServerMsg) -> (Option<u64>, ErrorKind) {
    match msg {
        ServerMsg::Error {
            request_id, kind, ..
        } => (request_id, kind),
        other => panic!("expected Error, got {other:?}"),
    }
}

#[tokio::test]
async fn register_reports_the_real_local_address() {
    let server = start(&[]);
    let mut peer = Peer::dial(&server).await;
    let (observed, _) = peer.register_default().await;
    assert_eq!(observed, peer.local());
    // Registering again replaces the registration and is answered again.
    let observed = peer.register(vec![]).await;
    assert_eq!(observed, peer.local());
}

#[tokio::test]
async fn connect_and_accept_give_both_sides_go() {
    let server = start(&[]);
    let mut a = Peer::dial(&server).await;
    let mut b = Peer::dial(&server).await;
    let (a_observed, a_host) = a.register_default().await;
    let (b_observed, b_host) = b.register_default().await;
    a.send(ClientMsg::Connect {
        request_id: 7,
        target: b.id,
    })
    .await;
    let server_request = match b.next().await {
        ServerMsg::Incoming { request_id, from } => {
            assert_eq!(from, a.id);
            request_id
        }
        other => panic!("expected Incoming, got {other:?}"),
    };
    b.send(ClientMsg::Accept {
        request_id: server_request,
    })
    .await;
    let a_go = expect_go(a.next().await);
    let b_go = expect_go(b.next().await);
    assert_eq!(a_go.request_id, 7);
    assert_eq!(b_go.request_id, server_request);
    assert_eq!((a_go.peer, b_go.peer), (b.id, a.id));
    assert_eq!(
        (a_go.role, b_go.role),
        (Role::Controlling, Role::Controlled)
    );
    let srflx = |addr| Candidate::new(CandidateKind::ServerReflexive, addr);
    assert!(
        a_go.peer_candidates.contains(&b_host),
        "{:?}",
        a_go.peer_candidates
    );
    assert!(
        a_go.peer_candidates.contains(&srflx(b_observed)),
        "{:?}",
        a_go.peer_candidates
    );
    assert!(
        b_go.peer_candidates.contains(&a_host),
        "{:?}",
        b_go.peer_candidates
    );
    assert!(
        b_go.peer_candidates.contains(&srflx(a_observed)),
        "{:?}",
        b_go.peer_candidates
    );
    let (ac, bc) = (&a_go.credentials, &b_go.credentials);
    assert_eq!(ac.local_ufrag, bc.remote_ufrag);
    assert_eq!(ac.local_pwd, bc.remote_pwd);
    assert_eq!(ac.remote_ufrag, bc.local_ufrag);
    assert_eq!(ac.remote_pwd, bc.local_pwd);
    assert_ne!(ac.local_ufrag, ac.remote_ufrag);
    for go in [&a_go, &b_go] {
        assert!(go.start_in < Duration::from_secs(1), "{:?}", go.start_in);
    }
}

#[tokio::test]
async fn refused_request_reaches_the_requester() {
    let server = start(&[]);
    let mut a = Peer::dial(&server).await;
    let mut b = Peer::dial(&server).await;
    a.register_default().await;
    b.register_default().await;
    a.send(ClientMsg::Connect {
        request_id: 3,
        target: b.id,
    })
    .await;
    let ServerMsg::Incoming { request_id, .. } = b.next().await else {
        panic!("expected Incoming");
    };
    b.send(ClientMsg::Refuse { request_id }).await;
    assert_eq!(expect_error(a.next().await), (Some(3), ErrorKind::Refused));
}

#[tokio::test]
async fn unknown_target_is_an_error() {
    let server = start(&[]);
    let mut a = Peer::dial(&server).await;
    a.register_default().await;
    let nobody = Identity::generate().expect("identity").peer_id();
    a.send(ClientMsg::Connect {
        request_id: 1,
        target: nobody,
    })
    .await;
    assert_eq!(
        expect_error(a.next().await),
        (Some(1), ErrorKind::UnknownTarget)
    );
}

#[tokio::test]
async fn wrong_version_is_answered_then_closed() {
    let server = start(&[]);
    let mut peer = Peer::dial(&server).await;
    // length 2, version 99, type 1 (Register), no body.
    peer.write(&[0x00, 0x02, 99, 0x01]).await;
    // The frame has no request id to answer to.
    assert_eq!(
        expect_error(peer.next().await),
        (None, ErrorKind::VersionMismatch)
    );
    assert_eq!(peer.close_code().await, Some(CloseCode::VersionMismatch));
}

#[tokio::test]
async fn wrong_server_id_fails_with_peer_id_mismatch() {
    let server = start(&[]);
    let (endpoint, _stun) = bind(Arc::new(Identity::generate().expect("identity")));
    let wrong = Identity::generate().expect("identity").peer_id();
    let result = timeout(WAIT, endpoint.connect(wrong, server.addr()))
        .await
        .expect("handshake ends in time");
    match result {
        Err(ConnectError::Identity(IdentityError::PeerIdMismatch { expected, actual })) => {
            assert_eq!(expected, wrong);
            assert_eq!(actual, server.id());
        }
        other => panic!("expected PeerIdMismatch, got {other:?}"),
    }
}

#[tokio::test]
async fn stun_is_answered_on_the_same_port_while_quic_runs() {
    let server = start(&[]);
    let mut peer = Peer::dial(&server).await;
    let (observed, _) = peer.register_default().await;
    // From the peer's own socket, shared with its QUIC connection: same mapping.
    let request = binding_request([1u8; 12], None);
    let mut answer = None;
    for _ in 0..5 {
        peer.endpoint
            .send_stun(server.addr(), &request)
            .await
            .expect("send STUN");
        if let Ok(Some(d)) = timeout(Duration::from_secs(1), peer.stun.recv()).await {
            answer = Some(d);
            break;
        }
    }
    let answer = answer.expect("STUN answer on the peer socket");
    assert_eq!(answer.from, server.addr());
    let msg = response_to(&answer.data, &request);
    assert_eq!(msg.class(), MessageClass::SuccessResponse);
    assert_eq!(xor_mapped(&msg), observed);
    // From a plain socket too.
    let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let (msg, from) = exchange(&sock, server.addr(), &binding_request([2u8; 12], None));
    assert_eq!(msg.class(), MessageClass::SuccessResponse);
    assert_eq!(from, server.addr());
    assert_eq!(xor_mapped(&msg), sock.local_addr().expect("addr"));
    // The QUIC control connection still works.
    peer.send(ClientMsg::Ping { ts: 42 }).await;
    assert_eq!(peer.next().await, ServerMsg::Pong { ts: 42 });
}

fn metric(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

#[tokio::test]
async fn metrics_show_coordinator_counters() {
    let server = start(&["--metrics-listen", "127.0.0.1:0"]);
    let metrics = server.addr_of("metrics_addr");
    let mut peer = Peer::dial(&server).await;
    peer.register_default().await;
    let deadline = Instant::now() + WAIT;
    loop {
        let text = tokio::task::spawn_blocking(move || http_get(metrics, "/metrics"))
            .await
            .expect("http task");
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        let registrations = metric(&text, "punch_coord_registrations_total");
        let active = metric(&text, "punch_coord_connections_active");
        if registrations >= Some(1) && active == Some(1) {
            assert!(metric(&text, "punch_coord_connections_accepted_total") >= Some(1));
            assert!(
                text.contains("punch_stun_datagrams_received_total"),
                "{text}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "coordinator metrics missing: {text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn second_stream_is_not_allowed() {
    let server = start(&[]);
    let mut peer = Peer::dial(&server).await;
    peer.register_default().await;
    // The server grants one bidirectional stream and no unidirectional ones.
    let extra = timeout(Duration::from_millis(500), peer.conn.open_bi()).await;
    assert!(extra.is_err(), "a second bidirectional stream was granted");
    let uni = timeout(Duration::from_millis(500), peer.conn.open_uni()).await;
    assert!(uni.is_err(), "a unidirectional stream was granted");
}

#[tokio::test]
async fn same_peer_again_supersedes_the_old_connection() {
    let server = start(&[]);
    let identity = Arc::new(Identity::generate().expect("identity"));
    let mut first = Peer::dial_as(&server, Arc::clone(&identity))
        .await
        .expect("first");
    first.register_default().await;
    let mut second = Peer::dial_as(&server, identity).await.expect("second");
    second.register_default().await;
    assert_eq!(first.close_code().await, Some(CloseCode::Superseded));
}

#[tokio::test]
async fn max_peers_refuses_more_connections() {
    let server = start(&["--max-peers", "1"]);
    let mut a = Peer::dial(&server).await;
    a.register_default().await;
    let identity = Arc::new(Identity::generate().expect("identity"));
    // `--max-peers` bounds both the QUIC connection slots and the coordinator's table, so
    // the accept loop refuses the handshake (`Incoming::refuse`) before the coordinator
    // could answer `ServerFull`: a transport-level CONNECTION_REFUSED, not a `CloseCode`.
    match Peer::dial_as(&server, identity).await {
        Err(ConnectError::Handshake(quinn::ConnectionError::ConnectionClosed(c)))
            if c.error_code == quinn::TransportErrorCode::CONNECTION_REFUSED => {}
        Err(other) => panic!("expected CONNECTION_REFUSED, got {other:?}"),
        Ok(_) => panic!("a second peer was admitted"),
    }
    // The first one is still served.
    a.send(ClientMsg::Ping { ts: 5 }).await;
    assert_eq!(a.next().await, ServerMsg::Pong { ts: 5 });
}

#[tokio::test]
async fn sigterm_closes_connections_and_exits() {
    let mut server = start(&[]);
    let mut peer = Peer::dial(&server).await;
    peer.register_default().await;
    server.sigterm();
    assert_eq!(peer.close_code().await, Some(CloseCode::Shutdown));
    // The wait blocks: off the runtime, which keeps driving the peer's endpoint.
    let status = tokio::task::spawn_blocking(move || server.wait_for_exit())
        .await
        .expect("wait task");
    assert!(status.success(), "exit status {status}");
}

/// The server messages as a peer from before `Relays` (type 0x88) decodes them.
#[derive(Debug)]
struct V1ServerMsg(ServerMsg);

impl WireMessage for V1ServerMsg {
    fn type_code(&self) -> u8 {
        self.0.type_code()
    }
    fn encode_body(&self, w: &mut Writer<'_>) -> Result<(), CodecError> {
        self.0.encode_body(w)
    }
    fn decode_body(code: u8, r: &mut Reader<'_>) -> Result<Self, CodecError> {
        match code {
            0x88 => Err(CodecError::UnknownType(code)),
            _ => ServerMsg::decode_body(code, r).map(Self),
        }
    }
}

/// The next frame `peer` gets, decoded as an older peer would (pings answered).
async fn next_v1(
    peer: &mut Peer,
    old: &mut FrameDecoder<V1ServerMsg>,
) -> Result<ServerMsg, CodecError> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        while let Some(msg) = old.pop() {
            match msg {
                Ok(V1ServerMsg(ServerMsg::Ping { ts })) => peer.send(ClientMsg::Pong { ts }).await,
                other => return other.map(|m| m.0),
            }
        }
        let read = tokio::time::timeout_at(deadline, peer.recv.read_chunk(4096, true))
            .await
            .expect("server message in time")
            .expect("read");
        old.push(&read.expect("stream still open").bytes);
    }
}

#[tokio::test]
async fn relays_follow_registration_and_an_older_peer_still_connects() {
    let server = start(&[
        "--turn-uri",
        "turn:127.0.0.1:3478",
        "--turn-secret",
        "s3cret",
        "--turn-ttl-secs",
        "600",
    ]);
    let unix = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs()
    };
    let before = unix();
    let mut a = Peer::dial(&server).await;
    a.register_default().await;
    let relays = match a.next().await {
        ServerMsg::Relays { relays } => relays,
        other => panic!("expected Relays, got {other:?}"),
    };
    let [relay] = relays.as_slice() else {
        panic!("one relay expected: {relays:?}");
    };
    assert_eq!(relay.uri.to_string(), "turn:127.0.0.1:3478");
    assert_eq!(relay.username, format!("{}:{}", relay.expires_unix, a.id));
    let password = mesh::turn::credentials::rest_password("s3cret", &relay.username);
    assert_eq!(relay.password, password);
    assert!((before + 600..=unix() + 600).contains(&relay.expires_unix));

    // A peer from before `Relays`: its decoder skips the unknown frame, stays in sync, and
    // the peer is connected to as before.
    let mut b = Peer::dial(&server).await;
    b.send(ClientMsg::Register { candidates: vec![] }).await;
    let mut old = FrameDecoder::<V1ServerMsg>::new();
    assert!(matches!(
        next_v1(&mut b, &mut old).await,
        Ok(ServerMsg::Registered { .. })
    ));
    let skipped = next_v1(&mut b, &mut old).await.expect_err("Relays unknown");
    assert_eq!(skipped, CodecError::UnknownType(0x88));
    assert!(!skipped.is_fatal() && !old.is_failed());
    a.send(ClientMsg::Connect {
        request_id: 3,
        target: b.id,
    })
    .await;
    let request_id = match next_v1(&mut b, &mut old).await {
        Ok(ServerMsg::Incoming { request_id, from }) if from == a.id => request_id,
        other => panic!("expected Incoming, got {other:?}"),
    };
    b.send(ClientMsg::Accept { request_id }).await;
    assert_eq!(expect_go(a.next().await).peer, b.id);
    match next_v1(&mut b, &mut old).await {
        Ok(ServerMsg::Go(go)) => assert_eq!(go.peer, a.id),
        other => panic!("expected Go, got {other:?}"),
    }
}

/// The next STUN datagram on `stun` that `parse` reads as a park message.
async fn next_park_message(stun: &mut StunReceiver) -> (Vec<u8>, park::ParkMessage) {
    loop {
        let d = timeout(WAIT, stun.recv())
            .await
            .expect("STUN datagram in time")
            .expect("socket open");
        if let Some(m) = park::parse(&d.data) {
            return (d.data.to_vec(), m);
        }
    }
}

#[tokio::test]
async fn a_peer_that_does_not_offer_parking_is_never_parked() {
    let server = start(&["--park-after-secs", "1", "--park-keepalive-secs", "1"]);
    // An old peer (no `Capabilities`): still connected and asked after 3 idle seconds.
    let mut old = Peer::dial(&server).await;
    old.register_default().await;
    let mut new = Peer::dial(&server).await;
    new.register_default().await;
    new.send(ClientMsg::Capabilities { park: true }).await;
    assert!(matches!(new.next().await, ServerMsg::Park { .. }));
    assert_eq!(new.close_code().await, Some(CloseCode::Parked));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut asker = Peer::dial(&server).await;
    asker.register_default().await;
    asker
        .send(ClientMsg::Connect {
            request_id: 1,
            target: old.id,
        })
        .await;
    assert!(matches!(old.next().await, ServerMsg::Incoming { .. }));
    assert!(old.conn.close_reason().is_none());
}

#[tokio::test]
async fn a_parked_peer_lives_on_keepalives_and_comes_back_when_woken() {
    let server = start(&["--park-after-secs", "1", "--park-keepalive-secs", "1"]);
    let identity = Arc::new(Identity::generate().expect("identity"));
    let mut parked = Peer::dial_as(&server, Arc::clone(&identity))
        .await
        .expect("connect");
    parked.register_default().await;
    parked.send(ClientMsg::Capabilities { park: true }).await;
    let (key, keepalive) = match parked.next().await {
        ServerMsg::Park { key, keepalive } => (key, keepalive),
        other => panic!("expected Park, got {other:?}"),
    };
    assert_eq!(keepalive, Duration::from_secs(1));
    assert_eq!(parked.close_code().await, Some(CloseCode::Parked));
    // Keep-alives from the same socket, answered with our key; a forged one gets a 401.
    let Peer {
        endpoint, mut stun, ..
    } = parked;
    for tx in 1..=3u8 {
        let req = park::keepalive_request(&identity.peer_id(), &key, [tx; 12]).expect("encode");
        endpoint.send_stun(server.addr(), &req).await.expect("send");
        let (answer, msg) = next_park_message(&mut stun).await;
        assert!(
            matches!(msg, park::ParkMessage::Success { transaction, .. } if transaction == [tx; 12])
        );
        assert!(park::verify(&answer, &key));
        tokio::time::sleep(Duration::from_millis(900)).await;
    }
    let forged = park::keepalive_request(&identity.peer_id(), &park::ParkKey([0; 32]), [9; 12])
        .expect("encode");
    endpoint
        .send_stun(server.addr(), &forged)
        .await
        .expect("send");
    let (_, msg) = next_park_message(&mut stun).await;
    assert!(matches!(msg, park::ParkMessage::Unauthorized { .. }));
    // Someone connects: the server wakes us at our socket.
    let mut asker = Peer::dial(&server).await;
    asker.register_default().await;
    asker
        .send(ClientMsg::Connect {
            request_id: 5,
            target: identity.peer_id(),
        })
        .await;
    let (wake, msg) = next_park_message(&mut stun).await;
    assert!(matches!(msg, park::ParkMessage::Wake { peer, .. } if peer == identity.peer_id()));
    assert!(park::verify(&wake, &key));
    // We come back as the same peer (a new socket is fine: the key proves who we are)
    // and get the held request once registered.
    drop((endpoint, stun));
    let mut back = Peer::dial_as(&server, identity).await.expect("reconnect");
    back.register_default().await;
    let id = match back.next().await {
        ServerMsg::Incoming { request_id, from } if from == asker.id => request_id,
        other => panic!("expected the held Incoming, got {other:?}"),
    };
    back.send(ClientMsg::Accept { request_id: id }).await;
    assert_eq!(expect_go(asker.next().await).request_id, 5);
    assert_eq!(expect_go(back.next().await).request_id, id);
}
