//! Loopback integration tests of routing through a member ([`mesh::route`]): three real
//! endpoints on 127.0.0.1, the ends A and B each connected to the router R only. A QUIC
//! connection between A and B runs through R once both ends asked R for the route; R
//! reads nothing but the routing header (the inner connection's keys are A's and B's),
//! and without both asks R forwards nothing.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use mesh::identity::{Identity, PeerId};
use mesh::route::{Asked, ForwardConfig, Refused, RouteError, RouteHub};
use mesh::socket::{Endpoint, EndpointOptions, Path, PeerConnection, RouteId};
use tokio::time::timeout;

const STEP: Duration = Duration::from_secs(10);

struct Node {
    endpoint: Arc<Endpoint>,
    hub: RouteHub,
}

impl Node {
    fn start() -> Result<Self> {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        let identity = Arc::new(Identity::generate()?);
        let (endpoint, _stun) =
            Endpoint::bind("127.0.0.1:0".parse()?, identity, EndpointOptions::default())?;
        let endpoint = Arc::new(endpoint);
        let hub = RouteHub::start(endpoint.socket().clone(), ForwardConfig::default());
        Ok(Self { endpoint, hub })
    }

    fn id(&self) -> PeerId {
        self.endpoint.peer_id()
    }

    fn addr(&self) -> Result<SocketAddr> {
        Ok(SocketAddr::from((
            [127, 0, 0, 1],
            self.endpoint.local_addr()?.port(),
        )))
    }
}

/// Connects `end` to `router` (the outer link), registered and pumped on both hubs.
async fn link(end: &Node, router: &Node) -> Result<()> {
    let accept = async {
        let c = router.endpoint.accept().await.context("router closed")??;
        anyhow::Ok(c)
    };
    let (dialed, accepted) =
        tokio::join!(end.endpoint.connect(router.id(), router.addr()?), accept);
    let (dialed, accepted) = (dialed?, accepted?);
    end.hub.add_link(router.id(), dialed.connection.clone());
    end.hub.pump(router.id(), dialed.connection);
    router.hub.add_link(end.id(), accepted.connection.clone());
    router.hub.pump(end.id(), accepted.connection);
    Ok(())
}

/// Opens `end`'s side of a route to `target` through `via`, waiting for the link's MTU
/// discovery to make room for a routed 1200-byte datagram.
async fn open_end(end: &Node, via: PeerId, target: PeerId) -> Result<RouteId> {
    let deadline = tokio::time::Instant::now() + STEP;
    loop {
        match end.hub.open_end(via, target) {
            Ok(id) => return Ok(id),
            Err(RouteError::DatagramTooSmall { have, need })
                if tokio::time::Instant::now() < deadline =>
            {
                tracing::debug!(have, need, "waiting for the link's MTU");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Three nodes, A and B linked to R only.
async fn triangle() -> Result<(Node, Node, Node)> {
    let (a, r, b) = (Node::start()?, Node::start()?, Node::start()?);
    link(&a, &r).await?;
    link(&b, &r).await?;
    r.hub.set_members([a.id(), b.id(), r.id()]);
    Ok((a, r, b))
}

/// A dials B over its route; B accepts.
async fn connect_routed(
    a: &Node,
    b: &Node,
    route: RouteId,
) -> Result<(PeerConnection, PeerConnection)> {
    let path = Path::Router { route };
    let accept = async {
        let c = b.endpoint.accept().await.context("closed")??;
        anyhow::Ok(c)
    };
    let (dialed, accepted) = timeout(STEP, async {
        tokio::join!(a.endpoint.connect_via(b.id(), path, None), accept)
    })
    .await
    .context("routed handshake timed out")?;
    Ok((dialed?, accepted?))
}

#[tokio::test]
async fn two_ends_talk_through_a_router_once_both_asked() -> Result<()> {
    let (a, r, b) = triangle().await?;
    assert_eq!(r.hub.ask(a.id(), b.id()), Ok(Asked::Waiting));
    assert_eq!(r.hub.ask(b.id(), a.id()), Ok(Asked::Open));
    let a_route = open_end(&a, r.id(), b.id()).await?;
    let _b_route = open_end(&b, r.id(), a.id()).await?;
    let (dialed, accepted) = connect_routed(&a, &b, a_route).await?;
    // The inner handshake authenticated the ends themselves, not the router.
    assert_eq!(dialed.peer_id, b.id());
    assert_eq!(accepted.peer_id, a.id());
    // A stream both ways and a datagram.
    let payload: Vec<u8> = (0..256 * 1024).map(|i| (i % 251) as u8).collect();
    let (mut send, mut recv) = dialed.connection.open_bi().await?;
    send.write_all(&payload).await?;
    send.finish()?;
    let (mut back_send, mut back_recv) = timeout(STEP, accepted.connection.accept_bi()).await??;
    let got = timeout(STEP, back_recv.read_to_end(payload.len() + 1)).await??;
    assert_eq!(got, payload, "every byte through the router");
    back_send.write_all(b"pong").await?;
    back_send.finish()?;
    assert_eq!(timeout(STEP, recv.read_to_end(16)).await??, b"pong");
    accepted
        .connection
        .send_datagram(bytes::Bytes::from_static(b"unreliable"))?;
    let datagram = timeout(STEP, dialed.connection.read_datagram()).await??;
    assert_eq!(&datagram[..], b"unreliable");
    // The packets went through the socket's routed plane and the router's forwarder.
    let stats = r.hub.stats().forward;
    assert!(stats.forwarded > 200, "router forwarded {stats:?}");
    assert!(a.endpoint.stats().routed_tx > 0 && b.endpoint.stats().routed_rx > 0);
    // Nothing lost but the inner connection's path MTU probes (larger than a route takes).
    let hub = a.hub.stats();
    assert_eq!(hub.dropped, 0, "{hub:?}");
    assert!(hub.too_large <= 10, "{hub:?}");
    Ok(())
}

#[tokio::test]
async fn the_router_forwards_nothing_unless_both_ends_asked() -> Result<()> {
    let (a, r, b) = triangle().await?;
    // Only A asked.
    assert_eq!(r.hub.ask(a.id(), b.id()), Ok(Asked::Waiting));
    let a_route = open_end(&a, r.id(), b.id()).await?;
    open_end(&b, r.id(), a.id()).await?;
    let path = Path::Router { route: a_route };
    let dial = a.endpoint.connect_via(b.id(), path, None);
    assert!(
        timeout(Duration::from_secs(2), dial).await.is_err(),
        "no handshake through a route the other end did not ask for"
    );
    let stats = r.hub.stats().forward;
    assert_eq!(stats.forwarded, 0);
    assert!(stats.no_route > 0, "{stats:?}");
    // Strangers are refused outright.
    let stranger = PeerId::from_bytes([9; 32]);
    assert_eq!(
        r.hub.ask(a.id(), stranger),
        Err(Refused::NotMember(stranger))
    );
    // An end without a link to the named router gets a clear error.
    assert_eq!(
        a.hub.open_end(stranger, b.id()),
        Err(RouteError::NoLink(stranger))
    );
    Ok(())
}
