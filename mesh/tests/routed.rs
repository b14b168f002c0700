//! Loopback integration tests of routing through a member ([`mesh::route`]): three real
//! endpoints on 127.0.0.1, the ends A and B each connected to the router R only. A QUIC
//! connection between A and B runs through R once both ends asked R for the route; R
//! reads nothing but the routing header (the inner connection's keys are A's and B's),
//! and without both asks R forwards nothing.

#[path = "route_common/mod.rs"]
mod route_common;

use std::time::Duration;

use anyhow::Result;
use mesh::identity::PeerId;
use mesh::route::{Asked, ForwardConfig, Refused, RouteError};
use mesh::socket::Path;
use route_common::{connect_routed, open_end, triangle};
use tokio::time::timeout;

const STEP: Duration = Duration::from_secs(10);

#[tokio::test]
async fn two_ends_talk_through_a_router_once_both_asked() -> Result<()> {
    let (a, r, b) = triangle(ForwardConfig::default()).await?;
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
    let (a, r, b) = triangle(ForwardConfig::default()).await?;
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
