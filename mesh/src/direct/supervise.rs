//! Keeping a live connection on its best path: the driver of the connection's sans-IO path
//! core ([`crate::conn::PathManager`], hosted by the punch engine: see
//! [`super::conn_slots`]). Direct when a pair validates, back to the relay when the direct
//! path dies (RFC 8445 section 9's re-checks, RFC 7675 consent freshness, over the
//! relayed connection's standby path of RFC 8656).
//!
//! One task per connection ([`supervise`]):
//! 1. Hand the connection to the engine ([`ConnCmd::Adopt`]): its role (the dialer
//!    controls), the relayed path if one is up, the direct path QUIC runs on if any. The
//!    core takes over the introduction's round.
//! 2. Act on the core's events:
//!    - `PathChanged`: the path table's entry moves to the new path (same QUIC
//!      connection: the table maps every live path's source to the one synthetic address,
//!      so nothing is lost but what a dead path swallowed, which QUIC retransmits), and
//!      the connection's [`ActivePath`] watch says so.
//!    - `DirectRoundDue` (the dialer, while not on a direct path): ask the punch server for
//!      a new introduction (fresh credentials, both sides probe) and run it in the core
//!      ([`super::engine::Engine::round`]); the acceptor's core gets the same round from
//!      [`super::race::accept`]. The core times rounds every [`RETRY_EARLY`] during the
//!      first [`EARLY_PHASE`] on the relay, then backs off to [`RETRY_MAX`].
//!    - The core sends consent checks on a silent direct path every second and calls it
//!      dead after [`DEAD_AFTER`] of silence, then falls back to the relay.
//! 3. Every [`TICK`], tell the core about a relayed path that came up after step 1.
//! 4. End when the connection closes (the engine then drops the core).

use std::net::SocketAddr;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::conn_slots::{socket_path, Adoption, ConnCmd};
use super::control::Control;
use super::engine::AttemptOutcome;
use super::race::RaceCtx;
use super::route::{ActivePath, PathType};
use crate::conn::{ConnEvent, PathKind};
use crate::identity::PeerId;
use crate::punch::Role;
use crate::socket::{LocalSocket, Path, PeerConnection};

/// How often the task looks for a relayed path that came up late.
pub const TICK: Duration = Duration::from_millis(200);
/// Silence on the active direct path after which it is dead (the core's default).
pub const DEAD_AFTER: Duration = Duration::from_secs(3);
/// Time between probing rounds during the early phase on the relay.
pub const RETRY_EARLY: Duration = Duration::from_secs(2);
/// How long the early phase lasts after each move to the relay.
pub const EARLY_PHASE: Duration = Duration::from_secs(60);
/// Longest time between probing rounds on the relay.
pub const RETRY_MAX: Duration = Duration::from_secs(60);
/// Longest a probing round's introduction may take.
const ROUND_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound of the core's event queue.
const EVENTS: usize = 32;

/// The core's path for a socket path that is relayed (`Path::Direct` to the peer's
/// relayed address, or a channel on our allocation).
pub(crate) fn relay_kind(path: Path) -> PathKind {
    match path {
        Path::Relay { server, channel } => PathKind::Relay { server, channel },
        Path::Router { route } => PathKind::Routed { route },
        other => PathKind::RelayedPeer {
            remote: other.remote(),
        },
    }
}

/// Starts [`supervise`] for a connection `ctx`'s node made or accepted.
pub(crate) fn spawn(ctx: &RaceCtx, peer: &PeerConnection, control: Option<Control>) {
    let (synthetic, connection) = (peer.synthetic_addr, peer.connection.clone());
    tokio::spawn(supervise(
        ctx.clone(),
        peer.peer_id,
        synthetic,
        connection,
        control,
    ));
}

/// Drives one connection's path core until the connection closes (see the module docs).
/// `control` is the dialer's (it asks for rounds); the acceptor passes `None`.
pub(crate) async fn supervise(
    ctx: RaceCtx,
    peer: PeerId,
    synthetic: SocketAddr,
    connection: quinn::Connection,
    control: Option<Control>,
) {
    let (events_tx, mut events) = mpsc::channel(EVENTS);
    let relay = ctx.watches.relay_of(peer);
    // The local socket of the direct path comes from the socket's table: a birthday pair
    // may run on an extra socket.
    let direct = ctx
        .watches
        .current(peer)
        .filter(|a| a.kind == PathType::Direct)
        .map(|a| {
            let local = match ctx.endpoint.socket().paths().resolve(&synthetic) {
                Some(Path::Direct { remote, local }) if remote == a.remote => local,
                _ => LocalSocket::PRIMARY,
            };
            (a.remote, local)
        });
    let role = if control.is_some() {
        Role::Controlling
    } else {
        Role::Controlled
    };
    let adoption = Adoption {
        peer,
        synthetic,
        role,
        relay: relay.map(|(path, _)| relay_kind(path)),
        direct,
        events: events_tx,
    };
    ctx.engine.conn(ConnCmd::Adopt(adoption)).await;
    let mut relay_told = relay.is_some();
    let mut round: Option<JoinHandle<()>> = None;
    loop {
        tokio::select! {
            _ = connection.closed() => break,
            event = events.recv() => match event {
                Some(event) => on_event(&ctx, peer, synthetic, &control, &mut round, event),
                None => break,
            },
            _ = tokio::time::sleep(TICK), if !relay_told => {
                if let Some((path, _)) = ctx.watches.relay_of(peer) {
                    relay_told = true;
                    let kind = relay_kind(path);
                    ctx.engine.conn(ConnCmd::Relay { peer, kind }).await;
                }
            }
        }
    }
    if let Some(r) = round {
        r.abort();
    }
}

/// Step 2.
fn on_event(
    ctx: &RaceCtx,
    peer: PeerId,
    synthetic: SocketAddr,
    control: &Option<Control>,
    round: &mut Option<JoinHandle<()>>,
    event: ConnEvent,
) {
    match event {
        ConnEvent::PathChanged { kind, reason, .. } => {
            let path = socket_path(kind);
            {
                let mut paths = ctx.endpoint.socket().paths();
                paths.add_path(&synthetic, path);
                paths.set_path(&synthetic, path);
            }
            let active = match kind {
                PathKind::Direct { remote, .. } => ActivePath::direct(remote),
                PathKind::Routed { route } => ActivePath::routed(ctx.routes.via(route)),
                _ => ActivePath::relay(
                    ctx.watches
                        .relay_of(peer)
                        .map_or(path.remote(), |(_, remote)| remote),
                ),
            };
            if ctx.watches.update(peer, active) {
                tracing::info!(path = ?active.kind, remote = %active.remote, ?reason, "path changed");
            }
        }
        ConnEvent::DirectRoundDue => {
            let Some(control) = control.clone() else {
                return;
            };
            if round.as_ref().is_some_and(|r| !r.is_finished()) {
                return;
            }
            let (engine, watches) = (ctx.engine.clone(), ctx.watches.clone());
            *round = Some(tokio::spawn(async move {
                let introduce = async {
                    let (go, received) = control.connect(peer).await?;
                    watches.set_offered(peer, &go.peer_candidates);
                    Ok::<_, super::error::DialError>(
                        engine.round(go, received, control.rtt()).await,
                    )
                };
                match tokio::time::timeout(ROUND_TIMEOUT, introduce).await {
                    Ok(Ok(AttemptOutcome::Adopted)) => {}
                    Ok(Ok(other)) => tracing::debug!(?other, "round ran outside the core"),
                    Ok(Err(e)) => tracing::debug!(error = %e, "no probing round"),
                    Err(_) => tracing::debug!("probing round's introduction timed out"),
                }
            }));
        }
        ConnEvent::NoPath => tracing::warn!("no live path left to the peer"),
        ConnEvent::DirectRoundFailed(why) => {
            tracing::debug!(
                tried = why.tried.len(),
                "probing round found no direct path"
            );
        }
    }
}
