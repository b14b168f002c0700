//! [`PathManager`]: the state machine of the module docs (relay first, direct rounds,
//! retries, liveness, fallback).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::SeedableRng;

use super::{ConnConfig, ConnEvent, PathId, PathKind, SwitchReason};
use crate::backoff::Backoff;
use crate::punch::{Candidate, Credentials, ProbeEvent, Prober, Role, Transmit};
use crate::socket::LocalSocket;

/// Most queued STUN datagrams; beyond this, the oldest are dropped.
const MAX_QUEUED: usize = 64;

/// One path of the connection.
#[derive(Debug)]
struct PathEntry {
    id: PathId,
    kind: PathKind,
    /// Last datagram from the peer on this path (or when it validated).
    last_rx: Instant,
    alive: bool,
}

/// The per-connection path core (see the module docs).
#[derive(Debug)]
pub struct PathManager {
    config: ConnConfig,
    role: Role,
    now: Instant,
    next_id: u32,
    paths: Vec<PathEntry>,
    active: Option<PathId>,
    /// The running direct round.
    round: Option<Prober>,
    /// The round that validated the live direct path `.0`: it answers the peer's consent
    /// checks and sends ours.
    held: Option<(PathId, Prober)>,
    /// Controlling side: when the next direct round is due (`None` while one runs or a
    /// direct path is active).
    next_round_at: Option<Instant>,
    /// Start of the current early phase.
    phase_start: Instant,
    /// When the latest direct round started (the next one is timed from it).
    round_started: Instant,
    early: Backoff,
    late: Backoff,
    last_consent: Option<Instant>,
    had_path: bool,
    transmits: VecDeque<Transmit>,
    events: VecDeque<ConnEvent>,
    rng: StdRng,
}

impl PathManager {
    /// A core with no path yet. The controlling side asks for its first direct round at
    /// once ([`ConnEvent::DirectRoundDue`]) unless one is started first.
    pub fn new(now: Instant, config: ConnConfig, role: Role) -> Self {
        let rng = match config.seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => StdRng::from_entropy(),
        };
        // Backoff jitters by up to +25 %: scale down so no gap exceeds the configured one.
        let scaled = |d: Duration| d.mul_f64(0.8);
        let early = Backoff::new(scaled(config.retry_early), scaled(config.retry_early));
        let late = Backoff::new(scaled(config.retry_early * 2), scaled(config.retry_max));
        PathManager {
            role,
            now,
            next_id: 0,
            paths: Vec::new(),
            active: None,
            round: None,
            held: None,
            next_round_at: (role == Role::Controlling).then_some(now),
            phase_start: now,
            round_started: now,
            early,
            late,
            last_consent: None,
            had_path: false,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            rng,
            config,
        }
    }

    /// The active path, if any.
    pub fn active(&self) -> Option<(PathId, PathKind)> {
        let id = self.active?;
        self.entry(id).map(|e| (id, e.kind))
    }

    /// Every live (validated, not dead) path.
    pub fn live_paths(&self) -> impl Iterator<Item = (PathId, PathKind)> + '_ {
        self.paths
            .iter()
            .filter(|e| e.alive)
            .map(|e| (e.id, e.kind))
    }

    /// The live direct path to `remote`, to attribute received datagrams.
    pub fn direct_path_to(&self, remote: SocketAddr) -> Option<PathId> {
        self.paths
            .iter()
            .find(|e| {
                e.alive && matches!(e.kind, PathKind::Direct { remote: r, .. } if r == remote)
            })
            .map(|e| e.id)
    }

    /// Whether a direct round is running.
    pub fn round_running(&self) -> bool {
        self.round.is_some()
    }

    /// A relayed path is ready (the TURN server confirmed the allocation, the permission
    /// and the channel): it is validated, and active at once if no live path is.
    pub fn add_relay(&mut self, now: Instant, server: SocketAddr, channel: u16) -> PathId {
        self.add_relayed(now, PathKind::Relay { server, channel })
    }

    /// A relayed path of any kind ([`PathKind::Relay`] on this node's allocation,
    /// [`PathKind::RelayedPeer`] to the peer's) is ready: as [`PathManager::add_relay`].
    pub fn add_relayed(&mut self, now: Instant, kind: PathKind) -> PathId {
        self.now = self.now.max(now);
        let id = self.insert(kind);
        if self.active.is_none() {
            let reason = self.first_or_fallback();
            self.activate(id, reason);
        }
        id
    }

    /// A path is gone (a relay allocation lost, say). If it was active, the best validated
    /// live path left takes over.
    pub fn remove_path(&mut self, now: Instant, id: PathId) {
        self.now = self.now.max(now);
        self.kill(id);
        self.paths.retain(|e| e.id != id);
    }

    /// Starts a direct round: the peer's candidates, this round's credentials, and the
    /// common start. A round already running is replaced.
    pub fn start_direct_round(
        &mut self,
        now: Instant,
        creds: Credentials,
        local: &[Candidate],
        remote: &[Candidate],
        start_at: Instant,
    ) {
        self.now = self.now.max(now);
        let mut probe = self.config.probe.clone();
        probe.seed = probe.seed.map(|s| s.wrapping_add(u64::from(self.next_id)));
        self.round = Some(Prober::new(
            self.now, probe, self.role, creds, local, remote, start_at,
        ));
        self.next_round_at = None;
        self.round_started = self.now;
        self.pump();
    }

    /// Runs a direct round built by the driver (its probe settings scaled to the measured
    /// RTTs), as [`PathManager::start_direct_round`]; also takes over a round that started
    /// before the connection existed (the first introduction's).
    pub fn adopt_round(&mut self, now: Instant, round: Prober) {
        self.now = self.now.max(now);
        self.round = Some(round);
        self.next_round_at = None;
        self.round_started = self.now;
        self.pump();
    }

    /// A direct path validated before the connection existed (the first introduction's
    /// round nominated `remote`). With its `round`, the core answers the peer's consent
    /// checks and sends its own; without it, only received datagrams keep it alive.
    pub fn adopt_direct(&mut self, now: Instant, remote: SocketAddr, round: Option<Prober>) {
        self.now = self.now.max(now);
        match round {
            Some(round) => {
                self.round = Some(round);
                self.on_nominated(remote);
            }
            None => self.add_direct(now, remote, LocalSocket::PRIMARY),
        }
    }

    /// A direct path validated outside this core's rounds (birthday probing, from local
    /// socket `local`): it takes over as an upgrade. Only received datagrams keep it alive
    /// here ([`PathManager::on_receive`]); its finder keeps the pair's consent.
    pub fn add_direct(&mut self, now: Instant, remote: SocketAddr, local: LocalSocket) {
        self.now = self.now.max(now);
        let id = self.insert(PathKind::Direct { remote, local });
        let reason = match self.active() {
            None => self.first_or_fallback(),
            Some((current, _)) if current == id => return,
            Some(_) => SwitchReason::Upgrade,
        };
        self.activate(id, reason);
    }

    /// Offers a received STUN datagram (a check, an answer, a consent check). `true` if a
    /// round of this connection took it.
    pub fn handle_input(&mut self, now: Instant, from: SocketAddr, data: &[u8]) -> bool {
        self.now = self.now.max(now);
        let mut taken = false;
        if let Some(round) = &mut self.round {
            taken = round.handle_input(self.now, from, data);
        }
        if !taken {
            if let Some((_, held)) = &mut self.held {
                taken = held.handle_input(self.now, from, data);
            }
        }
        if taken {
            if let Some(id) = self.direct_path_to(from) {
                self.on_receive(self.now, id);
            }
        }
        self.pump();
        taken
    }

    /// A datagram (QUIC or STUN) arrived on `path` at `at`: it is alive.
    pub fn on_receive(&mut self, at: Instant, path: PathId) {
        self.now = self.now.max(at);
        if let Some(e) = self.paths.iter_mut().find(|e| e.id == path && e.alive) {
            e.last_rx = e.last_rx.max(at);
        }
    }

    /// Advances timers: probing, consent checks, dead paths, due rounds.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.now = self.now.max(now);
        if let Some(round) = &mut self.round {
            round.handle_timeout(self.now);
        }
        if let Some((_, held)) = &mut self.held {
            held.handle_timeout(self.now);
        }
        self.pump();
        self.check_liveness();
        self.check_round_due();
    }

    /// The next STUN datagram to send (checks and answers of the rounds).
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<ConnEvent> {
        self.events.pop_front()
    }

    /// When [`PathManager::handle_timeout`] wants to run next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let mut next: Option<Instant> = None;
        let mut at = |t: Option<Instant>| {
            if let Some(t) = t {
                next = Some(next.map_or(t, |n| n.min(t)));
            }
        };
        at(self.round.as_ref().and_then(Prober::poll_timeout));
        at(self.held.as_ref().and_then(|(_, p)| p.poll_timeout()));
        at(self.round_due_at());
        if let Some(heard) = self.active_direct_heard() {
            let consent = self
                .last_consent
                .map_or(heard, |c| c.max(heard))
                .checked_add(self.config.keepalive_after);
            at(consent);
            at(heard.checked_add(self.config.dead_after));
        }
        next
    }

    fn entry(&self, id: PathId) -> Option<&PathEntry> {
        self.paths.iter().find(|e| e.id == id)
    }

    fn insert(&mut self, kind: PathKind) -> PathId {
        if let Some(e) = self.paths.iter_mut().find(|e| e.kind == kind) {
            e.alive = true;
            e.last_rx = self.now;
            return e.id;
        }
        if self.paths.len() >= self.config.max_paths.max(2) {
            let active = self.active;
            let victim = self
                .paths
                .iter()
                .position(|e| !e.alive)
                .or_else(|| self.paths.iter().position(|e| Some(e.id) != active));
            if let Some(i) = victim {
                let gone = self.paths.remove(i);
                if self.held.as_ref().is_some_and(|(h, _)| *h == gone.id) {
                    self.held = None;
                }
            }
        }
        let id = PathId(self.next_id);
        self.next_id = self.next_id.wrapping_add(1);
        self.paths.push(PathEntry {
            id,
            kind,
            last_rx: self.now,
            alive: true,
        });
        id
    }

    fn first_or_fallback(&self) -> SwitchReason {
        if self.had_path {
            SwitchReason::Fallback
        } else {
            SwitchReason::First
        }
    }

    fn activate(&mut self, id: PathId, reason: SwitchReason) {
        let Some(kind) = self.entry(id).filter(|e| e.alive).map(|e| e.kind) else {
            return;
        };
        self.active = Some(id);
        self.had_path = true;
        self.last_consent = None;
        if kind.is_direct() {
            self.next_round_at = None;
        }
        self.events.push_back(ConnEvent::PathChanged {
            path: id,
            kind,
            reason,
        });
    }

    /// Marks `id` dead; if it was active, falls back.
    fn kill(&mut self, id: PathId) {
        let Some(e) = self.paths.iter_mut().find(|e| e.id == id) else {
            return;
        };
        e.alive = false;
        let was_direct = e.kind.is_direct();
        if self.held.as_ref().is_some_and(|(h, _)| *h == id) {
            self.held = None;
        }
        if was_direct {
            // A direct path died: look for another one as eagerly as at the start.
            self.phase_start = self.now;
            self.early.reset();
            self.late.reset();
            if self.role == Role::Controlling && self.round.is_none() {
                self.next_round_at = Some(self.now);
            }
        }
        if self.active == Some(id) {
            self.active = None;
            self.fall_back();
        }
    }

    /// Makes the best live path active: the most recently heard direct one, else a relay.
    fn fall_back(&mut self) {
        let best = self
            .paths
            .iter()
            .filter(|e| e.alive)
            .max_by_key(|e| (e.kind.is_direct(), e.last_rx))
            .map(|e| e.id);
        match best {
            Some(id) => self.activate(id, SwitchReason::Fallback),
            None => self.events.push_back(ConnEvent::NoPath),
        }
    }

    /// Drains the rounds' outputs: transmits, nominations, failures.
    fn pump(&mut self) {
        if let Some((_, held)) = &mut self.held {
            while let Some(t) = held.poll_transmit() {
                push_bounded(&mut self.transmits, t);
            }
            while held.poll_event().is_some() {}
        }
        let Some(round) = &mut self.round else {
            return;
        };
        while let Some(t) = round.poll_transmit() {
            push_bounded(&mut self.transmits, t);
        }
        let mut nominated = None;
        let mut failed = None;
        while let Some(event) = round.poll_event() {
            match event {
                ProbeEvent::Nominated { remote, .. } => nominated = Some(remote),
                ProbeEvent::Failed(why) => failed = Some(why),
            }
        }
        if let Some(remote) = nominated {
            self.on_nominated(remote);
        } else if let Some(why) = failed {
            self.round = None;
            self.events.push_back(ConnEvent::DirectRoundFailed(why));
            if self.role == Role::Controlling && !self.active_is_direct() {
                // Rounds are timed start to start, so a failed round's budget counts.
                let gap = self.next_gap();
                self.next_round_at = Some((self.round_started + gap).max(self.now));
            }
        }
    }

    fn on_nominated(&mut self, remote: SocketAddr) {
        let Some(round) = self.round.take() else {
            return;
        };
        let id = self.insert(PathKind::Direct {
            remote,
            local: LocalSocket::PRIMARY,
        });
        self.held = Some((id, round));
        let reason = match self.active() {
            None => self.first_or_fallback(),
            Some((current, _)) if current == id => return,
            Some(_) => SwitchReason::Upgrade,
        };
        self.activate(id, reason);
    }

    fn active_is_direct(&self) -> bool {
        self.active().is_some_and(|(_, k)| k.is_direct())
    }

    /// When the peer was last heard on the active direct path.
    fn active_direct_heard(&self) -> Option<Instant> {
        let (id, kind) = self.active()?;
        if !kind.is_direct() {
            return None;
        }
        let rx = self.entry(id)?.last_rx;
        let held = self
            .held
            .as_ref()
            .filter(|(h, _)| *h == id)
            .and_then(|(_, p)| p.nominated_heard_at());
        Some(held.map_or(rx, |h| h.max(rx)))
    }

    fn check_liveness(&mut self) {
        let Some(heard) = self.active_direct_heard() else {
            return;
        };
        let silent = self.now.saturating_duration_since(heard);
        if silent >= self.config.dead_after {
            if let Some(id) = self.active {
                tracing::debug!(path = id.0, ?silent, "direct path silent, dead");
                self.kill(id);
            }
            return;
        }
        let since_consent = self.last_consent.map_or(silent, |c| {
            self.now.saturating_duration_since(c).min(silent)
        });
        if silent >= self.config.keepalive_after && since_consent >= self.config.keepalive_after {
            if let Some((_, held)) = &mut self.held {
                if held.check_nominated(self.now) {
                    self.last_consent = Some(self.now);
                }
            }
            self.pump();
        }
    }

    fn round_due_at(&self) -> Option<Instant> {
        if self.role != Role::Controlling || self.round.is_some() || self.active_is_direct() {
            return None;
        }
        self.next_round_at
    }

    fn check_round_due(&mut self) {
        let Some(due) = self.round_due_at() else {
            return;
        };
        if self.now < due {
            return;
        }
        self.events.push_back(ConnEvent::DirectRoundDue);
        // If the round never starts (the peer could not be told), ask again later.
        let gap = self.next_gap();
        self.next_round_at = Some(self.now + gap);
    }

    /// The gap to the next round: early-phase gaps, then the backoff.
    fn next_gap(&mut self) -> Duration {
        let in_early =
            self.now.saturating_duration_since(self.phase_start) < self.config.early_phase;
        if in_early {
            self.early.next(&mut self.rng)
        } else {
            self.late.next(&mut self.rng)
        }
    }
}

fn push_bounded(queue: &mut VecDeque<Transmit>, t: Transmit) {
    if queue.len() >= MAX_QUEUED {
        queue.pop_front();
    }
    queue.push_back(t);
}
