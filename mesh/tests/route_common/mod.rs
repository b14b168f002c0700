//! Shared by the routing tests and the routed-path bench: three endpoints on 127.0.0.1,
//! the ends A and B each linked to the router R only (outer QUIC connections whose
//! datagrams the hubs pump), and a routed QUIC connection between A and B.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use mesh::identity::{Identity, PeerId};
use mesh::route::{ForwardConfig, RouteError, RouteHub};
use mesh::socket::{Endpoint, EndpointOptions, Path, PeerConnection, RouteId};
use tokio::time::timeout;

/// Longest wait of one step.
pub const STEP: Duration = Duration::from_secs(10);

/// One endpoint with its route hub.
pub struct Node {
    /// The endpoint.
    pub endpoint: Arc<Endpoint>,
    /// Its hub.
    pub hub: RouteHub,
}

impl Node {
    /// Binds on 127.0.0.1 with a hub forwarding within `config`.
    pub fn start(config: ForwardConfig) -> Result<Self> {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        let identity = Arc::new(Identity::generate()?);
        let (endpoint, _stun) =
            Endpoint::bind("127.0.0.1:0".parse()?, identity, EndpointOptions::default())?;
        let endpoint = Arc::new(endpoint);
        let hub = RouteHub::start(endpoint.socket().clone(), config);
        Ok(Self { endpoint, hub })
    }

    /// Its peer id.
    pub fn id(&self) -> PeerId {
        self.endpoint.peer_id()
    }

    /// Its loopback address.
    pub fn addr(&self) -> Result<SocketAddr> {
        Ok(SocketAddr::from((
            [127, 0, 0, 1],
            self.endpoint.local_addr()?.port(),
        )))
    }
}

/// Connects `end` to `router` (the outer link), registered and pumped on both hubs.
pub async fn link(end: &Node, router: &Node) -> Result<()> {
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
pub async fn open_end(end: &Node, via: PeerId, target: PeerId) -> Result<RouteId> {
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
pub async fn triangle(config: ForwardConfig) -> Result<(Node, Node, Node)> {
    let (a, r, b) = (
        Node::start(config.clone())?,
        Node::start(config.clone())?,
        Node::start(config)?,
    );
    link(&a, &r).await?;
    link(&b, &r).await?;
    r.hub.set_members([a.id(), b.id(), r.id()]);
    Ok((a, r, b))
}

/// A dials B over its route; B accepts.
pub async fn connect_routed(
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
