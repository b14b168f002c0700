//! QUIC between two mesh endpoints over relayed paths through the real `proxy` (TURN) on
//! loopback, and path switches under one live connection.
//!
//! Flow: start the proxy; endpoint A allocates a relay on it with the workspace's TURN
//! client, driven over A's own socket (so the relay sees the socket QUIC uses), and binds a
//! channel to B's address. A's path to B is `Path::Relay`; B's path to A is A's relayed
//! address (B never learns A's own address: the relay-only case). A dials B over it. Then a
//! stream transfer runs while both move the connection to the direct path and back to the
//! relay: every byte arrives once and in order.

mod common;

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use common::relay::{start_proxy, transfer, Side};
use mesh::socket::Path;

const STEP: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_over_the_relay_then_direct_and_back_under_one_connection() -> Result<()> {
    let (_proxy, proxy_addr) = start_proxy()?;
    let mut a = Side::start(proxy_addr, "alice").await?;
    let b = Side::start(proxy_addr, "bob").await?;
    a.bind_channel(0x4000, b.direct()?).await?;
    let relay_a = Path::Relay {
        server: proxy_addr,
        channel: 0x4000,
    };
    // B reaches A only at A's relayed address.
    let relay_b = Path::direct(a.relayed);
    let a_id = a.endpoint.peer_id();
    let b_id = b.endpoint.peer_id();
    let synthetic_a = b
        .endpoint
        .socket()
        .paths()
        .upsert_peer(Instant::now(), a_id, relay_b)?;
    let (accepted, dialed) = tokio::join!(
        async {
            let accepted = tokio::time::timeout(STEP, b.endpoint.accept()).await?;
            anyhow::Ok(accepted.context("endpoint closed")??)
        },
        tokio::time::timeout(STEP, a.endpoint.connect_via(b_id, relay_a, None))
    );
    let stats = (a.endpoint.stats(), b.endpoint.stats());
    let (accepted, dialed) = (
        accepted.with_context(|| format!("accept; stats {stats:?}"))?,
        dialed.with_context(|| format!("dial; stats {stats:?}"))??,
    );
    assert_eq!(accepted.peer_id, a_id);
    assert_eq!(accepted.synthetic_addr, synthetic_a);
    let synthetic_b = dialed.synthetic_addr;

    // 1. All on the relay.
    transfer(&dialed.connection, &accepted.connection, 1 << 20, async {
        Ok(())
    })
    .await?;
    transfer(&accepted.connection, &dialed.connection, 1 << 20, async {
        Ok(())
    })
    .await?;
    let (sa, sb) = (a.endpoint.stats(), b.endpoint.stats());
    assert!(sa.relayed_tx > 0 && sa.relayed_rx > 0, "{sa:?}");
    assert_eq!(sa.quic_tx, 0, "nothing went direct: {sa:?}");
    assert_eq!(sa.relayed_dropped, 0, "{sa:?}");
    // B saw plain QUIC from A's relayed address: nothing to unwrap on its side.
    assert!(sb.quic_rx > 0 && sb.relayed_rx == 0, "{sb:?}");

    // 2. Relay -> direct -> relay while 8 MiB flow: the same connection, every byte once.
    let (direct_a, direct_b) = (a.direct()?, b.direct()?);
    let switching = async {
        tokio::time::sleep(Duration::from_millis(30)).await;
        a.endpoint
            .socket()
            .paths()
            .set_path(&synthetic_b, Path::direct(direct_b));
        b.endpoint
            .socket()
            .paths()
            .set_path(&synthetic_a, Path::direct(direct_a));
        tokio::time::sleep(Duration::from_millis(60)).await;
        a.endpoint.socket().paths().set_path(&synthetic_b, relay_a);
        b.endpoint.socket().paths().set_path(&synthetic_a, relay_b);
        anyhow::Ok(())
    };
    let before = (a.endpoint.stats(), b.endpoint.stats());
    transfer(&dialed.connection, &accepted.connection, 8 << 20, switching).await?;
    let after = (a.endpoint.stats(), b.endpoint.stats());
    assert!(
        after.0.quic_tx > before.0.quic_tx,
        "A sent direct: {:?}",
        after.0
    );
    assert!(after.0.relayed_tx > before.0.relayed_tx, "A sent relayed");
    assert!(after.0.relayed_rx > before.0.relayed_rx, "A got relayed");
    assert_eq!(after.0.relayed_dropped, 0, "{:?}", after.0);
    // Both kept one path table entry each: the switch did not look like a new peer.
    assert_eq!(a.endpoint.socket().paths().len(), 1);
    assert_eq!(b.endpoint.socket().paths().len(), 1);
    assert_eq!(
        b.endpoint.socket().paths().paths_of(&synthetic_a),
        vec![relay_b, Path::direct(direct_a)]
    );
    Ok(())
}
