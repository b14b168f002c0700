//! Loopback tests of the QUIC punch coordinator in the real `punch-server` binary.
//!
//! Each test starts the binary (`--listen 127.0.0.1:0 --key-file <tempdir>/k`), reads the
//! server id and address from its first stdout line, and dials it with peers built from
//! `mesh::socket::Endpoint` (one UDP socket each, on 127.0.0.1) speaking `mesh::coord`
//! frames on one bidirectional stream. Every wait has a timeout; traffic goes to 127.0.0.1
//! only. The server is killed by its pid on drop.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mesh::coord::{
    encode, Candidate, CandidateKind, ClientMsg, ErrorKind, FrameDecoder, Go, Role, ServerMsg,
};
use mesh::identity::{Identity, IdentityError, PeerId};
use mesh::socket::{ConnectError, Endpoint, EndpointOptions, StunReceiver};
use stun_rs::attributes::stun::XorMappedAddress;
use stun_rs::{MessageClass, MessageDecoderBuilder};
use tokio::time::timeout;

/// Longest wait for any one thing.
const WAIT: Duration = Duration::from_secs(10);

/// A running server, killed (by its pid) on drop.
struct ServerProc {
    child: Child,
    id: PeerId,
    addr: SocketAddr,
    metrics: Option<SocketAddr>,
    _dir: tempfile::TempDir,
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl ServerProc {
    fn start(extra: &[&str]) -> ServerProc {
        let dir = tempfile::tempdir().expect("temp dir");
        let key = dir.path().join("k");
        let key = key.to_str().expect("utf-8 path");
        let mut child = Command::new(env!("CARGO_BIN_EXE_punch-server"))
            .args(["--listen", "127.0.0.1:0", "--key-file", key])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn punch-server");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx.recv_timeout(WAIT).expect("listening line in time");
        let line: serde_json::Value = serde_json::from_str(&line).expect("JSON line");
        assert_eq!(line["event"], "listening", "{line}");
        let text = |k: &str| line[k].as_str().map(str::to_owned);
        ServerProc {
            id: text("id").expect("id").parse().expect("peer id"),
            addr: text("addr").expect("addr").parse().expect("address"),
            metrics: text("metrics_addr").map(|a| a.parse().expect("metrics address")),
            child,
            _dir: dir,
        }
    }

    fn sigterm(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    }
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
        let pc = timeout(WAIT, endpoint.connect(server.id, server.addr))
            .await
            .expect("handshake in time")?;
        assert_eq!(pc.peer_id, server.id);
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

    /// Waits for the connection to close; returns the application close code.
    async fn closed_code(&self) -> Option<u64> {
        let e = timeout(WAIT, self.conn.closed())
            .await
            .expect("closed in time");
        match e {
            quinn::ConnectionError::ApplicationClosed(c) => Some(c.error_code.into_inner()),
            _ => None,
        }
    }
}

fn expect_go(msg: ServerMsg) -> Go {
    match msg {
        ServerMsg::Go(go) => go,
        other => panic!("expected Go, got {other:?}"),
    }
}

#[tokio::test]
async fn register_reports_the_real_local_address() {
    let server = ServerProc::start(&[]);
    let mut peer = Peer::dial(&server).await;
    let (observed, _) = peer.register_default().await;
    assert_eq!(observed, peer.local());
    // Registering again replaces the registration and is answered again.
    let observed = peer.register(vec![]).await;
    assert_eq!(observed, peer.local());
}

#[tokio::test]
async fn connect_and_accept_give_both_sides_go() {
    let server = ServerProc::start(&[]);
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
    let server = ServerProc::start(&[]);
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
    match a.next().await {
        ServerMsg::Error {
            request_id, kind, ..
        } => {
            assert_eq!(request_id, Some(3));
            assert_eq!(kind, ErrorKind::Refused);
        }
        other => panic!("expected Error, got {other:?}"),
    }
}

#[tokio::test]
async fn unknown_target_is_an_error() {
    let server = ServerProc::start(&[]);
    let mut a = Peer::dial(&server).await;
    a.register_default().await;
    let nobody = Identity::generate().expect("identity").peer_id();
    a.send(ClientMsg::Connect {
        request_id: 1,
        target: nobody,
    })
    .await;
    match a.next().await {
        ServerMsg::Error {
            request_id, kind, ..
        } => {
            assert_eq!(request_id, Some(1));
            assert_eq!(kind, ErrorKind::UnknownTarget);
        }
        other => panic!("expected Error, got {other:?}"),
    }
}

#[tokio::test]
async fn wrong_version_is_answered_then_closed() {
    let server = ServerProc::start(&[]);
    let mut peer = Peer::dial(&server).await;
    // length 2, version 99, type 1 (Register), no body.
    peer.write(&[0x00, 0x02, 99, 0x01]).await;
    match peer.next().await {
        ServerMsg::Error { kind, .. } => assert_eq!(kind, ErrorKind::VersionMismatch),
        other => panic!("expected Error, got {other:?}"),
    }
    assert_eq!(
        peer.closed_code().await,
        Some(2),
        "closed with VersionMismatch"
    );
}

#[tokio::test]
async fn wrong_server_id_fails_with_peer_id_mismatch() {
    let server = ServerProc::start(&[]);
    let (endpoint, _stun) = bind(Arc::new(Identity::generate().expect("identity")));
    let wrong = Identity::generate().expect("identity").peer_id();
    let result = timeout(WAIT, endpoint.connect(wrong, server.addr))
        .await
        .expect("handshake ends in time");
    match result {
        Err(ConnectError::Identity(IdentityError::PeerIdMismatch { expected, actual })) => {
            assert_eq!(expected, wrong);
            assert_eq!(actual, server.id);
        }
        other => panic!("expected PeerIdMismatch, got {other:?}"),
    }
}

fn binding_request(txid: [u8; 12]) -> Vec<u8> {
    let mut m = vec![0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xa4, 0x42];
    m.extend_from_slice(&txid);
    m
}

fn xor_mapped(response: &[u8], txid: [u8; 12]) -> SocketAddr {
    let (msg, _) = MessageDecoderBuilder::default()
        .build()
        .decode(response)
        .expect("STUN response");
    assert_eq!(msg.class(), MessageClass::SuccessResponse);
    assert_eq!(msg.transaction_id().as_bytes(), &txid);
    *msg.get::<XorMappedAddress>()
        .expect("XOR-MAPPED-ADDRESS")
        .as_xor_mapped_address()
        .expect("typed")
        .socket_address()
}

#[tokio::test]
async fn stun_is_answered_on_the_same_port_while_quic_runs() {
    let server = ServerProc::start(&[]);
    let mut peer = Peer::dial(&server).await;
    let (observed, _) = peer.register_default().await;
    // From the peer's own socket, shared with its QUIC connection: same mapping.
    let txid = [1u8; 12];
    let mut answer = None;
    for _ in 0..5 {
        peer.endpoint
            .send_stun(server.addr, &binding_request(txid))
            .await
            .expect("send STUN");
        if let Ok(Some(d)) = timeout(Duration::from_secs(1), peer.stun.recv()).await {
            answer = Some(d);
            break;
        }
    }
    let answer = answer.expect("STUN answer on the peer socket");
    assert_eq!(answer.from, server.addr);
    assert_eq!(xor_mapped(&answer.data, txid), observed);
    // From a plain socket too.
    let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
    sock.set_read_timeout(Some(Duration::from_secs(1)))
        .expect("timeout");
    let txid = [2u8; 12];
    let mut buf = [0u8; 1500];
    let mut got = None;
    for _ in 0..5 {
        sock.send_to(&binding_request(txid), server.addr)
            .expect("send");
        if let Ok((n, from)) = sock.recv_from(&mut buf) {
            got = Some((n, from));
            break;
        }
    }
    let (n, from) = got.expect("STUN answer");
    assert_eq!(from, server.addr);
    assert_eq!(
        xor_mapped(&buf[..n], txid),
        sock.local_addr().expect("addr")
    );
    // The QUIC control connection still works.
    peer.send(ClientMsg::Ping { ts: 42 }).await;
    assert_eq!(peer.next().await, ServerMsg::Pong { ts: 42 });
}

fn http_get(addr: SocketAddr, path: &str) -> String {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .expect("write");
    let mut body = String::new();
    s.read_to_string(&mut body).expect("read");
    body
}

fn metric(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

#[tokio::test]
async fn metrics_show_coordinator_counters() {
    let server = ServerProc::start(&["--metrics-listen", "127.0.0.1:0"]);
    let metrics = server.metrics.expect("metrics address");
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
    let server = ServerProc::start(&[]);
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
    let server = ServerProc::start(&[]);
    let identity = Arc::new(Identity::generate().expect("identity"));
    let mut first = Peer::dial_as(&server, Arc::clone(&identity))
        .await
        .expect("first");
    first.register_default().await;
    let mut second = Peer::dial_as(&server, identity).await.expect("second");
    second.register_default().await;
    assert_eq!(first.closed_code().await, Some(1), "closed as Superseded");
}

#[tokio::test]
async fn max_peers_refuses_more_connections() {
    let server = ServerProc::start(&["--max-peers", "1"]);
    let mut a = Peer::dial(&server).await;
    a.register_default().await;
    let identity = Arc::new(Identity::generate().expect("identity"));
    match Peer::dial_as(&server, identity).await {
        Err(ConnectError::Handshake(quinn::ConnectionError::ConnectionClosed(_)))
        | Err(ConnectError::Handshake(quinn::ConnectionError::ApplicationClosed(_))) => {}
        Err(other) => panic!("unexpected error {other:?}"),
        Ok(_) => panic!("a second peer was admitted"),
    }
    // The first one is still served.
    a.send(ClientMsg::Ping { ts: 5 }).await;
    assert_eq!(a.next().await, ServerMsg::Pong { ts: 5 });
}

#[tokio::test]
async fn sigterm_closes_connections_and_exits() {
    let mut server = ServerProc::start(&[]);
    let mut peer = Peer::dial(&server).await;
    peer.register_default().await;
    server.sigterm();
    assert_eq!(peer.closed_code().await, Some(0), "closed with Shutdown");
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(status) = server.child.try_wait().expect("wait") {
            assert!(status.success(), "exit status {status}");
            break;
        }
        assert!(Instant::now() < deadline, "did not exit after SIGTERM");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
