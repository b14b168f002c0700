//! Keeping a live connection on its best path: back to the relay when the direct path dies,
//! and direct again when a new probing round validates a pair (RFC 8445 section 9's
//! re-checks, over the relayed connection's standby path of RFC 8656).
//!
//! One task per connection that has a relayed path ([`supervise`]), every [`TICK`]:
//! 1. **On a direct path**, with the relayed path as a standby: the path table tells when
//!    each path last delivered a datagram ([`crate::socket::PathTable::last_rx_on`]).
//!    - Dead: the direct path has been silent for [`DEAD_AFTER`] while QUIC kept sending
//!      (its datagram count grew since the last receipt): an idle connection is not
//!      called dead, its 10 s keep-alive is the next send that tests the path.
//!    - Followed: the direct path has been silent for [`FOLLOW_AFTER`] while the relay
//!      delivers: the peer moved to the relay already (it saw the failure first), so this
//!      side follows it rather than sending into a path that may be gone one way.
//!
//!    Either way the connection moves to the relay at once (same QUIC connection: the
//!    path table maps both sources to one synthetic address, so nothing is lost but what
//!    the dead path swallowed, which QUIC retransmits) and the watch reports it.
//! 2. **On the relay**, the dialing side asks for a new probing round (a fresh `Connect`
//!    through the punch server: new credentials, both sides probe) every [`RETRY_EARLY`]
//!    during the first [`EARLY_PHASE`] on the relay, then with the workspace's backoff up
//!    to [`RETRY_MAX`] apart. A nominated pair becomes the active path. The accepting
//!    side switches when its own prober nominates ([`super::race::accept`]).
//! 3. The task ends when the connection closes.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::SeedableRng;
use tokio::task::JoinHandle;

use super::control::Control;
use super::engine::AttemptOutcome;
use super::race::RaceCtx;
use super::route::{ActivePath, PathType};
use crate::backoff::Backoff;
use crate::identity::PeerId;
use crate::socket::Path;

/// How often the task looks at the paths.
pub const TICK: Duration = Duration::from_millis(200);
/// Silence on the active direct path (while QUIC sends) after which it is dead.
pub const DEAD_AFTER: Duration = Duration::from_secs(3);
/// Silence on the active direct path while the relay delivers after which this side
/// follows the peer to the relay.
pub const FOLLOW_AFTER: Duration = Duration::from_secs(1);
/// Time between probing rounds during the early phase on the relay.
pub const RETRY_EARLY: Duration = Duration::from_secs(2);
/// How long the early phase lasts after each move to the relay.
pub const EARLY_PHASE: Duration = Duration::from_secs(60);
/// Longest time between probing rounds on the relay.
pub const RETRY_MAX: Duration = Duration::from_secs(60);
/// Longest a probing round may take (the coordinator's answer and the probing budget).
const ROUND_TIMEOUT: Duration = Duration::from_secs(30);

/// The dialing side's probing rounds.
pub(crate) struct Rounds {
    pub control: Control,
    /// The attempt of the first introduction, still running when QUIC started on the
    /// relay.
    pub first: Option<JoinHandle<AttemptOutcome>>,
}

struct State {
    liveness: Liveness,
    next_round: Instant,
    backoff: Backoff,
}

/// The verdict on an active direct path (step 1), from what the path table and QUIC's
/// counters say; no clock or socket of its own.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Liveness {
    /// Since when the direct path is the active one.
    since: Instant,
    /// The last receipt on it seen, and QUIC's datagram count then.
    direct_rx: Option<Instant>,
    tx_mark: u64,
}

impl Liveness {
    /// Watching a path that became active at `now`, with QUIC's datagram count `tx`.
    pub(crate) fn new(now: Instant, tx: u64) -> Self {
        Self {
            since: now,
            direct_rx: None,
            tx_mark: tx,
        }
    }

    /// Whether to leave the direct path at `now`: `direct_rx` and `relay_rx` are the last
    /// receipts on each path, `tx` QUIC's datagrams sent so far.
    pub(crate) fn leave(
        &mut self,
        now: Instant,
        direct_rx: Option<Instant>,
        relay_rx: Option<Instant>,
        tx: u64,
    ) -> bool {
        if direct_rx.is_some() && direct_rx != self.direct_rx {
            self.direct_rx = direct_rx;
            self.tx_mark = tx;
        }
        let heard = self.direct_rx.map_or(self.since, |t| t.max(self.since));
        let silent = now.saturating_duration_since(heard);
        let relay_recent =
            relay_rx.is_some_and(|r| r > heard && now.saturating_duration_since(r) < FOLLOW_AFTER);
        (silent >= DEAD_AFTER && tx > self.tx_mark) || (silent >= FOLLOW_AFTER && relay_recent)
    }
}

/// Watches one connection's paths until it closes (see the module docs).
pub(crate) async fn supervise(
    ctx: RaceCtx,
    peer: PeerId,
    synthetic: SocketAddr,
    connection: quinn::Connection,
    mut rounds: Option<Rounds>,
) {
    let now = Instant::now();
    let mut st = State {
        liveness: Liveness::new(now, connection.stats().udp_tx.datagrams),
        next_round: now,
        backoff: Backoff::new(RETRY_EARLY, RETRY_MAX),
    };
    let mut on_relay_since = now;
    let mut rng = StdRng::from_entropy();
    let mut was = None;
    loop {
        tokio::select! {
            _ = connection.closed() => return,
            _ = tokio::time::sleep(TICK) => {}
        }
        let Some(active) = ctx.watches.current(peer) else {
            return;
        };
        let now = Instant::now();
        if was != Some(active.kind) {
            was = Some(active.kind);
            st.liveness = Liveness::new(now, connection.stats().udp_tx.datagrams);
            if active.kind == PathType::Relay {
                on_relay_since = now;
                st.next_round = now;
                st.backoff.reset();
            }
        }
        let Some((relay, relay_remote)) = ctx.watches.relay_of(peer) else {
            continue;
        };
        match active.kind {
            PathType::Direct => {
                if check_direct(&ctx, &connection, synthetic, relay, &mut st, now) {
                    ctx.endpoint.socket().paths().set_path(&synthetic, relay);
                    let relayed = ActivePath {
                        kind: PathType::Relay,
                        remote: relay_remote,
                    };
                    if ctx.watches.update(peer, relayed) {
                        tracing::info!(%relay_remote, "direct path lost, back on the relay");
                    }
                }
            }
            PathType::Relay => {
                let Some(r) = rounds.as_mut() else { continue };
                if now < st.next_round {
                    continue;
                }
                let remote = round(&ctx, peer, r).await;
                let now = Instant::now();
                if let Some(remote) = remote {
                    ctx.endpoint
                        .socket()
                        .paths()
                        .set_path(&synthetic, Path::Direct(remote));
                    let direct = ActivePath {
                        kind: PathType::Direct,
                        remote,
                    };
                    if ctx.watches.update(peer, direct) {
                        tracing::info!(%remote, "moved from the relay to a direct path");
                    }
                    continue;
                }
                let wait = if now.saturating_duration_since(on_relay_since) < EARLY_PHASE {
                    RETRY_EARLY
                } else {
                    st.backoff.next(&mut rng)
                };
                st.next_round = now + wait;
            }
        }
    }
}

/// Whether the active direct path is dead or deserted (step 1).
fn check_direct(
    ctx: &RaceCtx,
    connection: &quinn::Connection,
    synthetic: SocketAddr,
    relay: Path,
    st: &mut State,
    now: Instant,
) -> bool {
    let (direct_rx, relay_rx) = {
        let paths = ctx.endpoint.socket().paths();
        let Some(active) = paths.resolve(&synthetic) else {
            return false;
        };
        (
            paths.last_rx_on(&synthetic, active),
            paths.last_rx_on(&synthetic, relay),
        )
    };
    let tx = connection.stats().udp_tx.datagrams;
    st.liveness.leave(now, direct_rx, relay_rx, tx)
}

/// One probing round (step 2): the nominated remote, if any.
async fn round(ctx: &RaceCtx, peer: PeerId, r: &mut Rounds) -> Option<SocketAddr> {
    let attempt = async {
        if let Some(first) = r.first.take() {
            return first.await.unwrap_or(AttemptOutcome::Closed);
        }
        match r.control.connect(peer).await {
            Ok((go, received)) => ctx.engine.attempt(go, received, r.control.rtt()).await,
            Err(e) => {
                tracing::debug!(error = %e, "no probing round");
                AttemptOutcome::Closed
            }
        }
    };
    match tokio::time::timeout(ROUND_TIMEOUT, attempt).await {
        Ok(AttemptOutcome::Nominated { remote, .. }) => Some(remote),
        Ok(other) => {
            tracing::debug!(?other, "probing round found no direct path");
            None
        }
        Err(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    /// Feeds `leave` a timeline: every 200 ms, whether the direct path and the relay
    /// delivered and how many datagrams QUIC sent; returns when it said leave.
    fn run(steps: usize, step: impl Fn(usize) -> (bool, bool, u64)) -> Option<Duration> {
        let t0 = Instant::now();
        let mut l = Liveness::new(t0, 0);
        let (mut direct_rx, mut relay_rx) = (None, None);
        for i in 1..=steps {
            let now = t0 + TICK * i as u32;
            let (direct, relay, tx) = step(i);
            if direct {
                direct_rx = Some(now - MS);
            }
            if relay {
                relay_rx = Some(now - MS);
            }
            if l.leave(now, direct_rx, relay_rx, tx) {
                return Some(now - t0);
            }
        }
        None
    }

    #[test]
    fn a_busy_path_that_goes_silent_is_left_after_three_seconds() {
        // Traffic both ways for 2 s, then nothing arrives while QUIC keeps sending.
        let left = run(100, |i| (i <= 10, false, i as u64 * 10));
        let left = left.expect("left");
        assert!(left >= Duration::from_secs(2) + DEAD_AFTER, "{left:?}");
        assert!(
            left <= Duration::from_secs(2) + DEAD_AFTER + TICK,
            "{left:?}"
        );
    }

    #[test]
    fn an_idle_connection_is_not_called_dead() {
        // Nothing sent, nothing received, for 20 s: silence is not evidence.
        assert_eq!(run(100, |_| (false, false, 0)), None);
        // Receipts keep coming while QUIC sends: alive.
        assert_eq!(run(100, |i| (true, false, i as u64)), None);
    }

    #[test]
    fn the_peer_moving_to_the_relay_is_followed_after_one_second() {
        // The direct path delivers for 1 s, then the peer's datagrams come on the relay.
        let left = run(100, |i| (i <= 5, i > 5, i as u64)).expect("followed");
        assert!(left >= Duration::from_secs(1) + FOLLOW_AFTER, "{left:?}");
        assert!(left < Duration::from_secs(1) + DEAD_AFTER, "{left:?}");
        // Relay datagrams older than the last direct one (in flight from before a
        // switch) do not count.
        assert_eq!(run(100, |i| (true, i == 3, i as u64)), None);
    }
}
