//! Loopback integration tests of the one-socket layer: mutual-TLS QUIC between two
//! [`mesh::socket::Endpoint`]s, identity mismatch, and STUN demultiplexing on the same socket.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use mesh::identity::{Identity, IdentityError, PeerId};
use mesh::socket::path::is_synthetic;
use mesh::socket::{ConnectError, Endpoint, EndpointOptions, PeerConnection, RawSendError};
use tokio::time::timeout;

const LOOPBACK: &str = "127.0.0.1:0";
const STEP: Duration = Duration::from_secs(10);

fn endpoint() -> anyhow::Result<(Endpoint, mesh::socket::StunReceiver)> {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let identity = Arc::new(Identity::generate()?);
    Ok(Endpoint::bind(
        LOOPBACK.parse()?,
        identity,
        EndpointOptions::default(),
    )?)
}

fn loopback_addr(ep: &Endpoint) -> anyhow::Result<SocketAddr> {
    let port = ep.local_addr()?.port();
    Ok(SocketAddr::from(([127, 0, 0, 1], port)))
}

/// Accepts one connection and echoes one bidirectional stream.
async fn accept_and_echo(server: &Endpoint) -> anyhow::Result<PeerConnection> {
    let conn = timeout(STEP, server.accept())
        .await?
        .context("endpoint closed")??;
    let (mut send, mut recv) = timeout(STEP, conn.connection.accept_bi()).await??;
    let data = timeout(STEP, recv.read_to_end(1 << 20)).await??;
    send.write_all(&data).await?;
    send.finish()?;
    Ok(conn)
}

async fn echo_round_trip(conn: &PeerConnection, payload: &[u8]) -> anyhow::Result<Vec<u8>> {
    let (mut send, mut recv) = conn.connection.open_bi().await?;
    send.write_all(payload).await?;
    send.finish()?;
    Ok(timeout(STEP, recv.read_to_end(1 << 20)).await??)
}

#[tokio::test]
async fn mutual_tls_connect_and_exchange_a_stream() -> anyhow::Result<()> {
    let (a, _a_stun) = endpoint()?;
    let (b, _b_stun) = endpoint()?;
    let a_addr = loopback_addr(&a)?;

    let (accepted, dialed) = tokio::join!(accept_and_echo(&a), async {
        let conn = b.connect(a.peer_id(), a_addr).await?;
        let echoed = echo_round_trip(&conn, &[42u8; 100_000]).await?;
        anyhow::Ok((conn, echoed))
    });
    let accepted = accepted?;
    let (dialed, echoed) = dialed?;

    assert_eq!(echoed, vec![42u8; 100_000]);
    // Each side knows the other by its verified key and a synthetic address.
    assert_eq!(accepted.peer_id, b.peer_id());
    assert_eq!(dialed.peer_id, a.peer_id());
    assert!(is_synthetic(&dialed.connection.remote_address()));
    assert!(is_synthetic(&accepted.connection.remote_address()));
    assert_eq!(dialed.connection.remote_address(), dialed.synthetic_addr);
    // The acceptor pinned the learned path to the dialer's key.
    assert_eq!(
        a.socket().paths().peer_of(&accepted.synthetic_addr),
        Some(b.peer_id())
    );

    let (sa, sb) = (a.stats(), b.stats());
    assert!(sa.quic_rx > 0 && sb.quic_rx > 0, "{sa:?} {sb:?}");
    assert_eq!(sa.unroutable_tx + sb.unroutable_tx, 0, "{sa:?} {sb:?}");
    assert_eq!(sa.unknown_rx + sb.unknown_rx, 0);

    // A path from another local socket is not sent from this one: dropped and counted.
    let elsewhere = mesh::socket::Path::Direct {
        remote: a_addr,
        local: mesh::socket::LocalSocket(1),
    };
    assert!(b
        .socket()
        .paths()
        .set_path(&dialed.synthetic_addr, elsewhere));
    let mut stream = dialed.connection.open_uni().await?;
    stream.write_all(b"not sent").await?;
    wait_unroutable(&b, 1).await?;
    // Once B forgets the path, quinn's packets to the synthetic address are dropped and
    // counted, never sent anywhere.
    assert!(b.socket().paths().remove(&dialed.synthetic_addr).is_some());
    let before = b.stats().unroutable_tx;
    dialed.connection.close(0u32.into(), b"done");
    wait_unroutable(&b, before + 1).await?;
    a.close(0, b"bye");
    b.close(0, b"bye");
    Ok(())
}

/// Waits until `e` counted at least `at_least` datagrams it had no path for.
async fn wait_unroutable(e: &Endpoint, at_least: u64) -> anyhow::Result<()> {
    timeout(STEP, async {
        while e.stats().unroutable_tx < at_least {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn wrong_expected_peer_id_fails_with_both_ids() -> anyhow::Result<()> {
    let (a, _a_stun) = endpoint()?;
    let (b, _b_stun) = endpoint()?;
    let someone_else: PeerId = Identity::generate()?.peer_id();
    let a_addr = loopback_addr(&a)?;

    // The acceptor sees a failed handshake; keep it running in the background.
    let acceptor = async { timeout(STEP, a.accept()).await };
    let (_, result) = tokio::join!(acceptor, b.connect(someone_else, a_addr));
    match result {
        Err(ConnectError::Identity(IdentityError::PeerIdMismatch { expected, actual })) => {
            assert_eq!(expected, someone_else);
            assert_eq!(actual, a.peer_id());
            let text = ConnectError::Identity(IdentityError::PeerIdMismatch { expected, actual })
                .to_string();
            assert!(text.contains(&expected.to_string()) && text.contains(&actual.to_string()));
        }
        Err(other) => bail!("wrong error: {other}"),
        Ok(_) => bail!("connected to the wrong peer"),
    }

    // No path is kept for a peer that was never reached.
    assert_eq!(b.socket().paths().synthetic_for_peer(&someone_else), None);

    // The right id still works afterwards on the same sockets.
    let (accepted, dialed) = tokio::join!(accept_and_echo(&a), async {
        let conn = b.connect(a.peer_id(), a_addr).await?;
        echo_round_trip(&conn, b"again").await
    });
    accepted?;
    assert_eq!(dialed?, b"again");
    Ok(())
}

fn stun_binding_request(tag: u8) -> Vec<u8> {
    let mut m = vec![0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xa4, 0x42];
    m.extend_from_slice(&[tag; 12]);
    m
}

#[tokio::test]
async fn stun_goes_to_the_queue_and_quic_still_works() -> anyhow::Result<()> {
    let (a, mut a_stun) = endpoint()?;
    let (b, _b_stun) = endpoint()?;
    let a_addr = loopback_addr(&a)?;
    let probe = tokio::net::UdpSocket::bind(LOOPBACK).await?;
    let probe_addr = probe.local_addr()?;

    // STUN and junk into A's socket, from an address quinn never heard of.
    probe.send_to(&stun_binding_request(1), a_addr).await?;
    probe.send_to(&[0x80, 1, 2, 3], a_addr).await?; // RTP range: unknown
    probe.send_to(&[0x00, 1, 2, 3], a_addr).await?; // STUN range without cookie: unknown
    let got = timeout(STEP, a_stun.recv())
        .await?
        .context("stun queue closed")?;
    assert_eq!(got.from, probe_addr);
    assert_eq!(&got.data[..], &stun_binding_request(1)[..]);
    // None of it reached quinn or created a path.
    let before = a.stats();
    assert_eq!((before.quic_rx, before.stun_rx), (0, 1), "{before:?}");
    assert!(a.socket().paths().is_empty());

    // QUIC on the same socket still works, and STUN keeps flowing during the connection.
    let (accepted, dialed) = tokio::join!(accept_and_echo(&a), async {
        let conn = b.connect(a.peer_id(), a_addr).await?;
        probe.send_to(&stun_binding_request(2), a_addr).await?;
        echo_round_trip(&conn, b"over the shared socket").await
    });
    accepted?;
    assert_eq!(dialed?, b"over the shared socket");
    let got = timeout(STEP, a_stun.recv())
        .await?
        .context("stun queue closed")?;
    assert_eq!(&got.data[..], &stun_binding_request(2)[..]);

    let stats = a.stats();
    assert_eq!(stats.stun_rx, 2, "{stats:?}");
    assert_eq!(stats.unknown_rx, 2, "{stats:?}");
    // Neither STUN nor junk created a path: only the dialing peer is in the table.
    assert_eq!(a.socket().paths().len(), 1);

    // STUN out through the same socket: the reply leaves from A's address.
    a.send_stun(probe_addr, &stun_binding_request(3)).await?;
    let mut buf = [0u8; 64];
    let (n, from) = timeout(STEP, probe.recv_from(&mut buf)).await??;
    assert_eq!(&buf[..n], &stun_binding_request(3)[..]);
    assert_eq!(from, a_addr);

    // Synthetic addresses are never a real target.
    let synthetic = mesh::socket::path::synthetic_addr(1);
    assert!(matches!(
        a.send_stun(synthetic, b"x").await,
        Err(RawSendError::SyntheticDestination(_))
    ));
    Ok(())
}

#[tokio::test]
async fn dialing_an_address_with_no_peer_times_out_without_sending_elsewhere() -> anyhow::Result<()>
{
    let identity = Arc::new(Identity::generate()?);
    let options = EndpointOptions {
        handshake_timeout: Duration::from_millis(300),
        ..Default::default()
    };
    let (a, _stun) = Endpoint::bind(LOOPBACK.parse()?, identity, options)?;
    // A bound but silent loopback socket: the handshake cannot finish.
    let silent = tokio::net::UdpSocket::bind(LOOPBACK).await?;
    let target = silent.local_addr()?;
    let peer = Identity::generate()?.peer_id();
    let err = a
        .connect(peer, target)
        .await
        .err()
        .context("connected to nobody")?;
    assert!(matches!(err, ConnectError::Timeout(_)), "{err}");
    // The Initial went to the real address behind the synthetic one.
    let mut buf = [0u8; 2048];
    let (n, from) = timeout(STEP, silent.recv_from(&mut buf)).await??;
    assert!(
        n >= 1200 && buf[0] >= 0xc0,
        "an Initial packet, got {n} bytes"
    );
    assert_eq!(from.port(), a.local_addr()?.port());
    assert_eq!(a.stats().unroutable_tx, 0);
    Ok(())
}

/// A loopback UDP forwarder standing in for a relay: datagrams from the first sender go to
/// `target`, datagrams from `target` go back to the first sender.
async fn forwarder(
    target: SocketAddr,
) -> anyhow::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let socket = tokio::net::UdpSocket::bind(LOOPBACK).await?;
    let addr = socket.local_addr()?;
    let task = tokio::spawn(async move {
        let mut client: Option<SocketAddr> = None;
        let mut buf = vec![0u8; 65536];
        while let Ok((n, from)) = socket.recv_from(&mut buf).await {
            let to = if from == target {
                client
            } else {
                client.get_or_insert(from);
                Some(target)
            };
            if let Some(to) = to {
                let _ = socket.send_to(&buf[..n], to).await;
            }
        }
    });
    Ok((addr, task))
}

#[tokio::test]
async fn a_live_connection_moves_to_a_new_path() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let key = dir.path().join("a.key");
    let a_id = Identity::load_or_generate(&key)?.peer_id();
    let (a, _a_stun) = Endpoint::bind(
        LOOPBACK.parse()?,
        Arc::new(Identity::load(&key)?),
        EndpointOptions::default(),
    )?;
    assert_eq!(a.peer_id(), a_id, "the reloaded key is the same identity");
    let (b, _b_stun) = endpoint()?;
    let a_addr = loopback_addr(&a)?;
    let (relay_addr, relay) = forwarder(a_addr).await?;

    // B reaches A through the forwarder first.
    let (accepted, dialed) = tokio::join!(
        async { anyhow::Ok(timeout(STEP, a.accept()).await?.context("closed")??) },
        b.connect(a.peer_id(), relay_addr)
    );
    let (accepted, dialed) = (accepted?, dialed?);
    let server = tokio::spawn(async move {
        // Echo every stream until the connection closes.
        while let Ok((mut send, mut recv)) = accepted.connection.accept_bi().await {
            let data = recv.read_to_end(1 << 20).await?;
            send.write_all(&data).await?;
            send.finish()?;
        }
        anyhow::Ok(())
    });
    assert_eq!(echo_round_trip(&dialed, b"via relay").await?, b"via relay");

    // Switch B's path to direct under the live connection: same synthetic address for quinn.
    assert!(b
        .socket()
        .paths()
        .set_path(&dialed.synthetic_addr, mesh::socket::Path::direct(a_addr)));
    relay.abort();
    assert_eq!(
        echo_round_trip(&dialed, b"direct now").await?,
        b"direct now"
    );
    assert_eq!(dialed.connection.remote_address(), dialed.synthetic_addr);
    assert!(dialed.connection.close_reason().is_none());

    dialed.connection.close(0u32.into(), b"done");
    timeout(STEP, server).await???;
    Ok(())
}

/// A Binding success response (no attributes) to transaction `[tag; 12]`.
fn stun_binding_success(tag: u8) -> Vec<u8> {
    let mut m = vec![0x01, 0x01, 0x00, 0x00, 0x21, 0x12, 0xa4, 0x42];
    m.extend_from_slice(&[tag; 12]);
    m
}

#[tokio::test]
async fn stun_answers_reach_the_owner_of_their_request_and_strays_are_counted() -> anyhow::Result<()>
{
    use mesh::stun::StunOwner;
    let (a, mut a_default) = endpoint()?;
    let (control_tx, mut a_control) = tokio::sync::mpsc::channel(8);
    a.socket().route_stun(StunOwner::Control, control_tx);
    let a_addr = loopback_addr(&a)?;
    let server = tokio::net::UdpSocket::bind(LOOPBACK).await?;
    let server_addr = server.local_addr()?;
    let mut buf = [0u8; 64];

    // A's control asks; the answer comes back to control, not to the default queue.
    a.send_stun_as(StunOwner::Control, server_addr, &stun_binding_request(7))
        .await?;
    let (n, _) = timeout(STEP, server.recv_from(&mut buf)).await??;
    assert_eq!(&buf[..n], &stun_binding_request(7)[..]);
    server.send_to(&stun_binding_success(7), a_addr).await?;
    let got = timeout(STEP, a_control.recv())
        .await?
        .context("control queue closed")?;
    assert_eq!(&got.data[..], &stun_binding_success(7)[..]);
    assert_eq!(got.from, server_addr);

    // The default owner's request gets its answer on the default queue; a request from
    // outside goes there too.
    a.send_stun(server_addr, &stun_binding_request(8)).await?;
    server.send_to(&stun_binding_success(8), a_addr).await?;
    server.send_to(&stun_binding_request(9), a_addr).await?;
    for expected in [stun_binding_success(8), stun_binding_request(9)] {
        let got = timeout(STEP, a_default.recv())
            .await?
            .context("default queue closed")?;
        assert_eq!(&got.data[..], &expected[..]);
    }

    // An answer to nothing A asked is dropped and counted, reaching neither queue.
    server.send_to(&stun_binding_success(42), a_addr).await?;
    let deadline = tokio::time::Instant::now() + STEP;
    while a.stats().stun_unclaimed == 0 {
        assert!(tokio::time::Instant::now() < deadline, "never counted");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(a_default.try_recv().is_none());
    assert!(a_control.try_recv().is_err());
    let stats = a.stats();
    assert_eq!((stats.stun_rx, stats.stun_unclaimed), (3, 1), "{stats:?}");
    Ok(())
}
