//! Birthday probing in the node: the punch engine's rounds of
//! [`crate::punch::birthday::BirthdayProber`], sans-IO like the prober (the engine opens
//! and closes the sockets and moves the datagrams).
//!
//! Steps:
//! 1. **Who.** An introduction (`Go`) between a node whose NAT maps to random ports (its
//!    own probe, [`NatMapping::Random`]) and one with an endpoint-independent mapping
//!    gets a round ([`side_for`]): the random one is the hard side, the other the easy
//!    side. Both learn the other's mapping from the punch server ([`Go::peer_mapping`]),
//!    so both start at the `Go`'s common start. Both hard, both easy, or an unknown
//!    mapping: no round (two hard sides would need about 65,000 probes each for the same
//!    odds).
//! 2. **Bounds.** At most one round per peer per [`PEER_INTERVAL`] and [`MAX_RUNS`] at
//!    once; the prober caps the checks of a round (1024 on the easy side, 256 sockets x 3
//!    on the hard side by default). A peer whose connection already runs direct gets none.
//!    Meanwhile the connection rides its relayed path: nobody waits for a round. A dial
//!    without a relayed path waits for it instead ([`Birthdays::probing`]: the engine
//!    holds a failed attempt until the round ends; a relay-first dial has taken its
//!    relay by then).
//! 3. **Sockets.** The hard side's engine opens the extra sockets
//!    ([`crate::socket::MeshSocket::open_extra`]) and hands their ids here; every
//!    datagram on them comes back through [`Birthdays::offer`]. The easy side probes from
//!    the primary socket.
//! 4. **Hit.** [`BirthdayOutput::Validated`] names the pair (remote, local socket): the
//!    engine closes the other sockets and moves the connection's core to the pair (or
//!    keeps it in [`Birthdays::take_found`] until the core exists); a dial still waiting
//!    for a path runs its QUIC handshake on the pair. A round with no hit
//!    ends with [`BirthdayOutput::Failed`] and all its sockets are closed.
//! 5. **Keep.** While the pair lives, a consent check goes out every [`CONSENT_EVERY`]
//!    (RFC 7675), and every datagram of the peer on it is reported as heard, so an idle
//!    connection keeps the pair. When the engine reports the pair gone (the connection
//!    closed or moved off it for [`KEEP_GRACE`]), the run ends and its socket is closed.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::coord::{CandidateKind, Go, NatMapping};
use crate::identity::PeerId;
use crate::punch::birthday::{BirthdayConfig, BirthdayEvent, BirthdayProber, BirthdaySide};
use crate::socket::LocalSocket;

/// One round per peer at most this often.
pub const PEER_INTERVAL: Duration = Duration::from_secs(60);
/// Most rounds running at once (each hard side holds its extra sockets).
pub const MAX_RUNS: usize = 2;
/// A consent check on a validated pair this often.
pub const CONSENT_EVERY: Duration = Duration::from_secs(1);
/// A validated pair the connection does not use for this long is dropped.
pub const KEEP_GRACE: Duration = Duration::from_secs(10);
/// Most peers remembered for [`PEER_INTERVAL`].
const MAX_REMEMBERED: usize = 4096;

/// The side this node takes in a round for `go`, given its own mapping (step 1); `None`
/// for no round. The easy side's address and the hard side's IP are the server's
/// observations (the last reflexive candidate of the `Go`).
pub fn side_for(own: Option<NatMapping>, go: &Go) -> Option<BirthdaySide> {
    let observed = go
        .peer_candidates
        .iter()
        .rev()
        .find(|c| c.kind == CandidateKind::ServerReflexive)?
        .addr;
    match (own?, go.peer_mapping?) {
        (NatMapping::Random, NatMapping::EndpointIndependent) => {
            Some(BirthdaySide::Hard { easy: observed })
        }
        (NatMapping::EndpointIndependent, NatMapping::Random) => Some(BirthdaySide::Easy {
            hard_ip: observed.ip(),
        }),
        _ => None,
    }
}

/// Counters of a node's birthday rounds (shared with the node's handle).
#[derive(Debug, Default)]
pub(crate) struct BirthdayStats {
    rounds: AtomicU64,
    validated: AtomicU64,
    failed: AtomicU64,
    checks: AtomicU64,
    last_after_us: AtomicU64,
}

/// A snapshot of a node's birthday rounds ([`super::DirectNode::birthday_stats`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BirthdaySnapshot {
    /// Rounds started.
    pub rounds: u64,
    /// Rounds that validated a pair.
    pub validated: u64,
    /// Rounds that found nothing.
    pub failed: u64,
    /// Checks this node sent in ended rounds (probes on the easy side, checks from the
    /// extra sockets on the hard side).
    pub checks: u64,
    /// Time from the latest validated round's start to its pair.
    pub last_after: Duration,
}

impl BirthdayStats {
    /// A snapshot.
    pub(crate) fn snapshot(&self) -> BirthdaySnapshot {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        BirthdaySnapshot {
            rounds: get(&self.rounds),
            validated: get(&self.validated),
            failed: get(&self.failed),
            checks: get(&self.checks),
            last_after: Duration::from_micros(get(&self.last_after_us)),
        }
    }

    /// Counts an output of [`Birthdays`].
    pub(crate) fn count(&self, output: &BirthdayOutput) {
        match output {
            BirthdayOutput::Validated { checks, after, .. } => {
                self.validated.fetch_add(1, Ordering::Relaxed);
                self.checks.fetch_add(*checks, Ordering::Relaxed);
                let us = u64::try_from(after.as_micros()).unwrap_or(u64::MAX);
                self.last_after_us.store(us, Ordering::Relaxed);
            }
            BirthdayOutput::Failed { checks, .. } => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                self.checks.fetch_add(*checks, Ordering::Relaxed);
            }
            BirthdayOutput::Close(_) => {}
        }
    }

    /// Counts a started round.
    pub(crate) fn started(&self) {
        self.rounds.fetch_add(1, Ordering::Relaxed);
    }
}

/// A pair found by a round (remote address, local socket).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Found {
    /// The peer's address on the pair.
    pub remote: SocketAddr,
    /// This node's socket on the pair.
    pub local: LocalSocket,
}

/// What the rounds tell the engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BirthdayOutput {
    /// Step 4: a pair validated.
    Validated {
        /// The peer.
        peer: PeerId,
        /// The pair.
        found: Found,
        /// Round-trip time of the validating check.
        rtt: Duration,
        /// Checks this side sent in the round.
        checks: u64,
        /// Time from the round's start.
        after: Duration,
    },
    /// Step 4: the round found nothing.
    Failed {
        /// The peer.
        peer: PeerId,
        /// Checks this side sent.
        checks: u64,
    },
    /// Close these extra sockets (the losers, a failed round's, a dropped pair's).
    Close(Vec<LocalSocket>),
}

/// A datagram to send from one of the node's sockets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BirthdayTransmit {
    /// The socket.
    pub local: LocalSocket,
    /// Where to.
    pub destination: SocketAddr,
    /// The STUN message.
    pub contents: Vec<u8>,
}

struct Run {
    peer: PeerId,
    prober: BirthdayProber,
    /// Socket index of the prober to the node's socket.
    sockets: Vec<LocalSocket>,
    started: Instant,
    /// Once validated: the pair, when the next consent check is due, and since when the
    /// connection has not used the pair (`None` while it does).
    kept: Option<(Found, Instant, Option<Instant>)>,
}

/// The node's birthday rounds (see the module docs).
pub struct Birthdays {
    config: BirthdayConfig,
    runs: Vec<Run>,
    last_start: HashMap<PeerId, Instant>,
    found: HashMap<PeerId, Found>,
    outputs: VecDeque<BirthdayOutput>,
}

impl Birthdays {
    /// No rounds yet; each uses `config`.
    pub fn new(config: BirthdayConfig) -> Self {
        Self {
            config,
            runs: Vec::new(),
            last_start: HashMap::new(),
            found: HashMap::new(),
            outputs: VecDeque::new(),
        }
    }

    /// The settings of every round.
    pub fn config(&self) -> &BirthdayConfig {
        &self.config
    }

    /// Step 2: whether a round with `peer` may start at `now`.
    pub fn admits(&self, now: Instant, peer: &PeerId) -> bool {
        let recent = self
            .last_start
            .get(peer)
            .is_some_and(|at| now.saturating_duration_since(*at) < PEER_INTERVAL);
        let probing = self.runs.iter().filter(|r| r.kept.is_none()).count();
        !recent && probing < MAX_RUNS && !self.runs.iter().any(|r| r.peer == *peer)
    }

    /// Starts a round with `peer` at `start_at` on `sockets` (the hard side's extra
    /// sockets, or the primary alone on the easy side).
    pub fn start(
        &mut self,
        now: Instant,
        peer: PeerId,
        side: BirthdaySide,
        go: &Go,
        start_at: Instant,
        sockets: Vec<LocalSocket>,
    ) {
        if self.last_start.len() >= MAX_REMEMBERED {
            self.last_start
                .retain(|_, at| now.saturating_duration_since(*at) < PEER_INTERVAL);
        }
        self.last_start.insert(peer, now);
        let mut config = self.config.clone();
        config.hard_sockets = sockets.len().max(1);
        let prober = BirthdayProber::new(side, config, go.credentials.clone(), start_at);
        tracing::info!(peer = %peer.short(), ?side, sockets = sockets.len(), "birthday round");
        self.runs.push(Run {
            peer,
            prober,
            sockets,
            started: start_at,
            kept: None,
        });
    }

    /// Offers a datagram that arrived on socket `local` from `from`. `Some(heard)` if a
    /// round took it; `heard` names the pair when it came from the peer on a validated
    /// pair (the path is alive).
    pub fn offer(
        &mut self,
        now: Instant,
        local: LocalSocket,
        from: SocketAddr,
        data: &[u8],
    ) -> Option<Option<(PeerId, Found)>> {
        for run in &mut self.runs {
            let Some(index) = run.sockets.iter().position(|s| *s == local) else {
                continue;
            };
            if run.prober.handle_input(now, index, from, data) {
                let heard = run
                    .kept
                    .filter(|(found, ..)| found.remote == from && found.local == local)
                    .map(|(found, ..)| (run.peer, found));
                return Some(heard);
            }
        }
        None
    }

    /// Runs the timers due at `now` (checks, budgets, consent).
    pub fn handle_timeout(&mut self, now: Instant) {
        for run in &mut self.runs {
            if run.prober.poll_timeout().is_some_and(|t| t <= now) {
                run.prober.handle_timeout(now);
            }
            if let Some((_, due, _)) = &mut run.kept {
                if *due <= now {
                    *due = now + CONSENT_EVERY;
                    run.prober.consent(now);
                }
            }
        }
        self.collect(now);
    }

    /// Step 5: whether the connection of each kept pair still uses it (`uses(peer, pair)`);
    /// a pair unused for [`KEEP_GRACE`] is dropped and its socket closed.
    pub fn keep(&mut self, now: Instant, uses: impl Fn(&PeerId, &Found) -> bool) {
        let mut closed = Vec::new();
        let waiting = &mut self.found;
        self.runs.retain_mut(|run| {
            let Some((found, _, unused_since)) = &mut run.kept else {
                return true;
            };
            if uses(&run.peer, found) {
                *unused_since = None;
                return true;
            }
            let since = *unused_since.get_or_insert(now);
            if now.saturating_duration_since(since) < KEEP_GRACE {
                return true;
            }
            tracing::debug!(peer = %run.peer.short(), ?found, "birthday pair dropped");
            // A pair still waiting for its core is gone too (its socket closes now).
            if waiting.get(&run.peer) == Some(&*found) {
                waiting.remove(&run.peer);
            }
            closed.push(found.local);
            false
        });
        closed.retain(|s| *s != LocalSocket::PRIMARY);
        if !closed.is_empty() {
            self.outputs.push_back(BirthdayOutput::Close(closed));
        }
    }

    /// Whether a round with `peer` is still looking for its pair.
    pub fn probing(&self, peer: &PeerId) -> bool {
        self.runs
            .iter()
            .any(|r| r.peer == *peer && r.kept.is_none())
    }

    /// The pair a round found for `peer` before its connection's core existed.
    pub fn take_found(&mut self, peer: &PeerId) -> Option<Found> {
        self.found.remove(peer)
    }

    /// When [`Self::handle_timeout`] is due next.
    pub fn next_wake(&self) -> Option<Instant> {
        self.runs
            .iter()
            .flat_map(|r| [r.prober.poll_timeout(), r.kept.map(|(_, due, _)| due)])
            .flatten()
            .min()
    }

    /// The next datagram to send.
    pub fn poll_transmit(&mut self) -> Option<BirthdayTransmit> {
        self.runs.iter_mut().find_map(|run| {
            let t = run.prober.poll_transmit()?;
            Some(BirthdayTransmit {
                local: run.sockets.get(t.socket).copied()?,
                destination: t.destination,
                contents: t.contents,
            })
        })
    }

    /// The next output.
    pub fn poll_output(&mut self) -> Option<BirthdayOutput> {
        self.outputs.pop_front()
    }

    /// Turns the probers' events into outputs; ends failed rounds.
    fn collect(&mut self, now: Instant) {
        let mut ended = Vec::new();
        for (i, run) in self.runs.iter_mut().enumerate() {
            while let Some(event) = run.prober.poll_event() {
                let checks = run.prober.counters().checks_sent;
                match event {
                    BirthdayEvent::Validated {
                        socket,
                        remote,
                        rtt,
                    } => {
                        let Some(&local) = run.sockets.get(socket) else {
                            continue;
                        };
                        let found = Found { remote, local };
                        let losers: Vec<_> = run
                            .sockets
                            .iter()
                            .copied()
                            .filter(|s| *s != local && *s != LocalSocket::PRIMARY)
                            .collect();
                        // The list stays as it is (the prober names sockets by index);
                        // the closed ones just deliver nothing more.
                        run.kept = Some((found, now + CONSENT_EVERY, None));
                        self.found.insert(run.peer, found);
                        let after = now.saturating_duration_since(run.started);
                        tracing::info!(peer = %run.peer.short(), ?found, ?rtt, checks, ?after, "birthday pair validated");
                        self.outputs.push_back(BirthdayOutput::Validated {
                            peer: run.peer,
                            found,
                            rtt,
                            checks,
                            after,
                        });
                        if !losers.is_empty() {
                            self.outputs.push_back(BirthdayOutput::Close(losers));
                        }
                    }
                    BirthdayEvent::Failed { checks } => {
                        tracing::info!(peer = %run.peer.short(), checks, "birthday round found no pair");
                        self.outputs.push_back(BirthdayOutput::Failed {
                            peer: run.peer,
                            checks,
                        });
                        let sockets: Vec<_> = run
                            .sockets
                            .iter()
                            .copied()
                            .filter(|s| *s != LocalSocket::PRIMARY)
                            .collect();
                        if !sockets.is_empty() {
                            self.outputs.push_back(BirthdayOutput::Close(sockets));
                        }
                        ended.push(i);
                    }
                }
            }
        }
        for i in ended.into_iter().rev() {
            self.runs.remove(i);
        }
        if self.found.len() > MAX_REMEMBERED {
            self.found.clear();
        }
    }

    /// Offers done: collect what the inputs produced (answers, validations).
    pub fn after_input(&mut self, now: Instant) {
        self.collect(now);
    }
}

#[cfg(test)]
#[path = "birthdays_tests.rs"]
mod tests;
