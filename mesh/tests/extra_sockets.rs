//! Loopback integration tests of the mesh socket's extra local sockets (birthday probing's
//! hard side): STUN in and out of an extra socket tagged with its id, a live QUIC
//! connection moved onto a path from an extra socket, and closing extra sockets.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use mesh::identity::Identity;
use mesh::socket::{
    Endpoint, EndpointOptions, LocalSocket, Path, PeerConnection, RawSendError, StunReceiver,
};
use mesh::stun::StunOwner;
use tokio::time::timeout;

const LOOPBACK: &str = "127.0.0.1:0";
const STEP: Duration = Duration::from_secs(10);

fn endpoint() -> anyhow::Result<(Endpoint, StunReceiver)> {
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

/// A Binding request with transaction `[tag; 12]` (no attributes).
fn stun_binding_request(tag: u8) -> Vec<u8> {
    let mut m = vec![0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xa4, 0x42];
    m.extend_from_slice(&[tag; 12]);
    m
}

/// A Binding success response (no attributes) to transaction `[tag; 12]`.
fn stun_binding_success(tag: u8) -> Vec<u8> {
    let mut m = vec![0x01, 0x01, 0x00, 0x00, 0x21, 0x12, 0xa4, 0x42];
    m.extend_from_slice(&[tag; 12]);
    m
}

/// A plain loopback UDP socket that waits at most [`STEP`] for a datagram.
fn plain_socket() -> anyhow::Result<std::net::UdpSocket> {
    let socket = std::net::UdpSocket::bind(LOOPBACK)?;
    socket.set_read_timeout(Some(STEP))?;
    Ok(socket)
}

/// Receives one datagram on a plain socket without blocking the runtime.
async fn recv_plain(socket: &std::net::UdpSocket) -> anyhow::Result<(Vec<u8>, SocketAddr)> {
    let socket = socket.try_clone()?;
    tokio::task::spawn_blocking(move || {
        let mut buf = [0u8; 2048];
        let (n, from) = socket.recv_from(&mut buf)?;
        anyhow::Ok((buf[..n].to_vec(), from))
    })
    .await?
}

/// B dials A; A echoes every bidirectional stream until the connection closes.
async fn connect_with_echo(
    a: &Endpoint,
    b: &Endpoint,
) -> anyhow::Result<(
    PeerConnection,
    PeerConnection,
    tokio::task::JoinHandle<anyhow::Result<()>>,
)> {
    let a_addr = loopback_addr(a)?;
    let (accepted, dialed) = tokio::join!(
        async { anyhow::Ok(timeout(STEP, a.accept()).await?.context("closed")??) },
        b.connect(a.peer_id(), a_addr)
    );
    let (accepted, dialed) = (accepted?, dialed?);
    let echo = accepted.connection.clone();
    let server = tokio::spawn(async move {
        while let Ok((mut send, mut recv)) = echo.accept_bi().await {
            let data = recv.read_to_end(1 << 20).await?;
            send.write_all(&data).await?;
            send.finish()?;
        }
        anyhow::Ok(())
    });
    Ok((accepted, dialed, server))
}

async fn echo_round_trip(conn: &PeerConnection, payload: &[u8]) -> anyhow::Result<Vec<u8>> {
    let (mut send, mut recv) = conn.connection.open_bi().await?;
    send.write_all(payload).await?;
    send.finish()?;
    Ok(timeout(STEP, recv.read_to_end(1 << 20)).await??)
}

#[tokio::test]
async fn stun_on_an_extra_socket_carries_its_id_and_leaves_from_its_port() -> anyhow::Result<()> {
    let (a, mut a_stun) = endpoint()?;
    let a_addr = loopback_addr(&a)?;
    let ids = a.socket().open_extra(3)?;
    assert_eq!(a.socket().extra_count(), 3);
    let mut distinct = ids.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), 3, "{ids:?}");
    assert!(!ids.contains(&LocalSocket::PRIMARY));
    let extra = ids[1];
    let extra_addr = a.socket().extra_local_addr(extra).context("extra open")?;
    assert_eq!(extra_addr.ip(), a_addr.ip(), "on the primary socket's IP");
    assert_ne!(extra_addr.port(), a_addr.port());

    // In: a STUN datagram to the extra socket's port reaches the STUN queue with its id.
    let probe = plain_socket()?;
    let probe_addr = probe.local_addr()?;
    probe.send_to(&stun_binding_request(1), extra_addr)?;
    let got = timeout(STEP, a_stun.recv())
        .await?
        .context("queue closed")?;
    assert_eq!(got.local, extra);
    assert_eq!(got.from, probe_addr);
    assert_eq!(&got.data[..], &stun_binding_request(1)[..]);
    // The primary socket's datagrams still say so.
    probe.send_to(&stun_binding_request(2), a_addr)?;
    let got = timeout(STEP, a_stun.recv())
        .await?
        .context("queue closed")?;
    assert_eq!((got.local, got.from), (LocalSocket::PRIMARY, probe_addr));

    // Out: a request sent from the extra socket leaves from its port...
    a.socket()
        .send_stun_from(
            extra,
            StunOwner::Default,
            probe_addr,
            &stun_binding_request(3),
        )
        .await?;
    let (data, from) = recv_plain(&probe).await?;
    assert_eq!(data, stun_binding_request(3));
    assert_eq!(from, extra_addr);
    // ... and its answer, back on the extra socket, reaches the owner tagged with it.
    probe.send_to(&stun_binding_success(3), extra_addr)?;
    let got = timeout(STEP, a_stun.recv())
        .await?
        .context("queue closed")?;
    assert_eq!(&got.data[..], &stun_binding_success(3)[..]);
    assert_eq!((got.local, got.from), (extra, probe_addr));

    // Neither STUN nor the extra sockets made a path or reached quinn.
    assert!(a.socket().paths().is_empty());
    let stats = a.stats();
    assert_eq!((stats.quic_rx, stats.stun_rx), (0, 3), "{stats:?}");
    Ok(())
}

#[tokio::test]
async fn a_live_connection_moves_to_a_path_from_an_extra_socket() -> anyhow::Result<()> {
    let (a, _a_stun) = endpoint()?;
    let (b, _b_stun) = endpoint()?;
    let a_addr = loopback_addr(&a)?;
    let (accepted, dialed, server) = connect_with_echo(&a, &b).await?;
    assert_eq!(
        echo_round_trip(&dialed, b"from the primary").await?,
        b"from the primary"
    );

    // B moves A's synthetic address to a path from one of its extra sockets.
    let extra = *b.socket().open_extra(2)?.first().context("two ids")?;
    let extra_addr = b.socket().extra_local_addr(extra).context("extra open")?;
    let moved = Path::Direct {
        remote: a_addr,
        local: extra,
    };
    assert!(b.socket().paths().set_path(&dialed.synthetic_addr, moved));
    let b_quic_tx = b.stats().quic_tx;

    // Data sent after the move arrives, and the answers come back on the extra socket.
    for round in 0..3u8 {
        let payload = vec![round; 50_000];
        assert_eq!(echo_round_trip(&dialed, &payload).await?, payload);
    }
    assert!(dialed.connection.close_reason().is_none());
    assert_eq!(dialed.connection.remote_address(), dialed.synthetic_addr);
    let b_stats = b.stats();
    assert!(b_stats.quic_tx > b_quic_tx, "{b_stats:?}");
    assert_eq!(b_stats.unroutable_tx, 0, "{b_stats:?}");
    // B's table saw the answers on the extra socket's path of the same entry.
    let (resolved, heard) = {
        let paths = b.socket().paths();
        let heard = paths.last_rx_on(&dialed.synthetic_addr, moved);
        (paths.resolve(&dialed.synthetic_addr), heard)
    };
    assert_eq!(resolved, Some(moved));
    assert!(heard.is_some());

    // A learned the new source and its connection moved there.
    let a_view = accepted.connection.remote_address();
    assert_ne!(a_view, accepted.synthetic_addr, "A's connection migrated");
    assert_eq!(
        a.socket().paths().resolve(&a_view),
        Some(Path::direct(extra_addr))
    );

    dialed.connection.close(0u32.into(), b"done");
    timeout(STEP, server).await???;
    Ok(())
}

/// As the engine moves a connection onto a birthday pair: both tables name the pair (B's
/// side from its extra socket, A's side to that socket's address), so quinn sees no new
/// address on either side. B's endpoint is idle on its primary socket once it moved, so
/// this stalls while opening an extra socket does not wake the pending receive (see
/// [`an_extra_socket_opened_on_an_idle_endpoint_is_heard`]; one datagram on B's primary
/// socket after the move makes it pass).
#[tokio::test]
async fn both_sides_move_a_live_connection_onto_an_extra_socket_pair() -> anyhow::Result<()> {
    let (a, _a_stun) = endpoint()?;
    let (b, _b_stun) = endpoint()?;
    let a_addr = loopback_addr(&a)?;
    let (accepted, dialed, server) = connect_with_echo(&a, &b).await?;
    assert_eq!(echo_round_trip(&dialed, b"before").await?, b"before");

    let extra = *b.socket().open_extra(1)?.first().context("one id")?;
    let extra_addr = b.socket().extra_local_addr(extra).context("extra open")?;
    let b_path = Path::Direct {
        remote: a_addr,
        local: extra,
    };
    assert!(b.socket().paths().set_path(&dialed.synthetic_addr, b_path));
    assert!(a
        .socket()
        .paths()
        .set_path(&accepted.synthetic_addr, Path::direct(extra_addr)));
    let (a_rx, b_rx) = (a.stats().quic_rx, b.stats().quic_rx);

    for round in 0..3u8 {
        let payload = vec![round; 50_000];
        assert_eq!(echo_round_trip(&dialed, &payload).await?, payload);
    }
    // Nobody migrated: both connections keep their synthetic addresses, and the datagrams
    // after the move came over the pair.
    assert_eq!(
        accepted.connection.remote_address(),
        accepted.synthetic_addr
    );
    assert_eq!(dialed.connection.remote_address(), dialed.synthetic_addr);
    assert!(a.stats().quic_rx > a_rx && b.stats().quic_rx > b_rx);
    assert!(b
        .socket()
        .paths()
        .last_rx_on(&dialed.synthetic_addr, b_path)
        .is_some());
    assert!(a
        .socket()
        .paths()
        .last_rx_on(&accepted.synthetic_addr, Path::direct(extra_addr))
        .is_some());
    assert_eq!(a.stats().unroutable_tx + b.stats().unroutable_tx, 0);

    dialed.connection.close(0u32.into(), b"done");
    timeout(STEP, server).await???;
    Ok(())
}

/// An endpoint whose receive side already waits (a running node) opens an extra socket:
/// the next datagram on it must be read without any traffic on the primary socket. Today
/// nothing wakes quinn's receive task when a socket is added, so the datagram waits for
/// the primary socket's next datagram (or forever on an idle node).
#[tokio::test]
async fn an_extra_socket_opened_on_an_idle_endpoint_is_heard() -> anyhow::Result<()> {
    let (a, mut a_stun) = endpoint()?;
    let a_addr = loopback_addr(&a)?;
    let probe = plain_socket()?;
    let probe_addr = probe.local_addr()?;
    // The endpoint has received once and waits again.
    probe.send_to(&stun_binding_request(1), a_addr)?;
    let got = timeout(STEP, a_stun.recv())
        .await?
        .context("queue closed")?;
    assert_eq!((got.local, got.from), (LocalSocket::PRIMARY, probe_addr));
    tokio::time::sleep(Duration::from_millis(50)).await;

    let extra = *a.socket().open_extra(1)?.first().context("one id")?;
    let extra_addr = a.socket().extra_local_addr(extra).context("extra open")?;
    probe.send_to(&stun_binding_request(2), extra_addr)?;
    let got = timeout(Duration::from_secs(2), a_stun.recv())
        .await
        .context("the extra socket's datagram was never read")?
        .context("queue closed")?;
    assert_eq!((got.local, got.from), (extra, probe_addr));
    Ok(())
}

#[tokio::test]
async fn a_closed_extra_socket_is_unknown() -> anyhow::Result<()> {
    let (a, _a_stun) = endpoint()?;
    let ids = a.socket().open_extra(4)?;
    assert_eq!(a.socket().extra_count(), 4);
    let (closed, kept) = ids.split_at(3);
    let probe = plain_socket()?;
    let probe_addr = probe.local_addr()?;
    let closed_addr = a.socket().extra_local_addr(closed[0]).context("open")?;

    a.socket().close_extra(closed);
    // Closing an unknown id or the primary does nothing.
    a.socket()
        .close_extra(&[LocalSocket(60_000), LocalSocket::PRIMARY]);
    assert_eq!(a.socket().extra_count(), 1);
    for id in closed {
        assert_eq!(a.socket().extra_local_addr(*id), None);
        let sent = a
            .socket()
            .send_stun_from(*id, StunOwner::Default, probe_addr, b"\x00\x01")
            .await;
        assert!(
            matches!(sent, Err(RawSendError::NoSuchSocket(s)) if s == *id),
            "{sent:?}"
        );
    }
    // The port was released.
    let rebound = std::net::UdpSocket::bind(closed_addr)?;
    drop(rebound);

    // The one left still works, and the primary socket is untouched.
    let kept = kept[0];
    a.socket()
        .send_stun_from(
            kept,
            StunOwner::Default,
            probe_addr,
            &stun_binding_request(5),
        )
        .await?;
    let (_, from) = recv_plain(&probe).await?;
    assert_eq!(Some(from), a.socket().extra_local_addr(kept));
    a.send_stun(probe_addr, &stun_binding_request(6)).await?;
    let (_, from) = recv_plain(&probe).await?;
    assert_eq!(from, loopback_addr(&a)?);

    // New ids are fresh, never a closed one's.
    let fresh = a.socket().open_extra(2)?;
    assert!(fresh.iter().all(|id| !ids.contains(id)), "{fresh:?}");
    a.socket().close_extra(&fresh);
    a.socket().close_extra(&[kept]);
    assert_eq!(a.socket().extra_count(), 0);
    Ok(())
}
