//! Relay first, direct when it validates: the dialing and the accepting side of one
//! introduction run probing and the relayed path ([`super::route`]) in parallel.
//!
//! Dialer ([`dial`]):
//! 1. Decide the [`RelayPlan`] from the `Go` and start probing (an engine attempt) and the
//!    relay setup (a channel bind on this node's allocation, or nothing to set up when the
//!    peer's relayed address is the path) at once.
//! 2. The first path ready carries the QUIC handshake: a nominated direct pair, or the
//!    relayed path. A failed relay setup leaves probing alone; failed probing waits for
//!    the relay, and fails the dial only when both have failed.
//! 3. On the relay, the attempt goes on in the background: when it nominates a pair, the
//!    connection moves to it (the relayed path stays a standby, so datagrams still in
//!    flight on it arrive) and the connection's [`ActivePath`] watch says so. On a direct
//!    path first, a relayed path ready later is added as a standby.
//!
//! Acceptor ([`accept`], for every `Go` of a request this node accepted):
//! 1. The same plan, probing and relay setup. When the relayed path is ready before a
//!    direct pair, the dialer's entry in the path table is created on it (pinned to the
//!    dialer's key, with the dialer's direct candidates as standbys), so the dialer's
//!    handshake arriving through the relay (or from a known candidate) reaches quinn as
//!    one peer.
//! 2. A pair nominated later becomes the entry's active path, as on the dialer's side.
//!    Without a relayed path nothing changes: the dialer's handshake is learned from its
//!    source as before.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::control::Control;
use super::engine::{AttemptOutcome, Engine};
use super::error::DialError;
use super::rebind;
use super::relays::{RelayBinder, RelayError};
use super::route::{ActivePath, PathWatches, RelayPlan};
use super::supervise;
use crate::coord::{CandidateKind, Go};
use crate::identity::PeerId;
use crate::socket::{Endpoint, LocalSocket, Path, PeerConnection};

/// What a node's connections need to run the race.
#[derive(Debug, Clone)]
pub(crate) struct RaceCtx {
    pub endpoint: Arc<Endpoint>,
    pub engine: Engine,
    /// For the dialer's later probing rounds.
    pub control: Control,
    /// `None` when relays are turned off.
    pub binder: Option<RelayBinder>,
    pub watches: Arc<PathWatches>,
    /// Relay-only: no probing; the relayed path is the only one.
    pub relay_only: bool,
    /// Told after each introduction: the predicted ports are observed again
    /// ([`super::predicted`]).
    pub predict_again: Arc<tokio::sync::Notify>,
    /// Routes through other members ([`crate::route`]).
    pub routes: crate::route::RouteHub,
}

/// A dialed connection and the path it runs on.
pub(crate) struct Dialed {
    pub peer: PeerConnection,
    pub path: tokio::sync::watch::Receiver<ActivePath>,
}

/// Sets up the relayed path of `plan` (step 1).
async fn relay_path(binder: Option<RelayBinder>, plan: RelayPlan) -> Result<Path, RelayError> {
    relay_path_timed(binder, plan).await.map(|(path, _)| path)
}

/// [`relay_path`], with an estimate of the path's RTT when a bind measured one: twice
/// the bind's round trip to the relay (this end to the relay, the relay to the peer).
async fn relay_path_timed(
    binder: Option<RelayBinder>,
    plan: RelayPlan,
) -> Result<(Path, Option<Duration>), RelayError> {
    match plan {
        RelayPlan::None => Err(RelayError::NoRelay),
        RelayPlan::OwnChannel { peer } => match binder {
            Some(b) => {
                let started = Instant::now();
                let path = b.bind(peer).await?;
                Ok((path, Some(started.elapsed().saturating_mul(2))))
            }
            None => Err(RelayError::NoRelay),
        },
        RelayPlan::PeerRelayed { relayed } => Ok((Path::direct(relayed), None)),
    }
}

/// Without a relay of our own, the peer's relay must see the port our datagrams come
/// from (a symmetric NAT maps another one than the peer bound its channel to): a few
/// hellos to its relayed address, in the background ([`super::rebind`]).
fn send_hellos(ctx: &RaceCtx, plan: RelayPlan) {
    if let RelayPlan::PeerRelayed { relayed } = plan {
        let endpoint = ctx.endpoint.clone();
        tokio::spawn(async move { rebind::hello(&endpoint, relayed).await });
    }
}

/// Remembers that the pair to `remote` was found on one of this node's predicted ports:
/// the peer saw this node at an address it registered as predicted (`how: predicted` on
/// this side too).
fn note_predicted(ctx: &RaceCtx, peer: PeerId, remote: SocketAddr, seen_as: Option<SocketAddr>) {
    let Some(seen) = seen_as else { return };
    let registration = ctx.control.registration();
    let predicted = registration
        .borrow()
        .candidates
        .iter()
        .any(|c| c.kind == CandidateKind::ServerReflexive && c.addr == seen);
    if predicted {
        ctx.watches.set_reached_on_predicted(peer, remote);
    }
}

fn relayed(plan: RelayPlan, path: Path) -> ActivePath {
    ActivePath::relay(plan.remote().unwrap_or_else(|| path.remote()))
}

fn direct(remote: SocketAddr) -> ActivePath {
    ActivePath::direct(remote)
}

/// The peer's candidates that are its own addresses (not relayed).
fn direct_candidates(go: &Go) -> Vec<SocketAddr> {
    go.peer_candidates
        .iter()
        .filter(|c| c.kind != CandidateKind::Relay)
        .map(|c| c.addr)
        .collect()
}

/// Pins `peer`'s entry in the path table on the relayed `path`, with its direct
/// candidates as standbys, so whatever source it answers from reaches the one connection.
fn standby_candidates(endpoint: &Endpoint, peer: PeerId, path: Path, candidates: &[SocketAddr]) {
    let mut paths = endpoint.socket().paths();
    match paths.upsert_peer(Instant::now(), peer, path) {
        Ok(synthetic) => {
            for c in candidates {
                paths.add_path(&synthetic, Path::direct(*c));
            }
        }
        Err(e) => tracing::warn!(error = %e, "no path table entry for the peer"),
    }
}

/// The QUIC handshake with `target` on the relayed `path`; the connection's watch starts
/// there and knows the relayed path.
async fn connect_relayed(
    ctx: &RaceCtx,
    target: PeerId,
    plan: RelayPlan,
    path: Path,
    rtt: Option<Duration>,
) -> Result<Dialed, DialError> {
    // Watched before the handshake: a channel bound to the wrong port of the peer is
    // moved while the handshake retransmits ([`super::rebind`]).
    let active = relayed(plan, path);
    let watch = ctx.watches.set(target, active);
    ctx.watches.set_relay(target, path, active.remote);
    let peer = ctx
        .endpoint
        .connect_via(target, path, rtt)
        .await
        .map_err(DialError::Handshake)?;
    Ok(Dialed { peer, path: watch })
}

/// Dials `target` after its `Go` (see the module docs).
pub(crate) async fn dial(
    ctx: &RaceCtx,
    target: PeerId,
    own_relayed: Option<SocketAddr>,
    go: Go,
    received: Instant,
    server_rtt: Duration,
) -> Result<Dialed, DialError> {
    let plan = if ctx.binder.is_some() {
        RelayPlan::decide(own_relayed, &go.peer_candidates)
    } else {
        RelayPlan::decide(None, &go.peer_candidates)
    };
    send_hellos(ctx, plan);
    ctx.predict_again.notify_one();
    ctx.watches.set_offered(target, &go.peer_candidates);
    if ctx.relay_only {
        let no_relay = |detail: String| DialError::NoRelayedPath {
            peer: target,
            detail,
        };
        let (path, rtt) = relay_path_timed(ctx.binder.clone(), plan)
            .await
            .map_err(|e| no_relay(format!("{e} (plan {plan:?})")))?;
        return connect_relayed(ctx, target, plan, path, rtt).await;
    }
    let candidates = direct_candidates(&go);
    let engine = ctx.engine.clone();
    let mut attempt = tokio::spawn(async move { engine.attempt(go, received, server_rtt).await });
    let mut relay = Box::pin(relay_path_timed(ctx.binder.clone(), plan));
    let mut relay_failed = plan == RelayPlan::None;
    enum First {
        /// A nominated pair (its local socket: a birthday pair's may be an extra one).
        Direct(SocketAddr, LocalSocket, Duration),
        /// The relayed path, its RTT estimate, and whether probing goes on.
        Relay(Path, Option<Duration>, bool),
    }
    let first = loop {
        tokio::select! {
            outcome = &mut attempt => {
                let outcome = outcome.unwrap_or(AttemptOutcome::Closed);
                if let AttemptOutcome::Nominated { remote, rtt, seen_as, local } = outcome {
                    note_predicted(ctx, target, remote, seen_as);
                    break First::Direct(remote, local, rtt);
                }
                let relayed = if relay_failed { None } else { (&mut relay).await.ok() };
                match (relayed, outcome) {
                    (Some((path, rtt)), _) => break First::Relay(path, rtt, false),
                    (None, AttemptOutcome::NoDirectPath(detail)) => {
                        return Err(DialError::NoDirectPath { peer: target, detail })
                    }
                    (None, AttemptOutcome::Busy(n)) => return Err(DialError::Busy(n)),
                    (None, _) => return Err(DialError::Closed),
                }
            }
            r = &mut relay, if !relay_failed => match r {
                Ok((path, rtt)) => break First::Relay(path, rtt, true),
                Err(e) => {
                    tracing::debug!(error = %e, ?plan, "no relayed path");
                    relay_failed = true;
                }
            },
        }
    };
    match first {
        First::Direct(remote, local, rtt) => {
            let peer = ctx
                .endpoint
                .connect_via(target, Path::Direct { remote, local }, Some(rtt))
                .await
                .map_err(DialError::Handshake)?;
            let path = ctx.watches.set(target, direct(remote));
            let synthetic = peer.synthetic_addr;
            if !relay_failed {
                // The relayed path becomes a standby when it is ready; the connection's
                // task tells its core.
                let ctx = ctx.clone();
                tokio::spawn(async move {
                    let Ok((standby, _)) = relay.await else {
                        return;
                    };
                    ctx.endpoint.socket().paths().add_path(&synthetic, standby);
                    ctx.watches
                        .set_relay(target, standby, relayed(plan, standby).remote);
                });
            }
            supervise::spawn(ctx, &peer, Some(ctx.control.clone()));
            Ok(Dialed { peer, path })
        }
        First::Relay(path, rtt, probing) => {
            tracing::debug!(?path, "QUIC over the relay first");
            // The peer may answer from a direct candidate (its prober nominated a pair
            // first): those sources map to the same entry.
            standby_candidates(&ctx.endpoint, target, path, &candidates);
            // A pair nominated while the handshake runs takes it over: a relayed path
            // that is ready at once (the peer's relayed address) may still be cut.
            let connecting = connect_relayed(ctx, target, plan, path, rtt);
            tokio::pin!(connecting);
            let mut probing_now = probing;
            let Dialed { peer, path: watch } = loop {
                tokio::select! {
                    // The handshake's first poll sets the watch and the path, which a pair
                    // nominated meanwhile then moves.
                    biased;
                    dialed = &mut connecting => break dialed?,
                    outcome = &mut attempt, if probing_now => {
                        probing_now = false;
                        if let Ok(AttemptOutcome::Nominated { remote, seen_as, local, .. }) = outcome {
                            note_predicted(ctx, target, remote, seen_as);
                            let mut paths = ctx.endpoint.socket().paths();
                            if let Some(synthetic) = paths.synthetic_for_peer(&target) {
                                let pair = Path::Direct { remote, local };
                                paths.add_path(&synthetic, pair);
                                paths.set_path(&synthetic, pair);
                                drop(paths);
                                ctx.watches.update(target, direct(remote));
                                tracing::info!(%remote, "handshake moved from the relay to a direct path");
                            }
                        }
                    }
                }
            };
            // The first attempt goes on in the connection's core (if it has not failed
            // yet); then new rounds.
            tracing::debug!(probing, "path core takes over");
            drop(attempt);
            supervise::spawn(ctx, &peer, Some(ctx.control.clone()));
            Ok(Dialed { peer, path: watch })
        }
    }
}

/// Runs the accepting side of one introduction (see the module docs).
pub(crate) async fn accept(
    ctx: RaceCtx,
    own_relayed: Option<SocketAddr>,
    go: Go,
    received: Instant,
    server_rtt: Duration,
) {
    let plan = match &ctx.binder {
        Some(_) => RelayPlan::decide(own_relayed, &go.peer_candidates),
        None => RelayPlan::decide(None, &go.peer_candidates),
    };
    let dialer = go.peer;
    ctx.watches.set_offered(dialer, &go.peer_candidates);
    // A round of a live connection (the dialer probes again from the relay): probe only,
    // in the connection's core (which moves the path); a nominated pair becomes the
    // active path here only for a connection without one.
    if ctx.watches.is_live(dialer) {
        if ctx.relay_only {
            return;
        }
        let outcome = ctx.engine.round(go, received, server_rtt).await;
        let AttemptOutcome::Nominated {
            remote,
            seen_as,
            local,
            ..
        } = outcome
        else {
            return;
        };
        note_predicted(&ctx, dialer, remote, seen_as);
        let mut paths = ctx.endpoint.socket().paths();
        if let Some(synthetic) = paths.synthetic_for_peer(&dialer) {
            if ctx.watches.update(dialer, direct(remote)) {
                paths.set_path(&synthetic, Path::Direct { remote, local });
                tracing::info!(%remote, "moved from the relay to a direct path");
            }
        }
        return;
    }
    // A new introduction is a new connection: its path is reported afresh.
    ctx.watches.forget(dialer);
    send_hellos(&ctx, plan);
    ctx.predict_again.notify_one();
    if plan == RelayPlan::None {
        ctx.engine.spawn_attempt(go, received, server_rtt);
        return;
    }
    let candidates = direct_candidates(&go);
    let (relay_only, engine) = (ctx.relay_only, ctx.engine.clone());
    let attempt = async move {
        if relay_only {
            // No probing: no check ever leaves for the dialer's candidates.
            AttemptOutcome::Closed
        } else {
            engine.attempt(go, received, server_rtt).await
        }
    };
    let relay = relay_path(ctx.binder.clone(), plan);
    tokio::pin!(attempt, relay);
    let (mut attempt_done, mut relay_done) = (false, false);
    let mut nominated: Option<Path> = None;
    let socket = ctx.endpoint.socket().clone();
    while !(attempt_done && relay_done) {
        tokio::select! {
            outcome = &mut attempt, if !attempt_done => {
                attempt_done = true;
                let AttemptOutcome::Nominated { remote, seen_as, local, .. } = outcome else { continue };
                note_predicted(&ctx, dialer, remote, seen_as);
                let pair = Path::Direct { remote, local };
                nominated = Some(pair);
                // Only an entry this task made on the relay moves; otherwise the
                // dialer's handshake is learned from its source as usual.
                let mut paths = socket.paths();
                if let Some(synthetic) = paths.synthetic_for_peer(&dialer) {
                    if ctx.watches.update(dialer, direct(remote)) {
                        paths.set_path(&synthetic, pair);
                        tracing::info!(%remote, "moved from the relay to a direct path");
                    }
                }
            }
            r = &mut relay, if !relay_done => {
                relay_done = true;
                let Ok(path) = r else { continue };
                let mut paths = socket.paths();
                if let Some(pair) = nominated {
                    // The dialer's entry is pinned to its key on the nominated pair (the
                    // entry learned from its handshake is adopted, or made for it), so
                    // the relay is its standby whether or not the handshake is done.
                    let pinned = paths.upsert_peer(Instant::now(), dialer, pair);
                    if let Ok(synthetic) = pinned {
                        paths.add_path(&synthetic, path);
                        ctx.watches.get_or_set(dialer, direct(pair.remote()));
                        ctx.watches
                            .set_relay(dialer, path, relayed(plan, path).remote);
                    }
                    continue;
                }
                drop(paths);
                standby_candidates(&ctx.endpoint, dialer, path, &candidates);
                // `add_path` keeps the active path: the relay.
                ctx.watches.set(dialer, relayed(plan, path));
                ctx.watches
                    .set_relay(dialer, path, relayed(plan, path).remote);
                tracing::debug!(?path, "dialer's entry on the relayed path");
            }
        }
    }
}
