//! Learning a peer's port on the relay. A node that holds the relay binds its channel to
//! the peer's reflexive address; a peer behind a symmetric NAT (endpoint-dependent
//! mapping, RFC 4787) reaches the relayed address from another port, and the relay
//! delivers those datagrams as Data indications (RFC 8656 section 11.6: the peer's IP has
//! a permission, the port has no channel), which QUIC cannot use.
//!
//! Steps:
//! 1. The punch engine passes every Data indication from a relay server that nothing else
//!    claimed to this task as a [`Stray`] (bounded queue; dropped when full). The peer
//!    without a relay sends a few hellos to the relayed address as soon as it plans that
//!    path ([`hello`]), so the first one comes before QUIC needs the path.
//! 2. A datagram from an address on this node's own relayed IP comes from another
//!    allocation on the same relay (a peer that relays too), never from a NAT: ignored.
//!    The connections whose channel on that server is bound to the same IP at another
//!    port are looked up ([`super::route::PathWatches::rebind_candidates`]); with exactly
//!    one, a channel is bound to the new address (one try per address per
//!    [`RETRY_AFTER`]; at most [`MAX_TRIED`] addresses remembered).
//! 3. The new channel becomes the connection's relayed path: the path table's entry gets
//!    it (active if the old channel was), the watch's relay is replaced, and the
//!    connection's core replaces its relay path ([`ConnCmd::Relay`]). QUIC retransmits
//!    what the old channel lost.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::conn_slots::ConnCmd;
use super::race::RaceCtx;
use super::supervise::relay_kind;
use crate::identity::PeerId;
use crate::socket::{Endpoint, Path};

/// Bound of the queue of stray Data indications.
pub(crate) const STRAYS: usize = 64;
/// Least time between two binds to the same address.
pub const RETRY_AFTER: Duration = Duration::from_secs(1);
/// Most addresses remembered as tried (the table is cleared when full).
pub const MAX_TRIED: usize = 1024;
/// Hellos a node without a relay sends to a peer's relayed address.
const HELLOS: u32 = 3;
/// Time between hellos.
const HELLO_GAP: Duration = Duration::from_millis(50);

/// A Data indication from `server` carrying a datagram of `peer` (step 1).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Stray {
    pub server: SocketAddr,
    pub peer: SocketAddr,
}

/// Step 1, the other end: opens this node's NAT mapping toward the peer's relayed
/// address (a STUN Binding indication needs no answer), so the peer's relay sees the
/// port this node's datagrams come from.
pub(crate) async fn hello(endpoint: &Endpoint, relayed: SocketAddr) {
    let indication = crate::turn::msg::binding_indication();
    for i in 0..HELLOS {
        if i > 0 {
            tokio::time::sleep(HELLO_GAP).await;
        }
        if let Err(e) = endpoint.socket().send_stun(relayed, &indication).await {
            tracing::debug!(%relayed, error = %e, "hello to the relayed address not sent");
        }
    }
}

/// Runs steps 2 and 3 until the engine goes away.
pub(crate) async fn run(mut strays: mpsc::Receiver<Stray>, ctx: RaceCtx) {
    let mut tried: HashMap<SocketAddr, Instant> = HashMap::new();
    while let Some(stray) = strays.recv().await {
        let now = Instant::now();
        if tried
            .get(&stray.peer)
            .is_some_and(|at| now.saturating_duration_since(*at) < RETRY_AFTER)
        {
            continue;
        }
        // Another allocation on the same relay (a peer relaying too) is not a symmetric
        // NAT's new port: relayed addresses share the relay's IP, ours included.
        let own = super::candidates::registered_relay(&ctx.control);
        if own.is_some_and(|own| own.ip() == stray.peer.ip()) {
            tracing::trace!(peer = %stray.peer, "Data indication from another relayed address");
            continue;
        }
        let candidates = ctx.watches.rebind_candidates(stray.server, stray.peer);
        let [(peer, old, bound)] = candidates[..] else {
            tracing::trace!(peer = %stray.peer, matches = candidates.len(), "stray Data indication");
            continue;
        };
        if tried.len() >= MAX_TRIED {
            tried.clear();
        }
        tried.insert(stray.peer, now);
        let Some(binder) = &ctx.binder else { continue };
        match binder.bind(stray.peer).await {
            Ok(new) if new.remote() == stray.server => {
                tracing::info!(peer = %peer.short(), %bound, learned = %stray.peer, "relay channel moved to the peer's port");
                switch(&ctx, peer, old, new, stray.peer).await;
            }
            Ok(other) => tracing::debug!(?other, "channel bound on another relay"),
            Err(e) => {
                tracing::debug!(error = %e, learned = %stray.peer, "channel to the learned port failed")
            }
        }
    }
}

/// Step 3.
async fn switch(ctx: &RaceCtx, peer: PeerId, old: Path, new: Path, remote: SocketAddr) {
    {
        let mut paths = ctx.endpoint.socket().paths();
        if let Some(synthetic) = paths.synthetic_for_peer(&peer) {
            paths.add_path(&synthetic, new);
            if paths.resolve(&synthetic) == Some(old) {
                paths.set_path(&synthetic, new);
            }
        }
    }
    ctx.watches.set_relay(peer, new, remote);
    if let Some(active) = ctx.watches.current(peer) {
        if active.kind == super::route::PathType::Relay {
            let moved = super::route::ActivePath { remote, ..active };
            ctx.watches.update(peer, moved);
        }
    }
    let kind = relay_kind(new);
    ctx.engine.conn(ConnCmd::Relay { peer, kind }).await;
}
